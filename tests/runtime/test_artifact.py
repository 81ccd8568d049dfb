"""Artifacts: save/load round trips, every hash is checked, saves are atomic, no pickle."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import scalefold as sf
from scalefold.api import CompiledModel
from scalefold.cli import EXAMPLE_IR
from scalefold.ir import dtypes as dt
from scalefold.ir.errors import ArtifactError
from scalefold.ir.graph import Graph
from scalefold.ir.parser import parse
from scalefold.runtime import artifact
from scalefold.runtime.interp import run


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompiledModel, Path]:
    cm = sf.compile(parse(EXAMPLE_IR), target="c")
    path = cm.save(tmp_path_factory.mktemp("art") / "mlp")
    return cm, path


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_round_trip_identical_outputs(saved) -> None:
    cm, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["kernels", "plan.json", "weights.safetensors"]
    assert {p.name for p in (path / "kernels").iterdir()} == {f"{k}.c" for k in cm.sources}
    cm2 = sf.load(path)
    assert cm2.target == "c" and cm2.graph == cm.graph
    x = torch.randn(5, 64)
    torch.testing.assert_close(cm2(x), cm(x), rtol=0, atol=0)
    torch.testing.assert_close(cm2(x), run(cm.graph, x)[0], rtol=1e-5, atol=1e-5)


def test_plan_contents(saved) -> None:
    cm, path = saved
    plan = json.loads((path / "plan.json").read_text())
    assert plan["format_version"] == artifact.FORMAT_VERSION
    assert plan["graph_name"] == "example_mlp" and plan["target"] == "c"
    assert plan["inputs"] == ["x"] and plan["outputs"] == ["out0"]
    assert plan["ir"] == str(cm.graph)
    assert "sha256:" in plan["ir"]  # weights go by hash, not inline
    assert [k["name"] for k in plan["kernels"]] == sorted(cm.sources)


def test_subbyte_and_f8_constants_round_trip(tmp_path: Path) -> None:
    g = Graph("quant")
    x = g.add_input("f32[B,8]", "x")
    codes4 = g.add_const(torch.randint(-8, 8, (8, 8), dtype=torch.int8), "i4")
    codes8 = g.add_const(torch.randn(8, 8).to(torch.float8_e4m3fn), "f8e4m3")
    codesf4 = g.add_const(torch.randint(0, 16, (8, 8), dtype=torch.uint8), "f4e2m1")
    scale = g.add_const(torch.rand(8) + 0.5)
    w4 = g.add("dequantize", [codes4, scale], {"axis": 0, "qtype": "i4"})
    w8 = g.add("dequantize", [codes8, scale], {"axis": 0, "qtype": "f8e4m3"})
    wf4 = g.add("dequantize", [codesf4, scale], {"axis": 0, "qtype": "f4e2m1"})
    y = g.add("add", [g.add("linear", [x, w4]), g.add("linear", [x, w8])])
    g.set_outputs([g.add("add", [y, g.add("linear", [x, wf4])])], ["y"])
    cm = sf.compile(g, target="interp")
    path = cm.save(tmp_path / "q")
    from safetensors.torch import load_file
    stored = load_file(path / "weights.safetensors")
    # 4-bit codes are stored two per byte (low nibble first), f8 in its container
    p4 = stored[codes4.const_hash()]
    assert p4.dtype == torch.uint8 and p4.shape == (32,)
    c4 = codes4.const.reshape(-1).view(torch.uint8) & 15
    assert torch.equal(p4, c4[0::2] | (c4[1::2] << 4))
    assert stored[codes8.const_hash()].dtype == torch.float8_e4m3fn
    assert stored[codesf4.const_hash()].dtype == torch.uint8 and stored[codesf4.const_hash()].shape == (32,)
    cm2 = sf.load(path)
    assert any(torch.equal(v.const, codes4.const) and v.dtype.name == "i4" for v in cm2.graph.constants())
    assert cm2.target == "interp" and cm2.graph.output_names == ["y"]
    xin = torch.randn(3, 8)
    assert torch.equal(cm2(xin), cm(xin))


def _flip(p: Path, offset: int) -> None:
    data = bytearray(p.read_bytes())
    data[offset % len(data)] ^= 0x01
    p.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("target", ["plan.json", "weights.safetensors", "kernel"])
@pytest.mark.parametrize("damage", ["flip_middle", "flip_end", "truncate", "delete"])
def test_tampering_is_detected(saved, tmp_path: Path, target: str, damage: str) -> None:
    _, path = saved
    art = _copy(path, tmp_path)
    f = next((art / "kernels").iterdir()) if target == "kernel" else art / target
    if damage == "flip_middle":
        _flip(f, f.stat().st_size // 2)
    elif damage == "flip_end":
        _flip(f, -3)
    elif damage == "truncate":
        _truncate(f)
    else:
        f.unlink()
    with pytest.raises(ArtifactError) as ei:
        sf.load(art)
    assert f.name in str(ei.value)


def test_edited_ir_in_plan_is_detected(saved, tmp_path: Path) -> None:
    # A valid-JSON edit (not just a corrupt byte): swap relu semantics in the IR text.
    _, path = saved
    art = _copy(path, tmp_path)
    plan = json.loads((art / "plan.json").read_text())
    plan["ir"] = plan["ir"].replace("approximate=\"none\"", "approximate=\"tanh\"")
    (art / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ArtifactError, match="plan.json"):
        sf.load(art)


def test_wrong_format_version(saved, tmp_path: Path) -> None:
    _, path = saved
    art = _copy(path, tmp_path)
    plan = json.loads((art / "plan.json").read_text())
    plan["format_version"] = artifact.FORMAT_VERSION + 1
    plan["plan_sha256"] = artifact._plan_digest(plan)  # a well-formed plan from a newer release
    (art / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ArtifactError, match="format version"):
        sf.load(art)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no artifact"):
        sf.load(tmp_path / "nothing")


def test_failed_save_leaves_nothing(saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cm, path = saved
    real = Path.write_bytes

    def failing(self: Path, data: bytes) -> int:
        if self.name == "weights.safetensors":
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    with pytest.raises(ArtifactError, match=r"cannot save to .*new: No space left on device"):
        cm.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []

    # An existing artifact survives a failed overwrite untouched.
    old = _copy(path, tmp_path)
    before = {p.name: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    with pytest.raises(ArtifactError):
        cm.save(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    assert {p.name: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_complete_artifact(saved, tmp_path: Path) -> None:
    cm, path = saved
    dest = _copy(path, tmp_path)
    (dest / "stale.txt").write_text("old")
    cm.save(dest)
    assert not (dest / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["copy"]
    x = torch.randn(2, 64)
    assert torch.equal(sf.load(dest)(x), cm(x))


def test_load_uses_no_pickle(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading an artifact")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    _, path = saved
    cm = sf.load(path)
    assert cm.graph.name == "example_mlp"
    assert dt.f32 == cm.graph.inputs[0].dtype


@pytest.mark.parametrize("n", [1, 7, 64])
def test_nibble_packing_round_trips_signed_and_unsigned(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    s = torch.randint(-8, 8, (n,), generator=gen, dtype=torch.int8)
    u = torch.randint(0, 16, (3, n), generator=gen, dtype=torch.uint8)
    assert torch.equal(artifact.unpack_nibbles(artifact.pack_nibbles(s), [n], torch.int8), s)
    assert torch.equal(artifact.unpack_nibbles(artifact.pack_nibbles(u), [3, n], torch.uint8), u)
    assert artifact.pack_nibbles(u).numel() == (3 * n + 1) // 2


def test_version_1_artifacts_still_load(tmp_path: Path) -> None:
    """Version 1 (before 4-bit packing) differs only in how 4-bit constants are stored."""
    cm = sf.compile(parse(EXAMPLE_IR), target="interp")
    path = cm.save(tmp_path / "v1")
    plan = json.loads((path / "plan.json").read_text())
    plan["format_version"] = 1
    plan["plan_sha256"] = artifact._plan_digest(plan)
    (path / "plan.json").write_text(json.dumps(plan))
    x = torch.randn(2, *[int(d) for d in cm.graph.inputs[0].shape[1:]])
    assert torch.equal(sf.load(path)(x), cm(x))


def test_save_never_replaces_a_foreign_directory(saved, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory that is neither empty nor an artifact is left alone (saving replaces its
    destination whole, so its files would be lost); so are the current directory and the
    ones above it. An empty directory takes the artifact."""
    cm, _ = saved
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    (victim / "sub" / "data.csv").write_text("1,2")
    with pytest.raises(ArtifactError, match="not a scalefold artifact"):
        cm.save(victim)
    assert (victim / "notes.txt").read_text() == "mine" and (victim / "sub" / "data.csv").exists()
    (victim / "plan.json").write_text("{not json")          # a plan.json of something else
    with pytest.raises(ArtifactError, match="not a scalefold artifact"):
        cm.save(victim)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for dest in (".", "", str(tmp_path)):
        with pytest.raises(ArtifactError, match="current directory"):
            cm.save(dest)
    assert os.listdir(work) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    x = torch.randn(2, 64)
    assert torch.equal(sf.load(cm.save(empty))(x), cm(x))


def test_save_below_a_file_names_the_file(saved, tmp_path: Path) -> None:
    cm, _ = saved
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArtifactError, match="f is not a directory"):
        cm.save(tmp_path / "f" / "x")


def test_save_to_a_long_legal_name(saved, tmp_path: Path) -> None:
    """A 250-byte directory name is legal; the temporary folders' names, derived from it, were
    not, so save refused it (twice: fresh, and over an existing artifact)."""
    cm, _ = saved
    dest = tmp_path / ("m" * 250)
    for _ in range(2):
        cm.save(dest)
        assert sorted(os.listdir(tmp_path)) == [dest.name]
    x = torch.randn(2, 64)
    assert torch.equal(sf.load(dest)(x), cm(x))



def test_save_to_a_path_with_a_nul_byte(saved, tmp_path: Path) -> None:
    cm, _ = saved
    with pytest.raises(ArtifactError, match="NUL byte"):
        cm.save(str(tmp_path / "a\0b"))
    assert os.listdir(tmp_path) == []


def test_saved_directory_mode_follows_the_umask(saved, tmp_path: Path) -> None:
    """mkdtemp's 0700 used to reach the artifact: other users could not load a shared one."""
    cm, _ = saved
    old = os.umask(0o022)
    try:
        dest = cm.save(tmp_path / "shared")
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("bad", [None, 3, b"dir"])
def test_save_and_load_of_a_non_path(saved, bad: object) -> None:
    cm, _ = saved
    with pytest.raises(ArtifactError, match="needs a directory path"):
        cm.save(bad)  # type: ignore[arg-type]
    with pytest.raises(ArtifactError, match="needs an artifact directory path"):
        sf.load(bad)  # type: ignore[arg-type]
