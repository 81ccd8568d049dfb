"""Converters for the ``com.microsoft`` contrib ops that onnxruntime's transformer optimizer
(``onnxruntime.transformers.optimizer.optimize_model``, as HF Optimum runs it) writes into
BERT / GPT-2 / LLaMA-style models, lowered onto existing IR ops:

- here: FusedMatMul (alpha, transA/B, transBatchA/B), Gelu, BiasGelu, FastGelu (with or
  without bias), QuickGelu, BiasAdd;
- ``contrib_norm.py``: SkipLayerNormalization, SkipSimplifiedLayerNormalization,
  SimplifiedLayerNormalization (default domain, as onnxruntime registers it),
  EmbedLayerNormalization;
- ``contrib_attention.py``: Attention (packed QKV weight), MultiHeadAttention, RotaryEmbedding;
- ``contrib_gqa.py``: GroupQueryAttention (its KV cache is written at the per-batch positions
  ``seqlens_k`` gives at run time, as a gather over past and new rows).

Semantics follow onnxruntime's CPU kernels where the contrib-op spec leaves room (checked
against onnxruntime 1.32 in tests/frontend/test_onnx_contrib.py). Forms the IR cannot say
exactly raise ``UnsupportedOpError`` naming the node and the form, like MatMulNBits does.
"""
from __future__ import annotations

from typing import Any

import onnx

from ...ir import dtypes as dt
from ...ir.errors import FrontendError, UnsupportedOpError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .matmulnbits import MS_DOMAIN
from .quant import scalar

QUICK_GELU_ALPHA = 1.702


def unsupported(ctx: Ctx, what: str) -> UnsupportedOpError:
    """An UnsupportedOpError for an unsupported form of the current contrib node, naming the
    node (``ctx.where()``) and the form."""
    assert ctx.node is not None
    return UnsupportedOpError({f"{MS_DOMAIN}::{ctx.node.op_type} with {what}": 1}, where=ctx.where())


def need(ctx: Ctx, i: int, what: str) -> Value:
    """The node's input ``i``, which the op requires."""
    v = ctx.input(i)
    if v is None:
        raise FrontendError(f"{ctx.where()}: input {i} ({what}) is required")
    return v


def wants(node: onnx.NodeProto, i: int) -> bool:
    """Whether the node's output ``i`` is present (named)."""
    return len(node.output) > i and bool(node.output[i])


def require_float(ctx: Ctx, x: Value, what: str) -> None:
    if not x.dtype.is_float:
        raise FrontendError(f"{ctx.where()}: {what} must be a float tensor, got {x.type}")


def add_bias(ctx: Ctx, x: Value, bias: Value | None) -> Value:
    return x if bias is None else ctx.add("add", [x, bias])


# ---- matrix product ------------------------------------------------------------------------

def _fused_operand(ctx: Ctx, x: Value, trans: bool, trans_batch: bool, what: str) -> Value:
    """Bring a FusedMatMul operand into matmul's [..., M, K] layout.

    onnxruntime reads transBatch as "dim 0 is the second-to-last logical dim": the operand
    [d0, d1, ..., d(r-2), d(r-1)] is used as permute(1, ..., r-2, 0, r-1), and with trans as
    well as permute(1, ..., r-2, r-1, 0) (checked against its CPU kernel)."""
    r = x.type.rank
    if (trans or trans_batch) and r < 2:
        raise unsupported(ctx, f"trans/transBatch on a 1-D {what}")
    if trans_batch and r < 3:
        raise FrontendError(f"{ctx.where()}: transBatch{what} needs {what} of rank >= 3, got {x.type}")
    if trans_batch:
        perm = tuple(range(1, r - 1)) + ((r - 1, 0) if trans else (0, r - 1))
    elif trans:
        perm = tuple(range(r - 2)) + (r - 1, r - 2)
    else:
        return x
    return ctx.add("transpose", [x], {"perm": perm})


@onnx_op("FusedMatMul", domain=MS_DOMAIN)
def _fused_matmul(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, w = need(ctx, 0, "A"), need(ctx, 1, "B")
    alpha = float(a.get("alpha", 1.0))
    x = _fused_operand(ctx, x, bool(a.get("transA", 0)), bool(a.get("transBatchA", 0)), "A")
    wc = ctx.const(1)
    tb, tbb = bool(a.get("transB", 0)), bool(a.get("transBatchB", 0))
    if wc is not None and wc.dim() == 2 and not tbb and x.dtype.is_float and x.dtype == w.dtype \
            and not x.is_const:
        # A constant 2-D weight becomes ``linear`` (weight stored [N, K]) like MatMul's, so that
        # the compression passes see it; alpha is folded into the weight.
        wt = wc if tb else wc.t()
        if alpha != 1.0:
            wt = (wt.to(dt.f64.container) * alpha).to(wc.dtype)
        wv = ctx.graph.add_const(wt.contiguous(), w.dtype, f"{node.input[1]}_t")
        return [ctx.add("linear", [x, wv])]
    w = _fused_operand(ctx, w, tb, tbb, "B")
    y = ctx.add("matmul", [x, w])
    if alpha != 1.0:
        y = ctx.add("mul", [y, scalar(ctx, alpha, y.dtype)])
    return [y]


# ---- activations ---------------------------------------------------------------------------

@onnx_op("Gelu", domain=MS_DOMAIN)
def _gelu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = need(ctx, 0, "X")
    require_float(ctx, x, "X")
    return [ctx.add("gelu", [x], {"approximate": "none"})]


@onnx_op("BiasGelu", domain=MS_DOMAIN)
def _bias_gelu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = add_bias(ctx, need(ctx, 0, "A"), need(ctx, 1, "B"))
    require_float(ctx, x, "A")
    return [ctx.add("gelu", [x], {"approximate": "none"})]


@onnx_op("FastGelu", domain=MS_DOMAIN)
def _fast_gelu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    # FastGelu's tanh formula 0.5*x*(1+tanh(0.797885*x + 0.035677*x^3)) is the IR's
    # gelu(approximate="tanh") with sqrt(2/pi) and 0.044715*sqrt(2/pi) rounded to 6 digits.
    x = add_bias(ctx, need(ctx, 0, "X"), ctx.input(1))
    require_float(ctx, x, "X")
    return [ctx.add("gelu", [x], {"approximate": "tanh"})]


@onnx_op("QuickGelu", domain=MS_DOMAIN)
def _quick_gelu(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x = need(ctx, 0, "X")
    require_float(ctx, x, "X")
    alpha = float(a.get("alpha", QUICK_GELU_ALPHA))
    if alpha == 1.0:
        return [ctx.add("silu", [x])]
    gate = ctx.add("sigmoid", [ctx.add("mul", [x, scalar(ctx, alpha, x.dtype)])])
    return [ctx.add("mul", [x, gate])]


@onnx_op("BiasAdd", domain=MS_DOMAIN)
def _bias_add(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, bias, skip = need(ctx, 0, "X"), need(ctx, 1, "bias"), need(ctx, 2, "skip")
    return [ctx.add("add", [ctx.add("add", [x, bias]), skip])]

