"""H200: the Triton weight-only kernel for 8-bit and FP4 codes (``codegen/triton_wq.py``)
against cuBLAS bf16 and the dequantise-once float32 GEMM those forms ran before it.

Forms: int8 g128 (u8 codes + u8 zero points), FP8 E4M3 per channel, FP4 E2M1 g128 and g32; bf16 x;
shapes K x N = 4096 x 11008 and 8192 x 8192; M = 1, 16, 64, 128, 256, 1024. Timing: do_bench medians
of CUDA-graph replays with the L2 flushed (the harness of ``w4_gpu.py``). Error: max relative
error against the f32 product with the dequantised weight.

Usage (repo root symlinked as the package ``scalefold``): ``python3 benchmarks/w8_gpu.py
[--out FILE] [--sweep M] [--ms 64,128] [--forms ...] [--shapes KxN,...]`` (``--sweep``: time tile / split
variants at one M).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from w4_gpu import bench  # noqa: E402

from scalefold.codegen.triton_wq import WQSpec, make_launch, wq_config  # noqa: E402
from scalefold.ir import dtypes as dt  # noqa: E402
from scalefold.runtime.triton_exec import load_module  # noqa: E402
from scalefold.codegen.triton_wq_src import SOURCE  # noqa: E402
from scalefold.runtime.wqpack_gpu import pack_wq, reference  # noqa: E402

SHAPES = [(4096, 11008), (8192, 8192)]
MS = [1, 16, 64, 128, 256, 1024]


def form(name: str, N: int, K: int, gen: torch.Generator):
    """(codes, IR dtype, scale, zero, group) of a random weight in one of the forms."""
    if name == "int8 g128":
        G = K // 128
        return (torch.randint(0, 256, (N, K), generator=gen).to(torch.uint8), "u8",
                torch.rand(N, G, generator=gen) * 0.002 + 1e-4,
                torch.randint(100, 156, (N, G), generator=gen).to(torch.uint8), 128)
    if name == "fp8 e4m3 per channel":
        return ((torch.randn(N, K, generator=gen) * 32).to(torch.float8_e4m3fn), "f8e4m3",
                torch.rand(N, generator=gen) * 0.002 + 1e-4, None, 0)
    group = int(name.rsplit("g", 1)[1])
    return (torch.randint(0, 16, (N, K), generator=gen).to(torch.uint8), "f4e2m1",
            torch.rand(N, K // group, generator=gen) * 0.02 + 1e-3, None, group)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--sweep", type=int, default=0)
    ap.add_argument("--ms", default=None, help="rows of x to time, e.g. 64,128 (default 1,16,64,128,256,1024)")
    ap.add_argument("--forms", default="int8 g128,fp8 e4m3 per channel,fp4 e2m1 g128,fp4 e2m1 g32")
    ap.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.exit(2, f"{ap.prog}: no CUDA device: this benchmark times Triton kernels against cuBLAS "
                   "on a GPU\n")
    dev = torch.device("cuda")
    mod = load_module(SOURCE, False)
    lines = [f"# {torch.cuda.get_device_name()} torch {torch.__version__}; do_bench median over CUDA-graph "
             "replays, L2 flushed; bf16 x; µs and ratio to cuBLAS bf16 (higher is faster)",
             "| form | K x N | M | ours µs | cuBLAS bf16 µs | dequantised f32 GEMM µs | ours / cuBLAS | "
             "ours / f32 | max rel err |", "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    gen = torch.Generator().manual_seed(0)
    for K, N in [tuple(int(v) for v in sh.split("x")) for sh in args.shapes.split(",")]:
        wb = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        for name in args.forms.split(","):
            w, wd, s, z, group = form(name, N, K, gen)
            p = pack_wq(w, s, z, dt.get(wd), group).to(dev)
            wdq = reference(w, s, z, dt.get(wd), group).to(dev)
            spec = WQSpec((0, -1, 2), "bf16", w, s, z, group, wd)
            for M in ([args.sweep] if args.sweep else [int(m) for m in args.ms.split(",")] if args.ms else MS):
                x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
                y = torch.empty(M, N, device=dev, dtype=torch.bfloat16)
                cfgs = [None]
                if args.sweep and M > 4:
                    base = wq_config(M, N, K, group)
                    cfgs += [dict(base, BN=bn, BK=bk, SPLIT=sp, SWAP=sw)
                             for bn in (64, 128) for bk in (64, 128) for sp in (1, 4) for sw in (0, 1)]
                elif args.sweep:
                    base = wq_config(M, N, K, group)
                    cfgs += [dict(base, BN=bn, SPLIT=sp, num_warps=nw) for bn in (8, 16, 32, 64, 128)
                             for sp in (1, 2, 4, 8, 16) for nw in (4, 8)
                             if not base.get("GEMV") or bn * base["BK"] * base["BM"] <= 16384]
                for cfg in cfgs:
                    launch = make_launch(mod, spec, p, M, N, K, False, cfg)
                    launch([x, x, y])
                    torch.cuda.synchronize()
                    ref = x.float() @ wdq.T
                    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
                    t = bench(lambda: launch([x, x, y]))
                    if cfg is not None:
                        print(f"  sweep {name} {K}x{N} M={M} {cfg}: {t:.1f} µs", flush=True)
                        continue
                    tb = bench(lambda: F.linear(x, wb))
                    if wq_config(M, N, K, group).get("DENSE"):
                        # the dense path (dequantise + cuBLAS); the in-loop GEMM it replaces
                        lg = make_launch(mod, spec, p, M, N, K, False, wq_config(M, N, K, group, dense_min=1 << 62))
                        tg = bench(lambda: lg([x, x, y]))
                        print(f"  {name} {K}x{N} M={M}: dense {t:.1f} µs, in-loop GEMM {tg:.1f} µs", flush=True)
                    xf = x.float()
                    tf = bench(lambda: F.linear(xf, wdq))
                    row = (f"| {name} | {K} x {N} | {M} | {t:.1f} | {tb:.1f} | {tf:.1f} | {tb / t:.2f}x | "
                           f"{tf / t:.2f}x | {err:.1e} |")
                    lines.append(row)
                    print(row, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
