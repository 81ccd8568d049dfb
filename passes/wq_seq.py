"""Sequential calibration for ``quant_weights(sequential=True)`` (GPTQ's and AWQ's layer-by-layer
order, ALGORITHMS.md §2).

The one-shot pass measures every linear's input statistics once, on the float graph. Here the
linears are quantised stage by stage in graph order — a stage is the set of linears reading
one activation X (q/k/v together, gate/up together) — and X's statistics (mean|x|, the Gram
matrix XᵀX, the block captured for AWQ's block loss) are measured on the graph in which every
earlier stage is already ``qlinear`` (run by the reference interpreter). Each stage's AWQ
scale, clip search and GPTQ rounding therefore see the inputs the quantised model really
produces, so they can compensate the error made upstream instead of ignoring it.

AWQ folds a stage's 1/s into X's producer. When that producer is a linear (v_proj for the
attention output, a previous layer's linear) it must still be float at that moment, so such
absorbing linears are *deferred*: they are quantised right after the stage that scales into
them, and that stage's statistics are then measured again (its input now comes from the
quantised absorber).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..ir.errors import ScalefoldError
from ..ir.graph import Graph, Node, Value
from .awq import apply_scale, search_for
from .calibrate import ChannelStats, calibrate
from .scale_move import consumer_groups, plan_scale

#: quantise one linear: (node, its setting, Gram matrix XᵀX/rows of its input) -> None
Quantize = Callable[[Node, Any, torch.Tensor], None]


def measure(graph: Graph, batches: Sequence[Any], value: Value) -> ChannelStats:
    """Stats (with Gram matrix) of ``value`` over ``batches`` on the graph as it is now."""
    return calibrate(graph, batches, values=[value], gram=[value], progress=False)[value]




def run_sequential(graph: Graph, nodes: list[Node], settings: dict[int, Any], calibration: Any,
                   quantize: Quantize, awq: tuple[int, int, int, bool] | None = None,
                   centred: bool = False, block_loss: bool = True) -> None:
    """Quantise ``nodes`` (linears of ``graph``; ``settings[id(n)] == "float"`` keeps one)
    stage by stage, each stage calibrated on the graph with all earlier stages quantised.

    ``awq`` = (bits, group, grid, sym): also run AWQ's scale search per stage (over every
    activation read by constant-weight linears, as ``awq_scales``) before quantising it.
    ``calibration`` must be a list of batches (stats measured once cannot be re-measured).
    ``centred``: the searches and the quantiser score with the covariance (bias correction
    follows); ``block_loss``: AWQ may score q/k/v-like groups on their block's output.
    Pre: ``nodes`` are float linears of ``graph`` in graph order. Post: each non-"float" node
    has been passed to ``quantize`` exactly once, with the Gram matrix of the input it reads
    at that moment, measured with every linear before it in graph order already quantised
    (deferred AWQ absorbers: see the module docstring).
    """
    if not isinstance(calibration, (list, tuple)) or not calibration:
        raise ScalefoldError("quant_weights: sequential=True needs calibration batches (a non-empty list), "
                             f"not {type(calibration).__name__}: statistics are re-measured per stage")
    batches = list(calibration)
    todo = {id(n): n for n in nodes if settings[id(n)] != "float"}
    targets: list[Value] = consumer_groups(graph) if awq is not None else []
    seen = {id(x) for x in targets}
    for n in nodes:
        if id(n.inputs[0]) not in seen:
            seen.add(id(n.inputs[0]))
            targets.append(n.inputs[0])
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    targets.sort(key=lambda v: order.get(id(v.producer), -1) if v.producer is not None else -1)

    # linears some later stage's AWQ scale folds into: keep them float until then
    absorbers: dict[int, list[Node]] = {}
    deferred: set[int] = set()
    if awq is not None:
        for x in targets:
            plan = plan_scale(graph, x)
            if plan.ok:
                hit = [e.node for e in plan.edits if e.kind == "linear" and id(e.node) in todo]
                absorbers[id(x)] = hit
                deferred |= {id(a) for a in hit}
    pending: dict[int, torch.Tensor] = {}      # deferred node -> its input's Gram matrix
    done: set[int] = set()

    def quantize_node(n: Node, gram: torch.Tensor) -> None:
        done.add(id(n))
        quantize(n, settings[id(n)], gram)

    for x in targets:
        stage = [n for n in todo.values() if n.inputs[0] is x and id(n) not in done]
        plan = plan_scale(graph, x) if awq is not None else None
        scaled = plan is not None and bool(plan.consumers)
        if not stage and not scaled:
            continue
        cs = measure(graph, batches, x)
        xin = {id(n): n.inputs[0] for n in stage}
        if scaled:
            assert plan is not None and awq is not None
            bits, group, grid, sym = awq
            s, r = search_for(graph, plan.consumers, cs, batches if block_loss else None, bits, group, grid, sym,
                              centred)
            changed = apply_scale(graph, plan, s, r)
            late = [a for a in absorbers.get(id(x), []) if id(a) not in done]
            for a in late:
                quantize_node(a, pending.pop(id(a)))
            if late:
                cs = measure(graph, batches, stage[0].inputs[0]) if stage else cs
                xin = {id(n): n.inputs[0] for n in stage}
            elif changed:
                # x' = x / s (in front of the consumers): G' = G / (s sᵀ) exactly
                s64 = s.to(torch.float64)
                assert cs.gram is not None
                cs = ChannelStats(cs.min / s64, cs.max / s64, cs.absmax / s64, cs.sum_abs / s64, cs.rows,
                                  cs.gram / torch.outer(s64, s64), cs.sum / s64 if cs.sum is not None else None)
                xin = {id(n): n.inputs[0] for n in stage}
        gram = cs.second_moment(centred)
        for n in stage:
            assert xin[id(n)] is n.inputs[0]
            if id(n) in deferred:
                pending[id(n)] = gram
            else:
                quantize_node(n, gram)
    for key, n in todo.items():
        if key not in done:
            # a deferred absorber whose stage scaled elsewhere, or a linear no stage covered
            g = pending.pop(key, None)
            quantize_node(n, g if g is not None else measure(graph, batches, n.inputs[0]).second_moment(centred))


__all__ = ["measure", "run_sequential"]
