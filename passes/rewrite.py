"""Local rewrites as data: ``Rule(name, pattern, rewrite, check)`` and a fixpoint driver.

- A :class:`Pattern` matches one node: by op name (a string or a tuple of names) or a
  predicate, optionally constraining the producers of some operands (nested patterns, or
  :data:`CONST` for "this operand is a constant"). ``commutative=True`` also tries the two
  operands of a binary op swapped.
- ``check(match) -> None | reason`` decides legality; a reason makes the match a *near-miss*,
  which is recorded (see :func:`collect_near_misses`) and, with ``SCALEFOLD_TRACE_RULES=1``,
  printed to stderr, so that "why did my BatchNorm not fold?" has an answer.
- ``rewrite(graph, match) -> bool`` mutates the graph through the Graph helpers and says
  whether it changed anything; every application counts as ``counters[pass][rule]``.
- :func:`apply_rules` sweeps the graph until no rule fires; hitting the iteration limit
  raises :class:`RewriteError` naming the rules still firing (a rule that undoes another).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

from ..ir.errors import ScalefoldError
from ..ir.graph import Graph, Node, Value
from .counters import bump


class RewriteError(ScalefoldError):
    """A rewrite did not converge (or a rule broke its contract); the message names the rule."""


class _Const:
    """Operand constraint: the operand is a constant Value."""

    def __repr__(self) -> str:
        return "CONST"


CONST = _Const()

OpSpec = Union[str, tuple, Callable[[Node], bool]]


@dataclass(frozen=True)
class Pattern:
    """Matches a node by ``op`` (name, tuple of names or predicate) and operand constraints.

    ``operands[i]`` constrains input ``i``: a nested Pattern (or op spec) that its producer
    must match, or :data:`CONST`. With ``commutative=True`` a binary node also matches with
    its two inputs swapped; ``Match.inputs`` is then in pattern order.
    """
    op: OpSpec
    operands: Mapping[int, Any] = field(default_factory=dict)
    commutative: bool = False

    def _op_ok(self, node: Node) -> bool:
        if isinstance(self.op, str):
            return node.op == self.op
        if isinstance(self.op, tuple):
            return node.op in self.op
        return bool(self.op(node))

    def match(self, node: Node) -> "Match | None":
        """A Match for ``node``, or None."""
        if not self._op_ok(node):
            return None
        orders = [list(range(len(node.inputs)))]
        if self.commutative and len(node.inputs) == 2:
            orders.append([1, 0])
        for order in orders:
            inputs = [node.inputs[j] for j in order]
            bound = self._operands_ok(inputs)
            if bound is not None:
                return Match(node, inputs, bound)
        return None

    def _operands_ok(self, inputs: list[Value | None]) -> dict[int, "Match"] | None:
        bound: dict[int, Match] = {}
        for i, spec in self.operands.items():
            v = inputs[i] if i < len(inputs) else None
            if v is None:
                return None
            if spec is CONST:
                if not v.is_const:
                    return None
                continue
            if v.producer is None:
                return None
            sub = as_pattern(spec).match(v.producer)
            if sub is None:
                return None
            bound[i] = sub
        return bound


def as_pattern(spec: Any) -> Pattern:
    """A Pattern from a Pattern, an op name, a tuple of op names or a predicate."""
    return spec if isinstance(spec, Pattern) else Pattern(spec)


@dataclass
class Match:
    """A matched node; ``inputs`` in pattern order; ``sub[i]`` the match of operand i's producer."""
    node: Node
    inputs: list[Value | None]
    sub: dict[int, "Match"]
    data: dict[str, Any] = field(default_factory=dict)  # check() may leave results for rewrite()

    def producer(self, i: int) -> Node:
        """The producer node bound by the operand-``i`` constraint."""
        return self.sub[i].node


@dataclass(frozen=True)
class Rule:
    """One local rewrite. ``pattern`` is a Pattern or anything :func:`as_pattern` accepts."""
    name: str
    pattern: Any
    rewrite: Callable[[Graph, Match], bool]
    check: Callable[[Match], str | None] | None = None

    def match(self, node: Node) -> Match | None:
        return as_pattern(self.pattern).match(node)


@dataclass(frozen=True)
class NearMiss:
    """A node a rule matched but ``check`` refused, with the reason."""
    pass_name: str
    rule: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pass_name}.{self.rule} near-miss at {self.node}: {self.reason}"


_sink: contextvars.ContextVar[list[NearMiss] | None] = contextvars.ContextVar(
    "scalefold_near_misses", default=None)


@contextlib.contextmanager
def collect_near_misses() -> Iterator[list[NearMiss]]:
    """Collect every near-miss reported inside the block into the yielded list."""
    out: list[NearMiss] = []
    token = _sink.set(out)
    try:
        yield out
    finally:
        _sink.reset(token)


def report_near_miss(pass_name: str, rule: str, node: Node, reason: str) -> None:
    """Record a near-miss (and print it when ``SCALEFOLD_TRACE_RULES=1``)."""
    nm = NearMiss(pass_name, rule, node.describe(), reason)
    sink = _sink.get()
    if sink is not None:
        sink.append(nm)
    if os.environ.get("SCALEFOLD_TRACE_RULES") == "1":
        print(f"[scalefold] {nm}", file=sys.stderr)


def apply_rules(graph: Graph, rules: Sequence[Rule], pass_name: str,
                max_iterations: int = 100) -> int:
    """Apply ``rules`` until none fires; returns the number of applications.

    Each sweep visits the nodes in order and tries the rules in order on each; after a rule
    rewrote a node the sweep moves on (the node may be gone). A near-miss is reported once
    per (rule, node, reason) for the whole run, not once per sweep.
    """
    total = 0
    reported: set[tuple[str, int, str]] = set()
    for _ in range(max_iterations):
        fired: dict[str, int] = {}
        for node in list(graph.nodes):
            if node.graph is not graph:
                continue  # removed by an earlier rewrite of this sweep
            for rule in rules:
                m = rule.match(node)
                if m is None:
                    continue
                reason = rule.check(m) if rule.check is not None else None
                if reason:
                    key = (rule.name, id(node), reason)
                    if key not in reported:
                        reported.add(key)
                        report_near_miss(pass_name, rule.name, node, reason)
                    continue
                if rule.rewrite(graph, m):
                    bump(pass_name, rule.name)
                    fired[rule.name] = fired.get(rule.name, 0) + 1
                    total += 1
                    break
        if not fired:
            return total
    names = ", ".join(f"{pass_name}.{r} ({n}x)" for r, n in sorted(fired.items()))
    raise RewriteError(f"pass {pass_name} did not converge after {max_iterations} sweeps; "
                       f"still firing: {names}")


# ---- small helpers shared by rule rewrites ------------------------------------------------

def single_reader(v: Value, graph: Graph) -> str | None:
    """None when ``v`` has exactly one reading input and is not a graph output, else why not."""
    if any(o is v for o in graph.outputs):
        return "is a graph output"
    if len(v.uses) != 1:
        return f"has {len(v.uses)} readers"
    return None


def replace_node(graph: Graph, old: Node, new: Node) -> None:
    """Insert ``new`` before ``old``, move ``old``'s readers to ``new``'s outputs, drop ``old``."""
    graph.insert_before(old, new)
    for a, b in zip(old.outputs, new.outputs):
        graph.replace_all_uses(a, b)
    graph.remove(old)


def remove_if_dead(graph: Graph, node: Node) -> None:
    """Remove ``node`` when nothing reads its outputs any more."""
    if node.graph is graph and all(not v.uses and not any(o is v for o in graph.outputs)
                                   for v in node.outputs):
        graph.remove(node)
