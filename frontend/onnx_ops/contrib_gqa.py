"""Converter for onnxruntime's ``com.microsoft::GroupQueryAttention`` (as onnxruntime-genai's
model builder writes it for Phi-3 / Llama / Qwen / Mistral decoders), lowered onto existing IR
ops: a per-batch gather that builds the KV cache, a bool mask built from ``seqlens_k`` at run
time, and ``sdpa`` (or an explicit matmul / softmax chain for softcap and attention sinks).

Semantics (onnxruntime 1.32 CPU kernel, checked in tests/frontend/test_onnx_contrib_gqa.py).
With S the query length, P the sequence dim of ``past_key`` (0 without past), T the value of
``total_sequence_length`` and, per batch row b, ``tot_b = seqlens_k[b] + 1`` valid tokens after
this step and ``past_b = max(tot_b - S, 0)`` tokens before it:

- ``present_key`` / ``present_value`` are [B, kv_heads, C, d] with C = max(T, P): rows
  [0, past_b) copy ``past``, rows [past_b, past_b + S) are the new (rotated) keys / values,
  every other row is 0 (onnxruntime clears the buffer; a past longer than past_b, as in a
  static "max length" cache, is therefore *not* carried over beyond past_b).
- query s of row b sits at absolute position ``past_b + s``; it attends keys j < tot_b with
  j <= past_b + s (``causal=1``, the default) and, with ``local_window_size`` W > 0,
  j > past_b + s - W. A first prompt with right padding (tot_b < S) thus gets past_b = 0.
- rotary (``do_rotary``) rotates q and the new k at those positions with rows of
  ``cos_cache`` / ``sin_cache`` (rotary dim = 2 * cache columns, halves or interleaved pairs).
- scores are q k^T * scale (default 1/sqrt(d)), then ``softcap`` * tanh(. / softcap) if
  softcap > 0, then + ``attention_bias``; a ``head_sink`` (or 0 with ``smooth_softmax``) is
  an extra softmax logit per head whose probability is dropped.
- q heads h use kv head h // (num_heads / kv_num_heads).
- ``sliding_window_cache=1`` (the builder's Gemma-2 / -3 local layers on CPU): past and present
  are window buffers of C = P rows (the capacity, >= W) whose rows [0, L(t)) hold the L(t) most
  recent positions after t tokens, L(t) = t if t <= C else t - G * ceil((t - C) / G) with
  G = C - W + 1; present rows past L(tot_b) are unspecified (here 0). Attention reads the
  resident past rows and the new rows by absolute position, with the same window rule.

Rows that onnxruntime leaves unspecified may differ from it: the outputs of right-padding query
rows (s >= tot_b - past_b; they differ from onnxruntime's with softcap and a local window)
and the presents of later layers at those padding rows. The builder's past / present head dim is
a free symbol (``kv_cache_dim``); it is pinned to the query's head size.

Preconditions (as onnxruntime validates them): tot_b <= T, past_b <= P, and T = P + S (a
growing cache) or T <= P (a preallocated one); neither applies to a window cache.
``total_sequence_length`` must be known at compile time (a constant, or computed from shapes as
the model builder does) when there is a past, because it sets the present length (not for a
window cache, whose present length is P).

Refused with UnsupportedOpError naming the node: quantised KV caches (non-float past,
k_scale / v_scale, kv_cache_bit_width, k/v_quant_type), q/k norm weights, ``query_seqlens``,
``position_ids``, the ``output_qk`` output / ``qk_output``, an ``attention_bias`` whose last
dim is not provably the present length, or any ``attention_bias`` with a window cache.
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
from .contrib import MS_DOMAIN, need, require_float, unsupported, wants
from .contrib_attention import _heads, merge_heads, rotate, split_heads
from .quant import cast, scalar

# input indices of the op (onnxruntime 1.32 schema)
_Q, _K, _V, _PAST_K, _PAST_V, _SEQLENS, _TOTAL, _COS, _SIN = range(9)
_POS_IDS, _BIAS, _SINK, _K_SCALE, _V_SCALE, _Q_NORM, _K_NORM, _QUERY_SEQLENS = range(9, 17)


def _dmax(a: Dim, b: Dim) -> Dim:
    """max(a, b) as a dim, without a Max node where the order is provable."""
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b)
    diff = sympy.sympify(a) - sympy.sympify(b)
    if diff.is_nonnegative:
        return a
    if diff.is_nonpositive:
        return b
    return canon_dim(sympy.Max(sympy.sympify(a), sympy.sympify(b)))


def _dim_tensor(ctx: Ctx, d: Dim) -> Value:
    """A 0-d i64 tensor holding dim ``d`` (evaluated at run time when symbolic)."""
    if isinstance(d, int):
        return scalar(ctx, d, dt.i64)
    return ctx.add("dim_values", [], {"values": (d,), "dtype": "i64", "scalar": True})


def _check_refused(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]) -> None:
    """Raise UnsupportedOpError for the forms this converter does not lower."""
    named = {i: ctx.input(i) is not None for i in range(_POS_IDS, _QUERY_SEQLENS + 1)}
    if named[_K_SCALE] or named[_V_SCALE] or int(a.get("kv_cache_bit_width", 0) or 0) \
            or str(a.get("k_quant_type", "NONE")).upper() != "NONE" \
            or str(a.get("v_quant_type", "NONE")).upper() != "NONE":
        raise unsupported(ctx, "a quantised KV cache (k_scale / v_scale / kv_cache_bit_width / k_quant_type)")
    if named[_Q_NORM] or named[_K_NORM]:
        raise unsupported(ctx, "q_norm_weight / k_norm_weight")
    if named[_QUERY_SEQLENS]:
        raise unsupported(ctx, "query_seqlens (right-padded query chunks)")
    if named[_POS_IDS]:
        raise unsupported(ctx, "position_ids")
    if int(a.get("qk_output", 0) or 0) or wants(node, 3):
        raise unsupported(ctx, "the output_qk output (qk_output)")
    causal = int(a.get("causal", 1))
    if causal not in (0, 1):
        raise FrontendError(f"{ctx.where()}: causal must be 0 or 1, got {causal}")


def _split_qkv(ctx: Ctx, heads: int, kv_heads: int) -> tuple[Value, Value, Value, int]:
    """q [B, heads, S, d], new k / v [B, kv_heads, S, d] and d, from separate or packed inputs."""
    query, key, value = need(ctx, _Q, "query"), ctx.input(_K), ctx.input(_V)
    require_float(ctx, query, "query")
    if query.type.rank != 3:
        raise FrontendError(f"{ctx.where()}: query must be 3-D [batch, sequence, hidden], got {query.type}")
    hid = query.shape[2]
    if not isinstance(hid, int):
        raise FrontendError(f"{ctx.where()}: the query's hidden size must be static, got {query.type}")
    if key is None:
        if value is not None:
            raise FrontendError(f"{ctx.where()}: key and value go together (both absent = packed QKV)")
        width = heads + 2 * kv_heads
        if hid % width:
            raise FrontendError(f"{ctx.where()}: packed QKV width {hid} is not a multiple of "
                                f"num_heads + 2 * kv_num_heads = {width}")
        d = hid // width
        q, key, value = ctx.add("split", [query], {"axis": 2, "sizes": (heads * d, kv_heads * d, kv_heads * d)})
    else:
        if value is None:
            raise FrontendError(f"{ctx.where()}: key and value go together (both absent = packed QKV)")
        if hid % heads:
            raise FrontendError(f"{ctx.where()}: query hidden size {hid} is not a multiple of {heads} heads")
        d, q = hid // heads, query
        for t, what in ((key, "key"), (value, "value")):
            if t.type.rank != 3 or t.dtype is not query.dtype or not dims_equal(t.shape[2], kv_heads * d) \
                    or not dims_equal(t.shape[1], query.shape[1]):
                raise FrontendError(f"{ctx.where()}: {what} must be {query.dtype.name}[B, S, "
                                    f"{kv_heads * d}] like the query's sequence, got {t.type}")
    return (split_heads(ctx, q, heads, "query"), split_heads(ctx, key, kv_heads, "key"),
            split_heads(ctx, value, kv_heads, "value"), d)


def _past(ctx: Ctx, kv_heads: int, d: int, f: dt.DType) -> tuple[Value | None, Value | None]:
    pk, pv = ctx.input(_PAST_K), ctx.input(_PAST_V)
    if (pk is None) != (pv is None):
        raise FrontendError(f"{ctx.where()}: past_key and past_value go together")
    if pk is None:
        return None, None
    if pk.dtype is not f or pv.dtype is not f:
        raise unsupported(ctx, f"a {pk.dtype.name} KV cache (only the query's float type {f.name})")
    out = []
    for t, what in ((pk, "past_key"), (pv, "past_value")):
        ok = t.type.rank == 4 and all(dims_equal(t.shape[i], want) or not isinstance(t.shape[i], int)
                                      for i, want in ((1, kv_heads), (3, d)))
        if not ok:
            raise FrontendError(f"{ctx.where()}: {what} must be [B, {kv_heads}, P, {d}] (BNSH), got {t.type}")
        if not (dims_equal(t.shape[1], kv_heads) and dims_equal(t.shape[3], d)):
            # the model builder declares the head dim as a free symbol ("kv_cache_dim"); pin it
            # to the static head size (a run-time size mismatch then fails in the reshape)
            t = ctx.add("reshape", [t], {"shape": (t.shape[0], kv_heads, t.shape[2], d)})
        out.append(t)
    pk, pv = out
    if not dims_equal(pk.shape[2], pv.shape[2]):
        raise FrontendError(f"{ctx.where()}: past_key and past_value lengths differ: {pk.type}, {pv.type}")
    return pk, pv


def _present_len(ctx: Ctx, s: Dim, p: Dim, has_past: bool) -> Dim:
    """C = max(T, P) for the compile-time value T of total_sequence_length."""
    vals = ctx.dim_list(_TOTAL)
    if vals is not None and len(vals) != 1:
        raise FrontendError(f"{ctx.where()}: total_sequence_length must hold one value, got {vals}")
    if not has_past:
        # onnxruntime accepts only T = S without a past (T = P + S with P = 0)
        if vals is not None and not dims_equal(vals[0], s) and isinstance(vals[0], int) and isinstance(s, int):
            raise FrontendError(f"{ctx.where()}: total_sequence_length {vals[0]} must equal the "
                                f"sequence length {s} without past_key")
        return s
    if vals is None:
        raise unsupported(ctx, "a total_sequence_length known only at run time together with past_key "
                               "(it sets the present length max(total, past); give a constant or compute "
                               "it from shapes)")
    return _dmax(vals[0], p)


def _lengths(ctx: Ctx, s: Dim) -> tuple[Value, Value]:
    """tot_b = seqlens_k + 1 and past_b = max(tot_b - S, 0), both i64 [B]."""
    sk = need(ctx, _SEQLENS, "seqlens_k")
    if sk.dtype.is_float or sk.type.rank != 1:
        raise FrontendError(f"{ctx.where()}: seqlens_k must be a 1-D int32 tensor [batch], got {sk.type}")
    tot = ctx.add("add", [cast(ctx, sk, dt.i64), scalar(ctx, 1, dt.i64)])
    past_b = ctx.add("maximum", [ctx.add("sub", [tot, _dim_tensor(ctx, s)]), scalar(ctx, 0, dt.i64)])
    return tot, past_b


def _positions(ctx: Ctx, past_b: Value, s: Dim) -> Value:
    """Absolute position past_b + s of every query row, i64 [B, S]."""
    ar = ctx.add("reshape", [ctx.add("arange", [], {"end": s})], {"shape": (1, -1)})
    return ctx.add("add", [ctx.add("reshape", [past_b], {"shape": (-1, 1)}), ar])


def _rotary(ctx: Ctx, x: Value, cos: Value, sin: Value, interleaved: bool) -> Value:
    """RoPE of x [B, H, S, d] with cos / sin rows [B, 1, S, rd/2] (f32 for half-precision x:
    those rotate in f32 and round once, as onnxruntime does)."""
    f = x.dtype
    low = f is not cos.dtype
    y = rotate(ctx, cast(ctx, x, cos.dtype), cos, sin, 2 * int(cos.shape[-1]), interleaved)
    return cast(ctx, y, f) if low else y


def _caches(ctx: Ctx, d: int, f: dt.DType) -> tuple[Value, Value]:
    cos, sin = ctx.input(_COS), ctx.input(_SIN)
    if cos is None or sin is None:
        raise FrontendError(f"{ctx.where()}: do_rotary=1 needs cos_cache and sin_cache")
    half = cos.shape[1] if cos.type.rank == 2 else None
    if not isinstance(half, int) or sin.type.rank != 2 or not dims_equal(sin.shape[1], half) \
            or 2 * half > d or cos.dtype is not f or sin.dtype is not f:
        raise FrontendError(f"{ctx.where()}: cos_cache / sin_cache must be {f.name}[max_len, <= {d // 2}] "
                            f"with equal static columns, got {cos.type}, {sin.type}")
    return cos, sin


def _cache_index(ctx: Ctx, past_b: Value, p: Dim, new: Value, c: Dim) -> Value:
    """Row index [B, Hk, C, d] into [past (P rows) | new (S rows) | one zero row] that builds
    present: rows t < past_b from past, t in [past_b, past_b + S) from new row t - past_b, the
    rest the zero row. Shared by the key and the value cache."""
    s = new.shape[2]
    t = ctx.add("reshape", [ctx.add("arange", [], {"end": c})], {"shape": (1, -1)})   # [1, C]
    pb = ctx.add("reshape", [past_b], {"shape": (-1, 1)})                           # [B, 1]
    p_t, s_t = _dim_tensor(ctx, p), _dim_tensor(ctx, s)
    rel = ctx.add("sub", [t, pb])
    from_new = ctx.add("logical_and", [ctx.add("ge", [rel, scalar(ctx, 0, dt.i64)]), ctx.add("lt", [rel, s_t])])
    # past rows only below past_b *and* inside the past buffer (a bad seqlens_k cannot index out)
    from_past = ctx.add("logical_and", [ctx.add("lt", [t, pb]), ctx.add("lt", [t, p_t])])
    idx = ctx.add("where", [from_new, ctx.add("add", [rel, p_t]), ctx.add("add", [p_t, s_t])])
    return _expand_rows(ctx, ctx.add("where", [from_past, t, idx]), new)


def _expand_rows(ctx: Ctx, idx: Value, new: Value) -> Value:
    """Per-row index [B, C] -> [B, Hk, C, d] for gather_elements along the sequence axis."""
    b, hk, _, d = new.shape
    c = idx.shape[1]
    return ctx.add("expand", [ctx.add("reshape", [idx], {"shape": (b, 1, c, 1)})], {"shape": (b, hk, c, d)})


def _resident(ctx: Ctx, t: Value, cap: Value, window: int) -> Value:
    """L(T) of a windowed cache (onnxruntime's contract): T if T <= C, else T - G * ceil((T - C) / G)
    with G = C - W + 1, so eviction frees G rows at once. i64 [B]. (G is held >= 1 so that an
    invalid C < W, which onnxruntime rejects, cannot divide by zero here.)"""
    g = ctx.add("maximum", [ctx.add("sub", [cap, scalar(ctx, window - 1, dt.i64)]), scalar(ctx, 1, dt.i64)])
    over = ctx.add("maximum", [ctx.add("sub", [t, cap]), scalar(ctx, 0, dt.i64)])
    steps = ctx.add("div", [ctx.add("add", [over, ctx.add("sub", [g, scalar(ctx, 1, dt.i64)])]), g])
    return ctx.add("sub", [t, ctx.add("mul", [g, steps])])


def _window_cache(ctx: Ctx, past: tuple[Value, Value], new: tuple[Value, Value], tot: Value,
                  past_b: Value, window: int) -> tuple[Value, Value, Value, Value, Value, Value]:
    """``sliding_window_cache=1``: past / present are C-row windows (C = past_key's length) whose
    rows [0, L(T)) hold the L(T) most recent absolute positions, T - L(T) + i in row i.

    Attention reads [past rows | new rows] (C + S keys) directly: past row r holds position
    past_b - L(past_b) + r (valid for r < L(past_b)), new row s position past_b + s (valid for
    s < tot - past_b). Returns those keys / values, their positions and validity [B, 1, C + S],
    and the presents gathered from the same buffer (rows past L(T) zero; onnxruntime leaves them
    unspecified)."""
    (pk, pv), (k, v) = past, new
    cap, s = pk.shape[2], k.shape[2]
    cap_t, s_t = _dim_tensor(ctx, cap), _dim_tensor(ctx, s)

    def col(x: Value) -> Value:                                                    # [B] -> [B, 1]
        return ctx.add("reshape", [x], {"shape": (-1, 1)})

    lp, lt = _resident(ctx, past_b, cap_t, window), _resident(ctx, tot, cap_t, window)
    start_p = col(ctx.add("sub", [past_b, lp]))                                    # position of past row 0
    r = ctx.add("reshape", [ctx.add("arange", [], {"end": canon_dim(sympy.sympify(cap) + s)})], {"shape": (1, -1)})
    in_past = ctx.add("lt", [r, cap_t])
    rel_new = ctx.add("sub", [r, cap_t])
    kpos = ctx.add("where", [in_past, ctx.add("add", [start_p, r]), ctx.add("add", [col(past_b), rel_new])])
    valid = ctx.add("where", [in_past, ctx.add("lt", [r, col(lp)]),
                              ctx.add("lt", [rel_new, col(ctx.add("sub", [tot, past_b]))])])
    # present row i <- position a = T - L(T) + i: from past row a - start_p below past_b, else
    # from new row a - past_b (buffer row C + a - past_b); rows i >= L(T) take the zero row
    i = ctx.add("reshape", [ctx.add("arange", [], {"end": cap})], {"shape": (1, -1)})
    a = ctx.add("add", [col(ctx.add("sub", [tot, lt])), i])
    src = ctx.add("where", [ctx.add("lt", [a, col(past_b)]), ctx.add("sub", [a, start_p]),
                            ctx.add("add", [ctx.add("sub", [a, col(past_b)]), cap_t])])
    src = ctx.add("where", [ctx.add("lt", [i, col(lt)]), src, ctx.add("add", [cap_t, s_t])])
    idx = _expand_rows(ctx, src, k)
    pres = [_gather_cache(ctx, x, y, idx) for x, y in ((pk, k), (pv, v))]
    # rows that are not resident hold whatever onnxruntime left there (it hands back present rows
    # past L(T) uninitialised, and genai feeds them in again): zero them, since a NaN there would
    # survive the mask (0 * NaN in p @ v)
    rows4 = ctx.add("reshape", [valid], {"shape": (k.shape[0], 1, canon_dim(sympy.sympify(cap) + s), 1)})
    keys, vals = (ctx.add("where", [rows4, ctx.add("concat", [x, y], {"axis": 2}), scalar(ctx, 0.0, k.dtype)])
                  for x, y in ((pk, k), (pv, v)))
    kpos, valid = (ctx.add("unsqueeze", [x], {"axes": (1,)}) for x in (kpos, valid))   # [B, 1, C + S]
    return keys, vals, kpos, valid, pres[0], pres[1]


def _gather_cache(ctx: Ctx, past: Value | None, new: Value, idx: Value) -> Value:
    """present [B, Hk, C, d] from ``past`` / ``new`` [B, Hk, S, d] and ``_cache_index``'s rows."""
    buf = ctx.add("concat", [past, new], {"axis": 2}) if past is not None else new
    buf = ctx.add("pad", [buf], {"pads": (0, 0, 0, 0, 0, 0, 1, 0)})        # row P + S is zero
    return ctx.add("gather_elements", [buf, idx], {"axis": 2})


def _keep_mask(ctx: Ctx, kpos: Value, valid: Value, pos: Value, causal: bool, window: int) -> Value:
    """bool [B, 1, S, R]: key r (absolute position ``kpos`` [B|1, 1, R], present if ``valid``) is
    seen by the query at ``pos`` [B, S]."""
    pos3 = ctx.add("unsqueeze", [pos], {"axes": (2,)})                                  # [B, S, 1]
    keep = valid
    if causal:
        keep = ctx.add("logical_and", [keep, ctx.add("le", [kpos, pos3])])
    if window > 0:
        lo = ctx.add("sub", [pos3, scalar(ctx, window, dt.i64)])
        keep = ctx.add("logical_and", [keep, ctx.add("gt", [kpos, lo])])
    return ctx.add("unsqueeze", [keep], {"axes": (1,)})


def _explicit_attention(ctx: Ctx, q: Value, k: Value, v: Value, keep: Value, bias: Value | None,
                        scale: float, softcap: float, sink: Value | None) -> Value:
    """softmax(cap(q k^T * scale) + bias [+ sink logit]) v in f32, for what sdpa cannot say
    (softcap, attention sinks). q [B, H, S, d]; k / v [B, Hk, C, d] repeated to H heads."""
    f = q.dtype
    q, k, v = (cast(ctx, t, dt.f32) for t in (q, k, v))
    b, h, s, d = q.shape
    hk, c = k.shape[1], k.shape[2]
    if not dims_equal(h, hk):
        rep = int(h) // int(hk)
        k, v = (ctx.add("reshape", [ctx.add("expand", [ctx.add("unsqueeze", [t], {"axes": (2,)})],
                                            {"shape": (b, hk, rep, c, d)})], {"shape": (b, h, c, d)})
                for t in (k, v))
    x = ctx.add("mul", [ctx.add("matmul", [q, ctx.add("transpose", [k], {"perm": (0, 1, 3, 2)})]),
                        scalar(ctx, scale, dt.f32)])
    if softcap > 0:
        x = ctx.add("mul", [ctx.add("tanh", [ctx.add("div", [x, scalar(ctx, softcap, dt.f32)])]),
                            scalar(ctx, softcap, dt.f32)])
    if bias is not None:
        x = ctx.add("add", [x, cast(ctx, bias, dt.f32)])
    x = ctx.add("where", [keep, x, scalar(ctx, float("-inf"), dt.f32)])
    if sink is not None:
        # the sink is one more logit per head; its probability mass is dropped
        col = ctx.add("expand", [ctx.add("reshape", [cast(ctx, sink, dt.f32)], {"shape": (1, -1, 1, 1)})],
                      {"shape": (b, h, s, 1)})
        x = ctx.add("concat", [x, col], {"axis": 3})
    p = ctx.add("softmax", [x], {"axis": -1})
    if sink is not None:
        p = ctx.add("slice", [p], {"starts": (0,), "ends": (c,), "axes": (3,)})
    return cast(ctx, ctx.add("matmul", [p, v]), f)


@onnx_op("GroupQueryAttention", domain=MS_DOMAIN)
def _group_query_attention(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    """-> [output [B, S, heads * d], present_key, present_value] (see the module docstring)."""
    _check_refused(ctx, node, a)
    heads, kv_heads = _heads(ctx, a), _heads(ctx, a, "kv_num_heads")
    if heads % kv_heads:
        raise FrontendError(f"{ctx.where()}: num_heads {heads} is not a multiple of kv_num_heads {kv_heads}")
    q, k, v, d = _split_qkv(ctx, heads, kv_heads)
    f = q.dtype
    b, _, s, _ = q.shape
    past_k, past_v = _past(ctx, kv_heads, d, f)
    causal = bool(int(a.get("causal", 1)))
    window = int(a.get("local_window_size", -1))
    if window > 0 and not causal:
        raise FrontendError(f"{ctx.where()}: local_window_size needs causal=1")
    windowed = bool(int(a.get("sliding_window_cache", 0) or 0))
    if windowed:
        if window <= 0 or past_k is None:
            raise FrontendError(f"{ctx.where()}: sliding_window_cache=1 needs local_window_size > 0 and "
                                f"past_key / past_value (their length is the window capacity)")
        if isinstance(past_k.shape[2], int) and past_k.shape[2] < window:
            raise FrontendError(f"{ctx.where()}: the window cache capacity {past_k.shape[2]} is below "
                                f"local_window_size {window}")
        if ctx.input(_BIAS) is not None:
            raise unsupported(ctx, "attention_bias together with sliding_window_cache=1")
    p: Dim = past_k.shape[2] if past_k is not None else 0
    # a window cache keeps its capacity; otherwise present is max(total, past) long
    c = p if windowed else _present_len(ctx, s, p, past_k is not None)
    tot, past_b = _lengths(ctx, s)
    pos = _positions(ctx, past_b, s)
    if int(a.get("do_rotary", 0) or 0):
        cos, sin = _caches(ctx, d, f)
        wide = dt.f32 if f in (dt.f16, dt.bf16) else f
        rows = [ctx.add("unsqueeze", [cast(ctx, ctx.add("embedding", [t, pos]), wide)], {"axes": (1,)})
                for t in (cos, sin)]                                                      # [B, 1, S, rd/2]
        inter = bool(a.get("rotary_interleaved", 0))
        q, k = _rotary(ctx, q, *rows, inter), _rotary(ctx, k, *rows, inter)
    if windowed:
        assert past_k is not None and past_v is not None
        keys, vals, kpos, valid, pres_k, pres_v = _window_cache(ctx, (past_k, past_v), (k, v), tot, past_b, window)
    else:
        if past_k is None and dims_equal(c, s):
            # a first prompt: past_b is 0 for every valid row, so the cache is the new k / v as is
            pres_k, pres_v = k, v
        else:
            idx = _cache_index(ctx, past_b, p, k, c)
            pres_k, pres_v = _gather_cache(ctx, past_k, k, idx), _gather_cache(ctx, past_v, v, idx)
        # key j of the present sits at absolute position j; rows j >= tot_b are not there yet
        keys, vals = pres_k, pres_v
        kpos = ctx.add("reshape", [ctx.add("arange", [], {"end": c})], {"shape": (1, 1, -1)})   # [1, 1, C]
        valid = ctx.add("lt", [kpos, ctx.add("reshape", [tot], {"shape": (-1, 1, 1)})])
    keep = _keep_mask(ctx, kpos, valid, pos, causal, window)
    scale = float(a.get("scale", 0.0) or 0.0) or 1.0 / float(d) ** 0.5
    softcap = float(a.get("softcap", 0.0) or 0.0)
    bias, sink = ctx.input(_BIAS), ctx.input(_SINK)
    if bias is not None:
        if bias.dtype is not f or bias.type.rank != 4 or not dims_equal(bias.shape[3], c):
            raise unsupported(ctx, f"attention_bias {bias.type} (only {f.name}[B|1, H|1, S, {c}] with the "
                                   f"present length provably equal to total_sequence_length)")
    if sink is None and int(a.get("smooth_softmax", 0) or 0):
        sink = scalar(ctx, 0.0, f)
    if sink is not None and sink.type.rank not in (0, 1):
        raise FrontendError(f"{ctx.where()}: head_sink must be 1-D [num_heads], got {sink.type}")
    if softcap > 0 or sink is not None:
        y = _explicit_attention(ctx, q, keys, vals, keep, bias, scale, softcap, sink)
    else:
        mask = keep
        if bias is not None:
            mask = ctx.add("add", [ctx.add("where", [keep, scalar(ctx, 0.0, f), scalar(ctx, float("-inf"), f)]),
                                   bias])
        y = ctx.add("sdpa", [q, keys, vals, mask],
                    {"causal": False, "scale": scale, "gqa": heads != kv_heads})
    return [merge_heads(ctx, y), pres_k if wants(node, 1) else None, pres_v if wants(node, 2) else None]
