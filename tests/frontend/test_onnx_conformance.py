"""The ONNX backend node cases must not regress: every case the expectation file lists as
passing must still pass (a newly passing case only asks for ``--update``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# One module object per process: worker pools pickle its functions by module name.
oc = sys.modules.get("onnx_conformance")
if oc is None:
    _spec = importlib.util.spec_from_file_location("onnx_conformance", _HERE / "onnx_conformance.py")
    assert _spec is not None and _spec.loader is not None
    oc = importlib.util.module_from_spec(_spec)
    sys.modules["onnx_conformance"] = oc
    _spec.loader.exec_module(oc)

# Raised as converters land (the issue target, 1,300 of 1,884, is reached).
MIN_EXPECTED_PASSING = 1300


def test_onnx_backend_node_cases_do_not_regress() -> None:
    expected = oc.load_expected()
    passing = set(expected["passing"])
    assert len(passing) >= MIN_EXPECTED_PASSING, \
        f"expectation file lists {len(passing)} passing cases, floor is {MIN_EXPECTED_PASSING}"
    results = oc.run_all()
    missing = sorted(passing - set(results))
    assert not missing, f"cases vanished from collect_testcases(): {missing[:20]}"
    broken = sorted(n for n in passing if results[n][1] is not None)
    assert not broken, "previously passing ONNX cases now fail:\n" + "\n".join(
        f"  {n} [{results[n][0]}]: {results[n][1]}" for n in broken)
    new = sorted(n for n, (_, why) in results.items() if why is None and n not in passing)
    if new:
        print(f"note: {len(new)} case(s) now pass but are not in the expectation file; run "
              f"`python tests/frontend/onnx_conformance.py --update` ({', '.join(new[:10])}...)")
