"""Max / Min in symbolic sizes resolved by the symbols' declared ranges.

torch.export states its sizes for the ranges of the user's ``Dim``s and keeps ``Max`` / ``Min``
terms it could resolve only with them (``x[:, -(P + 1):]`` on 256 columns has length
``256 - Max(0, 255 - P)``, which is ``P + 1`` for every ``P <= 255`` the export allows). The
IR knows no ranges, so such a size could never match ``P + 1`` elsewhere in the graph (a
broadcast against the cache). ``tighten`` rewrites each Max / Min whose arguments are ordered
over the ranges into its winning argument; the graph then holds for the declared ranges, the
sizes torch.export itself promises.
"""
from __future__ import annotations

from typing import Mapping

import sympy

Range = tuple[int | None, int | None]     # inclusive bounds; None: unbounded


def finite_int(v: object) -> int | None:
    """A range bound of torch's (an int, or sympy's / torch's own infinity) as an int, or None
    when unbounded."""
    if isinstance(v, sympy.Integer) or isinstance(v, int) and not isinstance(v, bool):
        return int(v)
    return None


def _linear_bounds(d: sympy.Expr, ranges: Mapping[sympy.Symbol, Range]) -> tuple[float, float] | None:
    """(min, max) of ``d`` over ``ranges`` when ``d`` is linear in ranged symbols, else None."""
    d = sympy.expand(d)
    lo = hi = 0.0
    for term, coef in d.as_coefficients_dict().items():
        if not coef.is_Number:
            return None
        c = float(coef)
        if term == 1:
            lo, hi = lo + c, hi + c
            continue
        if not isinstance(term, sympy.Symbol) or term not in ranges:
            return None
        a, b = ranges[term]
        ends = [c * (a if a is not None else -float("inf")), c * (b if b is not None else float("inf"))]
        lo, hi = lo + min(ends), hi + max(ends)
    return lo, hi


def tighten(e: sympy.Expr, ranges: Mapping[sympy.Symbol, Range]) -> sympy.Expr:
    """``e`` with every ``Max`` / ``Min`` whose arguments are ordered over ``ranges`` (each
    symbol's inclusive bounds) replaced by the argument that wins; others stay."""
    if not ranges or not isinstance(e, sympy.Basic) or not e.has(sympy.Max, sympy.Min):
        return e

    def rw(x: sympy.Expr) -> sympy.Expr:
        if not x.args:
            return x
        x = x.func(*[rw(a) for a in x.args])
        if not isinstance(x, (sympy.Max, sympy.Min)):
            return x
        keep = list(x.args)
        for a in x.args:
            for b in x.args:
                if a is b or a not in keep or b not in keep:
                    continue
                bd = _linear_bounds(a - b, ranges)
                # Max keeps a over b when a >= b everywhere; Min when a <= b
                if bd is not None and (bd[0] >= 0 if isinstance(x, sympy.Max) else bd[1] <= 0):
                    keep.remove(b)
        return keep[0] if len(keep) == 1 else x.func(*keep)
    return rw(e)


__all__ = ["Range", "tighten"]
