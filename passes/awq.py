"""``awq_scales(bits=4, group=128)``: AWQ activation-aware scale search (ALGORITHMS.md §2).

The graph stays float and exact: the pass only moves per-channel scales (1/s into the
producer, s into the consumers' weight columns); the quantisation itself happens later
(``quant_weights``). :func:`fake_quant_int` is the group-wise RTN quantiser both use.
"""
from __future__ import annotations

from typing import Any

import torch

from ..ir.errors import OptionError
from ..ir.graph import Graph, Node
from .awq_block import block_of, capture, grid_search, search_block_scale
from .calibrate import ChannelStats, stats_for
from .counters import bump
from .pipeline import register_pass
from .scale_move import Refusal, ScalePlan, apply_explicit, consumer_groups, plan_scale
from .smooth import report_refusal
from .wq_options import as_int

PASS = "awq_scales"


def fake_quant_int(w: torch.Tensor, bits: int = 4, group: int = 128, sym: bool = False) -> torch.Tensor:
    """Round-to-nearest integer fake quantisation of ``w`` [..., K], group-wise along K.

    Asymmetric (default): per group, with min ≤ 0 ≤ max (the group's extremes widened to hold
    0, as GPTQ does: else a one-signed group's zero point falls outside the codes),
    Δ = (max − min)/(2^bits − 1) (the range floored at 1e-5, as AWQ does), z = clamp(−round(min/Δ), 0, 2^bits − 1),
    ŵ = (clamp(round(w/Δ) + z, 0, 2^bits − 1) − z)·Δ.
    Symmetric: Δ = max|w|/(2^(bits−1) − 1), ŵ = clamp(round(w/Δ), −2^(bits−1), 2^(bits−1) − 1)·Δ.
    ``group`` <= 0 (or >= K) means one group per row; a last partial group is its own group.
    Returns a tensor of w's dtype and shape (computed in float32 or wider).
    """
    if bits < 2 or bits > 16:
        raise OptionError(f"fake_quant_int: bits must be in 2..16, got {bits}")
    k = w.shape[-1]
    g = k if group <= 0 or group >= k else group
    wf = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    lead = wf.shape[:-1]
    full = (k // g) * g
    parts = []
    for lo, hi, size in ((0, full, g), (full, k, k - full)):
        if hi <= lo:
            continue
        x = wf[..., lo:hi].reshape(*lead, (hi - lo) // size, size)
        if sym:
            qmax = 2 ** (bits - 1) - 1
            delta = x.abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
            q = torch.clamp(torch.round(x / delta), -qmax - 1, qmax) * delta
        else:
            qmax = 2 ** bits - 1
            # the range always holds 0, so the zero point is a code in [0, 2^bits - 1]
            mn, mx = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
            delta = (mx - mn).clamp(min=1e-5) / qmax
            z = torch.clamp(-torch.round(mn / delta), 0, qmax)
            q = (torch.clamp(torch.round(x / delta) + z, 0, qmax) - z) * delta
        parts.append(q.reshape(*lead, hi - lo))
    return torch.cat(parts, -1).to(w.dtype)


def _consumer_weights(consumers: list[Node]) -> list[torch.Tensor]:
    out = []
    for n in consumers:
        for i in ((1,) if n.op == "linear" else (1, 2, 3)):
            w = n.inputs[i]
            if w is not None:
                out.append(w.const.to(torch.float32).reshape(-1, w.shape[-1]))
    return out


def output_mse(weights: list[torch.Tensor], qweights: list[torch.Tensor], gram: torch.Tensor) -> float:
    """Mean squared error of the consumers' outputs X Ŵᵀ vs X Wᵀ over the calibration rows,
    from the Gram matrix G = XᵀX / rows: Σ tr(ΔW G ΔWᵀ) / Σ N (the bias cancels)."""
    tot, n = 0.0, 0
    for w, q in zip(weights, qweights):
        d = q - w
        tot += float(((d @ gram) * d).sum())
        n += w.shape[0]
    return tot / max(n, 1)


def search_scale(weights: list[torch.Tensor], mean_abs: torch.Tensor, gram: torch.Tensor,
                 bits: int, group: int, grid: int = 20, sym: bool = False) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ grid search: for r in {0, 1/grid, …, (grid−1)/grid}, s = s_X^r normalised by
    sqrt(max(s)·min(s)); Ŵ = Q(W·diag(s))·diag(s)⁻¹; keep the s with the least output MSE.
    Returns (s [K] float64, best r, the loss per r)."""
    # All consumers share K: one stacked matrix means one quantiser call and one GEMM per r.
    weights = [torch.cat(weights)] if len(weights) > 1 else list(weights)

    def loss(s32: torch.Tensor) -> float:
        return output_mse(weights, [fake_quant_int(w * s32, bits, group, sym) / s32 for w in weights], gram)
    return grid_search(mean_abs, grid, loss)


@register_pass("awq_scales", needs_calibration=True)
def awq_scales(graph: Graph, calibration: Any, bits: int = 4, group: int = 128, grid: int = 20,
               sym: bool = False, stats: str | None = None, loss: str = "block", centred: bool = False) -> Graph:
    """AWQ scale search for every group of linears sharing an input (found by scale_move).

    For each tensor X read by linears (with constant weights), searches s = s_X^r (s_X =
    mean|x| per channel) minimising the MSE of the consumers' outputs on the calibration rows
    when their weights are RTN fake-quantised (``fake_quant_int(bits, group, sym)``) after
    scaling; the loss comes from the streamed Gram matrix XᵀX, so it is exact without storing
    activations. With ``loss="block"`` (default) a group of several consumers whose outputs
    meet in a block (q/k/v -> attention, gate/up -> product; ``awq_block.py``) is scored by the
    MSE of the block's output instead, on up to 4096 captured calibration rows (needs
    calibration batches as a list; saved stats fall back to the Gram loss). ``centred``: score
    with the covariance instead of XᵀX (and, in a block, with the consumers' biases corrected
    by −(Ŵ − W) mean x), i.e. the error that remains after ``quant_weights``' bias correction.
    Padded calibration rows are left out (``calibrate.py``). Then folds 1/s into X's producer and s into the consumers; where the producer
    cannot absorb (scale_move refusal) an explicit per-channel ``mul`` by 1/s is inserted
    before the linear consumers (other readers keep X).

    Pre: float graph; ``calibration`` = batches, a Stats (with grams) of this graph, or a path.
    Post: same function up to fp rounding; no quantisation yet.
    Rules (counters): ``scaled`` per tensor, ``block_loss`` per search scored on a block, ``into_<absorber>`` or ``explicit_mul``,
    ``identity`` when r = 0 wins (nothing changes); a refusal also counts as ``<reason>``
    and is a near-miss of ``into_producer``.
    """
    return run_awq(graph, calibration, bits, group, grid, sym, stats, loss, centred)


def run_awq(graph: Graph, calibration: Any, bits: int = 4, group: int = 128, grid: int = 20,
            sym: bool = False, stats: str | None = None, loss: str = "block", centred: bool = False,
            record: dict[int, torch.Tensor] | None = None,
            keep_float: set[int] | None = None) -> Graph:
    """:func:`awq_scales`; ``record`` (if given) gets {id(consumer linear): the s its weight
    was multiplied by} for every scale applied, so a caller holding statistics of the graph
    before the search can derive its inputs' statistics after it (X' = X diag(1/s)).
    ``keep_float``: ids of linears that stay float; an activation read only by such linears is
    not searched (a scale there would only add work)."""
    if loss not in ("block", "layer"):
        raise OptionError(f"awq_scales: loss must be block or layer, got {loss!r}")
    grid = as_int(grid, "awq_scales: grid", 1)
    bits = as_int(bits, "awq_scales: bits", 2)
    if bits > 16:
        raise OptionError(f"awq_scales: bits must be in 2..16, got {bits}")
    targets = consumer_groups(graph)
    if not targets:
        return graph
    batches = calibration if loss == "block" and isinstance(calibration, (list, tuple)) else None
    st = stats_for(graph, calibration, targets, gram=targets, cache=stats)
    measured = {id(x): st[x] for x in targets}
    for x in targets:
        cs = measured[id(x)]
        if cs.gram is None:
            raise ValueError(f"awq_scales: calibration stats of {st.name_of(x)} lack the Gram matrix")
        plan = plan_scale(graph, x)
        if not plan.consumers or (keep_float and all(id(c) in keep_float for c in plan.consumers)):
            continue
        s, r = search_for(graph, plan.consumers, cs, batches, bits, group, grid, sym, centred)
        if apply_scale(graph, plan, s, r) and record is not None:
            record.update({id(c): s for c in plan.consumers})
    return graph


def search_for(graph: Graph, consumers: list[Node], cs: ChannelStats, batches: Any, bits: int, group: int,
               grid: int, sym: bool, centred: bool = False) -> tuple[torch.Tensor, float]:
    """AWQ's scale search for one activation X read by ``consumers``, from X's calibration
    stats ``cs`` (mean|x| and Gram matrix) measured on ``graph``: the block-output loss when
    ``batches`` (a list) are given and the consumers meet in a block, else the Gram loss.
    Returns (s [K] float64, the winning exponent r)."""
    assert cs.gram is not None
    blk = block_of(graph, consumers) if batches is not None and \
        all(c.op == "linear" for c in consumers) else None
    if blk is not None:
        data = capture(graph, blk[0], blk[1], batches)
        mean_x = cs.sum / max(cs.rows, 1) if centred and cs.sum is not None else None
        s, r, _ = search_block_scale(data, consumers, cs.mean_abs_floored(),
                                     lambda w: fake_quant_int(w, bits, group, sym), grid, mean_x)
        bump(PASS, "block_loss")
        return s, r
    gram = cs.second_moment(centred and cs.sum is not None)
    s, r, _ = search_scale(_consumer_weights(consumers), cs.mean_abs_floored(), gram, bits, group, grid, sym)
    return s, r


def apply_scale(graph: Graph, plan: ScalePlan | Refusal, s: torch.Tensor, r: float) -> bool:
    """Fold the searched ``s`` into the graph along ``plan`` (into the producer, or an explicit
    ``mul`` on a refusal); nothing when r = 0 won. Returns whether the graph changed."""
    if r == 0.0:
        bump(PASS, "identity")
        return False
    if isinstance(plan, Refusal):
        report_refusal(PASS, "into_producer", plan)
        apply_explicit(graph, plan.value, plan.consumers, s)
        bump(PASS, "explicit_mul")
    else:
        plan.apply(graph, s)
        bump(PASS, f"into_{plan.absorber}")
    bump(PASS, "scaled")
    return True


__all__ = ["apply_scale", "awq_scales", "run_awq", "fake_quant_int", "output_mse", "search_for", "search_scale"]
