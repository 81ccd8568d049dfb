"""Hugging Face mixture-of-experts blocks import as one IR ``moe`` node each (frontend/hf_moe.py):
the graph has no routing ops left, runs like the torch model on the interpreter and the C
target, quantises to ``qmoe``, takes dynamic batch / sequence dims, and the user's model is
left untouched."""
from __future__ import annotations

from collections import Counter
from typing import Callable

import pytest
import torch
import torch.nn as nn
import transformers as T
from torch.export import Dim

import scalefold
from harness import assert_close
from scalefold.frontend.hf_moe import recognise
from scalefold.frontend.torch import from_torch
from scalefold.ir.graph import Graph
from scalefold.ir.verify import verify
from scalefold.passes import PassManager
from scalefold.runtime.interp import run

VOCAB = 100
# What a traced dispatch loop or router leaves behind; none may survive the import. (sigmoid
# may: Qwen2-MoE's shared-expert gate is an ordinary op.)
ROUTING_OPS = {"topk", "sort", "argsort", "gather", "scatter", "scatter_add", "index_put", "index_add",
               "nonzero", "one_hot", "where", "cumsum", "softmax", "matmul"}
COMMON = dict(use_cache=False, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=VOCAB, num_experts_per_tok=2,
              max_position_embeddings=64, attn_implementation="sdpa")


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _mixtral() -> nn.Module:
    return T.MixtralModel(T.MixtralConfig(intermediate_size=128, num_local_experts=4, **COMMON))


def _qwen2_moe() -> nn.Module:
    # norm_topk_prob=False (Qwen2-MoE's default): the top-k weights are not renormalised.
    return T.Qwen2MoeModel(T.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=96,
                                            shared_expert_intermediate_size=128, num_experts=4,
                                            norm_topk_prob=False, **COMMON))


def _qwen3_moe() -> nn.Module:
    return T.Qwen3MoeModel(T.Qwen3MoeConfig(intermediate_size=128, moe_intermediate_size=96,
                                            num_experts=4, norm_topk_prob=True, head_dim=16, **COMMON))


def _olmoe() -> nn.Module:
    return T.OlmoeModel(T.OlmoeConfig(intermediate_size=128, num_experts=4, **COMMON))


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "mixtral": _mixtral, "qwen2_moe": _qwen2_moe, "qwen3_moe": _qwen3_moe, "olmoe": _olmoe}


def _model(family: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


def _ids(b: int = 2, s: int = 8) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(1))


def _ops(g: Graph) -> Counter:
    return Counter(n.op for n in g.nodes)


def _moe_nodes(g: Graph):
    return [n for n in g.nodes if n.op == "moe"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_matches_torch(family: str) -> None:
    m = _model(family)
    ids = _ids()
    g = from_torch(m, (ids,))
    verify(g)
    ops = _ops(g)
    assert ops["moe"] == 2, ops
    assert not ROUTING_OPS & set(ops), ops
    want = m(ids).last_hidden_state
    assert_close(run(g, ids)[0], want, rtol=1e-4, rel_to_scale=True, what=family)


def test_moe_attributes_and_weights() -> None:
    m = _model("qwen2_moe")
    g = from_torch(m, (_ids(),))
    n = _moe_nodes(g)[0]
    assert (n.attrs["top_k"], n.attrs["normalize"], n.attrs["activation"], n.attrs["gated"],
            n.attrs["scoring"]) == (2, False, "silu", True, "softmax")
    x, router, gate, up, down = n.inputs[:5]
    assert not x.is_const and all(v.is_const for v in (router, gate, up, down))
    assert router.name == "layers.0.mlp.gate.weight"
    ex = m.layers[0].mlp.experts
    f = ex.down_proj.shape[2]
    assert torch.equal(gate.const, ex.gate_up_proj[:, :f]) and torch.equal(up.const, ex.gate_up_proj[:, f:])
    assert torch.equal(down.const, ex.down_proj)
    # The shared expert and its sigmoid gate stay ordinary ops: 3 + 1 linears per layer.
    ops = _ops(g)
    assert ops["linear"] == 2 * (4 + 4) and ops["sigmoid"] == 2 and ops["moe"] == 2
    # Mixtral always renormalises the top-k weights.
    assert _moe_nodes(from_torch(_model("mixtral"), (_ids(),)))[0].attrs["normalize"] is True


def test_model_unchanged() -> None:
    m = _model("qwen2_moe")
    before = {n: (type(mod), mod.training) for n, mod in m.named_modules()}
    params = {n: (p, p.detach().clone()) for n, p in m.named_parameters()}
    hooks = {n: (len(mod._forward_hooks), len(mod._forward_pre_hooks)) for n, mod in m.named_modules()}
    from_torch(m, (_ids(),))
    assert {n: (type(mod), mod.training) for n, mod in m.named_modules()} == before
    assert {n: (len(mod._forward_hooks), len(mod._forward_pre_hooks))
            for n, mod in m.named_modules()} == hooks
    now = dict(m.named_parameters())
    assert now.keys() == params.keys()
    for n, (p, val) in params.items():
        assert now[n] is p and torch.equal(p, val), n


def test_model_restored_on_error() -> None:
    m = _model("mixtral")
    blocks = [layer.mlp for layer in m.layers]
    with pytest.raises(scalefold.ir.errors.FrontendError):
        from_torch(m, (torch.zeros(2, 8),))  # float ids: the embedding refuses them
    assert [layer.mlp for layer in m.layers] == blocks


def test_compile_c() -> None:
    m = _model("mixtral")
    ids = _ids()
    cm = scalefold.compile(m, (ids,), target="c")
    assert _ops(cm.graph)["moe"] == 2
    out = cm(ids)
    out = out[0] if isinstance(out, tuple) else out
    assert_close(out, m(ids).last_hidden_state, rtol=1e-4, rel_to_scale=True, what="mixtral C")


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_quant_weights_to_qmoe(family: str) -> None:
    m = _model(family)
    ids = _ids()
    g = from_torch(m, (ids,))
    q = PassManager("quant_weights(format=int4, group=32)").run(g)
    ops = _ops(q)
    assert ops["qmoe"] == 2 and ops["moe"] == 0, ops
    assert _cosine(run(q, ids)[0], m(ids).last_hidden_state) > 0.97


def test_dynamic_batch_and_seq() -> None:
    m = _model("mixtral")
    b, s = Dim("B", max=16), Dim("S", max=32)
    g = from_torch(m, (_ids(2, 8),), dynamic_shapes=({0: b, 1: s},))
    assert _ops(g)["moe"] == 2
    assert [str(d) for d in g.inputs[0].shape] == ["B", "S"]
    for shape in ((1, 5), (3, 11)):
        ids = _ids(*shape)
        assert_close(run(g, ids)[0], m(ids).last_hidden_state, rtol=1e-4, rel_to_scale=True,
                     what=f"dynamic {shape}")


def test_router_logits_output() -> None:
    # output_router_logits: transformers records the router module's logits through hooks; the
    # stand-in calls the router so they are returned (as plain linears) next to the moe output.
    m = _model("mixtral")
    ids = _ids()
    g = from_torch(m, ({"input_ids": ids, "output_router_logits": True}))
    assert _ops(g)["moe"] == 2
    want = m(input_ids=ids, output_router_logits=True)
    outs = run(g, ids)
    assert len(outs) == 3
    assert_close(outs[0], want.last_hidden_state, rtol=1e-4, rel_to_scale=True, what="hidden")
    for got, ref in zip(outs[1:], want.router_logits):
        assert_close(got, ref, rtol=1e-4, rel_to_scale=True, what="router logits")


def test_module_list_experts_and_tuple_output() -> None:
    # transformers 4.x style: per-expert MLP modules, an nn.Linear router, (hidden, logits) output.
    class Expert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1, self.w3 = nn.Linear(16, 24, bias=False), nn.Linear(16, 24, bias=False)
            self.w2 = nn.Linear(24, 16, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.top_k = 2
            self.gate = nn.Linear(16, 4, bias=False)
            self.experts = nn.ModuleList(Expert() for _ in range(4))

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = h.reshape(-1, h.shape[-1])
            logits = self.gate(x)
            p = torch.softmax(logits, dim=-1, dtype=torch.float)
            w, idx = torch.topk(p, self.top_k, dim=-1)
            w = w / w.sum(-1, keepdim=True)
            out = torch.zeros_like(x)
            for t in range(x.shape[0]):
                for j in range(self.top_k):
                    out[t] += w[t, j] * self.experts[int(idx[t, j])](x[t])
            return out.reshape(h.shape), logits

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.moe = Block()

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            y, logits = self.moe(h)
            return y + logits.sum()

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 3, 16)
    g = from_torch(net, (x,))
    assert _ops(g)["moe"] == 1 and "topk" not in _ops(g)
    assert_close(run(g, x)[0], net(x), rtol=1e-4, rel_to_scale=True, what="module-list experts")


def test_unrepresentable_activation_is_traced() -> None:
    # An activation the IR moe lacks (tanh): the block is left to ordinary tracing, with a warning.
    cfg = T.MixtralConfig(intermediate_size=128, num_local_experts=4, hidden_act="tanh",
                          **dict(COMMON, num_hidden_layers=1))
    torch.manual_seed(0)
    m = T.MixtralModel(cfg).eval()
    with pytest.warns(UserWarning, match="no IR moe form"):
        assert recognise(m.layers[0].mlp) is None


def test_disabled() -> None:
    cfg = T.MixtralConfig(intermediate_size=128, num_local_experts=4, experts_implementation="batched_mm",
                          **dict(COMMON, num_hidden_layers=1))
    m = T.MixtralModel(cfg).eval()
    ops = _ops(from_torch(m, (_ids(),), moe_blocks=False))
    assert "moe" not in ops and ops["topk"] == 1


def test_selection_only_router_bias_is_not_dropped() -> None:
    # GLM-4-MoE / DeepSeek-V3 routers add e_score_correction_bias to the scores for the top-k
    # choice only. The IR moe has no such input: a small non-zero bias moved none of the old
    # 10-token probe's choices, and the block became a moe that ignored it (2% off).
    cfg = T.Glm4MoeConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64, intermediate_size=64,
                          moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=2,
                          first_k_dense_replace=0, n_shared_experts=1, n_group=1, topk_group=1)
    torch.manual_seed(0)
    block = T.Glm4MoeModel(cfg).eval().layers[0].mlp
    cand = recognise(block)                    # a zero bias selects the same experts: kept
    assert cand is not None
    x = torch.randn(3, 7, 32)
    assert_close(cand(x), block(x), rtol=1e-4, rel_to_scale=True, what="zero selection bias")
    block.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.002)
    with pytest.warns(UserWarning, match="e_score_correction_bias"):
        assert recognise(block) is None


def test_moe_block_as_the_root_module() -> None:
    # only children were swapped: the block itself failed in torch.export (data-dependent guard)
    torch.manual_seed(0)
    block = _mixtral().eval().layers[0].mlp
    x = torch.randn(2, 5, 64)
    g = from_torch(block, (x,))
    assert _ops(g)["moe"] == 1 and "topk" not in _ops(g)
    assert_close(run(g, x)[0], block(x), rtol=1e-4, rel_to_scale=True, what="root MoE block")
