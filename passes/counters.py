"""Rule counters: how often each rewrite rule of each pass fired (``counters[pass][rule]``).

Passes call :func:`bump`; whoever runs them (the PassManager, or a test) installs a
:class:`Counters` with :func:`counting`. A test that asserts on counters fails when a rule
silently stops firing.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections import defaultdict
from typing import Iterator


class Counters:
    """Nested counts ``self[pass_name][rule] -> int``; missing entries read as 0."""

    def __init__(self) -> None:
        self._c: dict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))

    def bump(self, pass_name: str, rule: str, n: int = 1) -> None:
        self._c[pass_name][rule] += n

    def __getitem__(self, pass_name: str) -> dict[str, int]:
        return dict(self._c.get(pass_name, {}))

    def get(self, pass_name: str, rule: str) -> int:
        return self._c.get(pass_name, {}).get(rule, 0)

    def total(self, pass_name: str) -> int:
        return sum(self._c.get(pass_name, {}).values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {p: dict(sorted(r.items())) for p, r in sorted(self._c.items())}

    def merge(self, other: "Counters") -> None:
        for p, rules in other._c.items():
            for r, n in rules.items():
                self._c[p][r] += n

    def __repr__(self) -> str:
        return f"Counters({self.as_dict()!r})"


_active: contextvars.ContextVar[Counters | None] = contextvars.ContextVar("scalefold_counters",
                                                                           default=None)


@contextlib.contextmanager
def counting(counters: Counters | None = None) -> Iterator[Counters]:
    """Collect every :func:`bump` made inside the block into ``counters`` (a new one by default)."""
    c = counters if counters is not None else Counters()
    token = _active.set(c)
    try:
        yield c
    finally:
        _active.reset(token)


def bump_all(counters: Counters) -> None:
    """Add every count of ``counters`` (e.g. of a trial run under :func:`counting`) into the
    active counters, if any."""
    c = _active.get()
    if c is not None:
        c.merge(counters)


def bump(pass_name: str, rule: str, n: int = 1) -> None:
    """Count ``n`` applications of ``rule`` in ``pass_name`` into the active counters, if any."""
    c = _active.get()
    if c is not None:
        c.bump(pass_name, rule, n)
