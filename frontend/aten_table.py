"""The ATen -> IR op table: the registry :data:`ATEN` and the conversion context :class:`Ctx`.

The handlers live by family in ``aten_elementwise.py``, ``aten_reduce.py`` (reductions and
tensor creation), ``aten_shape.py`` and ``aten_nn.py``; each registers through :func:`aten`.

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
        self.guards: list[Dim] = []     # size expressions the conversion assumed >= 0

    # ---- reading arguments --------------------------------------------------------------
    def t(self, a: Any) -> Value:
        """The Value of a tensor argument."""
        v = self.env[a] if isinstance(a, fx.Node) else None
        if v is None and isinstance(a, fx.Node) and a in self.env:
            raise FrontendError(f"{self.node_name}: reads {a.name}, an output the import does not "
                                f"produce (such as max_pool's indices or batch norm's saved statistics)")
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
            if isinstance(v, int) and v < 0 or isinstance(v, sympy.Basic) and v.is_negative:
                return v   # an index from the end, not a size (slice and select take one)
            return canon_dim(v)
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
        if isinstance(x, sympy.Basic) and x.free_symbols and x.is_integer is not True:
            # a float expression of dims (x.shape[0] / 2, d ** 0.5): arange only makes integers
            key = (x, dtype.name)
            if key not in self._dim_values:
                self._dim_values[key] = self.cast(self._float_expr(x), dtype)
            return self._dim_values[key]
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

    def _float_expr(self, x: sympy.Expr) -> Value:
        """A 0-d f64 Value computing the symbolic expression ``x`` at run time from its integer
        parts (sums, products and powers of them)."""
        if x.is_Number or not x.free_symbols:
            return self.scalar(float(x), dt.f64)
        if x.is_integer:
            return self.scalar(x, dt.f64)
        if x.is_Add or x.is_Mul:
            parts = [self._float_expr(a) for a in x.args]
            out = parts[0]
            for p in parts[1:]:
                out = self.emit("add" if x.is_Add else "mul", [out, p])
            return out
        if x.is_Pow:
            return self.emit("pow", [self._float_expr(x.args[0]), self._float_expr(x.args[1])])
        # torch's own sympy functions for python-float arithmetic on SymInts
        fn = type(x).__name__
        if fn in ("ToFloat", "Identity") and len(x.args) == 1:
            return self._float_expr(x.args[0])
        if fn in ("FloatPow", "PowByNatural") and len(x.args) == 2:
            return self.emit("pow", [self._float_expr(x.args[0]), self._float_expr(x.args[1])])
        if fn in ("FloatTrueDiv", "IntTrueDiv") and len(x.args) == 2:
            return self.emit("div", [self._float_expr(x.args[0]), self._float_expr(x.args[1])])
        raise FrontendError(f"{self.node_name}: the expression {x} of dynamic dims has no IR form")

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


def result_dtype(ctx: Ctx, operands: Sequence[Any]) -> dt.DType:
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
