"""Quantisation ops: ``quantize``, ``dequantize``, ``qlinear`` and ``bcq_linear`` (family "quant").

Shared conventions (each op's ``doc`` restates what applies to it):

- Values of sub-byte dtypes arrive unpacked, one element per container byte (``ir/dtypes.py``);
  packing two 4-bit codes (or eight sign bits) per byte is a storage concern of kernels and
  artifacts. Costs, however, count the packed size.
- A reference sees only container tensors, so a uint8 tensor cannot tell f4e2m1 codes from u8
  or u4 codes. Ops that read f4e2m1 codes therefore carry an attribute naming the code type
  (``qtype`` / ``wtype``, optional otherwise); the shape rule checks it against the input's IR
  type.
- Granularity of quantisation parameters follows the scale's shape (ONNX QuantizeLinear):
  a scalar scale is per-tensor, a 1-D scale of length ``x.shape[axis]`` is per-axis, and with
  ``block > 0`` the scale has x's shape with dim ``axis`` replaced by ``ceil(x.shape[axis] /
  block)`` (blocked / group-wise; the last block may be short).
"""
from __future__ import annotations

from typing import Sequence

import sympy
import torch

from .. import dtypes as dt
from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, canon_dim, dim_str, dims_equal
from .common import check_dim, norm_axis, prod, require
from .registry import AttrSpec, Cost, defop, io_bytes

QUANT_DTYPES = ("i8", "u8", "i4", "u4", "i16", "i32", "f8e4m3", "f8e5m2", "f4e2m1")
WEIGHT_DTYPES = ("i8", "u8", "i4", "u4", "i16", "f8e4m3", "f8e5m2", "f4e2m1")
REAL_DTYPES = ("f32", "f16", "bf16", "f64")           # ordinary float activations
INT_ACT_DTYPES = ("i8", "u8", "i4", "u4", "i16", "i32")


# ---- helpers shared with lowrank.py --------------------------------------------------------
def shape_str(shape: Sequence[Dim]) -> str:
    return "[" + ",".join(dim_str(d) for d in shape) + "]"


def ceil_div(d: Dim, block: int) -> Dim:
    """ceil(d / block) as a canonical dim (a sympy ``ceiling`` when ``d`` is symbolic)."""
    if isinstance(d, int):
        return -(-d // block)
    return canon_dim(sympy.ceiling(sympy.sympify(d) / block))


def require_real(t: TensorType, what: str) -> None:
    """``t`` must be an ordinary float type (f32, f16, bf16, f64), not a float code type."""
    if t.dtype.name not in REAL_DTYPES:
        raise ShapeError(f"{what} must be one of {', '.join(REAL_DTYPES)}, got {t.dtype.name}")


def compute_dtype(*ts: torch.Tensor | None) -> torch.dtype:
    """float64 if any float operand is float64, else float32 (half types are widened)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) \
        else torch.float32


def tokens(x: TensorType) -> sympy.Expr:
    """Number of rows of an ``[..., K]`` activation (product of its leading dims)."""
    return sympy.sympify(prod(x.shape[:-1]))


def check_linear_bias(bias: TensorType | None, n: Dim) -> None:
    if bias is None:
        return
    require_real(bias, "bias")
    if bias.rank != 1:
        raise ShapeError(f"bias must be 1-D, got {shape_str(bias.shape)}")
    check_dim(bias.shape[0], n, "bias length vs output features")


def _code_type(given: str | None, t: TensorType, attr: str) -> dt.DType:
    """Resolve the code dtype of an input: the attr, when set, must match the IR type; f4e2m1
    inputs need the attr because their uint8 container is ambiguous at run time."""
    if given and given != t.dtype.name:
        raise ShapeError(f"attribute {attr}={given!r} does not match the input dtype {t.dtype.name}")
    if t.dtype is dt.f4e2m1 and not given:
        raise ShapeError(f"f4e2m1 codes need attribute {attr}=\"f4e2m1\" "
                         "(the reference sees only the uint8 container)")
    return t.dtype


def _real(t: torch.Tensor, fp4: bool, cd: torch.dtype) -> torch.Tensor:
    """Numeric values of a container tensor; ``fp4`` marks uint8 holding f4e2m1 codes."""
    if fp4 and t.dtype == torch.uint8:
        return dt.fp4_e2m1_decode(t).to(cd)
    return t.to(cd)


def _int_range(d: dt.DType, bits: int) -> tuple[int, int]:
    if bits <= 0:
        return d.int_range()
    if d.is_signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


# ---- quantisation parameters ---------------------------------------------------------------
def _check_qparams(x: TensorType, scale: TensorType, zp: TensorType | None, zp_dtype: dt.DType,
                   axis: int, block: int) -> None:
    """Validate scale / zero point granularity against x (see the module docstring)."""
    require_real(scale, "scale")
    if block < 0:
        raise ShapeError(f"block must be >= 0, got {block}")
    if block > 0:
        if x.rank == 0:
            raise ShapeError("blocked quantisation needs x of rank >= 1")
        ax = norm_axis(axis, x.rank)
        want = list(x.shape)
        want[ax] = ceil_div(x.shape[ax], block)
        if scale.rank != x.rank or not all(dims_equal(a, b) for a, b in zip(scale.shape, want)):
            raise ShapeError(f"blocked scale must have shape {shape_str(want)} (block {block} along "
                             f"axis {axis}), got {shape_str(scale.shape)}")
    elif scale.rank == 1:
        if x.rank == 0:
            raise ShapeError("a per-axis scale needs x of rank >= 1")
        ax = norm_axis(axis, x.rank)
        check_dim(scale.shape[0], x.shape[ax], f"per-axis scale length vs x.shape[{axis}]")
    elif scale.rank != 0:
        raise ShapeError(f"scale must be a scalar, 1-D (per axis) or blocked (block > 0), "
                         f"got {shape_str(scale.shape)}")
    if zp is not None:
        if zp.dtype is not zp_dtype:
            raise ShapeError(f"zero_point dtype must be {zp_dtype.name}, got {zp.dtype.name}")
        if zp.rank != scale.rank or not all(dims_equal(a, b) for a, b in zip(zp.shape, scale.shape)):
            raise ShapeError(f"zero_point shape {shape_str(zp.shape)} != scale shape "
                             f"{shape_str(scale.shape)}")


def expand_param(p: torch.Tensor, shape: Sequence[int], axis: int, block: int) -> torch.Tensor:
    """Broadcast a per-tensor / per-axis / blocked parameter to a tensor of ``shape``."""
    if p.dim() == 0:
        return p
    ax = axis % len(shape)
    if block > 0:
        return p.repeat_interleave(block, dim=ax).narrow(ax, 0, shape[ax])
    view = [1] * len(shape)
    view[ax] = -1
    return p.reshape(view)


# ---- quantize ------------------------------------------------------------------------------
def _quantize_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, scale = require(ins[0], "x"), require(ins[1], "scale")
    zp = ins[2] if len(ins) > 2 else None
    require_real(x, "x")
    out = dt.get(attrs["dtype"])
    bits = attrs["bits"]
    if bits < 0 or bits > out.bits or (bits and out.is_float):
        raise ShapeError(f"bits={bits} is not valid for dtype {out.name} "
                         "(integer dtypes only, 1..dtype width)")
    _check_qparams(x, scale, zp, out, attrs["axis"], attrs["block"])
    return [TensorType(out, x.shape)]


def _quantize_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    out = dt.get(attrs["dtype"])
    axis, block = attrs["axis"], attrs["block"]
    cd = compute_dtype(x, scale)
    v = x.to(cd) / expand_param(scale.to(cd), x.shape, axis, block)
    if out.is_float:
        if zp is not None:
            v = v + expand_param(_real(zp, out is dt.f4e2m1, cd), x.shape, axis, block)
        if out is dt.f4e2m1:
            return dt.fp4_e2m1_encode(v)          # saturates at +-6
        fmax = torch.finfo(out.container).max
        return v.clamp(-fmax, fmax).to(out.container)   # clamp keeps NaN; the cast rounds RNE
    lo, hi = _int_range(out, attrs["bits"])
    # float64 from here: the i32 range is not representable in float32.
    q = torch.round(torch.nan_to_num(v, nan=0.0)).to(torch.float64)
    if zp is not None:
        q = q + expand_param(zp.to(torch.float64), x.shape, axis, block)
    return q.clamp(lo, hi).to(out.container)


def _quantize_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    n = sympy.sympify(outs[0].numel())
    return Cost((4 if len(ins) > 2 and ins[2] is not None else 3) * n, io_bytes(ins, outs))


defop("quantize", family="quant", inputs=(2, 3), input_names=("x", "scale", "zero_point"),
      shape=_quantize_shape, reference=_quantize_ref, cost=_quantize_cost,
      attrs={"dtype": AttrSpec("str", "i8", QUANT_DTYPES),
             "axis": AttrSpec("int", -1), "block": AttrSpec("int", 0), "bits": AttrSpec("int", 0)},
      doc="quantize(x, scale, zero_point?)[dtype, axis, block, bits] -> codes of dtype `dtype`, "
          "x's shape. x is f32/f16/bf16/f64. Granularity follows scale's shape: scalar [] = "
          "per-tensor; 1-D of length x.shape[axis] = per-axis; block > 0 = blocked (ONNX "
          "blocked quantisation): scale has x's shape with dim `axis` replaced by "
          "ceil(x.shape[axis]/block), element i along axis uses scale index i // block. "
          "zero_point (optional) has scale's shape and dtype = `dtype`. v = x / scale, computed "
          "in float32 (float64 if x or scale is f64). Integer dtypes: q = clamp(round_half_even(v) "
          "+ zero_point, lo, hi) with [lo, hi] the dtype's range or, when bits > 0, the range of a "
          "`bits`-bit integer of the dtype's signedness (Int6 codes in i8: [-32, 31]); NaN maps to "
          "the zero point, +-inf saturate. Float8: cast(clamp(v + zero_point, -max, max)) with "
          "round-to-nearest-even (ONNX saturate=1: +-inf saturate, NaN stays NaN). f4e2m1: "
          "dtypes.fp4_e2m1_encode(v + zero_point) (nearest grid point, ties to even code, saturates "
          "at +-6). Sub-byte codes are unpacked, one per container byte.")


# ---- dequantize ----------------------------------------------------------------------------
def _dequantize_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    q, scale = require(ins[0], "q"), require(ins[1], "scale")
    zp = ins[2] if len(ins) > 2 else None
    if q.dtype.name not in QUANT_DTYPES:
        raise ShapeError(f"q must be one of {', '.join(QUANT_DTYPES)}, got {q.dtype.name}")
    qd = _code_type(attrs["qtype"], q, "qtype")
    _check_qparams(q, scale, zp, qd, attrs["axis"], attrs["block"])
    return [TensorType(attrs["dtype"], q.shape)]


def _dequantize_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    q, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    out = dt.get(attrs["dtype"])
    axis, block = attrs["axis"], attrs["block"]
    fp4 = attrs["qtype"] == "f4e2m1"
    cd = torch.float64 if out is dt.f64 or scale.dtype == torch.float64 else torch.float32
    s = expand_param(scale.to(cd), q.shape, axis, block)
    if q.is_floating_point() or fp4:
        r = _real(q, fp4, cd)
        if zp is not None:
            r = r - expand_param(_real(zp, fp4, cd), q.shape, axis, block)
    else:
        # Subtract in int64 so that only one rounding (to cd) happens, also for i32 codes.
        r = q.to(torch.int64)
        if zp is not None:
            r = r - expand_param(zp.to(torch.int64), q.shape, axis, block)
        r = r.to(cd)
    return (r * s).to(out.container)


defop("dequantize", family="quant", inputs=(2, 3), input_names=("q", "scale", "zero_point"),
      shape=_dequantize_shape, reference=_dequantize_ref,
      cost=lambda ins, outs, a: Cost((3 if len(ins) > 2 and ins[2] is not None else 2)
                                     * sympy.sympify(outs[0].numel()), io_bytes(ins, outs)),
      attrs={"axis": AttrSpec("int", -1), "block": AttrSpec("int", 0),
             "dtype": AttrSpec("str", "f32", REAL_DTYPES), "qtype": AttrSpec("str", None, QUANT_DTYPES)},
      doc="dequantize(q, scale, zero_point?)[axis, block, dtype, qtype] -> dtype `dtype`, q's "
          "shape: (to_real(q) - zero_point) * scale. q has one of the quantize dtypes; scale and "
          "zero_point follow quantize's granularity rules (scalar = per-tensor, 1-D = per-axis "
          "along `axis`, block > 0 = blocked), zero_point has q's dtype and scale's shape. The "
          "output dtype is always the `dtype` attribute (default f32), never inferred from the "
          "scale; a frontend importing ONNX DequantizeLinear sets it to the scale's type. Integer "
          "codes subtract the zero point exactly (int64), float codes in the compute type; the "
          "product is formed in float32 (float64 if scale or output is f64) and cast once. "
          "`qtype` names the code dtype; it must equal q's dtype when set and is required for "
          "f4e2m1 codes, whose uint8 container is ambiguous at run time.")


# ---- qlinear -------------------------------------------------------------------------------
def _check_weight_params(w: TensorType, scale: TensorType, zero: TensorType | None, group: int,
                         what: str = "w_scale") -> None:
    n, k = w.shape
    require_real(scale, what)
    if group < 0:
        raise ShapeError(f"group must be >= 0, got {group}")
    want = (n,) if group == 0 else (n, ceil_div(k, group))
    if scale.rank != len(want) or not all(dims_equal(a, b) for a, b in zip(scale.shape, want)):
        raise ShapeError(f"{what} must have shape {shape_str(want)} for group {group}, "
                         f"got {shape_str(scale.shape)}")
    if zero is not None:
        if zero.dtype is not w.dtype and zero.dtype.name not in REAL_DTYPES:
            raise ShapeError(f"w_zero dtype must be w's ({w.dtype.name}) or a float type, "
                             f"got {zero.dtype.name}")
        if zero.rank != scale.rank or not all(dims_equal(a, b) for a, b in zip(zero.shape, scale.shape)):
            raise ShapeError(f"w_zero shape {shape_str(zero.shape)} != {what} shape "
                             f"{shape_str(scale.shape)}")


def _qlinear_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, w, scale = require(ins[0], "x"), require(ins[1], "w"), require(ins[2], "w_scale")
    zero = ins[3] if len(ins) > 3 else None
    bias = ins[4] if len(ins) > 4 else None
    if x.rank < 1:
        raise ShapeError("x must have rank >= 1")
    if x.dtype.name not in REAL_DTYPES + INT_ACT_DTYPES:
        raise ShapeError(f"x must be a float ({', '.join(REAL_DTYPES)}) or integer "
                         f"({', '.join(INT_ACT_DTYPES)}) type, got {x.dtype.name}")
    if w.dtype.name not in WEIGHT_DTYPES:
        raise ShapeError(f"w must be one of {', '.join(WEIGHT_DTYPES)}, got {w.dtype.name}")
    if w.rank != 2:
        raise ShapeError(f"w must be 2-D [N, K], got {shape_str(w.shape)}")
    _code_type(attrs["wtype"], w, "wtype")
    check_dim(x.shape[-1], w.shape[1], "x.shape[-1] vs w.shape[1] (K)")
    _check_weight_params(w, scale, zero, attrs["group"])
    check_linear_bias(bias, w.shape[0])
    if x.dtype.is_int and attrs["act"] != "none":
        raise ShapeError(f"act={attrs['act']!r} needs float x; integer x is already quantised")
    if not 2 <= attrs["abits"] <= 16:
        raise ShapeError(f"abits must be in 2..16, got {attrs['abits']}")
    out = x.dtype if x.dtype.is_float else dt.get(attrs["out_dtype"])
    return [TensorType(out, tuple(x.shape[:-1]) + (w.shape[0],))]


def dequant_weight(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group: int,
                   fp4: bool) -> torch.Tensor:
    """Wd = (to_real(w) - zero) * scale for w [N, K], per channel or per group along K; formed
    in float32 (float64 with an f64 scale), like ``dequantize``."""
    cd = compute_dtype(scale)
    k = w.shape[1]
    s = scale.to(cd)
    if group > 0:
        s = s.repeat_interleave(group, dim=1)[:, :k]
    else:
        s = s.unsqueeze(1)
    r = _real(w, fp4, cd)
    if zero is not None:
        z = _real(zero, fp4, cd)
        r = r - (z.repeat_interleave(group, dim=1)[:, :k] if group > 0 else z.unsqueeze(1))
    return r * s


def dynamic_quant(x: torch.Tensor, mode: str, abits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic quantisation of x [..., K]: (codes as floats, scale broadcastable to
    x). Scale = absmax / (2^(abits-1) - 1) per row ("per_token") or over all of x
    ("per_tensor"); an all-zero row / tensor gets scale 1."""
    cd = compute_dtype(x)
    xc = x.to(cd)
    qmax = (1 << (abits - 1)) - 1
    if xc.numel() == 0:
        # nothing to scale (an empty batch): amax over no elements is refused by torch
        amax = xc.new_zeros(xc.shape[:-1] + (1,) if mode == "per_token" else ())
    else:
        amax = xc.abs().amax(dim=-1, keepdim=True) if mode == "per_token" else xc.abs().amax()
    # a scale that underflows to 0 (amax < qmax * the smallest subnormal) counts as none: the
    # row's codes are then 0 instead of x / 0
    sx = amax / qmax
    sx = torch.where(sx > 0, sx, torch.ones_like(sx))
    return torch.round(xc / sx).clamp(-qmax, qmax), sx


def _qlinear_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, scale = ins[0], ins[1], ins[2]
    zero = ins[3] if len(ins) > 3 else None
    bias = ins[4] if len(ins) > 4 else None
    wd = dequant_weight(w, scale, zero, attrs["group"], attrs["wtype"] == "f4e2m1").to(torch.float64)
    f64 = torch.float64
    if not x.is_floating_point():
        out = dt.get(attrs["out_dtype"]).container
        y = x.to(f64) @ wd.T
    elif attrs["act"] == "none":
        out = x.dtype
        y = x.to(f64) @ wd.T
    else:
        out = x.dtype
        qx, sx = dynamic_quant(x, attrs["act"], attrs["abits"])
        y = (qx.to(f64) @ wd.T) * sx.to(f64)
    if bias is not None:
        y = y + bias.to(f64)
    return y.to(out)


def _qlinear_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    x, w = ins[0], ins[1]
    t = tokens(x)
    n, k = (sympy.sympify(d) for d in w.shape)
    flops = 2 * t * n * k + 2 * n * k                       # GEMM + one dequantisation of W
    if attrs["act"] != "none":
        flops += 4 * t * k                                  # absmax, divide, round, clamp
    if len(ins) > 4 and ins[4] is not None:
        flops += t * n
    # io_bytes counts every operand at its packed width (4-bit weights: half a byte each).
    return Cost(flops, io_bytes(ins, outs))


defop("qlinear", family="quant", inputs=(3, 5), input_names=("x", "w", "w_scale", "w_zero", "bias"),
      shape=_qlinear_shape, reference=_qlinear_ref, cost=_qlinear_cost,
      attrs={"group": AttrSpec("int", 0), "act": AttrSpec("str", "none", ("none", "per_token", "per_tensor")),
             "abits": AttrSpec("int", 8), "out_dtype": AttrSpec("str", "f32", REAL_DTYPES),
             "wtype": AttrSpec("str", None, WEIGHT_DTYPES)},
      doc="qlinear(x, w, w_scale, w_zero?, bias?)[group, act, abits, out_dtype, wtype] -> "
          "[..., N]. w is [N, K] codes of i8/u8/i4/u4/i16 or float codes f8e4m3/f8e5m2/f4e2m1 "
          "(sub-byte codes unpacked here, one per byte; packing is a storage concern, but the "
          "cost counts packed bits). w_scale is [N] (group 0, per output channel) or "
          "[N, ceil(K/group)] (group-wise along K, last group may be short); w_zero (optional) has "
          "w_scale's shape and w's dtype or a float dtype; bias is [N]. Wd = (to_real(w) - w_zero) "
          "* w_scale, formed in float32 (float64 for an f64 scale) exactly as `dequantize` would. "
          "x [..., K]: if x is integer (codes from a producer's quantize, activation scale "
          "pre-executed into the weights as in OutlierTune) y = to_real(x) @ Wd^T + bias, output "
          "dtype `out_dtype`; act must be 'none'. If x is float: act='none' gives y = x @ Wd^T + "
          "bias (weight-only); act='per_token'/'per_tensor' first quantises x dynamically and "
          "symmetrically to abits: sx = absmax/(2^(abits-1)-1) per row / over the whole tensor "
          "(absmax 0 -> sx 1), qx = clamp(round_half_even(x/sx), -qmax, qmax), computed in float32 "
          "(float64 for f64 x), then y = (qx @ Wd^T) * sx + bias; output dtype = x's. All products "
          "accumulate in float64 and are rounded once to the output dtype. `wtype` names w's "
          "dtype; it must match when set and is required for f4e2m1 weights.")


# ---- bcq_linear ----------------------------------------------------------------------------
def _bcq_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, b, alphas = require(ins[0], "x"), require(ins[1], "binaries"), require(ins[2], "alphas")
    bias = ins[3] if len(ins) > 3 else None
    require_real(x, "x")
    if x.rank < 1:
        raise ShapeError("x must have rank >= 1")
    if b.dtype is not dt.boolean or b.rank != 3:
        raise ShapeError(f"binaries must be bool [Q, N, K], got {b}")
    q, n, k = b.shape
    check_dim(x.shape[-1], k, "x.shape[-1] vs binaries.shape[2] (K)")
    require_real(alphas, "alphas")
    group = attrs["group"]
    if group < 0:
        raise ShapeError(f"group must be >= 0, got {group}")
    want = (q, n) if group == 0 else (q, n, ceil_div(k, group))
    if alphas.rank != len(want) or not all(dims_equal(a, c) for a, c in zip(alphas.shape, want)):
        raise ShapeError(f"alphas must have shape {shape_str(want)} for group {group}, "
                         f"got {shape_str(alphas.shape)}")
    check_linear_bias(bias, n)
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (n,))]


def bcq_weight(binaries: torch.Tensor, alphas: torch.Tensor, group: int) -> torch.Tensor:
    """W = sum_i alphas[i] * (+1 where binaries[i] else -1), in float64, shape [N, K]."""
    k = binaries.shape[2]
    a = alphas.to(torch.float64)
    a = a.repeat_interleave(group, dim=2)[:, :, :k] if group > 0 else a.unsqueeze(2)
    signs = binaries.to(torch.float64) * 2 - 1
    return (a * signs).sum(dim=0)


def _bcq_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, b, alphas = ins[0], ins[1], ins[2]
    bias = ins[3] if len(ins) > 3 else None
    y = x.to(torch.float64) @ bcq_weight(b, alphas, attrs["group"]).T
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(x.dtype)


def _bcq_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    x, b = ins[0], ins[1]
    q, n, k = (sympy.sympify(d) for d in b.shape)
    t = tokens(x)
    flops = 2 * t * n * k * q                   # one signed add and one scaled add per bit-plane
    if len(ins) > 3 and ins[3] is not None:
        flops += t * n
    # Sign bits are stored packed, 8 per byte, although the IR holds one bool per byte.
    byts = io_bytes([x, ins[2]] + list(ins[3:]), outs) + q * n * k / 8
    return Cost(flops, byts)


defop("bcq_linear", family="quant", inputs=(3, 4), input_names=("x", "binaries", "alphas", "bias"),
      shape=_bcq_shape, reference=_bcq_ref, cost=_bcq_cost, attrs={"group": AttrSpec("int", 0)},
      doc="bcq_linear(x, binaries, alphas, bias?)[group] -> x's dtype, [..., N]. Binary-coded "
          "weights (ShiftAddLLM): binaries is bool [Q, N, K] (True = +1, False = -1), alphas is "
          "[Q, N] (group 0: one alpha per bit-plane and output row) or [Q, N, ceil(K/group)] "
          "(one per group of `group` input columns, last group may be short); W = sum_i "
          "alphas[i] * B_i, built in float64; y = x @ W^T + bias accumulated in float64 and "
          "rounded once to x's dtype. x [..., K] and alphas, bias ([N]) are float. Sign bits are "
          "held one per byte here; the cost counts them packed (Q*N*K/8 bytes).")
