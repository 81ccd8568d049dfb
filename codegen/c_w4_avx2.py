"""AVX2 form of the group-wise 4-bit ``qlinear`` template's portable tile ``sf_tile_s``
(``codegen/c_w4_src.py``), compiled where the compiler has AVX2 + FMA but no AVX-512
(``codegen/c_w4.py``): same signature, packed layout (runtime/w4pack.py) and group fold.

One ymm holds 8 channels' 32-bit lanes of an 8-slot block; 16 channels go at a time.

- Weight-only (float x): nibble ``n`` of every lane is shifted, masked and converted to
  float, then multiplied by the broadcast activation of its slot; even and odd nibbles feed
  separate accumulators so that four FMA chains are in flight.
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


def tile_avx2(nb: int, isint: bool) -> list[str]:
    """``sf_tile_s`` (any number of rows ``R``) for u4 / i4 nibbles with AVX2 + FMA; panels of
    ``16 * nb`` channels."""
    nr = 16 * nb
    xt = "int8_t" if isint else "float"
    out = ["static void sf_tile_s(int64_t R, " + SIG.format(xt=xt)[1:] + " {"]
    if isint:
        out += ["  const __m256i m4 = _mm256_set1_epi8(0x0F), one16 = _mm256_set1_epi16(1);",
                "  int32_t sums[16];"]
    else:
        out += ["  const __m256i m4 = _mm256_set1_epi32(0x0F);", "  float sums[16];"]
    out += ["  for (int64_t i = 0; i < R; i++) {",
            f"    const {xt} *restrict xi = x + i * ldx;",
            f"    for (int64_t j0 = 0; j0 < {nr}; j0 += 16) {{"]
    if isint:
        out += ["      __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();",
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
                "      _mm256_storeu_si256((__m256i *)sums, a0);",
                "      _mm256_storeu_si256((__m256i *)(sums + 8), a1);"]
    else:
        out += ["      __m256 e0 = _mm256_setzero_ps(), e1 = _mm256_setzero_ps();",
                "      __m256 o0 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps();",
                "      for (int64_t b = 0; b < nbk; b++) {",
                f"        const uint8_t *wb = wk + b * {nr * 4} + j0 * 4;",
                "        const float *xb = xi + 8 * b;",
                "        const __m256i w0 = _mm256_loadu_si256((const __m256i *)wb);",
                "        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wb + 32));"]
        for t in range(4):
            for half, (acc0, acc1, slot) in enumerate((("e0", "e1", t), ("o0", "o1", 4 + t))):
                sh = 8 * t + 4 * half
                out += [f"        {{ const __m256 xv = _mm256_broadcast_ss(xb + {slot});",
                        f"          {acc0} = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256("
                        f"_mm256_srli_epi32(w0, {sh}), m4)), xv, {acc0});",
                        f"          {acc1} = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256("
                        f"_mm256_srli_epi32(w1, {sh}), m4)), xv, {acc1}); }}"]
        out += ["      }",
                "      _mm256_storeu_ps(sums, _mm256_add_ps(e0, o0));",
                "      _mm256_storeu_ps(sums + 8, _mm256_add_ps(e1, o1));"]
    fold = [ln.replace("ct[i * " + str(nr) + " + j]", f"ct[i * {nr} + j0 + jj]")
              .replace("sc[j]", "sc[j0 + jj]").replace("SF_Z(sz, j,", "SF_Z(sz, j0 + jj,")
              .replace("((const uint8_t *)sz)[j]", "((const uint8_t *)sz)[j0 + jj]")
            for ln in scalar_fold(nr, isint)]
    out += ["      for (int jj = 0; jj < 16; jj++) {",
            "        const " + ("int32_t" if isint else "float") + " acc = sums[jj];",
            *fold,
            "      }",
            "    }",
            "  }",
            "}"]
    return out
