"""``concat`` on the C target as a generated copy kernel (codegen/c_concat.py): bit-equal to
torch.cat for every dtype, axis and input count, with symbolic sizes, and on one or two
threads."""
from __future__ import annotations

import pytest
import torch
from harness import at_threads

from scalefold import api
from scalefold.codegen import c as cgen
from scalefold.codegen.c_concat import PAR_BYTES, concat_supported
from scalefold.codegen.schedule import partition
from scalefold.ir import dtypes as dt
from scalefold.ir.graph import Graph


def _graph(types: list[str], axis: int, repeat_first: bool = False) -> Graph:
    g = Graph("cat")
    xs = [g.add_input(t, f"x{i}") for i, t in enumerate(types)]
    ins = [xs[0], *xs] if repeat_first else xs
    g.set_outputs([g.add("concat", ins, {"axis": axis})])
    return g


def _data(dname: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = dt.get(dname)
    if d.is_float:
        return torch.randn(shape, generator=gen).to(d.container)
    if d.name == "bool":
        return torch.rand(shape, generator=gen) > 0.5
    return torch.randint(-100 if d.is_signed else 0, 100, shape, generator=gen).to(d.container)


@pytest.mark.parametrize("dname", ["f32", "f16", "bf16", "i64", "i32", "u8", "bool", "f64"])
@pytest.mark.parametrize("axis, shapes", [
    (0, [(3, 5), (1, 5), (4, 5)]),
    (1, [(2, 3, 7), (2, 1, 7)]),
    (-1, [(2, 3, 7), (2, 3, 1), (2, 3, 2)]),
    (2, [(1, 4, 9, 8), (1, 4, 1, 8)]),                  # a KV cache step
    (1, [(2, 0, 3), (2, 5, 3)]),                        # an empty input
])
def test_matches_torch_cat(dname: str, axis: int, shapes: list[tuple[int, ...]]) -> None:
    types = [f"{dname}[{','.join(map(str, s))}]" for s in shapes]
    g = _graph(types, axis)
    ks = partition(g, cgen.CAPS).kernels
    assert [k.kind for k in ks] == ["template"], [k.describe() for k in ks]
    xs = [_data(dname, s, i) for i, s in enumerate(shapes)]
    got = api.build(g, "c")(*xs)
    assert torch.equal(got, torch.cat(xs, axis)) and got.dtype == dt.get(dname).container


def test_same_value_twice_and_strided_input() -> None:
    """An input given twice is copied twice; a transposed (strided) input is read in its
    logical order."""
    g = _graph(["f32[2,3,4]", "f32[2,5,4]"], 1, repeat_first=True)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    assert torch.equal(api.build(g, "c")(a, b), torch.cat([a, a, b], 1))
    g2 = Graph("catT")
    x = g2.add_input("f32[4,3]", "x")
    y = g2.add_input("f32[2,4]", "y")
    g2.set_outputs([g2.add("concat", [g2.add("transpose", [x], {"perm": [1, 0]}), y], {"axis": 0})])
    xv, yv = torch.randn(4, 3), torch.randn(2, 4)
    assert torch.equal(api.build(g2, "c")(xv, yv), torch.cat([xv.t(), yv], 0))


def test_symbolic_sizes_one_source() -> None:
    """A growing KV cache: the past length P is a runtime integer, so every length runs the
    same kernel (one source), and each result equals torch.cat."""
    g = _graph(["f32[1,4,P,8]", "f32[1,4,1,8]"], 2)
    cm = api.build(g, "c")
    ck = [c for c in cgen.render(partition(g, cgen.CAPS)) if c.kernel.kind == "template"]
    assert len(ck) == 1 and "q[0]" in ck[0].source
    for p in (0, 1, 7, 300):
        past, new = torch.randn(1, 4, p, 8), torch.randn(1, 4, 1, 8)
        assert torch.equal(cm(past, new), torch.cat([past, new], 2))


def test_large_copy_threads_equal() -> None:
    """Above PAR_BYTES the copy splits over the outer index; the result is the same on one
    and on two threads."""
    rows = PAR_BYTES // (4 * 64) + 16
    g = _graph([f"f32[8,{rows},32]", f"f32[8,{rows},32]"], 2)
    a, b = torch.randn(8, rows, 32), torch.randn(8, rows, 32)
    cm = api.build(g, "c")
    one, two = at_threads(lambda: cm(a, b), 1), at_threads(lambda: cm(a, b), 2)
    assert torch.equal(one, torch.cat([a, b], 2)) and torch.equal(two, one)


def test_supported() -> None:
    g = _graph(["f32[2,3]", "f32[2,3]"], 0)
    n = g.outputs[0].producer
    assert concat_supported(n)
    assert cgen.op_coverage()["concat"] == "template"
