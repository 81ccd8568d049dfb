"""Ops that turn symbolic dimensions into runtime tensors.

ONNX and torch graphs compute shapes at run time (Shape -> Gather -> Concat -> Reshape). The
frontends fold such chains into symbolic attributes where they can; where a shape value is
itself needed as data, ``dim_values`` materialises it from the bound symbols.
"""
from __future__ import annotations

from typing import Sequence

import sympy
import torch

from .. import dtypes as dt
from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType
from .registry import AttrSpec, defop, memory_cost


def _shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    d = dt.get(a["dtype"])
    if not d.is_int or d.bits < 32:
        raise ShapeError(f"dim_values dtype must be i32 or i64, got {d.name}")
    n = len(a["values"])
    return [TensorType(d, [] if a["scalar"] and n == 1 else [n])]


def _ref(xs: Sequence[torch.Tensor | None], a: Attrs) -> torch.Tensor:
    vals = []
    for v in a["values"]:
        if isinstance(v, sympy.Basic):
            if not v.is_Integer:
                raise ShapeError(f"dim_values: {v} is not bound")
            v = int(v)
        vals.append(int(v))
    t = torch.tensor(vals, dtype=dt.get(a["dtype"]).container)
    return t.reshape(()) if a["scalar"] and len(vals) == 1 else t


defop("dim_values", family="shape", inputs=0, shape=_shape, reference=_ref, cost=memory_cost,
      attrs={"values": AttrSpec("dims"), "dtype": AttrSpec("str", "i64", ("i64", "i32")),
             "scalar": AttrSpec("bool", False)},
      doc="dim_values()[values, dtype, scalar]: the 1-D integer tensor whose elements are the "
          "given dims (ints or expressions over the graph's symbols, evaluated with the symbols "
          "bound at run time); with scalar=true and one value, a 0-D tensor. No inputs.")
