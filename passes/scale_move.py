"""Scale-movement legality (ALGORITHMS.md §0): can a per-channel factor on tensor X move
into X's producer (÷s) and every consumer (×s) without changing the function?

:func:`plan_scale` answers by dataflow over the IR, with no per-architecture table:

Consumers (forward). Every reader of X must be compensable: a ``linear`` reading X as its
activation with a constant weight (``W[:, j] *= s_j``) or a ``moe`` op (router and every
expert's up/gate, ``[..., j] *= s_j``). X may not be a graph output.

Producer (backward). Starting from X with the channel map ``M = arange(C)`` (an integer
tensor broadcastable to the value's shape: which channel j of X each element carries, -1 for
"not scaled"), the trace walks producers while the op is channel-equivariant, rewriting M:
  - reshape/squeeze/unsqueeze/flatten: M regrouped (the dims carrying channels must be static),
  - transpose: M permuted; slice/split: M placed in the sliced part, the rest -1,
  - expand: only along axes M does not vary on (else the factor would be shared: GQA),
  - sdpa: through ``v`` (attention mixes tokens, not channels) when M is constant over the
    token axis and no k/v head is shared by several query heads,
  - relu/leaky_relu (positively homogeneous: factors must be > 0), neg, identity,
  - add/sub with a constant (the constant is rescaled), mul/div by a constant (absorbs),
  - mul of two tensors: through one operand (the ``up`` branch of ``silu(gate) * up``),
  - add/sub/concat of tensors: through every operand (all must absorb).
It stops at an absorber: a layer_norm/rms_norm over the last axis (γ and β ÷ s), a linear's
output rows and bias, or a constant multiplier. Every value strictly between the absorber and
X must have X's path as its only reader (else the scaled value would leak).

Refusal reasons (``Refusal.reason``): ``graph_output``, ``post_ln_residual`` (a norm output
that also feeds an add: the residual path would see the scaled value), ``non_linear_consumer``,
``non_const_weight``, ``shared_intermediate``, ``through_<op>`` (an op that is not
channel-equivariant, e.g. ``through_gelu``, ``through_silu``), ``gqa_shared_v``,
``broadcast``, ``graph_input``, ``constant``, ``symbolic_reshape``, ``channel_layout``,
``norm_axes``, ``not_float``, ``split_shared``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import sympy
import torch

from ..ir.graph import Graph, Node, Value
from ..ir.ops.common import norm_axis
from ..ir.types import dims_equal
from .scale_apply import apply_edit, apply_explicit, check_factor, scale_consumers

__all__ = ["Edit", "Refusal", "ScalePlan", "apply_explicit", "compensable_consumers",
           "consumer_groups", "plan_scale", "scale_consumers"]

_RESHAPES = ("reshape", "squeeze", "unsqueeze", "flatten")
_PASS_THROUGH = ("neg", "identity")
_POSITIVE_HOMOGENEOUS = ("relu", "leaky_relu")
_NORMS = ("layer_norm", "rms_norm")


@dataclass
class Edit:
    """One producer-side change: multiply (``div_const``: divide) by f = 1/s mapped through
    ``index`` (an int64 tensor broadcastable to the edited tensor; -1 = factor 1)."""
    kind: str            # "norm" | "linear" | "mul_const" | "div_const" | "add_const"
    node: Node
    index: torch.Tensor
    operand: int = -1    # the constant operand of *_const edits


@dataclass
class ScalePlan:
    """A legal move of a per-channel factor on ``value``: ``apply(graph, s)`` folds 1/s into
    the producer (``edits``) and s into every consumer."""
    value: Value
    channels: int
    consumers: list[Node]
    edits: list[Edit]
    absorber: str        # "norm" | "linear" | "v_proj" | "gated_up" | "const" | "multi"
    positive_only: bool = False
    path: list[Node] = field(default_factory=list)

    ok = True

    def apply(self, graph: Graph, s: torch.Tensor) -> None:
        """Rewrite ``graph``: producer side ÷ s, consumers × s (s: [C], positive)."""
        s = check_factor(s, self.channels)
        if self.positive_only and not bool((s > 0).all()):
            raise ValueError("this move passes a positively homogeneous op: factors must be > 0")
        f = 1.0 / s
        for e in self.edits:
            apply_edit(graph, e, f)
        scale_consumers(graph, self.consumers, s)


@dataclass
class Refusal:
    """Why a factor on ``value`` cannot move into its producer. ``consumers`` are the
    compensable linear/moe readers (an explicit ``mul`` can still serve them)."""
    value: Value
    reason: str
    detail: str
    node: Node | None = None
    consumers: list[Node] = field(default_factory=list)

    ok = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class _Fail(Exception):
    def __init__(self, reason: str, detail: str, node: Node | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.node = reason, detail, node


# ---- consumers ----------------------------------------------------------------------------------
def _compensable(node: Node, idx: int) -> bool:
    if idx != 0:
        return False
    if node.op == "linear":
        w = node.inputs[1]
        return w is not None and w.is_const and w.type.rank == 2
    if node.op == "moe":
        ws = [node.inputs[i] for i in (1, 2, 3)]
        return all(w is None or w.is_const for w in ws) and node.inputs[1] is not None
    return False


def consumer_groups(graph: Graph) -> list[Value]:
    """Every distinct non-constant activation read by a linear (const weight) or moe, in graph
    order: the tensors a scale pass may smooth."""
    out: dict[int, Value] = {}
    for n in graph.nodes:
        v = n.inputs[0] if n.inputs else None
        if v is not None and not v.is_const and _compensable(n, 0) and v.dtype.is_float:
            out.setdefault(id(v), v)
    return list(out.values())


def compensable_consumers(value: Value) -> list[Node]:
    """The linear/moe nodes reading ``value`` as their activation with constant weights."""
    seen: dict[int, Node] = {}
    for n, i in value.uses:
        if _compensable(n, i):
            seen.setdefault(id(n), n)
    return list(seen.values())


def _is_output(graph: Graph, v: Value) -> bool:
    return any(o is v for o in graph.outputs)


def _norm_source(v: Value) -> Node | None:
    """The norm that produced ``v``, looking through channel-keeping reshapes."""
    p = v.producer
    while p is not None and p.op in _RESHAPES + ("transpose",):
        p = p.inputs[0].producer if p.inputs[0] is not None else None
    return p if p is not None and p.op in _NORMS else None


def _classify_blockers(graph: Graph, v: Value, blockers: Sequence[Node], what: str) -> _Fail:
    ops = ", ".join(sorted({b.op for b in blockers}))
    norm = _norm_source(v)
    if norm is not None and any(b.op in ("add", "sub") for b in blockers):
        return _Fail("post_ln_residual", f"{what} is the output of {norm.describe()} and also feeds a "
                     f"residual {ops}; the norm cannot absorb 1/s without changing the residual path",
                     norm)
    kind = "non_linear_consumer" if what == "X" else "shared_intermediate"
    return _Fail(kind, f"{what} is also read by {ops} ({', '.join(b.describe() for b in blockers)}), "
                 f"which cannot be compensated", blockers[0])


# ---- the channel map --------------------------------------------------------------------------
def _normalize(m: torch.Tensor) -> torch.Tensor:
    """Collapse every axis along which the map is constant to size 1."""
    for ax in range(m.dim()):
        if m.shape[ax] > 1:
            first = m.narrow(ax, 0, 1)
            if bool((m == first).all()):
                m = first
    return m


def _align(m: torch.Tensor, rank: int) -> torch.Tensor:
    """Right-align a map to ``rank`` (drop leading size-1 axes / add leading ones)."""
    while m.dim() > rank:
        if m.shape[0] != 1:
            raise _Fail("broadcast", "channel map does not fit a lower-rank operand")
        m = m[0]
    return m.reshape((1,) * (rank - m.dim()) + tuple(m.shape))


def _one(d) -> bool:
    return isinstance(d, int) and d == 1


def _groups(a: Sequence, b: Sequence) -> list[tuple[list[int], list[int]]] | None:
    """Match dims of two shapes into consecutive groups of equal products (reshape factors)."""
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        gi, gj, pa, pb = [i], [j], sympy.sympify(a[i]), sympy.sympify(b[j])
        i, j = i + 1, j + 1
        while not dims_equal(pa, pb):
            _, den = sympy.fraction(sympy.cancel(pb / pa))
            if den == 1 and i < len(a):
                gi.append(i)
                pa, i = pa * a[i], i + 1
            elif j < len(b):
                gj.append(j)
                pb, j = pb * b[j], j + 1
            else:
                return None
        out.append((gi, gj))
    return out if i == len(a) and j == len(b) else None


def _reshape_back(m: torch.Tensor, in_shape: Sequence, out_shape: Sequence) -> torch.Tensor:
    in_keep = [i for i, d in enumerate(in_shape) if not _one(d)]
    out_keep = [j for j, d in enumerate(out_shape) if not _one(d)]
    mo = m.reshape([m.shape[j] for j in out_keep])
    ins, outs = [in_shape[i] for i in in_keep], [out_shape[j] for j in out_keep]
    groups = _groups(ins, outs)
    if groups is None:
        raise _Fail("symbolic_reshape", f"cannot match reshape {tuple(in_shape)} -> {tuple(out_shape)}")
    new_out: list[int] = []
    new_in: list[int] = []
    for gi, gj in groups:
        if all(mo.shape[j] == 1 for j in gj):
            new_out += [1] * len(gj)
            new_in += [1] * len(gi)
            continue
        dims = [ins[i] for i in gi] + [outs[j] for j in gj]
        if not all(isinstance(d, int) for d in dims):
            raise _Fail("symbolic_reshape", "the channel-carrying dims of reshape "
                        f"{tuple(in_shape)} -> {tuple(out_shape)} are not static")
        new_out += [outs[j] for j in gj]
        new_in += [ins[i] for i in gi]
    mi = mo.expand(new_out).reshape(new_in)
    full = [1] * len(in_shape)
    for k, i in enumerate(in_keep):
        full[i] = mi.shape[k]
    return mi.reshape(full)


def _place(m: torch.Tensor, axis: int, size: int, positions: torch.Tensor) -> torch.Tensor:
    """A map of extent ``size`` along ``axis``: m at ``positions``, -1 elsewhere."""
    shape = list(m.shape)
    shape[axis] = size
    out = torch.full(shape, -1, dtype=torch.long)
    return out.index_copy(axis, positions, m.expand(*[len(positions) if a == axis else m.shape[a]
                                                      for a in range(m.dim())]).contiguous())


# ---- the backward trace -----------------------------------------------------------------------
@dataclass
class _Trace:
    edits: list[Edit] = field(default_factory=list)
    path: list[Node] = field(default_factory=list)
    kinds: set[str] = field(default_factory=set)   # "sdpa", "gated", "multi"
    absorber: str = ""
    positive: bool = False


class _Tracer:
    def __init__(self, graph: Graph, x: Value):
        self.graph, self.x = graph, x

    def trace(self, v: Value, m: torch.Tensor, t: _Trace) -> None:
        m = _normalize(m)
        if v is not self.x:
            # A scaled intermediate must not leak: its only reader is the next node of the path
            # (read once: x + x or concat(x, x) would apply the factor twice).
            if _is_output(self.graph, v):
                what = f"the output of {v.producer.describe()}" if v.producer else repr(v)
                raise _Fail("graph_output", f"{what} lies on the path and is a graph output",
                            v.producer)
            if len(v.uses) != 1:
                blockers = [n for n, _ in v.uses if n is not t.path[-1]] or [t.path[-1]]
                what = f"the output of {v.producer.describe()}" if v.producer else repr(v)
                raise _classify_blockers(self.graph, v, blockers, what)
        p = v.producer
        if p is None:
            if v.is_const:
                raise _Fail("constant", "the path reaches a constant")
            raise _Fail("graph_input", f"the path reaches graph input {v.name!r}: nothing absorbs 1/s")
        t.path.append(p)
        op = p.op
        handler = getattr(self, f"_op_{op}", None)
        if handler is not None:
            handler(p, v, m, t)
        elif op in _RESHAPES:
            self.trace(p.inputs[0], _reshape_back(m, p.inputs[0].shape, v.shape), t)
        elif op in _PASS_THROUGH:
            self.trace(p.inputs[0], m, t)
        elif op in _POSITIVE_HOMOGENEOUS:
            t.positive = True
            self.trace(p.inputs[0], m, t)
        else:
            raise _Fail(f"through_{op}", f"{p.describe()} is not channel-equivariant "
                        f"({op} is not positively homogeneous / linear)", p)

    # absorbers
    def _last_axis_only(self, p: Node, m: torch.Tensor, n: int) -> torch.Tensor:
        if any(d != 1 for d in m.shape[:-1]) or m.shape[-1] not in (1, n):
            raise _Fail("channel_layout", f"channels reach {p.describe()} spread over several axes", p)
        return m.reshape(-1).expand(n).clone()

    def _op_linear(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        w = p.inputs[1]
        b = p.inputs[2] if len(p.inputs) > 2 else None
        if w is None or not w.is_const or (b is not None and not b.is_const):
            raise _Fail("non_const_weight", f"producer {p.describe()} has a non-constant weight or bias", p)
        idx = self._last_axis_only(p, m, int(w.shape[0]))
        t.edits.append(Edit("linear", p, idx))
        t.absorber = "linear"

    def _norm(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        rank = v.type.rank
        if norm_axis(p.attrs["axis"], rank) != rank - 1 or not isinstance(v.shape[-1], int):
            raise _Fail("norm_axes", f"{p.describe()} normalises more than the static last axis", p)
        if any(a is not None and not a.is_const for a in p.inputs[1:]):
            raise _Fail("non_const_weight", f"{p.describe()} has a non-constant weight or bias", p)
        idx = self._last_axis_only(p, m, int(v.shape[-1]))
        t.edits.append(Edit("norm", p, idx))
        t.absorber = "norm"

    _op_layer_norm = _norm
    _op_rms_norm = _norm

    # channel movement
    def _op_transpose(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        perm = p.attrs["perm"]
        perm = list(perm) if perm is not None else list(range(v.type.rank))[::-1]
        inv = [0] * len(perm)
        for k, a in enumerate(perm):
            inv[a] = k
        self.trace(p.inputs[0], m.permute(inv), t)

    def _op_slice(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        x = p.inputs[0]
        rank = x.type.rank
        axes = p.attrs["axes"] if p.attrs["axes"] is not None else tuple(range(len(p.attrs["starts"])))
        steps = p.attrs["steps"] or (1,) * len(axes)
        for ax, s0, e0, k in zip(axes, p.attrs["starts"], p.attrs["ends"], steps):
            ax = norm_axis(ax, rank)
            if m.shape[ax] == 1:
                continue   # sliced along an axis the factor does not vary on
            n = x.shape[ax]
            if not all(isinstance(d, int) for d in (n, s0, e0)):
                raise _Fail("symbolic_reshape", f"{p.describe()} slices channels with symbolic bounds", p)
            pos = torch.arange(*slice(s0, e0, k).indices(n), dtype=torch.long)
            m = _place(m, ax, n, pos)
        self.trace(x, m, t)

    def _op_split(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        x = p.inputs[0]
        ax = norm_axis(p.attrs["axis"], x.type.rank)
        sizes = p.attrs["sizes"]
        if m.shape[ax] == 1:
            raise _Fail("split_shared", f"{p.describe()} splits along an axis the factor does not "
                        "vary on, so every piece would be scaled", p)
        if not all(isinstance(d, int) for d in list(sizes) + [x.shape[ax]]):
            raise _Fail("symbolic_reshape", f"{p.describe()} has symbolic sizes", p)
        off = sum(sizes[:v.index])
        m = _place(m, ax, int(x.shape[ax]), torch.arange(off, off + sizes[v.index]))
        self.trace(x, m, t)

    def _op_expand(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        x = p.inputs[0]
        out_shape, in_shape = v.shape, x.shape
        lead = len(out_shape) - len(in_shape)
        for ax in range(len(out_shape)):
            src = in_shape[ax - lead] if ax >= lead else 1
            if m.shape[ax] > 1 and _one(src) and not _one(out_shape[ax]):
                if "sdpa" in t.kinds:
                    raise _Fail("gqa_shared_v", f"{p.describe()} repeats k/v heads (grouped-query "
                                "attention): one V channel serves several heads with different factors", p)
                raise _Fail("broadcast", f"{p.describe()} broadcasts along a channel-carrying axis", p)
        self.trace(x, _align(m, len(in_shape)), t)

    def _op_sdpa(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        q, vv = p.inputs[0], p.inputs[2]
        if m.shape[-2] != 1:
            raise _Fail("channel_layout", f"{p.describe()}: the factor varies over query tokens", p)
        if m.shape[-3] > 1 and not dims_equal(q.shape[-3], vv.shape[-3]):
            raise _Fail("gqa_shared_v", f"{p.describe()} shares each V head among several query heads", p)
        t.kinds.add("sdpa")
        self.trace(vv, m, t)

    # arithmetic
    def _const_edit(self, kind: str, p: Node, operand: int, m: torch.Tensor, t: _Trace) -> None:
        t.edits.append(Edit(kind, p, m, operand))

    def _branches(self, p: Node, v: Value, m: torch.Tensor, t: _Trace, operands: Sequence[int],
                  all_: bool) -> None:
        """Trace through one (``all_=False``: the first that succeeds) or all operands."""
        first: _Fail | None = None
        done = []
        for i in operands:
            b = p.inputs[i]
            rank = v.type.rank
            bm = m
            bshape = (1,) * (rank - b.type.rank) + tuple(b.shape)
            covers = all(m.shape[a] == 1 or dims_equal(bshape[a], v.shape[a]) for a in range(rank))
            try:
                if not covers:
                    raise _Fail("broadcast", f"operand {i} of {p.describe()} is broadcast along a "
                                "channel-carrying axis", p)
                sub = _Trace(path=[p], kinds=set(t.kinds), positive=t.positive)
                self.trace(b, _align(bm, b.type.rank), sub)
            except _Fail as e:
                if all_:
                    raise
                first = first or e
                continue
            done.append(sub)
            if not all_:
                break
        if not done:
            assert first is not None
            raise first
        for sub in done:
            t.edits += sub.edits
            t.path += sub.path[1:]
            t.kinds |= sub.kinds
            t.positive |= sub.positive
            t.absorber = sub.absorber if len(done) == 1 else "multi"

    def _op_mul(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        a, b = p.inputs[0], p.inputs[1]
        if a.is_const and b.is_const:
            raise _Fail("constant", f"{p.describe()} multiplies two constants", p)
        if a.is_const or b.is_const:
            self._const_edit("mul_const", p, 0 if a.is_const else 1, m, t)
            t.absorber = "const"
            return
        if a is b:
            raise _Fail("through_mul", f"{p.describe()} squares its input (not homogeneous)", p)
        t.kinds.add("gated")
        self._branches(p, v, m, t, (0, 1), all_=False)

    def _op_div(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        a, b = p.inputs[0], p.inputs[1]
        if b.is_const and not a.is_const:
            self._const_edit("div_const", p, 1, m, t)
            t.absorber = "const"
            return
        if a.is_const:
            raise _Fail("through_div", f"{p.describe()} divides by the scaled tensor", p)
        self._branches(p, v, m, t, (0,), all_=False)

    def _op_add(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        a, b = p.inputs[0], p.inputs[1]
        if a.is_const and b.is_const:
            raise _Fail("constant", f"{p.describe()} adds two constants", p)
        if a.is_const or b.is_const:
            ci = 0 if a.is_const else 1
            x = p.inputs[1 - ci]
            rank = v.type.rank
            xshape = (1,) * (rank - x.type.rank) + tuple(x.shape)
            if not all(m.shape[ax] == 1 or dims_equal(xshape[ax], v.shape[ax]) for ax in range(rank)):
                # x[..., :1] + bias[C]: the constant makes the channels, x has one; a factor
                # per channel cannot move into x
                raise _Fail("broadcast", f"operand {1 - ci} of {p.describe()} is broadcast along a "
                            "channel-carrying axis", p)
            self._const_edit("add_const", p, ci, m, t)
            self.trace(x, _align(m, x.type.rank), t)
            return
        t.kinds.add("multi")
        self._branches(p, v, m, t, (0, 1), all_=True)

    _op_sub = _op_add

    def _op_concat(self, p: Node, v: Value, m: torch.Tensor, t: _Trace) -> None:
        ax = norm_axis(p.attrs["axis"], v.type.rank)
        if m.shape[ax] == 1:
            self._branches(p, v, m, t, range(len(p.inputs)), all_=True)
            return
        sizes = [x.shape[ax] for x in p.inputs]
        if not all(isinstance(d, int) for d in sizes):
            raise _Fail("symbolic_reshape", f"{p.describe()} concatenates symbolic extents", p)
        off = 0
        for i, x in enumerate(p.inputs):
            part = m.narrow(ax, off, sizes[i])
            off += sizes[i]
            if bool((part < 0).all()):
                continue
            sub = _Trace(path=[p], kinds=set(t.kinds), positive=t.positive)
            self.trace(x, part, sub)
            t.edits += sub.edits
            t.path += sub.path[1:]
            t.positive |= sub.positive
            t.absorber = "multi"


def plan_scale(graph: Graph, value: Value) -> ScalePlan | Refusal:
    """Decide whether a per-channel factor on ``value`` (last axis) can move into its producer
    and its consumers; returns the plan or a refusal with the reason (module docstring)."""
    consumers = compensable_consumers(value)
    try:
        if not value.dtype.is_float:
            raise _Fail("not_float", f"{value!r} is not a float tensor")
        if value.type.rank < 1 or not isinstance(value.shape[-1], int):
            raise _Fail("channel_layout", f"{value!r} has no static channel axis")
        if _is_output(graph, value):
            raise _Fail("graph_output", f"{value!r} is a graph output; its readers outside the graph "
                        "cannot be compensated", value.producer)
        blocked = [(n, i) for n, i in value.uses if not _compensable(n, i)]
        if blocked:
            if all(n.op in ("linear", "moe") and i == 0 for n, i in blocked):
                raise _Fail("non_const_weight", f"{blocked[0][0].describe()} reads X with a "
                            "non-constant weight", blocked[0][0])
            nodes = list({id(n): n for n, _ in blocked}.values())
            raise _classify_blockers(graph, value, nodes, "X")
        if not consumers:
            raise _Fail("non_linear_consumer", f"{value!r} has no readers")
        c = int(value.shape[-1])
        m0 = torch.arange(c, dtype=torch.long).reshape((1,) * (value.type.rank - 1) + (c,))
        t = _Trace()
        _Tracer(graph, value).trace(value, m0, t)
    except _Fail as e:
        return Refusal(value, e.reason, e.detail, e.node, consumers)
    absorber = t.absorber
    if absorber == "linear" and "sdpa" in t.kinds:
        absorber = "v_proj"
    elif absorber == "linear" and "gated" in t.kinds:
        absorber = "gated_up"
    return ScalePlan(value, c, consumers, t.edits, absorber, t.positive, t.path)
