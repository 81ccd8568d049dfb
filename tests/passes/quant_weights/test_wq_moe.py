"""quant_weights on MoE experts: the ``qmoe`` op (shape rule, reference = moe on the
dequantised experts) and the pass (moe -> qmoe per format, overrides, clip search, C target,
ONNX export)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from scalefold.api import build_c
from scalefold.codegen.onnx import to_onnx
from scalefold.ir import TensorType
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ScalefoldError, ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.ops.moe_quant import dequant_experts
from scalefold.ir.ops.quant import dequant_weight
from scalefold.ir.parser import parse, parse_type
from scalefold.ir.verify import verify
from scalefold.passes.counters import counting
from scalefold.passes.quant_weights import quant_weights
from scalefold.passes.wq_fp import FP4_FORMATS, fp4_fake, fp8_fake
from scalefold.passes.wq_int import int_dequantize, int_quantize
from scalefold.runtime.interp import run

E, H, I = 4, 40, 24   # H = 40: group 32 leaves a short last group of 8; I = 24 < 32: one group


def ref(op: str, inputs: list, types: list[str | None], **attrs) -> torch.Tensor:
    """Infer the output type, run the reference and check it matches the declared type."""
    od = get_op(op)
    a = od.bind_attrs(attrs)
    tt = [None if t is None else TensorType(d, tuple(t.shape)) for t, d in zip(inputs, types)]
    (out,) = od.infer(tt, a)
    y = od.reference(inputs, a)
    assert y.dtype == out.dtype.container and tuple(y.shape) == out.shape
    return y


def _codes(dtype: str, *shape: int, gen: torch.Generator) -> torch.Tensor:
    if dtype == "f8e4m3":
        return (torch.randn(*shape, generator=gen) * 4).to(torch.float8_e4m3fn)
    lo, hi = {"u4": (0, 16), "i4": (-8, 8), "u8": (0, 256), "i8": (-128, 128), "f4e2m1": (0, 16)}[dtype]
    return torch.randint(lo, hi, shape, generator=gen).to(dt.get(dtype).container)


@pytest.mark.parametrize("code,group,zero,gated", [
    ("u4", 16, True, True), ("i4", 32, False, True), ("u8", 0, True, False), ("i8", 8, False, True),
    ("f4e2m1", 16, False, False), ("f8e4m3", 32, False, True)])
def test_qmoe_reference_is_moe_on_dequantised_experts(code: str, group: int, zero: bool, gated: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, H, generator=gen)
    router = torch.randn(E, H, generator=gen)
    ins: list = [x, router]
    types: list = ["f32", "f32"]
    ws = []
    for n, k in ((I, H), (I, H), (H, I)):
        if not gated and len(ws) == 0:
            ins += [None] * 3
            types += [None] * 3
            ws.append(None)
            continue
        g = 1 if group == 0 else -(-k // group)
        q, s = _codes(code, E, n, k, gen=gen), torch.rand(E, n, g, generator=gen) * 0.05 + 0.01
        z = _codes(code, E, n, g, gen=gen) if zero else None
        ins += [q, s, z]
        types += [code, "f32", code if zero else None]
        # the qlinear formula, expert by expert (group 0 reads the scale as [N])
        ws.append(torch.stack([dequant_weight(q[e], s[e] if group else s[e][:, 0],
                                              None if z is None else (z[e] if group else z[e][:, 0]),
                                              group, code == "f4e2m1") for e in range(E)]))
    wtype = {"f4e2m1": "f4e2m1", "f8e4m3": "f8e4m3"}.get(code)
    y = ref("qmoe", ins, types, top_k=2, gated=gated, group=group, wtype=wtype)
    want = ref("moe", [x, router, *ws], ["f32", "f32"] + ["f32" if w is not None else None for w in ws],
               top_k=2, gated=gated)
    assert torch.equal(y, want)


def test_dequant_experts_reproduces_the_quantiser_bit_for_bit() -> None:
    w = torch.randn(E, I, H)
    codes, deltas, zeros = zip(*(int_quantize(w[e], 4, 32) for e in range(E)))
    got = dequant_experts(dt.to_container(torch.stack(codes), dt.u4), torch.stack(deltas),
                          dt.to_container(torch.stack(zeros), dt.u4), 32, False)
    want = torch.stack([int_dequantize(c, d, z, 32) for c, d, z in zip(codes, deltas, zeros)])
    assert torch.equal(got, want)


# ---- the pass on a Mixtral-style block ---------------------------------------------------------
def block(gated: bool, bias: bool = False) -> str:
    gate = "#wg" if gated else "_"
    ins = "%x: f32[B,S,40]" + (", %rb: f32[4]" if bias else "")
    return f"""
graph @mixtral({ins}) -> (f32[B,S,40]) {{
  %0: f32[B,S,40] = moe[gated={'true' if gated else 'false'}, top_k=2](%x, #router, {gate}, #wu, #wd{', %rb' if bias else ''})
  return %0
}}
#router = const f32[4,40] randn(seed=1, std=0.5)
{'#wg = const f32[4,24,40] randn(seed=2, std=0.3)' if gated else ''}
#wu = const f32[4,24,40] randn(seed=3, std=0.3)
#wd = const f32[4,40,24] randn(seed=4, std=0.3)
"""


# Bound on ||y_q - y|| / ||y||. Each quantised matrix carries a relative RMS error of about
# Δ/√12/σ_w: ~9% for asymmetric int4 g32 on Gaussian weights, ~0.5% int8 per channel, ~3.5% fp8
# (3 mantissa bits), ~10% fp4 e2m1; an expert chains three of them (measured: 0.15 / 0.011 / 0.16 /
# 0.048 gated, a little less ungated).
TOL = {"int4": 0.2, "int8": 0.02, "fp4_e2m1": 0.22, "fp8_e4m3": 0.07}


@pytest.mark.parametrize("fmt,group,sym", [("int4", 32, False), ("int8", 0, True), ("fp4_e2m1", 16, False),
                                           ("fp8_e4m3", 32, False)])
@pytest.mark.parametrize("gated", [True, False])
def test_pass_quantises_experts_close_to_float_and_c_matches(fmt: str, group: int, sym: bool, gated: bool) -> None:
    g = parse(block(gated, bias=not gated), verify=True)
    xs = [torch.randn(2, 5, H)] + ([] if gated else [torch.randn(E) * 0.5])
    want = run(g, *xs)[0]
    with counting() as c:
        q = quant_weights(g, None, format=fmt, group=group, sym=sym)
    verify(q)
    assert c.get("quant_weights", f"moe_{fmt}") == 1
    (n,) = q.nodes
    assert n.op == "qmoe" and n.attrs["group"] == group and n.inputs[1].name == "router"
    assert n.inputs[1].dtype is dt.f32                      # the router stays float
    assert n.inputs[5].name == "wu.q" and n.inputs[6].name == "wu.scale"
    assert (n.inputs[2] is not None) == gated
    got = run(q, *xs)[0]
    err = float((got - want).norm() / want.norm())
    assert 0 < err < TOL[fmt], err
    assert torch.equal(build_c(q)(*xs), got)


def test_pass_weights_equal_the_linear_quantisers() -> None:
    """Each expert matrix is quantised exactly as a linear weight of that format would be."""
    g = parse(block(True), verify=True)
    wd = next(v for v in g.constants() if v.name == "wd").const
    q = quant_weights(g, None, format="fp4_e2m1", group=16)
    n = q.nodes[0]
    got = dequant_experts(n.inputs[8].const, n.inputs[9].const, None, 16, True)
    want = torch.stack([fp4_fake(wd[e], FP4_FORMATS["e2m1"], 16)[0] for e in range(E)])
    assert torch.equal(got, want)
    q8 = quant_weights(parse(block(True)), None, format="fp8_e4m3", group=32)
    n8 = q8.nodes[0]
    got8 = dequant_experts(n8.inputs[8].const, n8.inputs[9].const, None, 32, False)
    assert torch.equal(got8, torch.stack([fp8_fake(wd[e], 32) for e in range(E)]))


def test_overrides_match_expert_weight_names() -> None:
    with counting() as c:
        q = quant_weights(parse(block(True)), None, format="int4", group=32, overrides="wd=float")
    assert [n.op for n in q.nodes] == ["moe"] and c.get("quant_weights", "kept_float") == 1
    with counting() as c:
        q = quant_weights(parse(block(True)), None, format="int4", group=32,
                          overrides={"re:^w[gud]$": {"format": "int8", "group": 0}})
    assert c.get("quant_weights", "moe_int8") == 1 and c.get("quant_weights", "moe_int4") == 0
    assert q.nodes[0].inputs[2].dtype is dt.u8 and q.nodes[0].attrs["group"] == 0
    # an index selects a linear, never a moe: here there is no linear 0 to select
    with pytest.raises(ScalefoldError, match="override 0 matches no quantisable layer"):
        quant_weights(parse(block(True)), None, format="int4", group=32, overrides={0: "float"})


def test_search_clips_gate_and_up_with_the_gram_of_x_down_stays_rtn() -> None:
    text = block(True)
    cal = [(torch.randn(4, 6, H),) for _ in range(2)]
    rtn = quant_weights(parse(text), None, format="int4", group=32).nodes[0]
    with counting() as c:
        srch = quant_weights(parse(text), cal, format="int4", group=32, method="search").nodes[0]
    assert c.get("quant_weights", "moe_int4") == 1
    assert torch.equal(srch.inputs[8].const, rtn.inputs[8].const)       # down: RTN
    assert not torch.equal(srch.inputs[2].const, rtn.inputs[2].const)   # gate: clipped
    # the clip search minimises the Gram-weighted error of gate's output, so it does not lose to RTN
    g = parse(text)
    wg = next(v for v in g.constants() if v.name == "wg").const
    x = torch.cat([b[0].reshape(-1, H) for b in cal])
    def out_err(n) -> float:
        w = dequant_experts(n.inputs[2].const, n.inputs[3].const, n.inputs[4].const, 32, False)
        return float(((x @ (w - wg).transpose(1, 2)) ** 2).sum())
    assert out_err(srch) < out_err(rtn)


def test_linear_and_moe_together_and_onnx_export() -> None:
    text = """
graph @m(%x: f32[B,40]) -> (f32[B,40]) {
  %0: f32[B,40] = linear(%x, #wi)
  %1: f32[B,40] = moe[top_k=2](%0, #router, #wg, #wu, #wd)
  return %1
}
#wi = const f32[40,40] randn(seed=5, std=0.2)
#router = const f32[4,40] randn(seed=1, std=0.5)
#wg = const f32[4,24,40] randn(seed=2, std=0.3)
#wu = const f32[4,24,40] randn(seed=3, std=0.3)
#wd = const f32[4,40,24] randn(seed=4, std=0.3)
"""
    with counting() as c:
        q = quant_weights(parse(text), None, format="int8", group=16)
    assert [n.op for n in q.nodes] == ["qlinear", "qmoe"]
    assert c.get("quant_weights", "int8") == 1 and c.get("quant_weights", "moe_int8") == 1
    x = torch.randn(7, H)
    want = run(q, x)[0]
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    sess = ort.InferenceSession(to_onnx(q).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


# ---- shape errors ------------------------------------------------------------------------------
def _types(**change) -> list:
    t = {"x": "f32[3,40]", "router": "f32[4,40]", "gq": "u4[4,24,40]", "gs": "f32[4,24,2]", "gz": "u4[4,24,2]",
         "uq": "u4[4,24,40]", "us": "f32[4,24,2]", "uz": None, "dq": "u4[4,40,24]", "ds": "f32[4,40,1]",
         "dz": None, "rb": None}
    t.update(change)
    return [None if v is None else parse_type(v) for v in t.values()]


@pytest.mark.parametrize("change,attrs,msg", [
    ({}, {}, None),
    ({"uq": "u4[4,24,41]"}, {}, "up_q must be"),
    ({"gs": "f32[4,24,3]"}, {}, "gate_s must be"),
    ({"ds": "f32[4,40,2]"}, {}, "down_s must be"),
    ({"gz": "u4[4,24,1]"}, {}, "gate_z shape"),
    ({"dq": "i4[4,40,24]"}, {}, "share one code dtype"),
    ({"gq": None, "gs": None, "gz": None}, {}, "gated=true needs"),
    ({}, {"gated": False}, "gated=false takes no"),
    ({"gq": "f4e2m1[4,24,40]", "uq": "f4e2m1[4,24,40]", "dq": "f4e2m1[4,40,24]", "gz": None}, {}, "wtype"),
    ({}, {"wtype": "i4"}, "does not match"),
    ({"gq": "f32[4,24,40]", "uq": "f32[4,24,40]", "dq": "f32[4,40,24]", "gz": None}, {}, "must be one of"),
    ({"us": None}, {}, "up_s is required"),
    ({"router": "f32[5,40]"}, {}, "experts"),
    ({"x": "f32[3,39]"}, {}, r"gate_q must be \[4,24,39\]"),
    ({"x": "f32[3,39]", "gq": None, "gs": None, "gz": None, "uq": "u4[4,24,39]", "us": "f32[4,24,2]",
      "dq": "u4[4,39,24]", "ds": "f32[4,39,1]"}, {"gated": False}, "hidden size"),
    ({}, {"top_k": 5}, "top_k"),
    ({"rb": "f32[3]"}, {}, "router_bias"),
])
def test_qmoe_shape_errors(change: dict, attrs: dict, msg: str | None) -> None:
    od = get_op("qmoe")
    a = od.bind_attrs({"top_k": 2, "group": 32, **attrs})
    ins = _types(**change)
    if msg is None:
        (out,) = od.infer(ins, a)
        assert out.shape == (3, 40) and out.dtype is dt.f32
        return
    with pytest.raises(ShapeError, match=msg):
        od.infer(ins, a)


def test_triton_target_runs_qmoe() -> None:
    from scalefold.api import build_triton
    q = quant_weights(parse(block(True)), None, format="int4", group=32)
    x = torch.randn(3, 2, H)
    assert torch.equal(build_triton(q, device="cpu")(x).cpu(), run(q, x)[0])


def test_cost_counts_packed_codes() -> None:
    od = get_op("qmoe")
    a = od.bind_attrs({"top_k": 2, "group": 32})
    ins = _types(x="f32[100,40]", uz="u4[4,24,2]", dz="u4[4,40,1]")
    cost = od.cost(ins, od.infer(ins, a), a)
    codes = 3 * E * I * H // 2                          # three u4 matrices, two codes per byte
    params = (E * I * 2 * 2 + E * H * 1) * (4 + 0.5)    # f32 scales + u4 zeros, all present
    io = (100 * H * 2 + E * H) * 4                      # x, y, router
    assert float(cost.bytes) == pytest.approx(codes + params + io)
    moe = get_op("moe")
    fl = [parse_type(s) for s in ("f32[100,40]", "f32[4,40]", "f32[4,24,40]", "f32[4,24,40]", "f32[4,40,24]")]
    ma = moe.bind_attrs({"top_k": 2})
    # int4 g32 experts: 4 bits + (32 + 4) / 32 per weight, about a sixth of f32's 32 bits
    assert float(cost.bytes) - io < (float(moe.cost(fl, moe.infer(fl, ma), ma).bytes) - io) / 5


def test_onnx_export_of_runtime_codes_names_the_node() -> None:
    from scalefold.ir import Graph
    from scalefold.ir.errors import ScalefoldError
    g = Graph("t")
    x = g.add_input("f32[3,8]", "x")
    uq = g.add_input("u4[2,6,8]", "uq")                 # codes arriving at run time
    dq = g.add_const(torch.randint(0, 16, (2, 8, 6)).to(torch.uint8), "u4")
    y = g.add("qmoe", [x, g.add_const(torch.randn(2, 8)), None, None, None, uq,
                       g.add_const(torch.rand(2, 6, 1)), None, dq, g.add_const(torch.rand(2, 8, 1))],
              {"top_k": 1, "gated": False})
    g.set_outputs([y])
    with pytest.raises(ScalefoldError, match=r"qmoe.*up codes/scales/zeros must be constants"):
        to_onnx(g)


@pytest.mark.parametrize("budget", [None, 7.0])
def test_act_format_with_saved_stats_on_a_moe_graph(budget: float | None) -> None:
    """act_format reads the activation ranges before the experts become qmoe, so saved stats
    of the float graph serve (they used to be called stale); same graph as with the batches."""
    from scalefold.passes.calibrate import calibrate
    text = """
graph @m(%x: f32[B,40]) -> (f32[B,40]) {
  %0: f32[B,40] = linear(%x, #wi)
  %1: f32[B,40] = moe[top_k=2](%0, #router, #wg, #wu, #wd)
  %2: f32[B,40] = linear(%1, #wo)
  return %2
}
#wi = const f32[40,40] randn(seed=5, std=0.2)
#router = const f32[4,40] randn(seed=1, std=0.5)
#wg = const f32[4,24,40] randn(seed=2, std=0.3)
#wu = const f32[4,24,40] randn(seed=3, std=0.3)
#wd = const f32[4,40,24] randn(seed=4, std=0.3)
#wo = const f32[40,40] randn(seed=6, std=0.2)
"""
    cal = [(torch.randn(6, H),) for _ in range(3)]
    opts = dict(format="int4", group=16, act_format="fp8_e4m3", bias_correct=False,
                **({"budget": budget, "sensitivity": "layer"} if budget else {}))
    st = calibrate(parse(text), cal, gram=True, progress=False)
    a = quant_weights(parse(text), st, **opts)
    b = quant_weights(parse(text), cal, **opts)
    assert [n.op for n in a.nodes].count("qmoe") == 1 and "quantize" in [n.op for n in a.nodes]
    x = torch.randn(5, H)
    assert torch.equal(run(a, x)[0], run(b, x)[0])


def test_a_linear_reading_a_moe_output_keeps_its_calibration() -> None:
    """The moe rewrite gave the linear after it a new input Value, and its Gram matrix was
    looked up by the old one: int search / GPTQ said calibration was missing, and the FP
    search silently ran without it. The linear's codes must not depend on whether the moe
    before it is quantised (statistics come from the float graph either way)."""
    text = """graph @m(%x: f32[B,40]) -> (f32[B,40]) {
  %0: f32[B,40] = moe[top_k=2](%x, #router, #wg, #wu, #wd)
  %1: f32[B,40] = linear(%0, #wo)
  return %1
}
#router = const f32[4,40] randn(seed=1, std=0.5)
#wg = const f32[4,24,40] randn(seed=2, std=0.3)
#wu = const f32[4,24,40] randn(seed=3, std=0.3)
#wd = const f32[4,40,24] randn(seed=4, std=0.3)
#wo = const f32[40,40] randn(seed=6, std=0.2)"""
    cal = [(torch.randn(6, 40, generator=torch.Generator().manual_seed(i)),) for i in range(3)]
    for kw in (dict(format="int4", group=16, method="search"), dict(format="int4", group=16, rounding="gptq"),
               dict(format="fp8_e4m3", method="search")):
        q = quant_weights(parse(text), cal, bias_correct=False, **kw)
        kept = quant_weights(parse(text), cal, bias_correct=False, overrides={"wg": "float"}, **kw)
        assert any(n.op == "qmoe" for n in q.nodes) and not any(n.op == "qmoe" for n in kept.nodes)
        a, b = ([n for n in g.nodes if n.op == "qlinear"][0] for g in (q, kept))
        assert torch.equal(a.inputs[1].const, b.inputs[1].const) and torch.equal(a.inputs[2].const, b.inputs[2].const)
