"""W4A16 (g128, bf16 x) Triton kernels vs cuBLAS bf16 and torch's int4 tinygemm on CUDA.

For (K, N) in 4096x11008, 8192x8192, 16384x16384 and M in 1, 16, 32, 64, 256: our ``w4_linear``
(codegen/triton_w4.py), ``F.linear`` on the bf16 weight (cuBLAS) and
``torch.ops.aten._weight_int4pack_mm`` (tinygemm, inner_k_tiles 8, group 128). Each op is
captured once in a CUDA graph and timed by ``triton.testing.do_bench`` over graph replays
(CUDA events; the L2 is flushed before every replay; median), all in one process. Prints µs,
ratios, achieved GB/s against 4.8 TB/s and the error of our output against the bf16-dequantised
weight product (‖y - ref‖ / ‖ref‖, ref in f32). Run from the repo root on a CUDA machine:
``mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/scalefold && PYTHONPATH=/tmp/pkg python3
benchmarks/w4_gpu.py [--sweep 1,16,64,256 [--sweep-only]] [--out FILE]`` (``--out`` also
writes the table to FILE; ``--sweep`` first times config variants at 8192 x 8192; ``--sym`` times
symmetric int4 (signed codes, no zero points) instead of u4 codes with zero points; ``--memory``
reports the GPU memory of a compiled int4 model against bf16 weights instead).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from scalefold.codegen.triton_w4 import w4_config, w4_launch
from scalefold.runtime.w4pack_gpu import pack_w4

SHAPES = [(4096, 11008), (8192, 8192), (16384, 16384)]
MS = [1, 16, 32, 64, 256]
GROUP = 128
PEAK = 4.8e12


def graphed(fn):
    """fn captured in a CUDA graph (replay callable), or fn itself if capture fails."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        return g.replay, True
    except Exception as e:  # noqa: BLE001 - report and time eagerly
        print(f"  (graph capture failed: {type(e).__name__}: {e}; timing eagerly)")
        return fn, False


def bench(fn) -> float:
    import triton.testing
    f, _ = graphed(fn)
    return triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median") * 1e3


def tinygemm_setup(u: torch.Tensor, s: torch.Tensor, z: torch.Tensor):
    """(weight, scales_and_zeros) for _weight_int4pack_mm from codes u [N, K] 0..15, scale and
    zero [N, G]: tinygemm dequantises (q - 8) * scale + zero, so zero = (8 - z) * scale."""
    packed = ((u[:, ::2] << 4) | u[:, 1::2]).to(torch.uint8)
    wt = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
    sz = torch.stack([s.T, ((8 - z.float()) * s).T], dim=2).to(torch.bfloat16).contiguous()
    return wt, sz


def variants(M: int) -> list[dict]:
    """Config variants timed by :func:`sweep` for one M: the nibble-block GEMM with the weights
    as operand A (``SWAP`` 3, the default for M > 4) over block shapes and splits, and for
    comparison the previous M = 16 default (``SWAP`` 1) and the [K/8, N] ``KN`` GEMM."""
    if M == 1:
        return [dict(GEMV=1, BM=1, H2=1, H2_BN=bn, H2_BPS=bps, H2_XB=xb, num_warps=4)
                for bn in (128, 256) for bps in (4, 8, 16) for xb in (0, 1)] + \
            [dict(GEMV=1, BM=1, BN=64, SPLIT=sp, num_warps=4, num_stages=1) for sp in (8, 16)]
    kn = dict(GEMV=0, KN=1, RESHAPE=1)
    g3 = dict(GEMV=0, SWAP=3, DOTS8=1, num_warps=4, num_stages=3)
    if M == 16:
        return [dict(GEMV=0, BM=16, BN=64, SWAP=1, DOTS8=1, SPLIT=4, num_warps=4, num_stages=3)] + \
            [dict(g3, BM=16, BN=bn, SPLIT=sp) for bn in (64, 128) for sp in (4, 5, 6, 7, 8)] + \
            [dict(kn, BM=16, BN=128, BK=64, SWAP=1, SCALE_W=sc, SPLIT=8, num_warps=4, num_stages=3)
             for sc in (0, 1)]
    if M == 64:
        return [dict(g3, BM=64, BN=bn, SPLIT=sp) for bn in (64, 128) for sp in (2, 3, 4, 5)] + \
            [dict(g3, BM=64, BN=256, SPLIT=sp, num_warps=8) for sp in (2, 4)] + \
            [dict(kn, BM=64, BN=128, BK=128, SPLIT=4, num_warps=4, num_stages=3)]
    return [dict(g3, BM=64, BN=128, SPLIT=sp) for sp in (1, 2)] + \
        [dict(g3, BM=64, BN=256, SPLIT=1, num_warps=8), dict(g3, BM=128, BN=128, SPLIT=1, num_warps=8),
         dict(g3, BM=64, BN=64, SPLIT=1)] + \
        [dict(kn, BM=128, BN=64, BK=64, SPLIT=1, num_warps=4, num_stages=3)]


def bench_rot(fns, reps: int = 3) -> float:
    """µs per call of one CUDA graph replaying ``fns`` (on different weights, together larger
    than the L2) ``reps`` times in turn: streaming time without do_bench's L2 flush."""
    def seq():
        for _ in range(reps):
            for f in fns:
                f()
    g, _ = graphed(seq)
    g()
    torch.cuda.synchronize()
    ts = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / (reps * len(fns)))
    return sorted(ts)[len(ts) // 2]


def calibrate() -> None:
    """Harness check at K = N = 8192, M = 1: do_bench (L2 flushed) against rotating graphs over
    4 weight copies for our default config, cuBLAS bf16, and a 33.5 MB read + write copy."""
    dev = torch.device("cuda")
    K = N = 8192
    G = K // GROUP
    x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
    ps, ls, ws = [], [], []
    for _ in range(4):
        u = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=dev)
        s = torch.rand(N, G, device=dev) * 0.02 + 0.001
        z = torch.randint(0, 16, (N, G), dtype=torch.uint8, device=dev)
        p = pack_w4(u, s, z, GROUP, False)
        launch, y = w4_launch(x, p)
        ps.append(p)
        ls.append((lambda la=launch, yy=y: la([x, x, yy])))
        ws.append(torch.randn(N, K, device=dev, dtype=torch.bfloat16))
    dst = [torch.empty_like(p.qweight) for p in ps]
    cp = [(lambda d=d, p=p: d.copy_(p.qweight)) for d, p in zip(dst, ps)]
    bf = [(lambda w=w: F.linear(x, w)) for w in ws]
    for name, fns in [("w4 default", ls), ("cublas bf16", bf), ("copy 33.5MB", cp)]:
        print(f"calib M=1 {name:12s}: do_bench {bench(fns[0]):7.1f} us  rotating "
              f"{bench_rot(fns):7.1f} us", flush=True)


def sweep(ms: list[int], budget_s: float = 250.0) -> None:
    """Times config variants at K = N = 8192 (checking each output), best six per M."""
    import time
    t0 = time.time()
    dev = torch.device("cuda")
    K = N = 8192
    G = K // GROUP
    u = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=dev)
    s = torch.rand(N, G, device=dev) * 0.02 + 0.001
    z = torch.randint(0, 16, (N, G), dtype=torch.uint8, device=dev)
    p = pack_w4(u, s, z, GROUP, False)
    wd = ((u.float() - z.float().repeat_interleave(GROUP, 1)) * s.repeat_interleave(GROUP, 1))
    for M in ms:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        ref = x.float() @ wd.T
        wb = wd.to(torch.bfloat16)
        print(f"sweep M={M}: cublas bf16 {bench(lambda: F.linear(x, wb)):7.1f} us", flush=True)
        del wb
        res = []
        for cfg in variants(M):
            if time.time() - t0 > budget_s * (ms.index(M) + 1) / len(ms):
                print(f"  sweep budget spent at M={M}", flush=True)
                break
            try:
                launch, y = w4_launch(x, p, config=dict(cfg))
                for _ in range(2):
                    y.fill_(float("nan"))
                    launch([x, x, y])
                torch.cuda.synchronize()
                err = ((y.float() - ref).norm() / ref.norm()).item()
                t = bench(lambda: launch([x, x, y]))
            except Exception as e:  # noqa: BLE001
                print(f"  sweep {cfg}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                continue
            res.append((t, err, cfg))
            print(f"  M={M} {t:7.1f} us err {err:.1e} {cfg}", flush=True)
        for t, err, cfg in sorted(res, key=lambda r: r[0])[:6]:
            print(f"sweep M={M}: {t:7.1f} us err {err:.1e} {cfg}", flush=True)


def memory(K: int = 4096, N: int = 11008, layers: int = 4) -> None:
    """GPU memory held by a compiled int4 g128 model of ``layers`` K x N linears (a symbolic
    batch), against the same weights in bf16: after building and a first M = 1 call, then after
    an M = 64 call (its split-K workspaces) and an M = 512 call (the dense path's scratch)."""
    from scalefold import api
    from scalefold.frontend.torch import from_torch
    from scalefold.passes.quant_weights import quant_weights

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # alternate K x N and N x K so the layers chain
            self.ls = torch.nn.ModuleList(
                torch.nn.Linear(K if i % 2 == 0 else N, N if i % 2 == 0 else K, bias=False)
                for i in range(layers))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for lin in self.ls:
                x = lin(x)
            return x

    torch.manual_seed(0)
    model = Stack().to(torch.bfloat16)
    bf16_mb = sum(p.numel() * 2 for p in model.parameters()) / 2**20
    batch = torch.export.Dim("batch", min=1, max=4096)
    g = from_torch(model, (torch.randn(2, K, dtype=torch.bfloat16),), dynamic_shapes=({0: batch},))
    g = quant_weights(g, None, format="int4", group=128)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    cm = api.build_triton(g, "cuda")
    cm(torch.randn(1, K, dtype=torch.bfloat16, device="cuda"))
    torch.cuda.synchronize()
    m1 = (torch.cuda.memory_allocated() - base) / 2**20
    cm(torch.randn(64, K, dtype=torch.bfloat16, device="cuda"))
    torch.cuda.synchronize()
    m64 = (torch.cuda.memory_allocated() - base) / 2**20
    cm(torch.randn(512, K, dtype=torch.bfloat16, device="cuda"))
    torch.cuda.synchronize()
    m512 = (torch.cuda.memory_allocated() - base) / 2**20
    print(f"memory: {layers} linears {K}x{N} alternating, int4 g128: bf16 weights {bf16_mb:.1f} MB; "
          f"compiled W4 model holds {m1:.1f} MB after M = 1 ({m1 / bf16_mb:.2f}x bf16), "
          f"{m64:.1f} MB after M = 64 ({m64 / bf16_mb:.2f}x), {m512:.1f} MB after M = 512 "
          f"({m512 / bf16_mb:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--shapes", default=None, help="e.g. 8192x8192,4096x11008")
    ap.add_argument("--sweep", default=None, help="first time block / split variants at "
                    "8192x8192 for these M (e.g. 1,16,64,256)")
    ap.add_argument("--sweep-only", action="store_true")
    ap.add_argument("--sym", action="store_true", help="symmetric int4 (signed codes, no zero points) "
                    "instead of u4 + zero")
    ap.add_argument("--memory", action="store_true", help="only report the GPU memory a compiled "
                    "int4 model holds (see memory())")
    ap.add_argument("--ms", default=None, help="rows of x to time, e.g. 2,4 (default 1,16,32,64,256)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        ap.exit(2, f"{ap.prog}: no CUDA device: this benchmark times Triton kernels against cuBLAS "
                   "on a GPU\n")
    if args.memory:
        memory()
        return
    if args.sweep:
        if "1" in args.sweep.split(","):
            calibrate()
        sweep([int(m) for m in args.sweep.split(",")])
        if args.sweep_only:
            return
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    lines = [f"# {torch.cuda.get_device_name()} torch {torch.__version__}; do_bench median over "
             f"CUDA-graph replays, L2 flushed; W4 g{GROUP} {'i4 symmetric' if args.sym else 'u4 + zero'}, bf16 x",
             f"{'K':>6} {'N':>6} {'M':>4} | {'w4 us':>8} {'bf16 us':>8} {'tiny us':>8} | "
             f"{'x bf16':>6} {'x tiny':>6} | {'w4 GB/s':>8} {'%4.8T':>6} | {'cfg':<22} | relerr"]
    for K, N in shapes:
        G = K // GROUP
        u = torch.randint(0, 16, (N, K), dtype=torch.uint8, device=dev)
        s = (torch.rand(N, G, device=dev) * 0.02 + 0.001)
        if args.sym:
            # symmetric int4: signed codes u - 8, no zero points (the kernels' constant zero)
            z = torch.full((N, G), 8, dtype=torch.uint8, device=dev)
            p = pack_w4((u.to(torch.int16) - 8).to(torch.int8), s, None, GROUP, True)
        else:
            z = torch.randint(0, 16, (N, G), dtype=torch.uint8, device=dev)
            p = pack_w4(u, s, z, GROUP, False)
        wd = ((u.float() - z.float().repeat_interleave(GROUP, 1)) * s.repeat_interleave(GROUP, 1))
        wb = wd.to(torch.bfloat16)
        try:
            tw, tsz = tinygemm_setup(u.to(torch.int32), s, z)
        except Exception as e:  # noqa: BLE001
            print(f"tinygemm setup failed: {type(e).__name__}: {e}")
            tw = None
        for M in ([int(m) for m in args.ms.split(",")] if args.ms else MS):
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
            launch, y = w4_launch(x, p)
            ts = [x, x, y]
            ours = lambda: launch(ts)  # noqa: E731
            ours()
            torch.cuda.synchronize()
            ref = x.float() @ wd.T
            err = ((y.float() - ref).norm() / ref.norm()).item()
            t_w4 = bench(ours)
            t_bf = bench(lambda: F.linear(x, wb))
            t_tg = float("nan")
            if tw is not None:
                try:
                    yt = torch.ops.aten._weight_int4pack_mm(x, tw, GROUP, tsz)
                    terr = ((yt.float() - ref).norm() / ref.norm()).item()
                    if terr > 2e-2:
                        print(f"  tinygemm relerr {terr:.3g} (layout mismatch?)")
                    t_tg = bench(lambda: torch.ops.aten._weight_int4pack_mm(x, tw, GROUP, tsz))
                except Exception as e:  # noqa: BLE001
                    print(f"  tinygemm failed: {type(e).__name__}: {e}")
            zbytes = p.zeros.numel() if p.zeros is not None else 0
            nbytes = p.qweight.numel() * 4 + p.scales.numel() * 4 + zbytes + 2 * M * (K + N)
            gbs = nbytes / (t_w4 * 1e-6) / 1e9
            c = w4_config(M, N, K)
            if c.get("DENSE"):
                # the dense path (dequantise + cuBLAS); the in-loop GEMM it replaces, for comparison
                lg, _ = w4_launch(x, p, config=w4_config(M, N, K, dense_min=1 << 62))
                t_gemm = bench(lambda: lg(ts))
                cfg = f"dense (gemm {t_gemm:.1f})"
            elif c.get("H2"):
                cfg = f"h2 {c['H2_BN']} x {c['H2_BPS']} blocks"
            elif c.get("MMAG"):
                cfg = f"mma gemv 64 x {c['MMAG_BPS']} blocks"
            else:
                kind = 'gemv' if c['GEMV'] else ('kn' if c.get('KN') else 'gemm')
                cfg = f"{kind} {c['BM']}x{c['BN']} s{c['SPLIT']}"
            line = (f"{K:>6} {N:>6} {M:>4} | {t_w4:8.1f} {t_bf:8.1f} {t_tg:8.1f} | "
                    f"{t_bf / t_w4:6.2f} {t_tg / t_w4:6.2f} | {gbs:8.0f} {100 * gbs * 1e9 / PEAK:5.1f}% | "
                    f"{cfg:<22} | {err:.2e}")
            print(line, flush=True)
            lines.append(line)
        del u, wd, wb, p
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
