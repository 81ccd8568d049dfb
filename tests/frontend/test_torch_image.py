"""The torch frontend's interpolation and adaptive pooling (``frontend/aten_image.py``):
``F.interpolate`` in every mode torch has (scale factors or sizes, align_corners, 1-3 spatial
dims) becomes one ``resize`` with torch's coordinate rule, and adaptive average pooling to sizes
that do not divide the input becomes per-axis averaging linears; both checked against eager on
the reference interpreter, the C target and (some) onnxruntime."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import scalefold as sf
from harness import assert_close
from scalefold.ir.errors import FrontendError
from scalefold.runtime import interp


class Interp(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.kw) * 1.5


CASES = [
    ((1, 3, 5, 7), dict(scale_factor=2, mode="nearest")),
    ((1, 3, 5, 7), dict(size=(8, 3), mode="nearest")),
    ((1, 3, 5, 7), dict(scale_factor=1.7, mode="nearest")),         # source index from 1 / 1.7
    ((1, 3, 5, 7), dict(size=(9, 11), mode="nearest-exact")),
    ((1, 3, 5, 7), dict(scale_factor=(2.5, 0.6), mode="bilinear")),
    ((1, 3, 5, 7), dict(size=(9, 4), mode="bilinear")),
    ((1, 3, 5, 7), dict(size=(9, 4), mode="bilinear", align_corners=True)),
    ((1, 3, 5, 7), dict(scale_factor=2, mode="bilinear", recompute_scale_factor=True)),
    ((2, 3, 6, 7), dict(size=(13, 5), mode="bicubic")),
    ((1, 3, 6, 7), dict(scale_factor=2, mode="bicubic", align_corners=True)),
    ((1, 3, 9), dict(scale_factor=3, mode="linear")),
    ((1, 3, 9), dict(size=4, mode="nearest")),
    ((1, 2, 3, 4, 5), dict(size=(4, 7, 3), mode="trilinear")),
    ((1, 2, 3, 4, 5), dict(scale_factor=2, mode="nearest")),
    # align_corners maps by the output size even when torch was given a factor
    ((1, 3, 7, 7), dict(scale_factor=0.5, mode="bilinear", align_corners=True)),
    ((1, 2, 5), dict(scale_factor=1.5, mode="linear", align_corners=True)),
    # a source coordinate a hair above an integer (3.0000000000000004) picks that pixel
    ((1, 1, 7), dict(size=17, mode="nearest-exact")),
    ((1, 1, 10), dict(size=14, mode="nearest-exact")),
    # an axis whose size a factor leaves unchanged: nearest / linear copy it, bicubic and
    # nearest-exact interpolate by the factor
    ((1, 1, 4, 4), dict(scale_factor=1.2, mode="nearest")),
    ((1, 1, 4, 4), dict(scale_factor=1.2, mode="bilinear")),
    ((1, 1, 4, 4), dict(scale_factor=1.2, mode="bicubic")),
    ((1, 1, 4, 4), dict(scale_factor=1.2, mode="nearest-exact")),
]


@pytest.mark.parametrize("shape,kw", CASES)
def test_interpolate_matches_eager(shape: tuple, kw: dict) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape) + len(kw)))
    m = Interp(**kw)
    want = m(x)
    g = sf.from_torch(m, (x,))
    assert [n.op for n in g.nodes] == ["resize", "mul"]
    # torch's own f32 bicubic weights are off by a few ulps of the f64 reference
    atol = 1e-5 if kw["mode"] == "bicubic" else None
    assert_close(interp.run(g, x)[0], want, atol=atol, what="interpreter")
    assert_close(sf.compile(g, target="c")(x), want, atol=atol, what="c")


@pytest.mark.parametrize("kw", [dict(scale_factor=2, mode="nearest"), dict(size=(9, 4), mode="bilinear"),
                                dict(size=(13, 5), mode="bicubic", align_corners=True)])
def test_interpolate_exports_to_onnx(kw: dict, tmp_path) -> None:
    import onnxruntime as ort
    x = torch.randn(1, 2, 6, 7, generator=torch.Generator().manual_seed(3))
    m = Interp(**kw)
    path = tmp_path / "m.onnx"
    sf.to_onnx(sf.from_torch(m, (x,)), str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert_close(torch.from_numpy(got), m(x), what="onnxruntime")


def test_antialiased_interpolation_needs_static_sizes() -> None:
    """Antialiased resizing is a constant matrix per axis (tests/frontend/test_torch_gaps.py
    checks its numbers); a dynamic spatial size is refused by name."""
    m = Interp(size=(3, 3), mode="bilinear", antialias=True)
    with pytest.raises(FrontendError, match="antialias.*static spatial sizes"):
        sf.from_torch(m, (torch.randn(1, 2, 8, 8),),
                      dynamic_shapes=({2: torch.export.Dim("H", min=4, max=64)},))


@pytest.mark.parametrize("ins,outs", [((1, 3, 13, 13), (6, 6)), ((2, 4, 7, 9), (3, 4)), ((1, 2, 10), (3,)),
                                      ((1, 2, 5, 6, 7), (2, 3, 4)), ((1, 3, 7, 7), (7, 3))])
def test_adaptive_avg_pool_to_sizes_that_do_not_divide(ins: tuple, outs: tuple) -> None:
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[len(outs)](outs)
    x = torch.randn(*ins, generator=torch.Generator().manual_seed(sum(ins)))
    g = sf.from_torch(pool, (x,))
    assert "linear" in {n.op for n in g.nodes} and "avg_pool" not in {n.op for n in g.nodes}
    assert_close(interp.run(g, x)[0], pool(x), what="interpreter")
    assert_close(sf.compile(g, target="c")(x), pool(x), what="c")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adaptive_avg_pool_in_half_types_rounds_once(dtype: torch.dtype) -> None:
    """Averaged in f32 and rounded once (with the weights and the middle result in the half
    type, bf16 was off by 3x torch's own error)."""
    pool = nn.AdaptiveAvgPool2d((3, 4))
    x = (torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(4)) * 10).to(dtype)
    got = sf.compile(pool, (x,), target="c")(x)
    exact = pool(x.double())
    eps = torch.finfo(dtype).eps               # one rounding of the f32 mean: half of this
    assert got.dtype == dtype
    assert bool(((got.double() - exact).abs() <= eps / 2 * exact.abs() * 1.01 + 1e-6).all())


def test_averaging_matrix_is_torchs_windows() -> None:
    from scalefold.frontend.aten_image import averaging_matrix
    m = averaging_matrix(5, 3)        # windows [0, 2), [1, 4), [3, 5)
    want = torch.tensor([[.5, .5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, .5, .5]], dtype=torch.float64)
    assert torch.allclose(m, want)
