"""GPTQ rounding for the integer formats of ``quant_weights`` (``rounding="gptq"``).

Round-to-nearest quantises every weight on its own. GPTQ (Frantar et al., 2022, OBQ applied
column by column) quantises the columns of W [N, K] left to right and, after each column,
moves that column's rounding error onto the columns not yet quantised, weighted by the
inverse Hessian of the layer's squared output error, H = XᵀX / rows (the calibration Gram
matrix): with U the upper Cholesky factor of H⁻¹, err = (w_k − q_k) / U_kk and
W[:, k+1:] −= err · U[k, k+1:]. Updates are applied lazily per block of columns (one GEMM
per block instead of one rank-1 update per column).

Group parameters (Δ, zero) are those of the RTN quantiser (``wq_int.int_quantize``), taken
from a group's *current* weights when the sweep reaches its first column, so the stored codes
dequantise with qlinear's ordinary formula; only which code each weight gets changes.
H gets 1% of its mean diagonal added (damping). Channels that never fire (zero diagonal) get
a unit diagonal and keep their weights, so they are rounded to nearest and take no error from
the others: the reference method zeroes their weights, which the calibration cannot see but
other inputs do (a calibration of constant rows, whose centred Gram is zero, lost every
weight). A Gram that is zero altogether leaves plain rounding to nearest.
"""
from __future__ import annotations

import torch

from .wq_int import group_size


def _params(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Δ [N], zero [N] or None) of RTN for the columns ``w`` [N, g] (as ``int_quantize``)."""
    if sym:
        qmax = 2 ** (bits - 1) - 1
        return w.abs().amax(-1).clamp(min=1e-8) / qmax, None
    qmax = 2 ** bits - 1
    mn, mx = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
    delta = (mx - mn).clamp(min=1e-5) / qmax
    return delta, torch.clamp(-torch.round(mn / delta), 0, qmax)


def _codes(col: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    if zero is None:
        qmax = 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(col / delta), -qmax - 1, qmax)
    return torch.clamp(torch.round(col / delta) + zero, 0, 2 ** bits - 1)


def gptq_quantize(w: torch.Tensor, gram: torch.Tensor, bits: int, group: int, sym: bool = False,
                  block: int = 128, damp: float = 0.01
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ-rounded integer codes of ``w`` [N, K] for the Gram matrix ``gram`` [K, K].
    Returns (codes int64 [N, K], Δ float32 [N, G], zero int64 [N, G] or None) in the layout of
    :func:`~scalefold.passes.wq_int.int_quantize`, G = ceil(K / group)."""
    n, k = w.shape
    g = group_size(k, group)
    ng = -(-k // g)
    W = w.to(torch.float32).clone()
    H = gram.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    H += damp * torch.diagonal(H).mean() * torch.eye(k, dtype=torch.float64)
    L = torch.linalg.cholesky(H)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).to(torch.float32)
    codes = torch.zeros(n, k, dtype=torch.float32)
    delta = torch.zeros(n, ng, dtype=torch.float32)
    zero = None if sym else torch.zeros(n, ng, dtype=torch.float32)
    # blocks never straddle a group start, so a group's parameters see its updated weights
    step = g if g <= block else block * max(1, g // block)
    for b0 in range(0, k, step):
        b1 = min(b0 + step, k)
        Wb = W[:, b0:b1].clone()
        Err = torch.zeros_like(Wb)
        Ub = U[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:
                gi = col // g
                d, z = _params(torch.cat([Wb[:, i:], W[:, b1:]], 1)[:, :min(g, k - col)], bits, sym)
                delta[:, gi] = d
                if zero is not None:
                    assert z is not None
                    zero[:, gi] = z
            gi = col // g
            z_ = zero[:, gi] if zero is not None else None
            c = _codes(Wb[:, i], delta[:, gi], z_, bits)
            codes[:, col] = c
            q = (c - z_) * delta[:, gi] if z_ is not None else c * delta[:, gi]
            err = (Wb[:, i] - q) / Ub[i, i]
            Wb[:, i:] -= err[:, None] * Ub[i, i:][None, :]
            Err[:, i] = err
        W[:, b1:] -= Err @ U[b0:b1, b1:]
    return codes.to(torch.int64), delta, zero.to(torch.int64) if zero is not None else None


__all__ = ["gptq_quantize"]
