"""Import-time rewrites of ONNX graphs (frontend/onnx_fuse.py): a bias Add after a bias-free
MatMul becomes the linear's bias, only when that is exact."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from scalefold.frontend.onnx import from_onnx
from scalefold.runtime.interp import run

RNG = np.random.default_rng(0)


def _model(bias_shape: tuple[int, ...], bias_first: bool, extra_use: bool) -> onnx.ModelProto:
    w = RNG.standard_normal((8, 6)).astype(np.float32)
    b = RNG.standard_normal(bias_shape).astype(np.float32)
    add_in = ["b", "h"] if bias_first else ["h", "b"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", add_in, ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_use:
        nodes.append(helper.make_node("Relu", ["h"], ["r"]))
        outs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 8])], outs,
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bias_shape,bias_first,extra_use,fused", [
    ((6,), False, False, True), ((1, 1, 6), True, False, True),
    ((5, 6), False, False, False),          # varies along the tokens: not a bias
    ((6,), False, True, False),             # the bias-free result is read elsewhere too
])
def test_bias_add_after_matmul(bias_shape, bias_first, extra_use, fused) -> None:
    m = _model(bias_shape, bias_first, extra_use)
    g = from_onnx(m)
    ops = [n.op for n in g.nodes]
    assert ("add" not in ops) == fused
    x = torch.from_numpy(RNG.standard_normal((2, 5, 8)).astype(np.float32))
    w = torch.from_numpy(numpy_helper.to_array(m.graph.initializer[0]).copy())
    b = torch.from_numpy(numpy_helper.to_array(m.graph.initializer[1]).copy())
    got = run(g, x)
    torch.testing.assert_close(got[0], x @ w + b, rtol=1e-6, atol=1e-6)
