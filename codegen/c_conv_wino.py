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
Numerics: the transforms add at most four terms each, and each position's sum runs over the
input channels only (a direct sum runs over 9 x CI terms). Against a float64 convolution the
largest error relative to the output's scale measured 2-7e-7 here, against 4e-7-2e-6 for the
direct kernel (16-256 channels, ``probe/wino/m4.py``); with a batch norm after it the
difference from torch's own float32 convolution can reach a few 1e-5 in absolute terms.
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


# Transform matrices of F(2x2, 3x3) (Lavin & Gray; points 0, 1, -1, inf), for output tiles of
# m = 2: Bᵀ maps an a x a patch (a = m + 2) to the a x a positions, G a filter, Aᵀ the
# positions back to an m x m block of outputs. The renderer takes its sizes from them, so
# F(4x4, 3x3) (points 0, ±1, ±2, inf) rendered from its matrices alone, but measured no faster here (1.63-1.93x the direct kernel
# against 1.69-1.82x on resnet18's layers at one thread, 0.66x at 7x7 x 512) with about ten
# times the direct sum's error (1e-5 of the output's scale at 256 channels), so it is not kept.
_BT = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
_G = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
_AT = [[1, 1, 1, 0], [0, 1, -1, -1]]


def pack_wino(w: torch.Tensor, nb: int) -> torch.Tensor:
    """U = G g Gᵀ of every filter of ``w`` [CO, CI, 3, 3], computed in float64, rounded once to
    float32 and laid out [ceil(CO / nb)][16][CI][nb] (zero channels past CO)."""
    co, ci = w.shape[0], w.shape[1]
    a = len(_G)
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ik,ockl,jl->ijoc", g, w.to(torch.float64), g).reshape(a * a, co, ci)
    npnl = -(-co // nb)
    full = torch.zeros(a * a, npnl * nb, ci, dtype=torch.float64)
    full[:, :co] = u
    # [P, NP, NB, CI] -> [NP, P, CI, NB]
    return full.reshape(a * a, npnl, nb, ci).permute(1, 0, 3, 2).to(torch.float32).contiguous()


def _lin(row: list[float], terms: list[str]) -> str:
    """The C expression sum_k row[k] * terms[k] (zero coefficients left out, ±1 as adds)."""
    out = ""
    for c, t in zip(row, terms):
        if c == 0:
            continue
        mag = abs(c)
        term = t if mag == 1 else f"{float(mag)!r}f * {t}"
        if not out:
            out = term if c > 0 else f"-{term}"
        else:
            out += f" {'+' if c > 0 else '-'} {term}"
    return out or "0.0f"


def _separable(mt: list[list[float]], src: str, mid: str, dst: str, indent: str) -> list[str]:
    """C declarations of ``dst = mt · src · mtᵀ`` for an n x n block of scalars ``src{i}_{j}``
    (n = len(mt[0])) into len(mt) x len(mt) ``dst{i}_{j}``: first over the rows (``mid``), then
    over the columns."""
    n, k = len(mt[0]), len(mt)
    out = [indent + "const float " + ", ".join(
        f"{mid}{i}_{j} = {_lin(mt[i], [f'{src}{r}_{j}' for r in range(n)])}" for i in range(k)) + ";"
        for j in range(n)]
    out += [indent + "const float " + ", ".join(
        f"{dst}{i}_{j} = {_lin(mt[j], [f'{mid}{i}_{r}' for r in range(n)])}" for j in range(k)) + ";"
        for i in range(k)]
    return out


def _store(epi: list[str], other: bool, name: str, ok: str, pix: str) -> list[str]:
    """Epilogue and store of output value ``name`` at pixel ``pix`` if ``ok``."""
    out = [f"          if ({ok}) {{", f"            float v = {name};"]
    if other:
        out.append(f"            const float o = oth[({pix}) * CO + c];")
    out += ["            " + s for s in epi]
    out += [f"            y[({pix}) * CO + c] = v;", "          }"]
    return out


def render_wino(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Body of the ``wino`` form (ABI and blocking in the module doc);
    ``sf_tile`` of ``c_tile.tile_fn`` / ``tile_scalar`` for ``f`` must precede it."""
    mr, nb = f.mr, f.nb
    bt, at = _BT, _AT
    m, a = len(at), len(bt)
    npos = a * a
    cc_max = max(8, L1_U // (4 * nb))
    lines = [
        "  const float *restrict gw = (const float *)p[2];",
        f"  const int64_t TH = (OH + {m - 1}) / {m}, TW = (OW + {m - 1}) / {m}, T = N * TH * TW;",
        f"  const int64_t NP = (CO + {nb - 1}) / {nb};",
        f"  int64_t tbm = {L2_V} / ({4 * npos} * CI);",
        f"  tbm = tbm < {TB_MIN} ? {TB_MIN} : tbm > {TB_MAX} ? {TB_MAX} : tbm;",
        "#ifdef _OPENMP",
        "  const int64_t nth = omp_get_max_threads();",
        "#else",
        "  const int64_t nth = 1;",
        "#endif",
        # whole rounds of blocks over the threads (7 blocks on 2 threads idled one for a
        # seventh of the time), as long as blocks keep at least a tile row each
        "  int64_t NBLK = (T + tbm - 1) / tbm;",
        f"  if (NBLK >= nth && (NBLK + nth - 1) / nth * nth * {mr} <= T) NBLK = (NBLK + nth - 1) / nth * nth;",
        f"  const int64_t TB = ((T + NBLK - 1) / NBLK + {mr - 1}) / {mr} * {mr};",
        "  int64_t PS = NBLK >= 2 * nth ? 1 : (2 * nth + NBLK - 1) / NBLK;",
        "  if (PS > NP) PS = NP;",
        f"  const int64_t CC = CI < {cc_max} ? CI : {cc_max};",
        f"  const int64_t macs = T * CO * CI * {npos};",
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        f"    float *V = (float *)aligned_alloc(64, (size_t)(({npos} * TB * CI * 4 + 63) / 64 * 64));",
        f"    float *Mb = (float *)aligned_alloc(64, (size_t)({npos} * TB * {nb * 4}));",
        "    unsigned char *bad = (unsigned char *)malloc((size_t)TB);",
        "    float *zrow = (float *)calloc((size_t)CI, sizeof(float));",
        f"    const float *xr[{mr}];",
        "    #pragma omp for schedule(static)",
        "    for (int64_t u = 0; u < NBLK * PS; u++) {",
        "      const int64_t blk = u / PS, ps = u % PS;",
        "      const int64_t tb0 = blk * TB, tbn = T - tb0 < TB ? T - tb0 : TB;",
        "      if (tbn <= 0) continue;   /* rounding TB up can leave the last blocks empty */",
        "      const int64_t np0 = ps * NP / PS, np1 = (ps + 1) * NP / PS;",
        "      for (int64_t t = 0; t < tbn; t++) {",
        "        const int64_t tile = tb0 + t, tw = tile % TW, r = tile / TW, th = r % TH, n = r / TH;",
        f"        const float *d[{npos}];",
        f"        for (int64_t i = 0; i < {a}; i++)",
        f"          for (int64_t j = 0; j < {a}; j++) {{",
        f"            const int64_t ih = {m} * th - PH + i, iw = {m} * tw - PW + j;",
        f"            d[i * {a} + j] = ih >= 0 && ih < H && iw >= 0 && iw < W ? x + ((n * H + ih) * W + iw) * CI : zrow;",
        "          }",
        "        float *vt = V + t * CI;",
        "        const int64_t vs = TB * CI;",
        "        float z = 0.0f;",
        "        #pragma omp simd reduction(+:z)",
        "        for (int64_t c = 0; c < CI; c++) {",
    ]
    for j in range(a):
        lines.append("          const float " + ", ".join(f"d{i}_{j} = d[{i * a + j}][c]" for i in range(a)) + ";")
    lines += _separable(bt, "d", "t", "v", "          ")     # V = Bᵀ d B
    for i in range(a):
        lines.append("          " + " ".join(f"vt[{i * a + j} * vs + c] = v{i}_{j};" for j in range(a)))
    # finite values times zero are zero; an infinity or NaN makes the sum NaN
    lines.append("          z += (" + " + ".join(f"v{i}_{j}" for i in range(a) for j in range(a)) + ") * 0.0f;")
    lines += [
        "        }",
        "        bad[t] = !(z == 0.0f);",
        "      }",
        "      for (int64_t np = np0; np < np1; np++) {",
        f"        const int64_t n0 = np * {nb}, nv = CO - n0 < {nb} ? CO - n0 : {nb};",
        f"        for (int64_t pos = 0; pos < {npos}; pos++) {{",
        f"          const float *up = wp + (np * {npos} + pos) * CI * {nb};",
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
        f"          const int64_t oh = {m} * th, ow = {m} * tw;",
        "          const int64_t pix0 = (n * OH + oh) * OW + ow;",
        "          const int64_t nr = OH - oh, nc = OW - ow;",
        f"          const float *mt = Mb + t * {nb};",
        f"          const int64_t ms = TB * {nb};",
        "          if (!bad[t]) {",
        "            #pragma omp simd",
        "            for (int64_t j = 0; j < nv; j++) {",
        "              const int64_t c = n0 + j;",
    ]
    for i in range(a):
        lines.append("              const float " + ", ".join(
            f"m{i}_{j} = mt[{i * a + j} * ms + j]" for j in range(a)) + ";")
    lines += _separable(at, "m", "s", "y", "              ")   # Y = Aᵀ M A
    for i in range(m):
        for j in range(m):
            ok = " && ".join(c for c in ((f"nr > {i}" if i else ""), (f"nc > {j}" if j else "")) if c) or "1"
            lines += ["    " + s_ for s_ in _store(epi, other, f"y{i}_{j}", ok, f"pix0 + {i} * OW + {j}")]
    lines += [
        "            }",
        "          } else {",
        "            for (int64_t j = 0; j < nv; j++) {",
        "              const int64_t c = n0 + j;",
        f"              for (int64_t k = 0; k < {m * m}; k++) {{",
        f"                const int64_t a = k / {m}, b = k % {m};",
        "                if (a >= nr || b >= nc) continue;",
        "                float s = 0.0f;",
        "                for (int64_t i = 0; i < 3; i++)",
        "                  for (int64_t jj = 0; jj < 3; jj++) {",
        "                    const int64_t ih = oh + a - PH + i, iw = ow + b - PW + jj;",
        "                    if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;",
        "                    const float *xp = x + ((n * H + ih) * W + iw) * CI;",
        "                    const float *gp = gw + c * CI * 9 + i * 3 + jj;",
        "                    for (int64_t ci = 0; ci < CI; ci++) s += xp[ci] * gp[ci * 9];",
        "                  }",
    ]
    lines += ["    " + s_ for s_ in _store(epi, other, "s", "1", "pix0 + a * OW + b")]
    lines += [
        "              }",
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
