"""Fold constant per-channel scales into conv/linear weights (DESIGN.md §4 family 1,
ALGORITHMS.md §0 and §8). Both passes are exact in float: only the rounding of one product
per weight changes. Factors are computed in float64 and rounded once to the weight dtype.

The pass docstrings list their rules, preconditions (each failure is a traceable near-miss,
``SCALEFOLD_TRACE_RULES=1``) and postconditions.
"""
from __future__ import annotations

import torch

from ..ir import dtypes as dt
from ..ir.graph import Graph, Node, Value
from ..ir.types import TensorType
from .pipeline import register_pass
from .rewrite import CONST, Match, Pattern, Rule, apply_rules, remove_if_dead, single_reader

_WEIGHTED = ("conv", "conv_transpose", "linear")


def _const(v: Value | None) -> torch.Tensor | None:
    return None if v is None else dt.to_real(v.const, v.dtype, torch.float64)


def _new_const(t64: torch.Tensor, dtype: dt.DType) -> Value:
    """A constant of float ``dtype`` from float64 data (one rounding)."""
    t = dt.to_container(t64, dtype).contiguous()
    return Value(TensorType(dtype, tuple(t.shape)), const=t)


def _out_factor(op: str, w: torch.Tensor, f: torch.Tensor, groups: int) -> torch.Tensor:
    """``f`` over output channels, shaped to multiply ``w`` elementwise."""
    tail = (1,) * (w.dim() - 2)
    if op == "conv_transpose":
        cin, per = w.shape[0], w.shape[1]  # w: [C, Cout/g, k...]
        grp = torch.arange(cin) // (cin // groups)
        return f.reshape(groups, per)[grp].reshape(cin, per, *tail)
    return f.reshape(-1, *((1,) * (w.dim() - 1)))  # conv [Cout, C/g, k...] and linear [N, K]


def _in_factor(op: str, w: torch.Tensor, f: torch.Tensor, groups: int) -> torch.Tensor:
    """``f`` over input channels, shaped to multiply ``w`` elementwise."""
    if op == "linear":
        return f.reshape(1, -1)
    tail = (1,) * (w.dim() - 2)
    if op == "conv_transpose":
        return f.reshape(-1, 1, *tail)  # w: [C, Cout/g, k...]
    cout, per = w.shape[0], w.shape[1]  # w: [Cout, C/g, k...]
    grp = torch.arange(cout) // (cout // groups)
    return f.reshape(groups, per)[grp].reshape(cout, per, *tail)


def _weights_reason(p: Node) -> str | None:
    w = p.inputs[1]
    b = p.inputs[2] if len(p.inputs) > 2 else None
    if w is None or not w.is_const:
        return f"the {p.op} weight is not a constant"
    if b is not None and not b.is_const:
        return f"the {p.op} bias is not a constant"
    if not w.dtype.is_float:
        return f"the {p.op} weight is {w.dtype.name}, not a float"
    return None


def _replace_weighted(graph: Graph, p: Node, anchor: Node, w: torch.Tensor,
                      b: torch.Tensor | None, old_out: Value) -> None:
    """A copy of ``p`` with weight ``w`` and bias ``b`` placed before ``anchor``; readers of
    ``old_out`` move to it; dead nodes are dropped."""
    wv = p.inputs[1]
    assert wv is not None
    new_b = None if b is None else _new_const(b, wv.dtype)
    new = graph.create_node(p.op, [p.inputs[0], _new_const(w, wv.dtype), new_b], p.attrs, name=p.name)
    graph.insert_before(anchor, new)
    graph.replace_all_uses(old_out, new.output)
    remove_if_dead(graph, anchor)
    remove_if_dead(graph, p)


# ---- fold_batchnorm ------------------------------------------------------------------------

def _var_reason(bn: Node) -> str | None:
    var = _const(bn.inputs[4])
    if var is None or not bool((var + bn.attrs["eps"] > 0).all()):
        return "var + eps is not positive everywhere"
    return None


def _bn_folded(bn: Node, p: Node) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, s, (b - μ)·s + β) in float64: P's weight, the BN's per-channel factor s = γ/√(σ²+eps)
    and P's new bias."""
    gamma, beta, mean, var = (_const(bn.inputs[i]) for i in range(1, 5))
    s = gamma / torch.sqrt(var + bn.attrs["eps"])  # type: ignore[operator]
    w = _const(p.inputs[1])
    assert w is not None
    b = _const(p.inputs[2]) if len(p.inputs) > 2 else None
    b0 = b if b is not None else torch.zeros_like(s)
    return w, s, (b0 - mean) * s + beta  # type: ignore[operator]


def _bn_check(m: Match) -> str | None:
    bn, p = m.node, m.producer(0)
    why = _weights_reason(p)
    if why:
        return why
    alone = single_reader(p.output, bn.graph)  # type: ignore[arg-type]
    if alone:
        return f"the {p.op} output {alone}"
    if p.op == "linear" and len(p.output.shape) != 2:
        return (f"batch_norm normalises dim 1 but the linear output has rank "
                f"{len(p.output.shape)} (features on the last dim)")
    return _var_reason(bn)


def _bn_rewrite(graph: Graph, m: Match) -> bool:
    bn, p = m.node, m.producer(0)
    w, s, new_b = _bn_folded(bn, p)
    groups = int(p.attrs.get("groups", 1))
    _replace_weighted(graph, p, bn, w * _out_factor(p.op, w, s, groups), new_b, bn.output)
    return True


def _bn_rows_check(m: Match) -> str | None:
    bn, r = m.node, m.producer(0)
    p = m.sub[0].producer(0)
    why = _weights_reason(p)
    if why:
        return why
    for v, what in ((p.output, "linear"), (r.output, "reshape")):
        alone = single_reader(v, bn.graph)  # type: ignore[arg-type]
        if alone:
            return f"the {what} output {alone}"
    if len(r.output.shape) != 2 or r.output.shape[-1] != p.output.shape[-1]:
        return (f"the reshape between linear and batch_norm gives {r.output.shape}, not the "
                f"linear's rows [*, {p.output.shape[-1]}]")
    return _var_reason(bn)


def _bn_rows_rewrite(graph: Graph, m: Match) -> bool:
    bn, r = m.node, m.producer(0)
    p = m.sub[0].producer(0)
    w, s, new_b = _bn_folded(bn, p)
    wv = p.inputs[1]
    assert wv is not None
    new = graph.create_node("linear", [p.inputs[0], _new_const(w * s.reshape(-1, 1), wv.dtype),
                                       _new_const(new_b, wv.dtype)], p.attrs, name=p.name)
    graph.insert_before(r, new)
    graph.replace_all_uses(p.output, new.output)
    graph.replace_all_uses(bn.output, r.output)
    remove_if_dead(graph, bn)
    remove_if_dead(graph, p)
    return True


BN_RULES = [Rule(op, Pattern("batch_norm", {0: op, 1: CONST, 2: CONST, 3: CONST, 4: CONST}),
                 _bn_rewrite, _bn_check) for op in _WEIGHTED] + [
    Rule("linear_rows", Pattern("batch_norm", {0: Pattern("reshape", {0: "linear"}), 1: CONST, 2: CONST,
                                               3: CONST, 4: CONST}), _bn_rows_rewrite, _bn_rows_check)]


def _affine_check(m: Match) -> str | None:
    bn = m.node
    x = bn.inputs[0]
    assert x is not None
    if x.dtype.name not in ("f32", "f64"):
        # a bfloat16 / float16 batch norm computes in float32 inside torch's kernel; a mul and
        # an add in x's dtype would round twice more
        return f"x is {x.dtype.name}, not f32 / f64"
    if x.type.rank < 2:
        return f"x has rank {x.type.rank} (no channel dim)"
    if any(v is None or v.dtype is not x.dtype for v in bn.inputs[1:5]):
        return "the parameters' dtype is not x's"
    return _var_reason(bn)


def _affine_rewrite(graph: Graph, m: Match) -> bool:
    bn = m.node
    x = bn.inputs[0]
    assert x is not None
    gamma, beta, mean, var = (_const(bn.inputs[i]) for i in range(1, 5))
    s = gamma / torch.sqrt(var + bn.attrs["eps"])  # type: ignore[operator]
    t = beta - mean * s  # type: ignore[operator]
    shape = (1, -1) + (1,) * (x.type.rank - 2)
    scaled = graph.create_node("mul", [x, _new_const(s.reshape(shape), x.dtype)])
    graph.insert_before(bn, scaled)
    shifted = graph.create_node("add", [scaled.output, _new_const(t.reshape(shape), x.dtype)], name=bn.name)
    graph.insert_before(bn, shifted)
    graph.replace_all_uses(bn.output, shifted.output)
    remove_if_dead(graph, bn)
    return True


# after the folds: what is left of each batch norm is its per-channel affine map
AFFINE_RULES = [Rule("affine", Pattern("batch_norm", {1: CONST, 2: CONST, 3: CONST, 4: CONST}),
                     _affine_rewrite, _affine_check)]


@register_pass("fold_batchnorm")
def fold_batchnorm(graph: Graph) -> Graph:
    """Fold inference BatchNorm into the preceding conv / conv_transpose / linear.

    Rules ``conv``, ``conv_transpose``, ``linear``: ``batch_norm(P(x, W, b), γ, β, μ, σ²)``
    with P one of those ops becomes ``P(x, W·s, (b-μ)·s + β)``, s = γ/√(σ²+eps), scaling
    P's *output* channels (conv: W[o]; grouped conv_transpose: W[c, j] for o = group(c)·Cout/g + j;
    linear: W[o, :]). A missing bias becomes one.
    Rule ``linear_rows``: ``batch_norm(reshape(linear(x, W, b)) -> [M, N])``, the rows of a
    linear flattened for a BatchNorm1d (timm's LeViT ``LinearNorm``), folds the same way into
    the linear; the reshape stays and the BN goes.
    Preconditions (each failure is a near-miss with its reason): W, b and the four BN operands
    are constants; P's output is read only by the BN and is not a graph output; for ``linear``
    the output has rank 2 (BN normalises dim 1, the linear's features are on the last dim);
    σ²+eps > 0 everywhere.
    Postconditions: the BN and the old P are gone; readers of the BN read the new P (or, for
    ``linear_rows``, the reshape of it), whose output type is the BN's. ``linear_rows`` also
    needs the linear's and the reshape's outputs read only by the next node, and the reshape's
    output [M, N] with the linear's N (so each row is a row of the linear).
    Rule ``affine`` (after the others have run to a fixpoint): a batch norm none of them
    folds (after a concat or an add, with a second reader of the conv, or ahead of its conv as
    in pre-activation networks) becomes ``x · s + (β - μ·s)`` (a ``mul`` and an ``add`` by
    constants of shape [1, C, 1, ...]), the form torch's inference kernel computes, which the
    code generators fuse with the ops around it. Preconditions: x is f32 or f64 with rank >= 2,
    the four parameters constants of x's dtype, σ²+eps > 0. Postcondition: no batch norm with
    constant parameters on such an x is left.
    """
    apply_rules(graph, BN_RULES, "fold_batchnorm")
    apply_rules(graph, AFFINE_RULES, "fold_batchnorm")
    return graph


# ---- fold_constant_scales -------------------------------------------------------------------

def _channel_factor(c: Value, t: Value, axis: int) -> torch.Tensor | str:
    """``c`` as a per-channel vector over ``t``'s dim ``axis`` (length 1 for a scalar), or why not."""
    rank = len(t.shape)
    cs = tuple(c.shape)
    if len(cs) > rank:
        return f"the constant of shape {list(cs)} has a higher rank than the tensor"
    for k, d in enumerate(cs):
        pos = rank - len(cs) + k
        if d != 1 and pos != axis:
            return f"the constant of shape {list(cs)} is not a scalar or per-channel factor"
    f = _const(c)
    assert f is not None
    return f.reshape(-1)


def _factor_reason(f: torch.Tensor | str, divide: bool) -> str | None:
    if isinstance(f, str):
        return f
    if not bool(torch.isfinite(f).all()):
        return "the scale is not finite"
    if divide and bool((f == 0).any()):
        return "the divisor has zeros"
    if bool((f == 1).all()):
        return "the scale is 1 (remove_identities drops it)"
    return None


def _after_factor(m: Match) -> torch.Tensor | str:
    p = m.producer(0)
    axis = 1 if p.op != "linear" else len(p.output.shape) - 1
    return _channel_factor(m.inputs[1], p.output, axis)  # type: ignore[arg-type]


def _after_check(m: Match) -> str | None:
    p = m.producer(0)
    why = _weights_reason(p)
    if why:
        return why
    alone = single_reader(p.output, m.node.graph)  # type: ignore[arg-type]
    if alone:
        return f"the {p.op} output {alone}"
    if m.node.output.type != p.output.type:
        return "the constant broadcasts the output to a larger shape"
    return _factor_reason(_after_factor(m), m.node.op == "div")


def _after_rewrite(graph: Graph, m: Match) -> bool:
    p = m.producer(0)
    f = _after_factor(m)
    assert isinstance(f, torch.Tensor)
    if m.node.op == "div":
        f = 1.0 / f
    w = _const(p.inputs[1])
    assert w is not None
    cout = p.output.shape[1] if p.op != "linear" else p.output.shape[-1]
    f = f.expand(int(cout)) if f.numel() == 1 else f
    b = _const(p.inputs[2]) if len(p.inputs) > 2 else None
    groups = int(p.attrs.get("groups", 1))
    _replace_weighted(graph, p, m.node, w * _out_factor(p.op, w, f, groups),
                      None if b is None else b * f, m.node.output)
    return True


def _reader(m: Match) -> Node | None:
    uses = m.node.output.uses
    if len(uses) == 1 and uses[0][1] == 0 and uses[0][0].op in _WEIGHTED:
        return uses[0][0]
    return None


def _before_factor(m: Match, q: Node) -> torch.Tensor | str:
    x = m.inputs[0]
    assert x is not None
    axis = 1 if q.op != "linear" else len(x.shape) - 1
    return _channel_factor(m.inputs[1], x, axis)  # type: ignore[arg-type]


def _before_check(m: Match) -> str | None:
    graph = m.node.graph
    alone = single_reader(m.node.output, graph)  # type: ignore[arg-type]
    if alone:
        return f"the scaled tensor {alone}"
    q = _reader(m)
    if q is None:
        u, i = m.node.output.uses[0]
        return f"the scaled tensor is read by {u.op} (operand {i}), not as a conv/linear input"
    why = _weights_reason(q)
    if why:
        return why
    x = m.inputs[0]
    if x is None or m.node.output.type != x.type:
        return "the constant broadcasts the tensor to a larger shape"
    return _factor_reason(_before_factor(m, q), False)


def _before_rewrite(graph: Graph, m: Match) -> bool:
    q = _reader(m)
    assert q is not None
    f = _before_factor(m, q)
    assert isinstance(f, torch.Tensor)
    w = _const(q.inputs[1])
    assert w is not None
    groups = int(q.attrs.get("groups", 1))
    cin = w.shape[1] * groups if q.op == "conv" else (w.shape[0] if q.op == "conv_transpose" else w.shape[1])
    f = f.expand(cin) if f.numel() == 1 else f
    b = _const(q.inputs[2]) if len(q.inputs) > 2 else None
    new = graph.create_node(q.op, [m.inputs[0], _new_const(w * _in_factor(q.op, w, f, groups), q.inputs[1].dtype),  # type: ignore[union-attr]
                                   None if b is None else q.inputs[2]], q.attrs, name=q.name)
    graph.insert_before(q, new)
    graph.replace_all_uses(q.output, new.output)
    graph.remove(q)
    remove_if_dead(graph, m.node)
    return True


SCALE_RULES = [
    Rule("mul_after", Pattern("mul", {0: _WEIGHTED, 1: CONST}, commutative=True),
         _after_rewrite, _after_check),
    Rule("div_after", Pattern("div", {0: _WEIGHTED, 1: CONST}), _after_rewrite, _after_check),
    Rule("mul_before", Pattern("mul", {1: CONST}, commutative=True), _before_rewrite, _before_check),
]


@register_pass("fold_constant_scales")
def fold_constant_scales(graph: Graph) -> Graph:
    """Fold constant scalar / per-channel multiplies and divides into adjacent conv/linear weights.

    Rules ``mul_after``/``div_after``: ``P(x, W, b) * c`` (either operand order) or
    ``P(x, W, b) / c``, c a constant scalar or per-output-channel factor (every dim of c is 1
    except P's channel dim -- dim 1 for conv/conv_transpose, the last for linear), becomes
    ``P(x, W·c, b·c)``: the Inception-ResNet residual scale ``conv → ×0.17 → + x`` and ViT
    LayerScale ``linear → ×γ[C]``. Rule ``mul_before``: ``Q(x * c, W, b)``, c a constant
    scalar or per-input-channel factor of x (dim 1 for conv/conv_transpose, the last for
    linear), becomes ``Q(x, W·c along input channels, b)`` -- exact also with zero padding.
    Preconditions: W (and b) constant; c finite (and without zeros for ``div``); the scaled
    tensor (P's output, resp. the mul's output) has the mul (resp. Q's x operand) as its only
    reader and is not a graph output; the multiply does not broadcast to a larger shape;
    c is not all ones (``remove_identities`` drops that, and counting it would be a no-op fold).
    Postconditions: the mul/div is gone; the folded op's output type is unchanged.
    """
    apply_rules(graph, SCALE_RULES, "fold_constant_scales")
    return graph


__all__ = ["fold_batchnorm", "fold_constant_scales", "BN_RULES", "SCALE_RULES"]
