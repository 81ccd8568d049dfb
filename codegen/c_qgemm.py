"""The int8 GEMM template of ``qlinear`` (OutlierTune's W8A8 / W8A6 linear) as C.

One kernel computes ``y[m, n] = epilogue(sum_k x[m, k] * w[n, k])`` for integer codes x (i8 /
i4; Int6 codes are i8 in [-32, 31]) or for float x quantised dynamically in the kernel's
prologue (act ``per_token`` / ``per_tensor``, the W8A8 baselines), and per-output-channel
weights (group 0, i8 / u8 / i4 / u4) prepacked at build time by ``runtime/qpack.py``.

Inner loop: AVX-512 VNNI ``vpdpbusd`` (u8 weights x s8 activations, 4 products per int32
lane) on an ``MR x NR`` register tile, NR = 16 * NB output channels of one packed panel, four
activation bytes of a row broadcast to all lanes. The packing's weight offset and integer zero
points are removed exactly in wrapping int32 arithmetic (``acc - coff[n] * rowsum[m]``), the rest of
the epilogue (per-channel scale, float zero points, per-token scale, bias) in double and
rounded once to the output type, as the reference does. Without ``__AVX512VNNI__`` (or rendered
with ``vnni=False``) a portable scalar tile over the same layout is compiled instead.

Parallel work: tiles of (panel, chunk of MC rows), panel-major, shared statically among the
OpenMP threads: a thread walks the row chunks of one panel in turn, so the panel (NR x K bytes)
stays in its L2 while the activations stream. M is the runtime parameter ``q[0]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Node, Value
from ..runtime.qpack import MAX_K, pack_qlinear
from .c import CKernel, _Params, _prod
from .c_expr import compute_type
from .c_qgemm_amx import qgemm_amx_head, qgemm_amx_ok, qgemm_amx_prologue, qgemm_amx_rows
from .c_types import PRELUDE, load, storage_type, store
from .c_w4_amx import amx_only
from .schedule import Kernel

X_INT = frozenset({"i8", "i4"})          # activation codes the kernel reads as s8
W_INT = frozenset({"i8", "u8", "i4", "u4"})
REAL = frozenset({"f32", "f16", "bf16", "f64"})
PAR_MACS = 1 << 21   # below this many multiply-adds the GEMM runs on one thread


@dataclass(frozen=True)
class GemmConfig:
    """Blocking of the template: ``mr`` rows x ``16 * nb`` channels per register tile, ``mc``
    rows per parallel tile, ``kc`` columns of K per pass (a multiple of 4: the panel slice of
    ``16 * nb * kc`` bytes and ``mc * kc`` activation bytes stay in L1 while the register tiles
    walk the rows); ``vnni=False`` renders the portable scalar path only; ``amx``: chunks of
    16 rows and more take the AMX tiles of ``c_qgemm_amx.py`` where the CPU has them
    (bit-identical results)."""

    mr: int = 8
    nb: int = 3
    mc: int = 48
    kc: int = 0
    vnni: bool = True
    dyn: bool = True
    amx: bool = True

    @property
    def nr(self) -> int:
        return 16 * self.nb


DEFAULT = GemmConfig()


def qlinear_supported(n: Node) -> bool:
    """Whether the template renders this ``qlinear`` (the C caps' ``template_ok``): group 0,
    constant i8/u8/i4/u4 weights with constant scale / zero point, static N and K <= MAX_K,
    and either s8-held integer codes x (act none) or float x with act per_token/per_tensor and
    abits <= 8. Everything else runs the reference (see ``c.REFERENCE_OPS``)."""
    if n.op != "qlinear" or n.attrs["group"] != 0:
        return False
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    if x is None or w is None or scale is None or w.dtype.name not in W_INT:
        return False
    if not (w.is_const and scale.is_const and (zero is None or zero.is_const)):
        return False
    nn, k = w.type.shape
    if not isinstance(nn, int) or not isinstance(k, int) or k > MAX_K or k < 1:
        return False
    act = n.attrs["act"]
    if x.dtype.name in X_INT:
        ok_x = act == "none"
    else:
        ok_x = x.dtype.name in REAL and act != "none" and n.attrs["abits"] <= 8
    out = n.outputs[0].dtype.name
    return ok_x and out in REAL and (bias is None or bias.dtype.name in REAL)


def _tile_vnni(r: int, cfg: GemmConfig, k: int) -> list[str]:
    """An ``r``-row register tile: explicit accumulators so that they stay in zmm registers."""
    nb, nr = cfg.nb, cfg.nr
    kt = k % 4
    acc = [[f"a{i}_{j}" for j in range(nb)] for i in range(r)]
    out = [f"static inline void sf_tile{r}(const int8_t *restrict x, int64_t ldx, "
           "const uint8_t *restrict wp, int32_t *restrict ct, int64_t ng, int tail) {",
           "  (void)tail;"]
    for i in range(r):
        out.append(f"  const int8_t *x{i} = x + {i} * ldx;")
        out.append("  __m512i " + ", ".join(
            f"{a} = _mm512_loadu_si512((const void *)(ct + {i * nr + 16 * j}))"
            for j, a in enumerate(acc[i])) + ";")
    out.append("  for (int64_t g = 0; g < ng; g++) {")
    out.append(f"    const uint8_t *wk = wp + g * {nr * 4};")
    for j in range(nb):
        out.append(f"    const __m512i w{j} = _mm512_loadu_si512((const void *)(wk + {64 * j}));")
    for i in range(r):
        out.append(f"    const __m512i b{i} = _mm512_set1_epi32(sf_ld32(x{i} + 4 * g));")
        for j in range(nb):
            out.append(f"    SF_DPBUSD({acc[i][j]}, w{j}, b{i});")
    out.append("  }")
    if kt:
        # The last k-group of a row holds fewer than 4 bytes: read only those.
        out.append(f"  if (tail) {{ const uint8_t *wk = wp + ng * {nr * 4};")
        for j in range(nb):
            out.append(f"    const __m512i w{j} = _mm512_loadu_si512((const void *)(wk + {64 * j}));")
        for i in range(r):
            out.append(f"    int32_t t{i} = 0; memcpy(&t{i}, x{i} + 4 * ng, {kt});")
            out.append(f"    const __m512i b{i} = _mm512_set1_epi32(t{i});")
            for j in range(nb):
                out.append(f"    SF_DPBUSD({acc[i][j]}, w{j}, b{i});")
        out.append("  }")
    for i in range(r):
        for j in range(nb):
            out.append(f"  _mm512_storeu_si512((void *)(ct + {i * nr + 16 * j}), {acc[i][j]});")
    out.append("}")
    return out


def _tile_scalar(cfg: GemmConfig, k: int) -> list[str]:
    """The portable tile: the same packed layout, plain integer loops."""
    nr = cfg.nr
    return [
        "static void sf_tile(const int8_t *restrict x, int64_t ldx, int64_t R, "
        "const uint8_t *restrict wp, int32_t *restrict ct, int64_t ng, int tail) {",
        f"  const int64_t kn = 4 * ng + (tail ? {k % 4} : 0);",
        "  for (int64_t r = 0; r < R; r++) {",
        f"    int32_t acc[{nr}];",
        f"    for (int64_t j = 0; j < {nr}; j++) acc[j] = ct[r * {nr} + j];",
        "    for (int64_t kk = 0; kk < kn; kk++) {",
        "      const int32_t xv = x[r * ldx + kk];",
        f"      const uint8_t *wk = wp + (kk >> 2) * {nr * 4} + (kk & 3);",
        f"      for (int64_t j = 0; j < {nr}; j++) acc[j] += xv * (int32_t)wk[4 * j];",
        "    }",
        f"    for (int64_t j = 0; j < {nr}; j++) ct[r * {nr} + j] = acc[j];",
        "  }",
        "}",
    ]


def _prologue(x: Value, act: str, qmax: int, k: int, kp: int, ct: str) -> list[str]:
    """Dynamic symmetric quantisation of float x into ``xq`` [M, kp] (zero padded), with the
    per-row scale ``sx``, code sums ``rs`` and NaN flags ``nanrow`` (exactly the reference's
    arithmetic: absmax, scale = absmax / qmax (1 when not > 0), round-half-even of x / scale)."""
    f = "f" if ct == "float" else ""
    ld = load(x.dtype, "xr[kk]")
    out = []
    if act == "per_tensor":
        out += [f"  {ct} gmax = 0; int gnan = 0;",
                "  #pragma omp parallel for reduction(max:gmax) reduction(|:gnan) if (M * "
                f"{k} > {PAR_MACS})",
                "  for (int64_t m = 0; m < M; m++) {",
                f"    const {storage_type(x.dtype)} *xr = x + m * {k};",
                "    #pragma omp simd reduction(max:gmax) reduction(|:gnan)",
                f"    for (int64_t kk = 0; kk < {k}; kk++) {{ const {ct} a = fabs{f}({ld}); "
                "gnan |= a != a; gmax = a > gmax ? a : gmax; }",
                "  }",
                f"  const {ct} gsx = (!gnan && gmax > 0) ? gmax / ({ct}){qmax} : ({ct})1;"]
    out += [f"  #pragma omp parallel for if (M * {k} > {PAR_MACS})",
            "  for (int64_t m = 0; m < M; m++) {",
            f"    const {storage_type(x.dtype)} *xr = x + m * {k};"]
    if act == "per_token":
        out += [f"    {ct} amax = 0; int nan = 0;",
                "    #pragma omp simd reduction(max:amax) reduction(|:nan)",
                f"    for (int64_t kk = 0; kk < {k}; kk++) {{ const {ct} a = fabs{f}({ld}); "
                "nan |= a != a; amax = a > amax ? a : amax; }",
                f"    const {ct} s0 = amax / ({ct}){qmax}, s = (!nan && s0 > 0) ? s0 : ({ct})1;"]
    else:
        out += [f"    const {ct} s = gsx;"]
    out += ["    int32_t sum = 0; int bad = 0;",
            f"    int8_t *qr = xq + m * {kp};",
            "    #pragma omp simd reduction(+:sum) reduction(|:bad)",
            f"    for (int64_t kk = 0; kk < {k}; kk++) {{",
            f"      {ct} v = nearbyint{f}({ld} / s);",
            "      bad |= v != v;",
            f"      v = v != v ? 0 : (v < -{qmax} ? -{qmax} : (v > {qmax} ? {qmax} : v));",
            "      const int32_t c = (int32_t)v; qr[kk] = (int8_t)c; sum += c;",
            "    }",
            f"    for (int64_t kk = {k}; kk < {kp}; kk++) qr[kk] = 0;",
            "    rs[m] = sum; sx[m] = (double)s; nanrow[m] = bad;",
            "  }"]
    return out


def render_qlinear(k: Kernel, cfg: GemmConfig = DEFAULT) -> CKernel:
    """C source of a ``template`` kernel holding one supported ``qlinear``, with its packed
    constants. Pointer ABI: x, packed w, coff, scale, [zf], [bias], y; ``q[0]`` = M."""
    n = k.nodes[0]
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    y = n.outputs[0]
    act = n.attrs["act"]
    N, K = w.type.shape
    assert isinstance(N, int) and isinstance(K, int)
    packed = pack_qlinear(w.const, scale.const, zero.const if zero is not None else None,
                          w.dtype, cfg.nr)
    q = _Params()
    M = q(_prod(x.type.shape[:-1]))
    dynamic = act != "none"
    # Rows sums are needed whenever some coff is non-zero (signed codes, zero points).
    need_rs = dynamic or bool((packed.coff != 0).any()) or packed.zf is not None
    nr, P, kp = cfg.nr, packed.panels, -(-K // 4) * 4
    ct = compute_type(x.dtype) if dynamic else "float"
    qmax = (1 << (n.attrs["abits"] - 1)) - 1

    args: list = [x, *packed.tensors()] + ([bias] if bias is not None else []) + [y]
    decl = [f"  const {storage_type(x.dtype)} *restrict x = (const {storage_type(x.dtype)} *)p[0];",
            "  const uint8_t *restrict wp = (const uint8_t *)p[1];",
            "  const int32_t *restrict coff = (const int32_t *)p[2];",
            "  const double *restrict scale = (const double *)p[3];"]
    i = 4
    if packed.zf is not None:
        decl.append(f"  const double *restrict zf = (const double *)p[{i}];")
        i += 1
    if bias is not None:
        decl.append(f"  const {storage_type(bias.dtype)} *restrict bias = "
                    f"(const {storage_type(bias.dtype)} *)p[{i}];")
        i += 1
    decl.append(f"  {storage_type(y.dtype)} *restrict y = ({storage_type(y.dtype)} *)p[{i}];")

    # ---- epilogue over one finished tile: rows m0.., channels n0..n0+nv
    v = "(double)d * scale[n]"
    if packed.zf is not None:
        v = f"({v} - zf[n] * (double)rs[m])"
    if dynamic:
        v = f"({v} * sx[m])"
    if bias is not None:
        v = f"{v} + (double){load(bias.dtype, 'bias[n]')}"
    rs_term = "(uint32_t)coff[n] * (uint32_t)rs[m]" if need_rs else "0u"
    # No fused multiply-adds in the epilogue: the reference rounds the product and the sum
    # separately (f64 outputs then match it bit for bit).
    epi = ["__attribute__((optimize(\"fp-contract=off\")))",
           "static void sf_epilogue(const int32_t *restrict ct, int64_t R, int64_t m0, "
           "int64_t n0, int64_t nv, const int32_t *restrict coff, const double *restrict scale, "
           "const double *restrict zf, const int32_t *restrict rs, const double *restrict sx, "
           "const int *restrict nanrow, const void *restrict bias_, void *restrict y_) {",
           f"  {storage_type(y.dtype)} *restrict y = ({storage_type(y.dtype)} *)y_;",
           "  (void)zf; (void)rs; (void)sx; (void)nanrow; (void)bias_;"]
    if bias is not None:
        epi.append(f"  const {storage_type(bias.dtype)} *restrict bias = "
                   f"(const {storage_type(bias.dtype)} *)bias_;")
    epi += ["  for (int64_t r = 0; r < R; r++) {",
            "    const int64_t m = m0 + r;",
            "    #pragma omp simd",
            "    for (int64_t jj = 0; jj < nv; jj++) {",
            "      const int64_t n = n0 + jj;",
            # wrapping int32: exact whenever the true sum fits int32 (K <= MAX_K)
            f"      const int32_t d = (int32_t)((uint32_t)ct[r * {nr} + jj] - {rs_term});",
            f"      double v = {v};"]
    if dynamic:
        epi.append("      v = nanrow[m] ? NAN : v;")
    epi += [f"      y[m * {N} + n] = {store(y.dtype, 'v')};", "    }", "  }", "}"]

    # ---- the kernel
    body = ["  const int64_t M = " + M + ";", "  if (M <= 0) return;"]
    body.append("  int32_t *rs = NULL; double *sx = NULL; int *nanrow = NULL;")
    if dynamic:
        body += [f"  int8_t *xq = (int8_t *)malloc((size_t)M * {kp});",
                 "  rs = (int32_t *)malloc((size_t)M * sizeof(int32_t));",
                 "  sx = (double *)malloc((size_t)M * sizeof(double));",
                 "  nanrow = (int *)malloc((size_t)M * sizeof(int));"]
        body += _prologue(x, act, qmax, K, kp, ct)
        body.append(f"  const int8_t *xa = xq; const int64_t ldx = {kp};")
    else:
        body.append(f"  const int8_t *xa = (const int8_t *)x; const int64_t ldx = {K};")
        if need_rs:
            body += ["  rs = (int32_t *)malloc((size_t)M * sizeof(int32_t));",
                     f"  #pragma omp parallel for if (M * {K} > {PAR_MACS})",
                     "  for (int64_t m = 0; m < M; m++) {",
                     "    int32_t s = 0;",
                     "    #pragma omp simd reduction(+:s)",
                     f"    for (int64_t kk = 0; kk < {K}; kk++) s += xa[m * {K} + kk];",
                     "    rs[m] = s;",
                     "  }"]
    k4 = K // 4
    kcg = max(1, min(cfg.kc // 4, k4) if cfg.kc > 0 else k4)   # k-groups per pass
    nkb = max(1, -(-k4 // kcg))
    use_amx = cfg.amx and cfg.vnni and qgemm_amx_ok(cfg.nb, K, cfg.mc, nkb == 1)
    if use_amx:
        body += qgemm_amx_prologue(K)
    zf_arg = "zf" if packed.zf is not None else "NULL"
    bias_arg = "bias" if bias is not None else "NULL"
    tile_args = "xa + m * ldx + 4 * g0, ldx, wpp + g0 * " + str(nr * 4) + \
        ", ct + (m - mlo) * " + str(nr) + ", ng, tail"
    call_tile = ["#if SF_USE_VNNI", "          switch (R) {"]
    for r in range(cfg.mr, 0, -1):
        call_tile.append(f"            case {r}: sf_tile{r}({tile_args}); break;")
    call_tile += ["            default: break;", "          }", "#else",
                  f"          sf_tile({tile_args.replace('ldx, wpp', 'ldx, R, wpp')});", "#endif"]
    body += [f"  const int64_t MB = (M + {cfg.mc - 1}) / {cfg.mc}, T = {P} * MB;",
             # Tiles are handed out dynamically (a thread that runs behind on a shared machine
             # takes fewer), in runs of whole panels where there are enough of them (a panel
             # then stays in one L2), else in single tiles.
             "#ifdef _OPENMP",
             "  const int64_t nth = omp_get_max_threads();",
             "#else",
             "  const int64_t nth = 1;",
             "#endif",
             "  const int64_t CH = T >= 4 * nth * MB ? MB : 1;",
             f"  #pragma omp parallel if (M * {N * K} > {PAR_MACS})",
             "  {",
             # int32 sums of one (panel, row chunk) tile, kept over the passes along K
             f"    int32_t *ct = (int32_t *)aligned_alloc(64, {cfg.mc * nr * 4});",
             *(amx_only("    if (amx) _tile_loadconfig(&sf_amx_cfg);") if use_amx else []),
             "    #pragma omp for schedule(dynamic, CH)" if cfg.dyn else "    #pragma omp for schedule(static)",
             "    for (int64_t t = 0; t < T; t++) {",
             "      const int64_t pi = t / MB, mlo = (t % MB) * " + str(cfg.mc) + ";",
             f"      const int64_t mhi = mlo + {cfg.mc} < M ? mlo + {cfg.mc} : M;",
             f"      memset(ct, 0, (size_t)(mhi - mlo) * {nr * 4});",
             f"      const int64_t n0 = pi * {nr}, nv = {N} - n0 < {nr} ? {N} - n0 : {nr};",
             f"      const uint8_t *wpp = wp + pi * {(kp // 4) * nr * 4};",
             *(qgemm_amx_rows(K, nr) if use_amx else []),
             f"      for (int64_t kb = 0; kb < {nkb}; kb++) {{",
             f"        const int tail = kb == {nkb - 1} && {K % 4};",
             *(["        {",
                "          const int64_t g0 = gst, ng = " + str(k4) + " - gst;",
                "          if (ng > 0 || tail)",
                f"            for (int64_t m = mlo; m < mst; m += {cfg.mr}) {{",
                f"              const int64_t R = mst - m < {cfg.mr} ? mst - m : {cfg.mr};"] + call_tile + [
                "            }",
                "        }"] if use_amx else []),
             f"        const int64_t g0 = kb * {kcg}, ng = {k4} - g0 < {kcg} ? {k4} - g0 : {kcg};",
             f"        for (int64_t m = {'mst' if use_amx else 'mlo'}; m < mhi; m += {cfg.mr}) {{",
             f"          const int64_t R = mhi - m < {cfg.mr} ? mhi - m : {cfg.mr};"] + call_tile + [
             "        }",
             "      }",
             f"      for (int64_t m = mlo; m < mhi; m += {cfg.mr}) {{",
             f"        const int64_t R = mhi - m < {cfg.mr} ? mhi - m : {cfg.mr};",
             f"        sf_epilogue(ct + (m - mlo) * {nr}, R, m, n0, nv, coff, scale, {zf_arg}, rs, "
             f"sx, nanrow, {bias_arg}, y);",
             "      }",
             "    }",
             *(amx_only("    if (amx) _tile_release();") if use_amx else []),
             "    free(ct);",
             "  }"]
    if use_amx:
        body += amx_only("  free(xt);")
    if dynamic:
        body.append("  free(xq);")
    body += ["  free(rs); free(sx); free(nanrow);"]

    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if not cfg.vnni:
        head.append("#define SF_NO_VNNI 1")
    head += ["#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(SF_NO_VNNI)",
             "#define SF_USE_VNNI 1", "#include <immintrin.h>", "#else", "#define SF_USE_VNNI 0",
             "#endif",
             "#if SF_USE_VNNI",
             # acc += u8 weights x the 4 s8 activation bytes broadcast in b. Inline asm: gcc 12
             # spills the accumulators of the _mm512_dpbusd_epi32 intrinsic in such a loop.
             # (A register broadcast measured ~10 % faster here than an embedded {1to16} one.)
             "#define SF_DPBUSD(acc, w, b) __asm__(\"vpdpbusd %2, %1, %0\" : \"+v\"(acc) : \"v\"(w), \"v\"(b))",
             "static inline int32_t sf_ld32(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }"]
    for r in range(1, cfg.mr + 1):
        head += _tile_vnni(r, cfg, K)
    head += ["#else"] + _tile_scalar(cfg, K) + ["#endif"]
    if use_amx:
        head += qgemm_amx_head(cfg.nb)
    src = "\n".join([PRELUDE] + head + epi + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    return CKernel(k, src, q.exprs, args)
