"""``quantize`` as a fused C expression (per-tensor and last-axis scales and zero points).

With a scalar scale or a 1-D scale along the last axis, ``quantize`` is a broadcasting
elementwise op of (x, scale, zero_point), so the partitioner fuses it like one (``Caps.
pointwise``): after a norm it becomes the epilogue of the norm's row kernel, and
``add -> layer_norm -> quantize`` is one kernel that emits int8 codes (OutlierTune step 4).
Blocked scales, other axes and float / sub-byte code types run the reference.

Arithmetic follows the reference exactly: ``v = x / scale`` in float (double when x or the
scale is f64), round half to even (``nearbyint`` in the default rounding mode), NaN -> 0,
``+ zero_point``, clamp to the dtype's range or the ``bits`` range (Int6: [-32, 31]).
"""
from __future__ import annotations

from typing import Sequence

from ..ir.graph import Node
from ..ir.ops.common import norm_axis
from .c_expr import C_DTYPES, EXPR, compute_type, node_renderable

QUANT_OUT = frozenset({"i8", "u8", "i16", "i32"})
FLOAT_IN = frozenset({"f32", "f16", "bf16", "f64"})


def code_range(n: Node) -> tuple[int, int]:
    """[lo, hi] of the codes: the dtype's range, or that of a ``bits``-bit integer."""
    d = n.outputs[0].dtype
    bits = n.attrs["bits"]
    if bits <= 0:
        return d.int_range()
    if d.is_signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def quantize_renderable(n: Node) -> bool:
    """Per-tensor or last-axis integer quantisation of a float tensor (see module doc)."""
    if n.op != "quantize" or n.attrs["block"] != 0:
        return False
    x, scale = n.inputs[0], n.inputs[1]
    zp = n.inputs[2] if len(n.inputs) > 2 else None
    if n.outputs[0].dtype.name not in QUANT_OUT or x.dtype.name not in FLOAT_IN:
        return False
    if scale.dtype.name not in FLOAT_IN or (zp is not None and zp.dtype.name not in C_DTYPES):
        return False
    if scale.type.rank == 0:
        return True
    # A 1-D scale broadcasts like an elementwise operand only along the last axis.
    return scale.type.rank == 1 and x.type.rank >= 1 and \
        norm_axis(n.attrs["axis"], x.type.rank) == x.type.rank - 1


def quantize_expr(a: Sequence[str], n: Node, ct: str) -> str:
    """The C expression of one quantised code from loaded x, scale (and zero point)."""
    wide = any(v is not None and v.dtype.name == "f64" for v in n.inputs[:2])
    cd = "double" if wide else "float"
    f = "" if wide else "f"
    lo, hi = code_range(n)
    # The clamp runs in float when the bounds are exact there (all but 32-bit codes).
    kt = "double" if wide or max(abs(lo), abs(hi)) > 1 << 24 else "float"
    zp = f" + ({kt})({a[2]})" if len(a) > 2 else ""
    out_ct = compute_type(n.outputs[0].dtype)
    return (f"({{ {cd} _v = nearbyint{f}(({cd})({a[0]}) / ({cd})({a[1]})); "
            f"{kt} _t = ({kt})(_v != _v ? 0 : _v){zp}; "
            f"_t = _t < ({kt}){lo} ? ({kt}){lo} : (_t > ({kt}){hi} ? ({kt}){hi} : _t); "
            f"({out_ct})(int64_t)_t; }})")


# The fused-kernel expression table: the elementwise ops plus quantize, which fuses like them.
C_EXPR = {**EXPR, "quantize": quantize_expr}


def c_node_ok(n: Node) -> bool:
    """Whether a fused C kernel evaluates ``n`` (elementwise table, or a renderable quantize)."""
    return quantize_renderable(n) if n.op == "quantize" else node_renderable(n)
