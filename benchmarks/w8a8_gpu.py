"""W8A8 GEMM on the GPU: scalefold's Triton int8 GEMM against torch._int_mm and cuBLAS bf16.

For M = 1, 16, 256, 4096 tokens and K x N = 4096 x 11008 (a LLaMA-7B MLP up projection) and
8192 x 8192, in this one process on the same data:

- ``triton i8 (ours)``: ``codegen/triton_qgemm.py`` on int8 activation codes already quantised
  (OutlierTune: the producer emits them), per-output-channel int8 weights, f32 scale and bias
  fused in the epilogue, ``--out`` (bf16) output.
- ``triton per-token (ours)``: the same GEMM after our Triton per-token quantising kernel on
  bf16 x (the dynamic W8A8 baseline; two launches).
- ``torch._int_mm + epi``: cuBLASLt int8 x int8 -> int32, then the same epilogue in torch
  (``(acc * scale + bias).to(out)``). ``_int_mm`` needs M > 16 and K, N multiples of 8: M is
  padded with zero rows to the next multiple of 8 above 16 where needed (printed as ``pad``);
  TOPS count the real M only.
- ``cuBLAS bf16``: ``torch.matmul(x, w.t())`` in bf16 (no bias, no epilogue).

Timing: each runner's calls are captured ``--reps`` at a time into one CUDA graph (so Python
launch costs do not hide small kernels), replayed ``--iters`` times and timed with CUDA events;
medians per call are printed in ms with TOPS (2*M*N*K / time) and the ratios of ours to cuBLAS
bf16 and to ``_int_mm``. The weights rotate over enough copies to exceed 3x the L2 cache, so
the M = 1 rows measure weight streaming from HBM, not L2 hits. ``--sweep`` also times a set
of other block configurations of our kernel per M (the fixed ``gemm_config`` was chosen
without a GPU; this shows what to change).

    python benchmarks/w8a8_gpu.py                 # on a CUDA machine (torch + triton only)
    python benchmarks/w8a8_gpu.py --sweep         # plus the block-configuration sweep
    python benchmarks/w8a8_gpu.py --smoke         # CPU, TRITON_INTERPRET=1, tiny sizes
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

if "--smoke" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported (by torch or by us)

import torch  # noqa: E402

try:
    import scalefold  # noqa: F401
except ImportError:
    # The repo root is the package: import it through a symlink named scalefold.
    _d = Path(tempfile.mkdtemp(prefix="sf-pkg-"))
    (_d / "scalefold").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    sys.path.insert(0, str(_d))

from scalefold.codegen.triton_qgemm import gemm_config, qgemm_launch  # noqa: E402

OUT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
SWEEP = [dict(BM=bm, BN=bn, BK=bk, num_warps=nw, num_stages=ns)
         for bm, bn, bk, nw, ns in [
             (16, 32, 128, 4, 4), (16, 64, 128, 4, 4), (16, 64, 256, 4, 3), (16, 128, 128, 4, 4),
             (32, 64, 128, 4, 4), (64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 128, 128, 4, 5),
             (64, 256, 128, 8, 3), (128, 128, 128, 8, 3), (128, 128, 128, 8, 4),
             (128, 256, 128, 8, 3), (128, 128, 64, 4, 4), (256, 128, 128, 8, 3)]]


class Timer:
    """Median time per call of a function of the call index (which picks the weight copy)."""

    def __init__(self, cuda: bool, iters: int, reps: int):
        self.cuda, self.iters, self.reps = cuda, iters, reps

    def ms(self, fn: Callable[[int], object]) -> float:
        for i in range(3):
            fn(i)
        if not self.cuda:
            ts = []
            for i in range(self.iters):
                t = time.perf_counter()
                fn(i)
                ts.append(time.perf_counter() - t)
            return statistics.median(ts) * 1e3
        torch.cuda.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(self.reps):
                    fn(i)
            run, per = graph.replay, self.reps
        except Exception as e:  # noqa: BLE001  (time eagerly instead)
            print(f"    (CUDA graph capture failed: {type(e).__name__}; timing eagerly)")
            torch.cuda.synchronize()
            run, per = (lambda: [fn(i) for i in range(self.reps)]), self.reps
        run()
        torch.cuda.synchronize()
        ts = []
        for _ in range(self.iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            run()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / per)
        return statistics.median(ts)


def _int_mm_runner(x8: torch.Tensor, ws: list[torch.Tensor], scale: torch.Tensor,
                   bias: torch.Tensor, out: torch.dtype) -> tuple[Callable[[int], object] | None, str]:
    """(runner, note) of torch._int_mm plus the epilogue; None with the reason if it fails."""
    M, K = x8.shape
    mp = M if M > 16 and M % 8 == 0 else max(24, -(-M // 8) * 8)
    xp = x8 if mp == M else torch.cat([x8, x8.new_zeros(mp - M, K)])
    note = f"pad M {M}->{mp}" if mp != M else ""
    for layout in ("t", "t.contiguous"):
        bs = [w.t() if layout == "t" else w.t().contiguous() for w in ws]

        def run(i: int, bs: list[torch.Tensor] = bs) -> torch.Tensor:
            acc = torch._int_mm(xp, bs[i % len(bs)])
            return (acc[:M].float() * scale + bias).to(out)
        try:
            run(0)
            return run, note + ("" if layout == "t" else " (w.t() copied)")
        except RuntimeError as e:
            err = str(e).splitlines()[0]
    return None, f"unavailable: {err}"


def bench_shape(K: int, N: int, ms: list[int], args: argparse.Namespace, dev: torch.device) -> None:
    cuda = dev.type == "cuda"
    out = OUT[args.out]
    timer = Timer(cuda, args.iters, args.reps)
    gen = torch.Generator().manual_seed(K + N)
    l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 50 << 20) if cuda else 0
    nbuf = max(1, min(8, -(-3 * l2 // (N * K)))) if cuda else 1
    w8s = [torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int8).to(dev) for _ in range(nbuf)]
    nbuf16 = max(1, min(8, -(-3 * l2 // (2 * N * K)))) if cuda else 1
    wbs = [(torch.randn(N, K, generator=gen) * 0.02).to(dev, torch.bfloat16) for _ in range(nbuf16)]
    scale = (torch.rand(N, generator=gen) * 1e-3 + 1e-4).to(dev)
    bias = torch.randn(N, generator=gen).to(dev)
    print(f"\nK x N = {K} x {N}: {nbuf} int8 / {nbuf16} bf16 weight copies rotated; out {args.out}")
    print(f"  {'M':>5} {'runner':<26} {'ms':>9} {'TOPS':>8} {'vs cuBLAS bf16':>15} {'vs _int_mm':>11}  note")
    for M in ms:
        x8 = torch.randint(-127, 128, (M, K), generator=gen, dtype=torch.int8).to(dev)
        xb = (torch.randn(M, K, generator=gen) * 2).to(dev, torch.bfloat16)
        rows: list[tuple[str, float | None, str]] = []

        launches = [qgemm_launch(x8, w, scale, None, bias, out_dtype=out) for w in w8s]
        ours = lambda i: launches[i % nbuf][0]([x8, w8s[i % nbuf], scale, scale, bias, launches[i % nbuf][1]])  # noqa: E731
        cfg = gemm_config(M, N, K)
        rows.append(("triton i8 (ours)", timer.ms(ours),
                     f"BM{cfg['BM']} BN{cfg['BN']} BK{cfg['BK']} w{cfg['num_warps']} s{cfg['num_stages']}"))
        dyn = [qgemm_launch(xb, w, scale, None, bias, act="per_token") for w in w8s]
        rows.append(("triton per-token (ours)", timer.ms(
            lambda i: dyn[i % nbuf][0]([xb, w8s[i % nbuf], scale, scale, bias, dyn[i % nbuf][1]])),
            "bf16 x quantised + GEMM"))
        imm, note = _int_mm_runner(x8, w8s, scale, bias, out)
        rows.append(("torch._int_mm + epi", timer.ms(imm) if imm else None, note))
        rows.append(("cuBLAS bf16", timer.ms(lambda i: torch.matmul(xb, wbs[i % nbuf16].t())), ""))

        # correctness: ours against _int_mm's epilogue (same math, different rounding order)
        launch0, y = launches[0]
        launch0([x8, w8s[0], scale, scale, bias, y])
        ref = (x8.double() @ w8s[0].double().t()) * scale.double() + bias.double()   # exact sums
        err = ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
        rows[0] = (rows[0][0], rows[0][1], rows[0][2] + f"; max rel err {err:.1e}")

        t_bf16, t_imm = rows[3][1], rows[2][1]
        for name, t, note in rows:
            if t is None:
                print(f"  {M:>5} {name:<26} {'-':>9} {'-':>8} {'-':>15} {'-':>11}  {note}")
                continue
            tops = 2 * M * N * K / (t * 1e-3) / 1e12
            r16 = f"{t_bf16 / t:.2f}x" if t_bf16 else "-"
            rim = f"{t_imm / t:.2f}x" if t_imm else "-"
            print(f"  {M:>5} {name:<26} {t:>9.4f} {tops:>8.1f} {r16:>15} {rim:>11}  {note}")
        if args.sweep:
            sweep(x8, w8s, scale, bias, out, timer, nbuf)


def sweep(x8: torch.Tensor, w8s: list[torch.Tensor], scale: torch.Tensor, bias: torch.Tensor,
          out: torch.dtype, timer: Timer, nbuf: int) -> None:
    """Other block configurations of our GEMM for this M (those that compile)."""
    M, K = x8.shape
    N = w8s[0].shape[0]
    res = []
    for cfg in SWEEP:
        if cfg["BM"] > max(16, 2 * M):
            continue
        try:
            ls = [qgemm_launch(x8, w, scale, None, bias, out_dtype=out, config=cfg) for w in w8s]
            t = timer.ms(lambda i: ls[i % nbuf][0]([x8, w8s[i % nbuf], scale, scale, bias, ls[i % nbuf][1]]))
            res.append((t, cfg))
        except Exception as e:  # noqa: BLE001  (out of shared memory / registers)
            res.append((float("inf"), dict(cfg, error=type(e).__name__)))
    for t, cfg in sorted(res, key=lambda r: r[0])[:5]:
        tops = 2 * M * N * K / (t * 1e-3) / 1e12 if t != float("inf") else 0.0
        print(f"        sweep M={M}: {t:.4f} ms {tops:7.1f} TOPS  {cfg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1,16,256,4096", help="comma-separated token counts")
    ap.add_argument("--shapes", default="4096x11008,8192x8192", help="KxN,KxN")
    ap.add_argument("--out", default="bf16", choices=sorted(OUT))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--reps", type=int, default=10, help="calls per CUDA graph")
    ap.add_argument("--sweep", action="store_true", help="also time other block configurations")
    ap.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny sizes")
    args = ap.parse_args()
    if args.smoke:
        dev = torch.device("cpu")
        ms, shapes = [1, 3, 17], [(64, 96), (40, 72)]
        args.iters, args.reps = 1, 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device (use --smoke for the CPU interpreter)")
        dev = torch.device("cuda")
        ms = [int(m) for m in args.m.split(",")]
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, "
              f"triton {__import__('triton').__version__}")
    for K, N in shapes:
        bench_shape(K, N, ms, args, dev)


if __name__ == "__main__":
    main()
