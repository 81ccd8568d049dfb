"""The verifier: one bad graph per check, each asserting the message names the culprit."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir import Attrs, Graph, Node, TensorType, Value, VerifyError
from scalefold.ir.errors import UnsupportedOpError
from scalefold.ir.verify import verify, verify_or_errors


def T(text_dtype: str, *shape) -> TensorType:
    return TensorType(text_dtype, shape)


def chain() -> tuple[Graph, Value, Value, Value]:
    """x -> relu -> relu -> out, with a symbolic batch."""
    g = Graph("chain")
    x = g.add_input(T("f32", "B", 4), "x")
    a = g.add("relu", [x])
    b = g.add("relu", [a])
    g.set_outputs([b])
    return g, x, a, b


def raw_node(g: Graph, op: str, inputs: list[Value | None], out_types: list[TensorType],
             attrs: dict | None = None) -> Node:
    """A node built without the registry (as a buggy pass or parser might), appended."""
    outs = [Value(t) for t in out_types]
    n = Node(op, inputs, Attrs(attrs or {}), outs)
    for i, v in enumerate(outs):
        v.producer, v.index = n, i
    return g.append(n)


def raises(g: Graph, *fragments: str) -> str:
    with pytest.raises(VerifyError) as ei:
        verify(g)
    msg = str(ei.value)
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# ---- valid graphs -------------------------------------------------------------------------
def test_valid_graphs_pass():
    g, x, a, b = chain()
    verify(g)
    assert verify_or_errors(g) == []

    g = Graph("diamond")
    x = g.add_input(T("f16", "B", "S", 8), "x")
    w = g.add_const(torch.ones(8, dtype=torch.float16), name="w")
    a = g.add("relu", [x])
    b = g.add("add", [a, w])
    c = g.add("add", [a, b])
    g.set_outputs([c, w])
    verify(g)


def test_symbolically_equal_dims_are_accepted():
    g = Graph()
    x = g.add_input(T("f32", "B", 4))
    from scalefold.ir.types import sym
    B = sym("B")
    # Declared 2*B, written as B + B: the verifier must compare dims symbolically.
    y = g.add_input(T("f32", 2 * B, 4))
    z = g.add("add", [y, y], out_types=[T("f32", B + B, 4)])
    g.set_outputs([z, x])
    verify(g)


def test_mlp_with_weights_and_omitted_bias_passes():
    g = Graph("mlp")
    x = g.add_input(T("f32", "B", "S", 16), "x")
    w1 = g.add_const(torch.randn(32, 16), name="w1")
    b1 = g.add_const(torch.randn(32), name="b1")
    w2 = g.add_const(torch.randn(8, 32), name="w2")
    h = g.add("linear", [x, w1, b1])
    h = g.add("gelu", [h], {"approximate": "tanh"})
    y = g.add("linear", [h, w2, None])  # optional bias omitted
    y = g.add("softmax", [y], {"axis": -1})
    g.set_outputs([y])
    verify(g)
    assert y.type == T("f32", "B", "S", 8)
    # Swapping the weights breaks the contraction dim: reported as the linear node.
    g.set_input(g.nodes[0], 1, w2)
    raises(g, "linear #0", "type inference failed")


# ---- 1: op registered ---------------------------------------------------------------------
def test_unregistered_op_is_a_verify_error():
    g, x, a, b = chain()
    raw_node(g, "frobnicate", [b], [T("f32", "B", 4)])
    with pytest.raises(VerifyError) as ei:
        verify(g)
    assert not isinstance(ei.value, UnsupportedOpError)
    assert "frobnicate #2" in str(ei.value) and "'frobnicate' is not registered" in str(ei.value)


# ---- 2: arity -----------------------------------------------------------------------------
def test_wrong_input_count():
    g, x, a, b = chain()
    raw_node(g, "relu", [a, b], [T("f32", "B", 4)])
    raises(g, "relu #2", "bad input count", "expects 1 inputs, got 2")
    g2, x2, *_ = chain()
    raw_node(g2, "add", [x2], [T("f32", "B", 4)])
    raises(g2, "add #2", "expects 2 inputs, got 1")


# ---- 3: attributes ------------------------------------------------------------------------
def test_unknown_attribute():
    g, x, a, b = chain()
    raw_node(g, "relu", [b], [T("f32", "B", 4)], attrs={"alpha": 0.5})
    raises(g, "relu #2", "unknown attribute 'alpha'")


def test_missing_attributes():
    g, x, a, b = chain()
    raw_node(g, "cast", [b], [T("f16", "B", 4)])  # 'to' is required
    raises(g, "cast #2", "missing required attribute 'to'")
    g2, x2, a2, b2 = chain()
    raw_node(g2, "softmax", [b2], [T("f32", "B", 4)])  # default axis was never filled in
    raises(g2, "softmax #2", "missing attribute(s) 'axis'")


def test_wrongly_typed_attributes():
    g, x, a, b = chain()
    raw_node(g, "softmax", [b], [T("f32", "B", 4)], attrs={"axis": "1"})
    raises(g, "softmax #2", "attribute 'axis' must be int")
    # An int where the schema binds a float: equal under ==, still not what bind_attrs gives.
    g2, x2, a2, b2 = chain()
    raw_node(g2, "leaky_relu", [b2], [T("f32", "B", 4)], attrs={"alpha": 1})
    raises(g2, "leaky_relu #2", "attribute 'alpha' is 1, expected 1.0")
    g3, x3, a3, b3 = chain()
    raw_node(g3, "leaky_relu", [b3], [T("f32", "B", 4)], attrs={"alpha": 1.0})
    g3.set_outputs([g3.nodes[-1].output])
    verify(g3)


# ---- 4: defined before use ------------------------------------------------------------------
def test_use_before_definition():
    g, x, a, b = chain()
    g.nodes.reverse()
    msg = raises(g, "relu #0", "input 0", "before its definition")
    assert "output 0 of relu #1" in msg


def test_value_from_another_graph():
    g, x, a, b = chain()
    other = Graph("other")
    foreign_in = other.add_input(T("f32", "B", 4), "y")
    g.add("add", [b, foreign_in])
    raises(g, "add #2", "input 1", "%y", "neither a graph input, a constant nor a node output")

    g2, x2, a2, b2 = chain()
    foreign = other.add("relu", [foreign_in])
    g2.add("add", [b2, foreign])
    raises(g2, "add #2", "input 1", "not in graph @chain")


def test_reading_the_output_of_a_removed_node():
    g, x, a, b = chain()
    c = g.add("relu", [a])
    g.remove(c.producer)
    d = g.add("relu", [c])
    g.set_outputs([d])
    raises(g, "relu #2", "produced by a node that is not in graph")


# ---- 5: SSA -------------------------------------------------------------------------------
def test_node_listed_twice():
    g, x, a, b = chain()
    g.nodes.append(b.producer)
    raises(g, "appears more than once")


def test_value_produced_by_two_nodes():
    g, x, a, b = chain()
    n = raw_node(g, "relu", [x], [T("f32", "B", 4)])
    n.outputs = [a]  # a is already the output of node #0
    raises(g, "relu #2", "output 0 is also an output of relu #0")


def test_producer_and_index_must_match():
    g, x, a, b = chain()
    a.producer = b.producer
    raises(g, "relu #0", "records producer relu #1")

    g2, x2, a2, b2 = chain()
    a2.index = 3
    raises(g2, "relu #0", "records index 3")


def test_node_of_another_graph():
    g, x, a, b = chain()
    n = g.create_node("relu", [b])
    g.nodes.append(n)  # bypasses append(): node.graph stays None
    msg = raises(g, "node.graph is no graph")
    assert msg.startswith("relu")


def test_graph_input_with_a_producer():
    g, x, a, b = chain()
    g.inputs.append(b)
    raises(g, "graph input 1", "also has a producer relu")


# ---- 6: use lists -------------------------------------------------------------------------
def test_missing_use_entry():
    g, x, a, b = chain()
    a.uses.clear()
    raises(g, "relu #1", "input 0 reads", "use list lacks this use")


def test_stale_use_entries():
    g, x, a, b = chain()
    x.uses.append((b.producer, 0))  # b's node reads a, not x
    raises(g, "relu #1", "stale entry for input 0", "reads another value")

    g2, x2, a2, b2 = chain()
    ghost = g2.create_node("relu", [x2])
    x2.uses.append((ghost, 0))
    raises(g2, "stale entry", "a node not in the graph")

    g3, x3, a3, b3 = chain()
    x3.uses.append(x3.uses[0])
    raises(g3, "relu #0", "duplicated entry")


def test_add_reading_one_value_twice_needs_two_entries():
    g = Graph()
    x = g.add_input(T("f32", 3), "x")
    y = g.add("add", [x, x])
    g.set_outputs([y])
    verify(g)
    x.uses.pop()
    raises(g, "add #0", "use list lacks")


# ---- 7: declared types vs inferred --------------------------------------------------------
def test_declared_dtype_differs():
    g = Graph()
    x = g.add_input(T("f32", "B", 4), "x")
    y = g.add("relu", [x], out_types=[T("f16", "B", 4)])
    g.set_outputs([y])
    raises(g, "relu #0", "declared f16[B,4] but inferred f32[B,4]", "dtype differs")


def test_declared_dim_differs():
    g = Graph()
    x = g.add_input(T("f32", "B", 4), "x")
    y = g.add("relu", [x], out_types=[T("f32", "B", 5)])
    g.set_outputs([y])
    raises(g, "relu #0", "dim 1: 5 != 4")
    g2 = Graph()
    x2 = g2.add_input(T("f32", "B", 4), "x")
    g2.set_outputs([g2.add("relu", [x2], out_types=[T("f32", "B", 4, 1)])])
    raises(g2, "rank differs")
    g3 = Graph()
    x3 = g3.add_input(T("f32", "B", 4), "x")
    g3.set_outputs([g3.add("relu", [x3], out_types=[T("f32", 4), T("f32", 4)])])
    raises(g3, "has 2 outputs but the op infers 1")


def test_shape_error_from_inference_names_the_node():
    g = Graph()
    x = g.add_input(T("f32", "B", 4), "x")
    y = g.add_input(T("f32", "B", 5), "y")
    z = g.add("add", [x, y], out_types=[T("f32", "B", 4)])  # out_types skips inference
    g.set_outputs([z])
    raises(g, "add #0", "type inference failed", "cannot broadcast")


def test_missing_required_input_is_reported():
    g = Graph()
    x = g.add_input(T("f32", 4), "x")
    g.set_outputs([g.add("add", [x, None], out_types=[T("f32", 4)])])
    raises(g, "add #0", "input b is required")


# ---- 8: graph inputs and outputs ---------------------------------------------------------
def test_undefined_graph_output():
    g, x, a, b = chain()
    other = Graph("o")
    g.set_outputs([b, other.add_input(T("f32", 1), "z")])
    raises(g, "graph @chain", "output 1", "%z", "not defined in the graph")


def test_duplicate_graph_input():
    g, x, a, b = chain()
    g.inputs.append(x)
    raises(g, "graph input 1", "%x", "listed twice")


def test_duplicate_input_name():
    g, x, a, b = chain()
    g.add_input(T("f32", 2), "x")
    raises(g, "graph inputs 0 and 1 share the name 'x'")


# ---- 9: constants -------------------------------------------------------------------------
def test_constant_dtype_must_match_container():
    g, x, a, b = chain()
    w = g.add_const(torch.ones(4), name="w")
    g.set_outputs([g.add("add", [b, w])])
    verify(g)
    w.const = torch.ones(4, dtype=torch.float64)
    raises(g, "add #2", "input 1", "%w", "torch.float64", "expected torch.float32")


def test_constant_shape_must_match_type():
    g, x, a, b = chain()
    w = g.add_const(torch.ones(4), name="w")
    g.set_outputs([g.add("add", [b, w])])
    w.const = torch.ones(1, 4)
    raises(g, "add #2", "%w", "shape [1, 4], expected [4]")


def test_subbyte_constant_uses_its_container():
    g = Graph()
    x = g.add_input(T("f32", 3), "x")
    q = g.add_const(torch.tensor([-8, 0, 7]), dtype="i4", name="q")
    scale = g.add_const(torch.tensor(0.5), name="scale")
    y = g.add("dequantize", [q, scale])
    g.set_outputs([g.add("add", [x, y])])
    verify(g)
    assert q.const.dtype == torch.int8  # i4 is held one element per int8
    q.const = q.const.to(torch.uint8)
    raises(g, "dequantize #0", "input 0 (q)", "%q", "torch.uint8", "expected torch.int8")


def test_constant_graph_output_is_checked():
    g, x, a, b = chain()
    w = g.add_const(torch.ones(2), name="w")
    g.set_outputs([b, w])
    verify(g)
    w.const = torch.ones(3)
    raises(g, "output 1", "%w", "shape [3], expected [2]")


# ---- 10: symbols --------------------------------------------------------------------------
def test_unbound_symbol_in_output_type():
    g = Graph()
    x = g.add_input(T("f32", "B", 4), "x")
    y = g.add("relu", [x], out_types=[T("f32", "C", 4)])
    g.set_outputs([y])
    raises(g, "relu #0", "uses unbound symbol C")


# ---- collecting --------------------------------------------------------------------------
def test_verify_or_errors_collects_every_problem():
    g, x, a, b = chain()
    raw_node(g, "frobnicate", [b], [T("f32", "B", 4)])
    g.add_input(T("f32", 2), "x")
    errs = verify_or_errors(g)
    assert any("share the name 'x'" in e for e in errs)
    assert any("'frobnicate' is not registered" in e for e in errs)
    with pytest.raises(VerifyError, match="share the name"):
        verify(g)  # raises on the first one, in graph order
