"""Float32 ``linear`` with a constant weight at small M (the GEMV shape of LLM decoding) as C.

The C target runs a float ``linear`` as a ``library`` kernel: oneDNN's ``_linear_pointwise``
(runtime/library.py) with its activation or residual ``add`` epilogue as a post-op. At one
to a few rows that streams the weight (out of cache) at ~26-38 GB/s on this project's 2-core
Zen 5, where onnxruntime's prepacked MLAS GEMV reaches ~31-48 (benchmarks/f32_gemv_cpu.py). This module
renders, for such a kernel, a C alternative that the executor runs instead of the library
call at every binding of the sizes whose row count M is at most :meth:`GemvConfig.limit` for its weight
(runtime/executor.py ``_runs_compiled``); larger M keeps the library path. A static M above
the threshold renders nothing.

Weights: read in place. The kernel's weight argument is the graph's own constant [N, K]
(row-major, as the library path and save/load read it): no packed copy, nothing allocated
per weight, so the alternative costs no memory. A 32-channel panel layout interleaved along
K (an earlier version) streamed a little better at M >= 2 but doubled the memory of every
f32 linear weight on the C target (dynamic-M BERT-style models included), since the graph
keeps its constant for the library path; that is not worth it.

Loop: the output channels are cut into blocks of ``rows`` weight rows, which the threads
take as contiguous runs (OpenMP dynamic, a few runs per thread). Per block and tile of
``mr`` x rows, one zmm accumulator per (x row, weight row) sums over K in steps of 16 (each
x vector loaded once per step and shared by the tile's weight rows; the last ``K % 16``
columns by masked loads), then a horizontal sum, plus bias, epilogue, store. Each output is
this same f32 sequence whatever the tile and whatever the thread, so results do not depend
on the thread count (only the summation order differs from oneDNN / torch). Software
prefetch measured no gain for large weights streamed at M = 1 (the hardware prefetchers
follow the few sequential row streams); small weights prefetch (below).

Threshold, by the weight's size (:meth:`GemvConfig.limit`). Measured on the 2-core Zen 5:
- weights out of cache (copies cycled over >= 128 MB; benchmarks/f32_gemv_cpu.py, TinyLlama
  shapes 2048x2048, 2048x5632, 5632x2048, 2048x32000): this kernel streams ~38-48 GB/s at
  M = 1 (oneDNN 30-38), ~34-46 at M = 2 (oneDNN 26-31) and ~31-37 at M = 4 (oneDNN 26-31);
  at M = 8 it ties or trails (22-27 vs 25-30) and at 16 trails (18-20 vs 21-25), whether
  tiles take 4 or 8 x rows. Hence ``max_m = 4`` for large weights;
- weights that stay in cache from call to call (BERT-size linears; fifteenth session,
  ``probe/gm.py``, not kept: one compiled linear, µs per call, library / this kernel): at
  M = 8 it wins on every shape tried (384x384 35 / 25, 384x1536 70 / 52, 1536x384 72 / 48,
  768x768 71 / 52, 768x3072 198 / 174, 3072x768 194 / 178); at M = 16 only the 0.6 MB
  384x384 weight still wins (40 / 24; 2.4 MB ones tie or lose: 90 / 93, 90 / 79, 89 / 99),
  and it keeps winning there up to M = 32-64 (51 / 38, 68 / 64; M = 128 109 / 118). With
  the weights out of cache the two tie at M = 8 (f32_gemv_cpu.py --m 8: 2048x2048 0.658 /
  0.647 ms, 768x3072 0.420 / 0.406, 3072x768 0.404 / 0.409, 768x768 0.162 / 0.164), and at
  M = 16 the kernel wins up to 2.4 MB and loses at 4 MB (--m 16 --max-m 16: 768x768 0.219 /
  0.225, 384x1536 0.224 / 0.250, 1536x384 0.190 / 0.202, 1024x1024 0.328 / 0.301). Hence
  ``tiers``: 32 rows up to 1 MB, 16 up to 3 MB, 8 up to 8 MB. End to end, all-MiniLM-L6-v2
  at batch 1 (whose 42 MB of linear weights do not all stay in the 32 MB L3; ``probe/mlg.py``
  and ``probe/mlg2.py``, not kept): 2.93 -> 2.66 ms at 8 tokens, 3.16 -> 2.86 at 16 and 4.48
  -> 4.13 at 32 with 32 rows up to 1 MB and 8 up to 8 MB; the 16-row tier then took 16
  tokens from 3.18 to 3.01 ms and 12 from 3.40 to 3.07 (interleaved rounds, a slower hour).

Blocking by the weight's size (``GemvConfig.small``; seventeenth session, ``probe/gvt2.py``,
not kept: one compiled linear in cache, µs per call less the executor's ~10 µs, best of
three rounds): weights up to 3 MB take tiles of 8 x rows x 3 weight rows (24 accumulators,
blocks of 12 weight rows) instead of 4 x 4. At 2.4 MB (1536x384, 384x1536, 768x768) that
is 1.3-1.6x faster from M = 4 to 32 (M = 16: 80.1 / 49.8, 81.2 / 61.5, 82.7 / 56.4; M = 8:
41.1 / 27.9, 48.3 / 30.9, 42.8 / 25.5) and level at M = 1; at 0.6 MB (384x384) 1.05-1.2x.
Larger weights keep 4 x 4: at 9.4 MB (768x3072) the wider tile lost at M = 1 (58.3 against
49.7). Small weights' tiles of several x rows also prefetch the next tile's weight rows
into L1 as they go: in a model such weights come from L3 or DRAM (all-MiniLM-L6-v2's 42 MB
do not stay in the 32 MB L3), which the first pass of a block over its rows otherwise waits
on. ``probe/steps.py`` / ``steps2.py`` (not kept: chains of 50 384x384 linears, 29 MB, and
of 16 alternating 384x1536 / 1536x384, 38 MB; µs per linear): 384x384 at M = 16 32.6 -> 19.6;
2.4 MB at M = 4 58.1 -> 32.4 and M = 16 105.7 -> 87.8; at M = 1 it lost (41.5 -> 48.4), so
single-row tiles do not prefetch, and large weights (f32_gemv_cpu.py) measured no gain.
The sums of a tile's accumulators share their shuffles (four at a time), in the order of
``_mm512_reduce_add_ps``, so a result still does not depend on the tile.

Kernel ABI (c.py): ``p`` = x [M, K], the weight constant [N, K] itself (the graph's Value
in ``CKernel.args``, so the executor passes the tensor it holds anyway), [bias [N]], [the
epilogue ``add``'s other operand, y-shaped], y [M, N]; ``q[0]`` = M and ``q[1]`` =
:meth:`GemvConfig.limit` of the weight (both always runtime integers, so one source serves every M and
every model of the shape; the executor reads ``q[1]`` to choose the path). Epilogues:
whatever elementwise op the linear's library kernel took (c.py ``LINEAR_EPILOGUE``: gelu,
relu, silu, sigmoid, tanh, add) in the fused C kernels' own expressions (c_expr.py), on each
f32 sum plus bias. Without AVX-512 a portable scalar dot product per output is compiled.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from ..ir.graph import Node, Value
from ..ir.types import dims_equal
from .c import CKernel, _prod
from .c_isa import TILE_MACROS, isa_variants
from .c_conv import residual_operand
from .c_quant import C_EXPR, c_node_ok
from .c_types import PRELUDE
from .schedule import Kernel

PAR_MACS = 1 << 21   # below this many multiply-adds the kernel runs on one thread


@dataclass(frozen=True)
class GemvConfig:
    """``max_m``: the most rows of x the kernel takes for large weights (0: never rendered; 4,
    the largest M where it outstreams oneDNN with the weights out of cache: module docstring;
    ``limit`` raises it for weights that stay in cache); ``rows``:
    weight rows (output channels) per block, the unit the threads share out; ``mr``: x rows
    per tile (more rows run as further tiles over the same weight rows, then in L1 / L2);
    ``runs``: runs of blocks per thread (scheduled dynamically, so that a thread whose core
    another process holds does less); ``acc``: zmm accumulators per tile at most;
    ``prefetch``: tiles of several x rows ask for the next tile's weight rows as they go;
    ``vec=False`` renders the portable scalar loop only (tests); ``small``: (weight bytes at
    most, rows, mr, acc, prefetch) for weights that small, which run at more rows from cache
    (module docstring), or None."""

    max_m: int = 4
    rows: int = 8
    mr: int = 4
    runs: int = 4
    acc: int = 16
    prefetch: bool = False
    vec: bool = True
    # (weight bytes at most, rows): smaller weights take the kernel to more rows (module doc)
    tiers: tuple[tuple[int, int], ...] = ((1 << 20, 32), (3 << 20, 16), (8 << 20, 8))
    small: tuple[int, int, int, int, bool] | None = None

    def __post_init__(self) -> None:
        for f in ("rows", "mr", "runs", "acc"):
            if getattr(self, f) < 1:
                raise ValueError(f"GemvConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.acc > 28:
            raise ValueError(f"GemvConfig.acc must be <= 28 (of 32 zmm, the x and weight vectors need the rest), got {self.acc}")
        if self.max_m < 0:
            raise ValueError(f"GemvConfig.max_m must be >= 0, got {self.max_m}")
        if self.mr * self.rows > 1024:
            raise ValueError("GemvConfig: mr * rows too large for the tile's stack buffer")

    def limit(self, n: int, k: int) -> int:
        """The most rows of x the kernel takes for an f32 weight [n, k]: ``max_m``, raised to
        the rows of the first of ``tiers`` whose size the weight's bytes do not exceed (0 when
        ``max_m`` is 0: never rendered)."""
        if self.max_m < 1:
            return 0
        size = 4 * n * k
        return max(self.max_m, next((rows for most, rows in self.tiers if size <= most), self.max_m))

    def width(self, r: int) -> int:
        """Weight rows per tile of ``r`` x rows: the largest divisor of ``rows`` that keeps
        ``r * width`` accumulators within ``acc`` zmm (at least 1)."""
        return max([d for d in range(1, self.rows + 1) if self.rows % d == 0 and r * d <= self.acc] or [1])

    def for_weight(self, n: int, k: int) -> GemvConfig:
        """The config the kernel of an f32 weight [n, k] renders with: ``small``'s blocking
        where the weight is that small, else this one."""
        if self.small is None or 4 * n * k > self.small[0]:
            return self
        _, rows, mr, acc, prefetch = self.small
        return replace(self, rows=rows, mr=mr, acc=acc, prefetch=prefetch, small=None)


# Weights up to 3 MB (BERT-size linears, in cache from call to call) take 8 x rows x 3
# weight rows per tile, prefetching: 1.05-1.6x faster than 4 x 4 at M = 4..32 (module docstring).
GEMV = GemvConfig(small=(3 << 20, 12, 8, 24, True))


def gemv_supported(k: Kernel, cfg: GemvConfig | None = None) -> bool:
    """Whether ``k`` (a ``library`` kernel) is a float32 ``linear`` this module renders:
    x f32 [..., K] with static K >= 1, a constant f32 weight [N, K] with static N >= 1,
    bias absent or f32 [N], output f32, at most one f32 epilogue node the fused C kernels
    evaluate (an activation of the linear's output, or an ``add`` of a same-shaped tensor),
    and M (the product of x's leading dims) not statically above ``cfg.max_m``."""
    cfg = cfg or GEMV
    if cfg.max_m < 1 or not f32_linear(k):
        return False
    x, w = k.nodes[0].inputs[0], k.nodes[0].inputs[1]
    N, K = w.type.shape
    m = _prod(x.type.shape[:-1])
    return not (isinstance(m, int) and m > cfg.limit(N, K))


def f32_linear(k: Kernel) -> bool:
    """Whether ``k`` is a library float32 ``linear`` the C alternatives take (this module's
    and c_f32gemm.py's): x f32 [..., K] with static K >= 1, a constant f32 weight [N, K] of
    static shape, bias absent or f32 [N], output f32, at most one epilogue node
    (``_epilogue_ok``)."""
    if k.kind != "library" or not k.nodes or k.nodes[0].op != "linear" or len(k.nodes) > 2:
        return False
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    if x is None or w is None or not w.is_const or w.type.rank != 2 or x.type.rank < 1:
        return False
    N, K = w.type.shape
    if not isinstance(N, int) or not isinstance(K, int) or N < 1 or K < 1 or x.type.shape[-1] != K:
        return False
    if any(v is not None and v.dtype.name != "f32" for v in (x, w, bias, n.outputs[0])):
        return False
    if bias is not None and tuple(bias.type.shape) != (N,):
        return False
    return len(k.nodes) == 1 or _epilogue_ok(n, k.nodes[1])


def _epilogue_ok(lin: Node, e: Node) -> bool:
    """An f32 unary activation of the linear's output or an ``add`` of it and another f32
    tensor of y's shape, which the fused kernels' C expressions evaluate."""
    out = lin.outputs[0]
    if len(e.outputs) != 1 or not c_node_ok(e) or e.op not in C_EXPR:
        return False
    if any(v is None or v.dtype.name != "f32" for v in (*e.inputs, e.outputs[0])):
        return False
    if e.op == "add":
        if len(e.inputs) != 2 or sum(v is out for v in e.inputs) != 1:
            return False
        other = e.inputs[1] if e.inputs[0] is out else e.inputs[0]
        return len(other.type.shape) == len(out.type.shape) and \
            all(dims_equal(a, b) for a, b in zip(other.type.shape, out.type.shape))
    return len(e.inputs) == 1 and e.inputs[0] is out


def linear_args(k: Kernel) -> tuple[list, list[str], Value | None]:
    """The pointer arguments of a float linear's C alternative (ABI in the module doc: x, the
    graph's weight, [bias], [the add's other operand], y), their C declarations, and the
    other operand (None without an ``add`` epilogue). Shared with c_f32gemm.py."""
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    other = residual_operand(k)
    args: list = [x, w]
    decl = ["  const float *restrict x = (const float *)p[0];",
            "  const float *restrict w = (const float *)p[1];"]
    for name, v in (("bias", bias), ("oth", other)):
        if v is not None:
            decl.append(f"  const float *restrict {name} = (const float *)p[{len(args)}];")
            args.append(v)
    decl.append(f"  float *restrict y = (float *)p[{len(args)}];")
    args.append(k.nodes[-1].outputs[0])
    return args, decl, other


def _tile_vec(r: int, c: int, K: int, prefetch: bool = False) -> list[str]:
    """AVX-512 tile ``sf_gv{r}_{c}``: ``r`` rows of x (row stride ``K``) times ``c`` rows of
    the weight (row-major [N, K]: rows ``w``, ``w + K``, ...) into ``ct[i * c + j]``. One zmm
    accumulator per (x row, weight row), FMAs over K in steps of 16 (the x vectors loaded
    once per step and shared by the ``c`` weight rows), the last ``K % 16`` columns by masked
    loads, then the horizontal sums (``sf_gv_hsum*``, four accumulators at a time by one
    fixed tree). Every output is this same sequence whatever the tile, so the tiling (and the
    threads' split) does not change a result."""
    acc = [[f"a{i}_{j}" for j in range(c)] for i in range(r)]
    out = [f"static inline void sf_gv{r}_{c}(const float *restrict x, const float *restrict w, "
           "float *restrict ct, int64_t ldc) {"]
    for i in range(r):
        out.append("  " + " ".join(f"__m512 {acc[i][j]} = _mm512_setzero_ps();" for j in range(c)))

    def step(k: str, mask: str | None) -> list[str]:
        ld = (lambda e: f"_mm512_maskz_loadu_ps({mask}, {e})") if mask else (lambda e: f"_mm512_loadu_ps({e})")
        s = [f"    const __m512 x{i} = {ld(f'x + {i * K} + {k}')};" for i in range(r)]
        if prefetch and r > 1 and mask is None:
            # the next tile's weight rows, at this step's columns: one line each per step
            # (past the weight's end for the last tile: a prefetch never faults)
            s += [f"    _mm_prefetch((const char *)(w + {(c + j) * K} + {k}), _MM_HINT_T0);" for j in range(c)]
        for j in range(c):
            s.append(f"    {{ const __m512 wv = {ld(f'w + {j * K} + {k}')};")
            s += [f"      {acc[i][j]} = _mm512_fmadd_ps(x{i}, wv, {acc[i][j]});" for i in range(r)]
            s.append("    }")
        return s

    if K >= 16:
        out.append(f"  for (int64_t k = 0; k < {K - K % 16}; k += 16) {{")
        out += step("k", None)
        out.append("  }")
    if K % 16:
        out.append("  {")
        out.append(f"    const __mmask16 km = (__mmask16)0x{(1 << (K % 16)) - 1:x};")
        out += step(str(K - K % 16), "km")
        out.append("  }")
    for i in range(r):
        for j in range(0, c, 4):
            grp = acc[i][j:j + 4]
            out.append(f"  sf_gv_hsum{len(grp)}({', '.join(grp)}, ct + {i} * ldc + {j});")
    out.append("}")
    return out


# Horizontal sums of up to four accumulators at once, by one fixed tree for every lane count:
# 256-bit halves, then 128-bit quarters, then lanes j + 2, then j + 1 (the order of
# _mm512_reduce_add_ps). Grouping the accumulators shares the shuffles, and since each sum
# follows the same tree whatever the group, a result does not depend on the tile's width.
HSUM = [
    "static inline __m512 sf_gv_half(__m512 a, __m512 b) {",
    "  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));",
    "}",
    "static inline __m512 sf_gv_quarter(__m512 u, __m512 v) {",
    "  const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(u, v, 0x88), _mm512_shuffle_f32x4(u, v, 0xDD));",
    "  const __m512 t = _mm512_add_ps(s, _mm512_permute_ps(s, 0x4E));",
    "  return _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));",
    "}",
    # lane 0 of each 128-bit block holds one sum: a, b, c, d in blocks 0..3
    "static inline void sf_gv_put(__m512 s, __mmask16 m, float *restrict o) {",
    "  _mm512_mask_compressstoreu_ps(o, m, s);",
    "}",
    "static inline void sf_gv_hsum4(__m512 a, __m512 b, __m512 c, __m512 d, float *restrict o) {",
    "  sf_gv_put(sf_gv_quarter(sf_gv_half(a, b), sf_gv_half(c, d)), 0x1111, o);",
    "}",
    "static inline void sf_gv_hsum3(__m512 a, __m512 b, __m512 c, float *restrict o) {",
    "  sf_gv_put(sf_gv_quarter(sf_gv_half(a, b), sf_gv_half(c, c)), 0x0111, o);",
    "}",
    "static inline void sf_gv_hsum2(__m512 a, __m512 b, float *restrict o) {",
    "  const __m512 u = sf_gv_half(a, b);",
    "  sf_gv_put(sf_gv_quarter(u, u), 0x0011, o);",
    "}",
    "static inline void sf_gv_hsum1(__m512 a, float *restrict o) {",
    "  const __m512 u = sf_gv_half(a, a);",
    "  sf_gv_put(sf_gv_quarter(u, u), 0x0001, o);",
    "}",
]


def _tile_scalar(K: int) -> list[str]:
    """Portable tile: ``R`` rows of x times ``C`` weight rows, plain f32 dot products."""
    return ["static inline void sf_gv_s(int64_t R, int64_t C, const float *restrict x, "
            "const float *restrict w, float *restrict ct, int64_t ldc) {",
            "  for (int64_t i = 0; i < R; i++)",
            "    for (int64_t j = 0; j < C; j++) {",
            "      float s = 0.0f;",
            f"      for (int64_t k = 0; k < {K}; k++) s += x[i * {K} + k] * w[j * {K} + k];",
            "      ct[i * ldc + j] = s;",
            "    }",
            "}"]


def _tile_avx2(K: int) -> list[str]:
    """AVX2 + FMA form of the portable tile ``sf_gv_s`` (hosts without AVX-512): each dot
    product in four ymm accumulators over steps of 32 columns, then 8, then the last ``K % 8``
    one at a time, summed by one fixed tree; every output is this same sequence whatever the
    tiling or the threads' split."""
    k32, k8 = K - K % 32, K - K % 8
    return ["static inline void sf_gv_s(int64_t R, int64_t C, const float *restrict x, "
            "const float *restrict w, float *restrict ct, int64_t ldc) {",
            "  for (int64_t i = 0; i < R; i++)",
            "    for (int64_t j = 0; j < C; j++) {",
            f"      const float *restrict xi = x + i * {K}, *restrict wj = w + j * {K};",
            "      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), "
            "a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();",
            f"      for (int64_t k = 0; k < {k32}; k += 32) {{",
            "        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k), _mm256_loadu_ps(wj + k), a0);",
            "        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 8), _mm256_loadu_ps(wj + k + 8), a1);",
            "        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 16), _mm256_loadu_ps(wj + k + 16), a2);",
            "        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k + 24), _mm256_loadu_ps(wj + k + 24), a3);",
            "      }",
            f"      for (int64_t k = {k32}; k < {k8}; k += 8)",
            "        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xi + k), _mm256_loadu_ps(wj + k), a0);",
            "      const __m256 t = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));",
            "      __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));",
            "      u = _mm_add_ps(u, _mm_movehl_ps(u, u));",
            "      u = _mm_add_ss(u, _mm_movehdup_ps(u));",
            "      float s = _mm_cvtss_f32(u);",
            f"      for (int64_t k = {k8}; k < {K}; k++) s += xi[k] * wj[k];",
            "      ct[i * ldc + j] = s;",
            "    }",
            "}"]


def _epilogue_expr(k: Kernel) -> str:
    """C expression of the stored value from ``v`` (the sum plus bias) and, for an ``add``
    epilogue, ``o`` (the other operand's element)."""
    if len(k.nodes) == 1:
        return "v"
    lin, e = k.nodes
    args = ["v" if a is lin.outputs[0] else "o" for a in e.inputs]
    return C_EXPR[e.op](args, e, "float")


def render_gemv(k: Kernel, cfg: GemvConfig | None = None) -> CKernel:
    """C source of the small-M alternative of library kernel ``k`` (``gemv_supported``); its
    ``args`` name the graph's own weight Value, read in place (ABI in the module docstring)."""
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    N, K = w.type.shape
    assert isinstance(N, int) and isinstance(K, int)
    cfg = (cfg or GEMV).for_weight(N, K)
    rows, mr = cfg.rows, cfg.mr
    nblk = -(-N // rows)
    args, decl, other = linear_args(k)

    v = f"ct[i * {rows} + jj]" + (" + bias[n0 + jj]" if bias is not None else "")
    store = [f"          const float v = {v};"]
    if other is not None:
        store.append(f"          const float o = oth[(m0 + i) * {N} + n0 + jj];")
    store.append(f"          y[(m0 + i) * {N} + n0 + jj] = {_epilogue_expr(k)};")
    # full blocks: tiles of width(R) weight rows; the last, partial block: one row at a time
    full, part = [], []
    for r in range(mr, 0, -1):
        c = cfg.width(r)
        full.append(f"          case {r}: for (int64_t j = 0; j < {rows}; j += {c}) "
                    f"sf_gv{r}_{c}(xm, wb + j * {K}, ct + j, {rows}); break;")
        part.append(f"          case {r}: for (int64_t j = 0; j < nv; j++) "
                    f"sf_gv{r}_1(xm, wb + j * {K}, ct + j, {rows}); break;")
    body = [
        "  const int64_t M = q[0];",
        "  if (M <= 0) return;",
        "#ifdef _OPENMP",
        "  const int64_t nth = omp_get_max_threads();",
        "#else",
        "  const int64_t nth = 1;",
        "#endif",
        # runs of whole blocks (contiguous weight rows) per thread; a few per thread and
        # handed out dynamically, so that a thread that lost its core leaves the rest to the other
        f"  const int64_t CH = ({nblk} + nth * {cfg.runs} - 1) / (nth * {cfg.runs});",
        f"  #pragma omp parallel if (M * {N * K} > {PAR_MACS})",
        "  {",
        f"    float ct[{mr * rows}] __attribute__((aligned(64)));",
        "    #pragma omp for schedule(dynamic, CH) nowait",
        f"    for (int64_t b = 0; b < {nblk}; b++) {{",
        f"      const int64_t n0 = b * {rows}, nv = {N} - n0 < {rows} ? {N} - n0 : {rows};",
        f"      const float *wb = w + n0 * {K};",
        # further x-row tiles re-read the block's weight rows from L1 / L2
        f"      for (int64_t m0 = 0; m0 < M; m0 += {mr}) {{",
        f"        const int64_t R = M - m0 < {mr} ? M - m0 : {mr};",
        f"        const float *xm = x + m0 * {K};",
        "#if SF_GEMV_VEC",
        f"        if (nv == {rows}) {{",
        "          switch (R) {", *full, "          default: break;", "          }",
        "        } else {",
        "          switch (R) {", *part, "          default: break;", "          }",
        "        }",
        "#else",
        f"        for (int64_t j = 0; j < nv; j++) sf_gv_s(R, 1, xm, wb + j * {K}, ct + j, {rows});",
        "#endif",
        "        for (int64_t i = 0; i < R; i++) {",
        "          #pragma omp simd",
        "          for (int64_t jj = 0; jj < nv; jj++) {",
        *["  " + s for s in store],
        "          }",
        "        }",
        "      }",
        "    }",
        "  }",
    ]
    head = ["#ifdef _OPENMP", "#include <omp.h>", "#endif"]
    if not cfg.vec:
        head.append("#define SF_NO_VEC 1")
    tiles = sorted({(r, cfg.width(r)) for r in range(1, mr + 1)} | {(r, 1) for r in range(1, mr + 1)})
    vec = list(HSUM)
    for r, c in tiles:
        vec += _tile_vec(r, c, K, cfg.prefetch)
    head += isa_variants("SF_GEMV_VEC", vec, _tile_scalar(K), _tile_avx2(K))
    src = "\n".join([PRELUDE] + head + [
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *decl, *body, "}"]) + "\n"
    # q[0] = M and q[1] = limit(N, K) are runtime integers even where static: the executor reads both
    params = [sympy.sympify(_prod(x.type.shape[:-1])), sympy.Integer(cfg.limit(N, K))]
    return CKernel(k, src, params, args, needs=TILE_MACROS)
