"""einsum: reference against numpy.einsum, implicit/explicit outputs, ellipsis, shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scalefold.ir import Graph, TensorType
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.ops.einsum import parse_equation


@pytest.mark.parametrize("eq,shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk", [(2, 3), (3, 4)]),
    ("ba,ca", [(2, 3), (4, 3)]),          # implicit output sorts letters: 'bc'
    ("...ij,...jk->...ik", [(5, 2, 3), (1, 3, 4)]),
    ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]),
    ("bij,bjk,bkl->bil", [(2, 2, 3), (2, 3, 2), (2, 2, 4)]),
    ("i,i", [(4,), (4,)]),
])
def test_einsum_matches_numpy(eq: str, shapes) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    op = get_op("einsum")
    got = op.reference([torch.from_numpy(x) for x in xs], op.bind_attrs({"equation": eq}))
    want = np.einsum(eq, *xs)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    g = Graph()
    ins = [g.add_input(TensorType("f32", list(s)), f"x{i}") for i, s in enumerate(shapes)]
    assert tuple(g.add("einsum", ins, {"equation": eq}).type.shape) == want.shape


def test_einsum_int_and_symbolic() -> None:
    op = get_op("einsum")
    a = torch.randint(-5, 5, (2, 3))
    got = op.reference([a, a], op.bind_attrs({"equation": "ij,kj->ik"}))
    assert got.dtype == torch.int64 and torch.equal(got, a @ a.T)
    g = Graph()
    x = g.add_input(TensorType("f16", ["B", "S", 8]), "x")
    w = g.add_input(TensorType("f16", [8, "N"]), "w")
    y = g.add("einsum", [x, w], {"equation": "bsk,kn->bns"})
    assert str(y.type) == "f16[B,N,S]"
    assert get_op("einsum").cost([x.type, w.type], [y.type], y.producer.attrs).flops != 0


def test_einsum_misuse() -> None:
    g = Graph()
    a = g.add_input(TensorType("f32", [2, 3]), "a")
    b = g.add_input(TensorType("f32", [4, 5]), "b")
    with pytest.raises(ShapeError, match="subscript 'j'"):
        g.add("einsum", [a, b], {"equation": "ij,jk->ik"})
    with pytest.raises(ShapeError, match="2 operands"):
        g.add("einsum", [a], {"equation": "ij,jk->ik"})
    with pytest.raises(ShapeError, match="subscripts for an input of rank"):
        g.add("einsum", [a], {"equation": "ijk->i"})
    with pytest.raises(ShapeError, match="no input has"):
        g.add("einsum", [a], {"equation": "ij->z"})
    assert parse_equation("...a,ba", [3, 2]) == (["." + "a", "ba"], ".b", 2)
    assert "Einstein" in get_op("einsum").doc
