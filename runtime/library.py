"""Library kernels: torch's own implementations of dense GEMM, attention and friends.

Each entry runs one IR node on torch tensors, writing into ``out`` when the op supports it
(returns the output tensor either way). Semantics are exactly the IR op's; anything outside
the fast paths falls back to the op's reference implementation.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..ir.graph import Attrs, Node
from ..ir.ops import get_op

Tensor = torch.Tensor
LibFn = Callable[[Sequence[Tensor | None], Tensor | None], Tensor]


def _linear(node: Node) -> LibFn:
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        x, w = xs[0], xs[1]
        assert x is not None and w is not None
        x2 = x.reshape(-1, x.shape[-1])
        if out is None:
            out = torch.empty(*x.shape[:-1], w.shape[0], dtype=x.dtype)
        o2 = out.view(-1, w.shape[0])
        if has_bias:
            torch.addmm(xs[2], x2, w.t(), out=o2)
        else:
            torch.mm(x2, w.t(), out=o2)
        return out
    return run


def _matmul(node: Node) -> LibFn:
    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        if out is None:
            return torch.matmul(xs[0], xs[1])
        return torch.matmul(xs[0], xs[1], out=out)
    return run


def _sdpa(node: Node) -> LibFn:
    a = node.attrs
    ref = get_op("sdpa").reference

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        q, k, v = xs[0], xs[1], xs[2]
        mask = xs[3] if len(xs) > 3 else None
        if a["causal"] and mask is not None:
            return ref(xs, a)  # torch refuses both at once; the reference combines them
        if mask is not None and mask.dtype == torch.bool:
            # A row with no key to attend to is defined as zeros by the IR op.
            if not bool(mask.any(dim=-1).all()):
                return ref(xs, a)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=a["causal"],
                                              scale=a["scale"], enable_gqa=a["gqa"])
    return run


_FAST: dict[str, Callable[[Node], LibFn]] = {"linear": _linear, "matmul": _matmul, "sdpa": _sdpa}


def library_fn(node: Node) -> tuple[LibFn, bool]:
    """The torch implementation of ``node`` and whether it writes into a given ``out``."""
    f32 = all(v is None or v.dtype.name in ("f32",) for v in node.inputs)
    if node.op in _FAST and f32:
        fn = _FAST[node.op](node)
        return fn, node.op in ("linear", "matmul")
    ref = get_op(node.op).reference
    attrs: Attrs = node.attrs

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        return ref(xs, attrs)
    return run, False
