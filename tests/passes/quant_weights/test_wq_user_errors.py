"""quant_weights says so when a request cannot mean what it says: NaN / inf weights, ``sym``
with a float format, nothing left to quantise, and override keys that would cut a layer
number ("layers.1" must not take "layers.10")."""
from __future__ import annotations

import warnings

import pytest
import torch

from scalefold.ir.errors import ScalefoldError
from scalefold.ir.graph import Graph
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.quant_weights import quant_weights
from scalefold.passes.wq_options import name_matches

MOE = """graph @mixtral(%x: f32[B,S,40]) -> (f32[B,S,40]) {
  %0: f32[B,S,40] = moe[gated=true, top_k=2](%x, #router, #wg, #wu, #wd)
  return %0
}
#router = const f32[4,40] randn(seed=1, std=0.5)
#wg = const f32[4,24,40] randn(seed=2, std=0.3)
#wu = const f32[4,24,40] randn(seed=3, std=0.3)
#wd = const f32[4,40,24] randn(seed=4, std=0.3)"""


def _mlp(n: int) -> Graph:
    """n chained linears named layers.<i>.fc."""
    g = Graph("chain")
    x = g.add_input("f32[2,16]", "x")
    for i in range(n):
        w = g.add_const(torch.randn(16, 16, generator=torch.Generator().manual_seed(i)), name=f"layers.{i}.fc.weight")
        x = g.add("linear", [x, w])
    g.set_outputs([x])
    return g


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("fmt", ["int4", "fp8_e4m3", "fp4_e2m1"])
def test_non_finite_weights_are_named(bad: float, fmt: str) -> None:
    g = _mlp(2)
    w = next(n.inputs[1] for n in g.nodes if n.inputs[1].name == "layers.1.fc.weight")
    w.const[3, 5] = bad
    with pytest.raises(ScalefoldError, match=r"layers\.1\.fc\.weight.*1 NaN or infinite"):
        quant_weights(g, None, format=fmt, group=16)


def test_non_finite_expert_weights_are_named() -> None:
    g = parse(MOE)
    wu = next(v for n in g.nodes for v in n.inputs if v is not None and v.name == "wu")
    wu.const[2, 0, 0] = float("nan")
    with pytest.raises(ScalefoldError, match=r"expert 2 \(up\)"):
        quant_weights(g, None, format="int4", group=8)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp4_e2m1"])
def test_sym_with_a_float_format_is_refused(fmt: str) -> None:
    with pytest.raises(ScalefoldError, match=f"sym applies to the integer formats.*{fmt}"):
        PassManager(f"quant_weights(format={fmt}, sym=true)").run(_mlp(1))
    with pytest.raises(ScalefoldError, match="override for 'layers.0'.*sym applies"):
        quant_weights(_mlp(1), None, format="int4", overrides={"layers.0": {"format": fmt, "sym": True}})
    # an int base with sym and a float override inherits sym without asking for it: fine
    q = quant_weights(_mlp(2), None, format="int4", group=16, sym=True, overrides={"layers.0": fmt})
    assert sorted(n.inputs[1].dtype.name for n in q.nodes) == ["f4e2m1" if fmt == "fp4_e2m1" else "f8e4m3", "i4"]


def test_nothing_left_to_quantise_warns() -> None:
    once = PassManager("quant_weights(format=int4, group=16)").run(_mlp(2))
    with pytest.warns(UserWarning, match="no float linear or moe with constant weights left"):
        again = quant_weights(once, None, format="int8")
    assert str(again) == str(once)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quant_weights(_mlp(2), None, format="int4", group=16)


def test_override_keys_do_not_cut_layer_numbers() -> None:
    q = quant_weights(_mlp(12), None, format="int4", group=16, overrides="layers.1=int8")
    # the nodes stay in layer order: only layer 1, not 10 and 11, is int8
    assert [n.inputs[1].dtype.name for n in q.nodes] == ["u4", "u8"] + ["u4"] * 10


@pytest.mark.parametrize("key,name,hit", [
    ("layers.1", "model.layers.1.mlp.weight", True),
    ("layers.1", "model.layers.10.mlp.weight", False),
    ("layers.1", "model.layers.10.x.layers.1.y", True),     # a later occurrence that does not cut
    ("1.mlp", "layers.21.mlp", False),
    ("1.mlp", "layers.1.mlp", True),
    ("q_proj", "model.layers.3.self_attn.q_proj.weight", True),
    ("h", "transformer.h.0.attn.c_attn.weight", True),      # substrings still match
    ("fc", "layers.0.fc2.weight", True),                    # no digit at the key's edge
])
def test_name_matches(key: str, name: str, hit: bool) -> None:
    assert name_matches(key, name) is hit
