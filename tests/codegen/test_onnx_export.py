"""ONNX export: every IR op exported, full-checked, run in onnxruntime and compared with the
reference interpreter; symbolic dims, opset limits, atomic writes, external data and the model
graphs of tests/runtime/test_interp_models.py.

Tolerances: float results use fp32 tolerance (rtol = atol = 1e-5; f16 results the f16 one).
Quantisation codes are compared exactly: onnxruntime's QuantizeLinear divides by the scale
and rounds half to even, as the IR does.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from harness import assert_close
from scalefold.codegen.onnx import ExportError, to_onnx
from scalefold.codegen.onnx_ops import REFUSED, RENDER
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ScalefoldError
from scalefold.ir.graph import Graph
from scalefold.ir.ops import all_ops
from scalefold.ir.parser import parse
from scalefold.ir.types import TensorType, sym
from scalefold.runtime.interp import run

CPU = ["CPUExecutionProvider"]
_F8 = {"f8e4m3": torch.float8_e4m3fn, "f8e5m2": torch.float8_e5m2}


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # Keep onnxruntime from rewriting DequantizeLinear+MatMul into int8-activation MatMulNBits.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, opts, providers=CPU)


def _rand(t: TensorType) -> torch.Tensor:
    shape = [int(d) for d in t.shape]
    d = t.dtype
    if d.is_float:
        return torch.randn(shape).to(d.container)
    if d is dt.boolean:
        return torch.rand(shape) > 0.5
    if d.is_signed:
        return torch.randint(-8, 8, shape).to(d.container)
    return torch.randint(0, 16, shape).to(d.container)


def check(g: Graph, feeds: list[torch.Tensor], opset: int = 21, rtol: float = 1e-5,
          atol: float = 1e-5) -> onnx.ModelProto:
    """Export (full check inside to_onnx), run in onnxruntime and compare to the interpreter."""
    m = to_onnx(g, opset=opset)
    got = _session(m).run(None, {v.name: t.numpy() for v, t in zip(g.inputs, feeds)})
    want = run(g, *feeds)
    for i, (a, e, v) in enumerate(zip(got, want, g.outputs)):
        t = torch.from_numpy(np.array(a))   # ascontiguousarray would make 0-d arrays 1-d
        if v.dtype.name in _F8:
            t = t.view(_F8[v.dtype.name])
        tol = {} if e.dtype in (torch.float16, torch.bfloat16) or not e.is_floating_point() \
            else {"rtol": rtol, "atol": atol}
        assert_close(t, e, what=f"output {i} of {[n.op for n in g.nodes]}", **tol)
    return m


class In:
    """A graph input fed with the given data (otherwise inputs get random data)."""

    def __init__(self, t: torch.Tensor, dtype: str | None = None):
        self.t, self.dtype = t, dtype or dt.from_torch(t.dtype).name


class C:
    """A constant operand of the given IR dtype."""

    def __init__(self, t: torch.Tensor, dtype: str | None = None):
        self.t, self.dtype = t, dtype


Spec = "str | In | C | torch.Tensor | None"


def graph_of(ops: list[tuple[str, list, dict]], *ins) -> tuple[Graph, list[torch.Tensor]]:
    """A graph applying ``ops`` in sequence; operand "%k" is the k-th op's output (first
    output), "$i" the i-th spec in ``ins``; specs are type text (random input), In, C or a
    tensor (constant)."""
    g, feeds, vals = Graph("t"), [], []
    for i, s in enumerate(ins):
        if s is None:
            vals.append(None)
        elif isinstance(s, str):
            v = g.add_input(s, f"x{i}")
            feeds.append(_rand(v.type))
            vals.append(v)
        elif isinstance(s, In):
            vals.append(g.add_input(TensorType(s.dtype, s.t.shape), f"x{i}"))
            feeds.append(s.t)
        elif isinstance(s, C):
            vals.append(g.add_const(s.t, s.dtype))
        else:
            vals.append(g.add_const(s))
    outs = []
    for op, args, attrs in ops:
        xs = [outs[int(a[1:])][0] if isinstance(a, str) and a.startswith("%") else
              vals[int(a[1:])] if isinstance(a, str) else
              g.add_const(a) if isinstance(a, torch.Tensor) else a for a in args]
        r = g.add(op, xs, attrs)
        outs.append(list(r) if isinstance(r, tuple) else [r])
    g.set_outputs(outs[-1])
    return g, feeds


def unit(op: str, *ins, then: list[tuple[str, list, dict]] = (), **attrs):
    """Builder for one op on operands ``ins`` (optionally followed by more ops)."""
    return lambda: graph_of([(op, [f"${i}" for i in range(len(ins))], attrs)] + list(then), *ins)


pos = lambda *s: In(torch.rand(*s) + 0.1)                     # noqa: E731
nz = lambda *s: In((torch.rand(*s) + 0.5) * torch.where(torch.rand(*s) > 0.5, 1.0, -1.0))  # noqa: E731
special = In(torch.tensor([[0.5, 1.5, 2.5, -0.5, -2.5, 0.0], [-0.0, float("nan"), float("inf"),
                                                              -float("inf"), 3.7, -1.2]]))
X = "f32[3,5]"

CASES: list = []
torch.manual_seed(0)  # the constants below are drawn at import time


def case(name: str, builder: Callable, **kw) -> None:
    CASES.append(pytest.param(builder, kw, id=name))


# ---- elementwise ------------------------------------------------------------------------------
for _op in ("relu", "neg", "abs", "exp", "sin", "cos", "tanh", "sigmoid", "silu", "erf", "floor",
            "ceil", "leaky_relu", "elu", "hardsigmoid", "hardswish", "softplus", "mish", "identity",
            "reciprocal"):
    case(_op, unit(_op, X))
for _op in ("tan", "sinh", "cosh", "asinh", "atan"):
    case(_op, unit(_op, X))
for _op in ("acos", "asin", "atanh"):
    case(_op, unit(_op, In(torch.rand(3, 5) * 1.8 - 0.9)))
case("acosh", unit("acosh", In(torch.rand(3, 5) * 3 + 1)))
_counts = In(torch.tensor([0, 1, 3, 7, 8, 9, -1, 2], dtype=torch.uint8))
case("bitshift_u8_left", unit("bitshift", In(torch.tensor([1, 255, 17, 3, 1, 128, 5, 64], dtype=torch.uint8)),
                              _counts, direction="left"))
case("bitshift_u8_right", unit("bitshift", "u8[8]", _counts, direction="right"))
_icounts = In(torch.tensor([0, 1, 4, 31, 32, 40, -1, 3], dtype=torch.int32))
_ivals = In(torch.tensor([-7, 100, -2 ** 31, 5, -1, 9, -100, 2 ** 30], dtype=torch.int32))
case("bitshift_i32_right", unit("bitshift", _ivals, _icounts, direction="right"))
case("bitshift_i32_left", unit("bitshift", _ivals, _icounts, direction="left"))
case("cumprod", unit("cumprod", In(torch.rand(3, 7) + 0.5), axis=1))
# (op, dtype) pairs ONNX forbids or onnxruntime has no kernel for: computed in a wider type
for _op in ("maximum", "minimum"):
    case(f"{_op}_i16", unit(_op, "i16[3,5]", "i16[3,5]"))
for _d in ("i8", "i16", "i64", "u8"):
    case(f"relu_{_d}", unit("relu", f"{_d}[3,5]"))
case("neg_u8", unit("neg", In(torch.tensor([0, 1, 5, 128, 255], dtype=torch.uint8))))
for _d, _tt in (("i8", torch.int8), ("i16", torch.int16), ("u8", torch.uint8)):
    case(f"pow_{_d}", unit("pow", In(torch.tensor([3, -2, 7, 0, 5], dtype=torch.int16).to(_tt)),
                           In(torch.tensor([2, 3, 5, 4, 1], dtype=_tt))))
for _d in ("bool", "i16"):
    case(f"where_{_d}", unit("where", "bool[3,5]", f"{_d}[3,5]", f"{_d}[3,5]"))
case("where_bf16", unit("where", "bool[3,5]", C(torch.randn(3, 5), "bf16"), C(torch.randn(3, 5), "bf16"),
                        then=[("cast", ["%0"], {"to": "f32"})]))
for _op in ("lt", "le", "gt", "ge"):
    case(f"{_op}_bool", unit(_op, "bool[3,5]", "bool[3,5]"))
_i16 = In(torch.tensor([1, -3, 300, -32768, 7, 9, -1, 12], dtype=torch.int16))
_i16c = In(torch.tensor([1, 2, 3, 0, 15, 16, -1, 4], dtype=torch.int16))
case("bitshift_i16_right", unit("bitshift", _i16, _i16c, direction="right"))
case("bitshift_i16_left", unit("bitshift", _i16, _i16c, direction="left"))
case("cumprod_excl_rev_i64", unit("cumprod", "i64[5,2]", axis=0, exclusive=True, reverse=True))
case("dim_values", unit("dim_values", values=[3, 5], dtype="i32"))
case("dim_values_scalar", unit("dim_values", values=[7], scalar=True))
case("lp_pool", unit("lp_pool", "f32[1,2,7,7]", kernel=[3], stride=[2], padding=[1], p=2))
case("lp_pool_p1_ceil", unit("lp_pool", "f32[1,2,8]", kernel=[3], stride=[2], p=1, ceil_mode=True))
case("lrn", unit("lrn", "f32[2,5,3,3]", size=3))
_N = sym("N")
case("compress", unit("compress", X, In(torch.tensor([True, False, True, True, False])), axis=1, count=_N))
case("compress_flat", unit("compress", X, In(torch.rand(9) > 0.5), count=_N))
case("nonzero", unit("nonzero", In(torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, -1.0]])), count=_N))
case("roi_align", unit("roi_align", "f32[2,3,8,9]", In(torch.tensor([[0.5, 1.0, 6.0, 7.5], [-2.0, 3.0, 4.0, 9.0],
                                                                        [2.0, 2.0, 2.4, 2.2]])),
                       In(torch.tensor([1, 0, 1])), output_height=2, output_width=3, spatial_scale=0.8))
case("roi_align_max_output_half_pixel",
     unit("roi_align", "f32[1,2,6,6]", In(torch.tensor([[0.5, 1.0, 4.0, 5.5], [1.0, 1.0, 1.2, 1.1]])),
          In(torch.tensor([0, 0])), mode="max", sampling_ratio=2, half_pixel=False))
case("if_select", unit("if_select", In(torch.tensor([False])), "f32[2,3]", "f32[4,3]", shape=(_N, 3)))
case("nms", unit("nms", In(torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.1, 1.0, 1.1], [0.0, -0.1, 1.0, 0.9],
                                          [0.0, 10.0, 1.0, 11.0], [0.0, 10.1, 1.0, 11.1]]])),
                 In(torch.tensor([[[0.9, 0.75, 0.6, 0.95, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]]])),
                 C(torch.tensor([2]), "i64"), C(torch.tensor([0.5]), "f32"), C(torch.tensor([0.15]), "f32"),
                 score_filter=True, count=_N))
case("unique_sorted", unit("unique", In(torch.tensor([3, 1, 3, 2, 1, 7])), count=_N))
case("unique_first_seen", unit("unique", In(torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0])), sorted=False, count=_N))
case("gather_nd", unit("gather_nd", "f32[2,3,4]", In(torch.tensor([[0, 1], [1, -1]]))))
case("gather_nd_batch", unit("gather_nd", "f32[2,3,4]", In(torch.tensor([[2], [0]])), batch_dims=1))
case("scatter_elements_add", unit("scatter_elements", "f32[3,4]", In(torch.tensor([[1, 1], [2, 3], [0, -1]])),
                                  "f32[3,2]", axis=1, reduction="add"))
case("scatter_nd", unit("scatter_nd", "f32[4,3]", In(torch.tensor([[1], [3]])), "f32[2,3]"))
case("einsum_bmm", unit("einsum", "f32[2,3,4]", "f32[2,4,5]", equation="bij,bjk->bik"))
case("einsum_implicit", unit("einsum", "f32[3,4]", "f32[4]", equation="ij,j"))
case("grid_sample", unit("grid_sample", "f32[1,2,4,5]", In(torch.rand(1, 3, 3, 2) * 2.2 - 1.1)))
case("grid_sample_nearest_opset17", unit("grid_sample", "f32[1,2,4,5]", In(torch.rand(1, 3, 3, 2) * 2.2 - 1.1),
                                         mode="nearest", padding_mode="border", align_corners=True), opset=17)
case("resize_nearest", unit("resize", "f32[1,2,4,5]", sizes=[1, 2, 8, 10]))
case("resize_linear_scales", unit("resize", "f32[1,2,4,5]", sizes=[1, 2, 6, 7], scales=[1.0, 1.0, 1.5, 1.5],
                                  mode="linear"))
for _op in ("log", "sqrt", "rsqrt"):
    case(_op, unit(_op, pos(3, 5)))
for _op in ("round", "sign", "isnan", "isinf"):
    case(_op, unit(_op, special))
case("gelu_none", unit("gelu", X))
case("gelu_tanh", unit("gelu", X, approximate="tanh"))
case("gelu_opset17", unit("gelu", X, approximate="tanh"), opset=17)
case("gelu_erf_opset17", unit("gelu", X), opset=17)
case("mish_opset17", unit("mish", X), opset=17)
case("relu_i32", unit("relu", "i32[4,3]"))
case("neg_i64", unit("neg", "i64[5]"))
case("abs_f16", unit("abs", "f16[5]"))
case("clip_f32_nan", unit("clip", special, min=-1.0, max=2.0))
case("clip_min_only", unit("clip", X, min=0.25))
case("clip_i32", unit("clip", "i32[4,4]", min=-2.5, max=3.5))
case("logical_not", unit("logical_not", "bool[3,4]"))
for _op in ("add", "sub", "mul", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge"):
    case(_op, unit(_op, "f32[3,4]", "f32[4]"))
case("add_i32", unit("add", "i32[3,4]", "i32[3,1]"))
case("add_bf16_const", unit("add", C(torch.randn(4), "bf16"), C(torch.randn(4), "bf16"),
                            then=[("cast", ["%0"], {"to": "f32"})]))
case("mul_f8_const", unit("mul", C(torch.randn(6), "f8e4m3"), C(torch.randn(6), "f8e4m3"),
                          then=[("cast", ["%0"], {"to": "f32"})]))
case("div_f32", unit("div", "f32[3,4]", nz(3, 4)))
case("div_i32_trunc", unit("div", In(torch.randint(-20, 20, (4, 4), dtype=torch.int32)),
                           In(torch.tensor([3, -2, 5, -7], dtype=torch.int32))))
case("pow", unit("pow", pos(3, 4), "f32[3,4]"))
for _fm in (False, True):
    case(f"mod_f32_fmod{int(_fm)}", unit("mod", In(torch.randn(4, 5) * 5), nz(4, 5), fmod=_fm))
    case(f"mod_i64_fmod{int(_fm)}", unit("mod", In(torch.randint(-20, 20, (10,))),
                                         In(torch.tensor([3, -3, 4, -5, 7, 2, -2, 9, -9, 6])), fmod=_fm))
for _op in ("logical_and", "logical_or", "logical_xor"):
    case(_op, unit(_op, "bool[3,4]", "bool[4]"))
for _op in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    case(_op, unit(_op, "i32[3,4]", "i32[3,4]"))
case("where", unit("where", "bool[3,4]", "f32[3,4]", "f32[4]"))
for _src, _to in (("f32", "i32"), ("f32", "f16"), ("i32", "f32"), ("f32", "bool"), ("i64", "i8"),
                  ("bool", "f32"), ("f32", "u8")):
    case(f"cast_{_src}_{_to}", unit("cast", In(_rand(TensorType(_src, [3, 4])) * (3 if _src == "f32" else 1)),
                                    to=_to))
case("cast_f32_f8_f32", unit("cast", In(torch.randn(3, 4) * 100), to="f8e4m3",
                             then=[("cast", ["%0"], {"to": "f32"})]))
case("cast_f32_i4_i8", unit("cast", In(torch.tensor([[-20.0, -3.7, 0.2, 6.9, 11.0, float("nan")]])),
                            to="i4", then=[("cast", ["%0"], {"to": "i8"})]))
case("cast_i32_u4_i32", unit("cast", In(torch.tensor([-5, 0, 7, 15, 40], dtype=torch.int32)), to="u4",
                             then=[("cast", ["%0"], {"to": "i32"})]))
case("cast_f32_f4_f32", unit("cast", In(torch.tensor([[0.2, 0.25, 0.75, -1.25, 2.5, 5.0, 7.0, -0.0, float("nan")]])),
                             to="f4e2m1", then=[("cast", ["%0"], {"to": "f32", "from_dtype": "f4e2m1"})]))

# ---- shape ------------------------------------------------------------------------------------
case("reshape", unit("reshape", "f32[2,3,4]", shape=[4, -1]))
case("transpose", unit("transpose", "f32[2,3,4]", perm=[2, 0, 1]))
case("transpose_default", unit("transpose", "f32[2,3,4]"))
case("squeeze", unit("squeeze", "f32[2,1,4,1]", axes=[1, -1]))
case("squeeze_all", unit("squeeze", "f32[2,1,4,1]"))
case("unsqueeze", unit("unsqueeze", "f32[2,4]", axes=[0, -1]))
case("flatten", unit("flatten", "f32[2,3,4,5]", axis=2))
case("slice", unit("slice", "f32[6,7]", starts=[1, -2], ends=[2 ** 40, 0], axes=[0, 1], steps=[2, -1]))
case("concat", unit("concat", "f32[2,3]", "f32[2,1]", axis=-1))
case("split", unit("split", "f32[7,2]", sizes=[3, 4], axis=0))
case("gather", unit("gather", "f32[5,3]", In(torch.tensor([[0, -1], [2, 4]])), axis=0))
case("gather_elements", unit("gather_elements", "f32[3,4]", In(torch.tensor([[0, 3], [1, 2], [-1, 0]])), axis=1))
case("embedding", unit("embedding", torch.randn(10, 4), In(torch.tensor([[1, 9, 0]]))))
case("expand", unit("expand", "f32[3,1]", shape=[2, 1, 4]))
case("tile", unit("tile", "f32[2,3]", repeats=[2, 1]))
case("pad_constant", unit("pad", "f32[2,3]", pads=[1, 0, 2, -1], value=1.5))
case("pad_edge", unit("pad", "f32[2,3]", pads=[1, 2, 0, 1], mode="edge"))
case("pad_reflect", unit("pad", "f32[3,4]", pads=[1, 2, 1, 3], mode="reflect"))
case("pad_reflect_wide", unit("pad", "f32[2,3]", pads=[0, 5, 0, 4], mode="reflect"))
case("trilu_upper", unit("trilu", "f32[2,4,5]", diagonal=1))
case("trilu_lower", unit("trilu", "f32[4,5]", diagonal=-1, upper=False))
case("arange", unit("arange", start=2, end=11, step=3, dtype="f32"))
case("full", unit("full", shape=[2, 3], value=-2.5, dtype="i32"))

# ---- nn, norms, attention ----------------------------------------------------------------------
case("matmul_3d_2d", unit("matmul", "f32[2,3,4]", "f32[4,5]"))
case("matmul_1d", unit("matmul", "f32[4]", "f32[2,4,3]"))
case("matmul_i64", unit("matmul", "i64[3,4]", "i64[4,2]"))
case("linear_gemm", unit("linear", "f32[3,6]", torch.randn(5, 6), torch.randn(5)))
case("linear_3d_nobias", unit("linear", "f32[2,3,6]", torch.randn(5, 6)))
case("linear_weight_input", unit("linear", "f32[2,3,6]", "f32[5,6]", "f32[5]"))
case("conv2d", unit("conv", "f32[2,4,9,8]", torch.randn(6, 2, 3, 3), torch.randn(6), stride=[2, 1],
                    padding=[1, 0, 2, 1], dilation=[1, 2], groups=2))
case("conv1d", unit("conv", "f32[1,3,10]", torch.randn(4, 3, 3), padding=[1]))
case("conv_transpose", unit("conv_transpose", "f32[1,4,5,5]", torch.randn(4, 3, 3, 3), torch.randn(3),
                            stride=[2, 2], padding=[1, 0, 1, 0], output_padding=[1, 0]))
case("max_pool_ceil", unit("max_pool", "f32[1,2,9,9]", kernel=[3], stride=[2], padding=[1], ceil_mode=True))
case("max_pool_dilated", unit("max_pool", "f32[1,2,9,9]", kernel=[2, 3], dilation=[2, 1]))
case("avg_pool_pad", unit("avg_pool", "f32[1,2,8,8]", kernel=[3], stride=[2], padding=[1]))
case("avg_pool_count_pad", unit("avg_pool", "f32[1,2,8,8]", kernel=[3], stride=[2], padding=[1],
                                count_include_pad=True))
case("global_avg_pool", unit("global_avg_pool", "f32[2,3,4,5]"))
case("global_max_pool", unit("global_max_pool", "f32[2,3,4]"))
case("layer_norm", unit("layer_norm", "f32[2,3,8]", torch.randn(8), torch.randn(8)))
case("layer_norm_noaffine_axis1", unit("layer_norm", "f32[2,3,8]", axis=1))
case("rms_norm", unit("rms_norm", "f32[2,3,8]", torch.randn(8), eps=1e-5))
case("rms_norm_opset23", unit("rms_norm", "f32[2,3,8]", torch.randn(8)), opset=23)
case("rms_norm_f16", unit("rms_norm", "f16[2,8]"))
case("batch_norm", unit("batch_norm", "f32[2,3,4,4]", torch.randn(3), torch.randn(3), torch.randn(3),
                        torch.rand(3) + 0.5))
case("group_norm", unit("group_norm", "f32[2,6,3,3]", torch.randn(6), torch.randn(6), groups=3))
case("group_norm_noaffine", unit("group_norm", "f32[2,4,5]", groups=2))
case("instance_norm", unit("instance_norm", "f32[2,3,5,4]", torch.randn(3)))
case("softmax", unit("softmax", "f32[3,5]", axis=0))
case("log_softmax", unit("log_softmax", "f32[3,5]"))
_mask = torch.rand(2, 1, 3, 6) > 0.4
_mask[0, 0, 1] = False                                        # a row with every key masked
case("sdpa", unit("sdpa", "f32[2,2,3,4]", "f32[2,2,6,4]", "f32[2,2,6,5]"))
case("sdpa_causal_scale", unit("sdpa", "f32[2,3,4]", "f32[2,6,4]", "f32[2,6,4]", causal=True, scale=0.3))
case("sdpa_bool_mask_causal", unit("sdpa", "f32[2,2,3,4]", "f32[2,2,6,4]", "f32[2,2,6,4]", In(_mask),
                                   causal=True))
case("sdpa_float_mask", unit("sdpa", "f32[2,2,3,4]", "f32[2,2,6,4]", "f32[2,2,6,4]", "f32[3,6]"))
case("sdpa_gqa", unit("sdpa", "f32[1,4,3,4]", "f32[1,2,5,4]", "f32[1,2,5,4]", gqa=True))
case("sdpa_attention23", unit("sdpa", "f32[2,4,3,4]", "f32[2,2,5,4]", "f32[2,2,5,4]", gqa=True), opset=23)
case("sdpa_attention23_causal", unit("sdpa", "f32[2,2,3,4]", "f32[2,2,5,4]", "f32[2,2,5,4]",
                                     causal=True), opset=23)

# ---- reductions ---------------------------------------------------------------------------------
for _op in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2",
            "reduce_sum_square", "reduce_logsumexp"):
    case(_op, unit(_op, "f32[3,4,5]", axes=[0, -1], keepdims=False))
case("reduce_sum_all_opset17", unit("reduce_sum", "f32[3,4]"), opset=17)
case("reduce_mean_opset17", unit("reduce_mean", "f32[3,4]", axes=[1]), opset=17)
case("reduce_max_bool", unit("reduce_max", "bool[3,4]", axes=[1]))
case("reduce_sum_i32", unit("reduce_sum", "i32[3,4]", axes=[0]))
case("reduce_var", unit("reduce_var", "f32[3,4,5]", axes=[1, 2], correction=1))
case("reduce_std", unit("reduce_std", "f32[3,4]", keepdims=False))
_ties = In(torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -1.0, -1.0]]))
case("argmax_last", unit("argmax", _ties, axis=1, select_last_index=True))
case("argmin", unit("argmin", _ties, axis=1, keepdims=False))
case("topk", unit("topk", "f32[3,6]", k=3))
case("topk_smallest_axis0", unit("topk", "f32[5,2]", k=2, axis=0, largest=False))
case("cumsum", unit("cumsum", "f32[3,5]", axis=1))
case("cumsum_excl_rev", unit("cumsum", "i64[3,5]", axis=-1, exclusive=True, reverse=True))

# ---- quantisation and compressed linears -------------------------------------------------------
_s4 = torch.rand(4) * 0.1 + 0.02
case("quantize_tensor_i8", unit("quantize", In(torch.randn(4, 64) * 3), torch.tensor(0.05)))
case("quantize_axis_u8_zp", unit("quantize", In(torch.randn(4, 8)), _s4, C(torch.tensor([0, 10, 128, 255]), "u8"),
                                 dtype="u8", axis=0))
case("quantize_block_i4", unit("quantize", In(torch.randn(4, 64)), torch.rand(4, 4) * 0.2 + 0.05,
                               dtype="i4", axis=1, block=16, then=[("cast", ["%0"], {"to": "i8"})]))
case("quantize_block_i8_opset19", unit("quantize", In(torch.randn(6, 10) * 3), torch.rand(2, 10) + 0.05,
                                       axis=0, block=4), opset=19)
case("quantize_i32", unit("quantize", In(torch.randn(3, 5) * 1e4), torch.tensor(0.01), dtype="i32"))
case("quantize_bits6", unit("quantize", In(torch.randn(3, 9) * 10), torch.tensor(0.1), bits=6))
case("quantize_i16_bits12", unit("quantize", In(torch.randn(3, 9) * 1e4), torch.tensor(0.5), dtype="i16", bits=12))
case("quantize_u4_zp", unit("quantize", In(torch.randn(4, 6)), _s4, C(torch.tensor([0, 3, 8, 15]), "u4"),
                            dtype="u4", axis=0, then=[("cast", ["%0"], {"to": "i32"})]))
case("quantize_f8", unit("quantize", In(torch.randn(4, 6) * 300), torch.tensor(0.5), dtype="f8e4m3"))
case("quantize_f4_roundtrip", unit("quantize", In(torch.randn(4, 8) * 3), torch.tensor(0.5), dtype="f4e2m1",
                                   then=[("dequantize", ["%0", torch.tensor(0.5)], {"qtype": "f4e2m1"})]))
case("dequantize_axis_i8_zp", unit("dequantize", C(torch.randint(-128, 128, (4, 6)), "i8"), _s4,
                                   C(torch.tensor([0, -3, 5, 100]), "i8"), axis=0))
case("dequantize_block_i4_zp", unit("dequantize", C(torch.randint(-8, 8, (6, 20)), "i4"),
                                    torch.rand(6, 3) + 0.1, C(torch.randint(-8, 8, (6, 3)), "i4"),
                                    axis=1, block=8))
case("dequantize_u8_f16", unit("dequantize", "u8[3,4]", torch.tensor(0.25), dtype="f16"))
case("dequantize_i32_zp", unit("dequantize", C(torch.randint(-10 ** 6, 10 ** 6, (3, 4)), "i32"),
                               torch.tensor(1e-3), C(torch.tensor(7), "i32")))
case("dequantize_f8", unit("dequantize", C(torch.randn(3, 4) * 10, "f8e5m2"), torch.rand(3) + 0.5, axis=0))
case("dequantize_f4_block", unit("dequantize", C(torch.randint(0, 16, (4, 64)).to(torch.uint8), "f4e2m1"),
                                 torch.rand(4, 2) + 0.05, qtype="f4e2m1", axis=1, block=32))
case("dequantize_block_i8_opset17", unit("dequantize", C(torch.randint(-128, 128, (4, 6)), "i8"),
                                         torch.rand(4, 2) + 0.1, axis=1, block=3), opset=17)


def _codes(n: int, k: int, d: str) -> C:
    lo, hi = dt.get(d).int_range()
    return C(torch.randint(lo, hi + 1, (n, k)), d)


def _ql(x, w: C, scale, zero=None, bias=None, **attrs):
    return unit("qlinear", x, w, scale, zero, bias, **attrs)


case("qlinear_nbits_i4_g32", _ql("f32[3,64]", _codes(16, 64, "i4"), torch.rand(16, 2) * 0.1 + 0.01,
                                 group=32))
case("qlinear_nbits_u4_zero_bias", _ql("f32[2,3,64]", _codes(8, 64, "u4"), torch.rand(8, 4) * 0.1 + 0.01,
                                       _codes(8, 4, "u4"), torch.randn(8), group=16))
case("qlinear_nbits_i4_channel_oddk", _ql("f32[3,40]", _codes(8, 40, "i4"), torch.rand(8) * 0.1 + 0.01))
case("qlinear_nbits_i4_g48", _ql("f32[2,96]", _codes(8, 96, "i4"), torch.rand(8, 2) * 0.1 + 0.01,
                                 _codes(8, 2, "i4"), group=48))
case("qlinear_nbits_f16", _ql("f16[2,64]", _codes(8, 64, "i4"), torch.rand(8, 2) * 0.1 + 0.01, group=32))
case("qlinear_i4_g8_dq", _ql("f32[3,24]", _codes(8, 24, "i4"), torch.rand(8, 3) * 0.1 + 0.01, group=8))
case("qlinear_i8_channel_zero", _ql("f32[2,3,16]", _codes(8, 16, "i8"), torch.rand(8) * 0.01,
                                    C(torch.randint(-8, 8, (8,)), "i8"), torch.randn(8)))
case("qlinear_f8_weights", _ql("f32[3,16]", C(torch.randn(8, 16), "f8e4m3"), torch.rand(8) * 0.1))
case("qlinear_f4_weights", _ql("f32[3,32]", C(torch.randint(0, 16, (8, 32)).to(torch.uint8), "f4e2m1"),
                               torch.rand(8, 2) * 0.1, group=16, wtype="f4e2m1"))
case("qlinear_float_zero", _ql("f32[3,32]", _codes(8, 32, "u4"), torch.rand(8, 2) * 0.1,
                               torch.rand(8, 2) * 15, group=16))
case("qlinear_per_token", _ql("f32[2,3,16]", _codes(8, 16, "i8"), torch.rand(8) * 0.01, act="per_token"))
case("qlinear_per_tensor_a4", _ql("f32[3,16]", _codes(8, 16, "i8"), torch.rand(8) * 0.01,
                                  act="per_tensor", abits=4))
case("qlinear_int_x_matmulinteger", _ql("u8[3,16]", _codes(8, 16, "i8"), torch.rand(8) * 0.01,
                                        C(torch.randint(-8, 8, (8,)), "i8"), torch.randn(8)))
case("qlinear_int_x_i8_u8w", _ql("i8[3,16]", _codes(8, 16, "u8"), torch.rand(8) * 0.01, out_dtype="f16"))
case("qlinear_weight_input", _ql("f32[3,16]", "i8[8,16]", "f32[8,4]", None, None, group=4))
case("bcq_const", unit("bcq_linear", "f32[3,16]", torch.rand(3, 8, 16) > 0.5, torch.rand(3, 8), torch.randn(8)))
case("bcq_group_input", unit("bcq_linear", "f32[2,3,16]", "bool[3,8,16]", torch.rand(3, 8, 4), group=4))
case("lowrank_linear", unit("lowrank_linear", "f32[2,3,16]", torch.randn(8, 4), torch.randn(4, 16), torch.randn(8)))
case("lowrank_linear_input_factors", unit("lowrank_linear", "f32[3,16]", "f32[8,4]", "f32[4,16]"))
for _act in ("gelu", "gelu_tanh", "relu", "silu"):
    case(f"lowrank_ffn_{_act}", unit("lowrank_ffn", "f32[3,16]", torch.randn(24, 4) * 0.3,
                                     torch.randn(4, 16) * 0.3, torch.randn(24), torch.randn(16, 5) * 0.3,
                                     torch.randn(5, 24) * 0.3, torch.randn(16),
                                     activation=_act))
case("lowrank_ffn_nobias_f16", unit("lowrank_ffn", "f16[3,16]", C(torch.randn(24, 4), "f16"),
                                    C(torch.randn(4, 16), "f16"), None, C(torch.randn(16, 5), "f16"),
                                    C(torch.randn(5, 24) * 0.3, "f16")))
case("moe_gated_softmax", unit("moe", "f32[2,5,8]", torch.randn(4, 8), torch.randn(4, 6, 8) * 0.3,
                               torch.randn(4, 6, 8) * 0.3, torch.randn(4, 8, 6) * 0.3, top_k=2))
case("moe_sigmoid_bias", unit("moe", "f32[7,8]", torch.randn(3, 8), None, torch.randn(3, 6, 8) * 0.3,
                              torch.randn(3, 8, 6) * 0.3, "f32[3]", top_k=2, gated=False, normalize=False,
                              scoring="sigmoid", activation="gelu"))

# qmoe: integer experts stay codes (DequantizeLinear in the graph), FP4 folds to floats
# (codegen/onnx_qmoe.py); own generator keeps the global seed stream
_gq = torch.Generator().manual_seed(7)
_qc = lambda hi, *s: torch.randint(0, hi, s, generator=_gq)          # noqa: E731
_qs = lambda *s: torch.rand(*s, generator=_gq) * 0.05 + 0.01          # noqa: E731
case("qmoe_int4_gated_zero", unit("qmoe", "f32[2,5,8]", torch.randn(4, 8, generator=_gq),
                                  C(_qc(16, 4, 6, 8), "u4"), _qs(4, 6, 2), C(_qc(16, 4, 6, 2), "u4"),
                                  C(_qc(16, 4, 6, 8), "u4"), _qs(4, 6, 2), C(_qc(16, 4, 6, 2), "u4"),
                                  C(_qc(16, 4, 8, 6), "u4"), _qs(4, 8, 2), C(_qc(16, 4, 8, 2), "u4"),
                                  top_k=2, group=4))
case("qmoe_int8_sym_per_channel", unit("qmoe", "f32[6,8]", torch.randn(3, 8, generator=_gq),
                                       C(_qc(255, 3, 6, 8) - 127, "i8"), _qs(3, 6, 1), None,
                                       C(_qc(255, 3, 6, 8) - 127, "i8"), _qs(3, 6, 1), None,
                                       C(_qc(255, 3, 8, 6) - 127, "i8"), _qs(3, 8, 1), None,
                                       top_k=1, group=0, wtype="i8"))
case("qmoe_int4_opset20_folds", unit("qmoe", "f32[5,8]", torch.randn(2, 8, generator=_gq),
                                     None, None, None,
                                     C(_qc(16, 2, 6, 8), "u4"), _qs(2, 6, 2), C(_qc(16, 2, 6, 2), "u4"),
                                     C(_qc(16, 2, 8, 6), "u4"), _qs(2, 8, 2), C(_qc(16, 2, 8, 2), "u4"),
                                     top_k=1, group=4, gated=False), opset=20)
case("qmoe_fp4_ungated_bias", unit("qmoe", "f32[7,8]", torch.randn(3, 8, generator=_gq), None, None, None,
                                   C(_qc(16, 3, 6, 8).to(torch.uint8), "f4e2m1"), _qs(3, 6, 1), None,
                                   C(_qc(16, 3, 8, 6).to(torch.uint8), "f4e2m1"), _qs(3, 8, 1), None, "f32[3]",
                                   top_k=2, gated=False, wtype="f4e2m1", scoring="sigmoid"))


def test_qmoe_experts_stay_codes_in_the_onnx_file() -> None:
    """Integer expert codes are exported as code initializers (UINT4 here) dequantised in the
    graph, not as float experts; FP4 codes and opsets without INT4 fold to floats."""
    def initializer_types(m: onnx.ModelProto) -> dict[tuple, int]:
        return {tuple(t.dims): t.data_type for t in m.graph.initializer}
    (builder, kw), = [c.values for c in CASES if c.id == "qmoe_int4_gated_zero"]
    g, feeds = builder()
    m = check(g, feeds, **kw)
    types = initializer_types(m)
    assert types[(4, 8, 6)] == onnx.TensorProto.UINT4 and types[(4, 6, 8)] == onnx.TensorProto.UINT4
    assert not any(t == onnx.TensorProto.FLOAT and len(d) == 3 and d[0] == 4 and d[1] * d[2] == 48
                   for d, t in types.items())
    assert [n.op_type for n in m.graph.node].count("DequantizeLinear") == 3
    for name in ("qmoe_int4_opset20_folds", "qmoe_fp4_ungated_bias"):
        (builder, kw), = [c.values for c in CASES if c.id == name]
        g, feeds = builder()
        m = check(g, feeds, **kw)
        assert "DequantizeLinear" not in [n.op_type for n in m.graph.node]


@pytest.mark.parametrize("builder,kw", CASES)
def test_op_exports_and_matches_interpreter(builder: Callable, kw: dict) -> None:
    g, feeds = builder()
    check(g, feeds, **kw)


def test_table_covers_every_registered_op() -> None:
    ops = set(all_ops())
    assert ops <= set(RENDER) | set(REFUSED), sorted(ops - set(RENDER) - set(REFUSED))
    assert not REFUSED
    tested = {n.op for p in CASES for n in p.values[0]()[0].nodes}
    assert ops <= tested, f"ops without an export case: {sorted(ops - tested)}"


def test_matmulnbits_and_matmulinteger_are_used() -> None:
    g, _ = _ql("f32[3,64]", _codes(16, 64, "i4"), torch.rand(16, 2), group=32)()
    m = to_onnx(g)
    nb = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert len(nb) == 1 and nb[0].domain == "com.microsoft"
    assert {a.name: a.i for a in nb[0].attribute if a.name != "accuracy_level"} == \
        {"K": 64, "N": 16, "bits": 4, "block_size": 32}
    assert {(o.domain, o.version) for o in m.opset_import} == {("", 21), ("com.microsoft", 1)}
    g, _ = _ql("u8[3,16]", _codes(8, 16, "i8"), torch.rand(8))()
    assert "MatMulInteger" in [n.op_type for n in to_onnx(g).graph.node]


# ---- symbolic dims ----------------------------------------------------------------------------

SYM_IR = """
graph @sym(%x: f32[B,S,8], %y: f32[1,S,1]) -> (f32[S,B,8], f32[B,S,2,4], i64[S], f32[B,S-1,8], f32[B,S,8], f32[B,S], f32[B,2*S-1,8], i64[3]) {
  %0: f32[S,B,8] = reshape[shape=[S,B,8]](%x)
  %1: f32[B,S,2,4] = reshape[shape=[B,S,2,4]](%x)
  %2: i64[S] = arange[end=S]()
  %3: f32[B,S-1,8] = slice[axes=[1], ends=[S], starts=[1]](%x)
  %4: f32[B,S,8] = expand[shape=[B,S,8]](%y)
  %5: f32[B,S] = full[shape=[B,S], value=2.0]()
  %6: f32[B,2*S-1,8] = concat[axis=1](%3, %4)
  %7: i64[3] = dim_values[values=[B,S,2*S+1]]()
  return %0, %1, %2, %3, %4, %5, %6, %7
}
"""


def test_symbolic_dims_become_dim_params_and_run_at_two_sizes() -> None:
    g = parse(SYM_IR)
    m = to_onnx(g)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input]
    assert dims == [["B", "S", 8], [1, "S", 1]]
    assert [d.dim_param for d in m.graph.output[6].type.tensor_type.shape.dim][1] == "2*S-1"
    assert [o.name for o in m.graph.output] == list(g.output_names)
    sess = _session(m)
    for b, s in ((2, 3), (3, 6)):
        x, y = torch.randn(b, s, 8), torch.randn(1, s, 1)
        got = sess.run(None, {"x": x.numpy(), "y": y.numpy()})
        for a, e in zip(got, run(g, x, y)):
            assert_close(torch.from_numpy(a), e)


def test_symbol_bound_only_through_a_compound_dim() -> None:
    g = parse("""
graph @c(%x: f32[2*S+1]) -> (i64[S]) {
  %0: i64[S] = arange[end=S]()
  return %0
}
""")
    sess = _session(to_onnx(g))
    for s in (2, 5):
        assert sess.run(None, {"x": np.zeros(2 * s + 1, np.float32)})[0].tolist() == list(range(s))


def test_unbound_symbol_is_an_error_naming_the_node() -> None:
    g = parse("graph @u(%x: f32[3]) -> (f32[N]) {\n  %0: f32[N] = full[shape=[N], value=1.0]()\n  return %0\n}\n")
    with pytest.raises(ExportError, match="full.*N"):
        to_onnx(g)


# ---- opsets and errors --------------------------------------------------------------------------

def test_ops_and_types_beyond_the_opset_raise_naming_the_node() -> None:
    g, _ = unit("dequantize", C(torch.randint(-8, 8, (4, 8)), "i4"), torch.rand(4), axis=0)()
    with pytest.raises(ExportError, match=r"dequantize.*opset >= 21"):
        to_onnx(g, opset=19)
    g, _ = unit("bitwise_and", "i32[3]", "i32[3]")()
    with pytest.raises(ExportError, match=r"bitwise_and.*opset >= 18"):
        to_onnx(g, opset=17)
    with pytest.raises(ScalefoldError, match="opset 16"):
        to_onnx(g, opset=16)


def test_4bit_weights_packed_for_matmulnbits_need_no_int4_type() -> None:
    g, feeds = _ql("f32[3,64]", _codes(16, 64, "i4"), torch.rand(16, 2) * 0.1, group=32)()
    check(g, feeds, opset=17)
    g, feeds = unit("quantize", "f32[4,8]", torch.tensor(0.1), dtype="i4",
                    then=[("cast", ["%0"], {"to": "i8"})])()
    with pytest.raises(ExportError, match=r"quantize.*i4.*opset >= 21"):
        to_onnx(g, opset=19)


def test_f4_values_at_the_graph_boundary_need_opset_23() -> None:
    g = parse("graph @f(%x: f4e2m1[4]) -> (f32[4], f4e2m1[4]) {\n"
              "  %0: f32[4] = cast[from_dtype=\"f4e2m1\", to=\"f32\"](%x)\n"
              "  %1: f4e2m1[4] = cast[to=\"f4e2m1\"](%0)\n  return %0, %1\n}\n")
    with pytest.raises(ExportError, match="f4e2m1.*opset >= 23"):
        to_onnx(g)
    m = to_onnx(g, opset=23)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT4E2M1
    assert m.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT4E2M1


def test_outputs_that_are_inputs_constants_or_repeated() -> None:
    g = Graph("o")
    x = g.add_input("f32[3]", "x")
    y = g.add("relu", [x])
    g.set_outputs([y, x, y, g.add_const(torch.arange(3.0), name="k")], ["a", "x", "b", "c"])
    m = to_onnx(g)
    assert [o.name for o in m.graph.output] == ["a", "x", "b", "c"]
    xv = torch.tensor([-1.0, 2.0, -3.0])
    a, xo, b, c = _session(m).run(None, {"x": xv.numpy()})
    assert a.tolist() == b.tolist() == [0.0, 2.0, 0.0] and xo.tolist() == xv.tolist()
    assert c.tolist() == [0.0, 1.0, 2.0]


def test_constants_keep_valid_unique_names() -> None:
    g = Graph("n")
    x = g.add_input("f32[2,3]", "x")
    y = g.add("add", [x, g.add_const(torch.ones(3), name="bias")])
    y = g.add("mul", [y, g.add_const(torch.ones(3), name="x")])       # clashes with the input
    y = g.add("sub", [y, g.add_const(torch.ones(3), name="bad name")])
    g.set_outputs([y], ["y"])
    names = [i.name for i in to_onnx(g).graph.initializer]
    assert names[:3] == ["bias", "c0", "c1"]


# ---- writing -------------------------------------------------------------------------------------

def _small_graph() -> Graph:
    # a weight over EXTERNAL_MIN_BYTES, so that external data has a sidecar to write
    g, _ = unit("linear", "f32[3,6]", torch.randn(64, 6), torch.randn(64))()
    return g


def test_atomic_write_success_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = _small_graph()
    out = tmp_path / "m.onnx"
    to_onnx(g, out)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    x = torch.randn(3, 6)
    assert_close(torch.from_numpy(_session(str(out)).run(None, {"x0": x.numpy()})[0]), run(g, x)[0])
    before = out.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("checker says no")
    monkeypatch.setattr(onnx.checker, "check_model", boom)
    with pytest.raises(ExportError, match="checker says no"):
        to_onnx(g, out)                                           # existing file untouched
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["m.onnx"]
    fresh = tmp_path / "new.onnx"
    with pytest.raises(ExportError):
        to_onnx(g, fresh, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]             # no file, no sidecar, no temp


def test_unwritable_paths_raise_export_error_naming_the_path(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad output path is an ExportError (a ScalefoldError) naming the requested path and the
    reason, never a raw OSError about scalefold's hidden temporary folder; nothing is left."""
    g = _small_graph()
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_bytes(b"keep")
    listing = sorted(os.listdir(tmp_path))
    cases = [(tmp_path / "no_such_dir" / "m.onnx", "does not exist"),
             (tmp_path / "adir", "it is an existing directory"),
             (tmp_path / "afile" / "m.onnx", "is not a directory")]
    for out, reason in cases:
        for external in (False, True):
            with pytest.raises(ExportError) as ei:
                to_onnx(g, out, external_data=external)
            msg = str(ei.value)
            assert isinstance(ei.value, ScalefoldError)
            assert f"cannot write {out}" in msg and reason in msg and ".tmp" not in msg, msg
    assert sorted(os.listdir(tmp_path)) == listing and os.listdir(tmp_path / "adir") == []
    assert (tmp_path / "afile").read_bytes() == b"keep"

    # An unwritable folder (simulated: tests may run as root) and a failure while moving the
    # checked file into place (a full disk, a read-only mount) read the same way.
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".m.onnx.x.tmp"))
    with monkeypatch.context() as mp:
        mp.setattr(tempfile, "mkdtemp", denied)
        with pytest.raises(ExportError, match=r"cannot write .*m\.onnx: Permission denied$"):
            to_onnx(g, tmp_path / "m.onnx")
    real_replace = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device", src)
    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", full)
        with pytest.raises(ExportError) as ei:
            to_onnx(g, tmp_path / "m.onnx")
    assert os.replace is real_replace
    assert str(ei.value) == f"ONNX export: cannot write {tmp_path / 'm.onnx'}: No space left on device"
    assert sorted(os.listdir(tmp_path)) == listing                # no file, no temp folder


def test_long_and_nul_file_names(tmp_path: Path) -> None:
    """A legal 250-byte file name is written (the temporary folder's name, derived from it, was
    too long for the file system); a NUL byte in the path is an ExportError, not a raw
    ValueError; nothing is left behind."""
    g = _small_graph()
    long = tmp_path / ("a" * 245 + ".onnx")
    to_onnx(g, long)
    assert sorted(os.listdir(tmp_path)) == [long.name]
    x = torch.randn(3, 6)
    assert_close(torch.from_numpy(_session(str(long)).run(None, {"x0": x.numpy()})[0]), run(g, x)[0])
    with pytest.raises(ExportError, match="NUL byte"):
        to_onnx(g, str(tmp_path / "m\0.onnx"))
    assert sorted(os.listdir(tmp_path)) == [long.name]


def test_large_models_switch_to_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import scalefold.codegen.onnx as onnx_export
    monkeypatch.setattr(onnx_export, "EXTERNAL_THRESHOLD", 64)   # stands in for 2 GB
    g = _small_graph()
    to_onnx(g, tmp_path / "big.onnx")
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    x = torch.randn(3, 6)
    got = _session(str(tmp_path / "big.onnx")).run(None, {"x0": x.numpy()})[0]
    assert_close(torch.from_numpy(got), run(g, x)[0])
    to_onnx(g)                                                   # no path: checked from a temp copy
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]


def test_external_data_sidecar(tmp_path: Path) -> None:
    g = _small_graph()
    out = tmp_path / "ext.onnx"
    to_onnx(g, out, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data"]
    m = onnx.load(str(out), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {"ext.onnx.data"}
    x = torch.randn(3, 6)
    assert_close(torch.from_numpy(_session(str(out)).run(None, {"x0": x.numpy()})[0]), run(g, x)[0])


# ---- model graphs of tests/runtime/test_interp_models.py ----------------------------------------

def _models_module():
    path = Path(__file__).resolve().parents[1] / "runtime" / "test_interp_models.py"
    spec = importlib.util.spec_from_file_location("_interp_models_for_onnx", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _params(text: str) -> dict[str, torch.Tensor]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#") and "param" in line:
            name, rest = line[1:].split(" = const ")
            shape = rest.split("[", 1)[1].split("]", 1)[0]
            out[name] = torch.randn([int(s) for s in shape.split(",")]) * 0.3
    return out


def _model_graphs():
    mod = _models_module()
    block_consts = dict(ln1_w=(32,), ln1_b=(32,), wq=(32, 32), bq=(32,), wk=(32, 32), bk=(32,), wv=(32, 32),
                        bv=(32,), wo=(32, 32), bo=(32,), ln2_w=(32,), ln2_b=(32,), w1=(64, 32), b1=(64,),
                        w2=(32, 64), b2=(32,))
    block = mod.BLOCK_IR + "".join(f"#{k} = const f32[{','.join(map(str, s))}] param\n"
                                   for k, s in block_consts.items())
    e, h, f = 4, 16, 24
    prim = mod._moe_primitive_ir(e, h, f) + "".join(
        f"#{k} = const f32[{','.join(map(str, s))}] param\n"
        for k, s in [("router", (e, h))] + [(f"{w}{i}", (f, h) if w != "wd" else (h, f))
                                            for i in range(e) for w in ("wg", "wu", "wd")])
    fused = f"""
graph @moe(%x: f32[B,S,{h}]) -> (f32[B,S,{h}]) {{
  %0: f32[B,S,{h}] = moe[top_k=2](%x, #router, #wg, #wu, #wd)
  return %0
}}
#router = const f32[{e},{h}] param
#wg = const f32[{e},{f},{h}] param
#wu = const f32[{e},{f},{h}] param
#wd = const f32[{e},{h},{f}] param
"""
    return {"mlp": mod.MLP_IR, "block": block, "conv_bn_relu": mod.CONV_IR, "moe_primitive": prim,
            "moe_op": fused}


@pytest.mark.parametrize("name,opset", [("mlp", 21), ("mlp", 17), ("block", 21), ("block", 17),
                                        ("block", 23), ("conv_bn_relu", 21), ("moe_primitive", 21),
                                        ("moe_op", 21), ("moe_op", 17)])
def test_model_graphs_match_in_onnxruntime(name: str, opset: int) -> None:
    text = _model_graphs()[name]
    consts = _params(text)
    if name == "conv_bn_relu":
        consts["var"] = consts["var"].abs() + 0.5
    g = parse(text, constants=consts)
    sess = _session(to_onnx(g, opset=opset))
    for b, s in ((2, 5), (3, 9)):
        if name == "block":
            x = torch.randn(b, s, 32)
            lengths = torch.randint(1, s + 1, (b,))
            mask = (torch.arange(s)[None, :] < lengths[:, None])[:, None, None, :]
            feeds = [x, mask]
        elif name == "conv_bn_relu":
            feeds = [torch.randn(b, 3, 15, 15)]
        elif name == "mlp":
            feeds = [torch.randn(b * s, 24)]
        else:
            feeds = [torch.randn(b, s, 16)]
        got = sess.run(None, {v.name: t.numpy() for v, t in zip(g.inputs, feeds)})[0]
        assert_close(torch.from_numpy(got), run(g, *feeds)[0], rtol=1e-5, atol=1e-5)


def test_external_data_keeps_small_tensors_inline(tmp_path: Path) -> None:
    """Reshape's shape (and other small constants) stay in the model file: onnx's checker and
    shape inference cannot read them from a sidecar (they failed every transformer export)."""
    from scalefold.ir import parse
    g = parse("""
graph @m(%x: f32[2,64]) -> (f32[4,32]) {
  %0: f32[2,64] = linear(%x, #w, #b)
  %1: f32[4,32] = reshape[shape=[4, 32]](%0)
  return %1
}
#w = const f32[64,64] randn(seed=0, std=0.1)
#b = const f32[64] zeros
""")
    out = tmp_path / "ext.onnx"
    to_onnx(g, out, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data"]
    m = onnx.load(str(out), load_external_data=False)
    ext = {t.name for t in m.graph.initializer if t.external_data}
    assert ext and all(onnx.numpy_helper.to_array(t).nbytes >= 1024 - 33 for t in
                       onnx.load(str(out)).graph.initializer if t.name in ext)
    assert any(not t.external_data for t in m.graph.initializer)
    x = torch.randn(2, 64)
    assert_close(torch.from_numpy(_session(str(out)).run(None, {m.graph.input[0].name: x.numpy()})[0]), run(g, x)[0])
    # a graph with only small constants writes no sidecar
    small = tmp_path / "small"
    small.mkdir()
    g2, _ = unit("linear", "f32[3,6]", torch.randn(5, 6), torch.randn(5))()
    to_onnx(g2, small / "s.onnx", external_data=True)
    assert sorted(os.listdir(small)) == ["s.onnx"]


def test_to_onnx_takes_a_compiled_model_and_refuses_bad_arguments(tmp_path: Path) -> None:
    import scalefold as sf
    g = _small_graph()
    cm = sf.compile(g, target="interp")
    m = to_onnx(cm, tmp_path / "cm.onnx")
    assert len(m.graph.node) == len(to_onnx(g).graph.node)
    for bad, msg in (("model.onnx", "expected a scalefold Graph"),):
        with pytest.raises(ExportError, match=msg):
            to_onnx(bad)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="opset must be an int"):
        to_onnx(g, opset="21")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="path must be"):
        to_onnx(g, bytes(tmp_path / "b.onnx"))  # type: ignore[arg-type]
    assert sorted(os.listdir(tmp_path)) == ["cm.onnx"]


def test_one_output_listed_twice_under_one_name() -> None:
    # an ONNX model with outputs [y, y] imports with output names ['y', 'y']; exporting it
    # again was refused as a repeated name
    g = Graph("o")
    x = g.add_input("f32[3]", "x")
    y = g.add("relu", [x])
    g.set_outputs([y, y], ["y", "y"])
    m = to_onnx(g)
    assert [o.name for o in m.graph.output] == ["y", "y"]
    a, b = _session(m).run(None, {"x": np.array([-1.0, 2.0, -3.0], np.float32)})
    assert a.tolist() == b.tolist() == [0.0, 2.0, 0.0]
    z = g.add("neg", [x])
    g.set_outputs([y, z], ["y", "y"])
    with pytest.raises(ExportError, match="repeats an input or output name"):
        to_onnx(g)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
def test_ceil_mode_pool_whose_last_window_starts_in_the_padding(op: str) -> None:
    # the IR (as torch and onnxruntime) drops a window that would start in the end padding;
    # onnx's shape inference keeps it (4 against 3) and rejected the exported file
    extra = {"count_include_pad": True} if op == "avg_pool" else {}
    g, feeds = unit(op, "f32[1,2,5,5]", kernel=[2], stride=[2], padding=[1], ceil_mode=True, **extra)()
    assert tuple(g.outputs[0].shape) == (1, 2, 3, 3)
    check(g, feeds, opset=19)
    for shape, k in (("f32[1,2,6,6]", 2), ("f32[1,2,8,7]", 3)):   # ceil windows that stay
        g, feeds = unit(op, shape, kernel=[k], stride=[2], padding=[1], ceil_mode=True, **extra)()
        check(g, feeds, opset=19)
