"""The torch custom op ``scalefold::moe`` and its conversion to the IR op ``moe``.

A recognised mixture-of-experts block is exported as one call of this op (see ``hf_moe``), so
that torch.export sees an opaque node instead of the data-dependent dispatch loop (histc,
sort, index_put, grouped_mm) that the frontend cannot convert. Its arguments are the IR
``moe``'s inputs and attributes one for one; the eager kernel *is* the IR reference, and the
fake kernel only says "shaped like x", which also holds for symbolic batch / sequence dims.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from ..ir.graph import Value
from ..ir.ops import get_op
from .aten_table import ATEN, Ctx

OP_KEY = "scalefold.moe.default"


@torch.library.custom_op("scalefold::moe", mutates_args=())
def moe(x: torch.Tensor, router_w: torch.Tensor, w_gate: Optional[torch.Tensor], w_up: torch.Tensor,
        w_down: torch.Tensor, router_bias: Optional[torch.Tensor], top_k: int, normalize: bool,
        activation: str, scoring: str) -> torch.Tensor:
    """IR ``moe`` on torch tensors (gated iff ``w_gate`` is given); computed by its reference."""
    opdef = get_op("moe")
    attrs = opdef.bind_attrs({"top_k": top_k, "normalize": normalize, "activation": activation,
                              "gated": w_gate is not None, "scoring": scoring}, where="scalefold::moe")
    # The reference may return a view of an input when nothing is routed; custom ops must not alias.
    return opdef.reference([x, router_w, w_gate, w_up, w_down, router_bias], attrs).clone()


@moe.register_fake
def _moe_fake(x: torch.Tensor, router_w: torch.Tensor, w_gate: Optional[torch.Tensor],
              w_up: torch.Tensor, w_down: torch.Tensor, router_bias: Optional[torch.Tensor],
              top_k: int, normalize: bool, activation: str, scoring: str) -> torch.Tensor:
    return torch.empty_like(x)


def _convert(ctx: Ctx, n: fx.Node, a: dict) -> Value:
    w_gate, bias = ctx.opt(a["w_gate"]), ctx.opt(a["router_bias"])
    ins = [ctx.t(a["x"]), ctx.t(a["router_w"]), w_gate, ctx.t(a["w_up"]), ctx.t(a["w_down"])]
    return ctx.emit("moe", ins + ([bias] if bias is not None else []),
                    top_k=int(a["top_k"]), normalize=bool(a["normalize"]),
                    activation=str(a["activation"]), gated=w_gate is not None,
                    scoring=str(a["scoring"]))


ATEN[OP_KEY] = _convert
