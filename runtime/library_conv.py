"""Library convolution on the CPU: oneDNN with prepacked weights, channels-last activations and
fused post-ops.

``F.conv2d`` on NCHW tensors re-lays out its input and weight for oneDNN on every call (and
takes a slow non-oneDNN path for many depthwise shapes); that made the convolutions 80% of a
MobileNet's time. Here a constant weight is reordered once per input shape into oneDNN's own
blocked layout (``mkldnn._reorder_convolution_weight``), the activation goes in and comes out
channels-last (NHWC in memory, still logically NCHW to every consumer), and an activation or
a residual ``add`` after the convolution runs as a oneDNN post-op of the same primitive
(``mkldnn._convolution_pointwise``). The executor keeps the channels-last result; the next
convolution or pool reads it as it is, a small fused kernel runs as torch ops on it
(``runtime/layout.py``), and other generated kernels make it contiguous first. 1x1
convolutions run as oneDNN GEMMs over the channels-last rows.

Scope: float32, 1-D (as a 2-D convolution of height 1) and 2-D convolutions with symmetric
padding. Everything else (half types, 3-D, asymmetric padding) returns None and runs the
op's reference, as does a call on an empty tensor. The results equal the reference up to float
summation order, NaN included: the activations whose oneDNN post-op maps NaN to a number
(relu, clip, hardsigmoid), and any activation after a residual add, run as torch's in-place
ops on the convolution's fresh result.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..ir.graph import Node
from ..ir.ops.nn import pads, spatial_param

Tensor = torch.Tensor
LibFn = Callable[[Sequence[Tensor | None], Tensor | None], Tensor]

# packed weights kept per convolution (the executor keeps its library functions across
# bindings): one per input shape seen, the oldest dropped first
_PACKED_SHAPES = 8
# up to this many GEMM rows a 1x1 convolution calls BLAS rather than oneDNN
_FEW_ROWS = 8


def _unary_post_op(epi: Node | None) -> tuple[str, list, str] | None:
    """oneDNN's (attr, scalars, algorithm) for the activation ``epi``, or None when it has
    no exact equivalent. ``("none", [], "")`` for no epilogue."""
    if epi is None:
        return ("none", [], "")
    a = epi.attrs
    if epi.op == "gelu":
        return ("gelu", [], a["approximate"])
    simple = {"relu": "relu", "silu": "swish", "sigmoid": "sigmoid", "tanh": "tanh", "hardswish": "hardswish"}
    if epi.op in simple:
        return (simple[epi.op], [], "")
    if epi.op == "leaky_relu":
        return ("leaky_relu", [float(a["alpha"])], "")
    if epi.op == "hardsigmoid" and abs(a["alpha"] - 1 / 6) < 1e-12 and a["beta"] == 0.5:
        return ("hardsigmoid", [], "")
    if epi.op == "clip" and a["min"] is not None and a["max"] is not None and a["min"] <= a["max"]:
        return ("hardtanh", [float(a["min"]), float(a["max"])], "")
    return None


# oneDNN's relu, clip (hardtanh) and hardsigmoid post-ops turn a NaN into a number; the IR
# ops (and the generated kernels) keep it, so those run as torch's in-place ops instead
_NAN_DROPPING = frozenset({"relu", "hardtanh", "hardsigmoid"})


def _torch_activation(attr: str, scalars: list, algo: str) -> Callable[[Tensor], Tensor]:
    """torch's own function for the oneDNN post-op ``attr`` (as ``_unary_post_op`` maps it),
    in place where torch has one (gelu returns a new tensor): exact IR semantics, NaN kept."""
    fns: dict[str, Callable[[Tensor], Tensor]] = {
        "none": lambda t: t, "relu": torch.relu_, "swish": lambda t: F.silu(t, inplace=True),
        "sigmoid": torch.sigmoid_, "tanh": torch.tanh_, "hardswish": lambda t: F.hardswish(t, inplace=True),
        "hardsigmoid": lambda t: F.hardsigmoid(t, inplace=True),
        "gelu": lambda t: F.gelu(t, approximate=algo or "none"),
        "leaky_relu": lambda t: F.leaky_relu_(t, scalars[0]),
        "hardtanh": lambda t: t.clamp_(*scalars),
    }
    return fns[attr]


def split_activation(epi: Node | None) -> tuple[tuple[str, list, str], Callable[[Tensor], Tensor] | None] | None:
    """The activation ``epi`` (None: no epilogue) as a oneDNN post-op (attr, scalars,
    algorithm) plus a torch function to apply to the result after it (None: nothing), or None
    when ``epi`` has no exact equivalent. The activations oneDNN gets wrong on NaN come back
    as ``("none", [], "")`` and torch's in-place op."""
    unary = _unary_post_op(epi)
    if unary is None or unary[0] not in _NAN_DROPPING:
        return (unary, None) if unary is not None else None
    return ("none", [], ""), _torch_activation(*unary)


def _torch_activation_of(epi: Node | None) -> Callable[[Tensor], Tensor]:
    unary = _unary_post_op(epi)
    assert unary is not None
    return _torch_activation(*unary)


CONV_EPILOGUE = frozenset({"relu", "silu", "sigmoid", "tanh", "hardswish", "gelu", "leaky_relu",
                           "hardsigmoid", "clip", "add", "batch_norm"})
# the activations a convolution also takes after its residual add or its batch norm (applied
# by torch: oneDNN refuses all but relu after an add, and its relu maps NaN to 0)
CONV_CHAIN = CONV_EPILOGUE - {"add", "batch_norm"}


def _usable() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and \
            hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except Exception:  # noqa: BLE001  (an unusual torch build: no oneDNN)
        return False


def conv_fn(node: Node, epis: Sequence[Node] = ()) -> LibFn | None:
    """The oneDNN convolution of ``node`` with its epilogue ``epis`` as post-ops (an
    activation, a same-shape ``add``, or an ``add`` then an activation), or a ``batch_norm``
    (then optionally an activation) applied by torch to the convolution's channels-last result,
    as eager PyTorch runs conv, BN and activation; None outside this module's scope. Inputs in
    node order, then the ``add``'s other operand or the batch norm's four parameters."""
    x_t, w_t = node.inputs[0], node.inputs[1]
    if x_t is None or w_t is None or x_t.dtype.name != "f32" or x_t.type.rank not in (3, 4) or not _usable():
        return None
    if any(v is not None and v.dtype.name != "f32" for v in node.inputs[:3]):
        return None
    n = x_t.type.rank - 2
    st, dl, pd = spatial_param(node.attrs, "stride", n, 1), spatial_param(node.attrs, "dilation", n, 1), \
        pads(node.attrs, n)
    if any(p != q for p, q in pd):
        return None
    groups = node.attrs["groups"]
    binary = bool(epis) and epis[0].op == "add"
    bn = epis[0] if epis and epis[0].op == "batch_norm" else None
    act = list(epis[1:] if binary or bn is not None else epis)
    if len(act) > 1:
        return None
    if bn is not None and any(v is None or v.dtype.name != "f32" for v in bn.inputs):
        return None
    split = split_activation(act[0] if act else None)
    if split is None:
        return None
    (attr, scalars, algo), after = split
    if (binary or bn is not None) and act:   # oneDNN adds the residual, torch applies the activation
        attr, scalars, algo = "none", [], ""
        after = _torch_activation_of(act[0])
    if bn is not None:
        # the normalisation comes between the convolution and its activation: torch's
        # inference batch norm (eager's own kernel, channels-last kept), then the activation
        bn_eps, bn_act = float(bn.attrs["eps"]), after or (lambda t: t)

        def after_bn(y: Tensor, p: Sequence[Tensor | None]) -> Tensor:
            scale, bias, mean, var = p
            return bn_act(F.batch_norm(y, mean, var, scale, bias, training=False, eps=bn_eps))
        after = None
    if n == 1:   # a 1-D convolution is a 2-D one of height 1
        stride, dil, padding = [1, st[0]], [1, dl[0]], [0, pd[0][0]]
    else:
        stride, dil, padding = list(st), list(dl), [pd[0][0], pd[1][0]]
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    n_in = len(node.inputs)
    wconst = w_t.const if w_t.is_const else None
    if wconst is not None and n == 1:
        wconst = wconst.unsqueeze(2)
    packed: dict[tuple[int, ...], Tensor] = {}
    lock = threading.Lock()
    pointwise = torch.ops.mkldnn._convolution_pointwise
    # a 1x1 convolution is a GEMM over the channels-last buffer's [N*H*W, C] rows, which
    # oneDNN's matmul runs with less overhead (3x less on a squeeze-excite's 1x1 images)
    gemm = groups == 1 and stride == [1, 1] and padding == [0, 0] and all(k == 1 for k in w_t.shape[2:])
    w2const = wconst.reshape(wconst.shape[0], -1).contiguous() if wconst is not None and gemm else None
    linear = torch.ops.mkldnn._linear_pointwise

    few_rows_act = _torch_activation_of(act[0] if act else None) if bn is None else (lambda t: t)

    def run_gemm(x4: Tensor, w: Tensor, b: Tensor | None, other: Tensor | None) -> Tensor:
        nb, c, h, wd = x4.shape
        w2 = w2const if w2const is not None and w.device.type == "cpu" else w.reshape(w.shape[0], -1).contiguous()
        x2 = x4.permute(0, 2, 3, 1).reshape(-1, c)           # a view: x4 is channels-last
        o2 = None if other is None else \
            other.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(x2.shape[0], -1)
        if x2.shape[0] <= _FEW_ROWS:
            # a few rows (a squeeze-excite's pooled image): BLAS and torch's activation cost
            # a third of oneDNN's fixed overhead per call
            y2 = torch.addmm(b, x2, w2.t()) if b is not None else torch.mm(x2, w2.t())
            if o2 is not None:
                y2 += o2
            return few_rows_act(y2).view(nb, h, wd, -1).permute(0, 3, 1, 2)
        if o2 is not None:
            y2 = linear.binary(x2, o2, w2, b, "add")
        else:
            y2 = linear(x2, w2, b, attr, scalars, algo)
        y2 = after(y2) if after is not None else y2
        return y2.view(nb, h, wd, -1).permute(0, 3, 1, 2)

    def weight(x: Tensor, w: Tensor) -> Tensor:
        if wconst is None or w.device.type != "cpu":
            return (w.unsqueeze(2) if n == 1 else w).contiguous()
        key = tuple(x.shape)
        p = packed.get(key)
        if p is None:
            p = torch.ops.mkldnn._reorder_convolution_weight(wconst.contiguous(), padding, stride, dil,
                                                            groups, list(key))
            with lock:   # graphs with data-dependent sizes run without the executor's lock
                if len(packed) >= _PACKED_SHAPES:
                    packed.pop(next(iter(packed)))
                packed[key] = p
        return p

    def run_conv(x4: Tensor, w: Tensor, bb: Tensor | None, other: Tensor | None) -> Tensor:
        """The convolution of channels-last ``x4`` with the post-ops (``other``: the residual
        of a binary add, given as the 4-D operand)."""
        if gemm:
            return run_gemm(x4, w, bb, other)
        wp = weight(x4, w)
        if other is not None:
            y = pointwise.binary(x4, other.contiguous(memory_format=torch.channels_last), wp, bb, padding, stride,
                                 dil, groups, "add", None, None, [], None)
        else:
            y = pointwise(x4, wp, bb, padding, stride, dil, groups, attr, scalars, algo)
        return after(y) if after is not None else y

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        x, w = xs[0], xs[1]
        assert x is not None and w is not None
        b = xs[2] if has_bias else None
        x4 = x.unsqueeze(2) if n == 1 else x
        if x4.numel() == 0 or w.numel() == 0:
            # oneDNN builds no primitive for empty tensors; the reference handles them
            raise _Empty
        x4 = x4.contiguous(memory_format=torch.channels_last)
        bb = b.contiguous() if b is not None else None
        o4 = None
        if binary:
            o4 = xs[n_in]
            assert o4 is not None
            o4 = o4.unsqueeze(2) if n == 1 else o4
        y = run_conv(x4, w, bb, o4)
        if bn is not None:
            y = after_bn(y, xs[n_in:n_in + 4])
        return y.squeeze(2) if n == 1 else y
    return run


class _Empty(Exception):
    """A convolution of an empty tensor, which the caller's reference runs."""


def with_reference(fast: LibFn, reference: LibFn) -> LibFn:
    """``fast``, falling back to ``reference`` for the empty tensors oneDNN cannot take."""
    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        try:
            return fast(xs, out)
        except _Empty:
            return reference(xs, out)
    return run


__all__ = ["CONV_CHAIN", "CONV_EPILOGUE", "conv_fn", "split_activation", "with_reference"]
