"""to_onnx of the per-channel affine maps ``fold_batchnorm`` leaves (a ``mul`` then an ``add``
by [1, C, 1, ...] constants): one BatchNormalization (mean 0, variance 1, epsilon 0), which
onnxruntime runs in its blocked convolution layout, computing x·scale + shift as the graph."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import torch

import scalefold as sf
from scalefold.ir import Graph
from scalefold.runtime.interp import run


class PreAct(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn1, self.c1 = torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 8, 3, padding=1)
        self.bn2, self.c2 = torch.nn.BatchNorm2d(24), torch.nn.Conv2d(24, 8, 1)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.data.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c0(x)
        x = torch.cat([x, self.c1(torch.relu(self.bn1(x)))], 1)
        return self.c2(torch.relu(self.bn2(x)))


def test_pre_activation_batch_norms_export_as_batch_normalization(tmp_path) -> None:
    torch.manual_seed(0)
    m = PreAct().eval()
    x = torch.randn(2, 3, 9, 7)
    cm = sf.compile(m, (x,), target="interp", passes="fold_batchnorm")
    assert [n.op for n in cm.graph.nodes].count("mul") == 2
    p = tmp_path / "m.onnx"
    sf.to_onnx(cm.graph, p)
    ops = [n.op_type for n in onnx.load(str(p)).graph.node]
    assert ops.count("BatchNormalization") == 2 and "Mul" not in ops and "Add" not in ops
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, m(x), rtol=1e-5, atol=1e-5)
    # and it imports back as batch norms that compute the same
    torch.testing.assert_close(sf.compile(str(p), target="interp")(x), cm(x), rtol=1e-6, atol=1e-6)


def test_other_muls_and_adds_stay(tmp_path) -> None:
    """A mul read twice, one whose add is a graph output's producer by another operand, and
    per-tensor constants keep their Mul and Add."""
    g = Graph("keep")
    x = g.add_input("f32[2,4,3,3]", "x")
    s = g.add_const(torch.rand(1, 4, 1, 1) + 0.5)
    t = g.add_const(torch.randn(1, 4, 1, 1))
    a = g.add("mul", [x, s])
    g.set_outputs([g.add("add", [a, t]), g.add("relu", [a]),
                   g.add("add", [g.add("mul", [x, g.add_const(torch.tensor(2.0))]), t])])
    p = tmp_path / "k.onnx"
    sf.to_onnx(g, p)
    ops = [n.op_type for n in onnx.load(str(p)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Mul") == 2
    xv = torch.randn(2, 4, 3, 3)
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    for a_, b_ in zip(sess.run(None, {"x": xv.numpy()}), run(g, xv)):
        torch.testing.assert_close(torch.from_numpy(a_), b_)
