"""Import of onnxruntime's quantised ``com.microsoft`` contrib ops
(frontend/onnx_ops/contrib_quant.py).

- Per op: single-node models built with onnx.helper run in onnxruntime (CPU provider, one
  thread), on scalefold's reference interpreter and on the C target; the integer codes must be
  equal. The inputs are built to hit rounding ties (every code of the type, power-of-two
  scales whose ratios land on .5), so a wrong rounding order or tie rule shows up, and uint8
  and int8, per-tensor and (where the spec allows) per-column parameters are covered.
- Unsupported variants fail with UnsupportedOpError naming the node and what is unsupported.
- End to end: a small CNN (ResNet block, MobileNet block with squeeze-excite, concat, pools,
  sigmoid-mul, softmax) and a tiny BERT exported with torch.onnx.export, quantised by
  ``quantize_static(QOperator)`` and by ``quantize_dynamic`` (then fused by onnxruntime's own
  optimiser into DynamicQuantizeMatMul / MatMulIntegerToFloat), are checked to contain the
  contrib ops and compared with onnxruntime running the same file.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold
from scalefold.ir.errors import FrontendError, UnsupportedOpError
from scalefold.runtime.interp import run
from harness import ort_u8s8_saturates

MS = "com.microsoft"
ONNX_T = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
          np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
          np.dtype(bool): TensorProto.BOOL}
CODES = [np.uint8, np.int8]


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _session(model: onnx.ModelProto | str, **kw: Any) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"], **kw)


def _f32(x: float) -> np.ndarray:
    return np.array(x, dtype=np.float32)


class Op:
    """A one-node com.microsoft model: ``inputs`` in node order, each a name, None (an empty
    optional input) or (array, is_initializer)."""

    def __init__(self, op: str, inputs: Sequence[tuple[np.ndarray, bool] | None], out: int,
                 **attrs: Any) -> None:
        names, vis, inits, self.feeds = [], [], [], {}
        for i, item in enumerate(inputs):
            if item is None:
                names.append("")
                continue
            a, init = np.asarray(item[0]), item[1]
            name = f"in{i}"
            names.append(name)
            if init:
                inits.append(numpy_helper.from_array(a, name))
            else:
                vis.append(helper.make_tensor_value_info(name, ONNX_T[a.dtype], list(a.shape)))
                self.feeds[name] = a
        node = helper.make_node(op, names, ["y"], name=f"the_{op}", domain=MS, **attrs)
        g = helper.make_graph([node], op, vis, [helper.make_tensor_value_info("y", out, None)], inits)
        self.model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                          helper.make_opsetid(MS, 1)])

    def ort(self) -> np.ndarray:
        return _session(self.model).run(None, self.feeds)[0]

    def scalefold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(interpreter, C target) outputs of the imported model."""
        g = scalefold.from_onnx(self.model)
        xs = [torch.from_numpy(np.ascontiguousarray(v)) for v in self.feeds.values()]
        return run(g, *xs)[0], scalefold.compile(g, target="c")(*xs)


def _assert_codes(op: Op, max_diff: int = 0) -> np.ndarray:
    """onnxruntime, the interpreter and the C target give the same codes (or, with
    ``max_diff``, codes at most that far apart; callers say why)."""
    want = op.ort()
    interp, c = op.scalefold()
    for what, got in (("interp", interp), ("C target", c)):
        got = got.numpy()
        assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape)
        d = np.abs(got.astype(np.int64) - want.astype(np.int64))
        assert d.max() <= max_diff, f"{what}: {int((d > max_diff).sum())} codes differ by up to {d.max()}"
    return want


def _all_codes(t: type, shape: tuple[int, ...] = (16, 16)) -> np.ndarray:
    i = np.iinfo(t)
    return np.arange(i.min, i.max + 1).astype(t).reshape(shape)


def _rand_codes(rng: np.random.Generator, t: type, shape: tuple[int, ...]) -> np.ndarray:
    i = np.iinfo(t)
    return rng.integers(i.min, i.max + 1, size=shape).astype(t)


# ---- elementwise ---------------------------------------------------------------------------

# scales: power-of-two ratios put many results exactly on .5 (tie rule and the place where the
# zero point is added both matter there), and arbitrary ones
SCALES3 = [(2 ** -6, 3 * 2 ** -8, 2 ** -5), (0.01, 0.03, 0.02), (0.1, 0.1, 0.4)]


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("scales", SCALES3)
def test_qlinear_add_mul(code: type, op: str, scales: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(len(op))
    a = _all_codes(code)
    b = _rand_codes(rng, code, (16, 1))          # broadcast along the last axis
    za, zb, zc = (code(v) for v in ((3, -1, 7) if code is np.int8 else (120, 131, 128)))
    sa, sb, sc = (_f32(s) for s in scales)
    m = Op(op, [(a, False), (sa, True), (np.array(za), True), (b, False), (sb, True),
                (np.array(zb), True), (sc, True), (np.array(zc), True)], ONNX_T[np.dtype(code)])
    y = _assert_codes(m)
    assert len(np.unique(y)) > 10   # not a saturated, vacuous comparison


@pytest.mark.parametrize("op", ["QLinearSigmoid", "QLinearLeakyRelu"])
def test_qlinear_unary_without_zero_points(op: str) -> None:
    """Zero points absent: 0 and uint8 output. (onnxruntime 1.32's type inference rejects
    QLinearAdd / QLinearAveragePool nodes without zero points, so only these are compared.)"""
    x = _all_codes(np.uint8)
    y = _assert_codes(Op(op, [(x, False), (_f32(0.003), True), None, (_f32(0.004), True), None],
                         TensorProto.UINT8))
    assert y.dtype == np.uint8 and len(np.unique(y)) > 40


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {"alpha": 0.1}),
                                      ("QLinearLeakyRelu", {})])
@pytest.mark.parametrize("sx,sy", [(2 ** -4, 2 ** -8), (0.05, 0.004), (0.013, 0.02)])
def test_qlinear_unary(code: type, op: str, attrs: dict, sx: float, sy: float) -> None:
    x = _all_codes(code)
    zx, zy = (code(-20), code(-100)) if code is np.int8 else (code(130), code(10))
    _assert_codes(Op(op, [(x, False), (_f32(sx), True), (np.array(zx), True), (_f32(sy), True),
                          (np.array(zy), True)], ONNX_T[np.dtype(code)], **attrs))


@pytest.mark.parametrize("code", CODES)
def test_qlinear_where(code: type) -> None:
    rng = np.random.default_rng(5)
    x, y = _all_codes(code), _rand_codes(rng, code, (16,))
    cond = rng.random((16, 16)) < 0.5
    z = np.array(code(5))
    _assert_codes(Op("QLinearWhere", [(cond, False), (x, False), (_f32(0.03), True), (z, True),
                                      (y, False), (_f32(2 ** -5), True), (np.array(code(-3 if code is np.int8 else 200)), True),
                                      (_f32(2 ** -6), True), (np.array(code(9)), True)],
                     ONNX_T[np.dtype(code)]))


@pytest.mark.parametrize("code", CODES)
def test_qlinear_concat(code: type) -> None:
    """Three inputs: one requantised, one with the output's own parameters (copied), one more
    with a power-of-two scale ratio (ties)."""
    rng = np.random.default_rng(6)
    x0, x1, x2 = _all_codes(code), _rand_codes(rng, code, (16, 5)), _rand_codes(rng, code, (16, 3))
    ys, yz = _f32(0.02), np.array(code(4))
    m = Op("QLinearConcat", [(ys, True), (yz, True),
                             (x0, False), (_f32(0.05), True), (np.array(code(-7 if code is np.int8 else 120)), True),
                             (x1, False), (ys, True), (yz, True),
                             (x2, False), (_f32(0.01), True), (np.array(code(1)), True)],
           ONNX_T[np.dtype(code)], axis=1)
    y = _assert_codes(m)
    assert y.shape == (16, 24) and np.array_equal(y[:, 16:21], x1)


# ---- pooling and softmax -------------------------------------------------------------------

@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("hw", [(2, 2), (5, 7)])
def test_qlinear_global_average_pool(code: type, channels_last: int, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    shape = (2, *hw, 24) if channels_last else (2, 24, *hw)
    x = _rand_codes(rng, code, shape)
    zx, zy = (code(-3), code(5)) if code is np.int8 else (code(128), code(120))
    y = _assert_codes(Op("QLinearGlobalAveragePool", [(x, False), (_f32(2 ** -5), True), (np.array(zx), True),
                                                      (_f32(2 ** -7 if hw == (2, 2) else 0.011), True), (np.array(zy), True)],
                         ONNX_T[np.dtype(code)], channels_last=channels_last))
    assert y.shape == ((2, 1, 1, 24) if channels_last else (2, 24, 1, 1))


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("channels_last", [0, 1])
def test_qlinear_global_average_pool_ties_with_odd_zero_points(code: type, channels_last: int) -> None:
    """Windows of 2 with equal scales: every odd sum is a tie, which onnxruntime rounds before
    it adds the output zero point (so an odd zero point must not move it)."""
    rng = np.random.default_rng(17)
    shape = (2, 1, 2, 16) if channels_last else (2, 16, 1, 2)
    x = _rand_codes(rng, code, shape)
    zx, zy = (code(0), code(3)) if code is np.int8 else (code(0), code(129))
    y = _assert_codes(Op("QLinearGlobalAveragePool", [(x, False), (_f32(1.0), True), (np.array(zx), True),
                                                      (_f32(1.0), True), (np.array(zy), True)],
                         ONNX_T[np.dtype(code)], channels_last=channels_last))
    sums = x.astype(np.int64).sum(axis=(1, 2) if channels_last else (2, 3))
    assert (sums % 2 == 1).sum() > 4          # ties do occur
    assert y.shape[0] == 2


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], count_include_pad=0),
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], count_include_pad=1),
    dict(kernel_shape=[2, 2], strides=[2, 2]),
    dict(kernel_shape=[3, 2], strides=[1, 2], ceil_mode=1, channels_last=1),
])
def test_qlinear_average_pool(code: type, attrs: dict) -> None:
    rng = np.random.default_rng(8)
    x = _rand_codes(rng, code, (2, 6, 7, 5) if attrs.get("channels_last") else (2, 5, 6, 7))
    zx, zy = (code(3), code(-2)) if code is np.int8 else (code(100), code(90))
    _assert_codes(Op("QLinearAveragePool", [(x, False), (_f32(2 ** -5), True), (np.array(zx), True),
                                            (_f32(2 ** -4), True), (np.array(zy), True)],
                     ONNX_T[np.dtype(code)], **attrs))


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("sx", [0.05, 2 ** -4, 0.1])
def test_qlinear_softmax(code: type, sx: float) -> None:
    """With the output scale 1/256 that onnxruntime's quantiser always writes, the codes match
    exactly (opset-13 axis and the opset-12 coercion to 2-D)."""
    rng = np.random.default_rng(9)
    x = _rand_codes(rng, code, (3, 4, 10))
    zy = code(0) if code is np.uint8 else code(-128)
    ins = [(x, False), (_f32(sx), True), (np.array(code(3)), True), (_f32(1 / 256), True), (np.array(zy), True)]
    _assert_codes(Op("QLinearSoftmax", ins, ONNX_T[np.dtype(code)], axis=-1, opset=13))
    _assert_codes(Op("QLinearSoftmax", ins, ONNX_T[np.dtype(code)], axis=1, opset=12))


def test_qlinear_softmax_other_output_scale_within_one_code() -> None:
    """For an output scale that is not a power of two onnxruntime's kernel lands up to one code
    below the spec's round(softmax(x) / y_scale) + y_zp (its normalisation is not the float
    division the spec states; 1/256, the only scale its quantiser writes, is exact above), so
    here the codes agree within 1."""
    rng = np.random.default_rng(10)
    x = _rand_codes(rng, np.uint8, (6, 10))
    _assert_codes(Op("QLinearSoftmax", [(x, False), (_f32(0.05), True), (np.array(np.uint8(3)), True),
                                        (_f32(0.004), True), (np.array(np.uint8(3)), True)],
                     TensorProto.UINT8, axis=-1, opset=13), max_diff=1)


# ---- matrix products -----------------------------------------------------------------------

def _qgemm_case(ta: type, tb: type, per_col: bool, trans_b: int, seed: int):
    rng = np.random.default_rng(seed)
    m, k, n = 5, 19, 7
    a = _rand_codes(rng, ta, (m, k))
    ib = np.iinfo(tb)
    b = rng.integers(ib.min // 2, ib.max // 2, size=(n, k) if trans_b else (k, n)).astype(tb)
    za = np.array(ta(-4 if ta is np.int8 else 131))
    sb = rng.uniform(0.001, 0.01, size=n).astype(np.float32) if per_col else _f32(0.004)
    zb = (rng.integers(-3, 4, size=n) + (128 if tb is np.uint8 else 0)).astype(tb) if per_col \
        else np.array(tb(0 if tb is np.int8 else 128))
    c = rng.integers(-3000, 3000, size=n).astype(np.int32)
    return [(a, False), (_f32(2 ** -5), True), (za, True), (b, True), (sb, True), (zb, True), (c, True)]


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_col,trans_b,alpha", [(False, 1, 1.0), (True, 1, 0.5), (True, 0, 0.7)])
def test_qgemm_quantized_output(ta: type, tb: type, per_col: bool, trans_b: int, alpha: float) -> None:
    ins = _qgemm_case(ta, tb, per_col, trans_b, 11)
    yz = np.array(ta(3 if ta is np.int8 else 125))
    y = _assert_codes(Op("QGemm", ins + [(_f32(0.11), True), (yz, True)], ONNX_T[np.dtype(ta)],
                         transB=trans_b, alpha=alpha))
    assert len(np.unique(y)) > 10


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_col,trans_a,bias", [(False, 0, True), (True, 1, True), (True, 0, False)])
def test_qgemm_float_output(ta: type, tb: type, per_col: bool, trans_a: int, bias: bool) -> None:
    """Without y_scale the output is float32: float(acc) * ((alpha * a_scale) * b_scale) is the
    same float32 computation as onnxruntime's, so the floats are equal bit for bit."""
    ins = _qgemm_case(ta, tb, per_col, 1, 12)
    if trans_a:
        ins[0] = (ins[0][0].T.copy(), False)
    if not bias:
        ins[6] = None
    m = Op("QGemm", ins, TensorProto.FLOAT, transA=trans_a, transB=1, alpha=0.7)
    want = m.ort()
    for what, got in zip(("interp", "C target"), m.scalefold()):
        assert np.array_equal(got.numpy(), want), what


def _mm_inputs(rng: np.random.Generator, tb: type, per_col: bool, k: int = 23, n: int = 9):
    ib = np.iinfo(tb)
    lo, hi = (-64, 63) if tb is np.int8 and ort_u8s8_saturates() else (ib.min, ib.max)
    b = rng.integers(lo, hi + 1, size=(k, n)).astype(tb)
    sb = rng.uniform(0.001, 0.01, size=n).astype(np.float32) if per_col else _f32(0.004)
    zb = rng.integers(ib.min // 4, ib.max // 4, size=n).astype(tb) if per_col else np.array(tb(3))
    return b, sb, zb, rng.normal(size=n).astype(np.float32)


@pytest.mark.parametrize("tb", CODES)
@pytest.mark.parametrize("per_col", [False, True])
def test_dynamic_quantize_matmul(tb: type, per_col: bool) -> None:
    """A is quantised at run time like DynamicQuantizeLinear; the float outputs are the same
    float32 operations in the same order as onnxruntime's, so they are equal bit for bit."""
    rng = np.random.default_rng(13)
    x = (rng.normal(size=(2, 6, 23)) * 3).astype(np.float32)
    b, sb, zb, bias = _mm_inputs(rng, tb, per_col)
    for ins in ([(x, False), (b, True), (sb, True), (zb, True), (bias, True)],
                [(x, False), (b, True), (sb, True), None, None]):
        m = Op("DynamicQuantizeMatMul", ins, TensorProto.FLOAT)
        want = m.ort()
        for what, got in zip(("interp", "C target"), m.scalefold()):
            assert np.array_equal(got.numpy(), want), what


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_col", [False, True])
def test_matmul_integer_to_float(ta: type, tb: type, per_col: bool) -> None:
    rng = np.random.default_rng(14)
    a = _rand_codes(rng, ta, (2, 6, 23))
    b, sb, zb, bias = _mm_inputs(rng, tb, per_col)
    m = Op("MatMulIntegerToFloat", [(a, False), (b, True), (_f32(0.02), True), (sb, True),
                                    (np.array(ta(5)), True), (zb, True), (bias, True)], TensorProto.FLOAT)
    want = m.ort()
    for what, got in zip(("interp", "C target"), m.scalefold()):
        assert np.array_equal(got.numpy(), want), what


# ---- unsupported variants ------------------------------------------------------------------

def test_unsupported_per_channel_scale_names_node_and_variant() -> None:
    """QLinearAdd's scales are per tensor by the spec; a per-channel one is refused clearly."""
    a = _all_codes(np.uint8)
    m = Op("QLinearAdd", [(a, False), (np.full(16, 0.1, np.float32), True), None, (a, False),
                          (_f32(0.1), True), None, (_f32(0.2), True), None], TensorProto.UINT8)
    with pytest.raises(UnsupportedOpError) as e:
        scalefold.from_onnx(m.model)
    msg = str(e.value)
    assert "the_QLinearAdd" in msg and "per-channel A_scale" in msg and "com.microsoft::QLinearAdd" in msg


def test_unsupported_qgemm_quantized_output_without_zero_point() -> None:
    ins = _qgemm_case(np.uint8, np.int8, False, 1, 15)
    m = Op("QGemm", ins + [(_f32(0.1), True)], TensorProto.UINT8, transB=1)
    with pytest.raises(UnsupportedOpError, match="the_QGemm.*y_scale but no y_zero_point"):
        scalefold.from_onnx(m.model)


def test_unsupported_average_pool_ceil_mode_with_count_include_pad() -> None:
    x = _rand_codes(np.random.default_rng(3), np.uint8, (1, 2, 6, 6))
    m = Op("QLinearAveragePool", [(x, False), (_f32(0.1), True), (np.array(np.uint8(3)), True),
                                  (_f32(0.1), True), (np.array(np.uint8(3)), True)], TensorProto.UINT8,
           kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1, count_include_pad=1)
    with pytest.raises(UnsupportedOpError, match="the_QLinearAveragePool.*ceil_mode together with count_include_pad"):
        scalefold.from_onnx(m.model)


def test_mismatched_zero_point_type_is_a_frontend_error() -> None:
    x = _all_codes(np.uint8)
    m = Op("QLinearSigmoid", [(x, False), (_f32(0.1), True), (np.array(np.int8(0)), True),
                              (_f32(0.1), True), None], TensorProto.UINT8)
    with pytest.raises(FrontendError, match="the_QLinearSigmoid.*X_zero_point must have the codes' type u8"):
        scalefold.from_onnx(m.model)


# ---- end to end: onnxruntime's quantisers --------------------------------------------------

class _SE(torch.nn.Module):
    """Squeeze-excite: global pool -> 1x1 convs -> sigmoid gate multiplied into x."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Conv2d(c, c // 2, 1), torch.nn.Conv2d(c // 2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(w))))


class _CNN(torch.nn.Module):
    """A ResNet block (conv-relu-conv + skip add), an average pool, a MobileNet block
    (depthwise + pointwise, leaky relu) with squeeze-excite, a concat of two branches (one
    max-pooled), sigmoid-mul (swish), global pool, linear and softmax."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = conv(3, 8, 3, padding=1)
        self.c1, self.c2 = conv(8, 8, 3, padding=1), conv(8, 8, 3, padding=1)
        self.dw, self.pw = conv(8, 8, 3, padding=1, groups=8), conv(8, 16, 1)
        self.se = _SE(16)
        self.b1, self.b2 = conv(16, 8, 1), conv(16, 8, 3, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.c2(torch.relu(self.c1(x))))
        x = F.avg_pool2d(x, 2)
        x = self.se(F.leaky_relu(self.pw(torch.relu(self.dw(x))), 0.1))
        x = torch.cat([self.b1(x), F.max_pool2d(self.b2(x), 3, 1, 1)], 1)
        x = x * torch.sigmoid(x)
        return torch.softmax(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)), -1)


class _BertLastHidden(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        import transformers
        cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=64,
                                      max_position_embeddings=64, attn_implementation="eager")
        self.bert = transformers.BertModel(cfg)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def _bert_feed(b: int, s: int, seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[-1, s - 2:] = 0
    return {"ids": torch.randint(0, 100, (b, s), generator=gen).numpy(), "mask": mask.numpy()}


def _cnn_feed(seed: int) -> dict[str, np.ndarray]:
    return {"x": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).numpy()}


@pytest.fixture(scope="module")
def float_models(tmp_path_factory) -> dict[str, Path]:
    """The CNN and the BERT as float ONNX files (legacy exporter, opset 17)."""
    d = tmp_path_factory.mktemp("cquant")
    torch.manual_seed(0)
    out = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        cnn = _CNN().eval()
        out["cnn"] = d / "cnn.onnx"
        torch.onnx.export(cnn, (torch.from_numpy(_cnn_feed(0)["x"]),), str(out["cnn"]), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "B"}, "y": {0: "B"}})
        bert = _BertLastHidden().eval()
        f = _bert_feed(2, 8, 0)
        out["bert"] = d / "bert.onnx"
        torch.onnx.export(bert, (torch.from_numpy(f["ids"]), torch.from_numpy(f["mask"])),
                          str(out["bert"]), dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["y"],
                          dynamic_axes={"ids": {0: "B", 1: "S"}, "mask": {0: "B", 1: "S"},
                                        "y": {0: "B", 1: "S"}})
    return out


def _contrib_ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == MS)


def _quantize_static(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], act: str) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    qt = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=qt[act], weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=ort_u8s8_saturates())
    return dst


# onnxruntime's transformer fusions are left out so that the fused dynamic model holds only
# this module's contrib ops (Gelu / SkipLayerNormalization / FusedMatMul are another module's)
_NOT_FUSED = ["GeluFusion", "GeluFusionL1", "GeluFusionL2", "SkipLayerNormFusion", "MatMulScaleFusion",
              "QuickGeluFusion", "BiasGeluFusion", "FastGeluFusion", "AttentionFusion",
              "EmbedLayerNormFusion", "LayerNormFusion", "SimplifiedLayerNormFusion",
              "BiasSoftmaxFusion", "MatMulTransposeFusion"]


def _quantize_dynamic_fused(src: Path, dst: Path) -> Path:
    """quantize_dynamic (DynamicQuantizeLinear + MatMulInteger / ConvInteger, standard ops),
    then onnxruntime's own extended graph optimisation, saved: it fuses the MatMul chains into
    DynamicQuantizeMatMul and MatMulIntegerToFloat, the form an onnxruntime-optimised dynamic
    model is shipped in."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    plain = dst.with_suffix(".plain.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(plain), weight_type=QuantType.QInt8, reduce_range=ort_u8s8_saturates())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(plain), opts, providers=["CPUExecutionProvider"], disabled_optimizers=_NOT_FUSED)
    return dst


def _compare(path: Path, feeds: list[dict[str, np.ndarray]], tol: float, c_target: bool) -> None:
    """scalefold's import of ``path`` (interpreter, optionally the C target) against
    onnxruntime running the same file; ``tol`` is relative to max |onnxruntime output|."""
    sess = _session(str(path))
    g = scalefold.from_onnx(str(path))
    cm = scalefold.compile(g, target="c") if c_target else None
    for feed in feeds:
        want = torch.from_numpy(sess.run(None, feed)[0])
        xs = [torch.from_numpy(feed[v.name]) for v in g.inputs]
        outs = [("interp", run(g, *xs)[0])] + ([("C target", cm(*xs))] if cm is not None else [])
        for what, got in outs:
            err = (got.double() - want.double()).abs().max().item()
            scale = want.abs().max().item()
            assert err <= tol * scale, f"{path.name} {what}: max error {err:.3e} vs scale {scale:.3e}"


CNN_STATIC_OPS = {"QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
                  "QLinearGlobalAveragePool", "QLinearAveragePool", "QGemm", "QLinearSoftmax"}


@pytest.mark.parametrize("act", ["u8", "s8"])
def test_cnn_quantize_static_qoperator(float_models: dict[str, Path], tmp_path: Path, act: str) -> None:
    """Every op of the QOperator CNN is integer in, integer out (the float output is one
    DequantizeLinear of the final codes), and each converter reproduces onnxruntime's
    rounding, so the outputs are equal exactly (tolerance 0), on the interpreter and in C."""
    cal = [_cnn_feed(i) for i in range(1, 5)]
    q = _quantize_static(float_models["cnn"], tmp_path / f"cnn_{act}.onnx", cal, act)
    ops = _contrib_ops(q)
    assert CNN_STATIC_OPS <= set(ops), ops
    assert ops["QLinearGlobalAveragePool"] == 2 and ops["QLinearMul"] == 2
    feeds = [_cnn_feed(9), _cnn_feed(10)]
    want = _session(str(q)).run(None, feeds[0])[0]
    assert len(np.unique(want)) > 5   # the softmax codes are not all one value
    _compare(q, feeds, 0.0, c_target=True)


def test_cnn_quantize_dynamic(float_models: dict[str, Path], tmp_path: Path) -> None:
    """ConvInteger convs and a DynamicQuantizeMatMul classifier: the same float32 operations
    as onnxruntime; 1e-6 of the output scale leaves room only for float summation order in the
    float ops between them (observed: 0)."""
    q = _quantize_dynamic_fused(float_models["cnn"], tmp_path / "cnn_dyn.onnx")
    assert _contrib_ops(q)["DynamicQuantizeMatMul"] == 1
    _compare(q, [_cnn_feed(9), _cnn_feed(10)], 1e-6, c_target=True)


def test_bert_quantize_static_qoperator(float_models: dict[str, Path], tmp_path: Path) -> None:
    """QLinearMatMul / QLinearAdd / QLinearMul / QLinearSoftmax with float LayerNorm, Erf and
    mask arithmetic between QuantizeLinear / DequantizeLinear pairs. The integer ops match
    exactly; the float ops differ from onnxruntime's by summation order (~1e-7 relative
    observed), so 1e-5 of the output scale is allowed, well below one quantisation step
    (~1e-2 of the scale), which a wrong rounding anywhere would cost."""
    cal = [_bert_feed(2, 8, i) for i in range(1, 4)]
    q = _quantize_static(float_models["bert"], tmp_path / "bert_u8.onnx", cal, "u8")
    ops = _contrib_ops(q)
    assert ops["QLinearAdd"] >= 20 and ops["QLinearMul"] >= 4 and ops["QLinearSoftmax"] == 2, ops
    _compare(q, [_bert_feed(2, 8, 9), _bert_feed(3, 5, 10)], 1e-5, c_target=True)


def test_bert_quantize_dynamic(float_models: dict[str, Path], tmp_path: Path) -> None:
    """quantize_dynamic + onnxruntime's fusion: 12 linears as DynamicQuantizeMatMul (weights)
    and MatMulIntegerToFloat (the shared dynamic quantisation of q / k / v's input). Same
    tolerance and reason as the static BERT."""
    q = _quantize_dynamic_fused(float_models["bert"], tmp_path / "bert_dyn.onnx")
    ops = _contrib_ops(q)
    assert ops["DynamicQuantizeMatMul"] >= 4 and ops["MatMulIntegerToFloat"] >= 4, ops
    assert sum(ops.values()) == ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"]
    _compare(q, [_bert_feed(2, 8, 9), _bert_feed(3, 5, 10)], 1e-5, c_target=True)


def test_qlinearconv_requantises_with_onnxruntime_s_multiplier() -> None:
    """(x_scale * w_scale) / y_scale is 0.5 exactly in float32 here, so every odd accumulator
    is a tie that onnxruntime rounds to even; multiplying by x_scale * w_scale and dividing
    by y_scale afterwards landed beside the tie (one code off, 36.500004 -> 37)."""
    import onnxruntime as ort
    from onnx import TensorProto as TP, helper as H, numpy_helper as NH

    import scalefold as sf
    r = np.random.default_rng(0)
    w = r.integers(-20, 20, (8, 4, 3, 3)).astype(np.int8)
    inits = [NH.from_array(np.array(0.02, np.float32), "xs"), NH.from_array(np.array(3, np.uint8), "xz"),
             NH.from_array(w, "w"), NH.from_array(np.array(0.05, np.float32), "ws"),
             NH.from_array(np.array(0, np.int8), "wz"), NH.from_array(np.array(0.002, np.float32), "ys"),
             NH.from_array(np.array(128, np.uint8), "yz")]
    node = H.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])
    g = H.make_graph([node], "g", [H.make_tensor_value_info("x", TP.UINT8, [1, 4, 6, 6])],
                     [H.make_tensor_value_info("y", TP.UINT8, None)], inits)
    m = H.make_model(g, opset_imports=[H.make_opsetid("", 17)])
    m.ir_version = 8
    x = r.integers(0, 8, (1, 4, 6, 6)).astype(np.uint8)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for target in ("interp", "c"):
        got = sf.compile(m, target=target)(torch.from_numpy(x)).numpy()
        assert np.array_equal(got, want), (target, int((got != want).sum()))
