"""Session-wide test setup: seeds, the harness on sys.path, and the orphan-golden check."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

TESTS_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_ROOT))

from harness import find_orphan_goldens  # noqa: E402

_LOG = "SCALEFOLD_GOLDEN_LOG"


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))      # the cores this process may use (cgroups, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def pytest_configure(config: pytest.Config) -> None:
    # Hosts whose compiler has no AVX-512 still build and run the convolution, GEMM and
    # attention replacements (their portable loops) under test; compiled models leave them
    # out there by default (api._runs_here, tested in tests/codegen/test_c_host_gate.py).
    os.environ.setdefault("SCALEFOLD_C_PORTABLE", "1")
    if _is_worker(config):
        # Each xdist worker gets its share of the cores for torch's intra-op pool: two workers
        # with a full pool each on two cores made the MiniLM accuracy fixtures (torch-bound)
        # spin against each other. Our C kernels' OpenMP threads are left as they are, so the
        # multi-threaded kernel paths stay covered.
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        torch.set_num_threads(max(1, _cores() // workers))
    if not _is_worker(config) and _LOG not in os.environ:
        # Workers of pytest-xdist inherit this and log the goldens they use into it.
        os.environ[_LOG] = tempfile.mkdtemp(prefix="sf-goldens-")
        config._sf_golden_log = os.environ[_LOG]  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _full_run(session: pytest.Session) -> bool:
    opt = session.config.option
    if getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "lf", False) \
            or getattr(opt, "deselect", None) or getattr(opt, "exitfirst", False):
        return False
    args = [Path(a.split("::")[0]).resolve() for a in session.config.args] or [Path.cwd()]
    root = TESTS_ROOT
    return all(a == root or a == root.parent for a in args)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log_dir = getattr(session.config, "_sf_golden_log", None)
    if _is_worker(session.config) or not log_dir or not _full_run(session) or exitstatus != 0:
        return
    used: set[str] = set()
    for f in Path(log_dir).glob("used-*.txt"):
        used |= set(f.read_text().split())
    orphans = find_orphan_goldens(TESTS_ROOT, used)
    if orphans:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "orphan golden files (no test compares against them):\n  " + "\n  ".join(orphans)
        if reporter:
            reporter.write_line(msg, red=True)
        else:
            print(msg)
        session.exitstatus = 1
