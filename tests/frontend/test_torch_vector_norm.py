"""torch.linalg.vector_norm (what F.normalize and torch.norm export to; EdgeNeXt's attention
uses it): every ord, dim and keepdim form, against torch, on the interpreter and the C target."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scalefold as sf


class Norm(torch.nn.Module):
    def __init__(self, p: float, dim, keep: bool, dtype: torch.dtype | None = None):
        super().__init__()
        self.p, self.dim, self.keep, self.dtype = p, dim, keep, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x, self.p, dim=self.dim, keepdim=self.keep, dtype=self.dtype)


def _x() -> torch.Tensor:
    x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(3))
    x[0, 0, :3] = 0          # zeros, for ord 0
    return x


@pytest.mark.parametrize("p", [2, 1, 0, float("inf"), float("-inf"), 3, 0.5])
@pytest.mark.parametrize("dim,keep", [(None, False), (-1, True), ((0, 2), False)])
@pytest.mark.parametrize("target", ["interp", "c"])
def test_vector_norm_matches_torch(p: float, dim, keep: bool, target: str) -> None:
    m, x = Norm(p, dim, keep), _x()
    got, want = sf.compile(m, (x,), target=target)(x), m(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_normalize_and_norm_and_a_dtype_argument() -> None:
    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return F.normalize(x, dim=-1) * 3 + torch.norm(x, dim=1, keepdim=True) \
                + torch.linalg.vector_norm(h, dim=-1, keepdim=True, dtype=torch.float32)
    x = _x()
    h = (x * 4).to(torch.float16)
    g = sf.from_torch(M(), (x, h))
    assert "reduce_l2" in [n.op for n in g.nodes]
    cm = sf.compile(M(), (x, h), target="c")
    torch.testing.assert_close(cm(x, h), M()(x, h), rtol=1e-5, atol=1e-5)


def test_general_p_in_half_types_does_not_overflow() -> None:
    # 300^3 overflows float16; torch sums |x|^p in float32
    x = torch.full((4, 40), 300.0, dtype=torch.float16)
    m = Norm(3, -1, False)
    want = m(x)
    for target in ("interp", "c"):
        got = sf.compile(m, (x,), target=target)(x)
        assert got.dtype == torch.float16 and torch.isfinite(got).all(), target
        torch.testing.assert_close(got, want, rtol=2e-3, atol=0)
