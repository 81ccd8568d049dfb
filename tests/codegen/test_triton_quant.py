"""Triton: norm + quantise as ONE kernel emitting int8 codes (OutlierTune's producer epilogue),
against the reference ops; under TRITON_INTERPRET=1 on CPU (SF_TRITON_TEST_DEVICE=cuda: GPU)."""
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
from scalefold.ir import Graph  # noqa: E402
from scalefold.runtime import interp  # noqa: E402


def norm_quant_graph(norm: str, bits: int, zero: bool, residual: bool, scalar: bool) -> Graph:
    g = Graph("nq")
    x = g.add_input("f32[B,37]", "x")
    h = g.add("add", [x, g.add_input("f32[B,37]", "r")]) if residual else x
    gen = torch.Generator().manual_seed(bits + 7 * zero)
    w = g.add_const(torch.rand(37, generator=gen) + 0.5)
    if norm == "layer_norm":
        y = g.add("layer_norm", [h, w, g.add_const(torch.randn(37, generator=gen))])
    else:
        y = g.add("rms_norm", [h, w])
    scale = torch.tensor(0.05) if scalar else torch.rand(37, generator=gen) * 0.05 + 0.01
    ins = [y, g.add_const(scale)]
    if zero:
        zp = torch.tensor(3, dtype=torch.int8) if scalar else torch.randint(-5, 5, (37,), generator=gen,
                                                                             dtype=torch.int8)
        ins.append(g.add_const(zp))
    g.set_outputs([g.add("quantize", ins, {"dtype": "i8", "bits": 0 if bits == 8 else bits})])
    return g


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("bits,zero,residual,scalar", [(8, False, False, False), (6, False, True, False),
                                                       (8, True, True, True), (8, True, False, False)])
def test_norm_quantize_is_one_kernel_and_matches(norm: str, bits: int, zero: bool, residual: bool,
                                                 scalar: bool) -> None:
    g = norm_quant_graph(norm, bits, zero, residual, scalar)
    kinds = [(k.kind, k.ops) for k in partition(g, tgen.CAPS).kernels]
    assert kinds == [("fused", (["add"] if residual else []) + [norm, "quantize"])]
    cm = api.build_triton(g, DEVICE)
    lo = -(1 << (bits - 1))
    for b in (1, 3, 17):
        gen = torch.Generator().manual_seed(b)
        xs = [torch.randn(b, 37, generator=gen) * 2 for _ in g.inputs]
        got = cm(*[x.to(DEVICE) for x in xs]).cpu()
        want = interp.run(g, *xs)[0]
        assert got.dtype == torch.int8
        assert int(got.min()) >= lo and int(got.max()) <= -lo - 1
        # The norm sums in another order than torch: a code may move by one step, rarely.
        diff = (got.long() - want.long()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.02, diff.max()
