"""Converters for the ONNX shape / indexing family (Reshape, Transpose, Squeeze, Unsqueeze,
Flatten, Concat, Split, Slice, Gather, GatherElements, Expand, Tile, Pad, Range,
ConstantOfShape, Size, Trilu, EyeLike).

Where the data operand is a dim list (a shape computation, see ``shapecalc``), Gather, Slice,
Concat, Squeeze, Unsqueeze and Reshape record the result as dims instead of emitting nodes.
"""
from __future__ import annotations

import math
from typing import Any

import onnx
import sympy
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.types import Dim
from ..onnx_ctx import Ctx, onnx_op
from ..onnx_tensors import tensor_to_torch
from . import shapecalc as sc


def _x(ctx: Ctx, i: int = 0) -> Value:
    v = ctx.input(i)
    if v is None:
        raise FrontendError(f"{ctx.where()}: input {i} is required")
    return v


def _ints(ctx: Ctx, i: int, what: str) -> list[int]:
    vals = ctx.require_dims(i, what)
    if not all(isinstance(v, int) for v in vals):
        raise FrontendError(f"{ctx.where()}: {what} must be integers known at compile time, "
                            f"got {vals}")
    return vals


def axes_of(ctx: Ctx, a: dict[str, Any], input_index: int) -> list[int] | None:
    """Axes given as the node's input ``input_index`` (newer opsets) or as the attribute."""
    if len(ctx.node.input) > input_index and ctx.node.input[input_index]:
        return _ints(ctx, input_index, "axes")
    if "axes" in a:
        return list(a["axes"])
    return None


def _dims_in(ctx: Ctx, i: int = 0) -> sc.DimInfo | None:
    """Input i as a dim list if it is a recorded shape computation (not a plain constant)."""
    name = ctx._name(i)
    if name in ctx.dims:
        return sc.input_dims(ctx, i)
    return None


# ---- reshaping ----------------------------------------------------------------------------

@onnx_op("Reshape")
def _reshape(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    target = ctx.require_dims(1, "shape")
    di = _dims_in(ctx, 0)
    if di is not None and ((not target and len(di.vals) == 1) or
                           (len(target) == 1 and target[0] in (-1, len(di.vals)))):
        ctx.set_dims(node.output[0], di.vals, di.dtype, scalar=not target)
        return [None]
    x = _x(ctx)
    if not a.get("allowzero", 0):
        target = [x.shape[i] if isinstance(t, int) and t == 0 else t for i, t in enumerate(target)]
    return [ctx.add("reshape", [x], {"shape": tuple(target)})]


@onnx_op("Transpose")
def _transpose(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    perm = a.get("perm")
    return [ctx.add("transpose", [_x(ctx)], {"perm": tuple(perm) if perm is not None else None})]


@onnx_op("Squeeze")
def _squeeze(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    axes = axes_of(ctx, a, 1)
    di = _dims_in(ctx, 0)
    if di is not None and not di.scalar and len(di.vals) == 1 and axes in (None, [0], [-1]):
        ctx.set_dims(node.output[0], di.vals, di.dtype, scalar=True)
        return [None]
    return [ctx.add("squeeze", [_x(ctx)], {"axes": tuple(axes) if axes else None})]


@onnx_op("Unsqueeze")
def _unsqueeze(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    axes = axes_of(ctx, a, 1)
    if axes is None:
        raise FrontendError(f"{ctx.where()}: Unsqueeze needs axes")
    di = _dims_in(ctx, 0)
    if di is not None and di.scalar and axes in ([0], [-1]):
        ctx.set_dims(node.output[0], di.vals, di.dtype)
        return [None]
    return [ctx.add("unsqueeze", [_x(ctx)], {"axes": tuple(axes)})]


@onnx_op("Flatten")
def _flatten(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("flatten", [_x(ctx)], {"axis": a.get("axis", 1)})]


# ---- joining and splitting ------------------------------------------------------------------

@onnx_op("Concat")
def _concat(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    names = [n for n in node.input if n]
    infos = [sc.input_dims(ctx, n) for n in names]
    if (any(n in ctx.dims for n in names) and all(i is not None and not i.scalar for i in infos)):
        ctx.set_dims(node.output[0], sc.concat_dims([i.vals for i in infos]), infos[0].dtype)
        return [None]
    xs = [ctx.value(n) for n in names]
    return [ctx.add("concat", xs, {"axis": a["axis"]})]


def _split_sizes(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any], dim: Dim) -> list[Dim]:
    if len(node.input) > 1 and node.input[1]:
        return ctx.require_dims(1, "split")
    if "split" in a:
        return list(a["split"])
    n = a.get("num_outputs", len(node.output))
    if isinstance(dim, int):
        if dim % n == 0:
            return [dim // n] * n
        if "num_outputs" not in a:
            raise FrontendError(f"{ctx.where()}: dim {dim} does not split evenly into {n}")
        chunk = -(-dim // n)  # opset 18: ceil-sized chunks, the last one smaller
        sizes = [chunk] * (dim // chunk)
        if dim % chunk:
            sizes.append(dim % chunk)
        if len(sizes) != n:
            raise FrontendError(f"{ctx.where()}: cannot split {dim} into {n} outputs")
        return sizes
    q = sympy.sympify(dim) / n
    if not q.is_integer:
        raise FrontendError(f"{ctx.where()}: symbolic dim {dim} must split evenly into {n}")
    return [sc.canon_or_int(q)] * n


@onnx_op("Split")
def _split(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    axis = a.get("axis", 0)
    ax = axis + x.type.rank if axis < 0 else axis
    sizes = _split_sizes(ctx, node, a, x.shape[ax])
    di = _dims_in(ctx, 0)
    if di is not None and all(isinstance(s, int) for s in sizes):
        pos = 0
        for name, s in zip(node.output, sizes):
            ctx.set_dims(name, di.vals[pos:pos + s], di.dtype)
            pos += s
        return [None] * len(sizes)
    out = ctx.add("split", [x], {"axis": axis, "sizes": tuple(sizes)})
    return list(out) if isinstance(out, tuple) else [out]


# ---- indexing --------------------------------------------------------------------------------

@onnx_op("Slice")
def _slice(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    starts = ctx.require_dims(1, "starts")
    ends = ctx.require_dims(2, "ends")
    axes = axes_of(ctx, a, 3)
    steps = _ints(ctx, 4, "steps") if len(node.input) > 4 and node.input[4] else None
    di = _dims_in(ctx, 0)
    if di is not None and len(starts) == 1 and axes in (None, [0], [-1]):
        r = sc.slice_dims(di.vals, starts[0], ends[0], steps[0] if steps else 1)
        if r is not None:
            ctx.set_dims(node.output[0], r, di.dtype)
            return [None]
    x = _x(ctx)
    shape = x.type.shape
    # the axis of each bound (None where out of range: the slice op then reports it)
    rank = len(shape)
    on = [(a + rank if a < 0 else a) if -rank <= a < rank else None
          for a in (axes if axes is not None else range(len(starts)))]
    starts = [_from_end(v, shape[ax]) if ax is not None else v for v, ax in zip(starts, on)]
    ends = [_from_end(v, shape[ax]) if ax is not None else v for v, ax in zip(ends, on)]
    attrs = {"starts": tuple(starts), "ends": tuple(ends),
             "axes": tuple(axes) if axes is not None else None,
             "steps": tuple(steps) if steps is not None else None}
    y = ctx.add("slice", [x], attrs)
    assumed = _assumed_slice_shape(y.shape, starts, ends, axes, steps)
    if assumed is not None:
        # The exporter sliced with a symbolic bound (e.g. position_ids[:, :S] of a 512-row
        # table), so the exact length is Min(512, S). The model is only valid when the bound
        # is in range, so the length is asserted to be S with a reshape (checked at run time):
        # this keeps later broadcasts against S provable.
        y = ctx.add("reshape", [y], {"shape": assumed})
    return [y]


_BIG = 2 ** 31


def _from_end(v: Any, n: Any) -> Any:
    """A symbolic slice bound that is negative (``-S``: an index from the end, as in
    ``x[..., -S:]``) as the position it names on an axis of length ``n``; the IR's symbolic
    bounds are positions. Past the start it clamps to 0, as Python's slices do."""
    if isinstance(v, int) or not sympy.sympify(v).is_negative:
        return v
    p = sympy.expand(n + v)
    return sc.canon_or_int(p if p.is_nonnegative else sympy.Max(0, p))


def _assumed_slice_shape(shape: tuple, starts: list, ends: list, axes, steps
                         ) -> tuple | None:
    out, changed = list(shape), False
    axes = list(axes) if axes is not None else list(range(len(starts)))
    for j, ax in enumerate(axes):
        st, en = starts[j], ends[j]
        step = steps[j] if steps else 1
        d = out[ax]
        if step != 1 or isinstance(d, int) or not d.has(sympy.Min, sympy.Max):
            continue
        if isinstance(st, int) and not 0 <= st < _BIG:
            continue
        if isinstance(en, int):
            continue  # an int end with a symbolic start: no in-range assumption to make
        out[ax] = sc.canon_or_int(sympy.expand(en - st))
        changed = True
    return tuple(out) if changed else None


@onnx_op("Gather")
def _gather(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    axis = a.get("axis", 0)
    di = _dims_in(ctx, 0)
    if di is not None and axis in (0, -1) and not di.scalar:
        idx = sc.input_dims(ctx, 1)
        if idx is not None and not idx.symbolic:
            r = sc.gather_dims(di.vals, idx.vals)
            if r is not None:
                ctx.set_dims(node.output[0], r, di.dtype, scalar=idx.scalar)
                return [None]
    x, i = _x(ctx), _x(ctx, 1)
    if x.type.rank == 2 and axis == 0 and x.dtype.is_float:
        return [ctx.add("embedding", [x, i])]
    return [ctx.add("gather", [x, i], {"axis": axis})]


@onnx_op("GatherElements")
def _gather_elements(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("gather_elements", [_x(ctx), _x(ctx, 1)], {"axis": a.get("axis", 0)})]


@onnx_op("Expand")
def _expand(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    shape = ctx.require_dims(1, "shape")
    return [ctx.add("expand", [_x(ctx)], {"shape": tuple(shape)})]


@onnx_op("Tile")
def _tile(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    reps = tuple(ctx.require_dims(1, "repeats"))
    x = _x(ctx)
    if all(isinstance(r, int) for r in reps):
        return [ctx.add("tile", [x], {"repeats": reps})]
    # repeats from a shape computation (DeBERTa tiles by the batch): reshape / expand / reshape
    from ..aten_shape import tiled_shapes
    inner, wide, final = tiled_shapes(x.shape, reps)
    y = ctx.add("expand", [ctx.add("reshape", [x], {"shape": inner})], {"shape": wide})
    return [ctx.add("reshape", [y], {"shape": final})]


@onnx_op("Pad")
def _pad(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    mode = a.get("mode", "constant")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise FrontendError(f"{ctx.where()}: Pad mode '{mode}' is not supported")
    pads = ctx.require_dims(1, "pads") if len(node.input) > 1 else list(a.get("pads", []))
    value, runtime_value = 0.0, None
    if mode == "constant" and len(node.input) > 2 and node.input[2]:
        cv = ctx.const(2)
        if cv is None:
            runtime_value = ctx.input(2)
        elif cv.numel() != 1:
            raise FrontendError(f"{ctx.where()}: constant_value must be a scalar")
        else:
            value = float(cv.reshape(()).item())
    axes = axes_of(ctx, a, 3) if len(node.input) > 3 else None
    r = x.type.rank
    if axes is not None:
        full: list[Dim] = [0] * (2 * r)
        k = len(axes)
        if len(pads) != 2 * k:
            raise FrontendError(f"{ctx.where()}: {len(pads)} pads for {k} axes")
        for j, ax in enumerate(axes):
            ax = ax + r if ax < 0 else ax
            full[ax], full[ax + r] = pads[j], pads[j + k]
        pads = full
    if mode == "wrap":
        return [_wrap_pad(ctx, x, pads)]
    y = ctx.add("pad", [x], {"pads": tuple(pads), "mode": mode, "value": value})
    if runtime_value is not None:
        # a run-time fill value: select it where a padded bool mask is True
        mask = ctx.add("full", [], {"shape": tuple(x.shape), "value": 0.0, "dtype": "bool"})
        mask = ctx.add("pad", [mask], {"pads": tuple(pads), "mode": "constant", "value": 1.0})
        v = ctx.add("reshape", [runtime_value], {"shape": ()})
        y = ctx.add("where", [mask, v, y])
    return [y]


def _wrap_pad(ctx: Ctx, x: Value, pads: list[Dim]) -> Value:
    """Pad mode 'wrap' (circular) as crops and concatenations of slices, axis by axis."""
    r = x.type.rank
    for ax in range(r):
        b, e = pads[ax], pads[ax + r]
        if not (isinstance(b, int) and isinstance(e, int)):
            raise FrontendError(f"{ctx.where()}: wrap padding must be static")
        if b < 0 or e < 0:
            x = ctx.add("slice", [x], {"starts": (max(-b, 0),),
                                       "ends": (e if e < 0 else 2 ** 62,), "axes": (ax,)})
            b, e = max(b, 0), max(e, 0)
        n = x.shape[ax]
        if b == 0 and e == 0:
            continue
        if not isinstance(n, int) or b > n or e > n:
            raise FrontendError(f"{ctx.where()}: wrap padding wider than the dim is not supported")
        parts = []
        if b:
            parts.append(ctx.add("slice", [x], {"starts": (n - b,), "ends": (n,), "axes": (ax,)}))
        parts.append(x)
        if e:
            parts.append(ctx.add("slice", [x], {"starts": (0,), "ends": (e,), "axes": (ax,)}))
        x = ctx.add("concat", parts, {"axis": ax})
    return x


# ---- generators ------------------------------------------------------------------------------

@onnx_op("Range")
def _range(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    cs = [ctx.const(i) for i in range(3)]
    if all(c is not None for c in cs):
        start, limit, delta = (c.reshape(-1)[0].item() for c in cs)
        if delta == 0:
            raise FrontendError(f"{ctx.where()}: Range with delta 0")
        # ONNX: max(ceil((limit - start) / delta), 0) elements; torch.arange refuses a limit
        # on the wrong side of start instead of giving none
        if math.ceil((limit - start) / delta) <= 0:
            t = torch.zeros(0, dtype=cs[0].dtype)
        else:
            t = torch.arange(start, limit, delta, dtype=cs[0].dtype)
        return [ctx.graph.add_const(t, dt.from_torch(cs[0].dtype), node.output[0])]
    infos = [sc.input_dims(ctx, i) for i in range(3)]
    if any(i is None or len(i.vals) != 1 for i in infos) or not isinstance(infos[2].vals[0], int):
        raise FrontendError(f"{ctx.where()}: Range needs start/limit known at compile time and "
                            f"a constant integer delta")
    if infos[2].vals[0] == 0:
        raise FrontendError(f"{ctx.where()}: Range with delta 0")
    d = infos[0].dtype
    return [ctx.add("arange", [], {"start": infos[0].vals[0], "end": infos[1].vals[0],
                                   "step": infos[2].vals[0], "dtype": d.name})]


@onnx_op("ConstantOfShape")
def _constant_of_shape(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    shape = ctx.require_dims(0, "shape")
    if "value" in a:
        t, d = tensor_to_torch(a["value"], None, ctx.where())
        v = t.reshape(-1)[0].item()
    else:
        v, d = 0.0, dt.f32
    if all(isinstance(s, int) for s in shape) and not d.is_float and len(shape) <= 1 \
            and all(s <= sc.MAX_DIMS for s in shape) and d.bits >= 32:
        # small integer fill: keep it a dim list so it can feed further shape arithmetic
        n = shape[0] if shape else 1
        ctx.set_dims(node.output[0], [int(v)] * n, d, scalar=not shape)
        return [None]
    return [ctx.add("full", [], {"shape": tuple(shape), "value": float(v), "dtype": d.name})]


@onnx_op("Size")
def _size(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    ctx.set_dims(node.output[0], [x.type.numel()], dt.i64, scalar=True)
    return [None]


@onnx_op("Trilu")
def _trilu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    k = 0
    if len(node.input) > 1 and node.input[1]:
        k = _ints(ctx, 1, "k")[0]
    return [ctx.add("trilu", [_x(ctx)], {"diagonal": k, "upper": bool(a.get("upper", 1))})]


@onnx_op("EyeLike")
def _eye_like(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    if x.type.rank != 2 or not x.type.is_static:
        raise FrontendError(f"{ctx.where()}: EyeLike needs a static 2-D input, got {x.type}")
    from ..onnx_tensors import onnx_dtype
    d = onnx_dtype(a["dtype"], ctx.where()) if "dtype" in a else x.dtype
    m, n = x.shape
    k = a.get("k", 0)
    t = torch.zeros(m, n, dtype=torch.float64)
    i = torch.arange(m)
    j = i + k
    ok = (j >= 0) & (j < n)
    t[i[ok], j[ok]] = 1
    return [ctx.graph.add_const(dt.to_container(t, d) if d.is_subbyte else t.to(d.container), d,
                                node.output[0])]
