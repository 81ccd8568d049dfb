"""Elementwise ops: unary, binary (numpy broadcasting), ternary ``where``, and ``cast``."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType
from .common import broadcast_shapes, require, same_dtype
from .registry import AttrSpec, defop, elementwise_cost


def _unary_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    return [require(ins[0], "x")]


def _binary_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    a, b = require(ins[0], "a"), require(ins[1], "b")
    same_dtype([a, b])
    return [TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))]


defop("relu", family="elementwise", inputs=1, shape=_unary_shape, elementwise=True,
      reference=lambda xs, a: torch.relu(xs[0]), cost=elementwise_cost(1),
      doc="max(x, 0)")

defop("add", family="elementwise", inputs=2, shape=_binary_shape, elementwise=True,
      reference=lambda xs, a: xs[0] + xs[1], cost=elementwise_cost(1),
      doc="a + b with numpy broadcasting; both operands share one dtype")
