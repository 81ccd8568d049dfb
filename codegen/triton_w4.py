"""W4A16 kernels of weight-only group-wise 4-bit ``qlinear`` for the Triton target (issue 8).

Takes ``qlinear(x, w, w_scale, w_zero?, bias?)`` with act "none", float x (f16 / bf16 / f32),
constant u4 / i4 codes w [N, K] (int3 codes are u4 0..7), group 0 or a power of two >= 16
(a short last group included), integer zero points of w's dtype or none. The constants are
packed once when the kernels are loaded (``runtime/w4pack_gpu.py`` documents the layout: two
codes per byte, the low nibbles of a 2H-code block are its first H codes, the high nibbles its
last H; scales f32 and effective zeros uint8, both [groups, N]).

Two kernels, chosen by M (rows of x):

- ``w4_gemv`` (M <= 4): a program owns BN output channels and a K slice; per block it loads a
  [BN, H] byte tile (the weights stream once), dequantises both nibbles in registers to f32
  ``(u - zeff) * s`` — exactly ``dequant_weight``'s Wd — and accumulates x * Wd into a
  [BM, BN, H] f32 accumulator, reduced once at the end.
- ``w4_gemm`` (M > 4): tiles BM x BN; per block the nibbles become ``u - zeff`` in x's dtype
  (small integers: exact), ``tl.dot`` with the matching halves of x (f32 accumulate; f32 x in
  IEEE precision), and the block's partial is multiplied by the group scale (H divides the
  group, so each half has one scale per channel).

Nibbles become floats without an int->float conversion: ``u | 0x4B000000`` is 2^23 + u as f32
(``0x6400``: 1024 + u as f16, ``0x4300``: 128 + u as bf16), and subtracting the same magic plus
zeff is exact. (The interpreter mishandles a bitcast to bf16, so there bf16 goes through the
f32 form; the value is the same.)

Split-K: when the (M, N) tiles are too few to fill the GPU, ``SPLIT`` programs share a tile's
K range and write f32 partials to a workspace [SPLIT, M, N]; ``w4_reduce`` adds them in split
order, adds the bias and rounds. No atomics: the result is deterministic. Without split the
main kernel's epilogue does that. Blocks are fixed per M bucket (:func:`w4_config`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import sympy
import torch

from ..ir.graph import Node
from ..runtime.w4pack_gpu import W4Packed, pack_w4, single_group
from .schedule import Kernel
from .triton_expr import PRELUDE

X_REAL = frozenset({"f32", "f16", "bf16"})
KIND = {"f32": 0, "f16": 1, "bf16": 2}
GEMV_MAX_M = 4
SMS = 132                           # H200 multiprocessors: the split-K target

HEADER = "# scalefold: Triton W4A16 kernels (weight-only 4-bit qlinear)\nimport triton\nimport triton.language as tl\n"

KERNELS = r'''

@triton.jit
def _w4_deq(u, KIND: tl.constexpr, FAST16: tl.constexpr):
    """2^23 + u (f32), 1024 + u (f16) or 128 + u (bf16) of codes u in 0..15, by bit pattern."""
    if KIND == 1:
        r = (u.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)
    elif KIND == 2 and FAST16:
        r = (u.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)
    else:
        r = (u.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True)
    return r


@triton.jit
def _w4_zoff(Z, g, N, rnc, HAS_ZERO: tl.constexpr, ZC: tl.constexpr, KIND: tl.constexpr,
             FAST16: tl.constexpr):
    """The magic of _w4_deq plus the effective zero of group g, per channel (f32)."""
    if KIND == 1:
        magic = 1024.0
    elif KIND == 2 and FAST16:
        magic = 128.0
    else:
        magic = 8388608.0
    if HAS_ZERO:
        z = tl.load(Z + g * N + rnc).to(tl.float32) + magic
    else:
        z = tl.zeros_like(rnc).to(tl.float32) + (ZC + magic)
    return z


@triton.jit
def _w4_op(v, X, IEEE: tl.constexpr):
    """A dot operand: f32 for IEEE dots (f32 x; bf16 x under the interpreter, whose bf16 dot
    is wrong), else x's dtype (the dequantised codes are small integers: exact)."""
    if IEEE:
        r = v.to(tl.float32)
    else:
        r = v.to(X.dtype.element_ty)
    return r


@triton.jit
def _w4_dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        r = tl.dot(a, b, acc, input_precision="ieee")
    else:
        r = tl.dot(a, b, acc)
    return r


@triton.jit
def _w4_store(Y, B, y, rm, rn, M, N, HAS_BIAS: tl.constexpr, ROUND_BF16: tl.constexpr):
    mm = rm < M
    mn = rn < N
    if HAS_BIAS:
        y = y + tl.load(B + rn, mask=mn, other=0).to(tl.float32)[None, :]
    yp = Y + rm.to(tl.int64)[:, None] * N + rn[None, :]
    if ROUND_BF16:
        # the interpreter's f32 -> bf16 conversion truncates
        y = _sf_round_bf16(y)
    tl.store(yp, y.to(Y.dtype.element_ty), mask=mm[:, None] & mn[None, :])


@triton.jit
def w4_gemv(X, P, S, Z, B, Y, WS, M, N, K, KP2, KB_PER,
            HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
            SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, EVEN_K: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, H: tl.constexpr, GE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    rnc = tl.where(rn < N, rn, 0).to(tl.int64)
    rm = tl.arange(0, BM)
    mm = rm < M
    j = tl.arange(0, H)
    wp = P + rnc[:, None] * KP2 + j[None, :]
    xp = X + rm.to(tl.int64)[:, None] * K + j[None, :]
    if BM == 1:
        acc2 = tl.full([BN, H], 0, tl.float32)
        acc = tl.full([1, 1, 1], 0, tl.float32)
    else:
        acc2 = tl.full([1, 1], 0, tl.float32)
        acc = tl.full([BM, BN, H], 0, tl.float32)
    kb0 = pid_k * KB_PER
    kb1 = tl.minimum(kb0 + KB_PER, KP2 // H)
    for kb in range(kb0, kb1):
        b = tl.load(wp + kb * H)
        k_lo = kb * 2 * H
        s_lo = tl.load(S + (k_lo // GE) * N + rnc)
        s_hi = tl.load(S + ((k_lo + H) // GE) * N + rnc)
        z_lo = _w4_zoff(Z, k_lo // GE, N, rnc, HAS_ZERO, ZC, 0, False)
        z_hi = _w4_zoff(Z, (k_lo + H) // GE, N, rnc, HAS_ZERO, ZC, 0, False)
        w_lo = (_w4_deq(b & 15, 0, False) - z_lo[:, None]) * s_lo[:, None]
        w_hi = (_w4_deq(b >> 4, 0, False) - z_hi[:, None]) * s_hi[:, None]
        if EVEN_K:
            x_lo = tl.load(xp + k_lo, mask=mm[:, None], other=0).to(tl.float32)
            x_hi = tl.load(xp + k_lo + H, mask=mm[:, None], other=0).to(tl.float32)
        else:
            x_lo = tl.load(xp + k_lo, mask=mm[:, None] & ((k_lo + j) < K)[None, :],
                           other=0).to(tl.float32)
            x_hi = tl.load(xp + k_lo + H, mask=mm[:, None] & ((k_lo + H + j) < K)[None, :],
                           other=0).to(tl.float32)
        if BM == 1:
            # one row: a 2-D [BN, H] accumulator (the 3-D layout costs registers and shuffles)
            acc2 += x_lo * w_lo + x_hi * w_hi
        else:
            acc += x_lo[:, None, :] * w_lo[None, :, :] + x_hi[:, None, :] * w_hi[None, :, :]
    if BM == 1:
        acc = acc2[None, :, :]
    y = tl.reduce(acc, 2, tl.standard._sum_combine)
    if SPLIT == 1:
        _w4_store(Y, B, y, rm, rn, M, N, HAS_BIAS, ROUND_BF16)
    else:
        wsp = WS + (pid_k * M + rm.to(tl.int64))[:, None] * N + rn[None, :]
        tl.store(wsp, y, mask=mm[:, None] & (rn < N)[None, :])


@triton.jit
def w4_gemm(X, P, S, Z, B, Y, WS, M, N, K, KP2, KB_PER,
            HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
            SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, EVEN_K: tl.constexpr,
            KIND: tl.constexpr, FAST16: tl.constexpr, IEEE: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, H: tl.constexpr, GE: tl.constexpr,
            GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = (M + BM - 1) // BM
    num_n = (N + BN - 1) // BN
    # GROUP_M row blocks walk the column blocks together: their weight tiles are shared in L2
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    # rows / channels past the end read row 0 (never stored)
    rmc = tl.where(rm < M, rm, 0).to(tl.int64)
    rnc = tl.where(rn < N, rn, 0).to(tl.int64)
    j = tl.arange(0, H)
    wp = P + rnc[None, :] * KP2 + j[:, None]            # [H, BN] byte tile
    xp = X + rmc[:, None] * K + j[None, :]              # [BM, H]
    acc = tl.full([BM, BN], 0, tl.float32)
    kb0 = pid_k * KB_PER
    kb1 = tl.minimum(kb0 + KB_PER, KP2 // H)
    for kb in range(kb0, kb1):
        b = tl.load(wp + kb * H)
        k_lo = kb * 2 * H
        g_lo = k_lo // GE
        w_lo = _w4_deq(b & 15, KIND, FAST16)
        w_hi = _w4_deq(b >> 4, KIND, FAST16)
        z_lo = _w4_zoff(Z, g_lo, N, rnc, HAS_ZERO, ZC, KIND, FAST16).to(w_lo.dtype)
        w_lo = _w4_op(w_lo - z_lo[None, :], X, IEEE)
        if EVEN_K:
            x_lo = tl.load(xp + k_lo)
            x_hi = tl.load(xp + k_lo + H)
        else:
            x_lo = tl.load(xp + k_lo, mask=((k_lo + j) < K)[None, :], other=0)
            x_hi = tl.load(xp + k_lo + H, mask=((k_lo + H + j) < K)[None, :], other=0)
        x_lo = _w4_op(x_lo, X, IEEE)
        x_hi = _w4_op(x_hi, X, IEEE)
        s_lo = tl.load(S + g_lo * N + rnc)
        if GE >= 2 * H:
            # both halves in one group: one partial, one scale
            w_hi = _w4_op(w_hi - z_lo[None, :], X, IEEE)
            p = _w4_dot(x_hi, w_hi, _w4_dot(x_lo, w_lo, tl.zeros([BM, BN], tl.float32), IEEE), IEEE)
            acc += p * s_lo[None, :]
        else:
            g_hi = (k_lo + H) // GE
            z_hi = _w4_zoff(Z, g_hi, N, rnc, HAS_ZERO, ZC, KIND, FAST16).to(w_hi.dtype)
            w_hi = _w4_op(w_hi - z_hi[None, :], X, IEEE)
            s_hi = tl.load(S + g_hi * N + rnc)
            zero = tl.zeros([BM, BN], tl.float32)
            acc += _w4_dot(x_lo, w_lo, zero, IEEE) * s_lo[None, :] + \
                _w4_dot(x_hi, w_hi, zero, IEEE) * s_hi[None, :]
    if SPLIT == 1:
        _w4_store(Y, B, acc, rm, rn, M, N, HAS_BIAS, ROUND_BF16)
    else:
        wsp = WS + (pid_k * M + rm.to(tl.int64))[:, None] * N + rn[None, :]
        tl.store(wsp, acc, mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit
def w4_reduce(WS, B, Y, M, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
              ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr):
    """Y = sum over the splits in order of WS[s] (+ bias), rounded once."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    total = M * N
    m = offs < total
    y = tl.load(WS + offs, mask=m, other=0)
    for s in range(1, SPLIT):
        y += tl.load(WS + s * total + offs, mask=m, other=0)
    if HAS_BIAS:
        y += tl.load(B + offs % N, mask=m, other=0).to(tl.float32)
    if ROUND_BF16:
        y = _sf_round_bf16(y)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=m)
'''

SOURCE = HEADER + PRELUDE + KERNELS
REASON = ("weight-only W4 takes u4/i4 constant codes, group 0 or a power of two >= 16 and integer "
          "zero points (triton_w4.py); float zero points, other groups, f64 x run the reference")


def w4_supported(n: Node) -> bool:
    """Whether the W4 kernels run this ``qlinear``: act none, f16/bf16/f32 x, constant u4/i4 codes
    of static shape, f32 scales, no zero point or one of w's dtype, float bias, group 0 / one
    group / a power of two >= 16."""
    if n.op != "qlinear" or n.attrs["act"] != "none":
        return False
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    if x is None or w is None or scale is None or x.dtype.name not in X_REAL:
        return False
    if w.dtype.name not in ("u4", "i4") or not w.is_const or not scale.is_const:
        return False
    if scale.dtype.name != "f32" or (zero is not None and (zero.dtype is not w.dtype or not zero.is_const)):
        return False
    if bias is not None and bias.dtype.name not in X_REAL:
        return False
    nn, k = w.type.shape
    if not isinstance(nn, int) or not isinstance(k, int) or nn < 1 or k < 1:
        return False
    g = n.attrs["group"]
    return single_group(k, g) or (g >= 16 and g & (g - 1) == 0)


@dataclass(frozen=True, eq=False)
class W4Spec:
    """What a launch needs besides the tensors: slots of x, bias (-1: none) and y in the
    kernel's tensor list, and the qlinear's constants (packed when the kernel is loaded)."""

    slots: tuple[int, int, int]
    xkind: str
    w: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    group: int
    signed: bool

    def pack(self, device: torch.device | str) -> W4Packed:
        """The packed constants on ``device``."""
        return pack_w4(self.w, self.scale, self.zero, self.group, self.signed).to(device)


def render_w4(k: Kernel) -> tuple[str, list[sympy.Expr], W4Spec]:
    """(module source, runtime integers [M, N, K], launch spec) of a W4 template kernel. The
    source is the same for every qlinear: the variants are constexprs chosen at launch."""
    n = k.nodes[0]
    x, w, s = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    index = {id(v): i for i, v in enumerate(k.inputs)}
    slots = (index[id(x)], index[id(bias)] if bias is not None else -1, len(k.inputs))
    m: sympy.Expr = sympy.Integer(1)
    for d in x.type.shape[:-1]:
        m = m * sympy.sympify(d)
    N, K = w.type.shape
    spec = W4Spec(slots, x.dtype.name, w.const, s.const,  # type: ignore[arg-type]
                  zero.const if zero is not None else None, n.attrs["group"], w.dtype.name == "i4")
    return SOURCE, [sympy.expand(m), sympy.Integer(N), sympy.Integer(K)], spec


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def w4_config(M: int, N: int, K: int, half: int, interpret: bool = False) -> dict[str, int]:
    """Fixed blocks by M bucket, then the split: M <= 4 runs the GEMV (BN 64 / 32 / 16 for
    BM 1 / 2 / 4), larger M the tl.dot GEMM (BM 16 / 32 / 64 / 128 up to M 16 / 32 / 128 /
    beyond; BN 64, or 128 from M 65). For M <= 64, SPLIT divides K's blocks so that about 16
    (GEMV) / 8 (GEMM) programs per SM run (never on the interpreter unless asked)."""
    if M <= GEMV_MAX_M:
        bm = _pow2(M)
        cfg = dict(GEMV=1, BM=bm, BN={1: 64, 2: 32, 4: 16}[bm], num_warps=4, num_stages=4)
    elif M <= 16:
        cfg = dict(GEMV=0, BM=16, BN=64, num_warps=4, num_stages=4)
    elif M <= 32:
        cfg = dict(GEMV=0, BM=32, BN=64, num_warps=4, num_stages=4)
    elif M <= 64:
        cfg = dict(GEMV=0, BM=64, BN=64, num_warps=4, num_stages=4)
    elif M <= 128:
        cfg = dict(GEMV=0, BM=64, BN=128, num_warps=4, num_stages=4)
    else:
        cfg = dict(GEMV=0, BM=128, BN=128, num_warps=8, num_stages=3)
    cfg["BN"] = min(cfg["BN"], max(16, _pow2(N)))
    tiles = -(-M // cfg["BM"]) * -(-N // cfg["BN"])
    nblk = -(-K // (2 * half))
    # split only decode-sized M whose tiles are too few to keep enough loads in flight (the
    # loop's loads are not pipelined: many resident programs hide their latency); larger M is
    # compute-bound and its f32 workspace would cost as many bytes as the weights
    target = (16 if cfg["GEMV"] else 8) * SMS
    few = M <= 64 and tiles < target
    cfg["SPLIT"] = max(1, min(nblk, target // tiles)) if few and not interpret else 1
    return cfg


Launch = Callable[[Sequence[torch.Tensor]], None]


def make_launch(mod, spec: W4Spec, packed: W4Packed, M: int, N: int, K: int, interpret: bool,
                config: dict[str, int] | None = None) -> Launch:
    """The launch of the W4 kernels over the tensors ``ts`` (slots of ``spec``; the weight
    tensors in ``ts`` are ignored for ``packed``) for one binding of M. ``config`` overrides
    :func:`w4_config` (tests: several programs, splits and K blocks on tiny shapes)."""
    if M <= 0 or N <= 0:
        return lambda ts: None
    h = packed.half
    cfg = dict(config or w4_config(M, N, K, h, interpret))
    gemv = bool(cfg.pop("GEMV", M <= GEMV_MAX_M)) and cfg["BM"] >= M
    nblk = packed.kp // (2 * h)
    split = max(1, min(int(cfg.pop("SPLIT", 1)), nblk))
    kb_per = -(-nblk // split)
    split = -(-nblk // kb_per)                        # no empty splits
    xi, bi, yi = spec.slots
    zeros = packed.zeros if packed.zeros is not None else packed.scales
    kind = {"f32": 0, "f16": 1, "bf16": 2}[spec.xkind]
    round_bf16 = spec.xkind == "bf16" and interpret
    flags = dict(HAS_ZERO=packed.zeros is not None, ZC=packed.zc, HAS_BIAS=bi >= 0,
                 SPLIT=split, ROUND_BF16=round_bf16, EVEN_K=K == packed.kp, H=h, GE=packed.ge)
    if gemv:
        grid = (-(-N // cfg["BN"]), split)
        kern = mod.w4_gemv[grid]
    else:
        cfg.setdefault("GROUP_M", 8)
        flags.update(KIND=kind, FAST16=not interpret, IEEE=kind == 0 or (kind == 2 and interpret))
        grid = (-(-M // cfg["BM"]) * -(-N // cfg["BN"]), split)
        kern = mod.w4_gemm[grid]
    ws = None
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=packed.scales.device)
        rblock = 1024
        red = mod.w4_reduce[(-(-(M * N) // rblock),)]
    P, S = packed.qweight, packed.scales
    kp2 = packed.kp // 2

    def launch(ts: Sequence[torch.Tensor]) -> None:
        x, y = ts[xi], ts[yi]
        b = ts[bi] if bi >= 0 else S
        kern(x, P, S, zeros, b, y, ws if ws is not None else S, M, N, K, kp2, kb_per,
             **flags, **cfg)
        if ws is not None:
            red(ws, b, y, M, N, SPLIT=split, HAS_BIAS=bi >= 0, ROUND_BF16=round_bf16,
                BLOCK=rblock, num_warps=4)

    if not interpret:
        return launch
    import numpy as np

    def interpreted(ts: Sequence[torch.Tensor]) -> None:
        with np.errstate(all="ignore"):
            launch(ts)
    return interpreted


def w4_launch(x: torch.Tensor, packed: W4Packed, bias: torch.Tensor | None = None,
              config: dict[str, int] | None = None) -> tuple[Launch, torch.Tensor]:
    """(launch, output buffer) of x [M, K] @ Wd^T (+ bias) through the W4 kernels, without a
    graph; ``launch([x, bias or x, y])`` reruns it. CUDA tensors run compiled, CPU tensors
    under the interpreter (``TRITON_INTERPRET=1`` must be set before triton is imported)."""
    from ..runtime.triton_exec import load_module
    interpret = x.device.type == "cpu"
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    M, K = x.shape
    if K != packed.k:
        raise ValueError(f"x has K={K}, the packing {packed.k}")
    spec = W4Spec((0, 1 if bias is not None else -1, 2), {torch.float32: "f32", torch.float16: "f16",
                  torch.bfloat16: "bf16"}[x.dtype], packed.qweight, packed.scales, packed.zeros,
                  packed.ge, packed.signed)
    y = torch.empty((M, packed.n), dtype=x.dtype, device=x.device)
    mod = load_module(SOURCE, interpret)
    return make_launch(mod, spec, packed, M, packed.n, K, interpret, config), y


def w4_linear(x: torch.Tensor, packed: W4Packed, bias: torch.Tensor | None = None,
              config: dict[str, int] | None = None) -> torch.Tensor:
    """y = x @ Wd^T + bias for x [M, K] with the packed W4 weights (see :func:`w4_launch`)."""
    launch, y = w4_launch(x, packed, bias, config)
    launch([x, bias if bias is not None else x, y])
    return y
