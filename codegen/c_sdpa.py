"""Float32 scaled dot-product attention as generated C (the C target's ``sdpa``).

The C target ran ``sdpa`` as a ``library`` kernel: torch's CPU attention, which on the
shapes of small encoders leaves most of the FMA units idle (ViT-tiny's 3 heads of 197 tokens:
220-280 µs a call for 30 MFLOP). This module renders, for such a kernel, a C alternative that
the executor runs instead (runtime/alternatives.py ``compiled_alt``) at bindings of at least
``MIN_ROWS`` rows per k head (query rows times the q heads sharing it): below, most of a
tile's rows would be padding. With GQA the q heads of one k head are consecutive, so their
rows are one contiguous block that tiles run over: a decoding step of a GQA model (one query
row, 8 q heads per k head in Llama-style models) fills tiles as a prompt's rows do.

Scope (``sdpa_supported``): q [B, Hq, L, D] or [Hq, L, D], k [.., Hk, S, D], v [.., Hk, S, Dv],
all f32, D and Dv static; an optional mask of q's rank or less, bool (True = attend) or f32
(added), broadcasting to [B, Hq, L, S]; ``causal``, ``scale`` and ``gqa`` as the op defines
them. Rows with every key masked give zeros, and NaN probabilities become 0, as the op's
reference does (``ir/ops/attention.py``).

Loop: the threads share (batch, k head, group of ``GROUP`` tiles of ``MR`` rows). A
thread packs the keys of the k head it works on into 32-key panels [D][32] (``sf_tr16`` for
whole 16 x 16 blocks) when the head changes (a static schedule hands it consecutive tiles of
one head). Per tile: the scores [MR, S] (two zmm accumulators per query row and 32 keys,
broadcast query elements times key panels), scaled; mask, causal limit and the softmax of each
row in ``omp simd`` loops (the fused kernels' exponential); then the rows times v (two zmm per
row and 32 value channels, v's rows read in place). The scores
of a tile live in a per-thread buffer, so memory is MR x S floats per thread whatever L.

Kernel ABI (c.py): ``p`` = q, k, v, [mask], y; ``q`` = B, Hq, Hk, L, S, with a mask its
element strides over [B, Hq, L, S] (0 where it broadcasts), then the element strides over
(batch, head, row) of q, k, v and y (rows unit-stride). q, k and v come as they are when their
rows are (``runtime/csdpa.py``: the strided q / k / v views of a fused QKV projection are not
copied). y is written [B, L, H, Dv]-major where its readers transpose heads and rows
(``blhd_output``), so that the head merge after it is a view; else contiguous. The mask is
contiguous.
"""
from __future__ import annotations

import math
from typing import Sequence

import sympy

from . import c_conv
from ..ir.graph import Value
from .c import CKernel
from .c_isa import VEC_MACRO, isa_variants
from .c_tile import TRANSPOSE16
from .c_types import PRELUDE
from .schedule import Kernel

MR = 6          # query rows per tile
# fewer rows per k head (a decoding step without GQA) keep torch's kernel: a tile would
# compute MR rows
MIN_ROWS = 4
GROUP = 1       # tiles per work item (finer: 3 heads x 33 tiles of ViT-tiny balance over 2 threads)
PAR_FLOPS = 1 << 19


def sdpa_supported(k: Kernel) -> bool:
    """Whether library kernel ``k`` is an ``sdpa`` this module renders (module doc)."""
    if k.kind != "library" or len(k.nodes) != 1 or k.nodes[0].op != "sdpa":
        return False
    n = k.nodes[0]
    q, kk, v = n.inputs[:3]
    mask = n.inputs[3] if len(n.inputs) > 3 else None
    if any(t is None or t.dtype.name != "f32" for t in (q, kk, v, n.outputs[0])):
        return False
    if q.type.rank not in (3, 4) or kk.type.rank != q.type.rank or v.type.rank != q.type.rank:
        return False
    if not isinstance(q.type.shape[-1], int) or not isinstance(v.type.shape[-1], int):
        return False
    if mask is not None and (mask.dtype.name not in ("f32", "bool") or mask.type.rank > 4):
        return False
    return True


def _mask_strides(mask_shape: list) -> list[sympy.Expr]:
    """Element strides of a contiguous mask of ``mask_shape`` over the [B, Hq, L, S] it
    broadcasts to (right-aligned; 0 where its size is 1 or it lacks the dim)."""
    shape = [1] * (4 - len(mask_shape)) + list(mask_shape)
    strides: list[sympy.Expr] = []
    acc: sympy.Expr = sympy.Integer(1)
    for d in reversed(shape):
        strides.append(sympy.Integer(0) if d == 1 else acc)
        acc = acc * sympy.sympify(d)
    return list(reversed(strides))


def _qk_tile(d: int) -> list[str]:
    """``sf_qk``: scores of MR query rows against one 32-key panel [D][32] (two zmm per row:
    each broadcast query element serves 32 keys)."""
    out = ["static inline void sf_qk(const float *const *restrict qr, const float *restrict kp, "
           "float scale, float *restrict out, int64_t ld) {"]
    out.append("  " + " ".join(f"__m512 a{r} = _mm512_setzero_ps(), b{r} = _mm512_setzero_ps();" for r in range(MR)))
    out.append(f"  for (int64_t d = 0; d < {d}; d++) {{")
    out.append("    const __m512 w0 = _mm512_loadu_ps(kp + d * 32), w1 = _mm512_loadu_ps(kp + d * 32 + 16);")
    for r in range(MR):
        out.append(f"    {{ const __m512 x = _mm512_set1_ps(qr[{r}][d]); a{r} = _mm512_fmadd_ps(x, w0, a{r}); "
                   f"b{r} = _mm512_fmadd_ps(x, w1, b{r}); }}")
    out.append("  }")
    out.append("  const __m512 sv = _mm512_set1_ps(scale);")
    out += [f"  _mm512_storeu_ps(out + {r} * ld, _mm512_mul_ps(a{r}, sv)); "
            f"_mm512_storeu_ps(out + {r} * ld + 16, _mm512_mul_ps(b{r}, sv));" for r in range(MR)]
    out.append("}")
    return out


def _pv_tile() -> list[str]:
    """``sf_pv``: MR probability rows (stride ``ldp``, ``s`` keys) times 32 value channels of
    v (rows ``ldv`` apart; ``k0`` / ``k1`` mask channels past Dv) into ``out`` (MR x 32)."""
    out = ["static inline void sf_pv(const float *restrict pr, int64_t ldp, int64_t s, "
           "const float *restrict v, int64_t ldv, __mmask16 k0, __mmask16 k1, float *restrict out) {"]
    out.append("  " + " ".join(f"__m512 a{r} = _mm512_setzero_ps(), b{r} = _mm512_setzero_ps();" for r in range(MR)))
    out.append("  for (int64_t j = 0; j < s; j++) {")
    out.append("    const __m512 w0 = _mm512_maskz_loadu_ps(k0, v + j * ldv), w1 = _mm512_maskz_loadu_ps(k1, v + j * ldv + 16);")
    for r in range(MR):
        out.append(f"    {{ const __m512 x = _mm512_set1_ps(pr[{r} * ldp + j]); a{r} = _mm512_fmadd_ps(x, w0, a{r}); "
                   f"b{r} = _mm512_fmadd_ps(x, w1, b{r}); }}")
    out.append("  }")
    out += [f"  _mm512_storeu_ps(out + {r * 32}, a{r}); _mm512_storeu_ps(out + {r * 32 + 16}, b{r});" for r in range(MR)]
    out.append("}")
    return out


def _scalar_tiles(d: int) -> list[str]:
    return [
        "static inline void sf_qk(const float *const *restrict qr, const float *restrict kp, "
        "float scale, float *restrict out, int64_t ld) {",
        f"  for (int64_t r = 0; r < {MR}; r++) for (int64_t j = 0; j < 32; j++) {{",
        "    float a = 0.0f;",
        f"    for (int64_t d = 0; d < {d}; d++) a += qr[r][d] * kp[d * 32 + j];",
        "    out[r * ld + j] = a * scale;",
        "  }",
        "}",
        "static inline void sf_pv(const float *restrict pr, int64_t ldp, int64_t s, "
        "const float *restrict v, int64_t ldv, int64_t nv, float *restrict out) {",
        f"  for (int64_t r = 0; r < {MR}; r++) for (int64_t c = 0; c < 32; c++) {{",
        "    float a = 0.0f;",
        "    if (c < nv) for (int64_t j = 0; j < s; j++) a += pr[r * ldp + j] * v[j * ldv + c];",
        "    out[r * 32 + c] = a;",
        "  }",
        "}",
    ]


def render_sdpa(k: Kernel, graph_outputs: Sequence[Value] = ()) -> CKernel:
    """C source of the attention alternative of library kernel ``k`` (``sdpa_supported``);
    ``c_conv.CONV.vec`` False renders the portable scalar loops only (tests).
    ``graph_outputs``: the graph's outputs (y among them keeps the contiguous layout)."""
    vec = c_conv.CONV.vec
    n = k.nodes[0]
    q, kk, v = n.inputs[:3]
    mask = n.inputs[3] if len(n.inputs) > 3 else None
    y = n.outputs[0]
    a = n.attrs
    d, dv = q.type.shape[-1], v.type.shape[-1]
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(d)
    bmask = mask is not None and mask.dtype.name == "bool"
    args: list = [q, kk, v] + ([mask] if mask is not None else []) + [y]
    mtype = "uint8_t" if bmask else "float"
    decl = ["  const float *restrict Q = (const float *)p[0];",
            "  const float *restrict K = (const float *)p[1];",
            "  const float *restrict V = (const float *)p[2];"]
    if mask is not None:
        decl.append(f"  const {mtype} *restrict Mk = (const {mtype} *)p[3];")
    decl += [f"  float *restrict Y = (float *)p[{len(args) - 1}];",
             "  const int64_t B = q[0], HQ = q[1], HK = q[2], L = q[3], S = q[4];",
             "  if (B <= 0 || HQ <= 0 || L <= 0) return;"]
    if mask is not None:
        decl.append("  const int64_t mb = q[5], mh = q[6], mi = q[7], mj = q[8];")
    o = 9 if mask is not None else 5
    decl.append("  const int64_t " + ", ".join(
        f"{t}s{a} = q[{o + 3 * i + j}]" for i, t in enumerate("qkvy") for j, a in enumerate("bhl")) + ";")
    if bmask:
        apply_mask = "v = Mk[mo + j * mj] ? v : -INFINITY;"
    elif mask is not None:
        apply_mask = "v = v + Mk[mo + j * mj];"
    else:
        apply_mask = ""
    causal = "if (j > i) v = -INFINITY;" if a["causal"] else ""
    body = [
        # the G query heads of a k head are consecutive, so their G x L rows are one
        # contiguous block of q (and of y): tiles run over it, a decoding step's G heads of
        # one row each filling a tile as the L rows of one head do
        "  const int64_t G = HQ / HK, SP = (S + 31) / 32 * 32, R = G * L;",
        f"  const int64_t TI = (R + {MR - 1}) / {MR}, NG = (TI + {GROUP - 1}) / {GROUP};",
        f"  #pragma omp parallel if (B * HQ * L * S * {d + dv} > {PAR_FLOPS})",
        "  {",
        f"    float *kt = (float *)aligned_alloc(64, (size_t)(SP > 0 ? SP : 32) * {d} * 4);",
        f"    float *sc = (float *)aligned_alloc(64, (size_t)(SP > 0 ? SP : 32) * {MR} * 4);",
        f"    float ct[{MR * 32}] __attribute__((aligned(64)));",
        f"    float zq[{d}];",
        f"    for (int64_t t = 0; t < {d}; t++) zq[t] = 0.0f;",
        "    int64_t packed = -1;",
        "    #pragma omp for collapse(3) schedule(static)",
        "    for (int64_t b = 0; b < B; b++)",
        "    for (int64_t hk = 0; hk < HK; hk++)",
        "    for (int64_t gi = 0; gi < NG; gi++) {",
        "      const int64_t key = b * HK + hk;",
        "      const float *Kh = K + b * ksb + hk * ksh;",
        "      const float *Vh = V + b * vsb + hk * vsh;",
        "      if (key != packed) {",
        "        for (int64_t j0 = 0; j0 < SP; j0 += 32) {",
        f"          float *pan = kt + j0 * {d};",
        "#if SF_SDPA_VEC",
        f"          if (j0 + 32 <= S && {int(d % 16 == 0)}) {{",
        f"            for (int64_t c = 0; c < {d}; c += 16) {{ sf_tr16(Kh + j0 * ksl + c, ksl, pan + c * 32, 32); "
        "sf_tr16(Kh + (j0 + 16) * ksl + c, ksl, pan + c * 32 + 16, 32); }",
        "            continue;",
        "          }",
        "#endif",
        f"          for (int64_t c = 0; c < {d}; c++) for (int64_t j = 0; j < 32; j++)",
        "            pan[c * 32 + j] = j0 + j < S ? Kh[(j0 + j) * ksl + c] : 0.0f;",
        "        }",
        "        packed = key;",
        "      }",
        f"      for (int64_t t = gi * {GROUP}; t < TI && t < (gi + 1) * {GROUP}; t++) {{",
        f"        const int64_t i0 = t * {MR}, mr = R - i0 < {MR} ? R - i0 : {MR};",
        f"        const float *qr[{MR}];",
        f"        for (int64_t r = 0; r < {MR}; r++) {{",
        "          const int64_t rr = i0 + (r < mr ? r : 0), h = hk * G + rr / L, i = rr % L;",
        "          qr[r] = r < mr ? Q + b * qsb + h * qsh + i * qsl : zq;",
        "        }",
        "        for (int64_t j0 = 0; j0 < SP; j0 += 32)",
        f"          sf_qk(qr, kt + j0 * {d}, {scale!r}f, sc + j0, SP);",
        "        for (int64_t r = 0; r < mr; r++) {",
        "          const int64_t h = hk * G + (i0 + r) / L, i = (i0 + r) % L;",
        "          float *row = sc + r * SP;",
        *(["          const int64_t mo = b * mb + h * mh + i * mi;"] if mask is not None else []),
        "          float mx = -INFINITY;",
        "          #pragma omp simd reduction(max:mx)",
        "          for (int64_t j = 0; j < S; j++) {",
        "            float v = row[j];",
        f"            {apply_mask}",
        f"            {causal}",
        "            row[j] = v;",
        "            mx = v > mx ? v : mx;",
        "          }",
        "          float sum = 0.0f;",
        "          if (mx == -INFINITY) {",
        "            for (int64_t j = 0; j < SP; j++) row[j] = 0.0f;",
        "          } else {",
        "            #pragma omp simd reduction(+:sum)",
        "            for (int64_t j = 0; j < S; j++) { const float e = sf_exp_float(row[j] - mx); row[j] = e; sum += e; }",
        "            const float inv = 1.0f / sum;",
        "            #pragma omp simd",
        "            for (int64_t j = 0; j < S; j++) { const float pj = row[j] * inv; row[j] = pj != pj ? 0.0f : pj; }",
        "            for (int64_t j = S; j < SP; j++) row[j] = 0.0f;",
        "          }",
        "        }",
        f"        for (int64_t r = mr; r < {MR}; r++) for (int64_t j = 0; j < SP; j++) sc[r * SP + j] = 0.0f;",
        f"        for (int64_t c0 = 0; c0 < {dv}; c0 += 32) {{",
        f"          const int64_t nv = {dv} - c0 < 32 ? {dv} - c0 : 32;",
        "#if SF_SDPA_VEC",
        "          const __mmask16 k0 = nv >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1);",
        "          const __mmask16 k1 = nv >= 32 ? (__mmask16)0xFFFF : (nv > 16 ? (__mmask16)((1u << (nv - 16)) - 1) : (__mmask16)0);",
        "          sf_pv(sc, SP, S, Vh + c0, vsl, k0, k1, ct);",
        "#else",
        "          sf_pv(sc, SP, S, Vh + c0, vsl, nv, ct);",
        "#endif",
        "          for (int64_t r = 0; r < mr; r++) {",
        "            const int64_t h = hk * G + (i0 + r) / L, i = (i0 + r) % L;",
        "            float *yr = Y + b * ysb + h * ysh + i * ysl + c0;",
        "            for (int64_t c = 0; c < nv; c++) yr[c] = ct[r * 32 + c];",
        "          }",
        "        }",
        "      }",
        "    }",
        "    free(kt);",
        "    free(sc);",
        "  }",
    ]
    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if not vec:
        head.append("#define SF_NO_VEC 1")
    head += isa_variants("SF_SDPA_VEC", [TRANSPOSE16, *_qk_tile(d), *_pv_tile()], _scalar_tiles(d))
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    qs, ks = list(q.type.shape), list(kk.type.shape)
    if len(qs) == 3:
        qs, ks = [1] + qs, [1] + ks
    params = [sympy.sympify(x) for x in (qs[0], qs[1], ks[1], qs[2], ks[2])]
    if mask is not None:
        params += _mask_strides(list(mask.type.shape))
    # element strides over (batch, head, row) of q, k, v and y: those of contiguous tensors
    # here; the step (runtime/csdpa.py) passes the real ones of q, k and v, and y's layout
    hq, hk, L, S = params[1:5]
    params += [hq * L * d, L * d, sympy.Integer(d), hk * S * d, S * d, sympy.Integer(d),
               hk * S * dv, S * dv, sympy.Integer(dv)]
    if blhd_output(k, graph_outputs):
        params += [L * hq * dv, sympy.Integer(dv), hq * dv]
    else:
        params += [hq * L * dv, L * dv, sympy.Integer(dv)]
    return CKernel(k, src, params, args, needs=VEC_MACRO)


def blhd_output(k: Kernel, graph_outputs: Sequence[Value]) -> bool:
    """Whether the kernel writes y [B, H, L, Dv] in [B, L, H, Dv] memory: when every reader
    of a rank-4 y is a transpose of its heads and rows (``y.transpose(1, 2)`` before the
    heads are merged, as in every Hugging Face and timm attention), which is then contiguous,
    and the merging reshape a view instead of a copy."""
    y = k.nodes[0].outputs[0]
    if y.type.rank != 4 or any(o is y for o in graph_outputs):
        return False
    users = y.users()
    return bool(users) and all(u.op == "transpose" and tuple(u.attrs.get("perm") or ()) == (0, 2, 1, 3)
                               for u in users)
