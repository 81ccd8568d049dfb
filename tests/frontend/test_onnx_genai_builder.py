"""Decoders in the exact pattern of onnxruntime-genai's model builder (0.18, ``-e cpu -p fp32``),
rebuilt with onnx.helper so that CI needs neither onnxruntime-genai nor its model files.

What the builder writes and the hand-made one-node tests in test_onnx_contrib_gqa.py do not:

- past / present declared ``[batch_size, kv_heads, past_sequence_length, kv_cache_dim]``: the head
  size is a free symbol (an importer that asks for it to be static refuses every builder file);
- ``seqlens_k`` / ``total_sequence_length`` from ``attention_mask`` through Constant nodes
  (ReduceSum keepdims=0, Sub, Cast int32; Shape, Gather, Cast), shared by every layer;
- packed q/k/v from one MatMul, rotary inside GroupQueryAttention with explicit ``scale``,
  ``local_window_size=-1`` and ``softcap=0.0`` attributes, SkipSimplifiedLayerNormalization
  chained through its 4th output (the residual stream);
- Gemma-2: the local layer's KV cache is window-sized (``sliding_window_cache=1``, dims
  ``past_sliding_length`` / ``total_sliding_length``), attention softcap, tied embeddings via a
  Transpose of the lm_head weight, FastGelu, post-norms and a final logit softcap.

Each model runs a prompt and decode steps in onnxruntime and in scalefold (interpreter and C, one
compiled model for all steps), each step fed onnxruntime's presents of the previous one as
onnxruntime-genai does (a growing cache, or a max-length buffer passed back each step).
Logits and presents must agree to 1e-5 relative to the largest value, except where
onnxruntime leaves them unspecified (rows of a window cache at or past its resident count).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold
from harness import assert_close
from scalefold.frontend.onnx import from_onnx
from scalefold.runtime.interp import run

MS = "com.microsoft"
HID, N, NK, D, FF, VOCAB, MAXLEN = 64, 4, 2, 16, 96, 50, 64
MASK = "/model/attn_mask_reformat/attn_mask_subgraph"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class _Builder:
    """Collects nodes and initializers under the builder's names."""

    def __init__(self, seed: int) -> None:
        self.r = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def node(self, op: str, name: str, ins: Sequence[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        outs = [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(ins), outs, name=name, domain=domain, **attrs))
        return outs

    def const(self, name: str, value: np.ndarray) -> str:
        self.nodes.append(helper.make_node("Constant", [], [name], name=name.replace("constants", "constant_nodes"),
                                           value=numpy_helper.from_array(value, name)))
        return name

    def weight(self, name: str, shape: Sequence[int], scale: float = 0.1, offset: float = 0.0) -> str:
        self.inits.append(numpy_helper.from_array((offset + scale * self.r.standard_normal(shape)).astype(np.float32),
                                                  name))
        return name


def _decoder(gemma2: bool, window: int = 4, seed: int = 0) -> onnx.ModelProto:
    b = _Builder(seed)
    one_1d = b.const("/model/constants/INT64/[1]", np.array([1], np.int64))
    s = b.node("ReduceSum", f"{MASK}/ReduceSum", ["attention_mask", one_1d], keepdims=0)
    s = b.node("Sub", f"{MASK}/Sub", [s[0], one_1d])
    seqlens = b.node("Cast", f"{MASK}/Sub/Cast", s, to=TensorProto.INT32)[0]
    shape = b.node("Shape", f"{MASK}/Shape", ["attention_mask"])
    one = b.const("/model/constants/INT64/1", np.array(1, np.int64))
    total = b.node("Cast", f"{MASK}/Gather/Cast", b.node("Gather", f"{MASK}/Gather", [shape[0], one], axis=0),
                   to=TensorProto.INT32)[0]
    ang = np.arange(MAXLEN)[:, None] * 10000.0 ** (-np.arange(D // 2) / (D // 2))[None, :]
    b.inits += [numpy_helper.from_array(np.cos(ang).astype(np.float32), "cos_cache"),
                numpy_helper.from_array(np.sin(ang).astype(np.float32), "sin_cache")]
    eps = 1e-6 if gemma2 else 1e-5
    lm_w = b.weight("lm_head.MatMul.weight", (HID, VOCAB))
    if gemma2:     # tied embeddings: the table is the transposed lm_head weight, scaled by sqrt(hidden)
        table = b.node("Transpose", "/model/embed_tokens/Transpose", [lm_w], perm=[1, 0])[0]
        x = b.node("Gather", "/model/embed_tokens/Gather", [table, "input_ids"])
        x = b.node("Mul", "/model/embed_tokens/Mul", [x[0], b.const("/model/constants/FLOAT/8.0",
                                                                     np.array(HID ** 0.5, np.float32))])
    else:
        x = b.node("Gather", "/model/embed_tokens/Gather", [b.weight("model.embed_tokens.weight", (VOCAB, HID), 1.0),
                                                            "input_ids"])
    norm = {"epsilon": eps, "axis": -1, "stash_type": 1}
    h = b.node("SimplifiedLayerNormalization", "/model/layers.0/input_layernorm/LayerNorm",
               [x[0], b.weight("model.layers.0.input_layernorm.weight", (HID,), offset=1.0)], **norm)[0]
    residual = x[0]
    for layer in range(2):
        pre = f"/model/layers.{layer}"
        w = f"model.layers.{layer}"
        local = gemma2 and layer == 0
        qkv = b.node("MatMul", f"{pre}/attn/qkv_proj/MatMul", [h, b.weight(f"{w}.attn.qkv_proj.MatMul.weight",
                                                                            (HID, (N + 2 * NK) * D))])
        attrs = {"num_heads": N, "kv_num_heads": NK, "scale": float(D ** -0.5), "local_window_size": -1,
                 "softcap": 0.0, "do_rotary": 1, "rotary_interleaved": 0}
        if gemma2:
            attrs.update(scale=0.2041, softcap=50.0)
        if local:
            attrs.update(local_window_size=window, sliding_window_cache=1)
        name = f"{pre}/attn/GroupQueryAttention"
        b.nodes.append(helper.make_node(
            "GroupQueryAttention", [qkv[0], "", "", f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
                                    seqlens, total, "cos_cache", "sin_cache", "", "", ""],
            [f"{name}/output_0", f"present.{layer}.key", f"present.{layer}.value"], name=name, domain=MS, **attrs))
        o = b.node("MatMul", f"{pre}/attn/o_proj/MatMul", [f"{name}/output_0",
                                                            b.weight(f"{w}.attn.o_proj.MatMul.weight", (N * D, HID))])
        if gemma2:
            o = b.node("SimplifiedLayerNormalization", f"{pre}/post_attention_layernorm/LayerNorm",
                       [o[0], b.weight(f"{w}.post_attention_layernorm.weight", (HID,), offset=1.0)], **norm)
        ln2 = "pre_feedforward_layernorm" if gemma2 else "post_attention_layernorm"
        h2 = b.node("SkipSimplifiedLayerNormalization", f"{pre}/{ln2}/SkipLayerNorm",
                    [residual, o[0], b.weight(f"{w}.{ln2}.weight", (HID,), offset=1.0)], 4, MS, epsilon=eps)
        b.nodes[-1].output[1] = b.nodes[-1].output[2] = ""
        gate = b.node("MatMul", f"{pre}/mlp/gate_proj/MatMul", [h2[0], b.weight(f"{w}.mlp.gate_proj.MatMul.weight",
                                                                                   (HID, FF))])
        up = b.node("MatMul", f"{pre}/mlp/up_proj/MatMul", [h2[0], b.weight(f"{w}.mlp.up_proj.MatMul.weight",
                                                                               (HID, FF))])
        if gemma2:
            act = b.node("Gelu", f"{pre}/mlp/act_fn/FastGelu", gate, approximate="tanh")
        else:
            sig = b.node("Sigmoid", f"{pre}/mlp/act_fn/Sigmoid", gate)
            act = b.node("Mul", f"{pre}/mlp/act_fn/Mul", [gate[0], sig[0]])
        m = b.node("Mul", f"{pre}/mlp/Mul", [act[0], up[0]])
        down = b.node("MatMul", f"{pre}/mlp/down_proj/MatMul", [m[0], b.weight(f"{w}.mlp.down_proj.MatMul.weight",
                                                                                (FF, HID))])
        if gemma2:
            down = b.node("SimplifiedLayerNormalization", f"{pre}/post_feedforward_layernorm/LayerNorm",
                          [down[0], b.weight(f"{w}.post_feedforward_layernorm.weight", (HID,), offset=1.0)], **norm)
        last = layer == 1
        nxt = "/model/layers.2/final_norm_layernorm" if last else f"/model/layers.{layer + 1}/input_layernorm"
        wn = "model.layers.2.final_norm_layernorm.weight" if last else f"model.layers.{layer + 1}.input_layernorm.weight"
        out = b.node("SkipSimplifiedLayerNormalization", f"{nxt}/SkipLayerNorm",
                     [h2[3], down[0], b.weight(wn, (HID,), offset=1.0)], 1 if last else 4, MS, epsilon=eps)
        if not last:
            b.nodes[-1].output[1] = b.nodes[-1].output[2] = ""
        h, residual = out[0], (out[3] if not last else None)
    logits = b.node("MatMul", "/lm_head/MatMul", [h, lm_w])
    if gemma2:
        cap = b.const("/model/constants/FLOAT/30.0", np.array(30.0, np.float32))
        t = b.node("Tanh", "/lm_head/softcap/Tanh", b.node("Div", "/lm_head/softcap/Div", [logits[0], cap]))
        b.nodes.append(helper.make_node("Mul", [t[0], cap], ["logits"], name="/lm_head/softcap/Mul"))
    else:
        b.nodes[-1].output[0] = "logits"

    def kv(name: str, layer: int, io: str) -> onnx.ValueInfoProto:
        seq = {"past": "past_sequence_length", "present": "total_sequence_length"}[io]
        if gemma2 and layer == 0:
            seq = seq.replace("sequence", "sliding")
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch_size", NK, seq, "kv_cache_dim"])

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    inputs += [kv(f"past_key_values.{i}.{kind}", i, "past") for kind in ("key", "value") for i in range(2)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", VOCAB])]
    outputs += [kv(f"present.{i}.{kind}", i, "present") for kind in ("key", "value") for i in range(2)]
    graph = helper.make_graph(b.nodes, "main_graph", inputs, outputs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
    model.ir_version = 10
    return model


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _resident(t: int, cap: int, w: int) -> int:
    g = cap - w + 1
    return t if t <= cap else t - g * -(-(t - cap) // g)


def _chain(model: onnx.ModelProto, lens: Sequence[int], decode: int, cache: int = 0, window_cap: int = 0,
           window: int = 0) -> None:
    """Prompt (right-padded to max(lens)) + ``decode`` steps. ``cache`` > 0: every full-attention
    past is a ``cache``-row buffer (genai's past_present_share_buffer), else it grows. A window
    layer (layer 0 when ``window_cap``) always has ``window_cap`` rows."""
    r = np.random.default_rng(1)
    sess, g = _ort(model), from_onnx(model)
    cm = scalefold.compile(model, target="c")
    names = [o.name for o in sess.get_outputs()]
    bsz, s0 = len(lens), max(lens)
    past = {}
    for i in range(2):
        rows = window_cap if (window_cap and i == 0) else cache
        for kind in ("key", "value"):
            past[f"past_key_values.{i}.{kind}"] = np.zeros((bsz, NK, rows, D), np.float32)
    mask = (np.arange(s0)[None, :] < np.array(lens)[:, None]).astype(np.int64)
    ids = r.integers(0, VOCAB, (bsz, s0))
    for step in range(decode + 1):
        if step:
            mask = np.concatenate([mask, np.ones((bsz, 1), np.int64)], 1)
            ids = r.integers(0, VOCAB, (bsz, 1))
        feeds = {"input_ids": ids, "attention_mask": mask, **past}
        want = sess.run(None, feeds)
        ins = [torch.from_numpy(feeds[v.name]) for v in g.inputs]
        tot = mask.sum(1)
        for i, nm in enumerate(names):
            if window_cap and nm.startswith("present.0."):
                for b in range(bsz):   # rows past the resident count are unspecified in onnxruntime
                    want[i][b, :, _resident(int(tot[b]), window_cap, window):] = 0
        for what, got in (("interp", run(g, *ins)), ("C", list(cm(*ins)))):
            for i, nm in enumerate(names):
                a = got[i].clone()
                if window_cap and nm.startswith("present.0."):
                    for b in range(bsz):
                        a[b, :, _resident(int(tot[b]), window_cap, window):] = 0
                assert_close(a, torch.from_numpy(want[i]), rtol=1e-5, rel_to_scale=True,
                             what=f"{what} step {step} {nm}")
        past = {nm.replace("present", "past_key_values"): want[i] for i, nm in enumerate(names) if i}


def test_llama_style_growing_cache_right_padded() -> None:
    _chain(_decoder(gemma2=False), lens=(5, 3), decode=3)


def test_llama_style_shared_buffer() -> None:
    """genai's past_present_share_buffer: past is a max-length buffer every step, so the present
    length is max(total, past) = the buffer length."""
    _chain(_decoder(gemma2=False), lens=(4,), decode=2, cache=12)


def test_gemma2_style_window_cache() -> None:
    """Layer 0 keeps a 5-row window cache (window 4) and evicts as the sequence passes it;
    layer 1 grows. Softcap in both layers and on the logits."""
    _chain(_decoder(gemma2=True, window=4), lens=(6, 6), decode=4, window_cap=5, window=4)
