"""Group-wise integer weight quantisation (ALGORITHMS.md §2): the RTN quantiser that
``qlinear`` dequantises bit-exactly, and AWQ's clip search.

Asymmetric (default): with min ≤ 0 ≤ max (the group's extremes widened to hold 0, as GPTQ
does; a one-signed group would otherwise need a zero point outside the codes),
Δ = (max − min)/(2^b − 1), z = clamp(−round(min/Δ), 0, 2^b − 1),
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
        # the range always holds 0, so the zero point is a code in [0, 2^b − 1]
        mn, mx = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
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


ASYM_GRID, ASYM_STEPS = 15, 6


def _fake_asym(c: torch.Tensor, bits: int, mn: torch.Tensor | None = None,
               mx: torch.Tensor | None = None) -> torch.Tensor:
    """Asymmetric RTN fake quantisation of grouped ``c`` [N, G, g] with the arithmetic of
    :func:`int_quantize` + :func:`int_dequantize` (so the same values, bit for bit), without
    their regrouping and index expansion. ``mn`` / ``mx``: c's group minima and maxima when
    the caller knows them."""
    qmax = 2 ** bits - 1
    if mn is None or mx is None:
        mn, mx = c.amin(-1, keepdim=True), c.amax(-1, keepdim=True)
    mn, mx = mn.clamp(max=0), mx.clamp(min=0)
    delta = (mx - mn).clamp(min=1e-5) / qmax
    z = torch.clamp(-torch.round(mn / delta), 0, qmax)
    return (torch.clamp(torch.round(c / delta) + z, 0, qmax) - z) * delta


def clip_search(w: torch.Tensor, gram: torch.Tensor, bits: int, group: int, sym: bool = False,
                grid: int | None = None, steps: int | None = None) -> torch.Tensor:
    """AWQ's clip search: per output channel and group, the clipping range [lo, hi] whose
    quantisation error d = Q(clip(w)) − w gives the least output error d G_gg dᵀ (G_gg: the
    group's diagonal block of the calibration Gram matrix XᵀX/rows). Returns the clipped
    weight (float32 [N, K]) to quantise.

    Candidates: AWQ's grid, the range ±max|w| shrunk by (1 − i/grid), i < steps (default 20
    and 10). With asymmetric codes also the group's min and max shrunk independently, by
    (1 − a/15) and (1 − b/15) for a, b < 6 (up to a third off either end), because shrinking
    max|w| alone clips one side of a lopsided group; the winner is never worse than AWQ's
    grid alone. On all-MiniLM-L6-v2 g128 AWQ the extra ranges moved the worst / mean sentence
    cosine (``benchmarks/quant_weights_accuracy.py``) as RESULTS.md records. Rows are
    searched in chunks of about 2M weights, which stay in the CPU's cache across candidates.
    """
    n, k = w.shape
    g = group_size(k, group)
    xg = grouped(w.to(torch.float32), g)                     # [N, G, g]
    ng = xg.shape[1]
    gp = torch.zeros(ng, g, g, dtype=torch.float32)           # padded columns get zero weight
    for j in range(ng):
        j0, j1 = j * g, min((j + 1) * g, k)
        gp[j, :j1 - j0, :j1 - j0] = gram[j0:j1, j0:j1]
    rows = max(1, (1 << 21) // (ng * g))
    out = [_clip_rows(xg[r:r + rows], gp, bits, sym, grid or 20, steps or 10) for r in range(0, n, rows)]
    return torch.cat(out).reshape(n, -1)[:, :k]


def _clip_rows(xg: torch.Tensor, gp: torch.Tensor, bits: int, sym: bool, grid: int, steps: int
               ) -> torch.Tensor:
    """:func:`clip_search` on the grouped rows ``xg`` [n, G, g]: the clipped rows."""
    n, ng, g = xg.shape
    mn, mx = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)
    best_err = torch.full((n, ng, 1), float("inf"))
    best_lo, best_hi = mn.clone(), mx.clone()

    def trial(lo: torch.Tensor, hi: torch.Tensor) -> None:
        c = torch.minimum(torch.maximum(xg, lo), hi)
        if sym:
            q = int_dequantize(*int_quantize(c.reshape(n, -1), bits, g, sym), g).reshape(n, ng, g)
        else:   # c's extremes follow from the range (clamping is monotone): no reductions
            q = _fake_asym(c, bits, torch.clamp(mn, lo, hi), torch.clamp(mx, lo, hi))
        d = (q - xg).transpose(0, 1)                          # [G, n, g]
        err = (torch.bmm(d, gp) * d).sum(-1).T[..., None]     # d G_gg dᵀ per (channel, group)
        better = err < best_err
        best_err.copy_(torch.where(better, err, best_err))
        best_lo.copy_(torch.where(better, lo, best_lo))
        best_hi.copy_(torch.where(better, hi, best_hi))
    amax = xg.abs().amax(-1, keepdim=True)
    for i in range(steps):
        m = amax * (1 - i / grid)
        trial(-m, m)
    if not sym:
        for a in range(ASYM_STEPS):
            for b in range(ASYM_STEPS):
                if a or b:
                    trial(mn * (1 - a / ASYM_GRID), mx * (1 - b / ASYM_GRID))
    return torch.minimum(torch.maximum(xg, best_lo), best_hi)


__all__ = ["clip_search", "group_size", "grouped", "int_dequantize", "int_quantize"]
