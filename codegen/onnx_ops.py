"""IR op -> ONNX nodes: elementwise, shape, nn, norm, attention and reduce ops.

Every renderer takes the :class:`~.onnx_build.Emitter` and the IR node and returns the ONNX
names of the node's outputs. The compression ops (quantize, dequantize, qlinear, bcq_linear,
lowrank_*, moe) live in ``onnx_quant.py`` and register into the same table ``RENDER``.

Numeric policy: standard ONNX ops where their semantics equal the IR doc; otherwise the IR
formula spelled out in ONNX ops. Float8 and bf16 operands of elementwise arithmetic are
computed in float32 and cast back (as the IR reference does for float8; for bf16 one op's
single rounding is the same either way), because onnxruntime lacks most kernels for them.
"""
from __future__ import annotations

import math
from typing import Callable

import sympy
import torch

from ..ir import dtypes as dt
from ..ir.graph import Node
from ..ir.ops.common import norm_axis
from ..ir.ops.elementwise import cast_tensor
from ..ir.ops.nn import pads as conv_pads, spatial_param
from ..ir.ops.reduce import reduced_axes
from ..ir.ops.shape import _pad_index
from ..ir.types import dims_equal
from .onnx_build import ONNX_DTYPE, Emitter, onnx_type

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
    d = node.inputs[0].dtype
    xs = [inp(cx, node, i) for i in range(len(node.inputs))]
    if d.name in _LIFT and node.op not in ("identity",):
        body = _elementwise_body(cx, node, [cx.cast(x, d, dt.f32) for x in xs], dt.f32)
        out = node.outputs[0].dtype
        if out is d:  # torch's .to(float8) does not saturate: overflow becomes NaN
            return [cx.op("Cast", [body], to=ONNX_DTYPE[d.name],
                          saturate=0 if d.name.startswith("f8") else None)]
        return [body]
    return [_elementwise_body(cx, node, xs, d)]


@render("where")
def _where(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("Where", [inp(cx, node, i) for i in range(3)])]


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
    return [cx.op(op, [inp(cx, node, 0), inp(cx, node, 1)], axis=axis)]


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
    from onnx import helper
    d = dt.get(node.attrs["dtype"])
    val = cast_tensor(torch.tensor(node.attrs["value"], dtype=torch.float64), d).reshape(1)
    from .onnx_build import to_numpy
    raw, _ = to_numpy(val, d)
    tensor = helper.make_tensor("value", onnx_type(d), [1], raw, raw=True)
    return [cx.op("ConstantOfShape", [cx.dims(node.attrs["shape"])], value=tensor)]


# ---- nn ---------------------------------------------------------------------------------------

@render("matmul")
def _matmul(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("MatMul", [inp(cx, node, 0), inp(cx, node, 1)])]


def transposed(cx: Emitter, node: Node, i: int, perm: list[int] | None = None) -> str:
    """Input ``i`` with its last two dims swapped (or ``perm``): an initializer transposed at
    export time when the input is constant, else a Transpose node."""
    v = node.inputs[i]
    perm = perm or list(range(v.type.rank - 2)) + [v.type.rank - 1, v.type.rank - 2]
    if v.is_const:
        return cx.derived(v, "T", lambda t: t.permute(*perm).contiguous(), v.dtype)
    return cx.op("Transpose", [cx.value(v)], perm=perm)


@render("linear")
def _linear(cx: Emitter, node: Node) -> list[str]:
    x, w, b = inp(cx, node, 0), inp(cx, node, 1), inp(cx, node, 2)
    if node.inputs[0].type.rank == 2:
        return [cx.op("Gemm", [x, w] + ([b] if b else []), transB=1)]
    y = cx.op("MatMul", [x, transposed(cx, node, 1)])
    return [cx.op("Add", [y, b]) if b else y]


def _window_attrs(node: Node, n: int, kernel: bool) -> dict:
    a = node.attrs
    pd = conv_pads(a, n)
    out = {"strides": list(spatial_param(a, "stride", n, 1)),
           "pads": [p for p, _ in pd] + [q for _, q in pd]}
    if "dilation" in a:
        out["dilations"] = list(spatial_param(a, "dilation", n, 1))
    if kernel:
        out["kernel_shape"] = list(spatial_param(a, "kernel", n, 0))
    return out


@render("conv", "conv_transpose")
def _conv(cx: Emitter, node: Node) -> list[str]:
    n = node.inputs[0].type.rank - 2
    attrs = _window_attrs(node, n, False)
    ins = [inp(cx, node, i) for i in range(len(node.inputs)) if node.inputs[i] is not None]
    if node.op == "conv":
        return [cx.op("Conv", ins, group=node.attrs["groups"], **attrs)]
    op = tuple(node.attrs["output_padding"] or ()) or (0,) * n
    return [cx.op("ConvTranspose", ins, group=node.attrs["groups"], output_padding=list(op), **attrs)]


@render("max_pool", "avg_pool")
def _pool(cx: Emitter, node: Node) -> list[str]:
    n = node.inputs[0].type.rank - 2
    attrs = _window_attrs(node, n, True)
    a = node.attrs
    if node.op == "max_pool":
        return [cx.op("MaxPool", [inp(cx, node, 0)], ceil_mode=int(a["ceil_mode"]), **attrs)]
    return [cx.op("AveragePool", [inp(cx, node, 0)], ceil_mode=int(a["ceil_mode"]),
                  count_include_pad=int(a["count_include_pad"]), **attrs)]


@render("global_avg_pool", "global_max_pool")
def _global_pool(cx: Emitter, node: Node) -> list[str]:
    op = "GlobalAveragePool" if node.op == "global_avg_pool" else "GlobalMaxPool"
    return [cx.op(op, [inp(cx, node, 0)])]


# ---- norms and softmax --------------------------------------------------------------------------

def filled(cx: Emitter, dims: list, value: float, d: dt.DType) -> str:
    """A tensor of (possibly symbolic) shape ``dims`` filled with ``value``."""
    from onnx import helper
    from .onnx_build import to_numpy
    raw, _ = to_numpy(cast_tensor(torch.tensor([value], dtype=torch.float64), d), d)
    return cx.op("ConstantOfShape", [cx.dims(dims)],
                 value=helper.make_tensor("value", onnx_type(d), [1], raw, raw=True))


@render("layer_norm")
def _layer_norm(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    axis = norm_axis(a["axis"], xv.type.rank)
    w = inp(cx, node, 1) or filled(cx, list(xv.shape[axis:]), 1.0, xv.dtype)
    return [cx.op("LayerNormalization", [inp(cx, node, 0), w, inp(cx, node, 2)],
                  axis=axis, epsilon=a["eps"])]


@render("rms_norm")
def _rms_norm(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    axis = norm_axis(a["axis"], xv.type.rank)
    if cx.opset >= 23:
        w = inp(cx, node, 1) or filled(cx, list(xv.shape[axis:]), 1.0, xv.dtype)
        return [cx.op("RMSNormalization", [inp(cx, node, 0), w], axis=axis, epsilon=a["eps"])]
    cd = compute_dtype(xv.dtype)
    x = cx.cast(inp(cx, node, 0), xv.dtype, cd)
    ms = reduce(cx, "ReduceMean", cx.op("Mul", [x, x]), list(range(axis, xv.type.rank)), True)
    y = cx.op("Mul", [x, cx.op("Reciprocal", [cx.op("Sqrt", [cx.op("Add", [ms, cx.scalar(a["eps"], cd)])])])])
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        y = cx.op("Mul", [y, cx.cast(inp(cx, node, 1), xv.dtype, cd)])
    return [cx.cast(y, cd, xv.dtype)]


@render("batch_norm")
def _batch_norm(cx: Emitter, node: Node) -> list[str]:
    return [cx.op("BatchNormalization", [inp(cx, node, i) for i in range(5)], epsilon=node.attrs["eps"])]


@render("instance_norm")
def _instance_norm(cx: Emitter, node: Node) -> list[str]:
    xv = node.inputs[0]
    c = [xv.shape[1]]
    w = inp(cx, node, 1) or filled(cx, c, 1.0, xv.dtype)
    b = inp(cx, node, 2) or filled(cx, c, 0.0, xv.dtype)
    return [cx.op("InstanceNormalization", [inp(cx, node, 0), w, b], epsilon=node.attrs["eps"])]


@render("group_norm")
def _group_norm(cx: Emitter, node: Node) -> list[str]:
    # The formula rather than GroupNormalization: that op changed meaning between opsets 18
    # and 21 and onnxruntime's coverage of it varies.
    xv, a = node.inputs[0], node.attrs
    cd = compute_dtype(xv.dtype)
    x = cx.cast(inp(cx, node, 0), xv.dtype, cd)
    xr = cx.op("Reshape", [x, cx.ints([0, a["groups"], -1])])
    mean = reduce(cx, "ReduceMean", xr, [2], True)
    dev = cx.op("Sub", [xr, mean])
    var = reduce(cx, "ReduceMean", cx.op("Mul", [dev, dev]), [2], True)
    y = cx.op("Div", [dev, cx.op("Sqrt", [cx.op("Add", [var, cx.scalar(a["eps"], cd)])])])
    y = cx.op("Reshape", [y, cx.op("Shape", [x])])
    ch = cx.ints(list(range(1, xv.type.rank - 1)))
    for i, op in ((1, "Mul"), (2, "Add")):
        if len(node.inputs) > i and node.inputs[i] is not None:
            p = cx.op("Unsqueeze", [cx.cast(inp(cx, node, i), xv.dtype, cd), ch])
            y = cx.op(op, [y, p])
    return [cx.cast(y, cd, xv.dtype)]


@render("softmax", "log_softmax")
def _softmax(cx: Emitter, node: Node) -> list[str]:
    op = "Softmax" if node.op == "softmax" else "LogSoftmax"
    return [cx.op(op, [inp(cx, node, 0)], axis=node.attrs["axis"])]


# ---- reductions -----------------------------------------------------------------------------

def reduce(cx: Emitter, op: str, x: str, axes: list[int] | None, keepdims: bool) -> str:
    """A Reduce* node; axes as an input (ReduceSum from opset 13, the rest from 18) or as an
    attribute before that. None or [] reduces every axis."""
    if op == "ReduceSum" or cx.opset >= 18:
        extra = [cx.ints(axes)] if axes else []
        return cx.op(op, [x] + extra, keepdims=int(keepdims))
    return cx.op(op, [x], keepdims=int(keepdims), axes=list(axes) if axes else None)


_REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
           "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd", "reduce_l2": "ReduceL2",
           "reduce_sum_square": "ReduceSumSquare", "reduce_logsumexp": "ReduceLogSumExp"}


@render(*_REDUCE)
def _reduce(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    x, d = inp(cx, node, 0), xv.dtype
    axes = list(reduced_axes(a["axes"], xv.type.rank)) if xv.type.rank else None
    if d is dt.boolean:  # onnxruntime has no bool ReduceMax/Min
        y = reduce(cx, _REDUCE[node.op], cx.cast(x, d, dt.u8), axes, a["keepdims"])
        return [cx.cast(y, dt.u8, d)]
    return [reduce(cx, _REDUCE[node.op], x, axes, a["keepdims"])]


@render("reduce_var", "reduce_std")
def _var(cx: Emitter, node: Node) -> list[str]:
    xv, a = node.inputs[0], node.attrs
    cd = compute_dtype(xv.dtype)
    x = cx.cast(inp(cx, node, 0), xv.dtype, cd)
    axes = list(reduced_axes(a["axes"], xv.type.rank)) if xv.type.rank else []
    dev = cx.op("Sub", [x, reduce(cx, "ReduceMean", x, axes, True)])
    ss = reduce(cx, "ReduceSumSquare", dev, axes, a["keepdims"] and xv.type.rank > 0)
    count = sympy.Integer(1)
    for ax in axes:
        count = count * sympy.sympify(xv.shape[ax])
    n = cx.cast(cx.dim(count - a["correction"]), dt.i64, cd)
    y = cx.op("Div", [ss, n])
    if node.op == "reduce_std":
        y = cx.op("Sqrt", [y])
    return [cx.cast(y, cd, xv.dtype)]


@render("argmax", "argmin")
def _arg(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    op = "ArgMax" if node.op == "argmax" else "ArgMin"
    return [cx.op(op, [inp(cx, node, 0)], axis=a["axis"], keepdims=int(a["keepdims"]),
                  select_last_index=int(a["select_last_index"]))]


@render("topk")
def _topk(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    return cx.op("TopK", [inp(cx, node, 0), cx.dims([a["k"]])], n_out=2, axis=a["axis"],
                 largest=int(a["largest"]), sorted=int(a["sorted"]))


@render("cumsum")
def _cumsum(cx: Emitter, node: Node) -> list[str]:
    a = node.attrs
    return [cx.op("CumSum", [inp(cx, node, 0), cx.const(a["axis"], dt.i64, [])],
                  exclusive=int(a["exclusive"]), reverse=int(a["reverse"]))]


# ---- attention --------------------------------------------------------------------------------

@render("sdpa")
def _sdpa(cx: Emitter, node: Node) -> list[str]:
    """Attention-23 when there is no mask (its handling of fully masked rows differs from the
    IR's zeros); otherwise the explicit formula: GQA head repeat, scaled scores, causal and
    bool/float masks, Softmax, NaN rows (all keys masked) to 0, and the value product."""
    qv, kv, vv = node.inputs[:3]
    mv = node.inputs[3] if len(node.inputs) > 3 else None
    a = node.attrs
    d = qv.dtype
    rank = qv.type.rank
    q, k, v = (cx.value(t) for t in (qv, kv, vv))
    scale = a["scale"] if a["scale"] is not None else None
    if cx.opset >= 23 and mv is None and rank == 4:
        return [cx.op("Attention", [q, k, v], is_causal=int(a["causal"]), scale=scale)]
    hq, hk = qv.shape[-3], kv.shape[-3]
    if a["gqa"] and not dims_equal(hq, hk):
        rep = sympy.sympify(hq) / sympy.sympify(hk)
        lead = list(kv.shape[:-3])

        def repeat(t: str, tv) -> str:
            u = cx.op("Unsqueeze", [t, cx.ints([rank - 2])])
            e = cx.op("Expand", [u, cx.dims(lead + [hk, rep, tv.shape[-2], tv.shape[-1]])])
            return cx.op("Reshape", [e, cx.dims(lead + [hq, tv.shape[-2], tv.shape[-1]])])
        k, v = repeat(k, kv), repeat(v, vv)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    s = scale if scale is not None else None
    scores = cx.op("MatMul", [q, cx.op("Transpose", [k], perm=perm)])
    if s is None:
        dk = qv.shape[-1]
        if isinstance(dk, int):
            s = 1.0 / math.sqrt(dk)
    if s is not None:
        scores = cx.op("Mul", [scores, cx.scalar(s, d)])
    else:  # symbolic head dim: 1/sqrt(D) at run time
        dk = cx.cast(cx.dim(qv.shape[-1]), dt.i64, d)
        scores = cx.op("Div", [scores, cx.op("Sqrt", [dk])])
    keep = None
    if a["causal"]:
        rows = cx.op("Unsqueeze", [cx.op("Range", [cx.const(0, dt.i64, []), cx.scalar_dim(qv.shape[-2]),
                                                   cx.const(1, dt.i64, [])]), cx.ints([1])])
        cols = cx.op("Range", [cx.const(0, dt.i64, []), cx.scalar_dim(kv.shape[-2]), cx.const(1, dt.i64, [])])
        keep = cx.op("LessOrEqual", [cols, rows])
    if mv is not None:
        m = cx.value(mv)
        if mv.dtype is dt.boolean:
            keep = m if keep is None else cx.op("And", [keep, m])
        else:
            scores = cx.op("Add", [scores, m])
    if keep is not None:
        scores = cx.op("Where", [keep, scores, cx.scalar(float("-inf"), d)])
    probs = cx.op("Softmax", [scores], axis=-1)
    if mv is not None:
        probs = cx.op("Where", [cx.op("IsNaN", [probs]), cx.scalar(0.0, d), probs])
    return [cx.op("MatMul", [probs, v])]
