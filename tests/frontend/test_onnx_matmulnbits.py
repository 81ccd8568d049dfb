"""Import of onnxruntime's ``com.microsoft::MatMulNBits`` into ``qlinear``
(frontend/onnx_ops/matmulnbits.py).

- Round trip: quant_weights (int4 / int8, groups 32 / 64 / 128, sym or asym, K a multiple of
  the group or not, with or without bias) -> MatMulNBits (int4 through ``to_onnx``, which
  picks MatMulNBits for every 4-bit weight-only qlinear whose group's power-of-two part is
  >= 16; int8 packed here like onnxruntime's quantizer, since ``to_onnx`` exports 8-bit codes
  as DequantizeLinear + MatMul) -> ``from_onnx``: the qlinear nodes come back with the same
  codes, scales, zero points, dtypes and group, so the dequantised weights are bit for bit
  the original ones; interp, the C target and onnxruntime agree within fp tolerance.
- Hand-built nodes (random bytes, no / packed / float zero points, padded K, trivial g_idx,
  bias input) are compared with onnxruntime's own execution (accuracy_level 0: float A).
- Clear errors for what qlinear cannot hold: computed weights, bits other than 4 / 8, an
  act-order g_idx.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold
from harness import assert_close
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import FrontendError, UnsupportedOpError
from scalefold.ir.graph import Graph, Node
from scalefold.ir.ops.quant import dequant_weight
from scalefold.passes import PassManager
from scalefold.runtime.interp import run

TOL = 1e-5   # relative to max |expected|: fp accumulation order only


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _ort(model: onnx.ModelProto, x: torch.Tensor) -> torch.Tensor:
    sess = _session(model)
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


class _MLP(torch.nn.Module):
    def __init__(self, k: int, hidden: int, n: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(k, hidden, bias=bias)
        self.fc2 = torch.nn.Linear(hidden, n, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _quantized(model: torch.nn.Module, x: torch.Tensor, fmt: str, group: int, sym: bool) -> Graph:
    g = scalefold.from_torch(model.eval(), (x,))
    spec = f"quant_weights(format={fmt},group={group},sym={'true' if sym else 'false'})"
    return PassManager([spec]).run(g)


def _qlinears(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.op == "qlinear"]


def _opt(n: Node, i: int):
    return n.inputs[i] if len(n.inputs) > i else None


def _dequant(n: Node) -> torch.Tensor:
    z = _opt(n, 3)
    return dequant_weight(n.inputs[1].const, n.inputs[2].const, z.const if z is not None else None,
                          n.attrs["group"], False)


def _assert_same_qlinear(got: Node, want: Node, k: int) -> None:
    """Same codes, scales, zero points (values and dtypes) and group; Wd bit for bit."""
    assert got.attrs["act"] == "none"
    assert got.attrs["group"] == want.attrs["group"], (got.attrs["group"], want.attrs["group"])
    for i, what in ((1, "codes"), (2, "scale"), (3, "zero")):
        g, w = _opt(got, i), _opt(want, i)
        assert (g is None) == (w is None), what
        if w is not None:
            assert g.type.dtype is w.type.dtype, (what, g.type.dtype.name, w.type.dtype.name)
            assert torch.equal(g.const, w.const), what
    a, b = _dequant(got), _dequant(want)
    assert a.shape == (want.inputs[1].shape[0], k)
    assert torch.equal(a.view(torch.int32), b.view(torch.int32)), "dequantised weights differ"


def _compile_c(g: Graph, x: torch.Tensor) -> torch.Tensor:
    return scalefold.compile(g, target="c")(x)


# ---- int4: quant_weights -> to_onnx (MatMulNBits) -> from_onnx ------------------------------

@pytest.mark.parametrize("group,sym,k,bias", [
    (32, False, 80, True),     # K not a multiple of the group: B padded to whole blocks
    (64, True, 128, False),    # signed i4 codes: exported +8 without zero points
    (128, False, 96, True),    # group >= K: one scale per row repeated over 32-blocks
    (64, False, 100, False),   # K = 100: last group short, hidden 48 < group
])
def test_int4_roundtrip_through_to_onnx(group: int, sym: bool, k: int, bias: bool) -> None:
    torch.manual_seed(group + k)
    x = torch.randn(2, 3, k)
    q = _quantized(_MLP(k, 48, 16, bias), x, "int4", group, sym)
    proto = scalefold.to_onnx(q)
    assert [n.op_type for n in proto.graph.node].count("MatMulNBits") == 2
    back = scalefold.from_onnx(proto)
    want, got = _qlinears(q), _qlinears(back)
    assert len(got) == 2
    for a, b, kk in zip(got, want, (k, 48)):
        _assert_same_qlinear(a, b, kk)
    # The ONNX node names stay on the qlinears.
    names = {n.name for n in proto.graph.node if n.op_type == "MatMulNBits"}
    assert {n.name for n in got} == names
    ref = run(q, x)[0]
    y = run(back, x)[0]
    assert_close(y, ref, rtol=TOL, rel_to_scale=True, what="imported interp")
    assert_close(_ort(proto, x), y, rtol=TOL, rel_to_scale=True, what="onnxruntime vs imported")
    assert_close(_compile_c(back, x), ref, rtol=TOL, rel_to_scale=True, what="imported, C target")


def test_int4_per_channel_becomes_one_group_over_k() -> None:
    """Per-channel scales are exported repeated over 32-blocks; merging the identical blocks
    gives one group over all of K (the kernels' equivalent of group 0), the same Wd."""
    torch.manual_seed(1)
    x = torch.randn(4, 72)
    q = _quantized(torch.nn.Linear(72, 24), x, "int4", 0, True)
    (want,) = _qlinears(q)
    assert want.attrs["group"] == 0
    back = scalefold.from_onnx(scalefold.to_onnx(q))
    (got,) = _qlinears(back)
    assert got.attrs["group"] == 72 and tuple(got.inputs[2].shape) == (24, 1)
    assert torch.equal(got.inputs[1].const, want.inputs[1].const) and got.inputs[1].type.dtype is dt.i4
    assert torch.equal(_dequant(got), _dequant(want))
    assert_close(run(back, x)[0], run(q, x)[0], rtol=TOL, rel_to_scale=True)


# ---- int8: quant_weights -> MatMulNBits bits=8 packed here -> from_onnx -------------------

def _pack_rows(v: np.ndarray, bits: int) -> np.ndarray:
    """Rows of unsigned ``bits``-bit values packed into bytes, low bits first."""
    per = 8 // bits
    pad = (-v.shape[1]) % per
    v = np.pad(v, ((0, 0), (0, pad))).astype(np.uint8)
    out = np.zeros((v.shape[0], v.shape[1] // per), np.uint8)
    for j in range(per):
        out |= v[:, j::per] << (bits * j)
    return out


def _nbits_from_qlinear(n: Node, bits: int, x_shape: list[int], name: str = "fc") -> onnx.ModelProto:
    """A one-node MatMulNBits model holding qlinear ``n`` (bias as input 5), packed as
    onnxruntime's quantizer does; groups wider than 128 (or per channel) repeat their
    parameters over 32-blocks, as ``to_onnx`` does."""
    codes, scale, zero = n.inputs[1].const, n.inputs[2].const, _opt(n, 3)
    nn_, k = codes.shape
    group = n.attrs["group"]
    block = group if 0 < group < k and group <= 128 else 32
    nb = -(-k // block)
    src = torch.arange(nb) * block // group if 0 < group < k else torch.zeros(nb, dtype=torch.long)
    per_block = lambda p: (p if p.dim() == 2 else p.unsqueeze(1))[:, src]   # noqa: E731
    off = 1 << (bits - 1)
    c = codes.to(torch.int64) + (off if zero is None else 0)
    zp = per_block(zero.const.to(torch.int64)) if zero is not None else torch.full((nn_, nb), off)
    c = torch.cat([c, zp[:, -1:].expand(nn_, nb * block - k)], dim=1)   # padding dequantises to 0
    blob = block * bits // 8
    B = _pack_rows(c.numpy(), bits).reshape(nn_, nb, blob)
    inits = [numpy_helper.from_array(B, "W.B"),
             numpy_helper.from_array(per_block(scale).float().reshape(-1).numpy(), "W.scales")]
    ins = ["x", "W.B", "W.scales", "", "", ""]
    if zero is not None:
        inits.append(numpy_helper.from_array(_pack_rows(zp.numpy(), bits).reshape(-1), "W.zp"))
        ins[3] = "W.zp"
    bias = _opt(n, 4)
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.const.float().numpy(), "W.bias"))
        ins[5] = "W.bias"
    while not ins[-1]:
        ins.pop()
    node = helper.make_node("MatMulNBits", ins, ["y"], name=name, domain="com.microsoft", K=k, N=nn_,
                            bits=bits, block_size=block, accuracy_level=0)
    return _model([node], x_shape, nn_, inits)


def _model(nodes: list[onnx.NodeProto], x_shape: list[int], n: int, inits: list[onnx.TensorProto],
           extra_inputs: list[onnx.ValueInfoProto] = ()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                                           *extra_inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, x_shape[:-1] + [n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21),
                                               helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("group,sym,k,bias", [
    (32, False, 80, True),
    (64, True, 128, True),
    (128, False, 200, False),   # two groups, the last one short
    (128, True, 96, False),     # group >= K
])
def test_int8_roundtrip_via_matmulnbits(group: int, sym: bool, k: int, bias: bool) -> None:
    torch.manual_seed(group * 3 + k)
    x = torch.randn(5, k)
    q = _quantized(torch.nn.Linear(k, 24, bias=bias), x, "int8", group, sym)
    (want,) = _qlinears(q)
    assert want.inputs[1].type.dtype is (dt.i8 if sym else dt.u8)
    proto = _nbits_from_qlinear(want, 8, [5, k])
    back = scalefold.from_onnx(proto)
    (got,) = _qlinears(back)
    assert got.name == "fc"
    _assert_same_qlinear(got, want, k)
    if bias:
        assert torch.equal(got.inputs[4].const, want.inputs[4].const)
    ref = run(q, x)[0]
    y = run(back, x)[0]
    assert_close(y, ref, rtol=TOL, rel_to_scale=True, what="imported interp")
    assert_close(_ort(proto, x), y, rtol=TOL, rel_to_scale=True, what="onnxruntime vs imported")
    if group == 32:   # one C build is enough here (the 8-bit group-wise form runs the reference)
        assert_close(_compile_c(back, x), ref, rtol=TOL, rel_to_scale=True, what="imported, C target")


# ---- hand-built nodes against onnxruntime --------------------------------------------------

def _random_node(bits: int, k: int, n: int, block: int, zp: str = "none", seed: int = 0,
                 g_idx: np.ndarray | None = None, bias: bool = False, name: str = "mnb"
                 ) -> tuple[onnx.ModelProto, torch.Tensor]:
    """A MatMulNBits model with random B bytes (padding included) and random parameters;
    ``zp`` is "none", "u8" (packed codes) or "float" (the scales' type, not packed)."""
    rng = np.random.default_rng(seed)
    nb = -(-k // block)
    blob = block * bits // 8
    inits = [numpy_helper.from_array(rng.integers(0, 256, (n, nb, blob), dtype=np.uint8), "B"),
             numpy_helper.from_array((rng.random(n * nb) * 0.1 + 0.01).astype(np.float32), "scales")]
    ins = ["x", "B", "scales", "", "", ""]
    if zp == "u8":
        z = rng.integers(0, 1 << bits, (n, nb))
        inits.append(numpy_helper.from_array(_pack_rows(z, bits).reshape(-1), "zp"))
        ins[3] = "zp"
    elif zp == "float":
        inits.append(numpy_helper.from_array((rng.random(n * nb) * (1 << bits)).astype(np.float32), "zp"))
        ins[3] = "zp"
    if g_idx is not None:
        inits.append(numpy_helper.from_array(g_idx.astype(np.int32), "g_idx"))
        ins[4] = "g_idx"
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias"))
        ins[5] = "bias"
    while not ins[-1]:
        ins.pop()
    node = helper.make_node("MatMulNBits", ins, ["y"], name=name, domain="com.microsoft", K=k, N=n,
                            bits=bits, block_size=block, accuracy_level=0)
    x = torch.from_numpy(rng.standard_normal((3, k)).astype(np.float32))
    return _model([node], [3, k], n, inits), x


@pytest.mark.parametrize("bits,k,block,zp,bias", [
    (4, 72, 32, "none", False),    # default zero 8 -> signed i4 codes; K padded in B
    (8, 72, 16, "none", True),     # default zero 128 -> signed i8 codes; bias input
    (4, 100, 16, "u8", False),     # 7 blocks: the last zero-point byte holds one nibble
    (8, 64, 32, "u8", True),
    (4, 64, 16, "float", False),   # float zero points: (q - zp) * scale, zp fractional
    (4, 48, 32, "float", True),    # (onnxruntime's CPU kernel has no 8-bit float zero points)
])
def test_hand_built_matches_onnxruntime(bits: int, k: int, block: int, zp: str, bias: bool) -> None:
    model, x = _random_node(bits, k, 12, block, zp, seed=bits * 1000 + k, bias=bias)
    g = scalefold.from_onnx(model)
    (ql,) = _qlinears(g)
    assert ql.name == "mnb" and len(g.nodes) == 1
    want_w = {("none", 4): dt.i4, ("none", 8): dt.i8}.get((zp, bits), dt.u4 if bits == 4 else dt.u8)
    assert ql.inputs[1].type.dtype is want_w and tuple(ql.inputs[1].shape) == (12, k)
    z = _opt(ql, 3)
    assert (z is None) == (zp == "none")
    if zp == "float":
        assert z.type.dtype is dt.f32
    elif zp == "u8":
        assert z.type.dtype is want_w
    assert (_opt(ql, 4) is not None) == bias
    assert_close(run(g, x)[0], _ort(model, x), rtol=TOL, rel_to_scale=True, what="interp vs onnxruntime")


def test_f16_activations_and_symbolic_batch_match_onnxruntime() -> None:
    """f16 A, scales and bias (kept f16 in the IR), a [batch, seq, K] input with named dims."""
    rng = np.random.default_rng(2)
    k, n, block, nb = 80, 12, 32, 3
    inits = [numpy_helper.from_array(rng.integers(0, 256, (n, nb, 16), dtype=np.uint8), "B"),
             numpy_helper.from_array((rng.random(n * nb) * 0.05 + 0.01).astype(np.float16), "s"),
             numpy_helper.from_array(rng.integers(0, 256, n * 2, dtype=np.uint8), "zp"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float16), "b")]
    node = helper.make_node("MatMulNBits", ["x", "B", "s", "zp", "", "b"], ["y"], name="half",
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", "seq", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", "seq", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    g = scalefold.from_onnx(model)
    (ql,) = _qlinears(g)
    assert ql.inputs[2].type.dtype is dt.f16 and ql.inputs[0].type.rank == 3
    x = torch.randn(2, 3, k).half()
    assert_close(run(g, x)[0], _ort(model, x), rel_to_scale=True)


def test_8bit_float_zero_points_follow_the_formula() -> None:
    """onnxruntime's CPU kernel refuses 8-bit weights with float zero points; the import
    applies the op's formula (q - zp) * scale, as for 4 bits, checked here in float64."""
    k, n, block = 48, 6, 16
    model, x = _random_node(8, k, n, block, "float", seed=5, bias=True)
    arr = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q = arr["B"].reshape(n, -1)[:, :k].astype(np.float64)
    rep = lambda p: np.repeat(p.reshape(n, -1).astype(np.float64), block, axis=1)[:, :k]   # noqa: E731
    w = (q - rep(arr["zp"])) * rep(arr["scales"])
    want = torch.from_numpy(x.numpy().astype(np.float64) @ w.T + arr["bias"])
    g = scalefold.from_onnx(model)
    assert_close(run(g, x)[0], want.float(), rtol=TOL, rel_to_scale=True)


def test_default_zero_point_codes_are_the_stored_bytes_minus_8() -> None:
    """Without zero_points, code q means q - 8: the imported i4 codes are B's nibbles - 8."""
    model, _ = _random_node(4, 40, 3, 16, "none", seed=7)
    B = numpy_helper.to_array(model.graph.initializer[0]).reshape(3, -1).astype(np.int64)
    nibbles = np.stack([B & 15, B >> 4], axis=-1).reshape(3, -1)[:, :40]
    (ql,) = _qlinears(scalefold.from_onnx(model))
    assert np.array_equal(ql.inputs[1].const.numpy().astype(np.int64), nibbles - 8)


@pytest.mark.parametrize("zp", ["none", "u8", "float"])
def test_trivial_g_idx_is_accepted(zp: str) -> None:
    """g_idx = k // block_size restates the default grouping: the import equals the node
    without it. (onnxruntime 1.32's CPU g_idx path drops uint8 zero points, using 8 instead,
    so the comparison is with onnxruntime running the node without g_idx.)"""
    k, block = 64, 32
    model, x = _random_node(4, k, 8, block, zp, seed=3, g_idx=np.arange(k) // block)
    plain, _ = _random_node(4, k, 8, block, zp, seed=3)
    y = run(scalefold.from_onnx(model), x)[0]
    assert torch.equal(y, run(scalefold.from_onnx(plain), x)[0])
    assert_close(y, _ort(plain, x), rtol=TOL, rel_to_scale=True)
    if zp != "u8":
        assert_close(y, _ort(model, x), rtol=TOL, rel_to_scale=True)


def test_c_target_matches_onnxruntime_on_float_zero_points() -> None:
    model, x = _random_node(4, 96, 16, 32, "float", seed=11, bias=True)
    g = scalefold.from_onnx(model)
    assert_close(_compile_c(g, x), _ort(model, x), rtol=TOL, rel_to_scale=True)


# ---- clear errors ----------------------------------------------------------------------------

def test_non_constant_b_is_refused() -> None:
    k, n, block = 64, 8, 32
    node = helper.make_node("MatMulNBits", ["x", "Bin", "scales"], ["y"], name="dyn",
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    scales = numpy_helper.from_array(np.ones(n * 2, np.float32), "scales")
    bin_ = helper.make_tensor_value_info("Bin", TensorProto.UINT8, [n, 2, 16])
    with pytest.raises(FrontendError, match=r"node 'dyn' \(MatMulNBits\).*input 1 \(B, 'Bin'\) must be a "
                                            r"constant"):
        scalefold.from_onnx(_model([node], [3, k], n, [scales], [bin_]))


@pytest.mark.parametrize("bits", [2, 3])
def test_unsupported_bits_are_refused(bits: int) -> None:
    k, n, block = 64, 8, 32
    node = helper.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], name="lowbit",
                            domain="com.microsoft", K=k, N=n, bits=bits, block_size=block)
    inits = [numpy_helper.from_array(np.zeros((n, 2, block * bits // 8), np.uint8), "B"),
             numpy_helper.from_array(np.ones(n * 2, np.float32), "scales")]
    with pytest.raises(UnsupportedOpError, match=rf"node 'lowbit' \(MatMulNBits\).*MatMulNBits with "
                                                 rf"bits={bits} \(only 4 and 8"):
        scalefold.from_onnx(_model([node], [3, k], n, inits))


def test_act_order_g_idx_is_refused() -> None:
    k, block = 64, 32
    perm = np.random.default_rng(0).permutation(k) // block   # each group still has 32 members
    model, _ = _random_node(4, k, 8, block, "none", g_idx=perm, name="gptq_act_order")
    with pytest.raises(UnsupportedOpError, match=r"node 'gptq_act_order' .*non-trivial g_idx"):
        scalefold.from_onnx(model)


def test_bad_block_size_is_refused() -> None:
    model, _ = _random_node(4, 64, 8, 32, "none", name="odd")
    for a in model.graph.node[0].attribute:
        if a.name == "block_size":
            a.i = 24
    with pytest.raises(FrontendError, match=r"node 'odd' .*block_size must be a power of two >= 16"):
        scalefold.from_onnx(model)
