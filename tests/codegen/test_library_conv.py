"""The CPU library convolution (oneDNN, prepacked weights, channels-last, fused post-ops)
against the reference interpreter, with the generated C convolutions switched off."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run
from scalefold.runtime.library_conv import conv_fn
from conv_cases import EPILOGUES, conv_graph as _conv_graph


@pytest.fixture(autouse=True)
def _onednn_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """This file tests the oneDNN path: no generated C convolutions (test_c_conv.py has those)."""
    import scalefold.codegen.c_conv as cc
    monkeypatch.setattr(cc, "conv_form", lambda k: None)


@pytest.mark.parametrize("epilogue", sorted(EPILOGUES))
# k = 1: the 1x1 convolutions that run as a GEMM over the channels-last rows
@pytest.mark.parametrize("groups,stride,dilation,bias,k", [(1, 1, 1, True, 3), (8, 2, 1, False, 3),
                                                           (2, 1, 2, True, 3), (1, 1, 1, True, 1),
                                                           (1, 1, 1, False, 1), (1, 2, 1, True, 1)])
def test_conv_epilogue_matches_interpreter(epilogue: str, groups: int, stride: int, dilation: int,
                                           bias: bool, k: int) -> None:
    g = _conv_graph(epilogue, groups, stride, dilation, bias, k)
    s = partition(g, cgen.CAPS)
    lib = [k.ops for k in s.kernels if k.kind == "library"]
    assert lib == [["conv", *(op for op, _ in EPILOGUES[epilogue])]]
    conv = s.kernels[[k.kind for k in s.kernels].index("library")].nodes
    assert conv_fn(conv[0], conv[1:]) is not None
    cm = build_c(g)
    for b, h, w in ((1, 9, 11), (3, 6, 5), (2, 9, 11), (2, 1, 1)):   # the first again after another
        oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
        xs = [torch.randn(b, 8, h, w) * 2]
        if "add" in epilogue:
            xs.append(torch.randn(b, 16, oh, ow))
        got, want = cm(*xs), run(g, *xs)[0]
        assert got.is_contiguous()
        assert_close(got, want, rtol=1e-5, atol=1e-5)
    if epilogue.startswith("bn"):   # NaN stays NaN through the norm and the activation
        x_ = torch.randn(2, 8, 9, 11)
        x_[1, 3, 4, 4] = float("nan")   # an even position: a stride-2 1x1 convolution reads it
        got, want = cm(x_), run(g, x_)[0]
        assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
        assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-5)


def test_batch_norm_epilogue_scope() -> None:
    """A batch norm joins its convolution's library step only as the convolution's sole
    reader; an add after it, or a second reader of the convolution, keeps it apart, and the
    results stay the interpreter's."""
    g = Graph("bn")
    x = g.add_input("f32[B,4,8,8]", "x")
    r = g.add_input("f32[B,6,8,8]", "r")

    def bn(v):
        return g.add("batch_norm", [v, *(g.add_const(torch.randn(6)) for _ in range(3)),
                                    g.add_const(torch.rand(6) + 0.5)])
    a = g.add("conv", [x, g.add_const(torch.randn(6, 4, 3, 3) * 0.3)], {"padding": (1,)})
    a2 = g.add("add", [bn(a), r])                       # BN then a residual add: BN fused, add not
    b = g.add("conv", [x, g.add_const(torch.randn(6, 4, 1, 1))])
    b2 = bn(b)                                         # the conv also read elsewhere: not fused
    g.set_outputs([a2, g.add("add", [b2, b]), g.add("sigmoid", [bn(g.add("conv", [x, g.add_const(torch.randn(6, 4, 1, 1))]))])])
    s = partition(g, cgen.CAPS)
    lib = sorted(k.ops for k in s.kernels if k.kind == "library")
    assert lib == [["conv"], ["conv", "batch_norm"], ["conv", "batch_norm", "sigmoid"]], lib
    cm = build_c(g)
    xs = (torch.randn(2, 4, 8, 8), torch.randn(2, 6, 8, 8))
    for got, want in zip(cm(*xs), run(g, *xs)):
        assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_conv1d_runs_as_onednn_conv() -> None:
    g = Graph("c1")
    x = g.add_input("f32[B,6,L]", "x")
    y = g.add("conv", [x, g.add_const(torch.randn(10, 3, 5)), g.add_const(torch.randn(10))],
              {"stride": (2,), "padding": (2,), "groups": 2})
    y = g.add("conv", [g.add("gelu", [y]), g.add_const(torch.randn(7, 10, 1))])     # a 1x1 GEMM
    g.set_outputs([g.add("tanh", [y])])
    node = g.nodes[0]
    assert conv_fn(node, []) is not None
    cm = build_c(g)
    for b, n in ((1, 17), (4, 8)):
        x_ = torch.randn(b, 6, n)
        assert_close(cm(x_), run(g, x_)[0], rtol=1e-5, atol=1e-5)


def test_channels_last_results_feed_every_kind_of_consumer() -> None:
    # conv -> per-channel scale (a generated kernel) -> conv -> max_pool -> conv -> reshape ->
    # linear, and an output taken straight from a convolution
    g = Graph("chain")
    x = g.add_input("f32[B,4,12,12]", "x")
    a = g.add("conv", [x, g.add_const(torch.randn(8, 4, 3, 3) * 0.3)], {"padding": (1,)})
    a = g.add("mul", [a, g.add_const(torch.rand(1, 8, 1, 1) + 0.5)])
    b = g.add("conv", [a, g.add_const(torch.randn(8, 1, 3, 3) * 0.3)], {"padding": (1,), "groups": 8})
    b = g.add("relu", [b])
    p = g.add("max_pool", [b], {"kernel": (2, 2), "stride": (2, 2)})
    c = g.add("conv", [p, g.add_const(torch.randn(6, 8, 1, 1) * 0.3)])
    f = g.add("flatten", [c], {"axis": 1})
    o = g.add("linear", [f, g.add_const(torch.randn(5, 216) * 0.1)])
    g.set_outputs([o, c])
    cm = build_c(g)
    x_ = torch.randn(3, 4, 12, 12)
    got, want = cm(x_), run(g, x_)
    for a_, b_ in zip(got, want):
        assert a_.is_contiguous()
        assert_close(a_, b_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["asymmetric_pad", "weight_input", "empty_batch", "f16",
                                  "hardsigmoid_attrs", "clip_one_bound", "conv3d"])
def test_conv_outside_onednn_scope_is_still_exact(case: str) -> None:
    g = Graph("c")
    dt = "f16" if case == "f16" else "f32"
    spatial = "D,H,W" if case == "conv3d" else "H,W"
    x = g.add_input(f"{dt}[B,4,{spatial}]", "x")
    kshape = (6, 4, 3, 3, 3) if case == "conv3d" else (6, 4, 3, 3)
    wt = torch.randn(*kshape) * 0.3
    w = g.add_input(f"f32[{','.join(map(str, kshape))}]", "w") if case == "weight_input" else \
        g.add_const(wt.to(torch.float16) if case == "f16" else wt)
    attrs = {"padding": (0, 1, 2, 1)} if case == "asymmetric_pad" else {"padding": (1,)}
    y = g.add("conv", [x, w], attrs)
    if case == "hardsigmoid_attrs":
        y = g.add("hardsigmoid", [y], {"alpha": 0.2, "beta": 0.5})
    elif case == "clip_one_bound":
        y = g.add("clip", [y], {"min": 0.0})
    g.set_outputs([y])
    n = g.nodes[0]
    if case in ("asymmetric_pad", "f16", "conv3d"):
        assert conv_fn(n, []) is None
    cm = build_c(g)
    shape = (0 if case == "empty_batch" else 2, 4, *((5,) if case == "conv3d" else ()), 7, 6)
    xs = [torch.randn(*shape).to(torch.float16 if case == "f16" else torch.float32)]
    if case == "weight_input":
        xs.append(wt)
    got, want = cm(*xs), run(g, *xs)[0]
    assert got.shape == want.shape
    assert_close(got, want, rtol=1e-3 if case == "f16" else 1e-5, atol=1e-3 if case == "f16" else 1e-5)


def _count_torch_kernels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ops of each fused kernel run as torch ops (runtime/layout.py), call by call."""
    import scalefold.runtime.executor as ex
    ran: list[str] = []
    real = ex.torch_kernel

    def counting(k, *args):  # type: ignore[no-untyped-def]
        fn = real(k, *args)
        if fn is None:
            return None

        def run(vals: list) -> None:
            ran.append("+".join(k.ops))
            fn(vals)
        return run
    monkeypatch.setattr(ex, "torch_kernel", counting)
    return ran


def test_squeeze_excite_on_channels_last_runs_torch_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # conv -> mean over H, W -> 1x1 convs -> hardsigmoid -> mul by the conv's output -> add
    # of the block's input -> conv: the mean, mul and add kernels read channels-last results,
    # the mean by its generated channels-last kernel (codegen/c_cl.py), the mul + add (whose
    # other operand is the NCHW input: layouts mix) as torch ops
    ran = _count_torch_kernels(monkeypatch)
    import scalefold.runtime.alternatives as alt
    cl_ran: list[str] = []
    real_cl = alt.cl_step

    def counting_cl(fn, k, *args):  # type: ignore[no-untyped-def]
        step = real_cl(fn, k, *args)

        def run_cl(vals: list) -> bool:
            ok = step(vals)
            if ok:
                cl_ran.append("+".join(k.ops))
            return ok
        return run_cl
    monkeypatch.setattr(alt, "cl_step", counting_cl)
    g = Graph("se")
    x = g.add_input("f32[B,8,H,W]", "x")
    a = g.add("conv", [x, g.add_const(torch.randn(8, 1, 3, 3) * 0.3)], {"padding": (1,), "groups": 8})
    m = g.add("reduce_mean", [a], {"axes": (2, 3), "keepdims": True})
    s = g.add("relu", [g.add("conv", [m, g.add_const(torch.randn(4, 8, 1, 1) * 0.3)])])
    s = g.add("hardsigmoid", [g.add("conv", [s, g.add_const(torch.randn(8, 4, 1, 1) * 0.3)])])
    y = g.add("add", [g.add("mul", [a, s]), x])
    g.set_outputs([g.add("conv", [y, g.add_const(torch.randn(5, 8, 1, 1) * 0.3)]), y])
    cm = build_c(g)
    for shape in ((2, 8, 9, 7), (1, 8, 1, 1)):
        x_ = torch.randn(*shape)
        got, want = cm(x_), run(g, x_)
        for a_, b_ in zip(got, want):
            assert a_.is_contiguous()
            assert_close(a_, b_, rtol=1e-5, atol=1e-5)
    assert "reduce_mean" in cl_ran and "reduce_mean" not in ran and any("mul" in r for r in ran)


@pytest.mark.parametrize("epilogue", sorted(EPILOGUES))
@pytest.mark.parametrize("k,shape", [(3, (2, 8, 5, 6)), (1, (2, 8, 5, 6)), (1, (3, 8, 1, 1)), (1, (9, 8, 1, 1))])
def test_nan_stays_nan_through_every_epilogue(epilogue: str, k: int, shape: tuple) -> None:
    # oneDNN's relu / clip / hardsigmoid post-ops (and its relu after an add) turn NaN into
    # a number; the IR keeps it, whichever path (oneDNN, or BLAS for a few rows) runs
    g = _conv_graph(epilogue, 1, 1, 1, True, k)
    cm = build_c(g)
    x_ = torch.randn(*shape)
    x_[0, 1, 0, 0] = float("nan")
    xs = [x_]
    if "add" in epilogue:
        r = torch.randn(shape[0], 16, *shape[2:])
        r[-1, 2, -1, -1] = float("nan")
        xs.append(r)
    got, want = cm(*xs), run(g, *xs)[0]
    assert want.isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_conv1d_stack_keeps_channels_last_between_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # conv1d -> conv1d (+ residual add) -> mul by a per-channel scale -> conv1d: the 1-D
    # results stay [N, L, C] in memory between the steps (the mul finds its input so)
    ran = _count_torch_kernels(monkeypatch)
    g = Graph("c1stack")
    x = g.add_input("f32[B,6,L]", "x")
    a = g.add("conv", [x, g.add_const(torch.randn(6, 6, 3) * 0.3)], {"padding": (1,)})
    b = g.add("add", [g.add("conv", [a, g.add_const(torch.randn(6, 6, 3) * 0.3)], {"padding": (1,)}), a])
    c = g.add("mul", [b, g.add_const(torch.rand(1, 6, 1) + 0.5)])
    g.set_outputs([g.add("conv", [c, g.add_const(torch.randn(4, 6, 5) * 0.3)], {"padding": (2,)})])
    cm = build_c(g)
    x_ = torch.randn(2, 6, 19)
    got = cm(x_)
    assert got.is_contiguous()
    assert_close(got, run(g, x_)[0], rtol=1e-5, atol=1e-5)
    assert ran == ["mul"]


def test_transposed_linear_output_keeps_its_generated_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    # a transposed view of a linear's result is laid out like a 1-D convolution's, but no
    # convolution made it: its fused kernel stays generated code
    ran = _count_torch_kernels(monkeypatch)
    g = Graph("lt")
    x = g.add_input("f32[B,S,8]", "x")
    y = g.add("transpose", [g.add("linear", [x, g.add_const(torch.randn(6, 8))])], {"perm": (0, 2, 1)})
    g.set_outputs([g.add("tanh", [g.add("add", [y, g.add_const(torch.randn(1, 6, 1))])])])
    x_ = torch.randn(2, 5, 8)
    assert_close(build_c(g)(x_), run(g, x_)[0], rtol=1e-5, atol=1e-5)
    assert ran == []


def test_conv_library_functions_live_across_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    # the prepacked weights belong to the kernel's library function, built once per
    # executor, not once per binding of the sizes
    import scalefold.runtime.executor as ex
    made: list[str] = []
    real = ex.library_fn

    def counting(nodes, *args):  # type: ignore[no-untyped-def]
        made.append(nodes[0].op)
        return real(nodes, *args)
    monkeypatch.setattr(ex, "library_fn", counting)
    g = _conv_graph("relu", 1, 1, 1, True, 3)
    cm = build_c(g)
    for h in (5, 6, 7, 5):
        x_ = torch.randn(1, 8, h, 4)
        assert_close(cm(x_), run(g, x_)[0], rtol=1e-5, atol=1e-5)
    assert made == ["conv"]
