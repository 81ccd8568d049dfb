"""Weight-only quantisation accuracy on the real all-MiniLM-L6-v2 (issue 8).

Sentence-embedding cosine to the fp32 transformers model, min and mean over the 64
EVALUATION sentences of ``outliertune_accuracy.py``; the calibrating methods see only its 48
CALIBRATION sentences. Every spec is a ``quant_weights`` pipeline run by the reference
interpreter.

    .venv/bin/python benchmarks/quant_weights_accuracy.py [--extras]

``--extras`` adds mixed precision under a bit budget and FP activation quantisation with and
without LLM-FP4's exponent-bias reparameterisation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import outliertune_accuracy as acc  # noqa: E402

SPECS = {
    "int4 g128 RTN": "quant_weights(format=int4, group=128)",
    "int4 g128 AWQ": "quant_weights(format=int4, group=128, method=awq)",
    "int4 g128 GPTQ rounding": "quant_weights(format=int4, group=128, rounding=gptq)",
    "int3 g128 RTN": "quant_weights(format=int3, group=128)",
    "int3 g128 AWQ": "quant_weights(format=int3, group=128, method=awq)",
    "int8 per-channel": "quant_weights(format=int8, group=0)",
    "FP8 E4M3 per-channel": "quant_weights(format=fp8_e4m3, group=0)",
    "FP4 E2M1 g128 plain": "quant_weights(format=fp4_e2m1, group=128)",
    "FP4 g128 searched": "quant_weights(format=fp4_e2m1, group=128, method=search)",
}
EXTRAS = {
    "int4 AWQ + int8, budget 5 bits/w": "quant_weights(format=int4, group=128, method=awq, budget=5)",
    "int4 AWQ + int8, budget 6 bits/w": "quant_weights(format=int4, group=128, method=awq, budget=6)",
    "FP4 searched W, FP8 A (reparam)": "quant_weights(format=fp4_e2m1, group=128, method=search, act_format=fp8_e4m3)",
    "FP4 searched W, FP4 A (reparam)": "quant_weights(format=fp4_e2m1, group=128, method=search, act_format=fp4_e2m1)",
    "FP4 searched W, FP4 A (no reparam)": "quant_weights(format=fp4_e2m1, group=128, method=search, "
                                          "act_format=fp4_e2m1, act_reparam=False)",
}


def measure(specs: dict[str, str], m: acc.Minilm | None = None, verbose: bool = False
            ) -> dict[str, tuple[float, float, dict]]:
    """{label: (min cosine, mean cosine, counters)} for each spec."""
    m = m or acc.load()
    ref = acc.embed_eager(m)
    out = {}
    for label, spec in specs.items():
        t0 = time.perf_counter()
        g, counters = acc.quantise(m, spec)
        c = acc.cosines(acc.embed_graph(m, g), ref)
        out[label] = (float(c.min()), float(c.mean()), counters.as_dict().get("quant_weights", {}))
        if verbose:
            print(f"{label:38s} min {c.min():.4f}  mean {c.mean():.4f}   ({time.perf_counter() - t0:.0f} s)  "
                  f"{out[label][2]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", action="store_true")
    a = ap.parse_args()
    measure({**SPECS, **(EXTRAS if a.extras else {})}, verbose=True)


if __name__ == "__main__":
    main()
