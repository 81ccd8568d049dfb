"""Every ONNX backend node case the interpreter passes also passes when compiled with the C
backend (all of them: compiling the whole set takes well under a minute on 2 cores)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "frontend" / "onnx_conformance.py"
# One module object per process: worker pools pickle its functions by module name.
oc = sys.modules.get("onnx_conformance")
if oc is None:
    _spec = importlib.util.spec_from_file_location("onnx_conformance", _PATH)
    assert _spec is not None and _spec.loader is not None
    oc = importlib.util.module_from_spec(_spec)
    sys.modules["onnx_conformance"] = oc
    _spec.loader.exec_module(oc)

# Cases the interpreter passes that the C target may fail, with the reason. Empty: none.
C_EXCLUDED: dict[str, str] = {}


def test_interpreter_passing_cases_pass_on_c(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCALEFOLD_CACHE_DIR", str(tmp_path / "cache"))
    passing = set(oc.load_expected()["passing"]) - set(C_EXCLUDED)
    results = oc.run_all(target="c", only=passing)
    assert set(results) == passing
    broken = sorted(n for n, (_, why) in results.items() if why is not None)
    assert not broken, f"{len(broken)} case(s) pass on the interpreter but fail on C:\n" + "\n".join(
        f"  {n} [{results[n][0]}]: {results[n][1]}" for n in broken)
