import sys
from common import *
import transformers as T
from torch.export import Dim

H, L, NH = 64, 2, 4
def cfgs():
    c = {}
    c["gpt2"] = (T.GPT2Config(vocab_size=VOCAB, n_embd=H, n_layer=L, n_head=NH, n_positions=128), T.GPT2LMHeadModel)
    c["gpt_neo"] = (T.GPTNeoConfig(vocab_size=VOCAB, hidden_size=H, num_layers=L, num_heads=NH, max_position_embeddings=128,
                                   attention_types=[[["global", "local"], 1]], window_size=4), T.GPTNeoForCausalLM)
    c["gptj"] = (T.GPTJConfig(vocab_size=VOCAB, n_embd=H, n_layer=L, n_head=NH, n_positions=128, rotary_dim=8), T.GPTJForCausalLM)
    c["opt"] = (T.OPTConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, ffn_dim=128,
                            max_position_embeddings=128, word_embed_proj_dim=H), T.OPTForCausalLM)
    c["bloom"] = (T.BloomConfig(vocab_size=VOCAB, hidden_size=H, n_layer=L, n_head=NH), T.BloomForCausalLM)
    kw = dict(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH, intermediate_size=128,
              max_position_embeddings=128)
    c["llama"] = (T.LlamaConfig(num_key_value_heads=2, **kw), T.LlamaForCausalLM)
    c["mistral"] = (T.MistralConfig(num_key_value_heads=2, sliding_window=4, **kw), T.MistralForCausalLM)
    c["qwen2"] = (T.Qwen2Config(num_key_value_heads=2, **kw), T.Qwen2ForCausalLM)
    c["qwen3"] = (T.Qwen3Config(num_key_value_heads=2, head_dim=16, **kw), T.Qwen3ForCausalLM)
    c["phi"] = (T.PhiConfig(partial_rotary_factor=0.5, **kw), T.PhiForCausalLM)
    c["phi3"] = (T.Phi3Config(num_key_value_heads=2, pad_token_id=0, **kw), T.Phi3ForCausalLM)
    c["gemma"] = (T.GemmaConfig(num_key_value_heads=1, head_dim=16, **kw), T.GemmaForCausalLM)
    c["gemma2"] = (T.Gemma2Config(num_key_value_heads=2, head_dim=16, sliding_window=4, **kw), T.Gemma2ForCausalLM)
    c["falcon"] = (T.FalconConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                                  new_decoder_architecture=False, multi_query=True, alibi=False), T.FalconForCausalLM)
    c["falcon_alibi"] = (T.FalconConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                                  alibi=True, multi_query=False), T.FalconForCausalLM)
    c["stablelm"] = (T.StableLmConfig(num_key_value_heads=2, **kw), T.StableLmForCausalLM)
    c["gpt_neox"] = (T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                                     intermediate_size=128, max_position_embeddings=128, rotary_pct=0.25), T.GPTNeoXForCausalLM)
    c["mpt"] = (T.MptConfig(vocab_size=VOCAB, d_model=H, n_layers=L, n_heads=NH, max_seq_len=128), T.MptForCausalLM)
    return c

which = sys.argv[1].split(",") if len(sys.argv) > 1 and sys.argv[1] else None
attn = sys.argv[2] if len(sys.argv) > 2 else "eager"
mask = (sys.argv[3] == "mask") if len(sys.argv) > 3 else False
tg = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else ("interp", "c", "onnx", "save", "static")
for name, (cfg, cls) in cfgs().items():
    if which and name not in which:
        continue
    try:
        torch.manual_seed(0)
        cfg._attn_implementation = attn
        m = cls(cfg).eval()
    except Exception as e:
        print(f"=== {name}: build ERR {e}")
        continue
    names = ["input_ids", "attention_mask"] if mask else ["input_ids"]
    w = Wrap(m, names, kw=dict(use_cache=False, return_dict=False))
    B, S = Dim("B", max=16), Dim("S", max=64)
    dyn = (tuple({0: B, 1: S} for _ in names),)
    check(f"{name} [{attn}{' mask' if mask else ''}]", w, ids_maker(mask=mask), (2, 8), [(1, 1), (3, 5), (1, 13), (2, 31)], dyn=dyn,
          targets=tg)
