"""Triton source text of ``w4_mma``, the tensor-core W4A16 kernel for M <= 16 rows of f16 / bf16 x
(launched from ``codegen/triton_w4.py``; weight layout in ``runtime/w4pack_mma.py``).

Each thread of a warp loads, per 64-code chunk, its 16 bytes of ``qmma``: exactly its four
``mma.sync.m16n8k16`` A fragments (16 channels x 64 K codes per warp). One inline-PTX step per
chunk turns them into f16 / bf16 pairs u - zeff in registers (a shift, a LOP3 with the magic
exponent and a packed subtraction per two codes: no shared memory, no barrier), issues the four
(or, for M > 8, eight) mma.sync with x's B fragments (one contiguous 32-byte run of x per lane
and chunk), and folds the chunk's f32 result into the accumulators with the group scale. The
PTX runs on the GPU only: the interpreter takes the other W4 kernels (``triton_w4.py``).
"""
from __future__ import annotations


def asm_chunk(nt: int, f16: bool) -> str:
    """PTX of one chunk for ``nt`` n-tiles of 8 x rows (operands one register each, pack=1):
    outputs acc'[nt][0..3]; inputs acc[nt][0..3], the thread's 4 words, zz_g, zz_g8 (1024 +
    zeff for f16, 128 + zeff for bf16, in both halves, of channels g and g + 8), s_g, s_g8
    (their group scales), then per n-tile the 8 x pairs (steps 0..3, two each)."""
    o = 4 * nt
    acc_in = [[f"${o + 4 * i + e}" for e in range(4)] for i in range(nt)]
    base = o + 4 * nt
    word = [f"${base + t}" for t in range(4)]
    zg, zg8, sg, sg8 = (f"${base + 4 + i}" for i in range(4))
    xs = [[f"${base + 8 + 8 * i + e}" for e in range(8)] for i in range(nt)]
    magic = "0x64006400" if f16 else "0x43004300"
    ty = "f16" if f16 else "bf16"
    lines = ["{", ".reg .b32 s1, s2, s3, a0, a1, a2, a3;",
             ".reg .f32 " + ", ".join(f"d{i}{e}" for i in range(nt) for e in range(4)) + ";"]
    lines += [f"mov.f32 d{i}{e}, 0f00000000;" for i in range(nt) for e in range(4)]
    for t in range(4):
        w = word[t]
        lines += [f"lop3.b32 a0, {w}, 0x000F000F, {magic}, 0xEA;",      # (w & m) | magic
                  f"shr.u32 s1, {w}, 4;", f"lop3.b32 a1, s1, 0x000F000F, {magic}, 0xEA;",
                  f"shr.u32 s2, {w}, 8;", f"lop3.b32 a2, s2, 0x000F000F, {magic}, 0xEA;",
                  f"shr.u32 s3, {w}, 12;", f"lop3.b32 a3, s3, 0x000F000F, {magic}, 0xEA;",
                  f"sub.{ty}x2 a0, a0, {zg};", f"sub.{ty}x2 a1, a1, {zg8};",
                  f"sub.{ty}x2 a2, a2, {zg};", f"sub.{ty}x2 a3, a3, {zg8};"]
        for i in range(nt):
            b0, b1 = xs[i][2 * t], xs[i][2 * t + 1]
            d = ", ".join(f"d{i}{e}" for e in range(4))
            lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{{d}}}, "
                         f"{{a0, a1, a2, a3}}, {{{b0}, {b1}}}, {{{d}}};")
    for i in range(nt):
        for e in range(4):
            lines.append(f"fma.rn.f32 ${4 * i + e}, d{i}{e}, {sg if e < 2 else sg8}, {acc_in[i][e]};")
    lines.append("}")
    return "\n".join(lines)


def _constraints(nt: int) -> str:
    o = 4 * nt
    return ",".join(["=f"] * o + ["f"] * o + ["r"] * 6 + ["f"] * 2 + ["r"] * (8 * nt))


MMA_KERNEL = r"""

_W4_MMA_BF16_1 = tl.constexpr(%s)
_W4_MMA_BF16_2 = tl.constexpr(%s)
_W4_MMA_F16_1 = tl.constexpr(%s)
_W4_MMA_F16_2 = tl.constexpr(%s)
_W4_MMA_C1 = tl.constexpr(%s)
_W4_MMA_C2 = tl.constexpr(%s)


@triton.jit
def _w4_mma_x(X32, q, c, m, M, K, EVEN_K: tl.constexpr):
    # lane (g, c)'s eight x pairs of chunk q for x row m: int32 words (two f16 / bf16 each) at
    # K index 64 q + 16 c + 2 e, e = 0..7; rows >= M and K past the end read 0
    p = X32 + m * (K // 2) + q * 32 + 8 * c
    k = q * 64 + 16 * c
    ok = m < M
    if EVEN_K:
        r = (tl.load(p, mask=ok, other=0), tl.load(p + 1, mask=ok, other=0),
             tl.load(p + 2, mask=ok, other=0), tl.load(p + 3, mask=ok, other=0),
             tl.load(p + 4, mask=ok, other=0), tl.load(p + 5, mask=ok, other=0),
             tl.load(p + 6, mask=ok, other=0), tl.load(p + 7, mask=ok, other=0))
    else:
        r = (tl.load(p, mask=ok & (k < K), other=0), tl.load(p + 1, mask=ok & (k + 2 < K), other=0),
             tl.load(p + 2, mask=ok & (k + 4 < K), other=0), tl.load(p + 3, mask=ok & (k + 6 < K), other=0),
             tl.load(p + 4, mask=ok & (k + 8 < K), other=0), tl.load(p + 5, mask=ok & (k + 10 < K), other=0),
             tl.load(p + 6, mask=ok & (k + 12 < K), other=0), tl.load(p + 7, mask=ok & (k + 14 < K), other=0))
    return r


@triton.jit
def _w4_mma_zs(Z, S, q, GQ: tl.constexpr, N, cg, cg8, mg, HAS_ZERO: tl.constexpr, ZC: tl.constexpr):
    # (zz_g, zz_g8, s_g, s_g8) of chunk q: magic + zeff in both f16 / bf16 halves, and scales
    row = (q // GQ) * N
    if HAS_ZERO:
        zg = (tl.load(Z + row + cg).to(tl.int32) | mg) * 0x10001
        zg8 = (tl.load(Z + row + cg8).to(tl.int32) | mg) * 0x10001
    else:
        zg = tl.zeros_like(cg) + (ZC | mg) * 0x10001
        zg8 = zg
    return zg, zg8, tl.load(S + row + cg), tl.load(S + row + cg8)


@triton.jit
def _w4_mma_out(Y, B, WS, pid_k, y, ch, m, ok, M, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    # one accumulator register of every thread: its f32 partial, or with one split y + bias
    if SPLIT > 1:
        tl.store(WS + pid_k * M * N + m * N + ch, y, mask=ok)
    else:
        if HAS_BIAS:
            y = y + tl.load(B + ch).to(tl.float32)
        tl.store(Y + m * N + ch, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _w4_mma_sum(Y, B, WS, ch, m, ok, M, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    # the last program of a channel block: the splits' partials in split order, + bias
    y = tl.zeros(ch.shape, tl.float32)
    for sp in tl.static_range(SPLIT):
        y += tl.load(WS + sp * M * N + m * N + ch, mask=ok, other=0, cache_modifier=".cg")
    if HAS_BIAS:
        y = y + tl.load(B + ch).to(tl.float32)
    tl.store(Y + m * N + ch, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def w4_mma(X, Q, S, Z, B, Y, WS, CNT, M, N, K, NQ, NRT,
           NQ_PER: tl.constexpr, HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
           SPLIT: tl.constexpr, EVEN_K: tl.constexpr, NT: tl.constexpr, F16: tl.constexpr,
           WARPS: tl.constexpr, GQ: tl.constexpr, R: tl.constexpr):
    # the tensors here are [R, 32 WARPS]: column t is thread t (lane t %% 32 of warp t // 32) and
    # row j its j-th row tile, so the PTX step sees that lane's own fragments; x fragments
    # ([1, 32 WARPS]) serve all R row tiles of a warp
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    t = tl.arange(0, 32 * WARPS)[None, :]
    lane = t %% 32
    g = lane // 4
    c = lane %% 4
    rt = pid_n * WARPS * R + tl.arange(0, R)[:, None] * WARPS + t // 32
    rtc = tl.minimum(rt, NRT - 1)
    wp = Q + (rtc * 32 + lane) * 4
    cg = tl.minimum(rtc * 16 + g, N - 1)
    cg8 = tl.minimum(rtc * 16 + g + 8, N - 1)
    X32 = X.to(tl.pointer_type(tl.int32))
    q0 = pid_k * NQ_PER
    nq = tl.minimum(NQ_PER, NQ - q0)
    if F16:
        mg = 0x6400
    else:
        mg = 0x4300
    a00 = tl.zeros([R, 32 * WARPS], tl.float32)
    a01 = a00
    a02 = a00
    a03 = a00
    a10 = a00
    a11 = a00
    a12 = a00
    a13 = a00
    # registers double-buffer the stream: chunk q + 1 loads while chunk q computes
    qs = q0 * NRT * 128
    w0, w1, w2, w3 = tl.load(wp + qs), tl.load(wp + qs + 1), tl.load(wp + qs + 2), tl.load(wp + qs + 3)
    zg, zg8, sg, sg8 = _w4_mma_zs(Z, S, q0, GQ, N, cg, cg8, mg, HAS_ZERO, ZC)
    x0, x1, x2, x3, x4, x5, x6, x7 = _w4_mma_x(X32, q0, c, g, M, K, EVEN_K)
    if NT == 2:
        u0, u1, u2, u3, u4, u5, u6, u7 = _w4_mma_x(X32, q0, c, g + 8, M, K, EVEN_K)
    for it in range(nq):
        qn = q0 + tl.minimum(it + 1, nq - 1)
        qs = qn * NRT * 128
        v0, v1, v2, v3 = tl.load(wp + qs), tl.load(wp + qs + 1), tl.load(wp + qs + 2), tl.load(wp + qs + 3)
        zg_n, zg8_n, sg_n, sg8_n = _w4_mma_zs(Z, S, qn, GQ, N, cg, cg8, mg, HAS_ZERO, ZC)
        y0, y1, y2, y3, y4, y5, y6, y7 = _w4_mma_x(X32, qn, c, g, M, K, EVEN_K)
        if NT == 2:
            o0, o1, o2, o3, o4, o5, o6, o7 = _w4_mma_x(X32, qn, c, g + 8, M, K, EVEN_K)
            if F16:
                a00, a01, a02, a03, a10, a11, a12, a13 = tl.inline_asm_elementwise(
                    _W4_MMA_F16_2, _W4_MMA_C2,
                    [a00, a01, a02, a03, a10, a11, a12, a13, w0, w1, w2, w3, zg, zg8, sg, sg8,
                     x0, x1, x2, x3, x4, x5, x6, x7, u0, u1, u2, u3, u4, u5, u6, u7],
                    dtype=(tl.float32,) * 8, is_pure=True, pack=1)
            else:
                a00, a01, a02, a03, a10, a11, a12, a13 = tl.inline_asm_elementwise(
                    _W4_MMA_BF16_2, _W4_MMA_C2,
                    [a00, a01, a02, a03, a10, a11, a12, a13, w0, w1, w2, w3, zg, zg8, sg, sg8,
                     x0, x1, x2, x3, x4, x5, x6, x7, u0, u1, u2, u3, u4, u5, u6, u7],
                    dtype=(tl.float32,) * 8, is_pure=True, pack=1)
            u0, u1, u2, u3, u4, u5, u6, u7 = o0, o1, o2, o3, o4, o5, o6, o7
        else:
            if F16:
                a00, a01, a02, a03 = tl.inline_asm_elementwise(
                    _W4_MMA_F16_1, _W4_MMA_C1,
                    [a00, a01, a02, a03, w0, w1, w2, w3, zg, zg8, sg, sg8,
                     x0, x1, x2, x3, x4, x5, x6, x7], dtype=(tl.float32,) * 4, is_pure=True, pack=1)
            else:
                a00, a01, a02, a03 = tl.inline_asm_elementwise(
                    _W4_MMA_BF16_1, _W4_MMA_C1,
                    [a00, a01, a02, a03, w0, w1, w2, w3, zg, zg8, sg, sg8,
                     x0, x1, x2, x3, x4, x5, x6, x7], dtype=(tl.float32,) * 4, is_pure=True, pack=1)
        w0, w1, w2, w3 = v0, v1, v2, v3
        zg, zg8, sg, sg8 = zg_n, zg8_n, sg_n, sg8_n
        x0, x1, x2, x3, x4, x5, x6, x7 = y0, y1, y2, y3, y4, y5, y6, y7
    # register e of lane (g, c) is D[g + 8 (e // 2)][2 c + e %% 2] of its n-tile
    ch = rt * 16 + g
    okc = (rt < (N + 15) // 16) & (ch < N)
    okc8 = (rt < (N + 15) // 16) & (ch + 8 < N)
    chc = tl.where(okc, ch, 0)
    chc8 = tl.where(okc8, ch + 8, 0)
    m = 2 * c
    _w4_mma_out(Y, B, WS, pid_k, a00, chc, m, okc & (m < M), M, N, SPLIT, HAS_BIAS)
    _w4_mma_out(Y, B, WS, pid_k, a01, chc, m + 1, okc & (m + 1 < M), M, N, SPLIT, HAS_BIAS)
    _w4_mma_out(Y, B, WS, pid_k, a02, chc8, m, okc8 & (m < M), M, N, SPLIT, HAS_BIAS)
    _w4_mma_out(Y, B, WS, pid_k, a03, chc8, m + 1, okc8 & (m + 1 < M), M, N, SPLIT, HAS_BIAS)
    if NT == 2:
        _w4_mma_out(Y, B, WS, pid_k, a10, chc, m + 8, okc & (m + 8 < M), M, N, SPLIT, HAS_BIAS)
        _w4_mma_out(Y, B, WS, pid_k, a11, chc, m + 9, okc & (m + 9 < M), M, N, SPLIT, HAS_BIAS)
        _w4_mma_out(Y, B, WS, pid_k, a12, chc8, m + 8, okc8 & (m + 8 < M), M, N, SPLIT, HAS_BIAS)
        _w4_mma_out(Y, B, WS, pid_k, a13, chc8, m + 9, okc8 & (m + 9 < M), M, N, SPLIT, HAS_BIAS)
    if SPLIT > 1:
        tl.debug_barrier()
        done = tl.atomic_add(CNT + pid_n, 1, sem="acq_rel", scope="gpu")
        if done == SPLIT - 1:
            _w4_mma_sum(Y, B, WS, chc, m, okc & (m < M), M, N, SPLIT, HAS_BIAS)
            _w4_mma_sum(Y, B, WS, chc, m + 1, okc & (m + 1 < M), M, N, SPLIT, HAS_BIAS)
            _w4_mma_sum(Y, B, WS, chc8, m, okc8 & (m < M), M, N, SPLIT, HAS_BIAS)
            _w4_mma_sum(Y, B, WS, chc8, m + 1, okc8 & (m + 1 < M), M, N, SPLIT, HAS_BIAS)
            if NT == 2:
                _w4_mma_sum(Y, B, WS, chc, m + 8, okc & (m + 8 < M), M, N, SPLIT, HAS_BIAS)
                _w4_mma_sum(Y, B, WS, chc, m + 9, okc & (m + 9 < M), M, N, SPLIT, HAS_BIAS)
                _w4_mma_sum(Y, B, WS, chc8, m + 8, okc8 & (m + 8 < M), M, N, SPLIT, HAS_BIAS)
                _w4_mma_sum(Y, B, WS, chc8, m + 9, okc8 & (m + 9 < M), M, N, SPLIT, HAS_BIAS)
            tl.atomic_xchg(CNT + pid_n, 0)
""" % (repr(asm_chunk(1, False)), repr(asm_chunk(2, False)), repr(asm_chunk(1, True)),
       repr(asm_chunk(2, True)), repr(_constraints(1)), repr(_constraints(2)))

__all__ = ["MMA_KERNEL", "asm_chunk"]
