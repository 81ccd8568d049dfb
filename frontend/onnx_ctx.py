"""The conversion context shared by the ONNX op converters.

Besides the name -> Value environment it tracks two kinds of compile-time knowledge, so that
the shape arithmetic ONNX exporters emit (Shape -> Gather -> Concat -> Reshape) folds into
symbolic attributes instead of becoming runtime data:
- ``known``: the full value of a tensor when it is a constant (initializer, Constant, folded);
- ``dims``: the value of a small integer tensor as a list of dims (ints or sympy expressions),
  e.g. the output of ``Shape`` on a tensor of type f32[B,S,64] is [B, S, 64].
A tensor known only symbolically is materialised with ``dim_values`` if a consumer needs it
as data.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import onnx
import sympy
import torch
from onnx import helper

from ..ir import dtypes as dt
from ..ir.errors import FrontendError, ScalefoldError, ShapeError
from ..ir.graph import Graph, Value
from ..ir.ops import get_op
from ..ir.types import Dim, canon_value

# Folding a node whose inputs are all constant is skipped above this many output elements,
# so that e.g. an Expand of a scalar to a huge shape stays a node rather than a big constant.
FOLD_LIMIT = 1 << 20

Converter = Callable[["Ctx", onnx.NodeProto, dict[str, Any]], Sequence[Value | None]]
_TABLE: dict[tuple[str, str], Converter] = {}


def onnx_op(*op_types: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Register ``fn(ctx, node, attrs) -> outputs`` as the converter of ``op_types``.

    ``attrs`` holds the node's attributes as python values (``helper.get_attribute_value``;
    tensors stay TensorProto). ``outputs`` has one entry per ONNX output (``None`` for an
    output the converter does not produce, which must then be unused).
    """
    def deco(fn: Converter) -> Converter:
        for t in op_types:
            key = (domain, t)
            if key in _TABLE:
                raise ValueError(f"ONNX op {domain or 'ai.onnx'}::{t} registered twice")
            _TABLE[key] = fn
        return fn
    return deco


def converter(domain: str, op_type: str) -> Converter | None:
    return _TABLE.get((domain if domain not in ("ai.onnx",) else "", op_type))


def supported_ops() -> list[tuple[str, str]]:
    return sorted(_TABLE)


class Ctx:
    """State of one ONNX -> IR conversion."""

    def __init__(self, graph: Graph, opset: int, opsets: Mapping[str, int]):
        self.graph = graph
        self.opset = opset
        self.opsets = dict(opsets)
        self.env: dict[str, Value] = {}
        self.known: dict[str, torch.Tensor] = {}
        self.dims: dict[str, tuple[list[Dim], dt.DType, bool]] = {}
        self.node: onnx.NodeProto | None = None
        self._fresh = 0
        #: symbol names the graph inputs' dims took: fresh symbols never reuse one
        self.taken: set[str] = set()
        #: constant-folded DequantizeLinear outputs -> the quantised weight they came from
        #: (``onnx_ops/qdq_weight.py``), so that MatMul / Gemm can keep the codes
        self.dq_source: dict[int, Any] = {}
        #: (id(weight value), transB) -> the qlinear constants made from it, shared by readers
        self.qdq_consts: dict[tuple[int, bool], Any] = {}

    # ---- reading ----------------------------------------------------------------------
    def where(self) -> str:
        n = self.node
        if n is None:
            return "ONNX graph"
        return f"node '{n.name}' ({n.op_type})" if n.name else f"node {n.op_type}"

    def has(self, name: str) -> bool:
        return bool(name) and (name in self.env or name in self.dims)

    def value(self, name: str) -> Value | None:
        """The IR value of ONNX tensor ``name`` ("" -> None), materialising symbolic shapes."""
        if not name:
            return None
        if name in self.env:
            return self.env[name]
        if name in self.dims:
            vals, d, scalar = self.dims[name]
            if all(isinstance(v, int) for v in vals):
                t = torch.tensor(vals, dtype=d.container)
                v = self.graph.add_const(t.reshape(()) if scalar else t, d, name)
            else:
                v = self.graph.add("dim_values", [], {"values": vals, "dtype": d.name,
                                                      "scalar": scalar})
            self.env[name] = v
            return v
        raise FrontendError(f"{self.where()}: tensor '{name}' is not defined")

    def input(self, i: int) -> Value | None:
        """The node's i-th input as a Value (None if absent or empty)."""
        assert self.node is not None
        ins = self.node.input
        return self.value(ins[i]) if i < len(ins) else None

    def const(self, name_or_index: str | int) -> torch.Tensor | None:
        """The constant value of a tensor (by name or by the current node's input index)."""
        name = self._name(name_or_index)
        if not name:
            return None
        if name in self.known:
            return self.known[name]
        if name in self.dims:
            vals, d, scalar = self.dims[name]
            if all(isinstance(v, int) for v in vals):
                t = torch.tensor(vals, dtype=d.container)
                return t.reshape(()) if scalar else t
        v = self.env.get(name)
        if v is not None and v.is_const:
            return v.const
        return None

    def dim_list(self, name_or_index: str | int) -> list[Dim] | None:
        """The value of a small integer tensor as dims, if known at compile time."""
        name = self._name(name_or_index)
        if not name:
            return None
        if name in self.dims:
            return list(self.dims[name][0])
        c = self.const(name)
        if c is not None and not c.is_floating_point() and c.dim() <= 1 and c.numel() <= 64:
            return [int(x) for x in c.reshape(-1).tolist()]
        return None

    def require_const(self, i: int, what: str) -> torch.Tensor:
        c = self.const(i)
        if c is None:
            raise FrontendError(f"{self.where()}: input {i} ({what}) must be a constant")
        return c

    def require_dims(self, i: int, what: str) -> list[Dim]:
        d = self.dim_list(i)
        if d is None:
            raise FrontendError(f"{self.where()}: input {i} ({what}) must be known at compile "
                                f"time (a constant or computed from shapes)")
        return d

    def _name(self, name_or_index: str | int) -> str:
        if isinstance(name_or_index, int):
            assert self.node is not None
            ins = self.node.input
            return ins[name_or_index] if name_or_index < len(ins) else ""
        return name_or_index

    # ---- writing ----------------------------------------------------------------------
    def add(self, op: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
            ) -> Value | tuple[Value, ...]:
        """Add an IR node, or fold it into a constant when all its inputs are constants."""
        try:
            node = self.graph.create_node(op, inputs, attrs)
        except ShapeError as e:
            raise ShapeError(f"{self.where()}: {e}") from None
        except ScalefoldError as e:
            raise FrontendError(f"{self.where()}: {e}") from None
        if self._foldable(node.inputs, node.attrs, [o.type for o in node.outputs]):
            opdef = get_op(op)
            try:
                res = opdef.reference([v.const if v is not None else None for v in node.inputs],
                                      node.attrs)
            except Exception:
                res = None  # leave it to run time, where errors are reported with context
            if res is not None:
                outs = list(res) if isinstance(res, (tuple, list)) else [res]
                vals = tuple(Value(o.type, None, const=t.contiguous()) for o, t in zip(node.outputs, outs))
                return vals[0] if len(vals) == 1 else vals
        self.graph.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else tuple(node.outputs)

    @staticmethod
    def _foldable(inputs: Sequence[Value | None], attrs: Mapping[str, Any], out_types) -> bool:
        if not all(v is None or v.is_const for v in inputs):
            return False
        if any(_has_symbol(v) for v in attrs.values()):
            return False
        if not all(t.is_static for t in out_types):
            return False
        return sum(int(t.numel()) for t in out_types) <= FOLD_LIMIT

    def set(self, name: str, v: Value | None) -> None:
        if not name:
            return
        if v is None:
            raise FrontendError(f"{self.where()}: output '{name}' was not produced")
        if v.name is None:
            v.name = name
        self.env[name] = v
        if v.is_const:
            self.known[name] = v.const

    def set_dims(self, name: str, vals: Sequence[Dim], d: dt.DType = dt.i64, scalar: bool = False) -> None:
        """Record that tensor ``name`` holds these dims (a shape computation)."""
        self.dims[name] = ([canon_value(v) for v in vals], d, scalar)

    def fresh_symbol(self, hint: str) -> sympy.Symbol:
        """A new dimension symbol for a data-dependent size (NonZero, Unique...)."""
        from ..ir.types import sym
        self._fresh += 1
        while f"{hint}{self._fresh}" in self.taken:
            self._fresh += 1
        return sym(f"{hint}{self._fresh}")


def _has_symbol(v: Any) -> bool:
    if isinstance(v, tuple):
        return any(_has_symbol(x) for x in v)
    return isinstance(v, sympy.Basic) and bool(v.free_symbols)


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """The node's attributes as python values (bytes decoded to str)."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8", "replace") for x in v]
        out[a.name] = v
    return out
