"""Converters for the ``com.microsoft`` ops that onnxruntime's own graph optimizer writes when
it saves an optimised model (``SessionOptions.optimized_model_filepath`` at the "extended"
level): ``FusedConv`` (Conv, an optional summand ``Z``, then an activation) and ``FusedGemm``
(Gemm then an activation). They lower to the plain Conv / Gemm converters followed by the IR's
activation, so the backends fuse them again their own way.

Activations follow onnxruntime's CPU kernels, which also decide what a node must state:
FusedConv takes none, Relu, Tanh, Sigmoid, LeakyRelu, Clip and HardSigmoid, the last three with
all their parameters in ``activation_params`` (alpha; min, max; alpha, beta); FusedGemm takes
Relu, Tanh, Sigmoid, LeakyRelu, HardSigmoid and Elu (one is required), with
``activation_alpha`` / ``activation_beta``, required where the activation has them. Other activations, or missing parameters, raise ``UnsupportedOpError``
naming the node and the form, as onnxruntime refuses them too.
"""
from __future__ import annotations

from typing import Any, Sequence

import onnx

from ...ir.graph import Value
from ..onnx_ctx import Ctx, onnx_op
from .contrib import unsupported
from .matmulnbits import MS_DOMAIN
from .nn import _conv, _gemm

# name -> the parameters it reads, in activation_params order (onnxruntime has no defaults
# for them: a node must give them all)
_PARAMS: dict[str, tuple[str, ...]] = {
    "Relu": (), "Tanh": (), "Sigmoid": (), "LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta"),
    "Clip": ("min", "max"), "Elu": ("alpha",),
}


def _activation(ctx: Ctx, y: Value, name: str, params: dict[str, float]) -> Value:
    """``y`` through onnxruntime's fused activation ``name`` ("" for none)."""
    if not name:
        return y
    if name == "Relu":
        return ctx.add("relu", [y])
    if name == "Tanh":
        return ctx.add("tanh", [y])
    if name == "Sigmoid":
        return ctx.add("sigmoid", [y])
    if name == "LeakyRelu":
        return ctx.add("leaky_relu", [y], {"alpha": params["alpha"]})
    if name == "HardSigmoid":
        return ctx.add("hardsigmoid", [y], {"alpha": params["alpha"], "beta": params["beta"]})
    if name == "Clip":
        return ctx.add("clip", [y], {"min": params["min"], "max": params["max"]})
    assert name == "Elu"
    return ctx.add("elu", [y], {"alpha": params["alpha"]})


def _named(ctx: Ctx, name: str, allowed: Sequence[str]) -> tuple[str, ...]:
    if name not in allowed:
        raise unsupported(ctx, f"activation {name!r}" if name else "no activation")
    return _PARAMS.get(name, ())


def _need(ctx: Ctx, name: str, key: str, v: float | None) -> float:
    if v is None:
        raise unsupported(ctx, f"activation {name} without its {key}")
    return float(v)


@onnx_op("FusedConv", domain=MS_DOMAIN)
def _fused_conv(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    name = a.get("activation", "")
    name = name.decode() if isinstance(name, bytes) else name
    spec = _named(ctx, name, ("", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid"))
    given = [float(p) for p in a.get("activation_params", [])]
    if given and len(given) != len(spec):
        raise unsupported(ctx, f"{len(given)} activation_params for {name or 'no activation'}")
    params = {k: _need(ctx, name, k, given[i] if given else None) for i, k in enumerate(spec)}
    conv_attrs = {k: v for k, v in a.items() if k not in ("activation", "activation_params")}
    (y,) = _conv(ctx, node, conv_attrs)
    z = ctx.input(3) if len(node.input) > 3 and node.input[3] else None
    if z is not None:   # the summand comes before the activation, as in onnxruntime's kernel
        y = ctx.add("add", [y, z])
    return [_activation(ctx, y, name, params)]


@onnx_op("FusedGemm", domain=MS_DOMAIN)
def _fused_gemm(ctx: Ctx, node: onnx.NodeProto, a: dict[str, Any]):
    name = a.get("activation", "")
    name = name.decode() if isinstance(name, bytes) else name
    spec = _named(ctx, name, ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid", "Elu"))
    params = {k: _need(ctx, name, k, a.get(f"activation_{k}")) for k in spec}
    gemm_attrs = {k: v for k, v in a.items() if not k.startswith("activation")}
    (y,) = _gemm(ctx, node, gemm_attrs)
    return [_activation(ctx, y, name, params)]
