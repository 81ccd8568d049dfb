"""Convolutions over few input channels (an image network's RGB stem) as generated C: the
``stem`` form of ``codegen/c_conv.py``.

The channels-last forms handle such a convolution poorly: with 3 input channels each tap of
a pixel carries 3 multiply-adds, so the per-tap pointer set-up of the ``dense`` form costs as
much as the arithmetic, and the network's NCHW input must first be copied channels-last
(25 µs for 3 x 224 x 224). On this CPU MobileNetV3's 3 -> 16 stem (3x3, stride 2, 224 x 224)
took 154-214 µs in the ``dense`` form and 155 µs in oneDNN for 5.4 M multiply-adds.

Here x is read as it comes, NCHW, and the output pixels of a row go 16 to a zmm: per tap
(input channel, kernel row, kernel column) one vector of 16 input pixels (a masked load at
stride 1, two loads and a permute at stride 2, a gather otherwise; padding reads as zeros
through the mask) serves 16 output channels, each an FMA with a broadcast weight. A block of
16 channels x 16 pixels is transposed (``sf_tr16``) into channels-last order for the
epilogue and the store, so the output is NHWC like every generated convolution's.

Weights: packed [CI][KH][KW][ceil16(CO)] (output channels innermost, zero-padded). The sum
of an output is tap-major in (input channel, kernel row, kernel column) order, the same
whatever the thread count (threads split output rows). Without AVX-512 a portable scalar
loop in the same order.
"""
from __future__ import annotations

import torch

from .c_tile import PAR_MACS, ConvForm, store_tile

STEM_CI = 4          # at most this many input channels take the form


def pack_stem(w: torch.Tensor) -> torch.Tensor:
    """[CO, CI, KH, KW] -> [CI][KH][KW][ceil16(CO)] f32, zero-padded channels."""
    w = w.to(torch.float32)
    if w.dim() == 3:
        w = w.unsqueeze(2)
    co = w.shape[0]
    cp = -(-co // 16) * 16
    out = torch.zeros(*w.shape[1:], cp, dtype=torch.float32)
    out[..., :co] = w.permute(1, 2, 3, 0)
    return out.contiguous()


def _masks(f: ConvForm) -> list[str]:
    """Per block of output pixels and kernel column j: ``okc[j]``, the lanes whose input pixel
    ``iw0 + t * SW`` lies in [0, W) (and t < npx); at stride 2 also ``m0[j]`` / ``m1[j]``,
    the lanes of the two 16-pixel loads that lie in the row (so no load leaves it)."""
    def inrow(e: str) -> str:
        return (f"_mm512_cmpge_epi32_mask({e}, _mm512_setzero_si512()) & "
                f"_mm512_cmplt_epi32_mask({e}, _mm512_set1_epi32((int)W))")
    s = [f"        __mmask16 okc[{f.kw}];" + (f" __mmask16 m0[{f.kw}], m1[{f.kw}];" if f.sw == 2 else ""),
         f"        for (int64_t j = 0; j < {f.kw}; j++) {{",
         f"          const int64_t iw0 = ow0 * {f.sw} - PW + j * {f.dw};",
         "          const __m512i iv = _mm512_add_epi32(_mm512_set1_epi32((int)iw0), lsw);",
         f"          okc[j] = pm & {inrow('iv')};"]
    if f.sw == 2:
        s += ["          const __m512i i0 = _mm512_add_epi32(_mm512_set1_epi32((int)iw0), lane);",
              "          const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(16));",
              f"          m0[j] = {inrow('i0')}; m1[j] = {inrow('i1')};"]
    return s + ["        }"]


def _load(f: ConvForm, j: int) -> list[str]:
    """``xv``: the input pixels of kernel column ``j`` for the block's 16 output pixels in
    row ``xrow`` (zero where masked: padding, a padding row, lanes past ``npx``)."""
    base = f"xrow + ow0 * {f.sw} - PW + {j * f.dw}"
    if f.sw == 1:
        return [f"            {{ const __m512 xv = _mm512_maskz_loadu_ps(rv & okc[{j}], {base});"]
    if f.sw == 2:
        # the two loads hold pixels iw0 .. iw0 + 31; the permute keeps the even ones
        return [f"            {{ const __m512 lo = _mm512_maskz_loadu_ps(rv & m0[{j}], {base});",
                f"              const __m512 hi = _mm512_maskz_loadu_ps(rv & m1[{j}], {base} + 16);",
                f"              const __m512 xv = _mm512_maskz_permutex2var_ps(rv & okc[{j}], lo, even, hi);"]
    return [f"            {{ const __m512i iv = _mm512_add_epi32(_mm512_set1_epi32((int)(ow0 * {f.sw} - PW + {j * f.dw})), lsw);",
            f"              const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), rv & okc[{j}], iv, xrow, 4);"]


def render_stem(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Body of the ``stem`` form (module docstring): x NCHW, y NHWC; threads share (image,
    output row); per block of 16 output pixels and 16 output channels, every tap's input
    vector times broadcast weights, then the transposed block's epilogue and store."""
    taps = f.kh * f.kw
    fmas = [f"              a{c} = _mm512_fmadd_ps(_mm512_set1_ps(wt[{c}]), xv, a{c});" for c in range(16)]
    cols: list[str] = []
    for j in range(f.kw):
        cols += _load(f, j)
        cols.append(f"              const float *wt = wr + {j} * CP;")
        cols += fmas
        cols.append("            }")
    vec = [
        "      for (int64_t ow0 = 0; ow0 < OW; ow0 += 16) {",
        "        const int64_t npx = OW - ow0 < 16 ? OW - ow0 : 16;",
        "        const __mmask16 pm = (__mmask16)((1u << npx) - 1);",
        *_masks(f),
        "        for (int64_t n0 = 0; n0 < CO; n0 += 16) {",
        "          const int64_t nv = CO - n0 < 16 ? CO - n0 : 16;",
        "          __m512 " + ", ".join(f"a{c} = _mm512_setzero_ps()" for c in range(16)) + ";",
        "          for (int64_t ci = 0; ci < CI; ci++)",
        f"          for (int64_t i = 0; i < {f.kh}; i++) {{",
        f"            const int64_t ih = oh * {f.sh} - PH + i * {f.dh};",
        "            const __mmask16 rv = (ih >= 0 && ih < H) ? (__mmask16)0xFFFF : (__mmask16)0;",
        "            const float *xrow = x + ((n * CI + ci) * H + (rv ? ih : 0)) * W;",
        f"            const float *wr = wp + ((ci * {f.kh} + i) * {f.kw}) * CP + n0;",
        *cols,
        "          }",
        *[f"          _mm512_store_ps(cc + {c * 16}, a{c});" for c in range(16)],
        "          sf_tr16(cc, 16, ct, 16);",
        "          const int64_t pix0 = (n * OH + oh) * OW + ow0, mr = npx;",
        *["  " + s for s in store_tile(ConvForm("stem", 1, 1, 1, 1, 1, 1, 16, 16), epi, other)],
        "        }",
        "      }",
    ]
    scalar = [
        "      for (int64_t ow = 0; ow < OW; ow++)",
        "        for (int64_t n0 = 0; n0 < CO; n0 += 16) {",
        "          const int64_t nv = CO - n0 < 16 ? CO - n0 : 16;",
        "          for (int64_t c = 0; c < 16; c++) ct[c] = 0.0f;",
        "          for (int64_t ci = 0; ci < CI; ci++)",
        f"          for (int64_t i = 0; i < {f.kh}; i++)",
        f"          for (int64_t j = 0; j < {f.kw}; j++) {{",
        f"            const int64_t ih = oh * {f.sh} - PH + i * {f.dh}, iw = ow * {f.sw} - PW + j * {f.dw};",
        "            const float xv = (ih >= 0 && ih < H && iw >= 0 && iw < W) ? x[((n * CI + ci) * H + ih) * W + iw] : 0.0f;",
        f"            for (int64_t c = 0; c < nv; c++) ct[c] += xv * wp[((ci * {f.kh} + i) * {f.kw} + j) * CP + n0 + c];",
        "          }",
        "          const int64_t pix0 = (n * OH + oh) * OW + ow, mr = 1;",
        *["  " + s for s in store_tile(ConvForm("stem", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]
    return [
        "  const int64_t CP = (CO + 15) / 16 * 16;",
        f"  const int64_t macs = N * OH * OW * CO * CI * {taps};",
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        "    float ct[256] __attribute__((aligned(64)));",
        "#if SF_CONV_VEC",
        "    float cc[256] __attribute__((aligned(64)));",
        "    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);",
        f"    const __m512i lsw = _mm512_mullo_epi32(lane, _mm512_set1_epi32({f.sw}));",
        *(["    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);"]
          if f.sw == 2 else []),
        "#endif",
        "    #pragma omp for collapse(2) schedule(static)",
        "    for (int64_t n = 0; n < N; n++)",
        "    for (int64_t oh = 0; oh < OH; oh++) {",
        "#if SF_CONV_VEC",
        *vec,
        "#else",
        *scalar,
        "#endif",
        "    }",
        "  }",
    ]
