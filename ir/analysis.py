"""Graph analyses on networkx views of the IR (DESIGN.md §3): orders, dominators,
reachability, liveness, peak memory and symbolic cost.

The networkx view (:func:`to_networkx`) has one networkx node per IR :class:`Node`, keyed
by the Node object itself (Nodes hash by identity), carrying its current position as the
``pos`` attribute. An edge producer -> consumer is added for every consumer input that reads
a producer's output, with ``value`` (the Value) and ``index`` (the consumer's input
position) as edge data; a consumer reading one value twice gets two parallel edges. Graph
inputs and constants are not networkx nodes unless ``with_values=True``, in which case each
is keyed by its Value object with ``kind`` "input" or "const".

Every algorithm here is a networkx one; this file only translates between the two worlds.
"""
from __future__ import annotations

from typing import Any

import networkx as nx
import sympy

from .errors import IRError
from .graph import Graph, Node, Value
from .ops import Cost, get_op

# The virtual entry of the dominator computation: it "defines" every graph input and constant.
_ENTRY = "__entry__"


# ---- the networkx view ---------------------------------------------------------------------
def to_networkx(graph: Graph, with_values: bool = False) -> nx.MultiDiGraph:
    """The dataflow of ``graph`` as a MultiDiGraph keyed by Node objects (see module doc).

    Values whose producer is not a node of ``graph`` contribute no edge; with
    ``with_values=True`` graph inputs and constants become nodes with edges to their readers.
    """
    g = nx.MultiDiGraph(name=graph.name)
    members: set[int] = set()
    for pos, n in enumerate(graph.nodes):
        g.add_node(n, pos=pos, kind="node")
        members.add(id(n))
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            p = v.producer
            if p is not None and id(p) in members:
                g.add_edge(p, n, value=v, index=i)
            elif with_values and p is None:
                if v not in g:
                    g.add_node(v, kind="const" if v.is_const else "input")
                g.add_edge(v, n, value=v, index=i)
    if with_values:
        for v in graph.inputs:
            if v not in g:
                g.add_node(v, kind="input")
    return g


def _node_graph(graph: Graph) -> nx.MultiDiGraph:
    return to_networkx(graph)


def _cycle_nodes(g: nx.MultiDiGraph) -> list[Node] | None:
    try:
        edges = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        return None
    return [e[0] for e in edges]


# ---- orders and cycles ---------------------------------------------------------------------
def find_cycle(graph: Graph) -> list[Node] | None:
    """The nodes of one dataflow cycle, each feeding the next (and the last the first), or
    ``None`` when the graph is acyclic."""
    return _cycle_nodes(_node_graph(graph))


def topo_order(graph: Graph) -> list[Node]:
    """A topological order of ``graph.nodes`` that keeps the current order wherever the
    dataflow allows (among ready nodes, the earliest-listed goes first); raises IRError
    naming the nodes of a cycle."""
    g = _node_graph(graph)
    pos = nx.get_node_attributes(g, "pos")
    try:
        return list(nx.lexicographical_topological_sort(g, key=pos.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = _cycle_nodes(g) or []
        names = " -> ".join(n.describe() for n in cycle + cycle[:1])
        raise IRError(f"graph @{graph.name} has a dataflow cycle: {names}") from None


# ---- dominators and reachability -----------------------------------------------------------
def dominators(graph: Graph) -> dict[Node, Node | None]:
    """Immediate dominator of each node: the last node that every path from the graph's
    inputs (and constants) to it goes through; ``None`` when only the entry dominates it.

    Nodes that read nothing produced in the graph hang directly off a virtual entry, as do
    nodes that read a graph input or constant (data reaches them without passing any node).
    """
    g = nx.DiGraph(_node_graph(graph))
    g.add_node(_ENTRY)
    for n in graph.nodes:
        reads_outside = any(v is not None and (v.producer is None or v.producer not in g)
                            for v in n.inputs)
        if reads_outside or g.in_degree(n) == 0:
            g.add_edge(_ENTRY, n)
    idom = nx.immediate_dominators(g, _ENTRY)
    idom.pop(_ENTRY, None)  # networkx < 3.5 maps the start node to itself
    return {n: (None if idom[n] == _ENTRY else idom[n]) for n in graph.nodes if n in idom}


def _graph_of(item: Value | Node) -> Graph:
    if isinstance(item, Node):
        if item.graph is None:
            raise IRError(f"node {item.describe()} is not in a graph")
        return item.graph
    if item.producer is not None and item.producer.graph is not None:
        return item.producer.graph
    for n, _ in item.uses:
        if n.graph is not None:
            return n.graph
    raise IRError(f"value {item!r} belongs to no graph")


def reachable_from(item: Value | Node, graph: Graph | None = None) -> set[Node]:
    """Nodes whose inputs transitively depend on ``item`` (a node, or a value via its
    readers); the node itself is not included."""
    graph = graph or _graph_of(item)
    g = _node_graph(graph)
    if isinstance(item, Node):
        if item not in g:
            raise IRError(f"node {item.describe()} is not in graph @{graph.name}")
        return set(nx.descendants(g, item))
    out: set[Node] = set()
    for n in graph.nodes:
        if any(v is item for v in n.inputs):
            out.add(n)
            out |= nx.descendants(g, n)
    return out


def consumers_closure(value: Value, graph: Graph | None = None) -> list[Node]:
    """Every node that transitively reads ``value``, in graph order."""
    graph = graph or _graph_of(value)
    reach = reachable_from(value, graph)
    return [n for n in graph.nodes if n in reach]


def dead_nodes(graph: Graph) -> list[Node]:
    """Nodes none of whose outputs reach a graph output, in graph order."""
    g = _node_graph(graph)
    live: set[Node] = set()
    for v in graph.outputs:
        p = v.producer if v is not None else None
        if p is not None and p in g and p not in live:
            live.add(p)
            live |= nx.ancestors(g, p)
    return [n for n in graph.nodes if n not in live]


# ---- liveness and memory -------------------------------------------------------------------
def liveness(graph: Graph) -> dict[Value, tuple[int, int]]:
    """Live interval ``(def step, last use step)`` of every non-constant value, both ends
    inclusive; step ``k`` is ``graph.nodes[k]``. Graph inputs are defined at step -1; graph
    outputs live to the last step; a value nobody reads dies where it is defined.
    Assumes ``graph.nodes`` is in topological order (see :func:`topo_order`)."""
    last = len(graph.nodes) - 1
    out: dict[Value, tuple[int, int]] = {}
    for v in graph.inputs:
        out[v] = (-1, -1)
    for k, n in enumerate(graph.nodes):
        for v in n.outputs:
            out[v] = (k, k)
        for v in n.inputs:
            if v is not None and v in out:
                out[v] = (out[v][0], max(out[v][1], k))
    for v in graph.outputs:
        if v is not None and v in out:
            out[v] = (out[v][0], max(out[v][1], last))
    return out


def live_bytes(graph: Graph) -> list[sympy.Expr]:
    """Bytes of non-constant values live at each step (one entry per node): a node's inputs
    and outputs are live together while it runs. Sub-byte values count packed."""
    steps: list[sympy.Expr] = [sympy.Integer(0) for _ in graph.nodes]
    for v, (start, end) in liveness(graph).items():
        size = v.type.nbytes()
        for k in range(max(start, 0), end + 1):
            steps[k] += size
    return steps


def _ceil_int(x: sympy.Expr) -> int:
    return x if isinstance(x, int) else int(sympy.ceiling(x))


def peak_memory(graph: Graph, env: dict[sympy.Symbol, int] | None = None) -> sympy.Expr | int:
    """Peak bytes of live non-constant values over all steps (weights excluded: see
    :func:`constant_bytes`). With ``env`` binding every symbol, an int; without it an int
    when the graph is static, else a sympy expression (a ``Max`` when steps do not compare).
    A graph without nodes peaks at its inputs' size."""
    steps = live_bytes(graph)
    if not steps:
        steps = [sum((v.type.nbytes() for v in graph.inputs), sympy.Integer(0))]
    if env is not None:
        vals = []
        for s in steps:
            x = sympy.sympify(s).subs(env)
            if not x.is_number:
                unbound = ", ".join(sorted(str(f) for f in x.free_symbols))
                raise IRError(f"peak_memory: symbols {unbound} are not bound by env")
            vals.append(_ceil_int(x))
        return max(vals)
    peak = sympy.Max(*steps)
    return _ceil_int(peak) if peak.is_number else peak


def constant_bytes(graph: Graph) -> sympy.Expr:
    """Bytes of all constants (weights) the graph reads, stored packed."""
    return sum((v.type.nbytes() for v in graph.constants()), sympy.Integer(0))


# ---- cost ----------------------------------------------------------------------------------
def node_cost(node: Node) -> Cost:
    """The op's symbolic cost (flops, bytes) for this node's types and attributes."""
    opdef = get_op(node.op)
    ins = [v.type if v is not None else None for v in node.inputs]
    return opdef.cost(ins, [v.type for v in node.outputs], node.attrs)


def graph_cost(graph: Graph) -> Cost:
    """Sum of :func:`node_cost` over all nodes."""
    total = Cost(sympy.Integer(0), sympy.Integer(0))
    for n in graph.nodes:
        total = total + node_cost(n)
    return Cost(sympy.expand(total.flops), sympy.expand(total.bytes))


def cost_table(graph: Graph, env: dict[sympy.Symbol, int] | None = None) -> list[dict[str, Any]]:
    """One row per node for reports (``scalefold inspect``): ``index``, ``op``, ``name``,
    ``type`` (output types as text), ``flops`` and ``bytes`` (sympy expressions, or ints
    when ``env`` binds every symbol)."""
    rows = []
    for k, n in enumerate(graph.nodes):
        c = node_cost(n)
        flops, nbytes = sympy.expand(c.flops), sympy.expand(c.bytes)
        if env is not None:
            flops, nbytes = (_subs_int(flops, env), _subs_int(nbytes, env))
        rows.append({"index": k, "op": n.op, "name": n.name,
                     "type": ", ".join(str(v.type) for v in n.outputs),
                     "flops": flops, "bytes": nbytes})
    return rows


def _subs_int(x: sympy.Expr, env: dict[sympy.Symbol, int]) -> sympy.Expr | int:
    y = sympy.sympify(x).subs(env)
    return _ceil_int(y) if y.is_number else y

