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
    # positional values come back by position; the pipeline names them by the pass's signature
    assert parse_pass("smooth(0.8)") == ("smooth", {0: 0.8})
    assert parse_pass("awq_scales(4, group=64)") == ("awq_scales", {0: 4, "group": 64})
    for bad in ("9x", "a(*b)", "a(b=)", "a(1, 1=2)"):
        with pytest.raises(ScalefoldError):
            parse_pass(bad)


def test_positional_options_take_the_signature_order() -> None:
    from scalefold.passes.pipeline import PassManager
    pm = PassManager(["smooth(0.8)", "awq_scales(3, 64)", "quant_weights(int8, 32, rtn)", "fold_batchnorm"],
                     calibration=[])
    assert [o for _, o in pm.passes] == [{"alpha": 0.8}, {"bits": 3, "group": 64},
                                         {"format": "int8", "group": 32, "method": "rtn"}, {}]
    with pytest.raises(ScalefoldError, match="given twice"):
        PassManager(["smooth(0.8, alpha=0.5)"], calibration=[])
    with pytest.raises(ScalefoldError, match="at most 0 positional"):
        PassManager(["fold_batchnorm(1)"])
    with pytest.raises(ScalefoldError, match="alpha"):       # still type-checked: alpha is a float
        PassManager(["smooth(yes_please)"], calibration=[])


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
