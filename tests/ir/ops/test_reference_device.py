"""References build their index / fill tensors on their input's device. On a GPU target a
reference that made CPU tensors of its own mixed devices, and the executor then ran that
step on the CPU for good: two host copies per call and no CUDA graph (swin's pads, coat's
resizes: 0.2-0.5x of torch eager on an H200). The ``meta`` device stands in for the GPU here:
combining a meta tensor with a CPU tensor of any size raises, as on CUDA, except 0-d
scalars, which both allow."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir.ops import get_op
from scalefold.ir.types import TensorType
from scalefold.ir import dtypes as dt


def _on_meta(name: str, x: torch.Tensor, **attrs) -> torch.Tensor:
    op = get_op(name)
    a = op.bind_attrs(attrs)
    (want,) = op.infer([TensorType(dt.from_torch(x.dtype), tuple(x.shape))], a)
    out = op.reference([x.to("meta")], a)
    assert out.device.type == "meta" and tuple(out.shape) == want.shape and out.dtype == x.dtype
    return out


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int32, torch.uint8])
def test_pad_builds_on_the_input_device(mode: str, dtype: torch.dtype) -> None:
    x = torch.zeros(2, 3, 5, 6, dtype=dtype)
    _on_meta("pad", x, pads=(0, 0, 1, 2, 0, 0, 3, 1), mode=mode, value=2.0)
    if mode == "constant":
        _on_meta("pad", x, pads=(0, 0, -1, 2, 0, 0, 1, -2), mode=mode, value=-1.0)


@pytest.mark.parametrize("attrs", [
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    dict(mode="nearest", coordinate_transformation_mode="half_pixel"),
    dict(mode="linear", coordinate_transformation_mode="align_corners"),
    dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
    dict(mode="cubic", exclude_outside=True),
    dict(mode="linear", antialias=True),
    dict(mode="cubic", antialias=True),
    dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize",
         roi=(0.0, 0.0, 0.1, 0.2, 1.0, 1.0, 0.9, 1.1), extrapolation_value=3.0),
])
@pytest.mark.parametrize("up", [True, False])
def test_resize_builds_on_the_input_device(attrs: dict, up: bool) -> None:
    x = torch.zeros(1, 2, 8, 10)
    sizes = (1, 2, 16, 15) if up else (1, 2, 3, 4)
    _on_meta("resize", x, sizes=sizes, **attrs)


def _run_meta(name: str, xs: list, **attrs):
    op = get_op(name)
    a = op.bind_attrs(attrs)
    wants = op.infer([TensorType(dt.from_torch(x.dtype), tuple(x.shape)) for x in xs], a)
    res = op.reference([x.to("meta") for x in xs], a)
    for r, w in zip(res if isinstance(res, tuple) else (res,), wants):
        assert r.device.type == "meta" and tuple(r.shape) == w.shape, (name, r.shape, w)


def test_other_references_build_on_the_input_device() -> None:
    x = torch.zeros(2, 3, 9, 10)
    _run_meta("avg_pool", [x], kernel=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False)
    _run_meta("slice", [x], starts=(1,), ends=(9,), axes=(2,), steps=(3,))
    q = torch.zeros(1, 2, 5, 8)
    _run_meta("sdpa", [q, q, q], causal=True)
    data, idx = torch.zeros(4, 5, 6), torch.zeros(3, 2, dtype=torch.int64)
    _run_meta("gather_nd", [data, idx])
    _run_meta("scatter_nd", [data, idx, torch.zeros(3, 6)])


def test_fp4_codes_are_made_and_read_on_the_input_device() -> None:
    # the E2M1 grid is computed on the codes' device (a host table indexed by device codes,
    # or moved to the device at each call, would sync and keep the step out of CUDA graphs)
    cast, deq = get_op("cast"), get_op("dequantize")
    x = torch.zeros(4, 8, device="meta")
    assert cast.reference([x], cast.bind_attrs({"to": "f4e2m1"})).device.type == "meta"
    codes = torch.zeros(4, 8, dtype=torch.uint8, device="meta")
    out = cast.reference([codes], cast.bind_attrs({"to": "f32", "from_dtype": "f4e2m1"}))
    assert out.device.type == "meta" and out.dtype == torch.float32
    out = deq.reference([codes, torch.ones(4, 1, device="meta"), None],
                        deq.bind_attrs({"axis": 0, "qtype": "f4e2m1"}))
    assert out.device.type == "meta"
    # and the grid is the one of the format
    from scalefold.ir.dtypes import FP4_E2M1_GRID, fp4_e2m1_decode, fp4_e2m1_encode
    all_codes = torch.arange(16, dtype=torch.uint8)
    assert fp4_e2m1_decode(all_codes).tolist() == list(FP4_E2M1_GRID) + [-v for v in FP4_E2M1_GRID]
    assert torch.equal(fp4_e2m1_encode(fp4_e2m1_decode(all_codes)), all_codes)


def test_pad_and_resize_on_meta_match_their_cpu_shapes_and_values_on_cpu() -> None:
    # the same calls on the CPU still give the values the references always gave
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    out = get_op("pad").reference([x], get_op("pad").bind_attrs({"pads": (0, 0, 1, 1, 0, 0, 1, 1),
                                                                 "mode": "constant", "value": 9.0}))
    assert torch.equal(out, torch.nn.functional.pad(x, (1, 1, 1, 1), value=9.0))
    a = get_op("resize").bind_attrs({"sizes": (1, 1, 6, 8), "mode": "linear",
                                     "coordinate_transformation_mode": "pytorch_half_pixel"})
    got = get_op("resize").reference([x], a)
    want = torch.nn.functional.interpolate(x, size=(6, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(got, want, atol=1e-6)
