"""Every real architecture of the frontends compiles with target="c" and matches the
reference interpreter to 1e-4 of the output scale."""
from __future__ import annotations

import pytest
import torch

from harness import assert_close
from models import BUILDERS
from scalefold.api import build_c
from scalefold.frontend.torch import from_torch
from scalefold.runtime.interp import run



@pytest.fixture(autouse=True)
def _no_grad():
    # A fixture, not a module-level switch, so other test modules keep autograd.
    with torch.no_grad():
        yield


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_model_compiles_to_c_and_matches_interpreter(name: str) -> None:
    case = BUILDERS[name]()
    g = from_torch(case.model, case.inputs)
    cm = build_c(g)
    assert cm.schedule.by_kind().get("fused", 0) > 0  # generated kernels do run
    xs = [case.tensors[v.name] for v in g.inputs]
    got = cm(*xs)
    got = list(got) if isinstance(got, tuple) else [got]
    want = run(g, *xs)
    for i, (o, e) in enumerate(zip(got, want)):
        assert_close(o, e, rtol=1e-4, rel_to_scale=True, what=f"{name} output {i}")
    # and against eager torch, for good measure
    assert_close(got[0], case.expected(case.tensors)[0], rtol=1e-4, rel_to_scale=True)


def test_dynamic_bert_runs_at_batch_sizes_1_3_17() -> None:
    from torch.export import Dim

    case = BUILDERS["bert"]()
    B, S = Dim("B", max=64), Dim("S", max=64)
    g = from_torch(case.model, case.inputs,
                   dynamic_shapes={"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: S}})
    cm = build_c(g)
    gen = torch.Generator().manual_seed(7)
    for b, s in ((1, 5), (3, 11), (17, 7)):
        ids = torch.randint(0, 100, (b, s), generator=gen)
        mask = torch.ones(b, s, dtype=torch.long)
        mask[0, -1] = 0
        got = cm(ids, mask)
        want = case.model(input_ids=ids, attention_mask=mask)
        assert_close(got[0], want.last_hidden_state, rtol=1e-4, rel_to_scale=True)
        assert_close(got[1], want.pooler_output, rtol=1e-4, rel_to_scale=True)
