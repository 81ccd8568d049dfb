"""ATen -> IR: writes into tensors and window views (``index_put``, ``slice_scatter``,
``select_scatter``, ``copy``, ``F.pad`` in every mode, ``Tensor.unfold``).

torch.export functionalises in-place writes (``x[:, :k] = y``, ``x[idx] += v``) into these
ops, and several composite ops decompose into them: ``F.fold`` (col2im) becomes an
accumulating ``index_put`` into zeros, ``F.max_unpool`` a plain one. So they are lowered
generically, onto existing IR ops, rather than pattern by pattern:

- ``index_put`` -> one ``scatter_nd`` (reduction ``add`` when accumulating): the indexed dims
  are moved to the front so that the index tuples address leading dims, as ScatterND wants;
- ``slice_scatter`` with step 1 -> ``concat`` of the untouched head, the source and the
  untouched tail (no index tensor, works with symbolic sizes); other steps -> ``scatter_nd``;
- ``aten.pad`` is kept whole through the decompositions (``torch.KEEP``) because torch's own
  decomposition of the circular mode writes into an ``empty`` tensor slice by slice; here
  circular padding is one ``concat`` per axis of (tail, x, head) slices, and the other modes
  map onto the IR ``pad`` op's constant / reflect / edge modes;
- ``Tensor.unfold(d, size, step)`` -> one ``gather`` by the [windows, size] index table
  ``i * step + j`` followed by moving the window axis last.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from ..ir.ops.common import broadcast_shapes
from ..ir.types import Dim, canon_dim, dims_equal
from .aten_table import Ctx, aten

_END = 2 ** 63 - 1  # what torch writes for an open slice end (ONNX: to the end)


def _norm_index(i: Dim, size: Dim) -> Dim:
    """A python-style (possibly negative) position on an axis of ``size`` made non-negative,
    clamped to [0, size] where both are known, as torch clamps slice bounds."""
    if isinstance(i, int) and isinstance(size, int):
        return min(max(i + size if i < 0 else i, 0), size)
    if isinstance(i, int) and i < 0:
        return canon_dim(size + i)
    return i


def _move_to_front(ctx: Ctx, x: Value, axes: Sequence[int]) -> tuple[Value, tuple[int, ...]]:
    """x with ``axes`` moved first (in order); also the inverse permutation."""
    r = x.type.rank
    perm = tuple(axes) + tuple(d for d in range(r) if d not in axes)
    inv = tuple(perm.index(d) for d in range(r))
    if perm == tuple(range(r)):
        return x, inv
    return ctx.emit("transpose", [x], perm=perm), inv


def _unpermute(ctx: Ctx, y: Value, inv: tuple[int, ...]) -> Value:
    return y if inv == tuple(range(len(inv))) else ctx.emit("transpose", [y], perm=inv)


def scatter_rows(ctx: Ctx, x: Value, axis: int, index: Value, src: Value, add: bool = False) -> Value:
    """x with rows ``index`` (1-D i64) of ``axis`` replaced by (or, with ``add``, increased by)
    the matching rows of ``src`` (x's shape with ``len(index)`` rows on ``axis``)."""
    xf, inv = _move_to_front(ctx, x, (axis,))
    sf, _ = _move_to_front(ctx, src, (axis,))
    idx = ctx.emit("unsqueeze", [index], axes=(1,))
    y = ctx.emit("scatter_nd", [xf, idx, sf], reduction="add" if add else "none")
    return _unpermute(ctx, y, inv)


# ---- in-place writes, functionalised ----------------------------------------------------------


@aten("index_put.default", "_unsafe_index_put.default")
def _index_put(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """``x[..., i0, i1, ...] = v`` (or ``+= v`` with ``accumulate``) with integer index tensors
    on adjacent dims, as one ``scatter_nd``.

    torch's result ``x[idx]`` has shape ``x.shape[:p] + B + x.shape[p+k:]`` (B: the broadcast
    index shape); ScatterND addresses leading dims, so the k indexed dims of x are moved to
    the front and the B dims of the (broadcast) values likewise, then moved back.
    Duplicate indices without ``accumulate`` have no defined winner in torch either.
    """
    x = ctx.t(a["self"])
    vals = ctx.cast(ctx.t(a["values"]), x.dtype)
    acc = bool(a["accumulate"])
    idx = list(a["indices"])
    while idx and idx[-1] is None:
        idx.pop()
    pos = [i for i, v in enumerate(idx) if v is not None]
    if not pos:  # x[...] = v: every element written
        full = ctx.emit("expand", [vals], shape=x.shape)
        return ctx.emit("add", [x, full]) if acc else full
    if pos != list(range(pos[0], pos[-1] + 1)):
        raise FrontendError(f"{ctx.node_name}: index_put with non-adjacent index tensors")
    ivs = [ctx.t(idx[i]) for i in pos]
    if len(ivs) == 1 and ivs[0].dtype is dt.boolean and pos[0] == 0 and \
            math.prod(d if isinstance(d, int) else 2 for d in vals.shape) == 1:
        # x[mask] = scalar: a select, whatever the mask holds (the mask covers leading dims)
        mask = ivs[0]
        if mask.type.rank < x.type.rank:
            mask = ctx.emit("unsqueeze", [mask], axes=tuple(range(mask.type.rank, x.type.rank)))
        v = ctx.emit("reshape", [vals], shape=())
        if acc:
            return ctx.emit("add", [x, ctx.emit("where", [mask, v, ctx.scalar(0, x.dtype)])])
        return ctx.emit("where", [mask, v, x])
    if any(v.dtype in (dt.boolean, dt.u8) for v in ivs):
        raise FrontendError(f"{ctx.node_name}: index_put with a boolean mask (data-dependent "
                            f"positions); use torch.where instead")
    p, k, r = pos[0], len(pos), x.type.rank
    bshape = broadcast_shapes(*[v.shape for v in ivs])
    parts = []
    for v in ivs:
        v = ctx.cast(v, dt.i64)
        if not all(dims_equal(s, t) for s, t in zip(v.shape, bshape)) or v.type.rank != len(bshape):
            v = ctx.emit("expand", [v], shape=bshape)
        parts.append(ctx.emit("unsqueeze", [v], axes=(len(bshape),)))
    tuples = parts[0] if k == 1 else ctx.emit("concat", parts, axis=len(bshape))
    # the values, broadcast to torch's x[idx] shape, with the B dims first
    nb = len(bshape)
    target = tuple(x.shape[:p]) + tuple(bshape) + tuple(x.shape[p + k:])
    if vals.type.rank != len(target) or not all(dims_equal(s, t) for s, t in zip(vals.shape, target)):
        vals = ctx.emit("expand", [vals], shape=target)
    upd, _ = _move_to_front(ctx, vals, tuple(range(p, p + nb)))
    xf, inv = _move_to_front(ctx, x, tuple(range(p, p + k)))
    assert r == xf.type.rank
    y = ctx.emit("scatter_nd", [xf, tuples, upd], reduction="add" if acc else "none")
    return _unpermute(ctx, y, inv)


@aten("slice_scatter.default")
def _slice_scatter(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """``x[start:end:step]`` along ``dim`` replaced by ``src``."""
    x = ctx.t(a["self"])
    src = ctx.cast(ctx.t(a["src"]), x.dtype)
    axis = int(a["dim"]) % x.type.rank
    size = x.shape[axis]
    step = int(a["step"])
    start = _norm_index(ctx.dim(a["start"]) if a["start"] is not None else 0, size)
    m = src.shape[axis]  # how many rows are written (torch checks src has exactly that many)
    if dims_equal(m, size):
        return src  # every row replaced
    if step == 1:
        pieces = []
        if not (isinstance(start, int) and start == 0):
            pieces.append(ctx.emit("slice", [x], starts=(0,), ends=(start,), axes=(axis,), steps=(1,)))
        pieces.append(src)
        stop = canon_dim(start + m)
        if not dims_equal(stop, size):
            pieces.append(ctx.emit("slice", [x], starts=(stop,), ends=(_END,), axes=(axis,), steps=(1,)))
        return pieces[0] if len(pieces) == 1 else ctx.emit("concat", pieces, axis=axis)
    rows = ctx.emit("arange", [], start=start, end=canon_dim(start + m * step), step=step, dtype="i64")
    return scatter_rows(ctx, x, axis, rows, src)


@aten("select_scatter.default")
def _select_scatter(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """``x.select(dim, index)`` replaced by ``src`` (which lacks that dim)."""
    x = ctx.t(a["self"])
    axis = int(a["dim"]) % x.type.rank
    size = x.shape[axis]
    i = _norm_index(ctx.dim(a["index"]), size)
    src = ctx.emit("unsqueeze", [ctx.cast(ctx.t(a["src"]), x.dtype)], axes=(axis,))
    pieces = []
    if not (isinstance(i, int) and i == 0):
        pieces.append(ctx.emit("slice", [x], starts=(0,), ends=(i,), axes=(axis,), steps=(1,)))
    pieces.append(src)
    if not dims_equal(canon_dim(i + 1), size):
        pieces.append(ctx.emit("slice", [x], starts=(canon_dim(i + 1),), ends=(_END,), axes=(axis,),
                               steps=(1,)))
    return pieces[0] if len(pieces) == 1 else ctx.emit("concat", pieces, axis=axis)


@aten("copy.default")
def _copy_into(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """``x.copy_(src)`` functionalised: src broadcast to x's shape in x's dtype."""
    x = ctx.t(a["self"])
    src = ctx.cast(ctx.t(a["src"]), x.dtype)
    if src.type.rank == x.type.rank and all(dims_equal(s, t) for s, t in zip(src.shape, x.shape)):
        return src
    return ctx.emit("expand", [src], shape=x.shape)


# ---- padding ----------------------------------------------------------------------------------


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


@aten("pad.default")
def _pad_any(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """``F.pad`` in any mode (torch lists (begin, end) pairs from the last dim backwards)."""
    x = ctx.t(a["self"])
    r = x.type.rank
    pad = ctx.dims(a["pad"])
    mode = str(a["mode"])
    if len(pad) % 2 or len(pad) // 2 > r:
        raise FrontendError(f"{ctx.node_name}: pad list {list(pad)} does not fit a rank-{r} tensor")
    pairs = {r - 1 - j: (pad[2 * j], pad[2 * j + 1]) for j in range(len(pad) // 2)}
    if mode == "circular":
        return _circular(ctx, x, pairs)
    if mode not in _PAD_MODES:
        raise FrontendError(f"{ctx.node_name}: pad mode {mode!r} is not supported")
    begins = [pairs.get(d, (0, 0))[0] for d in range(r)]
    ends = [pairs.get(d, (0, 0))[1] for d in range(r)]
    if all(isinstance(p, int) and p == 0 for p in begins + ends):
        return x
    value = a.get("value")
    if mode != "constant" and value not in (None, 0, 0.0):
        raise FrontendError(f"{ctx.node_name}: pad value {value} is only meaningful in constant mode")
    return ctx.emit("pad", [x], pads=tuple(begins + ends), mode=_PAD_MODES[mode],
                    value=float(value or 0.0))


def _circular(ctx: Ctx, x: Value, pairs: dict[int, tuple[Dim, Dim]]) -> Value:
    """Circular (wrap-around) padding: each padded axis becomes concat(x[-b:], x, x[:e]).

    As in torch, negative amounts first crop the axis and positive ones then wrap the cropped
    rows; axes go from the last one backwards, so corners take the wrapped values of
    already-padded rows, which is the same as wrapping both axes at once."""
    for ax in sorted(pairs, reverse=True):
        b, e = pairs[ax]
        if not isinstance(b, int) or not isinstance(e, int):
            raise FrontendError(f"{ctx.node_name}: circular padding by a symbolic amount ({b}, {e})")
        if b < 0 or e < 0:  # crop first
            x = ctx.emit("slice", [x], starts=(max(-b, 0),), ends=(e if e < 0 else _END,), axes=(ax,),
                         steps=(1,))
            b, e = max(b, 0), max(e, 0)
        size = x.shape[ax]
        if isinstance(size, int) and max(b, e) > size:
            raise FrontendError(f"{ctx.node_name}: circular padding by {max(b, e)} wraps more than "
                                f"once around an axis of size {size}")
        pieces = []
        if b:
            pieces.append(_rows(ctx, x, ax, canon_dim(size - b), size))
        pieces.append(x)
        if e:
            pieces.append(_rows(ctx, x, ax, 0, e))
        if len(pieces) > 1:
            x = ctx.emit("concat", pieces, axis=ax)
    return x


def _rows(ctx: Ctx, x: Value, ax: int, start: Dim, end: Dim) -> Value:
    """Rows start..end of ``ax``. On a symbolic axis a slice's length would carry clamps the
    IR cannot drop (Min(b, H)); torch's guard says the rows exist, so they are gathered by an
    explicit index of exactly end - start rows."""
    if isinstance(x.shape[ax], int):
        return ctx.emit("slice", [x], starts=(start,), ends=(end,), axes=(ax,), steps=(1,))
    idx = ctx.emit("arange", [], start=start, end=end, step=1, dtype="i64")
    return ctx.emit("gather", [x, idx], axis=ax)


# ---- windows ----------------------------------------------------------------------------------


@aten("unfold.default")
def _tensor_unfold(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """``x.unfold(d, size, step)``: axis d becomes the window count and a last axis of length
    ``size`` is appended; window i holds rows ``i * step .. i * step + size - 1``."""
    x = ctx.t(a["self"])
    r = x.type.rank
    if r == 0:
        raise FrontendError(f"{ctx.node_name}: unfold of a 0-d tensor")
    axis = int(a["dimension"]) % r
    size, step = int(a["size"]), int(a["step"])
    nwin = ctx.out_type(n).shape[axis]
    if isinstance(nwin, int):
        table = (torch.arange(nwin)[:, None] * step + torch.arange(size)[None, :]).to(torch.int64)
        index = ctx.const(table, dt.i64)
    else:
        starts = ctx.emit("arange", [], start=0, end=canon_dim(nwin * step), step=step, dtype="i64")
        offs = ctx.const(torch.arange(size, dtype=torch.int64)[None, :], dt.i64)
        index = ctx.emit("add", [ctx.emit("unsqueeze", [starts], axes=(1,)), offs])
    y = ctx.emit("gather", [x, index], axis=axis)  # x.shape[:d] + [nwin, size] + x.shape[d+1:]
    if axis == r - 1:
        return y
    perm = tuple(d for d in range(r + 1) if d != axis + 1) + (axis + 1,)
    return ctx.emit("transpose", [y], perm=perm)
