"""The exact row of the weight-only ``qlinear`` template (``codegen/c_w4.py``): rows of x whose
sum is not finite (an inf or NaN in the row, or values whose sum overflows float32).

The template's fold ``s * sum(x u) - s ze * sum(x)`` turns an inf in x into inf - inf = NaN
on every channel, where the reference's ``x @ ((u - ze) s)^T`` gives +-inf, or NaN only where
the dequantised weight is exactly 0. Such rows are recomputed here in the reference's order of
operations: each weight dequantised in float32 as ``(v - ze) * s`` (``v`` the code's value,
the float8 / E2M1 value for float codes), products and sums in double, plus the bias, rounded
once to float32. The codes are read from the same packed blob (runtime/w4pack.py,
runtime/w8pack.py); where the zero points are stored as ``sz = s ze`` floats (non-integer zero
points) the weight is ``v s - sz``, which has the same sign and the same zeros.
"""
from __future__ import annotations

from ..runtime.w4pack import FP4_LUT_F32
from .c_w8_src import fp8_scalar


def row_exact(*, N: int, K: int, g: int, G: int, gp: int, glp: int, nr: int, P: int, pbytes: int,
              gs: int, bits: int, zbytes: bool, fp4: bool, fp8: str | None, bias: bool
              ) -> list[str]:
    """C text of ``sf_row_exact(xr, wp, bp, yr)`` for the weight-only kernel: one row ``yr``
    [N] from ``xr`` [K] (the original, unpadded row), the blob ``wp`` and, with ``bias``, the
    float32 bias ``bp``."""
    if bits == 8:
        code = f"wg[b * {nr * 8} + (t >> 2) * {nr * 4} + j * 4 + (t & 3)]"
    else:
        code = f"(t < 4 ? wg[b * {nr * 4} + j * 4 + t] & 15 : wg[b * {nr * 4} + j * 4 + t - 4] >> 4)"
    pre: list[str] = []
    if fp8 is not None:
        pre = fp8_scalar(fp8, "sf_fp8v")
        val = f"sf_fp8v({code})"
    elif fp4:
        pre = ["static const float sf_vlut[16] = {" + ", ".join(f"{v!r}f" for v in FP4_LUT_F32) + "};"]
        val = f"sf_vlut[{code}]"
    else:
        val = f"(float)({code})"
    if zbytes:
        wexpr = f"({val} - (float)((const uint8_t *)szg)[j]) * scg[j]"
    else:
        wexpr = f"{val} * scg[j] - ((const float *)szg)[j]"
    return pre + [
        "static void sf_row_exact(const float *restrict xr, const uint8_t *restrict wp, "
        "const void *restrict bp, float *restrict yr) {",
        "  const float *restrict bias = (const float *)bp; (void)bias;",
        f"  for (int64_t pi = 0; pi < {P}; pi++) {{",
        f"    const int64_t n0 = pi * {nr}, nv = {N} - n0 < {nr} ? {N} - n0 : {nr};",
        f"    double acc[{nr}];",
        f"    for (int64_t j = 0; j < {nr}; j++) acc[j] = 0;",
        f"    for (int64_t gi = 0; gi < {G}; gi++) {{",
        f"      const int64_t nbk = gi == {G - 1} ? {glp // 8} : {gp // 8};",
        f"      const int64_t c0 = gi * {g}, len = {K} - c0 < {g} ? {K} - c0 : {g};",
        f"      const uint8_t *wg = wp + pi * {pbytes} + gi * {gs};",
        f"      const float *scg = (const float *)(wg + nbk * {nr * bits});",
        f"      const void *szg = (const void *)(scg + {nr});",
        "      for (int64_t b = 0; b < nbk; b++)",
        "        for (int t = 0; t < 8; t++) {",
        "          const int64_t c = 8 * b + t;",
        "          if (c >= len) continue;",
        "          const double xv = xr[c0 + c];",
        "          for (int64_t j = 0; j < nv; j++) {",
        f"            const float w = {wexpr};",
        "            acc[j] += xv * (double)w;",
        "          }",
        "        }",
        "    }",
        "    for (int64_t j = 0; j < nv; j++) {",
        "      const int64_t n = n0 + j;",
        "      (void)n;",
        f"      yr[n] = (float)(acc[j]{' + (double)bias[n]' if bias else ''});",
        "    }",
        "  }",
        "}"]
