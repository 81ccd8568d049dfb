"""The executor's dequantise-once GEMM for qlinear forms no generated kernel takes (float8
weights with int8 activations, f16 x): same results as the reference up to float32 summation,
built once per node for every size binding."""
from __future__ import annotations

import pytest
import torch

import scalefold as sf
from torch.export import Dim

from harness import assert_close
from scalefold.frontend.torch import from_torch
from scalefold.passes.quant_weights import quant_weights
from scalefold.runtime.interp import run


def _graph(spec: dict, k: int = 300, n: int = 70, bias: bool = True):
    lin = torch.nn.Linear(k, n, bias=bias)
    torch.manual_seed(0)
    x = torch.randn(3, k)
    g = from_torch(torch.nn.Sequential(lin), (x,), dynamic_shapes=({0: Dim("B")},))
    return quant_weights(g, None, **spec)


@pytest.mark.parametrize("spec", [dict(format="fp8_e4m3", group=128, act="int8"),
                                  dict(format="fp8_e4m3", group=0, act="int8")],
                         ids=["fp8_g128_act8", "fp8_g0_act8"])
def test_fallback_matches_reference(spec: dict) -> None:
    g = _graph(spec)
    cm = sf.compile(g, target="c")
    kinds = {n.op: k.kind for k in cm.schedule.kernels for n in k.nodes}
    assert kinds["qlinear"] == "reference"          # no template takes these forms
    for b in (1, 5, 33):
        x = torch.randn(b, 300, generator=torch.Generator().manual_seed(b))
        # per-token codes (act int8) are the reference's own; only the f32 sums differ
        assert_close(cm(x), run(g, x)[0], rtol=2e-6, atol=0.0, rel_to_scale=True)
    assert len(cm._runner._qfast) == 1             # dequantised once for all three bindings


def test_fallback_declines_what_it_cannot_take() -> None:
    from scalefold.runtime.library import qlinear_fallback
    g = _graph(dict(format="int8", group=128))
    q = next(n for n in g.nodes if n.op == "qlinear")
    assert qlinear_fallback(q, torch.device("cpu")) is not None
    q.attrs = q.attrs.replace(act="per_tensor")
    assert qlinear_fallback(q, torch.device("cpu")) is None
