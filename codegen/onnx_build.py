"""The ONNX graph under construction: names, initializers, nodes and runtime shape arithmetic.

:class:`Emitter` is what every renderer in ``onnx_ops.py`` / ``onnx_quant.py`` talks to. It
hands out unique names, turns IR constants into initializers (once each, optionally in a
transformed layout such as W^T), emits nodes, and turns sympy dimension expressions into ONNX
nodes that compute them at run time from the graph inputs' shapes (``Shape -> arithmetic ->
Concat``), because ONNX takes shape operands as tensors.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch
from onnx import TensorProto, helper

from ..ir import dtypes as dt
from ..ir.errors import ScalefoldError
from ..ir.graph import Graph, Node, Value
from ..ir.types import Dim, dim_str

ONNX_DTYPE: dict[str, int] = {
    "f64": TensorProto.DOUBLE, "f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16, "i64": TensorProto.INT64, "i32": TensorProto.INT32,
    "i16": TensorProto.INT16, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
    "i4": TensorProto.INT4, "u4": TensorProto.UINT4, "bool": TensorProto.BOOL,
    "f8e4m3": TensorProto.FLOAT8E4M3FN, "f8e5m2": TensorProto.FLOAT8E5M2,
    "f4e2m1": TensorProto.FLOAT4E2M1,
}
# The first opset whose type system has the element type (older types exist since opset 1).
DTYPE_MIN_OPSET = {"f8e4m3": 19, "f8e5m2": 19, "i4": 21, "u4": 21, "f4e2m1": 23}
# Inside the graph f4e2m1 values travel as their uint8 codes (onnxruntime has no FLOAT4E2M1
# kernels); only graph inputs/outputs carry the FLOAT4E2M1 type itself (opset 23).
F4_MID = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)   # midpoints of the E2M1 magnitude grid


def onnx_type(d: dt.DType | str) -> int:
    """The ONNX element type an IR dtype has *inside* the exported graph."""
    d = dt.get(d)
    return TensorProto.UINT8 if d is dt.f4e2m1 else ONNX_DTYPE[d.name]

_VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")


class ExportError(ScalefoldError):
    """The graph cannot be expressed as ONNX at the requested opset (names the node)."""


def to_numpy(t: torch.Tensor, d: dt.DType) -> tuple[bytes, list[int]]:
    """Raw little-endian bytes of a container tensor as ONNX stores ``d`` (sub-byte types
    packed two per byte, low nibble first) and its dims."""
    c = t.detach().contiguous().cpu()
    dims = list(c.shape)
    if d is dt.f4e2m1:
        return c.numpy().tobytes(), dims
    if d.is_subbyte:
        codes = (c.to(torch.int16) & 0xF).to(torch.uint8).reshape(-1)
        if codes.numel() % 2:
            codes = torch.cat([codes, torch.zeros(1, dtype=torch.uint8)])
        packed = codes[0::2] | (codes[1::2] << 4)
        return packed.numpy().tobytes(), dims
    if c.dtype == torch.bfloat16:
        return c.view(torch.int16).numpy().tobytes(), dims
    if c.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return c.view(torch.uint8).numpy().tobytes(), dims
    return c.numpy().tobytes(), dims


class Emitter:
    """Collects the nodes and initializers of one exported graph."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.nbits_accuracy = 0                    # MatMulNBits accuracy_level (to_onnx)
        self.nodes: list[Any] = []
        self.initializers: list[TensorProto] = []
        self.domains: set[str] = set()
        self.used: set[str] = set()
        self.names: dict[int, str] = {}            # id(Value) -> ONNX name of its tensor
        self._const_names: dict[int, str] = {}     # id(const Value) -> initializer base name
        self._derived: dict[tuple[int, str], str] = {}
        self._small: dict[tuple, str] = {}
        self._dims: dict[Any, str] = {}
        self._sym_src: dict[sympy.Symbol, sympy.Expr] = {}
        self._dim_syms: dict[sympy.Symbol, tuple[str, int]] = {}
        self.current: Node | None = None
        self._counter = 0
        # stand-in Values made during the export (a bfloat16 node's float32 copy, dequantised
        # experts): the caches above are keyed by id(Value), so these stay alive until the
        # export ends, or a later Value could reuse an id and be given another's tensor
        self._alive: list = []

    def keep_alive(self, obj: Any) -> None:
        """Hold ``obj`` (stand-in Values, or a scratch graph holding them) for the whole
        export (``_alive``)."""
        self._alive.append(obj)

    # ---- names ---------------------------------------------------------------------------
    def reserve(self, name: str) -> None:
        self.used.add(name)

    def fresh(self, hint: str = "t") -> str:
        """A name not used yet, ``hint`` itself when it is free and valid."""
        if _VALID_NAME.match(hint) and hint not in self.used:
            self.used.add(hint)
            return hint
        base = hint if _VALID_NAME.match(hint) else "t"
        while True:
            self._counter += 1
            name = f"{base}_{self._counter}"
            if name not in self.used:
                self.used.add(name)
                return name

    def name_constants(self) -> None:
        """Give every constant its initializer name: Value.name when valid and unique, else
        c0, c1, ... (in first-use order)."""
        k = 0
        for v in self.graph.constants():
            nm = v.name
            if not (nm and _VALID_NAME.match(nm) and nm not in self.used):
                while f"c{k}" in self.used:
                    k += 1
                nm = f"c{k}"
            self.used.add(nm)
            self._const_names[id(v)] = nm

    def where(self) -> str:
        return f"node {self.current.describe()}" if self.current is not None else "graph"

    def fail(self, msg: str) -> ExportError:
        return ExportError(f"ONNX export of {self.where()}: {msg}")

    def need_opset(self, version: int, what: str) -> None:
        if self.opset < version:
            raise self.fail(f"{what} needs opset >= {version}, exporting at opset {self.opset}")

    # ---- tensors -------------------------------------------------------------------------
    def need_dtype(self, d: dt.DType | str, what: str) -> None:
        """Raise unless the opset has element type ``d`` as used inside the graph (f4e2m1
        travels as uint8 codes, so it needs nothing)."""
        d = dt.get(d)
        need = DTYPE_MIN_OPSET.get(d.name)
        if need is not None and d is not dt.f4e2m1:
            self.need_opset(need, f"element type {d.name} ({what})")

    def initializer(self, t: torch.Tensor, d: dt.DType | str, hint: str = "c") -> str:
        """A new initializer holding container tensor ``t`` of IR dtype ``d``."""
        d = dt.get(d)
        self.need_dtype(d, "a constant")
        raw, dims = to_numpy(t, d)
        name = self.fresh(hint)
        self.initializers.append(helper.make_tensor(name, onnx_type(d), dims, raw, raw=True))
        return name

    def const(self, value: Any, d: dt.DType | str, shape: Sequence[int] | None = None) -> str:
        """A small constant (python number or list) of IR dtype ``d``; cached by content."""
        d = dt.get(d)
        arr = np.asarray(value, dtype=np.float64 if d.is_float else np.int64)
        if shape is not None:
            arr = arr.reshape(shape)
        key = (d.name, arr.shape, arr.tobytes())
        if key not in self._small:
            t = torch.from_numpy(arr.copy())
            t = dt.to_container(t, d) if d.is_subbyte or d is dt.f4e2m1 else t.to(d.container)
            self._small[key] = self.initializer(t, d, "k")
        return self._small[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant."""
        return self.const(list(values), dt.i64, [len(values)])

    def value(self, v: Value | None) -> str:
        """The ONNX name of an IR value ("" for an omitted optional operand)."""
        if v is None:
            return ""
        if v.is_const:
            key = (id(v), "")
            if key not in self._derived:
                self.need_dtype(v.dtype, f"constant {v!r}")
                name = self._const_names.get(id(v)) or self.fresh("c")
                raw, dims = to_numpy(v.const, v.dtype)
                self.initializers.append(helper.make_tensor(name, onnx_type(v.dtype), dims,
                                                            raw, raw=True))
                self._derived[key] = name
            return self._derived[key]
        try:
            return self.names[id(v)]
        except KeyError:
            raise self.fail(f"value {v!r} is used before it is defined") from None

    def derived(self, v: Value, key: str, fn: Callable[[torch.Tensor], torch.Tensor],
                d: dt.DType | str) -> str:
        """An initializer computed at export time from constant ``v`` (e.g. W^T); cached."""
        k = (id(v), key)
        if k not in self._derived:
            base = self._const_names.get(id(v), "c")
            self._derived[k] = self.initializer(fn(v.const), d, f"{base}_{key}")
        return self._derived[k]

    # ---- nodes ---------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, domain: str = "",
           hint: str | None = None, **attrs: Any) -> Any:
        """Append a node; returns its output name (or a list for ``n_out > 1``)."""
        outs = [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        inputs = list(inputs)
        while inputs and not inputs[-1]:   # trailing omitted optionals are left out entirely
            inputs.pop()
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, domain=domain or None,
                                           name=self.fresh(f"n_{op_type}"), **attrs))
        if domain:
            self.domains.add(domain)
        return outs[0] if n_out == 1 else outs

    def cast(self, name: str, src: dt.DType | str, to: dt.DType | str) -> str:
        """Convert between IR dtypes (f4e2m1 codes are decoded / encoded exactly)."""
        src, to = dt.get(src), dt.get(to)
        if src is to:
            return name
        if src is dt.f4e2m1:
            return self.cast(self.f4_decode(name), dt.f32, to)
        if to is dt.f4e2m1:
            return self.f4_encode(self.cast(name, src, dt.f32))
        return self.op("Cast", [name], to=ONNX_DTYPE[to.name])

    def f4_decode(self, codes: str) -> str:
        """float32 values of uint8 E2M1 codes: a lookup in the 16-entry value table."""
        table = list(dt.FP4_E2M1_GRID) + [-v for v in dt.FP4_E2M1_GRID]
        idx = self.op("Cast", [self.op("BitwiseAnd", [codes, self.const(15, dt.u8, [])])
                               if self.opset >= 18 else codes], to=TensorProto.INT64)
        return self.op("Gather", [self.const(table, dt.f32, [16]), idx], axis=0, hint="f4")

    def f4_encode(self, x: str) -> str:
        """uint8 E2M1 codes of float32 x: nearest grid value, ties to the even code, saturating
        at 6, NaN to +0 (dtypes.fp4_e2m1_encode)."""
        mag = self.op("Clip", [self.op("Abs", [x]), self.scalar(0.0, dt.f32), self.scalar(6.0, dt.f32)])
        idx = None
        for i, m in enumerate(F4_MID):
            # At a midpoint the tie goes to the even code: index i+1 when that is even.
            cmp = "GreaterOrEqual" if (i + 1) % 2 == 0 else "Greater"
            bit = self.cast(self.op(cmp, [mag, self.scalar(m, dt.f32)]), dt.boolean, dt.u8)
            idx = bit if idx is None else self.op("Add", [idx, bit])
        zero = self.scalar(0.0, dt.f32)
        neg_zero = self.op("And", [self.op("Equal", [x, zero]),
                                   self.op("Less", [self.op("Reciprocal", [x]), zero])])
        sign = self.op("Or", [self.op("Less", [x, zero]), neg_zero])
        eight = self.op("Mul", [self.cast(sign, dt.boolean, dt.u8), self.const(8, dt.u8, [])])
        return self.op("Add", [idx, eight], hint="f4")

    def scalar(self, value: float, d: dt.DType | str) -> str:
        return self.const(value, d, [])

    # ---- symbolic dims -------------------------------------------------------------------
    def bind_symbols(self, inputs: Sequence[tuple[str, Sequence[Dim]]]) -> None:
        """Bind each symbol to (input, axis) where it first appears bare among the graph
        inputs; a symbol that appears only inside compound dims is solved from the first one."""
        pending = []
        for name, shape in inputs:
            for ax, d in enumerate(shape):
                if isinstance(d, sympy.Symbol):
                    if d not in self._sym_src:
                        self._sym_src[d] = self._shape_sym(name, ax)
                elif not isinstance(d, int):
                    pending.append((name, ax, d))
        for name, ax, d in pending:
            free = [s for s in d.free_symbols if s not in self._sym_src]
            if len(free) != 1:
                continue
            src = self._shape_sym(name, ax)
            sols = sympy.solve(sympy.Eq(d, src), free[0])
            if len(sols) == 1:
                self._sym_src[free[0]] = sols[0]

    def bind_result(self, name: str, shape: Sequence[Dim]) -> None:
        """Bind symbols first seen in a node's result (data-dependent sizes such as NonZero's
        count) to that result's shape."""
        for ax, d in enumerate(shape):
            if isinstance(d, sympy.Symbol) and d not in self._sym_src:
                self._sym_src[d] = self._shape_sym(name, ax)

    def _shape_sym(self, name: str, ax: int) -> sympy.Symbol:
        s = sympy.Symbol(f"__dim{len(self._dim_syms)}", integer=True, positive=True)
        self._dim_syms[s] = (name, ax)
        return s

    def dim(self, d: Dim) -> str:
        """An int64 [1] tensor holding dimension expression ``d`` at run time."""
        e = sympy.sympify(d)
        if e.free_symbols:
            unbound = [s for s in e.free_symbols
                       if s not in self._sym_src and s not in self._dim_syms]
            if unbound:
                raise self.fail(f"symbol(s) {', '.join(sorted(map(str, unbound)))} in "
                                f"{dim_str(d)} do not appear in the graph inputs' shapes")
            e = e.xreplace({s: self._sym_src[s] for s in e.free_symbols if s in self._sym_src})
        return self._emit(e)

    def dims(self, ds: Sequence[Dim]) -> str:
        """An int64 [len(ds)] tensor of dimension expressions (a constant when all are ints)."""
        if all(isinstance(d, int) or sympy.sympify(d).is_Integer for d in ds):
            return self.ints([int(d) for d in ds])
        parts = [self.dim(d) for d in ds]
        key = ("cat", tuple(parts))
        if key not in self._dims:
            self._dims[key] = self.op("Concat", parts, axis=0, hint="shape")
        return self._dims[key]

    def _emit(self, e: sympy.Expr) -> str:
        if e in self._dims:
            return self._dims[e]
        out = self._emit_new(e)
        self._dims[e] = out
        return out

    def _emit_new(self, e: sympy.Expr) -> str:
        if e.is_Integer:
            return self.ints([int(e)])
        if e in self._dim_syms:
            name, ax = self._dim_syms[e]
            return self.op("Shape", [name], start=ax, end=ax + 1, hint="dim")
        num, den = sympy.fraction(sympy.together(e))
        if den != 1:  # an integer dim written as a quotient divides exactly
            return self.op("Div", [self._emit(num), self._emit(den)], hint="dim")
        if isinstance(e, sympy.Add):
            return self._fold("Add", e.args)
        if isinstance(e, sympy.Mul):
            return self._fold("Mul", e.args)
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp > 0:
            return self._fold("Mul", [e.base] * int(e.exp))
        if isinstance(e, (sympy.Max, sympy.Min)):
            return self.op(type(e).__name__, [self._emit(a) for a in e.args], hint="dim")
        if isinstance(e, sympy.Mod):
            return self.op("Mod", [self._emit(a) for a in e.args], fmod=0, hint="dim")
        if isinstance(e, (sympy.floor, sympy.ceiling)):
            a, b = sympy.fraction(sympy.together(e.args[0]))
            if isinstance(e, sympy.ceiling):  # ceil(a/b) = -floor(-a/b)
                return self.op("Neg", [self._floordiv(self._emit(-a), self._emit(b))], hint="dim")
            return self._floordiv(self._emit(a), self._emit(b))
        raise self.fail(f"cannot compute dimension {e} at run time")

    def _fold(self, op: str, args: Sequence[sympy.Expr]) -> str:
        names = [self._emit(a) for a in args]
        acc = names[0]
        for n in names[1:]:
            acc = self.op(op, [acc, n], hint="dim")
        return acc

    def _floordiv(self, a: str, b: str) -> str:
        # Integer Div truncates; subtracting the divisor-signed remainder first makes it floor.
        r = self.op("Mod", [a, b], fmod=0, hint="dim")
        return self.op("Div", [self.op("Sub", [a, r], hint="dim"), b], hint="dim")

    def scalar_dim(self, d: Dim) -> str:
        """A 0-d int64 tensor holding dimension ``d`` (for Range)."""
        if isinstance(d, int) or sympy.sympify(d).is_Integer:
            return self.const(int(d), dt.i64, [])
        return self.op("Squeeze", [self.dim(d), self.ints([0])], hint="dim")
