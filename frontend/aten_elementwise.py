"""ATen -> IR: elementwise ops (arithmetic with torch's type promotion, comparisons,
activations, casts and copies)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import sympy
import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from .aten_table import Ctx, Handler, result_dtype, aten, operands


# ---- elementwise ------------------------------------------------------------------------------

_UNARY = {"abs": "abs", "neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
          "sin": "sin", "cos": "cos", "tanh": "tanh", "sigmoid": "sigmoid", "erf": "erf",
          "relu": "relu", "silu": "silu", "floor": "floor", "ceil": "ceil",
          "reciprocal": "reciprocal", "logical_not": "logical_not", "isnan": "isnan",
          "isinf": "isinf", "hardswish": "hardswish", "mish": "mish", "round": "round",
          "acos": "acos", "asin": "asin", "atan": "atan", "acosh": "acosh", "asinh": "asinh",
          "atanh": "atanh", "sinh": "sinh", "cosh": "cosh", "tan": "tan"}


def _unary(ir_op: str) -> Handler:
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        x = ctx.t(a["self"])
        out = ctx.out_dtype(n)
        # Float-only ops on integer tensors (exp of an int) compute in the promoted float type.
        if x.dtype is not out and out.is_float:
            x = ctx.cast(x, out)
        return ctx.emit(ir_op, [x])
    return h


for _name, _ir in _UNARY.items():
    aten(f"{_name}.default")(_unary(_ir))


@aten("log2.default", "log10.default")
def _log_base(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # log(x) / ln(b): within an ulp or two of torch's log2 / log10 (exact powers of the base
    # may land one ulp off; the IR has no base-2 logarithm)
    y = _unary("log")(ctx, n, a)
    base = 2.0 if str(n.target).startswith("aten.log2") else 10.0
    return ctx.emit("mul", [y, ctx.scalar(1.0 / math.log(base), y.dtype)])


@aten("exp2.default")
def _exp2(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    out = ctx.out_dtype(n)
    if x.dtype is not out:
        x = ctx.cast(x, out)
    # pow(2, x) is exact at integer x, as torch's exp2 is
    return ctx.emit("pow", [ctx.scalar(2.0, out), x])


def _shift(direction: str) -> Handler:
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        out = ctx.out_dtype(n)
        if not out.is_int or out is dt.boolean:
            raise FrontendError(f"{n.target}: bit shifts take integer tensors, got {out.name}")
        x, y = operands(ctx, n, [a["self"], a["other"]], out)
        return ctx.emit("bitshift", [x, y], direction=direction)
    return h


for _n in ("Tensor", "Scalar", "Tensor_Scalar", "Scalar_Tensor"):
    aten(f"bitwise_left_shift.{_n}")(_shift("left"))
    aten(f"bitwise_right_shift.{_n}")(_shift("right"))
for _n in ("Tensor", "Scalar"):
    aten(f"__lshift__.{_n}")(_shift("left"))
    aten(f"__rshift__.{_n}")(_shift("right"))


@aten("sign.default")
def _sign(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # torch's sign of NaN is 0; the IR's (ONNX Sign) keeps NaN
    x = ctx.t(a["self"])
    y = ctx.emit("sign", [x])
    if not x.dtype.is_float:
        return y
    return ctx.emit("where", [ctx.emit("isnan", [x]), ctx.scalar(0.0, x.dtype), y])


@aten("bitwise_not.default")
def _bitwise_not(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    if x.dtype is dt.boolean:
        return ctx.emit("logical_not", [x])
    return ctx.emit("sub", [ctx.scalar(-1, x.dtype), x])  # ~x == -1 - x in two's complement


@aten("gelu.default")
def _gelu(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("gelu", [ctx.t(a["self"])], approximate=a["approximate"])


@aten("hardsigmoid.default")
def _hardsigmoid(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("hardsigmoid", [ctx.t(a["self"])], alpha=1 / 6, beta=0.5)


@aten("elu.default")
def _elu(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    scale, in_scale = float(a["scale"]), float(a["input_scale"])
    if in_scale != 1.0:
        x = ctx.emit("mul", [x, ctx.scalar(in_scale, x.dtype)])
    y = ctx.emit("elu", [x], alpha=float(a["alpha"]))
    return y if scale == 1.0 else ctx.emit("mul", [y, ctx.scalar(scale, y.dtype)])


@aten("leaky_relu.default")
def _leaky_relu(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("leaky_relu", [ctx.t(a["self"])], alpha=float(a["negative_slope"]))


@aten("softplus.default")
def _softplus(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    beta, thr = float(a["beta"]), float(a["threshold"])
    if beta == 1.0 and thr == 20.0:
        return ctx.emit("softplus", [x])
    # softplus(x; beta, threshold) = x where beta*x > threshold, else log(1 + exp(beta*x)) / beta
    bx = ctx.emit("mul", [x, ctx.scalar(beta, x.dtype)])
    soft = ctx.emit("div", [ctx.emit("log", [ctx.emit("add", [ctx.emit("exp", [bx]),
                                                                ctx.scalar(1.0, x.dtype)])]),
                            ctx.scalar(beta, x.dtype)])
    return ctx.emit("where", [ctx.emit("gt", [bx, ctx.scalar(thr, x.dtype)]), x, soft])


@aten("hardtanh.default", "clamp.default", "clamp_min.default", "clamp_max.default")
def _clamp(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    out = ctx.out_dtype(n)
    x = ctx.cast(ctx.t(a["self"]), out)
    if "min_val" in a:
        lo, hi = a["min_val"], a["max_val"]
    else:
        lo, hi = a.get("min"), a.get("max")
    lo, hi = _clamp_bound(ctx, lo, out), _clamp_bound(ctx, hi, out)
    if isinstance(lo, Value) or isinstance(hi, Value):
        # a bound computed from the sizes (clamp(pos, max=L - 1)): min(max(x, lo), hi) at run time
        for b, op in ((lo, "maximum"), (hi, "minimum")):
            if b is not None:
                x = ctx.emit(op, [x, b if isinstance(b, Value) else ctx.scalar(b, out)])
        return x
    if any(v is not None and v != v for v in (lo, hi)):
        # a NaN bound makes every element NaN in torch; the IR's clip keeps NaN bounds out
        return ctx.emit("add", [x, ctx.scalar(float("nan"), out)])
    return ctx.emit("clip", [x], min=lo, max=hi)


def _clamp_bound(ctx: Ctx, v: Any, out: dt.DType) -> float | Value | None:
    """A clamp bound as a python float, or, when it is a symbolic size expression (a SymInt
    or SymFloat of the input sizes), a 0-d Value of ``out`` computing it at run time."""
    if v is None:
        return None
    if isinstance(v, fx.Node):
        v = ctx.env[v]
    elif isinstance(v, (torch.SymInt, torch.SymFloat)):
        v = ctx._expr(v.node.expr)
    if isinstance(v, sympy.Basic):
        if v.free_symbols:
            return ctx.scalar(v, out)
        v = float(v)
    return float(v)


@aten("clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp_t(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    out = ctx.out_dtype(n)
    x = ctx.cast(ctx.t(a["self"]), out)
    if a.get("min") is not None:
        x = ctx.emit("maximum", [x] + operands(ctx, n, [a["min"]], out))
    if a.get("max") is not None:
        x = ctx.emit("minimum", [x] + operands(ctx, n, [a["max"]], out))
    return x


def opmath(compute: dt.DType, scalars: Sequence[Any]) -> dt.DType:
    """The dtype a mul / div of 16-bit float ``compute`` with python-number operands ``scalars``
    must run in to give torch's result: torch keeps such scalars in float32 (h * 1e5 is finite,
    and b * 0.1 rounds once), so unless each is exact in ``compute`` the op runs in f32."""
    if compute not in (dt.f16, dt.bf16):
        return compute
    for v in scalars:
        if isinstance(v, Value):
            if v.type.rank == 0 and v.dtype in (dt.f32, dt.f64):
                return dt.f32      # a 0-d float32 tensor acts as a scalar: used unrounded
            continue
        if not isinstance(v, (bool, int, float)):
            return dt.f32      # a symbolic dim: its value is not known to fit
        t = torch.tensor(float(v), dtype=torch.float64)
        if t.to(compute.container).double().item() != t.item():
            return dt.f32
    return compute


def _binary(ir_op: str, compare: bool = False, alpha: bool = False, swap: bool = False) -> Handler:
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        lhs, rhs = a["self"], a["other"]
        if swap:
            lhs, rhs = rhs, lhs
        raw = [ctx.scalar_or_tensor(lhs), ctx.scalar_or_tensor(rhs)]
        out = result_dtype(ctx, raw) if compare else ctx.out_dtype(n)
        al = a.get("alpha", 1) if alpha else 1
        # torch (CPU) keeps a python scalar in float32 for mul and div only; add / sub round
        # it to the tensor's dtype first (measured on torch 2.14)
        compute = opmath(out, raw) if ir_op == "mul" and not compare else out
        x, y = operands(ctx, n, [lhs, rhs], compute)
        if ir_op in ("add", "sub") and not isinstance(rhs, fx.Node) and rhs == 0 \
                and x.type == ctx.out_type(n):
            return x  # x + 0 (position ids are built as arange(S) + past_length)
        if al != 1:
            y = ctx.emit("mul", [y, ctx.scalar(al, compute)])
        op = ir_op
        if compute is dt.boolean and op.startswith("bitwise_"):
            op = "logical_" + op[len("bitwise_"):]
        elif compute is dt.boolean and op in ("mul", "add"):
            # bool * bool is and, bool + bool is or (torch.isfinite's export is eq * ne)
            op = "logical_and" if op == "mul" else "logical_or"
        y = ctx.emit(op, [x, y])
        return y if compare else ctx.cast(y, out)
    return h


for _n in ("Tensor", "Scalar"):
    aten(f"add.{_n}")(_binary("add", alpha=True))
    aten(f"sub.{_n}")(_binary("sub", alpha=True))
    aten(f"rsub.{_n}")(_binary("sub", alpha=True, swap=True))
    aten(f"mul.{_n}")(_binary("mul"))
    aten(f"remainder.{_n}")(_binary("mod"))
    for _c in ("eq", "ne", "lt", "le", "gt", "ge"):
        aten(f"{_c}.{_n}")(_binary(_c, compare=True))
    for _b in ("and", "or", "xor"):
        aten(f"bitwise_{_b}.{_n}")(_binary(f"bitwise_{_b}"))
aten("maximum.default")(_binary("maximum"))
aten("minimum.default")(_binary("minimum"))
aten("logical_and.default")(_binary("logical_and", compare=True))
aten("logical_or.default")(_binary("logical_or", compare=True))
aten("logical_xor.default")(_binary("logical_xor", compare=True))


@aten("fmod.Tensor", "fmod.Scalar")
def _fmod(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x, y = operands(ctx, n, [a["self"], a["other"]], ctx.out_dtype(n))
    return ctx.emit("mod", [x, y], fmod=True)


@aten("div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode", "floor_divide.default",
      "floor_divide.Scalar")
def _div(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    mode = a.get("rounding_mode")
    if "floor_divide" in str(n.target):
        mode = "floor"
    res = ctx.out_dtype(n)
    out = opmath(res, [ctx.scalar_or_tensor(a["self"]), ctx.scalar_or_tensor(a["other"])])
    if out is not res:
        return ctx.cast(_div_in(ctx, n, a, mode, out), res)
    return _div_in(ctx, n, a, mode, out)


def _div_in(ctx: Ctx, n: fx.Node, a: dict, mode: str | None, out: dt.DType) -> Value:
    x, y = operands(ctx, n, [a["self"], a["other"]], out)
    if mode is None or (mode == "trunc" and not out.is_float):
        return ctx.emit("div", [x, y])
    if out.is_float:
        q = ctx.emit("div", [x, y])
        if mode == "floor":
            return ctx.emit("floor", [q])
        return ctx.emit("where", [ctx.emit("lt", [q, ctx.scalar(0.0, out)]),
                                  ctx.emit("ceil", [q]), ctx.emit("floor", [q])])
    # Integer floor division: x - (x mod y) is an exact multiple of y, so truncation is exact.
    return ctx.emit("div", [ctx.emit("sub", [x, ctx.emit("mod", [x, y])]), y])


@aten("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar")
def _pow(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    out = ctx.out_dtype(n)
    exp = a["exponent"]
    if not isinstance(exp, fx.Node) and exp == 0.5 and out.is_float:
        return ctx.emit("sqrt", [ctx.cast(ctx.t(a["self"]), out)])
    x, y = operands(ctx, n, [a["self"], exp], out)
    return ctx.emit("pow", [x, y])


@aten("where.self")
def _where(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    cond = ctx.cast(ctx.t(a["condition"]), dt.boolean)
    x, y = operands(ctx, n, [a["self"], a["other"]], ctx.out_dtype(n))
    return ctx.emit("where", [cond, x, y])


@aten("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    fill = operands(ctx, n, [a["value"]], x.dtype)[0]
    return ctx.emit("where", [ctx.cast(ctx.t(a["mask"]), dt.boolean), fill, x])


@aten("_to_copy.default", "to.dtype", "to.dtype_layout", "to.device", "clone.default",
      "alias.default", "detach.default", "lift_fresh_copy.default", "contiguous.default",
      "dropout.default")
def _copy(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    if a.get("train"):
        raise FrontendError(f"{ctx.node_name}: dropout in training mode")
    # Copies, aliases and device moves are free in value semantics; only a dtype change counts.
    return ctx.cast(ctx.t(a["self"] if "self" in a else a["input"]), ctx.out_dtype(n))


@aten("native_dropout.default")
def _native_dropout(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    if a["train"]:
        raise FrontendError(f"{ctx.node_name}: dropout in training mode")
    x = ctx.t(a["input"])
    return x, ctx.emit("full", [], shape=x.shape, value=1.0, dtype="bool")


@aten("type_as.default")
def _type_as(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.cast(ctx.t(a["self"]), ctx.out_dtype(n))


# ---- composites of IR ops (no IR op of their own) ----------------------------------------------

def _float_in(ctx: Ctx, n: fx.Node, a: dict, key: str = "self") -> Value:
    x = ctx.t(a[key])
    out = ctx.out_dtype(n)
    return ctx.cast(x, out) if x.dtype is not out else x


@aten("expm1.default")
def _expm1(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # Kahan: u = exp(x), (u - 1) * (x / log(u)) keeps expm1's relative precision near 0 (exp(x) - 1
    # alone gives 0 at 1e-10); u == 1 gives x, u - 1 == -1 gives -1, u == inf gives inf
    x = _float_in(ctx, n, a)
    one = ctx.scalar(1.0, x.dtype)
    u = ctx.emit("exp", [x])
    d = ctx.emit("sub", [u, one])
    r = ctx.emit("mul", [d, ctx.emit("div", [x, ctx.emit("log", [u])])])   # x / log(u) ~ 1: no overflow
    r = ctx.emit("where", [ctx.emit("eq", [u, one]), x, r])
    r = ctx.emit("where", [ctx.emit("eq", [d, ctx.scalar(-1.0, x.dtype)]), d, r])
    return ctx.emit("where", [ctx.emit("isinf", [u]), u, r])


@aten("log1p.default")
def _log1p(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # Kahan: u = 1 + x, log(u) * (x / (u - 1)) keeps log1p's relative precision near 0; u == 1
    # gives x, u == inf gives inf (x = -1: -inf, x < -1: NaN, as log)
    x = _float_in(ctx, n, a)
    one = ctx.scalar(1.0, x.dtype)
    u = ctx.emit("add", [x, one])
    lu = ctx.emit("log", [u])
    r = ctx.emit("mul", [lu, ctx.emit("div", [x, ctx.emit("sub", [u, one])])])
    r = ctx.emit("where", [ctx.emit("eq", [u, one]), x, r])
    big = ctx.emit("logical_and", [ctx.emit("isinf", [u]), ctx.emit("gt", [u, one])])
    r = ctx.emit("where", [big, u, r])
    return ctx.emit("where", [ctx.emit("eq", [u, ctx.scalar(0.0, x.dtype)]), lu, r])


@aten("trunc.default", "fix.default")
def _trunc(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    if not x.dtype.is_float:
        return x
    neg = ctx.emit("lt", [x, ctx.scalar(0.0, x.dtype)])
    return ctx.emit("where", [neg, ctx.emit("ceil", [x]), ctx.emit("floor", [x])])


@aten("round.decimals")
def _round_decimals(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # torch: round(x * 10^d) / 10^d (ties to even)
    x = ctx.t(a["self"])
    d = int(a["decimals"])
    if d == 0:
        return ctx.emit("round", [x])
    # half types compute in f32, as torch does (10^5 overflows f16)
    xc = ctx.cast(x, dt.f32) if x.dtype in (dt.f16, dt.bf16) else x
    f = ctx.scalar(10.0 ** abs(d), xc.dtype)
    if d > 0:
        y = ctx.emit("div", [ctx.emit("round", [ctx.emit("mul", [xc, f])]), f])
    else:
        y = ctx.emit("mul", [ctx.emit("round", [ctx.emit("div", [xc, f])]), f])
    return ctx.cast(y, x.dtype) if y.dtype is not x.dtype else y


def _negative(ctx: Ctx, v: Value) -> Value:
    """v < 0, or v = -0.0 (1 / -0.0 = -inf): the sign bit, but for NaN (read as positive)."""
    z, one = ctx.scalar(0.0, v.dtype), ctx.scalar(1.0, v.dtype)
    return ctx.emit("logical_or", [ctx.emit("lt", [v, z]), ctx.emit("logical_and", [
        ctx.emit("eq", [v, z]), ctx.emit("lt", [ctx.emit("div", [one, v]), z])])])


def _float_pair(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    out = ctx.out_dtype(n)
    return tuple(ctx.cast(v, out) if v.dtype is not out else v  # type: ignore[return-value]
                 for v in (ctx.t(a["self"]), ctx.t(a["other"])))


@aten("hypot.default")
def _hypot(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """sqrt(a^2 + b^2) without overflow or underflow, as max * sqrt(1 + (min / max)^2): 0 where
    both are 0, +inf where either is infinite (even beside a NaN, as C's hypot)."""
    x, y = (ctx.emit("abs", [v]) for v in _float_pair(ctx, n, a))
    big, small = ctx.emit("maximum", [x, y]), ctx.emit("minimum", [x, y])
    z, one = ctx.scalar(0.0, x.dtype), ctx.scalar(1.0, x.dtype)
    r = ctx.emit("div", [small, big])
    res = ctx.emit("mul", [big, ctx.emit("sqrt", [ctx.emit("add", [one, ctx.emit("mul", [r, r])])])])
    res = ctx.emit("where", [ctx.emit("eq", [big, z]), z, res])
    inf = ctx.emit("logical_or", [ctx.emit("isinf", [x]), ctx.emit("isinf", [y])])
    return ctx.emit("where", [inf, ctx.scalar(float("inf"), x.dtype), res])


@aten("copysign.Tensor", "copysign.Scalar")
def _copysign(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """|a| with the sign of b, -0.0 included (a NaN b counts as positive)."""
    out = ctx.out_dtype(n)
    x = ctx.cast(ctx.t(a["self"]), out)
    other = a["other"]
    y = ctx.cast(ctx.t(other), out) if isinstance(other, fx.Node) else ctx.scalar(float(other), out)
    mag = ctx.emit("abs", [x])
    return ctx.emit("where", [_negative(ctx, y), ctx.emit("neg", [mag]), mag])


@aten("atan2.default")
def _atan2(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    y, x = ctx.t(a["self"]), ctx.t(a["other"])
    out = ctx.out_dtype(n)
    y, x = (ctx.cast(v, out) if v.dtype is not out else v for v in (y, x))
    z, one = ctx.scalar(0.0, out), ctx.scalar(1.0, out)
    ysign = ctx.emit("where", [_negative(ctx, y), ctx.scalar(-1.0, out), one])
    negx = _negative(ctx, x)
    # atan(y / x), then +-pi (y's sign) where x is negative: right for finite x != 0, x = +-inf
    # with finite y, and x = +-0 with y != 0 (y / x = +-inf)
    res = ctx.emit("add", [ctx.emit("atan", [ctx.emit("div", [y, x])]),
                           ctx.emit("where", [negx, ctx.emit("mul", [ysign, ctx.scalar(math.pi, out)]), z])])
    # y = +-0 and x = +-0: +-0 or +-pi; both infinite: +-pi/4 or +-3pi/4
    zeros = ctx.emit("logical_and", [ctx.emit("eq", [y, z]), ctx.emit("eq", [x, z])])
    at0 = ctx.emit("mul", [ysign, ctx.emit("where", [negx, ctx.scalar(math.pi, out), z])])
    infs = ctx.emit("logical_and", [ctx.emit("isinf", [y]), ctx.emit("isinf", [x])])
    atinf = ctx.emit("mul", [ysign, ctx.emit("where", [negx, ctx.scalar(3 * math.pi / 4, out),
                                                        ctx.scalar(math.pi / 4, out)])])
    return ctx.emit("where", [infs, atinf, ctx.emit("where", [zeros, at0, res])])
