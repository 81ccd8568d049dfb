"""ATen ops the torch frontend used to refuse, now lowered onto existing IR ops: cumprod /
cummax / cummin (``aten_scan.py``), circular padding, F.fold / Tensor.unfold and in-place
writes (``aten_scatter.py``), max_pool's indices with max_unpool and avg_pool's
divisor_override (``aten_pool_index.py``), antialiased interpolation (``aten_image.py``), and
ops torch's wider decomposition table lowers (grid_sample, bucketize; ``frontend/torch.py``
``_decompose_unsupported``).
Each is checked against torch eager on the reference interpreter and the C target, exactly
where the lowering only moves or selects values, with static and dynamic shapes."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.export import Dim

import scalefold as sf
from harness import assert_close
from scalefold.ir.errors import FrontendError, UnsupportedOpError
from scalefold.runtime import interp


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


class Fn(nn.Module):
    """A module whose forward is ``fn(self, *xs)`` (submodules in ``mods``)."""

    def __init__(self, fn: Callable[..., Any], *mods: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(mods)

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.fn(self, *xs)


def _outs(y: Any) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (tuple, list)) else [y]


def check(m: nn.Module, inputs: Sequence[torch.Tensor], more: Sequence[Sequence[torch.Tensor]] = (),
          dynamic_shapes: Any = None, exact: bool = False, rtol: float = 2e-6, atol: float = 1e-6) -> sf.Graph:
    """Import ``m`` once, then compare the interpreter and the C target with eager on
    ``inputs`` and on every tuple in ``more`` (other sizes, for dynamic shapes)."""
    # forward(*xs) takes one (varargs) argument: its dynamic_shapes entry is the whole tuple
    ds = None if dynamic_shapes is None else (tuple(dynamic_shapes),)
    g = sf.from_torch(m, tuple(inputs), dynamic_shapes=ds)
    cm = sf.compile(g, target="c")
    for xs in [inputs, *more]:
        want = _outs(m(*xs))
        got_i = interp.run(g, *xs)
        got_c = _outs(cm(*xs))
        assert len(got_i) == len(got_c) == len(want)
        for gi, gc, w in zip(got_i, got_c, want):
            for got, what in ((gi, "interpreter"), (gc, "c")):
                if exact:
                    assert got.dtype == w.dtype and got.shape == w.shape, what
                    assert torch.equal(torch.nan_to_num(got, nan=7.5), torch.nan_to_num(w, nan=7.5)) and \
                        torch.equal(got.isnan(), w.isnan()), f"{what}: {got} != {w}"
                else:
                    assert_close(got, w, rtol=rtol, atol=atol, what=what)
    return g


def _ops(g: sf.Graph) -> set[str]:
    return {n.op for n in g.nodes}


def rnd(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- scans ------------------------------------------------------------------------------------


def test_cumprod_float_and_int_static_and_dynamic() -> None:
    m = Fn(lambda s, x, k: (torch.cumprod(x, 1), torch.cumprod(k, -1)))
    x, k = rnd(2, 7, 3) * 0.9 + 0.5, torch.arange(-6, 6).reshape(2, 6)
    check(m, (x, k), exact=True)
    check(m, (x, k), more=[(rnd(3, 11, 3, seed=1), torch.arange(15).reshape(3, 5) % 4 - 1)], exact=True,
          dynamic_shapes=({0: Dim("B"), 1: Dim("L")}, {0: Dim("B"), 1: Dim("K")}))


def _ties_and_nans(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    x = torch.randint(0, 4, (2, n, 3), generator=g).float()     # many ties
    x[0, n // 3, 1] = float("nan")
    x[0, n // 2, 1] = float("nan")                                 # two NaNs: the later index wins
    x[1, 2, 0] = float("-inf")
    return x


def test_logcumsumexp_static_and_dynamic_with_infinities_and_nan() -> None:
    """The log-add-exp scan: -inf prefixes stay -inf, +inf stays, NaN spreads forward, a
    -200 among O(1) values does not underflow the sum."""
    inf, nan = float("inf"), float("nan")
    x = rnd(4, 9)
    x[0, 2], x[0, 6] = -inf, -200.0
    x[1, :3] = -inf
    x[2, 4] = x[2, 6] = inf
    x[3, 5] = nan
    m = Fn(lambda s, x: (torch.logcumsumexp(x, 1), torch.logcumsumexp(x * 30, 0)))
    check(m, (x,), more=[(rnd(4, 9, seed=1) * 50,)], rtol=1e-5, atol=1e-5)
    check(m, (x,), more=[(rnd(4, 5, seed=2),)], dynamic_shapes=({1: Dim("W")},), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", [torch.cummax, torch.cummin])
def test_cummax_cummin_values_and_indices_static(op: Callable) -> None:
    """Ties take the last index, a NaN wins and stays (the latest NaN's index), as torch."""
    m = Fn(lambda s, x, k: (*op(x, 1), *op(k, 0), op(x, -1).values))
    x = _ties_and_nans(13)
    k = torch.tensor([[3, 1, 1], [2, 1, 5], [3, 0, 0], [-1, 0, 9], [3, 4, 0]])
    g = check(m, (x, k), exact=True)
    assert "where" in _ops(g) and "argmax" not in _ops(g)
    want = torch.cummax(torch.tensor([1., 3., 3., 2., 3.]), 0).indices
    assert want.tolist() == [0, 1, 2, 2, 4]          # the rule the lowering relies on


@pytest.mark.parametrize("op", [torch.cummax, torch.cummin])
def test_cummax_cummin_along_a_dynamic_axis(op: Callable) -> None:
    m = Fn(lambda s, x: op(x, 1))
    check(m, (_ties_and_nans(9),), more=[(_ties_and_nans(16),), (_ties_and_nans(3),)], exact=True,
          dynamic_shapes=({1: Dim("L", min=2, max=64)},))


# ---- padding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,pad", [((2, 3, 7), (2, 3)), ((1, 2, 5, 6), (1, 2, 2, 1)),
                                       ((1, 2, 3, 4, 5), (1, 0, 2, 1, 3, 2)),
                                       ((1, 2, 5, 6), (-1, 2, 1, -2))])       # negatives crop first
def test_circular_pad_is_exact(shape: tuple, pad: tuple) -> None:
    m = Fn(lambda s, x: F.pad(x, pad, mode="circular"))
    g = check(m, (rnd(*shape),), exact=True)
    assert _ops(g) <= {"slice", "concat"}


def test_circular_pad_dynamic_and_other_modes() -> None:
    m = Fn(lambda s, x: (F.pad(x, (1, 2, 2, 1), mode="circular"), F.pad(x, (1, 2, 2, 1), mode="reflect"),
                        F.pad(x, (2, 0, 1, 3), mode="replicate"), F.pad(x, (1, -1, 2, 0), value=3.5)))
    check(m, (rnd(2, 3, 5, 6),), more=[(rnd(1, 3, 7, 4, seed=2),)], exact=True,
          dynamic_shapes=({0: Dim("B"), 2: Dim("H", min=3, max=32), 3: Dim("W", min=3, max=32)},))


def test_conv_with_circular_padding_mode() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=(1, 2), padding_mode="circular")
    m = Fn(lambda s, x: s.mods[0](x), conv).eval()
    g = check(m, (rnd(2, 3, 6, 7),), more=[(rnd(1, 3, 9, 5, seed=3),)],
              dynamic_shapes=({0: Dim("B"), 2: Dim("H", min=3, max=32), 3: Dim("W", min=3, max=32)},))
    assert "conv" in _ops(g) and "scatter_nd" not in _ops(g)


def test_circular_pad_wrapping_twice_is_refused_by_torch_or_us() -> None:
    m = Fn(lambda s, x: F.pad(x, (0, 2, 0, 0), mode="circular"))
    with pytest.raises(FrontendError):
        sf.from_torch(m, (rnd(1, 1, 3, 1),))


# ---- windows: fold / unfold -------------------------------------------------------------------


def test_fold_and_unfold_round_trip() -> None:
    """F.unfold (im2col) then F.fold (col2im, overlapping windows summed: an accumulating
    index_put -> scatter_nd add), with a dynamic batch."""
    m = Fn(lambda s, x: F.fold(F.unfold(x, 3, padding=1, stride=2) * 1.5, (7, 6), 3, padding=1, stride=2))
    g = check(m, (rnd(2, 2, 7, 6),), more=[(rnd(1, 2, 7, 6, seed=4),)], dynamic_shapes=({0: Dim("B")},))
    assert "scatter_nd" in _ops(g)


def test_tensor_unfold_static_and_dynamic() -> None:
    """Tensor.unfold (halonet's halo windows): a gather by a [windows, size] table."""
    m = Fn(lambda s, x: (x.unfold(2, 3, 2), x.unfold(-1, 2, 1), x.unfold(1, 2, 2).sum(-1)))
    check(m, (rnd(2, 4, 7, 6),), exact=True)
    check(m, (rnd(2, 4, 7, 6),), more=[(rnd(1, 4, 10, 5, seed=5),)], exact=True,
          dynamic_shapes=({0: Dim("B"), 2: Dim("H", min=3, max=40), 3: Dim("W", min=3, max=40)},))


def test_in_place_writes() -> None:
    """x[:, 1:3] = v, x[..., ::2] = w, x[:, 0] = u, x[idx] += v (duplicates accumulate)."""
    def fn(s: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, 1:3] = v
        y[..., ::2] = 2.0
        y[:, 0] = y[:, -1] * 3
        idx = torch.tensor([0, 2, 2, 4])
        y[:, :, idx] += v[:, :1, :4]
        return y
    check(Fn(fn), (rnd(2, 5, 6), rnd(2, 2, 6, seed=6)))
    check(Fn(fn), (rnd(2, 5, 6), rnd(2, 2, 6, seed=6)), more=[(rnd(4, 5, 6, seed=7), rnd(4, 2, 6, seed=8))],
          dynamic_shapes=({0: Dim("B")}, {0: Dim("B")}))


def test_write_bounds_past_the_axis_are_clamped() -> None:
    """Slice bounds beyond the axis clamp as in torch: x[:, -100:2] is x[:, 0:2]."""
    def fn(s: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[:, -100:2] = v
        y[:, 3:100] = v * 2
        return y
    check(Fn(fn), (rnd(3, 5), rnd(3, 2, seed=4)), exact=True)


# ---- pooling ----------------------------------------------------------------------------------


def test_max_pool_indices_and_max_unpool() -> None:
    """Indices as torch: the first maximum of a window on ties, the last NaN, never a
    padding slot; max_unpool reads them (an index_put -> scatter_nd)."""
    def fn(s: nn.Module, x: torch.Tensor) -> Any:
        y, i = F.max_pool2d(x, 3, 2, padding=1, return_indices=True)
        y2, i2 = F.max_pool2d(x, 2, return_indices=True)
        return y, i, F.max_unpool2d(y2, i2, 2, output_size=x.shape[-2:])
    x = torch.randint(0, 3, (2, 3, 7, 8), generator=torch.Generator().manual_seed(9)).float()
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")
    x[1, 1, 0, :] = float("-inf")
    x[1, 1, 1, 0] = float("-inf")
    g = check(Fn(fn), (x,), more=[(torch.randn(1, 3, 7, 8),)], exact=True,
              dynamic_shapes=({0: Dim("B")},))
    assert "argmax" in _ops(g) and "scatter_nd" in _ops(g)


@pytest.mark.parametrize("nsp,kw", [(1, dict(kernel_size=3, stride=2, padding=1, dilation=2)),
                                    (3, dict(kernel_size=2, stride=2, ceil_mode=True))])
def test_max_pool_indices_1d_3d(nsp: int, kw: dict) -> None:
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nsp - 1]
    m = Fn(lambda s, x: pool(x, return_indices=True, **kw))
    check(m, (rnd(1, 2, *[5] * nsp, seed=nsp),), exact=True)


@pytest.mark.parametrize("nsp,kw", [(2, dict(kernel_size=3, stride=2, padding=1, divisor_override=4)),
                                    (2, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                             divisor_override=5)),
                                    (1, dict(kernel_size=4, stride=3, padding=2, divisor_override=3)),
                                    (3, dict(kernel_size=2, stride=1, divisor_override=7))])
def test_avg_pool_divisor_override(nsp: int, kw: dict) -> None:
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nsp - 1]
    if nsp == 1:
        kw = {k: v for k, v in kw.items() if k != "divisor_override"}  # avg_pool1d has none
        m = Fn(lambda s, x: F.avg_pool2d(x[..., None], (kw["kernel_size"], 1), (kw["stride"], 1),
                                         (kw["padding"], 0), divisor_override=3))
    else:
        m = Fn(lambda s, x: pool(x, **kw))
    check(m, (rnd(2, 3, *[8] * nsp, seed=nsp),))


def test_avg_pool_divisor_override_dynamic() -> None:
    m = Fn(lambda s, x: F.avg_pool2d(x, 3, 2, 1, divisor_override=2))
    check(m, (rnd(2, 3, 8, 9),), more=[(rnd(1, 3, 11, 6, seed=10),)],
          dynamic_shapes=({0: Dim("B"), 2: Dim("H", min=4, max=64), 3: Dim("W", min=4, max=64)},))


def test_masked_write_of_a_scalar_is_a_where() -> None:
    def masked(s: nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[m] = -2.0
        return y
    x = rnd(3, 4)
    g = check(Fn(masked), (x, x > 0.3), exact=True)
    assert "where" in _ops(g) and "scatter_nd" not in _ops(g)


def test_bad_forms_are_refused_naming_the_node() -> None:
    """A boolean-mask write of a tensor (data-dependent positions), antialiasing of a dynamic
    size."""
    def masked(s: nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y[m] = y[m] * 2
        return y
    with pytest.raises(FrontendError):
        sf.from_torch(Fn(masked), (rnd(3, 4), rnd(3, 4) > 0))
    aa = Fn(lambda s, x: F.interpolate(x, size=(3, 3), mode="bicubic", antialias=True))
    with pytest.raises(FrontendError, match=r"_upsample_bicubic2d_aa.*static spatial sizes"):
        sf.from_torch(aa, (rnd(1, 2, 8, 8),), dynamic_shapes=(({3: Dim("W", min=4, max=64)},),))


# ---- antialiased interpolation ----------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(size=(4, 5), mode="bilinear"), dict(size=(4, 5), mode="bicubic"),
                                dict(scale_factor=0.37, mode="bilinear"),
                                dict(size=(18, 3), mode="bicubic", align_corners=True),
                                dict(scale_factor=(0.5, 1.5), mode="bilinear", align_corners=True)])
def test_antialiased_interpolation(kw: dict) -> None:
    m = Fn(lambda s, x: F.interpolate(x, antialias=True, **kw))
    # with align_corners torch's own f32 kernel is 2e-6 off its f64 result (ours is closer)
    atol = 3e-6 if kw.get("align_corners") else 1e-6
    g = check(m, (rnd(2, 3, 9, 11),), more=[(rnd(1, 3, 9, 11, seed=11),)], dynamic_shapes=({0: Dim("B")},),
              atol=atol)
    x = rnd(1, 3, 9, 11, seed=12)
    exact = F.interpolate(x.double(), antialias=True, **kw)
    assert (interp.run(g, x)[0].double() - exact).abs().max() <= (m(x).double() - exact).abs().max() + 5e-7
    assert _ops(g) <= {"linear", "transpose"}


# ---- unbatched inputs and adaptive max pooling ------------------------------------------------


@pytest.mark.parametrize("name,fn", [
    ("conv2d", lambda s, x: F.conv2d(x, s.mods[0].weight, s.mods[0].bias, padding=1)),
    ("conv_transpose2d", lambda s, x: F.conv_transpose2d(x, s.mods[1].weight, stride=2)),
    ("max_pool2d", lambda s, x: F.max_pool2d(x, 2, 1)),
    ("max_pool2d_indices", lambda s, x: F.max_pool2d(x, 2, return_indices=True)),
    ("avg_pool2d", lambda s, x: F.avg_pool2d(x, 3, 2, padding=1)),
    ("avg_pool2d_divisor", lambda s, x: F.avg_pool2d(x, 2, divisor_override=3)),
    ("adaptive_avg_pool2d", lambda s, x: F.adaptive_avg_pool2d(x, (3, 2))),
    ("adaptive_max_pool2d", lambda s, x: F.adaptive_max_pool2d(x, (3, 2))),
    ("max_pool1d", lambda s, x: F.max_pool1d(x.flatten(1), 3)),
])
def test_unbatched_inputs(name: str, fn: Callable[..., Any]) -> None:
    """torch's convolutions and pools accept [C, *spatial] without a batch axis."""
    torch.manual_seed(0)
    m = Fn(fn, nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(3, 2, 2))
    check(m, (rnd(3, 6, 8),), exact=name.startswith(("max", "adaptive_max")), rtol=1e-5, atol=1e-5)


def test_adaptive_max_pool_global_and_divisible() -> None:
    """timm's "max" / "avgmax" heads: adaptive max pooling to 1 (and to divisors) is a max."""
    m = Fn(lambda s, x: (F.adaptive_max_pool2d(x, 1), F.adaptive_max_pool2d(x, (2, 4)),
                         F.adaptive_max_pool1d(x.flatten(2), 1)))
    x = rnd(2, 3, 6, 8)
    x[0, 0, 1, 1] = float("nan")
    check(m, (x,), exact=True)
    check(m, (x,), more=[(rnd(5, 3, 6, 8, seed=3),)], exact=True, dynamic_shapes=({0: Dim("B")},))


def test_adaptive_max_pool_refusals_name_the_node() -> None:
    with pytest.raises(FrontendError, match="adaptive_max_pool2d.*unequal sizes"):
        sf.from_torch(Fn(lambda s, x: F.adaptive_max_pool2d(x, 4)), (rnd(1, 2, 6, 6),))
    with pytest.raises(FrontendError, match="adaptive_max_pool2d.*indices"):
        sf.from_torch(Fn(lambda s, x: F.adaptive_max_pool2d(x, 2, return_indices=True)[1].float()),
                      (rnd(1, 2, 6, 6),))


# ---- ops lowered by torch's wider decomposition table -----------------------------------------


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_grid_sample_through_the_decomposition_fallback(mode: str, padding_mode: str) -> None:
    """grid_sample has no conversion of its own; torch's decomposition table lowers it to
    index arithmetic and gathers the frontend converts. Sample points reach past the border."""
    def grid(b: int, seed: int) -> torch.Tensor:
        return torch.rand(b, 5, 4, 2, generator=torch.Generator().manual_seed(seed)) * 2.4 - 1.2

    for align in (False, True):
        m = Fn(lambda s, x, g, a=align: F.grid_sample(x, g, mode=mode, padding_mode=padding_mode, align_corners=a))
        g = check(m, (rnd(2, 3, 9, 11), grid(2, 1)), more=[(rnd(3, 3, 9, 11, seed=2), grid(3, 3))],
                  dynamic_shapes=({0: Dim("B")}, {0: Dim("B")}), rtol=1e-5, atol=1e-5)
        assert "gather" in _ops(g)


def test_bucketize_through_the_decomposition_fallback() -> None:
    """Values on a boundary go left or right as ``right`` says; ``out_int32`` keeps its dtype."""
    b = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    m = Fn(lambda s, x: (torch.bucketize(x, b), torch.bucketize(x, b, right=True, out_int32=True)))
    x = rnd(4, 6)
    x[0, :4] = b
    check(m, (x,), more=[(rnd(3, 6, seed=1),)], exact=True, dynamic_shapes=({0: Dim("B")},))


def test_ops_without_conversion_or_decomposition_are_named() -> None:
    with pytest.raises(UnsupportedOpError, match=r"aten\.erfinv\.default \(x1\)"):
        sf.from_torch(Fn(lambda s, x: torch.erfinv(x.tanh())), (rnd(3, 5),))


def test_decompositions_into_unknown_ops_are_not_taken() -> None:
    """lgamma and digamma decompose into prims the frontend has no conversion for: the error
    names the op the model used, not the prims."""
    with pytest.raises(UnsupportedOpError, match=r"aten\.lgamma\.default \(x1\)") as e:
        sf.from_torch(Fn(lambda s, x: torch.lgamma(x.abs() + 1)), (rnd(3, 5),))
    assert "prims" not in str(e.value)
    with pytest.raises(UnsupportedOpError, match=r"aten\.digamma\.default \(x1\)"):
        sf.from_torch(Fn(lambda s, x: torch.digamma(x.abs() + 1)), (rnd(3, 5),))


def test_hypot_and_copysign_with_zeros_infinities_and_nan() -> None:
    """hypot without overflow (1e30) or underflow (1e-30), +inf beside a NaN; copysign with
    -0.0 as a sign and a scalar sign."""
    inf, nan = float("inf"), float("nan")
    a = torch.tensor([3., 0., -0., 1e30, 1e-30, inf, nan, -inf, 5., -2.])
    b = torch.tensor([4., 0., 0., 1e30, 1e-30, nan, 1., 3., -0., 7.])
    m = Fn(lambda s, x, y: (torch.hypot(x, y), torch.copysign(x, y), torch.copysign(x, -1.5)))
    check(m, (a, b), exact=True)
    check(m, (rnd(10) * 1e20, rnd(10, seed=1)), rtol=1e-6, atol=0)



def test_var_mean_and_std_mean() -> None:
    """torch.var_mean / std_mean (timm's LayerNormExp2d): both results, over given axes or
    all, with either correction form."""
    m = Fn(lambda s, x: (*torch.var_mean(x, 1, keepdim=True), *torch.std_mean(x, (0, 2), correction=0),
                         *torch.var_mean(x), torch.var_mean(x, 2, unbiased=False)[0]))
    check(m, (rnd(3, 5, 7),), more=[(rnd(4, 5, 7, seed=1),)], dynamic_shapes=({0: Dim("B")},), rtol=1e-5, atol=1e-6)


def _order_stats(s: nn.Module, x: torch.Tensor) -> tuple:
    return (*torch.median(x, 1), *torch.median(x, 0, keepdim=True), torch.median(x), *torch.nanmedian(x, 1),
            torch.nanmedian(x), *torch.kthvalue(x, 2, 1), *torch.kthvalue(x, 3, 0, keepdim=True))


def test_median_nanmedian_kthvalue_without_ties() -> None:
    """Values and indices, static and along a dynamic axis (the median's position is then a
    symbolic (W - 1) // 2)."""
    m = Fn(_order_stats)
    check(m, (rnd(4, 5),), exact=True)
    check(m, (rnd(4, 5),), more=[(rnd(4, 6, seed=1),), (rnd(4, 2, seed=2),)], exact=True,
          dynamic_shapes=({1: Dim("W")},))


def test_median_and_nanmedian_values_with_nan_and_ties() -> None:
    """A NaN makes the median NaN (at the first NaN's index); nanmedian skips NaNs and is NaN
    only for an all-NaN slice. Among equal values torch's index is unspecified, so only the
    values are compared where rows hold ties."""
    nan = float("nan")
    x = torch.tensor([[3., 1., nan, 2., 5.], [4., 1., 1., 9., 7.], [nan] * 5, [1., 2., 3., 4., nan]])
    g = sf.from_torch(Fn(_order_stats), (x,))
    got, want = interp.run(g, x), _order_stats(None, x)
    got_c = _outs(sf.compile(g, target="c")(x))
    for i, (gi, gc, w) in enumerate(zip(got, got_c, want)):
        if w.is_floating_point():
            for got_v in (gi, gc):
                assert torch.equal(torch.nan_to_num(got_v, 7.5), torch.nan_to_num(w, 7.5)), i
    med_idx = got[1]
    assert med_idx[0] == 2 and med_idx[3] == 4      # the first NaN


def test_median_and_kthvalue_of_integers() -> None:
    m = Fn(lambda s, x: (*torch.median(x, 1), torch.median(x), *torch.nanmedian(x, 0), *torch.kthvalue(x, 2, 1)))
    check(m, (torch.randperm(28, generator=torch.Generator().manual_seed(0)).reshape(4, 7),), exact=True)


def test_kthvalue_out_of_range_is_refused() -> None:
    with pytest.raises(FrontendError, match="kthvalue"):
        sf.from_torch(Fn(lambda s, x: torch.kthvalue(x, 6, 1)[0]), (rnd(3, 5),))


@pytest.mark.parametrize("bias", [True, False])
def test_bilinear_is_one_einsum(bias: bool) -> None:
    """nn.Bilinear (aten._trilinear) with leading dims, static and dynamic."""
    torch.manual_seed(0)
    m = Fn(lambda s, x, y: s.mods[0](x, y), nn.Bilinear(8, 6, 4, bias=bias))
    g = check(m, (rnd(2, 3, 8), rnd(2, 3, 6, seed=1)), more=[(rnd(5, 3, 8, seed=2), rnd(5, 3, 6, seed=3))],
              dynamic_shapes=({0: Dim("B")}, {0: Dim("B")}), rtol=1e-5, atol=1e-6)
    assert "einsum" in _ops(g)


# ---- torch.scatter and its reductions (aten_scatter_elems.py) ---------------------------------

_IDX = torch.tensor([[0, 1, 2, 3, 1, 0, 4], [3, 4, 0, 0, 2, 2, 1]])   # distinct in every column
_DUP = torch.tensor([[0, 1, 2, 0, 1, 0, 4], [3, 1, 2, 0, 1, 0, 4]])   # repeats within columns

_SCATTERS = {
    "src": lambda x: torch.zeros_like(x).scatter(0, _IDX, x[:2]),
    "src_larger_than_index": lambda x: x.scatter(1, _IDX[:, :3], x[:, 1:] * 2),
    "value": lambda x: x.scatter(1, _IDX[:, :3], 2.0),
    "one_hot_of_topk": lambda x: torch.zeros_like(x).scatter(1, x.topk(2, 1)[1], 1.0),
    "add": lambda x: x.scatter_add(0, _DUP, x[:2]),
    "reduce_multiply": lambda x: x.scatter(0, _DUP, 1.5, reduce="multiply"),
}
_REDUCES = {f"{how}_{'self' if inc else 'noself'}": (how, inc)
            for how in ("sum", "prod", "amax", "amin", "mean") for inc in (True, False)}


@pytest.mark.parametrize("name", sorted(_SCATTERS))
def test_scatter_forms(name: str) -> None:
    fn = _SCATTERS[name]
    check(Fn(lambda s, x: fn(x)), (rnd(5, 7),), more=[(rnd(5, 7, seed=1),)], exact=name != "add",
          rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(_REDUCES))
def test_scatter_reduce(name: str) -> None:
    """Every reduction with and without self; untouched positions keep self (row 4 of _DUP is
    reached only in some columns)."""
    how, inc = _REDUCES[name]
    m = Fn(lambda s, x: x.scatter_reduce(0, _DUP, x[:2] * 3, how, include_self=inc))
    check(m, (rnd(5, 7),), more=[(rnd(5, 7, seed=1),)], rtol=1e-6, atol=1e-6)


def test_scatter_reduce_integers_and_a_dynamic_batch() -> None:
    m = Fn(lambda s, x, i: ((x * 10).long().scatter_reduce(1, i, (x * 7).long(), "amax", include_self=False),
                            x.scatter_add(1, i, x), x.scatter(1, i, -1.0)))
    idx = torch.tensor([[0, 2, 1], [1, 1, 0], [2, 0, 2]])
    check(m, (rnd(3, 3), idx), more=[(rnd(5, 3, seed=1), torch.tensor([[2, 0, 1]] * 5))], exact=False,
          dynamic_shapes=({0: Dim("B")}, {0: Dim("B")}), rtol=1e-6, atol=1e-6)


def test_scatter_refusals_name_the_node() -> None:
    with pytest.raises(FrontendError, match="scatter_reduce mean of i64"):
        sf.from_torch(Fn(lambda s, x: x.long().scatter_reduce(0, _DUP, x[:2].long(), "mean")), (rnd(5, 7),))


def test_cdist_for_every_p() -> None:
    m = Fn(lambda s, x, y: tuple(torch.cdist(x, y, p=p) for p in (2.0, 1.0, float("inf"), 3.0, 0.0)))
    check(m, (rnd(2, 5, 4), rnd(2, 6, 4, seed=1)), more=[(rnd(2, 5, 4, seed=2) * 3, rnd(2, 6, 4, seed=3))],
          rtol=1e-5, atol=1e-5)


def test_searchsorted_left_right_batched_scalar_and_sorter() -> None:
    """Values equal to a boundary go left or right as asked; a batched sequence searches its
    own row; ``sorter`` reorders an unsorted one."""
    seq = torch.tensor([-1.0, 0.0, 0.5, 0.5, 2.0])
    perm = torch.tensor([2, 0, 4, 1, 3])
    m = Fn(lambda s, x: (torch.searchsorted(seq, x), torch.searchsorted(seq, x, right=True, out_int32=True),
                         torch.searchsorted(torch.sort(x, -1)[0], x[:, :3] * 0.5),
                         torch.searchsorted(seq, 0.5, side="right"),
                         torch.searchsorted(seq[perm], x, sorter=torch.argsort(seq[perm]))))
    x = rnd(3, 6)
    x[0, :5] = seq
    check(m, (x,), more=[(rnd(3, 6, seed=1) * 2,)], exact=True)


class _ItemSized(nn.Module):
    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        k = n.item()                       # a size read from tensor data
        torch._check(k >= 1)
        torch._check(k <= x.shape[1])
        return x[:, :k] * 2


def test_a_size_read_from_tensor_data_names_the_op_and_the_line() -> None:
    """torch.export keeps ``.item()`` as an unbacked size (DeBERTa's relative positions do
    this); the refusal names the node, its op and the model's source line."""
    ep = torch.export.export(_ItemSized(), (torch.randn(2, 8), torch.tensor(3)))
    with pytest.raises(FrontendError, match=r"\(aten\._local_scalar_dense\.default at "
                                            r"test_torch_gaps\.py:\d+\): data-dependent .*reads a "
                                            r"tensor's values to form a size"):
        sf.from_torch(ep, (torch.randn(2, 8), torch.tensor(3)))
