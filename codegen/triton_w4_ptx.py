"""Triton source text of the W4A16 kernels whose inner step is inline PTX: the f16x2 GEMV
(``w4_gemv_h2``, M = 1) and the 16-bit operand pairs of the nibble-block GEMM (``SWAP`` 3).
``codegen/triton_w4.py`` documents them; ``triton_w4_src.py`` joins this text to the rest."""
from __future__ import annotations


def _asm_nib_pair(i: int, f16: bool) -> str:
    """PTX turning nibble ``i`` of two elements' words ($1, $2) into their pair of (u - zeff) in
    x's 16-bit type, exact: ``prmt`` gathers the byte holding the nibble of each word into the
    two halves, ``(t & 0x000F000F) | magic`` is (magic + u) per half (1024 + u as f16, 128 + u as
    bf16), and one ``sub`` of (magic + zeff) leaves u - zeff ($3, $4: magic + zeff of each element
    in both halves; the low half of $3 and the high half of $4 make the pair). $0 gets the pair,
    the low half from $1. Elementwise whichever two elements Triton packs together."""
    b = i // 2
    sel = b | (b << 4) | ((4 + b) << 8) | ((4 + b) << 12)
    magic, ty = ("0x64006400", "f16x2") if f16 else ("0x43004300", "bf16x2")
    lines = ["{", ".reg .b32 t, z;", f"prmt.b32 t, $1, $2, {hex(sel)};", "prmt.b32 z, $3, $4, 0x7610;"]
    if i % 2:
        lines.append("shr.u32 t, t, 4;")
    lines += [f"lop3.b32 t, t, 0x000F000F, {magic}, 0xEA;", f"sub.{ty} $0, t, z;", "}"]
    return "\n".join(lines)


def _asm_word4(fold: bool = False) -> str:
    """PTX of one f16x2 step over a thread's four consecutive words of one channel (see
    ``w4_gemv_h2``). Operands: $0..$3 out (f32), $4..$7 the words, $8..$11 zz = (1024 + zeff)
    in both f16 halves, $12..$27 the f16 pairs (x_j, x_64+j), (x_16+j / 16, x_80+j / 16),
    (x_32+j, x_96+j), (x_48+j / 16, x_112+j / 16) of each word (bits: low half first). $0 gets
    the four words' sum of x * (u - zeff); $1..$3 get 0."""
    lines = ["{", ".reg .b32 a, b, c, d, t, h, g, z16;", ".reg .b16 hl, hh;", ".reg .f32 fl, fh;",
             # 1024 + 16 zeff, for the nibbles read in place at bits 4..7 of a half
             "and.b32 z16, $8, 0x000F000F;", "shl.b32 z16, z16, 4;", "or.b32 z16, z16, 0x64006400;"]
    for q in range(4):
        w = f"${4 + q}"
        lines += [f"lop3.b32 a, {w}, 0x000F000F, 0x64006400, 0xEA;",    # (w & m) | magic
                  f"lop3.b32 b, {w}, 0x00F000F0, 0x64006400, 0xEA;",
                  f"shr.u32 t, {w}, 8;",
                  "lop3.b32 c, t, 0x000F000F, 0x64006400, 0xEA;",
                  "lop3.b32 d, t, 0x00F000F0, 0x64006400, 0xEA;",
                  # (1024 + u) - (1024 + zeff): exact small integers (times 16 for b, d)
                  "sub.f16x2 a, a, $8;", "sub.f16x2 b, b, z16;", "sub.f16x2 c, c, $8;", "sub.f16x2 d, d, z16;"]
        if q == 0:
            lines += [f"mul.f16x2 h, a, ${12 + q};", f"mul.f16x2 g, b, ${16 + q};"]
        else:
            lines += [f"fma.rn.f16x2 h, a, ${12 + q}, h;", f"fma.rn.f16x2 g, b, ${16 + q}, g;"]
        lines += [f"fma.rn.f16x2 h, c, ${20 + q}, h;", f"fma.rn.f16x2 g, d, ${24 + q}, g;"]
    lines += ["add.f16x2 h, h, g;", "mov.b32 {hl, hh}, h;", "cvt.f32.f16 fl, hl;", "cvt.f32.f16 fh, hh;"]
    if fold:
        # acc' = acc + sum * (scale 2^e) in the first of the four registers, the rest unchanged
        lines += ["add.f32 fl, fl, fh;", "fma.rn.f32 $0, fl, $32, $28;", "mov.b32 $1, $29;",
                  "mov.b32 $2, $30;", "mov.b32 $3, $31;", "}"]
    else:
        lines += ["add.f32 $0, fl, fh;", "mov.b32 $1, 0f00000000;", "mov.b32 $2, 0f00000000;",
                  "mov.b32 $3, 0f00000000;", "}"]
    return "\n".join(lines)



def _asm_word4_rows(rows: int) -> str:
    """PTX of the f16x2 step of ``w4_gemv_h2r`` over a thread's four consecutive words of one
    channel and ``rows`` rows of x: each word is decoded once (as in :func:`_asm_word4`) and
    meets every row's f16 pairs in that row's own f16x2 chains. Operands: $0..$3 out (f32),
    $4..$7 the words, $8..$11 zz, then per row r the pairs (x_j, x_64+j), (x_16+j / 16,
    x_80+j / 16), (x_32+j, x_96+j), (x_48+j / 16, x_112+j / 16) of the four words at
    $12 + 16 r + 4 t + q (t the pair, q the word), then acc (4) and scale (4). Slot r of the
    four registers accumulates row r: $r = acc_r + sum_r * scale_r; slots from ``rows`` on
    pass acc through."""
    a0, s0 = 12 + 16 * rows, 16 + 16 * rows
    pair = (lambda r, t, q: f"${12 + 16 * r + 4 * t + q}")  # noqa: E731
    chains = ", ".join(f"h{r}, g{r}" for r in range(rows))
    lines = ["{", f".reg .b32 a, b, c, d, t, z16, {chains};", ".reg .b16 hl, hh;", ".reg .f32 fl, fh;",
             "and.b32 z16, $8, 0x000F000F;", "shl.b32 z16, z16, 4;", "or.b32 z16, z16, 0x64006400;"]
    for q in range(4):
        w = f"${4 + q}"
        lines += [f"lop3.b32 a, {w}, 0x000F000F, 0x64006400, 0xEA;",
                  f"lop3.b32 b, {w}, 0x00F000F0, 0x64006400, 0xEA;",
                  f"shr.u32 t, {w}, 8;",
                  "lop3.b32 c, t, 0x000F000F, 0x64006400, 0xEA;",
                  "lop3.b32 d, t, 0x00F000F0, 0x64006400, 0xEA;",
                  f"sub.f16x2 a, a, ${8 + q};", "sub.f16x2 b, b, z16;", f"sub.f16x2 c, c, ${8 + q};",
                  "sub.f16x2 d, d, z16;"]
        for r in range(rows):
            if q == 0:
                lines += [f"mul.f16x2 h{r}, a, {pair(r, 0, q)};", f"mul.f16x2 g{r}, b, {pair(r, 1, q)};"]
            else:
                lines += [f"fma.rn.f16x2 h{r}, a, {pair(r, 0, q)}, h{r};",
                          f"fma.rn.f16x2 g{r}, b, {pair(r, 1, q)}, g{r};"]
            lines += [f"fma.rn.f16x2 h{r}, c, {pair(r, 2, q)}, h{r};", f"fma.rn.f16x2 g{r}, d, {pair(r, 3, q)}, g{r};"]
    for r in range(rows):
        lines += [f"add.f16x2 h{r}, h{r}, g{r};", f"mov.b32 {{hl, hh}}, h{r};", "cvt.f32.f16 fl, hl;",
                  "cvt.f32.f16 fh, hh;", "add.f32 fl, fl, fh;", f"fma.rn.f32 ${r}, fl, ${s0 + r}, ${a0 + r};"]
    lines += [f"mov.b32 ${r}, ${a0 + r};" for r in range(rows, 4)] + ["}"]
    return "\n".join(lines)

H2_KERNEL = r'''

_W4_ASM_WORD4 = tl.constexpr(%s)
_W4_ASM_WORD4_FOLD = tl.constexpr(%s)
_W4_ASM_PACK2 = tl.constexpr("cvt.rn.f16x2.f32 $0, $2, $1;")


@triton.jit
def _w4_pack2(lo, hi):
    """The f16 pair (lo, hi) as one int32 (lo in the low half), rounded to nearest."""
    return tl.inline_asm_elementwise(_W4_ASM_PACK2, "=r,f,f", [lo, hi], dtype=tl.int32, is_pure=True,
                                     pack=1)


@triton.jit
def _w4_maxabs(a, b):
    return tl.maximum(a, b)


@triton.jit
def _w4_sum(a, b):
    return a + b


@triton.jit
def _w4_h2_wzs(wp, Z, S, b, N, rnc, J: tl.constexpr, GB: tl.constexpr, HAS_ZERO: tl.constexpr,
               ZC: tl.constexpr, EVICT: tl.constexpr):
    """Block b's [BN, J] words, effective zero points (int32) and scales of channels ``rnc``."""
    if EVICT:
        w = tl.load(wp + b * N * J, eviction_policy="evict_first")
    else:
        w = tl.load(wp + b * N * J)
    if HAS_ZERO:
        zi = tl.load(Z + (b // GB) * N + rnc).to(tl.int32)
    else:
        # never reads (mask false): a constant would be hoisted and change the layouts
        zi = tl.load(Z + (b // GB) * N + rnc, mask=rnc < 0, other=ZC).to(tl.int32)
    return w, zi, tl.load(S + (b // GB) * N + rnc)


@triton.jit
def _w4_xscale(amax):
    """(2^-e, 2^-e / 16, 2^e) with 2^-e amax in [8, 16) (e clamped to normal floats)."""
    e = (amax.to(tl.int32, bitcast=True) >> 23) & 255
    e = tl.minimum(tl.maximum(e, 4), 254)
    inv = ((257 - e) << 23).to(tl.float32, bitcast=True)
    return inv, inv * 0.0625, ((e - 3) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _w4_xblock(X, b, j, K, EVEN_K: tl.constexpr):
    """x[k0 + i*16 + j] for i = 0..7 (k0 = 128 b) in f32: the values nibble i of word j meets."""
    k = b * 128 + j
    if EVEN_K:
        r = (tl.load(X + k).to(tl.float32), tl.load(X + k + 16).to(tl.float32),
             tl.load(X + k + 32).to(tl.float32), tl.load(X + k + 48).to(tl.float32),
             tl.load(X + k + 64).to(tl.float32), tl.load(X + k + 80).to(tl.float32),
             tl.load(X + k + 96).to(tl.float32), tl.load(X + k + 112).to(tl.float32))
    else:
        r = (tl.load(X + k, mask=k < K, other=0).to(tl.float32),
             tl.load(X + k + 16, mask=k + 16 < K, other=0).to(tl.float32),
             tl.load(X + k + 32, mask=k + 32 < K, other=0).to(tl.float32),
             tl.load(X + k + 48, mask=k + 48 < K, other=0).to(tl.float32),
             tl.load(X + k + 64, mask=k + 64 < K, other=0).to(tl.float32),
             tl.load(X + k + 80, mask=k + 80 < K, other=0).to(tl.float32),
             tl.load(X + k + 96, mask=k + 96 < K, other=0).to(tl.float32),
             tl.load(X + k + 112, mask=k + 112 < K, other=0).to(tl.float32))
    return r


@triton.jit
def _w4_f32_word(w, zf, x0, x1, x2, x3, x4, x5, x6, x7):
    """sum_i x_i (u_i - zeff) of each word in f32 (the interpreter's stand-in for the PTX step:
    same values up to the f16 rounding of the pairs and the f16x2 partial sums)."""
    wh = w >> 20
    r = x0[None, :] * (_w4_nib(w, wh, 0) - (zf + 8388608.0)[:, None])
    r += (x1 * 0.0625)[None, :] * (_w4_nib(w, wh, 1) - (zf * 16.0 + 8388608.0)[:, None])
    r += (x2 * 0.00390625)[None, :] * (_w4_nib(w, wh, 2) - (zf * 256.0 + 8388608.0)[:, None])
    r += (x3 * 0.000244140625)[None, :] * (_w4_nib(w, wh, 3) - (zf * 4096.0 + 8388608.0)[:, None])
    r += (x4 * 0.0000152587890625)[None, :] * (_w4_nib(w, wh, 4) - (zf * 65536.0 + 8388608.0)[:, None])
    r += x5[None, :] * (_w4_nib(w, wh, 5) - (zf + 8388608.0)[:, None])
    r += (x6 * 0.0625)[None, :] * (_w4_nib(w, wh, 6) - (zf * 16.0 + 8388608.0)[:, None])
    r += (x7 * 0.00390625)[None, :] * (_w4_nib(w, wh, 7) - (zf * 256.0 + 8388608.0)[:, None])
    return r


@triton.jit
def _w4_xmax(X, K, XCH: tl.constexpr):
    """max |x| over one row of x (K values, XCH chunks of 1024), in f32."""
    ga = tl.full([1024], 0, tl.float32)
    for c in tl.static_range(XCH):
        kc = c * 1024 + tl.arange(0, 1024)
        ga = tl.maximum(ga, tl.abs(tl.load(X + kc, mask=kc < K, other=0).to(tl.float32)))
    return tl.reduce(ga, 0, _w4_maxabs)


@triton.jit
def _w4_fixed_sum(y, xmax, SMAX, WS, rnc, mn, SPLIT: tl.constexpr, NB_PER: tl.constexpr):
    """This program's partials ``y`` of channels ``rnc`` into their int64 accumulators WS:
    (the totals, the channels whose last partial this program brought; their accumulators
    are reset for the next launch). ``xmax`` is max |x| over the row's whole K."""
    # One 64-bit atomic per channel both adds this partial and counts the arrival, so the
    # program that brings the last one holds the total without another round trip to
    # memory (the store / fence / counter / load tail cost 1.9 of 19.4 us at M = 1 on an
    # H200). The partial is an integer in units of 2^ex, with ex such that
    # |sum| <= SPLIT * 128 * NB_PER * 15 * max|x| * max|scale| < 2^(ex + 50): exact to
    # 2^-50 of that bound, and the sum is independent of the arrival order. Bits 56..62
    # count arrivals; each partial is biased by 2^50 to stay non-negative (SPLIT < 32).
    bound = xmax * tl.load(SMAX + rnc) * (SPLIT * NB_PER * 128 * 15.0)
    eb = tl.maximum((bound.to(tl.int32, bitcast=True) >> 23) & 255, 1)   # bound < 2^(eb - 126)
    ex = (eb - 176).to(tl.int64)
    down = ((1023 - ex) << 52).to(tl.float64, bitcast=True)
    up = ((1023 + ex) << 52).to(tl.float64, bitcast=True)
    # a non-finite partial (inf / NaN in x) must not reach the counter bits: it adds 0 and
    # the outputs become NaN below
    okx = xmax <= 3.0e38
    yq = tl.where(okx, tl.where(tl.abs(y) <= 3.0e38, y, 0.0), 0.0).to(tl.float64) * down
    q = tl.floor(tl.minimum(tl.maximum(yq, -1125899906842624.0), 1125899906842624.0) + 0.5).to(tl.int64)
    one = q + (1 << 50) + (1 << 56)
    old = tl.atomic_add(WS + rnc, one, mask=mn, sem="relaxed", scope="gpu")
    last = mn & ((old >> 56) == SPLIT - 1)
    tot = ((old + one) & ((1 << 56) - 1)) - SPLIT * (1 << 50)
    tl.store(WS + rnc, tl.full(one.shape, 0, tl.int64), mask=last)          # ready for the next launch
    # inf / NaN in x have no fixed-point form: the outputs become NaN
    return tl.where(okx, (tot.to(tl.float64) * up).to(tl.float32), float("nan")), last



@triton.jit
def _w4_h2_out(y, xmax, SMAX, WS, B, Y, rn, rnc, mn, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                NB_PER: tl.constexpr, ROUND_BF16: tl.constexpr):
    """One row's channel sums to y (bias, rounding): through the fixed-point split-K sum when
    SPLIT > 1 (``xmax``: max |x| of the row), else directly."""
    last = mn
    if SPLIT > 1:
        y, last = _w4_fixed_sum(y, xmax, SMAX, WS, rnc, mn, SPLIT, NB_PER)
    if HAS_BIAS:
        y = y + tl.load(B + rnc).to(tl.float32)
    if ROUND_BF16:
        y = _sf_round_bf16(y)
    tl.store(Y + rn, y.to(Y.dtype.element_ty), mask=last)


@triton.jit
def _w4_h2_tile(P, N, NB, NB_PER: tl.constexpr, BN: tl.constexpr, J: tl.constexpr):
    """A GEMV program's place: (pid_n, pid_k, its channels rn, their mask, rn clamped, the
    word index j, the [BN, J] word pointers of block 0, its first block b0, its block count)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BN + tl.arange(0, BN)
    mn = rn < N
    rnc = tl.where(mn, rn, 0)
    j = tl.arange(0, J)
    b0 = pid_k * NB_PER
    return pid_n, pid_k, rn, mn, rnc, j, P + rnc[:, None] * J + j[None, :], b0, tl.minimum(NB_PER, NB - b0)



@triton.jit
def w4_gemv_h2(X, P, S, Z, B, Y, WS, CNT, SMAX, N, K, NB, NB_PER: tl.constexpr,
               HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
               SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr, ROUND_BF16: tl.constexpr,
               EVEN_K: tl.constexpr, ASM: tl.constexpr, FOLD: tl.constexpr, EVICT: tl.constexpr,
               XB: tl.constexpr, BN: tl.constexpr, J: tl.constexpr, GB: tl.constexpr,
               FIXED: tl.constexpr, XCH: tl.constexpr):
    # one row of f16 / bf16 x, group >= 128 (GB = group / 128 blocks share a scale)
    pid_n, pid_k, rn, mn, rnc, j, wp, b0, nb = _w4_h2_tile(P, N, NB, NB_PER, BN, J)
    # a power-of-two scale 2^-e puts the x amax in [8, 16): the f16 products x (u - z)
    # (|u - z| <= 15) and the sums of 16 of them stay far below 65504. XB: one scale per block
    # (a warp-local max of the 128 x values it already holds), else one per program: from the
    # max over all of K with FIXED, else from a scan of the program's x slice
    if FIXED:
        # max |x| over all of K: every program of a channel block derives the same
        # fixed-point unit from it (and the channel's largest scale) for the split-K sum
        xmax_all = _w4_xmax(X, K, XCH)
        if not XB:
            inv, inv16, back = _w4_xscale(xmax_all)
    elif not XB:
        kk = b0 * 128 + tl.arange(0, 128 * NB_PER)
        xa = tl.abs(tl.load(X + kk, mask=kk < tl.minimum(K, (b0 + nb) * 128), other=0).to(tl.float32))
        inv, inv16, back = _w4_xscale(tl.reduce(xa, 0, _w4_maxabs))
    acc = tl.full([BN, J], 0, tl.float32)
    # registers double-buffer the weight stream: block b + 1 loads while block b computes
    # (the first block requested before the x scan held 23 instead of 19 us on an H200)
    w, zi, s = _w4_h2_wzs(wp, Z, S, b0, N, rnc, J, GB, HAS_ZERO, ZC, EVICT)
    x0, x1, x2, x3, x4, x5, x6, x7 = _w4_xblock(X, b0, j, K, EVEN_K)
    for it in range(nb):
        bq = b0 + tl.minimum(it + 1, nb - 1)
        w_n, zi_n, s_n = _w4_h2_wzs(wp, Z, S, bq, N, rnc, J, GB, HAS_ZERO, ZC, EVICT)
        y0, y1, y2, y3, y4, y5, y6, y7 = _w4_xblock(X, bq, j, K, EVEN_K)
        if ASM:
            if XB:
                xm = tl.maximum(tl.maximum(tl.maximum(tl.abs(x0), tl.abs(x1)), tl.maximum(tl.abs(x2), tl.abs(x3))),
                                tl.maximum(tl.maximum(tl.abs(x4), tl.abs(x5)), tl.maximum(tl.abs(x6), tl.abs(x7))))
                inv, inv16, back = _w4_xscale(tl.reduce(xm, 0, _w4_maxabs))
            p04 = _w4_pack2(x0 * inv, x4 * inv)
            p15 = _w4_pack2(x1 * inv16, x5 * inv16)
            p26 = _w4_pack2(x2 * inv, x6 * inv)
            p37 = _w4_pack2(x3 * inv16, x7 * inv16)
            zz = (zi | 0x6400) * 0x10001
            if FOLD:
                sb = (s * back)[:, None] + tl.full([BN, J], 0, tl.float32)
                acc = tl.inline_asm_elementwise(
                    _W4_ASM_WORD4_FOLD, "=f,=f,=f,=f," + "r," * 24 + "f," * 7 + "f",
                    [w, zz[:, None], p04[None, :], p15[None, :], p26[None, :], p37[None, :], acc, sb],
                    dtype=tl.float32, is_pure=True, pack=4)
            else:
                part = tl.inline_asm_elementwise(
                    _W4_ASM_WORD4, "=f,=f,=f,=f," + "r," * 23 + "r",
                    [w, zz[:, None], p04[None, :], p15[None, :], p26[None, :], p37[None, :]],
                    dtype=tl.float32, is_pure=True, pack=4)
                acc += part * (s * back)[:, None]
        else:
            acc += _w4_f32_word(w, zi.to(tl.float32), x0, x1, x2, x3, x4, x5, x6, x7) * s[:, None]
        w, zi, s = w_n, zi_n, s_n
        x0, x1, x2, x3, x4, x5, x6, x7 = y0, y1, y2, y3, y4, y5, y6, y7
    y = tl.reduce(acc, 1, _w4_sum)
    if SPLIT > 1 and FIXED:
        _w4_h2_out(y, xmax_all, SMAX, WS, B, Y, rn, rnc, mn, HAS_BIAS, SPLIT, NB_PER, ROUND_BF16)
    elif SPLIT > 1:
        tl.store(WS + pid_k * N + rn, y, mask=mn)
        tl.debug_barrier()
        done = tl.atomic_add(CNT + pid_n, 1, sem="acq_rel", scope="gpu")
        if done == SPLIT - 1:
            # the last program of this channel block sums the partials (fixed tree order)
            ks = tl.arange(0, SPLIT_P2)
            t = tl.load(WS + ks[:, None] * N + rnc[None, :], mask=(ks < SPLIT)[:, None] & mn[None, :],
                        other=0, cache_modifier=".cg")
            _w4_h2_out(tl.reduce(t, 0, _w4_sum), 0.0, SMAX, WS, B, Y, rn, rnc, mn, HAS_BIAS, 1, NB_PER,
                       ROUND_BF16)
            tl.atomic_xchg(CNT + pid_n, 0)
    else:
        _w4_h2_out(y, 0.0, SMAX, WS, B, Y, rn, rnc, mn, HAS_BIAS, 1, NB_PER, ROUND_BF16)


_W4_ASM_ROWS2 = tl.constexpr(%s)


@triton.jit
def _w4_slot2(p0, p1, BN: tl.constexpr, J: tl.constexpr):
    """Word sums [BN, J] of rows 0 and 1 as the PTX step leaves them: the sum of words
    4g..4g+3 of row r at column 4g + r (the interpreter's stand-in)."""
    g0 = tl.reduce(tl.reshape(p0, [BN, J // 4, 4]), 2, _w4_sum)
    g1 = tl.reduce(tl.reshape(p1, [BN, J // 4, 4]), 2, _w4_sum)
    sl = tl.arange(0, 4)[None, None, :]
    return tl.reshape(tl.where(sl == 0, g0[:, :, None], tl.where(sl == 1, g1[:, :, None], 0.0)), [BN, J])


@triton.jit
def w4_gemv_h2r(X, P, S, Z, B, Y, WS, SMAX, N, K, NB, NB_PER: tl.constexpr,
                HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr,
                SPLIT: tl.constexpr, ROUND_BF16: tl.constexpr, EVEN_K: tl.constexpr, ASM: tl.constexpr,
                EVICT: tl.constexpr, BN: tl.constexpr, J: tl.constexpr, GB: tl.constexpr, XCH: tl.constexpr):
    # two rows of f16 / bf16 x (M = 2), group >= 128: w4_gemv_h2's loop with each word decoded
    # once for both rows; one split, or 2..31 summed in fixed point (WS: [2, N] int64)
    pid_n, pid_k, rn, mn, rnc, j, wp, b0, nb = _w4_h2_tile(P, N, NB, NB_PER, BN, J)
    # per row, the power-of-two scale of w4_gemv_h2 from max |x| over all of K (which the
    # fixed-point sum needs too); slot r of each four words carries row r's scale back
    xm0 = _w4_xmax(X, K, XCH)
    xm1 = _w4_xmax(X + K, K, XCH)
    inv0, inv0_16, back0 = _w4_xscale(xm0)
    inv1, inv1_16, back1 = _w4_xscale(xm1)
    backv = tl.where(j %% 4 == 0, back0, tl.where(j %% 4 == 1, back1, 0.0))
    acc = tl.full([BN, J], 0, tl.float32)
    w, zi, s = _w4_h2_wzs(wp, Z, S, b0, N, rnc, J, GB, HAS_ZERO, ZC, EVICT)
    a0, a1, a2, a3, a4, a5, a6, a7 = _w4_xblock(X, b0, j, K, EVEN_K)
    c0, c1, c2, c3, c4, c5, c6, c7 = _w4_xblock(X + K, b0, j, K, EVEN_K)
    for it in range(nb):
        bq = b0 + tl.minimum(it + 1, nb - 1)
        w_n, zi_n, s_n = _w4_h2_wzs(wp, Z, S, bq, N, rnc, J, GB, HAS_ZERO, ZC, EVICT)
        d0, d1, d2, d3, d4, d5, d6, d7 = _w4_xblock(X, bq, j, K, EVEN_K)
        e0, e1, e2, e3, e4, e5, e6, e7 = _w4_xblock(X + K, bq, j, K, EVEN_K)
        if ASM:
            zz = (zi | 0x6400) * 0x10001
            acc = tl.inline_asm_elementwise(
                _W4_ASM_ROWS2, "=f,=f,=f,=f," + "r," * 40 + "f," * 7 + "f",
                [w, zz[:, None],
                 _w4_pack2(a0 * inv0, a4 * inv0)[None, :], _w4_pack2(a1 * inv0_16, a5 * inv0_16)[None, :],
                 _w4_pack2(a2 * inv0, a6 * inv0)[None, :], _w4_pack2(a3 * inv0_16, a7 * inv0_16)[None, :],
                 _w4_pack2(c0 * inv1, c4 * inv1)[None, :], _w4_pack2(c1 * inv1_16, c5 * inv1_16)[None, :],
                 _w4_pack2(c2 * inv1, c6 * inv1)[None, :], _w4_pack2(c3 * inv1_16, c7 * inv1_16)[None, :],
                 acc, s[:, None] * backv[None, :]],
                dtype=tl.float32, is_pure=True, pack=4)
        else:
            zf = zi.to(tl.float32)
            acc += _w4_slot2(_w4_f32_word(w, zf, a0, a1, a2, a3, a4, a5, a6, a7) * s[:, None],
                             _w4_f32_word(w, zf, c0, c1, c2, c3, c4, c5, c6, c7) * s[:, None], BN, J)
        w, zi, s = w_n, zi_n, s_n
        a0, a1, a2, a3, a4, a5, a6, a7 = d0, d1, d2, d3, d4, d5, d6, d7
        c0, c1, c2, c3, c4, c5, c6, c7 = e0, e1, e2, e3, e4, e5, e6, e7
    yr = tl.reduce(tl.reshape(acc, [BN, J // 4, 4]), 1, _w4_sum)
    sl = tl.arange(0, 4)[None, :]
    y0 = tl.reduce(tl.where(sl == 0, yr, 0.0), 1, _w4_sum)
    y1 = tl.reduce(tl.where(sl == 1, yr, 0.0), 1, _w4_sum)
    _w4_h2_out(y0, xm0, SMAX, WS, B, Y, rn, rnc, mn, HAS_BIAS, SPLIT, NB_PER, ROUND_BF16)
    _w4_h2_out(y1, xm1, SMAX, WS + N, B, Y + N, rn, rnc, mn, HAS_BIAS, SPLIT, NB_PER, ROUND_BF16)
''' % (repr(_asm_word4()), repr(_asm_word4(True)), repr(_asm_word4_rows(2)))


NIB_KERNEL = r'''

_W4_NIB_F16 = tl.constexpr(%s)
_W4_NIB_BF16 = tl.constexpr(%s)


@triton.jit
def _w4_nib_pairs(w, zz, i: tl.constexpr, KIND: tl.constexpr):
    """Nibble i of words w as (u - zeff) in f16 (KIND 1) / bf16 (KIND 2), two codes per PTX step
    (pairs of consecutive words of a thread; zz = magic + zeff in both halves)."""
    if KIND == 1:
        r = tl.inline_asm_elementwise(_W4_NIB_F16[i], "=r,r,r,r,r", [w, zz], dtype=tl.float16,
                                      is_pure=True, pack=2)
    else:
        r = tl.inline_asm_elementwise(_W4_NIB_BF16[i], "=r,r,r,r,r", [w, zz], dtype=tl.bfloat16,
                                      is_pure=True, pack=2)
    return r
''' % (repr(tuple(_asm_nib_pair(i, True) for i in range(8))), repr(tuple(_asm_nib_pair(i, False) for i in range(8))))

__all__ = ["H2_KERNEL", "NIB_KERNEL"]
