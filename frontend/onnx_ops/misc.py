"""Long-tail converters lowered onto existing IR ops: RotaryEmbedding, DepthToSpace,
SpaceToDepth, OneHot, If (compile-time condition only)."""
from __future__ import annotations

from typing import Any

import onnx
import sympy
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.types import canon_dim, dims_equal
from ..onnx_ctx import Ctx, converter, node_attrs, onnx_op
from .quant import cast, scalar


def _static(ctx: Ctx, dims: Any, what: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in dims):
        raise FrontendError(f"{ctx.where()}: {what} needs static dims, got {dims}")
    return tuple(dims)


@onnx_op("RotaryEmbedding")
def _rotary(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, cos_c, sin_c, pos = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    shape = x.type.shape
    if x.type.rank == 4:
        x4 = ctx.add("transpose", [x], {"perm": (0, 2, 1, 3)})
    elif x.type.rank == 3:
        nh = int(a.get("num_heads", 0))
        if nh <= 0:
            raise FrontendError(f"{ctx.where()}: 3-D input needs num_heads")
        b, s, hid = shape
        hd = hid // nh if isinstance(hid, int) else canon_dim(sympy.sympify(hid) / nh)
        x4 = ctx.add("reshape", [x], {"shape": (b, s, nh, hd)})
    else:
        raise FrontendError(f"{ctx.where()}: input must be 3-D or 4-D")
    b, s, h, d = x4.type.shape
    if not isinstance(d, int):
        raise FrontendError(f"{ctx.where()}: head size must be static")
    rd = int(a.get("rotary_embedding_dim", 0)) or d
    if pos is not None:
        cos_c = ctx.add("gather", [cos_c, pos], {"axis": 0})
        sin_c = ctx.add("gather", [sin_c, pos], {"axis": 0})
    cos_c = ctx.add("unsqueeze", [cos_c], {"axes": (2,)})
    sin_c = ctx.add("unsqueeze", [sin_c], {"axes": (2,)})
    xr = ctx.add("slice", [x4], {"starts": (0,), "ends": (rd,), "axes": (3,)}) if rd < d else x4
    interleaved = bool(a.get("interleaved", 0))
    if interleaved:
        x1 = ctx.add("slice", [xr], {"starts": (0,), "ends": (rd,), "axes": (3,), "steps": (2,)})
        x2 = ctx.add("slice", [xr], {"starts": (1,), "ends": (rd,), "axes": (3,), "steps": (2,)})
    else:
        x1, x2 = ctx.add("split", [xr], {"axis": 3, "sizes": (rd // 2, rd // 2)})
    real = ctx.add("sub", [ctx.add("mul", [cos_c, x1]), ctx.add("mul", [sin_c, x2])])
    imag = ctx.add("add", [ctx.add("mul", [sin_c, x1]), ctx.add("mul", [cos_c, x2])])
    if interleaved:
        pair = ctx.add("concat", [ctx.add("unsqueeze", [real], {"axes": (-1,)}),
                                  ctx.add("unsqueeze", [imag], {"axes": (-1,)})], {"axis": -1})
        rot = ctx.add("reshape", [pair], {"shape": tuple(xr.type.shape)})
    else:
        rot = ctx.add("concat", [real, imag], {"axis": -1})
    if rd < d:
        rest = ctx.add("slice", [x4], {"starts": (rd,), "ends": (d,), "axes": (3,)})
        rot = ctx.add("concat", [rot, rest], {"axis": -1})
    if x.type.rank == 3:
        return [ctx.add("reshape", [rot], {"shape": tuple(shape)})]
    return [ctx.add("transpose", [rot], {"perm": (0, 2, 1, 3)})]


@onnx_op("DepthToSpace")
def _depth_to_space(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = ctx.input(0)
    bs = int(a["blocksize"])
    n, c, h, w = x.type.shape
    c2 = canon_dim(sympy.sympify(c) / (bs * bs))
    if a.get("mode", "DCR") == "DCR":
        y = ctx.add("reshape", [x], {"shape": (n, bs, bs, c2, h, w)})
        y = ctx.add("transpose", [y], {"perm": (0, 3, 4, 1, 5, 2)})
    else:
        y = ctx.add("reshape", [x], {"shape": (n, c2, bs, bs, h, w)})
        y = ctx.add("transpose", [y], {"perm": (0, 1, 4, 2, 5, 3)})
    return [ctx.add("reshape", [y], {"shape": (n, c2, canon_dim(sympy.sympify(h) * bs),
                                               canon_dim(sympy.sympify(w) * bs))})]


@onnx_op("SpaceToDepth")
def _space_to_depth(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = ctx.input(0)
    bs = int(a["blocksize"])
    n, c, h, w = x.type.shape
    h2, w2 = canon_dim(sympy.sympify(h) / bs), canon_dim(sympy.sympify(w) / bs)
    y = ctx.add("reshape", [x], {"shape": (n, c, h2, bs, w2, bs)})
    # DCR (default) puts the block offsets before the channels, CRD after them.
    perm = (0, 3, 5, 1, 2, 4) if a.get("mode", "DCR") == "DCR" else (0, 1, 3, 5, 2, 4)
    y = ctx.add("transpose", [y], {"perm": perm})
    return [ctx.add("reshape", [y], {"shape": (n, canon_dim(sympy.sympify(c) * bs * bs), h2, w2)})]


@onnx_op("OneHot")
def _one_hot(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    idx, values = ctx.input(0), ctx.input(2)
    dc = ctx.const(1)
    if dc is None:
        raise FrontendError(f"{ctx.where()}: input 1 (depth) must be known at compile time")
    depth = int(dc.reshape(-1)[0].item())
    r = idx.type.rank
    axis = int(a.get("axis", -1))
    axis = axis + r + 1 if axis < 0 else axis
    ii = cast(ctx, idx, dt.i64) if idx.type.dtype is not dt.i64 else idx
    # Negative indices count from the end of the depth (ONNX).
    neg = ctx.add("lt", [ii, scalar(ctx, 0, dt.i64)])
    ii = ctx.add("where", [neg, ctx.add("add", [ii, scalar(ctx, depth, dt.i64)]), ii])
    ii = ctx.add("unsqueeze", [ii], {"axes": (axis,)})
    view = [1] * (r + 1)
    view[axis] = depth
    rng = ctx.graph.add_const(torch.arange(depth).reshape(view), dt.i64)
    hot = ctx.add("eq", [ii, rng])
    off = ctx.add("gather", [values, ctx.graph.add_const(torch.tensor(0), dt.i64)], {"axis": 0})
    on = ctx.add("gather", [values, ctx.graph.add_const(torch.tensor(1), dt.i64)], {"axis": 0})
    return [ctx.add("where", [hot, on, off])]


def _inline_branch(ctx: Ctx, branch: onnx.GraphProto) -> list[Value]:
    """Convert the nodes of an If branch into the graph (its initializers become constants);
    its outputs as Values."""
    outer = ctx.node
    try:
        for t in branch.initializer:
            from ..onnx_tensors import tensor_to_torch
            data, d = tensor_to_torch(t, None, f"initializer '{t.name}'")
            ctx.set(t.name, ctx.graph.add_const(data, d, t.name))
        for n in branch.node:
            ctx.node = n
            fn = converter(n.domain if n.domain != "ai.onnx" else "", n.op_type)
            if fn is None:
                raise FrontendError(f"If branch: unsupported op {n.op_type}")
            outs = list(fn(ctx, n, node_attrs(n)))
            outs += [None] * (len(n.output) - len(outs))
            for name, v in zip(n.output, outs):
                if name and v is not None:
                    ctx.set(name, v)
    finally:
        ctx.node = outer
    return [ctx.value(o.name) for o in branch.output]


@onnx_op("If")
def _if(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    c = ctx.const(0)
    if c is not None:
        return _inline_branch(ctx, a["then_branch"] if bool(c.reshape(-1)[0]) else a["else_branch"])
    # A computed condition: both branches are evaluated and each output picks one. Outputs of
    # one shape become a where; others an if_select, whose differing dims are symbols it binds.
    cond = ctx.input(0)
    if cond.dtype is not dt.boolean:
        raise FrontendError(f"{ctx.where()}: input 0 (cond) must be bool, got {cond.dtype.name}")
    then = _inline_branch(ctx, a["then_branch"])
    other = _inline_branch(ctx, a["else_branch"])
    if len(then) != len(other):
        raise FrontendError(f"{ctx.where()}: the branches have {len(then)} and {len(other)} outputs")
    flag = ctx.add("reshape", [cond], {"shape": ()}) if cond.type.rank else cond
    outs = []
    for i, (t, e) in enumerate(zip(then, other)):
        if t.dtype is not e.dtype or t.type.rank != e.type.rank:
            raise FrontendError(f"{ctx.where()}: output {i} is {t.type} in then_branch and {e.type} in "
                                "else_branch; a computed condition needs one dtype and rank")
        if all(dims_equal(x, y) for x, y in zip(t.type.shape, e.type.shape)):
            outs.append(ctx.add("where", [flag, t, e]))
        else:
            shape = tuple(x if dims_equal(x, y) else ctx.fresh_symbol("ifdim")
                          for x, y in zip(t.type.shape, e.type.shape))
            outs.append(ctx.add("if_select", [cond, t, e], {"shape": shape}))
    return outs
