"""The steps of generated kernels keep the pointers of the last call while their arguments
are the same tensor objects (runtime/cstep.py, runtime/cconv.py), and redo them whenever an
argument changes or needed a copy: new contents in the same object are read, a strided
argument is copied again at every call."""
from __future__ import annotations

import torch

import scalefold as sf
from scalefold.ir import Graph
from scalefold.runtime.cstep import c_step


def test_c_step_reuses_pointers_only_for_the_same_objects() -> None:
    calls: list[tuple[int, ...]] = []

    def fn(ptrs, q):  # type: ignore[no-untyped-def]
        calls.append(tuple(ptrs))
    a, b = torch.zeros(4), torch.zeros(4)
    step = c_step(fn, [0, 1], [0], [], None, None)
    vals = [a, b]
    step(vals)
    step(vals)
    assert calls[0] == calls[1] == (a.data_ptr(), b.data_ptr())
    c = torch.zeros(4)
    vals[0] = c
    step(vals)
    assert calls[2] == (c.data_ptr(), b.data_ptr())
    t = torch.zeros(3, 2).t()                      # a strided view: copied at every call
    vals[0] = t
    step(vals)
    first_copy = vals[0]
    assert first_copy is not t and first_copy.is_contiguous() and calls[3][0] == first_copy.data_ptr()
    vals[0] = t
    step(vals)
    assert vals[0] is not t and vals[0] is not first_copy


def test_same_objects_new_contents_are_read() -> None:
    """A chain of convolutions (cached channels-last views between them) and fused kernels,
    called with one input tensor whose contents change in place: every result follows."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.Hardswish(),
                            torch.nn.Conv2d(16, 16, 3, 1, 1, groups=16), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 24, 1), torch.nn.Flatten(), torch.nn.Linear(24 * 8 * 8, 10)).eval()
    _follows_in_place_changes(m, (1, 3, 16, 16))


def _follows_in_place_changes(m: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """``m`` compiled, called three times with one input tensor whose contents change in
    place between calls, matches torch every time."""
    x = torch.randn(*shape)
    cm = sf.compile(m, (x,), target="c")
    for _ in range(3):
        x.copy_(torch.randn(*shape))
        with torch.no_grad():
            want = m(x)
        torch.testing.assert_close(cm(x), want, rtol=1e-5, atol=1e-5)


def test_fused_kernel_on_a_transposed_view_each_call() -> None:
    g = Graph("t")
    x = g.add_input("f32[5,7]", "x")
    y = g.add("transpose", [x], {"perm": [1, 0]})
    g.set_outputs([g.add("mul", [g.add("exp", [y]), y])])
    cm = sf.api.build_c(g)
    for _ in range(3):
        xv = torch.randn(5, 7)
        torch.testing.assert_close(cm(xv), torch.exp(xv.t()) * xv.t())


class _AffineConv(torch.nn.Module):
    """x * 2 + 1 (a fused kernel writing NCHW into the arena, the same buffer object at every
    call) into a convolution that needs it channels-last: a copy at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(8, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.c(x * 2 + 1))


def test_copied_activation_is_redone_each_call() -> None:
    torch.manual_seed(1)
    _follows_in_place_changes(_AffineConv().eval(), (2, 8, 9, 9))


def test_steps_keep_no_input_or_output_alive() -> None:
    """A decoder's KV cache goes into a concat and comes out as a new tensor at every token:
    once the caller drops the old ones, nothing of the compiled model may keep them (nor a
    convolution's input and output)."""
    import gc
    import weakref
    g = Graph("kv")
    past = g.add_input("f32[1,4,P,8]", "past")
    new = g.add_input("f32[1,4,1,8]", "new")
    g.set_outputs([g.add("concat", [past, new], {"axis": 2})])
    cm = sf.api.build_c(g)
    conv = sf.compile(_AffineConv().eval(), (torch.randn(1, 8, 6, 6),), target="c")
    refs = []
    for _ in range(2):
        p, n = torch.randn(1, 4, 5, 8), torch.randn(1, 4, 1, 8)
        out = cm(p, n)
        x = torch.randn(1, 8, 6, 6)
        y = conv(x)
        refs += [weakref.ref(t) for t in (p, n, out, x, y)]
        del p, n, out, x, y
    gc.collect()
    assert all(r() is None for r in refs)


def test_view_steps_hand_out_one_view_of_the_arena_but_keep_nothing_else() -> None:
    """A reshape of an arena buffer is the same object at every call (so the C steps after it
    keep their pointers); a view of the caller's input is made afresh and not kept."""
    import gc
    import weakref

    from scalefold.runtime.cstep import view_step
    arena = torch.zeros(8)
    held = {arena.untyped_storage().data_ptr()}
    step = view_step(0, 1, lambda t: t.reshape(2, 4), lambda t: t.untyped_storage().data_ptr() in held)
    vals = [arena[:8], None]
    step(vals)
    first = vals[1]
    vals2 = [vals[0], None]
    step(vals2)
    assert vals2[1] is first and first.data_ptr() == arena.data_ptr()
    x = torch.zeros(8)                      # not in the arena: a new view each call, none kept
    step([x, None])
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None
    strided = torch.zeros(4, 2).t()         # flattening it copies: never handed out again
    held.add(strided.untyped_storage().data_ptr())
    flat = view_step(0, 1, lambda t: t.reshape(8), lambda t: t.untyped_storage().data_ptr() in held)
    v1, v2 = [strided, None], [strided, None]
    flat(v1)
    strided.fill_(3.0)
    flat(v2)
    assert v2[1] is not v1[1] and float(v2[1].sum()) == 24.0 and float(v1[1].sum()) == 0.0
