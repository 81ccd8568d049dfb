"""Small fused kernels over channels-last activations as generated C (a squeeze-excite's mean
and scale, a residual ``add``).

A CPU convolution leaves its result channels-last (NHWC memory, ``runtime/layout.py``), and a
fused kernel whose input comes that way ran its nodes as torch ops (the generated kernel reads
NCHW, and copying there and back costs more than the work). Each such op cost 7-45 µs, most
of it torch's per-op overhead: MobileNetV3-small spends about a quarter of its time in the nine
``reduce_mean`` / ``mul`` pairs of its squeeze-excite blocks. For fused kernels that may see
channels-last inputs (``runtime.layout.channels_last_values``) this module renders a second
source (``CKernel.suffix`` "_cl") working on NHWC memory directly, which the executor runs
instead of the torch ops when the inputs arrive channels-last (``runtime/ccl.py``).

Forms (``cl_form``), all f32, rank 4 [N, C, H, W] logically:

- ``mean``: one ``reduce_mean`` over H and W (keepdims or not): per image, channels in
  vectors, summed over the pixels in order, then divided by H * W;
- ``cat``: a ``concat`` (template kernel) over the channels of rank-4 inputs: per pixel, each
  input's run of channels copied in turn (in NHWC memory the channel axis is the innermost,
  so this is the contiguous concat with N * H * W rows); a DenseNet block's concat of its
  convolutions' results stays channels-last for the next convolution;
- ``ew``: a chain of elementwise ops the fused C kernels evaluate, with one output of rank 4,
  whose inputs are each the output's shape (read NHWC), per-channel ([N or 1, C, 1, 1], read
  at ``n * C + c`` or ``c``) or a single element. Per (image, pixel), the channels in an
  ``omp simd`` loop, the ops in the fused kernels' own expressions, so NaN and inf follow the
  IR's semantics.

Kernel ABI (c.py): ``p`` = the kernel's inputs (``Kernel.inputs`` order; for ``cat`` the
concat's own inputs, in order, a value given twice passed twice) then its output; ``q`` = N, C,
H * W (``cat``: N * H * W, then each input's channel count).
"""
from __future__ import annotations

import sympy

from ..ir.graph import Value
from ..ir.types import dims_equal
from .c import CKernel, _prod
from .c_pool import nhwc_reduce
from .c_quant import C_EXPR, c_node_ok
from .c_types import PRELUDE
from .schedule import Kernel

SUFFIX = "_cl"
PAR_ELEMS = 1 << 16     # elements below which a kernel runs on one thread


def _f32(v: Value | None) -> bool:
    return v is not None and v.dtype.name == "f32"


def operand_kind(v: Value, out: Value) -> str | None:
    """How an ``ew`` kernel reads input ``v`` against its rank-4 output ``out``: "full" (the
    output's shape), "chan" ([N or 1, C, 1, 1]), "one" (a single element), or None."""
    s, o = list(v.type.shape), list(out.type.shape)
    if len(s) == 4 and all(dims_equal(a, b) for a, b in zip(s, o)):
        return "full"
    if all(d == 1 for d in s):
        return "one"
    if len(s) == 4 and (s[0] == 1 or dims_equal(s[0], o[0])) and dims_equal(s[1], o[1]) and s[2] == s[3] == 1:
        return "chan"
    return None


def cl_form(k: Kernel) -> str | None:
    """"mean", "cat" or "ew" if this module renders kernel ``k`` (module docstring), else None."""
    if k.kind == "template" and k.nodes[0].op == "concat":
        n = k.nodes[0]
        out = n.outputs[0]
        if out.type.rank == 4 and n.attrs["axis"] % 4 == 1 and _f32(out) and n.inputs and \
                all(_f32(v) and v.type.rank == 4 for v in n.inputs):
            return "cat"
        return None
    if k.kind != "fused" or len(k.outputs) != 1 or k.outputs[0] is not k.nodes[-1].outputs[0]:
        return None
    out = k.outputs[0]
    if not _f32(out) or any(not _f32(v) for v in k.inputs):
        return None
    if len(k.nodes) == 1 and k.nodes[0].op == "reduce_mean":
        x = k.nodes[0].inputs[0]
        axes = k.nodes[0].attrs["axes"]
        if x.type.rank == 4 and axes is not None and sorted(a % 4 for a in axes) == [2, 3]:
            return "mean"
        return None
    if out.type.rank != 4 or not all(n.op in C_EXPR and c_node_ok(n) and len(n.outputs) == 1 for n in k.nodes):
        return None
    if any(not _f32(o) for n in k.nodes for o in n.outputs):
        return None
    if not any(operand_kind(v, out) == "full" for v in k.inputs):
        return None
    return "ew" if all(operand_kind(v, out) is not None for v in k.inputs) else None


def _mean() -> list[str]:
    return [
        "  const float *restrict x = (const float *)p[0];",
        "  float *restrict y = (float *)p[1];",
        "  const int64_t N = q[0], C = q[1], P = q[2];",
        *nhwc_reduce(False, PAR_ELEMS),
    ]


def _cat(k: Kernel) -> list[str]:
    ins = k.nodes[0].inputs
    lines = [f"  const float *restrict a{i} = (const float *)p[{i}];" for i in range(len(ins))]
    lines += [f"  float *restrict y = (float *)p[{len(ins)}];",
              "  const int64_t P = q[0];",
              "  const int64_t " + ", ".join(f"c{i} = q[{i + 1}]" for i in range(len(ins))) + ";",
              "  const int64_t C = " + " + ".join(f"c{i}" for i in range(len(ins))) + ";",
              f"  #pragma omp parallel for schedule(static) if (P * C > {PAR_ELEMS * 4})",
              "  for (int64_t i = 0; i < P; i++) {",
              "    float *restrict yr = y + i * C;"]
    for i in range(len(ins)):
        lines += [f"    memcpy(yr, a{i} + i * c{i}, (size_t)c{i} * sizeof(float));", f"    yr += c{i};"]
    lines.append("  }")
    return lines


def _ew(k: Kernel) -> list[str]:
    out = k.outputs[0]
    decl, loads, names = [], [], {}
    for i, v in enumerate(k.inputs):
        kind = operand_kind(v, out)
        decl.append(f"  const float *restrict a{i} = (const float *)p[{i}];")
        if kind == "full":
            loads.append(f"        const float l{i} = a{i}[e + c];")
        elif kind == "chan":
            stride = "0" if v.type.shape[0] == 1 else "C"
            loads.append(f"        const float l{i} = a{i}[n * {stride} + c];")
        else:
            loads.append(f"        const float l{i} = a{i}[0];")
        names[id(v)] = f"l{i}"
    body = []
    for j, n in enumerate(k.nodes):
        args = [names[id(v)] for v in n.inputs]
        body.append(f"        const float v{j} = {C_EXPR[n.op](args, n, 'float')};")
        names[id(n.outputs[0])] = f"v{j}"
    return [
        *decl,
        f"  float *restrict y = (float *)p[{len(k.inputs)}];",
        "  const int64_t N = q[0], C = q[1], P = q[2];",
        f"  #pragma omp parallel for collapse(2) schedule(static) if (N * C * P > {PAR_ELEMS})",
        "  for (int64_t n = 0; n < N; n++)",
        "  for (int64_t i = 0; i < P; i++) {",
        "    const int64_t e = (n * P + i) * C;",
        "    #pragma omp simd",
        "    for (int64_t c = 0; c < C; c++) {",
        *loads,
        *body,
        f"        y[e + c] = {names[id(out)]};",
        "    }",
        "  }",
    ]


def render_cl(k: Kernel) -> CKernel:
    """C source of the channels-last alternative of fused kernel ``k`` (``cl_form`` is not
    None); ABI in the module docstring."""
    form = cl_form(k)
    assert form is not None
    x = k.nodes[0].inputs[0] if form == "mean" else k.outputs[0]
    n, c, h, w = x.type.shape
    lines = {"mean": _mean, "cat": _cat, "ew": _ew}[form](*(() if form == "mean" else (k,)))
    src = "\n".join([PRELUDE, "void sf_kernel(void **restrict p, const int64_t *restrict q) {", *lines, "}"]) + "\n"
    if form == "cat":
        params = [sympy.sympify(_prod([n, h, w]))] + [sympy.sympify(v.type.shape[1]) for v in k.nodes[0].inputs]
    else:
        params = [sympy.sympify(n), sympy.sympify(c), sympy.sympify(_prod([h, w]))]
    return CKernel(k, src, params, None, SUFFIX)
