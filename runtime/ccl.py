"""Runs the channels-last alternative of a fused kernel (``codegen/c_cl.py``) on the
executor's values, when its inputs arrive channels-last.

The step reads each full-size input in NHWC memory as it is, the per-channel and
single-element inputs contiguous, and writes the result into the buffer the executor planned
for it, seen channels-last (a ``mean`` result [N, C, 1, 1] is the same either way). It
reports False, leaving the kernel to the torch ops of ``runtime/layout.torch_kernel`` (or to
the generated kernel on contiguous copies), when a full-size input is not channels-last (a
mix of layouts)."""
from __future__ import annotations

import ctypes
import weakref
from typing import Callable, Mapping, Sequence

import torch

from ..codegen.c_cl import cl_form, operand_kind
from ..codegen.schedule import Kernel
from .cconv import _nhwc_strides, _out, repeatable


def _stored_nhwc(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def cl_step(fn: Callable, k: Kernel, slot: Mapping[int, int], out_shape: Sequence[int],
            q: Sequence[int]) -> Callable[[list], bool]:
    """A step calling channels-last kernel ``fn`` of fused kernel ``k`` (ABI: c_cl.py) with
    output shape ``out_shape`` and runtime integers ``q``; it returns whether it ran."""
    form = cl_form(k)
    out = k.outputs[0]
    # a concat passes its own inputs, in order (one value may come twice), all channels-last
    srcs = k.nodes[0].inputs if form == "cat" else k.inputs
    ins = [slot[id(v)] for v in srcs]
    full = [form in ("mean", "cat") or operand_kind(v, out) == "full" for v in srcs]
    dst = slot[id(out)]
    ptrs = (ctypes.c_void_p * (len(ins) + 1))()
    qarr = (ctypes.c_int64 * len(q))(*q)
    shape = tuple(int(d) for d in out_shape)
    numel = 1
    for d in shape:
        numel *= d
    strides = _nhwc_strides(shape) if form in ("ew", "cat") else None

    # as in cconv.conv_step: values that are the objects of the last call keep their
    # pointers (weak references), and the output keeps its channels-last view of an arena
    # buffer, so that the steps after this one see the same object at every call
    seen: list = [None] * len(ins)
    out: list = [None, None]

    def run(vals: list) -> bool:
        keep = []   # contiguous copies must outlive the call
        for i, (s, f) in enumerate(zip(ins, full)):
            t = vals[s]
            r = seen[i]
            if r is not None and r() is t:
                continue
            seen[i] = None
            if f:
                if not _stored_nhwc(t):
                    return False
            elif not t.is_contiguous():
                t = t.contiguous()
                keep.append(t)
                ptrs[i] = t.data_ptr()
                continue
            seen[i] = weakref.ref(t)
            ptrs[i] = t.data_ptr()
        buf = vals[dst]
        if buf is not None and buf is out[0]:
            y = out[1]
        else:
            out[0] = out[1] = None
            if strides is not None:
                y = _out(buf, shape, strides, numel)
            elif buf is None or not buf.is_contiguous() or buf.numel() != numel:
                y = torch.empty(shape, dtype=torch.float32)
            else:
                y = buf
            if buf is not None and buf._base is not None and (y is buf or y._base is not None):
                out[0], out[1] = buf, y
        ptrs[len(ins)] = y.data_ptr()
        fn(ptrs, qarr)
        vals[dst] = y
        return True

    return repeatable(run, fn, ptrs, qarr, ins + [dst], seen, out)
