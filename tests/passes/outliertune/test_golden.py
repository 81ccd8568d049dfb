"""Golden cases of outliertune: pre-LN (shift folded into β), post-LN (shift in the quantise
step) and RMSNorm blocks — IR text, int8 numerics against the float block, counters."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden_cases import case_params, run_case  # noqa: E402

import scalefold.passes.outliertune  # noqa: E402,F401  (registers the pass)


@pytest.mark.parametrize("case", case_params(__file__))
def test_golden(case: Path) -> None:
    run_case(case)
