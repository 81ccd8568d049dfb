"""nn family: matmul, linear, conv, conv_transpose, pools — references against torch, symbolic
shapes, misuse, cost, docs."""
from __future__ import annotations

import pytest
import sympy
import torch
import torch.nn.functional as F

from harness import assert_close
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import all_ops, get_op
from scalefold.ir.ops.nn import pool_generic, window_out
from scalefold.ir.types import TensorType, sym


def ttype(t: torch.Tensor | None) -> TensorType | None:
    return None if t is None else TensorType(dt.from_torch(t.dtype), tuple(t.shape))


def run_op(name: str, *inputs: torch.Tensor | None, **attrs):
    """Infer the output types, run the reference, and check it produced exactly those types."""
    op = get_op(name)
    a = op.bind_attrs(attrs)
    types = op.infer([ttype(t) for t in inputs], a)
    res = op.reference(list(inputs), a)
    outs = res if isinstance(res, tuple) else (res,)
    assert len(outs) == len(types)
    for t, r in zip(types, outs):
        assert r.dtype == t.dtype.container, (name, r.dtype, t)
        assert tuple(r.shape) == t.shape, (name, tuple(r.shape), t)
    return res


def infer(name: str, types, **attrs) -> list[TensorType]:
    op = get_op(name)
    return op.infer([TensorType(*t) if isinstance(t, tuple) else t for t in types],
                    op.bind_attrs(attrs))


# ---- matmul / linear ----------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [((5,), (5,)), ((5,), (5, 3)), ((2, 4, 5), (5,)), ((3, 5), (5, 7)),
                                   ((2, 1, 3, 5), (4, 5, 7)), ((5,), (2, 5, 3)), ((3, 5), (2, 5, 1))])
def test_matmul_matches_torch(sa, sb):
    a, b = torch.randn(sa), torch.randn(sb)
    assert_close(run_op("matmul", a, b), torch.matmul(a, b))


def test_matmul_half_and_int():
    a, b = torch.randn(3, 9, dtype=torch.bfloat16), torch.randn(9, 4, dtype=torch.bfloat16)
    assert_close(run_op("matmul", a, b), (a.float() @ b.float()).bfloat16())
    ai, bi = torch.randint(-5, 5, (3, 4), dtype=torch.int32), torch.randint(-5, 5, (4, 2), dtype=torch.int32)
    assert torch.equal(run_op("matmul", ai, bi), ai @ bi)


def test_matmul_symbolic_shape_and_cost():
    B, S, N = sym("B"), sym("S"), sym("N")
    (out,) = infer("matmul", [("f32", (B, S, 64)), ("f32", (64, N))])
    assert out == TensorType("f32", (B, S, N))
    op = get_op("matmul")
    c = op.cost([TensorType("f32", (B, S, 64)), TensorType("f32", (64, N))], [out], op.bind_attrs({}))
    assert sympy.simplify(c.flops - 2 * B * S * N * 64) == 0
    assert sympy.simplify(c.bytes - 4 * (B * S * 64 + 64 * N + B * S * N)) == 0


def test_linear_matches_torch_with_and_without_bias():
    x, w, b = torch.randn(2, 3, 7), torch.randn(5, 7), torch.randn(5)
    assert_close(run_op("linear", x, w, b), F.linear(x, w, b))
    assert_close(run_op("linear", x, w), F.linear(x, w))
    assert_close(run_op("linear", x[0, 0], w, None), F.linear(x[0, 0], w))


def test_linear_cost_is_2_numel_out_k_symbolically():
    B, S, K, N = sym("B"), sym("S"), sym("K"), sym("N")
    op = get_op("linear")
    ins = [TensorType("f16", (B, S, K)), TensorType("f16", (N, K))]
    outs = op.infer(ins, op.bind_attrs({}))
    assert outs == [TensorType("f16", (B, S, N))]
    c = op.cost(ins, outs, op.bind_attrs({}))
    assert sympy.simplify(c.flops - 2 * B * S * N * K) == 0
    # the bias add is one more flop per output element
    ins_b = ins + [TensorType("f16", (N,))]
    cb = op.cost(ins_b, op.infer(ins_b, op.bind_attrs({})), op.bind_attrs({}))
    assert sympy.simplify(cb.flops - (2 * K + 1) * B * S * N) == 0


# ---- convolution --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_matches_torch(n, groups, dilation, padding, stride):
    spatial = (11, 9)[:n]
    x = torch.randn(2, 6, *spatial)
    w = torch.randn(9, 6 // groups, *(3, 2)[:n])
    b = torch.randn(9)
    got = run_op("conv", x, w, b, stride=(stride,) * n, padding=(padding,) * n,
                 dilation=(dilation,) * n, groups=groups)
    fn = F.conv1d if n == 1 else F.conv2d
    assert_close(got, fn(x, w, b, stride, padding, dilation, groups))


def test_conv_asymmetric_onnx_padding_and_3d():
    x, w = torch.randn(1, 2, 7, 6), torch.randn(4, 2, 3, 3)
    got = run_op("conv", x, w, padding=(1, 0, 2, 1))     # h: (1, 2), w: (0, 1)
    want = F.conv2d(F.pad(x, (0, 1, 1, 2)), w)
    assert_close(got, want)
    x3, w3 = torch.randn(1, 2, 5, 4, 6), torch.randn(4, 1, 2, 3, 2)
    assert_close(run_op("conv", x3, w3, groups=2, padding=(1,), stride=(2, 1, 1)),
                 F.conv3d(x3, w3, None, (2, 1, 1), 1, 1, 2))


def test_conv_f16_computes_in_f32():
    x, w = torch.randn(1, 3, 9, dtype=torch.float16), torch.randn(4, 3, 3, dtype=torch.float16)
    assert_close(run_op("conv", x, w), F.conv1d(x.float(), w.float()).half())


@pytest.mark.parametrize("pad,stride,dil,k", [(0, 1, 1, 3), (1, 2, 1, 3), (2, 3, 2, 4), (0, 2, 1, 1)])
def test_conv_symbolic_output_length(pad, stride, dil, k):
    L = sym("L")
    (out,) = infer("conv", [("f32", (1, 2, L)), ("f32", (5, 2, k))], padding=(pad,),
                   stride=(stride,), dilation=(dil,))
    length = out.shape[2]
    assert isinstance(length, sympy.Expr) and length.free_symbols == {L}
    for n in (9, 10, 13, 20):
        if n + 2 * pad < dil * (k - 1) + 1:
            continue
        y = F.conv1d(torch.randn(1, 2, n), torch.randn(5, 2, k), None, stride, pad, dil)
        assert sympy.sympify(length).subs(L, n) == y.shape[2]


def test_conv_transpose_matches_torch():
    x, w, b = torch.randn(2, 4, 5, 6), torch.randn(4, 3, 3, 2), torch.randn(6)
    got = run_op("conv_transpose", x, w, b, stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                 dilation=(1, 2), groups=2)
    want = F.conv_transpose2d(x, w, b, (2, 3), (1, 0), (1, 2), 2, (1, 2))
    assert_close(got, want)
    x1, w1 = torch.randn(1, 2, 7), torch.randn(2, 3, 4)
    got = run_op("conv_transpose", x1, w1, stride=(2,), padding=(1, 2))   # asymmetric crop
    full = F.conv_transpose1d(x1, w1, None, 2)
    assert_close(got, full[..., 1:full.shape[-1] - 2])


# ---- pooling ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 3, 1, 2), (2, 1, 1, 1)])
def test_max_pool_matches_torch(n, ceil_mode, k, s, p, d):
    x = torch.randn(2, 3, *(10, 7)[:n])
    got = run_op("max_pool", x, kernel=(k,), stride=(s,), padding=(p,), dilation=(d,), ceil_mode=ceil_mode)
    fn = F.max_pool1d if n == 1 else F.max_pool2d
    want = fn(x, k, s, p, d, ceil_mode)
    assert_close(got, want)
    # the explicit-window path agrees with torch on the cases torch supports
    assert_close(pool_generic(x, (k,) * n, (s,) * n, (d,) * n, ((p, p),) * n, ceil_mode, "max"), want)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("cip", [False, True])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 3, 1), (4, 3, 2)])
def test_avg_pool_matches_torch(n, ceil_mode, cip, k, s, p):
    x = torch.randn(2, 3, *(10, 7)[:n])
    got = run_op("avg_pool", x, kernel=(k,) * n, stride=(s,) * n, padding=(p,) * n,
                 ceil_mode=ceil_mode, count_include_pad=cip)
    fn = F.avg_pool1d if n == 1 else F.avg_pool2d
    want = fn(x, k, s, p, ceil_mode, cip)
    assert_close(got, want)
    assert_close(pool_generic(x, (k,) * n, (s,) * n, (1,) * n, ((p, p),) * n, ceil_mode, "avg", cip), want)


def test_pools_with_asymmetric_padding():
    x = torch.randn(1, 2, 6, 7)
    got = run_op("max_pool", x, kernel=(3, 2), stride=(2,), padding=(0, 1, 2, 0))
    assert_close(got, F.max_pool2d(F.pad(x, (1, 0, 0, 2), value=float("-inf")), (3, 2), 2))
    got = run_op("avg_pool", x, kernel=(3, 2), stride=(2,), padding=(0, 1, 2, 0), count_include_pad=True)
    assert_close(got, F.avg_pool2d(F.pad(x, (1, 0, 0, 2)), (3, 2), 2))
    # without count_include_pad the divisor counts real elements only
    ones = torch.ones(1, 1, 6, 7)
    want = F.avg_pool2d(F.pad(x, (1, 0, 0, 2)), (3, 2), 2) / F.avg_pool2d(F.pad(ones, (1, 0, 0, 2)), (3, 2), 2)
    assert_close(run_op("avg_pool", x, kernel=(3, 2), stride=(2,), padding=(0, 1, 2, 0)), want)


def test_pool_symbolic_ceil_mode_length():
    L = sym("L")
    for k, s, p in [(3, 2, 1), (2, 2, 0), (3, 3, 1), (1, 4, 0)]:
        (out,) = infer("max_pool", [("f32", (1, 1, L))], kernel=(k,), stride=(s,), padding=(p,),
                       ceil_mode=True)
        for n in range(3, 12):
            want = F.max_pool1d(torch.randn(1, 1, n), k, s, p, 1, True).shape[2]
            assert sympy.sympify(out.shape[2]).subs(L, n) == want, (k, s, p, n)
            assert window_out(n, p, p, k, s, 1, True) == want


def test_global_pools_keep_spatial_dims_as_one():
    x = torch.randn(2, 3, 5, 4)
    assert_close(run_op("global_avg_pool", x), x.mean(dim=(2, 3), keepdim=True))
    assert_close(run_op("global_max_pool", x[..., 0]), x[..., 0].amax(dim=2, keepdim=True))
    H = sym("H")
    assert infer("global_avg_pool", [("bf16", (2, 3, H, H))])[0] == TensorType("bf16", (2, 3, 1, 1))


# ---- misuse -------------------------------------------------------------------------------

@pytest.mark.parametrize("op,types,attrs,match", [
    ("matmul", [("f32", (3, 4)), ("f32", (5, 2))], {}, "contraction"),           # K mismatch
    ("matmul", [("f32", ()), ("f32", (5,))], {}, "rank"),                         # wrong rank
    ("linear", [("f32", (3, 4)), ("f32", (5, 3))], {}, "K of x"),                 # K mismatch
    ("linear", [("f32", (3, 4)), ("f16", (5, 4))], {}, "share one dtype"),        # mixed dtypes
    ("linear", [("i32", (3, 4)), ("i32", (5, 4))], {}, "must be one of"),         # not float
    ("linear", [("f32", (3, 4)), ("f32", (5, 4, 1))], {}, "2-D"),                 # wrong rank
    ("conv", [("f32", (1, 6, 9)), ("f32", (4, 2, 3))], {"groups": 4}, "divisible"),
    ("conv", [("f32", (6, 9)), ("f32", (4, 6, 3))], {}, "spatial"),               # wrong rank
    ("conv", [("f32", (1, 6, 9)), ("f32", (4, 3, 3))], {}, "channels"),
    ("conv", [("f32", (1, 6, 2)), ("f32", (4, 6, 3))], {}, "does not fit"),
    ("conv", [("f32", (1, 6, 9)), ("f32", (4, 6, 3))], {"padding": (1, 1, 1)}, "padding"),
    ("conv_transpose", [("f32", (1, 4, 9)), ("f32", (4, 3, 3))], {"groups": 3}, "divisible"),
    ("max_pool", [("f32", (1, 2, 9))], {"kernel": (2, 2, 2)}, "kernel"),
    ("avg_pool", [("f32", (4, 9))], {"kernel": (2,)}, "spatial"),
])
def test_shape_errors(op, types, attrs, match):
    with pytest.raises(ShapeError, match=match):
        infer(op, types, **attrs)


def test_shape_error_names_op():
    with pytest.raises(ShapeError, match=r"^matmul: "):
        infer("matmul", [("f32", (3, 4)), ("f32", (5, 2))])


def test_every_op_of_my_families_has_a_doc():
    mine = {n: d for n, d in all_ops().items() if d.family in ("nn", "reduce")}
    expected = {"matmul", "linear", "conv", "conv_transpose", "max_pool", "avg_pool",
                "global_avg_pool", "global_max_pool", "layer_norm", "rms_norm", "batch_norm",
                "group_norm", "instance_norm", "softmax", "log_softmax", "sdpa", "reduce_sum",
                "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2",
                "reduce_sum_square", "reduce_logsumexp", "argmax", "argmin", "topk", "cumsum"}
    assert expected <= set(mine)
    for name, d in mine.items():
        assert len(d.doc.strip()) > 30, name
