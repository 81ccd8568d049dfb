"""transformers' ``repeat_kv`` before attention imports as one ``sdpa[gqa=true]``
(frontend/fuse_gqa.py): no copy of the KV heads is left in the graph, results unchanged.
Forms that are not an in-place head repeat (tiling, a repeat on another axis) stay as written."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch.export import Dim

import scalefold as sf
from harness import assert_close


def _ops(g: sf.Graph) -> list[str]:
    return [n.op for n in g.nodes]


def _sdpa_gqa(g: sf.Graph) -> list[bool]:
    return [bool(n.attrs["gqa"]) for n in g.nodes if n.op == "sdpa"]


class RepeatKV(torch.nn.Module):
    """transformers' repeat_kv followed by attention, with an optional float mask."""

    def __init__(self, rep: int, causal: bool = False, mask: bool = False):
        super().__init__()
        self.rep, self.causal, self.mask = rep, causal, mask

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, d = k.shape
        k = k[:, :, None, :, :].expand(b, h, self.rep, s, d).reshape(b, h * self.rep, s, d)
        v = v[:, :, None, :, :].expand(b, h, self.rep, s, d).reshape(b, h * self.rep, s, d)
        m = None
        if self.mask:
            m = torch.zeros(q.shape[2], s).masked_fill(torch.ones(q.shape[2], s, dtype=torch.bool).triu(1),
                                                       float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=self.causal)


def _qkv(b: int, h: int, hk: int, lq: int, s: int, d: int = 16) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    return torch.randn(b, h, lq, d), torch.randn(b, hk, s, d), torch.randn(b, hk, s, d)


@pytest.mark.parametrize("rep,causal,mask", [(2, False, False), (4, True, False), (8, False, True)])
@pytest.mark.parametrize("target", ["interp", "c"])
def test_repeat_kv_becomes_gqa_sdpa(rep: int, causal: bool, mask: bool, target: str) -> None:
    m = RepeatKV(rep, causal, mask)
    q, k, v = _qkv(2, 4 * rep, 4, 5, 5)
    cm = sf.compile(m, (q, k, v), target=target)
    assert _ops(cm.graph).count("expand") == 0 and _sdpa_gqa(cm.graph) == [True], cm.graph
    with torch.no_grad():
        assert_close(cm(q, k, v), m(q, k, v), rtol=1e-5, rel_to_scale=True)


def test_repeat_kv_with_a_dynamic_cache_length() -> None:
    m = RepeatKV(8)
    q, k, v = _qkv(1, 32, 4, 1, 33)
    p = Dim("P", min=2, max=4096)
    cm = sf.compile(m, (q, k, v), dynamic_shapes=(None, {2: p}, {2: p}), target="c")
    assert _sdpa_gqa(cm.graph) == [True] and "expand" not in _ops(cm.graph)
    for s in (7, 33, 130):
        q, k, v = _qkv(1, 32, 4, 1, s)
        with torch.no_grad():
            assert_close(cm(q, k, v), m(q, k, v), rtol=1e-5, rel_to_scale=True)


class Tiled(torch.nn.Module):
    """k.repeat tiles the heads (head h reads kv head h % hk): not grouped-query attention."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k.repeat(1, 2, 1, 1), v.repeat(1, 2, 1, 1))


class TiledByExpand(torch.nn.Module):
    """The new axis before the heads: reshape gives head h = r * hk + j, again a tiling."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, d = k.shape
        k = k[:, None].expand(b, 2, h, s, d).reshape(b, 2 * h, s, d)
        v = v[:, None].expand(b, 2, h, s, d).reshape(b, 2 * h, s, d)
        return F.scaled_dot_product_attention(q, k, v)


class RepeatOnlyK(torch.nn.Module):
    """Only k repeated, v already full-width: the rewrite needs both."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, d = k.shape
        k = k[:, :, None].expand(b, h, 2, s, d).reshape(b, 2 * h, s, d)
        return F.scaled_dot_product_attention(q, k, torch.cat([v, v * 2], dim=1))


@pytest.mark.parametrize("cls", [Tiled, TiledByExpand, RepeatOnlyK])
def test_other_head_copies_stay_as_written(cls: type[torch.nn.Module]) -> None:
    m = cls()
    q, k, v = _qkv(2, 4, 2, 3, 6)      # heads == copies: only the axis tells a tiling apart
    cm = sf.compile(m, (q, k, v), target="c")
    assert _sdpa_gqa(cm.graph) == [False], cm.graph
    with torch.no_grad():
        assert_close(cm(q, k, v), m(q, k, v), rtol=1e-5, rel_to_scale=True)


class RepeatAlsoReturned(torch.nn.Module):
    """The repeated k is also an output: attention is fused, the copy that is returned stays."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, s, d = k.shape
        kr = k[:, :, None].expand(b, h, 2, s, d).reshape(b, 2 * h, s, d)
        vr = v[:, :, None].expand(b, h, 2, s, d).reshape(b, 2 * h, s, d)
        return F.scaled_dot_product_attention(q, kr, vr), kr * 1.0


def test_a_repeat_read_elsewhere_is_kept() -> None:
    m = RepeatAlsoReturned()
    q, k, v = _qkv(1, 8, 4, 3, 6)
    cm = sf.compile(m, (q, k, v), target="c")
    assert _sdpa_gqa(cm.graph) == [True] and _ops(cm.graph).count("expand") == 1
    with torch.no_grad():
        for a, b in zip(cm(q, k, v), m(q, k, v)):
            assert_close(a, b, rtol=1e-5, rel_to_scale=True)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_grouped_query_llms_import_without_head_copies(arch: str) -> None:
    kw = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
              num_key_value_heads=2, vocab_size=97)
    cfg = (transformers.LlamaConfig if arch == "llama" else transformers.Qwen2Config)(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = (transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM)(cfg).eval()
    ids = torch.randint(0, 97, (2, 9))
    cm = sf.compile(model, (ids,), target="c")
    assert _sdpa_gqa(cm.graph) == [True, True] and "expand" not in _ops(cm.graph), cm.graph
    with torch.no_grad():
        want = model(ids, use_cache=False).logits
    got = cm(ids)
    assert_close(got[0] if isinstance(got, tuple) else got, want, rtol=1e-5, rel_to_scale=True)
