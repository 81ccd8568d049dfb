"""quant_weights input handling: option values (pipeline strings and direct calls), override
keys that match nothing, calibration generators, one-signed groups and tied weights."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir.errors import ScalefoldError
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.awq import fake_quant_int
from scalefold.passes.quant_weights import quant_weights
from scalefold.passes.wq_int import int_dequantize, int_quantize
from scalefold.runtime.interp import run

MLP = """graph @mlp(%x: f32[B,64]) -> (f32[B,64]) {
  %0: f32[B,64] = linear(%x, #w0)
  %1: f32[B,64] = relu(%0)
  %2: f32[B,64] = linear(%1, #w1)
  return %2
}
#w0 = const f32[64,64] randn(seed=1, std=0.15)
#w1 = const f32[64,64] randn(seed=2, std=0.15)"""

CAL = [torch.randn(16, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _codes(g) -> list[str]:
    return [n.inputs[1].dtype.name for n in g.nodes if n.op == "qlinear"]


@pytest.mark.parametrize("word,want", [("false", "u4"), ("False", "u4"), ("no", "u4"), ("true", "i4"), ("True", "i4")])
def test_bare_word_booleans(word: str, want: str) -> None:
    q = PassManager(f"quant_weights(format=int4, group=32, sym={word})").run(parse(MLP))
    assert _codes(q) == [want, want]


@pytest.mark.parametrize("spec,msg", [
    ("quant_weights(group=abc)", "option group must be int, got 'abc'"),
    ("quant_weights(group=32.5)", "option group must be int, got 32.5"),
    ("quant_weights(sym=maybe)", "option sym must be bool, got 'maybe'"),
    ("quant_weights(budget=abc)", "option budget must be float or none"),
    ("quant_weights(sequential=perhaps)", "option sequential must be bool"),
    ("quant_weights(group=64, group=32)", "option group given twice"),
])
def test_bad_option_values_name_the_option(spec: str, msg: str) -> None:
    with pytest.raises(ScalefoldError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        PassManager(spec, calibration=CAL)


def test_unknown_option_message_leaves_out_the_calibration_data() -> None:
    big = [torch.randn(64, 64) for _ in range(8)]
    with pytest.raises(ScalefoldError) as e:
        PassManager("quant_weights(formt=int4)", calibration=big)
    assert "formt" in str(e.value) and len(str(e.value)) < 300


@pytest.mark.parametrize("kw,msg", [
    (dict(group="x"), "group must be an integer"),
    (dict(group=-2), "group must be >= 0"),
    (dict(sym="sure"), "sym must be true or false"),
    (dict(method="awq", grid=0), "grid must be >= 1"),
    (dict(format="fp4_e2m1", method="search", points=1), "points must be >= 2"),
    (dict(budget="abc"), "budget must be a positive number"),
    (dict(budget=float("nan"), mixed="int8,float"), "budget must be a positive number"),
    (dict(budget=float("inf")), "budget must be a positive number"),
    (dict(budget=10 ** 400), "budget must be a positive number"),
    (dict(budget=5, mixed=None), "mixed must name formats"),
    (dict(overrides={"w0": {"group": "x"}}), "override for 'w0': group must be an integer"),
    (dict(overrides={"w0": {"sym": "x"}}), "override for 'w0': sym must be true or false"),
    (dict(overrides="re:([=float"), "is not a valid pattern"),
])
def test_direct_call_checks(kw: dict, msg: str) -> None:
    with pytest.raises(ScalefoldError, match=msg):
        quant_weights(parse(MLP), CAL, **kw)


@pytest.mark.parametrize("ovr", ["lm_head=float", "5=float", "re:^nomatch$=float", "w9=int8"])
def test_override_matching_nothing_is_an_error(ovr: str) -> None:
    with pytest.raises(ScalefoldError, match="matches no quantisable layer"):
        quant_weights(parse(MLP), None, overrides=ovr)
    # the same keys that do match pass (constant names here are w0 / w1; index 1 exists)
    q = quant_weights(parse(MLP), None, overrides="w1=float,0=int8")
    assert [n.op for n in q.nodes if n.op in ("linear", "qlinear")] == ["qlinear", "linear"]


def test_calibration_generator_is_read_once_for_every_step() -> None:
    """budget trials, statistics and the AWQ search all read the batches: a generator must
    give them the same data as a list."""
    spec = dict(format="int4", group=32, method="awq", budget=8.5, mixed="int8")
    a = quant_weights(parse(MLP), list(CAL), **spec)
    b = quant_weights(parse(MLP), (c for c in CAL), **spec)
    assert _codes(a) == _codes(b) and "u8" in _codes(a)     # the budget bought an upgrade
    for na, nb in zip(a.nodes, b.nodes):
        for va, vb in zip(na.inputs, nb.inputs):
            if va is not None and va.is_const:
                assert torch.equal(va.const, vb.const)


@pytest.mark.parametrize("bits,group", [(8, 32), (4, 32), (4, 4), (8, 1)])
def test_one_signed_groups_quantise_like_symmetric_or_better(bits: int, group: int) -> None:
    """A group whose weights are all positive (or negative) keeps its values: the asymmetric
    range always holds 0, so the zero point is a valid code (it used to clamp to 0 and
    collapse the group)."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand(8, 64, generator=g) * 0.5 + 0.5
    w[::2] *= -1
    codes, delta, zero = int_quantize(w, bits, group)
    deq = int_dequantize(codes, delta, zero, group)
    assert torch.equal(deq, fake_quant_int(w, bits, group))
    qmax = 2 ** bits - 1
    assert float((deq - w).abs().max()) <= float(delta.max()) / 2 * (1 + 1e-5)
    assert int(zero.min()) >= 0 and int(zero.max()) <= qmax
    # a last group of one weight (K = 33, group 32) dequantises to that weight
    w1 = torch.randn(4, 33, generator=g)
    c1, d1, z1 = int_quantize(w1, bits, 32)
    assert torch.allclose(int_dequantize(c1, d1, z1, 32)[:, 32], w1[:, 32], rtol=2.0 ** -bits)


def _positive() -> object:
    g = parse(MLP)
    for n in g.nodes:
        if n.op == "linear":
            n.inputs[1].const = n.inputs[1].const.abs() + 0.5
    return g


def test_one_signed_layer_through_the_pass_and_gptq() -> None:
    x = CAL[0]
    ref = run(_positive(), x)[0]
    for kw in (dict(format="int8", group=32), dict(format="int8", group=32, rounding="gptq"),
               dict(format="int8", group=32, method="awq")):
        y = run(quant_weights(_positive(), CAL, **kw), x)[0]
        assert float((y - ref).norm() / ref.norm()) < 0.01, kw


TIED = """graph @tied(%x: f32[B,32]) -> (f32[B,32]) {
  %0: f32[B,32] = linear(%x, #w)
  %1: f32[B,32] = tanh(%0)
  %2: f32[B,32] = linear(%1, #w)
  %3: f32[B,32] = tanh(%2)
  %4: f32[B,32] = linear(%3, #w)
  return %4
}
#w = const f32[32,32] randn(seed=4, std=0.2)"""


@pytest.mark.parametrize("kw", [dict(format="int4", group=16), dict(format="int4", group=16, method="search"),
                                dict(format="fp4_e2m1", group=16, method="search"), dict(format="int8", group=0),
                                dict(format="fp4_e2m1", group=16), dict(format="fp8_e4m3", group=16),
                                dict(format="fp4_e2m1", group=16, sequential="true", method="search")])
def test_tied_weights_are_quantised_once(kw: dict) -> None:
    """Every use shares the first one's codes, scales and ``wtype`` (the reuse dropped it:
    shared E2M1 codes were a ShapeError, their container being uint8)."""
    cal = [torch.randn(8, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    pm = PassManager([f"quant_weights({', '.join(f'{k}={v}' for k, v in kw.items())})"], calibration=cal)
    q = pm.run(parse(TIED))
    qs = [n for n in q.nodes if n.op == "qlinear"]
    assert len(qs) == 3
    assert all(n.inputs[1] is qs[0].inputs[1] and n.inputs[2] is qs[0].inputs[2] for n in qs)
    assert all(n.attrs.get("wtype") == qs[0].attrs.get("wtype") for n in qs)
    assert pm.counters.as_dict()["quant_weights"]["shared_weight"] == 2
    x = cal[0]
    y, ref = run(q, x)[0], run(parse(TIED), x)[0]
    assert float((y - ref).norm() / ref.norm()) < 0.2


def test_gptq_rounding_is_refused_for_fp_formats() -> None:
    """GPTQ's rounding exists for the integer formats only: with an FP format it did nothing
    while turning the bias correction on."""
    with pytest.raises(ScalefoldError, match="rounding=gptq is for the integer formats"):
        PassManager("quant_weights(format=fp4_e2m1, rounding=gptq)", calibration=CAL).run(parse(MLP))


def test_override_key_given_twice_and_calibration_that_is_not_batches() -> None:
    g = parse(MLP)
    with pytest.raises(ScalefoldError, match="override 'w1' given twice"):
        quant_weights(g.clone(), None, format="int4", overrides="w1=int8,w1=float")
    for bad in (5, {"x": CAL[0]}):
        with pytest.raises(ScalefoldError, match="must be an iterable of batches"):
            quant_weights(g.clone(), bad, format="int4", method="awq")


_SAME_INPUT = """graph @m(%x: f32[B,64]) -> (f32[B,64]) {
  %0: f32[B,64] = layer_norm[eps=1e-05](%x, #g, #b)
  %1: f32[B,64] = linear(%0, #w)
  %2: f32[B,64] = relu(%1)
  %3: f32[B,64] = linear(%0, #w)
  %4: f32[B,64] = mul(%2, %3)
  return %4
}
#g = const f32[64] randn(seed=5, std=0.5)
#b = const f32[64] randn(seed=6, std=0.1)
#w = const f32[64,64] randn(seed=1, std=0.15)"""


@pytest.mark.parametrize("seq", [False, True])
def test_awq_keeps_one_copy_of_a_weight_read_twice_from_one_input(seq: bool) -> None:
    """A weight applied twice to the same activation gets AWQ's one scale once: one rescaled
    constant (keeping its name), one set of codes (AWQ stored identical codes twice)."""
    gen = torch.Generator().manual_seed(0)
    cal = [torch.randn(32, 64, generator=gen) * torch.linspace(0.2, 4, 64) for _ in range(3)]
    pm = PassManager(f"quant_weights(format=int4, group=32, method=awq, sequential={seq})", calibration=cal)
    q = pm.run(parse(_SAME_INPUT))
    qs = [n for n in q.nodes if n.op == "qlinear"]
    assert len(qs) == 2 and qs[0].inputs[1] is qs[1].inputs[1] and qs[0].inputs[1].name == "w.q"
    assert pm.counters["quant_weights"]["shared_weight"] == 1


def test_format_names_in_any_case() -> None:
    """'INT8' in an override and format='INT4' read like 'float' / 'Float' always did."""
    from scalefold.passes.quant_weights import LayerSetting, parse_layer_overrides
    base = LayerSetting("int4", 128, "rtn", False)
    got = parse_layer_overrides("fc1=Float, fc2=INT8, 3=Fp8_E4M3", base)
    assert got[0] == ("fc1", "float")
    assert got[1][1].format == "int8" and got[2][1].format == "fp8_e4m3"
    from scalefold.ir.parser import parse
    from scalefold.passes.quant_weights import quant_weights
    text = """
graph @m(%x: f32[B,32]) -> (f32[B,8]) {
  %0: f32[B,8] = linear(%x, #w)
  return %0
}
#w = const f32[8,32] randn(seed=1, std=0.3)
"""
    a, b = quant_weights(parse(text), None, format="INT4", group=16), quant_weights(parse(text), None, format="int4", group=16)
    assert str(a) == str(b)


def test_option_words_in_any_case() -> None:
    """method / act / rounding / mixed take any case, as format and the booleans did."""
    low = quant_weights(parse(MLP), CAL, format="int4", group=16, method="awq", act="int8", budget=7.0,
                        mixed="int8,float")
    up = quant_weights(parse(MLP), CAL, format="INT4", group=16, method=" AWQ", act="INT8", budget=7.0,
                       mixed="INT8,Float")
    assert str(low) == str(up)
    g1 = quant_weights(parse(MLP), CAL, format="int4", group=16, rounding="GPTQ")
    g2 = quant_weights(parse(MLP), CAL, format="int4", group=16, rounding="gptq")
    assert str(g1) == str(g2)
