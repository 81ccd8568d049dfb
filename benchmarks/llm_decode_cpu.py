"""LLM token generation on the CPU: a Llama-style decoder, fp32 and weight-only int4 g128.

A ``transformers.LlamaForCausalLM`` built from a config with random weights (default hidden
2048, intermediate 5632, 4 layers, 32 heads, 4 KV heads, vocab 32000: a TinyLlama-1.1B
shaped slice) is wrapped so that the KV cache is explicit: ``Decoder(ids, k0, v0, k1, v1,
...) -> (logits of the last position, k0', v0', ...)``, the past tensors ``[1, kv_heads, P,
head_dim]`` going in and the past-plus-new ones coming out (a ``DynamicCache`` is built from
them inside ``forward``). Two steps are measured, each in one process on the same inputs:

- decode: batch 1, one new token on a KV cache of ``--past`` tokens (the past length is the
  dynamic dimension ``P`` of one exported graph, so one compiled model serves every step);
- prompt: batch 1, ``--prompt`` tokens and no past (a second, static graph);
- generation: ``--generate`` greedy tokens from the decode step's cache, each step's present
  KV fed back, so each call meets a cache one token longer (a new binding of the sizes per
  token, as in a real generation loop; the decode row above reuses one binding).

Runners: torch eager fp32; scalefold ``target="c"`` fp32; scalefold ``target="c"`` with
``quant_weights(format=int4, group=128, method=rtn)`` (f32 activations, nibbles dequantised
in registers) and the same with ``act=int8`` (per-token int8 activations, the VNNI path, the
counterpart of onnxruntime's accuracy level 4); onnxruntime CPU on scalefold's ONNX export of the float graph, and on its
export of the int4 graph (``com.microsoft.MatMulNBits``, ``nbits_accuracy`` 0 = f32
activations and 4 = int8 activations). All with ``--threads`` (2) threads.

Printed per step: the median per-call latency over ``--rounds`` interleaved rounds (each round
the median of ``--iters`` calls of every runner in turn; the spread is the min..max of the
round medians), tokens/s, ratios against torch fp32 and against the onnxruntime runner of the
same weights, and the effective weight bandwidth (bytes of constants streamed per step: every
constant except the embedding table, of which one row is read, / time). Output agreement:
fp32 runners against torch, int4 runners against scalefold int4 (max abs error / max abs value
of the reference, over the logits and over the new KV). Then a per-kernel breakdown of the scalefold int4 decode step (the executor's
steps timed one by one), compile times and the process peak RSS.

Each round starts with a full garbage collection (``gc.collect()``). Compiling seven models
leaves hundreds of thousands of new objects behind, and the first full collection after that
walks every object of the process (torch, transformers and the models: 250-270 ms here).
Without the explicit collection it landed inside whichever runner's timing reached the
collector's thresholds first: one 266 ms pause in 8 tokens read as 39 ms per token. After
one collection, 400 generated tokens of the int4 model (a new binding each) set off no
further full collection (seventeenth session, ``probe/gcr.py``, not kept). An application
does the same by calling ``gc.collect()`` (or ``gc.freeze()``) once after compiling.

The machine this was written on has 2 cores shared with other jobs: OpenMP's spinning barriers
then stall kernels for a scheduler tick, so ``OMP_WAIT_POLICY=PASSIVE`` is set (and
onnxruntime's ``session.intra_op.allow_spinning`` is 0) unless ``--omp-spin`` is given.

    PYTHONPATH=/tmp/pkg .venv/bin/python benchmarks/llm_decode_cpu.py [--layers 4] [--past 256]
        [--prompt 64] [--generate 32] [--hidden 2048] [--intermediate 5632] [--kv-heads 4] [--iters 10]
        [--rounds 3] [--threads 2] [--omp-spin] [--quick] [--out results.json]

``--quick`` is a smoke run (2 layers, hidden 512, fewer iterations).
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before torch loads libgomp: on a shared machine spinning OpenMP barriers make every kernel
# wait for the 4 ms scheduler tick (benchmarks/RESULTS.md, w4_cpu.py); --omp-spin keeps the default.
if "--omp-spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from scalefold.runtime.timing import median_ms  # noqa: E402

Runner = Callable[[], Any]
QUANT = "quant_weights(format=int4, group=128, method=rtn)"
QUANT_A8 = "quant_weights(format=int4, group=128, method=rtn, act=int8)"


class Decoder(torch.nn.Module):
    """``LlamaForCausalLM`` with an explicit KV cache: ``forward(ids, *past)`` where ``past`` is
    ``k0, v0, k1, v1, ...`` (possibly empty), returning the last position's logits and the
    updated keys and values in the same order."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(list(zip(past[0::2], past[1::2])) if past else None, config=self.lm.config)
        out = self.lm(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        c = getattr(out, "cache", None) or out.past_key_values
        kv: list[torch.Tensor] = []
        for layer in c.layers:
            kv += [layer.keys, layer.values]
        return (out.logits, *kv)


def build_model(a: argparse.Namespace) -> tuple[Decoder, Any]:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=a.hidden, intermediate_size=a.intermediate,
                                   num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                   num_key_value_heads=a.kv_heads, vocab_size=a.vocab,
                                   max_position_embeddings=4096)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    return Decoder(lm).eval(), cfg


def streamed_bytes(g: Any) -> int:
    """Bytes of the constants one call reads: all of them, except that an embedding table
    (a gather) contributes one row."""
    total = 0
    for v in g.constants():
        users = v.users()
        if users and all(n.op == "embedding" for n in users):
            total += int(v.type.nbytes()) // int(v.type.shape[0])
        else:
            total += int(v.type.nbytes())
    return total


def max_err(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(max |logits diff| / max |logits|, max |KV diff| / max |KV| over every present tensor)."""
    lg = float((got[0].float() - want[0].float()).abs().max() / want[0].abs().max())
    kv = max((float((x.float() - y.float()).abs().max() / y.abs().max()) for x, y in zip(got[1:], want[1:])),
             default=0.0)
    return lg, kv


def time_rounds(fns: dict[str, Runner], rounds: int, iters: int) -> dict[str, list[float]]:
    """Round medians (ms) per runner, the runners taken in turn in each round so that a
    disturbance of the shared machine hits them alike."""
    res: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(rounds):
            gc.collect()       # see the module docstring: compile-time garbage, not the runners'
            for nm, f in fns.items():
                res[nm].append(median_ms(f, iters, warmup=2))
    return res


def ort_session(path: str, threads: int, spin: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # the IR's numbers: no QDQ rewrites (our int4 export writes MatMulNBits directly)
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def ort_runner(sess: Any, names: list[str], inputs: Sequence[torch.Tensor]) -> tuple[Runner, Callable[[], list]]:
    feed = {n: x.numpy() for n, x in zip(names, inputs)}
    run = lambda: sess.run(None, feed)  # noqa: E731
    return run, lambda: [torch.from_numpy(o) for o in run()]


def profile_steps(cm: Any, inputs: Sequence[torch.Tensor], calls: int) -> list[tuple[str, int, float]]:
    """Time each executor step of ``cm`` (scalefold C) over ``calls`` calls; rows (kind:op
    group, count, ms per call), slowest first. Uses the executor's private step list."""
    ex = cm._runner
    segments, ex.segments = ex.segments, False   # one call per step, so that each is timed
    cm(*inputs)
    b = next(reversed(ex._bound.values()))   # the binding of these inputs: the last used
    acc: dict[int, float] = collections.defaultdict(float)
    orig = list(b.steps)

    def wrap(i: int, f: Callable[[list], None]) -> Callable[[list], None]:
        def g(vals: list) -> None:
            t = time.perf_counter()
            f(vals)
            acc[i] += time.perf_counter() - t
        return g

    b.steps[:] = [wrap(i, f) for i, f in enumerate(orig)]
    try:
        for _ in range(calls):
            cm(*inputs)
    finally:
        b.steps[:] = orig
        ex.segments = segments
    groups: dict[str, list[float]] = collections.defaultdict(list)
    for i, k in enumerate(cm.schedule.kernels):
        ops = "+".join(n.op for n in k.nodes[:4]) + ("+..." if len(k.nodes) > 4 else "")
        sig = ""
        if k.nodes[0].op in ("qlinear", "linear"):
            sig = "[" + "x".join(str(d) for d in k.nodes[0].outputs[0].type.shape[-1:]) + "]"
        groups[f"{k.kind}:{ops}{sig}"].append(acc[i] / calls * 1e3)
    rows = [(nm, len(ts), sum(ts)) for nm, ts in groups.items()]
    return sorted(rows, key=lambda r: -r[2])


def generate(fn: Callable[..., Sequence[torch.Tensor]], ids: torch.Tensor, past: Sequence[torch.Tensor],
             n: int) -> tuple[float, list[int]]:
    """Greedy generation of ``n`` tokens with ``fn`` (``fn(ids, *past) -> (logits, *present)``),
    each step's present KV fed back as the next step's past, so every call meets a cache one
    token longer: a new binding of the sizes at every token. Returns (ms per token, tokens)."""
    toks: list[int] = []
    kv = list(past)
    t = time.perf_counter()
    with torch.no_grad():
        for _ in range(n):
            out = fn(ids, *kv)
            ids = out[0].reshape(1, -1).argmax(-1).reshape(1, 1)
            kv = list(out[1:])
            toks.append(int(ids))
    return (time.perf_counter() - t) / n * 1e3, toks


def ort_fn(sess: Any, names: list[str]) -> Callable[..., list[torch.Tensor]]:
    """``sess`` as a function of torch tensors (for ``generate``)."""
    return lambda *xs: [torch.from_numpy(o) for o in sess.run(None, {k: x.numpy() for k, x in zip(names, xs)})]


def table(title: str, times: dict[str, list[float]], ntok: int, wbytes: dict[str, int],
          errs: dict[str, str], ort_of: dict[str, str]) -> list[str]:
    base = statistics.median(times["torch eager fp32"])
    out = [f"### {title}", "",
           "| runner | ms/call (median) | spread (min..max) | tokens/s | vs torch fp32 | vs ORT same weights | weight GB/s | max rel err |",
           "|---|---|---|---|---|---|---|---|"]
    for nm, ts in times.items():
        ms = statistics.median(ts)
        o = ort_of.get(nm)
        vs_ort = f"{statistics.median(times[o]) / ms:.2f}x ({o.split(' ')[-1]})" if o in times else "-"
        gbs = wbytes[nm] / (ms * 1e-3) / 1e9
        out.append(f"| {nm} | {ms:.2f} | {min(ts):.2f}..{max(ts):.2f} | {ntok / ms * 1e3:.1f} | "
                   f"{base / ms:.2f}x | {vs_ort} | {gbs:.1f} | {errs.get(nm, '-')} |")
    return out + [""]


def generation(a: argparse.Namespace, dec: Any, cm32: Any, cm4: Any, cm4a: Any, sess: dict[str, Any],
               names: list[str], dec_in: Sequence[torch.Tensor], results: dict[str, Any]) -> list[str]:
    """Greedy generation of ``--generate`` tokens from the decode inputs' cache, per runner,
    in ``--rounds`` interleaved rounds: the cache grows by one each token."""
    gens: dict[str, Callable[..., Sequence[torch.Tensor]]] = {
        "torch eager fp32": dec, "scalefold c fp32": cm32, "ORT fp32": ort_fn(sess["fp32"], names),
        "scalefold c int4 g128": cm4, "scalefold c int4 g128 act=int8": cm4a,
        "ORT int4 acc0": ort_fn(sess["int4_acc0"], names), "ORT int4 acc4": ort_fn(sess["int4_acc4"], names)}
    print(f"[generate] {a.generate} tokens x {a.rounds} rounds", flush=True)
    ms: dict[str, list[float]] = {k: [] for k in gens}
    toks: dict[str, list[int]] = {}
    for _ in range(a.rounds):
        gc.collect()
        for nm, f in gens.items():
            t, toks[nm] = generate(f, dec_in[0], dec_in[1:], a.generate)
            ms[nm].append(t)
    base = statistics.median(ms["torch eager fp32"])
    out = [f"### greedy generation: {a.generate} tokens from {a.past} past (a new cache length, so a "
           f"new binding of the sizes, at every token)", "",
           "| runner | ms/token (median) | spread (min..max) | tokens/s | vs torch fp32 | tokens equal to |",
           "|---|---|---|---|---|---|"]
    for nm, ts in ms.items():
        m = statistics.median(ts)
        ref = "torch eager fp32" if "int4" not in nm else "scalefold c int4 g128"
        same = sum(x == y for x, y in zip(toks[nm], toks[ref]))
        out.append(f"| {nm} | {m:.2f} | {min(ts):.2f}..{max(ts):.2f} | {1e3 / m:.1f} | {base / m:.2f}x | "
                   f"{same}/{a.generate} of {ref} |")
    results["generate"] = {"ms_per_token": ms, "tokens": toks}
    print("\n".join(out), flush=True)
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--past", type=int, default=256, help="KV cache length of the decode step")
    ap.add_argument("--prompt", type=int, default=64, help="tokens of the prompt step (0: skip it)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--generate", type=int, default=32,
                    help="tokens of greedy generation from the decode cache, a new cache length each (0: skip)")
    ap.add_argument("--profile-calls", type=int, default=10, help="calls for the per-kernel breakdown (0: skip)")
    ap.add_argument("--omp-spin", action="store_true",
                    help="leave OMP_WAIT_POLICY and ORT's thread spinning at their defaults (else passive / off)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 layers, hidden 512, 1 round")
    ap.add_argument("--out", default="", help="write the measurements as JSON here")
    a = ap.parse_args(argv)
    if a.quick:
        a.layers, a.hidden, a.intermediate, a.heads, a.kv_heads = 2, 512, 1408, 8, 2
        a.iters, a.rounds, a.past, a.prompt, a.profile_calls = 5, 1, min(a.past, 64), min(a.prompt, 16), 3
        a.generate = min(a.generate, 8)
    if a.hidden % a.heads or a.heads % a.kv_heads or a.hidden % 128 or a.intermediate % 128:
        ap.error("--hidden must divide by --heads (and 128), --heads by --kv-heads, --intermediate by 128")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    torch.set_num_threads(a.threads)

    import scalefold as sf
    from torch.export import Dim

    t0 = time.perf_counter()
    dec, cfg = build_model(a)
    hd = a.hidden // a.heads
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randint(0, a.vocab, (1, a.past), generator=gen)
    with torch.no_grad():                      # a real cache: the model's own KV of a prompt
        past = list(dec(ctx)[1:])
    ids1 = torch.randint(0, a.vocab, (1, 1), generator=gen)
    dec_in = (ids1, *past)
    prompt_in = (torch.randint(0, a.vocab, (1, a.prompt), generator=gen),) if a.prompt else ()
    info: dict[str, Any] = {"args": vars(a), "compile_s": {}}
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Llama decoder: hidden {a.hidden}, intermediate {a.intermediate}, {a.layers} layers, "
          f"{a.heads} heads / {a.kv_heads} kv heads (head_dim {hd}), vocab {a.vocab}; decode on "
          f"{a.past} past tokens, prompt {a.prompt} tokens; {a.threads} threads "
          f"(model built in {time.perf_counter() - t0:.1f} s)", flush=True)

    def timed(key: str, f: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        r = f()
        info["compile_s"][key] = round(time.perf_counter() - t, 2)
        print(f"  {key}: {info['compile_s'][key]:.1f} s", flush=True)
        return r

    P = Dim("P", min=2, max=4096)
    g_dec = timed("import decode graph (torch.export, dynamic P)", lambda: sf.from_torch(
        dec, dec_in, dynamic_shapes=(None, tuple({2: P} for _ in past))))
    g_pre = timed("import prompt graph", lambda: sf.from_torch(dec, prompt_in)) if a.prompt else None

    steps: list[tuple[str, Any, tuple[torch.Tensor, ...], int]] = [("decode", g_dec, dec_in, 1)]
    if g_pre is not None:
        steps.append(("prompt", g_pre, prompt_in, a.prompt))
    lines: list[str] = []
    results: dict[str, Any] = {}
    profile_cm: Any = None
    with tempfile.TemporaryDirectory() as d:
        for step, g, inputs, ntok in steps:
            print(f"[{step}] compiling", flush=True)
            cm32 = timed(f"{step}: scalefold c fp32 build", lambda: sf.compile(g, target="c"))
            cm4 = timed(f"{step}: scalefold c int4 quant_weights+build",
                        lambda: sf.compile(g, passes=[QUANT], target="c"))
            cm4a = timed(f"{step}: scalefold c int4 act=int8 quant_weights+build",
                         lambda: sf.compile(g, passes=[QUANT_A8], target="c"))
            paths = {nm: os.path.join(d, f"{step}_{nm}.onnx") for nm in ("fp32", "int4_acc0", "int4_acc4")}
            timed(f"{step}: to_onnx fp32", lambda: sf.to_onnx(g, paths["fp32"]))
            timed(f"{step}: to_onnx int4 acc0", lambda: sf.to_onnx(cm4.graph, paths["int4_acc0"], nbits_accuracy=0))
            timed(f"{step}: to_onnx int4 acc4", lambda: sf.to_onnx(cm4.graph, paths["int4_acc4"], nbits_accuracy=4))
            names = [v.name for v in g.inputs]
            sess = {nm: timed(f"{step}: ort session {nm}", lambda p=p: ort_session(p, a.threads, a.omp_spin))
                    for nm, p in paths.items()}
            fns: dict[str, Runner] = {
                "torch eager fp32": lambda: dec(*inputs),
                "scalefold c fp32": lambda: cm32(*inputs),
                "ORT fp32": ort_runner(sess["fp32"], names, inputs)[0],
                "scalefold c int4 g128": lambda: cm4(*inputs),
                "scalefold c int4 g128 act=int8": lambda: cm4a(*inputs),
                "ORT int4 acc0": ort_runner(sess["int4_acc0"], names, inputs)[0],
                "ORT int4 acc4": ort_runner(sess["int4_acc4"], names, inputs)[0],
            }
            with torch.no_grad():
                ref = list(dec(*inputs))
                outs = {"torch eager fp32": ref, "scalefold c fp32": list(cm32(*inputs)),
                        "scalefold c int4 g128": list(cm4(*inputs)),
                        "scalefold c int4 g128 act=int8": list(cm4a(*inputs))}
            for nm in ("fp32", "int4_acc0", "int4_acc4"):
                outs[{"fp32": "ORT fp32", "int4_acc0": "ORT int4 acc0", "int4_acc4": "ORT int4 acc4"}[nm]] = \
                    ort_runner(sess[nm], names, inputs)[1]()
            errs: dict[str, str] = {}
            for nm, o in outs.items():
                if nm == "torch eager fp32":
                    continue
                against = "scalefold c int4 g128" if "int4" in nm and nm != "scalefold c int4 g128" else "torch eager fp32"
                lg, kv = max_err(o, outs[against])
                short = "sf int4" if against.startswith("scalefold") else "torch"
                errs[nm] = f"vs {short}: logits {lg:.1e}, kv {kv:.1e}"
            print(f"[{step}] timing: {a.rounds} rounds x {a.iters} calls", flush=True)
            times = time_rounds(fns, a.rounds, a.iters if step == "decode" else max(3, a.iters // 2))
            b32, b4 = streamed_bytes(g), streamed_bytes(cm4.graph)
            wbytes = {nm: (b4 if "int4" in nm else b32) for nm in fns}
            ort_of = {"torch eager fp32": "ORT fp32", "scalefold c fp32": "ORT fp32",
                      "scalefold c int4 g128": "ORT int4 acc0", "scalefold c int4 g128 act=int8": "ORT int4 acc4"}
            title = (f"{step}: " + (f"1 token, {a.past} past" if step == "decode" else f"{ntok} tokens, no past")
                     + f" (weights streamed: fp32 {b32 / 1e6:.0f} MB, int4 {b4 / 1e6:.0f} MB)")
            lines += table(title, times, ntok, wbytes, errs, ort_of)
            if step == "decode":
                nq = sum(n.op == "qlinear" for n in cm4.graph.nodes)
                nl = sum(n.op == "linear" for n in cm4.graph.nodes)
                kvb = sum(int(t.nbytes) for t in past)
                lines += [f"int4 graph: {nq} qlinear, {nl} linear left in float; KV cache read per step "
                          f"{kvb / 1e6:.1f} MB (not counted above)", ""]
                profile_cm = (cm4, inputs, fns["ORT int4 acc0"])
            results[step] = {"times_ms": times, "errors": errs, "weight_bytes": {"fp32": b32, "int4": b4}}
            print("\n".join(lines[-(len(fns) + 6):]), flush=True)
            if step == "decode" and a.generate:
                lines += generation(a, dec, cm32, cm4, cm4a, sess, names, dec_in, results)
            sess, fns, cm32, cm4a = {}, {}, None, None   # free this step's models before the next

        if profile_cm is not None and a.profile_calls:
            cm4, inputs, _ = profile_cm
            rows = profile_steps(cm4, inputs, a.profile_calls)
            tot = sum(r[2] for r in rows)
            with torch.no_grad():
                wall = median_ms(lambda: cm4(*inputs), a.profile_calls, warmup=1)
            lines += [f"### scalefold c int4 decode step, per kernel group ({a.profile_calls} calls; "
                      f"steps sum {tot:.2f} ms, call wall {wall:.2f} ms, python/glue {wall - tot:.2f} ms)", "",
                      "| kernel group | kernels | ms/step | share |", "|---|---|---|---|"]
            for nm, cnt, ms in rows[:14]:
                lines.append(f"| `{nm}` | {cnt} | {ms:.3f} | {ms / tot * 100:.1f}% |")
            rest = rows[14:]
            if rest:
                lines.append(f"| ({len(rest)} other groups) | {sum(r[1] for r in rest)} | "
                             f"{sum(r[2] for r in rest):.3f} | {sum(r[2] for r in rest) / tot * 100:.1f}% |")
            lines.append("")
            results["profile"] = rows
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    lines += ["compile / export times (s): " + ", ".join(f"{k} {v}" for k, v in info["compile_s"].items()),
              f"peak RSS {rss:.2f} GB"]
    print("\n" + "\n".join(lines))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({**info, **results, "peak_rss_gb": rss}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
