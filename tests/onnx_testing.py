"""Shared helpers of the ONNX converter tests: one-node models, scalefold vs onnxruntime."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from scalefold.frontend.onnx import from_onnx
from scalefold.runtime.interp import run


def build(op: str, feeds: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
          opset: int = 17, inits: dict[str, np.ndarray] | None = None,
          node_inputs: Sequence[str] | None = None, n_out: int = 1) -> onnx.ModelProto:
    """A one-node model: ``feeds`` become graph inputs, ``inits`` initializers; the node reads
    ``node_inputs`` (default: feeds then inits; "" = an omitted optional input)."""
    inits = inits or {}
    names = list(node_inputs) if node_inputs is not None else list(feeds) + list(inits)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in feeds.items()]
    graph = helper.make_graph([node], "g", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5,
            atol: float = 1e-6) -> list[torch.Tensor]:
    """Run ``model`` with onnxruntime and with scalefold (from_onnx + interpreter); assert the
    outputs agree (exactly for integers and bools) and return scalefold's."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    g = from_onnx(model)
    got = run(g, *[torch.from_numpy(np.array(feeds[v.name])) for v in g.inputs])
    assert len(got) == len(want)
    for gt, w in zip(got, want):
        w = np.asarray(w)
        assert tuple(gt.shape) == w.shape
        assert gt.dtype == torch.from_numpy(np.array(w)).dtype
        if w.dtype.kind == "f":
            np.testing.assert_allclose(gt.numpy(), w, rtol=rtol, atol=atol, equal_nan=True)
        else:
            np.testing.assert_array_equal(gt.numpy(), w)
    return got
