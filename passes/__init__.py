"""Compression and cleanup passes over the IR (DESIGN.md §4)."""
from .counters import Counters, bump, counting
from .pipeline import parse_pass, register_pass, registered_passes, run_pipeline, split_pipeline

__all__ = ["Counters", "bump", "counting", "parse_pass", "register_pass", "registered_passes",
           "run_pipeline", "split_pipeline"]
