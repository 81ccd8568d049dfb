"""Index-addressed writes and reads with ONNX semantics: scatter_elements (ONNX
ScatterElements/Scatter), scatter_nd (ONNX ScatterND) and gather_nd (ONNX GatherND).

Indices may be negative (counted from the end of the indexed axis), as ONNX allows.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, dim_str, dims_equal
from .common import norm_axis, prod, require
from .registry import AttrSpec, Cost, defop, io_bytes, numel

_REDUCTIONS = ("none", "add", "mul", "max", "min")
_TORCH_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _require_index(t: TensorType, what: str) -> None:
    if t.dtype.name not in ("i32", "i64"):
        raise ShapeError(f"{what} must be i32 or i64, got {t.dtype.name}")


def _wrap(idx: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """Negative indices count from the end (ONNX)."""
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


# ---- scatter_elements ---------------------------------------------------------------------
def _scatter_elements_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    data, idx, upd = require(ins[0], "data"), require(ins[1], "indices"), require(ins[2], "updates")
    _require_index(idx, "indices")
    if data.rank == 0:
        raise ShapeError("scatter_elements needs data of rank >= 1")
    norm_axis(attrs["axis"], data.rank)
    if idx.rank != data.rank or upd.rank != data.rank:
        raise ShapeError(f"scatter_elements needs data, indices, updates of one rank, got "
                         f"{data}, {idx}, {upd}")
    if any(not dims_equal(a, b) for a, b in zip(idx.shape, upd.shape)):
        raise ShapeError(f"scatter_elements indices {idx} and updates {upd} shapes differ")
    if upd.dtype != data.dtype:
        raise ShapeError(f"scatter_elements updates dtype {upd.dtype.name} != data {data.dtype.name}")
    return [data]


def _scatter_elements_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    data, idx, upd = xs
    axis = attrs["axis"] % data.dim()
    idx = _wrap(idx, data.shape[axis])
    red = attrs["reduction"]
    if red == "none":
        return data.scatter(axis, idx, upd)
    if data.dtype == torch.bool:  # scatter_reduce lacks bool; add/max = or, mul/min = and
        out = data.to(torch.uint8).scatter_reduce(axis, idx, upd.to(torch.uint8),
                                                  _TORCH_REDUCE[red] if red in ("max", "min") else
                                                  {"add": "amax", "mul": "amin"}[red])
        return out.bool()
    return data.scatter_reduce(axis, idx, upd, _TORCH_REDUCE[red], include_self=True)


def _scatter_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(numel(ins[2]), io_bytes(ins, outs))


defop("scatter_elements", family="scatter", inputs=3, input_names=("data", "indices", "updates"),
      attrs={"axis": AttrSpec("int", 0), "reduction": AttrSpec("str", "none", _REDUCTIONS)},
      shape=_scatter_elements_shape, reference=_scatter_elements_ref, cost=_scatter_cost,
      doc="scatter_elements(data, indices, updates)[axis, reduction] (ONNX ScatterElements-18): a "
          "copy of data where, for every position p of indices (same rank as data, same shape as "
          "updates), out[p with p[axis] replaced by indices[p]] = updates[p], or combined with "
          "the existing value by reduction add/mul/max/min (applied in index order, including "
          "data's value). indices i32/i64, negative counts from the end of axis. With "
          "reduction none, duplicate indices give an unspecified winner.")


# ---- scatter_nd ---------------------------------------------------------------------------
def _scatter_nd_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    data, idx, upd = require(ins[0], "data"), require(ins[1], "indices"), require(ins[2], "updates")
    _require_index(idx, "indices")
    if idx.rank < 1:
        raise ShapeError("scatter_nd indices need rank >= 1")
    k = idx.shape[-1]
    if not isinstance(k, int) or k > data.rank:
        raise ShapeError(f"scatter_nd indices last dim must be a static int <= rank of data "
                         f"{data.rank}, got {dim_str(k)}")
    want = idx.shape[:-1] + data.shape[k:]
    if upd.rank != len(want) or any(not dims_equal(a, b) for a, b in zip(upd.shape, want)):
        raise ShapeError(f"scatter_nd updates must have shape "
                         f"[{', '.join(dim_str(d) for d in want)}], got {upd}")
    if upd.dtype != data.dtype:
        raise ShapeError(f"scatter_nd updates dtype {upd.dtype.name} != data {data.dtype.name}")
    return [data]


def _linear_index(idx: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Row-major offsets of the (wrapped) index tuples in ``idx[..., k]`` over ``shape[:k]``."""
    k = idx.shape[-1]
    lin = torch.zeros(idx.shape[:-1], dtype=torch.long, device=idx.device)
    for j in range(k):
        lin = lin * shape[j] + _wrap(idx[..., j], shape[j])
    return lin.reshape(-1)


def _scatter_nd_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    data, idx, upd = xs
    k = idx.shape[-1]
    lin = _linear_index(idx, data.shape)
    rows = int(prod(list(data.shape[:k])))
    flat = data.reshape(rows, -1).clone()
    u = upd.reshape(lin.numel(), flat.shape[1])
    red = attrs["reduction"]
    if red == "none":
        flat[lin] = u
    elif data.dtype == torch.bool:
        f8, u8 = flat.to(torch.uint8), u.to(torch.uint8)
        r = {"add": "amax", "max": "amax", "mul": "amin", "min": "amin"}[red]
        flat = f8.scatter_reduce(0, lin[:, None].expand_as(u8), u8, r).bool()
    else:
        flat = flat.scatter_reduce(0, lin[:, None].expand_as(u), u, _TORCH_REDUCE[red])
    return flat.reshape(data.shape)


defop("scatter_nd", family="scatter", inputs=3, input_names=("data", "indices", "updates"),
      attrs={"reduction": AttrSpec("str", "none", _REDUCTIONS)},
      shape=_scatter_nd_shape, reference=_scatter_nd_ref, cost=_scatter_cost,
      doc="scatter_nd(data, indices, updates)[reduction] (ONNX ScatterND-18): indices [..., k] "
          "(k static, <= rank of data) address slices data[i_0, ..., i_{k-1}] of shape "
          "data.shape[k:]; updates [*indices.shape[:-1], *data.shape[k:]]. Output: a copy of "
          "data with each addressed slice replaced by (reduction none) or combined with "
          "(add/mul/max/min, in index order) its update. Negative indices count from the end.")


# ---- gather_nd ----------------------------------------------------------------------------
def _gather_nd_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    data, idx = require(ins[0], "data"), require(ins[1], "indices")
    _require_index(idx, "indices")
    b = attrs["batch_dims"]
    if idx.rank < 1 or data.rank < 1:
        raise ShapeError(f"gather_nd needs data and indices of rank >= 1, got {data}, {idx}")
    if b < 0 or b >= min(data.rank, idx.rank):
        raise ShapeError(f"gather_nd batch_dims {b} must be < min(rank(data), rank(indices))")
    k = idx.shape[-1]
    if not isinstance(k, int) or k < 1 or b + k > data.rank:
        raise ShapeError(f"gather_nd indices last dim must be a static int in 1..{data.rank - b}, "
                         f"got {dim_str(k)}")
    for i in range(b):
        if not dims_equal(data.shape[i], idx.shape[i]):
            raise ShapeError(f"gather_nd batch dim {i} differs: {data}, {idx}")
    return [TensorType(data.dtype, idx.shape[:-1] + data.shape[b + k:])]


def _gather_nd_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    data, idx = xs
    b, k = attrs["batch_dims"], idx.shape[-1]
    nb = int(prod(list(data.shape[:b])))
    d3 = data.reshape(nb, int(prod(list(data.shape[b:b + k]))), *data.shape[b + k:])
    i3 = idx.reshape(nb, -1, k)
    lin = _linear_index(i3, data.shape[b:]).reshape(nb, -1)
    out = d3[torch.arange(nb, device=d3.device)[:, None], lin]
    return out.reshape(*idx.shape[:-1], *data.shape[b + k:])


def _gather_nd_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(numel(ins[1]), io_bytes(ins, outs))


defop("gather_nd", family="scatter", inputs=2, input_names=("data", "indices"),
      attrs={"batch_dims": AttrSpec("int", 0)},
      shape=_gather_nd_shape, reference=_gather_nd_ref, cost=_gather_nd_cost,
      doc="gather_nd(data, indices)[batch_dims] (ONNX GatherND-13): the first batch_dims dims "
          "of data and indices are shared batch dims; each index tuple indices[..., :k] (k = "
          "last dim, static) addresses the slice data[batch, i_0, ..., i_{k-1}] of shape "
          "data.shape[batch_dims+k:]. Output [*indices.shape[:-1], *data.shape[batch_dims+k:]]. "
          "Negative indices count from the end.")
