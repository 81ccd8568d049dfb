"""The op registry: one :class:`OpDef` per op name (DESIGN.md §3).

An OpDef carries
- an attribute schema (:class:`AttrSpec` per attribute, with kind, default and choices),
- a symbolic shape function ``shape(in_types, attrs) -> list[TensorType]`` that raises
  :class:`ShapeError` with a plain message (the caller adds the node),
- a torch reference implementation ``reference(inputs, attrs) -> Tensor | tuple[Tensor]``,
  the ground truth every kernel is tested against. Inputs arrive in their dtype's container
  (see ``ir/dtypes.py``); ``None`` stands for an omitted optional input,
- a cost function ``cost(in_types, out_types, attrs) -> Cost`` of sympy expressions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import sympy
import torch

from ..errors import AttributeError_, ShapeError, UnsupportedOpError
from ..graph import Attrs
from ..types import TensorType

REQUIRED = object()

# Attribute kinds. "dim" is an int or sympy expression; "dims" a tuple of them.
KINDS = ("int", "float", "str", "bool", "ints", "floats", "strs", "dim", "dims", "any")


@dataclass(frozen=True)
class AttrSpec:
    """Schema of one attribute. ``default=REQUIRED`` makes it mandatory; ``None`` default
    means optional-and-absent."""

    kind: str
    default: Any = REQUIRED
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


@dataclass(frozen=True)
class Cost:
    """Work of one node: floating/integer operations and bytes moved, as sympy expressions."""

    flops: sympy.Expr
    bytes: sympy.Expr

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


ShapeFn = Callable[[Sequence[TensorType | None], Attrs], Sequence[TensorType]]
RefFn = Callable[[Sequence[torch.Tensor | None], Attrs], "torch.Tensor | tuple[torch.Tensor, ...]"]
CostFn = Callable[[Sequence[TensorType | None], Sequence[TensorType], Attrs], Cost]


def io_bytes(in_types: Sequence[TensorType | None], out_types: Sequence[TensorType]) -> sympy.Expr:
    """Bytes read plus bytes written, counting every operand once."""
    total = sympy.Integer(0)
    for t in list(in_types) + list(out_types):
        if t is not None:
            total += t.nbytes()
    return total


def numel(t: TensorType) -> sympy.Expr:
    return sympy.sympify(t.numel())


def elementwise_cost(flops_per_element: int = 1) -> CostFn:
    """Cost of an op doing ``flops_per_element`` operations per output element."""
    def cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
        return Cost(flops_per_element * sum((numel(o) for o in outs), sympy.Integer(0)),
                    io_bytes(ins, outs))
    return cost


def memory_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    """Cost of a pure data-movement op: no arithmetic, only bytes."""
    return Cost(sympy.Integer(0), io_bytes(ins, outs))


@dataclass
class OpDef:
    """Everything the compiler knows about one op."""

    name: str
    family: str
    inputs: tuple[int, int]                     # (min, max); max -1 = variadic
    shape: ShapeFn
    reference: RefFn
    cost: CostFn
    attrs: Mapping[str, AttrSpec] = field(default_factory=dict)
    input_names: tuple[str, ...] = ()           # for messages and docs
    elementwise: bool = False                   # output[i] depends only on inputs[i] (broadcast)
    doc: str = ""
    # attributes holding fresh symbols for data-dependent output sizes (nonzero's count):
    # the node itself binds them, so the verifier accepts them in this and later nodes
    binds: tuple[str, ...] = ()

    def bind_attrs(self, given: Mapping[str, Any], where: str = "") -> Attrs:
        """Validate ``given`` against the schema and fill defaults; raises AttributeError_."""
        where = where or self.name
        out: dict[str, Any] = {}
        for k in given:
            if k not in self.attrs:
                known = ", ".join(self.attrs) or "none"
                raise AttributeError_(f"{where}: unknown attribute {k!r} (known: {known})")
        for k, spec in self.attrs.items():
            if k in given:
                v = given[k]
            elif spec.default is REQUIRED:
                raise AttributeError_(f"{where}: missing required attribute {k!r}")
            else:
                v = spec.default
            if v is not None:
                v = _check_kind(v, spec, k, where)
            elif spec.default is not None:
                # none skipped every check (softmax[axis=none] crashed later), and a none where
                # the default is a value printed as that default
                raise AttributeError_(f"{where}: attribute {k!r} may not be none")
            out[k] = v
        return Attrs(out)

    def check_arity(self, n: int, where: str = "") -> None:
        lo, hi = self.inputs
        if n < lo or (hi >= 0 and n > hi):
            want = f"{lo}" if lo == hi else (f"{lo}..{hi}" if hi >= 0 else f">= {lo}")
            raise ShapeError(f"{where or self.name}: expects {want} inputs, got {n}")

    def infer(self, in_types: Sequence[TensorType | None], attrs: Attrs,
              where: str = "") -> list[TensorType]:
        """Output types for these input types; raises ShapeError naming ``where``."""
        where = where or self.name
        self.check_arity(len(in_types), where)
        try:
            return list(self.shape(in_types, attrs))
        except ShapeError as e:
            msg = str(e)
            raise ShapeError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _check_kind(v: Any, spec: AttrSpec, k: str, where: str) -> Any:
    def bad() -> AttributeError_:
        return AttributeError_(f"{where}: attribute {k!r} must be {spec.kind}, got {v!r}")

    kind = spec.kind
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int) or not -2 ** 63 <= v < 2 ** 63:
            raise bad()
    elif kind == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad()
        try:
            v = float(v)
        except OverflowError:
            raise bad() from None
    elif kind == "str":
        if not isinstance(v, str):
            raise bad()
    elif kind == "bool":
        if not isinstance(v, bool):
            raise bad()
    elif kind == "dim":
        if isinstance(v, bool) or not isinstance(v, (int, sympy.Expr)):
            raise bad()
    elif kind in ("ints", "floats", "strs", "dims"):
        if not isinstance(v, (list, tuple)):
            raise bad()
        item = AttrSpec(kind[:-1])
        v = tuple(_check_kind(x, item, k, where) for x in v)
    if spec.choices is not None and v not in spec.choices:
        raise AttributeError_(f"{where}: attribute {k!r} must be one of {spec.choices}, got {v!r}")
    return v


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Add an op to the registry (a name may be registered once)."""
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} registered twice")
    _REGISTRY[opdef.name] = opdef
    return opdef


def defop(name: str, *, family: str, inputs: int | tuple[int, int], shape: ShapeFn, reference: RefFn,
          cost: CostFn, attrs: Mapping[str, AttrSpec] | None = None,
          input_names: Sequence[str] = (), elementwise: bool = False, doc: str = "") -> OpDef:
    """Register an op; ``inputs`` is an exact count or a (min, max) pair (max -1: variadic)."""
    rng = (inputs, inputs) if isinstance(inputs, int) else tuple(inputs)
    return register(OpDef(name, family, rng, shape, reference, cost, dict(attrs or {}),
                          tuple(input_names), elementwise, doc))


def get_op(name: str) -> OpDef:
    """The OpDef called ``name``; raises UnsupportedOpError if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedOpError({name: 1}, where="IR") from None


def has_op(name: str) -> bool:
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    """A copy of the registry, sorted by name."""
    return dict(sorted(_REGISTRY.items()))
