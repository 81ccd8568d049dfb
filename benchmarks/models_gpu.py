"""GPU model sweep: scalefold ``target="triton"`` against torch eager on timm and Hugging Face
models (random weights), one process, same inputs.

For each model and dtype: the build time, the relative L2 error of scalefold's output against
torch eager in the same dtype and against torch eager in float32, that of the replayed CUDA
graph (third call), and the median time per call of both (CUDA events, after a warm-up;
scalefold replays each binding as one CUDA graph from its second call). A model that fails is
reported with its error and the sweep goes on.

    python3 benchmarks/models_gpu.py [--models resnet18,bert,...] [--dtypes bf16,f32]
        [--passes "quant_weights(format=int4, group=64)"] [--budget-s 540]

The repository root must be importable as the package ``scalefold`` (see e2e_gpu.py).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import traceback
from typing import Callable

import torch

TIMM = ("resnet18,mobilenetv3_small_100,efficientnet_b0,convnext_atto,regnety_002,vit_tiny_patch16_224,"
        "swin_tiny_patch4_window7_224,levit_128s,densenet121,inception_v3,coat_tiny,mobilevit_xxs,"
        "efficientformer_l1,poolformer_s12,ghostnet_100,rexnet_100,edgenext_xx_small,fastvit_t8")
HF = "bert,gpt2,llama,qwen2,t5enc,mixtral"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
VOCAB = 1000


def _first(o: object) -> torch.Tensor:
    if isinstance(o, (tuple, list)):
        return _first(o[0])
    for k in ("last_hidden_state", "logits"):
        if hasattr(o, k):
            return getattr(o, k)
    return o  # type: ignore[return-value]


class FirstOutput(torch.nn.Module):
    """The model's first tensor output (last_hidden_state / logits / out[0])."""

    def __init__(self, m: torch.nn.Module):
        super().__init__()
        self.m = m

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return _first(self.m(*xs))


def hf_model(name: str) -> torch.nn.Module:
    """A small random-weight transformers model (hidden 256, 2 layers)."""
    import transformers as T
    small = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4)
    build: dict[str, Callable[[], torch.nn.Module]] = {
        "bert": lambda: T.BertModel(T.BertConfig(hidden_size=256, intermediate_size=1024, **small)),
        "gpt2": lambda: T.GPT2Model(T.GPT2Config(vocab_size=VOCAB, n_embd=256, n_layer=2, n_head=4)),
        "llama": lambda: T.LlamaModel(T.LlamaConfig(hidden_size=256, num_key_value_heads=2,
                                                    intermediate_size=512, **small)),
        "qwen2": lambda: T.Qwen2Model(T.Qwen2Config(hidden_size=256, num_key_value_heads=2,
                                                    intermediate_size=512, **small)),
        "t5enc": lambda: T.T5EncoderModel(T.T5Config(vocab_size=VOCAB, d_model=256, num_layers=2,
                                                     num_heads=4, d_ff=512, d_kv=64)),
        "mixtral": lambda: T.MixtralModel(T.MixtralConfig(hidden_size=256, num_key_value_heads=2,
                                                          intermediate_size=512, num_local_experts=4,
                                                          num_experts_per_tok=2, **small)),
    }
    m = build[name]()
    m.config.use_cache = False
    return m


def make(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """(model, inputs) on the CPU in float32: a timm image model at batch 2, or a Hugging Face
    one on [4, 64] token ids."""
    torch.manual_seed(0)
    if name in HF.split(","):
        return FirstOutput(hf_model(name)).eval(), (torch.randint(0, VOCAB, (4, 64)),)
    import timm
    size = 299 if name.startswith("inception") else 224
    return FirstOutput(timm.create_model(name, pretrained=False)).eval(), (torch.randn(2, 3, size, size),)


def median_ms(fn: Callable[[], object], n: int = 30) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[n // 2]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def measure(name: str, dname: str, passes: str) -> dict:
    import scalefold as sf
    dev = torch.device("cuda")
    row: dict = {"model": name, "dtype": dname, "passes": passes}
    try:
        m, xs = make(name)
        dt = DTYPES[dname]
        xs_t = tuple(x.to(dt) if x.is_floating_point() else x for x in xs)
        m_dt = copy.deepcopy(m).to(dt)
        m_dev = copy.deepcopy(m).to(device=dev, dtype=dt)
        xd = tuple(x.to(dev) for x in xs_t)
        with torch.no_grad():
            t0 = time.perf_counter()
            cm = sf.compile(m_dt, xs_t, passes=passes, target="triton",
                            calibration=[xs_t] if passes else None)
            out = _first(cm(*xd))
            torch.cuda.synchronize()
            row["build s"] = round(time.perf_counter() - t0, 1)
            ref = _first(m_dev(*xd))
            ref32 = _first(copy.deepcopy(m).to(dev)(*(x.to(dev) for x in xs)))
            row["err"], row["err vs f32"], row["eager err vs f32"] = rel(out, ref), rel(out, ref32), rel(ref, ref32)
            cm(*xd)
            row["err replay"] = rel(_first(cm(*xd)), ref)
            row["eager ms"] = median_ms(lambda: m_dev(*xd))
            row["scalefold ms"] = median_ms(lambda: cm(*xd))
            row["x eager"] = row["eager ms"] / row["scalefold ms"]
            row["kernels"] = cm.schedule.by_kind()
    except Exception as e:  # noqa: BLE001  (a sweep reports a failing model and goes on)
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        row["where"] = traceback.format_exc(limit=-3)[-600:]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=f"{TIMM},{HF}")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--passes", default="")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting new models after this")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}; passes {a.passes or '(none)'}")
    print(f"{'model':30s} {'dtype':5s} {'build s':>7s} {'err':>9s} {'vs f32':>9s} {'eager':>9s} "
          f"{'replay':>9s} {'eager ms':>9s} {'sf ms':>8s} {'x eager':>7s}")
    for name in a.models.split(","):
        for dname in a.dtypes.split(","):
            if time.perf_counter() - t0 > a.budget_s:
                print(f"{name:30s} {dname:5s} skipped: time budget")
                continue
            r = measure(name, dname, a.passes)
            rows.append(r)
            if "error" in r:
                print(f"{name:30s} {dname:5s} FAILED {r['error']}\n{r['where']}")
            else:
                print(f"{name:30s} {dname:5s} {r['build s']:7.1f} {r['err']:9.2e} {r['err vs f32']:9.2e} "
                      f"{r['eager err vs f32']:9.2e} {r['err replay']:9.2e} {r['eager ms']:9.3f} "
                      f"{r['scalefold ms']:8.3f} {r['x eager']:7.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
