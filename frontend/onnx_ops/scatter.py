"""Indexing converters: ScatterElements, Scatter, ScatterND, GatherND, NonZero, Unique,
Compress, ReverseSequence, MaxUnpool, Col2Im."""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ..onnx_ctx import Ctx, onnx_op
from .image import _static_dim
from .quant import cast


@onnx_op("ScatterElements", "Scatter")
def _scatter_elements(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("scatter_elements", [ctx.input(0), ctx.input(1), ctx.input(2)],
                    {"axis": int(a.get("axis", 0)), "reduction": a.get("reduction", "none")})]


@onnx_op("ScatterND")
def _scatter_nd(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("scatter_nd", [ctx.input(0), ctx.input(1), ctx.input(2)],
                    {"reduction": a.get("reduction", "none")})]


@onnx_op("GatherND")
def _gather_nd(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("gather_nd", [ctx.input(0), ctx.input(1)],
                    {"batch_dims": int(a.get("batch_dims", 0))})]


@onnx_op("NonZero")
def _nonzero(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("nonzero", [ctx.input(0)], {"count": ctx.fresh_symbol("nnz")})]


@onnx_op("Compress")
def _compress(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    axis = a.get("axis")
    return [ctx.add("compress", [ctx.input(0), ctx.input(1)],
                    {"axis": None if axis is None else int(axis), "count": ctx.fresh_symbol("nsel")})]


@onnx_op("Unique")
def _unique(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    axis = a.get("axis")
    outs = ctx.add("unique", [ctx.input(0)], {"axis": None if axis is None else int(axis),
                                              "sorted": bool(a.get("sorted", 1)),
                                              "count": ctx.fresh_symbol("nuniq")})
    return list(outs)


@onnx_op("ReverseSequence")
def _reverse_sequence(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, lens = ctx.input(0), ctx.input(1)
    ta, ba = int(a.get("time_axis", 0)), int(a.get("batch_axis", 1))
    if {ta, ba} != {0, 1}:
        raise FrontendError(f"{ctx.where()}: time_axis/batch_axis must be 0 and 1")
    shape = x.type.shape
    t = ctx.add("arange", [], {"end": shape[ta], "dtype": "i64"})
    t = ctx.add("unsqueeze", [t], {"axes": (1 - ta,)})  # [T, 1] or [1, T]
    n = cast(ctx, lens, dt.i64) if lens.type.dtype is not dt.i64 else lens
    n = ctx.add("unsqueeze", [n], {"axes": (1 - ba,)})  # aligned with the batch axis
    one = ctx.graph.add_const(torch.tensor(1), dt.i64)
    rev = ctx.add("sub", [ctx.add("sub", [n, one]), t])
    idx = ctx.add("where", [ctx.add("lt", [t, n]), rev, t])
    if x.type.rank > 2:
        idx = ctx.add("unsqueeze", [idx], {"axes": tuple(range(2, x.type.rank))})
    idx = ctx.add("expand", [idx], {"shape": tuple(shape)})
    return [ctx.add("gather_elements", [x, idx], {"axis": ta})]


@onnx_op("MaxUnpool")
def _max_unpool(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, ind = ctx.input(0), ctx.input(1)
    n_sp = x.type.rank - 2
    k = list(a["kernel_shape"])
    st = list(a.get("strides", [1] * n_sp))
    pads = list(a.get("pads", [0] * (2 * n_sp)))
    inferred = list(x.type.shape[:2])
    for i in range(n_sp):
        d = _static_dim(ctx, x.type.shape[2 + i], "MaxUnpool")
        inferred.append((d - 1) * st[i] - pads[i] - pads[n_sp + i] + k[i])
    total = 1
    for d in inferred:
        total *= _static_dim(ctx, d, "MaxUnpool")
    zeros = ctx.add("full", [], {"shape": (total,), "value": 0.0, "dtype": x.type.dtype.name})
    flat_i = ctx.add("reshape", [ind], {"shape": (-1,)})
    flat_x = ctx.add("reshape", [x], {"shape": (-1,)})
    y = ctx.add("scatter_elements", [zeros, flat_i, flat_x], {"axis": 0})
    y = ctx.add("reshape", [y], {"shape": tuple(inferred)})
    if len(node.input) > 2 and node.input[2]:
        # indices address the inferred shape; a larger output_shape zero-fills the far end
        # (the ONNX reference's semantics)
        out = [_static_dim(ctx, d, "MaxUnpool") for d in ctx.require_dims(2, "output_shape")]
        extra = [o - i for o, i in zip(out, inferred)]
        if any(e < 0 for e in extra):
            raise FrontendError(f"{ctx.where()}: output_shape {out} smaller than {inferred}")
        if any(extra):
            y = ctx.add("pad", [y], {"pads": tuple([0] * len(out) + extra)})
    return [y]


@onnx_op("Col2Im")
def _col2im(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = ctx.input(0)
    img = [_static_dim(ctx, d, "Col2Im") for d in ctx.require_dims(1, "image_shape")]
    blk = [_static_dim(ctx, d, "Col2Im") for d in ctx.require_dims(2, "block_shape")]
    nd = len(img)
    dil = list(a.get("dilations", [1] * nd))
    st = list(a.get("strides", [1] * nd))
    pads = list(a.get("pads", [0] * (2 * nd)))
    padded = [img[i] + pads[i] + pads[nd + i] for i in range(nd)]
    nblk = [(padded[i] - (dil[i] * (blk[i] - 1) + 1)) // st[i] + 1 for i in range(nd)]
    kb = int(torch.tensor(blk).prod())
    nl = int(torch.tensor(nblk).prod())
    n, ck, l_ = x.type.shape
    if _static_dim(ctx, l_, "Col2Im") != nl:
        raise FrontendError(f"{ctx.where()}: input has {l_} blocks, image/block shapes give {nl}")
    c = _static_dim(ctx, ck, "Col2Im") // kb
    # the padded-image offset each (kernel position, block position) pair adds into
    kpos = torch.stack(torch.meshgrid(*[torch.arange(b) for b in blk], indexing="ij"), -1).reshape(-1, nd)
    lpos = torch.stack(torch.meshgrid(*[torch.arange(b) for b in nblk], indexing="ij"), -1).reshape(-1, nd)
    coord = kpos[:, None, :] * torch.tensor(dil) + lpos[None, :, :] * torch.tensor(st)
    flat = torch.zeros(kb, nl, dtype=torch.long)
    for i in range(nd):
        flat = flat * padded[i] + coord[..., i]
    idx = ctx.graph.add_const(flat.reshape(1, 1, kb * nl), dt.i64)
    npad = int(torch.tensor(padded).prod())
    xs = ctx.add("reshape", [x], {"shape": (n, c, kb * nl)})
    idx = ctx.add("expand", [idx], {"shape": (n, c, kb * nl)})
    zeros = ctx.add("full", [], {"shape": (n, c, npad), "value": 0.0, "dtype": x.type.dtype.name})
    y = ctx.add("scatter_elements", [zeros, idx, xs], {"axis": 2, "reduction": "add"})
    y = ctx.add("reshape", [y], {"shape": (n, c, *padded)})
    if any(pads):
        y = ctx.add("slice", [y], {"starts": tuple(pads[:nd]),
                                   "ends": tuple(pads[i] + img[i] for i in range(nd)),
                                   "axes": tuple(range(2, 2 + nd))})
    return [y]

