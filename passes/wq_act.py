"""FP activation quantisation for ``quant_weights(act_format=...)`` with LLM-FP4's per-channel
exponent bias at per-tensor cost (ALGORITHMS.md §4).

For an activation x read by quantised linears, with calibrated per-channel max |x_j|:
b_j = the bias whose largest value is max|x_j|, ρ = min_j b_j,
k_j = clamp(round(b_j) − round(ρ), 0, 2^E − 1). Since FPQ_(ρ+k)(x) = 2^−k·FPQ_ρ(2^k x), the
activation channel j is multiplied by 2^(k_j) — folded into x's producer (layer norm affine,
previous linear, ...) where ``scale_move`` allows it, else an explicit ``mul`` by powers of two
(exact) — and the consumers' weight columns by 2^(−k_j) before they are quantised. The shifted
activation is then quantised per tensor with bias ρ: ``quantize`` to ``f4e2m1`` with scale
2^(1 − ρ) (E2M1's stored grid has bias 1), or to ``f8e4m3`` with scale max_j(2^(k_j)·max|x_j|)/448,
and ``dequantize``d for the consumers.
"""
from __future__ import annotations

from typing import Any

import torch

from ..ir import dtypes as dt
from ..ir.graph import Graph, Node, Value
from .calibrate import stats_for
from .counters import bump
from .scale_apply import apply_explicit
from .scale_move import Refusal, plan_scale
from .wq_fp import FP4_FORMATS, FP8_MAX, Fp4Format, act_scale, exponent_shift

PASS = "quant_weights"
E4M3 = Fp4Format("e4m3", 4, 3)   # for the bias arithmetic only (the OCP codes saturate at 448)


def _shift(graph: Graph, x: Value, consumers: list[Node], k: torch.Tensor) -> Value:
    """Multiply activation ``x`` by 2^k for ``consumers`` (weights × 2^−k); the value they
    read afterwards."""
    if not bool((k > 0).any()):
        return x
    s = torch.exp2(-k.to(torch.float64))
    plan = plan_scale(graph, x)
    if isinstance(plan, Refusal) or {id(c) for c in plan.consumers} != {id(c) for c in consumers}:
        mul = apply_explicit(graph, x, consumers, s)
        bump(PASS, "reparam_explicit")
        return mul.outputs[0]
    plan.apply(graph, s)
    bump(PASS, f"reparam_into_{plan.absorber}")
    return x


def activation_absmax(graph: Graph, nodes: list[Node], calibration: Any) -> dict[int, torch.Tensor]:
    """Per-channel max |x| over the calibration of the activation each of ``nodes`` reads (keyed
    by the node's id: a rewrite may give the activation a new Value, not the reader a new
    node): what :func:`quantize_activations` needs, measured on the graph as it is now (saved
    stats describe the graph before the pass rewrites anything)."""
    values = {id(n.inputs[0]): n.inputs[0] for n in nodes}
    st = stats_for(graph, calibration, list(values.values()))
    return {id(n): st[n.inputs[0]].absmax.to(torch.float32) for n in nodes}


def quantize_activations(graph: Graph, nodes: list[Node], act_format: str, calibration: Any,
                         reparam: bool = True, absmax: dict[int, torch.Tensor] | None = None) -> None:
    """Insert per-tensor FP fake quantisation (quantize -> dequantize) in front of ``nodes``
    (linears, still float), after the exponent-bias reparameterisation. Pre: ``nodes`` are
    quantisable linears of ``graph``; ``absmax`` (from :func:`activation_absmax`, else
    measured here) covers their inputs. Post: each reads dequantize(quantize(x·2^k)) and has
    its weight columns scaled by 2^−k; the graph is otherwise unchanged. ``reparam=False``
    keeps k = 0 (one bias for all channels: the ablation of the reparameterisation)."""
    groups: dict[int, list[Node]] = {}
    values: dict[int, Value] = {}
    for n in nodes:
        groups.setdefault(id(n.inputs[0]), []).append(n)
        values[id(n.inputs[0])] = n.inputs[0]
    if absmax is None:
        absmax = activation_absmax(graph, nodes, calibration)
    fmt = FP4_FORMATS["e2m1"] if act_format == "fp4_e2m1" else E4M3
    qdt = dt.f4e2m1 if act_format == "fp4_e2m1" else dt.f8e4m3
    for key, x in values.items():
        consumers = groups[key]
        amax = absmax[id(consumers[0])]
        rho, k = exponent_shift(amax, fmt)
        if not reparam:
            k = torch.zeros_like(k)
        for kk, cnt in zip(*torch.unique(k, return_counts=True)):
            if kk > 0:
                bump(PASS, f"reparam_{int(kk)}", int(cnt))
        xs = _shift(graph, x, consumers, k)
        if qdt is dt.f4e2m1:
            scale = act_scale(rho, fmt)
        else:
            top = float((amax * torch.exp2(k)).max())
            scale = top / FP8_MAX if top > 0 else 1.0
        sc = graph.add_const(torch.tensor(scale, dtype=torch.float32), dt.f32)
        first = min(consumers, key=graph.nodes.index)
        q = graph.create_node("quantize", [xs, sc], {"dtype": qdt.name})
        d = graph.create_node("dequantize", [q.outputs[0], sc], {"dtype": x.dtype.name, "qtype": qdt.name})
        graph.insert_before(first, q)
        graph.insert_before(first, d)
        for c in consumers:
            graph.set_input(c, 0, d.outputs[0])
        bump(PASS, f"act_{act_format}")


__all__ = ["quantize_activations"]
