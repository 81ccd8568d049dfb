"""torch.compile(model, backend="scalefold"): registered by entry point, matches eager, and
falls back to eager with a warning instead of failing."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from scalefold.api import BackendFallbackWarning, dynamo_backend


class Block(torch.nn.Module):
    """A pre-LN transformer block: causal attention + GELU MLP."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.h = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.f1, self.f2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, -1)
        q, k, v = (t.reshape(b, s, self.h, d // self.h).transpose(1, 2) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, d)
        x = x + self.o(a)
        return x + self.f2(F.gelu(self.f1(self.ln2(x))))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _no_fallback(fn, *args):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args)
    fallbacks = [str(x.message) for x in w if issubclass(x.category, BackendFallbackWarning)]
    assert not fallbacks, fallbacks
    return out


def test_backend_is_listed() -> None:
    assert "scalefold" in torch._dynamo.list_backends()
    from torch._dynamo.backends.registry import lookup_backend
    assert lookup_backend("scalefold") is dynamo_backend


def test_mlp_matches_eager() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    cm = torch.compile(m, backend="scalefold")
    x = torch.randn(5, 16)
    with torch.no_grad():
        y = _no_fallback(cm, x)
        torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-5)
        # a second call reuses the compiled graph
        x2 = torch.randn(5, 16)
        torch.testing.assert_close(_no_fallback(cm, x2), m(x2), rtol=1e-5, atol=1e-5)


def test_transformer_block_matches_eager() -> None:
    m = Block().eval()
    cm = torch.compile(m, backend="scalefold")
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(_no_fallback(cm, x), m(x), rtol=1e-4, atol=1e-4)


def test_backend_runs_compiled_code() -> None:
    # Called directly, the backend returns the compiled callable (not gm.forward).
    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(3, 4)
    fn = _no_fallback(dynamo_backend, gm, [x])
    assert hasattr(fn, "scalefold_model") and fn.scalefold_model.target == "c"
    with torch.no_grad():
        torch.testing.assert_close(fn(x), m(x), rtol=1e-5, atol=1e-5)


class Unsupported(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs() + 1


def test_unsupported_graph_falls_back_to_eager_with_warning() -> None:
    m = Unsupported()
    cm = torch.compile(m, backend="scalefold")
    x = torch.randn(3, 8)
    with pytest.warns(BackendFallbackWarning, match="running this graph eagerly"):
        y = cm(x)
    torch.testing.assert_close(y, m(x))


def test_autograd_still_works() -> None:
    # With grad enabled the compiled kernels (which record no backward) step aside.
    m = torch.nn.Linear(6, 3)
    cm = torch.compile(m, backend="scalefold")
    x = torch.randn(4, 6)
    # enable_grad: some test modules switch grad off globally at import time.
    with torch.enable_grad():
        cm(x).sum().backward()
    assert m.weight.grad is not None
    torch.testing.assert_close(m.weight.grad, x.sum(0).expand(3, 6))


def test_options_are_reported_as_ignored() -> None:
    """The backend takes no options: passes given through torch.compile would silently not run."""
    m = torch.nn.Linear(16, 8).eval()
    cm = torch.compile(m, backend="scalefold", options={"passes": ["quant_weights(format=int4)"]})
    x = torch.randn(3, 16)
    with torch.no_grad(), pytest.warns(UserWarning, match=r"options=.*quant_weights.*ignored.*scalefold\.compile"):
        y = cm(x)
    torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-5)


class _Counter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return x + self.count


def test_in_place_writes_to_buffers_and_inputs_run_eagerly() -> None:
    """A buffer counter and an input written in place: dropping the writes gave the first
    call's result at every call; the graph now runs eagerly with a warning."""
    torch._dynamo.reset()
    m = _Counter()
    cm = torch.compile(m, backend="scalefold")
    with pytest.warns(BackendFallbackWarning, match="in place"):
        outs = [cm(torch.zeros(2)).tolist() for _ in range(3)]
    assert outs == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]] and m.count.tolist() == [3.0, 3.0]

    def double(x: torch.Tensor) -> torch.Tensor:
        x.mul_(2)
        return x + 1
    torch._dynamo.reset()
    x = torch.ones(3)
    with pytest.warns(BackendFallbackWarning, match="in place"):
        y = torch.compile(double, backend="scalefold")(x)
    assert x.tolist() == [2.0, 2.0, 2.0] and y.tolist() == [3.0, 3.0, 3.0]


def test_sf_compile_refuses_a_model_that_writes_into_its_input() -> None:
    import scalefold as sf
    from scalefold.ir.errors import FrontendError

    class Writes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x.mul_(2)
            return x + 1
    with pytest.raises(FrontendError, match="writes into its input 'x' in place"):
        sf.compile(Writes(), (torch.ones(3),))
