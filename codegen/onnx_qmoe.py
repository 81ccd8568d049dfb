"""IR ``qmoe`` -> ONNX, keeping the experts compressed where ONNX can.

Integer codes (u4 / i4 from opset 21, u8 / i8 always) stay codes. Each expert matrix is stored
transposed, [E, K, N], as an initializer of its own element type, with its group scales (and
zero points) [E, G, N]. The graph dequantises them (``onnx_quant.dequant``: a blocked
DequantizeLinear along K where it computes the IR formula exactly, else the formula) into the
dense formulation of a float ``moe`` (``onnx_quant._moe``). Per-channel experts (group 0) are
one block of all of K.

FP4 E2M1 codes (onnxruntime 1.32 has no FLOAT4E2M1 kernels), and 4-bit codes below opset 21,
are folded instead: each expert matrix is dequantised once at export with the op's own
reference formula (:func:`~scalefold.ir.ops.moe_quant.dequant_experts`, bit-identical to the
interpreter) into a float constant. Codes, scales or zeros that are not constants raise an
:class:`ExportError` naming the node.
"""
from __future__ import annotations

from types import SimpleNamespace

from ..ir import dtypes as dt
from ..ir.graph import Node, Value
from ..ir.ops.moe_quant import MATS, dequant_experts
from ..ir.types import TensorType
from .onnx_build import DTYPE_MIN_OPSET, Emitter
from .onnx_ops import compute_dtype, render
from .onnx_quant import _moe, dequant


def _in_graph(cx: Emitter, q: Value, s: Value, z: Value | None, group: int, cd: dt.DType,
              keep: list) -> str | None:
    """The dequantised transposed experts [E, K, N] in ``cd``, computed in the graph from code
    initializers; None where the codes must be folded to floats at export (module doc)."""
    if q.dtype.is_float or cx.opset < DTYPE_MIN_OPSET.get(q.dtype.name, 0):
        return None
    e, n, k = q.type.shape
    block = group if group > 0 else k

    def t(v: Value) -> str:
        return cx.derived(v, "T", lambda x: x.permute(0, 2, 1).contiguous(), v.dtype)
    sv = Value(TensorType(s.dtype, (e, s.type.shape[2], n)))
    keep.append(sv)
    return dequant(cx, t(q), q.dtype, t(s), sv, t(z) if z is not None else "",
                   z.dtype if z is not None else None, (e, k, n), 1, block, cd)


@render("qmoe")
def _qmoe(cx: Emitter, node: Node) -> list[str]:
    ins = list(node.inputs) + [None] * (12 - len(node.inputs))
    a = node.attrs
    weights: list[Value | None] = []
    wts: dict[str, str] = {}
    keep: list = []
    cx.keep_alive(keep)
    cd = compute_dtype(ins[0].dtype)
    for j, m in enumerate(MATS):
        q, s, z = ins[2 + 3 * j: 5 + 3 * j]
        if q is None:
            weights.append(None)
            continue
        if not all(v is None or v.is_const for v in (q, s, z)):
            raise cx.fail(f"qmoe {m} codes/scales/zeros must be constants to be exported")
        name = _in_graph(cx, q, s, z, a["group"], cd, keep)
        if name is not None:
            wts[m] = name
            weights.append(q)        # only its shape is read: the dense MatMuls take ``wts``
            continue
        w = dequant_experts(q.const, s.const, None if z is None else z.const, a["group"],
                            a["wtype"] == "f4e2m1")
        d = dt.f64 if w.dtype == dt.f64.container else dt.f32
        weights.append(Value(TensorType(d, tuple(w.shape)), name=f"{q.name or m}_dq", const=w))
    keep.append(weights)
    stand_in = SimpleNamespace(inputs=[ins[0], ins[1], *weights, ins[11]], attrs=a)
    return _moe(cx, stand_in, wts)  # type: ignore[arg-type]
