"""Converters for Constant, Identity and the shape-computation ops that fold to symbolic dims."""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ..onnx_ctx import Ctx, onnx_op
from ..onnx_tensors import tensor_to_torch


@onnx_op("Constant")
def _constant(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if "value" in a:
        t, d = tensor_to_torch(a["value"], None, ctx.where())
    elif "value_float" in a:
        t, d = torch.tensor(a["value_float"], dtype=torch.float32), dt.f32
    elif "value_floats" in a:
        t, d = torch.tensor(a["value_floats"], dtype=torch.float32), dt.f32
    elif "value_int" in a:
        t, d = torch.tensor(a["value_int"], dtype=torch.int64), dt.i64
    elif "value_ints" in a:
        t, d = torch.tensor(a["value_ints"], dtype=torch.int64), dt.i64
    else:
        raise FrontendError(f"{ctx.where()}: unsupported Constant attribute {sorted(a)}")
    return [ctx.graph.add_const(t, d, node.output[0])]


@onnx_op("Identity")
def _identity(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    name = node.input[0]
    if name in ctx.dims and name not in ctx.env:
        vals, d, scalar = ctx.dims[name]
        ctx.set_dims(node.output[0], vals, d, scalar)
        return [None]
    return [ctx.input(0)]


@onnx_op("Shape")
def _shape(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    name = node.input[0]
    if name in ctx.dims and name not in ctx.env:  # a dim list: its shape, without materialising it
        vals, _, scalar = ctx.dims[name]
        shape = [] if scalar else [len(vals)]
    else:
        x = ctx.input(0)
        assert x is not None
        shape = list(x.type.shape)
    rank = len(shape)
    start, end = a.get("start", 0), a.get("end", rank)
    dims = shape[slice(start, end)]
    ctx.set_dims(node.output[0], dims)
    return [None]
