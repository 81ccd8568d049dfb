"""Image sampling ops with exact ONNX semantics: resize (ONNX Resize/Upsample) and grid_sample
(ONNX GridSample)."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, canon_dim, dims_equal
from .common import require
from .registry import AttrSpec, Cost, defop, io_bytes, numel

_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                "asymmetric", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


# ---- resize -------------------------------------------------------------------------------
def _resize_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    sizes = attrs["sizes"]
    if len(sizes) != x.rank:
        raise ShapeError(f"resize sizes has {len(sizes)} entries for x of rank {x.rank}")
    if x.dtype.name in ("bool",) or x.dtype.bits < 8:
        raise ShapeError(f"resize does not support dtype {x.dtype.name}")
    scales = attrs["scales"]
    if scales and len(scales) != x.rank:
        raise ShapeError(f"resize scales has {len(scales)} entries for x of rank {x.rank}")
    if any(s <= 0 for s in scales):
        raise ShapeError(f"resize scales must be positive, got {scales}")
    roi = attrs["roi"]
    if roi and len(roi) != 2 * x.rank:
        raise ShapeError(f"resize roi needs 2*rank = {2 * x.rank} entries, got {len(roi)}")
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize" and not roi:
        raise ShapeError("resize tf_crop_and_resize needs roi")
    if attrs["antialias"] and attrs["mode"] == "nearest":
        raise ShapeError("resize antialias is not defined for mode nearest")
    for d in sizes:
        if isinstance(d, int) and d < 0:
            raise ShapeError(f"resize sizes must be >= 0, got {sizes}")
    return [TensorType(x.dtype, tuple(canon_dim(d) for d in sizes))]


def _coeffs(ratios: torch.Tensor, scale: float, attrs: Attrs) -> torch.Tensor:
    """[out, n] interpolation coefficients for each output position's ratio in (0, 1]."""
    mode, r = attrs["mode"], ratios[:, None]
    if mode == "nearest":
        nm = attrs["nearest_mode"]
        if nm == "round_prefer_floor":
            right = r > 0.5
        elif nm == "round_prefer_ceil":
            right = r >= 0.5
        elif nm == "floor":
            right = torch.zeros_like(r, dtype=torch.bool)
        else:
            right = torch.ones_like(r, dtype=torch.bool)
        right = right | (r == 1)  # an exact source pixel: ratio 1 picks the right neighbour
        return torch.cat([(~right).double(), right.double()], 1)
    A = attrs["cubic_coeff_a"]
    if attrs["antialias"]:
        s = min(scale, 1.0)
        if mode == "linear":
            start = int(math.floor(-1 / s) + 1)
            idx = torch.arange(start, 2 - start, dtype=torch.float64, device=r.device)[None, :]
            c = (1 - ((idx - r) * s).abs()).clamp(0, 1)
        else:
            start = int(math.floor(-2 / s) + 1)
            idx = torch.arange(start, 2 - start, dtype=torch.float64, device=r.device)[None, :]
            x = (s * (idx - r)).abs()
            c = torch.where(x <= 1, (A + 2) * x ** 3 - (A + 3) * x ** 2 + 1,
                            torch.where(x < 2, A * x ** 3 - 5 * A * x ** 2 + 8 * A * x - 4 * A,
                                        torch.zeros_like(x)))
        return c / c.sum(1, keepdim=True)
    if mode == "linear":
        return torch.cat([1 - r, r], 1)
    q = 1 - r
    return torch.cat([((A * (r + 1) - 5 * A) * (r + 1) + 8 * A) * (r + 1) - 4 * A,
                      ((A + 2) * r - (A + 3)) * r * r + 1,
                      ((A + 2) * q - (A + 3)) * q * q + 1,
                      ((A * (q + 1) - 5 * A) * (q + 1) + 8 * A) * (q + 1) - 4 * A], 1)


def _resize_axis(x: torch.Tensor, axis: int, scale: float, out_n: int, roi: tuple[float, float] | None,
                 attrs: Attrs, dense: bool = False) -> torch.Tensor:
    """Resize float64 ``x`` along one axis (ONNX's separable per-axis interpolation);
    ``dense`` allows the matmul form on small axes (float results only: its f64 sums may
    differ from the taps' in the last bit, which rounding to an integer could show)."""
    in_n = x.shape[axis]
    if out_n == 0 or in_n == 0:
        shape = list(x.shape)
        shape[axis] = out_n
        return x.new_zeros(shape)
    idx, c, extra = _axis_taps(in_n, out_n, scale, roi, _tap_key(attrs), str(x.device))
    xm = x.movedim(axis, -1)
    n = c.shape[1]
    if dense and in_n * out_n <= _DENSE_LIMIT:
        # small axes (CNN feature maps): one f64 matmul by the [in, out] interpolation matrix
        # is far cheaper than materialising [..., out, taps] gathers
        res = xm @ _dense_taps(in_n, out_n, scale, roi, _tap_key(attrs), str(x.device))
    else:
        g = xm[..., idx.reshape(-1)].reshape(*xm.shape[:-1], out_n, n)
        res = (g * c).sum(-1)
    if extra is not None:
        res = torch.where(extra, float(attrs["extrapolation_value"]), res)
    return res.movedim(-1, axis)


_DENSE_LIMIT = 1 << 14
_TAP_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
              "antialias")


def _tap_key(attrs: Attrs) -> tuple:
    return tuple(attrs[k] for k in _TAP_ATTRS)


@functools.lru_cache(maxsize=256)
def _axis_taps(in_n: int, out_n: int, scale: float, roi: tuple[float, float] | None, key: tuple,
               device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(source index [out, taps] clamped to the axis, f64 coefficients [out, taps], the
    outputs outside the input for tf_crop_and_resize or None) of one axis. They depend only
    on the sizes and attributes, so they are made once per shape (the reference of a resize
    in a model runs at every call); callers must not write into them."""
    attrs = dict(zip(_TAP_ATTRS, key))
    out_w = scale * in_n
    # every index / coefficient tensor lives on x's device: a CPU one would send the whole
    # step to the CPU on a GPU target (and keep the step out of CUDA graphs)
    y = torch.arange(out_n, dtype=torch.float64, device=device)
    ctm, extra = attrs["coordinate_transformation_mode"], None
    if ctm == "align_corners":
        xo = torch.zeros_like(y) if out_w == 1 else y * (in_n - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        xo = y / scale
    elif ctm == "tf_crop_and_resize":
        assert roi is not None
        if out_w == 1:
            xo = torch.full_like(y, (roi[1] - roi[0]) * (in_n - 1) / 2)
        else:
            xo = y * (roi[1] - roi[0]) * (in_n - 1) / (out_w - 1)
        xo = xo + roi[0] * (in_n - 1)
        extra = (xo < 0) | (xo > in_n - 1)
    elif ctm == "pytorch_half_pixel":
        xo = torch.full_like(y, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        xo = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = in_n / 2 * (1 - out_n / out_w)
        xo = offset + (y + 0.5) / scale - 0.5
    xi = torch.floor(xo)
    ratios = torch.where(xo == xi, torch.ones_like(xo), xo - xi)
    c = _coeffs(ratios, scale, attrs)  # type: ignore[arg-type]
    n = c.shape[1]
    pad = (n + 1) // 2
    # the taps from xo's own floor: floor(xo + pad) can round to the next integer when xo is
    # just above one (xo = 3.0000000000000004 gave pixel 2 instead of 3 for nearest)
    p = xi + pad
    frac = xo - xi
    if n % 2 == 0:
        off = torch.where(frac == 0, -(n // 2.0), -(n // 2.0) + 1)
    else:
        base = -((n - 1) // 2)
        off = torch.where(frac <= 0.5, float(base), base + 1.0)
    idx = (p + off).long()[:, None] + torch.arange(n, device=device)[None, :] - pad
    if attrs["exclude_outside"]:
        c = torch.where((idx < 0) | (idx >= in_n), torch.zeros_like(c), c)
        tot = c.sum(1, keepdim=True)
        c = c / torch.where(tot == 0, torch.ones_like(tot), tot)
    return idx.clamp(0, in_n - 1), c, extra


@functools.lru_cache(maxsize=64)      # at most 2^14 f64 each: 8 MB in all
def _dense_taps(in_n: int, out_n: int, scale: float, roi: tuple[float, float] | None, key: tuple,
                device: str) -> torch.Tensor:
    """The f64 [in, out] matrix of one axis' taps (coefficients of equal source pixels add,
    as the gathered sum adds them)."""
    idx, c, _ = _axis_taps(in_n, out_n, scale, roi, key, device)
    m = torch.zeros(in_n, out_n, dtype=torch.float64, device=device)
    cols = torch.arange(out_n, device=device)[:, None].expand_as(idx)
    m.index_put_((idx.reshape(-1), cols.reshape(-1)), c.reshape(-1), accumulate=True)
    return m


def _resize_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = xs[0]
    r = x.dim()
    sizes = [int(d) for d in attrs["sizes"]]
    scales = list(attrs["scales"]) or [sizes[i] / x.shape[i] if x.shape[i] else 1.0 for i in range(r)]
    roi = attrs["roi"]
    # nearest picks one source pixel per output: a gather in x's own dtype, exact, with no
    # f64 copy (outside tf_crop_and_resize's extrapolation and exclude_outside's renormalising)
    pick = attrs["mode"] == "nearest" and not attrs["exclude_outside"] and \
        attrs["coordinate_transformation_mode"] != "tf_crop_and_resize"
    res = x if pick else x.double()
    for ax in range(r):
        ax_roi = (roi[ax], roi[ax + r]) if roi else None
        if (math.isclose(scales[ax], 1.0) and sizes[ax] == res.shape[ax]
                and (ax_roi is None or (math.isclose(ax_roi[0], 0.0) and math.isclose(ax_roi[1], 1.0)))):
            continue
        if pick and sizes[ax] and res.shape[ax]:
            idx, c, _ = _axis_taps(res.shape[ax], sizes[ax], float(scales[ax]), ax_roi, _tap_key(attrs),
                                   str(x.device))
            res = res.index_select(ax, idx.gather(1, c.argmax(1, keepdim=True)).reshape(-1))
            continue
        res = _resize_axis(res, ax, float(scales[ax]), sizes[ax], ax_roi, attrs, x.is_floating_point())
    if pick and res.dtype == x.dtype:
        return res if res is not x else x.clone()
    if x.is_floating_point():
        return res.to(x.dtype)
    info = torch.iinfo(x.dtype)
    return torch.round(res).clamp(info.min, info.max).to(x.dtype)


def _resize_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    taps = {"nearest": 1, "linear": 2, "cubic": 4}[attrs["mode"]]
    return Cost(2 * taps * ins[0].rank * numel(outs[0]), io_bytes(ins, outs))


defop("resize", family="image", inputs=1, input_names=("x",),
      attrs={"sizes": AttrSpec("dims", doc="full output shape"),
             "scales": AttrSpec("floats", (), doc="per-axis scale for the coordinate transform "
                                                  "(empty: sizes[i] / x.shape[i])"),
             "roi": AttrSpec("floats", (), doc="[starts..., ends...] (tf_crop_and_resize)"),
             "mode": AttrSpec("str", "nearest", ("nearest", "linear", "cubic")),
             "coordinate_transformation_mode": AttrSpec("str", "half_pixel", _COORD_MODES),
             "nearest_mode": AttrSpec("str", "round_prefer_floor", _NEAREST_MODES),
             "cubic_coeff_a": AttrSpec("float", -0.75),
             "exclude_outside": AttrSpec("bool", False),
             "extrapolation_value": AttrSpec("float", 0.0),
             "antialias": AttrSpec("bool", False)},
      shape=_resize_shape, reference=_resize_ref, cost=_resize_cost,
      doc="resize(x)[sizes, scales, roi, mode, coordinate_transformation_mode, nearest_mode, "
          "cubic_coeff_a, exclude_outside, extrapolation_value, antialias] (ONNX Resize-19): "
          "separable interpolation, one axis at a time, to the output shape ``sizes``. Output "
          "index y on an axis maps to source coordinate x_ori by coordinate_transformation_mode "
          "using the axis scale (scales[i], or sizes[i]/in[i] when scales is empty); "
          "nearest picks one neighbour by nearest_mode, linear blends 2 taps, cubic 4 taps with "
          "coefficient a=cubic_coeff_a; antialias (linear/cubic) widens the kernel by 1/scale "
          "when downscaling; exclude_outside zeroes and renormalises taps outside the input; "
          "tf_crop_and_resize samples inside roi and writes extrapolation_value outside the "
          "input. Computed in f64; integer outputs are rounded half-to-even and saturated.")


# ---- grid_sample --------------------------------------------------------------------------
def _grid_sample_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, grid = require(ins[0], "x"), require(ins[1], "grid")
    if x.rank not in (4, 5):
        raise ShapeError(f"grid_sample needs x [N, C, *spatial] with 2 or 3 spatial dims, got {x}")
    if not x.dtype.is_float or not grid.dtype.is_float:
        raise ShapeError(f"grid_sample needs float x and grid, got {x.dtype.name}, {grid.dtype.name}")
    n = x.rank - 2
    if grid.rank != x.rank or not dims_equal(grid.shape[-1], n):
        raise ShapeError(f"grid_sample grid must be [N, *out_spatial, {n}], got {grid}")
    if not dims_equal(grid.shape[0], x.shape[0]):
        raise ShapeError(f"grid_sample batch mismatch: x {x}, grid {grid}")
    if attrs["mode"] == "cubic" and n == 3:
        raise ShapeError("grid_sample cubic mode supports 2 spatial dims only")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1], *grid.shape[1:-1]))]


def _grid_sample_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, grid = xs[0], xs[1]
    mode = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}[attrs["mode"]]
    y = F.grid_sample(x.double(), grid.double(), mode=mode, padding_mode=attrs["padding_mode"],
                      align_corners=attrs["align_corners"])
    return y.to(x.dtype)


def _grid_sample_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    taps = {"nearest": 1, "linear": 2, "cubic": 4}[attrs["mode"]] ** (ins[0].rank - 2)
    return Cost(2 * taps * numel(outs[0]), io_bytes(ins, outs))


defop("grid_sample", family="image", inputs=2, input_names=("x", "grid"),
      attrs={"mode": AttrSpec("str", "linear", ("linear", "nearest", "cubic")),
             "padding_mode": AttrSpec("str", "zeros", ("zeros", "border", "reflection")),
             "align_corners": AttrSpec("bool", False)},
      shape=_grid_sample_shape, reference=_grid_sample_ref, cost=_grid_sample_cost,
      doc="grid_sample(x, grid)[mode, padding_mode, align_corners] (ONNX GridSample-20): x "
          "[N, C, *in_spatial] (2 or 3 spatial dims), grid [N, *out_spatial, n] of normalised "
          "coordinates in [-1, 1] ordered (x, y[, z]) i.e. innermost spatial axis first; output "
          "[N, C, *out_spatial] sampled with linear/nearest (half-to-even)/cubic (a=-0.75, 2-D "
          "only) interpolation. align_corners maps -1/1 to the centres (True) or outer edges "
          "(False) of the corner pixels; out-of-range samples read zeros, the border, or the "
          "reflected image per padding_mode.")
