"""The VNNI ceiling that ``benchmarks/w4_cpu.py`` prints beside its int8-activation rows."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from w4_cpu import vnni_peak_gmacs  # noqa: E402


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags and " avx512f" in flags


@pytest.mark.skipif(not _has_vnni(), reason="the ceiling kernel is AVX-512 VNNI code")
def test_vnni_peak_is_a_rate_that_scales_with_work() -> None:
    """A positive rate in GMAC/s, below what one core could issue (64 MACs per instruction,
    at most 4 instructions per cycle at 6 GHz), and not an artefact of the iteration count: ten
    times the work gives a rate within a factor 3 of the first."""
    small = vnni_peak_gmacs(1, iters=20_000)
    large = vnni_peak_gmacs(1, iters=200_000)
    assert small is not None and large is not None
    assert 0 < large < 64 * 4 * 6
    assert large / 3 < small < large * 3
