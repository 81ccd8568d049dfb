"""Option errors and override keys of the calibrating passes (outliertune, w8a8, smooth,
awq_scales) are ScalefoldErrors naming the pass and the option; SmoothQuant leaves channels
the calibration never saw alone."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir.errors import OptionError, ScalefoldError, ShapeError
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.calibrate import calibrate
from scalefold.passes.smooth import smooth_factors

LN_MLP = """graph @m(%x: f32[B,16]) -> (f32[B,16]) {
  %0: f32[B,16] = layer_norm[axis=-1, eps=1e-05](%x, #g, #b)
  %1: f32[B,32] = linear(%0, #w1, #c1)
  %2: f32[B,32] = relu(%1)
  %3: f32[B,16] = linear(%2, #w2, #c2)
  return %3
}
#g = const f32[16] randn(seed=1)
#b = const f32[16] randn(seed=2)
#w1 = const f32[32,16] randn(seed=3, std=0.3)
#c1 = const f32[32] randn(seed=4)
#w2 = const f32[16,32] randn(seed=5, std=0.3)
#c2 = const f32[16] randn(seed=6)"""

CAL = [(torch.randn(8, 16, generator=torch.Generator().manual_seed(i)),) for i in range(2)]


@pytest.mark.parametrize("spec,msg", [
    ("outliertune(bits=9)", "bits must be in 2..8"),
    ("outliertune(weight=foo)", "outliertune: weight must be one of"),
    ("outliertune(act=foo)", "outliertune: act must be one of"),
    ("w8a8(act=foo)", "w8a8: act must be per_token or per_tensor"),
    ("smooth(alpha=2)", "smooth: alpha must be in"),
    ("awq_scales(loss=foo)", "awq_scales: loss must be block or layer"),
    ("outliertune(overrides={'0': 'half'})", "override for"),
    ("outliertune(overrides={'re:(': 'float'})", "is not a valid pattern"),
])
def test_bad_options_are_option_errors(spec: str, msg: str) -> None:
    with pytest.raises(OptionError, match=msg):
        PassManager(spec, calibration=CAL).run(parse(LN_MLP))


@pytest.mark.parametrize("spec", ["outliertune(bits=8, overrides={'fc_1': 'float'})",
                                  "outliertune(bits=8, overrides={7: 'float'})",
                                  "w8a8(overrides={'nope': 'float'})"])
def test_override_keys_must_match_a_linear(spec: str) -> None:
    with pytest.raises(ScalefoldError, match="matches no quantisable layer"):
        PassManager(spec, calibration=CAL).run(parse(LN_MLP))
    ok = PassManager("outliertune(bits=8, overrides={1: 'float'})", calibration=CAL).run(parse(LN_MLP))
    assert [n.op for n in ok.nodes if n.op in ("linear", "qlinear")] == ["qlinear", "linear"]


def test_outliertune_checks_calibration_batches() -> None:
    bad = CAL + [(torch.randn(8, 15),)]
    with pytest.raises(ShapeError, match="calibration batch 2: input 'x'"):
        PassManager("outliertune(bits=8)", calibration=bad).run(parse(LN_MLP))


def test_smooth_leaves_silent_channels_unscaled() -> None:
    g = parse(LN_MLP)
    h = g.nodes[2].outputs[0]                         # relu output, read by the second linear
    b1 = g.nodes[1].inputs[2]
    c = b1.const.clone()
    c[5] = -100.0                                     # unit 5 never fires on calibration data
    b1.const = c
    st = calibrate(g, CAL, values=[h], progress=False)
    s = smooth_factors(st[h], [g.nodes[3]], 0.5)
    assert float(st[h].absmax[5]) == 0.0 and float(s[5]) == 1.0
    assert bool((s[torch.arange(32) != 5] != 1.0).any())
