"""Dynamic sizes that torch.export keeps symbolic but ties to the example through its shape
guards (frontend/torch.py ``_convert_or_pin``): they compile fixed at the example's sizes,
with a warning naming the inputs' dims, while the sizes the guards leave free stay dynamic."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import scalefold as sf
from scalefold.ir.errors import ShapeError


class PosEmbed(nn.Module):
    """A ViT-like fixed position table: H * W patches must number exactly 16."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2) + self.pos


def test_guarded_sizes_are_pinned_and_the_batch_stays_dynamic() -> None:
    m = PosEmbed().eval()
    x = torch.randn(2, 3, 4, 4)
    dyn = ({0: Dim("B"), 2: Dim("H"), 3: Dim("W")},)
    with pytest.warns(UserWarning, match=r"input 'x' dims 2, 3 are compiled fixed"):
        cm = sf.compile(m, (x,), target="c", dynamic_shapes=dyn)
    assert [str(d) for d in cm.graph.inputs[0].shape] == ["B", "3", "4", "4"]
    for b in (2, 5):
        x2 = torch.randn(b, 3, 4, 4)
        torch.testing.assert_close(cm(x2), m(x2))
    with pytest.raises(ShapeError, match="dim 2 is 2, expected 4"):
        cm(torch.randn(2, 3, 2, 8))


def test_unguarded_models_keep_their_dynamic_sizes() -> None:
    m = nn.Conv2d(3, 4, 3, padding=1).eval()
    with torch.no_grad():
        cm = sf.compile(m, (torch.randn(2, 3, 8, 8),), target="c",
                        dynamic_shapes=({0: Dim("B"), 2: Dim("H"), 3: Dim("W")},))
        assert [str(d) for d in cm.graph.inputs[0].shape] == ["B", "3", "H", "W"]
        x = torch.randn(2, 3, 5, 7)
        torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
