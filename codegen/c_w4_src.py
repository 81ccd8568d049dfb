"""C text of the group-wise 4-bit ``qlinear`` template's inner tiles (``codegen/c_w4.py``).

Every tile computes, for ``r`` rows and one group of one panel (``nr = 16 * nb`` channels),
the group's dot products of the activations with the raw nibbles (0..15) and folds them into
the float tile sums ``ct`` as ``ct += s * dot - xs * sz`` (per-group scale and scale x zero
point; ``xs`` = the activations' sum over the group). Pointer arguments are positioned at the
group: ``x`` at row 0's first slot (row stride ``ldx``), ``wk`` at the group's first 8-slot
block of the panel, ``sc`` at the group's ``nr`` scales, ``sz`` at its zero-point block (read
through the kernel's ``SF_LOADZ`` / ``SF_Z``: ``sz`` floats, or ``s * ze`` from ``ze`` bytes),
``xs`` at row 0's group sum
(row stride ``ldxs``), ``ct`` at row 0 (row stride ``nr``). Packed layout: runtime/w4pack.py.

f4e2m1 weights (``fp4=True``) keep the layout; the nibble (the E2M1 code) goes through a
16-entry table instead of being its own value: weight-only, ``vpermps`` on the 32-bit lane
shifted so the nibble is in its low 4 bits (the instruction reads only those, so no mask) with
the signed E2M1 values as the table, and no zero-point term (``sz`` = 0: the fold drops it);
int8 activations, ``vpshufb`` of the masked bytes with the 16 bytes ``2 v + 12`` in every
128-bit lane, folded with ``ze = 12`` and scale ``s / 2`` like the i4 codes' ``+8``.
"""
from __future__ import annotations

from ..runtime.w4pack import FP4_LUT_F32, FP4_LUT_U8

# Slot (within an 8-slot block) held by nibble i of a 32-bit lane: byte i/2, low then high half.
SLOT = [i // 2 + 4 * (i % 2) for i in range(8)]

SIG = ("(const {xt} *restrict x, int64_t ldx, const uint8_t *restrict wk, int64_t nbk, "
       "const float *restrict sc, const void *restrict sz, const float *restrict xs, "
       "int64_t ldxs, float *restrict ct)")


def _fold_chains(acc: list[list[list[str]]], r: int, nb: int) -> list[str]:
    """Add the independent accumulator chains 1.. (kept apart to hide FMA latency) into
    chain 0."""
    return [f"  {acc[0][i][j]} = _mm512_add_ps({acc[0][i][j]}, {acc[cc][i][j]});"
            for cc in range(1, len(acc)) for i in range(r) for j in range(nb)]


def _group_end(r: int, nb: int, nr: int, acc: list[list[str]], isint: bool,
               zp: bool = True) -> list[str]:
    """Fold the group's dot products into ``ct``; ``zp=False``: no zero-point term (sz = 0).
    Integer sums with integer zero points (``SF_ZINT``, set by the kernel when the ze bytes are
    stored and sum (u - ze) * code fits int32) subtract ze * (code sum) exactly in int32 before
    the one float multiply by the scale: the float fold s * dot - s ze * sum loses the digits
    of channels whose codes sit near a large zero point."""
    if isint and zp:
        return (["#if SF_ZINT"] + _group_end_zint(r, nb, nr, acc) + ["#else"] +
                _group_end_float(r, nb, nr, acc, isint, zp) + ["#endif"])
    return _group_end_float(r, nb, nr, acc, isint, zp)


def _group_end_zint(r: int, nb: int, nr: int, acc: list[list[str]]) -> list[str]:
    """The exact integer fold of :func:`_group_end` (ze bytes at ``sz``)."""
    out = []
    for j in range(nb):
        out.append(f"  const __m512 s{j} = _mm512_loadu_ps(sc + {16 * j});")
        out.append(f"  const __m512i z{j} = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)"
                   f"((const uint8_t *)sz + {16 * j})));")
    for i in range(r):
        out.append(f"  {{ const __m512i xs{i} = _mm512_set1_epi32((int32_t)xs[{i} * ldxs]);")
        for j in range(nb):
            p = f"ct + {i * nr + 16 * j}"
            d = f"_mm512_sub_epi32({acc[i][j]}, _mm512_mullo_epi32(z{j}, xs{i}))"
            out.append(f"    _mm512_storeu_ps({p}, _mm512_fmadd_ps(_mm512_cvtepi32_ps({d}), s{j}, "
                       f"_mm512_loadu_ps({p})));")
        out.append("  }")
    return out


def _group_end_float(r: int, nb: int, nr: int, acc: list[list[str]], isint: bool, zp: bool) -> list[str]:
    """The float fold of :func:`_group_end`."""
    out = ["  (void)xs; (void)ldxs; (void)sz;"] if not zp else []
    for j in range(nb):
        out.append(f"  const __m512 s{j} = _mm512_loadu_ps(sc + {16 * j})" +
                   (f", z{j} = SF_LOADZ(sz, {16 * j}, s{j});" if zp else ";"))
    for i in range(r):
        out.append(f"  {{ const __m512 xs{i} = _mm512_set1_ps(xs[{i} * ldxs]);" if zp else "  {")
        for j in range(nb):
            a = f"_mm512_cvtepi32_ps({acc[i][j]})" if isint else acc[i][j]
            p = f"ct + {i * nr + 16 * j}"
            f = f"_mm512_fmadd_ps({a}, s{j}, _mm512_loadu_ps({p}))"
            out.append(f"    _mm512_storeu_ps({p}, " +
                       (f"_mm512_fnmadd_ps(xs{i}, z{j}, {f}));" if zp else f"{f});"))
        out.append("  }")
    return out


def scalar_fold(nr: int, isint: bool) -> list[str]:
    """The portable tiles' fold of the group sum ``acc`` into ``ct``: an int32 sum (``isint``)
    exactly in int32 under ``SF_ZINT`` (see :func:`_group_end`), else in float."""
    flt = ["      ct[i * " + str(nr) + " + j] += (float)acc * sc[j] - xs[i * ldxs] * SF_Z(sz, j, sc[j]);"]
    if not isint:
        return flt
    return ["#if SF_ZINT",
            "      ct[i * " + str(nr) + " + j] += (float)(acc - (int32_t)((const uint8_t *)sz)[j] * "
            "(int32_t)xs[i * ldxs]) * sc[j];",
            "#else", *flt, "#endif"]


def _lut_f32(fp4: bool = True) -> str:
    """The nibbles' float values as a zmm table for ``_mm512_permutexvar_ps``: the signed
    E2M1 values (``fp4``), else 0..15 (one ``vpermps`` replaces mask + convert)."""
    vals = FP4_LUT_F32 if fp4 else tuple(float(v) for v in range(16))
    return "  const __m512 lut = _mm512_setr_ps(" + ", ".join(f"{v!r}f" for v in vals) + ");"


def _lut_u8() -> str:
    """``2 v + 12`` per E2M1 code, the same 16 bytes in every 128-bit lane for ``vpshufb``."""
    return ("  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(" +
            ", ".join(str(v) for v in FP4_LUT_U8) + "));")


def _nibble_f32(w: str, n: int, fp4: bool, perm: bool = False) -> str:
    """Float value of nibble ``n`` of every 32-bit lane of ``w``; ``perm``: through the table
    (``fp4`` always is)."""
    v = w if n == 0 else f"_mm512_srli_epi32({w}, {4 * n})"
    if fp4 or perm:
        return f"_mm512_permutexvar_ps({v}, lut)"       # reads the index's low 4 bits only
    if n < 7:
        v = f"_mm512_and_si512({v}, m4)"
    return f"_mm512_cvtepi32_ps({v})"


def _copies(r: int, nb: int) -> int:
    """Independent accumulator sets so that at least ~8 dependency chains are in flight."""
    return max(1, min(4, 8 // (r * nb)))


def _prefetch(base: str, pf: int, nb: int, ind: str) -> list[str]:
    """Software prefetch of the ``nb`` weight lines ``pf`` bytes (a group or two) ahead: the
    hardware prefetcher alone left the first row tile of each group waiting on L2 / L3."""
    return [f"{ind}_mm_prefetch((const char *)({base} + {pf + 64 * j}), _MM_HINT_T0);"
            for j in range(nb)] if pf else []


def f32_tile_head(name: str, r: int, nb: int, consts: list[str]
                  ) -> tuple[list[str], list[list[list[str]]]]:
    """Opening of a weight-only float tile ``name``: signature, ``consts``, the ``r`` row
    pointers and zeroed accumulator sets (``_copies``); returns (lines, accumulator names
    [set][row][16-channel block])."""
    c = _copies(r, nb)
    acc = [[[f"a{cc}_{i}_{j}" for j in range(nb)] for i in range(r)] for cc in range(c)]
    out = [f"static inline void {name}" + SIG.format(xt="float") + " {", *consts]
    for i in range(r):
        out.append(f"  const float *x{i} = x + {i} * ldx;")
    for cc in range(c):
        out.append("  __m512 " + ", ".join(f"{a} = _mm512_setzero_ps()" for row in acc[cc]
                                           for a in row) + ";")
    return out, acc


def tile_f32_direct(r: int, nb: int, pf: int = 0, fp4: bool = False, perm: bool = False
                    ) -> list[str]:
    """Weight-only tile reading the packed nibbles (GEMV shape: each weight load serves all
    ``r`` rows): shift, mask, convert to float (``fp4`` or ``perm``: shift, table lookup), one
    FMA per row; ``pf``: prefetch distance in bytes (0: none)."""
    nr = 16 * nb
    out, acc = f32_tile_head(f"sf_fd{r}", r, nb, [
        _lut_f32(fp4) if fp4 or perm else "  const __m512i m4 = _mm512_set1_epi32(15);"])
    c = len(acc)
    out += ["  for (int64_t b = 0; b < nbk; b++) {",
            f"    const uint8_t *wb = wk + b * {nr * 4};"]
    for j in range(nb):
        out.append(f"    const __m512i w{j} = _mm512_loadu_si512((const void *)(wb + {64 * j}));")
    out += _prefetch("wb", pf, nb, "    ")
    for n in range(8):
        cc = n % c
        for j in range(nb):
            out.append(f"    const __m512 f{n}_{j} = {_nibble_f32(f'w{j}', n, fp4, perm)};")
        for i in range(r):
            out.append(f"    {{ const __m512 xb = _mm512_set1_ps(x{i}[8 * b + {SLOT[n]}]);")
            for j in range(nb):
                out.append(f"      {acc[cc][i][j]} = _mm512_fmadd_ps(f{n}_{j}, xb, {acc[cc][i][j]});")
            out.append("    }")
    out.append("  }")
    out += _fold_chains(acc, r, nb) + _group_end(r, nb, nr, acc[0], False, not fp4) + ["}"]
    return out


def decode_group(nb: int, pf: int = 0, fp4: bool = False) -> list[str]:
    """Unpack one group of a panel into float nibble values ``wf[slot][nr]`` (the GEMM shape:
    decoded once, read by every row tile); ``pf`` as in :func:`tile_f32_direct`; ``fp4``:
    the E2M1 values."""
    nr = 16 * nb
    out = ["static inline void sf_decode(const uint8_t *restrict wk, int64_t nbk, "
           "float *restrict wf) {",
           _lut_f32() if fp4 else "  const __m512i m4 = _mm512_set1_epi32(15);",
           "  for (int64_t b = 0; b < nbk; b++) {",
           f"    const uint8_t *wb = wk + b * {nr * 4};",
           f"    float *fb = wf + b * {8 * nr};"]
    out += _prefetch(f"wk + b * {nr * 4}", pf, nb, "    ")
    for j in range(nb):
        out.append(f"    const __m512i w{j} = _mm512_loadu_si512((const void *)(wb + {64 * j}));")
        for n in range(8):
            out.append(f"    _mm512_storeu_ps(fb + {SLOT[n] * nr + 16 * j}, "
                       f"{_nibble_f32(f'w{j}', n, fp4)});")
    out += ["  }", "}"]
    return out


def tile_f32_buf(r: int, nb: int, zp: bool = True) -> list[str]:
    """Weight-only tile over a decoded group ``wf`` (passed as ``wk``): one vector load per
    16 channels and slot, ``r`` FMAs on it; ``zp=False``: no zero-point term (f4e2m1)."""
    nr = 16 * nb
    out, acc = f32_tile_head(f"sf_fb{r}", r, nb, ["  const float *restrict wf = (const float *)wk;"])
    c = len(acc)
    out += ["  for (int64_t s = 0; s < 8 * nbk; s += 2) {"]
    for u in range(2):
        cc = u % c
        for j in range(nb):
            out.append(f"    const __m512 f{u}_{j} = _mm512_loadu_ps(wf + (s + {u}) * {nr} + {16 * j});")
        for i in range(r):
            out.append(f"    {{ const __m512 xb = _mm512_set1_ps(x{i}[s + {u}]);")
            for j in range(nb):
                out.append(f"      {acc[cc][i][j]} = _mm512_fmadd_ps(f{u}_{j}, xb, {acc[cc][i][j]});")
            out.append("    }")
    out.append("  }")
    out += _fold_chains(acc, r, nb) + _group_end(r, nb, nr, acc[0], False, zp) + ["}"]
    return out


def _bytes_u8(w: str, high: bool, fp4: bool) -> str:
    """The u8 bytes of the low (high) slots of ``w`` for ``vpdpbusd``: masked nibbles, through
    the ``2 v + 12`` table for f4e2m1."""
    v = f"_mm512_and_si512({f'_mm512_srli_epi16({w}, 4)' if high else w}, m4)"
    return f"_mm512_shuffle_epi8(lut, {v})" if fp4 else v


def decode_u8(nb: int, fp4: bool = False) -> list[str]:
    """Unpack one group of a panel into u8 bytes: per 8-slot block the low-slot bytes
    (``nr * 4``) then the high-slot bytes, ready for ``vpdpbusd`` (the GEMM shape)."""
    nr = 16 * nb
    out = ["static inline void sf_decode8(const uint8_t *restrict wk, int64_t nbk, "
           "uint8_t *restrict wq) {",
           "  const __m512i m4 = _mm512_set1_epi8(15);"] + ([_lut_u8()] if fp4 else []) + [
           "  for (int64_t b = 0; b < nbk; b++) {"]
    for j in range(nb):
        out += [f"    const __m512i w{j} = _mm512_loadu_si512((const void *)(wk + b * {nr * 4} + {64 * j}));",
                f"    _mm512_storeu_si512((void *)(wq + b * {nr * 8} + {64 * j}), "
                f"{_bytes_u8(f'w{j}', False, fp4)});",
                f"    _mm512_storeu_si512((void *)(wq + b * {nr * 8} + {nr * 4 + 64 * j}), "
                f"{_bytes_u8(f'w{j}', True, fp4)});"]
    out += ["  }", "}"]
    return out


def tile_vnni(r: int, nb: int, buffered: bool = False, pf: int = 0, fp4: bool = False,
              name: str | None = None) -> list[str]:
    """Int8-activation tile: mask / shift the nibbles to u8 bytes (``fp4``: then through the
    ``2 v + 12`` table; or, ``buffered``, read them decoded by :func:`decode_u8`) and
    ``vpdpbusd`` them with four activation codes broadcast per row; exact int32 sums per
    group, then the float fold. ``pf``: prefetch distance in bytes of the packed nibbles (0:
    none; the direct form only). ``name``: the function's name (default ``sf_qd<r>``, or
    ``sf_qb<r>`` buffered)."""
    nr = 16 * nb
    halves = 2 if r * nb < 8 else 1          # separate accumulators for the low / high slots
    unroll = 2 if r * nb * halves < 8 else 1
    sets = [(u, h) for u in range(unroll) for h in range(halves)]
    acc = {s: [[f"a{s[0]}{s[1]}_{i}_{j}" for j in range(nb)] for i in range(r)] for s in sets}
    name = name or (f"sf_qb{r}" if buffered else f"sf_qd{r}")
    out = [f"static inline void {name}" + SIG.format(xt="int8_t") + " {",
           "  const __m512i m4 = _mm512_set1_epi8(15);"]
    if fp4 and not buffered:
        out.append(_lut_u8())
    for i in range(r):
        out.append(f"  const int8_t *x{i} = x + {i} * ldx;")
    for s in sets:
        out.append("  __m512i " + ", ".join(f"{a} = _mm512_setzero_si512()" for row in acc[s]
                                            for a in row) + ";")

    def block(u: int, b: str) -> list[str]:
        o = [f"    {{ const uint8_t *wb = wk + ({b}) * {nr * (8 if buffered else 4)};"]
        for j in range(nb):
            if buffered:
                o.append(f"      const __m512i l{j} = _mm512_loadu_si512((const void *)(wb + {64 * j})), "
                         f"h{j} = _mm512_loadu_si512((const void *)(wb + {nr * 4 + 64 * j}));")
                continue
            o.append(f"      const __m512i w{j} = _mm512_loadu_si512((const void *)(wb + {64 * j}));")
            o += _prefetch(f"wb + {64 * j}", pf, 1, "      ")
            o.append(f"      const __m512i l{j} = {_bytes_u8(f'w{j}', False, fp4)}, "
                     f"h{j} = {_bytes_u8(f'w{j}', True, fp4)};")
        for i in range(r):
            o.append(f"      {{ const __m512i bl = _mm512_set1_epi32(sf_ld32(x{i} + 8 * ({b}))), "
                     f"bh = _mm512_set1_epi32(sf_ld32(x{i} + 8 * ({b}) + 4));")
            for j in range(nb):
                o.append(f"        SF_DPBUSD({acc[(u, 0)][i][j]}, l{j}, bl);")
                o.append(f"        SF_DPBUSD({acc[(u, halves - 1)][i][j]}, h{j}, bh);")
            o.append("      }")
        o.append("    }")
        return o

    if unroll == 2:
        out.append("  int64_t b = 0;")
        out.append("  for (; b + 1 < nbk; b += 2) {")
        out += block(0, "b") + block(1, "b + 1")
        out.append("  }")
        out.append("  if (b < nbk) {")
        out += block(0, "b")
        out.append("  }")
    else:
        out.append("  for (int64_t b = 0; b < nbk; b++) {")
        out += block(0, "b")
        out.append("  }")
    for s in sets[1:]:
        for i in range(r):
            for j in range(nb):
                out.append(f"  {acc[sets[0]][i][j]} = _mm512_add_epi32({acc[sets[0]][i][j]}, "
                           f"{acc[s][i][j]});")
    out += _group_end(r, nb, nr, acc[sets[0]], True) + ["}"]
    return out


def tile_scalar(nb: int, isint: bool, fp4: bool = False) -> list[str]:
    """The portable tile (any number of rows ``R``) over the same packed layout; ``fp4``: the
    nibbles through the kernel's table (E2M1 values, or ``2 v + 12`` with int8 activations)."""
    nr = 16 * nb
    xt, at = ("int8_t", "int32_t") if isint else ("float", "float")
    if fp4:
        vals = [str(v) for v in FP4_LUT_U8] if isint else [f"{v!r}f" for v in FP4_LUT_F32]
        lut = [f"static const {at} sf_lut[16] = {{" + ", ".join(vals) + "};"]
        nib = ["sf_lut[wb[t] & 15]", "sf_lut[wb[t] >> 4]"]
    else:
        lut, nib = [], [f"({at})(wb[t] & 15)", f"({at})(wb[t] >> 4)"]
    return lut + [
        f"static void sf_tile_s(int64_t R, " + SIG.format(xt=xt)[1:] + " {",
        "  for (int64_t i = 0; i < R; i++) {",
        f"    for (int64_t j = 0; j < {nr}; j++) {{",
        f"      {at} acc = 0;",
        "      for (int64_t b = 0; b < nbk; b++) {",
        f"        const uint8_t *wb = wk + b * {nr * 4} + j * 4;",
        f"        const {xt} *xb = x + i * ldx + 8 * b;",
        "        for (int t = 0; t < 4; t++)",
        f"          acc += xb[t] * {nib[0]} + xb[t + 4] * {nib[1]};",
        "      }",
        *scalar_fold(nr, isint),
        "    }",
        "  }",
        "}",
    ]
