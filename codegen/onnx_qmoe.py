"""IR ``qmoe`` -> ONNX: the quantised experts are dequantised at export time.

ONNX has no grouped/quantised MoE operator that onnxruntime runs on the CPU, so each expert
matrix (gate, up, down) is dequantised once, with the op's own reference formula
(:func:`~scalefold.ir.ops.moe_quant.dequant_experts`, bit-identical to the interpreter), into
a float constant, and the node is then exported exactly like a float ``moe`` (``onnx_quant``'s
dense formulation). The exported model therefore stores float experts: it computes the same
function as the IR, not the compressed storage. Codes, scales or zeros that are not constants
cannot be folded this way and raise an :class:`ExportError` naming the node.
"""
from __future__ import annotations

from types import SimpleNamespace

from ..ir import dtypes as dt
from ..ir.graph import Node, Value
from ..ir.ops.moe_quant import MATS, dequant_experts
from ..ir.types import TensorType
from .onnx_build import Emitter
from .onnx_ops import render
from .onnx_quant import _moe


@render("qmoe")
def _qmoe(cx: Emitter, node: Node) -> list[str]:
    ins = list(node.inputs) + [None] * (12 - len(node.inputs))
    a = node.attrs
    weights: list[Value | None] = []
    for j, m in enumerate(MATS):
        q, s, z = ins[2 + 3 * j: 5 + 3 * j]
        if q is None:
            weights.append(None)
            continue
        if not all(v is None or v.is_const for v in (q, s, z)):
            raise cx.fail(f"qmoe {m} codes/scales/zeros must be constants to be dequantised at export")
        w = dequant_experts(q.const, s.const, None if z is None else z.const, a["group"],
                            a["wtype"] == "f4e2m1")
        d = dt.f64 if w.dtype == dt.f64.container else dt.f32
        weights.append(Value(TensorType(d, tuple(w.shape)), name=f"{q.name or m}_dq", const=w))
    # The emitter caches derived initializers by id(Value): keep the stand-ins alive for the
    # whole export so that no later Value can reuse their ids.
    cx.__dict__.setdefault("_qmoe_keep", []).append(weights)
    stand_in = SimpleNamespace(inputs=[ins[0], ins[1], *weights, ins[11]], attrs=a)
    return _moe(cx, stand_in)  # type: ignore[arg-type]
