"""sf.compile on every kind of model, for the C and interpreter targets, and its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scalefold as sf
from scalefold.cli import EXAMPLE_IR


def gemm_relu_onnx(path: Path, seed: int = 0) -> Path:
    """A Gemm+Relu ONNX model with a symbolic batch dim, written to ``path``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["y"])],
        "gemm_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_graph_c_matches_interp() -> None:
    g = sf.parse(EXAMPLE_IR)
    c, ref = sf.compile(g, target="c"), sf.compile(g, target="interp")
    assert (c.target, ref.target) == ("c", "interp") and c.sources and not ref.sources
    for b in (1, 7):
        x = torch.randn(b, 64)
        torch.testing.assert_close(c(x), ref(x), rtol=1e-5, atol=1e-5)
    # compile works on a clone: the caller's graph is left alone
    assert g == sf.parse(EXAMPLE_IR)


def test_onnx_path_c_matches_interp_and_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime as ort
    path = gemm_relu_onnx(tmp_path / "m.onnx")
    c, ref = sf.compile(str(path), target="c"), sf.compile(path, target="interp")
    x = torch.randn(5, 8)
    want = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0])
    torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref(x), want, rtol=1e-5, atol=1e-5)
    # a ModelProto works as well as a path
    torch.testing.assert_close(sf.compile(onnx.load(str(path)), target="c")(x), want, rtol=1e-5, atol=1e-5)


def test_torch_module_c_matches_interp_and_eager() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.GELU(), torch.nn.LayerNorm(24),
                            torch.nn.Linear(24, 6)).eval()
    x = torch.randn(3, 12)
    c, ref = sf.compile(m, (x,), target="c"), sf.compile(m, (x,), target="interp")
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(c(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref(x), want, rtol=1e-5, atol=1e-5)
    assert isinstance(sf.from_torch(m, (x,)), sf.Graph)


def test_unknown_target() -> None:
    with pytest.raises(sf.ScalefoldError, match="unknown target 'gpu'"):
        sf.compile(sf.parse(EXAMPLE_IR), target="gpu")


@pytest.mark.parametrize("obj", [42, [1, 2], object()])
def test_unknown_object_type(obj) -> None:
    with pytest.raises(sf.ScalefoldError, match="cannot compile an object of type"):
        sf.compile(obj)


def test_module_needs_example_inputs() -> None:
    with pytest.raises(sf.ScalefoldError, match="example_inputs"):
        sf.compile(torch.nn.Linear(2, 2))


def test_unknown_pass_is_a_clean_error() -> None:
    with pytest.raises(sf.ScalefoldError, match="no_such_pass"):
        sf.compile(sf.parse(EXAMPLE_IR), passes=["no_such_pass"], target="interp")


def test_public_api_exports() -> None:
    for name in ("compile", "load", "from_torch", "from_onnx", "to_onnx", "Graph", "parse",
                 "ScalefoldError", "ArtifactError", "CompiledModel"):
        assert hasattr(sf, name), name
    assert set(sf.__all__) >= {"compile", "load", "from_torch", "from_onnx", "to_onnx", "Graph"}


def test_passes_as_one_pipeline_string() -> None:
    """A single string is one comma-separated pipeline, as the CLI takes it (``list()`` split it
    into characters: "unknown pass(es): d, c, e")."""
    g = sf.parse(EXAMPLE_IR)
    x = torch.randn(3, 64)
    as_list = sf.compile(g, passes=["dce", "quant_weights(format=int8, group=0)"], target="interp")
    as_str = sf.compile(g, passes="dce, quant_weights(format=int8, group=0)", target="interp")
    assert str(as_list.graph) == str(as_str.graph) and "qlinear" in str(as_str.graph)
    torch.testing.assert_close(as_str(x), as_list(x), rtol=0, atol=0)
    with pytest.raises(sf.ScalefoldError, match="no_such_pass"):
        sf.compile(g, passes="dce,no_such_pass", target="interp")


def test_from_torch_of_something_else_is_a_clean_error() -> None:
    for obj in (lambda x: x, "model.pt"):
        with pytest.raises(sf.ScalefoldError, match="nn.Module or an ExportedProgram"):
            sf.from_torch(obj, (torch.randn(2),))


def test_compile_restores_each_submodules_mode() -> None:
    """Export runs in eval mode; afterwards every submodule has its own mode back. Restoring the
    root's flag alone put a frozen Dropout inside a training wrapper back into training mode,
    so the user's eager model changed its numbers."""
    inner = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5)).eval()
    outer = torch.nn.Sequential(inner, torch.nn.Linear(8, 4))
    outer.train()
    inner.eval()
    before = {name: m.training for name, m in outer.named_modules()}
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = outer(x)
    sf.compile(outer, (x,), target="interp")
    assert {name: m.training for name, m in outer.named_modules()} == before
    with torch.no_grad():
        torch.testing.assert_close(outer(x), want, rtol=0, atol=0)


def test_readme_ir_imports_give_functions() -> None:
    """``from scalefold.ir import parse, verify`` (the README's example) gave the verify
    submodule once anything had imported it."""
    import scalefold.ir.verify  # noqa: F401  (the submodule, imported first)
    from scalefold.ir import parse, verify
    assert callable(verify) and callable(parse)
    verify(parse(EXAMPLE_IR))


def test_compiled_model_lifecycle_from_the_concurrency_hunt(tmp_path) -> None:
    import copy
    import pickle
    import threading

    import scalefold as sf
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    for target in ("interp", "c"):
        cm = sf.compile(m, (x,), target=target)
        y0 = cm(x)
        # the compiled model keeps its own weights: the module's later updates do not leak in
        with torch.no_grad():
            m[0].weight.mul_(10.0)
            m[2].bias.add_(1.0)
        assert torch.equal(cm(x), y0), target
        with torch.no_grad():
            m[0].weight.div_(10.0)
            m[2].bias.sub_(1.0)
        # pickling / deep copies are a clear error naming the portable form; copy.copy works
        for f in (pickle.dumps, copy.deepcopy):
            with pytest.raises(sf.ScalefoldError, match="cm.save"):
                f(cm)
        assert torch.equal(copy.copy(cm)(x), y0)
    # the generated kernels compute no gradients: a grad-requiring input is a clear error
    # (the library steps alone recorded a partial autograd graph: silently wrong gradients)
    cm = sf.compile(m, (x,), target="c")
    with pytest.raises(sf.ExecutionError, match="no gradients"):
        cm(x.clone().requires_grad_(True))
    with torch.no_grad():
        assert torch.equal(cm(x.clone().requires_grad_(True)), cm(x))
    # concurrent imports take turns instead of failing with errors that blamed the model
    res: list[object] = []

    def work() -> None:
        mm = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.LayerNorm(8)).eval()
        try:
            sf.compile(mm, (torch.randn(3, 8),), target="interp")
            res.append("ok")
        except sf.ScalefoldError as e:
            res.append(e)
    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert res == ["ok"] * 4


def test_compiled_model_takes_inputs_by_name() -> None:
    class M(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return input_ids.float() * 2 + attention_mask

    ids, mask = torch.arange(6).reshape(2, 3), torch.rand(2, 3)
    cm = sf.compile(M(), {"input_ids": ids, "attention_mask": mask}, target="c")
    want = M()(ids, mask)
    for got in (cm(ids, mask), cm(input_ids=ids, attention_mask=mask), cm(attention_mask=mask, input_ids=ids),
                cm(ids, attention_mask=mask)):
        assert torch.equal(got, want)
    with pytest.raises(sf.ScalefoldError, match="no input named 'mask'.*input_ids, attention_mask"):
        cm(ids, mask=mask)
    with pytest.raises(sf.ScalefoldError, match="missing input.*'attention_mask'"):
        cm(input_ids=ids)
    with pytest.raises(sf.ScalefoldError, match="positionally and by name"):
        cm(ids, input_ids=ids)


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x).relu())


def test_a_lone_example_tensor_is_one_input_not_its_rows() -> None:
    m, x = _Mlp().eval(), torch.randn(1, 16)
    cm = sf.compile(m, x, target="interp")
    assert str(cm.graph.inputs[0].type) == "f32[1,16]"
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x))
    assert str(sf.compile(m, torch.randn(4, 16), target="interp").graph.inputs[0].type) == "f32[4,16]"


def test_exported_programs_and_their_modules_compile() -> None:
    m, x = _Mlp().eval(), torch.randn(4, 16)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        want = m(x)
        torch.testing.assert_close(sf.compile(ep, target="c")(x), want)
        torch.testing.assert_close(sf.compile(ep, (x,), target="c")(x), want)
        # ExportedProgram.module() refuses eval(): compile must not call it blindly
        torch.testing.assert_close(sf.compile(ep.module(), (x,), target="c")(x), want)


@pytest.mark.parametrize("target", ["interp", "c"])
def test_every_target_refuses_gradients_alike(target: str) -> None:
    m, x = _Mlp().eval(), torch.randn(4, 16)
    cm = sf.compile(m, (x,), target=target)
    with pytest.raises(sf.ScalefoldError, match="compute no gradients"):
        cm(x.clone().requires_grad_())
    with torch.no_grad():
        torch.testing.assert_close(cm(x.clone().requires_grad_()), m(x))


def test_bad_passes_and_ir_text_types_are_clean_errors() -> None:
    m, x = _Mlp().eval(), torch.randn(4, 16)
    assert sf.compile(m, (x,), passes=None, target="interp").graph.inputs
    assert sf.compile(m, (x,), passes=(p for p in ["dce"]), target="interp").graph.inputs
    for bad in (3, [3], ["dce", None]):
        with pytest.raises(sf.ScalefoldError, match="passes must be pass specs"):
            sf.compile(m, (x,), passes=bad, target="interp")
    for text in (None, b"graph"):
        with pytest.raises(sf.ScalefoldError, match="IR text must be a str"):
            sf.ir.parse(text)  # type: ignore[arg-type]
