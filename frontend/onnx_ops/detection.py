"""Object-detection converters: RoiAlign and NonMaxSuppression."""
from __future__ import annotations

from typing import Any

import onnx

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ..onnx_ctx import Ctx, onnx_op
from .quant import cast, scalar


@onnx_op("RoiAlign")
def _roi_align(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    # RoiAlign-10 had no coordinate_transformation_mode and behaved as output_half_pixel
    ctm = a.get("coordinate_transformation_mode", "half_pixel" if ctx.opset >= 16 else "output_half_pixel")
    if ctm not in ("half_pixel", "output_half_pixel"):
        raise FrontendError(f"{ctx.where()}: unknown coordinate_transformation_mode {ctm!r}")
    mode = a.get("mode", "avg")
    if mode not in ("avg", "max"):
        raise FrontendError(f"{ctx.where()}: unknown mode {mode!r}")
    bi = cast(ctx, ctx.input(2), dt.i64)
    return [ctx.add("roi_align", [ctx.input(0), ctx.input(1), bi],
                    {"mode": mode, "output_height": int(a.get("output_height", 1)),
                     "output_width": int(a.get("output_width", 1)),
                     "sampling_ratio": int(a.get("sampling_ratio", 0)),
                     "spatial_scale": float(a.get("spatial_scale", 1.0)),
                     "half_pixel": ctm == "half_pixel"})]


@onnx_op("NonMaxSuppression")
def _nms(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    cpb = int(a.get("center_point_box", 0))
    if cpb not in (0, 1):
        raise FrontendError(f"{ctx.where()}: center_point_box must be 0 or 1, got {cpb}")
    boxes, scores = ctx.input(0), ctx.input(1)
    # absent inputs: no boxes kept (max_output_boxes_per_class 0), IoU threshold 0, no score filter
    limit = ctx.input(2) if ctx.input(2) is not None else scalar(ctx, 0, dt.i64)
    iou = ctx.input(3) if ctx.input(3) is not None else scalar(ctx, 0.0, dt.f32)
    sthr = ctx.input(4)
    filt = sthr is not None
    if sthr is None:
        sthr = scalar(ctx, 0.0, dt.f32)
    return [ctx.add("nms", [boxes, scores, limit, iou, sthr],
                    {"center_point_box": bool(cpb), "score_filter": filt,
                     "count": ctx.fresh_symbol("nsel")})]
