"""Converters for NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss (inference forms),
lowered to gather_elements / where / reductions."""
from __future__ import annotations

from typing import Any

import onnx

from ...ir import dtypes as dt
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .quant import cast, scalar


def _nll(ctx: Ctx, logp: Value, target: Value, weight: Value | None, a: dict[str, Any]) -> Value:
    """ONNX NLL loss of log-probabilities ``logp`` [N, C, ...] against ``target`` [N, ...]."""
    f = logp.type.dtype
    t = cast(ctx, target, dt.i64)
    ignore = a.get("ignore_index")
    mask = None
    if ignore is not None:
        mask = ctx.add("eq", [t, scalar(ctx, int(ignore), dt.i64)])
        # Ignored positions may hold an out-of-range class; gather a valid one, weight it 0.
        t = ctx.add("where", [mask, scalar(ctx, 0, dt.i64), t])
    picked = ctx.add("gather_elements", [logp, ctx.add("unsqueeze", [t], {"axes": (1,)})],
                     {"axis": 1})
    loss = ctx.add("neg", [ctx.add("squeeze", [picked], {"axes": (1,)})])
    w: Value | None = None
    if weight is not None:
        w = ctx.add("gather", [weight, t], {"axis": 0})
    if mask is not None:
        w = ctx.add("where", [mask, scalar(ctx, 0.0, f), w if w is not None else scalar(ctx, 1.0, f)])
    if w is not None:
        loss = ctx.add("mul", [loss, w])
    red = a.get("reduction", "mean")
    if red == "none":
        return loss
    total = ctx.add("reduce_sum", [loss], {"keepdims": False})
    if red == "sum":
        return total
    if w is None:
        return ctx.add("reduce_mean", [loss], {"keepdims": False})
    wsum = ctx.add("reduce_sum", [ctx.add("mul", [ctx.add("full", [], {
        "shape": tuple(loss.type.shape), "value": 1.0, "dtype": f.name}), w])], {"keepdims": False})
    return ctx.add("div", [total, wsum])


@onnx_op("NegativeLogLikelihoodLoss")
def _nll_loss(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [_nll(ctx, ctx.input(0), ctx.input(1), ctx.input(2), a)]


@onnx_op("SoftmaxCrossEntropyLoss")
def _sce_loss(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    logp = ctx.add("log_softmax", [ctx.input(0)], {"axis": 1})
    return [_nll(ctx, logp, ctx.input(1), ctx.input(2), a), logp]
