"""Triton source text of ``w4_gemv_mma``: the W4A16 GEMV for 2 <= M <= 16 rows of f16 / bf16
x on tensor cores (sm_80+ ``mma.sync.m16n8k16``), documented in ``codegen/triton_w4.py``.
``triton_w4_src.py`` joins this text to the rest."""
from __future__ import annotations


def _asm_mmag(bf16: bool) -> str:
    """PTX of one step over a lane's four consecutive words q = 0..3 of two channels a and b.

    Operands: $0..$3 / $4..$7 out (f32, channel a / b), $8..$11 words of a, $12..$15 words of
    b, $16 / $20 magic + zeff of a / b in both 16-bit halves, $(24 + 4 (4c + p) + q) the 16-bit
    x pair (x[m, k_p], x[m, k_p+4]) of word q for nibble pair p = 0..3 (nibbles p and p + 4,
    k_i = 16 i + j) and row m = groupID + 8 c of x, $56..$59 / $60..$63 the accumulators of a
    / b, $64 / $68 the group scale of a / b.

    The pairs u − zeff of channel a are rows groupID, those of channel b rows groupID + 8 of
    the A operand, k pairs = the lane's nibble pairs; the lane's x pairs are B, whose column n
    is x row n (+ 8 for c = 1). So D(c) holds y[m, a] for m = 8c + 2t, 8c + 2t + 1 (t = lane
    % 4) in its first two registers and y[m, b] in the last two, summed over the quad's 16
    words. Output element q of a / b takes row m = 2t + (q & 1) + 8 (q >> 1).
    """
    magic, ty = ("0x43004300", "bf16x2") if bf16 else ("0x64006400", "f16x2")
    mma = ("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 " if bf16 else
           "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 ")
    lines = ["{", ".reg .b32 a0, a1, a2, a3, b0, b1, b2, b3, t;",
             ".reg .f32 e0, e1, e2, e3, e4, e5, e6, e7;"]
    lines += [f"mov.f32 e{i}, 0f00000000;" for i in range(8)]
    for q in range(4):
        for r, w, z in (("a", f"${8 + q}", "$16"), ("b", f"${12 + q}", "$20")):
            for p in range(4):
                src = w
                if p:
                    lines.append(f"shr.u32 t, {w}, {4 * p};")
                    src = "t"
                # (w >> 4p) & 0x000F000F | magic: magic + u of nibbles p and p + 4, exact
                lines += [f"lop3.b32 {r}{p}, {src}, 0x000F000F, {magic}, 0xEA;", f"sub.{ty} {r}{p}, {r}{p}, {z};"]
        for c in range(2):
            acc = ", ".join(f"e{4 * c + i}" for i in range(4))
            xb = [f"${24 + 4 * (4 * c + p) + q}" for p in range(4)]
            lines += [mma + f"{{{acc}}}, {{a0, b0, a1, b1}}, {{{xb[0]}, {xb[1]}}}, {{{acc}}};",
                      mma + f"{{{acc}}}, {{a2, b2, a3, b3}}, {{{xb[2]}, {xb[3]}}}, {{{acc}}};"]
    lines += ["fma.rn.f32 $0, e0, $64, $56;", "fma.rn.f32 $1, e1, $64, $57;",
              "fma.rn.f32 $2, e4, $64, $58;", "fma.rn.f32 $3, e5, $64, $59;",
              "fma.rn.f32 $4, e2, $68, $60;", "fma.rn.f32 $5, e3, $68, $61;",
              "fma.rn.f32 $6, e6, $68, $62;", "fma.rn.f32 $7, e7, $68, $63;", "}"]
    return "\n".join(lines)


MMAG_KERNEL = r'''

_W4_ASM_MMAG_F16 = tl.constexpr(@F16@)
_W4_ASM_MMAG_BF16 = tl.constexpr(@BF16@)
_W4_ASM_LD_U8 = tl.constexpr("ld.global.nc.u8 $0, [$1];")
_W4_ASM_LD_F32 = tl.constexpr("ld.global.nc.f32 $0, [$1];")


@triton.jit
def _w4_bits16(v):
    """The 16 bits of f16 / bf16 ``v`` in the low half of an int32."""
    return v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def _w4_mmag_wzs(wp, Z, S, b, N, rnc, J: tl.constexpr, GB: tl.constexpr, HAS_ZERO: tl.constexpr,
                 ZC: tl.constexpr):
    """Block b's [rows, 16] words and the [rows, 1] zero points and scales of channels ``rnc``,
    the latter loaded by PTX in the word tile's layout (a ``tl.load`` of the [rows] vectors
    takes a layout of its own and a trip through shared memory, with barriers, per block)."""
    w = tl.load(wp + b * N * J, eviction_policy="evict_first")
    off = ((b // GB) * N + rnc)[:, None]
    if HAS_ZERO:
        zi = tl.inline_asm_elementwise(_W4_ASM_LD_U8, "=r,l", [Z + off], dtype=tl.int32, is_pure=True, pack=1)
    else:
        zi = tl.load(Z + off, mask=off < 0, other=ZC).to(tl.int32)
    s = tl.inline_asm_elementwise(_W4_ASM_LD_F32, "=f,l", [S + off], dtype=tl.float32, is_pure=True, pack=1)
    return w, zi, s


@triton.jit
def _w4_mmag_xraw(X, M, K, xm, b, j, c: tl.constexpr):
    """x[m, 128 b + 16 i + j] for i = 0..7, rows m = xm + 8c ([rows, 1]), words j ([1, 16]),
    as loaded (16-bit; zero outside x)."""
    m = xm + 8 * c
    k = b * 128 + j
    base = X + m.to(tl.int64) * K + k
    r = (tl.load(base, mask=(m < M) & (k < K), other=0),
         tl.load(base + 16, mask=(m < M) & (k + 16 < K), other=0),
         tl.load(base + 32, mask=(m < M) & (k + 32 < K), other=0),
         tl.load(base + 48, mask=(m < M) & (k + 48 < K), other=0),
         tl.load(base + 64, mask=(m < M) & (k + 64 < K), other=0),
         tl.load(base + 80, mask=(m < M) & (k + 80 < K), other=0),
         tl.load(base + 96, mask=(m < M) & (k + 96 < K), other=0),
         tl.load(base + 112, mask=(m < M) & (k + 112 < K), other=0))
    return r


@triton.jit
def _w4_mmag_pairs(r0, r1, r2, r3, r4, r5, r6, r7):
    """The four B pairs (x_p, x_p+4) as int32 (x_p in the low half)."""
    return (_w4_bits16(r0) | (_w4_bits16(r4) << 16), _w4_bits16(r1) | (_w4_bits16(r5) << 16),
            _w4_bits16(r2) | (_w4_bits16(r6) << 16), _w4_bits16(r3) | (_w4_bits16(r7) << 16))


@triton.jit
def w4_gemv_mma(X, P, S, Z, B, Y, WS, CNT, M, N, K, NB, NB_PER: tl.constexpr,
                HAS_ZERO: tl.constexpr, ZC: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                BF16: tl.constexpr, BN: tl.constexpr, J: tl.constexpr, GB: tl.constexpr):
    # 2..16 rows of f16 / bf16 x, group >= 128; BN / 2 = 8 rows per warp: one row of each half
    # per lane, so the lane's x pairs serve exactly one A row pair
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    HB: tl.constexpr = BN // 2
    if BF16:
        STEP: tl.constexpr = _W4_ASM_MMAG_BF16
        MAGIC: tl.constexpr = 0x4300
    else:
        STEP: tl.constexpr = _W4_ASM_MMAG_F16
        MAGIC: tl.constexpr = 0x6400
    j = tl.arange(0, J)[None, :]
    rh = tl.arange(0, HB)
    rna = pid_n * BN + rh
    rnb = rna + HB
    rnca = tl.where(rna < N, rna, 0)
    rncb = tl.where(rnb < N, rnb, 0)
    wpa = P + rnca[:, None] * J + j
    wpb = P + rncb[:, None] * J + j
    xm = (rh % 8)[:, None]
    b0 = pid_k * NB_PER
    nb = tl.minimum(NB_PER, NB - b0)
    acc_a = tl.full([HB, J], 0, tl.float32)
    acc_b = tl.full([HB, J], 0, tl.float32)
    # registers double-buffer the weights and x: block b + 1 loads while block b computes
    wa, za, sa = _w4_mmag_wzs(wpa, Z, S, b0, N, rnca, J, GB, HAS_ZERO, ZC)
    wb, zb, sb = _w4_mmag_wzs(wpb, Z, S, b0, N, rncb, J, GB, HAS_ZERO, ZC)
    u0, u1, u2, u3, u4, u5, u6, u7 = _w4_mmag_xraw(X, M, K, xm, b0, j, 0)
    v0, v1, v2, v3, v4, v5, v6, v7 = _w4_mmag_xraw(X, M, K, xm, b0, j, 1)
    for it in range(nb):
        bq = b0 + tl.minimum(it + 1, nb - 1)
        wa_n, za_n, sa_n = _w4_mmag_wzs(wpa, Z, S, bq, N, rnca, J, GB, HAS_ZERO, ZC)
        wb_n, zb_n, sb_n = _w4_mmag_wzs(wpb, Z, S, bq, N, rncb, J, GB, HAS_ZERO, ZC)
        un0, un1, un2, un3, un4, un5, un6, un7 = _w4_mmag_xraw(X, M, K, xm, bq, j, 0)
        vn0, vn1, vn2, vn3, vn4, vn5, vn6, vn7 = _w4_mmag_xraw(X, M, K, xm, bq, j, 1)
        p00, p01, p02, p03 = _w4_mmag_pairs(u0, u1, u2, u3, u4, u5, u6, u7)
        p10, p11, p12, p13 = _w4_mmag_pairs(v0, v1, v2, v3, v4, v5, v6, v7)
        # magic + zeff in both halves: 128 + z as bf16, 1024 + z as f16 (exact)
        zza = (za | MAGIC) * 0x10001
        zzb = (zb | MAGIC) * 0x10001
        acc_a, acc_b = tl.inline_asm_elementwise(
            STEP, "=f," * 8 + "r," * 48 + "f," * 15 + "f",
            [wa, wb, zza, zzb, p00, p01, p02, p03, p10, p11, p12, p13, acc_a, acc_b, sa, sb],
            dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
        wa, za, sa = wa_n, za_n, sa_n
        wb, zb, sb = wb_n, zb_n, sb_n
        u0, u1, u2, u3, u4, u5, u6, u7 = un0, un1, un2, un3, un4, un5, un6, un7
        v0, v1, v2, v3, v4, v5, v6, v7 = vn0, vn1, vn2, vn3, vn4, vn5, vn6, vn7
    # element (r, j = 4t + q) holds y[m, channel r] with m = 2t + (q & 1) + 8 (q >> 1)
    jj = tl.arange(0, J)
    rm = 2 * (jj // 4) + (jj % 2) + 8 * ((jj % 4) // 2)
    y = tl.reshape(tl.permute(tl.join(acc_a, acc_b), (1, 0, 2)), [J, BN])
    rn = tl.reshape(tl.join(rna, rnb), [BN])
    _w4_finish(Y, B, WS, CNT, y, rm, rn, M, N, pid_n, pid_k, SPLIT, HAS_BIAS, False)
'''.replace("@F16@", repr(_asm_mmag(False))).replace("@BF16@", repr(_asm_mmag(True)))

__all__ = ["MMAG_KERNEL"]
