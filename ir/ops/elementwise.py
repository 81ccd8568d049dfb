"""Elementwise ops: unary, binary (numpy broadcasting), ternary ``where``, and ``cast``.

Dtype rules shared by this family:
- Arithmetic ops reject the sub-byte types (i4, u4, f4e2m1): their containers cannot hold
  results that leave the 4-bit range, and an f4e2m1 container holds codes, not values.
  Cast to a wider type first. ``identity``, ``where`` and ``cast`` accept every dtype;
  comparisons, ``maximum`` and ``minimum`` also accept i4/u4 (they cannot overflow).
- Float8 operands are computed in float32 (torch has no CPU float8 arithmetic) and float
  results are converted back to the operand's float8 type (round to nearest even).
- Integer arithmetic wraps in the container type, as two's complement C does.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .. import dtypes as dt
from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType
from .common import broadcast_shapes, require, same_dtype
from .registry import AttrSpec, defop, elementwise_cost

Tensor = torch.Tensor
_F8 = (torch.float8_e4m3fn, torch.float8_e5m2)

# ---- dtype classes ------------------------------------------------------------------------
# Each names the dtypes an op accepts; checked by the shape functions.


def _is_float(d: dt.DType) -> bool:
    return d.is_float and d is not dt.f4e2m1


def _is_num(d: dt.DType) -> bool:
    return _is_float(d) or (d.is_int and not d.is_subbyte)


def _is_ord(d: dt.DType) -> bool:
    return _is_num(d) or d.name in ("i4", "u4")


_CLASSES: dict[str, tuple[Callable[[dt.DType], bool], str]] = {
    "float": (_is_float, "a float type other than f4e2m1"),
    "num": (_is_num, "a float or integer type (not bool, i4, u4, f4e2m1)"),
    "ord": (_is_ord, "a float or integer type (not bool, f4e2m1)"),
    "cmp": (lambda d: _is_ord(d) or d is dt.boolean, "a float, integer or bool type (not f4e2m1)"),
    "int": (lambda d: d.is_int and not d.is_subbyte, "an integer type of 8 bits or more"),
    "bool": (lambda d: d is dt.boolean, "bool"),
    "any": (lambda d: True, "any type"),
}


def _check(t: TensorType, cls: str, what: str) -> None:
    ok, desc = _CLASSES[cls]
    if not ok(t.dtype):
        raise ShapeError(f"{what} must be {desc}, got {t.dtype.name}")


def _lift(fn: Callable[[list[Tensor | None], Attrs], Tensor]) -> Callable[..., Tensor]:
    """Wrap a reference so float8 operands are computed in float32 and converted back."""
    def ref(xs: Sequence[Tensor | None], attrs: Attrs) -> Tensor:
        f8 = next((x.dtype for x in xs if x is not None and x.dtype in _F8), None)
        if f8 is None:
            return fn(list(xs), attrs)
        out = fn([x.float() if x is not None and x.dtype in _F8 else x for x in xs], attrs)
        return out.to(f8) if out.is_floating_point() else out
    return ref


# ---- unary ----------------------------------------------------------------------------------


def _unary(name: str, cls: str, fn: Callable[[Tensor, Attrs], Tensor], doc: str, flops: int = 1,
           out: str | None = None, attrs: dict[str, AttrSpec] | None = None) -> None:
    """Register a one-input elementwise op; ``out`` fixes the output dtype (else = input)."""
    def shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
        x = require(ins[0], "x")
        _check(x, cls, "x")
        return [x.with_dtype(out) if out else x]

    defop(name, family="elementwise", inputs=1, shape=shape, elementwise=True, input_names=("x",),
          reference=_lift(lambda xs, a: fn(xs[0], a)), cost=elementwise_cost(flops),
          attrs=attrs, doc=doc)


def _sign(x: Tensor, a: Attrs) -> Tensor:
    s = torch.sign(x)
    # torch maps NaN to 0; keep NaN so that sign matches numpy and IEEE intent.
    return torch.where(torch.isnan(x), x, s) if x.is_floating_point() else s


def _clip(x: Tensor, a: Attrs) -> Tensor:
    lo, hi = a["min"], a["max"]
    if not x.is_floating_point():
        # Integer tensors take the integers inside [min, max], clipped to the container range.
        info = torch.iinfo(x.dtype)
        lo = None if lo is None else int(min(max(math.ceil(lo), info.min), info.max))
        hi = None if hi is None else int(min(max(math.floor(hi), info.min), info.max))
    if lo is None and hi is None:
        return x.clone()
    return torch.clamp(x, lo, hi)


def _hardsigmoid(x: Tensor, a: Attrs) -> Tensor:
    return torch.clamp(a["alpha"] * x + a["beta"], 0.0, 1.0).to(x.dtype)


_unary("relu", "num", lambda x, a: torch.relu(x),
       "relu(x) = max(x, 0) elementwise; float or integer x, output of x's type.")
_unary("neg", "num", lambda x, a: torch.neg(x),
       "neg(x) = -x elementwise; integers wrap (neg of u8 1 is 255).")
_unary("abs", "num", lambda x, a: torch.abs(x),
       "abs(x) = |x| elementwise; integers wrap (abs of i8 -128 is -128).")
_unary("exp", "float", lambda x, a: torch.exp(x), "exp(x) = e**x elementwise; float x.", 4)
_unary("log", "float", lambda x, a: torch.log(x),
       "log(x) = natural logarithm of x elementwise; -inf at 0, NaN below 0; float x.", 4)
_unary("sqrt", "float", lambda x, a: torch.sqrt(x),
       "sqrt(x) = square root of x elementwise; NaN below 0; float x.", 2)
_unary("rsqrt", "float", lambda x, a: torch.rsqrt(x),
       "rsqrt(x) = 1 / sqrt(x) elementwise; inf at 0, NaN below 0; float x.", 2)
_unary("reciprocal", "float", lambda x, a: torch.reciprocal(x),
       "reciprocal(x) = 1 / x elementwise; float x.")
_unary("sin", "float", lambda x, a: torch.sin(x), "sin(x) elementwise, x in radians; float x.", 4)
_unary("cos", "float", lambda x, a: torch.cos(x), "cos(x) elementwise, x in radians; float x.", 4)
_unary("tanh", "float", lambda x, a: torch.tanh(x), "tanh(x) elementwise; float x.", 4)
_unary("sigmoid", "float", lambda x, a: torch.sigmoid(x),
       "sigmoid(x) = 1 / (1 + exp(-x)) elementwise; float x.", 4)
_unary("gelu", "float", lambda x, a: F.gelu(x, approximate=a["approximate"]),
       "gelu(x) = x * Phi(x) with Phi the standard normal CDF (approximate=\"none\": "
       "0.5*x*(1+erf(x/sqrt(2)))); approximate=\"tanh\" uses "
       "0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3))). Float x.", 8,
       attrs={"approximate": AttrSpec("str", "none", ("none", "tanh"))})
_unary("silu", "float", lambda x, a: F.silu(x), "silu(x) = x * sigmoid(x) elementwise; float x.", 5)
_unary("erf", "float", lambda x, a: torch.erf(x), "erf(x), the Gauss error function, elementwise; float x.", 6)
_unary("floor", "float", lambda x, a: torch.floor(x),
       "floor(x): largest integer value <= x, elementwise, same float type.")
_unary("ceil", "float", lambda x, a: torch.ceil(x),
       "ceil(x): smallest integer value >= x, elementwise, same float type.")
_unary("round", "float", lambda x, a: torch.round(x),
       "round(x) to the nearest integer value, ties to even (2.5 -> 2, -0.5 -> -0), same float type.")
_unary("sign", "num", _sign,
       "sign(x) = -1, 0 or +1 by the sign of x, in x's type; sign(+-0) = 0 and NaN stays NaN.")
_unary("logical_not", "bool", lambda x, a: torch.logical_not(x), "logical_not(x) = not x; bool in, bool out.")
_unary("isnan", "float", lambda x, a: torch.isnan(x),
       "isnan(x): True where x is NaN; float x, bool output.", out="bool")
_unary("isinf", "float", lambda x, a: torch.isinf(x),
       "isinf(x): True where x is +inf or -inf; float x, bool output.", out="bool")
_unary("clip", "num", _clip,
       "clip(x) = min(max(x, min), max) elementwise; an absent bound (None) is not applied; "
       "if min > max every element becomes max; NaN stays NaN. For integer x the bounds "
       "become ceil(min) and floor(max), limited to the type's range.", 2,
       attrs={"min": AttrSpec("float", None), "max": AttrSpec("float", None)})
_unary("leaky_relu", "float", lambda x, a: F.leaky_relu(x, a["alpha"]),
       "leaky_relu(x) = x if x >= 0 else alpha * x, elementwise; float x.", 2,
       attrs={"alpha": AttrSpec("float", 0.01)})
_unary("elu", "float", lambda x, a: F.elu(x, a["alpha"]),
       "elu(x) = x if x > 0 else alpha * (exp(x) - 1), elementwise; float x.", 5,
       attrs={"alpha": AttrSpec("float", 1.0)})
_unary("hardsigmoid", "float", _hardsigmoid,
       "hardsigmoid(x) = max(0, min(1, alpha * x + beta)) elementwise (ONNX HardSigmoid); "
       "float x.", 3, attrs={"alpha": AttrSpec("float", 1 / 6), "beta": AttrSpec("float", 0.5)})
_unary("hardswish", "float", lambda x, a: F.hardswish(x),
       "hardswish(x) = x * max(0, min(1, x / 6 + 1/2)) elementwise (ONNX HardSwish); float x.", 4)
_unary("softplus", "float", lambda x, a: F.softplus(x),
       "softplus(x) = log(1 + exp(x)) elementwise (computed as x itself above x = 20, where "
       "the two agree to float precision); float x.", 6)
_unary("mish", "float", lambda x, a: F.mish(x),
       "mish(x) = x * tanh(softplus(x)) elementwise; float x.", 10)
_unary("identity", "any", lambda x, a: x,
       "identity(x) = x; any dtype; the output is the input unchanged.", 0)

# ---- binary ---------------------------------------------------------------------------------


def _binary(name: str, cls: str, fn: Callable[[Tensor, Tensor, Attrs], Tensor], doc: str,
            flops: int = 1, out: str | None = None, attrs: dict[str, AttrSpec] | None = None) -> None:
    """Register a two-input op with numpy broadcasting and one dtype on both sides."""
    def shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
        x, y = require(ins[0], "a"), require(ins[1], "b")
        same_dtype([x, y])
        _check(x, cls, "operands")
        return [TensorType(out or x.dtype, broadcast_shapes(x.shape, y.shape))]

    defop(name, family="elementwise", inputs=2, shape=shape, elementwise=True, input_names=("a", "b"),
          reference=_lift(lambda xs, a: fn(xs[0], xs[1], a)), cost=elementwise_cost(flops),
          attrs=attrs, doc=doc + " Numpy broadcasting; a and b share one dtype.")


def _div(x: Tensor, y: Tensor, a: Attrs) -> Tensor:
    if x.is_floating_point():
        return x / y
    # ONNX / C: the integer quotient rounds to zero. A divisor of -1 negates (MIN / -1 wraps
    # to MIN) without dividing: torch's CPU division traps there and kills the process.
    if not x.dtype.is_signed:
        return torch.div(x, y, rounding_mode="trunc")
    m1 = y == -1
    q = torch.div(x, torch.where(m1, torch.ones_like(y), y), rounding_mode="trunc")
    return torch.where(m1, -x, q)


def _mod(x: Tensor, y: Tensor, a: Attrs) -> Tensor:
    if x.is_floating_point() or not x.dtype.is_signed:
        return torch.fmod(x, y) if a["fmod"] else torch.remainder(x, y)
    m1 = y == -1           # MIN % -1 is 0 (the machine division would trap)
    y1 = torch.where(m1, torch.ones_like(y), y)
    r = torch.fmod(x, y1) if a["fmod"] else torch.remainder(x, y1)
    return torch.where(m1, torch.zeros_like(r), r)


_binary("add", "num", lambda x, y, a: x + y, "add(a, b) = a + b; integers wrap.")
_binary("sub", "num", lambda x, y, a: x - y, "sub(a, b) = a - b; integers wrap.")
_binary("mul", "num", lambda x, y, a: x * y, "mul(a, b) = a * b; integers wrap.")
_binary("div", "num", _div,
        "div(a, b) = a / b; for integers the quotient is truncated toward zero (ONNX Div, C), "
        "and integer division by zero is an error.")
_binary("pow", "num", lambda x, y, a: torch.pow(x, y),
        "pow(a, b) = a ** b; for integers b must be >= 0.", 4)
_binary("maximum", "ord", lambda x, y, a: torch.maximum(x, y),
        "maximum(a, b): the larger of a and b; NaN if either is NaN.")
_binary("minimum", "ord", lambda x, y, a: torch.minimum(x, y),
        "minimum(a, b): the smaller of a and b; NaN if either is NaN.")
_binary("mod", "num", _mod,
        "mod(a, b), ONNX Mod: with fmod=False the remainder takes the sign of the divisor "
        "(a - floor(a / b) * b, python %); with fmod=True it takes the sign of the dividend "
        "(C fmod, a - trunc(a / b) * b). ONNX allows only fmod=True for floats; here floats accept "
        "both.", 2, attrs={"fmod": AttrSpec("bool", False)})
for _n, _f, _s in [("eq", torch.eq, "=="), ("ne", torch.ne, "!="), ("lt", torch.lt, "<"),
                   ("le", torch.le, "<="), ("gt", torch.gt, ">"), ("ge", torch.ge, ">=")]:
    _binary(_n, "cmp", (lambda f: lambda x, y, a: f(x, y))(_f),
            f"{_n}(a, b) = (a {_s} b) as bool; comparisons with NaN are False except ne.", out="bool")
for _n, _f in [("and", torch.logical_and), ("or", torch.logical_or), ("xor", torch.logical_xor)]:
    _binary(f"logical_{_n}", "bool", (lambda f: lambda x, y, a: f(x, y))(_f),
            f"logical_{_n}(a, b) = a {_n} b; bool in, bool out.")
for _n, _f in [("and", torch.bitwise_and), ("or", torch.bitwise_or), ("xor", torch.bitwise_xor)]:
    _binary(f"bitwise_{_n}", "int", (lambda f: lambda x, y, a: f(x, y))(_f),
            f"bitwise_{_n}(a, b): bitwise {_n} of the two's complement bits; integer types.")

# ---- where ----------------------------------------------------------------------------------


def _where_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    c, x, y = require(ins[0], "cond"), require(ins[1], "a"), require(ins[2], "b")
    _check(c, "bool", "cond")
    same_dtype([x, y], "a and b")
    return [TensorType(x.dtype, broadcast_shapes(c.shape, x.shape, y.shape))]


defop("where", family="elementwise", inputs=3, shape=_where_shape, elementwise=True,
      input_names=("cond", "a", "b"), cost=elementwise_cost(1),
      reference=lambda xs, a: torch.where(xs[0], xs[1], xs[2]),
      doc="where(cond, a, b) = a where cond is True, else b; cond is bool, a and b share one "
          "dtype (any, including sub-byte codes), all three broadcast together (numpy rules).")

# ---- cast -----------------------------------------------------------------------------------


def _cast_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    src = attrs["from_dtype"]
    if src is not None and dt.get(src) is not x.dtype:
        raise ShapeError(f"from_dtype={src} but the input is {x.dtype.name}")
    if x.dtype is dt.f4e2m1 and src is None:
        # A uint8 container cannot tell f4e2m1 codes from u8 values; the reference needs to know.
        raise ShapeError('casting from f4e2m1 needs the attribute from_dtype="f4e2m1"')
    return [x.with_dtype(attrs["to"])]


def cast_tensor(x: Tensor, to: dt.DType, src: dt.DType | None = None) -> Tensor:
    """Convert container tensor ``x`` (of dtype ``src``, by default the one its container
    implies) to ``to``'s container, by the rules in cast's doc."""
    if src is dt.f4e2m1:
        x = dt.fp4_e2m1_decode(x)
    elif x.dtype in _F8 and not (to.is_float and not to.is_subbyte):
        x = x.float()  # trunc/clamp below have no float8 kernels; f32 holds every f8 value
    if to is dt.f4e2m1:
        return dt.fp4_e2m1_encode(x.float())
    if to is dt.boolean:
        return x != 0
    if to.container in _F8:
        if x.is_floating_point():
            fmax = torch.finfo(to.container).max
            x = x.float().clamp(-fmax, fmax) if x.dtype in _F8 else x.clamp(-fmax, fmax)
        return x.to(to.container)
    if to.is_float:
        return x.to(to.container)
    if x.is_floating_point():
        x = torch.trunc(x)
        if to.is_subbyte:
            x = torch.nan_to_num(x, nan=0.0)
    if to.is_subbyte:
        # Saturate in int64: clamping a uint8 container to a negative bound would wrap.
        return dt.to_container(x if x.is_floating_point() else x.to(torch.int64), to)
    return x.to(to.container)


def _cast_ref(xs: Sequence[Tensor | None], attrs: Attrs) -> Tensor:
    assert xs[0] is not None
    src = attrs["from_dtype"]
    return cast_tensor(xs[0], dt.get(attrs["to"]), dt.get(src) if src is not None else None)


defop("cast", family="elementwise", inputs=1, shape=_cast_shape, reference=_cast_ref,
      elementwise=True, input_names=("x",), cost=elementwise_cost(1),
      attrs={"to": AttrSpec("str", choices=tuple(d.name for d in dt.ALL)),
             "from_dtype": AttrSpec("str", None, choices=tuple(d.name for d in dt.ALL) + (None,))},
      doc="cast(x) converts x to dtype `to` (any dtype to any dtype), value by value. "
          "float -> int truncates toward zero (as C); into i4/u4 the result then saturates to "
          "the 4-bit range and NaN becomes 0, while into 8-bit and wider ints an out-of-range "
          "value or NaN is implementation-defined (as C). int -> narrower int wraps, except into "
          "i4/u4, which saturates. Anything -> bool is x != 0 (NaN is True); bool -> numbers "
          "gives 0/1. Into f16/bf16/f32/f64 rounds to nearest even (overflow gives inf). Into "
          "f8e4m3/f8e5m2 rounds to nearest even and saturates finite and infinite values to "
          "+-max (448 / 57344; ONNX Cast saturate=1), NaN stays NaN. Into f4e2m1 rounds to the "
          "nearest E2M1 value (ties to the even code), saturates to +-6, NaN becomes +0. Casting "
          "from f4e2m1 requires from_dtype=\"f4e2m1\" (optional otherwise, and then it must "
          "match x's dtype) because its uint8 container holds codes.")
