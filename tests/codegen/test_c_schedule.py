"""Kernel partition and buffer plan of the C target: fusion groups, views, arena reuse without
overlap, and deterministic rendering."""
from __future__ import annotations

import random

import pytest
import torch
from harness import assert_close

from scalefold import api
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import Schedule, partition, plan_buffers
from scalefold.ir.graph import Graph, Value
from scalefold.ir.parser import parse
from scalefold.ir.types import sym
from scalefold.runtime import interp

pytestmark = pytest.mark.usefixtures("kernel_cache_dir")

B = sym("B")


def groups(s: Schedule) -> list[tuple[str, list[str]]]:
    return [(k.kind, k.ops) for k in s.kernels]


def check_numerics(g: Graph, batches=(1, 3)) -> None:
    cm = api.build_c(g)
    for b in batches:
        xs = [torch.randn(v.type.concrete({B: b})) for v in g.inputs]
        got = cm(*xs)
        got = list(got) if isinstance(got, tuple) else [got]
        for i, (a, e) in enumerate(zip(got, interp.run(g, *xs))):
            assert_close(a, e, what=f"{g.name} output {i} B={b}", atol=1e-5)


# ---- fusion groups ---------------------------------------------------------------------------

def mlp_block() -> Graph:
    g = Graph("mlp")
    x = g.add_input("f32[B,16]", "x")
    w1, b1 = g.add_const(torch.randn(32, 16) * 0.2), g.add_const(torch.randn(32))
    w2, b2 = g.add_const(torch.randn(16, 32) * 0.2), g.add_const(torch.randn(16))
    h = g.add("gelu", [g.add("linear", [x, w1, b1])])
    y = g.add("add", [g.add("linear", [h, w2, b2]), x])
    g.set_outputs([g.add("layer_norm", [y, g.add_const(torch.rand(16) + 0.5), g.add_const(torch.randn(16))])])
    return g


def attention_scores() -> Graph:
    g = Graph("attn")
    q, k, v = (g.add_input("f32[B,8,16]", n) for n in "qkv")
    mask = g.add_input("f32[B,1,8]", "mask")
    s = g.add("matmul", [q, g.add("transpose", [k], {"perm": (0, 2, 1)})])
    p = g.add("softmax", [g.add("add", [g.add("mul", [s, g.add_const(torch.tensor(0.25))]), mask])])
    g.set_outputs([g.add("matmul", [p, v])])
    return g


def multi_reader() -> Graph:
    g = Graph("multi")
    x = g.add_input("f32[B,7,5]", "x")
    e = g.add("exp", [x])                          # two readers: its own kernel
    a = g.add("add", [e, g.add_const(torch.tensor(1.0))])
    b = g.add("mul", [e, g.add_const(torch.tensor(2.0))])
    t = g.add("tanh", [x])                         # a graph output that is also read
    g.set_outputs([g.add("sub", [g.add("add", [a, b]), t]), t])
    return g


def shapes_and_rows() -> Graph:
    g = Graph("rows")
    x = g.add_input("f32[B,7,5]", "x")
    y = g.add_input("f32[B,7,1]", "y")
    s = g.add("exp", [y])                          # smaller loop than its consumer: not fused
    m = g.add("reduce_max", [x], {"axes": (-1,), "keepdims": True})   # likewise
    z = g.add("sub", [g.add("add", [x, s]), m])
    g.set_outputs([g.add("softmax", [g.add("layer_norm", [z])])])      # a row op does not absorb a row op
    return g


@pytest.mark.parametrize("build,expected", [
    # gelu and the residual add ride on the linears as oneDNN post-ops
    (mlp_block, [("library", ["linear", "gelu"]), ("library", ["linear", "add"]),
                 ("fused", ["layer_norm"])]),
    (attention_scores, [("view", ["transpose"]), ("library", ["matmul"]),
                        ("fused", ["mul", "add", "softmax"]), ("library", ["matmul"])]),
    (multi_reader, [("fused", ["exp"]), ("fused", ["tanh"]), ("fused", ["add", "mul", "add", "sub"])]),
    (shapes_and_rows, [("fused", ["exp"]), ("fused", ["reduce_max"]), ("fused", ["add", "sub", "layer_norm"]),
                       ("fused", ["softmax"])]),
])
def test_fusion_groups(build, expected) -> None:
    g = build()
    s = partition(g, cgen.CAPS)
    assert groups(s) == expected, str(s)
    check_numerics(g)


def test_multi_reader_value_is_written_once() -> None:
    """A value read by two kernels is an output of its producer's kernel and an input of both
    readers, never recomputed inside them."""
    g = multi_reader()
    s = partition(g, cgen.CAPS)
    e = g.nodes[0].outputs[0]
    writers = [k for k in s.kernels if any(o is e for o in k.outputs)]
    readers = [k for k in s.kernels if any(v is e for v in k.inputs)]
    assert len(writers) == 1 and len(readers) == 1 and writers[0].ops == ["exp"]
    assert sum(k.ops.count("exp") for k in s.kernels) == 1


# ---- views -----------------------------------------------------------------------------------

def test_views_alias_their_base() -> None:
    g = Graph("views")
    x = g.add_input("f32[B,8]", "x")
    a = g.add("exp", [x])
    r = g.add("reshape", [a], {"shape": (B, 2, 4)})           # read by a kernel: planned as a's alias
    n = g.add("neg", [g.add("reshape", [g.add("neg", [r]), ], {"shape": (B, 8)})])
    out_view = g.add("reshape", [g.add("sin", [x]), ], {"shape": (B, 4, 2)})  # an output that is a view
    b = g.add("cos", [x])
    c = g.add("add", [b, b])                                  # b: two reads, its own arena slot
    g.set_outputs([n, out_view, c])
    s = partition(g, cgen.CAPS)
    assert [k.kind for k in s.kernels].count("view") == 3
    plan = plan_buffers(s, {B: 4}, exclude=g.outputs)
    assert plan.alias[id(r)] == id(a) and id(r) not in plan.offsets and id(a) in plan.offsets
    # The base of an output view lives to the end: nothing planned later may reuse its bytes.
    base = plan.alias[id(out_view)]
    lo, hi = plan.offsets[base], plan.offsets[base] + plan.sizes[base]
    later = [v for v in (b,) if id(v) in plan.offsets]
    for v in later:
        o = plan.offsets[id(v)]
        assert o + plan.sizes[id(v)] <= lo or o >= hi, "an output view's base was overwritten"
    check_numerics(g, batches=(1, 4))


# ---- buffer plan -----------------------------------------------------------------------------

def chain(n: int) -> Graph:
    g = Graph("chain")
    v = g.add_input("f32[B,64]", "x")
    for i in range(2 * n):
        # op(v, v) reads v twice: each step is its own kernel with its own output buffer
        v = g.add("maximum" if i % 2 else "add", [v, v])
    g.set_outputs([v])
    return g


def test_plan_reuses_memory_on_a_chain() -> None:
    g = chain(6)
    s = partition(g, cgen.CAPS)
    assert len(s.kernels) == 12
    plan = plan_buffers(s, {B: 16}, exclude=g.outputs)
    one = 16 * 64 * 4
    assert plan.naive_bytes == 11 * one
    assert plan.arena_bytes <= 2 * one < plan.naive_bytes, (plan.arena_bytes, plan.naive_bytes)
    check_numerics(g, batches=(16,))


def random_graph(seed: int, n: int) -> Graph:
    """A seeded random DAG: unary and binary elementwise ops, views, row ops with keepdims
    feeding broadcasts, several outputs, values read once or many times."""
    rnd = random.Random(seed)
    g = Graph(f"rand{seed}")
    pool: list[Value] = [g.add_input("f32[B,6,8]", "x"), g.add_input("f32[B,6,8]", "y")]
    for _ in range(n):
        a, b = rnd.choice(pool[-6:]), rnd.choice(pool)
        k = rnd.randrange(8)
        if k == 0:
            v = g.add(rnd.choice(["tanh", "sin", "sigmoid", "neg"]), [a])
        elif k in (1, 2):
            v = g.add(rnd.choice(["add", "mul", "sub", "maximum"]), [a, b])
        elif k == 3:
            v = g.add("reshape", [g.add("transpose", [g.add("reshape", [a], {"shape": (B, 8, 6)})],
                                        {"perm": (0, 1, 2)})], {"shape": (B, 6, 8)})
        elif k == 4:
            v = g.add("softmax", [a])
        elif k == 5:
            v = g.add("sub", [a, g.add("reduce_mean", [a], {"axes": (-1,), "keepdims": True})])
        elif k == 6:
            v = g.add("layer_norm", [g.add("add", [a, b])], {"axis": -2})
        else:
            v = g.add("mul", [a, g.add_const(torch.randn(8))])
        pool.append(v)
    readers = {id(v) for nd in g.nodes for v in nd.inputs if v is not None}
    outs = [v for v in pool[2:] if id(v) not in readers] + [pool[len(pool) // 2]]
    g.set_outputs(outs)
    return g


def _intervals(s: Schedule, excluded: set[int]) -> dict[int, tuple[int, int]]:
    """Independent liveness: step of definition to last step reading the value or any view of
    it; values viewed by a graph output live to the end."""
    base: dict[int, int] = {}
    for k in s.kernels:
        if k.kind == "view":
            src = k.nodes[0].inputs[0]
            base[id(k.nodes[0].outputs[0])] = base.get(id(src), id(src))
    live: dict[int, list[int]] = {}
    for step, k in enumerate(s.kernels):
        if k.kind != "view":
            for o in k.outputs:
                live[id(o)] = [step, step]
        for v in k.inputs:
            b = base.get(id(v), id(v))
            if b in live:
                live[b][1] = max(live[b][1], step)
    for v in excluded:
        if v in base and base[v] in live:
            live[base[v]][1] = len(s.kernels)
    return {v: (a, b) for v, (a, b) in live.items()}


@pytest.mark.parametrize("seed", range(6))
def test_plan_never_overlaps_live_values(seed: int) -> None:
    g = random_graph(seed, 40)
    s = partition(g, cgen.CAPS)
    excl = {id(v) for v in g.outputs}
    for env in ({B: 1}, {B: 5}):
        plan = plan_buffers(s, env, exclude=g.outputs)
        iv = _intervals(s, excl)
        placed = [v for v in plan.offsets]
        assert set(placed) == {v for v in iv if v not in excl}
        for i, u in enumerate(placed):
            assert plan.offsets[u] % 64 == 0 and plan.offsets[u] + plan.sizes[u] <= plan.arena_bytes
            for w in placed[i + 1:]:
                (s1, e1), (s2, e2) = iv[u], iv[w]
                if e1 < s2 or e2 < s1:
                    continue
                ou, ow = plan.offsets[u], plan.offsets[w]
                assert ou + plan.sizes[u] <= ow or ow + plan.sizes[w] <= ou, \
                    f"seed {seed}: two live values overlap in the arena"
        assert plan.arena_bytes <= plan.naive_bytes
    if seed < 2:
        check_numerics(g, batches=(1, 5))


# ---- determinism -----------------------------------------------------------------------------

def test_rendering_is_deterministic() -> None:
    g = shapes_and_rows()
    one = [ck.source for ck in cgen.render(partition(g, cgen.CAPS))]
    two = [ck.source for ck in cgen.render(partition(g, cgen.CAPS))]
    assert one == two
    for build in (shapes_and_rows, multi_reader, lambda: parse(str(mlp_block_small()))):
        g = build()
        text = str(g)
        g1, g2 = parse(text), parse(text)
        r0 = [(ck.name, ck.source, ck.params) for ck in cgen.render(partition(g, cgen.CAPS))]
        r1 = [(ck.name, ck.source, ck.params) for ck in cgen.render(partition(g1, cgen.CAPS))]
        r2 = [(ck.name, ck.source, ck.params) for ck in cgen.render(partition(g2, cgen.CAPS))]
        assert r0 == r1 == r2, f"{g.name}: sources differ between equal graphs"


def mlp_block_small() -> Graph:
    """A block whose constants print as literals, so its text parses back on its own."""
    g = Graph("small")
    x = g.add_input("f32[B,4]", "x")
    w = g.add_const(torch.arange(16, dtype=torch.float32).reshape(4, 4) / 8)
    h = g.add("gelu", [g.add("linear", [x, w])])
    g.set_outputs([g.add("rms_norm", [g.add("add", [h, x]), g.add_const(torch.ones(4))])])
    return g


# ---- vectorisable inner loops ----------------------------------------------------------------

def _inner_loop_lines(src: str) -> list[str]:
    """The lines of every ``for (int64_t j ...)`` loop (header and body)."""
    out, depth = [], 0
    for line in src.splitlines():
        if depth == 0 and "for (int64_t j" in line:
            out.append(line)
            depth = line.count("{") - line.count("}")
            continue
        if depth > 0:
            out.append(line)
            depth += line.count("{") - line.count("}")
    return out


def test_common_inner_loops_have_no_division() -> None:
    g = Graph("vec")
    x = g.add_input("f32[B,S,64]", "x")
    others = [g.add_const(torch.randn(64)), g.add_input("f32[B,1,64]", "a"),
              g.add_input("f32[B,S,1]", "b"), g.add_input("f32[B,1,1]", "c"),
              g.add_const(torch.tensor(2.0)), g.add_input("f32[S,64]", "d")]
    outs = [g.add("mul", [x, o]) for o in others]
    w = g.add_const(torch.rand(64))
    outs.append(g.add("mul", [g.add("layer_norm", [g.add("add", [x, others[1]]), w, w]), others[0]]))
    outs.append(g.add("mul", [g.add("softmax", [g.add("mul", [x, others[2]])]), others[4]]))
    outs.append(g.add("reduce_sum", [g.add("exp", [x])], {"axes": (-1,), "keepdims": True}))
    g.set_outputs(outs)
    rendered = cgen.render(partition(g, cgen.CAPS))
    assert len(rendered) == len(outs)
    for ck in rendered:
        body = ck.source.split("void sf_kernel")[1]
        inner = _inner_loop_lines(body)
        assert inner, ck.kernel.describe()
        bad = [ln for ln in inner if "%" in ln or "/ q[" in ln or "/ INT64_C" in ln]
        assert not bad, f"{ck.kernel.describe()}: division in an inner loop:\n" + "\n".join(bad)
    # [B,1,1] and [S,64] operands leave whole S*64 blocks as one contiguous inner loop
    for i in (3, 5):
        assert "N = q[" in rendered[i].source and "N = INT64_C(64)" not in rendered[i].source
    check_numerics_sym(g)


def check_numerics_sym(g: Graph) -> None:
    S = sym("S")
    cm = api.build_c(g)
    for b, s in ((1, 1), (3, 7)):
        xs = [torch.randn(v.type.concrete({B: b, S: s})) for v in g.inputs]
        for i, (a, e) in enumerate(zip(cm(*xs), interp.run(g, *xs))):
            assert_close(a, e, what=f"output {i} B={b} S={s}", atol=1e-5)


def test_parallel_residual_add_is_one_gemms_epilogue() -> None:
    """mlp(ln2(x)) + attn_out(ln1(x)) (GPT-NeoX, Phi): both GEMMs feed the one add; it must be
    the epilogue of one of them only (claimed by both, the two kernels waited on each other
    and ordering them failed with a cycle)."""
    g = parse("""graph @par(%x: f32[B,16]) -> (f32[B,16]) {
  %0: f32[B,16] = layer_norm[axis=-1, eps=1e-05](%x, #g0, #b0)
  %1: f32[B,32] = linear(%0, #w1, #c1)
  %2: f32[B,32] = gelu[approximate="none"](%1)
  %3: f32[B,16] = linear(%2, #w2, #c2)
  %4: f32[B,16] = layer_norm[axis=-1, eps=1e-05](%x, #g1, #b1)
  %5: f32[B,16] = linear(%4, #w3, #c3)
  %6: f32[B,16] = add(%3, %5)
  return %6
}
#g0 = const f32[16] randn(seed=1)
#b0 = const f32[16] randn(seed=2)
#g1 = const f32[16] randn(seed=3)
#b1 = const f32[16] randn(seed=4)
#w1 = const f32[32,16] randn(seed=5, std=0.2)
#c1 = const f32[32] randn(seed=6)
#w2 = const f32[16,32] randn(seed=7, std=0.2)
#c2 = const f32[16] randn(seed=8)
#w3 = const f32[16,16] randn(seed=9, std=0.2)
#c3 = const f32[16] randn(seed=10)""")
    s = partition(g, cgen.CAPS)
    adds = [k for k in s.kernels if "add" in k.ops]
    assert len(adds) == 1 and adds[0].kind == "library"
    check_numerics(g)


@pytest.mark.parametrize("qd,qty", [("f4e2m1", ', qtype="f4e2m1"'), ("i4", ""), ("u4", ""), ("i8", "")])
def test_sub_byte_intermediates_get_a_byte_per_code(qd: str, qty: str) -> None:
    """4-bit codes live one per byte of their container at run time: the arena slot of a 4-bit
    intermediate (live across a matmul, so it is planned) must hold n bytes, not n / 2 (the C
    target raised a raw RuntimeError viewing it, e.g. for quant_weights(act_format=fp4_e2m1))."""
    plain = parse(f"""graph @q(%x: f32[B,64]) -> (f32[B,64]) {{
  %0: {qd}[B,64] = quantize[dtype="{qd}"](%x, #s)
  %1: f32[B,64] = dequantize[dtype="f32"{qty}](%0, #s)
  return %1
}}
#s = const f32[] 0.5
""")
    check_numerics(plain, batches=(1, 16))
    g = parse(f"""graph @q(%x: f32[B,64]) -> (f32[B,64]) {{
  %0: {qd}[B,64] = quantize[dtype="{qd}"](%x, #s)
  %t: f32[B,64] = tanh(%x)
  %m: f32[B,64] = matmul(%t, #w)
  %1: f32[B,64] = dequantize[dtype="f32"{qty}](%0, #s)
  %2: f32[B,64] = add(%1, %m)
  return %2
}}
#s = const f32[] 0.5
#w = const f32[64,64] randn(seed=0, std=0.1)
""")
    check_numerics(g, batches=(1, 16))
