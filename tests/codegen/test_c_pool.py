"""Generated C pools on channels-last memory (codegen/c_pool.py) against the reference
interpreter: each op, window, padding, rounding and divisor rule, NaN and inf, and the
layouts the input comes in."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close, at_threads
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen.c_pool import POOL_OPS, pool_supported
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime import executor
from scalefold.runtime.interp import run

# op, attrs: every rule the kernel implements
CASES = {
    "max3_s2": ("max_pool", {"kernel": (3,), "stride": (2,), "padding": (1,)}),
    "max2": ("max_pool", {"kernel": (2,), "stride": (2,)}),
    "max3_d2_ceil": ("max_pool", {"kernel": (3,), "stride": (2,), "padding": (1,), "dilation": (2,),
                                  "ceil_mode": True}),
    "max_asym": ("max_pool", {"kernel": (3, 2), "stride": (1, 2), "padding": (0, 1, 2, 0)}),
    "avg3_s2": ("avg_pool", {"kernel": (3,), "stride": (2,), "padding": (1,)}),
    "avg3_s2_incl": ("avg_pool", {"kernel": (3,), "stride": (2,), "padding": (1,), "count_include_pad": True}),
    "avg2_ceil_incl": ("avg_pool", {"kernel": (2,), "stride": (2,), "padding": (1,), "ceil_mode": True,
                                    "count_include_pad": True}),
    "avg_asym_incl": ("avg_pool", {"kernel": (3,), "stride": (2,), "padding": (1, 0, 0, 2),
                                   "count_include_pad": True}),
    "avg5_s1": ("avg_pool", {"kernel": (5,), "stride": (1,), "padding": (2,)}),
    "gavg": ("global_avg_pool", {}),
    "gmax": ("global_max_pool", {}),
}


def _graph(case: str, c: int, conv: bool) -> Graph:
    """x [B, c, H, W] (through a 1x1 convolution when ``conv``: the pool then reads its
    channels-last result) -> the pool -> times 2."""
    op, attrs = CASES[case]
    g = Graph("pool")
    x = g.add_input(f"f32[B,{c},H,W]", "x")
    if conv:
        x = g.add("conv", [x, g.add_const(torch.randn(c, c, 1, 1) * 0.5)], {})
    y = g.add(op, [x], attrs)
    g.set_outputs([g.add("mul", [y, g.add_const(torch.tensor(2.0))])])
    return g


def _pool_kernels(g: Graph) -> list:
    return [k for k in partition(g, cgen.CAPS).kernels if k.kind == "library" and k.nodes[0].op != "conv"]


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("c", [3, 16, 80])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_interpreter(case: str, c: int, conv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # the pool must run its C kernel: the torch library call is not there to fall back on
    lib = executor.library_fn

    def no_library_pools(nodes, device="cpu"):
        assert nodes[0].op not in POOL_OPS, f"{nodes[0].op} ran as a library call"
        return lib(nodes, device)
    monkeypatch.setattr(executor, "library_fn", no_library_pools)
    g = _graph(case, c, conv)
    ks = _pool_kernels(g)
    assert len(ks) == 1 and pool_supported(ks[0])
    cm = build_c(g)
    assert ks[0].name in cm.sources
    for b, h, w in ((1, 9, 11), (2, 6, 5), (1, 2, 3), (3, 17, 8)):
        x = torch.randn(b, c, h, w)
        got, want = cm(x), run(g, x)[0]
        assert got.shape == want.shape
        assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["max3_s2", "avg3_s2", "gavg", "gmax"])
def test_nan_and_inf(case: str) -> None:
    g = _graph(case, 20, False)
    cm = build_c(g)
    x = torch.randn(2, 20, 7, 6)
    x[0, 1, 2, 2] = float("nan")
    x[1, 3, 0, 0] = float("inf")
    x[1, 4, :, :] = float("-inf")
    x[0, 5, 3, 3] = float("inf")
    x[0, 5, 3, 4] = float("-inf")
    got, want = cm(x), run(g, x)[0]
    assert want.isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_thread_count_and_large_images() -> None:
    for case in ("max3_s2", "avg3_s2_incl", "gavg"):
        g = _graph(case, 72, True)
        cm = build_c(g)
        x = torch.randn(2, 72, 40, 33)
        one, two = at_threads(lambda: cm(x), 1), at_threads(lambda: cm(x), 2)
        assert torch.equal(one, two)
        assert_close(two, run(g, x)[0], rtol=1e-5, atol=1e-5)


def test_scope() -> None:
    def kernel(op: str, attrs: dict, spec: str = "f32[1,4,H,W]"):
        g = Graph("s")
        x = g.add_input(spec, "x")
        g.set_outputs([g.add(op, [x], attrs)])
        return _pool_kernels(g)[0]
    assert pool_supported(kernel("max_pool", {"kernel": (3,)}))
    assert not pool_supported(kernel("max_pool", {"kernel": (3,)}, "f16[1,4,H,W]"))
    assert not pool_supported(kernel("max_pool", {"kernel": (3,)}, "f32[1,4,L]"))          # 1-D
    assert not pool_supported(kernel("max_pool", {"kernel": (2,)}, "f32[1,4,D,H,W]"))      # 3-D
    assert not pool_supported(kernel("global_avg_pool", {}, "f32[1,4,L]"))
    assert pool_supported(kernel("global_max_pool", {}))


def test_coverage_names_the_c_pools() -> None:
    cov = cgen.op_coverage()
    for op in ("max_pool", "avg_pool", "global_avg_pool", "global_max_pool"):
        assert cov[op].startswith("library (c on rank-4 float32")
    assert cov["conv_transpose"] == "library"
