"""ATen -> IR: ``torch.scatter`` and its reducing forms (``scatter.src`` / ``.value`` /
``.reduce`` / ``.value_reduce``, ``scatter_add``, ``scatter_reduce``), all onto the IR's
``scatter_elements`` (ONNX ScatterElements).

torch lets ``index`` be smaller than ``self`` and ``src`` larger than ``index`` in any dim;
only the index-shaped corner of ``src`` is read, so it is sliced to the index's shape (sizes
may be symbolic). A scalar ``value`` is expanded to that shape.

``scatter_reduce``: sum / prod / amax / amin map onto the add / mul / max / min reductions,
which fold ``self``'s value in (``include_self=True``). With ``include_self=False`` the
positions some index reaches start from the reduction's identity instead (a first scatter
marks them). ``mean`` divides the sum by the count of contributions (plus one for ``self``),
where at least one index reached; untouched positions keep ``self``. Floats only for mean
(torch rounds integer means its own way).
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from ..ir.types import dims_equal
from .aten_table import Ctx, aten

_REDUCE = {"sum": "add", "add": "add", "prod": "mul", "multiply": "mul", "amax": "max", "amin": "min"}


def _index_shaped(ctx: Ctx, src: Value, index: Value) -> Value:
    """``src`` cut to ``index``'s shape (torch reads only that corner of it)."""
    cut = [d for d in range(index.type.rank) if not dims_equal(src.shape[d], index.shape[d])]
    if not cut:
        return src
    return ctx.emit("slice", [src], starts=tuple(0 for _ in cut), ends=tuple(index.shape[d] for d in cut),
                    axes=tuple(cut))


def _updates(ctx: Ctx, a: dict, x: Value, index: Value) -> Value:
    if "src" in a:
        return ctx.cast(_index_shaped(ctx, ctx.t(a["src"]), index), x.dtype)
    val = ctx.scalar(a["value"], x.dtype)
    return ctx.emit("expand", [val], shape=tuple(index.shape))


def _args(ctx: Ctx, a: dict) -> tuple[Value, int, Value]:
    x, index = ctx.t(a["self"]), ctx.t(a["index"])
    if x.type.rank == 0:
        raise FrontendError(f"{ctx.node_name}: scatter into a 0-d tensor")
    if index.type.rank != x.type.rank:
        raise FrontendError(f"{ctx.node_name}: scatter index of rank {index.type.rank} into a tensor of "
                            f"rank {x.type.rank}")
    return x, int(a["dim"]) % x.type.rank, index


@aten("scatter.src", "scatter.value", "scatter.reduce", "scatter.value_reduce", "scatter_add.default")
def _scatter(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x, axis, index = _args(ctx, a)
    upd = _updates(ctx, a, x, index)
    red = "add" if "scatter_add" in str(n.target) else _REDUCE[a["reduce"]] if a.get("reduce") else "none"
    return ctx.emit("scatter_elements", [x, index, upd], axis=axis, reduction=red)


def _identity(ctx: Ctx, red: str, dtype: dt.DType) -> Value:
    """The value a reduction starts from: 0, 1, the lowest or the highest of ``dtype``."""
    if red in ("add", "mul"):
        return ctx.scalar(0 if red == "add" else 1, dtype)
    if dtype.is_float:
        return ctx.scalar(float("-inf") if red == "max" else float("inf"), dtype)
    if dtype is dt.boolean:
        return ctx.scalar(red == "min", dtype)
    info = torch.iinfo(dtype.container)
    return ctx.scalar(info.min if red == "max" else info.max, dtype)


@aten("scatter_reduce.two")
def _scatter_reduce(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x, axis, index = _args(ctx, a)
    upd = _updates(ctx, a, x, index)
    how, include_self = str(a["reduce"]), bool(a.get("include_self", True))
    # where some index lands: a scatter of ones into zeros (counts, for mean)
    ones = ctx.emit("expand", [ctx.scalar(1, dt.i64)], shape=tuple(index.shape))
    zeros = ctx.emit("expand", [ctx.scalar(0, dt.i64)], shape=tuple(x.shape))
    count = ctx.emit("scatter_elements", [zeros, index, ones], axis=axis, reduction="add")
    touched = ctx.emit("gt", [count, ctx.scalar(0, dt.i64)])
    if how == "mean":
        if not x.dtype.is_float:
            raise FrontendError(f"{ctx.node_name}: scatter_reduce mean of {x.dtype.name} (floats only)")
        base = x if include_self else ctx.emit("where", [touched, ctx.scalar(0.0, x.dtype), x])
        total = ctx.emit("scatter_elements", [base, index, upd], axis=axis, reduction="add")
        n_in = count if not include_self else ctx.emit("add", [count, ctx.scalar(1, dt.i64)])
        mean = ctx.emit("div", [total, ctx.cast(n_in, x.dtype)])
        return ctx.emit("where", [touched, mean, x])
    if how not in _REDUCE:
        raise FrontendError(f"{ctx.node_name}: scatter_reduce with reduce={how!r}")
    red = _REDUCE[how]
    base = x if include_self else ctx.emit("where", [touched, _identity(ctx, red, x.dtype), x])
    return ctx.emit("scatter_elements", [base, index, upd], axis=axis, reduction=red)
