"""Weight prepacking for the int8 GEMM template (``codegen/c_qgemm.py``), done once at build time.

The kernel multiplies *unsigned* weight bytes by *signed* activation bytes (AVX-512 VNNI
``vpdpbusd`` takes u8 x s8; putting the activations on the signed side reads int8 codes as they
are, with no shifted copy of x). So weight codes are stored as
``u = w + off`` with ``off = 128`` for signed codes (i8, i4) and ``0`` for unsigned ones (u8,
u4). For one row of x, ``sum_k x_k u_nk = sum_k x_k w_nk + off * rowsum(x)``, and the zero point
adds ``- z_n * rowsum(x)``: the kernel subtracts ``coff[n] * rowsum[m]`` with
``coff = off + z`` (integer zero points, exact in wrapping int32 arithmetic) and, for
non-integral float zero points, ``zf[n] * rowsum[m]`` with ``zf = scale * z`` in the double
epilogue.

Layout of the packed bytes: N is split into panels of ``nr`` output channels (padded with zero
rows), K into groups of 4 (padded with zeros), and each panel is stored k-group-major:
``packed[p, k4, j, b] = u[p * nr + j, 4 * k4 + b]``, so one k-group of a panel is ``nr * 4``
contiguous bytes: ``nr / 16`` zmm registers of 16 lanes x 4 bytes, each lane one channel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import dtypes as dt

MAX_K = 65536   # u8 * s8 products summed over K must fit int32: 255 * 128 * K < 2^31


@dataclass(frozen=True)
class PackedQLinear:
    """Prepacked constants of one qlinear: ``w`` uint8 [P, K4p, nr, 4]; per padded channel
    ``coff`` int32, ``scale`` float64 and, for non-integral float zero points, ``zf`` float64."""

    w: torch.Tensor
    coff: torch.Tensor
    scale: torch.Tensor
    zf: torch.Tensor | None
    n: int
    k: int
    nr: int

    @property
    def panels(self) -> int:
        return self.w.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """The kernel's constant pointer arguments, in ABI order."""
        return [self.w, self.coff, self.scale] + ([self.zf] if self.zf is not None else [])


def weight_offset(wdtype: dt.DType) -> int:
    """What the packed bytes add to a weight code so that it is unsigned."""
    return 128 if wdtype.is_signed else 0


def integral_zero(zero: torch.Tensor | None, wdtype: dt.DType) -> bool:
    """Whether the zero points are integers the int32 compensation can take exactly."""
    if zero is None or not zero.is_floating_point():
        return True
    z = zero.to(torch.float64)
    return bool(torch.isfinite(z).all() and (z == z.round()).all() and (z.abs() <= 1 << 16).all())


def _zero_sums_fit(w: torch.Tensor, zero: torch.Tensor, k: int) -> bool:
    """Whether every sum_k x (w - z) of int8 codes x fits int32, so the integer epilogue
    (``sum x u - coff * sum x``) is exact: a large integral float zero point (40000 with K =
    512) overflowed it where the float path (``zf``) is exact."""
    wd = w.to(torch.float64)
    z = zero.to(torch.float64).reshape(-1)
    far = torch.maximum((wd.amax(1) - z).abs(), (wd.amin(1) - z).abs()) if w.numel() else z.abs()
    return bool((far.max() if far.numel() else 0) * 128 * k < 2 ** 31)


def pack_qlinear(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                 wdtype: dt.DType, nr: int) -> PackedQLinear:
    """Pack per-output-channel weights ``w`` [N, K] (container of ``wdtype``: i8, u8, i4, u4)
    with ``scale`` [N] and optional ``zero`` [N] (w's dtype or float) for a kernel whose
    panels hold ``nr`` channels (a multiple of 16)."""
    if w.dim() != 2 or nr % 16:
        raise ValueError(f"cannot pack weights of shape {tuple(w.shape)} into panels of {nr}")
    n, k = w.shape
    if k > MAX_K:
        raise ValueError(f"K = {k} > {MAX_K} would overflow the int32 accumulators")
    off = weight_offset(wdtype)
    panels = -(-n // nr)
    npad, k4 = panels * nr, -(-k // 4)
    u = torch.zeros(npad, k4 * 4, dtype=torch.int32)
    # Padding stays 0: padded K columns then add nothing whatever bytes x holds there.
    u[:n, :k] = w.to(torch.int32) + off
    packed = u.to(torch.uint8).reshape(panels, nr, k4, 4).permute(0, 2, 1, 3).contiguous()
    coff = torch.zeros(npad, dtype=torch.int32)
    coff[:n] = off
    zf = None
    if zero is not None:
        if integral_zero(zero, wdtype) and _zero_sums_fit(w, zero, k):
            coff[:n] += zero.to(torch.float64).round().to(torch.int32)
        else:
            zf = torch.zeros(npad, dtype=torch.float64)
            zf[:n] = scale.to(torch.float64) * zero.to(torch.float64)
    s = torch.zeros(npad, dtype=torch.float64)
    s[:n] = scale.to(torch.float64)
    return PackedQLinear(packed, coff, s, zf, n, k, nr)


def unpack_codes(p: PackedQLinear, wdtype: dt.DType) -> torch.Tensor:
    """The weight codes [N, K] back from a packing (for tests and debugging)."""
    u = p.w.permute(0, 2, 1, 3).reshape(p.panels * p.nr, -1).to(torch.int32)
    return (u[:p.n, :p.k] - weight_offset(wdtype)).to(wdtype.container)
