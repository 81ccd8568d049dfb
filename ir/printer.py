"""The canonical text form of a Graph (DESIGN.md §3).

Printing is deterministic: equal graphs print byte-identical text, and ``Graph.__eq__``
compares exactly this text. That only works because every constant is written either as an
exact literal (small tensors of plain dtypes) or by its content hash, so equal text implies
equal constant data.

Layout::

    graph @name(%x: f32[B,64]) -> (f32[B,64]) {
      %0: f32[B,256] = linear(%x, #c0, #c1)
      %1: f32[B,256] = gelu[approximate="none"](%0)
      return %1
    }
    #c0 = const f32[256,64] sha256:1f2e3d4c5b6a7980
    #c1 = const f32[3] [1.0, 2.5, -3.0]
"""
from __future__ import annotations

import json
import math
import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping

import sympy

from . import dtypes as dt
from .const_text import remember
from .graph import Graph, Node, Value
from .types import TensorType, dim_str

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Fallback input names; a real name of this form would collide with another input's fallback.
_FALLBACK = re.compile(r"in[0-9]+\Z")

# Dtypes whose small constants are written out as literals; every element of these prints as
# a python int/float/bool whose text reads back to the identical bit pattern (NaN payloads
# aside). Sub-byte and fp8 types always go by hash.
LITERAL_DTYPES = frozenset({"f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "bool"})
MAX_LITERAL_NUMEL = 16
_literal_limit: ContextVar[int] = ContextVar("literal_limit", default=MAX_LITERAL_NUMEL)


@contextmanager
def literal_limit(numel: int) -> Iterator[None]:
    """Print constants of up to ``numel`` elements as literals inside the block (golden tests:
    values computed by float sums may differ in their last bit between CPUs, which a hash
    cannot tell from a real change, while literals can be compared to a tolerance)."""
    token = _literal_limit.set(numel)
    try:
        yield
    finally:
        _literal_limit.reset(token)


def format_float(x: float) -> str:
    """A float as text that reads back exactly and always looks like a float."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    # repr is the shortest text that round-trips, and always has '.' or 'e'.
    return repr(float(x))


def format_attr_value(v: Any) -> str:
    """Text of one attribute value: ints, floats, bools, JSON strings, dims, nested lists."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr_value(x) for x in v) + "]"
    if v is None:
        # Only reachable inside a tuple; a top-level None attribute is not printed at all.
        return "none"
    if isinstance(v, sympy.Basic):
        return dim_str(v)  # type: ignore[arg-type]
    raise TypeError(f"cannot print attribute value {v!r} of type {type(v).__name__}")


def format_attrs(attrs: Mapping[str, Any]) -> str:
    """``[k=v, ...]`` for the non-None attributes, or "" when there are none."""
    items = [f"{k}={format_attr_value(v)}" for k, v in attrs.items() if v is not None]
    return f"[{', '.join(items)}]" if items else ""


def sanitize_name(name: str | None, fallback: str) -> str:
    """``name`` when it is an identifier, else a cleaned-up version (``fallback`` if empty)."""
    if name and _IDENT.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name or "")
    if not cleaned:
        return fallback
    return cleaned if _IDENT.match(cleaned) else "_" + cleaned


def input_names(g: Graph) -> list[str]:
    """The printed names of the graph inputs: the Value's own name where usable, else in{i}."""
    counts: dict[str, int] = {}
    for v in g.inputs:
        if v.name:
            counts[v.name] = counts.get(v.name, 0) + 1
    out = []
    for i, v in enumerate(g.inputs):
        nm = v.name
        ok = (nm is not None and _IDENT.match(nm) is not None and counts[nm] == 1
              and (not _FALLBACK.match(nm) or nm == f"in{i}"))
        out.append(nm if ok else f"in{i}")  # type: ignore[arg-type]
    return out


def _literal_elem(x: Any, dtype: dt.DType) -> str:
    if dtype.name == "bool":
        return "true" if x else "false"
    if dtype.is_float:
        return format_float(float(x))
    return str(int(x))


def _nested(x: Any, dtype: dt.DType) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(_nested(e, dtype) for e in x) + "]"
    return _literal_elem(x, dtype)


def is_literal_const(v: Value) -> bool:
    """Whether constant ``v`` prints as an exact literal rather than by hash."""
    c = v.const
    return (c is not None and v.dtype.name in LITERAL_DTYPES and v.type.is_static
            and c.numel() <= _literal_limit.get() and c.dtype == v.dtype.container)


def format_const(v: Value) -> str:
    """``TYPE INIT`` for a constant: a literal for small plain tensors, else its hash."""
    assert v.const is not None
    if is_literal_const(v):
        # tolist gives python floats/ints holding each element exactly (f16/bf16 widen exactly).
        return f"{v.type} {_nested(v.const.detach().cpu().tolist(), v.dtype)}"
    digest = v.const_hash()
    remember(digest, v.const)
    return f"{v.type} sha256:{digest}"


class Namer:
    """Assigns the printed names of one graph: inputs, node outputs %0.., constants #c0.."""

    def __init__(self, g: Graph):
        self.names: dict[int, str] = {}
        for v, nm in zip(g.inputs, input_names(g)):
            self.names[id(v)] = "%" + nm
        k = 0
        for n in g.nodes:
            for o in n.outputs:
                self.names[id(o)] = f"%{k}"
                k += 1
        self.constants: list[Value] = g.constants()
        for i, c in enumerate(self.constants):
            self.names[id(c)] = f"#c{i}"

    def __call__(self, v: Value | None) -> str:
        if v is None:
            return "_"
        # A value from outside the graph still prints (for error messages); parse rejects it.
        return self.names.get(id(v), "%?" + sanitize_name(v.name, "undefined"))


def print_node(node: Node, names: Namer | Mapping[int, str]) -> str:
    """One node as a line of text (without indentation)."""
    name_of = names if callable(names) else (lambda v: "_" if v is None else names[id(v)])
    args = ", ".join(name_of(v) for v in node.inputs)
    call = f"{node.op}{format_attrs(node.attrs)}({args})"
    if not node.outputs:
        return call
    outs = ", ".join(f"{name_of(o)}: {o.type}" for o in node.outputs)
    return f"{outs} = {call}"


def print_type(t: TensorType) -> str:
    """``dtype[d0,d1]`` (no spaces), ``f32[]`` for a scalar."""
    return str(t)


def print_graph(g: Graph) -> str:
    """The canonical text of ``g`` (ends with a newline)."""
    names = Namer(g)
    params = ", ".join(f"{names(v)}: {v.type}" for v in g.inputs)
    results = ", ".join(str(v.type) for v in g.outputs)
    lines = [f"graph @{sanitize_name(g.name, 'main')}({params}) -> ({results}) {{"]
    for n in g.nodes:
        lines.append("  " + print_node(n, names))
    ret = ", ".join(names(v) for v in g.outputs)
    lines.append(f"  return {ret}" if ret else "  return")
    lines.append("}")
    for i, c in enumerate(names.constants):
        lines.append(f"#c{i} = const {format_const(c)}")
    return "\n".join(lines) + "\n"
