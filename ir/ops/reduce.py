"""Reductions and scans (family "reduce"): reduce_* over axes, var/std, argmax/argmin, topk,
cumsum.

Dtype policy: float reductions accept f64/f32/f16/bf16 and compute f16/bf16 in f32, rounding
once; integer inputs (i64/i32/i16/i8/u8) are allowed where the result is exact in the input
type (sum, prod and sum_square wrap around like two's-complement kernels); max/min also take
bool. Every reduction keeps its input's dtype, except argmax/argmin/topk indices (i64).
"""
from __future__ import annotations

from typing import Callable, Sequence

import sympy
import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, dim_str
from .common import norm_axis, require
from .registry import AttrSpec, Cost, defop, io_bytes, numel

FLOATS = ("f64", "f32", "f16", "bf16")
INTS = ("i64", "i32", "i16", "i8", "u8")
_HALF = (torch.float16, torch.bfloat16)


def _require_dtype(t: TensorType, allowed: Sequence[str], what: str = "x") -> None:
    if t.dtype.name not in allowed:
        raise ShapeError(f"{what} must be one of {', '.join(allowed)}, got {t.dtype.name}")


def _up(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _HALF else t


def reduced_axes(axes: Sequence[int] | None, rank: int) -> tuple[int, ...]:
    """Sorted non-negative axes; None or empty means every axis. Raises ShapeError on an
    out-of-range or repeated axis."""
    if not axes:
        return tuple(range(rank))
    out = sorted(norm_axis(a, rank) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"axes {tuple(axes)} repeat an axis")
    return tuple(out)


def _reduced_shape(shape: Sequence[Dim], axes: Sequence[int], keepdims: bool) -> tuple[Dim, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)


# ---- reduce_* --------------------------------------------------------------------------------

Reducer = Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]


def _prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    # torch.prod reduces one dim at a time; going from the last keeps earlier indices valid.
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _extreme(fn: Reducer, x: torch.Tensor, d: Sequence[int], k: bool, low: bool) -> torch.Tensor:
    """amax / amin, and over an empty set ONNX's identity (ReduceMax-18: -inf, or the type's
    smallest value; ReduceMin the opposite), where torch refuses to reduce."""
    if all(x.shape[a] for a in d):
        return fn(x, dim=d, keepdim=k)
    shape = [1 if a in d else n for a, n in enumerate(x.shape)] if k else \
        [n for a, n in enumerate(x.shape) if a not in d]
    if x.dtype == torch.bool:
        fill: float | int | bool = low
    elif x.dtype.is_floating_point:
        fill = float("inf") if low else float("-inf")
    else:
        info = torch.iinfo(x.dtype)
        fill = info.max if low else info.min
    return torch.full(shape, fill, dtype=x.dtype, device=x.device)


_REDUCERS: dict[str, tuple[Reducer, Sequence[str], int, str]] = {
    # name: (torch function, dtypes, flops per input element, semantics)
    "reduce_sum": (lambda x, d, k: torch.sum(x, dim=d, keepdim=k), FLOATS + INTS, 1,
                   "the sum of the elements"),
    "reduce_mean": (lambda x, d, k: torch.mean(x, dim=d, keepdim=k), FLOATS, 1,
                    "the arithmetic mean of the elements"),
    "reduce_max": (lambda x, d, k: _extreme(torch.amax, x, d, k, False), FLOATS + INTS + ("bool",), 1,
                   "the largest element (NaN propagates; over no elements -inf, or the type's "
                   "smallest value)"),
    "reduce_min": (lambda x, d, k: _extreme(torch.amin, x, d, k, True), FLOATS + INTS + ("bool",), 1,
                   "the smallest element (NaN propagates; over no elements +inf, or the type's "
                   "largest value)"),
    "reduce_prod": (_prod, FLOATS + INTS, 1, "the product of the elements"),
    "reduce_l2": (lambda x, d, k: torch.linalg.vector_norm(x, 2, dim=d, keepdim=k), FLOATS, 2,
                  "sqrt(sum(x^2)), the Euclidean norm"),
    "reduce_sum_square": (lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k), FLOATS + INTS, 2,
                          "sum(x^2)"),
    "reduce_logsumexp": (lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k), FLOATS, 4,
                         "log(sum(exp(x))), computed stably"),
}


def _reduce_shape(allowed: Sequence[str]) -> Callable:
    def shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
        x = require(ins[0], "x")
        _require_dtype(x, allowed)
        axes = reduced_axes(attrs["axes"], x.rank)
        if "correction" in attrs and attrs["correction"] < 0:
            raise ShapeError(f"correction must be >= 0, got {attrs['correction']}")
        return [TensorType(x.dtype, _reduced_shape(x.shape, axes, attrs["keepdims"]))]
    return shape


def _reduce_ref(fn: Reducer) -> Callable:
    def ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
        x = xs[0]
        if x.dim() == 0:  # a scalar reduces as a one-element vector
            return ref([x.reshape(1)], attrs.replace(axes=None, keepdims=False))
        y = fn(_up(x), reduced_axes(attrs["axes"], x.dim()), attrs["keepdims"])
        return y.to(x.dtype)
    return ref


def _reduce_cost(per_element: int) -> Callable:
    def cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
        return Cost(per_element * numel(ins[0]), io_bytes(ins, outs))
    return cost


_ONNX = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
         "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd", "reduce_l2": "ReduceL2",
         "reduce_sum_square": "ReduceSumSquare", "reduce_logsumexp": "ReduceLogSumExp"}
_AXES = {"axes": AttrSpec("ints", None, doc="axes to reduce; None or empty = all"),
         "keepdims": AttrSpec("bool", True)}
_AXES_DOC = ("axes lists the reduced axes (negative counts from the end; None or empty reduces "
             "every axis, a repeated axis is an error); with keepdims each reduced axis stays as "
             "size 1, otherwise it is removed. A 0-d x reduces as a single element.")

for _name, (_fn, _dtypes, _flops, _what) in _REDUCERS.items():
    defop(_name, family="reduce", inputs=1, input_names=("x",), attrs=_AXES,
          shape=_reduce_shape(_dtypes), reference=_reduce_ref(_fn), cost=_reduce_cost(_flops),
          doc=f"Reduces x over the given axes to {_what} (ONNX {_ONNX[_name]}). "
              f"{_AXES_DOC} Output has x's dtype; allowed dtypes: {', '.join(_dtypes)}.")


def _var(x: torch.Tensor, dims: tuple[int, ...], keep: bool, correction: int) -> torch.Tensor:
    return torch.var(x, dim=dims, correction=correction, keepdim=keep)


for _name, _sqrt in (("reduce_var", False), ("reduce_std", True)):
    def _make(sqrt: bool) -> Callable:
        def ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
            x = xs[0]
            xr = x.reshape(1) if x.dim() == 0 else _up(x)
            axes = reduced_axes(attrs["axes"] if x.dim() else None, xr.dim())
            y = _var(xr, axes, attrs["keepdims"] and x.dim() > 0, attrs["correction"])
            return (y.sqrt() if sqrt else y).to(x.dtype)
        return ref

    defop(_name, family="reduce", inputs=1, input_names=("x",),
          attrs={**_AXES, "correction": AttrSpec("int", 0)}, shape=_reduce_shape(FLOATS),
          reference=_make(_sqrt), cost=_reduce_cost(3 + int(_sqrt)),
          doc=f"{'Standard deviation' if _sqrt else 'Variance'} of x over the given axes: "
              f"{'sqrt(' if _sqrt else ''}sum((x - mean)^2) / (n - correction){')' if _sqrt else ''} "
              f"with n the number of reduced elements (correction 0 = biased, 1 = Bessel; torch "
              f"var/std). {_AXES_DOC} Float dtypes only; output has x's dtype.")


# ---- argmax / argmin -------------------------------------------------------------------------

def _arg_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    _require_dtype(x, FLOATS + INTS)
    if x.rank == 0:
        raise ShapeError("x must have rank >= 1")
    axis = norm_axis(attrs["axis"], x.rank)
    return [TensorType("i64", _reduced_shape(x.shape, (axis,), attrs["keepdims"]))]


def _arg_ref(fn: Callable) -> Callable:
    def ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
        x = _up(xs[0])
        axis = norm_axis(attrs["axis"], x.dim())
        if not attrs["select_last_index"]:
            return fn(x, dim=axis, keepdim=attrs["keepdims"])
        # torch picks the first extreme; on the reversed axis that is the last one.
        idx = fn(x.flip(axis), dim=axis, keepdim=attrs["keepdims"])
        return x.shape[axis] - 1 - idx
    return ref


_ARG_ATTRS = {"axis": AttrSpec("int", 0), "keepdims": AttrSpec("bool", True),
              "select_last_index": AttrSpec("bool", False)}

for _name, _fn in (("argmax", torch.argmax), ("argmin", torch.argmin)):
    _which = "largest" if _name == "argmax" else "smallest"
    defop(_name, family="reduce", inputs=1, input_names=("x",), attrs=_ARG_ATTRS,
          shape=_arg_shape, reference=_arg_ref(_fn), cost=_reduce_cost(1),
          doc=f"Index (i64) of the {_which} element of x along `axis` (default 0, ONNX "
              f"{_name.title().replace('m', 'M', 1)}). Ties give the first index, or the last with "
              f"select_last_index. With keepdims the axis stays as size 1, otherwise it is "
              f"removed. x is float or integer (rank >= 1).")


# ---- topk ------------------------------------------------------------------------------------

def _topk_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    _require_dtype(x, FLOATS + INTS)
    if x.rank == 0:
        raise ShapeError("x must have rank >= 1")
    axis = norm_axis(attrs["axis"], x.rank)
    k, n = attrs["k"], x.shape[axis]
    if isinstance(k, int) and k < 0:
        raise ShapeError(f"k must be >= 0, got {k}")
    if sympy.sympify(k - n).is_positive:
        raise ShapeError(f"k = {dim_str(k)} exceeds the size {dim_str(n)} of axis {axis}")
    out = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    return [TensorType(x.dtype, out), TensorType("i64", out)]


def _topk_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> tuple[torch.Tensor, torch.Tensor]:
    x, k = xs[0], attrs["k"]
    if not isinstance(k, int):
        raise ShapeError(f"topk: k = {dim_str(k)} is not bound to an integer; bind symbols with "
                         f"ops.common.bind_dims before running the reference")
    axis = norm_axis(attrs["axis"], x.dim())
    # A stable sort makes ties deterministic: equal values keep ascending index order (ONNX).
    vals, idx = torch.sort(_up(x), dim=axis, descending=attrs["largest"], stable=True)
    return vals.narrow(axis, 0, k).to(x.dtype), idx.narrow(axis, 0, k)


def _topk_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(numel(ins[0]) * 2, io_bytes(ins, outs))


defop("topk", family="reduce", inputs=1, input_names=("x",),
      attrs={"k": AttrSpec("dim"), "axis": AttrSpec("int", -1), "largest": AttrSpec("bool", True),
             "sorted": AttrSpec("bool", True)},
      shape=_topk_shape, reference=_topk_ref, cost=_topk_cost,
      doc="The k largest (or with largest=false smallest) elements of x along `axis` and their "
          "i64 indices (ONNX TopK): two outputs, both of x's shape with that axis replaced by k "
          "(an int or symbolic dim, at most the axis size). With sorted they come in order "
          "(descending for largest, ascending otherwise); without, the order is unspecified "
          "(the reference still sorts). Equal values come lower index first. Float or integer x.")


# ---- cumsum ----------------------------------------------------------------------------------

def _cumsum_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    _require_dtype(x, FLOATS + INTS)
    if x.rank == 0:
        raise ShapeError("x must have rank >= 1")
    norm_axis(attrs["axis"], x.rank)
    return [x]


def _cumsum_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = _up(xs[0])
    axis = norm_axis(attrs["axis"], x.dim())
    if attrs["reverse"]:
        x = x.flip(axis)
    y = torch.cumsum(x, dim=axis)
    if attrs["exclusive"]:
        # Shift by one rather than subtracting x, so float results match an exclusive scan.
        y = torch.cat([torch.zeros_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)],
                      dim=axis)
    if attrs["reverse"]:
        y = y.flip(axis)
    return y.to(xs[0].dtype)


defop("cumsum", family="reduce", inputs=1, input_names=("x",),
      attrs={"axis": AttrSpec("int"), "exclusive": AttrSpec("bool", False),
             "reverse": AttrSpec("bool", False)},
      shape=_cumsum_shape, reference=_cumsum_ref, cost=_reduce_cost(1),
      doc="Running sum of x along `axis` (ONNX CumSum): y[i] = sum of x[j] for j <= i; exclusive "
          "uses j < i (the first element is 0); reverse sums from the end (j >= i, or j > i when "
          "also exclusive). Output has x's type; integer sums wrap in x's dtype.")
