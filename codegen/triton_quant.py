"""``quantize`` in fused Triton kernels (per-tensor and last-axis scales and zero points).

The Triton twin of ``c_quant.py``: after a norm, ``quantize`` becomes the epilogue of the
norm's row kernel, so ``layer_norm -> quantize`` (and ``add -> layer_norm -> quantize``) is one
GPU kernel emitting int8 codes (OutlierTune step 4). Arithmetic follows the reference:
``x / scale`` correctly rounded in f32, round half to even, NaN -> 0, ``+ zero_point``, clamp
to the dtype's or the ``bits`` range. f64 inputs run the reference (``tl.div_rn`` is f32 only).
"""
from __future__ import annotations

from typing import Sequence

from ..ir.graph import Node
from .c_quant import code_range, quantize_renderable
from .triton_expr import EXPR, PRELUDE, node_renderable

QUANT_PRELUDE = PRELUDE + r'''

@triton.jit
def _sf_quant(x, s, z, lo, hi):
    x, s = tl.broadcast(x, s)
    v = _sf_round(tl.div_rn(x, s))
    v = tl.where(v != v, 0.0, v) + z
    return tl.minimum(tl.maximum(v, lo), hi)
'''


def quantize_expr(a: Sequence[str], n: Node, ct: str) -> str:
    """One code from loaded x, scale (and zero point), as an exactly integral f32."""
    lo, hi = code_range(n)
    z = f"{a[2]}.to(tl.float32)" if len(a) > 2 else "0.0"
    return f"_sf_quant({a[0]}.to(tl.float32), {a[1]}.to(tl.float32), {z}, {float(lo)!r}, {float(hi)!r})"


T_EXPR = {**EXPR, "quantize": quantize_expr}


def t_node_ok(n: Node) -> bool:
    """Whether a fused Triton kernel evaluates ``n``: the elementwise table, or a quantize with
    per-tensor / last-axis f32-representable arithmetic and 8/16-bit codes."""
    if n.op != "quantize":
        return node_renderable(n)
    if not quantize_renderable(n):
        return False
    lo, hi = code_range(n)
    floats_ok = all(v.dtype.name in ("f32", "f16", "bf16") for v in n.inputs[:2])
    return floats_ok and max(abs(lo), abs(hi)) <= 1 << 24
