"""Import-time clean-ups of a freshly converted torch graph.

- ``reshape -> linear -> reshape`` (GPT-2's Conv1D flattens tokens around ``addmm``) becomes
  one ``linear`` on the original rank, which is what the compression passes match.
- The decomposed RMSNorm of transformers (``x * rsqrt(mean(x^2) + eps) * w``, e.g.
  LlamaRMSNorm) becomes one ``rms_norm`` when it is computed in the model's own dtype.
- The tanh-approximated GELU written out in python (GPT-2's ``gelu_new``,
  ``0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3)))``) becomes ``gelu[approximate="tanh"]``.
- transformers' ``repeat_kv`` before attention becomes ``sdpa[gqa=true]`` (``fuse_gqa.py``).
- Nodes whose results are unused are removed.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ir.graph import Graph, Node, Value
from ..ir.types import dims_equal
from .fuse_gqa import fuse_repeat_kv


def cleanup(g: Graph) -> None:
    """Apply the import-time rewrites above, then drop dead nodes."""
    _fuse_reshape_linear(g)
    _fuse_rms_norm(g)
    _fuse_gelu_tanh(g)
    fuse_repeat_kv(g)
    dce(g)


def dce(g: Graph) -> None:
    """Remove nodes none of whose outputs is read or returned."""
    outs = {id(v) for v in g.outputs}
    for node in reversed(list(g.nodes)):
        if all(not v.uses and id(v) not in outs for v in node.outputs):
            g.remove(node)


def _producer(v: Value | None, op: str) -> Node | None:
    if v is None or v.producer is None or v.producer.op != op:
        return None
    return v.producer


def _single_use(v: Value, g: Graph) -> bool:
    return len(v.uses) == 1 and all(o is not v for o in g.outputs)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


def _fuse_reshape_linear(g: Graph) -> None:
    for r2 in list(g.nodes):
        if r2.op != "reshape" or r2.graph is not g:
            continue
        lin = _producer(r2.inputs[0], "linear")
        if lin is None or not _single_use(lin.output, g):
            continue
        r1 = _producer(lin.inputs[0], "reshape")
        if r1 is None:
            continue
        x = r1.inputs[0]
        assert x is not None
        w = lin.inputs[1]
        assert w is not None
        if x.type.rank < 2 or r1.output.type.rank != 2 or not dims_equal(x.shape[-1], w.shape[1]):
            continue
        if not _same(r2.output.shape, tuple(x.shape[:-1]) + (w.shape[0],)):
            continue
        new = g.create_node("linear", [x, *lin.inputs[1:]], name=lin.name)   # bias or none
        g.insert_before(r2, new)
        g.replace_all_uses(r2.output, new.output)
        g.remove(r2)
        g.remove(lin)
        if not r1.output.uses:
            g.remove(r1)


def _scalar_const(v: Value | None) -> float | None:
    """The value of a one-element float constant, as the shortest decimal of its dtype
    (so an f32 1e-6 reads back as 1e-06, not 9.99999997e-07)."""
    if v is None or not v.is_const or v.const.numel() != 1 or not v.dtype.is_float:
        return None
    x = v.const.reshape(()).to(torch.float32 if v.dtype.bits <= 32 else torch.float64).item()
    return float(str(np.float32(x))) if v.dtype.bits <= 32 else float(x)


def _with_const(v: Value | None, op: str, c: float, tol: float = 1e-6) -> Value | None:
    """``x`` if ``v`` is ``op(x, c)`` or ``op(c, x)`` with the scalar constant ``c``."""
    p = _producer(v, op)
    if p is None:
        return None
    for i in (0, 1):
        k = _scalar_const(p.inputs[1 - i])
        if k is not None and abs(k - c) <= tol * max(1.0, abs(c)):
            return p.inputs[i]
    return None


def _fuse_gelu_tanh(g: Graph) -> None:
    for m in list(g.nodes):
        if m.op != "mul" or m.graph is not g:
            continue
        for i in (0, 1):
            x = _with_const(m.inputs[i], "mul", 0.5)
            th = _producer(_with_const(m.inputs[1 - i], "add", 1.0), "tanh")
            inner = _with_const(th.inputs[0] if th else None, "mul", math.sqrt(2 / math.pi))
            s = _producer(inner, "add")
            if x is None or s is None or x is not s.inputs[0] and x is not s.inputs[1]:
                continue
            cube = _with_const(s.inputs[1] if s.inputs[0] is x else s.inputs[0], "mul", 0.044715)
            if cube is None or _with_const(cube, "pow", 3.0) is not x:
                continue
            new = g.create_node("gelu", [x], {"approximate": "tanh"}, name=m.name)
            g.insert_before(m, new)
            g.replace_all_uses(m.output, new.output)
            break


def _fuse_rms_norm(g: Graph) -> None:
    """mul(x, rsqrt(add(reduce_mean(pow(x, 2), [-1], keep), eps))) [* w] -> rms_norm."""
    for m in list(g.nodes):
        if m.op != "mul" or m.graph is not g:
            continue
        for xi in (0, 1):
            x, r = m.inputs[xi], m.inputs[1 - xi]
            rs = _producer(r, "rsqrt")
            add = _producer(rs.inputs[0] if rs else None, "add")
            if add is None:
                continue
            mean = _producer(add.inputs[0], "reduce_mean")
            eps = _scalar_const(add.inputs[1])
            if mean is None or eps is None:
                continue
            pw = _producer(mean.inputs[0], "pow")
            if pw is None or pw.inputs[0] is not x or _scalar_const(pw.inputs[1]) != 2.0:
                continue
            axes = mean.attrs["axes"]
            assert x is not None
            if axes is None or len(axes) != 1 or axes[0] % x.type.rank != x.type.rank - 1 \
                    or not mean.attrs["keepdims"]:
                continue
            _replace_rms(g, m, x, eps)
            break


def _replace_rms(g: Graph, m: Node, x: Value, eps: float) -> None:
    weight = None
    target = m
    users = m.output.users()
    if len(users) == 1 and users[0].op == "mul" and _single_use(m.output, g):
        wm = users[0]
        w = wm.inputs[1] if wm.inputs[0] is m.output else wm.inputs[0]
        if w is not None and w.is_const and w.type.rank == 1 and w.dtype is x.dtype \
                and dims_equal(w.shape[0], x.shape[-1]) and _same(wm.output.shape, x.shape):
            weight, target = w, wm
    new = g.create_node("rms_norm", [x, weight], {"axis": -1, "eps": eps}, name=m.name)
    g.insert_before(target, new)
    g.replace_all_uses(target.output, new.output)
