"""IR op -> ONNX nodes: nn (matmul, linear, conv, pools), norms, softmax, reductions and
attention. Registered into ``onnx_ops.RENDER``; see that module for the conventions."""
from __future__ import annotations

import math

import sympy
import torch
from onnx import helper

from ..ir import dtypes as dt
from ..ir.graph import Node
from ..ir.ops.common import norm_axis
from ..ir.ops.elementwise import cast_tensor
from ..ir.ops.nn import pads as conv_pads, spatial_param
from ..ir.ops.reduce import reduced_axes
from ..ir.types import dims_equal
from .onnx_build import Emitter, onnx_type, to_numpy
from .onnx_ops import compute_dtype, inp, render

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
    # Only the operand form the chosen op reads is emitted, so no weight is stored twice.
    x, b = inp(cx, node, 0), inp(cx, node, 2)
    if node.inputs[0].type.rank == 2:
        return [cx.op("Gemm", [x, inp(cx, node, 1)] + ([b] if b else []), transB=1)]
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
    ceil = int(a["ceil_mode"]) and not _floor_suffices(node, n, attrs)
    include_pad = int(a.get("count_include_pad", 0))
    if ceil and _ceil_differs(node, n, attrs):
        # per axis, torch's rule keeps a last window on some axes and drops it on others:
        # floor mode with that window's overhang as end padding (ignored by MaxPool, and by
        # AveragePool's count without count_include_pad) gives every axis its count
        if node.op == "avg_pool" and include_pad:
            if any(attrs["pads"]):
                raise cx.fail("a ceil_mode average pool with count_include_pad and padding whose "
                              "last window starts past the input on some axis has no ONNX form "
                              "(the overhang would count as padding)")
            include_pad = 0     # no padding to count: the same divisors
        grown = _overhang_pads(node, n, attrs)
        if grown is None:
            raise cx.fail("a ceil_mode pool whose count onnx computes differently on one axis "
                          "and that has a dynamic size on another has no ONNX form")
        attrs = dict(attrs, pads=grown)
        ceil = 0
    if node.op == "max_pool":
        return [cx.op("MaxPool", [inp(cx, node, 0)], ceil_mode=ceil, **attrs)]
    return [cx.op("AveragePool", [inp(cx, node, 0)], ceil_mode=ceil,
                  count_include_pad=include_pad, **attrs)]


def _floor_suffices(node: Node, n: int, attrs: dict) -> bool:
    """Whether a ceil_mode pool's output is what floor mode gives. The IR (as torch and
    onnxruntime) drops a last window that would start in the end padding; onnx's shape
    inference keeps it and rejects the file. When every spatial size is the floor count the
    windows are the same in either mode, so floor mode says it exactly."""
    x, y = node.inputs[0].shape, node.outputs[0].shape
    dil = attrs.get("dilations", [1] * n)
    for i in range(n):
        size, out = x[2 + i], y[2 + i]
        if not isinstance(size, int) or not isinstance(out, int):
            return False
        span = (attrs["kernel_shape"][i] - 1) * dil[i] + 1
        if (size + attrs["pads"][i] + attrs["pads"][n + i] - span) // attrs["strides"][i] + 1 != out:
            return False
    return True


def _ceil_differs(node: Node, n: int, attrs: dict) -> bool:
    """Whether onnx's ceil_mode count (which keeps a last window starting past the input)
    differs from the IR's on some static axis."""
    x, y = node.inputs[0].shape, node.outputs[0].shape
    dil = attrs.get("dilations", [1] * n)
    for i in range(n):
        size, out = x[2 + i], y[2 + i]
        if not isinstance(size, int) or not isinstance(out, int):
            continue
        span = (attrs["kernel_shape"][i] - 1) * dil[i] + 1
        if -(-(size + attrs["pads"][i] + attrs["pads"][n + i] - span) // attrs["strides"][i]) + 1 != out:
            return True
    return False


def _overhang_pads(node: Node, n: int, attrs: dict) -> list[int] | None:
    """``pads`` with each axis's end padding grown so that the floor count is the IR's; None
    if a size is dynamic."""
    x, y = node.inputs[0].shape, node.outputs[0].shape
    dil = attrs.get("dilations", [1] * n)
    pads = list(attrs["pads"])
    for i in range(n):
        size, out = x[2 + i], y[2 + i]
        if not isinstance(size, int) or not isinstance(out, int):
            return None
        span = (attrs["kernel_shape"][i] - 1) * dil[i] + 1
        need = (out - 1) * attrs["strides"][i] + span - (size + pads[i] + pads[n + i])
        pads[n + i] += max(0, need)
    return pads


@render("global_avg_pool", "global_max_pool")
def _global_pool(cx: Emitter, node: Node) -> list[str]:
    op = "GlobalAveragePool" if node.op == "global_avg_pool" else "GlobalMaxPool"
    return [cx.op(op, [inp(cx, node, 0)])]


# ---- norms and softmax --------------------------------------------------------------------------

def filled(cx: Emitter, dims: list, value: float, d: dt.DType) -> str:
    """A tensor of (possibly symbolic) shape ``dims`` filled with ``value``."""
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
    n = cx.cast(cx.scalar_dim(count - a["correction"]), dt.i64, cd)
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
