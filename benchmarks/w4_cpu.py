"""Weight-only int4 GEMM on the CPU: scalefold's group-wise 4-bit qlinear template against
onnxruntime's MatMulNBits and torch fp32.

One linear of K x N = 4096 x 11008 (a LLaMA-7B MLP up projection), int4 asymmetric codes,
group 128 along K (22.5 MB of nibbles, plus 1.6 MB of f32 scales and 4-bit zero points), 2 threads, every
runner in this one process on the same codes; per M, medians in ms, the ratio of each runner to
scalefold's int8-activation kernel, and effective weight bandwidth (the 22.5 MB of nibbles /
time). Runners:

- ``scalefold w4 f32``: qlinear act none (f32 x, nibbles dequantised in registers, f32 FMA).
- ``scalefold w4 int8-act``: qlinear act per_token (x quantised per row in the kernel, VNNI).
- ``ort MatMulNBits acc4`` / ``acc0``: ``com.microsoft.MatMulNBits`` (bits 4, block 128) on
  the SAME codes, scales and zero points, accuracy_level 4 (int8 activations) and 0 (fp32).
- ``torch fp32 F.linear``: the dequantised weights as a dense f32 matrix.
- with ``--format int4,fp4``: ``scalefold fp4 f32`` / ``scalefold fp4 int8-act``, the same
  two kernels on FP4 E2M1 codes of the same weights (the quant_weights pass's RTN fp4_e2m1
  quantiser, group 128, power-of-two scales, no zero point; nibbles through a 16-entry table).
  ``--format fp4`` runs the fp4 rows only (ORT / torch need the int4 codes).

    .venv/bin/python benchmarks/w4_cpu.py [--m 1,16,64] [--k 4096] [--n 11008] [--threads 2]
        [--iters 20] [--repeat 3] [--format int4,fp4]

Before the runners, a small generated C kernel (12 independent ``vpdpbusd`` zmm chains per
thread) measures this CPU's int8 multiply-add ceiling; each M then prints the ``VNNI floor``,
M·N·K MACs at that rate, below which no int8-activation kernel can go (``--skip peak`` leaves
it out; CPUs without AVX-512 VNNI print nothing).

With ``--repeat R`` every M is measured R times and the best median of each runner printed
(the machine is shared; the best median is the least disturbed one). Output differences
against the reference interpreter (scalefold) and between ORT and scalefold are printed too.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scalefold.runtime.timing import median_ms  # noqa: E402


def _ort_model(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, block: int,
               level: int):
    """MatMulNBits on u4 ``codes`` [N, K], ``scale`` / ``zero`` [N, K/block] as a ModelProto."""
    import numpy as np

    n, k = codes.shape
    nblk = k // block
    c = codes.to(torch.int32).reshape(n, nblk, block // 2, 2)
    b = (c[..., 0] | (c[..., 1] << 4)).to(torch.uint8)          # low nibble first
    zc = zero.to(torch.int32)
    if nblk % 2:
        zc = torch.cat([zc, torch.zeros(n, 1, dtype=torch.int32)], 1)
    zc = zc.reshape(n, -1, 2)
    zp = (zc[..., 0] | (zc[..., 1] << 4)).to(torch.uint8).reshape(-1)
    del np
    return mnb_model(b, scale, zp, k, n, 4, block, level)


_VNNI_PEAK_C = r"""
#include <immintrin.h>
#include <stdint.h>
#include <omp.h>
/* 12 independent vpdpbusd chains per thread (enough to hide the latency on the cores seen);
   q[0] iterations; p[0] receives one int32 per thread so that the chains stay live. */
void sf_kernel(void **p, const int64_t *q) {
  int32_t *out = (int32_t *)p[0];
  #pragma omp parallel
  {
    __m512i a[12];
    const __m512i u = _mm512_set1_epi8(1), s = _mm512_set1_epi8(2);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_epi32(i);
    for (int64_t it = 0; it < q[0]; it++) {
      #pragma GCC unroll 12
      for (int j = 0; j < 12; j++) a[j] = _mm512_dpbusd_epi32(a[j], u, s);
    }
    __m512i t = a[0];
    for (int i = 1; i < 12; i++) t = _mm512_add_epi32(t, a[i]);
    out[omp_get_thread_num()] = _mm512_reduce_add_epi32(t);
  }
}
"""


def vnni_peak_gmacs(threads: int, iters: int = 2_000_000) -> float | None:
    """The int8 multiply-add ceiling of this CPU in GMAC/s (``threads`` OpenMP threads, each
    running 12 independent ``vpdpbusd`` zmm chains; best of 3), or None without AVX-512 VNNI."""
    import ctypes

    from scalefold.runtime.cache import CompileError, build, load_kernel
    try:
        fn = load_kernel(build(_VNNI_PEAK_C))
    except CompileError:
        return None
    out = (ctypes.c_int32 * max(threads, 64))()
    ptrs = (ctypes.c_void_p * 1)(ctypes.cast(out, ctypes.c_void_p))
    q = (ctypes.c_int64 * 1)(iters)
    fn(ptrs, q)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn(ptrs, q)
        best = min(best, time.perf_counter() - t0)
    return iters * 12 * 64 * threads / best / 1e9


def best_medians(fns: dict[str, Callable[[], object]], repeat: int, iters: int) -> dict[str, float]:
    """Per runner the best of ``repeat`` medians of ``iters`` calls (ms), the runners taken in
    turn each round so that a disturbance of the shared machine hits them alike."""
    best: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(repeat):
            for nm, f in fns.items():
                best[nm] = min(best.get(nm, float("inf")), median_ms(f, iters))
    return best


def mnb_model(b: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, k: int, n: int, bits: int,
              block: int, level: int):
    """One ``com.microsoft.MatMulNBits`` node as a ModelProto: packed codes ``b`` [N, blocks,
    bytes], scales and packed zero points ``zp`` as MatMulNBits lays them out."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(b.numpy(), "B"),
             numpy_helper.from_array(scale.to(torch.float32).reshape(-1).numpy(), "S"),
             numpy_helper.from_array(zp.reshape(-1).numpy(), "Z")]
    node = helper.make_node("MatMulNBits", ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=block, accuracy_level=level)
    graph = helper.make_graph([node], "mnb",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", default="1,16,64", help="comma list of M")
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--n", type=int, default=11008)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma list of runners to skip: ort,fp32,peak (the VNNI ceiling)")
    ap.add_argument("--format", default="int4", help="comma list of weight formats: int4,fp4")
    a = ap.parse_args(argv)
    formats = set(filter(None, a.format.split(",")))
    if not formats or formats - {"int4", "fp4"}:
        ap.error(f"--format takes int4 and / or fp4, got {a.format!r}")
    if a.group < 1 or a.k % a.group:
        ap.error(f"--k {a.k} must be a multiple of --group {a.group}")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    torch.set_num_threads(a.threads)
    skip = set(filter(None, a.skip.split(",")))

    from scalefold import api
    from scalefold.ir.graph import Graph
    from scalefold.ir.ops.quant import dequant_weight
    from scalefold.passes.wq_fp import FP4_FORMATS, fp4_codes
    from scalefold.runtime import interp

    K, N, gs = a.k, a.n, a.group
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=gen) * 0.02
    # RTN int4 asymmetric, group gs (the quant_weights pass's quantiser)
    wg = w.reshape(N, K // gs, gs)
    mn, mx = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    delta = (mx - mn).clamp(min=1e-5) / 15
    z = torch.clamp(-torch.round(mn / delta), 0, 15)
    codes = torch.clamp(torch.round(wg / delta) + z, 0, 15).reshape(N, K).to(torch.uint8)
    scale, zero = delta.squeeze(-1).contiguous(), z.squeeze(-1).to(torch.uint8).contiguous()
    wbytes = N * K / 2
    wdq = dequant_weight(codes, scale, zero, gs, False)

    codes4, _, scale4 = fp4_codes(w, FP4_FORMATS["e2m1"], gs)

    def qgraph(act: str, fmt: str) -> Graph:
        g = Graph("w4")
        xv = g.add_input(f"f32[M,{K}]", "x")
        if fmt == "fp4":
            ins = [g.add_const(codes4, "f4e2m1", "w"), g.add_const(scale4, "f32", "s")]
            attrs = {"act": act, "group": gs, "wtype": "f4e2m1"}
        else:
            ins = [g.add_const(codes, "u4", "w"), g.add_const(scale, "f32", "s"),
                   g.add_const(zero, "u4", "z")]
            attrs = {"act": act, "group": gs}
        y = g.add("qlinear", [xv, *ins], attrs)
        g.set_outputs([y])
        return g

    # (runner name, graph, compiled) of scalefold's kernels per format
    ours = []
    t0 = time.perf_counter()
    for fmt in ("int4", "fp4"):
        if fmt in formats:
            for act, what in (("none", "f32"), ("per_token", "int8-act")):
                g = qgraph(act, fmt)
                ours.append((f"scalefold {'w4' if fmt == 'int4' else 'fp4'} {what}", g,
                             api.build_c(g)))
    print(f"build {time.perf_counter() - t0:.1f} s incl. packing; "
          f"kernels {[k.kind for _, _, cm in ours for k in cm.schedule.kernels]}")
    if "int4" not in formats:
        skip |= {"ort", "fp32"}
    sessions = {}
    if "ort" not in skip:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        for lvl in (4, 0):
            m = _ort_model(codes, scale, zero, gs, lvl)
            sessions[lvl] = ort.InferenceSession(m.SerializeToString(), so,
                                                 providers=["CPUExecutionProvider"])

    names = [nm for nm, _, _ in ours] + ["ort MatMulNBits acc4", "ort MatMulNBits acc0",
                                         "torch fp32 F.linear"]
    peak = vnni_peak_gmacs(a.threads) if "peak" not in skip else None
    if peak is not None:
        print(f"VNNI int8 ceiling of this CPU, {a.threads} threads: {peak:.0f} GMAC/s "
              f"(M*N*K int8 MACs take at least the 'VNNI floor' row below)")
    summary = {}
    for M in [int(v) for v in a.m.split(",")]:
        x = torch.randn(M, K, generator=gen)
        feed = {"A": x.numpy()}
        # correctness: against the reference interpreter and against ORT on the same codes
        refs = {nm: interp.run(g, x)[0].double() for nm, g, _ in ours}
        sc = float(next(iter(refs.values())).abs().max())
        errs = {f"{nm.split(' ', 1)[1]} vs ref": float((cm(x).double() - refs[nm]).abs().max()) / sc
                for nm, _, cm in ours}
        for lvl, s in sessions.items():
            yo = torch.from_numpy(s.run(None, feed)[0]).double()
            ref = refs["scalefold w4 int8-act" if lvl == 4 else "scalefold w4 f32"]
            errs[f"ort{lvl} vs ours"] = float((yo - ref).abs().max()) / sc
        fns: dict[str, Callable[[], object]] = {nm: (lambda cm=cm: cm(x)) for nm, _, cm in ours}
        for lvl, s in sessions.items():
            fns[f"ort MatMulNBits acc{lvl}"] = (lambda s=s: s.run(None, feed))
        if "fp32" not in skip:
            fns["torch fp32 F.linear"] = lambda: torch.nn.functional.linear(x, wdq)
        best = best_medians(fns, a.repeat, a.iters)
        base = best[[nm for nm, _, _ in ours if nm.endswith("int8-act")][0]]
        print(f"-- M={M} K={K} N={N} g{gs}, {a.threads} threads, best of {a.repeat} medians of "
              f"{a.iters}; max |err| / max |y|: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
        print(f"{'runner':24s} {'ms':>8s} {'/int8-act':>10s} {'GB/s':>7s} {'GFLOP/s':>8s}")
        for nm in names:
            if nm in best:
                t = best[nm]
                print(f"{nm:24s} {t:8.3f} {t / base:10.2f} {wbytes / t / 1e6:7.1f} "
                      f"{2 * M * N * K / t / 1e6:8.1f}")
        if peak is not None:
            print(f"{'VNNI floor (M*N*K MACs)':24s} {M * N * K / peak / 1e6:8.3f}")
        summary[M] = best
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
