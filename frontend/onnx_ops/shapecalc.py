"""Compile-time arithmetic on "dim lists": small integer tensors whose values are known as
dims (ints or sympy expressions), e.g. the output of ``Shape`` on f32[B,S,64] is [B, S, 64].

Exporters compute reshape targets at run time (Shape -> Gather -> Unsqueeze -> Concat ->
Reshape, with Add/Mul/Div/Where/Equal on the way). Converters that see such inputs call the
helpers here, record the result with ``ctx.set_dims`` and return ``None`` for the output, so
the whole chain folds into a symbolic attribute of the final IR op.

Two levels of API:
- pure functions on python lists (``binary_dims``, ``compare_dims``, ``where_dims``,
  ``gather_dims``, ``slice_dims``, ``concat_dims``): they return ``None`` whenever the result
  cannot be stated exactly, and the converter then falls back to emitting IR nodes;
- ``try_*(ctx, node, ...)`` wrappers that read the node's inputs, compute, record the output
  and return True when they handled the node (the converter then returns ``[None]``).

A dim list is only used when at least one operand is symbolic or already a dim list;
all-constant inputs fold through ``ctx.add`` as usual.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx
import sympy

from ...ir import dtypes as dt
from ...ir.types import Dim, canon_value

# Beyond this many elements a tensor is data, not a shape computation.
MAX_DIMS = 64


@dataclass
class DimInfo:
    """The compile-time value of a small integer tensor: ``vals`` (ints / sympy exprs),
    its dtype, whether it is 0-D, and whether any element is symbolic."""

    vals: list[Dim]
    dtype: dt.DType
    scalar: bool

    @property
    def symbolic(self) -> bool:
        return any(not isinstance(v, int) for v in self.vals)


def input_dims(ctx, i: int | str) -> DimInfo | None:
    """The node's i-th input (or a named tensor) as a DimInfo, if known at compile time.

    Known means: recorded by ``ctx.set_dims`` (symbolic or not) or a small integer/bool
    constant of rank <= 1.
    """
    name = ctx._name(i)
    if not name:
        return None
    if name in ctx.dims:
        vals, d, scalar = ctx.dims[name]
        return DimInfo(list(vals), d, scalar)
    c = ctx.const(name)
    if c is None or c.is_floating_point() or c.dim() > 1 or c.numel() > MAX_DIMS:
        return None
    d = dt.from_torch(c.dtype)
    return DimInfo([int(x) for x in c.reshape(-1).tolist()], d, c.dim() == 0)


def _is_sym(v: Dim) -> bool:
    return not isinstance(v, int)


def _simplify(v) -> Dim:
    v = sympy.sympify(v)
    if v.is_Integer:
        return int(v)
    return sympy.simplify(v) if v.has(sympy.floor, sympy.Mod) else sympy.expand(v)


def _broadcast(a: Sequence, b: Sequence) -> tuple[list, list] | None:
    if len(a) == len(b):
        return list(a), list(b)
    if len(a) == 1:
        return [a[0]] * len(b), list(b)
    if len(b) == 1:
        return list(a), [b[0]] * len(a)
    return None


def _div(x: Dim, y: Dim) -> Dim | None:
    """ONNX integer Div (truncates toward zero); None when not exact."""
    if isinstance(x, int) and isinstance(y, int):
        if y == 0:
            return None
        q = abs(x) // abs(y)
        return q if (x >= 0) == (y > 0) else -q
    if y == 0:
        return None
    q = sympy.sympify(x) / sympy.sympify(y)
    if q.is_integer:
        return _simplify(q)
    # dims are positive, so truncation equals floor when both operands are positive
    if sympy.sympify(x).is_positive and sympy.sympify(y).is_positive:
        return _simplify(sympy.floor(q))
    return None


def _mod(x: Dim, y: Dim) -> Dim | None:
    """ONNX integer Mod with fmod=0 (result takes the divisor's sign, like python)."""
    if isinstance(x, int) and isinstance(y, int):
        return None if y == 0 else x % y
    if isinstance(y, int) and y > 0:
        return _simplify(sympy.Mod(x, y))
    return None


def binary_dims(op: str, a: Sequence[Dim], b: Sequence[Dim]) -> list[Dim] | None:
    """Elementwise ``op`` (Add, Sub, Mul, Div, Mod, Max, Min) of two dim lists with ONNX
    broadcasting of length-1 lists; None when lengths don't broadcast or a result is not
    exactly expressible (division by a symbol that need not divide, ...)."""
    ab = _broadcast(a, b)
    if ab is None:
        return None
    out: list[Dim] = []
    for x, y in zip(*ab):
        if op == "Add":
            r = x + y if not (_is_sym(x) or _is_sym(y)) else _simplify(sympy.sympify(x) + y)
        elif op == "Sub":
            r = x - y if not (_is_sym(x) or _is_sym(y)) else _simplify(sympy.sympify(x) - y)
        elif op == "Mul":
            r = x * y if not (_is_sym(x) or _is_sym(y)) else _simplify(sympy.sympify(x) * y)
        elif op == "Div":
            r = _div(x, y)
        elif op == "Mod":
            r = _mod(x, y)
        elif op == "Max":
            r = max(x, y) if not (_is_sym(x) or _is_sym(y)) else _simplify(sympy.Max(x, y))
        elif op == "Min":
            r = min(x, y) if not (_is_sym(x) or _is_sym(y)) else _simplify(sympy.Min(x, y))
        else:
            return None
        if r is None:
            return None
        out.append(r)
    return out


def _truth(e) -> bool | None:
    if e is sympy.true or e is True:
        return True
    if e is sympy.false or e is False:
        return False
    return None


def compare_dims(op: str, a: Sequence[Dim], b: Sequence[Dim]) -> list[int] | None:
    """Elementwise comparison (Equal, Less, LessOrEqual, Greater, GreaterOrEqual) as 0/1
    ints, or None when some element is undecidable (e.g. ``S == T`` for distinct symbols).
    Symbols are positive, so ``B == -1`` is decided False (the Expand/Reshape -1 idiom)."""
    ab = _broadcast(a, b)
    if ab is None:
        return None
    out: list[int] = []
    for x, y in zip(*ab):
        sx, sy = sympy.sympify(x), sympy.sympify(y)
        if op == "Equal":
            d = sympy.expand(sx - sy)
            r = True if d == 0 else (False if (d.is_zero is False or d.is_positive
                                               or d.is_negative) else None)
        elif op == "Less":
            r = _truth(sx < sy)
        elif op == "LessOrEqual":
            r = _truth(sx <= sy)
        elif op == "Greater":
            r = _truth(sx > sy)
        elif op == "GreaterOrEqual":
            r = _truth(sx >= sy)
        else:
            return None
        if r is None:
            return None
        out.append(int(r))
    return out


def where_dims(cond: Sequence[Dim], a: Sequence[Dim], b: Sequence[Dim]) -> list[Dim] | None:
    """``Where`` with a known (0/1) condition; None if lengths don't broadcast."""
    n = max(len(cond), len(a), len(b))
    if any(len(s) not in (1, n) for s in (cond, a, b)):
        return None
    pick = lambda s, i: s[0] if len(s) == 1 else s[i]  # noqa: E731
    out = []
    for i in range(n):
        c = pick(cond, i)
        if _is_sym(c):
            return None
        out.append(pick(a, i) if c else pick(b, i))
    return out


def gather_dims(vals: Sequence[Dim], idx: Sequence[int]) -> list[Dim] | None:
    """``vals[idx]`` with negative indices counted from the end; None if out of range."""
    out = []
    n = len(vals)
    for i in idx:
        if not isinstance(i, int) or not -n <= i < n:
            return None
        out.append(vals[i + n if i < 0 else i])
    return out


def slice_dims(vals: Sequence[Dim], start: int, end: int, step: int = 1) -> list[Dim] | None:
    """ONNX Slice of a 1-D dim list (start/end clamped like ONNX, INT_MAX/-INT_MAX ok)."""
    if not all(isinstance(v, int) for v in (start, end, step)) or step == 0:
        return None
    return list(vals[slice(*clamp_slice(len(vals), start, end, step))])


def clamp_slice(n: int, start: int, end: int, step: int) -> tuple[int, int | None, int]:
    """Python slice arguments equivalent to ONNX Slice on a dim of static length n."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    if step > 0:
        start = min(max(start, 0), n)
        end = min(max(end, 0), n)
        return start, end, step
    start = min(max(start, -1), n - 1)
    end = min(max(end, -1), n - 1)
    return start, (None if end < 0 else end), step


def concat_dims(lists: Sequence[Sequence[Dim]]) -> list[Dim]:
    """Concatenation of dim lists (ONNX Concat on 1-D shape tensors)."""
    out: list[Dim] = []
    for part in lists:
        out.extend(part)
    return out


# ---- wrappers for converters --------------------------------------------------------------

def _worth(infos: Sequence[DimInfo | None], ctx, node: onnx.NodeProto) -> bool:
    """Use the dim-list path only if every operand is known and at least one is symbolic or
    a recorded shape value (plain constants fold through ctx.add)."""
    if any(i is None for i in infos):
        return False
    return any(i.symbolic for i in infos) or any(n in ctx.dims for n in node.input if n)


def _record(ctx, node: onnx.NodeProto, vals: list[Dim], d: dt.DType, scalar: bool) -> bool:
    ctx.set_dims(node.output[0], [canon_or_int(v) for v in vals], d, scalar and len(vals) == 1)
    return True


def canon_or_int(v: Dim) -> Dim:
    """Canonical dim that may also be negative (dim lists hold -1 / 0 reshape markers, and
    negated sizes: indices from the end)."""
    return canon_value(v)


def try_binary(ctx, node: onnx.NodeProto, op: str) -> bool:
    """Add/Sub/Mul/Div/Mod/Max/Min on dim lists; True if recorded (return ``[None]``)."""
    a, b = input_dims(ctx, 0), input_dims(ctx, 1)
    if not _worth([a, b], ctx, node) or not (a.dtype.is_int and b.dtype.is_int):
        return False
    r = binary_dims(op, a.vals, b.vals)
    if r is None:
        return False
    return _record(ctx, node, r, a.dtype, a.scalar and b.scalar)


def try_compare(ctx, node: onnx.NodeProto, op: str) -> bool:
    """Equal/Less/... on dim lists, recorded as a bool dim list when decidable."""
    a, b = input_dims(ctx, 0), input_dims(ctx, 1)
    if not _worth([a, b], ctx, node):
        return False
    r = compare_dims(op, a.vals, b.vals)
    if r is None:
        return False
    return _record(ctx, node, r, dt.boolean, a.scalar and b.scalar)


def try_where(ctx, node: onnx.NodeProto) -> bool:
    """Where(cond, a, b) with a known condition and dim-list branches."""
    c, a, b = input_dims(ctx, 0), input_dims(ctx, 1), input_dims(ctx, 2)
    if not _worth([c, a, b], ctx, node) or not a.dtype.is_int:
        return False
    r = where_dims(c.vals, a.vals, b.vals)
    if r is None:
        return False
    return _record(ctx, node, r, a.dtype, c.scalar and a.scalar and b.scalar)


def try_cast(ctx, node: onnx.NodeProto, to: dt.DType) -> bool:
    """Cast of a dim list to an integer dtype keeps it a dim list (values unchanged)."""
    a = input_dims(ctx, 0)
    if not _worth([a], ctx, node) or not to.is_int or to.bits < 32:
        return False
    return _record(ctx, node, a.vals, to, a.scalar)


def try_unary(ctx, node: onnx.NodeProto, op: str) -> bool:
    """Neg / Abs / Identity of a dim list."""
    a = input_dims(ctx, 0)
    if not _worth([a], ctx, node):
        return False
    if op == "Neg":
        vals = [-v if isinstance(v, int) else _simplify(-v) for v in a.vals]
    elif op == "Abs":
        vals = [abs(v) if isinstance(v, int) else _simplify(sympy.Abs(v)) for v in a.vals]
    elif op == "Identity":
        vals = a.vals
    else:
        return False
    return _record(ctx, node, vals, a.dtype, a.scalar)
