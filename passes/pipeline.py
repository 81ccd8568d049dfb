"""Pass registry and pipeline strings (``"smooth(alpha=0.8)"``).

A pass is a function ``(graph, **options) -> graph`` registered under a name with
:func:`register_pass`; its docstring states pre- and postconditions. :class:`PassManager`
parses a pipeline, runs each pass on a clone, verifies the graph between passes, counts rule
applications and dumps the IR when asked; :func:`run_pipeline` is its one-call form.
"""
from __future__ import annotations

import ast
import inspect
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
import types
import typing
from typing import Any, Callable, Iterable, Sequence

import torch

from ..ir.errors import OptionError, ScalefoldError
from ..ir.graph import Graph
from .counters import Counters, _active, counting
from .wq_options import bool_word

PassFn = Callable[..., Graph]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    needs_calibration: bool | str = False


_PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, needs_calibration: bool | str = False) -> Callable[[PassFn], PassFn]:
    """Register ``fn(graph, **options) -> graph`` as pass ``name``. A calibrating pass
    (``needs_calibration=True``) receives ``calibration=`` and the pipeline refuses to run it
    without; ``needs_calibration="optional"`` passes whatever was given (None included) and
    the pass decides, by its options, whether it needs it."""
    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        _PASSES[name] = PassInfo(name, fn, needs_calibration)
        return fn
    return deco


def registered_passes() -> list[str]:
    return sorted(_PASSES)


_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def _literal(spec: str, what: str, v: ast.expr) -> Any:
    if isinstance(v, ast.Name):
        return v.id  # bare word: int4, rtn, ...
    try:
        return ast.literal_eval(v)
    except ValueError:
        raise ScalefoldError(f"pass spec {spec!r}: bad value for {what}") from None


def parse_pass(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name(v, ..., k=v, ...)"`` -> (name, options); values are python literals or bare
    words. Positional values come back under their position (0, 1, ...): the pipeline names
    them by the pass's signature (:func:`name_positional`)."""
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
        for i, v in enumerate(call.args):
            if isinstance(v, ast.Starred):
                raise ScalefoldError(f"pass spec {spec!r}: options must be values or key=value")
            opts[i] = _literal(spec, f"option {i + 1}", v)   # type: ignore[index]
        for kw in call.keywords:
            if kw.arg is None or kw.arg in opts:
                raise ScalefoldError(f"pass spec {spec!r}: option {kw.arg or '**'} given twice" if kw.arg
                                     else f"pass spec {spec!r}: options must be values or key=value")
            opts[kw.arg] = _literal(spec, kw.arg, kw.value)
    return name, opts


def name_positional(name: str, fn: PassFn, opts: dict[Any, Any]) -> dict[str, Any]:
    """``opts`` with positional values (int keys from :func:`parse_pass`) named by ``fn``'s
    parameters after the graph and the calibration data, in order: ``smooth(0.8)`` is
    ``smooth(alpha=0.8)``, ``awq_scales(4, 64)`` ``awq_scales(bits=4, group=64)``."""
    pos = sorted(k for k in opts if isinstance(k, int))
    if not pos:
        return opts
    params = [p.name for p in list(inspect.signature(fn).parameters.values())[1:]
              if p.name != "calibration" and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if len(pos) > len(params):
        raise ScalefoldError(f"pass {name} takes at most {len(params)} positional option(s) "
                             f"({', '.join(params) or 'none'}), got {len(pos)}")
    out = {k: v for k, v in opts.items() if not isinstance(k, int)}
    for i in pos:
        key = params[i]
        if key in out:
            raise ScalefoldError(f"pass {name}: option {key} given twice (positionally and by name)")
        out[key] = opts[i]
    return out


_NONE = ("none", "null")


def _allowed(hint: Any) -> tuple[set[type], bool] | None:
    """(the plain types an annotation allows, whether it allows None), or None when the
    annotation is not one :func:`coerce_options` checks (Any, containers, ...)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    kinds = {a for a in args if a in (bool, int, float, str)}
    if not kinds or any(a not in (bool, int, float, str, type(None)) for a in args):
        return None
    return kinds, type(None) in args


def coerce_options(name: str, fn: PassFn, opts: dict[str, Any]) -> dict[str, Any]:
    """Options of pass ``name`` checked against ``fn``'s annotations (bool, int, float, str and
    their ``| None``). Bare words true/false/yes/no/on/off (:func:`~.wq_options.bool_word`)
    become booleans and none becomes None where the annotation allows them; an int is accepted
    for a float. Any other mismatch is an OptionError (a ScalefoldError) naming the pass, the
    option and the value. Options the annotations do not describe (``Any``, containers) pass
    unchanged, for the pass to check."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:   # noqa: BLE001 - unresolvable annotations: nothing to check against
        return dict(opts)
    out = dict(opts)
    for key, v in opts.items():
        allowed = _allowed(hints.get(key, Any))
        if allowed is None:
            continue
        kinds, nullable = allowed
        word = v.strip().lower() if isinstance(v, str) else None
        if nullable and (v is None or word in _NONE):
            out[key] = None
        elif bool in kinds and (isinstance(v, (bool, str)) or kinds == {bool}) and bool_word(v) is not None:
            out[key] = bool_word(v)            # an int stays an int where the option takes one
        elif int in kinds and isinstance(v, int) and not isinstance(v, bool):
            pass
        elif float in kinds and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v) if int not in kinds else v
        elif str in kinds and isinstance(v, str):
            pass
        else:
            want = " or ".join(sorted(t.__name__ for t in kinds) + (["none"] if nullable else []))
            raise OptionError(f"pass {name}: option {key} must be {want}, got {v!r}")
    return out


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


def _check_passes(parsed: list[tuple[str, dict[str, Any]]]) -> None:
    unknown = [n for n, _ in parsed if n not in _PASSES]
    if unknown:
        known = ", ".join(registered_passes()) or "none yet"
        raise ScalefoldError(f"unknown pass(es): {', '.join(unknown)} (registered: {known})")


class PassManager:
    """Runs a pipeline of registered passes (DESIGN.md §4).

    - ``pipeline``: a pipeline string ``"fold_batchnorm,smooth(alpha=0.8)"`` or a list of specs;
      unknown passes and bad options fail before any pass runs.
    - The verifier runs after every pass (``verify=False`` skips it); a failure names the pass.
    - ``counters[pass][rule]`` collects every rule application of this run; when an outer
      :func:`counting` block is active, the counts are also added to it.
    - ``dump_dir`` (default: the ``SCALEFOLD_DUMP_IR`` environment variable) receives the IR
      before and after each pass as ``NN-<pass>-before.ir`` / ``NN-<pass>-after.ir``.
    - ``timings[i]`` is ``(pass name, seconds)`` of the i-th pass.
    The input graph is never modified: passes run on a clone.
    """

    def __init__(self, pipeline: Sequence[str] | str, *, verify: bool = True,
                 calibration: Iterable[Sequence[torch.Tensor]] | None = None,
                 dump_dir: str | os.PathLike | None = None) -> None:
        specs = split_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        parsed = [parse_pass(s) for s in specs]
        _check_passes(parsed)
        parsed = [(n, name_positional(n, _PASSES[n].fn, o)) for n, o in parsed]
        self.passes: list[tuple[str, dict[str, Any]]] = [(n, coerce_options(n, _PASSES[n].fn, o))
                                                          for n, o in parsed]
        self.verify = verify
        self.calibration = calibration
        env_dir = os.environ.get("SCALEFOLD_DUMP_IR")
        self.dump_dir: Path | None = Path(dump_dir) if dump_dir else (Path(env_dir) if env_dir else None)
        self.counters = Counters()
        self.timings: list[tuple[str, float]] = []
        for name, opts in self.passes:
            info = _PASSES[name]
            if info.needs_calibration is True and calibration is None:
                raise ScalefoldError(f"pass {name} needs calibration data (calibration=..., or --calibration "
                                     "FILE on the command line)")
            given = dict(opts)
            if info.needs_calibration:
                opts = {**opts, "calibration": calibration}
            try:
                inspect.signature(info.fn).bind(Graph(), **opts)
            except TypeError as e:
                # the options as given: not the calibration data, which can be megabytes of text
                raise ScalefoldError(f"pass {name}: bad options {given}: {e}") from None

    def _dump(self, step: int, name: str, when: str, g: Graph) -> None:
        if self.dump_dir is None:
            return
        try:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / f"{step:02d}-{name}-{when}.ir").write_text(str(g))
        except OSError as e:
            raise ScalefoldError(f"cannot dump the IR into {self.dump_dir} (dump_dir, or the SCALEFOLD_DUMP_IR "
                                 f"environment variable): {e.strerror or e}") from e

    def run(self, graph: Graph) -> Graph:
        """Run every pass in order on a clone of ``graph`` and return the result."""
        from ..ir.errors import VerifyError
        from ..ir.verify import verify

        outer = _active.get()
        g = graph.clone()
        with counting(self.counters):
            for step, (name, opts) in enumerate(self.passes):
                info = _PASSES[name]
                if info.needs_calibration:
                    opts = {**opts, "calibration": self.calibration}
                self._dump(step, name, "before", g)
                t0 = time.perf_counter()
                g = info.fn(g, **opts)
                self.timings.append((name, time.perf_counter() - t0))
                if not isinstance(g, Graph):
                    raise ScalefoldError(f"pass {name} returned {type(g).__name__}, not a Graph")
                self._dump(step, name, "after", g)
                if self.verify:
                    try:
                        verify(g)
                    except VerifyError as e:
                        raise VerifyError(f"after pass {name}: {e}") from e
        if outer is not None:
            outer.merge(self.counters)
        return g


def run_pipeline(graph: Graph, passes: Sequence[str] | str,
                 calibration: Iterable[Sequence[torch.Tensor]] | None = None) -> Graph:
    """Run the passes in order on a clone of ``graph``; the verifier runs after each."""
    return PassManager(passes, calibration=calibration).run(graph)
