"""Symbolic integers that are negative indices (a slice from the end with a dynamic length,
``x[:, -(P + 1):]``, as MPT's ALiBi bias slicing writes), and Max / Min in torch's sizes
resolved by the Dims' declared ranges (frontend/dim_ranges.py)."""
from __future__ import annotations

import os

import pytest
import sympy
import torch
from torch.export import Dim

import scalefold as sf
from scalefold.frontend.dim_ranges import tighten
from scalefold.ir.types import sym

P, S = sym("P"), sym("S")


@pytest.mark.parametrize("expr,ranges,want", [
    (sympy.Max(0, 255 - P), {P: (2, 200)}, 255 - P),
    (sympy.Max(0, 255 - P), {P: (2, 300)}, sympy.Max(0, 255 - P)),      # not ordered over the range
    (sympy.Max(0, 255 - P), {}, sympy.Max(0, 255 - P)),
    (sympy.Max(0, 255 - P), {P: (2, None)}, sympy.Max(0, 255 - P)),      # unbounded above
    (256 - sympy.Max(0, 255 - P), {P: (0, 255)}, P + 1),
    (sympy.Min(P, 64), {P: (1, 60)}, P),
    (sympy.Min(P, 64), {P: (64, 90)}, sympy.Integer(64)),
    (sympy.Min(P + S, 2 * S + 3), {P: (1, 10), S: (20, 30)}, P + S),      # two symbols, linear
    (sympy.Max(P * S, 5), {P: (1, 10), S: (1, 10)}, sympy.Max(P * S, 5)),   # not linear: kept
    (sympy.Max(0, sympy.Min(P, 64) - 3), {P: (4, 60)}, P - 3),           # nested
])
def test_tighten(expr: sympy.Expr, ranges: dict, want: sympy.Expr) -> None:
    assert sympy.simplify(tighten(expr, ranges) - want) == 0


class TailSlice(torch.nn.Module):
    """The last P + 1 columns of a table (static or dynamic width), and the column -(P + 1)."""

    def forward(self, table: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = k.shape[2] + 1
        return table[:, -n:] * 2.0, table[:, -n] + 1.0


@pytest.mark.parametrize("dynamic_width", [False, True])
@pytest.mark.parametrize("target", ["interp", "c"])
def test_negative_symbolic_slice_start(dynamic_width: bool, target: str) -> None:
    m = TailSlice()
    table, k = torch.randn(4, 64), torch.randn(1, 2, 5, 16)
    shapes = ({1: Dim("S", min=64, max=128)} if dynamic_width else None, {2: Dim("P", min=2, max=60)})
    cm = sf.compile(m, (table, k), dynamic_shapes=shapes, target=target)
    for p, width in ((5, 64), (30, 64), (60, 64), (2, 64), (17, 100 if dynamic_width else 64)):
        t, kk = torch.randn(4, width), torch.randn(1, 2, p, 16)
        got, want = cm(t, kk), m(t, kk)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b)


def test_guards_torch_assumed_are_checked_at_run_time(tmp_path) -> None:
    """x[:, -n:] on W columns is W - n onward only while n <= W (python would clamp; torch.export
    assumes it and its program refuses other sizes): the graph keeps W - n >= 0 as a guard and
    refuses sizes that break it, also after save / load; sizes that keep it run, range or not."""
    m = TailSlice()
    table, k = torch.randn(4, 64), torch.randn(1, 2, 5, 16)
    cm = sf.compile(m, (table, k), dynamic_shapes=(None, {2: Dim("P", min=2, max=60)}))
    assert [str(e) for e in cm.graph.dim_guards] == ["63 - P"]
    for p in (62, 63):    # past the Dim's max, but the guard holds: still exact
        kk = torch.randn(1, 2, p, 16)
        for a, b in zip(cm(table, kk), m(table, kk)):
            torch.testing.assert_close(a, b)
    with pytest.raises(sf.ScalefoldError, match=r"P = 64 breaks -P\+63 >= 0"):
        cm(table, torch.randn(1, 2, 64, 16))
    cm.save(tmp_path / "a")
    back = sf.load(tmp_path / "a")
    assert [str(e) for e in back.graph.dim_guards] == ["63 - P"]
    with pytest.raises(sf.ScalefoldError, match="breaks"):
        back(table, torch.randn(1, 2, 64, 16))

    dyn = sf.compile(m, (table, k), dynamic_shapes=({1: Dim("S", min=3, max=90)}, {2: Dim("P", min=2, max=60)}))
    assert [str(e) for e in dyn.graph.dim_guards] == ["-P + S - 1"]
    t = torch.randn(4, 12)
    kk = torch.randn(1, 2, 11, 16)
    for a, b in zip(dyn(t, kk), m(t, kk)):
        torch.testing.assert_close(a, b)
    with pytest.raises(sf.ScalefoldError, match="breaks"):
        dyn(t, torch.randn(1, 2, 12, 16))       # torch's own program refuses this too

    lin = torch.nn.Linear(8, 4)
    plain = sf.compile(lin, (torch.randn(3, 8),), dynamic_shapes=({0: Dim("B", min=2, max=8)},))
    assert plain.graph.dim_ranges == {} and plain.graph.dim_guards == []
    x = torch.randn(20, 8)
    torch.testing.assert_close(plain(x), lin(x))


def test_mpt_decodes_with_a_dynamic_past() -> None:
    """MPT slices its ALiBi bias with -(past + 1): the import had failed with 'bad dimension'."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import DynamicCache

    class Decoder(torch.nn.Module):
        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            c = DynamicCache(list(zip(past[0::2], past[1::2])), config=self.lm.config)
            out = self.lm(input_ids=ids, past_key_values=c, use_cache=True)
            kv = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
            return (out.logits[:, -1:], *kv)

    torch.manual_seed(0)
    cfg = transformers.MptConfig(d_model=64, n_layers=2, n_heads=4, vocab_size=300, max_seq_len=128)
    dec = Decoder(transformers.MptForCausalLM(cfg).eval()).eval()
    with torch.no_grad():
        past = list(dec(torch.randint(0, 300, (1, 5)))[1:])
        ids = torch.tensor([[3]])
        cm = sf.compile(dec, (ids, *past), dynamic_shapes=(None, tuple({2: Dim("P", min=2, max=100)} for _ in past)))
        for _ in range(3):      # the cache grows by one each call
            got, want = cm(ids, *past), dec(ids, *past)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            ids, past = want[0].argmax(-1), list(want[1:])
    # torch.export's size of the bias slice, 256 - Max(0, 255 - P), is P + 1 only inside the
    # declared range: the graph records the range it was simplified with and refuses the rest
    assert cm.graph.dim_ranges == {"P": (2, 100)}
    with pytest.raises(sf.ScalefoldError, match=r"P = 101 is outside 2\.\.100"):
        cm(ids, *[torch.randn(1, 4, 101, 16) for _ in past])




class SizeClamp(torch.nn.Module):
    """Clamps whose bounds are computed from a dynamic size (a sliding window's positions)."""

    def forward(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = q.shape[1]
        pos = torch.arange(n)
        hi = torch.clamp(pos + 3, max=n - 1)                      # SymInt bound
        lo = torch.clamp(pos - 2, min=0, max=n // 2)              # int and SymInt bounds
        scaled = torch.clamp(q, min=-(n * 0.25), max=n * 0.5)     # SymFloat bounds
        return q[:, hi] + q[:, lo], scaled


@pytest.mark.parametrize("target", ["interp", "c"])
def test_clamp_bounds_from_sizes(target: str) -> None:
    m = SizeClamp()
    cm = sf.compile(m, (torch.randn(2, 12, 3),), dynamic_shapes=({1: Dim("L", min=2, max=40)},), target=target)
    for n in (2, 5, 12, 40):
        q = torch.randn(2, n, 3) * n
        for a, b in zip(cm(q), m(q)):
            torch.testing.assert_close(a, b)
