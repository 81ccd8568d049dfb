"""sdpa: reference against an explicit softmax(QK^T*scale + mask)V and torch's SDPA."""
from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.nn.functional as F

from harness import assert_close
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import get_op
from scalefold.ir.types import TensorType, sym


def ttype(t: torch.Tensor | None) -> TensorType | None:
    return None if t is None else TensorType(dt.from_torch(t.dtype), tuple(t.shape))


def sdpa(*inputs: torch.Tensor | None, **attrs) -> torch.Tensor:
    """Run the sdpa reference after checking it produces exactly the inferred type."""
    op = get_op("sdpa")
    a = op.bind_attrs(attrs)
    (t,) = op.infer([ttype(x) for x in inputs], a)
    r = op.reference(list(inputs), a)
    assert r.dtype == t.dtype.container and tuple(r.shape) == t.shape
    return r


def explicit(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale + mask) v, k/v heads repeated to q's head count."""
    rep = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    s = q @ k.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        s = s + torch.zeros(L, S).masked_fill(torch.ones(L, S).tril() == 0, float("-inf"))
    if mask is not None:
        s = s + (torch.zeros(mask.shape).masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool
                 else mask)
    return torch.softmax(s, -1) @ v


def qkv(b=2, hq=4, hk=4, L=5, S=7, D=6, Dv=3, dtype=torch.float32):
    return (torch.randn(b, hq, L, D, dtype=dtype), torch.randn(b, hk, S, D, dtype=dtype),
            torch.randn(b, hk, S, Dv, dtype=dtype))


def test_plain_and_scale():
    q, k, v = qkv()
    assert_close(sdpa(q, k, v), explicit(q, k, v))
    assert_close(sdpa(q, k, v, scale=0.3), explicit(q, k, v, scale=0.3))
    assert_close(sdpa(q, k, v, scale=0.3), F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=1e-5)


@pytest.mark.parametrize("L,S", [(5, 7), (7, 5), (6, 6)])
def test_causal_is_upper_left_aligned(L, S):
    q, k, v = qkv(L=L, S=S)
    got = sdpa(q, k, v, causal=True)
    assert_close(got, explicit(q, k, v, causal=True))
    assert_close(got, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_bool_mask_broadcast():
    q, k, v = qkv()
    mask = torch.rand(2, 1, 5, 7) > 0.3
    mask[..., 0] = True                     # every row attends somewhere
    got = sdpa(q, k, v, mask)
    assert_close(got, explicit(q, k, v, mask))
    assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5)


def test_float_mask_and_causal_together():
    q, k, v = qkv(L=6, S=6)
    mask = torch.randn(6, 6)
    assert_close(sdpa(q, k, v, mask, causal=True), explicit(q, k, v, mask, causal=True))


def test_fully_masked_row_gives_zeros():
    q, k, v = qkv()
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[2] = False
    got = sdpa(q, k, v, mask)
    assert torch.equal(got[..., 2, :], torch.zeros_like(got[..., 2, :]))
    assert_close(got[..., 3, :], explicit(q, k, v, mask)[..., 3, :])


def test_gqa():
    q, k, v = qkv(hq=6, hk=2)
    got = sdpa(q, k, v, causal=True, gqa=True)
    assert_close(got, explicit(q, k, v, causal=True))
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert_close(got, want, atol=1e-5)


def test_bf16_computes_in_f32():
    q, k, v = qkv(dtype=torch.bfloat16)
    want = explicit(q.float(), k.float(), v.float()).bfloat16()
    assert_close(sdpa(q, k, v), want)


def test_symbolic_shape_and_cost():
    B, S = sym("B"), sym("S")
    op = get_op("sdpa")
    ins = [TensorType("f16", (B, 8, S, 64)), TensorType("f16", (B, 2, S, 64)),
           TensorType("f16", (B, 2, S, 32)), TensorType("bool", (1, 1, S, S))]
    a = op.bind_attrs({"gqa": True})
    (out,) = op.infer(ins, a)
    assert out == TensorType("f16", (B, 8, S, 32))
    c = op.cost(ins, [out], a)
    assert sympy.simplify(c.flops - B * 8 * S * S * (2 * 64 + 2 * 32 + 5)) == 0


@pytest.mark.parametrize("shapes,attrs,match", [
    ([(2, 4, 5, 6), (2, 4, 7, 5), (2, 4, 7, 3)], {}, "head dim"),
    ([(2, 4, 5, 6), (2, 2, 7, 6), (2, 2, 7, 3)], {}, "heads"),
    ([(2, 6, 5, 6), (2, 4, 7, 6), (2, 4, 7, 3)], {"gqa": True}, "multiple"),
    ([(5, 6), (7, 6), (7, 3)], {}, "rank"),
    ([(2, 4, 5, 6), (2, 4, 7, 6), (2, 4, 6, 3)], {}, "source length"),
    ([(2, 4, 5, 6), (2, 4, 7, 6), (2, 4, 7, 3), (5, 6)], {}, "broadcast"),
])
def test_shape_errors(shapes, attrs, match):
    op = get_op("sdpa")
    types = [TensorType("f32", s) for s in shapes]
    with pytest.raises(ShapeError, match=match):
        op.infer(types, op.bind_attrs(attrs))


def test_mask_dtype_must_be_bool_or_q_dtype():
    op = get_op("sdpa")
    types = [TensorType("f32", (1, 1, 2, 4))] * 3 + [TensorType("f16", (2, 2))]
    with pytest.raises(ShapeError, match="mask must be bool"):
        op.infer(types, op.bind_attrs({}))
    with pytest.raises(ShapeError, match="share one dtype"):
        op.infer(types[:2] + [TensorType("f16", (1, 1, 2, 4))], op.bind_attrs({}))
