"""Triton backend, elementwise kernels: every op of ``triton_expr.EXPR`` for every dtype it
accepts, casts, broadcasting patterns, symbolic batches and fusion, against the reference
interpreter.

Runs under the Triton interpreter on the CPU (``TRITON_INTERPRET=1``, set before triton is
imported); ``SF_TRITON_TEST_DEVICE=cuda`` runs the same tests on a GPU. As in the C tests, the
op x dtype matrix is multiplexed: one graph per dtype computes every op on its own block of
lanes and a tree of ``where(sel == k, op_k, ...)`` picks op k's result in block k, so a wrong
lane names its op. Correctly rounded ops are compared bit for bit on the interpreter.
"""
from __future__ import annotations

import os

DEVICE = os.environ.get("SF_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from harness import assert_close  # noqa: E402

from scalefold import api  # noqa: E402
from scalefold.codegen import triton as tgen  # noqa: E402
from scalefold.codegen.schedule import LIBRARY_OPS, ROW_OPS, VIEW_OPS, partition  # noqa: E402
from scalefold.codegen.triton_expr import EXPR, F32_ONLY  # noqa: E402
from scalefold.ir import dtypes as dt  # noqa: E402
from scalefold.ir.errors import CompileError, ShapeError  # noqa: E402
from scalefold.ir.graph import Graph  # noqa: E402
from scalefold.ir.ops import all_ops, get_op  # noqa: E402
from scalefold.ir.types import TensorType  # noqa: E402
from scalefold.runtime import interp, triton_exec  # noqa: E402

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

DTYPES = ["f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool"]
LANES = 24
NAN, INF = float("nan"), float("inf")
SPECIAL_F = [NAN, INF, -INF, 0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 3.0, -3.0, 1e-3,
             -7.25, 20.5, 100.0, -100.0, 0.9999, -0.75, 6.0]
# Correctly rounded (or exact) in the compute type: bit-exact against torch on the interpreter.
EXACT_FLOAT = {"identity", "neg", "abs", "relu", "floor", "ceil", "round", "sign", "clip",
               "add", "sub", "mul", "div", "maximum", "minimum", "where", "reciprocal"}
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "gelu": [{"approximate": "none"}, {"approximate": "tanh"}],
    "mod": [{"fmod": False}, {"fmod": True}],
    "clip": [{"min": -1.5, "max": 2.5}, {"max": 0.5}, {"min": 3.0, "max": -3.0}, {"min": -1e30, "max": 1e30}],
    "clip_f16": [{"min": -1.5, "max": 2.5}, {"max": 0.5}, {"min": 3.0, "max": -3.0}, {"min": -1e4, "max": 1e4}],
    "leaky_relu": [{"alpha": 0.1}],
    "elu": [{"alpha": 1.3}],
    "bitshift": [{"direction": "left"}, {"direction": "right"}],
}


def run_both(g: Graph, inputs: Sequence[torch.Tensor], cm: Any = None) -> tuple[list, list]:
    cm = cm or api.build_triton(g, DEVICE)
    got = cm(*[x.to(DEVICE) for x in inputs])
    got = list(got) if isinstance(got, tuple) else [got]
    assert all(t.device.type == DEVICE for t in got), "outputs come back on the inputs' device"
    return [t.cpu() for t in got], interp.run(g, *inputs)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vals(d: dt.DType, n: int, seed: int, roll: int = 0) -> torch.Tensor:
    if d is dt.boolean:
        return torch.randint(0, 2, (n,), generator=_gen(seed)).bool()
    if d.is_float:
        sp = SPECIAL_F[roll:] + SPECIAL_F[:roll]
        r = torch.randn(max(n - len(sp), 0), generator=_gen(seed)) * 3
        return torch.cat([torch.tensor(sp, dtype=torch.float64)[:n], r.double()]).to(d.container)
    lo, hi = d.int_range()
    sp = [v for v in [lo, hi, 0, 1, 2, 7, 100, lo + 1, hi - 1, -1, -2, -7, -100] if lo <= v <= hi]
    r = torch.randint(lo, hi, (max(n - len(sp), 0),), generator=_gen(seed), dtype=torch.int64)
    r[: len(r) // 2] %= 50
    v = torch.cat([torch.tensor(sp[:n], dtype=torch.int64), r]).to(d.container)
    return v.roll(roll) if roll else v


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_match(got: torch.Tensor, want: torch.Tensor, exact: bool, what: str,
                 signed_zero: bool = True) -> None:
    """Bit for bit (NaNs equal whatever their payload) when ``exact``, else within the dtype's
    tolerance. On a GPU, math is approximate: tolerance only."""
    if not exact or not got.is_floating_point() or DEVICE != "cpu":
        assert_close(got, want, what=what)
        return
    nan_g, nan_w = torch.isnan(got), torch.isnan(want)
    assert torch.equal(nan_g, nan_w), f"{what}: NaN positions differ\n got {got}\nwant {want}"
    g, w = got.masked_fill(nan_g, 0).flatten(), want.masked_fill(nan_w, 0).flatten()
    if not signed_zero:
        g, w = g + 0.0, w + 0.0
    bad = _bits(g) != _bits(w)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} lanes not bit-exact; "
                             f"first at {i}: {g[i].item()!r} vs {w[i].item()!r}")


# ---- the multiplexed op x dtype matrix -------------------------------------------------------

def _arity(op: str) -> int:
    lo, hi = get_op(op).inputs
    assert lo == hi
    return lo


def out_dtype(op: str, attrs: dict[str, Any], d: dt.DType) -> dt.DType | None:
    od = get_op(op)
    a = od.bind_attrs(attrs, where=op)
    t = TensorType(d, (4,))
    ins = [TensorType(dt.boolean, (4,)), t, t] if op == "where" else [t] * _arity(op)
    try:
        return od.infer(ins, a)[0].dtype
    except ShapeError:
        return None


def cases_for(d: dt.DType) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for op in sorted(EXPR):
        if op == "cast" or (op in F32_ONLY and d is dt.f64):
            continue
        key = "clip_f16" if op == "clip" and d is dt.f16 else op
        for attrs in VARIANTS.get(key, [{}]):
            od = out_dtype(op, attrs, d)
            if od is not None:
                out.setdefault(od.name, []).append((op, attrs))
    return out


def mux_graph(d: dt.DType, cases: list[tuple[str, dict[str, Any]]]) -> Graph:
    g = Graph(f"mux_{d.name}")
    a = g.add_input(TensorType(d, ("N",)), "a")
    b = g.add_input(TensorType(d, ("N",)), "b")
    c = g.add_input(TensorType(dt.boolean, ("N",)), "c")
    sel = g.add_input(TensorType(dt.i32, ("N",)), "sel")
    acc = None
    for k, (op, attrs) in enumerate(cases):
        v = g.add(op, [c, a, b] if op == "where" else [a, b][: _arity(op)], attrs)
        if acc is None:
            acc = v
            continue
        m = g.add("eq", [sel, g.add_const(torch.tensor(k, dtype=torch.int32))])
        acc = g.add("where", [m, v, acc])
    g.set_outputs([acc])
    return g


def mux_inputs(d: dt.DType, cases: list[tuple[str, dict[str, Any]]]) -> list[torch.Tensor]:
    a_s, b_s = [], []
    for k, (op, attrs) in enumerate(cases):
        a, b = vals(d, LANES, 10 + k), vals(d, LANES, 1000 + k, roll=7)
        if op == "pow" and d.is_int:
            b = torch.randint(0, 12, (LANES,), generator=_gen(k)).to(d.container)
            a = (a.to(torch.int64) % 9 - (4 if d.is_signed else 0)).to(d.container)
        if op == "bitshift":
            b = torch.randint(-3 if d.is_signed else 0, d.bits + 3, (LANES,), generator=_gen(k)).to(d.container)
        a_s.append(a)
        b_s.append(b)
    a, b = torch.cat(a_s), torch.cat(b_s)
    if d.is_int:
        # every lane evaluates every op: no division by zero nor min / -1 anywhere
        b = torch.where(b == 0, torch.ones_like(b) * 3, b)
        lo, _ = d.int_range()
        if d.bits >= 32:
            b = torch.where((a == lo) & (b == -1), torch.ones_like(b) * 2, b)
    n = len(cases) * LANES
    c = torch.randint(0, 2, (n,), generator=_gen(99)).bool()
    sel = torch.arange(n, dtype=torch.int32) // LANES
    return [a, b, c, sel]


def test_matrix_covers_every_op() -> None:
    tested = {op for d in DTYPES for cases in cases_for(dt.get(d)).values() for op, _ in cases}
    assert tested == set(EXPR) - {"cast"}, f"never tested: {sorted(set(EXPR) - {'cast'} - tested)}"


@pytest.mark.parametrize("dname", DTYPES)
def test_every_op_every_dtype(dname: str) -> None:
    d = dt.get(dname)
    for out_name, cases in sorted(cases_for(d).items()):
        g = mux_graph(d, cases)
        sched = partition(g, tgen.CAPS)
        assert [k.kind for k in sched.kernels if k.kind != "view"] == ["fused"], \
            f"{dname}->{out_name} ops did not fuse into one kernel:\n{sched}"
        xs = mux_inputs(d, cases)
        (got,), (want,) = run_both(g, xs)
        for k, (op, attrs) in enumerate(cases):
            s = slice(k * LANES, (k + 1) * LANES)
            exact = (op in EXACT_FLOAT or (op == "mod" and attrs.get("fmod"))) or not d.is_float
            what = f"{op}{attrs or ''} on {dname} (a={xs[0][s].tolist()}, b={xs[1][s].tolist()})"
            if op == "gelu" and attrs["approximate"] == "none" and d is not dt.f64:
                # torch's float gelu gives NaN at +inf (x * Phi(x) is inf)
                s = torch.arange(k * LANES, (k + 1) * LANES)[xs[0][s] != INF]
            assert_match(got[s], want[s], exact, what, signed_zero=op not in ("maximum", "minimum"))


def _cast_source(src: dt.DType, to: dt.DType, n: int, seed: int) -> torch.Tensor:
    if src.is_float and to.is_int:
        lo, hi = to.int_range()
        lo, hi = max(lo, -2.0 ** 40), min(hi, 2.0 ** 40)
        if src is dt.f16:
            lo, hi = max(lo, -60000.0), min(hi, 60000.0)
        fixed = [v for v in [0.0, -0.0, 0.5, 0.99, -0.99, 1.5, -3.7, 3.7, 127.9, -128.9, 255.5]
                 if lo - 1 < v < hi + 1]
        r = torch.rand(n - len(fixed), generator=_gen(seed), dtype=torch.float64) * (hi - lo) + lo
        return torch.cat([torch.tensor(fixed, dtype=torch.float64), r]).to(src.container)
    v = vals(src, n, seed)
    if src.is_float:
        # ties of f32 -> bf16 / f16 rounding, and values past the f16 range
        ties = torch.tensor([0x3F808000, 0x3F818000, 0xBF808000, 0x3F800FFF, 0x3F801000,
                             0x3F803000, 0x477FF000], dtype=torch.int64).to(torch.int32).view(torch.float32)
        extra = torch.cat([ties.double(), torch.tensor([1e6, -7e4, 65519.0, 65520.0, 3.0e38])])
        v = torch.cat([v[: n - len(extra)], extra.to(src.container)])
    return v


@pytest.mark.parametrize("to", DTYPES)
def test_cast_matrix(to: str) -> None:
    """cast from every dtype into ``to`` in one multiplexed kernel; every cast rounds once."""
    T = dt.get(to)
    g = Graph(f"cast_to_{to}")
    xs = {s: g.add_input(TensorType(dt.get(s), ("N",)), f"x_{s}") for s in DTYPES}
    sel = g.add_input(TensorType(dt.i32, ("N",)), "sel")
    acc = None
    for k, s in enumerate(DTYPES):
        v = g.add("cast", [xs[s]], {"to": to})
        if acc is None:
            acc = v
            continue
        acc = g.add("where", [g.add("eq", [sel, g.add_const(torch.tensor(k, dtype=torch.int32))]), v, acc])
    g.set_outputs([acc])
    assert [k.kind for k in partition(g, tgen.CAPS).kernels] == ["fused"]
    n = len(DTYPES) * LANES
    inputs = []
    for k, s in enumerate(DTYPES):
        x = torch.zeros(n, dtype=dt.get(s).container)
        x[k * LANES:(k + 1) * LANES] = _cast_source(dt.get(s), T, LANES, k)
        inputs.append(x)
    inputs.append(torch.arange(n, dtype=torch.int32) // LANES)
    (got,), (want,) = run_both(g, inputs)
    for k, s in enumerate(DTYPES):
        sl = slice(k * LANES, (k + 1) * LANES)
        assert_match(got[sl], want[sl], True, f"cast {s} -> {to} of {inputs[k][sl].tolist()}")


# ---- shapes, symbolic batch, broadcasting ----------------------------------------------------

def _bcast_graph() -> Graph:
    """x: f32[B,7,5] against every broadcasting pattern, on either side of sub, a three-way
    where, a result larger than either operand, and the same in i32 and bf16."""
    g = Graph("bcast")
    x = g.add_input("f32[B,7,5]", "x")
    y1 = g.add_input("f32[B,1,5]", "y1")
    y7 = g.add_input("f32[B,7,1]", "y7")
    cond = g.add_input("bool[B,7,1]", "cond")
    others = [g.add_const(torch.tensor(1.75)), g.add_const(torch.linspace(-1, 1, 5)), y1, y7,
              g.add_const(torch.linspace(-2, 2, 7).reshape(1, 7, 1))]
    outs = [g.add("sub", [x, o] if i % 2 == 0 else [o, x]) for i, o in enumerate(others)]
    outs.append(g.add("where", [cond, x, g.add_const(torch.linspace(0, 4, 5))]))
    outs.append(g.add("mul", [y1, g.add_const(torch.linspace(1, 2, 7).reshape(7, 1))]))
    xi = g.add("cast", [x], {"to": "i32"})
    outs.append(g.add("mul", [g.add("cast", [y7], {"to": "i32"}), xi]))
    xb = g.add("cast", [x], {"to": "bf16"})
    outs.append(g.add("add", [xb, g.add_const(torch.linspace(-1, 1, 5), "bf16")]))
    g.set_outputs(outs)
    return g


def test_broadcast_patterns_symbolic_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # small blocks: grids of many programs, partial tiles on both axes
    monkeypatch.setitem(triton_exec.BLOCKS, "interp", {"flat": 64, "bn": 4, "tile": 16})
    g = _bcast_graph()
    kinds = {tk.launch for tk in tgen.render(partition(g, tgen.CAPS))}
    assert {"flat", "tile"} <= kinds, kinds
    cm = api.build_triton(g, DEVICE)
    for B in (1, 3, 17):
        xs = [torch.randn(B, 7, 5) * 1e5, torch.randn(B, 1, 5), torch.randn(B, 7, 1) * 1e5,
              torch.rand(B, 7, 1) > 0.5]
        got, want = run_both(g, xs, cm)
        for i, (a, b) in enumerate(zip(got, want)):
            assert_match(a, b, True, f"B={B} output {i} ({g.outputs[i].producer.op})")


def test_odd_static_shape_and_general_broadcast() -> None:
    """Static sizes render as literals; [3,1,5] against [3,7,5] with [7,1] needs a computed
    per-row base (the 'general' access)."""
    g = Graph("static")
    x = g.add_input("f32[3,7,5]", "x")
    r = g.add_input("f32[7,1]", "r")
    z = g.add_input("f32[3,1,5]", "z")
    g.set_outputs([g.add("div", [g.add("exp", [x]), r]), g.add("maximum", [r, x]),
                   g.add("mul", [g.add("add", [x, z]), r])])
    xs = [torch.randn(3, 7, 5), torch.randn(7, 1), torch.randn(3, 1, 5)]
    got, want = run_both(g, xs)
    assert_close(got[0], want[0])
    assert_match(got[1], want[1], True, "maximum", signed_zero=False)
    assert_match(got[2], want[2], True, "add-mul")
    assert "q0" not in "".join(api.build_triton(g, DEVICE).sources.values()).split("def sf_kernel")[-1]


@pytest.mark.parametrize("dname", ["f32", "bf16", "i32"])
def test_chain_fuses_into_one_kernel(dname: str) -> None:
    g = Graph(f"chain_{dname}")
    x = g.add_input(f"{dname}[B,7,5]", "x")
    r = g.add_input(f"{dname}[B,7,1]", "r")
    if dname == "i32":
        w = g.add_const(torch.tensor([3, -5, 7, 1 << 20, -(1 << 30)], dtype=torch.int32))
        t = g.add("neg", [g.add("bitwise_xor", [g.add("add", [g.add("mul", [x, w]), r]), x])])
        ops = ["mul", "add", "bitwise_xor", "neg"]
    else:
        w = g.add_const(torch.linspace(-2, 2, 5), dname)
        t = g.add("gelu", [g.add("sub", [g.add("sigmoid", [g.add("add", [g.add("tanh", [g.add("mul", [x, w])]), x])]), r])])
        ops = ["mul", "tanh", "add", "sigmoid", "sub", "gelu"]
    g.set_outputs([t])
    sched = partition(g, tgen.CAPS)
    assert len(sched.kernels) == 1 and sched.kernels[0].ops == ops, str(sched)
    cm = api.build_triton(g, DEVICE)
    d = dt.get(dname)
    for B in (1, 3, 17):
        if d.is_int:
            xs = [torch.randint(-2 ** 31, 2 ** 31 - 1, (B, 7, s), dtype=torch.int32) for s in (5, 1)]
        else:
            xs = [torch.randn(B, 7, s).to(d.container) for s in (5, 1)]
        got, want = run_both(g, xs, cm)
        # bf16: the kernel keeps intermediates in f32, the interpreter rounds each op
        assert_close(got[0], want[0], what=f"{dname} chain B={B}")


# ---- determinism and coverage ----------------------------------------------------------------

def test_sources_are_deterministic() -> None:
    """The same kernel renders to byte-identical source (and so to one cached module file)."""
    a = tgen.render(partition(_bcast_graph(), tgen.CAPS))
    b = tgen.render(partition(_bcast_graph(), tgen.CAPS))
    assert [k.source for k in a] == [k.source for k in b]
    assert [triton_exec.source_path(k.source) for k in a] == [triton_exec.source_path(k.source) for k in b]
    assert len({k.source for k in a}) > 1


def test_every_op_has_a_triton_path() -> None:
    cov = tgen.op_coverage()
    assert set(cov) == set(all_ops())
    missing = sorted(op for op, how in cov.items() if how == "missing")
    assert not missing, f"ops with no Triton kernel and no entry in REFERENCE_OPS: {missing}"
    for op, od in all_ops().items():
        if od.elementwise and op not in VIEW_OPS:
            assert cov[op].startswith(("triton", "reference: ")), f"{op}: {cov[op]}"
    assert set(EXPR) | set(ROW_OPS) | set(LIBRARY_OPS) <= set(all_ops())


def test_scalar_operands() -> None:
    """Broadcast scalars meeting blocks: pow by constant exponents (products for 2 and 3), the
    two-operand helpers, and a boolean computed from scalars only."""
    g = Graph("scalars")
    x = g.add_input("f32[B,5]", "x")
    i = g.add_input("i32[B,5]", "i")
    c = lambda v, d="f32": g.add_const(torch.tensor(v), d)  # noqa: E731
    flag = g.add("gt", [c(2.0), c(1.0)])
    outs = [g.add("pow", [x, c(3.0)]), g.add("pow", [x, c(2.0)]), g.add("pow", [g.add("abs", [x]), c(2.5)]),
            g.add("maximum", [x, c(0.25)]), g.add("mod", [x, c(0.75)]),
            g.add("pow", [i, g.add_const(torch.tensor(3, dtype=torch.int32))]),
            g.add("logical_and", [flag, g.add("gt", [x, c(0.0)])]),
            g.add("logical_xor", [g.add("lt", [c(2.0), c(1.0)]), g.add("lt", [x, c(0.5)])])]
    g.set_outputs(outs)
    srcs = "".join(api.build_triton(g, DEVICE).sources.values())
    assert "_sf_pow(v" in srcs and "(l0 * l0 * l0)" in srcs and "(l0 * l0)" in srcs
    xs = [torch.randn(3, 5) * 3, torch.randint(-20, 20, (3, 5), dtype=torch.int32)]
    got, want = run_both(g, xs)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_match(a, b, k in (3, 5, 6, 7), f"output {k} ({outs[k].producer.op})")


def test_f64_ops_without_a_triton_formulation_run_their_reference() -> None:
    g = Graph("f64_ref")
    x = g.add_input("f64[N]", "x")
    g.set_outputs([g.add("atan", [x]), g.add("mod", [x, g.add_const(torch.tensor(0.75, dtype=torch.float64))]),
                   g.add("atan", [g.add("cast", [x], {"to": "f32"})])])
    kinds = [k.kind for k in partition(g, tgen.CAPS).kernels]
    assert kinds.count("reference") == 2 and kinds.count("fused") == 1, kinds
    xs = [torch.randn(37, dtype=torch.float64) * 4]
    got, want = run_both(g, xs)
    for a, b in zip(got, want):
        assert_close(a, b)


def test_damaged_cached_module_is_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached kernel module overwritten from outside was imported as it was; its text is now
    checked against the source and rewritten. A cache root that is a file is a CompileError."""
    monkeypatch.setenv("SCALEFOLD_CACHE_DIR", str(tmp_path / "cache"))
    src = tgen.render(partition(_bcast_graph(), tgen.CAPS))[0].source
    path = triton_exec.source_path(src)
    path.write_text(src[: len(src) // 2])
    assert triton_exec.source_path(src) == path and path.read_text() == src
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("SCALEFOLD_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(CompileError, match="cannot be used"):
        triton_exec.source_path(src)


def test_saved_triton_kernels_are_python_files(tmp_path: Path) -> None:
    """A Triton artifact names its kernel sources .py (they are Python), and loads back."""
    import scalefold as sf
    g = Graph("tri")
    x = g.add_input("f32[B,8]", "x")
    g.set_outputs([g.add("relu", [g.add("exp", [x])])], ["y"])
    cm = api.build_triton(g, DEVICE)
    x0 = torch.randn(3, 8)
    dest = cm.save(tmp_path / "a")
    names = {p.name for p in (dest / "kernels").iterdir()}
    assert names and all(n.endswith(".py") for n in names)
    back = sf.load(dest)
    assert back.target == "triton"
    torch.testing.assert_close(back(x0.to(DEVICE)).cpu(), cm(x0.to(DEVICE)).cpu())
