"""Normalisation and softmax ops (family "nn"): layer_norm, rms_norm, batch_norm, group_norm,
instance_norm, softmax, log_softmax.

References compute f16/bf16 in f32 and round once at the end.
"""
from __future__ import annotations

from typing import Callable, Sequence

import sympy
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, dim_str
from .common import check_dim, norm_axis, require, same_dtype
from .nn import opt, require_compute_float, upcast
from .registry import AttrSpec, Cost, CostFn, defop, io_bytes, numel


def _norm_cost(per_element: int) -> CostFn:
    """About ``per_element`` flops per element plus 2 per element for each affine operand."""
    def cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
        n = numel(ins[0])
        affine = sum(1 for t in ins[1:3] if t is not None)
        return Cost(n * (per_element + affine), io_bytes(ins, outs))
    return cost


def _check_param(t: TensorType | None, shape: Sequence, what: str) -> None:
    if t is None:
        return
    want = "[" + ",".join(dim_str(d) for d in shape) + "]"
    if t.rank != len(shape):
        raise ShapeError(f"{what} must have shape {want}, got {t}")
    for a, b in zip(t.shape, shape):
        check_dim(a, b, f"{what} must have shape {want}, got {t}")


# ---- layer_norm / rms_norm -------------------------------------------------------------------

def _trailing_norm_shape(n_params: int) -> Callable:
    def shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
        x = require(ins[0], "x")
        require_compute_float(x, "x")
        params = [opt(ins, i) for i in range(1, 1 + n_params)]
        same_dtype([x, *params])
        if x.rank == 0:
            raise ShapeError("x must have rank >= 1")
        axis = norm_axis(attrs["axis"], x.rank)
        for t, what in zip(params, ("weight", "bias")):
            _check_param(t, x.shape[axis:], what)
        if attrs["eps"] < 0:
            raise ShapeError(f"eps must be >= 0, got {attrs['eps']}")
        return [x]
    return shape


def _layer_norm_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, b = xs[0], opt(xs, 1), opt(xs, 2)
    axis = norm_axis(attrs["axis"], x.dim())
    return F.layer_norm(upcast(x), tuple(x.shape[axis:]), upcast(w), upcast(b),
                        attrs["eps"]).to(x.dtype)


def _rms_norm_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w = upcast(xs[0]), upcast(opt(xs, 1))
    dims = tuple(range(norm_axis(attrs["axis"], x.dim()), x.dim()))
    y = x * torch.rsqrt(x.square().mean(dim=dims, keepdim=True) + attrs["eps"])
    if w is not None:
        y = y * w
    return y.to(xs[0].dtype)


_AXIS_EPS = {"axis": AttrSpec("int", -1, doc="first normalised dim"), "eps": AttrSpec("float", 1e-5)}

defop("layer_norm", family="nn", inputs=(1, 3), input_names=("x", "weight", "bias"),
      attrs=_AXIS_EPS, shape=_trailing_norm_shape(2), reference=_layer_norm_ref,
      cost=_norm_cost(5),
      doc="Layer normalisation (ONNX LayerNormalization, single output): over the dims "
          "axis..rank-1 of x, y = (x - mean) / sqrt(var + eps) * weight + bias with the biased "
          "variance. weight and bias are optional and have shape x.shape[axis:]. Output has "
          "x's type; all operands share one float dtype.")

defop("rms_norm", family="nn", inputs=(1, 2), input_names=("x", "weight"),
      attrs={**_AXIS_EPS, "eps": AttrSpec("float", 1e-6)}, shape=_trailing_norm_shape(1),
      reference=_rms_norm_ref, cost=_norm_cost(4),
      doc="RMS normalisation: over the dims axis..rank-1 of x, y = x / sqrt(mean(x^2) + eps) "
          "* weight, with optional weight of shape x.shape[axis:]. Output has x's type; all "
          "operands share one float dtype.")


# ---- channel norms ---------------------------------------------------------------------------

def _channel_shape(min_rank: int, names: Sequence[str], required: bool) -> Callable:
    """Shape rule of norms with per-channel [C] operands ``names`` after x [N, C, ...]."""
    def shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
        x = require(ins[0], "x")
        require_compute_float(x, "x")
        params = [opt(ins, i + 1) for i in range(len(names))]
        if required:
            for t, what in zip(params, names):
                require(t, what)
        same_dtype([x, *params])
        if x.rank < min_rank:
            raise ShapeError(f"x must be [N, C, ...] with rank >= {min_rank}, got {x}")
        for t, what in zip(params, names):
            _check_param(t, (x.shape[1],), what)
        g = attrs.get("groups")
        if g is not None:
            if g < 1:
                raise ShapeError(f"groups must be >= 1, got {g}")
            c = x.shape[1]
            if (isinstance(c, int) and c % g) or (not isinstance(c, int)
                                                   and not sympy.sympify(c / g).is_integer):
                raise ShapeError(f"channels {dim_str(c)} are not divisible by groups {g}")
        return [x]
    return shape


def _batch_norm_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, s, b, m, v = (upcast(t) for t in xs)
    return F.batch_norm(x, m, v, s, b, training=False, eps=attrs["eps"]).to(xs[0].dtype)


def _group_norm_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, b = upcast(xs[0]), upcast(opt(xs, 1)), upcast(opt(xs, 2))
    return F.group_norm(x, attrs["groups"], w, b, attrs["eps"]).to(xs[0].dtype)


def _instance_norm_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, b = upcast(xs[0]), upcast(opt(xs, 1)), upcast(opt(xs, 2))
    return F.instance_norm(x, weight=w, bias=b, eps=attrs["eps"]).to(xs[0].dtype)


_EPS = {"eps": AttrSpec("float", 1e-5)}

defop("batch_norm", family="nn", inputs=5, input_names=("x", "scale", "bias", "mean", "var"),
      attrs=_EPS, shape=_channel_shape(2, ("scale", "bias", "mean", "var"), True),
      reference=_batch_norm_ref,
      cost=lambda ins, outs, a: Cost(2 * numel(ins[0]), io_bytes(ins, outs)),
      doc="Inference batch normalisation over channel dim 1 (ONNX BatchNormalization, "
          "training_mode=0): y = (x - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c] for x "
          "[N, C, ...] (rank >= 2) and the four per-channel [C] operands, all of x's float dtype. "
          "Costed as one multiply-add per element (the constants fold).")

defop("group_norm", family="nn", inputs=(1, 3), input_names=("x", "weight", "bias"),
      attrs={"groups": AttrSpec("int"), **_EPS}, shape=_channel_shape(2, ("weight", "bias"), False),
      reference=_group_norm_ref, cost=_norm_cost(5),
      doc="Group normalisation (torch GroupNorm; ONNX GroupNormalization-21): the C channels of "
          "x [N, C, ...] are split into `groups` groups (C divisible by groups); each (sample, "
          "group) is normalised to zero mean and unit biased variance with eps, then scaled "
          "and shifted by the optional per-channel weight [C] and bias [C]. Output has x's type.")

defop("instance_norm", family="nn", inputs=(1, 3), input_names=("x", "weight", "bias"),
      attrs=_EPS, shape=_channel_shape(3, ("weight", "bias"), False), reference=_instance_norm_ref,
      cost=_norm_cost(5),
      doc="Instance normalisation (ONNX InstanceNormalization): each (sample, channel) of x "
          "[N, C, *spatial] (rank >= 3) is normalised over its spatial dims to zero mean and unit "
          "biased variance with eps, then scaled and shifted by the optional per-channel "
          "weight [C] and bias [C]. Output has x's type.")


# ---- softmax ---------------------------------------------------------------------------------

def _softmax_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    require_compute_float(x, "x")
    norm_axis(attrs["axis"], x.rank)
    return [x]


def _softmax_ref(fn: Callable) -> Callable:
    def ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
        x = xs[0]
        return fn(upcast(x), dim=norm_axis(attrs["axis"], x.dim()) if x.dim() else 0).to(x.dtype)
    return ref


def _softmax_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(5 * numel(ins[0]), io_bytes(ins, outs))   # max, sub, exp, sum, div


defop("softmax", family="nn", inputs=1, input_names=("x",), attrs={"axis": AttrSpec("int", -1)},
      shape=_softmax_shape, reference=_softmax_ref(torch.softmax), cost=_softmax_cost,
      doc="exp(x - max) / sum(exp(x - max)) along one axis (ONNX Softmax-13, torch.softmax); "
          "output has x's float type and shape.")
defop("log_softmax", family="nn", inputs=1, input_names=("x",), attrs={"axis": AttrSpec("int", -1)},
      shape=_softmax_shape, reference=_softmax_ref(torch.log_softmax), cost=_softmax_cost,
      doc="x - max - log(sum(exp(x - max))) along one axis (ONNX LogSoftmax-13, "
          "torch.log_softmax); output has x's float type and shape.")
