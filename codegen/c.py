"""C backend: renders scheduled kernels as C source (DESIGN.md §5).

Every generated kernel has one ABI, ``void sf_kernel(void **p, const int64_t *q)``: ``p`` holds
the data pointers of the kernel's inputs then outputs (contiguous buffers), ``q`` the runtime
integers (symbolic sizes and strides) listed in :attr:`CKernel.params`, evaluated by the
executor for each binding of the symbols. Static sizes are written into the source as
literals. Rendering is deterministic: the same kernel gives byte-identical source.

Op coverage (a test checks it against the registry): elementwise ops are rendered through
``c_expr.EXPR``; row ops (norms, softmax, trailing-axis reductions) through :func:`_row_body`;
view ops alias; ``LIBRARY`` ops run on torch's kernels; ``quantize`` fuses like an elementwise
op (``c_quant.py``) and ``qlinear`` is a ``template`` kernel, the int8 GEMM of ``c_qgemm.py``
or, for group-wise / per-channel weight-only 4- and 8-bit weights, the kernel of ``c_w4.py``, in the forms those modules name;
everything in :data:`REFERENCE_OPS` runs its torch reference, for the reason given there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import sympy

from ..ir.graph import Node, Value
from ..ir.types import Dim, dims_equal
from ..runtime.library_conv import CONV_CHAIN, CONV_EPILOGUE
from .c_expr import EXPR, compute_type
from .c_quant import C_EXPR, c_node_ok
from .c_types import FAULT_FN, FAULT_HELPERS, PRELUDE, load, storage_type, store
from .schedule import LIBRARY_OPS, ROW_OPS, VIEW_OPS, Caps, Kernel, Schedule, split_row

# Ops without a generated C kernel, with the reason. They run their torch reference.
REFERENCE_OPS: dict[str, str] = {
    "topk": "data-dependent selection; torch.topk is already optimal",
    "argmax": "index reductions are rare in inference graphs",
    "argmin": "index reductions are rare in inference graphs",
    "cumsum": "scan; rare in inference graphs",
    "cumprod": "scan; rare in inference graphs",
    "split": "a copy; torch.split",
    "slice": "negative steps, a copy by torch indexing (positive ones are strided views)",
    "transpose": "a strided copy; torch.permute().contiguous()",
    "expand": "a broadcast copy",
    "tile": "a copy",
    "pad": "a copy with borders",
    "gather": "indexed copy; torch.index_select",
    "gather_elements": "indexed copy; torch.gather",
    "embedding": "indexed copy of rows; torch.embedding",
    "trilu": "masked copy",
    "arange": "generator",
    "full": "generator",
    "dim_values": "generator of the bound sizes",
    "batch_norm": "folded into convs by fold_batchnorm; torch otherwise",
    "group_norm": "normalisation over non-trailing groups; torch",
    "instance_norm": "normalisation over spatial axes; torch",
    "reduce_var": "two-pass statistic; torch",
    "reduce_std": "two-pass statistic; torch",
    "quantize": "blocked scales, per-axis scales on a non-last axis, float8 / fp4 / sub-byte "
                "codes (per-tensor and last-axis integer codes fuse as C: c_quant.py)",
    "dequantize": "C kernel lands with the quantisation issues",
    "qlinear": "i16 weights, zero-pointed float codes, NaN / inf float8 codes, u8 / u4 / i16 "
               "/ i32 codes x, non-f32 float x of group-wise weights, abits > 8, "
               "non-constant weights (the int8 GEMM template, c_qgemm.py, takes group 0 "
               "constant i8/u8/i4/u4 weights with i8/i4 codes x or float x with act "
               "per_token/per_tensor; the weight-only template, c_w4.py, takes group-wise or "
               "per-channel constant u4/i4/u8/i8 weights, or f4e2m1/f8e4m3/f8e5m2 ones without "
               "zero point, with f32 x, act none or per_token (not float8))",
    "lowrank_linear": "two GEMMs on torch until the svd issue's fused kernel",
    "lowrank_ffn": "GEMMs on torch until the svd issue's fused kernel",
    "bcq_linear": "LUT kernel lands with the shiftadd issue",
    "moe": "fused dispatch kernel lands with the moe issue",
    "qmoe": "quantised experts: dequantised per expert then the moe dispatch, on torch until the fused kernel",
    "conv_transpose": "torch",
    "lp_pool": "pooling over spatial windows; torch (avg_pool of |x|^p)",
    "lrn": "cross-channel window normalisation (ONNX LRN); torch",
    "resize": "separable gather-and-blend interpolation (ONNX Resize); torch",
    "grid_sample": "data-dependent sampling positions; torch.grid_sample",
    "roi_align": "per-region sampling grids (object detection heads); torch",
    "nms": "greedy, data-dependent selection (object detection); torch",
    "if_select": "picks one of two computed tensors (an ONNX If on a computed condition)",
    "scatter_elements": "indexed writes with reductions; torch.scatter_reduce",
    "scatter_nd": "indexed slice writes with reductions; torch indexing",
    "gather_nd": "indexed slice reads; torch indexing",
    "einsum": "general contraction; torch.einsum picks the GEMM order",
    "nonzero": "data-dependent output size",
    "compress": "data-dependent output size",
    "unique": "data-dependent output size; a sort",
}

PAR_THRESHOLD = 32768  # below this many elements a kernel runs on one thread


@dataclass
class CKernel:
    """Rendered source of one kernel plus what the executor needs to call it."""

    kernel: Kernel
    source: str
    params: list[sympy.Expr] = field(default_factory=list)
    # pointer order for ``p``: graph Values and prepacked constant tensors (templates);
    # None means the kernel's inputs then outputs
    args: list | None = None
    # a second alternative of the same library kernel is named with a suffix (c_f32gemm.py)
    suffix: str = ""
    # compiler macros (``__AVX512F__``) without which this replacement of a library call
    # compiles to its portable scalar loops, several times slower than the library
    # (api.build_c then leaves it out; runtime/cache.py ``compiler_defines``)
    needs: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.kernel.name + self.suffix


class _Params:
    """Runtime integers of a kernel: static ones become literals, symbolic ones q[i]."""

    def __init__(self) -> None:
        self.exprs: list[sympy.Expr] = []
        self._index: dict[str, int] = {}

    def __call__(self, d: Dim | sympy.Expr) -> str:
        if isinstance(d, int) or (isinstance(d, sympy.Basic) and d.is_Integer):
            return f"INT64_C({int(d)})"
        key = sympy.srepr(d)
        if key not in self._index:
            self._index[key] = len(self.exprs)
            self.exprs.append(d)
        return f"q[{self._index[key]}]"


def _prod(ds: Sequence[Dim]) -> Dim:
    p: Dim = 1
    for d in ds:
        p = p * d
    return p if isinstance(p, int) else sympy.expand(p)


class _Access:
    """How a leaf value is indexed inside a loop nest over ``shape`` split at ``c``: as
    ``same`` (o*N+j), ``inner`` (j), ``outer`` (o), ``scalar`` (0) or ``general`` (strides)."""

    def __init__(self, t_shape: Sequence[Dim], shape: Sequence[Dim], c: int):
        r = len(shape)
        pad = [1] * (r - len(t_shape)) + list(t_shape)
        self.pad = pad
        eq = [dims_equal(a, b) for a, b in zip(pad, shape)]
        one = [a == 1 for a in pad]
        if all(eq):
            self.kind = "same"
        elif all(one):
            self.kind = "scalar"
        elif all(one[:c]) and all(eq[c:]):
            self.kind = "inner"
        elif all(eq[:c]) and all(one[c:]):
            self.kind = "outer"
        else:
            self.kind = "general"
        # element strides of the input, with 0 where it broadcasts
        st: list[Dim] = []
        for k in range(r):
            st.append(0 if (one[k] and not (shape[k] == 1)) else _prod(pad[k + 1:]))
        self.strides = st
        self.inner_contig = all(eq[c:])
        self.inner_bcast = all(one[c:])


class _Emitter:
    """Renders one fused kernel."""

    def __init__(self, k: Kernel):
        self.k = k
        self.q = _Params()
        self.lines: list[str] = []
        self.index_of = {id(v): i for i, v in enumerate(k.inputs)}
        self.out_index = {id(v): len(k.inputs) + i for i, v in enumerate(k.outputs)}

    # ---- helpers ---------------------------------------------------------------------------
    def ptr(self, v: Value) -> str:
        i = self.index_of.get(id(v))
        if i is None:
            i = self.out_index[id(v)]
        return f"p{i}"

    def decls(self) -> list[str]:
        out = []
        for i, v in enumerate(self.k.inputs):
            out.append(f"  const {storage_type(v.dtype)} *restrict p{i} = "
                       f"(const {storage_type(v.dtype)} *)p[{i}];")
        for v in self.k.outputs:
            i = self.out_index[id(v)]
            out.append(f"  {storage_type(v.dtype)} *restrict p{i} = ({storage_type(v.dtype)} *)p[{i}];")
        return out

    def index_expr(self, acc: _Access, shape: Sequence[Dim], c: int, base: str) -> str:
        N = self.q(_prod(shape[c:]))
        if acc.kind == "same":
            return f"o * {N} + j"
        if acc.kind == "scalar":
            return "0"
        if acc.kind == "inner":
            return "j"
        if acc.kind == "outer":
            return "o"
        if acc.inner_contig:
            return f"{base} + j"
        if acc.inner_bcast:
            return base
        # Fully general: decompose j as well (rare: broadcasting inside the row).
        return f"{base} + {self._decompose('j', list(shape[c:]), acc.strides[c:])}"

    def _decompose(self, var: str, dims: Sequence[Dim], strides: Sequence[Dim]) -> str:
        """Offset of flat index ``var`` over ``dims`` with element ``strides``. Broadcast
        (zero-stride) and size-1 dims add nothing and are left out, and the outermost dim needs
        no modulo, so common layouts cost one division or none."""
        parts = []
        inner: Dim = 1
        for k in range(len(dims) - 1, -1, -1):
            zero = (isinstance(strides[k], int) and strides[k] == 0) or dims[k] == 1
            if not zero:
                e = var if inner == 1 else f"({var} / {self.q(inner)})"
                if k > 0:
                    e = f"({e} % {self.q(dims[k])})"
                parts.append(e if strides[k] == 1 else f"{e} * {self.q(strides[k])}")
            inner = _prod([inner, dims[k]])
        return " + ".join(parts) if parts else "0"

    def outer_base(self, acc: _Access, shape: Sequence[Dim], c: int, name: str) -> list[str]:
        """Statements computing ``name`` = offset of row ``o`` for a general access."""
        return [f"const int64_t {name} = {self._decompose('o', list(shape[:c]), acc.strides[:c])};"]

    def emit_tree(self, nodes: list[Node], shape: Sequence[Dim], c: int, env: dict[int, str],
                  body: list[str], pre: list[str], tag: str) -> None:
        """Emit per-element statements for ``nodes`` (topological) into ``body``; leaf loads
        use accesses relative to ``shape`` split at ``c``; per-row offsets go into ``pre``."""
        bases: dict[int, str] = {}

        def leaf(v: Value) -> str:
            if id(v) in env:
                return env[id(v)]
            acc = _Access(v.type.shape, shape, c)
            base = ""
            if acc.kind == "general":
                if id(v) not in bases:
                    bases[id(v)] = f"b{tag}{len(bases)}"
                    pre.extend(self.outer_base(acc, shape, c, bases[id(v)]))
                base = bases[id(v)]
            idx = self.index_expr(acc, shape, c, base)
            name = f"l{tag}{len(env)}"
            body.append(f"const {compute_type(v.dtype)} {name} = {load(v.dtype, f'{self.ptr(v)}[{idx}]')};")
            env[id(v)] = name
            return name

        for n in nodes:
            args = [leaf(v) for v in n.inputs if v is not None]
            ct = compute_type(n.outputs[0].dtype)
            if n.op != "cast" and n.inputs and n.inputs[0] is not None and n.outputs[0].dtype.name == "bool":
                ct = compute_type(n.inputs[0].dtype)
            expr = C_EXPR[n.op](args, n, ct)
            name = f"v{tag}{len(env)}"
            body.append(f"const {compute_type(n.outputs[0].dtype)} {name} = {expr};")
            env[id(n.outputs[0])] = name

    # ---- kernels ---------------------------------------------------------------------------
    def render(self) -> str:
        k = self.k
        if not k.outputs:
            # Dead code (nothing reads the result; ``partition`` leaves dead nodes out, so only
            # a hand-built schedule gets here): an empty kernel keeps the executor's
            # one-function-per-fused-kernel contract.
            body = ["  (void)p; (void)q;"]
        elif k.row is None:
            body = self.render_elementwise()
        else:
            body = self.render_row()
        head = ["void sf_kernel(void **restrict p, const int64_t *restrict q) {"]
        src = PRELUDE + "\n" + "\n".join(head + self.decls() + body + ["}"]) + "\n"
        if any(h in text for text in body for h in FAULT_HELPERS):
            src += FAULT_FN
        return src

    def render_elementwise(self) -> list[str]:
        k = self.k
        root = k.outputs[0]
        shape = list(root.type.shape)
        r = len(shape)
        c = _inner_split(shape, [v.type.shape for v in k.inputs])
        flat = c == 0
        O, N = self.q(_prod(shape[:c])), self.q(_prod(shape[c:]))
        env: dict[int, str] = {}
        body: list[str] = []
        pre: list[str] = []
        self.emit_tree(k.nodes, shape, c, env, body, pre, "")
        stores = [f"{self.ptr(v)}[o * {N} + j] = {store(v.dtype, env[id(v)])};" for v in k.outputs]
        out = [f"  const int64_t O = {O}, N = {N};"]
        if flat:
            # One flat loop: threads split the elements, each thread's chunk is vectorised.
            out.append("  const int64_t o = 0;")
            out.append(f"  #pragma omp parallel for simd schedule(static) if (N > {PAR_THRESHOLD})")
            out.append("  for (int64_t j = 0; j < N; j++) {")
            out += ["    " + s for s in body + stores]
            out.append("  }")
            return out
        out.append(f"  #pragma omp parallel for schedule(static) if (O * N > {PAR_THRESHOLD})")
        out.append("  for (int64_t o = 0; o < O; o++) {")
        out += ["    " + s for s in pre]
        out.append("    #pragma omp simd")
        out.append("    for (int64_t j = 0; j < N; j++) {")
        out += ["      " + s for s in body + stores]
        out += ["    }", "  }"]
        return out

    def render_row(self) -> list[str]:
        k = self.k
        row = k.row
        assert row is not None
        x = row.inputs[0]
        xshape = list(x.type.shape)
        r = len(xshape)
        c = _row_split(row)
        O, L = self.q(_prod(xshape[:c])), self.q(_prod(xshape[c:]))
        pro, epi = split_row(k)
        ct = compute_type(row.outputs[0].dtype)
        out = [f"  const int64_t O = {O}, L = {L};",
               f"  #pragma omp parallel if (O * L > {PAR_THRESHOLD})",
               "  {",
               f"    {ct} *tmp = ({ct} *)malloc((size_t)(L > 0 ? L : 1) * sizeof({ct}));",
               "    #pragma omp for schedule(static)",
               "    for (int64_t o = 0; o < O; o++) {"]
        # pass 1: x_j -> tmp[j]
        env: dict[int, str] = {}
        body: list[str] = []
        pre: list[str] = []
        self.emit_tree(pro, xshape, c, env, body, pre, "x")
        if id(x) not in env:  # the row input comes straight from outside
            acc = _Access(x.type.shape, xshape, c)
            idx = self.index_expr(acc, xshape, c, "")
            body.append(f"const {ct} lx = {load(x.dtype, f'{self.ptr(x)}[{idx}]')};")
            env[id(x)] = "lx"
        out += ["      " + s for s in pre]
        out += ["      #pragma omp simd", "      for (int64_t j = 0; j < L; j++) {"]
        out += ["        " + s for s in body] + [f"        tmp[j] = {env[id(x)]};", "      }"]
        stats, y_expr, per_row = _row_body(row, ct, self, xshape, c)
        out += ["      " + s for s in stats]
        # pass 2: the row op's output, then the epilogue, stored
        yshape = list(row.outputs[0].type.shape)
        if per_row:
            eshape, ec = yshape, len(yshape)
            loop_open = ["      {", "        const int64_t j = 0;"]
            idx_store = "o"
        else:
            eshape, ec = xshape, c
            loop_open = ["      #pragma omp simd", "      for (int64_t j = 0; j < L; j++) {"]
            idx_store = "o * L + j"
        env2: dict[int, str] = {id(row.outputs[0]): "y"}
        body2: list[str] = []
        pre2: list[str] = []
        self.emit_tree(epi, eshape, ec, env2, body2, pre2, "e")
        out += ["      " + s for s in pre2]
        out += loop_open
        out.append(f"        const {ct} y = {y_expr};")
        out += ["        " + s for s in body2]
        for v in k.outputs:
            out.append(f"        {self.ptr(v)}[{idx_store}] = {store(v.dtype, env2[id(v)])};")
        out += ["      }", "    }", "    free(tmp);", "  }"]
        return out


def _inner_split(shape: Sequence[Dim], leaves: Sequence[Sequence[Dim]]) -> int:
    """The split of an elementwise loop nest over ``shape`` into outer rows and an inner
    contiguous loop: the smallest ``c`` (most inner elements) at which every leaf's trailing
    dims from ``c`` on either match ``shape`` or are all broadcast, so that each leaf is read
    at ``base + j`` or ``base`` and the inner loop has no division (vectorisable)."""
    r = len(shape)
    c = 0
    for t in leaves:
        pad = [1] * (r - len(t)) + list(t)
        eq = [dims_equal(a, b) for a, b in zip(pad, shape)]
        one = [a == 1 for a in pad]
        cv = max(r - 1, 0)   # one trailing dim always qualifies (it matches or broadcasts)
        while cv > 0 and (all(eq[cv - 1:]) or all(one[cv - 1:])):
            cv -= 1
        c = max(c, cv)
    return c


def _row_split(row: Node) -> int:
    x = row.inputs[0]
    r = x.type.rank
    if row.op in ("softmax", "log_softmax"):
        return r - 1
    if row.op in ("layer_norm", "rms_norm"):
        return row.attrs["axis"] % r
    axes = row.attrs.get("axes")
    if not axes:
        return 0
    return r - len(axes)


def _row_body(row: Node, ct: str, em: _Emitter, xshape: Sequence[Dim], c: int
              ) -> tuple[list[str], str, bool]:
    """Statements computing the row statistics from tmp[0..L), the expression of the row op's
    output at column j (``y``), and whether the output has one value per row."""
    f = "f" if ct == "float" else ""
    lit = (lambda v: repr(float(v)) + ("f" if ct == "float" else ""))
    op = row.op
    expf = "sf_exp_float" if ct == "float" else "exp"
    if op in ("softmax", "log_softmax"):
        s = [f"{ct} m = -INFINITY;",
             "#pragma omp simd reduction(max:m)",
             "for (int64_t j = 0; j < L; j++) m = tmp[j] > m ? tmp[j] : m;",
             f"{ct} s = 0;",
             "#pragma omp simd reduction(+:s)",
             f"for (int64_t j = 0; j < L; j++) {{ {ct} e = {expf}(tmp[j] - m); "
             + ("tmp[j] = e; " if op == "softmax" else "") + "s += e; }",
             ]
        if op == "softmax":
            s.append(f"const {ct} inv = ({ct})1 / s;")
            return s, "tmp[j] * inv", False
        # (x - m) - log(s), not x - (m + log(s)): the latter loses the digits of log(s)
        # against a large m.
        s.append(f"const {ct} ls = log{f}(s);")
        return s, "(tmp[j] - m) - ls", False
    if op in ("layer_norm", "rms_norm"):
        eps = lit(row.attrs["eps"])
        w = row.inputs[1] if len(row.inputs) > 1 else None
        b = row.inputs[2] if op == "layer_norm" and len(row.inputs) > 2 else None
        idx = {}
        for v in (w, b):
            kind = _Access(v.type.shape, xshape, c).kind if v is not None else "inner"
            if kind not in ("inner", "same", "scalar"):
                raise ValueError("norm weight must cover the normalised axes")
            idx[id(v)] = "[0]" if kind == "scalar" else "[j]"   # scalar: normalised axes of size 1
        wl = f" * {load(w.dtype, f'{em.ptr(w)}{idx[id(w)]}')}" if w is not None else ""
        bl = f" + {load(b.dtype, f'{em.ptr(b)}{idx[id(b)]}')}" if b is not None else ""
        if op == "layer_norm":
            s = [f"{ct} mu = 0;", "#pragma omp simd reduction(+:mu)",
                 "for (int64_t j = 0; j < L; j++) mu += tmp[j];", "mu /= L;",
                 f"{ct} var = 0;", "#pragma omp simd reduction(+:var)",
                 f"for (int64_t j = 0; j < L; j++) {{ {ct} d = tmp[j] - mu; var += d * d; }}",
                 "var /= L;", f"const {ct} rs = ({ct})1 / sqrt{f}(var + {eps});"]
            return s, f"(tmp[j] - mu) * rs{wl}{bl}", False
        s = [f"{ct} ms = 0;", "#pragma omp simd reduction(+:ms)",
             "for (int64_t j = 0; j < L; j++) ms += tmp[j] * tmp[j];", "ms /= L;",
             f"const {ct} rs = ({ct})1 / sqrt{f}(ms + {eps});"]
        return s, f"tmp[j] * rs{wl}", False
    # trailing-axis reductions: one value per row
    if op in ("reduce_sum", "reduce_mean", "reduce_sum_square", "reduce_l2"):
        term = "tmp[j] * tmp[j]" if op in ("reduce_sum_square", "reduce_l2") else "tmp[j]"
        s = [f"{ct} acc = 0;", "#pragma omp simd reduction(+:acc)",
             f"for (int64_t j = 0; j < L; j++) acc += {term};"]
        y = {"reduce_sum": "acc", "reduce_mean": "acc / L", "reduce_sum_square": "acc",
             "reduce_l2": f"sqrt{f}(acc)"}[op]
        return s, y, True
    if op in ("reduce_max", "reduce_min"):
        cmp = ">" if op == "reduce_max" else "<"
        init = "-INFINITY" if op == "reduce_max" else "INFINITY"
        s = [f"{ct} acc = {init}; int nan = 0;",
             f"for (int64_t j = 0; j < L; j++) {{ nan |= tmp[j] != tmp[j]; acc = tmp[j] {cmp} acc ? tmp[j] : acc; }}",
             "if (nan) acc = NAN;"]
        return s, "acc", True
    if op == "reduce_prod":
        s = [f"{ct} acc = 1;", "for (int64_t j = 0; j < L; j++) acc *= tmp[j];"]
        return s, "acc", True
    if op == "reduce_logsumexp":
        # A NaN anywhere makes the row NaN; an infinite max is the answer (inf - inf is NaN).
        s = [f"{ct} m = -INFINITY; int nan = 0;",
             "for (int64_t j = 0; j < L; j++) { nan |= tmp[j] != tmp[j]; m = tmp[j] > m ? tmp[j] : m; }",
             f"{ct} acc = 0;", "if (nan) { acc = NAN; } else if (isinf(m)) { acc = m; } else {",
             f"for (int64_t j = 0; j < L; j++) acc += exp{f}(tmp[j] - m);", f"acc = m + log{f}(acc); }}"]
        return s, "acc", True
    raise ValueError(f"no row body for {op}")


def row_renderable(n: Node) -> bool:
    """Row kernels compute in float/double: float inputs only, weights of the same layout."""
    ok = {"f32", "f16", "bf16", "f64"}
    return all(v.dtype.name in ok for v in n.inputs if v is not None) and \
        n.outputs[0].dtype.name in ok


# Activations and residual adds after a linear (or a convolution: CONV_EPILOGUE, and an
# activation after a convolution's residual add: CONV_CHAIN) run in its library kernel: as
# oneDNN post-ops, or as torch's in-place op where oneDNN's would turn NaN into a number.
LINEAR_EPILOGUE = frozenset({"gelu", "relu", "silu", "sigmoid", "tanh", "add"})


def _template_ok(n: Node) -> bool:
    if n.op == "concat":
        from .c_concat import concat_supported
        return concat_supported(n)
    from .c_qgemm import qlinear_supported
    from .c_w4 import w4_supported
    return qlinear_supported(n) or w4_supported(n)


CAPS = Caps(elementwise=frozenset(C_EXPR), row=ROW_OPS, node_ok=c_node_ok, row_ok=row_renderable,
            library_epilogue={"linear": LINEAR_EPILOGUE, "conv": CONV_EPILOGUE},
            library_chain={"conv": CONV_CHAIN}, pointwise=frozenset({"quantize"}),
            template=frozenset({"qlinear", "concat"}), template_ok=_template_ok)


def render(schedule: Schedule) -> list[CKernel]:
    """C source for every fused and template kernel of ``schedule`` (other kinds need no
    source), for the library kernels of float linears (c_f32gemv.py at bindings with few
    enough rows, c_f32gemm.py at the others), and for float convolutions and attention
    and pools (c_conv.py, c_sdpa.py, c_pool.py: the executor runs them instead of torch), and a channels-last
    source for small fused kernels that may read a convolution's result (c_cl.py). Template kernels
    carry their prepacked constants in ``CKernel.args``; the alternatives name the graph's
    own weight there (read in place, no copy)."""
    from ..runtime.layout import channels_last_values
    from .c_cl import cl_form, render_cl
    from .c_concat import render_concat
    cl_values = channels_last_values(schedule)
    out = []
    for k in schedule.kernels:
        if k.kind == "template" and k.nodes[0].op == "concat":
            out.append(render_concat(k))
            if any(id(v) in cl_values for v in k.inputs) and cl_form(k) is not None:
                out.append(render_cl(k))
            continue
        if k.kind == "template":
            from .c_qgemm import qlinear_supported, render_qlinear
            from .c_w4 import render_w4
            out.append(render_qlinear(k) if qlinear_supported(k.nodes[0]) else render_w4(k))
            continue
        if k.kind == "library":
            # C alternatives of library kernels: a float linear's GEMV and GEMM (the executor
            # picks one per binding), a float convolution or attention (replacing the call)
            from .c_conv import conv_form, render_conv
            from .c_f32gemm import gemm_supported, render_gemm_linear
            from .c_f32gemv import gemv_supported, render_gemv
            from .c_sdpa import render_sdpa, sdpa_supported
            from .c_pool import pool_supported, render_pool
            if gemv_supported(k):
                out.append(render_gemv(k))
            if gemm_supported(k):
                out.append(render_gemm_linear(k))
            elif conv_form(k) is not None:
                out.append(render_conv(k))
            elif sdpa_supported(k):
                out.append(render_sdpa(k, schedule.graph.outputs))
            elif pool_supported(k):
                out.append(render_pool(k))
            continue
        if k.kind != "fused":
            continue
        em = _Emitter(k)
        src = em.render()
        out.append(CKernel(k, src, em.q.exprs))
        # a second source on channels-last memory where a convolution's result may come in
        if any(id(v) in cl_values for v in k.inputs) and cl_form(k) is not None:
            out.append(render_cl(k))
    return out


def op_coverage() -> dict[str, str]:
    """How each registered op runs on the C target: 'c', 'row', 'view', 'library',
    'reference: <reason>', or for ops rendered only in some forms 'c (partly; ...)' /
    'template (partly; ...)' naming the forms left to the reference."""
    from ..ir.ops import all_ops
    from .c_pool import POOL_OPS
    cov = {}
    for name, od in all_ops().items():
        if name in EXPR and od.elementwise:
            cov[name] = "c"
        elif name == "concat":
            cov[name] = "template"
        elif name in ("quantize", "qlinear", "slice"):
            kind = {"quantize": "c", "qlinear": "template", "slice": "view"}[name]
            cov[name] = f"{kind} (partly; reference: {REFERENCE_OPS[name]})"
        elif name in ROW_OPS:
            cov[name] = "row"
        elif name in VIEW_OPS:
            cov[name] = "view"
        elif name in POOL_OPS:
            cov[name] = "library (c on rank-4 float32: c_pool.py)"
        elif name in LIBRARY_OPS:
            cov[name] = "library"
        elif name in REFERENCE_OPS:
            cov[name] = "reference: " + REFERENCE_OPS[name]
        else:
            cov[name] = "missing"
    return cov
