"""Weight prepacking for the Triton W4A16 kernels (``codegen/triton_w4.py``), done once at build time.

Input: a weight-only group-wise ``qlinear``'s constants — codes w [N, K] one per byte (u4: uint8
0..15, also int3 codes 0..7; i4: int8 -8..7), w_scale f32 [N, G] (or [N] for group 0),
w_zero [N, G] of w's dtype or absent, G = ceil(K / group).

Layout (exact):

- ``J`` = 16 words; a *block* is ``8 J`` = 128 consecutive codes along K. K is padded with
  code 0 to ``Kp = ceil(K / 128) * 128``. The effective group ``GE`` is ``group`` (a power of
  two >= 16), or, when one group covers K (group 0 or group >= K), the next power of two >= Kp
  (every k then falls in group 0).
- ``qweight`` int32 [Kp / 128, N, J], block major: word ``qweight[b, n, j]`` (block b, 0 <= j < J)
  holds in its bits ``4 i .. 4 i + 3`` (nibble i, 0 <= i < 8) the code ``u[n, b*8J + i*J + j]``.
  One block of BN consecutive channels is one contiguous run of BN * 64 bytes, so a GEMV / GEMM
  program's weight tile per K block is a single contiguous load (the row-major [N, Kp/8] form
  scattered it over BN rows 64 bytes apart and streamed measurably slower).
  ``u`` is the code made unsigned: u = w for u4, u = w + 8 for i4. So nibble i of a block's J
  words is the contiguous slice ``i*J .. i*J + J - 1`` of the block: each nibble meets a
  contiguous slice of x, a thread's one 16-byte load holds 32 codes, and (J divides GE) each
  nibble lies in one group; with GE >= 128 the whole block does. Read as half-words, a word's
  bits ``w & 0x000F000F`` are the codes of nibbles 0 and 4 (k = j and 64 + j) in the low bits
  of each 16-bit half, ``w & 0x00F000F0`` nibbles 1 and 5 times 16, and the same on ``w >> 8``
  nibbles 2, 6 and 3, 7: OR-ing 0x6400 into each half makes f16 pairs 1024 + u (or 1024 + 16 u),
  exactly, which the f16x2 GEMV (``triton_w4.py``) uses.
- ``scales`` f32 [NGp, N] (transposed: the N scales of one group are contiguous),
  NGp = ceil(Kp / GE); rows past G are 0.
- ``zeros`` uint8 [NGp, N] = the effective zero ``zeff`` = z (u4) or z + 8 (i4), so that
  w - z == u - zeff exactly; rows past G are 0. ``None`` when the qlinear has no zero point:
  then the constant ``zc`` (0 for u4, 8 for i4) is the effective zero.

- ``qkn`` int32 [Kp / 8, N], row major (the GEMM layout, N contiguous so a row of words loads
  coalesced along N): word ``qkn[r, n]`` holds in bits ``4 i .. 4 i + 3`` the code
  ``u[n, 8 r + i]`` (8 consecutive K codes per word). It is a second copy of the same codes:
  the GEMVs and the nibble-block GEMM stream ``qweight``, the ``KN`` GEMM ``qkn``. No default
  config takes the ``KN`` GEMM, so a compiled Triton module packs no ``qkn`` and keeps half a
  byte per code on the device.

Dequantisation: Wd[n, k] = (u[n, k] - zeff[n, k // GE]) * scales[k // GE, n] in f32, which is
``dequant_weight`` bit for bit (the difference is an exact small integer, one f32 rounding).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

J = 16             # words per block (a block is 8 J codes: the kernels' K step)
BLOCK = 8 * J


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def single_group(k: int, group: int) -> bool:
    """Whether one scale covers the whole row (group 0, or a group at least K)."""
    return group <= 0 or -(-k // group) == 1


def w4_layout(k: int, group: int) -> tuple[int, int, int]:
    """(GE, Kp, NGp) of the packing of a K-long row with qlinear group ``group`` (see the module
    doc). Raises ValueError for a group the kernels do not take (several groups of a size that
    is not a power of two >= 16)."""
    kp = -(-k // BLOCK) * BLOCK
    if single_group(k, group):
        return _pow2(kp), kp, 1
    if group < 16 or group & (group - 1):
        raise ValueError(f"W4 packing needs a power-of-two group >= 16, got {group}")
    return group, kp, -(-kp // group)


@dataclass(frozen=True, eq=False)
class W4Packed:
    """Packed constants of one qlinear (layout: module doc)."""

    qweight: torch.Tensor            # int32 [Kp/128, N, J] (block major)
    scales: torch.Tensor             # f32 [NGp, N]
    zeros: torch.Tensor | None       # uint8 [NGp, N] effective zeros, or None
    zc: int                          # effective zero when ``zeros`` is None
    n: int
    k: int
    ge: int                          # effective group
    signed: bool                     # i4 codes (stored + 8)
    qkn: torch.Tensor | None = None  # int32 [Kp/8, N] (GEMM layout)

    @property
    def kp(self) -> int:
        return BLOCK * self.qweight.shape[0]

    def to(self, device: torch.device | str) -> "W4Packed":
        """The same packing on ``device``."""
        z = self.zeros.to(device) if self.zeros is not None else None
        kn = self.qkn.to(device) if self.qkn is not None else None
        return W4Packed(self.qweight.to(device), self.scales.to(device), z, self.zc, self.n,
                        self.k, self.ge, self.signed, kn)


def _unsigned_padded(w: torch.Tensor, kp: int, signed: bool) -> torch.Tensor:
    """Codes made unsigned (u = w, or w + 8 for i4), int64 [N, Kp] with K padded by 0."""
    n, k = w.shape
    u = w.to(torch.int64) + (8 if signed else 0)
    if int(u.min()) < 0 or int(u.max()) > 15:
        raise ValueError("W4 codes out of range")
    up = torch.zeros(n, kp, dtype=torch.int64, device=w.device)
    up[:, :k] = u
    return up


def _as_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)   # bit pattern


def pack_kn(w: torch.Tensor, group: int, signed: bool) -> torch.Tensor:
    """The GEMM layout ``qkn`` int32 [Kp/8, N] of codes ``w`` [N, K] (module doc)."""
    n, k = w.shape
    _, kp, _ = w4_layout(k, group)
    up = _unsigned_padded(w, kp, signed)
    shifts = (4 * torch.arange(8, device=w.device, dtype=torch.int64)).reshape(1, 1, 8)
    # code 8 r + i of channel n in nibble i of word [r, n]
    return _as_int32((up.reshape(n, kp // 8, 8) << shifts).sum(dim=2).T).contiguous()


def pack_w4(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group: int,
            signed: bool, kn: bool = True) -> W4Packed:
    """Pack codes ``w`` [N, K] (uint8 0..15, or int8 -8..7 when ``signed``), ``scale`` [N, G] or
    [N] and optional ``zero`` (w's dtype, scale's shape) for the W4 kernels; ``kn=False`` leaves
    out the GEMM layout (the executor's packing: no default config reads it)."""
    n, k = w.shape
    ge, kp, ngp = w4_layout(k, group)
    up = _unsigned_padded(w, kp, signed)
    blocks = up.reshape(n, kp // BLOCK, 8, J)               # [n, b, nibble i, word j]
    shifts = (4 * torch.arange(8, device=w.device, dtype=torch.int64)).reshape(1, 1, 8, 1)
    words = (blocks << shifts).sum(dim=2)                   # disjoint bits: sum == or
    qweight = _as_int32(words).permute(1, 0, 2)             # [b, n, word j]
    wkn = pack_kn(w, group, signed) if kn else None
    s2 = scale.reshape(n, -1).to(device=w.device, dtype=torch.float32)
    scales = torch.zeros(ngp, n, dtype=torch.float32, device=w.device)
    scales[:s2.shape[1]] = s2.T
    zeros = None
    zc = 8 if signed else 0
    if zero is not None:
        z2 = zero.reshape(n, -1).to(device=w.device, dtype=torch.int32) + zc
        zeros = torch.zeros(ngp, n, dtype=torch.uint8, device=w.device)
        zeros[:z2.shape[1]] = z2.T.to(torch.uint8)
    return W4Packed(qweight.contiguous(), scales.contiguous(), zeros, zc, n, k, ge, signed, wkn)


def _codes(p: W4Packed) -> torch.Tensor:
    """Unsigned codes u [N, K] (int64) read back from the words."""
    wd = p.qweight.cpu().to(torch.int64).permute(1, 0, 2).reshape(p.n, -1, 1, J) & 0xFFFFFFFF
    shifts = (4 * torch.arange(8, dtype=torch.int64)).reshape(1, 1, 8, 1)
    return ((wd >> shifts) & 15).reshape(p.n, p.kp)[:, :p.k]


def _codes_kn(p: W4Packed) -> torch.Tensor:
    """Unsigned codes u [N, K] (int64) read back from the GEMM layout ``qkn``."""
    assert p.qkn is not None
    wd = p.qkn.cpu().to(torch.int64).T.reshape(p.n, -1, 1) & 0xFFFFFFFF
    shifts = (4 * torch.arange(8, dtype=torch.int64)).reshape(1, 1, 8)
    return ((wd >> shifts) & 15).reshape(p.n, p.kp)[:, :p.k]


def unpack_codes(p: W4Packed, layout: str = "nk") -> torch.Tensor:
    """The IR codes [N, K] back from a packing (``layout`` "nk": ``qweight``, "kn": ``qkn``):
    uint8 for u4, int8 for i4."""
    u = _codes(p) if layout == "nk" else _codes_kn(p)
    if p.signed:
        return (u - 8).to(torch.int8)
    return u.to(torch.uint8)


def dequant(p: W4Packed) -> torch.Tensor:
    """Wd f32 [N, K] from the packing, exactly as the kernels form it."""
    u = _codes(p)
    grp = torch.arange(p.k) // p.ge
    z = p.zeros.cpu().to(torch.int64)[grp].T if p.zeros is not None else p.zc
    return (u - z).to(torch.float32) * p.scales.cpu()[grp].T
