"""Graph analyses: networkx view, orders, cycles, dominators, reachability, liveness,
memory and cost."""
from __future__ import annotations

import random

import networkx as nx
import pytest
import sympy
import torch

from scalefold.ir import Graph, IRError, TensorType, Value, sym
from scalefold.ir import analysis as A
from scalefold.ir.verify import verify

B, S = sym("B"), sym("S")


def T(dtype: str, *shape) -> TensorType:
    return TensorType(dtype, shape)


def diamond() -> tuple[Graph, list]:
    """a = relu(x); b = relu(a); c = relu(a); d = add(b, c)."""
    g = Graph("diamond")
    x = g.add_input(T("f32", "B", 4), "x")
    a = g.add("relu", [x], name="a")
    b = g.add("relu", [a], name="b")
    c = g.add("relu", [a], name="c")
    d = g.add("add", [b, c], name="d")
    g.set_outputs([d])
    return g, [v.producer for v in (a, b, c, d)]


# ---- networkx view ------------------------------------------------------------------------
def test_to_networkx_edges_carry_value_and_index():
    g, (a, b, c, d) = diamond()
    G = A.to_networkx(g)
    assert isinstance(G, nx.MultiDiGraph)
    assert list(G.nodes) == [a, b, c, d]
    assert G.nodes[c]["pos"] == 2
    assert sorted((g.nodes.index(u), g.nodes.index(v), k["index"]) for u, v, k in G.edges(data=True)) \
        == [(0, 1, 0), (0, 2, 0), (1, 3, 0), (2, 3, 1)]
    (data,) = G.get_edge_data(b, d).values()
    assert data["value"] is b.output and data["index"] == 0
    assert g.to_networkx().number_of_edges() == 4


def test_to_networkx_parallel_edges_and_value_nodes():
    g = Graph()
    x = g.add_input(T("f32", 3), "x")
    w = g.add_const(torch.ones(3), name="w")
    a = g.add("relu", [x])
    s = g.add("add", [a, a])
    t = g.add("add", [s, w])
    g.set_outputs([t])
    G = A.to_networkx(g)
    assert G.number_of_edges(a.producer, s.producer) == 2  # one per input position
    V = A.to_networkx(g, with_values=True)
    assert V.nodes[x]["kind"] == "input" and V.nodes[w]["kind"] == "const"
    assert list(V.successors(w)) == [t.producer]
    assert V.number_of_nodes() == 5


# ---- topological order and cycles ---------------------------------------------------------
def test_topo_order_fixes_a_shuffled_graph():
    g = Graph("mlp")
    x = g.add_input(T("f32", "B", 8), "x")
    h = x
    for _ in range(6):
        h = g.add("relu", [h])
        h = g.add("add", [h, x])
    g.set_outputs([h])
    original = list(g.nodes)
    rng = random.Random(0)
    for _ in range(5):
        rng.shuffle(g.nodes)
        assert g.nodes != original
        with pytest.raises(IRError):
            verify(g)
        g.sort()
        assert g.nodes == original
        verify(g)


def test_topo_order_is_stable():
    g = Graph()
    x = g.add_input(T("f32", 2), "x")
    a = g.add("relu", [x], name="a")
    b = g.add("relu", [x], name="b")
    c = g.add("add", [a, b], name="c")
    g.set_outputs([c])
    # Already sorted: unchanged.
    assert A.topo_order(g) == [a.producer, b.producer, c.producer]
    # c first, then b, then a: independent a and b keep their relative order (b before a).
    g.nodes = [c.producer, b.producer, a.producer]
    assert [n.name for n in A.topo_order(g)] == ["b", "a", "c"]


def test_cycle_is_reported_naming_nodes():
    g = Graph("loop")
    x = g.add_input(T("f32", 2), "x")
    a = g.add("relu", [x], name="first")
    b = g.add("relu", [a], name="second")
    c = g.add("relu", [b], name="third")
    g.set_outputs([c])
    assert A.find_cycle(g) is None
    g.set_input(a.producer, 0, b)  # first reads second, which reads first
    cycle = A.find_cycle(g)
    assert cycle is not None and set(cycle) == {a.producer, b.producer}
    with pytest.raises(IRError) as ei:
        A.topo_order(g)
    msg = str(ei.value)
    assert "cycle" in msg and "relu 'first'" in msg and "relu 'second'" in msg
    assert "third" not in msg
    with pytest.raises(IRError, match="cycle"):
        g.sort()


# ---- dominators and reachability ----------------------------------------------------------
def test_diamond_dominators():
    g, (a, b, c, d) = diamond()
    assert A.dominators(g) == {a: None, b: a, c: a, d: a}


def test_dominators_when_a_graph_input_bypasses_nodes():
    g = Graph()
    x = g.add_input(T("f32", 2), "x")
    a = g.add("relu", [x]).producer
    b = g.add("relu", [a.output]).producer
    c = g.add("add", [b.output, x]).producer   # x reaches c without passing a or b
    d = g.add("relu", [c.output]).producer
    g.set_outputs([d.output])
    assert A.dominators(g) == {a: None, b: a, c: None, d: c}


def test_reachability_and_dead_nodes():
    g, (a, b, c, d) = diamond()
    x = g.inputs[0]
    assert A.reachable_from(a) == {b, c, d}
    assert A.reachable_from(b.output) == {d}
    assert A.reachable_from(x) == {a, b, c, d}
    assert A.consumers_closure(a.output) == [b, c, d]
    assert A.dead_nodes(g) == []
    e = g.add("relu", [b.output], name="e").producer
    f = g.add("relu", [e.output], name="f").producer
    assert A.dead_nodes(g) == [e, f]
    assert A.reachable_from(b) == {d, e, f}
    g.set_outputs([d.output, f.output])
    assert A.dead_nodes(g) == []
    g.set_outputs([b.output])
    assert A.dead_nodes(g) == [c, d, e, f]


# ---- liveness and memory ------------------------------------------------------------------
def test_liveness_of_a_chain():
    g = Graph()
    x = g.add_input(T("f32", "B", 4), "x")
    w = g.add_const(torch.ones(4), name="w")
    a = g.add("relu", [x])          # step 0
    b = g.add("add", [a, w])        # step 1
    c = g.add("relu", [b])          # step 2
    unused = g.add("relu", [a])     # step 3
    g.set_outputs([c])
    live = A.liveness(g)
    assert live == {x: (-1, 0), a: (0, 3), b: (1, 2), c: (2, 3), unused: (3, 3)}
    assert w not in live  # constants are not intervals


def test_peak_memory_by_hand():
    # x: f32[B,4] (16B bytes), a = relu(x), b = relu(a), c = add(b, x); output c.
    # step 0: x, a      -> 32B
    # step 1: x, a, b   -> 48B
    # step 2: x, b, c   -> 48B
    g = Graph()
    x = g.add_input(T("f32", "B", 4), "x")
    a = g.add("relu", [x])
    b = g.add("relu", [a])
    c = g.add("add", [b, x])
    g.set_outputs([c])
    assert A.live_bytes(g) == [32 * B, 48 * B, 48 * B]
    assert sympy.simplify(A.peak_memory(g) - 48 * B) == 0
    assert A.peak_memory(g, {B: 3}) == 144


def test_peak_memory_static_and_mixed_dtypes():
    # x f16[10] (20 B), y i4[5] (2.5 B packed); a = relu(x) (20 B), z = cast(y) to i8 (5 B).
    # step 0: x, y, a         -> 42.5
    # step 1: y, a (output), z -> 27.5
    g = Graph()
    x = g.add_input(T("f16", 10), "x")
    y = g.add_input(T("i4", 5), "y")
    a = g.add("relu", [x])
    z = g.add("cast", [y], {"to": "i8"})
    g.set_outputs([a, z])
    assert A.live_bytes(g) == [sympy.Rational(85, 2), sympy.Rational(55, 2)]
    peak = A.peak_memory(g)
    assert peak == 43 and isinstance(peak, int)  # rounded up to whole bytes


def test_peak_memory_symbolic_matches_every_binding():
    # Steps of incomparable size (B*S vs 4*B): the symbolic peak is a Max that must agree
    # with the evaluated one for every binding.
    g = Graph()
    x = g.add_input(T("f32", "B", "S"), "x")
    y = g.add_input(T("f32", "B", 4), "y")
    a = g.add("relu", [x])
    b = g.add("relu", [y])
    c = g.add("relu", [b])
    g.set_outputs([a, c])
    peak = A.peak_memory(g)
    assert isinstance(peak, sympy.Expr) and peak.free_symbols == {B, S}
    for bv, sv in [(1, 1), (2, 16), (3, 2), (7, 5)]:
        env = {B: bv, S: sv}
        by_hand = max(4 * bv * sv * 2 + 16 * bv,            # step 0: x, a, y
                      4 * bv * sv + 16 * bv * 2,            # step 1: a, y, b
                      4 * bv * sv + 16 * bv * 2)            # step 2: a, b, c
        assert A.peak_memory(g, env) == by_hand
        assert int(peak.subs(env)) == by_hand
    with pytest.raises(IRError, match="S"):
        A.peak_memory(g, {B: 2})


# ---- cost ----------------------------------------------------------------------------------
def test_graph_cost_and_table():
    g, (a, b, c, d) = diamond()
    assert A.node_cost(a).flops == 4 * B
    total = A.graph_cost(g)
    assert total.flops == 16 * B
    assert total.bytes == 3 * 32 * B + 48 * B
    rows = A.cost_table(g)
    assert [r["op"] for r in rows] == ["relu", "relu", "relu", "add"]
    assert rows[3] == {"index": 3, "op": "add", "name": "d", "type": "f32[B,4]",
                       "flops": 4 * B, "bytes": 48 * B}
    rows = A.cost_table(g, {B: 5})
    assert rows[3]["flops"] == 20 and rows[3]["bytes"] == 240


def test_linear_flops_are_symbolic():
    g = Graph()
    x = g.add_input(T("f32", "B", "K"), "x")
    w = g.add_input(T("f32", "N", "K"), "w")
    y = g.add("linear", [x, w])
    g.set_outputs([y])
    Bs, K, N = sym("B"), sym("K"), sym("N")
    cost = A.graph_cost(g)
    assert sympy.expand(cost.flops - 2 * Bs * K * N) == 0
    assert sympy.expand(cost.bytes - 4 * (Bs * K + N * K + Bs * N)) == 0
    row, = A.cost_table(g, {Bs: 2, K: 3, N: 5})
    assert row["flops"] == 60 and row["type"] == "f32[B,N]"


def test_constant_bytes():
    g = Graph()
    x = g.add_input(T("f32", 4), "x")
    w = g.add_const(torch.ones(4), name="w")
    q = g.add_const(torch.zeros(4, dtype=torch.int8), dtype="i4", name="q")
    y = g.add("add", [x, w])
    g.set_outputs([y, q])
    assert A.constant_bytes(g) == 18  # 16 for f32[4], 2 for i4[4] packed
