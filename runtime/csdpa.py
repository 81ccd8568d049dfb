"""Runs the generated C attention (``codegen/c_sdpa.py``) on the executor's values.

q, k and v go in as they are when their rows are contiguous: the per-head views of a fused
QKV projection (timm's ``qkv(x).reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)``, Hugging
Face's ``view(B, S, H, D).transpose(1, 2)``) were copied into contiguous tensors before every
call, three copies of the activations per layer. Their element strides over (batch, head,
row) replace the contiguous ones in the kernel's integers. The result is written into the
buffer the executor planned for it, seen with the strides the kernel was rendered for
(``[B, L, H, Dv]`` memory where the next op transposes heads and rows, ``blhd_output``).
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Callable, Sequence

import torch

from .cconv import planned_out, repeatable

Step = Callable[[list], None]


def _bhl(t: torch.Tensor) -> tuple[int, int, int]:
    """Element strides over (batch, head, row) of a [B, H, L, D] or [H, L, D] tensor."""
    st = t.stride()
    return (st[0], st[1], st[2]) if t.dim() == 4 else (0, st[0], st[1])


def sdpa_step(fn: Callable, order: Sequence[int], q: Sequence[int], strides_at: int,
              out_shape: Sequence[int]) -> Step:
    """A step calling attention kernel ``fn``: ``order`` = the slots of q, k, v, [mask], y;
    ``q`` = its runtime integers, whose (batch, head, row) strides of q, k, v and y start at
    ``strides_at``; ``out_shape`` y's shape."""
    n_in = len(order) - 1
    out_slot = order[-1]
    ptrs = (ctypes.c_void_p * len(order))()
    qarr = (ctypes.c_int64 * len(q))(*q)
    shape = tuple(int(d) for d in out_shape)
    ys = tuple(q[strides_at + 9: strides_at + 12])
    strides = (ys + (1,)) if len(shape) == 4 else (ys[1], ys[2], 1)
    numel = 1
    for d in shape:
        numel *= d
    # as in cconv.conv_step: inputs that are the last call's objects keep their pointers and
    # strides (weak references), and the output keeps its strided view of an arena buffer
    seen: list = [None] * n_in
    out: list = [None, None]

    def run(vals: list) -> None:
        keep = []   # contiguous copies must outlive the call
        for i in range(n_in):
            t = vals[order[i]]
            r = seen[i]
            if r is not None and r() is t:
                continue
            seen[i] = None
            if i < 3 and (t.stride(-1) == 1 or t.shape[-1] == 1):
                seen[i] = weakref.ref(t)
            elif not t.is_contiguous():
                t = t.contiguous()
                keep.append(t)
            else:
                seen[i] = weakref.ref(t)
            if i < 3:
                qarr[strides_at + 3 * i: strides_at + 3 * i + 3] = list(_bhl(t))
            ptrs[i] = t.data_ptr()
        y = planned_out(vals[out_slot], out, shape, strides, numel)
        ptrs[n_in] = y.data_ptr()
        fn(ptrs, qarr)
        vals[out_slot] = y

    run.order = list(order)
    return repeatable(run, fn, ptrs, qarr, list(order), seen, out)
