"""The AVX-512 float32 tile loop shared by the generated convolutions (``codegen/c_conv.py``)
and the float32 linear GEMM (``codegen/c_f32gemm.py``).

A tile is ``mr`` output rows (pixels, or a linear's rows) by ``nb`` output channels (a panel;
a multiple of 16): one zmm accumulator per row and 16 channels, each FMA a broadcast input
element times a weight vector, the weights of a panel laid out [taps][CI][nb] (channels
innermost). Output rows go in tiles and tiles in groups of ``GROUP``; a thread takes (panel,
group) pairs of a static schedule, group-major where the input outweighs the weights (each
thread then reads only its own rows of x, and all of the weights; panel-major the other way
round: with 2 threads of 2 MB L2 each on a 480 MB L3 Xeon, resnet50's 56 x 56 1x1
convolutions ran 1.3-1.6x faster in the network group-major). Within a group the input
channels go in chunks (``chunk_ci``) whose weights stay in L1 while every tile of the group
uses them. A tile's sums go through a per-thread buffer, and the epilogue (C statements from
the caller) runs as an ``omp simd`` loop over it. Each output is the same f32 sequence
(tap-major, then input channel) whatever the thread count.
"""
from __future__ import annotations

from dataclasses import dataclass

from .c_isa import isa_variants

PAR_MACS = 1 << 18   # below this many multiply-adds a convolution runs on one thread
GROUP = 8            # tiles that share one pass over a chunk of a panel's weights
L1_WEIGHTS = 24 << 10   # bytes of a weight chunk (half the 48 KB L1 data cache)


def tile_shape(co: int) -> tuple[int, int]:
    """(nb, mr) of the tile for ``co`` output channels: 64 x 6 where 64-channel panels pad no
    more channels than 32-channel ones, else 32 x 6, and 16 x 8 up to 16 channels.

    64 x 6 keeps 24 accumulators, 4 weight vectors and a broadcast in the 32 zmm registers and
    needs 10 loads per 24 FMAs instead of 8 per 12: on the Xeon (AMX) host, resnet50's 1x1
    convolutions and strided 3x3 ones ran 7-12% faster, Winograd's 4-6%, MiniLM's linears
    (c_f32gemm.py) about 10% end to end."""
    if co <= 16:
        return 16, 8
    if co >= 64 and -(-co // 64) * 64 == -(-co // 32) * 32:
        return 64, 6
    return 32, 6


def chunk_ci(f: "ConvForm") -> int:
    """Input channels per chunk: the most whose weights for one panel and every tap fit
    ``L1_WEIGHTS`` (at least 8)."""
    return max(8, L1_WEIGHTS // (4 * f.kh * f.kw * f.nb))


@dataclass(frozen=True)
class ConvForm:
    """What a rendered convolution is specialised on (everything else is a runtime integer):
    ``kind`` ("pw", "dense", "dw"), kernel size, strides and dilations, and the tile: ``nb``
    output channels (a multiple of 16) by ``mr`` output pixels."""

    kind: str
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    nb: int = 32
    mr: int = 6


def tile_fn(f: ConvForm) -> list[str]:
    """``sf_tile``: add to (or, with ``init``, start) ``ct`` [MR][NB] the sums over input
    channels ``c0 .. c0 + cc`` of one tile, from the row pointers ``xr[t][r]`` of each tap t
    (tap-major; a padded pixel points at a zero row) and the panel's weights ``w`` at tap
    stride ``ts`` ([taps][CI][NB], already offset to channel ``c0``)."""
    nv, mr = f.nb // 16, f.mr
    acc = [[f"a{r}_{v}" for v in range(nv)] for r in range(mr)]
    out = ["static inline void sf_tile(const float *const *restrict xr, int64_t taps, int64_t c0, "
           "const float *restrict w0p, int64_t ts, int64_t cc, float *restrict ct, int init) {"]
    for r in range(mr):
        out.append("  " + " ".join(
            f"__m512 {acc[r][v]} = init ? _mm512_setzero_ps() : _mm512_loadu_ps(ct + {r * f.nb + 16 * v});"
            for v in range(nv)))
    out.append("  for (int64_t t = 0; t < taps; t++) {")
    out += [f"    const float *restrict x{r} = xr[t * {mr} + {r}] + c0;" for r in range(mr)]
    out.append("    const float *restrict w = w0p + t * ts;")
    out.append("    for (int64_t c = 0; c < cc; c++) {")
    out += [f"      const __m512 w{v} = _mm512_loadu_ps(w + c * {f.nb} + {16 * v});" for v in range(nv)]
    for r in range(mr):
        out.append(f"      {{ const __m512 xv = _mm512_set1_ps(x{r}[c]);")
        out += [f"        {acc[r][v]} = _mm512_fmadd_ps(xv, w{v}, {acc[r][v]});" for v in range(nv)]
        out.append("      }")
    out += ["    }", "  }"]
    for r in range(mr):
        out += [f"  _mm512_storeu_ps(ct + {r * f.nb + 16 * v}, {acc[r][v]});" for v in range(nv)]
    out.append("}")
    return out


def _row_chunks(mr: int, most: int = 6) -> list[tuple[int, int]]:
    """(first row, rows) of near-equal chunks of at most ``most`` rows covering ``mr``."""
    n = -(-mr // most)
    sizes = [mr // n + (i < mr % n) for i in range(n)]
    return [(sum(sizes[:i]), sizes[i]) for i in range(n)]


def tile_fn_avx2(f: ConvForm) -> list[str]:
    """``sf_tile`` for AVX2 + FMA (16 ymm registers): the tile goes in passes of 16 channels
    by at most 6 rows (12 accumulators, two weight vectors and a broadcast), each over all
    taps and input channels. Every output's sum is the same sequence of fused multiply-adds
    as in :func:`tile_fn` (tap-major, then input channel), so the results are bit-identical
    to the AVX-512 tile's."""
    out = ["static inline void sf_tile(const float *const *restrict xr, int64_t taps, int64_t c0, "
           "const float *restrict w0p, int64_t ts, int64_t cc, float *restrict ct, int init) {",
           f"  for (int64_t h = 0; h < {f.nb}; h += 16) {{"]
    for r0, rn in _row_chunks(f.mr):
        rows = range(r0, r0 + rn)
        acc = {r: (f"a{r}_0", f"a{r}_1") for r in rows}
        out.append("  {")
        for r in rows:
            out.append("    " + " ".join(
                f"__m256 {acc[r][v]} = init ? _mm256_setzero_ps() : _mm256_loadu_ps(ct + {r * f.nb} + h + {8 * v});"
                for v in range(2)))
        out.append("    for (int64_t t = 0; t < taps; t++) {")
        out += [f"      const float *restrict x{r} = xr[t * {f.mr} + {r}] + c0;" for r in rows]
        out.append("      const float *restrict w = w0p + t * ts + h;")
        out.append("      for (int64_t c = 0; c < cc; c++) {")
        out.append(f"        const __m256 w0 = _mm256_loadu_ps(w + c * {f.nb}), "
                   f"w1 = _mm256_loadu_ps(w + c * {f.nb} + 8);")
        for r in rows:
            out.append(f"        {{ const __m256 xv = _mm256_broadcast_ss(x{r} + c); "
                       f"{acc[r][0]} = _mm256_fmadd_ps(xv, w0, {acc[r][0]}); "
                       f"{acc[r][1]} = _mm256_fmadd_ps(xv, w1, {acc[r][1]}); }}")
        out += ["      }", "    }"]
        for r in rows:
            out.append("    " + " ".join(f"_mm256_storeu_ps(ct + {r * f.nb} + h + {8 * v}, {acc[r][v]});"
                                         for v in range(2)))
        out.append("  }")
    out += ["  }", "}"]
    return out


def tile_variants(f: ConvForm, avx512_extra: list[str] = ()) -> list[str]:
    """The preprocessor choice of ``sf_tile``: AVX-512 (with ``avx512_extra``, code that needs
    it too; ``SF_CONV_VEC`` 1), else AVX2 + FMA (``SF_TILE_AVX2`` 1, with ``sf_tr8``), else
    portable C; ``SF_NO_VEC`` forces the portable one."""
    return isa_variants("SF_CONV_VEC", [*avx512_extra, *tile_fn(f)], tile_scalar(f),
                        [TRANSPOSE8, *tile_fn_avx2(f)], avx2_flag="SF_TILE_AVX2")


def tile_scalar(f: ConvForm) -> list[str]:
    """Portable ``sf_tile``: the same sums in plain C (same order per output)."""
    return ["static inline void sf_tile(const float *const *restrict xr, int64_t taps, int64_t c0, "
            "const float *restrict w0p, int64_t ts, int64_t cc, float *restrict ct, int init) {",
            f"  if (init) for (int64_t i = 0; i < {f.mr * f.nb}; i++) ct[i] = 0.0f;",
            "  for (int64_t t = 0; t < taps; t++)",
            f"    for (int64_t r = 0; r < {f.mr}; r++)",
            "      for (int64_t c = 0; c < cc; c++)",
            f"        for (int64_t j = 0; j < {f.nb}; j++)",
            f"          ct[r * {f.nb} + j] += xr[t * {f.mr} + r][c0 + c] * w0p[t * ts + c * {f.nb} + j];",
            "}"]


def store_tile(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Epilogue and store of one tile: rows ``mr`` (valid pixels from ``pix0``, consecutive),
    channels ``n0 .. n0 + nv``, sums in ``ct``."""
    body = ["      for (int64_t r = 0; r < mr; r++) {",
            "        const int64_t pix = pix0 + r;",
            "        #pragma omp simd",
            "        for (int64_t j = 0; j < nv; j++) {",
            "          const int64_t c = n0 + j;",
            f"          float v = ct[r * {f.nb} + j];"]
    if other:
        body.append("          const float o = oth[pix * CO + c];")
    body += ["          " + s for s in epi]
    body += ["          y[pix * CO + c] = v;", "        }", "      }"]
    return body


def render_gemm(f: ConvForm, epi: list[str], other: bool, rows: bool = False) -> list[str]:
    """Body of the ``pw`` and ``dense`` forms. Output pixels (flattened over image, row and
    column) go in tiles of MR, tiles in groups of ``GROUP``; a thread takes (panel, group)
    pairs (group-major when the input has at least ``CO * taps`` pixels: the module doc).
    Within a group the input channels go in chunks of ``chunk_ci`` whose weights stay
    in L1 while every tile of the group uses them (a panel of a 3x3 convolution over 512
    channels is 590 KB: streamed from L2 once per tile it ran at 0.65x of oneDNN).

    ``rows``: the weight ``w`` is a row-major [CO, CI] matrix read in place (a ``linear``'s
    own constant, c_f32gemm.py); each thread packs the panel it works on into its own
    [CI][NB] buffer when its panel changes (a static schedule hands a thread consecutive
    groups of one panel)."""
    mr, nb = f.mr, f.nb
    taps = f.kh * f.kw
    cmax = chunk_ci(f)
    lines = [
        f"  const int64_t NP = (CO + {nb - 1}) / {nb}, P = N * OH * OW;",
        f"  const int64_t TI = (P + {mr - 1}) / {mr}, NG = (TI + {GROUP - 1}) / {GROUP};",
        f"  const int64_t CC = CI < {cmax} ? CI : {cmax};",
        f"  const int64_t macs = P * CO * CI * {taps};",
        *(["  const int GMAJ = 0;"] if rows else [f"  const int GMAJ = N * H * W >= CO * {taps};"]),
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        "    float *zrow = (float *)calloc((size_t)CI, sizeof(float));",
        f"    float ctg[{GROUP * mr * nb}] __attribute__((aligned(64)));",
        f"    const float **xr = (const float **)malloc(sizeof(const float *) * {GROUP * taps * mr});",
        *([f"    float *wbuf = (float *)aligned_alloc(64, (size_t)CI * {nb * 4});",
           "    int64_t packed = -1;"] if rows else []),
        "    #pragma omp for schedule(static)",
        "    for (int64_t it = 0; it < NP * NG; it++) {",
        "      const int64_t np = GMAJ ? it % NP : it / NG, gi = GMAJ ? it / NP : it % NG;",
        f"      const int64_t n0 = np * {nb}, nv = CO - n0 < {nb} ? CO - n0 : {nb};",
        f"      const int64_t t0 = gi * {GROUP}, tn = TI - t0 < {GROUP} ? TI - t0 : {GROUP};",
        "      for (int64_t tt = 0; tt < tn; tt++)",
        f"        for (int64_t r = 0; r < {mr}; r++) {{",
        f"          const int64_t p = (t0 + tt) * {mr} + r;",
        f"          const float **xt = xr + tt * {taps * mr};",
    ]
    if f.kind == "pw":
        lines += ["          xt[r] = p < P ? x + p * CI : zrow;"]
    else:
        lines += [
            "          const int64_t ow = p % OW, nh = p / OW, oh = nh % OH, n = nh / OH;",
            f"          for (int64_t i = 0; i < {f.kh}; i++) {{",
            f"            const int64_t ih = oh * {f.sh} - PH + i * {f.dh};",
            f"            for (int64_t j = 0; j < {f.kw}; j++) {{",
            f"              const int64_t iw = ow * {f.sw} - PW + j * {f.dw};",
            "              const int ok = p < P && ih >= 0 && ih < H && iw >= 0 && iw < W;",
            f"              xt[(i * {f.kw} + j) * {mr} + r] = ok ? x + ((n * H + ih) * W + iw) * CI : zrow;",
            "            }",
            "          }",
        ]
    if rows:
        # 16 x 16 blocks by the AVX-512 transpose (sf_tr16), 8 x 8 ones by AVX2's (sf_tr8);
        # the rest, and the zero channels past CO, one element at a time
        wpan = ["      if (np != packed) {",
                "#if SF_CONV_VEC",
                "        const int64_t nfull = nv / 16 * 16, kfull = CI / 16 * 16;",
                "        for (int64_t j0 = 0; j0 < nfull; j0 += 16)",
                "          for (int64_t c = 0; c < kfull; c += 16)",
                f"            sf_tr16(w + (n0 + j0) * CI + c, CI, wbuf + c * {nb} + j0, {nb});",
                "#elif SF_TILE_AVX2",
                "        const int64_t nfull = nv / 8 * 8, kfull = CI / 8 * 8;",
                "        for (int64_t j0 = 0; j0 < nfull; j0 += 8)",
                "          for (int64_t c = 0; c < kfull; c += 8)",
                f"            sf_tr8(w + (n0 + j0) * CI + c, CI, wbuf + c * {nb} + j0, {nb});",
                "#else",
                "        const int64_t nfull = 0, kfull = 0;",
                "#endif",
                f"        for (int64_t c = 0; c < CI; c++) for (int64_t j = nfull; j < {nb}; j++)",
                f"          wbuf[c * {nb} + j] = j < nv ? w[(n0 + j) * CI + c] : 0.0f;",
                "        for (int64_t c = kfull; c < CI; c++) for (int64_t j = 0; j < nfull; j++)",
                f"          wbuf[c * {nb} + j] = w[(n0 + j) * CI + c];",
                "        packed = np;",
                "      }",
                "      const float *wpan = wbuf;"]
    else:
        wpan = [f"      const float *wpan = wp + np * {taps} * CI * {nb};"]
    lines += [
        "        }",
        *wpan,
        "      for (int64_t c0 = 0; c0 < CI; c0 += CC) {",
        "        const int64_t cc = CI - c0 < CC ? CI - c0 : CC;",
        "        for (int64_t tt = 0; tt < tn; tt++)",
        f"          sf_tile(xr + tt * {taps * mr}, {taps}, c0, wpan + c0 * {nb}, CI * {nb}, cc, "
        f"ctg + tt * {mr * nb}, c0 == 0);",
        "      }",
        "      for (int64_t tt = 0; tt < tn; tt++) {",
        f"        const float *ct = ctg + tt * {mr * nb};",
        f"        const int64_t pix0 = (t0 + tt) * {mr}, mr = P - pix0 < {mr} ? P - pix0 : {mr};",
    ]
    lines += ["  " + s for s in store_tile(f, epi, other)]
    lines += ["      }", "    }", "    free(xr);", "    free(zrow);", *(["    free(wbuf);"] if rows else []), "  }"]
    return lines


# dst[c * ldd + r] = src[r * ld + c] for a 16 x 16 block: four rounds of AVX-512 shuffles
TRANSPOSE16 = r"""
static inline void sf_tr16(const float *src, int64_t ld, float *dst, int64_t ldd) {
  __m512 r0 = _mm512_loadu_ps(src + 0 * ld), r1 = _mm512_loadu_ps(src + 1 * ld), r2 = _mm512_loadu_ps(src + 2 * ld), r3 = _mm512_loadu_ps(src + 3 * ld);
  __m512 r4 = _mm512_loadu_ps(src + 4 * ld), r5 = _mm512_loadu_ps(src + 5 * ld), r6 = _mm512_loadu_ps(src + 6 * ld), r7 = _mm512_loadu_ps(src + 7 * ld);
  __m512 r8 = _mm512_loadu_ps(src + 8 * ld), r9 = _mm512_loadu_ps(src + 9 * ld), r10 = _mm512_loadu_ps(src + 10 * ld), r11 = _mm512_loadu_ps(src + 11 * ld);
  __m512 r12 = _mm512_loadu_ps(src + 12 * ld), r13 = _mm512_loadu_ps(src + 13 * ld), r14 = _mm512_loadu_ps(src + 14 * ld), r15 = _mm512_loadu_ps(src + 15 * ld);
  __m512 t0 = _mm512_unpacklo_ps(r0, r1), t1 = _mm512_unpackhi_ps(r0, r1), t2 = _mm512_unpacklo_ps(r2, r3), t3 = _mm512_unpackhi_ps(r2, r3);
  __m512 t4 = _mm512_unpacklo_ps(r4, r5), t5 = _mm512_unpackhi_ps(r4, r5), t6 = _mm512_unpacklo_ps(r6, r7), t7 = _mm512_unpackhi_ps(r6, r7);
  __m512 t8 = _mm512_unpacklo_ps(r8, r9), t9 = _mm512_unpackhi_ps(r8, r9), t10 = _mm512_unpacklo_ps(r10, r11), t11 = _mm512_unpackhi_ps(r10, r11);
  __m512 t12 = _mm512_unpacklo_ps(r12, r13), t13 = _mm512_unpackhi_ps(r12, r13), t14 = _mm512_unpacklo_ps(r14, r15), t15 = _mm512_unpackhi_ps(r14, r15);
#define LO(a, b) _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
#define HI(a, b) _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
  r0 = LO(t0, t2); r1 = HI(t0, t2); r2 = LO(t1, t3); r3 = HI(t1, t3);
  r4 = LO(t4, t6); r5 = HI(t4, t6); r6 = LO(t5, t7); r7 = HI(t5, t7);
  r8 = LO(t8, t10); r9 = HI(t8, t10); r10 = LO(t9, t11); r11 = HI(t9, t11);
  r12 = LO(t12, t14); r13 = HI(t12, t14); r14 = LO(t13, t15); r15 = HI(t13, t15);
#undef LO
#undef HI
  t0 = _mm512_shuffle_f32x4(r0, r4, 0x88); t1 = _mm512_shuffle_f32x4(r1, r5, 0x88); t2 = _mm512_shuffle_f32x4(r2, r6, 0x88); t3 = _mm512_shuffle_f32x4(r3, r7, 0x88);
  t4 = _mm512_shuffle_f32x4(r0, r4, 0xdd); t5 = _mm512_shuffle_f32x4(r1, r5, 0xdd); t6 = _mm512_shuffle_f32x4(r2, r6, 0xdd); t7 = _mm512_shuffle_f32x4(r3, r7, 0xdd);
  t8 = _mm512_shuffle_f32x4(r8, r12, 0x88); t9 = _mm512_shuffle_f32x4(r9, r13, 0x88); t10 = _mm512_shuffle_f32x4(r10, r14, 0x88); t11 = _mm512_shuffle_f32x4(r11, r15, 0x88);
  t12 = _mm512_shuffle_f32x4(r8, r12, 0xdd); t13 = _mm512_shuffle_f32x4(r9, r13, 0xdd); t14 = _mm512_shuffle_f32x4(r10, r14, 0xdd); t15 = _mm512_shuffle_f32x4(r11, r15, 0xdd);
  r0 = _mm512_shuffle_f32x4(t0, t8, 0x88); r1 = _mm512_shuffle_f32x4(t1, t9, 0x88); r2 = _mm512_shuffle_f32x4(t2, t10, 0x88); r3 = _mm512_shuffle_f32x4(t3, t11, 0x88);
  r4 = _mm512_shuffle_f32x4(t4, t12, 0x88); r5 = _mm512_shuffle_f32x4(t5, t13, 0x88); r6 = _mm512_shuffle_f32x4(t6, t14, 0x88); r7 = _mm512_shuffle_f32x4(t7, t15, 0x88);
  r8 = _mm512_shuffle_f32x4(t0, t8, 0xdd); r9 = _mm512_shuffle_f32x4(t1, t9, 0xdd); r10 = _mm512_shuffle_f32x4(t2, t10, 0xdd); r11 = _mm512_shuffle_f32x4(t3, t11, 0xdd);
  r12 = _mm512_shuffle_f32x4(t4, t12, 0xdd); r13 = _mm512_shuffle_f32x4(t5, t13, 0xdd); r14 = _mm512_shuffle_f32x4(t6, t14, 0xdd); r15 = _mm512_shuffle_f32x4(t7, t15, 0xdd);
  _mm512_storeu_ps(dst + 0 * ldd, r0); _mm512_storeu_ps(dst + 1 * ldd, r1); _mm512_storeu_ps(dst + 2 * ldd, r2); _mm512_storeu_ps(dst + 3 * ldd, r3);
  _mm512_storeu_ps(dst + 4 * ldd, r4); _mm512_storeu_ps(dst + 5 * ldd, r5); _mm512_storeu_ps(dst + 6 * ldd, r6); _mm512_storeu_ps(dst + 7 * ldd, r7);
  _mm512_storeu_ps(dst + 8 * ldd, r8); _mm512_storeu_ps(dst + 9 * ldd, r9); _mm512_storeu_ps(dst + 10 * ldd, r10); _mm512_storeu_ps(dst + 11 * ldd, r11);
  _mm512_storeu_ps(dst + 12 * ldd, r12); _mm512_storeu_ps(dst + 13 * ldd, r13); _mm512_storeu_ps(dst + 14 * ldd, r14); _mm512_storeu_ps(dst + 15 * ldd, r15);
}
"""


# dst[c * ldd + r] = src[r * ld + c] for an 8 x 8 block: AVX2 unpacks, shuffles and lane swaps
TRANSPOSE8 = r"""
static inline void sf_tr8(const float *src, int64_t ld, float *dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * ld), r1 = _mm256_loadu_ps(src + 1 * ld), r2 = _mm256_loadu_ps(src + 2 * ld), r3 = _mm256_loadu_ps(src + 3 * ld);
  __m256 r4 = _mm256_loadu_ps(src + 4 * ld), r5 = _mm256_loadu_ps(src + 5 * ld), r6 = _mm256_loadu_ps(src + 6 * ld), r7 = _mm256_loadu_ps(src + 7 * ld);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5), t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  r0 = _mm256_shuffle_ps(t0, t2, 0x44); r1 = _mm256_shuffle_ps(t0, t2, 0xEE); r2 = _mm256_shuffle_ps(t1, t3, 0x44); r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  r4 = _mm256_shuffle_ps(t4, t6, 0x44); r5 = _mm256_shuffle_ps(t4, t6, 0xEE); r6 = _mm256_shuffle_ps(t5, t7, 0x44); r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(r0, r4, 0x20)); _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(r1, r5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(r2, r6, 0x20)); _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(r3, r7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(r0, r4, 0x31)); _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(r1, r5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(r2, r6, 0x31)); _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(r3, r7, 0x31));
}
"""
