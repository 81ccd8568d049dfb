"""Reference semantics of the quant family: quantize, dequantize, qlinear, bcq_linear and the
low-rank ops, each checked against an independent, straightforward computation."""
from __future__ import annotations

import itertools
import math

import pytest
import sympy
import torch

from scalefold.ir import Graph, TensorType, dtypes as dt, sym
from scalefold.ir.errors import ShapeError
from scalefold.ir.ops import all_ops, get_op


def run(op: str, inputs: list, attrs: dict | None = None, types: dict[int, str] | None = None):
    """Infer the output type from the inputs' types, run the reference, and check that the
    result matches the declared type (container dtype and shape)."""
    opdef = get_op(op)
    a = opdef.bind_attrs(attrs or {})
    types = types or {}
    in_types = [None if t is None else
                TensorType(types.get(i) or dt.from_torch(t.dtype), tuple(t.shape))
                for i, t in enumerate(inputs)]
    (out_t,) = opdef.infer(in_types, a)
    y = opdef.reference(inputs, a)
    assert y.dtype == out_t.dtype.container, (y.dtype, out_t)
    assert tuple(y.shape) == out_t.shape
    return y, out_t


def infer(op: str, in_types: list, attrs: dict | None = None) -> TensorType:
    opdef = get_op(op)
    return opdef.infer(in_types, opdef.bind_attrs(attrs or {}))[0]


def T(dtype: str, *shape) -> TensorType:
    return TensorType(dtype, shape)


# ---- quantize ------------------------------------------------------------------------------
def _loop_quant(x, scale_at, zp_at, lo, hi):
    """Element-by-element integer quantisation with Python's round (half to even)."""
    out = torch.empty(x.shape, dtype=torch.int64)
    for idx in itertools.product(*(range(n) for n in x.shape)):
        v = round(float(x[idx]) / scale_at(idx)) + zp_at(idx)
        out[idx] = min(max(v, lo), hi)
    return out


def test_quantize_per_tensor_round_half_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 3.49, 1000.0, -1000.0])
    q, t = run("quantize", [x, torch.tensor(1.0)])
    assert t.dtype is dt.i8
    assert q.tolist() == [0, 2, 2, 0, -2, 3, 127, -128]


def test_quantize_per_axis_with_zero_point():
    x = torch.randn(3, 5) * 4
    scale = torch.tensor([0.1, 0.05, 0.2])
    zp = torch.tensor([128, 100, 3], dtype=torch.uint8)
    q, _ = run("quantize", [x, scale, zp], {"dtype": "u8", "axis": 0})
    want = _loop_quant(x, lambda i: float(scale[i[0]]), lambda i: int(zp[i[0]]), 0, 255)
    assert torch.equal(q.to(torch.int64), want)


@pytest.mark.parametrize("axis", [1, 0])
def test_quantize_blocked_short_last_block(axis):
    x = torch.randn(10, 10)
    block = 4                                           # 10 = 4 + 4 + 2
    sshape = [10, 10]
    sshape[axis] = 3
    scale = torch.rand(sshape) * 0.05 + 0.01
    zp = torch.randint(-3, 4, sshape, dtype=torch.int8)
    q, _ = run("quantize", [x, scale, zp], {"block": block, "axis": axis})

    def at(t, i):
        j = list(i)
        j[axis] //= block
        return t[tuple(j)].item()
    want = _loop_quant(x, lambda i: at(scale, i), lambda i: int(at(zp, i)), -128, 127)
    assert torch.equal(q.to(torch.int64), want)


def test_quantize_bits_narrow_range():
    x = torch.tensor([-100.0, -32.4, -31.0, 0.0, 30.6, 31.0, 100.0])
    q, t = run("quantize", [x, torch.tensor(1.0)], {"dtype": "i8", "bits": 6})
    assert t.dtype is dt.i8
    assert q.tolist() == [-32, -32, -31, 0, 31, 31, 31]
    q4, _ = run("quantize", [x, torch.tensor(1.0)], {"dtype": "u8", "bits": 4})
    assert q4.tolist() == [0, 0, 0, 0, 15, 15, 15]


def test_quantize_subbyte_and_wide_ranges():
    x = torch.tensor([-20.0, -8.0, 7.4, 20.0])
    q, t = run("quantize", [x, torch.tensor(1.0)], {"dtype": "i4"})
    assert t.dtype is dt.i4 and q.dtype == torch.int8 and q.tolist() == [-8, -8, 7, 7]
    q, _ = run("quantize", [x, torch.tensor(1.0)], {"dtype": "u4"})
    assert q.dtype == torch.uint8 and q.tolist() == [0, 0, 7, 15]
    big = torch.tensor([3e9, -3e9, 1e5], dtype=torch.float64)
    q, _ = run("quantize", [big, torch.tensor(1.0, dtype=torch.float64)], {"dtype": "i32"})
    assert q.tolist() == [2**31 - 1, -2**31, 100000]


@pytest.mark.parametrize("name,tdt", [("f8e4m3", torch.float8_e4m3fn), ("f8e5m2", torch.float8_e5m2)])
def test_quantize_float8_saturates(name, tdt):
    fmax = torch.finfo(tdt).max
    x = torch.cat([torch.randn(50) * 10, torch.tensor([1e9, -1e9, math.inf, -math.inf, math.nan])])
    scale = torch.tensor(0.5)
    q, t = run("quantize", [x, scale], {"dtype": name})
    assert t.dtype.name == name and q.dtype == tdt
    r = q.to(torch.float32)
    assert r[-5:-1].tolist() == [fmax, -fmax, fmax, -fmax] and math.isnan(r[-1].item())
    # In range the cast is round-to-nearest: no other float8 value is closer.
    v = (x[:50] / 0.5).to(torch.float64)
    err = (r[:50].to(torch.float64) - v).abs()
    up = torch.nextafter(r[:50], torch.tensor(math.inf)).to(tdt).to(torch.float64)
    assert torch.all(err <= (up - v).abs() + 1e-12)
    assert torch.equal(q.view(torch.uint8), (x / 0.5).clamp(-fmax, fmax).to(tdt).view(torch.uint8))


def test_quantize_fp4_nearest_grid_point():
    grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    x = torch.tensor([0.2, 0.25, 0.74, 1.26, 2.5, 3.6, 5.0, 5.1, 100.0, -0.8, -2.9, -7.0])
    q, t = run("quantize", [x, torch.tensor(1.0)], {"dtype": "f4e2m1"})
    assert t.dtype is dt.f4e2m1 and q.dtype == torch.uint8 and int(q.max()) <= 15
    for v, code in zip(x.tolist(), q.tolist()):
        mag = min(abs(v), 6.0)
        best = min(abs(mag - g) for g in grid)
        cands = [i for i, g in enumerate(grid) if abs(mag - g) == best]
        i = next((c for c in cands if c % 2 == 0), cands[0])     # ties to the even code
        assert code == (i | (8 if v < 0 else 0)), (v, code)
    y, _ = run("dequantize", [q, torch.tensor(2.0)], {"qtype": "f4e2m1"}, types={0: "f4e2m1"})
    assert y[8].item() == 12.0 and y[-1].item() == -12.0


# ---- dequantize and round trips ------------------------------------------------------------
def test_dequantize_explicit_and_out_dtype():
    q = torch.randint(0, 16, (4, 6), dtype=torch.uint8)
    scale = torch.rand(4, 2) + 0.1
    zp = torch.randint(0, 16, (4, 2), dtype=torch.uint8)
    y, t = run("dequantize", [q, scale, zp], {"block": 3, "dtype": "f16"}, types={0: "u4", 2: "u4"})
    assert t == T("f16", 4, 6)
    want = torch.empty(4, 6)
    for i in range(4):
        for j in range(6):
            want[i, j] = (int(q[i, j]) - int(zp[i, j // 3])) * float(scale[i, j // 3])
    assert torch.equal(y, want.to(torch.float16))


def test_dequantize_i32_codes_exact():
    q = torch.tensor([2**30 + 1, -2**31 + 3], dtype=torch.int32)
    zp = torch.tensor(-5, dtype=torch.int32)
    y, _ = run("dequantize", [q, torch.tensor(1.0, dtype=torch.float64), zp], {"dtype": "f64"})
    assert y.tolist() == [2**30 + 6, -2**31 + 8]


@pytest.mark.parametrize("gran", ["tensor", "axis", "block"])
@pytest.mark.parametrize("qtype,sym_", [("i8", True), ("u8", False), ("i4", True), ("u4", False)])
def test_round_trip_within_half_scale(gran, qtype, sym_):
    x = torch.randn(6, 20)
    lo, hi = dt.get(qtype).int_range()
    if gran == "tensor":
        mn, mx, attrs = x.min(), x.max(), {}
    elif gran == "axis":
        mn, mx, attrs = x.amin(1), x.amax(1), {"axis": 0}
    else:
        blocks = [x[:, i:i + 8] for i in range(0, 20, 8)]          # 8 + 8 + 4 over K = 20
        mn = torch.stack([b.amin(1) for b in blocks], 1)
        mx, attrs = torch.stack([b.amax(1) for b in blocks], 1), {"block": 8}
    mn, mx = mn.clamp(max=0), mx.clamp(min=0)              # a range holding 0: zp in range
    if sym_:
        scale = torch.maximum(mx.abs(), mn.abs()) / hi
        zp = None
    else:
        scale = (mx - mn) / (hi - lo)
        zp = torch.round(-mn / scale).clamp(lo, hi).to(dt.get(qtype).container)
    ins = [x, scale] + ([zp] if zp is not None else [])
    q, _ = run("quantize", ins, dict(attrs, dtype=qtype), types={2: qtype})
    y, _ = run("dequantize", [q] + ins[1:], attrs, types={0: qtype, 2: qtype})
    s = scale if gran == "tensor" else (scale.unsqueeze(1) if gran == "axis"
                                        else scale.repeat_interleave(8, 1)[:, :20])
    assert torch.all((y - x).abs() <= s / 2 * (1 + 1e-5) + 1e-7)


def test_round_trip_fp8_relative():
    x = torch.randn(8, 16)
    scale = x.abs().amax(1) / 448
    q, _ = run("quantize", [x, scale], {"dtype": "f8e4m3", "axis": 0})
    y, _ = run("dequantize", [q, scale], {"axis": 0})
    assert torch.all((y - x).abs() <= x.abs() * 2**-4 + scale.unsqueeze(1) * 2**-9)


# ---- qlinear -------------------------------------------------------------------------------
def _explicit_wd(w_real, scale, zero, group):
    n, k = w_real.shape
    wd = torch.empty(n, k, dtype=torch.float64)
    for i in range(n):
        for j in range(k):
            g = (i,) if group == 0 else (i, j // group)
            z = 0.0 if zero is None else float(zero[g])
            wd[i, j] = float(torch.tensor((float(w_real[i, j]) - z) * float(scale[g]), dtype=torch.float32))
    return wd


def test_qlinear_weight_only_int4_per_channel():
    x = torch.randn(2, 3, 12)
    w = torch.randint(-8, 8, (5, 12), dtype=torch.int8)
    scale, bias = torch.rand(5) * 0.1, torch.randn(5)
    y, t = run("qlinear", [x, w, scale, None, bias], types={1: "i4"})
    assert t == T("f32", 2, 3, 5)
    want = x.double() @ _explicit_wd(w, scale, None, 0).T + bias.double()
    torch.testing.assert_close(y, want.float(), rtol=1e-6, atol=1e-6)


def test_qlinear_group_with_zero_k_not_multiple():
    x = torch.randn(7, 10, dtype=torch.float16)
    w = torch.randint(0, 16, (6, 10), dtype=torch.uint8)
    scale = torch.rand(6, 3) * 0.1 + 0.01                    # ceil(10 / 4) = 3
    zero = torch.randint(0, 16, (6, 3), dtype=torch.uint8)
    y, t = run("qlinear", [x, w, scale, zero], {"group": 4}, types={1: "u4", 3: "u4"})
    assert t.dtype is dt.f16
    want = x.double() @ _explicit_wd(w, scale, zero, 4).T
    torch.testing.assert_close(y, want.half(), rtol=1e-3, atol=1e-3)
    # Same as dequantize (blocked along K) followed by a float matmul.
    wd, _ = run("dequantize", [w, scale, zero], {"block": 4}, types={0: "u4", 2: "u4"})
    assert torch.equal(wd.double(), _explicit_wd(w, scale, zero, 4))


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
@pytest.mark.parametrize("abits", [8, 6])
def test_qlinear_dynamic_activation_quant(act, abits):
    x = torch.randn(3, 4, 16)
    x[0, 1] = 0.0                                            # all-zero row: scale 1
    w = torch.randint(-127, 128, (8, 16), dtype=torch.int8)
    scale, bias = torch.rand(8) * 0.01, torch.randn(8)
    y, _ = run("qlinear", [x, w, scale, None, bias], {"act": act, "abits": abits})
    qmax = 2 ** (abits - 1) - 1
    want = torch.empty(3, 4, 8, dtype=torch.float64)
    tensor_amax = x.abs().max().item()
    for b in range(3):
        for s in range(4):
            amax = x[b, s].abs().max().item() if act == "per_token" else tensor_amax
            sx = torch.tensor(amax / qmax if amax > 0 else 1.0, dtype=torch.float32)
            qx = [min(max(round(float(v / sx)), -qmax), qmax) for v in x[b, s]]
            for o in range(8):
                acc = sum(qx[j] * int(w[o, j]) for j in range(16))        # exact integer GEMM
                want[b, s, o] = acc * float(scale[o]) * float(sx) + float(bias[o])
    torch.testing.assert_close(y, want.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(y[0, 1], bias)


def test_qlinear_integer_activations_exact():
    x = torch.randint(-32, 32, (2, 5, 24), dtype=torch.int8)           # Int6 codes held in i8
    w = torch.randint(-127, 128, (9, 24), dtype=torch.int8)
    scale = torch.ones(9, dtype=torch.float64) * 2.0 ** -3
    y, t = run("qlinear", [x, w, scale], {"out_dtype": "f64"})
    assert t == T("f64", 2, 5, 9)
    exact = (x.to(torch.int64) @ w.to(torch.int64).T).double() * 2.0 ** -3
    assert torch.equal(y, exact)
    y16, t16 = run("qlinear", [x, w, scale.float(), None, torch.randn(9)], {"out_dtype": "f16"})
    assert t16.dtype is dt.f16 and y16.dtype == torch.float16


@pytest.mark.parametrize("wname", ["f8e4m3", "f4e2m1"])
def test_qlinear_float_coded_weights(wname):
    x = torch.randn(4, 8)
    real = torch.randn(3, 8)
    if wname == "f8e4m3":
        w = real.to(torch.float8_e4m3fn)
        attrs, wreal = {}, w.float()
    else:
        w = dt.fp4_e2m1_encode(real * 2)
        attrs, wreal = {"wtype": "f4e2m1"}, dt.fp4_e2m1_decode(w)
    scale = torch.rand(3, 2) + 0.5
    y, _ = run("qlinear", [x, w, scale], dict(attrs, group=4), types={1: wname})
    want = x.double() @ _explicit_wd(wreal, scale, None, 4).T
    torch.testing.assert_close(y, want.float(), rtol=1e-6, atol=1e-6)


def test_qlinear_symbolic_shapes_and_packed_cost():
    B, S = sym("B"), sym("S")
    g = Graph()
    x = g.add_input(T("f32", B, S, 128), "x")
    w4 = g.add_const(torch.randint(-8, 8, (64, 128), dtype=torch.int8), "i4")
    w8 = g.add_const(torch.randint(-8, 8, (64, 128), dtype=torch.int8), "i8")
    s = g.add_const(torch.rand(64, 4), "f32")
    y4 = g.add("qlinear", [x, w4, s], {"group": 32})
    y8 = g.add("qlinear", [x, w8, s], {"group": 32})
    assert y4.type == T("f32", B, S, 64)
    op = get_op("qlinear")
    c4 = op.cost([v.type for v in y4.producer.inputs], [y4.type], y4.producer.attrs)
    c8 = op.cost([v.type for v in y8.producer.inputs], [y8.type], y8.producer.attrs)
    assert sympy.simplify(c4.bytes - (4 * B * S * 128 + 64 * 128 / 2 + 4 * 64 * 4 + 4 * B * S * 64)) == 0
    assert sympy.simplify(c8.bytes - c4.bytes - 64 * 128 / 2) == 0
    assert sympy.simplify(c4.flops - (2 * B * S * 64 * 128 + 2 * 64 * 128)) == 0


def test_quantize_symbolic_blocked_scale():
    B, K = sym("B"), sym("K")
    t = infer("quantize", [T("f32", B, K), T("f32", B, sympy.ceiling(K / 32))], {"block": 32, "dtype": "i4"})
    assert t == T("i4", B, K)
    assert str(infer("dequantize", [t, T("f16", B, sympy.ceiling(K / 32))], {"block": 32})) == "f32[B,K]"


# ---- bcq and low-rank ----------------------------------------------------------------------
@pytest.mark.parametrize("group", [0, 3])
def test_bcq_linear_explicit(group):
    q, n, k = 3, 4, 7
    x = torch.randn(2, 5, k)
    b = torch.rand(q, n, k) > 0.5
    alphas = torch.rand((q, n) if group == 0 else (q, n, 3))
    bias = torch.randn(n)
    y, t = run("bcq_linear", [x, b, alphas, bias], {"group": group})
    assert t == T("f32", 2, 5, n)
    w = torch.zeros(n, k, dtype=torch.float64)
    for i in range(q):
        for r in range(n):
            for c in range(k):
                a = alphas[i, r] if group == 0 else alphas[i, r, c // group]
                w[r, c] += float(a) * (1 if b[i, r, c] else -1)
    torch.testing.assert_close(y, (x.double() @ w.T + bias.double()).float())


def test_lowrank_linear_and_ffn():
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    u1, v1, b1 = torch.randn(12, 4, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64), \
        torch.randn(12, dtype=torch.float64)
    u2, v2, b2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64), \
        torch.randn(6, dtype=torch.float64)
    y, t = run("lowrank_linear", [x, u1, v1, b1])
    assert t == T("f64", 2, 3, 12)
    torch.testing.assert_close(y, x @ (u1 @ v1).T + b1)
    acts = {"gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
            "gelu_tanh": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi)
                                                             * (h + 0.044715 * h ** 3))),
            "relu": lambda h: h.clamp(min=0), "silu": lambda h: h / (1 + torch.exp(-h))}
    for name, fn in acts.items():
        for bb1, bb2 in [(b1, b2), (None, b2), (b1, None)]:
            y, t = run("lowrank_ffn", [x, u1, v1, bb1, u2, v2, bb2], {"activation": name})
            h = x @ (u1 @ v1).T + (0 if bb1 is None else bb1)
            want = fn(h) @ (u2 @ v2).T + (0 if bb2 is None else bb2)
            assert t == T("f64", 2, 3, 6)
            torch.testing.assert_close(y, want)
    y6, _ = run("lowrank_ffn", [x, u1, v1, b1, u2, v2])                  # trailing b2 omitted
    assert y6.shape == (2, 3, 6)


def test_lowrank_symbolic_and_cost():
    B, S = sym("B"), sym("S")
    ins = [T("f32", B, S, 64), T("f32", 32, 8), T("f32", 8, 64), None, T("f32", 64, 4), T("f32", 4, 32), None]
    out = infer("lowrank_ffn", ins)
    assert out == T("f32", B, S, 64)
    op = get_op("lowrank_linear")
    c = op.cost(ins[:3], [T("f32", B, S, 32)], op.bind_attrs({}))
    assert sympy.simplify(c.flops - 2 * B * S * 8 * (64 + 32)) == 0
    assert sympy.simplify(c.bytes - 4 * (B * S * 64 + 32 * 8 + 8 * 64 + B * S * 32)) == 0


def test_bcq_and_quantize_costs_count_packed_bits():
    B = sym("B")
    op = get_op("bcq_linear")
    ins = [T("f32", B, 64), T("bool", 3, 32, 64), T("f32", 3, 32, 8), T("f32", 32)]
    c = op.cost(ins, [T("f32", B, 32)], op.bind_attrs({"group": 8}))
    # Sign bits packed 8 per byte, not one bool byte each.
    want = 4 * B * 64 + 3 * 32 * 64 // 8 + 4 * 3 * 32 * 8 + 4 * 32 + 4 * B * 32
    assert sympy.simplify(c.bytes - want) == 0
    assert sympy.simplify(c.flops - (2 * B * 32 * 64 * 3 + B * 32)) == 0
    q = get_op("quantize")
    c = q.cost([T("f32", B, 64), T("f32")], [T("i4", B, 64)], q.bind_attrs({"dtype": "i4"}))
    assert sympy.simplify(c.bytes - (4 * B * 64 + 4 + B * 64 // 2)) == 0


# ---- misuse and docs -----------------------------------------------------------------------
MISUSE = [
    ("quantize", [T("i8", 4), T("f32")], {}),                                  # integer x
    ("quantize", [T("f32", 4, 6), T("f32", 6)], {"axis": 0}),                  # per-axis length
    ("quantize", [T("f32", 4, 6), T("f32", 4, 3)], {"block": 4}),              # blocked shape
    ("quantize", [T("f32", 4, 6), T("f32", 4, 6)], {}),                        # 2-D scale, no block
    ("quantize", [T("f32", 4), T("f32"), T("u8")], {"dtype": "i8"}),           # zero-point dtype
    ("quantize", [T("f32", 4), T("f32", 4), T("i8")], {"axis": 0}),            # zero-point shape
    ("quantize", [T("f32", 4), T("f32")], {"dtype": "i8", "bits": 9}),         # bits too wide
    ("quantize", [T("f32", 4), T("f32")], {"dtype": "f8e4m3", "bits": 4}),     # bits on float
    ("quantize", [T("f32", 4), T("i8")], {}),                                  # integer scale
    ("quantize", [T("f32", 4, 6), T("f32", 4)], {"axis": 2}),                  # axis out of range
    ("dequantize", [T("f32", 4), T("f32")], {}),                               # float input
    ("dequantize", [T("f4e2m1", 4), T("f32")], {}),                            # fp4 without qtype
    ("dequantize", [T("i8", 4), T("f32")], {"qtype": "u8"}),                   # qtype mismatch
    ("qlinear", [T("f32", 2, 8), T("f32", 4, 8), T("f32", 4)], {}),            # float weights
    ("qlinear", [T("f32", 2, 8), T("i8", 4, 8, 1), T("f32", 4)], {}),          # 3-D weights
    ("qlinear", [T("f32", 2, 9), T("i8", 4, 8), T("f32", 4)], {}),             # K mismatch
    ("qlinear", [T("f32", 2, 8), T("i8", 4, 8), T("f32", 4, 2)], {}),          # scale for group 0
    ("qlinear", [T("f32", 2, 10), T("i4", 4, 10), T("f32", 4, 2)], {"group": 4}),  # ceil(10/4)=3
    ("qlinear", [T("f32", 2, 8), T("i8", 4, 8), T("f32", 4), T("i4", 4)], {}),  # zero dtype
    ("qlinear", [T("f32", 2, 8), T("i8", 4, 8), T("f32", 4), None, T("f32", 5)], {}),  # bias len
    ("qlinear", [T("i8", 2, 8), T("i8", 4, 8), T("f32", 4)], {"act": "per_token"}),  # int x + act
    ("qlinear", [T("f32", 2, 8), T("f4e2m1", 4, 8), T("f32", 4)], {}),         # fp4 w, no wtype
    ("qlinear", [T("f32", 2, 8), T("i8", 4, 8), T("f32", 4)], {"abits": 1}),   # abits range
    ("bcq_linear", [T("f32", 2, 8), T("i8", 2, 4, 8), T("f32", 2, 4)], {}),    # non-bool planes
    ("bcq_linear", [T("f32", 2, 8), T("bool", 2, 4, 8), T("f32", 2, 4)], {"group": 3}),  # alphas
    ("lowrank_linear", [T("f32", 2, 8), T("f32", 4, 3), T("f32", 2, 8)], {}),  # rank mismatch
    ("lowrank_linear", [T("f32", 2, 8), T("f32", 4, 2), T("f32", 2, 9)], {}),  # K mismatch
    ("lowrank_linear", [T("f32", 2, 8), T("f16", 4, 2), T("f16", 2, 8)], {}),  # dtype mix
    ("lowrank_ffn", [T("f32", 2, 8), T("f32", 6, 2), T("f32", 2, 8), None,
                     T("f32", 8, 3), T("f32", 3, 5), None], {}),               # D mismatch
]


@pytest.mark.parametrize("op,ins,attrs", MISUSE, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISUSE)])
def test_shape_errors(op, ins, attrs):
    with pytest.raises(ShapeError, match=op):
        infer(op, ins, attrs)


def test_every_op_has_a_doc():
    ops = {n: o for n, o in all_ops().items() if o.family in ("quant", "moe")}
    assert {"quantize", "dequantize", "qlinear", "lowrank_linear", "lowrank_ffn", "bcq_linear",
            "moe"} <= set(ops)
    for name, o in ops.items():
        assert len(o.doc) > 200 and o.doc.startswith(name), name


@pytest.mark.parametrize("mode", ["per_tensor", "per_token"])
def test_dynamic_quant_of_an_empty_batch(mode: str) -> None:
    """An empty batch (a symbolic batch bound to 0) has nothing to scale: empty codes, not
    torch's refusal to take amax over no elements."""
    from scalefold.ir.ops.quant import dynamic_quant
    q, s = dynamic_quant(torch.randn(0, 8), mode, 8)
    assert q.shape == (0, 8) and s.numel() == (1 if mode == "per_tensor" else 0)
