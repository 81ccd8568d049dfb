"""Every real architecture of the frontends compiles with target="triton" and matches the
reference interpreter to 1e-4 of the output scale (fp32), under the Triton interpreter on the
CPU (``SF_TRITON_TEST_DEVICE=cuda``: on a GPU).

Inputs are the builders' small ones, except ResNet-50 at 1x3x32x32 and MiniLM on one short
sentence: the interpreter runs every program in Python, and these still exercise every kernel
of the models.
"""
from __future__ import annotations

import os

DEVICE = os.environ.get("SF_TRITON_TEST_DEVICE", "cpu")
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"   # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from harness import assert_close  # noqa: E402
from models import BUILDERS, Case  # noqa: E402

from scalefold import api  # noqa: E402
from scalefold.frontend.torch import from_torch  # noqa: E402
from scalefold.runtime.interp import run  # noqa: E402


pytestmark = [pytest.mark.usefixtures("kernel_cache_dir"), pytest.mark.filterwarnings("ignore::RuntimeWarning")]   # numpy, in the interpreter


@pytest.fixture(autouse=True)
def _no_grad():
    # On a GPU, fp32 convolutions would run in TF32 (cuDNN's default): 1e-3, not 1e-4.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        yield
    torch.backends.cudnn.allow_tf32 = tf32


def _small(name: str) -> Case:
    case = BUILDERS[name]()
    if name == "resnet50":
        x = {"x": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))}
        case.inputs, case.tensors = x, x
    if name == "minilm":
        enc = {k: v[1:2, :4] for k, v in case.tensors.items()}   # "Hello world": [CLS] hello world [SEP]
        case.inputs, case.tensors = enc, enc
    return case


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_compiles_to_triton_and_matches_interpreter(name: str) -> None:
    case = _small(name)
    g = from_torch(case.model, case.inputs)
    cm = api.compile(g, target="triton")
    kinds = cm.schedule.by_kind()
    assert kinds.get("fused", 0) > 0, kinds   # generated kernels do run
    xs = [case.tensors[v.name] for v in g.inputs]
    got = cm(*[x.to(DEVICE) for x in xs])
    got = [t.cpu() for t in (got if isinstance(got, tuple) else [got])]
    want = run(g, *xs)
    for i, (o, e) in enumerate(zip(got, want)):
        assert_close(o, e, rtol=1e-4, rel_to_scale=True, what=f"{name} output {i}")
    assert_close(got[0], case.expected(case.tensors)[0], rtol=1e-4, rel_to_scale=True)
    if DEVICE == "cuda":
        # the second call captures a CUDA graph, the third replays it: the same results
        for call in (2, 3):
            again = cm(*[x.to(DEVICE) for x in xs])
            again = [t.cpu() for t in (again if isinstance(again, tuple) else [again])]
            for i, (o, e) in enumerate(zip(again, got)):
                assert torch.equal(o, e), f"{name} output {i} differs at call {call}"


def test_dynamic_bert_runs_at_batch_sizes_1_3_17() -> None:
    from torch.export import Dim

    case = BUILDERS["bert"]()
    B, S = Dim("B", max=64), Dim("S", max=64)
    g = from_torch(case.model, case.inputs,
                   dynamic_shapes={"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: S}})
    cm = api.build_triton(g, DEVICE)
    gen = torch.Generator().manual_seed(7)
    for b, s in ((1, 5), (3, 11), (17, 7)):
        ids = torch.randint(0, 100, (b, s), generator=gen)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[0, -1] = 0
        want = case.model(input_ids=ids, attention_mask=mask)
        for _ in range(3):   # on a GPU: run, capture, replay (one graph per binding)
            got = cm(ids.to(DEVICE), mask.to(DEVICE))
            assert_close(got[0].cpu(), want.last_hidden_state, rtol=1e-4, rel_to_scale=True)
            assert_close(got[1].cpu(), want.pooler_output, rtol=1e-4, rel_to_scale=True)
