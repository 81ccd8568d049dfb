"""resize and grid_sample: references against onnx's numpy reference and torch.nn.functional,
symbolic shape rules, misuse."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from onnx.reference import ReferenceEvaluator

from scalefold.ir import Graph, TensorType
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.types import sym


def _attrs(op: str, **kw):
    return get_op(op).bind_attrs(kw)


def _onnx_resize(x: np.ndarray, sizes, **attrs) -> np.ndarray:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, x.shape)],
                          [helper.make_tensor_value_info("y", 1, None)],
                          initializer=[onnx.numpy_helper.from_array(np.array(sizes, np.int64), "sizes")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    return ReferenceEvaluator(m).run(None, {"x": x})[0]


@pytest.mark.parametrize("mode,ctm,extra", [
    ("nearest", "asymmetric", {"nearest_mode": "floor"}),
    ("nearest", "half_pixel", {"nearest_mode": "round_prefer_ceil"}),
    ("linear", "half_pixel", {}),
    ("linear", "align_corners", {}),
    ("linear", "pytorch_half_pixel", {"antialias": 1}),
    ("cubic", "half_pixel_symmetric", {"exclude_outside": 1}),
    ("cubic", "asymmetric", {"cubic_coeff_a": -0.5, "antialias": 1}),
])
@pytest.mark.parametrize("sizes", [(1, 2, 7, 3), (1, 2, 2, 9)])
def test_resize_matches_onnx_reference(mode: str, ctm: str, extra: dict, sizes) -> None:
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 5)).astype(np.float32)
    want = _onnx_resize(x, sizes, mode=mode, coordinate_transformation_mode=ctm, **extra)
    kw = {k: bool(v) if k in ("antialias", "exclude_outside") else v for k, v in extra.items()}
    got = get_op("resize").reference([torch.from_numpy(x)], _attrs(
        "resize", sizes=sizes, mode=mode, coordinate_transformation_mode=ctm, **kw))
    assert got.shape == want.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_resize_matches_torch_interpolate() -> None:
    x = torch.randn(2, 3, 5, 6)
    op = get_op("resize")
    got = op.reference([x], _attrs("resize", sizes=(2, 3, 9, 4), mode="linear"))
    torch.testing.assert_close(got, F.interpolate(x, size=(9, 4), mode="bilinear", align_corners=False))
    got = op.reference([x], _attrs("resize", sizes=(2, 3, 10, 12), mode="nearest",
                                   coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
    torch.testing.assert_close(got, F.interpolate(x, size=(10, 12), mode="nearest"))


def test_resize_tf_crop_and_int_saturation() -> None:
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    y = get_op("resize").reference([x], _attrs(
        "resize", sizes=(1, 1, 3, 3), mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
        roi=(0, 0, 0.5, 0.5, 1, 1, 1.5, 1.5), extrapolation_value=-1.0))
    # rows sample 1.5, 3, 4.5 of the input: the last is outside and extrapolated
    assert y[0, 0, 0, 0].item() == pytest.approx(1.5 * 4 + 1.5)
    assert (y[0, 0, 2] == -1).all() and (y[0, 0, :, 2] == -1).all()
    xi = torch.tensor([[0, 255]], dtype=torch.uint8)
    yi = get_op("resize").reference([xi], _attrs("resize", sizes=(1, 4), mode="cubic"))
    assert yi.dtype == torch.uint8 and yi.min() >= 0 and yi.max() <= 255


def test_resize_symbolic_shape_and_misuse() -> None:
    g = Graph()
    x = g.add_input(TensorType("f32", ["B", 3, "H", "W"]), "x")
    y = g.add("resize", [x], {"sizes": (sym("B"), 3, 2 * sym("H"), 2 * sym("W")), "mode": "linear"})
    assert str(y.type) == "f32[B,3,2*H,2*W]"
    with pytest.raises(ShapeError, match="sizes has 2 entries"):
        g.add("resize", [x], {"sizes": (1, 2)})
    with pytest.raises(ShapeError, match="antialias"):
        g.add("resize", [x], {"sizes": (1, 3, 4, 4), "antialias": True})
    with pytest.raises(ShapeError, match="roi"):
        g.add("resize", [x], {"sizes": (1, 3, 4, 4), "coordinate_transformation_mode": "tf_crop_and_resize"})
    assert "tf_crop_and_resize" in get_op("resize").doc and "align_corners" in get_op("grid_sample").doc


def _bilinear_zeros(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Independent bilinear grid sample (align_corners=False, zero padding) by loops."""
    n, c, h, w = x.shape
    _, oh, ow, _ = grid.shape
    out = torch.zeros(n, c, oh, ow, dtype=torch.float64)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                gx, gy = grid[b, i, j].tolist()
                px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                    for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                        if 0 <= yy < h and 0 <= xx < w:
                            out[b, :, i, j] += wy * wx * x[b, :, yy, xx].double()
    return out.float()


def test_grid_sample_reference_and_shape() -> None:
    x = torch.randn(2, 3, 4, 5)
    grid = torch.rand(2, 3, 2, 2) * 2.4 - 1.2
    y = get_op("grid_sample").reference([x, grid], _attrs("grid_sample"))
    torch.testing.assert_close(y, _bilinear_zeros(x, grid), rtol=1e-5, atol=1e-5)
    g = Graph()
    xv = g.add_input(TensorType("f32", ["N", 3, 4, 5]), "x")
    gv = g.add_input(TensorType("f32", ["N", "P", 7, 2]), "g")
    assert str(g.add("grid_sample", [xv, gv]).type) == "f32[N,3,P,7]"
    bad = g.add_input(TensorType("f32", ["N", 4, 4, 3]), "b")
    with pytest.raises(ShapeError, match="grid must be"):
        g.add("grid_sample", [xv, bad])
    x5 = g.add_input(TensorType("f32", [1, 1, 2, 2, 2]), "x5")
    g5 = g.add_input(TensorType("f32", [1, 2, 2, 2, 3]), "g5")
    with pytest.raises(ShapeError, match="cubic"):
        g.add("grid_sample", [x5, g5], {"mode": "cubic"})
