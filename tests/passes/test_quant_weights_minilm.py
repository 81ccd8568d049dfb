"""quant_weights on the real all-MiniLM-L6-v2: sentence-embedding cosine to the fp32 model
(min / mean over the 64 evaluation sentences, ``benchmarks/quant_weights_accuracy.py``) for
the issue's formats: int4 / int3 g128 RTN and AWQ, int8, FP8 E4M3, FP4 E2M1 plain and with the
LLM-FP4 search (K = 384 or 1536, so g128 is several groups per row).

Each spec is measured once per process (``result``) and only by the tests that need it, and
no costly spec is needed by two tests (RTN, which two share, takes seconds): under xdist the
tests spread over the workers without two of them quantising the same spec. (xdist's
``loadgroup`` would say this directly, but with pytest 9 its group suffix on node ids has no
effect, so it does not group.)"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import quant_weights_accuracy as qa  # noqa: E402

acc = qa.acc


@functools.cache
def _setup() -> tuple:
    m = acc.load()
    return m, acc.embed_eager(m), qa.calibration_batches(m)


@functools.cache
def result(label: str) -> tuple[float, float, dict]:
    """(min cosine, mean cosine, quant_weights counters) of ``qa.SPECS[label]``."""
    m, ref, cal = _setup()
    out = qa.measure_spec(m, qa.SPECS[label], ref, cal)
    print(f"{label}: min {out[0]:.4f} mean {out[1]:.4f}")
    return out


def test_awq_beats_rtn_and_reaches_the_targets() -> None:
    # Measured: int4 AWQ 0.9011 / 0.9801 min / mean with padded rows left out of the
    # statistics and the bias correction (0.9074 / 0.9718 with neither; 0.9766 without the
    # correction), int3 AWQ 0.7120 / 0.9163 (the correction made the outputs worse there, so
    # it was quantised again without it); the bounds leave room for BLAS summation order.
    rtn4, awq4 = result("int4 g128 RTN"), result("int4 g128 AWQ")
    rtn3, awq3 = result("int3 g128 RTN"), result("int3 g128 AWQ")
    assert awq4[1] > rtn4[1] and awq3[1] > rtn3[1]
    assert awq4[2]["clipped"] == 37 - 12      # q/k skip the clip search
    assert awq4[1] >= 0.979 and awq4[0] >= 0.89
    assert awq4[2]["bias_corrected"] == 37
    assert awq3[0] >= 0.69 and awq3[1] >= 0.91
    assert awq3[2].get("bias_correction_rejected", 0) == 1
    assert awq4[1] > awq3[1]


def test_gptq_rounding_beats_rtn() -> None:
    rtn4, gptq = result("int4 g128 RTN"), result("int4 g128 GPTQ rounding")
    assert gptq[1] > rtn4[1] and gptq[0] > rtn4[0]
    # sequential AWQ + GPTQ (calibrated on the quantised prefix, 48 sentences): measured mean
    # 0.9766 (min 0.9176)
    seq = result("int4 g128 AWQ+GPTQ sequential")
    assert seq[1] >= 0.972 and seq[1] > rtn4[1]
    assert seq[2]["clipped"] == 37 - 12 and seq[2]["gptq"] == 37


def test_searched_fp4_beats_plain() -> None:
    plain, searched = result("FP4 E2M1 g128 plain"), result("FP4 g128 searched")
    assert searched[1] > plain[1] and searched[0] > plain[0]
    c = searched[2]
    assert c["searched"] == 37 and sum(v for k, v in c.items() if k.startswith("fp4_e")) == 37


def test_eight_bit_formats() -> None:
    # measured: int8 0.9997, FP8 0.998x
    int8, fp8 = result("int8 per-channel"), result("FP8 E4M3 per-channel")
    assert int8[1] >= 0.999 and int8[0] >= 0.995
    assert fp8[1] >= 0.995
