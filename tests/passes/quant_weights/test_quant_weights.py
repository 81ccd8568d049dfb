"""The quant_weights quantisers: codes dequantise bit-exactly to fake_quant_int (and through
qlinear's reference), the clip search never loses, fp formats hit the format's grid."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir import dtypes as dt
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.awq import fake_quant_int
from scalefold.passes.wq_fp import FP4_FORMATS, fp4_codes, fp8_codes
from scalefold.passes.wq_int import _fake_asym, clip_search, grouped, int_dequantize, int_quantize
from scalefold.ir.ops.quant import dequant_weight


@pytest.mark.parametrize("bits,group,k,sym", [(4, 128, 384, False), (4, 16, 40, False), (3, 8, 20, False),
                                              (8, 0, 48, False), (4, 16, 40, True), (8, 128, 200, True)])
def test_codes_dequantise_bit_exactly(bits: int, group: int, k: int, sym: bool) -> None:
    w = torch.randn(7, k, generator=torch.Generator().manual_seed(k + bits)) * 0.2
    w[1, 5] = 3.0
    codes, delta, zero = int_quantize(w, bits, group, sym)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2 ** bits - 1)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    ref = fake_quant_int(w, bits, group, sym)
    assert torch.equal(int_dequantize(codes, delta, zero, group), ref)
    # qlinear's own dequantisation (the op reference) agrees bit for bit too
    g = 0 if group <= 0 else min(group, k)
    s = delta[:, 0] if g == 0 else delta
    z = None if zero is None else (zero[:, 0] if g == 0 else zero)
    assert torch.equal(dequant_weight(codes, s, z, g, False), ref)


def test_pass_output_matches_fake_quant() -> None:
    g = parse("""graph @l(%x: f32[3,40]) -> (f32[3,8]) {
  %0: f32[3,8] = linear(%x, #w)
  return %0
}
#w = const f32[8,40] randn(seed=1, std=0.3)""")
    w = g.nodes[0].inputs[1].const
    q = PassManager("quant_weights(format=int4, group=16)", calibration=[torch.randn(3, 40)]).run(g)
    node = q.nodes[0]
    assert node.op == "qlinear" and node.inputs[1].dtype is dt.u4 and node.inputs[3].dtype is dt.u4
    wd = dequant_weight(*(i.const for i in node.inputs[1:4]), 16, False)
    assert torch.equal(wd, fake_quant_int(w, 4, 16))


def test_clip_search_never_worse_than_no_clip() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 32, generator=gen) * torch.linspace(0.2, 3.0, 32)
    w = torch.randn(12, 32, generator=gen) * 0.2
    w[:, 3] *= 8
    gram = x.T @ x / 200
    c = clip_search(w, gram, 3, 8)
    assert (c.abs() <= w.abs() + 1e-7).all()
    err = lambda v: float(((fake_quant_int(v, 3, 8) - w) @ gram * (fake_quant_int(v, 3, 8) - w)).sum())
    assert err(c) <= err(w) + 1e-9


@pytest.mark.parametrize("bits,group,k", [(4, 8, 32), (3, 16, 40), (4, 128, 300)])
def test_clip_search_fake_quant_is_the_quantiser(bits: int, group: int, k: int) -> None:
    """The range search scores each candidate with the same values the pass then stores."""
    gen = torch.Generator().manual_seed(k)
    w = torch.randn(9, k, generator=gen) * torch.rand(9, 1, generator=gen)
    g = group if group < k else k
    xg = grouped(w, g)
    c = torch.minimum(torch.maximum(xg, xg.amin(-1, keepdim=True) * 0.8), xg.amax(-1, keepdim=True) * 0.9)
    ref = int_dequantize(*int_quantize(c.reshape(9, -1), bits, g), g).reshape(c.shape)
    assert torch.equal(_fake_asym(c, bits), ref)


def test_clip_search_is_never_worse_than_awqs_symmetric_grid() -> None:
    """Lopsided groups (one large positive weight per row): the searched ranges, which include
    AWQ's grid (±max|w| shrunk by i/20, i < 10) and independently shrunk minima and maxima,
    give no row a larger output error than AWQ's grid alone, and some rows a smaller one."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 16, generator=gen) * torch.linspace(0.3, 2.0, 16)
    w = torch.randn(8, 16, generator=gen) * 0.1 - 0.05
    w[:, 5] = 0.6
    gram = x.T @ x / 400

    def err(v: torch.Tensor) -> torch.Tensor:
        d = fake_quant_int(v, 3, 16) - w
        return ((d @ gram) * d).sum(1)
    amax = w.abs().amax(1, keepdim=True)
    awq = torch.stack([err(torch.clamp(w, -amax * (1 - i / 20), amax * (1 - i / 20))) for i in range(10)]).amin(0)
    new = err(clip_search(w, gram, 3, 16))
    assert (new <= awq + 1e-9).all()
    assert (new < awq - 1e-4).any()


@pytest.mark.parametrize("group", [16, 0])
def test_fp_formats(group: int) -> None:
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    codes, cdt, scale = fp4_codes(w, FP4_FORMATS["e2m1"], group)
    assert cdt is dt.f4e2m1
    wd = dequant_weight(codes, scale if group else scale[:, 0], None, group, True)
    assert float((wd - w).norm() / w.norm()) < 0.12
    vals = dt.fp4_e2m1_decode(codes).abs()
    assert torch.isin(vals, torch.tensor(dt.FP4_E2M1_GRID)).all() and float(vals.max()) == 6.0
    c8, s8 = fp8_codes(w, group)
    wd8 = dequant_weight(c8, s8 if group else s8[:, 0], None, group, False)
    assert float((wd8 - w).norm() / w.norm()) < 0.04
    assert float(dt.to_real(c8, dt.f8e4m3).abs().max()) == 448.0


@pytest.mark.parametrize("bits,group,k,sym", [(4, 16, 40, False), (3, 32, 96, False), (4, 0, 24, True),
                                              (8, 16, 48, False)])
def test_gptq_rounding_beats_nearest_on_correlated_inputs(bits: int, group: int, k: int, sym: bool) -> None:
    """GPTQ codes live on the RTN grid of their group (same formula, exact dequantisation) and
    give a smaller layer-output error tr(D G D^T) than round-to-nearest when inputs correlate."""
    from scalefold.passes.wq_gptq import gptq_quantize
    gen = torch.Generator().manual_seed(k + bits)
    mix = torch.randn(k, k, generator=gen) * 0.3 + torch.eye(k)
    x = torch.randn(512, k, generator=gen) @ mix
    gram = x.T @ x / 512
    w = torch.randn(10, k, generator=gen) * 0.2
    codes, delta, zero = gptq_quantize(w, gram, bits, group, sym)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2 ** bits - 1)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    wq = int_dequantize(codes, delta, zero, group)
    g = 0 if group <= 0 else group
    assert torch.equal(dequant_weight(codes, delta if g else delta[:, 0],
                                      None if zero is None else (zero if g else zero[:, 0]), g, False), wq)
    err = lambda v: float(((v - w) @ gram * (v - w)).sum())
    assert err(wq) < err(fake_quant_int(w, bits, group, sym))


def test_gptq_through_the_pass_needs_calibration() -> None:
    from scalefold.ir.errors import ScalefoldError
    text = """graph @l(%x: f32[B,32]) -> (f32[B,8]) {
  %0: f32[B,8] = linear(%x, #w)
  return %0
}
#w = const f32[8,32] randn(seed=2, std=0.3)"""
    with pytest.raises(ScalefoldError, match="rounding=gptq needs calibration"):
        PassManager("quant_weights(format=int4, group=16, rounding=gptq)").run(parse(text))
    cal = [torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    pm = PassManager("quant_weights(format=int4, group=16, rounding=gptq)", calibration=cal)
    q = pm.run(parse(text))
    assert q.nodes[0].op == "qlinear" and pm.counters["quant_weights"]["gptq"] == 1


_LN_MLP = """graph @m(%x: f32[B,64]) -> (f32[B,48]) {
  %0: f32[B,64] = layer_norm[eps=1e-05](%x, #g, #b)
  %1: f32[B,96] = linear(%0, #w1, #b1)
  %2: f32[B,96] = gelu[approximate="none"](%1)
  %3: f32[B,48] = linear(%2, #w2)
  return %3
}
#g = const f32[64] randn(seed=5, std=0.5)
#b = const f32[64] randn(seed=6, std=0.1)
#w1 = const f32[96,64] randn(seed=1, std=0.15)
#b1 = const f32[96] randn(seed=3, std=0.1)
#w2 = const f32[48,96] randn(seed=2, std=0.1)"""


def test_awq_from_saved_stats_matches_awq_from_batches() -> None:
    """method=awq with saved statistics (a Stats of the float graph, as the docstring allows):
    the Gram matrices after AWQ's rescaling are derived from the saved ones (X diag(1/s)) and
    give the same quantised model as measuring them again on batches (same Gram loss, no bias
    correction); it used to raise 'stats are stale' whatever the user did."""
    from scalefold.passes.calibrate import calibrate
    from scalefold.passes.quant_weights import quant_weights
    from scalefold.runtime.interp import run
    g = parse(_LN_MLP)
    gen = torch.Generator().manual_seed(0)
    cal = [(torch.randn(64, 64, generator=gen) * torch.linspace(0.2, 4, 64),) for _ in range(3)]
    st = calibrate(g, cal, gram=True)
    a = quant_weights(g.clone(), st, format="int4", group=32, method="awq")
    b = quant_weights(g.clone(), cal, format="int4", group=32, method="awq", bias_correct=False, awq_loss="layer")
    assert sum(n.op == "qlinear" for n in a.nodes) == 2
    x = torch.randn(16, 64, generator=gen) * torch.linspace(0.2, 4, 64)
    ya, yb, y = run(a, x)[0], run(b, x)[0], run(g, x)[0]
    assert float((ya - yb).norm()) <= 1e-3 * float((yb - y).norm())
    with pytest.raises(Exception, match="needs calibration batches"):
        quant_weights(g.clone(), st, format="fp8_e4m3", method="search", act_format="fp8_e4m3")


def test_a_mostly_convolutional_graph_warns_that_convs_stay_float() -> None:
    import warnings
    from scalefold.frontend.torch import from_torch
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 4)).eval()
    g = from_torch(cnn, (torch.randn(1, 3, 8, 8),))
    with pytest.warns(UserWarning, match=r"73% of the graph's conv and linear weight elements \(2736 of 3760\) are convolution weights"):
        out = PassManager("quant_weights(format=int4, group=32)").run(g)
    assert [n.op for n in out.nodes].count("qlinear") == 1
    vit_like = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 2, stride=2), torch.nn.Flatten(2),
                                   torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)).eval()
    g = from_torch(vit_like, (torch.randn(1, 3, 8, 8),))
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a patch-embedding conv among linears: no warning
        PassManager("quant_weights(format=int4, group=16)").run(g)
