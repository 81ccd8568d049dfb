"""Bad ONNX input gives a ScalefoldError subclass with a one-line message naming the file,
node, tensor or input at fault, never a raw traceback from protobuf, onnx or torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import FrontendError, ScalefoldError, ShapeError, UnsupportedOpError
from scalefold.runtime.interp import run


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert isinstance(e.value, ScalefoldError)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
          inits: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:
    """A model built by hand: no checker runs, so broken graphs stay broken."""
    outs = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def x_info(shape: list = (2, 3)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def weight_model(n: int = 4096) -> onnx.ModelProto:
    """y = x + w with a large initializer w (so truncation lands inside its data)."""
    w = numpy_helper.from_array(np.arange(n, dtype=np.float32), "w")
    return model([helper.make_node("Add", ["x", "w"], ["y"], name="add_w")], [x_info([n])], ["y"], [w])


# ---- unreadable files -----------------------------------------------------------------------


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.onnx"
    data = weight_model().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrontendError) as e:
        from_onnx(path)
    msg = one_line(e)
    assert str(path) in msg and "truncated" in msg


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf \x00\x01\x02" * 37)
    with pytest.raises(FrontendError) as e:
        from_onnx(str(path))
    assert str(path) in one_line(e)


def test_nonexistent_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "model.onnx"
    with pytest.raises(FrontendError) as e:
        from_onnx(path)
    msg = one_line(e)
    assert str(path) in msg and "no such file" in msg


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(FrontendError) as e:
        from_onnx(tmp_path)
    msg = one_line(e)
    assert str(tmp_path) in msg and "is a directory" in msg


# ---- broken graphs --------------------------------------------------------------------------


def test_cycle() -> None:
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="A"),
             helper.make_node("Relu", ["a"], ["b"], name="B")]
    with pytest.raises(FrontendError) as e:
        from_onnx(model(nodes, [x_info()], ["b"]))
    msg = one_line(e)
    assert "cycle" in msg and "'A'" in msg and "'B'" in msg


def test_missing_initializer() -> None:
    nodes = [helper.make_node("Add", ["x", "bias"], ["y"], name="add_bias")]
    with pytest.raises(FrontendError) as e:
        from_onnx(model(nodes, [x_info()], ["y"]))
    msg = one_line(e)
    assert "'bias'" in msg and "add_bias" in msg


def test_unsupported_ops_listed_with_counts() -> None:
    nodes = [helper.make_node("FrobnicateOp", ["x"], ["a"], name="frob_1"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("FrobnicateOp", ["b"], ["c"], name="frob_2"),
             helper.make_node("WarpOp", ["c"], ["y"])]
    with pytest.raises(UnsupportedOpError) as e:
        from_onnx(model(nodes, [x_info()], ["y"]))
    msg = one_line(e)
    assert e.value.ops == {"FrobnicateOp": 2, "WarpOp": 1}
    assert "FrobnicateOp (x2)" in msg and "WarpOp (x1)" in msg
    # the first node of each, by name (or by index when unnamed), to find them in the file
    assert e.value.first == {"FrobnicateOp": "frob_1", "WarpOp": "#3"}
    assert "FrobnicateOp 'frob_1'" in msg and "WarpOp '#3'" in msg


def test_shape_mismatch_names_node() -> None:
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="bad_add")]
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    with pytest.raises(ShapeError) as e:
        from_onnx(model(nodes, [x_info([2, 3])], ["y"], [w]))
    msg = one_line(e)
    assert "bad_add" in msg and "broadcast" in msg


# ---- inputs of the wrong rank ---------------------------------------------------------------


def _relu_model() -> onnx.ModelProto:
    return model([helper.make_node("Relu", ["x"], ["y"])], [x_info(["B", 3])], ["y"])


def test_wrong_input_rank_at_run_time() -> None:
    g = from_onnx(_relu_model())
    assert run(g, torch.ones(5, 3))[0].shape == (5, 3)
    with pytest.raises(ShapeError) as e:
        run(g, torch.ones(5, 3, 1))
    msg = one_line(e)
    assert "'x'" in msg and "rank 2" in msg


def test_wrong_input_rank_in_input_values() -> None:
    with pytest.raises(ShapeError) as e:
        from_onnx(_relu_model(), input_values={"x": torch.ones(3)})
    msg = one_line(e)
    assert "'x'" in msg and "rank 2" in msg


# ---- external data --------------------------------------------------------------------------


def _save_external(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    m = weight_model(2048)
    path = tmp_path / "m.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    return path, onnx.load_model(str(path), load_external_data=False)


def test_external_data_loads_and_runs(tmp_path: Path) -> None:
    path, proto = _save_external(tmp_path)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL
    g = from_onnx(path)
    x = torch.randn(2048)
    torch.testing.assert_close(run(g, x)[0], x + torch.arange(2048, dtype=torch.float32))


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_escaping_folder(tmp_path: Path, where: str) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    path, proto = _save_external(model_dir)
    secret = tmp_path / "secret.bin"
    secret.write_bytes((model_dir / "m.data").read_bytes())  # readable: only the rule stops it
    location = "../secret.bin" if where == "parent" else str(secret)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(FrontendError) as e:
        from_onnx(path)
    msg = one_line(e)
    assert "'w'" in msg and location in msg and "escapes" in msg


def test_a_node_writing_a_graph_input_is_named() -> None:
    from onnx import TensorProto as TP
    from onnx import helper as h
    g = h.make_graph([h.make_node("Relu", ["x"], ["x"], name="r")], "g",
                     [h.make_tensor_value_info("x", TP.FLOAT, [2])],
                     [h.make_tensor_value_info("x", TP.FLOAT, [2])])
    with pytest.raises(FrontendError, match="writes 'x', which is already a graph input"):
        from_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))


def test_an_opset_newer_than_onnx_knows_is_refused() -> None:
    newest = onnx.defs.onnx_opset_version()
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    with pytest.raises(FrontendError) as e:
        from_onnx(model(relu, [x_info()], ["y"], opset=newest + 1))
    assert f"opset {newest + 1} is newer" in one_line(e)
    g = from_onnx(model(relu, [x_info()], ["y"], opset=newest))       # the newest known one imports
    assert [n.op for n in g.nodes] == ["relu"]
