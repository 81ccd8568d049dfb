"""The AWQ building blocks: the RTN fake quantiser, the Gram-matrix loss and the scale search."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.awq import fake_quant_int, output_mse, search_scale
from scalefold.runtime.interp import run


def _ref_asym(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """ALGORITHMS.md §2 written out group by group in float64."""
    out = torch.empty_like(w, dtype=torch.float64)
    qmax = 2 ** bits - 1
    for r in range(w.shape[0]):
        for lo in range(0, w.shape[1], group):
            x = w[r, lo:lo + group].double()
            d = max(float(x.max() - x.min()), 1e-5) / qmax
            z = min(max(-round(float(x.min()) / d), 0), qmax)
            q = torch.clamp(torch.round(x / d) + z, 0, qmax)
            out[r, lo:lo + group] = (q - z) * d
    return out


@pytest.mark.parametrize("bits,group,k", [(4, 8, 32), (3, 8, 20), (4, 128, 384), (8, 16, 48)])
def test_fake_quant_matches_the_formula(bits: int, group: int, k: int) -> None:
    w = torch.randn(6, k, generator=torch.Generator().manual_seed(bits + k)) * 0.2
    w[0, 3] = 2.0   # an outlier widens one group's range
    q = fake_quant_int(w, bits, group)
    assert q.dtype == w.dtype and q.shape == w.shape
    torch.testing.assert_close(q.double(), _ref_asym(w, bits, group), rtol=0, atol=1e-6)
    for lo in range(0, k, group):   # at most 2^bits levels per group, error <= Δ/2
        g = w[:, lo:lo + group]
        delta = (g.amax(1) - g.amin(1)) / (2 ** bits - 1)
        assert ((q[:, lo:lo + group] - g).abs() <= delta[:, None] / 2 + 1e-6).all()
        assert all(len(torch.unique(row)) <= 2 ** bits for row in q[:, lo:lo + group])


def test_fake_quant_symmetric_per_row_and_half() -> None:
    w = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    q = fake_quant_int(w, 4, group=0, sym=True)
    d = w.abs().amax(1, keepdim=True) / 7
    torch.testing.assert_close(q, torch.clamp(torch.round(w / d), -8, 7) * d)
    h = fake_quant_int(w.half(), 4, 5)
    assert h.dtype == torch.float16
    torch.testing.assert_close(h.float(), fake_quant_int(w.half().float(), 4, 5), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError):
        fake_quant_int(w, 1, 8)


def test_gram_loss_is_the_output_mse_and_search_never_loses() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 32, generator=gen) * torch.linspace(0.1, 6.0, 32)   # uneven channels
    w = [torch.randn(24, 32, generator=gen) * 0.2, torch.randn(8, 32, generator=gen) * 0.2]
    q = [fake_quant_int(t, 4, 8) for t in w]
    gram = (x.double().T @ x.double() / x.shape[0]).float()
    direct = sum(float(((x @ (a - b).T) ** 2).sum()) for a, b in zip(q, w)) / (300 * 32)
    assert output_mse(w, q, gram) == pytest.approx(direct, rel=1e-4)
    s, r, losses = search_scale(w, x.abs().mean(0), gram, bits=4, group=8)
    assert losses[0] == pytest.approx(output_mse(w, q, gram), rel=1e-6)   # r = 0 is plain RTN
    assert min(losses) == losses[int(round(r * 20))] and r > 0
    assert min(losses) < 0.95 * losses[0]
    assert float(s.max() * s.min()) == pytest.approx(1.0, rel=1e-6)      # normalised


MLP = """graph @mlp(%x: f32[B,16]) -> (f32[B,16]) {
  %0: f32[B,16] = layer_norm[axis=-1, eps=1e-05](%x, #g, #b)
  %1: f32[B,32] = linear(%0, #w1, #b1)
  %2: f32[B,32] = relu(%1)
  %3: f32[B,16] = linear(%2, #w2, #b2)
  return %3
}
#g = const f32[16] [1.0, 8.0, 0.5, 1.0, 1.0, 1.0, 0.25, 1.0, 1.0, 12.0, 1.0, 0.5, 1.0, 1.0, 2.0, 1.0]
#b = const f32[16] randn(seed=2, std=0.1)
#w1 = const f32[32,16] randn(seed=3, std=0.3)
#b1 = const f32[32] randn(seed=4, std=0.1)
#w2 = const f32[16,32] randn(seed=5, std=0.3)
#b2 = const f32[16] randn(seed=6, std=0.1)
"""


def _rtn(g, bits: int, group: int):
    g = g.clone()
    for n in g.nodes:
        if n.op == "linear":
            w = n.inputs[1]
            g.set_input(n, 1, g.add_const(fake_quant_int(w.const, bits, group), dtype=w.dtype))
    return g


def test_awq_then_rtn_beats_rtn_on_held_out_inputs() -> None:
    g = parse(MLP)
    gen = torch.Generator().manual_seed(3)
    calib = [(torch.randn(64, 16, generator=gen),) for _ in range(3)]
    held = torch.randn(256, 16, generator=gen)
    pm = PassManager("awq_scales(bits=4, group=8)", calibration=calib)
    ga = pm.run(g)
    # relu's input comes from a linear: the FFN2 factor folds into FFN1's rows (positive s).
    assert pm.counters["awq_scales"] == {"into_norm": 1, "into_linear": 1, "scaled": 2}
    ref = run(g, held)[0]
    torch.testing.assert_close(run(ga, held)[0], ref, rtol=1e-5, atol=1e-5)
    err_rtn = float(((run(_rtn(g, 4, 8), held)[0] - ref) ** 2).mean())
    err_awq = float(((run(_rtn(ga, 4, 8), held)[0] - ref) ** 2).mean())
    assert err_awq < 0.8 * err_rtn, (err_awq, err_rtn)


@pytest.mark.parametrize("opts,msg", [("grid=0", "grid must be >= 1, got 0"), ("grid=-1", "grid must be >= 1"),
                                      ("grid=0, loss=layer", "grid must be >= 1"), ("bits=0", "bits must be >= 2"),
                                      ("bits=1", "awq_scales: bits must be >= 2, got 1"),
                                      ("bits=17", "awq_scales: bits must be in 2..16, got 17")])
def test_bad_grid_and_bits_are_option_errors(opts: str, msg: str) -> None:
    """grid 0 or below reached the search's ``assert best is not None`` (a bare AssertionError)."""
    from scalefold.ir.errors import ScalefoldError
    calib = [(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)),)]
    with pytest.raises(ScalefoldError, match=msg):
        PassManager(f"awq_scales(group=8, {opts})", calibration=calib).run(parse(MLP))
