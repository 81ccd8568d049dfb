"""Applying per-channel factors to a graph: the producer-side edits of a
:class:`~scalefold.passes.scale_move.ScalePlan`, consumer compensation, and the explicit
``mul`` fallback. Every changed constant is a new constant Value (tied/shared tensors stay
untouched); arithmetic is in float64, rounded once to the constant's dtype.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from ..ir.graph import Graph, Node, Value

if TYPE_CHECKING:
    from .scale_move import Edit


def check_factor(s: torch.Tensor, c: int) -> torch.Tensor:
    """``s`` as a float64 [c] vector; raises ValueError for a wrong length, 0, NaN or Inf."""
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
    if s.numel() != c:
        raise ValueError(f"factor has {s.numel()} entries, the tensor has {c} channels")
    if not bool(torch.isfinite(s).all()) or bool((s == 0).any()):
        raise ValueError("factors must be finite and non-zero")
    return s


def _mapped(f: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.where(index >= 0, f[index.clamp(min=0)], torch.ones((), dtype=torch.float64))


def _set_const(graph: Graph, node: Node, i: int, t: torch.Tensor) -> None:
    """Point input ``i`` of ``node`` at a new constant holding ``t`` in the old one's dtype."""
    old = node.inputs[i]
    assert old is not None and old.dtype.is_float
    # A constant read only here is replaced, not copied: keep its name (per-layer overrides
    # and artifacts address weights by it).
    name = old.name if len(old.users()) == 1 else None
    graph.set_input(node, i, graph.add_const(t.to(old.dtype.container), dtype=old.dtype, name=name))


def _scaled(c: torch.Tensor, f: torch.Tensor, divide: bool = False) -> torch.Tensor:
    out = c.double() / f if divide else c.double() * f
    while out.dim() > c.dim() and out.shape[0] == 1:
        out = out[0]
    return out


def _with_inputs(graph: Graph, node: Node, inputs: list[Value | None]) -> Node:
    """Replace ``node`` by the same op with new inputs (used to add a missing norm weight)."""
    new = graph.create_node(node.op, inputs, dict(node.attrs), name=node.name)
    graph.insert_before(node, new)
    for a, b in zip(node.outputs, new.outputs):
        graph.replace_all_uses(a, b)
    graph.remove(node)
    return new


def apply_edit(graph: Graph, e: Edit, f: torch.Tensor) -> None:
    node = e.node
    if e.kind == "linear":
        ff = _mapped(f, e.index)
        _set_const(graph, node, 1, node.inputs[1].const.double() * ff[:, None])
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            _set_const(graph, node, 2, node.inputs[2].const.double() * ff)
    elif e.kind == "norm":
        ff = _mapped(f, e.index)
        has_bias = node.op == "layer_norm" and len(node.inputs) > 2 and node.inputs[2] is not None
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None:
            wt = graph.add_const(ff.to(node.outputs[0].dtype.container), dtype=node.outputs[0].dtype)
            ins = [node.inputs[0], wt] + list(node.inputs[2:])
            node = _with_inputs(graph, node, ins)
        else:
            _set_const(graph, node, 1, w.const.double() * ff)
        if has_bias:
            _set_const(graph, node, 2, node.inputs[2].const.double() * ff)
    elif e.kind in ("mul_const", "div_const", "add_const"):
        c = node.inputs[e.operand].const
        ff = _mapped(f, e.index)
        _set_const(graph, node, e.operand, _scaled(c, ff, divide=e.kind == "div_const"))
    else:  # pragma: no cover - plans only hold the kinds above
        raise ValueError(f"unknown edit {e.kind}")


def scale_consumers(graph: Graph, consumers: Sequence[Node], s: torch.Tensor) -> None:
    """Multiply the input-channel axis of every consumer's weights by ``s`` (new constants;
    shared/tied weights elsewhere are untouched). A weight several of these consumers read (a
    layer applied twice to the same input) gets one new constant, under its name when no
    other node reads the old one."""
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
    here = {id(n) for n in consumers}
    made: dict[int, Value] = {}
    for n in consumers:
        idxs = (1,) if n.op == "linear" else (1, 2, 3)
        for i in idxs:
            w = n.inputs[i]
            if w is None:
                continue
            if id(w) not in made:
                assert w.dtype.is_float
                name = w.name if all(id(u) in here for u in w.users()) else None
                made[id(w)] = graph.add_const((w.const.double() * s).to(w.dtype.container), dtype=w.dtype,
                                              name=name)
            graph.set_input(n, i, made[id(w)])


def apply_explicit(graph: Graph, value: Value, consumers: Sequence[Node], s: torch.Tensor) -> Node:
    """Serve ``consumers`` of ``value`` through an explicit ``mul(value, 1/s)`` (a constant [C]
    vector that fuses into kernels) and multiply their weights by s; other readers of
    ``value`` keep the unscaled tensor. Returns the new mul node."""
    s = check_factor(s, int(value.shape[-1]))
    inv = graph.add_const((1.0 / s).to(value.dtype.container), dtype=value.dtype)
    mul = graph.create_node("mul", [value, inv])
    first = min(consumers, key=graph.nodes.index)
    graph.insert_before(first, mul)
    for n in consumers:
        for i, v in enumerate(n.inputs):
            if v is value and i == 0:
                graph.set_input(n, i, mul.outputs[0])
    scale_consumers(graph, consumers, s)
    return mul
