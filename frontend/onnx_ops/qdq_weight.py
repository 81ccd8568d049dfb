"""Weights that arrive dequantised: ``DequantizeLinear`` of constant integer codes feeding the B
operand of ``MatMul`` / ``Gemm`` becomes one IR ``qlinear`` with the codes unchanged.

This is the QDQ form of a weight-quantised model (onnxruntime's quantisation tools write it,
and so does ``to_onnx`` for the groupings MatMulNBits cannot carry, e.g. int8 or int3 codes).
Importing it as ``matmul(x, dequantize(q))`` would let constant folding turn the codes back into
float weights; as ``qlinear`` the model keeps its size and runs the weight-only kernels.

The groupings ``qlinear`` states exactly (B is [K, N] for MatMul and Gemm without transB,
[N, K] with it):

- one scale (and zero point) for the whole tensor: per-channel parameters, all equal;
- one per output channel N (``axis`` of N, no block): ``group`` 0;
- blocks of ``block_size`` along K (``axis`` of K): ``group`` = block_size.

Anything else (a scale per K row, blocks along N, float8 / float4 codes, codes that are not
constants) keeps the generic ``dequantize`` -> ``matmul`` form.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...ir import dtypes as dt
from ...ir.graph import Value

#: code types qlinear takes from a DequantizeLinear (its zero point has the same type)
CODE_TYPES = ("u8", "i8", "u4", "i4")


@dataclass(frozen=True)
class QWeight:
    """A DequantizeLinear of constants: codes, scale and zero point as given (IR shapes after the
    importer's normalisation), their dtypes, and the ``axis`` / ``block`` attributes."""
    q: torch.Tensor
    qtype: dt.DType
    scale: torch.Tensor
    stype: dt.DType
    zero: torch.Tensor | None
    axis: int
    block: int


def _const_of(v: Value | None) -> torch.Tensor | None:
    """The constant tensor of ``v`` (the importer folds the reshapes of one-element parameters)."""
    return v.const if v is not None and v.is_const else None


def source_of(q: Value, scale: Value | None, zero: Value | None, axis: int, block: int) -> QWeight | None:
    """The :class:`QWeight` of ``dequantize(q, scale, zero)`` when q holds constant integer codes
    and the parameters are constants; else None."""
    if not q.is_const or q.type.dtype.name not in CODE_TYPES or q.type.rank != 2 or scale is None:
        return None
    s, z = _const_of(scale), _const_of(zero)
    if s is None or (zero is not None and z is None) or not scale.type.dtype.is_float:
        return None
    return QWeight(q.const, q.type.dtype, s, scale.type.dtype, z, axis, block)


def weight_source(ctx: Any, b: Value) -> QWeight | None:
    """The :class:`QWeight` behind operand ``b``: a dequantize node of constants, or a
    DequantizeLinear the importer folded into a constant (``ctx.dq_source``)."""
    got = ctx.dq_source.get(id(b))
    if got is not None:
        return got
    dq = b.producer
    if dq is None or dq.op != "dequantize" or dq.attrs.get("qtype"):
        return None
    q, s, z = (list(dq.inputs) + [None, None])[:3]
    return source_of(q, s, z, int(dq.attrs.get("axis", 1)), int(dq.attrs.get("block", 0))) if q is not None else None


def qlinear_params(w: QWeight, trans_b: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int] | None:
    """(codes [N, K], scale [N] or [N, G], zero like the scale or None, group) of ``w`` used as
    the B operand ([K, N], or [N, K] with ``trans_b``) in a grouping qlinear states; else None
    (see the module docstring)."""
    codes = w.q if trans_b else w.q.t()
    n, k = codes.shape
    s, z = w.scale, w.zero
    n_axis, k_axis = (0, 1) if trans_b else (1, 0)
    if s.numel() == 1:
        group, s2 = 0, s.reshape(1).expand(n)
        z2 = z.reshape(1).expand(n) if z is not None else None
    elif w.block == 0 and w.axis == n_axis and s.dim() == 1 and s.numel() == n:
        group, s2, z2 = 0, s, z
    elif w.block > 0 and w.axis == k_axis and s.dim() == 2:
        group = w.block
        s2 = s if trans_b else s.t()                       # [N, ceil(K / block)]
        z2 = None if z is None else (z if trans_b else z.t())
        if tuple(s2.shape) != (n, -(-k // group)):
            return None
        if group >= k:                                     # one block covers K: per channel
            group, s2, z2 = 0, s2[:, 0], (z2[:, 0] if z2 is not None else None)
    else:
        return None
    return codes.contiguous(), s2.contiguous(), (z2.contiguous() if z2 is not None else None), group


def to_qlinear(ctx: Any, x: Value, b: Value, trans_b: bool, bias: Value | None, hint: str) -> Value | None:
    """``qlinear(x, codes, scale, zero, bias)`` for ``x @ b`` where b is a dequantised constant
    weight in a grouping qlinear states (x a float tensor that is not a constant), else None.
    The dequantize node is left for any other reader (the importer drops it when nothing reads
    it)."""
    # qlinear forms the weight in f32: only an f32 DequantizeLinear output is reproduced exactly
    # (an f16 one is rounded to f16 before the product); mixed types are the float path's error
    if x.type.dtype is not dt.f32 or b.type.dtype is not dt.f32 or x.is_const or b.type.rank != 2:
        return None
    key = (id(b), trans_b)
    made = ctx.qdq_consts.get(key)
    if made is None:
        w = weight_source(ctx, b)
        got = qlinear_params(w, trans_b) if w is not None else None
        if w is None or got is None:
            return None
        codes, scale, zero, group = got
        g = ctx.graph
        # one set of constants per dequantised weight, however many products read it
        made = (g.add_const(codes, w.qtype, f"{hint}.q"), g.add_const(scale, w.stype, f"{hint}.scale"),
                g.add_const(zero, w.qtype, f"{hint}.zero") if zero is not None else None, group)
        ctx.qdq_consts[key] = made
    wq, ws, wz, group = made
    ins: list[Value | None] = [x, wq, ws, wz, bias]
    while ins[-1] is None:
        ins.pop()
    return ctx.add("qlinear", ins, {"group": group, "act": "none"})


__all__ = ["CODE_TYPES", "QWeight", "qlinear_params", "source_of", "to_qlinear", "weight_source"]
