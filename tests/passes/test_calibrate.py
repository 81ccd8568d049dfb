"""Calibration observers (passes/calibrate.py): stats against torch, streaming, guards, persistence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scalefold.ir.errors import CalibrationError, ScalefoldError, ShapeError
from scalefold.ir.parser import parse
from scalefold.passes.calibrate import ChannelStats, Stats, calibrate, linear_inputs, stats_for

TEXT = """graph @g(%x: f32[B,4,6]) -> (f32[B,4,5]) {
  %0: f32[B,4,6] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,4,8] = linear(%0, #w1, _)
  %2: f32[B,4,8] = log(%1)
  %3: f32[B,4,5] = linear(%2, #w2, _)
  return %3
}
#g = const f32[6] uniform(seed=1, low=0.5, high=1.5)
#b = const f32[6] randn(seed=2, std=0.1)
#w1 = const f32[8,6] randn(seed=3, std=0.3)
#w2 = const f32[5,8] randn(seed=4, std=0.3)
"""


def _graph():
    g = parse(TEXT)
    return g, g.nodes[0].outputs[0], g.nodes[2].outputs[0]


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(2 + i % 2, 4, 6, generator=gen),) for i in range(n)]


def _ln(x: torch.Tensor) -> torch.Tensor:
    g = parse(TEXT)
    return torch.nn.functional.layer_norm(x, (6,), g.nodes[0].inputs[1].const, g.nodes[0].inputs[2].const, 1e-5)


def test_stats_match_torch_and_stream() -> None:
    g, ln, _ = _graph()
    bs = _batches(5)
    st = calibrate(g, bs, values=[ln, g.inputs[0], ln], gram=[ln])   # duplicates count once
    rows = torch.cat([_ln(b[0]).reshape(-1, 6) for b in bs]).double()
    s = st[ln]
    assert s.rows == rows.shape[0]
    torch.testing.assert_close(s.min, rows.amin(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.max, rows.amax(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.absmax, rows.abs().amax(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.mean_abs, rows.abs().mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.gram, rows.T @ rows, rtol=1e-6, atol=1e-5)
    assert s.gram.dtype == torch.float64
    raw = torch.cat([b[0].reshape(-1, 6) for b in bs]).double()   # graph inputs are observable too
    torch.testing.assert_close(st[g.inputs[0]].absmax, raw.abs().amax(0))
    assert st[g.inputs[0]].gram is None

    # Streaming: a generator of many batches works and the state stays the same size.
    many = (b for _ in range(20) for b in bs)
    st2 = calibrate(g, many, values=[ln], gram=True)
    assert st2[ln].rows == 20 * s.rows and st2[ln].gram.shape == (6, 6)
    torch.testing.assert_close(st2[ln].absmax, s.absmax)


def test_default_values_and_dict_batches() -> None:
    g = parse(TEXT.replace("log(%1)", "exp(%1)"))
    ln, logv = g.nodes[0].outputs[0], g.nodes[2].outputs[0]
    assert linear_inputs(g) == [ln, logv]
    bs = [{"x": b[0]} for b in _batches(2)]
    st = calibrate(g, bs, gram=True)
    assert len(st) == 2 and st[logv].gram is not None and st.batches == 2


def test_nan_and_inf_name_the_value_and_node() -> None:
    g, ln, logv = _graph()
    # log of negative linear outputs gives NaN in the observed value %2.
    with pytest.raises(CalibrationError, match=r"NaN in observed value %2 .*log"):
        calibrate(g, _batches(2), values=[logv])
    bad = _batches(1)[0][0].clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(CalibrationError, match=r"Inf in observed value %x .*graph input"):
        calibrate(g, [(bad,)], values=[g.inputs[0]])


def test_empty_calibration_raises() -> None:
    g, ln, _ = _graph()
    with pytest.raises(CalibrationError, match="empty calibration"):
        calibrate(g, [], values=[ln])
    gen = iter(_batches(2))
    calibrate(g, gen, values=[ln])
    with pytest.raises(CalibrationError, match="consumed"):
        calibrate(g, gen, values=[ln])      # the generator is spent


@pytest.mark.parametrize("bad, message", [
    ((torch.randn(2, 4, 5),), r"input 'x' \(#0\): dim 2 is 5, expected 6"),       # wrong channels
    ((torch.randn(2, 4, 6, dtype=torch.float64),), r"input 'x' \(#0\): expected dtype f32"),
    ((torch.randn(2, 6),), r"input 'x' \(#0\): expected rank 3"),
    ((np.zeros((2, 4, 6), np.float32),), r"input 'x' \(#0\): expected a torch.Tensor, got ndarray "
                                          r"\(convert NumPy arrays with torch.from_numpy\)"),
    (np.zeros((2, 4, 6), np.float32), r"input 'x' \(#0\): expected a torch.Tensor, got ndarray"),
    (None, r"expected a tuple of tensors .* got NoneType"),
    ((None,), r"input 'x' \(#0\): expected a torch.Tensor, got NoneType"),
    ((), r"graph @g takes 1 inputs, got 0"),
    ({"y": torch.randn(2, 4, 6)}, r"no tensor for input\(s\) x \(the dict has y\)"),
])
def test_malformed_batches_name_the_batch_and_input(bad: object, message: str) -> None:
    g, ln, _ = _graph()
    good = _batches(1)[0]
    # The bad batch comes second, so the message must carry its index (1), not just "batch".
    for values in ([g.inputs[0]], [ln]):     # observed graph input or only an inner value
        with pytest.raises(ShapeError, match=r"^calibration batch 1: " + message) as ei:
            calibrate(g, [good, bad], values=values)
        assert isinstance(ei.value, ScalefoldError)


def test_malformed_batches_through_the_public_compile() -> None:
    """The path users take (sf.compile with an AWQ pipeline) reports the same ShapeError."""
    import scalefold as sf
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(2, 64)
    for cal, message in [([(torch.randn(2, 63),)], "dim 1 is 63, expected 64"),
                         ([(np.random.randn(2, 64).astype(np.float32),)], "got ndarray"),
                         ([None], "got NoneType")]:
        with pytest.raises(ShapeError, match="calibration batch 0: .*" + message):
            sf.compile(m, (x,), passes=["quant_weights(method=awq)"], calibration=cal, target="interp")


def test_wrongly_shaped_inner_value_names_batch_value_and_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node result whose channels differ from its declared type (a broken reference op) is a
    ShapeError naming the batch, the observed value and its node, not a torch broadcast error."""
    import importlib
    cal = importlib.import_module("scalefold.passes.calibrate")   # the package re-exports calibrate()
    g, ln, _ = _graph()

    class Broken(cal.Interpreter):
        def run(self, inputs, hook=None):
            hook(g.nodes[0], [torch.zeros(2, 4, 5)])
            return []
    monkeypatch.setattr(cal, "Interpreter", Broken)
    with pytest.raises(ShapeError, match=r"^calibration batch 0: observed value %0 \(f32\[B,4,6\], produced by "
                                         r".*layer_norm.*\): expected 6 channels on the last axis, got shape "
                                         r"\(2, 4, 5\)"):
        calibrate(g, _batches(1), values=[ln])


def test_channel_stats_reject_a_wrong_channel_count() -> None:
    st = ChannelStats.empty(3, gram=True)
    with pytest.raises(ShapeError, match=r"expected 3 channels on the last axis, got shape \(2, 4\)"):
        st.update(torch.zeros(2, 4))
    with pytest.raises(ShapeError, match="got shape \\(\\)"):
        st.update(torch.tensor(1.0))
    with pytest.raises(ShapeError, match="got ndarray"):
        st.update(np.zeros((2, 3)))    # type: ignore[arg-type]
    assert st.rows == 0 and st.gram is not None and not st.gram.any()   # nothing was folded in


def test_zero_and_constant_channels_are_floored() -> None:
    st = ChannelStats.empty(3, gram=False)
    st.update(torch.tensor([[0.0, 5.0, 2.0], [0.0, 5.0, -4.0]]))
    assert st.absmax.tolist() == [0.0, 5.0, 4.0]
    fl = st.absmax_floored()
    assert fl[0] == pytest.approx(5.0 * 1e-5) and fl[1] == 5.0 and fl[2] == 4.0
    assert (st.mean_abs_floored() > 0).all()
    zero = ChannelStats.empty(2, gram=False)
    zero.update(torch.zeros(4, 2))
    assert zero.absmax_floored().tolist() == [1.0, 1.0]       # all-zero tensor: no scale, floor 1
    assert torch.isfinite(1.0 / zero.mean_abs_floored()).all()


def test_save_load_reuse_and_stale(tmp_path) -> None:
    g, ln, logv = _graph()
    bs = [(b[0].abs() + 1,) for b in _batches(3)]
    st = calibrate(g, bs, values=[ln], gram=True)
    path = tmp_path / "stats.safetensors"
    st.save(path)
    back = Stats.load(path, g)
    for f in ("min", "max", "absmax", "sum_abs", "gram"):
        assert torch.equal(getattr(back[ln], f), getattr(st[ln], f)), f
    assert back[ln].rows == st[ln].rows and back.batches == 3

    # cache=: a second calibration of the same graph runs nothing.
    class Boom:
        def __iter__(self):
            raise AssertionError("recalibrated although cached stats match")
    cached = calibrate(g, Boom(), values=[ln], gram=True, cache=path)
    assert torch.equal(cached[ln].gram, st[ln].gram)
    assert torch.equal(stats_for(g, str(path), [ln])[ln].absmax, st[ln].absmax)
    assert torch.equal(stats_for(g, st, [ln])[ln].absmax, st[ln].absmax)
    # given Stats are bound as a copy: a pass binding them to its clone of the graph left
    # the caller's own Stats unusable on the graph they were measured on
    gc = g.clone()
    assert torch.equal(stats_for(gc, st, [gc.nodes[0].outputs[0]])[gc.nodes[0].outputs[0]].absmax,
                       st[ln].absmax)
    assert torch.equal(st[ln].absmax, back[ln].absmax)

    # A changed graph rejects the stats, and a cache miss recalibrates and rewrites the file.
    g2 = parse(TEXT.replace("eps=1e-5", "eps=1e-6"))
    with pytest.raises(CalibrationError, match="stale"):
        Stats.load(path, g2)
    ln2 = g2.nodes[0].outputs[0]
    fresh = calibrate(g2, bs, values=[ln2], cache=path)
    assert Stats.load(path, g2)[ln2].rows == fresh[ln2].rows


def test_progress_bar_is_silent_without_a_tty(capfd) -> None:
    g, ln, _ = _graph()
    calibrate(g, _batches(3), values=[ln])
    err = capfd.readouterr().err
    assert "calibrating" not in err and err == ""


def test_load_of_what_is_not_a_stats_file(tmp_path) -> None:
    """Input arrays, a directory, or a stats file missing an entry: a CalibrationError naming
    the file (they were raw SafetensorError / KeyError / OSError)."""
    import numpy as np
    from safetensors.torch import save_file
    g, ln, _ = _graph()
    npz = tmp_path / "cal.npz"
    np.savez(npz, x=np.zeros((2, 3), np.float32))
    with pytest.raises(CalibrationError, match="cal.npz is not a scalefold calibration stats file"):
        Stats.load(npz, g)
    with pytest.raises(CalibrationError, match="is not a file"):
        Stats.load(tmp_path, g)
    st = calibrate(g, [(b[0].abs() + 1,) for b in _batches(2)], values=[ln])
    good = tmp_path / "good.safetensors"
    st.save(good)
    from safetensors import safe_open
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={k: v for k, v in meta.items() if k != "rows"})
    with pytest.raises(CalibrationError, match="bad.safetensors: damaged calibration stats"):
        Stats.load(bad, g)
    save_file({k: v for k, v in tensors.items() if not k.endswith("/min")}, str(bad), metadata=meta)
    with pytest.raises(CalibrationError, match="damaged calibration stats"):
        Stats.load(bad, g)


def test_few_rows_warn_once_and_enough_rows_do_not() -> None:
    """Fewer than FEW_ROWS observed rows (here 2 batches of 2 x 4 tokens) warn, through both
    the channel stats and the range observers of outliertune; 8 batches (>= 64 rows) do not."""
    import warnings

    from scalefold.passes.calibrate import FEW_ROWS
    from scalefold.passes.quant_common import observe_ranges
    g, ln, _ = _graph()
    for observe in (lambda b: calibrate(g, b, values=[ln], progress=False),
                    lambda b: observe_ranges(g, b, [ln])):
        with pytest.warns(UserWarning, match=r"saw only 16 rows .* in 2 batch\(es\)"):
            observe([(torch.randn(2, 4, 6),)] * 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            observe([(torch.randn(2, 4, 6),)] * (FEW_ROWS // 8))
