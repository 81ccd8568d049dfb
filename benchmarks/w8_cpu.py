"""Weight-only 8-bit linear on the CPU: scalefold's weight-only qlinear template with 8-bit codes
against onnxruntime's MatMulNBits (bits 8) and torch fp32.

One linear of K x N = 4096 x 11008 (a LLaMA-7B MLP up projection), 2 threads, every runner in
this one process; per M, medians in ms, each runner's ratio to ``int8 f32``, and effective
weight bandwidth (weight bytes / time). Runners:

- ``int8 f32``: u8 asymmetric codes, group 128 along K (quant_weights' int8 form), f32 x,
  bytes converted to float in registers, f32 FMA.
- ``int8 int8-act``: the same codes, x quantised per row in the kernel (``act=per_token``),
  VNNI on the packed bytes as they are.
- ``fp8 f32``: f8e4m3 codes, one scale per channel (quant_weights' fp8_e4m3 group 0 form).
- ``ort MatMulNBits8 acc0`` / ``acc4``: ``com.microsoft.MatMulNBits`` (bits 8, block 128) on
  the SAME u8 codes, scales and zero points, accuracy level 0 (fp32) and 4 (int8 activations).
- ``torch fp32 F.linear``: the dequantised int8 weights as a dense f32 matrix.

    .venv/bin/python benchmarks/w8_cpu.py [--m 1,16,64] [--k 4096] [--n 11008] [--threads 2]
        [--iters 20] [--repeat 3]

With ``--repeat R`` every M is measured R times and the best median of each runner printed.
Output differences against the reference interpreter and between ORT and scalefold are printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from w4_cpu import best_medians  # noqa: E402


def _ort_model(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, block: int,
               level: int):
    """MatMulNBits (bits 8) on u8 ``codes`` [N, K], ``scale`` / ``zero`` [N, K/block]."""
    from w4_cpu import mnb_model
    n, k = codes.shape
    return mnb_model(codes.reshape(n, k // block, block), scale, zero, k, n, 8, block, level)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", default="1,16,64")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=11008)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    from scalefold import api
    from scalefold.ir.graph import Graph
    from scalefold.ir.ops.quant import dequant_weight
    from scalefold.passes.quant_weights import quant_weights
    from scalefold.runtime import interp

    K, N, gs = a.k, a.n, 128
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(K, N, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=gen) * 0.02)

    def qgraph(fmt: str, group: int, act: str) -> Graph:
        from torch.export import Dim

        from scalefold.frontend.torch import from_torch
        g = from_torch(lin, (torch.randn(2, K),), dynamic_shapes=({0: Dim("M")},))
        return quant_weights(g, None, format=fmt, group=group, method="rtn", act=act)

    t0 = time.perf_counter()
    ours = [(nm, g, api.build_c(g)) for nm, g in
            (("int8 f32", qgraph("int8", gs, "none")), ("int8 int8-act", qgraph("int8", gs, "int8")),
             ("fp8 f32", qgraph("fp8_e4m3", 0, "none")))]
    print(f"build {time.perf_counter() - t0:.1f} s incl. packing; "
          f"kernels {[k.kind for _, _, cm in ours for k in cm.schedule.kernels]}")
    q = next(n for n in ours[0][1].nodes if n.op == "qlinear")
    codes, scale, zero = q.inputs[1].const, q.inputs[2].const, q.inputs[3].const
    wdq = dequant_weight(codes, scale, zero, gs, False)
    wbytes = {"int8": N * K + N * (K // gs) * 5, "fp8": N * K + 4 * N}

    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    sessions = {lvl: ort.InferenceSession(_ort_model(codes, scale, zero, gs, lvl).SerializeToString(),
                                          so, providers=["CPUExecutionProvider"]) for lvl in (0, 4)}
    names = [nm for nm, _, _ in ours] + ["ort MatMulNBits8 acc0", "ort MatMulNBits8 acc4",
                                         "torch fp32 F.linear"]
    for M in [int(v) for v in a.m.split(",")]:
        x = torch.randn(M, K, generator=gen)
        feed = {"A": x.numpy()}
        refs = {nm: interp.run(g, x)[0].double() for nm, g, _ in ours}
        sc = float(refs["int8 f32"].abs().max())
        errs = {f"{nm} vs ref": float((cm(x).double() - refs[nm]).abs().max()) / sc
                for nm, _, cm in ours}
        for lvl, s in sessions.items():
            ref = refs["int8 int8-act" if lvl == 4 else "int8 f32"]
            errs[f"ort{lvl} vs ours"] = float((torch.from_numpy(s.run(None, feed)[0]).double()
                                               - ref).abs().max()) / sc
        fns: dict[str, Callable[[], object]] = {nm: (lambda cm=cm: cm(x)) for nm, _, cm in ours}
        for lvl, s in sessions.items():
            fns[f"ort MatMulNBits8 acc{lvl}"] = (lambda s=s: s.run(None, feed))
        fns["torch fp32 F.linear"] = lambda: torch.nn.functional.linear(x, wdq)
        best = best_medians(fns, a.repeat, a.iters)
        base = best["int8 f32"]
        print(f"-- M={M} K={K} N={N}, {a.threads} threads, best of {a.repeat} medians of "
              f"{a.iters}; max |err| / max |y|: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
        print(f"{'runner':24s} {'ms':>8s} {'/int8 f32':>10s} {'GB/s':>7s} {'GFLOP/s':>8s}")
        for nm in names:
            t = best[nm]
            wb = wbytes["fp8"] if nm.startswith("fp8") else 4 * N * K if nm.startswith("torch") \
                else wbytes["int8"]
            print(f"{nm:24s} {t:8.3f} {t / base:10.2f} {wb / t / 1e6:7.1f} "
                  f"{2 * M * N * K / t / 1e6:8.1f}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
