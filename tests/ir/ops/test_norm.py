"""Normalisation and softmax ops: references against torch / explicit formulas, shapes, misuse."""
from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F

from harness import assert_close
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.types import TensorType, sym


def ttype(t: torch.Tensor | None) -> TensorType | None:
    return None if t is None else TensorType(dt.from_torch(t.dtype), tuple(t.shape))


def run_op(name: str, *inputs: torch.Tensor | None, **attrs) -> torch.Tensor:
    """Infer the output type, run the reference, and check it produced exactly that type."""
    op = get_op(name)
    a = op.bind_attrs(attrs)
    (t,) = op.infer([ttype(x) for x in inputs], a)
    r = op.reference(list(inputs), a)
    assert r.dtype == t.dtype.container and tuple(r.shape) == t.shape, (name, r.dtype, r.shape, t)
    return r


def infer(name: str, types, **attrs) -> list[TensorType]:
    op = get_op(name)
    return op.infer([None if t is None else TensorType(*t) for t in types], op.bind_attrs(attrs))


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
@pytest.mark.parametrize("axis", [-1, -2, 1])
def test_layer_norm(affine, axis):
    x = torch.randn(2, 3, 5, 7)
    norm_shape = x.shape[axis % 4:]
    w = torch.randn(norm_shape) if affine != "none" else None
    b = torch.randn(norm_shape) if affine == "both" else None
    got = run_op("layer_norm", x, w, b, axis=axis, eps=1e-3)
    assert_close(got, F.layer_norm(x, norm_shape, w, b, 1e-3))


def test_layer_norm_bf16_and_symbolic():
    x, w = torch.randn(3, 33, dtype=torch.bfloat16), torch.randn(33, dtype=torch.bfloat16)
    want = F.layer_norm(x.float(), (33,), w.float(), None, 1e-5).bfloat16()
    assert_close(run_op("layer_norm", x, w), want)
    B, S = sym("B"), sym("S")
    assert infer("layer_norm", [("f32", (B, S, 64)), ("f32", (64,))]) == [TensorType("f32", (B, S, 64))]


@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("axis", [-1, -2])
def test_rms_norm_explicit(with_weight, axis):
    x = torch.randn(2, 5, 9, dtype=torch.float64)
    dims = tuple(range(axis % 3, 3))
    w = torch.randn(x.shape[axis % 3:], dtype=torch.float64) if with_weight else None
    want = x / torch.sqrt((x * x).mean(dim=dims, keepdim=True) + 1e-6)
    if w is not None:
        want = want * w
    assert_close(run_op("rms_norm", x, w, axis=axis), want)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 7), (2, 3, 5, 4)])
def test_batch_norm_inference(shape):
    x = torch.randn(shape)
    s, b, m, v = torch.randn(3), torch.randn(3), torch.randn(3), torch.rand(3) + 0.5
    want = (x - m.view(3, *[1] * (len(shape) - 2))) / torch.sqrt(v.view(3, *[1] * (len(shape) - 2)) + 1e-5) \
        * s.view(3, *[1] * (len(shape) - 2)) + b.view(3, *[1] * (len(shape) - 2))
    assert_close(run_op("batch_norm", x, s, b, m, v), want, atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_group_and_instance_norm(affine):
    x = torch.randn(2, 6, 5, 3)
    w, b = (torch.randn(6), torch.randn(6)) if affine else (None, None)
    assert_close(run_op("group_norm", x, w, b, groups=3, eps=1e-4), F.group_norm(x, 3, w, b, 1e-4))
    # explicit group statistics
    xg = x.view(2, 3, -1)
    want = ((xg - xg.mean(-1, keepdim=True)) / torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + 1e-4)
            ).view_as(x)
    if affine:
        want = want * w.view(6, 1, 1) + b.view(6, 1, 1)
    assert_close(run_op("group_norm", x, w, b, groups=3, eps=1e-4), want, atol=1e-5)
    assert_close(run_op("instance_norm", x, w, b), F.instance_norm(x, weight=w, bias=b))


@pytest.mark.parametrize("op,fn", [("softmax", torch.softmax), ("log_softmax", torch.log_softmax)])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, fn, axis):
    x = torch.randn(3, 5, 7) * 4
    assert_close(run_op(op, x, axis=axis), fn(x, dim=axis))
    e = torch.exp(x - x.amax(dim=axis, keepdim=True))
    explicit = e / e.sum(dim=axis, keepdim=True)
    assert_close(run_op(op, x, axis=axis), explicit if op == "softmax" else explicit.log(), atol=1e-5)


def test_norm_costs_are_symbolic():
    B = sym("B")
    op = get_op("layer_norm")
    ins = [TensorType("f32", (B, 8)), TensorType("f32", (8,)), None]
    c = op.cost(ins, op.infer(ins, op.bind_attrs({})), op.bind_attrs({}))
    assert c.flops.free_symbols == {B} and sympy.simplify(c.bytes - 4 * (16 * B + 8)) == 0


@pytest.mark.parametrize("op,types,attrs,match", [
    ("layer_norm", [("f32", (2, 8)), ("f32", (7,))], {}, "weight"),
    ("layer_norm", [("f32", (2, 8)), ("f16", (8,))], {}, "share one dtype"),
    ("layer_norm", [("f32", (2, 8))], {"axis": 2}, "axis"),
    ("rms_norm", [("i32", (2, 8))], {}, "must be one of"),
    ("batch_norm", [("f32", (2, 4, 3))] + [("f32", (3,))] * 4, {}, "shape"),
    ("batch_norm", [("f32", (4,))] + [("f32", (4,))] * 4, {}, "rank"),
    ("batch_norm", [("f32", (2, 3)), ("f32", (3,)), None, ("f32", (3,)), ("f32", (3,))], {}, "bias"),
    ("group_norm", [("f32", (2, 6, 3))], {"groups": 4}, "divisible"),
    ("group_norm", [("f32", (2, sym("C"), 3))], {"groups": 4}, "divisible"),
    ("instance_norm", [("f32", (2, 6))], {}, "rank"),
    ("softmax", [("f32", (2, 6))], {"axis": -3}, "axis"),
])
def test_shape_errors(op, types, attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer(op, types, **attrs)
