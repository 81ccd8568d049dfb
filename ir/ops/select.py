"""Ops whose output size depends on the data (ONNX NonZero, Unique, Compress).

The data-dependent size is a dimension symbol passed in the ``count`` attribute (the frontend
makes a fresh one per node), so that shape inference stays symbolic; the interpreter leaves
such unbound dims unchecked.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, dims_equal
from .common import norm_axis, prod, require
from .registry import AttrSpec, Cost, defop, io_bytes, numel


def _scan_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(numel(ins[0]), io_bytes(ins, outs))


# ---- nonzero ------------------------------------------------------------------------------
def _nonzero_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    return [TensorType("i64", (x.rank, attrs["count"]))]


def _nonzero_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = xs[0]
    if x.dim() == 0:  # numpy treats a scalar as a 1-element vector, but the rank stays 0
        return torch.zeros((0, int(bool(x.item()))), dtype=torch.long, device=x.device)
    return x.nonzero().T.contiguous()


_NONZERO = defop("nonzero", family="select", inputs=1, input_names=("x",),
      attrs={"count": AttrSpec("dim", doc="symbol for the number of non-zero elements")},
      shape=_nonzero_shape, reference=_nonzero_ref, cost=_scan_cost,
      doc="nonzero(x)[count] (ONNX NonZero-13): i64 [rank(x), count] holding the indices of the "
          "non-zero elements of x in row-major order, one column per element; count is a "
          "symbol for that data-dependent number.")


# ---- compress -----------------------------------------------------------------------------
def _compress_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, c = require(ins[0], "x"), require(ins[1], "condition")
    if c.rank != 1 or c.dtype.name != "bool":
        raise ShapeError(f"compress condition must be a 1-D bool tensor, got {c}")
    axis = attrs["axis"]
    if axis is None:
        return [TensorType(x.dtype, (attrs["count"],))]
    a = norm_axis(axis, x.rank)
    return [TensorType(x.dtype, x.shape[:a] + (attrs["count"],) + x.shape[a + 1:])]


def _compress_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, c = xs
    axis = attrs["axis"]
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis %= x.dim()
    n = x.shape[axis]
    if c.numel() > n:
        raise ShapeError(f"compress condition has {c.numel()} entries for an axis of size {n}")
    keep = c.nonzero().reshape(-1)  # a shorter condition leaves the tail out (ONNX)
    return x.index_select(axis, keep)


_COMPRESS = defop("compress", family="select", inputs=2, input_names=("x", "condition"),
      attrs={"axis": AttrSpec("int", None, doc="None: flatten x first"),
             "count": AttrSpec("dim", doc="symbol for the number of selected slices")},
      shape=_compress_shape, reference=_compress_ref, cost=_scan_cost,
      doc="compress(x, condition)[axis, count] (ONNX Compress-11): the slices of x along axis "
          "(of flattened x when axis is None) whose entry in the 1-D bool condition is true; a "
          "condition shorter than the axis drops the remaining slices. The kept size is the "
          "symbol count.")


# ---- unique -------------------------------------------------------------------------------
def _unique_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    n = attrs["count"]
    axis = attrs["axis"]
    if axis is None:
        return [TensorType(x.dtype, (n,)), TensorType("i64", (n,)),
                TensorType("i64", (prod(list(x.shape)),)), TensorType("i64", (n,))]
    a = norm_axis(axis, x.rank)
    return [TensorType(x.dtype, x.shape[:a] + (n,) + x.shape[a + 1:]), TensorType("i64", (n,)),
            TensorType("i64", (x.shape[a],)), TensorType("i64", (n,))]


def _unique_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> tuple[torch.Tensor, ...]:
    x = xs[0]
    axis = attrs["axis"]
    if axis is None:
        rows = x.reshape(-1, 1)
    else:
        axis %= x.dim()
        rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    m = rows.shape[0]
    # torch.unique(dim=0) sorts rows lexicographically, as numpy.unique(axis=...) does
    uniq, inv, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    u = uniq.shape[0]
    first = torch.full((u,), m, dtype=torch.long, device=rows.device).scatter_reduce(
        0, inv, torch.arange(m, device=rows.device), "amin", include_self=True)
    if not attrs["sorted"]:
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(u, device=rows.device)
        uniq, first, counts, inv = uniq[order], first[order], counts[order], rank[inv]
    if axis is None:
        y = uniq.reshape(-1)
    else:
        rest = [s for i, s in enumerate(x.shape) if i != axis]
        y = uniq.reshape(u, *rest).movedim(0, axis)
    return y.contiguous(), first, inv.reshape(-1), counts


def _unique_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    n = numel(ins[0])
    return Cost(n * 16, io_bytes(ins, outs))  # a sort: ~log2 n compares per element


_UNIQUE = defop("unique", family="select", inputs=1, input_names=("x",),
      attrs={"axis": AttrSpec("int", None, doc="None: unique elements of flattened x"),
             "sorted": AttrSpec("bool", True),
             "count": AttrSpec("dim", doc="symbol for the number of unique entries")},
      shape=_unique_shape, reference=_unique_ref, cost=_unique_cost,
      doc="unique(x)[axis, sorted, count] (ONNX Unique-11): four outputs (y, indices, "
          "inverse_indices, counts). y holds the distinct elements of flattened x (axis None) or "
          "the distinct slices along axis, in ascending (lexicographic for slices) order if "
          "sorted else in order of first occurrence; indices[i] is the first position of y[i] "
          "in x (along axis), inverse_indices maps every position of x to its entry of y, "
          "counts[i] is how often y[i] occurs. The number of entries is the symbol count.")


# ---- if_select ----------------------------------------------------------------------------
def _if_select_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    c, t, e = require(ins[0], "cond"), require(ins[1], "then"), require(ins[2], "else")
    if c.dtype.name != "bool" or not dims_equal(prod(list(c.shape)), 1):
        raise ShapeError(f"if_select cond must be one bool, got {c}")
    if t.dtype != e.dtype or t.rank != e.rank:
        raise ShapeError(f"if_select branches must have one dtype and rank, got {t} and {e}")
    if len(attrs["shape"]) != t.rank:
        raise ShapeError(f"if_select shape {attrs['shape']} does not have the branches' rank {t.rank}")
    return [TensorType(t.dtype, tuple(attrs["shape"]))]


def _if_select_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    return xs[1] if bool(xs[0].reshape(-1)[0]) else xs[2]


def _if_select_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(0, io_bytes(ins[:1], outs))


_IF_SELECT = defop("if_select", family="select", inputs=3, input_names=("cond", "then", "else"),
      attrs={"shape": AttrSpec("dims", doc="the output dims: the branches' where they agree, "
                                           "fresh symbols where they differ")},
      shape=_if_select_shape, reference=_if_select_ref, cost=_if_select_cost,
      doc="if_select(cond, then, else)[shape] (an ONNX If on a computed condition, both branches "
          "evaluated): then when the one-element bool cond is true, else otherwise. The branches "
          "share dtype and rank; dims where their shapes differ are symbols bound by this node.")

# each node binds its own count symbol (see OpDef.binds)
_NONZERO.binds = _COMPRESS.binds = _UNIQUE.binds = ("count",)
_IF_SELECT.binds = ("shape",)
