"""The weight-only kernel for the codes the W4 kernels do not take (codegen/triton_wq.py,
runtime/wqpack_gpu.py): u8 / i8 (integer or float zero points), float8 E4M3 / E5M2, FP4 E2M1,
and 4-bit integer codes with float zero points or groups that are not a power of two.

Runs under the Triton interpreter on the CPU (``SF_TRITON_TEST_DEVICE=cuda``: on a GPU). Shapes
are odd on purpose (K not a multiple of the tile or the group, N not a multiple of the column
block). Outputs are compared with the exact product of the reference's Wd within one rounding
of the output type plus 1e-5 of sum |x| |Wd| (the kernel accumulates in f32).
"""
from __future__ import annotations

import os

DEVICE = os.environ.get("SF_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from scalefold import api  # noqa: E402
from scalefold.codegen import triton as tgen  # noqa: E402
from scalefold.codegen.schedule import partition  # noqa: E402
from scalefold.codegen.triton_wq import WQSpec, make_launch, wq_config, wq_linear, wq_supported  # noqa: E402
from scalefold.codegen.triton_wq_src import SOURCE  # noqa: E402
from scalefold.runtime.triton_exec import load_module  # noqa: E402
from scalefold.ir import dtypes as dt  # noqa: E402
from scalefold.ir.graph import Graph  # noqa: E402
from scalefold.runtime import interp  # noqa: E402
from scalefold.runtime.wqpack_gpu import dequant, pack_wq, reference, unpack_codes  # noqa: E402

XT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
EPS = {"f32": 2.0 ** -23, "f16": 2.0 ** -10, "bf16": 2.0 ** -7}

pytestmark = [pytest.mark.usefixtures("kernel_cache_dir"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]


def consts(wd: str, N: int, K: int, group: int, zero: str | None, seed: int = 0):
    """(codes in the IR container, scale f32 [N, G] or [N], zero or None) of random codes."""
    gen = torch.Generator().manual_seed(seed)
    G = -(-K // group) if group > 0 else 1
    z = None
    if wd in ("u8", "u4"):
        hi = 255 if wd == "u8" else 15
        w = torch.randint(0, hi + 1, (N, K), generator=gen).to(torch.uint8)
        if zero == "int":
            z = torch.randint(0, hi + 1, (N, G), generator=gen).to(torch.uint8)
    elif wd in ("i8", "i4"):
        lo, hi = (-128, 127) if wd == "i8" else (-8, 7)
        w = torch.randint(lo, hi + 1, (N, K), generator=gen).to(torch.int8)
        if zero == "int":
            z = torch.randint(lo, hi + 1, (N, G), generator=gen).to(torch.int8)
    elif wd == "f4e2m1":
        w = torch.randint(0, 16, (N, K), generator=gen).to(torch.uint8)
    else:
        fdt = torch.float8_e4m3fn if wd == "f8e4m3" else torch.float8_e5m2
        w = (torch.randn(N, K, generator=gen) * 8).to(fdt)
        # subnormal and extreme codes decode exactly too
        w[0, :4] = torch.tensor([2.0 ** -9, -(2.0 ** -8), 448.0, -448.0] if wd == "f8e4m3"
                                else [2.0 ** -16, -(2.0 ** -15), 57344.0, -57344.0]).to(fdt)
    if zero == "f32":
        z = torch.rand(N, G, generator=gen) * 6 - 1
    s = torch.rand(N, G, generator=gen) * 0.05 + 0.001
    if group <= 0:
        s = s[:, 0].contiguous()
        z = z[:, 0].contiguous() if z is not None else None
    return w, s, z


FORMS = [("u8", 32, "int"), ("u8", 0, "int"), ("i8", 64, None), ("i8", 0, None), ("u8", 20, "int"),
         ("u8", 32, "f32"), ("i8", 16, "int"), ("f8e4m3", 32, None), ("f8e4m3", 0, None),
         ("f8e5m2", 128, None), ("f4e2m1", 32, None), ("f4e2m1", 0, None), ("u4", 24, "int"),
         ("i4", 32, "f32"), ("u4", 7, None)]


@pytest.mark.parametrize("wd,group,zero", FORMS)
@pytest.mark.parametrize("K", [75, 128])
def test_pack_decodes_to_the_reference_weights_exactly(wd: str, group: int, zero: str | None, K: int) -> None:
    w, s, z = consts(wd, 9, K, group, zero)
    p = pack_wq(w, s, z, dt.get(wd), group)
    assert torch.equal(dequant(p), reference(w, s, z, dt.get(wd), group))
    raw = w.view(torch.uint8) if w.dtype != torch.uint8 else w
    assert torch.equal(unpack_codes(p), raw & 15 if dt.get(wd).bits == 4 else raw)
    # 4-bit codes take half a byte each on the device; rows pad to 16 bytes
    nbytes = -(-K // 2) if dt.get(wd).bits == 4 else K
    assert p.codes.shape == (9, -(-nbytes // 16) * 16) and not p.codes[:, nbytes:].any()


def check(got: torch.Tensor, x: torch.Tensor, wdq: torch.Tensor, bias: torch.Tensor | None, xd: str,
          dense: bool = False) -> None:
    """Within one rounding of x's dtype plus 1e-5 of sum |x| |Wd| of the f64 product; ``dense``:
    the dense path, whose weight is Wd rounded to x's dtype (half its ulp of sum |x| |Wd| more)."""
    got, x = got.cpu().double(), x.cpu().double()
    exact = x @ wdq.double().T + (bias.cpu().double() if bias is not None else 0)
    bound = x.abs() @ wdq.double().abs().T + (bias.cpu().double().abs() if bias is not None else 0)
    err = (got - exact).abs()
    slack = 1e-5 + (EPS[xd] / 2 if dense and xd != "f32" else 0)
    ok = err <= EPS[xd] * exact.abs() + slack * bound + 1e-30
    assert bool(ok.all()), f"max err {err.max().item():.3e}, bound {bound.max().item():.3e}"


@pytest.mark.parametrize("wd,group,zero", FORMS)
@pytest.mark.parametrize("xd", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("M", [1, 3, 17])
def test_kernel_matches_the_reference(wd: str, group: int, zero: str | None, xd: str, M: int) -> None:
    N, K = 37, 75
    w, s, z = consts(wd, N, K, group, zero, seed=M)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(M, K, generator=gen).to(XT[xd]).to(DEVICE)
    b = torch.randn(N, generator=gen).to(XT[xd])
    y = wq_linear(x, w, wd, s, z, group, b)
    assert y.dtype == XT[xd] and y.shape == (M, N)
    check(y, x, reference(w, s, z, dt.get(wd), group), b, xd)


@pytest.mark.parametrize("wd,group,zero", FORMS)
@pytest.mark.parametrize("xd,chunk", [("f32", 0), ("bf16", 16), ("f16", 0)])
def test_dense_path_matches_the_reference(wd: str, group: int, zero: str | None, xd: str, chunk: int) -> None:
    """The dense path (``wq_dequant``, then torch's GEMM; by default from 129 rows on a GPU) on
    every form, whole or in chunks of channels with a short last one: f32 x gets the
    reference's weights exactly; f16 / bf16 x that weight rounded once."""
    N, K, M = 37, 75, 6
    w, s, z = consts(wd, N, K, group, zero, seed=5)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(M, K, generator=gen).to(XT[xd]).to(DEVICE)
    b = torch.randn(N, generator=gen).to(XT[xd])
    y = wq_linear(x, w, wd, s, z, group, b, config=dict(DENSE=1, DENSE_CHUNK=chunk))
    assert y.dtype == XT[xd] and y.shape == (M, N)
    check(y, x, reference(w, s, z, dt.get(wd), group), b, xd, dense=True)


@pytest.mark.parametrize("cfg", [dict(BM=16, BN=16, BK=16, SPLIT=3), dict(BM=16, BN=32, BK=64, SPLIT=2),
                                 dict(BM=32, BN=16, BK=32, SPLIT=1), dict(GEMV=1, BM=8, BN=16, BK=16, SPLIT=3),
                                 dict(GEMV=1, BM=8, BN=8, BK=32, SPLIT=1), dict(GEMV=1, BM=8, BN=16, BK=128, SPLIT=2),
                                 dict(BM=16, BN=16, BK=32, SPLIT=2, SWAP=0)])
@pytest.mark.parametrize("wd,group,zero", [("u8", 32, "int"), ("f8e4m3", 0, None), ("f4e2m1", 64, None),
                                           ("u8", 20, "f32"), ("i4", 40, "int"), ("i8", 12, None)])
def test_tiles_and_split_k(cfg: dict, wd: str, group: int, zero: str | None) -> None:
    """Several programs, K tiles and splits (the deterministic last-arrival sum) give the same
    result, on the GEMM and the GEMV (tiles spanning several groups take per-word scales and
    zero points; float zero points and groups that split a word fall back to the GEMM); a
    second launch reuses the reset counters."""
    N, K, M = 41, 200, 5
    w, s, z = consts(wd, N, K, group, zero, seed=3)
    wdq = reference(w, s, z, dt.get(wd), group)
    p = pack_wq(w, s, z, dt.get(wd), group).to(DEVICE)
    spec = WQSpec((0, -1, 2), "f32", w, s, z, group, wd)
    launch = make_launch(load_module(SOURCE, DEVICE == "cpu"), spec, p, M, N, K, DEVICE == "cpu",
                         dict(cfg, num_warps=4))
    outs = []
    for seed in (1, 2, 1):                    # one launch, its split counters reset in between
        x = torch.randn(M, K, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        y = torch.full((M, N), float("nan"), device=DEVICE)
        launch([x, x, y])
        check(y, x, wdq, None, "f32")
        outs.append(y)
    assert torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("M", [3, 17])      # the GEMV and the GEMM
def test_non_finite_rows_stay_in_their_row(M: int) -> None:
    N, K = 24, 64
    w, s, z = consts("u8", N, K, 32, "int")
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(2))
    x[1, 5] = float("inf")
    y = wq_linear(x.to(DEVICE), w, "u8", s, z, 32).cpu()
    want = interp.run(_graph(w, "u8", s, z, 32, None, "f32", K, N), x)[0]
    assert torch.equal(torch.isfinite(y), torch.isfinite(want)) and not torch.isfinite(y[1]).all()
    keep = torch.tensor([0] + list(range(2, M)))
    check(y[keep], x[keep], reference(w, s, z, dt.get("u8"), 32), None, "f32")


def _graph(w, wd, s, z, group, b, xd, K, N) -> Graph:
    g = Graph("wq")
    x = g.add_input(f"{xd}[B,{K}]", "x")
    zv = None
    if z is not None:
        zv = g.add_const(z, "f32" if z.is_floating_point() else wd, "z")
    bv = g.add_const(b, xd, "b") if b is not None else None
    y = g.add("qlinear", [x, g.add_const(w, wd, "w"), g.add_const(s, "f32", "s"), zv, bv],
              {"act": "none", "group": group, "wtype": wd})
    g.set_outputs([y])
    return g


@pytest.mark.parametrize("wd,group,zero,xd", [("u8", 32, "int", "bf16"), ("f8e5m2", 0, None, "f16"),
                                              ("f4e2m1", 32, None, "f32"), ("u4", 24, "int", "bf16")])
def test_compiled_graph_runs_wq_with_packed_constants_only(wd: str, group: int, zero: str | None, xd: str) -> None:
    """The Triton target takes the form as a ``wq`` template (not the dequantise-once
    fallback); the IR codes, scales and zeros get no device tensor; any batch works."""
    N, K = 40, 96
    w, s, z = consts(wd, N, K, group, zero, seed=4)
    b = torch.randn(N, generator=torch.Generator().manual_seed(5))
    g = _graph(w, wd, s, z, group, b, xd, K, N)
    kernels = partition(g, tgen.CAPS).kernels
    assert [k.kind for k in kernels] == ["template"]
    (tk,) = tgen.render(partition(g, tgen.CAPS))
    assert tk.launch == "wq"
    cm = api.build_triton(g, DEVICE)
    ex = cm._runner
    held = {slot for slot, _ in ex._consts}
    n = g.nodes[0]
    for v in n.inputs[1:4]:
        if v is not None:
            assert ex._slot[id(v)] not in held
    wdq = reference(w, s, z, dt.get(wd), group)
    for B in (1, 6):
        x = torch.randn(B, K, generator=torch.Generator().manual_seed(B)).to(XT[xd])
        got = cm(x)
        want = interp.run(g, x)[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        check(got, x, wdq, b.to(XT[xd]), xd)


def test_quant_weights_formats_compile_to_wq() -> None:
    """int8 / fp8 / fp4 weight-only models on the Triton target match the interpreter."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.GELU(), torch.nn.Linear(80, 48)).to(torch.bfloat16)
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    for p in ("quant_weights(format=int8)", "quant_weights(format=fp8_e4m3)", "quant_weights(format=fp4_e2m1,group=32)"):
        ci = api.compile(m, (x,), passes=[p], target="interp")
        ct = api.compile(m, (x,), passes=[p], target="triton")
        assert sum("def wq_gemm" in src for src in ct.sources.values()) == 2
        y = ct(x.to(DEVICE)).cpu().float()
        want = ci(x).float()
        assert torch.allclose(y, want, rtol=2 ** -7, atol=1e-3 * want.abs().max().item())


@pytest.mark.parametrize("variant", ["f64", "nan_code", "code_range", "scale_overflow", "float_code_zero",
                                     "wd_overflow"])
def test_forms_it_cannot_take_stay_on_reference(variant: str) -> None:
    N, K = 8, 64
    wd, zero = ("f8e4m3", None) if variant in ("nan_code", "scale_overflow", "float_code_zero", "wd_overflow") else \
        ("u4", "f32" if variant == "code_range" else "int")
    w, s, z = consts(wd, N, K, 32, zero)
    xd = "f64" if variant == "f64" else "f32"
    if variant == "nan_code":
        w[1, 1] = float("nan")
    elif variant == "code_range":
        w[0, 0] = 16                          # not a u4 code (float zero points: not W4's either)
    elif variant == "scale_overflow":
        s[0, 0] = 3e38                        # times the E4M3 rebias 2^8: inf
    elif variant == "float_code_zero":
        z = torch.zeros(N, 2)
    elif variant == "wd_overflow":
        # the rebiased scale is finite, but code * scale is not: the reference's Wd is inf,
        # which the forms that scale after the dot would not reproduce
        w[0, 0] = 448.0
        s[0, 0] = 1e36
    g = _graph(w, wd, s, z, 32, None, xd, K, N)
    assert not wq_supported(g.nodes[0])
    assert [k.kind for k in partition(g, tgen.CAPS).kernels] == ["reference"]


def test_config() -> None:
    # up to four rows the CUDA-core GEMV when a group holds whole words (4 bytes / 8 nibbles)
    assert wq_config(1, 4096, 4096, 128)["GEMV"] == 1 and wq_config(4, 4096, 4096, 0)["BM"] == 4
    assert wq_config(1, 4096, 4096, 20)["GEMV"] == 1 and "GEMV" not in wq_config(1, 4096, 4096, 20, cpw=8)
    assert wq_config(1, 8192, 8192, 128)["SPLIT"] == 8 and wq_config(1, 8192, 8192, 128)["BN"] == 32
    assert "GEMV" not in wq_config(5, 4096, 4096, 128)
    # the GEMM's BK never straddles a group: the largest power-of-two divisor of the group, from 16
    assert wq_config(16, 4096, 4096, 32)["BK"] == 32 and wq_config(16, 4096, 4096, 96)["BK"] == 32
    assert wq_config(16, 4096, 4096, 0)["BK"] == 128 and wq_config(16, 4096, 4096, 20)["BK"] == 128
    # few tiles: split K to fill the GPU; many: none
    assert wq_config(16, 4096, 4096, 128)["SPLIT"] > 1
    assert wq_config(255, 16384, 4096, 128, dense_min=1 << 62)["SPLIT"] == 1
    # from 129 rows the dense path (dequantise, then cuBLAS), never on the interpreter
    assert wq_config(129, 4096, 4096, 128) == {"DENSE": 1} == wq_config(4096, 8192, 8192, 0, cpw=8)
    assert "DENSE" not in wq_config(128, 4096, 4096, 128) and "DENSE" not in wq_config(512, 64, 64, 0, interpret=True)
    assert wq_config(1, 4096, 4096, 128, interpret=True)["SPLIT"] == 1


@pytest.mark.parametrize("swap", [0, 1])
@pytest.mark.parametrize("wd,group,zero", [("u8", 32, "int"), ("f8e5m2", 0, None), ("f4e2m1", 64, None)])
def test_gemm_weights_as_either_dot_operand(swap: int, wd: str, group: int, zero: str | None) -> None:
    """The 16-bit GEMM with the weights as A (SWAP, transposed accumulator) or as B."""
    N, K, M = 40, 130, 20
    w, s, z = consts(wd, N, K, group, zero, seed=11)
    x = torch.randn(M, K, generator=torch.Generator().manual_seed(3)).to(torch.float16).to(DEVICE)
    b = torch.randn(N, generator=torch.Generator().manual_seed(4)).to(torch.float16)
    y = wq_linear(x, w, wd, s, z, group, b, config=dict(BM=16, BN=32, BK=32, SPLIT=2, SWAP=swap, num_warps=4))
    check(y, x, reference(w, s, z, dt.get(wd), group), b, "f16")


def test_config_overrides_and_small_shapes() -> None:
    # float zero points never get the GEMV's tiles; BN follows a small N
    assert "GEMV" not in wq_config(1, 4096, 4096, 128, gemv=False)
    assert wq_config(1, 4096, 4096, 128, gemv=False)["BM"] == 16
    assert wq_config(1, 5, 4096, 128)["BN"] == 8 and wq_config(20, 5, 4096, 128)["BN"] == 16
    w, s, z = consts("u8", 8, 64, 32, "int")
    p = pack_wq(w, s, z, dt.get("u8"), 32)
    spec = WQSpec((0, -1, 2), "f32", w, s, z, 32, "u8")
    with pytest.raises(ValueError, match="BK must be a power of two, got 48"):
        make_launch(None, spec, p, 3, 8, 64, True, dict(BM=16, BN=16, BK=48))
