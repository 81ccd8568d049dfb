"""Run-time failures inside a compiled model (an index out of range, a bad input tensor) are
ScalefoldErrors naming the node, on the generated-code targets as on the interpreter."""
from __future__ import annotations

import pytest
import torch

import scalefold as sf
from scalefold.ir import parse

GATHER = """
graph @g(%i: i64[N]) -> (f32[N,10]) {
  %0: f32[N,10] = embedding(#d, %i)
  %1: f32[N,10] = relu(%0)
  return %1
}
#d = const f32[4,10] randn(seed=0)
"""


@pytest.mark.usefixtures("kernel_cache_dir")
@pytest.mark.parametrize("target", ["interp", "c"])
def test_out_of_range_index_names_the_node(target: str) -> None:
    g = parse(GATHER)
    cm = sf.compile(g, target=target)
    assert cm(torch.tensor([0, 3])).shape == (2, 10)
    with pytest.raises(sf.ExecutionError, match=r"node .*\(embedding\) failed: IndexError"):
        cm(torch.tensor([0, 4]))
    # the compiled model still runs afterwards
    assert torch.equal(cm(torch.tensor([1])), torch.relu(g.nodes[0].inputs[0].const[1:2]))


@pytest.mark.usefixtures("kernel_cache_dir")
def test_meta_input_is_a_shape_error_naming_the_input() -> None:
    cm = sf.compile(parse(GATHER), target="c")
    with pytest.raises(sf.ShapeError, match="input 'i'"):
        cm(torch.empty(2, dtype=torch.int64, device="meta"))
