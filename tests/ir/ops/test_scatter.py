"""scatter_elements, scatter_nd, gather_nd: references against python loops, shape rules,
misuse."""
from __future__ import annotations

import itertools

import pytest
import torch

from scalefold.ir import Graph, TensorType
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op

_COMBINE = {"none": lambda a, b: b, "add": lambda a, b: a + b, "mul": lambda a, b: a * b,
            "max": max, "min": min}


def _ref(op: str, xs, **attrs):
    o = get_op(op)
    return o.reference(xs, o.bind_attrs(attrs))


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements_loops(reduction: str, axis: int) -> None:
    g = torch.Generator().manual_seed(1)
    data = torch.randn(3, 4, generator=g)
    idx = torch.randint(-3 if axis == 0 else -4, 3 if axis == 0 else 4, (2, 3), generator=g)
    if reduction == "none":  # distinct targets: duplicates have no defined winner
        idx = torch.tensor([[0, 1, 2], [2, 0, 1]]) if axis == 0 else torch.tensor([[0, 1, -1], [3, 2, 1]])
    upd = torch.randn(2, 3, generator=g)
    want = data.clone()
    a = axis % 2
    for i, j in itertools.product(range(2), range(3)):
        p = [i, j]
        p[a] = int(idx[i, j]) % data.shape[a]
        want[p[0], p[1]] = _COMBINE[reduction](want[p[0], p[1]].item(), upd[i, j].item())
    got = _ref("scatter_elements", [data, idx, upd], axis=axis, reduction=reduction)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd_loops(reduction: str) -> None:
    data = torch.randn(4, 3, 2)
    idx = torch.tensor([[[0, 1], [3, -1]], [[2, 2], [0, 1 if reduction != "none" else 0]]])
    upd = torch.randn(2, 2, 2)
    want = data.clone()
    for i, j in itertools.product(range(2), range(2)):
        a, b = (int(v) for v in idx[i, j])
        for k in range(2):
            want[a, b % 3, k] = _COMBINE[reduction](want[a, b % 3, k].item(), upd[i, j, k].item())
    torch.testing.assert_close(_ref("scatter_nd", [data, idx, upd], reduction=reduction), want)


def test_gather_nd_loops_with_batch_dims() -> None:
    data = torch.randn(2, 3, 4, 5)
    idx = torch.tensor([[[1, -1], [0, 2]], [[2, 3], [1, 0]]])  # [2, 2, 2], batch_dims=1
    got = _ref("gather_nd", [data, idx], batch_dims=1)
    assert got.shape == (2, 2, 5)
    for b, m in itertools.product(range(2), range(2)):
        i, j = (int(v) for v in idx[b, m])
        torch.testing.assert_close(got[b, m], data[b, i, j])
    got0 = _ref("gather_nd", [data, torch.tensor([[1], [0]])])
    torch.testing.assert_close(got0, data[[1, 0]])


def test_scatter_shapes_symbolic_and_misuse() -> None:
    g = Graph()
    d = g.add_input(TensorType("f32", ["N", 8]), "d")
    i = g.add_input(TensorType("i64", ["M", 1]), "i")
    u = g.add_input(TensorType("f32", ["M", 8]), "u")
    assert str(g.add("scatter_nd", [d, i, u]).type) == "f32[N,8]"
    assert str(g.add("gather_nd", [d, i]).type) == "f32[M,8]"
    ie = g.add_input(TensorType("i64", ["M", 8]), "ie")
    assert str(g.add("scatter_elements", [d, ie, u], {"axis": 1}).type) == "f32[N,8]"
    bad = g.add_input(TensorType("f32", ["M", 7]), "bad")
    with pytest.raises(ShapeError, match="updates must have shape"):
        g.add("scatter_nd", [d, i, bad])
    fi = g.add_input(TensorType("f32", ["M", 1]), "fi")
    with pytest.raises(ShapeError, match="i32 or i64"):
        g.add("gather_nd", [d, fi])
    with pytest.raises(ShapeError, match="shapes differ"):
        g.add("scatter_elements", [d, ie, bad])
    i3 = g.add_input(TensorType("i64", ["M", 3]), "i3")
    with pytest.raises(ShapeError, match="last dim"):
        g.add("gather_nd", [d, i3])
    assert "batch_dims" in get_op("gather_nd").doc and "reduction" in get_op("scatter_nd").doc
