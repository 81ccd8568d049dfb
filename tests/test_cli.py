"""The command line: the demo prints the built-in example's IR and runs it."""
from __future__ import annotations

import subprocess
import sys

from harness import assert_golden
from scalefold.cli import EXAMPLE_IR, main
from scalefold.ir.parser import parse


def test_example_ir_golden() -> None:
    assert_golden(str(parse(EXAMPLE_IR)), "goldens/example_mlp.golden")


def test_demo_prints_ir_and_runs(capsys) -> None:
    assert main(["demo", "--batch", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @example_mlp(%x: f32[B,64]) -> (f32[B,64]) {")
    assert "output (5, 64)" in out


def test_console_entry_point_bad_verb_exits_nonzero() -> None:
    r = subprocess.run([sys.executable, "-m", "scalefold", "frobnicate"], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr
