"""Converter for onnxruntime's quantised embedding lookup ``com.microsoft::GatherBlockQuantized``.

onnxruntime-genai's model builder writes it for quantised (often tied) token embeddings, e.g.
``/model/embed_tokens/GatherBlockQuantized`` of Gemma-2 int4, and onnxruntime's own
``MatMulNBitsQuantizer(op_types_to_quantize=("MatMul", "Gather"))`` writes it for every
constant Gather. Semantics (onnxruntime's CPU kernel, checked against onnxruntime 1.32):

``output = Gather(dequant(data), indices, axis=gather_axis)`` with ``dequant(data)[p] =
float(q[p] - zp[b(p)]) * float(scale[b(p)])`` rounded once to the scales' type (f32 or f16),
where ``b(p)`` is ``p`` with its ``quantize_axis`` coordinate divided by ``block_size``
(attributes: gather_axis 0, quantize_axis 1, block_size 128, bits 4 by default; a block_size
is a power of two >= 16). Forms:

- ``data`` uint8, ``bits`` 4 / 8 / 2: the codes are packed along the last axis, low bits
  first (two 4-bit codes per byte: element 2i in the low nibble, 2i+1 in the high one), so
  the logical last dimension is ``bytes * 8 / bits``. onnxruntime requires gather_axis 0 and
  quantize_axis = the last axis. ``zero_points`` (optional) are uint8 packed the same way
  along the last axis of the scales' shape; without them the zero point is ``2^(bits-1)``
  (8 / 128 / 2).
- ``data`` int4 / uint4 (``bits`` must be 4): one logical code per element, any gather and
  quantize axes (also equal ones: each gathered element then takes the scale of its own source
  block). ``zero_points`` have the data's type and the scales' shape; default 0.
- ``data`` float8 e4m3fn / e5m2 or float4 e2m1: ``output = float(data) * scale``, no zero
  point, ``block_size`` 0 meaning one block over the whole quantize axis, and a scales
  dimension of 1 on any other axis broadcasts. (The FNUZ float8 types have no IR dtype: the
  importer refuses their initializers.)
- ``indices`` int32 / int64 of any rank; negative ones count from the end; unlike ONNX
  Gather an index outside ``[-n, n)`` yields a slice of zeros instead of an error.

Lowering (the codes stay compact; only the gathered rows are dequantised at run time): the
codes become an IR constant of a 4 / 8-bit code type (uint8 data without zero points: the
signed codes ``q - 2^(bits-1)``, i4 / i8, like the MatMulNBits import, so a tied lm_head's
qlinear and the embedding hold the same codes), the scales (and zero points) constants of
their own; then ``gather`` of the code rows, ``gather`` of the matching scale / zero-point
rows, and one blocked ``dequantize`` along the quantize axis of the output. Index masking
(``where``) reproduces the zeros of out-of-range indices. 2-bit codes have no IR dtype and
are held one per byte (i8 / u8 containers, 4x the packed size; the values are exact).
``data``, ``scales`` and ``zero_points`` must be constants (possibly behind Reshape nodes, as
when the builder reshapes the lm_head's MatMulNBits weight for a tied embedding).
"""
from __future__ import annotations

from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .contrib import need, unsupported
from .matmulnbits import MS_DOMAIN, unpack_bits
from .quant import scalar

#: code dtypes that hold float codes (no zero point, block_size 0 allowed, broadcast scales)
FLOAT_CODES = (dt.f8e4m3, dt.f8e5m2, dt.f4e2m1)
#: bits onnxruntime accepts for packed uint8 data
UINT8_BITS = (2, 4, 8)


def const_operand(ctx: Ctx, i: int, what: str) -> tuple[torch.Tensor, dt.DType] | None:
    """The constant tensor of input ``i`` with its IR dtype, looking through ``reshape`` nodes
    of constants (the importer folds reshapes only below its size limit, and a tied embedding
    reshapes the lm_head's [N, n_blocks, blob] weight to [N, bytes]); None if absent."""
    v = ctx.input(i)
    if v is None:
        return None
    c = ctx.const(i)
    if c is not None:
        return c, v.type.dtype
    src = v
    while src.producer is not None and src.producer.op == "reshape" and not src.is_const:
        src = src.producer.inputs[0]
    if src.is_const and v.type.is_static:
        return src.const.reshape(tuple(int(d) for d in v.type.shape)), v.type.dtype
    raise FrontendError(f"{ctx.where()}: input {i} ({what}, '{ctx.node.input[i]}') must be a "
                        f"constant: GatherBlockQuantized tables computed at run time are not "
                        f"supported")


def _norm_axis(ctx: Ctx, axis: int, rank: int, name: str) -> int:
    if not -rank <= axis < rank:
        raise FrontendError(f"{ctx.where()}: {name}={axis} is out of range for data of rank {rank}")
    return axis % rank


def _check_block(ctx: Ctx, block: int, float_codes: bool) -> None:
    ok = block >= 16 and block & (block - 1) == 0
    if not ok and not (float_codes and block == 0):
        raise FrontendError(f"{ctx.where()}: block_size must be a power of two >= 16"
                            f"{' (or 0 for float codes)' if float_codes else ''}, got {block}")


def _unpack_last(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Unsigned ``bits``-bit values packed low bits first along the last axis of ``packed``,
    ``count`` of them per row (int64, the leading dims kept)."""
    lead = tuple(packed.shape[:-1])
    rows = 1
    for d in lead:
        rows *= d
    return unpack_bits(packed.contiguous(), bits, rows, count).reshape(lead + (count,))


def _uint8_codes(ctx: Ctx, data: torch.Tensor, bits: int, zp: tuple[torch.Tensor, dt.DType] | None,
                 nblocks: int) -> tuple[torch.Tensor, dt.DType, torch.Tensor | None]:
    """(codes, code dtype, zero points or None) of packed uint8 data (see the module docstring)."""
    per = 8 // bits
    codes = _unpack_last(data, bits, data.shape[-1] * per) if per > 1 else data.to(torch.int64)
    if zp is None:
        # The default zero point 2^(bits-1) makes the codes signed: q - zp needs no zero point
        # and holds the same values the MatMulNBits import makes for the lm_head of a tied
        # model (the import then keeps one of the two: onnx_fuse.share_equal_constants).
        return codes - (1 << (bits - 1)), (dt.i4 if bits == 4 else dt.i8), None
    z, zd = zp
    want = tuple(data.shape[:-1]) + (-(-nblocks // per),)
    if zd is not dt.u8 or tuple(z.shape) != want:
        raise FrontendError(f"{ctx.where()}: zero_points must be uint8 {list(want)} ({bits}-bit "
                            f"values packed along the last axis), got {zd.name} {list(z.shape)}")
    z = _unpack_last(z, bits, nblocks) if per > 1 else z.to(torch.int64)
    cdt = dt.u4 if bits == 4 else dt.u8
    return codes, cdt, z


def _scales_for(ctx: Ctx, scales: torch.Tensor, shape: tuple[int, ...], q: int, block: int,
                float_codes: bool) -> torch.Tensor:
    """The scales checked against the logical data ``shape``: scales[q] = ceil(shape[q] /
    block), other dims equal (float codes: or 1, broadcast here to the full size)."""
    want = list(shape)
    want[q] = -(-shape[q] // block)
    got = list(scales.shape)
    if len(got) != len(want):
        raise FrontendError(f"{ctx.where()}: scales must have the data's rank {len(want)}, "
                            f"got shape {got}")
    bad = [i for i, (g, w) in enumerate(zip(got, want))
           if g != w and not (float_codes and i != q and g == 1)]
    if bad:
        raise FrontendError(f"{ctx.where()}: scales shape {got} does not match the data "
                            f"(expected {want} for block_size {block} along axis {q})")
    # A broadcast (size-1) scales axis is expanded once at import: the scales are small next
    # to the codes, and gather / dequantize then need no broadcasting rules of their own.
    return scales.expand(want).contiguous() if got != want else scales


def _valid_and_safe(ctx: Ctx, idx: Value, n: int) -> tuple[Value, Value]:
    """(mask of indices in [-n, n), indices with the invalid ones replaced by 0)."""
    d = idx.type.dtype
    valid = ctx.add("logical_and", [ctx.add("ge", [idx, scalar(ctx, -n, d)]),
                                    ctx.add("lt", [idx, scalar(ctx, n, d)])])
    return valid, ctx.add("where", [valid, idx, scalar(ctx, 0, d)])


def _masked(ctx: Ctx, y: Value, valid: Value, g: int, rank: int) -> Value:
    """``y`` with the slices of out-of-range indices zeroed: ``valid`` (indices' shape) is
    placed at the gather axis of the output, broadcast over the data's other axes."""
    if valid.is_const and bool(valid.const.all()):
        return y
    m = valid
    trailing = rank - g - 1
    if g or trailing:
        vr = valid.type.rank
        axes = tuple(range(g)) + tuple(range(g + vr, g + vr + trailing))
        m = ctx.add("unsqueeze", [valid], {"axes": axes})
    return ctx.add("where", [m, y, scalar(ctx, 0.0, y.type.dtype)])


@onnx_op("GatherBlockQuantized", domain=MS_DOMAIN)
def _gather_block_quantized(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    need(ctx, 0, "data")
    idx = need(ctx, 1, "indices")
    need(ctx, 2, "scales")
    if idx.type.dtype not in (dt.i32, dt.i64):
        raise FrontendError(f"{ctx.where()}: indices must be int32 or int64, got {idx.type}")
    got = const_operand(ctx, 0, "data")
    sgot = const_operand(ctx, 2, "scales")
    assert got is not None and sgot is not None
    data, dd = got
    scales, sd = sgot
    if sd not in (dt.f32, dt.f16):
        raise unsupported(ctx, f"{sd.name} scales (onnxruntime dequantises to float32 or float16)")
    zp = const_operand(ctx, 3, "zero_points")
    bits = int(a.get("bits", 4))
    block = int(a.get("block_size", 128))
    rank = data.dim()
    if rank < 1:
        raise FrontendError(f"{ctx.where()}: data must have rank >= 1")
    g = _norm_axis(ctx, int(a.get("gather_axis", 0)), rank, "gather_axis")
    q = _norm_axis(ctx, int(a.get("quantize_axis", 1)), rank, "quantize_axis")
    float_codes = dd in FLOAT_CODES
    _check_block(ctx, block, float_codes)

    zero: torch.Tensor | None = None
    if dd is dt.u8:
        if bits not in UINT8_BITS:
            raise unsupported(ctx, f"uint8 data and bits={bits} (onnxruntime takes 2, 4 or 8)")
        if g != 0 or q != rank - 1:
            raise unsupported(ctx, f"uint8 data, gather_axis={g} and quantize_axis={q} "
                                   f"(onnxruntime requires gather_axis 0 and quantize_axis the "
                                   f"last axis, {rank - 1}, and the two must differ)")
        if g == q:
            raise unsupported(ctx, "uint8 data of rank 1 (gather_axis equals quantize_axis)")
        shape = tuple(data.shape[:-1]) + (data.shape[-1] * (8 // bits),)
        codes, cdt, zero = _uint8_codes(ctx, data, bits, zp, -(-shape[q] // block))
    elif dd in (dt.i4, dt.u4):
        if bits != 4:
            raise unsupported(ctx, f"{dd.name} data and bits={bits} (onnxruntime takes 4)")
        shape, codes, cdt = tuple(data.shape), data, dd
        if zp is not None:
            z, zd = zp
            if zd is not dd:
                raise FrontendError(f"{ctx.where()}: zero_points must have the data's type "
                                    f"{dd.name}, got {zd.name}")
            zero = z
    elif float_codes:
        if zp is not None:
            raise FrontendError(f"{ctx.where()}: zero_points must not be given for "
                                f"{dd.name} data (float codes are symmetric)")
        shape, codes, cdt = tuple(data.shape), data, dd
        block = block or max(shape[q], 1)       # 0: one block over the whole quantize axis
    else:
        raise unsupported(ctx, f"{dd.name} data (uint8, int4, uint4, float8 e4m3fn / e5m2 and "
                               f"float4 e2m1 are supported)")
    scales = _scales_for(ctx, scales, shape, q, block, float_codes)
    if zero is not None and tuple(zero.shape) != tuple(scales.shape):
        raise FrontendError(f"{ctx.where()}: zero_points shape {list(zero.shape)} != scales "
                            f"shape {list(scales.shape)}")

    gr = ctx.graph
    base = node.input[0]
    wq = gr.add_const(codes.to(cdt.container).contiguous(), cdt, f"{base}.q")
    ws = gr.add_const(scales.contiguous(), sd, f"{base}.scale")
    wz = gr.add_const(zero.to(cdt.container).contiguous(), cdt, f"{base}.zero") \
        if zero is not None else None
    n = shape[g]
    valid, safe = _valid_and_safe(ctx, idx, n)
    y_codes = ctx.add("gather", [wq, safe], {"axis": g})
    m = idx.type.rank
    out_rank = rank - 1 + m
    if g != q:
        # Scales and zero points are indexed by the same row on the gather axis.
        s_idx = safe
        out_q = q if q < g else q + m - 1
        dq_attrs: dict[str, Any] = {"axis": out_q, "block": block}
    else:
        # Gathering along the quantised axis itself: each gathered element takes the scale of
        # its own source block, (wrapped index) // block, so the scales come out element-wise.
        d = safe.type.dtype
        wrapped = ctx.add("where", [ctx.add("lt", [safe, scalar(ctx, 0, d)]),
                                    ctx.add("add", [safe, scalar(ctx, n, d)]), safe])
        s_idx = ctx.add("div", [wrapped, scalar(ctx, block, d)])
        # block 1 along any axis is element-wise; a scalar output takes a per-tensor scale
        # (a scalar index removes axis g, which may have been the last)
        dq_attrs = {"axis": min(g, out_rank - 1), "block": 1} if out_rank else {"axis": -1, "block": 0}
    y_s = ctx.add("gather", [ws, s_idx], {"axis": g})
    y_z = ctx.add("gather", [wz, s_idx], {"axis": g}) if wz is not None else None
    dq_attrs["dtype"] = sd.name
    if cdt is dt.f4e2m1:
        dq_attrs["qtype"] = cdt.name      # its uint8 container is ambiguous at run time
    y = ctx.add("dequantize", [y_codes, y_s] + ([y_z] if y_z is not None else []), dq_attrs)
    return [_masked(ctx, y, valid, g, rank)]
