"""ATen -> IR: nn ops (linear/matmul, convolution, normalisation, attention, softmax, pooling).

These are the ops the compression passes look for, so each becomes one IR node. A matrix
product with a constant 2-D right operand (GPT-2's Conv1D ``addmm``, ``x @ W``) becomes
``linear`` with the weight transposed once at import.
"""
from __future__ import annotations

import operator
import re
from typing import Any, Sequence

import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from .aten_table import Ctx, aten


def _weight_t(ctx: Ctx, w: Value) -> Value:
    """The [N, K] linear weight of a constant [K, N] right operand (keeps the FQN)."""
    wt = ctx.const(w.const.t().contiguous(), w.dtype)
    wt.name = w.name
    return wt


def _is_const_matrix(v: Value) -> bool:
    return v.is_const and v.type.rank == 2


@aten("linear.default")
def _linear(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("linear", [ctx.t(a["input"]), ctx.t(a["weight"]), ctx.opt(a["bias"])])


@aten("matmul.default", "mm.default", "bmm.default")
def _matmul(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x, w = ctx.t(a["self"]), ctx.t(a["other"] if "other" in a else a["mat2"])
    if _is_const_matrix(w) and x.type.rank >= 2 and not x.is_const:
        return ctx.emit("linear", [x, _weight_t(ctx, w)])
    return ctx.emit("matmul", [x, w])


@aten("addmm.default")
def _addmm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    bias, x, w = ctx.t(a["self"]), ctx.t(a["mat1"]), ctx.t(a["mat2"])
    beta, alpha = a["beta"], a["alpha"]
    if alpha != 1:
        x = ctx.emit("mul", [x, ctx.scalar(alpha, x.dtype)])
    if beta != 1:
        bias = ctx.emit("mul", [bias, ctx.scalar(beta, bias.dtype)])
    if _is_const_matrix(w) and not x.is_const:
        if bias.type.rank == 1 and bias.dtype is x.dtype and bias.shape[0] == w.shape[1]:
            return ctx.emit("linear", [x, _weight_t(ctx, w), bias])
        return ctx.emit("add", [ctx.emit("linear", [x, _weight_t(ctx, w)]), bias])
    return ctx.emit("add", [ctx.emit("matmul", [x, w]), bias])


@aten("baddbmm.default")
def _baddbmm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    bias, x, w = ctx.t(a["self"]), ctx.t(a["batch1"]), ctx.t(a["batch2"])
    y = ctx.emit("matmul", [x, w])
    if a["alpha"] != 1:
        y = ctx.emit("mul", [y, ctx.scalar(a["alpha"], y.dtype)])
    if a["beta"] == 0:
        return y
    if a["beta"] != 1:
        bias = ctx.emit("mul", [bias, ctx.scalar(a["beta"], bias.dtype)])
    return ctx.emit("add", [y, bias])


# ---- convolution ------------------------------------------------------------------------------


def _ints(v: Any, n: int) -> tuple[int, ...]:
    v = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return tuple(v * n if len(v) == 1 else v)


def _conv_padding(padding: Any, w: Value, dilation: Sequence[int], nsp: int) -> tuple[int, ...]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * nsp
        # 'same': total padding dilation*(k-1), the odd extra on the end (as torch does).
        ks = [int(k) for k in w.shape[2:]]
        tot = [d * (k - 1) for d, k in zip(dilation, ks)]
        return tuple(t // 2 for t in tot) + tuple(t - t // 2 for t in tot)
    return _ints(padding, nsp)


def _batch1(ctx: Ctx, x: Value, nsp: int) -> tuple[Value, bool]:
    """x with a batch axis of 1 in front when it is unbatched ([C, *spatial], which torch's
    convolutions and pools accept), and whether one was added (see :func:`_unbatch`)."""
    if x.type.rank == nsp + 1:
        return ctx.emit("unsqueeze", [x], axes=(0,)), True
    return x, False


def _unbatch(ctx: Ctx, y: Value | None, added: bool) -> Value | None:
    return ctx.emit("squeeze", [y], axes=(0,)) if added and y is not None else y


def _conv(ctx: Ctx, x: Value, w: Value, b: Value | None, stride: Any, padding: Any,
          dilation: Any, groups: int, transposed: bool = False, output_padding: Any = 0) -> Value:
    x, added = _batch1(ctx, x, w.type.rank - 2)
    y = _conv_batched(ctx, x, w, b, stride, padding, dilation, groups, transposed, output_padding)
    return _unbatch(ctx, y, added)  # type: ignore[return-value]


def _conv_batched(ctx: Ctx, x: Value, w: Value, b: Value | None, stride: Any, padding: Any,
                  dilation: Any, groups: int, transposed: bool, output_padding: Any) -> Value:
    nsp = x.type.rank - 2
    dil = _ints(dilation, nsp)
    attrs = dict(stride=_ints(stride, nsp), padding=_conv_padding(padding, w, dil, nsp),
                 dilation=dil, groups=int(groups))
    if transposed:
        return ctx.emit("conv_transpose", [x, w, b], output_padding=_ints(output_padding, nsp),
                        **attrs)
    return ctx.emit("conv", [x, w, b], **attrs)


@aten("conv1d.default", "conv2d.default", "conv3d.default", "conv1d.padding", "conv2d.padding",
      "conv3d.padding")
def _convnd(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _conv(ctx, ctx.t(a["input"]), ctx.t(a["weight"]), ctx.opt(a["bias"]), a["stride"],
                 a["padding"], a["dilation"], a["groups"])


@aten("convolution.default", "_convolution.default")
def _convolution(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _conv(ctx, ctx.t(a["input"]), ctx.t(a["weight"]), ctx.opt(a["bias"]), a["stride"],
                 a["padding"], a["dilation"], a["groups"], bool(a["transposed"]),
                 a["output_padding"])


@aten("conv_transpose1d.default", "conv_transpose2d.input", "conv_transpose3d.input")
def _conv_transpose(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return _conv(ctx, ctx.t(a["input"]), ctx.t(a["weight"]), ctx.opt(a["bias"]), a["stride"],
                 a["padding"], a["dilation"], a["groups"], True, a["output_padding"])


# ---- normalisation ----------------------------------------------------------------------------


def _per_channel(ctx: Ctx, v: Value | None, c: Any, fill: float, dtype: dt.DType) -> Value:
    if v is not None:
        return v
    if not isinstance(c, int):
        return ctx.emit("full", [], shape=(c,), value=fill, dtype=dtype.name)
    return ctx.const(torch.full((c,), fill, dtype=dtype.container), dtype)


def _batch_norm(ctx: Ctx, a: dict) -> Value:
    x = ctx.t(a["input"])
    c = x.shape[1]
    w = _per_channel(ctx, ctx.opt(a["weight"]), c, 1.0, x.dtype)
    b = _per_channel(ctx, ctx.opt(a["bias"]), c, 0.0, x.dtype)
    mean, var = ctx.t(a["running_mean"]), ctx.t(a["running_var"])
    return ctx.emit("batch_norm", [x, w, b, mean, var], eps=float(a["eps"]))


@aten("_native_batch_norm_legit_no_training.default")
def _bn_no_training(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, None, None]:
    return _batch_norm(ctx, a), None, None


@aten("native_batch_norm.default", "_native_batch_norm_legit.default", "batch_norm.default")
def _bn(ctx: Ctx, n: fx.Node, a: dict) -> Any:
    if a["training"]:
        raise FrontendError(f"{ctx.node_name}: batch norm in training mode; call model.eval()")
    y = _batch_norm(ctx, a)
    return y if "batch_norm.default" == str(n.target).split("aten.")[-1] else (y, None, None)


@aten("_native_batch_norm_legit.no_stats")
def _bn_batch_stats(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, None, None]:
    """BatchNorm without running statistics (``track_running_stats=False``): even in eval mode
    torch normalises by the batch's own per-channel mean and biased variance."""
    x = ctx.t(a["input"])
    rank = x.type.rank
    axes = (0,) + tuple(range(2, rank))
    mean = ctx.emit("reduce_mean", [x], axes=axes, keepdims=True)
    d = ctx.emit("sub", [x, mean])
    var = ctx.emit("reduce_mean", [ctx.emit("mul", [d, d])], axes=axes, keepdims=True)
    y = ctx.emit("mul", [d, ctx.emit("rsqrt", [ctx.emit("add", [var, ctx.scalar(float(a["eps"]), x.dtype)])])])
    shape = (x.shape[1],) + (1,) * (rank - 2)
    for key, op in (("weight", "mul"), ("bias", "add")):
        v = ctx.opt(a[key])
        if v is not None:
            y = ctx.emit(op, [y, ctx.emit("reshape", [v], shape=shape)])
    return y, None, None


@aten("layer_norm.default")
def _layer_norm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("layer_norm", [ctx.t(a["input"]), ctx.opt(a["weight"]), ctx.opt(a["bias"])],
                    axis=-len(a["normalized_shape"]), eps=float(a["eps"]))


@aten("native_layer_norm.default")
def _native_layer_norm(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, None, None]:
    return _layer_norm(ctx, n, a), None, None


@aten("rms_norm.default")
def _rms_norm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["input"])
    eps = a["eps"]
    if eps is None:  # torch's default: the machine epsilon of the input's dtype
        eps = torch.finfo(x.dtype.container).eps
    return ctx.emit("rms_norm", [x, ctx.opt(a["weight"])], axis=-len(a["normalized_shape"]),
                    eps=float(eps))


@aten("group_norm.default")
def _group_norm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    return ctx.emit("group_norm", [ctx.t(a["input"]), ctx.opt(a["weight"]), ctx.opt(a["bias"])],
                    groups=int(a["num_groups"]), eps=float(a["eps"]))


@aten("instance_norm.default")
def _instance_norm(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    if a["use_input_stats"] is False:
        return _batch_norm(ctx, a)
    return ctx.emit("instance_norm", [ctx.t(a["input"]), ctx.opt(a["weight"]),
                                      ctx.opt(a["bias"])], eps=float(a["eps"]))


# ---- attention, softmax -----------------------------------------------------------------------


@aten("scaled_dot_product_attention.default")
def _sdpa(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    if a["dropout_p"]:
        raise FrontendError(f"{ctx.node_name}: attention dropout_p={a['dropout_p']} at inference")
    q, k, v = ctx.t(a["query"]), ctx.t(a["key"]), ctx.t(a["value"])
    mask = ctx.opt(a["attn_mask"])
    if mask is not None and mask.dtype is not dt.boolean:
        mask = ctx.cast(mask, q.dtype)
    scale = a["scale"]
    gqa = bool(a["enable_gqa"])
    # torch broadcasts one k/v head over all q heads (multi-query attention, e.g. Falcon):
    # grouped-query attention with a single group
    if q.type.rank >= 3 and k.type.rank >= 3 and k.type.shape[-3] == 1 and q.type.shape[-3] != 1 \
            and v.type.shape[-3] == 1:
        gqa = True
    return ctx.emit("sdpa", [q, k, v, mask], causal=bool(a["is_causal"]),
                    scale=None if scale is None else float(scale), gqa=gqa)


def _softmax_like(op: str):
    def h(ctx: Ctx, n: fx.Node, a: dict) -> Value:
        x = ctx.cast(ctx.t(a["self"]), ctx.out_dtype(n))
        return ctx.emit(op, [x], axis=int(a["dim"]))
    return h


aten("softmax.int", "_softmax.default", "_safe_softmax.default")(_softmax_like("softmax"))
aten("log_softmax.int", "_log_softmax.default")(_softmax_like("log_softmax"))


# ---- pooling ----------------------------------------------------------------------------------


def _pool_args(a: dict, nsp: int) -> dict:
    kernel = _ints(a["kernel_size"], nsp)
    stride = _ints(a["stride"], nsp) if a["stride"] else kernel  # torch: stride defaults to kernel
    return dict(kernel=kernel, stride=stride, padding=_ints(a["padding"], nsp),
                ceil_mode=bool(a["ceil_mode"]))


def _spatial(n: fx.Node) -> int:
    """The spatial rank an ``aten.*pool{1,2,3}d`` op works on (its name says it)."""
    m = re.search(r"pool(\d)d", str(n.target))
    assert m is not None, n.target
    return int(m.group(1))


@aten("max_pool1d_with_indices.default", "max_pool2d_with_indices.default",
      "max_pool3d_with_indices.default", "max_pool1d.default", "max_pool2d.default",
      "max_pool3d.default")
def _max_pool(ctx: Ctx, n: fx.Node, a: dict) -> Any:
    nsp = _spatial(n)
    x, added = _batch1(ctx, ctx.t(a["self"]), nsp)
    y = ctx.emit("max_pool", [x], dilation=_ints(a["dilation"], nsp), **_pool_args(a, nsp))
    if "with_indices" not in str(n.target):
        return _unbatch(ctx, y, added)
    # the indices only when something reads them (max_unpool, a returned tensor): they cost a
    # window gather and an argmax (aten_pool_index.py)
    if not any(u.target is not operator.getitem or u.args[1] == 1 for u in n.users):
        return _unbatch(ctx, y, added), None
    from .aten_pool_index import max_pool_indices
    out = ((1,) if added else ()) + tuple(ctx.out_type(n, 0).shape)
    idx = max_pool_indices(ctx, x, out, dilation=_ints(a["dilation"], nsp), **_pool_args(a, nsp))
    return _unbatch(ctx, y, added), _unbatch(ctx, idx, added)


@aten("avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default")
def _avg_pool(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    nsp = _spatial(n)
    x, added = _batch1(ctx, ctx.t(a["self"]), nsp)
    args = _pool_args(a, nsp)
    if a.get("divisor_override") is not None:
        from .aten_pool_index import avg_pool_divisor
        out = ((1,) if added else ()) + tuple(ctx.out_type(n).shape)
        y = avg_pool_divisor(ctx, x, out, int(a["divisor_override"]), **args)
    else:
        y = ctx.emit("avg_pool", [x], count_include_pad=bool(a["count_include_pad"]), **args)
    return _unbatch(ctx, y, added)  # type: ignore[return-value]


@aten("adaptive_avg_pool1d.default", "adaptive_avg_pool2d.default", "adaptive_avg_pool3d.default",
      "_adaptive_avg_pool2d.default", "_adaptive_avg_pool3d.default")
def _adaptive_avg_pool(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    nsp = _spatial(n)
    x, added = _batch1(ctx, ctx.t(a["self"]), nsp)
    return _unbatch(ctx, _adaptive_avg_batched(ctx, x, _ints(a["output_size"], nsp)), added)  # type: ignore[return-value]


@aten("adaptive_max_pool1d.default", "adaptive_max_pool2d.default", "adaptive_max_pool3d.default")
def _adaptive_max_pool(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value | None, None]:
    """Adaptive max pooling whose output divides the input (timm's "max" / "avgmax" global
    pools: output 1): one ``max_pool`` with kernel = stride = input / output. Its indices and
    windows of unequal sizes are refused by name."""
    if any(u.target is not operator.getitem or u.args[1] == 1 for u in n.users):
        raise FrontendError(f"{ctx.node_name}: adaptive max pooling's indices are not supported")
    nsp = _spatial(n)
    x, added = _batch1(ctx, ctx.t(a["self"]), nsp)
    out = _ints(a["output_size"], nsp)
    ins = x.shape[2:]
    if all(o == 1 for o in out):
        y = ctx.emit("reduce_max", [x], axes=tuple(range(2, 2 + nsp)), keepdims=True)
    elif all(isinstance(i, int) and i % o == 0 for i, o in zip(ins, out)):
        k = tuple(int(i) // o for i, o in zip(ins, out))
        y = ctx.emit("max_pool", [x], kernel=k, stride=k)
    else:
        raise FrontendError(f"{ctx.node_name}: adaptive max pooling from {tuple(ins)} to {out} "
                            f"(windows of unequal sizes) is not supported")
    return _unbatch(ctx, y, added), None


def _adaptive_avg_batched(ctx: Ctx, x: Value, out: tuple[int, ...]) -> Value:
    if all(o == 1 for o in out):
        return ctx.emit("global_avg_pool", [x])
    ins = x.shape[2:]
    if not all(isinstance(i, int) and i % o == 0 for i, o in zip(ins, out)):
        from .aten_image import adaptive_avg_pool   # windows of unequal sizes
        return adaptive_avg_pool(ctx, x, out)
    k = tuple(i // o for i, o in zip(ins, out))
    return ctx.emit("avg_pool", [x], kernel=k, stride=k)


@aten("_trilinear.default")
def _trilinear(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    """aten._trilinear (nn.Bilinear): the three inputs, each unsqueezed at its ``expand``
    positions, multiplied and summed over ``sumdim``; one einsum whose letters are those
    positions."""
    xs = [ctx.t(a[k]) for k in ("i1", "i2", "i3")]
    expands = [tuple(int(d) for d in a[k]) for k in ("expand1", "expand2", "expand3")]
    rank = xs[0].type.rank + len(expands[0])
    letters = "abcdefghijklmnopqrstuvwxyz"
    if rank > len(letters):
        raise FrontendError(f"{ctx.node_name}: _trilinear of rank {rank}")
    terms = ["".join(letters[p] for p in range(rank) if p not in ex) for ex in expands]
    summed = {int(d) for d in a["sumdim"]}
    out = "".join(letters[p] for p in range(rank) if p not in summed)
    return ctx.emit("einsum", xs, equation=",".join(terms) + "->" + out)
