"""Elementwise ops beyond the core table, needed for ONNX coverage: inverse and hyperbolic
trigonometry (acos, asin, atan, acosh, asinh, atanh, sinh, cosh, tan) and ``bitshift``.

They follow the dtype rules of ``elementwise.py`` (float ops reject the sub-byte types and
compute float8 in float32). Lowering them to exp/log/sqrt would lose accuracy near the
singular points (asinh of large negative values, atanh near +-1), so they are ops of their own.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType
from .common import broadcast_shapes, require, same_dtype
from .elementwise import _unary  # the family's shared registration helper
from .registry import AttrSpec, defop, elementwise_cost

Tensor = torch.Tensor
_HALF = (torch.float16, torch.bfloat16)


def _half_safe(fn):
    """Compute f16/bf16 in f32 and round once: some torch CPU kernels lack half variants."""
    def run(x: Tensor, a: Attrs) -> Tensor:
        if x.dtype in _HALF:
            return fn(x.float()).to(x.dtype)
        return fn(x)
    return run


for _name, _fn, _what, _flops in [
    ("acos", torch.acos, "arc cosine, in radians in [0, pi]; NaN outside [-1, 1]", 6),
    ("asin", torch.asin, "arc sine, in radians in [-pi/2, pi/2]; NaN outside [-1, 1]", 6),
    ("atan", torch.atan, "arc tangent, in radians in (-pi/2, pi/2)", 6),
    ("acosh", torch.acosh, "inverse hyperbolic cosine; NaN below 1", 6),
    ("asinh", torch.asinh, "inverse hyperbolic sine", 6),
    ("atanh", torch.atanh, "inverse hyperbolic tangent; +-inf at +-1, NaN outside [-1, 1]", 6),
    ("sinh", torch.sinh, "hyperbolic sine", 4),
    ("cosh", torch.cosh, "hyperbolic cosine", 4),
    ("tan", torch.tan, "tangent, x in radians", 4),
]:
    _unary(_name, "float", (lambda f: _half_safe(f))(_fn),
           f"{_name}(x): the {_what}, elementwise; float x, output of x's type.", _flops)


# ---- bitshift -------------------------------------------------------------------------------


def _shift_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x, y = require(ins[0], "x"), require(ins[1], "y")
    same_dtype([x, y])
    if not x.dtype.is_int or x.dtype.is_subbyte:
        raise ShapeError(f"operands must be an integer type of 8 bits or more, got {x.dtype.name}")
    return [TensorType(x.dtype, broadcast_shapes(x.shape, y.shape))]


def _shift_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x, y = xs[0], xs[1]
    assert x is not None and y is not None
    bits = torch.iinfo(x.dtype).bits
    signed = torch.iinfo(x.dtype).min < 0
    # C leaves such counts undefined; ONNX (opset 28) shifts every bit out.
    out = (y < 0) | (y >= bits)
    if a["direction"] == "right" and signed:
        # A count of width-1 is exactly the sign fill that out-of-range counts must give.
        return torch.bitwise_right_shift(x, torch.where(out, torch.full_like(y, bits - 1), y))
    yc = torch.where(out, torch.zeros_like(y), y)
    shift = torch.bitwise_left_shift if a["direction"] == "left" else torch.bitwise_right_shift
    r = shift(x, yc)
    return torch.where(out, torch.zeros_like(r), r)


defop("bitshift", family="elementwise", inputs=2, shape=_shift_shape, reference=_shift_ref,
      elementwise=True, input_names=("x", "y"), cost=elementwise_cost(1),
      attrs={"direction": AttrSpec("str", choices=("left", "right"))},
      doc="bitshift(x, y)[direction]: x shifted by y bits elementwise (ONNX BitShift), numpy "
          "broadcasting, both operands of one integer type (8 bits or more). direction=\"left\" "
          "shifts toward the high bits, dropping those that leave the type; \"right\" shifts "
          "toward the low bits, logically for unsigned types and arithmetically (sign fill) for "
          "signed ones. Negative counts and counts of the type's width or more shift every bit out "
          "(0, or -1 for a negative signed x shifted right), as ONNX opset 28 specifies.")
