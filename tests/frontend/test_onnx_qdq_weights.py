"""Import of QDQ weights (frontend/onnx_ops/qdq_weight.py): DequantizeLinear of constant integer
codes feeding MatMul / Gemm becomes ``qlinear`` with the codes unchanged, in every grouping
qlinear states (per tensor, per output channel, blocks along K), for weights small enough to be
folded at import and for large ones; other groupings keep the float form. Outputs are compared
with onnxruntime running the same file."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold
from harness import assert_close
from scalefold.passes import PassManager
from scalefold.runtime.interp import run

ONNX_T = {"i8": (TensorProto.INT8, np.int8, -128, 127), "u8": (TensorProto.UINT8, np.uint8, 0, 255),
          "i4": (TensorProto.INT4, np.int8, -8, 7), "u4": (TensorProto.UINT4, np.uint8, 0, 15)}


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _ort(model: onnx.ModelProto, x: torch.Tensor) -> torch.Tensor:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # keep onnxruntime from fusing DQ + MatMul into its approximate int8-activation kernels
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])


def _tensor(name: str, a: np.ndarray, code: str | None = None) -> onnx.TensorProto:
    if code is None:
        return numpy_helper.from_array(a.astype(np.float32), name)
    t, _, _, _ = ONNX_T[code]
    return helper.make_tensor(name, t, list(a.shape), a.reshape(-1).astype(np.int64).tolist())


def _model(op: str, k: int, n: int, code: str, scale_shape: tuple[int, ...], axis: int, block: int,
           trans_b: bool = False, bias: bool = False, zero: bool = True, seed: int = 0) -> onnx.ModelProto:
    """x [M, k] @ DequantizeLinear(codes) (+ bias): MatMul with B [k, n], or Gemm with transB."""
    rng = np.random.default_rng(seed)
    _, _, lo, hi = ONNX_T[code]
    shape = (n, k) if trans_b else (k, n)
    inits = [_tensor("q", rng.integers(lo, hi + 1, size=shape), code),
             _tensor("s", rng.uniform(0.005, 0.03, size=scale_shape))]
    dq_in = ["q", "s"]
    if zero:
        inits.append(_tensor("z", rng.integers(lo, hi + 1, size=scale_shape), code))
        dq_in.append("z")
    attrs = dict(axis=axis) if block == 0 else dict(axis=axis, block_size=block)
    nodes = [helper.make_node("DequantizeLinear", dq_in, ["w"], **attrs)]
    if op == "MatMul":
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"]))
    else:
        ins = ["x", "w"]
        if bias:
            inits.append(_tensor("c", rng.normal(size=(n,))))
            ins.append("c")
        nodes.append(helper.make_node("Gemm", ins, ["y"], transB=int(trans_b)))
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


CASES = [
    # op, k, n, code, scale shape, axis, block, transB, bias, zero, group of the qlinear
    ("MatMul", 96, 40, "i8", (40,), 1, 0, False, False, True, 0),        # per output channel
    ("MatMul", 96, 40, "u8", (), 1, 0, False, False, True, 0),           # per tensor
    ("MatMul", 100, 24, "i4", (4, 24), 0, 32, False, False, True, 32),   # blocks along K, short last
    ("MatMul", 64, 24, "u4", (2, 24), 0, 32, False, False, False, 32),   # no zero point (0)
    ("Gemm", 80, 36, "u8", (36,), 0, 0, True, True, True, 0),            # transB, per channel, bias
    ("Gemm", 80, 36, "i4", (36, 5), 1, 16, True, False, True, 16),       # transB, blocks along K
    ("Gemm", 80, 36, "i8", (3, 36), 0, 32, False, True, False, 32),      # B [K, N], blocks along K
]


@pytest.mark.parametrize("op,k,n,code,sshape,axis,block,trans_b,bias,zero,group", CASES)
def test_dequantized_weight_imports_as_qlinear(op, k, n, code, sshape, axis, block, trans_b, bias, zero,
                                               group) -> None:
    m = _model(op, k, n, code, sshape, axis, block, trans_b, bias, zero)
    g = scalefold.from_onnx(m)
    ops = [nd.op for nd in g.nodes]
    assert ops == ["qlinear"], ops
    q = g.nodes[0]
    assert q.attrs["group"] == group and q.inputs[1].dtype.name == code
    assert tuple(q.inputs[1].shape) == (n, k)
    x = torch.randn(5, k)
    assert_close(run(g, x)[0], _ort(m, x), rtol=1e-5, atol=1e-5)


def test_large_weight_that_is_not_folded() -> None:
    """Weights above the importer's folding limit stay a dequantize node: the same rewrite."""
    k, n = 1024, 1100                  # 1.13M codes > 2^20
    m = _model("MatMul", k, n, "i8", (n,), 1, 0)
    g = scalefold.from_onnx(m)
    assert [nd.op for nd in g.nodes] == ["qlinear"]
    x = torch.randn(3, k)
    assert_close(run(g, x)[0], _ort(m, x), rtol=1e-4, atol=1e-4)


def test_groupings_qlinear_cannot_state_stay_float() -> None:
    """A scale per K row (MatMul B [K, N] with axis 0, no block) is not a qlinear grouping: the
    weight is imported dequantised, with the same results."""
    k, n = 48, 20
    m = _model("MatMul", k, n, "i8", (k,), 0, 0)
    g = scalefold.from_onnx(m)
    assert "qlinear" not in [nd.op for nd in g.nodes]
    x = torch.randn(4, k)
    assert_close(run(g, x)[0], _ort(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["quant_weights(format=int8, group=32)", "quant_weights(format=int3, group=64)",
                                  "quant_weights(format=int8, group=0, sym=true)"])
def test_exported_qdq_weights_round_trip(spec: str, tmp_path) -> None:
    """quant_weights -> to_onnx (DequantizeLinear + MatMul for these codes) -> from_onnx gives
    back qlinear nodes whose dequantised weights equal the original ones (int8 used to come
    back as float linear weights)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(100, 48), torch.nn.ReLU(), torch.nn.Linear(48, 37)).eval()
    g = scalefold.from_torch(model, (torch.randn(3, 100),))
    q = PassManager(spec).run(g)
    path = tmp_path / "m.onnx"
    scalefold.to_onnx(q, path)
    back = scalefold.from_onnx(path)
    a = [nd for nd in q.nodes if nd.op == "qlinear"]
    b = [nd for nd in back.nodes if nd.op == "qlinear"]
    assert len(b) == len(a) == 2
    from scalefold.ir.ops.quant import dequant_weight

    def wd(nd):
        ins = list(nd.inputs) + [None] * 3
        return dequant_weight(ins[1].const, ins[2].const, ins[3].const if ins[3] is not None else None,
                              nd.attrs["group"], False)
    for x, y in zip(a, b):
        assert torch.equal(wd(x), wd(y))
    x = torch.randn(3, 100)
    assert_close(run(back, x)[0], run(q, x)[0], rtol=1e-5, atol=1e-5)


def test_gemm_bias_of_one_element_broadcasts() -> None:
    """Gemm's C of shape [1] (valid ONNX broadcasting) becomes the qlinear's bias over N."""
    m = _model("Gemm", 40, 24, "i8", (24,), 0, 0, trans_b=True, bias=True)
    c = next(t for t in m.graph.initializer if t.name == "c")
    c.CopyFrom(numpy_helper.from_array(np.array([0.75], np.float32), "c"))
    g = scalefold.from_onnx(m)
    assert [nd.op for nd in g.nodes] == ["qlinear"]
    x = torch.randn(3, 40)
    assert_close(run(g, x)[0], _ort(m, x), rtol=1e-5, atol=1e-5)


def test_one_dequantized_weight_read_twice_is_stored_once() -> None:
    """Two MatMuls reading one DequantizeLinear share one set of codes, scales and zeros."""
    m = _model("MatMul", 64, 48, "u8", (48,), 1, 0)
    gr = m.graph
    gr.node.append(helper.make_node("MatMul", ["x", "w"], ["y2"]))
    gr.node.append(helper.make_node("Add", ["y", "y2"], ["out"]))
    gr.output[0].CopyFrom(helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", 48]))
    g = scalefold.from_onnx(m)
    qs = [nd for nd in g.nodes if nd.op == "qlinear"]
    assert len(qs) == 2 and all(a is b for a, b in zip(qs[0].inputs[1:], qs[1].inputs[1:]))
    x = torch.randn(3, 64)
    assert_close(run(g, x)[0], _ort(m, x), rtol=1e-5, atol=1e-5)


def test_f16_dequantized_weight_keeps_the_f16_rounding() -> None:
    """An f16 DequantizeLinear output rounds the weight to f16 before the product; qlinear would
    form it in f32, so such a weight keeps the float form (same values as onnxruntime)."""
    rng = np.random.default_rng(3)
    k, n = 256, 16
    inits = [_tensor("q", rng.integers(-128, 128, size=(k, n)), "i8"),
             numpy_helper.from_array(rng.uniform(0.001, 0.01, size=(n,)).astype(np.float16), "s")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=1),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    g_ = helper.make_graph(nodes, "f16", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["M", k])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["M", n])], inits)
    m = helper.make_model(g_, opset_imports=[helper.make_opsetid("", 21)])
    g = scalefold.from_onnx(m)
    assert "qlinear" not in [nd.op for nd in g.nodes]
    x = torch.randn(4, k).half()
    y, ref = run(g, x)[0], _ort(m, x)
    assert y.dtype == torch.float16
    assert_close(y.float(), ref.float(), rtol=2e-3, atol=2e-3)   # f16 accumulation order only


def test_per_tensor_parameters_of_a_vector_ignore_the_default_axis() -> None:
    """DequantizeLinear of a 1-D tensor with a [1] scale and the default axis (1): per tensor, as
    onnxruntime's static quantiser writes Gemm biases (a raw IndexError before)."""
    inits = [_tensor("q", np.arange(-4, 4), "i8"), numpy_helper.from_array(np.array([0.5], np.float32), "s")]
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["b"]), helper.make_node("Add", ["x", "b"], ["y"])]
    g_ = helper.make_graph(nodes, "v", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    m = helper.make_model(g_, opset_imports=[helper.make_opsetid("", 21)])
    x = torch.randn(2, 8)
    assert_close(run(scalefold.from_onnx(m), x)[0], _ort(m, x), rtol=0, atol=0)
