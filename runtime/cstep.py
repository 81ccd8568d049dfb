"""The step of a generated C kernel (fused or template) on the executor's values.

Pointers go to the kernel as they are for contiguous tensors; a strided view from an
earlier step (a transpose) is copied first. Where a CPU convolution's channels-last result
comes in, the step runs the kernel's channels-last alternative (``runtime/ccl.py``) or its
nodes as torch ops (``runtime/layout.torch_kernel``) instead.

At every call of a binding most arguments are the same tensor objects (the arena's views,
the constants, an earlier step's cached view). When all of them are the ones of the last
call (weak references: the step keeps no tensor alive), the pointers of that call still hold
and the step calls the kernel at once: no layout test, no ``is_contiguous`` or ``data_ptr`` per
argument (a few µs per step over the ~100 steps of a small network).
"""
from __future__ import annotations

import ctypes
import weakref
from typing import Callable, Sequence

from .layout import is_channels_last

Step = Callable[[list], None]


def c_step(fn: Callable, order: Sequence[int], ins: Sequence[int], q: Sequence[int],
           alt: Step | None, cl: Callable[[list], bool] | None) -> Step:
    """A step calling kernel ``fn`` with the values in slots ``order`` and runtime integers
    ``q``. When an input among ``ins`` is channels-last, ``cl`` (the channels-last kernel,
    which may decline) runs instead, else ``alt`` (torch ops), else ``fn`` on contiguous
    copies."""
    ptrs = (ctypes.c_void_p * len(order))()
    qarr = (ctypes.c_int64 * max(len(q), 1))(*q)
    # weak references: the step must not keep the last call's inputs and outputs alive (a
    # decoder's previous KV cache would stay in memory until the next token)
    seen: list = [None] * len(order)
    valid = [False]        # whether ``seen`` and ``ptrs`` are those of the last C call
    copied = [False]       # whether that call passed a copy of some value
    by_cl = [False]        # whether the last call ran the channels-last kernel

    def run(vals: list) -> None:
        if valid[0] and all(r() is vals[s] for s, r in zip(order, seen)):
            fn(ptrs, qarr)
            return
        valid[0] = copied[0] = by_cl[0] = False
        if (alt is not None or cl is not None) and any(is_channels_last(vals[s]) for s in ins):
            if cl is not None and cl(vals):
                by_cl[0] = True
                return
            if alt is not None:
                alt(vals)
                return
        for i, s in enumerate(order):
            t = vals[s]
            if not t.is_contiguous():  # a transposed view from an earlier step
                # the copy is a new object, which the next call's values never hold
                t = vals[s] = t.contiguous()
                copied[0] = True
            seen[i] = weakref.ref(t)
            ptrs[i] = t.data_ptr()
        fn(ptrs, qarr)
        valid[0] = True

    def last_call() -> tuple | None:
        """(kernel, pointers, integers, the slot of each pointer) of the last call when it
        passed every value straight through, for a Segment (runtime/cseg.py) to repeat; None
        otherwise."""
        if valid[0] and not copied[0]:
            return fn, ptrs, qarr, order
        if by_cl[0]:
            return getattr(cl, "last_call", lambda: None)()
        return None
    def forget() -> None:
        """Drop the cached pointers (a Segment rewrote an address in ``ptrs``)."""
        valid[0] = False
        seen[:] = [None] * len(order)
        f = getattr(cl, "forget", None)
        if f is not None:
            f()
    run.order, run.last_call, run.forget = list(order), last_call, forget
    return run


def view_step(src: int, dst: int, make: Callable, in_arena: Callable) -> Step:
    """A view step (reshape, permute, slice of slot ``src`` into ``dst``) that hands out the
    same view object while the source is the same object, so that the C steps after it keep
    their cached pointers (and a Segment its fast path, runtime/cseg.py). The view is kept
    only for a source in the executor's arena (``in_arena``), which the binding holds anyway:
    a view of a graph input or of a per-call result would keep that memory alive, and only
    while it shares the source's memory (a reshape of a strided source is a copy, whose
    contents would go stale)."""
    last: list = [None, None]

    def run(vals: list) -> None:
        t = vals[src]
        r = last[0]
        if r is not None and r() is t:
            vals[dst] = last[1]
            return
        y = make(t)
        vals[dst] = y
        if in_arena(t) and y.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            last[0], last[1] = weakref.ref(t), y
        else:
            last[0] = last[1] = None

    def last_call() -> tuple | None:
        """No kernel to call (``()``) when the last call handed out the kept view, for a
        Segment, which then only re-applies the assignment; None otherwise."""
        return () if last[0] is not None else None
    run.order, run.last_call = [src, dst], last_call
    return run
