"""Low-rank ops: ``lowrank_linear`` and the fused ``lowrank_ffn`` (family "quant").

A dense W [N, K] is replaced by factors u [N, R] and v [R, K] (W ~ u @ v, SVD-LLM / FlashSVD).
References compute in float32 (float64 when any float operand is f64) and round once to x's
dtype; FlashSVD's chunking of the [T, D] intermediate is a kernel concern, not a semantic one.
"""
from __future__ import annotations

from typing import Sequence

import sympy
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType
from .common import check_dim, require, same_dtype
from .quant import check_linear_bias, compute_dtype, require_real, shape_str, tokens
from .registry import AttrSpec, Cost, defop, io_bytes

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


def apply_activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """The named activation: gelu (erf), gelu_tanh (tanh approximation), relu, silu."""
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "relu":
        return torch.relu(x)
    if name == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {name!r}")


def _factor_dims(x_k: Dim, u: TensorType, v: TensorType, which: str) -> tuple[Dim, Dim]:
    """Check u [N, R] and v [R, K] against an input width K; returns (N, R)."""
    if u.rank != 2 or v.rank != 2:
        raise ShapeError(f"{which}: u must be [N, R] and v [R, K], got u {shape_str(u.shape)}, "
                         f"v {shape_str(v.shape)}")
    check_dim(v.shape[0], u.shape[1], f"{which}: rank of v (v.shape[0]) vs u.shape[1]")
    check_dim(v.shape[1], x_k, f"{which}: v.shape[1] vs input features")
    return u.shape[0], u.shape[1]


def _lowrank(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, b: torch.Tensor | None,
             cd: torch.dtype) -> torch.Tensor:
    y = (x.to(cd) @ v.to(cd).T) @ u.to(cd).T
    return y + b.to(cd) if b is not None else y


def _chain_cost(t: sympy.Expr, k: Dim, r: Dim, n: Dim, bias: bool) -> sympy.Expr:
    k, r, n = (sympy.sympify(d) for d in (k, r, n))
    return 2 * t * r * (k + n) + (t * n if bias else 0)


# ---- lowrank_linear ------------------------------------------------------------------------
def _ll_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, u, v = require(ins[0], "x"), require(ins[1], "u"), require(ins[2], "v")
    bias = ins[3] if len(ins) > 3 else None
    require_real(x, "x")
    if x.rank < 1:
        raise ShapeError("x must have rank >= 1")
    same_dtype([x, u, v, bias], "x, u, v and bias")
    n, _ = _factor_dims(x.shape[-1], u, v, "lowrank_linear")
    check_linear_bias(bias, n)
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (n,))]


def _ll_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, u, v = ins[0], ins[1], ins[2]
    bias = ins[3] if len(ins) > 3 else None
    return _lowrank(x, u, v, bias, compute_dtype(x)).to(x.dtype)


def _ll_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    x, u, v = ins[0], ins[1], ins[2]
    bias = len(ins) > 3 and ins[3] is not None
    return Cost(_chain_cost(tokens(x), v.shape[1], v.shape[0], u.shape[0], bias), io_bytes(ins, outs))


defop("lowrank_linear", family="quant", inputs=(3, 4), input_names=("x", "u", "v", "bias"),
      shape=_ll_shape, reference=_ll_ref, cost=_ll_cost,
      doc="lowrank_linear(x, u, v, bias?) -> x's dtype, [..., N]: y = (x @ v^T) @ u^T + bias, the "
          "factored form of a linear layer with W ~ u @ v. x [..., K], v [R, K], u [N, R], bias "
          "[N]; all one float dtype. Computed in float32 (float64 for f64) in exactly that "
          "association (the [.., R] rank-space product first) and rounded once to x's dtype.")


# ---- lowrank_ffn ---------------------------------------------------------------------------
def _ffn_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    u1, v1 = require(ins[1], "u1"), require(ins[2], "v1")
    b1 = ins[3]
    u2, v2 = require(ins[4], "u2"), require(ins[5], "v2")
    b2 = ins[6] if len(ins) > 6 else None
    require_real(x, "x")
    if x.rank < 1:
        raise ShapeError("x must have rank >= 1")
    same_dtype([x, u1, v1, b1, u2, v2, b2], "x, factors and biases")
    d, _ = _factor_dims(x.shape[-1], u1, v1, "first layer (u1, v1)")
    check_linear_bias(b1, d)
    n, _ = _factor_dims(d, u2, v2, "second layer (u2, v2)")
    check_linear_bias(b2, n)
    return [TensorType(x.dtype, tuple(x.shape[:-1]) + (n,))]


def _ffn_ref(ins: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, u1, v1, b1, u2, v2 = ins[:6]
    b2 = ins[6] if len(ins) > 6 else None
    cd = compute_dtype(x)
    h = apply_activation(_lowrank(x, u1, v1, b1, cd), attrs["activation"])
    return _lowrank(h, u2, v2, b2, cd).to(x.dtype)


def _ffn_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    x, u1, v1, b1, u2, v2 = ins[:6]
    b2 = ins[6] if len(ins) > 6 else None
    t = tokens(x)
    d = u1.shape[0]
    flops = (_chain_cost(t, v1.shape[1], v1.shape[0], d, b1 is not None)
             + _chain_cost(t, v2.shape[1], v2.shape[0], u2.shape[0], b2 is not None)
             + 8 * t * sympy.sympify(d))                  # the activation, a handful of ops each
    # Fused: the [T, D] intermediate never goes to memory, so bytes are operands and output only.
    return Cost(flops, io_bytes(ins, outs))


defop("lowrank_ffn", family="quant", inputs=(6, 7),
      input_names=("x", "u1", "v1", "b1", "u2", "v2", "b2"),
      shape=_ffn_shape, reference=_ffn_ref, cost=_ffn_cost,
      attrs={"activation": AttrSpec("str", "gelu", ACTIVATIONS)},
      doc="lowrank_ffn(x, u1, v1, b1?, u2, v2, b2?)[activation] -> x's dtype, [..., N]: the "
          "FlashSVD fused low-rank FFN y = lowrank_linear(act(lowrank_linear(x, u1, v1, b1)), u2, "
          "v2, b2) with v1 [R1, K], u1 [D, R1], b1 [D], v2 [R2, D], u2 [N, R2], b2 [N]; b1 and b2 "
          "are optional (None). act is gelu (erf), gelu_tanh, relu or silu. One float dtype "
          "throughout; computed in float32 (float64 for f64) without rounding the [.., D] "
          "intermediate, and rounded once to x's dtype. Kernels may chunk D so the intermediate "
          "never exists in memory; the result is the same up to summation order.")
