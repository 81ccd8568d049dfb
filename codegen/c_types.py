"""Storage types, loads and stores of IR dtypes in generated C, and the shared C prelude."""
from __future__ import annotations

from ..ir import dtypes as dt
from .c_expr import compute_type

STORAGE: dict[str, str] = {
    "f64": "double", "f32": "float", "f16": "_Float16", "bf16": "uint16_t", "i64": "int64_t",
    "i32": "int32_t", "i16": "int16_t", "i8": "int8_t", "u8": "uint8_t", "bool": "uint8_t",
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
static inline float sf_sigmoid_float(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline double sf_sigmoid_double(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline float sf_gelu_float(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752440f)); }
static inline double sf_gelu_double(double x) { return 0.5 * x * (1.0 + erf(x * 0.70710678118654752440)); }
static inline float sf_gelu_tanh_float(float x) { return 0.5f * x * (1.0f + tanhf(0.79788456080286535588f * (x + 0.044715f * x * x * x))); }
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
static inline int64_t sf_imod(int64_t a, int64_t b) { int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
/* Integer power wrapping mod 2^64 (unsigned: signed overflow is undefined); negative
   exponents give 1/a truncated toward zero, as the reference does: 1, +-1 for a = -1, else 0. */
static inline int64_t sf_ipow(int64_t a, int64_t e) {
  if (e < 0) return a == 1 ? 1 : (a == -1 ? ((e & 1) ? -1 : 1) : 0);
  uint64_t r = 1, b = (uint64_t)a;
  while (e > 0) { if (e & 1) r *= b; b *= b; e >>= 1; }
  return (int64_t)r;
}
"""
