"""The Triton table for elementwise ops: each op renders as one Triton expression.

Values are computed in a *compute type*: ``tl.float32`` for f32/f16/bf16, ``tl.float64`` for
f64, the container's own type for integers (Triton does not promote narrow integers, so
arithmetic wraps like the reference) and ``tl.int1`` for bool. Every node's value is
converted to its compute type after the expression (``.to`` is free when the type is right).

Only core ``tl`` builtins and the ``@triton.jit`` helpers of :data:`PRELUDE` are called: the
``tl.standard`` functions (``tl.sum``, ``tl.max``, ``tl.zeros``, ``tl.sigmoid``, ...) are jit
functions decorated when triton is imported, so calling them breaks the interpreter when triton
was imported without ``TRITON_INTERPRET=1`` (row kernels only *pass* tl.standard's combine
functions to ``tl.reduce``, which the interpreter recognises without calling them); and
``libdevice`` has no interpreter implementation.
Functions libdevice would provide (tanh, expm1, log1p, atan, ...) are formulated from
exp/log/sqrt here, accurately in f32 (the inverse trigonometric ones use an f32 polynomial and
are not rendered for f64, see :func:`node_renderable`).

Integer division and remainder by zero are not checked here: the C target and the interpreter
raise an ExecutionError, while a Triton kernel gives whatever the device computes (0 under the
interpreter). A check would need a device-to-host read after every launch.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from ..ir import dtypes as dt
from ..ir.graph import Node

Expr = Callable[[Sequence[str], Node, str], str]   # (args, node, compute type) -> expression

COMPUTE: dict[str, str] = {
    "f64": "tl.float64", "f32": "tl.float32", "f16": "tl.float32", "bf16": "tl.float32",
    "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8", "u8": "tl.uint8",
    "bool": "tl.int1",
}
STORAGE: dict[str, str] = dict(COMPUTE, f16="tl.float16", bf16="tl.bfloat16")
# Ops not rendered for f64, which runs them on the reference path: the inverse trigonometric
# functions are an f32 polynomial here, and NVPTX lowers an f64 remainder (frem) inexactly.
F32_ONLY = frozenset({"atan", "asin", "acos", "mod"})


def compute_type(d: dt.DType) -> str:
    """The Triton type values of ``d`` are computed in."""
    return COMPUTE[d.name]


def storage_type(d: dt.DType) -> str:
    return STORAGE[d.name]


def to_storage(d: dt.DType, expr: str) -> str:
    """``expr`` (compute type) converted to ``d``'s storage type. bf16 rounds to nearest even
    explicitly: the interpreter's f32 -> bf16 conversion truncates."""
    if d.name == "bf16":
        return f"_sf_round_bf16({expr}).to(tl.bfloat16)"
    return f"({expr}).to({STORAGE[d.name]})"


def lit(x: float) -> str:
    if x != x:
        return 'float("nan")'
    if x in (float("inf"), float("-inf")):
        return 'float("inf")' if x > 0 else 'float("-inf")'
    return repr(float(x))


def _int_lit(v: int, d: dt.DType) -> str:
    lo, _ = d.int_range()
    if d.bits == 64 and v == lo:
        return "(-9223372036854775807 - 1)"
    return str(v)


def _clip(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    lo, hi = n.attrs.get("min"), n.attrs.get("max")
    d = n.outputs[0].dtype
    if d.is_int:
        tlo, thi = d.int_range()
        lo = None if lo is None else _int_lit(int(min(max(math.ceil(lo), tlo), thi)), d)
        hi = None if hi is None else _int_lit(int(min(max(math.floor(hi), tlo), thi)), d)
    else:
        lo = None if lo is None else lit(lo)
        hi = None if hi is None else lit(hi)
    # comparisons are false for NaN, so NaN passes through both bounds
    if lo is not None:
        x = f"tl.where({x} < {lo}, {lo}, {x})"
    if hi is not None:
        x = f"tl.where({x} > {hi}, {hi}, {x})"
    return x


def _mod(a: Sequence[str], n: Node, ct: str) -> str:
    x, y = a
    # Triton's % is C's (the sign of the dividend) for floats and integers alike
    if n.attrs["fmod"]:
        return f"({x} % {y})"
    return f"_sf_pymod({x}, {y})"


def _cast(a: Sequence[str], n: Node, ct: str) -> str:
    src, dst = n.inputs[0].dtype, n.outputs[0].dtype
    x = a[0]
    if dst is dt.boolean:
        return f"({x} != 0)"
    if dst.is_int and src.is_float:
        # through int64 so that the narrowing wraps as C's (int8_t)(int64_t)x does
        return f"{x}.to(tl.int64).to({COMPUTE[dst.name]})"
    # f16/bf16 are computed in f32: the cast rounds here so that fused consumers see the rounded
    # value. From f64 (and integers) go through f32 as torch does.
    if dst.name == "bf16":
        return f"_sf_round_bf16({x}.to(tl.float32))"
    if dst.name == "f16":
        return f"{x}.to(tl.float32).to(tl.float16).to(tl.float32)"
    return f"{x}.to({COMPUTE[dst.name]})"


def _sign(a: Sequence[str], n: Node, ct: str) -> str:
    x = a[0]
    if n.outputs[0].dtype.is_float:
        return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, tl.where({x} == {x}, 0.0, {x})))"
    return f"tl.where({x} > 0, 1, tl.where({x} < 0, -1, 0))"


def _bitshift(a: Sequence[str], n: Node, ct: str) -> str:
    """ONNX BitShift: counts outside [0, bits) shift every bit out (hardware masks them)."""
    x, y = a
    d = n.outputs[0].dtype
    bits = d.bits
    ok = f"(({y} >= 0) & ({y} < {bits}))"
    if n.attrs["direction"] == "left":
        return f"tl.where({ok}, {x} << tl.where({ok}, {y}, 0), 0)"
    if d.is_signed:   # arithmetic shift: an out-of-range count leaves the sign
        return f"({x} >> tl.where({ok}, {y}, {bits - 1}))"
    return f"tl.where({ok}, {x} >> tl.where({ok}, {y}, 0), 0)"


def _small_pow(a: Sequence[str], n: Node) -> str | None:
    """x ** 2 and x ** 3 by a constant exponent (gelu_new, decomposed norms) as products:
    exact where exp2(y * log2|x|) is not, and far cheaper."""
    e = n.inputs[1]
    if not e.is_const or e.const.numel() != 1 or e.type.shape != ():
        return None
    v = float(e.const)
    if v == 2.0:
        return f"({a[0]} * {a[0]})"
    if v == 3.0:
        return f"({a[0]} * {a[0]} * {a[0]})"
    return None


def _float_or_int(f: str, i: str) -> Expr:
    return lambda a, n, ct: (f if n.outputs[0].dtype.is_float else i).format(*a)


def _call(fn: str) -> Expr:
    return lambda a, n, ct: f"{fn}({', '.join(a)})"


EXPR: dict[str, Expr] = {
    "identity": lambda a, n, ct: a[0],
    "neg": lambda a, n, ct: f"(-{a[0]})",
    "abs": _call("tl.abs"),
    "relu": lambda a, n, ct: f"tl.where({a[0]} < 0, 0, {a[0]})",   # keeps NaN and -0
    "exp": _call("tl.exp"), "log": _call("tl.log"), "sqrt": _call("_sf_sqrt"),
    "sin": _call("tl.sin"), "cos": _call("tl.cos"), "tan": lambda a, n, ct: f"(tl.sin({a[0]}) / tl.cos({a[0]}))",
    "tanh": _call("_sf_tanh"), "erf": _call("tl.math.erf"),
    "floor": _call("tl.floor"), "ceil": _call("tl.ceil"), "round": _call("_sf_round"),
    "atan": _call("_sf_atan"), "asin": _call("_sf_asin"), "acos": _call("_sf_acos"),
    "sinh": _call("_sf_sinh"), "cosh": _call("_sf_cosh"), "asinh": _call("_sf_asinh"),
    "acosh": _call("_sf_acosh"), "atanh": _call("_sf_atanh"),
    "rsqrt": lambda a, n, ct: f"(1.0 / _sf_sqrt({a[0]}))",
    "reciprocal": lambda a, n, ct: f"(1.0 / {a[0]})",
    "sigmoid": lambda a, n, ct: f"(1.0 / (1.0 + tl.exp(-{a[0]})))",
    "silu": lambda a, n, ct: f"({a[0]} * (1.0 / (1.0 + tl.exp(-{a[0]}))))",
    "gelu": lambda a, n, ct: (f"_sf_gelu_tanh({a[0]})" if n.attrs["approximate"] == "tanh"
                              else f"(0.5 * {a[0]} * (1.0 + tl.math.erf({a[0]} * 0.7071067811865476)))"),
    "sign": _sign,
    "logical_not": lambda a, n, ct: f"({a[0]} == 0)",
    "isnan": lambda a, n, ct: f"({a[0]} != {a[0]})",
    "isinf": lambda a, n, ct: f'(tl.abs({a[0]}) == float("inf"))',
    "clip": _clip,
    "leaky_relu": lambda a, n, ct: f"tl.where({a[0]} >= 0, {a[0]}, {a[0]} * {lit(n.attrs['alpha'])})",
    "elu": lambda a, n, ct: f"tl.where({a[0]} > 0, {a[0]}, {lit(n.attrs['alpha'])} * _sf_expm1({a[0]}))",
    "hardsigmoid": lambda a, n, ct: f"_sf_clamp({lit(n.attrs['alpha'])} * {a[0]} + {lit(n.attrs['beta'])}, 0.0, 1.0)",
    # x * relu6(x + 3) / 6, in the reference's order of operations
    "hardswish": lambda a, n, ct: f"({a[0]} * _sf_clamp({a[0]} + 3.0, 0.0, 6.0) / 6.0)",
    "softplus": _call("_sf_softplus"),
    "mish": lambda a, n, ct: f"({a[0]} * _sf_tanh(_sf_softplus({a[0]})))",
    "add": lambda a, n, ct: f"({a[0]} + {a[1]})",
    "sub": lambda a, n, ct: f"({a[0]} - {a[1]})",
    "mul": lambda a, n, ct: f"({a[0]} * {a[1]})",
    # Triton's // on integers truncates toward zero (C), as the reference does
    "div": _float_or_int("({0} / {1})", "({0} // {1})"),
    "pow": lambda a, n, ct: (_small_pow(a, n) or f"_sf_pow({a[0]}, {a[1]})" if n.outputs[0].dtype.is_float
                             else f"_sf_ipow({a[0]}, {a[1]}, {n.outputs[0].dtype.bits})"
                             if n.outputs[0].dtype.is_signed
                             else f"_sf_upow({a[0]}, {a[1]}, {n.outputs[0].dtype.bits})"),
    "maximum": _float_or_int("_sf_max({0}, {1})", "tl.where({0} > {1}, {0}, {1})"),
    "minimum": _float_or_int("_sf_min({0}, {1})", "tl.where({0} < {1}, {0}, {1})"),
    "mod": _mod,
    "eq": lambda a, n, ct: f"({a[0]} == {a[1]})", "ne": lambda a, n, ct: f"({a[0]} != {a[1]})",
    "lt": lambda a, n, ct: f"({a[0]} < {a[1]})", "le": lambda a, n, ct: f"({a[0]} <= {a[1]})",
    "gt": lambda a, n, ct: f"({a[0]} > {a[1]})", "ge": lambda a, n, ct: f"({a[0]} >= {a[1]})",
    "logical_and": lambda a, n, ct: f"({a[0]} & {a[1]})",
    "logical_or": lambda a, n, ct: f"({a[0]} | {a[1]})",
    "logical_xor": lambda a, n, ct: f"({a[0]} ^ {a[1]})",
    "bitwise_and": lambda a, n, ct: f"({a[0]} & {a[1]})",
    "bitwise_or": lambda a, n, ct: f"({a[0]} | {a[1]})",
    "bitwise_xor": lambda a, n, ct: f"({a[0]} ^ {a[1]})",
    "bitshift": _bitshift,
    "where": lambda a, n, ct: f"tl.where({a[0]}, {a[1]}, {a[2]})",
    "cast": _cast,
}

TRITON_DTYPES = frozenset(COMPUTE)


def node_renderable(n: Node) -> bool:
    """Whether a fused Triton kernel can evaluate this elementwise node."""
    if n.op not in EXPR:
        return False
    types = [v.dtype for v in n.inputs if v is not None] + [o.dtype for o in n.outputs]
    if not all(d.name in TRITON_DTYPES for d in types):
        return False
    if n.op == "cast" and n.attrs.get("from_dtype") not in (None, n.inputs[0].dtype.name):
        return False
    if n.op in F32_ONLY and any(d.name == "f64" for d in types):
        return False
    return True


# Helpers shared by every kernel module. Written once, in a fixed order, so that a kernel's
# source depends only on the kernel. Literals are weakly typed in Triton: they take the type of
# the tensor they meet, so each helper serves f32 and f64. Two-operand helpers broadcast their
# operands first: the interpreter splats a scalar comparison result as a float array, which
# `&` and `|` then reject (see also the emitter's scalar booleans).
PRELUDE = r'''
@triton.jit
def _sf_sqrt(x):
    # correctly rounded (tl.sqrt is an approximation for f32 on GPUs; sqrt_rn takes only f32)
    if x.dtype == tl.float64:
        r = tl.sqrt(x)
    else:
        r = tl.sqrt_rn(x)
    return r


@triton.jit
def _sf_mul(a, b):
    return a * b


@triton.jit
def _sf_round_bf16(x):
    # f32 -> the nearest bf16 value (ties to even), kept in f32; NaN stays a quiet NaN
    u = x.to(tl.uint32, bitcast=True)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    r = tl.where(x != x, u | 0x00400000, r)
    return r.to(tl.float32, bitcast=True)


@triton.jit
def _sf_max(a, b):
    a, b = tl.broadcast(a, b)
    return tl.where((a != a) | (b != b), a + b, tl.where(a < b, b, a))


@triton.jit
def _sf_min(a, b):
    a, b = tl.broadcast(a, b)
    return tl.where((a != a) | (b != b), a + b, tl.where(b < a, b, a))


@triton.jit
def _sf_clamp(x, lo, hi):
    return tl.where(x < lo, lo, tl.where(x > hi, hi, x))


@triton.jit
def _sf_pymod(a, b):
    a, b = tl.broadcast(a, b)
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)


@triton.jit
def _sf_expm1(x):
    # Kahan: (u - 1) * x / log(u) cancels the rounding error of u = exp(x)
    u = tl.exp(x)
    um1 = u - 1.0
    r = tl.where(um1 == -1.0, -1.0, um1 * (x / tl.log(u)))
    r = tl.where(u == 1.0, x, r)
    return tl.where(u == float("inf"), u, r)


@triton.jit
def _sf_log1p(x):
    u = 1.0 + x
    r = tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))
    return tl.where(u == float("inf"), u, r)


@triton.jit
def _sf_tanh(x):
    a = tl.abs(x)
    e = _sf_expm1(-2.0 * a)
    t = -e / (e + 2.0)
    t = tl.where(x < 0, -t, t)
    return tl.where(a == 0, x, t)


@triton.jit
def _sf_gelu_tanh(x):
    return 0.5 * x * (1.0 + _sf_tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@triton.jit
def _sf_softplus(x):
    return tl.where(x > 20.0, x, _sf_log1p(tl.exp(x)))


@triton.jit
def _sf_round(x):
    # ties to even; x - floor(x) is exact, and |x| >= 2^23 is already an integer
    f = tl.floor(x)
    d = x - f
    h = f * 0.5
    even = tl.floor(h) == h
    r = tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, tl.where(even, f, f + 1.0)))
    return tl.where(r == 0, x * 0.0, r)


@triton.jit
def _sf_atan(x):
    # Cephes atanf: reduction to |t| <= tan(pi/8) and a degree-9 odd polynomial (f32)
    a = tl.abs(x)
    big = a > 2.414213562373095
    mid = a > 0.4142135623730950
    t = tl.where(big, -1.0 / a, tl.where(mid, (a - 1.0) / (a + 1.0), a))
    base = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z = t * t
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z
         - 3.33329491539e-1) * z * t + t
    r = base + p
    r = tl.where(x < 0, -r, r)
    return tl.where((a == 0) | (x != x), x, r)


@triton.jit
def _sf_asin(x):
    return _sf_atan(x / _sf_sqrt((1.0 - x) * (1.0 + x)))


@triton.jit
def _sf_acos(x):
    return 2.0 * _sf_atan(_sf_sqrt((1.0 - x) / (1.0 + x)))


@triton.jit
def _sf_sinh(x):
    a = tl.abs(x)
    e = _sf_expm1(a)
    s = tl.where(e == float("inf"), e, 0.5 * (e + e / (e + 1.0)))
    s = tl.where(x < 0, -s, s)
    return tl.where(a == 0, x, s)


@triton.jit
def _sf_cosh(x):
    a = tl.abs(x)
    return 0.5 * (tl.exp(a) + tl.exp(-a))


@triton.jit
def _sf_asinh(x):
    a = tl.abs(x)
    s = tl.where(a > 268435456.0, tl.log(a) + 0.6931471805599453,
                 _sf_log1p(a + a * a / (1.0 + _sf_sqrt(1.0 + a * a))))
    s = tl.where(x < 0, -s, s)
    return tl.where(a == 0, x, s)


@triton.jit
def _sf_acosh(x):
    t = x - 1.0
    return tl.where(x > 268435456.0, tl.log(x) + 0.6931471805599453,
                    _sf_log1p(t + _sf_sqrt(t * (t + 2.0))))


@triton.jit
def _sf_atanh(x):
    a = tl.abs(x)
    s = 0.5 * _sf_log1p(2.0 * a / (1.0 - a))
    s = tl.where(x < 0, -s, s)
    return tl.where(a == 0, x, s)


@triton.jit
def _sf_pow(x, y):
    x, y = tl.broadcast(x, y)
    a = tl.abs(x)
    r = tl.exp2(y * tl.log2(a))
    yi = tl.floor(y) == y
    h = y * 0.5
    odd = yi & (tl.floor(h) != h)
    r = tl.where(x < 0, tl.where(yi, tl.where(odd, -r, r), float("nan")), r)
    # -0 and -inf keep the sign for odd integer exponents; any power of -inf is infinite or 0
    r = tl.where((x == 0) & odd & (1.0 / x < 0), -r, r)
    ninf = tl.where(y > 0, float("inf"), 0.0)
    r = tl.where(x == float("-inf"), tl.where(odd, -ninf, ninf), r)
    r = tl.where((a == 1.0) & (tl.abs(y) == float("inf")), 1.0, r)
    return tl.where((y == 0) | (x == 1.0), 1.0, r)


@triton.jit
def _sf_ipow(a, e, BITS: tl.constexpr):
    a, e = tl.broadcast(a, e)
    # square-and-multiply, wrapping like the reference; negative exponents give 1 / a
    # truncated toward zero: 1, +-1 for a = -1, else 0
    r = a * 0 + 1
    b = a
    k = e
    for _ in tl.static_range(BITS):
        r = tl.where((k & 1) != 0, r * b, r)
        b = b * b
        k = k >> 1
    neg = tl.where(a == 1, 1, tl.where(a == -1, tl.where((e & 1) != 0, -1, 1), 0))
    return tl.where(e < 0, neg, r)


@triton.jit
def _sf_upow(a, e, BITS: tl.constexpr):
    a, e = tl.broadcast(a, e)
    r = a * 0 + 1
    b = a
    k = e
    for _ in tl.static_range(BITS):
        r = tl.where((k & 1) != 0, r * b, r)
        b = b * b
        k = k >> 1
    return r
'''

#: The GEMM tile order shared by the int8 and W4 GEMM kernels (appended to their PRELUDE).
GEMM_TILE = r'''

@triton.jit
def _sf_gemm_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Rows / channels of GEMM tile ``pid`` (and their clamped copies for loads). GROUP_M row
    blocks walk the column blocks together, so their weight tiles are shared in L2; rows and
    channels past the end read row 0 (never stored)."""
    num_m = (M + BM - 1) // BM
    num_n = (N + BN - 1) // BN
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    return rm, rn, tl.where(rm < M, rm, 0).to(tl.int64), tl.where(rn < N, rn, 0).to(tl.int64)
'''
