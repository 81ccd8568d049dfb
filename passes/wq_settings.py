"""How ``quant_weights`` quantises one linear: the formats and methods it knows, the per-layer
setting, and the ``overrides`` option that sets it per layer."""
from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import Any, Mapping

from ..ir.errors import ScalefoldError
from .wq_options import as_bool, as_int, check_key

INT_BITS = {"int3": 3, "int4": 4, "int8": 8}
FP_FORMATS = ("fp8_e4m3", "fp4_e2m1")
FORMATS = (*INT_BITS, *FP_FORMATS)
METHODS = ("rtn", "awq", "search")


@dataclass(frozen=True)
class LayerSetting:
    """How one linear is quantised."""
    format: str
    group: int
    method: str
    sym: bool

    def bits_per_weight(self, k: int) -> float:
        """Storage per weight including the group scales (f32) and zero points: ceil(K / group)
        of each per row, so a short last group costs a whole one."""
        # as stored: int3 codes and zero points sit in 4-bit containers (u4 / i4)
        bits = {"int3": 4, "int4": 4, "int8": 8, "fp8_e4m3": 8}.get(self.format, 4)
        g = k if self.group <= 0 or self.group >= k else self.group
        zero = bits if self.format in INT_BITS and not self.sym else 0
        return bits + (32 + zero) * -(-k // g) / k


def check_setting(s: LayerSetting, where: str) -> None:
    """Raise a ScalefoldError naming ``where`` for an unknown format or method or a negative group."""
    if s.format not in FORMATS:
        raise ScalefoldError(f"{where}: unknown format {s.format!r}; want one of {', '.join(FORMATS)}")
    if s.method not in METHODS:
        raise ScalefoldError(f"{where}: method must be one of {', '.join(METHODS)}, got {s.method!r}")
    if s.group < 0:
        raise ScalefoldError(f"{where}: group must be >= 0, got {s.group}")


def parse_layer_overrides(spec: Any, base: LayerSetting) -> list[tuple[Any, LayerSetting | str]]:
    """``overrides`` of :func:`quant_weights` as (key, setting) pairs; keys as in
    :func:`~scalefold.passes.quant_common.parse_overrides` (weight-name substring, ``re:``
    pattern or linear index). A value is ``"float"`` (keep the linear), a format name, or a dict
    with any of ``format``, ``group``, ``sym`` (the rest from the pass options)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        items: list[tuple[Any, Any]] = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            k, sep, v = part.rpartition("=")
            if not sep or not k.strip():
                raise ScalefoldError(f"quant_weights: bad override {part!r}: want key=float or key=<format>")
            k = k.strip()
            key = int(k) if k.lstrip("-").isdigit() else k
            if any(key == seen for seen, _ in items):
                raise ScalefoldError(f"quant_weights: override {k!r} given twice")
            items.append((key, v.strip()))
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        raise ScalefoldError(f"quant_weights: overrides must be a dict or 'key=value,...', got {type(spec).__name__}")
    out: list[tuple[Any, LayerSetting | str]] = []
    for k, v in items:
        check_key(k, "quant_weights")
        if isinstance(v, str) and v.strip().lower() == "float":
            out.append((k, "float"))
            continue
        if isinstance(v, str):
            v = {"format": v}
        if not isinstance(v, Mapping) or not set(v) <= {"format", "group", "sym"}:
            raise ScalefoldError(f"quant_weights: override for {k!r}: want \"float\", a format or a dict of "
                                 f"format/group/sym, got {v!r}")
        at = f"quant_weights: override for {k!r}:"
        st = dc_replace(base, **{f: (as_int(x, f"{at} group", 0) if f == "group" else
                                     as_bool(x, f"{at} sym") if f == "sym" else str(x).strip().lower())
                                 for f, x in v.items()})
        check_setting(st, f"quant_weights: override for {k!r}")
        if v.get("sym") is not None and as_bool(v["sym"], f"{at} sym") and st.format in FP_FORMATS:
            raise ScalefoldError(f"{at} sym applies to the integer formats ({', '.join(INT_BITS)}); "
                                 f"{st.format} is symmetric by construction")
        out.append((k, st))
    return out


__all__ = ["FORMATS", "FP_FORMATS", "INT_BITS", "LayerSetting", "METHODS", "check_setting", "parse_layer_overrides"]
