"""fold_batchnorm and fold_constant_scales on real timm architectures (random weights)."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close, assert_fired
from scalefold.frontend.torch import from_torch
from scalefold.ir.parser import parse
from scalefold.passes import PassManager, collect_near_misses
from scalefold.runtime.interp import run


def _randomise_bn(model: torch.nn.Module) -> int:
    """Give every BatchNorm non-trivial statistics and affine terms; returns how many."""
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
                n += 1
    return n


def test_inception_resnet_v2_folds_all_bn_and_39_residual_scales() -> None:
    import timm
    torch.manual_seed(0)
    model = timm.create_model("inception_resnet_v2", pretrained=False).eval()
    n_bn = _randomise_bn(model)
    # 75x75 is the smallest input: the stem and the two reduction blocks use unpadded
    # stride-2 convs, and 74x74 leaves mixed_7a an empty feature map.
    x = torch.randn(1, 3, 75, 75, generator=torch.Generator().manual_seed(0))
    g = from_torch(model, (x,))
    pm = PassManager("fold_batchnorm, fold_constant_scales, cleanup")
    out = pm.run(g)

    assert n_bn == 204
    assert_fired(pm.counters, "fold_batchnorm", "conv", n_bn)
    # Block35 x10 (0.17), Block17 x20 (0.10), Block8 x9 (0.20); the last Block8 multiplies
    # by 1.0, which is an identity that cleanup removes, not a fold.
    assert_fired(pm.counters, "fold_constant_scales", "mul_after", 39)
    assert_fired(pm.counters, "cleanup", "identity_mul", 1)
    ops = [n.op for n in out.nodes]
    assert "batch_norm" not in ops and "mul" not in ops
    assert ops.count("conv") == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    want = run(g, x)[0]
    got = run(out, x)[0]
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel <= 1e-5, f"relative error {rel:.2e}"
    assert_close(got, model(x).detach(), rel_to_scale=True)


def test_vit_layerscale_folds_into_linears() -> None:
    import timm
    torch.manual_seed(0)
    depth = 2
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              depth=depth, init_values=1e-5).eval()
    with torch.no_grad():  # LayerScale starts at 1e-5; make it matter for the numeric check
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    g = from_torch(model, (x,))
    pm = PassManager("fold_constant_scales")
    out = pm.run(g)
    assert_fired(pm.counters, "fold_constant_scales", "mul_after", 2 * depth)  # ls1 and ls2
    assert [n.op for n in out.nodes].count("mul") == 0
    assert_close(run(out, x)[0], run(g, x)[0], rel_to_scale=True)


@pytest.mark.filterwarnings("ignore:The tensor attributes:UserWarning")   # timm's attention-bias cache
def test_levit_linear_norms_fold() -> None:
    """LeViT's LinearNorm (linear, rows flattened, BatchNorm1d, reshaped back) folds: 50 of its
    52 BatchNorms; the two left normalise the classifier heads' inputs, before their linear,
    and become their per-channel affine maps."""
    import timm
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False).eval()
    assert _randomise_bn(model) == 52
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    g = from_torch(model, (x,))
    pm = PassManager("fold_batchnorm")
    out = pm.run(g)
    assert_fired(pm.counters, "fold_batchnorm", "linear_rows", 46)
    assert_fired(pm.counters, "fold_batchnorm", "affine", 2)
    assert [n.op for n in out.nodes].count("batch_norm") == 0
    with torch.no_grad():
        assert_close(run(out, x)[0], model(x), rel_to_scale=True)


def test_zero_divisor_is_a_traceable_near_miss(monkeypatch, capfd) -> None:
    g = parse("""graph @g(%x: f32[2,3]) -> (f32[2,3]) {
  %0: f32[2,3] = linear(%x, #w)
  %1: f32[2,3] = div(%0, #z)
  return %1
}
#w = const f32[3,3] randn(seed=0)
#z = const f32[3] [1.0, 0.0, 2.0]
""")
    monkeypatch.setenv("SCALEFOLD_TRACE_RULES", "1")
    pm = PassManager("fold_constant_scales")
    with collect_near_misses() as misses:
        out = pm.run(g)
    assert out == g and pm.counters.total("fold_constant_scales") == 0
    assert [str(m) for m in misses] == \
        ["fold_constant_scales.div_after near-miss at div #1: the divisor has zeros"]
    assert "div_after near-miss at div #1: the divisor has zeros" in capfd.readouterr().err


def test_weight_from_an_input_is_a_near_miss() -> None:
    g = parse("""graph @g(%x: f32[2,3], %w: f32[4,3]) -> (f32[2,4]) {
  %0: f32[2,4] = linear(%x, %w)
  %1: f32[2,4] = mul(%0, #s)
  return %1
}
#s = const f32[] 2.0
""")
    with collect_near_misses() as misses:
        out = PassManager("fold_constant_scales").run(g)
    assert out == g
    assert any("weight is not a constant" in m.reason for m in misses)
