"""The Triton kernel of the weight-only ``qlinear`` forms the W4 kernels (``triton_w4.py``) do
not take: 8-bit integer codes (u8 / i8, integer or float zero points), float8 codes (E4M3,
E5M2), FP4 E2M1 codes, and 4-bit integer codes with float zero points or with a group that is
not a power of two. Without it those ran a float32 GEMM on weights dequantised once at load
(4 bytes a weight on the device); now the device holds the packed codes
(``runtime/wqpack_gpu.py``: one byte per 8-bit code, one per two 4-bit codes) and the kernel
decodes them in registers.

``wq_gemm`` (``triton_wq_src.py``): tiles BM x BN over (M, N), a K loop of BK columns, split-K
with the W4 kernels' deterministic finish when the tiles are too few to fill the GPU. Per
tile the codes load as bytes ([BN, BK], or [BN, BK / 2] split into nibbles) and become
values by bit moves (float codes: f16 bit patterns, exact; the power of two they leave out is
in the packed scales). Two forms:

- *scale after the dot* (``AFTER``; when BK divides the group, or one scale per channel): the
  dot takes the exact code values, minus integer zero points, in x's type (f16 / bf16: small
  integers and float8 / FP4 values are exact there; f32 x: IEEE f32 dots), accumulates in f32,
  and the tile's f32 partial is multiplied by its group scale;
- *scale before*: float zero points, or groups with no power-of-two divisor >= 16 (a group of
  20, say): the weights are dequantised in f32 exactly as the reference's Wd and the dot is
  IEEE f32. Correct everywhere, not tuned.

So the result differs from the reference (float64 sums of Wd) by f32 accumulation and the one
rounding to the output type, with one caveat shared with the W4 kernels: the scale-after forms
sum x * (code - zero) (float codes: x * value * 2^-r) before the scale, so f32 / bf16 x near
the f32 range (|x| above about 1e35 for 8-bit integer or E5M2 codes) can overflow where the
reference's x * Wd does not, and |x| below about 1e-36 loses bits to f32 subnormals with E4M3
/ FP4 codes. Weights whose Wd overflows f32 stay on the reference (its inf is not reproduced
otherwise). Under the interpreter bf16 runs the f32 forms (its bf16 dots are wrong, as for
the W4 kernels).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import sympy
import torch

from ..ir import dtypes as dt
from ..ir.graph import Node
from ..ir.ops.quant import dequant_weight
from ..runtime.scratch import Scratch
from ..runtime.w8pack import finite_codes
from ..runtime.wqpack_gpu import WQ_DTYPES, WQPacked, effective_group, pack_wq, rebias, KIND
from .schedule import Kernel
from .triton_dense import Fill, dense_launch
from .triton_template import Launch, PackedConstants, pow2, quiet, template_slots, weight_only_parts
from .triton_wq_src import SOURCE

GEMV_MAX_M = 4                   # rows the CUDA-core GEMV takes (from 5 the tensor-core GEMM)
SMS = 132                        # H200 multiprocessors: the split-K target
REASON = ("weight-only u8/i8/f8/f4e2m1 codes (and 4-bit codes the W4 kernels refuse) run "
          "triton_wq.py; f64 x, non-constant or out-of-range codes run the reference")


def _in_range(w: torch.Tensor, wdtype: dt.DType) -> bool:
    if wdtype.name == "f4e2m1":
        return bool(((w >= 0) & (w <= 15)).all())
    if wdtype.is_float:
        return finite_codes(w, wdtype)
    lo, hi = wdtype.int_range()
    return bool(((w >= lo) & (w <= hi)).all())


def _values_ok(n: Node) -> bool:
    """The checks that read the constants (O(N K)): codes in their dtype's range (float8 codes
    finite), the rebiased scales finite, and the reference's Wd finite (where it overflows
    the reference gives inf, which the scale-after forms would not reproduce)."""
    w, scale = n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    assert w is not None and scale is not None and w.const is not None and scale.const is not None
    if not _in_range(w.const, w.dtype):
        return False
    if zero is not None and zero.dtype.name == "f32" and not bool(torch.isfinite(zero.const).all()):
        return False
    if not bool(torch.isfinite(scale.const.to(torch.float32) * rebias(KIND[w.dtype.name])).all()):
        return False
    wd = dequant_weight(w.const, scale.const, zero.const if zero is not None else None, n.attrs["group"],
                        w.dtype.name == "f4e2m1")
    return bool(torch.isfinite(wd).all())


# node -> (weak references to the constants it was checked with, result): the value checks
# run once per node and constants, not at every partition / render query
_CHECKED: "weakref.WeakKeyDictionary[Node, tuple[tuple, bool]]" = weakref.WeakKeyDictionary()


def _values_ok_cached(n: Node) -> bool:
    consts = tuple(v.const if v is not None else None for v in n.inputs[1:4])
    hit = _CHECKED.get(n)
    if hit is not None and len(hit[0]) == len(consts) and \
            all((r is None and c is None) or (r is not None and r() is c) for r, c in zip(hit[0], consts)):
        return hit[1]
    ok = _values_ok(n)
    _CHECKED[n] = (tuple(weakref.ref(c) if c is not None else None for c in consts), ok)
    return ok


def wq_supported(n: Node) -> bool:
    """Whether ``wq_gemm`` runs this ``qlinear``: act none, f16 / bf16 / f32 x, constant codes of
    a type in ``WQ_DTYPES`` (finite float8 codes, integer codes in their range) of static
    shape, constant f32 scales (finite once rebiased), no zero point or a constant integer / f32
    (finite) one for integer codes, float bias, and a finite dequantised weight. Callers try
    the W4 kernels first. The checks that read the constants run once per node."""
    parts = weight_only_parts(n)
    if parts is None:
        return False
    _, w, scale, zero, _ = parts
    if w.dtype.name not in WQ_DTYPES or not w.is_const or not scale.is_const or scale.dtype.name != "f32":
        return False
    if zero is not None and (w.dtype.is_float or not zero.is_const or
                             zero.dtype.name not in ("u4", "i4", "u8", "i8", "f32")):
        return False
    nn, k = w.type.shape
    if not isinstance(nn, int) or not isinstance(k, int) or nn < 1 or k < 1:
        return False
    return _values_ok_cached(n)


@dataclass(frozen=True, eq=False)
class WQSpec(PackedConstants):
    """The launch spec of the ``wq`` kernels (:class:`PackedConstants`), and the codes' IR
    dtype name."""

    wdtype: str

    def pack(self, device: torch.device | str, kn: bool = False) -> WQPacked:
        """The packed constants on ``device`` (``kn`` is the W4 spec's argument, unused)."""
        return pack_wq(self.w, self.scale, self.zero, dt.get(self.wdtype), self.group).to(device)


def render_wq(k: Kernel) -> tuple[str, list[sympy.Expr], WQSpec]:
    """(module source, runtime integers [M, N, K], launch spec) of a ``wq`` template kernel;
    the source is the same for every qlinear (the forms are constexprs chosen at launch)."""
    n = k.nodes[0]
    w, s = n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    slots, m, N, K = template_slots(k)
    spec = WQSpec(slots, n.inputs[0].dtype.name, w.const, s.const,  # type: ignore[union-attr, arg-type]
                  zero.const if zero is not None else None, n.attrs["group"], w.dtype.name)
    return SOURCE, [m, sympy.Integer(N), sympy.Integer(K)], spec


def _pow2_divisor(g: int) -> int:
    return g & -g


# The 8-bit / FP4 GEMM slows down sharply from 160 rows (H200, probe of the twelfth session:
# 4096 x 11008, 8192², 11008 x 4096, every form: 1.3-3.3x slower than the dense path at 160-224
# rows; at 96-128 rows mixed, within 30% either way), so its dense path starts earlier than
# W4's, whose GEMM holds up to 256 rows on most shapes.
WQ_DENSE_MIN_M = 129


def wq_config(M: int, N: int, K: int, group: int, interpret: bool = False, cpw: int = 4,
              gemv: bool = True, dense_min: int = WQ_DENSE_MIN_M) -> dict[str, int]:
    """Tiles for M rows: up to GEMV_MAX_M the CUDA-core GEMV when a group holds whole words of
    ``cpw`` codes (4 bytes, 8 nibbles), K tiles of 128 and about 16 programs per SM (an H200
    sweep of 32 / 64 / 128 channels x 1..16 splits x 4 / 8 warps, int8 and fp8, 4096 x 11008
    and 8192²: 32 channels and 8 splits within 1.1 µs of the best everywhere); otherwise the
    tensor-core GEMM: BM 16 up to M = 16, 64 up to 64, else 128, BK at most the group's largest
    power-of-two divisor (so one scale per tile; below 16 the scale-before form takes any
    BK), BN at most N's power of two (from 16). ``gemv=False``: never the GEMV (float zero
    points). From ``dense_min`` rows the dense path (``triton_dense.py``: dequantise, then
    cuBLAS)."""
    g = effective_group(K, group)
    if M >= dense_min and not interpret:
        return dict(DENSE=1)
    if gemv and M <= GEMV_MAX_M and g % cpw == 0:
        bm = pow2(M)
        cfg = dict(GEMV=1, BM=bm, BN=32, BK=128, num_warps=4)
        if interpret:
            cfg.update(BN=16, BK=32)
    elif interpret:
        cfg = dict(BM=16 if M <= 16 else 32, BN=32, BK=32, num_warps=4)
    elif M <= 16:
        cfg = dict(BM=16, BN=64, BK=128, num_warps=4, num_stages=3)
    elif M <= 64:
        # 8192², M = 64, int8 g128 on an H200: 56.4 µs against 80.6 for [64, 64] x 64 tiles
        cfg = dict(BM=64, BN=128, BK=128, num_warps=4, num_stages=3)
    else:
        cfg = dict(BM=128, BN=128, BK=64, num_warps=8, num_stages=3)
    if g and _pow2_divisor(g) >= 16 and not cfg.get("GEMV"):
        cfg["BK"] = min(cfg["BK"], _pow2_divisor(g))
    cfg["BN"] = min(cfg["BN"], max(8 if cfg.get("GEMV") else 16, pow2(N)))
    tiles = -(-M // cfg["BM"]) * -(-N // cfg["BN"])
    ntile = -(-K // cfg["BK"])
    # GEMV: about 16 programs per SM; GEMM up to M = 16: 4 (8192², M = 16, same session,
    # before the 2^23 decode: 4 splits 44.9 / 35.8 µs for int8 g128 / fp8 against 61.9 / 40.0
    # with 2)
    target = (16 if cfg.get("GEMV") else 4 if M <= 16 else 2) * SMS
    cfg["SPLIT"] = max(1, min(ntile, target // tiles)) if tiles < target and not interpret else 1
    return cfg


def _wq_fill(mod, packed: WQPacked, xkind: str, interpret: bool, bn: int = 64) -> Fill:
    """``fill(w, n0, ne)`` for :func:`~.triton_dense.dense_launch`: ``wq_dequant`` of channels
    n0 .. ne - 1 into ``w`` [ne - n0, K], in K tiles within one group where the group allows
    (a power-of-two divisor >= 16), else 128 wide with a scale per element."""
    g = packed.group
    bk = 128 if g == 0 or g % 128 == 0 or _pow2_divisor(g) < 16 else _pow2_divisor(g)
    S = packed.scales
    Z = packed.zeros if packed.zeros is not None else S
    zmode = 0 if packed.zeros is None else (2 if packed.float_zero else 1)
    flags = dict(GROUP=packed.group, CODE=packed.kind, NIB=packed.nib, ZMODE=zmode,
                 ROUND_BF16=xkind == "bf16" and interpret, BN=bn, BK=bk, num_warps=4)
    W, KB, NG, N, K = packed.codes, packed.codes.shape[1], S.shape[0], packed.n, packed.k
    kern = mod.wq_dequant

    def fill(w: torch.Tensor, n0: int, ne: int) -> None:
        kern[(-(-(ne - n0) // bn), -(-K // bk))](W, S, Z, w, N, K, KB, NG, n0, ne, **flags)

    return fill


def make_launch(mod, spec: WQSpec, packed: WQPacked, M: int, N: int, K: int, interpret: bool,
                config: dict[str, int] | None = None, scratch: Scratch | None = None) -> Launch:
    """The launch of ``wq_gemv`` / ``wq_gemm`` for one binding of M (``config`` overrides
    :func:`wq_config`; its tile sizes must be powers of two).
    A split launch owns an f32 workspace [SPLIT, M, N] and a counter per tile, as the W4
    kernels' (one launch of a binding finishes before the next starts on another stream)."""
    if M <= 0 or N <= 0:
        return lambda ts: None
    cpw = 8 if packed.nib else 4
    if config is None:
        cfg = wq_config(M, N, K, packed.group, interpret, cpw, gemv=not packed.float_zero)
    else:
        cfg = dict(config)
    if cfg.pop("DENSE", 0):
        return dense_launch(spec.slots, spec.xkind, N, K, packed.scales.device, interpret, scratch,
                            _wq_fill(mod, packed, spec.xkind, interpret), int(cfg.pop("DENSE_CHUNK", 0)))
    if config is not None:
        for key in ("BM", "BN", "BK"):
            v = int(cfg.get(key, 16))
            if v < 1 or v & (v - 1):
                raise ValueError(f"wq config: {key} must be a power of two, got {v}")
    bk = int(cfg.pop("BK"))
    g = packed.group
    gemv = bool(cfg.pop("GEMV", 0)) and not packed.float_zero and g % cpw == 0 and M <= cfg["BM"] \
        and bk % cpw == 0
    if not gemv:
        # float zero points take the GEMM (tl.dot needs 16-wide tiles; BK within a group)
        cfg["BM"], cfg["BN"] = max(16, cfg["BM"]), max(16, cfg["BN"])
        if g and _pow2_divisor(g) >= 16:
            bk = min(bk, _pow2_divisor(g))
    after = not packed.float_zero and (g == 0 or g % bk == 0)
    kind = {"f32": 0, "f16": 1, "bf16": 2}[spec.xkind]
    op = 0 if kind == 0 or (kind == 2 and interpret) else kind
    ntile = -(-K // bk)
    split = max(1, min(int(cfg.pop("SPLIT", 1)), ntile))
    nt_per = -(-ntile // split)
    split = -(-ntile // nt_per)                 # no empty splits
    xi, bi, yi = spec.slots
    zmode = 0 if packed.zeros is None else (2 if packed.float_zero else 1)
    flags = dict(CODE=packed.kind, NIB=packed.nib, ZMODE=zmode, AFTER=after, OP=op, HAS_BIAS=bi >= 0,
                 SPLIT=split, ROUND_BF16=spec.xkind == "bf16" and interpret,
                 EVICT=int(M <= cfg["BM"]), GROUP=g, BK=bk)
    if gemv:
        for f in ("AFTER", "OP", "EVICT"):
            flags.pop(f)
        grid = (-(-N // cfg["BN"]), split)
        kern_fn = mod.wq_gemv
    else:
        cfg.setdefault("GROUP_M", 8)
        # SWAP only with 16-bit operands after the dot (the other forms ignore it)
        # (an H200 sweep at M = 16 found no default better than the other: off)
        cfg["SWAP"] = int(cfg.get("SWAP", 0)) if after and op else 0
        grid = (-(-M // cfg["BM"]) * -(-N // cfg["BN"]), split)
        kern_fn = mod.wq_gemm
    dev = packed.scales.device
    S = packed.scales
    Z = packed.zeros if packed.zeros is not None else S
    ws, cnt = S, S
    if split > 1:
        ws = torch.empty((split, M, N), dtype=torch.float32, device=dev)
        cnt = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    kern = kern_fn[grid]
    W, KB, NG = packed.codes, packed.codes.shape[1], S.shape[0]
    if gemv:
        W = W.view(torch.int32)

    def launch(ts: Sequence[torch.Tensor]) -> None:
        b = ts[bi] if bi >= 0 else S
        kern(ts[xi], W, S, Z, b, ts[yi], ws, cnt, M, N, K, KB, NG, nt_per, **flags, **cfg)

    return quiet(launch, interpret)


def wq_linear(x: torch.Tensor, w: torch.Tensor, wdtype: str, scale: torch.Tensor,
              zero: torch.Tensor | None, group: int, bias: torch.Tensor | None = None,
              config: dict[str, int] | None = None) -> torch.Tensor:
    """y = x @ Wd.T (+ bias) through ``wq_gemm`` on x's device (tests and benchmarks; the
    compiled path packs once at load). x [M, K] f16 / bf16 / f32."""
    from ..runtime.triton_exec import load_module
    interpret = x.device.type == "cpu"
    mod = load_module(SOURCE, interpret)
    p = pack_wq(w, scale, zero, dt.get(wdtype), group).to(x.device)
    M, K = x.shape
    xkind = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[x.dtype]
    spec = WQSpec((0, 1 if bias is not None else -1, 2), xkind, w, scale, zero, group, wdtype)
    y = torch.empty(M, p.n, dtype=x.dtype, device=x.device)
    b = bias.to(x.device) if bias is not None else x
    make_launch(mod, spec, p, M, p.n, K, interpret, config)([x.contiguous(), b, y])
    return y


__all__ = ["wq_supported", "render_wq", "WQSpec", "wq_config", "make_launch", "wq_linear", "REASON"]
