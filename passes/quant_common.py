"""Shared pieces of the W8A8-style quantisation passes (``outliertune``, ``w8a8``).

- :class:`RangeStats` / :func:`observe_ranges`: per-channel min/max of activations plus the
  *per-sample* mean of the channel mid-ranges that OutlierTune's symmetrisation needs
  (ALGORITHMS.md §1: z_j = mean over samples of (max_t h_tj + min_t h_tj)/2), which the
  generic :class:`~scalefold.passes.calibrate.ChannelStats` does not keep.
- :func:`quantize_weight`: per-output-channel integer quantisation of a weight matrix,
  symmetric or asymmetric (with an integer zero point in the codes' dtype).
- :func:`replace_with_qlinear` / :func:`dynamic_qlinear`: turning a ``linear`` into ``qlinear``.
- :func:`parse_overrides` / :func:`override_for`: per-layer settings ("float" or other bits)
  selected by weight-name substring or linear index.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..ir import dtypes as dt
from ..ir.errors import CalibrationError, OptionError, ScalefoldError
from ..ir.graph import Graph, Node, Value
from ..ir.ops.common import norm_axis
from ..ir.printer import Namer
from ..runtime.interp import Interpreter
from .calibrate import (EPS, ChannelStats, Stats, _as_inputs, graph_hash, mask_input, masked_sequences,
                        real_rows, warn_few_rows)
from .wq_options import name_matches

NORMS = ("layer_norm", "rms_norm")
WEIGHT_MODES = ("per_channel", "per_channel_asym")


def qmax(bits: int) -> int:
    """Largest symmetric code of a signed ``bits``-bit integer (127 for 8, 31 for 6)."""
    if not 2 <= bits <= 8:
        raise OptionError(f"bits must be in 2..8 (codes are held in int8), got {bits}")
    return (1 << (bits - 1)) - 1


# ---- calibration ---------------------------------------------------------------------------------
@dataclass
class RangeStats:
    """Per-channel ranges of one activation ``[..., C]`` over the calibration data.

    ``mid_sum`` sums, over calibration *samples*, the per-sample mid-range
    (max_t h_tj + min_t h_tj)/2; a sample is one item of the leading (batch) axis of a
    rank >= 3 activation (one sequence), or the whole observed tensor of a rank <= 2
    activation (its rows are tokens of one batch) unless an attention mask shows its rows to
    be [batch * seq] (then one sequence again). With a mask only real tokens count.
    """
    min: torch.Tensor      # [C] float64
    max: torch.Tensor      # [C] float64
    mid_sum: torch.Tensor  # [C] float64
    samples: int
    rows: int = 0          # real rows (tokens, positions) seen

    @staticmethod
    def empty(c: int) -> "RangeStats":
        f64 = torch.float64
        return RangeStats(torch.full((c,), float("inf"), dtype=f64), torch.full((c,), float("-inf"), dtype=f64),
                          torch.zeros(c, dtype=f64), 0)

    @staticmethod
    def from_channel_stats(cs: ChannelStats) -> "RangeStats":
        """Ranges from generic calibration stats: one 'sample', so the shift is the overall
        mid-range (max + min)/2 (per-sample mid-ranges were not recorded)."""
        return RangeStats(cs.min.clone(), cs.max.clone(), (cs.max + cs.min) / 2, 1, cs.rows)

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add ``x`` [..., C]; with ``mask`` (the graph's attention mask [batch, seq]) only
        the rows of real tokens count, where x's shape shows them (as in :func:`real_rows`)."""
        x = x.detach().to(torch.float64)
        per, keep = _samples(x, mask)
        if per.shape[1] == 0:
            return
        if keep is not None:
            # padded rows may hold anything (NaN from a masked softmax): they take no part
            per = per[keep.any(1)]
            keep = keep[keep.any(1)][..., None]
            if per.shape[0] == 0:
                return
            mn = torch.where(keep, per, float("inf")).amin(1)
            mx = torch.where(keep, per, float("-inf")).amax(1)
            self.rows += int(keep.sum())
        else:
            mn, mx = per.amin(1), per.amax(1)            # [samples, C]
            self.rows += per.shape[0] * per.shape[1]
        self.min = torch.minimum(self.min, mn.amin(0))
        self.max = torch.maximum(self.max, mx.amax(0))
        self.mid_sum += ((mx + mn) / 2).sum(0)
        self.samples += per.shape[0]

    def shift(self) -> torch.Tensor:
        """z_j: the mean over samples of the per-sample mid-ranges (float64 [C])."""
        return self.mid_sum / max(self.samples, 1)

    def absmax_after(self, z: torch.Tensor) -> torch.Tensor:
        """max_t |h_tj - z_j| over all calibration rows, exactly: the extreme of |h - z| over
        an interval [min, max] lies at one of its ends, so no second pass is needed."""
        return torch.maximum((self.min - z).abs(), (self.max - z).abs())


def _samples(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` [..., C] as [samples, rows, C] (RangeStats' samples) and, where ``mask`` shows
    them (:func:`masked_sequences`), which rows are real tokens [samples, rows]; else None."""
    seqs = masked_sequences(x, mask)
    if seqs is not None:
        return seqs
    c = x.shape[-1]
    return (x.reshape(x.shape[0], -1, c) if x.dim() >= 3 else x.reshape(1, -1, c)), None


def floored(m: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``m`` clamped to >= eps * max(m) (1.0 for an all-zero vector): zero channels (e.g. a
    LayerNorm γ_j = 0) get a small positive scale instead of a division by zero."""
    return ChannelStats._floor(m, eps)


class RangeCalibration:
    """RangeStats of one graph's values by printed name, tied to that graph's hash (like
    :class:`Stats`): measured once with :func:`calibrate_ranges`, then given as
    ``calibration=`` to several runs of a pass (e.g. Int8 and Int6) without rerunning the
    model."""

    def __init__(self, graph_hash: str, by_name: dict[str, RangeStats]):
        self.graph_hash = graph_hash
        self.by_name = by_name

    def lookup(self, graph: Graph, values: Sequence[Value]) -> dict[int, RangeStats]:
        """The stats of ``values`` of ``graph``; CalibrationError for another graph or a value
        that was not observed."""
        if graph_hash(graph) != self.graph_hash:
            raise CalibrationError(f"range calibration is stale: measured on graph {self.graph_hash[:16]}, "
                                   f"not on @{graph.name}; recalibrate")
        namer = Namer(graph)
        out = {}
        for v in values:
            if namer(v) not in self.by_name:
                raise CalibrationError(f"no range calibration for {namer(v)} ({v.type})")
            out[id(v)] = self.by_name[namer(v)]
        return out


def calibrate_ranges(graph: Graph, batches: Iterable[Any], values: Sequence[Value] | None = None
                     ) -> RangeCalibration:
    """Run ``graph`` over ``batches`` once and keep the RangeStats of ``values`` (default:
    every norm output read by a linear) for later passes."""
    if values is None:
        seen: dict[int, Value] = {}
        for n in graph.nodes:
            if quantizable_linear(n) and norm_producer(n.inputs[0]) is not None:
                seen.setdefault(id(n.inputs[0]), n.inputs[0])
        values = list(seen.values())
    namer = Namer(graph)
    got = observe_ranges(graph, batches, values)
    return RangeCalibration(graph_hash(graph), {namer(v): got[id(v)] for v in values})


def observe_ranges(graph: Graph, calibration: Any, values: Sequence[Value]) -> dict[int, RangeStats]:
    """RangeStats of ``values`` (keyed by ``id(value)``) from ``calibration``: batches (input
    tuples, dicts by input name or single tensors; iterated once), a :class:`RangeCalibration`
    of this graph, or a :class:`Stats` of this
    graph / a path to saved stats (then per-sample mid-ranges are unavailable and the overall
    mid-range is used, see :meth:`RangeStats.from_channel_stats`).
    Raises CalibrationError for no batches or a NaN/Inf in an observed value."""
    if calibration is None:
        raise CalibrationError("this pass needs calibration data (calibration=..., or --calibration FILE "
                               "on the command line)")
    if isinstance(calibration, RangeCalibration):
        return calibration.lookup(graph, values)
    if isinstance(calibration, (Stats, str, os.PathLike)):
        st = calibration.bind(graph) if isinstance(calibration, Stats) else Stats.load(calibration, graph)
        return {id(v): RangeStats.from_channel_stats(st[v]) for v in values}
    namer = Namer(graph)
    aggs: dict[int, RangeStats] = {}
    by_producer: dict[int, list[Value]] = {}
    for v in values:
        if v.type.rank < 1 or not isinstance(v.shape[-1], int) or not v.dtype.is_float:
            raise CalibrationError(f"cannot observe {namer(v)}: {v.type} needs a static float channel axis")
        aggs[id(v)] = RangeStats.empty(int(v.shape[-1]))
        if v.producer is not None:
            by_producer.setdefault(id(v.producer), []).append(v)
    nbatch = 0

    # the graph's attention mask, if it has one: only real tokens count (as in calibrate)
    mi = mask_input(graph)
    mask: torch.Tensor | None = None

    def hook(node: Node, outs: Sequence[torch.Tensor]) -> None:
        for v in by_producer.get(id(node), ()):
            t = outs[v.index]
            if not bool(torch.isfinite(real_rows(t, mask)).all()):
                raise CalibrationError(f"calibration batch {nbatch}: non-finite value in {namer(v)} "
                                       f"({v.type}, produced by {node.describe()})")
            aggs[id(v)].update(t, mask)

    interp = Interpreter(graph, check=False)
    with torch.no_grad():
        for batch in calibration:
            # checked like every calibrating pass's batches (the batch index and input named)
            ins = _as_inputs(graph, batch, nbatch)
            mask = ins[mi] if mi is not None else None
            for i, v in enumerate(graph.inputs):
                if id(v) in aggs:
                    aggs[id(v)].update(ins[i], mask)
            interp.run(ins, hook=hook)
            nbatch += 1
    if nbatch == 0:
        raise CalibrationError(f"empty calibration for graph @{graph.name}: no batches were given "
                               "(a generator may already have been consumed by an earlier pass)")
    for v in values:
        if aggs[id(v)].samples == 0:
            raise CalibrationError(f"calibration saw no rows of {namer(v)} ({v.type})")
    warn_few_rows(graph, [(namer(v), v, aggs[id(v)].rows) for v in values], nbatch)
    return aggs


# ---- weights -------------------------------------------------------------------------------------
def quantize_weight(w: torch.Tensor, bits: int = 8, sym: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-output-channel quantisation of ``w`` [N, K] (computed in float64).

    Symmetric: Δ_o = max_j |w_oj| / qmax, codes = clamp(round(w/Δ), -qmax, qmax), no zero.
    Asymmetric: the range [min(w_o, 0), max(w_o, 0)] is spread over the signed code range
    [lo, hi] = [-2^(bits-1), 2^(bits-1)-1]: Δ_o = (max - min)/(hi - lo),
    zero_o = clamp(lo - round(min/Δ), lo, hi), codes = clamp(round(w/Δ) + zero, lo, hi), so
    w ≈ (codes - zero)·Δ. All-zero rows get Δ = 1. Returns (codes int8 [N, K], Δ float32 [N],
    zero int8 [N] or None).
    """
    w = w.to(torch.float64)
    if sym:
        q = qmax(bits)
        amax = w.abs().amax(1)
        delta = torch.where(amax > 0, amax / q, torch.ones_like(amax))
        delta = delta.to(torch.float32).to(torch.float64)   # the scale the graph will hold
        codes = torch.round(w / delta[:, None]).clamp(-q, q)
        return codes.to(torch.int8), delta.to(torch.float32), None
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    mn, mx = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    rng = mx - mn
    delta = torch.where(rng > 0, rng / (hi - lo), torch.ones_like(rng))
    delta = delta.to(torch.float32).to(torch.float64)
    zero = (lo - torch.round(mn / delta)).clamp(lo, hi)
    codes = (torch.round(w / delta[:, None]) + zero[:, None]).clamp(lo, hi)
    return codes.to(torch.int8), delta.to(torch.float32), zero.to(torch.int8)


def linear_bias(node: Node) -> torch.Tensor | None:
    """The constant bias of a ``linear`` in float64, or None."""
    b = node.inputs[2] if len(node.inputs) > 2 else None
    return None if b is None else b.const.to(torch.float64)


def replace_with_qlinear(graph: Graph, node: Node, x: Value, w: torch.Tensor, bias: torch.Tensor | None,
                         bits: int, sym: bool, act: str = "none", abits: int = 8) -> Node:
    """Replace ``linear`` ``node`` by ``qlinear(x, Q(w), Δ, zero?, bias)`` with weights ``w``
    ([N, K] float64, already scaled as the caller wants) quantised per output channel; ``x`` is
    codes (act "none") or a float tensor quantised dynamically (act per_token/per_tensor)."""
    out = node.outputs[0]
    codes, delta, zero = quantize_weight(w, bits, sym)
    wname = node.inputs[1].name
    wq = graph.add_const(codes, dt.i8, name=f"{wname}.q" if wname else None)
    ws = graph.add_const(delta, dt.f32, name=f"{wname}.scale" if wname else None)
    wz = graph.add_const(zero, dt.i8, name=f"{wname}.zero" if wname else None) if zero is not None else None
    bv = graph.add_const(bias.to(out.dtype.container), out.dtype) if bias is not None else None
    attrs: dict[str, Any] = {"act": act}
    if act != "none":
        attrs["abits"] = abits
    if not x.dtype.is_float:
        attrs["out_dtype"] = out.dtype.name
    ins = [x, wq, ws, wz, bv]
    while ins[-1] is None:
        ins.pop()
    new = graph.create_node("qlinear", ins, attrs, name=node.name)
    graph.insert_before(node, new)
    graph.replace_all_uses(out, new.outputs[0])
    graph.remove(node)
    return new


def dynamic_qlinear(graph: Graph, node: Node, act: str, bits: int, sym: bool = True) -> Node:
    """``linear`` -> ``qlinear`` with dynamic symmetric activation quantisation (``act`` =
    per_token / per_tensor, ``bits``-bit codes) and per-channel ``bits``-bit weights."""
    return replace_with_qlinear(graph, node, node.inputs[0], node.inputs[1].const.to(torch.float64),
                                linear_bias(node), bits, sym, act=act, abits=bits)


def quantizable_linear(node: Node) -> bool:
    """A ``linear`` with a constant 2-D weight, a constant (or no) bias and a float input."""
    if node.op != "linear":
        return False
    w = node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    return (w is not None and w.is_const and w.type.rank == 2 and (b is None or b.is_const)
            and node.inputs[0] is not None and node.inputs[0].dtype.name in ("f32", "f16", "bf16", "f64")
            and isinstance(w.shape[1], int))


def norm_producer(v: Value) -> Node | None:
    """The layer_norm / rms_norm over the static last axis that produced ``v`` directly."""
    p = v.producer
    if p is None or p.op not in NORMS or not isinstance(v.shape[-1], int):
        return None
    return p if norm_axis(p.attrs["axis"], v.type.rank) == v.type.rank - 1 else None


# ---- overrides -----------------------------------------------------------------------------------
Setting = Any   # "float" or {"bits": b}


def _setting(val: Any, key: Any) -> Setting:
    if isinstance(val, str) and val.strip().lower() == "float":
        return "float"
    if isinstance(val, (int, str)) and str(val).strip().isdigit():
        val = {"bits": int(val)}
    if isinstance(val, Mapping) and set(val) <= {"bits"} and "bits" in val:
        qmax(int(val["bits"]))   # validates
        return {"bits": int(val["bits"])}
    raise OptionError(f"override for {key!r}: expected \"float\", a bit width or {{\"bits\": b}}, got {val!r}")


def parse_overrides(spec: Any) -> list[tuple[Any, Setting]]:
    """Overrides as (key, setting) pairs. ``spec``: None, a dict ``{key: setting}`` or a string
    ``"key=setting,key=setting"``. A key is a substring of the linear's weight constant name
    (or node name), ``"re:<pattern>"`` (a regular expression searched in those names), or an
    int: the index of the linear among the graph's quantisable linears in graph order. A setting is ``"float"`` (keep the linear in float), a bit width (6, 8)
    or ``{"bits": b}``. The first matching entry wins."""
    if spec is None:
        return []
    if isinstance(spec, str):
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            k, sep, v = part.rpartition("=")
            if not sep or not k.strip():
                raise OptionError(f"bad override {part!r}: want key=float or key=<bits>")
            k = k.strip()
            items.append((int(k) if k.lstrip("-").isdigit() else k, v.strip()))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise OptionError(f"overrides must be a dict or a 'key=setting,...' string, got {type(spec).__name__}")
    from .wq_options import check_key
    return [(check_key(k, "overrides"), _setting(v, k)) for k, v in items]


def require_finite(w: torch.Tensor, what: str) -> None:
    """Raise a ScalefoldError naming ``what`` when weight ``w`` holds NaN or inf: a group's
    scale from a max over them makes the whole group's codes NaN, silently."""
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ScalefoldError(f"quant_weights: the weight of {what} holds {bad} NaN or infinite value(s); it cannot be quantised")


def override_for(node: Node, index: int, overrides: Iterable[tuple[Any, Setting]]) -> Setting | None:
    """The first override matching ``node`` (the ``index``-th quantisable linear), or None."""
    wname = node.inputs[1].name or ""
    for key, setting in overrides:
        if isinstance(key, int):
            if key == index:
                return setting
        elif key.startswith("re:"):
            if re.search(key[3:], wname) or (node.name and re.search(key[3:], node.name)):
                return setting
        elif name_matches(key, wname) or (node.name and name_matches(key, node.name)):
            return setting
    return None


__all__ = ["NORMS", "WEIGHT_MODES", "RangeCalibration", "RangeStats", "calibrate_ranges", "dynamic_qlinear",
           "floored", "linear_bias", "norm_producer", "observe_ranges", "override_for", "parse_overrides", "qmax",
           "quantizable_linear", "quantize_weight", "replace_with_qlinear",
           "require_finite"]
