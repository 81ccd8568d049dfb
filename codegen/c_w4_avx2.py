"""AVX2 form of the group-wise 4-bit ``qlinear`` template's portable tile ``sf_tile_s``
(``codegen/c_w4_src.py``), compiled where the compiler has AVX2 + FMA but no AVX-512
(``codegen/c_w4.py``): same signature, packed layout (runtime/w4pack.py) and group fold.

One ymm holds 8 channels' 32-bit lanes of an 8-slot block; 16 channels go at a time.

- Weight-only (float x): nibble ``n`` of every lane is shifted, masked and converted to
  float once for up to four rows, then multiplied by each row's broadcast activation of its
  slot; a lone row keeps even and odd nibbles in separate accumulators so that four FMA
  chains are in flight.
- int8 activations: the masked lanes are the u8 bytes of slots ``8b..8b+3`` and (shifted by
  4) ``8b+4..8b+7``; ``vpmaddubsw`` with the broadcast s8 activations gives int16 pair sums
  (at most 2 * 15 * 127, exact: no saturation for 4-bit codes), the two halves add in int16
  (at most 4 * 15 * 127) and ``vpmaddwd`` with ones widens them into exact int32 sums. 8-bit
  codes would saturate ``vpmaddubsw`` and keep the portable tile.

The group's sums then go through the portable tile's fold (``scalar_fold``), so the int8
route's results equal the portable tile's exactly and the float route's differ only by the
order of the float sums.
"""
from __future__ import annotations

from .c_w4_src import SIG, scalar_fold


def _float_rows(nr: int, rr: int) -> list[str]:
    """Float sums of ``rr`` rows (from row ``i``) over the group for 16 channels from ``j0``
    into ``sums[r][16]``: each nibble vector decoded once for the rows; one row keeps even and
    odd nibbles in separate accumulators (four FMA chains in flight)."""
    split = rr == 1
    acc = [[f"a{r}_{h}" for h in range(2)] for r in range(rr)]
    out = ["      " + " ".join(f"__m256 {a} = _mm256_setzero_ps();" for row in acc for a in row)]
    if split:
        out.append("      __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps();")
    out += ["      for (int64_t b = 0; b < nbk; b++) {",
            f"        const uint8_t *wb = wk + b * {nr * 4} + j0 * 4;",
            "        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb);",
            "        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wb + 32));"]
    for t in range(4):
        for half in range(2):
            slot, sh = t + 4 * half, 8 * t + 4 * half
            out.append(f"        {{ const __m256 v0 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w0, {sh}), m4)), "
                       f"v1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(w1, {sh}), m4));")
            for r in range(rr):
                a0, a1 = ("o0", "o1") if split and half else acc[r]
                out.append(f"          {{ const __m256 xv = _mm256_broadcast_ss(x + (i + {r}) * ldx + 8 * b + {slot}); "
                           f"{a0} = _mm256_fmadd_ps(v0, xv, {a0}); {a1} = _mm256_fmadd_ps(v1, xv, {a1}); }}")
            out.append("        }")
    out.append("      }")
    if split:
        out += ["      a0_0 = _mm256_add_ps(a0_0, o0); a0_1 = _mm256_add_ps(a0_1, o1);"]
    for r in range(rr):
        out.append(f"      _mm256_storeu_ps(sums[{r}], {acc[r][0]}); _mm256_storeu_ps(sums[{r}] + 8, {acc[r][1]});")
    return out


def _fold(nr: int, isint: bool, rr: str) -> list[str]:
    """The portable tile's fold (``scalar_fold``) of ``sums`` for rows ``i .. i + rr`` and the
    16 channels from ``j0``."""
    fold = [ln.replace("ct[i * " + str(nr) + " + j]", f"ct[(i + r) * {nr} + j0 + jj]")
              .replace("xs[i * ldxs]", "xs[(i + r) * ldxs]")
              .replace("sc[j]", "sc[j0 + jj]").replace("SF_Z(sz, j,", "SF_Z(sz, j0 + jj,")
              .replace("((const uint8_t *)sz)[j]", "((const uint8_t *)sz)[j0 + jj]")
            for ln in scalar_fold(nr, isint)]
    return [f"      for (int64_t r = 0; r < {rr}; r++)",
            "      for (int jj = 0; jj < 16; jj++) {",
            "        const " + ("int32_t" if isint else "float") + " acc = sums[r][jj];",
            *fold,
            "      }"]


def tile_avx2(nb: int, isint: bool) -> list[str]:
    """``sf_tile_s`` (any number of rows ``R``) for u4 / i4 nibbles with AVX2 + FMA; panels of
    ``16 * nb`` channels. Float rows go four at a time where four remain (each decoded nibble
    vector serves them all), then one at a time."""
    nr = 16 * nb
    xt = "int8_t" if isint else "float"
    out = ["static void sf_tile_s(int64_t R, " + SIG.format(xt=xt)[1:] + " {"]
    if isint:
        out += ["  const __m256i m4 = _mm256_set1_epi8(0x0F), one16 = _mm256_set1_epi16(1);",
                "  int32_t sums[1][16];",
                "  for (int64_t i = 0; i < R; i++) {",
                "    const int8_t *restrict xi = x + i * ldx;",
                f"    for (int64_t j0 = 0; j0 < {nr}; j0 += 16) {{",
                "      __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();",
                "      for (int64_t b = 0; b < nbk; b++) {",
                f"        const uint8_t *wb = wk + b * {nr * 4} + j0 * 4;",
                "        int32_t x0, x1;",
                "        memcpy(&x0, xi + 8 * b, 4); memcpy(&x1, xi + 8 * b + 4, 4);",
                "        const __m256i xb0 = _mm256_set1_epi32(x0), xb1 = _mm256_set1_epi32(x1);",
                "        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb);",
                "        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wb + 32));",
                "        const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w0, m4), xb0),",
                "            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w0, 4), m4), xb1));",
                "        const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(w1, m4), xb0),",
                "            _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(w1, 4), m4), xb1));",
                "        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(p0, one16));",
                "        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(p1, one16));",
                "      }",
                "      _mm256_storeu_si256((__m256i *)sums[0], a0);",
                "      _mm256_storeu_si256((__m256i *)(sums[0] + 8), a1);",
                *_fold(nr, True, "1"),
                "    }",
                "  }",
                "}"]
        return out
    out += ["  const __m256i m4 = _mm256_set1_epi32(0x0F);",
            "  float sums[4][16];",
            "  int64_t i = 0;",
            "  for (; i + 4 <= R; i += 4)",
            f"    for (int64_t j0 = 0; j0 < {nr}; j0 += 16) {{",
            *_float_rows(nr, 4), *_fold(nr, False, "4"),
            "    }",
            "  for (; i < R; i++)",
            f"    for (int64_t j0 = 0; j0 < {nr}; j0 += 16) {{",
            *_float_rows(nr, 1), *_fold(nr, False, "1"),
            "    }",
            "}"]
    return out
