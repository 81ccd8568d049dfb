"""The C target's generated attention (codegen/c_sdpa.py) against the reference interpreter:
ranks, head sizes, key lengths, GQA, causal, bool and float masks of every broadcast shape,
fully masked rows, NaN, dynamic sizes, the portable loops and the thread count."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close, at_threads
from scalefold.api import build_c
from scalefold.codegen import c as cgen
from scalefold.codegen import c_conv, c_sdpa
from scalefold.codegen.schedule import partition
from scalefold.ir import Graph
from scalefold.runtime.interp import run


def _graph(q: str, k: str, v: str, mask: str | None = None, **attrs) -> Graph:
    g = Graph("att")
    ins = [g.add_input(f"f32[{q}]", "q"), g.add_input(f"f32[{k}]", "k"), g.add_input(f"f32[{v}]", "v")]
    if mask:
        ins.append(g.add_input(mask, "m"))
    g.set_outputs([g.add("sdpa", ins, attrs)])
    return g


def _mask(dtype: str, shape: tuple) -> torch.Tensor:
    if dtype == "bool":
        return torch.rand(*shape) > 0.3
    return torch.randn(*shape)


CASES = {
    # name: (q, k, v, mask type and shape (None: no mask), attrs)
    "vit": ("1,3,197,64", "1,3,197,64", "1,3,197,64", None, {}),
    "rank3_causal": ("5,7,16", "5,9,16", "5,9,24", None, {"causal": True}),
    "odd_d": ("2,2,11,20", "2,2,13,20", "2,2,13,7", None, {"scale": 0.3}),
    "bool_pad": ("2,4,9,8", "2,4,9,8", "2,4,9,8", ("bool", (2, 1, 1, 9)), {}),
    "bool_full": ("2,2,5,32", "2,2,6,32", "2,2,6,32", ("bool", (2, 2, 5, 6)), {}),
    "f32_ls": ("1,2,6,16", "1,2,17,16", "1,2,17,16", ("f32", (6, 17)), {}),
    "f32_causal_gqa": ("2,4,10,16", "2,2,10,16", "2,2,10,16", ("f32", (2, 1, 10, 10)), {"causal": True, "gqa": True}),
    "long_keys": ("1,1,8,64", "1,1,300,64", "1,1,300,64", None, {}),
    # GQA: a k head's q heads share a tile, rows (head, query) in order, so a tile crosses
    # heads (G = 3, L = 3: tiles of rows 0-5 and 6-8), the mask and causal limit per row
    "gqa_rows_cross_heads": ("2,6,3,16", "2,2,5,16", "2,2,5,16", ("f32", (2, 6, 3, 5)), {"causal": True, "gqa": True}),
    "gqa_decode": ("1,8,1,64", "1,2,33,64", "1,2,33,64", ("bool", (1, 1, 1, 33)), {"gqa": True}),
    "gqa_decode_heads_mask": ("1,12,1,32", "1,3,70,32", "1,3,70,48", ("f32", (1, 12, 1, 70)), {"gqa": True}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_interpreter(name: str) -> None:
    q, k, v, mask, attrs = CASES[name]
    mspec = None if mask is None else f"{mask[0]}[{','.join(map(str, mask[1]))}]"
    g = _graph(q, k, v, mspec, **attrs)
    kern = next(kk for kk in partition(g, cgen.CAPS).kernels if kk.kind == "library")
    assert c_sdpa.sdpa_supported(kern)
    cm = build_c(g)
    assert kern.name in cm.sources
    xs = [torch.randn(*map(int, s.split(","))) for s in (q, k, v)]
    if mask is not None:
        xs.append(_mask(*mask))
    assert_close(cm(*xs), run(g, *xs)[0], rtol=1e-5, atol=1e-5)


def test_dynamic_sizes_and_masked_rows() -> None:
    g = _graph("B,4,L,16", "B,4,S,16", "B,4,S,16", "bool[B,1,L,S]", causal=True)
    cm = build_c(g)
    for b, n_l, n_s in ((2, 9, 9), (1, 1, 30), (3, 20, 5), (2, 9, 9)):
        xs = [torch.randn(b, 4, n_l, 16), torch.randn(b, 4, n_s, 16), torch.randn(b, 4, n_s, 16),
              torch.rand(b, 1, n_l, n_s) > 0.5]
        xs[3][0, 0, 0] = False             # a row with no key: zeros
        got, want = cm(*xs), run(g, *xs)[0]
        assert torch.equal(got[0, :, 0], torch.zeros_like(got[0, :, 0]))
        assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_nan_rows_follow_the_reference() -> None:
    g = _graph("1,2,8,16", "1,2,8,16", "1,2,8,16", "f32[1,1,8,8]")
    cm = build_c(g)
    xs = [torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 1, 8, 8)]
    xs[0][0, 1, 3, 2] = float("nan")
    xs[3][0, 0, 5] = float("-inf")         # every key masked by -inf: zeros
    xs[3][0, 0, 6, 2] = float("nan")       # one NaN score: the row's probabilities are NaN -> 0
    got, want = cm(*xs), run(g, *xs)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_portable_loops_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _graph("2,3,40,24", "2,3,33,24", "2,3,33,20", "f32[2,3,40,33]", causal=True)
    xs = [torch.randn(2, 3, 40, 24), torch.randn(2, 3, 33, 24), torch.randn(2, 3, 33, 20), torch.randn(2, 3, 40, 33)]
    want = run(g, *xs)[0]
    cm = build_c(g)
    one, two = at_threads(lambda: cm(*xs), 1), at_threads(lambda: cm(*xs), 2)
    assert torch.equal(one, two)
    assert_close(two, want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(c_conv, "CONV", c_conv.ConvConfig(vec=False))
    cm = build_c(g)
    assert any("#define SF_NO_VEC 1" in s for s in cm.sources.values())
    assert_close(cm(*xs), want, rtol=1e-5, atol=1e-5)


def test_scope() -> None:
    def kern(g: Graph):
        return next(kk for kk in partition(g, cgen.CAPS).kernels if kk.kind == "library")
    g = Graph("h")
    ins = [g.add_input("f16[1,2,4,8]", n) for n in "qkv"]
    g.set_outputs([g.add("sdpa", ins)])
    assert not c_sdpa.sdpa_supported(kern(g))
    g = _graph("1,2,4,D", "1,2,4,D", "1,2,4,D")
    assert not c_sdpa.sdpa_supported(kern(g))          # head size not static


def test_decode_rows_keep_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # fewer than MIN_ROWS rows per k head (a decoding step without GQA) keep torch's kernel;
    # MIN_ROWS and more run the C one, and a GQA decoding step's G heads count as G rows
    from linear_cases import count_library_calls
    calls = count_library_calls(monkeypatch)
    g = _graph("1,2,L,32", "1,2,S,32", "1,2,S,32")
    cm = build_c(g)
    for n_l, lib in ((1, 1), (c_sdpa.MIN_ROWS - 1, 2), (c_sdpa.MIN_ROWS, 2), (40, 2)):
        xs = [torch.randn(1, 2, n_l, 32), torch.randn(1, 2, 50, 32), torch.randn(1, 2, 50, 32)]
        assert_close(cm(*xs), run(g, *xs)[0], rtol=1e-5, atol=1e-5)
        assert calls["lib"] == lib
    g = _graph("1,8,L,32", "1,2,S,32", "1,2,S,32", gqa=True)      # G = 4 = MIN_ROWS
    cm = build_c(g)
    xs = [torch.randn(1, 8, 1, 32), torch.randn(1, 2, 50, 32), torch.randn(1, 2, 50, 32)]
    assert_close(cm(*xs), run(g, *xs)[0], rtol=1e-5, atol=1e-5)
    assert calls["lib"] == 2


def _sdpa_steps(cm) -> list:
    b = list(cm._runner._bound.values())[-1]      # the binding used last
    return [s for s in b.steps if getattr(s, "__qualname__", "").startswith("sdpa_step")]


def _vit_attention(heads: int = 3, dim: int = 48, gqa_expand: bool = False) -> Graph:
    """timm's attention: one QKV projection split into strided per-head q, k and v views,
    attention, then heads and rows transposed back and merged."""
    g = Graph("vit_att")
    x = g.add_input(f"f32[B,N,{dim}]", "x")
    B, N = x.type.shape[:2]
    d = dim // heads
    qkv = g.add("linear", [x, g.add_const(torch.randn(3 * dim, dim) * 0.2)])
    qkv = g.add("reshape", [qkv], {"shape": (B, N, 3, heads, d)})
    qkv = g.add("transpose", [qkv], {"perm": (2, 0, 3, 1, 4)})
    q, k, v = (g.add("squeeze", [g.add("slice", [qkv], {"starts": (i,), "ends": (i + 1,), "axes": (0,)})],
                     {"axes": (0,)}) for i in range(3))
    y = g.add("sdpa", [q, k, v], {})
    y = g.add("transpose", [y], {"perm": (0, 2, 1, 3)})
    y = g.add("reshape", [y], {"shape": (B, N, dim)})
    g.set_outputs([g.add("linear", [y, g.add_const(torch.randn(dim, dim) * 0.2)])])
    return g


def test_strided_heads_read_in_place_and_heads_merged_without_a_copy() -> None:
    torch.manual_seed(0)
    g = _vit_attention()
    cm = build_c(g)
    sd = next(k for k in cm.schedule.kernels if k.nodes[0].op == "sdpa")
    assert c_sdpa.blhd_output(sd, cm.schedule.graph.outputs)
    for shape in ((2, 17, 48), (1, 5, 48), (3, 40, 48)):
        x = torch.randn(*shape)
        assert_close(cm(x), run(g, x)[0], rtol=1e-5, atol=1e-5)
        # a binding's first call runs step by step: every input of the attention passed as it
        # came and its result written into the planned buffer (what a segment then repeats)
        (step,) = _sdpa_steps(cm)
        assert step.last_call() is not None
        for _ in range(2):
            assert_close(cm(x), run(g, x)[0], rtol=1e-5, atol=1e-5)


def test_output_layouts_where_readers_need_contiguous_heads() -> None:
    """y read as [B, H, L, Dv] (a graph output, or a reduction over rows) stays contiguous."""
    torch.manual_seed(1)
    g = Graph("att2")
    q, k, v = (g.add_input("f32[2,3,9,16]", n) for n in "qkv")
    y = g.add("sdpa", [q, k, v], {})
    g.set_outputs([y, g.add("reduce_sum", [y], {"axes": (2,), "keepdims": False})])
    cm = build_c(g)
    sd = next(kk for kk in cm.schedule.kernels if kk.nodes[0].op == "sdpa")
    assert not c_sdpa.blhd_output(sd, cm.schedule.graph.outputs)
    xs = [torch.randn(2, 3, 9, 16) for _ in range(3)]
    got = cm(*xs)
    assert got[0].is_contiguous()
    for a, b in zip(got, run(g, *xs)):
        assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_hf_heads_mask_and_expanded_gqa_keys() -> None:
    """Hugging Face's view + transpose heads, a padding mask, and keys / values expanded to
    the q heads (stride 0 over the repeated heads) as repeat_kv leaves them."""
    torch.manual_seed(2)
    g = Graph("hf")
    x = g.add_input("f32[B,S,32]", "x")
    m = g.add_input("bool[B,1,1,S]", "m")
    B, S = x.type.shape[:2]

    def heads(w: torch.Tensor, h: int) -> object:
        t = g.add("linear", [x, g.add_const(w)])
        t = g.add("reshape", [t], {"shape": (B, S, h, 8)})
        return g.add("transpose", [t], {"perm": (0, 2, 1, 3)})
    q = heads(torch.randn(32, 32) * 0.2, 4)
    kv = [heads(torch.randn(16, 32) * 0.2, 2) for _ in range(2)]
    kv = [g.add("reshape", [g.add("expand", [g.add("unsqueeze", [t], {"axes": (2,)})],
                                   {"shape": (B, 2, 2, S, 8)})], {"shape": (B, 4, S, 8)}) for t in kv]
    y = g.add("sdpa", [q, kv[0], kv[1], m], {})
    y = g.add("reshape", [g.add("transpose", [y], {"perm": (0, 2, 1, 3)})], {"shape": (B, S, 32)})
    g.set_outputs([y])
    cm = build_c(g)
    for b, s in ((2, 7), (1, 12)):
        xv, mv = torch.randn(b, s, 32), torch.rand(b, 1, 1, s) > 0.3
        mv[..., 0] = True
        assert_close(cm(xv, mv), run(g, xv, mv)[0], rtol=1e-5, atol=1e-5)
