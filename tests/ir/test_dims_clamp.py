"""dims_equal with clamped slice lengths: sizes are never negative, so ``Max(0, e)`` equals a
size ``e``. Wav2Vec2-style graphs (a stride-10 convolution, then a kernel-2 convolution and a
``Slice(end=-1)`` of the same tensor added together) failed to import with a dynamic length,
since sympy cannot prove floor(t / 10) >= 1 on its own."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import sympy
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold
from scalefold.ir.types import dims_equal, sym


def test_clamped_length_equals_the_size_it_clamps() -> None:
    t = sym("t")
    n = sympy.floor(t / 10)
    assert dims_equal(n - 1, sympy.Min(n, sympy.Max(0, n - 1)))
    assert dims_equal(sympy.Max(0, n - 1), n - 1)
    # still not equal where they differ
    assert not dims_equal(n - 2, sympy.Min(n, sympy.Max(0, n - 1)))
    assert not dims_equal(n, sympy.Max(0, n - 1))


def test_slice_end_minus_one_of_a_strided_conv_imports_and_matches_onnxruntime(tmp_path) -> None:
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 4, 2), "w"),
             numpy_helper.from_array(np.linspace(-1, 1, 160, dtype=np.float32).reshape(4, 4, 10), "w10")] + \
        [numpy_helper.from_array(np.array(v, np.int64), k) for v, k in (([0], "s"), ([-1], "e"), ([2], "ax"))]
    nodes = [helper.make_node("Conv", ["x", "w10"], ["x1"], strides=[10]),
             helper.make_node("Conv", ["x1", "w"], ["a"]),
             helper.make_node("Slice", ["x1", "s", "e", "ax"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "t"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cm = scalefold.compile(str(path), target="c")
    for t in (20, 73, 160):
        x = np.random.default_rng(t).standard_normal((1, 4, t)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = cm(torch.from_numpy(x))
        assert tuple(got.shape) == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
