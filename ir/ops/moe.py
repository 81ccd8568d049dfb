"""The mixture-of-experts op ``moe`` (family "moe"): router, top-k, experts, weighted sum.

The reference is the per-expert dispatch loop (gather the tokens routed to an expert, run the
expert once on them, scale by the routing weight, ``index_add`` back), which is what fused
dropless kernels compute; it equals the naive per-token loop up to summation order.
"""
from __future__ import annotations

from typing import Sequence

import sympy
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, dims_equal
from .common import check_dim, require, same_dtype
from .lowrank import ACTIVATIONS, apply_activation
from .quant import compute_dtype, require_real, shape_str, tokens
from .registry import AttrSpec, Cost, defop, io_bytes


def _moe_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, router = require(ins[0], "x"), require(ins[1], "router_w")
    gate, up, down = ins[2], require(ins[3], "w_up"), require(ins[4], "w_down")
    rbias = ins[5] if len(ins) > 5 else None
    require_real(x, "x")
    if x.rank < 1:
        raise ShapeError("x must have rank >= 1 ([..., H])")
    h = x.shape[-1]
    if router.rank != 2:
        raise ShapeError(f"router_w must be [E, H], got {shape_str(router.shape)}")
    e = router.shape[0]
    check_dim(router.shape[1], h, "router_w.shape[1] vs hidden size")
    if up.rank != 3:
        raise ShapeError(f"w_up must be [E, F, H], got {shape_str(up.shape)}")
    check_dim(up.shape[0], e, "w_up experts vs router experts")
    check_dim(up.shape[2], h, "w_up.shape[2] vs hidden size")
    f = up.shape[1]
    if attrs["gated"]:
        if gate is None:
            raise ShapeError("gated=true needs w_gate")
        if gate.rank != 3 or not all(dims_equal(a, b) for a, b in zip(gate.shape, up.shape)):
            raise ShapeError(f"w_gate shape {shape_str(gate.shape)} != w_up shape {shape_str(up.shape)}")
    elif gate is not None:
        raise ShapeError("gated=false takes no w_gate (pass None)")
    if down.rank != 3:
        raise ShapeError(f"w_down must be [E, H, F], got {shape_str(down.shape)}")
    check_dim(down.shape[0], e, "w_down experts vs router experts")
    check_dim(down.shape[1], h, "w_down.shape[1] vs hidden size")
    check_dim(down.shape[2], f, "w_down.shape[2] vs w_up.shape[1] (F)")
    same_dtype([x, router, gate, up, down], "x, router_w and expert weights")
    if rbias is not None:
        require_real(rbias, "router_bias")
        if rbias.rank != 1:
            raise ShapeError(f"router_bias must be [E], got {shape_str(rbias.shape)}")
        check_dim(rbias.shape[0], e, "router_bias length vs experts")
    k = attrs["top_k"]
    if k < 1 or (isinstance(e, int) and k > e):
        raise ShapeError(f"top_k must be in 1..{e}, got {k}")
    return [TensorType(x.dtype, x.shape)]


def route(x2: torch.Tensor, router_w: torch.Tensor, router_bias: torch.Tensor | None,
          top_k: int, normalize: bool, scoring: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing of tokens x2 [T, H]: (expert ids [T, k], weights [T, k] in the compute dtype).

    Logits are formed in x's own dtype (as Mixtral's F.linear does, so that the choice is
    bit-identical to the source model), then widened to float32 (float64 for f64 x) where the
    bias is added and the scores are taken."""
    cd = compute_dtype(x2)
    logits = F.linear(x2, router_w).to(cd)
    if router_bias is not None:
        logits = logits + router_bias.to(cd)
    p = torch.softmax(logits, dim=-1) if scoring == "softmax" else torch.sigmoid(logits)
    # torch.topk, as the HF routers call it: equal scores (common with bf16 logits) then pick
    # the experts the source model picks; its tie order is not the lower index first on the CPU
    order = torch.topk(p, top_k, dim=-1).indices
    w = p.gather(1, order)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return order, w


def expert_forward(xe: torch.Tensor, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor,
                   activation: str) -> torch.Tensor:
    """One expert on rows xe [n, H]: down @ (act(gate @ x) * (up @ x)), or down @ act(up @ x)."""
    hu = xe @ up.T
    hid = apply_activation(xe @ gate.T, activation) * hu if gate is not None \
        else apply_activation(hu, activation)
    return hid @ down.T


def _moe_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, router_w, w_gate, w_up, w_down = ins[:5]
    rbias = ins[5] if len(ins) > 5 else None
    hdim = x.shape[-1]
    x2 = x.reshape(-1, hdim)
    ids, weights = route(x2, router_w, rbias, attrs["top_k"], attrs["normalize"], attrs["scoring"])
    cd = weights.dtype
    xc = x2.to(cd)
    out = torch.zeros_like(xc)
    for e in range(router_w.shape[0]):
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        ye = expert_forward(xc[tok], None if w_gate is None else w_gate[e].to(cd),
                            w_up[e].to(cd), w_down[e].to(cd), attrs["activation"])
        out.index_add_(0, tok, ye * weights[tok, slot].unsqueeze(1))
    return out.to(x.dtype).reshape(x.shape)


def _moe_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    x, router, gate, up, down = ins[:5]
    rbias = ins[5] if len(ins) > 5 else None
    t = tokens(x)
    e, h = (sympy.sympify(d) for d in router.shape)
    f = sympy.sympify(up.shape[1])
    k = attrs["top_k"]
    n_mats = 3 if gate is not None else 2
    flops = (2 * t * e * h + 4 * t * e                      # router GEMM, scoring and top-k
             + t * k * (2 * n_mats * h * f + 8 * f + 2 * h))  # experts, activation, weighted sum
    expert_bytes = sum((w.nbytes() for w in (gate, up, down) if w is not None), sympy.Integer(0))
    # At most min(E, T*k) experts are touched, each read once.
    byts = io_bytes([x, router, rbias], outs) + expert_bytes * sympy.Min(e, t * k) / e
    return Cost(flops, byts)


defop("moe", family="moe", inputs=(5, 6),
      input_names=("x", "router_w", "w_gate", "w_up", "w_down", "router_bias"),
      shape=_moe_shape, reference=_moe_ref, cost=_moe_cost,
      attrs={"top_k": AttrSpec("int"), "normalize": AttrSpec("bool", True),
             "activation": AttrSpec("str", "silu", ACTIVATIONS), "gated": AttrSpec("bool", True),
             "scoring": AttrSpec("str", "softmax", ("softmax", "sigmoid"))},
      doc="moe(x, router_w, w_gate, w_up, w_down, router_bias?)[top_k, normalize, activation, "
          "gated, scoring] -> x's dtype and shape. x is [..., H], its leading dims flattened to T "
          "tokens. Router: logits l = x @ router_w^T ([E, H] weight; formed in x's dtype like "
          "Mixtral's F.linear), widened to float32 (float64 for f64 x), plus router_bias, an "
          "optional runtime [E] input (Rewiring Experts' additive router adaptation) that shifts "
          "the logits for both selection and weighting. Scores p = softmax(l) over the E experts "
          "('softmax') or sigmoid(l) ('sigmoid'). The top_k experts by p are chosen by torch.topk "
          "(equal scores: as torch.topk breaks them, which the source model's router also calls; "
          "ONNX TopK takes the lower index); their weights are p[chosen], divided by their sum "
          "if normalize. Experts: w_gate [E, F, H], w_up [E, F, H], w_down [E, H, F]; "
          "expert_e(x) = w_down_e @ (act(w_gate_e @ x) * (w_up_e @ x)) when gated, else "
          "w_down_e @ act(w_up_e @ x) with w_gate None; act is silu, gelu, gelu_tanh or relu. "
          "y = sum over chosen e of weight_e * expert_e(x), computed in the widened dtype (a "
          "per-expert gather / index_add loop, dropless) and rounded once to x's dtype. All "
          "weights share x's dtype.")
