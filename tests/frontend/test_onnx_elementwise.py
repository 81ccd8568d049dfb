"""ONNX elementwise converters: each op imported with from_onnx and run with the reference
interpreter must match onnxruntime, across the opsets where the op's definition changed."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from onnx_testing import build, compare
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import FrontendError
from scalefold.runtime.interp import run

RNG = np.random.default_rng(0)





def check(op: str, feeds: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
          opset: int = 17, **kw: Any) -> list[torch.Tensor]:
    tol = {k: kw.pop(k) for k in ("rtol", "atol") if k in kw}
    return compare(build(op, feeds, attrs, opset, **kw), feeds, **tol)


def f32(*shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    return np.asarray(RNG.uniform(lo, hi, shape), dtype=np.float32)


def ints(*shape: int, lo: int = -6, hi: int = 7, dtype: Any = np.int32) -> np.ndarray:
    return np.asarray(RNG.integers(lo, hi, shape), dtype=dtype)


# ---- unary ----------------------------------------------------------------------------------

UNARY_FLOAT = [  # (op, low, high, first opset)
    ("Abs", -3, 3, 13), ("Acos", -0.95, 0.95, 13), ("Acosh", 1.05, 4, 13),
    ("Asin", -0.95, 0.95, 13), ("Asinh", -4, 4, 13), ("Atan", -4, 4, 13),
    ("Atanh", -0.95, 0.95, 13), ("Ceil", -3, 3, 13), ("Cos", -4, 4, 13), ("Cosh", -3, 3, 13),
    ("Erf", -3, 3, 13), ("Exp", -3, 3, 13), ("Floor", -3, 3, 13), ("HardSwish", -5, 5, 14),
    ("Log", 0.05, 5, 13), ("Mish", -5, 5, 18), ("Neg", -3, 3, 13), ("Reciprocal", 0.2, 3, 13),
    ("Relu", -3, 3, 13), ("Sigmoid", -6, 6, 13), ("Sign", -3, 3, 13), ("Sin", -4, 4, 13),
    ("Sinh", -3, 3, 13), ("Softplus", -6, 6, 13), ("Softsign", -6, 6, 13), ("Sqrt", 0, 5, 13),
    ("Tan", -1.3, 1.3, 13), ("Tanh", -4, 4, 13), ("Elu", -3, 3, 13), ("Selu", -3, 3, 13),
    ("Celu", -3, 3, 13), ("LeakyRelu", -3, 3, 13), ("HardSigmoid", -5, 5, 13),
    ("ThresholdedRelu", -3, 3, 13), ("Shrink", -2, 2, 13), ("Gelu", -4, 4, 20),
]


@pytest.mark.parametrize("opset", [13, 18, 22])
@pytest.mark.parametrize("op,lo,hi,since", UNARY_FLOAT, ids=[u[0] for u in UNARY_FLOAT])
def test_unary_float(op: str, lo: float, hi: float, since: int, opset: int) -> None:
    opset = max(opset, since)
    check(op, {"x": f32(2, 3, 5, lo=lo, hi=hi)}, opset=opset)


def test_unary_special_values() -> None:
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    for op in ("Round", "Sign", "Floor", "Ceil", "Abs", "Neg", "Relu"):
        check(op, {"x": x}, opset=22)
    check("IsNaN", {"x": x}, opset=13)
    check("IsNaN", {"x": x}, opset=20)


@pytest.mark.parametrize("neg,pos", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_isinf_directions(neg: int, pos: int) -> None:
    x = np.array([[np.inf, -np.inf, 1.0, np.nan], [0.0, -3.0, np.inf, -np.inf]], np.float32)
    out = check("IsInf", {"x": x}, {"detect_negative": neg, "detect_positive": pos}, opset=20)
    assert out[0].dtype == torch.bool


@pytest.mark.parametrize("op,attrs", [
    ("Elu", {"alpha": 0.4}), ("LeakyRelu", {"alpha": 0.3}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
    ("Celu", {"alpha": 2.5}), ("Selu", {"alpha": 1.2, "gamma": 0.8}),
    ("ThresholdedRelu", {"alpha": 0.25}), ("Shrink", {"lambd": 0.7, "bias": 0.2}),
    ("Gelu", {"approximate": "tanh"}), ("Gelu", {"approximate": "none"}),
])
def test_unary_attributes(op: str, attrs: dict[str, Any]) -> None:
    check(op, {"x": f32(4, 7)}, attrs, opset=22)


def test_swish_opset24() -> None:
    check("Swish", {"x": f32(3, 4, lo=-6, hi=6)}, opset=24)
    check("Swish", {"x": f32(3, 4, lo=-6, hi=6)}, {"alpha": 0.7}, opset=24)


@pytest.mark.parametrize("op,dtype,opset", [
    ("Abs", np.int32, 13), ("Neg", np.int64, 13), ("Relu", np.int8, 14), ("Sign", np.int32, 13),
    ("Abs", np.int8, 13), ("Neg", np.int8, 13),
])
def test_unary_int(op: str, dtype: Any, opset: int) -> None:
    check(op, {"x": ints(3, 5, dtype=dtype)}, opset=opset)


def test_shrink_int() -> None:
    check("Shrink", {"x": ints(4, 5, dtype=np.int8)}, {"lambd": 1.5, "bias": 1.0}, opset=13)


def test_not_and_bitwise_not() -> None:
    check("Not", {"x": RNG.random((3, 4)) > 0.5}, opset=13)
    check("BitwiseNot", {"x": ints(3, 4, lo=-100, hi=100)}, opset=18)
    check("BitwiseNot", {"x": ints(3, 4, lo=0, hi=256, dtype=np.uint8)}, opset=18)


# ---- binary ---------------------------------------------------------------------------------

SHAPES = [((2, 3, 4), (3, 1)), ((1,), (2, 1, 4)), ((2, 3), (2, 3)), ((4, 1), ())]


@pytest.mark.parametrize("opset", [13, 14])
@pytest.mark.parametrize("sa,sb", SHAPES)
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arith_broadcast(op: str, sa: tuple, sb: tuple, opset: int) -> None:
    b = np.asarray(f32(*sb, lo=0.5, hi=3.0) * np.where(RNG.random(sb) > 0.5, 1, -1), np.float32)
    check(op, {"a": f32(*sa), "b": b}, opset=opset)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int8, np.uint8])
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_arith_int(op: str, dtype: Any) -> None:
    lo = 0 if dtype == np.uint8 else -20
    a = ints(3, 4, lo=lo, hi=20, dtype=dtype)
    b = ints(4, lo=1, hi=7, dtype=dtype)
    if dtype != np.uint8:
        b = b * np.where(RNG.random(4) > 0.5, 1, -1).astype(dtype)
    check(op, {"a": a, "b": b}, opset=14)


@pytest.mark.parametrize("fmod,dtype", [(0, np.int32), (1, np.int32), (0, np.int64), (1, np.float32)])
def test_mod(fmod: int, dtype: Any) -> None:
    a = ints(3, 4, lo=-20, hi=20, dtype=dtype)
    b = ints(1, 4, lo=1, hi=6, dtype=dtype) * np.array([1, -1, 1, -1], dtype)
    if dtype == np.float32:
        a = a + np.float32(0.25)
    check("Mod", {"a": a, "b": b}, {"fmod": fmod}, opset=13)


@pytest.mark.parametrize("opset", [13, 15])
def test_pow(opset: int) -> None:
    check("Pow", {"a": f32(3, 4, lo=0.1, hi=3), "b": f32(4, lo=-2, hi=2)}, opset=opset)
    check("Pow", {"a": f32(3, 4), "b": ints(1, lo=0, hi=4)}, opset=opset)
    check("Pow", {"a": ints(3, 4, lo=-4, hi=5), "b": ints(3, 4, lo=0, hi=4)}, opset=opset)
    check("Pow", {"a": ints(3, 4, lo=0, hi=6, dtype=np.int64), "b": ints(4, lo=0, hi=3).astype(np.float32)},
          opset=opset)


@pytest.mark.parametrize("op", ["Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"])
@pytest.mark.parametrize("opset", [13, 16, 19])
def test_compare(op: str, opset: int) -> None:
    check(op, {"a": ints(3, 4, lo=-2, hi=3).astype(np.float32), "b": ints(4, lo=-2, hi=3).astype(np.float32)},
          opset=opset)
    check(op, {"a": ints(2, 1, 4, lo=-2, hi=3, dtype=np.int64), "b": ints(3, 1, lo=-2, hi=3, dtype=np.int64)},
          opset=opset)


def test_equal_bool() -> None:
    check("Equal", {"a": RNG.random((3, 4)) > 0.5, "b": RNG.random(4) > 0.5}, opset=19)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op: str) -> None:
    check(op, {"a": RNG.random((2, 3, 4)) > 0.5, "b": RNG.random((3, 1)) > 0.5}, opset=13)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64])
@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def test_bitwise(op: str, dtype: Any) -> None:
    lo = 0 if dtype == np.uint8 else -100
    check(op, {"a": ints(3, 4, lo=lo, hi=100, dtype=dtype), "b": ints(4, lo=lo, hi=100, dtype=dtype)},
          opset=18)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift(direction: str) -> None:
    x = ints(3, 4, lo=0, hi=256, dtype=np.uint8)
    y = ints(3, 4, lo=0, hi=8, dtype=np.uint8)
    check("BitShift", {"x": x, "y": y}, {"direction": direction}, opset=13)
    check("BitShift", {"x": x, "y": np.array([3], np.uint8)}, {"direction": direction}, opset=13)


def test_bitshift_out_of_range_counts() -> None:
    """ONNX opset 28 semantics (onnxruntime predates them): such counts shift every bit out."""
    x = np.array([-8, 4, -1, 100], np.int8)
    y = np.array([-1, 8, 9, 2], np.int8)
    for direction, want in (("RIGHT", [-1, 0, -1, 25]), ("LEFT", [0, 0, 0, -112])):
        g = from_onnx(build("BitShift", {"x": x, "y": y}, {"direction": direction}, opset=13))
        got = run(g, torch.from_numpy(x), torch.from_numpy(y))[0]
        assert got.tolist() == want


def test_bitshift_bad_direction() -> None:
    m = build("BitShift", {"x": ints(3, dtype=np.uint8), "y": ints(3, lo=0, hi=3, dtype=np.uint8)},
              {"direction": "UP"}, opset=13)
    with pytest.raises(FrontendError, match="BitShift.*direction"):
        from_onnx(m)


# ---- variadic, where, prelu, clip ---------------------------------------------------------


@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_variadic(op: str, n: int) -> None:
    shapes = [(2, 3, 4), (3, 1), (4,)][:n]
    check(op, {f"x{i}": f32(*s) for i, s in enumerate(shapes)}, opset=13)


def test_variadic_int() -> None:
    feeds = {"a": ints(3, 4), "b": ints(4), "c": ints(3, 1)}
    check("Max", feeds, opset=13)
    check("Min", feeds, opset=13)


@pytest.mark.parametrize("opset", [13, 16])
def test_where(opset: int) -> None:
    check("Where", {"c": RNG.random((3, 1)) > 0.5, "a": f32(2, 3, 4), "b": f32(4)}, opset=opset)
    check("Where", {"c": RNG.random((2, 3)) > 0.5, "a": ints(2, 3), "b": ints(1)}, opset=opset)


@pytest.mark.parametrize("opset", [13, 16])
def test_prelu(opset: int) -> None:
    check("PRelu", {"x": f32(2, 3, 4), "s": f32(3, 1, lo=0, hi=1)}, opset=opset)
    check("PRelu", {"x": f32(2, 3, 4)}, opset=opset, inits={"s": f32(1, lo=0, hi=1)})


@pytest.mark.parametrize("case", ["both", "min", "max", "none", "inverted", "runtime", "int"])
def test_clip(case: str) -> None:
    x = f32(3, 5)
    lo, hi = np.float32(-1.0), np.float32(0.5)
    if case == "both":
        check("Clip", {"x": x}, opset=13, inits={"lo": np.array(lo), "hi": np.array(hi)})
    elif case == "min":
        check("Clip", {"x": x}, opset=13, inits={"lo": np.array(lo)}, node_inputs=["x", "lo"])
    elif case == "max":
        check("Clip", {"x": x}, opset=13, inits={"hi": np.array(hi)}, node_inputs=["x", "", "hi"])
    elif case == "none":
        check("Clip", {"x": x}, opset=13)
    elif case == "inverted":
        check("Clip", {"x": x}, opset=13, inits={"lo": np.array(hi), "hi": np.array(lo)})
    elif case == "runtime":
        check("Clip", {"x": x, "lo": np.array(lo), "hi": np.array(hi)}, opset=13)
    else:
        xi = ints(3, 5, lo=-100, hi=100, dtype=np.int64)
        check("Clip", {"x": xi}, opset=13,
              inits={"lo": np.array(-7, np.int64), "hi": np.array(2**62 + 1, np.int64)})
        check("Clip", {"x": xi}, opset=13,
              inits={"lo": np.array(-7, np.int64), "hi": np.array(20, np.int64)})


# ---- shape values ---------------------------------------------------------------------------


def test_arith_on_shapes_folds_to_symbolic_dims() -> None:
    """Shape -> Mul/Add/Sub/Div/Max and the Equal(-1)/Where idiom of exporters stay compile-time
    dim lists: the only node left materialises the symbolic results."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Mul", ["s", "two"], ["m"]),
             helper.make_node("Add", ["m", "s"], ["a"]),
             helper.make_node("Sub", ["a", "one"], ["b"]),
             helper.make_node("Div", ["a", "three"], ["d"]),
             helper.make_node("Max", ["s", "three"], ["mx"]),
             helper.make_node("Equal", ["s", "minus1"], ["eq"]),
             helper.make_node("Where", ["eq", "m", "s"], ["w"])]
    inits = [onnx.numpy_helper.from_array(np.array(v, np.int64), n)
             for n, v in (("two", 2), ("one", 1), ("three", 3), ("minus1", -1))]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in ("b", "d", "mx", "w")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], outs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(m)
    assert {n.op for n in g.nodes} <= {"dim_values"}
    feeds = {"x": f32(5, 3)}
    compare(m, feeds)
