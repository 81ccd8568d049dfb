"""Runs a generated C convolution (``codegen/c_conv.py``) on the executor's values.

The kernel reads and writes channels-last (NHWC) memory, the layout the CPU convolutions keep
between steps (``runtime/library_conv.py``): x and the residual operand come as they are when
already channels-last (else one copy), and the result is logically NCHW (NCL for 1-D) and
channels-last in memory, as the oneDNN path returns it, written into the buffer the executor
planned for it.
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Callable, Sequence

import torch

Step = Callable[[list], None]


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``t`` (rank 3 or 4, logically channels-first) with channels-last contiguous memory."""
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _nhwc_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Strides of a logically channels-first ``shape`` stored channels-last."""
    if len(shape) == 4:
        n, c, h, w = shape
        return (h * w * c, 1, w * c, c)
    n, c, length = shape
    return (length * c, 1, c)


def _out(t: torch.Tensor | None, shape: tuple[int, ...], strides: tuple[int, ...], n: int) -> torch.Tensor:
    """The result tensor of ``n`` elements: the buffer the executor placed for it (an arena
    view, or a graph output's fresh tensor) seen channels-last, so that no call allocates (a
    fresh tensor of a few hundred KB costs page faults on every call); a new one if there is
    none."""
    if t is not None and t.dtype == torch.float32 and t.numel() == n and t.is_contiguous():
        return t.as_strided(shape, strides)
    return torch.empty_strided(shape, strides, dtype=torch.float32)


def planned_out(buf: torch.Tensor | None, cache: list, shape: tuple[int, ...],
                strides: tuple[int, ...], n: int) -> torch.Tensor:
    """``_out`` of the planned buffer ``buf``, the same view object while ``buf`` is
    (``cache`` = [buffer, view], kept for an arena view, which the binding holds anyway), so
    that the steps after this one see the same object at every call."""
    if buf is not None and buf is cache[0]:
        return cache[1]
    y = _out(buf, shape, strides, n)
    if buf is not None and buf._base is not None:
        cache[0], cache[1] = buf, y
    return y


def repeatable(run: Callable, fn: Callable, ptrs: object, qarr: object, slots: list[int],
               seen: list, out: list, skip: int = -1) -> Callable:
    """``run`` with the two methods a Segment (runtime/cseg.py) needs of a step that keeps
    its arguments' pointers (``seen``: weak references per pointer, ``skip`` the output's
    position, which has none) and its output view (``out``): ``last_call()``, the (kernel,
    pointers, integers, the slot of each pointer) of the last call when it passed every value
    straight through and wrote the cached view of its buffer, else None; and ``forget()``,
    which drops the cached pointers (after a Segment rewrote an address in ``ptrs``)."""
    def last_call() -> tuple | None:
        if out[0] is None or any(r is None for i, r in enumerate(seen) if i != skip):
            return None
        return fn, ptrs, qarr, slots

    def forget() -> None:
        seen[:] = [None] * len(seen)
    run.last_call, run.forget = last_call, forget   # type: ignore[attr-defined]
    return run


def conv_step(fn: Callable, order: Sequence[int], activations: frozenset[int], out_slot: int,
              out_shape: Sequence[int], q: Sequence[int]) -> Step:
    """A step calling kernel ``fn`` with the values in slots ``order`` (ABI: c_conv.py): those
    in ``activations`` passed channels-last, the others contiguous, and ``out_slot`` the
    buffer placed for the result (``_out``) seen channels-last with ``out_shape``; runtime
    integers ``q``."""
    ptrs = (ctypes.c_void_p * len(order))()
    qarr = (ctypes.c_int64 * len(q))(*q)
    shape = tuple(int(d) for d in out_shape)
    strides = _nhwc_strides(shape)
    numel = 1
    for d in shape:
        numel *= d

    # Most values are the same tensor objects at every call of a binding (the arena's views,
    # the constants, the channels-last view this step made of its buffer last time): their
    # pointers and that view are kept, which saves a few torch calls per step (``seen``: weak
    # references to the objects whose own memory each slot passed last call; ``out``: the
    # buffer and its channels-last view, kept only for a view of the arena, which the binding
    # holds anyway, never for a graph output's fresh tensor). A value that needed a copy is
    # redone at every call.
    seen: list = [None] * len(order)
    out: list = [None, None]

    def run(vals: list) -> None:
        y = planned_out(vals[out_slot], out, shape, strides, numel)
        keep = []   # channels-last copies must outlive the call
        for i, s in enumerate(order):
            if s == out_slot:
                ptrs[i] = y.data_ptr()
                continue
            t = vals[s]
            r = seen[i]
            if r is not None and r() is t:
                continue
            seen[i] = None
            if s in activations:
                c = _nhwc(t)
                if c is not t:
                    keep.append(c)
                    ptrs[i] = c.data_ptr()
                    continue
            elif not t.is_contiguous():
                t = vals[s] = t.contiguous()
                ptrs[i] = t.data_ptr()
                continue
            seen[i] = weakref.ref(t)
            ptrs[i] = t.data_ptr()
        fn(ptrs, qarr)
        vals[out_slot] = y

    run.order = list(order)
    return repeatable(run, fn, ptrs, qarr, list(order), seen, out, skip=list(order).index(out_slot))
