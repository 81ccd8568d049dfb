"""The wall-clock timer of ``api.demo`` and of every CPU benchmark in ``benchmarks/``."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``iters`` calls after ``warmup``
    untimed ones (which also build caches and fault pages in)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


__all__ = ["median_ms"]
