"""Recognise mixture-of-experts blocks in a torch model and export each as one ``scalefold::moe``.

Hugging Face MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, ...) dispatch tokens to experts
with data-dependent code (one_hot / nonzero / index_add loops, or histc + sort + grouped_mm)
that torch.export traces op by op and the frontend cannot convert. While a model is exported,
:func:`moe_blocks_swapped` replaces every recognised block by a :class:`MoeBlock` whose
forward calls the custom op with the block's expert weights in the IR layout, and runs the
parts outside the routed experts (a shared expert and its sigmoid gate) as ordinary torch code.

Recognition is structural (duck typing), then numerical: a module qualifies when it has a
router (``gate`` / ``router`` with an [E, H] ``weight``), an ``experts`` child holding either
stacked ``gate_up_proj`` / ``up_proj`` and ``down_proj`` tensors (transformers 5) or a list of
per-expert MLPs (``gate_proj``/``up_proj``/``down_proj`` or ``w1``/``w3``/``w2``), and a top-k.
The routing and activation attributes are then *chosen by running* the original block and
the candidate replacement on a small random input: only a candidate that reproduces the block
(scoring, renormalisation, activation, shared expert, extra outputs) replaces it. A block that
looks like an MoE but matches no candidate (an activation or routing rule the IR lacks) is
left to ordinary tracing with a warning.
"""
from __future__ import annotations

import itertools
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ir.ops.lowrank import ACTIVATIONS
from . import moe_op  # noqa: F401  (registers torch.ops.scalefold.moe)

__all__ = ["MoeBlock", "moe_blocks_swapped", "recognise"]

_ROUTER_NAMES = ("gate", "router")
_SHARED_NAMES = ("shared_expert", "shared_experts")
_SHARED_GATE_NAMES = ("shared_expert_gate",)
# Per-expert MLP projection names: (gate, up, down).
_MLP_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))
# silu first: the common case wins a tie (a probe where the activation does not matter).
_ACT_ORDER = ("silu",) + tuple(a for a in ACTIVATIONS if a != "silu")
_PROBE_TOKENS = (4, 16)   # 64 tokens: routing quirks that move few tokens still show


@dataclass
class _Weights:
    """Expert weights in the IR layout: w_gate / w_up [E, F, H] (w_gate None if ungated), w_down [E, H, F]."""
    w_gate: torch.Tensor | None
    w_up: torch.Tensor
    w_down: torch.Tensor


class _Experts(nn.Module):
    """Holds the expert tensors so they export as constants named ``<block>.experts.<name>``."""

    def __init__(self, w: _Weights) -> None:
        super().__init__()
        for name, t in (("gate_proj", w.w_gate), ("up_proj", w.w_up), ("down_proj", w.w_down)):
            if isinstance(t, nn.Parameter):
                self.register_parameter(name, t)  # the user's own tensor, not a copy
            else:
                self.register_buffer(name, None if t is None else t.detach(), persistent=False)


class MoeBlock(nn.Module):
    """Stand-in for a recognised MoE block: routed experts as one ``scalefold::moe`` call, plus
    the block's shared expert (``shared(x) * sigmoid(shared_gate(x))``) as ordinary modules."""

    def __init__(self, router_name: str, router: nn.Module, weights: _Weights, top_k: int,
                 shared: tuple[str, nn.Module] | None, shared_gate: tuple[str, nn.Module] | None) -> None:
        super().__init__()
        # Children keep the original attribute names, so their weights keep their FQNs.
        self.router_name = router_name
        self.add_module(router_name, router)
        self.experts = _Experts(weights)
        self.shared_name = shared[0] if shared else None
        if shared:
            self.add_module(*shared)
        self.shared_gate_name = shared_gate[0] if shared_gate else None
        if shared_gate:
            self.add_module(*shared_gate)
        self.top_k = top_k
        self.normalize, self.activation, self.scoring = True, "silu", "softmax"
        self.returns_logits = False

    def _router_wb(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        r = getattr(self, self.router_name)
        b = getattr(r, "bias", None)
        return r.weight, b if isinstance(b, torch.Tensor) else None

    def forward(self, hidden_states: torch.Tensor) -> Any:
        w, b = self._router_wb()
        ex = self.experts
        y = torch.ops.scalefold.moe(hidden_states, w, ex.gate_proj, ex.up_proj, ex.down_proj, b,
                                    self.top_k, self.normalize, self.activation, self.scoring)
        x2 = hidden_states.reshape(-1, hidden_states.shape[-1])
        if self.shared_name is not None:
            s = getattr(self, self.shared_name)(x2)
            if self.shared_gate_name is not None:
                s = torch.sigmoid(getattr(self, self.shared_gate_name)(x2)) * s
            y = y + s.reshape(y.shape)
        router = getattr(self, self.router_name)
        if router._forward_hooks or router._forward_pre_hooks:
            # Output recorders (transformers' output_router_logits) hook the router module; call
            # it so they fire. Its own routing ops are dead code unless a hook's output is used.
            router(x2)
        if self.returns_logits:
            return y, F.linear(x2, w, b)
        return y


# ---- structure --------------------------------------------------------------------------------


def _child(m: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for n in names:
        c = getattr(m, n, None)
        if isinstance(c, nn.Module):
            return n, c
    return None


def _tensor(m: nn.Module, name: str, rank: int) -> torch.Tensor | None:
    t = getattr(m, name, None)
    return t if isinstance(t, torch.Tensor) and t.dim() == rank else None


def _stacked_weights(ex: nn.Module, e: int, h: int) -> _Weights | None:
    """transformers 5 layout: ``gate_up_proj`` [E, 2F, H] ([gate; up], or interleaved when
    ``is_concatenated`` is false) or ``up_proj`` [E, F, H], and ``down_proj`` [E, H, F]; all
    transposed when ``is_transposed``. Expert biases and post-expert norms have no IR form."""
    if getattr(ex, "has_bias", False) or getattr(ex, "has_post_expert_norm", False):
        return None
    down = _tensor(ex, "down_proj", 3)
    gu, up = _tensor(ex, "gate_up_proj", 3), _tensor(ex, "up_proj", 3)
    if down is None or (gu is None and up is None):
        return None
    src = gu if gu is not None else up
    transposed = getattr(ex, "is_transposed", None)
    if transposed is None:
        transposed = src.shape[2] != h
    if transposed:
        src, down = src.transpose(1, 2), down.transpose(1, 2)
    if src.shape[0] != e or src.shape[2] != h or down.shape[0] != e or down.shape[1] != h:
        return None
    if gu is None:
        return _Weights(None, src, down)
    f = src.shape[1] // 2
    if getattr(ex, "is_concatenated", True):
        gate, up = src[:, :f], src[:, f:]
    else:
        gate, up = src[:, 0::2], src[:, 1::2]
    return _Weights(gate, up, down) if down.shape[2] == f else None


def _listed_weights(ex: nn.Module, e: int, h: int) -> _Weights | None:
    """A ModuleList of E bias-free gated MLPs (``gate_proj``/``up_proj``/``down_proj`` or
    Mixtral 4.x's ``w1``/``w3``/``w2``), stacked into new tensors."""
    if not isinstance(ex, (nn.ModuleList, nn.Sequential)) or len(ex) != e:
        return None
    for names in _MLP_NAMES:
        mats: list[list[torch.Tensor]] = [[], [], []]
        for mlp in ex:
            lins = [getattr(mlp, n, None) for n in names]
            if not all(isinstance(getattr(lin, "weight", None), torch.Tensor)
                       and getattr(lin, "bias", None) is None for lin in lins):
                break
            for acc, lin in zip(mats, lins):
                acc.append(lin.weight.detach())
        else:
            gate, up, down = (torch.stack(m) for m in mats)
            if up.shape[2] == h and down.shape[1] == h and gate.shape == up.shape:
                return _Weights(gate, up, down)
    return None


def _top_k(*mods: nn.Module) -> int | None:
    for m in mods:
        for attr in ("top_k", "num_experts_per_tok"):
            k = getattr(m, attr, None)
            if isinstance(k, int) and not isinstance(k, bool) and k > 0:
                return k
    for m in mods:
        k = getattr(getattr(m, "config", None), "num_experts_per_tok", None)
        if isinstance(k, int) and k > 0:
            return k
    return None


def _candidate(block: nn.Module) -> MoeBlock | None:
    """A MoeBlock built from ``block``'s structure (attributes not yet chosen), or None."""
    router = _child(block, _ROUTER_NAMES)
    experts = getattr(block, "experts", None)
    if router is None or not isinstance(experts, nn.Module):
        return None
    w = _tensor(router[1], "weight", 2)
    if w is None:
        return None
    e, h = w.shape
    weights = _stacked_weights(experts, e, h) or _listed_weights(experts, e, h)
    k = _top_k(block, router[1], experts)
    if weights is None or k is None or k > e:
        return None
    if any(t is not None and t.dtype != w.dtype for t in (weights.w_gate, weights.w_up, weights.w_down)):
        return None
    cand = MoeBlock(router[0], router[1], weights, k, _child(block, _SHARED_NAMES),
                    _child(block, _SHARED_GATE_NAMES))
    cand.training = block.training  # only the flag: the shared children already have theirs
    return cand


def _unclaimed(block: nn.Module, cand: MoeBlock) -> str | None:
    """The name of a non-zero parameter or buffer of ``block`` that ``cand`` does not use (the
    router's weight and bias, the experts, the shared expert and its gate), or None. All-zero
    ones change nothing (a zero selection bias picks the same experts) and are let through."""
    owned = tuple(f"{n}." for n in ("experts", cand.shared_name, cand.shared_gate_name) if n)
    router = {f"{cand.router_name}.weight", f"{cand.router_name}.bias"}
    for name, t in itertools.chain(block.named_parameters(), block.named_buffers()):
        if name in router or name.startswith(owned) or not isinstance(t, torch.Tensor):
            continue
        if t.numel() and bool(torch.any(t != 0)):
            return name
    return None


# ---- numerical check --------------------------------------------------------------------------


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a.float() - b.float()).abs().max().item() / (scale if scale > 0 else 1.0)


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2


def _fit(block: nn.Module, cand: MoeBlock) -> bool:
    """Choose ``cand``'s routing attributes by matching ``block`` on a random probe; True if
    some choice reproduces the block's output (and its router logits, when it returns them)."""
    w, b = cand._router_wb()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*_PROBE_TOKENS, w.shape[1], generator=gen).to(w.device, w.dtype)
    with torch.no_grad():
        ref = block(x)
        if isinstance(ref, tuple):
            if len(ref) != 2 or not isinstance(ref[1], torch.Tensor) or ref[1].shape[-1] != w.shape[0]:
                return False
            if _rel_err(F.linear(x.reshape(-1, w.shape[1]), w, b), ref[1]) > _tolerance(w.dtype):
                return False
            cand.returns_logits, ref = True, ref[0]
        if not isinstance(ref, torch.Tensor) or ref.shape != x.shape:
            return False
        best: tuple[float, tuple] | None = None
        for scoring, normalize, act in itertools.product(("softmax", "sigmoid"), (True, False), _ACT_ORDER):
            cand.scoring, cand.normalize, cand.activation = scoring, normalize, act
            out = cand(x)
            err = _rel_err(out[0] if isinstance(out, tuple) else out, ref)
            if best is None or err < best[0]:
                best = (err, (scoring, normalize, act))
    assert best is not None
    cand.scoring, cand.normalize, cand.activation = best[1]
    return best[0] <= _tolerance(w.dtype)


def recognise(block: nn.Module) -> MoeBlock | None:
    """The MoeBlock standing in for ``block``, or None if ``block`` is not a (representable) MoE.
    Warns when the structure matches but the numbers do not (the block is then traced)."""
    cand = _candidate(block)
    if cand is None:
        return None
    if block._forward_hooks or block._forward_pre_hooks:
        # The stand-in could not fire them (output recorders, user hooks): keep the block.
        warnings.warn(f"{type(block).__name__}: MoE block has forward hooks; traced op by op",
                      stacklevel=3)
        return None
    extra = _unclaimed(block, cand)
    if extra is not None:
        # e.g. DeepSeek-V3 / GLM-4-MoE's e_score_correction_bias, which moves the top-k choice
        # but not the weights: the IR moe has no such input, and a probe of a few tokens can
        # miss what it changes (a small one moved none of 10 probe tokens and 2% of the output)
        warnings.warn(f"{type(block).__name__}: MoE block holds {extra!r}, which the IR moe op does "
                      f"not represent; traced op by op", stacklevel=3)
        return None
    try:
        ok = _fit(block, cand)
    except Exception as e:  # a forward that needs more than hidden_states: not ours to replace
        warnings.warn(f"{type(block).__name__}: MoE-like block could not be probed "
                      f"({type(e).__name__}: {e}); traced op by op", stacklevel=3)
        return None
    if not ok:
        warnings.warn(f"{type(block).__name__}: MoE-like block whose routing or activation has no "
                      f"IR moe form (softmax/sigmoid top-k, activations {', '.join(ACTIVATIONS)}); "
                      f"traced op by op", stacklevel=3)
        return None
    return cand


@contextmanager
def moe_blocks_swapped(model: nn.Module) -> Iterator[list[str]]:
    """Within the context, each recognised MoE block of ``model`` is replaced by its MoeBlock;
    yields their qualified names. The original modules are always put back on exit."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    names: list[str] = []

    def walk(mod: nn.Module, prefix: str) -> None:
        for name, child in list(mod._modules.items()):
            if child is None:
                continue
            fqn = f"{prefix}{name}"
            new = recognise(child)
            if new is None:
                walk(child, fqn + ".")
                continue
            mod._modules[name] = new
            swaps.append((mod, name, child))
            names.append(fqn)

    try:
        walk(model, "")
        yield names
    finally:
        for mod, name, child in reversed(swaps):
            mod._modules[name] = child
