"""dims_equal with ceil-mode pool sizes: one side writes ceiling(...), the other floor(...),
each with constants inside and out. torch.export writes a ceil-mode max pool over a dynamic
height as floor(H/2), the IR's pool shape as ceiling(H/2 - 3/2) + 1; GoogLeNet and SqueezeNet
with dynamic height and width failed to import on that comparison."""
from __future__ import annotations

import sympy
import torch
from torch.export import Dim

import scalefold as sf
from scalefold.ir.types import dims_equal, sym

R = sympy.Rational


def _agree(a: sympy.Expr, b: sympy.Expr, names: tuple[str, ...], top: int = 40) -> bool:
    """Whether a and b agree on every size 1..top of each symbol (the ground truth)."""
    syms = [sym(n) for n in names]
    import itertools
    for vals in itertools.product(range(1, top + 1), repeat=len(syms)):
        env = dict(zip(syms, vals))
        if int(sympy.sympify(a).subs(env)) != int(sympy.sympify(b).subs(env)):
            return False
    return True


def test_ceiling_and_floor_forms_compare_equal_exactly_where_they_agree() -> None:
    x, y = sym("x"), sym("y")
    cases = [
        (sympy.ceiling(x / 2 - R(3, 2)) + 1, sympy.floor(x / 2), ("x",)),
        (sympy.ceiling(x / 3), sympy.floor((x + 2) / 3), ("x",)),
        (sympy.ceiling(x / 3), sympy.floor((x + 1) / 3), ("x",)),           # differ at x = 2
        (sympy.ceiling((x - 3) / 2) + 1, sympy.floor((x - 1) / 2) + 1, ("x",)),
        (sympy.ceiling(x * y / 4), sympy.floor((x * y + 3) / 4), ("x", "y")),
        (sympy.ceiling(sympy.floor(x / 2 - R(1, 2)) / 2), sympy.floor(x / 4 - R(3, 4)) + 1, ("x",)),
        (sympy.floor(x / 4 - R(3, 4)) + 1, sympy.floor(x / 4 + R(1, 4)), ("x",)),
        (sympy.floor(x / 4 - R(3, 4)) + 1, sympy.floor(x / 4 + R(1, 2)), ("x",)),  # differ at x = 2
    ]
    for a, b, names in cases:
        top = 12 if len(names) > 1 else 40
        assert dims_equal(a, b) == _agree(a, b, names, top), (a, b)
        assert dims_equal(b, a) == dims_equal(a, b)


def test_ceil_mode_max_pool_with_dynamic_height_and_width_imports() -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, stride=2), torch.nn.MaxPool2d(3, 2, ceil_mode=True)).eval()
    x = torch.randn(1, 3, 33, 29)
    cm = sf.compile(m, (x,), target="c", dynamic_shapes=({2: Dim.AUTO, 3: Dim.AUTO},))
    with torch.no_grad():
        for shape in ((1, 3, 33, 29), (1, 3, 40, 17), (1, 3, 16, 31)):
            xv = torch.randn(*shape)
            want = m(xv)
            got = cm(xv)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
