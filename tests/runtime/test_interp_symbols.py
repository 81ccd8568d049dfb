"""Symbolic dims: printing, running at several sizes, and ShapeError naming the input."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from scalefold.ir.errors import ExecutionError, ShapeError
from scalefold.ir.parser import parse
from scalefold.runtime.interp import Interpreter, bind_symbols, run
from scalefold.ir.types import sym

TEXT = """
graph @sym(%x: f32[B,S,8], %y: f32[B,S,8]) -> (f32[B,S,8]) {
  %0: f32[B,S,8] = add(%x, %y)
  %1: f32[B,S,8] = relu(%0)
  return %1
}
"""


def test_symbolic_graph_prints_symbols() -> None:
    g = parse(TEXT)
    text = str(g)
    assert "%x: f32[B,S,8]" in text and "%y: f32[B,S,8]" in text
    assert "%1: f32[B,S,8] = relu(%0)" in text
    assert [s.name for s in g.symbols] == ["B", "S"]


@pytest.mark.parametrize("b,s", [(1, 3), (5, 17)])
def test_runs_at_several_sizes(b: int, s: int) -> None:
    g = parse(TEXT)
    x, y = torch.randn(b, s, 8), torch.randn(b, s, 8)
    assert_close(run(g, x, y)[0], torch.relu(x + y))
    assert bind_symbols(g, [x, y]) == {sym("B"): b, sym("S"): s}


def test_wrong_static_dim_names_input() -> None:
    g = parse(TEXT)
    with pytest.raises(ShapeError, match=r"input 'y' \(#1\): dim 2 is 9, expected 8"):
        run(g, torch.randn(2, 3, 8), torch.randn(2, 3, 9))


def test_inconsistent_symbol_names_input() -> None:
    g = parse(TEXT)
    with pytest.raises(ShapeError, match=r"input 'y' \(#1\): dim 1 is 4, but S = 3"):
        run(g, torch.randn(2, 3, 8), torch.randn(2, 4, 8))


def test_wrong_rank_and_dtype_and_count() -> None:
    g = parse(TEXT)
    with pytest.raises(ShapeError, match=r"input 'x' \(#0\): expected rank 3"):
        run(g, torch.randn(2, 8), torch.randn(2, 3, 8))
    with pytest.raises(ShapeError, match=r"input 'x' \(#0\): expected dtype f32"):
        run(g, torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 3, 8))
    with pytest.raises(ShapeError, match="takes 2 inputs, got 1"):
        run(g, torch.randn(2, 3, 8))


def test_compound_dim_is_solved_and_checked() -> None:
    g = parse("""
graph @c(%x: f32[N], %y: f32[2*N]) -> (f32[2*N]) {
  %0: f32[2*N] = relu(%y)
  return %0
}
""")
    assert bind_symbols(g, [torch.randn(3), torch.randn(6)]) == {sym("N"): 3}
    with pytest.raises(ShapeError, match=r"input 'y' \(#1\): dim 0 is 7, expected 2\*N = 6"):
        run(g, torch.randn(3), torch.randn(7))
    g2 = parse("""
graph @c(%y: f32[2*N]) -> (f32[2*N]) {
  %0: f32[2*N] = relu(%y)
  return %0
}
""")
    assert bind_symbols(g2, [torch.randn(8)]) == {sym("N"): 4}
    with pytest.raises(ShapeError, match="fits no positive integer N"):
        run(g2, torch.randn(7))


def test_inputs_by_name_and_missing_name() -> None:
    g = parse(TEXT)
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    assert_close(Interpreter(g).run({"x": x, "y": y})[0], torch.relu(x + y))
    with pytest.raises(ShapeError, match="missing input"):
        Interpreter(g).run({"x": x})


def test_declared_type_mismatch_is_caught_at_run_time() -> None:
    # The text claims relu returns f32[B,S,4]; the check names the node.
    g = parse("""
graph @bad(%x: f32[B,S,8]) -> (f32[B,S,4]) {
  %0: f32[B,S,4] = relu(%x)
  return %0
}
""")
    with pytest.raises(ExecutionError, match="relu"):
        run(g, torch.randn(1, 2, 8))


def test_intermediates_are_freed_after_last_use() -> None:
    g = parse(TEXT)
    it = Interpreter(g)
    freed = [[v for v in step] for step in it._free_after]
    # %0 is read only by relu (step 1): it is freed there, and the output %1 never is.
    assert freed[1] == [g.nodes[0].outputs[0]]
    assert all(g.outputs[0] not in step for step in freed)
