"""Reads the text form written by :mod:`scalefold.ir.printer` back into a Graph.

``parse(print_graph(g), constants=...) == g`` for every graph. Node output types written in
the text are taken as given (no shape inference runs), so parsing never depends on an op's
shape rule; ``verify=True`` checks consistency afterwards.

Besides hashes and literals, constants may be written with generator forms that only
hand-written IR uses (the printer never emits them)::

    #c0 = const f32[64,32] randn(seed=0, std=0.02)
    #c1 = const f32[32] uniform(seed=1, low=-1.0, high=1.0)
    #c2 = const i64[8] randint(seed=2, low=0, high=10)
    #c3 = const f32[4] zeros          // also ones, full(value=0.5), arange
"""
from __future__ import annotations

import importlib.util
import json
import re
from functools import lru_cache
from typing import Any, Mapping

from . import const_text as ct
from . import dtypes as dt
from .errors import AttributeError_, IRError, ParseError, ShapeError
from .graph import Graph, Value
from .ops import get_op, has_op
from .types import TensorType, parse_dim

_NAME = re.compile(r"[A-Za-z0-9_]+")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?\Z")
_SPECIAL_FLOATS = {"inf": float("inf"), "+inf": float("inf"), "-inf": float("-inf"),
                   "nan": float("nan")}
_HEX = re.compile(r"[0-9a-fA-F]+\Z")

# sympify dominates parse time and dims repeat on nearly every line; sympy exprs are immutable.
_parse_dim = lru_cache(maxsize=8192)(parse_dim)


class _Cursor:
    """A position in one line of text, with the small scanning steps the grammar needs."""

    def __init__(self, text: str, line: int | None):
        self.s = text
        self.i = 0
        self.line = line

    def error(self, msg: str) -> ParseError:
        return ParseError(msg, self.line)

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def at_end(self) -> bool:
        return self.peek() == ""

    def eat(self, lit: str) -> bool:
        self.ws()
        if self.s.startswith(lit, self.i):
            self.i += len(lit)
            return True
        return False

    def expect(self, lit: str, where: str = "") -> None:
        if not self.eat(lit):
            got = self.s[self.i:self.i + 20] or "end of line"
            raise self.error(f"expected {lit!r}{' ' + where if where else ''}, got {got!r}")

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        self.ws()
        m = pattern.match(self.s, self.i)
        if not m:
            got = self.s[self.i:self.i + 20] or "end of line"
            raise self.error(f"expected {what}, got {got!r}")
        self.i = m.end()
        return m.group(0)

    def until_close(self, close: str) -> str:
        """Text up to the ``close`` bracket that ends the current group (parens nest)."""
        depth, start = 0, self.i
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                if depth == 0 and ch == close:
                    out = self.s[start:self.i]
                    self.i += 1
                    return out
                depth -= 1
            self.i += 1
        raise self.error(f"missing {close!r}")

    def atom(self) -> str:
        """An unquoted token: up to a ',' ']' or ')' that is not inside parentheses."""
        self.ws()
        depth, start = 0, self.i
        while self.i < len(self.s):
            ch = self.s[self.i]
            if ch == "(":
                depth += 1
            elif ch == ")":
                if depth == 0:
                    break
                depth -= 1
            elif ch in ",]" and depth == 0:
                break
            self.i += 1
        tok = self.s[start:self.i].strip()
        if not tok:
            raise self.error(f"expected a value at {self.s[start:start + 20]!r}")
        return tok

    def string(self) -> str:
        """A JSON string literal starting at the cursor."""
        self.ws()
        start, j = self.i, self.i + 1
        while j < len(self.s):
            if self.s[j] == "\\":
                j += 2
                continue
            if self.s[j] == '"':
                try:
                    out = json.loads(self.s[start:j + 1])
                except ValueError as e:
                    raise self.error(f"bad string {self.s[start:j + 1]}: {e}") from None
                self.i = j + 1
                return out
            j += 1
        raise self.error("unterminated string")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses or brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _strip_comment(line: str) -> str:
    """The line without its ``//`` comment; a ``//`` inside a string literal is kept."""
    in_str = False
    i = 0
    while i < len(line):
        ch = line[i]
        if in_str:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif line.startswith("//", i):
            return line[:i]
        i += 1
    return line


# ---- types and attribute values --------------------------------------------------------

def _type(c: _Cursor) -> TensorType:
    name = c.match(_IDENT, "a dtype")
    try:
        dtype = dt.get(name)
    except IRError:
        raise c.error(f"unknown dtype {name!r}") from None
    c.expect("[", "after the dtype")
    body = c.until_close("]").strip()
    dims = []
    for part in (_split_top(body) if body else []):
        try:
            dims.append(_parse_dim(part))
        except IRError as e:
            raise c.error(f"bad dimension {part!r} in type {name}[{body}]: {e}") from None
    try:
        return TensorType(dtype, dims)
    except IRError as e:
        raise c.error(str(e)) from None


def parse_type(text: str) -> TensorType:
    """Parse a tensor type such as ``f32[B,64]`` or ``i64[]``."""
    c = _Cursor(text, None)
    t = _type(c)
    if not c.at_end():
        raise c.error(f"trailing text after type: {c.s[c.i:]!r}")
    return t


def _atom_value(tok: str, c: _Cursor) -> Any:
    if tok == "true":
        return True
    if tok == "false":
        return False
    if tok == "none":
        return None
    if tok in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[tok]
    if _INT.match(tok):
        if len(tok.lstrip("+-")) > 30:
            raise c.error(f"integer {tok[:20]}... is too long")
        return int(tok)
    if _FLOAT.match(tok):
        return float(tok)
    try:
        return _parse_dim(tok)
    except IRError:
        raise c.error(f"bad value {tok!r}") from None


def _value(c: _Cursor, depth: int = 0) -> Any:
    """One attribute value: string, list (as tuple), bool, number or dimension expression."""
    if depth > 32:
        raise c.error("attribute lists nested more than 32 deep")
    ch = c.peek()
    if ch == '"':
        return c.string()
    if ch == "[":
        c.expect("[")
        items: list[Any] = []
        if not c.eat("]"):
            while True:
                items.append(_value(c, depth + 1))
                if c.eat("]"):
                    break
                c.expect(",", "or ']' in list")
        return tuple(items)
    return _atom_value(c.atom(), c)


def _kwargs(c: _Cursor, close: str) -> dict[str, Any]:
    """``k=v, k=v`` up to ``close`` (the opening bracket is already consumed)."""
    out: dict[str, Any] = {}
    if c.eat(close):
        return out
    while True:
        key = c.match(_IDENT, "an attribute name")
        c.expect("=", f"after attribute {key!r}")
        if key in out:
            raise c.error(f"attribute {key!r} given twice")
        out[key] = _value(c)
        if c.eat(close):
            return out
        c.expect(",", f"or {close!r} after attribute {key!r}")


# ---- constants ------------------------------------------------------------------------------

def _const_def(c: _Cursor, constants: Mapping[str, Any]) -> tuple[str, Value]:
    """``#name = const TYPE INIT``; INIT is ``sha256:HEX``, ``param`` (supplied by name through
    ``constants=``, for hand-written IR that binds a model's weights), a literal or a generator."""
    c.expect("#")
    name = c.match(_NAME, "a constant name")
    c.expect("=", f"after #{name}")
    c.expect("const", f"in the definition of #{name}")
    t = _type(c)
    if not t.is_static:
        raise c.error(f"constant #{name} has a symbolic shape {t}")
    c.ws()
    gen = _IDENT.match(c.s, c.i)
    try:
        if c.eat("sha256:"):
            digest = c.match(_NAME, "a hash")
            if not _HEX.match(digest):
                raise c.error(f"bad hash {digest!r}")
            data = ct.lookup(constants, name, digest, t)
        elif gen and gen.group(0) == "param":
            c.i = gen.end()
            data = ct.lookup(constants, name, None, t)
        elif gen and gen.group(0) in ct.GENERATORS:
            c.i = gen.end()
            args = _kwargs(c, ")") if c.eat("(") else {}
            data = ct.generate(gen.group(0), args, t)
        else:
            data = ct.literal_tensor(_value(c), t)
    except ParseError as e:
        if e.line is not None:
            raise
        raise c.error(str(e)) from None
    if not c.at_end():
        raise c.error(f"trailing text after constant #{name}: {c.s[c.i:]!r}")
    return name, Value(t, name, const=data)


# ---- the graph -----------------------------------------------------------------------------

def _operand(c: _Cursor, env: dict[str, Value], consts: dict[str, Value],
             allow_none: bool = True) -> Value | None:
    if allow_none and c.eat("_"):
        return None
    if c.eat("#"):
        nm = c.match(_NAME, "a constant name")
        if nm not in consts:
            raise c.error(f"undefined constant #{nm}")
        return consts[nm]
    c.expect("%", "(a value)")
    nm = c.match(_NAME, "a value name")
    if nm not in env:
        raise c.error(f"undefined value %{nm}")
    return env[nm]


def _define(c: _Cursor, env: dict[str, Value], name: str, v: Value) -> None:
    if name in env:
        raise c.error(f"duplicate definition of %{name}")
    env[name] = v


def _node(c: _Cursor, g: Graph, env: dict[str, Value], consts: dict[str, Value]) -> None:
    """``%a: T, %b: T = op[attrs](args)`` (or a bare call for a node without outputs)."""
    outs: list[tuple[str, TensorType]] = []
    if c.peek() == "%":
        while True:
            c.expect("%")
            nm = c.match(_NAME, "an output name")
            c.expect(":", f"after %{nm}")
            outs.append((nm, _type(c)))
            if c.eat("="):
                break
            c.expect(",", "or '=' after an output")
    op = c.match(_OPNAME, "an op name")
    if not has_op(op):
        raise c.error(f"unknown op {op!r}")
    attrs = _kwargs(c, "]") if c.eat("[") else {}
    c.expect("(", f"after op {op}")
    args: list[Value | None] = []
    if not c.eat(")"):
        while True:
            args.append(_operand(c, env, consts))
            if c.eat(")"):
                break
            c.expect(",", f"or ')' in the arguments of {op}")
    if not c.at_end():
        raise c.error(f"trailing text after {op}(...): {c.s[c.i:]!r}")
    opdef = get_op(op)
    try:
        opdef.check_arity(len(args), where=op)
        node = g.create_node(op, args, attrs, out_types=[t for _, t in outs])
    except (AttributeError_, ShapeError, IRError) as e:
        raise c.error(str(e)) from None
    for (nm, _), v in zip(outs, node.outputs):
        _define(c, env, nm, v)
        if not nm.isdigit():
            v.name = nm  # hand-written names help messages; printing renumbers anyway
    g.append(node)


def _header(c: _Cursor, g: Graph, env: dict[str, Value]) -> list[TensorType]:
    """``graph @name(%x: T, ...) -> (T, ...) {``; returns the declared result types."""
    c.expect("graph", "at the start of the text")
    c.expect("@", "before the graph name")
    g.name = c.match(_NAME, "a graph name")
    c.expect("(", "after the graph name")
    if not c.eat(")"):
        while True:
            c.expect("%", "before an input name")
            nm = c.match(_NAME, "an input name")
            c.expect(":", f"after %{nm}")
            v = g.add_input(_type(c), nm)
            _define(c, env, nm, v)
            if c.eat(")"):
                break
            c.expect(",", "or ')' after an input")
    c.expect("->", "after the inputs")
    results: list[TensorType] = []
    if c.eat("("):
        if not c.eat(")"):
            while True:
                results.append(_type(c))
                if c.eat(")"):
                    break
                c.expect(",", "or ')' in the result types")
    else:
        results.append(_type(c))
    c.expect("{", "at the end of the graph header")
    if not c.at_end():
        raise c.error(f"trailing text after '{{': {c.s[c.i:]!r}")
    return results


def _return(c: _Cursor, g: Graph, env: dict[str, Value], consts: dict[str, Value],
            results: list[TensorType]) -> None:
    c.expect("return")
    outs: list[Value] = []
    if not c.at_end():
        while True:
            v = _operand(c, env, consts, allow_none=False)
            assert v is not None
            outs.append(v)
            if c.at_end():
                break
            c.expect(",", "between returned values")
    if len(outs) != len(results):
        raise c.error(f"return has {len(outs)} values, the header declares {len(results)}")
    for i, (v, t) in enumerate(zip(outs, results)):
        if v.type != t:
            raise c.error(f"result {i} has type {v.type}, the header declares {t}")
    g.set_outputs(outs)


def _is_return(s: str) -> bool:
    return s == "return" or s.startswith(("return ", "return%", "return#"))


def parse(text: str, constants: Mapping[str, Any] | None = None, verify: bool = False) -> Graph:
    """Parse IR text into a Graph.

    ``constants`` maps a constant's hash (the hex digits after ``sha256:``) or its name
    (``"c0"``) to its tensor; every ``sha256:`` constant must be supplied, and its data must
    match the hash. Without ``constants`` the tensors this process printed as hashes are used,
    until their graphs are collected (so ``parse(str(g)) == g`` while ``g`` lives). Raises ParseError naming the line and the
    offending op, value or constant.
    """
    if not isinstance(text, str):
        raise ParseError(f"IR text must be a str, got {type(text).__name__}")
    if constants is None:
        constants = ct.PrintedConstants()
    lines = [(i + 1, _strip_comment(raw).strip()) for i, raw in enumerate(text.split("\n"))]
    lines = [(n, s) for n, s in lines if s]
    if not lines:
        raise ParseError("empty IR text")
    close = next((k for k, (_, s) in enumerate(lines) if s == "}"), None)
    if close is None:
        raise ParseError("missing '}' closing the graph body", lines[-1][0])
    # Constants come after the body but are used in it, so they are read first.
    consts: dict[str, Value] = {}
    for n, s in lines[close + 1:]:
        c = _Cursor(s, n)
        if c.peek() != "#":
            raise c.error(f"expected a constant definition after the graph body, got {s[:20]!r}")
        name, v = _const_def(c, constants)
        if name in consts:
            raise c.error(f"duplicate definition of constant #{name}")
        consts[name] = v

    g = Graph()
    env: dict[str, Value] = {}
    first_line, header = lines[0]
    results = _header(_Cursor(header, first_line), g, env)
    body = lines[1:close]
    if not body or not _is_return(body[-1][1]):
        raise ParseError("the graph body must end with a 'return' line",
                         body[-1][0] if body else lines[close][0])
    for n, s in body[:-1]:
        c = _Cursor(s, n)
        if _is_return(s):
            raise c.error("'return' must be the last line of the body")
        _node(c, g, env, consts)
    n, s = body[-1]
    _return(_Cursor(s, n), g, env, consts, results)

    if verify and importlib.util.find_spec("scalefold.ir.verify") is not None:
        from .verify import verify as run_verify
        run_verify(g)
    return g


__all__ = ["parse", "parse_type"]
