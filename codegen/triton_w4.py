"""W4A16 kernels of weight-only group-wise 4-bit ``qlinear`` for the Triton target (issue 8).

Takes ``qlinear(x, w, w_scale, w_zero?, bias?)`` with act "none", float x (f16 / bf16 / f32),
constant u4 / i4 codes w [N, K] (int3 codes are u4 0..7), group 0 or a power of two >= 16
(a short last group included), integer zero points of w's dtype or none. The constants are
packed once when the kernels are loaded (``runtime/w4pack_gpu.py`` documents the layout: int32
words of 8 codes; nibble i of a 128-code block's 16 words is its codes i*16 .. i*16+15;
scales f32 and effective zeros uint8, both [groups, N]).

Kernels, chosen by M (rows of x):

- ``w4_gemv_h2`` (M = 1, f16 / bf16 x, groups of whole 128-code blocks; the default there):
  the f16x2 GEMV. A program owns 256 channels and a power-of-two run of K blocks; the [256, 16]
  word tile of each block is one contiguous load (block-major packing), double-buffered in
  registers. An inline-PTX step takes a thread's four consecutive words of one channel:
  ``(w & 0x000F000F) | 0x64006400`` is the f16 pair 1024 + u of nibbles 0 and 4 (and with
  mask 0x00F000F0 nibbles 1 and 5 times 16; the same on w >> 8), ``sub.f16x2`` leaves
  u - zeff, and ``fma.rn.f16x2`` multiplies by f16 pairs of x, so two codes per instruction.
  The 16 products of a lane are summed in f16, then in f32 times the group scale. x is
  scaled per program by a power of two 2^-e (its slice's amax into [8, 16)), so no f16
  product or partial sum can overflow; the scale comes back in f32. Error: within 2^-9 of
  sum |x| |w| (tested); measured relerr 1.7e-3 against 1.66e-3 for the f32 form, both from
  the bf16 output rounding. The interpreter runs an f32 stand-in of the same data flow.
  Weight loads are ``evict_first``.
- ``w4_gemv_h2r`` (M = 2, same conditions; the default there): its two-row form on the same
  blocks. The PTX step decodes each word once and runs one f16x2 chain per row; each row has
  its own power-of-two x scale and its own fixed-point split-K accumulators ([2, N] int64),
  and slot r of a thread's four f32 registers accumulates row r. On an H200 (8192², bf16 x):
  22.2 µs against 30.6 for the tensor-core GEMV below and 25.2 for tinygemm (cuBLAS 44.5);
  at M = 3 and 4 the tensor-core GEMV stays faster (its A operand serves every row for free),
  so they keep it. A self-check at first use falls back to the tensor-core GEMV.
- ``w4_gemv_mma`` (M = 3..4, and M = 2 where the two-row GEMV does not run; f16 / bf16 x,
  groups of whole 128-code blocks; compiled only):
  the tensor-core GEMV (``codegen/triton_w4_mmag.py``). A program owns 64 channels as two
  [32, 16] word tiles of one layout (8 rows per warp, 4 consecutive words per lane), so each
  lane holds words of one channel in each half at the same places. One PTX step per lane
  forms u - zeff pairs (``lop3`` with the magic, ``sub``) as rows g and g + 8 of
  ``mma.sync.m16n8k16`` A operands and passes its x pairs (rows g and g + 8 of x, no
  conversion: f16 or bf16 mma) as B; the lane quad's mma sums its channel's 16 words, and the
  group scale multiplies each block's D in f32. Zero points and scales are loaded by PTX in
  the tile's layout (a ``tl.load`` of the [rows] vectors went through shared memory with
  barriers every block). On an H200, 8192²: M = 2 / 4 at 30.4 / 31.3 µs where ``w4_gemv``
  took 46.7 / 67.1 (cuBLAS bf16 44.6 / 45.1); from M = 8 the nibble-block GEMM is faster
  (28.5 against 33.2 µs). A self-check at first use falls back to the other kernels.
- ``w4_gemv`` (M <= 4 otherwise: f32 x, small groups): a program owns BN output
  channels and a K slice. Per block it loads a [BN, 16] word tile (16-byte loads, the weights
  stream once) and, per nibble i, forms
  (u - zeff) * 16^p in f32 in place: nibbles 0..4 lie in the f32 mantissa, so
  ``(w & 15 << 4i) | 0x4B000000`` is 2^23 + u 16^i and one subtraction of 2^23 + zeff 16^i
  is exact (nibbles 5..7 the same on w >> 20); x carries the 16^-p. Per weight: one LOP3, one
  FADD, one FMA; the group scale multiplies the block's partial once (g >= 128).
- ``w4_gemm`` (M > 4): tiles BM x BN; the nibbles become ``u - zeff`` in x's dtype by bit
  pattern (``0x4300``: 128 + u as bf16, ``0x6400``: 1024 + u as f16; small integers: exact),
  then ``tl.dot`` with x (f32 accumulate; f32 x in IEEE precision): eight K=16 dots, one per
  nibble (``DOTS8``) or one K=128 dot of the reshaped tile; the block's partial is multiplied
  by the group scale. ``SWAP`` 1 transposes the accumulator; 2 and 3 make the weights operand
  A of the per-nibble dots (on Hopper a wgmma whose A stays in registers: the words come from
  shared memory straight into the operand layout), and 3 (the default for M > 4) forms the
  16-bit operand pairs in PTX: ``prmt`` brings nibble i of two words into the two halves,
  ``(t & 0x000F000F) | magic`` gives magic + u, one ``sub`` of magic + zeff leaves u - zeff
  (sm_90 SASS of the M = 16 kernel: about 1.6 instead of 2.8 instructions per code for the
  dequantisation, and 271 instead of 351 per warp and block for the whole loop body). Groups
  < 128 scale the weights in f32 before one IEEE dot (correct, not tuned). The interpreter
  mishandles a bitcast to bf16 and bf16 dots, so there bf16 goes through the f32 form (same
  values), and it runs ``SWAP`` 3 without the PTX step.

- ``w4_gemm_kn`` (``KN``; only by an explicit config: slower at every M measured): the
  GPTQ-Triton-style GEMM on the second packing ``qkn`` [Kp/8, N] (8 consecutive K codes per
  word, N contiguous). Per K block of BK (<= the group, so one scale row) the [BK/8, BN]
  words load once, split into nibbles ([BK/8, 8, BN] -> [BK, BN]: row k is code k), become
  u - zeff in x's dtype (exact, as above), one tl.dot, and the group scale multiplies the f32 partial (``SCALE_W``=1 instead
  scales the weights in f32 and rounds them to x's dtype: a few % faster, not bit-faithful to
  the reference; off by default).

- the dense path (M >= 256; ``codegen/triton_dense.py``): ``w4_dequant``
  (``triton_w4_dq.py``) writes the dense weight in x's dtype into the model's scratch, and
  cuBLAS multiplies: compute-bound sizes run at cuBLAS's speed plus one pass over the weight.

Split-K: when the (M, N) tiles are too few to fill the GPU, ``SPLIT`` programs share a tile's
K range and store f32 partials to a workspace [SPLIT, M, N]; each then bumps the tile's
counter (acq_rel atomic after a CTA barrier), and the one that finishes last sums the
partials in split order, adds the bias, rounds, stores and resets the counter. One kernel,
and deterministic (the order never depends on timing). The M = 1 f16x2 GEMV instead sums its
splits in fixed point (``FIXED``): each program adds its partials, as integers in a unit
common to the channel, together with an arrival count in one 64-bit atomic per channel, and
the program bringing the last count writes y and zeroes the accumulator: one round trip to
memory instead of three, and an order-independent sum. Blocks per M bucket: :func:`w4_config`.

Range caveat: the f32 GEMV and the GEMMs with groups >= 128 sum a block's x * (u - zeff)
before its scale, so f32 / bf16 x above about 1e35 can overflow where the reference's x * Wd
does not (the C target recomputes such rows exactly; here they become inf / NaN), and the f32
GEMV's x * 16^-p leaves |x| below about 1e-33 in f32 subnormals (a few bits lost). Activations
that large or small do not occur in working models; both are left as they are.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import sympy
import torch

from ..ir.graph import Node
from ..runtime.scratch import Scratch
from ..runtime.w4pack_gpu import BLOCK, J, W4Packed, dequant, pack_w4, single_group
from .schedule import Kernel
from .triton_template import Launch, PackedConstants, pow2, quiet, template_slots, weight_only_parts
from .triton_dense import DENSE_MIN_M, dense_launch
from .triton_w4_dq import w4_fill
from .triton_w4_src import SOURCE   # the kernels' text

KIND = {"f32": 0, "f16": 1, "bf16": 2}
GEMV_MAX_M = 4
SMS = 132                           # H200 multiprocessors: the split-K target
MMAG_BN = 64                        # channels per w4_gemv_mma program: 8 rows per warp and half

REASON = ("weight-only W4 takes u4/i4 constant codes, group 0 or a power of two >= 16 and integer "
          "zero points (triton_w4.py); float zero points and other groups run triton_wq.py")


def w4_supported(n: Node) -> bool:
    """Whether the W4 kernels run this ``qlinear``: act none, f16/bf16/f32 x, constant u4/i4 codes
    of static shape, f32 scales, no zero point or one of w's dtype, float bias, group 0 / one
    group / a power of two >= 16."""
    parts = weight_only_parts(n)
    if parts is None:
        return False
    _, w, scale, zero, _ = parts
    if w.dtype.name not in ("u4", "i4") or not w.is_const or not scale.is_const:
        return False
    if scale.dtype.name != "f32" or (zero is not None and (zero.dtype is not w.dtype or not zero.is_const)):
        return False
    nn, k = w.type.shape
    if not isinstance(nn, int) or not isinstance(k, int) or nn < 1 or k < 1:
        return False
    g = n.attrs["group"]
    return single_group(k, g) or (g >= 16 and g & (g - 1) == 0)


@dataclass(frozen=True, eq=False)
class W4Spec(PackedConstants):
    """The launch spec of the W4 kernels (:class:`PackedConstants`), and whether the codes are
    i4 (``signed``) rather than u4."""

    signed: bool

    def pack(self, device: torch.device | str, kn: bool = True) -> W4Packed:
        """The packed constants on ``device`` (``kn=False``: without the GEMM layout)."""
        return pack_w4(self.w, self.scale, self.zero, self.group, self.signed, kn).to(device)



def render_w4(k: Kernel) -> tuple[str, list[sympy.Expr], W4Spec]:
    """(module source, runtime integers [M, N, K], launch spec) of a W4 template kernel. The
    source is the same for every qlinear: the variants are constexprs chosen at launch."""
    n = k.nodes[0]
    w, s = n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    slots, m, N, K = template_slots(k)
    spec = W4Spec(slots, n.inputs[0].dtype.name, w.const, s.const,  # type: ignore[union-attr, arg-type]
                  zero.const if zero is not None else None, n.attrs["group"], w.dtype.name == "i4")  # type: ignore[union-attr]
    return SOURCE, [m, sympy.Integer(N), sympy.Integer(K)], spec


def w4_config(M: int, N: int, K: int, interpret: bool = False, dense_min: int = DENSE_MIN_M) -> dict[str, int]:
    """Blocks by M bucket (picked by ``benchmarks/w4_gpu.py --sweep`` and variants on an H200),
    then the split. M <= 4: the GEMV (BN 64; M = 1 the f16x2 GEMV, M = 2 its two-row form on
    the same blocks, M = 3..4 the tensor-core GEMV); larger M the nibble-block
    GEMM with the weights as wgmma operand A and PTX pairs (``SWAP`` 3): BM 16 / 32 x BN 64 up
    to 32, BM 64 x BN 128 beyond. On 8192 x 8192 it ran 44 / 120 / 225 / 439 / 1712 us at M =
    64 / 256 / 512 / 1024 / 4096 against 67 / 159 / 302 / 589 / 2307 us for the ``KN`` GEMM on
    the [K/8, N] words, which is now only taken by an explicit config. SPLIT shares K among
    programs until one wave of about 8 (GEMV) / 7 / 5 / 2 programs per SM runs: the occupancy of
    each block shape (a second partial wave cost 10-30 % in the sweeps). Never on the
    interpreter. From ``dense_min`` rows (not on the interpreter) the dense path instead
    (``triton_dense.py``): on an H200, bf16 x, it beat the GEMM at M = 256 on 8192², 4096 x
    11008, 11008 x 4096 and 16384² (101 / 73 / 80 / 374 µs against 121 / 115 / 88 / 452) and
    lost at M = 128 (95 / 68 / 71 / 323 against 71 / 65 / 53 / 235)."""
    if M >= dense_min and not interpret:
        return dict(DENSE=1)
    if M <= GEMV_MAX_M:
        bm = pow2(M)
        cfg = dict(GEMV=1, BM=bm, BN=64, num_warps=4, num_stages=1)
        per_sm = 8
        if M <= 2:
            # one row: the f16x2 GEMV; two: its two-row form (the same blocks)
            cfg.update(H2=1, **h2_config(N, K, interpret))
        if 2 <= M and not interpret:
            # 2..4 rows: the tensor-core GEMV where it applies (f16 / bf16 x, whole blocks),
            # for M = 2 where the two-row GEMV does not
            cfg.update(MMAG=1, MMAG_BPS=mmag_bps(N, K))
    elif M <= 16:
        cfg = dict(GEMV=0, BM=16, BN=64, SWAP=3, DOTS8=1, num_warps=4, num_stages=3)
        per_sm = 7
    elif M <= 32:
        cfg = dict(GEMV=0, BM=32, BN=64, SWAP=3, DOTS8=1, num_warps=4, num_stages=3)
        per_sm = 5
    else:
        cfg = dict(GEMV=0, BM=64, BN=128, SWAP=3, DOTS8=1, num_warps=4, num_stages=3)
        per_sm = 2
    cfg["BN"] = min(cfg["BN"], max(16, pow2(N)))
    tiles = -(-M // cfg["BM"]) * -(-N // cfg["BN"])
    nblk = -(-K // BLOCK)
    target = per_sm * SMS
    cfg["SPLIT"] = max(1, min(nblk, target // tiles)) if tiles < target and not interpret else 1
    return cfg


def h2_config(N: int, K: int, interpret: bool = False) -> dict[str, int]:
    """Blocks of the f16x2 GEMV (``w4_gemv_h2``, M = 1): 256 channels per program and the
    fewest K blocks per program (a power of two >= 4) that keep the programs within two per
    SM (``benchmarks/w4_gpu.py --sweep 1`` on an H200: fewer, longer programs overlap the weight
    stream with the f16x2 arithmetic better than many short ones); 128 channels where that
    leaves fewer than 1.5 programs per SM (a sweep of 64 / 128 / 256 channels x 2..64 blocks
    over ten LLM shapes on an H200). One split on the interpreter."""
    bn = min(256, max(32, pow2(N)))
    nblk = -(-K // BLOCK)
    if interpret:
        return dict(H2_BN=bn, H2_BPS=pow2(nblk))
    tiles = -(-N // bn)
    bps = 4
    while bps < nblk and tiles * -(-nblk // bps) > 2 * SMS:
        bps *= 2
    bps = min(bps, pow2(nblk))
    if bn == 256 and tiles * -(-nblk // bps) < 3 * SMS // 2:
        # under 1.5 programs per SM, 128 channels per program (twice the programs) is faster:
        # 4096 x 11008 15.6 against 16.5 us, 11008 x 4096 16.1 / 16.9, 5120 x 13824 21.0 /
        # 21.8, 4096 x 4096 10.8 / 11.4; from 224 programs up 256 stays as fast or faster
        bn = 128
    return dict(H2_BN=bn, H2_BPS=bps)


def h2_applies(M: int, xkind: str, packed: W4Packed) -> bool:
    """Whether ``w4_gemv_h2`` (M = 1) or ``w4_gemv_h2r`` (M = 2) takes this launch: one or two
    rows of f16 / bf16 x (f32 x keeps f32 products) and groups of whole 128-code blocks."""
    return M <= 2 and xkind in ("f16", "bf16") and packed.ge >= BLOCK



_H2_OK: dict[tuple[int, str], bool] = {}


def _self_check(device: torch.device, m: int, kind: str, make: Callable[..., Launch]) -> float:
    """Relative error of ``make(spec, packed, n, k)``'s launch on a small random problem (96 x
    512 u4 codes with zero points, two K blocks per split, ``m`` rows of ``kind`` x) against
    torch: the first-use check of the kernels whose PTX relies on Triton's layouts."""
    gen = torch.Generator().manual_seed(0)
    n, k = 96, 512
    u = torch.randint(0, 16, (n, k), generator=gen, dtype=torch.uint8)
    sc = torch.rand(n, k // BLOCK, generator=gen) * 0.01 + 0.001
    z = torch.randint(0, 16, (n, k // BLOCK), generator=gen, dtype=torch.uint8)
    p = pack_w4(u, sc, z, BLOCK, False, kn=False).to(device)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float16
    x = torch.randn(m, k, generator=gen).to(dtype)
    y = torch.empty(m, n, dtype=dtype, device=device)
    xd = x.to(device)
    make(W4Spec((0, -1, 2), kind, u, sc, z, BLOCK, False), p, n, k)([xd, xd, y])
    ref = x.float() @ dequant(p).T
    return float((y.float().cpu() - ref).norm() / ref.norm())


def h2_works(mod, device: torch.device, interpret: bool, rows: int = 1) -> bool:
    """Whether the f16x2 GEMV computes correctly here. Its PTX step assumes that each thread
    holds four consecutive words of one channel, a register layout Triton chooses. So the
    first compiled use per kernel module and device runs it once on a small random problem
    (two splits) against torch. On a mismatch it warns, and M = 1 takes the f32 GEMV from then
    on (``rows`` 2: the two-row GEMV, checked on its own; M = 2 then takes the tensor-core
    GEMV). Under the interpreter the PTX does not run: True."""
    if interpret:
        return True
    key = (id(mod), str(device), rows)
    if key not in _H2_OK:
        if rows == 1:
            err = _self_check(device, 1, "bf16", lambda spec, p, n, k: _h2_launch(mod, spec, p, n, k, False, 32, 2, 4))
        else:
            err = _self_check(device, 2, "bf16", lambda spec, p, n, k: _h2r_launch(mod, spec, p, n, k, False, 32, 2, 4))
        _H2_OK[key] = err < 1e-2
        if not _H2_OK[key]:
            other = "the f32 GEMV" if rows == 1 else "the tensor-core (or else the f32) GEMV"
            warnings.warn(f"scalefold: the f16x2 W4 GEMV ({rows} row{'s' * (rows > 1)}) is off by {err:.3g} "
                          f"(relative) with this Triton build; M = {rows} runs {other} instead",
                          RuntimeWarning, stacklevel=2)
    return _H2_OK[key]


def make_launch(mod, spec: W4Spec, packed: W4Packed, M: int, N: int, K: int, interpret: bool,
                config: dict[str, int] | None = None, scratch: Scratch | None = None) -> Launch:
    """The launch of the W4 kernels over the tensors ``ts`` (slots of ``spec``; the weight
    tensors in ``ts`` are ignored for ``packed``) for one binding of M. ``config`` overrides
    :func:`w4_config` (tests: several programs, splits and K blocks on tiny shapes).

    A split launch owns an f32 workspace [SPLIT, M, N] and one int32 counter per output tile
    (zero between launches: the last program of a tile resets it); so one launch of a binding
    must finish before the next starts on another stream (launches on one stream are fine)."""
    if M <= 0 or N <= 0:
        return lambda ts: None
    cfg = dict(config or w4_config(M, N, K, interpret))
    if cfg.pop("DENSE", 0):
        return dense_launch(spec.slots, spec.xkind, N, K, packed.scales.device, interpret, scratch,
                            w4_fill(mod, packed, spec.xkind, interpret), int(cfg.pop("DENSE_CHUNK", 0)))
    gemv = bool(cfg.pop("GEMV", M <= GEMV_MAX_M)) and cfg["BM"] >= M
    h2 = gemv and bool(cfg.pop("H2", 0)) and h2_applies(M, spec.xkind, packed) and \
        h2_works(mod, packed.scales.device, interpret, M)
    h2_bn, h2_bps = int(cfg.pop("H2_BN", 256)), int(cfg.pop("H2_BPS", 8))
    h2_opts = {k: int(cfg.pop(f"H2_{k}")) for k in ("FOLD", "EVICT", "XB", "FIXED") if f"H2_{k}" in cfg}
    mmag, mmag_bps_ = bool(cfg.pop("MMAG", 0)), int(cfg.pop("MMAG_BPS", 16))
    if h2 and M == 2:
        if h2_opts:
            raise ValueError(f"{', '.join('H2_' + k for k in h2_opts)} apply to M = 1 only")
        return _h2r_launch(mod, spec, packed, N, K, interpret, h2_bn, h2_bps, int(cfg.get("num_warps", 4)))
    if mmag and mmag_applies(M, spec.xkind, packed, interpret) and mmag_works(mod, packed.scales.device):
        return _mmag_launch(mod, spec, packed, M, N, K, mmag_bps_)
    if h2:
        return _h2_launch(mod, spec, packed, N, K, interpret, h2_bn, h2_bps,
                          int(cfg.get("num_warps", 4)), h2_opts)
    nblk = packed.kp // BLOCK
    config_split = int(cfg.pop("SPLIT", 1))
    split = max(1, min(config_split, nblk))
    nb_per = -(-nblk // split)
    split = -(-nblk // nb_per)                        # no empty splits
    xi, bi, yi = spec.slots
    zeros = packed.zeros if packed.zeros is not None else packed.scales
    kind = {"f32": 0, "f16": 1, "bf16": 2}[spec.xkind]
    round_bf16 = spec.xkind == "bf16" and interpret
    flags = dict(HAS_ZERO=packed.zeros is not None, ZC=packed.zc, HAS_BIAS=bi >= 0,
                 SPLIT=split, ROUND_BF16=round_bf16, EVEN_K=K == packed.kp, J=J, GE=packed.ge)
    kn = not gemv and bool(cfg.pop("KN", 0))
    if kn:
        # one group per K block; Kp is a multiple of 128, so BK (a power of two) divides it
        bk = min(int(cfg.pop("BK", 64)), packed.ge, BLOCK)
        nkb = packed.kp // bk
        split = max(1, min(int(config_split), nkb))
        nb_per = -(-nkb // split)
        split = -(-nkb // nb_per)
        flags.update(SPLIT=split, KIND=kind, FAST16=not interpret,
                     IEEE=kind == 0 or (kind == 2 and interpret), BK=bk)
        flags.pop("J")
        cfg.setdefault("GROUP_M", 8)
        cfg.setdefault("SWAP", 0)
        cfg.setdefault("RESHAPE", 0)
        # the scale on the weights (rounded to x's dtype) only where the dot is not IEEE f32
        cfg["SCALE_W"] = int(cfg.get("SCALE_W", 0)) if not flags["IEEE"] else 0
        grid = (-(-M // cfg["BM"]) * -(-N // cfg["BN"]), split)
        kern = mod.w4_gemm_kn[grid]
    elif gemv:
        cfg.pop("SWAP", None)
        grid = (-(-N // cfg["BN"]), split)
        kern = mod.w4_gemv[grid]
    else:
        cfg.setdefault("GROUP_M", 8)
        cfg.setdefault("SWAP", 0)
        cfg.setdefault("DOTS8", 0)
        cfg.setdefault("EVICT", int(M <= cfg["BM"]))   # one row block: each weight read once
        flags.update(KIND=kind, FAST16=not interpret, IEEE=kind == 0 or (kind == 2 and interpret))
        grid = (-(-M // cfg["BM"]) * -(-N // cfg["BN"]), split)
        kern = mod.w4_gemm[grid]
    dev = packed.scales.device
    P, S = packed.qweight, packed.scales
    if kn:
        if packed.qkn is None:
            raise ValueError("a KN config needs the [K/8, N] layout: pack_w4(..., kn=True)")
        P = packed.qkn
    ws, cnt = S, S
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=dev)
        cnt = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    kw = packed.kp // 8
    if kn:
        kw = nkb        # the kernel's trailing integer: K blocks (its NKB)

    def launch(ts: Sequence[torch.Tensor]) -> None:
        x, y = ts[xi], ts[yi]
        b = ts[bi] if bi >= 0 else S
        kern(x, P, S, zeros, b, y, ws, cnt, M, N, K, kw, nb_per, **flags, **cfg)

    return quiet(launch, interpret)


def _h2_launch(mod, spec: W4Spec, packed: W4Packed, N: int, K: int, interpret: bool, bn: int,
               bps: int, num_warps: int, opts: dict[str, int] | None = None) -> Launch:
    """The launch of ``w4_gemv_h2`` (one row of x): programs of ``bn`` channels x ``bps`` K
    blocks (a power of two). 2..31 splits sum in fixed point through an int64 accumulator per
    channel (zero between launches; ``H2_FIXED`` 0 turns it off); more splits share an f32
    workspace [SPLIT, N] and a counter per channel block as in :func:`make_launch`."""
    if bps & (bps - 1) or bps < 1:
        raise ValueError(f"H2_BPS must be a power of two, got {bps}")
    # the PTX step takes four consecutive words of one channel per thread (pack=4): a [bn, 16]
    # word tile gives every thread at least four only from 8 channels per warp up
    bn = max(bn, 8 * num_warps)
    nblk = packed.kp // BLOCK
    split = -(-nblk // bps)
    xi, bi, yi = spec.slots
    dev = packed.scales.device
    grid = (-(-N // bn), split)
    zeros = packed.zeros if packed.zeros is not None else packed.scales
    flags = dict(NB_PER=bps, HAS_ZERO=packed.zeros is not None, ZC=packed.zc, HAS_BIAS=bi >= 0,
                 SPLIT=split, SPLIT_P2=pow2(split), ROUND_BF16=spec.xkind == "bf16" and interpret,
                 EVEN_K=K == packed.kp, ASM=not interpret, BN=bn, J=J, GB=packed.ge // BLOCK,
                 FOLD=1, EVICT=1, XB=0, FIXED=int(1 < split < 32), XCH=-(-K // 1024))
    flags.update(opts or {})
    ws, cnt, smax = packed.scales, packed.scales, packed.scales
    if split > 1 and flags["FIXED"]:
        # fixed-point split-K sum (see the kernel): one int64 accumulator per channel, zero
        # between launches, and each channel's largest |scale| for the common unit
        ws = torch.zeros(N, dtype=torch.int64, device=dev)
        smax = packed.scales.abs().amax(0).contiguous()
    elif split > 1:
        ws = torch.empty((split, N), dtype=torch.float32, device=dev)
        cnt = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    kern = mod.w4_gemv_h2[grid]
    P, S = packed.qweight, packed.scales

    def launch(ts: Sequence[torch.Tensor]) -> None:
        b = ts[bi] if bi >= 0 else S
        kern(ts[xi], P, S, zeros, b, ts[yi], ws, cnt, smax, N, K, nblk, **flags, num_warps=num_warps)

    return quiet(launch, interpret)



def _h2r_launch(mod, spec: W4Spec, packed: W4Packed, N: int, K: int, interpret: bool, bn: int,
                bps: int, num_warps: int) -> Launch:
    """The launch of ``w4_gemv_h2r`` (two rows of x): the blocks of :func:`_h2_launch`; 2..31
    splits sum in fixed point through one int64 accumulator per row and channel (zero between
    launches), so a split count above 31 takes more blocks per program instead."""
    if bps & (bps - 1) or bps < 1:
        raise ValueError(f"H2_BPS must be a power of two, got {bps}")
    bn = max(bn, 8 * num_warps)
    nblk = packed.kp // BLOCK
    bps = max(bps, pow2(-(-nblk // 31)))
    split = -(-nblk // bps)
    xi, bi, yi = spec.slots
    dev = packed.scales.device
    grid = (-(-N // bn), split)
    zeros = packed.zeros if packed.zeros is not None else packed.scales
    flags = dict(NB_PER=bps, HAS_ZERO=packed.zeros is not None, ZC=packed.zc, HAS_BIAS=bi >= 0, SPLIT=split,
                 ROUND_BF16=spec.xkind == "bf16" and interpret, EVEN_K=K == packed.kp, ASM=not interpret,
                 EVICT=1, BN=bn, J=J, GB=packed.ge // BLOCK, XCH=-(-K // 1024))
    ws, smax = packed.scales, packed.scales
    if split > 1:
        ws = torch.zeros((2, N), dtype=torch.int64, device=dev)
        smax = packed.scales.abs().amax(0).contiguous()
    kern = mod.w4_gemv_h2r[grid]
    P, S = packed.qweight, packed.scales

    def launch(ts: Sequence[torch.Tensor]) -> None:
        b = ts[bi] if bi >= 0 else S
        kern(ts[xi], P, S, zeros, b, ts[yi], ws, smax, N, K, nblk, **flags, num_warps=num_warps)

    return quiet(launch, interpret)

MMAG_MAX_M = 16
_MMAG_OK: dict[tuple[int, str], bool] = {}


def mmag_applies(M: int, xkind: str, packed: W4Packed, interpret: bool) -> bool:
    """Whether ``w4_gemv_mma`` can take this launch: 2..16 rows of f16 / bf16 x, groups of
    whole 128-code blocks, compiled (its PTX does not run under the interpreter)."""
    return 2 <= M <= MMAG_MAX_M and xkind in ("f16", "bf16") and packed.ge >= BLOCK and not interpret


def mmag_bps(N: int, K: int) -> int:
    """K blocks per program of ``w4_gemv_mma`` (64 channels per program): the most, up to 32,
    that leave at least 2.5 programs per SM (H200, M = 2 / 4, 4 / 8 / 16 / 32 blocks: 16 best on
    8192², 4096 x 11008 and 11008 x 4096, 32 on 16384²)."""
    tiles = -(-N // MMAG_BN)
    nblk = -(-K // BLOCK)
    bps = 32
    while bps > 4 and tiles * -(-nblk // bps) < 5 * SMS // 2:
        bps //= 2
    return max(1, min(bps, pow2(nblk)))


def mmag_works(mod, device: torch.device) -> bool:
    """Whether the tensor-core GEMV computes correctly here (as :func:`h2_works`: its PTX
    step assumes Triton's [rows, 16] word layout). Checked once per module and device, on
    f16 and bf16 x, 5 rows, with zero points and split K; on a mismatch it warns and those
    launches take the other kernels."""
    key = (id(mod), str(device))
    if key not in _MMAG_OK:
        err = max(_self_check(device, 5, kind, lambda spec, p, n, k: _mmag_launch(mod, spec, p, 5, n, k, 2))
                  for kind in ("bf16", "f16"))
        _MMAG_OK[key] = ok = err < 1e-2
        if not ok:
            warnings.warn(f"scalefold: the tensor-core W4 GEMV is off by {err:.3g} (relative) with this "
                          "Triton build; M = 2..4 run the other W4 kernels instead", RuntimeWarning,
                          stacklevel=2)
    return _MMAG_OK[key]


def _mmag_launch(mod, spec: W4Spec, packed: W4Packed, M: int, N: int, K: int, bps: int) -> Launch:
    """The launch of ``w4_gemv_mma`` (2..16 rows of x): programs of 64 channels x ``bps`` K
    blocks; several splits sum through the f32 workspace [SPLIT, M, N] and a counter per
    channel block, as in :func:`make_launch`."""
    if bps & (bps - 1) or bps < 1:
        raise ValueError(f"MMAG_BPS must be a power of two, got {bps}")
    nblk = packed.kp // BLOCK
    split = -(-nblk // bps)
    xi, bi, yi = spec.slots
    dev = packed.scales.device
    grid = (-(-N // MMAG_BN), split)
    zeros = packed.zeros if packed.zeros is not None else packed.scales
    flags = dict(NB_PER=bps, HAS_ZERO=packed.zeros is not None, ZC=packed.zc, HAS_BIAS=bi >= 0, SPLIT=split,
                 BF16=spec.xkind == "bf16", BN=MMAG_BN, J=J, GB=packed.ge // BLOCK)
    ws, cnt = packed.scales, packed.scales
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=dev)
        cnt = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    kern = mod.w4_gemv_mma[grid]
    P, S = packed.qweight, packed.scales

    def launch(ts: Sequence[torch.Tensor]) -> None:
        b = ts[bi] if bi >= 0 else S
        kern(ts[xi], P, S, zeros, b, ts[yi], ws, cnt, M, N, K, nblk, **flags, num_warps=4, num_stages=1)

    return launch


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
