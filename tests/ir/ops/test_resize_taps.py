"""The resize reference's fast forms (ir/ops/image.py): nearest as a gather in x's own dtype,
small float axes as one f64 matmul by the interpolation matrix, and the per-axis taps made
once per shape. Each must give what the per-tap f64 sum gives."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scalefold.ir.graph import Attrs
from scalefold.ir.ops import image


def _attrs(sizes: tuple[int, ...], mode: str, ctm: str, **kw) -> Attrs:
    base = {"sizes": sizes, "scales": (), "roi": (), "mode": mode, "coordinate_transformation_mode": ctm,
            "nearest_mode": "floor", "cubic_coeff_a": -0.75, "exclude_outside": False,
            "extrapolation_value": 0.0, "antialias": False}
    base.update(kw)
    return Attrs(base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8, torch.int64])
@pytest.mark.parametrize("size", [(14, 18), (5, 3), (7, 7)])
def test_nearest_is_an_exact_gather_in_the_input_dtype(dtype: torch.dtype, size: tuple[int, int]) -> None:
    x = (torch.randn(2, 3, 7, 9) * 50).to(dtype) if dtype.is_floating_point else torch.randint(0, 200, (2, 3, 7, 9)).to(dtype)
    y = image._resize_ref([x], _attrs((2, 3) + size, "nearest", "asymmetric"))
    want = F.interpolate(x.double(), size=size, mode="nearest").to(dtype)   # torch's floor(asymmetric)
    assert y.dtype == dtype and torch.equal(y, want)
    same = image._resize_ref([x], _attrs(tuple(x.shape), "nearest", "asymmetric"))
    assert torch.equal(same, x) and same.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("mode,ctm", [("linear", "half_pixel"), ("linear", "align_corners"),
                                      ("cubic", "half_pixel"), ("cubic", "asymmetric")])
def test_dense_and_gathered_taps_agree(mode: str, ctm: str) -> None:
    x = torch.randn(2, 4, 9, 13, dtype=torch.float64)
    a = _attrs((2, 4, 17, 6), mode, ctm)
    dense = image._resize_axis(x, 2, 17 / 9, 17, None, a, dense=True)
    taps = image._resize_axis(x, 2, 17 / 9, 17, None, a, dense=False)
    torch.testing.assert_close(dense, taps, rtol=1e-13, atol=1e-13)
    want = F.interpolate(x, size=(17, 13), mode="bilinear" if mode == "linear" else "bicubic",
                         align_corners=ctm == "align_corners") if ctm in ("half_pixel", "align_corners") else None
    if want is not None:
        torch.testing.assert_close(dense, want, rtol=1e-12, atol=1e-12)


def test_taps_are_made_once_per_shape() -> None:
    x = torch.randn(1, 2, 11, 6)
    a = _attrs((1, 2, 23, 6), "linear", "pytorch_half_pixel")
    image._resize_ref([x], a)
    before = image._axis_taps.cache_info()
    for _ in range(3):
        image._resize_ref([torch.randn(1, 2, 11, 6)], a)
    after = image._axis_taps.cache_info()
    assert after.misses == before.misses and after.hits >= before.hits + 3
