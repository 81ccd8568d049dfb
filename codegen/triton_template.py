"""Pieces shared by the Triton template kernels of ``qlinear`` whose constants are packed at
load time (the W4 kernels, ``triton_w4.py``, and the other weight-only codes, ``triton_wq.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import sympy
import torch

from ..ir.graph import Node, Value
from .schedule import Kernel

Launch = Callable[[Sequence[torch.Tensor]], None]


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def template_slots(k: Kernel) -> tuple[tuple[int, int, int], sympy.Expr, int, int]:
    """For a template kernel holding one ``qlinear(x, w, scale, zero?, bias?)``: the slots of x,
    bias (-1: none) and y in the kernel's tensor list (inputs, then the output), the row count
    M of x as an expression of its leading dims, and the weight's N and K (static)."""
    n = k.nodes[0]
    x, w = n.inputs[0], n.inputs[1]
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    assert x is not None and w is not None
    index = {id(v): i for i, v in enumerate(k.inputs)}
    slots = (index[id(x)], index[id(bias)] if bias is not None else -1, len(k.inputs))
    m: sympy.Expr = sympy.Integer(1)
    for d in x.type.shape[:-1]:
        m = m * sympy.sympify(d)
    N, K = w.type.shape
    return slots, sympy.expand(m), int(N), int(K)


X_REAL = frozenset({"f32", "f16", "bf16"})


def weight_only_parts(n: Node) -> tuple[Value, Value, Value, Value | None, Value | None] | None:
    """(x, w, scale, zero, bias) of a weight-only ``qlinear`` (act none) with f32 / f16 / bf16
    x and no bias or a float one, or None for any other node: the part of the template tests
    every packed-constant kernel shares."""
    if n.op != "qlinear" or n.attrs["act"] != "none":
        return None
    x, w, scale = n.inputs[0], n.inputs[1], n.inputs[2]
    zero = n.inputs[3] if len(n.inputs) > 3 else None
    bias = n.inputs[4] if len(n.inputs) > 4 else None
    if x is None or w is None or scale is None or x.dtype.name not in X_REAL:
        return None
    if bias is not None and bias.dtype.name not in X_REAL:
        return None
    return x, w, scale, zero, bias


@dataclass(frozen=True, eq=False)
class PackedConstants:
    """What a launch of a kernel reading packed copies of the qlinear's constants needs
    besides the tensors: ``slots`` of x, bias (-1: none) and y as in :func:`template_slots`,
    x's type name, and the constants (codes, scales, zero points or None, group), packed when
    the kernel is loaded."""

    slots: tuple[int, int, int]
    xkind: str
    w: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    group: int

    def packed_inputs(self, n_inputs: int) -> list[int]:
        """Indices of the kernel inputs that only feed the packing (codes, scales, zeros): the
        launch reads the packed copies, so they need no device tensor of their own."""
        return [i for i in range(n_inputs) if i not in self.slots[:2]]


def quiet(launch: Launch, interpret: bool) -> Launch:
    """``launch``, or under the interpreter ``launch`` with numpy's warnings off (masked-off
    lanes compute on fill values)."""
    if not interpret:
        return launch
    import numpy as np

    def interpreted(ts: Sequence[torch.Tensor]) -> None:
        with np.errstate(all="ignore"):
            launch(ts)
    return interpreted


__all__ = ["Launch", "X_REAL", "weight_only_parts", "pow2", "template_slots", "PackedConstants", "quiet"]
