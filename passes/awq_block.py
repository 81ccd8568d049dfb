"""AWQ's block-output loss (ALGORITHMS.md §2): a scale candidate is scored by the MSE of the
whole block that follows the scaled activation — e.g. attention for q/k/v, whose softmax
damps q/k errors and passes v errors — instead of the consumers' own outputs.

The block of an activation X with linear consumers C is every node on a path from C to P,
the nearest common post-dominator of C in the dataflow graph (networkx's dominator tree of
the reversed graph): for q/k/v it ends at the attention op, for a gated MLP's gate/up at the
product; a lone consumer is its own block (then the Gram-matrix loss is already exact and
this module is not used). The block's external inputs (X, masks, ...) are captured from a
few calibration batches by the reference interpreter, and candidates are evaluated by
running the block's node references with the consumers' weights fake-quantised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import networkx as nx
import sympy
import torch

from ..ir.graph import Graph, Node, Value
from ..ir.ops import get_op
from ..ir.ops.common import bind_dims
from ..runtime.interp import Interpreter, bind_symbols
from .calibrate import _as_inputs, mask_input, real_rows

MAX_BLOCK_NODES = 64
_EXIT = "exit"


def _dataflow(graph: Graph) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_node(_EXIT)
    outs = {id(v) for v in graph.outputs}
    for n in graph.nodes:
        g.add_node(id(n))
        users = [u for o in n.outputs for u in o.users()]
        for u in users:
            g.add_edge(id(n), id(u))
        if not users or any(id(o) in outs for o in n.outputs):
            g.add_edge(id(n), _EXIT)
    return g


def block_of(graph: Graph, consumers: Sequence[Node]) -> tuple[list[Node], Node] | None:
    """(the block's nodes in graph order, its end node P), or None when the consumers share no
    post-dominator short of the graph's exit, or the block would be larger than
    ``MAX_BLOCK_NODES``."""
    if len(consumers) < 2:
        return None
    df = _dataflow(graph)
    ipdom = nx.immediate_dominators(df.reverse(copy=False), _EXIT)

    def chain(n: Any) -> list[Any]:
        out = [n]
        while out[-1] != _EXIT:
            out.append(ipdom[out[-1]])
        return out
    common = set(chain(id(consumers[0])))
    for c in consumers[1:]:
        common &= set(chain(id(c)))
    end = next(x for x in chain(id(consumers[0])) if x in common)
    if end == _EXIT:
        return None
    reach: set[Any] = set()
    for c in consumers:
        reach |= nx.descendants(df, id(c)) | {id(c)}
    back = nx.ancestors(df, end) | {end}
    ids = reach & back
    if len(ids) > MAX_BLOCK_NODES:
        return None
    nodes = [n for n in graph.nodes if id(n) in ids]
    return nodes, next(n for n in nodes if id(n) == end)


@dataclass
class BlockData:
    """Captured external inputs of a block over some calibration batches, and the float
    block outputs they give."""
    nodes: list[Node]
    end: Node
    externals: list[Value]
    feeds: list[tuple[dict[int, torch.Tensor], dict[sympy.Symbol, int]]]
    reference: list[list[torch.Tensor]]
    masks: list[torch.Tensor | None] | None = None   # per batch: the token mask, if the graph has one


def capture(graph: Graph, nodes: list[Node], end: Node, batches: Iterable[Sequence[torch.Tensor]],
            max_rows: int = 4096) -> BlockData:
    """Run ``graph`` on calibration batches (until ``max_rows`` rows of the block's first
    consumer input were seen) and keep the values the block reads from outside itself."""
    inside = {id(o) for n in nodes for o in n.outputs}
    ext: dict[int, Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and not v.is_const and id(v) not in inside:
                ext[id(v)] = v
    want = set(ext)
    interp = Interpreter(graph, check=False)
    feeds = []
    masks: list[torch.Tensor | None] = []
    mi = mask_input(graph)
    rows = 0
    for b in batches:
        b = tuple(_as_inputs(graph, b, len(feeds)))    # tuples, dicts by input name, one tensor
        masks.append(b[mi] if mi is not None else None)
        got: dict[int, torch.Tensor] = {id(v): t for v, t in zip(graph.inputs, b) if id(v) in want}

        def hook(node: Node, outs: list[torch.Tensor]) -> None:
            for o, t in zip(node.outputs, outs):
                if id(o) in want:
                    got[id(o)] = t
        interp.run(b, hook=hook)
        feeds.append((got, bind_symbols(graph, b)))
        first = nodes[0].inputs[0]
        rows += int(got[id(first)].numel() // max(int(got[id(first)].shape[-1]), 1)) if id(first) in got else 1
        if rows >= max_rows:
            break
    data = BlockData(nodes, end, list(ext.values()), feeds, [], masks)
    data.reference = [run_block(data, {}, i) for i in range(len(feeds))]
    return data


def run_block(data: BlockData, weights: dict[int, torch.Tensor], i: int) -> list[torch.Tensor]:
    """The block end's outputs on captured batch ``i`` with weight constants replaced by
    ``weights`` (keyed by the constant Value's id)."""
    vals, env = dict(data.feeds[i][0]), data.feeds[i][1]

    def fetch(v: Value | None) -> torch.Tensor | None:
        if v is None:
            return None
        if id(v) in weights:
            return weights[id(v)]
        return v.const if v.is_const else vals[id(v)]
    for n in data.nodes:
        res = get_op(n.op).reference([fetch(v) for v in n.inputs], bind_dims(n.attrs, env))
        outs = list(res) if isinstance(res, (tuple, list)) else [res]
        for o, t in zip(n.outputs, outs):
            vals[id(o)] = t
    return [vals[id(o)] for o in data.end.outputs]


def block_loss(data: BlockData, weights: dict[int, torch.Tensor]) -> float:
    """Mean squared error of the block output against the float block, over the batches (the
    rows of real tokens only, where the output's shape shows them: :func:`real_rows`)."""
    num, cnt = 0.0, 0
    for i, ref in enumerate(data.reference):
        m = data.masks[i] if data.masks else None
        for y, y0 in zip(run_block(data, weights, i), ref):
            if y.is_floating_point():
                d = real_rows((y.double() - y0.double()), m) if y.dim() >= 1 else y.double() - y0.double()
                num += float(d.pow(2).sum())
                cnt += d.numel()
    return num / max(cnt, 1)


def grid_search(mean_abs: torch.Tensor, grid: int, loss: Callable[[torch.Tensor], float]
                ) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's search over r in {0, 1/grid, …, (grid−1)/grid}: s = s_X^r normalised by
    sqrt(max(s)·min(s)), scored by ``loss(s as float32)``. Returns (the best s [K] float64,
    its r, the loss per r); ties keep the smaller r."""
    sx = mean_abs.to(torch.float64)
    losses: list[float] = []
    best: tuple[float, torch.Tensor, float] | None = None
    for i in range(grid):
        r = i / grid
        s = sx.pow(r)
        s = s / torch.sqrt(s.max() * s.min())
        cur = loss(s.to(torch.float32))
        losses.append(cur)
        if best is None or cur < best[0]:
            best = (cur, s, r)
    assert best is not None
    return best[1], best[2], losses


def search_block_scale(data: BlockData, consumers: Sequence[Node], mean_abs: torch.Tensor,
                       fake: Callable[[torch.Tensor], torch.Tensor], grid: int = 20,
                       mean_x: torch.Tensor | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's grid search scored by :func:`block_loss`: s = s_X^r / sqrt(max·min), r in
    {0, 1/grid, …}; candidate weights Q(W·diag(s))·diag(s)⁻¹ (``fake`` is Q). With ``mean_x``
    (the mean input row) each consumer's bias also takes −(Ŵ − W) mean_x: the candidate as
    bias correction will leave it (only for consumers that have a bias constant: a bias-less
    one is scored uncentred). Returns (s [K] float64, best r, loss per r)."""
    ws = [(c.inputs[1], c.inputs[1].const) for c in consumers]
    bs = [(c.inputs[2], c.inputs[2].const) if len(c.inputs) > 2 and c.inputs[2] is not None and
          c.inputs[2].is_const else None for c in consumers]

    def loss(s32: torch.Tensor) -> float:
        cand: dict[int, torch.Tensor] = {}
        for (v, w), b in zip(ws, bs):
            wq = fake(w.to(torch.float32) * s32) / s32
            cand[id(v)] = wq.to(w.dtype)
            if mean_x is not None and b is not None:
                shift = (wq - w.to(torch.float32)).double() @ mean_x.double()
                cand[id(b[0])] = (b[1].double() - shift).to(b[1].dtype)
        return block_loss(data, cand)
    return grid_search(mean_abs, grid, loss)


__all__ = ["BlockData", "block_loss", "block_of", "capture", "grid_search", "run_block", "search_block_scale"]
