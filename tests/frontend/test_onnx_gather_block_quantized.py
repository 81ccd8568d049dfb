"""Import of onnxruntime's ``com.microsoft::GatherBlockQuantized`` (frontend/onnx_ops/contrib_gbq.py).

Every case runs the same one-node (or small) graph in onnxruntime 1.32 (CPU) and in scalefold;
the dequantised rows must be bit-identical (``scale * (q - zp)`` is one f32 product, rounded
once to f16 for f16 scales, in both):

- packed uint8 data: 4-bit (blocks 16 / 32 / 64 / 128, with and without packed zero points,
  an odd number of blocks so the zero points' last byte is half padding), 8-bit and 2-bit;
- int4 / uint4 data with every axis combination onnxruntime accepts (also gather_axis ==
  quantize_axis, and rank 3), with and without zero points;
- float8 e4m3fn / float4 e2m1 data (block_size 0, a broadcast per-tensor scale);
- f16 scales; int32 / int64 indices of rank 0 / 1 / 2, negative and out-of-range ones
  (onnxruntime gives zeros); symbolic index shapes run at two sizes;
- a tied embedding (the lm_head's MatMulNBits weight reshaped into the embedding table) and
  tables written by onnxruntime's own MatMulNBitsQuantizer;
- the C target, ``to_onnx`` back into onnxruntime, and clear errors for refused forms.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto as TP
from onnx import helper

import scalefold
from scalefold.ir.errors import FrontendError, UnsupportedOpError
from scalefold.runtime.interp import run

NAME = "/model/embed_tokens/GatherBlockQuantized"
RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _model(data: onnx.TensorProto, scales: np.ndarray, zp: onnx.TensorProto | None = None,
           idx_shape: list[int | str] | None = None, idx_type: int = TP.INT64,
           **attrs: int) -> onnx.ModelProto:
    """One GatherBlockQuantized node: data / scales / zero points as initializers, indices
    the graph input ``ids``."""
    st = TP.FLOAT16 if scales.dtype == np.float16 else TP.FLOAT
    inits = [data, helper.make_tensor("scales", st, scales.shape, scales.tobytes(), raw=True)]
    ins = [data.name, "ids", "scales"]
    if zp is not None:
        inits.append(zp)
        ins.append(zp.name)
    node = helper.make_node("GatherBlockQuantized", ins, ["y"], name=NAME,
                            domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node], "gbq", [helper.make_tensor_value_info("ids", idx_type, idx_shape)],
        [helper.make_tensor_value_info("y", st, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _u8(name: str, a: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TP.UINT8, a.shape, a.tobytes(), raw=True)


def _int4(name: str, a: np.ndarray, signed: bool) -> onnx.TensorProto:
    return helper.make_tensor(name, TP.INT4 if signed else TP.UINT4, a.shape, a.ravel().tolist())


def _scales(shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    # a spread of magnitudes and signs, so that rounding and sign handling are both exercised
    return (RNG.standard_normal(shape) * np.exp2(RNG.integers(-6, 3, size=shape))).astype(dtype)


def _ort(model: onnx.ModelProto, *feeds: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, feeds)))[0]


def _interp(model: onnx.ModelProto, *feeds: np.ndarray) -> np.ndarray:
    return run(scalefold.from_onnx(model), *[torch.from_numpy(f) for f in feeds])[0].numpy()


def _same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    np.testing.assert_array_equal(got, want)


def _check(model: onnx.ModelProto, *feeds: np.ndarray) -> np.ndarray:
    want = _ort(model, *feeds)
    _same(_interp(model, *feeds), want)
    return want


def _ids(n: int, shape: tuple[int, ...], dtype: type = np.int64) -> np.ndarray:
    return RNG.integers(-n, n, size=shape).astype(dtype)


# ---- packed uint8 (onnxruntime-genai's builder) ---------------------------------------------

@pytest.mark.parametrize("block", [16, 32, 64, 128])
@pytest.mark.parametrize("with_zp", [False, True])
def test_uint8_4bit(block: int, with_zp: bool) -> None:
    v, d = 37, 3 * block                        # three blocks: the zero points' last byte is half used
    data = RNG.integers(0, 256, size=(v, d // 2), dtype=np.uint8)
    zp = _u8("zp", RNG.integers(0, 256, size=(v, 2), dtype=np.uint8)) if with_zp else None
    m = _model(_u8("data", data), _scales((v, 3)), zp, ["batch", "seq"], bits=4,
               block_size=block, gather_axis=0, quantize_axis=1)
    y = _check(m, _ids(v, (2, 5)))
    assert y.shape == (2, 5, d)


def test_uint8_4bit_graph_keeps_codes_compact() -> None:
    v, d = 512, 256
    m = _model(_u8("data", RNG.integers(0, 256, size=(v, d // 2), dtype=np.uint8)),
               _scales((v, d // 32)), None, ["n"], bits=4, block_size=32)
    g = scalefold.from_onnx(m)
    consts = {str(c.type.dtype): tuple(c.type.shape) for n in g.nodes for c in n.inputs
              if c is not None and c.is_const and c.type.numel() > 1}
    assert consts.get("i4") == (v, d)          # the codes, 4-bit; no float table
    assert all(dt != "f32" or s != (v, d) for dt, s in consts.items())
    assert [n.op for n in g.nodes].count("dequantize") == 1


@pytest.mark.parametrize("bits", [8, 2])
@pytest.mark.parametrize("with_zp", [False, True])
def test_uint8_8bit_and_2bit(bits: int, with_zp: bool) -> None:
    v, d, block = 19, 160, 32                  # five blocks
    per = 8 // bits
    data = RNG.integers(0, 256, size=(v, d // per), dtype=np.uint8)
    zp = _u8("zp", RNG.integers(0, 256, size=(v, -(-5 // per)), dtype=np.uint8)) if with_zp else None
    m = _model(_u8("data", data), _scales((v, 5)), zp, [3, 4], bits=bits, block_size=block)
    _check(m, _ids(v, (3, 4)))


def test_uint8_rank3_table() -> None:
    data = RNG.integers(0, 256, size=(6, 3, 16), dtype=np.uint8)   # [V, 3, 32] codes
    zp = _u8("zp", RNG.integers(0, 256, size=(6, 3, 1), dtype=np.uint8))
    m = _model(_u8("data", data), _scales((6, 3, 2)), zp, [4], bits=4, block_size=16,
               gather_axis=0, quantize_axis=-1)
    _check(m, _ids(6, (4,)))


# ---- int4 / uint4 data (onnxruntime's MatMulNBitsQuantizer) ---------------------------------

@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("with_zp", [False, True])
@pytest.mark.parametrize("shape,g,q", [((40, 48), 0, 1), ((48, 40), 1, 0), ((40, 48), 0, 0),
                                       ((40, 48), 1, 1), ((3, 10, 48), 1, 2), ((48, 3, 5), 2, 0),
                                       ((4, 48, 6), -1, -2)])
def test_int4_axes(signed: bool, with_zp: bool, shape: tuple[int, ...], g: int, q: int) -> None:
    lo, hi = (-8, 8) if signed else (0, 16)
    block = 16
    sshape = list(shape)
    sshape[q] = -(-shape[q] // block)
    zp = _int4("zp", RNG.integers(lo, hi, size=sshape), signed) if with_zp else None
    m = _model(_int4("data", RNG.integers(lo, hi, size=shape), signed), _scales(tuple(sshape)),
               zp, [2, 3], gather_axis=g, quantize_axis=q, block_size=block)
    _check(m, _ids(shape[g], (2, 3)))


def test_int4_quantize_axis_not_multiple_of_block() -> None:
    m = _model(_int4("data", RNG.integers(-8, 8, size=(20, 50)), True), _scales((20, 2)),
               None, [7], block_size=32)     # 50 = 32 + a short block of 18
    _check(m, _ids(20, (7,)))


# ---- float codes ----------------------------------------------------------------------------

def test_float8_per_tensor_scale_block0() -> None:
    codes = RNG.integers(0, 256, size=(12, 40), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0         # no NaN codes
    data = helper.make_tensor("data", TP.FLOAT8E4M3FN, codes.shape, codes.tobytes(), raw=True)
    m = _model(data, _scales((1, 1)), None, [5], block_size=0, gather_axis=0, quantize_axis=1)
    _check(m, _ids(12, (5,)))


def test_float4_blocked() -> None:
    codes = RNG.integers(0, 16, size=(10, 64), dtype=np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    data = helper.make_tensor("data", TP.FLOAT4E2M1, codes.shape, packed.tobytes(), raw=True)
    m = _model(data, _scales((10, 2)), None, [2, 2], block_size=32)
    _check(m, _ids(10, (2, 2)))


# ---- scales, indices ------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["uint8", "int4"])
def test_f16_scales(form: str) -> None:
    v, d = 30, 128
    if form == "uint8":
        data = _u8("data", RNG.integers(0, 256, size=(v, d // 2), dtype=np.uint8))
        zp = _u8("zp", RNG.integers(0, 256, size=(v, 1), dtype=np.uint8))
    else:
        data = _int4("data", RNG.integers(-8, 8, size=(v, d)), True)
        zp = _int4("zp", RNG.integers(-8, 8, size=(v, 2)), True)
    m = _model(data, _scales((v, 2), np.float16), zp, ["b", "s"], block_size=64)
    assert _check(m, _ids(v, (3, 2))).dtype == np.float16


@pytest.mark.parametrize("shape", [(), (6,), (2, 3)])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_index_ranks_and_types(shape: tuple[int, ...], itype: type) -> None:
    v = 25
    m = _model(_u8("data", RNG.integers(0, 256, size=(v, 16), dtype=np.uint8)), _scales((v, 2)),
               None, list(shape), TP.INT32 if itype is np.int32 else TP.INT64, block_size=16)
    _check(m, _ids(v, shape, itype))


@pytest.mark.parametrize("g,q", [(0, 1), (1, 0), (0, 0)])
def test_out_of_range_indices_give_zeros(g: int, q: int) -> None:
    shape = (20, 32)
    sshape = [20, 32]
    sshape[q] = -(-sshape[q] // 16)
    m = _model(_int4("data", RNG.integers(-8, 8, size=shape), True), _scales(tuple(sshape)),
               None, [6], gather_axis=g, quantize_axis=q, block_size=16)
    ids = np.array([0, shape[g], -shape[g] - 1, -1, 1000, 3], dtype=np.int64)
    y = _check(m, ids)
    assert not y.take([1, 2, 4], axis=g).any()


def test_dynamic_index_shapes_interp_and_c() -> None:
    v, d = 64, 128
    data = RNG.integers(0, 256, size=(v, d // 2), dtype=np.uint8)
    m = _model(_u8("data", data), _scales((v, 4), np.float16),
               _u8("zp", RNG.integers(0, 256, size=(v, 2), dtype=np.uint8)), ["batch", "seq"],
               block_size=32)
    cm = scalefold.compile(m, target="c")
    for shape in [(1, 1), (3, 7)]:
        ids = _ids(v, shape)
        want = _check(m, ids)
        _same(cm(torch.from_numpy(ids)).numpy(), want)


@pytest.mark.parametrize("g,q", [(1, 0), (0, 0)])
def test_c_target_int4(g: int, q: int) -> None:
    m = _model(_int4("data", RNG.integers(0, 16, size=(32, 48)), False), _scales((2, 48)
               if q == 0 else (32, 3)), _int4("zp", RNG.integers(0, 16, size=(2, 48) if q == 0
                                                                  else (32, 3)), False),
               [2, 3], gather_axis=g, quantize_axis=q, block_size=16)
    ids = _ids(48 if g == 1 else 32, (2, 3))
    ids[0, 0] = 99                              # out of range: zeros
    _same(scalefold.compile(m, target="c")(torch.from_numpy(ids)).numpy(), _ort(m, ids))


# ---- to_onnx --------------------------------------------------------------------------------

def _roundtrip(m: onnx.ModelProto, ids: np.ndarray) -> None:
    proto = scalefold.to_onnx(scalefold.from_onnx(m))
    _same(_ort(proto, ids), _ort(m, ids))


@pytest.mark.parametrize("with_zp", [False, True])
def test_to_onnx_8bit(with_zp: bool) -> None:
    v = 21
    zp = _u8("zp", RNG.integers(0, 256, size=(v, 2), dtype=np.uint8)) if with_zp else None
    m = _model(_u8("data", RNG.integers(0, 256, size=(v, 64), dtype=np.uint8)), _scales((v, 2)),
               zp, ["b", "s"], bits=8, block_size=32)
    _roundtrip(m, _ids(v, (2, 3)))


def test_to_onnx_4bit() -> None:
    """ONNX's Gather takes no 4-bit types: the export gathers the codes widened to 8 bits."""
    v = 21
    m = _model(_u8("data", RNG.integers(0, 256, size=(v, 32), dtype=np.uint8)), _scales((v, 2)),
               _u8("zp", RNG.integers(0, 256, size=(v, 1), dtype=np.uint8)), ["b", "s"],
               block_size=32)
    _roundtrip(m, _ids(v, (2, 3)))


# ---- models -------------------------------------------------------------------------------

@pytest.mark.parametrize("fold", [True, False])
def test_tied_embedding_with_matmulnbits_lm_head(fold: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The builder's tied form: the embedding table is the lm_head's MatMulNBits weight
    [V, n_blocks, blob] reshaped to [V, D / 2], with the same scales and zero points. A real
    vocabulary's table is past the importer's folding limit, so the Reshape stays a node
    (``fold=False`` lowers the limit to get that here) and the converter looks through it."""
    if not fold:
        monkeypatch.setattr("scalefold.frontend.onnx_ctx.FOLD_LIMIT", 16)
    v, d, block = 48, 64, 32
    nb = d // block
    b = RNG.integers(0, 256, size=(v, nb, block // 2), dtype=np.uint8)
    scales = _scales((v, nb))
    zp = RNG.integers(0, 256, size=(v, 1), dtype=np.uint8)
    inits = [_u8("lm_head.weight_Q4", b), helper.make_tensor("lm_head.scales", TP.FLOAT, (v, nb),
                                                              scales.tobytes(), raw=True),
             _u8("lm_head.zp", zp),
             helper.make_tensor("flat", TP.INT64, [2], [v, d // 2])]
    nodes = [
        helper.make_node("Reshape", ["lm_head.weight_Q4", "flat"], ["table"],
                         name="/model/embed_tokens/Reshape"),
        helper.make_node("GatherBlockQuantized", ["table", "input_ids", "lm_head.scales", "lm_head.zp"],
                         ["emb"], name=NAME, domain="com.microsoft", bits=4, block_size=block,
                         gather_axis=0, quantize_axis=1),
        helper.make_node("MatMulNBits", ["emb", "lm_head.weight_Q4", "lm_head.scales", "lm_head.zp"],
                         ["logits"], name="/lm_head/MatMulNBits", domain="com.microsoft", K=d, N=v,
                         bits=4, block_size=block, accuracy_level=0),
    ]
    graph = helper.make_graph(
        nodes, "tied", [helper.make_tensor_value_info("input_ids", TP.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("emb", TP.FLOAT, None),
         helper.make_tensor_value_info("logits", TP.FLOAT, None)], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                helper.make_opsetid("com.microsoft", 1)])
    ids = _ids(v, (2, 5))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    emb, logits = sess.run(None, {"input_ids": ids})
    g = scalefold.from_onnx(m)
    got_emb, got_logits = run(g, torch.from_numpy(ids))
    _same(got_emb.numpy(), emb)
    np.testing.assert_allclose(got_logits.numpy(), logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    # one codes tensor for both readers of the shared initializer, not an unpacked copy each
    codes = [c for c in g.constants() if c.dtype.name in ("i4", "u4") and tuple(c.shape) == (v, d)]
    assert len(codes) == 1, [(c.name, c.type) for c in codes]
    readers = {n.op for n, _ in codes[0].uses}
    assert readers == {"gather", "qlinear"}, readers


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("sym", [True, False])
def test_onnxruntime_quantizer_output(axis: int, sym: bool) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)
    w = RNG.standard_normal((40, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["y"], name="/model/embed_tokens/Gather")], "g",
        [helper.make_tensor_value_info("ids", TP.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("y", TP.FLOAT, None)],
        initializer=[helper.make_tensor("emb", TP.FLOAT, w.shape, w.tobytes(), raw=True)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=sym, op_types_to_quantize=("Gather",),
                                       quant_axes=(("Gather", axis),))
    qz = MatMulNBitsQuantizer(m, algo_config=cfg)
    qz.process()
    qm = qz.model.model
    assert [n.op_type for n in qm.graph.node] == ["GatherBlockQuantized"]
    ids = _ids(40, (2, 3))
    y = _check(qm, ids)
    np.testing.assert_allclose(y, w[ids], atol=np.abs(w).max() / 4)   # a 4-bit copy of the rows


# ---- refused forms --------------------------------------------------------------------------

def test_refusals() -> None:
    data = _u8("data", RNG.integers(0, 256, size=(8, 16), dtype=np.uint8))
    with pytest.raises(UnsupportedOpError, match="GatherBlockQuantized.*bits=3"):
        scalefold.from_onnx(_model(data, _scales((8, 2)), None, [2], bits=3, block_size=16))
    with pytest.raises(UnsupportedOpError, match="gather_axis=1"):
        scalefold.from_onnx(_model(data, _scales((1, 16)), None, [2], gather_axis=1,
                                   quantize_axis=0, block_size=16))
    with pytest.raises(FrontendError, match="block_size must be a power of two"):
        scalefold.from_onnx(_model(data, _scales((8, 4)), None, [2], block_size=8))
    with pytest.raises(FrontendError, match="scales shape"):
        scalefold.from_onnx(_model(data, _scales((8, 3)), None, [2], block_size=16))
    bf = helper.make_tensor("scales", TP.BFLOAT16, (8, 2), np.zeros(16, np.uint16).tobytes(), raw=True)
    m = _model(data, _scales((8, 2)), None, [2], block_size=16)
    m.graph.initializer[1].CopyFrom(bf)
    with pytest.raises(UnsupportedOpError, match="bf16 scales"):
        scalefold.from_onnx(m)
    # a table computed at run time
    m = _model(data, _scales((8, 2)), None, [2], block_size=16)
    m.graph.input.append(helper.make_tensor_value_info("data", TP.UINT8, [8, 16]))
    del m.graph.initializer[0]
    with pytest.raises(FrontendError, match=f"'{NAME}'.*must be a constant"):
        scalefold.from_onnx(m)


@pytest.mark.parametrize("shape,g", [((40, 48), 1), ((3, 10, 48), 2), ((40, 48), 0)])
def test_int4_scalar_index_along_the_quantized_axis(shape: tuple[int, ...], g: int) -> None:
    """A 0-d index removes the gathered axis; when it is the quantised (and last) axis the
    element-wise scales must sit on an axis that is still there."""
    block = 16
    sshape = list(shape)
    sshape[g] = -(-shape[g] // block)
    m = _model(_int4("data", RNG.integers(-8, 8, size=shape), True), _scales(tuple(sshape)),
               None, [], gather_axis=g, quantize_axis=g, block_size=block)
    _check(m, np.array(shape[g] - 3, dtype=np.int64))
