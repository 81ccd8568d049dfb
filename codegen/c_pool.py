"""Float32 2-D pooling on channels-last activations as generated C: ``max_pool``, ``avg_pool``,
``global_avg_pool`` and ``global_max_pool`` of rank-4 tensors.

The C target runs pools as ``library`` kernels (torch). A convolution's result comes
channels-last (``runtime/layout.py``), and torch's channels-last ``max_pool2d`` also computes
the indices of the maxima: resnet50's 3x3 stride-2 pool over 64 x 112 x 112 took 0.27-0.35 ms
against onnxruntime's 0.11 on the 2-core Xeon, and a global average pool right after a
convolution 0.09-0.2 ms against 0.02. This module renders, for such a kernel, a C alternative
that the executor runs instead (through ``runtime/cconv.conv_step``, as a convolution: x
channels-last in, the result channels-last into its planned buffer).

Per output pixel, the channels are the inner ``omp simd`` loop over contiguous NHWC memory;
threads split (image, output row) pairs (global pools: (image, block of 64 channels)).

- ``max``: taps in window order, a tap that falls in the padding skipped; a NaN wins (as in
  torch's kernel, and the reference), a window entirely in padding gives -inf (as
  ``ir.ops.nn.pool_generic``).
- ``avg``: the sum of the real taps in window order divided by the count the op defines: the
  real taps, or with ``count_include_pad`` the positions inside the input plus its explicit
  padding (never the ``ceil_mode`` tail).
- ``gavg`` / ``gmax``: the sum (then / (H * W)) or maximum over the pixels in order.

Kernel ABI (c.py): ``p`` = x (NHWC), y (NHWC); ``q`` = N, H, W, OH, OW, C, PH, PW, PHE, PWE
(begin and end paddings; global pools pass zeros). Window sizes, strides and dilations are
literals. Without AVX-512 the same loops compile to scalar code.
"""
from __future__ import annotations

import sympy

from ..ir.graph import Node
from ..ir.ops.nn import pads, spatial_param
from .c import CKernel
from .c_types import PRELUDE
from .schedule import Kernel

POOL_OPS = frozenset({"max_pool", "avg_pool", "global_avg_pool", "global_max_pool"})
PAR_ELEMS = 1 << 15   # output-times-window elements below which a pool runs on one thread


def _window(node: Node) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """(kernel, stride, dilation) per spatial dim of a 2-D ``max_pool`` / ``avg_pool``, or None
    when one is not a static positive integer."""
    k = spatial_param(node.attrs, "kernel", 2, 0)
    st = spatial_param(node.attrs, "stride", 2, 1)
    dl = spatial_param(node.attrs, "dilation", 2, 1) if node.op == "max_pool" else (1, 1)
    vals = (*k, *st, *dl)
    if not all(isinstance(v, int) and v >= 1 for v in vals):
        return None
    return (k[0], k[1]), (st[0], st[1]), (dl[0], dl[1])


def pool_supported(k: Kernel) -> bool:
    """Whether this module renders library kernel ``k``: one pool node (``POOL_OPS``) over a
    rank-4 float32 x, with static window, stride, dilation and padding."""
    if k.kind != "library" or len(k.nodes) != 1 or k.nodes[0].op not in POOL_OPS:
        return False
    node = k.nodes[0]
    x, y = node.inputs[0], node.outputs[0]
    if x is None or x.type.rank != 4 or x.dtype.name != "f32" or y.dtype.name != "f32":
        return False
    if node.op.startswith("global_"):
        return True
    if _window(node) is None:
        return False
    pd = pads(node.attrs, 2)
    return all(isinstance(p, int) and p >= 0 for pp in pd for p in pp)


def _windowed(node: Node) -> list[str]:
    (kh, kw), (sh, sw), (dh, dw) = _window(node)  # type: ignore[misc]
    is_max = node.op == "max_pool"
    lines = [
        "  #pragma omp parallel for collapse(2) schedule(static) "
        f"if (N * OH * OW * C * {kh * kw} > {PAR_ELEMS})",
        "  for (int64_t n = 0; n < N; n++)",
        "  for (int64_t oh = 0; oh < OH; oh++) {",
        "    for (int64_t ow = 0; ow < OW; ow++) {",
        f"      const int64_t ih0 = oh * {sh} - PH, iw0 = ow * {sw} - PW;",
        "      float *restrict yp = y + ((n * OH + oh) * OW + ow) * C;",
        "      #pragma omp simd",
        f"      for (int64_t c = 0; c < C; c++) yp[c] = {'-INFINITY' if is_max else '0.0f'};",
        f"      for (int64_t i = 0; i < {kh}; i++) {{",
        f"        const int64_t ih = ih0 + i * {dh};",
        "        if (ih < 0 || ih >= H) continue;",
        f"        for (int64_t j = 0; j < {kw}; j++) {{",
        f"          const int64_t iw = iw0 + j * {dw};",
        "          if (iw < 0 || iw >= W) continue;",
        "          const float *restrict xp = x + ((n * H + ih) * W + iw) * C;",
        "          #pragma omp simd",
        "          for (int64_t c = 0; c < C; c++) {",
    ]
    if is_max:
        lines += ["            const float v = xp[c], m = yp[c];",
                  "            yp[c] = (v > m || v != v) ? v : m;"]
    else:
        lines += ["            yp[c] += xp[c];"]
    lines += ["          }", "        }", "      }"]
    if not is_max:
        if node.attrs["count_include_pad"]:
            hs, ws = "ih0", "iw0"
            he = f"(ih0 + {kh} < H + PHE ? ih0 + {kh} : H + PHE)"
            we = f"(iw0 + {kw} < W + PWE ? iw0 + {kw} : W + PWE)"
        else:
            hs, ws = "(ih0 > 0 ? ih0 : 0)", "(iw0 > 0 ? iw0 : 0)"
            he = f"(ih0 + {kh} < H ? ih0 + {kh} : H)"
            we = f"(iw0 + {kw} < W ? iw0 + {kw} : W)"
        lines += [f"      const float cnt = (float)(({he} - {hs}) * ({we} - {ws}));",
                  "      #pragma omp simd",
                  "      for (int64_t c = 0; c < C; c++) yp[c] = yp[c] / cnt;"]
    lines += ["    }", "  }"]
    return lines


def nhwc_reduce(is_max: bool, par_elems: int) -> list[str]:
    """C statements reducing NHWC ``x`` over its ``P`` pixels into ``y`` [N, C]: the sum
    divided by P, or with ``is_max`` the maximum (a NaN wins); per (image, block of 64
    channels), the pixels in order. Expects ``x``, ``y``, ``N``, ``C`` and ``P`` declared
    (shared with the ``mean`` form of c_cl.py)."""
    step = ("{ const float v = xp[c], m = acc[c]; acc[c] = (v > m || v != v) ? v : m; }"
            if is_max else "acc[c] += xp[c];")
    return [
        "  const int64_t CB = (C + 63) / 64;",
        f"  #pragma omp parallel for collapse(2) schedule(static) if (N * C * P > {par_elems})",
        "  for (int64_t n = 0; n < N; n++)",
        "  for (int64_t cb = 0; cb < CB; cb++) {",
        "    const int64_t c0 = cb * 64, nc = C - c0 < 64 ? C - c0 : 64;",
        "    float acc[64];",
        f"    for (int64_t c = 0; c < nc; c++) acc[c] = {'-INFINITY' if is_max else '0.0f'};",
        "    for (int64_t px = 0; px < P; px++) {",
        "      const float *restrict xp = x + (n * P + px) * C + c0;",
        "      #pragma omp simd",
        f"      for (int64_t c = 0; c < nc; c++) {step}",
        "    }",
        "    float *restrict yp = y + n * C + c0;",
        f"    for (int64_t c = 0; c < nc; c++) yp[c] = {'acc[c]' if is_max else 'acc[c] / (float)P'};",
        "  }",
    ]


def render_pool(k: Kernel) -> CKernel:
    """C source of pool kernel ``k`` (``pool_supported``); ABI in the module docstring."""
    node = k.nodes[0]
    x, y = node.inputs[0], node.outputs[0]
    glob = node.op.startswith("global_")
    body = ["  const int64_t P = H * W;", *nhwc_reduce(node.op == "global_max_pool", PAR_ELEMS)] \
        if glob else _windowed(node)
    src = "\n".join([
        PRELUDE, "#ifdef _OPENMP", "#include <omp.h>", "#endif",
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {",
        "  const float *restrict x = (const float *)p[0];",
        "  float *restrict y = (float *)p[1];",
        "  const int64_t N = q[0], H = q[1], W = q[2], OH = q[3], OW = q[4], C = q[5];",
        "  const int64_t PH = q[6], PW = q[7], PHE = q[8], PWE = q[9];",
        "  (void)OH; (void)OW; (void)PH; (void)PW; (void)PHE; (void)PWE;",
        "  if (N <= 0 || C <= 0 || OH <= 0 || OW <= 0) return;",
        *body, "}"]) + "\n"
    pd = ((0, 0), (0, 0)) if glob else pads(node.attrs, 2)
    xs, ys = x.type.shape, y.type.shape
    params = [sympy.sympify(v) for v in (xs[0], xs[2], xs[3], ys[2], ys[3], xs[1],
                                          pd[0][0], pd[1][0], pd[0][1], pd[1][1])]
    return CKernel(k, src, params, [x, y])


__all__ = ["POOL_OPS", "nhwc_reduce", "pool_supported", "render_pool"]
