"""The interpreter runs model blocks written as IR text and matches equivalent torch modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from harness import assert_close
from scalefold.ir.parser import parse
from scalefold.ir.verify import verify
from scalefold.runtime.interp import run



@pytest.fixture(autouse=True)
def _no_grad():
    # A fixture, not a module-level switch, so other test modules keep autograd.
    with torch.no_grad():
        yield


def _load(text: str, consts: dict[str, torch.Tensor]):
    g = parse(text, constants={k: v.detach().contiguous() for k, v in consts.items()})
    verify(g)
    # The canonical text of the loaded graph parses back into an equal graph.
    assert parse(str(g), constants={v.const_hash(): v.const for v in g.constants()}) == g
    return g


MLP_IR = """
graph @mlp(%x: f32[B,24]) -> (f32[B,10]) {
  %0: f32[B,48] = linear(%x, #w1, #b1)
  %1: f32[B,48] = gelu[approximate="tanh"](%0)
  %2: f32[B,10] = linear(%1, #w2, #b2)
  return %2
}
#w1 = const f32[48,24] param
#b1 = const f32[48] param
#w2 = const f32[10,48] param
#b2 = const f32[10] param
"""


def test_mlp_matches_torch() -> None:
    m = nn.Sequential(nn.Linear(24, 48), nn.GELU(approximate="tanh"), nn.Linear(48, 10)).eval()
    g = _load(MLP_IR, {"w1": m[0].weight, "b1": m[0].bias, "w2": m[2].weight, "b2": m[2].bias})
    for b in (1, 7):
        x = torch.randn(b, 24)
        assert_close(run(g, x)[0], m(x))


BLOCK_IR = """
// Pre-LN transformer encoder block: D=32, 4 heads of 8, FFN 64; mask True = attend.
graph @block(%x: f32[B,S,32], %mask: bool[B,1,1,S]) -> (f32[B,S,32]) {
  %0: f32[B,S,32] = layer_norm[axis=-1, eps=1e-05](%x, #ln1_w, #ln1_b)
  %1: f32[B,S,32] = linear(%0, #wq, #bq)
  %2: f32[B,S,32] = linear(%0, #wk, #bk)
  %3: f32[B,S,32] = linear(%0, #wv, #bv)
  %4: f32[B,S,4,8] = reshape[shape=[B,S,4,8]](%1)
  %5: f32[B,4,S,8] = transpose[perm=[0,2,1,3]](%4)
  %6: f32[B,S,4,8] = reshape[shape=[B,S,4,8]](%2)
  %7: f32[B,4,S,8] = transpose[perm=[0,2,1,3]](%6)
  %8: f32[B,S,4,8] = reshape[shape=[B,S,4,8]](%3)
  %9: f32[B,4,S,8] = transpose[perm=[0,2,1,3]](%8)
  %10: f32[B,4,S,8] = sdpa(%5, %7, %9, %mask)
  %11: f32[B,S,4,8] = transpose[perm=[0,2,1,3]](%10)
  %12: f32[B,S,32] = reshape[shape=[B,S,32]](%11)
  %13: f32[B,S,32] = linear(%12, #wo, #bo)
  %14: f32[B,S,32] = add(%x, %13)
  %15: f32[B,S,32] = layer_norm[axis=-1, eps=1e-05](%14, #ln2_w, #ln2_b)
  %16: f32[B,S,64] = linear(%15, #w1, #b1)
  %17: f32[B,S,64] = gelu[approximate="none"](%16)
  %18: f32[B,S,32] = linear(%17, #w2, #b2)
  %19: f32[B,S,32] = add(%14, %18)
  return %19
}
"""


def test_pre_ln_transformer_block_matches_torch() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    for p in layer.parameters():  # non-trivial norms and biases
        p.add_(torch.randn_like(p) * 0.1)
    layer.train()  # train mode avoids the nested-tensor fast path; dropout is 0
    wq, wk, wv = layer.self_attn.in_proj_weight.chunk(3)
    bq, bk, bv = layer.self_attn.in_proj_bias.chunk(3)
    consts = dict(ln1_w=layer.norm1.weight, ln1_b=layer.norm1.bias, wq=wq, bq=bq, wk=wk, bk=bk,
                  wv=wv, bv=bv, wo=layer.self_attn.out_proj.weight, bo=layer.self_attn.out_proj.bias,
                  ln2_w=layer.norm2.weight, ln2_b=layer.norm2.bias, w1=layer.linear1.weight,
                  b1=layer.linear1.bias, w2=layer.linear2.weight, b2=layer.linear2.bias)
    text = BLOCK_IR + "".join(f"#{k} = const f32[{','.join(map(str, v.shape))}] param\n"
                              for k, v in consts.items())
    g = _load(text, consts)
    for b, s in ((2, 5), (3, 9)):
        x = torch.randn(b, s, 32)
        lengths = torch.randint(1, s + 1, (b,))
        pad = torch.arange(s)[None, :] >= lengths[:, None]          # True = padding
        want = layer(x, src_key_padding_mask=pad)
        got = run(g, x, (~pad)[:, None, None, :])[0]
        assert_close(got, want, rtol=1e-5, atol=1e-5)


CONV_IR = """
graph @conv_bn_relu(%x: f32[B,3,15,15]) -> (f32[B,8,8,8]) {
  %0: f32[B,8,8,8] = conv[dilation=[1,1], groups=1, padding=[1,1], stride=[2,2]](%x, #w, #b)
  %1: f32[B,8,8,8] = batch_norm[eps=1e-05](%0, #gamma, #beta, #mean, #var)
  %2: f32[B,8,8,8] = relu(%1)
  return %2
}
#w = const f32[8,3,3,3] param
#b = const f32[8] param
#gamma = const f32[8] param
#beta = const f32[8] param
#mean = const f32[8] param
#var = const f32[8] param
"""


def test_conv_bn_relu_matches_torch() -> None:
    m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    bn = m[1]
    bn.running_mean.copy_(torch.randn(8))
    bn.running_var.copy_(torch.rand(8) + 0.5)
    bn.weight.copy_(torch.randn(8))
    bn.bias.copy_(torch.randn(8))
    m.eval()
    g = _load(CONV_IR, dict(w=m[0].weight, b=m[0].bias, gamma=bn.weight, beta=bn.bias,
                            mean=bn.running_mean, var=bn.running_var))
    for b in (1, 4):
        x = torch.randn(b, 3, 15, 15)
        assert_close(run(g, x)[0], m(x))


def _mixtral_block(h: int = 16, f: int = 24, e: int = 4) -> MixtralSparseMoeBlock:
    cfg = MixtralConfig(hidden_size=h, intermediate_size=f, num_local_experts=e, num_experts_per_tok=2,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, vocab_size=32)
    blk = MixtralSparseMoeBlock(cfg).eval()
    for p in blk.parameters():
        nn.init.normal_(p, std=0.3)
    return blk


def _moe_primitive_ir(e: int, h: int, f: int) -> str:
    """Mixtral routing and experts spelled out with primitive ops, every expert computed densely
    and weighted by a routing matrix that is zero outside the top-2."""
    lines = [
        f"graph @moe(%x: f32[B,S,{h}]) -> (f32[B,S,{h}]) {{",
        f"  %0: f32[B,S,{e}] = linear(%x, #router, _)",
        f"  %1: f32[B,S,{e}] = softmax[axis=-1](%0)",
        "  %2: f32[B,S,2], %3: i64[B,S,2] = topk[axis=-1, k=2, largest=true, sorted=true](%1)",
        "  %4: f32[B,S,1] = slice[axes=[2], ends=[2], starts=[1], steps=[1]](%2)",
        f"  %5: bool[B,S,{e}] = ge(%1, %4)",
        f"  %6: f32[B,S,{e}] = where(%5, %1, #zero)",
        "  %7: f32[B,S,1] = reduce_sum[axes=[2], keepdims=true](%6)",
        f"  %8: f32[B,S,{e}] = div(%6, %7)",
        f"  %9: f32[B,S,{e},1] = unsqueeze[axes=[3]](%8)",
    ]
    n = 10
    outs = []
    for i in range(e):
        lines += [
            f"  %{n}: f32[B,S,{f}] = linear(%x, #wg{i}, _)",
            f"  %{n + 1}: f32[B,S,{f}] = silu(%{n})",
            f"  %{n + 2}: f32[B,S,{f}] = linear(%x, #wu{i}, _)",
            f"  %{n + 3}: f32[B,S,{f}] = mul(%{n + 1}, %{n + 2})",
            f"  %{n + 4}: f32[B,S,{h}] = linear(%{n + 3}, #wd{i}, _)",
            f"  %{n + 5}: f32[B,S,1,{h}] = unsqueeze[axes=[2]](%{n + 4})",
        ]
        outs.append(f"%{n + 5}")
        n += 6
    lines += [
        f"  %{n}: f32[B,S,{e},{h}] = concat[axis=2]({', '.join(outs)})",
        f"  %{n + 1}: f32[B,S,{e},{h}] = mul(%{n}, %9)",
        f"  %{n + 2}: f32[B,S,{h}] = reduce_sum[axes=[2], keepdims=false](%{n + 1})",
        f"  return %{n + 2}",
        "}",
        "#zero = const f32[] 0.0",
    ]
    return "\n".join(lines) + "\n"


def test_mixtral_moe_block_primitive_ops_match_transformers() -> None:
    e, h, f = 4, 16, 24
    blk = _mixtral_block(h, f, e)
    consts = {"router": blk.gate.weight}
    for i in range(e):
        gu = blk.experts.gate_up_proj[i]
        consts[f"wg{i}"], consts[f"wu{i}"] = gu[:f], gu[f:]
        consts[f"wd{i}"] = blk.experts.down_proj[i]
    text = _moe_primitive_ir(e, h, f) + "".join(
        f"#{k} = const f32[{','.join(map(str, v.shape))}] param\n" for k, v in consts.items())
    g = _load(text, consts)
    for b, s in ((2, 3), (1, 11)):
        x = torch.randn(b, s, h)
        assert_close(run(g, x)[0], blk(x), rtol=1e-5, atol=1e-5)


def test_mixtral_moe_block_moe_op_matches_transformers() -> None:
    e, h, f = 4, 16, 24
    blk = _mixtral_block(h, f, e)
    gu = blk.experts.gate_up_proj
    text = f"""
graph @moe(%x: f32[B,S,{h}]) -> (f32[B,S,{h}]) {{
  %0: f32[B,S,{h}] = moe[top_k=2](%x, #router, #wg, #wu, #wd)
  return %0
}}
#router = const f32[{e},{h}] param
#wg = const f32[{e},{f},{h}] param
#wu = const f32[{e},{f},{h}] param
#wd = const f32[{e},{h},{f}] param
"""
    g = _load(text, dict(router=blk.gate.weight, wg=gu[:, :f], wu=gu[:, f:], wd=blk.experts.down_proj))
    for b, s in ((2, 3), (3, 8)):
        x = torch.randn(b, s, h)
        assert_close(run(g, x)[0], blk(x), rtol=1e-5, atol=1e-5)
