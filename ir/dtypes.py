"""Element types of the IR (DESIGN.md §3).

Each :class:`DType` knows its bit width and the torch *container* dtype that holds one
element unpacked in memory during reference execution. Sub-byte types (i4, u4, f4e2m1) are
logical types: in the IR a value of type ``i4[N,K]`` has N*K elements, held one per byte by
the interpreter (i4 in int8, u4 in uint8, f4e2m1 as its 4-bit code in uint8). Packing two
codes per byte is a storage concern of the op or artifact that owns them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import IRError


@dataclass(frozen=True)
class DType:
    """An IR element type."""

    name: str
    bits: int
    is_float: bool
    is_signed: bool
    container: torch.dtype

    @property
    def is_int(self) -> bool:
        return not self.is_float and self.name != "bool"

    @property
    def is_subbyte(self) -> bool:
        return self.bits < 8

    @property
    def itemsize(self) -> float:
        """Bytes per element when stored packed (0.5 for 4-bit types)."""
        return self.bits / 8

    def int_range(self) -> tuple[int, int]:
        """Smallest and largest integer code; only for integer and bool types."""
        if self.is_float:
            raise IRError(f"dtype {self.name} has no integer range")
        if self.name == "bool":
            return 0, 1
        if self.is_signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"dtypes.{self.name}"


f64 = DType("f64", 64, True, True, torch.float64)
f32 = DType("f32", 32, True, True, torch.float32)
f16 = DType("f16", 16, True, True, torch.float16)
bf16 = DType("bf16", 16, True, True, torch.bfloat16)
i64 = DType("i64", 64, False, True, torch.int64)
i32 = DType("i32", 32, False, True, torch.int32)
i16 = DType("i16", 16, False, True, torch.int16)
i8 = DType("i8", 8, False, True, torch.int8)
u8 = DType("u8", 8, False, False, torch.uint8)
i4 = DType("i4", 4, False, True, torch.int8)
u4 = DType("u4", 4, False, False, torch.uint8)
boolean = DType("bool", 8, False, False, torch.bool)
f8e4m3 = DType("f8e4m3", 8, True, True, torch.float8_e4m3fn)
f8e5m2 = DType("f8e5m2", 8, True, True, torch.float8_e5m2)
f4e2m1 = DType("f4e2m1", 4, True, True, torch.uint8)

ALL: tuple[DType, ...] = (f64, f32, f16, bf16, i64, i32, i16, i8, u8, i4, u4, boolean,
                          f8e4m3, f8e5m2, f4e2m1)
_BY_NAME = {d.name: d for d in ALL}
_FROM_TORCH = {torch.float64: f64, torch.float32: f32, torch.float16: f16,
               torch.bfloat16: bf16, torch.int64: i64, torch.int32: i32, torch.int16: i16,
               torch.int8: i8, torch.uint8: u8, torch.bool: boolean,
               torch.float8_e4m3fn: f8e4m3, torch.float8_e5m2: f8e5m2}


def get(name: str | DType) -> DType:
    """The DType called ``name`` (``"f32"``, ``"i4"``, ...); raises IRError if unknown."""
    if isinstance(name, DType):
        return name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise IRError(f"unknown dtype {name!r}; known: {', '.join(_BY_NAME)}") from None


def from_torch(dtype: torch.dtype) -> DType:
    """The IR dtype whose container is ``dtype`` (8-bit and wider types only)."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise IRError(f"torch dtype {dtype} has no IR equivalent") from None


# E2M1 with exponent bias 1, no inf/nan: code = sign<<3 | e<<1 | m.
FP4_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _fp4_magnitude(c: torch.Tensor) -> torch.Tensor:
    """|value| of E2M1 codes 0..7 (int64), computed on their device: 0.5 m for e = 0, else
    2^(e-1) (1 + m / 2). No host table: copying one to a GPU would sync on every call and keep
    the step out of CUDA graphs."""
    e, m = (c >> 1) & 3, (c & 1).to(torch.float32)
    return torch.where(e == 0, 0.5 * m, torch.exp2(e.to(torch.float32) - 1.0) * (1.0 + 0.5 * m))


def fp4_e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """Float32 values of 4-bit E2M1 codes held in uint8 (low nibble)."""
    c = codes.to(torch.int64) & 0xF
    mag = _fp4_magnitude(c & 0x7)
    return torch.where((c & 0x8) != 0, -mag, mag)


def fp4_e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Round float values to the nearest E2M1 code (ties to even code), saturating at ±6."""
    codes = torch.arange(8, device=x.device)
    grid = _fp4_magnitude(codes)
    xf = x.to(torch.float32)
    mag = xf.abs().clamp(max=6.0)
    dist = (mag.unsqueeze(-1) - grid).abs()
    # Ties go to the even code (mantissa bit 0), matching IEEE round-half-to-even.
    best = dist.min(dim=-1, keepdim=True).values
    tie_ok = (dist == best)
    even = codes % 2 == 0
    pick_even = tie_ok & even
    idx = torch.where(pick_even.any(-1), pick_even.to(torch.int8).argmax(-1),
                      tie_ok.to(torch.int8).argmax(-1))
    sign = (torch.signbit(xf) & ~torch.isnan(xf)).to(torch.int64) << 3
    return (idx.to(torch.int64) | sign).to(torch.uint8)


def to_container(t: torch.Tensor, dtype: DType) -> torch.Tensor:
    """Convert a tensor of real values to ``dtype``'s container (saturating for sub-byte ints)."""
    if dtype is f4e2m1:
        return fp4_e2m1_encode(t)
    if dtype.is_subbyte:
        lo, hi = dtype.int_range()
        # Widen first: clamping a uint8 tensor to a negative bound would wrap.
        wide = t.round() if t.is_floating_point() else t.to(torch.int64)
        return wide.clamp(lo, hi).to(dtype.container)
    return t.to(dtype.container)


def to_real(t: torch.Tensor, dtype: DType, compute: torch.dtype = torch.float32) -> torch.Tensor:
    """The numeric values a container tensor of ``dtype`` stands for, as ``compute``."""
    if dtype is f4e2m1:
        return fp4_e2m1_decode(t).to(compute)
    return t.to(compute)
