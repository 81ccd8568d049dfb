"""Neural-network ops: matmul, linear, convolution and pooling (family "nn").

Normalisation and softmax live in ``norm.py``, attention in ``attention.py``. Float ops
accept the compute floats f64/f32/f16/bf16; quantised and sub-byte types go through the
quant family instead. Reference implementations compute half types in f32 and round once at
the end, like a kernel that accumulates in f32.
"""
from __future__ import annotations

from typing import Sequence

import sympy
import torch
import torch.nn.functional as F

from ..errors import ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, canon_dim, dim_str
from .common import broadcast_shapes, check_dim, prod, require, same_dtype
from .registry import AttrSpec, Cost, defop, io_bytes, numel

COMPUTE_FLOATS = ("f64", "f32", "f16", "bf16")
_HALF = (torch.float16, torch.bfloat16)


def require_compute_float(t: TensorType, what: str, also: Sequence[str] = ()) -> None:
    """Raise ShapeError unless ``t`` is f64/f32/f16/bf16 (or one of ``also``)."""
    if t.dtype.name not in COMPUTE_FLOATS and t.dtype.name not in also:
        allowed = ", ".join(COMPUTE_FLOATS + tuple(also))
        raise ShapeError(f"{what} must be one of {allowed}, got {t.dtype.name}")


def upcast(t: torch.Tensor | None) -> torch.Tensor | None:
    """f16/bf16 tensors as f32 (the reference computes them in f32); others unchanged."""
    return t.float() if t is not None and t.dtype in _HALF else t


def opt(ins: Sequence, i: int):
    """The ``i``-th input, or None when it is omitted or past the end."""
    return ins[i] if len(ins) > i else None


def _check_vec(t: TensorType | None, n: Dim, what: str) -> None:
    if t is None:
        return
    if t.rank != 1:
        raise ShapeError(f"{what} must be 1-D [{dim_str(n)}], got {t}")
    check_dim(t.shape[0], n, f"{what} length")


# ---- matmul / linear ----------------------------------------------------------------------

def _matmul_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    a, b = require(ins[0], "a"), require(ins[1], "b")
    require_compute_float(a, "a", also=("i32", "i64"))
    same_dtype([a, b])
    if a.rank == 0 or b.rank == 0:
        raise ShapeError(f"matmul operands must have rank >= 1, got {a} and {b}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.rank == 1 else b.shape[-2]
    check_dim(ka, kb, "contraction dims of a and b differ")
    if a.rank == 1 and b.rank == 1:
        out: tuple[Dim, ...] = ()
    elif a.rank == 1:
        out = b.shape[:-2] + (b.shape[-1],)
    elif b.rank == 1:
        out = a.shape[:-1]
    else:
        out = broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    return [TensorType(a.dtype, out)]


def _matmul_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    a, b = xs[0], xs[1]
    return torch.matmul(upcast(a), upcast(b)).to(a.dtype)


def _matmul_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    k = sympy.sympify(ins[0].shape[-1])
    return Cost(2 * numel(outs[0]) * k, io_bytes(ins, outs))


defop("matmul", family="nn", inputs=2, input_names=("a", "b"), shape=_matmul_shape,
      reference=_matmul_ref, cost=_matmul_cost,
      doc="Matrix product with torch.matmul semantics. Both 1-D: dot product (a 0-d result); "
          "a 1-D [K]: treated as [1,K] and the 1 dropped, giving b's batch dims + [N]; b 1-D "
          "[K]: treated as [K,1] and the 1 dropped, giving a's dims without K; otherwise "
          "a [..., M, K] @ b [..., K, N] -> [broadcast(...), M, N] with numpy broadcasting of the "
          "batch dims. Operands share one dtype (f64/f32/f16/bf16/i32/i64); the output has it too. "
          "Flops = 2 * numel(out) * K.")


def _linear_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, w, b = require(ins[0], "x"), require(ins[1], "w"), opt(ins, 2)
    require_compute_float(x, "x")
    same_dtype([x, w, b])
    if x.rank < 1:
        raise ShapeError(f"x must have rank >= 1, got {x}")
    if w.rank != 2:
        raise ShapeError(f"w must be 2-D [N, K], got {w}")
    check_dim(x.shape[-1], w.shape[1], "K of x [..., K] and w [N, K] differ")
    _check_vec(b, w.shape[0], "bias")
    return [TensorType(x.dtype, x.shape[:-1] + (w.shape[0],))]


def _linear_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, b = xs[0], xs[1], opt(xs, 2)
    return F.linear(upcast(x), upcast(w), upcast(b)).to(x.dtype)


def _linear_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    n = numel(outs[0])
    flops = 2 * n * sympy.sympify(ins[1].shape[1])
    if opt(ins, 2) is not None:
        flops += n
    return Cost(flops, io_bytes(ins, outs))


defop("linear", family="nn", inputs=(2, 3), input_names=("x", "w", "bias"), shape=_linear_shape,
      reference=_linear_ref, cost=_linear_cost,
      doc="Fully connected layer y = x @ w^T + bias with x [..., K], w [N, K] (torch/ONNX Gemm "
          "layout, output features first) and optional bias [N]; output [..., N]. All operands "
          "share one float dtype (f64/f32/f16/bf16). Flops = 2 * numel(out) * K, plus numel(out) "
          "for the bias add when bias is given.")


# ---- sliding windows (conv and pools) --------------------------------------------------------

def spatial_param(attrs: Attrs, name: str, n: int, default: int) -> tuple[int, ...]:
    """A per-spatial-dim attribute: empty = ``default`` everywhere, one value = that value
    everywhere, ``n`` values = one per dim; each value must be >= 1."""
    v = tuple(attrs.get(name) or ())
    if not v:
        v = (default,) * n
    elif len(v) == 1:
        v = v * n
    elif len(v) != n:
        raise ShapeError(f"{name} needs 1 or {n} values for {n} spatial dims, got {len(v)}")
    if any(p < 1 for p in v):
        raise ShapeError(f"{name} values must be >= 1, got {v}")
    return v


def pads(attrs: Attrs, n: int) -> tuple[tuple[int, int], ...]:
    """(begin, end) padding per spatial dim. ``padding`` is empty (no padding), one value (all
    sides), ``n`` values (symmetric per dim) or ``2n`` values in ONNX order
    [d1_begin, d2_begin, ..., d1_end, d2_end, ...]."""
    v = tuple(attrs.get("padding") or ())
    if not v:
        out = ((0, 0),) * n
    elif len(v) == 1:
        out = ((v[0], v[0]),) * n
    elif len(v) == n:
        out = tuple((p, p) for p in v)
    elif len(v) == 2 * n:
        out = tuple((v[i], v[n + i]) for i in range(n))
    else:
        raise ShapeError(f"padding needs 1, {n} or {2 * n} values for {n} spatial dims, got {len(v)}")
    if any(p < 0 for pr in out for p in pr):
        raise ShapeError(f"padding must be non-negative, got {v}")
    return out


def window_out(length: Dim, pb: int, pe: int, k: Dim, s: int, d: int, ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window: floor((L + pb + pe - d*(k-1) - 1) / s) + 1.

    With ``ceil_mode`` the division rounds up, but a window may not start past the input plus
    the begin padding (torch/ONNX rule), hence the Min with floor((L + pb - 1) / s) + 1. So in
    ceil mode a window longer than the padded input still gives one output (torch pools a 1x1
    image with a 2x2 window, stride 2) while the rounded-up count is at least 1.
    """
    span = d * (k - 1) + 1
    if isinstance(length, int) and isinstance(span, int):
        x = length + pb + pe - span
        if x < 0 and (not ceil_mode or -(-x // s) + 1 < 1 or length + pb < 1):
            raise ShapeError(f"window of extent {span} does not fit input length {length} "
                             f"padded by ({pb}, {pe})")
        if not ceil_mode:
            return x // s + 1
        return min(-(-x // s) + 1, (length + pb - 1) // s + 1)
    x = sympy.sympify(length) + pb + pe - span
    if not ceil_mode:
        return canon_dim(sympy.floor(x / s) + 1)
    out = sympy.ceiling(x / s) + 1
    # ceil((X)/s)*s < X + s, so the last window provably starts inside when s <= span - pe.
    if not (isinstance(span, int) and s <= span - pe):
        out = sympy.Min(out, sympy.floor((sympy.sympify(length) + pb - 1) / s) + 1)
    return canon_dim(out)


def torch_pad_spec(pd: Sequence[tuple[int, int]]) -> list[int]:
    """(begin, end) pairs per spatial dim in F.pad's order (last dim first)."""
    spec: list[int] = []
    for pb, pe in reversed(pd):
        spec += [pb, pe]
    return spec


def _spatial_rank(x: TensorType, what: str = "x") -> int:
    if not 3 <= x.rank <= 5:
        raise ShapeError(f"{what} must be [N, C, *spatial] with 1 to 3 spatial dims, got {x}")
    return x.rank - 2


# ---- convolution -----------------------------------------------------------------------------

_CONV_ATTRS = {
    "stride": AttrSpec("ints", (), doc="per spatial dim; empty = 1"),
    "padding": AttrSpec("ints", (), doc="empty, 1, n (symmetric) or 2n (ONNX begins then ends)"),
    "dilation": AttrSpec("ints", (), doc="per spatial dim; empty = 1"),
    "groups": AttrSpec("int", 1),
}


def _conv_common(ins: Sequence[TensorType | None], attrs: Attrs, transposed: bool
                 ) -> tuple[TensorType, TensorType, int, Dim, Dim]:
    """Checks shared by conv and conv_transpose; returns x, w, n spatial, Cin, Cout."""
    x, w, b = require(ins[0], "x"), require(ins[1], "w"), opt(ins, 2)
    n = _spatial_rank(x)
    require_compute_float(x, "x")
    same_dtype([x, w, b])
    if w.rank != x.rank:
        raise ShapeError(f"w must have rank {x.rank} like x {x}, got {w}")
    g = attrs["groups"]
    if g < 1:
        raise ShapeError(f"groups must be >= 1, got {g}")
    c = x.shape[1]
    if isinstance(c, int) and c % g:
        raise ShapeError(f"input channels {c} are not divisible by groups {g}")
    # w is [Cout, Cin/g, *k] for conv and [Cin, Cout/g, *k] for conv_transpose.
    if transposed:
        cin, cout = w.shape[0], w.shape[1] * g
    else:
        cin, cout = w.shape[1] * g, w.shape[0]
    if isinstance(cout, int) and cout % g:
        raise ShapeError(f"output channels {cout} are not divisible by groups {g}")
    check_dim(c, cin, f"input channels of x {x} and w {w} (groups={g}) differ")
    _check_vec(b, cout, "bias")
    return x, w, n, cin, cout


def _conv_params(attrs: Attrs, n: int):
    """stride, dilation and (begin, end) padding per spatial dim."""
    return spatial_param(attrs, "stride", n, 1), spatial_param(attrs, "dilation", n, 1), pads(attrs, n)


def _conv_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, w, n, _, cout = _conv_common(ins, attrs, transposed=False)
    st, dl, pd = _conv_params(attrs, n)
    sp = [window_out(x.shape[2 + i], *pd[i], w.shape[2 + i], st[i], dl[i]) for i in range(n)]
    return [TensorType(x.dtype, (x.shape[0], cout, *sp))]


_CONV_FNS = (F.conv1d, F.conv2d, F.conv3d)
_CONVT_FNS = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


def _conv_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, b = upcast(xs[0]), upcast(xs[1]), upcast(opt(xs, 2))
    n = x.dim() - 2
    st, dl, pd = _conv_params(attrs, n)
    if all(p == q for p, q in pd):
        padding = [p for p, _ in pd]
    else:  # torch convs only pad symmetrically
        x, padding = F.pad(x, torch_pad_spec(pd)), [0] * n
    return _CONV_FNS[n - 1](x, w, b, st, padding, dl, attrs["groups"]).to(xs[0].dtype)


def _conv_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    w = ins[1]
    per_out = sympy.sympify(prod(w.shape[1:]))  # Cin/groups * prod(kernel)
    flops = 2 * numel(outs[0]) * per_out + (numel(outs[0]) if opt(ins, 2) is not None else 0)
    return Cost(flops, io_bytes(ins, outs))


defop("conv", family="nn", inputs=(2, 3), input_names=("x", "w", "bias"), attrs=_CONV_ATTRS,
      shape=_conv_shape, reference=_conv_ref, cost=_conv_cost,
      doc="N-d convolution (cross-correlation, torch/ONNX Conv) chosen by the rank of x: "
          "x [N, C, *spatial] with 1, 2 or 3 spatial dims, w [Cout, C/groups, *kernel], optional "
          "bias [Cout]; output [N, Cout, *out] with out_i = floor((L_i + pb_i + pe_i - "
          "dilation_i*(k_i-1) - 1) / stride_i) + 1. stride and dilation: empty (all 1), one value "
          "or one per spatial dim. padding: empty (none), one value (all sides), one per spatial "
          "dim (symmetric) or 2*n values in ONNX order [d1_begin, d2_begin, ..., d1_end, d2_end, "
          "...]. groups splits C and Cout into that many independent convolutions. Float dtypes "
          "(f64/f32/f16/bf16), all operands the same.")


def _convt_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, w, n, _, cout = _conv_common(ins, attrs, transposed=True)
    st, dl, pd = _conv_params(attrs, n)
    op = tuple(attrs["output_padding"] or ()) or (0,) * n
    if len(op) != n:
        raise ShapeError(f"output_padding needs {n} values, got {len(op)}")
    if any(not 0 <= o < max(s, d) for o, s, d in zip(op, st, dl)):
        raise ShapeError(f"output_padding {op} must be >= 0 and below stride or dilation")
    sp = []
    for i in range(n):
        length = st[i] * (x.shape[2 + i] - 1) + op[i] + dl[i] * (w.shape[2 + i] - 1) + 1 - sum(pd[i])
        if isinstance(length, int) and length < 1:
            raise ShapeError(f"spatial dim {i} of the output would be {length}")
        sp.append(length)
    return [TensorType(x.dtype, (x.shape[0], cout, *sp))]


def _convt_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, w, b = upcast(xs[0]), upcast(xs[1]), upcast(opt(xs, 2))
    n = x.dim() - 2
    st, dl, pd = _conv_params(attrs, n)
    op = tuple(attrs["output_padding"] or ()) or (0,) * n
    full = _CONVT_FNS[n - 1](x, w, None, st, 0, 0, attrs["groups"], dl)
    # Extend by output_padding at the end, then crop the (possibly asymmetric) padding.
    full = F.pad(full, torch_pad_spec([(0, o) for o in op]))
    y = full[(slice(None), slice(None)) + tuple(slice(p, full.shape[2 + i] - q)
                                                 for i, (p, q) in enumerate(pd))]
    if b is not None:
        y = y + b.view(1, -1, *([1] * n))
    return y.to(xs[0].dtype)


def _convt_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    per_in = sympy.sympify(prod(ins[1].shape[1:]))  # Cout/groups * prod(kernel)
    flops = 2 * numel(ins[0]) * per_in + (numel(outs[0]) if opt(ins, 2) is not None else 0)
    return Cost(flops, io_bytes(ins, outs))


defop("conv_transpose", family="nn", inputs=(2, 3), input_names=("x", "w", "bias"),
      attrs={**_CONV_ATTRS, "output_padding": AttrSpec("ints", (), doc="per dim; empty = 0")},
      shape=_convt_shape, reference=_convt_ref, cost=_convt_cost,
      doc="N-d transposed convolution (ONNX ConvTranspose without auto_pad/output_shape): x "
          "[N, C, *spatial], w [C, Cout/groups, *kernel], optional bias [Cout]; output "
          "[N, Cout, *out] with out_i = stride_i*(L_i-1) + output_padding_i + dilation_i*(k_i-1) "
          "+ 1 - pb_i - pe_i. stride, dilation and padding as for conv (padding crops the full "
          "output: begins then ends in ONNX order); output_padding (each below stride or "
          "dilation) adds positions at the end that hold only the bias.")


# ---- pooling ---------------------------------------------------------------------------------

def _pool_setup(x: TensorType | torch.Size, attrs: Attrs, dilated: bool):
    n = len(x) - 2 if isinstance(x, torch.Size) else _spatial_rank(x)
    k = spatial_param(attrs, "kernel", n, 0)
    st = spatial_param(attrs, "stride", n, 1)
    dl = spatial_param(attrs, "dilation", n, 1) if dilated else (1,) * n
    return n, k, st, dl, pads(attrs, n)


def _pool_shape_fn(dilated: bool):
    def shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
        x = require(ins[0], "x")
        require_compute_float(x, "x")
        n, k, st, dl, pd = _pool_setup(x, attrs, dilated)
        sp = [window_out(x.shape[2 + i], *pd[i], k[i], st[i], dl[i], attrs["ceil_mode"])
              for i in range(n)]
        return [TensorType(x.dtype, (*x.shape[:2], *sp))]
    return shape


def pool_generic(x: torch.Tensor, k: Sequence[int], st: Sequence[int], dl: Sequence[int],
                 pd: Sequence[tuple[int, int]], ceil_mode: bool, mode: str,
                 count_include_pad: bool = False) -> torch.Tensor:
    """Max ("max") or average ("avg") pooling by explicit windows, for any padding.

    The input is padded (or cropped) to exactly the extent the output windows cover; padding
    holds -inf for max and 0 for avg. The avg divisor counts real elements, plus the explicit
    padding when ``count_include_pad`` (never the extra tail added by ``ceil_mode``).
    """
    n = len(k)
    outs = [window_out(int(x.shape[2 + i]), *pd[i], k[i], st[i], dl[i], ceil_mode) for i in range(n)]
    spans = [dl[i] * (k[i] - 1) + 1 for i in range(n)]
    rights = [(outs[i] - 1) * st[i] + spans[i] - int(x.shape[2 + i]) - pd[i][0] for i in range(n)]
    fill = float("-inf") if mode == "max" else 0.0
    win = F.pad(x, torch_pad_spec([(pd[i][0], rights[i]) for i in range(n)]), value=fill)
    for i in range(n):
        win = win.unfold(2 + i, spans[i], st[i])[..., ::dl[i]]
    red = tuple(range(-n, 0))
    if mode == "max":
        return win.amax(dim=red)
    total = win.sum(dim=red)
    dev = total.device
    divisor = torch.ones((), dtype=total.dtype, device=dev)
    for i in range(n):
        length = int(x.shape[2 + i])
        pv = 1.0 if count_include_pad else 0.0
        m = torch.cat([torch.full((pd[i][0],), pv, device=dev), torch.ones(length, device=dev),
                       torch.full((max(min(rights[i], pd[i][1]), 0),), pv, device=dev),
                       torch.zeros(max(rights[i] - pd[i][1], 0), device=dev)])[:pd[i][0] + length + rights[i]]
        cnt = m.unfold(0, spans[i], st[i])[:, ::dl[i]].sum(-1).to(total.dtype)
        divisor = divisor.unsqueeze(-1) * cnt
    return total / divisor


def _max_pool_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = upcast(xs[0])
    n, k, st, dl, pd = _pool_setup(x.shape, attrs, True)
    if all(p == q and 2 * p <= dl[i] * (k[i] - 1) + 1 for i, (p, q) in enumerate(pd)):
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
        y = fn(x, k, st, [p for p, _ in pd], dl, attrs["ceil_mode"])
    else:  # asymmetric or wide padding, which torch's pools refuse
        y = pool_generic(x, k, st, dl, pd, attrs["ceil_mode"], "max")
    return y.to(xs[0].dtype)


def _avg_pool_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = upcast(xs[0])
    n, k, st, dl, pd = _pool_setup(x.shape, attrs, False)
    cip = attrs["count_include_pad"]
    if all(p == q and 2 * p <= k[i] for i, (p, q) in enumerate(pd)):
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        y = fn(x, k, st, [p for p, _ in pd], attrs["ceil_mode"], cip)
    else:
        y = pool_generic(x, k, st, dl, pd, attrs["ceil_mode"], "avg", cip)
    return y.to(xs[0].dtype)


def _pool_cost(extra: int):
    def cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
        window = prod(spatial_param(attrs, "kernel", ins[0].rank - 2, 1))
        return Cost(numel(outs[0]) * (window + extra), io_bytes(ins, outs))
    return cost


_POOL_ATTRS = {
    "kernel": AttrSpec("ints", doc="window size per spatial dim (one value = all dims)"),
    "stride": AttrSpec("ints", (), doc="per spatial dim; empty = 1 (ONNX default, not torch's)"),
    "padding": AttrSpec("ints", (), doc="as for conv"),
    "ceil_mode": AttrSpec("bool", False),
}
_POOL_DOC = ("x [N, C, *spatial] with 1, 2 or 3 spatial dims; output [N, C, *out] with out_i = "
             "floor((L_i + pb_i + pe_i - dilation_i*(k_i-1) - 1) / stride_i) + 1 (ceil instead of "
             "floor with ceil_mode, where a window starting beyond L_i + pb_i is dropped). kernel, "
             "stride and dilation take one value for all dims or one per dim; stride defaults to 1 "
             "(ONNX), not to the kernel (torch). padding as for conv: one, n (symmetric) or 2n "
             "(ONNX begins then ends) values. Float dtypes only.")

defop("max_pool", family="nn", inputs=1, input_names=("x",),
      attrs={**_POOL_ATTRS, "dilation": AttrSpec("ints", (), doc="per spatial dim; empty = 1")},
      shape=_pool_shape_fn(True), reference=_max_pool_ref, cost=_pool_cost(0),
      doc="Max pooling (ONNX MaxPool, single output): each output is the maximum of its window; "
          "padded positions never win (they hold -inf). " + _POOL_DOC)

defop("avg_pool", family="nn", inputs=1, input_names=("x",),
      attrs={**_POOL_ATTRS, "count_include_pad": AttrSpec("bool", False)},
      shape=_pool_shape_fn(False), reference=_avg_pool_ref, cost=_pool_cost(1),
      doc="Average pooling (ONNX AveragePool without dilation): each output is the sum of its "
          "window divided by the number of real input elements in it, or with count_include_pad "
          "by the number of positions inside the input plus explicit padding (the ceil_mode tail "
          "never counts). " + _POOL_DOC)


def _global_pool_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    require_compute_float(x, "x")
    if x.rank < 3:
        raise ShapeError(f"x must be [N, C, *spatial] with at least one spatial dim, got {x}")
    return [TensorType(x.dtype, (*x.shape[:2], *([1] * (x.rank - 2))))]


def _global_ref(fn):
    def ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
        x = xs[0]
        return fn(upcast(x), dim=tuple(range(2, x.dim())), keepdim=True).to(x.dtype)
    return ref


def _global_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(numel(ins[0]), io_bytes(ins, outs))


defop("global_avg_pool", family="nn", inputs=1, input_names=("x",), shape=_global_pool_shape,
      reference=_global_ref(torch.mean), cost=_global_cost,
      doc="Mean over all spatial dims of x [N, C, *spatial] (ONNX GlobalAveragePool); the "
          "output [N, C, 1, ..., 1] keeps every spatial dim as 1. Float dtypes only.")
defop("global_max_pool", family="nn", inputs=1, input_names=("x",), shape=_global_pool_shape,
      reference=_global_ref(torch.amax), cost=_global_cost,
      doc="Maximum over all spatial dims of x [N, C, *spatial] (ONNX GlobalMaxPool); the "
          "output [N, C, 1, ..., 1] keeps every spatial dim as 1. Float dtypes only.")
