"""Which compiled C alternative a library kernel runs at a binding of the sizes, and the step
of a generated convolution.

The C target renders, next to some ``library`` kernels, C functions that replace the torch
call (codegen/c.py ``render``): a float linear's GEMV (codegen/c_f32gemv.py) and GEMM
(codegen/c_f32gemm.py, named with its suffix), attention (codegen/c_sdpa.py) and
convolutions (codegen/c_conv.py, run through ``runtime/cconv.py`` on channels-last memory).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import sympy

from ..codegen.c_conv import conv_form, residual_operand
from ..codegen.c_cl import SUFFIX as CL_SUFFIX
from ..codegen.c_f32gemm import SUFFIX as GEMM_SUFFIX
from ..codegen.c_pool import POOL_OPS
from ..codegen.c_sdpa import MIN_ROWS as SDPA_MIN_ROWS
from ..codegen.schedule import Kernel
from ..ir.dim_eval import eval_dim
from .ccl import cl_step
from .cconv import conv_step

Step = Callable[[list], None]
# library ops whose generated C runs on channels-last memory through ``conv_kernel_step``
NHWC_C_OPS = frozenset({"conv", *POOL_OPS})


def compiled_alt(k: Kernel, kernels: Mapping[str, Callable], params: Mapping[str, Sequence[sympy.Expr]],
                 env: Mapping[sympy.Symbol, int]) -> str | None:
    """The name of the compiled alternative library kernel ``k`` runs at binding ``env``, or
    None for the library call: the small-M float linear where its runtime integers ``q[0]``
    (the rows) and ``q[1]`` (the most rows it takes) say it covers the binding, else the
    linear's GEMM if there is one; attention's from ``MIN_ROWS`` query rows. Convolutions and
    pools run theirs through ``conv_kernel_step``."""
    if k.kind != "library" or k.nodes[0].op in NHWC_C_OPS:
        return None
    if k.name in kernels:
        if k.nodes[0].op == "sdpa":       # below MIN_ROWS most of a tile's rows would be padding
            hq, hk, L = (int(eval_dim(e, env)) for e in params[k.name][1:4])
            rows = L * (hq // hk) if hk > 0 else L    # a tile takes the rows of a k head's q heads
            return k.name if rows >= SDPA_MIN_ROWS else None
        m, top = (int(eval_dim(e, env)) for e in params[k.name][:2])
        if m <= top:
            return k.name
    gemm = k.name + GEMM_SUFFIX
    return gemm if gemm in kernels else None


def alt_params(k: Kernel, params: Mapping[str, Sequence[sympy.Expr]]) -> list[sympy.Expr]:
    """The runtime integers of all of ``k``'s compiled alternatives (its step depends on them)."""
    return [*params.get(k.name, ()), *params.get(k.name + GEMM_SUFFIX, ())]


def conv_kernel_step(k: Kernel, slot: Mapping[int, int], kernels: Mapping[str, Callable],
                     args: Mapping[str, Sequence[int]], params: Mapping[str, Sequence[sympy.Expr]],
                     env: Mapping[sympy.Symbol, int]) -> Step:
    """The step of a convolution or pool the C backend generated (codegen/c_conv.py,
    codegen/c_pool.py): x and the residual operand go in channels-last, the result comes out
    so."""
    node, last = k.nodes[0], k.nodes[-1]
    other = residual_operand(k)
    form = conv_form(k)
    # the stem form reads x as it comes, NCHW (codegen/c_conv_stem.py)
    acts = ({slot[id(node.inputs[0])]} if form is None or form.kind != "stem" else set()) | \
        ({slot[id(other)]} if other is not None else set())
    q = [int(eval_dim(e, env)) for e in params[k.name]]
    return conv_step(kernels[k.name], args[k.name], frozenset(acts), slot[id(last.outputs[0])],
                     last.outputs[0].type.concrete(env), q)


def cl_alternative(k: Kernel, kernels: Mapping[str, Callable], params: Mapping[str, Sequence[sympy.Expr]],
                   slot: Mapping[int, int], env: Mapping[sympy.Symbol, int]) -> Callable[[list], bool] | None:
    """The step of fused kernel ``k``'s channels-last alternative (codegen/c_cl.py), if it has
    one: it runs when the inputs arrive channels-last and reports whether it did."""
    name = k.name + CL_SUFFIX
    if name not in kernels:
        return None
    q = [int(eval_dim(e, env)) for e in params[name]]
    return cl_step(kernels[name], k, slot, k.outputs[0].type.concrete(env), q)
