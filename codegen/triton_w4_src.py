"""Triton source text of the W4A16 kernels; ``codegen/triton_w4.py`` documents them and
renders / launches them. Kept apart because the kernel text is long and changes for different
reasons than the launch logic."""
from __future__ import annotations

from .triton_expr import GEMM_TILE, PRELUDE
from .triton_w4_dq import DQ_KERNEL
from .triton_w4_mmag import MMAG_KERNEL
from .triton_w4_ptx import H2_KERNEL, NIB_KERNEL

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
        r = (u | 0x4B000000).to(tl.float32, bitcast=True)
    return r


@triton.jit
def _w4_zoff(Z, g, N, rnc, HAS_ZERO: tl.constexpr, ZC: tl.constexpr, KIND: tl.constexpr,
             FAST16: tl.constexpr, POW: tl.constexpr):
    """magic + zeff * 16^POW of group g per channel (f32), magic that of _w4_deq."""
    if KIND == 1:
        magic = 1024.0
    elif KIND == 2 and FAST16:
        magic = 128.0
    else:
        magic = 8388608.0
    if HAS_ZERO:
        z = tl.load(Z + g * N + rnc).to(tl.float32) * (1 << (4 * POW)) + magic
    else:
        # a load that never reads (its mask is false; rnc >= 0) rather than a constant: the
        # constant is hoisted out of the K loop, and Triton then keeps SWAP 3's nibble pairs in
        # a blocked layout and converts each through shared memory (M = 16 on an H200: 36
        # instead of 29 us)
        z = tl.load(Z + g * N + rnc, mask=rnc < 0, other=ZC).to(tl.float32) * (1 << (4 * POW)) + magic
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
def _w4_dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        r = tl.dot(a, b, input_precision="ieee")
    else:
        r = tl.dot(a, b)
    return r


@triton.jit
def _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, tile, pid_k, SPLIT: tl.constexpr,
               HAS_BIAS: tl.constexpr, ROUND_BF16: tl.constexpr):
    """Store y [BM, BN] (+ bias, rounded once); with SPLIT > 1 store the f32 partial, and the
    program that finishes its tile last sums the partials in split order (deterministic)."""
    mm = rm < M
    mn = rn < N
    msk = mm[:, None] & mn[None, :]
    if SPLIT > 1:
        off = rm.to(tl.int64)[:, None] * N + rn[None, :]
        tl.store(WS + pid_k * M * N + off, y, mask=msk)
        # every thread's partial is stored before the release; the acquire orders the reads
        tl.debug_barrier()
        done = tl.atomic_add(CNT + tile, 1, sem="acq_rel", scope="gpu")
        if done == SPLIT - 1:
            y = tl.load(WS + off, mask=msk, other=0, cache_modifier=".cg")
            for s in range(1, SPLIT):
                y += tl.load(WS + s * M * N + off, mask=msk, other=0, cache_modifier=".cg")
            if HAS_BIAS:
                y = y + tl.load(B + rn, mask=mn, other=0).to(tl.float32)[None, :]
            if ROUND_BF16:
                y = _sf_round_bf16(y)      # the interpreter's f32 -> bf16 conversion truncates
            tl.store(Y + rm.to(tl.int64)[:, None] * N + rn[None, :], y.to(Y.dtype.element_ty),
                     mask=msk)
            tl.atomic_xchg(CNT + tile, 0)  # ready for the next launch
    else:
        if HAS_BIAS:
            y = y + tl.load(B + rn, mask=mn, other=0).to(tl.float32)[None, :]
        if ROUND_BF16:
            y = _sf_round_bf16(y)
        tl.store(Y + rm.to(tl.int64)[:, None] * N + rn[None, :], y.to(Y.dtype.element_ty),
                 mask=msk)


@triton.jit
def _w4_nib(w, wh, i: tl.constexpr):
    """2^23 + u * 16^p as f32 bits of nibble i of words w (wh = w >> 20), p = i for i < 5
    (in place: bits 0..19 lie in the mantissa), else i - 5 of wh."""
    if i < 5:
        r = ((w & (15 << (4 * i))) | 0x4B000000).to(tl.float32, bitcast=True)
    else:
        r = ((wh & (15 << (4 * (i - 5)))) | 0x4B000000).to(tl.float32, bitcast=True)
    return r


@triton.jit
def w4_gemv(X, P, S, Z, B, Y, WS, CNT, M, N, K, KW, NB_PER,
            HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
            SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, EVEN_K: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, J: tl.constexpr, GE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    rnc = tl.where(rn < N, rn, 0).to(tl.int64)
    rm = tl.arange(0, BM)
    mm = rm < M
    j = tl.arange(0, J)
    wp = P + rnc[:, None] * J + j[None, :]               # [BN, J] words of block 0
    xp = X + rm.to(tl.int64)[:, None] * K + j[None, :]   # [BM, J]
    if BM == 1:
        acc = tl.full([1, 1, 1], 0, tl.float32)
        acc2 = tl.full([BN, J], 0, tl.float32)
    else:
        acc = tl.full([BM, BN, J], 0, tl.float32)
        acc2 = tl.full([1, 1], 0, tl.float32)
    b0 = pid_k * NB_PER
    b1 = tl.minimum(b0 + NB_PER, KW // J)
    for b in range(b0, b1):
        w = tl.load(wp + b * N * J)
        wh = w >> 20
        k0 = b * 8 * J
        if BM == 1:
            part = tl.full([1, 1, 1], 0, tl.float32)
            part2 = tl.full([BN, J], 0, tl.float32)
        else:
            part = tl.full([BM, BN, J], 0, tl.float32)
            part2 = tl.full([1, 1], 0, tl.float32)
        if GE >= 8 * J:
            # one group for the whole block: its zero points load once, not once per nibble
            zb = _w4_zoff(Z, k0 // GE, N, rnc, HAS_ZERO, ZC, 0, False, 0) - 8388608.0
        for i in tl.static_range(8):
            g = (k0 + i * J) // GE
            # (u - zeff) * 16^p exactly; x carries the 16^-p (a power of two: exact)
            if i < 5:
                if GE >= 8 * J:
                    zo = zb * (1 << (4 * i)) + 8388608.0
                else:
                    zo = _w4_zoff(Z, g, N, rnc, HAS_ZERO, ZC, 0, False, i)
                f = _w4_nib(w, wh, i) - zo[:, None]
                xs = 1.0 / (1 << (4 * i))
            else:
                if GE >= 8 * J:
                    zo = zb * (1 << (4 * (i - 5))) + 8388608.0
                else:
                    zo = _w4_zoff(Z, g, N, rnc, HAS_ZERO, ZC, 0, False, i - 5)
                f = _w4_nib(w, wh, i) - zo[:, None]
                xs = 1.0 / (1 << (4 * (i - 5)))
            if BM == 1:
                # one row (M == 1): x as a [J] vector, 2-D [BN, J] tiles in the words' own layout
                if EVEN_K:
                    x1 = tl.load(X + k0 + i * J + j)
                else:
                    x1 = tl.load(X + k0 + i * J + j, mask=(k0 + i * J + j) < K, other=0)
                x1 = x1.to(tl.float32) * xs
                if GE >= 8 * J:
                    part2 += x1[None, :] * f
                else:
                    s = tl.load(S + g * N + rnc)
                    acc2 += x1[None, :] * (f * s[:, None])
            else:
                if EVEN_K:
                    xv = tl.load(xp + k0 + i * J, mask=mm[:, None], other=0)
                else:
                    xv = tl.load(xp + k0 + i * J, mask=mm[:, None] & ((k0 + i * J + j) < K)[None, :],
                                 other=0)
                xv = xv.to(tl.float32) * xs
                if GE >= 8 * J:
                    part += xv[:, None, :] * f[None, :, :]
                else:
                    # a nibble per group (GE < 8 J): scale each
                    s = tl.load(S + g * N + rnc)
                    acc += xv[:, None, :] * (f * s[:, None])[None, :, :]
        if GE >= 8 * J:
            s = tl.load(S + (k0 // GE) * N + rnc)
            if BM == 1:
                acc2 += part2 * s[:, None]
            else:
                acc += part * s[None, :, None]
    if BM == 1:
        y = tl.reduce(acc2, 1, _w4_sum)[None, :]
    else:
        y = tl.reduce(acc, 2, _w4_sum)
    _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, pid_n, pid_k, SPLIT, HAS_BIAS, ROUND_BF16)


@triton.jit
def w4_gemm(X, P, S, Z, B, Y, WS, CNT, M, N, K, KW, NB_PER,
            HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
            SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, EVEN_K: tl.constexpr,
            KIND: tl.constexpr, FAST16: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr,
            DOTS8: tl.constexpr, EVICT: tl.constexpr,
            BM: tl.constexpr, BN: tl.constexpr, J: tl.constexpr, GE: tl.constexpr,
            GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm, rn, rmc, rnc = _sf_gemm_tile(pid, M, N, BM, BN, GROUP_M)
    j = tl.arange(0, J)
    kk = tl.arange(0, 8 * J)
    sh = tl.arange(0, 8) * 4
    wp = P + rnc[:, None] * J + j[None, :]              # [BN, J] words of block 0
    xp = X + rmc[:, None] * K + kk[None, :]             # [BM, 8J]
    xj = X + rmc[:, None] * K + j[None, :]              # [BM, J]
    if SWAP:
        acc = tl.full([BN, BM], 0, tl.float32)
    else:
        acc = tl.full([BM, BN], 0, tl.float32)
    b0 = pid_k * NB_PER
    b1 = tl.minimum(b0 + NB_PER, KW // J)
    for b in range(b0, b1):
        if EVICT:
            # one row block: every weight tile is read once; keep it from evicting x and the partials
            w = tl.load(wp + b * N * J, eviction_policy="evict_first")
        else:
            w = tl.load(wp + b * N * J)
        k0 = b * 8 * J
        if EVEN_K:
            x = tl.load(xp + k0)
        else:
            x = tl.load(xp + k0, mask=((k0 + kk) < K)[None, :], other=0)
        x = _w4_op(x, X, IEEE)
        # [BN, 8, J] nibbles -> [BN, 8J]: column i*J + j is code k0 + i*J + j (the layout)
        u = (w[:, None, :] >> sh[None, :, None]) & 15
        wq = _w4_deq(u, KIND, FAST16)
        if GE >= 8 * J and DOTS8:
            # eight K=J dots, one per nibble: no [BN, 8, J] -> [BN, 8J] reshape
            g = k0 // GE
            z = _w4_zoff(Z, g, N, rnc, HAS_ZERO, ZC, KIND, FAST16, 0).to(wq.dtype)
            s = tl.load(S + g * N + rnc)
            if SWAP >= 2:
                part = tl.full([BN, BM], 0, tl.float32)
            else:
                part = tl.full([BM, BN], 0, tl.float32)
            # SWAP 3: the weights as operand A, their nibbles turned into 16-bit pairs by PTX
            PAIRS: tl.constexpr = SWAP == 3 and FAST16 and KIND != 0
            if PAIRS:
                zq = (z.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) * 0x10001   # magic + zeff, both halves
            for i in tl.static_range(8):
                if PAIRS:
                    qi = _w4_nib_pairs(w, zq[:, None], i, KIND)
                else:
                    qi = _w4_op(_w4_deq((w >> (4 * i)) & 15, KIND, FAST16) - z[:, None], X, IEEE)
                if EVEN_K:
                    xi = tl.load(xj + k0 + i * J)
                else:
                    xi = tl.load(xj + k0 + i * J, mask=((k0 + i * J + j) < K)[None, :], other=0)
                if SWAP >= 2:
                    part += _w4_dot(qi, tl.trans(_w4_op(xi, X, IEEE)), IEEE)
                else:
                    part += _w4_dot(_w4_op(xi, X, IEEE), tl.trans(qi), IEEE)
            if SWAP >= 2:
                acc += part * s[:, None]
            elif SWAP:
                acc += tl.trans(part) * s[:, None]
            else:
                acc += part * s[None, :]
        elif GE >= 8 * J:
            g = k0 // GE
            z = _w4_zoff(Z, g, N, rnc, HAS_ZERO, ZC, KIND, FAST16, 0).to(wq.dtype)
            wq = _w4_op(tl.reshape(wq - z[:, None, None], [BN, 8 * J]), X, IEEE)
            s = tl.load(S + g * N + rnc)
            if SWAP:
                acc += _w4_dot(wq, tl.trans(x), IEEE) * s[:, None]
            else:
                acc += _w4_dot(x, tl.trans(wq), IEEE) * s[None, :]
        else:
            # several groups per block: the scale goes on the weights (f32), then one dot
            gi = (k0 + tl.arange(0, 8) * J) // GE                       # [8] groups
            if HAS_ZERO:
                zoff = tl.load(Z + gi[None, :] * N + rnc[:, None]).to(tl.float32)
            else:
                zoff = tl.full([BN, 8], 0, tl.float32) + ZC
            sg = tl.load(S + gi[None, :] * N + rnc[:, None])
            wf = (_w4_deq(u, 0, False) - 8388608.0 - zoff[:, :, None]) * sg[:, :, None]
            wq = _w4_op(tl.reshape(wf, [BN, 8 * J]), X, True)
            xf = x.to(tl.float32)
            if SWAP:
                acc += _w4_dot(wq, tl.trans(xf), True)
            else:
                acc += _w4_dot(xf, tl.trans(wq), True)
    if SWAP:
        y = tl.trans(acc)
    else:
        y = acc
    _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, pid, pid_k, SPLIT, HAS_BIAS, ROUND_BF16)

@triton.jit
def w4_gemm_kn(X, Q, S, Z, B, Y, WS, CNT, M, N, K, NKB, NB_PER,
               HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
               SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, EVEN_K: tl.constexpr,
               KIND: tl.constexpr, FAST16: tl.constexpr, IEEE: tl.constexpr, SWAP: tl.constexpr,
               RESHAPE: tl.constexpr, SCALE_W: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               GE: tl.constexpr, GROUP_M: tl.constexpr):
    """GEMM on the [Kp/8, N] words (``qkn``): per K block (BK <= GE: one group) the codes
    become u - zeff in x's dtype (exact small integers), one tl.dot, then the group scale on
    the f32 partial."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm, rn, rmc, rnc = _sf_gemm_tile(pid, M, N, BM, BN, GROUP_M)
    rk = tl.arange(0, BK)
    xp = X + rmc[:, None] * K + rk[None, :]                          # [BM, BK]
    if RESHAPE:
        # each word once: [BK/8, BN] words -> [BK/8, 8, BN] nibbles -> [BK, BN]
        qp = Q + tl.arange(0, BK // 8).to(tl.int64)[:, None] * N + rnc[None, :]
        sh = tl.arange(0, 8) * 4
    else:
        # row k reads word row k // 8 (8 loads of one row: served by L1)
        qp = Q + (rk // 8).to(tl.int64)[:, None] * N + rnc[None, :]
        sh = ((rk % 8) * 4)[:, None]
    if SWAP:
        acc = tl.full([BN, BM], 0, tl.float32)
    else:
        acc = tl.full([BM, BN], 0, tl.float32)
    kb0 = pid_k * NB_PER
    kb1 = tl.minimum(kb0 + NB_PER, NKB)
    for kb in range(kb0, kb1):
        k0 = kb * BK
        if EVEN_K:
            x = tl.load(xp + k0)
        else:
            x = tl.load(xp + k0, mask=((k0 + rk) < K)[None, :], other=0)
        w = tl.load(qp + (k0 // 8) * N)
        if RESHAPE:
            u = tl.reshape((w[:, None, :] >> sh[None, :, None]) & 15, [BK, BN])
        else:
            u = (w >> sh) & 15
        g = k0 // GE
        s = tl.load(S + g * N + rnc)
        xo = _w4_op(x, X, IEEE)
        if SCALE_W:
            # Wd = (u - zeff) * s in f32 (exact as dequant_weight), rounded once to x's dtype:
            # the dots chain on acc, so the next block's dequantisation overlaps this dot
            f = _w4_deq(u, 0, False) - _w4_zoff(Z, g, N, rnc, HAS_ZERO, ZC, 0, False, 0)[None, :]
            wq = (f * s[None, :]).to(X.dtype.element_ty)
            if SWAP:
                acc = tl.dot(tl.trans(wq), tl.trans(xo), acc)
            else:
                acc = tl.dot(xo, wq, acc)
        else:
            wq = _w4_deq(u, KIND, FAST16)
            z = _w4_zoff(Z, g, N, rnc, HAS_ZERO, ZC, KIND, FAST16, 0).to(wq.dtype)
            wq = _w4_op(wq - z[None, :], X, IEEE)
            if SWAP:
                acc += _w4_dot(tl.trans(wq), tl.trans(xo), IEEE) * s[:, None]
            else:
                acc += _w4_dot(xo, wq, IEEE) * s[None, :]
    if SWAP:
        y = tl.trans(acc)
    else:
        y = acc
    _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, pid, pid_k, SPLIT, HAS_BIAS, ROUND_BF16)
'''


SOURCE = HEADER + PRELUDE + GEMM_TILE + KERNELS + H2_KERNEL + NIB_KERNEL + MMAG_KERNEL + DQ_KERNEL

__all__ = ["SOURCE"]
