"""Memory layouts at run time: fused kernels whose inputs arrive channels-last run as torch
ops, and slices run as strided views.

The CPU convolutions leave their results channels-last (``runtime/library_conv.py``). A
generated kernel reads contiguous NCHW buffers, so such an input would first be copied into
NCHW, and the next convolution would copy the kernel's NCHW result back: two passes over the
tensor, each about ten times the cost of the elementwise work itself (a squeeze-excite's
``mul``, its ``reduce_mean``, a residual ``add``). torch's own elementwise ops and reductions
take channels-last tensors as they are and keep the layout, so a small fused kernel runs its
nodes' reference implementations (exact IR semantics) whenever an input comes in that way,
unless it has a generated channels-last alternative (``codegen/c_cl.py``: the spatial mean
and elementwise chains with per-channel operands, run by ``runtime/ccl.py``).
"""
from __future__ import annotations

from typing import Callable, Collection, Mapping

import sympy
import torch

from ..codegen.c_cl import cl_form
from ..codegen.schedule import Kernel, Schedule
from ..ir.ops import get_op
from ..ir.graph import Node
from ..ir.ops.common import bind_dims
from ..ir.ops.shape import slice_ranges

# kernels of more nodes keep their generated code (torch would make one pass per node)
MAX_NODES = 6


def is_channels_last(t: torch.Tensor | None) -> bool:
    """Whether ``t`` is laid out channels-last and not also contiguous: a 4-D NCHW tensor
    stored NHWC, or a 3-D NCL one stored NLC (a 1-D convolution's result)."""
    if t is None or t.dim() not in (3, 4) or t.is_contiguous():
        return False
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return t.transpose(1, 2).is_contiguous()


# library ops whose CPU results may come back channels-last
_CL_OPS = frozenset({"conv", "max_pool", "avg_pool", "global_avg_pool", "global_max_pool"})
# reference ops whose torch implementation takes a channels-last x (input 0) as it is and
# returns that layout: the executor passes x through rather than copying it (an inference
# batch norm ahead of a convolution in pre-activation networks, compiled without passes)
KEEPS_LAYOUT = frozenset({"batch_norm"})


def channels_last_values(schedule: Schedule) -> set[int]:
    """Ids of the values that may hold channels-last data at run time: results of library
    convolutions and pools, of views of those, of the fused kernels reading them (which
    :func:`torch_kernel` may run as torch ops that keep the layout) and of channel concats
    of them (``codegen/c_cl.py``'s ``cat``), and of the reference ops in ``KEEPS_LAYOUT``
    reading them. A transposed view of a
    linear's output also looks channels-last, but its kernels keep their generated code."""
    out: set[int] = set()
    for k in schedule.kernels:
        src = (k.kind == "library" and k.nodes[0].op in _CL_OPS) or \
            (k.kind in ("view", "fused") and any(id(v) in out for v in k.inputs)) or \
            (k.kind == "template" and any(id(v) in out for v in k.inputs) and cl_form(k) == "cat") or \
            (k.kind == "reference" and k.nodes[0].op in KEEPS_LAYOUT and id(k.nodes[0].inputs[0]) in out)
        if src:
            out.update(id(o) for o in k.outputs)
    return out


def torch_kernel(k: Kernel, slot: Mapping[int, int], env: Mapping[sympy.Symbol, int],
                 sources: Collection[int]) -> Callable[[list], None] | None:
    """A step running fused kernel ``k``'s nodes as torch references on the executor's value
    list (``slot``: value id -> index), or None for kernels this is not meant for: more than
    MAX_NODES nodes, or no 3-D or 4-D input among ``sources`` (channels_last_values)."""
    if k.kind != "fused" or len(k.nodes) > MAX_NODES or \
            not any(v.type.rank in (3, 4) and id(v) in sources for v in k.inputs):
        return None
    refs = [(get_op(n.op).reference, bind_dims(n.attrs, env)) for n in k.nodes]
    nodes = k.nodes
    outs = [(id(o), slot[id(o)]) for o in k.outputs]

    def run(vals: list) -> None:
        local: dict[int, torch.Tensor] = {}
        ins: list[torch.Tensor] = []
        for n, (ref, attrs) in zip(nodes, refs):
            xs = []
            for v in n.inputs:
                if v is None:
                    xs.append(None)
                elif id(v) in local:
                    xs.append(local[id(v)])
                else:
                    t = vals[slot[id(v)]]
                    ins.append(t)
                    xs.append(t)
            res = ref(xs, attrs)
            for o, t in zip(n.outputs, res if isinstance(res, (tuple, list)) else [res]):
                local[id(o)] = t
        bases = {t.untyped_storage().data_ptr() for t in ins}
        for vid, s in outs:
            t = local[vid]
            # a result aliasing an input (identity, a same-shape expand) would be overwritten
            # once the buffer plan reuses that input's memory
            vals[s] = t.clone() if t.untyped_storage().data_ptr() in bases else t
    return run


def slice_index(node: Node, env: Mapping[sympy.Symbol, int]) -> tuple[slice, ...]:
    """The basic index of a ``slice`` node with positive steps under ``env``: indexing with it
    gives a strided view of the input, not a copy (``codegen.schedule.is_view``)."""
    shape = node.inputs[0].type.concrete(dict(env))
    index = [slice(None)] * len(shape)
    for ax, r in slice_ranges(shape, bind_dims(node.attrs, env)):
        # an empty range may have stop < start; torch wants them ordered
        index[ax] = slice(r.start, max(r.stop, r.start), r.step)
    return tuple(index)


__all__ = ["KEEPS_LAYOUT", "MAX_NODES", "channels_last_values", "is_channels_last", "slice_index", "torch_kernel"]
