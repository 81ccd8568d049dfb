"""Checks of ``quant_weights`` options that the pipeline's annotation check cannot see: values
inside ``overrides``, ranges of numbers, and override keys that match no layer (a typo would
otherwise leave the layer at the pass's base setting without a word)."""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Sequence

from ..ir.errors import OptionError
from ..ir.graph import Node

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def bool_word(v: Any) -> bool | None:
    """``v`` as a bool when it is one: a bool, 0 / 1, or the words true/false/yes/no/on/off
    (any case); None for anything else."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    w = v.strip().lower() if isinstance(v, str) else None
    return (w in _TRUE) if w in _TRUE or w in _FALSE else None


def as_bool(v: Any, where: str) -> bool:
    """:func:`bool_word` of ``v``, or an OptionError naming ``where``."""
    b = bool_word(v)
    if b is None:
        raise OptionError(f"{where} must be true or false, got {v!r}")
    return b


def as_int(v: Any, where: str, lo: int | None = None) -> int:
    """``v`` as an int (an int, or a string of digits), at least ``lo``; else a ScalefoldError
    naming ``where``."""
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        v = int(v.strip())
    if isinstance(v, bool) or not isinstance(v, int):
        raise OptionError(f"{where} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise OptionError(f"{where} must be >= {lo}, got {v}")
    return v


def check_key(key: Any, where: str) -> Any:
    """An override key as given (a name substring, ``re:<pattern>`` or a layer index), with
    the pattern compiled once so that a bad one fails here, naming the key."""
    if isinstance(key, bool) or not isinstance(key, (int, str)) or key == "" or key == "re:":
        raise OptionError(f"{where}: override key must be a name, 're:<pattern>' or a layer index, got {key!r}")
    if isinstance(key, str) and key.startswith("re:"):
        try:
            re.compile(key[3:])
        except re.error as e:
            raise OptionError(f"{where}: override key {key!r} is not a valid pattern: {e}") from None
    return key


def key_matches(key: Any, names: Sequence[str], index: int | None) -> bool:
    """Whether override ``key`` selects a layer with these names (node and weight names) and
    this index among the quantisable linears (None for layers without one, e.g. moe)."""
    if isinstance(key, int):
        return index is not None and key == index
    if key.startswith("re:"):
        return any(nm and re.search(key[3:], nm) for nm in names)
    return any(nm and name_matches(key, nm) for nm in names)


def name_matches(key: str, name: str) -> bool:
    """Whether plain override ``key`` occurs in layer or weight ``name`` without cutting a
    number: "layers.1" names "layers.1.mlp" but not "layers.10.mlp" (a plain substring test
    took layers 10-19 too)."""
    at = name.find(key)
    while at >= 0:
        end = at + len(key)
        cuts = (key[-1:].isdigit() and end < len(name) and name[end].isdigit()) or \
            (key[:1].isdigit() and at > 0 and name[at - 1].isdigit())
        if not cuts:
            return True
        at = name.find(key, at + 1)
    return False


def check_all_used(keys: Iterable[Any], linears: Sequence[Node], moes: Sequence[Node], where: str) -> None:
    """A ScalefoldError for the first override key that selects no quantisable linear (by
    index, node name or weight name) and no moe (by node or expert weight name), listing a few
    of the names there are."""
    def names(n: Node) -> list[str]:
        ins = n.inputs[1:2] if n.op == "linear" else n.inputs[1:5]
        return [n.name or ""] + [v.name or "" for v in ins if v is not None]
    layers = [(names(n), i) for i, n in enumerate(linears)] + [(names(n), None) for n in moes]
    for key in keys:
        if not any(key_matches(key, nm, i) for nm, i in layers):
            seen = [nm for nm_list, _ in layers for nm in nm_list if nm][:6]
            idx = f", indices 0..{len(linears) - 1}" if linears else ""
            raise OptionError(
                f"{where}: override {key!r} matches no quantisable layer ({len(linears)} linears{idx}"
                f"{f', {len(moes)} moe' if moes else ''}; names include {', '.join(seen) or 'none'})")


def iter_once(x: Any) -> bool:
    """Whether ``x`` is a one-pass iterator (a generator, ``iter(list)``, ...) rather than a
    container, a path or saved statistics that can be read again."""
    return not isinstance(x, (list, tuple, str, bytes, dict, os.PathLike)) and hasattr(x, "__next__")


__all__ = ["as_bool", "as_int", "bool_word", "check_all_used", "check_key", "iter_once", "key_matches",
           "name_matches"]
