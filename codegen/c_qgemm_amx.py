"""AMX tiles of the int8 GEMM template of ``qlinear`` (``codegen/c_qgemm.py``, OutlierTune's
W8A8 / W8A6 linear).

The template's packed panel (``runtime/qpack.py``: per group of 4 columns of K, ``nr`` channels
of 4 u8 weight bytes) is AMX's B layout as it is: 16 consecutive groups of one 16-channel
column are a 64 x 16 B tile at a stride of ``4 * nr`` bytes. One ``tdpbsud`` multiplies it by
a 16 x 64 tile of s8 activation codes into 16 x 16 int32 sums, 16 K multiply-adds against 64
for the VNNI tiles' ``vpdpbusd``. The sums run over all of K in the accumulator tiles (no
per-group fold, unlike the weight-only tiles of ``c_w4_amx.py``) and are stored once into the
template's int32 tile ``ct``; the VNNI tiles then add the columns past the last whole 64-column
step, and the epilogue is unchanged. int32 sums are exact (the template keeps K small enough),
so the results are bit-identical to the VNNI path.

Activation codes are first copied per 16-row tile and 64-column step into contiguous 1 KiB
blocks (``xt``): read in place, a tile's 16 rows lie ``K`` bytes apart, across as many pages,
which measured about twice the time of the products.
"""
from __future__ import annotations

from .c_w4_amx import ROWS, SLOTS, amx_grant, amx_head, amx_only

MAX_NB = 4          # accumulator tiles 4..7


def qgemm_amx_ok(nb: int, k: int, mc: int, single_pass: bool) -> bool:
    """Whether the AMX tiles take this blocking: at most four 16-channel columns, at least one
    whole 64-column step of K, row chunks of whole 16-row tiles, one pass over K."""
    return 1 <= nb <= MAX_NB and k >= SLOTS and mc % ROWS == 0 and single_pass


def qgemm_amx_head(nb: int) -> list[str]:
    """The AMX definitions (``amx_head``) and ``sf_qa_gemm``: one 16-row tile of ``steps``
    64-column steps (``x``: its contiguous 1 KiB blocks) against one panel, sums stored into
    ``ct`` (row stride ``nr``)."""
    nr = 16 * nb
    out = amx_head("SF_USE_VNNI") + ["#if SF_AMX",
                                     "static void sf_qa_gemm(const int8_t *restrict x, int64_t steps, "
                                     "const uint8_t *restrict wp, int32_t *restrict ct) {"]
    out += [f"  _tile_zero({4 + j});" for j in range(nb)]
    out += ["  for (int64_t s = 0; s < steps; s++) {",
            f"    _tile_loadd(0, x + s * {ROWS * SLOTS}, {SLOTS});"]
    for j in range(nb):
        # three B tiles in turn, so that a load need not wait for the product before it
        bt = 1 + j % 3
        out += [f"    _tile_loadd({bt}, wp + s * {SLOTS * nr} + {64 * j}, {4 * nr});",
                f"    _tile_dpbsud({4 + j}, 0, {bt});"]
    out += ["  }"]
    out += [f"  _tile_stored({4 + j}, ct + {16 * j}, {4 * nr});" for j in range(nb)]
    out += ["}"]
    # two row tiles at once: A tiles 0-1, B tiles 2-3, accumulators 4-7 over column pairs, so
    # each B tile loaded serves two products (the panel streams from L2 half as often)
    out += ["static void sf_qa_gemm2(const int8_t *restrict x, int64_t steps, "
            "const uint8_t *restrict wp, int32_t *restrict ct) {",
            f"  const int8_t *x1 = x + steps * {ROWS * SLOTS};"]
    for c0 in range(0, nb, 2):
        cols = list(range(c0, min(nb, c0 + 2)))
        out += [f"  _tile_zero({4 + 2 * i + c}); " for i in range(2) for c in range(len(cols))]
        out += ["  for (int64_t s = 0; s < steps; s++) {",
                f"    _tile_loadd(0, x + s * {ROWS * SLOTS}, {SLOTS});",
                f"    _tile_loadd(1, x1 + s * {ROWS * SLOTS}, {SLOTS});"]
        for c, col in enumerate(cols):
            out += [f"    _tile_loadd({2 + c}, wp + s * {SLOTS * nr} + {64 * col}, {4 * nr});"]
            out += [f"    _tile_dpbsud({4 + 2 * i + c}, {i}, {2 + c});" for i in range(2)]
        out += ["  }"]
        out += [f"  _tile_stored({4 + 2 * i + c}, ct + {i * ROWS * nr + 16 * col}, {4 * nr});"
                for i in range(2) for c, col in enumerate(cols)]
    return out + ["}", "#endif"]


def qgemm_amx_prologue(k: int) -> list[str]:
    """``amx`` (16 rows or more and the tile state granted), ``S`` whole 64-column steps and
    ``xt``: the codes ``xa`` (rows ``ldx`` apart) of whole 16-row tiles, per tile and step one
    1 KiB block."""
    S = k // SLOTS
    return amx_only(
        *amx_grant("M", S * ROWS * SLOTS),
        f"  #pragma omp parallel for if (MT * {S * ROWS * SLOTS} > {1 << 20})",
        f"  for (int64_t ts = 0; ts < MT * {S}; ts++) {{",
        f"    const int64_t T = ts / {S}, s = ts % {S};",
        f"    for (int64_t r = 0; r < {ROWS}; r++)",
        f"      memcpy(xt + (ts * {ROWS} + r) * {SLOTS}, xa + (T * {ROWS} + r) * ldx + s * {SLOTS}, {SLOTS});",
        "  }")


def qgemm_amx_rows(k: int, nr: int) -> list[str]:
    """The tile body before the VNNI tiles: the chunk's whole 16-row tiles through
    :func:`qgemm_amx_head`'s ``sf_qa_gemm`` over the whole 64-column steps; ``mst`` is the
    first row left to the VNNI tiles, ``gst`` the first group of 4 columns they take for the
    rows before it."""
    S = k // SLOTS
    return ["      int64_t mst = mlo, gst = 0;"] + amx_only(
        "      if (amx && mhi - mlo >= 16) {",
        f"        for (; mst + {2 * ROWS} <= mhi; mst += {2 * ROWS})",
        f"          sf_qa_gemm2(xt + mst * {S * SLOTS}, {S}, wpp, ct + (mst - mlo) * {nr});",
        f"        for (; mst + {ROWS} <= mhi; mst += {ROWS})",
        f"          sf_qa_gemm(xt + mst * {S * SLOTS}, {S}, wpp, ct + (mst - mlo) * {nr});",
        f"        gst = {S * SLOTS // 4};",
        "        sf_amx_used = 1;",
        "      }")
