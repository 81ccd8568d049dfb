"""ATen conversions of the inverse / hyperbolic trigonometry, log2 / log10 / exp2, bit shifts
and diagonal: against torch on the interpreter and the C target, including the values at the
edges of each function's domain."""
from __future__ import annotations

import pytest
import torch

import scalefold as sf


class Fn(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.f(*xs)


def _unit() -> torch.Tensor:
    """Values in [-1, 1] with both ends, zero, and a few outside (NaN for acos / asin)."""
    x = torch.rand(4, 9, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x[0, :5] = torch.tensor([-1.0, 1.0, 0.0, 1.5, -2.0])
    return x


TRIG = {
    "acos": (torch.acos, _unit()), "asin": (torch.asin, _unit()), "atanh": (torch.atanh, _unit()),
    "atan": (torch.atan, torch.randn(4, 9, generator=torch.Generator().manual_seed(1)) * 20),
    "asinh": (torch.asinh, torch.randn(4, 9, generator=torch.Generator().manual_seed(2)) * 20),
    "acosh": (torch.acosh, torch.linspace(0.5, 40, 36).reshape(4, 9)),
    "sinh": (torch.sinh, torch.linspace(-9, 9, 36).reshape(4, 9)),
    "cosh": (torch.cosh, torch.linspace(-9, 9, 36).reshape(4, 9)),
    "tan": (torch.tan, torch.linspace(-1.5, 1.5, 36).reshape(4, 9)),
}


@pytest.mark.parametrize("name", sorted(TRIG))
@pytest.mark.parametrize("target", ["interp", "c"])
def test_trigonometry_matches_torch(name: str, target: str) -> None:
    f, x = TRIG[name]
    got = sf.compile(Fn(f), (x,), target=target)(x)
    torch.testing.assert_close(got, f(x), rtol=2e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("target", ["interp", "c"])
def test_log2_log10_exp2(target: str) -> None:
    x = torch.tensor([[1.0, 2.0, 8.0, 1024.0, 10.0, 1000.0, 0.3, 0.0],
                      [-1.0, float("inf"), float("nan"), 3.5, 1e-30, 7.0, 123.0, 0.5]])
    e = torch.tensor([[0.0, 1.0, 10.0, -3.0, 0.5, -0.25, 30.0, -200.0]])
    m = Fn(lambda a, b: (torch.log2(a), torch.log10(a), torch.exp2(b), torch.exp2(b.int())))
    got, want = sf.compile(m, (x, e), target=target)(x, e), m(x, e)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=3e-7, atol=0.0, equal_nan=True)
    # integer powers of two stay exact
    assert torch.equal(got[2][0, :4], torch.tensor([1.0, 2.0, 1024.0, 0.125]))


@pytest.mark.parametrize("target", ["interp", "c"])
def test_bit_shifts(target: str) -> None:
    i = torch.tensor([[1, -8, 255, 3], [7, -1, 1 << 20, 0]], dtype=torch.int32)
    s = torch.tensor([[0, 1, 4, 31], [2, 3, 5, 1]], dtype=torch.int32)
    m = Fn(lambda a, b: (a << 2, a >> 1, a << b, a >> b, torch.bitwise_left_shift(a, b),
                         torch.bitwise_right_shift(a.long(), 3)))
    got, want = sf.compile(m, (i, s), target=target)(i, s), m(i, s)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)


@pytest.mark.parametrize("offset,d1,d2", [(0, 0, 1), (2, 0, 1), (-1, 0, 1), (1, 1, 2), (0, 2, 0),
                                          (-3, -1, -2), (9, 0, 1)])
@pytest.mark.parametrize("target", ["interp", "c"])
def test_diagonal(offset: int, d1: int, d2: int, target: str) -> None:
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(4))
    m = Fn(lambda a: torch.diagonal(a, offset, d1, d2) * 2)
    got, want = sf.compile(m, (x,), target=target)(x), m(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)


def test_diag_and_trace() -> None:
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(5))
    m = Fn(lambda a: (torch.diag(a, 1), torch.trace(a), torch.diag_embed(a[0, :3]).sum(0)))
    got, want = sf.compile(m, (x,), target="c")(x), m(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_onnx_export_runs_in_onnxruntime() -> None:
    """The same conversions leave as ONNX that onnxruntime runs to torch's values (signed
    shifts go through ONNX's unsigned BitShift)."""
    import onnxruntime as ort

    from scalefold.codegen.onnx import to_onnx

    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(6)) * 1.8 - 0.9
    i = torch.tensor([[1, -8, 255, 3], [7, -1, 1 << 20, 0]], dtype=torch.int64)
    m = Fn(lambda a, b: (torch.acos(a), torch.sinh(a), torch.log2(a.abs() + 1), torch.exp2(a),
                         b << 3, b >> 2, torch.diagonal(a, 1)))
    model = to_onnx(sf.from_torch(m, (x, i)))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [v.name for v in sess.get_inputs()]
    got = sess.run(None, {names[0]: x.numpy(), names[1]: i.numpy()})
    for g, w in zip(got, m(x, i)):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=2e-6, atol=1e-6)
