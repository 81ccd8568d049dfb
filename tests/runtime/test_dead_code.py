"""Graphs with dead nodes (results nothing reads) on every target.

A dead ``qlinear`` after ``quant_weights`` used to crash the C target inside the executor
(its template kernel wrote to an output no buffer was planned for) and the Triton target in
the W4 launcher; the schedule now leaves dead nodes out, without changing the user's graph.
Triton runs under the interpreter on the CPU.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402

from harness import assert_close  # noqa: E402
from scalefold.api import build  # noqa: E402
from scalefold.codegen import c as cgen  # noqa: E402
from scalefold.codegen.schedule import live_nodes, partition  # noqa: E402
from scalefold.ir import parse, print_graph  # noqa: E402
from scalefold.passes import run_pipeline  # noqa: E402
from scalefold.runtime.interp import run  # noqa: E402

# %1 is the only output; every other kind of kernel appears dead: linears (library, or qlinear
# templates once quantised; %7 is read by nothing at all, the case that crashed), a fused
# elementwise chain, a view and a reference op.
DEAD = """
graph @m(%x: f32[4,64]) -> (f32[4,64]) {
  %0: f32[4,64] = linear(%x, #w1, _)
  %1: f32[4,64] = relu(%0)
  %2: f32[4,64] = linear(%1, #w2, _)
  %3: f32[4,64] = sigmoid(%2)
  %4: f32[4,64] = mul(%3, %0)
  %5: f32[256] = reshape[shape=[256]](%1)
  %6: f32[4,64] = cumsum[axis=1, exclusive=false, reverse=false](%0)
  %7: f32[4,64] = linear(%1, #w2, _)
  return %1
}
#w1 = const f32[64,64] randn(seed=0, std=0.1)
#w2 = const f32[64,64] randn(seed=1, std=0.1)
"""

TARGETS = ["c", "interp", "triton"]
PIPELINES = {"float": [], "int4_g32": ["quant_weights(format=int4, group=32)"],
             "int8": ["quant_weights(format=int8, group=0)"]}


@pytest.fixture(scope="module")
def graphs() -> dict:
    g = parse(DEAD)
    return {name: run_pipeline(g, p) if p else g for name, p in PIPELINES.items()}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("form", list(PIPELINES))
def test_dead_nodes_run_on_every_target(graphs: dict, form: str, target: str) -> None:
    g = graphs[form]
    before = print_graph(g)
    cm = build(g, target)
    x = torch.randn(4, 64)
    want = run(g, x)[0]
    for _ in range(2):   # the second call reuses the bound arena
        assert_close(cm(x), want, rtol=1e-5, atol=1e-5)
    assert print_graph(g) == before   # the user's graph keeps its dead nodes
    if cm.schedule is not None:
        scheduled = {id(n) for k in cm.schedule.kernels for n in k.nodes}
        assert scheduled == {id(g.nodes[0]), id(g.nodes[1])}


def test_dead_qlinear_is_a_template_when_live() -> None:
    """The quantised dead linear is one the C target would render as a template kernel, so
    the test above covers the crashing path."""
    g = run_pipeline(parse(DEAD), ["quant_weights(format=int4, group=32)"])
    g.set_outputs([g.nodes[1].outputs[0], g.nodes[-1].outputs[0]])
    kinds = {n.op: k.kind for k in partition(g, cgen.CAPS).kernels for n in k.nodes}
    assert kinds["qlinear"] == "template"


def test_live_nodes() -> None:
    """Only what reaches an output is live, and a dead reader does not stop fusion."""
    assert [n.op for n in live_nodes(parse(DEAD))] == ["linear", "relu"]
    g = parse("""
graph @m(%x: f32[4,64]) -> (f32[4,64]) {
  %0: f32[4,64] = linear(%x, #w1, _)
  %1: f32[4,64] = relu(%0)
  %2: f32[4,64] = sin(%0)
  %3: f32[4,64] = neg(%1)
  return %3
}
#w1 = const f32[64,64] randn(seed=0, std=0.1)
""")
    ks = partition(g, cgen.CAPS).kernels
    # relu is the linear's only live reader, so it runs as the GEMM's post-op
    assert [(k.kind, k.ops) for k in ks] == [("library", ["linear", "relu"]), ("fused", ["neg"])]
