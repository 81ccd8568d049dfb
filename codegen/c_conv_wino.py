"""Winograd F(2x2, 3x3) float32 convolutions on channels-last data: the ``wino`` form of
``codegen/c_conv.py``.

A direct 3x3 convolution spends 9 multiply-adds per output pixel, input channel and output
channel, and the generated direct kernel (like oneDNN's) already runs at the FMA units' limit.
Winograd's minimal filtering (Lavin & Gray, 2016) computes each 2x2 block of outputs from the
4x4 input patch around it with 16 multiply-adds per input and output channel instead of 36, so
the sum over input channels becomes 16 independent GEMMs of 2.25x fewer multiply-adds:

- input transform  ``V = Bᵀ d B`` of each 4x4 patch d (one per 2x2 output tile, per input
  channel; adds only);
- weight transform ``U = G g Gᵀ`` of each 3x3 filter g, done once at render time in float64
  and rounded to float32 (``pack_wino``);
- ``M[pos] = V[pos] · U[pos]`` for each of the 16 positions: the tile loop of
  ``codegen/c_tile.py`` (one "tap", tiles of input-transformed rows as its pixels);
- output transform ``Y = Aᵀ M A`` (adds only), then the convolution's fused epilogue.

Only stride 1, dilation 1, one group (``wino_fits``). Each output still depends only on its own
3x3 receptive field (row i of Aᵀ reads positions i..i+2, and those read input rows i..i+3 as
the 3x3 window does), so NaN reaches the same outputs as in a direct sum. An infinite input
would not: ``inf - inf`` inside the transforms makes NaN where the direct sum gives ±inf, so a
tile whose transformed input is not all finite (an infinity or NaN in its patch, or a transform
that overflowed) is computed by a direct sum over the original weight instead.

Blocking: a thread takes (block of tiles, range of output-channel panels) units; it transforms
its block's patches into a per-thread V buffer [16][TB][CI] sized for the L2 cache, then per
panel runs the 16 GEMMs into M [16][TB][NB] (the panel's U of one position in L1-sized input
channel chunks while every tile of the block uses it) and the output transform. Blocks are
balanced (equal tile counts, a multiple of the tile's rows). Where there are fewer blocks than
twice the threads, a block's panels are split among units, each transforming the block again
(cheap next to the GEMMs). The unit split depends on the thread count, the arithmetic of an
output does not: results are the same for any number of threads.

Weights: U packed [ceil(CO / NB)][16][CI][NB] (positions row-major over the 4x4 grid, output
channels innermost, zero channels past CO), and the original weight [CO][CI][3][3] for the
direct tiles. Kernel ABI as c_conv.py's, with the original weight after the packed one.
Numerics: the transforms add at most four terms each; against a direct float32 sum the error
grows by a small constant factor (max relative error ~1e-6 of the output's scale in the tests).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .c_tile import PAR_MACS, ConvForm

L2_V = 1 << 20          # bytes of a block's transformed input ([16][TB][CI] floats)
TB_MIN, TB_MAX = 36, 256  # tiles per block: at least this many share each panel's weights
L1_U = 24 << 10         # bytes of a panel's U chunk for one position (half the L1 data cache)
WINO_CI = 16            # fewer input channels: the transforms outweigh the saving
WINO_TILES = 36         # fewer 2x2 tiles per image: U (16/9 the weight) is read for too little work


def wino_fits(kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ci: int, co: int,
              out_hw: Sequence[object]) -> bool:
    """Whether a one-group convolution takes the Winograd form: 3x3, stride 1, dilation 1,
    2-D, at least ``WINO_CI`` input and 16 output channels, and (where the output's height and
    width are static) at least ``WINO_TILES`` 2x2 tiles per image. On a 7x7 image with 512
    channels the transformed weight (16 MB) streams from memory for 16 tiles and the direct
    kernel measured as fast (resnet18's last stage, ``probe/wino``)."""
    if len(out_hw) != 2 or (kh, kw, sh, sw, dh, dw) != (3, 3, 1, 1, 1, 1) or ci < WINO_CI or co < 16:
        return False
    if all(isinstance(d, int) for d in out_hw):
        oh, ow = out_hw
        return -(-oh // 2) * -(-ow // 2) >= WINO_TILES
    return True


_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
                  dtype=torch.float64)


def pack_wino(w: torch.Tensor, nb: int) -> torch.Tensor:
    """U = G g Gᵀ of every filter of ``w`` [CO, CI, 3, 3], computed in float64, rounded once
    to float32 and laid out [ceil(CO / nb)][16][CI][nb] (zero channels past CO)."""
    co, ci = w.shape[0], w.shape[1]
    u = torch.einsum("ik,ockl,jl->ijoc", _G, w.to(torch.float64), _G).reshape(16, co, ci)
    npnl = -(-co // nb)
    full = torch.zeros(16, npnl * nb, ci, dtype=torch.float64)
    full[:, :co] = u
    # [16, NP, NB, CI] -> [NP, 16, CI, NB]
    return full.reshape(16, npnl, nb, ci).permute(1, 0, 3, 2).to(torch.float32).contiguous()


def _store(epi: list[str], other: bool, name: str, ok: str, pix: str) -> list[str]:
    """Epilogue and store of output value ``name`` at pixel ``pix`` if ``ok``."""
    out = [f"          if ({ok}) {{", f"            float v = {name};"]
    if other:
        out.append(f"            const float o = oth[({pix}) * CO + c];")
    out += ["            " + s for s in epi]
    out += [f"            y[({pix}) * CO + c] = v;", "          }"]
    return out


def render_wino(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Body of the ``wino`` form (ABI and blocking in the module doc); ``sf_tile`` of
    ``c_tile.tile_fn`` / ``tile_scalar`` for ``f`` must precede it."""
    mr, nb = f.mr, f.nb
    cc_max = max(8, L1_U // (4 * nb))
    pix = ["pix00", "pix01", "pix10", "pix11"]
    lines = [
        "  const float *restrict gw = (const float *)p[2];",
        "  const int64_t TH = (OH + 1) / 2, TW = (OW + 1) / 2, T = N * TH * TW;",
        f"  const int64_t NP = (CO + {nb - 1}) / {nb};",
        f"  int64_t tbm = {L2_V} / (64 * CI);",
        f"  tbm = tbm < {TB_MIN} ? {TB_MIN} : tbm > {TB_MAX} ? {TB_MAX} : tbm;",
        "  const int64_t NBLK = (T + tbm - 1) / tbm;",
        f"  const int64_t TB = ((T + NBLK - 1) / NBLK + {mr - 1}) / {mr} * {mr};",
        "#ifdef _OPENMP",
        "  const int64_t nth = omp_get_max_threads();",
        "#else",
        "  const int64_t nth = 1;",
        "#endif",
        "  int64_t PS = NBLK >= 2 * nth ? 1 : (2 * nth + NBLK - 1) / NBLK;",
        "  if (PS > NP) PS = NP;",
        f"  const int64_t CC = CI < {cc_max} ? CI : {cc_max};",
        "  const int64_t macs = T * CO * CI * 16;",
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        "    float *V = (float *)aligned_alloc(64, (size_t)((16 * TB * CI * 4 + 63) / 64 * 64));",
        f"    float *Mb = (float *)aligned_alloc(64, (size_t)(16 * TB * {nb * 4}));",
        "    unsigned char *bad = (unsigned char *)malloc((size_t)TB);",
        "    float *zrow = (float *)calloc((size_t)CI, sizeof(float));",
        f"    const float *xr[{mr}];",
        "    #pragma omp for schedule(static)",
        "    for (int64_t u = 0; u < NBLK * PS; u++) {",
        "      const int64_t blk = u / PS, ps = u % PS;",
        "      const int64_t tb0 = blk * TB, tbn = T - tb0 < TB ? T - tb0 : TB;",
        "      const int64_t np0 = ps * NP / PS, np1 = (ps + 1) * NP / PS;",
        "      for (int64_t t = 0; t < tbn; t++) {",
        "        const int64_t tile = tb0 + t, tw = tile % TW, r = tile / TW, th = r % TH, n = r / TH;",
        "        const float *d[16];",
        "        for (int64_t i = 0; i < 4; i++)",
        "          for (int64_t j = 0; j < 4; j++) {",
        "            const int64_t ih = 2 * th - PH + i, iw = 2 * tw - PW + j;",
        "            d[i * 4 + j] = ih >= 0 && ih < H && iw >= 0 && iw < W ? x + ((n * H + ih) * W + iw) * CI : zrow;",
        "          }",
        "        float *vt = V + t * CI;",
        "        const int64_t vs = TB * CI;",
        "        float z = 0.0f;",
        "        #pragma omp simd reduction(+:z)",
        "        for (int64_t c = 0; c < CI; c++) {",
    ]
    # t = Bᵀ d (rows), then V = t B (columns): Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
    for j in range(4):
        lines.append(f"          const float d0{j} = d[{j}][c], d1{j} = d[{4 + j}][c], "
                     f"d2{j} = d[{8 + j}][c], d3{j} = d[{12 + j}][c];")
        lines.append(f"          const float t0{j} = d0{j} - d2{j}, t1{j} = d1{j} + d2{j}, "
                     f"t2{j} = d2{j} - d1{j}, t3{j} = d1{j} - d3{j};")
    for i in range(4):
        lines.append(f"          const float v{i}0 = t{i}0 - t{i}2, v{i}1 = t{i}1 + t{i}2, "
                     f"v{i}2 = t{i}2 - t{i}1, v{i}3 = t{i}1 - t{i}3;")
    for i in range(4):
        for j in range(4):
            lines.append(f"          vt[{i * 4 + j} * vs + c] = v{i}{j};")
    # finite values times zero are zero; an infinity or NaN makes the sum NaN
    lines.append("          z += (" + " + ".join(f"v{i}{j}" for i in range(4) for j in range(4)) + ") * 0.0f;")
    lines += [
        "        }",
        "        bad[t] = !(z == 0.0f);",
        "      }",
        "      for (int64_t np = np0; np < np1; np++) {",
        f"        const int64_t n0 = np * {nb}, nv = CO - n0 < {nb} ? CO - n0 : {nb};",
        "        for (int64_t pos = 0; pos < 16; pos++) {",
        f"          const float *up = wp + (np * 16 + pos) * CI * {nb};",
        "          const float *vp = V + pos * TB * CI;",
        "          for (int64_t c0 = 0; c0 < CI; c0 += CC) {",
        "            const int64_t cc = CI - c0 < CC ? CI - c0 : CC;",
        f"            for (int64_t t = 0; t < tbn; t += {mr}) {{",
        f"              for (int64_t r = 0; r < {mr}; r++)",
        "                xr[r] = vp + (t + r < tbn ? t + r : tbn - 1) * CI;",
        f"              sf_tile(xr, 1, c0, up + c0 * {nb}, 0, cc, Mb + (pos * TB + t) * {nb}, c0 == 0);",
        "            }",
        "          }",
        "        }",
        "        for (int64_t t = 0; t < tbn; t++) {",
        "          const int64_t tile = tb0 + t, tw = tile % TW, r = tile / TW, th = r % TH, n = r / TH;",
        "          const int64_t oh = 2 * th, ow = 2 * tw;",
        "          const int okr = oh + 1 < OH, okc = ow + 1 < OW;",
        "          const int64_t pix00 = (n * OH + oh) * OW + ow, pix01 = pix00 + 1;",
        "          const int64_t pix10 = pix00 + OW, pix11 = pix10 + 1;",
        f"          const float *mt = Mb + t * {nb};",
        f"          const int64_t ms = TB * {nb};",
        "          if (!bad[t]) {",
        "            #pragma omp simd",
        "            for (int64_t j = 0; j < nv; j++) {",
        "              const int64_t c = n0 + j;",
    ]
    for i in range(4):
        lines.append("              " + " ".join(
            f"const float m{i}{j} = mt[{i * 4 + j} * ms + j];" for j in range(4)))
    # s = Aᵀ M (rows), Y = s A (columns): Aᵀ = [1 1 1 0; 0 1 -1 -1]
    for j in range(4):
        lines.append(f"              const float s0{j} = m0{j} + m1{j} + m2{j}, s1{j} = m1{j} - m2{j} - m3{j};")
    lines += ["              const float y00 = s00 + s01 + s02, y01 = s01 - s02 - s03;",
              "              const float y10 = s10 + s11 + s12, y11 = s11 - s12 - s13;"]
    for name, ok, px in (("y00", "1", pix[0]), ("y01", "okc", pix[1]), ("y10", "okr", pix[2]),
                         ("y11", "okr && okc", pix[3])):
        lines += ["    " + s for s in _store(epi, other, name, ok, px)]
    lines += [
        "            }",
        "          } else {",
        "            for (int64_t j = 0; j < nv; j++) {",
        "              const int64_t c = n0 + j;",
        "              float yy[4];",
        "              for (int64_t k = 0; k < 4; k++) {",
        "                const int64_t a = k / 2, b = k % 2;",
        "                float s = 0.0f;",
        "                for (int64_t i = 0; i < 3; i++)",
        "                  for (int64_t jj = 0; jj < 3; jj++) {",
        "                    const int64_t ih = oh + a - PH + i, iw = ow + b - PW + jj;",
        "                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;",
        "                    const float *xp = x + ((n * H + ih) * W + iw) * CI;",
        "                    const float *gp = gw + c * CI * 9 + i * 3 + jj;",
        "                    for (int64_t ci = 0; ci < CI; ci++) s += xp[ci] * gp[ci * 9];",
        "                  }",
        "                yy[k] = s;",
        "              }",
    ]
    for k, (ok, px) in enumerate((("1", pix[0]), ("okc", pix[1]), ("okr", pix[2]), ("okr && okc", pix[3]))):
        lines += ["    " + s for s in _store(epi, other, f"yy[{k}]", ok, px)]
    lines += [
        "            }",
        "          }",
        "        }",
        "      }",
        "    }",
        "    free(zrow);",
        "    free(bad);",
        "    free(Mb);",
        "    free(V);",
        "  }",
    ]
    return lines
