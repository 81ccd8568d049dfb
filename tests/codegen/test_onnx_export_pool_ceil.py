"""to_onnx of ceil_mode pools whose last window starts past the input on one axis but not
another: torch (and the IR) drop such a window, onnx's ceil count keeps it, and ceil_mode is
one flag for every axis. The export uses floor mode with the kept windows' overhang as end
padding, which onnxruntime then runs to torch's numbers."""
from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

import scalefold as sf
from scalefold.codegen.onnx_build import ExportError

CASES = [
    (torch.nn.MaxPool2d(2, 3, ceil_mode=True), (1, 2, 7, 6)),
    (torch.nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 3, 8, 9)),
    (torch.nn.MaxPool2d((2, 3), (3, 4), ceil_mode=True), (1, 2, 10, 13)),
    (torch.nn.AvgPool2d(2, 3, ceil_mode=True), (1, 2, 7, 6)),          # no padding: any count
    (torch.nn.AvgPool2d(3, 3, padding=1, ceil_mode=True, count_include_pad=False), (1, 2, 8, 7)),
    (torch.nn.MaxPool1d(2, 3, ceil_mode=True), (1, 2, 7)),
    # H keeps its last window (ceil count), W drops one (onnx's ceil count is one more)
    (torch.nn.MaxPool2d((3, 2), (2, 3), padding=1, ceil_mode=True), (1, 2, 8, 7)),
    (torch.nn.AvgPool2d((3, 2), (2, 3), padding=1, ceil_mode=True, count_include_pad=False), (1, 2, 8, 7)),
    # a window longer than the input: ceil mode still pools it once (the IR refused these)
    (torch.nn.MaxPool2d(2, 2, ceil_mode=True), (1, 4, 1, 5)),
    (torch.nn.AvgPool2d(2, 2, ceil_mode=True), (1, 4, 1, 1)),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_ceil_pools_export_and_run_in_onnxruntime(i: int, tmp_path) -> None:
    m, shape = CASES[i]
    torch.manual_seed(i)
    x = torch.randn(*shape)
    want = m(x)
    cm = sf.compile(m, (x,), target="c")
    torch.testing.assert_close(cm(x), want)
    p = tmp_path / "p.onnx"
    sf.to_onnx(cm.graph, p)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_counted_padding_with_a_dropped_window_is_refused(tmp_path) -> None:
    m = torch.nn.AvgPool2d((3, 2), (2, 3), padding=1, ceil_mode=True, count_include_pad=True)
    x = torch.randn(1, 2, 8, 7)
    cm = sf.compile(m, (x,), target="interp")
    assert tuple(cm.graph.outputs[0].shape[2:]) == (5, 3)     # H keeps a window, W drops one
    with pytest.raises(ExportError, match="avg_pool.*count_include_pad"):
        sf.to_onnx(cm.graph, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
