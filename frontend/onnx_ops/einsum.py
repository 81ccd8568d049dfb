"""Einsum and SwiGLU converters."""
from __future__ import annotations

from typing import Any

import onnx

from ...ir.errors import FrontendError
from ..onnx_ctx import Ctx, onnx_op
from .quant import scalar


@onnx_op("Einsum")
def _einsum(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    xs = [ctx.input(i) for i in range(len(node.input))]
    return [ctx.add("einsum", xs, {"equation": a["equation"]})]


@onnx_op("SwiGLU")
def _swiglu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    g, v = ctx.input(0), ctx.input(1)
    if tuple(g.type.shape) != tuple(v.type.shape):
        raise FrontendError(f"{ctx.where()}: A and B must have identical shapes (no broadcast), "
                            f"got {g.type} and {v.type}")
    alpha = float(a.get("alpha", 1.0))
    z = g if alpha == 1.0 else ctx.add("mul", [g, scalar(ctx, alpha, g.type.dtype)])
    swish = ctx.add("mul", [g, ctx.add("sigmoid", [z])])
    return [ctx.add("mul", [swish, v])]
