"""nonzero, compress, unique: references against numpy, data-dependent symbolic sizes, the
verifier accepting the count symbols, misuse."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scalefold.ir import Graph, TensorType
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.types import sym
from scalefold.ir.verify import verify
from scalefold.runtime import run


def _ref(op: str, xs, **attrs):
    o = get_op(op)
    return o.reference(xs, o.bind_attrs({"count": sym("n"), **attrs}))


def test_nonzero_and_compress_match_numpy() -> None:
    x = np.array([[0, 1.5, 0], [2, 0, -1]], np.float32)
    got = _ref("nonzero", [torch.from_numpy(x)])
    np.testing.assert_array_equal(got.numpy(), np.array(np.nonzero(x)))
    c = np.array([True, False, True])
    for axis in (None, 1, -1):
        want = np.compress(c, x, axis=axis)
        got = _ref("compress", [torch.from_numpy(x), torch.from_numpy(c)], axis=axis)
        np.testing.assert_array_equal(got.numpy(), want)
    short = np.array([False, True])  # shorter than the axis: the rest is dropped
    got = _ref("compress", [torch.from_numpy(x), torch.from_numpy(short)], axis=1)
    np.testing.assert_array_equal(got.numpy(), np.compress(short, x, axis=1))


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("sorted_", [True, False])
def test_unique_matches_numpy(axis, sorted_: bool) -> None:
    x = np.array([[2, 1, 2], [0, 3, 0], [2, 1, 2], [0, 3, 0]], np.float32)
    y, idx, inv, cnt = _ref("unique", [torch.from_numpy(x)], axis=axis, sorted=sorted_)
    wy, widx, winv, wcnt = np.unique(x, return_index=True, return_inverse=True,
                                     return_counts=True, axis=axis)
    if not sorted_:
        order = np.argsort(widx)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        wy = np.take(wy, order, axis=0 if axis is None else axis)
        widx, wcnt, winv = widx[order], wcnt[order], rank[winv.reshape(-1)]
    np.testing.assert_array_equal(y.numpy(), wy)
    np.testing.assert_array_equal(idx.numpy(), widx)
    np.testing.assert_array_equal(inv.numpy(), winv.reshape(-1))
    np.testing.assert_array_equal(cnt.numpy(), wcnt)


def test_data_dependent_graph_verifies_and_runs() -> None:
    g = Graph()
    x = g.add_input(TensorType("f32", ["B", 4]), "x")
    nz = g.add("nonzero", [x], {"count": sym("nnz")})
    assert str(nz.type) == "i64[2,nnz]"
    y, idx, inv, cnt = g.add("unique", [x], {"count": sym("u")})
    assert str(y.type) == "f32[u]" and str(inv.type) == "i64[4*B]"
    cond = g.add_input(TensorType("bool", [4]), "c")
    cp = g.add("compress", [x, cond], {"axis": 1, "count": sym("k")})
    assert str(cp.type) == "f32[B,k]"
    s = g.add("relu", [cp])  # a later node may use the bound symbol
    g.set_outputs([nz, y, s])
    verify(g)
    a, b, c = run(g, torch.tensor([[0.0, 1, 1, 0], [2, 0, 0, 0]]), torch.tensor([True, False, True, True]))
    assert a.tolist() == [[0, 0, 1], [1, 2, 0]] and b.tolist() == [0, 1, 2]
    assert c.tolist() == [[0, 1, 0], [2, 0, 0]]


def test_select_misuse() -> None:
    g = Graph()
    x = g.add_input(TensorType("f32", [3, 4]), "x")
    c = g.add_input(TensorType("i64", [4]), "c")
    with pytest.raises(ShapeError, match="bool"):
        g.add("compress", [x, c], {"count": sym("k")})
    with pytest.raises(ShapeError, match="out of range"):
        g.add("unique", [x], {"count": sym("k"), "axis": 2})
    with pytest.raises(ShapeError, match="condition has 5"):
        _ref("compress", [torch.zeros(4), torch.ones(5, dtype=torch.bool)], axis=0)
    assert "first occurrence" in get_op("unique").doc
