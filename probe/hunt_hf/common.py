"""Shared harness for the HF bug hunt. Not a test; a probe."""
from __future__ import annotations

import os
os.environ.setdefault("OMP_NUM_THREADS", "1")
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

import scalefold as sf  # noqa: E402
from scalefold.runtime import interp  # noqa: E402

VOCAB = 1000


def rel_err(o, e):
    o = torch.as_tensor(o).float()
    e = torch.as_tensor(e).float()
    if o.shape != e.shape:
        return f"shape {tuple(o.shape)} vs {tuple(e.shape)}"
    scale = e.abs().max().item() or 1.0
    return (o - e).abs().max().item() / scale


def fmt(r):
    return r if isinstance(r, str) else f"{r:.2e}"


class Wrap(torch.nn.Module):
    """model(*args, **kw) -> first tensor (or select by fn)."""

    def __init__(self, m, names, kw=None, pick=None):
        super().__init__()
        self.m = m
        self.names = names
        self.kw = kw or {}
        self.pick = pick

    def forward(self, *args):
        out = self.m(**dict(zip(self.names, args)), **self.kw)
        if self.pick is not None:
            return self.pick(out)
        if isinstance(out, (tuple, list)):
            return out[0]
        if hasattr(out, "to_tuple"):
            return out.to_tuple()[0]
        return out


def _ort_run(path, g, args):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(s.get_inputs(), args)}
    return s.run(None, feeds)


def check(name, model, make, example, sizes, dyn=None, tol=1e-4, targets=("interp", "c", "onnx", "save", "static"),
          passes_list=(), cal=None):
    """make(b, s) -> tuple of tensors; example=(b, s); sizes list of (b, s)."""
    model.eval()
    res = {}
    t0 = time.time()
    ex = make(*example)
    with torch.no_grad():
        refs = {bs: model(*make_cached(make, bs)) for bs in [tuple(example)] + list(sizes)}

    def cmp(tag, fn, bss):
        worst = 0.0
        try:
            for bs in bss:
                args = make_cached(make, bs)
                out = fn(args)
                if isinstance(out, (list, tuple)):
                    out = out[0]
                r = rel_err(out, refs[bs])
                if isinstance(r, str) or not (r <= tol):
                    res[tag] = f"FAIL at {bs}: {fmt(r)}"
                    return
                worst = max(worst, r)
            res[tag] = f"ok {worst:.1e}"
        except Exception as e:  # noqa: BLE001
            res[tag] = f"ERR {type(e).__name__}: {str(e)[:400]}"
            if os.environ.get("TB"):
                traceback.print_exc()

    try:
        g = sf.from_torch(model, ex, dynamic_shapes=dyn)
        res["import"] = "ok " + ", ".join(str(v.type) for v in g.inputs)
    except Exception as e:  # noqa: BLE001
        res["import"] = f"ERR {type(e).__name__}: {str(e)[:600]}"
        if os.environ.get("TB"):
            traceback.print_exc()
        g = None
    allbs = [tuple(example)] + list(sizes) if dyn is not None else [tuple(example)]
    if g is not None:
        if "interp" in targets:
            cmp("interp", lambda a: interp.run(g, *a), allbs)
        cm = None
        if "c" in targets:
            try:
                cm = sf.compile(g, ex, target="c")
                cmp("c", lambda a: cm(*a), allbs)
            except Exception as e:  # noqa: BLE001
                res["c"] = f"ERR compile {type(e).__name__}: {str(e)[:400]}"
                if os.environ.get("TB"):
                    traceback.print_exc()
        if "onnx" in targets:
            try:
                d = tempfile.mkdtemp()
                p = os.path.join(d, "m.onnx")
                sf.to_onnx(g, p)
                cmp("onnx", lambda a: _ort_run(p, g, a), allbs)
            except Exception as e:  # noqa: BLE001
                res["onnx"] = f"ERR export {type(e).__name__}: {str(e)[:400]}"
        if "save" in targets and cm is not None:
            try:
                d = tempfile.mkdtemp()
                cm.save(d)
                cm2 = sf.load(d)
                cmp("save/load", lambda a: cm2(*a), allbs[-1:])
            except Exception as e:  # noqa: BLE001
                res["save/load"] = f"ERR {type(e).__name__}: {str(e)[:400]}"
    if "static" in targets and dyn is not None:
        try:
            gs = sf.from_torch(model, ex)
            cms = sf.compile(gs, ex, target="c")
            cmp("static-c", lambda a: cms(*a), [tuple(example)])
        except Exception as e:  # noqa: BLE001
            res["static-c"] = f"ERR {type(e).__name__}: {str(e)[:400]}"
    for p in passes_list:
        try:
            cmq = sf.compile(g, ex, target="c", passes=[p], calibration=cal)
            out = cmq(*make_cached(make, allbs[-1]))
            if isinstance(out, tuple):
                out = out[0]
            ref = refs[allbs[-1]]
            cos = torch.nn.functional.cosine_similarity(out.flatten().float(), ref.flatten().float(), dim=0).item()
            res[f"pass {p}"] = f"cos {cos:.4f} rel {fmt(rel_err(out, ref))}"
        except Exception as e:  # noqa: BLE001
            res[f"pass {p}"] = f"ERR {type(e).__name__}: {str(e)[:400]}"
            if os.environ.get("TB"):
                traceback.print_exc()
    print(f"=== {name} ({time.time() - t0:.0f}s)")
    for k, v in res.items():
        print(f"  {k:12s} {v}")
    sys.stdout.flush()
    return res, g


_CACHE = {}


def make_cached(make, bs):
    key = (id(make), tuple(bs))
    if key not in _CACHE:
        torch.manual_seed(hash(key) % 1000)
        _CACHE[key] = make(*bs)
    return _CACHE[key]


def ids_maker(vocab=VOCAB, mask=False, tt=False):
    def make(b, s):
        ids = torch.randint(0, vocab, (b, s))
        out = [ids]
        if mask:
            m = torch.ones(b, s, dtype=torch.long)
            if s > 2:
                m[0, s - 2:] = 0
            out.append(m)
        if tt:
            out.append(torch.zeros(b, s, dtype=torch.long))
        return tuple(out)
    return make
