"""ATen -> IR: reductions (sum, mean, max, var, argmax, cumsum, topk) and tensor creation
(arange, full, zeros, ones; folded to constants when their shape is static)."""
from __future__ import annotations

from typing import Any

import sympy
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from ..ir.types import canon_dim
import torch

from .aten_table import Ctx, Handler, aten


# ---- reductions -------------------------------------------------------------------------------


def _axes(d: Any) -> tuple[int, ...] | None:
    if d is None:
        return None
    if isinstance(d, int):
        return (d,)
    return tuple(int(x) for x in d) or None


def _reduce(ir_op: str, cast_first: bool = True) -> Handler:
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        out = ctx.out_dtype(n)
        x = ctx.t(a["self"])
        if cast_first:
            x = ctx.cast(x, out)
        if x.type.rank == 0:
            return ctx.emit("identity", [x])
        return ctx.emit(ir_op, [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)))
    return h


aten("sum.dim_IntList", "sum.default")(_reduce("reduce_sum"))
aten("mean.dim", "mean.default")(_reduce("reduce_mean"))
aten("amax.default", "max.default")(_reduce("reduce_max"))
aten("amin.default", "min.default")(_reduce("reduce_min"))
aten("prod.dim_int", "prod.default")(_reduce("reduce_prod"))
aten("logsumexp.default")(_reduce("reduce_logsumexp"))


@aten("any.dim", "any.dims", "any.default", "all.dim", "all.dims", "all.default")
def _any_all(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.cast(ctx.t(a["self"]), dt.boolean)
    op = "reduce_max" if "any" in str(n.target) else "reduce_min"
    return ctx.emit(op, [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)))


@aten("var.correction", "var.dim", "std.correction", "std.dim")
def _var(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    corr = a.get("correction")
    if "unbiased" in a:
        corr = 1 if a["unbiased"] else 0
    op = "reduce_var" if "var" in str(n.target) else "reduce_std"
    return ctx.emit(op, [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)),
                    correction=1 if corr is None else int(corr))


@aten("var_mean.correction", "var_mean.dim", "std_mean.correction", "std_mean.dim")
def _var_mean(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    """torch.var_mean / std_mean: the spread as ``_var`` gives it, and the mean over the same
    axes."""
    spread = _var(ctx, n, a)
    x = ctx.t(a["self"])
    mean = ctx.emit("reduce_mean", [x], axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)))
    return spread, mean


@aten("linalg_vector_norm.default")
def _vector_norm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """torch.linalg.vector_norm (F.normalize, torch.norm): the p-norm over ``dim`` (all dims
    when None) of x in the result's dtype (``p_norm``)."""
    out = ctx.out_dtype(n)
    x = ctx.cast(ctx.t(a["self"]), out)
    kw = dict(axes=_axes(a.get("dim")), keepdims=bool(a.get("keepdim", False)))
    if x.type.rank == 0:
        kw["axes"] = None
        x = ctx.emit("reshape", [x], shape=(1,))
        kw["keepdims"] = False
    return p_norm(ctx, x, float(a.get("ord", 2)), **kw)


def p_norm(ctx: Ctx, x: Value, p: float, axes: tuple[int, ...] | None, keepdims: bool) -> Value:
    """The p-norm of float ``x`` over ``axes``: 2 -> reduce_l2, 1 -> sum |x|, inf / -inf ->
    max / min |x|, 0 -> the count of non-zeros, else (sum |x|^p)^(1/p)."""
    out = x.dtype
    kw = dict(axes=axes, keepdims=keepdims)
    if p == 2:
        return ctx.emit("reduce_l2", [x], **kw)
    if p == 0:
        nz = ctx.cast(ctx.emit("ne", [x, ctx.scalar(0, out)]), out)
        return ctx.emit("reduce_sum", [nz], **kw)
    ax = ctx.emit("abs", [x])
    if p == float("inf"):
        return ctx.emit("reduce_max", [ax], **kw)
    if p == float("-inf"):
        return ctx.emit("reduce_min", [ax], **kw)
    if p == 1:
        return ctx.emit("reduce_sum", [ax], **kw)
    # |x|^p overflows half types long before the norm does: torch sums in float32, so here too
    wide = dt.f32 if out in (dt.f16, dt.bf16) else out
    ax = ctx.cast(ax, wide)
    total = ctx.emit("reduce_sum", [ctx.emit("pow", [ax, ctx.scalar(p, wide)])], **kw)
    return ctx.cast(ctx.emit("pow", [total, ctx.scalar(1.0 / p, wide)]), out)


@aten("_cdist_forward.default")
def _cdist(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """torch.cdist: the p-norm of every row difference, [..., P, M] x [..., R, M] ->
    [..., P, R], from the [..., P, R, M] differences (torch's matrix-product shortcut for p = 2
    on large inputs rounds differently, within a few ulps of the norm)."""
    x1, x2 = ctx.t(a["x1"]), ctx.t(a["x2"])
    if not x1.dtype.is_float or x1.type.rank < 2 or x2.type.rank < 2:
        raise FrontendError(f"{ctx.node_name}: cdist of {x1.type} and {x2.type}")
    diff = ctx.emit("sub", [ctx.emit("unsqueeze", [x1], axes=(-2,)), ctx.emit("unsqueeze", [x2], axes=(-3,))])
    return p_norm(ctx, diff, float(a["p"]), axes=(-1,), keepdims=False)


@aten("searchsorted.Tensor", "searchsorted.Scalar")
def _searchsorted(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """torch.searchsorted / bucketize's general form: for each value, how many entries of the
    sorted last axis lie below it (``right``: at or below), counted by one comparison table
    [..., K, M]; ``sorter`` first reorders the sequence."""
    seq = ctx.t(a["sorted_sequence"])
    v = a["self"]
    right = bool(a.get("right", False)) or a.get("side") == "right"
    if seq.type.rank == 0:
        raise FrontendError(f"{ctx.node_name}: searchsorted in a 0-d sequence")
    if a.get("sorter") is not None:
        seq = ctx.emit("gather_elements", [seq, ctx.t(a["sorter"])], axis=-1)
    vals = ctx.t(v) if isinstance(v, fx.Node) else ctx.scalar(v, seq.dtype)
    if vals.dtype is not seq.dtype:
        common = seq.dtype if seq.dtype.is_float else vals.dtype
        seq, vals = ctx.cast(seq, common), ctx.cast(vals, common)
    if seq.type.rank == 1:
        table = ctx.emit("le" if right else "lt", [seq, ctx.emit("unsqueeze", [vals], axes=(-1,))])
    else:
        if vals.type.rank != seq.type.rank:
            raise FrontendError(f"{ctx.node_name}: searchsorted values {vals.type} for a sequence {seq.type}")
        table = ctx.emit("le" if right else "lt", [ctx.emit("unsqueeze", [seq], axes=(-2,)),
                                                   ctx.emit("unsqueeze", [vals], axes=(-1,))])
    count = ctx.emit("reduce_sum", [ctx.cast(table, dt.i64)], axes=(-1,), keepdims=False)
    return ctx.cast(count, dt.i32 if a.get("out_int32") else dt.i64)


@aten("max.dim", "min.dim")
def _max_dim(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    x = ctx.t(a["self"])
    is_max = "max" in str(n.target)
    k, ax = bool(a["keepdim"]), int(a["dim"])
    vals = ctx.emit("reduce_max" if is_max else "reduce_min", [x], axes=(ax,), keepdims=k)
    idx = ctx.emit("argmax" if is_max else "argmin", [x], axis=ax, keepdims=k)
    return vals, idx


@aten("argmax.default", "argmin.default")
def _argmax(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    op = "argmax" if "argmax" in str(n.target) else "argmin"
    if a["dim"] is None:
        flat = ctx.emit("reshape", [x], shape=(-1,))
        r = ctx.emit(op, [flat], axis=0, keepdims=False)
        return ctx.emit("reshape", [r], shape=ctx.out_type(n).shape) if a["keepdim"] else r
    return ctx.emit(op, [x], axis=int(a["dim"]), keepdims=bool(a["keepdim"]))


@aten("cumsum.default")
def _cumsum(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.cast(ctx.t(a["self"]), ctx.out_dtype(n))
    return ctx.emit("cumsum", [x], axis=int(a["dim"]))


@aten("topk.default")
def _topk(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    return ctx.emit("topk", [ctx.t(a["self"])], k=ctx.dim(a["k"]), axis=int(a["dim"]),
                    largest=bool(a["largest"]), sorted=bool(a["sorted"]))


@aten("sort.default", "sort.stable")
def _sort(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    # a full sort is a top-k of the whole axis (equal values keep their order, as stable=True)
    x = ctx.t(a["self"])
    axis = int(a["dim"]) % max(x.type.rank, 1)
    if x.type.rank == 0:
        return x, ctx.const(torch.zeros((), dtype=torch.int64))
    return ctx.emit("topk", [x], k=x.shape[axis], axis=axis, largest=bool(a["descending"]), sorted=True)


def _order_stat(ctx: Ctx, x: Value, axis: int, k: Any, keepdim: bool) -> tuple[Value, Value]:
    """The value and index of the element at (0-based) position ``k`` of ``x`` sorted
    ascending along ``axis`` (NaN last, as torch sorts); ``k`` an int or a Value of indices
    with the keepdims shape."""
    vals, idx = ctx.emit("topk", [x], k=x.shape[axis], axis=axis, largest=False, sorted=True)
    if isinstance(k, Value):
        v, i = ctx.emit("gather_elements", [vals, k], axis=axis), ctx.emit("gather_elements", [idx, k], axis=axis)
        if not keepdim:
            v, i = ctx.emit("squeeze", [v], axes=(axis,)), ctx.emit("squeeze", [i], axes=(axis,))
        return v, i
    # a 0-d index drops the axis; it may be symbolic (the median of a dynamic axis)
    at = ctx.scalar(k, dt.i64)
    v, i = ctx.emit("gather", [vals, at], axis=axis), ctx.emit("gather", [idx, at], axis=axis)
    if keepdim:
        v, i = ctx.emit("unsqueeze", [v], axes=(axis,)), ctx.emit("unsqueeze", [i], axes=(axis,))
    return v, i


def _whole_axis(ctx: Ctx, a: dict) -> tuple[Value, int]:
    x = ctx.t(a["self"])
    if "dim" not in a:   # median.default: over every element
        x = ctx.emit("reshape", [x], shape=(-1,))
        return x, 0
    if x.type.rank == 0:
        x = ctx.emit("reshape", [x], shape=(1,))
    return x, int(a["dim"]) % x.type.rank


def _rank0(ctx: Ctx, a: dict, pair: tuple[Value, Value]) -> tuple[Value, Value]:
    """A 0-d input's statistic is 0-d (keepdim or not)."""
    if "dim" in a and ctx.t(a["self"]).type.rank == 0:
        return tuple(ctx.emit("reshape", [t], shape=()) for t in pair)  # type: ignore[return-value]
    return pair


@aten("kthvalue.default")
def _kthvalue(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value]:
    """torch.kthvalue: the k-th smallest (1-based) along ``dim``. Among equal values torch
    may return any of their indices; here the first in the axis."""
    x, axis = _whole_axis(ctx, a)
    k = int(a["k"])
    size = x.shape[axis]
    if not 1 <= k or isinstance(size, int) and k > size:
        raise FrontendError(f"{ctx.node_name}: kthvalue k={k} outside 1..{size}")
    return _rank0(ctx, a, _order_stat(ctx, x, axis, k - 1, bool(a.get("keepdim", False))))


@aten("median.dim", "median.default", "nanmedian.dim", "nanmedian.default")
def _median(ctx: Ctx, n: fx.Node, a: dict) -> Any:
    """torch.median: the lower median ((n - 1) // 2-th smallest) along ``dim`` (of every
    element without it, value only), NaN where the slice holds a NaN (with the first NaN's
    index). nanmedian: the lower median of the slice's non-NaN values, NaN (index 0) where all
    are NaN. Among equal values torch may return any of their indices; here the first."""
    x, axis = _whole_axis(ctx, a)
    keep = bool(a.get("keepdim", False)) if "dim" in a else False
    size = x.shape[axis]
    lower = max(size - 1, 0) // 2 if isinstance(size, int) else canon_dim(sympy.floor((size - 1) / 2))
    if not x.dtype.is_float:        # integers: no NaN to place or skip
        pair = _order_stat(ctx, x, axis, lower, keep)
    elif "nanmedian" in str(n.target):
        real = ctx.cast(ctx.emit("logical_not", [ctx.emit("isnan", [x])]), dt.i64)
        count = ctx.emit("reduce_sum", [real], axes=(axis,), keepdims=True)
        # (count - 1) / 2 truncates toward zero: an all-NaN slice takes position 0 (a NaN)
        k = ctx.emit("div", [ctx.emit("sub", [count, ctx.scalar(1, dt.i64)]), ctx.scalar(2, dt.i64)])
        pair = _order_stat(ctx, x, axis, k, keep)
    else:
        nan = ctx.emit("isnan", [x])
        v, i = _order_stat(ctx, x, axis, lower, keep)
        any_nan = ctx.emit("reduce_max", [nan], axes=(axis,), keepdims=keep)
        first_nan = ctx.emit("argmax", [ctx.cast(nan, dt.i32)], axis=axis, keepdims=keep)
        pair = (ctx.emit("where", [any_nan, ctx.scalar(float("nan"), x.dtype), v]),
                ctx.emit("where", [any_nan, first_nan, i]))
    pair = _rank0(ctx, a, pair)
    return pair if "dim" in a else pair[0]


# ---- creation ---------------------------------------------------------------------------------


def _dtype_of(ctx: Ctx, n: fx.Node) -> str:
    return ctx.out_dtype(n).name


@aten("arange.default", "arange.start", "arange.start_step")
def _arange(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    start, end, step = a.get("start", 0), a["end"], a.get("step", 1)
    vals = [ctx.scalar_or_tensor(x) for x in (start, end, step)]
    if all(isinstance(v, (int, sympy.Basic)) and not isinstance(v, bool) and
           (not isinstance(v, sympy.Basic) or v.is_integer) for v in vals) and isinstance(vals[2], int):
        r = ctx.emit("arange", [], start=canon_dim(vals[0]) if not isinstance(vals[0], int) else vals[0],
                     end=canon_dim(vals[1]) if not isinstance(vals[1], int) else vals[1],
                     step=vals[2], dtype=_dtype_of(ctx, n) if not ctx.out_dtype(n).is_float else "i64")
        return ctx.cast(r, ctx.out_dtype(n))
    if all(isinstance(v, (int, float)) for v in vals):
        t = torch.arange(*vals, dtype=ctx.meta(n).dtype)
        return ctx.const(t)
    raise FrontendError(f"{ctx.node_name}: arange with symbolic non-integer bounds")


def _full_like_shape(ctx: Ctx, n: fx.Node, value: Any) -> Value:
    t = ctx.out_type(n)
    if isinstance(value, fx.Node):
        v = ctx.scalar_or_tensor(value)
        base = ctx.scalar(v, t.dtype)
        return ctx.emit("expand", [base], shape=t.shape)
    if isinstance(value, bool):
        value = float(value)
    return ctx.emit("full", [], shape=t.shape, value=float(value), dtype=t.dtype.name)


@aten("full.default", "new_full.default", "full_like.default", "fill.Scalar")
def _full(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _full_like_shape(ctx, n, a.get("fill_value", a.get("value")))


@aten("zeros.default", "new_zeros.default", "zeros_like.default", "empty.memory_format",
      "empty_like.default", "new_empty.default", "empty_permuted.default", "empty_strided.default")
def _zeros(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    # Uninitialised memory in torch; zeros are one valid value of it.
    return _full_like_shape(ctx, n, 0.0)


@aten("ones.default", "new_ones.default", "ones_like.default")
def _ones(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _full_like_shape(ctx, n, 1.0)


@aten("scalar_tensor.default")
def _scalar_tensor(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.scalar(ctx.scalar_or_tensor(a["s"]), ctx.out_dtype(n))
