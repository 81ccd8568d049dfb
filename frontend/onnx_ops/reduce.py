"""Converters for the ONNX reductions and scans: Reduce*, ArgMax/ArgMin, TopK, CumSum,
CumProd and Hardmax.

Opset differences handled here: ``axes`` is an attribute of every Reduce* op before opset 18
except ReduceSum (an input since opset 13); ``noop_with_empty_axes`` turns "no axes" from
"reduce everything" into the identity. ReduceL1 and ReduceLogSum lower to abs/log around
reduce_sum; Hardmax lowers to argmax compared against a position index.
"""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.ops.common import norm_axis
from ..onnx_ctx import Ctx, onnx_op
from .elementwise import operand

_REDUCE = {"ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max",
           "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod", "ReduceL2": "reduce_l2",
           "ReduceSumSquare": "reduce_sum_square", "ReduceLogSumExp": "reduce_logsumexp",
           "ReduceL1": "reduce_sum", "ReduceLogSum": "reduce_sum"}


def _int_list(ctx: Ctx, vals: list, what: str) -> list[int]:
    if not all(isinstance(v, int) for v in vals):
        raise FrontendError(f"{ctx.where()}: {what} must be integers known at compile time")
    return [int(v) for v in vals]


def reduce_axes(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]) -> list[int] | None:
    """The axes a Reduce* node reduces ([] = every axis), or None when it is the identity
    (no axes and noop_with_empty_axes=1)."""
    if "axes" in a:
        axes = list(a["axes"])
    elif len(node.input) > 1 and node.input[1]:
        axes = _int_list(ctx, ctx.require_dims(1, "axes"), "axes")
    else:
        axes = []
    if not axes and a.get("noop_with_empty_axes", 0):
        return None
    return axes


@onnx_op(*_REDUCE)
def _reduce(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    axes = reduce_axes(ctx, node, a)
    t = node.op_type
    if axes is None:
        # A reduction over no axes: each element is its own group, so only the elementwise
        # part of the op remains (as in the ONNX reference: ReduceSumSquare -> x*x).
        if t in ("ReduceL1", "ReduceL2"):
            return [ctx.add("abs", [x])]
        if t == "ReduceSumSquare":
            return [ctx.add("mul", [x, x])]
        if t == "ReduceLogSum":
            return [ctx.add("log", [x])]
        return [x]
    if t in ("ReduceMax", "ReduceMin"):
        empty = _empty_extreme(ctx, x, axes, bool(a.get("keepdims", 1)), t == "ReduceMax")
        if empty is not None:
            return [empty]
    if t == "ReduceL1":
        x = ctx.add("abs", [x])
    y = ctx.add(_REDUCE[t], [x], {"axes": tuple(axes) or None,
                                  "keepdims": bool(a.get("keepdims", 1))})
    if t == "ReduceLogSum":
        y = ctx.add("log", [y])
    return [y]


def _empty_extreme(ctx: Ctx, x: Value, axes: list[int], keep: bool, is_max: bool) -> Value | None:
    """ReduceMax/ReduceMin over an axis of static size 0: ONNX defines the result as the
    identity element (-inf / +inf, an integer type's min / max, False / True); torch cannot
    reduce an empty axis, so the result is that constant expanded to the output shape."""
    shape = x.type.shape
    red = {norm_axis(ax, len(shape)) for ax in axes} if axes else set(range(len(shape)))
    if not any(shape[i] == 0 for i in red):
        return None
    d = x.dtype
    if d.is_float:
        fill = torch.tensor(float("-inf") if is_max else float("inf"), dtype=torch.float64)
    else:
        lo, hi = d.int_range()
        fill = torch.tensor(lo if is_max else hi, dtype=torch.int64)
    out = tuple(1 if i in red else n for i, n in enumerate(shape) if keep or i not in red)
    return ctx.add("expand", [ctx.graph.add_const(fill, d)], {"shape": out})


@onnx_op("ArgMax", "ArgMin")
def _arg(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    op = "argmax" if node.op_type == "ArgMax" else "argmin"
    return [ctx.add(op, [operand(ctx, 0)], {"axis": int(a.get("axis", 0)),
                                            "keepdims": bool(a.get("keepdims", 1)),
                                            "select_last_index": bool(a.get("select_last_index", 0))})]


@onnx_op("TopK")
def _topk(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    k = ctx.require_dims(1, "K")
    if len(k) != 1:
        raise FrontendError(f"{ctx.where()}: K must hold one value, got {len(k)}")
    vals, idx = ctx.add("topk", [x], {"k": k[0], "axis": int(a.get("axis", -1)),
                                      "largest": bool(a.get("largest", 1)),
                                      "sorted": bool(a.get("sorted", 1))})
    return [vals, idx]


@onnx_op("CumSum", "CumProd")
def _scan(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = operand(ctx, 0)
    axis = _int_list(ctx, ctx.require_dims(1, "axis"), "axis")
    if len(axis) != 1:
        raise FrontendError(f"{ctx.where()}: axis must hold one value, got {len(axis)}")
    op = "cumsum" if node.op_type == "CumSum" else "cumprod"
    return [ctx.add(op, [x], {"axis": axis[0], "exclusive": bool(a.get("exclusive", 0)),
                              "reverse": bool(a.get("reverse", 0))})]


@onnx_op("Hardmax")
def _hardmax(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    # 1 at the first maximum along `axis`, 0 elsewhere: argmax (keepdims) compared with the
    # position index of that axis, broadcast over the others.
    x = operand(ctx, 0)
    rank = x.type.rank
    axis = norm_axis(int(a.get("axis", -1)), rank)
    idx = ctx.add("argmax", [x], {"axis": axis, "keepdims": True})
    n = x.type.shape[axis]
    view = [1] * rank
    view[axis] = n
    if isinstance(n, int):
        pos = ctx.graph.add_const(torch.arange(n, dtype=torch.int64).reshape(view), "i64")
    else:
        pos = ctx.add("reshape", [ctx.add("arange", [], {"end": n})], {"shape": tuple(view)})
    hot = ctx.add("eq", [pos, idx])
    return [ctx.add("cast", [hot], {"to": x.dtype.name})]
