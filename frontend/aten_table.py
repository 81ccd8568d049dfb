"""The ATen -> IR op table: the conversion context, the registry, and the elementwise,
reduction and tensor-creation families. Shape ops live in ``aten_shape.py``, nn ops in
``aten_nn.py``; both register into :data:`ATEN` through :func:`aten`.

A handler receives the conversion context, the fx node and its arguments bound by the op's
schema (name -> raw fx argument, defaults filled) and returns the node's result: a Value, a
tuple of Values (multi-output ops), or ``None`` for ops without a tensor result.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import sympy
import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Graph, Value
from ..ir.ops import get_op
from ..ir.types import Dim, TensorType, canon_dim

Handler = Callable[["Ctx", fx.Node, dict], Any]
ATEN: dict[str, Handler] = {}

# Fold a node with only constant inputs unless its result is larger than this many elements
# (an expand of a small constant should not become a huge weight).
FOLD_LIMIT = 1 << 20


def aten(*names: str) -> Callable[[Handler], Handler]:
    """Register a handler for the listed ATen overloads (``"add.Tensor"`` means aten.add.Tensor)."""
    def deco(fn: Handler) -> Handler:
        for n in names:
            ATEN["aten." + n] = fn
        return fn
    return deco


def op_name(target: Any) -> str:
    """The table key of an fx call_function target (``aten.add.Tensor``)."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    mod = getattr(target, "__module__", "") or ""
    return f"{mod}.{getattr(target, '__name__', repr(target))}"


def bind_args(target: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict:
    """Arguments of an ATen call by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    schema = target._schema
    pos = list(args)
    for i, arg in enumerate(schema.arguments):
        if i < len(pos) and not arg.kwarg_only:
            out[arg.name] = pos[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


class Ctx:
    """State of one conversion: the graph being built and the fx-node -> IR mapping."""

    def __init__(self, graph: Graph, convert_expr: Callable[[Any], Dim]):
        self.g = graph
        self.env: dict[fx.Node, Any] = {}
        self._expr = convert_expr
        self.node_name: str | None = None
        self.fold = True
        self._dim_values: dict[tuple, Value] = {}

    # ---- reading arguments --------------------------------------------------------------
    def t(self, a: Any) -> Value:
        """The Value of a tensor argument."""
        v = self.env[a] if isinstance(a, fx.Node) else None
        if not isinstance(v, Value):
            raise FrontendError(f"{self.node_name}: expected a tensor argument, got {a!r}")
        return v

    def opt(self, a: Any) -> Value | None:
        return None if a is None else self.t(a)

    def scalar_or_tensor(self, a: Any) -> Any:
        """A Value for a tensor argument, else the python / symbolic scalar."""
        if isinstance(a, fx.Node):
            return self.env[a]
        return a

    def dim(self, a: Any) -> Dim:
        """An int or symbolic dimension from an int or SymInt argument."""
        if isinstance(a, fx.Node):
            v = self.env[a]
            if isinstance(v, Value):
                raise FrontendError(f"{self.node_name}: a tensor is used as a shape")
            return canon_dim(v) if not isinstance(v, int) or v >= 0 else v
        if isinstance(a, torch.SymInt):
            return self._expr(a.node.expr)
        return int(a)

    def dims(self, a: Sequence[Any]) -> tuple[Dim, ...]:
        return tuple(self.dim(x) for x in a)

    @staticmethod
    def meta(n: fx.Node) -> Any:
        return n.meta.get("val")

    def out_type(self, n: fx.Node, i: int | None = None) -> TensorType:
        """The IR type torch inferred for (output ``i`` of) ``n``."""
        val = self.meta(n)
        if i is not None:
            val = val[i]
        return TensorType(dt.from_torch(val.dtype), self.shape_of(val))

    def shape_of(self, val: torch.Tensor) -> tuple[Dim, ...]:
        return tuple(self._expr(d.node.expr) if isinstance(d, torch.SymInt) else int(d)
                     for d in val.shape)

    def out_dtype(self, n: fx.Node) -> dt.DType:
        return dt.from_torch(self.meta(n).dtype)

    # ---- building -----------------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Value | None], **attrs: Any) -> Any:
        """Append ``op`` (or fold it into a constant when every input is constant)."""
        opdef = get_op(op)
        bound = opdef.bind_attrs(attrs, where=op)
        types = opdef.infer([v.type if v is not None else None for v in inputs], bound,
                            where=f"{op} (from {self.node_name})")
        if self.fold and all(v is None or v.is_const for v in inputs) \
                and all(t.is_static for t in types) and _attrs_static(bound) \
                and all(math.prod(t.shape) <= FOLD_LIMIT for t in types):
            res = opdef.reference([None if v is None else v.const for v in inputs], bound)
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
            vals = tuple(self.g.add_const(o, t.dtype) for o, t in zip(outs, types))
            return vals[0] if len(vals) == 1 else vals
        return self.g.add(op, list(inputs), bound, out_types=types, name=self.node_name)

    def const(self, tensor: torch.Tensor, dtype: dt.DType | None = None,
              name: str | None = None) -> Value:
        return self.g.add_const(tensor, dtype, name=name)

    def scalar(self, x: Any, dtype: dt.DType) -> Value:
        """A 0-d tensor holding the scalar ``x`` (python number or symbolic dim) as ``dtype``."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        if isinstance(x, sympy.Basic) and x.free_symbols:
            key = (x, dtype.name)
            if key not in self._dim_values:
                # A runtime value of a symbolic dim: arange(d, d+1) is the 1-element tensor [d].
                one = self.emit("arange", [], start=x, end=x + 1, step=1, dtype="i64")
                self._dim_values[key] = self.cast(self.emit("reshape", [one], shape=()), dtype)
            return self._dim_values[key]
        if isinstance(x, sympy.Basic):
            x = int(x) if x.is_Integer else float(x)
        t = torch.tensor(x, dtype=torch.float64 if isinstance(x, float) else None)
        return self.const(dt.to_container(t, dtype), dtype)

    def cast(self, v: Value, dtype: dt.DType) -> Value:
        if v.dtype is dtype:
            return v
        return self.emit("cast", [v], to=dtype.name)


def _attrs_static(attrs: Mapping[str, Any]) -> bool:
    def ok(v: Any) -> bool:
        if isinstance(v, tuple):
            return all(ok(x) for x in v)
        return not (isinstance(v, sympy.Basic) and v.free_symbols)
    return all(ok(v) for v in attrs.values())


def _result_dtype(ctx: Ctx, operands: Sequence[Any]) -> dt.DType:
    """torch's type promotion over tensor Values and python scalars."""
    probes: list[Any] = []
    for o in operands:
        if isinstance(o, Value):
            # A 0-d tensor takes part in promotion only by category, like a scalar; model that.
            shape = (1,) * o.type.rank if o.type.rank else ()
            probes.append(torch.empty(shape, dtype=o.dtype.container))
        elif isinstance(o, sympy.Basic):
            probes.append(1 if o.is_integer else 1.0)
        else:
            probes.append(o)
    res = probes[0]
    if not isinstance(res, torch.Tensor):
        res = torch.tensor(res)
    for p in probes[1:]:
        dtype = torch.result_type(res, p)
        res = torch.empty(res.shape if isinstance(res, torch.Tensor) else (), dtype=dtype)
        if isinstance(p, torch.Tensor) and p.dim() > res.dim():
            res = torch.empty(p.shape, dtype=dtype)
    return dt.from_torch(res.dtype)


def operands(ctx: Ctx, n: fx.Node, args: Sequence[Any], compute: dt.DType) -> list[Value]:
    """Tensor Values for each argument, scalars as 0-d constants, all cast to ``compute``."""
    return [ctx.cast(x, compute) if isinstance(x, Value) else ctx.scalar(x, compute)
            for x in (ctx.scalar_or_tensor(a) for a in args)]


# ---- elementwise ------------------------------------------------------------------------------

_UNARY = {"abs": "abs", "neg": "neg", "exp": "exp", "log": "log", "sqrt": "sqrt", "rsqrt": "rsqrt",
          "sin": "sin", "cos": "cos", "tanh": "tanh", "sigmoid": "sigmoid", "erf": "erf",
          "relu": "relu", "silu": "silu", "floor": "floor", "ceil": "ceil", "sign": "sign",
          "reciprocal": "reciprocal", "logical_not": "logical_not", "isnan": "isnan",
          "isinf": "isinf", "hardswish": "hardswish", "mish": "mish", "round": "round"}


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
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    return ctx.emit("clip", [x], min=lo, max=hi)


@aten("clamp.Tensor", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp_t(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    out = ctx.out_dtype(n)
    x = ctx.cast(ctx.t(a["self"]), out)
    if a.get("min") is not None:
        x = ctx.emit("maximum", [x] + operands(ctx, n, [a["min"]], out))
    if a.get("max") is not None:
        x = ctx.emit("minimum", [x] + operands(ctx, n, [a["max"]], out))
    return x


def _binary(ir_op: str, compare: bool = False, alpha: bool = False, swap: bool = False) -> Handler:
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        lhs, rhs = a["self"], a["other"]
        if swap:
            lhs, rhs = rhs, lhs
        raw = [ctx.scalar_or_tensor(lhs), ctx.scalar_or_tensor(rhs)]
        compute = _result_dtype(ctx, raw) if compare else ctx.out_dtype(n)
        x, y = operands(ctx, n, [lhs, rhs], compute)
        if ir_op in ("add", "sub") and not isinstance(rhs, fx.Node) and rhs == 0 \
                and x.type == ctx.out_type(n):
            return x  # x + 0 (position ids are built as arange(S) + past_length)
        if alpha and a.get("alpha", 1) != 1:
            y = ctx.emit("mul", [y, ctx.scalar(a["alpha"], compute)])
        op = ir_op
        if compute is dt.boolean and op.startswith("bitwise_"):
            op = "logical_" + op[len("bitwise_"):]
        return ctx.emit(op, [x, y])
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
    out = ctx.out_dtype(n)
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
      "_unsafe_view_copy.default", "dropout.default", "native_dropout.default")
def _copy(ctx: Ctx, n: fx.Node, a: dict) -> Any:
    x = ctx.cast(ctx.t(a.get("self", a.get("input"))), ctx.out_dtype(n) if "native_dropout"
                 not in str(n.target) else ctx.t(a["input"]).dtype)
    if "native_dropout" in str(n.target):
        if a.get("train"):
            raise FrontendError(f"{ctx.node_name}: dropout in training mode; call model.eval()")
        return (x, ctx.emit("full", [], shape=x.shape, value=1.0, dtype="bool"))
    return x


@aten("type_as.default")
def _type_as(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.cast(ctx.t(a["self"]), ctx.out_dtype(n))


# ---- reductions -------------------------------------------------------------------------------


def _axes(d: Any) -> tuple[int, ...] | None:
    if d is None:
        return None
    if isinstance(d, int):
        return (d,)
    return tuple(int(x) for x in d) or None


def _reduce(ir_op: str, cast_first: bool = True) -> Handler:
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        out = ctx.out_dtype(n)
        x = ctx.t(a["self"])
        if cast_first:
            x = ctx.cast(x, out)
        if x.type.rank == 0:
            return ctx.emit("identity", [x])
        return ctx.emit(ir_op, [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)))
    return h


aten("sum.dim_IntList", "sum.default")(_reduce("reduce_sum"))
aten("mean.dim", "mean.default")(_reduce("reduce_mean"))
aten("amax.default", "max.default")(_reduce("reduce_max"))
aten("amin.default", "min.default")(_reduce("reduce_min"))
aten("prod.dim_int", "prod.default")(_reduce("reduce_prod"))
aten("logsumexp.default")(_reduce("reduce_logsumexp"))


@aten("any.dim", "any.dims", "any.default", "all.dim", "all.dims", "all.default")
def _any_all(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.cast(ctx.t(a["self"]), dt.boolean)
    op = "reduce_max" if "any" in str(n.target) else "reduce_min"
    return ctx.emit(op, [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)))


@aten("var.correction", "var.dim", "std.correction", "std.dim")
def _var(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    corr = a.get("correction")
    if "unbiased" in a:
        corr = 1 if a["unbiased"] else 0
    op = "reduce_var" if "var" in str(n.target) else "reduce_std"
    return ctx.emit(op, [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)),
                    correction=1 if corr is None else int(corr))


@aten("max.dim", "min.dim")
def _max_dim(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    x = ctx.t(a["self"])
    is_max = "max" in str(n.target)
    k, ax = bool(a["keepdim"]), int(a["dim"])
    vals = ctx.emit("reduce_max" if is_max else "reduce_min", [x], axes=(ax,), keepdims=k)
    idx = ctx.emit("argmax" if is_max else "argmin", [x], axis=ax, keepdims=k)
    return vals, idx


@aten("argmax.default", "argmin.default")
def _argmax(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    op = "argmax" if "argmax" in str(n.target) else "argmin"
    if a["dim"] is None:
        flat = ctx.emit("reshape", [x], shape=(-1,))
        r = ctx.emit(op, [flat], axis=0, keepdims=False)
        return ctx.emit("reshape", [r], shape=ctx.out_type(n).shape) if a["keepdim"] else r
    return ctx.emit(op, [x], axis=int(a["dim"]), keepdims=bool(a["keepdim"]))


@aten("cumsum.default")
def _cumsum(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.cast(ctx.t(a["self"]), ctx.out_dtype(n))
    return ctx.emit("cumsum", [x], axis=int(a["dim"]))


@aten("topk.default")
def _topk(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    return ctx.emit("topk", [ctx.t(a["self"])], k=ctx.dim(a["k"]), axis=int(a["dim"]),
                    largest=bool(a["largest"]), sorted=bool(a["sorted"]))


# ---- creation ---------------------------------------------------------------------------------


def _dtype_of(ctx: Ctx, n: fx.Node) -> str:
    return ctx.out_dtype(n).name


@aten("arange.default", "arange.start", "arange.start_step")
def _arange(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    start, end, step = a.get("start", 0), a["end"], a.get("step", 1)
    vals = [ctx.scalar_or_tensor(x) for x in (start, end, step)]
    if all(isinstance(v, (int, sympy.Basic)) and not isinstance(v, bool) and
           (not isinstance(v, sympy.Basic) or v.is_integer) for v in vals) and isinstance(vals[2], int):
        r = ctx.emit("arange", [], start=canon_dim(vals[0]) if not isinstance(vals[0], int) else vals[0],
                     end=canon_dim(vals[1]) if not isinstance(vals[1], int) else vals[1],
                     step=vals[2], dtype=_dtype_of(ctx, n) if not ctx.out_dtype(n).is_float else "i64")
        return ctx.cast(r, ctx.out_dtype(n))
    if all(isinstance(v, (int, float)) for v in vals):
        t = torch.arange(*vals, dtype=ctx.meta(n).dtype)
        return ctx.const(t)
    raise FrontendError(f"{ctx.node_name}: arange with symbolic non-integer bounds")


def _full_like_shape(ctx: Ctx, n: fx.Node, value: Any) -> Value:
    t = ctx.out_type(n)
    if isinstance(value, fx.Node):
        v = ctx.scalar_or_tensor(value)
        base = ctx.scalar(v, t.dtype)
        return ctx.emit("expand", [base], shape=t.shape)
    if isinstance(value, bool):
        value = float(value)
    return ctx.emit("full", [], shape=t.shape, value=float(value), dtype=t.dtype.name)


@aten("full.default", "new_full.default", "full_like.default", "fill.Scalar")
def _full(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _full_like_shape(ctx, n, a.get("fill_value", a.get("value")))


@aten("zeros.default", "new_zeros.default", "zeros_like.default", "empty.memory_format",
      "empty_like.default", "new_empty.default", "empty_permuted.default", "empty_strided.default")
def _zeros(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # Uninitialised memory in torch; zeros are one valid value of it.
    return _full_like_shape(ctx, n, 0.0)


@aten("ones.default", "new_ones.default", "ones_like.default")
def _ones(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _full_like_shape(ctx, n, 1.0)


@aten("scalar_tensor.default")
def _scalar_tensor(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.scalar(ctx.scalar_or_tensor(a["s"]), ctx.out_dtype(n))
