"""IR op -> ONNX nodes for the less common ops: inverse/hyperbolic trig, bitshift, cumprod,
dim_values, lp_pool and lrn. Registered into ``onnx_ops.RENDER``.

- bitshift: ONNX BitShift only takes unsigned types and (before opset 28) leaves counts of the
  type's width or more undefined, so counts are clamped first and out-of-range results
  selected explicitly; signed values shift in the unsigned type of their width (casts wrap),
  and a signed right shift is ~(~x >> y) for negative x, i.e. arithmetic.
- cumprod: CumProd only exists from opset 26 and onnxruntime lacks it, so a static axis is
  scanned in log2(n) doubling steps (Hillis-Steele: y *= y shifted by 1, 2, 4, ... with ones
  shifted in); products associate differently from a sequential loop (float rounding only).
"""
from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from ..ir import dtypes as dt
from ..ir.graph import Node
from ..ir.ops.common import norm_axis
from .onnx_build import Emitter, onnx_type, to_numpy
from .onnx_nn import _window_attrs
from .onnx_ops import _UNARY, _elementwise, compute_dtype, inp, render, where

_TRIG = {"acos": "Acos", "acosh": "Acosh", "asin": "Asin", "asinh": "Asinh", "atan": "Atan",
         "atanh": "Atanh", "cosh": "Cosh", "sinh": "Sinh", "tan": "Tan"}
_UNARY.update(_TRIG)
render(*_TRIG)(_elementwise)

_UNSIGNED = {8: TensorProto.UINT8, 16: TensorProto.UINT16, 32: TensorProto.UINT32, 64: TensorProto.UINT64}


@render("bitshift")
def _bitshift(cx: Emitter, node: Node) -> list[str]:
    d = node.inputs[0].dtype
    x, y = inp(cx, node, 0), inp(cx, node, 1)
    bits = d.bits
    right = node.attrs["direction"] == "right"
    direction = "RIGHT" if right else "LEFT"
    out = cx.op("Or", [cx.op("Less", [y, cx.scalar(0, d)]), cx.op("GreaterOrEqual", [y, cx.scalar(bits, d)])])
    fill = bits - 1 if right and d.is_signed else 0      # a width-1 right shift is the sign fill
    yc = where(cx, out, cx.scalar(fill, d), y, d)

    def shift(v: str) -> str:
        if not d.is_signed:
            return cx.op("BitShift", [v, yc], direction=direction)
        u = _UNSIGNED[bits]
        r = cx.op("BitShift", [cx.op("Cast", [v], to=u), cx.op("Cast", [yc], to=u)], direction=direction)
        return cx.op("Cast", [r], to=onnx_type(d))

    def bit_not(v: str) -> str:  # ~v = -v - 1, wrapping
        return cx.op("Sub", [cx.op("Neg", [v]), cx.scalar(1, d)])

    if right and d.is_signed:
        neg = cx.op("Less", [x, cx.scalar(0, d)])
        r = shift(where(cx, neg, bit_not(x), x, d))
        return [where(cx, neg, bit_not(r), r, d)]
    return [where(cx, out, cx.scalar(0, d), shift(x), d)]


def _ones_like_slice(cx: Emitter, y: str, ax: int, k: int, d: dt.DType) -> str:
    """Ones shaped like ``y`` but ``k`` long on axis ``ax``."""
    part = cx.op("Slice", [y, cx.ints([0]), cx.ints([k]), cx.ints([ax])])
    raw, _ = to_numpy(torch.ones(1, dtype=d.container), d)
    return cx.op("ConstantOfShape", [cx.op("Shape", [part])],
                 value=helper.make_tensor("value", onnx_type(d), [1], raw, raw=True))


@render("cumprod")
def _cumprod(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    ax = norm_axis(a["axis"], xv.type.rank)
    n = xv.shape[ax]
    if not isinstance(n, int):
        raise cx.fail(f"cumprod along a symbolic axis ({n}) has no ONNX form onnxruntime runs")
    d = compute_dtype(xv.dtype) if xv.dtype.is_float else xv.dtype
    y = cx.cast(inp(cx, node, 0), xv.dtype, d)

    def flip(v: str) -> str:
        return cx.op("Slice", [v, cx.ints([-1]), cx.ints([-2 ** 62]), cx.ints([ax]), cx.ints([-1])])

    def shifted(v: str, k: int) -> str:   # v moved k places along the axis, ones shifted in
        head = cx.op("Slice", [v, cx.ints([0]), cx.ints([n - k]), cx.ints([ax])])
        return cx.op("Concat", [_ones_like_slice(cx, v, ax, k, d), head], axis=ax)

    if a["reverse"]:
        y = flip(y)
    if a["exclusive"] and n > 0:
        y = shifted(y, 1)
    k = 1
    while k < n:
        y = cx.op("Mul", [y, shifted(y, k)])
        k *= 2
    if a["reverse"]:
        y = flip(y)
    return [cx.cast(y, d, xv.dtype)]


@render("dim_values")
def _dim_values(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    v = cx.cast(cx.dims(list(a["values"])), dt.i64, a["dtype"])
    if a["scalar"] and len(a["values"]) == 1:
        v = cx.op("Reshape", [v, cx.ints([])])
    else:
        v = cx.op("Identity", [v])  # a node of its own, so the output can take its name
    return [v]


@render("lp_pool")
def _lp_pool(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    cx.need_opset(18, "LpPool with dilations and ceil_mode")
    d = compute_dtype(xv.dtype)
    attrs = _window_attrs(node, xv.type.rank - 2, True)
    y = cx.op("LpPool", [cx.cast(inp(cx, node, 0), xv.dtype, d)], p=a["p"],
              ceil_mode=int(a["ceil_mode"]), **attrs)
    return [cx.cast(y, d, xv.dtype)]


@render("lrn")
def _lrn(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    d = compute_dtype(xv.dtype)
    y = cx.op("LRN", [cx.cast(inp(cx, node, 0), xv.dtype, d)], size=a["size"], alpha=a["alpha"],
              beta=a["beta"], bias=a["bias"])
    return [cx.cast(y, d, xv.dtype)]


# ---- ops that ONNX has one for one -------------------------------------------------------------

@render("compress")
def _compress(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Compress", [inp(cx, node, 0), inp(cx, node, 1)], axis=node.attrs["axis"])]


@render("nonzero")
def _nonzero(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("NonZero", [inp(cx, node, 0)])]


@render("roi_align")
def _roi_align(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    # export opsets start at 17, past RoiAlign-16's coordinate_transformation_mode
    return [cx.op("RoiAlign", [inp(cx, node, 0), inp(cx, node, 1), inp(cx, node, 2)], mode=a["mode"],
                  output_height=a["output_height"], output_width=a["output_width"],
                  sampling_ratio=a["sampling_ratio"], spatial_scale=float(a["spatial_scale"]),
                  coordinate_transformation_mode="half_pixel" if a["half_pixel"] else "output_half_pixel")]


@render("nms")
def _nms(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    ins = [inp(cx, node, i) for i in range(5 if a["score_filter"] else 4)]
    return [cx.op("NonMaxSuppression", ins, center_point_box=int(a["center_point_box"]))]


@render("if_select")
def _if_select(cx: Emitter, node: Node) -> list[str]:
    """An If whose branches pass the two computed values on (subgraphs may read outer names)."""
    branches = {}
    for key, i in (("then_branch", 1), ("else_branch", 2)):
        v = node.inputs[i]
        out = cx.fresh(key)
        branches[key] = helper.make_graph(
            [helper.make_node("Identity", [cx.value(v)], [out])], key, [],
            [helper.make_tensor_value_info(out, onnx_type(v.dtype), None)])
    return [cx.op("If", [inp(cx, node, 0)], **branches)]


@render("unique")
def _unique(cx: Emitter, node: Node) -> list[str]:
    return cx.op("Unique", [inp(cx, node, 0)], n_out=4, axis=node.attrs["axis"],
                 sorted=int(node.attrs["sorted"]))


@render("gather_nd")
def _gather_nd(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("GatherND", [inp(cx, node, 0), inp(cx, node, 1)], batch_dims=node.attrs["batch_dims"])]


@render("scatter_elements", "scatter_nd")
def _scatter(cx: Emitter, node: Node) -> list[str]:
    op = "ScatterElements" if node.op == "scatter_elements" else "ScatterND"
    extra = {"axis": node.attrs["axis"]} if op == "ScatterElements" else {}
    return [cx.op(op, [inp(cx, node, i) for i in range(3)], reduction=node.attrs["reduction"], **extra)]


@render("einsum")
def _einsum(cx: Emitter, node: Node) -> list[str]:
    d = node.inputs[0].dtype
    cd = compute_dtype(d) if d.is_float else d
    y = cx.op("Einsum", [cx.cast(inp(cx, node, i), d, cd) for i in range(len(node.inputs))],
              equation=node.attrs["equation"])
    return [cx.cast(y, cd, d)]


@render("grid_sample")
def _grid_sample(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    mode = a["mode"]
    if cx.opset < 20:   # GridSample-16: 2-D only, with the older mode names
        if node.inputs[0].type.rank != 4:
            cx.need_opset(20, "GridSample on 3-D images")
        mode = {"linear": "bilinear", "cubic": "bicubic"}.get(mode, mode)
    return [cx.op("GridSample", [inp(cx, node, 0), inp(cx, node, 1)], mode=mode,
                  padding_mode=a["padding_mode"], align_corners=int(a["align_corners"]))]


@render("resize")
def _resize(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    roi = cx.const(list(a["roi"]), dt.f32, [len(a["roi"])]) if a["roi"] else ""
    if a["scales"]:
        xs, ys = node.inputs[0].shape, node.outputs[0].shape
        for ax, (sc, d, o) in enumerate(zip(a["scales"], xs, ys)):
            # onnxruntime's rows from a scale: floor(scale * size) in float32 (0.7 of 10 is 7)
            rows = int(np.float32(sc) * np.float32(d)) if isinstance(d, int) else None
            if rows is not None and isinstance(o, int) and rows != o:
                # keep_aspect_ratio_policy: one scale for the coordinates, sizes rounded from it;
                # ONNX's scales input would make floor(d * scale) rows instead
                raise cx.fail(f"axis {ax} has {o} rows where scale {sc} gives {rows} (an imported "
                              f"keep_aspect_ratio_policy); ONNX Resize cannot say both")
        scales, sizes = cx.const(list(a["scales"]), dt.f32, [len(a["scales"])]), ""
        if any(isinstance(d, int) and int(np.float32(sc) * np.float32(d)) != int(sc * d)
               for sc, d in zip(a["scales"], xs)):
            # onnx's shape inference takes floor(scale * size) in float64, onnxruntime in
            # float32: where they differ the checker refuses the file, so the sizes say it
            # (onnxruntime then maps coordinates with sizes / in, a few ulps from the scale)
            scales, sizes = "", cx.dims(list(ys))
    else:
        scales, sizes = "", cx.dims(list(a["sizes"]))
    if a["antialias"]:
        cx.need_opset(18, "Resize with antialias")
    return [cx.op("Resize", [inp(cx, node, 0), roi, scales, sizes], mode=a["mode"],
                  coordinate_transformation_mode=a["coordinate_transformation_mode"],
                  nearest_mode=a["nearest_mode"], cubic_coeff_a=a["cubic_coeff_a"],
                  exclude_outside=int(a["exclude_outside"]),
                  extrapolation_value=a["extrapolation_value"],
                  antialias=int(a["antialias"]) if a["antialias"] else None)]
