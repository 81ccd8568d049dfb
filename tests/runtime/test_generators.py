"""Steps without inputs (``arange`` over a symbolic size) are made once per binding of the
sizes and copied at each call, on the CPU too: results stay right for every size, and a caller
writing into an output cannot change later calls."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import scalefold as sf
from scalefold.ir.ops import registry


class Positions(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.arange(x.shape[0]), x + torch.arange(x.shape[0])[:, None]


def test_generator_outputs_per_size_and_not_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    op = registry.get_op("arange")
    orig, calls = op.reference, []

    def counted(xs, attrs):
        calls.append(1)
        return orig(xs, attrs)
    monkeypatch.setattr(op, "reference", counted)
    cm = sf.compile(Positions(), (torch.zeros(5, 3),), dynamic_shapes=({0: Dim("n", min=2, max=64)},),
                    target="c")
    assert ("reference", "arange") in [(k.kind, k.nodes[0].op) for k in cm.schedule.kernels]
    for n in (5, 7, 5, 7, 5):
        x = torch.randn(n, 3)
        a, b = cm(x)
        assert torch.equal(a, torch.arange(n))
        assert torch.equal(b, x + torch.arange(n, dtype=x.dtype)[:, None])
        a.add_(100)                       # the caller owns its outputs
        b.add_(100)
    made = len(calls)
    for _ in range(3):
        cm(torch.randn(7, 3))
    assert len(calls) == made, "a generator ran again for a size already bound"
