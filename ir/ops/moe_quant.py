"""The quantised mixture-of-experts op ``qmoe`` (family "moe").

``qmoe`` is ``moe`` whose expert matrices are held as weight-only quantised codes, as
``quant_weights`` produces them. Its reference dequantises every expert exactly like
``qlinear``'s :func:`~scalefold.ir.ops.quant.dequant_weight` and then runs ``moe``'s own
reference, so routing, dispatch and rounding are shared with ``moe`` by construction.

Operands (None = omitted optional operand), 10 to 12 of them::

    0 x          [..., H] float          1 router_w   [E, H], x's dtype (stays float)
    2 gate_q?    [E, I, H] codes         3 gate_s?    [E, I, G_H]      4 gate_z?  [E, I, G_H]
    5 up_q       [E, I, H] codes         6 up_s       [E, I, G_H]      7 up_z?    [E, I, G_H]
    8 down_q     [E, H, I] codes         9 down_s     [E, H, G_I]     10 down_z?  [E, H, G_I]
    11 router_bias? [E]

G_K = ceil(K / group) for group > 0 (the last group may be short), 1 for group 0 (per output
channel). gate_q / gate_s are present exactly when ``gated``; gate_z only with gate_q.
"""
from __future__ import annotations

from typing import Sequence

import sympy
import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, dims_equal
from .common import require
from .lowrank import ACTIVATIONS
from .moe import _moe_ref, _moe_shape
from .quant import REAL_DTYPES, ceil_div, dequant_weight, require_real, shape_str, tokens
from .registry import AttrSpec, Cost, defop, io_bytes

CODE_DTYPES = ("u4", "i4", "u8", "i8", "f4e2m1", "f8e4m3")
MATS = ("gate", "up", "down")


def _opt(ins: Sequence, i: int):
    return ins[i] if len(ins) > i else None


def _groups(k: Dim, group: int) -> Dim:
    return 1 if group == 0 else ceil_div(k, group)


def _check_mat(name: str, q: TensorType, s: TensorType | None, z: TensorType | None,
               e: Dim, n: Dim, k: Dim, group: int) -> None:
    """One quantised expert matrix: codes [E, N, K], scale / zero [E, N, G_K]."""
    if q.dtype.name not in CODE_DTYPES:
        raise ShapeError(f"{name}_q must be one of {', '.join(CODE_DTYPES)}, got {q.dtype.name}")
    want = (e, n, k)
    if q.rank != 3 or not all(dims_equal(a, b) for a, b in zip(q.shape, want)):
        raise ShapeError(f"{name}_q must be {shape_str(want)} (experts, out, in), got {shape_str(q.shape)}")
    if s is None:
        raise ShapeError(f"input {name}_s is required with {name}_q")
    require_real(s, f"{name}_s")
    sw = (e, n, _groups(k, group))
    if s.rank != 3 or not all(dims_equal(a, b) for a, b in zip(s.shape, sw)):
        raise ShapeError(f"{name}_s must be {shape_str(sw)} for group {group}, got {shape_str(s.shape)}")
    if z is not None:
        if z.dtype is not q.dtype and z.dtype.name not in REAL_DTYPES:
            raise ShapeError(f"{name}_z dtype must be {name}_q's ({q.dtype.name}) or a float type, "
                             f"got {z.dtype.name}")
        if z.rank != 3 or not all(dims_equal(a, b) for a, b in zip(z.shape, sw)):
            raise ShapeError(f"{name}_z shape {shape_str(z.shape)} != {name}_s shape {shape_str(s.shape)}")


def _qmoe_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, router = require(ins[0], "x"), require(ins[1], "router_w")
    gq, gs, gz = ins[2], ins[3], ins[4]
    uq, us, uz = require(ins[5], "up_q"), ins[6], ins[7]
    dq, ds, dz = require(ins[8], "down_q"), ins[9], _opt(ins, 10)
    rbias = _opt(ins, 11)
    group = attrs["group"]
    if group < 0:
        raise ShapeError(f"group must be >= 0, got {group}")
    if x.rank < 1:
        raise ShapeError("x must have rank >= 1 ([..., H])")
    if router.rank != 2:
        raise ShapeError(f"router_w must be [E, H], got {shape_str(router.shape)}")
    if uq.rank != 3:
        raise ShapeError(f"up_q must be [E, I, H], got {shape_str(uq.shape)}")
    e, h, i = router.shape[0], x.shape[-1], uq.shape[1]
    if attrs["gated"]:
        if gq is None:
            raise ShapeError("gated=true needs gate_q / gate_s")
        _check_mat("gate", gq, gs, gz, e, i, h, group)
    elif gq is not None or gs is not None or gz is not None:
        raise ShapeError("gated=false takes no gate_q / gate_s / gate_z (pass None)")
    _check_mat("up", uq, us, uz, e, i, h, group)
    _check_mat("down", dq, ds, dz, e, h, i, group)
    codes = {t.dtype.name for t in (gq, uq, dq) if t is not None}
    if len(codes) != 1:
        raise ShapeError(f"gate_q, up_q and down_q must share one code dtype, got {', '.join(sorted(codes))}")
    code = codes.pop()
    wtype = attrs["wtype"]
    if wtype and wtype != code:
        raise ShapeError(f"attribute wtype={wtype!r} does not match the code dtype {code}")
    if code == "f4e2m1" and not wtype:
        raise ShapeError("f4e2m1 codes need attribute wtype=\"f4e2m1\" (the reference sees only the "
                         "uint8 container)")
    # Routing, top_k, router_bias and hidden-size checks are moe's own: run its rule on float
    # stand-ins of the expert matrices (same shapes, x's dtype).
    as_float = lambda t: None if t is None else TensorType(x.dtype, t.shape)  # noqa: E731
    return _moe_shape([x, router, as_float(gq), as_float(uq), as_float(dq), rbias], attrs)


def dequant_experts(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, group: int,
                    fp4: bool) -> torch.Tensor:
    """[E, N, K] codes -> float32 (float64 for an f64 scale) [E, N, K]: expert by expert
    :func:`dequant_weight` (per-channel group 0 reads the [E, N, 1] scale as [N])."""
    out = []
    for e in range(q.shape[0]):
        se = s[e] if group > 0 else s[e][:, 0]
        ze = None if z is None else (z[e] if group > 0 else z[e][:, 0])
        out.append(dequant_weight(q[e], se, ze, group, fp4))
    return torch.stack(out) if out else torch.zeros(q.shape, dtype=torch.float32, device=q.device)


def _qmoe_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, router = ins[0], ins[1]
    fp4, group = attrs["wtype"] == "f4e2m1", attrs["group"]
    w = {}
    for j, m in enumerate(MATS):
        q, s, z = ins[2 + 3 * j], _opt(ins, 3 + 3 * j), _opt(ins, 4 + 3 * j)
        w[m] = None if q is None else dequant_experts(q, s, z, group, fp4)
    return _moe_ref([x, router, w["gate"], w["up"], w["down"], _opt(ins, 11)], attrs)


def _qmoe_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    x, router, uq = ins[0], ins[1], ins[5]
    rbias = _opt(ins, 11)
    t = tokens(x)
    e, h = (sympy.sympify(d) for d in router.shape)
    f = sympy.sympify(uq.shape[1])
    k = attrs["top_k"]
    n_mats = 3 if ins[2] is not None else 2
    touched = sympy.Min(e, t * k)
    flops = (2 * t * e * h + 4 * t * e
             + t * k * (2 * n_mats * h * f + 8 * f + 2 * h)
             + touched * 2 * n_mats * h * f)                  # dequantising each touched expert once
    # Codes count at their packed width (TensorType.nbytes); only touched experts are read.
    expert = sum((t_.nbytes() for t_ in ins[2:11] if t_ is not None), sympy.Integer(0))
    return Cost(flops, io_bytes([x, router, rbias], outs) + expert * touched / e)


defop("qmoe", family="moe", inputs=(10, 12),
      input_names=("x", "router_w", "gate_q", "gate_s", "gate_z", "up_q", "up_s", "up_z",
                   "down_q", "down_s", "down_z", "router_bias"),
      shape=_qmoe_shape, reference=_qmoe_ref, cost=_qmoe_cost,
      attrs={"top_k": AttrSpec("int"), "normalize": AttrSpec("bool", True),
             "activation": AttrSpec("str", "silu", ACTIVATIONS), "gated": AttrSpec("bool", True),
             "scoring": AttrSpec("str", "softmax", ("softmax", "sigmoid")),
             "group": AttrSpec("int", 0), "wtype": AttrSpec("str", None, CODE_DTYPES)},
      doc="qmoe(x, router_w, gate_q?, gate_s?, gate_z?, up_q, up_s, up_z?, down_q, down_s, down_z?, "
          "router_bias?)[top_k, normalize, activation, gated, scoring, group, wtype] -> x's dtype and "
          "shape. `moe` with weight-only quantised experts; the router_w [E, H] stays float in x's "
          "dtype. Each expert matrix m in gate [E, I, H] (present iff gated), up [E, I, H], down "
          "[E, H, I] is given as codes m_q [E, N, K] (one code per byte: u4/i4/u8/i8/f8e4m3/f4e2m1, "
          "the same dtype for all three; costs count them packed), scale m_s [E, N, G] (float) and "
          "optional zero m_z [E, N, G] (m_q's dtype or float), G = ceil(K/group) along K (last "
          "group may be short) or 1 for group 0 (per output channel). Expert e's matrix is "
          "W_e = (to_real(m_q[e]) - m_z[e]) * m_s[e], group-wise, formed in float32 (float64 for "
          "an f64 scale) exactly as qlinear's dequant_weight; then y = moe(x, router_w, W_gate, "
          "W_up, W_down, router_bias) with moe's semantics and attrs (top_k, normalize, "
          "activation, gated, scoring): routing in x's dtype widened to float32, experts in the "
          "widened dtype, rounded once to x's dtype. `wtype` names the code dtype; it must match "
          "when set and is required for f4e2m1 codes.")
