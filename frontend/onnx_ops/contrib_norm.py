"""Converters for onnxruntime's fused normalisations: ``com.microsoft``
SkipLayerNormalization, SkipSimplifiedLayerNormalization, EmbedLayerNormalization, and
SimplifiedLayerNormalization (which onnxruntime registers in the *default* ONNX domain, so its
exports write it without a domain).

Each becomes ``add`` + ``layer_norm`` / ``rms_norm`` (+ ``embedding`` for the embedding
fusion); the optional statistics outputs are computed from the same sum with keepdims, in the
shapes onnxruntime's CPU kernels give them ([..., 1] over the normalised dims).
"""
from __future__ import annotations

from typing import Any, Sequence

import onnx

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.types import Dim
from ..onnx_ctx import Ctx, onnx_op
from .contrib import MS_DOMAIN, add_bias, need, require_float, unsupported, wants
from .quant import cast, scalar

# onnxruntime's defaults for the epsilon attribute of its fused norms.
SKIP_LN_EPS = 1e-12
SIMPLIFIED_LN_EPS = 1e-5


def _param(ctx: Ctx, v: Value | None, shape: Sequence[Dim], what: str) -> Value | None:
    """A norm's scale / shift, shaped exactly ``shape`` (the normalised dims) as the IR wants."""
    if v is None or tuple(v.shape) == tuple(shape):
        return v
    if v.type.rank > len(shape):
        raise FrontendError(f"{ctx.where()}: {what} {v.type} does not fit the normalised dims "
                            f"{list(shape)}")
    return ctx.add("expand", [v], {"shape": tuple(shape)})


def _stats(ctx: Ctx, x: Value, axis: int, eps: float, centred: bool) -> tuple[Value | None, Value]:
    """(mean, 1/sqrt(var + eps)) of ``x`` over axis..rank-1 with the dims kept as 1; the RMS form
    (``centred=False``) has no mean and uses mean(x^2) for the variance. In float32 whatever x's
    type, as onnxruntime types these outputs (U = float)."""
    x = cast(ctx, x, dt.f32)
    axes = tuple(range(axis, x.type.rank))
    if centred:
        mean = ctx.add("reduce_mean", [x], {"axes": axes, "keepdims": True})
        var = ctx.add("reduce_var", [x], {"axes": axes, "keepdims": True, "correction": 0})
    else:
        mean = None
        var = ctx.add("reduce_mean", [ctx.add("mul", [x, x])], {"axes": axes, "keepdims": True})
    inv = ctx.add("rsqrt", [ctx.add("add", [var, scalar(ctx, eps, dt.f32)])])
    return mean, inv


def _skip_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any], simplified: bool) -> list[Value | None]:
    """(Simplified) SkipLayerNormalization: LN(input + skip + bias), plus the optional mean,
    inv_std_var and input_skip_bias_sum outputs."""
    x, skip = need(ctx, 0, "input"), need(ctx, 1, "skip")
    require_float(ctx, x, "input")
    gamma = need(ctx, 2, "gamma")
    beta = None if simplified else ctx.input(3)
    bias = ctx.input(3 if simplified else 4)
    eps = float(a.get("epsilon", SKIP_LN_EPS))
    if x.type.rank not in (2, 3):
        raise FrontendError(f"{ctx.where()}: input must be 2-D or 3-D, got {x.type}")
    # skip may be [B, S, H], [1, S, H] or [S, H]: numpy broadcasting of the add covers all three
    s = add_bias(ctx, ctx.add("add", [x, skip]), bias)
    axis = s.type.rank - 1
    hidden = s.shape[axis:]
    gamma = _param(ctx, gamma, hidden, "gamma")
    if simplified:
        y = ctx.add("rms_norm", [s, gamma], {"axis": axis, "eps": eps})
    else:
        y = ctx.add("layer_norm", [s, gamma, _param(ctx, beta, hidden, "beta")],
                    {"axis": axis, "eps": eps})
    outs: list[Value | None] = [y, None, None, s if wants(node, 3) else None]
    if simplified and wants(node, 1):
        # onnxruntime's kernel never writes this output for the RMS form (its contents are
        # whatever the buffer held), so there is nothing defined to import.
        raise unsupported(ctx, "the mean output (onnxruntime leaves it unwritten)")
    if wants(node, 1) or wants(node, 2):
        mean, inv = _stats(ctx, s, axis, eps, not simplified)
        outs[1], outs[2] = mean, inv
    return outs


@onnx_op("SkipLayerNormalization", domain=MS_DOMAIN)
def _skip_layer_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return _skip_norm(ctx, node, a, simplified=False)


@onnx_op("SkipSimplifiedLayerNormalization", domain=MS_DOMAIN)
def _skip_simplified_layer_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    return _skip_norm(ctx, node, a, simplified=True)


@onnx_op("SimplifiedLayerNormalization")
def _simplified_layer_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    # RMSNorm as onnxruntime (and its LLaMA / Phi exports) spell it, in the default domain.
    x, scale = need(ctx, 0, "X"), need(ctx, 1, "scale")
    require_float(ctx, x, "X")
    r = x.type.rank
    axis = int(a.get("axis", -1))
    axis = axis + r if axis < 0 else axis
    if not 0 <= axis < r:
        raise FrontendError(f"{ctx.where()}: axis {a.get('axis')} out of range for {x.type}")
    eps = float(a.get("epsilon", SIMPLIFIED_LN_EPS))
    if scale.dtype is not x.dtype:
        # X (T) and scale (V) may differ; the output is V: normalise in float32, then cast
        require_float(ctx, scale, "scale")
        xf, sf = cast(ctx, x, dt.f32), cast(ctx, scale, dt.f32)
        y = ctx.add("rms_norm", [xf, _param(ctx, sf, x.shape[axis:], "scale")], {"axis": axis, "eps": eps})
        y = cast(ctx, y, scale.dtype)
    else:
        y = ctx.add("rms_norm", [x, _param(ctx, scale, x.shape[axis:], "scale")], {"axis": axis, "eps": eps})
    if not wants(node, 1):
        return [y]
    return [y, _stats(ctx, x, axis, eps, centred=False)[1]]


@onnx_op("EmbedLayerNormalization", domain=MS_DOMAIN)
def _embed_layer_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    """LN(word[input_ids] + position[position_ids or 0..S-1] + segment[segment_ids]); the
    mask_index output is what onnxruntime computes from the mask: the count of entries equal
    to 1 per row (zeros without a mask), as int32."""
    ids = need(ctx, 0, "input_ids")
    seg_ids = ctx.input(1)
    word, pos_table = need(ctx, 2, "word_embedding"), need(ctx, 3, "position_embedding")
    seg_table = ctx.input(4)
    gamma, beta = need(ctx, 5, "gamma"), need(ctx, 6, "beta")
    mask, pos_ids = ctx.input(7), ctx.input(8)
    if ids.type.rank != 2:
        raise FrontendError(f"{ctx.where()}: input_ids must be 2-D [batch, sequence], got {ids.type}")
    if mask is not None and mask.type.rank != 2:
        raise FrontendError(f"{ctx.where()}: mask must be 2-D [batch, sequence], got {mask.type}")
    if (seg_ids is None) != (seg_table is None):
        raise FrontendError(f"{ctx.where()}: segment_ids and segment_embedding go together")
    b, s = ids.shape
    emb = ctx.add("embedding", [word, ids])
    if pos_ids is not None:
        pos = ctx.add("embedding", [pos_table, pos_ids])            # [B or 1, S, H]
    else:
        # rows 0..S-1, looked up rather than sliced so that the result is exactly S long (a
        # slice's length would be min(S, table rows), which does not broadcast against S)
        rows = ctx.add("embedding", [pos_table, ctx.add("arange", [], {"end": s})])
        pos = ctx.add("unsqueeze", [rows], {"axes": (0,)})           # [1, S, H]
    emb = ctx.add("add", [emb, pos])
    if seg_ids is not None:
        emb = ctx.add("add", [emb, ctx.add("embedding", [seg_table, seg_ids])])
    hidden = emb.shape[2:]
    eps = float(a.get("epsilon", SKIP_LN_EPS))
    y = ctx.add("layer_norm", [emb, _param(ctx, gamma, hidden, "gamma"), _param(ctx, beta, hidden, "beta")],
                {"axis": 2, "eps": eps})
    outs: list[Value | None] = [y, None, emb if wants(node, 2) else None]
    if wants(node, 1):
        if mask is None:
            outs[1] = ctx.add("full", [], {"shape": (b,), "value": 0.0, "dtype": dt.i32.name})
        else:
            ones = ctx.add("eq", [mask, scalar(ctx, 1, mask.dtype)])
            outs[1] = ctx.add("reduce_sum", [cast(ctx, ones, dt.i32)], {"axes": (1,), "keepdims": False})
    return outs
