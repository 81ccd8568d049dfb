"""The AVX2 + FMA forms compiled on hosts without AVX-512, against the reference interpreter:
c_tile.tile_fn_avx2 / sf_tr8 (the float GEMM and the pointwise / dense / Winograd
convolutions), c_f32gemv._tile_avx2 (the float GEMV), c_conv_dw._dw_avx2 (depthwise
convolutions) and c_w4_avx2.tile_avx2 (the 4-bit qlinear template). They are built here with
``-mno-avx512f`` so that they run on AVX-512 hosts too. On hosts with both, the tile and
convolution forms must also agree with the AVX-512 ones bit for bit."""
from __future__ import annotations

import pytest
import torch
from conv_cases import conv_graph
from harness import assert_close
from w4_cases import check, w4graph

from scalefold import api
from scalefold.runtime import cache
from scalefold.runtime.interp import run

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

NO512 = ("-mno-avx512f",)


@pytest.fixture
def avx2_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every C build of the test goes without AVX-512 (so with AVX2 + FMA where the CPU has
    them, as on an AVX2-only host)."""
    flags = cache.CFLAGS + NO512
    if not (cache.compiler_defines("__AVX2__", flags) and cache.compiler_defines("__FMA__", flags)):
        pytest.skip("this compiler / CPU has no AVX2 + FMA: the AVX2 forms cannot run here")
    assert not cache.compiler_defines("__AVX512F__", flags)
    real = cache.build
    monkeypatch.setattr(cache, "build", lambda src, flags=cache.CFLAGS, cc=None: real(src, tuple(flags) + NO512, cc))


@pytest.mark.parametrize("M,K,N", [(1, 70, 100), (5, 384, 40), (37, 200, 64), (64, 33, 17), (13, 16, 130)])
def test_linear_gemm(avx2_builds: None, M: int, K: int, N: int) -> None:
    lin = torch.nn.Linear(K, N).eval()
    x = torch.randn(M, K)
    with torch.no_grad():
        cm = api.compile(lin, (x,), target="c")
        assert any(n.endswith("_gemm") for n in cm.sources)
        for _ in range(2):
            xm = torch.randn(M, K)
            assert_close(cm(xm), lin(xm), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M,K,N", [(1, 70, 100), (3, 1000, 33), (2, 33, 17), (1, 7, 5), (4, 256, 64)])
def test_linear_gemv(avx2_builds: None, M: int, K: int, N: int) -> None:
    """The float GEMV's AVX2 tile (c_f32gemv._tile_avx2): steps of 32 and 8 columns and a
    scalar tail."""
    lin = torch.nn.Linear(K, N).eval()
    x = torch.randn(M, K)
    with torch.no_grad():
        cm = api.compile(lin, (x,), target="c")
        assert any("_mm_movehdup_ps" in src for src in cm.sources.values())
        for _ in range(2):
            xm = torch.randn(M, K) * 3
            assert_close(cm(xm), lin(xm), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [(1, 1, 1, True, 1, 24, 40), (1, 1, 1, False, 3, 8, 72),
                                     (1, 2, 1, True, 3, 5, 33), (1, 1, 1, True, 3, 16, 40),
                                     (1, 1, 1, True, 1, 200, 16), (24, 1, 1, True, 3, 24, 24),
                                     (16, 2, 1, False, 5, 16, 16), (40, 1, 2, True, 3, 40, 40),
                                     (20, 1, 1, True, 7, 20, 20)])
@pytest.mark.parametrize("epilogue", ["none", "bn_relu6", "add_relu"])
def test_convolutions(avx2_builds: None, variant: tuple, epilogue: str) -> None:
    g = conv_graph(epilogue, *variant)
    cm = api.build_c(g)
    assert any(k.kind == "library" and k.nodes[0].op == "conv" and k.name in cm.sources
               for k in cm.schedule.kernels)
    for b, h, w in [(1, 9, 11), (2, 6, 5), (1, 1, 1)]:
        s = variant[1]
        xs = [torch.randn(b, variant[5], h, w) * 2]
        if "add" in epilogue:
            xs.append(torch.randn(b, variant[6], (h - 1) // s + 1, (w - 1) // s + 1))
        want = run(g, *xs)[0]
        scale = float(want.abs().max())
        assert_close(cm(*xs), want, rtol=1e-5, atol=max(2e-4, 5e-6 * scale))


@pytest.mark.parametrize("act", ["none", "per_token"])
@pytest.mark.parametrize("K,N,group,sym", [(260, 100, 20, False), (300, 50, 128, True), (67, 33, 32, False)])
def test_w4_template(avx2_builds: None, act: str, K: int, N: int, group: int, sym: bool) -> None:
    g = w4graph(K, N, group, act=act, sym=sym, seed=K)
    cm = api.build_c(g)
    src = next(iter(cm.sources.values()))
    assert ("_mm256_maddubs_epi16" if act == "per_token" else "_mm256_broadcast_ss(x + (i + 3)") in src
    check(g, cm)


def test_w4_int8_activation_sums_are_exact_at_the_code_extremes(avx2_builds: None) -> None:
    """Codes 15 against activations of +-127 everywhere: the largest int16 pair sums of
    vpmaddubsw (2 * 15 * 127) and their int16 sum (4 * 15 * 127) must not saturate."""
    g = w4graph(256, 32, 128, act="per_token", seed=1)
    w = g.nodes[0].inputs[1].const
    w.fill_(15)
    cm = api.build_c(g)
    x = torch.where(torch.arange(256) % 3 == 0, -1.0, 1.0).reshape(1, 1, 256).repeat(2, 3, 1)
    assert_close(cm(x), run(g, x)[0], rtol=1e-5, atol=1e-5)


@pytest.fixture
def both_builds(monkeypatch: pytest.MonkeyPatch):
    """Run a builder twice, once with this host's AVX-512 and once without (AVX2 + FMA), and
    return both results; skipped where the host lacks either instruction set."""
    flags = cache.CFLAGS + NO512
    if not (cache.compiler_defines("__AVX512F__") and cache.compiler_defines("__AVX2__", flags)
            and cache.compiler_defines("__FMA__", flags)):
        pytest.skip("needs a host with AVX-512 and AVX2 + FMA to build both forms")
    real = cache.build
    extra: list[tuple[str, ...]] = [()]
    built: list[tuple[str, ...]] = []

    def build(src, flags=cache.CFLAGS, cc=None):
        built.append(extra[0])
        return real(src, tuple(flags) + extra[0], cc)
    monkeypatch.setattr(cache, "build", build)

    def run_both(make):
        out = []
        for e in ((), NO512):
            extra[0] = e
            built.clear()
            out.append(make())
            # each pass compiled its own kernels (no in-process reuse of the other pass's)
            assert built and all(b == e for b in built), built
        return out
    return run_both


@pytest.mark.parametrize("M,K,N", [(37, 200, 64), (64, 33, 17), (130, 96, 50)])
def test_tile_gemm_forms_are_bit_identical(both_builds, M: int, K: int, N: int) -> None:
    """c_tile's AVX2 tile gives each output the AVX-512 tile's FMA sequence, so a model's
    results do not depend on which x86 host compiled it."""
    lin = torch.nn.Linear(K, N).eval()
    x = torch.randn(M, K)
    with torch.no_grad():
        cms = both_builds(lambda: api.compile(lin, (x,), target="c"))
        assert all(any(n.endswith("_gemm") for n in cm.sources) for cm in cms)
        a, b = (cm(x) for cm in cms)
    assert torch.equal(a, b)


@pytest.mark.parametrize("variant", [(1, 1, 1, True, 1, 24, 40), (1, 1, 1, False, 3, 8, 72),
                                     (1, 2, 1, True, 3, 5, 33), (24, 1, 1, True, 3, 24, 24),
                                     (40, 1, 2, True, 3, 40, 40)])
def test_convolution_forms_are_bit_identical(both_builds, variant: tuple) -> None:
    """Pointwise, dense, Winograd and depthwise convolutions: same bits either way."""
    g = conv_graph("bn_relu6", *variant)
    x = torch.randn(2, variant[5], 9, 11)
    a, b = both_builds(lambda: api.build_c(g)(x))
    assert torch.equal(a, b)
