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
- ``row``: ``ROWS`` rows per program (one for long rows; several for short rows, so that a
  program has enough work). ``BLOCK`` is the next power of two of the row length, or, for rows
  longer than :data:`ROW_MAX`, a chunk size with loops over the row (the ``CHUNKED``
  constexpr; both variants are rendered when the length is symbolic).

f16/bf16 compute in f32 and are stored rounded (ties to even). Rendering is deterministic.
Elementwise ops come from ``triton_expr.EXPR``; :data:`REFERENCE_OPS` lists the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import sympy

from ..ir.graph import Node, Value
from ..ir.types import Dim
from .c import REFERENCE_OPS as C_REFERENCE_OPS
from .c import _Access, _inner_split, _prod, _row_split, row_renderable
from .schedule import LIBRARY_OPS, ROW_OPS, VIEW_OPS, Caps, Kernel, Schedule, split_row
from .triton_expr import EXPR, F32_ONLY, compute_type, node_renderable, to_storage
from .triton_quant import QUANT_PRELUDE as PRELUDE
from .triton_quant import T_EXPR, t_node_ok
from .triton_qgemm import REASON as QGEMM_REASON
from .triton_qgemm import qlinear_supported, render_qlinear
from .triton_row import _Ctx, _Row
from .triton_w4 import REASON as W4_REASON
from .triton_w4 import render_w4, w4_supported
from .triton_wq import REASON as WQ_REASON, render_wq, wq_supported

# Ops without a generated Triton kernel run their torch reference (on the tensors' device), for
# the C backend's reasons where it has none either; f64 ops of F32_ONLY also do.
_QUANT = "Triton kernels land with the quantisation issues; torch reference on the device"
REFERENCE_OPS: dict[str, str] = {**C_REFERENCE_OPS, "quantize": "blocked / other-axis / f64 / float-code "
                                 "quantize; per-tensor and last-axis forms fuse into kernels",
                                 "dequantize": _QUANT, "concat": "a copy; torch.cat on the device",
                                 "qlinear": QGEMM_REASON + "; " + W4_REASON + "; " + WQ_REASON}

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
    launch: str = "empty"                       # flat | tile | row | empty | qgemm | w4 | wq
    dims: tuple[int | str, int | str] = (0, 0)  # (outer rows O, inner extent N or row length L)
    meta: Any = None                            # qgemm / w4 / wq: the launch spec (QGemmSpec / W4Spec / WQSpec)

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


class _Emitter:
    def __init__(self, k: Kernel):
        self.k = k
        self.q = _Params()
        self.index_of = {id(v): i for i, v in enumerate(k.inputs)}
        self.out_index = {id(v): len(k.inputs) + i for i, v in enumerate(k.outputs)}
        self.n_bases = 0

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
        name = f"b{self.n_bases}"
        self.n_bases += 1
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
        if ctx.mode == "rows":
            if kind in ("same", "outer"):
                return "o2", "mo2"
            return f"{self._base(acc, shape, c, 'o', pre)}[:, None]", "mo2"
        # row: rows o2 x the columns j of one chunk
        j, mj, m = ctx.j, ctx.mj, ctx.m
        if kind == "same":
            return f"o2 * {N} + {j}", m
        if kind == "inner":
            return j, mj
        if kind == "outer":
            return "o2", "mo2"
        b = self._base(acc, shape, c, "o", pre)
        if acc.inner_contig:
            return f"{b}[:, None] + {j}", m
        if acc.inner_bcast:
            return f"{b}[:, None]", "mo2"
        return f"{b}[:, None] + {self._decompose(j, list(shape[c:]), acc.strides[c:])}", m

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
            expr = T_EXPR[n.op](args, n, ct)
            if all(id(v) in scalar for v in ins):
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
        pro, epi = split_row(k)
        r = _Row(self, row, pro, epi, xshape, c, L)
        Ls = _prod(xshape[c:])
        static = isinstance(Ls, int) or (isinstance(Ls, sympy.Basic) and Ls.is_Integer)
        lines = ["o = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)",
                 "o2 = o[:, None]", f"mo2 = o2 < {O}"]
        if static and int(Ls) <= ROW_MAX:
            lines += r.single()
        elif static:
            lines += r.chunked()
        else:
            lines += ["if CHUNKED:"] + ["    " + s for s in r.chunked()]
            lines += ["else:"] + ["    " + s for s in r.single()]
        return _indent(lines), "row", (O, L)


def _indent(lines: list[str]) -> str:
    return "\n".join("    " + s for s in lines)


def _signature(k: Kernel, n_params: int, launch: str) -> str:
    ps = [f"p{i}" for i in range(len(k.inputs) + len(k.outputs))]
    qs = [f"q{i}" for i in range(n_params)]
    const = {"flat": ["BLOCK: tl.constexpr"], "tile": ["BO: tl.constexpr", "BN: tl.constexpr"],
             "row": ["BLOCK: tl.constexpr", "ROWS: tl.constexpr", "CHUNKED: tl.constexpr"],
             "empty": []}[launch]
    return f"def sf_kernel({', '.join(ps + qs + const)}):"


def render_kernel(k: Kernel) -> TritonKernel:
    """The Triton module source of one fused kernel."""
    em = _Emitter(k)
    body, launch, dims = em.render()
    src = (HEADER + PRELUDE + "\n\n@triton.jit\n" + _signature(k, len(em.q.exprs), launch)
           + "\n" + body + "\n")
    ref = tuple(int(d) if not d.startswith("q") else d for d in dims)
    return TritonKernel(k, src, em.q.exprs, launch, ref)  # type: ignore[arg-type]


CAPS = Caps(elementwise=frozenset(T_EXPR), row=ROW_OPS, node_ok=t_node_ok, row_ok=row_renderable,
            pointwise=frozenset({"quantize"}),
            template=frozenset({"qlinear"}),
            template_ok=lambda n: qlinear_supported(n) or w4_supported(n) or wq_supported(n))


def render(schedule: Schedule) -> list[TritonKernel]:
    """Triton source for every fused and template kernel of ``schedule`` (other kinds need no
    source). Template kernels (``qlinear``'s int8 GEMM, ``triton_qgemm.py``) launch as
    ``qgemm`` with runtime integers [M, N, K]; weight-only 4-bit ones (``triton_w4.py``) as
    ``w4``, the other weight-only forms (``triton_wq.py``) as ``wq``, likewise."""
    out = []
    for k in schedule.kernels:
        if k.kind == "fused":
            out.append(render_kernel(k))
        elif k.kind == "template" and w4_supported(k.nodes[0]):
            src, params, w4spec = render_w4(k)
            out.append(TritonKernel(k, src, params, "w4", ("q0", "q1"), w4spec))
        elif k.kind == "template" and wq_supported(k.nodes[0]):
            src, params, wqspec = render_wq(k)
            out.append(TritonKernel(k, src, params, "wq", ("q0", "q1"), wqspec))
        elif k.kind == "template":
            src, params, spec = render_qlinear(k)
            out.append(TritonKernel(k, src, params, "qgemm", ("q0", "q1"), spec))
    return out


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
        elif name in ("qlinear", "slice"):
            kind = "template" if name == "qlinear" else "view"
            cov[name] = f"{kind} (partly; reference: {REFERENCE_OPS[name]})"
        elif name in VIEW_OPS:
            cov[name] = "view"
        elif name in LIBRARY_OPS:
            cov[name] = "library"
        elif name in REFERENCE_OPS:
            cov[name] = "reference: " + REFERENCE_OPS[name]
        else:
            cov[name] = "missing"
    return cov
