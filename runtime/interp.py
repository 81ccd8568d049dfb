"""The reference interpreter: runs any valid graph with the ops' torch reference implementations.

It is the ground truth for kernels and the engine of calibration, so it favours clarity and
checking over speed: every input is checked against its declared type, symbolic dims are bound
from the inputs, and (with ``check=True``) every node's result is checked against the node's
declared output type.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import sympy
import torch

from ..ir.dim_eval import eval_dim
from ..ir.errors import ExecutionError, ScalefoldError, ShapeError
from ..ir.graph import Graph, Node, Value
from ..ir.ops import get_op
from ..ir.ops.common import bind_dims
from ..ir.types import TensorType, dim_str

Hook = Callable[[Node, Sequence[torch.Tensor]], None]


def _input_label(graph: Graph, i: int) -> str:
    v = graph.inputs[i]
    return f"input '{v.name}' (#{i})" if v.name else f"input #{i}"


def bind_symbols(graph: Graph, inputs: Sequence[torch.Tensor]) -> dict[sympy.Symbol, int]:
    """Bind the graph's dimension symbols from concrete inputs.

    Checks count, rank, dtype and every dimension of each input; raises ShapeError naming the
    input. Bare symbols are bound first; compound dims (``2*S``) are then solved for a single
    unknown symbol or checked.
    """
    if len(inputs) != len(graph.inputs):
        raise ShapeError(f"graph @{graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    env: dict[sympy.Symbol, int] = {}
    pending: list[tuple[int, int, sympy.Expr, int]] = []
    for i, (v, t) in enumerate(zip(graph.inputs, inputs)):
        label = _input_label(graph, i)
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{label}: expected a torch.Tensor, got {type(t).__name__}")
        want: TensorType = v.type
        if t.dtype != want.dtype.container:
            raise ShapeError(f"{label}: expected dtype {want.dtype.name} ({want.dtype.container}), "
                             f"got {t.dtype}")
        if t.dim() != want.rank:
            raise ShapeError(f"{label}: expected rank {want.rank} ({want}), got shape {tuple(t.shape)}")
        for ax, (d, n) in enumerate(zip(want.shape, t.shape)):
            n = int(n)
            if isinstance(d, int):
                if d != n:
                    raise ShapeError(f"{label}: dim {ax} is {n}, expected {d} ({want})")
            elif isinstance(d, sympy.Symbol):
                if d in env and env[d] != n:
                    raise ShapeError(f"{label}: dim {ax} is {n}, but {d} = {env[d]} from an earlier dim")
                env[d] = n
            else:
                pending.append((i, ax, d, n))
    for i, ax, d, n in pending:
        label = _input_label(graph, i)
        expr = d.subs(env)
        free = list(expr.free_symbols)
        if not free:
            if int(expr) != n:
                raise ShapeError(f"{label}: dim {ax} is {n}, expected {dim_str(d)} = {int(expr)}")
            continue
        if len(free) > 1:
            raise ShapeError(f"{label}: dim {ax} ({dim_str(d)}) has several unbound symbols")
        sols = [s for s in sympy.solve(sympy.Eq(expr, n), free[0]) if s.is_Integer and s > 0]
        if len(sols) != 1:
            raise ShapeError(f"{label}: dim {ax} is {n}, which fits no positive integer "
                             f"{free[0]} in {dim_str(d)}")
        env[free[0]] = int(sols[0])
    ranges = getattr(graph, "dim_ranges", None)
    if ranges:
        for s, n in env.items():
            lo, hi = ranges.get(s.name, (None, None))
            if (lo is not None and n < lo) or (hi is not None and n > hi):
                raise ShapeError(f"graph @{graph.name}: {s.name} = {n} is outside {lo}..{hi}, the range "
                                 f"torch.export gave it, with which sizes of this graph were "
                                 f"simplified; export with a wider Dim range")
    for e in getattr(graph, "dim_guards", ()):
        v = eval_dim(e, env)
        if isinstance(v, int) and v < 0:
            bound = ", ".join(f"{s.name} = {n}" for s, n in sorted(env.items(), key=lambda kv: kv[0].name)
                              if s in e.free_symbols)
            raise ShapeError(f"graph @{graph.name}: {bound} breaks {dim_str(e)} >= 0, a condition "
                             f"torch.export assumed for these sizes (its exported program refuses them too)")
    return env


class Interpreter:
    """Runs ``graph`` node by node. ``hook(node, outputs)`` sees every node's results
    (calibration observers use it)."""

    def __init__(self, graph: Graph, check: bool = True):
        self.graph = graph
        self.check = check
        # Free each intermediate after its last reader so memory stays near the graph's peak.
        last: dict[int, int] = {}
        for step, n in enumerate(graph.nodes):
            for v in n.inputs:
                if v is not None and not v.is_const:
                    last[id(v)] = step
        keep = {id(v) for v in graph.outputs}
        self._free_after: list[list[Value]] = [[] for _ in graph.nodes]
        for step, n in enumerate(graph.nodes):
            for v in list(n.inputs) + list(n.outputs):
                if v is None or v.is_const or id(v) in keep:
                    continue
                if last.get(id(v), step) == step and v not in self._free_after[step]:
                    self._free_after[step].append(v)

    def _const_storages(self) -> set[int]:
        """Storages of the graph's constants (an output may be a view of one); recomputed
        when a pass replaced a constant since the last run."""
        consts = [v.const for v in self.graph.constants() if v.const is not None and v.const.numel()]
        key = tuple(id(c) for c in consts)
        if getattr(self, "_consts_key", None) != key:
            self._consts_key = key
            self._consts_at = {c.untyped_storage().data_ptr() for c in consts}
        return self._consts_at

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return self.run(inputs)

    def run(self, inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
            hook: Hook | None = None) -> list[torch.Tensor]:
        g = self.graph
        if isinstance(inputs, Mapping):
            missing = [v.name for v in g.inputs if v.name not in inputs]
            if missing:
                raise ShapeError(f"missing input(s): {', '.join(map(str, missing))}")
            inputs = [inputs[v.name] for v in g.inputs]  # type: ignore[index]
        inputs = list(inputs)
        env = bind_symbols(g, inputs)
        vals: dict[int, torch.Tensor] = {id(v): t for v, t in zip(g.inputs, inputs)}

        def fetch(v: Value | None) -> torch.Tensor | None:
            if v is None:
                return None
            if v.is_const:
                return v.const
            return vals[id(v)]

        for step, node in enumerate(g.nodes):
            opdef = get_op(node.op)
            args = [fetch(v) for v in node.inputs]
            try:
                # Symbolic attrs (reshape targets, arange ends) become ints for this run.
                res = opdef.reference(args, bind_dims(node.attrs, env))
            except ScalefoldError:
                raise
            except Exception as e:  # torch errors become one line naming the node
                raise ExecutionError(f"node {node.describe()} ({node.op}) failed: "
                                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
            if len(outs) != len(node.outputs):
                raise ExecutionError(f"node {node.describe()}: reference returned {len(outs)} "
                                     f"outputs, expected {len(node.outputs)}")
            if self.check:
                for o, t in zip(node.outputs, outs):
                    _check_result(node, o, t, env)
            if hook is not None:
                hook(node, outs)
            for o, t in zip(node.outputs, outs):
                vals[id(o)] = t
                if opdef.binds:
                    # data-dependent sizes (nonzero's count): later nodes may read them
                    for d, n in zip(o.type.shape, t.shape):
                        if isinstance(d, sympy.Symbol) and d not in env:
                            env[d] = int(n)
            for v in self._free_after[step]:
                vals.pop(id(v), None)
        # the caller gets fresh tensors: never a graph constant or its own input passed
        # through (x.clone() becomes identity), which writing to the output would change
        given = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, torch.Tensor) and x.numel()}
        consts = self._const_storages()
        outs_ = [fetch(v) for v in g.outputs]
        return [t.clone() if isinstance(t, torch.Tensor) and (v.is_const or (
                    t.numel() and (t.untyped_storage().data_ptr() in given
                                   or t.untyped_storage().data_ptr() in consts))) else t
                for v, t in zip(g.outputs, outs_)]  # type: ignore[misc]


def declared_shapes(node: Node, env: Mapping[sympy.Symbol, int]) -> list[tuple[int, ...] | None]:
    """The concrete shapes ``node``'s outputs must have under ``env`` (None: a dim bound only
    by the data, nothing to check against)."""
    out: list[tuple[int, ...] | None] = []
    for o in node.outputs:
        try:
            out.append(o.type.concrete(dict(env)))
        except ScalefoldError:
            out.append(None)
    return out


def check_shape(node: Node, i: int, t: torch.Tensor, want: Sequence[tuple[int, ...] | None]) -> None:
    """Output ``i`` of ``node`` must have its declared shape ``want[i]`` (generated kernels
    read it by that shape: a symbol bound to 0 under a Min(1, S) simplified to 1 once read past
    the end of a (2, 0) slice)."""
    w = want[i] if i < len(want) else None
    if w is not None and tuple(t.shape) != w:
        raise ExecutionError(f"node {node.describe()}: produced shape {tuple(t.shape)}, "
                             f"declared {node.outputs[i].type} = {w}")


def _check_result(node: Node, v: Value, t: torch.Tensor, env: Mapping[sympy.Symbol, int]) -> None:
    want = v.type
    if t.dtype != want.dtype.container:
        raise ExecutionError(f"node {node.describe()}: produced dtype {t.dtype}, declared {want}")
    check_shape(node, v.index, t, declared_shapes(node, env))


def run(graph: Graph, *inputs: torch.Tensor, check: bool = True) -> list[torch.Tensor]:
    """Run ``graph`` on ``inputs`` with the reference implementations; returns the outputs."""
    return Interpreter(graph, check=check).run(inputs)
