"""``concat`` as a generated C copy kernel (a ``template`` kernel of the C target).

Before, the C target ran ``concat`` as its torch reference (``torch.cat``). A decoder's KV
cache is a concat of the past keys and the new one at every step, and there torch's copy
cost 60-66 µs per [1, 4, 256, 64] cache with OpenMP's passive waits (the default of
benchmarks/llm_decode_cpu.py on this shared 2-core machine): it wakes the second thread for
a 263 KB copy. Here the copy is ``memcpy`` per (outer index, input), on one thread below
``PAR_BYTES`` and split over the outer index above.

Layout: every input and the output are contiguous (the executor makes strided views
contiguous before a template kernel runs). With ``O`` the product of the dims before the
axis, ``I`` the product of those after it and ``c_i`` input i's axis dim, output row ``o``
is input 0's row ``o`` (``c_0 * I`` elements), then input 1's, and so on. Sizes may be
symbolic: ``O``, ``I`` and each ``c_i`` are runtime integers (``q``) where they are not
constants, so one source serves every KV length.

Pre: ``n.op == "concat"``, inputs and output of one dtype (copied as its torch container,
one element per container item, sub-byte types included). Post: the output equals ``torch.cat`` of the inputs bit for bit (a copy).

Kernel ABI (c.py): ``p`` = the inputs in the node's order (a value given twice is passed
twice), then the output; ``q`` = the symbolic sizes in the order of ``CKernel.params``.
"""
from __future__ import annotations

from ..ir.graph import Node
from .c import CKernel, _Params, _prod
from .schedule import Kernel

PAR_BYTES = 1 << 21   # copies below this many bytes run on one thread (waking another costs more)


def concat_supported(n: Node) -> bool:
    """Whether ``n`` is a ``concat`` this module renders (module docstring's preconditions)."""
    if n.op != "concat" or not n.inputs or any(v is None for v in n.inputs):
        return False
    dtype = n.outputs[0].type.dtype
    return all(v.type.dtype is dtype for v in n.inputs)


def render_concat(k: Kernel) -> CKernel:
    """C source of concat kernel ``k`` (``concat_supported``); ``args`` name the node's own
    inputs, in order, then its output."""
    n = k.nodes[0]
    out = n.outputs[0]
    rank = out.type.rank
    ax = n.attrs["axis"] % rank
    size = out.type.dtype.container.itemsize
    q = _Params()
    shape = out.type.shape
    outer, inner = q(_prod(shape[:ax])), q(_prod(shape[ax + 1:]))
    dims = [q(v.type.shape[ax]) for v in n.inputs]
    lines = [
        "#include <string.h>",
        "void sf_kernel(void **restrict p, const int64_t *restrict q) {",
        f"  const int64_t O = {outer}, I = {inner};",
        *[f"  const int64_t c{i} = {d};" for i, d in enumerate(dims)],
        f"  const int64_t C = {' + '.join(f'c{i}' for i in range(len(dims)))};",
        f"  char *restrict y = (char *)p[{len(dims)}];",
        f"  const int64_t row = I * {size};   /* bytes per unit of the axis */",
        f"  #pragma omp parallel for schedule(static) if (O > 1 && O * C * row > {PAR_BYTES})",
        "  for (int64_t o = 0; o < O; o++) {",
        "    char *yo = y + o * C * row;",
    ]
    for i in range(len(dims)):
        lines.append(f"    memcpy(yo, (const char *)p[{i}] + o * c{i} * row, (size_t)(c{i} * row)); yo += c{i} * row;")
    lines += ["  }", "}"]
    src = "#include <stdint.h>\n" + "\n".join(lines) + "\n"
    return CKernel(k, src, list(q.exprs), [*n.inputs, out])


__all__ = ["PAR_BYTES", "concat_supported", "render_concat"]
