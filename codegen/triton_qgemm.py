"""The int8 GEMM template of ``qlinear`` for the Triton target (the GPU twin of ``c_qgemm.py``).

One kernel computes, for integer codes x [M, K] (i8 / i4 / u4; Int6 codes are i8 in [-32, 31])
and per-output-channel weights w [N, K] (group 0; i8 / i4 / u4, all held exactly in int8)::

    acc[m, n] = sum_k x[m, k] * w[n, k]                      (tl.dot on int8 tiles, int32)
    y[m, n]   = (acc - zi[n] * rs[m]) * s[n] - (z[n] - zi[n]) * s[n] * rs[m]   (zero point z)
    y[m, n]   = y[m, n] * sx[m] + bias[n]                    (sx: dynamic activation scale)

``rs`` is the row sum of the codes and ``zi = floor(z + 0.5)`` the integral part of the zero
point, so an integer zero point is removed exactly in int32 and only a float one's fraction
goes through the float epilogue. The epilogue computes in f32 (f64 when the output or the
float x is f64) and rounds once to the output type (bf16 to nearest even also under the
interpreter). The accumulation is exact while |acc| < 2^31 (K < 65 793 for 8-bit codes).

For float x with ``act`` per_token / per_tensor (the W8A8 baselines) a small Triton kernel
first quantises x symmetrically, exactly as ``ir.ops.quant.dynamic_quant`` does (absmax,
sx = absmax / qmax correctly rounded, 1 when not > 0; codes = clamp(round_half_even(x / sx))),
and writes the codes, ``sx`` and ``rs``; a row holding a NaN (or an inf / inf) gets sx = NaN,
so its output row is NaN as in the reference. per_tensor first writes each row's absmax (NaN
for a NaN row) and every quantising program reduces those M values.

Blocks are fixed by M (no autotuning): see :func:`gemm_config`. Only core ``tl`` builtins and
tl.standard's combine functions passed to ``tl.reduce`` are used, for the interpreter's sake
(see ``triton_expr``); the source runs on Triton 3.6 (CUDA) and 3.8 (CPU interpreter).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import sympy
import torch

from ..ir.graph import Node
from .schedule import Kernel
from .triton_expr import GEMM_TILE, PRELUDE

X_INT = frozenset({"i8", "i4", "u4"})      # integer codes held exactly in int8
W_INT = frozenset({"i8", "i4", "u4"})
REAL = frozenset({"f32", "f16", "bf16", "f64"})
MAX_K = 65792                              # 128 * 255 * K < 2^31: int32 accumulation is exact

HEADER = "# scalefold: Triton int8 GEMM (qlinear)\nimport triton\nimport triton.language as tl\n"

KERNELS = r'''

@triton.jit
def _qg_ct(v, F64: tl.constexpr):
    if F64:
        r = v.to(tl.float64)
    else:
        r = v.to(tl.float32)
    return r


@triton.jit
def _qg_div(a, b, F64: tl.constexpr):
    # correctly rounded (the reference divides in IEEE arithmetic); div_rn takes only f32 and,
    # compiled, does not broadcast its operands
    a, b = tl.broadcast(a, b)
    if F64:
        r = a / b
    else:
        r = tl.div_rn(a, b)
    return r


@triton.jit
def _qg_row_absmax(base, K, BLOCK: tl.constexpr, F64: tl.constexpr):
    """([1, 1] absmax, [1, 1] NaN flag) of one row of K values at ``base``."""
    ks = tl.arange(0, BLOCK)[None, :]
    amax = _qg_ct(tl.full([1, BLOCK], 0, tl.int32), F64)
    nan = tl.full([1, BLOCK], 0, tl.int32)
    for k0 in range(0, K, BLOCK):
        mk = (k0 + ks) < K
        a = tl.abs(_qg_ct(tl.load(base + k0 + ks, mask=mk, other=0), F64))
        nan = nan | (a != a).to(tl.int32)
        amax = tl.where(a > amax, a, amax)
    amax = tl.reduce(amax, 1, tl.standard._elementwise_max, keep_dims=True)
    nan = tl.reduce(nan, 1, tl.standard._elementwise_max, keep_dims=True)
    return amax, nan


@triton.jit
def sf_absmax(X, AMAX, M, K, BLOCK: tl.constexpr, F64: tl.constexpr):
    """AMAX[m] = max |x[m, :]|, NaN for a row holding a NaN (the per_tensor pre-pass)."""
    row = tl.program_id(0).to(tl.int64)
    amax, nan = _qg_row_absmax(X + row * K, K, BLOCK, F64)
    amax = tl.where(nan > 0, float("nan"), amax)
    tl.store(AMAX + row + tl.full([1, 1], 0, tl.int64), amax)


@triton.jit
def sf_quant(X, AMAX, XQ, SX, RS, M, K, QMAX: tl.constexpr, PER_TENSOR: tl.constexpr,
             BLOCK: tl.constexpr, MBLOCK: tl.constexpr, F64: tl.constexpr):
    """Codes XQ[m, :], scale SX[m] (NaN for a row whose codes hold a NaN) and code sum RS[m] of
    row m, quantised symmetrically to [-QMAX, QMAX]."""
    row = tl.program_id(0).to(tl.int64)
    base = X + row * K
    if PER_TENSOR:
        ms = tl.arange(0, MBLOCK)[None, :]
        g = _qg_ct(tl.full([1, MBLOCK], 0, tl.int32), F64)
        gn = tl.full([1, MBLOCK], 0, tl.int32)
        for m0 in range(0, M, MBLOCK):
            v = _qg_ct(tl.load(AMAX + m0 + ms, mask=(m0 + ms) < M, other=0), F64)
            gn = gn | (v != v).to(tl.int32)
            g = tl.where(v > g, v, g)
        amax = tl.reduce(g, 1, tl.standard._elementwise_max, keep_dims=True)
        nan = tl.reduce(gn, 1, tl.standard._elementwise_max, keep_dims=True)
    else:
        amax, nan = _qg_row_absmax(base, K, BLOCK, F64)
    one = _qg_ct(tl.full([1, 1], 1, tl.int32), F64)
    qmax = _qg_ct(tl.full([1, 1], QMAX, tl.int32), F64)
    s = _qg_div(amax, qmax, F64)
    s = tl.where((nan == 0) & (s > 0), s, one)
    ks = tl.arange(0, BLOCK)[None, :]
    total = tl.full([1, BLOCK], 0, tl.int32)
    bad = tl.full([1, BLOCK], 0, tl.int32)
    for k0 in range(0, K, BLOCK):
        mk = (k0 + ks) < K
        v = _sf_round(_qg_div(_qg_ct(tl.load(base + k0 + ks, mask=mk, other=0), F64), s, F64))
        bad = bad | ((v != v) & mk).to(tl.int32)
        v = tl.where(v != v, 0.0, tl.where(v < -qmax, -qmax, tl.where(v > qmax, qmax, v)))
        c = v.to(tl.int32)
        total += tl.where(mk, c, 0)
        tl.store(XQ + row * K + k0 + ks, c.to(tl.int8), mask=mk)
    bad = tl.reduce(bad, 1, tl.standard._elementwise_max, keep_dims=True)
    total = tl.reduce(total, 1, tl.standard._sum_combine, keep_dims=True)
    zero = tl.full([1, 1], 0, tl.int64)
    tl.store(SX + row + zero, tl.where(bad > 0, float("nan"), s))
    tl.store(RS + row + zero, total)


@triton.jit
def sf_kernel(X, W, S, Z, B, Y, SX, RSX, M, N, K,
              HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, DYN: tl.constexpr,
              HAS_RS: tl.constexpr, F64: tl.constexpr, ROUND_BF16: tl.constexpr,
              EVEN_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              GROUP_M: tl.constexpr):
    rm, rn, rmc, rnc = _sf_gemm_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rk = tl.arange(0, BK)
    mm = rm < M
    mn = rn < N
    xp = X + rmc[:, None] * K + rk[None, :]
    wp = W + rnc[:, None] * K + rk[None, :]
    acc = tl.full([BM, BN], 0, tl.int32)
    rs = tl.full([BM], 0, tl.int32)
    for k0 in range(0, K, BK):
        if EVEN_K:
            a = tl.load(xp)
            b = tl.load(wp)
        else:
            mk = (k0 + rk)[None, :] < K
            a = tl.load(xp, mask=mk, other=0)
            b = tl.load(wp, mask=mk, other=0)
        a = a.to(tl.int8)
        acc = tl.dot(a, tl.trans(b.to(tl.int8)), acc, out_dtype=tl.int32)
        if HAS_ZERO:
            if not HAS_RS:
                rs += tl.reduce(a.to(tl.int32), 1, tl.standard._sum_combine)
        xp += BK
        wp += BK
    s = _qg_ct(tl.load(S + rnc), F64)
    if HAS_ZERO:
        if HAS_RS:
            rs = tl.load(RSX + rmc)
        z = _qg_ct(tl.load(Z + rnc), F64)
        zi = tl.floor(z + 0.5)
        d = acc - zi.to(tl.int32)[None, :] * rs[:, None]
        y = _qg_ct(d, F64) * s[None, :] - ((z - zi) * s)[None, :] * _qg_ct(rs, F64)[:, None]
    else:
        y = _qg_ct(acc, F64) * s[None, :]
    if DYN:
        y = y * _qg_ct(tl.load(SX + rmc), F64)[:, None]
    if HAS_BIAS:
        y = y + _qg_ct(tl.load(B + rnc), F64)[None, :]
    yp = Y + rm.to(tl.int64)[:, None] * N + rn[None, :]
    if ROUND_BF16:
        # the interpreter's f32 -> bf16 conversion truncates
        tl.store(yp, _sf_round_bf16(y.to(tl.float32)).to(tl.bfloat16), mask=mm[:, None] & mn[None, :])
    else:
        tl.store(yp, y, mask=mm[:, None] & mn[None, :])
'''

SOURCE = HEADER + PRELUDE + GEMM_TILE + KERNELS
REASON = ("group-wise weights, u8 / i16 / float8 / fp4 weights, u8 / i16 / i32 codes x, float x "
          "without dynamic activation quantisation (weight-only), abits > 8 and K > 65792 run the "
          "torch reference on the device (the Triton int8 GEMM, triton_qgemm.py, takes group 0 "
          "i8/i4/u4 weights with i8/i4/u4 codes x or float x quantised per token / per tensor)")


def qlinear_supported(n: Node) -> bool:
    """Whether the Triton template runs this ``qlinear``: group 0, i8/i4/u4 weights of static
    shape with 1 <= K <= MAX_K, float scale / zero point / bias, and either i8/i4/u4 codes x
    (act none) or float x with act per_token / per_tensor and abits <= 8."""
    if n.op != "qlinear" or n.attrs["group"] != 0:
        return False
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    if x is None or w is None or scale is None or w.dtype.name not in W_INT:
        return False
    nn, k = w.type.shape
    if not isinstance(nn, int) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        return False
    act = n.attrs["act"]
    if x.dtype.name in X_INT:
        ok_x = act == "none"
    else:
        # f64 activations stay on the reference path: on the H200 the f64 quantise step gave
        # codes different from the reference (an f64 rounding difference not yet found)
        ok_x = x.dtype.name in REAL - {"f64"} and act != "none" and n.attrs["abits"] <= 8
    if zero is not None and zero.dtype.name not in W_INT | REAL:
        return False
    return ok_x and n.outputs[0].dtype.name in REAL and scale.dtype.name in REAL and \
        (bias is None or bias.dtype.name in REAL)


@dataclass(frozen=True)
class QGemmSpec:
    """What a launch needs besides the tensors: ``slots`` are the positions of x, w, scale,
    zero (-1: none), bias (-1: none) and y in the kernel's tensor list (inputs then outputs)."""

    slots: tuple[int, int, int, int, int, int]
    act: str = "none"
    abits: int = 8
    f64: bool = False
    out_bf16: bool = False


def spec_of(k: Kernel) -> QGemmSpec:
    """The launch spec of a ``template`` kernel holding one supported ``qlinear``."""
    n = k.nodes[0]
    index = {id(v): i for i, v in enumerate(k.inputs)}
    ins = list(n.inputs) + [None] * (5 - len(n.inputs))
    slots = tuple(index[id(v)] if v is not None else -1 for v in ins) + (len(k.inputs),)
    x, y = n.inputs[0], n.outputs[0]
    f64 = y.dtype.name == "f64" or x.dtype.name == "f64"
    return QGemmSpec(slots, n.attrs["act"], n.attrs["abits"], f64, y.dtype.name == "bf16")  # type: ignore[arg-type]


def render_qlinear(k: Kernel) -> tuple[str, list[sympy.Expr], QGemmSpec]:
    """(module source, runtime integers [M, N, K], launch spec) of a template kernel. The
    source is the same for every qlinear: the variants are constexprs chosen at launch."""
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    m: sympy.Expr = sympy.Integer(1)
    for d in x.type.shape[:-1]:
        m = m * sympy.sympify(d)
    N, K = w.type.shape
    return SOURCE, [sympy.expand(m), sympy.Integer(N), sympy.Integer(K)], spec_of(k)


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def gemm_config(M: int, N: int, K: int) -> dict[str, int]:
    """Fixed blocks by M (no autotuning): decode-sized M in 16-row tiles over narrow column
    blocks (the weights stream once, many programs keep the memory busy), medium M in 64 x 128
    tiles, large M in 128 x 128 x 128 tiles with 8 warps. BK and BN shrink to small K and N."""
    if M <= 16:
        cfg = dict(BM=16, BN=64, BK=128, num_warps=4, num_stages=4)
    elif M <= 256:
        cfg = dict(BM=64, BN=128, BK=128, num_warps=4, num_stages=4)
    else:
        cfg = dict(BM=128, BN=128, BK=128, num_warps=8, num_stages=3)
    cfg["BK"] = min(cfg["BK"], max(32, _pow2(K)))
    cfg["BN"] = min(cfg["BN"], max(32, _pow2(N)))
    cfg["GROUP_M"] = 8
    return cfg


def quant_config(K: int, interpret: bool) -> dict[str, int]:
    """Chunk of a row per pass of the quantising kernels (whole rows in the interpreter)."""
    block = min(_pow2(K), 1 << 16 if interpret else 2048)
    return dict(BLOCK=max(block, 16), num_warps=1 if interpret else (8 if block >= 2048 else 4))


Launch = Callable[[Sequence[torch.Tensor]], None]


def make_launch(mod, spec: QGemmSpec, M: int, N: int, K: int, interpret: bool,
                config: dict[str, int] | None = None) -> Launch:
    """The launch of the GEMM (after the quantising kernels for a dynamic ``act``) over the
    tensors ``ts`` (slots of ``spec``) of one binding of M, N, K; ``config`` overrides
    :func:`gemm_config` (tests: several programs and K steps on tiny shapes)."""
    if M <= 0 or N <= 0:
        return lambda ts: None
    cfg = dict(config or gemm_config(M, N, K))
    cfg["BK"] = max(cfg["BK"], 32)  # tl.dot on int8 needs K tiles of at least 32 on GPUs
    cfg.setdefault("GROUP_M", 8)
    grid = (-(-M // cfg["BM"]) * -(-N // cfg["BN"]),)
    gemm = mod.sf_kernel[grid]
    dyn = spec.act != "none"
    xi, wi, si, zi, bi, yi = spec.slots
    flags = dict(HAS_ZERO=zi >= 0, HAS_BIAS=bi >= 0, DYN=dyn, HAS_RS=dyn, F64=spec.f64,
                 ROUND_BF16=spec.out_bf16 and interpret, EVEN_K=K % cfg["BK"] == 0)
    qcfg = quant_config(K, interpret)
    qmax = (1 << (spec.abits - 1)) - 1
    per_tensor = spec.act == "per_tensor"
    absmax = mod.sf_absmax[(M,)]
    quant = mod.sf_quant[(M,)]
    ct = torch.float64 if spec.f64 else torch.float32

    def launch(ts: Sequence[torch.Tensor]) -> None:
        x, w, s, y = ts[xi], ts[wi], ts[si], ts[yi]
        z = ts[zi] if zi >= 0 else s
        b = ts[bi] if bi >= 0 else s
        if dyn:
            dev = x.device
            xq = torch.empty((M, K), dtype=torch.int8, device=dev)
            sx = torch.empty(M, dtype=ct, device=dev)
            rs = torch.empty(M, dtype=torch.int32, device=dev)
            amax = sx
            if per_tensor:
                amax = torch.empty(M, dtype=ct, device=dev)
                absmax(x, amax, M, K, F64=spec.f64, **qcfg)
            quant(x, amax, xq, sx, rs, M, K, QMAX=qmax, PER_TENSOR=per_tensor,
                  MBLOCK=min(_pow2(M), qcfg["BLOCK"]), F64=spec.f64, **qcfg)
            gemm(xq, w, s, z, b, y, sx, rs, M, N, K, **flags, **cfg)
        else:
            gemm(x, w, s, z, b, y, s, s, M, N, K, **flags, **cfg)

    if not interpret:
        return launch
    import numpy as np

    def interpreted(ts: Sequence[torch.Tensor]) -> None:
        with np.errstate(all="ignore"):   # masked-off lanes divide by fill values
            launch(ts)
    return interpreted


def qgemm(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
          w_zero: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
          out_dtype: torch.dtype = torch.float32, act: str = "none", abits: int = 8,
          config: dict[str, int] | None = None) -> torch.Tensor:
    """``qlinear`` of x [M, K] with w [N, K] (group 0) through the Triton kernels, without a
    graph: integer codes x (act none) or float x quantised per token / per tensor. The output
    dtype is ``out_dtype`` for integer x and x's dtype for float x. Runs compiled on CUDA
    tensors and interpreted on CPU tensors (``TRITON_INTERPRET=1`` must then be set before
    triton is imported). For timing, :func:`qgemm_launch` prepares the launch once."""
    launch, y = qgemm_launch(x, w, w_scale, w_zero, bias, out_dtype=out_dtype, act=act,
                             abits=abits, config=config)
    launch([x, w, w_scale, w_zero if w_zero is not None else w_scale,
            bias if bias is not None else w_scale, y])
    return y


def qgemm_launch(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                 w_zero: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
                 out_dtype: torch.dtype = torch.float32, act: str = "none", abits: int = 8,
                 config: dict[str, int] | None = None) -> tuple[Launch, torch.Tensor]:
    """(launch, output buffer) of :func:`qgemm`; ``launch([x, w, w_scale, w_zero or w_scale,
    bias or w_scale, y])`` reruns it (tensor list in that order)."""
    from ..runtime.triton_exec import load_module
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"qgemm needs x [M, K] and w [N, K], got {tuple(x.shape)} and {tuple(w.shape)}")
    interpret = x.device.type == "cpu"
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    M, K = x.shape
    N = w.shape[0]
    out = x.dtype if x.is_floating_point() else out_dtype
    spec = QGemmSpec((0, 1, 2, 3 if w_zero is not None else -1, 4 if bias is not None else -1, 5),
                     act, abits, out == torch.float64 or x.dtype == torch.float64,
                     out == torch.bfloat16)
    y = torch.empty((M, N), dtype=out, device=x.device)
    mod = load_module(SOURCE, interpret)
    return make_launch(mod, spec, M, N, K, interpret, config), y
