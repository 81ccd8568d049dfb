"""Converters for ONNX neural-network ops: MatMul, Gemm, Conv, ConvTranspose, pooling,
normalisations, Softmax/LogSoftmax, Dropout, LRN, LpNormalization, MeanVarianceNormalization.

MatMul and Gemm with a constant weight become IR ``linear`` (weight stored [N, K], transposed
at import) so that the compression passes see them; auto_pad is resolved to explicit pads
(symbolic ones become an explicit ``pad`` node in front of the op).
"""
from __future__ import annotations

from typing import Any, Sequence

import onnx
import sympy
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.types import Dim
from ..onnx_ctx import Ctx, onnx_op
from .qdq_weight import to_qlinear
from .shape import _x


def _const(ctx: Ctx, t: torch.Tensor, d: dt.DType, hint: str) -> Value:
    return ctx.graph.add_const(t.contiguous(), d, hint)


def _scalar(ctx: Ctx, value: float, d: dt.DType) -> Value:
    return ctx.graph.add_const(torch.tensor(value, dtype=torch.float64).to(d.container), d)


def _has(node: onnx.NodeProto, i: int) -> bool:
    return len(node.input) > i and bool(node.input[i])


def _wants(node: onnx.NodeProto, i: int) -> bool:
    return len(node.output) > i and bool(node.output[i])


# ---- matrix products ---------------------------------------------------------------------

@onnx_op("MatMul")
def _matmul(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, b = _x(ctx), _x(ctx, 1)
    y = to_qlinear(ctx, x, b, False, None, node.input[1])
    if y is not None:       # DequantizeLinear of constant codes: the weight stays quantised
        return [y]
    bc = ctx.const(1)
    if bc is not None and bc.dim() == 2 and x.dtype.is_float and x.dtype == b.dtype \
            and not x.is_const:
        w = _const(ctx, bc.t(), b.dtype, f"{node.input[1]}_t")
        return [ctx.add("linear", [x, w])]
    return [ctx.add("matmul", [x, b])]


@onnx_op("Gemm")
def _gemm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    A, B = _x(ctx), _x(ctx, 1)
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if a.get("transA", 0):
        A = ctx.add("transpose", [A], {"perm": (1, 0)})
    bc = ctx.const(1)
    C = ctx.input(2) if _has(node, 2) else None
    cc = ctx.const(2) if C is not None else None
    nq = B.type.shape[0] if a.get("transB", 0) else B.type.shape[-1]
    if alpha == 1.0 and isinstance(nq, int) and (C is None or (
            beta == 1.0 and cc is not None and (cc.numel() == 1 or tuple(cc.shape) in ((nq,), (1, nq))))):
        bias = None
        if cc is not None:
            bias = _const(ctx, cc.reshape(-1).expand(nq) if cc.numel() == 1 else cc.reshape(nq), C.dtype,
                          f"{node.input[2]}_b")
        y = to_qlinear(ctx, A, B, bool(a.get("transB", 0)), bias, node.input[1])
        if y is not None:   # DequantizeLinear of constant codes: the weight stays quantised
            return [y]
    if bc is not None and A.dtype.is_float and bc.dim() == 2:
        w = bc if a.get("transB", 0) else bc.t()  # linear wants [N, K]
        if alpha != 1.0:
            w = (w.double() * alpha).to(w.dtype)
        n = w.shape[0]
        W = _const(ctx, w, B.dtype, f"{node.input[1]}_w")
        bias = None
        if cc is not None and (cc.numel() == 1 or tuple(cc.shape) in ((n,), (1, n))):
            c = cc.reshape(-1).expand(n) if cc.numel() == 1 else cc.reshape(n)
            if beta != 1.0:
                c = (c.double() * beta).to(c.dtype)
            bias, C = _const(ctx, c, C.dtype, f"{node.input[2]}_b"), None
        y = ctx.add("linear", [A, W] + ([bias] if bias is not None else []))
    else:
        if a.get("transB", 0):
            B = ctx.add("transpose", [B], {"perm": (1, 0)})
        y = ctx.add("matmul", [A, B])
        if alpha != 1.0:
            y = ctx.add("mul", [y, _scalar(ctx, alpha, y.dtype)])
    if C is not None:
        if beta != 1.0:
            C = ctx.add("mul", [C, _scalar(ctx, beta, C.dtype)])
        y = ctx.add("add", [y, C])
    return [y]


# ---- convolution and pooling ---------------------------------------------------------------

def _spatial_attr(a: dict[str, Any], key: str, n: int, default: int) -> list[int]:
    v = list(a.get(key, []))
    return v if v else [default] * n


def resolve_pads(ctx: Ctx, a: dict[str, Any], spatial: Sequence[Dim], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int]) -> list[Dim]:
    """Explicit ONNX-order pads [begins..., ends...] from ``pads`` or ``auto_pad``.

    SAME_* pads so that out = ceil(L / stride); the odd extra goes at the end (UPPER) or the
    beginning (LOWER). With symbolic L and stride > 1 the pads are sympy expressions.
    """
    mode = a.get("auto_pad", "NOTSET")
    n = len(spatial)
    if mode == "NOTSET":
        pads = list(a.get("pads", []))
        return pads if pads else [0] * (2 * n)
    if mode == "VALID":
        return [0] * (2 * n)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise FrontendError(f"{ctx.where()}: unknown auto_pad '{mode}'")
    begins, ends = [], []
    for L, k, s, d in zip(spatial, kernel, strides, dilations):
        if isinstance(L, int):
            out = -(-L // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - L)
            half = total // 2
        elif s == 1:
            total, half = (k - 1) * d, (k - 1) * d // 2
        else:
            out = sympy.ceiling(L / s)
            total = sympy.Max(0, (out - 1) * s + (k - 1) * d + 1 - L)
            half = sympy.floor(total / 2)
        b = half if mode == "SAME_UPPER" else total - half
        begins.append(b)
        ends.append(total - b)
    return begins + ends


def _pads_or_pad_node(ctx: Ctx, x: Value, pads: list[Dim], fill: float | None
                      ) -> tuple[Value, list[int]]:
    """Int pads go to the op's padding attr; symbolic ones become an explicit pad node."""
    if all(isinstance(p, int) for p in pads):
        return x, pads
    if fill is None:
        raise FrontendError(f"{ctx.where()}: symbolic auto_pad pads are not supported here")
    n = len(pads) // 2
    full = [0, 0] + list(pads[:n]) + [0, 0] + list(pads[n:])
    x = ctx.add("pad", [x], {"pads": tuple(full), "mode": "constant", "value": fill})
    return x, [0] * len(pads)


def _conv_geometry(ctx: Ctx, a: dict[str, Any], x: Value, kernel: Sequence[int]):
    n = x.type.rank - 2
    if n < 1:
        raise FrontendError(f"{ctx.where()}: input rank {x.type.rank} is too small")
    strides = _spatial_attr(a, "strides", n, 1)
    dils = _spatial_attr(a, "dilations", n, 1)
    pads = resolve_pads(ctx, a, x.shape[2:], kernel, strides, dils)
    return strides, dils, pads


@onnx_op("Conv")
def _conv(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, w = _x(ctx), _x(ctx, 1)
    kernel = list(a.get("kernel_shape", [])) or list(w.shape[2:])
    strides, dils, pads = _conv_geometry(ctx, a, x, kernel)
    x, pads = _pads_or_pad_node(ctx, x, pads, 0.0)
    ins = [x, w] + ([ctx.input(2)] if _has(node, 2) else [])
    return [ctx.add("conv", ins, {"stride": tuple(strides), "dilation": tuple(dils),
                                  "padding": tuple(pads), "groups": a.get("group", 1)})]


@onnx_op("ConvTranspose")
def _conv_transpose(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, w = _x(ctx), _x(ctx, 1)
    n = x.type.rank - 2
    kernel = list(a.get("kernel_shape", [])) or list(w.shape[2:])
    strides = _spatial_attr(a, "strides", n, 1)
    dils = _spatial_attr(a, "dilations", n, 1)
    opad = _spatial_attr(a, "output_padding", n, 0)
    mode = a.get("auto_pad", "NOTSET")
    out_shape = list(a.get("output_shape", []))
    if out_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
        if not out_shape:
            out_shape = [L * s for L, s in zip(x.shape[2:], strides)]
        out_shape = out_shape[-n:]
        begins, ends, extra = [], [], []
        for L, k, s, d, op_, o in zip(x.shape[2:], kernel, strides, dils, opad, out_shape):
            total = s * (L - 1) + op_ + (k - 1) * d + 1 - o
            if not isinstance(total, int):
                total = sympy.simplify(total)
                if not total.is_Integer:
                    raise FrontendError(f"{ctx.where()}: output_shape/auto_pad with symbolic "
                                        f"spatial dims is not supported")
                total = int(total)
            if total < 0:
                # a larger requested output is extended at the end (ONNX reference)
                extra.append(-total)
                total = 0
            else:
                extra.append(0)
            hi, lo = total - total // 2, total // 2
            b, e = (lo, hi) if mode == "SAME_UPPER" else (hi, lo)
            begins.append(b)
            ends.append(e)
        pads = begins + ends
        opad = [p + e for p, e in zip(opad, extra)]
    elif mode == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = list(a.get("pads", [])) or [0] * (2 * n)
    ins = [x, w] + ([ctx.input(2)] if _has(node, 2) else [])
    return [ctx.add("conv_transpose", ins, {
        "stride": tuple(strides), "dilation": tuple(dils), "padding": tuple(pads),
        "groups": a.get("group", 1), "output_padding": tuple(opad)})]


@onnx_op("MaxPool")
def _max_pool(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    if _wants(node, 1):
        raise FrontendError(f"{ctx.where()}: MaxPool's Indices output is not supported")
    x = _x(ctx)
    kernel = list(a["kernel_shape"])
    strides, dils, pads = _conv_geometry(ctx, a, x, kernel)
    orig = x.dtype
    if not orig.is_float:
        # integer max pooling through a float type that holds every value exactly
        if orig.is_subbyte or orig.bits > 32 or orig.name == "bool":
            raise FrontendError(f"{ctx.where()}: MaxPool on {orig.name} is not supported")
        x = ctx.add("cast", [x], {"to": "f32" if orig.bits <= 16 else "f64"})
    x, pads = _pads_or_pad_node(ctx, x, pads, float("-inf"))
    y = ctx.add("max_pool", [x], {"kernel": tuple(kernel), "stride": tuple(strides),
                                  "dilation": tuple(dils), "padding": tuple(pads),
                                  "ceil_mode": bool(a.get("ceil_mode", 0))})
    if not orig.is_float:
        y = ctx.add("cast", [y], {"to": orig.name})
    return [y]


@onnx_op("AveragePool")
def _avg_pool(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    kernel = list(a["kernel_shape"])
    strides, dils, pads = _conv_geometry(ctx, a, x, kernel)
    if any(d != 1 for d in dils):
        raise FrontendError(f"{ctx.where()}: AveragePool with dilations is not supported")
    cip = bool(a.get("count_include_pad", 0))
    x, pads = _pads_or_pad_node(ctx, x, pads, 0.0 if cip else None)
    return [ctx.add("avg_pool", [x], {"kernel": tuple(kernel), "stride": tuple(strides),
                                      "padding": tuple(pads), "count_include_pad": cip,
                                      "ceil_mode": bool(a.get("ceil_mode", 0))})]


@onnx_op("LpPool")
def _lp_pool(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    kernel = list(a["kernel_shape"])
    strides, dils, pads = _conv_geometry(ctx, a, x, kernel)
    x, pads = _pads_or_pad_node(ctx, x, pads, 0.0)
    return [ctx.add("lp_pool", [x], {"kernel": tuple(kernel), "stride": tuple(strides),
                                     "dilation": tuple(dils), "padding": tuple(pads),
                                     "ceil_mode": bool(a.get("ceil_mode", 0)),
                                     "p": int(a.get("p", 2))})]


@onnx_op("GlobalAveragePool")
def _gap(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("global_avg_pool", [_x(ctx)])]


@onnx_op("GlobalMaxPool")
def _gmp(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("global_max_pool", [_x(ctx)])]


# ---- normalisation ---------------------------------------------------------------------------

@onnx_op("BatchNormalization")
def _batch_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    """Inference form: the ``batch_norm`` op. ``training_mode=1`` with only Y read (torch's
    exporter writes it for timm's weight-standardised convolutions, F.batch_norm(w,
    training=True), over constant weights): normalised by the batch's own statistics, the
    mean and the biased variance over every axis but the channel's, as onnxruntime does."""
    # the running statistics outputs are not produced: a node that reads one fails to import
    # naming it (exporters write them unread)
    eps = float(a.get("epsilon", 1e-5))
    if not a.get("training_mode", 0):
        ins = [_x(ctx, i) for i in range(5)]
        return [ctx.add("batch_norm", ins, {"eps": eps})]
    from .quant import scalar
    x, scale, bias = _x(ctx), _x(ctx, 1), _x(ctx, 2)
    r = x.type.rank
    axes = (0,) + tuple(range(2, r))
    mean = ctx.add("reduce_mean", [x], {"axes": axes, "keepdims": True})
    var = ctx.add("reduce_var", [x], {"axes": axes, "keepdims": True, "correction": 0})
    inv = ctx.add("rsqrt", [ctx.add("add", [var, scalar(ctx, eps, x.dtype)])])
    per = (-1,) + (1,) * (r - 2)
    scale, bias = (ctx.add("reshape", [v], {"shape": per}) for v in (scale, bias))
    y = ctx.add("mul", [ctx.add("mul", [ctx.add("sub", [x, mean]), inv]), scale])
    return [ctx.add("add", [y, bias])]


@onnx_op("InstanceNormalization")
def _instance_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("instance_norm", [_x(ctx), ctx.input(1), ctx.input(2)],
                    {"eps": float(a.get("epsilon", 1e-5))})]


@onnx_op("GroupNormalization")
def _group_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, scale, bias = _x(ctx), _x(ctx, 1), _x(ctx, 2)
    g = int(a["num_groups"])
    c = x.shape[1]
    # GroupNormalization-18 had per-group scale/bias ([num_groups]); -21 made them per channel.
    if ctx.opset < 21 and isinstance(c, int) and c != g:
        per = []
        for i, v in ((1, scale), (2, bias)):
            t = ctx.const(i)
            if t is None:
                raise FrontendError(f"{ctx.where()}: opset-18 per-group scale/bias must be "
                                    f"constants")
            per.append(_const(ctx, t.repeat_interleave(c // g), v.dtype, f"{node.input[i]}_c"))
        scale, bias = per
    return [ctx.add("group_norm", [x, scale, bias],
                    {"groups": g, "eps": float(a.get("epsilon", 1e-5))})]


def _norm_param(ctx: Ctx, v: Value | None, shape: Sequence[Dim], i: int) -> Value | None:
    """LayerNormalization's scale/bias may be any shape broadcastable to x.shape[axis:]; the
    IR wants exactly that shape, so constants are expanded and others get an expand node."""
    if v is None or tuple(v.shape) == tuple(shape):
        return v
    return ctx.add("expand", [v], {"shape": tuple(shape)})


@onnx_op("LayerNormalization")
def _layer_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    r = x.type.rank
    axis = a.get("axis", -1)
    axis = axis + r if axis < 0 else axis
    eps = float(a.get("epsilon", 1e-5))
    tail = x.shape[axis:]
    w = _norm_param(ctx, ctx.input(1), tail, 1)
    b = _norm_param(ctx, ctx.input(2), tail, 2) if _has(node, 2) else None
    y = ctx.add("layer_norm", [x, w, b], {"axis": axis, "eps": eps})
    outs: list[Value | None] = [y]
    if _wants(node, 1) or _wants(node, 2):
        # Mean and InvStdDev (stash_type f32 for our float inputs), reduced dims kept as 1
        axes = tuple(range(axis, r))
        mean = ctx.add("reduce_mean", [x], {"axes": axes, "keepdims": True})
        var = ctx.add("reduce_var", [x], {"axes": axes, "keepdims": True, "correction": 0})
        inv = ctx.add("rsqrt", [ctx.add("add", [var, _scalar(ctx, eps, x.dtype)])])
        outs += [mean, inv]
    return outs


@onnx_op("LpNormalization")
def _lp_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    axis, p = a.get("axis", -1), a.get("p", 2)
    if p == 2:
        n = ctx.add("reduce_l2", [x], {"axes": (axis,), "keepdims": True})
    elif p == 1:
        n = ctx.add("reduce_sum", [ctx.add("abs", [x])], {"axes": (axis,), "keepdims": True})
    else:
        raise FrontendError(f"{ctx.where()}: LpNormalization p must be 1 or 2, got {p}")
    # a zero norm means an all-zero slice, which stays zero (ONNX reference), not NaN
    zero = ctx.add("eq", [n, _scalar(ctx, 0.0, x.dtype)])
    n = ctx.add("where", [zero, _scalar(ctx, 1.0, x.dtype), n])
    return [ctx.add("div", [x, n])]


@onnx_op("MeanVarianceNormalization")
def _mvn(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    axes = tuple(a.get("axes", (0, 2, 3)))
    mean = ctx.add("reduce_mean", [x], {"axes": axes, "keepdims": True})
    var = ctx.add("reduce_var", [x], {"axes": axes, "keepdims": True, "correction": 0})
    std = ctx.add("add", [ctx.add("sqrt", [var]), _scalar(ctx, 1e-9, x.dtype)])
    return [ctx.add("div", [ctx.add("sub", [x, mean]), std])]


@onnx_op("LRN")
def _lrn(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return [ctx.add("lrn", [_x(ctx)], {"size": int(a["size"]), "alpha": float(a.get("alpha", 1e-4)),
                                       "beta": float(a.get("beta", 0.75)),
                                       "bias": float(a.get("bias", 1.0))})]


@onnx_op("Softmax", "LogSoftmax")
def _softmax(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    return [ctx.add(op, [_x(ctx)], {"axis": a.get("axis", -1)})]


@onnx_op("Dropout")
def _dropout(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = _x(ctx)
    if _has(node, 2):
        tm = ctx.const(2)
        if tm is None:
            raise FrontendError(f"{ctx.where()}: training_mode must be a constant")
        if bool(tm.item()):
            ratio = ctx.const(1) if _has(node, 1) else torch.tensor(0.5)
            if ratio is None:
                raise FrontendError(f"{ctx.where()}: ratio must be a constant in training mode")
            if float(ratio) != 0.0:
                raise FrontendError(f"{ctx.where()}: Dropout in training mode (random) is not "
                                    f"supported")
    y = x
    if _wants(node, 1):
        mask = ctx.add("full", [], {"shape": tuple(x.shape), "value": 1.0, "dtype": "bool"})
        return [y, mask]
    return [y]
