"""Object-detection ops with exact ONNX semantics: roi_align (ONNX RoiAlign) and nms (ONNX
NonMaxSuppression).

roi_align pools one [C, output_height, output_width] feature per region of interest by
bilinear sampling. Its sampling grid depends on each region's size (``sampling_ratio`` 0), so
the reference groups the regions by grid size; in ``avg`` mode the pooling is separable (one
interpolation matrix per axis, validity masks included), in ``max`` mode every weighted tap is
gathered, as ONNX defines the maximum over the four weighted taps of each sample.

nms keeps, per (batch, class), the boxes whose score passes the threshold, in descending score
order (ties: lower box index first), dropping each box whose IoU with an already kept one
exceeds the IoU threshold, up to ``max_output_boxes_per_class``. Its output size is data
dependent: the ``count`` attribute is the symbol for it, as for nonzero.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ShapeError
from ..graph import Attrs
from ..types import TensorType, dims_equal
from .common import require
from .registry import AttrSpec, Cost, defop, io_bytes, numel


# ---- roi_align ----------------------------------------------------------------------------
def _roi_align_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    x, rois, bi = require(ins[0], "x"), require(ins[1], "rois"), require(ins[2], "batch_indices")
    if x.rank != 4 or not x.dtype.is_float:
        raise ShapeError(f"roi_align needs a float x [N, C, H, W], got {x}")
    if rois.rank != 2 or not dims_equal(rois.shape[1], 4) or rois.dtype != x.dtype:
        raise ShapeError(f"roi_align rois must be [num_rois, 4] of x's dtype {x.dtype.name}, got {rois}")
    if bi.rank != 1 or not bi.dtype.is_int or not dims_equal(bi.shape[0], rois.shape[0]):
        raise ShapeError(f"roi_align batch_indices must be an integer [num_rois] matching rois {rois}, got {bi}")
    if attrs["output_height"] < 1 or attrs["output_width"] < 1:
        raise ShapeError(f"roi_align output size must be positive, got "
                         f"{attrs['output_height']} x {attrs['output_width']}")
    return [TensorType(x.dtype, (rois.shape[0], x.shape[1], attrs["output_height"], attrs["output_width"]))]


def _axis_samples(start: torch.Tensor, size: torch.Tensor, bins: int, grid: int, extent: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per region (rows of ``start`` / ``size``), the samples of one axis: [R, bins, grid] low and
    high indices, their weights, and validity (inside [-1, extent]), as ONNX RoiAlign places and
    clamps them."""
    b = torch.arange(bins, dtype=torch.float64, device=start.device).view(1, bins, 1)
    g = torch.arange(grid, dtype=torch.float64, device=start.device).view(1, 1, grid)
    bin_size = (size / bins).view(-1, 1, 1)
    pos = start.view(-1, 1, 1) + b * bin_size + (g + 0.5) * bin_size / grid
    valid = (pos >= -1.0) & (pos <= extent)
    pos = pos.clamp_min(0.0)
    low = pos.floor().long()
    edge = low >= extent - 1
    low = torch.where(edge, torch.full_like(low, extent - 1), low)
    high = torch.where(edge, low, low + 1)
    pos = torch.where(edge, low.to(pos.dtype), pos)
    frac = pos - low
    return low, high, frac, valid


def _roi_align_group(x: torch.Tensor, bi: torch.Tensor, sy, sx, gh: int, gw: int, mode: str) -> torch.Tensor:
    """Pooled features [R, C, PH, PW] of regions sharing one sampling grid (gh x gw)."""
    n, c, h, w = x.shape
    ylo, yhi, ly, vy = sy
    xlo, xhi, lx, vx = sx
    r, ph, pw = ylo.shape[0], ylo.shape[1], xlo.shape[1]
    if gh == 0 or gw == 0:
        return x.new_zeros((r, c, ph, pw))
    if mode == "avg":
        # separable: A_y [R, PH, H] and A_x [R, PW, W] sum the weighted taps of each bin
        ay = x.new_zeros((r, ph, h))
        wy = (1.0 - ly) * vy, ly * vy
        for idx, wt in ((ylo, wy[0]), (yhi, wy[1])):
            ay.scatter_add_(2, idx.reshape(r, ph, gh), wt.reshape(r, ph, gh))
        ax = x.new_zeros((r, pw, w))
        wx = (1.0 - lx) * vx, lx * vx
        for idx, wt in ((xlo, wx[0]), (xhi, wx[1])):
            ax.scatter_add_(2, idx.reshape(r, pw, gw), wt.reshape(r, pw, gw))
        out = x.new_empty((r, c, ph, pw))
        step = max(1, (1 << 24) // max(c * h * w, 1))
        for s in range(0, r, step):
            xs = x[bi[s:s + step]]
            out[s:s + step] = torch.einsum("rph,rchw,rqw->rcpq", ay[s:s + step], xs, ax[s:s + step])
        return out / float(gh * gw)
    # max: the largest weighted tap of each sample, then the largest sample of each bin
    out = x.new_empty((r, c, ph, pw))
    flat = x.reshape(n, c, h * w)
    per = c * ph * gh * pw * gw * 4
    step = max(1, (1 << 24) // max(per, 1))
    for s in range(0, r, step):
        e = slice(s, s + step)
        k = ylo[e].shape[0]
        best = None
        for yi, wyv in ((ylo[e], (1.0 - ly[e]) * vy[e]), (yhi[e], ly[e] * vy[e])):
            for xi, wxv in ((xlo[e], (1.0 - lx[e]) * vx[e]), (xhi[e], lx[e] * vx[e])):
                pos = (yi.view(k, ph, gh, 1, 1) * w + xi.view(k, 1, 1, pw, gw))
                pos = torch.where((vy[e].view(k, ph, gh, 1, 1) & vx[e].view(k, 1, 1, pw, gw)), pos, 0)
                vals = torch.gather(flat[bi[e]], 2, pos.reshape(k, 1, -1).expand(k, c, -1))
                wt = (wyv.view(k, ph, gh, 1, 1) * wxv.view(k, 1, 1, pw, gw)).reshape(k, 1, -1)
                tap = (vals * wt).view(k, c, ph, gh, pw, gw)
                best = tap if best is None else torch.maximum(best, tap)
        out[e] = best.amax(dim=(3, 5))
    return out


def _roi_align_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    x, rois, bi = xs[0], xs[1], xs[2].long()
    n, c, h, w = x.shape
    ph, pw = attrs["output_height"], attrs["output_width"]
    if rois.shape[0] and (bool((bi < 0).any()) or bool((bi >= n).any())):
        raise ShapeError(f"roi_align batch_indices must lie in [0, {n}), got {bi.min().item()} to {bi.max().item()}")
    xd, rd = x.double(), rois.double()
    half = 0.5 if attrs["half_pixel"] else 0.0
    scale = attrs["spatial_scale"]
    x0, y0 = rd[:, 0] * scale - half, rd[:, 1] * scale - half
    rw, rh = rd[:, 2] * scale - half - x0, rd[:, 3] * scale - half - y0
    if not attrs["half_pixel"]:
        rw, rh = rw.clamp_min(1.0), rh.clamp_min(1.0)      # malformed regions become 1 x 1
    sr = attrs["sampling_ratio"]
    if sr > 0:
        gh = torch.full((rois.shape[0],), sr, dtype=torch.long, device=x.device)
        gw = gh
    else:
        gh = torch.ceil(rh / ph).clamp_min(0).long()
        gw = torch.ceil(rw / pw).clamp_min(0).long()
    out = xd.new_zeros((rois.shape[0], c, ph, pw))
    keys = torch.stack([gh, gw], 1)
    for key in torch.unique(keys, dim=0).tolist() if rois.shape[0] else []:
        sel = ((keys[:, 0] == key[0]) & (keys[:, 1] == key[1])).nonzero().reshape(-1)
        sy = _axis_samples(y0[sel], rh[sel], ph, key[0], h)
        sx = _axis_samples(x0[sel], rw[sel], pw, key[1], w)
        out[sel] = _roi_align_group(xd, bi[sel], sy, sx, key[0], key[1], attrs["mode"])
    return out.to(x.dtype)


def _roi_align_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(8 * numel(outs[0]), io_bytes(ins, outs))


defop("roi_align", family="detection", inputs=3, input_names=("x", "rois", "batch_indices"),
      attrs={"mode": AttrSpec("str", "avg", ("avg", "max")),
             "output_height": AttrSpec("int", 1), "output_width": AttrSpec("int", 1),
             "sampling_ratio": AttrSpec("int", 0, doc="samples per bin and axis; 0: ceil(region / bins)"),
             "spatial_scale": AttrSpec("float", 1.0),
             "half_pixel": AttrSpec("bool", True, doc="coordinate_transformation_mode half_pixel "
                                                       "(False: output_half_pixel, RoiAlign-10)")},
      shape=_roi_align_shape, reference=_roi_align_ref, cost=_roi_align_cost,
      doc="roi_align(x, rois, batch_indices)[mode, output_height, output_width, sampling_ratio, "
          "spatial_scale, half_pixel] (ONNX RoiAlign-16): x [N, C, H, W], rois [R, 4] as (x1, y1, "
          "x2, y2) in input coordinates, batch_indices [R]; output [R, C, output_height, "
          "output_width]. Each region, scaled by spatial_scale (and shifted by half a pixel with "
          "half_pixel), is split into bins; each bin averages (avg) bilinear samples on a "
          "sampling_ratio x sampling_ratio grid (0: ceil(region size / bins) per axis), or (max) "
          "takes the largest weighted tap of any sample. Samples outside [-1, size] read 0; "
          "without half_pixel a region is at least 1 x 1. Computed in f64.")


# ---- nms ----------------------------------------------------------------------------------
def _nms_shape(ins: Sequence[TensorType | None], attrs: Attrs) -> list[TensorType]:
    boxes, scores = require(ins[0], "boxes"), require(ins[1], "scores")
    if boxes.rank != 3 or not dims_equal(boxes.shape[2], 4) or not boxes.dtype.is_float:
        raise ShapeError(f"nms boxes must be a float [batch, boxes, 4], got {boxes}")
    if scores.rank != 3 or not dims_equal(scores.shape[0], boxes.shape[0]) or \
            not dims_equal(scores.shape[2], boxes.shape[1]) or not scores.dtype.is_float:
        raise ShapeError(f"nms scores must be a float [batch, classes, boxes] matching boxes {boxes}, got {scores}")
    for i, name in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
        t = require(ins[i], name)
        if numel(t) != 1:
            raise ShapeError(f"nms {name} must hold one value, got {t}")
    return [TensorType("i64", (attrs["count"], 3))]


def _suppress(b: torch.Tensor, center: bool, thr: float) -> np.ndarray:
    """[K, K] bool: box j is suppressed by box i (ONNX's IoU test, in the boxes' dtype)."""
    if center:
        xmin, xmax = b[:, 0] - b[:, 2] / 2, b[:, 0] + b[:, 2] / 2
        ymin, ymax = b[:, 1] - b[:, 3] / 2, b[:, 1] + b[:, 3] / 2
    else:                                   # [y1, x1, y2, x2], either corner first
        ymin, ymax = torch.minimum(b[:, 0], b[:, 2]), torch.maximum(b[:, 0], b[:, 2])
        xmin, xmax = torch.minimum(b[:, 1], b[:, 3]), torch.maximum(b[:, 1], b[:, 3])
    ix0, ix1 = torch.maximum(xmin[:, None], xmin[None]), torch.minimum(xmax[:, None], xmax[None])
    iy0, iy1 = torch.maximum(ymin[:, None], ymin[None]), torch.minimum(ymax[:, None], ymax[None])
    inter = (ix1 - ix0) * (iy1 - iy0)
    area = (xmax - xmin) * (ymax - ymin)
    union = area[:, None] + area[None] - inter
    ok = (ix1 > ix0) & (iy1 > iy0) & (inter > 0) & (area[:, None] > 0) & (area[None] > 0) & (union > 0)
    return (ok & (inter / torch.where(ok, union, torch.ones_like(union)) > thr)).numpy()


def _nms_ref(xs: Sequence[torch.Tensor | None], attrs: Attrs) -> torch.Tensor:
    boxes, scores = xs[0].cpu(), xs[1].cpu()
    limit = max(int(xs[2].reshape(-1)[0].item()), 0)
    thr = float(xs[3].reshape(-1)[0].item())
    sthr = float(xs[4].reshape(-1)[0].item()) if attrs["score_filter"] else None
    out: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        for c in range(scores.shape[1]):
            s = scores[b, c]
            cand = torch.arange(s.numel()) if sthr is None else (s > sthr).nonzero().reshape(-1)
            if limit == 0 or cand.numel() == 0:
                continue
            # descending score, ties in index order (a stable sort of the ascending indices)
            order = cand[torch.sort(s[cand], descending=True, stable=True).indices]
            sup = _suppress(boxes[b, order], attrs["center_point_box"], thr)
            removed = np.zeros(order.numel(), dtype=bool)
            kept = 0
            for i in range(order.numel()):
                if removed[i]:
                    continue
                out.append((b, c, int(order[i])))
                kept += 1
                if kept >= limit:
                    break
                removed |= sup[i]
    return torch.tensor(out, dtype=torch.long, device=xs[0].device).reshape(-1, 3)


def _nms_cost(ins: Sequence[TensorType | None], outs: Sequence[TensorType], attrs: Attrs) -> Cost:
    return Cost(16 * numel(ins[1]), io_bytes(ins, outs))


_NMS = defop("nms", family="detection", inputs=5,
      input_names=("boxes", "scores", "max_output_boxes_per_class", "iou_threshold", "score_threshold"),
      attrs={"center_point_box": AttrSpec("bool", False, doc="boxes as (x_center, y_center, w, h); "
                                                              "else (y1, x1, y2, x2)"),
             "score_filter": AttrSpec("bool", False, doc="drop boxes whose score is not above "
                                                         "score_threshold (ONNX: the input is given)"),
             "count": AttrSpec("dim", doc="symbol for the number of kept boxes")},
      shape=_nms_shape, reference=_nms_ref, cost=_nms_cost,
      doc="nms(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold)"
          "[center_point_box, score_filter, count] (ONNX NonMaxSuppression-11): boxes [B, N, 4], "
          "scores [B, C, N]; output i64 [count, 3] of (batch, class, box) in batch, class and "
          "then selection order. Per (batch, class) the boxes scoring above score_threshold "
          "(all of them without score_filter) are taken by descending score (ties: lower index "
          "first); a box whose IoU with a kept one exceeds iou_threshold is dropped; at most "
          "max_output_boxes_per_class (0 or less: none) are kept.")
# the node binds its own count symbol (see OpDef.binds)
_NMS.binds = ("count",)
