"""quant_weights on the real all-MiniLM-L6-v2: sentence-embedding cosine to the fp32 model
(min / mean over the 64 evaluation sentences, ``benchmarks/quant_weights_accuracy.py``) for
the issue's formats: int4 / int3 g128 RTN and AWQ, int8, FP8 E4M3, FP4 E2M1 plain and with the
LLM-FP4 search (K = 384 or 1536, so g128 is several groups per row)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quant_weights_accuracy as qa  # noqa: E402


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[float, float, dict]]:
    out = qa.measure(qa.SPECS)
    print({k: f"min {a:.4f} mean {b:.4f}" for k, (a, b, _) in out.items()})
    return out


def test_awq_beats_rtn(measured: dict) -> None:
    assert measured["int4 g128 AWQ"][1] > measured["int4 g128 RTN"][1]
    assert measured["int3 g128 AWQ"][1] > measured["int3 g128 RTN"][1]
    assert measured["int4 g128 AWQ"][2]["clipped"] == 37 - 12      # q/k skip the clip search
    assert measured["int4 g128 GPTQ rounding"][1] > measured["int4 g128 RTN"][1]
    assert measured["int4 g128 GPTQ rounding"][0] > measured["int4 g128 RTN"][0]


def test_searched_fp4_beats_plain(measured: dict) -> None:
    assert measured["FP4 g128 searched"][1] > measured["FP4 E2M1 g128 plain"][1]
    assert measured["FP4 g128 searched"][0] > measured["FP4 E2M1 g128 plain"][0]
    c = measured["FP4 g128 searched"][2]
    assert c["searched"] == 37 and sum(v for k, v in c.items() if k.startswith("fp4_e")) == 37


def test_accuracy_levels(measured: dict) -> None:
    # Measured: int4 AWQ 0.9011 / 0.9801 min / mean with padded rows left out of the
    # statistics and the bias correction (0.9074 / 0.9718 with neither; 0.9766 without the
    # correction), int3 AWQ 0.7120 / 0.9163 (the correction made the outputs worse there, so
    # it was quantised again without it), int8 0.9997, FP8 0.998x; the bounds leave room for
    # BLAS summation order.
    assert measured["int4 g128 AWQ"][1] >= 0.979 and measured["int4 g128 AWQ"][0] >= 0.89
    assert measured["int4 g128 AWQ"][2]["bias_corrected"] == 37
    assert measured["int3 g128 AWQ"][0] >= 0.69 and measured["int3 g128 AWQ"][1] >= 0.91
    assert measured["int3 g128 AWQ"][2].get("bias_correction_rejected", 0) == 1
    assert measured["int4 g128 AWQ"][1] > measured["int3 g128 AWQ"][1]
    # sequential AWQ + GPTQ (calibrated on the quantised prefix, 48 sentences): measured mean
    # 0.9766 (min 0.9176)
    seq = measured["int4 g128 AWQ+GPTQ sequential"]
    assert seq[1] >= 0.972 and seq[1] > measured["int4 g128 RTN"][1]
    assert seq[2]["clipped"] == 37 - 12 and seq[2]["gptq"] == 37
    assert measured["int8 per-channel"][1] >= 0.999 and measured["int8 per-channel"][0] >= 0.995
    assert measured["FP8 E4M3 per-channel"][1] >= 0.995
