"""ir/dim_eval.py: run-time dim evaluation agrees exactly with sympy's subs, including floor /
ceiling of rationals (where a float evaluation would round wrongly), Max / Min / Mod, and
returns the partly substituted expression when a symbol is unbound."""
from __future__ import annotations

import itertools

import pytest
import sympy

from scalefold.ir.dim_eval import _compiled, eval_dim
from scalefold.ir.types import IRError, TensorType

P, S, B = sympy.symbols("P S B", integer=True, positive=True)
EXPRS = [
    P + 1, 2 * P + S, sympy.floor(P / 10), sympy.floor((P - 1) / 3) + 1, sympy.ceiling(S / 7) * 7,
    sympy.Max(P, S), sympy.Min(P, S - 1), sympy.Max(0, P - 1), sympy.Mod(P, 4), P * S * B,
    sympy.floor((2 * P + 3) / 5) - sympy.ceiling(P / 3), sympy.Min(P, sympy.Max(0, P - 1)),
    sympy.floor(sympy.Rational(1, 10) * P * S),
]


@pytest.mark.parametrize("expr", EXPRS, ids=str)
def test_matches_subs(expr: sympy.Expr) -> None:
    # the compiled closure itself, not the subs fallback, must give the value
    fn, _ = _compiled(expr)
    assert fn is not None, f"{expr} falls back to subs"
    for p, s, b in itertools.product([1, 2, 3, 9, 10, 11, 29, 30, 31, 70, 1023, 12345], [1, 7, 8, 64], [1, 3]):
        env = {P: p, S: s, B: b}
        want = expr.subs(env)
        got = eval_dim(expr, env)
        assert isinstance(got, int) and got == int(want), (expr, env, got, want)
        assert fn(env) == int(want), (expr, env)


def test_unbound_and_concrete() -> None:
    assert eval_dim(7, {}) == 7
    part = eval_dim(P + S, {P: 3})
    assert not isinstance(part, int) and part == S + 3
    t = TensorType("f32", (B, sympy.floor(P / 2) + 1, 4))
    assert t.concrete({B: 2, P: 9}) == (2, 5, 4)
    with pytest.raises(IRError, match="not bound"):
        t.concrete({B: 2})
