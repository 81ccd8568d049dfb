"""dim_values: symbolic dims as runtime tensors."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir import Graph, TensorType
from scalefold.ir.errors import ShapeError
from scalefold.ir.types import sym
from scalefold.runtime import run


def test_dim_values_evaluates_bound_symbols() -> None:
    g = Graph()
    g.add_input(TensorType("f32", ["B", "S"]), "x")
    v = g.add("dim_values", [], {"values": [sym("B") * 2, sym("S"), 3]})
    s = g.add("dim_values", [], {"values": [sym("S") + 1], "scalar": True, "dtype": "i32"})
    g.set_outputs([v, s])
    assert str(v.type) == "i64[3]" and str(s.type) == "i32[]"
    a, b = run(g, torch.zeros(2, 5))
    assert a.tolist() == [4, 5, 3] and b.dtype == torch.int32 and b.item() == 6
    a, _ = run(g, torch.zeros(7, 1))
    assert a.tolist() == [14, 1, 3]


def test_dim_values_rejects_narrow_dtype() -> None:
    g = Graph()
    with pytest.raises(Exception, match="must be one of|i32 or i64"):
        g.add("dim_values", [], {"values": [1], "dtype": "i8"})


def test_dim_values_unbound_symbol_in_reference() -> None:
    from scalefold.ir.ops import get_op
    op = get_op("dim_values")
    with pytest.raises(ShapeError, match="not bound"):
        op.reference([], op.bind_attrs({"values": [sym("Q")]}))
