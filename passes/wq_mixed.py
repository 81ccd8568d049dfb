"""Mixed precision for ``quant_weights``: bits per layer from a sensitivity score under a
size budget.

Every quantisable linear starts at the pass's base setting; the others (``mixed``, e.g.
``int8`` or ``int4,int8,float``) are upgrades. A layer's sensitivity to a setting is measured
with that layer alone quantised:

- ``output``: the relative squared error of the graph's outputs, Σ‖y_q − y‖² / Σ‖y‖², on (up
  to two of) the calibration batches — end to end, so it sees how an error propagates;
- ``layer``: the layer's own relative output error tr(D G Dᵀ) / tr(W G Wᵀ) from the
  calibration Gram matrix G (weight-relative error ‖D‖² / ‖W‖² without calibration).

Upgrades are then bought greedily by error removed per extra bit until the average bits per
weight (codes, group scales and zero points; 32 for float) would exceed the budget. Scores
are treated as additive across layers, which they are to first order.
"""
from __future__ import annotations

from dataclasses import replace as dc_replace
from typing import Any, Callable, Sequence

import torch

from ..ir.errors import ScalefoldError
from ..ir.graph import Graph, Node
from ..ir.ops.quant import dequant_weight
from ..runtime.interp import Interpreter
from .calibrate import _as_inputs
from .counters import bump, counting
from .wq_settings import check_setting

# (graph, node of that graph, setting, the original node whose calibration applies)
QuantizeFn = Callable[[Graph, Node, Any, Node], Any]


def _bits(setting: Any, node: Node) -> float:
    k = int(node.inputs[1].shape[1])
    return 32.0 if setting == "float" else setting.bits_per_weight(k)


def _options(base: Any, mixed: str) -> list[Any]:
    if not isinstance(mixed, str):
        raise ScalefoldError(f"quant_weights: mixed must name formats (e.g. 'int8,float'), got {mixed!r}")
    out: list[Any] = []
    for f in filter(None, (p.strip() for p in mixed.split(","))):
        if f == "float":
            out.append("float")
        else:
            s = dc_replace(base, format=f)
            check_setting(s, "quant_weights: mixed")
            out.append(s)
    if not out:
        raise ScalefoldError("quant_weights: mixed names no format to upgrade to")
    return out


def _batches(graph: Graph, calibration: Any, limit: int = 2) -> list[Sequence[torch.Tensor]]:
    """The first ``limit`` calibration batches as the graph's positional inputs (tuples, dicts
    by input name or bare tensors, checked as calibration checks them)."""
    if calibration is None or isinstance(calibration, (str, bytes, dict)) or not hasattr(calibration, "__iter__"):
        raise ScalefoldError("quant_weights: sensitivity=output needs calibration batches "
                             "(use sensitivity=layer with saved stats)")
    out = []
    for i, b in enumerate(calibration):
        out.append(tuple(_as_inputs(graph, b, i)))
        if len(out) == limit:
            break
    return out


def _output_error(g: Graph, batches: list[Sequence[torch.Tensor]], ref: list[list[torch.Tensor]]) -> float:
    it = Interpreter(g, check=False)
    num = den = 0.0
    for b, r in zip(batches, ref):
        for y, y0 in zip(it.run(b), r):
            if y.is_floating_point():
                num += float((y.double() - y0.double()).pow(2).sum())
                den += float(y0.double().pow(2).sum())
    return num / max(den, 1e-30)


def _layer_error(q: Node, w: torch.Tensor, gram: torch.Tensor | None) -> float:
    ins = list(q.inputs) + [None] * (5 - len(q.inputs))
    wd = dequant_weight(ins[1].const, ins[2].const, ins[3].const if ins[3] is not None else None,
                        q.attrs["group"], q.attrs["wtype"] == "f4e2m1").to(torch.float32)
    d = wd - w
    if gram is None:
        return float((d * d).sum() / (w * w).sum().clamp(min=1e-30))
    return float(((d @ gram) * d).sum() / ((w @ gram) * w).sum().clamp(min=1e-30))


def sensitivities(graph: Graph, nodes: list[Node], options: dict[int, list[Any]], sensitivity: str,
                  calibration: Any, grams: dict[int, torch.Tensor], quantize: QuantizeFn) -> dict[tuple[int, int], float]:
    """Error score of each (layer, option index) with only that layer quantised ("float": 0)."""
    if sensitivity not in ("output", "layer"):
        raise ScalefoldError(f"quant_weights: sensitivity must be output or layer, got {sensitivity!r}")
    batches = _batches(graph, calibration) if sensitivity == "output" else []
    ref = [Interpreter(graph, check=False).run(b) for b in batches]
    pos = {id(n): i for i, n in enumerate(graph.nodes)}
    out: dict[tuple[int, int], float] = {}
    for n in nodes:
        for j, opt in enumerate(options[id(n)]):
            if opt == "float":
                out[(id(n), j)] = 0.0
                continue
            g = graph.clone()
            quantize(g, g.nodes[pos[id(n)]], opt, n)
            if sensitivity == "output":
                out[(id(n), j)] = _output_error(g, batches, ref)
            else:
                q = g.nodes[pos[id(n)]]     # the qlinear took the linear's place
                out[(id(n), j)] = _layer_error(q, n.inputs[1].const.to(torch.float32), grams.get(id(n.inputs[0])))
    return out


def assign_budget(graph: Graph, nodes: list[Node], base: Any, settings: dict[int, Any], budget: float,
                  mixed: str, sensitivity: str, calibration: Any, grams: dict[int, torch.Tensor],
                  quantize: QuantizeFn, pinned: set[int] | None = None) -> dict[int, Any]:
    """New per-layer settings (by ``id(node)``) with average bits per weight <= ``budget``.
    Layers with an override (``pinned`` ids, or a setting other than ``base``) keep it and
    count against the budget."""
    if not nodes:
        return settings
    ups = _options(base, mixed)
    free = [n for n in nodes if settings[id(n)] == base and id(n) not in (pinned or set())]
    options = {id(n): [settings[id(n)], *ups] for n in free}
    weights = {id(n): int(n.inputs[1].shape[0]) * int(n.inputs[1].shape[1]) for n in nodes}
    total_w = sum(weights.values())
    used = sum(_bits(settings[id(n)], n) * weights[id(n)] for n in nodes)
    cap = budget * total_w
    if used > cap * (1 + 1e-9):
        raise ScalefoldError(f"quant_weights: budget {budget} bits/weight is below what the base settings "
                             f"need ({used / total_w:.3f})")
    with counting():     # trial quantisations of clones are not rule applications
        err = sensitivities(graph, free, options, sensitivity, calibration, grams, quantize)
    cur = {id(n): 0 for n in free}
    out = dict(settings)
    while True:
        best: tuple[float, Node, int] | None = None
        for n in free:
            i0 = cur[id(n)]
            for j in range(1, len(options[id(n)])):
                extra = (_bits(options[id(n)][j], n) - _bits(options[id(n)][i0], n)) * weights[id(n)]
                gain = err[(id(n), i0)] - err[(id(n), j)]
                if extra <= 0 or gain <= 0 or used + extra > cap * (1 + 1e-9):
                    continue
                ratio = gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, n, j)
        if best is None:
            break
        _, n, j = best
        used += (_bits(options[id(n)][j], n) - _bits(options[id(n)][cur[id(n)]], n)) * weights[id(n)]
        cur[id(n)] = j
    for n in free:
        opt = options[id(n)][cur[id(n)]]
        out[id(n)] = opt
        if cur[id(n)]:
            bump("quant_weights", f"mixed_{opt if opt == 'float' else opt.format}")
    return out


__all__ = ["assign_budget", "sensitivities"]
