"""The group-wise 4-bit ``qlinear`` template (codegen/c_w4.py, runtime/w4pack.py) against the
reference op.

Shapes are odd on purpose: K not a multiple of the group (a last short group) nor of 8 (padded
slots), a group not a multiple of 8, N not a multiple of the 32-channel panel; M is symbolic
(x: [B, S, K]) and swept over 1, 3, 16, 17, 64 with one build, which crosses the weight-only
kernel's GEMV (<= 4 rows) / decoded-group GEMM switch and every row-tile size. Weight-only:
f32 sums in another order than the reference's f64 ones, so the bound is 1e-5 of
|x| @ |Wd|^T. Int8 activations: the codes are the reference's, the group sums exact int32, so
only the float folding of the group sums differs (same bound, relative to the output scale).
f4e2m1 codes (no zero point) take the same kernels through a 16-entry table and are held to
the same bounds.
"""
from __future__ import annotations

import pytest
import torch

from scalefold import api
from scalefold.codegen import c as cgen
from amx import amx_expected, amx_used
from scalefold.codegen.c_w4 import W4Config, render_w4
from scalefold.codegen.schedule import partition
from scalefold.ir import dtypes as dt
from scalefold.ir.graph import Graph
from scalefold.ir.ops.quant import dequant_weight
from scalefold.runtime import interp
from scalefold.runtime.cache import build, load_kernel
from scalefold.runtime.executor import Executor
from scalefold.runtime.w4pack import (FP4_LUT_F32, FP4_LUT_U8, group_slots, group_stride, pack_w4,
                                      unpack, unpack_scales)

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

from w4_cases import check, codes, w4graph  # noqa: E402


SHAPES = [(67, 33, 32), (300, 50, 128), (260, 100, 20), (13, 17, 128)]


@pytest.mark.parametrize("K,N,group", SHAPES)
@pytest.mark.parametrize("act", ["none", "per_token"])
def test_asym_u4_against_reference(K: int, N: int, group: int, act: str) -> None:
    g = w4graph(K, N, group, act=act, bias=(K != 300), seed=K + N)
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    assert "sf_fd1" in next(iter(cm.sources.values())) or act != "none"
    check(g, cm)


@pytest.mark.parametrize("act", ["none", "per_token"])
def test_sym_i4_and_int3(act: str) -> None:
    g = w4graph(300, 50, 64, act=act, sym=True, bias=False, seed=7)
    check(g, api.build_c(g))
    g3 = w4graph(136, 40, 32, act=act, bits=3, seed=3)
    check(g3, api.build_c(g3))


def test_int8_path_nan_row_and_codes() -> None:
    """A NaN in a row makes that row NaN (as the reference), the others stay finite."""
    g = w4graph(67, 33, 32, act="per_token", seed=5)
    cm = api.build_c(g)
    x = torch.randn(1, 5, 67)
    x[0, 2, 10] = float("nan")
    got, want = cm(x), interp.run(g, x)[0]
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.allclose(got[0, [0, 1, 3, 4]], want[0, [0, 1, 3, 4]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K,group,sym", [(67, 32, False), (300, 128, True), (260, 20, False)])
def test_pack_unpack_bit_exact(K: int, group: int, sym: bool) -> None:
    w, s, z = codes(45, K, group, sym=sym, seed=K)
    wdt = dt.i4 if sym else dt.u4
    p = pack_w4(w, s, z, wdt, group, 32)
    assert p.w.dtype == torch.uint8 and p.w.shape == (2, p.w.shape[1], 32, 4)
    back = unpack(p, wdt)
    assert back.dtype == w.dtype and torch.equal(back, w)
    sc, sz = unpack_scales(p)
    assert torch.equal(sc, s)
    # dequantising the packed nibbles reproduces the op's dequantisation bit for bit
    ze = (z.to(torch.int32) if z is not None else torch.zeros_like(s, dtype=torch.int32))
    ze = ze + (8 if sym else 0)
    u = back.to(torch.int32) + (8 if sym else 0)
    r = (u - ze.repeat_interleave(group, 1)[:, :K]).to(torch.float32)
    mine = r * sc.repeat_interleave(group, 1)[:, :K]
    assert torch.equal(mine, dequant_weight(w, s, z, group, False))
    assert torch.equal(sz, (s.double() * ze.double()).float())


@pytest.mark.parametrize("K,group,fz", [(67, 32, False), (300, 128, False), (67, 32, True)])
def test_interleaved_blob_layout(K: int, group: int, fz: bool) -> None:
    """The kernels' blob: per panel and group, the group's code bytes, its scales, then its
    zero points (ze bytes padded to 64, or sz floats for non-integer zero points)."""
    w, s, z = codes(45, K, group, sym=False, seed=K + 1)
    if fz:
        z = z.float() + 0.25
    p = pack_w4(w, s, z, dt.u4, group, 32)
    assert p.zbytes == (not fz)
    zlen = 128 if fz else 64
    G, gp, glp, _ = group_slots(K, group)
    gs = group_stride(K, group, 32, p.zbytes)
    assert p.tensors() == [p.blob] and p.blob.dtype == torch.uint8
    assert p.blob.shape == (p.panels, (G - 1) * gs + glp // 8 * 128 + 128 + zlen)
    for pi in range(p.panels):
        for gi in range(G):
            nbk = (glp if gi == G - 1 else gp) // 8
            o = gi * gs
            assert gs == gp // 8 * 128 + 128 + zlen
            blk = p.blob[pi, o:o + nbk * 128]
            assert torch.equal(blk, p.w[pi, gi * gp // 8:gi * gp // 8 + nbk].reshape(-1))
            o += nbk * 128
            sc = p.blob[pi, o:o + 128].clone().view(torch.float32)
            assert torch.equal(sc, p.scale[pi, gi])
            zb = p.blob[pi, o + 128:o + 128 + zlen].clone()
            if fz:
                assert torch.equal(zb.view(torch.float32), p.sz[pi, gi])
            else:   # the kernel's s * ze in float32 is the packed sz bit for bit
                assert not zb[32:].any()
                assert torch.equal(sc * zb[:32].float(), p.sz[pi, gi])


def test_pass_output_routes_to_template() -> None:
    """quant_weights' int4 g128 form of an nn.Linear runs on this template and matches."""
    from scalefold.frontend.torch import from_torch
    from scalefold.passes.quant_weights import quant_weights
    torch.manual_seed(0)
    lin = torch.nn.Linear(200, 40)
    g = from_torch(lin, (torch.randn(3, 200),))
    g = quant_weights(g, [(torch.randn(3, 200),)], format="int4", group=128, method="rtn")
    qs = [n for n in g.nodes if n.op == "qlinear"]
    assert len(qs) == 1 and qs[0].attrs["group"] == 128
    sched = partition(g, cgen.CAPS)
    assert [k.kind for k in sched.kernels if k.nodes[0].op == "qlinear"] == ["template"]
    cm = api.build_c(g)
    x = torch.randn(3, 200)
    got, want = cm(x), interp.run(g, x)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = lin(x)
    assert float((got - ref).norm() / ref.norm()) < 0.2     # int4 g128 quantisation error


def _build_with(g: Graph, cfg: W4Config):
    sched = partition(g, cgen.CAPS)
    k = sched.kernels[0]
    ck = render_w4(k, cfg)
    ex = Executor(g, sched, {k.name: load_kernel(build(ck.source))}, {k.name: ck.params},
                  args={k.name: ck.args})
    return ck, (lambda x: ex.run([x])[0])


@pytest.mark.parametrize("act", ["none", "per_token"])
def test_scalar_fallback(act: str) -> None:
    g = w4graph(260, 100, 20, act=act, seed=11)
    ck, fn = _build_with(g, W4Config(vec=False))
    assert "#define SF_NO_VEC 1" in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


@pytest.mark.parametrize("act", ["none", "per_token"])
def test_other_blockings_without_prefetch(act: str) -> None:
    """Non-default tiles (3 x 16-channel int8 panels, 6-row tiles) with prefetch off."""
    g = w4graph(260, 100, 20, act=act, sym=act == "none", seed=13)
    ck, fn = _build_with(g, W4Config(pf_bytes=0, nb=1, nb_vnni=3, mr_vnni=6, mr_direct=2))
    assert "_mm_prefetch" not in ck.source and "sf_tile_s" in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


@pytest.mark.parametrize("act,perm", [("none", True), ("none", False), ("per_token", True)])
def test_parallel_panel_runs(act: str, perm: bool) -> None:
    """Big enough to run on the OpenMP threads even at M = 1 (so M <= split_rows takes one
    contiguous run of panels per thread, larger M single-panel tasks); weight-only nibbles by
    table lookup (perm) and by mask + convert."""
    g = w4graph(1000, 2100, 128, act=act, seed=29)
    ck, fn = _build_with(g, W4Config(perm=perm))
    assert ("_mm512_permutexvar_ps" in ck.source) == (perm and act == "none")
    assert "M <= 16 ? (T + nth - 1) / nth" in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


@pytest.mark.parametrize("act", ["none", "per_token"])
def test_float_zero_points(act: str) -> None:
    """Non-integer f32 zero points keep the sz floats in the blob (no ze bytes)."""
    K, N, group = 260, 100, 20
    w, s, z = codes(N, K, group, sym=False, seed=31)
    g = Graph("w4f")
    x = g.add_input(f"f32[B,S,{K}]", "x")
    y = g.add("qlinear", [x, g.add_const(w, "u4", "w"), g.add_const(s, "f32", "s"),
                          g.add_const(z.float() + 0.5, "f32", "z"), None], {"act": act, "group": group})
    g.set_outputs([y])
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    assert "_mm512_loadu_ps((const float *)(z)" in next(iter(cm.sources.values()))
    check(g, cm)


def test_source_deterministic_and_gated() -> None:
    g = w4graph(67, 33, 32)
    k = partition(g, cgen.CAPS).kernels[0]
    a, b = render_w4(k), render_w4(k)
    assert a.source == b.source and "sf_fb" in a.source and "_mm_prefetch" in a.source
    # forms outside the template stay on the reference: 16-bit codes, f16 x
    for xd, wd, w in (("f32", "i16", torch.zeros(8, 64, dtype=torch.int16)),
                      ("f16", "u4", torch.zeros(8, 64, dtype=torch.uint8))):
        go = Graph("other")
        x = go.add_input(f"{xd}[B,64]", "x")
        y = go.add("qlinear", [x, go.add_const(w, wd, "w"), go.add_const(torch.ones(8, 2), "f32", "s")],
                   {"group": 32})
        go.set_outputs([y])
        assert partition(go, cgen.CAPS).kernels[0].kind != "template"


# ---- f4e2m1 weights ------------------------------------------------------------------------
@pytest.mark.parametrize("K,N,group", [(67, 33, 32), (300, 50, 128)])
@pytest.mark.parametrize("act", ["none", "per_token"])
def test_fp4_against_reference(K: int, N: int, group: int, act: str) -> None:
    """E2M1 codes through the table: short last group, N off the panel, M = 1..64."""
    g = w4graph(K, N, group, act=act, bias=K != 300, seed=K + 2 * N, fp4=True)
    assert cgen.CAPS.template_ok(g.nodes[0])
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    src = next(iter(cm.sources.values()))
    assert ("_mm512_permutexvar_ps" if act == "none" else "_mm512_shuffle_epi8") in src
    check(g, cm)


@pytest.mark.parametrize("act", ["none", "per_token"])
def test_fp4_scalar_fallback(act: str) -> None:
    g = w4graph(260, 100, 20, act=act, seed=17, fp4=True)
    ck, fn = _build_with(g, W4Config(vec=False))
    assert "#define SF_NO_VEC 1" in ck.source and "sf_lut[16]" in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


def test_fp4_decoded_u8_blocking() -> None:
    """The optional decoded-u8 int8 route (vnni_buf) and 16-channel panels, prefetch off."""
    g = w4graph(136, 40, 32, act="per_token", seed=19, fp4=True)
    ck, fn = _build_with(g, W4Config(vnni_buf=True, nb=1, nb_vnni=1, pf_bytes=0))
    assert "sf_decode8" in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


@pytest.mark.parametrize("isint", [False, True])
def test_fp4_pack_unpack_bit_exact(isint: bool) -> None:
    K, group = 67, 32
    w, s, _ = codes(45, K, group, sym=False, seed=23, fp4=True)
    p = pack_w4(w, s, None, dt.f4e2m1, group, 32, isint)
    back = unpack(p, dt.f4e2m1)
    assert back.dtype == torch.uint8 and torch.equal(back, w)
    sc, sz = unpack_scales(p)
    # the kernels' table value times the packed scale is the op's dequantised weight, bit for bit
    lut = torch.tensor(FP4_LUT_U8 if isint else FP4_LUT_F32, dtype=torch.float32)
    off = 12 if isint else 0
    rep = (lambda t: t.repeat_interleave(group, 1)[:, :K])
    mine = (lut[back.long()] - off) * rep(sc)
    assert torch.equal(mine, dequant_weight(w, s, None, group, True))
    assert torch.equal(sc, s / 2 if isint else s)
    assert torch.equal(sz, (sc.double() * off).float())
    assert torch.equal(lut[:8] - off, torch.tensor(dt.FP4_E2M1_GRID) * (2 if isint else 1))
    with pytest.raises(ValueError):
        pack_w4(w, s, torch.zeros_like(s, dtype=torch.uint8), dt.f4e2m1, group)


@pytest.mark.parametrize("act", ["none", "int8"])
def test_fp4_pass_output_routes_to_template(act: str) -> None:
    """quant_weights' fp4_e2m1 g128 form (power-of-two scales) runs on the template."""
    from scalefold.frontend.torch import from_torch
    from scalefold.passes.quant_weights import quant_weights
    torch.manual_seed(1)
    lin = torch.nn.Linear(200, 40)
    g = from_torch(lin, (torch.randn(3, 200),))
    g = quant_weights(g, None, format="fp4_e2m1", group=128, method="rtn", act=act)
    q = [n for n in g.nodes if n.op == "qlinear"]
    assert len(q) == 1 and q[0].attrs["wtype"] == "f4e2m1" and q[0].inputs[1].dtype is dt.f4e2m1
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels if k.nodes[0].op == "qlinear"] == ["template"]
    x = torch.randn(3, 200)
    got, want = cm(x), interp.run(g, x)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- 8-bit codes (runtime/w8pack.py, codegen/c_w8_src.py) ------------------------------------
def codes8(N: int, K: int, group: int, wdt: str, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Random 8-bit codes of ``wdt`` with scales [N, G] (group 0: [N]) and zero points (u8 and
    i8 get integer ones, u8 asymmetric as quant_weights makes them) or None (float8). Float8
    codes cover every finite bit pattern, subnormals and negative zero included."""
    gen = torch.Generator().manual_seed(seed)
    G = -(-K // group) if group > 0 else 1
    if wdt in ("f8e4m3", "f8e5m2"):
        bits = torch.randint(0, 256, (N, K), generator=gen, dtype=torch.int32).to(torch.uint8)
        w = bits.view(dt.get(wdt).container)
        w = torch.where(torch.isfinite(w.float()), w.float(), 1.0).to(dt.get(wdt).container)
        z = None
    elif wdt == "i8":
        w = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8)
        z = torch.randint(-128, 128, (N, G), generator=gen, dtype=torch.int8)
    else:
        w = torch.randint(0, 256, (N, K), generator=gen, dtype=torch.int32).to(torch.uint8)
        z = torch.randint(0, 256, (N, G), generator=gen, dtype=torch.int32).to(torch.uint8)
    s = torch.rand(N, G, generator=gen) * 0.002 + 1e-4
    if group <= 0:
        s, z = s[:, 0], (z[:, 0] if z is not None else None)
    return w, s, z


def w8graph(K: int, N: int, group: int, wdt: str, *, act: str = "none", bias: bool = True,
            zero: bool = True, seed: int = 0) -> Graph:
    w, s, z = codes8(N, K, group, wdt, seed)
    g = Graph("w8")
    x = g.add_input(f"f32[B,S,{K}]", "x")
    zv = g.add_const(z, wdt, "z") if z is not None and zero else None
    b = g.add_const(torch.randn(N, generator=torch.Generator().manual_seed(seed + 1)), "f32",
                    "b") if bias else None
    attrs = {"act": act, "group": min(group, K) if group > 0 else 0}
    if wdt.startswith("f8"):
        attrs["wtype"] = wdt
    y = g.add("qlinear", [x, g.add_const(w, wdt, "w"), g.add_const(s, "f32", "s"), zv, b], attrs)
    g.set_outputs([y])
    return g


W8_CASES = [(67, 33, 32, "u8"), (300, 50, 128, "i8"), (260, 100, 20, "u8"), (13, 17, 0, "i8"),
            (300, 40, 0, "u8"), (67, 33, 32, "f8e4m3"), (260, 100, 0, "f8e4m3"),
            (300, 50, 128, "f8e5m2")]


@pytest.mark.parametrize("K,N,group,wdt,act", [c + (a,) for c in W8_CASES for a in ("none", "per_token")
                                                if a == "none" or not c[3].startswith("f8")])
def test_w8_against_reference(K: int, N: int, group: int, wdt: str, act: str) -> None:
    """u8 / i8 (zero points, per group or per channel) and float8 codes (weight-only: they have
    no int8-activation kernel, see the gate test) on the template: short last group, N off the
    panel, M = 1..64 (GEMV tiles, decoded-group GEMM, VNNI)."""
    g = w8graph(K, N, group, wdt, act=act, bias=K != 300, seed=K + N)
    assert cgen.CAPS.template_ok(g.nodes[0])
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    src = next(iter(cm.sources.values()))
    assert ("vpdpbusd" if act != "none" else "sf_fd1") in src
    assert ("rebias" in src) == wdt.startswith("f8")
    check(g, cm)


def test_w8_symmetric_i8_without_zero_point() -> None:
    g = w8graph(300, 50, 64, "i8", zero=False, seed=3)
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    check(g, cm)


@pytest.mark.parametrize("wdt,act", [("u8", "none"), ("i8", "per_token"), ("f8e4m3", "none"),
                                     ("f8e5m2", "none")])
def test_w8_scalar_fallback_and_blockings(wdt: str, act: str) -> None:
    g = w8graph(260, 100, 20, wdt, act=act, seed=11)
    ck, fn = _build_with(g, W4Config(vec=False))
    assert "#define SF_NO_VEC 1" in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())
    ck, fn = _build_with(g, W4Config(pf_bytes=0, nb=1, nb_vnni=3, mr_vnni=6, mr_direct=2))
    assert "_mm_prefetch" not in ck.source
    check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


@pytest.mark.parametrize("wdt", ["u8", "i8", "f8e4m3", "f8e5m2"])
def test_w8_parallel_panel_runs(wdt: str) -> None:
    """Big enough for the OpenMP threads at M = 1."""
    g = w8graph(1000, 2100, 128, wdt, seed=29)
    check(g, api.build_c(g))


@pytest.mark.parametrize("K,group,wdt", [(67, 32, "u8"), (300, 128, "i8"), (13, 0, "i8"),
                                         (67, 32, "f8e4m3"), (260, 20, "f8e5m2")])
def test_w8_pack_unpack_bit_exact(K: int, group: int, wdt: str) -> None:
    """Codes come back bit for bit, and the kernels' byte value (u - ze for integers, the
    float8 bits moved into float32 and rebiased) times the scale is the op's dequantised
    weight, bit for bit."""
    from scalefold.runtime.w8pack import FP8_BITS, pack_w8, unpack8
    w, s, z = codes8(45, K, group, wdt, seed=K)
    d = dt.get(wdt)
    G = -(-K // group) if group > 0 else 1
    s2, z2 = s.reshape(45, G), (z.reshape(45, G) if z is not None else None)
    p = pack_w8(w, s2, z2, d, group, 32)
    assert p.bits == 8 and p.w.shape == (2, p.w.shape[1], 2, 32, 4)
    back = unpack8(p, d)
    assert back.dtype == w.dtype and torch.equal(back.view(torch.uint8) if d.is_float else back,
                                                 w.view(torch.uint8) if d.is_float else w)
    sc, sz = unpack_scales(p)
    assert torch.equal(sc, s2)
    g = group if group > 0 else K
    rep = (lambda t: t.repeat_interleave(g, 1)[:, :K])
    if d.is_float:
        mask, sh, bias = FP8_BITS[wdt]
        v = back.view(torch.uint8).to(torch.int64)
        f = (((v & mask) << sh) | ((v & 128) << 24)).to(torch.int32).view(torch.float32)
        mine = f * 2.0 ** (127 - bias) * rep(sc)
    else:
        off = 128 if wdt == "i8" else 0
        ze = z2.to(torch.int32) + off
        mine = ((back.to(torch.int32) + off) - rep(ze)).to(torch.float32) * rep(sc)
        assert torch.equal(sz, (s2.double() * ze.double()).float())
    assert torch.equal(mine, dequant_weight(w, s, z, group, False))


def test_w8_gates() -> None:
    """NaN float8 codes, float8 with int8 activations and float8 with a zero point stay on the
    reference; the group-0 int8 forms of the W8A8 GEMM (c_qgemm.py) still go there."""
    g = w8graph(64, 16, 32, "f8e4m3", seed=1)
    assert cgen.CAPS.template_ok(g.nodes[0])
    w = g.nodes[0].inputs[1].const.clone()
    w[3, 5] = float("nan")
    gn = Graph("w8n")
    x = gn.add_input("f32[B,64]", "x")
    y = gn.add("qlinear", [x, gn.add_const(w, "f8e4m3", "w"), g.add_const(torch.ones(16, 2), "f32", "s")],
               {"group": 32, "wtype": "f8e4m3"})
    gn.set_outputs([y])
    assert partition(gn, cgen.CAPS).kernels[0].kind != "template"
    ga = w8graph(64, 16, 32, "f8e4m3", act="per_token", seed=1)
    assert not cgen.CAPS.template_ok(ga.nodes[0])
    gq = w8graph(64, 16, 0, "i8", act="per_token", zero=False, seed=1)
    cm = api.build_c(gq)
    assert "vpdpbusd" in next(iter(cm.sources.values())) and "sf_qd1" not in next(iter(cm.sources.values()))
    check(gq, cm)


@pytest.mark.parametrize("fmt", ["int8", "int8,sym=true", "fp8_e4m3", "int8,act=int8", "int4,group=0",
                                 "int8,group=0"])
def test_w8_pass_output_routes_to_template(fmt: str) -> None:
    """quant_weights' 8-bit and per-channel forms of an nn.Linear run on the template."""
    from scalefold.frontend.torch import from_torch
    from scalefold.passes.pipeline import run_pipeline
    torch.manual_seed(2)
    lin = torch.nn.Linear(200, 40)
    g = run_pipeline(from_torch(lin, (torch.randn(3, 200),)), [f"quant_weights(format={fmt})"])
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels if k.nodes[0].op == "qlinear"] == ["template"]
    x = torch.randn(3, 200)
    got, want = cm(x), interp.run(g, x)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K,group,wdt,act", [(1000, 0, "u4", "none"), (1000, 0, "u4", "per_token"),
                                             (700, 512, "i8", "none"), (700, 512, "i8", "per_token"),
                                             (1000, 0, "f8e4m3", "none")])
def test_long_groups_run_in_chunks(K: int, group: int, wdt: str, act: str) -> None:
    """Groups longer than twice ``chunk_slots`` (per-channel weights above all) run in chunks
    sharing the group's scale and zero point, with a short last chunk and a short last group;
    the default chunking and a 64-slot one agree with the reference (float8 codes weight-only:
    they have no int8-activation kernel)."""
    if wdt == "u4":
        w, s, z = codes(40, K, K, sym=False, seed=K)
        g = Graph("w4c")
        x = g.add_input(f"f32[B,S,{K}]", "x")
        y = g.add("qlinear", [x, g.add_const(w, "u4", "w"), g.add_const(s[:, 0], "f32", "s"),
                              g.add_const(z[:, 0], "u4", "z"), None], {"act": act, "group": 0})
        g.set_outputs([y])
    else:
        g = w8graph(K, 40, group, wdt, act=act, seed=K)
    for cfg in (W4Config(), W4Config(chunk_slots=64)):
        ck, fn = _build_with(g, cfg)
        # weight-only chunks; the int8-activation route runs whole groups
        gp = -(-min(group or K, K) // 8) * 8
        step = cfg.chunk_slots // 8 if act == "none" else gp // 8
        assert f"ci * {step} < nbg" in ck.source
        check(g, type("CM", (), {"__call__": lambda self, x: fn(x)})())


@pytest.mark.parametrize("form", ["u4", "i4", "u4_float_zero", "u8", "i8_g0", "fp4", "f8e4m3"])
def test_nonfinite_rows_match_reference(form: str) -> None:
    """Weight-only rows holding inf, -inf and inf (NaN), NaN, or finite values whose float32 sum
    overflows: the zero-point fold would give inf - inf = NaN everywhere, so those rows are
    recomputed in the reference's order (c_w4_exact.py): same NaN / inf pattern and signs,
    finite values as close as the other rows; ordinary rows are untouched."""
    K, N = 300, 70
    if form in ("u4", "i4", "fp4"):
        g = w4graph(K, N, 128, sym=form == "i4", fp4=form == "fp4", seed=41)
    elif form == "u4_float_zero":
        w, s, z = codes(N, K, 128, sym=False, seed=43)
        g = Graph("w4fz")
        x = g.add_input(f"f32[B,S,{K}]", "x")
        y = g.add("qlinear", [x, g.add_const(w, "u4", "w"), g.add_const(s, "f32", "s"),
                              g.add_const(z.float() + 0.5, "f32", "z"), None], {"group": 128})
        g.set_outputs([y])
    else:
        g = w8graph(K, N, 0 if form == "i8_g0" else 128, form.split("_")[0], seed=47)
    cm = api.build_c(g)
    assert [k.kind for k in cm.schedule.kernels] == ["template"]
    assert "sf_row_exact(x + m *" in next(iter(cm.sources.values()))
    x = torch.randn(1, 6, K, generator=torch.Generator().manual_seed(5))
    x[0, 1, 7] = float("inf")
    x[0, 2, 9], x[0, 2, 200] = -float("inf"), float("inf")
    x[0, 3, 11] = float("nan")
    x[0, 4, :20] = 3e38                        # finite, but its float32 sum overflows
    x[0, 5, 3] = -float("inf")
    got, want = cm(x), interp.run(g, x)[0]
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf]) and bool(inf[0, 1].any()) and bool(inf[0, 5].any())
    fin = torch.isfinite(want)
    assert torch.allclose(got[fin].double(), want[fin].double(), rtol=1e-5,
                          atol=1e-5 * float(want[fin].abs().max()))
    assert bool(torch.isfinite(want[0, 4]).any()) and bool(torch.isfinite(want[0, 0]).all())


@pytest.mark.parametrize("wdt", ["u4", "i8"])
def test_int8_activations_of_a_row_too_small_to_scale(wdt: str) -> None:
    """A row whose max |x| / 127 underflows to 0 in float32 (the kernel's scale arithmetic)
    takes scale 1: codes 0 and the bias as output, which is what the reference's float64
    scale gives too (bias + about 1e-44)."""
    g = w4graph(67, 33, 32, act="per_token", seed=9) if wdt == "u4" else \
        w8graph(67, 33, 32, "i8", act="per_token", seed=9)
    cm = api.build_c(g)
    x = torch.randn(1, 3, 67)
    x[0, 1] = torch.full((67,), 1e-44)          # subnormal: 1e-44 / 127 rounds to 0
    got, want = cm(x), interp.run(g, x)[0]
    assert bool(torch.isfinite(want).all()) and torch.equal(got[0, 1], want[0, 1])
    assert torch.equal(want[0, 1], g.nodes[0].inputs[4].const.to(torch.float32))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rows_whose_partial_sums_could_overflow() -> None:
    """One finite x of 1e38 with codes of 15: sum(x) is finite, but x * 15 is not, so the row
    takes the exact path (the reference's dequantised weight 0.15 keeps it finite)."""
    N, K = 4, 16
    g = Graph("ovf")
    x = g.add_input(f"f32[M,{K}]", "x")
    w = torch.full((N, K), 15, dtype=torch.uint8)
    w[1] = 3
    y = g.add("qlinear", [x, g.add_const(w, "u4", "w"), g.add_const(torch.full((N,), 0.01), "f32", "s"),
                          g.add_const(torch.tensor([0, 3, 0, 0], dtype=torch.uint8), "u4", "z"), None],
              {"group": 0})
    g.set_outputs([y])
    cm = api.build_c(g)
    xv = torch.ones(2, K)
    xv[0, 0] = 1e38
    got, want = cm(xv), interp.run(g, xv)[0]
    assert bool(torch.isfinite(got).all()) and torch.allclose(got, want, rtol=1e-6)


def test_fp8_subnormal_codes_under_flush_to_zero() -> None:
    """torch.set_flush_denormal(True) sets FTZ / DAZ on the calling thread; the float8 decode
    goes through float32 subnormals, so the kernel runs with both off (they are restored)."""
    for wdt in ("f8e4m3", "f8e5m2"):
        codes = torch.tensor([[3, 1, 130, 60]], dtype=torch.uint8).view(dt.get(wdt).container)
        g = Graph("ftz")
        x = g.add_input("f32[M,4]", "x")
        y = g.add("qlinear", [x, g.add_const(codes, wdt, "w"), g.add_const(torch.ones(1), "f32", "s")],
                  {"group": 0, "wtype": wdt})
        g.set_outputs([y])
        cm = api.build_c(g)
        assert "SF_CSR_SAVE" in next(iter(cm.sources.values()))
        xv = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
        want = interp.run(g, xv)[0]
        try:
            assert torch.set_flush_denormal(True)
            got = cm(xv)
            assert torch.tensor(1e-40) * 1 == 0          # the flag is on for this thread
        finally:
            torch.set_flush_denormal(False)
        assert torch.equal(got, want), (wdt, got, want)


def test_gates_out_of_range_codes_and_nonfinite_zero_points() -> None:
    """Codes outside their dtype's range (which the packers cannot hold) and non-finite float
    zero points (inf - inf in the reference) stay on the reference; bad blockings are refused."""
    for wd, bad in (("u4", 16), ("i4", 9), ("f4e2m1", 17)):
        g = w4graph(64, 16, 32, fp4=wd == "f4e2m1", sym=wd == "i4", seed=1)
        n = g.nodes[0]
        w = n.inputs[1].const.clone()
        w[0, 0] = bad
        n.inputs[1].const = w
        assert not cgen.CAPS.template_ok(n)
    g = w4graph(64, 16, 32, seed=1)
    z = g.add_const(torch.full((16, 2), float("inf")), "f32", "zf")
    g.set_input(g.nodes[0], 3, z)
    assert not cgen.CAPS.template_ok(g.nodes[0])
    for bad_cfg in (dict(chunk_slots=12), dict(chunk_slots=4), dict(nb=0), dict(mr_direct=0), dict(pf_bytes=-1)):
        with pytest.raises(ValueError, match="W4Config"):
            W4Config(**bad_cfg)


@pytest.mark.parametrize("wdt", ["u4", "u8"])
def test_int8_activation_fold_is_exact_for_codes_at_the_zero_point(wdt: str) -> None:
    """Int8 activations: the group sums are integers and the zero point is subtracted in int32
    (SF_ZINT) before the scale, so a channel whose codes all equal its zero point gives exactly
    0, as the reference does (the float fold s * dot - s * ze * sum left ~1e-5), on the
    vector and the portable tiles alike."""
    K, N = 1000, 20
    gen = torch.Generator().manual_seed(3)
    hi = 16 if wdt == "u4" else 256
    w = torch.randint(0, hi, (N, K), generator=gen, dtype=torch.int32).to(torch.uint8)
    z = torch.randint(0, hi, (N, 8), generator=gen, dtype=torch.int32).to(torch.uint8)
    w[3] = z[3].repeat_interleave(128)[:K]                # every code at its group's zero point
    g = Graph("zint")
    x = g.add_input(f"f32[M,{K}]", "x")
    y = g.add("qlinear", [x, g.add_const(w, wdt, "w"), g.add_const(torch.rand(N, 8, generator=gen) + 0.5, "f32", "s"),
                          g.add_const(z, wdt, "z"), None], {"group": 128, "act": "per_token"})
    g.set_outputs([y])
    xv = torch.randn(3, K, generator=gen) * 100
    want = interp.run(g, xv)[0]
    assert bool((want[:, 3] == 0).all())
    for cfg in (W4Config(), W4Config(vec=False)):
        ck, fn = _build_with(g, cfg)
        assert "#define SF_ZINT 1" in ck.source
        got = fn(xv)
        assert bool((got[:, 3] == 0).all()) and torch.allclose(got, want, rtol=1e-5, atol=1e-3)


def test_int8_activation_groups_too_long_for_int32_sums_stay_on_the_reference() -> None:
    """The int8-activation tiles sum weight bytes times activation codes over a whole group in
    int32 (vpdpbusd wraps): per-channel u8 codes over K = 70000 overflowed (c gave -24311 where
    the reference gives -11.6); such groups stay on the reference, shorter ones keep the tiles."""
    gen = torch.Generator().manual_seed(3)

    def one(K: int, wdt: str, act: str = "per_token") -> Graph:
        g = Graph("long")
        x = g.add_input(f"f32[B,{K}]", "x")
        hi = 255 if wdt == "u8" else 15
        w = torch.randint(0, hi + 1, (2, K), generator=gen, dtype=torch.uint8).to(torch.int32)
        y = g.add("qlinear", [x, g.add_const(w, wdt, "w"), g.add_const(torch.full((2,), 1e-3), "f32", "s"),
                              g.add_const(torch.full((2,), hi // 2), wdt, "z")], {"act": act, "group": 0})
        g.set_outputs([y])
        return g

    from scalefold.codegen.c_w4 import w4_supported
    assert w4_supported(one(65793, "u8").nodes[0])                    # 128 * 255 * 65793 < 2^31
    assert not w4_supported(one(65794, "u8").nodes[0])
    assert not cgen.CAPS.template_ok(one(65794, "u8").nodes[0])
    assert w4_supported(one(65794, "u8", act="none").nodes[0])
    assert w4_supported(one(1118481, "u4").nodes[0])                  # 128 * 15 * 1118481 < 2^31
    assert not w4_supported(one(1118482, "u4").nodes[0])
    g = one(70000, "u8")
    x = torch.ones(2, 70000)
    x[1] = torch.rand(70000, generator=gen)
    got, want = api.build_c(g)(x), interp.run(g, x)[0]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3), (got, want)


def test_int8_activations_with_huge_weights_stay_finite() -> None:
    """Codes times weights near 1e35 overflowed float32 before the activation scale brought
    them down (c gave inf / NaN where the reference's float64 sums are finite): such nodes
    leave the int8-activation tiles, and the fallback multiplies in float64."""
    from scalefold.ir import parse
    from scalefold.passes.quant_weights import quant_weights
    g = parse("""graph @g(%x: f32[B,200]) -> (f32[B,8]) {
  %0: f32[B,8] = linear(%x, #w)
  return %0
}
#w = const f32[8,200] randn(seed=0, std=1e36)
""")
    q = quant_weights(g, None, format="int4", group=64, method="rtn", act="int8")
    assert not cgen.CAPS.template_ok(q.nodes[0])
    x = torch.randn(2, 200, generator=torch.Generator().manual_seed(1)) * 0.01
    got, want = api.build_c(q)(x), interp.run(q, x)[0]
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=1e-5), (got, want)


def test_layers_of_one_shape_share_a_source_and_keep_their_own_bounds() -> None:
    """Two weight-only linears of one shape compile to one source (a model's many layers
    compile once per shape); each still guards its rows with its own growth bound: layer B's
    zero points cancel its codes, and with its scale of 1e37 the fold's partial sums would be
    inf - inf, so its rows must take the exact path, which layer A's small bound would skip."""
    N, K = 8, 32
    g = Graph("two")
    x = g.add_input(f"f32[M,{K}]", "x")
    wa, sa, za = codes(N, K, 16, sym=False)
    ya = g.add("qlinear", [x, g.add_const(wa, "u4", "wa"), g.add_const(sa, "f32", "sa"),
                           g.add_const(za, "u4", "za"), None], {"group": 16})
    wb = torch.full((N, K), 15, dtype=torch.uint8)
    yb = g.add("qlinear", [x, g.add_const(wb, "u4", "wb"), g.add_const(torch.full((N, 2), 1e37), "f32", "sb"),
                           g.add_const(torch.full((N, 2), 15, dtype=torch.uint8), "u4", "zb"), None], {"group": 16})
    g.set_outputs([ya, yb])
    cm = api.build_c(g)
    srcs = [src for src in cm.sources.values() if "growth" in src]
    assert len(srcs) == 2 and srcs[0] == srcs[1]
    xv = torch.full((3, K), 4.0)
    (ga, gb), (wa_, wb_) = cm(xv), interp.run(g, xv)
    assert torch.equal(gb, torch.zeros(3, N)) and torch.equal(wb_, gb)
    assert torch.allclose(ga, wa_, rtol=1e-5, atol=1e-5)


# ---- AMX tiles (codegen/c_w4_amx.py) ----------------------------------------------------------


AMX_CASES = [("u4", 256, 100, 128), ("i4", 512, 300, 64), ("f4e2m1", 384, 64, 128),
             ("u8", 256, 80, 128), ("i8", 192, 70, 0)]


@pytest.mark.parametrize("wdt,K,N,group", AMX_CASES)
@pytest.mark.parametrize("mc", [64, 32])
def test_amx_tiles_match_the_vnni_tiles_bit_for_bit(wdt: str, K: int, N: int, group: int, mc: int) -> None:
    """Int8-activation chunks of 16 rows and more run on AMX where the CPU has it; their int32
    group sums are exact and go through the VNNI tiles' fold, so the outputs are the same bits
    at every M (whole tiles, tiles plus VNNI rows, several chunks). Elsewhere both builds run
    the VNNI tiles, and the check against the reference still holds."""
    g = (w8graph(K, N, group, wdt, act="per_token", seed=K) if wdt in ("u8", "i8") else
         w4graph(K, N, group, act="per_token", sym=wdt == "i4", fp4=wdt == "f4e2m1", seed=K))
    ck_amx, amx = _build_with(g, W4Config(mc=mc))
    ck_vnni, vnni = _build_with(g, W4Config(mc=mc, amx=False))
    assert "sf_qa_panel" in ck_amx.source and "sf_qa_panel" not in ck_vnni.source
    for M in (1, 15, 16, 17, 37, 64, 100):
        x = torch.randn(1, M, K, generator=torch.Generator().manual_seed(M)) * 2
        x[0, M // 2] = 0                                  # a row of zeros: scale 1, all codes 0
        a, v = amx(x), vnni(x)
        assert torch.equal(a, v), f"M={M}: max diff {(a - v).abs().max()}"
    check(g, type("CM", (), {"__call__": lambda self, x: amx(x)})())


def test_amx_tiles_run_where_the_cpu_has_them() -> None:
    """On a CPU with AMX-INT8 (and a compiler targeting it), a call of 16 rows or more takes
    the AMX tiles, and one of fewer rows does not; elsewhere neither does."""
    g = w4graph(256, 100, 128, act="per_token", seed=7)
    ck, run = _build_with(g, W4Config())
    used = amx_used(ck.source)
    run(torch.randn(1, 15, 256))
    assert used.value == 0
    run(torch.randn(1, 16, 256))
    assert used.value == int(amx_expected())


def test_amx_nan_rows_and_gates() -> None:
    """A NaN row inside an AMX tile stays NaN and leaves its neighbours alone; the AMX tiles
    are rendered only for the int8-activation route with four 16-channel columns, groups of
    whole 64-slot steps and row chunks of whole 16-row tiles."""
    g = w4graph(256, 100, 128, act="per_token", seed=5)
    _, amx = _build_with(g, W4Config())
    _, vnni = _build_with(g, W4Config(amx=False))
    x = torch.randn(1, 32, 256)
    x[0, 3, 7] = float("nan")
    a = amx(x)
    assert bool(a[0, 3].isnan().all()) and not bool(a[0, torch.arange(32) != 3].isnan().any())
    assert torch.equal(a.nan_to_num(), vnni(x).nan_to_num())
    for gg, cfg in ((g, W4Config(nb_vnni=3)), (g, W4Config(mc=40)), (g, W4Config(vnni_buf=True)),
                    (w4graph(260, 100, 20, act="per_token"), W4Config()),
                    (w4graph(256, 100, 128), W4Config())):
        assert "sf_qa_panel" not in _build_with(gg, cfg)[0].source
