"""Storage types, loads and stores of IR dtypes in generated C, and the shared C prelude."""
from __future__ import annotations

from ..ir import dtypes as dt
from .c_expr import compute_type

STORAGE: dict[str, str] = {
    "f64": "double", "f32": "float", "f16": "_Float16", "bf16": "uint16_t", "i64": "int64_t",
    "i32": "int32_t", "i16": "int16_t", "i8": "int8_t", "u8": "uint8_t", "bool": "uint8_t",
    # 4-bit codes held one per byte (their containers), e.g. i4 activation codes of qlinear
    "i4": "int8_t", "u4": "uint8_t",
}


def storage_type(d: dt.DType) -> str:
    return STORAGE[d.name]


def load(d: dt.DType, ref: str) -> str:
    """C expression reading ``ref`` (an lvalue of storage type) as the compute type."""
    if d.name == "bf16":
        return f"sf_bf16_to_f({ref})"
    if d.name == "f16":
        return f"(float)({ref})"
    if d.name == "bool":
        return f"(int)({ref})"
    return ref


def store(d: dt.DType, expr: str) -> str:
    """C expression converting a compute-type value to ``d``'s storage type."""
    if d.name == "bf16":
        return f"sf_f_to_bf16({expr})"
    if d.name == "f16":
        return f"(_Float16)({expr})"
    if d.name == "bool":
        return f"(uint8_t)(({expr}) != 0)"
    return f"({storage_type(d)})({expr})" if compute_type(d) != storage_type(d) else expr


PRELUDE = r"""
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>

static inline float sf_bf16_to_f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t sf_f_to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16);
}
/* Vectorisable float exp and erf (libm's are scalar calls that block vectorisation).
   sf_exp_float: Cody-Waite reduction and a degree-6 polynomial, about 1 ulp; results below
   ~1.2e-38 flush to 0. sf_erf_float: odd Taylor series for |x| < 0.5, else 1 - erfc with a
   Chebyshev fit of relative error < 1.2e-7. */
static inline float sf_exp_float(float x) {
  /* x is not clamped: outside [-87, 88.72283] the fixups at the end replace whatever the
     polynomial gave (clamping first, as ternaries that gcc turns into compares and blends,
     took a quarter of the instructions). n's bits come from a float add, so no float-to-int
     conversion can overflow. Same results as with the clamps, checked on all 2^32 inputs. */
  float n = nearbyintf(x * 1.44269504088896341f);
  float r = fmaf(n, -0.693359375f, x);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  p = fmaf(p, r * r, r) + 1.0f;
  union { float f; uint32_t u; } b = { n + 12582912.0f };   /* 1.5 * 2^23 + n: n in the low bits */
  union { uint32_t u; float f; } s;
  s.u = (b.u - 0x4B400000u + 126u) << 23;   /* 2^(n-1): n = 128 stays finite */
  float y = p * s.f * 2.0f;
  y = x > 88.72283f ? INFINITY : y;
  y = x < -87.0f ? 0.0f : y;
  return x != x ? x : y;
}
static inline float sf_erf_float(float x) {
  float a = fabsf(x);
  float x2 = x * x;
  float small = x * (1.1283791670955126f + x2 * (-0.37612638903183752f + x2 * (0.11283791670955126f
              + x2 * (-0.026866170645131252f + x2 * (0.0052239776254421878f - x2 * 0.00085483270234508585f)))));
  float t = 1.0f / (1.0f + 0.5f * a);
  float poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f
             + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  float erfc = t * sf_exp_float(-a * a + poly);
  float big = 1.0f - erfc;
  big = x < 0.0f ? -big : big;
  return a < 0.5f ? small : big;
}
static inline float sf_tanh_float(float x) {
  /* tanh = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); the odd series near 0 keeps
     relative accuracy where 1 - e cancels. */
  float a = fabsf(x);
  float e = sf_exp_float(-2.0f * a);
  float big = (1.0f - e) / (1.0f + e);
  big = x < 0.0f ? -big : big;
  float x2 = x * x;
  float small = x * (1.0f + x2 * (-0.33333333333f + x2 * (0.13333333333f + x2 * (-0.053968253968f
              + x2 * 0.021869488536f))));
  float y = a < 0.125f ? small : big;
  return x != x ? x : y;
}
static inline float sf_sigmoid_float(float x) { return 1.0f / (1.0f + sf_exp_float(-x)); }
static inline double sf_sigmoid_double(double x) { return 1.0 / (1.0 + exp(-x)); }
/* silu as torch computes it, x / (1 + exp(-x)): one division, where x * sigmoid(x) took a
   division and a product (1.5-1.9x the time per element) */
static inline float sf_silu_float(float x) { return x / (1.0f + sf_exp_float(-x)); }
static inline double sf_silu_double(double x) { return x / (1.0 + exp(-x)); }
/* gelu(x) = x Phi(x) from erfc(|x| / sqrt 2) = t exp(-a^2 + P(t)) (the fit sf_erf_float uses):
   x (1 - erfc / 2) for x >= 0, x erfc / 2 below. No 1 + erf cancellation for negative x, no
   series branch, about half the operations of the erf form. +inf gives +inf, -inf NaN. */
static inline float sf_gelu_float(float x) {
  float a = fabsf(x) * 0.70710678118654752440f;
  float t = 1.0f / (1.0f + 0.5f * a);
  float poly = -1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f + t * (-0.18628806f
             + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  float h = 0.5f * t * sf_exp_float(-a * a + poly);
  return x * (x >= 0.0f ? 1.0f - h : h);
}
static inline double sf_gelu_double(double x) { return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440)); }
static inline float sf_gelu_tanh_float(float x) { return 0.5f * x * (1.0f + sf_tanh_float(0.79788456080286535588f * (x + 0.044715f * x * x * x))); }
static inline double sf_gelu_tanh_double(double x) { return 0.5 * x * (1.0 + tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x))); }
static inline float sf_softplus_float(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static inline double sf_softplus_double(double x) { return x > 20.0 ? x : log1p(exp(x)); }
static inline float sf_clamp01_float(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline double sf_clamp01_double(double x) { return x < 0.0 ? 0.0 : (x > 1.0 ? 1.0 : x); }
static inline float sf_clamp_float(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }
static inline double sf_clamp_double(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }
static inline float sf_max_float(float a, float b) { return (a != a || b != b) ? NAN : (a < b ? b : a); }
static inline double sf_max_double(double a, double b) { return (a != a || b != b) ? NAN : (a < b ? b : a); }
static inline float sf_min_float(float a, float b) { return (a != a || b != b) ? NAN : (b < a ? b : a); }
static inline double sf_min_double(double a, double b) { return (a != a || b != b) ? NAN : (b < a ? b : a); }
static inline float sf_pymod_float(float a, float b) { float r = fmodf(a, b); return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r; }
static inline double sf_pymod_double(double a, double b) { double r = fmod(a, b); return (r != 0.0 && ((r < 0.0) != (b < 0.0))) ? r + b : r; }
/* Integer division and remainder (all integer types compute in int64 here). A zero divisor
   sets sf_fault_flag, which the kernel's sf_fault() reports (the executor raises), instead of
   the SIGFPE that kills the process; b = -1 never divides: MIN / -1 wraps and MIN % -1 is 0,
   as torch gives, where the x86 division traps. */
static int sf_fault_flag __attribute__((unused));
static inline int64_t sf_idiv(int64_t a, int64_t b) {
  if (b == 0) { __atomic_store_n(&sf_fault_flag, 1, __ATOMIC_RELAXED); return 0; }
  return b == -1 ? (int64_t)(0ull - (uint64_t)a) : a / b;
}
static inline int64_t sf_irem(int64_t a, int64_t b) {
  if (b == 0) { __atomic_store_n(&sf_fault_flag, 1, __ATOMIC_RELAXED); return 0; }
  return b == -1 ? 0 : a % b;
}
static inline int64_t sf_imod(int64_t a, int64_t b) { int64_t r = sf_irem(a, b); return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
/* Integer power wrapping mod 2^64 (unsigned: signed overflow is undefined); negative
   exponents give 1/a truncated toward zero, as the reference does: 1, +-1 for a = -1, else 0. */
static inline int64_t sf_ipow(int64_t a, int64_t e) {
  if (e < 0) return a == 1 ? 1 : (a == -1 ? ((e & 1) ? -1 : 1) : 0);
  uint64_t r = 1, b = (uint64_t)a;
  while (e > 0) { if (e & 1) r *= b; b *= b; e >>= 1; }
  return (int64_t)r;
}
"""


# Appended to a kernel that divides integers: reports (and clears) a zero divisor seen since the
# last call; ``runtime/cache.load_kernel`` turns it into an error after each call.
FAULT_FN = "int sf_fault(void) { return __atomic_exchange_n(&sf_fault_flag, 0, __ATOMIC_RELAXED); }\n"
FAULT_HELPERS = ("sf_idiv(", "sf_irem(", "sf_imod(")
