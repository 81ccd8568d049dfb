"""ONNX export of the weight-only quantised graphs that ``passes/quant_weights.py`` produces
(issue 8, deliverable 3): every qlinear form is exported with ``to_onnx`` (full checker),
run in onnxruntime (CPU) and compared with the reference interpreter.

What each form must export to (codegen/onnx_quant.py, qlinear section):
- 4-bit codes (u4 + zero: int4 / int3 asym; i4 without zero: int4 sym, LLM-FP4's E1M2) with
  groups whose power-of-two part is >= 16, per channel, K not a multiple of the group ->
  ``com.microsoft.MatMulNBits`` (i4 stored +8 with the default zero point, no zp input);
- other groups, 8-bit codes (int8, E3M0 as i8), f8e4m3 -> DequantizeLinear + MatMul;
- f4e2m1 codes -> table-lookup decode + MatMul (onnxruntime 1.32 has no FLOAT4E2M1 kernels);
- act="per_token" -> float per-row quantisation of x, int8 codes, MatMulInteger (batched over
  the groups), float scales;
- act_format fp8 / fp4 -> QuantizeLinear/DequantizeLinear to FLOAT8E4M3FN, resp. the exact
  E2M1 encode/decode in float ops.

Tolerance: "equal up to fp accumulation": max |ort - ours| <= 1e-5 * max |ours| for f32
outputs (measured diffs are ~1e-7 relative); f16 outputs may differ by one f16 rounding.
"""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from scalefold.codegen.onnx import to_onnx
from scalefold.ir import dtypes as dt
from scalefold.ir.graph import Graph
from scalefold.passes.quant_weights import _replace, quant_weights
from scalefold.passes.wq_fp import FP4_FORMATS, fp4_codes
from scalefold.runtime.interp import run

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # Keep onnxruntime from rewriting DequantizeLinear+MatMul into int8-activation MatMulNBits.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    # and from moving / fusing the activations' QuantizeLinear-DequantizeLinear pairs (README)
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _linear_graph(k: int, n: int, bias: bool, xdtype: str = "f32", batch: str = "B,S") -> Graph:
    """x [batch..., K] -> linear(x, W, b?) with a symbolic batch, ready for quant_weights."""
    torch.manual_seed(k * 31 + n)
    g = Graph("wq")
    x = g.add_input(f"{xdtype}[{batch},{k}]", "x")
    c = dt.get(xdtype).container
    w = g.add_const((torch.randn(n, k) / k ** 0.5).to(c), name="w")
    b = g.add_const((torch.randn(n) * 0.1).to(c), name="b") if bias else None
    g.set_outputs([g.add("linear", [x, w] + ([b] if bias else []))], ["y"])
    return g


def _calib(k: int, xdtype: str = "f32") -> list[tuple[torch.Tensor]]:
    return [(torch.randn(2, 7, k).to(dt.get(xdtype).container),) for _ in range(2)]


def _export_run(g: Graph, x: torch.Tensor, tmp_path: Path) -> tuple[float, collections.Counter, onnx.ModelProto]:
    """(max |ort - interp| / max |interp|, op counts, model) after to_onnx to a file."""
    path = tmp_path / "m.onnx"
    m = to_onnx(g, path)
    onnx.checker.check_model(str(path), full_check=True)
    got = torch.from_numpy(np.asarray(_session(m).run(None, {"x": x.numpy()})[0]))
    want = run(g, x)[0]
    assert got.dtype == want.dtype and got.shape == want.shape
    rel = float((got.double() - want.double()).abs().max() / want.double().abs().max())
    return rel, collections.Counter(nd.op_type for nd in m.graph.node), m


def _qlinears(g: Graph) -> list:
    return [nd for nd in g.nodes if nd.op == "qlinear"]


# (label, k, n, bias, pass options, what the qlinear must export to)
FORMS = [
    ("int4_g128_shortlast", 200, 24, True, dict(format="int4", group=128), "MatMulNBits"),
    ("int4_g128_nobias", 256, 17, False, dict(format="int4", group=128), "MatMulNBits"),
    ("int4_g64", 200, 24, True, dict(format="int4", group=64), "MatMulNBits"),
    ("int4_g48", 200, 8, True, dict(format="int4", group=48), "MatMulNBits"),
    ("int4_channel", 200, 24, True, dict(format="int4", group=0), "MatMulNBits"),
    ("int3_g128", 200, 24, True, dict(format="int3", group=128), "MatMulNBits"),
    ("int4_sym_g128", 200, 24, True, dict(format="int4", group=128, sym=True), "MatMulNBits"),
    ("int4_sym_channel", 40, 8, False, dict(format="int4", group=0, sym=True), "MatMulNBits"),
    ("int4_g7", 60, 8, True, dict(format="int4", group=7), "DequantizeLinear"),
    ("int8_g128", 200, 24, True, dict(format="int8", group=128), "DequantizeLinear"),
    ("int8_sym_channel", 200, 24, False, dict(format="int8", group=0, sym=True), "DequantizeLinear"),
    # float8 weights: Cast of the FLOAT8E4M3FN initializer times the scales (onnxruntime's
    # float8 DequantizeLinear before a MatMul is some 15x slower in a default session)
    ("fp8_g128", 200, 24, True, dict(format="fp8_e4m3", group=128), "Cast"),
    ("fp8_channel", 200, 24, True, dict(format="fp8_e4m3", group=0), "Cast"),
    ("fp4_g128", 200, 24, True, dict(format="fp4_e2m1", group=128), "Gather"),
    ("fp4_channel", 200, 24, False, dict(format="fp4_e2m1", group=0), "Gather"),
    ("int4_act8_g128", 200, 24, True, dict(format="int4", group=128, act="int8"), "MatMulInteger"),
    ("int4_act8_channel", 200, 24, True, dict(format="int4", group=0, act="int8"), "MatMulInteger"),
    ("int3_act8_g32", 72, 8, False, dict(format="int3", group=32, act="int8"), "MatMulInteger"),
    ("int8_sym_act8_channel", 200, 24, True, dict(format="int8", group=0, act="int8", sym=True), "MatMulInteger"),
    ("int4_sym_act8_g64", 200, 24, True, dict(format="int4", group=64, act="int8", sym=True), "MatMulInteger"),
    # (w - zero) of u8 codes leaves int8: the float formula, same products
    ("int8_act8_g128", 200, 24, True, dict(format="int8", group=128, act="int8"), "Round"),
]


@pytest.mark.parametrize("label,k,n,bias,opts,want_op", FORMS, ids=[f[0] for f in FORMS])
@pytest.mark.parametrize("rows", [(1, 1), (3, 17)])
def test_pass_forms_export(label, k, n, bias, opts, want_op, rows, tmp_path) -> None:
    g = quant_weights(_linear_graph(k, n, bias), None, **opts)
    assert len(_qlinears(g)) == 1
    x = torch.randn(*rows, k) * 2
    rel, ops, _ = _export_run(g, x, tmp_path)
    assert rel <= 1e-5, (label, rel)
    assert ops[want_op] >= 1, (label, dict(ops))
    if want_op == "MatMulNBits":
        assert "DequantizeLinear" not in ops and "MatMul" not in ops
    if want_op in ("Gather", "Cast"):   # fp4: decoded in float ops, no FLOAT4E2M1 tensor anywhere
        assert "DequantizeLinear" not in ops


def _unpack(p: np.ndarray) -> np.ndarray:
    return np.stack([p & 15, p >> 4], axis=-1).reshape(*p.shape[:-1], -1)


@pytest.mark.parametrize("sym", [False, True])
def test_matmul_nbits_layout(sym: bool, tmp_path: Path) -> None:
    """B unpacks to the IR codes (i4 + 8), K padded to the block with the zero point (so the
    padding dequantises to 0); i4 has no zero-point input (the op's default 8 applies)."""
    k, n = 200, 8
    g = quant_weights(_linear_graph(k, n, False), None, format="int4", group=128, sym=sym)
    ql = _qlinears(g)[0]
    m = to_onnx(g)
    node = next(nd for nd in m.graph.node if nd.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (attrs["K"], attrs["N"], attrs["block_size"], attrs["bits"], attrs["accuracy_level"]) == (k, n, 128, 4, 0)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    codes = _unpack(inits[node.input[1]]).reshape(n, -1).astype(np.int16)
    ir = ql.inputs[1].const.to(torch.int16).numpy()
    if sym:
        assert len(node.input) == 3
        np.testing.assert_array_equal(codes[:, :k], ir + 8)
        np.testing.assert_array_equal(codes[:, k:], 8)
    else:
        zp = _unpack(inits[node.input[3]]).reshape(n, -1)[:, :2]
        np.testing.assert_array_equal(zp, ql.inputs[3].const.numpy())
        np.testing.assert_array_equal(codes[:, :k], ir)
        np.testing.assert_array_equal(codes[:, k:], np.repeat(zp[:, 1:], 256 - k, axis=1))
    np.testing.assert_array_equal(inits[node.input[2]].reshape(n, 2), ql.inputs[2].const.numpy())


@pytest.mark.parametrize("fmt,cdt,want_op", [("e1m2", dt.i4, "MatMulNBits"), ("e3m0", dt.i8, "DequantizeLinear"),
                                             ("e2m1", dt.f4e2m1, "Gather")])
def test_llm_fp4_formats(fmt: str, cdt: dt.DType, want_op: str, tmp_path: Path) -> None:
    """LLM-FP4's three 4-bit formats as the pass stores them (E1M2 as i4, E3M0 as i8 codes),
    built with the pass's own replacement helper since the search picks the format."""
    k, n = 200, 24
    g = _linear_graph(k, n, True)
    lin = next(nd for nd in g.nodes if nd.op == "linear")
    codes, got_dt, scale = fp4_codes(lin.inputs[1].const.float(), FP4_FORMATS[fmt], 128)
    assert got_dt is cdt
    _replace(g, lin, codes, cdt, scale, None, 128, "f4e2m1" if cdt is dt.f4e2m1 else None)
    rel, ops, _ = _export_run(g, torch.randn(3, 5, k), tmp_path)
    assert rel <= 1e-5 and ops[want_op] >= 1, (rel, dict(ops))


@pytest.mark.parametrize("opts", [dict(format="int4", group=128), dict(format="int4", group=0, sym=True),
                                  dict(format="int8", group=128), dict(format="int4", group=128, act="int8")],
                         ids=["nbits_g128", "nbits_sym", "dq_int8", "per_token"])
def test_f16_activations(opts, tmp_path: Path) -> None:
    """f16 x: compute in float32 like the IR, one rounding to f16 at the end (<= 1 f16 ulp)."""
    k = 200
    g = quant_weights(_linear_graph(k, 24, True, "f16"), None, **opts)
    x = torch.randn(2, 5, k).half()
    path = tmp_path / "m.onnx"
    m = to_onnx(g, path)
    got = torch.from_numpy(np.asarray(_session(m).run(None, {"x": x.numpy()})[0]))
    want = run(g, x)[0]
    assert got.dtype == torch.float16
    d = (got.float() - want.float()).abs()
    assert float((d / want.float().abs().clamp_min(2 ** -14)).max()) <= 2 ** -10


@pytest.mark.parametrize("act_format,wfmt,qtype", [("fp8_e4m3", "fp8_e4m3", onnx.TensorProto.FLOAT8E4M3FN),
                                                    ("fp4_e2m1", "fp4_e2m1", None)])
def test_act_format_quant_dequant(act_format: str, wfmt: str, qtype, tmp_path: Path) -> None:
    """quantize -> dequantize of the activations (per tensor): fp8 as native QuantizeLinear /
    DequantizeLinear, fp4 as the exact E2M1 encode/decode in float ops."""
    k = 200
    g = quant_weights(_linear_graph(k, 24, True), _calib(k), format=wfmt, group=128, act_format=act_format)
    assert {"quantize", "dequantize", "qlinear"} <= {nd.op for nd in g.nodes}
    rel, ops, m = _export_run(g, torch.randn(3, 5, k) * 3, tmp_path)
    assert rel <= 1e-5, rel
    if qtype is not None:
        assert ops["QuantizeLinear"] == 1
        q = next(nd for nd in m.graph.node if nd.op_type == "QuantizeLinear")
        assert onnx.helper.get_attribute_value(next(a for a in q.attribute if a.name == "output_dtype")) == qtype
    else:
        assert "QuantizeLinear" not in ops and ops["Gather"] >= 2   # encode + decode tables
        assert all(t.data_type != onnx.TensorProto.FLOAT4E2M1 for t in m.graph.initializer)


def test_minilm_int4_g128_onnx() -> None:
    """The real all-MiniLM-L6-v2 after quant_weights(int4, g128): onnxruntime's embeddings
    equal the interpreter's (cosine >= 0.99999 for every sentence), all linears MatMulNBits."""
    import outliertune_accuracy as acc
    from scalefold.passes import PassManager
    m = acc.load()
    g = PassManager("quant_weights(format=int4, group=128)").run(m.graph)
    nq = len(_qlinears(g))
    assert nq >= 36
    model = to_onnx(g)
    ops = collections.Counter(nd.op_type for nd in model.graph.node)
    assert ops["MatMulNBits"] == nq and "DequantizeLinear" not in ops
    c = acc.cosines(acc.embed_onnx(m, model.SerializeToString()), acc.embed_graph(m, g))
    assert float(c.min()) >= 0.99999, float(c.min())


def test_nbits_accuracy_option(tmp_path: Path) -> None:
    """to_onnx(nbits_accuracy=4) writes accuracy_level 4 (onnxruntime's int8-activation path:
    close to the IR's numbers, not equal); anything but 0..4 is an ExportError."""
    from scalefold.codegen.onnx_build import ExportError
    k, n = 256, 24
    g = quant_weights(_linear_graph(k, n, True), None, format="int4", group=128)
    m = to_onnx(g, nbits_accuracy=4)
    node = next(nd for nd in m.graph.node if nd.op_type == "MatMulNBits")
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["accuracy_level"] == 4
    x = torch.randn(2, 3, k)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    want = run(g, x)[0]
    assert float((got - want).norm() / want.norm()) < 3e-2
    for bad in (5, -1, True, "4", 2.0):
        with pytest.raises(ExportError, match="nbits_accuracy"):
            to_onnx(g, nbits_accuracy=bad)


def test_fp8_weights_behind_quantised_activations_keep_dequantize_linear(tmp_path: Path) -> None:
    """Float8 weights export as Cast and Mul, except where the linear reads a dequantised
    activation (act_format): there onnxruntime's default QDQ rewrite would fold the Cast+Mul
    weight and quantise it to int8 (0.025 off); DequantizeLinear keeps the IR's numbers."""
    from scalefold.ir.parser import parse
    text = """
graph @m(%x: f32[B,64]) -> (f32[B,24]) {
  %0: f32[B,48] = linear(%x, #w1, #b1)
  %1: f32[B,48] = relu(%0)
  %2: f32[B,24] = linear(%1, #w2, #b2)
  return %2
}
#w1 = const f32[48,64] randn(seed=1, std=0.2)
#b1 = const f32[48] randn(seed=2, std=0.1)
#w2 = const f32[24,48] randn(seed=3, std=0.2)
#b2 = const f32[24] randn(seed=4, std=0.1)
"""
    cal = [(torch.randn(16, 64),) for _ in range(2)]
    g = quant_weights(parse(text), cal, format="fp8_e4m3", group=0, act_format="fp8_e4m3")
    m = to_onnx(g)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    assert ops["DequantizeLinear"] >= 3            # two activations, and the weights behind them
    x = torch.randn(5, 64)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])   # default session
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    want = run(g, x)[0]
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()) + 1e-6
