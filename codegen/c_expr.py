"""The C table for elementwise ops: each op renders as one C expression.

Values are computed in a *compute type*: ``float`` for f32/f16/bf16, ``double`` for f64, the
container's own C type for integers (so integer arithmetic wraps like the reference), and
``int`` (0/1) for bool. Loads and stores convert between storage and compute types
(``codegen/c_types.py``).
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..ir import dtypes as dt
from ..ir.graph import Node

Expr = Callable[[Sequence[str], Node, str], str]   # (args, node, compute C type) -> expression


def _f(name: str, ct: str) -> str:
    """The libm function for a compute type: ``expf`` for float, ``exp`` for double."""
    return name + ("f" if ct == "float" else "")


def _lit(x: float, ct: str) -> str:
    if x != x:
        return "NAN"
    if x in (float("inf"), float("-inf")):
        return "INFINITY" if x > 0 else "(-INFINITY)"
    s = repr(float(x))
    return s + "f" if ct == "float" else s


def _unary_float(fn: str) -> Expr:
    return lambda a, n, ct: f"{_f(fn, ct)}({a[0]})"


def _gelu(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    if n.attrs["approximate"] == "tanh":
        return f"sf_gelu_tanh_{ct}({x})"
    return f"sf_gelu_{ct}({x})"


def _clip(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    lo, hi = n.attrs.get("min"), n.attrs.get("max")
    is_int = n.outputs[0].dtype.is_int
    if lo is not None:
        v = str(int(-(-lo // 1))) if is_int else _lit(lo, ct)
        x = f"({x} < {v} ? {v} : {x})"
    if hi is not None:
        v = str(int(hi // 1)) if is_int else _lit(hi, ct)
        x = f"({x} > {v} ? {v} : {x})"
    return x


def _div(a: Sequence[str], n: Node, ct: str) -> str:
    return f"({a[0]} / {a[1]})"  # C integer division truncates, as the reference does


def _mod(a: Sequence[str], n: Node, ct: str) -> str:
    if n.outputs[0].dtype.is_float:
        if n.attrs["fmod"]:
            return f"{_f('fmod', ct)}({a[0]}, {a[1]})"
        return f"sf_pymod_{ct}({a[0]}, {a[1]})"
    if n.attrs["fmod"]:
        return f"({a[0]} % {a[1]})"
    return f"sf_imod({a[0]}, {a[1]})"


def _cast(a: Sequence[str], n: Node, ct: str) -> str:
    src, dst = n.inputs[0].dtype, n.outputs[0].dtype
    if dst is dt.boolean:
        return f"({a[0]} != 0)"
    if dst.is_int and src.is_float:
        return f"({compute_type(dst)})(int64_t)({a[0]})" if dst.bits < 64 else f"(int64_t)({a[0]})"
    return f"({compute_type(dst)})({a[0]})"


def _sign(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    if n.outputs[0].dtype.is_float:
        return f"({x} > 0 ? ({ct})1 : ({x} < 0 ? ({ct})-1 : {x}))"  # keeps NaN and -0
    return f"({x} > 0 ? 1 : ({x} < 0 ? -1 : 0))"


def _wrap(expr: str, n: Node) -> str:
    """Integer results are cast back to the container type so arithmetic wraps."""
    d = n.outputs[0].dtype
    if d.is_int and d.bits < 64:
        return f"({compute_type(d)})({expr})"
    return expr


EXPR: dict[str, Expr] = {
    "identity": lambda a, n, ct: a[0],
    "neg": lambda a, n, ct: _wrap(f"(-{a[0]})", n),
    "abs": lambda a, n, ct: (f"{_f('fabs', ct)}({a[0]})" if n.outputs[0].dtype.is_float
                             else _wrap(f"({a[0]} < 0 ? -{a[0]} : {a[0]})", n)),
    "relu": lambda a, n, ct: f"({a[0]} > 0 ? {a[0]} : 0)",
    "exp": _unary_float("exp"), "log": _unary_float("log"), "sqrt": _unary_float("sqrt"),
    "sin": _unary_float("sin"), "cos": _unary_float("cos"), "tanh": _unary_float("tanh"),
    "erf": _unary_float("erf"), "floor": _unary_float("floor"), "ceil": _unary_float("ceil"),
    "round": _unary_float("nearbyint"),
    "rsqrt": lambda a, n, ct: f"(({ct})1 / {_f('sqrt', ct)}({a[0]}))",
    "reciprocal": lambda a, n, ct: f"(({ct})1 / {a[0]})",
    "sigmoid": lambda a, n, ct: f"sf_sigmoid_{ct}({a[0]})",
    "silu": lambda a, n, ct: f"({a[0]} * sf_sigmoid_{ct}({a[0]}))",
    "gelu": _gelu,
    "sign": _sign,
    "logical_not": lambda a, n, ct: f"(!{a[0]})",
    "isnan": lambda a, n, ct: f"(isnan({a[0]}) != 0)",
    "isinf": lambda a, n, ct: f"(isinf({a[0]}) != 0)",
    "clip": _clip,
    "leaky_relu": lambda a, n, ct: f"({a[0]} >= 0 ? {a[0]} : {a[0]} * {_lit(n.attrs['alpha'], ct)})",
    "elu": lambda a, n, ct: (f"({a[0]} > 0 ? {a[0]} : {_lit(n.attrs['alpha'], ct)} * "
                             f"{_f('expm1', ct)}({a[0]}))"),
    "hardsigmoid": lambda a, n, ct: (f"sf_clamp01_{ct}({_lit(n.attrs['alpha'], ct)} * {a[0]} + "
                                     f"{_lit(n.attrs['beta'], ct)})"),
    "hardswish": lambda a, n, ct: f"({a[0]} * sf_clamp01_{ct}({a[0]} / 6 + ({ct})0.5))",
    "softplus": lambda a, n, ct: f"sf_softplus_{ct}({a[0]})",
    "mish": lambda a, n, ct: f"({a[0]} * {_f('tanh', ct)}(sf_softplus_{ct}({a[0]})))",
    "add": lambda a, n, ct: _wrap(f"({a[0]} + {a[1]})", n),
    "sub": lambda a, n, ct: _wrap(f"({a[0]} - {a[1]})", n),
    "mul": lambda a, n, ct: _wrap(f"({a[0]} * {a[1]})", n),
    "div": lambda a, n, ct: _wrap(_div(a, n, ct), n),
    "pow": lambda a, n, ct: (f"{_f('pow', ct)}({a[0]}, {a[1]})" if n.outputs[0].dtype.is_float
                             else _wrap(f"sf_ipow({a[0]}, {a[1]})", n)),
    "maximum": lambda a, n, ct: (f"sf_max_{ct}({a[0]}, {a[1]})" if n.outputs[0].dtype.is_float
                                 else f"({a[0]} > {a[1]} ? {a[0]} : {a[1]})"),
    "minimum": lambda a, n, ct: (f"sf_min_{ct}({a[0]}, {a[1]})" if n.outputs[0].dtype.is_float
                                 else f"({a[0]} < {a[1]} ? {a[0]} : {a[1]})"),
    "mod": lambda a, n, ct: _wrap(_mod(a, n, ct), n),
    "eq": lambda a, n, ct: f"({a[0]} == {a[1]})", "ne": lambda a, n, ct: f"({a[0]} != {a[1]})",
    "lt": lambda a, n, ct: f"({a[0]} < {a[1]})", "le": lambda a, n, ct: f"({a[0]} <= {a[1]})",
    "gt": lambda a, n, ct: f"({a[0]} > {a[1]})", "ge": lambda a, n, ct: f"({a[0]} >= {a[1]})",
    "logical_and": lambda a, n, ct: f"({a[0]} && {a[1]})",
    "logical_or": lambda a, n, ct: f"({a[0]} || {a[1]})",
    "logical_xor": lambda a, n, ct: f"(!{a[0]} != !{a[1]})",
    "bitwise_and": lambda a, n, ct: _wrap(f"({a[0]} & {a[1]})", n),
    "bitwise_or": lambda a, n, ct: _wrap(f"({a[0]} | {a[1]})", n),
    "bitwise_xor": lambda a, n, ct: _wrap(f"({a[0]} ^ {a[1]})", n),
    "where": lambda a, n, ct: f"({a[0]} ? {a[1]} : {a[2]})",
    "cast": _cast,
}

# dtypes a fused C kernel loads, computes and stores directly; others (f8, sub-byte) run on
# the reference path.
C_DTYPES = frozenset({"f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "bool"})


def compute_type(d: dt.DType) -> str:
    """The C type values of ``d`` are computed in."""
    if d.is_float:
        return "double" if d.name == "f64" else "float"
    if d.name == "bool":
        return "int"
    return {"i64": "int64_t", "i32": "int32_t", "i16": "int16_t", "i8": "int8_t",
            "u8": "uint8_t"}[d.name]


def node_renderable(n: Node) -> bool:
    """Whether the fused C kernel can evaluate this elementwise node."""
    if n.op not in EXPR:
        return False
    types = [v.dtype for v in n.inputs if v is not None] + [o.dtype for o in n.outputs]
    if not all(d.name in C_DTYPES for d in types):
        return False
    if n.op == "cast" and n.attrs.get("from_dtype") not in (None, n.inputs[0].dtype.name):
        return False
    return True
