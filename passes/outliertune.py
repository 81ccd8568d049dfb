"""``outliertune(bits=8)``: per-channel activation quantisation with the dequantisation
pre-executed into the weights (OutlierTune, ALGORITHMS.md §1), and the ``w8a8`` baselines.

For every tensor h produced by a LayerNorm / RMSNorm (last axis) and read by linears:

1. Symmetrisation: z_j = mean over calibration samples of (max_t h_tj + min_t h_tj)/2
   (:class:`~scalefold.passes.quant_common.RangeStats`). The linears see h' = h - z and
   every compensated consumer takes b ← b + W z (a bias is created where there was none):
   - ``fold_shift_ln``: a LayerNorm whose output is read only by linears absorbs it,
     β ← β - z (β created if absent); *every* linear reader is compensated (also one kept
     in float by an override), and the graph is unchanged in float;
   - ``shift_in_quantize``: otherwise (post-LN residual as in BERT, RMSNorm without β, a
     graph output) the norm stays as it is and ``sub(h, z)`` feeds the quantize step (both
     elementwise: they fuse into the norm's row kernel); only the quantised readers are
     compensated, the other readers keep h. The refusal is a near-miss of ``fold_shift_ln``
     and counts as its reason (``post_ln_residual``, ``rms_norm_no_bias``, ``graph_output``,
     ``non_linear_consumer``, ``non_const_norm``).
2. Recalibration without a second pass: m_j = max_t |h_tj - z_j| = max(|min_j - z_j|,
   |max_j - z_j|) over all calibration rows (exact: the extreme of |h - z| on [min, max] is
   at an end); floored at 1e-5·max_j m_j so that a dead channel never divides by zero.
3. s_j = m_j / (2^(bits-1) - 1) (rounded to the f32 the graph holds); ``quantize(h', s)``
   [i8, axis=-1, bits] emits the codes q = clamp(round(h'/s)) right after the norm (Int6
   codes in i8 through ``bits``; the clamp is the op's signed range, e.g. [-32, 31], which
   differs from ±qmax only beyond the calibrated range). W' = W·diag(s) is quantised per
   output channel (symmetric int8, or ``weight="per_channel_asym"`` with an int8 zero
   point), and the linear becomes ``qlinear(q, Q(W'), Δw, zero?, b')`` with integer x: the
   epilogue does Δw[o]·acc + b'. Rule ``static_per_channel`` per linear.

Linears whose input is not a norm output (attention output projection, FC2, a pooler) get
dynamic quantisation: ``qlinear`` with act="per_token" (``dynamic`` option), ``bits``-bit
activations and per-channel weights (rule ``dynamic_per_token`` / ``dynamic_per_tensor``;
the static path's near-miss reason ``not_norm_fed``). ``act="per_token"|"per_tensor"``
makes norm-fed linears dynamic too (symmetrised W8A8: the shift still applies).

``overrides`` maps a linear (weight-name substring or index) to ``"float"`` (rule
``kept_float``) or other bits (see :func:`~scalefold.passes.quant_common.parse_overrides`),
e.g. ``overrides={"output.dense": 8}`` keeps the FC2 inputs at 8 bits in an Int6 model.
``quantize=False`` applies only the symmetrisation (a debugging aid: exact in float).
"""
from __future__ import annotations

import warnings

from typing import Any

import torch

from ..ir import dtypes as dt
from ..ir.errors import OptionError
from ..ir.graph import Graph, Node, Value
from .counters import bump
from .pipeline import register_pass
from .quant_common import (WEIGHT_MODES, RangeStats, dynamic_qlinear, floored, linear_bias, norm_producer,
                           observe_ranges, override_for, parse_overrides, qmax, quantizable_linear,
                           replace_with_qlinear)
from .rewrite import report_near_miss
from .wq_options import check_all_used

PASS = "outliertune"


def _check_keys(ovr: list, groups: list, where: str) -> None:
    """Every override key must select a linear (by index, node or weight name): a typo would
    otherwise quantise the layer it meant to keep."""
    linears = [node for node, _ in sorted((m for _, ms in groups for m in ms), key=lambda m: m[1])]
    check_all_used([k for k, _ in ovr], linears, [], where)
ACTS = ("per_channel", "per_token", "per_tensor")


def _group_linears(graph: Graph, where: str) -> list[tuple[Value, list[tuple[Node, int]]]]:
    """Quantisable linears grouped by their activation input, in graph order; each linear
    carries its index among all quantisable linears (the key of integer overrides). None is a
    warning naming ``where``: a repeated pass would otherwise drop its settings silently."""
    groups: dict[int, tuple[Value, list[tuple[Node, int]]]] = {}
    idx = 0
    for n in graph.nodes:
        if quantizable_linear(n):
            groups.setdefault(id(n.inputs[0]), (n.inputs[0], []))[1].append((n, idx))
            idx += 1
    if not groups:
        warnings.warn(f"{where}: the graph has no float linear with constant weights left to "
                      f"quantise; it is returned unchanged", stacklevel=4)
    return list(groups.values())


def fold_refusal(graph: Graph, x: Value, norm: Node, readers: list[Node]) -> tuple[str, str] | None:
    """Why the shift on norm output ``x`` cannot go into the norm (reason, detail), or None
    when it can: a LayerNorm with constant γ/β whose every reader is one of the linear
    ``readers`` (each compensable through its bias)."""
    if norm.op == "rms_norm":
        return "rms_norm_no_bias", f"{norm.describe()} has no bias (β) to absorb the shift"
    if any(o is x for o in graph.outputs):
        return "graph_output", f"the output of {norm.describe()} is a graph output"
    if any(a is not None and not a.is_const for a in norm.inputs[1:]):
        return "non_const_norm", f"{norm.describe()} has a non-constant weight or bias"
    ok = {id(n) for n in readers}
    blockers = [n for n, i in x.uses if id(n) not in ok or i != 0]
    if blockers:
        ops = ", ".join(sorted({b.op for b in blockers}))
        if any(b.op in ("add", "sub") for b in blockers):
            return "post_ln_residual", (f"the output of {norm.describe()} also feeds a residual {ops}; "
                                        "shifting it would change the residual path")
        return "non_linear_consumer", f"the output of {norm.describe()} is also read by {ops}"
    return None


def fold_shift_into_ln(graph: Graph, norm: Node, z: torch.Tensor) -> None:
    """LayerNorm β ← β - z (new constant; β created when absent)."""
    out = norm.outputs[0]
    beta = norm.inputs[2] if len(norm.inputs) > 2 else None
    new_b = (beta.const.to(torch.float64) if beta is not None else torch.zeros_like(z)) - z
    c = graph.add_const(new_b.to(out.dtype.container), out.dtype,
                        name=f"{beta.name}.shifted" if beta is not None and beta.name else None)
    if len(norm.inputs) > 2:
        graph.set_input(norm, 2, c)
        return
    w = norm.inputs[1] if len(norm.inputs) > 1 else None
    if w is None:
        w = graph.add_const(torch.ones(z.numel(), dtype=out.dtype.container), out.dtype)
    new = graph.create_node(norm.op, [norm.inputs[0], w, c], dict(norm.attrs), name=norm.name)
    graph.insert_before(norm, new)
    graph.replace_all_uses(out, new.outputs[0])
    graph.remove(norm)


def set_linear_bias(graph: Graph, node: Node, b: torch.Tensor) -> Node:
    """Point a ``linear``'s bias at a new constant ``b`` (creating the operand if absent)."""
    out = node.outputs[0]
    c = graph.add_const(b.to(out.dtype.container), out.dtype)
    if len(node.inputs) > 2:
        graph.set_input(node, 2, c)
        return node
    new = graph.create_node("linear", [node.inputs[0], node.inputs[1], c], dict(node.attrs), name=node.name)
    graph.insert_before(node, new)
    graph.replace_all_uses(out, new.outputs[0])
    graph.remove(node)
    return new


def compensated_bias(node: Node, z: torch.Tensor) -> torch.Tensor:
    """b + W z in float64 (b = 0 when the linear has none)."""
    w = node.inputs[1].const.to(torch.float64)
    b = linear_bias(node)
    wz = w @ z
    return wz if b is None else b + wz


def _check_options(bits: int, weight: str, act: str, dynamic: str, wbits: int | None) -> None:
    qmax(bits)
    if wbits is not None:
        qmax(wbits)
    if weight not in WEIGHT_MODES:
        raise OptionError(f"outliertune: weight must be one of {', '.join(WEIGHT_MODES)}, got {weight!r}")
    if act not in ACTS:
        raise OptionError(f"outliertune: act must be one of {', '.join(ACTS)}, got {act!r}")
    if dynamic not in ("per_token", "per_tensor"):
        raise OptionError(f"outliertune: dynamic must be per_token or per_tensor, got {dynamic!r}")


@register_pass("outliertune", needs_calibration=True)
def outliertune(graph: Graph, calibration: Any, bits: int = 8, symmetrize: bool = True,
                weight: str = "per_channel", act: str = "per_channel", overrides: Any = None,
                wbits: int | None = None, dynamic: str = "per_token", quantize: bool = True) -> Graph:
    """OutlierTune W{bits}A{bits} (module docstring).

    Options: ``bits`` 8 or 6 (activation codes; also the weights' unless ``wbits``);
    ``symmetrize`` the per-channel shift; ``weight`` "per_channel" (symmetric) or
    "per_channel_asym"; ``act`` "per_channel" (static, OutlierTune) or a dynamic mode for the
    norm-fed linears; ``dynamic`` the mode of the other linears; ``overrides`` per-layer
    "float" / bits; ``quantize=False`` only symmetrises (exact in float).
    Pre: float graph with constant linear weights; ``calibration`` = batches (per-sample
    mid-ranges), a RangeCalibration of this graph (``quant_common.calibrate_ranges``: measure
    once, quantise several ways) or a Stats / stats path (overall mid-range).
    Post: norm-fed linears are ``qlinear`` with integer x after ``[sub →] quantize``; other
    linears dynamic ``qlinear``; overridden ones float. Bounded error (int8/int6 rounding).
    Rules (counters): fold_shift_ln, shift_in_quantize (per tensor); static_per_channel,
    dynamic_per_token / dynamic_per_tensor, kept_float (per linear); refusal reasons
    (post_ln_residual, rms_norm_no_bias, graph_output, non_linear_consumer, non_const_norm,
    not_norm_fed) with near-misses of fold_shift_ln / static_per_channel.
    """
    _check_options(bits, weight, act, dynamic, wbits)
    sym = weight == "per_channel"
    ovr = parse_overrides(overrides)
    groups = _group_linears(graph, PASS)
    _check_keys(ovr, groups, PASS)
    plans = []
    for x, members in groups:
        settings = []
        for node, idx in members:
            o = override_for(node, idx, ovr)
            settings.append((node, "float" if o == "float" else (o["bits"] if o else bits)))
        plans.append((x, norm_producer(x), settings))

    # Norm-fed tensors with a quantised reader need calibration (ranges for s, shift z).
    calibrated = [x for x, norm, st in plans if norm is not None and any(b != "float" for _, b in st)
                  and (act == "per_channel" or symmetrize)]
    ranges = observe_ranges(graph, calibration, calibrated) if calibrated else {}

    for x, norm, settings in plans:
        if id(x) in ranges:
            _norm_fed(graph, x, norm, settings, ranges[id(x)], symmetrize, act, sym, wbits, quantize)
            continue
        for node, b in settings:
            if b == "float":
                bump(PASS, "kept_float")
                continue
            if not quantize:
                continue
            if norm is None:
                why = f"its input comes from {x.producer.op if x.producer else 'a graph input'}, not a norm"
                report_near_miss(PASS, "static_per_channel", node, f"not_norm_fed: {why}; dynamic {dynamic}")
                bump(PASS, "not_norm_fed")
            mode = dynamic if norm is None or act == "per_channel" else act
            _dynamic(graph, node, mode, b, wbits, sym)
            bump(PASS, f"dynamic_{mode}")
    return graph


def _dynamic(graph: Graph, node: Node, mode: str, abits: int, wbits: int | None, sym: bool) -> None:
    """Dynamic qlinear with ``abits`` activations and ``wbits`` (default abits) weights."""
    replace_with_qlinear(graph, node, node.inputs[0], node.inputs[1].const.to(torch.float64),
                         linear_bias(node), wbits or abits, sym, act=mode, abits=abits)


def _norm_fed(graph: Graph, x: Value, norm: Node, settings: list[tuple[Node, Any]], rs: RangeStats,
              symmetrize: bool, act: str, sym: bool, wbits: int | None, quantize: bool) -> None:
    """Shift (folded or in the quantise step), then static per-channel codes (or, with a
    dynamic ``act``, dynamic qlinears on the shifted tensor) for the readers of norm output x."""
    quantised = [(n, b) for n, b in settings if b != "float"]
    readers = [n for n, _ in settings]
    c = int(x.shape[-1])
    z = rs.shift() if symmetrize else torch.zeros(c, dtype=torch.float64)
    # z as the graph will hold it (f32), so that the compensation matches the shift exactly.
    z = z.to(x.dtype.container).to(torch.float64)
    xs = x
    biases: dict[int, torch.Tensor] = {}
    if symmetrize:
        refusal = fold_refusal(graph, x, norm, readers)
        if refusal is None:
            fold_shift_into_ln(graph, norm, z)
            x = xs = readers[0].inputs[0]       # the norm node may have been replaced
            for n, b in settings:
                if b == "float":
                    set_linear_bias(graph, n, compensated_bias(n, z))
                else:
                    biases[id(n)] = compensated_bias(n, z)
            bump(PASS, "fold_shift_ln")
        else:
            reason, detail = refusal
            report_near_miss(PASS, "fold_shift_ln", norm, f"{reason}: {detail}; shift in the quantise step")
            bump(PASS, reason)
            zc = graph.add_const(z.to(x.dtype.container), x.dtype)
            sub = graph.create_node("sub", [x, zc])
            graph.insert_after(x.producer, sub)
            xs = sub.outputs[0]
            for n, _ in quantised:
                biases[id(n)] = compensated_bias(n, z)
            bump(PASS, "shift_in_quantize")
    for n, b in settings:
        if b == "float":
            bump(PASS, "kept_float")
    if not quantize:
        for n, _ in quantised:
            if xs is not x:
                graph.set_input(n, 0, xs)
            if id(n) in biases:
                set_linear_bias(graph, n, biases[id(n)])
        return
    if act != "per_channel":
        for n, b in quantised:
            replace_with_qlinear(graph, n, xs, n.inputs[1].const.to(torch.float64),
                                 biases.get(id(n), linear_bias(n)), wbits or b, sym, act=act, abits=b)
            bump(PASS, f"dynamic_{act}")
        return
    m = floored(rs.absmax_after(z))
    codes: dict[int, Value] = {}
    for n, b in quantised:
        if b not in codes:
            s = (m / qmax(b)).to(torch.float32)
            sc = graph.add_const(s, dt.f32)
            q = graph.create_node("quantize", [xs, sc], {"dtype": "i8", "axis": -1, "bits": b if b < 8 else 0})
            graph.insert_after(xs.producer, q)
            codes[b] = q.outputs[0]
        s64 = codes[b].producer.inputs[1].const.to(torch.float64)
        w = n.inputs[1].const.to(torch.float64) * s64            # W' = W·diag(s)
        replace_with_qlinear(graph, n, codes[b], w, biases.get(id(n), linear_bias(n)), wbits or b, sym)
        bump(PASS, "static_per_channel")


@register_pass("w8a8")
def w8a8(graph: Graph, act: str = "per_token", bits: int = 8, weight: str = "per_channel",
         overrides: Any = None) -> Graph:
    """The W8A8 baselines: every linear with constant weights becomes a ``qlinear`` with
    per-output-channel ``bits``-bit weights and dynamic symmetric activation quantisation
    (``act`` = per_token: one scale per row; per_tensor: one scale for the whole input).
    ``overrides`` as in ``outliertune``. No calibration.
    Rules (counters): ``per_token`` / ``per_tensor`` per linear, ``kept_float``."""
    qmax(bits)
    if act not in ("per_token", "per_tensor"):
        raise OptionError(f"w8a8: act must be per_token or per_tensor, got {act!r}")
    if weight not in WEIGHT_MODES:
        raise OptionError(f"w8a8: weight must be one of {', '.join(WEIGHT_MODES)}, got {weight!r}")
    ovr = parse_overrides(overrides)
    groups = _group_linears(graph, "w8a8")
    _check_keys(ovr, groups, "w8a8")
    for x, members in groups:
        for node, idx in members:
            o = override_for(node, idx, ovr)
            if o == "float":
                bump("w8a8", "kept_float")
                continue
            dynamic_qlinear(graph, node, act, o["bits"] if o else bits, weight == "per_channel")
            bump("w8a8", act)
    return graph


__all__ = ["compensated_bias", "fold_refusal", "fold_shift_into_ln", "outliertune", "set_linear_bias", "w8a8"]
