"""``slice`` with positive steps runs as a strided view of its input (no copy): the q / k / v
slices of a fused QKV projection, rotate_half's halves, chunk / split in torch models."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from scalefold.api import build
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run


def _qkv_graph() -> Graph:
    # ViT attention: linear -> reshape [B, S, 3, H, D] -> transpose -> slice q, k, v -> sdpa
    g = Graph("qkv")
    x = g.add_input("f32[B,S,32]", "x")
    y = g.add("linear", [x, g.add_const(torch.randn(96, 32) * 0.2), g.add_const(torch.randn(96))])
    bd, sd = x.type.shape[0], x.type.shape[1]
    y = g.add("reshape", [y], {"shape": (bd, sd, 3, 4, 8)})
    y = g.add("transpose", [y], {"perm": (2, 0, 3, 1, 4)})
    q, k, v = (g.add("squeeze", [g.add("slice", [y], {"starts": (i,), "ends": (i + 1,), "axes": (0,)})],
                     {"axes": (0,)}) for i in range(3))
    a = g.add("sdpa", [q, k, v], {"scale": 0.35})
    # a generated kernel reading a strided slice, and a slice that is a graph output
    half = g.add("slice", [a], {"starts": (4,), "ends": (8,), "axes": (3,)})
    g.set_outputs([g.add("tanh", [half]), g.add("slice", [k], {"starts": (1,), "ends": (sd,), "axes": (2,),
                                                                "steps": (2,)})])
    return g


@pytest.mark.parametrize("target", ["c"])
def test_qkv_slices_are_views_and_exact(target: str) -> None:
    g = _qkv_graph()
    kinds = [k.kind for k in partition(g, cgen.CAPS).kernels if k.nodes[0].op == "slice"]
    assert kinds == ["view"] * 5
    cm = build(g, target)
    first: list[torch.Tensor] = []
    for b, s in ((2, 7), (1, 1), (2, 7)):
        x = torch.randn(b, s, 32)
        got, want = cm(x), run(g, x)
        for a_, b_ in zip(got, want):
            assert a_.shape == b_.shape and a_.is_contiguous()
            assert_close(a_, b_, rtol=1e-5, atol=1e-5)
        if not first:
            first, kept = list(got), [t.clone() for t in got]
    # the first call's outputs did not change when later calls reused the arena
    assert all(torch.equal(a_, b_) for a_, b_ in zip(first, kept))


def test_negative_step_slice_stays_a_copy() -> None:
    g = Graph("flip")
    x = g.add_input("f32[4,6]", "x")
    y = g.add("slice", [g.add("relu", [x])], {"starts": (-1,), "ends": (-(2 ** 40),), "axes": (1,),
                                               "steps": (-2,)})
    g.set_outputs([g.add("add", [y, y])])
    assert [k.kind for k in partition(g, cgen.CAPS).kernels if k.nodes[0].op == "slice"] == ["reference"]
    x_ = torch.randn(4, 6)
    assert torch.equal(build(g, "c")(x_), run(g, x_)[0])


@pytest.mark.parametrize("bounds", [(2, 2), (5, 1), (0, 2 ** 40), (-3, -1), (3, "S")])
def test_slice_view_bounds(bounds: tuple) -> None:
    g = Graph("sl")
    x = g.add_input("f32[S,5]", "x")
    r = g.add("relu", [x])
    end = x.type.shape[0] if bounds[1] == "S" else bounds[1]
    y = g.add("slice", [r], {"starts": (bounds[0],), "ends": (end,), "axes": (0,)})
    g.set_outputs([g.add("mul", [y, g.add_const(torch.tensor(3.0))])])
    cm = build(g, "c")
    for n in (6, 4):
        x_ = torch.randn(n, 5)
        got, want = cm(x_), run(g, x_)[0]
        assert got.shape == want.shape
        assert torch.equal(got, want)


@pytest.mark.parametrize("outputs", ["base_and_slice", "slice_and_base", "two_slices"])
def test_outputs_sharing_memory_come_back_independent(outputs: str) -> None:
    # a slice (a view) returned next to its base, or two overlapping slices: writing one
    # output must not change the other
    g = Graph("o")
    x = g.add_input("f32[6,5]", "x")
    y = g.add("relu", [x])
    s1 = g.add("slice", [y], {"starts": (0,), "ends": (4,), "axes": (0,)})
    s2 = g.add("slice", [y], {"starts": (2,), "ends": (6,), "axes": (0,)})
    g.set_outputs({"base_and_slice": [y, s1], "slice_and_base": [s1, y], "two_slices": [s1, s2]}[outputs])
    x_ = torch.randn(6, 5)
    a, b = build(g, "c")(x_)
    want_a, want_b = run(g, x_)
    b.fill_(100.0)
    assert torch.equal(a, want_a)
    a.fill_(-1.0)
    assert torch.equal(b, torch.full_like(want_b, 100.0))
