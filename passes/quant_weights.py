"""``quant_weights(format, group, method, sym)``: weight-only quantisation of ``linear``.

Every ``linear`` with a constant 2-D weight becomes ``qlinear(x, codes, scale, zero?, bias)``
with ``act="none"`` (float activations, weights dequantised on the fly):

- integer formats (ALGORITHMS.md §2): ``int4``/``int3``/``int8``, group-wise RTN along K.
  Asymmetric (default): Δ = (max − min)/(2^b − 1), z = clamp(−round(min/Δ), 0, 2^b − 1),
  codes = clamp(round(w/Δ) + z, 0, 2^b − 1) in u4 (int4, int3) or u8 (int8), zero in the
  codes' dtype. Symmetric: i4/i8 codes, no zero. The quantiser is computed exactly like
  :func:`~scalefold.passes.awq.fake_quant_int`, so qlinear's dequantisation reproduces it
  bit for bit.
- ``method="awq"``: the ``awq_scales`` search first, then the AWQ clip search per output
  channel and group (range shrunk by 1 − i/20, i = 0..9, least output error from the
  calibration Gram matrix), then the quantiser above.
- float formats (ALGORITHMS.md §4): ``fp8_e4m3`` / ``fp4_e2m1``, a per-channel (group 0) or
  per-group scale mapping max|w| to the format's largest value; ``method="search"`` instead
  picks the clip (scale × linspace(0.01, 1.2, 100)) with the least layer-output L2 per layer.
"""
from __future__ import annotations

from typing import Any

import torch

from ..ir import dtypes as dt
from ..ir.graph import Graph, Node
from .awq import awq_scales
from .calibrate import stats_for
from .counters import bump
from .pipeline import register_pass
from .quant_common import linear_bias, quantizable_linear

PASS = "quant_weights"
INT_BITS = {"int3": 3, "int4": 4, "int8": 8}
FP_MAX = {"fp8_e4m3": 448.0, "fp4_e2m1": 6.0}
FP_DTYPE = {"fp8_e4m3": dt.f8e4m3, "fp4_e2m1": dt.f4e2m1}


# ---- integer quantiser ---------------------------------------------------------------------------
def _groups(k: int, group: int) -> int:
    """The group size actually used along K (K itself for per-row)."""
    return k if group <= 0 or group >= k else group


def _grouped(w: torch.Tensor, g: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K/g), g] padded by repeating each row's last group's first element
    (padding never changes a group's min/max and is dropped again)."""
    n, k = w.shape
    ng = -(-k // g)
    pad = ng * g - k
    if pad:
        last = w[:, (ng - 1) * g:(ng - 1) * g + 1].expand(n, pad)
        w = torch.cat([w, last], 1)
    return w.reshape(n, ng, g)


def int_quantize(w: torch.Tensor, bits: int, group: int, sym: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Group-wise RTN integer quantisation of ``w`` [N, K] (float32 arithmetic, exactly as
    :func:`fake_quant_int`). Returns (codes int64 [N, K], Δ float32 [N, G], zero int64 [N, G]
    or None for sym), G = ceil(K / group) (1 for group <= 0)."""
    n, k = w.shape
    g = _groups(k, group)
    x = _grouped(w.to(torch.float32), g)
    if sym:
        qmax = 2 ** (bits - 1) - 1
        delta = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
        codes = torch.clamp(torch.round(x / delta), -qmax - 1, qmax)
        zero = None
    else:
        qmax = 2 ** bits - 1
        mn, mx = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        delta = (mx - mn).clamp(min=1e-5) / qmax
        z = torch.clamp(-torch.round(mn / delta), 0, qmax)
        codes = torch.clamp(torch.round(x / delta) + z, 0, qmax)
        zero = z.squeeze(-1).to(torch.int64)
    codes = codes.reshape(n, -1)[:, :k].to(torch.int64)
    return codes, delta.squeeze(-1), zero


def int_dequantize(codes: torch.Tensor, delta: torch.Tensor, zero: torch.Tensor | None, group: int
                   ) -> torch.Tensor:
    """(codes − zero)·Δ in float32, group-wise along K (the inverse of :func:`int_quantize`)."""
    k = codes.shape[1]
    g = _groups(k, group)
    r = codes.to(torch.int64)
    if zero is not None:
        r = r - zero.repeat_interleave(g, 1)[:, :k]
    return r.to(torch.float32) * delta.repeat_interleave(g, 1)[:, :k]


def clip_search(w: torch.Tensor, gram: torch.Tensor, bits: int, group: int, sym: bool = False,
                grid: int = 20, steps: int = 10) -> torch.Tensor:
    """AWQ clip search: per output channel and group, the range max|w| shrunk by (1 − i/grid),
    i = 0..steps−1, whose quantisation error d = Q(clip(w)) − w gives the least output error
    d G_gg dᵀ (G_gg: the group's diagonal block of the calibration Gram matrix XᵀX/rows).
    Returns the clipped weight (float32 [N, K]) to quantise."""
    n, k = w.shape
    g = _groups(k, group)
    wf = w.to(torch.float32)
    xg = _grouped(wf, g)                                      # [N, G, g]
    ng = xg.shape[1]
    gp = torch.zeros(ng, g, g, dtype=torch.float32)           # padded columns get zero weight
    for j in range(ng):
        lo, hi = j * g, min((j + 1) * g, k)
        gp[j, :hi - lo, :hi - lo] = gram[lo:hi, lo:hi]
    amax = xg.abs().amax(-1, keepdim=True)
    best_err = torch.full((n, ng), float("inf"))
    best = xg.clone()
    for i in range(steps):
        m = amax * (1 - i / grid)
        c = torch.clamp(xg, -m, m)
        q = int_dequantize(*int_quantize(c.reshape(n, -1), bits, g, sym), g).reshape(n, ng, g)
        d = q - xg
        err = torch.einsum("ngi,gij,ngj->ng", d, gp, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], c, best)
    return best.reshape(n, -1)[:, :k]


# ---- float formats -------------------------------------------------------------------------------
def fp_quantize(w: torch.Tensor, fmt: str, group: int, clip: torch.Tensor | float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale so (clip · max|w|) of each row/group maps to the format's largest value, then round
    to the format. Returns (codes in the format's container [N, K], scale float32 [N, G])."""
    n, k = w.shape
    g = _groups(k, group)
    x = _grouped(w.to(torch.float32), g)
    amax = x.abs().amax(-1) * clip
    scale = torch.where(amax > 0, amax / FP_MAX[fmt], torch.ones_like(amax))
    y = (x / scale[..., None]).clamp(-FP_MAX[fmt], FP_MAX[fmt]).reshape(n, -1)[:, :k]
    codes = dt.to_container(y, FP_DTYPE[fmt])
    return codes, scale


def fp_dequantize(codes: torch.Tensor, scale: torch.Tensor, fmt: str, group: int) -> torch.Tensor:
    k = codes.shape[1]
    g = _groups(k, group)
    return dt.to_real(codes, FP_DTYPE[fmt]) * scale.repeat_interleave(g, 1)[:, :k]


def fp_search(w: torch.Tensor, gram: torch.Tensor | None, fmt: str, group: int, points: int = 100
              ) -> float:
    """LLM-FP4 clipping search: the factor c in linspace(0.01, 1.2, points) of the max-based
    scale with least layer-output L2 tr(D G Dᵀ) (plain weight L2 without a Gram matrix)."""
    best, best_c = float("inf"), 1.0
    wf = w.to(torch.float32)
    for c in torch.linspace(0.01, 1.2, points).tolist():
        d = fp_dequantize(*fp_quantize(wf, fmt, group, c), fmt, group) - wf
        err = float(((d @ gram) * d).sum()) if gram is not None else float((d * d).sum())
        if err < best:
            best, best_c = err, c
    return best_c


# ---- the pass ------------------------------------------------------------------------------------
def _replace(graph: Graph, node: Node, codes: torch.Tensor, codes_dt: dt.DType, scale: torch.Tensor,
             zero: torch.Tensor | None, group: int, wtype: str | None) -> None:
    x, out = node.inputs[0], node.outputs[0]
    k = node.inputs[1].shape[1]
    per_row = group <= 0
    if per_row:
        scale = scale[:, 0]
        zero = zero[:, 0] if zero is not None else None
    wname = node.inputs[1].name
    nm = (lambda s: f"{wname}.{s}" if wname else None)
    cq = codes if codes_dt in (dt.f4e2m1, dt.f8e4m3) else dt.to_container(codes, codes_dt)
    wq = graph.add_const(cq, codes_dt, name=nm("q"))
    ws = graph.add_const(scale.to(torch.float32).contiguous(), dt.f32, name=nm("scale"))
    wz = graph.add_const(dt.to_container(zero, codes_dt), codes_dt, name=nm("zero")) if zero is not None else None
    b = linear_bias(node)
    bv = graph.add_const(b.to(out.dtype.container), out.dtype) if b is not None else None
    attrs: dict[str, Any] = {"act": "none", "group": 0 if per_row else min(group, k)}
    if wtype is not None:
        attrs["wtype"] = wtype
    ins = [x, wq, ws, wz, bv]
    while ins[-1] is None:
        ins.pop()
    new = graph.create_node("qlinear", ins, attrs, name=node.name)
    graph.insert_before(node, new)
    graph.replace_all_uses(out, new.outputs[0])
    graph.remove(node)


@register_pass(PASS, needs_calibration=True)
def quant_weights(graph: Graph, calibration: Any = None, format: str = "int4", group: int = 128,
                  method: str = "rtn", sym: bool = False, grid: int = 20) -> Graph:
    """Weight-only quantisation of every ``linear`` with constant 2-D weight (and constant or no
    bias) into ``qlinear[act="none"]``.

    Options: ``format`` int3|int4|int8|fp8_e4m3|fp4_e2m1; ``group`` (along K, 0 = per output
    channel; a last short group is its own group); ``method`` rtn|awq (int formats; needs
    ``calibration`` batches) or rtn|search (fp formats; search uses calibration when given);
    ``sym`` symmetric integer codes (i4/i8, no zero point).
    Pre: float graph. Post: linears replaced; the function changes by the quantisation error.
    Rules (counters): ``<format>`` per linear quantised, ``clipped`` per linear after the AWQ
    clip search, ``searched`` per fp linear whose clip was searched.
    """
    if format not in INT_BITS and format not in FP_MAX:
        raise ValueError(f"quant_weights: unknown format {format!r}; want one of "
                         f"{', '.join([*INT_BITS, *FP_MAX])}")
    if format in INT_BITS and method not in ("rtn", "awq"):
        raise ValueError(f"quant_weights: method for {format} must be rtn or awq, got {method!r}")
    if format in FP_MAX and method not in ("rtn", "search"):
        raise ValueError(f"quant_weights: method for {format} must be rtn or search, got {method!r}")
    bits = INT_BITS.get(format, 0)
    if method == "awq":
        if calibration is None:
            raise ValueError("quant_weights(method=awq) needs calibration=...")
        graph = awq_scales(graph, calibration, bits=bits, group=group, grid=grid, sym=sym)
    nodes = [n for n in graph.nodes if quantizable_linear(n)]
    grams: dict[int, torch.Tensor] = {}
    if method == "awq" or (method == "search" and calibration is not None):
        xs: dict[int, Any] = {}
        for n in nodes:
            xs.setdefault(id(n.inputs[0]), n.inputs[0])
        st = stats_for(graph, calibration, list(xs.values()), gram=list(xs.values()))
        for key, v in xs.items():
            cs = st[v]
            grams[key] = (cs.gram / max(cs.rows, 1)).to(torch.float32)
    for n in nodes:
        w = n.inputs[1].const.to(torch.float32)
        if format in INT_BITS:
            if method == "awq":
                w = clip_search(w, grams[id(n.inputs[0])], bits, group, sym, grid)
                bump(PASS, "clipped")
            codes, delta, zero = int_quantize(w, bits, group, sym)
            cdt = (dt.i4 if bits <= 4 else dt.i8) if sym else (dt.u4 if bits <= 4 else dt.u8)
            _replace(graph, n, codes, cdt, delta, zero, group, None)
        else:
            clip = 1.0
            if method == "search":
                clip = fp_search(w, grams.get(id(n.inputs[0])), format, group)
                bump(PASS, "searched")
            codes, scale = fp_quantize(w, format, group, clip)
            fdt = FP_DTYPE[format]
            _replace(graph, n, codes, fdt, scale, None, group, fdt.name)
        bump(PASS, format)
    return graph


__all__ = ["clip_search", "fp_dequantize", "fp_quantize", "fp_search", "int_dequantize", "int_quantize",
           "quant_weights"]
