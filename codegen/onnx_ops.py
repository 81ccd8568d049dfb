"""The IR op -> ONNX table ``RENDER``, with the elementwise and shape ops.

Every renderer takes the :class:`~.onnx_build.Emitter` and the IR node and returns the ONNX
names of the node's outputs. The other families register into the same table from
``onnx_nn.py`` (nn, norms, attention, reductions), ``onnx_quant.py`` (quantize, dequantize,
qlinear, bcq_linear, lowrank_*, moe) and ``onnx_extra.py`` (the less common ops).

Numeric policy: standard ONNX ops where their semantics equal the IR doc; otherwise the IR
formula spelled out in ONNX ops. Float8 and bf16 operands of elementwise arithmetic are
computed in float32 and cast back (as the IR reference does for float8; for bf16 one op's
single rounding is the same either way), because onnxruntime lacks most kernels for them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..ir import dtypes as dt
from ..ir.graph import Node, Value
from onnx import helper

from ..ir.ops.elementwise import cast_tensor
from ..ir.ops.shape import _pad_index
from ..ir.types import dims_equal
from .onnx_build import ONNX_DTYPE, Emitter, onnx_type, to_numpy

Renderer = Callable[[Emitter, Node], list[str]]
RENDER: dict[str, Renderer] = {}
# Ops the exporter refuses on purpose, with the reason (none at present).
REFUSED: dict[str, str] = {}


def render(*names: str) -> Callable[[Renderer], Renderer]:
    def deco(fn: Renderer) -> Renderer:
        for n in names:
            RENDER[n] = fn
        return fn
    return deco


def inp(cx: Emitter, node: Node, i: int) -> str:
    """ONNX name of input ``i`` ("" when omitted)."""
    return cx.value(node.inputs[i]) if i < len(node.inputs) else ""


def compute_dtype(d: dt.DType) -> dt.DType:
    """The dtype the IR reference computes ``d`` in: f64 stays, everything else is f32."""
    return dt.f64 if d is dt.f64 else dt.f32


# ---- elementwise ------------------------------------------------------------------------------

_UNARY = {"relu": "Relu", "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "reciprocal": "Reciprocal", "sin": "Sin", "cos": "Cos", "tanh": "Tanh",
          "sigmoid": "Sigmoid", "erf": "Erf", "floor": "Floor", "ceil": "Ceil", "round": "Round",
          "sign": "Sign", "logical_not": "Not", "isnan": "IsNaN", "isinf": "IsInf",
          "hardswish": "HardSwish", "softplus": "Softplus", "identity": "Identity"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
           "ge": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor",
           "bitwise_and": "BitwiseAnd", "bitwise_or": "BitwiseOr", "bitwise_xor": "BitwiseXor"}
_LIFT = ("bf16", "f8e4m3", "f8e5m2")
# (op, dtype) pairs that ONNX forbids (Pow / Neg / Relu on small unsigned or int8 / int16,
# comparisons of bools) or onnxruntime has no kernel for (Max / Min / Relu / Where on int16,
# Where on bool): computed in a wider type that holds every value, then cast back (integer
# results wrap as the IR's do). Measured on onnxruntime 1.32.
_VIA = {"maximum": {"i16": "i32"}, "minimum": {"i16": "i32"}, "relu": {"i16": "i32", "i8": "i32"},
        "neg": {"u8": "i32"}, "pow": {"i8": "i32", "i16": "i32", "u8": "i32"},
        "where": {"bool": "u8", "i16": "i32", "bf16": "f32"},
        **{c: {"bool": "u8"} for c in ("lt", "le", "gt", "ge")}}


def gelu(cx: Emitter, x: str, d: dt.DType, approximate: str) -> str:
    """GELU: the Gelu op at opset 20+, else the erf / tanh formula."""
    if cx.opset >= 20:
        return cx.op("Gelu", [x], approximate=approximate)
    half = cx.op("Mul", [x, cx.scalar(0.5, d)])
    if approximate == "tanh":
        cube = cx.op("Mul", [cx.op("Mul", [x, x]), x])
        inner = cx.op("Add", [x, cx.op("Mul", [cube, cx.scalar(0.044715, d)])])
        t = cx.op("Tanh", [cx.op("Mul", [inner, cx.scalar(math.sqrt(2 / math.pi), d)])])
    else:
        t = cx.op("Erf", [cx.op("Mul", [x, cx.scalar(1 / math.sqrt(2), d)])])
    return cx.op("Mul", [half, cx.op("Add", [t, cx.scalar(1.0, d)])])


def activation(cx: Emitter, name: str, x: str, d: dt.DType) -> str:
    """The lowrank/moe activations: gelu (erf), gelu_tanh, relu, silu."""
    if name == "gelu":
        return gelu(cx, x, d, "none")
    if name == "gelu_tanh":
        return gelu(cx, x, d, "tanh")
    if name == "relu":
        return cx.op("Relu", [x])
    return cx.op("Mul", [x, cx.op("Sigmoid", [x])])


def _elementwise_body(cx: Emitter, node: Node, xs: list[str], d: dt.DType) -> str:
    op, a = node.op, node.attrs
    if op in _UNARY:
        return cx.op(_UNARY[op], xs)
    if op == "ne":
        return cx.op("Not", [cx.op("Equal", xs)])
    if op in _BINARY:
        if op.startswith("bitwise"):
            cx.need_opset(18, _BINARY[op])
        return cx.op(_BINARY[op], xs)
    if op == "rsqrt":
        return cx.op("Reciprocal", [cx.op("Sqrt", xs)])
    if op == "gelu":
        return gelu(cx, xs[0], d, a["approximate"])
    if op == "silu":
        return activation(cx, "silu", xs[0], d)
    if op == "leaky_relu":
        return cx.op("LeakyRelu", xs, alpha=a["alpha"])
    if op == "elu":
        return cx.op("Elu", xs, alpha=a["alpha"])
    if op == "hardsigmoid":
        return cx.op("HardSigmoid", xs, alpha=a["alpha"], beta=a["beta"])
    if op == "mish":
        if cx.opset >= 18:
            return cx.op("Mish", xs)
        return cx.op("Mul", [xs[0], cx.op("Tanh", [cx.op("Softplus", xs)])])
    if op == "mod":
        if not d.is_float:
            return cx.op("Mod", xs, fmod=int(a["fmod"]))
        r = cx.op("Mod", xs, fmod=1)
        if a["fmod"]:
            return r
        # Python's %: a nonzero remainder whose sign differs from the divisor's moves by b.
        zero = cx.scalar(0.0, d)
        differ = cx.op("Xor", [cx.op("Less", [r, zero]), cx.op("Less", [xs[1], zero])])
        fix = cx.op("And", [cx.op("Not", [cx.op("Equal", [r, zero])]), differ])
        return cx.op("Where", [fix, cx.op("Add", [r, xs[1]]), r])
    if op == "clip":
        return _clip(cx, node, xs[0], d)
    raise cx.fail("no elementwise rule")  # pragma: no cover - the table lists every op


def _clip(cx: Emitter, node: Node, x: str, d: dt.DType) -> str:
    lo, hi = node.attrs["min"], node.attrs["max"]
    if not d.is_float:
        info = torch.iinfo(d.container)
        lo = None if lo is None else int(min(max(math.ceil(lo), info.min), info.max))
        hi = None if hi is None else int(min(max(math.floor(hi), info.min), info.max))
    if lo is None and hi is None:
        return cx.op("Identity", [x])
    out = cx.op("Clip", [x, "" if lo is None else cx.scalar(lo, d), "" if hi is None else cx.scalar(hi, d)])
    if d.is_float:  # keep NaN whatever the kernel's max/min order does with it
        out = cx.op("Where", [cx.op("IsNaN", [x]), x, out])
    return out


@render(*_UNARY, *_BINARY, "ne", "rsqrt", "gelu", "silu", "leaky_relu", "elu", "hardsigmoid",
        "mish", "mod", "clip")
def _elementwise(cx: Emitter, node: Node) -> list[str]:
    if node.op in ("mul", "add"):
        pair = _affine_pair(cx, node)
        if pair is not None:
            return pair
    d = node.inputs[0].dtype
    xs = [inp(cx, node, i) for i in range(len(node.inputs))]
    if node.op == "relu" and not d.is_float and not d.is_signed:
        return [cx.op("Identity", xs)]                  # unsigned: nothing below zero
    if node.op == "relu" and d is dt.i64:               # no int64 Relu kernel; Max has one
        return [cx.op("Max", [xs[0], cx.scalar(0, d)])]
    via = _VIA.get(node.op, {}).get(d.name)
    if via is not None:
        body = _elementwise_body(cx, node, [cx.cast(x, d, via) for x in xs], dt.get(via))
        out = node.outputs[0].dtype
        compare = node.op in ("lt", "le", "gt", "ge")      # already bool
        return [cx.cast(body, via, out) if out is d and not compare else body]
    if d.name in _LIFT and node.op not in ("identity",):
        body = _elementwise_body(cx, node, [cx.cast(x, d, dt.f32) for x in xs], dt.f32)
        out = node.outputs[0].dtype
        if out is d:  # torch's .to(float8) does not saturate: overflow becomes NaN
            return [cx.op("Cast", [body], to=ONNX_DTYPE[d.name],
                          saturate=0 if d.name.startswith("f8") else None)]
        return [body]
    return [_elementwise_body(cx, node, xs, d)]


def _per_channel(c: Value | None, x: Value) -> bool:
    """Whether ``c`` is a constant [1, C, 1, ...] of x's rank, dtype and channels."""
    if c is None or not c.is_const or c.dtype is not x.dtype or c.type.rank != x.type.rank:
        return False
    s = c.type.shape
    return s[0] == 1 and s[1] == x.type.shape[1] and all(v == 1 for v in s[2:])


def _affine_scale(cx: Emitter, m: Node) -> tuple[Value, Value, Node, Value] | None:
    """(x, scale, add, shift) where ``m`` is ``mul(x, scale)`` read only by ``add(m, shift)``,
    both constants per channel ([1, C, 1, ...]), x f32 or f64 of rank >= 2: the per-channel
    affine map ``fold_batchnorm`` leaves of a batch norm it cannot fold."""
    if m.op != "mul" or len(m.inputs) != 2:
        return None
    y = m.outputs[0]
    if any(o is y for o in cx.graph.outputs):
        return None
    users = y.users()
    if len(users) != 1 or users[0].op != "add" or len(users[0].inputs) != 2:
        return None
    add = users[0]
    shift = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    for x, c in ((m.inputs[0], m.inputs[1]), (m.inputs[1], m.inputs[0])):
        if x is not None and not x.is_const and x.dtype.name in ("f32", "f64") and x.type.rank >= 2 \
                and isinstance(x.type.shape[1], int) and _per_channel(c, x) and _per_channel(shift, x) \
                and shift is not y:
            return x, c, add, shift
    return None


def _affine_pair(cx: Emitter, node: Node) -> list[str] | None:
    """A per-channel ``mul`` then ``add`` as one BatchNormalization (mean 0, variance 1,
    epsilon 0: x·scale + shift exactly), which onnxruntime runs in its blocked convolution
    layout where a Mul and an Add by [1, C, 1, 1] constants cost it reorders (DenseNet-121's
    pre-activation batch norms: 14.0 against 16.3 ms). The mul renders as its input's name;
    the add as the node."""
    if node.op == "mul":
        found = _affine_scale(cx, node)
        return None if found is None else [cx.value(found[0])]
    m = next((v.producer for v in node.inputs if v is not None and v.producer is not None
              and v.producer.op == "mul"), None)
    found = _affine_scale(cx, m) if m is not None else None
    if found is None or found[2] is not node:
        return None
    x, scale, _, shift = found
    ch = x.type.shape[1]

    def flat(v: Value, key: str) -> str:
        return cx.derived(v, key, lambda t: t.reshape(-1).contiguous(), v.dtype)
    zeros, ones = cx.const([0.0] * ch, x.dtype, [ch]), cx.const([1.0] * ch, x.dtype, [ch])
    return [cx.op("BatchNormalization", [cx.value(x), flat(scale, "bn_s"), flat(shift, "bn_t"), zeros, ones],
                  epsilon=0.0)]


@render("where")
def _where(cx: Emitter, node: Node) -> list[str]:
    return [where(cx, *(inp(cx, node, i) for i in range(3)), node.outputs[0].dtype)]


def where(cx: Emitter, c: str, a: str, b: str, d: dt.DType) -> str:
    """Where(c, a, b) on values of dtype ``d``, through a wider type where onnxruntime has no
    Where kernel for ``d``."""
    via = _VIA["where"].get(d.name)
    if via is None:
        return cx.op("Where", [c, a, b])
    return cx.cast(cx.op("Where", [c, cx.cast(a, d, via), cx.cast(b, d, via)]), via, d)


@render("cast")
def _cast(cx: Emitter, node: Node) -> list[str]:
    x, src, to = inp(cx, node, 0), node.inputs[0].dtype, dt.get(node.attrs["to"])
    if src is to:
        return [cx.op("Identity", [x])]
    if src is dt.f4e2m1:   # decode the codes, then follow the float32 rules
        x, src = cx.f4_decode(x), dt.f32
    if to is dt.f4e2m1:
        return [cx.cast(x, src, to)]
    if src.name.startswith("f8") and not (to.is_float and not to.is_subbyte):
        x, src = cx.cast(x, src, dt.f32), dt.f32   # as the reference: via float32
    if to.name in ("i4", "u4"):
        lo, hi = to.int_range()
        if src.is_float:
            x = cx.op("Where", [cx.op("IsNaN", [x]), cx.scalar(0.0, src), x])
            x = cx.op("Clip", [x, cx.scalar(lo, src), cx.scalar(hi, src)])
            x = cx.cast(x, src, dt.i8)               # truncation of an in-range value
        else:
            wide = dt.i64
            x = cx.op("Clip", [cx.cast(x, src, wide), cx.scalar(lo, wide), cx.scalar(hi, wide)])
            x = cx.cast(x, wide, dt.i8)
        return [cx.op("Cast", [x], to=ONNX_DTYPE[to.name])]
    if to.name.startswith("f8"):
        cx.need_opset(19, "a float8 Cast")
        return [cx.op("Cast", [x], to=ONNX_DTYPE[to.name], saturate=1)]
    return [cx.op("Cast", [x], to=ONNX_DTYPE[to.name])]


# ---- shape ------------------------------------------------------------------------------------

@render("reshape")
def _reshape(cx: Emitter, node: Node) -> list[str]:
    xv = node.inputs[0]
    target = list(node.attrs["shape"])
    has_zero = any(isinstance(d, int) and d == 0 for d in target)
    if not has_zero and not all(isinstance(d, int) for d in target):
        # 0 (copy the input dim) and -1 (infer) only where provably the same dim.
        for i, d in enumerate(target):
            if not isinstance(d, int) and i < xv.type.rank and dims_equal(xv.shape[i], d):
                target[i] = 0
        sym = [i for i, d in enumerate(target) if not isinstance(d, int)]
        if len(sym) == 1 and -1 not in target:
            target[sym[0]] = -1
    return [cx.op("Reshape", [inp(cx, node, 0), cx.dims(target)], allowzero=1 if has_zero else None)]


@render("transpose")
def _transpose(cx: Emitter, node: Node) -> list[str]:
    perm = node.attrs["perm"]
    return [cx.op("Transpose", [inp(cx, node, 0)], perm=list(perm) if perm is not None else None)]


@render("squeeze")
def _squeeze(cx: Emitter, node: Node) -> list[str]:
    axes = node.attrs["axes"]
    return [cx.op("Squeeze", [inp(cx, node, 0)] + ([cx.ints(axes)] if axes is not None else []))]


@render("unsqueeze")
def _unsqueeze(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Unsqueeze", [inp(cx, node, 0), cx.ints(node.attrs["axes"])])]


@render("flatten")
def _flatten(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Flatten", [inp(cx, node, 0)], axis=node.attrs["axis"])]


@render("slice")
def _slice(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    n = len(a["starts"])
    axes = a["axes"] if a["axes"] is not None else tuple(range(n))
    steps = a["steps"] if a["steps"] is not None else (1,) * n
    return [cx.op("Slice", [inp(cx, node, 0), cx.dims(a["starts"]), cx.dims(a["ends"]),
                            cx.ints(axes), cx.ints(steps)])]


@render("concat")
def _concat(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Concat", [inp(cx, node, i) for i in range(len(node.inputs))], axis=node.attrs["axis"])]


@render("split")
def _split(cx: Emitter, node: Node) -> list[str]:
    sizes = node.attrs["sizes"]
    out = cx.op("Split", [inp(cx, node, 0), cx.dims(sizes)], n_out=len(sizes), axis=node.attrs["axis"])
    return out if isinstance(out, list) else [out]


@render("gather", "embedding", "gather_elements")
def _gather(cx: Emitter, node: Node) -> list[str]:
    axis = node.attrs.get("axis", 0)
    op = "GatherElements" if node.op == "gather_elements" else "Gather"
    src = node.inputs[0]
    assert src is not None
    wide = {"i4": dt.i8, "u4": dt.u8}.get(src.dtype.name)
    if wide is None:
        return [cx.op(op, [inp(cx, node, 0), inp(cx, node, 1)], axis=axis)]
    # ONNX's Gather / GatherElements take no 4-bit types: gather the codes widened to 8 bits
    # (exact) and narrow the rows again
    rows = cx.op(op, [cx.cast(inp(cx, node, 0), src.dtype, wide), inp(cx, node, 1)], axis=axis)
    return [cx.cast(rows, wide, src.dtype)]


@render("expand")
def _expand(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Expand", [inp(cx, node, 0), cx.dims(node.attrs["shape"])])]


@render("tile")
def _tile(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Tile", [inp(cx, node, 0), cx.ints(node.attrs["repeats"])])]


@render("pad")
def _pad(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    x, pads, mode = inp(cx, node, 0), list(a["pads"]), a["mode"]
    r = xv.type.rank
    if mode == "constant":
        d = xv.dtype
        fill = (torch.tensor(a["value"]) != 0) if d is dt.boolean else \
            cast_tensor(torch.tensor(a["value"], dtype=torch.float64), d)
        return [cx.op("Pad", [x, cx.dims(pads), cx.initializer(fill.reshape(()), d, "pad_value")],
                      mode="constant")]
    static = xv.type.is_static and all(isinstance(p, int) for p in pads)
    if mode == "reflect" and static and any(max(pads[i], pads[r + i]) >= xv.shape[i] for i in range(r)):
        # Reflection wider than the dim wraps again (numpy); ONNX Pad refuses that, so gather
        # along each axis with the index map the reference uses.
        for ax in range(r):
            if pads[ax] or pads[r + ax]:
                idx = _pad_index(xv.shape[ax], pads[ax], pads[r + ax], mode)
                x = cx.op("Gather", [x, cx.ints(idx.tolist())], axis=ax)
        return [x]
    return [cx.op("Pad", [x, cx.dims(pads)], mode=mode)]


@render("trilu")
def _trilu(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    return [cx.op("Trilu", [inp(cx, node, 0), cx.const(a["diagonal"], dt.i64, [])], upper=int(a["upper"]))]


@render("arange")
def _arange(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    r = cx.op("Range", [cx.scalar_dim(a["start"]), cx.scalar_dim(a["end"]),
                        cx.const(a["step"], dt.i64, [])])
    return [cx.cast(r, dt.i64, a["dtype"])]


@render("full")
def _full(cx: Emitter, node: Node) -> list[str]:
    d = dt.get(node.attrs["dtype"])
    val = cast_tensor(torch.tensor(node.attrs["value"], dtype=torch.float64), d).reshape(1)
    raw, _ = to_numpy(val, d)
    tensor = helper.make_tensor("value", onnx_type(d), [1], raw, raw=True)
    return [cx.op("ConstantOfShape", [cx.dims(node.attrs["shape"])], value=tensor)]
