"""A zoo of architectures the tests never otherwise meet: Hugging Face models from tiny
configs (random weights) and timm image models, each with example inputs.

They guard the breadth of the frontends, the C target and the passes: every one must import,
compile and match eager torch. Token ids avoid 0, the pad id of several configs, whose
embedding row is all zeros: a model whose first position is a pad token has an all-zero row
that a normalisation then divides by its own tiny norm, so any rounding difference there is
amplified to the output's scale (a property of the input, not of a rewrite).
"""
from __future__ import annotations

from typing import Callable

import torch
import transformers as T

V = 100
_TEXT = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=128, max_position_embeddings=64)
Builder = Callable[[], tuple[torch.nn.Module, dict[str, torch.Tensor]]]


def ids(b: int = 2, s: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, V, (b, s), generator=torch.Generator().manual_seed(seed))


def _pixels(size: int = 32, b: int = 2) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))}


def _text(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    return model, {"input_ids": ids()}


_VIT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=8)

# text models take input_ids [B, S]; the others name their input
HF: dict[str, Builder] = {
    "roberta": lambda: _text(T.RobertaModel(T.RobertaConfig(**_TEXT, pad_token_id=1))),
    "distilbert": lambda: _text(T.DistilBertModel(T.DistilBertConfig(
        vocab_size=V, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64))),
    "albert": lambda: _text(T.AlbertModel(T.AlbertConfig(**_TEXT, embedding_size=32))),
    "electra": lambda: _text(T.ElectraModel(T.ElectraConfig(**_TEXT, embedding_size=32))),
    "deberta_v2": lambda: _text(T.DebertaV2Model(T.DebertaV2Config(**_TEXT))),
    "mpnet": lambda: _text(T.MPNetModel(T.MPNetConfig(**_TEXT))),
    "opt": lambda: _text(T.OPTModel(T.OPTConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
        max_position_embeddings=64, word_embed_proj_dim=64))),
    "gpt_neox": lambda: _text(T.GPTNeoXModel(T.GPTNeoXConfig(**_TEXT))),
    "phi": lambda: _text(T.PhiModel(T.PhiConfig(**_TEXT))),
    "phi3": lambda: _text(T.Phi3Model(T.Phi3Config(**_TEXT, pad_token_id=0, eos_token_id=1, bos_token_id=1))),
    "gemma": lambda: _text(T.GemmaModel(T.GemmaConfig(**_TEXT, head_dim=16, num_key_value_heads=2))),
    "gemma2": lambda: _text(T.Gemma2Model(T.Gemma2Config(**_TEXT, head_dim=16, num_key_value_heads=2))),
    "mistral": lambda: _text(T.MistralModel(T.MistralConfig(**_TEXT, num_key_value_heads=2))),
    "qwen2": lambda: _text(T.Qwen2Model(T.Qwen2Config(**_TEXT, num_key_value_heads=2))),
    "qwen3": lambda: _text(T.Qwen3Model(T.Qwen3Config(**_TEXT, num_key_value_heads=2, head_dim=16))),
    "falcon": lambda: _text(T.FalconModel(T.FalconConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4))),
    "bloom": lambda: _text(T.BloomModel(T.BloomConfig(vocab_size=V, hidden_size=64, n_layer=2, n_head=4))),
    "codegen": lambda: _text(T.CodeGenModel(T.CodeGenConfig(
        vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, rotary_dim=8, bos_token_id=1,
        eos_token_id=1))),
    "gptj": lambda: _text(T.GPTJModel(T.GPTJConfig(
        vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64, rotary_dim=8, bos_token_id=1,
        eos_token_id=1))),
    "t5_encoder": lambda: _text(T.T5EncoderModel(T.T5Config(
        vocab_size=V, d_model=64, num_layers=2, num_heads=4, d_ff=128, d_kv=16))),
    "bart_encoder": lambda: _text(T.BartModel(T.BartConfig(
        vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=64)).get_encoder()),
    "clip_text": lambda: _text(T.CLIPTextModel(T.CLIPTextConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2))),
    "olmo": lambda: _text(T.OlmoModel(T.OlmoConfig(**_TEXT, eos_token_id=1))),
    "granite": lambda: _text(T.GraniteModel(T.GraniteConfig(**_TEXT))),
    "qwen2_moe": lambda: _text(T.Qwen2MoeModel(T.Qwen2MoeConfig(
        **_TEXT, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=64))),
    "mamba": lambda: _text(T.MambaModel(T.MambaConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                                      state_size=8))),
    "vit": lambda: (T.ViTModel(T.ViTConfig(**_VIT)), _pixels()),
    "beit": lambda: (T.BeitModel(T.BeitConfig(**_VIT)), _pixels()),
    "dinov2": lambda: (T.Dinov2Model(T.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)), _pixels()),
    "clip_vision": lambda: (T.CLIPVisionModel(T.CLIPVisionConfig(**_VIT)), _pixels()),
    "swin": lambda: (T.SwinModel(T.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1],
                                               num_heads=[2, 2], window_size=4)), _pixels()),
    "convnext": lambda: (T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1],
                                                          num_stages=2)), _pixels()),
    "mobilevit": lambda: (T.MobileViTModel(T.MobileViTConfig(
        image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64])), _pixels(64)),
    "segformer": lambda: (T.SegformerModel(T.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], decoder_hidden_size=32, strides=[4, 2], patch_sizes=[7, 3],
        mlp_ratios=[2, 2])), _pixels()),
    "whisper_encoder": lambda: (T.WhisperModel(T.WhisperConfig(
        vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
        max_source_positions=32, pad_token_id=0)).get_encoder(),
        {"input_features": torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(2))}),
    "wav2vec2": lambda: (T.Wav2Vec2Model(T.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
        {"input_values": torch.randn(2, 800, generator=torch.Generator().manual_seed(3))}),
}

# timm image models at their default input size, batch 1: CNN families (ghost, RepVGG,
# Res2Net, DLA, HRNet, NFNet, HGNet, StarNet, MobileNetV4, MobileOne, FastViT) and hybrid /
# attention ones (PoolFormer, EfficientFormer, EdgeNeXt, MobileViTv2, CoaT, CrossViT, MaxViT,
# EVA-02, CaiT, GCViT, XCiT, Twins, BoTNet)
TIMM = (
    "ghostnet_100", "repvgg_a0", "res2net50_14w_8s", "dla34", "hrnet_w18_small", "nfnet_f0",
    "hgnetv2_b0", "starnet_s1", "mobilenetv4_conv_small", "mobileone_s0", "fastvit_t8",
    "poolformer_s12", "efficientformer_l1", "edgenext_xx_small", "mobilevitv2_050", "coat_lite_tiny",
    "crossvit_tiny_240", "maxvit_nano_rw_256", "eva02_tiny_patch14_224", "cait_xxs24_224",
    "gcvit_xxtiny", "xcit_nano_12_p16_224", "twins_svt_small", "sebotnet33ts_256",
)


def hf(name: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The eval-mode model ``name`` of :data:`HF` (seeded weights) and its inputs."""
    torch.manual_seed(0)
    model, inputs = HF[name]()
    return model.eval(), inputs


def timm_model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The eval-mode timm model ``name`` (seeded random weights) and a batch-1 input."""
    import timm

    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False).eval()
    size = m.pretrained_cfg.get("input_size", (3, 224, 224))
    return m, torch.randn(1, *size, generator=torch.Generator().manual_seed(4))
