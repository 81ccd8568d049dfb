"""Float32 ``linear`` with a constant weight above the GEMV's rows, as a generated C GEMM.

The C target runs a float ``linear`` as a ``library`` kernel (oneDNN's ``_linear_pointwise``);
up to a few rows the generated GEMV (c_f32gemv.py) takes it instead. Between, oneDNN through
torch leaves much of the FMA units idle on the shapes of small and mid-size transformers:
the tile loop of the convolutions (c_conv.py, a 1x1 convolution is the same GEMM) measured
1.2-2.4x faster than oneDNN's linear on this CPU (``probe/pwl.py``, not kept: ViT-tiny's
197 x 192 x 576 88.6 against 132.8 µs, 197 x 768 x 192 108.6 against 153.3, BERT-base's
128 x 768 x 3072 1197.8 against 1426.6, 64 x 384 x 384 39.3 against 67.9; 420-535 GFLOP/s).

This module renders, for such a kernel, a second C alternative (``CKernel.suffix`` "_gemm")
that the executor runs at every binding whose rows the GEMV does not take
(runtime/executor.py ``_compiled_alt``).

Weights: read in place, as the GEMV reads them: the kernel's weight argument is the graph's
own constant [N, K]. Each thread packs the 32-channel panel it works on into a [K][32]
buffer of its own when its panel changes (c_conv.render_gemm, ``rows``), so the alternative
costs no memory beyond K * 128 bytes per thread. Weights above ``MAX_WEIGHT`` bytes keep
oneDNN: the panel is re-read once per group of 48 rows, which stays in the L3 only for
weights that fit it.

Kernel ABI (c.py): as the GEMV's: ``p`` = x [M, K], the weight [N, K], [bias [N]], [the
epilogue ``add``'s other operand, y-shaped], y [M, N]; ``q[0]`` = M. Epilogues: those of the
GEMV (c_f32gemv._epilogue_ok) in the fused C kernels' expressions. Each output is the same f32
sum whatever the thread count (a tile's sum never splits across threads).
"""
from __future__ import annotations

import sympy

from .c import CKernel, _prod
from . import c_conv
from .c_conv import ConvForm, epilogue, render_gemm, tile_fn, tile_scalar
from .c_f32gemv import _epilogue_ok
from .c_types import PRELUDE
from .schedule import Kernel

# dst[c * ldd + r] = src[r * ld + c] for a 16 x 16 block: four rounds of AVX-512 shuffles
TRANSPOSE16 = r"""
static inline void sf_tr16(const float *src, int64_t ld, float *dst, int64_t ldd) {
  __m512 r0 = _mm512_loadu_ps(src + 0 * ld), r1 = _mm512_loadu_ps(src + 1 * ld), r2 = _mm512_loadu_ps(src + 2 * ld), r3 = _mm512_loadu_ps(src + 3 * ld);
  __m512 r4 = _mm512_loadu_ps(src + 4 * ld), r5 = _mm512_loadu_ps(src + 5 * ld), r6 = _mm512_loadu_ps(src + 6 * ld), r7 = _mm512_loadu_ps(src + 7 * ld);
  __m512 r8 = _mm512_loadu_ps(src + 8 * ld), r9 = _mm512_loadu_ps(src + 9 * ld), r10 = _mm512_loadu_ps(src + 10 * ld), r11 = _mm512_loadu_ps(src + 11 * ld);
  __m512 r12 = _mm512_loadu_ps(src + 12 * ld), r13 = _mm512_loadu_ps(src + 13 * ld), r14 = _mm512_loadu_ps(src + 14 * ld), r15 = _mm512_loadu_ps(src + 15 * ld);
  __m512 t0 = _mm512_unpacklo_ps(r0, r1), t1 = _mm512_unpackhi_ps(r0, r1), t2 = _mm512_unpacklo_ps(r2, r3), t3 = _mm512_unpackhi_ps(r2, r3);
  __m512 t4 = _mm512_unpacklo_ps(r4, r5), t5 = _mm512_unpackhi_ps(r4, r5), t6 = _mm512_unpacklo_ps(r6, r7), t7 = _mm512_unpackhi_ps(r6, r7);
  __m512 t8 = _mm512_unpacklo_ps(r8, r9), t9 = _mm512_unpackhi_ps(r8, r9), t10 = _mm512_unpacklo_ps(r10, r11), t11 = _mm512_unpackhi_ps(r10, r11);
  __m512 t12 = _mm512_unpacklo_ps(r12, r13), t13 = _mm512_unpackhi_ps(r12, r13), t14 = _mm512_unpacklo_ps(r14, r15), t15 = _mm512_unpackhi_ps(r14, r15);
#define LO(a, b) _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
#define HI(a, b) _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
  r0 = LO(t0, t2); r1 = HI(t0, t2); r2 = LO(t1, t3); r3 = HI(t1, t3);
  r4 = LO(t4, t6); r5 = HI(t4, t6); r6 = LO(t5, t7); r7 = HI(t5, t7);
  r8 = LO(t8, t10); r9 = HI(t8, t10); r10 = LO(t9, t11); r11 = HI(t9, t11);
  r12 = LO(t12, t14); r13 = HI(t12, t14); r14 = LO(t13, t15); r15 = HI(t13, t15);
#undef LO
#undef HI
  t0 = _mm512_shuffle_f32x4(r0, r4, 0x88); t1 = _mm512_shuffle_f32x4(r1, r5, 0x88); t2 = _mm512_shuffle_f32x4(r2, r6, 0x88); t3 = _mm512_shuffle_f32x4(r3, r7, 0x88);
  t4 = _mm512_shuffle_f32x4(r0, r4, 0xdd); t5 = _mm512_shuffle_f32x4(r1, r5, 0xdd); t6 = _mm512_shuffle_f32x4(r2, r6, 0xdd); t7 = _mm512_shuffle_f32x4(r3, r7, 0xdd);
  t8 = _mm512_shuffle_f32x4(r8, r12, 0x88); t9 = _mm512_shuffle_f32x4(r9, r13, 0x88); t10 = _mm512_shuffle_f32x4(r10, r14, 0x88); t11 = _mm512_shuffle_f32x4(r11, r15, 0x88);
  t12 = _mm512_shuffle_f32x4(r8, r12, 0xdd); t13 = _mm512_shuffle_f32x4(r9, r13, 0xdd); t14 = _mm512_shuffle_f32x4(r10, r14, 0xdd); t15 = _mm512_shuffle_f32x4(r11, r15, 0xdd);
  r0 = _mm512_shuffle_f32x4(t0, t8, 0x88); r1 = _mm512_shuffle_f32x4(t1, t9, 0x88); r2 = _mm512_shuffle_f32x4(t2, t10, 0x88); r3 = _mm512_shuffle_f32x4(t3, t11, 0x88);
  r4 = _mm512_shuffle_f32x4(t4, t12, 0x88); r5 = _mm512_shuffle_f32x4(t5, t13, 0x88); r6 = _mm512_shuffle_f32x4(t6, t14, 0x88); r7 = _mm512_shuffle_f32x4(t7, t15, 0x88);
  r8 = _mm512_shuffle_f32x4(t0, t8, 0xdd); r9 = _mm512_shuffle_f32x4(t1, t9, 0xdd); r10 = _mm512_shuffle_f32x4(t2, t10, 0xdd); r11 = _mm512_shuffle_f32x4(t3, t11, 0xdd);
  r12 = _mm512_shuffle_f32x4(t4, t12, 0xdd); r13 = _mm512_shuffle_f32x4(t5, t13, 0xdd); r14 = _mm512_shuffle_f32x4(t6, t14, 0xdd); r15 = _mm512_shuffle_f32x4(t7, t15, 0xdd);
  _mm512_storeu_ps(dst + 0 * ldd, r0); _mm512_storeu_ps(dst + 1 * ldd, r1); _mm512_storeu_ps(dst + 2 * ldd, r2); _mm512_storeu_ps(dst + 3 * ldd, r3);
  _mm512_storeu_ps(dst + 4 * ldd, r4); _mm512_storeu_ps(dst + 5 * ldd, r5); _mm512_storeu_ps(dst + 6 * ldd, r6); _mm512_storeu_ps(dst + 7 * ldd, r7);
  _mm512_storeu_ps(dst + 8 * ldd, r8); _mm512_storeu_ps(dst + 9 * ldd, r9); _mm512_storeu_ps(dst + 10 * ldd, r10); _mm512_storeu_ps(dst + 11 * ldd, r11);
  _mm512_storeu_ps(dst + 12 * ldd, r12); _mm512_storeu_ps(dst + 13 * ldd, r13); _mm512_storeu_ps(dst + 14 * ldd, r14); _mm512_storeu_ps(dst + 15 * ldd, r15);
}
"""

SUFFIX = "_gemm"            # the alternative's name: the library kernel's name plus this
MAX_WEIGHT = 16 << 20       # bytes: larger f32 weights keep oneDNN (module doc)


def gemm_supported(k: Kernel) -> bool:
    """Whether ``k`` (a ``library`` kernel) is a float32 ``linear`` this module renders: x f32
    [..., K] with static K >= 1, a constant f32 weight [N, K] of static shape and at most
    ``MAX_WEIGHT`` bytes, bias absent or f32 [N], output f32, and at most one epilogue node
    of the GEMV's kinds."""
    if k.kind != "library" or not k.nodes or k.nodes[0].op != "linear" or len(k.nodes) > 2:
        return False
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    if x is None or w is None or not w.is_const or w.type.rank != 2 or x.type.rank < 1:
        return False
    N, K = w.type.shape
    if not isinstance(N, int) or not isinstance(K, int) or N < 1 or K < 1 or x.type.shape[-1] != K:
        return False
    if 4 * N * K > MAX_WEIGHT:
        return False
    if any(v is not None and v.dtype.name != "f32" for v in (x, w, bias, n.outputs[0])):
        return False
    if bias is not None and tuple(bias.type.shape) != (N,):
        return False
    return len(k.nodes) == 1 or _epilogue_ok(n, k.nodes[1])


def render_gemm_linear(k: Kernel) -> CKernel:
    """C source of the GEMM alternative of library kernel ``k`` (``gemm_supported``); its
    ``args`` name the graph's own Values (ABI in the module doc)."""
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    N, K = w.type.shape
    other = None
    if len(k.nodes) == 2 and k.nodes[1].op == "add":
        e = k.nodes[1]
        other = e.inputs[1] if e.inputs[0] is n.outputs[0] else e.inputs[0]
    y = k.nodes[-1].outputs[0]
    args: list = [x, w]
    decl = ["  const float *restrict x = (const float *)p[0];",
            "  const float *restrict w = (const float *)p[1];"]
    if bias is not None:
        decl.append(f"  const float *restrict bias = (const float *)p[{len(args)}];")
        args.append(bias)
    if other is not None:
        decl.append(f"  const float *restrict oth = (const float *)p[{len(args)}];")
        args.append(other)
    decl.append(f"  float *restrict y = (float *)p[{len(args)}];")
    args.append(y)
    # the convolutions' pointwise loop over an "image" of M rows, one column
    decl += ["  const int64_t M = q[0];",
             f"  const int64_t N = 1, H = M, W = 1, OH = M, OW = 1, CI = {K}, CO = {N}, PH = 0, PW = 0;",
             "  (void)H; (void)W; (void)PH; (void)PW;",
             "  if (M <= 0) return;"]
    f = ConvForm("pw", 1, 1, 1, 1, 1, 1, 32 if N > 16 else 16, 6 if N > 16 else 8)
    epi = epilogue(k, bias is not None, False)
    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if not c_conv.CONV.vec:   # read at render time (tests switch it)
        head.append("#define SF_NO_VEC 1")
    head += ["#if defined(__AVX512F__) && !defined(SF_NO_VEC)", "#define SF_CONV_VEC 1",
             "#include <immintrin.h>", TRANSPOSE16, *tile_fn(f), "#else", "#define SF_CONV_VEC 0", *tile_scalar(f), "#endif"]
    body = render_gemm(f, epi, other is not None, rows=True)
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    return CKernel(k, src, [sympy.sympify(_prod(x.type.shape[:-1]))], args, suffix=SUFFIX)
