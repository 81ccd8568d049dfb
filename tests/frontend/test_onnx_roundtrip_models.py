"""Real architectures: from_torch -> to_onnx -> onnxruntime matches eager torch."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from harness import assert_close
from models import BUILDERS
from scalefold.codegen.onnx import to_onnx
from scalefold.frontend.torch import from_torch



@pytest.fixture(autouse=True)
def _no_grad():
    # A fixture, not a module-level switch, so other test modules keep autograd.
    with torch.no_grad():
        yield


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_roundtrip_through_onnxruntime(name: str, tmp_path) -> None:
    case = BUILDERS[name]()
    g = from_torch(case.model, case.inputs)
    path = tmp_path / f"{name}.onnx"
    proto = to_onnx(g, path)
    onnx.checker.check_model(str(path), full_check=True)
    assert [i.name for i in proto.graph.input] == [v.name for v in g.inputs]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {v.name: case.tensors[v.name].numpy() for v in g.inputs}
    outs = sess.run(None, feed)
    want = case.expected(case.tensors)
    for i, (o, e) in enumerate(zip(outs, want)):
        assert_close(torch.from_numpy(np.asarray(o)), e, rtol=1e-5, rel_to_scale=True,
                     what=f"{name} output {i}")
