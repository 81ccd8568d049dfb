"""compile() and the module's weights: the passes never write to the weights they read, the
compiled model keeps its own copy of the ones it still uses, and the weights a pass replaces
(quantised, folded) are never copied."""
from __future__ import annotations

import pytest
import torch

import scalefold as sf
from scalefold import api


class Block(torch.nn.Module):
    """LayerNorm -> linear -> GELU -> linear: smooth / AWQ / OutlierTune / weight-only
    quantisation all find their patterns here (K = 64, two groups of 32 per row)."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = torch.nn.LayerNorm(64)
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))


class ConvBN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


PIPELINES = [
    (Block, "smooth(alpha=0.5)"),
    (Block, "awq_scales"),
    (Block, "outliertune"),
    (Block, "w8a8"),
    (Block, "quant_weights(format=int4, group=32)"),
    (Block, "quant_weights(format=int4, group=32, method=awq)"),
    (Block, "quant_weights(format=int4, group=32, rounding=gptq)"),
    (Block, "quant_weights(format=fp4_e2m1, group=32, method=search)"),
    (Block, "quant_weights(format=int8, group=0)"),
    (ConvBN, "fold_batchnorm"),
    (ConvBN, "fold_batchnorm,fold_constant_scales"),
]


def _inputs(cls: type) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (4, 10, 64) if cls is Block else (2, 3, 12, 12)
    return [torch.randn(shape, generator=g) for _ in range(5)]


@pytest.mark.parametrize("cls,passes", PIPELINES, ids=[p for _, p in PIPELINES])
def test_passes_leave_the_module_alone_and_the_result_owns_its_weights(cls: type, passes: str,
                                                                       monkeypatch) -> None:
    torch.manual_seed(0)
    m = cls().eval()
    if cls is ConvBN:
        with torch.no_grad():   # non-trivial statistics, so that folding changes the weights
            m.bn.running_mean.uniform_(-1, 1)
            m.bn.running_var.uniform_(0.5, 2)
            m.bn.weight.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    xs = _inputs(cls)
    copied: list[int] = []
    real = api._own_weights
    monkeypatch.setattr(api, "_own_weights", lambda g, mod: copied.append(real(g, mod)) or copied[-1])
    cm = sf.compile(m, (xs[0],), passes=passes, calibration=[(x,) for x in xs[1:]], target="c")
    after = m.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), (passes, k)          # bit for bit: no pass wrote to it
    y0 = cm(xs[0])
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0).add_(1.0)
    assert torch.equal(cm(xs[0]), y0), passes               # later updates do not leak in
    # only what the compiled graph still reads is copied: never the replaced float weights
    replaced = {"fc1.weight", "fc2.weight"} if "quant_weights" in passes or "w8a8" in passes \
        or "outliertune" in passes else {"conv.weight"} if "fold_batchnorm" in passes else set()
    assert len(copied) == 1
    kept = sum(v.numel() * v.element_size() for k, v in before.items() if k not in replaced
               and v.dtype.is_floating_point)
    assert copied[0] <= kept, (passes, copied[0], kept)
