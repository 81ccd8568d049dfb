"""ONNX RNN/GRU/LSTM converters (unrolled) against onnxruntime."""
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



def _weights(kind: str, d: int, h: int, i: int) -> dict[str, np.ndarray]:
    g = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    w = {"W": RNG.standard_normal((d, g * h, i)).astype(np.float32) * 0.5,
         "R": RNG.standard_normal((d, g * h, h)).astype(np.float32) * 0.5,
         "B": RNG.standard_normal((d, 2 * g * h)).astype(np.float32) * 0.5}
    return w


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent(kind: str, direction: str) -> None:
    d = 2 if direction == "bidirectional" else 1
    x = RNG.standard_normal((5, 2, 3)).astype(np.float32)
    h0 = RNG.standard_normal((d, 2, 4)).astype(np.float32)
    inits = _weights(kind, d, 4, 3)
    attrs: dict[str, Any] = {"hidden_size": 4, "direction": direction}
    names = ["x", "W", "R", "B", "", "h0"]
    feeds = {"x": x, "h0": h0}
    if kind == "LSTM":
        feeds["c0"] = RNG.standard_normal((d, 2, 4)).astype(np.float32)
        inits["P"] = RNG.standard_normal((d, 12)).astype(np.float32)
        names += ["c0", "P"]
    if kind == "GRU":
        attrs["linear_before_reset"] = 1 if direction == "reverse" else 0
    n_out = 3 if kind == "LSTM" else 2
    compare(build(kind, feeds, attrs, opset=14, inits=inits, node_inputs=names, n_out=n_out), feeds)


def test_batchwise_seq_lens_activations_clip() -> None:
    x = RNG.standard_normal((5, 2, 3)).astype(np.float32)
    inits = _weights("GRU", 1, 4, 3)
    inits["L"] = np.array([5, 3], np.int32)
    attrs = {"hidden_size": 4, "clip": 0.8, "activations": ["HardSigmoid", "LeakyRelu"],
             "activation_alpha": [0.3, 0.1], "activation_beta": [0.4]}
    names = ["x", "W", "R", "B", "L"]
    y, yh = compare(build("GRU", {"x": x}, attrs, opset=14, inits=inits, node_inputs=names, n_out=2),
                    {"x": x})
    # onnxruntime lacks layout=1: the batch-major model must give the transposed results
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))
    m = build("GRU", {"x": xb}, {**attrs, "layout": 1}, opset=14, inits=inits, node_inputs=names, n_out=2)
    yb, yhb = run(from_onnx(m), torch.from_numpy(xb))
    torch.testing.assert_close(yb, y.permute(2, 0, 1, 3))
    torch.testing.assert_close(yhb, yh.permute(1, 0, 2))


def test_symbolic_sequence_length_is_rejected() -> None:
    x = np.zeros((3, 1, 2), np.float32)
    m = build("RNN", {"x": x}, {"hidden_size": 2}, inits=_weights("RNN", 1, 2, 2), opset=14, n_out=2)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    with pytest.raises(FrontendError, match="sequence length must be static"):
        from_onnx(m)
