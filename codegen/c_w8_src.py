"""C text of the 8-bit code tiles of the group-wise weight-only ``qlinear`` template
(``codegen/c_w4.py``; packed layout: runtime/w8pack.py).

The tiles follow the 4-bit ones of ``c_w4_src.py`` (same signature ``SIG``, same per-group fold
``ct += s * dot - xs * sz``), only the code bytes differ: a 32-bit lane holds four slots of
one channel, one byte each, so a lane's byte ``t`` becomes a float by shift + mask + convert
(integer codes, 0..255 after the packing's offset) or, for float8 codes, by moving its
exponent / mantissa bits to float32's places, its sign bit to bit 31 and one multiply by
``2^(127 - bias)`` (exact, subnormal codes included). The int8-activation kernel needs no
tile of its own: the packed bytes are ``vpdpbusd``'s operands as they are, the decoded layout
``c_w4_src.tile_vnni(buffered=True)`` reads.
"""
from __future__ import annotations

from ..runtime.w8pack import FP8_BITS
from .c_w4_src import SIG, _fold_chains, _group_end, _prefetch, f32_tile_head, scalar_fold


def _consts(fp8: str | None) -> list[str]:
    """The tiles' constant vectors: the byte mask, or float8's magnitude mask, sign bit and
    exponent rebias factor."""
    if fp8 is None:
        return ["  const __m512i mff = _mm512_set1_epi32(255);"]
    mask, sh, bias = FP8_BITS[fp8]
    return [f"  const __m512i mmag = _mm512_set1_epi32({mask << sh});",
            "  const __m512i msgn = _mm512_set1_epi32(-2147483647 - 1);",
            f"  const __m512 rebias = _mm512_set1_ps({float(2.0 ** (127 - bias))!r}f);"]


def _shift(w: str, left: int) -> str:
    """``w`` shifted left by ``left`` bits (right for negative ``left``)."""
    if left > 0:
        return f"_mm512_slli_epi32({w}, {left})"
    return f"_mm512_srli_epi32({w}, {-left})" if left < 0 else w


def _load_half(h: int, nb: int) -> list[str]:
    """Load half ``h`` of the 8-slot block at ``wb``: ``w{h}_{j}``, ``nb`` zmm of 16 lanes."""
    return [f"    const __m512i w{h}_{j} = _mm512_loadu_si512((const void *)"
            f"(wb + {h * 64 * nb + 64 * j}));" for j in range(nb)]


def fp8_scalar(fp8: str, name: str) -> list[str]:
    """C function ``float name(uint32_t v)``: the value of float8 code ``v`` (bits moved into
    float32's places, times 2^(127 - bias))."""
    mask, sh, bias = FP8_BITS[fp8]
    return [f"static inline float {name}(uint32_t v) {{",
            f"  const uint32_t u = ((v & {mask}u) << {sh}) | ((v & 128u) << 24);",
            "  float f; memcpy(&f, &u, 4);",
            f"  return f * {float(2.0 ** (127 - bias))!r}f;",
            "}"]


def byte_f32(w: str, t: int, fp8: str | None) -> str:
    """Float value of byte ``t`` of every 32-bit lane of ``w`` (``fp8``: as that float8 code)."""
    if fp8 is None:
        v = _shift(w, -8 * t)
        return f"_mm512_cvtepi32_ps({v if t == 3 else f'_mm512_and_si512({v}, mff)'})"
    _, sh, _ = FP8_BITS[fp8]
    mag, sgn = _shift(w, sh - 8 * t), _shift(w, 24 - 8 * t)
    # (mag & mmag) | (sgn & msgn): 0xEA is (A & B) | C
    bits = f"_mm512_ternarylogic_epi32({mag}, mmag, _mm512_and_si512({sgn}, msgn), 0xEA)"
    return f"_mm512_mul_ps(_mm512_castsi512_ps({bits}), rebias)"


def tile_f32_direct8(r: int, nb: int, pf: int = 0, fp8: str | None = None) -> list[str]:
    """Weight-only tile reading the packed bytes (GEMV shape: each weight load serves all
    ``r`` rows), one FMA per row and 16 codes; ``pf``: prefetch distance in bytes (0: none)."""
    nr = 16 * nb
    out, acc = f32_tile_head(f"sf_fd{r}", r, nb, _consts(fp8))
    c = len(acc)
    out += ["  for (int64_t b = 0; b < nbk; b++) {",
            f"    const uint8_t *wb = wk + b * {nr * 8};"]
    out += _prefetch("wb", pf, 2 * nb, "    ")
    for h in range(2):
        out += _load_half(h, nb)
        for t in range(4):
            cc = (2 * h + t) % c
            for j in range(nb):
                out.append(f"    const __m512 f{h}{t}_{j} = {byte_f32(f'w{h}_{j}', t, fp8)};")
            for i in range(r):
                out.append(f"    {{ const __m512 xb = _mm512_set1_ps(x{i}[8 * b + {4 * h + t}]);")
                for j in range(nb):
                    out.append(f"      {acc[cc][i][j]} = _mm512_fmadd_ps(f{h}{t}_{j}, xb, "
                               f"{acc[cc][i][j]});")
                out.append("    }")
    out.append("  }")
    out += _fold_chains(acc, r, nb) + _group_end(r, nb, nr, acc[0], False, fp8 is None) + ["}"]
    return out


def decode_group8(nb: int, pf: int = 0, fp8: str | None = None) -> list[str]:
    """Unpack one group of a panel into float code values ``wf[slot][nr]`` (the GEMM shape:
    decoded once, read by ``c_w4_src.tile_f32_buf``'s row tiles)."""
    nr = 16 * nb
    out = ["static inline void sf_decode(const uint8_t *restrict wk, int64_t nbk, "
           "float *restrict wf) {", *_consts(fp8),
           "  for (int64_t b = 0; b < nbk; b++) {",
           f"    const uint8_t *wb = wk + b * {nr * 8};",
           f"    float *fb = wf + b * {8 * nr};"]
    out += _prefetch("wb", pf, 2 * nb, "    ")
    for h in range(2):
        out += _load_half(h, nb)
        for j in range(nb):
            for t in range(4):
                out.append(f"    _mm512_storeu_ps(fb + {(4 * h + t) * nr + 16 * j}, "
                           f"{byte_f32(f'w{h}_{j}', t, fp8)});")
    out += ["  }", "}"]
    return out


def tile_scalar8(nb: int, isint: bool, fp8: str | None = None) -> list[str]:
    """The portable tile (any number of rows ``R``) over the same packed layout."""
    nr = 16 * nb
    xt, at = ("int8_t", "int32_t") if isint else ("float", "float")
    if fp8 is None:
        val = f"({at})wb[h * {nr * 4} + t]"
        pre: list[str] = []
    else:
        pre = fp8_scalar(fp8, "sf_fp8")
        val = f"sf_fp8(wb[h * {nr * 4} + t])"
    return pre + [
        "static void sf_tile_s(int64_t R, " + SIG.format(xt=xt)[1:] + " {",
        "  for (int64_t i = 0; i < R; i++) {",
        f"    for (int64_t j = 0; j < {nr}; j++) {{",
        f"      {at} acc = 0;",
        "      for (int64_t b = 0; b < nbk; b++) {",
        f"        const uint8_t *wb = wk + b * {nr * 8} + j * 4;",
        f"        const {xt} *xb = x + i * ldx + 8 * b;",
        "        for (int h = 0; h < 2; h++)",
        "          for (int t = 0; t < 4; t++)",
        f"            acc += xb[4 * h + t] * {val};",
        "      }",
        *scalar_fold(nr, isint),
        "    }",
        "  }",
        "}",
    ]
