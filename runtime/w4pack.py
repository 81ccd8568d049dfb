"""Weight prepacking for the group-wise 4-bit ``qlinear`` template (``codegen/c_w4.py``), done
once at build time.

Input: codes ``w`` [N, K] one per byte (u4 container uint8 0..15, int3 codes are u4 0..7;
i4 container int8 -8..7; or f4e2m1 codes, uint8 0..15: bit 3 sign, bits 0..2 index into
``FP4_E2M1_GRID``), ``scale`` [N, G] and optional ``zero`` [N, G] (u4 / i4 codes or float;
none for f4e2m1), G = ceil(K / g) groups of ``g`` columns along K, the last one possibly short.

Nibble values: ``u = w + off`` with ``off = 8`` for signed i4 codes and ``0`` for u4 and
f4e2m1, so every nibble is 0..15 (the unsigned side of VNNI ``vpdpbusd``). Effective zero
point per channel and group: ``ze = off + zero`` (``zero`` taken as 0 when absent), so
``w - zero = u - ze`` exactly.

f4e2m1: the nibble is the E2M1 code itself and the kernels map it through a 16-entry table
``lut(u)``. Weight-only (``isint=False``): ``lut = FP4_LUT_F32`` (the signed E2M1 value),
``ze = 0``, scale ``s``. Int8 activations (``isint=True``): ``lut = FP4_LUT_U8`` = ``2 v +
12`` (``v`` the E2M1 value: 2v is an integer in -12..12, so the byte is 0..24, unsigned for
``vpdpbusd``), ``ze = 12`` and the stored scale is ``s / 2``, so ``(lut(u) - ze) * s / 2 =
v * s`` (halving is exact for normal scales).

K layout (padded groups): each group is padded with zero nibbles to a multiple of 8 columns,
``gp = 8 * ceil(g / 8)`` slots for a full group and ``8 * ceil(gl / 8)`` for the last one of
``gl = K - (G - 1) * g`` columns; packed column ``c`` of group ``i`` (``0 <= c < gp``) is
original column ``i * g + c`` when ``c < len(group i)``, else padding. ``Kp`` = total slots,
``K8 = Kp / 8`` blocks of 8 slots. The kernels read activations in the same padded layout.

N layout: panels of ``nr`` channels (a multiple of 16), padded with zero rows.

Bytes ``w`` uint8 [P, K8, nr, 4]: ``w[p, b, j, t] = u[p*nr + j, s(8b + t)] | u[p*nr + j,
s(8b + 4 + t)] << 4`` (``s`` maps a packed slot to its column; padding is 0). One 8-slot
block of a panel is ``nr * 4`` contiguous bytes: ``nr / 16`` zmm registers of 16 lanes, lane =
channel, each 32-bit lane holding 8 nibbles: nibble ``2t`` (bits 8t..8t+3) is slot ``8b + t``
and nibble ``2t + 1`` (bits 8t+4..8t+7) is slot ``8b + 4 + t``. Masking a lane with 0x0F0F0F0F
gives the 4 bytes of slots ``8b..8b+3`` for ``vpdpbusd``; shifting by 4 first gives slots
``8b+4..8b+7``.

Per panel, group and channel (float32, [P, G, nr], zero on padded channels): ``scale`` s and
``sz = s * ze`` (rounded once to float32). The kernels compute, per group,
``s * sum_k x_k u_k - sz * sum_k x_k`` = ``sum_k x_k (w_k - zero) s`` up to rounding.

What the kernels read (``blob``, uint8 [P, panel_bytes]): per panel, its groups in order, each
the group's code bytes (``w[p, b0:b0 + nbk]``, ``nbk * nr * 4`` bytes, ``nbk`` = its 8-slot
blocks) followed by its ``nr`` scales (float32, little endian) and its zero-point block: when
every ``ze`` is an integer 0..255 (``zbytes``: integer or absent zero points, any f4e2m1) the
``nr`` bytes ``ze`` padded with zeros to ``zlen = 64 * ceil(nr / 64)`` bytes (the kernels form
``sz = s * ze`` in float32, the same single rounding as ``sz`` here), else the ``nr`` ``sz``
floats (``zlen = 4 * nr``). A full group spans ``gstride = (gp / 8) * nr * 4 + 4 * nr + zlen``
bytes, so group ``i`` of panel ``p`` starts at byte ``p * panel_bytes + i * gstride``.
One panel is thus one sequential stream (M = 1 at 4096 x 11008 on 2 Zen 5 cores: ~0.14 ms
with separate scale arrays, whose two extra streams disturb the hardware prefetchers, against
~0.12 without). ``w`` / ``scale`` / ``sz`` stay as separate tensors for unpacking and tests.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import dtypes as dt

FP4_INT_OFFSET = 12
# Indexed by the 4-bit E2M1 code: magnitudes for codes 0..7, their negatives for 8..15.
FP4_LUT_F32 = tuple(float(v) for v in dt.FP4_E2M1_GRID) + tuple(-float(v) for v in dt.FP4_E2M1_GRID)
FP4_LUT_U8 = tuple(int(2 * v) + FP4_INT_OFFSET for v in FP4_LUT_F32)


@dataclass(frozen=True)
class PackedW4:
    """Prepacked constants of one group-wise 4-bit qlinear (layout in the module docstring)."""

    w: torch.Tensor        # uint8 [P, K8, nr, 4]
    scale: torch.Tensor    # float32 [P, G, nr]
    sz: torch.Tensor       # float32 [P, G, nr]
    blob: torch.Tensor     # uint8 [P, panel_bytes]: codes, scales and zero points per group
    n: int
    k: int
    group: int
    nr: int
    zbytes: bool = False   # the blob holds ze bytes (else sz floats)
    bits: int = 4          # 4: the layout above; 8: runtime/w8pack.py

    @property
    def panels(self) -> int:
        return self.w.shape[0]

    @property
    def groups(self) -> int:
        return self.scale.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        """The kernel's constant pointer arguments, in ABI order."""
        return [self.blob]


def zero_bytes(nr: int, zbytes: bool) -> int:
    """Bytes of a group's zero-point block in the ``blob`` (``zlen``)."""
    return -(-nr // 64) * 64 if zbytes else 4 * nr


def group_stride(k: int, group: int, nr: int, zbytes: bool = False, bits: int = 4) -> int:
    """Bytes of one full group (codes, scales, zero points) of a panel in the ``blob``
    (``bits``: 4, or 8 for the layout of runtime/w8pack.py)."""
    _, gp, _, _ = group_slots(k, group)
    return gp // 8 * nr * bits + 4 * nr + zero_bytes(nr, zbytes)


def interleave(packed: torch.Tensor, s: torch.Tensor, zblk: torch.Tensor, k: int, group: int
               ) -> torch.Tensor:
    """The ``blob`` of the module docstring from codes [P, K8, ...] (any fixed number of bytes
    per 8-slot block: ``nr * 4`` here, ``nr * 8`` in runtime/w8pack.py), scales [P, G, nr]
    and the zero-point blocks (``sz`` float32 [P, G, nr] or ``ze`` uint8 [P, G, zlen])."""
    panels, k8 = packed.shape[0], packed.shape[1]
    nr = s.shape[2]
    ng, gp, _, _ = group_slots(k, group)
    codes = packed.reshape(panels, -1)
    full = gp // 8 * (codes.shape[1] // k8)
    sb = s.contiguous().view(torch.uint8).reshape(panels, ng, 4 * nr)
    zb = zblk.contiguous().view(torch.uint8).reshape(panels, ng, -1)
    head = torch.cat([codes[:, :(ng - 1) * full].reshape(panels, ng - 1, full),
                      sb[:, :-1], zb[:, :-1]], 2).reshape(panels, -1)
    tail = torch.cat([codes[:, (ng - 1) * full:], sb[:, -1], zb[:, -1]], 1)
    return torch.cat([head, tail], 1).contiguous()


def group_slots(k: int, group: int) -> tuple[int, int, int, int]:
    """(G, gp, glp, Kp): groups, padded slots of a full group, of the last group, in all."""
    g = min(group, k) if group > 0 else k
    ng = -(-k // g)
    gl = k - (ng - 1) * g
    gp, glp = -(-g // 8) * 8, -(-gl // 8) * 8
    return ng, gp, glp, (ng - 1) * gp + glp


def slot_columns(k: int, group: int) -> torch.Tensor:
    """For every packed slot, its original column along K, or -1 for padding."""
    g = min(group, k) if group > 0 else k
    ng, gp, glp, kp = group_slots(k, group)
    s = torch.arange(kp)
    gi, c = s // gp, s % gp
    col = gi * g + c
    valid = (col < k) & (c < g)
    return torch.where(valid, col, torch.full_like(col, -1))


def weight_offset(wdtype: dt.DType) -> int:
    """What the nibbles add to a code so that it is unsigned (0..15); f4e2m1 codes already are."""
    return 8 if wdtype.is_signed and not wdtype.is_float else 0


def pack_w4(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, wdtype: dt.DType,
            group: int, nr: int = 32, isint: bool = False) -> PackedW4:
    """Pack 4-bit codes ``w`` [N, K] (``wdtype`` u4, i4 or f4e2m1) with ``scale`` [N, G] and
    optional ``zero`` [N, G] (integer codes or float; none for f4e2m1) into panels of ``nr``
    channels. ``isint``: the scales of the int8-activation kernel (differ for f4e2m1 only)."""
    fp4 = wdtype is dt.f4e2m1
    check_packable(w, scale, zero, wdtype, group, nr, wdtype.name in ("u4", "i4", "f4e2m1") and
                   not (fp4 and zero is not None))
    n, k = w.shape
    ng, gp, glp, kp = group_slots(k, group)
    off = weight_offset(wdtype)
    panels = -(-n // nr)
    npad = panels * nr
    cols = slot_columns(k, group)
    u = torch.zeros(npad, kp, dtype=torch.int32)
    valid = cols >= 0
    u[:n, valid] = w.to(torch.int32)[:, cols[valid]] + off
    if int(u.min()) < 0 or int(u.max()) > 15:
        raise ValueError("4-bit codes out of range")
    u = u.reshape(npad, kp // 8, 2, 4)                       # [n, b, half, t]
    byte = (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).to(torch.uint8)   # [n, b, t]
    packed = byte.reshape(panels, nr, kp // 8, 4).permute(0, 2, 1, 3).contiguous()
    s32 = scale.to(torch.float32)
    if fp4 and isint:
        off, s32 = FP4_INT_OFFSET, s32 / 2
    s, sz, zblk, zbytes = scale_blocks(s32, zero, off, panels, nr)
    return PackedW4(packed, s, sz, interleave(packed, s, zblk, k, group), n, k, group, nr,
                    zbytes)


def check_packable(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, wdtype: dt.DType,
                   group: int, nr: int, ok: bool) -> None:
    """ValueError unless ``ok`` (the packer takes this code dtype / zero point), ``w`` is 2-D,
    ``nr`` a multiple of 16 and ``scale`` / ``zero`` are [N, G] for ``group``."""
    if w.dim() != 2 or nr % 16 or not ok:
        raise ValueError(f"cannot pack {wdtype.name} weights of shape {tuple(w.shape)} "
                         f"{'with a zero point ' if zero is not None else ''}into panels of {nr}")
    n, k = w.shape
    ng = group_slots(k, group)[0]
    if scale.shape != (n, ng) or (zero is not None and zero.shape != (n, ng)):
        raise ValueError(f"scale / zero must be [{n}, {ng}] for group {group}")


def scale_blocks(s32: torch.Tensor, zero: torch.Tensor | None, off: int, panels: int, nr: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Per panel, group and channel ([P, G, nr], zero on padded channels): the scales ``s``,
    ``sz = s * ze`` (``ze = off + zero``) and the zero-point block the blob stores (``ze``
    bytes padded to ``zlen`` when every ``ze`` is an integer 0..255, else ``sz``), with
    that choice (``zbytes``)."""
    n, ng = s32.shape
    npad = panels * nr
    ze = torch.full((n, ng), float(off), dtype=torch.float64)
    if zero is not None:
        ze = ze + zero.to(torch.float64)
    s = torch.zeros(npad, ng, dtype=torch.float32)
    sz = torch.zeros(npad, ng, dtype=torch.float32)
    s[:n] = s32
    sz[:n] = (s32.to(torch.float64) * ze).to(torch.float32)
    s = s.reshape(panels, nr, ng).permute(0, 2, 1).contiguous()
    sz = sz.reshape(panels, nr, ng).permute(0, 2, 1).contiguous()
    zbytes = bool(((ze == ze.round()) & (ze >= 0) & (ze <= 255)).all())
    if zbytes:
        zq = torch.zeros(npad, ng, dtype=torch.uint8)
        zq[:n] = ze.to(torch.uint8)
        zblk = torch.zeros(panels, ng, zero_bytes(nr, True), dtype=torch.uint8)
        zblk[:, :, :nr] = zq.reshape(panels, nr, ng).permute(0, 2, 1)
    else:
        zblk = sz
    return s, sz, zblk, zbytes


def unpack(p: PackedW4, wdtype: dt.DType) -> torch.Tensor:
    """The codes [N, K] (``wdtype``'s container) back from a packing (tests, debugging)."""
    b = p.w.permute(0, 2, 1, 3).reshape(p.panels * p.nr, -1, 4).to(torch.int32)   # [n, K8, t]
    u = torch.stack([b & 15, b >> 4], 2).reshape(p.panels * p.nr, -1)            # slot order
    cols = slot_columns(p.k, p.group)
    out = torch.empty(p.n, p.k, dtype=torch.int32)
    valid = cols >= 0
    out[:, cols[valid]] = u[:p.n, valid]
    return (out - weight_offset(wdtype)).to(wdtype.container)


def unpack_scales(p: PackedW4) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, sz) back as [N, G] float32."""
    f = (lambda t: t.permute(0, 2, 1).reshape(p.panels * p.nr, -1)[:p.n])
    return f(p.scale), f(p.sz)
