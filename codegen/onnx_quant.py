"""IR compression ops -> ONNX: quantize, dequantize, qlinear, bcq_linear, lowrank_*, moe.

Choices (DESIGN.md §5, "ONNX out"):
- quantize / dequantize -> QuantizeLinear / DequantizeLinear (per-tensor, per-axis, blocked
  with ``block_size`` at opset 21+) where the standard op computes the IR formula in float32;
  otherwise (i32 codes, f64, blocked below opset 21, a narrowed ``bits`` range on 4-bit codes)
  the formula itself in ONNX ops. Scales are widened to float32 first because the IR divides
  and multiplies in float32 whatever the scale's own type.
- qlinear, weight-only 4-bit with constant weights and integer or no zero points, group a
  multiple of 16 (or per channel) -> ``com.microsoft.MatMulNBits`` with accuracy_level 0
  (float activations; B packed as uint8 [N, k_blocks, block/2], low nibble first; signed i4
  codes are stored +8 with no zero-point input, so the op's default zero point 8 recovers
  them; per-channel or wider groups repeat their scale over power-of-two blocks, which is
  exact; K not a multiple of the block is padded with the last block's zero point, so the
  padding dequantises to 0). Integer x with 8-bit per-channel weights -> MatMulInteger then
  the per-column scale. Float x with act="per_token" (abits <= 8) over integer weights whose
  (w - zero) fits int8 -> the symmetric per-row quantisation in float ops, int8 codes,
  MatMulInteger (one batched MatMulInteger over the K groups for group-wise weights, int32
  exact per group), float scales. Everything else -> DequantizeLinear of the (export-time
  transposed) codes + MatMul (f8e4m3 codes natively; f4e2m1 codes by the exact table-lookup
  decode, since onnxruntime 1.32 has no FLOAT4E2M1 kernels for DequantizeLinear/Cast);
  dynamic activation quantisation there is the explicit symmetric formula, since
  DynamicQuantizeLinear is asymmetric uint8 and would not give the IR's codes.
- bcq_linear with constant operands: W = sum_i alpha_i B_i is materialised at export (in
  float64, stored as W^T in the compute dtype), one MatMul; non-constant operands build W in
  the graph from the signs.
- lowrank_linear / lowrank_ffn: MatMuls of the (transposed at export) factors, in the IR's
  association (x @ v^T first).
- moe: the dense formulation: router MatMul, Softmax/Sigmoid, TopK, the normalised weights
  scattered into a [T, E] matrix with ScatterElements, every expert as one batched MatMul over
  all experts, weighted sum over E. Unchosen experts get weight 0, so the result equals the
  IR's dropless dispatch (up to summation order) unless an expert produces inf/NaN.

Note on onnxruntime: its graph optimizer (level "extended" and above) rewrites
DequantizeLinear of constant weights followed by MatMul into MatMulNBits with
``session.qdq_matmulnbits_accuracy_level`` = 4 by default, which quantises the activations to
int8 at run time (fast, but no longer the IR's float result). Set that session config entry
to "0" (or "1") to run the exported model with float activations; the tests do. Its QDQ
transformers also move QuantizeLinear/DequantizeLinear pairs of quantised activations across
Transpose/Reshape and fuse them into quantised operators; ``session.disable_quant_qdq`` = "1"
keeps the exported computation (README).
"""
from __future__ import annotations

import sympy
import torch
from onnx import helper

from ..ir import dtypes as dt
from ..ir.graph import Node, Value
from ..ir.ops.quant import bcq_weight
from .onnx_build import ONNX_DTYPE, Emitter, to_numpy
from .onnx_nn import reduce
from .onnx_ops import activation, compute_dtype, inp, render


def _opt(node: Node, i: int) -> Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def expand_param(cx: Emitter, p: str, pv_shape: tuple, x_shape: tuple, axis: int, block: int) -> str:
    """A per-tensor / per-axis / blocked parameter made broadcastable to a tensor of x_shape."""
    rank = len(x_shape)
    if len(pv_shape) == 0:
        return p
    ax = axis % rank
    if block == 0:
        view = [1] * rank
        view[ax] = -1
        return cx.op("Reshape", [p, cx.ints(view)])
    rep = list(pv_shape[:ax + 1]) + [block] + list(pv_shape[ax + 1:])
    u = cx.op("Expand", [cx.op("Unsqueeze", [p, cx.ints([ax + 1])]), cx.dims(rep)])
    merged = list(pv_shape)
    merged[ax] = sympy.sympify(pv_shape[ax]) * block
    r = cx.op("Reshape", [u, cx.dims(merged)])
    return cx.op("Slice", [r, cx.ints([0]), cx.dims([x_shape[ax]]), cx.ints([ax])])


def dq_formula(cx: Emitter, q: str, qd: dt.DType, s: str, sv: Value, z: str, zd: dt.DType | None,
               shape: tuple, axis: int, block: int, cd: dt.DType) -> str:
    """(to_real(q) - zero) * scale in ``cd``, integers subtracted exactly in int64."""
    if not qd.is_float and (zd is None or not zd.is_float):
        r = cx.cast(q, qd, dt.i64)
        if z:
            r = cx.op("Sub", [r, expand_param(cx, cx.cast(z, zd, dt.i64), sv.shape, shape, axis, block)])
        r = cx.cast(r, dt.i64, cd)
    else:
        r = cx.cast(q, qd, cd)
        if z:
            r = cx.op("Sub", [r, expand_param(cx, cx.cast(z, zd, cd), sv.shape, shape, axis, block)])
    return cx.op("Mul", [r, expand_param(cx, cx.cast(s, sv.dtype, cd), sv.shape, shape, axis, block)])


def _dq_native(cx: Emitter, qd: dt.DType, zd: dt.DType | None, block: int, cd: dt.DType) -> bool:
    """Whether DequantizeLinear computes the IR formula for these operand types."""
    if cd is not dt.f32 or (zd is not None and zd is not qd):
        return False
    if block and cx.opset < 21:
        return False
    if qd.name in ("i8", "u8"):
        return True
    if qd.name in ("i16", "i4", "u4"):
        return cx.opset >= 21
    # f4e2m1 codes are uint8 inside the graph, so they always take the formula.
    return qd.name in ("f8e4m3", "f8e5m2") and zd is None and cx.opset >= 19


def dequant(cx: Emitter, q: str, qd: dt.DType, s: str, sv: Value, z: str, zd: dt.DType | None,
            shape: tuple, axis: int, block: int, cd: dt.DType, weights: bool = False) -> str:
    """Dequantised values in ``cd``: DequantizeLinear where it fits, else the formula.
    ``weights``: float8 weight codes take the formula (Cast, Mul: the same float32 values),
    because onnxruntime's default session runs a float8 DequantizeLinear feeding MatMul some
    fifteen times slower than that (4096 x 11008, M = 1: 279 against 19 ms)."""
    if _dq_native(cx, qd, zd, block, cd) and not (weights and qd.is_float):
        attrs = {"axis": axis} if sv.type.rank else {}
        if block:
            attrs["block_size"] = block
        return cx.op("DequantizeLinear", [q, cx.cast(s, sv.dtype, dt.f32)] + ([z] if z else []), **attrs)
    return dq_formula(cx, q, qd, s, sv, z, zd, shape, axis, block, cd)


@render("dequantize")
def _dequantize(cx: Emitter, node: Node) -> list[str]:
    qv, sv, zv = node.inputs[0], node.inputs[1], _opt(node, 2)
    a = node.attrs
    out = dt.get(a["dtype"])
    cd = dt.f64 if out is dt.f64 or sv.dtype is dt.f64 else dt.f32
    y = dequant(cx, inp(cx, node, 0), qv.dtype, inp(cx, node, 1), sv, cx.value(zv),
                zv.dtype if zv is not None else None, qv.shape, a["axis"], a["block"], cd)
    return [cx.cast(y, cd, out)]


@render("quantize")
def _quantize(cx: Emitter, node: Node) -> list[str]:
    xv, sv, zv = node.inputs[0], node.inputs[1], _opt(node, 2)
    a = node.attrs
    o = dt.get(a["dtype"])
    axis, block, bits = a["axis"], a["block"], a["bits"]
    cd = dt.f64 if xv.dtype is dt.f64 or sv.dtype is dt.f64 else dt.f32
    x, s, z = inp(cx, node, 0), inp(cx, node, 1), cx.value(zv)
    narrow = 0 < bits < o.bits
    if o is dt.f4e2m1:  # codes by the encode formula: x / scale + zero, nearest grid value
        v = cx.op("Div", [cx.cast(x, xv.dtype, dt.f32), expand_param(cx, cx.cast(s, sv.dtype, dt.f32),
                                                                      sv.shape, xv.shape, axis, block)])
        if z:
            v = cx.op("Add", [v, expand_param(cx, cx.cast(z, o, dt.f32), sv.shape, xv.shape, axis, block)])
        return [cx.f4_encode(v)]
    native = cd is dt.f32 and not (block and cx.opset < 21) and (
        o.name in ("i8", "u8") or (o.name in ("i16", "i4", "u4") and cx.opset >= 21)
        or o.is_float) and not (narrow and o.is_subbyte)
    if o.is_float:
        cx.need_opset(19, f"QuantizeLinear to {o.name}")
    if native:
        attrs = {"axis": axis} if sv.type.rank else {}
        if block:
            attrs["block_size"] = block
        # NaN x: QuantizeLinear gives the range minimum where the reference gives the zero
        # point; a guard would cost two ops per quantize and keep onnxruntime from fusing QDQ
        ins = [cx.cast(x, xv.dtype, dt.f32), cx.cast(s, sv.dtype, dt.f32)]
        if z:
            ins.append(z)
        elif cx.opset >= 21:
            attrs["output_dtype"] = ONNX_DTYPE[o.name]
        elif sv.type.is_static:
            ins.append(cx.initializer(torch.zeros([int(d) for d in sv.shape], dtype=o.container), o, "zp"))
        else:
            native = False
        if native:
            y = cx.op("QuantizeLinear", ins, **attrs)
            if narrow:
                lo, hi = _range(o, bits)
                # onnxruntime has no int16 Clip: clamp those codes in int32
                c = dt.i32 if o is dt.i16 else o
                y = cx.cast(cx.op("Clip", [cx.cast(y, o, c), cx.scalar(lo, c), cx.scalar(hi, c)]), c, o)
            return [y]
    if o.is_float:
        raise cx.fail(f"no QuantizeLinear form for {o.name} with these operands")
    # The formula: round(x / scale) + zero, clamped to the (bits-narrowed) range.
    v = cx.op("Div", [cx.cast(x, xv.dtype, cd), expand_param(cx, cx.cast(s, sv.dtype, cd), sv.shape,
                                                              xv.shape, axis, block)])
    v = cx.op("Where", [cx.op("IsNaN", [v]), cx.scalar(0.0, cd), v])
    q = cx.cast(cx.op("Round", [v]), cd, dt.f64)
    if z:
        q = cx.op("Add", [q, expand_param(cx, cx.cast(z, zv.dtype, dt.f64), sv.shape, xv.shape, axis, block)])
    lo, hi = _range(o, bits)
    q = cx.op("Clip", [q, cx.scalar(lo, dt.f64), cx.scalar(hi, dt.f64)])
    if o.is_subbyte:
        q = cx.cast(q, dt.f64, dt.i8)
        return [cx.op("Cast", [q], to=ONNX_DTYPE[o.name])]
    return [cx.cast(q, dt.f64, o)]


def _range(o: dt.DType, bits: int) -> tuple[int, int]:
    if bits <= 0:
        return o.int_range()
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if o.is_signed else (0, (1 << bits) - 1)


# ---- qlinear ----------------------------------------------------------------------------------

def _nbits_block(group: int, k: int) -> int | None:
    """A power-of-two MatMulNBits block (>= 16) that tiles every quantisation group, or None."""
    if group == 0 or group >= k:
        return 32
    b = group & -group   # largest power of two dividing group
    return min(b, 128) if b >= 16 else None


def _matmul_nbits(cx: Emitter, node: Node) -> str | None:
    xv, wv, sv, zv = node.inputs[0], node.inputs[1], node.inputs[2], _opt(node, 3)
    a = node.attrs
    if not (xv.dtype.name in ("f32", "f16") and a["act"] == "none" and wv.dtype.name in ("i4", "u4")
            and wv.is_const and sv.is_const and isinstance(wv.shape[1], int)
            and (zv is None or (zv.is_const and zv.dtype is wv.dtype))):
        return None
    n, k = wv.shape
    group = a["group"]
    block = _nbits_block(group, k)
    if block is None:
        return None
    nb = -(-k // block)
    # Column b of the per-block parameters comes from group (b * block) // group.
    src = torch.arange(nb) * block // group if 0 < group < k else torch.zeros(nb, dtype=torch.long)

    def per_block(p: torch.Tensor) -> torch.Tensor:
        return (p if p.dim() == 2 else p.unsqueeze(1))[:, src]

    off = 8 if wv.dtype is dt.i4 else 0
    # Zero points per block as MatMulNBits reads them: the IR's, or 0 for u4 codes without one
    # (written explicitly), or the op's default 8 for i4 codes stored +8 (no zp input).
    zp = per_block(zv.const).to(torch.int16) + off if zv is not None \
        else torch.full((n, nb), 0 if wv.dtype is dt.u4 else 8, dtype=torch.int16)
    codes = wv.const.to(torch.int16) + off
    if nb * block > k:
        # K is padded to whole blocks with the last block's zero point, so that the padding
        # dequantises to exactly 0 even in a runtime that reads the padded block whole
        # (onnxruntime stops at K anyway).
        codes = torch.cat([codes, zp[:, -1:].expand(n, nb * block - k)], dim=1)
    codes = codes.to(torch.uint8).reshape(n, nb, block)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    # float32 even for f16 x: the IR forms Wd in float32 and rounds the product once.
    # accuracy_level 0 by default: float32 activations (levels 1..4, to_onnx's nbits_accuracy,
    # let onnxruntime quantise x to int8).
    ins = [cx.cast(cx.value(xv), xv.dtype, dt.f32), cx.initializer(packed.contiguous(), dt.u8, "nbits_B"),
           cx.initializer(per_block(sv.const).float().reshape(-1), dt.f32, "nbits_scales")]
    if zv is not None or wv.dtype is dt.u4:
        if nb % 2:
            zp = torch.nn.functional.pad(zp, (0, 1))
        zp = zp.to(torch.uint8)
        ins.append(cx.initializer((zp[:, 0::2] | (zp[:, 1::2] << 4)).reshape(-1).contiguous(), dt.u8, "nbits_zp"))
    y = cx.op("MatMulNBits", ins, domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
              accuracy_level=cx.nbits_accuracy)
    if _opt(node, 4) is not None:
        y = cx.op("Add", [y, cx.cast(inp(cx, node, 4), node.inputs[4].dtype, dt.f32)])
    return cx.cast(y, dt.f32, xv.dtype)


def _matmul_integer(cx: Emitter, node: Node) -> str | None:
    xv, wv, sv, zv = node.inputs[0], node.inputs[1], node.inputs[2], _opt(node, 3)
    a = node.attrs
    if not (xv.dtype.name in ("i8", "u8") and wv.dtype.name in ("i8", "u8") and a["group"] == 0
            and (xv.dtype is dt.u8 or wv.dtype is dt.i8) and wv.is_const
            and (zv is None or zv.dtype is wv.dtype)):
        return None
    wt = cx.derived(wv, "T", lambda t: t.t().contiguous(), wv.dtype)
    ins = [cx.value(xv), wt, "", cx.value(zv)] if zv is not None else [cx.value(xv), wt]
    acc = cx.op("MatMulInteger", ins)
    cd = dt.f64 if sv.dtype is dt.f64 else dt.f32
    y = cx.op("Mul", [cx.cast(acc, dt.i32, cd), cx.cast(cx.value(sv), sv.dtype, cd)])
    if _opt(node, 4) is not None:
        y = cx.op("Add", [y, cx.cast(inp(cx, node, 4), node.inputs[4].dtype, cd)])
    return cx.cast(y, cd, a["out_dtype"])


def _per_token_integer(cx: Emitter, node: Node) -> str | None:
    """act="per_token" (abits <= 8) over constant integer weights as the int8 kernels run it:
    x's codes round(x / sx) cast to int8, MatMulInteger with the export-time int8 weights
    (w - zero), int32 accumulation per group (exact), then y = sx * sum_g s_g * acc_g + bias
    in float32. Group-wise weights use one batched MatMulInteger over the groups (x padded
    with zero codes to whole groups, the weights with zeros). None where (w - zero) leaves the
    int8 range (u8 codes with a zero point), for float64 x or non-constant weights: the float
    formula in :func:`_qlinear` then computes the same products in floats."""
    xv, wv, sv, zv = node.inputs[0], node.inputs[1], node.inputs[2], _opt(node, 3)
    a = node.attrs
    if not (xv.dtype.name in ("f32", "f16", "bf16") and a["act"] == "per_token" and a["abits"] <= 8
            and wv.dtype.name in ("i4", "u4", "i8", "u8") and wv.is_const and sv.is_const
            and sv.dtype is not dt.f64 and isinstance(wv.shape[1], int)
            and (zv is None or (zv.is_const and zv.dtype is wv.dtype))):
        return None
    n, k = wv.shape
    group = a["group"]
    g = k if group == 0 or group >= k else group
    ng = -(-k // g)
    w = wv.const.to(torch.int16)
    if zv is not None:
        z = zv.const.to(torch.int16)
        w = w - (z.unsqueeze(1) if z.dim() == 1 else z.repeat_interleave(g, dim=1)[:, :k])
    if int(w.min()) < -128 or int(w.max()) > 127:
        return None
    x = cx.cast(cx.value(xv), xv.dtype, dt.f32)
    qx, sx = dynamic_quant(cx, x, "per_token", a["abits"], dt.f32)
    s = sv.const.to(torch.float32)
    if ng == 1:
        wt = cx.initializer(w.t().contiguous().to(torch.int8), dt.i8, "ptok_WT")
        acc = cx.op("MatMulInteger", [cx.cast(qx, dt.f32, dt.i8), wt])          # [..., N]
        y = cx.op("Mul", [cx.cast(acc, dt.i32, dt.f32), cx.initializer(s.reshape(-1), dt.f32, "ptok_s")])
    else:
        kp = ng * g
        wg = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, ng, g).permute(1, 2, 0)   # [G, g, N]
        q2 = cx.op("Reshape", [qx, cx.ints([-1, k])])
        q2 = cx.op("Pad", [q2, cx.ints([0, 0, 0, kp - k])]) if kp > k else q2
        q3 = cx.op("Transpose", [cx.op("Reshape", [q2, cx.ints([-1, ng, g])])], perm=[1, 0, 2])  # [G, M, g]
        acc = cx.op("MatMulInteger", [cx.cast(q3, dt.f32, dt.i8),
                                      cx.initializer(wg.contiguous().to(torch.int8), dt.i8, "ptok_Wg")])
        sg = cx.initializer(s.t().contiguous().reshape(ng, 1, n), dt.f32, "ptok_sg")
        y2 = reduce(cx, "ReduceSum", cx.op("Mul", [cx.cast(acc, dt.i32, dt.f32), sg]), [0], False)  # [M, N]
        lead = cx.op("Shape", [x], start=0, end=-1)
        y = cx.op("Reshape", [y2, cx.op("Concat", [lead, cx.ints([n])], axis=0)])
    y = cx.op("Mul", [y, sx])
    if _opt(node, 4) is not None:
        y = cx.op("Add", [y, cx.cast(inp(cx, node, 4), node.inputs[4].dtype, dt.f32)])
    return cx.cast(y, dt.f32, xv.dtype)


def weight_t(cx: Emitter, node: Node) -> tuple[str, dt.DType]:
    """Wd^T [K, N] of a qlinear, dequantised in float32 (float64 for an f64 scale). Constant
    codes and parameters are transposed at export, so no Transpose runs at inference."""
    wv, sv, zv = node.inputs[1], node.inputs[2], _opt(node, 3)
    group = node.attrs["group"]
    cd = dt.f64 if sv.dtype is dt.f64 else dt.f32
    zd = zv.dtype if zv is not None else None
    # float8 weights as Cast and Mul (see dequant), except behind a dequantised activation:
    # there onnxruntime's QDQ rewrite would fold them to floats and quantise those to int8
    xp = node.inputs[0].producer
    fast_f8 = xp is None or xp.op != "dequantize"
    if wv.is_const and sv.is_const and (zv is None or zv.is_const):
        def tr(v: Value) -> str:
            return cx.derived(v, "T", lambda t: t.t().contiguous() if t.dim() == 2 else t, v.dtype)
        kn = (wv.shape[1], wv.shape[0])
        # Per-channel: the scale runs along axis 1 of W^T; group-wise: blocks along axis 0.
        axis = 1 if group == 0 else 0
        return dequant(cx, tr(wv), wv.dtype, tr(sv), _Shaped(sv, True), tr(zv) if zv is not None else "",
                       zd, kn, axis, group, cd, weights=fast_f8), cd
    wd = dequant(cx, cx.value(wv), wv.dtype, cx.value(sv), sv, cx.value(zv), zd, wv.shape,
                 0 if group == 0 else 1, group, cd, weights=fast_f8)
    return cx.op("Transpose", [wd], perm=[1, 0]), cd


class _Shaped:
    """A stand-in for a parameter Value seen transposed (shape and dtype only)."""

    def __init__(self, v: Value, transpose: bool):
        self.dtype = v.dtype
        self.shape = tuple(reversed(v.shape)) if transpose and len(v.shape) == 2 else v.shape
        self.type = self

    @property
    def rank(self) -> int:
        return len(self.shape)


def dynamic_quant(cx: Emitter, x: str, mode: str, abits: int, cd: dt.DType) -> tuple[str, str]:
    """Symmetric dynamic quantisation (codes as floats, scale), the IR's formula."""
    qmax = (1 << (abits - 1)) - 1
    ax = cx.op("Abs", [x])
    amax = reduce(cx, "ReduceMax", ax, [-1] if mode == "per_token" else None, mode == "per_token")
    s0 = cx.op("Div", [amax, cx.scalar(float(qmax), cd)])
    sx = cx.op("Where", [cx.op("Greater", [s0, cx.scalar(0.0, cd)]), s0, cx.scalar(1.0, cd)])
    q = cx.op("Clip", [cx.op("Round", [cx.op("Div", [x, sx])]), cx.scalar(-qmax, cd), cx.scalar(qmax, cd)])
    return q, sx


@render("qlinear")
def _qlinear(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    for path in (_matmul_nbits, _matmul_integer, _per_token_integer):
        y = path(cx, node)
        if y is not None:
            return [y]
    wt, wcd = weight_t(cx, node)
    out = xv.dtype if xv.dtype.is_float else dt.get(a["out_dtype"])
    cd = dt.f64 if xv.dtype is dt.f64 else dt.f32
    wt = cx.cast(wt, wcd, cd)
    x = cx.cast(inp(cx, node, 0), xv.dtype, cd)
    if xv.dtype.is_float and a["act"] != "none":
        qx, sx = dynamic_quant(cx, x, a["act"], a["abits"], cd)
        y = cx.op("Mul", [cx.op("MatMul", [qx, wt]), sx])
    else:
        y = cx.op("MatMul", [x, wt])
    if _opt(node, 4) is not None:
        y = cx.op("Add", [y, cx.cast(inp(cx, node, 4), node.inputs[4].dtype, cd)])
    return [cx.cast(y, cd, out)]


# ---- bcq, low-rank ------------------------------------------------------------------------------

@render("bcq_linear")
def _bcq(cx: Emitter, node: Node) -> list[str]:
    xv, bv, av = node.inputs[:3]
    group = node.attrs["group"]
    cd = compute_dtype(xv.dtype)
    if bv.is_const and av.is_const:
        w = bcq_weight(bv.const, av.const, group)     # float64, rounded once to cd below
        wt = cx.initializer(w.t().contiguous().to(cd.container), cd, "bcq_WT")
    else:
        signs = cx.op("Sub", [cx.op("Mul", [cx.cast(cx.value(bv), dt.boolean, cd), cx.scalar(2.0, cd)]),
                              cx.scalar(1.0, cd)])
        al = cx.cast(cx.value(av), av.dtype, cd)
        al = cx.op("Unsqueeze", [al, cx.ints([2])]) if group == 0 else \
            expand_param(cx, al, av.shape, bv.shape, 2, group)
        w = reduce(cx, "ReduceSum", cx.op("Mul", [signs, al]), [0], False)
        wt = cx.op("Transpose", [w], perm=[1, 0])
    y = cx.op("MatMul", [cx.cast(cx.value(xv), xv.dtype, cd), wt])
    if _opt(node, 3) is not None:
        y = cx.op("Add", [y, cx.cast(inp(cx, node, 3), node.inputs[3].dtype, cd)])
    return [cx.cast(y, cd, xv.dtype)]


def factor_t(cx: Emitter, v: Value, cd: dt.DType, perm: list[int] | None = None) -> str:
    """A weight transposed (last two dims, or ``perm``) in ``cd``: at export when constant."""
    perm = perm or list(range(v.type.rank - 2)) + [v.type.rank - 1, v.type.rank - 2]
    if v.is_const:
        return cx.derived(v, f"T_{cd.name}", lambda t: t.permute(*perm).contiguous().to(cd.container), cd)
    return cx.cast(cx.op("Transpose", [cx.value(v)], perm=perm), v.dtype, cd)


def _lowrank(cx: Emitter, x: str, u: Value, v: Value, b: Value | None, cd: dt.DType) -> str:
    y = cx.op("MatMul", [cx.op("MatMul", [x, factor_t(cx, v, cd)]), factor_t(cx, u, cd)])
    return cx.op("Add", [y, cx.cast(cx.value(b), b.dtype, cd)]) if b is not None else y


@render("lowrank_linear")
def _lowrank_linear(cx: Emitter, node: Node) -> list[str]:
    xv, u, v = node.inputs[:3]
    cd = compute_dtype(xv.dtype)
    y = _lowrank(cx, cx.cast(cx.value(xv), xv.dtype, cd), u, v, _opt(node, 3), cd)
    return [cx.cast(y, cd, xv.dtype)]


@render("lowrank_ffn")
def _lowrank_ffn(cx: Emitter, node: Node) -> list[str]:
    xv, u1, v1, b1, u2, v2 = node.inputs[:6]
    cd = compute_dtype(xv.dtype)
    h = _lowrank(cx, cx.cast(cx.value(xv), xv.dtype, cd), u1, v1, b1, cd)
    h = activation(cx, node.attrs["activation"], h, cd)
    return [cx.cast(_lowrank(cx, h, u2, v2, _opt(node, 6), cd), cd, xv.dtype)]


# ---- moe --------------------------------------------------------------------------------------

@render("moe")
def _moe(cx: Emitter, node: Node, wts: dict[str, str] | None = None) -> list[str]:
    """Dense ``moe``: every expert on every token, weighted by the scattered top-k router
    weights. ``wts`` (qmoe) gives some expert matrices as graph tensors [E, K, N] already in
    the compute dtype instead of constants."""
    xv, rv, gv, uv, dv = node.inputs[:5]
    wts = wts or {}
    bv = _opt(node, 5)
    a = node.attrs
    cd = compute_dtype(xv.dtype)
    h = xv.shape[-1]
    x2 = cx.op("Reshape", [cx.value(xv), cx.dims([-1, h])])
    logits = cx.cast(cx.op("MatMul", [x2, factor_t(cx, rv, xv.dtype, [1, 0])]), xv.dtype, cd)
    if bv is not None:
        logits = cx.op("Add", [logits, cx.cast(cx.value(bv), bv.dtype, cd)])
    p = cx.op("Softmax" if a["scoring"] == "softmax" else "Sigmoid", [logits],
              **({"axis": -1} if a["scoring"] == "softmax" else {}))
    w, idx = cx.op("TopK", [p, cx.ints([a["top_k"]])], n_out=2, axis=-1, largest=1, sorted=1)
    if a["normalize"]:
        w = cx.op("Div", [w, reduce(cx, "ReduceSum", w, [-1], True)])
    raw, _ = to_numpy(torch.zeros(1, dtype=cd.container), cd)
    zeros = cx.op("ConstantOfShape", [cx.op("Shape", [p])],
                  value=helper.make_tensor("value", ONNX_DTYPE[cd.name], [1], raw, raw=True))
    route = cx.op("ScatterElements", [zeros, idx, w], axis=1)          # [T, E]
    xc = cx.cast(x2, xv.dtype, cd)
    perm = [0, 2, 1]
    def wt(m: str, v: Value) -> str:
        return wts[m] if m in wts else factor_t(cx, v, cd, perm)
    up = cx.op("MatMul", [xc, wt("up", uv)])                          # [E, T, F]
    if gv is not None:
        hid = cx.op("Mul", [activation(cx, a["activation"], cx.op("MatMul", [xc, wt("gate", gv)]), cd), up])
    else:
        hid = activation(cx, a["activation"], up, cd)
    ye = cx.op("MatMul", [hid, wt("down", dv)])                       # [E, T, H]
    rt = cx.op("Unsqueeze", [cx.op("Transpose", [route], perm=[1, 0]), cx.ints([2])])
    y = reduce(cx, "ReduceSum", cx.op("Mul", [ye, rt]), [0], False)   # [T, H]
    y = cx.cast(y, cd, xv.dtype)
    return [cx.op("Reshape", [y, cx.op("Shape", [cx.value(xv)])])]

