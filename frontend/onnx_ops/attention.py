"""Converters for transformer building blocks: Attention (opset 23/24), RMSNormalization,
RotaryEmbedding, SwiGLU.

Attention maps onto the IR ``sdpa`` op when that is exact (no softcap, no qk_matmul_output,
no per-batch padding lengths); causal masking is passed to sdpa as an explicit additive bias
because ONNX aligns it bottom-right when a KV cache is present (sdpa's ``causal`` is
top-left). Otherwise the attention is spelled out with matmul / softmax / where, following
the ONNX reference step by step (scale split as sqrt(scale) on q and k, softcap before the
mask, fully-masked rows give zeros).
"""
from __future__ import annotations

import math
from typing import Any

import onnx
import sympy
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.types import canon_dim
from ..onnx_ctx import Ctx, onnx_op
from .quant import cast, scalar


def _heads_split(ctx: Ctx, x: Value, heads: int) -> Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hid = x.type.shape
    d = canon_dim(sympy.sympify(hid) / heads) if not isinstance(hid, int) else hid // heads
    y = ctx.add("reshape", [x], {"shape": (b, s, heads, d)})
    return ctx.add("transpose", [y], {"perm": (0, 2, 1, 3)})


def _bias_from_mask(ctx: Ctx, mask: Value, f: dt.DType) -> Value:
    """A bool mask (True = attend) as an additive 0 / -inf bias of dtype ``f``."""
    if mask.type.dtype is dt.boolean:
        return ctx.add("where", [mask, scalar(ctx, 0.0, f), scalar(ctx, float("-inf"), f)])
    return cast(ctx, mask, f)


def _pad_mask(ctx: Ctx, mask: Value, kv_len: Any) -> Value:
    """Pad the mask's last dim up to the KV length (False / -inf), as ONNX allows."""
    last = mask.type.shape[-1]
    diff = canon_dim(sympy.sympify(kv_len) - sympy.sympify(last))
    if diff == 0:
        return mask
    if not isinstance(diff, int) or diff < 0:
        raise FrontendError(f"{ctx.where()}: attn_mask length {last} vs KV length {kv_len}")
    r = mask.type.rank
    pads = (0,) * r + (0,) * (r - 1) + (diff,)
    val = 0.0 if mask.type.dtype is dt.boolean else float("-inf")
    return ctx.add("pad", [mask], {"pads": pads, "mode": "constant", "value": val})


def _frontier_bias(ctx: Ctx, n_q: Any, n_kv: Any, offset: int | Value, causal: bool,
                   left: int, right: int, f: dt.DType) -> Value:
    """Additive 0 / -inf bias for causal and sliding-window masking, aligned bottom-right.

    With diff = i + offset - j (query i, key j): causal keeps diff >= 0, a left window keeps
    diff <= left, a right window keeps -diff <= right. A static ``offset`` gives an [L, S]
    constant; a per-batch Value [B] gives [B, 1, L, S] computed at run time.
    """
    if not isinstance(n_q, int) or not isinstance(n_kv, int):
        raise FrontendError(f"{ctx.where()}: causal / window masks need static sequence lengths")
    i = torch.arange(n_q).reshape(-1, 1)
    j = torch.arange(n_kv).reshape(1, -1)
    if isinstance(offset, int):
        diff = i + offset - j
        keep = torch.ones(n_q, n_kv, dtype=torch.bool)
        if causal:
            keep &= diff >= 0
        if left >= 0:
            keep &= diff <= left
        if right >= 0:
            keep &= -diff <= right
        t = torch.where(keep, 0.0, float("-inf")).to(f.container)
        return ctx.graph.add_const(t, f)
    c = ctx.graph.add_const((j - i).reshape(1, n_q, n_kv).contiguous(), dt.i64)
    o = ctx.add("reshape", [offset], {"shape": (-1, 1, 1)})
    diff_v = ctx.add("sub", [o, c])
    conds = []
    if causal:
        conds.append(ctx.add("ge", [diff_v, scalar(ctx, 0, dt.i64)]))
    if left >= 0:
        conds.append(ctx.add("le", [diff_v, scalar(ctx, left, dt.i64)]))
    if right >= 0:
        conds.append(ctx.add("ge", [diff_v, scalar(ctx, -right, dt.i64)]))
    keep_v = conds[0]
    for cnd in conds[1:]:
        keep_v = ctx.add("logical_and", [keep_v, cnd])
    keep_v = ctx.add("unsqueeze", [keep_v], {"axes": (1,)})
    return _bias_from_mask(ctx, keep_v, f)


@onnx_op("Attention")
def _attention(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    mask, past_k, past_v, nonpad = (ctx.input(i) for i in (3, 4, 5, 6))
    f = q.type.dtype
    three_d = q.type.rank == 3
    if three_d:
        if "q_num_heads" not in a or "kv_num_heads" not in a:
            raise FrontendError(f"{ctx.where()}: 3-D inputs need q_num_heads and kv_num_heads")
        q = _heads_split(ctx, q, a["q_num_heads"])
        k = _heads_split(ctx, k, a["kv_num_heads"])
        v = _heads_split(ctx, v, a["kv_num_heads"])
    if past_k is not None:
        k = ctx.add("concat", [past_k, k], {"axis": 2})
        v = ctx.add("concat", [past_v, v], {"axis": 2})
    present_k, present_v = k, v
    n_q, n_kv = q.type.shape[2], k.type.shape[2]
    scale = a.get("scale")
    if scale is None:
        d = q.type.shape[3]
        if not isinstance(d, int):
            raise FrontendError(f"{ctx.where()}: default scale needs a static head size")
        scale = 1.0 / math.sqrt(d)
    softcap = float(a.get("softcap", 0.0) or 0.0)
    mode = int(a.get("qk_matmul_output_mode", 0))
    want_qk = len(node.output) > 3 and bool(node.output[3])
    causal = bool(a.get("is_causal", 0))

    left, right = int(a.get("left_window_size", -1)), int(a.get("right_window_size", -1))
    bias: Value | None = None
    if mask is not None:
        mask = _pad_mask(ctx, mask, n_kv)
        plain = not causal and left < 0 and right < 0 and mask.type.dtype is dt.boolean
        bias = mask if plain else _bias_from_mask(ctx, mask, f)
    # Causal / window frontier offset: per batch with nonpad_kv_seqlen, else the past length.
    offset: int | Value = past_k.type.shape[2] if past_k is not None else 0
    if nonpad is not None and past_k is None:
        if not isinstance(n_q, int):
            raise FrontendError(f"{ctx.where()}: nonpad_kv_seqlen needs a static query length")
        offset = ctx.add("sub", [cast(ctx, nonpad, dt.i64), scalar(ctx, n_q, dt.i64)])
    if causal or left >= 0 or right >= 0:
        fb = _frontier_bias(ctx, n_q, n_kv, offset, causal, left, right, f)
        bias = fb if bias is None else ctx.add("add", [bias, fb])
    if nonpad is not None:
        if not isinstance(n_kv, int):
            raise FrontendError(f"{ctx.where()}: nonpad_kv_seqlen needs a static KV length")
        pos = ctx.graph.add_const(torch.arange(n_kv).reshape(1, -1), dt.i64)
        lens = ctx.add("unsqueeze", [cast(ctx, nonpad, dt.i64)], {"axes": (1,)})
        keep = ctx.add("lt", [pos, lens])
        keep = ctx.add("unsqueeze", [keep], {"axes": (1, 2)})
        pb = _bias_from_mask(ctx, keep, f)
        bias = pb if bias is None else ctx.add("add", [_bias_from_mask(ctx, bias, f), pb])

    hq, hk = q.type.shape[1], k.type.shape[1]
    if softcap == 0.0 and not want_qk:
        if bias is not None and bias.type.dtype is not dt.boolean and bias.type.rank < 2:
            bias = ctx.add("reshape", [bias], {"shape": (1, -1)})
        y = ctx.add("sdpa", [q, k, v, bias], {"causal": False, "scale": float(scale),
                                              "gqa": hq != hk})
        qk = None
    else:
        y, qk = _explicit(ctx, q, k, v, bias, float(scale), softcap, mode, f)
    if three_d:
        y = ctx.add("transpose", [y], {"perm": (0, 2, 1, 3)})
        b, l_, h, dv = y.type.shape
        y = ctx.add("reshape", [y], {"shape": (b, l_, canon_dim(sympy.sympify(h) * dv))})
    return [y, present_k, present_v, qk]


def _repeat_heads(ctx: Ctx, x: Value, rep: int) -> Value:
    """[B, Hk, S, D] -> [B, Hk*rep, S, D], each head repeated ``rep`` times in place."""
    b, h, s, d = x.type.shape
    y = ctx.add("unsqueeze", [x], {"axes": (2,)})
    y = ctx.add("expand", [y], {"shape": (b, h, rep, s, d)})
    return ctx.add("reshape", [y], {"shape": (b, canon_dim(sympy.sympify(h) * rep), s, d)})


def _explicit(ctx: Ctx, q: Value, k: Value, v: Value, bias: Value | None, scale: float,
              softcap: float, mode: int, f: dt.DType) -> tuple[Value, Value]:
    hq, hk = q.type.shape[1], k.type.shape[1]
    if hq != hk:
        if not isinstance(hq, int) or not isinstance(hk, int) or hq % hk:
            raise FrontendError(f"{ctx.where()}: q heads {hq} not a multiple of kv heads {hk}")
        k, v = _repeat_heads(ctx, k, hq // hk), _repeat_heads(ctx, v, hq // hk)
    rs = scalar(ctx, math.sqrt(scale), f)
    kt = ctx.add("transpose", [ctx.add("mul", [k, rs])], {"perm": (0, 1, 3, 2)})
    s = ctx.add("matmul", [ctx.add("mul", [q, rs]), kt])
    if softcap > 0:
        c = scalar(ctx, softcap, f)
        s = ctx.add("mul", [ctx.add("tanh", [ctx.add("div", [s, c])]), c])
    qk = s
    if bias is not None:
        bias = _bias_from_mask(ctx, bias, f)
        s = ctx.add("add", [s, bias])
    if mode == 2:
        qk = s
    p = ctx.add("softmax", [s], {"axis": -1})
    if bias is not None:
        rowmax = ctx.add("reduce_max", [bias], {"axes": (-1,), "keepdims": True})
        dead = ctx.add("eq", [rowmax, scalar(ctx, float("-inf"), f)])
        p = ctx.add("where", [dead, scalar(ctx, 0.0, f), p])
    if mode == 3:
        qk = p
    return ctx.add("matmul", [p, v]), qk


@onnx_op("RMSNormalization")
def _rms_norm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, w = ctx.input(0), ctx.input(1)
    axis = int(a.get("axis", -1))
    eps = float(a.get("epsilon", 1e-5))
    r = x.type.rank
    ax = axis + r if axis < 0 else axis
    norm_shape = x.type.shape[ax:]
    if w is not None and tuple(w.type.shape) != tuple(norm_shape):
        # ONNX lets the scale broadcast; the IR op wants x.shape[axis:] exactly.
        w = ctx.add("expand", [w], {"shape": tuple(norm_shape)})
    return [ctx.add("rms_norm", [x, w], {"axis": ax, "eps": eps})]
