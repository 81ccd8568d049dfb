"""ATen -> IR: ``nn.EmbeddingBag`` / ``F.embedding_bag`` (``aten._embedding_bag``).

The bags are given by ``offsets`` into the flat ``indices`` (a 2-D input of fixed-length bags
arrives flattened, with ``offsets`` from an ``arange``). Each index's bag is the number of
bag starts after the first that are <= its position (one comparison table [N, bags - 1],
summed), and the looked-up rows (times ``per_sample_weights``, sum mode only) are scattered
into [bags, D] with the ``add`` or ``max`` reduction. ``padding_idx`` rows take no part: not
in the sum, the count of a mean, or the max. An empty bag gives zeros, as torch's does.

Only the first result (the bags) is produced; torch's bookkeeping outputs (offset2bag,
bag_size, max_indices) are refused where read.
"""
from __future__ import annotations

import torch.fx as fx

from ..ir import dtypes as dt
from ..ir.errors import FrontendError
from ..ir.graph import Value
from .aten_table import Ctx, aten

_END = 2 ** 63 - 1
_MODES = {0: "sum", 1: "mean", 2: "max"}


@aten("_embedding_bag.default", "_embedding_bag_forward_only.default")
def _embedding_bag(ctx: Ctx, n: fx.Node, a: dict) -> tuple[Value, None, None, None]:
    w, idx, offsets = ctx.t(a["weight"]), ctx.t(a["indices"]), ctx.t(a["offsets"])
    mode = _MODES.get(int(a.get("mode", 0)))
    psw = ctx.opt(a.get("per_sample_weights"))
    last = bool(a.get("include_last_offset", False))
    pad = a.get("padding_idx", -1)
    pad = None if pad is None or int(pad) < 0 else int(pad)
    if mode is None:
        raise FrontendError(f"{ctx.node_name}: embedding_bag mode {a.get('mode')}")
    if w.type.rank != 2 or idx.type.rank != 1 or offsets.type.rank != 1:
        raise FrontendError(f"{ctx.node_name}: embedding_bag of weight {w.type}, indices {idx.type}, "
                            f"offsets {offsets.type} (expected [V, D], [N], [bags])")
    if psw is not None and mode != "sum":
        raise FrontendError(f"{ctx.node_name}: embedding_bag per_sample_weights with mode {mode} "
                            f"(torch allows them with sum only)")
    d = w.shape[1]
    starts = ctx.emit("slice", [offsets], starts=(1,), ends=(-1 if last else _END,), axes=(0,))
    bags = starts.shape[0] + 1
    pos = ctx.emit("arange", [], start=0, end=idx.shape[0], step=1, dtype="i64")
    after = ctx.emit("ge", [ctx.emit("unsqueeze", [pos], axes=(1,)),
                            ctx.emit("unsqueeze", [ctx.cast(starts, dt.i64)], axes=(0,))])
    bag = ctx.emit("reduce_sum", [ctx.cast(after, dt.i64)], axes=(1,), keepdims=False)     # [N]
    rows = ctx.emit("embedding", [w, idx], wrap=False)                                     # [N, D]
    if psw is not None:
        rows = ctx.emit("mul", [rows, ctx.emit("unsqueeze", [ctx.cast(psw, w.dtype)], axes=(1,))])
    keep = None if pad is None else ctx.emit("ne", [idx, ctx.scalar(pad, idx.dtype)])     # [N]
    at = ctx.emit("expand", [ctx.emit("unsqueeze", [bag], axes=(1,))], shape=(idx.shape[0], d))
    # bags' sizes (real rows only), for the mean and for empty bags
    one = ctx.scalar(1, dt.i64) if keep is None else ctx.cast(keep, dt.i64)
    ones = ctx.emit("expand", [one], shape=(idx.shape[0],))
    size = ctx.emit("scatter_elements", [ctx.emit("expand", [ctx.scalar(0, dt.i64)], shape=(bags,)), bag, ones],
                    axis=0, reduction="add")
    size = ctx.emit("unsqueeze", [size], axes=(1,))                                        # [bags, 1]
    zero = ctx.scalar(0.0, w.dtype)
    if mode == "max":
        low = ctx.scalar(float("-inf"), w.dtype)
        if keep is not None:
            rows = ctx.emit("where", [ctx.emit("unsqueeze", [keep], axes=(1,)), rows, low])
        out = ctx.emit("scatter_elements", [ctx.emit("expand", [low], shape=(bags, d)), at, rows],
                       axis=0, reduction="max")
        return ctx.emit("where", [ctx.emit("gt", [size, ctx.scalar(0, dt.i64)]), out, zero]), None, None, None
    if keep is not None:
        rows = ctx.emit("where", [ctx.emit("unsqueeze", [keep], axes=(1,)), rows, zero])
    out = ctx.emit("scatter_elements", [ctx.emit("expand", [zero], shape=(bags, d)), at, rows],
                   axis=0, reduction="add")
    if mode == "mean":
        out = ctx.emit("div", [out, ctx.cast(ctx.emit("maximum", [size, ctx.scalar(1, dt.i64)]), w.dtype)])
    return out, None, None, None
