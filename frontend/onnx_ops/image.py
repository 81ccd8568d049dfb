"""Image converters: Resize, Upsample, GridSample, AffineGrid, CenterCropPad."""
from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import onnx
import sympy
import torch

from ...ir.errors import FrontendError
from ...ir.types import Dim, canon_dim
from ..onnx_ctx import Ctx, onnx_op


def _norm_axes(ctx: Ctx, axes: Any, r: int) -> list[int]:
    out = [int(a) + r if int(a) < 0 else int(a) for a in axes]
    if any(not 0 <= a < r for a in out) or len(set(out)) != len(out):
        raise FrontendError(f"{ctx.where()}: invalid axes {list(axes)} for rank {r}")
    return out


def _nonempty(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is not None and t.numel() > 0 else None


def _need_const(ctx: Ctx, i: int, what: str) -> torch.Tensor:
    """Input i as a constant; the error names the tensor, since upgraded models rename ops."""
    c = ctx.const(i)
    if c is None:
        raise FrontendError(f"{ctx.where()}: input {i} ({what}, tensor '{ctx.node.input[i]}') "
                            f"must be a constant")
    return c


def _static_dim(ctx: Ctx, d: Dim, what: str) -> int:
    if not isinstance(d, int):
        raise FrontendError(f"{ctx.where()}: {what} needs a static input dim, got {d}")
    return d


def _scaled_dim(ctx: Ctx, d: Dim, s: float) -> Dim:
    """floor(d * s) as onnxruntime computes it, in float32 (0.7f * 10 is 7.0f, so 7, where
    float64 arithmetic gave 6). A symbolic d takes only scales whose float32 product is exact
    for any size below 2^16 (at most 8 significant bits: 2, 0.5, 1.5, 0.25...): floor(d * s)
    then holds exactly; other scales need a static dim."""
    if isinstance(d, int):
        return int(np.float32(s) * np.float32(d))
    frac = Fraction(s)
    if s > 0 and frac.numerator.bit_length() <= 8:
        return canon_dim(sympy.floor(d * sympy.Rational(frac.numerator, frac.denominator)))
    raise FrontendError(f"{ctx.where()}: scale {s} of a dynamic dim {d} (its float32 product is rounded; "
                        f"give sizes, or a static dim)")


@onnx_op("Resize", "Upsample")
def _resize(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = ctx.input(0)
    r = x.type.rank
    shape = list(x.type.shape)
    legacy = node.op_type == "Upsample" or ctx.opset < 11
    scales_t = sizes = roi_t = None
    if legacy:
        if node.op_type == "Upsample" and ctx.opset < 9:
            scales_t = torch.tensor(a["scales"], dtype=torch.float32)
        else:
            scales_t = _need_const(ctx, 1, "scales")
    else:
        roi_t = _nonempty(ctx.const(1))
        if len(node.input) > 2 and node.input[2]:
            scales_t = _nonempty(_need_const(ctx, 2, "scales"))
        if len(node.input) > 3 and node.input[3]:
            sizes = ctx.require_dims(3, "sizes") or None
        if scales_t is None and sizes is None:
            raise FrontendError(f"{ctx.where()}: one of scales or sizes must be given")
    axes = _norm_axes(ctx, a.get("axes", range(r)), r)
    mode = a.get("mode", "nearest")
    mode = {"bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    if legacy:
        # Resize-10 / Upsample: asymmetric coordinates, nearest rounds down
        ctm, nearest = "asymmetric", "floor"
    else:
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor")
    policy = a.get("keep_aspect_ratio_policy", "stretch")
    out: list[Dim] = list(shape)
    scales: list[float] = []
    if scales_t is not None:
        sv = [float(s) for s in scales_t.reshape(-1).tolist()]
        if len(sv) != len(axes):
            raise FrontendError(f"{ctx.where()}: {len(sv)} scales for {len(axes)} axes")
        scales = [1.0] * r
        for ax, s in zip(axes, sv):
            scales[ax] = s
            if s != 1.0:
                out[ax] = _scaled_dim(ctx, shape[ax], s)
    else:
        assert sizes is not None
        if len(sizes) != len(axes):
            raise FrontendError(f"{ctx.where()}: {len(sizes)} sizes for {len(axes)} axes")
        for ax, s in zip(axes, sizes):
            out[ax] = s
        if policy != "stretch":
            ratios = [_static_dim(ctx, out[ax], "keep_aspect_ratio_policy")
                      / _static_dim(ctx, shape[ax], "keep_aspect_ratio_policy") for ax in axes]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            scales = [s if i in axes else 1.0 for i in range(r)]
            out = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
    roi: tuple[float, ...] = ()
    if ctm == "tf_crop_and_resize":
        if roi_t is None:
            if len(node.input) < 2 or not node.input[1]:
                raise FrontendError(f"{ctx.where()}: tf_crop_and_resize needs roi")
            roi_t = _need_const(ctx, 1, "roi")
        rv = [float(v) for v in roi_t.reshape(-1).tolist()]
        full = [0.0] * r + [1.0] * r
        for i, ax in enumerate(axes):
            full[ax], full[r + ax] = rv[i], rv[len(axes) + i]
        roi = tuple(full)
    attrs = {"sizes": tuple(out), "scales": tuple(scales), "roi": roi, "mode": mode,
             "coordinate_transformation_mode": ctm, "nearest_mode": nearest,
             "cubic_coeff_a": float(a.get("cubic_coeff_a", -0.75)),
             "exclude_outside": bool(a.get("exclude_outside", 0)),
             "extrapolation_value": float(a.get("extrapolation_value", 0.0)),
             "antialias": bool(a.get("antialias", 0))}
    return [ctx.add("resize", [x], attrs)]


@onnx_op("GridSample")
def _grid_sample(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    mode = a.get("mode", "linear" if ctx.opset >= 20 else "bilinear")
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    return [ctx.add("grid_sample", [ctx.input(0), ctx.input(1)],
                    {"mode": mode, "padding_mode": a.get("padding_mode", "zeros"),
                     "align_corners": bool(a.get("align_corners", 0))})]


def _base_coords(n: int, align: bool) -> torch.Tensor:
    """Normalised pixel-centre coordinates of an axis of size n (ONNX AffineGrid)."""
    if align:
        return torch.linspace(-1, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return (torch.arange(n, dtype=torch.float64) * 2 + 1) / n - 1


@onnx_op("AffineGrid")
def _affine_grid(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    theta = ctx.input(0)
    size = ctx.require_dims(1, "size")
    sp = [_static_dim(ctx, d, "AffineGrid") for d in size[2:]]
    align = bool(a.get("align_corners", 0))
    nd = len(sp)
    if nd not in (2, 3):
        raise FrontendError(f"{ctx.where()}: size must be [N, C, H, W] or [N, C, D, H, W]")
    axes = [_base_coords(s, align) for s in sp]
    mesh = torch.meshgrid(*axes, indexing="ij")  # (D,) H, W order
    # the grid's last dim is ordered x, y[, z]: innermost spatial axis first, then 1 for the shift
    base = torch.stack([*reversed([m.reshape(-1) for m in mesh]), torch.ones(mesh[0].numel(),
                        dtype=torch.float64)], -1)
    bv = ctx.graph.add_const(base.to(theta.type.dtype.container), theta.type.dtype)
    tt = ctx.add("transpose", [theta], {"perm": (0, 2, 1)})  # [N, nd+1, nd]
    g = ctx.add("matmul", [bv, tt])  # [N, prod(sp), nd]
    return [ctx.add("reshape", [g], {"shape": (theta.type.shape[0], *sp, nd)})]


@onnx_op("CenterCropPad")
def _center_crop_pad(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = ctx.input(0)
    r = x.type.rank
    want = ctx.require_dims(1, "shape")
    axes = _norm_axes(ctx, a.get("axes", range(r)), r)
    if len(want) != len(axes):
        raise FrontendError(f"{ctx.where()}: {len(want)} target sizes for {len(axes)} axes")
    pads = [0] * (2 * r)
    starts, ends, sl_axes = [], [], []
    for ax, w in zip(axes, want):
        n = _static_dim(ctx, x.type.shape[ax], "CenterCropPad")
        w = _static_dim(ctx, w, "CenterCropPad")
        if w < n:
            s = (n - w) // 2
            starts.append(s)
            ends.append(s + w)
            sl_axes.append(ax)
        elif w > n:
            pads[ax] = (w - n) // 2
            pads[r + ax] = w - n - pads[ax]
    y = x
    if sl_axes:
        y = ctx.add("slice", [y], {"starts": tuple(starts), "ends": tuple(ends), "axes": tuple(sl_axes)})
    if any(pads):
        y = ctx.add("pad", [y], {"pads": tuple(pads)})
    return [y if y is not x else ctx.add("identity", [x])]

