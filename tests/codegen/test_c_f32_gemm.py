"""The float32 linear GEMM of the C target (codegen/c_f32gemm.py) above the GEMV's rows:
results against the interpreter for odd shapes (partial panels, input channels in several
chunks, the transpose's tails), bias and epilogues, dynamic M, one and two threads, NaN, the
portable loops, and that the executor takes it exactly where it should."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close, at_threads
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen import c_conv, c_f32gemm, c_f32gemv
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run
from linear_cases import count_library_calls, lin_graph

LIMIT = c_f32gemv.GEMV.limit


def _kernel(g: Graph):
    return next(k for k in partition(g, cgen.CAPS).kernels if k.kind == "library")


@pytest.mark.parametrize("K,N", [(5, 7), (16, 16), (48, 40), (200, 33), (192, 576), (37, 130), (37, 100)])
@pytest.mark.parametrize("epi", [None, "relu", "gelu", "silu", "add"])
def test_matches_interpreter(K: int, N: int, epi: str | None) -> None:
    g = lin_graph(K, N, bias=N % 2 == 0, epi=epi)
    assert c_f32gemm.gemm_supported(_kernel(g))
    cm = build_c(g)
    for m in (LIMIT(N, K) + 1, 50, 197, 1):
        xs = [torch.randn(m, K)] + ([torch.randn(m, N)] if epi == "add" else [])
        assert_close(cm(*xs), run(g, *xs)[0], rtol=2e-5, atol=2e-5)


def test_leading_dims_and_static_m() -> None:
    g = lin_graph(24, 40, epi="gelu", lead="B,S")
    cm = build_c(g)
    for b, s in ((2, 37), (1, 3), (3, 50)):
        x = torch.randn(b, s, 24)
        assert_close(cm(x), run(g, x)[0], rtol=2e-5, atol=2e-5)
    # a static M above the GEMV's rows renders the GEMM alone
    g2 = lin_graph(24, 40, lead="197")
    names = sorted(build_c(g2).sources)
    assert len(names) == 1 and names[0].endswith(c_f32gemm.SUFFIX)


def test_executor_takes_gemv_then_gemm_never_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_library_calls(monkeypatch)
    g = lin_graph(48, 40)
    cm = build_c(g)
    k = _kernel(g)
    ex = cm._runner
    assert k.name in ex.kernels and k.name + c_f32gemm.SUFFIX in ex.kernels
    M = next(iter(g.inputs[0].type.symbols))
    lim = LIMIT(40, 48)
    assert ex._compiled_alt(k, {M: lim}) == k.name
    assert ex._compiled_alt(k, {M: lim + 1}) == k.name + c_f32gemm.SUFFIX
    for m in (1, lim, lim + 1, 300):
        x = torch.randn(m, 48)
        assert_close(cm(x), run(g, x)[0], rtol=2e-5, atol=2e-5)
    assert calls["lib"] == 0
    # weights above MAX_WEIGHT keep the library above the GEMV's rows
    monkeypatch.setattr(c_f32gemm, "MAX_WEIGHT", 4 * 48 * 40 - 1)
    cm2 = build_c(lin_graph(48, 40))
    cm2(torch.randn(lim + 1, 48))
    assert calls["lib"] == 1


def test_scope() -> None:
    g = Graph("w")
    x = g.add_input("f32[M,8]", "x")
    w = g.add_input("f32[6,8]", "w")
    g.set_outputs([g.add("linear", [x, w])])
    assert not c_f32gemm.gemm_supported(_kernel(g))          # a weight that is not a constant
    g = Graph("h")
    x = g.add_input("f16[M,8]", "x")
    g.set_outputs([g.add("linear", [x, g.add_const(torch.randn(6, 8).half())])])
    assert not c_f32gemm.gemm_supported(_kernel(g))          # f16


def test_portable_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c_conv, "CONV", c_conv.ConvConfig(vec=False))
    g = lin_graph(40, 37, epi="add")
    cm = build_c(g)
    assert any("#define SF_NO_VEC 1" in s for n, s in cm.sources.items() if n.endswith(c_f32gemm.SUFFIX))
    xs = [torch.randn(90, 40), torch.randn(90, 37)]
    assert_close(cm(*xs), run(g, *xs)[0], rtol=2e-5, atol=2e-5)


def test_thread_count_and_nan() -> None:
    g = lin_graph(300, 100, epi="relu")
    cm = build_c(g)
    x = torch.randn(120, 300)
    x[7, 11] = float("nan")
    one, two = at_threads(lambda: cm(x), 1), at_threads(lambda: cm(x), 2)
    assert torch.equal(one.isnan(), two.isnan()) and one[7].isnan().all() and not one[8].isnan().any()
    assert torch.equal(one.nan_to_num(), two.nan_to_num())
    want = run(g, x)[0]
    torch.testing.assert_close(two, want, rtol=1e-4, atol=1e-4, equal_nan=True)
