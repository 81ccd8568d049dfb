"""Floating-point weight formats (ALGORITHMS.md §4, LLM-FP4): FP8 E4M3 and the 4-bit formats
E2M1 / E3M0 / E1M2 with a real exponent bias, their search, and the code representation
``qlinear`` reads.

The 4-bit quantiser with E exponent bits, M = 3 − E mantissa bits and a real bias b (no
inf / NaN codes): clip x to ±maxval(b) = (2 − 2^−M)·2^(2^E − 1 − b); e = max(floor(log2|x| + b),
1); v = 2^(e − M − b); x_q = round(x / v)·v (round half to even). Because the floor is taken of
``log2|x| + b``, FPQ_b(x) = 2^(b0 − b)·FPQ_b0(2^(b − b0)·x) for any reference bias b0: a real
bias is a scale. So a searched bias per output channel (or group) is stored as a float scale
next to codes of the format at a fixed reference bias:

- E2M1, b0 = 1: the grid {0, .5, 1, 1.5, 2, 3, 4, 6}, codes ``f4e2m1`` (4 bits).
- E1M2, b0 = 1: the grid {0, .25, …, 1.75} = k/4, stored as symmetric ``i4`` codes k in
  [−7, 7] with the scale multiplied by 1/4 (4 bits; the int4 kernels run it).
- E3M0, b0 = 1: {0, 1, 2, 4, …, 64}, stored as ``i8`` codes (the values themselves) — 4 bits of
  information in 8-bit codes, as no 4-bit power-of-two code type exists in the IR yet.

FP8 E4M3 uses the OCP format (max 448, ``f8e4m3`` codes) with a max-based or searched scale.

The search (``method="search"``): per output channel and group, the clip c in
linspace(0.01, 1.2, points) of maxval = c·max|w| (equivalently the bias) with the least
output error d G dᵀ on the calibration Gram block (weight L2 without calibration); among
the 4-bit formats, the one with the least layer-output error tr(D G Dᵀ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir import dtypes as dt
from .wq_int import group_size, grouped

FP8_MAX = 448.0


@dataclass(frozen=True)
class Fp4Format:
    """A 4-bit float format: ``e`` exponent bits, ``m`` mantissa bits."""
    name: str
    e: int
    m: int

    def maxval(self, bias: torch.Tensor | float) -> torch.Tensor | float:
        """(2 − 2^−M)·2^(2^E − 1 − b)."""
        return (2 - 2.0 ** -self.m) * 2.0 ** ((2 ** self.e - 1) - bias)

    def bias_for(self, maxval: torch.Tensor) -> torch.Tensor:
        """The real bias whose largest value is ``maxval``."""
        return (2 ** self.e - 1) - torch.log2(maxval / (2 - 2.0 ** -self.m))


FP4_FORMATS = {"e2m1": Fp4Format("e2m1", 2, 1), "e3m0": Fp4Format("e3m0", 3, 0),
               "e1m2": Fp4Format("e1m2", 1, 2)}
REF_BIAS = 1.0   # b0 of every stored 4-bit code grid (see the module docstring)


def _fpq_ref(y: torch.Tensor, fmt: Fp4Format) -> torch.Tensor:
    """FPQ at the reference bias b0 = 1: every step is an exact power of two."""
    mv = float(fmt.maxval(REF_BIAS))
    yc = y.clamp(-mv, mv)
    # log2(0) = -inf: the max() with 1 puts zeros in the subnormal bin, where they stay 0.
    e = torch.clamp(torch.floor(torch.log2(yc.abs()) + REF_BIAS), min=1.0)
    v = torch.exp2(e - fmt.m - REF_BIAS)
    return torch.round(yc / v) * v


def fpq(x: torch.Tensor, fmt: Fp4Format, bias: torch.Tensor | float) -> torch.Tensor:
    """LLM-FP4's quantiser FPQ_b(x) (float32; ``bias`` broadcasts against x), evaluated as
    s·FPQ_b0(x / s) with s = 2^(b0 − b) — the same function, in the one float32 form whose
    result the stored codes reproduce bit for bit."""
    return fpq_scaled(x, fmt, torch.exp2(REF_BIAS - torch.as_tensor(bias, dtype=torch.float32)))


def fpq_scaled(x: torch.Tensor, fmt: Fp4Format, s: torch.Tensor) -> torch.Tensor:
    """FPQ_b(x) given s = 2^(b0 − b) (already broadcast to x). Callers with per-group biases
    form s once per group and expand it: exp2 of a tensor is not guaranteed to give the same
    bits for the same argument at different positions (vectorised vs. tail lanes)."""
    x = x.to(torch.float32)
    return _fpq_ref(x / s, fmt) * s


def _expand(p: torch.Tensor, k: int, g: int) -> torch.Tensor:
    """[N, G] per-group parameter -> [N, K]."""
    return p.repeat_interleave(g, 1)[:, :k]


def fp4_fake(w: torch.Tensor, fmt: Fp4Format, group: int, clip: torch.Tensor | float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake-quantise ``w`` [N, K] with per-(row, group) bias from maxval = clip·max|w|.
    Returns (ŵ float32 [N, K], bias float32 [N, G])."""
    n, k = w.shape
    g = group_size(k, group)
    amax = grouped(w.to(torch.float32), g).abs().amax(-1)
    mv = torch.as_tensor(clip, dtype=torch.float32) * amax
    mv = torch.where(mv > 0, mv, torch.ones_like(mv))
    bias = fmt.bias_for(mv)
    return fpq_scaled(w, fmt, _expand(torch.exp2(REF_BIAS - bias), k, g)), bias


def fp4_codes(w: torch.Tensor, fmt: Fp4Format, group: int, clip: torch.Tensor | float = 1.0
              ) -> tuple[torch.Tensor, dt.DType, torch.Tensor]:
    """(codes container, codes dtype, scale float32 [N, G]) whose dequantisation
    ``to_real(codes)·scale`` reproduces :func:`fp4_fake` exactly (up to the float32 product
    of a grid value and a power of two, which is exact)."""
    n, k = w.shape
    g = group_size(k, group)
    _, bias = fp4_fake(w, fmt, group, clip)
    scale = torch.exp2(REF_BIAS - bias)
    y = _fpq_ref(w.to(torch.float32) / _expand(scale, k, g), fmt)
    if fmt.name == "e2m1":
        return dt.fp4_e2m1_encode(y), dt.f4e2m1, scale
    if fmt.name == "e1m2":
        return torch.round(y * 4).to(torch.int8), dt.i4, scale / 4
    return torch.round(y).to(torch.int8), dt.i8, scale


def fp8_codes(w: torch.Tensor, group: int, clip: torch.Tensor | float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3: scale so clip·max|w| maps to 448, round to E4M3 (RNE). (codes f8 container,
    scale float32 [N, G])."""
    n, k = w.shape
    g = group_size(k, group)
    amax = grouped(w.to(torch.float32), g).abs().amax(-1) * torch.as_tensor(clip, dtype=torch.float32)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    y = (w.to(torch.float32) / _expand(scale, k, g)).clamp(-FP8_MAX, FP8_MAX)
    return dt.to_container(y, dt.f8e4m3), scale


def fp8_fake(w: torch.Tensor, group: int, clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    codes, scale = fp8_codes(w, group, clip)
    return dt.to_real(codes, dt.f8e4m3) * _expand(scale, w.shape[1], group_size(w.shape[1], group))


def _group_gram(gram: torch.Tensor | None, k: int, g: int, damp: float = 0.01) -> torch.Tensor:
    """Diagonal [g, g] blocks of the Gram matrix per group (identity without one; padded
    columns get zero weight), each with ``damp`` times its mean diagonal added (GPTQ's
    damping): a Gram of few or constant calibration rows is singular, and without the ridge
    any clip that happens to cancel along its few directions scores ~0, tiny clips included;
    a group whose columns never fire is scored by the plain squared error."""
    ng = -(-k // g)
    gp = torch.zeros(ng, g, g, dtype=torch.float32)
    for j in range(ng):
        lo, hi = j * g, min((j + 1) * g, k)
        if gram is None:
            gp[j, :hi - lo, :hi - lo] = torch.eye(hi - lo)
            continue
        blk = gram[lo:hi, lo:hi].to(torch.float32)
        m = float(torch.diagonal(blk).mean())
        gp[j, :hi - lo, :hi - lo] = blk + (damp * m if m > 0 else 1.0) * torch.eye(hi - lo)
    return gp


def search_clip(w: torch.Tensor, gram: torch.Tensor | None, group: int, fake, points: int = 100
                ) -> torch.Tensor:
    """Per (row, group) clip c in linspace(0.01, 1.2, points) minimising d G_gg dᵀ with
    d = fake(w, c) − w (``fake(w, clip) -> ŵ``; G_gg damped, see ``_group_gram``), ties going
    to the clip nearest 1. Returns c [N, G]."""
    n, k = w.shape
    g = group_size(k, group)
    wf = w.to(torch.float32)
    gp = _group_gram(gram, k, g)
    xg = grouped(wf, g)
    ng = xg.shape[1]
    best_err = torch.full((n, ng), float("inf"))
    best = torch.ones(n, ng)
    for c in sorted(torch.linspace(0.01, 1.2, points).tolist(), key=lambda v: abs(v - 1.0)):
        d = grouped(fake(wf, c), g) - xg
        # the padding copies a real element of the group: zero it so it adds no error
        if ng * g != k:
            d[:, -1, k - (ng - 1) * g:] = 0
        err = torch.einsum("ngi,gij,ngj->ng", d, gp, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, c), best)
    return best


def layer_error(w: torch.Tensor, wq: torch.Tensor, gram: torch.Tensor | None) -> float:
    """tr(D G Dᵀ) with D = ŵ − w (the summed squared layer-output error per calibration row),
    or ||D||² without a Gram matrix."""
    d = wq.to(torch.float32) - w.to(torch.float32)
    return float(((d @ gram) * d).sum()) if gram is not None else float((d * d).sum())


def search_fp4(w: torch.Tensor, gram: torch.Tensor | None, group: int, formats: tuple[str, ...],
               points: int = 100) -> tuple[Fp4Format, torch.Tensor, dict[str, float]]:
    """LLM-FP4 search: for each format the per-(row, group) clip (:func:`search_clip`), then the
    format with the least layer-output error. Returns (format, clip [N, G], error per format)."""
    errs: dict[str, float] = {}
    best: tuple[float, Fp4Format, torch.Tensor] | None = None
    for name in formats:
        fmt = FP4_FORMATS[name]
        clip = search_clip(w, gram, group, lambda x, c, f=fmt: fp4_fake(x, f, group, c)[0], points)
        err = layer_error(w, fp4_fake(w, fmt, group, clip)[0], gram)
        errs[name] = err
        if best is None or err < best[0]:
            best = (err, fmt, clip)
    assert best is not None
    return best[1], best[2], errs


# ---- per-channel activation exponent bias at per-tensor cost -------------------------------------
def exponent_shift(amax: torch.Tensor, fmt: Fp4Format) -> tuple[float, torch.Tensor]:
    """LLM-FP4's reparameterisation of an activation with per-channel max |x_j| = ``amax``:
    per-channel bias b_j = bias_for(amax_j), tensor bias ρ = min_j b_j, integer
    k_j = clamp(round(b_j) − round(ρ), 0, 2^E − 1). Quantising 2^(k_j)·x_j with the tensor bias ρ
    equals quantising x_j with bias ρ + k_j, times 2^(k_j) (FPQ_(ρ+k)(x) = 2^−k·FPQ_ρ(2^k x)).
    Returns (ρ, k [C] float32)."""
    a = torch.where(amax > 0, amax.to(torch.float32), amax[amax > 0].min().to(torch.float32)
                    if bool((amax > 0).any()) else torch.ones_like(amax, dtype=torch.float32))
    b = fmt.bias_for(a)
    rho = float(b.min())
    k = torch.clamp(torch.round(b) - round(rho), 0, 2 ** fmt.e - 1)
    return rho, k


def act_scale(rho: float, fmt: Fp4Format | None) -> float:
    """The ``quantize`` scale that maps FPQ_ρ onto the stored format (E2M1 at b0 = 1, or FP8
    E4M3 for ``fmt`` None where ρ is log2 of 448 / maxval)."""
    if fmt is None:
        return 2.0 ** (-rho)
    return 2.0 ** (REF_BIAS - rho)


def fp8_rho(amax: float) -> float:
    """FP8 E4M3 'bias' as used by :func:`act_scale`: the scale that maps ``amax`` to 448."""
    return math.log2(FP8_MAX / amax) if amax > 0 else 0.0


__all__ = ["FP4_FORMATS", "FP8_MAX", "Fp4Format", "act_scale", "exponent_shift", "fp4_codes", "fp4_fake",
           "fp8_codes", "fp8_fake", "fp8_rho", "fpq", "layer_error", "search_clip", "search_fp4"]
