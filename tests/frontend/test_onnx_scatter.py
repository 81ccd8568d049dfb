"""ONNX indexing converters (ScatterElements/ScatterND/GatherND/NonZero/Unique/Compress/
ReverseSequence/MaxUnpool/Col2Im) against onnxruntime."""
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



@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_and_nd(reduction: str) -> None:
    d = RNG.standard_normal((3, 4)).astype(np.float32)
    i = np.array([[1, -1, 0], [2, 0, 3]], np.int64)
    u = RNG.standard_normal((2, 3)).astype(np.float32)
    compare(build("ScatterElements", {"d": d, "i": i, "u": u}, {"axis": 1, "reduction": reduction},
                  opset=18), {"d": d, "i": i, "u": u})
    ind = np.array([[2], [0]], np.int64)
    un = RNG.standard_normal((2, 4)).astype(np.float32)
    compare(build("ScatterND", {"d": d, "i": ind, "u": un}, {"reduction": reduction}, opset=18),
            {"d": d, "i": ind, "u": un})


def test_gather_nd_nonzero_unique_compress() -> None:
    d = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    i = np.array([[[1, 2]], [[0, 3]]], np.int64)
    compare(build("GatherND", {"d": d, "i": i}, {"batch_dims": 1}), {"d": d, "i": i})
    x = np.array([[0, 1, 1], [2, 0, 2]], np.float32)
    compare(build("NonZero", {"x": x}), {"x": x})
    for attrs in ({"sorted": 0}, {"sorted": 1}, {"axis": 1}):
        compare(build("Unique", {"x": x}, attrs, n_out=4), {"x": x})
    c = np.array([True, False, True])
    compare(build("Compress", {"x": x, "c": c}, {"axis": 1}), {"x": x, "c": c})
    compare(build("Compress", {"x": x, "c": c}), {"x": x, "c": c})


@pytest.mark.parametrize("time_axis", [0, 1])
def test_reverse_sequence(time_axis: int) -> None:
    x = RNG.standard_normal((4, 4, 2)).astype(np.float32)
    lens = np.array([1, 4, 2, 3], np.int64)
    compare(build("ReverseSequence", {"x": x, "l": lens},
                  {"time_axis": time_axis, "batch_axis": 1 - time_axis}), {"x": x, "l": lens})


def test_max_unpool_and_col2im() -> None:
    x = RNG.standard_normal((1, 2, 2, 2)).astype(np.float32)
    idx = np.array([[[[0, 3], [9, 14]], [[16 + 1, 16 + 7], [16 + 8, 16 + 15]]]], np.int64)
    compare(build("MaxUnpool", {"x": x, "i": idx}, {"kernel_shape": [2, 2], "strides": [2, 2]}),
            {"x": x, "i": idx})
    cols = RNG.standard_normal((1, 2 * 4, 12)).astype(np.float32)
    compare(build("Col2Im", {"c": cols}, {"pads": [1, 0, 0, 1], "strides": [1, 2]}, opset=18,
                  inits={"img": np.array([4, 6], np.int64), "blk": np.array([2, 2], np.int64)}),
            {"c": cols})


def test_scatter_misuse() -> None:
    d = np.zeros((3, 4), np.float32)
    m = build("ScatterND", {"d": d, "i": np.zeros((2, 1), np.int64), "u": np.zeros((2, 5), np.float32)})
    with pytest.raises(Exception, match="updates must have shape"):
        from_onnx(m)
    m = build("ReverseSequence", {"x": np.zeros((2, 2, 2), np.float32), "l": np.ones(2, np.int64)},
              {"time_axis": 0, "batch_axis": 2})
    with pytest.raises(FrontendError, match="time_axis"):
        from_onnx(m)
