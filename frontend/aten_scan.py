"""ATen -> IR: running scans other than ``cumsum`` (``cumprod``, ``cummax``, ``cummin``,
``logcumsumexp``).

- ``cumprod`` maps onto the IR ``cumprod`` op (ONNX CumProd) one-to-one.
- ``cummax`` / ``cummin`` have no IR op; they are lowered exactly onto existing ops.
  torch's rule, element by element along the axis: the running (value, index) pair is
  replaced by the current element when it is NaN or when the pair's value is not NaN and
  the element is >= (cummin: <=) it. So ties take the *last* index, and a NaN wins and
  stays (its own index, the latest NaN's). Both results are a scan with the associative
  operator "keep the later pair unless the earlier one beats it strictly", which is

  * along a static axis of n rows: a Hillis-Steele scan of ceil(log2 n) steps, each one
    ``where`` between the rows and the rows k places earlier (slices + concat);
  * along a symbolic axis (the step count is unknown): a masked [.., n, n] comparison of every
    row with every earlier one, which finds the index first (the last j <= i equal to the
    running extreme, or the last NaN) and then reads the value at it with
    ``gather_elements``. O(n^2) memory, so only where the axis is dynamic.

  Values read or selected are never recomputed, so both paths are exact, for floats and
  integers alike.
- ``logcumsumexp``: the same two shapes of scan with log-add-exp as the operator, computed as
  torch's kernel does, max + log(1 + exp(min - max)), with equal infinities passed through and
  NaN kept; along a symbolic axis a masked [.., n, n] ``reduce_logsumexp``. The association
  order differs from torch's sequential one, so results agree to rounding.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from .aten_table import Ctx, aten

_END = 2 ** 63 - 1


@aten("cumprod.default")
def _cumprod(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.cast(ctx.t(a["self"]), ctx.out_dtype(n))
    if x.type.rank == 0:
        return ctx.emit("identity", [x])
    return ctx.emit("cumprod", [x], axis=int(a["dim"]))


def _indices_used(n: fx.Node) -> bool:
    """Whether anything reads output 1 (the indices) of a multi-output node."""
    import operator
    return any(u.target is not operator.getitem or u.args[1] == 1 for u in n.users)


def _later_wins(ctx: Ctx, earlier: Value, later: Value, is_max: bool) -> Value:
    """Bool mask: the later element replaces the earlier running extreme (torch's rule)."""
    take = ctx.emit("ge" if is_max else "le", [later, earlier])
    if earlier.dtype.is_float:
        take = ctx.emit("logical_or", [take, ctx.emit("isnan", [later])])
    return take


def _slice(ctx: Ctx, x: Value, axis: int, start: int, end: int) -> Value:
    return ctx.emit("slice", [x], starts=(start,), ends=(end,), axes=(axis,), steps=(1,))


def _row_index(ctx: Ctx, x: Value, axis: int) -> Value:
    """i64 tensor of x's shape holding each element's position along ``axis``."""
    r = x.type.rank
    size = x.shape[axis]
    pos = ctx.emit("arange", [], start=0, end=size, step=1, dtype="i64")
    shape = tuple(size if d == axis else 1 for d in range(r))
    return ctx.emit("expand", [ctx.emit("reshape", [pos], shape=shape)], shape=x.shape)


def _scan_static(ctx: Ctx, x: Value, axis: int, is_max: bool, with_idx: bool) -> tuple[Value, Value | None]:
    size = x.shape[axis]
    assert isinstance(size, int)
    v, i = x, (_row_index(ctx, x, axis) if with_idx else None)
    k = 1
    while k < size:
        va, vb = _slice(ctx, v, axis, 0, size - k), _slice(ctx, v, axis, k, _END)
        take = _later_wins(ctx, va, vb, is_max)
        v = ctx.emit("concat", [_slice(ctx, v, axis, 0, k), ctx.emit("where", [take, vb, va])], axis=axis)
        if i is not None:
            ia, ib = _slice(ctx, i, axis, 0, size - k), _slice(ctx, i, axis, k, _END)
            i = ctx.emit("concat", [_slice(ctx, i, axis, 0, k), ctx.emit("where", [take, ib, ia])],
                         axis=axis)
        k *= 2
    return v, i


def _extreme_fill(x: Value, is_max: bool) -> float | int:
    """The value that never wins the reduction (below / above every element)."""
    if x.dtype.is_float:
        return float("-inf") if is_max else float("inf")
    info = torch.iinfo(x.dtype.container)
    return info.min if is_max else info.max


def _scan_dynamic(ctx: Ctx, x: Value, axis: int, is_max: bool) -> tuple[Value, Value]:
    r = x.type.rank
    last = r - 1
    perm = tuple(d for d in range(r) if d != axis) + (axis,)
    inv = tuple(perm.index(d) for d in range(r))
    xm = ctx.emit("transpose", [x], perm=perm) if axis != last else x
    size = xm.shape[last]
    pos = ctx.emit("arange", [], start=0, end=size, step=1, dtype="i64")
    # mask[i, j] = j <= i: row i of the comparison looks at the prefix that ends at i
    mask = ctx.emit("le", [ctx.emit("unsqueeze", [pos], axes=(0,)), ctx.emit("unsqueeze", [pos], axes=(1,))])
    xj = ctx.emit("unsqueeze", [xm], axes=(r - 1,))                     # [..., 1, n]
    fill = ctx.scalar(_extreme_fill(xm, is_max), xm.dtype)
    clean = xj
    if xm.dtype.is_float:
        nan_j = ctx.emit("isnan", [xj])
        clean = ctx.emit("where", [nan_j, fill, xj])                      # NaNs compete apart
    red = "reduce_max" if is_max else "reduce_min"
    best = ctx.emit(red, [ctx.emit("where", [mask, clean, fill])], axes=(r,), keepdims=True)  # [..., n, 1]
    hit = ctx.emit("eq", [clean, best])
    if xm.dtype.is_float:
        any_nan = ctx.emit("reduce_max", [ctx.emit("logical_and", [mask, nan_j])], axes=(r,), keepdims=True)
        hit = ctx.emit("where", [any_nan, nan_j, ctx.emit("logical_and", [hit, ctx.emit("logical_not", [nan_j])])])
    hit = ctx.emit("logical_and", [hit, mask])
    minus1 = ctx.scalar(-1, dt.i64)
    idx = ctx.emit("reduce_max", [ctx.emit("where", [hit, ctx.emit("unsqueeze", [pos], axes=(0,)), minus1])],
                   axes=(r,), keepdims=False)                             # the last such j
    val = ctx.emit("gather_elements", [xm, idx], axis=last)
    if axis != last:
        idx = ctx.emit("transpose", [idx], perm=inv)
        val = ctx.emit("transpose", [val], perm=inv)
    return val, idx


@aten("cummax.default", "cummin.default")
def _cum_extreme(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, Value | None]:
    x = ctx.t(a["self"])
    is_max = "cummax" in str(n.target)
    with_idx = _indices_used(n)
    r = x.type.rank
    if r == 0:
        return ctx.emit("identity", [x]), ctx.scalar(0, dt.i64)
    if x.dtype is dt.boolean:
        # comparisons on bool are not in the IR's type rules: scan 0/1 bytes, cast back
        v, i = _cum_extreme_on(ctx, ctx.cast(x, dt.u8), int(a["dim"]) % r, is_max, with_idx)
        return ctx.cast(v, dt.boolean), i
    if not (x.dtype.is_float or x.dtype.is_int):
        raise FrontendError(f"{ctx.node_name}: {'cummax' if is_max else 'cummin'} of {x.dtype.name}")
    return _cum_extreme_on(ctx, x, int(a["dim"]) % r, is_max, with_idx)


def _cum_extreme_on(ctx: Ctx, x: Value, axis: int, is_max: bool,
                    with_idx: bool) -> tuple[Value, Value | None]:
    if isinstance(x.shape[axis], int):
        return _scan_static(ctx, x, axis, is_max, with_idx)
    return _scan_dynamic(ctx, x, axis, is_max)


def _log_add_exp(ctx: Ctx, a: Value, b: Value) -> Value:
    """log(exp(a) + exp(b)) as torch's logcumsumexp combines: equal infinities give a."""
    mx, mn = ctx.emit("maximum", [a, b]), ctx.emit("minimum", [a, b])
    one = ctx.scalar(1.0, a.dtype)
    r = ctx.emit("add", [mx, ctx.emit("log", [ctx.emit("add", [one, ctx.emit("exp", [ctx.emit("sub", [mn, mx])])])])])
    same_inf = ctx.emit("logical_and", [ctx.emit("eq", [mn, mx]), ctx.emit("isinf", [mn])])
    return ctx.emit("where", [same_inf, a, r])


@aten("logcumsumexp.default")
def _logcumsumexp(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    x = ctx.t(a["self"])
    if not x.dtype.is_float:
        raise FrontendError(f"{ctx.node_name}: logcumsumexp of {x.dtype.name}")
    r = x.type.rank
    if r == 0:
        return ctx.emit("identity", [x])
    axis = int(a["dim"]) % r
    size = x.shape[axis]
    if isinstance(size, int):
        v, k = x, 1
        while k < size:
            va, vb = _slice(ctx, v, axis, 0, size - k), _slice(ctx, v, axis, k, _END)
            v = ctx.emit("concat", [_slice(ctx, v, axis, 0, k), _log_add_exp(ctx, va, vb)], axis=axis)
            k *= 2
        return v
    perm = tuple(d for d in range(r) if d != axis) + (axis,)
    xm = ctx.emit("transpose", [x], perm=perm) if axis != r - 1 else x
    pos = ctx.emit("arange", [], start=0, end=size, step=1, dtype="i64")
    mask = ctx.emit("le", [ctx.emit("unsqueeze", [pos], axes=(0,)), ctx.emit("unsqueeze", [pos], axes=(1,))])
    xj = ctx.emit("unsqueeze", [xm], axes=(r - 1,))                     # [..., 1, n]
    rows = ctx.emit("where", [mask, xj, ctx.scalar(float("-inf"), x.dtype)])   # [..., n, n]
    out = ctx.emit("reduce_logsumexp", [rows], axes=(r,), keepdims=False)
    return ctx.emit("transpose", [out], perm=tuple(perm.index(d) for d in range(r))) if axis != r - 1 else out
