"""ONNX RoiAlign and NonMaxSuppression against onnxruntime: import (interpreter and compiled C),
and the exported file run by onnxruntime."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import scalefold as sf
from scalefold import api
from onnx_testing import build, compare
from scalefold.frontend.onnx import from_onnx
from scalefold.ir.errors import ScalefoldError
from scalefold.runtime.interp import run

RNG = np.random.default_rng(0)


def _ort(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def _rois() -> np.ndarray:
    """Regions in input pixels: ordinary, partly and wholly outside, under one pixel, flipped,
    larger than the image."""
    return np.array([[1.0, 2.0, 9.5, 7.0], [-3.0, -2.0, 4.0, 5.0], [30.0, 30.0, 40.0, 41.0],
                     [5.2, 5.4, 5.6, 5.5], [8.0, 6.0, 2.0, 1.0], [-10.0, -8.0, 40.0, 35.0],
                     [0.0, 0.0, 23.0, 19.0]], np.float32)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm,opset", [("half_pixel", 16), ("output_half_pixel", 16), (None, 10)])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_onnxruntime(mode: str, ctm: str | None, opset: int, sampling_ratio: int) -> None:
    x = RNG.standard_normal((2, 3, 10, 12)).astype(np.float32)
    rois = _rois()
    bi = np.array([0, 1, 0, 1, 1, 0, 1], np.int64)
    attrs = {"mode": mode, "output_height": 3, "output_width": 4, "sampling_ratio": sampling_ratio,
             "spatial_scale": 0.5}
    if ctm is not None:
        attrs["coordinate_transformation_mode"] = ctm
    feeds = {"x": x, "rois": rois, "bi": bi}
    got = compare(build("RoiAlign", feeds, attrs, opset=opset), feeds, rtol=1e-4, atol=1e-5)[0]
    assert got.shape == (7, 3, 3, 4) and got.abs().sum() > 0


def test_roi_align_compiled_and_exported(tmp_path) -> None:
    x = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)
    rois, bi = _rois()[:5], np.array([1, 0, 1, 0, 1], np.int64)
    feeds = {"x": x, "rois": rois, "bi": bi}
    m = build("RoiAlign", feeds, {"output_height": 2, "output_width": 2, "spatial_scale": 0.75}, opset=16)
    want = _ort(m, feeds)[0]
    g = from_onnx(m)
    got = api.build(g, "c")(*[torch.from_numpy(v) for v in feeds.values()])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    sf.to_onnx(g, tmp_path / "roi.onnx")
    np.testing.assert_allclose(_ort(str(tmp_path / "roi.onnx"), feeds)[0], want, rtol=1e-5, atol=1e-6)


def test_roi_align_batch_index_out_of_range_names_it() -> None:
    x = RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)
    feeds = {"x": x, "rois": _rois()[:2], "bi": np.array([0, 3], np.int64)}
    g = from_onnx(build("RoiAlign", feeds, {}, opset=16))
    with pytest.raises(ScalefoldError, match=r"batch_indices must lie in \[0, 1\), got 0 to 3"):
        run(g, *[torch.from_numpy(v) for v in feeds.values()])


def _nms_case(center: bool, batches: int = 2, classes: int = 3, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Boxes with duplicates and near-duplicates, scores with ties (rounded to tenths)."""
    if center:
        c = RNG.uniform(0, 10, (batches, n, 2))
        wh = RNG.uniform(0.5, 4, (batches, n, 2))
        boxes = np.concatenate([c, wh], -1)
    else:
        a = RNG.uniform(0, 10, (batches, n, 2))
        b = a + RNG.uniform(-4, 4, (batches, n, 2))          # either corner may come first
        boxes = np.concatenate([a, b], -1)
    boxes[:, 5] = boxes[:, 4]                                  # identical boxes
    boxes[:, 7] = boxes[:, 6] + 0.01
    scores = np.round(RNG.uniform(0, 1, (batches, classes, n)), 1)
    return boxes.astype(np.float32), scores.astype(np.float32)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("limit,iou,score", [(5, 0.5, 0.3), (100, 0.2, None), (3, 0.0, 0.85), (0, 0.5, 0.1)])
def test_nms_matches_onnxruntime(center: bool, limit: int, iou: float, score: float | None) -> None:
    boxes, scores = _nms_case(center)
    inits = {"limit": np.array([limit], np.int64), "iou": np.array([iou], np.float32)}
    names = ["boxes", "scores", "limit", "iou"]
    if score is not None:
        inits["score"] = np.array([score], np.float32)
        names.append("score")
    feeds = {"boxes": boxes, "scores": scores}
    m = build("NonMaxSuppression", feeds, {"center_point_box": int(center)}, opset=11, inits=inits,
              node_inputs=names)
    got = compare(m, feeds)[0]
    assert got.shape[1] == 3 and (got.shape[0] > 0) == (limit > 0)


def test_nms_absent_optional_inputs_keep_nothing_and_export(tmp_path) -> None:
    boxes, scores = _nms_case(False, 1, 2, 10)
    feeds = {"boxes": boxes, "scores": scores}
    got = compare(build("NonMaxSuppression", feeds, {}, opset=11), feeds)[0]
    assert got.shape == (0, 3)
    m = build("NonMaxSuppression", feeds, {}, opset=11, inits={"limit": np.array([4], np.int64)},
              node_inputs=["boxes", "scores", "limit"])
    g = from_onnx(m)
    sf.to_onnx(g, tmp_path / "nms.onnx")
    want = _ort(m, feeds)[0]
    assert 0 < want.shape[0] <= 8          # at most 4 per class; IoU threshold 0 drops any overlap
    np.testing.assert_array_equal(_ort(str(tmp_path / "nms.onnx"), feeds)[0], want)
    np.testing.assert_array_equal(api.build(g, "c")(*[torch.from_numpy(v) for v in feeds.values()]).numpy(), want)


def _if_model(same_shape: bool) -> Any:
    """If on a computed condition (any x > 0): same-shape branches (2x or x - 1), or branches
    of different lengths (no positives: an empty i64 list; else the flat positions of the
    positives), as torchvision's batched_nms guards its empty case."""
    from onnx import TensorProto, helper
    pos = helper.make_node("Greater", ["x", "zero"], ["pos"])
    anyp = helper.make_node("ReduceMax", ["posf"], ["m"], keepdims=0)
    castf = helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT)
    cond = helper.make_node("Greater", ["m", "zero"], ["c"])
    if same_shape:
        then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e"])], "else", [],
                                  [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    else:
        then = helper.make_graph([helper.make_node("NonZero", ["posr"], ["nz"]),
                                  helper.make_node("Reshape", ["nz", "flat"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", TensorProto.INT64, None)])
        other = helper.make_graph([helper.make_node("Constant", [], ["e"], value=helper.make_tensor(
            "empty", TensorProto.INT64, [0], []))], "else", [],
            [helper.make_tensor_value_info("e", TensorProto.INT64, None)])
    nodes = [pos, castf, anyp, cond, helper.make_node("Reshape", ["pos", "flat"], ["posr"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = [onnx.numpy_helper.from_array(np.array(v, np.float32), k) for k, v in
             (("zero", 0.0), ("one", 1.0), ("two", 2.0))] + \
        [onnx.numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT if same_shape else TensorProto.INT64,
                                                         None)], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("same_shape", [True, False])
def test_if_on_a_computed_condition(same_shape: bool, tmp_path) -> None:
    m = _if_model(same_shape)
    g = from_onnx(m)
    assert ("where" if same_shape else "if_select") in [n.op for n in g.nodes]
    sf.to_onnx(g, tmp_path / "if.onnx")
    compiled = api.build(g, "c")
    for x in (np.array([-1.0, 2.0, 0.0, 3.0], np.float32), np.array([-1.0, -2.0], np.float32),
              np.zeros(0, np.float32)):
        feeds = {"x": x}
        want = _ort(m, feeds)[0]
        got = compare(m, feeds)[0]
        assert tuple(got.shape) == want.shape
        np.testing.assert_array_equal(compiled(torch.from_numpy(x)).numpy(), want)
        np.testing.assert_array_equal(_ort(str(tmp_path / "if.onnx"), feeds)[0], want)


def test_if_branches_of_different_rank_are_refused_by_name() -> None:
    from onnx import TensorProto, helper
    m = _if_model(False)
    node = m.graph.node[-1]
    other = helper.make_graph([helper.make_node("Constant", [], ["e"], value=helper.make_tensor(
        "e2", TensorProto.INT64, [1, 1], [0]))], "else", [], [helper.make_tensor_value_info("e", TensorProto.INT64, None)])
    for a in node.attribute:
        if a.name == "else_branch":
            a.g.CopyFrom(other)
    with pytest.raises(ScalefoldError, match=r"output 0 is i64\[.*\] in then_branch and i64\[1,1\] in else_branch"):
        from_onnx(m)


def test_torchvision_faster_rcnn_matches_onnxruntime(tmp_path) -> None:
    """torchvision's Faster R-CNN as torch.onnx exports it (RoiAlign, NonMaxSuppression inside
    Ifs on computed conditions, NonZero, TopK) runs in the interpreter and as compiled C like
    onnxruntime: the same labels, scores within 1e-3 and each box within a pixel. Weights are
    drawn at He scale (the default init scores every box alike, so that ties decide the
    order), and detections are compared as sets, independent of how ties are ordered."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, num_classes=5).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.weight.normal_(0, (2.0 / mod.weight[0].numel()) ** 0.5)
                if mod.bias is not None:
                    mod.bias.normal_(0, 0.1)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 10, 10), size=(320, 320), mode="bilinear")[0]
    path = tmp_path / "frcnn.onnx"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, ([x],), str(path), opset_version=17, dynamo=False)
    boxes, labels, scores = _ort(str(path), {"image.1": x.numpy()})
    assert boxes.shape[0] > 10 and len(set(np.round(scores, 4))) > 5
    g = sf.from_onnx(str(path))
    assert {"roi_align", "nms", "if_select"} <= {n.op for n in g.nodes}
    for target in ("interp", "c"):
        gb, gl, gs = (t.numpy() for t in api.build(g, target)(x))
        assert gb.shape == boxes.shape and sorted(gl.tolist()) == sorted(labels.tolist())
        np.testing.assert_allclose(np.sort(gs), np.sort(scores), atol=1e-3)
        for b, lab in zip(boxes, labels):
            near = np.abs(gb[gl == lab] - b).max(1)
            assert near.min() < 1.0, f"{target}: no box of label {lab} near {b}"
