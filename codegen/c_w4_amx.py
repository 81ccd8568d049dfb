"""AMX tiles of the int8-activation weight-only ``qlinear`` template (``codegen/c_w4.py``).

On CPUs with AMX-INT8 (Intel Sapphire Rapids and later) one ``tdpbsud`` multiplies a 16 x 64
tile of signed activation codes by a 64 x 16 tile of unsigned weight bytes into 16 x 16 int32
sums: 16 K multiply-adds per instruction, against 64 for a ``vpdpbusd``. The decoded u8 group
of ``c_w4_src.decode_u8`` (8-bit codes: the packed bytes themselves) already is the B operand
in AMX's layout: an 8-slot block holds, per channel, its 4 low slots then (``4 * nr`` bytes on)
its 4 high slots, which are two rows of 4-byte channel groups, so a 64-slot step of one
16-channel column is 16 such rows at a stride of ``4 * nr`` bytes. The activation codes (the
prologue's ``xq``, padded group layout) are the A operand as they are, at a stride of ``ldx``.

:func:`amx_panel` takes 16 rows through one panel (``nr = 16 * nb``, nb <= 4: tile 0 holds
A, tiles 1-3 B in turn, tiles 4.. the nb accumulators) whose groups hold whole 64-slot steps. Its int32 sums are exact, as the VNNI tiles' are, and go through the same fold
(``c_w4_src._group_end``): results are bit-identical to the VNNI path.

Linux grants a process the AMX tile state only on request (``arch_prctl`` with
``ARCH_REQ_XCOMP_PERM``); :func:`amx_head` asks once per process and the kernel falls back to
the VNNI tiles where that fails, or where the compiler does not target AMX (``SF_AMX`` 0).
Each OpenMP thread loads the tile configuration before its first tile and releases the tile
state at the end of the region.
"""
from __future__ import annotations

from .c_w4_src import _bytes_u8, _group_end, _lut_u8

ROWS = 16          # rows of an A tile and of the accumulators
SLOTS = 64         # activation codes (bytes) per A tile row: 8 blocks of 8 slots
NB = 4             # 16-channel columns per panel: accumulator tiles 4..7


def amx_ok(nb: int, gp: int, glp: int, mc: int) -> bool:
    """Whether the AMX tiles take panels of ``16 * nb`` channels, groups of ``gp`` slots (the
    last one ``glp``) and row chunks of ``mc``: four 16-channel columns, whole 64-slot steps,
    whole 16-row tiles per chunk."""
    return nb == NB and gp % SLOTS == 0 and glp % SLOTS == 0 and mc % ROWS == 0


def amx_head(vec: str = "SF_W4_VEC") -> list[str]:
    """``SF_AMX`` (compiled for AMX-INT8 on Linux, and the kernel's vector tiles, macro
    ``vec``, on), the once-per-process permission request ``sf_amx_ready()`` and the tile
    configuration ``sf_amx_cfg`` (8 tiles of 16 x 64 bytes)."""
    return [
        f"#if {vec} && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)",
        "#define SF_AMX 1",
        "#include <sys/syscall.h>",
        "#include <unistd.h>",
        "typedef struct { uint8_t palette, start; uint8_t pad[14]; uint16_t colsb[16]; "
        "uint8_t rows[16]; } sf_tilecfg;",
        "static const sf_tilecfg sf_amx_cfg __attribute__((aligned(64))) = {1, 0, {0}, "
        "{" + ", ".join(["64"] * 8 + ["0"] * 8) + "}, {" + ", ".join(["16"] * 8 + ["0"] * 8) + "}};",
        # 0x1023 = ARCH_REQ_XCOMP_PERM, 18 = XFEATURE_XTILEDATA; racing first calls ask twice,
        # which the kernel allows
        "static int sf_amx_ready(void) {",
        "  static int state = 0;",
        "  if (state == 0) state = syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 1 : -1;",
        "  return state > 0;",
        "}",
        "#else",
        "#define SF_AMX 0",
        "#endif",
        # set once a tile ran on AMX: tests read it to tell them from the VNNI fallback
        "int sf_amx_used = 0;",
    ]


def amx_decode(bits: int, fp4: bool) -> list[str]:
    """``sf_amx_decode``: one group of a panel (``nbk`` 8-slot blocks, a multiple of 8) as u8 B
    tiles, tile (step ``s``, column ``j``) at ``wq + (s * 4 + j) * 1 KiB`` with rows 64 bytes
    apart: block ``b``'s low slots are row ``2 (b % 8)``, its high slots the row after. 4-bit
    codes are unpacked (``c_w4_src._bytes_u8``); 8-bit ones are copied from their u8 layout."""
    nr = 16 * NB
    out = ["static inline void sf_amx_decode(const uint8_t *restrict wk, int64_t nbk, "
           "uint8_t *restrict wq) {"]
    if bits == 4:
        out += ["  const __m512i m4 = _mm512_set1_epi8(15);"] + ([_lut_u8()] if fp4 else [])
    out += ["  for (int64_t b = 0; b < nbk; b++) {",
            f"    uint8_t *d = wq + (b >> 3) * {NB * ROWS * SLOTS} + (b & 7) * {2 * SLOTS};"]
    for j in range(NB):
        dst = f"d + {j * ROWS * SLOTS}"
        if bits == 4:
            out += [f"    const __m512i w{j} = _mm512_loadu_si512((const void *)(wk + b * {nr * 4} + {64 * j}));",
                    f"    _mm512_store_si512((void *)({dst}), {_bytes_u8(f'w{j}', False, fp4)});",
                    f"    _mm512_store_si512((void *)({dst} + {SLOTS}), {_bytes_u8(f'w{j}', True, fp4)});"]
        else:
            out += [f"    _mm512_store_si512((void *)({dst}), _mm512_loadu_si512((const void *)"
                    f"(wk + b * {nr * 8} + {64 * j})));",
                    f"    _mm512_store_si512((void *)({dst} + {SLOTS}), _mm512_loadu_si512((const void *)"
                    f"(wk + b * {nr * 8} + {nr * 4 + 64 * j})));"]
    return out + ["  }", "}"]


def amx_panel(G: int, gp: int, glp: int, gs: int, bits: int, fp4: bool) -> list[str]:
    """``sf_qa_panel``: ``nt`` 16-row tiles through all ``G`` groups of one panel, folded into
    ``ct`` (row stride ``nr``) as the VNNI tiles fold. ``x``: the tiles' activation codes as
    :func:`amx_prologue` lays them out (tile ``t``, group ``gi`` at ``x + (t * G + gi) * 16 *
    gp``, one 1 KiB block per 64-slot step); ``wpp``: the panel's blob (group stride ``gs``);
    ``wbuf``: room for two groups in :func:`amx_decode`'s layout (each decoded once, for all
    tiles); ``xs``: row 0's group sums (row stride ``ldxs``).

    Each (group, tile) unit runs as two halves of two 16-channel columns, on accumulator tiles
    4-5 and 6-7: a half's products are issued before the other half's sums are stored, so the
    stores (which wait for their products) overlap the next products, and the fold of the
    previous unit (vector units, from one of two buffers) overlaps this unit's first half."""
    nr = 16 * NB
    # cb: accumulator tile j's 16 x 16 sums at cb + 256 j, rows 64 bytes apart
    acc = [[f"_mm512_load_si512((const void *)(cb + {256 * j + 16 * i}))" for j in range(NB)]
           for i in range(ROWS)]
    out = amx_decode(bits, fp4)
    out += ["static inline void sf_qa_fold(const int32_t *restrict cb, const float *restrict sc, "
           "const void *restrict sz, const float *restrict xs, int64_t ldxs, float *restrict ct) {"]
    out += _group_end(ROWS, NB, nr, acc, True) + ["}"]
    # half h: accumulators 4 + 2h, 5 + 2h over columns 2h, 2h + 1; B tiles 1, 2 then 3, 1
    for h, btiles in ((0, (1, 2)), (1, (3, 1))):
        out += [f"static inline void sf_qa_h{h}(const int8_t *restrict x, const uint8_t *restrict w, "
                "int64_t steps) {",
                f"  _tile_zero({4 + 2 * h}); _tile_zero({5 + 2 * h});",
                "  for (int64_t s = 0; s < steps; s++) {",
                f"    _tile_loadd(0, x + {ROWS * SLOTS} * s, {SLOTS});"]
        for c, bt in enumerate(btiles):
            col = 2 * h + c
            out += [f"    _tile_loadd({bt}, w + (s * {NB} + {col}) * {ROWS * SLOTS}, {SLOTS});",
                    f"    _tile_dpbsud({4 + col}, 0, {bt});"]
        out += ["  }", "}",
                f"static inline void sf_qa_st{h}(int32_t *cb) {{",
                f"  _tile_stored({4 + 2 * h}, cb + {512 * h}, {SLOTS});",
                f"  _tile_stored({5 + 2 * h}, cb + {512 * h + 256}, {SLOTS});", "}"]

    out += [
        "static void sf_qa_panel(const int8_t *restrict x, int64_t nt, const uint8_t *restrict wpp, "
        "uint8_t *restrict wbuf, const float *restrict xs, int64_t ldxs, float *restrict ct) {",
        f"  int32_t cb[2][{ROWS * nr}] __attribute__((aligned(64)));",
        "  const float *psc = NULL; const float *pxs = NULL; float *pct = NULL;",
        "  int64_t u = 0;",
        f"  for (int64_t gi = 0; gi < {G}; gi++) {{",
        f"    const int64_t nbg = gi == {G - 1} ? {glp // 8} : {gp // 8};",
        f"    const uint8_t *wgg = wpp + gi * {gs};"]
    out += [f"    uint8_t *wg = wbuf + (gi & 1) * {gp * nr};", "    sf_amx_decode(wgg, nbg, wg);"]
    out += [
        f"    const float *scg = (const float *)(wgg + nbg * {nr * bits});",
        "    for (int64_t t = 0; t < nt; t++, u++) {",
        f"      const int8_t *xg = x + (t * {G} + gi) * {ROWS * gp};",
        "      sf_qa_h0(xg, wg, nbg / 8);",
        "      if (u > 0) {",
        "        sf_qa_st1(cb[(u - 1) & 1]);",
        f"        sf_qa_fold(cb[(u - 1) & 1], psc, (const void *)(psc + {nr}), pxs, ldxs, pct);",
        "      }",
        "      sf_qa_h1(xg, wg, nbg / 8);",
        "      sf_qa_st0(cb[u & 1]);",
        f"      psc = scg; pxs = xs + t * {ROWS} * ldxs + gi; pct = ct + t * {ROWS * nr};",
        "    }",
        "  }",
        "  sf_qa_st1(cb[(u - 1) & 1]);",
        f"  sf_qa_fold(cb[(u - 1) & 1], psc, (const void *)(psc + {nr}), pxs, ldxs, pct);",
        "}"]
    return out


def amx_only(*lines: str) -> list[str]:
    """``lines`` compiled only where the kernel runs AMX tiles (``SF_AMX``)."""
    return ["#if SF_AMX", *lines, "#endif"]


def amx_grant(M: str, tile_bytes: int) -> list[str]:
    """``amx`` (at least 16 rows and the tile state granted), ``MT`` whole 16-row tiles and
    ``xt``: ``tile_bytes`` of re-laid activation codes per tile (inside ``SF_AMX``)."""
    return [f"  const int amx = {M} >= {ROWS} && sf_amx_ready();",
            f"  const int64_t MT = amx ? {M} / {ROWS} : 0;",
            f"  int8_t *xt = amx ? (int8_t *)aligned_alloc(64, (size_t)MT * {tile_bytes}) : NULL;"]


def amx_prologue(M: str, G: int, gp: int, glp: int, ldq: str) -> list[str]:
    """After the int8 prologue: ``amx`` (at least 16 rows and the tile state granted) and,
    with it, ``xt``: the codes of whole 16-row tiles, per tile, group and 64-slot step one 1 KiB
    block. Read in place, rows ``ldx`` apart, a tile spans 16 pages, which measured twice the
    time of the products (8 products and 2 loads: 111 against 47 ns); tile loads of rows 64
    bytes apart are the fastest measured (a B tile: 10.6 ns against 12.0 for rows 192 bytes
    apart and 24.1 for 256)."""
    return amx_only(
        *amx_grant(M, ROWS * G * gp),
        f"  #pragma omp parallel for if (MT * {ROWS * G * gp} > {1 << 20})",
        f"  for (int64_t tg = 0; tg < MT * {G}; tg++) {{",
        f"    const int64_t T = tg / {G}, gi = tg % {G}, ns = gi == {G - 1} ? {glp // SLOTS} : {gp // SLOTS};",
        "    for (int64_t s = 0; s < ns; s++)",
        f"      for (int64_t r = 0; r < {ROWS}; r++)",
        f"        memcpy(xt + tg * {ROWS * gp} + (s * {ROWS} + r) * {SLOTS}, "
        f"xq + (T * {ROWS} + r) * {ldq} + gi * {gp} + s * {SLOTS}, {SLOTS});",
        "  }")


def amx_rows(G: int, gp: int, nr: int, xg: int) -> list[str]:
    """The kernel's tile body before its group loop: with AMX granted, the chunk's whole
    16-row tiles through :func:`amx_panel` (``wf`` holds its decoded groups); ``mst`` is the
    first row left to the VNNI tiles."""
    return ["      int64_t mst = mlo;"] + amx_only(
        "      if (amx && mhi - mlo >= 16) {",
        f"        const int64_t nt = (mhi - mlo) / {ROWS};",
        f"        sf_qa_panel(xt + mlo * {G * gp}, nt, wpp, (uint8_t *)wf, xs + mlo * {xg}, {xg}, ct);",
        f"        mst = mlo + nt * {ROWS};",
        "        sf_amx_used = 1;",
        "      }")
