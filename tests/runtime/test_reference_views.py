"""Reference kernels that return a view of their input (a same-shape expand or reshape) on the
C target: the buffer plan frees the input after the kernel, so the executor must not keep the
view as the output (a later kernel reused the bytes: BERT / Llama imported from ONNX, whose
attention masks go through a same-shape Expand, came out wrong by up to 100%)."""
from __future__ import annotations

import pytest
import torch

from scalefold.api import build
from scalefold.ir.parser import parse

GRAPH = """graph @g(%x: f32[2,8], %a: f32[2,8], %b: f32[8,8]) -> (f32[2,8]) {{
  %0: f32[2,8] = relu(%x)
  %1: f32[2,8] = {view}
  %2: f32[2,8] = matmul(%a, %b)
  %3: f32[2,8] = add(%2, %1)
  return %3
}}"""


@pytest.mark.parametrize("view", ["expand[shape=[2, 8]](%0)", "reshape[shape=[2, 8]](%0)"])
@pytest.mark.parametrize("target", ["c", "interp"])
def test_view_results_survive_buffer_reuse(view: str, target: str) -> None:
    g = parse(GRAPH.format(view=view))
    gen = torch.Generator().manual_seed(0)
    x, a, b = (torch.randn(*s, generator=gen) for s in ((2, 8), (2, 8), (8, 8)))
    cm = build(g, target)
    for _ in range(2):
        y = cm(x, a, b)
        assert torch.allclose(y, a @ b + x.relu(), atol=1e-5), (y - (a @ b + x.relu())).abs().max()
