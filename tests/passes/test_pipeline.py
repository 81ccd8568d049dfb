"""Pipeline strings and the pass registry."""
from __future__ import annotations

import pytest

from scalefold.ir.errors import ScalefoldError
from scalefold.ir.parser import parse
from scalefold.passes import parse_pass, register_pass, run_pipeline, split_pipeline
from scalefold.passes import pipeline as pl


def test_parse_pass_options() -> None:
    assert parse_pass("smooth") == ("smooth", {})
    assert parse_pass("smooth(alpha=0.8)") == ("smooth", {"alpha": 0.8})
    assert parse_pass("quant_weights(format=int4, group=128, sym=False)") == \
        ("quant_weights", {"format": "int4", "group": 128, "sym": False})
    for bad in ("9x", "a(1)", "a(b=)"):
        with pytest.raises(ScalefoldError):
            parse_pass(bad)


def test_split_pipeline() -> None:
    assert split_pipeline("a,b(x=1,y=2), c") == ["a", "b(x=1,y=2)", "c"]


def test_unknown_pass_is_named() -> None:
    g = parse("graph @g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = relu(%x)\n  return %0\n}\n")
    with pytest.raises(ScalefoldError, match="unknown pass.*frob"):
        run_pipeline(g, ["frob(a=1)"])


def test_registered_pass_runs_on_a_clone_and_is_verified(monkeypatch) -> None:
    monkeypatch.setattr(pl, "_PASSES", dict(pl._PASSES))
    seen = {}

    @register_pass("test_noop")
    def _noop(graph, k: int = 0):
        seen["k"] = k
        return graph

    g = parse("graph @g(%x: f32[2]) -> (f32[2]) {\n  %0: f32[2] = relu(%x)\n  return %0\n}\n")
    out = run_pipeline(g, "test_noop(k=3)")
    assert seen == {"k": 3} and out == g and out is not g
    with pytest.raises(ScalefoldError, match="bad options"):
        run_pipeline(g, "test_noop(q=1)")
