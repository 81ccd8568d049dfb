"""Graph-input dims with different symbols that an op needs equal (inputs without dim_param,
tf2onnx's unk__N names, torch's per-input dynamic_axes names): the import takes them to be
equal, as onnxruntime checks at run time, with a warning; the compiled model refuses inputs
where they differ (frontend/onnx.py ``_unifiable``)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP, helper as H, numpy_helper as NH

import scalefold as sf
from scalefold.ir.errors import ShapeError


def _model(nodes, inputs, inits=()) -> onnx.ModelProto:
    g = H.make_graph(nodes, "g", [H.make_tensor_value_info(n, TP.FLOAT, d) for n, d in inputs],
                     [H.make_tensor_value_info("y", TP.FLOAT, None)], list(inits))
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _check(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> sf.CompiledModel:
    with pytest.warns(UserWarning, match="are taken to be equal"):
        cm = sf.compile(m, target="c")
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = cm(*[torch.from_numpy(v) for v in feeds.values()])
    torch.testing.assert_close(got, torch.from_numpy(want), rtol=1e-5, atol=1e-5)
    return cm


@pytest.mark.parametrize("dims", [([None, 4], [None, 4]), (["batch", 4], ["N", 4]), (["unk__1", 4], ["unk__7", 4])])
def test_broadcast_of_unrelated_input_dims(dims) -> None:
    m = _model([H.make_node("Add", ["a", "b"], ["y"])], [("a", dims[0]), ("b", dims[1])])
    r = np.random.default_rng(0)
    cm = _check(m, {"a": r.standard_normal((3, 4)).astype(np.float32), "b": r.standard_normal((3, 4)).astype(np.float32)})
    with pytest.raises(ShapeError):
        cm(torch.zeros(3, 4), torch.zeros(2, 4))


def test_matmul_contraction_of_unrelated_input_dims() -> None:
    m = _model([H.make_node("MatMul", ["a", "b"], ["t"]), H.make_node("Relu", ["t"], ["y"])],
               [("a", ["B", "K1"]), ("b", ["K2", 5])])
    r = np.random.default_rng(1)
    _check(m, {"a": r.standard_normal((2, 6)).astype(np.float32), "b": r.standard_normal((6, 5)).astype(np.float32)})


def test_static_mismatches_are_still_errors() -> None:
    m = _model([H.make_node("Add", ["a", "w"], ["y"])], [("a", [None, 4])],
               [NH.from_array(np.ones((3, 5), np.float32), "w")])
    with pytest.raises(ShapeError, match="cannot broadcast"):
        sf.from_onnx(m)


def test_three_unrelated_dims_merge_in_a_chain() -> None:
    """a + b, then that + c: the second merge meets the first one's survivor."""
    m = _model([H.make_node("Add", ["a", "b"], ["t"]), H.make_node("Add", ["t", "c"], ["y"])],
               [("a", ["z1", 4]), ("b", ["y1", 4]), ("c", ["a0", 4])])
    r = np.random.default_rng(2)
    _check(m, {k: r.standard_normal((3, 4)).astype(np.float32) for k in "abc"})
