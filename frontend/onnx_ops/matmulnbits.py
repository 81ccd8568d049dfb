"""Converter for onnxruntime's weight-only quantised linear ``com.microsoft::MatMulNBits``.

``Y = A @ dequant(B)^T + bias`` with B [N, n_blocks, blob] uint8 (``bits``-bit codes of each
row of W [N, K], ``block_size`` codes per block, packed low bits first, K padded to whole
blocks), scales [N * n_blocks] and optional zero points becomes one IR ``qlinear`` (act
"none") with the unpacked codes, the scales as [N, groups] and the zero points, i.e. what
``quant_weights`` produces and ``codegen/onnx_quant.py`` exports:

- ``zero_points`` absent: onnxruntime subtracts 2^(bits-1) (8 / 128), so the codes become the
  signed i4 / i8 codes ``q - 2^(bits-1)`` without a zero point (symmetric quant_weights).
- ``zero_points`` uint8 (bits-bit values packed like B, per row, low bits first): u4 / u8
  codes with a u4 / u8 zero point.
- ``zero_points`` in the scales' float type (not packed): onnxruntime computes ``(q - zp) *
  scale`` with a fractional zp (HQQ-style), which qlinear's float ``w_zero`` states exactly:
  u4 / u8 codes with that float zero point.
- Runs of adjacent blocks with bit-identical scales (and zero points) are merged into one
  quantisation group: the exporter repeats a wider group's (or a per-channel) scale over
  power-of-two blocks, and merging gives back the group quant_weights chose (a group covering
  all of K for per-channel weights, which the kernels treat like group 0). Merging only joins
  identical parameters, so the dequantised weights are the same either way.

``accuracy_level`` is a precision hint (levels 1..4 let onnxruntime quantise A to int8 at run
time); the import always computes the weight-only float product, i.e. level 0. ``g_idx`` must
be absent or the identity grouping ``k // block_size`` (act-order groups would need a column
permutation that qlinear does not have). Weights must be constants: qlinear's kernels prepack
them at compile time.
"""
from __future__ import annotations

import math
from typing import Any

import onnx
import torch

from ...ir import dtypes as dt
from ...ir.errors import FrontendError, UnsupportedOpError
from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op

MS_DOMAIN = "com.microsoft"
SUPPORTED_BITS = (4, 8)
_FLOAT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
               torch.float64: torch.int64}


def _unsupported(ctx: Ctx, what: str) -> UnsupportedOpError:
    """An UnsupportedOpError for an unsupported form of MatMulNBits, naming the node."""
    return UnsupportedOpError({f"{MS_DOMAIN}::MatMulNBits with {what}": 1}, where=ctx.where())


def _weight_const(ctx: Ctx, i: int, what: str) -> torch.Tensor:
    """Constant input ``i``; a computed one is refused (qlinear prepacks its weights)."""
    c = ctx.const(i)
    if c is None:
        raise FrontendError(f"{ctx.where()}: input {i} ({what}, '{ctx.node.input[i]}') must be a "
                            f"constant initializer: MatMulNBits weights computed at run time are "
                            f"not supported")
    return c


def unpack_bits(packed: torch.Tensor, bits: int, rows: int, count: int) -> torch.Tensor:
    """``rows`` x ``count`` unsigned ``bits``-bit values (int64) from ``packed`` uint8, each row
    packed on its own, low bits first (MatMulNBits' B and uint8 zero points); values past
    ``count`` in a row's last byte are padding."""
    b = packed.reshape(rows, -1).to(torch.int64)
    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(b >> (bits * j)) & mask for j in range(per)]
    return torch.stack(parts, dim=-1).reshape(rows, -1)[:, :count]


def merged_group(params: list[torch.Tensor], block: int, k: int) -> int:
    """The widest quantisation group that the per-block ``params`` ([N, n_blocks] each) allow:
    ``m * block`` where every run of m adjacent blocks has bit-identical parameters in every
    row; ``k`` (one group over all of K) when all blocks agree."""
    nb = params[0].shape[1]
    differs = torch.zeros(max(nb - 1, 0), dtype=torch.bool)
    for p in params:
        v = p.view(_FLOAT_VIEW[p.dtype]) if p.dtype in _FLOAT_VIEW else p
        differs |= (v[:, 1:] != v[:, :-1]).any(dim=0)
    breaks = (torch.nonzero(differs).reshape(-1) + 1).tolist()   # blocks that start a new group
    if not breaks:
        return k
    m = 0
    for b in breaks:
        m = math.gcd(m, b)
    return m * block   # < k: every break is a block that starts inside K


def _check_attrs(ctx: Ctx, a: dict[str, Any]) -> tuple[int, int, int, int]:
    for name in ("K", "N", "bits", "block_size"):
        if name not in a:
            raise FrontendError(f"{ctx.where()}: attribute {name} is missing")
    k, n, bits, block = int(a["K"]), int(a["N"]), int(a["bits"]), int(a["block_size"])
    if bits not in SUPPORTED_BITS:
        raise _unsupported(ctx, f"bits={bits} (only {' and '.join(map(str, SUPPORTED_BITS))} are supported)")
    if block < 16 or block & (block - 1):
        raise FrontendError(f"{ctx.where()}: block_size must be a power of two >= 16, got {block}")
    if k < 1 or n < 1:
        raise FrontendError(f"{ctx.where()}: K and N must be positive, got K={k}, N={n}")
    return k, n, bits, block


def _check_g_idx(ctx: Ctx, k: int, block: int) -> None:
    """g_idx (input 4) may only restate the default grouping k // block_size."""
    if len(ctx.node.input) <= 4 or not ctx.node.input[4]:
        return
    g = ctx.const(4)
    if g is None:
        raise _unsupported(ctx, "a g_idx computed at run time")
    if g.numel() != k or not torch.equal(g.reshape(-1).to(torch.int64), torch.arange(k) // block):
        raise _unsupported(ctx, "a non-trivial g_idx (act-order groups; only k // block_size "
                                "is supported)")


def _input_dtype(ctx: Ctx, i: int) -> dt.DType:
    """The IR dtype of the current node's input ``i`` (its Value's type)."""
    v = ctx.input(i)
    assert v is not None
    return v.type.dtype


def _zero_points(ctx: Ctx, bits: int, n: int, nb: int, scale_dtype: dt.DType
                 ) -> tuple[torch.Tensor, dt.DType] | None:
    """The zero points as [N, n_blocks] with their IR dtype (u4 / u8 codes or the scales'
    float type), or None when the node has none."""
    if len(ctx.node.input) <= 3 or not ctx.node.input[3]:
        return None
    z = _weight_const(ctx, 3, "zero_points")
    zd = _input_dtype(ctx, 3)
    if zd is dt.u8:
        per_row = -(-nb * bits // 8)
        if z.numel() != n * per_row:
            raise FrontendError(f"{ctx.where()}: uint8 zero_points must hold N * ceil(n_blocks * "
                                f"bits / 8) = {n * per_row} bytes, got shape {tuple(z.shape)}")
        return unpack_bits(z, bits, n, nb), dt.u4 if bits == 4 else dt.u8
    if zd.is_float:
        if zd is not scale_dtype:
            raise FrontendError(f"{ctx.where()}: float zero_points must have the scales' type "
                                f"{scale_dtype.name}, got {zd.name}")
        if z.numel() != n * nb:
            raise FrontendError(f"{ctx.where()}: float zero_points must have N * n_blocks = "
                                f"{n * nb} elements, got shape {tuple(z.shape)}")
        return z.reshape(n, nb), zd
    raise FrontendError(f"{ctx.where()}: zero_points must be uint8 or the scales' float type, "
                        f"got {zd.name}")


@onnx_op("MatMulNBits", domain=MS_DOMAIN)
def _matmul_nbits(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    k, n, bits, block = _check_attrs(ctx, a)
    x = ctx.input(0)
    if not x.type.dtype.is_float or x.type.rank < 1:
        raise FrontendError(f"{ctx.where()}: A must be a float tensor of rank >= 1, got {x.type}")
    kx = x.type.shape[-1]
    if isinstance(kx, int) and kx != k:
        raise FrontendError(f"{ctx.where()}: A's last dimension {kx} != attribute K={k}")
    nb = -(-k // block)
    blob = block * bits // 8
    packed = _weight_const(ctx, 1, "B")
    if _input_dtype(ctx, 1) is not dt.u8 or packed.numel() != n * nb * blob:
        raise FrontendError(f"{ctx.where()}: B must be uint8 [N, n_blocks, blob_size] = "
                            f"[{n}, {nb}, {blob}], got {_input_dtype(ctx, 1).name} {tuple(packed.shape)}")
    scales = _weight_const(ctx, 2, "scales")
    sd = _input_dtype(ctx, 2)
    if not sd.is_float or scales.numel() != n * nb:
        raise FrontendError(f"{ctx.where()}: scales must be float [N * n_blocks] = [{n * nb}], "
                            f"got {sd.name} {tuple(scales.shape)}")
    _check_g_idx(ctx, k, block)
    scales = scales.reshape(n, nb)
    codes = unpack_bits(packed, bits, n, nb * block)[:, :k]   # drop the padding to whole blocks
    zp = _zero_points(ctx, bits, n, nb, sd)
    if zp is None:
        # onnxruntime's default zero point 2^(bits-1) turns the codes into signed ones.
        codes = codes - (1 << (bits - 1))
        cdt = dt.i4 if bits == 4 else dt.i8
    else:
        cdt = dt.u4 if bits == 4 else dt.u8
    group = merged_group([scales] + ([zp[0]] if zp is not None else []), block, k)
    keep = slice(None, None, nb if group >= k else group // block)   # one column per group
    g = ctx.graph
    base = node.input[1]
    wq = g.add_const(codes, cdt, f"{base}.q")
    ws = g.add_const(scales[:, keep].contiguous(), sd, f"{base}.scale")
    wz = g.add_const(zp[0][:, keep].contiguous(), zp[1], f"{base}.zero") if zp is not None else None
    bias = ctx.input(5)
    ins: list[Value | None] = [x, wq, ws, wz, bias]
    while ins[-1] is None:
        ins.pop()
    return [ctx.add("qlinear", ins, {"group": group, "act": "none"})]
