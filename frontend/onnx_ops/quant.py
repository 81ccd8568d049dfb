"""Converters for casts and quantisation: Cast, CastLike, QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv."""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from ..onnx_tensors import onnx_dtype
from .qdq_weight import source_of

_F8_LIMITS = {"f8e4m3": (464.0, float("nan")), "f8e5m2": (61440.0, float("inf"))}


def scalar(ctx: Ctx, v: float | int | bool, d: dt.DType) -> Value:
    """A 0-d constant of dtype ``d``."""
    return ctx.graph.add_const(torch.tensor(v).to(d.container) if d is not dt.f4e2m1
                               else dt.fp4_e2m1_encode(torch.tensor(float(v))), d)


def cast(ctx: Ctx, x: Value, to: dt.DType, saturate: bool = True) -> Value:
    """Cast ``x`` to ``to``; ``saturate=False`` gives ONNX's float8 overflow (inf / NaN)."""
    if x.type.dtype is to:
        return x
    src = "f4e2m1" if x.type.dtype is dt.f4e2m1 else None
    if to in (dt.i4, dt.u4) and x.type.dtype is not dt.f4e2m1 and x.type.dtype.bits > 4:
        # ONNX casts to 4-bit integers wrap modulo 16 (after truncation), they do not saturate.
        w = ctx.add("cast", [x], {"to": "i64"})
        if to is dt.i4:
            w = ctx.add("add", [w, scalar(ctx, 8, dt.i64)])
        w = ctx.add("bitwise_and", [w, scalar(ctx, 15, dt.i64)])
        if to is dt.i4:
            w = ctx.add("sub", [w, scalar(ctx, 8, dt.i64)])
        return ctx.add("cast", [w], {"to": to.name})
    y = ctx.add("cast", [x], {"to": to.name, "from_dtype": src})
    if saturate or to.name not in _F8_LIMITS or not x.type.dtype.is_float \
            or x.type.dtype.name in _F8_LIMITS or x.type.dtype is dt.f4e2m1:
        return y
    # Non-saturating float8: values that round past the largest finite code become inf
    # (e5m2) or NaN (e4m3fn); the IR cast saturates, so patch those positions.
    limit, over = _F8_LIMITS[to.name]
    xf = x if x.type.dtype in (dt.f32, dt.f64) else ctx.add("cast", [x], {"to": "f32"})
    ax = ctx.add("abs", [xf])
    big = ctx.add("ge", [ax, scalar(ctx, limit, xf.type.dtype)])
    if over != over:  # NaN: sign does not matter
        return ctx.add("where", [big, scalar(ctx, over, to), y])
    neg = ctx.add("lt", [xf, scalar(ctx, 0.0, xf.type.dtype)])
    inf = ctx.add("where", [neg, scalar(ctx, -over, to), scalar(ctx, over, to)])
    return ctx.add("where", [big, inf, y])


@onnx_op("Cast")
def _cast(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    to = onnx_dtype(a["to"], ctx.where())
    name = node.input[0]
    if name in ctx.dims and name not in ctx.env and to.is_int and not to.is_subbyte:
        vals, _, sc = ctx.dims[name]
        ctx.set_dims(node.output[0], vals, to, sc)
        return [None]
    return [cast(ctx, ctx.input(0), to, bool(a.get("saturate", 1)))]


@onnx_op("CastLike")
def _cast_like(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [cast(ctx, ctx.input(0), ctx.input(1).type.dtype, bool(a.get("saturate", 1)))]


def _qparams(ctx: Ctx, x: Value, scale: Value, zp: Value | None, axis: int, block: int
             ) -> tuple[Value, Value | None, int]:
    """Normalise ONNX scale/zero-point shapes to the IR rules (1-element 1-D -> scalar)."""
    rank = x.type.rank
    ax = axis + rank if axis < 0 else axis
    if block == 0 and scale.type.rank == 1 and scale.type.shape[0] == 1 and rank >= 1 \
            and (not 0 <= ax < rank or x.type.shape[ax] != 1):
        # one element: per tensor, whatever ``axis`` says (the default 1 on a 1-D tensor, as
        # onnxruntime's quantiser writes for biases, names no axis at all)
        scale = ctx.add("reshape", [scale], {"shape": ()})
        ax = min(max(ax, 0), rank - 1)
    if zp is not None and scale.type.rank == 0 and zp.type.rank == 1 and zp.type.shape[0] == 1:
        zp = ctx.add("reshape", [zp], {"shape": ()})
    return scale, zp, ax


@onnx_op("QuantizeLinear")
def _quantize_linear(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, scale, zp = ctx.input(0), ctx.input(1), ctx.input(2)
    if zp is not None:
        out = zp.type.dtype
    elif a.get("output_dtype"):
        out = onnx_dtype(a["output_dtype"], ctx.where())
    else:
        out = dt.u8
    if out.is_float and not a.get("saturate", 1):
        raise FrontendError(f"{ctx.where()}: saturate=0 is not supported")
    block = int(a.get("block_size", 0))
    scale, zp, ax = _qparams(ctx, x, scale, zp, int(a.get("axis", 1)), block)
    if scale.type.dtype is not x.type.dtype and x.type.dtype is not dt.f32:
        # ONNX divides in x's precision; mixed types are computed in float32.
        x = cast(ctx, x, dt.f32)
    if scale.type.dtype in (dt.f16, dt.bf16):
        scale = cast(ctx, scale, dt.f32)
    return [ctx.add("quantize", [x, scale, zp], {"dtype": out.name, "axis": ax, "block": block})]


@onnx_op("DequantizeLinear")
def _dequantize_linear(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    q, scale, zp = ctx.input(0), ctx.input(1), ctx.input(2)
    out = onnx_dtype(a["output_dtype"], ctx.where()) if a.get("output_dtype") else scale.type.dtype
    block = int(a.get("block_size", 0))
    scale, zp, ax = _qparams(ctx, q, scale, zp, int(a.get("axis", 1)), block)
    qt = q.type.dtype.name if q.type.dtype is dt.f4e2m1 else None
    y = ctx.add("dequantize", [q, scale, zp], {"dtype": out.name, "axis": ax, "block": block, "qtype": qt})
    if isinstance(y, Value) and y.is_const:
        # folded into float weights: remember the codes, which MatMul / Gemm keep (qdq_weight.py)
        src = source_of(q, scale, zp, ax, block)
        if src is not None:
            ctx.dq_source[id(y)] = src
    return [y]


def dynamic_quantize_u8(ctx: Ctx, x: Value) -> tuple[Value, Value, Value]:
    """(codes, scale, zero point) of float ``x`` quantised to uint8 per tensor as ONNX
    DynamicQuantizeLinear does: the range [min(x, 0), max(x, 0)] over 255 steps."""
    f = x.type.dtype
    zero = scalar(ctx, 0.0, f)
    hi = ctx.add("maximum", [ctx.add("reduce_max", [x], {"keepdims": False}), zero])
    lo = ctx.add("minimum", [ctx.add("reduce_min", [x], {"keepdims": False}), zero])
    scale = ctx.add("div", [ctx.add("sub", [hi, lo]), scalar(ctx, 255.0, f)])
    zpf = ctx.add("round", [ctx.add("sub", [zero, ctx.add("div", [lo, scale])])])
    zpf = ctx.add("clip", [zpf], {"min": 0.0, "max": 255.0})
    zp = ctx.add("cast", [zpf], {"to": "u8"})
    y = ctx.add("quantize", [x, scale, zp], {"dtype": "u8", "axis": -1, "block": 0})
    return y, scale, zp


@onnx_op("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return list(dynamic_quantize_u8(ctx, ctx.input(0)))


def _int_operand(ctx: Ctx, x: Value, zp: Value | None, row_axis: bool) -> Value:
    """``x - zp`` as i32; a 1-D zero point of A is per row (axis -2), of B per column."""
    xi = cast(ctx, x, dt.i32)
    if zp is None:
        return xi
    zi = cast(ctx, zp, dt.i32)
    if row_axis and zp.type.rank == 1 and x.type.rank >= 2:
        zi = ctx.add("unsqueeze", [zi], {"axes": (1,)})
    return ctx.add("sub", [xi, zi])


@onnx_op("MatMulInteger")
def _matmul_integer(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _int_operand(ctx, ctx.input(0), ctx.input(2), True)
    w = _int_operand(ctx, ctx.input(1), ctx.input(3), False)
    return [ctx.add("matmul", [x, w])]


@onnx_op("QLinearMatMul")
def _qlinear_matmul(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    A, As, Az, B, Bs, Bz, Ys, Yz = (ctx.input(i) for i in range(8))
    if A.type.dtype.is_float:
        raise FrontendError(f"{ctx.where()}: float8 QLinearMatMul is not supported")
    acc = ctx.add("matmul", [_int_operand(ctx, A, Az, True), _int_operand(ctx, B, Bz, False)])
    return [_requantize_acc(ctx, acc, As, Bs, Ys, Yz, None)]


def _requantize_acc(ctx: Ctx, acc: Value, xs: Value, ws: Value, ys: Value, yz: Value | None,
                    channel_shape: tuple[int, ...] | None) -> Value:
    """The integer accumulator ``acc`` requantised as onnxruntime does it: one float32
    multiplier (x_scale * w_scale) / y_scale (per output channel, reshaped to
    ``channel_shape``), times float32(acc), rounded half to even, plus the zero point. Dividing
    by y_scale after the product instead rounds differently at exact ties (36.5 became
    36.500004: one code off, and off again in every later layer)."""
    f = dt.f32
    m = ctx.add("div", [ctx.add("mul", [cast(ctx, xs, f), cast(ctx, ws, f)]),
                        cast(ctx, ctx.add("reshape", [ys], {"shape": ()}) if ys.type.rank == 1 else ys, f)])
    if channel_shape is not None and m.type.rank == 1:
        m = ctx.add("reshape", [m], {"shape": channel_shape})
    y = ctx.add("mul", [cast(ctx, acc, f), m])
    if yz is not None and yz.type.rank == 1 and yz.type.shape[0] == 1:
        yz = ctx.add("reshape", [yz], {"shape": ()})
    return _requantize(ctx, y, scalar(ctx, 1.0, f), yz)


def _requantize(ctx: Ctx, y: Value, ys: Value, yz: Value | None) -> Value:
    ys = cast(ctx, ys, dt.f32)
    if ys.type.rank == 1 and ys.type.shape[0] == 1:
        ys = ctx.add("reshape", [ys], {"shape": ()})
        yz = ctx.add("reshape", [yz], {"shape": ()}) if yz is not None else None
    out = yz.type.dtype if yz is not None else dt.u8
    return ctx.add("quantize", [y, ys, yz], {"dtype": out.name, "axis": 1, "block": 0})


def _conv_attrs(ctx: Ctx, a: dict[str, Any], x: Value, w: Value) -> dict[str, Any]:
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise FrontendError(f"{ctx.where()}: auto_pad={a['auto_pad']} is not supported")
    nsp = x.type.rank - 2
    pads = tuple(a.get("pads", ())) if a.get("auto_pad", "NOTSET") == "NOTSET" else ()
    return {"stride": tuple(a.get("strides", (1,) * nsp)), "padding": pads,
            "dilation": tuple(a.get("dilations", (1,) * nsp)), "groups": int(a.get("group", 1))}


def _int_conv(ctx: Ctx, a: dict[str, Any], x: Value, xz: Value | None, w: Value,
              wz: Value | None) -> Value:
    """Integer convolution, computed exactly in float64 (8-bit products summed stay < 2^53)."""
    f = dt.f64
    xf = cast(ctx, x, f)
    if xz is not None:
        xf = ctx.add("sub", [xf, cast(ctx, ctx.add("reshape", [xz], {"shape": ()})
                                      if xz.type.rank == 1 else xz, f)])
    wf = cast(ctx, w, f)
    if wz is not None:
        wzf = cast(ctx, wz, f)
        if wz.type.rank == 1:
            wzf = ctx.add("reshape", [wzf], {"shape": (-1,) + (1,) * (w.type.rank - 1)}) \
                if wz.type.shape[0] != 1 else ctx.add("reshape", [wzf], {"shape": ()})
        wf = ctx.add("sub", [wf, wzf])
    return ctx.add("conv", [xf, wf, None], _conv_attrs(ctx, a, x, w))


@onnx_op("ConvInteger")
def _conv_integer(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    y = _int_conv(ctx, a, ctx.input(0), ctx.input(2), ctx.input(1), ctx.input(3))
    return [cast(ctx, y, dt.i32)]


@onnx_op("QLinearConv")
def _qlinear_conv(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, xs, xz, w, ws, wz, ys, yz = (ctx.input(i) for i in range(8))
    bias = ctx.input(8)
    acc = _int_conv(ctx, a, x, xz, w, wz)
    if bias is not None:
        acc = ctx.add("add", [acc, ctx.add("reshape", [cast(ctx, bias, dt.f64)],
                                           {"shape": (-1,) + (1,) * (x.type.rank - 2)})])
    return [_requantize_acc(ctx, acc, xs, ws, ys, yz, (-1,) + (1,) * (x.type.rank - 2))]
