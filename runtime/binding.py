"""What one binding of the sizes holds for the executor (runtime/executor.py), and the pieces
it is made of: each kernel's step with its output sizes (cached per kernel by the values of
the symbols it reads), the arena's views per dtype, and the symbols a kernel reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import sympy
import torch

from ..codegen.schedule import BufferPlan, Kernel

Step = Callable[[list], None]


@dataclass
class KStep:
    """One kernel's step for one binding of its symbols, and its outputs: (id(Value), slot,
    shape, contiguous strides, container dtype, bytes) each (none for a view kernel, whose
    outputs alias)."""
    step: Step
    outs: list[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype, int]]


class Typed(dict):
    """An arena's views as each dtype, made on first use (offsets are 64-byte aligned, so
    every planned buffer starts on an element of its dtype)."""

    def __init__(self, arena: torch.Tensor) -> None:
        super().__init__()
        self.arena = arena

    def __missing__(self, dtype: torch.dtype) -> torch.Tensor:
        t = self[dtype] = self.arena.view(dtype)
        return t


@dataclass
class Bound:
    env: dict[sympy.Symbol, int]
    keys: list[tuple]               # the values of each of the executor's symbol sets
    plan: BufferPlan
    arena: torch.Tensor
    base_vals: list
    steps: list[Step]
    fresh: dict[int, tuple[tuple[int, ...], torch.dtype]]   # slot -> graph output allocated per call
    calls: int = 0
    cuda_graph: Any = None          # (CUDAGraph, static inputs, outputs) once captured
    no_graph: bool = False          # capture failed: run step by step
    seg_plan: Any = None            # the steps with runs of C steps as segments (runtime/cseg.py)


def kernel_symbols(k: Kernel, params: Sequence[sympy.Expr]) -> tuple[sympy.Symbol, ...]:
    """The symbols kernel ``k``'s step reads from a binding (name order): those of its nodes'
    input and output shapes, of their attributes and of its runtime integers."""
    syms: set[sympy.Symbol] = set()

    def add(v: Any) -> None:
        if isinstance(v, tuple):
            for x in v:
                add(x)
        elif isinstance(v, sympy.Basic):
            syms.update(v.free_symbols)
    for n in k.nodes:
        for v in (*n.inputs, *n.outputs):
            if v is not None:
                syms.update(v.type.symbols)
        for a in n.attrs.values():
            add(a)
    for e in params:
        add(e)
    return tuple(sorted(syms, key=lambda s: s.name))


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    out = []
    acc = 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


__all__ = ["Bound", "KStep", "Step", "Typed", "contiguous_strides", "kernel_symbols"]
