"""PassManager: options, verification between passes, counters and IR dumps."""
from __future__ import annotations

import pytest

from scalefold.ir.errors import ScalefoldError, VerifyError
from scalefold.ir.graph import Graph
from scalefold.ir.parser import parse
from scalefold.ir.types import TensorType
from scalefold.passes import PassManager, counting, register_pass, run_pipeline
from scalefold.passes import pipeline as pl

TEXT = """graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0: f32[2,3] = linear(%x, #w, #b)
  %1: f32[2,3] = mul(%0, #s)
  %2: f32[2,3] = identity(%1)
  %3: f32[2,3] = exp(%x)
  return %2
}
#w = const f32[3,3] randn(seed=0, std=0.3)
#b = const f32[3] randn(seed=1, std=0.1)
#s = const f32[] 0.5
"""


@pytest.fixture
def private_registry(monkeypatch):
    monkeypatch.setattr(pl, "_PASSES", dict(pl._PASSES))


def test_counters_per_pass_and_rule_and_outer_counting() -> None:
    g = parse(TEXT)
    pm = PassManager("fold_constant_scales, cleanup")
    with counting() as outer:
        out = pm.run(g)
    assert pm.counters.as_dict() == {
        "fold_constant_scales": {"mul_after": 1},
        "cleanup": {"dead_node": 1, "identity_identity": 1},
    }
    assert outer.as_dict() == pm.counters.as_dict()
    assert [n.op for n in out.nodes] == ["linear"]
    assert [n.op for n in g.nodes] == ["linear", "mul", "identity", "exp"]  # input untouched
    assert [name for name, _ in pm.timings] == ["fold_constant_scales", "cleanup"]


def test_dump_ir_writes_numbered_before_and_after(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCALEFOLD_DUMP_IR", str(tmp_path / "dump"))
    g = parse(TEXT)
    out = PassManager(["fold_constant_scales", "cleanup"]).run(g)
    files = sorted(p.name for p in (tmp_path / "dump").iterdir())
    assert files == ["00-fold_constant_scales-after.ir", "00-fold_constant_scales-before.ir",
                     "01-cleanup-after.ir", "01-cleanup-before.ir"]
    d = tmp_path / "dump"
    assert (d / "00-fold_constant_scales-before.ir").read_text() == str(g)
    assert (d / "01-cleanup-after.ir").read_text() == str(out)
    assert (d / "00-fold_constant_scales-after.ir").read_text() == \
        (d / "01-cleanup-before.ir").read_text()
    assert "mul" not in (d / "00-fold_constant_scales-after.ir").read_text()


def test_dump_into_a_file_names_the_variable(tmp_path, monkeypatch) -> None:
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("SCALEFOLD_DUMP_IR", str(tmp_path / "f"))
    with pytest.raises(ScalefoldError, match=r"cannot dump the IR into .*f \(dump_dir, or the SCALEFOLD_DUMP_IR"):
        PassManager("cleanup").run(parse(TEXT))


def test_no_dump_without_the_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SCALEFOLD_DUMP_IR", raising=False)
    monkeypatch.chdir(tmp_path)
    PassManager("cleanup").run(parse(TEXT))
    assert list(tmp_path.iterdir()) == []


def test_verifier_runs_between_passes_and_names_the_pass(private_registry) -> None:
    @register_pass("test_break")
    def _break(graph: Graph) -> Graph:
        graph.nodes[0].outputs[0].type = TensorType(graph.nodes[0].outputs[0].dtype, (7, 7))
        return graph

    with pytest.raises(VerifyError, match="after pass test_break"):
        PassManager("test_break").run(parse(TEXT))
    PassManager("test_break", verify=False).run(parse(TEXT))  # opted out: no error


def test_errors_come_before_any_pass_runs(private_registry) -> None:
    ran = []

    @register_pass("test_rec")
    def _rec(graph: Graph, k: int = 0) -> Graph:
        ran.append(k)
        return graph

    @register_pass("test_calib", needs_calibration=True)
    def _calib(graph: Graph, calibration) -> Graph:
        ran.append(len(list(calibration)))
        return graph

    for bad, msg in (("test_rec, frob", "unknown pass.*frob"), ("test_rec, test_rec(q=1)", "bad options"),
                     ("test_rec, test_calib", "needs calibration")):
        with pytest.raises(ScalefoldError, match=msg):
            PassManager(bad).run(parse(TEXT))
    assert ran == []
    PassManager("test_rec(k=4), test_calib", calibration=[(1,), (2,)]).run(parse(TEXT))
    assert ran == [4, 2]


def test_pass_must_return_a_graph(private_registry) -> None:
    @register_pass("test_none")
    def _none(graph: Graph):
        return None

    with pytest.raises(ScalefoldError, match="test_none returned NoneType"):
        PassManager("test_none").run(parse(TEXT))


def test_run_pipeline_is_the_pass_manager() -> None:
    g = parse(TEXT)
    assert run_pipeline(g, "fold_constant_scales,cleanup") == PassManager(
        "fold_constant_scales,cleanup").run(g)
