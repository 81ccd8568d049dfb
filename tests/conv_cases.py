"""Convolution graphs shared by the library (oneDNN) and generated C convolution tests: a
convolution with each epilogue the C target fuses into its step."""
from __future__ import annotations

import torch

from scalefold.ir import Graph

EPILOGUES = {
    "none": [], "relu": [("relu", {})], "silu": [("silu", {})], "sigmoid": [("sigmoid", {})],
    "tanh": [("tanh", {})], "hardswish": [("hardswish", {})], "gelu": [("gelu", {})],
    "gelu_tanh": [("gelu", {"approximate": "tanh"})], "leaky_relu": [("leaky_relu", {"alpha": 0.2})],
    "hardsigmoid": [("hardsigmoid", {})], "relu6": [("clip", {"min": 0.0, "max": 6.0})],
    "add": [("add", {})], "add_relu": [("add", {}), ("relu", {})],
    "add_hardswish": [("add", {}), ("hardswish", {})],
    # inference batch norm (torch's kernel on the channels-last result), then an activation
    "bn": [("batch_norm", {"eps": 1e-3})], "bn_relu": [("batch_norm", {}), ("relu", {})],
    "bn_silu": [("batch_norm", {}), ("silu", {})], "bn_relu6": [("batch_norm", {}), ("clip", {"min": 0.0, "max": 6.0})],
}


def conv_graph(epilogue: str, groups: int, stride: int, dilation: int, bias: bool, k: int,
               ci: int = 8, co: int = 16, rank: int = 4) -> Graph:
    """x [B, ci, H, W] (rank 3: [B, ci, L]) -> conv (``co`` channels, kernel ``k``, "same"
    padding for stride 1) -> the epilogue's nodes -> times 2 (so the epilogue's result is not a
    graph output). An ``add`` epilogue reads a second input ``r``."""
    g = Graph("conv")
    spatial = ["H", "W"] if rank == 4 else ["L"]
    x = g.add_input(f"f32[B,{ci},{','.join(spatial)}]", "x")
    w = g.add_const(torch.randn(co, ci // groups, *([k] * len(spatial))) * 0.3)
    ins = [x, w, g.add_const(torch.randn(co))] if bias else [x, w]
    y = g.add("conv", ins, {"stride": (stride,), "padding": (dilation * (k // 2),), "dilation": (dilation,),
                            "groups": groups})
    outs = [f"floor((({d} + {2 * dilation * (k // 2) - dilation * (k - 1) - 1}))/{stride}) + 1" for d in spatial]
    for op, attrs in EPILOGUES[epilogue]:
        if op == "add":
            r = g.add_input(f"f32[B,{co},{','.join(outs)}]", "r")
            y = g.add("add", [r, y])
        elif op == "batch_norm":
            y = g.add("batch_norm", [y, g.add_const(torch.randn(co)), g.add_const(torch.randn(co)),
                                     g.add_const(torch.randn(co)), g.add_const(torch.rand(co) + 0.1)], attrs)
        else:
            y = g.add(op, [y], attrs)
    g.set_outputs([g.add("mul", [y, g.add_const(torch.tensor(2.0))])])
    return g
