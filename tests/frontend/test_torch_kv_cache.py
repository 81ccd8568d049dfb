"""A transformers model that returns its KV cache by default (config.use_cache) imports as if
use_cache=False: the IR has no value for a Cache object."""
from __future__ import annotations

import torch
import transformers

import scalefold as sf


def test_causal_lm_with_use_cache_on_compiles_without_the_cache() -> None:
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, vocab_size=50)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    assert m.config.use_cache
    ids = torch.randint(0, 50, (2, 7))
    cm = sf.compile(m, (ids,), target="interp")
    assert m.config.use_cache          # restored
    with torch.no_grad():
        want = m(ids, use_cache=False).logits
    got = cm(ids)
    got = got[0] if isinstance(got, tuple) else got
    assert torch.allclose(got, want, atol=1e-5)
