"""Golden cases of quant_weights: IR text + numerics + counters per format and method."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden_cases import case_params, run_case  # noqa: E402


@pytest.mark.parametrize("case", case_params(__file__))
def test_golden(case: Path) -> None:
    run_case(case)
