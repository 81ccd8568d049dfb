"""ATen -> IR: the pooling forms the IR pool ops do not carry themselves: max pooling's
``return_indices`` (read by ``max_unpool`` or returned) and average pooling's
``divisor_override``.

Max-pool indices (torch: the flat position ``h * W + w`` in the unpadded input plane of the
window's maximum; the first maximum in row-major window order on ties, the last NaN when
there are NaNs). With static spatial sizes every window's input positions are known at
import, so the lowering is a constant table ``T[o, t]`` (output position o, window slot t):

- the flattened planes are read by one ``gather`` through T into [N, C, O, K];
- ``argmax`` over the K slots picks the first maximum; slots that fall in the padding read
  a copy of the window's first real element, so they never beat it or change the answer,
  and a NaN-aware second ``argmax`` (last index) over a constant validity mask covers NaN;
- one ``gather`` maps the chosen slot back through T to the input position.

``divisor_override`` d: torch divides each window's sum by d instead of its size. The IR
``avg_pool`` with ``count_include_pad`` divides the sum by torch's own padded window size
(all the window except the ceil-mode tail), so the result is that average times the size
over d: a scalar when every window is whole, else a constant per-window factor (static
spatial sizes). The two extra roundings keep it within a few ulp of torch (exact when the
window size is a power of two).
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from ..ir.types import Dim
from .aten_table import Ctx


def _static(ctx: Ctx, dims: Sequence[Dim], what: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in dims):
        raise FrontendError(f"{ctx.node_name}: {what} needs static spatial sizes, got {tuple(dims)}")
    return tuple(int(d) for d in dims)


def _window_table(ins: Sequence[int], outs: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T [O, K] i64 flat input positions, valid [O, K] bool): padding slots of T hold the
    window's first real position."""
    ksz = math.prod(kernel)
    table = torch.empty(math.prod(outs), ksz, dtype=torch.int64)
    valid = torch.zeros(math.prod(outs), ksz, dtype=torch.bool)
    strides = [math.prod(ins[i + 1:]) for i in range(len(ins))]
    for oi, o in enumerate(itertools.product(*[range(n) for n in outs])):
        first = None
        for ti, t in enumerate(itertools.product(*[range(k) for k in kernel])):
            pos = [o[i] * stride[i] - padding[i] + t[i] * dilation[i] for i in range(len(ins))]
            if all(0 <= p < n for p, n in zip(pos, ins)):
                flat = sum(p * s for p, s in zip(pos, strides))
                table[oi, ti], valid[oi, ti] = flat, True
                first = flat if first is None else first
        if first is None:
            raise ValueError(f"pooling window at {o} covers no input element")
        table[oi][~valid[oi]] = first
    return table, valid


def max_pool_indices(ctx: Ctx, x: Value, out_shape: Sequence[Dim], kernel: Sequence[int],
                     stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                     dilation: Sequence[int]) -> Value:
    """i64 [N, C, *out]: torch's max_pool indices of x [N, C, *spatial]."""
    nsp = x.type.rank - 2
    ins = _static(ctx, x.shape[2:], "max_pool with return_indices")
    outs = _static(ctx, out_shape[2:], "max_pool with return_indices")
    if len(padding) != nsp:
        raise FrontendError(f"{ctx.node_name}: max_pool padding {tuple(padding)} for {nsp} spatial dims")
    table, valid = _window_table(ins, outs, kernel, stride, padding, dilation)
    nout, ksz = table.shape
    lead = tuple(x.shape[:2])
    planes = ctx.emit("reshape", [x], shape=lead + (math.prod(ins),))
    win = ctx.emit("gather", [planes, ctx.const(table, dt.i64)], axis=2)          # [N, C, O, K]
    slot = ctx.emit("argmax", [win], axis=3, keepdims=False)                       # first maximum
    if x.dtype.is_float:
        # torch takes each NaN it meets, so the last NaN of the window (real slots only)
        nan = ctx.emit("logical_and", [ctx.emit("isnan", [win]), ctx.const(valid, dt.boolean)])
        nan8 = ctx.cast(nan, dt.u8)
        last_nan = ctx.emit("argmax", [nan8], axis=3, keepdims=False, select_last_index=True)
        any_nan = ctx.cast(ctx.emit("reduce_max", [nan8], axes=(3,), keepdims=False), dt.boolean)
        slot = ctx.emit("where", [any_nan, last_nan, slot])
    base = ctx.const(torch.arange(nout, dtype=torch.int64) * ksz, dt.i64)
    flat = ctx.emit("gather", [ctx.const(table.reshape(-1), dt.i64), ctx.emit("add", [slot, base])], axis=0)
    return ctx.emit("reshape", [flat], shape=lead + outs)


def avg_pool_divisor(ctx: Ctx, x: Value, out_shape: Sequence[Dim], divisor: int, kernel: Sequence[int],
                     stride: Sequence[int], padding: Sequence[int], ceil_mode: bool) -> Value:
    """avg_pool of x with every window's sum divided by ``divisor``."""
    if divisor == 0:
        raise FrontendError(f"{ctx.node_name}: avg_pool divisor_override=0")
    nsp = x.type.rank - 2
    y = ctx.emit("avg_pool", [x], kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                 ceil_mode=ceil_mode, count_include_pad=True)
    # torch's padded window size per axis: from the window start to min(start + k, L + pad)
    ins, outs = x.shape[2:], out_shape[2:]
    whole = math.prod(kernel)
    per_axis: list[torch.Tensor] = []
    for i in range(nsp):
        if not ceil_mode:
            # without ceil_mode the last window ends at L + pad or before: every one is whole
            per_axis.append(torch.full((1,), float(kernel[i]), dtype=torch.float64))
            continue
        L, O = _static(ctx, (ins[i], outs[i]), "avg_pool with divisor_override and ceil_mode")
        start = torch.arange(O, dtype=torch.float64) * stride[i] - padding[i]
        end = torch.minimum(start + kernel[i], torch.tensor(float(L + padding[i]), dtype=torch.float64))
        per_axis.append(end - start)
    size = per_axis[0]
    for i in range(1, nsp):
        size = size.reshape(size.shape + (1,)) * per_axis[i]
    cdt = y.dtype if y.dtype not in (dt.f16, dt.bf16) else dt.f32
    yc = ctx.cast(y, cdt)
    if bool((size == whole).all()):
        total = ctx.emit("mul", [yc, ctx.scalar(float(whole), cdt)])
    else:
        total = ctx.emit("mul", [yc, ctx.const(size.to(cdt.container), cdt)])
    return ctx.cast(ctx.emit("div", [total, ctx.scalar(float(divisor), cdt)]), y.dtype)
