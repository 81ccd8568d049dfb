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
  tile of output pixels and panel of output channels, a sum over the kernel's taps of
  pointwise products; a tap's pixel that falls in the padding reads a row of zeros, so the
  inner loop has no branch;
- ``wino``: 3x3, stride 1, dilation 1, one group, from 16 input and output channels on images
  of at least 36 2x2 tiles: Winograd F(2x2, 3x3), ``codegen/c_conv_wino.py`` (1.6-1.9x the
  ``dense`` form, which runs at the FMA units' limit, on resnet18's 56x56 and 28x28 layers);
- ``dw``: depthwise (groups = input channels = output channels), ``codegen/c_conv_dw.py``;
- ``stem``: one group over at most ``STEM_CI`` input channels (an RGB stem), reading x as it
  comes, NCHW, 16 output pixels of a row to a zmm (``codegen/c_conv_stem.py``).

``pw`` and ``dense`` run the tile loop of ``codegen/c_tile.py`` (tiles of pixels x channels
in groups; input channels in L1-sized chunks: a panel of a 3x3 convolution over 512 channels
is 590 KB, and streamed from L2 once per tile it ran at 0.65x of oneDNN, 0.75x with the
chunks).

Where oneDNN stays (``_library_faster``, for what the ``wino`` form does not take; measured on the 2-core Zen 5 in resnet18 / resnet50,
``probe/cmp.py``, not kept): kernels larger than 1x1 over 256 x 256 channels or more (3x3 at
14 x 14 over 256 channels 0.8-0.9x, at 7 x 7 over 512 0.75x), and RGB stems of more than 20 M
multiply-adds (7x7 over 224 x 224: 0.79x in the ``dense`` form; the ``stem`` form took 858
against oneDNN's 683 µs inside resnet50, seventeenth session). Elsewhere the generated kernel ties or wins: 3x3
over 64-128 channels 0.95-1.05x (the FMA units' limit, ~460 GFLOP/s, for both), 1x1 ones
1.1-1.9x, MobileNet-sized ones 1.5-3x.

Weights (packed once at render time, ``CKernel.args``): ``pw`` / ``dense`` as panels
[ceil(CO / NB)][KH][KW][CI][NB] (output channels innermost, the last panel padded with zero
channels); ``dw`` as [KH * KW][ceil16(C)] (channels innermost, zero-padded); ``stem`` as
[CI][KH][KW][ceil16(CO)]. A batch norm in
the epilogue, with constant parameters, becomes a per-channel scale and shift [CO] computed
as torch's inference kernel does (``gamma / sqrt(var + eps)``, ``beta - mean * scale``).

Epilogue: the sum plus the bias, then each epilogue node in order (batch norm, residual
``add`` of a tensor of the output's shape, elementwise activations) in the fused C kernels'
own expressions (c_expr.py), so NaN and inf follow the IR's semantics. Accumulators go
through a per-thread tile buffer and the epilogue runs as an ``omp simd`` loop over it.

Kernel ABI (c.py): ``p`` = x (NHWC; NCHW for ``stem``), the packed weight, [bias [CO]], [scale, shift [CO]],
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
from .c_isa import TILE_MACROS, VEC_MACRO, isa_variants
from .c_quant import C_EXPR, c_node_ok
from .c_types import PRELUDE
from .c_conv_dw import render_dw
from .c_conv_stem import STEM_CI, pack_stem, render_stem
from .c_conv_wino import pack_wino, render_wino, wino_fits
from .c_tile import TRANSPOSE16, ConvForm, render_gemm, tile_shape, tile_variants
from .schedule import Kernel

STEM_MACS = 20_000_000   # few-input-channel convolutions above this many MACs stay on oneDNN


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
        nb, mr = tile_shape(co)
        if wino_fits(kh, kw, sh, sw, dh, dw, ci, co, node.outputs[0].type.shape[2:]):
            return ConvForm("wino", kh, kw, sh, sw, dh, dw, nb, mr)
        if _library_faster(kh * kw, ci, co, node):
            return None
        if ci <= STEM_CI:
            return ConvForm("stem", kh, kw, sh, sw, dh, dw, 16, 16)
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


def residual_operand(k: Kernel) -> Value | None:
    """The residual ``add``'s other operand, if the library kernel's epilogue has one (shared
    by the linear alternatives and the convolution's step)."""
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
    if f.kind == "stem":
        return pack_stem(w)
    if f.kind == "wino":
        return pack_wino(w, f.nb)
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
    other = residual_operand(k)
    y = k.nodes[-1].outputs[0]
    args: list = [x, pack_weight(w.const, f)]
    decl = ["  const float *restrict x = (const float *)p[0];",
            "  const float *restrict wp = (const float *)p[1];"]
    if f.kind == "wino":
        # the direct sum of tiles with non-finite values reads the filters as they are
        args.append(w.const.to(torch.float32).contiguous())
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
    needs = VEC_MACRO
    if f.kind == "dw":
        # the vector loops are in the body (c_conv_dw), behind SF_CONV_VEC / SF_TILE_AVX2
        head += isa_variants("SF_CONV_VEC", [], [], [], avx2_flag="SF_TILE_AVX2")
        needs = TILE_MACROS       # c_conv_dw._dw_avx2
        body = render_dw(f, epi, other is not None)
    elif f.kind == "stem":
        head += isa_variants("SF_CONV_VEC", [TRANSPOSE16], [])
        body = render_stem(f, epi, other is not None)
    else:
        # the tile loop has an AVX2 form (c_tile.tile_fn_avx2); the rest is plain C
        head += tile_variants(f)
        needs = TILE_MACROS
        body = render_wino(f, epi, other is not None) if f.kind == "wino" else \
            render_gemm(f, epi, other is not None)
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    params = _params(node, y)
    return CKernel(k, src, params, args, needs=needs)


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
