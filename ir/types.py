"""Tensor types whose dimensions are ints or sympy expressions over named symbols."""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Union

import sympy

from . import dtypes as dt
from .dim_eval import eval_dim
from .errors import IRError

Dim = Union[int, sympy.Expr]


@lru_cache(maxsize=None)
def sym(name: str) -> sympy.Symbol:
    """The dimension symbol called ``name``; dimension symbols are positive integers."""
    return sympy.Symbol(name, integer=True, positive=True)


def _merge_floor(f: sympy.Basic) -> sympy.Basic:
    """floor((floor(y) + c) / b) -> floor((y + c) / b) for a positive integer b and an
    integer-valued c: equal for every real y (floor(y) + c = floor(y + c), and floor(floor(z)
    / b) = floor(z / b)). Stacked strided convs and pools give such nests: torch writes
    floor(H/8) where the IR's shape rules give floor(floor(H/4)/2)."""
    arg = sympy.expand(f.args[0])
    nests = [t for t in sympy.Add.make_args(arg)
             if isinstance(t, sympy.Mul) and len(t.args) == 2 and t.args[0].is_Rational
             and isinstance(t.args[1], sympy.floor) or isinstance(t, sympy.floor)]
    if len(nests) != 1:
        return f
    t = nests[0]
    coeff, inner = (sympy.Integer(1), t) if isinstance(t, sympy.floor) else t.args
    if coeff.p != 1 or coeff.q < 1:
        return f
    b = coeff.q
    rest = sympy.expand(b * (arg - t))
    if rest.is_integer is not True:
        return f
    return sympy.floor(sympy.expand((inner.args[0] + rest) / b))


def merge_floors(d: sympy.Basic) -> sympy.Basic:
    """``d`` with nested floors merged where exact (:func:`_merge_floor`), innermost first."""
    if not d.has(sympy.floor):
        return d
    return d.replace(lambda e: isinstance(e, sympy.floor), _merge_floor)


def canon_dim(d: Dim | str) -> Dim:
    """Normalise a dimension: python/sympy integers become ``int``, names become symbols."""
    if isinstance(d, bool):
        raise IRError(f"bad dimension {d!r}")
    if isinstance(d, int):
        if d < 0:
            raise IRError(f"negative dimension {d}")
        return d
    if isinstance(d, str):
        return parse_dim(d)
    if isinstance(d, sympy.Basic):
        # Re-create free symbols with the dimension assumptions, so that 'B' parsed from text
        # and 'B' built by a frontend are the same object.
        d = d.xreplace({s: sym(s.name) for s in d.free_symbols if s != sym(s.name)})
        d = merge_floors(d)
        if d.is_Integer:
            if d < 0:
                raise IRError(f"negative dimension {d}")
            return int(d)
        if d.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or d.is_real is False or d.is_negative:
            raise IRError(f"bad dimension {d}: not a size (infinite, complex or negative)")
        return d
    if hasattr(d, "__index__"):
        return canon_dim(int(d))
    raise IRError(f"bad dimension {d!r}")


def canon_value(v: Dim) -> Dim:
    """Canonical form of an integer that a shape computation holds and that may be negative
    (``Neg(Shape(x)[1])`` is ``-S``, an index from the end as in ``x[..., -S:]``): as
    :func:`canon_dim`, with a definitely negative expression kept as the negation of a size."""
    if isinstance(v, int):
        return v
    v = sympy.sympify(v)
    if v.is_Integer:
        return int(v)
    if v.is_negative:
        return -canon_dim(-v)
    return canon_dim(v)


_FUNCS = {"floor": sympy.floor, "ceiling": sympy.ceiling, "ceil": sympy.ceiling,
          "Max": sympy.Max, "Min": sympy.Min, "Mod": sympy.Mod}


# What a dimension's text may hold: sympify evaluates it as Python, so no quotes, dots or
# brackets may reach it (f32[B.subs.__globals__...] ran code); integers of a sane length, and
# ``**`` only with a small literal exponent (9**9**9 never finished).
_DIM_TEXT = re.compile(r"[0-9A-Za-z_+\-*/(), ]*")
_MAX_DIGITS = 30


def _check_dim_text(text: str) -> None:
    if not text.isascii() or not _DIM_TEXT.fullmatch(text):
        raise IRError(f"bad dimension {text!r}: only integers, names, + - * / ** ( ) , may appear")
    if any(len(d) > _MAX_DIGITS for d in re.findall(r"[0-9]+", text)):
        raise IRError(f"bad dimension {text!r}: an integer longer than {_MAX_DIGITS} digits")
    for m in re.finditer(r"\*\*", text):
        e = re.match(r"\s*([0-9]+)\b(?!\s*\*\*)", text[m.end():])
        if e is None or int(e.group(1)) > 64:
            raise IRError(f"bad dimension {text!r}: ** takes a literal exponent of at most 64")
    for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*(?=\s*\()", text):
        if m.group(0) not in _FUNCS:
            raise IRError(f"bad dimension {text!r}: {m.group(0)}(...) is not a dimension function "
                          f"({', '.join(sorted(_FUNCS))})")


def parse_dim(text: str) -> Dim:
    """Parse a dimension written as text (``"64"``, ``"B"``, ``"2*S + 1"``): integers, names,
    ``+ - * / ** ( )`` and the functions floor, ceiling, Max, Min, Mod; anything else is an
    IRError (the text is never evaluated as Python)."""
    text = text.strip()
    _check_dim_text(text)
    if text.isdigit():
        return int(text)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        return sym(text)        # a bare name, even "in", "None" or "Max" (ONNX dim_params)
    # names sympify cannot take as symbols (Python keywords, None / True / False, and the dim
    # functions where no call follows) go through stand-ins bound to their symbols
    local: dict[str, object] = {}

    def name(m: re.Match) -> str:
        n, called = m.group(0), text[m.end():].lstrip().startswith("(")
        if n in _FUNCS and called:
            local[n] = _FUNCS[n]
            return n
        if keyword.iskeyword(n) or n in ("None", "True", "False") or n in _FUNCS:
            stand = f"_sf_name_{len(local)}"
            local[stand] = sym(n)
            return stand
        local[n] = sym(n)
        return n
    safe = re.sub(r"[A-Za-z_][A-Za-z0-9_]*", name, text)
    try:
        expr = sympy.sympify(safe, locals=local)
    except Exception as e:  # sympy raises many types
        raise IRError(f"bad dimension expression {text!r}: {e}") from None
    if not isinstance(expr, sympy.Expr):
        raise IRError(f"bad dimension expression {text!r}")
    return canon_dim(expr)


def dim_str(d: Dim) -> str:
    """Canonical text of a dimension (stable across runs)."""
    if isinstance(d, int):
        return str(d)
    return sympy.sstr(d, order="lex").replace(" ", "")


def dims_equal(a: Dim, b: Dim) -> bool:
    """Whether two dimensions are provably equal. Both are sizes, so neither is negative: a
    ``Max(0, e)`` in one side whose ``e`` equals the other side is that side (a slice's clamped
    length ``Min(n, Max(0, n - 1))`` against a convolution's ``n - 1`` when sympy cannot prove
    n >= 1, as for n = floor(t / 10))."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if _provably_equal(a, b):
        return True
    # only expressions holding a clamp are tried again (a failed comparison costs a simplify)
    for x, size in ((b, a), (a, b)):
        y = _unclamp(x, size)
        if y is not x and _provably_equal(y, size):
            return True
    return False


def _ceil_as_floor(c: sympy.Basic) -> sympy.Basic:
    """ceiling(p / q) -> floor((p + q - 1) / q) for a positive integer q and an integer-valued
    polynomial p (equal for every integer p), so that a ceil-mode pool's size, written by one
    side with ceiling and by the other with floor, compares equal."""
    num, den = sympy.fraction(sympy.together(c.args[0]))
    if not den.is_Integer or den <= 0 or not num.is_integer:
        return c
    return sympy.floor((num + den - 1) / den)


def _frac_const(f: sympy.Basic) -> sympy.Basic:
    """floor(e + c) -> floor(e + (c - floor(c))) + floor(c) for a rational constant c: the
    constant inside every floor in [0, 1), one form for floor(x/4 - 3/4) + 1 and floor(x/4 + 1/4)."""
    c, rest = f.args[0].as_coeff_Add()
    if not c.is_Rational or c.is_Integer or rest == 0:
        return f
    n = sympy.floor(c)
    return sympy.floor(rest + (c - n)) + n


def _floors_only(d: sympy.Basic) -> sympy.Basic:
    """``d`` in floors only (:func:`_ceil_as_floor`), nests merged, constants normalised."""
    if d.has(sympy.ceiling):
        d = d.replace(lambda e: isinstance(e, sympy.ceiling), _ceil_as_floor)
    d = merge_floors(d)
    return d.replace(lambda e: isinstance(e, sympy.floor), _frac_const)


def _provably_equal(a: Dim, b: Dim) -> bool:
    diff = sympy.expand(merge_floors(sympy.sympify(a)) - merge_floors(sympy.sympify(b)))
    if diff == 0 or sympy.simplify(diff) == 0:
        return True
    if not diff.has(sympy.ceiling, sympy.floor):
        return False
    diff = sympy.expand(_floors_only(sympy.sympify(a)) - _floors_only(sympy.sympify(b)))
    return diff == 0


def _unclamp(x: Dim, size: Dim) -> Dim:
    """``x`` with each ``Max(0, e)`` where e provably equals ``size`` replaced by ``size``
    (which is a size, so not negative)."""
    if isinstance(x, int) or not sympy.sympify(x).has(sympy.Max):
        return x
    x = sympy.sympify(x)

    def clamps(t: sympy.Basic) -> bool:
        return isinstance(t, sympy.Max) and len(t.args) == 2 and sympy.S.Zero in t.args and \
            _provably_equal(next(u for u in t.args if u != 0), size)
    return x.replace(clamps, lambda t: sympy.sympify(size))


@dataclass(frozen=True)
class TensorType:
    """The type of a Value: an element dtype and a shape of ints or sympy expressions."""

    dtype: dt.DType
    shape: tuple[Dim, ...]

    def __init__(self, dtype: dt.DType | str, shape: Iterable[Dim | str]):
        object.__setattr__(self, "dtype", dt.get(dtype))
        object.__setattr__(self, "shape", tuple(canon_dim(d) for d in shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            if not isinstance(d, int):
                out |= d.free_symbols
        return out

    def numel(self) -> Dim:
        n: Dim = 1
        for d in self.shape:
            n = n * d
        return canon_dim(n) if not isinstance(n, int) else n

    def nbytes(self) -> sympy.Expr:
        """Bytes occupied when stored packed, as a sympy expression."""
        return sympy.Rational(self.dtype.bits, 8) * sympy.sympify(self.numel())

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(self.dtype, shape)

    def with_dtype(self, dtype: dt.DType | str) -> "TensorType":
        return TensorType(dtype, self.shape)

    def concrete(self, env: dict[sympy.Symbol, int]) -> tuple[int, ...]:
        """The shape with symbols substituted from ``env``; raises IRError if one is unbound."""
        out = []
        for d in self.shape:
            if isinstance(d, int):
                out.append(d)
            else:
                v = eval_dim(d, env)
                if not isinstance(v, int):
                    raise IRError(f"dimension {dim_str(d)} is not bound")
                out.append(v)
        return tuple(out)

    def __str__(self) -> str:
        return f"{self.dtype.name}[{','.join(dim_str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        return f"TensorType({self})"
