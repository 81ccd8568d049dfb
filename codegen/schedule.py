"""Partition a graph into kernels and plan their buffers (DESIGN.md §5).

Kernel kinds:
- ``fused``: a tree of elementwise ops, optionally feeding one *row op* (a reduction or
  normalisation over the trailing axes: softmax, layer_norm, rms_norm, reduce_*) whose result
  may in turn feed a chain of elementwise ops (the epilogue). One loop nest, one kernel.
- ``view``: reshape-like ops, transposes and positive-step slices: the output aliases the
  input's buffer (transposes and slices as strided views).
- ``library``: dense float GEMM, convolution, attention and pooling, run by torch (oneDNN/MKL
  on CPU, cuBLAS on GPU) where a generated kernel would not beat it.
- ``template``: one matmul-like compression op rendered from a backend template.
- ``reference``: an op the backend has no kernel for; its torch reference runs it. The
  backend's table names these ops explicitly.

The partition is backend-neutral apart from a :class:`Caps` record saying which ops the
backend renders; C and Triton share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import sympy
import torch

from ..ir.graph import Graph, Node, Value
from ..ir.ops import get_op
from ..ir.types import dims_equal

# Reshape-like ops alias their input; ``transpose`` is a strided view that consumers needing
# contiguous data (generated kernels) materialise, while torch library kernels read it as is.
VIEW_OPS = frozenset({"reshape", "squeeze", "unsqueeze", "flatten", "identity", "transpose"})


def is_view(n: Node) -> bool:
    """Whether node ``n`` runs as a view of its input: the VIEW_OPS, and ``slice`` with
    positive steps (a strided view, like ``transpose``; the q / k / v slices of a fused QKV
    projection were whole-tensor copies)."""
    if len(n.outputs) != 1:
        return False
    if n.op == "slice":
        return all(k > 0 for k in (n.attrs["steps"] or (1,)))
    return n.op in VIEW_OPS


LIBRARY_OPS = frozenset({"linear", "matmul", "conv", "conv_transpose", "sdpa", "max_pool", "avg_pool",
                         "global_avg_pool", "global_max_pool"})
ROW_OPS = frozenset({"softmax", "log_softmax", "layer_norm", "rms_norm", "reduce_sum", "reduce_mean",
                     "reduce_max", "reduce_min", "reduce_sum_square", "reduce_l2", "reduce_logsumexp",
                     "reduce_prod"})


def _always(n: Node) -> bool:
    return True


@dataclass(frozen=True)
class Caps:
    """What a backend renders: elementwise ops (by name), row ops, template ops, library ops;
    ``node_ok``/``row_ok`` refine per node (e.g. dtypes the backend cannot load)."""

    elementwise: frozenset[str]
    row: frozenset[str] = ROW_OPS
    template: frozenset[str] = frozenset()
    library: frozenset[str] = LIBRARY_OPS
    # library op -> elementwise ops its library kernel applies to its output for free
    # (oneDNN post-ops: activations, and ``add`` of a same-shaped tensor)
    library_epilogue: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # library op -> activations its kernel also applies after its residual ``add`` (a ResNet
    # block's conv -> add -> relu)
    library_chain: Mapping[str, frozenset[str]] = field(default_factory=dict)
    node_ok: Callable[[Node], bool] = _always
    row_ok: Callable[[Node], bool] = _always
    # ops that the registry does not call elementwise but that fuse like broadcasting
    # elementwise ops where ``node_ok`` accepts the node (quantize with per-tensor or
    # last-axis parameters)
    pointwise: frozenset[str] = frozenset()
    template_ok: Callable[[Node], bool] = _always


@dataclass
class Kernel:
    """One unit of execution. ``nodes`` are in topological order; ``inputs`` are the values it
    reads from outside (graph inputs, constants, other kernels' outputs), ``outputs`` the values
    it writes that something outside reads."""

    name: str
    kind: str
    nodes: list[Node]
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    row: Node | None = None

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def describe(self) -> str:
        return f"{self.name} [{self.kind}] " + " -> ".join(self.ops)


@dataclass
class Schedule:
    graph: Graph
    kernels: list[Kernel]

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kernels:
            out[k.kind] = out.get(k.kind, 0) + 1
        return out

    def __str__(self) -> str:
        return "\n".join(k.describe() for k in self.kernels)


def _is_row_op(n: Node) -> bool:
    """Whether ``n`` reduces over a contiguous trailing block of axes (what a row kernel does)."""
    x = n.inputs[0]
    if x is None:
        return False
    rank = x.type.rank
    if rank == 0:
        return False
    if n.op in ("softmax", "log_softmax"):
        return n.attrs["axis"] % rank == rank - 1
    if n.op in ("layer_norm", "rms_norm"):
        return True  # they normalise over axis..end by definition
    axes = n.attrs.get("axes")
    if axes is None or len(axes) == 0:
        return True
    axs = sorted(a % rank for a in axes)
    return axs == list(range(rank - len(axs), rank))


def _same_shape(a: Value, b: Value) -> bool:
    sa, sb = a.type.shape, b.type.shape
    return len(sa) == len(sb) and all(dims_equal(x, y) for x, y in zip(sa, sb))


def partition(graph: Graph, caps: Caps) -> Schedule:
    """Split ``graph`` into kernels (see module doc).

    Fusion rule: an elementwise producer joins its consumer's kernel when it has exactly one
    reader, is not a graph output, and has the consumer's loop shape. Groups are therefore
    in-trees, which cannot create a cycle between kernels. A row op absorbs the tree that
    computes its main input (the prologue) and the single-reader elementwise chain after it
    with the row op's output shape (the epilogue).

    Dead nodes (see :func:`live_nodes`) are left out of every kernel.
    """
    outputs = {id(v) for v in graph.outputs}
    # Dead nodes (nothing they compute reaches an output) get no kernel: their results would
    # have no buffer, and counting them as readers would block fusion and keep values alive.
    nodes = live_nodes(graph)
    readers: dict[int, int] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None:
                readers[id(v)] = readers.get(id(v), 0) + 1

    def kind_of(n: Node) -> str:
        if is_view(n):
            return "view"
        if n.op in caps.elementwise and (get_op(n.op).elementwise or n.op in caps.pointwise) \
                and caps.node_ok(n):
            return "elementwise"
        if n.op in caps.row and _is_row_op(n) and caps.row_ok(n):
            return "row"
        if n.op in caps.library:
            return "library"
        if n.op in caps.template and caps.template_ok(n):
            return "template"
        return "reference"

    kinds = {id(n): kind_of(n) for n in nodes}
    # Library epilogues first, so that the elementwise grouping below leaves them alone.
    epilogue: dict[int, list[Node]] = {}

    def sole_reader(v: Value) -> Node | None:
        if readers.get(id(v), 0) != 1 or id(v) in outputs:
            return None
        return next(u for u in v.users() if id(u) in kinds)

    for n in nodes:
        allowed = caps.library_epilogue.get(n.op)
        if kinds[id(n)] != "library" or not allowed or len(n.outputs) != 1:
            continue
        out = n.outputs[0]
        if readers.get(id(out), 0) != 1 or id(out) in outputs:
            continue
        r = next(u for u in out.users() if id(u) in kinds)          # its one live reader
        # an add of two GEMM results (a parallel residual: GPT-NeoX, Phi) is the epilogue
        # of the first GEMM only; claimed twice, it sat in two kernels that waited on each other
        # a batch norm after a convolution is run by the library step itself (torch's
        # inference kernel), not by generated code
        if kinds[id(r)] == "epilogue" or r.op not in allowed or \
                (r.op != "batch_norm" and not caps.node_ok(r)) or not _same_shape(r.outputs[0], out):
            continue
        if r.op == "add":
            other = r.inputs[1] if r.inputs[0] is out else r.inputs[0]
            if other is out or not _same_shape(other, out) or other.dtype != out.dtype:
                continue
        epilogue[id(n)] = [r]
        kinds[id(r)] = "epilogue"
        if r.op in ("add", "batch_norm") and n.op in caps.library_chain:
            a = sole_reader(r.outputs[0])
            if a is not None and a.op in caps.library_chain[n.op] and kinds[id(a)] == "elementwise" \
                    and caps.node_ok(a) and len(a.inputs) == 1 and _same_shape(a.outputs[0], out):
                epilogue[id(n)].append(a)
                kinds[id(a)] = "epilogue"
    group: dict[int, int] = {}          # node id -> group id (the root's id)
    members: dict[int, list[Node]] = {}

    def private(v: Value) -> bool:
        return readers.get(id(v), 0) == 1 and id(v) not in outputs

    # Walk in reverse topological order so that each root collects its producer tree.
    for n in reversed(nodes):
        k = kinds[id(n)]
        if k not in ("elementwise", "row") or id(n) in group:
            continue
        gid = id(n)
        group[gid] = gid
        members[gid] = [n]
        has_row = k == "row"
        stack = [n]
        while stack:
            m = stack.pop()
            # A row op only absorbs the producers of its main input (inputs[0]); its weights
            # and biases are read as they are.
            ins = m.inputs[:1] if kinds[id(m)] == "row" else m.inputs
            for v in ins:
                p = v.producer if v is not None else None
                if p is None or id(p) in group or p.graph is not graph:
                    continue
                pk = kinds[id(p)]
                if pk == "row" and has_row:
                    continue
                if pk not in ("elementwise", "row") or len(p.outputs) != 1 or not private(v):
                    continue
                if not _same_shape(v, m.outputs[0] if kinds[id(m)] != "row" else v):
                    continue
                if pk == "row":
                    # A row op below an elementwise root: the root is its epilogue, which must
                    # run on the row op's output shape.
                    if not _same_shape(p.outputs[0], n.outputs[0]):
                        continue
                    has_row = True
                group[id(p)] = gid
                members[gid].append(p)
                stack.append(p)

    order = {id(n): i for i, n in enumerate(nodes)}
    kernels: list[Kernel] = []
    emitted: set[int] = set()
    for n in nodes:
        if id(n) in emitted:
            continue
        if id(n) in group:
            knodes = sorted(members[group[id(n)]], key=lambda m: order[id(m)])
            kind = "fused"
        elif id(n) in epilogue:
            knodes, kind = [n, *epilogue[id(n)]], "library"
        else:
            knodes = [n]
            kind = {"view": "view", "library": "library", "template": "template"}.get(
                kinds[id(n)], "reference")
        # A group is emitted at the position of its last node; since groups are in-trees whose
        # external inputs come from earlier nodes, emitting at the first member is equivalent.
        for m in knodes:
            emitted.add(id(m))
        kernels.append(_make_kernel(f"k{len(kernels)}", kind, knodes, readers, outputs))
    kernels = _order_kernels(kernels)
    for i, k in enumerate(kernels):
        k.name = f"k{i}"
    return Schedule(graph, kernels)


def live_nodes(graph: Graph) -> list[Node]:
    """The nodes of ``graph`` that must run, in graph order: those whose results reach a graph
    output, and nodes of ops that bind symbols from their data (``OpDef.binds``: later nodes
    may use those sizes without reading the values), with everything they read. The graph is
    not changed; the rest is dead code that no kernel needs to compute."""
    import networkx as nx

    from ..ir.analysis import to_networkx

    g = to_networkx(graph)
    sink = object()   # a virtual node every root feeds: its ancestors are the live nodes
    g.add_node(sink)
    for v in graph.outputs:
        p = v.producer if v is not None else None
        if p is not None and p in g:
            g.add_edge(p, sink)
    for n in graph.nodes:
        if get_op(n.op).binds:
            g.add_edge(n, sink)
    live = nx.ancestors(g, sink)
    return [n for n in graph.nodes if n in live]


def split_row(k: Kernel) -> tuple[list[Node], list[Node]]:
    """A fused row kernel's prologue (the nodes computing the row op's main input) and epilogue
    (the rest after the row op), each in topological order."""
    row = k.row
    assert row is not None
    x = row.inputs[0]
    inside = {id(n) for n in k.nodes}
    pro_ids: set[int] = set()
    stack = [x.producer] if x.producer is not None and id(x.producer) in inside else []
    while stack:
        n = stack.pop()
        if id(n) in pro_ids:
            continue
        pro_ids.add(id(n))
        stack += [v.producer for v in n.inputs
                  if v is not None and v.producer is not None and id(v.producer) in inside]
    pro = [n for n in k.nodes if id(n) in pro_ids]
    epi = [n for n in k.nodes if id(n) not in pro_ids and n is not row]
    return pro, epi


def _make_kernel(name: str, kind: str, nodes: list[Node], readers: Mapping[int, int],
                 outputs: set[int]) -> Kernel:
    inside = {id(o) for m in nodes for o in m.outputs}
    ins: list[Value] = []
    seen: set[int] = set()
    for m in nodes:
        for v in m.inputs:
            if v is not None and id(v) not in inside and id(v) not in seen:
                seen.add(id(v))
                ins.append(v)
    used_inside: dict[int, int] = {}
    for m in nodes:
        for v in m.inputs:
            if v is not None and id(v) in inside:
                used_inside[id(v)] = used_inside.get(id(v), 0) + 1
    outs = [o for m in nodes for o in m.outputs
            if id(o) in outputs or readers.get(id(o), 0) > used_inside.get(id(o), 0)]
    row = next((m for m in nodes if m.op in ROW_OPS and kind == "fused"), None)
    return Kernel(name, kind, nodes, ins, outs, row)


def _order_kernels(kernels: list[Kernel]) -> list[Kernel]:
    """A topological order of kernels (stable), via networkx."""
    import networkx as nx

    prod: dict[int, int] = {}
    for i, k in enumerate(kernels):
        for m in k.nodes:
            for o in m.outputs:
                prod[id(o)] = i
    g = nx.DiGraph()
    g.add_nodes_from(range(len(kernels)))
    for i, k in enumerate(kernels):
        for v in k.inputs:
            j = prod.get(id(v))
            if j is not None and j != i:
                g.add_edge(j, i)
    return [kernels[i] for i in nx.lexicographical_topological_sort(g)]


# ---- buffer planning ------------------------------------------------------------------------
@dataclass
class BufferPlan:
    """Offsets of every intermediate in one arena, for one binding of the symbols."""

    offsets: dict[int, int]        # id(Value) -> byte offset in the arena
    sizes: dict[int, int]          # id(Value) -> bytes
    alias: dict[int, int]          # id(view Value) -> id(base Value)
    arena_bytes: int
    naive_bytes: int               # what one buffer per value would take

    @property
    def reuse_ratio(self) -> float:
        return self.arena_bytes / self.naive_bytes if self.naive_bytes else 1.0


ALIGN = 64


@dataclass
class Liveness:
    """The binding-independent half of a buffer plan: which values get arena space, the
    value each view aliases, and which planned buffers are live at the same time."""

    planned: list[int]                  # ids of planned values, in order of their first step
    value: dict[int, Value]             # id -> the planned Value (its type gives the size)
    alias: dict[int, int]               # id(view Value) -> id(base Value)
    conflicts: dict[int, list[int]]     # id -> planned ids live with it and placed before it
    symbolic: frozenset[int]            # planned ids whose size depends on the binding


def liveness(schedule: Schedule, exclude: Iterable[Value] = ()) -> Liveness:
    """Live intervals (in kernel steps) of the values ``plan_buffers`` places, and their
    conflicts. Values in ``exclude`` (graph outputs, which must outlive a call), graph inputs
    and constants get no arena space. A view's output aliases its input's buffer, so the base
    stays live as long as any view of it does."""
    excluded = {id(v) for v in exclude}
    base: dict[int, int] = {}
    step_of_def: dict[int, int] = {}
    last_use: dict[int, int] = {}
    value: dict[int, Value] = {}
    for step, k in enumerate(schedule.kernels):
        for v in k.inputs:
            b = base.get(id(v), id(v))
            last_use[b] = max(last_use.get(b, -1), step)
        for o in k.outputs:
            if k.kind == "view":
                src = k.nodes[0].inputs[0]
                base[id(o)] = base.get(id(src), id(src))
                continue
            step_of_def[id(o)] = step
            value[id(o)] = o
    # A view of an excluded value (graph output) or of a graph input needs no planning. A
    # planned value viewed by a graph output must survive to the end of the call: the output
    # is read (and copied out of the arena) only after the last kernel.
    for vid in excluded:
        if vid in base:
            last_use[base[vid]] = len(schedule.kernels)
    intervals = sorted((s, last_use.get(vid, s), vid) for vid, s in step_of_def.items() if vid not in excluded)
    # Two buffers conflict when their live intervals overlap: the conflict graph is an
    # interval graph, and placing buffers in order of their first step is the optimal
    # colouring order for it. Only conflicts with buffers placed earlier matter to first fit.
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(v for _, _, v in intervals)
    active: list[tuple[int, int]] = []  # (end, vid), sweeping by start
    for s, e, vid in intervals:
        active = [(pe, pv) for pe, pv in active if pe >= s]
        g.add_edges_from((vid, pv) for _, pv in active)
        active.append((e, vid))
    rank = {vid: i for i, (_, _, vid) in enumerate(intervals)}
    conflicts = {vid: [u for u in g[vid] if rank[u] < rank[vid]] for _, _, vid in intervals}
    symbolic = frozenset(v for _, _, v in intervals if not value[v].type.is_static)
    return Liveness([v for _, _, v in intervals], {v: value[v] for _, _, v in intervals}, base, conflicts,
                    symbolic)


def plan_buffers(schedule: Schedule, env: Mapping[sympy.Symbol, int],
                 exclude: Iterable[Value] = (), live: Liveness | None = None) -> BufferPlan:
    """Assign arena offsets to kernel outputs by liveness (first fit on an interval graph).

    ``live`` is ``liveness(schedule, exclude)`` when the caller keeps it across bindings
    (only the sizes, and so the offsets, depend on ``env``). Postcondition: two planned values
    live at the same step never overlap in the arena, and every offset is 64-byte aligned.
    """
    if live is None:
        live = liveness(schedule, exclude)
    size: dict[int, int] = {}
    for vid in live.planned:
        t = live.value[vid].type
        size[vid] = value_bytes(t.concrete(env), t.dtype.container)
    return first_fit(live, size)


def value_bytes(shape: Iterable[int], container: torch.dtype) -> int:
    """Bytes of a runtime buffer of ``shape``: sub-byte codes are held one per byte of their
    container, so they are sized by it."""
    n = 1
    for d in shape:
        n *= d
    return n * container.itemsize


def first_fit(live: Liveness, size: Mapping[int, int]) -> BufferPlan:
    """The plan of ``live``'s values with ``size`` (bytes by value id, for every planned value):
    each buffer, in order of its first step, at the lowest 64-byte aligned offset clear of the
    earlier-placed buffers it is live with."""
    offsets: dict[int, int] = {}
    arena = 0
    for vid in live.planned:
        need = max(size[vid], 1)
        taken = sorted((offsets[u], offsets[u] + max(size[u], 1)) for u in live.conflicts[vid])
        off = 0
        for lo, hi in taken:
            if off + need <= lo:
                break
            off = max(off, _align(hi))
        offsets[vid] = off
        arena = max(arena, off + need)
    naive = sum(_align(size[v]) for v in live.planned)
    return BufferPlan(offsets, {v: size[v] for v in live.planned}, live.alias, _align(arena), naive)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
