"""Shape and data-movement ops: reshape, transpose, slice, concat, split, gather, expand, pad, ...

These ops move elements without arithmetic, so every dtype is accepted (sub-byte types move
their one-per-byte container values; float8 moves as raw bytes where torch lacks a kernel).

Attributes of kind "dim"/"dims" may be symbolic. References run on concrete tensors, so they
expect those attributes bound to integers first (``common.bind_dims(attrs, env)``); an unbound
symbol raises ShapeError.
"""
from __future__ import annotations

from typing import Callable, Sequence

import sympy
import torch

from .. import dtypes as dt
from ..errors import IRError, ShapeError
from ..graph import Attrs
from ..types import Dim, TensorType, canon_dim, dim_str, dims_equal
from .common import broadcast_shapes, check_dim, norm_axis, prod, require, same_dtype
from .elementwise import cast_tensor
from .registry import AttrSpec, Cost, defop, io_bytes, memory_cost

Tensor = torch.Tensor
_F8 = (torch.float8_e4m3fn, torch.float8_e5m2)
# Int slice bounds at or beyond this magnitude mean "to the end" (ONNX writes INT64_MAX).
_BIG = 2 ** 31


# ---- helpers --------------------------------------------------------------------------------


def _int(d: Dim, what: str) -> int:
    """A concrete attribute value at reference time; symbolic ones must have been bound."""
    if isinstance(d, int):
        return d
    if isinstance(d, sympy.Basic) and d.is_Integer:
        return int(d)
    raise ShapeError(f"{what} = {dim_str(d)} is not bound to an integer; bind symbols with "
                     f"ops.common.bind_dims before running the reference")


def _ints(ds: Sequence[Dim], what: str) -> list[int]:
    return [_int(d, what) for d in ds]


def _dims(ds: Sequence[Dim | sympy.Expr]) -> tuple[Dim, ...]:
    """Canonical output dims; a provably negative one is a ShapeError, not an IRError."""
    try:
        return tuple(canon_dim(sympy.sympify(d) if not isinstance(d, int) else d) for d in ds)
    except IRError as e:
        raise ShapeError(str(e)) from None


def _le(a: Dim, b: Dim) -> bool:
    """Whether a <= b is provable."""
    return bool(sympy.sympify(b - a).is_nonnegative)


def _min(a: Dim, b: Dim) -> Dim:
    return a if _le(a, b) else b if _le(b, a) else sympy.Min(a, b)


def _max(a: Dim, b: Dim) -> Dim:
    return b if _le(a, b) else a if _le(b, a) else sympy.Max(a, b)


def _bytes_view(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Run a data-movement function on float8 as raw bytes (torch lacks some float8 kernels)."""
    def run(x: Tensor) -> Tensor:
        if x.dtype in _F8:
            return fn(x.view(torch.uint8)).view(x.dtype)
        return fn(x)
    return run


def _range(r: range, device: torch.device | None = None) -> Tensor:
    """A python range as an int64 tensor (torch.arange rejects empty ranges of the wrong sign)."""
    return torch.arange(len(r), dtype=torch.int64, device=device) * r.step + r.start


def _axes(axes: Sequence[int], rank: int) -> list[int]:
    out = [norm_axis(a, rank) for a in axes]
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {tuple(axes)}")
    return out


def _view_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    # Metadata-only in a contiguous layout: no element is read or written.
    return Cost(sympy.Integer(0), sympy.Integer(0))


def _moved_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    # Reads only the elements it writes (slice, gather), plus the index tensor if any.
    idx = ins[1].nbytes() if len(ins) > 1 and ins[1] is not None else sympy.Integer(0)
    return Cost(sympy.Integer(0), idx + 2 * sum((o.nbytes() for o in outs), sympy.Integer(0)))


def _write_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(sympy.sympify(outs[0].numel()), io_bytes([], outs))


def _op(name: str, inputs: int | tuple[int, int], names: tuple[str, ...], shape, reference, cost,
        doc: str, attrs: dict[str, AttrSpec] | None = None) -> None:
    defop(name, family="shape", inputs=inputs, shape=shape, reference=reference, cost=cost,
          attrs=attrs, input_names=names, doc=doc)


# ---- reshape, transpose, squeeze, unsqueeze, flatten ----------------------------------------


def _reshape_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    target = list(a["shape"])
    holes = [i for i, d in enumerate(target) if isinstance(d, int) and d < 0]
    if len(holes) > 1 or any(target[i] != -1 for i in holes):
        raise ShapeError(f"reshape target may hold one -1 and no other negative dim, got "
                         f"[{','.join(dim_str(d) for d in target)}]")
    n_in = x.numel()
    known = prod([d for i, d in enumerate(target) if i not in holes])
    if holes:
        if isinstance(known, int) and isinstance(n_in, int):
            if known == 0 or n_in % known:
                raise ShapeError(f"cannot reshape {x} to {list(target)}: {n_in} elements")
            target[holes[0]] = n_in // known
        else:
            q = sympy.cancel(sympy.sympify(n_in) / sympy.sympify(known))
            if q.has(sympy.zoo, sympy.nan, sympy.oo) or (q.is_number and not q.is_Integer):
                raise ShapeError(f"cannot resolve -1 in reshape of {x}: {dim_str(n_in)} / {dim_str(known)}")
            target[holes[0]] = q
    elif not dims_equal(n_in, known) and sympy.expand(sympy.sympify(n_in) - known).is_zero is False:
        raise ShapeError(f"cannot reshape {x} ({dim_str(n_in)} elements) to "
                         f"[{','.join(dim_str(d) for d in target)}] ({dim_str(known)} elements)")
    return [x.with_shape(_dims(target))]


def _transpose_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    perm = a["perm"] if a["perm"] is not None else tuple(reversed(range(x.rank)))
    if sorted(perm) != list(range(x.rank)):
        raise ShapeError(f"perm {tuple(perm)} is not a permutation of 0..{x.rank - 1}")
    return [x.with_shape(x.shape[p] for p in perm)]


def _transpose_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x = xs[0]
    perm = a["perm"] if a["perm"] is not None else tuple(reversed(range(x.dim())))
    return x.permute(*perm).contiguous()


def _squeeze_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    if a["axes"] is None:
        if not x.is_static:
            # A symbolic dim might be 1 at run time; the output rank must not depend on that.
            raise ShapeError(f"squeeze without axes needs a static shape, got {x}")
        return [x.with_shape(d for d in x.shape if d != 1)]
    axes = _axes(a["axes"], x.rank)
    for ax in axes:
        if not dims_equal(x.shape[ax], 1):
            raise ShapeError(f"cannot squeeze axis {ax} of size {dim_str(x.shape[ax])}")
    return [x.with_shape(d for i, d in enumerate(x.shape) if i not in axes)]


def _squeeze_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x = xs[0]
    axes = a["axes"] if a["axes"] is not None else [i for i, n in enumerate(x.shape) if n == 1]
    axes = [ax % x.dim() for ax in axes]
    return x.reshape([n for i, n in enumerate(x.shape) if i not in axes])


def _unsqueeze_dims(shape: Sequence, axes: Sequence[int]) -> list:
    rank = len(shape) + len(axes)
    pos = set(_axes(axes, rank))
    it = iter(shape)
    return [1 if i in pos else next(it) for i in range(rank)]


def _flatten_dims(shape: Sequence, axis: int) -> list:
    r = len(shape)
    if not -r <= axis <= r:
        raise ShapeError(f"flatten axis {axis} out of range for rank {r}")
    axis = axis + r if axis < 0 else axis
    return [prod(shape[:axis]), prod(shape[axis:])]


_op("reshape", 1, ("x",), _reshape_shape, lambda xs, a: xs[0].reshape(_ints(a["shape"], "shape")),
    _view_cost, attrs={"shape": AttrSpec("dims")},
    doc="reshape(x)[shape] reinterprets x's elements (row-major order) with the target shape. "
        "Target dims may be symbolic; at most one entry may be -1, resolved so that the element "
        "count is kept (symbolically when needed). 0 is a literal zero-size dim (not ONNX's "
        "'copy the input dim'). Element counts that are provably different are a ShapeError.")
_op("transpose", 1, ("x",), _transpose_shape, _transpose_ref, memory_cost,
    attrs={"perm": AttrSpec("ints", None)},
    doc="transpose(x)[perm]: output dim i is input dim perm[i] (numpy transpose / ONNX "
        "Transpose); perm must be a permutation of 0..rank-1; absent perm reverses the dims.")
_op("squeeze", 1, ("x",), _squeeze_shape, _squeeze_ref, _view_cost,
    attrs={"axes": AttrSpec("ints", None)},
    doc="squeeze(x)[axes] removes the listed axes (negative counts from the end), each of which "
        "must have size 1 (provably). Without axes it removes every size-1 dim, which needs a "
        "static shape (ONNX Squeeze).")
_op("unsqueeze", 1, ("x",), lambda ins, a: [require(ins[0], "x").with_shape(
        _unsqueeze_dims(ins[0].shape, a["axes"]))],
    lambda xs, a: xs[0].reshape(_unsqueeze_dims(list(xs[0].shape), a["axes"])), _view_cost,
    attrs={"axes": AttrSpec("ints")},
    doc="unsqueeze(x)[axes] inserts size-1 dims; axes index the output (rank + len(axes)), may "
        "be negative, must be distinct (ONNX Unsqueeze).")
_op("flatten", 1, ("x",), lambda ins, a: [require(ins[0], "x").with_shape(
        _flatten_dims(ins[0].shape, a["axis"]))],
    lambda xs, a: xs[0].reshape(_flatten_dims(list(xs[0].shape), a["axis"])),
    _view_cost, attrs={"axis": AttrSpec("int", 1)},
    doc="flatten(x)[axis] gives the 2-D [prod(dims[:axis]), prod(dims[axis:])] (ONNX Flatten); "
        "axis in [-rank, rank], negative counts from the end; an empty product is 1.")

# ---- slice ----------------------------------------------------------------------------------


def _slice_params(rank: int, a: Attrs) -> tuple[list[int], tuple, tuple, list[int]]:
    starts, ends = a["starts"], a["ends"]
    axes = a["axes"] if a["axes"] is not None else tuple(range(len(starts)))
    steps = a["steps"] if a["steps"] is not None else (1,) * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError("starts, ends, axes and steps must have one entry per sliced axis")
    if any(s == 0 for s in steps):
        raise ShapeError("slice step cannot be 0")
    return _axes(axes, rank), starts, ends, list(steps)


def _slice_len(n: Dim, s: Dim, e: Dim, k: int) -> Dim:
    """Length of range(n)[s:e:k] with python semantics, symbolic dims allowed."""
    if all(isinstance(v, int) for v in (n, s, e)):
        return len(range(*slice(s, e, k).indices(n)))

    def clamp(i: Dim, lo: Dim, hi: Dim) -> Dim:
        if isinstance(i, int):
            if abs(i) >= _BIG:
                return hi if i > 0 else lo
            if i < 0:
                i = n + i
        return _min(_max(i, lo), hi)

    if k > 0:
        s, e = clamp(s, 0, n), clamp(e, 0, n)
        span = e - s
        # e = n or s = 0 makes the span provably >= 0, which keeps Max(0, ...) out of the dim.
        sure = dims_equal(e, n) or dims_equal(s, 0)
    else:
        s, e = clamp(s, -1, n - 1), clamp(e, -1, n - 1)
        span = s - e
        sure = dims_equal(e, -1) or dims_equal(s, n - 1)
    length = span if abs(k) == 1 else sympy.ceiling(sympy.sympify(span) / abs(k))
    return length if sure else _max(0, length)


def _slice_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    axes, starts, ends, steps = _slice_params(x.rank, a)
    shape = list(x.shape)
    for ax, s, e, k in zip(axes, starts, ends, steps):
        shape[ax] = _slice_len(shape[ax], s, e, k)
    return [x.with_shape(_dims(shape))]


def slice_ranges(shape: Sequence[int], a: Attrs) -> list[tuple[int, range]]:
    """The (axis, index range) pairs a ``slice`` with bound (integer) attrs takes from an
    input of concrete ``shape``."""
    axes, starts, ends, steps = _slice_params(len(shape), a)
    return [(ax, range(*slice(s, e, k).indices(shape[ax])))
            for ax, s, e, k in zip(axes, _ints(starts, "start"), _ints(ends, "end"), steps)]


def _slice_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x = xs[0]
    for ax, r in slice_ranges(tuple(x.shape), a):
        x = x.index_select(ax, _range(r, x.device))
    return x


_op("slice", 1, ("x",), _slice_shape, _slice_ref, _moved_cost,
    attrs={"starts": AttrSpec("dims"), "ends": AttrSpec("dims"), "axes": AttrSpec("ints", None),
           "steps": AttrSpec("ints", None)},
    doc="slice(x)[starts, ends, axes, steps] takes x[start:end:step] along each listed axis with "
        "python semantics: negative int starts/ends count from the end, then both clamp into "
        "range (so ends past the dim mean 'to the end'); steps may be negative (not 0). "
        "Int bounds of magnitude >= 2**31 mean 'to the end' / 'from the start' in the step's "
        "direction (as ONNX writes INT64_MAX). Symbolic starts/ends are non-negative positions. "
        "axes default to 0..len(starts)-1, steps to 1.")

# ---- concat, split ----------------------------------------------------------------------------


def _concat_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    xs = [require(t, f"#{i}") for i, t in enumerate(ins)]
    same_dtype(xs)
    rank = xs[0].rank
    if any(t.rank != rank for t in xs):
        raise ShapeError(f"inputs must share one rank, got {', '.join(str(t) for t in xs)}")
    ax = norm_axis(a["axis"], rank)
    for t in xs[1:]:
        for i in range(rank):
            if i != ax:
                check_dim(xs[0].shape[i], t.shape[i], f"dim {i} differs between {xs[0]} and {t}")
    shape = list(xs[0].shape)
    shape[ax] = sum((t.shape[ax] for t in xs[1:]), xs[0].shape[ax])
    return [xs[0].with_shape(shape)]


def _split_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    ax = norm_axis(a["axis"], x.rank)
    sizes = _dims(a["sizes"])
    if not sizes:
        raise ShapeError("split needs at least one size")
    check_dim(sum(sizes[1:], sizes[0]), x.shape[ax], f"split sizes must add up to dim {ax}")
    return [x.with_shape(x.shape[:ax] + (s,) + x.shape[ax + 1:]) for s in sizes]


_op("concat", (1, -1), (), _concat_shape,
    lambda xs, a: torch.cat(list(xs), dim=a["axis"]), memory_cost, attrs={"axis": AttrSpec("int")},
    doc="concat(x0, x1, ...)[axis] joins >= 1 inputs of one dtype and rank along axis (negative "
        "counts from the end); all other dims must be provably equal; the output's axis dim is "
        "the sum (ONNX Concat).")
_op("split", 1, ("x",), _split_shape,
    lambda xs, a: tuple(t.clone() for t in torch.split(xs[0], _ints(a["sizes"], "size"), dim=a["axis"])),
    memory_cost, attrs={"axis": AttrSpec("int", 0), "sizes": AttrSpec("dims")},
    doc="split(x)[axis, sizes] cuts x along axis into consecutive pieces of the given sizes "
        "(which must provably add up to the dim), one output per size (ONNX Split with split "
        "sizes).")

# ---- gather, gather_elements, embedding ------------------------------------------------------


def _index_check(t: TensorType, what: str = "indices") -> None:
    if not t.dtype.is_int:
        raise ShapeError(f"{what} must be an integer type, got {t.dtype.name}")


def _wrap(idx: Tensor, n: int) -> Tensor:
    idx = idx.to(torch.int64)
    return torch.where(idx < 0, idx + n, idx)


def _gather_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x, idx = require(ins[0], "data"), require(ins[1], "indices")
    _index_check(idx)
    ax = norm_axis(a["axis"], x.rank)
    return [x.with_shape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])]


def _select(x: Tensor, ax: int, flat: Tensor, idx: Tensor, lo: int) -> Tensor:
    """``x.index_select(ax, flat)``; an index out of range is an IndexError that names the
    valid range (``lo`` .. size of the axis) and the range of ``idx``, the indices as given.
    The extremes are computed only on failure, so the call costs no reduction."""
    try:
        return x.index_select(ax, flat)
    except IndexError:
        n = x.shape[ax]
        raise IndexError(f"indices must lie in [{lo}, {n}) (axis {ax} has {n} entries), got indices "
                         f"from {int(idx.min())} to {int(idx.max())}") from None


def _gather_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x, idx = xs[0], xs[1]
    ax = a["axis"] % x.dim()
    out = _select(x, ax, _wrap(idx, x.shape[ax]).reshape(-1), idx, -x.shape[ax])
    return out.reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])


def _gather_elements_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x, idx = require(ins[0], "data"), require(ins[1], "indices")
    _index_check(idx)
    if x.rank != idx.rank:
        raise ShapeError(f"data {x} and indices {idx} must have the same rank")
    norm_axis(a["axis"], x.rank)
    return [x.with_shape(idx.shape)]


def _gather_elements_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x, idx = xs[0], xs[1]
    ax = a["axis"] % x.dim()
    return _bytes_view(lambda t: torch.gather(t, ax, _wrap(idx, x.shape[ax])))(x)


def _embedding_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    w, idx = require(ins[0], "weight"), require(ins[1], "indices")
    _index_check(idx)
    if w.rank != 2:
        raise ShapeError(f"weight must be 2-D [V,D], got {w}")
    return [w.with_shape(idx.shape + (w.shape[1],))]


_op("gather", 2, ("data", "indices"), _gather_shape, _gather_ref, _moved_cost,
    attrs={"axis": AttrSpec("int", 0)},
    doc="gather(data, indices)[axis] (ONNX Gather): output[i.., j.., k..] = data[i.., "
        "indices[j..], k..]; output shape data.shape[:axis] + indices.shape + "
        "data.shape[axis+1:]; integer indices, negative ones count from the end of the axis.")
_op("gather_elements", 2, ("data", "indices"), _gather_elements_shape, _gather_elements_ref,
    _moved_cost, attrs={"axis": AttrSpec("int", 0)},
    doc="gather_elements(data, indices)[axis] (ONNX GatherElements): output has indices' shape "
        "and output[p] = data[p with p[axis] replaced by indices[p]]; same rank for both; "
        "negative indices count from the end of the axis.")
def _embedding_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    if a["wrap"]:
        return _gather_ref(xs, Attrs({"axis": 0}))
    # Unwrapped ids go to index_select as they are: it refuses negative ones as torch.embedding
    # does (IndexError; a device assert on CUDA, as in eager), with no host sync to check them.
    w, idx = xs[0], xs[1]
    return _select(w, 0, idx.reshape(-1).to(torch.int64), idx, 0).reshape(idx.shape + w.shape[1:])


_op("embedding", 2, ("weight", "indices"), _embedding_shape, _embedding_ref, _moved_cost,
    attrs={"wrap": AttrSpec("bool", True)},
    doc="embedding(weight, indices)[wrap]: weight [V,D], integer indices of any shape; output "
        "indices.shape + [D] with rows weight[indices] (gather on axis 0). With wrap, negative "
        "indices count from V (ONNX Gather); without it they fail, as torch.embedding does.")

# ---- expand, tile, pad, trilu ---------------------------------------------------------------


def _tile_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    reps = a["repeats"]
    if len(reps) != x.rank or any(r < 0 for r in reps):
        raise ShapeError(f"repeats {tuple(reps)} must be {x.rank} non-negative ints")
    return [x.with_shape(d * r for d, r in zip(x.shape, reps))]


def _pad_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    pads = a["pads"]
    if len(pads) != 2 * x.rank:
        raise ShapeError(f"pads must hold 2*rank = {2 * x.rank} entries, got {len(pads)}")
    if a["mode"] != "constant" and any(isinstance(p, int) and p < 0 for p in pads):
        raise ShapeError(f"negative pads are allowed only in constant mode, got {tuple(pads)}")
    if x.dtype is dt.f4e2m1 and a["value"] != 0.0:
        # The reference sees only the uint8 container and cannot encode the value for it.
        raise ShapeError("pad value on f4e2m1 must be 0")
    return [x.with_shape(_dims([d + b + e for d, b, e in
                                zip(x.shape, pads[:x.rank], pads[x.rank:])]))]


def _pad_index(n: int, b: int, e: int, mode: str, device: torch.device | None = None) -> Tensor:
    i = torch.arange(-b, n + e, dtype=torch.int64, device=device)
    if mode == "edge":
        return i.clamp(0, n - 1)
    period = 2 * (n - 1)
    if period == 0:
        return torch.zeros_like(i)
    j = i.remainder(period)
    return torch.where(j >= n, period - j, j)


def _pad_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    x = xs[0]
    r = x.dim()
    pads = _ints(a["pads"], "pad")
    if a["mode"] == "constant":
        # Negative pads crop; crop first, then place the rest inside a filled tensor.
        for ax in range(r):
            b, e = min(pads[ax], 0), min(pads[r + ax], 0)
            x = x.narrow(ax, -b, x.shape[ax] + b + e)
        fill = cast_tensor(torch.tensor(a["value"], dtype=torch.float64), dt.from_torch(x.dtype)) \
            if x.dtype != torch.uint8 else torch.tensor(a["value"]).to(torch.uint8)
        out_shape = [n + max(pads[ax], 0) + max(pads[r + ax], 0) for ax, n in enumerate(x.shape)]
        # filled on x's device (fill_ reads the 0-d CPU value on the host: no copy, so the
        # step stays on the GPU and inside CUDA graphs there)
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device).fill_(fill)
        out[tuple(slice(max(pads[ax], 0), max(pads[ax], 0) + n) for ax, n in enumerate(x.shape))] = x
        return out
    for ax in range(r):
        if pads[ax] or pads[r + ax]:
            x = x.index_select(ax, _pad_index(x.shape[ax], pads[ax], pads[r + ax], a["mode"], x.device))
    return x


def _trilu_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    if x.rank < 2:
        raise ShapeError(f"trilu needs rank >= 2, got {x}")
    return [x]


_op("expand", 1, ("x",), lambda ins, a: [require(ins[0], "x").with_shape(
        broadcast_shapes(ins[0].shape, a["shape"]))],
    lambda xs, a: xs[0].expand(torch.broadcast_shapes(xs[0].shape, _ints(a["shape"], "shape"))).contiguous(),
    memory_cost, attrs={"shape": AttrSpec("dims")},
    doc="expand(x)[shape] (ONNX Expand): broadcasts x and the target shape together with numpy "
        "rules (either side may be 1 or shorter), so the output shape is broadcast(x.shape, "
        "shape), which may be larger than shape.")
_op("tile", 1, ("x",), _tile_shape, lambda xs, a: xs[0].repeat(*a["repeats"]), memory_cost,
    attrs={"repeats": AttrSpec("ints")},
    doc="tile(x)[repeats] (ONNX Tile / numpy tile): repeats x repeats[i] times along dim i; one "
        "non-negative repeat per dim; output dim i is dim i * repeats[i].")
_op("pad", 1, ("x",), _pad_shape, _pad_ref, memory_cost,
    attrs={"pads": AttrSpec("dims"), "mode": AttrSpec("str", "constant", ("constant", "reflect", "edge")),
           "value": AttrSpec("float", 0.0)},
    doc="pad(x)[pads, mode, value] (ONNX Pad): pads = [begin_0..begin_{r-1}, end_0..end_{r-1}]; "
        "output dim i is dim_i + begin_i + end_i. mode 'constant' fills with value (converted to "
        "x's dtype like cast) and accepts negative pads, which crop; 'edge' repeats the border "
        "element; 'reflect' mirrors without repeating the border (numpy 'reflect', wrapping "
        "again for pads wider than the dim).")
_op("trilu", 1, ("x",), _trilu_shape,
    lambda xs, a: _bytes_view(lambda t: (torch.triu if a["upper"] else torch.tril)(t, a["diagonal"]))(xs[0]),
    memory_cost, attrs={"diagonal": AttrSpec("int", 0), "upper": AttrSpec("bool", True)},
    doc="trilu(x)[diagonal, upper] (ONNX Trilu) on the last two dims [..., M, N]: upper=True keeps "
        "elements with col - row >= diagonal (zeroing the rest), upper=False keeps col - row <= "
        "diagonal; rank >= 2; other dims are batch.")

# ---- arange, full ---------------------------------------------------------------------------


def _arange_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    d = dt.get(a["dtype"])
    if d.is_subbyte or d is dt.boolean:
        raise ShapeError(f"arange dtype must be a float or integer type of >= 8 bits, got {d.name}")
    s, e, k = a["start"], a["end"], a["step"]
    if k == 0:
        raise ShapeError("arange step cannot be 0")
    if isinstance(s, int) and isinstance(e, int):
        n: Dim = len(range(s, e, k))
    else:
        span = e - s if k > 0 else s - e
        n = _max(0, span if abs(k) == 1 else sympy.ceiling(sympy.sympify(span) / abs(k)))
    return [TensorType(d, _dims([n]))]


def _arange_ref(xs: Sequence[Tensor | None], a: Attrs) -> Tensor:
    r = _range(range(_int(a["start"], "start"), _int(a["end"], "end"), a["step"]))
    return r.to(dt.get(a["dtype"]).container)


def _full_shape(ins: Sequence[TensorType | None], a: Attrs) -> list[TensorType]:
    return [TensorType(a["dtype"], _dims(a["shape"]))]


_dtype_names = tuple(d.name for d in dt.ALL)
_op("arange", 0, (), _arange_shape, _arange_ref, _write_cost,
    attrs={"start": AttrSpec("dim", 0), "end": AttrSpec("dim"), "step": AttrSpec("int", 1),
           "dtype": AttrSpec("str", "i64", _dtype_names)},
    doc="arange()[start, end, step, dtype]: the 1-D sequence start, start+step, ... stopping "
        "before end (python range), converted to dtype; length max(0, ceil((end-start)/step)); "
        "start/end may be symbolic (e.g. end=S); no inputs.")
_op("full", 0, (), _full_shape,
    lambda xs, a: cast_tensor(torch.tensor(a["value"], dtype=torch.float64), dt.get(a["dtype"]))
    .expand(_ints(a["shape"], "shape")).clone(),
    _write_cost, attrs={"shape": AttrSpec("dims"), "value": AttrSpec("float"),
                        "dtype": AttrSpec("str", "f32", _dtype_names)},
    doc="full()[shape, value, dtype]: a tensor of the given (possibly symbolic) shape with every "
        "element equal to value converted to dtype by cast's rules; no inputs.")
