"""Fixtures shared by the codegen tests."""
from __future__ import annotations

import os
from typing import Iterator

import pytest


@pytest.fixture(scope="module")
def kernel_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point ``SCALEFOLD_CACHE_DIR`` at a per-run temporary kernel cache for a test module
    (the user's cache stays untouched), restoring the old value afterwards."""
    root = tmp_path_factory.getbasetemp() / "sf-kernel-cache"
    old = os.environ.get("SCALEFOLD_CACHE_DIR")
    os.environ["SCALEFOLD_CACHE_DIR"] = str(root)
    yield str(root)
    if old is None:
        os.environ.pop("SCALEFOLD_CACHE_DIR", None)
    else:
        os.environ["SCALEFOLD_CACHE_DIR"] = old
