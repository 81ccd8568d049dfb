"""Scaled dot-product attention (family "nn")."""
from __future__ import annotations

import math
from typing import Sequence

import sympy
import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, dim_str, dims_equal
from .common import broadcast_shapes, check_dim, require, same_dtype
from .nn import opt, require_compute_float, upcast
from .registry import AttrSpec, Cost, defop, io_bytes


def _shape_str(shape: Sequence) -> str:
    return "[" + ",".join(dim_str(d) for d in shape) + "]"


def _sdpa_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    q, k, v, mask = require(ins[0], "q"), require(ins[1], "k"), require(ins[2], "v"), opt(ins, 3)
    require_compute_float(q, "q")
    same_dtype([q, k, v], "q, k and v")
    if q.rank < 3:
        raise ShapeError(f"q must be [..., H, L, D] with rank >= 3, got {q}")
    if k.rank != q.rank or v.rank != q.rank:
        raise ShapeError(f"q, k and v must have one rank, got {q}, {k}, {v}")
    for i in range(q.rank - 3):
        check_dim(q.shape[i], k.shape[i], f"batch dim {i} of q and k differ")
        check_dim(q.shape[i], v.shape[i], f"batch dim {i} of q and v differ")
    hq, hk = q.shape[-3], k.shape[-3]
    check_dim(k.shape[-3], v.shape[-3], "heads of k and v differ")
    check_dim(k.shape[-2], v.shape[-2], "source length of k and v differs")
    check_dim(q.shape[-1], k.shape[-1], "head dim of q and k differs")
    if attrs["gqa"]:
        ratio = sympy.sympify(hq) / sympy.sympify(hk)
        if ratio.is_integer is not True:
            raise ShapeError(f"with gqa, q heads {dim_str(hq)} must be a multiple of k/v heads "
                             f"{dim_str(hk)}")
    else:
        check_dim(hq, hk, "heads of q and k differ (set gqa for grouped-query attention)")
    out = q.shape[:-1] + (v.shape[-1],)
    if mask is not None:
        if mask.dtype.name != "bool" and mask.dtype != q.dtype:
            raise ShapeError(f"mask must be bool or {q.dtype.name} like q, got {mask.dtype.name}")
        scores = q.shape[:-1] + (k.shape[-2],)
        try:
            full = broadcast_shapes(mask.shape, scores)
        except ShapeError:
            full = None
        if full is None or len(full) != len(scores) or \
                not all(dims_equal(a, b) for a, b in zip(full, scores)):
            raise ShapeError(f"mask {mask} does not broadcast to the scores {_shape_str(scores)}")
    return [TensorType(q.dtype, out)]


def sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
              causal: bool, scale: float | None, gqa: bool) -> torch.Tensor:
    """softmax(q @ k^T * scale + mask) @ v computed explicitly (no dtype changes).

    A bool mask keeps True positions; a float mask is added. ``causal`` keeps j <= i
    (upper-left aligned) and combines with a mask. Rows with every position masked give 0
    (torch's safe softmax) rather than NaN.
    """
    if gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    s = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * s
    keep = None
    if causal:
        n_l, n_s = q.shape[-2], k.shape[-2]
        keep = torch.ones(n_l, n_s, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        if mask.dtype == torch.bool:
            keep = mask if keep is None else keep & mask
        else:
            scores = scores + mask
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)   # all -inf rows
    return torch.matmul(probs, v)


def _sdpa_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    q, k, v, mask = (upcast(t) for t in (xs[0], xs[1], xs[2], opt(xs, 3)))
    y = sdpa_math(q, k, v, mask, attrs["causal"], attrs["scale"], attrs["gqa"])
    return y.to(xs[0].dtype)


def _sdpa_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    q, k, v = ins[0], ins[1], ins[2]
    rows = sympy.sympify(q.numel()) / sympy.sympify(q.shape[-1])   # batch * Hq * L
    n_s = sympy.sympify(k.shape[-2])
    d, dv = sympy.sympify(q.shape[-1]), sympy.sympify(v.shape[-1])
    flops = rows * n_s * (2 * d + 2 * dv + 5)   # QK^T, PV, scale + softmax
    return Cost(sympy.expand(flops), io_bytes(ins, outs))


defop("sdpa", family="nn", inputs=(3, 4), input_names=("q", "k", "v", "mask"),
      attrs={"causal": AttrSpec("bool", False), "scale": AttrSpec("float", None),
             "gqa": AttrSpec("bool", False)},
      shape=_sdpa_shape, reference=_sdpa_ref, cost=_sdpa_cost,
      doc="Scaled dot-product attention softmax(q @ k^T * scale + mask) @ v with q [..., Hq, L, D], "
          "k [..., Hk, S, D], v [..., Hk, S, Dv] (equal batch dims) -> [..., Hq, L, Dv]. scale "
          "defaults (None) to 1/sqrt(D). The optional mask broadcasts to [..., Hq, L, S] and is "
          "either bool (True = attend) or of q's dtype (added to the scores). causal keeps only "
          "key j <= query i (upper-left aligned lower triangle, torch is_causal) and combines "
          "with a mask by AND. Without gqa Hq == Hk; with gqa Hq must be a multiple of Hk and "
          "each k/v head serves Hq/Hk consecutive q heads (torch enable_gqa). A query row with "
          "every key masked yields zeros. q, k, v share one float dtype.")
