"""Converters for the ONNX elementwise ops: unary math and activations, broadcasting binaries,
comparisons, logic and bitwise ops, variadic Max/Min/Sum/Mean, Where, Clip, PRelu.

ONNX multidirectional broadcasting is numpy broadcasting, which the IR binaries implement,
so binaries map one to one. Activations without an IR op (Celu, Selu, Shrink, Softsign,
ThresholdedRelu, PRelu, Swish) are lowered exactly to a few IR ops. Add/Sub/Mul/Div/Mod,
Max/Min, the comparisons, Where, Neg and Abs on shape values fold at compile time through
``shapecalc`` so that exporters' shape arithmetic becomes symbolic dims.
"""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .shapecalc import try_binary, try_compare, try_unary, try_where


def operand(ctx: Ctx, i: int) -> Value:
    """The node's i-th input, which must be present."""
    v = ctx.input(i)
    if v is None:
        raise FrontendError(f"{ctx.where()}: input {i} is required")
    return v


def scalar(ctx: Ctx, value: float | int | bool, d: dt.DType) -> Value:
    """A 0-D constant of dtype ``d`` (broadcasts against anything)."""
    if d is dt.boolean:
        t = torch.tensor(bool(value))
    elif d.is_float:
        t = torch.tensor(float(value), dtype=torch.float64)
    else:
        t = torch.tensor(int(value), dtype=torch.int64)
    return ctx.graph.add_const(t, d)


# ---- unary ----------------------------------------------------------------------------------

_UNARY = {
    "Abs": "abs", "Acos": "acos", "Acosh": "acosh", "Asin": "asin", "Asinh": "asinh",
    "Atan": "atan", "Atanh": "atanh", "Ceil": "ceil", "Cos": "cos", "Cosh": "cosh", "Erf": "erf",
    "Exp": "exp", "Floor": "floor", "HardSwish": "hardswish", "IsNaN": "isnan", "Log": "log",
    "Mish": "mish", "Neg": "neg", "Not": "logical_not", "Reciprocal": "reciprocal",
    "Relu": "relu", "Round": "round", "Sigmoid": "sigmoid", "Sign": "sign", "Sin": "sin",
    "Sinh": "sinh", "Softplus": "softplus", "Sqrt": "sqrt", "Tan": "tan", "Tanh": "tanh",
}


@onnx_op(*_UNARY)
def _unary(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if node.op_type in ("Neg", "Abs") and try_unary(ctx, node, node.op_type):
        return [None]
    return [ctx.add(_UNARY[node.op_type], [operand(ctx, 0)])]


@onnx_op("Elu", "LeakyRelu", "HardSigmoid", "Gelu")
def _param_unary(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    t = node.op_type
    if t == "Elu":
        return [ctx.add("elu", [x], {"alpha": float(a.get("alpha", 1.0))})]
    if t == "LeakyRelu":
        return [ctx.add("leaky_relu", [x], {"alpha": float(a.get("alpha", 0.01))})]
    if t == "HardSigmoid":
        # ONNX's default alpha (0.2) differs from the IR's (1/6): always pass both.
        return [ctx.add("hardsigmoid", [x], {"alpha": float(a.get("alpha", 0.2)),
                                             "beta": float(a.get("beta", 0.5))})]
    approx = a.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise FrontendError(f"{ctx.where()}: unsupported approximate={approx!r}")
    return [ctx.add("gelu", [x], {"approximate": approx})]


@onnx_op("Celu")
def _celu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    # celu(x) = x for x > 0, alpha * (exp(x / alpha) - 1) otherwise; elu(x / alpha) is the
    # second branch divided by alpha, and selecting x itself keeps the positive side exact.
    x = operand(ctx, 0)
    alpha = float(a.get("alpha", 1.0))
    if alpha == 1.0:
        return [ctx.add("elu", [x], {"alpha": 1.0})]
    al = scalar(ctx, alpha, x.dtype)
    neg = ctx.add("mul", [ctx.add("elu", [ctx.add("div", [x, al])], {"alpha": 1.0}), al])
    return [ctx.add("where", [ctx.add("gt", [x, scalar(ctx, 0, x.dtype)]), x, neg])]


@onnx_op("Selu")
def _selu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    alpha = float(a.get("alpha", 1.67326319217681884765625))
    gamma = float(a.get("gamma", 1.05070102214813232421875))
    return [ctx.add("mul", [ctx.add("elu", [x], {"alpha": alpha}), scalar(ctx, gamma, x.dtype)])]


@onnx_op("ThresholdedRelu")
def _thresholded_relu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    cond = ctx.add("gt", [x, scalar(ctx, float(a.get("alpha", 1.0)), x.dtype)])
    return [ctx.add("where", [cond, x, scalar(ctx, 0, x.dtype)])]


@onnx_op("Shrink")
def _shrink(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    lambd, bias = float(a.get("lambd", 0.5)), float(a.get("bias", 0.0))
    d = x.dtype
    # Integer inputs compare and add the float attributes as the ONNX reference does (in
    # double, exact for these integers) and truncate back to the input type.
    xf = x if d.is_float else ctx.add("cast", [x], {"to": "f64"})
    fd = xf.dtype
    low = ctx.add("lt", [xf, scalar(ctx, -lambd, fd)])
    high = ctx.add("gt", [xf, scalar(ctx, lambd, fd)])
    zero = scalar(ctx, 0, fd)
    y = ctx.add("where", [high, ctx.add("sub", [xf, scalar(ctx, bias, fd)]), zero])
    y = ctx.add("where", [low, ctx.add("add", [xf, scalar(ctx, bias, fd)]), y])
    return [y if d.is_float else ctx.add("cast", [y], {"to": d.name})]


@onnx_op("Softsign")
def _softsign(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    return [ctx.add("div", [x, ctx.add("add", [ctx.add("abs", [x]), scalar(ctx, 1, x.dtype)])])]


@onnx_op("Swish")
def _swish(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    alpha = float(a.get("alpha", 1.0))
    if alpha == 1.0:
        return [ctx.add("silu", [x])]
    s = ctx.add("sigmoid", [ctx.add("mul", [x, scalar(ctx, alpha, x.dtype)])])
    return [ctx.add("mul", [x, s])]


@onnx_op("IsInf")
def _isinf(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    neg, pos = bool(a.get("detect_negative", 1)), bool(a.get("detect_positive", 1))
    if neg and pos:
        return [ctx.add("isinf", [x])]
    if not (neg or pos):
        # Nothing is detected: comparing with NaN is False everywhere and keeps x's shape.
        return [ctx.add("eq", [x, scalar(ctx, float("nan"), x.dtype)])]
    return [ctx.add("eq", [x, scalar(ctx, float("inf") if pos else float("-inf"), x.dtype)])]


@onnx_op("BitwiseNot")
def _bitwise_not(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    d = x.dtype
    if not d.is_int or d.is_subbyte:
        raise FrontendError(f"{ctx.where()}: BitwiseNot needs an integer type, got {d.name}")
    ones = torch.tensor(-1 if d.is_signed else (1 << d.bits) - 1, dtype=d.container)
    return [ctx.add("bitwise_xor", [x, ctx.graph.add_const(ones, d)])]


# ---- binary ---------------------------------------------------------------------------------

_ARITH = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}
_COMPARE = {"Equal": "eq", "Greater": "gt", "GreaterOrEqual": "ge", "Less": "lt",
            "LessOrEqual": "le"}
_LOGIC = {"And": "logical_and", "Or": "logical_or", "Xor": "logical_xor",
          "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor"}


@onnx_op(*_ARITH)
def _arith(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if try_binary(ctx, node, node.op_type):
        return [None]
    return [ctx.add(_ARITH[node.op_type], [operand(ctx, 0), operand(ctx, 1)])]


@onnx_op(*_COMPARE)
def _compare(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if try_compare(ctx, node, node.op_type):
        return [None]
    return [ctx.add(_COMPARE[node.op_type], [operand(ctx, 0), operand(ctx, 1)])]


@onnx_op(*_LOGIC)
def _logic(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add(_LOGIC[node.op_type], [operand(ctx, 0), operand(ctx, 1)])]


@onnx_op("Mod")
def _mod(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    fmod = bool(a.get("fmod", 0))
    if not fmod and try_binary(ctx, node, "Mod"):
        return [None]
    return [ctx.add("mod", [operand(ctx, 0), operand(ctx, 1)], {"fmod": fmod})]


@onnx_op("BitShift")
def _bitshift(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    direction = str(a.get("direction", "")).lower()
    if direction not in ("left", "right"):
        raise FrontendError(f"{ctx.where()}: direction must be LEFT or RIGHT, got "
                            f"{a.get('direction')!r}")
    return [ctx.add("bitshift", [operand(ctx, 0), operand(ctx, 1)], {"direction": direction})]


@onnx_op("Pow")
def _pow(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    # ONNX lets the exponent have its own type; the IR's pow wants one dtype.
    x, y = operand(ctx, 0), operand(ctx, 1)
    if x.dtype is y.dtype:
        return [ctx.add("pow", [x, y])]
    if x.dtype.is_float:
        return [ctx.add("pow", [x, ctx.add("cast", [y], {"to": x.dtype.name})])]
    # Integer base, float exponent: computed in double and truncated, as C's pow would be.
    xf = ctx.add("cast", [x], {"to": "f64"})
    yf = ctx.add("cast", [y], {"to": "f64"})
    return [ctx.add("cast", [ctx.add("pow", [xf, yf])], {"to": x.dtype.name})]


@onnx_op("Max", "Min", "Sum", "Mean")
def _variadic(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    t = node.op_type
    if len(node.input) == 2 and t in ("Max", "Min") and try_binary(ctx, node, t):
        return [None]
    vals = [operand(ctx, i) for i in range(len(node.input))]
    if not vals:
        raise FrontendError(f"{ctx.where()}: needs at least one input")
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[t]
    acc = vals[0]
    for v in vals[1:]:
        acc = ctx.add(op, [acc, v])
    if t == "Mean" and len(vals) > 1:
        acc = ctx.add("div", [acc, scalar(ctx, len(vals), acc.dtype)])
    return [acc]


@onnx_op("Where")
def _where(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if try_where(ctx, node):
        return [None]
    return [ctx.add("where", [operand(ctx, 0), operand(ctx, 1), operand(ctx, 2)])]


@onnx_op("PRelu")
def _prelu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, slope = operand(ctx, 0), operand(ctx, 1)
    neg = ctx.add("lt", [x, scalar(ctx, 0, x.dtype)])
    return [ctx.add("where", [neg, ctx.add("mul", [x, slope]), x])]


def _attr_bound(ctx: Ctx, i: int) -> tuple[bool, float | None]:
    """Whether Clip's bound ``i`` fits the IR clip's float attribute, and its value (None when
    the bound is absent). Runtime bounds and int64 bounds that no double holds do not fit."""
    if ctx.input(i) is None:
        return True, None
    c = ctx.const(i)
    if c is None or c.numel() != 1:
        return False, None
    v = c.reshape(()).item()
    return float(v) == v, float(v)


@onnx_op("Clip")
def _clip(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    (ok_lo, lo), (ok_hi, hi) = _attr_bound(ctx, 1), _attr_bound(ctx, 2)
    if ok_lo and ok_hi:
        return [ctx.add("clip", [x], {"min": lo, "max": hi})]
    # min(max(x, lo), hi): with lo > hi every element becomes hi, as ONNX specifies.
    y = x
    for i, op in ((1, "maximum"), (2, "minimum")):
        b = ctx.input(i)
        if b is not None:
            y = ctx.add(op, [y, b])
    return [y]
