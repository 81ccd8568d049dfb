"""Triton backend: renders the schedule's fused kernels as Triton source (DESIGN.md §5).

The partition is the C backend's (``schedule.partition``): elementwise trees with broadcasting,
and row kernels (prologue tree -> row op -> epilogue chain). Each kernel is one Python module
with one ``sf_kernel(p0.., q0.., <constexprs>)``: ``p`` are the kernel's input tensors then its
outputs (contiguous), ``q`` the runtime integers of :attr:`TritonKernel.params` (symbolic sizes
and strides; static sizes are literals). Launch shapes:

- ``flat``: every leaf is read at the output's index or broadcast as a scalar: 1-D blocks of
  ``BLOCK`` elements.
- ``tile``: the loop nest is split into outer rows and an inner contiguous part (as in the C
  backend) so that broadcast operands are read as ``[1, BN]`` or ``[BO, 1]`` tiles with no
  division per element; 2-D tiles ``BO x BN``, flattened into one grid axis.
- ``row``: one program per row. ``BLOCK`` is the next power of two of the row length, or, for
  rows longer than :data:`ROW_MAX`, a chunk size with loops over the row (the ``CHUNKED``
  constexpr; both variants are rendered when the length is symbolic).

f16/bf16 compute in f32 and are stored rounded (ties to even). Rendering is deterministic.
Elementwise ops come from ``triton_expr.EXPR``; :data:`REFERENCE_OPS` lists the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import sympy

from ..ir.graph import Node, Value
from ..ir.types import Dim
from .c import REFERENCE_OPS as C_REFERENCE_OPS
from .c import _Access, _inner_split, _prod, _row_split, row_renderable
from .schedule import LIBRARY_OPS, ROW_OPS, VIEW_OPS, Caps, Kernel, Schedule
from .triton_expr import EXPR, F32_ONLY, PRELUDE, compute_type, lit, node_renderable, to_storage

# Ops without a generated Triton kernel run their torch reference (on the tensors' device), for
# the C backend's reasons; f64 inverse trigonometric functions (F32_ONLY) also do.
REFERENCE_OPS: dict[str, str] = dict(C_REFERENCE_OPS)

# Reductions combine with tl.standard's own combine functions: the interpreter recognises them
# and reduces with numpy (a combine function of ours would run once per element in Python).
SUMC, MAXC, MINC = "tl.standard._sum_combine", "tl.standard._elementwise_max", "tl.standard._elementwise_min"
NINF, PINF = 'float("-inf")', 'float("inf")'
ROW_MAX = 8192      # longest row held in one block; longer rows loop over ROW_CHUNK chunks
ROW_CHUNK = 4096
HEADER = "# scalefold: generated Triton kernel\nimport triton\nimport triton.language as tl\n"


@dataclass
class TritonKernel:
    """Rendered source of one kernel plus what the launcher needs: the launch shape, and the
    outer and inner extents (``int`` literals or ``"q<i>"`` naming a runtime integer)."""

    kernel: Kernel
    source: str
    params: list[sympy.Expr] = field(default_factory=list)
    launch: str = "empty"                       # flat | tile | row | empty
    dims: tuple[int | str, int | str] = (0, 0)  # (outer rows O, inner extent N or row length L)

    @property
    def name(self) -> str:
        return self.kernel.name


class _Params:
    """Runtime integers of a kernel: static ones become literals, symbolic ones q<i>."""

    def __init__(self) -> None:
        self.exprs: list[sympy.Expr] = []
        self._index: dict[str, int] = {}

    def __call__(self, d: Dim | sympy.Expr) -> str:
        if isinstance(d, int) or (isinstance(d, sympy.Basic) and d.is_Integer):
            return str(int(d))
        key = sympy.srepr(d)
        if key not in self._index:
            self._index[key] = len(self.exprs)
            self.exprs.append(d)
        return f"q{self._index[key]}"


@dataclass
class _Ctx:
    """Where a tree is evaluated: ``flat`` (offs), ``tile`` (o2 x j2), ``row`` (scalar o,
    vector j) or ``scalar`` (scalar o: one value per row)."""

    mode: str
    j: str = "j"
    mj: str = "mj"


class _Emitter:
    def __init__(self, k: Kernel):
        self.k = k
        self.q = _Params()
        self.index_of = {id(v): i for i, v in enumerate(k.inputs)}
        self.out_index = {id(v): len(k.inputs) + i for i, v in enumerate(k.outputs)}
        self.bases: dict[tuple[int, str], str] = {}

    def ptr(self, v: Value) -> str:
        i = self.index_of.get(id(v))
        return f"p{self.out_index[id(v)] if i is None else i}"

    def _decompose(self, var: str, dims: Sequence[Dim], strides: Sequence[Dim]) -> str:
        """Offset of flat index ``var`` over ``dims`` with element ``strides`` (zero-stride and
        size-1 dims add nothing; the outermost dim needs no modulo)."""
        parts = []
        inner: Dim = 1
        for k in range(len(dims) - 1, -1, -1):
            zero = (isinstance(strides[k], int) and strides[k] == 0) or dims[k] == 1
            if not zero:
                e = var if inner == 1 else f"({var} // {self.q(inner)})"
                if k > 0:
                    e = f"({e} % {self.q(dims[k])})"
                parts.append(e if strides[k] == 1 else f"{e} * {self.q(strides[k])}")
            inner = _prod([inner, dims[k]])
        return " + ".join(parts) if parts else "0"

    def _base(self, acc: _Access, shape: Sequence[Dim], c: int, var: str, pre: list[str]) -> str:
        key = (id(acc), var)
        name = f"b{len(self.bases)}"
        self.bases[key] = name
        pre.append(f"{name} = {self._decompose(var, list(shape[:c]), acc.strides[:c])}")
        return name

    def leaf_ref(self, v: Value, shape: Sequence[Dim], c: int, ctx: _Ctx, pre: list[str]
                 ) -> tuple[str, str | None]:
        """(index expression, mask or None) of leaf ``v`` read inside a nest over ``shape``
        split at ``c``."""
        acc = _Access(v.type.shape, shape, c)
        kind = acc.kind
        if kind == "scalar":
            return "0", None
        if ctx.mode == "flat":
            assert kind == "same", "flat kernels read leaves at the output index or as scalars"
            return "offs", "m"
        N = self.q(_prod(shape[c:]))
        if ctx.mode == "tile":
            if kind == "same":
                return f"o2 * {N} + j2", "m2"
            if kind == "inner":
                return "j2", "mj2"
            if kind == "outer":
                return "o2", "mo2"
            b = self._base(acc, shape, c, "o", pre)
            return (f"{b}[:, None] + j2", "m2") if acc.inner_contig else (f"{b}[:, None]", "mo2")
        if ctx.mode == "scalar":
            if kind in ("same", "outer"):
                return "o", None
            return self._base(acc, shape, c, "o", pre), None
        # row: scalar o, vector j
        j, mj = ctx.j, ctx.mj
        if kind == "same":
            return f"o * {N} + {j}", mj
        if kind == "inner":
            return j, mj
        if kind == "outer":
            return "o", None
        b = self._base(acc, shape, c, "o", pre)
        if acc.inner_contig:
            return f"{b} + {j}", mj
        if acc.inner_bcast:
            return b, None
        return f"{b} + {self._decompose(j, list(shape[c:]), acc.strides[c:])}", mj

    def load(self, v: Value, shape: Sequence[Dim], c: int, ctx: _Ctx, pre: list[str]) -> str:
        return self.load_scalar(v, shape, c, ctx, pre)[0]

    def load_scalar(self, v: Value, shape: Sequence[Dim], c: int, ctx: _Ctx, pre: list[str]
                    ) -> tuple[str, bool]:
        """The load expression of leaf ``v`` and whether it is a scalar (unmasked) load."""
        idx, mask = self.leaf_ref(v, shape, c, ctx, pre)
        addr = self.ptr(v) if idx == "0" else f"{self.ptr(v)} + {idx}"
        other = "0" if v.dtype.is_float or v.dtype.name == "bool" else "1"  # no int division by 0
        ld = f"tl.load({addr})" if mask is None else f"tl.load({addr}, mask={mask}, other={other})"
        return f"{ld}.to({compute_type(v.dtype)})", mask is None

    def emit_tree(self, nodes: list[Node], shape: Sequence[Dim], c: int, ctx: _Ctx,
                  env: dict[int, str], body: list[str], pre: list[str], tag: str) -> None:
        """Statements for ``nodes`` (topological) into ``body``; leaves are loaded relative to
        ``shape`` split at ``c``; per-row offsets go into ``pre``.

        A boolean computed from scalars only is re-made from an integer: the interpreter
        records a comparison's result with its operands' type, and would later broadcast a
        scalar one as a float array that ``&``/``|`` reject."""
        scalar: set[int] = set()

        def leaf(v: Value) -> str:
            if id(v) not in env:
                name = f"l{tag}{len(env)}"
                ld, is_scalar = self.load_scalar(v, shape, c, ctx, pre)
                body.append(f"{name} = {ld}")
                env[id(v)] = name
                if is_scalar:
                    scalar.add(id(v))
            return env[id(v)]

        for n in nodes:
            ins = [v for v in n.inputs if v is not None]
            args = [leaf(v) for v in ins]
            ct = compute_type(n.outputs[0].dtype)
            name = f"v{tag}{len(env)}"
            expr = EXPR[n.op](args, n, ct)
            if ctx.mode != "scalar" and all(id(v) in scalar for v in ins):
                scalar.add(id(n.outputs[0]))
                if ct == "tl.int1":
                    expr = f"tl.where({expr}, 1, 0)"
            body.append(f"{name} = ({expr}).to({ct})")
            env[id(n.outputs[0])] = name

    # ---- kernels ---------------------------------------------------------------------------
    def render(self) -> tuple[str, str, tuple[str, str]]:
        k = self.k
        if not k.outputs:
            # dead code (nothing reads the result): an empty kernel the launcher never runs
            return "    pass", "empty", ("0", "0")
        if k.row is None:
            return self.render_elementwise()
        return self.render_row()

    def render_elementwise(self) -> tuple[str, str, tuple[str, str]]:
        k = self.k
        shape = list(k.outputs[0].type.shape)
        c = _inner_split(shape, [v.type.shape for v in k.inputs])
        O, N = self.q(_prod(shape[:c])), self.q(_prod(shape[c:]))
        env: dict[int, str] = {}
        body: list[str] = []
        pre: list[str] = []
        if c == 0:
            ctx = _Ctx("flat")
            head = ["offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
                    f"m = offs < {N}"]
            self.emit_tree(k.nodes, shape, c, ctx, env, body, pre, "")
            stores = [f"tl.store({self.ptr(v)} + offs, {to_storage(v.dtype, env[id(v)])}, mask=m)"
                      for v in k.outputs]
            return _indent(head + pre + body + stores), "flat", (O, N)
        ctx = _Ctx("tile")
        head = ["pid = tl.program_id(0).to(tl.int64)",
                f"nb = ({N} + BN - 1) // BN",
                "o = (pid // nb) * BO + tl.arange(0, BO)",
                "j = (pid % nb) * BN + tl.arange(0, BN)",
                "o2 = o[:, None]",
                "j2 = j[None, :]",
                f"mo2 = o2 < {O}",
                f"mj2 = j2 < {N}",
                "m2 = mo2 & mj2"]
        self.emit_tree(k.nodes, shape, c, ctx, env, body, pre, "")
        stores = [f"tl.store({self.ptr(v)} + o2 * {N} + j2, {to_storage(v.dtype, env[id(v)])}, mask=m2)"
                  for v in k.outputs]
        return _indent(head + pre + body + stores), "tile", (O, N)

    def render_row(self) -> tuple[str, str, tuple[str, str]]:
        k = self.k
        row = k.row
        assert row is not None
        x = row.inputs[0]
        xshape = list(x.type.shape)
        c = _row_split(row)
        O, L = self.q(_prod(xshape[:c])), self.q(_prod(xshape[c:]))
        inside = {id(n) for n in k.nodes}
        pro_ids: set[int] = set()
        stack = [x.producer] if x.producer is not None and id(x.producer) in inside else []
        while stack:
            n = stack.pop()
            if id(n) in pro_ids:
                continue
            pro_ids.add(id(n))
            for v in n.inputs:
                if v is not None and v.producer is not None and id(v.producer) in inside:
                    stack.append(v.producer)
        pro = [n for n in k.nodes if id(n) in pro_ids]
        epi = [n for n in k.nodes if id(n) not in pro_ids and n is not row]
        r = _Row(self, row, pro, epi, xshape, c, L)
        Ls = _prod(xshape[c:])
        static = isinstance(Ls, int) or (isinstance(Ls, sympy.Basic) and Ls.is_Integer)
        lines = ["o = tl.program_id(0).to(tl.int64)"]
        if static and int(Ls) <= ROW_MAX:
            lines += r.single()
        elif static:
            lines += r.chunked()
        else:
            lines += ["if CHUNKED:"] + ["    " + s for s in r.chunked()]
            lines += ["else:"] + ["    " + s for s in r.single()]
        return _indent(lines), "row", (O, L)


class _Row:
    """The body of one row kernel, single-block or chunked."""

    def __init__(self, em: _Emitter, row: Node, pro: list[Node], epi: list[Node],
                 xshape: list[Dim], c: int, L: str):
        self.em, self.row, self.pro, self.epi = em, row, pro, epi
        self.xshape, self.c, self.L = xshape, c, L
        self.ct = compute_type(row.outputs[0].dtype)
        self.per_row = row.op.startswith("reduce_")

    def x_at(self, ctx: _Ctx, tag: str, out: list[str]) -> str:
        """Statements computing the row input at columns ``ctx.j``; returns its name."""
        em, x = self.em, self.row.inputs[0]
        env: dict[int, str] = {}
        body: list[str] = []
        pre: list[str] = []
        em.emit_tree(self.pro, self.xshape, self.c, ctx, env, body, pre, tag)
        if id(x) not in env:
            body.append(f"x{tag} = {em.load(x, self.xshape, self.c, ctx, pre)}")
            env[id(x)] = f"x{tag}"
        out += pre + body
        name = f"xv{tag}"
        out.append(f"{name} = {env[id(x)]}.to({self.ct})")
        return name

    def norm_affine(self, ctx: _Ctx, y: str, out: list[str]) -> str:
        """``y`` times the norm's weight plus its bias (read at columns ``ctx.j``)."""
        row, em = self.row, self.em
        w = row.inputs[1] if len(row.inputs) > 1 else None
        b = row.inputs[2] if row.op == "layer_norm" and len(row.inputs) > 2 else None
        pre: list[str] = []
        if w is not None:
            y = f"{y} * {em.load(w, self.xshape, self.c, ctx, pre)}"
        if b is not None:
            y = f"{y} + {em.load(b, self.xshape, self.c, ctx, pre)}"
        out += pre
        return y

    def finish(self, ctx: _Ctx, y: str, tag: str, out: list[str]) -> None:
        """The epilogue on the row op's output ``y`` and the stores of the kernel's outputs."""
        em, row = self.em, self.row
        if self.per_row:
            yshape = list(row.outputs[0].type.shape)
            ectx, eshape, ec = _Ctx("scalar"), yshape, len(yshape)
            idx, mask = "o", ""
        else:
            ectx, eshape, ec = ctx, self.xshape, self.c
            idx, mask = f"o * {self.L} + {ctx.j}", f", mask={ctx.mj}"
        env = {id(row.outputs[0]): y}
        body: list[str] = []
        pre: list[str] = []
        em.emit_tree(self.epi, eshape, ec, ectx, env, body, pre, tag)
        out += pre + body
        for v in em.k.outputs:
            out.append(f"tl.store({em.ptr(v)} + {idx}, {to_storage(v.dtype, env[id(v)])}{mask})")

    # ---- one block per row -------------------------------------------------------------------
    def single(self) -> list[str]:
        op, ct, L = self.row.op, self.ct, self.L
        ctx = _Ctx("row", "j", "mj")
        out = ["j = tl.arange(0, BLOCK).to(tl.int64)", f"mj = j < {L}"]
        x = self.x_at(ctx, "x", out)

        def red(e: str, comb: str = SUMC) -> str:
            return f"tl.reduce({e}, 0, {comb})"
        if op in ("softmax", "log_softmax"):
            out += [f'xm = tl.where(mj, {x}, float("-inf"))', f"mx = {red('xm', MAXC)}",
                    "ex = tl.exp(xm - mx)", f"s = {red('ex')}"]
            # (x - m) - log(s), not x - (m + log(s)): the latter loses log(s)'s digits
            y = "ex / s" if op == "softmax" else f"({x} - mx) - tl.log(s)"
        elif op == "layer_norm":
            out += [f"mu = {red(f'tl.where(mj, {x}, 0.0)')} / {L}",
                    f"d = tl.where(mj, {x} - mu, 0.0)", f"var = {red('d * d')} / {L}",
                    f"rs = 1.0 / _sf_sqrt(var + {lit(self.row.attrs['eps'])})"]
            y = self.norm_affine(ctx, f"(({x} - mu) * rs)", out)
        elif op == "rms_norm":
            out += [f"ms = {red(f'tl.where(mj, {x} * {x}, 0.0)')} / {L}",
                    f"rs = 1.0 / _sf_sqrt(ms + {lit(self.row.attrs['eps'])})"]
            y = self.norm_affine(ctx, f"({x} * rs)", out)
        else:
            y = self._reduce_single(x, out, red)
        out.append(f"y = ({y}).to({ct})")
        self.finish(ctx, "y", "e", out)
        return out

    def _reduce_single(self, x: str, out: list[str], red) -> str:
        op, L = self.row.op, self.L
        if op in ("reduce_sum", "reduce_mean", "reduce_sum_square", "reduce_l2"):
            term = f"{x} * {x}" if op in ("reduce_sum_square", "reduce_l2") else x
            out.append(f"acc = {red(f'tl.where(mj, {term}, 0.0)')}")
            return {"reduce_sum": "acc", "reduce_mean": f"acc / {L}", "reduce_sum_square": "acc",
                    "reduce_l2": "_sf_sqrt(acc)"}[op]
        if op == "reduce_prod":
            out.append(f"acc = {red(f'tl.where(mj, {x}, 1.0)', '_sf_mul')}")
            return "acc"
        out.append(f"nan = {red(f'tl.where(mj & ({x} != {x}), 1, 0)')} > 0")
        if op in ("reduce_max", "reduce_min"):
            init, comb = (NINF, MAXC) if op == "reduce_max" else (PINF, MINC)
            out.append(f"acc = {red(f'tl.where(mj, {x}, {init})', comb)}")
            return 'tl.where(nan, float("nan"), acc)'
        assert op == "reduce_logsumexp", op
        # a NaN anywhere makes the row NaN; an infinite max is the answer (inf - inf is NaN)
        ninf = 'float("-inf")'
        out += [f"mx = {red(f'tl.where(mj, {x}, {ninf})', MAXC)}",
                f"sm = {red(f'tl.where(mj, tl.exp({x} - mx), 0.0)')}"]
        return 'tl.where(nan, float("nan"), tl.where(tl.abs(mx) == float("inf"), mx, mx + tl.log(sm)))'

    # ---- loops over chunks of a long row -------------------------------------------------------
    def chunked(self) -> list[str]:
        op, ct, L = self.row.op, self.ct, self.L
        out: list[str] = []
        n_pass = [0]

        def loop(accs: list[tuple[str, str, str]]) -> tuple[list[str], str, _Ctx]:
            """Open a pass over the row: accumulators (name, init, update-with-{x}) are
            initialised before it; returns the loop body (indented later), x's name, ctx."""
            t = f"c{n_pass[0]}"
            n_pass[0] += 1
            for name, init, _ in accs:
                out.append(f"{name} = tl.full([BLOCK], {init}, {ct if init != '0' else 'tl.int32'})")
            ctx = _Ctx("row", f"j{t}", f"mj{t}")
            body = [f"j{t} = start{t} + tl.arange(0, BLOCK).to(tl.int64)", f"mj{t} = j{t} < {L}"]
            x = self.x_at(ctx, t, body)
            for name, _, upd in accs:
                body.append(f"{name} = {upd.format(x=x, m=ctx.mj)}")
            out.append(f"for start{t} in range(0, {L}, BLOCK):")
            out.extend("    " + s for s in body)
            return body, x, ctx

        def red(e: str, comb: str = SUMC) -> str:
            return f"tl.reduce({e}, 0, {comb})"
        eps = lit(self.row.attrs["eps"]) if op in ("layer_norm", "rms_norm") else ""
        if op in ("softmax", "log_softmax"):
            loop([("mxv", 'float("-inf")', 'tl.maximum(mxv, tl.where({m}, {x}, float("-inf")))')])
            out.append(f"mx = {red('mxv', MAXC)}")
            loop([("sv", "0.0", "sv + tl.where({m}, tl.exp({x} - mx), 0.0)")])
            out.append(f"s = {red('sv')}")
        elif op == "layer_norm":
            loop([("sv", "0.0", "sv + tl.where({m}, {x}, 0.0)")])
            out.append(f"mu = {red('sv')} / {L}")
            loop([("dv", "0.0", "dv + tl.where({m}, ({x} - mu) * ({x} - mu), 0.0)")])
            out.append(f"rs = 1.0 / _sf_sqrt({red('dv')} / {L} + {eps})")
        elif op == "rms_norm":
            loop([("sv", "0.0", "sv + tl.where({m}, {x} * {x}, 0.0)")])
            out.append(f"rs = 1.0 / _sf_sqrt({red('sv')} / {L} + {eps})")
        else:
            y = self._reduce_chunked(loop, red, out)
            out.append(f"y = ({y}).to({ct})")
            self.finish(_Ctx("scalar"), "y", "e", out)
            return out
        # the output pass: the row op at each column, the epilogue, the stores
        t = f"c{n_pass[0]}"
        ctx = _Ctx("row", f"j{t}", f"mj{t}")
        body = [f"j{t} = start{t} + tl.arange(0, BLOCK).to(tl.int64)", f"mj{t} = j{t} < {L}"]
        x = self.x_at(ctx, t, body)
        if op == "softmax":
            y = f"tl.exp({x} - mx) / s"
        elif op == "log_softmax":
            y = f"({x} - mx) - tl.log(s)"
        elif op == "layer_norm":
            y = self.norm_affine(ctx, f"(({x} - mu) * rs)", body)
        else:
            y = self.norm_affine(ctx, f"({x} * rs)", body)
        body.append(f"y = ({y}).to({ct})")
        self.finish(ctx, "y", "e", body)
        out.append(f"for start{t} in range(0, {L}, BLOCK):")
        out.extend("    " + s for s in body)
        return out

    def _reduce_chunked(self, loop, red, out: list[str]) -> str:
        op, L = self.row.op, self.L
        if op in ("reduce_sum", "reduce_mean", "reduce_sum_square", "reduce_l2"):
            term = "{x} * {x}" if op in ("reduce_sum_square", "reduce_l2") else "{x}"
            loop([("av", "0.0", "av + tl.where({m}, " + term + ", 0.0)")])
            out.append(f"acc = {red('av')}")
            return {"reduce_sum": "acc", "reduce_mean": f"acc / {L}", "reduce_sum_square": "acc",
                    "reduce_l2": "_sf_sqrt(acc)"}[op]
        if op == "reduce_prod":
            loop([("av", "1.0", "av * tl.where({m}, {x}, 1.0)")])
            out.append(f"acc = {red('av', '_sf_mul')}")
            return "acc"
        nan = ("nv", "0", "nv + tl.where({m} & ({x} != {x}), 1, 0)")
        if op in ("reduce_max", "reduce_min"):
            init, comb = (NINF, MAXC) if op == "reduce_max" else (PINF, MINC)
            ew = "tl.maximum" if op == "reduce_max" else "tl.minimum"
            loop([nan, ("av", init, ew + "(av, tl.where({m}, {x}, " + init + "))")])
            out += [f"nan = {red('nv')} > 0", f"acc = {red('av', comb)}"]
            return 'tl.where(nan, float("nan"), acc)'
        assert op == "reduce_logsumexp", op
        loop([nan, ("mxv", 'float("-inf")', 'tl.maximum(mxv, tl.where({m}, {x}, float("-inf")))')])
        out += [f"nan = {red('nv')} > 0", f"mx = {red('mxv', MAXC)}"]
        loop([("sv", "0.0", "sv + tl.where({m}, tl.exp({x} - mx), 0.0)")])
        out.append(f"sm = {red('sv')}")
        return 'tl.where(nan, float("nan"), tl.where(tl.abs(mx) == float("inf"), mx, mx + tl.log(sm)))'


def _indent(lines: list[str]) -> str:
    return "\n".join("    " + s for s in lines)


def _signature(k: Kernel, n_params: int, launch: str) -> str:
    ps = [f"p{i}" for i in range(len(k.inputs) + len(k.outputs))]
    qs = [f"q{i}" for i in range(n_params)]
    const = {"flat": ["BLOCK: tl.constexpr"], "tile": ["BO: tl.constexpr", "BN: tl.constexpr"],
             "row": ["BLOCK: tl.constexpr", "CHUNKED: tl.constexpr"], "empty": []}[launch]
    return f"def sf_kernel({', '.join(ps + qs + const)}):"


def render_kernel(k: Kernel) -> TritonKernel:
    """The Triton module source of one fused kernel."""
    em = _Emitter(k)
    body, launch, dims = em.render()
    src = (HEADER + PRELUDE + "\n\n@triton.jit\n" + _signature(k, len(em.q.exprs), launch)
           + "\n" + body + "\n")
    ref = tuple(int(d) if not d.startswith("q") else d for d in dims)
    return TritonKernel(k, src, em.q.exprs, launch, ref)  # type: ignore[arg-type]


def _row_ok(n: Node) -> bool:
    return row_renderable(n)


CAPS = Caps(elementwise=frozenset(EXPR), row=ROW_OPS, node_ok=node_renderable, row_ok=_row_ok)


def render(schedule: Schedule) -> list[TritonKernel]:
    """Triton source for every fused kernel of ``schedule`` (other kinds need no source)."""
    return [render_kernel(k) for k in schedule.kernels if k.kind == "fused"]


def op_coverage() -> dict[str, str]:
    """How each registered op runs on the Triton target: 'triton', 'row', 'view', 'library' or
    'reference: <reason>'."""
    from ..ir.ops import all_ops
    cov = {}
    for name, od in all_ops().items():
        if name in EXPR and od.elementwise:
            cov[name] = "triton" + (" (f64: reference)" if name in F32_ONLY else "")
        elif name in ROW_OPS:
            cov[name] = "row"
        elif name in VIEW_OPS:
            cov[name] = "view"
        elif name in LIBRARY_OPS:
            cov[name] = "library"
        elif name in REFERENCE_OPS:
            cov[name] = "reference: " + REFERENCE_OPS[name]
        else:
            cov[name] = "missing"
    return cov
