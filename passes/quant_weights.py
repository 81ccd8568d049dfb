"""``quant_weights``: weight-only quantisation of ``linear`` into ``qlinear`` (ALGORITHMS.md §2, §4).

Every ``linear`` with a constant 2-D weight (and constant or no bias) becomes
``qlinear(x, codes, scale, zero?, bias?)`` with float activations (``act="none"``; weights
dequantised on the fly by the kernels) or, with ``act="int8"``, activations quantised per
token at run time (``act="per_token"``).

- Integer formats ``int3``/``int4``/``int8`` (``passes/wq_int.py``): group-wise RTN along K,
  asymmetric u4/u8 codes with a zero point or symmetric i4/i8. ``method="awq"`` runs the
  ``awq_scales`` search first, then AWQ's clip search per (channel, group) — skipped for the
  linears feeding attention scores (q/k, found structurally); ``method="search"`` is the clip
  search alone.
- Float formats (``passes/wq_fp.py``): ``fp8_e4m3`` (OCP E4M3, max-based scale, clip searched
  with ``method="search"``) and ``fp4_e2m1``; for FP4, ``method="search"`` is LLM-FP4's search
  over the formats E2M1 / E3M0 / E1M2 and the per-(channel, group) exponent bias (clip), scored by
  layer-output L2 on the calibration Gram matrix.
- ``act_format="fp8_e4m3"|"fp4_e2m1"`` (FP formats) also quantises the linears' activations
  per tensor, with LLM-FP4's per-channel 2^k exponent-bias reparameterisation folded into the
  activation's producer (``passes/wq_act.py``).
- Per-layer ``overrides`` and mixed precision under a size ``budget`` (``passes/wq_mixed.py``).
- Bias correction after the calibrated quantisers (``passes/wq_bias.py``): each quantised
  linear's mean output over the real calibration tokens is matched to the float model's,
  sequentially; kept only where the outputs get closer.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..ir import dtypes as dt
from ..ir.errors import ScalefoldError
from ..ir.graph import Graph, Node, Value
from .awq import run_awq
from .calibrate import stats_for
from .counters import Counters, bump, bump_all, counting
from .pipeline import register_pass
from .quant_common import linear_bias, override_for, quantizable_linear, require_finite
from .wq_fp import FP4_FORMATS, fp4_codes, fp8_codes, search_clip, search_fp4, fp8_fake
from .wq_gptq import gptq_quantize
from .wq_int import clip_search, int_quantize
from .wq_options import as_bool, as_int, check_all_used, iter_once
from .wq_moe import quantizable_moe, quantize_moes
from .wq_seq import run_sequential
from .wq_settings import (FORMATS, FP_FORMATS, INT_BITS, LayerSetting, check_setting,
                          parse_layer_overrides)
from .wq_bias import OutputCheck, correct_biases, float_means, restore_biases

PASS = "quant_weights"


def _rescaled(gram: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
    """The second moment of X diag(1/s) from X's (``s`` None: unchanged)."""
    return gram if s is None else gram / (s[:, None] * s[None, :]).to(gram.dtype)


# ---- which linears feed attention scores ---------------------------------------------------------
_STOP = frozenset({"linear", "qlinear", "matmul", "softmax", "layer_norm", "rms_norm"})


def qk_linears(graph: Graph, depth: int = 16) -> set[int]:
    """ids of the linears whose output reaches the query or key operand of an ``sdpa`` (or a
    ``matmul`` whose result goes through ``softmax``) through elementwise / layout ops only —
    reshape, transpose, bias adds, RoPE's mul/add/slice/concat. AWQ skips the clip search for
    these: clipping their outliers distorts the attention logits (ALGORITHMS.md §2)."""
    def reaches_scores(v, d: int) -> bool:
        if d > depth:
            return False
        for u in v.users():
            if u.op == "sdpa" and any(u.inputs[i] is v for i in (0, 1)):
                return True
            if u.op == "matmul" and any(w.op == "softmax" or (w.op in ("mul", "div", "add") and
                                                              any(z.op == "softmax" for z in w.outputs[0].users()))
                                        for w in u.outputs[0].users()):
                return True
            if u.op in _STOP or u.op == "sdpa":
                continue
            if any(reaches_scores(o, d + 1) for o in u.outputs):
                return True
        return False
    return {id(n) for n in graph.nodes if n.op == "linear" and reaches_scores(n.outputs[0], 0)}


# ---- the pass ------------------------------------------------------------------------------------
Consts = tuple[Value, Value, "Value | None"]


def _replace(graph: Graph, node: Node, codes: torch.Tensor | None, codes_dt: dt.DType | None,
             scale: torch.Tensor | None, zero: torch.Tensor | None, group: int, wtype: str | None,
             act: str = "none", reuse: Consts | None = None) -> Consts:
    """Replace ``node`` by a qlinear on new code / scale / zero constants, or on ``reuse`` (those
    of a linear with the same weight); returns the constants."""
    x, out = node.inputs[0], node.outputs[0]
    k = node.inputs[1].shape[1]
    per_row = group <= 0
    if reuse is not None:
        wq, ws, wz = reuse
    else:
        assert codes is not None and codes_dt is not None and scale is not None
        if per_row:
            scale = scale[:, 0]
            zero = zero[:, 0] if zero is not None else None
        wname = node.inputs[1].name
        nm = (lambda s: f"{wname}.{s}" if wname else None)
        cq = codes if codes_dt in (dt.f4e2m1, dt.f8e4m3) else dt.to_container(codes, codes_dt)
        wq = graph.add_const(cq, codes_dt, name=nm("q"))
        ws = graph.add_const(scale.to(torch.float32).contiguous(), dt.f32, name=nm("scale"))
        wz = graph.add_const(dt.to_container(zero, codes_dt), codes_dt, name=nm("zero")) if zero is not None else None
    b = linear_bias(node)
    bv = graph.add_const(b.to(out.dtype.container), out.dtype) if b is not None else None
    attrs: dict[str, Any] = {"act": act, "group": 0 if per_row else min(group, k)}
    if act != "none":
        attrs["abits"] = 8
    if wtype is not None:
        attrs["wtype"] = wtype
    ins = [x, wq, ws, wz, bv]
    while ins[-1] is None:
        ins.pop()
    new = graph.create_node("qlinear", ins, attrs, name=node.name)
    graph.insert_before(node, new)
    graph.replace_all_uses(out, new.outputs[0])
    graph.remove(node)
    return wq, ws, wz


def _quantize_one(graph: Graph, n: Node, st: LayerSetting, gram: torch.Tensor | None, clip_ok: bool,
                  qact: str, points: int, rounding: str = "nearest", cache: dict | None = None,
                  fp4: tuple[str, ...] = tuple(FP4_FORMATS)) -> str:
    """Replace linear ``n`` by its qlinear under ``st``; returns the counter rule (the format,
    or the searched FP4 format ``fp4_<e..m..>``). With ``cache``, a linear whose weight
    constant was already quantised the same way reuses those codes (tied weights)."""
    key = (id(n.inputs[1]), st, clip_ok, rounding)
    if cache is not None and key in cache:
        rule, consts = cache[key]
        # float codes name their format (f4e2m1 codes sit in a uint8 container)
        wdt = consts[0].dtype
        _replace(graph, n, None, None, None, None, st.group, wdt.name if wdt.is_float else None, qact,
                 reuse=consts)
        bump(PASS, "shared_weight")
        return rule
    rule, consts = _quantize_new(graph, n, st, gram, clip_ok, qact, points, rounding, fp4)
    if cache is not None:
        cache[key] = (rule, consts)
    return rule


def _quantize_new(graph: Graph, n: Node, st: LayerSetting, gram: torch.Tensor | None, clip_ok: bool,
                  qact: str, points: int, rounding: str, fp4: tuple[str, ...]) -> tuple[str, Consts]:
    w = n.inputs[1].const.to(torch.float32)
    require_finite(w, n.describe() + (f" ({n.inputs[1].name})" if n.inputs[1].name else ""))
    if st.format in INT_BITS:
        bits = INT_BITS[st.format]
        if st.method in ("awq", "search") and clip_ok:
            if gram is None:
                raise ScalefoldError(f"quant_weights: method={st.method} needs calibration (linear {n.describe()})")
            w = clip_search(w, gram, bits, st.group, st.sym)
            bump(PASS, "clipped")
        if rounding == "gptq":
            if gram is None:
                raise ScalefoldError(f"quant_weights: rounding=gptq needs calibration (linear {n.describe()})")
            codes, delta, zero = gptq_quantize(w, gram, bits, st.group, st.sym)
            bump(PASS, "gptq")
        else:
            codes, delta, zero = int_quantize(w, bits, st.group, st.sym)
        cdt = (dt.i4 if bits <= 4 else dt.i8) if st.sym else (dt.u4 if bits <= 4 else dt.u8)
        return st.format, _replace(graph, n, codes, cdt, delta, zero, st.group, None, qact)
    if st.format == "fp8_e4m3":
        clip: Any = 1.0
        if st.method != "rtn":
            clip = search_clip(w, gram, st.group, lambda x, c: fp8_fake(x, st.group, c), points)
            bump(PASS, "searched")
        codes8, scale = fp8_codes(w, st.group, clip)
        return st.format, _replace(graph, n, codes8, dt.f8e4m3, scale, None, st.group, "f8e4m3", qact)
    if st.method == "rtn":
        fmt, clip = FP4_FORMATS["e2m1"], 1.0
    else:
        fmt, clip, _ = search_fp4(w, gram, st.group, fp4, points)
        bump(PASS, "searched")
    codes4, cdt4, scale = fp4_codes(w, fmt, st.group, clip)
    consts = _replace(graph, n, codes4, cdt4, scale, None, st.group, "f4e2m1" if cdt4 is dt.f4e2m1 else None, qact)
    return (st.format if st.method == "rtn" else f"fp4_{fmt.name}"), consts


@register_pass(PASS, needs_calibration="optional")
def quant_weights(graph: Graph, calibration: Any = None, format: str = "int4", group: int = 128,
                  method: str = "rtn", sym: bool = False, grid: int = 20, act: str = "none",
                  clip: str = "no_qk", overrides: Any = None, budget: float | None = None,
                  mixed: str = "int8", sensitivity: str = "output", act_format: str | None = None,
                  points: int = 100, act_reparam: bool = True, rounding: str = "nearest",
                  sequential: bool = False, bias_correct: bool | None = None, awq_loss: str = "auto") -> Graph:
    """Weight-only quantisation of every ``linear`` with constant 2-D weight (and constant or no
    bias) into ``qlinear``.

    Options:
    - ``format`` int3|int4|int8|fp8_e4m3|fp4_e2m1; ``group`` along K (0 = per output channel;
      a last short group is its own group); ``sym`` symmetric integer codes (i4/i8, no zero).
    - ``method`` rtn | awq (int: AWQ scales + clip search; an FP format has no AWQ search and
      runs its own ``search``) | search (int: clip search; fp: LLM-FP4 clip search, and for
      fp4 the E2M1/E3M0/E1M2 format search). ``sym`` applies to the integer formats (the FP
      ones are symmetric by construction). awq / search need
      ``calibration`` (batches, Stats or a path); rtn needs none. ``grid`` AWQ's scale grid,
      ``points`` the FP clip grid, ``clip`` no_qk (AWQ: skip q/k) | all | none.
    - ``rounding`` nearest | gptq (integer formats: GPTQ's error-compensating rounding on
      the calibration Hessian XᵀX, after any AWQ scaling / clipping; ``wq_gptq.py``; same
      codes format, needs calibration).
    - ``sequential`` (default False): calibrate stage by stage in graph order (a stage = the
      linears reading one activation) on the graph whose earlier linears are already
      quantised, as GPTQ does (``wq_seq.py``): AWQ's scale search (interleaved, not run up
      front), the clip search and GPTQ see the inputs the quantised model produces. Only for
      calibrated quantisers (``method`` awq/search or ``rounding=gptq``; RTN ignores it); needs
      ``calibration`` as a list of batches (statistics are re-measured per stage). Budget
      trials and ``act_format`` statistics stay one-shot.
    - ``bias_correct`` (default None: on for the calibrated quantisers — ``method`` awq/search
      or ``rounding=gptq`` — when ``calibration`` is a list of batches): after quantising, add
      E[y_float] − E[y_quant] to each quantised linear's bias, sequentially in graph order on
      the quantised model (``wq_bias.py``); the AWQ and clip searches then score the error
      that correction leaves (the covariance instead of XᵀX). By default the result is kept
      only if the graph's outputs on the first two calibration batches are closer to the float
      model's than before the correction; otherwise the layers are quantised again without
      it (counter ``bias_correction_rejected``; the result is then a new graph: use the
      return value). True applies it unchecked, False turns it off; True with saved Stats
      instead of batches is an error.
    - ``awq_loss`` auto | block | layer: how AWQ scores a scale (``awq_scales``' ``loss``);
      auto = layer (the Gram loss) with bias correction, block without. On the real MiniLM
      (int4 g128, 48 sentences) the mean cosine was 0.9801 (layer) against 0.9793 (block)
      with the correction, and block was the better one without it.
    - ``act`` none | int8 (activations quantised per token at run time).
    - ``act_format`` None | fp8_e4m3 | fp4_e2m1: per-tensor FP activation quantisation with
      the 2^k exponent-bias reparameterisation (needs calibration; ``act_reparam=False``
      leaves it out).
    - ``overrides`` per-layer settings (:func:`parse_layer_overrides`).
    - ``budget`` average bits per weight (codes + scales + zeros) over the quantised linears:
      layers move from ``format`` up to the formats in ``mixed`` (comma list, e.g.
      "int8" or "int4,int8"; "float" allowed) by ``sensitivity`` (output | layer) per extra bit.
      Under a budget the FP4 format search leaves out E3M0, whose codes are stored in 8 bits.

    ``moe`` nodes with constant experts become ``qmoe`` (expert weights quantised like linears,
    router float; ``passes/wq_moe.py``).

    Pre: float graph; ``sequential=True`` with a calibrated quantiser needs calibration batches
    (a list), not saved Stats. Post: quantised linears replaced by qlinear, moe by qmoe; other
    ops untouched (AWQ may fold scales into producers or add a per-channel ``mul``); the
    function changes by the quantisation error only. With ``sequential``, each linear was
    quantised with the Gram matrix of the input it reads in the returned graph.
    Rules (counters): ``<format>`` per linear (``fp4_e2m1``/``fp4_e3m0``/``fp4_e1m2`` for a
    searched FP4 layer), ``clipped`` per int linear after the clip search, ``searched`` per fp
    linear searched, ``gptq`` per linear rounded by GPTQ, ``kept_float`` per linear left float, ``act_<fmt>`` per activation
    quantised, ``reparam_<k>`` per activation channel shifted by 2^k, ``mixed_<format>`` per
    layer the budget upgraded, ``moe_<format>`` per moe quantised, ``bias_corrected`` per
    linear whose bias the correction changed.
    """
    _warn_float_convs(graph)
    if not any(quantizable_linear(n) or quantizable_moe(n) for n in graph.nodes):
        # e.g. a second quant_weights, or one after w8a8: a silent no-op hides a wrong pipeline
        warnings.warn("quant_weights: the graph has no float linear or moe with constant weights "
                      "left to quantise; it is returned unchanged", stacklevel=3)
    if calibration is not None and iter_once(calibration):
        # several steps read the batches (scale search, statistics, budget trials, a second
        # attempt below): a generator would be spent after the first
        calibration = list(calibration)
    opts = dict(format=format, group=group, method=method, sym=sym, grid=grid, act=act, clip=clip,
                overrides=overrides, budget=budget, mixed=mixed, sensitivity=sensitivity, act_format=act_format,
                points=points, act_reparam=act_reparam, rounding=rounding, sequential=sequential, awq_loss=awq_loss)
    auto = bias_correct is None and (method != "rtn" or rounding == "gptq") and isinstance(calibration, (list, tuple))
    if not auto:
        return _quant_weights(graph, calibration, bias_correct=bias_correct, **opts)
    # the correction (and the covariance-scored searches that assume it) is kept only where it
    # brings the outputs closer to the float model's; otherwise quantise again without it
    orig = graph.clone()
    trial = Counters()
    with counting(trial):
        out = _quant_weights(graph, calibration, bias_correct=True, guard=True, **opts)
    if not trial[PASS].get("bias_correction_rejected"):
        bump_all(trial)
        return out
    out = _quant_weights(orig, calibration, bias_correct=False, **opts)
    bump(PASS, "bias_correction_rejected")
    return out


def _warn_float_convs(graph: Graph) -> None:
    """Warn when convolutions hold most of the constant weights: weight-only quantisation
    takes linears (and MoE experts), so a CNN would come out mostly unchanged, silently."""
    conv = sum(n.inputs[1].const.numel() for n in graph.nodes
               if n.op in ("conv", "conv_transpose") and n.inputs[1] is not None and n.inputs[1].is_const)
    if not conv:
        return
    lin = sum(n.inputs[1].const.numel() for n in graph.nodes if quantizable_linear(n))
    if conv > lin:
        warnings.warn(f"quant_weights: {conv / (conv + lin):.0%} of the graph's conv and linear weight "
                      f"elements ({conv} of {conv + lin}) are convolution weights, which stay in float "
                      f"(weight-only quantisation takes linear and MoE expert weights)", stacklevel=3)


def _quant_weights(graph: Graph, calibration: Any = None, format: str = "int4", group: int = 128,
                  method: str = "rtn", sym: bool = False, grid: int = 20, act: str = "none",
                  clip: str = "no_qk", overrides: Any = None, budget: float | None = None,
                  mixed: str = "int8", sensitivity: str = "output", act_format: str | None = None,
                  points: int = 100, act_reparam: bool = True, rounding: str = "nearest",
                  sequential: bool = False, bias_correct: bool | None = None, awq_loss: str = "auto",
                  guard: bool = False) -> Graph:
    """:func:`quant_weights` with ``bias_correct`` decided (None: as there) and, with ``guard``,
    the correction checked against the float outputs (rejected: counter
    ``bias_correction_rejected``, biases restored, searches already centred)."""
    # format names in any case, as "float" and the booleans are
    low = (lambda v: v.strip().lower() if isinstance(v, str) else v)  # noqa: E731
    format, act_format, method, act, rounding, mixed, clip, sensitivity, awq_loss = (
        low(v) for v in (format, act_format, method, act, rounding, mixed, clip, sensitivity, awq_loss))
    base = LayerSetting(format, as_int(group, "quant_weights: group", 0), method, as_bool(sym, "quant_weights: sym"))
    check_setting(base, "quant_weights")
    if base.sym and format in FP_FORMATS:
        # sym would be silently meaningless: the FP formats have no zero point to drop
        raise ScalefoldError(f"quant_weights: sym applies to the integer formats ({', '.join(INT_BITS)}); "
                             f"format={format} is symmetric by construction")
    grid = as_int(grid, "quant_weights: grid", 1)
    points = as_int(points, "quant_weights: points", 2)
    act_reparam = as_bool(act_reparam, "quant_weights: act_reparam")
    sequential = as_bool(sequential, "quant_weights: sequential")
    if budget is not None:
        try:
            ok = not isinstance(budget, bool) and isinstance(budget, (int, float)) and 0 < float(budget) < float("inf")
        except OverflowError:
            ok = False
        if not ok:
            raise ScalefoldError(f"quant_weights: budget must be a positive number of bits per weight, got {budget!r}")
    if calibration is not None and iter_once(calibration):
        # several steps below read the batches (scale search, statistics, budget trials): a
        # generator would be spent after the first and leave the later ones without data
        calibration = list(calibration)
    if rounding not in ("nearest", "gptq"):
        raise ScalefoldError(f"quant_weights: rounding must be nearest or gptq, got {rounding!r}")
    if rounding == "gptq" and format not in INT_BITS:
        raise ScalefoldError(f"quant_weights: rounding=gptq is for the integer formats "
                             f"({', '.join(INT_BITS)}), not format={format}")
    if act not in ("none", "int8"):
        raise ScalefoldError(f"quant_weights: act must be none or int8, got {act!r}")
    if clip not in ("no_qk", "all", "none"):
        raise ScalefoldError(f"quant_weights: clip must be no_qk, all or none, got {clip!r}")
    if act_format not in (None, "none", *FP_FORMATS):
        raise ScalefoldError(f"quant_weights: act_format must be fp8_e4m3 or fp4_e2m1, got {act_format!r}")
    act_format = None if act_format in (None, "none") else act_format
    if act_format and act != "none":
        raise ScalefoldError("quant_weights: act_format and act=int8 exclude each other")
    needs_cal = method != "rtn" or act_format is not None or rounding == "gptq" or \
        (budget is not None and sensitivity == "output")
    if needs_cal and calibration is None:
        raise ScalefoldError(f"quant_weights: method={method}{', rounding=gptq' if rounding == 'gptq' else ''}"
                             f"{', act_format' if act_format else ''}{', budget' if budget is not None else ''}"
                             " needs calibration data (calibration=..., or --calibration FILE on the "
                             "command line)")
    ovr = parse_layer_overrides(overrides, base)
    # the budget costs FP4 codes at 4 bits: E3M0's codes are stored in 8 (wq_fp.py), so under a
    # budget the format search leaves it out
    fp4 = tuple(k for k in FP4_FORMATS if budget is None or k != "e3m0")
    check_all_used([k for k, _ in ovr], [n for n in graph.nodes if quantizable_linear(n)],
                   [m for m in graph.nodes if m.op == "moe"], "quant_weights")
    # sequential only changes layers whose quantiser reads calibration statistics
    calibrated = method != "rtn" or rounding == "gptq"
    seq = sequential and calibrated
    have_batches = isinstance(calibration, (list, tuple))
    if bias_correct is None:
        bc = calibrated and have_batches
    else:
        bc = as_bool(bias_correct, "quant_weights: bias_correct")
        if bc and not have_batches:
            raise ScalefoldError("quant_weights: bias_correct needs calibration batches (a list), "
                                 "not saved statistics: the correction runs the quantised model")
    if act_format and method != "rtn" and calibration is not None and not have_batches:
        raise ScalefoldError(f"quant_weights: act_format={act_format} with method={method} needs calibration "
                             "batches (a list), not saved statistics: the searches score the quantised "
                             "activations, which the statistics do not describe")
    qact = "per_token" if act == "int8" else "none"
    awq_int = method == "awq" and format in INT_BITS
    if awq_loss not in ("auto", "block", "layer"):
        raise ScalefoldError(f"quant_weights: awq_loss must be auto, block or layer, got {awq_loss!r}")
    if awq_loss == "auto":
        awq_loss = "layer" if bc else "block"
    # Overrides are resolved on the graph as it came in: AWQ's rescaling gives a weight shared
    # by several linears a new, unnamed constant per use (the linear nodes themselves stay).
    pinned: set[int] = set()        # layers an override names: the budget leaves them alone
    settings: dict[int, LayerSetting | str] = {}
    for i, n in enumerate(n for n in graph.nodes if quantizable_linear(n)):
        o = override_for(n, i, ovr)
        settings[id(n)] = o or base     # type: ignore[assignment]
        if o is not None:
            pinned.add(id(n))
    # Saved statistics describe the graph as it came in: the Gram matrices of the linears'
    # inputs after AWQ's rescaling (X' = X diag(1/s)) are derived from them, not measured again.
    pre_awq: dict[int, torch.Tensor] | None = None
    applied: dict[int, torch.Tensor] = {}
    if awq_int and not seq:
        if calibration is not None and not have_batches:
            lin = [n for n in graph.nodes if quantizable_linear(n) or quantizable_moe(n)]
            xs0 = {id(n.inputs[0]): n.inputs[0] for n in lin}
            st0 = stats_for(graph, calibration, list(xs0.values()), gram=list(xs0.values()))
            pre_awq = {id(n): st0[n.inputs[0]].second_moment(centred=False) for n in lin}
        graph = run_awq(graph, calibration, bits=INT_BITS[format], group=base.group, grid=grid, sym=base.sym,
                        centred=bc, loss=awq_loss, record=applied,
                        keep_float={k for k, v in settings.items() if v == "float"})
    nodes = [n for n in graph.nodes if quantizable_linear(n)]
    for i, n in enumerate(nodes):
        if id(n) not in settings:
            settings[id(n)] = override_for(n, i, ovr) or base  # type: ignore[assignment]
    # the float outputs' means, measured before anything below quantises (bias correction)
    fmeans = float_means(graph, calibration, [n for n in nodes if settings[id(n)] != "float"]) if bc else {}
    check = OutputCheck(graph, calibration) if bc and guard else None
    grams: dict[int, torch.Tensor] = {}
    if calibration is not None and (method != "rtn" or act_format or budget is not None or rounding == "gptq"):
        xs: dict[int, Any] = {}
        for n in nodes:
            xs.setdefault(id(n.inputs[0]), n.inputs[0])
        if pre_awq is not None:
            for n in nodes:
                grams[id(n.inputs[0])] = _rescaled(pre_awq[id(n)], applied.get(id(n)))
        else:
            st = stats_for(graph, calibration, list(xs.values()), gram=list(xs.values()))
            for key, v in xs.items():
                grams[key] = st[v].second_moment(centred=bc and st[v].sum is not None)
    # the activation ranges act_format needs, measured before the moe rewrite changes the
    # graph that saved calibration stats describe
    act_amax = None
    if act_format:
        from .wq_act import activation_absmax
        act_amax = activation_absmax(graph, [n for n in nodes if settings[id(n)] != "float"], calibration)
    # moe experts -> qmoe (wq_moe.py), before any rewrite below changes the graph that saved
    # calibration stats describe
    if not seq:
        moe_g = None if pre_awq is None else {
            k: _rescaled(g0, applied.get(k)).to(torch.float32) for k, g0 in pre_awq.items()}
        by_node = {id(n): grams.get(id(n.inputs[0])) for n in nodes}
        quantize_moes(graph, base, ovr, calibration, points, grams=moe_g)
        # a linear reading a moe output now reads the qmoe's: the Gram matrices follow the
        # linears' inputs (keyed by the old Value they were silently lost)
        grams = {id(n.inputs[0]): g0 for n in nodes if (g0 := by_node[id(n)]) is not None}
    no_clip = qk_linears(graph) if clip == "no_qk" else set()
    if budget is not None:
        from .wq_mixed import assign_budget
        # trials quantise weights only (act="none"): the sensitivity of the weights' format
        settings = assign_budget(
            graph, nodes, base, settings, budget, mixed, sensitivity, calibration, grams,
            lambda g, n, s, orig: _quantize_one(g, n, s, grams.get(id(orig.inputs[0])),
                                                clip != "none" and id(orig) not in no_clip, "none", points,
                                                rounding, fp4=fp4), pinned)
    if act_format:
        from .wq_act import quantize_activations
        quantize_activations(graph, [n for n in nodes if settings[id(n)] != "float"], act_format, calibration,
                             act_reparam, act_amax)
        # the consumers now read the fake-quantised, shifted activation: searches score on its Gram
        grams = {}
        if method != "rtn":
            xs = {id(n.inputs[0]): n.inputs[0] for n in nodes if settings[id(n)] != "float"}
            st = stats_for(graph, calibration, list(xs.values()), gram=list(xs.values()))
            grams = {k: st[v].second_moment(centred=bc and st[v].sum is not None) for k, v in xs.items()}
    made: list[tuple[Node, torch.Tensor]] = []     # (new qlinear, float output mean)

    def replaced(n: Node, run: Any) -> None:
        # the qlinear takes the linear's place in the node list
        at = graph.nodes.index(n)
        run()
        if id(n) in fmeans:
            made.append((graph.nodes[at], fmeans[id(n)]))

    if seq:
        # a weight read by several linears is quantised at its first stage and shared after
        seq_cache: dict = {}

        def quantize(n: Node, s: LayerSetting, gram: torch.Tensor) -> None:
            replaced(n, lambda: bump(PASS, _quantize_one(graph, n, s, gram, clip != "none" and id(n) not in no_clip,
                                                         qact, points, rounding, seq_cache, fp4)))
        for n in nodes:
            if settings[id(n)] == "float":
                bump(PASS, "kept_float")
        run_sequential(graph, nodes, settings, calibration, quantize,
                       (INT_BITS[format], base.group, grid, base.sym) if awq_int else None, centred=bc,
                       block_loss=awq_loss == "block")
        quantize_moes(graph, base, ovr, calibration, points)
        _bias_correct(graph, made, calibration, check)
        return graph
    # looked up before any replacement: a linear reading another one's output would otherwise
    # read the new qlinear's output Value, which has no Gram entry
    node_gram = {id(n): grams.get(id(n.inputs[0])) for n in nodes}
    # linears sharing one weight constant (tied or reused layers) under one setting are
    # quantised once, on the mean of their inputs' Gram matrices, and share the codes
    tied: dict[tuple[int, LayerSetting], list[Node]] = {}
    for n in nodes:
        if isinstance(settings[id(n)], LayerSetting):
            tied.setdefault((id(n.inputs[1]), settings[id(n)]), []).append(n)  # type: ignore[arg-type]
    for grp in tied.values():
        gs = [node_gram[id(n)] for n in grp]
        if len(grp) > 1 and all(g is not None for g in gs):
            mean = torch.stack(gs).mean(0)  # type: ignore[arg-type]
            node_gram.update({id(n): mean for n in grp})
    cache: dict = {}
    for n in nodes:
        s = settings[id(n)]
        if s == "float":
            bump(PASS, "kept_float")
            continue
        assert isinstance(s, LayerSetting)
        replaced(n, lambda: bump(PASS, _quantize_one(graph, n, s, node_gram[id(n)],
                                                     clip != "none" and id(n) not in no_clip, qact, points,
                                                     rounding, cache, fp4)))
    _bias_correct(graph, made, calibration, check)
    return graph


def _bias_correct(graph: Graph, made: list[tuple[Node, torch.Tensor]], calibration: Any,
                  check: "OutputCheck | None") -> None:
    """Correct the biases of ``made``; keep the correction only if the graph's outputs on the
    first calibration batches moved closer to the float model's (it did not for int3 on
    MiniLM, where a few tokens' large errors dominate the means)."""
    if not made:
        return
    made.sort(key=lambda t: graph.nodes.index(t[0]))
    before = check.error(graph) if check is not None else None
    old = correct_biases(graph, made, calibration)
    if check is not None and before is not None and check.error(graph) > before:
        restore_biases(graph, old)
        bump(PASS, "bias_correction_rejected")
        return
    bump(PASS, "bias_corrected", len(old))


__all__ = ["FORMATS", "LayerSetting", "parse_layer_overrides", "qk_linears", "quant_weights"]
