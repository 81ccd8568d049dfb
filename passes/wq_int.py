"""Group-wise integer weight quantisation (ALGORITHMS.md §2): the RTN quantiser that
``qlinear`` dequantises bit-exactly, and AWQ's clip search.

Asymmetric (default): Δ = (max − min)/(2^b − 1), z = clamp(−round(min/Δ), 0, 2^b − 1),
codes = clamp(round(w/Δ) + z, 0, 2^b − 1). Symmetric: Δ = max|w|/(2^(b−1) − 1), codes in
[−2^(b−1), 2^(b−1) − 1], no zero point. Computed exactly like
:func:`~scalefold.passes.awq.fake_quant_int`.
"""
from __future__ import annotations

import torch

def group_size(k: int, group: int) -> int:
    """The group size actually used along K (K itself for per-row)."""
    return k if group <= 0 or group >= k else group


def grouped(w: torch.Tensor, g: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K/g), g] padded by repeating each row's last group's first element
    (padding never changes a group's min/max and is dropped again)."""
    n, k = w.shape
    ng = -(-k // g)
    pad = ng * g - k
    if pad:
        last = w[:, (ng - 1) * g:(ng - 1) * g + 1].expand(n, pad)
        w = torch.cat([w, last], 1)
    return w.reshape(n, ng, g)


def int_quantize(w: torch.Tensor, bits: int, group: int, sym: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Group-wise RTN integer quantisation of ``w`` [N, K] (float32 arithmetic, exactly as
    :func:`fake_quant_int`). Returns (codes int64 [N, K], Δ float32 [N, G], zero int64 [N, G]
    or None for sym), G = ceil(K / group) (1 for group <= 0)."""
    n, k = w.shape
    g = group_size(k, group)
    x = grouped(w.to(torch.float32), g)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        delta = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
        codes = torch.clamp(torch.round(x / delta), -qmax - 1, qmax)
        zero = None
    else:
        qmax = 2 ** bits - 1
        mn, mx = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        delta = (mx - mn).clamp(min=1e-5) / qmax
        z = torch.clamp(-torch.round(mn / delta), 0, qmax)
        codes = torch.clamp(torch.round(x / delta) + z, 0, qmax)
        zero = z.squeeze(-1).to(torch.int64)
    codes = codes.reshape(n, -1)[:, :k].to(torch.int64)
    return codes, delta.squeeze(-1), zero


def int_dequantize(codes: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor | None, group: int
                   ) -> torch.Tensor:
    """(codes − zero)·Δ in float32, group-wise along K (the inverse of :func:`int_quantize`)."""
    k = codes.shape[1]
    g = group_size(k, group)
    r = codes.to(torch.int64)
    if zero is not None:
        r = r - zero.repeat_interleave(g, 1)[:, :k]
    return r.to(torch.float32) * delta.repeat_interleave(g, 1)[:, :k]


def clip_search(w: torch.Tensor, gram: torch.Tensor, bits: int, group: int, sym: bool = False,
                grid: int = 20, steps: int = 10) -> torch.Tensor:
    """AWQ clip search: per output channel and group, the range max|w| shrunk by (1 − i/grid),
    i = 0..steps−1, whose quantisation error d = Q(clip(w)) − w gives the least output error
    d G_gg dᵀ (G_gg: the group's diagonal block of the calibration Gram matrix XᵀX/rows).
    Returns the clipped weight (float32 [N, K]) to quantise."""
    n, k = w.shape
    g = group_size(k, group)
    wf = w.to(torch.float32)
    xg = grouped(wf, g)                                      # [N, G, g]
    ng = xg.shape[1]
    gp = torch.zeros(ng, g, g, dtype=torch.float32)           # padded columns get zero weight
    for j in range(ng):
        lo, hi = j * g, min((j + 1) * g, k)
        gp[j, :hi - lo, :hi - lo] = gram[lo:hi, lo:hi]
    amax = xg.abs().amax(-1, keepdim=True)
    best_err = torch.full((n, ng), float("inf"))
    best = xg.clone()
    for i in range(steps):
        m = amax * (1 - i / grid)
        c = torch.clamp(xg, -m, m)
        q = int_dequantize(*int_quantize(c.reshape(n, -1), bits, g, sym), g).reshape(n, ng, g)
        d = q - xg
        err = torch.einsum("ngi,gij,ngj->ng", d, gp, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], c, best)
    return best.reshape(n, -1)[:, :k]



__all__ = ["clip_search", "group_size", "grouped", "int_dequantize", "int_quantize"]
