"""Pass registry and pipeline strings (``"smooth(alpha=0.8)"``).

A pass is a function ``(graph, **options) -> graph`` registered under a name with
:func:`register_pass`; its docstring states pre- and postconditions. :func:`run_pipeline`
parses a pipeline, runs each pass on a clone, and verifies the graph between passes.
"""
from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch

from ..ir.errors import ScalefoldError
from ..ir.graph import Graph

PassFn = Callable[..., Graph]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    needs_calibration: bool = False


_PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, needs_calibration: bool = False) -> Callable[[PassFn], PassFn]:
    """Register ``fn(graph, **options) -> graph`` as pass ``name`` (a calibrating pass also
    receives ``calibration=``)."""
    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        _PASSES[name] = PassInfo(name, fn, needs_calibration)
        return fn
    return deco


def registered_passes() -> list[str]:
    return sorted(_PASSES)


_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_pass(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name(k=v, ...)"`` -> (name, options); values are python literals or bare words."""
    m = _SPEC.match(spec)
    if not m:
        raise ScalefoldError(f"bad pass spec {spec!r}: expected name or name(key=value, ...)")
    name, args = m.group(1), m.group(2)
    opts: dict[str, Any] = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
        except SyntaxError:
            raise ScalefoldError(f"bad options in pass spec {spec!r}") from None
        assert isinstance(call, ast.Call)
        if call.args:
            raise ScalefoldError(f"pass spec {spec!r}: options must be key=value")
        for kw in call.keywords:
            v = kw.value
            if isinstance(v, ast.Name):
                opts[kw.arg] = v.id  # bare word: int4, rtn, ...
            else:
                try:
                    opts[kw.arg] = ast.literal_eval(v)
                except ValueError:
                    raise ScalefoldError(f"pass spec {spec!r}: bad value for {kw.arg}") from None
    return name, opts


def split_pipeline(text: str) -> list[str]:
    """Split ``"a,b(x=1,y=2),c"`` at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur.strip():
        out.append(cur)
    return [s.strip() for s in out if s.strip()]


def run_pipeline(graph: Graph, passes: Sequence[str] | str,
                 calibration: Iterable[Sequence[torch.Tensor]] | None = None) -> Graph:
    """Run the passes in order on a clone of ``graph``; the verifier runs after each."""
    from ..ir.verify import verify

    specs = split_pipeline(passes) if isinstance(passes, str) else list(passes)
    parsed = [parse_pass(s) for s in specs]
    unknown = [n for n, _ in parsed if n not in _PASSES]
    if unknown:
        known = ", ".join(registered_passes()) or "none yet"
        raise ScalefoldError(f"unknown pass(es): {', '.join(unknown)} (registered: {known})")
    g = graph.clone()
    for name, opts in parsed:
        info = _PASSES[name]
        if info.needs_calibration:
            if calibration is None:
                raise ScalefoldError(f"pass {name} needs calibration data (calibration=...)")
            opts = {**opts, "calibration": calibration}
        try:
            inspect.signature(info.fn).bind(g, **opts)
        except TypeError as e:
            raise ScalefoldError(f"pass {name}: bad options {opts}: {e}") from None
        g = info.fn(g, **opts)
        verify(g)
    return g
