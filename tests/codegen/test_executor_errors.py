"""Run-time failures inside a compiled model (an index out of range, a bad input tensor) are
ScalefoldErrors naming the node, on the generated-code targets as on the interpreter."""
from __future__ import annotations

import pytest
import torch

import scalefold as sf
from scalefold.ir import parse

GATHER = """
graph @g(%i: i64[N]) -> (f32[N,10]) {
  %0: f32[N,10] = embedding(#d, %i)
  %1: f32[N,10] = relu(%0)
  return %1
}
#d = const f32[4,10] randn(seed=0)
"""


@pytest.mark.usefixtures("kernel_cache_dir")
@pytest.mark.parametrize("target", ["interp", "c"])
def test_out_of_range_index_names_the_node(target: str) -> None:
    g = parse(GATHER)
    cm = sf.compile(g, target=target)
    assert cm(torch.tensor([0, 3])).shape == (2, 10)
    with pytest.raises(sf.ExecutionError, match=r"node .*\(embedding\) failed: IndexError: indices must "
                       r"lie in \[-4, 4\) \(axis 0 has 4 entries\), got indices from 0 to 4"):
        cm(torch.tensor([0, 4]))
    # the compiled model still runs afterwards
    assert torch.equal(cm(torch.tensor([1])), torch.relu(g.nodes[0].inputs[0].const[1:2]))


@pytest.mark.usefixtures("kernel_cache_dir")
def test_meta_input_is_a_shape_error_naming_the_input() -> None:
    cm = sf.compile(parse(GATHER), target="c")
    with pytest.raises(sf.ShapeError, match="input 'i'"):
        cm(torch.empty(2, dtype=torch.int64, device="meta"))


INT_DIV = """
graph @g(%a: i64[N], %b: i64[N], %c: i32[N], %d: i32[N]) -> (i64[N], i64[N], i64[N], i32[N], i32[N]) {
  %0: i64[N] = div(%a, %b)
  %1: i64[N] = mod(%a, %b)
  %2: i64[N] = mod[fmod=true](%a, %b)
  %3: i32[N] = div(%c, %d)
  %4: i32[N] = mod[fmod=true](%c, %d)
  return %0, %1, %2, %3, %4
}
"""


@pytest.mark.usefixtures("kernel_cache_dir")
@pytest.mark.parametrize("target", ["interp", "c"])
def test_integer_division_by_zero_is_an_error_not_a_crash(target: str) -> None:
    # the C kernels divided with the machine instruction: a zero divisor (and MIN / -1)
    # raised SIGFPE and killed the process
    cm = sf.compile(parse(INT_DIV), target=target)
    lo64, lo32 = -2 ** 63, -2 ** 31
    a = torch.tensor([7, -7, lo64, lo64, 9])
    b = torch.tensor([2, 3, -1, 3, -4])
    c = torch.tensor([7, -7, lo32, lo32, 9], dtype=torch.int32)
    d = torch.tensor([2, 3, -1, 5, -4], dtype=torch.int32)
    q, m, r, q32, r32 = cm(a, b, c, d)
    assert q.tolist() == [3, -2, lo64, torch.div(a[3], 3, rounding_mode="trunc").item(), -2]
    assert m.tolist() == torch.remainder(a, b).tolist()
    assert r.tolist() == torch.fmod(a, b).tolist()
    assert q32.tolist() == [3, -2, lo32, torch.div(c[3], 5, rounding_mode="trunc").item(), -2]
    assert r32.tolist() == torch.fmod(c, d).tolist()
    for i in range(5):   # a zero divisor in each output's lanes
        bz, dz = b.clone(), d.clone()
        (bz if i < 3 else dz)[1] = 0
        with pytest.raises(sf.ExecutionError, match="ZeroDivisionError"):
            cm(a, bz, c, dz)
    # the fault does not stick: the next call runs
    assert torch.equal(cm(a, b, c, d)[0], q)


@pytest.mark.usefixtures("kernel_cache_dir")
@pytest.mark.parametrize("target", ["interp", "c"])
def test_outputs_never_alias_the_callers_inputs_or_constants(target: str) -> None:
    # x.clone() becomes identity in the IR: the output was the caller's own tensor, so
    # writing to it changed the input (torch returns a fresh tensor)
    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("c", torch.ones(3))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return x + 1, x.clone(), self.c.clone()

    x = torch.zeros(2, 3)
    cm = sf.compile(M().eval(), (x,), target=target)
    y, xc, c = cm(x)
    assert torch.equal(xc, x) and torch.equal(c, torch.ones(3))
    xc.add_(5)
    c.add_(5)
    assert torch.equal(x, torch.zeros(2, 3))
    assert torch.equal(cm(x)[2], torch.ones(3))


SLICE_MIN = """
graph @g(%x: f32[2,S]) -> (f32[2,1]) {
  %0: f32[2,1] = slice[axes=[1], ends=[1], starts=[0], steps=[1]](%x)
  %1: f32[2,1] = mul(%0, %0)
  return %1
}
"""


@pytest.mark.usefixtures("kernel_cache_dir")
@pytest.mark.parametrize("target", ["interp", "c"])
def test_reference_result_off_its_declared_shape_is_an_error(target: str) -> None:
    # Min(1, S) simplified to 1 for a positive S; S = 0 gave a (2, 0) slice that the C kernel
    # then read as (2, 1): a segfault
    cm = sf.compile(parse(SLICE_MIN), target=target)
    assert torch.equal(cm(torch.full((2, 3), 3.0)), torch.full((2, 1), 9.0))
    with pytest.raises(sf.ExecutionError, match=r"slice.*produced shape \(2, 0\)"):
        cm(torch.ones(2, 0))


@pytest.mark.usefixtures("kernel_cache_dir")
def test_zero_divisor_faults_stay_with_their_call() -> None:
    # two models share one kernel library and its fault flag: threads calling both saw
    # each other's faults (a clean model raised, the faulty one returned silently)
    import threading
    good_m, bad_m = sf.compile(parse(INT_DIV), target="c"), sf.compile(parse(INT_DIV), target="c")
    n = 1 << 16
    a = torch.randint(1, 100, (n,))
    b = torch.randint(1, 5, (n,))
    c = a.to(torch.int32)
    d = b.to(torch.int32)
    bz = b.clone()
    bz[-1] = 0
    wrong: list[str] = []

    def good() -> None:
        for _ in range(60):
            try:
                good_m(a, b, c, d)
            except sf.ExecutionError:
                wrong.append("good raised")

    def bad() -> None:
        for _ in range(60):
            try:
                bad_m(a, bz, c, d)
                wrong.append("bad returned")
            except sf.ExecutionError:
                pass
    ts = [threading.Thread(target=good), threading.Thread(target=bad)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert wrong == []


@pytest.mark.usefixtures("kernel_cache_dir")
@pytest.mark.parametrize("target", ["interp", "c"])
def test_output_viewing_a_constant_is_copied(target: str) -> None:
    text = """
graph @g(%x: f32[B,4]) -> (f32[B,4], f32[16]) {
  %0: f32[B,4] = linear(%x, #w)
  %1: f32[16] = reshape[shape=[16]](#w)
  return %0, %1
}
#w = const f32[4,4] randn(seed=0, std=1.0)
"""
    cm = sf.compile(parse(text), target=target)
    x = torch.randn(2, 4)
    y0, wflat = cm(x)
    y0 = y0.clone()
    wflat.zero_()                      # writing to an output must not change the weights
    assert torch.equal(cm(x)[0], y0)
