"""LLM-FP4 pieces of quant_weights: the quantiser's grids and bias identity, codes that
reproduce the fake quantiser bit for bit, the format/clip search, and the per-channel
exponent-bias reparameterisation of FP activation quantisation."""
from __future__ import annotations

import math

import pytest
import torch

from scalefold.ir import dtypes as dt
from scalefold.ir.ops.quant import dequant_weight
from scalefold.ir.parser import parse
from scalefold.passes import PassManager
from scalefold.passes.wq_fp import (FP4_FORMATS, exponent_shift, fp4_codes, fp4_fake, fpq, layer_error,
                                    search_fp4)
from scalefold.runtime.interp import run

GRIDS = {"e2m1": [0, .5, 1, 1.5, 2, 3, 4, 6], "e3m0": [0, 1, 2, 4, 8, 16, 32, 64],
         "e1m2": [0, .25, .5, .75, 1, 1.25, 1.5, 1.75]}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_grids_at_bias_one(name: str) -> None:
    x = torch.linspace(-80, 80, 4001)
    vals = sorted(set(fpq(x, FP4_FORMATS[name], 1.0).abs().tolist()))
    assert vals == GRIDS[name]
    # maxval formula (2 - 2^-M) 2^(2^E - 1 - b)
    assert FP4_FORMATS[name].maxval(1.0) == GRIDS[name][-1]


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_bias_shift_identity(name: str, k: int) -> None:
    """FPQ_(rho+k)(x) = 2^-k FPQ_rho(2^k x), exactly, for a non-integer rho (one whose sums
    with small integers are exact in float32, so both sides see the same bias)."""
    x = torch.randn(5000, generator=torch.Generator().manual_seed(k)) * 3
    rho = 0.375
    f = FP4_FORMATS[name]
    assert torch.equal(fpq(x, f, rho + k), fpq(x * 2.0 ** k, f, rho) * 2.0 ** -k)


@pytest.mark.parametrize("name,dtype", [("e2m1", dt.f4e2m1), ("e1m2", dt.i4), ("e3m0", dt.i8)])
@pytest.mark.parametrize("group,k", [(16, 40), (0, 24), (128, 300)])
def test_codes_reproduce_fake_quant(name: str, dtype: dt.DType, group: int, k: int) -> None:
    w = torch.randn(9, k, generator=torch.Generator().manual_seed(k)) * 0.1
    w[2, 3] = 2.0
    clip = torch.rand(9, -(-k // group) if group else 1, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.3
    codes, cdt, scale = fp4_codes(w, FP4_FORMATS[name], group, clip)
    assert cdt is dtype
    fake, _ = fp4_fake(w, FP4_FORMATS[name], group, clip)
    g = min(group, k) if group else 0
    wd = dequant_weight(codes, scale if g else scale[:, 0], None, g, dtype is dt.f4e2m1)
    assert torch.equal(wd, fake)
    if dtype is dt.i4:
        assert int(codes.abs().max()) <= 7


def test_search_never_worse_than_plain_e2m1() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen) * torch.linspace(0.1, 4, 64)
    w = torch.randn(32, 64, generator=gen) * 0.05
    w[:, 7] *= 10
    gram = x.T @ x / 256
    fmt, clip, errs = search_fp4(w, gram, 32, tuple(FP4_FORMATS), points=40)
    plain = layer_error(w, fp4_fake(w, FP4_FORMATS["e2m1"], 32)[0], gram)
    best = layer_error(w, fp4_fake(w, fmt, 32, clip)[0], gram)
    assert best <= plain and best == min(errs.values())
    assert set(errs) == set(FP4_FORMATS)


def test_exponent_shift() -> None:
    amax = torch.tensor([6.0, 3.0, 1.4, 0.7, 0.01, 0.0])
    rho, k = exponent_shift(amax, FP4_FORMATS["e2m1"])
    b = FP4_FORMATS["e2m1"].bias_for(torch.tensor([6.0, 3.0, 1.4, 0.7, 0.01]))
    assert rho == pytest.approx(float(b.min())) and rho == pytest.approx(1.0)
    want = torch.clamp(torch.round(b) - round(rho), 0, 3)
    assert torch.equal(k[:5], want) and k.tolist()[:4] == [0, 1, 2, 3]
    assert int(k[4]) == 3          # clamped at 2^E - 1


PRE_LN = """graph @blk(%x: f32[B,32]) -> (f32[B,16]) {
  %0: f32[B,32] = layer_norm[axis=-1, eps=1e-5](%x, #g, #b)
  %1: f32[B,16] = linear(%0, #w, #c)
  return %1
}
#g = const f32[32] randn(seed=3, std=0.5)
#b = const f32[32] randn(seed=4, std=0.1)
#w = const f32[16,32] randn(seed=5, std=0.2)
#c = const f32[16] randn(seed=6, std=0.1)"""


@pytest.mark.parametrize("act_format", ["fp4_e2m1", "fp8_e4m3"])
def test_act_quant_with_reparam(act_format: str) -> None:
    g = parse(PRE_LN)
    # channels of very different ranges: the reparameterisation gives them their own bias
    g.nodes[0].inputs[1].const = torch.linspace(0.05, 4.0, 32)
    cal = [torch.randn(64, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    pm = PassManager(f"quant_weights(format=int8, group=0, act_format={act_format})", calibration=cal)
    q = pm.run(g)
    ops = [n.op for n in q.nodes]
    assert ops == ["layer_norm", "quantize", "dequantize", "qlinear"]
    c = pm.counters["quant_weights"]
    assert c[f"act_{act_format}"] == 1 and c.get("reparam_into_norm", 0) == 1
    assert sum(v for r, v in c.items() if r.startswith("reparam_") and r[8:].isdigit()) > 0
    # the folded LN weights are the old ones times powers of two
    ratio = q.nodes[0].inputs[1].const / g.nodes[0].inputs[1].const
    assert torch.equal(torch.exp2(torch.round(torch.log2(ratio))), ratio)
    x = torch.randn(50, 32, generator=torch.Generator().manual_seed(9))
    y, yq = run(g, x)[0], run(q, x)[0]
    rel = float((yq - y).norm() / y.norm())
    assert rel < (0.15 if act_format == "fp4_e2m1" else 0.05)
    # the same activation quantiser without the shift is worse for these spread channels
    if act_format == "fp4_e2m1":
        h = run(g.clone(), x)[0]
        ln = torch.nn.functional.layer_norm(x, (32,), g.nodes[0].inputs[1].const, g.nodes[0].inputs[2].const, 1e-5)
        s = float(ln.abs().max()) / 6.0
        xq = dt.fp4_e2m1_decode(dt.fp4_e2m1_encode(ln / s)) * s
        plain = torch.nn.functional.linear(xq, g.nodes[1].inputs[1].const, g.nodes[1].inputs[2].const)
        assert float((plain - h).norm() / h.norm()) > rel


def test_rtn_needs_no_calibration_but_search_does() -> None:
    from scalefold.ir.errors import ScalefoldError
    g = parse(PRE_LN)
    q = PassManager("quant_weights(format=fp4_e2m1, group=16)").run(g)
    assert [n.op for n in q.nodes] == ["layer_norm", "qlinear"]
    with pytest.raises(ScalefoldError, match="method=search needs calibration"):
        PassManager("quant_weights(format=fp4_e2m1, method=search)").run(g)
    with pytest.raises(ScalefoldError, match="unknown format 'int5'"):
        PassManager("quant_weights(format=int5)").run(g)
