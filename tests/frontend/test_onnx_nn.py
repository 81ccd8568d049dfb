"""ONNX NN converters (MatMul, Gemm, Conv, pooling, normalisation, Softmax...) against torch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F_
from onnx import TensorProto, helper, numpy_helper

from harness import assert_close
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import FrontendError
from scalefold.ir.types import sym
from scalefold.runtime.interp import run

F = TensorProto.FLOAT


def model(nodes, inputs, outputs, inits=(), opset: int = 18) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def rnd(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# ---- matrix products ---------------------------------------------------------------------------

def test_matmul_constant_weight_becomes_linear() -> None:
    w = rnd(8, 5)
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"]),
               helper.make_node("MatMul", ["x", "v"], ["z"])],
              [("x", F, ["B", 3, 8]), ("v", F, [8, 2])], [("y", F, None), ("z", F, None)],
              [("w", w)])
    g = from_onnx(m)
    ops = [n.op for n in g.nodes]
    assert ops == ["linear", "matmul"]
    lin = g.nodes[0]
    assert lin.inputs[1].type.shape == (5, 8)  # stored [N, K]
    x, v = torch.randn(2, 3, 8), torch.randn(8, 2)
    y, z = run(g, x, v)
    assert_close(y, x @ t(w))
    assert_close(z, x @ v)


@pytest.mark.parametrize("transA,transB,alpha,beta,cshape", [
    (0, 0, 1.0, 1.0, (5,)), (1, 1, 0.5, 2.0, (1, 5)), (0, 1, 1.0, 0.25, ()),
    (0, 0, 2.0, 1.0, (4, 5)), (0, 0, 1.0, 1.0, None),
])
def test_gemm(transA: int, transB: int, alpha: float, beta: float, cshape) -> None:
    a = rnd(*((6, 4) if transA else (4, 6)))
    b = rnd(*((5, 6) if transB else (6, 5)))
    ins, inits = ["a", "b"], [("b", b)]
    if cshape is not None:
        cval = rnd(*cshape) if cshape else np.array(0.7, np.float32)
        ins.append("c")
        inits.append(("c", cval))
    node = helper.make_node("Gemm", ins, ["y"], transA=transA, transB=transB, alpha=alpha, beta=beta)
    m = model([node], [("a", F, list(a.shape))], [("y", F, None)], inits)
    g = from_onnx(m)
    assert "linear" in [n.op for n in g.nodes]
    A = t(a).T if transA else t(a)
    B = t(b).T if transB else t(b)
    want = alpha * (A.double() @ B.double())
    if cshape is not None:
        want = want + beta * t(cval).double()
    assert_close(run(g, t(a))[0], want.float())


def test_gemm_runtime_b_uses_matmul() -> None:
    m = model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=3.0)],
              [("a", F, [3, 4]), ("b", F, [2, 4]), ("c", F, [3, 2])], [("y", F, None)])
    g = from_onnx(m)
    assert "linear" not in [n.op for n in g.nodes]
    a, b, c = torch.randn(3, 4), torch.randn(2, 4), torch.randn(3, 2)
    assert_close(run(g, a, b, c)[0], 3.0 * a @ b.T + c)


# ---- convolution -------------------------------------------------------------------------------

def _same_pads(L: int, k: int, s: int, d: int, upper: bool) -> tuple[int, int]:
    out = -(-L // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - L)
    lo = total // 2 if upper else total - total // 2
    return lo, total - lo


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID", "NOTSET"])
def test_conv_auto_pad_symbolic_spatial(auto_pad: str) -> None:
    w, b = rnd(4, 3, 3, 2), rnd(4)
    attrs = dict(strides=[2, 1], dilations=[1, 2], auto_pad=auto_pad)
    if auto_pad == "NOTSET":
        attrs["pads"] = [1, 0, 2, 1]
    m = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)],
              [("x", F, [1, 3, "H", "W"])], [("y", F, None)], [("w", w), ("b", b)])
    g = from_onnx(m)
    assert g.outputs[0].type.shape[1] == 4
    for H, W in [(7, 6), (8, 5)]:
        x = torch.randn(1, 3, H, W)
        if auto_pad.startswith("SAME"):
            up = auto_pad == "SAME_UPPER"
            ph, pw = _same_pads(H, 3, 2, 1, up), _same_pads(W, 2, 1, 2, up)
        elif auto_pad == "VALID":
            ph, pw = (0, 0), (0, 0)
        else:
            ph, pw = (1, 2), (0, 1)
        want = F_.conv2d(F_.pad(x, (*pw, *ph)), t(w), t(b), stride=(2, 1), dilation=(1, 2))
        assert_close(run(g, x)[0], want)
        if auto_pad.startswith("SAME"):
            assert want.shape[2:] == (-(-H // 2), W)


def test_conv_transpose_output_shape_and_group() -> None:
    w = rnd(4, 1, 3, 3)
    m = model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=2,
                                output_shape=[9, 10])],
              [("x", F, [1, 4, 4, 4])], [("y", F, None)], [("w", w)])
    x = torch.randn(1, 4, 4, 4)
    got = run(from_onnx(m), x)[0]
    full = F_.conv_transpose2d(x, t(w), stride=2, groups=2)  # 9x9, total pads 0 and -1
    want = F_.pad(full, (0, 1, 0, 0))  # the extra column is appended at the end (no bias)
    assert_close(got, want)


# ---- pooling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pool_same_upper_and_ceil(op: str) -> None:
    m = model([helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                auto_pad="SAME_UPPER"),
               helper.make_node(op, ["x"], ["z"], kernel_shape=[2, 2], strides=[2, 2],
                                ceil_mode=1, pads=[1, 0, 0, 0],
                                **({"count_include_pad": 1} if op == "AveragePool" else {}))],
              [("x", F, [1, 2, 7, 6])], [("y", F, None), ("z", F, None)])
    x = torch.randn(1, 2, 7, 6)
    y, z = run(from_onnx(m), x)
    ph, pw = _same_pads(7, 3, 2, 1, True), _same_pads(6, 3, 2, 1, True)
    if op == "MaxPool":
        wy = F_.max_pool2d(F_.pad(x, (*pw, *ph), value=float("-inf")), 3, 2)
        wz = F_.max_pool2d(F_.pad(x, (0, 0, 1, 0), value=float("-inf")), 2, 2, ceil_mode=True)
    else:
        ones = F_.pad(torch.ones_like(x), (*pw, *ph))
        wy = F_.avg_pool2d(F_.pad(x, (*pw, *ph)), 3, 2) / F_.avg_pool2d(ones, 3, 2)
        # count_include_pad counts the explicit top pad; the ceil-mode tail never counts
        xp = F_.pad(x, (0, 0, 1, 0))
        wz = F_.avg_pool2d(xp, 2, 2, ceil_mode=True)
    assert_close(y, wy)
    assert_close(z, wz)


def test_maxpool_uint8_and_global_pools_and_lppool() -> None:
    m = model([helper.make_node("MaxPool", ["q"], ["mq"], kernel_shape=[2]),
               helper.make_node("GlobalAveragePool", ["x"], ["ga"]),
               helper.make_node("GlobalMaxPool", ["x"], ["gm"]),
               helper.make_node("LpPool", ["x"], ["lp"], kernel_shape=[2, 3], strides=[1, 2], p=3)],
              [("q", TensorProto.UINT8, [1, 1, 5]), ("x", F, [2, 3, 4, 5])],
              [(n, TensorProto.UINT8 if n == "mq" else F, None) for n in ("mq", "ga", "gm", "lp")])
    q = torch.tensor([[[3, 250, 7, 0, 9]]], dtype=torch.uint8)
    x = torch.randn(2, 3, 4, 5)
    mq, ga, gm, lp = run(from_onnx(m), q, x)
    assert torch.equal(mq, torch.tensor([[[250, 250, 7, 9]]], dtype=torch.uint8))
    assert_close(ga, x.mean((2, 3), keepdim=True))
    assert torch.equal(gm, x.amax((2, 3), keepdim=True))
    assert_close(lp, F_.lp_pool2d(x.abs(), 3, (2, 3), (1, 2)))


# ---- normalisation -------------------------------------------------------------------------------

def test_batch_instance_norm() -> None:
    s, b, mu, var = rnd(3), rnd(3, seed=1), rnd(3, seed=2), np.abs(rnd(3, seed=3)) + 0.5
    m = model([helper.make_node("BatchNormalization", ["x", "s", "b", "mu", "var"], ["y"],
                                epsilon=1e-3),
               helper.make_node("InstanceNormalization", ["x", "s", "b"], ["z"], epsilon=1e-4)],
              [("x", F, ["N", 3, 4, 5])], [("y", F, None), ("z", F, None)],
              [("s", s), ("b", b), ("mu", mu), ("var", var)])
    x = torch.randn(2, 3, 4, 5)
    y, z = run(from_onnx(m), x)
    assert_close(y, F_.batch_norm(x, t(mu), t(var), t(s), t(b), eps=1e-3))
    assert_close(z, F_.instance_norm(x, weight=t(s), bias=t(b), eps=1e-4))
    # training mode, only Y read (torch's exporter writes it for weight standardisation):
    # normalised by the batch's statistics, as onnxruntime does
    train = model([helper.make_node("BatchNormalization", ["x", "s", "b", "mu", "var"],
                                    ["y", "rm", "rv"], training_mode=1, epsilon=1e-3)],
                  [("x", F, ["N", 3, 4])], [("y", F, None)], [("s", s), ("b", b), ("mu", mu), ("var", var)])
    for x in (torch.randn(2, 3, 4), torch.randn(5, 3, 4)):
        want = F_.batch_norm(x, None, None, t(s), t(b), training=True, eps=1e-3)
        assert_close(run(from_onnx(train), x)[0], want, rtol=1e-5, atol=1e-5)
        import onnxruntime as ort
        got = ort.InferenceSession(train.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x.numpy()})[0]
        assert_close(torch.from_numpy(got), want, rtol=1e-5, atol=1e-5)
    bad = model([helper.make_node("BatchNormalization", ["x", "s", "b", "mu", "var"],
                                  ["y", "rm", "rv"], training_mode=1)],
                [("x", F, [2, 3, 4])], [("y", F, None), ("rm", F, None), ("rv", F, None)],
                [("s", s), ("b", b), ("mu", mu), ("var", var)])
    with pytest.raises(FrontendError, match="'rm' was not produced"):
        from_onnx(bad)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_norm_versions(opset: int) -> None:
    n = 2 if opset == 18 else 6  # opset 18: per-group scale/bias; 21: per channel
    s, b = rnd(n), rnd(n, seed=4)
    m = model([helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2,
                                epsilon=1e-3)],
              [("x", F, [2, 6, 5])], [("y", F, None)], [("s", s), ("b", b)], opset=opset)
    x = torch.randn(2, 6, 5)
    ws, wb = (t(s).repeat_interleave(3), t(b).repeat_interleave(3)) if opset == 18 else (t(s), t(b))
    assert_close(run(from_onnx(m), x)[0], F_.group_norm(x, 2, ws, wb, eps=1e-3))


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm_axis_and_stats(axis: int) -> None:
    tail = (4, 5) if axis == 1 else (5,)
    s, b = rnd(*tail), rnd(*tail, seed=5)
    m = model([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"],
                                axis=axis, epsilon=1e-3)],
              [("x", F, ["B", 4, 5])], [("y", F, None), ("mean", F, None), ("inv", F, None)],
              [("s", s), ("b", b)], opset=17)
    g = from_onnx(m)
    assert "layer_norm" in [n.op for n in g.nodes]
    x = torch.randn(3, 4, 5)
    y, mean, inv = run(g, x)
    dims = tuple(range(1 if axis == 1 else 2, 3))
    assert_close(y, F_.layer_norm(x, tail, t(s), t(b), eps=1e-3))
    assert_close(mean, x.mean(dims, keepdim=True))
    assert_close(inv, torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + 1e-3))


def test_lp_norm_mvn_lrn() -> None:
    m = model([helper.make_node("LpNormalization", ["x"], ["l2"], axis=1, p=2),
               helper.make_node("LpNormalization", ["x"], ["l1"], axis=-1, p=1),
               helper.make_node("MeanVarianceNormalization", ["x"], ["mvn"]),
               helper.make_node("LRN", ["x"], ["lrn"], size=3, alpha=0.01, beta=0.6, bias=2.0)],
              [("x", F, [2, 5, 3, 4])], [(n, F, None) for n in ("l2", "l1", "mvn", "lrn")])
    x = torch.randn(2, 5, 3, 4)
    x[0, :, 0, 0] = 0  # an all-zero slice stays zero
    l2, l1, mvn, lrn = run(from_onnx(m), x)
    assert_close(l2, F_.normalize(x, 2.0, 1))
    assert_close(l1, F_.normalize(x, 1.0, -1))
    mu = x.mean((0, 2, 3), keepdim=True)
    sd = x.var((0, 2, 3), unbiased=False, keepdim=True).sqrt()
    assert_close(mvn, (x - mu) / (sd + 1e-9))
    assert_close(lrn, F_.local_response_norm(x, 3, 0.01, 0.6, 2.0))


# ---- softmax / dropout ---------------------------------------------------------------------------

def test_softmax_logsoftmax_dropout() -> None:
    m = model([helper.make_node("Softmax", ["x"], ["s"], axis=1),
               helper.make_node("LogSoftmax", ["x"], ["ls"]),
               helper.make_node("Dropout", ["x", "r"], ["d", "mask"])],
              [("x", F, ["B", 4, 3])], [("s", F, None), ("ls", F, None), ("d", F, None),
                                        ("mask", TensorProto.BOOL, None)],
              [("r", np.array(0.3, np.float32))])
    g = from_onnx(m)
    assert g.outputs[2].type.shape == (sym("B"), 4, 3)
    x = torch.randn(2, 4, 3)
    s, ls, d, mask = run(g, x)
    assert_close(s, torch.softmax(x, 1))
    assert_close(ls, torch.log_softmax(x, -1))
    assert torch.equal(d, x) and bool(mask.all())
    train = model([helper.make_node("Dropout", ["x", "r", "tm"], ["d"])],
                  [("x", F, [2, 3])], [("d", F, None)],
                  [("r", np.array(0.3, np.float32)), ("tm", np.array(True))])
    with pytest.raises(FrontendError, match="training mode"):
        from_onnx(train)
