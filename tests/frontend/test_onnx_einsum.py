"""ONNX Einsum and SwiGLU converters against onnxruntime."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from onnx_testing import build as _build, compare as _compare
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import FrontendError
from scalefold.runtime.interp import run

RNG = np.random.default_rng(0)


def build(op: str, feeds: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
          opset: int = 19, **kw: Any) -> onnx.ModelProto:
    return _build(op, feeds, attrs, opset, **kw)


def compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5,
            atol: float = 1e-5) -> list[torch.Tensor]:
    return _compare(model, feeds, rtol, atol)



@pytest.mark.parametrize("eq,shapes", [
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij,kj", [(3, 4), (5, 4)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("i,j->ij", [(3,), (4,)]),
])
def test_einsum(eq: str, shapes) -> None:
    feeds = {f"x{i}": RNG.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    compare(build("Einsum", feeds, {"equation": eq}, opset=12), feeds)


def test_einsum_int_and_bad_equation() -> None:
    feeds = {"a": RNG.integers(-4, 4, (2, 3)).astype(np.int64), "b": RNG.integers(-4, 4, (3,)).astype(np.int64)}
    compare(build("Einsum", feeds, {"equation": "ij,j->i"}, opset=12), feeds)
    with pytest.raises(Exception, match="subscript"):
        from_onnx(build("Einsum", {"a": np.zeros((2, 3), np.float32), "b": np.zeros((4,), np.float32)},
                        {"equation": "ij,j->i"}, opset=12))


def test_swiglu() -> None:
    a = RNG.standard_normal((2, 5)).astype(np.float32)
    b = RNG.standard_normal((2, 5)).astype(np.float32)
    m = build("SwiGLU", {"a": a, "b": b}, {"alpha": 1.702}, opset=26)
    got = run(from_onnx(m), torch.from_numpy(a), torch.from_numpy(b))[0]
    want = a * (1 / (1 + np.exp(-1.702 * a))) * b
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    bad = build("SwiGLU", {"a": a, "b": b[:, :1]}, opset=26)
    with pytest.raises(FrontendError, match="identical shapes"):
        from_onnx(bad)
