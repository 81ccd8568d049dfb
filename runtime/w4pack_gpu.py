"""Weight prepacking for the Triton W4A16 kernels (``codegen/triton_w4.py``), done once at build time.

Input: a weight-only group-wise ``qlinear``'s constants — codes w [N, K] one per byte (u4: uint8
0..15, also int3 codes 0..7; i4: int8 -8..7), w_scale f32 [N, G] (or [N] for group 0),
w_zero [N, G] of w's dtype or absent, G = ceil(K / group).

Layout (exact):

- ``H`` (codes per half block) = 64 when one group covers K (group 0 or group >= K), else
  ``min(64, group)``; a *block* is ``2 H`` consecutive codes along K. K is padded with code 0
  to ``Kp = ceil(K / 2H) * 2H``. The effective group ``GE`` is ``group``, or for one group the
  next power of two >= Kp (every k then falls in group 0).
- ``qweight`` uint8 [N, Kp / 2], row major: byte ``qweight[n, b * H + j]`` (block b, 0 <= j < H)
  holds ``u[n, b*2H + j]`` in its low nibble and ``u[n, b*2H + H + j]`` in its high nibble.
  ``u`` is the code made unsigned: u = w for u4, u = w + 8 for i4. So a block's low nibbles are
  its first H codes and its high nibbles its last H codes: each half meets a contiguous slice of
  x, and (H divides GE) each half lies in one group.
- ``scales`` f32 [NGp, N] (transposed: the N scales of one group are contiguous),
  NGp = ceil(Kp / GE); rows past G are 0.
- ``zeros`` uint8 [NGp, N] = the effective zero ``zeff`` = z (u4) or z + 8 (i4), so that
  w - z == u - zeff exactly; rows past G are 0. ``None`` when the qlinear has no zero point:
  then the constant ``zc`` (0 for u4, 8 for i4) is the effective zero.

Dequantisation: Wd[n, k] = (u[n, k] - zeff[n, k // GE]) * scales[k // GE, n] in f32, which is
``dequant_weight`` bit for bit (the difference is an exact small integer, one f32 rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

HALF = 64          # codes per half block (the GEMM's K tile is 2 * HALF)


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def single_group(k: int, group: int) -> bool:
    """Whether one scale covers the whole row (group 0, or a group at least K)."""
    return group <= 0 or -(-k // group) == 1


def w4_layout(k: int, group: int) -> tuple[int, int, int, int]:
    """(H, GE, Kp, NGp) of the packing of a K-long row with qlinear group ``group`` (see the
    module doc). Raises ValueError for a group the kernels do not take (several groups of a
    size that is not a power of two >= 16)."""
    if single_group(k, group):
        h = HALF
        kp = -(-k // (2 * h)) * 2 * h
        return h, _pow2(kp), kp, 1
    if group < 16 or group & (group - 1):
        raise ValueError(f"W4 packing needs a power-of-two group >= 16, got {group}")
    h = min(HALF, group)
    kp = -(-k // (2 * h)) * 2 * h
    return h, group, kp, -(-kp // group)


@dataclass(frozen=True, eq=False)
class W4Packed:
    """Packed constants of one qlinear (layout: module doc)."""

    qweight: torch.Tensor            # uint8 [N, Kp/2]
    scales: torch.Tensor             # f32 [NGp, N]
    zeros: torch.Tensor | None       # uint8 [NGp, N] effective zeros, or None
    zc: int                          # effective zero when ``zeros`` is None
    n: int
    k: int
    half: int                        # H
    ge: int                          # effective group
    signed: bool                     # i4 codes (stored + 8)

    @property
    def kp(self) -> int:
        return 2 * self.qweight.shape[1]

    def to(self, device: torch.device | str) -> "W4Packed":
        """The same packing on ``device``."""
        z = self.zeros.to(device) if self.zeros is not None else None
        return W4Packed(self.qweight.to(device), self.scales.to(device), z, self.zc, self.n,
                        self.k, self.half, self.ge, self.signed)


def pack_w4(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group: int,
            signed: bool) -> W4Packed:
    """Pack codes ``w`` [N, K] (uint8 0..15, or int8 -8..7 when ``signed``), ``scale`` [N, G] or
    [N] and optional ``zero`` (w's dtype, scale's shape) for the W4 kernels."""
    n, k = w.shape
    h, ge, kp, ngp = w4_layout(k, group)
    u = w.to(torch.int32) + (8 if signed else 0)
    if int(u.min()) < 0 or int(u.max()) > 15:
        raise ValueError("W4 codes out of range")
    up = torch.zeros(n, kp, dtype=torch.int32, device=w.device)
    up[:, :k] = u
    blocks = up.reshape(n, kp // (2 * h), 2, h)
    packed = (blocks[:, :, 0, :] | (blocks[:, :, 1, :] << 4)).to(torch.uint8).reshape(n, kp // 2)
    s2 = scale.reshape(n, -1).to(device=w.device, dtype=torch.float32)
    scales = torch.zeros(ngp, n, dtype=torch.float32, device=w.device)
    scales[:s2.shape[1]] = s2.T
    zeros = None
    zc = 8 if signed else 0
    if zero is not None:
        z2 = zero.reshape(n, -1).to(device=w.device, dtype=torch.int32) + zc
        zeros = torch.zeros(ngp, n, dtype=torch.uint8, device=w.device)
        zeros[:z2.shape[1]] = z2.T.to(torch.uint8)
    return W4Packed(packed.contiguous(), scales.contiguous(), zeros, zc, n, k, h, ge, signed)


def unpack_codes(p: W4Packed) -> torch.Tensor:
    """The IR codes [N, K] back from a packing: uint8 for u4, int8 for i4."""
    b = p.qweight.cpu().to(torch.int32).reshape(p.n, -1, 1, p.half)
    u = torch.cat([b & 15, b >> 4], dim=2).reshape(p.n, p.kp)[:, :p.k]
    if p.signed:
        return (u - 8).to(torch.int8)
    return u.to(torch.uint8)


def dequant(p: W4Packed) -> torch.Tensor:
    """Wd f32 [N, K] from the packing, exactly as the kernels form it."""
    b = p.qweight.cpu().to(torch.int32).reshape(p.n, -1, 1, p.half)
    u = torch.cat([b & 15, b >> 4], dim=2).reshape(p.n, p.kp)[:, :p.k]
    grp = torch.arange(p.k) // p.ge
    z = p.zeros.cpu().to(torch.int32)[grp].T if p.zeros is not None else p.zc
    return (u - z).to(torch.float32) * p.scales.cpu()[grp].T
