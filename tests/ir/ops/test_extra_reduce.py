"""cumprod (ir/ops/extra_reduce.py) against numpy; shapes, misuse, cost and doc."""
from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch

from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.types import TensorType, sym


def cumprod(x: torch.Tensor, dtype: str, **attrs) -> torch.Tensor:
    op = get_op("cumprod")
    a = op.bind_attrs(attrs)
    (t,) = op.infer([TensorType(dtype, tuple(x.shape))], a)
    y = op.reference([x], a)
    assert y.dtype == t.dtype.container and tuple(y.shape) == t.shape
    return y


def np_cumprod(x: np.ndarray, axis: int, exclusive: bool, reverse: bool) -> np.ndarray:
    if reverse:
        x = np.flip(x, axis)
    y = np.cumprod(x, axis=axis)
    if exclusive:
        y = np.concatenate([np.ones_like(np.take(y, [0], axis)),
                            np.take(y, range(y.shape[axis] - 1), axis)], axis)
    return np.flip(y, axis) if reverse else y


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumprod_matches_numpy(axis: int, exclusive: bool, reverse: bool) -> None:
    x = torch.empty(3, 4, 5, dtype=torch.float64).uniform_(0.5, 1.5)
    got = cumprod(x, "f64", axis=axis, exclusive=exclusive, reverse=reverse)
    np.testing.assert_allclose(got.numpy(), np_cumprod(x.numpy(), axis, exclusive, reverse), rtol=1e-12)


def test_cumprod_ints_wrap_and_zeros() -> None:
    x = torch.tensor([2, 0, 3, 100, 100], dtype=torch.int32)
    assert cumprod(x, "i32", axis=0, exclusive=True).tolist() == [1, 2, 0, 0, 0]
    xb = torch.tensor([16, 16, 2], dtype=torch.uint8)
    assert cumprod(xb, "u8", axis=0).tolist() == [16, 0, 0]  # 256 wraps to 0


def test_cumprod_half_computed_in_f32() -> None:
    x = torch.full((8,), 1.1, dtype=torch.bfloat16)
    y = cumprod(x, "bf16", axis=0)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, torch.cumprod(x.float(), 0).to(torch.bfloat16))


def test_cumprod_shape_cost_misuse() -> None:
    B = sym("B")
    op = get_op("cumprod")
    a = op.bind_attrs({"axis": 1})
    (out,) = op.infer([TensorType("f32", (B, 7))], a)
    assert out == TensorType("f32", (B, 7))
    assert sympy.simplify(op.cost([TensorType("f32", (B, 7))], [out], a).flops - 7 * B) == 0
    for t in (TensorType("f32", ()), TensorType("bool", (3,)), TensorType("f32", (2, 3))):
        with pytest.raises(ShapeError):
            op.infer([t], op.bind_attrs({"axis": 2 if t.rank == 2 else 0}))
    assert op.family == "reduce" and "CumProd" in op.doc
