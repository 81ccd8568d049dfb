"""New bindings of the sizes (a KV cache growing by one each call) reuse what does not depend
on the sizes that changed: the steps of kernels whose symbols kept their values, the liveness
of the buffer plan, and the arena while the buffers fit the room planned for them."""
from __future__ import annotations

import gc

import pytest
import torch
from torch.export import Dim

import scalefold as sf
from scalefold.runtime.executor import ENV_CACHE


class Decode(torch.nn.Module):
    """One attention step over a cache: the linears see one token, attention the whole cache."""

    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(32, 32)
        self.o = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.q(x))
        kv = torch.cat([past, h], 1)
        att = torch.softmax(h @ kv.transpose(1, 2) / 5.0, -1) @ kv
        return self.o(att) * torch.sigmoid(h), kv


@pytest.fixture(scope="module")
def compiled() -> tuple[torch.nn.Module, sf.CompiledModel]:
    torch.manual_seed(0)
    m = Decode().eval()
    g = sf.from_torch(m, (torch.randn(1, 1, 32), torch.randn(1, 6, 32)),
                      dynamic_shapes=(None, {1: Dim("P", min=2, max=512)}))
    return m, sf.compile(g, target="c")


def _inputs(p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, 32, generator=gen), torch.randn(1, p, 32, generator=gen)


def test_any_order_of_bindings_matches_eager(compiled) -> None:
    m, cm = compiled
    cm._runner.forget_bindings()
    # growing, shrinking, repeated and revisited sizes, more of them than the caches hold
    sizes = [20, 21, 22, 5, 40, 3, 21, 21, 64, 2, 7, *range(8, 8 + 2 * ENV_CACHE)]
    for i, p in enumerate(sizes):
        x, past = _inputs(p, i)
        with torch.no_grad():
            want = m(x, past)
        got = cm(x, past)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ex = cm._runner
    assert all(len(c) <= ENV_CACHE for c in ex._kstep)
    assert len(ex._bound) <= ENV_CACHE


def test_steps_without_the_changed_symbol_are_shared(compiled) -> None:
    _, cm = compiled
    ex = cm._runner
    ex.forget_bindings()
    cm(*_inputs(10, 0))
    cm(*_inputs(11, 1))
    b10, b11 = list(ex._bound.values())
    shared = [i for i, (a, b) in enumerate(zip(b10.steps, b11.steps)) if a is b]
    rebuilt = [i for i in range(len(b10.steps)) if i not in shared]
    assert shared and rebuilt
    for i, k in enumerate(ex.schedule.kernels):
        depends = bool(ex._symsets[ex._ksym[i]])
        assert (i in rebuilt) == depends, (k.name, [n.op for n in k.nodes])
    # made from the previous binding: the shared kernels' buffers are the very same views
    planned = [ex._slot[id(o)] for i in shared for o in ex.schedule.kernels[i].outputs
               if ex.schedule.kernels[i].kind != "view" and b10.base_vals[ex._slot[id(o)]] is not None]
    assert planned and all(b10.base_vals[s] is b11.base_vals[s] for s in planned)
    # the one-token linear depends on no symbol; the cache concat does
    ops = {i: {n.op for n in k.nodes} for i, k in enumerate(ex.schedule.kernels)}
    assert any("concat" in ops[i] for i in rebuilt)
    assert any(ops[i] & {"linear", "matmul"} for i in shared)


def test_arena_reused_while_buffers_fit(compiled) -> None:
    _, cm = compiled
    ex = cm._runner
    ex.forget_bindings()
    arenas = []
    for p in (100, 101, 102, 30, 2):
        cm(*_inputs(p, p))
        arenas.append(ex._bound[next(reversed(ex._bound))].arena)
    # +1 token fits the eighth to spare; smaller caches fit the larger plan
    assert all(a is arenas[0] for a in arenas)
    cm(*_inputs(300, 3))
    bigger = ex._bound[next(reversed(ex._bound))].arena
    assert bigger is not arenas[0] and bigger.numel() > arenas[0].numel()


def test_new_bindings_leave_no_reference_cycles(compiled) -> None:
    """Garbage cycles made per binding set off full collections, which cost a decode loop
    more than the binding itself (hundreds of ms on a large process heap)."""
    _, cm = compiled
    cm._runner.forget_bindings()
    for p in (3, 4):
        cm(*_inputs(p, p))
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        for p in range(5, 25):
            cm(*_inputs(p, p))
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
