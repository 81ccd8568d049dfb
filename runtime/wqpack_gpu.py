"""Weight prepacking for the Triton weight-only kernel of the forms the W4 kernels do not take
(``codegen/triton_wq.py``): 8-bit integer and float8 codes, FP4 (E2M1) codes, and 4-bit integer
codes with float zero points or groups that are not a power of two. Done once at load time.

Input: a weight-only ``qlinear``'s constants — codes w [N, K] in their IR container (one per
byte: u8 / u4 / f4e2m1 in uint8, i8 / i4 in int8, f8e4m3 / f8e5m2 in torch's float8 types),
w_scale f32 [N, G] (or [N] for group 0), w_zero [N, G] (or [N]) of an integer code type or f32,
or absent; G = ceil(K / group).

Layout (exact):

- ``codes`` uint8 [N, KB]. 8-bit codes: byte ``[n, k]`` is code k's own byte (i8 two's
  complement, float8 its bit pattern). 4-bit codes: byte ``[n, j]`` holds code ``2 j`` in bits
  0..3 and code ``2 j + 1`` in bits 4..7 (i4 as its two's complement nibble). KB is K (8-bit)
  or ceil(K / 2) bytes rounded up to a multiple of 16, the tail filled with code 0, so a row
  also reads as int32 words: word ``[n, w]`` holds codes 4 w .. 4 w + 3 (8 w .. 8 w + 7) in
  its bytes (nibbles) from the lowest.
- ``scales`` f32 [G', N] (transposed, so the N scales of one group are contiguous) times the
  code's rebias ``2^r`` (below); G' = 1 when one scale covers the row (group 0 or group >= K).
- ``zeros``: integer zero points as int16 [G', N], float ones as f32 [G', N], or ``None``.

Decoding (the kernel's, exact): integer codes are the byte / nibble read as unsigned or signed;
float codes become f16 bit patterns by moving their fields (e5m2: the byte is the top half of
an f16; e4m3: sign to bit 15, the 7 other bits to bits 7..13; e2m1: sign to bit 15, the 3 other
bits to bits 9..11), which is the code's value times ``2^-r`` with r = 0 (e5m2), 8 (e4m3) or 14
(e2m1) — f16 holds every one of those values exactly, subnormals included — and the rebias
rides on the scale. So Wd[n, k] = (decode(code) - zero) * scale is ``dequant_weight`` bit for
bit (:func:`dequant` checks it in the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import dtypes as dt
from ..ir.ops.quant import dequant_weight
from .w4pack_gpu import single_group

# code kinds of the kernel (its CODE constexpr)
KIND = {"u8": 0, "u4": 0, "i8": 1, "i4": 1, "f8e4m3": 2, "f8e5m2": 3, "f4e2m1": 4}
REBIAS = {2: 8, 3: 0, 4: 14}          # 2^r folded into the scales of float codes
WQ_DTYPES = frozenset(KIND)


@dataclass(frozen=True, eq=False)
class WQPacked:
    """Packed constants of one weight-only qlinear (layout in the module docstring)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    kind: int          # KIND of the codes
    nib: bool          # two 4-bit codes per byte
    group: int         # 0: one scale per channel
    n: int
    k: int

    @property
    def float_zero(self) -> bool:
        """Whether the zero points are floats (f32 [G', N]) rather than integers."""
        return self.zeros is not None and self.zeros.dtype == torch.float32

    def to(self, device: torch.device | str) -> "WQPacked":
        """The same packing with its tensors on ``device``."""
        z = self.zeros.to(device) if self.zeros is not None else None
        return WQPacked(self.codes.to(device), self.scales.to(device), z, self.kind, self.nib,
                        self.group, self.n, self.k)


def effective_group(k: int, group: int) -> int:
    """0 when one scale covers the row (group 0, or a group at least K), else ``group``."""
    return 0 if single_group(k, group) else group


def rebias(kind: int) -> float:
    """The power of two the kernel's float decoding leaves out (folded into the scales)."""
    return float(2 ** REBIAS.get(kind, 0))


def _bytes(w: torch.Tensor, wdtype: dt.DType) -> torch.Tensor:
    """One byte per code: the container's own bytes (4-bit codes reduced to their nibble)."""
    if w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.int8):
        b = w.contiguous().view(torch.uint8)
    else:
        b = w.to(torch.uint8)
    return b & 15 if wdtype.bits == 4 else b


def pack_wq(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, wdtype: dt.DType,
            group: int) -> WQPacked:
    """Pack the constants (see the module docstring); ``wdtype`` is w's IR dtype."""
    if wdtype.name not in WQ_DTYPES:
        raise ValueError(f"the weight-only Triton kernel takes {sorted(WQ_DTYPES)} codes, not {wdtype.name}")
    n, k = w.shape
    kind = KIND[wdtype.name]
    g = effective_group(k, group)
    b = _bytes(w, wdtype)
    nib = wdtype.bits == 4
    if nib:
        if k % 2:
            b = torch.cat([b, torch.zeros(n, 1, dtype=torch.uint8)], 1)
        b = b[:, 0::2] | (b[:, 1::2] << 4)
    # rows padded with code 0 to 16 bytes: the GEMV reads them as aligned int32 words
    pad = -b.shape[1] % 16
    if pad:
        b = torch.cat([b, torch.zeros(n, pad, dtype=torch.uint8)], 1)
    s = scale.to(torch.float32).reshape(n, -1)[:, : (-(-k // g) if g else 1)]
    scales = (s * rebias(kind)).t().contiguous()
    zeros = None
    if zero is not None:
        zr = zero.reshape(n, -1)[:, : scales.shape[0]]
        if zr.is_floating_point():
            zeros = zr.to(torch.float32).t().contiguous()
        else:
            zeros = zr.to(torch.int16).t().contiguous()
    return WQPacked(b.contiguous(), scales, zeros, kind, nib, g, n, k)


def unpack_codes(p: WQPacked) -> torch.Tensor:
    """The codes' bytes [N, K] (4-bit codes as nibbles 0..15), from the packed form."""
    c = p.codes.cpu()
    if p.nib:
        c = torch.stack([c & 15, c >> 4], 2).reshape(p.n, -1)
    return c[:, : p.k]


def dequant(p: WQPacked) -> torch.Tensor:
    """Wd [N, K] f32 decoded from the packed form the way the kernel decodes it (float codes
    through their f16 bit patterns and the rebiased scale)."""
    c = unpack_codes(p).to(torch.int32)
    if p.kind == 0:
        v = c.to(torch.float32)
    elif p.kind == 1:
        v = ((c ^ (8 if p.nib else 128)) - (8 if p.nib else 128)).to(torch.float32)
    else:
        if p.kind == 2:
            bits = ((c & 0x80) << 8) | ((c & 0x7F) << 7)
        elif p.kind == 3:
            bits = c << 8
        else:
            bits = ((c & 8) << 12) | ((c & 7) << 9)
        v = bits.to(torch.int16).view(torch.float16).to(torch.float32)
    s = p.scales.cpu()
    gidx = (torch.arange(p.k) // p.group) if p.group else torch.zeros(p.k, dtype=torch.int64)
    if p.zeros is not None:
        v = v - p.zeros.cpu().to(torch.float32)[gidx].t()
    return v * s[gidx].t()


def reference(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, wdtype: dt.DType,
              group: int) -> torch.Tensor:
    """``dequant_weight`` of the unpacked constants (what :func:`dequant` must equal)."""
    return dequant_weight(w, scale, zero, group, wdtype.name == "f4e2m1").to(torch.float32)


__all__ = ["WQPacked", "WQ_DTYPES", "pack_wq", "unpack_codes", "dequant", "reference", "effective_group",
           "rebias"]
