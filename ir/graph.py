"""Value, Node and Graph: the SSA graph IR (DESIGN.md §3).

Invariants the mutation helpers keep:
- every Value has at most one producer (a Node output), or is a graph input, or a constant;
- ``value.uses`` lists exactly the (node, input index) pairs that read it, in no set order;
- ``graph.nodes`` is in a topological order.
Code outside this file mutates graphs only through these helpers.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sympy
import torch

from . import dtypes as dt
from .errors import IRError
from .types import Dim, TensorType, canon_dim

AttrValue = Any  # int | float | str | bool | None | sympy.Expr | tuple[AttrValue, ...]


def _freeze(v: Any) -> AttrValue:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dt.DType):
        return v.name
    if isinstance(v, bool) or v is None or isinstance(v, (str, float)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, sympy.Basic):
        return canon_dim(v)
    if hasattr(v, "__index__"):
        return int(v)
    raise IRError(f"attribute value {v!r} of type {type(v).__name__} is not allowed")


class Attrs(Mapping[str, AttrValue]):
    """An immutable, key-sorted attribute mapping (lists are stored as tuples)."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        pairs = items.items() if isinstance(items, Mapping) else items
        frozen = sorted((str(k), _freeze(v)) for k, v in pairs)
        self._items: tuple[tuple[str, AttrValue], ...] = tuple(frozen)
        self._map = dict(frozen)

    def __getitem__(self, key: str) -> AttrValue:
        return self._map[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._map == dict(other)
        return NotImplemented

    def replace(self, **kw: Any) -> "Attrs":
        d = dict(self._map)
        d.update(kw)
        return Attrs(d)

    def __repr__(self) -> str:
        return f"Attrs({dict(self._items)!r})"


class Value:
    """One SSA tensor. ``const`` holds a CPU tensor (in the dtype's container) for constants."""

    __slots__ = ("type", "name", "producer", "index", "uses", "const", "__weakref__")

    def __init__(self, type: TensorType, name: str | None = None,
                 const: torch.Tensor | None = None):
        self.type = type
        self.name = name
        self.producer: Node | None = None
        self.index = 0
        self.uses: list[tuple[Node, int]] = []
        self.const = const

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def dtype(self) -> dt.DType:
        return self.type.dtype

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    def users(self) -> list["Node"]:
        """Distinct nodes that read this value, in first-use order."""
        seen: dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def const_hash(self) -> str:
        """sha256 over dtype, shape and bytes of a constant (first 16 hex digits)."""
        if self.const is None:
            raise IRError("const_hash of a non-constant value")
        return tensor_hash(self.const, self.type)

    def __repr__(self) -> str:
        kind = "const" if self.is_const else ("input" if self.producer is None else self.producer.op)
        return f"<Value {self.name or '?'}: {self.type} ({kind})>"


def tensor_hash(t: torch.Tensor, type: TensorType) -> str:
    h = hashlib.sha256()
    h.update(str(type).encode())
    c = t.detach().contiguous().cpu()
    if c.dtype in (torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16):
        c = c.view(torch.uint8) if c.element_size() == 1 else c.view(torch.int16)
    h.update(c.numpy().tobytes())
    return h.hexdigest()[:16]


class Node:
    """One op application: ``outputs = op[attrs](inputs)``. Inputs may contain ``None``
    for an omitted optional operand."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "graph", "name", "__weakref__")

    def __init__(self, op: str, inputs: Sequence[Value | None], attrs: Attrs,
                 outputs: Sequence[Value], name: str | None = None):
        self.op = op
        self.inputs: list[Value | None] = list(inputs)
        self.attrs = attrs
        self.outputs: list[Value] = list(outputs)
        self.graph: Graph | None = None
        self.name = name

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.describe()} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def describe(self) -> str:
        """A short label for messages: the op, its name if any, and its position."""
        pos = ""
        if self.graph is not None:
            try:
                pos = f" #{self.graph.nodes.index(self)}"
            except ValueError:
                pos = ""
        nm = f" '{self.name}'" if self.name else ""
        return f"{self.op}{nm}{pos}"

    def __repr__(self) -> str:
        return f"<Node {self.describe()}>"


class Graph:
    """A function: typed inputs, nodes in topological order, outputs.

    Constants are Values with ``const`` set and no producer; they are not listed separately
    but found through node inputs (``graph.constants()``).
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] = []
        # symbol name -> inclusive (low, high) bounds (None: unbounded) the graph's sizes were
        # simplified with at import (frontend/dim_ranges.py); bindings outside are refused
        self.dim_ranges: dict[str, tuple[int | None, int | None]] = {}
        # size expressions that must be >= 0 at every binding: conditions between symbols the
        # importer relied on (torch.export's guards, e.g. W - N for x[:, -N:] on W columns)
        self.dim_guards: list[Dim] = []

    # ---- construction -------------------------------------------------------------
    def add_input(self, type: TensorType | str, name: str | None = None) -> Value:
        if isinstance(type, str):
            type = _parse_type(type)
        v = Value(type, name or f"in{len(self.inputs)}")
        self.inputs.append(v)
        return v

    def add_const(self, tensor: torch.Tensor, dtype: dt.DType | str | None = None,
                  name: str | None = None) -> Value:
        """A constant Value holding ``tensor`` (converted to the dtype's container)."""
        d = dt.get(dtype) if dtype is not None else dt.from_torch(tensor.dtype)
        t = tensor.detach().cpu()
        if t.dtype != d.container:
            t = dt.to_container(t, d)
        return Value(TensorType(d, tuple(t.shape)), name, const=t.contiguous())

    def create_node(self, op: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
                    out_types: Sequence[TensorType] | None = None, name: str | None = None) -> Node:
        """A new node, not yet in the graph. Output types come from the op's shape rule
        unless ``out_types`` is given. Use :meth:`append` or :meth:`insert_before` to place it."""
        from .ops import get_op  # local: ops import graph for types
        opdef = get_op(op)
        a = opdef.bind_attrs(attrs or {}, where=op)
        if out_types is None:
            out_types = opdef.infer([v.type if v is not None else None for v in inputs], a)
        outs = [Value(t) for t in out_types]
        node = Node(op, inputs, a, outs, name)
        for i, v in enumerate(outs):
            v.producer, v.index = node, i
        return node

    def _attach(self, node: Node) -> None:
        if node.graph is not None:
            raise IRError(f"node {node.describe()} is already in a graph")
        node.graph = self
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses.append((node, i))

    def append(self, node: Node) -> Node:
        self._attach(node)
        self.nodes.append(node)
        return node

    def add(self, op: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
            out_types: Sequence[TensorType] | None = None, name: str | None = None) -> Value | tuple[Value, ...]:
        """Append a new node; returns its output (or a tuple of outputs)."""
        n = self.append(self.create_node(op, inputs, attrs, out_types, name))
        return n.outputs[0] if len(n.outputs) == 1 else tuple(n.outputs)

    def insert_before(self, anchor: Node, node: Node) -> Node:
        idx = self._index(anchor)
        self._attach(node)
        self.nodes.insert(idx, node)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        idx = self._index(anchor)
        self._attach(node)
        self.nodes.insert(idx + 1, node)
        return node

    def set_outputs(self, outputs: Sequence[Value], names: Sequence[str] | None = None) -> None:
        self.outputs = list(outputs)
        self.output_names = list(names) if names is not None else [f"out{i}" for i in range(len(outputs))]

    # ---- mutation -----------------------------------------------------------------
    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        old = node.inputs[index]
        if old is not None:
            old.uses.remove((node, index))
        node.inputs[index] = value
        if value is not None and node.graph is self:
            value.uses.append((node, index))

    def replace_all_uses(self, old: Value, new: Value) -> int:
        """Point every reader of ``old`` (and graph outputs) at ``new``; returns how many."""
        if old is new:
            return 0
        uses = list(old.uses)
        for node, i in uses:
            node.inputs[i] = new
            new.uses.append((node, i))
        old.uses.clear()
        n = len(uses)
        for i, o in enumerate(self.outputs):
            if o is old:
                self.outputs[i] = new
                n += 1
        return n

    def remove(self, node: Node) -> None:
        """Remove a node whose outputs are unused (raises IRError otherwise)."""
        for v in node.outputs:
            if v.uses or any(o is v for o in self.outputs):
                raise IRError(f"cannot remove {node.describe()}: output still used")
        idx = self._index(node)
        for i, v in enumerate(node.inputs):
            if v is not None:
                v.uses.remove((node, i))
        del self.nodes[idx]
        node.graph = None

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise IRError(f"node {node.describe()} is not in graph @{self.name}")

    def sort(self) -> None:
        """Re-order nodes topologically (stable: keeps the current order where legal)."""
        from .analysis import topo_order
        self.nodes = topo_order(self)

    # ---- queries ------------------------------------------------------------------
    def constants(self) -> list[Value]:
        """Constant values read by nodes or returned, in first-use order."""
        seen: dict[int, Value] = {}
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and v.is_const:
                    seen.setdefault(id(v), v)
        for v in self.outputs:
            if v.is_const:
                seen.setdefault(id(v), v)
        return list(seen.values())

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for n in self.nodes:
            yield from n.outputs

    @property
    def symbols(self) -> list[sympy.Symbol]:
        """Dimension symbols of the graph inputs, sorted by name."""
        out: set[sympy.Symbol] = set()
        for v in self.inputs:
            out |= v.type.symbols
        return sorted(out, key=lambda s: s.name)

    def to_networkx(self):
        from .analysis import to_networkx
        return to_networkx(self)

    def clone(self) -> "Graph":
        """A deep copy of the structure; constant tensors are shared (they are immutable)."""
        g = Graph(self.name)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            nv = Value(v.type, v.name)
            vmap[id(v)] = nv
            g.inputs.append(nv)

        def m(v: Value | None) -> Value | None:
            if v is None:
                return None
            if id(v) not in vmap:
                if not v.is_const:
                    raise IRError(f"value {v!r} used before definition")
                vmap[id(v)] = Value(v.type, v.name, const=v.const)
            return vmap[id(v)]

        for n in self.nodes:
            outs = [Value(o.type, o.name) for o in n.outputs]
            nn_ = Node(n.op, [m(v) for v in n.inputs], n.attrs, outs, n.name)
            for i, o in enumerate(outs):
                o.producer, o.index = nn_, i
                vmap[id(n.outputs[i])] = o
            g.append(nn_)
        g.outputs = [m(v) for v in self.outputs]  # type: ignore[misc]
        g.dim_ranges = dict(self.dim_ranges)
        g.dim_guards = list(self.dim_guards)
        g.output_names = list(self.output_names)
        return g

    def __str__(self) -> str:
        from .printer import print_graph
        return print_graph(self)

    def __eq__(self, other: object) -> bool:
        """Structural equality: same canonical text and equal constant data."""
        if not isinstance(other, Graph):
            return NotImplemented
        # The printer writes every constant either as an exact literal or by content hash,
        # so equal text means equal constants too.
        return str(self) == str(other)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes>"


def _parse_type(text: str) -> TensorType:
    from .parser import parse_type
    return parse_type(text)

