"""Depthwise float32 convolutions as generated C (the ``dw`` form of ``codegen/c_conv.py``):
channels-last activations, 16 channels per zmm, weights packed [KH * KW][ceil16(C)].

Per (image, output row, 16-channel block) the vector loop is ``_dw_pixelwise`` for kernels of
up to 9 taps (one output pixel at a time, every tap weight in a register for the whole row,
interior pixels without bounds tests) or ``_dw_rows`` for larger ones (``dw_pixels`` output
pixels at a time, each input column of a kernel row loaded once and shared by the pixels
whose taps meet it, their FMA chains interleaved). A/B on this CPU (``probe/dwab.py``, not
kept): 3x3 kernels ran 1.2-1.6x faster one pixel at a time, 5x5 ones 1.1-1.7x faster by rows
(240 channels over 14x14: 15.3 against 24.8 µs). Without AVX-512, ``_dw_avx2`` where the
compiler has AVX2 + FMA, else a portable scalar loop.
"""
from __future__ import annotations

from .c_tile import PAR_MACS, ConvForm, store_tile

def dw_pixels(f: "ConvForm") -> int:
    """Output pixels a depthwise step computes together: 8 (independent FMA chains enough to
    hide the FMA latency) unless their input columns, accumulators and one kernel row of
    weights would not fit the 32 zmm registers, then fewer."""
    for pt in (8, 6, 4, 2):
        if (pt - 1) * f.sw + (f.kw - 1) * f.dw + 1 + pt + f.kw <= 30:
            return pt
    return 1


# Output pixels whose sums _dw_pixelwise keeps before running the epilogue over them together:
# one pixel at a time, a fused silu's exp chain sat on the critical path of every pixel.
DW_EPI_PIXELS = 16


def _dw_pixelwise(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Depthwise vector loop for kernels of up to 9 taps: one output pixel at a time, every
    tap weight of the channel block in a register for the whole row, interior pixels without
    bounds tests; the sums of ``DW_EPI_PIXELS`` pixels at a time go through the epilogue
    together."""
    taps = f.kh * f.kw
    pb = DW_EPI_PIXELS
    return [
        f"        __m512 wv[{taps}];",
        f"        for (int64_t t = 0; t < {taps}; t++) wv[t] = _mm512_loadu_ps(wp + t * CP + c0);",
        f"        for (int64_t owc = 0; owc < OW; owc += {pb}) {{",
        f"         const int64_t owe = OW - owc < {pb} ? OW : owc + {pb};",
        "         for (int64_t ow = owc; ow < owe; ow++) {",
        "          __m512 acc = _mm512_setzero_ps();",
        f"          const int64_t iw0 = ow * {f.sw} - PW;",
        f"          const int inner = iw0 >= 0 && iw0 + {(f.kw - 1) * f.dw} < W;",
        f"          for (int64_t i = 0; i < {f.kh}; i++) {{",
        f"            const int64_t ih = oh * {f.sh} - PH + i * {f.dh};",
        "            if (ih < 0 || ih >= H) continue;",
        "            const float *xrow = x + (n * H + ih) * W * C + c0;",
        "            if (inner) {",
        f"              for (int64_t j = 0; j < {f.kw}; j++)",
        f"                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, xrow + (iw0 + j * {f.dw}) * C), "
        f"wv[i * {f.kw} + j], acc);",
        "            } else {",
        f"              for (int64_t j = 0; j < {f.kw}; j++) {{",
        f"                const int64_t iw = iw0 + j * {f.dw};",
        "                if (iw >= 0 && iw < W)",
        f"                  acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, xrow + iw * C), wv[i * {f.kw} + j], acc);",
        "              }",
        "            }",
        "          }",
        "          _mm512_storeu_ps(ct + (ow - owc) * 16, acc);",
        "         }",
        "          const int64_t pix0 = (n * OH + oh) * OW + owc, mr = owe - owc;",
        "          const int64_t n0 = c0;",
        *["  " + s for s in store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]


def _dw_rows(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Depthwise vector loop for larger kernels: ``dw_pixels`` output pixels at a time, each
    input column of a kernel row loaded once and shared by the pixels whose taps meet it, the
    pixels' FMA chains interleaved (one pixel at a time, a 5x5 kernel's chain of 25 dependent
    FMAs ran 1.4-1.6x slower). Columns outside the image load nothing (zero mask, address
    clamped into the row)."""
    pt = dw_pixels(f)
    cols = (pt - 1) * f.sw + (f.kw - 1) * f.dw + 1
    edge: list[str] = []
    for u in range(cols):
        edge += [f"              __m512 x{u}; {{ const int64_t iw = iwa + {u};",
                 "                const __mmask16 m = (iw >= 0 && iw < W) ? km : (__mmask16)0;",
                 "                const int64_t ic = iw < 0 ? 0 : (iw >= W ? W - 1 : iw);",
                 f"                x{u} = _mm512_maskz_loadu_ps(m, xrow + ic * C); }}"]
    fmas = [f"              a{t} = _mm512_fmadd_ps(x{t * f.sw + j * f.dw}, w{j}, a{t});"
            for j in range(f.kw) for t in range(pt)]
    return [
        f"        for (int64_t ow0 = 0; ow0 < OW; ow0 += {pt}) {{",
        f"          const int64_t iwa = ow0 * {f.sw} - PW;",
        f"          const int inner = iwa >= 0 && iwa + {cols - 1} < W;",
        "          " + " ".join(f"__m512 a{t} = _mm512_setzero_ps();" for t in range(pt)),
        f"          for (int64_t i = 0; i < {f.kh}; i++) {{",
        f"            const int64_t ih = oh * {f.sh} - PH + i * {f.dh};",
        "            if (ih < 0 || ih >= H) continue;",
        "            const float *xrow = x + (n * H + ih) * W * C + c0;",
        f"            const float *wr = wp + i * {f.kw} * CP + c0;",
        *[f"            const __m512 w{j} = _mm512_loadu_ps(wr + {j} * CP);" for j in range(f.kw)],
        "            if (inner) {",
        *[f"              const __m512 x{u} = _mm512_maskz_loadu_ps(km, xrow + (iwa + {u}) * C);"
          for u in range(cols)],
        *fmas,
        "            } else {",
        *edge,
        *fmas,
        "            }",
        "          }",
        *[f"          _mm512_storeu_ps(ct + {16 * t}, a{t});" for t in range(pt)],
        f"          const int64_t pix0 = (n * OH + oh) * OW + ow0, mr = OW - ow0 < {pt} ? OW - ow0 : {pt};",
        "          const int64_t n0 = c0;",
        *["  " + s for s in store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]


def _dw_avx2(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Depthwise loop for AVX2 + FMA (16 ymm registers): one output pixel at a time in two
    passes of 8 channels over the block, the taps in the order of the AVX-512 loops (so the
    same sums); a partial last block loads its channels masked."""
    return [
        "        for (int64_t ow = 0; ow < OW; ow++) {",
        f"          const int64_t iw0 = ow * {f.sw} - PW;",
        "          for (int64_t h = 0; h < nv; h += 8) {",
        "            const int full = nv - h >= 8;",
        "            const __m256i k8 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nv - h)), "
        "_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));",
        "            __m256 acc = _mm256_setzero_ps();",
        f"            for (int64_t i = 0; i < {f.kh}; i++) {{",
        f"              const int64_t ih = oh * {f.sh} - PH + i * {f.dh};",
        "              if (ih < 0 || ih >= H) continue;",
        "              const float *xrow = x + (n * H + ih) * W * C + c0 + h;",
        f"              const float *wr = wp + i * {f.kw} * CP + c0 + h;",
        f"              for (int64_t j = 0; j < {f.kw}; j++) {{",
        f"                const int64_t iw = iw0 + j * {f.dw};",
        "                if (iw < 0 || iw >= W) continue;",
        "                const __m256 xv = full ? _mm256_loadu_ps(xrow + iw * C) : _mm256_maskload_ps(xrow + iw * C, k8);",
        "                acc = _mm256_fmadd_ps(xv, _mm256_loadu_ps(wr + j * CP), acc);",
        "              }",
        "            }",
        "            _mm256_storeu_ps(ct + h, acc);",
        "          }",
        "          const int64_t pix0 = (n * OH + oh) * OW + ow, mr = 1;",
        "          const int64_t n0 = c0;",
        *["  " + s for s in store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]


def render_dw(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Body of the depthwise form: per (image, output row, 16-channel block), the vector loop
    of ``_dw_pixelwise`` (up to 9 taps) or ``_dw_rows`` (A/B on this CPU: 3x3 kernels ran
    1.2-1.6x faster one pixel at a time, 5x5 ones 1.1-1.7x faster by rows), or the portable
    scalar loop."""
    taps = f.kh * f.kw
    rows = taps > 9
    vec = _dw_rows(f, epi, other) if rows else _dw_pixelwise(f, epi, other)
    scalar = [
        "        for (int64_t ow = 0; ow < OW; ow++) {",
        "          for (int64_t j = 0; j < 16; j++) ct[j] = 0.0f;",
        f"          for (int64_t i = 0; i < {f.kh}; i++) {{",
        f"            const int64_t ih = oh * {f.sh} - PH + i * {f.dh};",
        "            if (ih < 0 || ih >= H) continue;",
        f"            for (int64_t jw = 0; jw < {f.kw}; jw++) {{",
        f"              const int64_t iw = ow * {f.sw} - PW + jw * {f.dw};",
        "              if (iw < 0 || iw >= W) continue;",
        "              for (int64_t j = 0; j < nv; j++)",
        f"                ct[j] += x[((n * H + ih) * W + iw) * C + c0 + j] * wp[(i * {f.kw} + jw) * CP + c0 + j];",
        "            }",
        "          }",
        "          const int64_t pix0 = (n * OH + oh) * OW + ow, mr = 1;",
        "          const int64_t n0 = c0;",
        *["  " + s for s in store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]
    return [
        "  const int64_t C = CO, CP = (C + 15) / 16 * 16;",
        f"  const int64_t macs = N * OH * OW * C * {taps};",
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        f"    float ct[{16 * (dw_pixels(f) if rows else DW_EPI_PIXELS)}] __attribute__((aligned(64)));",
        "    #pragma omp for collapse(2) schedule(static)",
        "    for (int64_t n = 0; n < N; n++)",
        "    for (int64_t oh = 0; oh < OH; oh++) {",
        "      for (int64_t c0 = 0; c0 < C; c0 += 16) {",
        "        const int64_t nv = C - c0 < 16 ? C - c0 : 16;",
        "#if SF_CONV_VEC",
        "        const __mmask16 km = nv >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1);",
        *vec,
        "#elif SF_TILE_AVX2",
        *_dw_avx2(f, epi, other),
        "#else",
        *scalar,
        "#endif",
        "      }",
        "    }",
        "  }",
    ]
