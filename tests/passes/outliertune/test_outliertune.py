"""outliertune / w8a8 beyond the golden cases: the shift alone is exact in float, the
per-sample mid-range, the recalibrated scales (every channel reaches ±qmax on its
calibration data, never more), Int6, overrides, asymmetric weights, dead channels, the
W8A8 baselines, Stats-based calibration and the ONNX export of a quantised block."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden_cases import load_case, random_inputs  # noqa: E402

from scalefold.codegen.onnx import to_onnx  # noqa: E402
from scalefold.ir.errors import CalibrationError  # noqa: E402
from scalefold.ir.graph import Graph  # noqa: E402
from scalefold.ir.parser import parse  # noqa: E402
from scalefold.passes import PassManager, calibrate  # noqa: E402
from scalefold.passes.quant_common import (RangeStats, calibrate_ranges, observe_ranges,  # noqa: E402
                                           parse_overrides, quantize_weight)
from scalefold.passes.rewrite import collect_near_misses  # noqa: E402
from scalefold.runtime.interp import Interpreter, run  # noqa: E402

HERE = Path(__file__).resolve().parent
CASES = ("pre_ln", "post_ln", "rms_norm")


def _case(name: str) -> tuple[Graph, list[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    g = parse(load_case(HERE / f"{name}.ir").text)
    calib = [tuple(random_inputs(g, 1000 + i)) for i in range(8)]
    return g, calib, random_inputs(g, 0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


@pytest.mark.parametrize("name,rule", [("pre_ln", "fold_shift_ln"), ("post_ln", "shift_in_quantize"),
                                       ("rms_norm", "shift_in_quantize")])
def test_shift_alone_is_exact_in_float(name: str, rule: str) -> None:
    g, calib, xs = _case(name)
    pm = PassManager("outliertune(quantize=False)", calibration=calib)
    r = pm.run(g)
    assert pm.counters.get("outliertune", rule) == 1
    assert "quantize" not in _ops(r) and "qlinear" not in _ops(r)
    if rule == "fold_shift_ln":
        assert "sub" not in _ops(r)
        ln0, ln1 = g.nodes[0], r.nodes[0]
        assert ln1.inputs[1] is not None and not torch.equal(ln0.inputs[2].const, ln1.inputs[2].const)
    else:
        assert _ops(r).count("sub") == 1
    # The shift is large (the outlier channel sits ~3 off centre), yet the function is unchanged.
    z_norm = float(max(n.inputs[1].const.abs().max() for n in r.nodes if n.op == "sub")) \
        if rule != "fold_shift_ln" else 1.0
    assert z_norm > 0.5
    for b in calib[:2] + [tuple(xs)]:
        assert _rel(run(r, *b)[0], run(g, *b)[0]) < 1e-5


def test_shift_is_the_mean_of_per_sample_midranges() -> None:
    g = Graph("id")
    x = g.add_input("f32[3,4,5]", "x")
    w = g.add_const(torch.randn(2, 5))
    g.set_outputs([g.add("linear", [x, w, None])])
    batches = [torch.randn(3, 4, 5) * torch.tensor([1.0, 2, 3, 4, 5]) + 2 for _ in range(3)]
    rs = observe_ranges(g, [(b,) for b in batches], [x])[id(x)]
    per = torch.cat(batches).double()                       # 9 samples (sequences) of 4 tokens
    want = ((per.amax(1) + per.amin(1)) / 2).mean(0)
    assert rs.samples == 9
    torch.testing.assert_close(rs.shift(), want)
    allrows = per.reshape(-1, 5)
    torch.testing.assert_close(rs.absmax_after(want), (allrows - want).abs().amax(0))
    # Not the overall mid-range: per-sample averaging is what the paper specifies.
    assert not torch.allclose(want, (allrows.amax(0) + allrows.amin(0)) / 2)
    # Rank-2 activations: the whole batch is one sample.
    rs2 = RangeStats.empty(5)
    rs2.update(batches[0].reshape(12, 5))
    assert rs2.samples == 1


def _codes(g: Graph, batches) -> dict[int, torch.Tensor]:
    """Every quantize node's codes over ``batches`` (keyed by node order)."""
    qs = [n for n in g.nodes if n.op == "quantize"]
    seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(qs))}
    interp = Interpreter(g)

    def hook(node, outs):
        for i, q in enumerate(qs):
            if node is q:
                seen[i].append(outs[0].reshape(-1, outs[0].shape[-1]))
    for b in batches:
        interp.run(b, hook=hook)
    return {i: torch.cat(v) for i, v in seen.items()}


@pytest.mark.parametrize("bits", [8, 6])
@pytest.mark.parametrize("name", CASES)
def test_scales_fit_the_shifted_calibration_range(name: str, bits: int) -> None:
    g, calib, xs = _case(name)
    r = PassManager(f"outliertune(bits={bits})", calibration=calib).run(g)
    qmax = (1 << (bits - 1)) - 1
    (codes,) = _codes(r, calib).values()
    # m_j = max|h - z| over the calibration rows: each channel reaches ±qmax exactly, never more.
    assert torch.equal(codes.abs().amax(0), torch.full((codes.shape[1],), qmax, dtype=torch.int8))
    q = next(n for n in r.nodes if n.op == "quantize")
    assert q.attrs["bits"] == (bits if bits < 8 else 0)
    for n in r.nodes:
        if n.op == "qlinear":
            assert int(n.inputs[1].const.abs().max()) == qmax     # weights at the same width
    err = _rel(run(r, *xs)[0], run(g, *xs)[0])
    assert err < (3e-2 if bits == 8 else 1.5e-1), err


def test_int6_is_worse_than_int8_but_bounded() -> None:
    g, calib, xs = _case("post_ln")
    want = run(g, *xs)[0]
    e8 = _rel(run(PassManager("outliertune(bits=8)", calibration=calib).run(g), *xs)[0], want)
    e6 = _rel(run(PassManager("outliertune(bits=6)", calibration=calib).run(g), *xs)[0], want)
    assert e8 < e6 < 0.1


def test_overrides_keep_float_and_change_bits() -> None:
    g, calib, xs = _case("pre_ln")
    for spec in ({"w2": "float", 0: 6}, "w2=float,0=6"):
        pm = PassManager([f"outliertune(overrides={spec!r})"], calibration=calib)
        r = pm.run(g)
        c = pm.counters["outliertune"]
        assert c["kept_float"] == 1 and c["static_per_channel"] == 1 and c["fold_shift_ln"] == 1
        assert _ops(r).count("linear") == 1 and _ops(r).count("qlinear") == 2
        q = [n for n in r.nodes if n.op == "quantize"]
        assert len(q) == 1 and q[0].attrs["bits"] == 6                # w1 (index 0) at 6 bits
        # The float reader of the folded LN output is compensated (b = W z): still exact.
        lin = next(n for n in r.nodes if n.op == "linear")
        ln = r.nodes[0]
        sub = Graph("check")
        xin = sub.add_input("f32[2,6,8]", "x")
        hn = sub.add("layer_norm", [xin, ln.inputs[1], ln.inputs[2]], dict(ln.attrs))
        sub.set_outputs([sub.add("linear", [hn, lin.inputs[1], lin.inputs[2]])])
        ref = Graph("ref")
        xr = ref.add_input("f32[2,6,8]", "x")
        ln0, w2 = g.nodes[0], g.nodes[2]
        hr = ref.add("layer_norm", [xr, ln0.inputs[1], ln0.inputs[2]], dict(ln0.attrs))
        ref.set_outputs([ref.add("linear", [hr, w2.inputs[1], None])])
        assert _rel(run(sub, xs[0])[0], run(ref, xs[0])[0]) < 1e-5
    # Post-LN: a float reader keeps reading the unshifted norm output with its own bias.
    g, calib, xs = _case("post_ln")
    r = PassManager("outliertune(overrides={'w1': 'float'})", calibration=calib).run(g)
    assert "sub" not in _ops(r) and "quantize" not in _ops(r)
    lin = next(n for n in r.nodes if n.op == "linear")
    assert lin.inputs[0].producer.op == "layer_norm"
    assert torch.equal(lin.inputs[2].const, g.nodes[1].inputs[2].const)
    # Regular-expression keys: "re:^w[12]$" picks both static readers of the pre-LN block.
    g, calib, _ = _case("pre_ln")
    pm = PassManager("outliertune(overrides={'re:^w[12]$': 'float'})", calibration=calib)
    pm.run(g)
    assert pm.counters.get("outliertune", "kept_float") == 2
    assert pm.counters.get("outliertune", "static_per_channel") == 0
    with pytest.raises(ValueError):
        parse_overrides({"w1": "int3"})
    with pytest.raises(ValueError):
        parse_overrides("nonsense")


def test_quantize_weight_error_bounds() -> None:
    w = torch.randn(6, 40, dtype=torch.float64) * torch.linspace(0.1, 3, 6)[:, None]
    w[2] = 0.0
    w[3] = w[3].abs() + 0.5                                  # all positive: asymmetric helps
    for bits in (8, 6):
        c, d, z = quantize_weight(w, bits, sym=True)
        assert z is None and c.dtype == torch.int8 and int(c.abs().max()) <= (1 << (bits - 1)) - 1
        deq = c.double() * d.double()[:, None]
        assert bool(((deq - w).abs() <= d.double()[:, None] / 2 + 1e-12).all())
        ca, da, za = quantize_weight(w, bits, sym=False)
        deqa = (ca.double() - za.double()[:, None]) * da.double()[:, None]
        assert bool(((deqa - w).abs() <= da.double()[:, None] / 2 + 1e-12).all())
        assert float(da[3]) < float(d[3])                   # the positive row uses the full range
        assert bool((deq[2] == 0).all()) and bool((deqa[2] == 0).all())


def test_asymmetric_weights() -> None:
    g, calib, xs = _case("post_ln")
    r = PassManager("outliertune(weight='per_channel_asym')", calibration=calib).run(g)
    ql = [n for n in r.nodes if n.op == "qlinear"]
    assert ql and all(len(n.inputs) > 3 and n.inputs[3] is not None and n.inputs[3].dtype.name == "i8"
                      for n in ql)
    assert _rel(run(r, *xs)[0], run(g, *xs)[0]) < 3e-2


def test_dead_channel_gets_a_floor_scale() -> None:
    g, calib, xs = _case("pre_ln")
    text = load_case(HERE / "pre_ln.ir").text.replace("[1.0, 0.5, 8.0", "[1.0, 0.0, 8.0")
    g = parse(text)
    r = PassManager("outliertune", calibration=calib).run(g)
    s = next(n for n in r.nodes if n.op == "quantize").inputs[1].const
    assert bool((s > 0).all()) and bool(torch.isfinite(s).all())
    out = run(r, *xs)[0]
    assert bool(torch.isfinite(out).all()) and _rel(out, run(g, *xs)[0]) < 3e-2


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
def test_w8a8_baselines(act: str) -> None:
    g, _, xs = _case("post_ln")
    pm = PassManager(f"w8a8(act={act})")
    r = pm.run(g)
    assert pm.counters["w8a8"] == {act: 2}
    ql = [n for n in r.nodes if n.op == "qlinear"]
    assert len(ql) == 2 and all(n.attrs["act"] == act and n.inputs[0].dtype.name == "f32" for n in ql)
    assert _rel(run(r, *xs)[0], run(g, *xs)[0]) < 3e-2
    pm = PassManager("w8a8(overrides={'w2': 'float'})")
    pm.run(g)
    assert pm.counters["w8a8"] == {"per_token": 1, "kept_float": 1}


@pytest.mark.parametrize("spec", ["outliertune(bits=8), outliertune(bits=6)", "w8a8, w8a8(bits=6)"])
def test_a_repeated_pass_warns_that_it_changes_nothing(spec: str) -> None:
    """The first pass quantises every linear; the second has none left, and says so rather
    than dropping its bits silently."""
    g, calib, _ = _case("post_ln")
    with pytest.warns(UserWarning, match="no float linear with constant weights left to quantise"):
        r = PassManager(spec, calibration=calib).run(g)
    assert [n.attrs["abits"] for n in r.nodes if n.op == "qlinear"] == [8, 8]


def test_symmetrised_dynamic_mode() -> None:
    g, calib, xs = _case("pre_ln")
    pm = PassManager("outliertune(act='per_token')", calibration=calib)
    r = pm.run(g)
    assert pm.counters["outliertune"]["fold_shift_ln"] == 1
    assert pm.counters["outliertune"]["dynamic_per_token"] == 3 and "quantize" not in _ops(r)
    assert _rel(run(r, *xs)[0], run(g, *xs)[0]) < 3e-2


def test_stats_calibration_uses_the_overall_midrange() -> None:
    g, calib, xs = _case("post_ln")
    h = g.nodes[0].outputs[0]
    st = calibrate(g, calib, values=[h], progress=False)
    r = PassManager("outliertune(quantize=False)", calibration=st).run(g)
    z = next(n for n in r.nodes if n.op == "sub").inputs[1].const.double()
    cs = st.by_name["%0"]          # the LayerNorm output (stats are keyed by printed names)
    torch.testing.assert_close(z, ((cs.max + cs.min) / 2).float().double())
    assert _rel(run(r, *xs)[0], run(g, *xs)[0]) < 1e-5


def test_option_and_calibration_errors() -> None:
    g, calib, _ = _case("pre_ln")
    for bad in ("outliertune(bits=9)", "outliertune(weight='per_group')", "outliertune(act='x')",
                "w8a8(act='per_channel')"):
        with pytest.raises(ValueError):
            PassManager(bad, calibration=calib).run(g)
    with pytest.raises(CalibrationError, match="empty calibration"):
        PassManager("outliertune", calibration=[]).run(g)


def test_near_miss_explains_post_ln() -> None:
    g, calib, _ = _case("post_ln")
    with collect_near_misses() as misses:
        PassManager("outliertune", calibration=calib).run(g)
    reasons = {(m.rule, m.reason.split(":")[0]) for m in misses}
    assert reasons == {("fold_shift_ln", "post_ln_residual"), ("static_per_channel", "not_norm_fed")}


def ort_session(model: bytes | str) -> ort.InferenceSession:
    """onnxruntime on one thread; its optimiser must not turn DequantizeLinear + MatMul into
    MatMulNBits with int8 activations (codegen/onnx_quant.py explains), or the dynamic
    baselines would run a different quantiser than the IR's."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("spec", ["outliertune(bits=8)", "outliertune(bits=6, weight='per_channel_asym')",
                                  "w8a8(act='per_tensor')"])
def test_onnx_export_matches_onnxruntime(name: str, spec: str) -> None:
    g, calib, xs = _case(name)
    r = PassManager(spec, calibration=calib).run(g)
    sess = ort_session(to_onnx(r).SerializeToString())
    got = torch.from_numpy(np.asarray(sess.run(None, {"x": xs[0].numpy()})[0]))
    want = run(r, *xs)[0]
    # Same codes and integer products; only the float epilogue's rounding order differs (and a
    # dynamic-quantisation tie could flip one code): far below one output quantisation step.
    assert _rel(got, want) < 1e-4


def test_range_calibration_is_measured_once_and_reused() -> None:
    g, calib, xs = _case("post_ln")
    ranges = calibrate_ranges(g, calib)
    for bits in (8, 6):
        a = PassManager(f"outliertune(bits={bits})", calibration=calib).run(g)
        b = PassManager(f"outliertune(bits={bits})", calibration=ranges).run(g)
        assert str(a) == str(b)
    other = parse(load_case(HERE / "pre_ln.ir").text)
    with pytest.raises(CalibrationError, match="stale"):
        PassManager("outliertune", calibration=ranges).run(other)


def test_symbolic_batch_dims() -> None:
    text = load_case(HERE / "post_ln.ir").text.replace("[2,6,", "[B,S,")
    g = parse(text)
    calib = [tuple(random_inputs(g, 1000 + i, {"B": 2, "S": 5 + i})) for i in range(4)]
    r = PassManager("outliertune", calibration=calib).run(g)
    assert "quantize" in _ops(r)
    xs = random_inputs(g, 0, {"B": 3, "S": 7})
    assert _rel(run(r, *xs)[0], run(g, *xs)[0]) < 3e-2


def test_ranges_count_only_real_tokens_of_an_attention_mask() -> None:
    """outliertune's ranges (min / max / per-sequence mid-ranges) skip padded positions, as
    every other calibrating pass does: padding of 50 set the scale before, and padding of NaN
    was refused as a non-finite activation."""
    import torch.nn as nn
    from torch.export import Dim

    import scalefold as sf

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.l = nn.LayerNorm(16), nn.Linear(16, 16)

        def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.l(self.ln(x)) * attention_mask[..., None].to(x.dtype)

    torch.manual_seed(0)
    m = M().eval()
    cal, nan_cal = [], []
    for i in range(3):
        x = torch.randn(2, 8, 16)
        am = torch.ones(2, 8, dtype=torch.long)
        am[:, 4 + i:] = 0
        x[:, 4 + i:] = 0
        x[:, 4 + i:, 0] = 50.0
        cal.append((x, am))
        xn = x.clone()
        xn[:, 4 + i:] = float("nan")
        nan_cal.append((xn, am))
    dims = ({0: Dim("B"), 1: Dim("S")}, {0: Dim("B"), 1: Dim("S")})
    g = sf.from_torch(m, cal[0], dynamic_shapes=dims)
    h = next(n for n in g.nodes if n.op == "layer_norm").outputs[0]
    with torch.no_grad():
        real = [m.ln(x)[am.bool()].double() for x, am in cal]
        per_seq = [m.ln(x)[b][am[b].bool()].double() for x, am in cal for b in range(2)]
    for c in (cal, nan_cal):
        rs = observe_ranges(g, c, [h])[id(h)]
        torch.testing.assert_close(rs.max, torch.cat(real).amax(0))
        torch.testing.assert_close(rs.min, torch.cat(real).amin(0))
        assert rs.samples == 6
        torch.testing.assert_close(rs.shift(), torch.stack([(t.amax(0) + t.amin(0)) / 2 for t in per_seq]).mean(0))
    a = sf.compile(g, passes=["outliertune"], calibration=cal, target="interp")
    b = sf.compile(g, passes=["outliertune"], calibration=nan_cal, target="interp")
    assert str(a.graph) == str(b.graph)
