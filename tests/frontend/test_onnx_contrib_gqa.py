"""Import of onnxruntime's ``com.microsoft::GroupQueryAttention`` (frontend/onnx_ops/contrib_gqa.py).

Every case runs in onnxruntime 1.32 (CPUExecutionProvider) and in scalefold (the reference
interpreter, and the C target where noted); the attention output *and* present_key /
present_value must agree (f32: 1e-5 relative to the largest expected magnitude; f16 at f16's
tolerance, as onnxruntime accumulates in f32 and rounds once).

- prompt then decode steps (the decode's past is onnxruntime's present of the prompt), separate
  and packed QKV, GQA ratios 1 / 2 / 4, rotary off / halves / interleaved / partial;
- per-batch ``seqlens_k``: right-padded prompts, ragged decode rows, a past buffer longer than
  the valid tokens (rows past the valid ones come back zeroed, as onnxruntime clears them);
- local_window_size, softcap, smooth_softmax, head_sink, causal=0, scale, attention_bias;
- sliding_window_cache=1 (window-sized caches, eviction by onnxruntime's L(T) rule, chunked
  steps, ragged decode rows, stale / NaN rows past the resident ones), compared on the rows
  onnxruntime specifies;
- symbolic batch / sequence / past / total dims with seqlens_k and total_sequence_length
  computed from an attention mask as onnxruntime-genai's model builder writes them, one
  compiled model serving prompt and decode shapes;
- a tiny model-builder-style decoder layer: MatMulNBits q/k/v/o (int4) + GroupQueryAttention
  + SkipSimplifiedLayerNormalization;
- refused forms raise UnsupportedOpError naming the node.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold
from harness import assert_close
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import UnsupportedOpError
from scalefold.runtime.interp import run

MS = "com.microsoft"
RTOL = 1e-5          # f32: accumulation order only
RTOL_F16 = 2e-3      # f16 results: one rounding apart at most
D = 16               # head size (onnxruntime wants a multiple of 16 with rotary)
MAXLEN = 32          # rows of the cos / sin caches


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _check(got: Sequence[torch.Tensor], want: Sequence[np.ndarray], rtol: float, what: str) -> float:
    """Assert ``got`` matches ``want`` output by output; return the largest relative error."""
    assert len(got) == len(want)
    worst = 0.0
    for i, (a, w) in enumerate(zip(got, want)):
        wt = torch.from_numpy(np.asarray(w))
        assert_close(a, wt, rtol=rtol, rel_to_scale=True, what=f"{what} output {i}")
        scale = float(wt.double().abs().max()) or 1.0
        worst = max(worst, float((a.double() - wt.double()).abs().max()) / scale)
    return worst


def _compare(model: onnx.ModelProto, steps: Sequence[dict[str, np.ndarray]], *, c: bool = True,
             rtol: float = RTOL) -> list[list[np.ndarray]]:
    """Run every feed dict of ``steps`` in onnxruntime and scalefold (interp; C unless ``c`` is
    False, one compiled model for all steps) and assert they agree; return onnxruntime's outputs."""
    g = from_onnx(model)
    cm = scalefold.compile(model, target="c") if c else None
    wants = []
    for feeds in steps:
        want = _ort(model, feeds)
        ins = [torch.from_numpy(np.ascontiguousarray(feeds[v.name])) for v in g.inputs]
        _check(run(g, *ins), want, rtol, "interp")
        if cm is not None:
            outs = cm(*ins)
            _check(list(outs) if isinstance(outs, tuple) else [outs], want, rtol, "C")
        wants.append(want)
    return wants


def _info(name: str, arr_or_type: Any, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    et = arr_or_type if isinstance(arr_or_type, int) else helper.np_dtype_to_tensor_dtype(np.dtype(arr_or_type))
    return helper.make_tensor_value_info(name, et, list(shape))


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: Sequence[str],
           inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])


def _gqa_node(attrs: dict[str, Any], inputs: Sequence[str], name: str = "gqa",
              outputs: Sequence[str] = ("out", "present_key", "present_value")) -> onnx.NodeProto:
    ins = list(inputs)
    while ins and not ins[-1]:
        ins.pop()
    return helper.make_node("GroupQueryAttention", ins, list(outputs), domain=MS, name=name, **attrs)


def _caches(r: np.random.Generator, half: int, dtype=np.float32) -> dict[str, np.ndarray]:
    ang = np.arange(MAXLEN)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
    ang = ang + r.uniform(0, 0.1, ang.shape)     # not a pure function of i * theta: rows matter
    return {"cos": np.cos(ang).astype(dtype), "sin": np.sin(ang).astype(dtype)}


class Case:
    """A static-shape one-node GQA model: q/k/v (or packed qkv), optional past, seqlens_k and
    total_sequence_length as graph inputs (total also as a constant when ``total_const``)."""

    def __init__(self, n: int, nk: int, *, packed: bool = False, past: int | None = None, b: int = 2,
                 s: int = 4, total: int | None = None, rotary: str = "none", dtype=np.float32,
                 attrs: dict[str, Any] | None = None, extra: dict[int, tuple[str, np.ndarray]] | None = None,
                 seed: int = 0, d: int = D) -> None:
        self.r = np.random.default_rng(seed)
        self.d = d
        self.n, self.nk, self.b, self.s, self.past, self.dtype = n, nk, b, s, past, dtype
        self.total = total if total is not None else (past or 0) + s
        a = {"num_heads": n, "kv_num_heads": nk, **(attrs or {})}
        names = ["qkv" if packed else "q", "" if packed else "k", "" if packed else "v",
                 "past_key" if past is not None else "", "past_value" if past is not None else "",
                 "seqlens_k", "total"]
        inits: dict[str, np.ndarray] = {"total": np.array(self.total, np.int32)}
        self.fixed: dict[str, np.ndarray] = {}
        if rotary != "none":
            a.update(do_rotary=1, rotary_interleaved=int(rotary == "interleaved"))
            inits.update(_caches(self.r, d // 4 if rotary == "partial" else d // 2, dtype))
            names += ["cos", "sin"]
        for i, (nm, val) in sorted((extra or {}).items()):
            names += [""] * (i - len(names)) + [nm]
            self.fixed[nm] = val
        self.packed = packed
        self.inputs = [_info(nm, dtype if nm not in ("seqlens_k",) else np.int32, self._shape(nm))
                       for nm in names if nm and nm not in inits]
        self.model = _model([_gqa_node(a, names)], self.inputs, ("out", "present_key", "present_value"), inits)

    def _shape(self, nm: str) -> tuple[int, ...]:
        hq, hk = self.n * self.d, self.nk * self.d
        return {"q": (self.b, self.s, hq), "k": (self.b, self.s, hk), "v": (self.b, self.s, hk),
                "qkv": (self.b, self.s, hq + 2 * hk), "past_key": (self.b, self.nk, self.past or 0, self.d),
                "past_value": (self.b, self.nk, self.past or 0, self.d), "seqlens_k": (self.b,)}.get(
            nm, self.fixed.get(nm, np.zeros(0)).shape)

    def feeds(self, seqlens: Sequence[int] | None = None, **given: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for vi in self.inputs:
            nm = vi.name
            if nm in given:
                out[nm] = given[nm]
            elif nm == "seqlens_k":
                out[nm] = np.array(seqlens if seqlens is not None else [self.total - 1] * self.b, np.int32)
            elif nm in self.fixed:
                out[nm] = self.fixed[nm]
            else:
                out[nm] = self.r.standard_normal(self._shape(nm)).astype(self.dtype)
        return out


# ---- prompt + decode, packed / separate, GQA ratios, rotary -------------------------------

@pytest.mark.parametrize("n,nk,packed,rotary", [
    (4, 4, False, "none"), (4, 2, False, "halves"), (4, 1, False, "interleaved"),
    (4, 2, True, "none"), (8, 2, True, "interleaved"), (2, 2, True, "halves"), (4, 2, False, "partial"),
])
def test_prompt_then_decode(n: int, nk: int, packed: bool, rotary: str) -> None:
    b, s = 2, 5
    d = 32 if rotary == "partial" else D     # onnxruntime: rotary columns a multiple of 8
    prompt = Case(n, nk, packed=packed, b=b, s=s, rotary=rotary, seed=n + nk, d=d)
    pf = prompt.feeds()
    (out, pk, pv), = _compare(prompt.model, [pf])
    assert pk.shape == (b, nk, s, d)
    decode = Case(n, nk, packed=packed, past=s, b=b, s=1, rotary=rotary, seed=n + nk, d=d)
    # the decode step continues the prompt: its past is the prompt's present
    df = decode.feeds(past_key=pk, past_value=pv)
    (_, pk2, _), = _compare(decode.model, [df])
    assert pk2.shape == (b, nk, s + 1, d)
    np.testing.assert_array_equal(pk2[:, :, :s], pk)


def test_prompt_matches_explicit_math() -> None:
    """Independent of onnxruntime: causal GQA attention written out in numpy (2 q heads per kv
    head, no rotary), so a shared misreading of the spec would show."""
    c = Case(4, 2, b=1, s=3)
    f = c.feeds()
    got = run(from_onnx(c.model), *(torch.from_numpy(f[v.name]) for v in from_onnx(c.model).inputs))
    q = f["q"].reshape(1, 3, 4, D).transpose(0, 2, 1, 3)
    k = np.repeat(f["k"].reshape(1, 3, 2, D).transpose(0, 2, 1, 3), 2, axis=1)
    v = np.repeat(f["v"].reshape(1, 3, 2, D).transpose(0, 2, 1, 3), 2, axis=1)
    sc = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D) + np.triu(np.full((3, 3), -np.inf), 1)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    want = ((p / p.sum(-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(1, 3, 4 * D)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-6)


def test_subsequent_prompt_chunk() -> None:
    """S > 1 tokens after a past (batch 1, onnxruntime's interactive / chunked prefill)."""
    c = Case(4, 2, past=3, b=1, s=3, rotary="halves", seed=3)
    _compare(c.model, [c.feeds()])


# ---- per-batch seqlens_k -----------------------------------------------------------------

def test_right_padded_prompt() -> None:
    c = Case(4, 2, b=3, s=5, rotary="halves", seed=4)
    _compare(c.model, [c.feeds(seqlens=[4, 1, 2])], c=False)


def test_ragged_decode() -> None:
    """Rows with 6, 3 and 1 valid past tokens in a past buffer of 6: each row's new token is
    written right after its own past and everything after it is zero."""
    c = Case(4, 2, past=6, b=3, s=1, rotary="interleaved", seed=5)
    (_, pk, pv), = _compare(c.model, [c.feeds(seqlens=[6, 3, 1])])
    assert not pk[1, :, 4:].any() and not pv[2, :, 2:].any() and pk[1, :, 3].any()


def test_preallocated_cache() -> None:
    """past buffer longer than total (a static max-length cache): present keeps the buffer
    length, past rows beyond the valid ones are cleared."""
    c = Case(4, 4, past=8, b=2, s=1, total=6, rotary="halves", seed=6)
    (_, pk, _), = _compare(c.model, [c.feeds(seqlens=[5, 3])])
    assert pk.shape[2] == 8 and not pk[0, :, 6:].any()


# ---- attention variants --------------------------------------------------------------------

@pytest.mark.parametrize("attrs,past", [
    ({"local_window_size": 2}, None), ({"local_window_size": 3}, 5), ({"softcap": 1.5}, None),
    ({"softcap": 2.0}, 4), ({"smooth_softmax": 1}, None), ({"causal": 0}, None), ({"scale": 0.3}, 3),
])
def test_attention_variants(attrs: dict, past: int | None) -> None:
    c = Case(4, 2, past=past, b=2, s=4 if past is None else 1, attrs=attrs, seed=7)
    seqlens = [3, 2] if past is None else [past, past - 2]
    _compare(c.model, [c.feeds(seqlens=seqlens)], c=len(attrs) == 1 and "softcap" in attrs)


def test_head_sink_and_bias() -> None:
    r = np.random.default_rng(8)
    sink = r.standard_normal(4).astype(np.float32)
    bias = (2 * r.standard_normal((1, 4, 1, 5))).astype(np.float32)
    c = Case(4, 2, past=4, b=2, s=1, attrs={"softcap": 3.0},
             extra={10: ("bias", bias), 11: ("sink", sink)}, seed=8)
    _compare(c.model, [c.feeds(seqlens=[4, 2])])
    c = Case(4, 1, b=1, s=5, extra={10: ("bias", np.tile(bias, (1, 1, 5, 1)))}, seed=9)
    _compare(c.model, [c.feeds()], c=False)


def test_f16() -> None:
    prompt = Case(4, 2, b=2, s=4, rotary="halves", dtype=np.float16, seed=10)
    (_, pk, pv), = _compare(prompt.model, [prompt.feeds(seqlens=[3, 3])], rtol=RTOL_F16)
    decode = Case(4, 2, past=4, b=2, s=1, total=5, rotary="halves", dtype=np.float16, seed=10)
    _compare(decode.model, [decode.feeds(seqlens=[4, 4], past_key=pk, past_value=pv)], rtol=RTOL_F16)


# ---- model-builder style: symbolic dims, seqlens / total from the attention mask -----------

def _mask_nodes() -> list[onnx.NodeProto]:
    """seqlens_k = int32(sum(mask, 1) - 1), total = int32(shape(mask)[1]) (model builder)."""
    return [
        helper.make_node("ReduceSum", ["attention_mask", "one_axis"], ["mask_sum"], keepdims=0),
        helper.make_node("Sub", ["mask_sum", "one"], ["mask_sub"]),
        helper.make_node("Cast", ["mask_sub"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "one"], ["total_i64"], axis=0),
        helper.make_node("Cast", ["total_i64"], ["total"], to=TensorProto.INT32),
    ]


_MASK_INITS = {"one_axis": np.array([1], np.int64), "one": np.array(1, np.int64)}


def _steps(r: np.random.Generator, n: int, nk: int, hidden: int | None, lens: Sequence[int],
           steps: int, qkv: bool) -> list[tuple[dict[str, np.ndarray], int]]:
    """Feeds of a right-padded prompt (valid lengths ``lens``) then ``steps`` decode steps;
    past tensors are filled in by the caller from the previous step's presents."""
    b, s = len(lens), max(lens)
    out = []
    for t in range(steps + 1):
        sl, past = (s, 0) if t == 0 else (1, s + t - 1)
        mask = np.zeros((b, past + sl), np.int64)
        for i, ln in enumerate(lens):
            mask[i, :ln + t] = 1
        f: dict[str, np.ndarray] = {"attention_mask": mask}
        if hidden is not None:
            f["x"] = r.standard_normal((b, sl, hidden)).astype(np.float32)
        elif qkv:
            f["qkv"] = r.standard_normal((b, sl, (n + 2 * nk) * D)).astype(np.float32)
        out.append((f, past))
    return out


def _run_chain(model: onnx.ModelProto, steps: list[tuple[dict[str, np.ndarray], int]], b: int, nk: int,
               c: bool = True) -> None:
    """Run prompt + decode steps, feeding each step's presents (onnxruntime's) as the next past."""
    pk = pv = np.zeros((b, nk, 0, D), np.float32)
    feeds_all = []
    for f, past in steps:
        assert pk.shape[2] == past
        f = dict(f, past_key=pk, past_value=pv)
        feeds_all.append(f)
        _, pk, pv = _ort(model, f)[:3]
    # one compiled model for every step: the dims are symbolic
    _compare(model, feeds_all, c=c)


def test_symbolic_dims_model_builder_style() -> None:
    r = np.random.default_rng(11)
    n, nk = 4, 2
    cs = _caches(r, D // 2)
    names = ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"]
    nodes = _mask_nodes() + [_gqa_node({"num_heads": n, "kv_num_heads": nk, "do_rotary": 1,
                                        "local_window_size": 4}, names)]
    inputs = [_info("qkv", np.float32, ["batch_size", "sequence_length", (n + 2 * nk) * D]),
              _info("past_key", np.float32, ["batch_size", nk, "past_sequence_length", D]),
              _info("past_value", np.float32, ["batch_size", nk, "past_sequence_length", D]),
              _info("attention_mask", np.int64, ["batch_size", "total_sequence_length"])]
    model = _model(nodes, inputs, ("out", "present_key", "present_value"), {**_MASK_INITS, **cs})
    g = from_onnx(model)
    assert all(not isinstance(v.shape[0], int) for v in g.inputs)       # batch stays symbolic
    assert not isinstance(g.outputs[1].shape[2], int)                     # so does the present length
    _run_chain(model, _steps(r, n, nk, None, [5, 3], 3, True), 2, nk)


# ---- end to end: a model-builder int4 decoder layer ----------------------------------------

def _nbits(r: np.random.Generator, name: str, x: str, y: str, k: int, n: int, block: int = 16
           ) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    nb = k // block
    inits = {f"{name}.B": r.integers(0, 256, (n, nb, block // 2), dtype=np.uint8),
             f"{name}.s": (r.random(n * nb) * 0.05 + 0.01).astype(np.float32)}
    node = helper.make_node("MatMulNBits", [x, f"{name}.B", f"{name}.s"], [y], name=name, domain=MS,
                            K=k, N=n, bits=4, block_size=block, accuracy_level=0)
    return node, inits


def test_int4_decoder_layer() -> None:
    """x -> SkipSimplifiedLayerNormalization -> MatMulNBits q / k / v -> GQA (rotary, 4 q heads on
    2 kv heads) -> MatMulNBits o -> SkipSimplifiedLayerNormalization(residual), prompt + decode."""
    r = np.random.default_rng(12)
    n, nk, hidden = 4, 2, 64
    inits = {**_MASK_INITS, **_caches(r, D // 2),
             "ln1.g": (1 + 0.1 * r.standard_normal(hidden)).astype(np.float32),
             "ln2.g": (1 + 0.1 * r.standard_normal(hidden)).astype(np.float32)}
    nodes = _mask_nodes()
    # the first norm adds x to itself as the skip: its sum output is the residual stream
    nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", ["x", "x", "ln1.g"], ["h", "", "", "res"],
                                  domain=MS, name="ln1", epsilon=1e-5))
    for nm, out, width in (("q_proj", "q", n * D), ("k_proj", "k", nk * D), ("v_proj", "v", nk * D)):
        node, w = _nbits(r, nm, "h", out, hidden, width)
        nodes.append(node)
        inits.update(w)
    gqa_in = ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"]
    nodes.append(_gqa_node({"num_heads": n, "kv_num_heads": nk, "do_rotary": 1}, gqa_in, name="attn"))
    node, w = _nbits(r, "o_proj", "out", "o", n * D, hidden)
    nodes.append(node)
    inits.update(w)
    nodes.append(helper.make_node("SkipSimplifiedLayerNormalization", ["o", "res", "ln2.g"], ["y"],
                                  domain=MS, name="ln2", epsilon=1e-5))
    inputs = [_info("x", np.float32, ["batch_size", "sequence_length", hidden]),
              _info("past_key", np.float32, ["batch_size", nk, "past_sequence_length", D]),
              _info("past_value", np.float32, ["batch_size", nk, "past_sequence_length", D]),
              _info("attention_mask", np.int64, ["batch_size", "total_sequence_length"])]
    model = _model(nodes, inputs, ("y", "present_key", "present_value"), inits)
    ops = {n_.op for n_ in from_onnx(model).nodes}
    assert {"qlinear", "sdpa", "rms_norm"} <= ops
    _run_chain(model, _steps(r, n, nk, hidden, [4, 2], 2, False), 2, nk)


# ---- sliding_window_cache=1: window-sized KV buffers (model builder's Gemma-2 / -3 local layers) --

def _resident(t: int, cap: int, w: int) -> int:
    """Rows of a window cache that hold positions after ``t`` tokens (onnxruntime's contract)."""
    g = cap - w + 1
    return t if t <= cap else t - g * -(-(t - cap) // g)


def _window_chain(model: onnx.ModelProto, steps: Sequence[dict[str, np.ndarray]], cap: int, w: int, nk: int,
                  d: int = D, c: bool = True, first: np.ndarray | None = None) -> None:
    """Run ``steps`` (feeds without pasts; ``attention_mask`` gives each row's T) in onnxruntime,
    each fed the previous step's presents, and in scalefold on the same feeds (interp; C unless
    ``c`` is False, one compiled model). Present rows at or past L(T) are unspecified in
    onnxruntime (they hold stale rows), so both sides are compared on rows [0, L(T)) only."""
    g = from_onnx(model)
    cm = scalefold.compile(model, target="c") if c else None
    b = steps[0]["attention_mask"].shape[0]
    # random first buffers: rows a step must not read (all of them on a first prompt) are noise
    pk, pv = np.random.default_rng(16).standard_normal((2, b, nk, cap, d)).astype(np.float32) if first is None \
        else first
    for f in steps:
        f = dict(f, past_key=pk, past_value=pv)
        want = _ort(model, f)
        ins = [torch.from_numpy(np.ascontiguousarray(f[v.name])) for v in g.inputs]
        gots = [("interp", run(g, *ins))] + ([("C", list(cm(*ins)))] if cm is not None else [])
        pk, pv = want[1], want[2]            # stale rows go back in, as onnxruntime-genai does
        lens = [_resident(int(t), cap, w) for t in f["attention_mask"].sum(1)]
        # (np.where, not a product: the unspecified rows may be uninitialised memory, NaN included)
        want = [want[0]] + [np.stack([np.where((np.arange(cap) < ln)[None, :, None], x[i], 0) for i, ln in
                                      enumerate(lens)]) for x in want[1:]]
        for what, got in gots:
            assert got[1].shape == (b, nk, cap, d)
            assert all(not got[j][i, :, ln:].any() for j in (1, 2) for i, ln in enumerate(lens))
            _check(got, want, RTOL, what)


def _window_model(n: int, nk: int, attrs: dict[str, Any], d: int = D) -> onnx.ModelProto:
    """The model builder's windowed GQA layer: packed qkv, past declared [batch, nk,
    past_sliding_length, kv_cache_dim] (a free symbol for the head size, as the builder writes
    it), seqlens_k / total from the attention mask, rotary."""
    names = ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total", "cos", "sin"]
    a = {"num_heads": n, "kv_num_heads": nk, "do_rotary": 1, "sliding_window_cache": 1, **attrs}
    inputs = [_info("qkv", np.float32, ["batch_size", "sequence_length", (n + 2 * nk) * d]),
              _info("past_key", np.float32, ["batch_size", nk, "past_sliding_length", "kv_cache_dim"]),
              _info("past_value", np.float32, ["batch_size", nk, "past_sliding_length", "kv_cache_dim"]),
              _info("attention_mask", np.int64, ["batch_size", "total_sequence_length"])]
    cs = _caches(np.random.default_rng(13), d // 2)
    return _model(_mask_nodes() + [_gqa_node(a, names)], inputs, ("out", "present_key", "present_value"),
                  {**_MASK_INITS, **cs})


def _qkv_steps(r: np.random.Generator, n: int, nk: int, b: int, sizes: Sequence[int],
               start: Sequence[int] | None = None) -> list[dict[str, np.ndarray]]:
    """Steps of ``sizes`` new tokens each over ``b`` rows (row i begins with start[i] tokens)."""
    done = list(start or [0] * b)
    out = []
    for sl in sizes:
        done = [t + sl for t in done]
        mask = np.zeros((b, max(done)), np.int64)
        for i, t in enumerate(done):
            mask[i, :t] = 1
        out.append({"attention_mask": mask, "qkv": r.standard_normal((b, sl, (n + 2 * nk) * D)).astype(np.float32)})
    return out


@pytest.mark.parametrize("cap,w,sizes", [
    (5, 3, (4, 1, 1, 1, 1, 1)),        # eviction frees G = 3 rows at once
    (4, 4, (2, 1, 1, 1, 1)),           # C == W (the CUDA layout): one row per step
    (6, 3, (8, 1, 1)),                 # a prompt longer than the capacity
])
def test_window_cache_prompt_then_decode(cap: int, w: int, sizes: Sequence[int]) -> None:
    r = np.random.default_rng(14)
    m = _window_model(4, 2, {"local_window_size": w})
    _window_chain(m, _qkv_steps(r, 4, 2, 1, sizes), cap, w, 2)


def test_window_cache_chunks_softcap_and_batches() -> None:
    """Chunked prefill (S > 1 after a past, evicting inside the step), softcap (Gemma-2's
    explicit-softmax path), and a batch of two decode rows at different lengths."""
    r = np.random.default_rng(15)
    m = _window_model(4, 1, {"local_window_size": 3, "softcap": 2.0})
    _window_chain(m, _qkv_steps(r, 4, 1, 1, (2, 3, 4, 1)), 5, 3, 1, c=False)
    m = _window_model(4, 2, {"local_window_size": 3})
    # decode rows with 6 and 2 tokens before (their windows come from random past rows)
    steps = _qkv_steps(r, 4, 2, 2, (1, 1, 1), start=(6, 2))
    _window_chain(m, steps, 5, 3, 2, c=False)


def test_window_cache_ignores_stale_rows() -> None:
    """Rows past L(T) are unspecified (onnxruntime hands them back uninitialised and genai feeds
    them in again): NaN there must not reach the output, as 0 * NaN would in p @ v."""
    r = np.random.default_rng(17)
    m = _window_model(4, 2, {"local_window_size": 3})
    first = r.standard_normal((2, 2, 2, 5, D)).astype(np.float32)
    first[:, 0, :, 4:] = np.nan            # row 0 had 7 tokens: L(7) = 7 - 3 = 4 resident rows
    first[:, 1, :, 2:] = np.inf            # row 1 had 2 tokens: L(2) = 2
    _window_chain(m, _qkv_steps(r, 4, 2, 2, (1, 1), start=(7, 2)), 5, 3, 2, first=first)


# ---- refused forms -------------------------------------------------------------------------

def _refused(attrs: dict, extra: dict[int, str], match: str, total_const: bool = True) -> None:
    names = ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total"]
    for i, nm in sorted(extra.items()):
        names += [""] * (i - len(names)) + [nm]
    ins = [_info("q", np.float32, [1, 1, 4 * D]), _info("k", np.float32, [1, 1, 2 * D]),
           _info("v", np.float32, [1, 1, 2 * D]), _info("past_key", np.float32, [1, 2, 3, D]),
           _info("past_value", np.float32, [1, 2, 3, D]), _info("seqlens_k", np.int32, [1])]
    ins += [_info(nm, np.int32 if nm == "qs" else np.float32, [1]) for nm in extra.values()]
    inits = {"total": np.array(4, np.int32)}
    if not total_const:
        ins.append(_info("total", np.int32, []))
        inits = {}
    m = _model([_gqa_node({"num_heads": 4, "kv_num_heads": 2, **attrs}, names, name="gqa_refused")], ins,
               ("out", "present_key", "present_value"), inits)
    with pytest.raises(UnsupportedOpError, match=rf"gqa_refused.*GroupQueryAttention with {match}"):
        from_onnx(m)


@pytest.mark.parametrize("attrs,extra,match,total_const", [
    ({}, {16: "qs"}, "query_seqlens", True),
    ({"k_quant_type": "PER_TENSOR", "v_quant_type": "PER_TENSOR"}, {12: "ks", 13: "vs"}, "a quantised KV cache",
     True),
    ({"local_window_size": 2, "sliding_window_cache": 1}, {10: "bias"}, "attention_bias together with "
     "sliding_window_cache", True),
    ({}, {}, "a total_sequence_length known only at run time", False),
])
def test_refused_forms(attrs: dict, extra: dict, match: str, total_const: bool) -> None:
    _refused(attrs, extra, match, total_const)
