"""Weight prepacking for the 8-bit codes of the group-wise weight-only ``qlinear`` template
(``codegen/c_w4.py`` with ``codegen/c_w8_src.py``), done once at build time.

Input: codes ``w`` [N, K] (u8, i8, or the float8 codes f8e4m3 / f8e5m2), ``scale`` [N, G] and
optional ``zero`` [N, G] (integer codes or float; none for float8), groups as in
runtime/w4pack.py (``group`` <= 0: one group of all K, the per-channel form).

Byte values: ``u = w + off`` with ``off = 128`` for i8 codes and ``0`` for u8, so every byte is
0..255 (the unsigned side of VNNI ``vpdpbusd``); effective zero point ``ze = off + zero``, so
``w - zero = u - ze``. Float8 bytes are the codes' bit patterns (``ze = 0``); the kernels turn
them into float32 by moving the exponent and mantissa bits into place and multiplying by
``2^(127 - bias)``, which is exact for normal and subnormal codes alike. NaN / inf codes are
not packed (``finite_codes``): the template leaves such weights to the reference.

K layout: the padded groups of runtime/w4pack.py (8-slot blocks). Bytes ``w`` uint8
[P, K8, 2, nr, 4]: ``w[p, b, h, j, t] = u[p*nr + j, s(8b + 4h + t)]``. One 8-slot block of
a panel is ``nr * 8`` contiguous bytes, two halves of ``nr / 16`` zmm registers of 16 lanes
(lane = channel); each 32-bit lane of half ``h`` holds the bytes of slots ``8b + 4h`` ..
``8b + 4h + 3``, lowest byte first. These are the four bytes per lane ``vpdpbusd`` multiplies
with four activation codes, so the int8-activation kernel reads the blob as it is; the
weight-only kernel shifts and masks a lane's bytes into floats.

The ``blob`` interleaves codes, scales and zero-point blocks per group exactly as
runtime/w4pack.py does, with ``nbk * nr * 8`` code bytes per group (``group_stride(...,
bits=8)``), and :class:`~.w4pack.PackedW4` carries it with ``bits = 8``.
"""
from __future__ import annotations

import torch

from ..ir import dtypes as dt
from .w4pack import PackedW4, check_packable, group_slots, interleave, scale_blocks, slot_columns

W8_DTYPES = ("u8", "i8", "f8e4m3", "f8e5m2")
# float8 code -> float32 bits: (mantissa + exponent bits) << shift, sign to bit 31, then
# times 2^(127 - bias): (7-bit magnitude mask, shift, exponent bias)
FP8_BITS = {"f8e4m3": (0x7F, 20, 7), "f8e5m2": (0x7F, 21, 15)}


def weight_offset8(wdtype: dt.DType) -> int:
    """What the bytes add to a code so that it is unsigned (0..255)."""
    return 128 if wdtype.name == "i8" else 0


def code_bytes(w: torch.Tensor, wdtype: dt.DType) -> torch.Tensor:
    """The codes as int32 byte values ``u`` (0..255, before any offset for float8 codes)."""
    if wdtype.is_float:
        return w.contiguous().view(torch.uint8).to(torch.int32)
    return w.to(torch.int32) + weight_offset8(wdtype)


def finite_codes(w: torch.Tensor, wdtype: dt.DType) -> bool:
    """Whether every code is a finite number (always for integer codes)."""
    return not wdtype.is_float or bool(torch.isfinite(w.to(torch.float32)).all())


def pack_w8(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, wdtype: dt.DType,
            group: int, nr: int = 32) -> PackedW4:
    """Pack 8-bit codes ``w`` [N, K] (``wdtype`` u8, i8, f8e4m3 or f8e5m2) with ``scale``
    [N, G] and optional ``zero`` [N, G] (integer codes or float; none for float8) into panels of
    ``nr`` channels (layout in the module docstring)."""
    check_packable(w, scale, zero, wdtype, group, nr, wdtype.name in W8_DTYPES and not (
        wdtype.is_float and zero is not None) and finite_codes(w, wdtype))
    n, k = w.shape
    _, _, _, kp = group_slots(k, group)
    panels = -(-n // nr)
    cols = slot_columns(k, group)
    u = torch.zeros(panels * nr, kp, dtype=torch.int32)
    valid = cols >= 0
    u[:n, valid] = code_bytes(w, wdtype)[:, cols[valid]]
    packed = u.to(torch.uint8).reshape(panels, nr, kp // 8, 2, 4).permute(0, 2, 3, 1, 4).contiguous()
    s, sz, zblk, zbytes = scale_blocks(scale.to(torch.float32), zero, weight_offset8(wdtype),
                                       panels, nr)
    return PackedW4(packed, s, sz, interleave(packed, s, zblk, k, group), n, k, group, nr,
                    zbytes, bits=8)


def unpack8(p: PackedW4, wdtype: dt.DType) -> torch.Tensor:
    """The codes [N, K] (``wdtype``'s container) back from an 8-bit packing (tests)."""
    u = p.w.permute(0, 3, 1, 2, 4).reshape(p.panels * p.nr, -1).to(torch.int32)   # slot order
    cols = slot_columns(p.k, p.group)
    out = torch.empty(p.n, p.k, dtype=torch.int32)
    valid = cols >= 0
    out[:, cols[valid]] = u[:p.n, valid]
    if wdtype.is_float:
        return out.to(torch.uint8).view(wdtype.container)
    return (out - weight_offset8(wdtype)).to(wdtype.container)
