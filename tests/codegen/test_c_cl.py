"""Small fused kernels on channels-last activations (codegen/c_cl.py, runtime/ccl.py): the
squeeze-excite mean and scale, residual adds and broadcasts read a convolution's NHWC result
as it is, match torch, run (not the torch ops) when the inputs are channels-last, and give
way to the torch ops when layouts mix."""
from __future__ import annotations

import pytest
import torch
from harness import assert_close, at_threads

import scalefold as sf
from scalefold.codegen import c as cgen
from scalefold.codegen.c_cl import cl_form
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime import alternatives


class SE(torch.nn.Module):
    """conv -> relu -> squeeze-excite (mean, two 1x1 convs, sigmoid, scale) -> a 1x1 conv plus
    the scaled tensor times a constant."""

    def __init__(self, keepdim: bool = True) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(16, 40, 3, padding=1)
        self.f1, self.f2 = torch.nn.Conv2d(40, 8, 1), torch.nn.Conv2d(8, 40, 1)
        self.c2 = torch.nn.Conv2d(40, 40, 1)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c(x))
        m = y.mean((2, 3), keepdim=self.keepdim)
        if not self.keepdim:
            m = m[:, :, None, None]
        z = y * torch.sigmoid(self.f2(torch.relu(self.f1(m))))
        return self.c2(z) + z * 0.5


def _count_cl(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"ran": 0, "declined": 0}
    real = alternatives.cl_step

    def counting(*a):  # type: ignore[no-untyped-def]
        step = real(*a)

        def run(vals):  # type: ignore[no-untyped-def]
            ok = step(vals)
            counts["ran" if ok else "declined"] += 1
            return ok
        return run
    monkeypatch.setattr(alternatives, "cl_step", counting)
    return counts


@pytest.mark.parametrize("keepdim", [True, False])
@pytest.mark.parametrize("shape", [(1, 16, 9, 11), (3, 16, 5, 1), (2, 16, 40, 33)])
def test_squeeze_excite_matches_torch(shape: tuple[int, ...], keepdim: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_cl(monkeypatch)
    torch.manual_seed(0)
    m = SE(keepdim).eval()
    x = torch.randn(*shape)
    cm = sf.compile(m, (x,), target="c")
    assert sum(name.endswith("_cl") for name in cm.sources) >= 3
    with torch.no_grad():
        want = m(x)
    assert_close(cm(x), want, rtol=1e-5, atol=1e-5)
    assert counts["ran"] >= 3 and counts["declined"] == 0


def test_threads_equal() -> None:
    torch.manual_seed(1)
    m = SE().eval()
    x = torch.randn(2, 16, 64, 48)        # above the kernels' one-thread limit
    cm = sf.compile(m, (x,), target="c")
    one, two = at_threads(lambda: cm(x), 1), at_threads(lambda: cm(x), 2)
    assert torch.equal(one, two)


def test_nan_and_inf() -> None:
    """A NaN pixel makes its channel's mean NaN and so every scaled pixel of that channel;
    inf in the mean stays inf."""
    g = Graph("m")
    x = g.add_input("f32[1,8,4,4]", "x")
    w = g.add_const(torch.ones(8, 1, 1, 1))
    y = g.add("conv", [x, w], {"groups": 8})                      # identity, channels-last result
    mean = g.add("reduce_mean", [y], {"axes": (2, 3), "keepdims": True})
    g.set_outputs([g.add("mul", [y, mean])])
    cm = sf.api.build_c(g)
    assert any(k.endswith("_cl") for k in cm.sources)
    xv = torch.randn(1, 8, 4, 4)
    xv[0, 2, 1, 1] = float("nan")
    xv[0, 5, 0, 0] = float("inf")
    got = cm(xv)
    want = xv * xv.mean((2, 3), keepdim=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert got[0, 2].isnan().all() and got[0, 5, 0, 0] == float("inf")


def test_mixed_layouts_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A residual add of a convolution's channels-last result and the NCHW graph input: the
    channels-last kernel declines, the torch ops run, the result is right."""
    counts = _count_cl(monkeypatch)
    g = Graph("r")
    x = g.add_input("f32[2,8,5,6]", "x")
    y = g.add("conv", [x, g.add_const(torch.randn(8, 8, 3, 3))], {"padding": (1,)})
    g.set_outputs([g.add("add", [g.add("relu", [y]), x])])
    cm = sf.api.build_c(g)
    xv = torch.randn(2, 8, 5, 6)
    want = torch.relu(torch.nn.functional.conv2d(xv, g.constants()[0].const, padding=1)) + xv
    assert_close(cm(xv), want, rtol=1e-5, atol=1e-5)
    assert counts["declined"] >= 1


def test_scope() -> None:
    def kern(op: str, attrs: dict, shape: str = "1,8,4,4", dtype: str = "f32"):
        g = Graph("s")
        x = g.add_input(f"{dtype}[{shape}]", "x")
        g.set_outputs([g.add(op, [x], attrs)])
        return partition(g, cgen.CAPS).kernels[0]     # a reference kernel where not fused
    assert cl_form(kern("reduce_mean", {"axes": (2, 3), "keepdims": True})) == "mean"
    assert cl_form(kern("reduce_mean", {"axes": (-1, -2), "keepdims": False})) == "mean"
    assert cl_form(kern("reduce_mean", {"axes": (1,), "keepdims": True})) is None
    assert cl_form(kern("reduce_mean", {"axes": (1, 2), "keepdims": True}, shape="8,4,4")) is None
    assert cl_form(kern("relu", {})) == "ew"
    assert cl_form(kern("relu", {}, dtype="f16")) is None
    assert cl_form(kern("relu", {}, shape="8,4,4")) is None


def test_long_chain_runs_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain of more elementwise ops than the torch-ops path takes (layout.MAX_NODES) on a
    convolution's channels-last result still runs its channels-last kernel."""
    from scalefold.runtime.layout import MAX_NODES
    counts = _count_cl(monkeypatch)
    g = Graph("long")
    x = g.add_input("f32[2,8,5,6]", "x")
    y = g.add("conv", [x, g.add_const(torch.randn(8, 8, 3, 3) * 0.3)], {"padding": (1,)})
    s = g.add_input("f32[2,8,1,1]", "s")
    v = y
    ops = ["relu", "exp", "tanh", "sigmoid", "neg", "abs", "sqrt"]
    assert len(ops) > MAX_NODES
    for op in ops:
        v = g.add(op, [v])
    v = g.add("mul", [v, s])
    g.set_outputs([v])
    cm = sf.api.build_c(g)
    xv, sv = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 1, 1)
    want = torch.nn.functional.conv2d(xv, g.constants()[0].const, padding=1)
    for f in (torch.relu, torch.exp, torch.tanh, torch.sigmoid, torch.neg, torch.abs, torch.sqrt):
        want = f(want)
    assert_close(cm(xv, sv), want * sv, rtol=1e-5, atol=1e-5)
    assert counts["ran"] >= 1


class DenseBlock(torch.nn.Module):
    """DenseNet's pre-activation layers: each adds its batch norm -> relu -> 1x1 conv ->
    batch norm -> relu -> 3x3 conv result to the channels it read (a concat)."""

    def __init__(self, c: int = 16, grow: int = 8, layers: int = 3) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.layers = torch.nn.ModuleList(torch.nn.Sequential(
            torch.nn.BatchNorm2d(c + i * grow), torch.nn.ReLU(), torch.nn.Conv2d(c + i * grow, 16, 1),
            torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Conv2d(16, grow, 3, padding=1))
            for i in range(layers))
        for m in self.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


@pytest.mark.parametrize("passes", ["fold_batchnorm", ""])
@pytest.mark.parametrize("shape", [(1, 3, 9, 11), (2, 3, 6, 5), (1, 3, 1, 1)])
def test_dense_block_concat_stays_channels_last(shape: tuple[int, ...], passes: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each concat of channels-last inputs runs the ``cat`` kernel, whose NHWC result the next
    batch norm (its mul and add after fold_batchnorm, else torch's kernel) and convolution
    read without a copy."""
    import scalefold.runtime.cconv as cconv
    counts = _count_cl(monkeypatch)
    copies = [0]
    real = cconv._nhwc

    def spy(t: torch.Tensor) -> torch.Tensor:
        c = real(t)
        copies[0] += c is not t
        return c
    monkeypatch.setattr(cconv, "_nhwc", spy)
    torch.manual_seed(0)
    m = DenseBlock().eval()
    x = torch.randn(*shape)
    cm = sf.compile(m, (x,), target="c", passes=passes)
    cats = [k for k in cm.schedule.kernels if k.kind == "template" and k.nodes[0].op == "concat"]
    assert len(cats) == 3 and all(cl_form(k) == "cat" and k.name + "_cl" in cm.sources for k in cats)
    with torch.no_grad():
        want = m(x)
    for _ in range(2):
        got = cm(x)
        assert got.is_contiguous()
        assert_close(got, want, rtol=1e-5, atol=1e-5)
    if shape[2:] != (1, 1):       # one pixel: NCHW and NHWC are the same memory, no kernel choice
        assert counts["ran"] >= 3 * 2 and counts["declined"] == 0
    # every convolution read its input as it came: without passes the batch norms run torch's
    # kernel, which keeps the channels-last layout (runtime/layout.KEEPS_LAYOUT)
    assert copies[0] == 0


def test_concat_mixed_layouts_and_repeated_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """A concat of a convolution's channels-last result with itself and another's runs the
    ``cat`` kernel; one of it with the NCHW graph input declines and copies."""
    counts = _count_cl(monkeypatch)
    g = Graph("cat")
    x = g.add_input("f32[B,16,H,W]", "x")
    a = g.add("conv", [x, g.add_const(torch.randn(24, 16, 3, 3) * 0.2)], {"padding": (1,)})
    b = g.add("conv", [x, g.add_const(torch.randn(8, 16, 1, 1) * 0.2)])
    c = g.add("concat", [a, b, a], {"axis": 1})
    e = g.add("conv", [g.add("relu", [c]), g.add_const(torch.randn(16, 56, 1, 1) * 0.2)])
    g.set_outputs([g.add("concat", [e, x], {"axis": 1}), c])
    cm = sf.api.build_c(g)
    from scalefold.runtime.interp import run
    for shp in ((2, 16, 9, 7), (1, 16, 1, 1)):
        xv = torch.randn(*shp)
        for got, want in zip(cm(xv), run(g, xv)):
            assert got.is_contiguous()
            assert_close(got, want, rtol=1e-5, atol=1e-5)
        if shp == (2, 16, 9, 7):
            assert counts["ran"] >= 2 and counts["declined"] >= 1


def test_concat_scope() -> None:
    def kern(shape: str, axis: int, dtype: str = "f32"):
        g = Graph("s")
        x = g.add_input(f"{dtype}[{shape}]", "x")
        g.set_outputs([g.add("concat", [x, x], {"axis": axis})])
        return next(k for k in partition(g, cgen.CAPS).kernels if k.nodes[0].op == "concat")
    assert cl_form(kern("1,8,4,4", 1)) == "cat" and cl_form(kern("1,8,4,4", -3)) == "cat"
    assert cl_form(kern("1,8,4,4", 2)) is None and cl_form(kern("8,4,4", 0)) is None
    assert cl_form(kern("1,8,4,4", 1, "f16")) is None
