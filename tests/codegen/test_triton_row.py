"""Triton backend, row kernels (softmax, norms, trailing-axis reductions) with their fused
prologues and epilogues, against the reference interpreter.

Row lengths and batches are symbolic (``x: dt[B,L]``), so one build covers the sweep, which
includes a row longer than ``ROW_MAX`` (the chunked loop) and, with B = 17, a row holding a NaN
that every row op must propagate to exactly that row. Runs under the Triton interpreter on the
CPU (``SF_TRITON_TEST_DEVICE=cuda``: on a GPU).
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
from scalefold.codegen.schedule import Kernel, Schedule, partition  # noqa: E402
from scalefold.ir import dtypes as dt  # noqa: E402
from scalefold.ir.graph import Graph, Value  # noqa: E402
from scalefold.ir.types import sym  # noqa: E402
from scalefold.runtime import interp, triton_exec  # noqa: E402


FLOATS = ["f32", "f16", "bf16"]
REDUCE = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod",
          "reduce_sum_square", "reduce_l2", "reduce_logsumexp"]
LONG = tgen.ROW_MAX + 301     # takes the chunked loop (ROW_CHUNK-sized chunks, a partial last one)
SWEEP = [(1, 1), (3, 7), (17, 33), (2, 1000), (1, LONG)]

pytestmark = [pytest.mark.usefixtures("kernel_cache_dir"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]   # numpy, in the interpreter


@pytest.fixture(autouse=True)
def _small_programs(monkeypatch: pytest.MonkeyPatch):
    """Few rows per program: grids of several programs, each of several rows, the last one
    partial (17 rows of 7 are 2 programs of 16 rows; of 33, 9 programs of 2)."""
    monkeypatch.setitem(triton_exec.BLOCKS, "interp", dict(triton_exec.BLOCKS["interp"], row=128))


def _inputs(g: Graph, B: int, L: int, seed: int) -> list[torch.Tensor]:
    """Rows with a positive mean, products near 1, a NaN in row 16 of the main inputs when
    B = 17."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in g.inputs:
        t = torch.randn(v.type.concrete({sym("B"): B, sym("L"): L}), generator=gen)
        if v.name in ("x", "x3", "xp"):
            t = torch.exp(0.05 * t) if v.name == "xp" else t + 3
            if B == 17:
                t[16].view(-1)[L // 2] = float("nan")
        out.append(t.to(v.dtype.container))
    return out


def kernel_of(sched: Schedule, v: Value) -> Kernel:
    return next(k for k in sched.kernels if any(o is v for o in k.outputs))


def _compare(g: Graph, labels: list[str], exact: set[str], dname: str, ref: Graph | None = None,
             sweep: list[tuple[int, int]] = SWEEP) -> None:
    cm = api.build_triton(g, DEVICE)
    ref = ref or g
    for B, L in sweep:
        xs = _inputs(g, B, L, seed=B * 1000 + L)
        got = cm(*[x.to(DEVICE) for x in xs])
        got = [t.cpu() for t in (got if isinstance(got, tuple) else [got])]
        want = interp.run(ref, *[x.to(v.dtype.container) for x, v in zip(xs, ref.inputs)])
        for name, a, e in zip(labels, got, want):
            e = e.to(a.dtype)
            what = f"{name} {dname} B={B} L={L}"
            if name in exact:
                assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN positions differ"
                assert torch.equal(a.nan_to_num(0), e.nan_to_num(0)), f"{what}: not exact"
            else:
                f32 = dname == "f32"
                # sums over long rows in another order: sqrt(L) roundings, and results that
                # cancel to near 0 (x - max - log(sum), norm * w + b) carry absolute errors of
                # a few ulps of the cancelled terms
                assert_close(a, e, what=what, rtol=5e-5 if f32 and L >= 100 else None,
                             atol=(5e-5 if L > 1000 else 1e-5) if f32 else None)
            if B == 17:
                assert bool(torch.isnan(a[16]).all() if a.dim() > 1 else torch.isnan(a[16])), \
                    f"{what}: the NaN row did not propagate"


def row_graph(dname: str) -> tuple[Graph, list[str]]:
    g = Graph(f"rows_{dname}")
    t = lambda s: f"{dname}[{s}]"  # noqa: E731
    x, xp, x3 = g.add_input(t("B,L"), "x"), g.add_input(t("B,L"), "xp"), g.add_input(t("B,3,L"), "x3")
    w, b = g.add_input(t("L"), "w"), g.add_input(t("L"), "b")
    w2, b2 = g.add_input(t("3,L"), "w2"), g.add_input(t("3,L"), "b2")
    outs: list[tuple[str, Value]] = [
        ("softmax", g.add("softmax", [x])), ("log_softmax", g.add("log_softmax", [x])),
        ("layer_norm", g.add("layer_norm", [x])),
        ("layer_norm_wb", g.add("layer_norm", [x, w, b], {"eps": 1e-3})),
        ("rms_norm_w", g.add("rms_norm", [x, w])),
        ("layer_norm_ax-2_wb", g.add("layer_norm", [x3, w2, b2], {"axis": -2})),
        ("rms_norm_ax-2_w", g.add("rms_norm", [x3, w2], {"axis": -2})),
    ]
    for i, op in enumerate(REDUCE):
        outs.append((f"{op}_keep{i % 2}", g.add(op, [xp if op == "reduce_prod" else x],
                                                 {"axes": (-1,), "keepdims": bool(i % 2)})))
    for op in ("reduce_sum", "reduce_max", "reduce_logsumexp"):
        outs.append((f"{op}_ax-2-1", g.add(op, [x3], {"axes": (-2, -1), "keepdims": False})))
    g.set_outputs([v for _, v in outs])
    return g, [n for n, _ in outs]


@pytest.mark.parametrize("dname", FLOATS)
def test_row_ops(dname: str) -> None:
    g, labels = row_graph(dname)
    sched = partition(g, tgen.CAPS)
    for name, v in zip(labels, g.outputs):
        k = kernel_of(sched, v)
        assert k.kind == "fused" and k.row is v.producer, f"{name} is not a row kernel: {k.describe()}"
    assert {tk.launch for tk in tgen.render(sched)} == {"row"}
    exact = {n for n in labels if n.startswith(("reduce_max", "reduce_min"))}
    _compare(g, labels, exact, dname, sweep=SWEEP if dname == "f32" else SWEEP[:4])


def fused_graph(dname: str) -> tuple[Graph, list[str], dict[str, list[str]]]:
    """Row ops with elementwise producers and consumers that must fuse into their kernel."""
    g = Graph(f"fused_{dname}")
    t = lambda s: f"{dname}[{s}]"  # noqa: E731
    x, res, x3 = g.add_input(t("B,L"), "x"), g.add_input(t("B,L"), "res"), g.add_input(t("B,3,L"), "x3")
    w, b, sc = g.add_input(t("L"), "w"), g.add_input(t("L"), "b"), g.add_input(t("L"), "sc")
    col = g.add_input(t("B,1"), "col")
    w2 = g.add_input(t("3,L"), "w2")
    half = g.add_const(torch.tensor(0.5), dname)
    outs: dict[str, Value] = {}
    expect: dict[str, list[str]] = {}
    v = g.add("mul", [g.add("gelu", [g.add("layer_norm", [g.add("add", [x, res]), w, b])]), sc])
    outs["add_ln_gelu_mul"], expect["add_ln_gelu_mul"] = v, ["add", "layer_norm", "gelu", "mul"]
    outs["softmax_mul"] = g.add("mul", [g.add("softmax", [x]), half])
    expect["softmax_mul"] = ["softmax", "mul"]
    outs["mul_log_softmax"] = g.add("log_softmax", [g.add("mul", [x, sc])])
    expect["mul_log_softmax"] = ["mul", "log_softmax"]
    e = g.add("exp", [g.add("sub", [x, col])])
    outs["sub_exp_sum_mul"] = g.add("mul", [g.add("reduce_sum", [e], {"axes": (-1,)}), half])
    expect["sub_exp_sum_mul"] = ["sub", "exp", "reduce_sum", "mul"]
    outs["max_exp"] = g.add("exp", [g.add("reduce_max", [x], {"axes": (-1,), "keepdims": False})])
    expect["max_exp"] = ["reduce_max", "exp"]
    # axis -2: a prologue operand broadcasts inside the normalised block
    ln = g.add("layer_norm", [g.add("add", [x3, b]), w2], {"axis": -2})
    outs["add_ln2_sub"] = g.add("sub", [ln, w2])
    expect["add_ln2_sub"] = ["add", "layer_norm", "sub"]
    outs["rms_add"] = g.add("add", [g.add("rms_norm", [x, w]), res])
    expect["rms_add"] = ["rms_norm", "add"]
    outs["lse_neg"] = g.add("neg", [g.add("reduce_logsumexp", [g.add("mul", [x, sc])],
                                          {"axes": (-1,), "keepdims": True})])
    expect["lse_neg"] = ["mul", "reduce_logsumexp", "neg"]
    g.set_outputs(list(outs.values()))
    return g, list(outs), expect


@pytest.mark.parametrize("dname", FLOATS + ["f64"])
def test_prologue_epilogue_fuse(dname: str) -> None:
    g, labels, expect = fused_graph(dname)
    sched = partition(g, tgen.CAPS)
    assert sched.by_kind() == {"fused": len(labels)}, str(sched)
    for name, v in zip(labels, g.outputs):
        k = kernel_of(sched, v)
        assert k.ops == expect[name], f"{name}: {k.describe()}"
        assert k.outputs == [v], f"{name}: the kernel writes more than its result"
    # f16/bf16 compute in f32 and round once at the store: the reference is the f32 graph on
    # the same half-precision inputs
    _compare(g, labels, set(), dname, ref=fused_graph("f32")[0] if dname in ("f16", "bf16") else None,
             sweep=SWEEP if dname == "f32" else SWEEP[:4])


def test_static_long_row_renders_only_the_chunked_loop() -> None:
    """A static row length picks the variant at render time; a long one loops over chunks."""
    g = Graph("static_rows")
    x = g.add_input(f"f32[2,{LONG}]", "x")
    w = g.add_input(f"f32[{LONG}]", "w")
    g.set_outputs([g.add("softmax", [x]), g.add("rms_norm", [x, w]),
                   g.add("reduce_mean", [x], {"axes": (-1,), "keepdims": False}),
                   g.add("layer_norm", [g.add_input("f32[5,7]", "s")])])
    srcs = [tk.source.split("def sf_kernel")[1] for tk in tgen.render(partition(g, tgen.CAPS))]
    assert all("for start" in s and "if CHUNKED" not in s for s in srcs[:3])
    assert "for start" not in srcs[3] and "if CHUNKED" not in srcs[3]
    xs = [torch.randn(2, LONG), torch.randn(LONG), torch.randn(5, 7)]
    got = api.build_triton(g, DEVICE)(*[t.to(DEVICE) for t in xs])
    for i, (a, e) in enumerate(zip(got, interp.run(g, *xs))):
        assert_close(a.cpu(), e, rtol=5e-5, atol=1e-5, what=f"output {i}")


def test_row_kernel_reads_half_inputs_into_f32_norm() -> None:
    """A cast in the prologue: bf16 in, f32 layer_norm, f16 out through an epilogue cast."""
    g = Graph("mixed")
    x = g.add_input("bf16[B,L]", "x")
    w = g.add_input("f32[L]", "w")
    y = g.add("cast", [g.add("layer_norm", [g.add("cast", [x], {"to": "f32"}), w]), ], {"to": "f16"})
    g.set_outputs([y])
    sched = partition(g, tgen.CAPS)
    assert [k.ops for k in sched.kernels] == [["cast", "layer_norm", "cast"]]
    cm = api.build_triton(g, DEVICE)
    for B, L in ((1, 5), (3, 384)):
        xs = [torch.randn(B, L).to(torch.bfloat16), torch.rand(L) + 0.5]
        got = cm(*[t.to(DEVICE) for t in xs]).cpu()
        assert got.dtype == torch.float16
        assert_close(got, interp.run(g, *xs)[0], what=f"B={B} L={L}")
