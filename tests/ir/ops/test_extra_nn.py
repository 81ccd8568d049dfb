"""lp_pool and lrn: references against torch, symbolic shapes, misuse, cost, docs."""
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


def run_op(name: str, x: torch.Tensor, **attrs) -> torch.Tensor:
    op = get_op(name)
    a = op.bind_attrs(attrs)
    (ty,) = op.infer([TensorType(dt.from_torch(x.dtype), tuple(x.shape))], a)
    y = op.reference([x], a)
    assert y.dtype == ty.dtype.container and tuple(y.shape) == ty.shape
    return y


@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool_matches_torch(p: int) -> None:
    x = torch.randn(2, 3, 7, 6)
    # torch's lp_pool2d computes sum(x^p)^(1/p), so feed |x| to match ONNX's |x|^p
    assert_close(run_op("lp_pool", x, kernel=(3, 2), stride=(2, 1), p=p),
                 F.lp_pool2d(x.abs(), p, (3, 2), (2, 1)))


def test_lp_pool_padding_dilation_ceil_1d() -> None:
    x = torch.randn(1, 2, 9)
    y = run_op("lp_pool", x, kernel=(2,), stride=(2,), dilation=(2,), padding=(1, 2),
               ceil_mode=True, p=2)
    xp = F.pad(x, (1, 2))  # zeros add nothing to the sum
    win = xp.unfold(-1, 3, 2)[..., ::2]
    want = (win ** 2).sum(-1).sqrt()
    assert y.shape[-1] == want.shape[-1] == 5 and torch.allclose(y, want, atol=1e-6)


def test_lp_pool_f16_symbolic_shape_cost_and_errors() -> None:
    y = run_op("lp_pool", torch.randn(1, 1, 4, 4, dtype=torch.float16), kernel=(2,), p=2)
    assert y.dtype == torch.float16 and y.shape == (1, 1, 3, 3)
    op = get_op("lp_pool")
    H = sym("H")
    a = op.bind_attrs({"kernel": (3,), "stride": (2,)})
    (ty,) = op.infer([TensorType("f32", ("N", 4, H))], a)
    assert sympy.simplify(ty.shape[2] - (sympy.floor((H - 3) / 2) + 1)) == 0
    c = op.cost([TensorType("f32", (1, 4, 9))], [TensorType("f32", (1, 4, 4))], a)
    assert int(c.flops) == 16 * 7 + 36
    with pytest.raises(ShapeError):
        op.infer([TensorType("i32", (1, 4, 9))], a)
    with pytest.raises(ShapeError):
        op.infer([TensorType("f32", (4, 9))], a)
    with pytest.raises(ShapeError):
        op.infer([TensorType("f32", (1, 4, 9))], op.bind_attrs({"kernel": (3,), "p": 0}))
    assert "LpPool" in op.doc


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_matches_torch(size: int) -> None:
    x = torch.randn(2, 6, 3, 4)
    assert_close(run_op("lrn", x, size=size, alpha=0.02, beta=0.7, bias=1.5),
                 F.local_response_norm(x, size, 0.02, 0.7, 1.5))


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size_window_follows_onnx(size: int) -> None:
    """ONNX's window is [c - floor((size-1)/2), c + ceil((size-1)/2)]; for even sizes that
    leans forward, unlike torch's local_response_norm, so compare with the formula."""
    x = torch.randn(1, 5, 3)
    C = 5
    want = torch.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - (size - 1) // 2), min(C - 1, c + size // 2)
        sq = (x[:, lo:hi + 1] ** 2).sum(1)
        want[:, c] = x[:, c] / (1.5 + 0.02 / size * sq) ** 0.7
    assert_close(run_op("lrn", x, size=size, alpha=0.02, beta=0.7, bias=1.5), want)


def test_lrn_shapes_cost_errors() -> None:
    op = get_op("lrn")
    a = op.bind_attrs({"size": 3})
    (ty,) = op.infer([TensorType("bf16", ("N", 8, "L"))], a)
    assert ty == TensorType("bf16", ("N", 8, "L"))
    c = op.cost([ty], [ty], a)
    assert sympy.simplify(c.flops - 8 * 8 * sym("N") * sym("L")) == 0
    with pytest.raises(ShapeError):
        op.infer([TensorType("f32", (2, 8))], a)
    with pytest.raises(ShapeError):
        op.infer([TensorType("f32", (2, 8, 3))], op.bind_attrs({"size": 0}))
    y = run_op("lrn", torch.randn(1, 4, 5, dtype=torch.bfloat16), size=2)
    assert y.dtype == torch.bfloat16
    assert "LRN" in op.doc
