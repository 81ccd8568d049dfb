"""The int8 GEMM template of ``qlinear`` (codegen/c_qgemm.py) against the reference op.

Shapes are odd on purpose (K in 5, 67, 384: k-groups of 4 with a tail; N in 7, 33, 1536:
partial panels) and M is symbolic (x: [B, S, K]), swept over 1, 3, 17, 100 with one build.
Integer accumulation must be bit-exact: with power-of-two weight scales every step of the
reference (Wd, the f64 product, + bias, the f32 rounding) is exact or rounds exactly as the
kernel's double epilogue does, so the outputs are compared with ``torch.equal``. With general
scales the reference rounds Wd to f32 first, so the bound is 1e-6 relative to sum |x| |Wd|.
"""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from scalefold import api
from scalefold.codegen import c as cgen
from amx import amx_expected, amx_used
from scalefold.codegen.c_qgemm import GemmConfig, render_qlinear
from scalefold.codegen.schedule import partition
from scalefold.ir import dtypes as dt
from scalefold.ir.graph import Graph
from scalefold.ir.ops.quant import dequant_weight
from scalefold.runtime import interp
from scalefold.runtime.cache import build, load_kernel
from scalefold.runtime.executor import Executor
from scalefold.runtime.qpack import pack_qlinear, unpack_codes

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

BS = [(1, 1), (1, 3), (17, 1), (4, 25)]          # M = 1, 3, 17, 100
SHAPES = [(5, 7), (67, 33), (384, 1536)]


def qgraph(K: int, N: int, *, wd: str = "i8", zero: str | None = None, bias: bool = True,
           xd: str = "i8", act: str = "none", pow2: bool = False, seed: int = 0,
           abits: int = 8) -> Graph:
    """x: xd[B,S,K] -> qlinear. ``zero``: None, "int" (w's dtype), "float" (non-integral)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = dt.get(wd).int_range()
    w = torch.randint(lo, hi + 1, (N, K), generator=gen)
    if pow2:
        scale = 2.0 ** -torch.randint(4, 12, (N,), generator=gen).float()
    else:
        scale = torch.rand(N, generator=gen) * 0.01 + 1e-3
    g = Graph("q")
    x = g.add_input(f"{xd}[B,S,{K}]", "x")
    z = None
    if zero == "int":
        mid = (lo + hi) // 2
        z = g.add_const(torch.randint(mid - 9, mid + 10, (N,), generator=gen), wd, "z")
    elif zero == "float":
        z = g.add_const(torch.randn(N, generator=gen) * 3, "f32", "z")
    b = g.add_const(torch.randn(N, generator=gen) * (4 if pow2 else 1), "f32", "b") if bias else None
    y = g.add("qlinear", [x, g.add_const(w, wd, "w"), g.add_const(scale, "f32", "s"), z, b],
              {"act": act, "abits": abits})
    g.set_outputs([y])
    return g


def x_codes(B: int, S: int, K: int, seed: int, lo: int = -128, hi: int = 127) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (B, S, K), generator=gen, dtype=torch.int8)


def bound(g: Graph, x: torch.Tensor) -> torch.Tensor:
    """1e-6 x (|x| @ |Wd|^T + |bias|): the float epilogue's allowance."""
    n = g.nodes[0]
    w, s = n.inputs[1].const, n.inputs[2].const
    z = n.inputs[3].const if n.inputs[3] is not None else None
    wd = dequant_weight(w, s, z, 0, False).double()
    xr = x.double().abs()
    if x.is_floating_point():
        xr = xr * 1.01 + 1e-3   # codes are |x| / sx, rounded
    b = n.inputs[4].const.double().abs() if n.inputs[4] is not None else 0
    return 1e-6 * (xr @ wd.abs().T + b) + 1e-30


def run_sweep(g: Graph, cm, exact: bool, lo: int = -128, hi: int = 127) -> None:
    K = g.inputs[0].type.shape[-1]
    for B, S in BS:
        x = x_codes(B, S, K, seed=B * 100 + S, lo=lo, hi=hi)
        got, want = cm(x), interp.run(g, x)[0]
        assert got.shape == want.shape and got.dtype == want.dtype
        if exact:
            assert torch.equal(got, want), f"B={B} S={S}: max diff {(got - want).abs().max()}"
        else:
            err = (got.double() - want.double()).abs()
            assert bool((err <= bound(g, x)).all()), f"B={B} S={S}: max err {err.max()}"


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("wd,zero", [("i8", None), ("i8", "int"), ("u8", "int")])
def test_exact_integer_accumulation(K: int, N: int, wd: str, zero: str | None) -> None:
    g = qgraph(K, N, wd=wd, zero=zero, pow2=True, bias=(K != 67), seed=K + N)
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    run_sweep(g, cm, exact=True)


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("wd,zero,bias", [("i8", None, True), ("i8", "float", False),
                                          ("u8", "int", True), ("u8", None, False)])
def test_general_scales(K: int, N: int, wd: str, zero: str | None, bias: bool) -> None:
    g = qgraph(K, N, wd=wd, zero=zero, bias=bias, seed=K * N)
    run_sweep(g, api.build_c(g), exact=False)


def test_k_shorter_than_one_group() -> None:
    g = qgraph(3, 20, wd="u8", zero="int", pow2=True, seed=3)
    run_sweep(g, api.build_c(g), exact=True)


def test_int6_codes_and_i4_weights() -> None:
    """Int6 activations are i8 codes in [-32, 31]; i4 weights are i8 containers in [-8, 7]."""
    g = qgraph(67, 33, pow2=True, seed=6)
    run_sweep(g, api.build_c(g), exact=True, lo=-32, hi=31)
    g4 = qgraph(67, 33, wd="i4", zero="int", pow2=True, seed=4)
    assert partition(g4, cgen.CAPS).kernels[0].kind == "template"
    run_sweep(g4, api.build_c(g4), exact=True, lo=-32, hi=31)


def test_i4_activation_codes() -> None:
    # i4 x was accepted by the template and then had no C storage type: a bare KeyError
    g = qgraph(67, 33, xd="i4", pow2=True, seed=8)
    assert partition(g, cgen.CAPS).kernels[0].kind == "template"
    run_sweep(g, api.build_c(g), exact=True, lo=-8, hi=7)


def test_large_integral_float_zero_points_take_the_float_path() -> None:
    # z = 40000 over K = 512: sum x (w - z) leaves int32, which the integer epilogue assumed
    # of every integral zero point up to 2^16 (169400.7 where the reference gives -260096)
    K, N = 512, 16
    g = Graph("q")
    x = g.add_input(f"i8[M,{K}]", "x")
    y = g.add("qlinear", [x, g.add_const(torch.zeros(N, K, dtype=torch.int64), "u8", "w"),
                          g.add_const(torch.full((N,), 1e-4), "f32", "s"),
                          g.add_const(torch.full((N,), 40000.0), "f32", "z")])
    g.set_outputs([y])
    xc = torch.full((3, K), 127, dtype=torch.int8)
    xc[1] = -128
    assert torch.equal(api.build_c(g)(xc), interp.run(g, xc)[0])
    n = g.nodes[0]
    assert pack_qlinear(n.inputs[1].const, n.inputs[2].const, n.inputs[3].const, dt.u8, 16).zf is not None
    small = torch.full((N,), 200.0)          # the integer path stays for zero points that fit
    assert pack_qlinear(n.inputs[1].const, n.inputs[2].const, small, dt.u8, 16).zf is None


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
@pytest.mark.parametrize("K,N", [(5, 7), (384, 33)])
def test_dynamic_activation_quantisation(act: str, K: int, N: int) -> None:
    """Float x quantised in the kernel's prologue (the W8A8 baselines): same codes and scale
    as the reference, so only the float epilogue differs; a NaN row stays a NaN row."""
    g = qgraph(K, N, xd="f32", act=act, zero="int", seed=K)
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    for B, S in BS:
        gen = torch.Generator().manual_seed(B + S)
        x = torch.randn(B, S, K, generator=gen) * torch.rand(K, generator=gen) * 4
        if B * S == 17:
            x[5, 0, K // 2] = float("nan")
        got, want = cm(x), interp.run(g, x)[0]
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"B={B} S={S}: NaN rows differ"
        err = (got.double() - want.double()).abs().nan_to_num(0)
        tol = bound(g, x.nan_to_num(0) / (x.nan_to_num(0).abs().amax() / 127 + 1e-30)) \
            * x.nan_to_num(0).abs().amax()
        assert bool((err <= tol).all()), f"B={B} S={S}: max err {err.max()}"


@pytest.mark.parametrize("xd,act,abits", [("f16", "per_token", 6), ("f64", "per_tensor", 8),
                                          ("bf16", "per_tensor", 7)])
def test_dynamic_other_float_types_are_exact(xd: str, act: str, abits: int) -> None:
    """With power-of-two weight scales the dynamic path matches the reference bit for bit in
    every float type (same codes and scales, the epilogue rounds as the reference does)."""
    g = qgraph(67, 33, xd=xd, act=act, abits=abits, pow2=True, seed=3)
    cm = api.build_c(g)
    x = (torch.randn(3, 5, 67) * 3).to(dt.get(xd).container)
    got, want = cm(x), interp.run(g, x)[0]
    assert got.dtype == x.dtype and torch.equal(got, want)


def _build_with(g: Graph, cfg: GemmConfig):
    """The C build of ``g`` with the template rendered under ``cfg``."""
    sched = partition(g, cgen.CAPS)
    (k,) = sched.kernels
    ck = render_qlinear(k, cfg)
    fn = load_kernel(build(ck.source))
    ex = Executor(g, sched, {k.name: fn}, {k.name: ck.params}, args={k.name: ck.args})
    return ck, (lambda *xs: ex(*xs)[0])


@pytest.mark.parametrize("cfg", [GemmConfig(vnni=False), GemmConfig(mr=4, nb=2, mc=8, kc=8),
                                 GemmConfig(mr=1, nb=1, mc=3, kc=12, vnni=False),
                                 GemmConfig(mr=3, nb=1, mc=5, kc=0, dyn=False)])
def test_other_blockings_and_scalar_fallback(cfg: GemmConfig) -> None:
    """The portable scalar tile (VNNI disabled at render time) and other blockings (register
    tiles, row chunks, several passes along K with the K tail in the last) give the same bits
    as the default VNNI kernel."""
    g = qgraph(67, 33, wd="u8", zero="int", seed=11)
    ck, run = _build_with(g, cfg)
    assert ("#define SF_NO_VNNI" in ck.source) == (not cfg.vnni)
    cm = api.build_c(g)
    for B, S in BS:
        x = x_codes(B, S, 67, seed=B + 7 * S)
        assert torch.equal(run(x), cm(x)), f"{cfg} B={B} S={S}"
    run_sweep(g, run, exact=False)


def test_sources_are_deterministic() -> None:
    a = cgen.render(partition(qgraph(67, 33, zero="float", seed=1), cgen.CAPS))
    b = cgen.render(partition(qgraph(67, 33, zero="float", seed=1), cgen.CAPS))
    assert [k.source for k in a] == [k.source for k in b]
    assert all(torch.equal(u, v) for u, v in zip(a[0].args[1:-2], b[0].args[1:-2]))


def test_pack_layout_roundtrip() -> None:
    for wd in ("i8", "u8", "i4"):
        lo, hi = dt.get(wd).int_range()
        w = torch.randint(lo, hi + 1, (33, 67)).to(dt.get(wd).container)
        p = pack_qlinear(w, torch.ones(33), None, dt.get(wd), 64)
        assert p.w.shape == (1, 17, 64, 4) and p.w.dtype == torch.uint8
        assert torch.equal(unpack_codes(p, dt.get(wd)), w)
        # padded channels and k-groups hold zeros
        assert int(p.w[0, :, 33:].abs().sum()) == 0 and int(p.w[0, 16, :, 3:].sum()) == 0


@pytest.mark.parametrize("variant", ["group", "u8x", "abits12", "i16w"])
def test_unsupported_variants_stay_on_reference(variant: str) -> None:
    # (per-channel weight-only float x runs the weight-only template: tests/codegen/test_c_w4.py)
    g = Graph("r")
    K, N = 16, 8
    xd = {"u8x": "u8", "weight_only": "f32", "abits12": "f32"}.get(variant, "i8")
    x = g.add_input(f"{xd}[M,{K}]", "x")
    wd = "i16" if variant == "i16w" else "i8"
    w = g.add_const(torch.randint(-100, 100, (N, K)), wd, "w")
    group = 8 if variant == "group" else 0
    s = g.add_const(torch.rand((N, K // 8) if group else (N,)) + 0.1, "f32", "s")
    act = {"abits12": "per_token"}.get(variant, "none")
    g.set_outputs([g.add("qlinear", [x, w, s], {"group": group, "act": act,
                                                "abits": 12 if variant == "abits12" else 8})])
    sched = partition(g, cgen.CAPS)
    assert [k.kind for k in sched.kernels] == ["reference"]
    cm = api.build_c(g)
    xin = (torch.randn(3, K) if xd == "f32" else torch.randint(0, 100, (3, K)).to(dt.get(xd).container))
    # float x: the executor's dequantise-once f32 GEMM (runtime/library.qlinear_fallback)
    # stands in for the reference, only the float summation differs; integer x: exact
    assert_close(cm(xin).cpu(), interp.run(g, xin)[0], rtol=2e-6 if xd == "f32" else 0.0, atol=0.0,
                 rel_to_scale=True)


# ---- AMX tiles (codegen/c_qgemm_amx.py) -------------------------------------------------------
@pytest.mark.parametrize("K,N,wd,zero,xd,act", [
    (384, 100, "i8", "int", "i8", "none"),           # whole 64-column steps
    (203, 70, "u8", "int", "i8", "none"),            # 3 steps, then 11 columns (2 groups + tail 3)
    (130, 48, "i4", None, "i4", "none"),             # i4 weights and codes, 2 steps + 2 columns
    (256, 33, "i8", "float", "f32", "per_token"),    # dynamic codes, float zero points
    (320, 40, "u8", "int", "f32", "per_tensor")])
@pytest.mark.parametrize("mc", [48, 32])
def test_amx_tiles_match_the_vnni_tiles_bit_for_bit(K: int, N: int, wd: str, zero: str | None,
                                                    xd: str, act: str, mc: int) -> None:
    """Chunks of 16 rows and more run on AMX where the CPU has it, over K's whole 64-column
    steps, and the VNNI tiles add the rest; int32 sums are exact, so every M gives the VNNI
    build's bits (and, where the CPU lacks AMX, both builds run the VNNI tiles)."""
    g = qgraph(K, N, wd=wd, zero=zero, xd=xd, act=act, seed=K)
    ck_amx, amx = _build_with(g, GemmConfig(mc=mc))
    ck_vnni, vnni = _build_with(g, GemmConfig(mc=mc, amx=False))
    assert "sf_qa_gemm" in ck_amx.source and "sf_qa_gemm" not in ck_vnni.source
    used = amx_used(ck_amx.source)
    for M in (1, 15, 16, 17, 33, 48, 100):
        gen = torch.Generator().manual_seed(M)
        if xd == "f32":
            x = torch.randn(1, M, K, generator=gen) * 3
            x[0, M // 2, K // 3] = float("nan") if M > 20 else x[0, M // 2, K // 3]
        else:
            lo, hi = dt.get(xd).int_range()
            x = torch.randint(lo, hi + 1, (1, M, K), generator=gen, dtype=torch.int8)
        a, v = amx(x), vnni(x)
        assert torch.equal(a.nan_to_num(), v.nan_to_num()) and torch.equal(a.isnan(), v.isnan()), \
            f"M={M}: max diff {(a - v).abs().max()}"
        if xd != "f32":
            err = (a.double() - interp.run(g, x)[0].double()).abs()
            assert bool((err <= bound(g, x)).all()), f"M={M}: max err {err.max()}"
        # the AMX tiles ran from 16 rows on, wherever kernels built here can run them
        assert used.value == int(M >= 16 and amx_expected())


def test_amx_gates() -> None:
    """The AMX tiles are rendered for at most four 16-channel columns, K of one whole
    64-column step or more, row chunks of whole 16-row tiles and one pass over K."""
    g = qgraph(384, 100, seed=1)
    for cfg in (GemmConfig(nb=5), GemmConfig(mc=40), GemmConfig(kc=128), GemmConfig(vnni=False)):
        assert "sf_qa_gemm" not in _build_with(g, cfg)[0].source
    assert "sf_qa_gemm" not in _build_with(qgraph(63, 100, seed=1), GemmConfig())[0].source
