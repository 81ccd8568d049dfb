"""``cumprod``, the running product (ONNX CumProd), next to ``cumsum`` of ``reduce.py``."""
from __future__ import annotations

from typing import Sequence

import torch

from ..graph import Attrs
from .common import norm_axis
from .reduce import _cumsum_shape, _reduce_cost, _up
from .registry import AttrSpec, defop


def _cumprod_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x0 = xs[0]
    assert x0 is not None
    x = _up(x0)
    axis = norm_axis(attrs["axis"], x.dim())
    if attrs["reverse"]:
        x = x.flip(axis)
    y = torch.cumprod(x, dim=axis)
    if attrs["exclusive"]:
        # Shift by one rather than dividing by x, which fails on zeros.
        y = torch.cat([torch.ones_like(y.narrow(axis, 0, 1)), y.narrow(axis, 0, y.shape[axis] - 1)],
                      dim=axis)
    if attrs["reverse"]:
        y = y.flip(axis)
    return y.to(x0.dtype)


defop("cumprod", family="reduce", inputs=1, input_names=("x",),
      attrs={"axis": AttrSpec("int"), "exclusive": AttrSpec("bool", False),
             "reverse": AttrSpec("bool", False)},
      shape=_cumsum_shape, reference=_cumprod_ref, cost=_reduce_cost(1),
      doc="Running product of x along `axis` (ONNX CumProd): y[i] = product of x[j] for j <= i; "
          "exclusive uses j < i (the first element is 1); reverse multiplies from the end "
          "(j >= i, or j > i when also exclusive). Float (f64/f32/f16/bf16, half types computed "
          "in f32) or integer x (i64/i32/i16/i8/u8, wrapping); output has x's type, rank >= 1.")
