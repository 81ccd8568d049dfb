"""ONNX node names survive the import: each ONNX node's name lands on the main IR node it
becomes (the linear of a MatMul or Gemm), so that the quantisation passes' per-layer overrides
can select layers of an imported model by the names the exporter gave them."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from harness import assert_close
from scalefold.frontend.onnx import from_onnx
from scalefold.ir import parse, print_graph
from scalefold.runtime.interp import run


class _Block(torch.nn.Module):
    """Named submodules: the legacy exporter names their nodes /query/MatMul, /head/Gemm..."""

    def __init__(self) -> None:
        super().__init__()
        self.query = torch.nn.Linear(16, 16)
        self.key = torch.nn.Linear(16, 16, bias=False)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.query(x) + self.key(x))      # 3-d: MatMul (+ Add for the bias)
        return self.head(h.mean(1))                      # 2-d: Gemm with bias


def _export(tmp_path: Path) -> tuple[onnx.ModelProto, Path, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = _Block().eval()
    x = torch.randn(2, 5, 16)
    p = tmp_path / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(p), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return onnx.load(str(p)), p, m, x


def test_linears_carry_onnx_node_names(tmp_path: Path) -> None:
    proto, p, m, x = _export(tmp_path)
    mm = {n.name for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")}
    assert mm == {"/query/MatMul", "/key/MatMul", "/head/Gemm"}   # the exporter's names
    g = from_onnx(p)
    assert sorted(n.name for n in g.nodes if n.op == "linear") == sorted(mm)
    by_name = {n.name: n for n in g.nodes if n.name}
    assert by_name["/act/Relu"].op == "relu"
    # the exporter's bias Add of a 3-D linear folds into the linear, which keeps its name
    assert "/query/Add" not in by_name and by_name["/query/MatMul"].inputs[2] is not None
    # one IR node per name: a name selects one layer
    names = [n.name for n in g.nodes if n.name]
    assert len(names) == len(set(names))
    assert_close(run(g, x)[0], m(x), rtol=1e-5)


def test_node_names_do_not_change_the_text_form(tmp_path: Path) -> None:
    """Names are not part of the printed IR, so goldens and the print -> parse round trip are
    the same with or without them."""
    _, p, _, x = _export(tmp_path)
    g = from_onnx(p)
    text = print_graph(g)
    for n in g.nodes:
        n.name = None
    assert print_graph(g) == text
    g2 = parse(text, constants={c.const_hash(): c.const for c in g.constants()})
    assert g2 == g and print_graph(g2) == text
    assert_close(run(g2, x)[0], run(g, x)[0], rtol=0.0, atol=0.0)


def test_gemm_with_transposed_a_names_the_linear() -> None:
    """When one ONNX node becomes several IR nodes (transpose, linear, add), the linear gets
    the name."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 4])
    c = onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [3, 4])
    w = onnx.numpy_helper.from_array(torch.randn(8, 4).numpy(), "w")
    node = onnx.helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="/fc/Gemm", transA=1)
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "gemm", [x, c], [y], [w]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    g = from_onnx(model)
    assert [n.op for n in g.nodes] == ["transpose", "linear", "add"]
    assert [n.name for n in g.nodes] == [None, "/fc/Gemm", None]


def test_overrides_select_imported_layers_by_onnx_name(tmp_path: Path) -> None:
    """The point of keeping names: a quant_weights override keyed by an ONNX node name."""
    from scalefold.passes.quant_weights import quant_weights

    _, p, _, _ = _export(tmp_path)
    g = quant_weights(from_onnx(p), None, format="int8", group=0, overrides={"/key/MatMul": "float"})
    ops = {n.name: n.op for n in g.nodes if n.name in ("/query/MatMul", "/key/MatMul", "/head/Gemm")}
    assert ops == {"/query/MatMul": "qlinear", "/key/MatMul": "linear", "/head/Gemm": "qlinear"}
