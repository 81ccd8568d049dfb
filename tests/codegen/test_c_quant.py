"""``quantize`` in fused C kernels (codegen/c_quant.py): alone (bit-exact against the reference:
round half to even, NaN -> zero point, saturation, Int6 ranges) and as the epilogue of norm row
kernels, where ``[add ->] layer_norm -> quantize`` and ``rms_norm -> quantize`` must be ONE
kernel emitting the codes (OutlierTune's norm + quantise kernel)."""
from __future__ import annotations


import pytest
import torch

from scalefold import api
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import partition
from scalefold.ir.graph import Graph, Value
from scalefold.runtime import interp

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

K = 96


# (label, dtype, bits, per-channel scale?, zero point?)
VARIANTS = [("i8_tensor", "i8", 0, False, False), ("i8_axis_zp", "i8", 0, True, True),
            ("int6_axis", "i8", 6, True, False), ("u8_tensor_zp", "u8", 0, False, True),
            ("u4_axis_zp", "u8", 4, True, True), ("i16_axis_zp", "i16", 0, True, True),
            ("i32_tensor", "i32", 0, False, False)]


def _scale(g: Graph, per_channel: bool, gen: torch.Generator) -> Value:
    if per_channel:
        s = torch.rand(K, generator=gen) * 0.05 + 0.01
        s[:8] = 0.25            # exact ties x = (k + 0.5) * 0.25 land in these channels
        return g.add_const(s, "f32", "s")
    return g.add_const(torch.tensor(0.25), "f32", "s")


def _zp(g: Graph, dname: str, bits: int, per_channel: bool, gen: torch.Generator) -> Value:
    hi = {"i8": 20, "u8": 200 if bits == 0 else 9, "i16": 300}.get(dname, 0)
    lo = -hi if dname in ("i8", "i16") else 3
    shape = (K,) if per_channel else ()
    return g.add_const(torch.randint(lo, hi + 1, shape, generator=gen), dname, "zp")


def _x(shape: tuple[int, ...], dname: str, seed: int) -> torch.Tensor:
    """Values over every code range, exact ties, NaN and +-inf."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.logspace(-2, 3.5, shape[-1])
    flat = x.view(-1, shape[-1])
    flat[0, :8] = (torch.arange(-4, 4) + 0.5) * 0.25
    flat[-1, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    return x.to({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                 "f64": torch.float64}[dname])


@pytest.mark.parametrize("xd", ["f32", "f16", "bf16", "f64"])
def test_quantize_alone_is_exact(xd: str) -> None:
    gen = torch.Generator().manual_seed(1)
    g = Graph(f"quant_{xd}")
    x = g.add_input(f"{xd}[B,S,{K}]", "x")
    outs = []
    for label, dname, bits, per_ch, has_zp in VARIANTS:
        ins = [x, _scale(g, per_ch, gen)] + ([_zp(g, dname, bits, per_ch, gen)] if has_zp else [])
        outs.append(g.add("quantize", ins, {"dtype": dname, "bits": bits, "axis": -1}))
    g.set_outputs(outs)
    sched = partition(g, cgen.CAPS)
    assert sched.by_kind() == {"fused": len(VARIANTS)}, str(sched)
    cm = api.build_c(g)
    for B, S in ((1, 1), (3, 17)):
        xs = _x((B, S, K), xd, seed=B * S)
        got, want = cm(xs), interp.run(g, xs)
        for (label, *_), a, e in zip(VARIANTS, got, want):
            assert a.dtype == e.dtype and torch.equal(a, e), \
                f"{label} {xd} B={B} S={S}: {(a.long() - e.long()).abs().max()} off"


def _norm_chain(kind: str) -> Graph:
    """[B,S,K] -> (add ->) norm -> quantize (per-channel Int6, or per-tensor i8 with a zero
    point for rms_norm)."""
    gen = torch.Generator().manual_seed(2)
    g = Graph(kind)
    x = g.add_input(f"f32[B,S,{K}]", "x")
    h = x
    if kind == "add_ln":
        h = g.add("add", [x, g.add_input(f"f32[B,S,{K}]", "r")])
    gamma = g.add_const(torch.rand(K, generator=gen) + 0.5, "f32", "gamma")
    if kind == "rms":
        n = g.add("rms_norm", [h, gamma])
        q = g.add("quantize", [n, g.add_const(torch.tensor(0.02), "f32", "s"),
                               g.add_const(torch.tensor(-3), "i8", "zp")], {"dtype": "i8"})
    else:
        n = g.add("layer_norm", [h, gamma, g.add_const(torch.randn(K, generator=gen), "f32", "beta")])
        s = torch.rand(K, generator=gen) * 0.05 + 0.02
        q = g.add("quantize", [n, g.add_const(s, "f32", "s")], {"dtype": "i8", "bits": 6})
    g.set_outputs([q])
    return g


@pytest.mark.parametrize("kind", ["ln", "rms", "add_ln"])
def test_norm_quantize_is_one_kernel(kind: str) -> None:
    g = _norm_chain(kind)
    sched = partition(g, cgen.CAPS)
    assert len(sched.kernels) == 1, str(sched)
    (k,) = sched.kernels
    assert k.kind == "fused" and k.row is not None and k.row.op in ("layer_norm", "rms_norm")
    assert k.ops[-1] == "quantize" and [o.dtype.name for o in k.outputs] == ["i8"]
    cm = api.build_c(g)
    lo, hi = (-32, 31) if kind != "rms" else (-128, 127)
    for B, S in ((1, 1), (2, 50)):
        gen = torch.Generator().manual_seed(B + S)
        xs = [torch.randn(B, S, K, generator=gen) * 3 + 1 for _ in g.inputs]
        got, want = cm(*xs), interp.run(g, *xs)[0]
        assert got.dtype == torch.int8 and int(got.min()) >= lo and int(got.max()) <= hi
        # The norm's float sums run in another order than torch's: a code may sit on the other
        # side of a rounding boundary, never further.
        diff = (got.long() - want.long()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01, kind
        assert int(got.long().abs().sum()) > 0


def test_outliertune_chain_norm_codes_feed_int8_gemm() -> None:
    """add -> layer_norm -> quantize (Int6) -> qlinear: one norm kernel, one GEMM template."""
    gen = torch.Generator().manual_seed(5)
    g = _norm_chain("add_ln")
    codes = g.outputs[0]
    N = 33
    w = g.add_const(torch.randint(-127, 128, (N, K), generator=gen), "i8", "w")
    y = g.add("qlinear", [codes, w, g.add_const(torch.rand(N, generator=gen) * 0.01, "f32", "ws"),
                          None, g.add_const(torch.randn(N, generator=gen), "f32", "b")])
    g.set_outputs([y, codes])
    sched = partition(g, cgen.CAPS)
    assert [k.kind for k in sched.kernels] == ["fused", "template"], str(sched)
    cm = api.build_c(g)
    xs = [torch.randn(3, 7, K, generator=gen) for _ in g.inputs]
    (y_c, q_c), (y_r, q_r) = cm(*xs), interp.run(g, *xs)
    # Given the same codes the GEMM is exact to f32 rounding: check it on the C codes.
    y_from_c_codes = interp.run(_gemm_only(g, y.producer), q_c)[0]
    assert torch.allclose(y_c, y_from_c_codes, rtol=1e-6, atol=1e-6 * float(y_c.abs().max()))
    assert (q_c.long() - q_r.long()).abs().max() <= 1
    assert torch.allclose(y_c, y_r, rtol=0, atol=0.05 * float(y_r.abs().max()))


def _gemm_only(g: Graph, node) -> Graph:
    h = Graph("gemm")
    x = h.add_input(f"i8[B,S,{K}]", "codes")
    h.set_outputs([h.add("qlinear", [x] + list(node.inputs[1:]), dict(node.attrs))])
    return h


@pytest.mark.parametrize("variant", ["blocked", "axis0", "f8"])
def test_other_quantize_forms_stay_on_reference(variant: str) -> None:
    g = Graph("r")
    x = g.add_input("f32[4,8]", "x")
    if variant == "blocked":
        q = g.add("quantize", [x, g.add_const(torch.rand(4, 2) + 0.1, "f32", "s")], {"block": 4})
    elif variant == "axis0":
        q = g.add("quantize", [x, g.add_const(torch.rand(4) + 0.1, "f32", "s")], {"axis": 0})
    else:
        q = g.add("quantize", [x, g.add_const(torch.tensor(0.1), "f32", "s")], {"dtype": "f8e4m3"})
    g.set_outputs([q])
    assert [k.kind for k in partition(g, cgen.CAPS).kernels] == ["reference"]
    xs = torch.randn(4, 8) * 3
    got = api.build_c(g)(xs)
    want = interp.run(g, xs)[0]
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_coverage_names_the_partial_forms() -> None:
    cov = cgen.op_coverage()
    assert cov["quantize"].startswith("c (partly") and cov["qlinear"].startswith("template (partly")
