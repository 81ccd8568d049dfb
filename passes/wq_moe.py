"""``quant_weights`` on mixture-of-experts: ``moe`` with constant experts -> ``qmoe``.

Each expert matrix (gate, up, down: [E, N, K]) is quantised expert by expert, row-wise along
its K exactly as a ``linear`` weight is (``wq_int.int_quantize`` / ``wq_fp.fp8_codes`` /
``wq_fp.fp4_codes``), so ``qmoe``'s dequantisation reproduces the quantiser bit for bit. The
router stays float (routing decisions are too sensitive to quantise, and the router is tiny).

Methods: ``rtn`` is plain round-to-nearest. ``awq`` first runs ``awq_scales`` over the whole
graph, whose scale for a moe input moves into its producer and is compensated in the router
and in every expert's gate and up at once (``scale_move``); the expert quantiser here then runs,
for ``awq`` and ``search``, the clip search, where a Gram matrix of the moe input x (over all
calibration tokens, not per expert: the routed subsets are not observed) is available — for
gate and up, whose input is x. ``down`` reads the expert's hidden activation, which is not observed, so it stays
RTN. FP4 searches the clip only for E2M1 (all experts must share one code dtype, so the
per-layer E2M1/E3M0/E1M2 format choice is not made). Without a Gram matrix everything is RTN.

Settings: the whole moe is one "layer": the pass's base setting unless a string override key
(weight-name substring or ``re:`` pattern) matches the node name or one of its expert / router
weight constant names; integer keys index linears and never match a moe. ``"float"`` keeps
the moe. ``act="int8"``, ``act_format`` and ``budget`` apply to linears only.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch

from ..ir import dtypes as dt
from ..ir.errors import CalibrationError
from ..ir.graph import Graph, Node
from .calibrate import stats_for
from .counters import bump
from .quant_common import require_finite
from .wq_fp import FP4_FORMATS, fp4_codes, fp4_fake, fp8_codes, fp8_fake, search_clip
from .wq_int import clip_search, int_quantize
from .wq_options import name_matches
from .wq_settings import INT_BITS

PASS = "quant_weights"
MATS = ("gate", "up", "down")


def quantizable_moe(n: Node) -> bool:
    """A ``moe`` whose expert matrices are all constants."""
    return n.op == "moe" and all(v is None or v.is_const for v in n.inputs[2:5])


def moe_setting(node: Node, base: Any, overrides: Sequence[tuple[Any, Any]]) -> Any:
    """The setting of ``node``: the first string override whose key is found in the node's
    name or a weight name (``re:`` keys searched as patterns), else ``base``."""
    names = [node.name or ""] + [v.name or "" for v in node.inputs[1:5] if v is not None]
    for key, st in overrides:
        if isinstance(key, int):
            continue
        if key.startswith("re:"):
            if any(nm and re.search(key[3:], nm) for nm in names):
                return st
        elif any(nm and name_matches(key, nm) for nm in names):
            return st
    return base


def moe_grams(graph: Graph, nodes: Sequence[Node], calibration: Any) -> dict[int, torch.Tensor]:
    """Gram matrices XᵀX/rows of the moe inputs x (keyed by id(node)); empty without
    calibration, or when the calibration (precomputed Stats) did not observe x — then the
    experts fall back to RTN, counted as ``moe_no_gram``."""
    if calibration is None or not nodes:
        return {}
    xs = {id(n.inputs[0]): n.inputs[0] for n in nodes}
    try:
        st = stats_for(graph, calibration, list(xs.values()), gram=list(xs.values()))
        by_x = {k: (st[v].gram / max(st[v].rows, 1)).to(torch.float32) for k, v in xs.items()}
    except (CalibrationError, KeyError):
        bump(PASS, "moe_no_gram", len(nodes))
        return {}
    return {id(n): by_x[id(n.inputs[0])] for n in nodes}


def _quantize_matrix(w: torch.Tensor, st: Any, gram: torch.Tensor | None, points: int
                     ) -> tuple[torch.Tensor, dt.DType, torch.Tensor, torch.Tensor | None, str | None]:
    """One expert matrix [N, K] -> (codes container, code dtype, scale [N, G], zero [N, G] or
    None, wtype attr or None)."""
    w = w.to(torch.float32)
    search = st.method != "rtn" and gram is not None
    if st.format in INT_BITS:
        bits = INT_BITS[st.format]
        if search:
            w = clip_search(w, gram, bits, st.group, st.sym)
        codes, delta, zero = int_quantize(w, bits, st.group, st.sym)
        cdt = (dt.i4 if bits <= 4 else dt.i8) if st.sym else (dt.u4 if bits <= 4 else dt.u8)
        z = dt.to_container(zero, cdt) if zero is not None else None
        return dt.to_container(codes, cdt), cdt, delta, z, None
    if st.format == "fp8_e4m3":
        clip: Any = search_clip(w, gram, st.group, lambda x, c: fp8_fake(x, st.group, c), points) \
            if search else 1.0
        codes8, scale = fp8_codes(w, st.group, clip)
        return codes8, dt.f8e4m3, scale, None, "f8e4m3"
    fmt = FP4_FORMATS["e2m1"]
    clip = search_clip(w, gram, st.group, lambda x, c: fp4_fake(x, fmt, st.group, c)[0], points) \
        if search else 1.0
    codes4, cdt4, scale = fp4_codes(w, fmt, st.group, clip)
    return codes4, cdt4, scale, None, "f4e2m1"


def quantize_moe(graph: Graph, node: Node, setting: Any, gram: torch.Tensor | None = None,
                 points: int = 100) -> str:
    """Replace ``moe`` ``node`` (constant experts) by ``qmoe`` under ``setting`` (a
    :class:`~scalefold.passes.quant_weights.LayerSetting`); ``gram`` is XᵀX/rows of its input x
    for the clip search of gate/up (see the module docstring). New constants are named
    ``<weight>.q`` / ``.scale`` / ``.zero``. Returns the counter rule ``moe_<format>``."""
    x, router, wg, wu, wd = node.inputs[:5]
    rbias = node.inputs[5] if len(node.inputs) > 5 else None
    ins: list[Any] = [x, router]
    wtype: str | None = None
    group = setting.group
    for m, wv in zip(MATS, (wg, wu, wd)):
        if wv is None:
            ins += [None, None, None]
            continue
        per: list[tuple] = []
        for e in range(wv.const.shape[0]):
            require_finite(wv.const[e], f"expert {e} ({m}) of {node.describe()}")
            per.append(_quantize_matrix(wv.const[e], setting, gram if m != "down" else None, points))
        cdt, wtype = per[0][1], per[0][4]
        codes = torch.stack([p[0] for p in per])
        scale = torch.stack([p[2] for p in per]).to(torch.float32).contiguous()
        zero = torch.stack([p[3] for p in per]) if per[0][3] is not None else None
        nm = (lambda s, n=wv.name: f"{n}.{s}" if n else None)
        ins.append(graph.add_const(codes.contiguous(), cdt, name=nm("q")))
        ins.append(graph.add_const(scale, dt.f32, name=nm("scale")))
        ins.append(graph.add_const(zero.contiguous(), cdt, name=nm("zero")) if zero is not None else None)
    ins.append(rbias)
    while ins[-1] is None:
        ins.pop()
    attrs = dict(node.attrs)
    # Unlike qlinear's min(group, K), the attr stays as given: gate/up (K = H) and down (K = I)
    # share it, and a group >= K already means one scale per row (G = 1) for that matrix.
    attrs["group"] = group
    if wtype is not None:
        attrs["wtype"] = wtype
    new = graph.create_node("qmoe", ins, attrs, name=node.name)
    graph.insert_before(node, new)
    graph.replace_all_uses(node.outputs[0], new.outputs[0])
    graph.remove(node)
    return f"moe_{setting.format}"


def quantize_moes(graph: Graph, base: Any, overrides: Sequence[tuple[Any, Any]], calibration: Any = None,
                  points: int = 100, grams: dict[int, torch.Tensor] | None = None) -> None:
    """Quantise every :func:`quantizable_moe` of ``graph`` (see the module docstring for the
    settings and methods); counters ``moe_<format>`` per moe, ``kept_float`` per moe left
    float. ``calibration`` is used (for the Gram matrices) only where a setting's method is
    not rtn; ``grams`` ({id(moe node): Gram of its input}) are used instead where given."""
    nodes = [n for n in graph.nodes if quantizable_moe(n)]
    settings = {id(n): moe_setting(n, base, overrides) for n in nodes}
    need = [n for n in nodes if settings[id(n)] != "float" and settings[id(n)].method != "rtn"]
    if grams is None:
        grams = moe_grams(graph, need, calibration)
    for n in nodes:
        st = settings[id(n)]
        if st == "float":
            bump(PASS, "kept_float")
            continue
        bump(PASS, quantize_moe(graph, n, st, grams.get(id(n)), points))


__all__ = ["moe_grams", "moe_setting", "quantizable_moe", "quantize_moe", "quantize_moes"]
