"""reduce family: reduce_*, var/std, argmax/argmin, topk, cumsum."""
from __future__ import annotations

import pytest
import sympy
import torch

from harness import assert_close
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import all_ops, get_op
from scalefold.ir.ops.common import bind_dims
from scalefold.ir.types import TensorType, sym


def ttype(t: torch.Tensor) -> TensorType:
    return TensorType(dt.from_torch(t.dtype), tuple(t.shape))


def run_op(name: str, x: torch.Tensor, **attrs):
    """Infer the output types, run the reference, and check it produced exactly those types."""
    op = get_op(name)
    a = op.bind_attrs(attrs)
    types = op.infer([ttype(x)], a)
    res = op.reference([x], a)
    outs = res if isinstance(res, tuple) else (res,)
    assert len(outs) == len(types)
    for t, r in zip(types, outs):
        assert r.dtype == t.dtype.container and tuple(r.shape) == t.shape, (name, r.dtype, r.shape, t)
    return res


def infer(name: str, t: TensorType, **attrs) -> list[TensorType]:
    op = get_op(name)
    return op.infer([t], op.bind_attrs(attrs))


EXPLICIT = {
    "reduce_sum": lambda x, d, k: x.sum(d, keepdim=k),
    "reduce_mean": lambda x, d, k: x.mean(d, keepdim=k),
    "reduce_max": lambda x, d, k: x.amax(d, keepdim=k),
    "reduce_min": lambda x, d, k: x.amin(d, keepdim=k),
    "reduce_prod": lambda x, d, k: torch.exp(x.log().sum(d, keepdim=k)),
    "reduce_l2": lambda x, d, k: (x * x).sum(d, keepdim=k).sqrt(),
    "reduce_sum_square": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "reduce_logsumexp": lambda x, d, k: x.exp().sum(d, keepdim=k).log(),
}


@pytest.mark.parametrize("name", sorted(EXPLICIT))
@pytest.mark.parametrize("axes", [None, (1,), (0, -1), (-2,)])
@pytest.mark.parametrize("keepdims", [True, False])
def test_reductions_match_explicit(name, axes, keepdims):
    x = torch.rand(3, 4, 5, dtype=torch.float64) + 0.5     # positive: prod via exp(sum(log))
    dims = tuple(range(3)) if axes is None else tuple(a % 3 for a in axes)
    assert_close(run_op(name, x, axes=axes, keepdims=keepdims), EXPLICIT[name](x, dims, keepdims))


def test_reduce_symbolic_shapes():
    B, S = sym("B"), sym("S")
    t = TensorType("f32", (B, S, 8))
    assert infer("reduce_mean", t, axes=(-1,)) == [TensorType("f32", (B, S, 1))]
    assert infer("reduce_sum", t, axes=(0, 2), keepdims=False) == [TensorType("f32", (S,))]
    assert infer("reduce_max", t, keepdims=False) == [TensorType("f32", ())]
    assert infer("reduce_l2", t, axes=()) == [TensorType("f32", (1, 1, 1))]   # empty = all
    op = get_op("reduce_sum")
    c = op.cost([t], infer("reduce_sum", t), op.bind_attrs({}))
    assert sympy.simplify(c.flops - 8 * B * S) == 0


def test_integer_and_half_reductions_keep_dtype():
    xi = torch.randint(-9, 9, (4, 5), dtype=torch.int32)
    assert torch.equal(run_op("reduce_sum", xi, axes=(1,)), xi.sum(1, keepdim=True, dtype=torch.int32))
    assert torch.equal(run_op("reduce_prod", xi, axes=(0, 1), keepdims=False), xi.prod(dtype=torch.int32))
    assert torch.equal(run_op("reduce_max", xi > 0, axes=(1,)), (xi > 0).any(1, keepdim=True))
    xh = torch.randn(6, 40, dtype=torch.float16)
    assert_close(run_op("reduce_mean", xh, axes=(1,)), xh.float().mean(1, keepdim=True).half())


def test_scalar_input():
    x = torch.tensor(-3.0)
    assert run_op("reduce_sum_square", x).item() == 9.0
    assert run_op("reduce_l2", x, keepdims=False).item() == 3.0


@pytest.mark.parametrize("name,sqrt", [("reduce_var", False), ("reduce_std", True)])
@pytest.mark.parametrize("correction", [0, 1])
def test_var_std(name, sqrt, correction):
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    m = x.mean(dim=(0, 2), keepdim=True)
    want = ((x - m) ** 2).sum(dim=(0, 2), keepdim=True) / (12 - correction)
    assert_close(run_op(name, x, axes=(0, 2), correction=correction), want.sqrt() if sqrt else want)


@pytest.mark.parametrize("name,fn", [("argmax", torch.argmax), ("argmin", torch.argmin)])
@pytest.mark.parametrize("keepdims", [True, False])
def test_argmax_argmin_with_ties(name, fn, keepdims):
    x = torch.tensor([[1.0, 5.0, 5.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    first = run_op(name, x, axis=1, keepdims=keepdims)
    last = run_op(name, x, axis=-1, keepdims=keepdims, select_last_index=True)
    if name == "argmax":
        assert first.flatten().tolist() == [1, 0] and last.flatten().tolist() == [2, 4]
    else:
        assert first.flatten().tolist() == [3, 0] and last.flatten().tolist() == [4, 4]
    y = torch.randn(3, 6, 5)
    assert torch.equal(run_op(name, y, axis=1, keepdims=keepdims), fn(y, 1, keepdims))


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("axis", [-1, 0])
def test_topk(largest, axis):
    x = torch.randn(6, 9)
    vals, idx = run_op("topk", x, k=4, axis=axis, largest=largest)
    want_v, want_i = torch.topk(x, 4, dim=axis, largest=largest)
    assert_close(vals, want_v)
    assert torch.equal(idx, want_i)
    assert torch.equal(x.gather(axis, idx), vals)


def test_topk_ties_lower_index_first_and_symbolic_k():
    x = torch.tensor([3, 1, 3, 2, 3], dtype=torch.int64)
    vals, idx = run_op("topk", x, k=2)
    assert vals.tolist() == [3, 3] and idx.tolist() == [0, 2]
    vals, idx = run_op("topk", x, k=2, largest=False)
    assert vals.tolist() == [1, 2] and idx.tolist() == [1, 3]
    B, K = sym("B"), sym("K")
    outs = infer("topk", TensorType("bf16", (B, 64)), k=K)
    assert outs == [TensorType("bf16", (B, K)), TensorType("i64", (B, K))]
    op = get_op("topk")
    a = op.bind_attrs({"k": K})
    x = torch.randn(3, 64)
    with pytest.raises(ShapeError, match="not bound"):
        op.reference([x], a)
    vals, idx = op.reference([x], bind_dims(a, {K: 5}))
    assert torch.equal(vals, x.topk(5).values) and torch.equal(idx, x.topk(5).indices)


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum(exclusive, reverse):
    x = torch.randint(-5, 5, (3, 6), dtype=torch.int32)
    got = run_op("cumsum", x, axis=1, exclusive=exclusive, reverse=reverse)
    rows = x.tolist()
    for r, row in zip(got.tolist(), rows):
        for i in range(6):
            js = [j for j in range(6) if (j > i if reverse else j < i) or (j == i and not exclusive)]
            assert r[i] == sum(row[j] for j in js)
    xf = torch.randn(4, 5)
    assert_close(run_op("cumsum", xf, axis=0), xf.cumsum(0))


@pytest.mark.parametrize("name,t,attrs,match", [
    ("reduce_sum", TensorType("f32", (2, 3)), {"axes": (2,)}, "axis"),              # bad axis
    ("reduce_sum", TensorType("f32", (2, 3)), {"axes": (1, -1)}, "repeat"),
    ("reduce_mean", TensorType("i32", (2, 3)), {}, "must be one of"),              # wrong dtype
    ("reduce_sum", TensorType("i4", (2, 3)), {}, "must be one of"),
    ("argmax", TensorType("f32", ()), {}, "rank"),                                 # wrong rank
    ("argmin", TensorType("f32", (2, 3)), {"axis": -3}, "axis"),
    ("topk", TensorType("f32", (2, 3)), {"k": 4}, "exceeds"),
    ("topk", TensorType("f32", (2, sym("S"))), {"k": sym("S") + 1}, "exceeds"),
    ("cumsum", TensorType("f32", (2, 3)), {"axis": 5}, "axis"),
    ("reduce_var", TensorType("f32", (2, 3)), {"correction": -1}, "correction"),
])
def test_shape_errors(name, t, attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer(name, t, **attrs)


def test_every_reduce_op_has_a_doc():
    mine = [d for d in all_ops().values() if d.family == "reduce"]
    assert len(mine) >= 14
    for d in mine:
        assert len(d.doc.strip()) > 30, d.name
