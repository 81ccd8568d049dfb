"""Breadth: architectures from tests/zoo_models.py that no other test meets compile with
target="c" and match eager torch; text models also at sizes other than the example's
(dynamic batch and sequence); a sample of them through the quantisation passes, on the C
target and exported to ONNX for onnxruntime, against the reference interpreter."""
from __future__ import annotations

import os
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.export import Dim

import scalefold as sf
from harness import assert_close
from scalefold.runtime.interp import run
from zoo_models import HF, TIMM, hf, ids, timm_model


@pytest.fixture(autouse=True)
def _quiet_no_grad():
    # calibration on one short batch warns that it saw few tokens: expected here
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_model_matches_eager(name: str, kernel_cache_dir) -> None:
    model, inputs = hf(name)
    cm = sf.compile(model, inputs, target="c")
    got = _first(cm(*inputs.values()))
    assert_close(got, model(**inputs)[0], rtol=1e-4, rel_to_scale=True, what=name)


DYNAMIC = ("bloom", "codegen", "deberta_v2", "falcon", "gemma2", "gpt_neox", "mpnet", "phi3",
           "qwen2_moe", "t5_encoder")


@pytest.mark.parametrize("name", DYNAMIC)
def test_text_model_runs_at_other_sizes(name: str, kernel_cache_dir) -> None:
    model, inputs = hf(name)
    dims = {"input_ids": {0: Dim("B", min=1, max=16), 1: Dim("S", min=2, max=48)}}
    cm = sf.compile(model, inputs, target="c", dynamic_shapes=dims)
    for b, s in ((1, 5), (3, 17), (2, 31)):
        x = ids(b, s, seed=b * 100 + s)
        assert_close(_first(cm(x)), model(input_ids=x)[0], rtol=1e-4, rel_to_scale=True,
                     what=f"{name} at {b}x{s}")


@pytest.mark.parametrize("name", TIMM)
def test_timm_model_matches_eager(name: str, kernel_cache_dir) -> None:
    model, x = timm_model(name)
    cm = sf.compile(model, (x,), passes="fold_batchnorm", target="c")
    assert_close(cm(x), model(x), rtol=1e-4, rel_to_scale=True, what=name)


WEIGHT_ONLY = ("quant_weights(format=int4,method=awq)", "quant_weights(format=int3,method=awq,group=32)",
               "quant_weights(format=fp4_e2m1,method=search)", "quant_weights(format=fp8_e4m3)")
# activations quantised at run time: one code that rounds the other way between two runtimes
# moves the output by up to about 2e-2 of its scale through a whole model (README)
ACT_QUANT = ("quant_weights(format=int4,act=int8)", "smooth,w8a8", "outliertune")


@pytest.mark.parametrize("pipeline", WEIGHT_ONLY + ACT_QUANT)
@pytest.mark.parametrize("name", ("bloom", "gpt_neox", "phi", "qwen2_moe", "t5_encoder", "vit"))
def test_quantised_model_on_c_and_onnxruntime(name: str, pipeline: str, kernel_cache_dir, tmp_path) -> None:
    model, inputs = hf(name)
    xs = tuple(inputs.values())
    cm = sf.compile(model, inputs, passes=pipeline, calibration=[xs], target="c")
    assert any(n.op in ("qlinear", "qmoe") for n in cm.graph.nodes)
    want = run(cm.graph, *xs)[0]
    tol = 1e-4 if pipeline in WEIGHT_ONLY else 2e-2
    assert_close(_first(cm(*xs)), want, rtol=tol, rel_to_scale=True, what=f"{name} {pipeline} C")
    path = tmp_path / "m.onnx"
    sf.to_onnx(cm.graph, path)
    opts = ort.SessionOptions()
    # the IR's numbers, not onnxruntime's approximate rewrites of quantisation patterns (README)
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.asarray(x) for i, x in zip(sess.get_inputs(), xs)}
    got = torch.from_numpy(sess.run(None, feeds)[0])
    assert_close(got, want, rtol=tol, rel_to_scale=True, what=f"{name} {pipeline} onnxruntime")
