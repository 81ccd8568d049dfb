"""to_onnx warns when the exported graph computes in bfloat16, which onnxruntime's CPU
provider cannot run (codegen/onnx.py ``_warn_no_cpu_kernels``)."""
from __future__ import annotations

import warnings

import onnxruntime as ort
import pytest
import torch

import scalefold as sf
from scalefold.ir.graph import Graph
from scalefold.runtime import interp


def _linear(dtype: torch.dtype, name: str) -> Graph:
    g = Graph(name)
    x = g.add_input(f"{'bf16' if dtype is torch.bfloat16 else 'f32'}[B,8]", "x")
    w = g.add_const(torch.randn(4, 8).to(dtype), name="w")
    g.set_outputs([g.add("linear", [x, w])], ["y"])
    return g


def test_bf16_compute_warns_and_really_fails_on_the_cpu_provider(tmp_path) -> None:
    p = tmp_path / "m.onnx"
    with pytest.warns(UserWarning, match=r"@lin16: it computes in bfloat16 \(linear\).*CPU"):
        sf.to_onnx(_linear(torch.bfloat16, "lin16"), p)
    # the warning's claim: onnxruntime's CPU provider has no kernel for it
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])


def test_float32_and_bf16_moves_do_not_warn(tmp_path) -> None:
    g = Graph("mv")
    x = g.add_input("bf16[B,8]", "x")
    y = g.add("cast", [g.add("transpose", [x], {"perm": (1, 0)})], {"to": "f32"})
    g.set_outputs([y], ["y"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sf.to_onnx(_linear(torch.float32, "lin32"), tmp_path / "a.onnx")
        sf.to_onnx(g, tmp_path / "b.onnx")
    s = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    assert s.get_outputs()[0].shape[0] == 8


class _ConvPoolTopk(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3)
        self.p = torch.nn.MaxPool2d(2)
        self.t = torch.nn.ConvTranspose2d(4, 2, 2, 2)
        self.n = torch.nn.InstanceNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.n(self.t(self.p(self.c(x))))
        return torch.nn.functional.avg_pool2d(y, 2).topk(2, -1)[0]


def test_ops_without_onnx_bf16_compute_in_float32(tmp_path) -> None:
    """Conv, ConvTranspose, pools, InstanceNormalization and TopK take no bfloat16 in ONNX:
    they are exported between casts, the file passes the checker, and onnx's reference
    evaluator (onnxruntime's CPU provider cannot run the rest) gives the IR reference's
    bfloat16 result, within a bfloat16 step of torch's own."""
    import numpy as np
    from onnx.reference import ReferenceEvaluator
    import ml_dtypes

    torch.manual_seed(0)
    m = _ConvPoolTopk().eval().to(torch.bfloat16)
    x = torch.randn(1, 3, 13, 13, dtype=torch.bfloat16)
    g = sf.from_torch(m, (x,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # nothing computes in bfloat16 in the file
        model = sf.to_onnx(g, tmp_path / "m.onnx")
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "MaxPool", "TopK")]
    assert len(convs) == 4
    ev = ReferenceEvaluator(str(tmp_path / "m.onnx"))
    got = ev.run(None, {ev.input_names[0]: x.float().numpy().astype(ml_dtypes.bfloat16)})[0]
    got = torch.from_numpy(got.astype(np.float32))
    torch.testing.assert_close(got, interp.run(g, x)[0].float(), rtol=0, atol=0)
    torch.testing.assert_close(got, m(x).float(), rtol=2 ** -7, atol=2 ** -7)


def test_float64_convolutions_warn(tmp_path) -> None:
    """An imported integer convolution is computed exactly in float64, which onnxruntime's CPU
    provider has no Conv kernel for: the export says so."""
    g = Graph("iconv")
    x = g.add_input("f64[1,2,5,5]", "x")
    w = g.add_const(torch.randint(-3, 3, (3, 2, 3, 3)).double(), name="w")
    g.set_outputs([g.add("conv", [x, w, None])], ["y"])
    with pytest.warns(UserWarning, match="float64 convolutions"):
        sf.to_onnx(g, tmp_path / "c.onnx")
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):
        ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])


def test_each_lifted_conv_keeps_its_own_weight(tmp_path) -> None:
    """Many bfloat16 convolutions, each exported through a float32 stand-in: every Conv node
    reads its own layer's weight. The stand-ins' constants were dropped after each node, and
    a later one could reuse an id the emitter had cached, naming an earlier layer's weight
    (the hunt's repro: 3 to 40 of 60 Conv nodes wrong, varying between runs)."""
    import warnings as w_

    import numpy as np
    import onnx
    from onnx import numpy_helper
    torch.manual_seed(0)
    m = torch.nn.Sequential(*[torch.nn.Conv2d(8, 8, 3, padding=1, bias=False) for _ in range(60)])
    m = m.eval().to(torch.bfloat16)
    x = torch.randn(1, 8, 16, 16, dtype=torch.bfloat16)
    p = tmp_path / "c.onnx"
    with torch.no_grad(), w_.catch_warnings():
        w_.simplefilter("ignore")      # bfloat16 compute: the CPU-provider warning
        cm = sf.compile(m, (x,), target="interp")
        sf.to_onnx(cm.graph, p)
        want = cm(x)
    onnx_m = onnx.load(str(p))
    inits = {i.name: numpy_helper.to_array(i) for i in onnx_m.graph.initializer}
    convs = [n for n in onnx_m.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(m)
    for n, layer in zip(convs, m):
        assert np.array_equal(inits[n.input[1]], layer.weight.detach().float().numpy()), n.input[1]
    # and the file computes what the graph does
    back = sf.compile(str(p), target="interp")
    assert torch.equal(back(x), want)
