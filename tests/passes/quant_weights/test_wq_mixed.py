"""quant_weights per-layer overrides and mixed precision under a size budget."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ScalefoldError
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.runtime.interp import run

MLP = """graph @mlp(%x: f32[B,64]) -> (f32[B,64]) {
  %0: f32[B,64] = linear(%x, #w0)
  %1: f32[B,64] = relu(%0)
  %2: f32[B,64] = linear(%1, #w1)
  %3: f32[B,64] = relu(%2)
  %4: f32[B,64] = linear(%3, #w2)
  return %4
}
#w0 = const f32[64,64] randn(seed=1, std=0.15)
#w1 = const f32[64,64] randn(seed=2, std=0.15)
#w2 = const f32[64,64] randn(seed=3, std=0.15)"""


def _graph() -> object:
    g = parse(MLP)
    # the middle layer is hard for int4: a few huge weights stretch every group's range
    w1 = g.nodes[2].inputs[1]
    w = w1.const.clone()
    w[:, ::9] *= 25
    w1.const = w
    for i, n in enumerate(g.nodes[::2]):
        n.inputs[1].name = f"layer{i}.weight"
    return g


CAL = [torch.randn(32, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _formats(q) -> list[str]:
    return [n.inputs[1].dtype.name if n.op == "qlinear" else "float" for n in q.nodes if n.op in ("qlinear", "linear")]


def _bits(q) -> float:
    tot = n = 0
    for node in q.nodes:
        if node.op == "qlinear":
            w, s = node.inputs[1], node.inputs[2]
            z = node.inputs[3] if len(node.inputs) > 3 else None
            tot += w.const.numel() * w.dtype.bits + s.const.numel() * 32 + (z.const.numel() * z.dtype.bits if z is not None else 0)
            n += w.const.numel()
        elif node.op == "linear":
            tot += node.inputs[1].const.numel() * 32
            n += node.inputs[1].const.numel()
    return tot / n


def test_overrides_by_name_and_index() -> None:
    g = _graph()
    q = PassManager('quant_weights(format=int4, group=32, overrides={"layer1": "int8", 2: "float"})').run(g)
    assert _formats(q) == ["u4", "u8", "float"]
    q = PassManager('quant_weights(format=int4, group=32, overrides="re:layer[02]=fp8_e4m3")').run(g)
    assert _formats(q) == ["f8e4m3", "u4", "f8e4m3"]
    with pytest.raises(ScalefoldError, match="override for 'layer1'"):
        PassManager('quant_weights(format=int4, overrides={"layer1": "int5"})').run(g)


@pytest.mark.parametrize("sensitivity", ["output", "layer"])
def test_budget_upgrades_the_sensitive_layer(sensitivity: str) -> None:
    g = _graph()
    base = PassManager("quant_weights(format=int4, group=32)").run(g)
    b4 = _bits(base)
    # room for exactly one int8 layer (int8 g32 costs 8 + 40/32 bits, int4 4 + 36/32)
    budget = (2 * (4 + 36 / 32) + (8 + 40 / 32)) / 3 + 0.01
    pm = PassManager(f"quant_weights(format=int4, group=32, budget={budget}, sensitivity={sensitivity})",
                     calibration=CAL)
    q = pm.run(g)
    assert _formats(q) == ["u4", "u8", "u4"]
    assert pm.counters["quant_weights"]["mixed_int8"] == 1
    assert b4 < _bits(q) <= budget
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(7))
    y = run(g, x)[0]
    err = lambda h: float((run(h, x)[0] - y).norm() / y.norm())
    assert err(q) < err(base)


def test_budget_with_float_option_and_too_small_budget() -> None:
    g = _graph()
    q = PassManager("quant_weights(format=int4, group=32, budget=100, mixed=\"int8,float\")", calibration=CAL).run(g)
    assert _formats(q) == ["float", "float", "float"]        # a budget above 32 bits buys everything
    with pytest.raises(ScalefoldError, match="budget 3.0 bits/weight is below"):
        PassManager("quant_weights(format=int4, group=32, budget=3.0)", calibration=CAL).run(g)
    with pytest.raises(ScalefoldError, match="needs calibration"):
        PassManager("quant_weights(format=int4, budget=6)").run(g)


def test_rtn_pipeline_without_calibration_keeps_names() -> None:
    q = PassManager("quant_weights(format=int4, group=32)").run(_graph())
    names = [n.inputs[1].name for n in q.nodes if n.op == "qlinear"]
    assert names == ["layer0.weight.q", "layer1.weight.q", "layer2.weight.q"]
    assert q.nodes[0].inputs[1].dtype is dt.u4


def test_budget_counts_the_short_last_group() -> None:
    """K = 130 with group 128: every row has two groups (one of 2 weights), so int4 costs
    4 + 2 * 36 / 130 = 4.554 bits per weight, not 4 + 36 / 128. A budget between the two is
    refused, and what a budget buys stays within it when counted from the graph."""
    g = parse(MLP.replace("64", "130"))
    with pytest.raises(ScalefoldError, match=r"need \(4\.554\)"):
        PassManager("quant_weights(format=int4, group=128, budget=4.5)", calibration=[torch.randn(16, 130)]).run(g)
    q = PassManager("quant_weights(format=int4, group=128, budget=4.6)", calibration=[torch.randn(16, 130)]).run(g)
    assert _bits(q) <= 4.6


def test_budget_output_sensitivity_takes_dict_batches() -> None:
    """Calibration batches given as {input name: tensor} (as every other calibrated option takes
    them) for the output-error sensitivity of the budget search."""
    g = _graph()
    cal = [{"x": b} for b in CAL]
    budget = (2 * (4 + 36 / 32) + (8 + 40 / 32)) / 3 + 0.01
    q = PassManager(f"quant_weights(format=int4, group=32, budget={budget})", calibration=cal).run(g)
    assert _formats(q) == ["u4", "u8", "u4"]


def test_override_by_name_holds_for_a_shared_weight_under_awq() -> None:
    """One weight read by two linears (a tied / reused module): AWQ's rescaling gives each use
    its own unnamed constant, so the override is resolved before it (one use used to be
    quantised without a word)."""
    g = parse("""graph @tied(%x: f32[B,64]) -> (f32[B,64]) {
  %0: f32[B,64] = layer_norm[eps=1e-05](%x, #g, #b)
  %1: f32[B,64] = linear(%0, #shared)
  %2: f32[B,64] = relu(%1)
  %3: f32[B,64] = layer_norm[eps=1e-05](%2, #g2, #b2)
  %4: f32[B,64] = linear(%3, #shared)
  %5: f32[B,64] = linear(%4, #w)
  return %5
}
#g = const f32[64] randn(seed=4, std=0.5)
#b = const f32[64] zeros
#g2 = const f32[64] randn(seed=5, std=0.5)
#b2 = const f32[64] zeros
#shared = const f32[64,64] randn(seed=1, std=0.15)
#w = const f32[64,64] randn(seed=2, std=0.15)""")
    g.nodes[1].inputs[1].name = "block.weight"
    for method in ("rtn", "awq"):
        q = PassManager(f'quant_weights(format=int4, group=32, method={method}, overrides="block.weight=float")',
                        calibration=CAL).run(g)
        assert _formats(q) == ["float", "float", "u4"], method


def test_budget_counts_int3_as_stored() -> None:
    """int3 codes and zero points are stored in 4-bit containers: a budget that only 3-bit
    storage would meet is refused (it used to be accepted and exceeded)."""
    g = _graph()
    with pytest.raises(ScalefoldError, match=r"need \(5\.125\)"):
        PassManager("quant_weights(format=int3, group=32, budget=4.2)", calibration=CAL).run(g)
    q = PassManager("quant_weights(format=int3, group=32, budget=5.2)", calibration=CAL).run(g)
    assert _bits(q) <= 5.2


def test_budget_leaves_an_overridden_layer_alone_even_at_the_base_setting() -> None:
    """An override pins its layer, also when it names the base setting."""
    g = _graph()
    budget = (2 * (4 + 36 / 32) + (8 + 40 / 32)) / 3 + 0.01
    free = PassManager(f"quant_weights(format=int4, group=32, budget={budget})", calibration=CAL).run(g)
    assert _formats(free) == ["u4", "u8", "u4"]
    pinned = PassManager(f'quant_weights(format=int4, group=32, budget={budget}, overrides="layer1=int4")',
                         calibration=CAL).run(g)
    assert _formats(pinned)[1] == "u4" and "u8" in _formats(pinned)


def test_awq_leaves_activations_of_float_layers_alone() -> None:
    """Every linear overridden to float: AWQ searches nothing (it used to insert scaling muls and
    rescale weights that stay float)."""
    g = _graph()
    q = PassManager('quant_weights(format=int4, group=32, method=awq, overrides="re:.*=float")',
                    calibration=CAL).run(g)
    assert [n.op for n in q.nodes] == [n.op for n in g.nodes]
    for a, b in zip(q.nodes, g.nodes):
        if a.op == "linear":
            assert torch.equal(a.inputs[1].const, b.inputs[1].const)


def test_budget_keeps_the_fp4_search_to_four_bit_codes() -> None:
    """The budget costs FP4 codes at 4 bits, but the format search could pick E3M0, stored as
    i8 codes: 9 bits per weight under a budget of 5. Under a budget the search leaves E3M0
    out (without one, these power-of-two weights take it)."""
    from scalefold.passes import PassManager
    gen = torch.Generator().manual_seed(0)
    w = torch.sign(torch.randn(48, 64, generator=gen)) * torch.exp2(-torch.randint(0, 7, (48, 64), generator=gen).float())
    text = """graph @l(%x: f32[B,64]) -> (f32[B,48]) {
  %0: f32[B,48] = linear(%x, #w)
  return %0
}
#w = const f32[48,64] zeros"""
    cal = [torch.randn(16, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for budget, want in ((None, "i8"), (5.0, None)):
        g = parse(text)
        g.nodes[0].inputs[1].const.copy_(w)
        spec = "quant_weights(format=fp4_e2m1, method=search, group=32" + (
            f", budget={budget}, mixed=int8)" if budget else ")")
        pm = PassManager(spec, calibration=cal)
        q = pm.run(g)
        codes = [n for n in q.nodes if n.op == "qlinear"][0].inputs[1]
        if want:
            assert codes.dtype.name == want and pm.counters["quant_weights"].get("fp4_e3m0") == 1
        else:
            assert codes.dtype.name in ("f4e2m1", "i4", "u4")
            assert not pm.counters["quant_weights"].get("fp4_e3m0")
