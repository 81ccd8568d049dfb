"""Inverse/hyperbolic trigonometry and bitshift (ir/ops/extra_elementwise.py) against numpy;
symbolic shapes, misuse, cost and docs."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch

from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.types import TensorType, sym

TRIG = [("acos", np.arccos, -0.99, 0.99), ("asin", np.arcsin, -0.99, 0.99),
        ("atan", np.arctan, -5, 5), ("acosh", np.arccosh, 1.0, 6), ("asinh", np.arcsinh, -50, 50),
        ("atanh", np.arctanh, -0.99, 0.99), ("sinh", np.sinh, -4, 4), ("cosh", np.cosh, -4, 4),
        ("tan", np.tan, -1.4, 1.4)]


def run_op(name: str, *xs: torch.Tensor, **attrs) -> torch.Tensor:
    op = get_op(name)
    a = op.bind_attrs(attrs)
    (t,) = op.infer([TensorType(_dt(x), tuple(x.shape)) for x in xs], a)
    y = op.reference(list(xs), a)
    assert y.dtype == t.dtype.container and tuple(y.shape) == t.shape
    return y


def _dt(x: torch.Tensor) -> str:
    from scalefold.ir import dtypes as dt
    return dt.from_torch(x.dtype).name


@pytest.mark.parametrize("name,npf,lo,hi", TRIG, ids=[t[0] for t in TRIG])
def test_trig_reference(name: str, npf, lo: float, hi: float) -> None:
    x = torch.empty(3, 7, dtype=torch.float64).uniform_(lo, hi)
    np.testing.assert_allclose(run_op(name, x).numpy(), npf(x.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_trig_low_precision(dtype: torch.dtype) -> None:
    x = torch.linspace(-0.9, 0.9, 11).to(dtype)
    y = run_op("asin", x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), torch.asin(x.float()).to(dtype).float())


def test_trig_special_values() -> None:
    y = run_op("atanh", torch.tensor([1.0, -1.0, 2.0]))
    assert y[0] == float("inf") and y[1] == float("-inf") and torch.isnan(y[2])
    assert torch.isnan(run_op("acos", torch.tensor([1.5])))[0]


@pytest.mark.parametrize("direction", ["left", "right"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int32, torch.int64])
def test_bitshift_matches_numpy(direction: str, dtype: torch.dtype) -> None:
    bits = torch.iinfo(dtype).bits
    lo = 0 if dtype == torch.uint8 else -100
    x = torch.randint(lo, 100, (4, 5)).to(dtype)
    y = torch.randint(0, bits, (5,)).to(dtype)
    npf = np.left_shift if direction == "left" else np.right_shift
    got = run_op("bitshift", x, y, direction=direction)
    np.testing.assert_array_equal(got.numpy(), npf(x.numpy(), y.numpy()))


def test_bitshift_out_of_range_counts() -> None:
    x = torch.tensor([-8, 4, -1, 100], dtype=torch.int8)
    y = torch.tensor([-1, 8, 9, 2], dtype=torch.int8)
    assert run_op("bitshift", x, y, direction="right").tolist() == [-1, 0, -1, 25]
    assert run_op("bitshift", x, y, direction="left").tolist() == [0, 0, 0, -112]
    xu = torch.tensor([255, 255, 1], dtype=torch.uint8)
    yu = torch.tensor([8, 200, 7], dtype=torch.uint8)
    assert run_op("bitshift", xu, yu, direction="right").tolist() == [0, 0, 0]
    assert run_op("bitshift", xu, yu, direction="left").tolist() == [0, 0, 128]


def test_symbolic_shapes_and_cost() -> None:
    B, S = sym("B"), sym("S")
    op = get_op("bitshift")
    a = op.bind_attrs({"direction": "left"})
    ins = [TensorType("u8", (B, 1)), TensorType("u8", (S,))]
    (out,) = op.infer(ins, a)
    assert out == TensorType("u8", (B, S))
    c = op.cost(ins, [out], a)
    assert sympy.simplify(c.flops - B * S) == 0 and c.bytes.free_symbols == {B, S}
    t = get_op("asinh")
    (o2,) = t.infer([TensorType("f32", (B, 4))], t.bind_attrs({}))
    assert o2 == TensorType("f32", (B, 4))
    assert sympy.simplify(t.cost([TensorType("f32", (B, 4))], [o2], t.bind_attrs({})).flops - 24 * B) == 0


@pytest.mark.parametrize("name,types,attrs", [
    ("bitshift", [("f32", (2,)), ("f32", (2,))], {"direction": "left"}),
    ("bitshift", [("u8", (2,)), ("i32", (2,))], {"direction": "left"}),
    ("bitshift", [("u4", (2,)), ("u4", (2,))], {"direction": "right"}),
    ("bitshift", [("u8", (2,)), ("u8", (3,))], {"direction": "right"}),
    ("acos", [("i32", (2,))], {}),
    ("tan", [("f4e2m1", (2,))], {}),
])
def test_misuse_raises_shape_error(name: str, types, attrs) -> None:
    op = get_op(name)
    with pytest.raises(ShapeError):
        op.infer([TensorType(d, s) for d, s in types], op.bind_attrs(attrs))


def test_docs() -> None:
    for name in [t[0] for t in TRIG] + ["bitshift"]:
        op = get_op(name)
        assert op.family == "elementwise" and len(op.doc) > 40, name
