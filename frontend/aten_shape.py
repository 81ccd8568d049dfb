"""ATen -> IR: shape and data-movement ops (views, slicing, indexing, concatenation, padding).

Target shapes of views and expands are taken from torch's own inferred output shape (the fx
node's ``meta['val']``, translated to IR symbols), which has every -1 and SymInt resolved.
"""
from __future__ import annotations

from typing import Any, Sequence

import sympy
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from ..ir.ops import get_op
from ..ir.types import Dim, canon_dim, dims_equal
from .aten_table import Ctx, aten

_END = 2 ** 63 - 1  # what torch writes for an open slice end


def _same_shape(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


@aten("view.default", "_unsafe_view.default", "reshape.default", "flatten.using_ints",
      "unflatten.int", "view_copy.default")
def _view(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    shape = ctx.out_type(n).shape
    if _same_shape(x.shape, shape):
        return x
    return ctx.emit("reshape", [x], shape=shape)


@aten("expand.default", "expand_copy.default")
def _expand(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    shape = ctx.out_type(n).shape
    if _same_shape(x.shape, shape):
        return x
    return ctx.emit("expand", [x], shape=shape)


@aten("permute.default", "permute_copy.default")
def _permute(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    perm = tuple(int(d) % max(x.type.rank, 1) for d in a["dims"])
    if perm == tuple(range(len(perm))):
        return x
    return ctx.emit("transpose", [x], perm=perm)


@aten("transpose.int", "t.default")
def _transpose(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    r = x.type.rank
    if r < 2:
        return x
    d0, d1 = (int(a["dim0"]) % r, int(a["dim1"]) % r) if "dim0" in a else (0, 1)
    perm = list(range(r))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return x if d0 == d1 else ctx.emit("transpose", [x], perm=tuple(perm))


@aten("unsqueeze.default", "unsqueeze_copy.default")
def _unsqueeze(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("unsqueeze", [ctx.t(a["self"])], axes=(int(a["dim"]),))


@aten("squeeze.dim", "squeeze.dims", "squeeze.default", "squeeze_copy.dims")
def _squeeze(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    r = x.type.rank
    dims = a.get("dim")
    cand = range(r) if dims is None else ([dims] if isinstance(dims, int) else dims)
    # torch silently keeps dims that are not 1; only the provable 1s are squeezed.
    axes = tuple(sorted({int(d) % max(r, 1) for d in cand if r and x.shape[int(d) % r] == 1}))
    if not axes:
        return x
    return ctx.emit("squeeze", [x], axes=axes)


def _bound(ctx: Ctx, v: Any, default: int) -> Dim:
    if v is None:
        return default
    return ctx.dim(v)


def _from_end(ctx: Ctx, i: Dim, size: Dim) -> Dim:
    """A symbolic index counted from the end (provably negative: -(P + 1)) as a position,
    which is what the IR's symbolic slice bounds are: ``size + i``, which torch.export too
    assumes non-negative (python would clamp it at 0); the graph records that as a guard
    checked at every binding (``Graph.dim_guards``). Ints keep python's own handling."""
    if isinstance(i, sympy.Basic) and i.is_negative:
        pos = sympy.sympify(i + size)
        if pos.is_negative:
            return 0
        pos = canon_dim(pos)
        if not isinstance(pos, int):
            ctx.guards.append(pos)
        return pos
    return i


@aten("slice.Tensor", "slice_copy.Tensor")
def _slice(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    axis = int(a["dim"]) % x.type.rank
    start, end = _bound(ctx, a["start"], 0), _bound(ctx, a["end"], _END)
    start, end = _from_end(ctx, start, x.shape[axis]), _from_end(ctx, end, x.shape[axis])
    step = int(a["step"])
    if step == 1 and _same_shape(x.shape, ctx.out_type(n).shape):
        return x
    size = x.shape[axis]
    if not isinstance(end, int) and not isinstance(size, int) and \
            sympy.sympify(end - size).is_nonnegative:
        end = _END  # a symbolic end at or past the dim: to the end
    if isinstance(end, int) and end >= 2 ** 31:
        end = _END
    attrs = dict(starts=(start,), ends=(end,), axes=(axis,), steps=(step,))
    want = ctx.out_type(n).shape[axis]
    got = get_op("slice").infer([x.type], get_op("slice").bind_attrs(attrs))[0].shape[axis]
    if not dims_equal(got, want) and step > 0 and not isinstance(end, int):
        # torch knows the symbolic end is in range (from the Dim's bounds), the IR does not:
        # read the rows start..end through an explicit index instead, which has length end-start.
        idx = ctx.emit("arange", [], start=start, end=end, step=step, dtype="i64")
        return ctx.emit("gather", [x, idx], axis=axis)
    if not dims_equal(got, want) and step > 0 and not isinstance(size, int):
        # x[:, :3], x[:, -3:], x[:, ::2] on a Dim with bounds: torch's length (3, not Min(3, S))
        # holds for every size the export allows; read exactly those rows
        first = start + size if isinstance(start, int) and start < 0 else start
        idx = ctx.emit("arange", [], start=first, end=first + want * step, step=step, dtype="i64")
        return ctx.emit("gather", [x, idx], axis=axis)
    if not dims_equal(got, want) and step > 0 and not isinstance(start, int):
        # a symbolic start from the end (63 - P on 64 columns): the IR's slice states its
        # length with clamps (64 - Min(64, Max(0, 63 - P))), torch's is P + 1, which holds
        # wherever the start's guard does (_from_end)
        idx = ctx.emit("arange", [], start=start, end=start + want * step, step=step, dtype="i64")
        return ctx.emit("gather", [x, idx], axis=axis)
    return ctx.emit("slice", [x], **attrs)


@aten("select.int", "select_copy.int")
def _select(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    axis = int(a["dim"]) % x.type.rank
    i = _from_end(ctx, ctx.dim(a["index"]), x.shape[axis])
    if isinstance(i, int) and i < 0 and isinstance(x.shape[axis], int):
        i += x.shape[axis]
    if not isinstance(x.shape[axis], int) or not isinstance(i, int):
        # a slice of one row of a symbolic dim (or at a symbolic index) has length
        # Max(0, Min(i+1, S) - Min(i, S)), which no squeeze accepts; a gather at a 0-d index
        # (negative: from the end) drops the axis
        return ctx.emit("gather", [x, ctx.scalar(i, dt.i64)], axis=axis)
    end = _END if isinstance(i, int) and i == -1 else i + 1
    s = ctx.emit("slice", [x], starts=(i,), ends=(end,), axes=(axis,), steps=(1,))
    return ctx.emit("squeeze", [s], axes=(axis,))


@aten("cat.default", "concat.default")
def _cat(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    out = ctx.out_dtype(n)
    xs = [ctx.cast(ctx.t(t), out) for t in a["tensors"]]
    # torch still accepts legacy empty 1-D tensors in cat; they contribute nothing.
    rank = max(v.type.rank for v in xs)
    xs = [v for v in xs if not (v.type.rank == 1 and rank > 1 and v.shape[0] == 0)]
    if len(xs) == 1:
        return xs[0]
    return ctx.emit("concat", xs, axis=int(a["dim"]))


@aten("stack.default")
def _stack(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    out = ctx.out_dtype(n)
    d = int(a["dim"])
    xs = [ctx.emit("unsqueeze", [ctx.cast(ctx.t(t), out)], axes=(d,)) for t in a["tensors"]]
    return xs[0] if len(xs) == 1 else ctx.emit("concat", xs, axis=d)


@aten("split_with_sizes.default", "split.Tensor", "split.sizes", "chunk.default",
      "split_with_sizes_copy.default", "unsafe_split.Tensor")
def _split(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, ...]:
    x = ctx.t(a["self"])
    axis = int(a["dim"]) % x.type.rank
    sizes = tuple(ctx.shape_of(v)[axis] for v in ctx.meta(n))
    if len(sizes) == 1:
        return (x,)
    out = ctx.emit("split", [x], axis=axis, sizes=sizes)
    return out if isinstance(out, tuple) else (out,)


@aten("unbind.int")
def _unbind(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, ...]:
    x = ctx.t(a["self"])
    axis = int(a["dim"]) % x.type.rank
    k = x.shape[axis]
    if not isinstance(k, int):
        raise FrontendError(f"{ctx.node_name}: unbind over a symbolic dim")
    parts = ctx.emit("split", [x], axis=axis, sizes=(1,) * k) if k > 1 else (x,)
    parts = parts if isinstance(parts, tuple) else (parts,)
    return tuple(ctx.emit("squeeze", [p], axes=(axis,)) for p in parts)


@aten("gather.default")
def _gather(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("gather_elements", [ctx.t(a["self"]), ctx.t(a["index"])], axis=int(a["dim"]))


@aten("index_select.default")
def _index_select(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("gather", [ctx.t(a["self"]), ctx.t(a["index"])], axis=int(a["dim"]))


@aten("index.Tensor")
def _index(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """Advanced indexing x[..., i0, i1, ...] with integer index tensors on adjacent dims.

    The k indexed dims are merged into one (row-major), the indices combined into one flat
    index (each wrapped into range first, as torch accepts negative indices), and a single
    gather reads the rows; the broadcast index shape replaces the indexed dims in place.
    """
    x = ctx.t(a["self"])
    idx = list(a["indices"])
    while idx and idx[-1] is None:
        idx.pop()
    pos = [i for i, v in enumerate(idx) if v is not None]
    if not pos or pos != list(range(pos[0], pos[-1] + 1)):
        raise FrontendError(f"{ctx.node_name}: indexing with non-adjacent index tensors")
    vals = [ctx.t(idx[i]) for i in pos]
    if any(v.dtype is dt.boolean or v.dtype is dt.u8 for v in vals):
        raise FrontendError(f"{ctx.node_name}: boolean-mask indexing (data-dependent shape)")
    p, k = pos[0], len(pos)
    if k == 1:
        return ctx.emit("gather", [x, vals[0]], axis=p)
    dims = x.shape[p:p + k]
    flat = None
    for j, (v, d) in enumerate(zip(vals, dims)):
        v = ctx.cast(v, dt.i64)
        if not _nonnegative(v):
            v = ctx.emit("mod", [v, ctx.scalar(d, dt.i64)])
        stride: Dim = 1
        for dd in dims[j + 1:]:
            stride = stride * dd
        term = v if stride == 1 else ctx.emit("mul", [v, ctx.scalar(stride, dt.i64)])
        flat = term if flat is None else ctx.emit("add", [flat, term])
    merged = 1
    for d in dims:
        merged = merged * d
    xr = ctx.emit("reshape", [x], shape=tuple(x.shape[:p]) + (merged,) + tuple(x.shape[p + k:]))
    return ctx.emit("gather", [xr, flat], axis=p)


def _nonnegative(v: Value) -> bool:
    """Whether an index tensor is provably >= 0 (so it needs no wrapping of negatives)."""
    if v.is_const:
        return bool((v.const >= 0).all())
    p = v.producer
    if p is None:
        return False
    if p.op == "arange":
        start = p.attrs["start"]
        return p.attrs["step"] > 0 and (not isinstance(start, int) or start >= 0)
    if p.op in ("unsqueeze", "reshape", "expand", "squeeze", "transpose", "slice", "identity"):
        return _nonnegative(p.inputs[0])  # type: ignore[arg-type]
    if p.op in ("add", "mul"):
        return all(x is not None and _nonnegative(x) for x in p.inputs)
    return False


@aten("constant_pad_nd.default")
def _pad(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    r = x.type.rank
    pad = ctx.dims(a["pad"])
    begins: list[Dim] = [0] * r
    ends: list[Dim] = [0] * r
    for j in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last dim backwards
        begins[r - 1 - j], ends[r - 1 - j] = pad[2 * j], pad[2 * j + 1]
    return ctx.emit("pad", [x], pads=tuple(begins + ends), value=float(a["value"]))


@aten("tril.default", "triu.default")
def _trilu(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("trilu", [ctx.t(a["self"])], diagonal=int(a["diagonal"]),
                    upper="triu" in str(n.target))


@aten("repeat.default")
def _repeat(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    reps = ctx.dims(a["repeats"])
    extra = len(reps) - x.type.rank
    if extra > 0:
        x = ctx.emit("unsqueeze", [x], axes=tuple(range(extra)))
    if all(r == 1 for r in reps):
        return x
    if all(isinstance(r, int) for r in reps):
        return ctx.emit("tile", [x], repeats=reps)
    # a symbolic count (DeBERTa repeats by the batch): tile axis i as [r_i, s_i] -> r_i * s_i
    inner, wide, final = tiled_shapes(x.shape, reps)
    y = ctx.emit("expand", [ctx.emit("reshape", [x], shape=inner)], shape=wide)
    return ctx.emit("reshape", [y], shape=final)


def tiled_shapes(shape: Sequence[Dim], reps: Sequence[Dim]) -> tuple[tuple[Dim, ...], ...]:
    """(inner, wide, final) shapes that tile a tensor of ``shape`` by ``reps`` (symbolic counts
    allowed) as reshape(inner) -> expand(wide) -> reshape(final): each repeated axis becomes
    [1, s] -> [r, s] -> r * s, which is the tile's row-major order."""
    inner: list[Dim] = []
    wide: list[Dim] = []
    final: list[Dim] = []
    for d, r in zip(shape, reps):
        if r == 1:
            inner.append(d)
            wide.append(d)
            final.append(d)
        else:
            inner += [1, d]
            wide += [r, d]
            final.append(canon_dim(r * d))
    return tuple(inner), tuple(wide), tuple(final)


@aten("embedding.default")
def _embedding(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("embedding", [ctx.t(a["weight"]), ctx.t(a["indices"])], wrap=False)


@aten("flip.default")
def _flip(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    axes = tuple(sorted({int(d) % max(x.type.rank, 1) for d in a["dims"]}))
    if not axes:
        return x
    # ONNX slice semantics: a step of -1 from the last element through the first
    return ctx.emit("slice", [x], starts=(-1,) * len(axes), ends=(-_END,) * len(axes), axes=axes,
                    steps=(-1,) * len(axes))


@aten("diagonal.default", "diagonal_copy.default")
def _diagonal(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """The diagonal of dims (dim1, dim2) at ``offset``, moved to the last axis: both dims
    to the end, flattened to one axis of n * m values, then every (m + 1)-th from the first
    diagonal element (static n and m)."""
    x = ctx.t(a["self"])
    r = x.type.rank
    d1, d2 = int(a.get("dim1", 0)) % r, int(a.get("dim2", 1)) % r
    off = int(a.get("offset", 0))
    nn, m = x.shape[d1], x.shape[d2]
    if d1 == d2:
        raise FrontendError(f"{n.target}: dim1 and dim2 are both {d1}")
    if not isinstance(nn, int) or not isinstance(m, int):
        raise FrontendError(f"{n.target}: the diagonal of symbolic dims ({nn}, {m}) is not supported")
    rest = [i for i in range(r) if i not in (d1, d2)]
    perm = (*rest, d1, d2)
    if perm != tuple(range(r)):
        x = ctx.emit("transpose", [x], perm=perm)
    x = ctx.emit("reshape", [x], shape=(*(x.shape[:-2]), nn * m))
    length = max(0, min(nn, m - off) if off >= 0 else min(nn + off, m))
    start = off if off >= 0 else -off * m
    if length == 0:
        start = 0
    end = start + (length - 1) * (m + 1) + 1 if length else 0
    return ctx.emit("slice", [x], starts=(start,), ends=(end,), axes=(r - 2,), steps=(m + 1,))
