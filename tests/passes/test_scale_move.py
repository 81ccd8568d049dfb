"""Scale-movement legality (passes/scale_move.py): every legal case is applied with random
factors and checked against the reference interpreter; every refusal names its reason."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from scalefold.ir.graph import Graph, Value
from scalefold.ir.parser import parse
from scalefold.ir.printer import Namer
from scalefold.ir.verify import verify
from scalefold.passes.scale_move import Refusal, ScalePlan, apply_explicit, consumer_groups, plan_scale
from scalefold.runtime.interp import run

W = "randn(seed={}, std=0.3)"


def _consts(**shapes: str) -> str:
    """``#name = const TYPE randn(...)`` lines, one seed each."""
    return "".join(f"#{k} = const {t} {W.format(i + 1)}\n" for i, (k, t) in enumerate(shapes.items()))


def value_named(g: Graph, name: str) -> Value:
    names = Namer(g).names
    for v in g.values():
        if names.get(id(v)) == name:
            return v
    raise KeyError(name)


def _inputs(g: Graph, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in g.inputs:
        shape = v.type.concrete({s: 3 for s in g.symbols})
        out.append(torch.randn(shape, generator=gen) if v.dtype.is_float
                   else torch.ones(shape, dtype=v.dtype.container))
    return out


def check_legal(text: str, target: str, absorber: str, consumers: int) -> ScalePlan:
    g = parse(text)
    x = value_named(g, target)
    plan = plan_scale(g, x)
    assert isinstance(plan, ScalePlan), f"refused: {plan}"
    assert plan.absorber == absorber
    assert len(plan.consumers) == consumers
    xs = _inputs(g)
    want = run(g, *xs)
    before = str(g)
    s = torch.rand(plan.channels, generator=torch.Generator().manual_seed(7)) * 3 + 0.25
    plan.apply(g, s)
    verify(g)
    assert str(g) != before
    for a, e in zip(run(g, *xs), want):
        assert_close(a, e, rtol=1e-5, rel_to_scale=True)
    return plan


def check_refused(text: str, target: str, reason: str, detail: str = "") -> Refusal:
    g = parse(text)
    r = plan_scale(g, value_named(g, target))
    assert isinstance(r, Refusal), f"expected a refusal ({reason}), got a plan into {r.absorber}"
    assert r.reason == reason, str(r)
    assert detail in r.detail, str(r)
    return r


# ---- legal moves ------------------------------------------------------------------------------
LN_QKV = """graph @g(%x: f32[B,5,8]) -> (f32[B,5,8], f32[B,5,8], f32[B,5,8]) {
  %0: f32[B,5,8] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,5,8] = linear(%0, #wq, #bq)
  %2: f32[B,5,8] = linear(%0, #wk, _)
  %3: f32[B,5,8] = linear(%0, #wv, #bv)
  return %1, %2, %3
}
""" + _consts(g="f32[8]", b="f32[8]", wq="f32[8,8]", bq="f32[8]", wk="f32[8,8]", wv="f32[8,8]", bv="f32[8]")


def test_layernorm_absorbs_for_q_k_v_together() -> None:
    plan = check_legal(LN_QKV, "%0", "norm", 3)
    assert [e.kind for e in plan.edits] == ["norm"]


RMS_NO_WEIGHT = """graph @g(%x: f32[B,8]) -> (f32[B,6]) {
  %0: f32[B,8] = rms_norm[axis=-1, eps=1e-6](%x)
  %1: f32[B,6] = linear(%0, #w, _)
  return %1
}
""" + _consts(w="f32[6,8]")


def test_rmsnorm_without_weight_gets_one() -> None:
    g = parse(RMS_NO_WEIGHT)
    check_legal(RMS_NO_WEIGHT, "%0", "norm", 1)
    plan = plan_scale(g, value_named(g, "%0"))
    plan.apply(g, torch.full((8,), 2.0))
    assert len(g.nodes[0].inputs) == 2 and g.nodes[0].inputs[1].is_const


LINEAR_ROWS = """graph @g(%x: f32[B,4]) -> (f32[B,3]) {
  %0: f32[B,8] = linear(%x, #w1, #b1)
  %1: f32[B,3] = linear(%0, #w2, #b2)
  return %1
}
""" + _consts(w1="f32[8,4]", b1="f32[8]", w2="f32[3,8]", b2="f32[3]")


def test_previous_linear_absorbs_rows_and_bias() -> None:
    check_legal(LINEAR_ROWS, "%0", "linear", 1)


RELU_BIAS = """graph @g(%x: f32[B,4]) -> (f32[B,3]) {
  %0: f32[B,8] = linear(%x, #w1, _)
  %1: f32[B,8] = add(%0, #c)
  %2: f32[B,8] = relu(%1)
  %3: f32[B,3] = linear(%2, #w2, _)
  return %3
}
""" + _consts(w1="f32[8,4]", c="f32[8]", w2="f32[3,8]")


def test_relu_and_constant_bias_on_the_path() -> None:
    plan = check_legal(RELU_BIAS, "%2", "linear", 1)
    assert plan.positive_only
    assert sorted(e.kind for e in plan.edits) == ["add_const", "linear"]
    g = parse(RELU_BIAS)
    with pytest.raises(ValueError, match="> 0"):
        plan_scale(g, value_named(g, "%2")).apply(g, -torch.ones(8))


ATTN = """graph @g(%x: f32[2,5,8]) -> (f32[2,5,8]) {
  %0: f32[2,5,8] = linear(%x, #wq, _)
  %1: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%0)
  %2: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%1)
  %3: f32[2,5,8] = linear(%x, #wk, _)
  %4: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%3)
  %5: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%4)
  %6: f32[2,5,8] = linear(%x, #wv, #bv)
  %7: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%6)
  %8: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%7)
  %9: f32[2,2,5,4] = sdpa[causal=true](%2, %5, %8)
  %10: f32[2,5,2,4] = transpose[perm=[0, 2, 1, 3]](%9)
  %11: f32[2,5,8] = reshape[shape=[2, 5, 8]](%10)
  %12: f32[2,5,8] = linear(%11, #wo, #bo)
  return %12
}
""" + _consts(wq="f32[8,8]", wk="f32[8,8]", wv="f32[8,8]", bv="f32[8]", wo="f32[8,8]", bo="f32[8]")


def test_v_projection_absorbs_through_attention() -> None:
    plan = check_legal(ATTN, "%11", "v_proj", 1)
    assert plan.edits[0].node.outputs[0].shape[-1] == 8


FUSED_QKV = """graph @g(%x: f32[2,5,8]) -> (f32[2,5,8]) {
  %0: f32[2,5,24] = linear(%x, #wqkv, #bqkv)
  %1: f32[2,5,8], %2: f32[2,5,8], %3: f32[2,5,8] = split[axis=2, sizes=[8, 8, 8]](%0)
  %4: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%1)
  %5: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%4)
  %6: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%2)
  %7: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%6)
  %8: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%3)
  %9: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%8)
  %10: f32[2,2,5,4] = sdpa(%5, %7, %9)
  %11: f32[2,5,2,4] = transpose[perm=[0, 2, 1, 3]](%10)
  %12: f32[2,5,8] = reshape[shape=[2, 5, 8]](%11)
  %13: f32[2,5,8] = linear(%12, #wo, _)
  return %13
}
""" + _consts(wqkv="f32[24,8]", bqkv="f32[24]", wo="f32[8,8]")


def test_fused_qkv_split_scales_only_the_v_rows() -> None:
    plan = check_legal(FUSED_QKV, "%12", "v_proj", 1)
    idx = plan.edits[0].index
    assert (idx[:16] == -1).all() and (idx[16:] >= 0).all()


GATED = """graph @g(%x: f32[B,8]) -> (f32[B,8]) {
  %0: f32[B,8] = rms_norm[axis=-1, eps=1e-6](%x, #n)
  %1: f32[B,16] = linear(%0, #wg, _)
  %2: f32[B,16] = silu(%1)
  %3: f32[B,16] = linear(%0, #wu, _)
  %4: f32[B,16] = mul(%2, %3)
  %5: f32[B,8] = linear(%4, #wd, _)
  return %5
}
""" + _consts(n="f32[8]", wg="f32[16,8]", wu="f32[16,8]", wd="f32[8,16]")


def test_gated_mlp_down_input_goes_into_up() -> None:
    plan = check_legal(GATED, "%4", "gated_up", 1)
    assert plan.edits[0].node.inputs[1].shape == (16, 8)


def test_gated_mlp_input_norm_with_gate_and_up() -> None:
    check_legal(GATED, "%0", "norm", 2)


CONST_MUL = """graph @g(%x: f32[B,8]) -> (f32[B,6]) {
  %0: f32[B,8] = gelu(%x)
  %1: f32[B,8] = mul(%0, #c)
  %2: f32[B,6] = linear(%1, #w, _)
  return %2
}
""" + _consts(c="f32[8]", w="f32[6,8]")


def test_explicit_per_channel_mul_absorbs() -> None:
    check_legal(CONST_MUL, "%1", "const", 1)


MOE = """graph @g(%x: f32[6,8]) -> (f32[6,8]) {
  %0: f32[6,8] = rms_norm[axis=-1, eps=1e-6](%x, #n)
  %1: f32[6,8] = moe[top_k=2](%0, #r, #wg, #wu, #wd)
  return %1
}
""" + _consts(n="f32[8]", r="f32[4,8]", wg="f32[4,16,8]", wu="f32[4,16,8]", wd="f32[4,8,16]")


def test_moe_router_and_every_expert_are_compensated() -> None:
    g = parse(MOE)
    before = {i: g.nodes[1].inputs[i].const.clone() for i in (1, 2, 3, 4)}
    check_legal(MOE, "%0", "norm", 1)
    plan = plan_scale(g, value_named(g, "%0"))
    s = torch.linspace(0.5, 2.0, 8)
    plan.apply(g, s)
    moe = g.nodes[1]
    for i in (1, 2, 3):
        assert torch.allclose(moe.inputs[i].const, before[i] * s), i
    assert torch.equal(moe.inputs[4].const, before[4])   # w_down is not a consumer of x


# ---- refusals ---------------------------------------------------------------------------------
def test_refused_through_gelu_and_silu() -> None:
    r = check_refused(CONST_MUL.replace("%1: f32[B,8] = mul(%0, #c)", "%1: f32[B,8] = relu(%0)"),
                      "%1", "through_gelu", "gelu")
    assert len(r.consumers) == 1
    check_refused(GATED.replace("%4: f32[B,16] = mul(%2, %3)", "%4: f32[B,16] = silu(%3)"),
                  "%4", "through_silu", "silu")


POST_LN = """graph @g(%x: f32[B,8]) -> (f32[B,8]) {
  %0: f32[B,8] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,8] = linear(%0, #w, _)
  %2: f32[B,8] = add(%1, %0)
  return %2
}
""" + _consts(g="f32[8]", b="f32[8]", w="f32[8,8]")


def test_refused_post_ln_residual() -> None:
    r = check_refused(POST_LN, "%0", "post_ln_residual", "residual add")
    assert [n.op for n in r.consumers] == ["linear"]


def test_refused_non_linear_consumer_and_graph_output() -> None:
    check_refused(LINEAR_ROWS.replace("%1: f32[B,3] = linear(%0, #w2, #b2)\n  return %1",
                                      "%1: f32[B,3] = linear(%0, #w2, #b2)\n  %2: f32[B,8] = relu(%0)\n"
                                      "  return %1, %2").replace("-> (f32[B,3])", "-> (f32[B,3], f32[B,8])"),
                  "%0", "non_linear_consumer", "relu")
    check_refused(LINEAR_ROWS.replace("return %1", "return %1, %0").replace("-> (f32[B,3])", "-> (f32[B,3], f32[B,8])"),
                  "%0", "graph_output")


def test_refused_non_const_weight_and_graph_input() -> None:
    text = """graph @g(%x: f32[B,8], %w: f32[6,8]) -> (f32[B,6]) {
  %0: f32[B,8] = relu(%x)
  %1: f32[B,6] = linear(%0, %w, _)
  return %1
}
"""
    check_refused(text, "%0", "non_const_weight")
    check_refused(LINEAR_ROWS, "%x", "graph_input")


def test_refused_shared_intermediate() -> None:
    text = """graph @g(%x: f32[B,4]) -> (f32[B,8]) {
  %0: f32[B,8] = linear(%x, #w1, _)
  %1: f32[B,8] = relu(%0)
  %2: f32[B,8] = linear(%1, #w2, _)
  %3: f32[B,8] = add(%2, %0)
  return %3
}
""" + _consts(w1="f32[8,4]", w2="f32[8,8]")
    check_refused(text, "%1", "shared_intermediate", "add")


GQA = ATTN.replace("""  %6: f32[2,5,8] = linear(%x, #wv, #bv)
  %7: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%6)
  %8: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%7)
  %9: f32[2,2,5,4] = sdpa[causal=true](%2, %5, %8)""", """  %6: f32[2,5,4] = linear(%x, #wv, #bv)
  %7: f32[2,5,1,4] = reshape[shape=[2, 5, 1, 4]](%6)
  %8: f32[2,1,5,4] = transpose[perm=[0, 2, 1, 3]](%7)
  %9: f32[2,1,1,5,4] = unsqueeze[axes=[2]](%8)
  %10: f32[2,1,2,5,4] = expand[shape=[2, 1, 2, 5, 4]](%9)
  %11: f32[2,2,5,4] = reshape[shape=[2, 2, 5, 4]](%10)
  %12: f32[2,2,5,4] = sdpa[causal=true](%2, %5, %11)""").replace("""  %10: f32[2,5,2,4] = transpose[perm=[0, 2, 1, 3]](%9)
  %11: f32[2,5,8] = reshape[shape=[2, 5, 8]](%10)
  %12: f32[2,5,8] = linear(%11, #wo, #bo)
  return %12""", """  %13: f32[2,5,2,4] = transpose[perm=[0, 2, 1, 3]](%12)
  %14: f32[2,5,8] = reshape[shape=[2, 5, 8]](%13)
  %15: f32[2,5,8] = linear(%14, #wo, #bo)
  return %15""").replace("#wv = const f32[8,8]", "#wv = const f32[4,8]").replace("#bv = const f32[8]", "#bv = const f32[4]")


def test_refused_gqa_shared_v() -> None:
    check_refused(GQA, "%14", "gqa_shared_v", "expand")
    native = """graph @g(%x: f32[2,5,8]) -> (f32[2,5,8]) {
  %0: f32[2,5,8] = linear(%x, #wq, _)
  %1: f32[2,5,2,4] = reshape[shape=[2, 5, 2, 4]](%0)
  %2: f32[2,2,5,4] = transpose[perm=[0, 2, 1, 3]](%1)
  %3: f32[2,5,4] = linear(%x, #wk, _)
  %4: f32[2,5,1,4] = reshape[shape=[2, 5, 1, 4]](%3)
  %5: f32[2,1,5,4] = transpose[perm=[0, 2, 1, 3]](%4)
  %6: f32[2,5,4] = linear(%x, #wv, _)
  %7: f32[2,5,1,4] = reshape[shape=[2, 5, 1, 4]](%6)
  %8: f32[2,1,5,4] = transpose[perm=[0, 2, 1, 3]](%7)
  %9: f32[2,2,5,4] = sdpa[gqa=true](%2, %5, %8)
  %10: f32[2,5,2,4] = transpose[perm=[0, 2, 1, 3]](%9)
  %11: f32[2,5,8] = reshape[shape=[2, 5, 8]](%10)
  %12: f32[2,5,8] = linear(%11, #wo, _)
  return %12
}
""" + _consts(wq="f32[8,8]", wk="f32[4,8]", wv="f32[4,8]", wo="f32[8,8]")
    check_refused(native, "%11", "gqa_shared_v", "shares")


def test_consumer_groups_and_explicit_mul() -> None:
    g = parse(POST_LN)
    x = value_named(g, "%0")
    assert consumer_groups(g) == [x]
    r = plan_scale(g, x)
    xs = _inputs(g)
    want = run(g, *xs)
    mul = apply_explicit(g, x, r.consumers, torch.linspace(0.5, 4.0, 8))
    verify(g)
    assert mul.op == "mul" and g.nodes.index(mul) == 1
    assert any(n.op == "add" and n.inputs[1] is x for n in g.nodes)   # the residual keeps x
    assert_close(run(g, *xs)[0], want[0], rtol=1e-5, rel_to_scale=True)


@pytest.mark.parametrize("mul", [True, False])
def test_constant_added_to_a_one_channel_tensor_is_a_broadcast_refusal(mul: bool) -> None:
    # x[..., :1] (* 2) + bias[C] feeding a linear: the add's other operand carries one channel,
    # so no per-channel factor moves into it. smooth / awq_scales widened the 2.0 into a [C]
    # vector (a VerifyError after the pass) or crashed inside torch.
    lines = ["%0: f32[2,5,1] = slice[axes=[2], ends=[1], starts=[0]](%x)"]
    if mul:
        lines.append("%1: f32[2,5,1] = mul(%0, #two)")
    n = len(lines)
    lines += [f"%{n}: f32[2,5,8] = add(%{n - 1}, #b)", f"%{n + 1}: f32[2,5,8] = linear(%{n}, #w, _)",
              f"%{n + 2}: f32[2,5,8] = relu(%{n + 1})"]
    text = ("graph @g(%x: f32[2,5,8]) -> (f32[2,5,8]) {\n" + "".join(f"  {ln}\n" for ln in lines) +
            f"  return %{n + 2}\n}}\n#two = const f32[] 2.0\n" + _consts(b="f32[8]", w="f32[8,8]"))
    check_refused(text, f"%{n}", "broadcast")
