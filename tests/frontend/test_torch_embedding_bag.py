"""nn.EmbeddingBag / F.embedding_bag (frontend/aten_embedding_bag.py): every mode, offsets
with empty bags, include_last_offset, per_sample_weights, padding_idx, 2-D input, dynamic
sizes; against torch on the interpreter, the C target and onnxruntime (scalefold's export)."""
from __future__ import annotations

from typing import Any, Callable

import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import scalefold as sf
from scalefold.ir.ops import get_op
from scalefold.runtime import interp

W = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))


class Bag(nn.Module):
    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, i: torch.Tensor, o: Any = None) -> torch.Tensor:
        return self.fn(i, o)


CASES = {
    "sum_2d": (lambda i, o: F.embedding_bag(i, W, mode="sum"), torch.tensor([[1, 2, 3], [4, 5, 6]]), None),
    "mean_2d": (lambda i, o: F.embedding_bag(i, W, mode="mean"), torch.tensor([[1, 2, 3], [9, 5, 0]]), None),
    "max_empty_bag": (lambda i, o: F.embedding_bag(i, W, o, mode="max"),
                      torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.tensor([0, 2, 2, 5])),
    "mean_padding": (lambda i, o: F.embedding_bag(i, W, o, mode="mean", padding_idx=2),
                     torch.tensor([1, 2, 3, 2, 5, 6, 2]), torch.tensor([0, 2, 4, 6])),
    "sum_weights_last_offset": (lambda i, o: F.embedding_bag(i, W, o, mode="sum", include_last_offset=True,
                                                             per_sample_weights=torch.arange(7.0) - 2),
                                torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.tensor([0, 2, 2, 7])),
    "max_all_padding_bag": (lambda i, o: F.embedding_bag(i, W, o, mode="max", padding_idx=3),
                            torch.tensor([3, 3, 1, 4]), torch.tensor([0, 2, 4])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_embedding_bag_matches_torch(name: str, tmp_path) -> None:
    fn, i, o = CASES[name]
    args = (i,) if o is None else (i, o)
    g = sf.from_torch(Bag(fn), args)
    want = fn(i, o)
    torch.testing.assert_close(interp.run(g, *args)[0], want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sf.compile(g, target="c")(*args), want, rtol=1e-6, atol=1e-6)
    sf.to_onnx(g, tmp_path / "m.onnx")
    s = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(None, {x.name: t.numpy() for x, t in zip(s.get_inputs(), args)})[0]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-6, atol=1e-6)


def test_module_with_dynamic_indices_and_bags() -> None:
    m = nn.EmbeddingBag(10, 4, mode="mean").eval()
    i, o = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 1, 3])
    cm = sf.compile(m, (i, o), target="c", dynamic_shapes=({0: Dim("N")}, {0: Dim("NB")}))
    for i2, o2 in ((i, o), (torch.tensor([9, 8, 7, 6, 5, 4, 3, 2]), torch.tensor([0, 3, 3, 4, 7]))):
        torch.testing.assert_close(cm(i2, o2), m(i2, o2), rtol=1e-6, atol=1e-6)



@pytest.mark.parametrize("module", [nn.Embedding(10, 4), nn.EmbeddingBag(10, 4, mode="sum")],
                         ids=["embedding", "embedding_bag"])
def test_negative_ids_fail_as_in_torch(module: nn.Module) -> None:
    """torch refuses negative ids; the compiled model must not wrap them to rows from the end,
    while an ONNX Gather (wrap on) still counts them from V."""
    i = torch.tensor([[1, 2, 3]])
    cm = sf.compile(module.eval(), (i,), target="c")
    torch.testing.assert_close(cm(i), module(i))
    with pytest.raises((IndexError, RuntimeError)):  # torch: IndexError / RuntimeError
        module(torch.tensor([[1, -1, 3]]))
    with pytest.raises(sf.ScalefoldError, match=r"indices must lie in \[0, 10\) \(axis 0 has 10 "
                       r"entries\), got indices from -1 to 3"):
        cm(torch.tensor([[1, -1, 3]]))
    op = get_op("embedding")
    torch.testing.assert_close(op.reference([W, torch.tensor([-1])], op.bind_attrs({}, where="t")),
                               W[9:])
