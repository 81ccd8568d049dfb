"""Converters for onnxruntime's fused attention ops: ``com.microsoft`` Attention (one packed
QKV projection weight), MultiHeadAttention (projected q / k / v) and RotaryEmbedding.

All become the IR ``sdpa`` op on [B, heads, S, head_size] tensors, with an additive float mask
that reproduces onnxruntime's CPU kernels (checked against onnxruntime 1.32):

- a padding mask (raw 0/1 mask, 1-D end positions, or end + start positions) does not remove
  keys: it *adds* ``mask_filter_value`` (default -10000) to their scores, a raw mask keeping
  the entries > 0. A row with every key padded therefore averages over all of them, as
  onnxruntime does, instead of giving zeros.
- ``unidirectional`` removes future keys outright (-inf), aligned bottom-right: query i (at
  absolute position past + i) sees keys j <= past + i.
- ``attention_bias`` is added on top.

Not supported (UnsupportedOpError naming the node): rotary inside Attention (``do_rotary``),
shared past/present buffers (``past_present_share_buffer``, ``past_sequence_length``), beam
search ``cache_indirection``, the 4-D Megatron mask and the (3 * batch + 2) packed-sequence
mask index, MultiHeadAttention's ``qk`` output and packed QKV / KV with a bias.
"""
from __future__ import annotations

from typing import Any

import onnx
import sympy

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ...ir.types import Dim, canon_dim, dims_equal
from ..onnx_ctx import Ctx, onnx_op
from .contrib import MS_DOMAIN, add_bias, need, require_float, unsupported, wants
from .quant import cast, scalar

MASK_FILTER_VALUE = -10000.0


def _div(d: Dim, n: int) -> Dim:
    return d // n if isinstance(d, int) else canon_dim(sympy.sympify(d) / n)


def _add(d: Dim, n: Dim) -> Dim:
    return canon_dim(sympy.sympify(d) + sympy.sympify(n))


def _mul(d: Dim, n: int | Dim) -> Dim:
    return canon_dim(sympy.sympify(d) * sympy.sympify(n))


def _heads(ctx: Ctx, a: dict[str, Any], name: str = "num_heads") -> int:
    n = int(a.get(name, 0) or 0)
    if n <= 0:
        raise FrontendError(f"{ctx.where()}: attribute {name} must be a positive int, got {a.get(name)}")
    return n


def split_heads(ctx: Ctx, x: Value, heads: int, what: str) -> Value:
    """[B, S, heads * d] -> [B, heads, S, d]."""
    if x.type.rank != 3:
        raise FrontendError(f"{ctx.where()}: {what} must be 3-D [batch, sequence, hidden], got {x.type}")
    b, s, hid = x.shape
    if isinstance(hid, int) and hid % heads:
        raise FrontendError(f"{ctx.where()}: {what} hidden size {hid} is not a multiple of {heads} heads")
    y = ctx.add("reshape", [x], {"shape": (b, s, heads, _div(hid, heads))})
    return ctx.add("transpose", [y], {"perm": (0, 2, 1, 3)})


def merge_heads(ctx: Ctx, y: Value) -> Value:
    """[B, heads, S, d] -> [B, S, heads * d]."""
    b, h, s, d = y.shape
    y = ctx.add("transpose", [y], {"perm": (0, 2, 1, 3)})
    return ctx.add("reshape", [y], {"shape": (b, s, _mul(h, d))})


def padding_bias(ctx: Ctx, mask: Value, batch: Dim, total: Dim, filt: float, f: dt.DType) -> Value:
    """An onnxruntime key padding mask / mask_index as an additive bias (0 kept, ``filt``
    masked) that broadcasts to [B, H, S, total]:
    [B] end positions, [2B] end then start positions, [B, total] or [B, S, total] raw masks
    (entries > 0 kept)."""
    r = mask.type.rank
    if mask.dtype.is_float:
        raise FrontendError(f"{ctx.where()}: the mask must be an integer or bool tensor, got {mask.type}")
    if r == 1:
        n = mask.shape[0]
        j = ctx.add("reshape", [ctx.add("arange", [], {"end": total})], {"shape": (1, -1)})
        m = cast(ctx, mask, dt.i64)
        if dims_equal(n, batch):
            keep = ctx.add("lt", [j, ctx.add("reshape", [m], {"shape": (-1, 1)})])
        elif dims_equal(n, _mul(batch, 2)):
            end, start = ctx.add("split", [m], {"axis": 0, "sizes": (batch, batch)})
            keep = ctx.add("logical_and", [ctx.add("lt", [j, ctx.add("reshape", [end], {"shape": (-1, 1)})]),
                                           ctx.add("ge", [j, ctx.add("reshape", [start], {"shape": (-1, 1)})])])
        else:
            raise unsupported(ctx, f"a 1-D mask of length {n} (only batch end positions or 2 * batch "
                                   f"end and start positions are supported, not the packed 3 * batch + 2 form)")
        keep = ctx.add("unsqueeze", [keep], {"axes": (1, 2)})               # [B, 1, 1, T]
    elif r in (2, 3):
        if not dims_equal(mask.shape[-1], total):
            raise FrontendError(f"{ctx.where()}: mask {mask.type} must end in the total sequence length {total}")
        keep = ctx.add("gt", [mask, scalar(ctx, 0, mask.dtype)]) if mask.dtype is not dt.boolean else mask
        keep = ctx.add("unsqueeze", [keep], {"axes": (1, 2) if r == 2 else (1,)})
    else:
        raise unsupported(ctx, f"a {r}-D mask (the 4-D Megatron-style mask is not supported)")
    return ctx.add("where", [keep, scalar(ctx, 0.0, f), scalar(ctx, filt, f)])


def causal_bias(ctx: Ctx, n_q: Dim, past: Dim, total: Dim, f: dt.DType) -> Value:
    """0 / -inf [S, total]: query i (absolute position past + i) keeps keys j <= past + i."""
    i = ctx.add("arange", [], {"start": past, "end": _add(past, n_q)})
    j = ctx.add("arange", [], {"end": total})
    keep = ctx.add("le", [ctx.add("reshape", [j], {"shape": (1, -1)}),
                          ctx.add("reshape", [i], {"shape": (-1, 1)})])
    return ctx.add("where", [keep, scalar(ctx, 0.0, f), scalar(ctx, float("-inf"), f)])


def attend(ctx: Ctx, q: Value, k: Value, v: Value, a: dict[str, Any], *, mask: Value | None,
           attn_bias: Value | None, causal: bool, past: Dim, batch: Dim) -> Value:
    """sdpa of q [B, Hq, S, d] over k / v [B, Hk, T, d] with onnxruntime's masking rules."""
    f = q.dtype
    n_q, total = q.shape[2], k.shape[2]
    filt = float(a.get("mask_filter_value", MASK_FILTER_VALUE))
    scale = a.get("scale")
    scale = float(scale) if scale is not None and float(scale) != 0.0 else None
    parts: list[Value] = []
    if mask is not None:
        parts.append(padding_bias(ctx, mask, batch, total, filt, f))
    if attn_bias is not None:
        if attn_bias.dtype is not f:
            raise FrontendError(f"{ctx.where()}: attention_bias must have the query's type {f.name}, "
                                f"got {attn_bias.type}")
        parts.append(attn_bias)
    if causal and not dims_equal(total, _add(past, n_q)):
        # onnxruntime's causal loop then leaves the last query row unmasked (it attends every
        # key), which is no causal rule the IR could state
        raise unsupported(ctx, f"unidirectional with {total} keys for {n_q} queries after {past} "
                               f"past ones (only past + query length)")
    plain_causal = causal and not parts and past == 0 and dims_equal(n_q, total)
    if causal and not plain_causal:
        parts.append(causal_bias(ctx, n_q, past, total, f))
    bias = None
    for p in parts:
        bias = p if bias is None else ctx.add("add", [bias, p])
    gqa = not dims_equal(q.shape[1], k.shape[1])
    return ctx.add("sdpa", [q, k, v, bias], {"causal": plain_causal, "scale": scale, "gqa": gqa})


# ---- com.microsoft::Attention ------------------------------------------------------------

def _project(ctx: Ctx, x: Value, w: Value, bias: Value | None, sizes: tuple[int, int, int],
             wname: str) -> list[Value]:
    """x @ W + bias for the packed [in, q + k + v] weight, as q, k, v [B, S, *]. A constant W
    becomes three ``linear`` nodes (the layout the compression passes know from torch
    imports); a computed one a matmul and a split."""
    wc, bc = ctx.const(1), (ctx.const(2) if bias is not None else None)
    offs = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    if wc is not None and wc.dim() == 2 and not x.is_const and x.dtype == w.dtype:
        outs = []
        for i, tag in enumerate("qkv"):
            wi = ctx.graph.add_const(wc[:, offs[i]:offs[i + 1]].t().contiguous(), w.dtype, f"{wname}_{tag}")
            bi = None
            if bc is not None:
                bi = ctx.graph.add_const(bc[offs[i]:offs[i + 1]].contiguous(), bias.dtype, f"{wname}_{tag}_bias")
            y = ctx.add("linear", [x, wi, bi])
            if bias is not None and bc is None:
                y = ctx.add("add", [y, ctx.add("slice", [bias], {"starts": (offs[i],), "ends": (offs[i + 1],),
                                                                 "axes": (0,)})])
            outs.append(y)
        return outs
    y = add_bias(ctx, ctx.add("matmul", [x, w]), bias)
    return list(ctx.add("split", [y], {"axis": 2, "sizes": sizes}))


@onnx_op("Attention", domain=MS_DOMAIN)
def _attention(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, w = need(ctx, 0, "input"), need(ctx, 1, "weights")
    bias, mask, past, attn_bias = ctx.input(2), ctx.input(3), ctx.input(4), ctx.input(5)
    require_float(ctx, x, "input")
    if int(a.get("do_rotary", 0)):
        raise unsupported(ctx, "do_rotary=1 (rotary embedding inside Attention)")
    if int(a.get("past_present_share_buffer", 0)) or ctx.input(6) is not None:
        raise unsupported(ctx, "a shared past/present buffer (past_present_share_buffer / past_sequence_length)")
    heads = _heads(ctx, a)
    if x.type.rank != 3 or w.type.rank != 2:
        raise FrontendError(f"{ctx.where()}: input must be 3-D and weights 2-D, got {x.type}, {w.type}")
    n = w.shape[1]
    if not isinstance(n, int):
        raise FrontendError(f"{ctx.where()}: the weights' second dim must be static, got {w.type}")
    sizes = tuple(int(v) for v in a.get("qkv_hidden_sizes") or ())
    if not sizes:
        if n % 3:
            raise FrontendError(f"{ctx.where()}: weights' second dim {n} is not divisible by 3 "
                                f"(qkv_hidden_sizes is needed)")
        sizes = (n // 3,) * 3
    if len(sizes) != 3 or sum(sizes) != n or sizes[0] != sizes[1] or any(s <= 0 or s % heads for s in sizes):
        raise FrontendError(f"{ctx.where()}: qkv_hidden_sizes {list(sizes)} must be 3 positive multiples "
                            f"of num_heads={heads} summing to {n}, with q and k equal")
    q, k, v = _project(ctx, x, w, bias, sizes, node.input[1])
    q, k, v = (split_heads(ctx, t, heads, tag) for t, tag in ((q, "q"), (k, "k"), (v, "v")))
    past_len: Dim = 0
    if past is not None:
        if past.type.rank != 5 or sizes[1] != sizes[2]:
            raise FrontendError(f"{ctx.where()}: past must be [2, B, heads, P, head_size] with equal k and "
                                f"v sizes, got {past.type}")
        pk, pv = (ctx.add("squeeze", [t], {"axes": (0,)})
                  for t in ctx.add("split", [past], {"axis": 0, "sizes": (1, 1)}))
        past_len = pk.shape[2]
        k = ctx.add("concat", [pk, k], {"axis": 2})
        v = ctx.add("concat", [pv, v], {"axis": 2})
    y = attend(ctx, q, k, v, a, mask=mask, attn_bias=attn_bias, causal=bool(a.get("unidirectional", 0)),
               past=past_len, batch=x.shape[0])
    present = None
    if wants(node, 1):
        if sizes[1] != sizes[2]:
            raise FrontendError(f"{ctx.where()}: present needs equal k and v hidden sizes")
        present = ctx.add("concat", [ctx.add("unsqueeze", [k], {"axes": (0,)}),
                                     ctx.add("unsqueeze", [v], {"axes": (0,)})], {"axis": 0})
    return [merge_heads(ctx, y), present]


# ---- com.microsoft::MultiHeadAttention ---------------------------------------------------

def _unpack(ctx: Ctx, x: Value, n: int, what: str) -> list[Value]:
    """[B, S, H, n, d] -> n tensors [B, H, S, d] (packed QKV / KV)."""
    parts = ctx.add("split", [x], {"axis": 3, "sizes": (1,) * n})
    parts = [parts] if n == 1 else list(parts)
    out = []
    for p in parts:
        p = ctx.add("squeeze", [p], {"axes": (3,)})
        out.append(ctx.add("transpose", [p], {"perm": (0, 2, 1, 3)}))
    return out


def _bias_part(ctx: Ctx, bias: Value | None, start: Dim, size: Dim) -> Value | None:
    if bias is None:
        return None
    return ctx.add("slice", [bias], {"starts": (start,), "ends": (_add(start, size),),
                                     "axes": (0,)})


@onnx_op("MultiHeadAttention", domain=MS_DOMAIN)
def _multi_head_attention(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    query, key, value, bias = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(3)
    kpm, attn_bias, past_k, past_v = ctx.input(4), ctx.input(5), ctx.input(6), ctx.input(7)
    if query is None:
        raise FrontendError(f"{ctx.where()}: input 0 (query) is required")
    require_float(ctx, query, "query")
    if ctx.input(8) is not None or ctx.input(9) is not None:
        raise unsupported(ctx, "past_sequence_length / cache_indirection (shared KV buffer, beam search)")
    if wants(node, 3):
        raise unsupported(ctx, "the qk output")
    if (past_k is None) != (past_v is None):
        raise FrontendError(f"{ctx.where()}: past_key and past_value go together")
    heads = _heads(ctx, a)
    causal = bool(a.get("unidirectional", 0))
    if query.type.rank == 5:
        if key is not None or value is not None:
            raise FrontendError(f"{ctx.where()}: packed QKV query takes no key / value inputs")
        if bias is not None:
            raise unsupported(ctx, "a bias with packed QKV")
        q, k, v = _unpack(ctx, query, 3, "query")
        kv_bnsh = False
    else:
        if query.type.rank != 3 or key is None:
            raise FrontendError(f"{ctx.where()}: query must be 3-D [B, S, hidden] (or packed 5-D) with a key")
        dq = query.shape[2]
        q = split_heads(ctx, add_bias(ctx, query, _bias_part(ctx, bias, 0, dq)), heads, "query")
        kv_bnsh = key.type.rank == 4
        if key.type.rank == 5:
            if value is not None:
                raise FrontendError(f"{ctx.where()}: packed KV key takes no value input")
            if bias is not None:
                raise unsupported(ctx, "a bias with packed KV")
            k, v = _unpack(ctx, key, 2, "key")
        elif kv_bnsh:
            # key / value already projected and split into heads ([B, H, L, d], a cross-attention
            # cache); onnxruntime adds no bias to them then.
            if value is None or value.type.rank != 4:
                raise FrontendError(f"{ctx.where()}: a 4-D key needs a 4-D value")
            if past_k is not None:
                raise FrontendError(f"{ctx.where()}: a 4-D (BNSH) key cannot be combined with past_key")
            if causal:
                raise unsupported(ctx, "unidirectional=1 with a 4-D (BNSH) key")
            k, v = key, value
        else:
            if value is None or value.type.rank != 3:
                raise FrontendError(f"{ctx.where()}: a 3-D key needs a 3-D value")
            dk = key.shape[2]
            k = split_heads(ctx, add_bias(ctx, key, _bias_part(ctx, bias, dq, dk)), heads, "key")
            v = split_heads(ctx, add_bias(ctx, value, _bias_part(ctx, bias, _add(dq, dk), value.shape[2])),
                            heads, "value")
    past_len: Dim = 0
    if past_k is not None:
        past_len = past_k.shape[2]
        k = ctx.add("concat", [past_k, k], {"axis": 2})
        v = ctx.add("concat", [past_v, v], {"axis": 2})
    y = attend(ctx, q, k, v, a, mask=kpm, attn_bias=attn_bias, causal=causal, past=past_len,
               batch=query.shape[0])
    return [merge_heads(ctx, y), k if wants(node, 1) else None, v if wants(node, 2) else None]


# ---- com.microsoft::RotaryEmbedding ------------------------------------------------------

def rotate(ctx: Ctx, x: Value, cos: Value, sin: Value, rd: int, interleaved: bool) -> Value:
    """RoPE on the first ``rd`` channels of x [..., d] with cos / sin [..., rd / 2] broadcast
    against x's leading dims: halves (x1, x2) or interleaved pairs become
    (x1 cos - x2 sin, x1 sin + x2 cos); the other channels pass through."""
    d = x.shape[-1]
    ax = x.type.rank - 1
    xr = ctx.add("slice", [x], {"starts": (0,), "ends": (rd,), "axes": (ax,)}) if rd < d else x
    if interleaved:
        x1 = ctx.add("slice", [xr], {"starts": (0,), "ends": (rd,), "axes": (ax,), "steps": (2,)})
        x2 = ctx.add("slice", [xr], {"starts": (1,), "ends": (rd,), "axes": (ax,), "steps": (2,)})
    else:
        x1, x2 = ctx.add("split", [xr], {"axis": ax, "sizes": (rd // 2, rd // 2)})
    real = ctx.add("sub", [ctx.add("mul", [x1, cos]), ctx.add("mul", [x2, sin])])
    imag = ctx.add("add", [ctx.add("mul", [x1, sin]), ctx.add("mul", [x2, cos])])
    if interleaved:
        pair = ctx.add("concat", [ctx.add("unsqueeze", [real], {"axes": (-1,)}),
                                  ctx.add("unsqueeze", [imag], {"axes": (-1,)})], {"axis": -1})
        rot = ctx.add("reshape", [pair], {"shape": tuple(xr.shape)})
    else:
        rot = ctx.add("concat", [real, imag], {"axis": ax})
    if rd < d:
        rest = ctx.add("slice", [x], {"starts": (rd,), "ends": (d,), "axes": (ax,)})
        rot = ctx.add("concat", [rot, rest], {"axis": ax})
    return rot


def gather_cache(ctx: Ctx, cache: Value, positions: Value) -> Value:
    """cos / sin cache rows [B or 1, S, rd / 2] at ``positions`` [B or 1, S], as [.., S, 1, rd / 2]
    to broadcast over the heads of a [B, S, H, d] tensor."""
    rows = ctx.add("embedding", [cache, positions])
    return ctx.add("unsqueeze", [rows], {"axes": (2,)})


@onnx_op("RotaryEmbedding", domain=MS_DOMAIN)
def _rotary_embedding(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    x, pos = need(ctx, 0, "input"), need(ctx, 1, "position_ids")
    cos, sin = need(ctx, 2, "cos_cache"), need(ctx, 3, "sin_cache")
    require_float(ctx, x, "input")
    if int(a.get("is_packed_batching", 0)):
        raise unsupported(ctx, "is_packed_batching=1")
    # ``scale`` is accepted and ignored: onnxruntime's CPU kernel does not read it either
    # (its output is the same for any scale).
    half = cos.shape[1] if cos.type.rank == 2 else None
    if not isinstance(half, int) or tuple(sin.shape) != tuple(cos.shape):
        raise FrontendError(f"{ctx.where()}: cos_cache / sin_cache must be 2-D with a static, equal "
                            f"shape, got {cos.type}, {sin.type}")
    nh = int(a.get("num_heads", 0) or 0)
    rd = int(a.get("rotary_embedding_dim", 0) or 0)
    if x.type.rank == 4:
        b, _, s, d = x.shape
        x4 = ctx.add("transpose", [x], {"perm": (0, 2, 1, 3)})            # [B, S, N, d]
    elif x.type.rank == 3:
        b, s, hid = x.shape
        if nh <= 0:
            if rd:
                raise FrontendError(f"{ctx.where()}: rotary_embedding_dim needs num_heads")
            nh = _div(hid, 2 * half)     # full rotation: the caches give the head size
        if not isinstance(nh, int) or not isinstance(hid, int) or hid % nh:
            raise FrontendError(f"{ctx.where()}: hidden size {hid} must be a static multiple of num_heads {nh}")
        d = hid // nh
        x4 = ctx.add("reshape", [x], {"shape": (b, s, nh, d)})
    else:
        raise FrontendError(f"{ctx.where()}: input must be 3-D or 4-D, got {x.type}")
    if not isinstance(d, int):
        raise FrontendError(f"{ctx.where()}: the head size must be static, got {x.type}")
    rd = rd or d
    if rd > d or rd % 2 or half != rd // 2:
        raise FrontendError(f"{ctx.where()}: rotary dim {rd} (head size {d}) does not match the caches' "
                            f"{half} columns")
    if pos.type.rank == 1:
        # a single start position: token i of every batch row is at pos[0] + i
        ar = ctx.add("reshape", [ctx.add("arange", [], {"end": s})], {"shape": (1, -1)})
        positions = ctx.add("add", [ctx.add("reshape", [cast(ctx, pos, dt.i64)], {"shape": (1, 1)}), ar])
    elif pos.type.rank == 2:
        positions = pos
    else:
        raise FrontendError(f"{ctx.where()}: position_ids must be 1-D [1] or 2-D [B, S], got {pos.type}")
    y = rotate(ctx, x4, gather_cache(ctx, cos, positions), gather_cache(ctx, sin, positions), rd,
               bool(a.get("interleaved", 0)))
    if x.type.rank == 3:
        return [ctx.add("reshape", [y], {"shape": tuple(x.shape)})]
    return [ctx.add("transpose", [y], {"perm": (0, 2, 1, 3)})]

