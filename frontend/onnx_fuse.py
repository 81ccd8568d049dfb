"""Import-time rewrites of a freshly converted ONNX graph.

- ``linear(x, W) + b`` with a constant ``b`` along the output features becomes
  ``linear(x, W, b)``. Exporters write a bias-free MatMul and an Add for every linear on a
  3-D (or higher) input (torch.onnx's ``nn.Linear``), and the passes that read a linear's bias
  (bias correction, scale folding into a following per-channel mul) look for it there.
- Equal constants made by separate converters become one (``share_equal_constants``): a tied
  model's quantised embedding (GatherBlockQuantized) and lm_head (MatMulNBits) each unpack
  the one initializer they share into their own codes tensor.
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Value
from ..ir.types import dims_equal


def fuse_linear_bias(g: Graph) -> int:
    """Fold constant bias adds into the bias-free ``linear`` they follow; returns how many."""
    outs = {id(v) for v in g.outputs}
    done = 0
    for add in list(g.nodes):
        if add.op != "add" or len(add.inputs) != 2:
            continue
        for li in (0, 1):
            y, c = add.inputs[li], add.inputs[1 - li]
            lin = y.producer if y is not None else None
            if lin is None or lin.op != "linear" or c is None or not c.is_const:
                continue
            if len(lin.inputs) > 2 and lin.inputs[2] is not None:
                continue
            if len(y.uses) != 1 or id(y) in outs or not _along_features(c, y) or \
                    add.outputs[0].type != y.type:
                continue
            n = int(y.shape[-1])
            b = g.add_const(c.const.reshape(n).clone(), c.dtype, c.name)
            new = g.create_node("linear", [lin.inputs[0], lin.inputs[1], b], name=lin.name)
            g.insert_before(add, new)
            g.replace_all_uses(add.outputs[0], new.outputs[0])
            g.remove(add)
            g.remove(lin)
            done += 1
            break
    return done


def _along_features(c: Value, y: Value) -> bool:
    """Whether constant ``c`` varies at most along ``y``'s last axis (shape [..1, N] or [N])."""
    if c.dtype is not y.dtype or not isinstance(y.shape[-1], int) or c.type.rank > y.type.rank:
        return False
    shape = tuple(c.shape)
    return bool(shape) and dims_equal(shape[-1], y.shape[-1]) and all(d == 1 for d in shape[:-1])


def share_equal_constants(g: Graph, min_numel: int = 1024) -> int:
    """Point the readers of constants equal to an earlier one (same dtype, shape and bits) at
    that one; returns how many were merged. Only constants of at least ``min_numel``
    elements are compared (small ones cost nothing), and only within a (dtype, shape) group,
    so an import without duplicates compares nothing."""
    groups: dict[tuple, list[Value]] = {}
    for c in g.constants():
        if c.const.numel() >= min_numel:
            groups.setdefault((c.dtype, tuple(c.shape)), []).append(c)
    merged = 0
    for vals in groups.values():
        kept: list[Value] = []
        for v in vals:
            same = next((k for k in kept if torch.equal(k.const, v.const)), None)
            if same is None:
                kept.append(v)
            else:
                g.replace_all_uses(v, same)
                merged += 1
    return merged
