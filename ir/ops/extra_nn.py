"""Less common NN ops from ONNX that do not lower exactly to the core ops: lp_pool and lrn."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..graph import Attrs
from ..types import TensorType
from .common import prod, require
from .nn import (_pool_setup, _spatial_rank, require_compute_float, spatial_param, torch_pad_spec,
                 upcast, window_out)
from .registry import AttrSpec, Cost, defop, io_bytes, numel


def _lp_pool_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    require_compute_float(x, "x")
    _spatial_rank(x)
    if attrs["p"] < 1:
        from ..errors import ShapeError
        raise ShapeError(f"lp_pool p must be >= 1, got {attrs['p']}")
    n, k, st, dl, pd = _pool_setup(x, attrs, True)
    sp = [window_out(x.shape[2 + i], *pd[i], k[i], st[i], dl[i], attrs["ceil_mode"])
          for i in range(n)]
    return [TensorType(x.dtype, (*x.shape[:2], *sp))]


def _lp_pool_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = upcast(xs[0])
    n, k, st, dl, pd = _pool_setup(x.shape, attrs, True)
    p = attrs["p"]
    outs = [window_out(int(x.shape[2 + i]), *pd[i], k[i], st[i], dl[i], attrs["ceil_mode"])
            for i in range(n)]
    spans = [dl[i] * (k[i] - 1) + 1 for i in range(n)]
    # pad (or crop) to exactly the extent the windows cover; padding is 0 and adds nothing
    rights = [(outs[i] - 1) * st[i] + spans[i] - int(x.shape[2 + i]) - pd[i][0] for i in range(n)]
    win = F.pad(x.abs() ** p, torch_pad_spec([(pd[i][0], rights[i]) for i in range(n)]))
    for i in range(n):
        win = win.unfold(2 + i, spans[i], st[i])[..., ::dl[i]]
    y = win.sum(dim=tuple(range(-n, 0))) ** (1.0 / p)
    return y.to(xs[0].dtype)


def _lp_pool_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    window = prod(spatial_param(attrs, "kernel", ins[0].rank - 2, 1))
    return Cost(numel(outs[0]) * (2 * window + 1) + numel(ins[0]), io_bytes(ins, outs))


defop("lp_pool", family="nn", inputs=1, input_names=("x",),
      attrs={"kernel": AttrSpec("ints", doc="window per spatial dim (one value = all dims)"),
             "stride": AttrSpec("ints", ()), "padding": AttrSpec("ints", ()),
             "dilation": AttrSpec("ints", ()), "ceil_mode": AttrSpec("bool", False),
             "p": AttrSpec("int", 2)},
      shape=_lp_pool_shape, reference=_lp_pool_ref, cost=_lp_pool_cost,
      doc="lp_pool(x)[kernel, stride, padding, dilation, ceil_mode, p] (ONNX LpPool): each output "
          "is (sum over its window of |x|^p)^(1/p); padding is zeros. x [N, C, *spatial] with 1-3 "
          "spatial dims; output sizes, kernel/stride/dilation/padding conventions and ceil_mode "
          "exactly as for max_pool. Float dtypes; f16/bf16 computed in f32.")


def _lrn_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x = require(ins[0], "x")
    require_compute_float(x, "x")
    if x.rank < 3:
        from ..errors import ShapeError
        raise ShapeError(f"lrn needs x [N, C, ...] of rank >= 3, got {x}")
    if attrs["size"] < 1:
        from ..errors import ShapeError
        raise ShapeError(f"lrn size must be >= 1, got {attrs['size']}")
    return [x]


def _lrn_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x = upcast(xs[0])
    size = attrs["size"]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad((x * x).movedim(1, -1), (lo, hi)).unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    y = x / (attrs["bias"] + attrs["alpha"] / size * sq) ** attrs["beta"]
    return y.to(xs[0].dtype)


def _lrn_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(numel(outs[0]) * (attrs["size"] + 5), io_bytes(ins, outs))


defop("lrn", family="nn", inputs=1, input_names=("x",),
      attrs={"size": AttrSpec("int"), "alpha": AttrSpec("float", 1e-4),
             "beta": AttrSpec("float", 0.75), "bias": AttrSpec("float", 1.0)},
      shape=_lrn_shape, reference=_lrn_ref, cost=_lrn_cost,
      doc="lrn(x)[size, alpha, beta, bias] (ONNX LRN, local response normalisation across "
          "channels): for x [N, C, ...], s[n,c] = sum of x[n,i]^2 over channels i in "
          "[c - floor((size-1)/2), c + ceil((size-1)/2)] within [0, C-1]; y = x / (bias + "
          "alpha/size * s)^beta. Output has x's type; float dtypes, f16/bf16 computed in f32.")
