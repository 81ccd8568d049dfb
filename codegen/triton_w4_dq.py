"""``w4_dequant``: the block-major W4 words back to a dense weight, for the large-M path of the
W4 linear (``codegen/triton_dense.py``: dequantise, then one cuBLAS GEMM).

``w4_dequant(P, S, Z, W, N, K, N0, NE, ...)``, grid (ceil((NE - N0) / BN), Kp / 128): channels
N0 .. NE - 1 into rows 0 .. NE - N0 - 1 of W [NE - N0, K]. One program takes the [BN, 16] words
of one 128-code block (one contiguous run), splits them into nibbles
([BN, 8, 16] -> [BN, 128]: nibble i of word j is code i * 16 + j of the block, the packing of
``runtime/w4pack_gpu.py``) and stores W[n, k] = (u - zeff) * scale for k < K, in W's dtype.
The f32 value is the reference's ``dequant_weight`` bit for bit (u - zeff is an exact small
integer, one f32 rounding); an f16 / bf16 W rounds it once more to its dtype.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..runtime.w4pack_gpu import BLOCK
from .triton_dense import Fill

if TYPE_CHECKING:
    from ..runtime.w4pack_gpu import W4Packed

DQ_KERNEL = r'''

@triton.jit
def w4_dequant(P, S, Z, W, N, K, N0, NE, HAS_ZERO: tl.constexpr, ZC: tl.constexpr, GE: tl.constexpr,
               BN: tl.constexpr, EVEN_K: tl.constexpr, ROUND_BF16: tl.constexpr):
    pn = tl.program_id(0)
    b = tl.program_id(1)
    rn = N0 + pn * BN + tl.arange(0, BN)
    mn = rn < NE
    j = tl.arange(0, 16)
    w = tl.load(P + (b * N + rn.to(tl.int64))[:, None] * 16 + j[None, :], mask=mn[:, None], other=0)
    sh = 4 * tl.arange(0, 8)
    u = tl.reshape((w[:, None, :] >> sh[None, :, None]) & 15, (BN, 128)).to(tl.float32)
    k = b * 128 + tl.arange(0, 128)
    if GE >= 128:
        g = b * 128 // GE
        s = tl.load(S + g * N + rn, mask=mn, other=0)[:, None]
        if HAS_ZERO:
            z = tl.load(Z + g * N + rn, mask=mn, other=0).to(tl.float32)[:, None]
        else:
            z = ZC
    else:
        gk = (k // GE)[None, :]
        s = tl.load(S + gk * N + rn[:, None], mask=mn[:, None], other=0)
        if HAS_ZERO:
            z = tl.load(Z + gk * N + rn[:, None], mask=mn[:, None], other=0).to(tl.float32)
        else:
            z = ZC
    wd = (u - z) * s
    if ROUND_BF16:
        wd = _sf_round_bf16(wd)    # the interpreter's f32 -> bf16 conversion truncates
    msk = mn[:, None]
    if not EVEN_K:
        msk = msk & (k < K)[None, :]
    tl.store(W + (rn - N0).to(tl.int64)[:, None] * K + k[None, :], wd.to(W.dtype.element_ty), mask=msk)
'''


def w4_fill(mod, packed: "W4Packed", xkind: str, interpret: bool, bn: int = 64) -> Fill:
    """``fill(w, n0, ne)`` for :func:`~.triton_dense.dense_launch`: ``w4_dequant`` of channels
    n0 .. ne - 1 of ``packed`` into ``w`` [ne - n0, K]."""
    zeros = packed.zeros if packed.zeros is not None else packed.scales
    flags = dict(HAS_ZERO=packed.zeros is not None, ZC=packed.zc, GE=packed.ge, BN=bn,
                 EVEN_K=packed.k == packed.kp, ROUND_BF16=xkind == "bf16" and interpret, num_warps=4)
    nblk = packed.kp // BLOCK
    kern, P, S, N, K = mod.w4_dequant, packed.qweight, packed.scales, packed.n, packed.k

    def fill(w: torch.Tensor, n0: int, ne: int) -> None:
        kern[(-(-(ne - n0) // bn), nblk)](P, S, zeros, w, N, K, n0, ne, **flags)

    return fill
