"""The group-wise weight-only ``qlinear`` template (int4 / int3 / fp4, and int8 / fp8 codes,
issue 8) as C. Group 0 (one scale per channel) is one group of all K.

8-bit codes (u8, i8, f8e4m3, f8e5m2) are packed one per byte by ``runtime/w8pack.py`` into
the same blob of groups and take the same kernels, blocking and fold; only the tiles that read
the codes differ (``c_w8_src.py``), and the int8-activation route reads the packed bytes as
``vpdpbusd`` operands directly. The rest of this docstring speaks of 4-bit nibbles.

One kernel computes ``y[m, n] = sum_g s[n,g] * sum_{k in g} x[m,k] (w[n,k] - z[n,g]) + bias[n]``
for u4 / i4 / f4e2m1 codes prepacked two per byte by ``runtime/w4pack.py`` (layout there),
float32 x, in one of two forms chosen by the node's ``act``:

- weight-only (``act="none"``): f32 FMAs on nibbles converted to float. Per group the kernel
  sums ``x_k * u_k`` and folds ``s * dot - (s * ze) * sum_k x_k`` into the float tile sums, so
  the scale and zero point leave the inner loop. Row tiles of at most ``mr_direct`` rows (the
  GEMV shape, M = 1..4) read the packed nibbles directly: every weight load serves all rows.
  Larger M decodes each (panel, group) once into an L1 buffer of floats that row tiles of
  ``mr_buf`` rows reuse (the GEMM shape).
- int8 activations (``act="per_token"``, abits <= 8): x is quantised per row in the prologue
  exactly as the reference's ``dynamic_quant`` (absmax / qmax, round-half-even, clamp) into
  the padded group layout, with per-group code sums; the nibbles are masked / shifted to u8
  bytes and multiplied by the s8 codes with AVX-512 VNNI ``vpdpbusd`` into exact int32 group
  sums, folded into float as above; epilogue ``sx * sum + bias`` (NaN rows stay NaN). On
  CPUs with AMX-INT8, row chunks of 16 rows and more take the AMX tiles of ``c_w4_amx.py``
  instead (the same sums and fold, bit-identical results).

Parallel work: tiles of (panel of ``nr`` channels, chunk of ``mc`` rows), panel-major and
handed out dynamically to the OpenMP threads, in one parallel region per call whose work loop
is ``nowait`` (the region's closing barrier is the only one: every barrier costs a scheduler
tick when another process holds a core); dynamic rather than static so that a thread whose
core is taken does less of the work. Within a tile the loop runs over groups, then row tiles,
so a group's weights (``nr * gp / 2`` bytes) stay in L1 while the rows use them; the tiles
prefetch the weights ``pf_bytes`` ahead. Small M (at most ``split_rows`` rows, the GEMV shape)
instead splits the panels into one contiguous run per thread (still handed out dynamically,
so a late thread's run goes to the other): each core then streams its weights sequentially
and the prefetches running past a panel's end land in its own next panel (M = 1, 4096 x 11008
int8-act, 2 Zen 5 cores: 0.22 -> ~0.15 ms against single-panel tasks, whose neighbouring
panels belong to the other core; the blob layout of runtime/w4pack.py, one stream per panel,
then ~0.14 -> ~0.125 ms for the kernel alone).
M is the runtime parameter ``q[0]``.

f4e2m1 weights (no zero point) take the same kernels, layout and blocking: the nibble is the
E2M1 code, mapped through a 16-entry table in the tiles (``c_w4_src.py``): to its signed value
by ``vpermps`` (weight-only; the fold has no zero-point term), or to the byte ``2 v + 12`` by
``vpshufb`` (int8 activations; ``2 v`` is an integer in -12..12, the +12 offset folds with the
activation group sums like i4's +8 and the packed scale is ``s / 2``). Without AVX-512 (or
rendered with ``vec=False``) a portable scalar tile over the same layout is compiled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import dtypes as dt
from ..ir.graph import Node
from ..runtime.w4pack import group_slots, group_stride, pack_w4
from ..runtime.w8pack import finite_codes, pack_w8
from .c import CKernel, _Params, _prod
from .c_isa import isa_variants
from .c_types import PRELUDE, load, storage_type
from .c_w4_src import decode_group, decode_u8, tile_f32_buf, tile_f32_direct, tile_scalar, tile_vnni
from .c_w4_avx2 import tile_avx2
from .c_w4_amx import amx_head, amx_ok, amx_only, amx_panel, amx_prologue, amx_rows
from .c_w4_exact import row_exact
from .c_w8_src import decode_group8, tile_f32_direct8, tile_scalar8
from .schedule import Kernel

PAR_MACS = 1 << 21   # below this many multiply-adds the kernel runs on one thread
CODES = frozenset({"u4", "i4", "f4e2m1", "u8", "i8", "f8e4m3", "f8e5m2"})


@dataclass(frozen=True)
class W4Config:
    """Blocking: ``16 * nb`` (weight-only) / ``16 * nb_vnni`` (int8 activations) channels
    per panel; row tiles of ``mr_direct`` (weight-only, read
    nibbles directly; used while a row chunk has at most that many rows), ``mr_buf``
    (weight-only over a decoded group) and ``mr_vnni`` rows (with ``vnni_buf``, row chunks
    of more than ``mr_vnni`` rows first unpack each group to u8 bytes once; measured no faster
    here, so off); ``mc`` rows per parallel tile; ``pf_bytes``: software prefetch of the
    packed nibbles this many bytes ahead (0: off; two groups' worth took int8-act M=16 from
    ~1.2-1.5 ms to ~0.86 ms and M=64 from ~4.1 to ~3.3 ms at 4096 x 11008 g128 on 2 Zen
    cores: without it the first row tile of every group stalled on L2 / L3; 8-16 KiB measure
    the same at M = 1..64, 20 KiB and more fell off a cliff at M = 1 (~0.14 -> 0.18 ms, L1
    overrun), hence 12 KiB); ``perm``: weight-only nibbles to float by one ``vpermps`` on
    the table 0..15 instead of mask + convert (M = 1: ~0.40 -> ~0.31 ms); ``split_rows``: up
    to this many rows, one contiguous run of panels per thread instead of single-panel tasks;
    ``vec=False`` renders the portable scalar path only; ``amx``: int8-activation row chunks
    of 16 rows and more take the AMX tiles of ``c_w4_amx.py`` where the CPU has them
    (bit-identical results)."""

    nb: int = 2
    nb_vnni: int = 4
    mr_direct: int = 4
    mr_buf: int = 6
    mr_vnni: int = 4
    mc: int = 64
    vnni_buf: bool = False
    pf_bytes: int = 12288
    split_rows: int = 16
    perm: bool = True
    vec: bool = True
    amx: bool = True
    chunk_slots: int = 128

    def __post_init__(self) -> None:
        for f in ("nb", "nb_vnni", "mr_direct", "mr_buf", "mr_vnni", "mc", "split_rows"):
            if getattr(self, f) < 1:
                raise ValueError(f"W4Config.{f} must be >= 1, got {getattr(self, f)}")
        if self.chunk_slots < 8 or self.chunk_slots % 8:
            raise ValueError(f"W4Config.chunk_slots must be a positive multiple of 8 (the packed "
                             f"blocks), got {self.chunk_slots}")
        if self.pf_bytes < 0:
            raise ValueError(f"W4Config.pf_bytes must be >= 0, got {self.pf_bytes}")

    def nr(self, isint: bool) -> int:
        """Channels per panel of the int8-activation (``isint``) or the weight-only kernel."""
        return 16 * (self.nb_vnni if isint else self.nb)


DEFAULT = W4Config()


def w4_supported(n: Node) -> bool:
    """Whether this template renders the ``qlinear`` (part of the C caps' ``template_ok``):
    group-wise or per-channel (group 0) constant u4 / i4 / u8 / i8 codes with constant f32
    scales and constant integer or float zero points, or constant f4e2m1 / f8e4m3 / f8e5m2
    codes without zero point (finite ones: NaN / inf codes stay with the reference), static N
    and K, f32 x with act none or per_token with abits <= 8 (not for float8 codes), f32
    output and f32 bias. Other forms run the reference (group 0 forms the int8 GEMM of
    c_qgemm.py takes go there first)."""
    if n.op != "qlinear":
        return False
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    if x is None or w is None or scale is None or w.dtype.name not in CODES:
        return False
    fcode = w.dtype.is_float
    if fcode and zero is not None:
        return False
    if not (w.is_const and scale.is_const and (zero is None or zero.is_const)):
        return False
    if zero is not None and zero.dtype.name not in ("u4", "i4", "u8", "i8", "f32"):
        return False
    nn, k = w.type.shape
    if not isinstance(nn, int) or not isinstance(k, int) or k < 1 or nn < 1:
        return False
    act = n.attrs["act"]
    # float8 codes have no integer form for the int8-activation kernel
    ok_act = act == "none" or (act == "per_token" and n.attrs["abits"] <= 8 and
                               (w.dtype.bits == 4 or not fcode) and _vnni_sums_fit(n, k))
    if w.dtype.bits == 8 and not finite_codes(w.const, w.dtype):
        return False
    if not _codes_in_range(w.const, w.dtype) or (zero is not None and zero.dtype.is_float and
                                                  not bool(torch.isfinite(zero.const).all())):
        # codes outside their dtype's range do not pack; a non-finite float zero point gives
        # inf - inf in the reference, which the fold cannot reproduce
        return False
    return (ok_act and x.dtype.name == "f32" and n.outputs[0].dtype.name == "f32"
            and scale.dtype.name == "f32" and (bias is None or bias.dtype.name == "f32"))


def _vnni_sums_fit(n: Node, k: int) -> bool:
    """Whether the int8-activation tiles' sums stay in range. Their int32 group sums cannot
    wrap: ``vpdpbusd`` adds products of weight bytes (at most 255 for 8-bit codes, 24 for the
    f4e2m1 table's ``2 v + 12``, 15 for 4-bit integers) and int8 activation codes (|q| <= 128)
    over a whole group, unchecked. And the f32 fold of the scaled group sums over K cannot
    overflow (the reference's sums are finite there; the weight-only tiles recompute such rows
    exactly, these do not)."""
    w, scale = n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    g = min(n.attrs["group"], k) if n.attrs["group"] > 0 else k
    top = 255 if w.dtype.bits == 8 else 24 if w.dtype.name == "f4e2m1" else 15
    zt = float(zero.const.abs().max()) if zero is not None and zero.const.numel() else 0.0
    bound = float(scale.const.abs().max()) * (top + zt) * 128.0 * k if scale.const.numel() else 0.0
    return 128 * top * g < 2 ** 31 and bound < 1e37


def _chunk_sum(lines: list[str], val: str, t: str, xg: int, cpg: int, sub: int) -> list[str]:
    """Per row ``m`` and group ``gi`` (``c0``, ``len`` in scope): the sums of ``val`` (over
    ``c``) of each chunk of ``sub`` columns into ``xs``, after ``lines`` (the loop body)."""
    return [f"      for (int64_t ci = 0; ci < {cpg}; ci++) {{",
            f"        const int64_t ca = ci * {sub}, ce = len < ca + {sub} ? len : ca + {sub};",
            f"        {t} s = 0;",
            "        #pragma omp simd reduction(+:s)",
            "        for (int64_t c = ca; c < ce; c++) {", *lines, f"          s += {val};", "        }",
            f"        xs[m * {xg} + gi * {cpg} + ci] = (float)s;",
            "      }"]


def _codes_in_range(w: torch.Tensor, wdtype: dt.DType) -> bool:
    """Whether the constant codes lie in their dtype's range (4-bit codes sit in byte
    containers that can hold more; f4e2m1 codes are 0..15)."""
    if wdtype.name == "f4e2m1":
        return bool(((w >= 0) & (w <= 15)).all())
    if wdtype.is_float:
        return True
    lo, hi = wdtype.int_range()
    return bool(((w >= lo) & (w <= hi)).all())


def _prologue_f32(K: int, g: int, G: int, gp: int, kp: int, cpg: int, sub: int) -> list[str]:
    """Chunk sums of x (``cpg`` chunks of ``sub`` columns per group), the padded copy of x
    when the group layout is not the identity, and the rows the fold cannot take (``bad``):
    sum |x| times ``growth`` (a C variable: a bound of |code value| * max(1, |scale|) +
    |scale * zero|, so of every partial sum the kernel forms, per unit of sum |x|) above 1e38,
    or not finite."""
    pad = kp != K
    out = []
    if pad:
        out.append(f"  float *xpad = (float *)malloc((size_t)M * {kp} * sizeof(float));")
    out += ["  int *bad = (int *)malloc((size_t)M * sizeof(int));",
            f"  #pragma omp parallel for if (M * {K} > {PAR_MACS})",
            "  for (int64_t m = 0; m < M; m++) {",
            f"    const float *xr = x + m * {K};",
            f"    for (int64_t gi = 0; gi < {G}; gi++) {{",
            f"      const int64_t c0 = gi * {g}, len = {K} - c0 < {g} ? {K} - c0 : {g};"]
    out += _chunk_sum([], "xr[c0 + c]", "float", G * cpg, cpg, sub)
    if pad:
        out += [f"      float *pr = xpad + m * {kp} + gi * {gp};",
                "      memcpy(pr, xr + c0, (size_t)len * sizeof(float));",
                f"      const int64_t lp = gi == {G - 1} ? {kp - (G - 1) * gp} : {gp};",
                "      for (int64_t c = len; c < lp; c++) pr[c] = 0;"]
    # rows whose partial sums could overflow (an inf or NaN in x included) take
    # sf_row_exact (c_w4_exact.py) after the kernel
    out += ["    }",
            "    float a = 0;",
            "    #pragma omp simd reduction(+:a)",
            f"    for (int64_t kk = 0; kk < {K}; kk++) a += fabsf(xr[kk]);",
            "    bad[m] = !(a * growth <= 1e38f);",
            "  }",
            f"  const float *xa = {'xpad' if pad else 'x'}; const int64_t ldx = {kp};"]
    return out


def _prologue_int8(K: int, g: int, G: int, gp: int, kp: int, qmax: int, cpg: int, sub: int
                   ) -> list[str]:
    """Per-row dynamic quantisation (the reference's arithmetic) into ``xq`` [M, kp] in the
    padded group layout, chunk code sums ``xs`` (as :func:`_prologue_f32`), row scale ``sx``
    and NaN flags."""
    quant = ["          float v = nearbyintf(xr[c0 + c] / sc);",
             f"          v = v != v ? 0 : (v < -{qmax} ? -{qmax} : (v > {qmax} ? {qmax} : v));",
             "          const int32_t q8 = (int32_t)v; qr[c] = (int8_t)q8;"]
    return [
        f"  int8_t *xq = (int8_t *)malloc((size_t)M * {kp});",
        "  float *sx = (float *)malloc((size_t)M * sizeof(float));",
        "  int *nanrow = (int *)malloc((size_t)M * sizeof(int));",
        f"  #pragma omp parallel for if (M * {K} > {PAR_MACS})",
        "  for (int64_t m = 0; m < M; m++) {",
        f"    const float *xr = x + m * {K};",
        "    float amax = 0; int nan = 0;",
        "    #pragma omp simd reduction(max:amax) reduction(|:nan)",
        f"    for (int64_t kk = 0; kk < {K}; kk++) {{ const float a = fabsf(xr[kk]); "
        "nan |= a != a; amax = a > amax ? a : amax; }",
        f"    const float s0 = amax / (float){qmax}, sc = (!nan && s0 > 0) ? s0 : 1.0f;",
        f"    for (int64_t gi = 0; gi < {G}; gi++) {{",
        f"      const int64_t c0 = gi * {g}, len = {K} - c0 < {g} ? {K} - c0 : {g};",
        f"      const int64_t lp = gi == {G - 1} ? {kp - (G - 1) * gp} : {gp};",
        f"      int8_t *qr = xq + m * {kp} + gi * {gp};",
        *_chunk_sum(quant, "q8", "int32_t", G * cpg, cpg, sub),
        "      for (int64_t c = len; c < lp; c++) qr[c] = 0;",
        "    }",
        "    sx[m] = sc; nanrow[m] = nan;",
        "  }",
        f"  const int8_t *xa = xq; const int64_t ldx = {kp};"]


def render_w4(k: Kernel, cfg: W4Config = DEFAULT) -> CKernel:
    """C source of a ``template`` kernel holding one supported weight-only ``qlinear`` (4- or
    8-bit codes, group-wise or per channel), with its packed constants. Pointer ABI: x, packed
    blob (codes, scales and zero points interleaved per group, runtime/w4pack.py and
    runtime/w8pack.py), [bias], y, and for float32 x the layer's growth bound (one float,
    see :func:`_prologue_f32`); ``q[0]`` = M."""
    n = k.nodes[0]
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    y = n.outputs[0]
    N, K = w.type.shape
    assert isinstance(N, int) and isinstance(K, int)
    isint = n.attrs["act"] != "none"
    # group 0 (one scale per channel) is one group of all K
    g = min(n.attrs["group"], K) if n.attrs["group"] > 0 else K
    G, gp, glp, kp = group_slots(K, g)
    bits = w.dtype.bits
    fp4 = w.dtype.name == "f4e2m1"
    fp8 = w.dtype.name if bits == 8 and w.dtype.is_float else None
    sc = scale.const.reshape(N, G)
    zc = zero.const.reshape(N, G) if zero is not None else None
    if bits == 8:
        packed = pack_w8(w.const, sc, zc, w.dtype, g, cfg.nr(isint))
    else:
        packed = pack_w4(w.const, sc, zc, w.dtype, g, cfg.nr(isint), isint)
    nr, P = cfg.nr(isint), packed.panels
    gs = group_stride(K, g, nr, packed.zbytes, bits)
    pbytes = packed.blob.shape[1]
    nb = nr // 16
    q = _Params()
    M = q(_prod(x.type.shape[:-1]))

    args: list = [x, *packed.tensors()] + ([bias] if bias is not None else []) + [y]
    decl = ["  const float *restrict x = (const float *)p[0];",
            "  const uint8_t *restrict wp = (const uint8_t *)p[1];"]
    if bias is not None:
        decl.append(f"  const {storage_type(bias.dtype)} *restrict bias = "
                    f"(const {storage_type(bias.dtype)} *)p[2];")
    decl.append(f"  float *restrict y = (float *)p[{3 if bias is not None else 2}];")
    if not isint:
        # the layer's growth bound comes in as data (after y), so that layers of one shape
        # share one source and compile once
        vmax = {"f4e2m1": 6.0, "f8e4m3": 448.0, "f8e5m2": 57344.0}.get(w.dtype.name, float((1 << bits) - 1))
        growth = vmax * max(1.0, float(packed.scale.abs().max())) + float(packed.sz.abs().max())
        args.append(torch.tensor([min(growth, 3e38)], dtype=torch.float32))
        decl.append(f"  const float growth = *(const float *)p[{len(args) - 1}];")

    # Weight-only, groups longer than 2 * chunk_slots (per-channel weights above all) run as
    # chunks of chunk_slots that share the group's scale and zero point: the fold is linear
    # in the dot and the x sum, and a chunk's decoded floats stay in L1 (per channel, 4096 x
    # 11008, M = 16, one core: int8 14.6 -> 11.7 ms, int4 13.6 -> 11.6 ms). The int8-activation
    # route decodes nothing and measured the same or slightly slower chunked, so it is not.
    sub = cfg.chunk_slots if gp > 2 * cfg.chunk_slots and not isint else gp
    cpg, subb = -(-gp // sub), sub // 8
    use_amx = isint and cfg.amx and not cfg.vnni_buf and amx_ok(nb, gp, glp, cfg.mc)
    # the float group buffer, or two decoded groups for the AMX tiles
    wf_bytes = max(sub * nr * 4, 2 * gp * nr if use_amx else 0)
    xg = G * cpg
    body = ["  const int64_t M = " + M + ";", "  if (M <= 0) return;",
            f"  float *xs = (float *)malloc((size_t)M * {xg} * sizeof(float));"]
    if isint:
        body += _prologue_int8(K, g, G, gp, kp, (1 << (n.attrs["abits"] - 1)) - 1, cpg, sub)
        if use_amx:
            body += amx_prologue("M", G, gp, glp, "ldx")
    else:
        body += _prologue_f32(K, g, G, gp, kp, cpg, sub)

    # ---- calls of the tiles for one chunk of a group
    targs = "xa + m * ldx + 8 * b0, ldx, {w}, nbk, scg, szg, xs + m * " + str(xg) + " + xi, " + \
        str(xg) + ", ct + (m - mlo) * " + str(nr)

    def calls(name: str, mr: int, wsrc: str, start: str = "int64_t m = mlo") -> list[str]:
        o = [f"          for ({start}; m < mhi; m += {mr}) {{",
             f"            const int64_t R = mhi - m < {mr} ? mhi - m : {mr};",
             "            switch (R) {"]
        for r in range(mr, 0, -1):
            o.append(f"              case {r}: {name}{r}({targs.format(w=wsrc)}); break;")
        o += ["              default: break;", "            }", "          }"]
        return o

    wdirect = "wg"
    vec_calls: list[str]
    if isint and cfg.vnni_buf and bits == 4:
        vec_calls = ["        if (mhi - mlo <= " + str(cfg.mr_vnni) + ") {"]
        vec_calls += calls("sf_qd", cfg.mr_vnni, wdirect)
        vec_calls += ["        } else {", f"          sf_decode8({wdirect}, nbk, (uint8_t *)wf);"]
        vec_calls += calls("sf_qb", cfg.mr_vnni, "(const uint8_t *)wf")
        vec_calls += ["        }"]
    elif isint:
        # with AMX, the rows before mst went through its tiles
        vec_calls = calls("sf_qd", cfg.mr_vnni, wdirect,
                          start="int64_t m = mst" if use_amx else "int64_t m = mlo")
    else:
        vec_calls = ["        if (mhi - mlo <= " + str(cfg.mr_direct) + ") {"]
        vec_calls += calls("sf_fd", cfg.mr_direct, wdirect)
        vec_calls += ["        } else {", f"          sf_decode({wdirect}, nbk, wf);"]
        vec_calls += calls("sf_fb", cfg.mr_buf, "(const uint8_t *)wf")
        vec_calls += ["        }"]
    scalar_call = [f"        sf_tile_s(mhi - mlo, {targs.format(w=wdirect).replace('+ m *', '+ mlo *').replace('(m - mlo)', '0')});"]

    v = "ct[r * " + str(nr) + " + jj]"
    if isint:
        v = f"(nanrow[m] ? NAN : {v} * sx[m])"
    if bias is not None:
        v = f"{v} + {load(bias.dtype, 'bias[n]')}"
    body += [f"  const int64_t MB = (M + {cfg.mc - 1}) / {cfg.mc}, T = {P} * MB;",
             "#ifdef _OPENMP",
             "  const int64_t nth = omp_get_max_threads();",
             "#else",
             "  const int64_t nth = 1;",
             "#endif",
             # Runs of whole panels per thread when there are enough (a panel's row chunks
             # then share its L2), else single tiles.
             f"  const int64_t CH = M <= {cfg.split_rows} ? (T + nth - 1) / nth : "
             "T >= 4 * nth * MB ? MB : 1;",
             f"  #pragma omp parallel if (M * {N * K} > {PAR_MACS})",
             "  {",
             *(["    SF_CSR_SAVE"] if fp8 else []),
             f"    float *ct = (float *)aligned_alloc(64, {cfg.mc * nr * 4});",
             # the decoded-group buffer of the GEMM-shape routes only
             "    float *wf = " + ("NULL;" if isint and not (cfg.vnni_buf and bits == 4 or use_amx)
                                   else f"(float *)aligned_alloc(64, {wf_bytes});"),
             "    (void)wf;",
             *(amx_only("    if (amx) _tile_loadconfig(&sf_amx_cfg);") if use_amx else []),
             "    #pragma omp for schedule(dynamic, CH) nowait",
             "    for (int64_t t = 0; t < T; t++) {",
             f"      const int64_t pi = t / MB, mlo = (t % MB) * {cfg.mc};",
             f"      const int64_t mhi = mlo + {cfg.mc} < M ? mlo + {cfg.mc} : M;",
             f"      memset(ct, 0, (size_t)(mhi - mlo) * {nr * 4});",
             f"      const int64_t n0 = pi * {nr}, nv = {N} - n0 < {nr} ? {N} - n0 : {nr};",
             f"      const uint8_t *wpp = wp + pi * {pbytes};",
             *(amx_rows(G, gp, nr, xg) if use_amx else []),
             f"      for (int64_t gi = 0; gi < {G}; gi++) {{",
             f"        const int64_t nbg = gi == {G - 1} ? {glp // 8} : {gp // 8};",
             f"        const uint8_t *wgg = wpp + gi * {gs};",
             f"        const float *scg = (const float *)(wgg + nbg * {nr * bits});",
             f"        const void *szg = (const void *)(scg + {nr});",
             f"        for (int64_t ci = 0; ci * {subb} < nbg; ci++) {{",
             f"        const int64_t b0 = gi * {gp // 8} + ci * {subb}, xi = gi * {cpg} + ci;",
             f"        const int64_t nbk = nbg - ci * {subb} < {subb} ? nbg - ci * {subb} : {subb};",
             f"        const uint8_t *wg = wgg + ci * {subb * nr * bits};",
             "#if SF_W4_VEC", *vec_calls, "#else", *scalar_call, "#endif",
             "        }",
             "      }",
             "      for (int64_t r = 0; r < mhi - mlo; r++) {",
             "        const int64_t m = mlo + r;",
             "        #pragma omp simd",
             "        for (int64_t jj = 0; jj < nv; jj++) {",
             "          const int64_t n = n0 + jj;",
             f"          y[m * {N} + n] = {v};",
             "        }",
             "      }",
             "    }",
             *(amx_only("    if (amx) _tile_release();") if use_amx else []),
             "    free(ct); free(wf);",
             *(["    SF_CSR_RESTORE"] if fp8 else []),
             "  }",
             "  free(xs);"]
    if isint:
        body += ["  free(xq); free(sx); free(nanrow);"]
        if use_amx:
            body += amx_only("  free(xt);")
    else:
        body += ["  {", *(["    SF_CSR_SAVE"] if fp8 else []),
                 "    for (int64_t m = 0; m < M; m++)",
                 f"      if (bad[m]) sf_row_exact(x + m * {K}, wp, {'bias' if bias is not None else 'NULL'}, "
                 f"y + m * {N});", *(["    SF_CSR_RESTORE"] if fp8 else []), "  }",
                 "  free(bad);"] + (["  free(xpad);"] if kp != K else [])

    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if fp8:
        # float8 codes decode through float32 subnormals (c_w8_src.py): a caller's
        # flush-to-zero / denormals-are-zero (torch.set_flush_denormal) would turn the
        # subnormal codes into 0, so each thread runs the kernel with both off
        head += ["#if defined(__SSE__)", "#include <xmmintrin.h>",
                 "#define SF_CSR_SAVE const unsigned sf_csr = _mm_getcsr(); _mm_setcsr(sf_csr & ~0x8040u);",
                 "#define SF_CSR_RESTORE _mm_setcsr(sf_csr);",
                 "#else", "#define SF_CSR_SAVE", "#define SF_CSR_RESTORE", "#endif"]
    if not cfg.vec:
        head.append("#define SF_NO_VEC 1")
    need = ("__AVX512F__", "__AVX512BW__") + (("__AVX512VNNI__",) if isint else ())
    # exact integer zero-point fold of the int8-activation tiles (c_w4_src._group_end): ze
    # bytes stored and |sum code * (u - ze)| <= 127 * 255 * g inside int32, so it cannot wrap
    zint = isint and packed.zbytes and 127 * 255 * g < 2 ** 31
    head.append(f"#define SF_ZINT {int(zint)}")
    # The zero-point block: float sz, or ze bytes times the scale (runtime/w4pack.py).
    if packed.zbytes:
        head += ["#define SF_LOADZ(z, o, s) _mm512_mul_ps(s, _mm512_cvtepi32_ps("
                 "_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)(z) + (o))))))",
                 "#define SF_Z(z, j, s) ((s) * (float)((const uint8_t *)(z))[j])"]
    else:
        head += ["#define SF_LOADZ(z, o, s) _mm512_loadu_ps((const float *)(z) + (o))",
                 "#define SF_Z(z, j, s) (((const float *)(z))[j])"]
    vec: list[str] = []
    if isint:
        # Inline asm, as in c_qgemm: gcc 12 spills the accumulators of the intrinsic.
        vec += ["#define SF_DPBUSD(acc, w, b) __asm__(\"vpdpbusd %2, %1, %0\" : \"+v\"(acc) : "
                "\"v\"(w), \"v\"(b))",
                "static inline int32_t sf_ld32(const int8_t *p) { int32_t v; memcpy(&v, p, 4); "
                "return v; }"]
        if bits == 8:
            # the packed bytes are the decoded u8 layout: the buffered tile reads them as sf_qd
            for r in range(1, cfg.mr_vnni + 1):
                vec += tile_vnni(r, nb, True, name=f"sf_qd{r}")
        else:
            for r in range(1, cfg.mr_vnni + 1):
                vec += tile_vnni(r, nb, pf=cfg.pf_bytes, fp4=fp4)
        if cfg.vnni_buf and bits == 4:
            vec += decode_u8(nb, fp4)
            for r in range(1, cfg.mr_vnni + 1):
                vec += tile_vnni(r, nb, True)
    else:
        pf = cfg.pf_bytes
        for r in range(1, cfg.mr_direct + 1):
            vec += tile_f32_direct8(r, nb, pf, fp8) if bits == 8 else \
                tile_f32_direct(r, nb, pf, fp4, cfg.perm)
        vec += decode_group8(nb, pf, fp8) if bits == 8 else decode_group(nb, pf, fp4)
        for r in range(1, cfg.mr_buf + 1):
            vec += tile_f32_buf(r, nb, not (fp4 or fp8))
    portable = tile_scalar8(nb, isint, fp8) if bits == 8 else tile_scalar(nb, isint, fp4)
    # AVX2-only hosts: the portable tile's AVX2 form (c_w4_avx2.py), same name and sums
    avx2 = tile_avx2(nb, isint) if bits == 4 and not fp4 else None
    head += isa_variants("SF_W4_VEC", vec, portable, avx2, avx512_needs=need)
    if use_amx:
        head += amx_head() + amx_only(*amx_panel(G, gp, glp, gs, bits, fp4))
    if not isint:
        head += row_exact(N=N, K=K, g=g, G=G, gp=gp, glp=glp, nr=nr, P=P, pbytes=pbytes, gs=gs,
                          bits=bits, zbytes=packed.zbytes, fp4=fp4, fp8=fp8, bias=bias is not None)
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    return CKernel(k, src, q.exprs, args)
