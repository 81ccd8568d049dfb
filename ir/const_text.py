"""Constant data in IR text: exact literals, generator forms and tensors supplied by hash.

The parser hands each ``#name = const TYPE INIT`` here once it has read INIT; errors are
ParseErrors without a line, to which the parser adds the line.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Mapping

import torch

from . import dtypes as dt
from .errors import ParseError
from .graph import Value, tensor_hash
from .types import TensorType

# Constants this process printed as hashes, by hash, for as long as their graphs hold them:
# parse(str(g)) then reads back g's weights without constants= (the hash still checks them).
_PRINTED: "weakref.WeakValueDictionary[str, torch.Tensor]" = weakref.WeakValueDictionary()


MAX_GENERATED = 1 << 30     # elements of a generator-form constant (randn(...) etc.)


def remember(digest: str, tensor: torch.Tensor) -> None:
    """Record a constant the printer wrote as ``sha256:digest``."""
    _PRINTED[digest.lower()] = tensor


class PrintedConstants(Mapping[str, torch.Tensor]):
    """``constants=`` of a parse given none: the tensors this process printed as hashes, by
    hash, until their graphs are collected."""

    def __getitem__(self, key: str) -> torch.Tensor:
        t = _PRINTED.get(key.lower()) if isinstance(key, str) else None
        if t is None:
            raise KeyError(key)
        return t

    def __iter__(self):
        return iter(list(_PRINTED.keys()))

    def __len__(self) -> int:
        return len(_PRINTED)


def _flatten(v: Any, shape: tuple[int, ...], path: str = "") -> list[Any]:
    if not shape:
        if isinstance(v, tuple):
            raise ParseError(f"literal nests deeper than the type's rank at {path or 'top'}")
        return [v]
    if not isinstance(v, tuple) or len(v) != shape[0]:
        n = len(v) if isinstance(v, tuple) else "a scalar"
        raise ParseError(f"literal has {n} entries at {path or 'top'}, the type wants {shape[0]}")
    out: list[Any] = []
    for i, x in enumerate(v):
        out += _flatten(x, shape[1:], f"{path}[{i}]")
    return out


def literal_tensor(v: Any, t: TensorType) -> torch.Tensor:
    """The tensor a literal (a scalar or nested tuples from the attribute-value reader) stands
    for, in ``t``'s container; the nesting must match ``t``'s shape exactly."""
    shape = tuple(int(d) for d in t.shape)
    flat = _flatten(v, shape)
    d = t.dtype
    for x in flat:
        if d.name == "bool":
            ok = isinstance(x, bool) or (isinstance(x, int) and x in (0, 1))
        elif d.is_float:
            ok = isinstance(x, (int, float)) and not isinstance(x, bool)
        else:
            lo, hi = d.int_range()
            ok = isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi
        if not ok:
            raise ParseError(f"literal element {x!r} does not fit {d.name}")
    src = torch.bool if d.name == "bool" else (torch.float64 if d.is_float else torch.int64)
    return dt.to_container(torch.tensor(flat, dtype=src).reshape(shape), d)


GENERATORS: dict[str, dict[str, Any]] = {
    "randn": {"seed": None, "std": 1.0, "mean": 0.0},
    "uniform": {"seed": None, "low": 0.0, "high": 1.0},
    "randint": {"seed": None, "low": 0, "high": None},
    "zeros": {}, "ones": {}, "arange": {},
    "full": {"value": None},
}


def generate(kind: str, args: Mapping[str, Any], t: TensorType) -> torch.Tensor:
    """Data of a generator form (``randn(seed=0, std=0.02)`` etc.) in ``t``'s container.

    Random forms draw float32 (randn, uniform) or int64 (randint) from a
    ``torch.Generator().manual_seed(seed)`` and then convert, so one seed gives the same
    values whatever the declared dtype."""
    spec = GENERATORS[kind]
    for k in args:
        if k not in spec:
            raise ParseError(f"{kind}: unknown argument {k!r} (known: {', '.join(spec) or 'none'})")
    a = {k: args.get(k, dflt) for k, dflt in spec.items()}
    for k, v in a.items():
        if v is None:
            raise ParseError(f"{kind}: missing argument {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ParseError(f"{kind}: argument {k!r} must be a number, got {v!r}")
        if not math.isfinite(v) or (isinstance(v, int) and abs(v) >= 2 ** 63):
            raise ParseError(f"{kind}: argument {k!r} must be finite (an integer below 2^63), got {v!r}")
    if "seed" in a and (not isinstance(a["seed"], int) or not 0 <= a["seed"] < 2 ** 63):
        raise ParseError(f"{kind}: seed must be a non-negative integer, got {a['seed']!r}")
    if not t.is_static:
        raise ParseError(f"{kind}: a generated constant needs a static shape, got {t}")
    if t.numel() > MAX_GENERATED:
        raise ParseError(f"{kind}: {t} has {t.numel()} elements, more than the {MAX_GENERATED} a "
                         f"generated constant may have")
    shape = tuple(int(d) for d in t.shape)
    gen = torch.Generator().manual_seed(int(a["seed"])) if "seed" in a else None
    if kind == "randn":
        x = torch.randn(shape, generator=gen) * a["std"] + a["mean"]
    elif kind == "uniform":
        x = torch.rand(shape, generator=gen) * (a["high"] - a["low"]) + a["low"]
    elif kind == "randint":
        if not (isinstance(a["low"], int) and isinstance(a["high"], int) and a["low"] < a["high"]):
            raise ParseError(f"randint: needs integers low < high, got {a['low']!r}, {a['high']!r}")
        x = torch.randint(a["low"], a["high"], shape, generator=gen, dtype=torch.int64)
    elif kind == "arange":
        x = torch.arange(t.numel(), dtype=torch.int64).reshape(shape)  # type: ignore[arg-type]
    else:
        fill = {"zeros": 0, "ones": 1}.get(kind, a.get("value"))
        x = torch.full(shape, fill, dtype=torch.int64 if isinstance(fill, int) else torch.float64)
    return dt.to_container(x, t.dtype)


def lookup(constants: Mapping[str, Any], name: str, digest: str | None, t: TensorType) -> torch.Tensor:
    """The supplied tensor of constant ``#name`` (keyed by hash or by name), converted to
    ``t``'s container; its shape, and its content hash when the text gives one, must match.
    ``digest=None`` is the ``param`` form: looked up by name only."""
    keys = (digest, "sha256:" + digest, name, "#" + name) if digest else (name, "#" + name)
    for key in keys:
        if key in constants:
            x = constants[key]
            break
    else:
        if digest is None:
            raise ParseError(f"missing constant #{name} (param): pass it in constants= by name")
        raise ParseError(f"missing constant #{name} (sha256:{digest}): pass it in constants= "
                         f"by hash or by name")
    if isinstance(x, Value) and x.const is not None:
        x = x.const
    x = torch.as_tensor(x).detach().cpu()
    if tuple(x.shape) != tuple(t.shape):
        raise ParseError(f"constant #{name}: supplied tensor has shape {list(x.shape)}, "
                      f"the text says {t}")
    if x.dtype != t.dtype.container:
        x = dt.to_container(x, t.dtype)
    x = x.contiguous()
    got = tensor_hash(x, t)
    if digest is not None and got.lower() != digest.lower():
        raise ParseError(f"constant #{name}: supplied tensor has hash {got}, the text says {digest}")
    return x
