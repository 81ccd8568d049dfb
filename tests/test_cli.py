"""The command line: the demo prints the built-in example's IR and runs it."""
from __future__ import annotations

import re
import subprocess
import sys

from harness import assert_golden
from scalefold.cli import EXAMPLE_IR, main
from scalefold.ir.parser import parse


def test_example_ir_golden() -> None:
    assert_golden(str(parse(EXAMPLE_IR)), "goldens/example_mlp.golden")


def test_demo_example_prints_ir_and_runs(capsys) -> None:
    assert main(["demo", "--example", "--batch", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("graph @example_mlp(%x: f32[B,64]) -> (f32[B,64]) {")
    assert "output (5, 64)" in out


def test_demo_compiles_minilm_and_reports_every_runner(capsys) -> None:
    assert main(["demo", "--batch", "2", "--seq", "16", "--iters", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line.split() for line in out.splitlines()
            if line.startswith(("torch eager", "scalefold c", "onnxruntime"))}
    assert set(rows) == {"torch eager (fp32)", "scalefold c (fp32)", "onnxruntime (our ONNX export)"}
    # the compiled model and our ONNX export agree with fp32 to the 6th digit
    assert float(rows["scalefold c (fp32)"][3]) > 0.99999
    assert float(rows["onnxruntime (our ONNX export)"][4]) > 0.99999
    # the last column is the speed-up over eager (> 1: faster), as in benchmarks/
    assert "speed-up vs eager" in out and rows["torch eager (fp32)"][-1] == "1.00x"


def test_console_entry_point_bad_verb_exits_nonzero() -> None:
    r = subprocess.run([sys.executable, "-m", "scalefold", "frobnicate"], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr


# ---- compile / inspect / run / bench through the console script ------------------------------

import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from test_api import gemm_relu_onnx  # noqa: E402


def sf_cli(*args: str) -> subprocess.CompletedProcess:
    """The real console entry (``python -m scalefold``): for exit codes and stderr as users see them."""
    return subprocess.run([sys.executable, "-m", "scalefold", *args], capture_output=True, text=True,
                          timeout=180)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """``main`` in-process (a subprocess per call would spend most of the time importing torch)."""
    def call(*args: str) -> Result:
        capsys.readouterr()
        rc = main(list(args))
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)
    return call


def _gemm_relu_ref(x: np.ndarray, path: Path) -> np.ndarray:
    import onnxruntime as ort
    return ort.InferenceSession(str(path)).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gemm_relu_onnx(tmp_path_factory.mktemp("cli") / "m.onnx")


def test_help_lists_verbs_and_examples(capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--help"])
    out = capsys.readouterr().out
    assert ei.value.code == 0
    for verb in ("compile", "inspect", "run", "bench", "demo", "examples:"):
        assert verb in out


def test_compile_to_artifact_and_run_it(model: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "m.sf"
    r = cli("compile", str(model), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "plan.json").read_text())["target"] == "c"
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npz"))
    assert r.returncode == 0, r.stderr
    assert "y: float32[3, 16]" in r.stdout
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], _gemm_relu_ref(x, model), rtol=1e-5, atol=1e-5)
    # an artifact recompiles to ONNX too
    r = cli("compile", str(out), "-o", str(tmp_path / "again.onnx"))
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(_gemm_relu_ref(x, tmp_path / "again.onnx"), _gemm_relu_ref(x, model), rtol=1e-5)


def test_compile_to_onnx(model: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "out.onnx"
    r = cli("compile", str(model), "--target", "interp", "-o", str(out))
    assert r.returncode == 0, r.stderr
    onnx_model = __import__("onnx").load(str(out))
    __import__("onnx").checker.check_model(onnx_model)
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(_gemm_relu_ref(x, out), _gemm_relu_ref(x, model), rtol=1e-5)


def test_inspect_symbolic_and_bound(model: Path, cli) -> None:
    r = cli("inspect", str(model))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("graph @gemm_relu(%x: f32[B,8]) -> (f32[B,16]) {")
    assert "linear" in r.stdout and "272*B" in r.stdout and "peak memory" in r.stdout
    r = cli("inspect", str(model), "--bind", "B=8")
    assert r.returncode == 0, r.stderr
    assert "2,176" in r.stdout  # linear flops: 2*8*16*8 + bias 8*16
    assert "peak memory at B=8" in r.stdout


def test_run_random_inputs(model: Path, cli) -> None:
    r = cli("run", str(model), "--random", "B=4", "--target", "interp")
    assert r.returncode == 0, r.stderr
    assert "y: float32[4, 16]" in r.stdout


def test_bench_reports_both(model: Path, cli) -> None:
    r = cli("bench", str(model), "--bind", "B=4", "--iters", "3")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout and "speedup" in r.stdout
    # the same sums in another order: float rounding apart at most (outputs are O(1))
    diff = float(re.search(r"max \|diff\|: (\S+)", r.stdout).group(1))
    assert diff <= 1e-5, r.stdout


@pytest.mark.parametrize("args, message", [
    (["inspect", "{tmp}/missing.onnx"], "no such file"),
    (["inspect", "{tmp}/garbage.onnx"], "not a valid ONNX model"),
    (["compile", "{tmp}/garbage.onnx", "-o", "{tmp}/o.sf"], "not a valid ONNX model"),
    (["inspect", "{model}", "--bind", "B=x"], "bad binding"),
    (["inspect", "{model}", "--bind", "B=0"], "bad binding"),
    (["run", "{model}"], "missing input"),
    (["run", "{model}", "--random"], "needs a size for B"),
    (["run", "{model}", "--input", "x={tmp}/missing.npy"], "missing.npy"),
    (["run", "{model}", "--input", "z={tmp}/garbage.onnx"], "garbage.onnx"),
    (["compile", "{model}", "-p", "no_such_pass", "-o", "{tmp}/o.sf"], "no_such_pass"),
    (["bench", "{tmp}"], "needs an .onnx file"),
    (["run", "{tmp}/not_an_artifact_dir"], "plan.json: missing file"),
    (["inspect", "{model}", "--bind", "B=2,X=8"], "--bind B=2,X=8: unknown symbol(s) X"),
    (["inspect", "{model}", "--bind", "X=8"], "unknown symbol(s) X; missing B"),
    (["bench", "{model}", "--bind", "B=2,Q=3"], "--bind B=2,Q=3: unknown symbol(s) Q"),
    (["bench", "{model}"], "missing B"),
])
def test_bad_input_is_one_line_error(model: Path, tmp_path: Path, args: list[str], message: str, cli) -> None:
    (tmp_path / "garbage.onnx").write_bytes(b"\x00garbage\xff" * 7)
    (tmp_path / "not_an_artifact_dir").mkdir()
    r = cli(*[a.format(tmp=tmp_path, model=model) for a in args])
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalefold: error: "), r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o.sf").exists()
    if args[0] == "inspect":
        assert r.stdout == ""                      # refused before the IR is printed


def test_run_output_names_the_file_numpy_writes(model: Path, tmp_path: Path, cli) -> None:
    r = cli("run", str(model), "--random", "B=2", "--target", "interp", "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'o.npz'}"
    assert sorted(os.listdir(tmp_path)) == ["o.npz"]


def _two_input_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper
    info = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node("Add", ["x", "m"], ["y"])], "add2",
                          [info("x", TensorProto.FLOAT, ["B", "S"]), info("m", TensorProto.FLOAT, ["B", "S"])],
                          [info("y", TensorProto.FLOAT, ["B", "S"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_run_random_takes_sizes_from_given_inputs(tmp_path: Path, cli) -> None:
    """--random beside --input: the symbols the given inputs fix need no binding, and a binding
    that contradicts them is refused by name."""
    model = _two_input_onnx(tmp_path / "add2.onnx")
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.save(tmp_path / "x.npy", x)
    r = cli("run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--random", "-o", str(tmp_path / "y"))
    assert r.returncode == 0, r.stderr
    assert "y: float32[3, 5]" in r.stdout
    y = np.load(tmp_path / "y.npz")["y"]
    assert y.shape == (3, 5) and not np.array_equal(y, x)           # m was drawn, not zeros
    r = cli("run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--random", "B=3,S=5")
    assert r.returncode == 0, r.stderr
    r = cli("run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--random", "B=2")
    assert r.returncode != 0 and "--random binds B=2, but the given inputs have B=3" in r.stderr


def test_run_output_is_written_whole_or_not_at_all(model: Path, tmp_path: Path, cli, monkeypatch) -> None:
    def fail_midway(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")
    (tmp_path / "o.npz").write_bytes(b"old")
    monkeypatch.setattr(np, "savez", fail_midway)
    r = cli("run", str(model), "--random", "B=2", "--target", "interp", "-o", str(tmp_path / "o.npz"))
    assert r.returncode != 0 and "No space left" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["o.npz"] and (tmp_path / "o.npz").read_bytes() == b"old"


@pytest.mark.parametrize("flag", ["--batch", "--seq", "--iters", "--threads"])
def test_demo_sizes_must_be_positive(flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["demo", flag, "0"])
    assert ei.value.code == 2
    assert f"argument {flag}: must be a positive integer" in capsys.readouterr().err


def test_demo_refuses_a_sequence_longer_than_the_model() -> None:
    from scalefold import ScalefoldError
    from scalefold.api import demo
    with pytest.raises(ScalefoldError, match="seq 1000 is longer than the model's 512 positions"):
        demo(batch=1, seq=1000, iters=1)


def test_split_passes_keeps_option_commas() -> None:
    from scalefold.cli import split_passes
    assert split_passes(["fold_batchnorm,outliertune(bits=8,group=128)", "svd"]) == \
        ["fold_batchnorm", "outliertune(bits=8,group=128)", "svd"]


def test_main_in_process_returns_error_code(capsys) -> None:
    assert main(["inspect", "/nonexistent/model.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "scalefold: error: /nonexistent/model.onnx: no such file or directory"
    assert torch.is_tensor(torch.zeros(1))


def test_console_script_exit_codes(model: Path, tmp_path: Path) -> None:
    ok = sf_cli("inspect", str(model), "--bind", "B=2")
    assert ok.returncode == 0 and "peak memory at B=2" in ok.stdout
    bad = sf_cli("run", str(tmp_path / "missing.onnx"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("scalefold: error: ") and "Traceback" not in bad.stderr


def test_compile_with_calibration_file(model: Path, tmp_path: Path, cli) -> None:
    """A calibrating pipeline (AWQ weight quantisation) from the command line, its calibration
    read from an .npz of model inputs; then the errors a calibration file can raise."""
    x = np.random.default_rng(3).standard_normal((24, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    out = tmp_path / "w4.onnx"
    r = cli("compile", str(model), "-p", "quant_weights(format=int4, group=8, method=awq)",
            "--calibration", str(tmp_path / "cal.npz"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    y, y0 = _gemm_relu_ref(x, out), _gemm_relu_ref(x, model)
    assert float(np.abs(y - y0).max()) < 0.1 * float(np.abs(y0).max())
    r = cli("compile", str(model), "-p", "quant_weights(format=int4, method=awq)", "-o", str(out))
    assert r.returncode == 2 and "needs calibration data" in r.stderr and "--calibration FILE" in r.stderr
    np.savez(tmp_path / "bad.npz", y=x)
    r = cli("compile", str(model), "-p", "quant_weights(method=awq)", "--calibration",
            str(tmp_path / "bad.npz"), "-o", str(out))
    assert r.returncode == 2 and "no array for input(s) x" in r.stderr
    r = cli("compile", str(model), "-p", "quant_weights(method=awq)", "--calibration",
            str(tmp_path / "nope.npz"), "-o", str(out))
    assert r.returncode == 2 and "nope.npz: no such file" in r.stderr


# ---- output locations and option values are checked before any work -------------------------

@pytest.mark.parametrize("out, reason", [
    ("{tmp}/no_such_dir/m.onnx", "folder {tmp}/no_such_dir does not exist"),
    ("{tmp}/adir.onnx", "is a directory, expected a file name"),
    ("{tmp}/afile/m.onnx", "afile is not a directory"),
    ("{tmp}/afile", "exists and is not a directory"),                  # artifact over a file
    ("{tmp}/afile/sub/m.sf", "afile is not a directory"),              # artifact below a file
])
def test_compile_checks_the_output_before_compiling(model: Path, tmp_path: Path, out: str, reason: str,
                                                    cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import scalefold.cli as cli_mod

    def too_late(*a, **k):
        raise AssertionError("the model was loaded although the output is unusable")
    monkeypatch.setattr(cli_mod, "load_graph", too_late)
    (tmp_path / "adir.onnx").mkdir()
    (tmp_path / "afile").write_bytes(b"keep")
    listing = sorted(os.listdir(tmp_path))
    out = out.format(tmp=tmp_path)
    r = cli("compile", str(model), "-p", "quant_weights(format=int4)", "-o", out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"scalefold: error: output {out}: "), r.stderr
    assert reason.format(tmp=tmp_path) in lines[0] and "internal error" not in lines[0]
    assert sorted(os.listdir(tmp_path)) == listing and (tmp_path / "afile").read_bytes() == b"keep"
    assert os.listdir(tmp_path / "adir.onnx") == []


@pytest.mark.parametrize("name", ["m.onnx", "m.sf"])
def test_compile_to_an_unwritable_folder_fails_first(model: Path, tmp_path: Path, name: str, cli,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated with os.access: a chmod'ed folder is still writable when tests run as root.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k:
                        False if Path(p) == tmp_path else real_access(p, mode, *a, **k))
    r = cli("compile", str(model), "-o", str(tmp_path / name))
    assert r.returncode == 2
    assert r.stderr.strip() == f"scalefold: error: output {tmp_path / name}: folder {tmp_path} is not writable"
    assert os.listdir(tmp_path) == []


def test_run_checks_its_output_before_running(model: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "missing" / "y.npz"
    r = cli("run", str(model), "--random", "B=2", "--target", "interp", "-o", str(out))
    assert r.returncode == 2 and r.stdout == ""                  # nothing ran, nothing printed
    assert r.stderr.strip() == f"scalefold: error: output {out}: folder {out.parent} does not exist"


@pytest.mark.parametrize("value, message", [
    ("0", "must be a positive integer (at least 1), got 0"),
    ("-2", "must be a positive integer (at least 1), got -2"),
    ("eight", "expected a positive integer, got 'eight'"),
])
def test_calibration_batch_must_be_positive(model: Path, tmp_path: Path, value: str, message: str,
                                            capsys) -> None:
    x = np.zeros((16, 8), np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    with pytest.raises(SystemExit) as ei:     # argparse rejects it before anything is loaded
        main(["compile", str(model), "-p", "quant_weights(format=int4, method=awq)", "--calibration",
              str(tmp_path / "cal.npz"), "--calibration-batch", value, "-o", str(tmp_path / "w4.onnx")])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument --calibration-batch: {message}" in err and "internal error" not in err
    assert sorted(os.listdir(tmp_path)) == ["cal.npz"]


def test_calibration_batch_errors_through_the_console_script(model: Path, tmp_path: Path) -> None:
    r = sf_cli("compile", str(model), "--calibration-batch", "0", "-o", str(tmp_path / "w4.onnx"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == \
        "scalefold compile: error: argument --calibration-batch: must be a positive integer (at least 1), got 0"


def test_load_calibration_rejects_a_non_positive_batch(model: Path, tmp_path: Path) -> None:
    from scalefold.cli import load_calibration, load_graph
    from scalefold.ir.errors import ScalefoldError
    np.savez(tmp_path / "cal.npz", x=np.zeros((16, 8), np.float32))
    g = load_graph(str(model))
    for batch in (0, -2):
        with pytest.raises(ScalefoldError, match=f"calibration batch size must be at least 1, got {batch}"):
            load_calibration(str(tmp_path / "cal.npz"), g, batch)
    assert len(load_calibration(str(tmp_path / "cal.npz"), g, 8)) == 2


def test_load_calibration_refuses_truncating_floats_and_notes_leftovers(tmp_path: Path, capsys) -> None:
    """Token ids saved as non-integral floats would be truncated by the cast: refused, naming
    the input; integral floats are taken. Samples that do not fill a last batch are reported."""
    from scalefold.cli import load_calibration
    from scalefold.ir.errors import ScalefoldError
    from scalefold.ir.parser import parse
    g = parse("""graph @g(%ids: i64[B,4]) -> (i64[B,4]) {
  %0: i64[B,4] = add(%ids, %ids)
  return %0
}""")
    np.savez(tmp_path / "frac.npz", ids=np.full((8, 4), 2.5, np.float32))
    with pytest.raises(ScalefoldError, match="input ids is i64, but its array holds non-integral float32"):
        load_calibration(str(tmp_path / "frac.npz"), g, 4)
    np.savez(tmp_path / "ints.npz", ids=np.full((10, 4), 3.0, np.float32))
    out = load_calibration(str(tmp_path / "ints.npz"), g, 4)
    assert len(out) == 2 and out[0][0].dtype == torch.int64 and int(out[0][0][0, 0]) == 3
    assert "10 samples in batches of 4; the last 2 are left out" in capsys.readouterr().err


def test_compile_refuses_to_replace_a_foreign_directory(model: Path, tmp_path: Path, cli) -> None:
    """-o DIR that holds other files fails before compiling (exit 2) and leaves them; so does
    -o . (the current directory)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    r = cli("compile", str(model), "-o", str(victim))
    assert r.returncode == 2 and "not a scalefold artifact" in r.stderr
    assert os.listdir(victim) == ["notes.txt"]
    cwd = os.getcwd()
    os.chdir(victim)
    try:
        r = cli("compile", str(model), "-o", ".")
    finally:
        os.chdir(cwd)
    assert r.returncode == 2 and "current directory" in r.stderr
    assert os.listdir(victim) == ["notes.txt"]


def test_compile_nbits_accuracy(model: Path, tmp_path: Path, cli) -> None:
    """--nbits-accuracy 4 reaches the exported MatMulNBits nodes."""
    import onnx
    out = tmp_path / "m.w4.onnx"
    r = cli("compile", str(model), "-p", "quant_weights(format=int4, group=16)", "--nbits-accuracy", "4",
            "-o", str(out))
    assert r.returncode == 0, r.stderr
    nodes = [nd for nd in onnx.load(str(out)).graph.node if nd.op_type == "MatMulNBits"]
    assert nodes and all({a.name: onnx.helper.get_attribute_value(a) for a in nd.attribute}["accuracy_level"] == 4
                         for nd in nodes)


def test_inspect_binds_data_dependent_sizes(tmp_path: Path, cli) -> None:
    """A data-dependent size (NonZero's count) may be bound along with the inputs' symbols."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    import scalefold as sf
    g = h.make_graph([h.make_node("NonZero", ["x"], ["y"])], "nz",
                     [h.make_tensor_value_info("x", TP.FLOAT, ["N"])],
                     [h.make_tensor_value_info("y", TP.INT64, None)])
    path = tmp_path / "nz.onnx"
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), str(path))
    count = next(str(s) for s in sf.from_onnx(str(path)).outputs[0].type.shape[1].free_symbols)
    r = cli("inspect", str(path), "--bind", f"N=4,{count}=2")
    assert r.returncode == 0, r.stderr
    assert f"peak memory at N=4,{count}=2" in r.stdout
    r = cli("inspect", str(path), "--bind", f"N=4,{count}=2,Q=1")
    assert r.returncode != 0 and "unknown symbol(s) Q" in r.stderr and r.stdout == ""


def test_version_and_a_closed_pipe() -> None:
    import scalefold
    r = subprocess.run([sys.executable, "-m", "scalefold", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"scalefold {scalefold.__version__}"
    # the reader stops after one line (as `| head -1` does): no error, no traceback
    p = subprocess.Popen([sys.executable, "-m", "scalefold", "demo", "--example"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, bufsize=0)
    assert p.stdout is not None
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode() if p.stderr is not None else ""
    assert p.wait() == 0 and "error" not in err and "Traceback" not in err


def test_a_symbol_or_input_given_twice_is_an_error(tmp_path: Path) -> None:
    from scalefold.cli import parse_bind
    from scalefold.ir.errors import ScalefoldError
    assert parse_bind("B=3,S=4") == {"B": 3, "S": 4}
    with pytest.raises(ScalefoldError, match="B is bound twice"):
        parse_bind("B=3,B=4")
    model = gemm_relu_onnx(tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 8), np.float32))
    r = sf_cli("run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--input", f"x={tmp_path / 'x.npy'}")
    assert r.returncode == 2 and "input 'x' is given twice" in r.stderr
