"""Reference semantics of ``moe``: against a naive per-token loop, the Mixtral router identity,
and transformers' own MixtralSparseMoeBlock."""
from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F

from scalefold.ir import Graph, TensorType, sym
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op

ACTS = {"silu": F.silu, "gelu": F.gelu, "relu": torch.relu,
        "gelu_tanh": lambda h: F.gelu(h, approximate="tanh")}


def run_moe(inputs: list, **attrs) -> torch.Tensor:
    op = get_op("moe")
    a = op.bind_attrs(attrs)
    types = [None if t is None else TensorType({torch.float32: "f32", torch.float64: "f64",
                                                torch.bfloat16: "bf16"}[t.dtype], tuple(t.shape))
             for t in inputs]
    (out_t,) = op.infer(types, a)
    y = op.reference(inputs, a)
    assert y.dtype == out_t.dtype.container and tuple(y.shape) == out_t.shape
    return y


def per_token_loop(x, router_w, w_gate, w_up, w_down, router_bias, top_k, normalize=True,
                   activation="silu", scoring="softmax"):
    """The textbook formulation: one token at a time, experts in top-k slot order."""
    act = ACTS[activation]
    xs = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(xs)
    for t in range(xs.shape[0]):
        logits = xs[t] @ router_w.T + (0 if router_bias is None else router_bias)
        p = torch.softmax(logits, -1) if scoring == "softmax" else torch.sigmoid(logits)
        ranked = sorted(range(len(p)), key=lambda e: (-p[e].item(), e))[:top_k]
        w = torch.stack([p[e] for e in ranked])
        if normalize:
            w = w / w.sum()
        for e, we in zip(ranked, w):
            hid = act(w_gate[e] @ xs[t]) * (w_up[e] @ xs[t]) if w_gate is not None \
                else act(w_up[e] @ xs[t])
            out[t] += we * (w_down[e] @ hid)
    return out.reshape(x.shape)


def make(E=6, H=8, Fdim=12, shape=(3, 5), dtype=torch.float64, gated=True, bias=False):
    x = torch.randn(*shape, H, dtype=dtype)
    router = torch.randn(E, H, dtype=dtype)
    wg = torch.randn(E, Fdim, H, dtype=dtype) * 0.3 if gated else None
    wu = torch.randn(E, Fdim, H, dtype=dtype) * 0.3
    wd = torch.randn(E, H, Fdim, dtype=dtype) * 0.3
    rb = torch.randn(E, dtype=dtype) if bias else None
    return [x, router, wg, wu, wd, rb]


@pytest.mark.parametrize("scoring,normalize,gated,activation,bias,k", [
    ("softmax", True, True, "silu", False, 2),
    ("softmax", False, True, "gelu", True, 3),
    ("sigmoid", True, False, "relu", True, 2),
    ("sigmoid", False, True, "gelu_tanh", False, 1),
    ("softmax", True, False, "silu", False, 6),
])
def test_moe_matches_per_token_loop(scoring, normalize, gated, activation, bias, k):
    ins = make(gated=gated, bias=bias)
    y = run_moe(ins, top_k=k, normalize=normalize, gated=gated, activation=activation, scoring=scoring)
    want = per_token_loop(*ins, top_k=k, normalize=normalize, activation=activation, scoring=scoring)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_router_identity_softmax_topk_equals_topk_softmax():
    ins = make(E=8, shape=(40,), dtype=torch.float32)
    x, router = ins[0], ins[1]
    logits = x @ router.T
    top = torch.topk(logits, 2, dim=-1)
    w = torch.softmax(top.values, -1)                    # top-k on logits, then softmax over k
    want = torch.zeros_like(x)
    for t in range(40):
        for e, we in zip(top.indices[t].tolist(), w[t]):
            want[t] += we * (ins[4][e] @ (F.silu(ins[2][e] @ x[t]) * (ins[3][e] @ x[t])))
    torch.testing.assert_close(run_moe(ins, top_k=2), want, rtol=1e-5, atol=1e-5)


def test_router_bias_steers_selection_and_weighting():
    ins = make(E=4, H=8, shape=(10,))
    ins[5] = torch.tensor([0.0, 0.0, 0.0, 1e3], dtype=torch.float64)
    ins[1] = torch.randn(4, 8, dtype=torch.float64) * 1e-3
    y = run_moe(ins, top_k=1)
    # Expert 3 takes every token with weight 1.
    x = ins[0]
    want = (F.silu(x @ ins[2][3].T) * (x @ ins[3][3].T)) @ ins[4][3].T
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("E,k", [(4, 2), (5, 2), (64, 2), (128, 3)])
def test_ties_pick_what_torch_topk_picks(E: int, k: int):
    # the HF routers call torch.topk, whose tie order on the CPU is not the lower index first
    # (4 equal scores, k = 2: experts 2 and 3); a stable sort chose 0 and 1 and the imported
    # model sent tied tokens (common with bf16 logits) to other experts than the source
    ins = make(E=E, H=4, shape=(3,))
    ins[1] = torch.zeros(E, 4, dtype=torch.float64)      # all logits equal
    y = run_moe(ins, top_k=k, normalize=False)
    x = ins[0]
    chosen = torch.topk(torch.full((E,), 1.0 / E, dtype=torch.float64), k).indices.tolist()
    want = sum((1.0 / E) * ((F.silu(x @ ins[2][e].T) * (x @ ins[3][e].T)) @ ins[4][e].T) for e in chosen)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)


def test_matches_transformers_mixtral_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    cfg = MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=6,
                        num_experts_per_tok=2, hidden_act="silu")
    cfg._experts_implementation = "eager"
    blk = MixtralSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.2)
    # transformers 5.x keeps gate and up stacked: gate_up_proj [E, 2F, H], gate rows first.
    gate_up = blk.experts.gate_up_proj.detach()
    assert gate_up.shape == (6, 48, 16) and blk.experts.down_proj.shape == (6, 16, 24)
    w_gate, w_up = gate_up[:, :24].contiguous(), gate_up[:, 24:].contiguous()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        want = blk(x)
    y = run_moe([x, blk.gate.weight.detach(), w_gate, w_up, blk.experts.down_proj.detach()],
                top_k=2, activation="silu")
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    # The routing decision is bit-identical to transformers' router.
    _, _, idx = blk.gate(x.reshape(-1, 16))
    from scalefold.ir.ops.moe import route
    ids, _ = route(x.reshape(-1, 16), blk.gate.weight.detach(), None, 2, True, "softmax")
    assert torch.equal(torch.sort(ids, -1).values, torch.sort(idx, -1).values)


def test_bf16_output_dtype_and_shape():
    ins = make(dtype=torch.bfloat16, shape=(2, 3, 4))
    y = run_moe(ins, top_k=2)
    want = per_token_loop(*[t.double() if t is not None else None for t in ins], top_k=2)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 4, 8)
    torch.testing.assert_close(y.double(), want, rtol=3e-2, atol=3e-2)


def test_symbolic_shapes_and_cost():
    B, S = sym("B"), sym("S")
    g = Graph()
    x = g.add_input(TensorType("f32", (B, S, 8)), "x")
    consts = [g.add_const(t) for t in make(E=4, H=8, Fdim=12, dtype=torch.float32)[1:5]]
    y = g.add("moe", [x] + consts, {"top_k": 2})
    assert y.type == TensorType("f32", (B, S, 8))
    c = get_op("moe").cost([v.type for v in y.producer.inputs], [y.type], y.producer.attrs)
    T = B * S
    flops = 2 * T * 4 * 8 + 4 * T * 4 + T * 2 * (2 * 3 * 8 * 12 + 8 * 12 + 2 * 8)
    assert sympy.simplify(c.flops - flops) == 0
    expert_bytes = 3 * 4 * 12 * 8 * 4
    want_bytes = 4 * T * 8 * 2 + 4 * 4 * 8 + expert_bytes * sympy.Min(4, 2 * T) / 4
    assert sympy.simplify(c.bytes - want_bytes) == 0
    assert c.bytes.subs({B: 1, S: 1}) == 4 * 8 * 2 + 4 * 4 * 8 + expert_bytes // 2


def T_(dtype, *shape):
    return TensorType(dtype, shape)


E, H, Fd = 4, 8, 12
GOOD = [T_("f32", 3, H), T_("f32", E, H), T_("f32", E, Fd, H), T_("f32", E, Fd, H), T_("f32", E, H, Fd)]
MISUSE = [
    ([T_("i8", 3, H)] + GOOD[1:], {"top_k": 2}),                                  # integer x
    ([GOOD[0], T_("f32", E, H + 1)] + GOOD[2:], {"top_k": 2}),                     # router width
    (GOOD[:2] + [T_("f32", E, Fd + 1, H)] + GOOD[3:], {"top_k": 2}),               # gate vs up
    (GOOD[:2] + [None] + GOOD[3:], {"top_k": 2}),                                  # gated, no gate
    (GOOD, {"top_k": 2, "gated": False}),                                          # ungated + gate
    (GOOD[:4] + [T_("f32", E, H, Fd + 1)], {"top_k": 2}),                          # down's F
    (GOOD[:4] + [T_("f32", E + 1, H, Fd)], {"top_k": 2}),                          # down's E
    (GOOD, {"top_k": E + 1}),                                                      # top_k > E
    (GOOD, {"top_k": 0}),                                                          # top_k < 1
    (GOOD + [T_("f32", E + 1)], {"top_k": 2}),                                     # bias length
    ([GOOD[0], T_("f16", E, H)] + GOOD[2:], {"top_k": 2}),                         # dtype mix
]


@pytest.mark.parametrize("ins,attrs", MISUSE, ids=[str(i) for i in range(len(MISUSE))])
def test_shape_errors(ins, attrs):
    op = get_op("moe")
    with pytest.raises(ShapeError, match="moe"):
        op.infer(ins, op.bind_attrs(attrs))
