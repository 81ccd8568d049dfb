"""ONNX Resize/Upsample/GridSample/AffineGrid/CenterCropPad converters against onnxruntime."""
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



@pytest.mark.parametrize("attrs,sizes,scales", [
    ({"mode": "nearest"}, None, [1, 1, 2.0, 1.5]),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "ceil"},
     [1, 2, 7, 3], None),
    ({"mode": "linear"}, None, [1, 1, 0.6, 1.7]),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, [1, 2, 3, 8], None),
    ({"mode": "linear", "antialias": 1}, None, [1, 1, 0.5, 0.75]),
    ({"mode": "cubic", "exclude_outside": 1}, [1, 2, 6, 6], None),
    ({"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel"}, None, [1, 1, 2, 2]),
    ({"mode": "linear", "axes": [3, 2], "keep_aspect_ratio_policy": "not_larger"}, [9, 5], None),
])
def test_resize(attrs: dict, sizes, scales) -> None:
    x = RNG.standard_normal((1, 2, 4, 5)).astype(np.float32)
    inits = {"roi": np.zeros(0, np.float32)}
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        names = ["x", "roi", "scales"]
    else:
        inits["sizes"] = np.array(sizes, np.int64)
        names = ["x", "roi", "", "sizes"]
    compare(build("Resize", {"x": x}, attrs, inits=inits, node_inputs=names), {"x": x})


def test_resize_tf_crop_and_upsample() -> None:
    x = RNG.standard_normal((1, 1, 5, 5)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                                   "extrapolation_value": 2.0},
              inits={"roi": np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], np.float32),
                     "sizes": np.array([1, 1, 4, 6], np.int64)}, node_inputs=["x", "roi", "", "sizes"])
    compare(m, {"x": x})
    m = build("Upsample", {"x": x}, {"mode": "nearest"}, opset=9,
              inits={"s": np.array([1, 1, 2, 3], np.float32)})
    got = compare(m, {"x": x})
    assert got[0].shape == (1, 1, 10, 15)


@pytest.mark.parametrize("op,opset,mode,scales", [
    (op, opset, mode, scales) for op, opset in (("Upsample", 9), ("Resize", 10))
    for mode, scales in (("linear", [1, 1, 2, 1.5]), ("nearest", [1, 1, 1.7, 2.5]))] + [
    # Resize-10 also scales down (Upsample refuses scales below 1); nearest then rounds up
    ("Resize", 10, "linear", [1, 1, 0.5, 0.6]), ("Resize", 10, "nearest", [1, 1, 0.75, 0.6])])
def test_legacy_upsample_and_resize10_keep_their_coordinates(op: str, opset: int, mode: str,
                                                             scales: list[float]) -> None:
    # onnx's version converter makes them Resize-13 without coordinate_transformation_mode,
    # so half_pixel applied: linear rows were [0, .5, 1.17, 1.83] where onnxruntime has
    # [0, .67, 1.33, 2]; nearest rounds down when upsampling and up when downsampling
    x = RNG.standard_normal((1, 2, 8, 10)).astype(np.float32)
    m = build(op, {"x": x}, {"mode": mode}, opset=opset, inits={"s": np.array(scales, np.float32)})
    m.ir_version = 5
    compare(m, {"x": x})


def test_resize_symbolic_batch_and_live_scales() -> None:
    x = RNG.standard_normal((3, 2, 4, 4)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "linear"}, inits={"sizes": np.array([8, 8], np.int64)},
              node_inputs=["x", "", "", "sizes"])
    m.graph.node[0].attribute.extend([helper.make_attribute("axes", [2, 3])])
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "B"
    compare(m, {"x": x})
    live = build("Resize", {"x": x, "s": np.ones(4, np.float32)}, {}, node_inputs=["x", "", "s"])
    with pytest.raises(FrontendError, match="scales"):
        from_onnx(live)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("pad", ["zeros", "border", "reflection"])
def test_grid_sample(mode: str, pad: str) -> None:
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    grid = (RNG.random((2, 3, 6, 2)) * 2.6 - 1.3).astype(np.float32)
    compare(build("GridSample", {"x": x, "g": grid}, {"mode": mode, "padding_mode": pad}, opset=20),
            {"x": x, "g": grid}, atol=1e-4)


@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_and_center_crop_pad(align: int) -> None:
    theta = RNG.standard_normal((2, 2, 3)).astype(np.float32)
    compare(build("AffineGrid", {"t": theta}, {"align_corners": align}, opset=20,
                  inits={"size": np.array([2, 3, 4, 5], np.int64)}), {"t": theta})
    x = RNG.standard_normal((3, 7, 4)).astype(np.float32)
    compare(build("CenterCropPad", {"x": x}, {"axes": [1, 2]}, opset=18,
                  inits={"shape": np.array([4, 7], np.int64)}), {"x": x})


def test_keep_aspect_ratio_resize_export_is_refused_by_name() -> None:
    # the IR keeps one scale for the coordinates and sizes rounded from it; ONNX's scales input
    # would make floor(d * scale) rows, which the checker rejected with a bare shape mismatch
    from scalefold.codegen.onnx import ExportError, to_onnx
    x = RNG.standard_normal((1, 2, 5, 7)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
              opset=18, inits={"sizes": np.array([4, 4], np.int64)}, node_inputs=["x", "", "", "sizes"])
    compare(m, {"x": x})
    with pytest.raises(ExportError, match="keep_aspect_ratio_policy"):
        to_onnx(from_onnx(m))


def test_legacy_nearest_resize_mixing_up_and_down_is_refused_by_name() -> None:
    x = RNG.standard_normal((1, 2, 8, 10)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "nearest"}, opset=10,
              inits={"s": np.array([1, 1, 2.0, 0.5], np.float32)})
    m.ir_version = 5
    with pytest.raises(FrontendError, match="scales some axes up and some down"):
        from_onnx(m)


def test_resize_output_size_rounds_in_float32() -> None:
    """0.7f * 10 is 7.0f: onnxruntime (and torch) give 7 rows where float64 arithmetic gave 6.
    (Linear mode: onnxruntime computes the source coordinates in float32 too, which can break
    a nearest-mode tie the other way than the IR's float64 coordinates.)"""
    x = RNG.standard_normal((1, 1, 10, 10)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "linear"}, inits={"scales": np.array([1, 1, 0.7, 0.7], np.float32)},
              node_inputs=["x", "", "scales"])
    got = compare(m, {"x": x})
    assert tuple(got[0].shape) == (1, 1, 7, 7)


@pytest.mark.parametrize("scale", [2.0, 0.5, 1.5])
def test_resize_scales_of_dynamic_spatial_dims(scale: float) -> None:
    """FPN / U-Net upsampling exported with dynamic H and W: floor(H * s) stays symbolic for
    scales whose float32 product is exact; results equal onnxruntime's at several sizes."""
    x = RNG.standard_normal((1, 2, 6, 8)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "nearest"}, inits={"scales": np.array([1, 1, scale, scale], np.float32)},
              node_inputs=["x", "", "scales"])
    for i, name in ((2, "H"), (3, "W")):
        m.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    import scalefold as sf
    cm = sf.compile(m, target="c")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in ((1, 2, 6, 8), (1, 2, 7, 5)):
        xx = RNG.standard_normal(shape).astype(np.float32)
        want = torch.from_numpy(sess.run(None, {"x": xx})[0])
        got = cm(torch.from_numpy(xx))
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


def test_resize_inexact_scale_of_a_dynamic_dim_is_refused_by_name() -> None:
    x = RNG.standard_normal((1, 2, 6, 8)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "nearest"}, inits={"scales": np.array([1, 1, 0.7, 1], np.float32)},
              node_inputs=["x", "", "scales"])
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    with pytest.raises(FrontendError, match=r"scale 0\.699.* of a dynamic dim H"):
        from_onnx(m)


def test_resize_with_a_float32_rounded_size_round_trips(tmp_path) -> None:
    """Imported 0.7 of 10 rows (7, onnxruntime's count) exports with its sizes: onnx's checker
    counts 6 from the scale in float64 and refused the file."""
    import scalefold as sf
    x = RNG.standard_normal((1, 1, 10, 10)).astype(np.float32)
    m = build("Resize", {"x": x}, {"mode": "linear"}, inits={"scales": np.array([1, 1, 0.7, 0.7], np.float32)},
              node_inputs=["x", "", "scales"])
    g = from_onnx(m)
    sf.to_onnx(g, tmp_path / "rt.onnx")
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(tmp_path / "rt.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.shape == want.shape == (1, 1, 7, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
