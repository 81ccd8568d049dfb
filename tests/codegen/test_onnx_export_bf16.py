"""to_onnx warns when the exported graph computes in bfloat16, which onnxruntime's CPU
provider cannot run (codegen/onnx.py ``_warn_bf16``)."""
from __future__ import annotations

import warnings

import onnxruntime as ort
import pytest
import torch

import scalefold as sf
from scalefold.ir.graph import Graph


def _linear(dtype: torch.dtype, name: str) -> Graph:
    g = Graph(name)
    x = g.add_input(f"{'bf16' if dtype is torch.bfloat16 else 'f32'}[B,8]", "x")
    w = g.add_const(torch.randn(4, 8).to(dtype), name="w")
    g.set_outputs([g.add("linear", [x, w])], ["y"])
    return g


def test_bf16_compute_warns_and_really_fails_on_the_cpu_provider(tmp_path) -> None:
    p = tmp_path / "m.onnx"
    with pytest.warns(UserWarning, match=r"@lin16: it computes in bfloat16 \(linear\).*CPU"):
        sf.to_onnx(_linear(torch.bfloat16, "lin16"), p)
    # the warning's claim: onnxruntime's CPU provider has no kernel for it
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])


def test_float32_and_bf16_moves_do_not_warn(tmp_path) -> None:
    g = Graph("mv")
    x = g.add_input("bf16[B,8]", "x")
    y = g.add("cast", [g.add("transpose", [x], {"perm": (1, 0)})], {"to": "f32"})
    g.set_outputs([y], ["y"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf.to_onnx(_linear(torch.float32, "lin32"), tmp_path / "a.onnx")
        sf.to_onnx(g, tmp_path / "b.onnx")
    s = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    assert s.get_outputs()[0].shape[0] == 8
