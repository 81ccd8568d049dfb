"""``smooth(alpha=0.5)``: SmoothQuant smoothing (ALGORITHMS.md §3), exact in float."""
from __future__ import annotations

from typing import Any

import torch

from ..ir.errors import OptionError
from ..ir.graph import Graph, Node, Value
from .calibrate import ChannelStats, stats_for
from .counters import bump
from .pipeline import register_pass
from .rewrite import report_near_miss
from .scale_move import Refusal, ScalePlan, consumer_groups, plan_scale

PASS = "smooth"


def consumer_weight_absmax(consumers: list[Node]) -> torch.Tensor:
    """max |W[:, j]| over every consumer's weights (all of q, k, v together; router and experts)."""
    cols = []
    for n in consumers:
        idxs = (1,) if n.op == "linear" else (1, 2, 3)
        for i in idxs:
            w = n.inputs[i]
            if w is not None:
                cols.append(w.const.double().abs().reshape(-1, w.shape[-1]).amax(0))
    return torch.stack(cols).amax(0)


def smooth_factors(x: ChannelStats, consumers: list[Node], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_:,j|^(1−α), both floored (never 0, never a division by 0);
    s_j = 1 for a channel the calibration never saw above the floor: the formula would divide
    it by a tiny s_j, and should it fire on new data it would then dominate the activation's
    quantisation range (a ReLU unit silent on every calibration row made W8A8 ~9x worse)."""
    ax = x.absmax_floored()
    wmax = ChannelStats._floor(consumer_weight_absmax(consumers), 1e-5)
    s = ax.pow(alpha) / wmax.pow(1.0 - alpha)
    silent = x.absmax.to(ax.dtype) < ax
    return torch.where(silent, torch.ones_like(s), s.clamp(min=1e-5))


def report_refusal(pass_name: str, rule: str, r: Refusal) -> None:
    """Count a refused tensor as ``pass.<reason>`` and record it as a near-miss of ``rule``."""
    bump(pass_name, r.reason)
    node = r.node or (r.consumers[0] if r.consumers else r.value.producer)
    if node is not None:
        report_near_miss(pass_name, rule, node, str(r))


@register_pass("smooth", needs_calibration=True)
def smooth(graph: Graph, calibration: Any, alpha: float = 0.5, pow2: bool = False,
           stats: str | None = None) -> Graph:
    """SmoothQuant: per input channel j of every tensor read by linears,
    s_j = max|X_j|^α / max|W_:,j|^(1−α) (max over all consumers' columns together); 1/s is
    folded into the producer and s into every consumer (passes/scale_move.py decides where).

    ``pow2=True`` rounds every s_j to the nearest power of two (in log scale, so within √2
    of the formula): multiplying by a power of two is exact in binary floating point, so the
    smoothed graph computes bit-for-bit the same products (barring under/overflow) instead of
    differing by fp rounding.

    Pre: float graph; ``calibration`` = batches, a Stats of this graph or a stats path;
    ``stats`` = optional safetensors path caching the calibration (reused when it matches).
    Post: same function up to fp rounding (relative error ~1e-6 in fp32); per-channel
    activation ranges of every smoothed tensor equalised towards the weights'.
    Rules (counters): ``smoothed`` per tensor, ``into_<absorber>`` (norm, linear, v_proj,
    gated_up, const, multi); refused tensors count as ``<reason>`` (scale_move refusals,
    e.g. ``post_ln_residual``, ``through_gelu``, ``gqa_shared_v``) and are near-misses of
    ``smoothed``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise OptionError(f"smooth: alpha must be in [0, 1], got {alpha}")
    legal: list[Value] = []
    for x in consumer_groups(graph):
        p = plan_scale(graph, x)
        if isinstance(p, Refusal):
            report_refusal(PASS, "smoothed", p)
        else:
            legal.append(x)
    if not legal:
        return graph
    st = stats_for(graph, calibration, legal, cache=stats)
    factors = {id(x): st[x] for x in legal}   # read before the graph changes
    for x in legal:
        plan = plan_scale(graph, x)   # fresh: earlier moves replaced constants
        assert isinstance(plan, ScalePlan)
        s = smooth_factors(factors[id(x)], plan.consumers, alpha)
        if pow2:
            s = torch.exp2(torch.round(torch.log2(s)))
        plan.apply(graph, s)
        bump(PASS, "smoothed")
        bump(PASS, f"into_{plan.absorber}")
    return graph
