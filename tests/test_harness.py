"""The test harness itself: goldens, orphan detection, tolerances, counters."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close, assert_fired, assert_golden, find_orphan_goldens
from scalefold.passes import Counters, bump, counting


def test_golden_missing_stale_and_update(tmp_path, monkeypatch) -> None:
    p = tmp_path / "case.golden"
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    with pytest.raises(AssertionError, match="does not exist"):
        assert_golden("a\nb\n", p)
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    assert_golden("a\nb", p)
    assert p.read_text() == "a\nb\n"
    assert [f.name for f in tmp_path.iterdir()] == ["case.golden"]  # no temp file left behind
    monkeypatch.delenv("UPDATE_GOLDEN")
    assert_golden("a\nb\n", p)
    with pytest.raises(AssertionError, match=r"stale golden(.|\n)*-b(.|\n)*\+c"):
        assert_golden("a\nc\n", p)


def test_golden_inline_constants_match_up_to_float_order(tmp_path, monkeypatch) -> None:
    """Inline float constants may differ in the last bits between CPUs (BLAS sum order); all
    else, including the constants' shape, names and nesting, must match exactly."""
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    p = tmp_path / "c.golden"
    p.write_text("  %0 = add(%x, #c0)\n#c0 = const f32[2,2] [[0.5, -1.25], [3.0, nan]]\n")
    assert_golden("  %0 = add(%x, #c0)\n#c0 = const f32[2,2] [[0.50000001, -1.2500003], [3.0, nan]]",
                  p)
    for bad in ("#c0 = const f32[2,2] [[0.5, -1.26], [3.0, nan]]",     # beyond 1e-5 of the scale
                "#c0 = const f32[2,2] [[0.5, -1.25], [3.0, 1.0]]",     # nan must stay nan
                "#c0 = const f32[4] [0.5, -1.25, 3.0, nan]",           # other shape
                "#c1 = const f32[2,2] [[0.5, -1.25], [3.0, nan]]",     # other name
                "#c0 = const f32[2,2] [[0.5, -1.25, 3.0], [nan]]"):    # other nesting
        with pytest.raises(AssertionError, match="stale golden"):
            assert_golden("  %0 = add(%x, #c0)\n" + bad, p)
    with pytest.raises(AssertionError, match="stale golden"):
        assert_golden("  %0 = add(%x, #c0)\n#c0 = const f32[2,2] [[0.5, -1.25], [3.0, nan]]\nx", p)


def test_orphan_goldens_are_found(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    used = tmp_path / "x" / "used.golden"
    orphan = tmp_path / "x" / "orphan.golden"
    used.write_text("1\n")
    orphan.write_text("2\n")
    assert find_orphan_goldens(tmp_path, {str(used.resolve())}) == [str(orphan.resolve())]
    assert find_orphan_goldens(tmp_path, {str(used.resolve()), str(orphan.resolve())}) == []


def test_assert_close_per_dtype() -> None:
    x = torch.randn(100)
    assert_close(x + 1e-7, x)
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close(x + 1e-3, x)
    # f16 tolerance admits what f32 does not.
    assert_close((x + 1e-4).half(), x)
    with pytest.raises(AssertionError, match="differ"):
        assert_close(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4]))
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.zeros(2), torch.zeros(3))
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(torch.tensor([float("nan")]), torch.tensor([0.0]))
    big = torch.tensor([1000.0, 0.0])
    assert_close(big + torch.tensor([0.0, 1e-3]), big, rel_to_scale=True)
    with pytest.raises(AssertionError, match="of output scale"):
        assert_close(big + torch.tensor([0.0, 1.0]), big, rel_to_scale=True)


def test_counters() -> None:
    bump("p", "outside")  # no active counters: ignored
    with counting() as c:
        bump("fold", "conv_bn")
        bump("fold", "conv_bn", 2)
        bump("fold", "linear_mul")
    assert c.get("fold", "conv_bn") == 3 and c.total("fold") == 4
    assert c.get("p", "outside") == 0
    assert c.as_dict() == {"fold": {"conv_bn": 3, "linear_mul": 1}}
    assert_fired(c, "fold", "conv_bn", 3)
    with pytest.raises(AssertionError, match="never fired"):
        assert_fired(c, "fold", "missing")
    with pytest.raises(AssertionError, match="fired 1 times, expected 2"):
        assert_fired(c, "fold", "linear_mul", 2)
    merged = Counters()
    merged.merge(c)
    merged.merge(c)
    assert merged.get("fold", "conv_bn") == 6
