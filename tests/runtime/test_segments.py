"""Runs of generated-C steps called as one (runtime/cseg.py): the fast path is taken once a
step-by-step run has armed the segment, gives the step-by-step results, re-reads new
contents of the same objects, falls back for new objects and for another binding's turn,
and keeps applying the views the steps assign (a convolution's channels-last output)."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import scalefold as sf
from scalefold.runtime import cseg


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.Hardswish(),
        torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 24, 1), torch.nn.Sigmoid(), torch.nn.Conv2d(24, 8, 3, 1, 1),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()


def _segments(cm: sf.CompiledModel) -> list[cseg.Segment]:
    return [s for b in cm._runner._bound.values() for _, s in (b.seg_plan or []) if isinstance(s, cseg.Segment)]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many fast-path calls segments made."""
    seq = cseg._run_seq()
    calls: list[int] = []

    def counting(n, fns, ps, qs):  # type: ignore[no-untyped-def]
        calls.append(n)
        seq(n, fns, ps, qs)
    monkeypatch.setattr(cseg.Segment, "__init__", _init_with(counting))
    return calls


def _init_with(seq):  # type: ignore[no-untyped-def]
    original = cseg.Segment.__init__

    def init(self, steps):  # type: ignore[no-untyped-def]
        original(self, steps)
        self._seq = seq
    return init


def test_fast_path_runs_and_follows_in_place_changes(counted: list[int]) -> None:
    m, x = _net(), torch.randn(1, 3, 16, 16)
    cm = sf.compile(m, (x,), target="c")
    for i in range(4):
        x.copy_(torch.randn(1, 3, 16, 16))
        with torch.no_grad():
            want = m(x)
        torch.testing.assert_close(cm(x), want, rtol=1e-5, atol=1e-5)
    segs = _segments(cm)
    assert segs and all(s.ready for s in segs)
    assert len(counted) >= 2 * len(segs) and min(counted) >= 2   # calls 3 and 4 were fast


def test_new_input_objects_and_alternating_bindings(counted: list[int]) -> None:
    m = _net()
    cm = sf.compile(torch.nn.Sequential(*list(m)[:7]), (torch.randn(2, 3, 16, 16),), target="c",
                    dynamic_shapes=({0: Dim("B")},))
    seq = torch.nn.Sequential(*list(m)[:7])
    for i in range(6):
        x = torch.randn(2 if i % 3 else 3, 3, 16, 16)     # batch 3, 2, 2, 3, 2, 2
        with torch.no_grad():
            want = seq(x)
        torch.testing.assert_close(cm(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cm(x), want, rtol=1e-5, atol=1e-5)   # the same object again
    assert counted, "the repeated calls of one binding took the fast path"


def test_results_equal_step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    m, x = _net(), torch.randn(1, 3, 16, 16)
    monkeypatch.setenv("SCALEFOLD_SEGMENTS", "0")
    plain = sf.compile(m, (x,), target="c")
    monkeypatch.setenv("SCALEFOLD_SEGMENTS", "1")
    fast = sf.compile(m, (x,), target="c")
    assert not plain._runner.segments and fast._runner.segments
    for _ in range(3):
        assert torch.equal(fast(x), plain(x))


def test_new_objects_of_the_same_layout_keep_the_fast_path(counted: list[int]) -> None:
    """A library step (a grouped convolution on oneDNN) makes a new result every call, and
    the caller passes a new input every call: the segments after them keep their fast path
    with the new addresses, and every result follows the new contents."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 16, 3, 1, 1, groups=4), torch.nn.Hardswish(),
                            torch.nn.Conv2d(16, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU(),
                            torch.nn.Conv2d(8, 8, 1), torch.nn.Sigmoid(), torch.nn.Conv2d(8, 8, 1)).eval()
    cm = sf.compile(m, (torch.randn(1, 3, 12, 12),), target="c")
    for i in range(5):
        x = torch.randn(1, 3, 12, 12)
        with torch.no_grad():
            want = m(x)
        torch.testing.assert_close(cm(x), want, rtol=1e-5, atol=1e-5)
    assert counted, "no segment took the fast path"


def test_graph_outputs_allocated_per_call_stay_in_the_segment(counted: list[int]) -> None:
    """The last kernel writes the graph output, a new tensor at every call: the segment keeps
    its fast path (the new output's address is refreshed), and no call's result is written
    over by a later call."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16),
                            torch.nn.LayerNorm(16)).eval()
    cm = sf.compile(m, (torch.randn(4, 16),), target="c")
    xs = [torch.randn(4, 16) for _ in range(5)]
    outs = [cm(x) for x in xs]
    assert len({o.data_ptr() for o in outs}) == len(outs)
    with torch.no_grad():
        for o, x in zip(outs, xs):
            torch.testing.assert_close(o, m(x), rtol=1e-5, atol=1e-5)
    assert len(counted) >= 3


def test_without_the_segment_runner_steps_run_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C loop cannot be built (a read-only kernel cache made before it existed), the
    steps run one by one instead of failing the call."""
    monkeypatch.setattr(cseg, "_SEQ", [None])
    m, x = _net(), torch.randn(1, 3, 16, 16)
    cm = sf.compile(m, (x,), target="c")
    for _ in range(3):
        with torch.no_grad():
            torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)
    assert not _segments(cm)


class _CatRelu(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.cat([x, x], 1))


def test_an_earlier_input_after_a_patched_address_and_another_binding() -> None:
    """call(x), call(x2) (the fast path patches x2's address into the pointer arrays), a call
    at another size (another binding), then call(x) again step by step: the steps must not
    take x for the object they cached and pass x2's freed address (the fuzzer's finding:
    errors up to 3e38, the memory of whatever reused x2's block)."""
    torch.manual_seed(0)
    m = _CatRelu().eval()
    x = torch.randn(2, 32, 24, 24)
    cm = sf.compile(m, (x,), target="c", dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    assert torch.equal(cm(x), m(x))
    x2 = torch.randn(2, 32, 24, 24)
    assert torch.equal(cm(x2), m(x2))
    del x2
    assert torch.equal(cm(torch.ones(1, 32, 4, 4)), torch.ones(1, 64, 4, 4))
    junk = [torch.full((2, 32, 24, 24), 1e6) for _ in range(4)]    # reuse the freed block
    for _ in range(2):
        assert torch.equal(cm(x), m(x))
    del junk
