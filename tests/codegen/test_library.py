"""Library kernels: linear with activation / residual-add epilogues, sdpa, matmul."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu", "silu", "sigmoid", "tanh", "add"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_epilogue_matches_interpreter(act: str, bias: bool) -> None:
    g = Graph("lin")
    x = g.add_input("f32[B,S,24]", "x")
    r = g.add_input("f32[B,S,40]", "r")
    w = g.add_const(torch.randn(40, 24) * 0.3)
    ins = [x, w, g.add_const(torch.randn(40))] if bias else [x, w]
    y = g.add("linear", ins)
    if act == "add":
        z = g.add("add", [r, y])
    elif act == "gelu_tanh":
        z = g.add("gelu", [y], {"approximate": "tanh"})
    else:
        z = g.add(act, [y])
    g.set_outputs([g.add("mul", [z, g.add_const(torch.tensor(2.0))])])
    s = partition(g, cgen.CAPS)
    assert [k.ops for k in s.kernels if k.kind == "library"] == [["linear", z.producer.op]]
    cm = build_c(g)
    for b, sl in ((1, 3), (3, 17)):
        xs = (torch.randn(b, sl, 24), torch.randn(b, sl, 40))
        assert_close(cm(*xs), run(g, *xs)[0], rtol=1e-5, atol=1e-5)


def test_epilogue_not_taken_when_linear_output_has_two_readers() -> None:
    g = Graph("two")
    x = g.add_input("f32[B,8]", "x")
    y = g.add("linear", [x, g.add_const(torch.randn(8, 8))])
    g.set_outputs([g.add("relu", [y]), g.add("tanh", [y])])
    s = partition(g, cgen.CAPS)
    assert [k.ops for k in s.kernels if k.kind == "library"] == [["linear"]]
    cm = build_c(g)
    xx = torch.randn(5, 8)
    for a, b in zip(cm(xx), run(g, xx)):
        assert_close(a, b)


def test_sdpa_with_fully_masked_rows_gives_zeros() -> None:
    g = Graph("att")
    q = g.add_input("f32[B,2,5,8]", "q")
    m = g.add_input("bool[B,1,5,5]", "m")
    g.set_outputs([g.add("sdpa", [q, q, q, m])])
    cm = build_c(g)
    xq = torch.randn(2, 2, 5, 8)
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[0, 0, 2] = False  # query row 2 of batch 0 sees no key
    y = cm(xq, mask)
    assert torch.equal(y[0, :, 2], torch.zeros(2, 8))
    assert_close(y, run(g, xq, mask)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act", ["relu", "add"])
def test_linear_with_zero_input_features(act: str) -> None:
    # K = 0 with an epilogue went to oneDNN, which builds no primitive for it
    g = Graph("lin0")
    x = g.add_input("f32[3,0]", "x")
    r = g.add_input("f32[3,6]", "r")
    y = g.add("linear", [x, g.add_const(torch.zeros(6, 0)), g.add_const(torch.randn(6))])
    g.set_outputs([g.add("add", [r, y]) if act == "add" else g.add(act, [y])])
    xs = (torch.randn(3, 0), torch.randn(3, 6))
    assert torch.equal(build_c(g)(*xs), run(g, *xs)[0])


def test_linear_relu_epilogue_keeps_nan() -> None:
    # oneDNN's relu post-op maps NaN to 0; the IR's relu keeps it
    g = Graph("linrelu")
    x = g.add_input("f32[B,6]", "x")
    g.set_outputs([g.add("relu", [g.add("linear", [x, g.add_const(torch.randn(5, 6))])])])
    x_ = torch.randn(4, 6)
    x_[2, 3] = float("nan")
    got = build_c(g)(x_)
    assert torch.equal(got.isnan(), run(g, x_)[0].isnan()) and bool(got[2].isnan().all())
