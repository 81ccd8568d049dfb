"""Runs of consecutive generated-C steps called as one (``Segment``).

Each C step (``cstep.c_step``, ``cconv.conv_step``) already keeps its last call's pointers
while its arguments are the same tensor objects; what is left per step is Python: the
identity checks, the closure and a ctypes call, about 2-3 µs. A small network is mostly
such steps (MobileNetV3-small: 72 of its 74), so that cost rivals the arithmetic. A segment
checks once, at its start, that every slot its steps touch holds the object of the last
call, then runs all of its kernels through ``sf_run_seq``, a C loop over (function,
pointers, integers) triples, and re-applies the slot assignments the steps made (a
convolution's channels-last view of its buffer, the kept view of a reshape or transpose:
view steps join segments and call nothing).

The fast path is taken only when the previous call of the same binding ran the segment
step by step (or fast) and every step ended that call in its cached state (no copies, no
fallback to torch ops): the kernels then see exactly the pointers they saw last time. A slot
that holds a new tensor of the very same layout (dtype, device, shape, strides: a library
step's per-call result, a new input, a graph output allocated per call) is no reason to leave
the fast path: the steps would pass it as they passed the old one, so its address replaces
the old one in the kernels' pointer arrays. Steps are shared between bindings, so the
executor allows the fast path only when the previous run was of the same binding (``fast``).
Anything else runs step by step, which refreshes the steps' pointers and re-arms the segment.
"""
from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any, Callable, Sequence

import torch

_SEQ_SOURCE = r"""
#include <stdint.h>
typedef void (*sf_fn)(void **, const int64_t *);
void sf_run_seq(int64_t n, void **fns, void **ps, void **qs) {
  for (int64_t i = 0; i < n; i++) ((sf_fn)fns[i])((void **)ps[i], (const int64_t *)qs[i]);
}
"""
_SEQ: list = []
_SEQ_LOCK = threading.Lock()


def _run_seq() -> Callable | None:
    """The compiled ``sf_run_seq`` (built once, through the kernel cache), or None where it
    cannot be built or loaded (a read-only cache made before it existed): the steps then run
    one by one, as they did without segments."""
    with _SEQ_LOCK:
        if not _SEQ:
            from ..ir.errors import ScalefoldError
            from .cache import build
            try:
                lib = ctypes.CDLL(str(build(_SEQ_SOURCE)))
            except (ScalefoldError, OSError):
                _SEQ.append(None)
                return None
            fn = lib.sf_run_seq
            fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            fn.restype = None
            _SEQ.append(fn)
        return _SEQ[0]


def segmentable(step: Any) -> bool:
    """Whether ``step`` is a C step a segment can call directly: it exposes its slots and
    ``last_call``, the (kernel, pointers, integers) its last call used while that call passed
    every value straight through."""
    return hasattr(step, "last_call") and hasattr(step, "order")


class Segment:
    """Consecutive segmentable steps (module docstring). ``current``: the index, within the
    segment, of the step running step by step (for error messages)."""

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)
        n = len(self.steps)
        # filled from the steps' last calls after each step-by-step run
        self.fns, self.ps, self.qs = ((ctypes.c_void_p * n)() for _ in range(3))
        self.n = 0                 # kernels to call (view steps call none)
        self.slots = sorted({s for st in self.steps for s in st.order})
        # per slot at the armed call's start: [slot, weak reference or None, layout, pointer
        # positions] (layout and positions for the slots no step assigns)
        self.start: list = []
        self.after: list = []      # (slot, object) the steps assigned during that run
        self.ready = False
        self.forgot = False        # whether the steps' caches were dropped since arming
        self.bad: list[int] = []   # steps whose last step-by-step call cannot be repeated
        self.current = -1
        self._seq = _run_seq()

    def __call__(self, vals: list, fast: bool) -> None:
        if fast and self.ready and self._same(vals):
            self._seq(self.n, self.fns, self.ps, self.qs)
            for s, o in self.after:
                vals[s] = o
            return
        self.ready = self.forgot = False
        before = [(s, vals[s]) for s in self.slots]
        for i, st in enumerate(self.steps):
            self.current = i
            st(vals)
        self.current = -1
        calls = [st.last_call() for st in self.steps]
        self.bad = [i for i, c in enumerate(calls) if c is None or c and not isinstance(c[0], ctypes._CFuncPtr)]
        if self.bad:
            return   # a copy, a fallback, an uncached output view or a checked kernel: see split()
        # view steps call nothing (``()``): their slot assignments are re-applied after
        kernels = [c for c in calls if c]
        self.n = len(kernels)
        self.after = [(s, vals[s]) for s, v in before if vals[s] is not v]
        # a slot's address can be refreshed only where every step that reads it takes it as
        # a pointer: not where a step assigns it, nor where a view step keeps a view of it
        fixed = {s for s, _ in self.after}
        fixed |= {s for st, c in zip(self.steps, calls) if c == () for s in st.order}
        where: dict[int, list] = {}
        for i, (k, p, q, slots) in enumerate(kernels):
            self.fns[i] = ctypes.cast(k, ctypes.c_void_p).value
            self.ps[i], self.qs[i] = ctypes.addressof(p), ctypes.addressof(q)
            for j, s in enumerate(slots):
                if s not in fixed:
                    where.setdefault(s, []).append((p, j))
        # a slot empty at the start (a view step's output) must be empty again
        self.start = [[s, weakref.ref(v) if v is not None else None,
                       _layout(v) if s in where else None, where.get(s, ())] for s, v in before]
        self.ready = True

    def _same(self, vals: list) -> bool:
        """Whether every slot holds the object of the armed call, or (a per-call result of a
        library step, a new input) a tensor of the very same layout, whose address then
        replaces the old one in the kernels' pointer arrays (the steps would pass it as it
        is, as they passed the old one)."""
        patched = False
        for e in self.start:
            r, o = e[1], vals[e[0]]
            if (r() if r is not None else None) is o:
                continue
            if e[2] is None or not isinstance(o, torch.Tensor) or _layout(o) != e[2]:
                return False
            at = o.data_ptr()
            for p, j in e[3]:
                p[j] = at
            e[1] = weakref.ref(o)
            patched = True
        if patched and not self.forgot:
            # the steps' own caches still name the old objects, whose addresses their pointer
            # arrays no longer hold: a later step-by-step run (after another binding ran)
            # would take the old object back and pass the new one's, perhaps freed, address.
            # Once per arming: the steps cache nothing again until they run step by step.
            for st in self.steps:
                forget = getattr(st, "forget", None)
                if forget is not None:
                    forget()
            self.forgot = True
        return True


def _layout(t: Any) -> tuple | None:
    return (t.dtype, t.device, tuple(t.shape), t.stride()) if isinstance(t, torch.Tensor) else None


def plan(steps: Sequence[Any], first: int = 0, apart: frozenset[int] = frozenset()) -> list[tuple[int, Any]]:
    """``steps`` (the first one the binding's step ``first``) as (index of the first step,
    step or Segment): runs of at least two segmentable steps (C kernels and view steps) not
    among ``apart`` (positions in ``steps``) become segments. A graph output allocated per
    call is a new tensor of the same layout at every call, which the fast path takes."""
    out: list[tuple[int, Any]] = []
    run: list[int] = []
    if _run_seq() is None:
        return [(first + i, st) for i, st in enumerate(steps)]

    def flush() -> None:
        if len(run) >= 2:
            out.append((first + run[0], Segment([steps[i] for i in run])))
        else:
            out.extend((first + i, steps[i]) for i in run)
        run.clear()

    for i, st in enumerate(steps):
        if segmentable(st) and i not in apart:
            run.append(i)
        else:
            flush()
            out.append((first + i, st))
    flush()
    return out


def split(items: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """``items`` with each segment that has steps it cannot repeat (``Segment.bad``: a view
    that copies, a kernel whose input needs a copy) cut into the segments around them."""
    out: list[tuple[int, Any]] = []
    for first, it in items:
        if it.__class__ is Segment and it.bad:
            out.extend(plan(it.steps, first, frozenset(it.bad)))
        else:
            out.append((first, it))
    return out
