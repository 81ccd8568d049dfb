"""Row kernels of the Triton backend: ``ROWS`` rows per program, each row's prologue tree, the
row op (softmax, log_softmax, layer_norm, rms_norm, trailing-axis reductions) and its epilogue
chain, in one block per row or, for long rows, in passes over chunks (see ``triton.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ir.graph import Node
from ..ir.types import Dim
from .triton_expr import compute_type, lit, to_storage

# Reductions combine with tl.standard's own combine functions: the interpreter recognises them
# and reduces with numpy (a combine function of ours would run once per element in Python).
SUMC, MAXC, MINC = "tl.standard._sum_combine", "tl.standard._elementwise_max", "tl.standard._elementwise_min"
NINF, PINF = 'float("-inf")', 'float("inf")'


@dataclass
class _Ctx:
    """Where a tree is evaluated: ``flat`` (offs), ``tile`` (o2 x j2), ``row`` (rows o2
    [ROWS, 1] x columns ``j`` [1, BLOCK] of one chunk, column mask ``mj``, full mask ``m``) or
    ``rows`` (one value per row: [ROWS, 1])."""

    mode: str
    j: str = "j2"
    mj: str = "mj2"
    m: str = "m2"


class _Row:
    """The body of one row kernel: ``ROWS`` rows per program, single-block or chunked. Row
    statistics are [ROWS, 1] (reductions over axis 1 keep their dims)."""

    def __init__(self, em: Any, row: Node, pro: list[Node], epi: list[Node],
                 xshape: list[Dim], c: int, L: str):
        self.em, self.row, self.pro, self.epi = em, row, pro, epi
        self.xshape, self.c, self.L = xshape, c, L
        self.ct = compute_type(row.outputs[0].dtype)
        self.per_row = row.op.startswith("reduce_")

    @staticmethod
    def red(e: str, comb: str = SUMC) -> str:
        return f"tl.reduce({e}, 1, {comb}, keep_dims=True)"

    def columns(self, t: str, start: str) -> tuple[_Ctx, list[str]]:
        """The context and index statements of the columns ``start + [0, BLOCK)``."""
        ctx = _Ctx("row", f"j{t}", f"mj{t}", f"m{t}")
        return ctx, [f"j{t} = {start}tl.arange(0, BLOCK).to(tl.int64)[None, :]",
                     f"mj{t} = j{t} < {self.L}", f"m{t} = mo2 & mj{t}"]

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
            ectx, eshape, ec = _Ctx("rows"), yshape, len(yshape)
            idx, mask = "o2", "mo2"
        else:
            ectx, eshape, ec = ctx, self.xshape, self.c
            idx, mask = f"o2 * {self.L} + {ctx.j}", ctx.m
        env = {id(row.outputs[0]): y}
        body: list[str] = []
        pre: list[str] = []
        em.emit_tree(self.epi, eshape, ec, ectx, env, body, pre, tag)
        out += pre + body
        for v in em.k.outputs:
            out.append(f"tl.store({em.ptr(v)} + {idx}, {to_storage(v.dtype, env[id(v)])}, mask={mask})")

    # ---- one block per row -------------------------------------------------------------------
    def single(self) -> list[str]:
        op, ct, L, red = self.row.op, self.ct, self.L, self.red
        ctx, out = self.columns("", "")
        x = self.x_at(ctx, "x", out)
        if op in ("softmax", "log_softmax"):
            out += [f"xm = tl.where(mj, {x}, {NINF})", f"mx = {red('xm', MAXC)}",
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
            y = self._reduce_single(x, out)
        out.append(f"y = ({y}).to({ct})")
        self.finish(ctx, "y", "e", out)
        return out

    def _reduce_single(self, x: str, out: list[str]) -> str:
        op, L, red = self.row.op, self.L, self.red
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
        out += [f"mx = {red(f'tl.where(mj, {x}, {NINF})', MAXC)}",
                f"sm = {red(f'tl.where(mj, tl.exp({x} - mx), 0.0)')}"]
        return 'tl.where(nan, float("nan"), tl.where(tl.abs(mx) == float("inf"), mx, mx + tl.log(sm)))'

    # ---- loops over chunks of a long row -------------------------------------------------------
    def chunked(self) -> list[str]:
        op, ct, L, red = self.row.op, self.ct, self.L, self.red
        out: list[str] = []
        n_pass = [0]

        def loop(accs: list[tuple[str, str, str]]) -> None:
            """A pass over the row: accumulators (name, init, update of {x} under mask {m})
            are [ROWS, BLOCK], initialised before the loop."""
            t = f"c{n_pass[0]}"
            n_pass[0] += 1
            for name, init, _ in accs:
                out.append(f"{name} = tl.full([ROWS, BLOCK], {init}, {ct if init != '0' else 'tl.int32'})")
            ctx, body = self.columns(t, f"start{t} + ")
            x = self.x_at(ctx, t, body)
            for name, _, upd in accs:
                body.append(f"{name} = {upd.format(x=x, m=ctx.mj)}")
            out.append(f"for start{t} in range(0, {L}, BLOCK):")
            out.extend("    " + s for s in body)

        eps = lit(self.row.attrs["eps"]) if op in ("layer_norm", "rms_norm") else ""
        if op in ("softmax", "log_softmax"):
            loop([("mxv", NINF, "tl.maximum(mxv, tl.where({m}, {x}, " + NINF + "))")])
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
            y = self._reduce_chunked(loop, out)
            out.append(f"y = ({y}).to({ct})")
            self.finish(_Ctx("rows"), "y", "e", out)
            return out
        # the output pass: the row op at each column, the epilogue, the stores
        t = f"c{n_pass[0]}"
        ctx, body = self.columns(t, f"start{t} + ")
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

    def _reduce_chunked(self, loop, out: list[str]) -> str:
        op, L, red = self.row.op, self.L, self.red
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
        loop([nan, ("mxv", NINF, "tl.maximum(mxv, tl.where({m}, {x}, " + NINF + "))")])
        out += [f"nan = {red('nv')} > 0", f"mx = {red('mxv', MAXC)}"]
        loop([("sv", "0.0", "sv + tl.where({m}, tl.exp({x} - mx), 0.0)")])
        out.append(f"sm = {red('sv')}")
        return 'tl.where(nan, float("nan"), tl.where(tl.abs(mx) == float("inf"), mx, mx + tl.log(sm)))'
