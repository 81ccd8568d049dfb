"""Generated C convolutions (codegen/c_conv.py, runtime/cconv.py) against the reference
interpreter: every form, epilogue, size edge and layout they meet."""
from __future__ import annotations

import pytest
import torch

from conv_cases import EPILOGUES, conv_graph
from harness import assert_close, at_threads
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen import c_conv
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run

# (groups, stride, dilation, bias, k, ci, co): the forms and their tile edges
VARIANTS = {
    "dense3": (1, 1, 1, True, 3, 8, 40),        # two panels, the second partial
    "dense3_s2": (1, 2, 1, False, 3, 8, 16),    # a 16-channel panel
    "dense5_d2": (1, 1, 2, True, 5, 5, 33),
    "dense1_s2": (1, 2, 1, True, 1, 12, 20),    # 1x1 with a stride is not a GEMM over rows
    "pw": (1, 1, 1, True, 1, 24, 40),
    "pw_narrow": (1, 1, 1, False, 1, 5, 7),
    "pw_wide": (1, 1, 1, True, 1, 200, 20),     # input channels in two chunks
    "dw3": (24, 1, 1, True, 3, 24, 24),         # a partial 16-channel block
    "dw5_s2": (16, 2, 1, False, 5, 16, 16),
    "dw3_d2": (40, 1, 2, True, 3, 40, 40),
    "dw7": (20, 1, 1, True, 7, 20, 20),         # row-wise loop of larger kernels
    "stem3_s2": (1, 2, 1, True, 3, 3, 16),      # NCHW input; stride 2: two loads and a permute
    "stem7_s2": (1, 2, 1, False, 7, 3, 40),     # three 16-channel blocks, the last partial
    "stem5_d2": (1, 1, 2, True, 5, 1, 20),      # stride 1: one masked load; dilation
    "stem3_s3": (1, 3, 1, True, 3, 4, 17),      # stride 3: a gather
    "stem1": (1, 1, 1, False, 1, 2, 9),         # a 1x1 over two channels
    "wino3": (1, 1, 1, True, 3, 16, 40),        # Winograd: two panels, the second partial
    "wino3_n16": (1, 1, 1, False, 3, 20, 16),   # a 16-channel panel (8-tile rows)
    "wino3_wide": (1, 1, 1, True, 3, 200, 24),  # input channels in two chunks
    # 64-channel panels (c_tile.tile_shape)
    "pw64": (1, 1, 1, True, 1, 24, 100),        # two panels, the second partial
    "dense3_s2_64": (1, 2, 1, False, 3, 8, 64),
    "wino3_64": (1, 1, 1, True, 3, 16, 192),    # three panels
}
FORM = {"dense3": "dense", "dense3_s2": "dense", "dense5_d2": "dense", "dense1_s2": "dense",
        "pw": "pw", "pw_narrow": "pw", "pw_wide": "pw", "dw3": "dw", "dw5_s2": "dw", "dw3_d2": "dw",
        "dw7": "dw", "stem3_s2": "stem", "stem7_s2": "stem", "stem5_d2": "stem", "stem3_s3": "stem",
        "stem1": "stem", "wino3": "wino", "wino3_n16": "wino", "wino3_wide": "wino", "pw64": "pw",
        "dense3_s2_64": "dense", "wino3_64": "wino"}
# the first again after others; 40 columns: the row-wise depthwise loop's interior steps
SIZES = ((1, 9, 11), (3, 6, 5), (2, 1, 1), (1, 2, 3), (1, 3, 40), (2, 9, 11))


def _conv_kernel(g: Graph):
    s = partition(g, cgen.CAPS)
    return next(k for k in s.kernels if k.kind == "library" and k.nodes[0].op == "conv")


def _inputs(g: Graph, variant: str, epilogue: str, b: int, h: int, w: int) -> list[torch.Tensor]:
    _, stride, dil, _, k, ci, co = VARIANTS[variant]
    pad = dil * (k // 2)
    oh, ow = ((d + 2 * pad - dil * (k - 1) - 1) // stride + 1 for d in (h, w))
    xs = [torch.randn(b, ci, h, w) * 2]
    if "add" in epilogue:
        xs.append(torch.randn(b, co, oh, ow))
    return xs


def _atol(variant: str, want: torch.Tensor) -> float:
    """Winograd's transforms add a few roundings at the scale of the sums (|sum| up to ~30
    here), which a batch norm's scale then multiplies; sums over 200 input channels differ
    from oneDNN's order by up to ~2e-5 (seen once in pw_wide with a residual add): a wider
    absolute tolerance for both. Every form's sums in another order than oneDNN's differ by
    a few ulps of the largest outputs, and a batch norm's scale (up to ~10 here) multiplies
    them: the tolerance grows with the output's scale too (measured on an AVX2-only host,
    whose portable loops sum in another order than the AVX-512 tiles: at most 1.5e-6 of the
    scale for Winograd over 200 channels, 6.4e-7 for the other forms)."""
    wide = variant.startswith("wino") or variant.endswith("_wide")
    scale = float(want.abs().nan_to_num(0.0, 0.0, 0.0).max()) if want.numel() else 0.0
    return max(2e-4 if wide else 1e-5, (5e-6 if wide else 3e-6) * scale)


def _check(variant: str, epilogue: str) -> None:
    g = conv_graph(epilogue, *VARIANTS[variant])
    f = c_conv.conv_form(_conv_kernel(g))
    assert f is not None and f.kind == FORM[variant]
    cm = build_c(g)
    assert any(k.kind == "library" and k.nodes[0].op == "conv" and k.name in cm.sources
               for k in cm.schedule.kernels)
    for b, h, w in SIZES:
        xs = _inputs(g, variant, epilogue, b, h, w)
        got, want = cm(*xs), run(g, *xs)[0]
        assert got.shape == want.shape and got.is_contiguous()
        assert_close(got, want, rtol=1e-5, atol=_atol(variant, want))


@pytest.mark.parametrize("epilogue", sorted(EPILOGUES))
@pytest.mark.parametrize("variant", ["dense3", "pw", "dw3", "stem3_s2", "wino3"])
def test_every_epilogue_matches_interpreter(variant: str, epilogue: str) -> None:
    _check(variant, epilogue)


@pytest.mark.parametrize("epilogue", ["none", "add_relu", "bn_silu"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_form_matches_interpreter(variant: str, epilogue: str) -> None:
    _check(variant, epilogue)


@pytest.mark.parametrize("variant", ["dense3", "pw", "dw5_s2", "stem7_s2", "wino3", "pw64"])
def test_portable_scalar_loops_match(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the loops compiled where there is no AVX-512
    monkeypatch.setattr(c_conv, "CONV", c_conv.ConvConfig(vec=False))
    g = conv_graph("add_hardswish", *VARIANTS[variant])
    cm = build_c(g)
    assert any("#define SF_NO_VEC 1" in src for src in cm.sources.values())
    for b, h, w in SIZES[:3]:
        xs = _inputs(g, variant, "add_hardswish", b, h, w)
        want = run(g, *xs)[0]
        assert_close(cm(*xs), want, rtol=1e-5, atol=_atol(variant, want))


@pytest.mark.parametrize("epilogue", ["none", "relu", "add_relu", "bn_relu6", "hardsigmoid"])
@pytest.mark.parametrize("variant", ["dense3", "pw", "dw3", "stem3_s2", "wino3", "wino3_n16"])
def test_nan_and_inf_follow_the_ir(variant: str, epilogue: str) -> None:
    g = conv_graph(epilogue, *VARIANTS[variant])
    cm = build_c(g)
    xs = _inputs(g, variant, epilogue, 2, 5, 6)
    xs[0][0, 1, 2, 2] = float("nan")
    xs[0][1, 2, 0, 0] = float("inf")
    if len(xs) > 1:
        xs[1][1, 3, -1, -1] = float("nan")
    got, want = cm(*xs), run(g, *xs)[0]
    assert want.isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=_atol(variant, want), equal_nan=True)


@pytest.mark.parametrize("ci,k,co", [(40, 3, 72), (8, 3, 72), (3, 3, 72), (24, 1, 128), (24, 1, 64)])
def test_results_do_not_depend_on_the_thread_count(ci: int, k: int, co: int) -> None:
    # wino, dense, stem; pw with 64-channel panels: two panels over 1800 pixels (group-major
    # order, c_tile.render_gemm) and one
    g = conv_graph("bn_relu", 1, 1, 1, True, k, ci=ci, co=co)
    cm = build_c(g)
    x = torch.randn(2, ci, 30, 30)
    one, two = at_threads(lambda: cm(x), 1), at_threads(lambda: cm(x), 2)
    assert torch.equal(one, two)
    assert_close(two, run(g, x)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["dense3", "pw", "dw3", "stem5_d2"])
def test_conv1d(variant: str) -> None:
    g = conv_graph("add_relu", *VARIANTS[variant], rank=3)
    assert c_conv.conv_form(_conv_kernel(g)) is not None
    cm = build_c(g)
    ci, co = VARIANTS[variant][5:]
    for b, n in ((1, 17), (3, 1), (2, 8)):
        xs = [torch.randn(b, ci, n), torch.randn(b, co, n)]
        got = cm(*xs)
        assert got.is_contiguous()
        assert_close(got, run(g, *xs)[0], rtol=1e-5, atol=1e-5)


def test_chain_keeps_channels_last_and_feeds_other_consumers() -> None:
    # conv -> depthwise -> pointwise (+ the first conv's result) -> max_pool -> conv -> flatten
    # -> linear, with a convolution's result also a graph output
    g = Graph("chain")
    x = g.add_input("f32[B,4,8,8]", "x")
    a = g.add("relu", [g.add("conv", [x, g.add_const(torch.randn(24, 4, 3, 3) * 0.3)], {"padding": (1,)})])
    b = g.add("conv", [a, g.add_const(torch.randn(24, 1, 3, 3) * 0.3)], {"padding": (1,), "groups": 24})
    c = g.add("add", [g.add("conv", [b, g.add_const(torch.randn(24, 24, 1, 1) * 0.3)]), a])
    p = g.add("max_pool", [c], {"kernel": (2, 2), "stride": (2, 2)})
    d = g.add("conv", [p, g.add_const(torch.randn(6, 24, 3, 3) * 0.3)], {"padding": (1,)})
    o = g.add("linear", [g.add("flatten", [d], {"axis": 1}), g.add_const(torch.randn(5, 6 * 4 * 4) * 0.1)])
    g.set_outputs([o, c])
    cm = build_c(g)
    assert sum(k.kind == "library" and k.nodes[0].op == "conv" and k.name in cm.sources
               for k in cm.schedule.kernels) == 4
    for x_ in (torch.randn(3, 4, 8, 8), torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)):
        got, want = cm(x_), run(g, x_)
        for a_, b_ in zip(got, want):
            assert a_.is_contiguous()
            assert_close(a_, b_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ci", [6, 16])     # dense, wino
def test_asymmetric_padding_and_empty_batch(ci: int) -> None:
    g = Graph("asym")
    x = g.add_input(f"f32[B,{ci},H,W]", "x")
    g.set_outputs([g.add("conv", [x, g.add_const(torch.randn(18, ci, 3, 3) * 0.3)], {"padding": (0, 1, 2, 1)})])
    assert c_conv.conv_form(_conv_kernel(g)).kind == ("wino" if ci == 16 else "dense")
    cm = build_c(g)
    for shape in ((2, ci, 7, 6), (0, ci, 7, 6), (1, ci, 1, 1), (1, ci, 2, 1)):
        x_ = torch.randn(*shape)
        got, want = cm(x_), run(g, x_)[0]
        assert got.shape == want.shape
        assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_forms_and_scope() -> None:
    def form(ci: int, co: int, k: int, groups: int = 1, hw: str = "H,W", dtype: str = "f32",
             const: bool = True):
        g = Graph("f")
        x = g.add_input(f"{dtype}[1,{ci},{hw}]", "x")
        wt = torch.randn(co, ci // groups, k, k)
        w = g.add_const(wt.to(torch.float16) if dtype == "f16" else wt) if const else \
            g.add_input(f"f32[{co},{ci // groups},{k},{k}]", "w")
        g.set_outputs([g.add("conv", [x, w], {"padding": (k // 2,), "groups": groups})])
        return c_conv.conv_form(_conv_kernel(g))
    assert form(16, 32, 1).kind == "pw" and form(16, 32, 1).nb == 32 and form(16, 16, 1).nb == 16
    # 64-channel panels where they pad no more than 32-channel ones
    assert (form(16, 64, 1).nb, form(16, 64, 1).mr) == (64, 6) and form(16, 100, 1).nb == 64
    assert form(16, 96, 1).nb == 32 and form(16, 160, 3).nb == 32 and form(16, 192, 3).nb == 64
    assert form(8, 32, 3).kind == "dense" and form(32, 32, 3, groups=32).kind == "dw"
    # Winograd: 3x3, stride 1, from 16 channels, unless the image has under 36 2x2 tiles
    assert form(16, 32, 3).kind == "wino" and form(64, 64, 3, hw="12,12").kind == "wino"
    assert form(64, 64, 3, hw="7,7").kind == "dense" and form(16, 8, 3).kind == "dense"
    assert form(32, 64, 3, groups=32) is None            # channel multiplier 2
    assert form(32, 32, 3, groups=4) is None             # grouped
    assert form(16, 32, 3, dtype="f16") is None
    assert form(16, 32, 3, const=False) is None
    # where oneDNN measured faster: wide 3x3 convolutions, an RGB stem on a large image
    assert form(256, 256, 3, hw="7,7") is None and form(256, 256, 1).kind == "pw"
    assert form(256, 256, 3).kind == "wino"
    assert form(3, 64, 7, hw="224,224") is None and form(3, 16, 3, hw="32,32").kind == "stem"
    assert form(4, 16, 3).kind == "stem" and form(5, 16, 3).kind == "dense"


def test_sources_are_deterministic_and_shared() -> None:
    # runtime channel counts and sizes: two convolutions that differ only in those share a source
    def graph(ci: int, co: int) -> Graph:
        torch.manual_seed(0)
        g = Graph("s")
        x = g.add_input(f"f32[B,{ci},H,W]", "x")
        y = g.add("conv", [x, g.add_const(torch.randn(co, ci, 3, 3))], {"padding": (1,)})
        g.set_outputs([g.add("relu", [y])])
        return g
    for pairs in (((8, 40), (8, 40), (12, 72)), ((16, 40), (16, 40), (64, 72))):   # dense, wino
        src = [c_conv.render_conv(_conv_kernel(graph(ci, co))).source for ci, co in pairs]
        assert src[0] == src[1] == src[2]


@pytest.mark.parametrize("variant", ["dw3", "wino3"])
def test_save_and_load(tmp_path, variant: str) -> None:
    import scalefold
    g = conv_graph("bn_silu", *VARIANTS[variant])
    cm = build_c(g)
    x = torch.randn(2, VARIANTS[variant][5], 7, 9)
    cm.save(tmp_path / "m")
    back = scalefold.load(tmp_path / "m")
    assert back.sources == cm.sources
    assert torch.equal(back(x), cm(x))
