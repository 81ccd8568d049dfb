"""The W4A16 kernels of weight-only 4-bit ``qlinear`` (codegen/triton_w4.py, runtime/w4pack_gpu.py).

Runs under the Triton interpreter on the CPU (``SF_TRITON_TEST_DEVICE=cuda``: on a GPU). Codes
come from the quant pass's own RTN quantiser (``int_quantize``). Shapes are odd on purpose: K
with a short last group and not a multiple of the 2H block, N not a multiple of the column
block, M in 1, 3, 16, 17, 33 (symbolic batch in the graph tests). Outputs are compared with the
reference interpreter within one rounding of the output type plus 1e-5 of sum |x| |Wd|: the
kernels accumulate in f32, the reference in f64.
"""
from __future__ import annotations

import os

DEVICE = os.environ.get("SF_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from scalefold import api  # noqa: E402
from scalefold.codegen import triton as tgen  # noqa: E402
from scalefold.codegen.schedule import partition  # noqa: E402
from scalefold.codegen import triton_w4  # noqa: E402
from scalefold.codegen.triton_w4 import h2_applies, w4_config, w4_launch, w4_linear  # noqa: E402
from scalefold.ir import dtypes as dt  # noqa: E402
from scalefold.ir.graph import Graph  # noqa: E402
from scalefold.ir.ops.quant import dequant_weight  # noqa: E402
from scalefold.passes.wq_int import int_dequantize, int_quantize  # noqa: E402
from scalefold.runtime import interp  # noqa: E402
from scalefold.runtime.w4pack_gpu import dequant, pack_w4, unpack_codes, w4_layout  # noqa: E402


XT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EPS = {"f32": 2.0 ** -23, "f16": 2.0 ** -10, "bf16": 2.0 ** -7}

pytestmark = [pytest.mark.usefixtures("kernel_cache_dir"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]   # numpy, in the interpreter


def quantised(N: int, K: int, bits: int, group: int, sym: bool, seed: int):
    """(codes in the IR container, scale f32, zero or None, IR dtype name) of a random weight."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=gen)
    codes, delta, zero = int_quantize(w, bits, group, sym)
    wd = "i4" if sym else "u4"
    c = dt.to_container(codes, dt.get(wd))
    z = dt.to_container(zero, dt.get(wd)) if zero is not None else None
    if group <= 0:
        delta = delta[:, 0]
        z = z[:, 0] if z is not None else None
    return c, delta.contiguous(), z, wd


def qgraph(K: int, N: int, *, group: int = 32, bits: int = 4, sym: bool = False,
           bias: bool = True, xd: str = "bf16", seed: int = 0, float_zero: bool = False) -> Graph:
    """x: xd[B, S, K] -> weight-only qlinear with RTN codes."""
    c, s, z, wd = quantised(N, K, bits, group, sym, seed)
    g = Graph("w4")
    x = g.add_input(f"{xd}[B,S,{K}]", "x")
    zv = None
    if z is not None:
        zv = g.add_const(z.float() + 0.25, "f32", "z") if float_zero else g.add_const(z, wd, "z")
    b = g.add_const(torch.randn(N, generator=torch.Generator().manual_seed(seed + 1)), xd, "b") \
        if bias else None
    y = g.add("qlinear", [x, g.add_const(c, wd, "w"), g.add_const(s, "f32", "s"), zv, b],
              {"act": "none", "group": group, "wtype": wd})
    g.set_outputs([y])
    return g


def check(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, wd: torch.Tensor,
          bias: torch.Tensor | None, xd: str, h2: bool = False, dense: bool = False) -> None:
    """``h2``: the f16x2 GEMV ran; on a GPU its f16 products and partial sums (up to 16 per
    lane) allow 2^-9 of sum |x| |Wd| instead of 1e-5 (the interpreter runs its f32 stand-in).
    ``dense``: the dense path ran, whose weight is Wd rounded once to x's dtype (half an ulp of
    x's dtype of sum |x| |Wd| more)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    got, x = got.cpu().double(), x.cpu().double()
    exact = x @ wd.double().T + (bias.cpu().double() if bias is not None else 0)
    bound = x.abs() @ wd.double().abs().T + (bias.cpu().double().abs() if bias is not None else 0)
    err = (got - exact).abs()
    slack = 2.0 ** -9 if h2 and DEVICE != "cpu" else 1e-5
    if dense:
        slack += EPS[xd] / 2
    allowed = EPS[xd] * exact.abs() + slack * bound + 1e-30
    assert bool((err <= allowed).all()), f"max err {err.max()} (allowed {allowed.min()})"
    assert bool(((got - want.cpu().double()).abs() <= 2 * allowed).all())


@pytest.mark.parametrize("K,group,bits,sym", [(200, 32, 4, False), (200, 16, 4, True),
                                              (300, 128, 3, False), (77, 0, 4, True),
                                              (130, 64, 4, False), (50, 128, 4, False)])
def test_pack_unpacks_exactly(K: int, group: int, bits: int, sym: bool) -> None:
    c, s, z, wd = quantised(19, K, bits, group, sym, seed=K + group)
    p = pack_w4(c, s, z, group, sym)
    ge, kp, ngp = w4_layout(K, group)
    assert p.qweight.dtype == torch.int32 and tuple(p.qweight.shape) == (kp // 128, 19, 16)
    assert tuple(p.scales.shape) == (ngp, 19) and kp % 128 == 0 and ge % 16 == 0
    assert torch.equal(unpack_codes(p), c) and unpack_codes(p).dtype == c.dtype
    # word [b, n, j], bits 4i..4i+3: code b*128 + i*16 + j of channel n (as unsigned code; K
    # padded with 0)
    u = torch.zeros(19, kp, dtype=torch.int64)
    u[:, :K] = c.to(torch.int64) + (8 if sym else 0)
    for b, j in [(0, 1), (kp // 128 - 1, 15)]:
        word = int(p.qweight[b, 3, j]) & 0xFFFFFFFF
        assert [(word >> (4 * i)) & 15 for i in range(8)] == \
            [int(u[3, b * 128 + i * 16 + j]) for i in range(8)]
    # GEMM layout: word [r, n], bits 4i..4i+3: code 8r + i of channel n
    assert p.qkn is not None and p.qkn.dtype == torch.int32 and tuple(p.qkn.shape) == (kp // 8, 19)
    assert torch.equal(unpack_codes(p, "kn"), c)
    for r in (0, kp // 8 - 1):
        word = int(p.qkn[r, 5]) & 0xFFFFFFFF
        assert [(word >> (4 * i)) & 15 for i in range(8)] == [int(u[5, 8 * r + i]) for i in range(8)]
    ref = dequant_weight(c, s, z, group, False)
    assert torch.equal(dequant(p), ref)
    zz = z.reshape(19, -1).long() if z is not None else None
    assert torch.equal(dequant(p), int_dequantize(c.long(), s.reshape(19, -1), zz, group if group else K))


def _run_ptx(asm: str, ops: dict[int, int]) -> int:
    """A reading of the few PTX instructions the nibble-pair step uses (prmt, shr, lop3, f16x2 /
    bf16x2 sub) on 32-bit integers; ``ops`` maps $n to its value. Returns $0."""
    regs = {f"${n}": v for n, v in ops.items()}

    def val(x: str) -> int:
        return int(x, 16) if x.startswith("0x") else int(x) if x.isdigit() else regs[x]

    def halves(v: int, ty: str) -> torch.Tensor:
        h = torch.tensor([v & 0xFFFF, v >> 16], dtype=torch.int32).to(torch.int16)
        return h.view(torch.float16 if ty == "f16x2" else torch.bfloat16).float()

    for line in asm.replace("{", "").replace("}", "").split(";"):
        line = line.strip()
        if not line or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [x.strip() for x in args.split(",")]
        if op == "prmt.b32":
            src = val(a[1]) | (val(a[2]) << 32)
            sel = val(a[3])
            regs[a[0]] = sum(((src >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))
        elif op == "shr.u32":
            regs[a[0]] = val(a[1]) >> val(a[2])
        elif op == "lop3.b32":
            x, y, z, lut = val(a[1]), val(a[2]), val(a[3]), val(a[4])
            regs[a[0]] = sum(((lut >> ((((x >> b) & 1) << 2) | (((y >> b) & 1) << 1) | ((z >> b) & 1))) & 1) << b
                             for b in range(32))
        elif op.startswith("sub."):
            ty = op.split(".")[1]
            d = (halves(val(a[1]), ty) - halves(val(a[2]), ty)).to(torch.float16 if ty == "f16x2" else torch.bfloat16)
            lo, hi = (int(v) & 0xFFFF for v in d.view(torch.int16))
            regs[a[0]] = lo | (hi << 16)
        else:
            raise AssertionError(f"instruction not modelled: {op}")
    return regs["$0"]


@pytest.mark.parametrize("f16", [True, False])
def test_nibble_pair_ptx_gives_code_minus_zero(f16: bool) -> None:
    """The PTX of the SWAP 3 operand pairs (only run by GPU tests) read instruction by
    instruction: nibble i of each of two words, minus that element's zero point, as the f16 /
    bf16 pair (low half: the first word), for every nibble and random words and zeros."""
    from scalefold.codegen.triton_w4_ptx import _asm_nib_pair
    gen = torch.Generator().manual_seed(5)
    magic = 0x6400 if f16 else 0x4300
    for _ in range(20):
        w1, w2 = (int(v) for v in torch.randint(0, 2**32, (2,), generator=gen, dtype=torch.int64))
        z1, z2 = (int(v) for v in torch.randint(0, 16, (2,), generator=gen))
        for i in range(8):
            r = _run_ptx(_asm_nib_pair(i, f16), {1: w1, 2: w2, 3: (z1 | magic) * 0x10001,
                                                 4: (z2 | magic) * 0x10001})
            got = torch.tensor([r & 0xFFFF, r >> 16], dtype=torch.int32).to(torch.int16)
            got = got.view(torch.float16 if f16 else torch.bfloat16).float().tolist()
            assert got == [float(((w1 >> 4 * i) & 15) - z1), float(((w2 >> 4 * i) & 15) - z2)], (i, f16)


def test_kn_config_needs_the_gemm_layout() -> None:
    c, s, z, _ = quantised(16, 256, 4, 128, False, seed=4)
    p = pack_w4(c, s, z, 128, False, kn=False).to(DEVICE)
    x = torch.randn(20, 256).to(DEVICE)
    with pytest.raises(ValueError, match="KN config"):
        w4_linear(x, p, None, dict(GEMV=0, KN=1, BM=32, BN=16, BK=64))


def test_bad_group_is_refused() -> None:
    with pytest.raises(ValueError):
        w4_layout(100, 24)


CASES = [  # M, K, N, group, sym, zero-less, x dtype, bias, config
    (1, 200, 37, 32, False, "f32", True, None),
    (1, 300, 70, 128, False, "bf16", False, dict(GEMV=1, BM=1, BN=16, SPLIT=2)),
    (3, 200, 37, 16, True, "bf16", True, dict(GEMV=1, BM=4, BN=16, SPLIT=3)),
    (3, 77, 20, 0, True, "f16", True, None),
    (16, 300, 70, 128, False, "f16", True, dict(GEMV=0, BM=16, BN=32, SPLIT=2, SWAP=1)),
    (17, 200, 37, 32, True, "bf16", False, dict(GEMV=0, BM=16, BN=16, SPLIT=1, SWAP=1)),
    (5, 520, 40, 128, False, "bf16", True, dict(GEMV=0, BM=16, BN=16, SPLIT=3)),
    (20, 300, 40, 128, True, "f16", True, dict(GEMV=0, BM=16, BN=16, SPLIT=2, DOTS8=1)),
    (7, 1000, 24, 0, False, "bf16", False, dict(GEMV=0, BM=16, BN=16, SWAP=1, DOTS8=1)),
    (2, 520, 40, 128, False, "bf16", True, dict(GEMV=1, BM=2, BN=16, SPLIT=4)),
    (33, 130, 40, 64, False, "f32", True, dict(GEMV=0, BM=32, BN=32, SPLIT=2)),
    (17, 260, 24, 128, False, "bf16", True, None),
    # weights as operand A, nibbles to 16-bit pairs in PTX (on a GPU; the interpreter swaps only)
    (16, 300, 70, 128, False, "bf16", True, dict(GEMV=0, BM=16, BN=64, SPLIT=2, SWAP=3, DOTS8=1)),
    (17, 520, 90, 128, True, "f16", False, dict(GEMV=0, BM=16, BN=64, SPLIT=3, SWAP=3, DOTS8=1)),
    (9, 1000, 24, 0, False, "bf16", False, dict(GEMV=0, BM=16, BN=16, SWAP=3, DOTS8=1)),
    (20, 256, 40, 128, False, "f32", True, dict(GEMV=0, BM=32, BN=64, SWAP=3, DOTS8=1)),
    # the [K/8, N] GEMM: splits, swapped operands, one / several groups per K block, short K
    (16, 300, 70, 128, False, "bf16", True, dict(KN=1, BM=16, BN=32, BK=64, SPLIT=2)),
    (17, 200, 37, 32, True, "f16", False, dict(KN=1, BM=16, BN=16, BK=64, SWAP=1)),
    (33, 130, 40, 64, False, "f32", True, dict(KN=1, BM=32, BN=32, BK=128, RESHAPE=1, SPLIT=3)),
    (7, 77, 20, 0, True, "bf16", True, dict(KN=1, BM=16, BN=16, BK=32, RESHAPE=1, SWAP=1)),
    (20, 300, 40, 16, False, "bf16", True, dict(KN=1, BM=16, BN=16, BK=64, RESHAPE=1)),
    (64, 260, 24, 128, False, "f16", True, None),
    # the f16x2 GEMV (M = 1, f16 / bf16 x, groups of whole blocks): splits, short K, N tails,
    # a group of two blocks, one group for all of K, no zero point, the default config
    (1, 300, 70, 128, False, "bf16", True, dict(GEMV=1, BM=1, H2=1, H2_BN=32, H2_BPS=1, H2_XB=1)),
    (1, 520, 40, 256, True, "f16", False, dict(GEMV=1, BM=1, H2=1, H2_BN=16, H2_BPS=2)),  # BN -> 32
    # its two-row form (M = 2): fixed-point splits, a group of two blocks, one group, the default
    (2, 300, 70, 128, False, "bf16", True, dict(GEMV=1, BM=2, H2=1, H2_BN=32, H2_BPS=1)),
    (2, 520, 40, 256, True, "f16", False, dict(GEMV=1, BM=2, H2=1, H2_BN=16, H2_BPS=2)),
    (2, 1000, 24, 0, False, "bf16", False, dict(GEMV=1, BM=2, H2=1, H2_BN=32, H2_BPS=4)),
    (2, 384, 300, 128, False, "bf16", True, None),
    (2, 256, 16, 128, False, "f16", True, None),
    (1, 700, 90, 128, False, "bf16", True, dict(GEMV=1, BM=1, H2=1, H2_BN=64, H2_BPS=2, H2_FOLD=1,
                                                H2_EVICT=1, num_warps=8)),
    (1, 1000, 24, 0, False, "bf16", True, dict(GEMV=1, BM=1, H2=1, H2_BN=32, H2_BPS=4)),
    (1, 256, 16, 128, False, "f16", True, None),
    (1, 384, 300, 128, False, "bf16", True, None),
    # the dense path (dequantise, then torch's GEMM): one chunk, chunks with a short last one,
    # groups below a block, one group for all of K, no zero point
    (20, 300, 70, 128, False, "bf16", True, dict(DENSE=1)),
    (33, 200, 37, 32, True, "f16", False, dict(DENSE=1, DENSE_CHUNK=16)),
    (5, 77, 20, 0, True, "f32", True, dict(DENSE=1, DENSE_CHUNK=8)),
    (17, 520, 40, 16, False, "bf16", True, dict(DENSE=1, DENSE_CHUNK=64)),
]


def direct_problem(M: int, K: int, N: int, group: int, sym: bool, xd: str, bias: bool):
    """(packed weights on DEVICE, x, bias or None, dequantised weight) of a random problem."""
    c, s, z, _ = quantised(N, K, 4, group, sym, seed=M * K + N)
    p = pack_w4(c, s, z, group, sym).to(DEVICE)
    gen = torch.Generator().manual_seed(M + K)
    x = torch.randn(M, K, generator=gen).to(XT[xd])
    b = torch.randn(N, generator=gen).to(XT[xd]) if bias else None
    return p, x, b, dequant_weight(c, s, z, group, False)


@pytest.mark.parametrize("M,K,N,group,sym,xd,bias,config", CASES)
def test_kernels_direct(M: int, K: int, N: int, group: int, sym: bool, xd: str, bias: bool,
                        config: dict | None) -> None:
    """Both kernels, with splits and several programs, against x @ Wd^T in f64."""
    p, x, b, wd = direct_problem(M, K, N, group, sym, xd, bias)
    y = w4_linear(x.to(DEVICE), p, b.to(DEVICE) if b is not None else None, config)
    ref = (x.double() @ wd.double().T + (b.double() if b is not None else 0)).to(XT[xd])
    check(y, ref, x, wd, b, xd, h2=uses_h2(M, xd, p, config), dense=bool((config or {}).get("DENSE")))


def uses_h2(M: int, xd: str, p, config: dict | None) -> bool:
    return bool((config or {"H2": 1}).get("H2", 0)) and h2_applies(M, xd, p)


@pytest.mark.parametrize("xd", ["bf16", "f16"])
def test_h2_gemv_wide_x_range(xd: str) -> None:
    """x with an outlier 1e4 times its other entries (f16 pairs are scaled per program by a power
    of two: no overflow, small entries keep their share) and an all-zero row block."""
    K, N = 1024, 96
    c, s, z, _ = quantised(N, K, 4, 128, False, seed=7)
    p = pack_w4(c, s, z, 128, False).to(DEVICE)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, K, generator=gen) * 0.5
    x[0, 5], x[0, 700] = 3000.0 if xd == "bf16" else 600.0, -1200.0 if xd == "bf16" else -300.0
    x[0, 256:384] = 0
    x = x.to(XT[xd])
    wd = dequant_weight(c, s, z, 128, False)
    for xb in (0, 1):      # one x scale per program, or per block
        cfg = dict(GEMV=1, BM=1, H2=1, H2_BN=32, H2_BPS=2, H2_XB=xb)
        y = w4_linear(x.to(DEVICE), p, None, cfg)
        ref = (x.double() @ wd.double().T).to(XT[xd])
        assert bool(torch.isfinite(y.float()).all())
        check(y, ref, x, wd, None, xd, h2=True)


def repeated(x: torch.Tensor, p, cfg: dict) -> tuple:
    """(launch, y, the outputs of three launches into a zeroed y), asserting that they are
    identical: split-K accumulators are clean again after each launch, and integer sums do not
    depend on the arrival order."""
    launch, y = w4_launch(x.to(DEVICE), p, None, cfg)
    ys = []
    for _ in range(3):
        y.fill_(0)
        launch([x.to(DEVICE), x.to(DEVICE), y])
        ys.append(y.clone())
    assert all(torch.equal(ys[0], t) for t in ys[1:])
    return launch, y, ys


@pytest.mark.parametrize("xd", ["bf16", "f16"])
def test_h2_two_rows_are_independent(xd: str) -> None:
    """The two-row GEMV scales each row of x by its own power of two and sums each in its own
    fixed-point accumulators: a row 1e-6 (f16: 1e-3) times the other keeps its precision, inf in one row
    makes that row NaN and leaves the other exact, and repeated launches are identical (the
    accumulators are clean again)."""
    K, N = 1100, 70                       # 9 blocks: 5 splits of 2 (the last short), short K
    c, s, z, _ = quantised(N, K, 4, 128, False, seed=12)
    p = pack_w4(c, s, z, 128, False).to(DEVICE)
    wd = dequant_weight(c, s, z, 128, False)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, K, generator=gen)
    x[1] *= 1e-6 if xd == "bf16" else 1e-3      # f16 outputs below 6e-5 would be subnormal
    x[0, 9] = 300.0
    x = x.to(XT[xd])
    cfg = dict(GEMV=1, BM=2, H2=1, H2_BN=32, H2_BPS=2)
    launch, y, ys = repeated(x, p, cfg)
    ref = (x.double() @ wd.double().T).to(XT[xd])
    for r in range(2):                    # each row against its own bound
        check(ys[0][r:r + 1], ref[r:r + 1], x[r:r + 1], wd, None, xd, h2=True)
    for bad in range(2):
        xi = x.clone()
        xi[bad, 3] = float("inf")
        yi = w4_linear(xi.to(DEVICE), p, None, cfg).float().cpu()
        assert bool(torch.isnan(yi[bad]).all())
        assert torch.equal(yi[1 - bad], ys[0][1 - bad].float().cpu())
    launch([x.to(DEVICE), x.to(DEVICE), y])
    assert torch.equal(y, ys[0])


@pytest.mark.parametrize("fixed", [1, 0])
def test_h2_split_k_sum_fixed_point_and_workspace(fixed: int) -> None:
    """The split-K sum of the f16x2 GEMV: with FIXED (the default) one 64-bit atomic per channel
    adds the partial as a fixed-point integer and counts arrivals; the last program writes y
    and zeroes the accumulator. Repeated launches give identical results (the accumulator is
    clean again, and integer sums do not depend on arrival order), values a million times apart
    keep their share, and inf in x gives NaN (FIXED) rather than a wrong finite number."""
    K, N = 1100, 70                       # 9 blocks: 5 splits of 2 (the last short), short K
    c, s, z, _ = quantised(N, K, 4, 128, False, seed=11)
    p = pack_w4(c, s, z, 128, False).to(DEVICE)
    wd = dequant_weight(c, s, z, 128, False)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, K, generator=gen)
    x[0, :256] *= 1e-6                    # the first split's partials are tiny next to the rest
    x = x.to(torch.bfloat16)
    cfg = dict(GEMV=1, BM=1, H2=1, H2_BN=32, H2_BPS=2, H2_FIXED=fixed)
    launch, y, ys = repeated(x, p, cfg)
    check(ys[0], (x.double() @ wd.double().T).to(torch.bfloat16), x, wd, None, "bf16", h2=True)
    xi = x.clone()
    xi[0, 3] = float("inf")
    yi = w4_linear(xi.to(DEVICE), p, None, cfg).float().cpu()
    if fixed:
        assert bool(torch.isnan(yi).all())
    launch([x.to(DEVICE), x.to(DEVICE), y])           # and the workspace is still clean
    assert torch.equal(y, ys[0])


BS = [(1, 1), (1, 3), (2, 8), (17, 1), (3, 11), (5, 13)]     # M = 1, 3, 16, 17, 33, 65


@pytest.mark.parametrize("K,N,group,bits,sym,xd,bias", [
    (200, 37, 32, 4, False, "bf16", True),
    (150, 33, 128, 3, False, "f16", False),
    (96, 20, 16, 4, True, "f32", True),
    (70, 17, 0, 4, False, "bf16", False),
])
def test_graph_symbolic_batch(K: int, N: int, group: int, bits: int, sym: bool, xd: str,
                              bias: bool) -> None:
    g = qgraph(K, N, group=group, bits=bits, sym=sym, bias=bias, xd=xd, seed=K + N)
    assert [k.kind for k in partition(g, tgen.CAPS).kernels] == ["template"]
    cm = api.build_triton(g, DEVICE)
    rendered = tgen.render(cm.schedule)
    assert [tk.launch for tk in rendered] == ["w4"]
    n = g.nodes[0]
    z = n.inputs[3].const if n.inputs[3] is not None else None
    wd = dequant_weight(n.inputs[1].const, n.inputs[2].const, z, group, False)
    bias_t = n.inputs[4].const if bias else None
    for B, S in BS:
        x = torch.randn(B, S, K, generator=torch.Generator().manual_seed(B * 10 + S)).to(XT[xd])
        got, want = cm(x), interp.run(g, x)[0]
        h2 = B * S == 1 and xd != "f32" and (group <= 0 or group >= 128)
        check(got.reshape(B * S, N), want.reshape(B * S, N), x.reshape(B * S, K), wd, bias_t, xd, h2)


def test_dense_path_in_a_graph_shares_one_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two W4 linears of a compiled model on the dense path (forced: by default it runs from
    256 rows on a GPU) hold one dense buffer between them, as large as the larger weight, and
    give the reference's numbers at every batch."""
    monkeypatch.setattr(triton_w4, "w4_config", lambda M, N, K, interpret=False: {"DENSE": 1})
    g = qgraph(200, 37, group=32, seed=3)
    h = qgraph(37, 70, group=16, sym=True, seed=4)
    # chain them: x [B, S, 200] -> 37 -> 70
    y = g.add("qlinear", [g.outputs[0]] + [g.add_const(v.const, v.dtype.name, f"{v.name}2") if v is not None
                                          else None for v in h.nodes[0].inputs[1:]], dict(h.nodes[0].attrs))
    g.set_outputs([y])
    cm = api.build_triton(g, DEVICE)
    launches = [k for k in cm._runner.kernels.values() if getattr(k, "tk", None) is not None and k.tk.launch == "w4"]
    assert len(launches) == 2 and launches[0].scratch is launches[1].scratch
    for B, S in [(2, 8), (3, 11)]:
        x = torch.randn(B, S, 200, generator=torch.Generator().manual_seed(B + S)).to(torch.bfloat16)
        got, want = cm(x), interp.run(g, x)[0]
        err = (got.double() - want.double()).abs().max().item()
        # bf16 weights and outputs of two layers: measured 3.2e-3 of the largest output
        assert err <= 2 ** -6 * want.double().abs().max().item(), err
    bufs = launches[0].scratch._bufs
    assert len(bufs) == 1 and next(iter(bufs.values())).numel() == max(37 * 200, 70 * 37)


def test_source_is_deterministic_and_shared() -> None:
    a = tgen.render(partition(qgraph(200, 37, group=32), tgen.CAPS))
    b = tgen.render(partition(qgraph(200, 37, group=32), tgen.CAPS))
    c = tgen.render(partition(qgraph(96, 20, group=16, sym=True, xd="f16"), tgen.CAPS))
    assert a[0].source == b[0].source == c[0].source
    assert [str(e) for e in a[0].params] == ["B*S", "37", "200"]


@pytest.mark.parametrize("variant", ["float_zero", "group24", "f64"])
def test_variants_w4_refuses(variant: str) -> None:
    """Float zero points and groups that are not a power of two are not W4's: they run the
    general weight-only kernel (``triton_wq.py``); f64 x runs the reference."""
    if variant == "float_zero":
        g = qgraph(64, 8, group=32, float_zero=True)
    elif variant == "group24":
        g = qgraph(96, 8, group=24)
    else:
        g = qgraph(64, 8, group=32, xd="f64")
    assert not triton_w4.w4_supported(g.nodes[0])
    kinds = [k.kind for k in partition(g, tgen.CAPS).kernels]
    if variant == "f64":
        assert kinds == ["reference"]
    else:
        assert kinds == ["template"] and tgen.render(partition(g, tgen.CAPS))[0].launch == "wq"
    assert "W4" in tgen.REFERENCE_OPS["qlinear"]


def test_config_by_m() -> None:
    assert w4_config(1, 8192, 8192)["GEMV"] == 1
    assert w4_config(1, 8192, 8192)["SPLIT"] > 1          # 128 column blocks: split K
    # f16x2 GEMV: 32 blocks of 256 channels x 8 K blocks = 256 programs (about two per SM)
    assert w4_config(1, 8192, 8192)["H2"] == 1 and w4_config(1, 8192, 8192)["H2_BPS"] == 8
    assert w4_config(1, 16384, 16384)["H2_BPS"] == 32
    # M = 2..4: the tensor-core GEMV, 16 K blocks per program (32 on 16384², as swept)
    assert w4_config(2, 8192, 8192)["MMAG"] == 1 and w4_config(4, 8192, 8192)["MMAG_BPS"] == 16
    assert w4_config(3, 16384, 16384)["MMAG_BPS"] == 32 and w4_config(4, 11008, 4096)["MMAG_BPS"] == 16
    assert "MMAG" not in w4_config(5, 8192, 8192) and "MMAG" not in w4_config(2, 8192, 8192, interpret=True)
    # M = 1 blocks: 256 channels while that gives >= 1.5 programs per SM, else 128 (H200 sweep)
    h2 = {(n, k): (w4_config(1, n, k)["H2_BN"], w4_config(1, n, k)["H2_BPS"])
          for n, k in ((8192, 8192), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 4096), (13824, 5120))}
    assert h2 == {(8192, 8192): (256, 8), (11008, 4096): (128, 8), (4096, 11008): (128, 8),
                  (14336, 4096): (256, 8), (4096, 4096): (128, 4), (13824, 5120): (128, 16)}
    # M = 2: the two-row f16x2 GEMV on M = 1's blocks (the tensor-core GEMV as its fallback)
    c2 = w4_config(2, 8192, 8192)
    assert c2["H2"] == 1 and (c2["H2_BN"], c2["H2_BPS"]) == (256, 8) and c2["MMAG"] == 1
    assert w4_config(3, 8192, 8192).get("H2", 0) == 0 and w4_config(2, 8192, 8192, interpret=True)["H2"] == 1
    # M = 16: 128 column blocks x 7 splits, one wave of about seven programs per SM
    assert w4_config(16, 8192, 8192)["BM"] == 16 and w4_config(16, 8192, 8192)["SWAP"] == 3
    assert w4_config(16, 8192, 8192)["SPLIT"] == 7
    assert w4_config(64, 8192, 8192)["SWAP"] == 3 and w4_config(64, 8192, 8192)["SPLIT"] == 4
    assert w4_config(128, 8192, 8192).get("KN", 0) == 0 and w4_config(128, 8192, 8192)["BM"] == 64
    # from 256 rows the dense path (dequantise, then cuBLAS); never on the interpreter
    assert w4_config(256, 8192, 8192) == {"DENSE": 1} == w4_config(4096, 16384, 16384)
    assert "DENSE" not in w4_config(255, 8192, 8192) and "DENSE" not in w4_config(256, 64, 64, interpret=True)
    assert w4_config(3, 8192, 8192, interpret=True)["SPLIT"] == 1


def test_packed_constants_stay_off_the_device_and_no_gemm_layout() -> None:
    """The IR codes, scales and zero points of a W4 qlinear get no device tensor (the kernels
    read their packed copies), and the [K/8, N] GEMM layout is never packed: M = 1, 16 and
    300 all run on the block-major words (M = 300 on a GPU: the dense path dequantises them)."""
    g = qgraph(256, 40, group=128, bias=True, xd="bf16", seed=5)
    n = g.nodes[0]
    cm = api.build_triton(g, DEVICE)
    ex = cm._runner
    held = {slot for slot, _ in ex._consts}
    for v in n.inputs[1:4]:
        assert ex._slot[id(v)] not in held
    assert ex._slot[id(n.inputs[4])] in held                  # the bias is read directly
    (launch,) = [f for f in ex.kernels.values() if getattr(f, "w4", None) is not None]
    z = n.inputs[3].const
    wd = dequant_weight(n.inputs[1].const, n.inputs[2].const, z, 128, False)
    for B, S in [(1, 1), (2, 8)]:
        x = torch.randn(B, S, 256, generator=torch.Generator().manual_seed(B)).to(torch.bfloat16)
        check(cm(x).reshape(B * S, 40), interp.run(g, x)[0].reshape(B * S, 40), x.reshape(B * S, 256), wd,
              n.inputs[4].const, "bf16", h2=B * S == 1)
    x = torch.randn(5, 60, 256, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    check(cm(x).reshape(300, 40), interp.run(g, x)[0].reshape(300, 40), x.reshape(300, 256), wd,
          n.inputs[4].const, "bf16", dense=DEVICE != "cpu")
    assert launch.w4.qkn is None


@pytest.mark.parametrize("M", [1, 2])
def test_h2_gemv_is_skipped_when_its_self_check_fails(monkeypatch: pytest.MonkeyPatch, M: int) -> None:
    """A failed PTX self-check (``h2_works``) routes M = 1 to the f32 GEMV and M = 2 to the
    tensor-core GEMV (the f32 one on the interpreter), with the same result."""
    c, s, z, _ = quantised(40, 300, 4, 128, False, seed=11)
    p = pack_w4(c, s, z, 128, False).to(DEVICE)
    x = torch.randn(M, 300, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    wd = dequant_weight(c, s, z, 128, False)
    ref = (x.double() @ wd.double().T).to(torch.bfloat16)
    calls = []
    name = "_h2_launch" if M == 1 else "_h2r_launch"
    real = getattr(triton_w4, name)
    # records N of each f16x2 launch (the GPU self-check's own launch has N = 96)
    monkeypatch.setattr(triton_w4, name, lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    check(w4_linear(x.to(DEVICE), p), ref, x, wd, None, "bf16", h2=True)
    assert calls.count(40) == 1
    monkeypatch.setattr(triton_w4, "h2_works", lambda mod, device, interpret, rows=1: False)
    check(w4_linear(x.to(DEVICE), p), ref, x, wd, None, "bf16")
    assert calls.count(40) == 1
    if DEVICE != "cpu":
        # the real check passed on this GPU (the first launch above ran it)
        assert all(triton_w4._H2_OK.values()) and triton_w4._H2_OK


_SWAP3_TTGIR = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from scalefold.codegen.triton_w4_src import SOURCE
from scalefold.runtime.triton_exec import load_module
has_zero = sys.argv[1] == "1"
fn = load_module(SOURCE, False).w4_gemm
ptrs = dict(X="bf16", P="i32", S="fp32", Z="u8", B="bf16", Y="bf16", WS="fp32", CNT="i32")
consts = dict(HAS_ZERO=has_zero, ZC=0 if has_zero else 8, HAS_BIAS=False, SPLIT=4, ROUND_BF16=False,
              EVEN_K=True, KIND=2, FAST16=True, IEEE=False, SWAP=3, DOTS8=1, EVICT=1, BM=16, BN=64, J=16,
              GE=128, GROUP_M=8)
sig, cx = {}, {}
for i, p in enumerate(fn.arg_names):
    if p in consts:
        sig[p], cx[(i,)] = "constexpr", consts[p]
    else:
        sig[p] = "*" + ptrs[p] if p in ptrs else "i32"
k = triton.compile(ASTSource(fn, sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=4, num_stages=3))
print(json.dumps([ln for ln in k.asm["ttgir"].splitlines() if "elementwise_inline_asm" in ln]))
"""


@pytest.mark.parametrize("has_zero", [True, False])
def test_swap3_nibble_pairs_stay_in_registers(has_zero: bool, tmp_path) -> None:
    """SWAP 3 relies on Triton keeping the PTX nibble pairs in the wgmma register-operand
    layout. Compiled for sm_90 (no GPU needed; in a fresh process, outside the interpreter mode
    of this module), every pair step must produce that layout, with and without zero points.
    With a constant zero point (``HAS_ZERO`` false) Triton once hoisted it out of the K loop
    and then staged each pair tile through shared memory instead (M = 16 on an H200: 36 instead
    of 29 µs); the kernel now reads it through a load that never fires."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", _SWAP3_TTGIR, "1" if has_zero else "0"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(steps) == 8                                          # one per nibble
    assert all("-> tensor<64x16xbf16, #ttg.dot_op<{opIdx = 0" in ln for ln in steps), steps[0]


@pytest.mark.skipif(DEVICE == "cpu", reason="the tensor-core GEMV is PTX: it runs compiled only "
                    "(its layout is checked on the CPU by test_mma_gemv_layout_for_sm90)")
@pytest.mark.parametrize("M,K,N,group,sym,xd,bias,bps", [
    (2, 384, 200, 128, False, "bf16", False, 1), (3, 1280, 1000, 256, True, "f16", True, 2),
    (4, 4096, 4096, 128, False, "bf16", True, 16), (4, 520, 72, 128, False, "f16", False, 4)])
def test_mma_gemv(M: int, K: int, N: int, group: int, sym: bool, xd: str, bias: bool, bps: int) -> None:
    """w4_gemv_mma against x @ Wd^T in f64: odd N and K (a short last block), split K, with
    and without zero points and bias, f16 and bf16 x."""
    p, x, b, wd = direct_problem(M, K, N, group, sym, xd, bias)
    calls: list[int] = []
    real = triton_w4._mmag_launch
    cfg = dict(w4_config(M, N, K), MMAG=1, MMAG_BPS=bps, H2=0)     # M = 2 defaults to the two-row GEMV
    import unittest.mock as um
    with um.patch.object(triton_w4, "_mmag_launch", lambda *a, **k: calls.append(1) or real(*a, **k)):
        y = w4_linear(x.to(DEVICE), p, b.to(DEVICE) if b is not None else None, cfg)
    assert calls, "the tensor-core GEMV did not run"
    ref = (x.double() @ wd.double().T + (b.double() if b is not None else 0)).to(XT[xd])
    check(y, ref, x, wd, b, xd)


_MMAG_TTGIR = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from scalefold.codegen.triton_w4_src import SOURCE
from scalefold.runtime.triton_exec import load_module
fn = load_module(SOURCE, False).w4_gemv_mma
ptrs = dict(X="bf16", P="i32", S="fp32", Z="u8", B="bf16", Y="bf16", WS="fp32", CNT="i32")
consts = dict(NB_PER=16, HAS_ZERO=True, ZC=0, HAS_BIAS=False, SPLIT=4, BF16=True, BN=64, J=16, GB=1)
sig, cx, attrs = {}, {}, {}
for i, p in enumerate(fn.arg_names):
    if p in consts:
        sig[p], cx[(i,)] = "constexpr", consts[p]
    elif p in ptrs:
        # as the launcher specialises them: torch allocations are 16-byte aligned
        sig[p], attrs[(i,)] = "*" + ptrs[p], [["tt.divisibility", 16]]
    else:
        sig[p] = "i32"
k = triton.compile(ASTSource(fn, sig, constexprs=cx, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=4, num_stages=1))
ir = k.asm["ttgir"]
loop = ir[ir.index("scf.for"):ir.index("scf.yield")]
print(json.dumps(dict(layouts=[ln for ln in ir.splitlines() if ln.startswith("#blocked")],
                      steps=[ln for ln in loop.splitlines() if "mma.sync" in ln],
                      converts=loop.count("convert_layout"))))
"""


def test_mma_gemv_layout_for_sm90(tmp_path) -> None:
    """The tensor-core GEMV's PTX step assumes each lane holds 4 consecutive words of one row
    of each [32, 16] half tile, 8 rows per warp: Triton's blocked layout [1, 4] x [8, 4] x
    [4, 1]. Compiled for sm_90 without a GPU (fresh process), the step must see that layout,
    and the loop must hold no layout conversion (a trip through shared memory per block)."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", _MMAG_TTGIR], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(got["steps"]) == 1 and got["converts"] == 0
    layout = next(ln for ln in got["layouts"] if ln.split(" = ")[0] in got["steps"][0].split("tensor<32x16xi32, ")[1])
    assert "sizePerThread = [1, 4], threadsPerWarp = [8, 4], warpsPerCTA = [4, 1]" in layout


@pytest.mark.parametrize("module", ["triton_w4_src", "triton_wq_src", "triton_qgemm", "triton_quant"])
def test_sources_call_no_jit_library_functions(module: str) -> None:
    """``tl.standard`` helpers (``tl.zeros``, ``tl.sum``, ``tl.cdiv``, ...) are jit functions
    decorated when triton is imported: a source that calls one fails under the interpreter
    whenever triton was imported before ``TRITON_INTERPRET=1`` was set (a CPU user compiling for
    ``target="triton"`` got a raw InterpreterError from every W4 launch, and from every 8-bit
    weight-only one through ``tl.cdiv``). Only builtins may be called."""
    import importlib
    import re
    import triton.language as tl
    mod = importlib.import_module(f"scalefold.codegen.{module}")
    source = getattr(mod, "SOURCE", None) or mod.QUANT_PRELUDE
    called = sorted(set(re.findall(r"\btl\.(\w+)\(", source)))
    jitted = [n for n in called if type(getattr(tl, n, None)).__name__ in ("JITFunction", "InterpretedFunction")]
    assert called and not jitted, jitted


_NO_ENV_W4 = """
import torch, torch.nn as nn
import triton  # imported before scalefold sets the interpreter mode
import scalefold as sf
torch.manual_seed(0)
for group, sym in ((32, False), (128, True)):
    m = nn.Sequential(nn.Linear(136, 37), nn.GELU(), nn.Linear(37, 20, bias=False)).eval()
    x = torch.randn(5, 136)
    p = [f"quant_weights(format=int4, group={group}, sym={sym})"]
    dyn = ({0: torch.export.Dim("B")},)
    cm = sf.compile(m, (x,), target="triton", passes=p, dynamic_shapes=dyn)
    ref = sf.compile(m, (x,), target="interp", passes=p, dynamic_shapes=dyn)
    for M in (1, 3, 5, 17):
        xm = torch.randn(M, 136)
        torch.testing.assert_close(cm(xm), ref(xm), rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_triton_target_on_cpu_without_interpret_env(tmp_path) -> None:
    """``target="triton"`` with CPU tensors in a process where TRITON_INTERPRET was never set
    (triton imported first): the W4 kernels (M = 1, 3, 5, 17; zero points and symmetric) run in
    the interpreter and match the reference."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["SCALEFOLD_CACHE_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", _NO_ENV_W4], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_h2_options_of_m1_are_refused_at_m2() -> None:
    """H2_FIXED / H2_XB / ... configure the one-row GEMV; the two-row one has no such variants,
    and a config asking for them is refused rather than silently ignored."""
    c, s, z, _ = quantised(40, 300, 4, 128, False, seed=11)
    p = pack_w4(c, s, z, 128, False).to(DEVICE)
    x = torch.randn(2, 300).to(torch.bfloat16)
    with pytest.raises(ValueError, match="H2_XB apply to M = 1 only"):
        w4_linear(x.to(DEVICE), p, None, dict(GEMV=1, BM=2, H2=1, H2_XB=1))
