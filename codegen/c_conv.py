"""Float32 2-D (and 1-D) convolutions as generated C: channels-last, prepacked weights, fused
epilogues.

The C target runs a convolution as a ``library`` kernel: oneDNN through torch
(``runtime/library_conv.py``). On the small images of mobile networks that call costs more
than its arithmetic: 25-45 µs for a 1x1 convolution of 49 x 96 x 576 multiply-adds or a 5x5
depthwise one on a 7 x 7 x 576 image, where these kernels take 7-18 µs. For a library
convolution kernel this module renders a C alternative that the executor runs instead of
oneDNN (``runtime/cconv.py``).

Forms (``conv_form``), all on channels-last (NHWC) activations:

- ``pw``: 1x1, stride 1, no padding, one group: a GEMM over the image's pixels as rows;
- ``dense``: one group, any kernel size, stride, padding (asymmetric too) and dilation: per
  tile of ``mr`` output pixels and panel of ``nb`` output channels, a sum over the kernel's
  taps of pointwise products; a tap's pixel that falls in the padding reads a row of zeros,
  so the inner loop has no branch;
- ``dw``: depthwise (groups = input channels = output channels): 16 channels per zmm, the tap
  weights of a channel block held in registers while the output row is swept, interior pixels
  without bounds tests.

Loop of ``pw`` / ``dense``: output pixels (flattened over image, row and column) go in tiles
of ``mr`` and tiles in groups of ``GROUP``; the threads take (panel, group) pairs. Within a
group the input channels go in chunks (``chunk_ci``) whose weights stay in L1 while every tile
of the group uses them: a panel of a 3x3 convolution over 512 channels is 590 KB, and streamed
from L2 once per tile it ran at 0.65x of oneDNN (0.75x with the chunks).

Where oneDNN stays (``_library_faster``; measured on the 2-core Zen 5 in resnet18 / resnet50,
``probe/cmp.py``, not kept): kernels larger than 1x1 over 256 x 256 channels or more (3x3 at
14 x 14 over 256 channels 0.8-0.9x, at 7 x 7 over 512 0.75x), and RGB stems of more than 20 M
multiply-adds (7x7 over 224 x 224: 0.79x). Elsewhere the generated kernel ties or wins: 3x3
over 64-128 channels 0.95-1.05x (the FMA units' limit, ~460 GFLOP/s, for both), 1x1 ones
1.1-1.9x, MobileNet-sized ones 1.5-3x.

Weights (packed once at render time, ``CKernel.args``): ``pw`` / ``dense`` as panels
[ceil(CO / NB)][KH][KW][CI][NB] (output channels innermost, the last panel padded with zero
channels); ``dw`` as [KH * KW][ceil16(C)] (channels innermost, zero-padded). A batch norm in
the epilogue, with constant parameters, becomes a per-channel scale and shift [CO] computed
as torch's inference kernel does (``gamma / sqrt(var + eps)``, ``beta - mean * scale``).

Epilogue: the sum plus the bias, then each epilogue node in order (batch norm, residual
``add`` of a tensor of the output's shape, elementwise activations) in the fused C kernels'
own expressions (c_expr.py), so NaN and inf follow the IR's semantics. Accumulators go
through a per-thread tile buffer and the epilogue runs as an ``omp simd`` loop over it.

Kernel ABI (c.py): ``p`` = x (NHWC), the packed weight, [bias [CO]], [scale, shift [CO]],
[the add's other operand (NHWC)], y (NHWC); ``q`` = N, H, W, OH, OW, CI, CO, PH, PW (runtime
integers, so one source serves every convolution with the same kernel size, strides and
epilogue: a MobileNet's 1x1 convolutions share a handful of sources). A 1-D convolution runs
as a 2-D one of height 1. Without AVX-512 a portable scalar loop is compiled.

Results: the same products as oneDNN summed in another order (tap-major, then input
channel), and independent of the thread count (a tile's sum never splits across threads).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch

from ..ir.graph import Node, Value
from ..ir.ops.nn import pads, spatial_param
from ..ir.types import dims_equal
from .c import CKernel
from .c_quant import C_EXPR, c_node_ok
from .c_types import PRELUDE
from .schedule import Kernel

PAR_MACS = 1 << 18   # below this many multiply-adds a convolution runs on one thread
STEM_MACS = 20_000_000   # few-input-channel convolutions above this many MACs stay on oneDNN
GROUP = 8            # tiles that share one pass over a chunk of a panel's weights
L1_WEIGHTS = 24 << 10   # bytes of a weight chunk (half the 48 KB L1 data cache)


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


def dw_pixels(f: "ConvForm") -> int:
    """Output pixels a depthwise step computes together: 8 (independent FMA chains enough to
    hide the FMA latency) unless their input columns, accumulators and one kernel row of
    weights would not fit the 32 zmm registers, then fewer."""
    for pt in (8, 6, 4, 2):
        if (pt - 1) * f.sw + (f.kw - 1) * f.dw + 1 + pt + f.kw <= 30:
            return pt
    return 1


def _static(*ds: object) -> bool:
    return all(isinstance(d, int) for d in ds)


def conv_form(k: Kernel) -> ConvForm | None:
    """The form of library kernel ``k`` if this module renders it, else None: a float32
    ``conv`` of rank 3 or 4 with a constant weight of static shape, static channel counts, one
    group or depthwise, bias absent or f32 [CO], and an epilogue of a constant-parameter batch
    norm (first), a residual ``add`` of an output-shaped f32 tensor and f32 activations the C
    kernels evaluate."""
    if k.kind != "library" or not k.nodes or k.nodes[0].op != "conv":
        return None
    node = k.nodes[0]
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if x is None or w is None or not w.is_const or x.type.rank not in (3, 4) or w.type.rank != x.type.rank:
        return None
    if any(v is not None and v.dtype.name != "f32" for v in (x, w, bias, node.outputs[0])):
        return None
    if not _static(*w.type.shape) or not _static(x.type.shape[1]) or not _static(node.outputs[0].type.shape[1]):
        return None
    co, cig = w.type.shape[0], w.type.shape[1]
    ci, groups = x.type.shape[1], node.attrs["groups"]
    if bias is not None and tuple(bias.type.shape) != (co,):
        return None
    if ci < 1 or co < 1:
        return None
    n = x.type.rank - 2
    st, dl = spatial_param(node.attrs, "stride", n, 1), spatial_param(node.attrs, "dilation", n, 1)
    pd = pads(node.attrs, n)
    if not _static(*st, *dl, *(p for pp in pd for p in pp)) or min(*st, *dl) < 1:
        return None
    if not _epilogue_ok(k):
        return None
    kh, kw = (1, w.type.shape[2]) if n == 1 else (w.type.shape[2], w.type.shape[3])
    sh, sw = (1, st[0]) if n == 1 else (st[0], st[1])
    dh, dw = (1, dl[0]) if n == 1 else (dl[0], dl[1])
    if groups == 1 and cig == ci:
        if _library_faster(kh * kw, ci, co, node):
            return None
        nb = 32 if co > 16 else 16
        mr = 6 if nb == 32 else 8
        pw = kh == kw == 1 and sh == sw == 1 and all(p == 0 for pp in pd for p in pp)
        return ConvForm("pw" if pw else "dense", kh, kw, sh, sw, dh, dw, nb, mr)
    if groups == ci == co and cig == 1:
        return ConvForm("dw", kh, kw, sh, sw, dh, dw, 16, 1)
    return None


def _library_faster(taps: int, ci: int, co: int, node: Node) -> bool:
    """Whether oneDNN is measurably faster for a one-group convolution (module doc): a
    kernel larger than 1x1 over 256 x 256 channels or more (its panels stream from L2), or few
    input channels (an RGB stem) with more than ``STEM_MACS`` multiply-adds per image."""
    if taps > 1 and ci * co >= 256 * 256:
        return True
    out = node.outputs[0].type.shape
    if ci < 8 and all(isinstance(d, int) for d in out[2:]):
        per_image = co * ci * taps
        for d in out[2:]:
            per_image *= d
        return per_image > STEM_MACS
    return False


def _epilogue_ok(k: Kernel) -> bool:
    """Each epilogue node reads the previous node's output once: a batch norm (only first,
    constant f32 [CO] parameters), an ``add`` of it and an f32 tensor of its shape, or an f32
    unary op the fused C kernels evaluate."""
    prev = k.nodes[0]
    co = prev.inputs[1].type.shape[0]
    for i, e in enumerate(k.nodes[1:]):
        out = prev.outputs[0]
        if len(e.outputs) != 1 or e.outputs[0].dtype.name != "f32":
            return False
        if e.op == "batch_norm":
            if i != 0 or e.inputs[0] is not out or len(e.inputs) != 5:
                return False
            if any(v is None or not v.is_const or v.dtype.name != "f32" or tuple(v.type.shape) != (co,)
                   for v in e.inputs[1:]):
                return False
        elif e.op == "add":
            if len(e.inputs) != 2 or sum(v is out for v in e.inputs) != 1 or not c_node_ok(e):
                return False
            other = e.inputs[1] if e.inputs[0] is out else e.inputs[0]
            if other.dtype.name != "f32" or other.type.rank != out.type.rank or \
                    not all(dims_equal(a, b) for a, b in zip(other.type.shape, out.type.shape)):
                return False
        else:
            if e.op not in C_EXPR or not c_node_ok(e) or len(e.inputs) != 1 or e.inputs[0] is not out:
                return False
            if e.inputs[0].dtype.name != "f32":
                return False
        prev = e
    return True


def _other(k: Kernel) -> Value | None:
    """The residual ``add``'s other operand, if the epilogue has one."""
    for prev, e in zip(k.nodes, k.nodes[1:]):
        if e.op == "add":
            return e.inputs[1] if e.inputs[0] is prev.outputs[0] else e.inputs[0]
    return None


def _bn_fold(bn: Node) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) f32 of an inference batch norm, as torch's CPU kernel forms them."""
    gamma, beta, mean, var = (v.const.to(torch.float32) for v in bn.inputs[1:5])
    scale = gamma / torch.sqrt(var + float(bn.attrs["eps"]))
    return scale.contiguous(), (beta - mean * scale).contiguous()


def pack_weight(w: torch.Tensor, f: ConvForm) -> torch.Tensor:
    """The packed weight of form ``f`` (layouts in the module doc) from the conv weight
    [CO, CI/g, (KH,) KW]."""
    w = w.to(torch.float32)
    if w.dim() == 3:
        w = w.unsqueeze(2)
    co = w.shape[0]
    if f.kind == "dw":
        cp = -(-co // 16) * 16
        out = torch.zeros(f.kh * f.kw, cp, dtype=torch.float32)
        out[:, :co] = w[:, 0].permute(1, 2, 0).reshape(f.kh * f.kw, co)
        return out.contiguous()
    npnl = -(-co // f.nb)
    full = torch.zeros(npnl * f.nb, *w.shape[1:], dtype=torch.float32)
    full[:co] = w
    # [NP, NB, CI, KH, KW] -> [NP, KH, KW, CI, NB]
    return full.reshape(npnl, f.nb, *w.shape[1:]).permute(0, 3, 4, 2, 1).contiguous()


def epilogue(k: Kernel, bias: bool, bn: bool) -> list[str]:
    """C statements turning ``v`` (the sum) into the stored value, channel ``c``, other operand
    element ``o`` (read where an ``add`` needs it)."""
    s = []
    if bias:
        s.append("v = v + bias[c];")
    prev = k.nodes[0]
    for e in k.nodes[1:]:
        if e.op == "batch_norm":
            s.append("v = v * bns[c] + bnt[c];")
        else:
            args = ["v" if a is prev.outputs[0] else "o" for a in e.inputs]
            s.append(f"v = {C_EXPR[e.op](args, e, 'float')};")
        prev = e
    return s


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


def _store_tile(f: ConvForm, epi: list[str], other: bool) -> list[str]:
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
    pairs. Within a group the input channels go in chunks of ``chunk_ci`` whose weights stay
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
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        "    float *zrow = (float *)calloc((size_t)CI, sizeof(float));",
        f"    float ctg[{GROUP * mr * nb}] __attribute__((aligned(64)));",
        f"    const float **xr = (const float **)malloc(sizeof(const float *) * {GROUP * taps * mr});",
        *([f"    float *wbuf = (float *)aligned_alloc(64, (size_t)CI * {nb * 4});",
           "    int64_t packed = -1;"] if rows else []),
        "    #pragma omp for collapse(2) schedule(static)",
        "    for (int64_t np = 0; np < NP; np++)",
        "    for (int64_t gi = 0; gi < NG; gi++) {",
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
        # 16 x 16 blocks by the AVX-512 transpose (sf_tr16, c_f32gemm.py); the rest, and the
        # zero channels past CO, one element at a time
        wpan = ["      if (np != packed) {",
                "#if SF_CONV_VEC",
                "        const int64_t nfull = nv / 16 * 16, kfull = CI / 16 * 16;",
                "        for (int64_t j0 = 0; j0 < nfull; j0 += 16)",
                "          for (int64_t c = 0; c < kfull; c += 16)",
                f"            sf_tr16(w + (n0 + j0) * CI + c, CI, wbuf + c * {nb} + j0, {nb});",
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
    lines += ["  " + s for s in _store_tile(f, epi, other)]
    lines += ["      }", "    }", "    free(xr);", "    free(zrow);", *(["    free(wbuf);"] if rows else []), "  }"]
    return lines


def _dw_pixelwise(f: ConvForm, epi: list[str], other: bool) -> list[str]:
    """Depthwise vector loop for kernels of up to 9 taps: one output pixel at a time, every
    tap weight of the channel block in a register for the whole row, interior pixels without
    bounds tests."""
    taps = f.kh * f.kw
    return [
        f"        __m512 wv[{taps}];",
        f"        for (int64_t t = 0; t < {taps}; t++) wv[t] = _mm512_loadu_ps(wp + t * CP + c0);",
        "        for (int64_t ow = 0; ow < OW; ow++) {",
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
        "          _mm512_storeu_ps(ct, acc);",
        "          const int64_t pix0 = (n * OH + oh) * OW + ow, mr = 1;",
        "          const int64_t n0 = c0;",
        *["  " + s for s in _store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
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
        *["  " + s for s in _store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]


def _render_dw(f: ConvForm, epi: list[str], other: bool) -> list[str]:
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
        *["  " + s for s in _store_tile(ConvForm("dw", 1, 1, 1, 1, 1, 1, 16, 1), epi, other)],
        "        }",
    ]
    return [
        "  const int64_t C = CO, CP = (C + 15) / 16 * 16;",
        f"  const int64_t macs = N * OH * OW * C * {taps};",
        f"  #pragma omp parallel if (macs > {PAR_MACS})",
        "  {",
        f"    float ct[{16 * (dw_pixels(f) if rows else 1)}] __attribute__((aligned(64)));",
        "    #pragma omp for collapse(2) schedule(static)",
        "    for (int64_t n = 0; n < N; n++)",
        "    for (int64_t oh = 0; oh < OH; oh++) {",
        "      for (int64_t c0 = 0; c0 < C; c0 += 16) {",
        "        const int64_t nv = C - c0 < 16 ? C - c0 : 16;",
        "#if SF_CONV_VEC",
        "        const __mmask16 km = nv >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1);",
        *vec,
        "#else",
        *scalar,
        "#endif",
        "      }",
        "    }",
        "  }",
    ]


@dataclass(frozen=True)
class ConvConfig:
    """``vec=False`` renders the portable scalar loops only (tests)."""

    vec: bool = True


CONV = ConvConfig()


def render_conv(k: Kernel, cfg: ConvConfig | None = None) -> CKernel:
    """C source of the convolution alternative of library kernel ``k`` (``conv_form`` is not
    None); its ``args`` hold the packed weight (and batch-norm scale and shift) as tensors and
    the graph Values of x, the bias, the add's other operand and y (ABI in the module doc)."""
    cfg = cfg or CONV
    f = conv_form(k)
    assert f is not None
    node = k.nodes[0]
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    bn = next((e for e in k.nodes[1:] if e.op == "batch_norm"), None)
    other = _other(k)
    y = k.nodes[-1].outputs[0]
    args: list = [x, pack_weight(w.const, f)]
    decl = ["  const float *restrict x = (const float *)p[0];",
            "  const float *restrict wp = (const float *)p[1];"]
    if bias is not None:
        decl.append(f"  const float *restrict bias = (const float *)p[{len(args)}];")
        args.append(bias)
    if bn is not None:
        s, t = _bn_fold(bn)
        decl.append(f"  const float *restrict bns = (const float *)p[{len(args)}];")
        decl.append(f"  const float *restrict bnt = (const float *)p[{len(args) + 1}];")
        args += [s, t]
    if other is not None:
        decl.append(f"  const float *restrict oth = (const float *)p[{len(args)}];")
        args.append(other)
    decl.append(f"  float *restrict y = (float *)p[{len(args)}];")
    args.append(y)
    decl += ["  const int64_t N = q[0], H = q[1], W = q[2], OH = q[3], OW = q[4];",
             "  const int64_t CI = q[5], CO = q[6], PH = q[7], PW = q[8];",
             "  (void)CI; (void)PH; (void)PW; (void)H; (void)W;",
             "  if (N <= 0 || OH <= 0 || OW <= 0) return;"]
    epi = epilogue(k, bias is not None, bn is not None)
    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if not cfg.vec:
        head.append("#define SF_NO_VEC 1")
    head += ["#if defined(__AVX512F__) && !defined(SF_NO_VEC)", "#define SF_CONV_VEC 1",
             "#include <immintrin.h>"]
    if f.kind == "dw":
        head += ["#else", "#define SF_CONV_VEC 0", "#endif"]
        body = _render_dw(f, epi, other is not None)
    else:
        head += tile_fn(f) + ["#else", "#define SF_CONV_VEC 0"] + tile_scalar(f) + ["#endif"]
        body = render_gemm(f, epi, other is not None)
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    params = _params(node, y)
    return CKernel(k, src, params, args)


def _params(node: Node, y: Value) -> list[sympy.Expr]:
    """q = N, H, W, OH, OW, CI, CO, PH, PW as expressions of the graph's symbols."""
    xs, ys = list(node.inputs[0].type.shape), list(y.type.shape)
    n = len(xs) - 2
    pd = pads(node.attrs, n)
    if n == 1:
        xs, ys = [xs[0], xs[1], 1, xs[2]], [ys[0], ys[1], 1, ys[2]]
        ph, pw = 0, pd[0][0]
    else:
        ph, pw = pd[0][0], pd[1][0]
    vals = [xs[0], xs[2], xs[3], ys[2], ys[3], xs[1], ys[1], ph, pw]
    return [sympy.sympify(v) for v in vals]
