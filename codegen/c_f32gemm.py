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
(runtime/alternatives.py ``compiled_alt``).

Weights: read in place, as the GEMV reads them: the kernel's weight argument is the graph's
own constant [N, K]. Each thread packs the panel it works on (32 or 64 channels,
c_tile.tile_shape) into a [K][nb] buffer of its own when its panel changes
(c_tile.render_gemm, ``rows``), so the alternative costs no memory beyond K * 256 bytes per
thread. Weights above ``MAX_WEIGHT`` bytes keep
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
from .c_isa import TILE_MACROS
from . import c_conv
from .c_conv import epilogue
from .c_tile import TRANSPOSE16, ConvForm, render_gemm, tile_shape, tile_variants
from .c_f32gemv import f32_linear, linear_args
from .c_types import PRELUDE
from .schedule import Kernel


SUFFIX = "_gemm"            # the alternative's name: the library kernel's name plus this
MAX_WEIGHT = 16 << 20       # bytes: larger f32 weights keep oneDNN (module doc)


def gemm_supported(k: Kernel) -> bool:
    """Whether ``k`` (a ``library`` kernel) is a float32 ``linear`` this module renders: x f32
    [..., K] with static K >= 1, a constant f32 weight [N, K] of static shape and at most
    ``MAX_WEIGHT`` bytes, bias absent or f32 [N], output f32, and at most one epilogue node
    of the GEMV's kinds."""
    if not f32_linear(k):
        return False
    N, K = k.nodes[0].inputs[1].type.shape
    return 4 * N * K <= MAX_WEIGHT


def render_gemm_linear(k: Kernel) -> CKernel:
    """C source of the GEMM alternative of library kernel ``k`` (``gemm_supported``); its
    ``args`` name the graph's own Values (ABI in the module doc)."""
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    N, K = w.type.shape
    args, decl, other = linear_args(k)
    # the convolutions' pointwise loop over an "image" of M rows, one column
    decl += ["  const int64_t M = q[0];",
             f"  const int64_t N = 1, H = M, W = 1, OH = M, OW = 1, CI = {K}, CO = {N}, PH = 0, PW = 0;",
             "  (void)H; (void)W; (void)PH; (void)PW;",
             "  if (M <= 0) return;"]
    f = ConvForm("pw", 1, 1, 1, 1, 1, 1, *tile_shape(N))
    epi = epilogue(k, bias is not None, False)
    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if not c_conv.CONV.vec:   # read at render time (tests switch it)
        head.append("#define SF_NO_VEC 1")
    head += tile_variants(f, [TRANSPOSE16])
    body = render_gemm(f, epi, other is not None, rows=True)
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    return CKernel(k, src, [sympy.sympify(_prod(x.type.shape[:-1]))], args, suffix=SUFFIX, needs=TILE_MACROS)
