"""Cleanup passes: constant folding, dead-code elimination, CSE and identity removal.

Registered passes ``fold_constants``, ``dce``, ``cse``, ``remove_identities`` and ``cleanup``
(all four to a fixpoint); each pass docstring lists its rules, pre- and postconditions. Counts
go to ``counters[<pass>][<rule>]``; inside ``cleanup`` under ``counters["cleanup"]`` with the
same rule names (``fold_constant``, ``dead_node``, ``common_subexpr``, ``identity_<op>``).
"""
from __future__ import annotations

from typing import Callable

import sympy

from ..ir.graph import Graph, Node, Value
from ..ir.ops import get_op
from ..ir.types import dims_equal
from .counters import bump
from .pipeline import register_pass
from .rewrite import Match, Pattern, RewriteError, Rule, apply_rules, remove_if_dead

SMALL = 1024  # elements: a folded result this small is always worth a constant


# ---- fold_constants ----------------------------------------------------------------------

def _static_numel(v: Value) -> int | None:
    n = 1
    for d in v.shape:
        if not isinstance(d, int):
            return None
        n *= d
    return n


def _has_symbol(x: object) -> bool:
    if isinstance(x, tuple):
        return any(_has_symbol(y) for y in x)
    return isinstance(x, sympy.Basic) and bool(x.free_symbols)


def _foldable(node: Node) -> bool:
    if any(v is not None and not v.is_const for v in node.inputs):
        return False
    outs = [_static_numel(o) for o in node.outputs]
    if any(n is None for n in outs) or any(_has_symbol(a) for a in node.attrs.values()):
        return False
    size_in = sum(v.const.numel() for v in node.inputs if v is not None)
    size_out = sum(outs)  # type: ignore[arg-type]
    return size_out <= SMALL or size_out <= size_in


def _fold(graph: Graph, m: Match) -> bool:
    node = m.node
    args = [v.const if v is not None else None for v in node.inputs]
    res = get_op(node.op).reference(args, node.attrs)
    outs = list(res) if isinstance(res, (tuple, list)) else [res]
    for o, t in zip(node.outputs, outs):
        if tuple(t.shape) != tuple(o.shape) or t.dtype != o.dtype.container:
            return False  # the reference disagrees with the declared type: leave it to verify/interp
    for o, t in zip(node.outputs, outs):
        graph.replace_all_uses(o, Value(o.type, const=t.detach().contiguous().clone()))
    graph.remove(node)
    return True


FOLD_RULES = [Rule("fold_constant", Pattern(_foldable), _fold)]


# ---- remove_identities ---------------------------------------------------------------------

def _same_type(a: Value, b: Value) -> bool:
    return a.dtype == b.dtype and len(a.shape) == len(b.shape) and \
        all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def _all_equal(v: Value | None, x: float) -> bool:
    return v is not None and v.is_const and v.const.numel() > 0 and bool((v.const == x).all())


def _passthrough(node: Node) -> Value | None:
    """The input that ``node``'s single output equals, or None."""
    if len(node.outputs) != 1:
        return None
    op, a, out = node.op, node.attrs, node.outputs[0]
    ins = node.inputs
    cand: Value | None = None
    if op == "identity" or (op in ("reshape", "expand") and ins):
        cand = ins[0]
    elif op == "transpose":
        perm = a.get("perm")
        rank = len(out.shape)
        if (perm is None and rank <= 1) or (perm is not None and tuple(perm) == tuple(range(rank))):
            cand = ins[0]
    elif op == "cast":
        src = ins[0]
        if src is not None and a["to"] == src.dtype.name and a.get("from_dtype") in (None, src.dtype.name):
            cand = src
    elif op == "mul":
        cand = ins[0] if _all_equal(ins[1], 1) else (ins[1] if _all_equal(ins[0], 1) else None)
    elif op in ("div", "pow"):
        cand = ins[0] if _all_equal(ins[1], 1) else None
    elif op == "add":
        cand = ins[0] if _all_equal(ins[1], 0) else (ins[1] if _all_equal(ins[0], 0) else None)
    elif op == "sub":
        cand = ins[0] if _all_equal(ins[1], 0) else None
    elif op == "concat":
        cand = ins[0] if len(ins) == 1 else None
    elif op == "tile":
        cand = ins[0] if all(r == 1 for r in a["repeats"]) else None
    elif op == "pad":
        cand = ins[0] if all(isinstance(p, int) and p == 0 for p in a["pads"]) else None
    if cand is None or not _same_type(cand, out):
        return None  # e.g. a broadcast that grows the shape is not an identity
    return cand


_IDENTITY_OPS = ("identity", "reshape", "expand", "transpose", "cast", "mul", "div", "pow",
                 "add", "sub", "concat", "tile", "pad")


def _bypass(graph: Graph, m: Match) -> bool:
    src = _passthrough(m.node)
    if src is None:
        return False
    graph.replace_all_uses(m.node.outputs[0], src)
    remove_if_dead(graph, m.node)
    return True


def _identity_rule(op: str) -> Rule:
    return Rule(f"identity_{op}", Pattern(lambda n, op=op: n.op == op and _passthrough(n) is not None),
                _bypass)


IDENTITY_RULES = [_identity_rule(op) for op in _IDENTITY_OPS]


# ---- dce and cse -------------------------------------------------------------------------

def eliminate_dead(graph: Graph, pass_name: str = "dce") -> int:
    """Remove nodes whose outputs nobody reads or returns; returns how many."""
    returned = {id(v) for v in graph.outputs}
    n = 0
    for node in reversed(list(graph.nodes)):
        if all(not v.uses and id(v) not in returned for v in node.outputs):
            graph.remove(node)
            n += 1
    if n:
        bump(pass_name, "dead_node", n)
    return n


def eliminate_common(graph: Graph, pass_name: str = "cse") -> int:
    """Replace nodes that repeat an earlier node (op, attrs, inputs, output types); returns how many."""
    hashes: dict[int, str] = {}

    def key_of(v: Value | None) -> object:
        if v is None:
            return None
        if v.is_const:
            if id(v) not in hashes:
                hashes[id(v)] = v.const_hash()
            return ("c", hashes[id(v)])
        return ("v", id(v))

    seen: dict[object, Node] = {}
    n = 0
    for node in list(graph.nodes):
        key = (node.op, node.attrs, tuple(key_of(v) for v in node.inputs),
               tuple(str(o.type) for o in node.outputs))
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        for a, b in zip(node.outputs, first.outputs):
            graph.replace_all_uses(a, b)
        graph.remove(node)
        n += 1
    if n:
        bump(pass_name, "common_subexpr", n)
    return n


# ---- registered passes ---------------------------------------------------------------------

@register_pass("fold_constants")
def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants.

    Pre: none. Rule ``fold_constant``: a node whose inputs are all constants (or that has no
    inputs), with static output shapes and no symbolic attribute, is evaluated with its op's
    reference implementation and its outputs become constants -- but only when the result is
    small (<= 1024 elements) or not larger than its inputs together, so that folding never
    blows up the weights (an ``expand`` of a scalar to a big activation stays).
    Post: no foldable node is left; the node itself is removed.
    """
    apply_rules(graph, FOLD_RULES, "fold_constants")
    return graph


@register_pass("dce")
def dce(graph: Graph) -> Graph:
    """Remove dead nodes.

    Rule ``dead_node``: nodes none of whose outputs is read or returned are removed (in
    reverse order, so whole dead chains go in one run). Ops have no side effects.
    """
    eliminate_dead(graph, "dce")
    return graph


@register_pass("cse")
def cse(graph: Graph) -> Graph:
    """Merge repeated nodes.

    Rule ``common_subexpr``: a node with the same op, attributes, output types and inputs as
    an earlier node (constants compared by content hash) is replaced by the earlier one.
    """
    eliminate_common(graph, "cse")
    return graph


@register_pass("remove_identities")
def remove_identities(graph: Graph) -> Graph:
    """Bypass nodes that return one of their inputs unchanged.

    Rules ``identity_<op>``: nodes whose output equals one of their inputs (same dtype and
    provably the same shape) are bypassed: ``identity``; ``reshape``/``expand`` to the same
    shape; ``transpose`` by the identity permutation; ``cast`` to the same dtype; ``mul``
    by an all-ones constant, ``div``/``pow`` by ones; ``add`` of an all-zeros constant,
    ``sub`` of zeros; ``concat`` of one input; ``tile`` by ones; ``pad`` by zeros. Exact
    in float (up to the sign of a zero for ``x + 0``).
    """
    apply_rules(graph, IDENTITY_RULES, "remove_identities")
    return graph


def run_cleanup(graph: Graph, pass_name: str = "cleanup", max_rounds: int = 20) -> int:
    """Fold constants, remove identities, CSE and DCE until nothing changes; returns the
    number of changes."""
    steps: list[Callable[[], int]] = [
        lambda: apply_rules(graph, FOLD_RULES, pass_name),
        lambda: apply_rules(graph, IDENTITY_RULES, pass_name),
        lambda: eliminate_common(graph, pass_name),
        lambda: eliminate_dead(graph, pass_name),
    ]
    total = 0
    for _ in range(max_rounds):
        changed = sum(step() for step in steps)
        total += changed
        if not changed:
            return total
    raise RewriteError(f"pass {pass_name} did not converge after {max_rounds} rounds")


@register_pass("cleanup")
def cleanup(graph: Graph) -> Graph:
    """fold_constants, remove_identities, cse and dce, repeated to a fixpoint.

    All four above, repeated until none changes the graph (at most 20 rounds; more raises
    RewriteError). Counts go to ``counters["cleanup"]`` under the same rule names.
    """
    run_cleanup(graph, "cleanup")
    return graph


__all__ = ["fold_constants", "dce", "cse", "remove_identities", "cleanup", "run_cleanup",
           "eliminate_dead", "eliminate_common"]
