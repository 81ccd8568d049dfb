"""torch.export's shape guards on dynamic sizes: which sizes they tie to the example
(``pinned``), and how to name the inputs' dims that end up fixed (``fixed_dims``). Used by
``frontend/torch.py`` when a graph's sizes do not unify without those guards."""
from __future__ import annotations

import sympy
import torch
from torch.export import ExportedProgram

from ..ir.graph import Graph
from .dim_ranges import finite_int


def fixed_dims(ep: ExportedProgram, g: Graph) -> str:
    """"input 'x' dims 2, 3" for the user inputs' dims that are symbolic in ``ep`` but static
    in ``g``."""
    from torch.export.graph_signature import InputKind
    phs = [n for n in ep.graph_module.graph.nodes if n.op == "placeholder"]
    users = [ph for spec, ph in zip(ep.graph_signature.input_specs, phs) if spec.kind == InputKind.USER_INPUT]
    parts = []
    for ph, v in zip((ph for ph in users if isinstance(ph.meta.get("val"), torch.Tensor)), g.inputs):
        axes = [str(i) for i, (d, d2) in enumerate(zip(ph.meta["val"].shape, v.shape))
                if isinstance(d, torch.SymInt) and isinstance(d2, int)]
        if axes:
            parts.append(f"input {ph.name!r} dim{'s' if len(axes) > 1 else ''} {', '.join(axes)}")
    return "; ".join(parts) or "some sizes"


def pinned(ep: ExportedProgram) -> tuple[dict[sympy.Symbol, int], dict[sympy.Symbol, int]]:
    """Example values of the torch shape symbols that the equality guards of the export's
    shape environment constrain (the guard fails when the symbol alone takes another value
    of its range), and of every symbol those guards mention. Guards that torch's own
    replacements already satisfy do not count."""
    env = None
    for n in ep.graph_module.graph.nodes:
        fm = getattr(n.meta.get("val"), "fake_mode", None)
        if fm is not None and getattr(fm, "shape_env", None) is not None:
            env = fm.shape_env
            break
    if env is None:
        return {}, {}
    repl = dict(getattr(env, "replacements", {}) or {})
    # torch 2.14 renamed var_to_val (the old name warns)
    values = dict(env.backed_var_to_val if hasattr(env, "backed_var_to_val") else getattr(env, "var_to_val", {}))
    ranges = dict(ep.range_constraints)
    tight: dict[sympy.Symbol, int] = {}
    loose: dict[sympy.Symbol, int] = {}
    for guard in getattr(env, "guards", []):
        e = getattr(guard, "expr", None)
        if not isinstance(e, sympy.Eq):
            continue
        for _ in range(4):     # replacements may chain
            e2 = e.xreplace(repl)
            if e2 == e:
                break
            e = e2
        if not isinstance(e, sympy.Eq) or not e.free_symbols or not e.free_symbols <= set(values):
            continue
        at = {x: sympy.Integer(int(values[x])) for x in e.free_symbols}
        for x, v in at.items():
            loose[x] = int(v)
            lo, hi = (finite_int(getattr(ranges.get(x), b, None)) for b in ("lower", "upper"))
            others = [int(v) + d for d in (1, -1, 2, int(v)) if (lo is None or int(v) + d >= lo)
                      and (hi is None or int(v) + d <= hi)]
            try:
                holds = all(bool(e.xreplace({**at, x: sympy.Integer(o)})) for o in others)
            except TypeError:   # not decidable on numbers: treat as constraining
                holds = False
            if not holds:
                tight[x] = int(v)
    return tight, loose
