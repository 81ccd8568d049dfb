"""The Triton executor across new bindings of the sizes (a KV cache growing each call, then
revisited lengths): steps reused from earlier bindings and the shared arena give the same
results as eager, with CUDA graphs captured for repeated bindings on a GPU. Under the Triton
interpreter on the CPU (``SF_TRITON_TEST_DEVICE=cuda``: on a GPU)."""
from __future__ import annotations

import os

DEVICE = os.environ.get("SF_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.export import Dim  # noqa: E402

import scalefold as sf  # noqa: E402
from scalefold.api import build_triton  # noqa: E402

pytestmark = [pytest.mark.usefixtures("kernel_cache_dir"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]


class Decode(torch.nn.Module):
    """One attention step over a cache: elementwise and row kernels on one token, attention
    and the cache concat over the whole cache."""

    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(16, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.nn.functional.silu(self.q(x))
        kv = torch.cat([past, h], 1)
        att = torch.softmax(h @ kv.transpose(1, 2) * 0.25, -1) @ kv
        return self.norm(att + h) * torch.sigmoid(h), kv


def test_growing_and_revisited_bindings_match_eager() -> None:
    torch.manual_seed(0)
    m = Decode().eval()
    g = sf.from_torch(m, (torch.randn(1, 1, 16), torch.randn(1, 4, 16)),
                      dynamic_shapes=(None, {1: Dim("P", min=2, max=256)}))
    cm = build_triton(g, device=DEVICE)
    ex = cm._runner
    # growing, then lengths seen before (twice each: a GPU captures a CUDA graph on the
    # second call of a binding), then a length longer than the arena planned for
    for i, p in enumerate([5, 6, 7, 8, 5, 5, 7, 7, 3, 40, 6]):
        gen = torch.Generator().manual_seed(i)
        x, past = torch.randn(1, 1, 16, generator=gen), torch.randn(1, p, 16, generator=gen)
        with torch.no_grad():
            want = m(x, past)
            got = cm(x.to(DEVICE), past.to(DEVICE))
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
    b5, b6 = (b for b in ex._bound.values() if b.env and list(b.env.values())[0] in (5, 6))
    assert any(s is t for s, t in zip(b5.steps, b6.steps))          # steps shared across bindings
    if ex.cuda_graphs:
        assert sum(b.cuda_graph is not None for b in ex._bound.values()) >= 2
