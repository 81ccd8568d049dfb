"""Shape helpers shared by the op families."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import sympy

from ..dim_eval import eval_dim
from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, dim_str, dims_equal


def broadcast_dims(a: Dim, b: Dim) -> Dim:
    """Numpy broadcasting of two dimensions; symbolic dims must be provably equal unless one is 1."""
    if a == 1:
        return b
    if b == 1:
        return a
    if dims_equal(a, b):
        return a
    raise ShapeError(f"cannot broadcast dimensions {dim_str(a)} and {dim_str(b)}")


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy-style broadcast of several shapes."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        pad = [1] * (rank - len(s)) + list(s)
        for i, d in enumerate(pad):
            try:
                out[i] = broadcast_dims(out[i], d)
            except ShapeError:
                raise ShapeError("cannot broadcast shapes "
                                 + " and ".join("[" + ",".join(dim_str(x) for x in sh) + "]"
                                                for sh in shapes)) from None
    return tuple(out)


def norm_axis(axis: int, rank: int) -> int:
    """Turn a possibly negative axis into 0..rank-1; raises ShapeError if out of range."""
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def require(t: TensorType | None, what: str) -> TensorType:
    if t is None:
        raise ShapeError(f"input {what} is required")
    return t


def same_dtype(types: Sequence[TensorType | None], what: str = "inputs") -> None:
    ds = {t.dtype.name for t in types if t is not None}
    if len(ds) > 1:
        raise ShapeError(f"{what} must share one dtype, got {', '.join(sorted(ds))}")


def require_float(t: TensorType, what: str) -> None:
    if not t.dtype.is_float:
        raise ShapeError(f"{what} must be a float type, got {t.dtype.name}")


def check_dim(a: Dim, b: Dim, what: str) -> None:
    if not dims_equal(a, b):
        raise ShapeError(f"{what}: {dim_str(a)} != {dim_str(b)}")


def prod(ds: Sequence[Dim]) -> Dim:
    p: Dim = 1
    for d in ds:
        p = p * d
    return p if isinstance(p, int) else sympy.sympify(p)


def _bind_value(v: Any, env: Mapping[sympy.Symbol, int]) -> Any:
    if isinstance(v, tuple):
        return tuple(_bind_value(x, env) for x in v)
    if isinstance(v, sympy.Expr) and not v.is_Number:
        return eval_dim(v, env)  # a plain int when bound: a bound value may be negative
    return v


def bind_dims(attrs: Attrs, env: Mapping[sympy.Symbol, int]) -> Attrs:
    """``attrs`` with symbolic dims substituted from ``env``: what reference implementations
    expect for "dim"/"dims" attributes (e.g. reshape's target, arange's end)."""
    # a module-level helper, not a recursive closure: that closure was a reference cycle per
    # call, garbage that set off full collections during decode loops (a new binding per token)
    if not any(isinstance(v, (tuple, sympy.Basic)) for v in attrs.values()):
        return attrs
    return Attrs({k: _bind_value(v, env) for k, v in attrs.items()})
