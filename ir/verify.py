"""The IR verifier (DESIGN.md §3): structural and type invariants of a :class:`Graph`.

It runs after every frontend and after every pass in tests, so its messages must point at
the fault: each names the offending node through ``node.describe()`` (op, name, position)
and, where it applies, the input position and the value.

Checks, in the order a node meets them:
 1. the op is registered;
 2. the input count is within the op's arity;
 3. the attributes are exactly what the op's schema binds them to (no unknown, missing or
    wrongly typed attribute, defaults filled in);
 4. every input is defined before use: a graph input, a constant, or an output of an
    earlier node of this graph;
 5. SSA: each value has one producer, ``producer``/``index`` agree with ``node.outputs``,
    a node is listed once and belongs to this graph;
 6. use lists equal the multiset of (node, input index) pairs that read each value;
 7. declared output types equal the op's inferred types;
 8. graph outputs are defined; graph inputs are distinct values with distinct names;
 9. constant tensors match their declared dtype container and static shape;
10. output types only use symbols bound by the graph inputs.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import sympy
import torch

from .errors import ScalefoldError, VerifyError
from .graph import Graph, Node, Value
from .ops import get_op, has_op
from .ops.registry import OpDef
from .types import TensorType, dim_str, dims_equal


def verify(graph: Graph) -> None:
    """Raise :class:`VerifyError` describing the first problem found in ``graph``."""
    for problem in _problems(graph):
        raise VerifyError(problem)


def verify_or_errors(graph: Graph) -> list[str]:
    """Every problem found in ``graph``, as messages (empty when the graph is valid)."""
    return list(_problems(graph))


def describe_value(v: Value) -> str:
    """A short label for a value in messages: its name, type and where it comes from."""
    if v.is_const:
        origin = "constant"
    elif v.producer is not None:
        origin = f"output {v.index} of {v.producer.describe()}"
    else:
        origin = "input"
    label = f"%{v.name}: {v.type}" if v.name else f"value {v.type}"
    return f"{label} ({origin})"


def _input_label(opdef: OpDef | None, i: int) -> str:
    if opdef is not None and i < len(opdef.input_names):
        return f"input {i} ({opdef.input_names[i]})"
    return f"input {i}"


def _strict_equal(a: Any, b: Any) -> bool:
    """Equality that also tells 1 from 1.0 and True from 1 (Python's == does not)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
                and all(_strict_equal(x, y) for x, y in zip(a, b)))
    if isinstance(a, sympy.Basic) or isinstance(b, sympy.Basic):
        return a == b
    return type(a) is type(b) and a == b


def _problems(graph: Graph) -> Iterator[str]:
    where_g = f"graph @{graph.name}"
    bound_syms: set[sympy.Symbol] = set(graph.symbols)

    # ---- graph inputs (check 8, and the SSA part of 5 for inputs) --------------------
    defined: set[int] = set()
    names: dict[str, int] = {}
    for k, v in enumerate(graph.inputs):
        if id(v) in defined:
            yield f"{where_g}: graph input {k} ({describe_value(v)}) is listed twice"
            continue
        defined.add(id(v))
        if v.name is not None:
            if v.name in names:
                yield (f"{where_g}: graph inputs {names[v.name]} and {k} share the name "
                       f"{v.name!r}")
            else:
                names[v.name] = k
        if v.producer is not None:
            yield (f"{where_g}: graph input {k} ({describe_value(v)}) also has a producer "
                   f"{v.producer.describe()}")
        if v.is_const:
            yield f"{where_g}: graph input {k} ({describe_value(v)}) is a constant"

    # ---- nodes ----------------------------------------------------------------------
    seen_nodes: set[int] = set()
    producer_of: dict[int, Node] = {}          # value id -> the node that lists it as output
    checked_consts: set[int] = set()
    values_seen: dict[int, Value] = {id(v): v for v in graph.inputs}
    for node in graph.nodes:
        yield from _check_node(graph, node, seen_nodes, producer_of, defined, checked_consts,
                               values_seen, bound_syms)

    # ---- graph outputs (check 8) --------------------------------------------------
    if graph.output_names and len(graph.output_names) != len(graph.outputs):
        yield (f"{where_g}: {len(graph.outputs)} outputs but {len(graph.output_names)} "
               f"output names")
    for k, v in enumerate(graph.outputs):
        if v is None:
            yield f"{where_g}: output {k} is missing (None)"
            continue
        values_seen.setdefault(id(v), v)
        if v.is_const:
            if id(v) not in checked_consts:
                checked_consts.add(id(v))
                yield from (f"{where_g}: output {k}: {m}" for m in _const_problems(v))
        elif id(v) not in defined:
            yield f"{where_g}: output {k} ({describe_value(v)}) is not defined in the graph"

    # ---- use lists (check 6) ------------------------------------------------------
    yield from _use_list_problems(graph, values_seen)


def _check_node(graph: Graph, node: Node, seen_nodes: set[int], producer_of: dict[int, Node],
                defined: set[int], checked_consts: set[int], values_seen: dict[int, Value],
                bound_syms: set[sympy.Symbol]) -> Iterator[str]:
    where = node.describe()
    # Check 5: membership.
    if id(node) in seen_nodes:
        yield f"{where}: node appears more than once in graph @{graph.name}"
        return
    seen_nodes.add(id(node))
    if node.graph is not graph:
        other = "no graph" if node.graph is None else f"graph @{node.graph.name}"
        yield f"{where}: node.graph is {other}, not graph @{graph.name}"

    # Checks 1-3: op, arity, attributes. Type inference needs all three to hold.
    opdef: OpDef | None = None
    can_infer = True
    if not has_op(node.op):
        yield f"{where}: op {node.op!r} is not registered"
        can_infer = False
    else:
        opdef = get_op(node.op)
        try:
            opdef.check_arity(len(node.inputs), where)
        except ScalefoldError as e:
            yield f"{where}: bad input count: {e}"
            can_infer = False
        try:
            bound = opdef.bind_attrs(dict(node.attrs), where=where)
        except ScalefoldError as e:
            yield f"{where}: bad attributes: {e}"
            can_infer = False
        else:
            diff = _attr_diff(bound, node.attrs)
            if diff:
                yield f"{where}: bad attributes: {diff}"
                can_infer = False

    # Checks 4 and 9: inputs are defined earlier; constants hold what their type says.
    for i, v in enumerate(node.inputs):
        if v is None:
            continue
        values_seen.setdefault(id(v), v)
        label = _input_label(opdef, i)
        if v.is_const:
            if v.producer is not None:
                yield f"{where}: {label} reads constant {describe_value(v)} that has a producer"
            if id(v) not in checked_consts:
                checked_consts.add(id(v))
                yield from (f"{where}: {label}: {m}" for m in _const_problems(v))
            continue
        if id(v) in defined:
            continue
        p = v.producer
        if p is not None and p.graph is graph and any(n is p for n in graph.nodes):
            yield f"{where}: {label} uses {describe_value(v)} before its definition"
        elif p is None:
            yield (f"{where}: {label} reads {describe_value(v)}, which is neither a graph input, "
                   f"a constant nor a node output (a value of another graph?)")
        else:
            yield (f"{where}: {label} reads {describe_value(v)}, produced by a node that is not "
                   f"in graph @{graph.name}")

    # Check 5: outputs name this node as producer, each value produced once.
    for k, v in enumerate(node.outputs):
        values_seen.setdefault(id(v), v)
        first = producer_of.get(id(v))
        if first is not None:
            yield f"{where}: output {k} is also an output of {first.describe()}"
            continue
        producer_of[id(v)] = node
        if v.producer is not node:
            owner = "none" if v.producer is None else v.producer.describe()
            yield f"{where}: output {k} ({v.type}) records producer {owner}"
        elif v.index != k:
            yield f"{where}: output {k} ({v.type}) records index {v.index}"
        if v.is_const:
            yield f"{where}: output {k} is a constant"
        defined.add(id(v))

    # Check 10: symbols in output types are bound by the graph inputs (or by this node, for
    # data-dependent sizes such as nonzero's count).
    for a in (opdef.binds if opdef is not None else ()):
        val = node.attrs.get(a)
        for d in (val if isinstance(val, tuple) else (val,)):
            if isinstance(d, sympy.Basic):
                bound_syms |= d.free_symbols
    for k, v in enumerate(node.outputs):
        for s in sorted(v.type.symbols - bound_syms, key=lambda s: s.name):
            yield f"{where}: output {k} ({v.type}) uses unbound symbol {s.name}"

    # Check 7: declared output types equal the inferred ones.
    if can_infer and opdef is not None:
        in_types = [v.type if v is not None else None for v in node.inputs]
        try:
            inferred = opdef.infer(in_types, node.attrs, where=where)
        except ScalefoldError as e:
            # Any other exception is a bug in the op's shape function: let it surface.
            yield f"{where}: type inference failed: {e}"
            return
        yield from _type_problems(where, node.outputs, inferred)


def _attr_diff(bound: Any, given: Any) -> str:
    """Why ``given`` differs from what the schema binds it to ('' when equal)."""
    missing = [k for k in bound if k not in given]
    if missing:
        return f"missing attribute(s) {', '.join(repr(k) for k in missing)} (defaults not filled)"
    for k in bound:
        if not _strict_equal(bound[k], given[k]):
            return f"attribute {k!r} is {given[k]!r}, expected {bound[k]!r}"
    return ""


def _type_problems(where: str, outputs: list[Value], inferred: list[TensorType]) -> Iterator[str]:
    if len(outputs) != len(inferred):
        yield f"{where}: has {len(outputs)} outputs but the op infers {len(inferred)}"
        return
    for k, (v, t) in enumerate(zip(outputs, inferred)):
        decl = v.type
        if decl.dtype != t.dtype:
            yield f"{where}: output {k} declared {decl} but inferred {t} (dtype differs)"
        elif decl.rank != t.rank:
            yield f"{where}: output {k} declared {decl} but inferred {t} (rank differs)"
        else:
            for j, (a, b) in enumerate(zip(decl.shape, t.shape)):
                if not dims_equal(a, b):
                    yield (f"{where}: output {k} declared {decl} but inferred {t} "
                           f"(dim {j}: {dim_str(a)} != {dim_str(b)})")
                    break


def _const_problems(v: Value) -> Iterator[str]:
    t = v.const
    if not isinstance(t, torch.Tensor):
        yield f"constant {describe_value(v)} holds {type(t).__name__}, not a tensor"
        return
    if t.dtype != v.type.dtype.container:
        yield (f"constant {describe_value(v)} holds a {t.dtype} tensor, expected "
               f"{v.type.dtype.container}")
    if not v.type.is_static:
        yield f"constant {describe_value(v)} has a symbolic shape"
    elif tuple(t.shape) != tuple(v.type.shape):
        yield (f"constant {describe_value(v)} holds a tensor of shape {list(t.shape)}, expected "
               f"{list(v.type.shape)}")


def _use_list_problems(graph: Graph, values: dict[int, Value]) -> Iterator[str]:
    # Node identity, not equality: two (node, i) pairs match only for the same Node object.
    expected: dict[int, Counter[tuple[int, int]]] = {}
    in_graph = {id(n): n for n in graph.nodes}
    for n in graph.nodes:
        for i, v in enumerate(n.inputs):
            if v is not None:
                expected.setdefault(id(v), Counter())[(id(n), i)] += 1
    for vid, v in values.items():
        want = expected.get(vid, Counter())
        have: Counter[tuple[int, int]] = Counter((id(n), i) for n, i in v.uses)
        nodes_by_id = {id(n): n for n, _ in v.uses}
        for key in sorted(have - want, key=lambda k: k[1]):
            n = nodes_by_id[key[0]]
            if key[0] not in in_graph:
                why = "a node not in the graph"
            elif key[1] >= len(n.inputs) or n.inputs[key[1]] is not v:
                why = "an input that reads another value"
            else:
                why = "a duplicated entry"
            yield (f"{n.describe()}: use list of {describe_value(v)} has a stale entry for "
                   f"input {key[1]} ({why})")
        for key in sorted(want - have, key=lambda k: k[1]):
            n = in_graph[key[0]]
            yield (f"{n.describe()}: input {key[1]} reads {describe_value(v)}, but the value's "
                   f"use list lacks this use")
