"""Fast exact evaluation of symbolic dims at run time.

A compiled model binds its symbols (sequence length, past length, ...) at each call with new
sizes, and every kernel's shapes and runtime integers are then evaluated. ``sympy``'s ``subs``
takes tens of microseconds per expression, so a decode step whose past length grows by one
each call (a new binding every token) spent ~50 ms in ``subs`` for a two-layer model. Here
each expression is turned once into a Python closure over its tree (cached per expression)
that computes with ints and ``Fraction`` — exact, as sympy is — and falls back to ``subs`` for
node types it does not know.
"""
from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Mapping

import sympy

Env = Mapping[sympy.Symbol, int]
_Fn = Callable[[Env], Any]


def _compile(e: sympy.Expr) -> _Fn | None:
    """A closure computing ``e`` exactly from an env, or None for an unsupported node."""
    if e.is_Integer:
        v = int(e)
        return lambda env: v
    if e.is_Rational:
        q = Fraction(int(e.p), int(e.q))
        return lambda env: q
    if e.is_Symbol:
        return lambda env: env[e]
    args = [_compile(a) for a in e.args]
    if any(a is None for a in args):
        return None
    if isinstance(e, sympy.Add):
        return lambda env: sum(a(env) for a in args)  # type: ignore[misc]
    if isinstance(e, sympy.Mul):
        def mul(env: Env) -> Any:
            out: Any = 1
            for a in args:
                out = out * a(env)  # type: ignore[misc]
            return out
        return mul
    if isinstance(e, sympy.Pow) and e.exp.is_Integer:
        base, n = args[0], int(e.exp)
        return lambda env: Fraction(base(env)) ** n  # type: ignore[misc]
    simple = {sympy.floor: math.floor, sympy.ceiling: math.ceil, sympy.Max: max, sympy.Min: min}
    for cls, fn in simple.items():
        if isinstance(e, cls):
            return lambda env, fn=fn: fn(*(a(env) for a in args))  # type: ignore[misc]
    if isinstance(e, sympy.Mod):
        return lambda env: args[0](env) % args[1](env)  # type: ignore[misc]
    return None


@lru_cache(maxsize=8192)
def _compiled(e: sympy.Expr) -> tuple[_Fn | None, frozenset]:
    # free_symbols is recomputed by sympy at every access on many expression types
    return _compile(e), frozenset(e.free_symbols)


def eval_dim(e: Any, env: Env) -> Any:
    """``e`` (an int or a sympy expression) with ``env``'s values substituted: an int when
    every symbol is bound and the value is integral, else what ``subs`` gives (a sympy
    expression, which callers treat as unbound)."""
    if isinstance(e, int):
        return e
    e = sympy.sympify(e)
    fn, free = _compiled(e)
    if fn is not None and all(x in env for x in free):
        v = fn(env)
        if isinstance(v, Fraction):
            if v.denominator == 1:
                return int(v)
        else:
            return int(v)
    v = e.subs(env)
    return int(v) if v.is_Integer else v
