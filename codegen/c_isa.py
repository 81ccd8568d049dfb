"""The instruction-set choice of a generated C kernel, written once.

A vectorised kernel's source carries every form of its hot loop and lets the compiler's own
predefined macros pick one, so the same source builds on any x86 host (and elsewhere):

    #if <AVX-512 macros> && !defined(SF_NO_VEC)       FLAG 1, the AVX-512 form
    #elif <AVX2 + FMA macros> && !defined(SF_NO_VEC)  FLAG 0, the AVX2 form (where there is one)
    #else                                             FLAG 0, portable C
    #endif

``SF_NO_VEC`` (the kernel config's ``vec=False``) forces the portable form, which the tests use
to check the vector forms against it. ``CKernel.needs`` names the macros whose absence leaves a
replacement of a library call on its portable loops (``api.build_c`` then keeps the library).
"""
from __future__ import annotations

from typing import Sequence

# what the AVX-512 forms test (the int8 / 4-bit kernels add BW and VNNI), and what the AVX2
# forms of the tile loops (c_tile, c_conv_dw, c_f32gemv, c_w4_avx2) test
VEC_MACRO: tuple[str, ...] = ("__AVX512F__",)
TILE_MACROS: tuple[str, ...] = ("__AVX2__", "__FMA__")


def _test(macros: Sequence[str]) -> str:
    return " && ".join(f"defined({m})" for m in macros) + " && !defined(SF_NO_VEC)"


def isa_variants(flag: str, avx512: Sequence[str], portable: Sequence[str],
                 avx2: Sequence[str] | None = None, *, avx512_needs: Sequence[str] = VEC_MACRO,
                 avx2_flag: str | None = None) -> list[str]:
    """Preprocessor lines choosing between the forms of one kernel's vector code.

    Pre: ``avx512`` / ``avx2`` / ``portable`` are lines of C, each a complete alternative
    (the same function names, the same results per output); ``avx2`` None means the kernel has
    no AVX2 form and such hosts take ``portable``.
    Post: ``flag`` is defined 1 in the AVX-512 branch and 0 otherwise; ``avx2_flag``, when
    given, is defined 1 in the AVX2 branch only; both vector branches include immintrin.h.
    """
    out = [f"#if {_test(avx512_needs)}", f"#define {flag} 1", "#include <immintrin.h>", *avx512]
    if avx2 is not None:
        out += [f"#elif {_test(TILE_MACROS)}", f"#define {flag} 0"]
        if avx2_flag:
            out.append(f"#define {avx2_flag} 1")
        out += ["#include <immintrin.h>", *avx2]
    return out + ["#else", f"#define {flag} 0", *portable, "#endif"]
