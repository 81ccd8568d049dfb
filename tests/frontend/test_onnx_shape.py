"""ONNX shape/indexing converters and the symbolic shape-value folding (shapecalc)."""
from __future__ import annotations


import numpy as np
import onnx
import pytest
import sympy
import torch
from onnx import TensorProto, helper, numpy_helper

from scalefold.frontend.onnx import from_onnx
from scalefold.frontend.onnx_ops import shapecalc as sc
from scalefold.ir.errors import FrontendError, ShapeError
from scalefold.ir.types import sym
from scalefold.runtime.interp import run

F, I64 = TensorProto.FLOAT, TensorProto.INT64
INT_MAX = 2 ** 63 - 1


def model(nodes, inputs, outputs, inits=(), opset: int = 18) -> onnx.ModelProto:
    """A model from (name, elem_type, shape) inputs/outputs; str dims become dim_params."""
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def c(name: str, vals) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(vals)))


def run1(m: onnx.ModelProto, *xs: torch.Tensor) -> torch.Tensor:
    return run(from_onnx(m), *xs)[0]


# ---- shapecalc --------------------------------------------------------------------------------

def test_shapecalc_arithmetic() -> None:
    B, S = sym("B"), sym("S")
    assert sc.binary_dims("Mul", [B], [S, 2]) == [B * S, 2 * B]
    assert sc.binary_dims("Div", [2 * S], [2]) == [S]
    assert sc.binary_dims("Div", [-7], [2]) == [-3]  # ONNX integer Div truncates
    assert sc.binary_dims("Div", [S], [B]) == [sympy.floor(S / B)]
    assert sc.binary_dims("Div", [S], [-2]) is None  # truncation of a negative: not kept
    assert sc.binary_dims("Add", [B, S], [1, 2, 3]) is None
    assert sc.compare_dims("Equal", [B, S, -1], [-1]) == [0, 0, 1]  # symbols are positive
    assert sc.compare_dims("Equal", [B], [S]) is None
    assert sc.where_dims([1, 0], [B, S], [7]) == [B, 7]
    assert sc.gather_dims([B, S, 64], [-1, 0]) == [64, B]
    assert sc.gather_dims([B], [3]) is None
    assert sc.slice_dims([B, S, 64, 8], -3, INT_MAX) == [S, 64, 8]
    assert sc.slice_dims([B, S, 64, 8], -1, -INT_MAX, -2) == [8, S]
    assert sc.concat_dims([[B], [S, -1]]) == [B, S, -1]


def test_reshape_chain_folds_to_symbolic_attrs() -> None:
    """x[B,S,32] -> Shape -> Gather(0), Gather(1) -> Unsqueeze -> Concat(.., [4, 8]) ->
    Reshape, then Mul(B, S) -> flatten to [B*S, 32]: no runtime shape tensors remain."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        c("i0", np.array(0)), c("i1", np.array(1)), c("ax", np.array([0])),
        c("tail", np.array([4, 8])), c("last", np.array([32])),
        helper.make_node("Gather", ["sh", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["sh", "i1"], ["s"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Unsqueeze", ["s", "ax"], ["s1"]),
        helper.make_node("Concat", ["b1", "s1", "tail"], ["t4"], axis=0),
        helper.make_node("Reshape", ["x", "t4"], ["y"]),
        helper.make_node("Mul", ["b1", "s1"], ["bs"]),
        helper.make_node("Concat", ["bs", "last"], ["t2"], axis=0),
        helper.make_node("Reshape", ["x", "t2"], ["z"]),
    ]
    m = model(nodes, [("x", F, ["B", "S", 32])], [("y", F, None), ("z", F, None)])
    g = from_onnx(m)
    B, S = sym("B"), sym("S")
    assert [n.op for n in g.nodes] == ["reshape", "reshape"]
    assert g.nodes[0].attrs["shape"] == (B, S, 4, 8)
    assert g.nodes[1].attrs["shape"] == (B * S, 32)
    x = torch.randn(3, 5, 32)
    y, z = run(g, x)
    assert torch.equal(y, x.reshape(3, 5, 4, 8)) and torch.equal(z, x.reshape(15, 32))


def test_expand_range_constantofshape_chain() -> None:
    """Range(0, S), ConstantOfShape(Shape(x)) and the exporters' Expand idiom
    Expand(pos, Where(Equal(shape, -1), 1, shape))."""
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        c("i1", np.array(1)), c("zero", np.array(0)), c("one", np.array(1)),
        c("m1", np.array([-1, -1])), c("ones2", np.array([1, 1])),
        helper.make_node("Gather", ["sh", "i1"], ["s"], axis=0),
        helper.make_node("Range", ["zero", "s", "one"], ["pos"]),
        helper.make_node("ConstantOfShape", ["sh"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Equal", ["sh", "m1"], ["eq"]),
        helper.make_node("Where", ["eq", "ones2", "sh"], ["tgt"]),
        helper.make_node("Expand", ["pos", "tgt"], ["posb"]),
    ]
    m = model(nodes, [("x", F, ["B", "S"])], [("posb", I64, None), ("ones", F, None)])
    g = from_onnx(m)
    assert sorted(n.op for n in g.nodes) == ["arange", "expand", "full"]
    assert g.outputs[0].type.shape == (sym("B"), sym("S"))
    posb, ones = run(g, torch.zeros(2, 4))
    assert torch.equal(posb, torch.arange(4).expand(2, 4))
    assert torch.equal(ones, torch.ones(2, 4))


def test_size_and_shape_start() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["sh"], start=1),
             helper.make_node("Size", ["x"], ["n"]),
             c("ax", np.array([0])), c("m1", np.array([-1])),
             helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
             helper.make_node("Concat", ["n1", "sh"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "m1"], ["y"])]
    m = model(nodes, [("x", F, ["B", 3, 4])], [("y", F, None), ("t", I64, None)])
    g = from_onnx(m)
    y, t = run(g, torch.randn(2, 3, 4))
    assert y.shape == (24,) and t.tolist() == [24, 3, 4]


# ---- reshaping ----------------------------------------------------------------------------

@pytest.mark.parametrize("allowzero", [0, 1])
def test_reshape_allowzero(allowzero: int) -> None:
    target = [0, -1] if allowzero == 0 else [2, 0, 6]
    m = model([helper.make_node("Reshape", ["x", "t"], ["y"], allowzero=allowzero)],
              [("x", F, [2, 0, 6] if allowzero else [2, 3, 4])], [("y", F, None)],
              [("t", np.array(target))])
    x = torch.randn(2, 0, 6) if allowzero else torch.randn(2, 3, 4)
    want = x.reshape(2, 0, 6) if allowzero else x.reshape(2, 12)
    assert torch.equal(run1(m, x), want)


def test_transpose_flatten() -> None:
    m = model([helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]),
               helper.make_node("Flatten", ["t"], ["y"], axis=2)],
              [("x", F, [2, 3, 4])], [("y", F, None)])
    x = torch.randn(2, 3, 4)
    assert torch.equal(run1(m, x), x.permute(2, 0, 1).reshape(8, 3))


@pytest.mark.parametrize("opset", [13, 21])
def test_squeeze_unsqueeze_axes_input(opset: int) -> None:
    m = model([helper.make_node("Unsqueeze", ["x", "a"], ["u"]),
               helper.make_node("Squeeze", ["u", "b"], ["y"])],
              [("x", F, [3, 1, 4])], [("u", F, None), ("y", F, None)],
              [("a", np.array([0, -1])), ("b", np.array([0, 2]))], opset=opset)
    x = torch.randn(3, 1, 4)
    u, y = run(from_onnx(m), x)
    assert u.shape == (1, 3, 1, 4, 1) and torch.equal(y, x.reshape(3, 4, 1))


# ---- joining / splitting ---------------------------------------------------------------------

def test_concat() -> None:
    m = model([helper.make_node("Concat", ["x", "w"], ["y"], axis=0)],
              [("x", F, ["B", 3])], [("y", F, None)], [("w", np.ones((1, 3), np.float32))])
    g = from_onnx(m)
    assert g.outputs[0].type.shape == (sym("B") + 1, 3)
    x = torch.randn(2, 3)
    assert torch.equal(run(g, x)[0], torch.cat([x, torch.ones(1, 3)], 0))
    bad = model([helper.make_node("Concat", ["x", "w"], ["y"], axis=-1)],
                [("x", F, ["B", 2])], [("y", F, None)], [("w", np.ones((1, 3), np.float32))])
    with pytest.raises(ShapeError, match="B != 1"):
        from_onnx(bad)  # the other dims must be provably equal


@pytest.mark.parametrize("case", ["input13", "equal13", "num_outputs18_uneven", "input18"])
def test_split_versions(case: str) -> None:
    x = torch.randn(7, 4) if "uneven" in case else torch.randn(6, 4)
    inits, attrs, ins = [], {}, ["x"]
    if case.startswith("input"):
        inits, ins = [("sp", np.array([1, 2, 3]))], ["x", "sp"]
        want = torch.split(x, [1, 2, 3])
    elif case == "equal13":
        want = torch.split(x, 2)
    else:
        attrs = {"num_outputs": 3}
        want = torch.split(x, 3)  # 3, 3, 1 (ONNX 18: ceil-sized chunks, last smaller)
    opset = 13 if case.endswith("13") else 18
    m = model([helper.make_node("Split", ins, ["a", "b", "c"], axis=0, **attrs)],
              [("x", F, list(x.shape))], [(n, F, None) for n in "abc"], inits, opset=opset)
    got = run(from_onnx(m), x)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))


# ---- indexing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("starts,ends,axes,steps,py", [
    ([1], [INT_MAX], [1], [1], (slice(None), slice(1, None))),
    ([-1], [-INT_MAX], [0], [-1], (slice(None, None, -1),)),
    ([-3, 0], [-1, 100], [1, 0], [1, 2], (slice(0, None, 2), slice(-3, -1))),
    ([5], [1], [-1], [-2], (slice(None), slice(5, 1, -2))),
])
def test_slice(starts, ends, axes, steps, py) -> None:
    m = model([helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])],
              [("x", F, [5, 6])], [("y", F, None)],
              [("s", np.array(starts)), ("e", np.array(ends)), ("a", np.array(axes)),
               ("t", np.array(steps))])
    x = torch.randn(5, 6)
    want = torch.from_numpy(x.numpy()[py].copy())
    assert torch.equal(run1(m, x), want)


def test_slice_symbolic_end_assumed_in_range() -> None:
    """table[:S] of a 16-row table with symbolic S: the result has length S (asserted at run
    time) rather than Min(16, S), so it broadcasts against other S-sized tensors."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), c("z", np.array([0])),
             c("i", np.array([1])),
             helper.make_node("Gather", ["sh", "i"], ["s"], axis=0),
             helper.make_node("Slice", ["tab", "z", "s"], ["t"]),
             helper.make_node("Add", ["x", "t"], ["y"])]
    m = model(nodes, [("x", F, ["B", "S"])], [("y", F, None)],
              [("tab", np.arange(16, dtype=np.float32))])
    g = from_onnx(m)
    assert g.outputs[0].type.shape == (sym("B"), sym("S"))
    x = torch.randn(2, 5)
    assert torch.equal(run(g, x)[0], x + torch.arange(5.0))



def test_slice_from_a_negated_size() -> None:
    """y[:, -S:] with S = Shape(x)[1] (Mamba's causal convolution as torch.onnx writes it):
    on y = concat(x, w) of length S + 3 the start -S is position 3; -S on an axis of length S
    takes all of it, and on a shorter one it clamps to the start."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), c("i", np.array([1])),
             helper.make_node("Gather", ["sh", "i"], ["s"], axis=0),
             helper.make_node("Neg", ["s"], ["ns"]), c("big", np.array([INT_MAX])),
             c("ax", np.array([1])),
             helper.make_node("Concat", ["x", "w"], ["y"], axis=1),
             helper.make_node("Slice", ["y", "ns", "big", "ax"], ["t"]),
             helper.make_node("Add", ["x", "t"], ["o"]),
             helper.make_node("Slice", ["x", "ns", "big", "ax"], ["whole"]),
             helper.make_node("Slice", ["w", "ns", "big", "ax"], ["short"])]
    m = model(nodes, [("x", F, ["B", "S"]), ("w", F, ["B", 3])],
              [("o", F, None), ("whole", F, None), ("short", F, None)])
    g = from_onnx(m)
    B, S = sym("B"), sym("S")
    assert g.outputs[0].type.shape == (B, S)
    assert g.outputs[1].type.shape == (B, S)
    for s in (1, 2, 6):
        x, w = torch.randn(2, s), torch.randn(2, 3)
        o, whole, short = run(g, x, w)
        assert torch.equal(o, x + torch.cat([x, w], 1)[:, -s:])
        assert torch.equal(whole, x)
        assert torch.equal(short, w[:, -s:])

def test_gather_and_gather_elements() -> None:
    m = model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1),
               helper.make_node("GatherElements", ["x", "j"], ["z"], axis=0),
               helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0)],
              [("x", F, [3, 4]), ("ids", I64, ["B"])], [("y", F, None), ("z", F, None), ("e", F, None)],
              [("i", np.array([[0, -1], [2, 2]])), ("j", np.array([[2, 0, 1, -1]])),
               ("emb", np.arange(20, dtype=np.float32).reshape(5, 4))])
    g = from_onnx(m)
    assert "embedding" in [n.op for n in g.nodes]
    x, ids = torch.randn(3, 4), torch.tensor([4, 0, -1])
    y, z, e = run(g, x, ids)
    assert torch.equal(y, x[:, [[0, 3], [2, 2]]])
    assert torch.equal(z, torch.gather(x, 0, torch.tensor([[2, 0, 1, 2]])))
    assert torch.equal(e, torch.arange(20.0).reshape(5, 4)[ids])


def test_expand_tile() -> None:
    m = model([helper.make_node("Expand", ["x", "s"], ["y"]),
               helper.make_node("Tile", ["x", "r"], ["z"])],
              [("x", F, [3, 1])], [("y", F, None), ("z", F, None)],
              [("s", np.array([2, 1, 4])), ("r", np.array([2, 3]))])
    x = torch.randn(3, 1)
    y, z = run(from_onnx(m), x)
    assert torch.equal(y, x.expand(2, 3, 4)) and torch.equal(z, x.repeat(2, 3))


def test_tile_by_a_symbolic_count() -> None:
    """Tile whose repeats come from Shape (DeBERTa's exporters tile by the batch): a
    reshape / expand / reshape, since the IR's tile takes integer counts."""
    nodes = [helper.make_node("Shape", ["x"], ["sh"]), c("i0", np.array([0])),
             helper.make_node("Gather", ["sh", "i0"], ["b"], axis=0), c("two", np.array([2])),
             helper.make_node("Concat", ["b", "two"], ["r"], axis=0),
             helper.make_node("Tile", ["w", "r"], ["z"])]
    m = model(nodes, [("x", F, ["B", 4]), ("w", F, [2, 3])], [("z", F, None)])
    g = from_onnx(m)
    assert "tile" not in {n.op for n in g.nodes}
    assert g.outputs[0].type.shape == (2 * sym("B"), 6)
    w = torch.randn(2, 3)
    for b in (1, 3):
        assert torch.equal(run(g, torch.zeros(b, 4), w)[0], w.repeat(b, 2))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_axes_opset18(mode: str) -> None:
    m = model([helper.make_node("Pad", ["x", "p", "v", "a"], ["y"], mode=mode)],
              [("x", F, [2, 3, 4])], [("y", F, None)],
              [("p", np.array([1, 2, 2, 1])), ("v", np.array(1.5, np.float32)),
               ("a", np.array([-1, 1]))])
    x = torch.randn(2, 3, 4)
    tm = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    want = torch.nn.functional.pad(x.unsqueeze(0), (1, 2, 2, 1), mode=tm[mode],
                                   **({"value": 1.5} if mode == "constant" else {}))[0]
    assert torch.equal(run1(m, x), want)


def test_pad_runtime_value_and_negative_pads() -> None:
    m = model([helper.make_node("Pad", ["x", "p", "v"], ["y"])],
              [("x", F, [3, 4]), ("v", F, [])], [("y", F, None)],
              [("p", np.array([1, -1, 0, 2]))])
    x = torch.randn(3, 4)
    want = torch.nn.functional.pad(x, (-1, 2, 1, 0), value=-3.0)
    assert torch.equal(run1(m, x, torch.tensor(-3.0)), want)


# ---- generators -------------------------------------------------------------------------------

def test_range_constant_of_shape_trilu_eyelike() -> None:
    m = model([helper.make_node("Range", ["a", "b", "d"], ["r"]),
               helper.make_node("ConstantOfShape", ["s"], ["k"],
                                value=numpy_helper.from_array(np.array([7], np.int32))),
               helper.make_node("Trilu", ["x", "kk"], ["t"], upper=0),
               helper.make_node("EyeLike", ["x"], ["e"], k=1, dtype=TensorProto.DOUBLE)],
              [("x", F, [3, 4])], [("r", F, None), ("k", TensorProto.INT32, None),
                                   ("t", F, None), ("e", TensorProto.DOUBLE, None)],
              [("a", np.array(1.0, np.float32)), ("b", np.array(2.0, np.float32)),
               ("d", np.array(0.25, np.float32)), ("s", np.array([2, 3])),
               ("kk", np.array(-1))])
    x = torch.randn(3, 4)
    r, k, t, e = run(from_onnx(m), x)
    assert torch.equal(r, torch.arange(1.0, 2.0, 0.25))
    assert torch.equal(k, torch.full((2, 3), 7, dtype=torch.int32))
    assert torch.equal(t, torch.tril(x, -1))
    assert torch.equal(e, torch.from_numpy(np.eye(3, 4, k=1)))


@pytest.mark.parametrize("start,limit,delta", [(1.0, 0.0, 1.0), (1, 0, 1), (0, 5, -2), (3, 3, 1)])
def test_range_with_no_elements_is_empty(start, limit, delta) -> None:
    # torch.arange refuses a limit on the wrong side of start (a bare RuntimeError); ONNX gives
    # max(ceil((limit - start) / delta), 0) elements
    ty = np.float32 if isinstance(start, float) else np.int64
    m = model([helper.make_node("Range", ["a", "b", "d"], ["r"])], [],
              [("r", F if ty is np.float32 else I64, None)],
              [("a", np.array(start, ty)), ("b", np.array(limit, ty)), ("d", np.array(delta, ty))])
    r = run(from_onnx(m))[0]
    assert r.shape == (0,) and r.dtype == torch.from_numpy(np.zeros(0, ty)).dtype


def test_range_with_delta_zero_is_a_frontend_error() -> None:
    m = model([helper.make_node("Range", ["a", "b", "d"], ["r"])], [], [("r", I64, None)],
              [("a", np.array(0)), ("b", np.array(4)), ("d", np.array(0))])
    with pytest.raises(FrontendError, match="Range with delta 0"):
        from_onnx(m)


def test_unknown_shape_input_is_reported() -> None:
    m = model([helper.make_node("Reshape", ["x", "t"], ["y"])],
              [("x", F, [2, 3]), ("t", I64, [2])], [("y", F, None)])
    with pytest.raises(FrontendError, match="known at compile time"):
        from_onnx(m)
    y = run(from_onnx(m, input_values={"t": torch.tensor([3, 2])}), torch.randn(2, 3))[0]
    assert y.shape == (3, 2)


def test_input_dim_names_stay_distinct_and_negative_dims_are_dynamic() -> None:
    """'batch size' and 'batch_size' sanitise alike but are different dims; an unnamed dim's
    fallback name never takes a dim_param's; dim_value -1 (some exporters' dynamic dim) is a
    fresh symbol."""
    import onnx as _onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    import scalefold as sf
    from scalefold.runtime import run as run_graph
    for a_dims, b_dims in ((["batch size", 4], ["batch_size", 4]), (["b_0", 4], [None, 4]),
                           ([-1, 4], [-1, 4])):
        g = h.make_graph([h.make_node("Concat", ["a", "b"], ["y"], axis=0)], "g",
                         [h.make_tensor_value_info("a", TP.FLOAT, a_dims),
                          h.make_tensor_value_info("b", TP.FLOAT, b_dims)],
                         [h.make_tensor_value_info("y", TP.FLOAT, None)])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        ir = sf.from_onnx(m)
        assert ir.inputs[0].type.shape[0] != ir.inputs[1].type.shape[0]
        y = run_graph(ir, torch.ones(2, 4), torch.ones(3, 4))[0]
        assert y.shape == (5, 4)


def test_an_input_dim_named_like_a_data_dependent_size_stays_distinct() -> None:
    """NonZero's fresh size symbol never takes a name an input's dim_param already has."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    import scalefold as sf
    from scalefold.runtime import run as run_graph
    g = h.make_graph([h.make_node("NonZero", ["a"], ["y"])], "g",
                     [h.make_tensor_value_info("a", TP.FLOAT, ["nnz1"])],
                     [h.make_tensor_value_info("y", TP.INT64, None)])
    ir = sf.from_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    y = run_graph(ir, torch.tensor([1.0, 0.0, 2.0]))[0]
    assert y.tolist() == [[0, 2]]
