"""The Triton int8 GEMM of ``qlinear`` (codegen/triton_qgemm.py) against the reference op.

Runs under the Triton interpreter on the CPU (``SF_TRITON_TEST_DEVICE=cuda``: on a GPU). Shapes
are odd on purpose (K in 5, 67; N in 7, 33: partial K steps and column blocks) and M is
symbolic (x: [B, S, K]) swept over 1, 3, 17 with one build. With power-of-two weight scales
every step of the reference is exact or rounds exactly as the kernel's epilogue does (|acc| <
2^24), so outputs are compared with ``torch.equal``: the integer accumulation is bit-exact.
With general scales the reference rounds Wd to f32 first, so the bound is 1e-6 relative to
sum |x| |Wd| + |bias|.
"""
from __future__ import annotations

import os

DEVICE = os.environ.get("SF_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from harness import assert_close  # noqa: E402
from scalefold import api  # noqa: E402
from scalefold.codegen import triton as tgen  # noqa: E402
from scalefold.codegen.schedule import partition  # noqa: E402
from scalefold.codegen.triton_qgemm import gemm_config, qgemm, qlinear_supported  # noqa: E402
from scalefold.ir import dtypes as dt  # noqa: E402
from scalefold.ir.graph import Graph  # noqa: E402
from scalefold.ir.ops.quant import dequant_weight, dynamic_quant  # noqa: E402
from scalefold.runtime import interp  # noqa: E402


BS = [(1, 1), (1, 3), (17, 1)]          # M = 1, 3, 17
SHAPES = [(5, 7), (67, 33)]
SMALL = dict(BM=16, BN=16, BK=32)      # several programs and K steps on these shapes

pytestmark = [pytest.mark.usefixtures("kernel_cache_dir"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]   # numpy, in the interpreter


def qgraph(K: int, N: int, *, wd: str = "i8", zero: str | None = None, bias: bool = True,
           xd: str = "i8", act: str = "none", pow2: bool = False, seed: int = 0,
           abits: int = 8, out: str = "f32") -> Graph:
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
        z = g.add_const(torch.randint(max(lo, mid - 9), min(hi, mid + 10), (N,), generator=gen), wd, "z")
    elif zero == "float":
        z = g.add_const(torch.randn(N, generator=gen) * 3, "f32", "z")
    b = g.add_const(torch.randn(N, generator=gen) * (4 if pow2 else 1), "f32", "b") if bias else None
    y = g.add("qlinear", [x, g.add_const(w, wd, "w"), g.add_const(scale, "f32", "s"), z, b],
              {"act": act, "abits": abits, "out_dtype": out})
    g.set_outputs([y])
    return g


def x_codes(B: int, S: int, K: int, seed: int, lo: int = -128, hi: int = 127,
            xd: str = "i8") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (B, S, K), generator=gen).to(dt.get(xd).container)


def bound(g: Graph, x: torch.Tensor) -> torch.Tensor:
    """1e-6 x (|x| @ |Wd|^T + |bias|): the float epilogue's allowance."""
    n = g.nodes[0]
    w, s = n.inputs[1].const, n.inputs[2].const
    z = n.inputs[3].const if n.inputs[3] is not None else None
    wd = dequant_weight(w, s, z, 0, False).double()
    b = n.inputs[4].const.double().abs() if n.inputs[4] is not None else 0
    return 1e-6 * (x.double().abs() @ wd.abs().T + b) + 1e-30


def build(g: Graph):
    cm = api.build_triton(g, DEVICE)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    return cm


def run_sweep(g: Graph, cm, exact: bool, lo: int = -128, hi: int = 127) -> None:
    K = g.inputs[0].type.shape[-1]
    xd = g.inputs[0].dtype.name
    for B, S in BS:
        x = x_codes(B, S, K, seed=B * 100 + S, lo=lo, hi=hi, xd=xd)
        got, want = cm(x), interp.run(g, x)[0]
        assert got.shape == want.shape and got.dtype == want.dtype
        if exact:
            assert torch.equal(got, want), f"B={B} S={S}: max diff {(got - want).abs().max()}"
        else:
            err = (got.double() - want.double()).abs()
            assert bool((err <= bound(g, x)).all()), f"B={B} S={S}: max err {err.max()}"


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("wd,zero,bias", [("i8", None, True), ("i8", "int", False),
                                          ("i4", "int", True), ("u4", None, False)])
def test_exact_integer_accumulation(K: int, N: int, wd: str, zero: str | None, bias: bool) -> None:
    g = qgraph(K, N, wd=wd, zero=zero, pow2=True, bias=bias, seed=K + N)
    run_sweep(g, build(g), exact=True)


@pytest.mark.parametrize("M,K,N", [(1, 5, 7), (3, 67, 33), (17, 67, 7), (17, 5, 33)])
@pytest.mark.parametrize("config", [None, SMALL])
def test_raw_accumulation_is_exact(M: int, K: int, N: int, config: dict | None) -> None:
    """The int32 sums themselves (unit scales, f64 output), also over several programs and K
    steps, with integer zero points removed exactly."""
    gen = torch.Generator().manual_seed(M * K + N)
    x = torch.randint(-128, 128, (M, K), generator=gen, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8).to(DEVICE)
    z = torch.randint(-128, 128, (N,), generator=gen, dtype=torch.int8).to(DEVICE)
    one = torch.ones(N, dtype=torch.float64, device=DEVICE)
    y = qgemm(x, w, one, out_dtype=torch.float64, config=config)
    xl, wl, zl = x.cpu().long(), w.cpu().long(), z.cpu().long()  # no int64 matmul on CUDA
    assert torch.equal(y.cpu(), (xl @ wl.T).double())
    yz = qgemm(x, w, one, z, out_dtype=torch.float64, config=config)
    assert torch.equal(yz.cpu(), (xl @ (wl - zl[:, None]).T).double())


@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("zero,bias", [(None, True), ("float", False), ("int", True)])
def test_general_scales(K: int, N: int, zero: str | None, bias: bool) -> None:
    g = qgraph(K, N, zero=zero, bias=bias, seed=K * N)
    run_sweep(g, build(g), exact=False)


def test_int6_codes_and_narrow_outputs() -> None:
    """Int6 activations are i8 codes in [-32, 31]; f16 / bf16 / f64 outputs round once (no
    bias: the f32 value is exact, so each output rounds as the reference's f64 does)."""
    g6 = qgraph(67, 33, pow2=True, seed=6)
    run_sweep(g6, build(g6), exact=True, lo=-32, hi=31)
    for out in ("f16", "bf16", "f64"):
        g = qgraph(67, 33, wd="i4", zero="int", pow2=True, bias=False, seed=4, out=out)
        run_sweep(g, build(g), exact=True, lo=-32, hi=31)


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
@pytest.mark.parametrize("K,N", SHAPES)
def test_dynamic_activation_quantisation(act: str, K: int, N: int) -> None:
    """Float x quantised by the Triton quantising kernel: same codes and scale as the
    reference, so only the float epilogue differs; a NaN row stays a NaN row (and under
    per_tensor the other rows keep scale 1, as in the reference)."""
    g = qgraph(K, N, xd="f32", act=act, zero="int", seed=K)
    cm = build(g)
    for B, S in BS:
        gen = torch.Generator().manual_seed(B + S)
        x = torch.randn(B, S, K, generator=gen) * torch.rand(K, generator=gen) * 4
        if B * S == 17:
            x[5, 0, K // 2] = float("nan")
        got, want = cm(x), interp.run(g, x)[0]
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"B={B} S={S}: NaN rows differ"
        qx, sx = dynamic_quant(x.nan_to_num(0), act, 8)
        err = (got.double() - want.double()).abs().nan_to_num(0)
        tol = bound(g, qx.abs() + 1) * sx.double()
        assert bool((err <= tol).all()), f"B={B} S={S}: max err {err.max()}"


@pytest.mark.parametrize("xd,act,abits", [("f64", "per_token", 8), ("f64", "per_tensor", 6),
                                          ("f16", "per_token", 7), ("bf16", "per_tensor", 8)])
def test_dynamic_other_float_types(xd: str, act: str, abits: int) -> None:
    """f64 x runs the reference (bit for bit under the interpreter; on a GPU up to f64 summation
    order); f16 / bf16 outputs within one rounding."""
    g = qgraph(67, 33, xd=xd, act=act, abits=abits, pow2=True, seed=3, zero="int")
    if xd == "f64":
        # f64 activations stay on the reference path (see triton_qgemm's support check)
        cm = api.build_triton(g, DEVICE)
        assert [k.kind for k in cm.schedule.kernels] == ["reference"]
    else:
        cm = build(g)
    x = (torch.randn(3, 5, 67, generator=torch.Generator().manual_seed(1)) * 3).to(dt.get(xd).container)
    got, want = cm(x), interp.run(g, x)[0]
    assert got.dtype == x.dtype
    if xd == "f64":
        if DEVICE == "cpu":
            assert torch.equal(got, want)
        else:
            # the GPU runs the same reference ops; only cuBLAS's f64 summation order differs
            assert torch.allclose(got.cpu(), want, rtol=1e-12, atol=1e-12)
    else:
        eps = torch.finfo(x.dtype).eps
        err = (got.double() - want.double()).abs()
        assert bool((err <= eps * want.double().abs() + 1e-3).all()), f"max err {err.max()}"


def test_config_by_m() -> None:
    assert gemm_config(1, 11008, 4096)["BM"] == 16
    assert gemm_config(256, 11008, 4096)["BM"] == 64
    assert gemm_config(4096, 11008, 4096)["BM"] == 128
    # small K / N shrink their blocks (never below tl.dot's 32-wide int8 K step)
    assert (gemm_config(3, 7, 5)["BK"], gemm_config(3, 7, 5)["BN"]) == (32, 32)


@pytest.mark.parametrize("variant", ["group", "u8w", "u8x", "abits12"])
def test_unsupported_variants_stay_on_reference(variant: str) -> None:
    g = Graph("r")
    K, N = 16, 8
    xd = {"u8x": "u8", "abits12": "f32"}.get(variant, "i8")
    x = g.add_input(f"{xd}[M,{K}]", "x")
    wd = "u8" if variant == "u8w" else "i8"
    w = g.add_const(torch.randint(0, 100, (N, K)), wd, "w")
    group = 8 if variant == "group" else 0
    s = g.add_const(torch.rand((N, K // 8) if group else (N,)) + 0.1, "f32", "s")
    act = {"abits12": "per_token"}.get(variant, "none")
    g.set_outputs([g.add("qlinear", [x, w, s], {"group": group, "act": act,
                                                "abits": 12 if variant == "abits12" else 8})])
    assert [k.kind for k in partition(g, tgen.CAPS).kernels] == ["reference"]
    cm = api.build_triton(g, DEVICE)
    xin = (torch.randn(3, K) if xd == "f32" else torch.randint(0, 100, (3, K)).to(dt.get(xd).container))
    # float x: the executor's dequantise-once f32 GEMM (runtime/library.qlinear_fallback)
    # stands in for the reference, only the float summation differs; integer x: exact
    assert_close(cm(xin).cpu(), interp.run(g, xin)[0], rtol=2e-6 if xd == "f32" else 0.0, atol=0.0,
                 rel_to_scale=True)
    assert tgen.op_coverage()["qlinear"].startswith("template (partly; reference:")


def test_weight_only_int8_goes_to_the_weight_only_kernel() -> None:
    """Group-0 i8 codes with float x and act none are not the int8 GEMM's (it quantises x):
    the weight-only kernel (triton_wq.py) takes them."""
    g = Graph("r")
    x = g.add_input("f32[M,16]", "x")
    w = g.add_const(torch.randint(-100, 100, (8, 16)), "i8", "w")
    s = g.add_const(torch.rand(8) + 0.1, "f32", "s")
    g.set_outputs([g.add("qlinear", [x, w, s], {"group": 0, "act": "none"})])
    assert not qlinear_supported(g.nodes[0])
    assert [tk.launch for tk in tgen.render(partition(g, tgen.CAPS))] == ["wq"]
