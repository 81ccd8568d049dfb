"""quant_weights' bias correction (passes/wq_bias.py): after it, every quantised linear's mean
output over the calibration rows is the float model's, sequentially (on the quantised prefix)."""
from __future__ import annotations

import pytest
import torch

from scalefold.frontend.torch import from_torch
from scalefold.ir.errors import ScalefoldError
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.calibrate import calibrate


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(24)
        self.a = torch.nn.Linear(24, 32)
        self.b = torch.nn.Linear(32, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.gelu(self.a(self.norm(x))))


def _setup():
    model = Net().eval()
    gen = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.2, 3.0, 24)
    batches = [(torch.randn(16, 24, generator=gen) * scale + 0.5,) for _ in range(3)]
    return model, batches


def _means(graph, batches, op: str) -> list[torch.Tensor]:
    outs = [n.outputs[0] for n in graph.nodes if n.op == op]
    st = calibrate(graph, batches, values=outs, progress=False)
    return [st[v].sum / st[v].rows for v in outs]


@pytest.mark.parametrize("spec", ["format=int4, group=8, method=awq", "format=int3, group=8, method=search",
                                  "format=int4, group=8, rounding=gptq", "format=fp4_e2m1, group=8, method=search",
                                  "format=int4, group=8, method=awq, sequential=True"])
def test_quantised_means_equal_the_float_ones(spec: str) -> None:
    model, batches = _setup()
    g = from_torch(model, batches[0])
    want = _means(g, batches, "linear")
    pm = PassManager(f"quant_weights({spec})", calibration=batches)
    out = pm.run(from_torch(model, batches[0]))
    assert pm.counters["quant_weights"]["bias_corrected"] == 2
    got = _means(out, batches, "qlinear")
    for w, h in zip(want, got):
        torch.testing.assert_close(h, w, rtol=1e-5, atol=1e-5)
    # the bias-less linear gained a bias; the function is still the model's
    q = [n for n in out.nodes if n.op == "qlinear"]
    assert len(q[1].inputs) == 5 and q[1].inputs[4] is not None and q[1].inputs[4].is_const
    # without the correction the means drift
    off = PassManager(f"quant_weights({spec}, bias_correct=false)", calibration=batches)
    raw = _means(off.run(from_torch(model, batches[0])), batches, "qlinear")
    assert "bias_corrected" not in off.counters["quant_weights"]
    assert float((raw[1] - want[1]).abs().max()) > 10 * float((got[1] - want[1]).abs().max())


def test_rtn_and_saved_stats() -> None:
    model, batches = _setup()
    pm = PassManager("quant_weights(format=int4, group=8)", calibration=batches)
    pm.run(from_torch(model, batches[0]))
    assert "bias_corrected" not in pm.counters["quant_weights"]   # RTN reads no data
    g = from_torch(model, batches[0])
    st = calibrate(g, batches, gram=True, progress=False)
    # saved statistics: no correction by default, an error when asked for
    pm2 = PassManager("quant_weights(format=int4, group=8, method=search)", calibration=st)
    pm2.run(g)
    assert "bias_corrected" not in pm2.counters["quant_weights"]
    with pytest.raises(ScalefoldError, match="bias_correct needs calibration batches"):
        PassManager("quant_weights(format=int4, group=8, method=search, bias_correct=true)",
                    calibration=st).run(from_torch(model, batches[0]))
    with pytest.raises(ScalefoldError, match="awq_loss"):
        PassManager("quant_weights(format=int4, group=8, method=awq, awq_loss=blocks)",
                    calibration=batches).run(from_torch(model, batches[0]))


TEXT = """graph @g(%x: f32[B,S,16], %attention_mask: i64[B,S]) -> (f32[B,S,8]) {
  %0: f32[B,S,16] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,S,8] = linear(%0, #w1, #b1)
  return %1
}
#g = const f32[16] uniform(seed=1, low=0.5, high=1.5)
#b = const f32[16] randn(seed=2, std=0.1)
#w1 = const f32[8,16] randn(seed=3, std=0.3)
#b1 = const f32[8] randn(seed=4, std=0.1)
"""


def test_padding_does_not_enter_the_correction() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = []
    for lens in ([5, 2, 7], [1, 7, 3]):
        m = (torch.arange(7)[None, :] < torch.tensor(lens)[:, None]).long()
        batches.append((torch.randn(3, 7, 16, generator=gen) + 20.0 * (1 - m)[..., None], m))
    want = _means(parse(TEXT), batches, "linear")
    out = PassManager("quant_weights(format=int3, group=8, method=search)", calibration=batches).run(parse(TEXT))
    got = _means(out, batches, "qlinear")          # both over the real rows only
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    fg = parse(TEXT)
    yq, yf = out.nodes[-1].outputs[0], fg.nodes[-1].outputs[0]
    every = calibrate(out, batches, values=[yq], token_mask=None, progress=False)[yq]
    ref = calibrate(fg, batches, values=[yf], token_mask=None, progress=False)[yf]
    # over every position (padding included) the means are not matched: padding was left out
    assert not torch.allclose(every.sum / every.rows, ref.sum / ref.rows, rtol=1e-3, atol=1e-3)


def test_a_correction_that_does_not_help_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    import scalefold.passes.wq_bias as wb
    calls: list[int] = []

    def worse(self, graph) -> float:        # the corrected graph scores worse than before
        calls.append(1)
        return float(len(calls))
    monkeypatch.setattr(wb.OutputCheck, "error", worse)
    model, batches = _setup()
    pm = PassManager("quant_weights(format=int4, group=8, method=search)", calibration=batches)
    out = pm.run(from_torch(model, batches[0]))
    c = pm.counters["quant_weights"]
    assert c["bias_correction_rejected"] == 1 and "bias_corrected" not in c and len(calls) == 2
    q = [n for n in out.nodes if n.op == "qlinear"]
    torch.testing.assert_close(q[0].inputs[4].const, model.a.bias.detach())
    assert len(q[1].inputs) < 5 or q[1].inputs[4] is None


QKV = """graph @g(%x: f32[B,S,16], %attention_mask: i64[B,S]) -> (f32[B,S,8]) {
  %0: f32[B,S,16] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,S,8] = linear(%0, #w1, #b1)
  %2: f32[B,S,8] = linear(%0, #w2, _)
  %3: f32[B,S,8] = mul(%1, %2)
  return %3
}
#g = const f32[16] uniform(seed=1, low=0.5, high=1.5)
#b = const f32[16] randn(seed=2, std=0.1)
#w1 = const f32[8,16] randn(seed=3, std=0.3)
#b1 = const f32[8] randn(seed=4, std=0.1)
#w2 = const f32[8,16] randn(seed=5, std=0.3)
"""


@pytest.mark.parametrize("extra", ["bias_correct=false, awq_loss=block", "awq_loss=block", "sequential=True"])
def test_dict_batches_reach_the_block_loss(extra: str) -> None:
    """AWQ's block loss (two linears meeting in a product) with calibration batches given as
    dicts by input name, padding included (it once indexed the dict as a tuple)."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for lens in ([5, 2, 7], [1, 7, 3]):
        m = (torch.arange(7)[None, :] < torch.tensor(lens)[:, None]).long()
        batches.append({"x": torch.randn(3, 7, 16, generator=gen), "attention_mask": m})
    pm = PassManager(f"quant_weights(format=int4, group=8, method=awq, {extra})", calibration=batches)
    out = pm.run(parse(QKV))
    assert sum(n.op == "qlinear" for n in out.nodes) == 2
    if "block" in extra:
        assert pm.counters["awq_scales"].get("block_loss", 0) == 1
