"""Library kernels: torch's own implementations of dense GEMM, attention and friends.

Each entry runs one IR node on torch tensors, writing into ``out`` when the op supports it
(returns the output tensor either way). Semantics are exactly the IR op's; anything outside
the fast paths falls back to the op's reference implementation. On CPU, f32 linear runs on
oneDNN (with activation and residual post-ops); on CUDA, float linear/matmul run on cuBLAS
(addmm / matmul) and attention on ``F.scaled_dot_product_attention``, for f32, f16 and bf16.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..ir.graph import Node
from ..ir.ops import get_op
from .library_conv import conv_fn, split_activation, with_reference

Tensor = torch.Tensor
LibFn = Callable[[Sequence[Tensor | None], Tensor | None], Tensor]


_ONEDNN: bool | None = None


def _onednn_linear() -> bool:
    """Whether torch's oneDNN linear (``mkldnn._linear_pointwise``) is usable here. On this
    project's CPUs it runs f32 GEMM about 2x faster than the BLAS behind ``addmm``, and it
    applies activations and residual adds as post-ops."""
    global _ONEDNN
    if _ONEDNN is None:
        try:
            x, w = torch.ones(2, 3), torch.ones(4, 3)
            y = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
            _ONEDNN = bool(torch.backends.mkldnn.is_available()) and bool((y == 3).all())
        except Exception:  # noqa: BLE001  (any failure means: not available)
            _ONEDNN = False
    return _ONEDNN


def _linear(node: Node, epi: Node | None) -> LibFn | None:
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    n_in = len(node.inputs)  # an omitted bias still holds its (None) place in xs
    if node.inputs[1] is not None and node.inputs[1].shape[-1] == 0:
        return None   # K = 0: oneDNN builds no primitive for it; the reference gives the bias
    if _onednn_linear():
        lin = torch.ops.mkldnn._linear_pointwise
        if epi is not None and epi.op == "add":
            def run_add(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
                x, w, b, other = xs[0], xs[1], xs[2] if has_bias else None, xs[n_in]
                return lin.binary(x.contiguous(), other.contiguous(), w.contiguous(), b, "add")
            return run_add
        post = split_activation(epi)
        if post is not None:
            (name, scalars, algo), after = post

            def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
                # oneDNN wants dense operands (a weight computed at run time may be a view)
                y = lin(xs[0].contiguous(), xs[1].contiguous(), xs[2] if has_bias else None,
                        name, scalars, algo)
                return after(y) if after is not None else y
            return run
    if epi is not None:
        return None

    return _blas_linear(node)


def _matmul(node: Node) -> LibFn:
    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        if out is None:
            return torch.matmul(xs[0], xs[1])
        return torch.matmul(xs[0], xs[1], out=out)
    return run


_ZERO_ROWS: dict[str, bool] = {}


def _torch_zeroes_masked_rows(device: str = "cpu") -> bool:
    """Whether this torch's sdpa returns zeros for a query row whose keys are all masked, as
    the IR op defines it (torch >= 2.5 does; older ones give NaN). Probed once per device."""
    if device not in _ZERO_ROWS:
        q = torch.ones(1, 1, 2, 4, device=device)
        m = torch.tensor([[True, True], [False, False]], device=device).view(1, 1, 2, 2)
        y = F.scaled_dot_product_attention(q, q, q, attn_mask=m)
        _ZERO_ROWS[device] = bool((y[0, 0, 1] == 0).all())
    return _ZERO_ROWS[device]


def _sdpa(node: Node) -> LibFn:
    a = node.attrs
    ref = get_op("sdpa").reference

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        q, k, v = xs[0], xs[1], xs[2]
        mask = xs[3] if len(xs) > 3 else None
        if a["causal"] and mask is not None:
            return ref(xs, a)  # torch refuses both at once; the reference combines them
        if mask is not None and mask.dtype == torch.bool and not _torch_zeroes_masked_rows(q.device.type):
            # A row with no key to attend to is defined as zeros by the IR op.
            if not bool(mask.any(dim=-1).all()):
                return ref(xs, a)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=a["causal"],
                                              scale=a["scale"], enable_gqa=a["gqa"])
    return run


def _blas_linear(node: Node) -> LibFn:
    """addmm / mm (BLAS on CPU, cuBLAS on CUDA), written into the planned buffer."""
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        x, w = xs[0], xs[1]
        assert x is not None and w is not None
        x2 = x.reshape(-1, x.shape[-1])
        if out is None:
            out = torch.empty(*x.shape[:-1], w.shape[0], dtype=x.dtype, device=x.device)
        o2 = out.view(-1, w.shape[0])
        if has_bias:
            torch.addmm(xs[2], x2, w.t(), out=o2)
        else:
            torch.mm(x2, w.t(), out=o2)
        return out
    return run


def qlinear_fallback(node: Node, device: torch.device) -> LibFn | None:
    """A fast stand-in for the reference of a ``qlinear`` no generated kernel takes (group-wise
    int8, fp8, per-channel fp4, f16 x on the CPU, ...): its constant weights are dequantised
    once, here, to a float32 matrix on ``device`` (the IR's own ``dequant_weight``, bit for bit),
    and every call is a float32 GEMM (oneDNN on the CPU) of x — or of x's per-token codes times
    their scales for ``act="per_token"`` — rounded once to the output type (a float64 GEMM on a
    float64 copy where codes times weights could overflow float32, weights near 1e33 and up). Against the
    reference (float64 accumulation) only the summation's rounding differs. It costs a float32
    copy of the weights in memory; the graph and saved artifacts keep the compressed codes.
    None when the weights are not constants, x is an integer code tensor or f64, or the
    activation mode is per_tensor."""
    from ..ir.ops.quant import dequant_weight, dynamic_quant
    ins = list(node.inputs) + [None] * (5 - len(node.inputs))
    x, w, scale, zero, bias = ins
    act = node.attrs["act"]
    if act not in ("none", "per_token") or x is None or x.dtype.name not in ("f32", "f16", "bf16"):
        return None
    if not all(v is None or v.is_const for v in (w, scale, zero, bias)) or w is None or scale is None:
        return None
    wd = dequant_weight(w.const, scale.const, zero.const if zero is not None else None, node.attrs["group"],
                        node.attrs["wtype"] == "f4e2m1").to(torch.float32).to(device).contiguous()
    b = bias.const.to(torch.float32).to(device) if bias is not None else None
    abits = node.attrs["abits"]
    onednn = device.type == "cpu" and _onednn_linear()
    # codes times weights this large could overflow the float32 sums before sx scales them
    # down (the reference's float64 ones stay finite): such nodes multiply in float64
    wide = act == "per_token" and wd.numel() > 0 and \
        float(wd.abs().max()) * 2.0 ** (abits - 1) * wd.shape[1] >= 1e37
    wd64 = wd.to(torch.float64) if wide else None

    def gemm(a: Tensor) -> Tensor:
        if onednn:
            return torch.ops.mkldnn._linear_pointwise(a.contiguous(), wd, None, "none", [], "")
        return F.linear(a, wd)

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        xin = xs[0]
        assert xin is not None
        lead = xin.shape[:-1]
        a = xin.reshape(-1, xin.shape[-1]).to(torch.float32)
        if act == "per_token" and wide:
            q, sx = dynamic_quant(a, "per_token", abits)
            y = (F.linear(q.to(torch.float64), wd64) * sx.to(torch.float64)).to(torch.float32)
        elif act == "per_token":
            q, sx = dynamic_quant(a, "per_token", abits)
            y = gemm(q.to(torch.float32)) * sx.to(torch.float32)
        else:
            y = gemm(a)
        if b is not None:
            y = y + b
        return y.reshape(*lead, wd.shape[0]).to(xin.dtype)
    return run


def library_fn(nodes: Sequence[Node], device: str = "cpu") -> tuple[LibFn, bool]:
    """The torch implementation of a library kernel (one op, optionally with an elementwise
    epilogue: one node, or for a convolution an ``add`` then an activation) for tensors on
    ``device`` ("cpu" or "cuda"), and whether it writes into a given ``out``. It reads the
    kernel's inputs in node order: the op's inputs, then the epilogue's other operand if any."""
    node = nodes[0]
    epi = nodes[1] if len(nodes) > 1 else None
    if device == "cuda" and epi is None:
        floats = {node.inputs[0].dtype.name} <= {"f32", "f16", "bf16"} and all(
            v is None or v.dtype == node.inputs[0].dtype for v in node.inputs[:3])
        if floats and node.op == "linear":
            return _blas_linear(node), True
        if floats and node.op in ("matmul", "sdpa"):
            return {"matmul": _matmul, "sdpa": _sdpa}[node.op](node), node.op == "matmul"
    f32 = device == "cpu" and all(v is None or v.dtype.name == "f32" for v in node.inputs[:3])
    fn: LibFn | None = None
    if f32:
        if node.op == "linear":
            fn = _linear(node, epi)
        elif epi is None and node.op in ("matmul", "sdpa"):
            fn = {"matmul": _matmul, "sdpa": _sdpa}[node.op](node)
    if fn is not None:
        return fn, node.op == "matmul" or (node.op == "linear" and not _onednn_linear())
    # Reference path: the op's reference, then each epilogue node's.
    refs = [(get_op(m.op).reference, m.attrs) for m in nodes]
    n_main = len(node.inputs)

    def run(xs: Sequence[Tensor | None], out: Tensor | None) -> Tensor:
        y = refs[0][0](list(xs[:n_main]), refs[0][1])
        extra = list(xs[n_main:])
        for prev, m, (ref, attrs) in zip(nodes, nodes[1:], refs[1:]):
            args = [y if v is prev.outputs[0] else extra.pop(0) for v in m.inputs]
            y = ref(args, attrs)
        return y
    if device == "cpu" and node.op == "conv":
        conv = conv_fn(node, list(nodes[1:]))
        if conv is not None:
            return with_reference(conv, run), False
    return run, False
