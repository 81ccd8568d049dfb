"""C backend, row kernels (softmax, norms, trailing-axis reductions) with their fused prologues
and epilogues, against the reference interpreter.

Row lengths and batches are symbolic (``x: dt[B,L]``), so one compile per kernel covers every
(B, L) of the sweep: L in 1, 7, 33, 1000 and B in 1, 3, 17. With B = 17 one row holds a NaN,
which every row op must propagate to exactly that row.
"""
from __future__ import annotations

import pytest
import torch
from harness import assert_close

from scalefold import api
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import Kernel, Schedule, partition
from scalefold.ir import dtypes as dt
from scalefold.ir.graph import Graph, Value
from scalefold.ir.types import sym
from scalefold.runtime import interp

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

FLOATS = ["f32", "f16", "bf16"]
REDUCE = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod",
          "reduce_sum_square", "reduce_l2", "reduce_logsumexp"]
SWEEP = [(B, L) for L in (1, 7, 33, 1000) for B in (1, 3, 17)]


def _inputs(g: Graph, B: int, L: int, seed: int) -> list[torch.Tensor]:
    """Values for every graph input by name: rows with a positive mean (sums do not cancel),
    products near 1, a NaN in row 16 of the main inputs when B = 17."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for v in g.inputs:
        shape = v.type.concrete({sym("B"): B, sym("L"): L})
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        if v.name in ("x", "x3", "xp"):
            t = torch.exp(0.05 * t) if v.name == "xp" else t + 3
            if B == 17:
                t[16].view(-1)[L // 2] = float("nan")
        out.append(t.to(v.dtype.container))
    return out


def kernel_of(sched: Schedule, v: Value) -> Kernel:
    return next(k for k in sched.kernels if any(o is v for o in k.outputs))


def _compare(g: Graph, labels: list[str], exact: set[str], dname: str,
             ref: Graph | None = None, sweep: list[tuple[int, int]] = SWEEP,
             atol: float | None = None) -> None:
    """Run the C build of ``g`` over the sweep against the interpreter on ``ref`` (default
    ``g``; inputs are converted to ``ref``'s dtypes and results back to ``g``'s)."""
    cm = api.build_c(g)
    ref = ref or g
    for B, L in sweep:
        xs = _inputs(g, B, L, seed=B * 1000 + L)
        got = cm(*xs)
        got = list(got) if isinstance(got, tuple) else [got]
        want = interp.run(ref, *[x.to(v.dtype.container) for x, v in zip(xs, ref.inputs)])
        for name, a, e in zip(labels, got, want):
            e = e.to(a.dtype)
            what = f"{name} {dname} B={B} L={L}"
            if name in exact:
                assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN positions differ"
                assert torch.equal(a.nan_to_num(0), e.nan_to_num(0)), f"{what}: not exact"
            else:
                # f32: sums over 1000 elements in another order allow sqrt(L) roundings, and
                # results of O(1) inputs that cancel to near 0 (norm * w + b, gelu's tail) carry
                # absolute errors of a few ulps of 1.
                f32 = dname == "f32"
                assert_close(a, e, what=what, rtol=4e-5 if f32 and L >= 100 else None,
                             atol=atol or (1e-5 if f32 else None))
            if B == 17:
                assert bool(torch.isnan(a[16]).all() if a.dim() > 1 else torch.isnan(a[16])), \
                    f"{what}: the NaN row did not propagate"


# ---- every row op alone ----------------------------------------------------------------------

def row_graph(dname: str) -> tuple[Graph, list[str]]:
    g = Graph(f"rows_{dname}")
    t = lambda s: f"{dname}[{s}]"  # noqa: E731
    x, xp, x3 = g.add_input(t("B,L"), "x"), g.add_input(t("B,L"), "xp"), g.add_input(t("B,3,L"), "x3")
    w, b = g.add_input(t("L"), "w"), g.add_input(t("L"), "b")
    w2, b2 = g.add_input(t("3,L"), "w2"), g.add_input(t("3,L"), "b2")
    outs: list[tuple[str, Value]] = [
        ("softmax", g.add("softmax", [x])), ("log_softmax", g.add("log_softmax", [x])),
        ("layer_norm", g.add("layer_norm", [x])), ("layer_norm_w", g.add("layer_norm", [x, w])),
        ("layer_norm_wb", g.add("layer_norm", [x, w, b], {"eps": 1e-3})),
        ("rms_norm", g.add("rms_norm", [x])), ("rms_norm_w", g.add("rms_norm", [x, w])),
        ("layer_norm_ax-2_wb", g.add("layer_norm", [x3, w2, b2], {"axis": -2})),
        ("layer_norm_ax-2", g.add("layer_norm", [x3], {"axis": -2})),
        ("rms_norm_ax-2_w", g.add("rms_norm", [x3, w2], {"axis": -2})),
    ]
    for op in REDUCE:
        src = xp if op == "reduce_prod" else x
        for keep in (True, False):
            outs.append((f"{op}_keep{int(keep)}", g.add(op, [src], {"axes": (-1,), "keepdims": keep})))
    for i, op in enumerate(REDUCE):
        src = g.add("reshape", [xp], {"shape": (sym("B"), 1, sym("L"))}) if op == "reduce_prod" else x3
        keep = i % 2 == 0
        outs.append((f"{op}_ax-2-1_keep{int(keep)}", g.add(op, [src], {"axes": (-2, -1), "keepdims": keep})))
    g.set_outputs([v for _, v in outs])
    return g, [n for n, _ in outs]


@pytest.mark.parametrize("dname", FLOATS)
def test_row_ops(dname: str) -> None:
    g, labels = row_graph(dname)
    sched = partition(g, cgen.CAPS)
    for name, v in zip(labels, g.outputs):
        k = kernel_of(sched, v)
        assert k.kind == "fused" and k.row is v.producer, f"{name} is not a row kernel: {k.describe()}"
    exact = {n for n in labels if n.startswith(("reduce_max", "reduce_min"))}
    _compare(g, labels, exact, dname)


def test_reduce_all_axes() -> None:
    g = Graph("all")
    x = g.add_input("f32[B,3,L]", "x3")
    g.set_outputs([g.add("reduce_sum", [x], {"axes": None, "keepdims": False}),
                   g.add("reduce_max", [x], {"axes": None, "keepdims": True})])
    k = partition(g, cgen.CAPS).kernels
    assert [kk.kind for kk in k] == ["fused", "fused"] and all(kk.row is not None for kk in k)
    cm = api.build_c(g)
    for B, L in [(1, 1), (3, 33), (17, 1000)]:
        xs = [torch.randn(B, 3, L) + 3]
        for a, e in zip(cm(*xs), interp.run(g, *xs)):
            assert_close(a, e, rtol=2e-5, what=f"B={B} L={L}")


# ---- prologues and epilogues -----------------------------------------------------------------

def fused_graph(dname: str) -> tuple[Graph, list[str], dict[str, list[str]]]:
    """Row ops with elementwise producers and consumers that must fuse into their kernel."""
    g = Graph(f"fused_{dname}")
    t = lambda s: f"{dname}[{s}]"  # noqa: E731
    x, res, x3 = g.add_input(t("B,L"), "x"), g.add_input(t("B,L"), "res"), g.add_input(t("B,3,L"), "x3")
    w, b, sc = g.add_input(t("L"), "w"), g.add_input(t("L"), "b"), g.add_input(t("L"), "sc")
    col = g.add_input(t("B,1"), "col")
    w2 = g.add_input(t("3,L"), "w2")
    d = dt.get(dname)
    half = g.add_const(torch.tensor(0.5), dname)
    outs: dict[str, Value] = {}
    expect: dict[str, list[str]] = {}
    # residual add -> layer_norm -> gelu -> mul (a transformer block's tail)
    v = g.add("mul", [g.add("gelu", [g.add("layer_norm", [g.add("add", [x, res]), w, b])]), sc])
    outs["add_ln_gelu_mul"], expect["add_ln_gelu_mul"] = v, ["add", "layer_norm", "gelu", "mul"]
    outs["softmax_mul"] = g.add("mul", [g.add("softmax", [x]), half])
    expect["softmax_mul"] = ["softmax", "mul"]
    outs["mul_softmax"] = g.add("softmax", [g.add("mul", [x, sc])])
    expect["mul_softmax"] = ["mul", "softmax"]
    e = g.add("exp", [g.add("sub", [x, col])])
    outs["sub_exp_sum_mul"] = g.add("mul", [g.add("reduce_sum", [e], {"axes": (-1,)}), half])
    expect["sub_exp_sum_mul"] = ["sub", "exp", "reduce_sum", "mul"]
    outs["max_exp"] = g.add("exp", [g.add("reduce_max", [x], {"axes": (-1,), "keepdims": False})])
    expect["max_exp"] = ["reduce_max", "exp"]
    # axis -2: the prologue operand broadcasts inside the normalised block
    ln = g.add("layer_norm", [g.add("add", [x3, b]), w2], {"axis": -2})
    outs["add_ln2_sub"] = g.add("sub", [ln, w2])
    expect["add_ln2_sub"] = ["add", "layer_norm", "sub"]
    outs["rms_add"] = g.add("add", [g.add("rms_norm", [x, w]), res])
    expect["rms_add"] = ["rms_norm", "add"]
    outs["lse_neg"] = g.add("neg", [g.add("reduce_logsumexp", [g.add("mul", [x, sc])],
                                          {"axes": (-1,), "keepdims": True})])
    expect["lse_neg"] = ["mul", "reduce_logsumexp", "neg"]
    assert d.is_float
    g.set_outputs(list(outs.values()))
    return g, list(outs), expect


@pytest.mark.parametrize("dname", FLOATS + ["f64"])
def test_prologue_epilogue_fuse(dname: str) -> None:
    g, labels, expect = fused_graph(dname)
    sched = partition(g, cgen.CAPS)
    assert sched.by_kind() == {"fused": len(labels)}, str(sched)
    for name, v in zip(labels, g.outputs):
        k = kernel_of(sched, v)
        assert k.ops == expect[name], f"{name}: {k.describe()}"
        assert k.outputs == [v], f"{name}: the kernel writes more than its result"
    # A fused kernel computes f16/bf16 in float and rounds once at the store, where the
    # interpreter rounds after every op: its reference is the same graph in f32, on the same
    # (half-precision) inputs, rounded at the end.
    _compare(g, labels, set(), dname, ref=fused_graph("f32")[0] if dname in ("f16", "bf16") else None)


def test_rows_split_across_threads() -> None:
    """Past the size threshold rows run on several OpenMP threads, each with its own scratch
    row: many long rows, and very many rows of one element."""
    sweep = [(70, 1000), (40000, 1)]
    g, labels = row_graph("f32")
    # Among 40000 norms over 3 elements a few are ill-conditioned (nearly equal values: the
    # spread is a few ulps of x), which scales every rounding difference up.
    _compare(g, labels, {n for n in labels if n.startswith(("reduce_max", "reduce_min"))}, "f32",
             sweep=sweep, atol=1e-4)
    g, labels, _ = fused_graph("f32")
    _compare(g, labels, set(), "f32", sweep=sweep, atol=1e-4)


def test_static_shapes() -> None:
    """Sizes known at compile time become literals in the source; same results."""
    g = Graph("static")
    x = g.add_input("f32[17,1000]", "x")
    y = g.add_input("f32[3,7,5]", "y")
    w = g.add_const(torch.linspace(0.5, 1.5, 35).reshape(7, 5))
    g.set_outputs([g.add("softmax", [x]), g.add("layer_norm", [y, w, w], {"axis": -2}),
                   g.add("reduce_mean", [y], {"axes": (-1,), "keepdims": False}),
                   g.add("log_softmax", [g.add("reshape", [y], {"shape": (21, 5)})])])
    src = "".join(ck.source for ck in cgen.render(partition(g, cgen.CAPS)))
    assert "q[" not in src.split("void sf_kernel")[-1], "static sizes should not be runtime params"
    cm = api.build_c(g)
    xs = [torch.randn(17, 1000), torch.randn(3, 7, 5)]
    for i, (a, e) in enumerate(zip(cm(*xs), interp.run(g, *xs))):
        assert_close(a, e, what=f"output {i}")


def test_softmax_extremes() -> None:
    """Large logits (no overflow: max subtracted), -inf entries (weight 0), an all -inf row
    (NaN, as torch), a single-element row (1)."""
    g = Graph("sm")
    x = g.add_input("f32[B,L]", "x")
    g.set_outputs([g.add("softmax", [x]), g.add("log_softmax", [x]),
                   g.add("reduce_logsumexp", [x], {"axes": (-1,), "keepdims": False})])
    cm = api.build_c(g)
    ninf = float("-inf")
    for xs in ([torch.tensor([[1000.0, 999.0, -1000.0], [ninf, 0.0, ninf], [ninf, ninf, ninf]])],
               [torch.tensor([[5.0], [ninf], [-3.0]])]):
        for i, (a, e) in enumerate(zip(cm(*xs), interp.run(g, *xs))):
            assert_close(a, e, what=f"output {i} of {xs[0].tolist()}")


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_norm_over_an_axis_of_size_one(op: str) -> None:
    # its weight [1] reads as a scalar broadcast: the C backend refused it with a bare ValueError
    g = Graph("n1")
    x = g.add_input("f32[M,1]", "x")
    ins = [x, g.add_const(torch.tensor([2.0]), "f32", "w")]
    if op == "layer_norm":
        ins.append(g.add_const(torch.tensor([0.5]), "f32", "b"))
    g.set_outputs([g.add(op, ins, {"axis": -1, "eps": 1e-5})])
    xs = torch.tensor([[3.0], [-1.0], [0.0]])
    assert_close(api.build_c(g)(xs), interp.run(g, xs)[0], rtol=1e-6, atol=1e-6)
