"""Rule / Pattern matching and the fixpoint driver of passes/rewrite.py."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir.graph import Graph
from scalefold.ir.parser import parse
from scalefold.passes import Counters, counting
from scalefold.passes.rewrite import (CONST, Match, Pattern, RewriteError, Rule, apply_rules,
                                      collect_near_misses, replace_node)
from scalefold.runtime.interp import run

TEXT = """graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0: f32[2,3] = relu(%x)
  %1: f32[2,3] = mul(#c, %0)
  %2: f32[2,3] = neg(%1)
  %3: f32[2,3] = add(%2, %0)
  return %3
}
#c = const f32[3] [1.0, 2.0, 3.0]
"""


def _node(g: Graph, op: str):
    return next(n for n in g.nodes if n.op == op)


def test_pattern_by_name_tuple_and_predicate() -> None:
    g = parse(TEXT)
    relu = _node(g, "relu")
    assert Pattern("relu").match(relu) is not None
    assert Pattern(("neg", "relu")).match(relu) is not None
    assert Pattern(lambda n: n.op.startswith("re")).match(relu) is not None
    assert Pattern("neg").match(relu) is None


def test_operand_constraints_commutative_and_const() -> None:
    g = parse(TEXT)
    mul = _node(g, "mul")
    # The constant is operand 0 in the graph; the pattern asks for it at 1.
    assert Pattern("mul", {0: "relu", 1: CONST}).match(mul) is None
    m = Pattern("mul", {0: "relu", 1: CONST}, commutative=True).match(mul)
    assert m is not None and m.inputs[1].is_const and m.producer(0).op == "relu"
    # Nested: neg(mul(., relu)) with the relu bound two levels down.
    neg = _node(g, "neg")
    m2 = Pattern("neg", {0: Pattern("mul", {1: "relu"})}).match(neg)
    assert m2 is not None and m2.sub[0].producer(1).op == "relu"
    assert Pattern("neg", {0: Pattern("mul", {1: "exp"})}).match(neg) is None
    # An input of the graph has no producer: a producer constraint fails on it.
    assert Pattern("relu", {0: "neg"}).match(_node(g, "relu")) is None


def _neg_to_mul(graph: Graph, m: Match) -> bool:
    c = graph.add_const(torch.tensor(-1.0))
    replace_node(graph, m.node, graph.create_node("mul", [m.inputs[0], c]))
    return True


def test_driver_counts_applications_and_keeps_numerics() -> None:
    g = parse(TEXT)
    x = torch.randn(2, 3)
    want = run(g, x)[0]
    with counting() as c:
        n = apply_rules(g, [Rule("neg_to_mul", "neg", _neg_to_mul)], "t")
    assert n == 1 and c.get("t", "neg_to_mul") == 1
    assert [n.op for n in g.nodes] == ["relu", "mul", "mul", "add"]
    torch.testing.assert_close(run(g, x)[0], want)


def test_check_reason_is_a_near_miss_reported_once(monkeypatch, capfd) -> None:
    g = parse(TEXT)
    calls = []

    def check(m: Match) -> str | None:
        calls.append(m.node.op)
        return "operand is not positive"

    def never(graph: Graph, m: Match) -> bool:
        raise AssertionError("rewrite must not run after a refused check")

    rule = Rule("r", Pattern("mul", {1: CONST}, commutative=True), never, check)
    with collect_near_misses() as misses:
        assert apply_rules(g, [rule], "p") == 0
    assert len(misses) == 1 and misses[0].rule == "r" and misses[0].pass_name == "p"
    assert "mul" in misses[0].node and str(misses[0]).endswith("operand is not positive")
    assert capfd.readouterr().err == ""  # tracing is off by default
    monkeypatch.setenv("SCALEFOLD_TRACE_RULES", "1")
    apply_rules(g, [rule], "p")
    err = capfd.readouterr().err
    assert "p.r near-miss at mul" in err and "operand is not positive" in err


def test_rewrite_returning_false_does_not_count() -> None:
    g = parse(TEXT)
    with counting() as c:
        assert apply_rules(g, [Rule("noop", "add", lambda graph, m: False)], "t") == 0
    assert c.as_dict() == {}


def test_non_converging_rule_is_named() -> None:
    g = parse(TEXT)

    def renew(graph: Graph, m: Match) -> bool:  # replaces neg by a fresh neg forever
        replace_node(graph, m.node, graph.create_node("neg", [m.inputs[0]]))
        return True

    c = Counters()
    with counting(c), pytest.raises(RewriteError, match=r"t\.renew"):
        apply_rules(g, [Rule("renew", "neg", renew)], "t", max_iterations=5)
    assert c.get("t", "renew") == 5


def test_rules_run_to_a_fixpoint_across_sweeps() -> None:
    # Each rewrite enables the next one only on the following sweep (a chain of negs
    # collapses pairwise from the front).
    text = """graph @g(%x: f32[2]) -> (f32[2]) {
  %0: f32[2] = neg(%x)
  %1: f32[2] = neg(%0)
  %2: f32[2] = neg(%1)
  %3: f32[2] = neg(%2)
  %4: f32[2] = neg(%3)
  return %4
}
"""
    g = parse(text)

    def cancel(graph: Graph, m: Match) -> bool:
        inner = m.producer(0)
        graph.replace_all_uses(m.node.output, inner.inputs[0])
        graph.remove(m.node)
        if not inner.output.uses:
            graph.remove(inner)
        return True

    with counting() as c:
        apply_rules(g, [Rule("double_neg", Pattern("neg", {0: "neg"}), cancel)], "t")
    assert [n.op for n in g.nodes] == ["neg"] and c.get("t", "double_neg") == 2
