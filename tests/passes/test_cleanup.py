"""Cleanup passes beyond the golden cases: size guard, symbolic shapes, outputs, fixpoint."""
from __future__ import annotations

import torch

from harness import assert_close
from scalefold.ir.parser import parse
from scalefold.passes import PassManager, run_pipeline
from scalefold.runtime.interp import run


def test_folded_and_bypassed_values_can_be_graph_outputs() -> None:
    g = parse("""graph @g(%x: f32[2]) -> (f32[2], f32[2]) {
  %0: f32[2] = identity(%x)
  %1: f32[2] = mul(#a, #a)
  return %0, %1
}
#a = const f32[2] [1.0, 3.0]
""")
    out = run_pipeline(g, "cleanup")
    assert out.nodes == [] and out.outputs[0] is out.inputs[0]
    assert out.outputs[1].const.tolist() == [1.0, 9.0]
    assert parse(str(out)) == out
    x = torch.randn(2)
    for a, e in zip(run(out, x), run(g, x)):
        assert_close(a, e)


def test_fold_size_guard_and_symbolic_shapes() -> None:
    g = parse("""graph @g(%x: f32[B,4]) -> (f32[40,40], f32[B,4], f32[16]) {
  %0: f32[40,40] = tile[repeats=[20, 20]](#a)
  %1: f32[B,4] = expand[shape=[B, 4]](#r)
  %2: f32[B,4] = add(%x, %1)
  %3: f32[4,4] = tile[repeats=[2, 2]](#a)
  %4: f32[16] = reshape[shape=[16]](%3)
  return %0, %2, %4
}
#a = const f32[2,2] [[1.0, 2.0], [3.0, 4.0]]
#r = const f32[4] [1.0, 2.0, 3.0, 4.0]
""")
    pm = PassManager("fold_constants")
    out = pm.run(g)
    # A 1600-element tile of 4 elements would grow the weights; a symbolic expand cannot fold;
    # the 16-element tile and its reshape are small.
    assert [n.op for n in out.nodes] == ["tile", "expand", "add"]
    assert pm.counters.get("fold_constants", "fold_constant") == 2
    x = torch.randn(3, 4)
    for a, e in zip(run(out, x), run(g, x)):
        assert_close(a, e)


def test_cleanup_reaches_a_fixpoint_that_needs_several_rounds() -> None:
    # cse merges the two exps only after the identity is bypassed; then the sub of equal
    # values stays (not an identity), and dce removes what the merges left dead.
    g = parse("""graph @g(%x: f32[3]) -> (f32[3]) {
  %0: f32[3] = identity(%x)
  %1: f32[3] = exp(%x)
  %2: f32[3] = exp(%0)
  %3: f32[3] = sub(%1, %2)
  %4: f32[3] = add(%3, #z)
  return %4
}
#z = const f32[3] zeros
""")
    pm = PassManager("cleanup")
    out = pm.run(g)
    assert [n.op for n in out.nodes] == ["exp", "sub"]
    assert pm.counters["cleanup"] == {"identity_identity": 1, "identity_add": 1,
                                      "common_subexpr": 1}
    assert PassManager("cleanup").run(out) == out  # idempotent


def test_cast_with_other_dtype_and_real_transpose_stay() -> None:
    g = parse("""graph @g(%x: f32[2,3]) -> (f16[2,3], f32[3,2]) {
  %0: f16[2,3] = cast[to="f16"](%x)
  %1: f32[3,2] = transpose[perm=[1, 0]](%x)
  return %0, %1
}
""")
    out = run_pipeline(g, "cleanup")
    assert [n.op for n in out.nodes] == ["cast", "transpose"]
