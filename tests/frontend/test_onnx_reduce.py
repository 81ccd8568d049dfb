"""ONNX reduction and scan converters (Reduce*, ArgMax/ArgMin, TopK, CumSum, CumProd, Hardmax)
against onnxruntime, including the opset-18 move of ``axes`` from attribute to input."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from onnx_testing import compare as _compare
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import FrontendError
from scalefold.runtime.interp import run

RNG = np.random.default_rng(1)


def build(op: str, feeds: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
          opset: int = 17, inits: dict[str, np.ndarray] | None = None,
          node_inputs: Sequence[str] | None = None, n_out: int = 1,
          in_shapes: dict[str, list] | None = None) -> onnx.ModelProto:
    """A one-node model: ``feeds`` become graph inputs (``in_shapes`` may give symbolic dims),
    ``inits`` initializers; the node reads ``node_inputs`` (default: feeds then inits)."""
    inits = inits or {}
    names = list(node_inputs) if node_inputs is not None else list(feeds) + list(inits)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                         (in_shapes or {}).get(k, v.shape)) for k, v in feeds.items()]
    graph = helper.make_graph([node], "g", ins, [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
                              initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5,
            atol: float = 1e-5) -> list[torch.Tensor]:
    return _compare(model, feeds, rtol, atol)


def check(op: str, feeds: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
          opset: int = 17, **kw: Any) -> list[torch.Tensor]:
    return compare(build(op, feeds, attrs, opset, **kw), feeds)


def f32(*shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return np.asarray(RNG.uniform(lo, hi, shape), dtype=np.float32)


def ints(*shape: int, lo: int = -6, hi: int = 7, dtype: Any = np.int32) -> np.ndarray:
    return np.asarray(RNG.integers(lo, hi, shape), dtype=dtype)


# ---- Reduce* --------------------------------------------------------------------------------

REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]
AXES = [None, [1], [-1, 0], [0, 1, 2]]


def reduce_model(op: str, x: np.ndarray, axes: list[int] | None, keepdims: int, opset: int,
                 noop: int | None = None) -> onnx.ModelProto:
    """Axes as an attribute before opset 18 (ReduceSum: 13), as a constant input after."""
    attrs: dict[str, Any] = {"keepdims": keepdims}
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    axes_is_input = opset >= 18 or op == "ReduceSum"
    if axes is None or not axes_is_input:
        if axes is not None:
            attrs["axes"] = axes
        return build(op, {"x": x}, attrs, opset)
    return build(op, {"x": x}, attrs, opset, inits={"axes": np.array(axes, np.int64)})


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", AXES, ids=str)
@pytest.mark.parametrize("op", REDUCE)
def test_reduce_float(op: str, axes: list[int] | None, keepdims: int, opset: int) -> None:
    x = f32(2, 3, 4, lo=0.2, hi=1.5) if op in ("ReduceLogSum", "ReduceProd") else f32(2, 3, 4)
    compare(reduce_model(op, x, axes, keepdims, opset), {"x": x})


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                "ReduceSumSquare"])
@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_int(op: str, opset: int) -> None:
    for dtype in (np.int32, np.int64):
        # the product of all 24 values must fit int32 (4^24 does not, and onnxruntime saturates
        # where two's complement wraps): |x| <= 2 for ReduceProd
        x = ints(3, 4, 2, lo=-2, hi=3, dtype=dtype) if op == "ReduceProd" else ints(3, 4, 2, lo=-4, hi=5, dtype=dtype)
        compare(reduce_model(op, x, [1], 0, opset), {"x": x})
        compare(reduce_model(op, x, None, 1, opset), {"x": x})


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_opset20(op: str) -> None:
    """Opset 20 adds bool inputs to ReduceMax/ReduceMin."""
    xf = f32(3, 4)
    compare(reduce_model(op, xf, [-1], 1, 20), {"x": xf})
    x = RNG.random((3, 4)) > 0.3
    compare(reduce_model(op, x, [1], 0, 20), {"x": x})
    compare(reduce_model(op, x, None, 1, 20), {"x": x})


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_noop_with_empty_axes(op: str) -> None:
    """No axes + noop_with_empty_axes=1 reduces nothing: only the elementwise part of the op
    remains (abs for L1/L2, square, log); an empty axes input is the same."""
    x = f32(2, 3, lo=0.2, hi=2.0) if op == "ReduceLogSum" else f32(2, 3)
    opset = 13 if op == "ReduceSum" else 18
    compare(reduce_model(op, x, None, 1, opset, noop=1), {"x": x})
    compare(build(op, {"x": x}, {"noop_with_empty_axes": 1}, opset,
                  inits={"axes": np.zeros((0,), np.int64)}), {"x": x})
    compare(build(op, {"x": x}, {"noop_with_empty_axes": 0, "keepdims": 0}, opset,
                  inits={"axes": np.zeros((0,), np.int64)}), {"x": x})


@pytest.mark.parametrize("op,fill", [("ReduceMax", -np.inf), ("ReduceMin", np.inf)])
def test_reduce_max_min_empty_axis(op: str, fill: float) -> None:
    """Reducing an axis of size 0 gives the identity element (torch itself cannot)."""
    x = np.zeros((2, 0, 3), np.float32)
    m = reduce_model(op, x, [1], 1, 18)
    got = run(from_onnx(m), torch.from_numpy(x))[0]
    assert tuple(got.shape) == (2, 1, 3) and bool((got == fill).all())
    xi = np.zeros((0, 2), np.int32)
    got = run(from_onnx(reduce_model(op, xi, [0], 0, 18)), torch.from_numpy(xi))[0]
    info = np.iinfo(np.int32)
    assert got.tolist() == [info.min if op == "ReduceMax" else info.max] * 2


def test_reduce_runtime_axes_rejected() -> None:
    x = f32(2, 3)
    m = build("ReduceSum", {"x": x, "axes": np.array([1], np.int64)}, {}, 13)
    with pytest.raises(FrontendError, match=r"ReduceSum.*axes.*compile time"):
        from_onnx(m)
    g = from_onnx(m, input_values={"axes": torch.tensor([1])})
    np.testing.assert_allclose(run(g, torch.from_numpy(x))[0].numpy(), x.sum(1, keepdims=True), rtol=1e-6)


def test_reduce_symbolic_input() -> None:
    x = f32(5, 3)
    m = build("ReduceMean", {"x": x}, {"keepdims": 0}, 18, inits={"axes": np.array([0], np.int64)},
              in_shapes={"x": ["N", 3]})
    compare(m, {"x": x})
    assert str(from_onnx(m).inputs[0].type) == "f32[N,3]"


# ---- ArgMax / ArgMin / TopK -----------------------------------------------------------------


@pytest.mark.parametrize("select_last", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg(op: str, axis: int, keepdims: int, select_last: int) -> None:
    x = ints(3, 4, 5, lo=-2, hi=3).astype(np.float32)  # many ties
    check(op, {"x": x}, {"axis": axis, "keepdims": keepdims, "select_last_index": select_last}, 13)
    xi = ints(4, 6, lo=-2, hi=3, dtype=np.int64)
    check(op, {"x": xi}, {"axis": min(axis, 1), "keepdims": keepdims,
                          "select_last_index": select_last}, 13)


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_topk(axis: int, largest: int) -> None:
    x = f32(4, 6, 5)
    check("TopK", {"x": x}, {"axis": axis, "largest": largest}, 13, inits={"k": np.array([3], np.int64)},
          n_out=2)
    xi = ints(4, 6, lo=-3, hi=4, dtype=np.int64)  # ties: lower index first
    check("TopK", {"x": xi}, {"axis": min(axis, 1), "largest": largest}, 13,
          inits={"k": np.array([4], np.int64)}, n_out=2)


def test_topk_symbolic_k() -> None:
    """K computed by Shape from another input becomes a symbolic k."""
    nodes = [helper.make_node("Shape", ["kv"], ["k"]),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)]
    ins = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 10]),
           helper.make_tensor_value_info("kv", onnx.TensorProto.FLOAT, ["K"])]
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in ("v", "i")]
    m = helper.make_model(helper.make_graph(nodes, "g", ins, outs),
                          opset_imports=[helper.make_opsetid("", 17)])
    compare(m, {"x": f32(3, 10), "kv": f32(4)})
    assert str(from_onnx(m).outputs[0].type) == "f32[3,K]"


# ---- CumSum / CumProd / Hardmax -------------------------------------------------------------


@pytest.mark.parametrize("opset", [13, 14])
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(exclusive: int, reverse: int, opset: int) -> None:
    for axis, adt in ((1, np.int32), (-1, np.int64), (0, np.int64)):
        attrs = {"exclusive": exclusive, "reverse": reverse}
        check("CumSum", {"x": f32(3, 4, 5)}, attrs, opset, inits={"axis": np.array(axis, adt)})
        check("CumSum", {"x": ints(3, 4, 5, dtype=np.int64)}, attrs, opset,
              inits={"axis": np.array(axis, adt)})


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumprod(exclusive: int, reverse: int) -> None:
    """CumProd (opset 26) is newer than onnxruntime: compare with numpy instead."""
    x = f32(3, 4, lo=0.5, hi=2.0)
    m = build("CumProd", {"x": x}, {"exclusive": exclusive, "reverse": reverse}, 26,
              inits={"axis": np.array(1, np.int64)})
    got = run(from_onnx(m), torch.from_numpy(x))[0].numpy()
    y = x[:, ::-1] if reverse else x
    want = np.cumprod(y, axis=1)
    if exclusive:
        want = np.concatenate([np.ones((3, 1), np.float32), want[:, :-1]], axis=1)
    want = want[:, ::-1] if reverse else want
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_hardmax(axis: int) -> None:
    x = ints(3, 4, 5, lo=-2, hi=3).astype(np.float32)  # ties: the first maximum wins
    check("Hardmax", {"x": x}, {"axis": axis}, 13)


@pytest.mark.parametrize("opset", [11, 12])
@pytest.mark.parametrize("axis", [0, 1, 2, None])
def test_hardmax_before_opset_13_flattens_the_trailing_dims(axis: int | None, opset: int) -> None:
    """Old Hardmax takes one maximum over the dims from ``axis`` on (default 1); onnx's
    converter has no adapter for it, so the importer rewrites it (it gave one per last-axis row)."""
    x = f32(2, 3, 4)
    check("Hardmax", {"x": x}, {} if axis is None else {"axis": axis}, opset)


@pytest.mark.parametrize("opset", [4, 6, 9])
def test_hardmax_of_the_oldest_opsets(opset: int) -> None:
    """Opsets before Reshape took its shape as an input (5) upgrade first, then rewrite."""
    x = f32(2, 3, 4)
    m = build("Hardmax", {"x": x}, {"axis": 1}, opset)
    got = run(from_onnx(m), torch.from_numpy(x))[0]
    want = torch.nn.functional.one_hot(torch.from_numpy(x).reshape(2, -1).argmax(1), 12).reshape(2, 3, 4)
    assert torch.equal(got, want.float())


def test_hardmax_symbolic_axis() -> None:
    x = f32(2, 7)
    m = build("Hardmax", {"x": x}, {"axis": 1}, 13, in_shapes={"x": [2, "N"]})
    compare(m, {"x": x})
