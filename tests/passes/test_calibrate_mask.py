"""Calibration leaves padded tokens out (passes/calibrate.py: ``token_mask``), and the
per-channel sums give the covariance the bias-corrected searches score with."""
from __future__ import annotations

import pytest
import torch

from scalefold.ir.errors import CalibrationError
from scalefold.ir.parser import parse
from scalefold.passes.calibrate import Stats, calibrate, mask_input, real_rows

TEXT = """graph @g(%x: f32[B,S,6], %attention_mask: i64[B,S]) -> (f32[B,S,5]) {
  %0: f32[B,S,6] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,S,5] = linear(%0, #w1, _)
  return %1
}
#g = const f32[6] uniform(seed=1, low=0.5, high=1.5)
#b = const f32[6] randn(seed=2, std=0.1)
#w1 = const f32[5,6] randn(seed=3, std=0.3)
"""


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for lens in ([5, 2, 7], [1, 7, 3]):
        x = torch.randn(3, 7, 6, generator=gen)
        m = (torch.arange(7)[None, :] < torch.tensor(lens)[:, None]).long()
        x = x + 50.0 * (1 - m)[..., None]      # padded rows: far off, so counting them shows
        out.append((x, m))
    return out


def _ln(x: torch.Tensor) -> torch.Tensor:
    g = parse(TEXT)
    return torch.nn.functional.layer_norm(x, (6,), g.nodes[0].inputs[1].const, g.nodes[0].inputs[2].const, 1e-5)


def test_padded_rows_are_left_out_by_default() -> None:
    g = parse(TEXT)
    x, ln = g.inputs[0], g.nodes[0].outputs[0]
    bs = _batches()
    st = calibrate(g, bs, values=[x, ln], gram=[ln], progress=False)
    assert st.token_mask == "attention_mask"
    real_x = torch.cat([b[0][b[1].bool()] for b in bs]).double()
    real_ln = _ln(torch.cat([b[0][b[1].bool()] for b in bs])).double()
    assert st[x].rows == int(sum(b[1].sum() for b in bs)) == 25
    torch.testing.assert_close(st[x].max, real_x.amax(0))
    torch.testing.assert_close(st[ln].sum, real_ln.sum(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(st[ln].gram, real_ln.T @ real_ln, rtol=1e-6, atol=1e-5)
    mu = real_ln.mean(0)
    cov = real_ln.T @ real_ln / real_ln.shape[0] - torch.outer(mu, mu)
    torch.testing.assert_close(st[ln].second_moment(centred=True), cov.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st[ln].second_moment(), (real_ln.T @ real_ln / 25).float(), rtol=1e-5, atol=1e-5)
    # token_mask=None counts every position, padding included
    allrows = calibrate(g, bs, values=[x], token_mask=None, progress=False)
    assert allrows[x].rows == 42 and allrows.token_mask is None
    assert float(allrows[x].max.min()) > 40


def test_mask_names_and_errors() -> None:
    g = parse(TEXT)
    assert mask_input(g) == 1 and mask_input(g, None) is None and mask_input(g, "attention_mask") == 1
    with pytest.raises(CalibrationError, match="'pad' is not an input"):
        mask_input(g, "pad")
    with pytest.raises(CalibrationError, match="must be \\[batch, seq\\]"):
        mask_input(g, "x")
    # no input of that name: no mask
    g2 = parse(TEXT.replace("%attention_mask", "%am"))
    assert mask_input(g2) is None


def test_real_rows_shapes() -> None:
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    assert real_rows(t, m).shape == (3, 4)
    heads = torch.randn(2, 5, 3, 4)               # [batch, heads, seq, dim]
    assert real_rows(heads, m).shape == (5 * 3, 4)
    flat = torch.randn(6, 4)                       # [batch * seq, C] (OPT flattens its MLP input)
    assert real_rows(flat, m).shape == (3, 4)
    other = torch.randn(5, 4)                      # leading shape unrelated to the mask
    assert real_rows(other, m).shape == (5, 4)


def test_saved_stats_keep_sums_and_mask(tmp_path) -> None:
    g = parse(TEXT)
    ln = g.nodes[0].outputs[0]
    path = tmp_path / "st.safetensors"
    st = calibrate(g, _batches(), values=[ln], gram=[ln], cache=path, progress=False)
    back = Stats.load(path, g)
    assert back.token_mask == "attention_mask"
    torch.testing.assert_close(back[ln].sum, st[ln].sum)
    # a cache written with the mask is not reused without it (different rows)
    nomask = calibrate(g, _batches(), values=[ln], gram=[ln], cache=path, token_mask=None, progress=False)
    assert nomask[ln].rows == 42 and Stats.load(path).token_mask is None


def test_non_finite_padding_is_not_an_error() -> None:
    """A masked softmax over an all-padding row gives NaN there: calibration reads real rows."""
    g = parse(TEXT)
    x = g.inputs[0]
    bs = _batches()
    bs[0][0][1, 2:] = float("nan")                 # padded positions of row 1 (length 2)
    st = calibrate(g, bs, values=[x], progress=False)
    assert bool(torch.isfinite(st[x].max).all())
    bs[0][0][1, 0] = float("nan")                  # a real position: still an error
    with pytest.raises(CalibrationError, match="NaN in observed value"):
        calibrate(g, bs, values=[x], progress=False)
