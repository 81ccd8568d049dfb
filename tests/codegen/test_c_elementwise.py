"""C backend, elementwise kernels: every op of ``c_expr.EXPR`` for every dtype it accepts,
against the reference interpreter.

Compiles dominate the run time, so the op x dtype matrix is *multiplexed*: for one dtype, one
graph computes every op on its own block of lanes and a tree of ``where(sel == k, op_k, ...)``
picks op k's result in block k. The tree fuses into one kernel (asserted), each op's C
expression is exactly the one it has alone, and ``where`` is exact, so a wrong lane names its
op. Operators whose result is correctly rounded in the compute type are compared bit for bit
(NaN payloads aside), which pins f16/bf16 rounding and signed zeros; the rest within the
dtype's tolerance.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pytest
import torch
from harness import assert_close

from scalefold import api
from scalefold.codegen import c as cgen
from scalefold.codegen.c_expr import EXPR
from scalefold.codegen.schedule import partition
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ShapeError
from scalefold.ir.graph import Graph, Value
from scalefold.ir.ops import get_op
from scalefold.ir.types import TensorType
from scalefold.runtime import interp

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

DTYPES = ["f32", "f16", "bf16", "f64", "i64", "i32", "i8", "u8", "bool"]
LANES = 40          # lanes per op in a multiplexed graph
NAN, INF = float("nan"), float("inf")
SPECIAL_F = [NAN, INF, -INF, 0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1.0, -1.0, 3.0, -3.0, 1e-3,
             -7.25, 20.5, 100.0, -100.0, 0.9999, -0.75, 6.0]
# Ops whose result is correctly rounded in the compute type (or exact): bit-exact vs torch.
# (Not sqrt: torch's f32 CPU sqrt is not correctly rounded, sqrt(4.668036) is 1 ulp off.)
EXACT_FLOAT = {"identity", "neg", "abs", "relu", "floor", "ceil", "round", "sign", "clip",
               "add", "sub", "mul", "div", "maximum", "minimum", "where", "reciprocal"}
# Variants of attributes per op (default: the op's defaults).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "gelu": [{"approximate": "none"}, {"approximate": "tanh"}],
    "mod": [{"fmod": False}, {"fmod": True}],
    "clip": [{"min": -1.5, "max": 2.5}, {"max": 0.5}, {"min": -0.25}, {"min": 3.0, "max": -3.0},
             {"min": -1e30, "max": 1e30}, {"min": -100.5, "max": 99.5}],
    "clip_f16": [{"min": -1.5, "max": 2.5}, {"max": 0.5}, {"min": -0.25}, {"min": 3.0, "max": -3.0},
                 {"min": -1e4, "max": 1e4}, {"min": -100.5, "max": 99.5}],
    "leaky_relu": [{"alpha": 0.1}],
    "elu": [{"alpha": 1.3}],
    "bitshift": [{"direction": "left"}, {"direction": "right"}],
}


# ---- value generators -----------------------------------------------------------------------

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def float_vals(d: dt.DType, n: int, seed: int, roll: int = 0) -> torch.Tensor:
    sp = SPECIAL_F[roll:] + SPECIAL_F[:roll]
    r = torch.randn(max(n - len(sp), 0), generator=_gen(seed)) * 3
    return torch.cat([torch.tensor(sp, dtype=torch.float64)[:n], r.double()]).to(d.container)


def int_vals(d: dt.DType, n: int, seed: int) -> torch.Tensor:
    lo, hi = d.int_range()
    sp = [lo, hi, 0, 1, 2, 7, 100, lo + 1, hi - 1]
    if lo < 0:
        sp += [-1, -2, -7, -100]
    sp = [v for v in sp if lo <= v <= hi]
    r = torch.randint(lo, hi, (max(n - len(sp), 0),), generator=_gen(seed), dtype=torch.int64)
    r[: len(r) // 2] %= 50   # small values too, so that products and powers are not all wrapped
    return torch.cat([torch.tensor(sp[:n], dtype=torch.int64), r]).to(d.container)


def vals(d: dt.DType, n: int, seed: int, roll: int = 0) -> torch.Tensor:
    if d is dt.boolean:
        return torch.randint(0, 2, (n,), generator=_gen(seed)).bool()
    if d.is_float:
        return float_vals(d, n, seed, roll)
    v = int_vals(d, n, seed)
    return v.roll(roll) if roll else v


# ---- comparison -----------------------------------------------------------------------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_match(got: torch.Tensor, want: torch.Tensor, exact: bool, what: str,
                 signed_zero: bool = True) -> None:
    """Compare a C result with the reference: bit for bit (NaNs equal whatever their payload)
    when ``exact``, else within the dtype's tolerance."""
    if not exact or not got.is_floating_point():
        assert_close(got, want, what=what)
        return
    nan_g, nan_w = torch.isnan(got), torch.isnan(want)
    assert torch.equal(nan_g, nan_w), f"{what}: NaN positions differ\n got {got}\nwant {want}"
    g, w = got.masked_fill(nan_g, 0).flatten(), want.masked_fill(nan_w, 0).flatten()
    if not signed_zero:
        g, w = g + 0.0, w + 0.0   # -0 + 0 = +0
    bad = _bits(g) != _bits(w)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} lanes not bit-exact; "
                             f"first at {i}: {g[i].item()!r} vs {w[i].item()!r}")


def build_and_compare(g: Graph, inputs: Sequence[torch.Tensor]) -> tuple[list, list]:
    cm = api.build_c(g)
    got = cm(*inputs)
    got = list(got) if isinstance(got, tuple) else [got]
    return got, interp.run(g, *inputs)


# ---- the multiplexed op x dtype matrix -------------------------------------------------------

def _arity(op: str) -> int:
    lo, hi = get_op(op).inputs
    assert lo == hi, f"{op}: elementwise ops have a fixed arity"
    return lo


def out_dtype(op: str, attrs: dict[str, Any], d: dt.DType) -> dt.DType | None:
    """The op's output dtype on operands of ``d``, or None when the op rejects ``d``."""
    od = get_op(op)
    a = od.bind_attrs(attrs, where=op)
    t = TensorType(d, (4,))
    ins = [TensorType(dt.boolean, (4,)), t, t] if op == "where" else [t] * _arity(op)
    try:
        return od.infer(ins, a)[0].dtype
    except ShapeError:
        return None


def cases_for(d: dt.DType) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Every (op, attrs) of EXPR that accepts ``d``, grouped by output dtype."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for op in sorted(EXPR):
        if op == "cast":
            continue
        # The f16 reference (torch.clamp) rejects bounds past the f16 range.
        key = "clip_f16" if op == "clip" and d is dt.f16 else op
        for attrs in VARIANTS.get(key, [{}]):
            od = out_dtype(op, attrs, d)
            if od is not None:
                out.setdefault(od.name, []).append((op, attrs))
    return out


def mux_graph(d: dt.DType, cases: list[tuple[str, dict[str, Any]]]) -> tuple[Graph, list[Value]]:
    """x_k = op_k(a[, b]) for every case; the output takes x_k where sel == k."""
    g = Graph(f"mux_{d.name}")
    a = g.add_input(TensorType(d, ("N",)), "a")
    b = g.add_input(TensorType(d, ("N",)), "b")
    c = g.add_input(TensorType(dt.boolean, ("N",)), "c")
    sel = g.add_input(TensorType(dt.i32, ("N",)), "sel")
    acc = None
    for k, (op, attrs) in enumerate(cases):
        ins = [c, a, b] if op == "where" else [a, b][: _arity(op)]
        v = g.add(op, ins, attrs)
        if acc is None:
            acc = v
            continue
        m = g.add("eq", [sel, g.add_const(torch.tensor(k, dtype=torch.int32))])
        acc = g.add("where", [m, v, acc])
    g.set_outputs([acc])
    return g, [a, b, c, sel]


def mux_inputs(d: dt.DType, cases: list[tuple[str, dict[str, Any]]]) -> list[torch.Tensor]:
    a_s, b_s = [], []
    for k, (op, attrs) in enumerate(cases):
        a = vals(d, LANES, 10 + k)
        b = vals(d, LANES, 1000 + k, roll=7)
        if op == "pow" and d.is_int:
            b = torch.randint(0, 12, (LANES,), generator=_gen(k)).to(d.container)
            a = (a.to(torch.int64) % 9 - (4 if d.is_signed else 0)).to(d.container)
        if op == "bitshift":
            b = torch.randint(-3 if d.is_signed else 0, d.bits + 3, (LANES,), generator=_gen(k)).to(d.container)
        a_s.append(a)
        b_s.append(b)
    a, b = torch.cat(a_s), torch.cat(b_s)
    if d.is_int:
        # Every lane evaluates every op, so integer division must never divide by zero (an
        # error) nor overflow (min / -1 traps for 32 and 64 bits) in any lane.
        b = torch.where(b == 0, torch.ones_like(b) * 3, b)
        lo, _ = d.int_range()
        if d.bits >= 32:
            b = torch.where((a == lo) & (b == -1), torch.ones_like(b) * 2, b)
    n = len(cases) * LANES
    c = torch.randint(0, 2, (n,), generator=_gen(99)).bool()
    sel = torch.arange(n, dtype=torch.int32) // LANES
    return [a, b, c, sel]


def test_matrix_covers_every_op() -> None:
    """Every op of the C table is exercised for at least one dtype (and cast separately)."""
    tested = {op for d in DTYPES for cases in cases_for(dt.get(d)).values() for op, _ in cases}
    assert tested == set(EXPR) - {"cast"}, f"never tested: {sorted(set(EXPR) - {'cast'} - tested)}"


@pytest.mark.parametrize("dname", DTYPES)
def test_every_op_every_dtype(dname: str) -> None:
    d = dt.get(dname)
    groups = cases_for(d)
    assert groups, f"no elementwise op accepts {dname}"
    for out_name, cases in sorted(groups.items()):
        g, _ = mux_graph(d, cases)
        sched = partition(g, cgen.CAPS)
        # (identity is scheduled as a view: it aliases its input)
        assert [k.kind for k in sched.kernels if k.kind != "view"] == ["fused"], \
            f"{dname}->{out_name} ops did not fuse into one kernel:\n{sched}"
        xs = mux_inputs(d, cases)
        (got,), (want,) = build_and_compare(g, xs)
        for k, (op, attrs) in enumerate(cases):
            s = slice(k * LANES, (k + 1) * LANES)
            exact = (op in EXACT_FLOAT or (op == "mod" and attrs.get("fmod"))) or not d.is_float
            what = f"{op}{attrs or ''} on {dname} (a={xs[0][s].tolist()}, b={xs[1][s].tolist()})"
            if op == "gelu" and attrs["approximate"] == "none" and d is not dt.f64:
                # torch quirk: its float gelu gives NaN at +inf (f64 gives inf, as x*Phi(x) does).
                s = torch.arange(k * LANES, (k + 1) * LANES)[xs[0][s] != INF]
            assert_match(got[s], want[s], exact, what,
                         signed_zero=op not in ("maximum", "minimum"))


def _cast_source_vals(src: dt.DType, to: dt.DType, n: int, seed: int) -> torch.Tensor:
    if src.is_float and to.is_int:
        # In-range values only: out-of-range float -> int is implementation-defined (as C).
        lo, hi = to.int_range()
        lo, hi = max(lo, -2.0 ** 40), min(hi, 2.0 ** 40)
        if src is dt.f16:
            lo, hi = max(lo, -60000.0), min(hi, 60000.0)
        fixed = [0.0, -0.0, 0.5, 0.99, -0.99, 1.5, -3.7, 3.7, 2.5, -2.5, 127.9, -128.9, 255.5]
        fixed = [v for v in fixed if lo - 1 < v < hi + 1]
        r = torch.rand(n - len(fixed), generator=_gen(seed), dtype=torch.float64) * (hi - lo) + lo
        return torch.cat([torch.tensor(fixed, dtype=torch.float64), r]).to(src.container)
    v = vals(src, n, seed)
    if src.is_float:
        # Round-half-even ties of f32 -> bf16 / f16, and values past the f16 range.
        ties = torch.tensor([0x3F808000, 0x3F818000, 0xBF808000, 0x3F800FFF, 0x3F801000,
                             0x3F803000, 0x477FF000], dtype=torch.int64).to(torch.int32).view(torch.float32)
        extra = torch.cat([ties.double(), torch.tensor([1e6, -7e4, 65519.0, 65520.0, 3.0e38])])
        v = torch.cat([v[: n - len(extra)], extra.to(src.container)])
    return v


@pytest.mark.parametrize("to", DTYPES)
def test_cast_matrix(to: str) -> None:
    """cast from every C dtype into ``to`` in one multiplexed kernel."""
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
        m = g.add("eq", [sel, g.add_const(torch.tensor(k, dtype=torch.int32))])
        acc = g.add("where", [m, v, acc])
    g.set_outputs([acc])
    assert [k.kind for k in partition(g, cgen.CAPS).kernels] == ["fused"]
    n = len(DTYPES) * LANES
    inputs = []
    for k, s in enumerate(DTYPES):
        src = dt.get(s)
        x = torch.zeros(n, dtype=src.container)
        x[k * LANES:(k + 1) * LANES] = _cast_source_vals(src, T, LANES, k)
        inputs.append(x)
    inputs.append(torch.arange(n, dtype=torch.int32) // LANES)
    (got,), (want,) = build_and_compare(g, inputs)
    for k, s in enumerate(DTYPES):
        sl = slice(k * LANES, (k + 1) * LANES)
        # Every cast rounds once (or is exact), so every pair is bit-exact.
        assert_match(got[sl], want[sl], True, f"cast {s} -> {to} of {inputs[k][sl].tolist()}")


# ---- shapes, symbolic batch, broadcasting ----------------------------------------------------

BCAST = {  # name -> (type of the other operand or None for a constant, constant tensor)
    "scalar": torch.tensor(1.75),
    "row[5]": torch.linspace(-1, 1, 5),
    "[B,1,5]": None,
    "[B,7,1]": None,
    "[1,7,1]": torch.linspace(-2, 2, 7).reshape(1, 7, 1),
}


def _bcast_graph() -> Graph:
    """x: f32[B,7,5] against every broadcasting pattern, on either side of sub (which does not
    commute), plus a three-way where and a result larger than either operand."""
    g = Graph("bcast")
    x = g.add_input("f32[B,7,5]", "x")
    y1 = g.add_input("f32[B,1,5]", "y1")
    y7 = g.add_input("f32[B,7,1]", "y7")
    cond = g.add_input("bool[B,7,1]", "cond")
    others = {"[B,1,5]": y1, "[B,7,1]": y7}
    outs = []
    for i, (name, t) in enumerate(BCAST.items()):
        o = others[name] if t is None else g.add_const(t)
        outs.append(g.add("sub", [x, o] if i % 2 == 0 else [o, x]))
    outs.append(g.add("sub", [y7, x]))
    outs.append(g.add("where", [cond, x, g.add_const(torch.linspace(0, 4, 5))]))
    outs.append(g.add("mul", [y1, g.add_const(torch.linspace(1, 2, 7).reshape(7, 1))]))
    # the same patterns in integers (wrapping) and bf16 (rounded once)
    xi = g.add("cast", [x], {"to": "i32"})
    outs.append(g.add("mul", [g.add("cast", [y7], {"to": "i32"}), xi]))
    xb = g.add("cast", [x], {"to": "bf16"})
    outs.append(g.add("add", [xb, g.add_const(torch.linspace(-1, 1, 5), "bf16")]))
    g.set_outputs(outs)
    return g


def test_broadcast_patterns_symbolic_batch() -> None:
    g = _bcast_graph()
    cm = api.build_c(g)
    for B in (1, 3, 17, 1000):   # 1000: past the threshold, the loop runs on several threads
        xs = [torch.randn(B, 7, 5) * 1e5, torch.randn(B, 1, 5), torch.randn(B, 7, 1) * 1e5,
              torch.rand(B, 7, 1) > 0.5]
        got, want = cm(*xs), interp.run(g, *xs)
        for i, (a, b) in enumerate(zip(got, want)):
            assert_match(a, b, True, f"B={B} output {i} ({g.outputs[i].producer.op})")


def test_odd_static_shape() -> None:
    g = Graph("static")
    x = g.add_input("f32[3,7,5]", "x")
    r = g.add_input("f32[7,1]", "r")
    g.set_outputs([g.add("div", [g.add("exp", [x]), r]), g.add("maximum", [r, x])])
    xs = [torch.randn(3, 7, 5), torch.randn(7, 1)]
    got, want = build_and_compare(g, xs)
    assert_close(got[0], want[0])
    assert_match(got[1], want[1], True, "maximum", signed_zero=False)


# ---- fusion of chains ------------------------------------------------------------------------

def _chain(dname: str) -> tuple[Graph, list[str]]:
    g = Graph(f"chain_{dname}")
    x = g.add_input(f"{dname}[B,7,5]", "x")
    r = g.add_input(f"{dname}[B,7,1]", "r")
    if dname == "i32":
        w = g.add_const(torch.tensor([3, -5, 7, 1 << 20, -(1 << 30)], dtype=torch.int32))
        t = g.add("mul", [x, w])
        t = g.add("add", [t, r])
        t = g.add("bitwise_xor", [t, x])
        t = g.add("sub", [t, g.add_const(torch.tensor(2 ** 31 - 1, dtype=torch.int32))])
        t = g.add("neg", [t])
        ops = ["mul", "add", "bitwise_xor", "sub", "neg"]
    else:
        w = g.add_const(torch.linspace(-2, 2, 5), dname)
        t = g.add("mul", [x, w])
        t = g.add("tanh", [t])
        t = g.add("add", [t, x])
        t = g.add("sigmoid", [t])
        t = g.add("sub", [t, r])
        t = g.add("gelu", [t])
        ops = ["mul", "tanh", "add", "sigmoid", "sub", "gelu"]
    g.set_outputs([t])
    return g, ops


@pytest.mark.parametrize("dname", ["f32", "bf16", "i32"])
def test_chain_fuses_into_one_kernel(dname: str) -> None:
    g, ops = _chain(dname)
    sched = partition(g, cgen.CAPS)
    assert len(sched.kernels) == 1, str(sched)
    k = sched.kernels[0]
    assert k.kind == "fused" and k.ops == ops, str(sched)
    cm = api.build_c(g)
    d = dt.get(dname)
    for B in (1, 3, 17):
        if d.is_int:
            xs = [torch.randint(-2 ** 31, 2 ** 31 - 1, (B, 7, s), dtype=torch.int32) for s in (5, 1)]
        else:
            xs = [torch.randn(B, 7, s).to(d.container) for s in (5, 1)]
        # bf16: the kernel keeps intermediates in float, the interpreter rounds each op.
        assert_close(cm(*xs), interp.run(g, *xs)[0], what=f"{dname} chain B={B}")


# ---- semantics pinned by hand (independent of torch) -----------------------------------------

def _run1(op: str, ins: Sequence[torch.Tensor], attrs: dict[str, Any] | None = None,
          dtypes: Sequence[str] | None = None) -> torch.Tensor:
    g = Graph(op)
    vs = [g.add_input(TensorType(dt.get(n) if dtypes else dt.from_torch(t.dtype), tuple(t.shape)))
          for t, n in zip(ins, dtypes or [None] * len(ins))]
    g.set_outputs([g.add(op, vs, attrs or {})])
    return api.build_c(g)(*ins)


def test_semantics_by_hand() -> None:
    i8 = torch.int8
    assert _run1("add", [torch.tensor([127, -128], dtype=i8), torch.tensor([1, -1], dtype=i8)]).tolist() == [-128, 127]
    big = torch.tensor([2 ** 62, -2 ** 63], dtype=torch.int64)
    assert _run1("mul", [big, torch.tensor([4, -1], dtype=torch.int64)]).tolist() == [0, -2 ** 63]
    a = torch.tensor([7, -7, 7, -7], dtype=torch.int32)
    b = torch.tensor([2, 2, -2, -2], dtype=torch.int32)
    assert _run1("div", [a, b]).tolist() == [3, -3, -3, 3]
    assert _run1("mod", [a, b]).tolist() == [1, 1, -1, -1]               # sign of the divisor
    assert _run1("mod", [a, b], {"fmod": True}).tolist() == [1, -1, 1, -1]  # sign of the dividend
    r = _run1("round", [torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.5])])
    assert r.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 4.0] and bool(r[3].signbit())
    f = torch.tensor([-3.7, 3.7, -0.5, 0.0])
    assert _run1("cast", [f], {"to": "i32"}).tolist() == [-3, 3, 0, 0]
    z = torch.tensor([NAN, -0.0, 0.0, 1e-45, -INF])
    assert _run1("cast", [z], {"to": "bool"}).tolist() == [True, False, False, True, True]
    assert _run1("neg", [torch.tensor([0, 1], dtype=torch.uint8)]).tolist() == [0, 255]
    s = _run1("sign", [torch.tensor([-0.0, NAN, -3.0, 2.0])])
    assert math.isnan(s[1]) and s[[0, 2, 3]].tolist() == [0.0, -1.0, 1.0] and not bool(s[0].signbit())
    x = torch.tensor([NAN, -0.0, -1.0, 2.0])
    rl = _run1("relu", [x])
    assert math.isnan(rl[0]) and bool(rl[1].signbit()) and rl[2:].tolist() == [0.0, 2.0]
    # bf16 rounding of a product: 1.0078125 * 1.0078125 = 1.01568603515625 -> 1.015625 (RNE)
    h = torch.tensor([1.0078125], dtype=torch.bfloat16)
    assert _run1("mul", [h, h]).item() == 1.015625


def test_rank0_and_dead_code() -> None:
    """A 0-d graph, and a node nobody reads (its kernel renders empty and still runs)."""
    g = Graph("scalar")
    x = g.add_input("f32[]", "x")
    g.add("sin", [x])                      # dead
    g.set_outputs([g.add("neg", [g.add("exp", [x])])])
    got, want = build_and_compare(g, [torch.tensor(0.5)])
    assert_close(got[0], want[0])


def test_gelu_f32_relative_accuracy_in_the_tails() -> None:
    """The f32 gelu keeps relative accuracy where x Phi(x) is tiny (x down to -9, where
    1 + erf(x / sqrt 2) cancels) and near zero: within 1e-5 of x erfc(-x / sqrt 2) / 2
    computed in double (at x = -9 the f32 exponent -x^2 / 2 alone is off by ~2e-6); +inf stays +inf, -inf and NaN give NaN, -0 stays -0."""
    xs = torch.cat([torch.linspace(-9.0, 9.0, 4001), torch.tensor([1e-30, -1e-30, 1e-3, -1e-3])])
    got = api.build(_gelu_graph(xs.numel()), "c")(xs)
    want = torch.tensor([x * math.erfc(-x / math.sqrt(2.0)) / 2 for x in xs.double().tolist()], dtype=torch.float64)
    rel = (got.double() - want).abs() / want.abs().clamp_min(1e-300)
    assert rel.max().item() < 1e-5, f"worst relative error {rel.max().item():.3g} at x = {xs[rel.argmax()].item()}"
    special = api.build(_gelu_graph(4), "c")(
        torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0]))
    assert special[0].item() == float("inf") and special[1].isnan() and special[2].isnan()
    assert special[3].item() == 0.0 and math.copysign(1.0, special[3].item()) < 0


def _gelu_graph(n: int) -> Graph:
    g = Graph("gelu")
    g.set_outputs([g.add("gelu", [g.add_input(f"f32[{n}]", "x")])])
    return g


def _unary_graph(op: str, n: int) -> Graph:
    g = Graph(op)
    g.set_outputs([g.add(op, [g.add_input(f"f32[{n}]", "x")])])
    return g


def test_exp_and_silu_f32_over_the_whole_range() -> None:
    """The f32 exp (no input clamps: out-of-range x is handled by the fixups alone) stays
    within 2 ulp of the double exp between -86.5 and overflow, gives +inf above 88.72283 and 0
    below -87, and keeps NaN, also for huge |x| whose exponent would overflow an int. silu,
    computed as x / (1 + exp(-x)) like torch's, stays within 4e-7 (about 3 ulp) of the double
    silu (relative; absolute below 1e-30) and keeps torch's special values."""
    xs = torch.cat([torch.linspace(-86.5, 88.72, 20001), torch.linspace(-1.0, 1.0, 2001),
                    torch.tensor([88.72283, 88.7229, 89.0, 1e4, 3e38, -87.0001, -88.0, -1e4, -3e38])])
    got = api.build(_unary_graph("exp", xs.numel()), "c")(xs).double()
    want = torch.exp(xs.double())
    finite = (want > 1e-37) & (want < 3.4e38)      # results below ~1.2e-38 flush to 0
    ulp = (got[finite] - want[finite]).abs() / (want[finite] * 2.0 ** -23)
    assert ulp.max().item() < 2.0, f"{ulp.max().item():.2f} ulp at x = {xs[finite][ulp.argmax()].item()}"
    assert torch.isinf(got[xs > 88.72283]).all() and (got[xs < -87.0] == 0).all()
    special = api.build(_unary_graph("exp", 4), "c")(torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0]))
    assert special[0].item() == float("inf") and special[1].item() == 0.0 and special[2].isnan()
    assert special[3].item() == 1.0
    ys = torch.cat([torch.linspace(-100.0, 100.0, 40001), torch.tensor([-1e30, 1e30, -3e38, 3e38])])
    got = api.build(_unary_graph("silu", ys.numel()), "c")(ys).double()
    want = ys.double() / (1.0 + torch.exp(-ys.double()))
    err = (got - want).abs() / want.abs().clamp_min(1e-30)
    assert err.max().item() < 4e-7, f"silu {err.max().item():.3g} at x = {ys[err.argmax()].item()}"
    sx = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, -200.0])
    special = api.build(_unary_graph("silu", 5), "c")(sx)
    ts = torch.nn.functional.silu(sx)
    assert special[0].item() == float("inf") and special[1].isnan() == ts[1].isnan() and special[2].isnan()
    assert special[3].item() == 0.0 and special[4].item() == ts[4].item()
