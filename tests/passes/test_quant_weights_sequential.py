"""quant_weights(sequential=True): each stage is calibrated on the graph whose earlier linears
are already quantised (passes/wq_seq.py)."""
from __future__ import annotations

import pytest
import torch

import scalefold.passes.quant_weights as qw
from scalefold.frontend.torch import from_torch
from scalefold.ir.errors import ScalefoldError
from scalefold.passes import PassManager
from scalefold.passes.calibrate import calibrate
from scalefold.runtime.interp import run


class TwoLinear(torch.nn.Module):
    def __init__(self, absorb: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(24)
        self.a = torch.nn.Linear(24, 32)
        self.b = torch.nn.Linear(32, 8)
        self.absorb = absorb    # b reads a directly (AWQ folds b's scale into a) or through GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(self.norm(x))
        return self.b(h if self.absorb else torch.nn.functional.gelu(h))


def _setup(absorb: bool):
    model = TwoLinear(absorb).eval()
    gen = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.2, 3.0, 24)
    batches = [(torch.randn(16, 24, generator=gen) * scale,) for _ in range(3)]
    return model, from_torch(model, batches[0]), batches


def _recording(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    orig = qw._quantize_one

    def spy(graph, n, st, gram, *a, **k):
        seen[n.inputs[1].name] = gram.clone()
        return orig(graph, n, st, gram, *a, **k)
    monkeypatch.setattr(qw, "_quantize_one", spy)
    return seen


def _final_grams(graph, batches) -> dict[str, torch.Tensor]:
    """Gram matrix XᵀX/rows of every qlinear's input, measured on the quantised graph."""
    ql = [n for n in graph.nodes if n.op == "qlinear"]
    st = calibrate(graph, batches, values=[n.inputs[0] for n in ql], gram=[n.inputs[0] for n in ql], progress=False)
    return {n.inputs[1].name.removesuffix(".q"): (st[n.inputs[0]].gram / st[n.inputs[0]].rows).float() for n in ql}


@pytest.mark.parametrize("spec", ["format=int4, group=8, rounding=gptq",
                                  "format=int3, group=8, method=search",
                                  "format=int4, group=8, method=awq, rounding=gptq"])
@pytest.mark.parametrize("absorb", [False, True])
def test_stats_come_from_the_quantised_prefix(monkeypatch: pytest.MonkeyPatch, spec: str, absorb: bool) -> None:
    model, g, batches = _setup(absorb)
    seen = _recording(monkeypatch)
    # without bias correction: it changes the biases after the Grams were taken (tested apart)
    pm = PassManager(f"quant_weights({spec}, sequential=True, bias_correct=false)", calibration=batches)
    out = pm.run(g)
    assert pm.counters["quant_weights"][spec.split(",")[0].split("=")[1]] == 2
    final = _final_grams(out, batches)
    assert set(seen) == set(final) == {"a.weight", "b.weight"}
    for name in seen:
        # the Gram each linear was quantised with is its input's Gram in the final graph:
        # every linear upstream of it was already quantised when it was measured
        torch.testing.assert_close(seen[name], final[name], rtol=1e-4, atol=1e-5)
    # ... which is not the float model's: b's input differs by a's quantisation error
    float_out = PassManager(f"quant_weights({spec}, bias_correct=false)", calibration=batches)
    seen.clear()
    float_out.run(from_torch(model, batches[0]))
    assert not torch.allclose(seen["b.weight"], final["b.weight"], rtol=1e-4, atol=1e-5)
    # and the quantised graph still computes the model (int4/int3 weight error only)
    x = batches[0][0]
    with torch.no_grad():
        ref = model(x)
    err = (run(out, x, check=False)[0] - ref).norm() / ref.norm()
    assert float(err) < 0.2


def test_option_changes_the_codes() -> None:
    _, g, batches = _setup(False)
    outs = []
    for seq in (False, True):
        gg = PassManager(f"quant_weights(format=int3, group=8, rounding=gptq, sequential={seq})",
                         calibration=batches).run(from_torch(TwoLinear(False).eval(), batches[0]))
        outs.append({n.inputs[1].name: n.inputs[1].const for n in gg.nodes if n.op == "qlinear"})
    # the first linear sees the same (graph input) statistics either way; the second does not
    assert torch.equal(outs[0]["a.weight.q"], outs[1]["a.weight.q"])
    assert not torch.equal(outs[0]["b.weight.q"], outs[1]["b.weight.q"])


def test_rtn_ignores_sequential_and_needs_no_calibration() -> None:
    _, g, batches = _setup(False)
    a = PassManager("quant_weights(format=int4, group=8, sequential=True)").run(g)
    b = PassManager("quant_weights(format=int4, group=8)").run(_setup(False)[1])
    assert all(torch.equal(x.inputs[1].const, y.inputs[1].const)
               for x, y in zip((n for n in a.nodes if n.op == "qlinear"), (n for n in b.nodes if n.op == "qlinear")))


def test_bad_values() -> None:
    _, g, batches = _setup(False)
    with pytest.raises(ScalefoldError, match="sequential must be"):
        PassManager("quant_weights(format=int4, method=awq, sequential='maybe')", calibration=batches).run(g)
    st = calibrate(g, batches, gram=True, progress=False)
    with pytest.raises(ScalefoldError, match="needs calibration batches"):
        PassManager("quant_weights(format=int4, group=8, rounding=gptq, sequential=True)", calibration=st).run(g)


class Reused(torch.nn.Module):
    """One Linear applied twice (its weight read by two linears of the graph)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = torch.nn.Linear(32, 32)
        self.b = torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(torch.relu(self.a(x))))


def test_sequential_shares_the_codes_of_a_reused_weight() -> None:
    """sequential=True quantises a weight read by two linears at its first stage and shares the
    codes (it stored the weight twice: 3 code constants for 3 qlinears)."""
    model = Reused().eval()
    g = from_torch(model, (torch.randn(16, 32),))
    cal = [torch.randn(16, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for seq in (False, True):
        pm = PassManager(f"quant_weights(format=int4, group=16, rounding=gptq, sequential={seq})", calibration=cal)
        q = pm.run(g)
        qs = [n for n in q.nodes if n.op == "qlinear"]
        assert len(qs) == 3 and len({id(n.inputs[1]) for n in qs}) == 2, seq
        assert pm.counters["quant_weights"]["shared_weight"] == 1
        x = torch.randn(16, 32)
        with torch.no_grad():
            ref = model(x)
        assert float((run(q, x)[0] - ref).norm() / ref.norm()) < 0.25   # int4 g16 on a random net
