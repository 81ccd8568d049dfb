"""The C table for elementwise ops: each op renders as one C expression.

Values are computed in a *compute type*: ``float`` for f32/f16/bf16, ``double`` for f64, the
container's own C type for integers (so integer arithmetic wraps like the reference), and
``int`` (0/1) for bool. Loads and stores convert between storage and compute types
(``codegen/c_types.py``).
"""
from __future__ import annotations

import math
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


def _int_lit(v: int, d: dt.DType) -> str:
    """An integer literal of ``d``'s compute type; the most negative int64 has no literal."""
    lo, _ = d.int_range()
    if d.bits == 64 and v == lo:
        return "(-INT64_C(9223372036854775807) - 1)"
    return f"INT64_C({v})" if d.bits == 64 else str(v)


def _clip(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    lo, hi = n.attrs.get("min"), n.attrs.get("max")
    d = n.outputs[0].dtype
    if d.is_int:
        # As the reference: integer bounds are ceil(min) / floor(max), limited to the type's
        # range (a bound past the range would not even be a valid C literal).
        tlo, thi = d.int_range()
        lo = None if lo is None else _int_lit(int(min(max(math.ceil(lo), tlo), thi)), d)
        hi = None if hi is None else _int_lit(int(min(max(math.floor(hi), tlo), thi)), d)
    else:
        lo = None if lo is None else _lit(lo, ct)
        hi = None if hi is None else _lit(hi, ct)
    # Comparisons are false for NaN, so NaN passes through both bounds.
    if lo is not None and hi is not None and not d.is_int and n.attrs["min"] <= n.attrs["max"]:
        # one helper call, not the nested conditional: gcc 12's loop vectoriser crashes
        # (internal compiler error in const_vector_mask_from_tree) on the nested form under
        # masked AVX2 stores; with lo <= hi both give the same value, NaN included
        return f"sf_clamp_{ct}({x}, {lo}, {hi})"
    if lo is not None:
        x = f"({x} < {lo} ? ({ct}){lo} : {x})"
    if hi is not None:
        x = f"({x} > {hi} ? ({ct}){hi} : {x})"
    return x


def _div(a: Sequence[str], n: Node, ct: str) -> str:
    if n.outputs[0].dtype.is_float:
        return f"({a[0]} / {a[1]})"
    return f"sf_idiv({a[0]}, {a[1]})"  # truncates, as the reference does; guards b = 0 and -1


def _mod(a: Sequence[str], n: Node, ct: str) -> str:
    if n.outputs[0].dtype.is_float:
        if n.attrs["fmod"]:
            return f"{_f('fmod', ct)}({a[0]}, {a[1]})"
        return f"sf_pymod_{ct}({a[0]}, {a[1]})"
    if n.attrs["fmod"]:
        return f"sf_irem({a[0]}, {a[1]})"
    return f"sf_imod({a[0]}, {a[1]})"


def _cast(a: Sequence[str], n: Node, ct: str) -> str:
    src, dst = n.inputs[0].dtype, n.outputs[0].dtype
    if dst is dt.boolean:
        return f"({a[0]} != 0)"
    if dst.is_int and src.is_float:
        return f"({compute_type(dst)})(int64_t)({a[0]})" if dst.bits < 64 else f"(int64_t)({a[0]})"
    # f16/bf16 are computed in float: the cast must round here, not only at a final store, or
    # a fused consumer would see the unrounded value. From f64, go through float as torch does.
    if dst.name == "bf16":
        return f"sf_bf16_to_f(sf_f_to_bf16((float)({a[0]})))"
    if dst.name == "f16":
        return f"(float)(_Float16)(float)({a[0]})"
    return f"({compute_type(dst)})({a[0]})"


def _sign(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    if n.outputs[0].dtype.is_float:
        # sign(+-0) = +0 and NaN stays NaN (x == x is false only for NaN).
        return f"({x} > 0 ? ({ct})1 : ({x} < 0 ? ({ct})-1 : ({x} == {x} ? ({ct})0 : {x})))"
    return f"({x} > 0 ? 1 : ({x} < 0 ? -1 : 0))"


def _unsigned(d: dt.DType) -> str | None:
    """For signed types of 32 bits and more, the unsigned type their arithmetic wraps in:
    signed overflow is undefined in C (narrower types are promoted to int and cannot overflow)."""
    return {"i32": "uint32_t", "i64": "uint64_t"}.get(d.name)


def _arith(op: str) -> Expr:
    def expr(a: Sequence[str], n: Node, ct: str) -> str:
        u = _unsigned(n.outputs[0].dtype)
        if u is not None:
            return f"({ct})(({u}){a[0]} {op} ({u}){a[1]})"
        return _wrap(f"({a[0]} {op} {a[1]})", n)
    return expr


def _neg(a: Sequence[str], n: Node, ct: str) -> str:
    u = _unsigned(n.outputs[0].dtype)
    if u is not None:
        return f"({ct})(({u})0 - ({u}){a[0]})"
    return _wrap(f"(-{a[0]})", n)


def _abs(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    if n.outputs[0].dtype.is_float:
        return f"{_f('fabs', ct)}({x})"
    return f"({x} < 0 ? {_neg(a, n, ct)} : {x})"


def _relu(a: Sequence[str], n: Node, ct: str) -> str:
    # "x < 0 ? 0 : x" keeps NaN and -0 as the reference (clamp_min) does.
    return f"({a[0]} < 0 ? ({ct})0 : {a[0]})"


def _bitshift(a: Sequence[str], n: Node, ct: str) -> str:
    """ONNX BitShift: counts outside [0, bits) shift every bit out (C leaves them undefined)."""
    x, y = a
    d = n.outputs[0].dtype
    bits = d.bits
    u = {"i64": "uint64_t", "i32": "uint32_t", "i16": "uint16_t", "i8": "uint8_t",
         "u8": "uint8_t"}[d.name]
    ok = f"({y} >= 0 && {y} < {bits})"
    if n.attrs["direction"] == "left":
        # Shift the unsigned bits: a left shift of a negative signed value is undefined.
        return f"({ok} ? ({ct})((uint64_t)({u}){x} << {y}) : ({ct})0)"
    if d.is_signed:
        return f"({ct})({x} >> ({ok} ? {y} : {bits - 1}))"   # gcc: arithmetic shift
    return f"({ok} ? ({ct})({x} >> {y}) : ({ct})0)"


def _wrap(expr: str, n: Node) -> str:
    """Integer results are cast back to the container type so arithmetic wraps."""
    d = n.outputs[0].dtype
    if d.is_int and d.bits < 64:
        return f"({compute_type(d)})({expr})"
    return expr


EXPR: dict[str, Expr] = {
    "identity": lambda a, n, ct: a[0],
    "neg": _neg,
    "abs": _abs,
    "relu": _relu,
    "exp": lambda a, n, ct: f"sf_exp_float({a[0]})" if ct == "float" else f"exp({a[0]})", "log": _unary_float("log"), "sqrt": _unary_float("sqrt"),
    "sin": _unary_float("sin"), "cos": _unary_float("cos"), "tanh": lambda a, n, ct: f"sf_tanh_float({a[0]})" if ct == "float" else f"tanh({a[0]})",
    "erf": lambda a, n, ct: f"sf_erf_float({a[0]})" if ct == "float" else f"erf({a[0]})", "floor": _unary_float("floor"), "ceil": _unary_float("ceil"),
    "round": _unary_float("nearbyint"),   # the default rounding mode: ties to even
    "acos": _unary_float("acos"), "asin": _unary_float("asin"), "atan": _unary_float("atan"),
    "acosh": _unary_float("acosh"), "asinh": _unary_float("asinh"),
    "atanh": _unary_float("atanh"), "sinh": _unary_float("sinh"), "cosh": _unary_float("cosh"),
    "tan": _unary_float("tan"),
    "rsqrt": lambda a, n, ct: f"(({ct})1 / {_f('sqrt', ct)}({a[0]}))",
    "reciprocal": lambda a, n, ct: f"(({ct})1 / {a[0]})",
    "sigmoid": lambda a, n, ct: f"sf_sigmoid_{ct}({a[0]})",
    "silu": lambda a, n, ct: f"sf_silu_{ct}({a[0]})",
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
    # x * relu6(x + 3) / 6, in the reference's order of operations
    "hardswish": lambda a, n, ct: f"({a[0]} * sf_clamp_{ct}({a[0]} + 3, 0, 6) / 6)",
    "softplus": lambda a, n, ct: f"sf_softplus_{ct}({a[0]})",
    "mish": lambda a, n, ct: f"({a[0]} * {_f('tanh', ct)}(sf_softplus_{ct}({a[0]})))",
    "add": _arith("+"),
    "sub": _arith("-"),
    "mul": _arith("*"),
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
    "bitshift": _bitshift,
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
