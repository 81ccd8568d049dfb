"""Bias correction after weight quantisation (``quant_weights(bias_correct=...)``).

Quantising W shifts the mean of a linear's output by (Ŵ − W) E[x], and the shifts add up
layer after layer (a systematic drift the per-layer searches, which score squared error, do
not remove). The correction adds E[y_float] − E[y_quant] to each quantised linear's bias
(creating one where there was none), with

- E[y_float]: the mean output of the float linear on the float model, over the real tokens of
  the calibration batches (``calibrate.py`` leaves padded rows out);
- E[y_quant]: the mean output of the quantised linear on the *quantised* model whose earlier
  linears are already corrected (sequential, as GPTQ calibrates), over the same rows.

One forward pass does it: the batches run in lockstep, node by node, so every quantised
linear's correction is known (from all batches) before any later node reads its output. Its
memory is that of one interpreter run per batch held together.

On the real all-MiniLM-L6-v2 (int4 g128 AWQ, 48 calibration sentences) the correction, with
the searches scoring the error left after it (covariance instead of XᵀX), moved the mean
sentence cosine from 0.9766 to 0.9801 (``benchmarks/quant_weights_accuracy.py``). At int3 it
made the outputs worse, on the calibration sentences too (0.9118 → 0.8589): a few tokens with
large errors dominate the means. So ``quant_weights`` keeps it only when
:class:`OutputCheck` finds the outputs closer to the float model's.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..ir.errors import ExecutionError, ScalefoldError
from ..ir.graph import Graph, Node, Value
from ..ir.ops import get_op
from ..ir.ops.common import bind_dims
from ..runtime.interp import Interpreter, bind_symbols
from .calibrate import _as_inputs, calibrate, mask_input, real_rows


def float_means(graph: Graph, batches: Sequence[Any], nodes: Sequence[Node]) -> dict[int, torch.Tensor]:
    """{id(node): mean of its first output over the real calibration rows} [N] float64, on
    ``graph`` as it is (call it before quantising)."""
    outs = list({id(n.outputs[0]): n.outputs[0] for n in nodes}.values())
    st = calibrate(graph, batches, values=outs, progress=False)
    res = {}
    for n in nodes:
        cs = st[n.outputs[0]]
        assert cs.sum is not None
        res[id(n)] = cs.sum / max(cs.rows, 1)
    return res


def _ancestors(graph: Graph, targets: set[int]) -> set[int]:
    """ids of the nodes some target depends on (targets included)."""
    need = set(targets)
    for n in reversed(graph.nodes):
        if id(n) in need:
            for v in n.inputs:
                if v is not None and v.producer is not None:
                    need.add(id(v.producer))
    return need


def _set_bias(graph: Graph, node: Node, delta: torch.Tensor) -> None:
    """bias += delta on qlinear ``node`` (input 4; a new constant where there was none)."""
    out = node.outputs[0]
    while len(node.inputs) < 5:
        node.inputs.append(None)      # qlinear(x, w, scale, zero?, bias?): the optional slots
    old = node.inputs[4]
    base = old.const.to(torch.float64) if old is not None else torch.zeros_like(delta)
    name = old.name if old is not None else (f"{node.inputs[1].name}.bias" if node.inputs[1].name else None)
    graph.set_input(node, 4, graph.add_const((base + delta).to(out.dtype.container), out.dtype, name=name))


def restore_biases(graph: Graph, old: Sequence[tuple[Node, Value | None]]) -> None:
    """Undo :func:`correct_biases` (its return value)."""
    for n, v in old:
        graph.set_input(n, 4, v)


class OutputCheck:
    """Scores a quantised graph by the summed squared difference of its float outputs (real
    rows) from the float model's on the first ``batches`` calibration batches. Keeps a clone
    of the float graph (constants shared) and recomputes its outputs batch by batch, so only
    one batch's outputs are held at a time (an LLM's logits would not fit many times over)."""

    def __init__(self, graph: Graph, calibration: Sequence[Any], batches: int = 2) -> None:
        self.float_graph = graph.clone()
        self.batches = list(calibration)[:batches]
        self.mi = mask_input(graph)

    def error(self, graph: Graph) -> float:
        tot = 0.0
        with torch.no_grad():
            for i, b in enumerate(self.batches):
                x = _as_inputs(graph, b, i)
                m = x[self.mi] if self.mi is not None else None
                got = Interpreter(graph, check=False).run(x)
                want = Interpreter(self.float_graph, check=False).run(x)
                for a, w in zip(got, want):
                    if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dim() >= 1:
                        d = real_rows(a.to(torch.float64) - w.to(torch.float64), m)
                        tot += float(d.pow(2).sum())
        return tot


def correct_biases(graph: Graph, targets: Sequence[tuple[Node, torch.Tensor]], batches: Sequence[Any]
                   ) -> list[tuple[Node, Value | None]]:
    """Sequential bias correction of the qlinear nodes in ``targets`` ((node, float output
    mean) pairs): runs ``batches`` through ``graph`` in lockstep and, at each target, adds
    mean_float − mean_now (over the real rows of all batches) to its bias and to the outputs
    the later nodes read. Returns how many biases changed.

    Pre: every target is a ``qlinear`` of ``graph`` with a float output [..., N] and its mean
    is [N]. Post: same graph structure, target biases updated (created where absent)."""
    if not targets:
        return []
    want = {id(n): mu for n, mu in targets}
    for n, mu in targets:
        if n.op != "qlinear":
            raise ScalefoldError(f"bias correction: {n.describe()} is not a qlinear")
    ins = [_as_inputs(graph, b, i) for i, b in enumerate(batches)]
    envs = [bind_symbols(graph, x) for x in ins]
    mi = mask_input(graph)
    masks = [x[mi] if mi is not None else None for x in ins]
    need = _ancestors(graph, set(want))
    steps = [n for n in graph.nodes if id(n) in need]
    last: dict[int, int] = {}
    for i, n in enumerate(steps):
        for v in n.inputs:
            if v is not None and not v.is_const:
                last[id(v)] = i
    vals: list[dict[int, torch.Tensor]] = [{id(v): t for v, t in zip(graph.inputs, x)} for x in ins]
    changed: list[tuple[Node, Value | None]] = []
    with torch.no_grad():
        for i, n in enumerate(steps):
            op = get_op(n.op)
            outs_all = []
            for b in range(len(ins)):
                args = [None if v is None else v.const if v.is_const else vals[b][id(v)] for v in n.inputs]
                try:
                    res = op.reference(args, bind_dims(n.attrs, envs[b]))
                except ScalefoldError:
                    raise
                except Exception as e:
                    raise ExecutionError(f"bias correction: node {n.describe()} ({n.op}) failed on calibration "
                                         f"batch {b}: {type(e).__name__}: {e}") from e
                outs_all.append(list(res) if isinstance(res, (tuple, list)) else [res])
            if id(n) in want:
                tot, cnt = 0.0, 0
                for b, outs in enumerate(outs_all):
                    rows = real_rows(outs[0].detach().to(torch.float64), masks[b])
                    tot = tot + rows.sum(0)
                    cnt += rows.shape[0]
                if cnt:
                    delta = want[id(n)].to(torch.float64) - tot / cnt
                    changed.append((n, n.inputs[4] if len(n.inputs) > 4 else None))
                    _set_bias(graph, n, delta)
                    for outs in outs_all:
                        outs[0] = (outs[0].to(torch.float64) + delta).to(outs[0].dtype)
            for b, outs in enumerate(outs_all):
                for o, t in zip(n.outputs, outs):
                    vals[b][id(o)] = t
            for v in n.inputs:
                if v is not None and not v.is_const and last.get(id(v)) == i:
                    for b in range(len(ins)):
                        vals[b].pop(id(v), None)
    return changed


__all__ = ["OutputCheck", "correct_biases", "float_means", "restore_biases"]
