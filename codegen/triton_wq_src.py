"""Triton source text of the weight-only kernel ``wq_gemm`` (``codegen/triton_wq.py`` documents
it and launches it). It shares the W4 module's prelude, tile order and split-K finish, so the
text is the W4 source plus this kernel."""
from __future__ import annotations

from .triton_w4_src import SOURCE as W4_SOURCE

WQ_KERNEL = r'''

@triton.jit
def _wq_codes(W, rnc, k0, K, KB, NIB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
              EVICT: tl.constexpr):
    """The code bytes [BN, BK] (int32) of channels rnc, columns k0 .. k0 + BK - 1 (0 past K)."""
    if NIB:
        kb = k0 // 2 + tl.arange(0, BK // 2)
        p = W + rnc.to(tl.int64)[:, None] * KB + kb[None, :]
        if EVICT:
            b = tl.load(p, mask=(kb < KB)[None, :], other=0, eviction_policy="evict_first").to(tl.int32)
        else:
            b = tl.load(p, mask=(kb < KB)[None, :], other=0).to(tl.int32)
        # column 2 j + t of the tile is nibble t of byte j
        c = tl.reshape(tl.join(b & 15, b >> 4), [BN, BK])
    else:
        kk = k0 + tl.arange(0, BK)
        p = W + rnc.to(tl.int64)[:, None] * KB + kk[None, :]
        if EVICT:
            c = tl.load(p, mask=(kk < K)[None, :], other=0, eviction_policy="evict_first").to(tl.int32)
        else:
            c = tl.load(p, mask=(kk < K)[None, :], other=0).to(tl.int32)
    return c


@triton.jit
def _wq_value(c, CODE: tl.constexpr, NIB: tl.constexpr):
    """The codes' values: int32 for integer codes, f16 (times 2^-r, see the packing) for float."""
    if CODE == 0:
        v = c
    elif CODE == 1:
        if NIB:
            v = (c ^ 8) - 8
        else:
            v = (c ^ 128) - 128
    else:
        if CODE == 2:
            bits = ((c & 0x80) << 8) | ((c & 0x7F) << 7)
        elif CODE == 3:
            bits = c << 8
        else:
            bits = ((c & 8) << 12) | ((c & 7) << 9)
        v = bits.to(tl.uint16).to(tl.float16, bitcast=True)
    return v


@triton.jit
def wq_gemm(X, W, S, Z, B, Y, WS, CNT, M, N, K, KB, NG, NT_PER, GROUP: tl.constexpr,
            CODE: tl.constexpr, NIB: tl.constexpr, ZMODE: tl.constexpr, AFTER: tl.constexpr,
            OP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr,
            EVICT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
            GROUP_M: tl.constexpr, SWAP: tl.constexpr):
    # AFTER: the tile's dot takes the exact code values (minus integer zero points) in the
    # operand type OP (0 f32 with IEEE dots, 1 f16, 2 bf16) and its f32 partial is multiplied
    # by the tile's one group scale (BK divides GROUP; GROUP 0: one scale per channel, at the
    # end). Else the weights are dequantised in f32 ((value - zero) * scale, the reference's
    # Wd) and the dot is IEEE f32. SWAP (AFTER with 16-bit operands): the weights are the dot's
    # A operand ([BN, BK] as loaded, no transpose of the decoded tile) and the accumulator is
    # [BN, BM], transposed once at the end.
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm, rn, rmc, rnc = _sf_gemm_tile(pid, M, N, BM, BN, GROUP_M)
    kk = tl.arange(0, BK)
    if SWAP:
        acc = tl.full([BN, BM], 0, tl.float32)
    else:
        acc = tl.full([BM, BN], 0, tl.float32)
    t0 = pid_k * NT_PER
    t1 = tl.minimum(t0 + NT_PER, (K + BK - 1) // BK)   # not tl.cdiv: a tl.standard jit function (see triton_expr)
    for t in range(t0, t1):
        k0 = t * BK
        km = (k0 + kk) < K
        x = tl.load(X + rmc.to(tl.int64)[:, None] * K + (k0 + kk)[None, :], mask=km[None, :], other=0)
        c = _wq_codes(W, rnc, k0, K, KB, NIB, BN, BK, EVICT)
        if AFTER and CODE < 2:
            # integer codes: (c | 0x4B000000) is the float 2^23 + c (signed codes first made
            # unsigned by adding half), and one subtraction of 2^23 + the effective zero is
            # exact: cheaper than integer-to-float conversions
            if CODE == 1 and NIB:
                c = c ^ 8
                zc = 8388608.0 + 8
            elif CODE == 1:
                c = c ^ 128
                zc = 8388608.0 + 128
            else:
                zc = 8388608.0
            if ZMODE == 1:
                if GROUP > 0:
                    zf = tl.load(Z + (k0 // GROUP) * N + rnc).to(tl.float32) + zc
                else:
                    zf = tl.load(Z + rnc).to(tl.float32) + zc
            else:
                zf = tl.load(S + rnc, mask=rnc < 0, other=0) + zc
            v = (c | 0x4B000000).to(tl.float32, bitcast=True) - zf[:, None]
        else:
            v = _wq_value(c, CODE, NIB)
        if AFTER:
            if OP == 0:
                part = tl.dot(x.to(tl.float32), tl.trans(v.to(tl.float32)), input_precision="ieee")
            elif SWAP and OP == 1:
                part = tl.dot(v.to(tl.float16), tl.trans(x.to(tl.float16)))
            elif SWAP:
                part = tl.dot(v.to(tl.bfloat16), tl.trans(x.to(tl.bfloat16)))
            elif OP == 1:
                part = tl.dot(x.to(tl.float16), tl.trans(v.to(tl.float16)))
            else:
                part = tl.dot(x.to(tl.bfloat16), tl.trans(v.to(tl.bfloat16)))
            if GROUP > 0 and SWAP:
                acc += part * tl.load(S + (k0 // GROUP) * N + rnc)[:, None]
            elif GROUP > 0:
                acc += part * tl.load(S + (k0 // GROUP) * N + rnc)[None, :]
            else:
                acc += part
        else:
            if GROUP > 0:
                gk = (k0 + kk) // GROUP
            else:
                gk = kk * 0
            gm = (gk < NG)[None, :]
            off = gk[None, :] * N + rnc[:, None]
            wd = v.to(tl.float32)
            if ZMODE == 1:
                wd = wd - tl.load(Z + off, mask=gm, other=0).to(tl.float32)
            elif ZMODE == 2:
                wd = wd - tl.load(Z + off, mask=gm, other=0)
            wd = wd * tl.load(S + off, mask=gm, other=0)
            acc += tl.dot(x.to(tl.float32), tl.trans(wd), input_precision="ieee")
    if AFTER and GROUP == 0 and SWAP:
        acc = acc * tl.load(S + rnc)[:, None]
    elif AFTER and GROUP == 0:
        acc = acc * tl.load(S + rnc)[None, :]
    if SWAP:
        y = tl.trans(acc)
    else:
        y = acc
    _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, pid, pid_k, SPLIT, HAS_BIAS, ROUND_BF16)

@triton.jit
def _wq_word_value(w, i: tl.constexpr, zf, CODE: tl.constexpr, NIB: tl.constexpr):
    """Code i of int32 words w (byte i, or nibble i with NIB) as f32: integer codes minus the
    zero point (w already xor-ed to unsigned codes for signed ones; (c | 0x4B000000) is the
    float 2^23 + c and zf is 2^23 + the effective zero, [BN, 1] or per word: exact), float codes their
    value times 2^-r (the packing's rebias)."""
    if NIB:
        c = (w >> (4 * i)) & 15
    else:
        c = (w >> (8 * i)) & 255
    if CODE < 2:
        v = (c | 0x4B000000).to(tl.float32, bitcast=True) - zf
    else:
        v = _wq_value(c, CODE, NIB).to(tl.float32)
    return v


@triton.jit
def wq_gemv(X, W, S, Z, B, Y, WS, CNT, M, N, K, KB, NG, NT_PER, GROUP: tl.constexpr,
            CODE: tl.constexpr, NIB: tl.constexpr, ZMODE: tl.constexpr, HAS_BIAS: tl.constexpr,
            SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
            BK: tl.constexpr):
    # M <= BM rows (a few) on the CUDA cores: per K tile a [BN, BK / CPW] tile of int32 words
    # (CPW = 4 bytes or 8 nibbles, row-major codes), each code position i of the words against
    # its strided slice of x, products summed in place per word; the group scale multiplies
    # the word sums (one per tile when BK divides GROUP, else one per word: CPW divides
    # GROUP), and K is reduced once after the loop
    CPW: tl.constexpr = 8 if NIB else 4
    BKW: tl.constexpr = BK // CPW
    PERWORD: tl.constexpr = GROUP > 0 and GROUP % BK != 0
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    rnc = tl.where(rn < N, rn, 0).to(tl.int64)
    rm = tl.arange(0, BM)
    mm = rm < M
    jw = tl.arange(0, BKW)
    wp = W + rnc[:, None] * (KB // 4) + jw[None, :]
    if BM == 1:
        acc = tl.full([BN, BKW], 0, tl.float32)
    else:
        acc = tl.full([BM, BN, BKW], 0, tl.float32)
    if CODE == 1:
        flip = -2004318072 if NIB else -2139062144      # 0x88888888 / 0x80808080
        zc = 8388608.0 + (8 if NIB else 128)
    else:
        flip = 0
        zc = 8388608.0
    t0 = pid_k * NT_PER
    t1 = tl.minimum(t0 + NT_PER, (K + BK - 1) // BK)   # not tl.cdiv: a tl.standard jit function (see triton_expr)
    for t in range(t0, t1):
        k0 = t * BK
        w = tl.load(wp + k0 // CPW, mask=(k0 // CPW + jw < KB // 4)[None, :], other=0,
                    eviction_policy="evict_first")
        if CODE == 1:
            w = w ^ flip
        if PERWORD:
            # the tile spans several groups: scales and zero points per word (a group holds
            # whole words); the loads repeat within a group and hit the cache
            gw = (k0 + jw * CPW) // GROUP
            goff = gw[None, :] * N + rnc[:, None]
            gm = (gw < NG)[None, :]
            sw = tl.load(S + goff, mask=gm, other=0)
            if ZMODE == 1:
                zf = tl.load(Z + goff, mask=gm, other=0).to(tl.float32) + zc
            else:
                zf = tl.load(S + goff, mask=gm & (rnc < 0)[:, None], other=0) + zc
        else:
            if GROUP > 0:
                gi = k0 // GROUP
            else:
                gi = 0
            if ZMODE == 1:
                zf = (tl.load(Z + gi * N + rnc).to(tl.float32) + zc)[:, None]
            else:
                zf = (tl.load(S + gi * N + rnc, mask=rnc < 0, other=0) + zc)[:, None]
        if BM == 1:
            part = tl.full([BN, BKW], 0, tl.float32)
        else:
            part = tl.full([BM, BN, BKW], 0, tl.float32)
        for i in tl.static_range(CPW):
            kx = k0 + jw * CPW + i
            v = _wq_word_value(w, i, zf, CODE, NIB)
            if BM == 1:
                xv = tl.load(X + kx, mask=kx < K, other=0).to(tl.float32)
                part += xv[None, :] * v
            else:
                xv = tl.load(X + rm.to(tl.int64)[:, None] * K + kx[None, :], mask=mm[:, None] & (kx < K)[None, :],
                             other=0).to(tl.float32)
                part += xv[:, None, :] * v[None, :, :]
        if PERWORD:
            if BM == 1:
                acc += part * sw
            else:
                acc += part * sw[None, :, :]
        elif GROUP > 0:
            s = tl.load(S + gi * N + rnc)
            if BM == 1:
                acc += part * s[:, None]
            else:
                acc += part * s[None, :, None]
        else:
            acc += part
    if BM == 1:
        y = tl.reduce(acc, 1, _w4_sum)[None, :]
    else:
        y = tl.reduce(acc, 2, _w4_sum)
    if GROUP == 0:
        y = y * tl.load(S + rnc)[None, :]
    _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, pid_n, pid_k, SPLIT, HAS_BIAS, ROUND_BF16)
'''

# the dense path's dequantisation (``codegen/triton_dense.py``): channels N0 .. NE - 1 into rows
# 0 .. NE - N0 - 1 of D [NE - N0, K]; the GEMM's scale-before form, so D is the reference's Wd
# bit for bit (f32) or that rounded once to D's dtype
WQ_DQ_KERNEL = r'''

@triton.jit
def wq_dequant(W, S, Z, D, N, K, KB, NG, N0, NE, GROUP: tl.constexpr, CODE: tl.constexpr,
               NIB: tl.constexpr, ZMODE: tl.constexpr, ROUND_BF16: tl.constexpr, BN: tl.constexpr,
               BK: tl.constexpr):
    rn = N0 + tl.program_id(0) * BN + tl.arange(0, BN)
    mn = rn < NE
    rnc = tl.where(mn, rn, 0)
    k0 = tl.program_id(1) * BK
    kk = k0 + tl.arange(0, BK)
    v = _wq_value(_wq_codes(W, rnc, k0, K, KB, NIB, BN, BK, 0), CODE, NIB)
    wd = v.to(tl.float32)
    if GROUP == 0 or GROUP % BK == 0:
        # one group per tile row: [BN] scales and zero points (a [BN, BK] gather took twice
        # as long on an H200)
        if GROUP > 0:
            gi = k0 // GROUP
        else:
            gi = 0
        if ZMODE == 1:
            wd = wd - tl.load(Z + gi * N + rnc).to(tl.float32)[:, None]
        elif ZMODE == 2:
            wd = wd - tl.load(Z + gi * N + rnc)[:, None]
        wd = wd * tl.load(S + gi * N + rnc)[:, None]
    else:
        gk = kk // GROUP
        gm = (gk < NG)[None, :]
        off = gk[None, :] * N + rnc[:, None]
        if ZMODE == 1:
            wd = wd - tl.load(Z + off, mask=gm, other=0).to(tl.float32)
        elif ZMODE == 2:
            wd = wd - tl.load(Z + off, mask=gm, other=0)
        wd = wd * tl.load(S + off, mask=gm, other=0)
    if ROUND_BF16:
        wd = _sf_round_bf16(wd)
    tl.store(D + (rn - N0).to(tl.int64)[:, None] * K + kk[None, :], wd.to(D.dtype.element_ty),
             mask=mn[:, None] & (kk < K)[None, :])
'''

SOURCE = W4_SOURCE + WQ_KERNEL + WQ_DQ_KERNEL

__all__ = ["SOURCE"]
