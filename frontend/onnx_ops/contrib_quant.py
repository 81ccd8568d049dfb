"""Converters for onnxruntime's quantised ``com.microsoft`` contrib ops: what
``quantize_static(quant_format=QOperator)`` writes (QLinearAdd, QLinearMul, QLinearSigmoid,
QLinearLeakyRelu, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearSoftmax,
QLinearWhere, QGemm) and what onnxruntime's graph optimiser fuses a ``quantize_dynamic`` model
into (DynamicQuantizeMatMul, MatMulIntegerToFloat).

Every op is lowered onto existing IR ops (``quantize`` / ``dequantize``, integer ``matmul``,
float elementwise ops, pooling, softmax). The arithmetic follows onnxruntime's CPU kernels,
not only the formula in the spec, because the order of the float32 roundings decides which way
a value near a half-way point goes (each order below was checked against onnxruntime 1.32 on
inputs built to hit ties):

- requantising through a float (sigmoid, leaky relu, concat, where, softmax): ``quantize``'s
  ``round_half_even(v / y_scale) + y_zero_point`` (onnxruntime builds a 256-entry table that
  way), from the dequantised ``(x - x_zero_point) * x_scale`` in float32;
- QLinearAdd: ``(a_scale / c_scale) * (a - a_zp) + (b_scale / c_scale) * (b - b_zp) + c_zp``
  in float32, the zero point added *before* rounding; QLinearMul: ``(a - a_zp) * (b - b_zp) *
  ((a_scale * b_scale) / c_scale) + c_zp`` likewise;
- QLinearAveragePool: average of the dequantised window in float32, ``/ y_scale + y_zp``,
  rounded; QLinearGlobalAveragePool: the exact integer sum minus ``x_zp * n`` times the float32
  multiplier ``x_scale / (y_scale * n)``, rounded, then ``+ y_zp`` as an integer;
- QGemm: the int32 accumulator (C added as int32) times ``((alpha * a_scale) * b_scale) /
  y_scale`` rounded plus ``y_zp``, or, without y_scale, times ``(alpha * a_scale) * b_scale``
  as the float output;
- DynamicQuantizeMatMul / MatMulIntegerToFloat: ``float(acc) * (a_scale * b_scale) + bias``,
  A quantised dynamically like ONNX DynamicQuantizeLinear (uint8, per tensor).

Where onnxruntime's own kernels disagree with that order, results can land one code away at
exact ties: QLinearAdd's AVX2 kernel folds the zero points into one constant first (a tie of
127.5 came out 127.49999 there, 128 here), and QLinearSoftmax sums a fixed-point exp table
(145 of 2312 codes one off on a CLIP attention softmax; exact on the tests' random inputs).
All results saturate to the code type's range. Per-tensor parameters are required where the
spec says "scalar"; B of QGemm / DynamicQuantizeMatMul / MatMulIntegerToFloat may be per
column. Unsupported forms raise UnsupportedOpError / FrontendError naming the node.
"""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .contrib import unsupported as _unsupported
from .matmulnbits import MS_DOMAIN
from .nn import _conv_geometry, _pads_or_pad_node
from .quant import cast, dynamic_quantize_u8, scalar

_CODES = (dt.u8, dt.i8)


def _codes(ctx: Ctx, i: int, what: str) -> Value:
    """Input ``i``, which must be uint8 or int8 codes."""
    v = ctx.input(i)
    if v is None:
        raise FrontendError(f"{ctx.where()}: input {i} ({what}) is missing")
    if v.type.dtype not in _CODES:
        raise _unsupported(ctx, f"{what} of type {v.type.dtype.name} (only uint8 / int8)")
    return v


def _per_tensor(ctx: Ctx, v: Value | None, what: str) -> Value | None:
    """A scale or zero point the spec requires to be a scalar, as a 0-d Value (a 1-element
    1-D tensor is accepted as a scalar, as onnxruntime does)."""
    if v is None or v.type.rank == 0:
        return v
    if v.type.rank == 1 and v.type.shape[0] == 1:
        return ctx.add("reshape", [v], {"shape": ()})
    raise _unsupported(ctx, f"a per-channel {what} of shape {list(v.type.shape)} "
                            f"(only per-tensor is supported)")


def _scale(ctx: Ctx, i: int, what: str) -> Value:
    """Input ``i``: a per-tensor float32 scale, as a 0-d Value."""
    v = ctx.input(i)
    if v is None:
        raise FrontendError(f"{ctx.where()}: input {i} ({what}) is missing")
    if v.type.dtype is not dt.f32:
        raise _unsupported(ctx, f"{what} of type {v.type.dtype.name} (only float32)")
    out = _per_tensor(ctx, v, what)
    assert out is not None
    return out


def _zero(ctx: Ctx, i: int, code: dt.DType, what: str) -> Value | None:
    """Input ``i``: an optional per-tensor zero point of the code type ``code`` (0-d)."""
    v = ctx.input(i)
    if v is None:
        return None
    if v.type.dtype is not code:
        raise FrontendError(f"{ctx.where()}: {what} must have the codes' type {code.name}, "
                            f"got {v.type.dtype.name}")
    return _per_tensor(ctx, v, what)


def _dequant(ctx: Ctx, q: Value, s: Value, z: Value | None) -> Value:
    """``(q - z) * s`` in float32 (the zero point is subtracted exactly)."""
    return ctx.add("dequantize", [q, s, z], {"dtype": "f32", "axis": -1, "block": 0})


def _quant(ctx: Ctx, v: Value, s: Value, z: Value | None, code: dt.DType) -> Value:
    """``clamp(round_half_even(v / s) + z)`` as ``code``."""
    return ctx.add("quantize", [v, s, z], {"dtype": code.name, "axis": -1, "block": 0})


def _round_sat(ctx: Ctx, v: Value, code: dt.DType) -> Value:
    """``clamp(round_half_even(v))`` as ``code``: for values whose zero point is already in."""
    return _quant(ctx, v, scalar(ctx, 1.0, dt.f32), None, code)


def _centered(ctx: Ctx, q: Value, z: Value | None) -> Value:
    """``q - z`` as float32 (exact: 9-bit integers)."""
    if z is None:
        return cast(ctx, q, dt.f32)
    return cast(ctx, ctx.add("sub", [cast(ctx, q, dt.i32), cast(ctx, z, dt.i32)]), dt.f32)


def _mul_f32(ctx: Ctx, a: Value, b: Value) -> Value:
    """``a * b`` rounded once to float32, for float32 operands whose exact product fits a
    float64 (significands of at most 53 bits together: a small integer times a scale, or two
    float32 values).

    The product is formed in float64 (exact) and then rounded to float32, which is the float32
    product bit for bit; the explicit rounding keeps the C compiler from contracting the
    multiply with a following add into one fused multiply-add (gcc's default
    ``-ffp-contract=fast``), which would skip the rounding onnxruntime performs and move
    results that sit near a half-way point to the other code.
    """
    p = ctx.add("mul", [cast(ctx, a, dt.f64), cast(ctx, b, dt.f64)])
    return cast(ctx, p, dt.f32)


def _zero_f32(ctx: Ctx, z: Value | None) -> Value:
    return cast(ctx, z, dt.f32) if z is not None else scalar(ctx, 0.0, dt.f32)


def _out_code(ctx: Ctx, z: Value | None, like: Value) -> dt.DType:
    """The output code type: the output zero point's type, else the input's."""
    return z.type.dtype if z is not None else like.type.dtype


# ---- elementwise -----------------------------------------------------------------------------

def _one_input(ctx: Ctx, xs_name: str = "x_scale", xz_name: str = "x_zero_point",
               ys_name: str = "y_scale", yz_name: str = "y_zero_point"
               ) -> tuple[Value, dt.DType, Value, Value | None, Value, Value | None]:
    """(codes, code type, x scale, x zero point, y scale, y zero point) of a one-input QLinear
    op (inputs X, x_scale, x_zero_point, y_scale, y_zero_point; the names as its spec spells
    them, for the error messages)."""
    x = _codes(ctx, 0, "X")
    code = x.type.dtype
    return (x, code, _scale(ctx, 1, xs_name), _zero(ctx, 2, code, xz_name), _scale(ctx, 3, ys_name),
            _zero(ctx, 4, code, yz_name))


@onnx_op("QLinearAdd", "QLinearMul", domain=MS_DOMAIN)
def _qlinear_binary(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    qa, qb = _codes(ctx, 0, "A"), _codes(ctx, 3, "B")
    if qa.type.dtype is not qb.type.dtype:
        raise FrontendError(f"{ctx.where()}: A and B must have one type, got "
                            f"{qa.type.dtype.name} and {qb.type.dtype.name}")
    code = qa.type.dtype
    sa, sb, sc = _scale(ctx, 1, "A_scale"), _scale(ctx, 4, "B_scale"), _scale(ctx, 6, "C_scale")
    za, zb = _zero(ctx, 2, code, "A_zero_point"), _zero(ctx, 5, code, "B_zero_point")
    zc = _zero(ctx, 7, code, "C_zero_point")
    fa, fb = _centered(ctx, qa, za), _centered(ctx, qb, zb)
    if node.op_type == "QLinearAdd":
        # onnxruntime: two float32 scale ratios, the output zero point added before rounding
        v = ctx.add("add", [_mul_f32(ctx, fa, ctx.add("div", [sa, sc])),
                            _mul_f32(ctx, fb, ctx.add("div", [sb, sc]))])
    else:
        ratio = ctx.add("div", [ctx.add("mul", [sa, sb]), sc])
        v = _mul_f32(ctx, ctx.add("mul", [fa, fb]), ratio)   # fa * fb is exact in float32
    v = ctx.add("add", [v, _zero_f32(ctx, zc)])
    return [_round_sat(ctx, v, code)]


def _unary(ctx: Ctx, fn: str, attrs: dict[str, Any] | None = None) -> Value:
    """quantize(fn(dequantize(X))) with per-tensor X and Y parameters."""
    x, _, xs, xz, ys, yz = _one_input(ctx, "X_scale", "X_zero_point", "Y_scale", "Y_zero_point")
    y = ctx.add(fn, [_dequant(ctx, x, xs, xz)], attrs or {})
    return _quant(ctx, y, ys, yz, x.type.dtype)


@onnx_op("QLinearSigmoid", domain=MS_DOMAIN)
def _qlinear_sigmoid(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [_unary(ctx, "sigmoid")]


@onnx_op("QLinearLeakyRelu", domain=MS_DOMAIN)
def _qlinear_leaky_relu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [_unary(ctx, "leaky_relu", {"alpha": float(a.get("alpha", 0.01))})]


@onnx_op("QLinearWhere", domain=MS_DOMAIN)
def _qlinear_where(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    cond = ctx.input(0)
    if cond is None or cond.type.dtype is not dt.boolean:
        raise FrontendError(f"{ctx.where()}: condition must be a bool tensor")
    x, y = _codes(ctx, 1, "X"), _codes(ctx, 4, "Y")
    code = x.type.dtype
    if y.type.dtype is not code:
        raise FrontendError(f"{ctx.where()}: X and Y must have one type, got {code.name} and "
                            f"{y.type.dtype.name}")
    zs, zz = _scale(ctx, 7, "z_scale"), _zero(ctx, 8, code, "z_zero_point")
    # each branch is requantised to Z's parameters (onnxruntime: a table per branch)
    xq = _quant(ctx, _dequant(ctx, x, _scale(ctx, 2, "x_scale"), _zero(ctx, 3, code, "x_zero_point")),
                zs, zz, code)
    yq = _quant(ctx, _dequant(ctx, y, _scale(ctx, 5, "y_scale"), _zero(ctx, 6, code, "y_zero_point")),
                zs, zz, code)
    return [ctx.add("where", [cond, xq, yq])]


@onnx_op("QLinearConcat", domain=MS_DOMAIN)
def _qlinear_concat(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if "axis" not in a:
        raise FrontendError(f"{ctx.where()}: attribute axis is missing")
    n_in = len(node.input) - 2
    if n_in < 3 or n_in % 3:
        raise FrontendError(f"{ctx.where()}: expects Y_scale, Y_zero_point and then (tensor, "
                            f"scale, zero_point) triples, got {len(node.input)} inputs")
    ys = _scale(ctx, 0, "Y_scale")
    yzv = ctx.input(1)
    if yzv is None or yzv.type.dtype not in _CODES:
        raise FrontendError(f"{ctx.where()}: Y_zero_point must be uint8 or int8")
    code = yzv.type.dtype
    yz = _zero(ctx, 1, code, "Y_zero_point")
    parts = []
    for k in range(n_in // 3):
        i = 2 + 3 * k
        x = _codes(ctx, i, f"input {k}")
        if x.type.dtype is not code:
            raise FrontendError(f"{ctx.where()}: input {k} has type {x.type.dtype.name}, the "
                                f"output {code.name}")
        xs, xz = _scale(ctx, i + 1, f"scale of input {k}"), _zero(ctx, i + 2, code, f"zero point of input {k}")
        if _same_params(xs, xz, ys, yz):
            parts.append(x)   # onnxruntime copies such an input unchanged
        else:
            parts.append(_quant(ctx, _dequant(ctx, x, xs, xz), ys, yz, code))
    return [ctx.add("concat", parts, {"axis": int(a["axis"])})]


def _same_params(xs: Value, xz: Value | None, ys: Value, yz: Value | None) -> bool:
    """Whether two constant (scale, zero point) pairs are bit-identical."""
    if xs is ys and xz is yz:
        return True
    if not (xs.is_const and ys.is_const):
        return False
    if (xz is None) != (yz is None) or (xz is not None and not (xz.is_const and yz.is_const)):
        return False
    same_z = xz is None or torch.equal(xz.const, yz.const)
    return same_z and torch.equal(xs.const.view(torch.int32), ys.const.view(torch.int32))


# ---- pooling and softmax ---------------------------------------------------------------------

def _to_nchw(ctx: Ctx, x: Value) -> Value:
    r = x.type.rank
    return ctx.add("transpose", [x], {"perm": (0, r - 1) + tuple(range(1, r - 1))})


def _to_nhwc(ctx: Ctx, x: Value) -> Value:
    r = x.type.rank
    return ctx.add("transpose", [x], {"perm": (0,) + tuple(range(2, r)) + (1,)})


@onnx_op("QLinearGlobalAveragePool", domain=MS_DOMAIN)
def _qlinear_gap(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, code, xs, xz, ys, yz = _one_input(ctx)
    r = x.type.rank
    if r < 3:
        raise FrontendError(f"{ctx.where()}: X must have rank >= 3, got {x.type}")
    last = bool(a.get("channels_last", 0))
    axes = tuple(range(1, r - 1)) if last else tuple(range(2, r))
    dims = [x.type.shape[i] for i in axes]
    if not all(isinstance(d, int) for d in dims):
        raise _unsupported(ctx, f"symbolic spatial dims {dims} (the pool size must be static)")
    n = 1
    for d in dims:
        n *= int(d)
    # the integer window sum is exact; onnxruntime then applies one float32 multiplier
    total = ctx.add("reduce_sum", [cast(ctx, x, dt.i32)], {"axes": axes, "keepdims": True})
    if xz is not None:
        total = ctx.add("sub", [total, ctx.add("mul", [cast(ctx, xz, dt.i32), scalar(ctx, n, dt.i32)])])
    mult = ctx.add("div", [xs, ctx.add("mul", [ys, scalar(ctx, float(n), dt.f32)])])
    # MLAS rounds acc * mult first and adds the zero point as an integer after (adding it in
    # float before rounding moves ties by one code when the zero point is odd)
    return [_quant(ctx, _mul_f32(ctx, cast(ctx, total, dt.f32), mult), scalar(ctx, 1.0, dt.f32), yz, code)]


@onnx_op("QLinearAveragePool", domain=MS_DOMAIN)
def _qlinear_avg_pool(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, code, xs, xz, ys, yz = _one_input(ctx)
    if "kernel_shape" not in a:
        raise FrontendError(f"{ctx.where()}: attribute kernel_shape is missing")
    if any(d != 1 for d in a.get("dilations", ())):
        raise _unsupported(ctx, "dilations")
    last = bool(a.get("channels_last", 0))
    f = _dequant(ctx, x, xs, xz)
    if last:
        f = _to_nchw(ctx, f)
    kernel = list(a["kernel_shape"])
    strides, _, pads = _conv_geometry(ctx, a, f, kernel)
    cip = bool(a.get("count_include_pad", 0))
    if cip and a.get("ceil_mode", 0):
        # onnxruntime's QLinear kernel then divides the windows that ceil mode adds past the
        # padding by a count unlike its own float AveragePool's (up to 51 codes off); no
        # definition to follow
        raise _unsupported(ctx, "ceil_mode together with count_include_pad")
    f, pads = _pads_or_pad_node(ctx, f, pads, 0.0 if cip else None)
    y = ctx.add("avg_pool", [f], {"kernel": tuple(kernel), "stride": tuple(strides),
                                  "padding": tuple(pads), "count_include_pad": cip,
                                  "ceil_mode": bool(a.get("ceil_mode", 0))})
    if last:
        y = _to_nhwc(ctx, y)
    # onnxruntime adds the output zero point in float before rounding
    v = ctx.add("add", [ctx.add("div", [y, ys]), _zero_f32(ctx, yz)])
    return [_round_sat(ctx, v, code)]


@onnx_op("QLinearSoftmax", domain=MS_DOMAIN)
def _qlinear_softmax(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, code, xs, xz, ys, yz = _one_input(ctx, "X_scale")
    if "opset" not in a:
        raise FrontendError(f"{ctx.where()}: attribute opset is missing")
    legacy = int(a["opset"]) < 13
    r = x.type.rank
    axis = int(a.get("axis", 1 if legacy else -1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        raise FrontendError(f"{ctx.where()}: axis {a.get('axis')} is out of range for rank {r}")
    f = _dequant(ctx, x, xs, xz)
    if legacy and axis != r - 1:
        # Softmax before opset 13 coerces the input to 2-D [prod(:axis), prod(axis:)]
        shape = tuple(x.type.shape)
        flat = ctx.add("reshape", [f], {"shape": shape[:axis] + (-1,)})
        y = ctx.add("reshape", [ctx.add("softmax", [flat], {"axis": -1})], {"shape": shape})
    else:
        y = ctx.add("softmax", [f], {"axis": axis})
    return [_quant(ctx, y, ys, yz, code)]


# ---- matrix products -------------------------------------------------------------------------

def _int_minus_zero(ctx: Ctx, q: Value, z: Value | None) -> Value:
    """``q - z`` as int32; a 1-D zero point broadcasts along the last axis (per column)."""
    qi = cast(ctx, q, dt.i32)
    return qi if z is None else ctx.add("sub", [qi, cast(ctx, z, dt.i32)])


def _column_param(ctx: Ctx, v: Value | None, n: Any, what: str) -> Value | None:
    """A scale / zero point of B: per tensor (0-d after this) or per column ([N])."""
    if v is None or v.type.rank == 0:
        return v
    if v.type.rank == 1 and v.type.shape[0] == 1:
        return ctx.add("reshape", [v], {"shape": ()})
    if v.type.rank == 1 and v.type.shape[0] == n:
        return v
    raise _unsupported(ctx, f"{what} of shape {list(v.type.shape)} (only per-tensor or per-column "
                            f"[{n}])")


def _b_params(ctx: Ctx, b: Value, si: int, zi: int, code: dt.DType | None = None
              ) -> tuple[Value, Value | None]:
    """B's scale and zero point (inputs ``si``, ``zi``) for B [..., K, N] of codes ``code``
    (default: B's dtype): per tensor (0-d) or per column ([N])."""
    code = code or b.type.dtype
    s = ctx.input(si)
    if s is None or s.type.dtype is not dt.f32:
        raise FrontendError(f"{ctx.where()}: b_scale must be a float32 tensor")
    n = b.type.shape[-1]
    z = ctx.input(zi)
    if z is not None and z.type.dtype is not code:
        raise FrontendError(f"{ctx.where()}: b_zero_point must have B's type {code.name}")
    return _column_param(ctx, s, n, "b_scale"), _column_param(ctx, z, n, "b_zero_point")


@onnx_op("QGemm", domain=MS_DOMAIN)
def _qgemm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    qa, qb = _codes(ctx, 0, "A"), _codes(ctx, 3, "B")
    if qa.type.rank != 2 or qb.type.rank != 2:
        raise FrontendError(f"{ctx.where()}: A and B must be 2-D, got {qa.type} and {qb.type}")
    sa, za = _scale(ctx, 1, "a_scale"), _zero(ctx, 2, qa.type.dtype, "a_zero_point")
    alpha = float(a.get("alpha", 1.0))
    ia = _int_minus_zero(ctx, qa, za)
    if a.get("transA", 0):
        ia = ctx.add("transpose", [ia], {"perm": (1, 0)})
    ib = cast(ctx, qb, dt.i32)
    if a.get("transB", 0):
        ib = ctx.add("transpose", [ib], {"perm": (1, 0)})   # now [K, N]: zero points per column
    sb, zb = _b_params(ctx, ib, 4, 5, qb.type.dtype)
    if zb is not None:
        ib = ctx.add("sub", [ib, cast(ctx, zb, dt.i32)])
    acc = ctx.add("matmul", [ia, ib])
    c = ctx.input(6)
    if c is not None:
        if c.type.dtype is not dt.i32:
            raise FrontendError(f"{ctx.where()}: C must be int32, got {c.type.dtype.name}")
        acc = ctx.add("add", [acc, c])
    # onnxruntime's multiplier: ((alpha * a_scale) * b_scale) [/ y_scale], in float32
    mult = ctx.add("mul", [ctx.add("mul", [scalar(ctx, alpha, dt.f32), sa]), sb])
    accf = cast(ctx, acc, dt.f32)
    ys = ctx.input(7)
    if ys is None:
        if ctx.input(8) is not None:
            raise FrontendError(f"{ctx.where()}: y_zero_point without y_scale")
        return [ctx.add("mul", [accf, mult])]
    ys = _scale(ctx, 7, "y_scale")
    yzv = ctx.input(8)
    if yzv is None:
        raise _unsupported(ctx, "y_scale but no y_zero_point (the output type is ambiguous)")
    if yzv.type.dtype not in _CODES:
        raise FrontendError(f"{ctx.where()}: y_zero_point must be uint8 or int8")
    yz = _zero(ctx, 8, yzv.type.dtype, "y_zero_point")
    v = ctx.add("mul", [accf, ctx.add("div", [mult, ys])])
    return [_quant(ctx, v, scalar(ctx, 1.0, dt.f32), yz, yzv.type.dtype)]


def _to_float(ctx: Ctx, acc: Value, sa: Value, sb: Value, bias: Value | None) -> Value:
    """``float(acc) * (a_scale * b_scale) + bias`` in float32, onnxruntime's order."""
    y = _mul_f32(ctx, cast(ctx, acc, dt.f32), ctx.add("mul", [sa, sb]))
    if bias is not None:
        if bias.type.dtype is not dt.f32:
            raise _unsupported(ctx, f"a bias of type {bias.type.dtype.name} (only float32)")
        y = ctx.add("add", [y, bias])
    return y


def _check_b(ctx: Ctx, b: Value) -> None:
    if b.type.rank < 2:
        raise _unsupported(ctx, f"B of rank {b.type.rank} (only >= 2)")


@onnx_op("MatMulIntegerToFloat", domain=MS_DOMAIN)
def _matmul_integer_to_float(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    qa, qb = _codes(ctx, 0, "A"), _codes(ctx, 1, "B")
    _check_b(ctx, qb)
    sa = _scale(ctx, 2, "a_scale")
    za = _zero(ctx, 4, qa.type.dtype, "a_zero_point")
    sb, zb = _b_params(ctx, qb, 3, 5)
    acc = ctx.add("matmul", [_int_minus_zero(ctx, qa, za), _int_minus_zero(ctx, qb, zb)])
    return [_to_float(ctx, acc, sa, sb, ctx.input(6))]


@onnx_op("DynamicQuantizeMatMul", domain=MS_DOMAIN)
def _dynamic_quantize_matmul(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = ctx.input(0)
    if x is None or x.type.dtype is not dt.f32:
        raise _unsupported(ctx, "A that is not float32")
    qb = _codes(ctx, 1, "B")
    _check_b(ctx, qb)
    sb, zb = _b_params(ctx, qb, 2, 3)
    qa, sa, za = dynamic_quantize_u8(ctx, x)
    acc = ctx.add("matmul", [_int_minus_zero(ctx, qa, za), _int_minus_zero(ctx, qb, zb)])
    return [_to_float(ctx, acc, sa, sb, ctx.input(4))]

