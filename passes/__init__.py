"""Compression and cleanup passes over the IR (DESIGN.md §4)."""
from .counters import Counters, bump, counting

__all__ = ["Counters", "bump", "counting"]
