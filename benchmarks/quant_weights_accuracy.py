"""Weight-only quantisation accuracy on the real all-MiniLM-L6-v2 (issue 8).

Sentence-embedding cosine to the fp32 transformers model, min and mean over the 64
EVALUATION sentences of ``outliertune_accuracy.py``; the calibrating methods see only its 48
CALIBRATION sentences (``--calibration extended``: also the 120 EXTRA_CALIBRATION sentences
below, written for this benchmark). Every spec is a ``quant_weights`` pipeline run by the reference
interpreter.

    .venv/bin/python benchmarks/quant_weights_accuracy.py [--extras] [--calibration extended]

``--extras`` adds mixed precision under a bit budget and FP activation quantisation with and
without LLM-FP4's exponent-bias reparameterisation.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import outliertune_accuracy as acc  # noqa: E402

#: More calibration text for ``calibration="extended"``: 120 sentences written for this
#: benchmark, none in (or within 25% word overlap of) EVALUATION or CALIBRATION. GPTQ fits
#: K x K Hessians (K = 1536 for the MLP's second linear) and is data-limited on the 48
#: CALIBRATION sentences alone (mean cosine 0.9657 / 0.9710 / 0.9745 on 16 / 32 / 48).
EXTRA_CALIBRATION = [
    'We are thinking about adopting a second cat from the shelter.',
    'My phone battery dies by lunchtime ever since the last update.',
    'Can you pick up some milk and bread on your way home?',
    'The kids built a fort out of cushions and blankets in the living room.',
    "Dinner is at eight, so don't snack too much before then.",
    'The laundry has been sitting in the machine since yesterday.',
    'She jogs along the canal every morning before sunrise.',
    'Our flat gets very cold in winter because the windows are old.',
    "Let's meet at the café next to the station at half past ten.",
    'The dog refuses to go outside when it is raining.',
    'I finally finished the thousand-piece puzzle of the lighthouse.',
    'They spent the whole weekend painting the spare bedroom green.',
    'Please send me the updated budget spreadsheet by Friday afternoon.',
    'The board approved the merger after months of negotiation.',
    'Inflation eased slightly last month, but food prices are still rising.',
    'Our team missed the deadline because the requirements changed twice.',
    'The factory will cut two hundred jobs as demand for diesel engines falls.',
    'Customer complaints dropped after we redesigned the checkout page.',
    'The invoice lists the wrong VAT number, so accounting rejected it.',
    'Remote work has changed how companies think about office space.',
    'The consultant recommended closing three underperforming branches.',
    'Oil prices climbed after the cartel announced deeper production cuts.',
    'Black holes bend light so strongly that nothing can escape their horizon.',
    'The new antibiotic killed bacteria that resist every other treatment.',
    'Coral reefs are bleaching as ocean temperatures keep rising.',
    'Glaciers in the Alps have lost more than half of their volume since 1900.',
    'The patient recovered quickly after the minimally invasive surgery.',
    'The study found no link between the sweetener and cancer in mice.',
    'Sleep deprivation impairs memory, attention and decision making.',
    'Wolves were reintroduced to the park and the elk population changed its habits.',
    'A magnitude six earthquake shook the coastal city early on Sunday.',
    'The server crashed because the log files filled the entire disk.',
    'Use a hash map if you need constant-time lookups by key.',
    'The GPU kernel is memory bound, so fusing the two loops doubles its speed.',
    'x = [n * n for n in numbers if n % 2 == 0]',
    'The firmware update fixes a bug that drained the battery overnight.',
    'Never store passwords in plain text; hash them with a slow salted function.',
    'The unit tests pass locally but fail on the continuous integration server.',
    'npm install failed with a peer dependency conflict.',
    'Caching the results cut the page load time from three seconds to half a second.',
    'The robot vacuum keeps getting stuck under the sofa.',
    'She rewrote the parser in Rust and it became ten times faster.',
    'Transformers use attention to weigh how much each word matters to the others.',
    'The night train from Vienna to Venice crosses the mountains after midnight.',
    'Kyoto is famous for its temples, gardens and wooden tea houses.',
    'The festival attracts street performers from all over the world.',
    'Our flight was cancelled, so we spent the night at the airport hotel.',
    'The cathedral took nearly two hundred years to complete.',
    'Street food in Bangkok is cheap, spicy and available all night.',
    "The gallery is showing early photographs of the city's harbour.",
    'He learned to play the violin at the age of forty.',
    'The choir rehearses every Wednesday evening in the old chapel.',
    'The poet read her new collection to a small but attentive audience.',
    'The marathon was postponed because of the heatwave.',
    'The goalkeeper saved two penalties in the shoot-out.',
    'She won the tennis final in straight sets.',
    'The cycling team trains at altitude for three weeks every spring.',
    'Ticket prices for the derby have doubled in five years.',
    'Parliament passed the bill by a narrow margin late last night.',
    'Thousands of people marched through the capital to demand cleaner air.',
    'The city council voted to build a new bicycle lane along the river.',
    'Voter turnout was the lowest in three decades.',
    'The ministry announced free school meals for all primary pupils.',
    'Negotiators agreed on a ceasefire after two days of talks.',
    'Fry the onions slowly until they are soft and golden.',
    'This soup tastes even better the next day.',
    'The restaurant only serves fish caught that morning.',
    "I'm allergic to peanuts, so please check the sauce.",
    'A squeeze of lemon brings out the flavour of grilled vegetables.',
    'How many kilometres is it from here to the coast?',
    'Which platform does the train to Glasgow leave from?',
    'Can I pay by card or only in cash?',
    'Would you mind turning the music down a little?',
    'Do you know a good dentist near the city centre?',
    'How long should I boil an egg for a runny yolk?',
    'Nope, not today.',
    'Call me back later.',
    'Happy birthday!!!',
    "lol that's hilarious",
    'ok',
    '3.14159',
    'Room 12B, second floor',
    'Order #58213 has shipped.',
    'Buenos días, ¿cómo estás?',
    'Je ne sais pas où il est.',
    'Das Wetter ist heute schön.',
    "Grazie mille per l'aiuto.",
    'Obrigado pela ajuda.',
    'Ik hou van fietsen.',
    'The total comes to 19.99 euros including tax.',
    'Meeting notes: budget approved, hiring paused, next review in May.',
    'TODO: refactor the login handler',
    'Battery at 5%, please charge.',
    'Flight BA287 departs at 14:35 from gate 22.',
    'Although the forecast promised sunshine, a thick fog rolled in from the sea and the ferry stayed in port until the afternoon.',
    'The engineers discovered that a single loose bolt had caused the vibration that shut down the turbine for three days.',
    'After years of decline, the small town revived its high street by turning empty shops into studios for local artists.',
    'When the power went out during the storm, the whole street gathered in the pub and played cards by candlelight.',
    'The report warns that without new investment the water network will not cope with the growing population.',
    'Because the library extended its opening hours, students no longer queue outside before exams.',
    "The startup's app matches volunteers with elderly neighbours who need help with shopping.",
    'If you update the driver before installing the software, the installation usually succeeds.',
    'Scientists tagged the sea turtles with satellite trackers to follow their migration.',
    'The historian argues that the treaty failed because neither side trusted the mediators.',
    'Rising rents are pushing young families out of the city centre and into the suburbs.',
    'The old mill was converted into apartments, but the water wheel still turns.',
    'The plumber says the boiler needs a new pressure valve.',
    'Our allotment produced far more courgettes than we could eat.',
    'The pension fund moved a fifth of its assets into infrastructure.',
    'A cold front will bring sleet to the northern hills overnight.',
    'Lichens are partnerships between a fungus and an alga.',
    'The compiler inlines small functions to avoid call overhead.',
    'The ferry timetable changes on the first of October.',
    'Fold the egg whites gently into the chocolate mixture.',
    'Is the swimming pool heated in winter?',
    'Cheers, mate.',
    '1984',
    'The referee booked four players before half time.',
    'Sorting a billion integers on one laptop took under a minute.',
    'Her memoir describes growing up on a sheep farm in Wales.',
]


SPECS = {
    "int4 g128 RTN": "quant_weights(format=int4, group=128)",
    "int4 g128 AWQ": "quant_weights(format=int4, group=128, method=awq)",
    "int4 g128 GPTQ rounding": "quant_weights(format=int4, group=128, rounding=gptq)",
    "int4 g128 AWQ+GPTQ sequential": "quant_weights(format=int4, group=128, method=awq, rounding=gptq, "
                                     "sequential=True)",
    "int3 g128 RTN": "quant_weights(format=int3, group=128)",
    "int3 g128 AWQ": "quant_weights(format=int3, group=128, method=awq)",
    "int8 per-channel": "quant_weights(format=int8, group=0)",
    "FP8 E4M3 per-channel": "quant_weights(format=fp8_e4m3, group=0)",
    "FP4 E2M1 g128 plain": "quant_weights(format=fp4_e2m1, group=128)",
    "FP4 g128 searched": "quant_weights(format=fp4_e2m1, group=128, method=search)",
}
EXTRAS = {
    "int4 AWQ + int8, budget 5 bits/w": "quant_weights(format=int4, group=128, method=awq, budget=5)",
    "int4 AWQ + int8, budget 6 bits/w": "quant_weights(format=int4, group=128, method=awq, budget=6)",
    "FP4 searched W, FP8 A (reparam)": "quant_weights(format=fp4_e2m1, group=128, method=search, act_format=fp8_e4m3)",
    "FP4 searched W, FP4 A (reparam)": "quant_weights(format=fp4_e2m1, group=128, method=search, act_format=fp4_e2m1)",
    "FP4 searched W, FP4 A (no reparam)": "quant_weights(format=fp4_e2m1, group=128, method=search, "
                                          "act_format=fp4_e2m1, act_reparam=False)",
}


def calibration_batches(m: acc.Minilm, calibration: str = "base") -> list:
    """The calibration batches: ``base`` = the 48 CALIBRATION sentences, ``extended`` = those
    and EXTRA_CALIBRATION (never any EVALUATION sentence)."""
    if calibration == "base":
        return m.calib
    if calibration != "extended":
        raise ValueError(f"calibration must be base or extended, got {calibration!r}")
    sents = acc.CALIBRATION + EXTRA_CALIBRATION
    assert not set(sents) & set(acc.EVALUATION)
    out = []
    for i in range(0, len(sents), acc.BATCH):
        chunk = sents[i:i + acc.BATCH]
        e = m.encode(chunk + [""] * (acc.BATCH - len(chunk)))
        # the filler rows of the last batch are all padding: calibration leaves them out
        e["attention_mask"][len(chunk):] = 0
        out.append(tuple(e[n] for n in m.names))
    return out


def measure_spec(m: acc.Minilm, spec: str, ref, cal: list) -> tuple[float, float, dict]:
    """(min cosine, mean cosine, quant_weights counters) of one pipeline ``spec``, calibrated
    on ``cal`` and compared with the fp32 embeddings ``ref``."""
    g, counters = acc.quantise(m, spec, calibration=cal)
    c = acc.cosines(acc.embed_graph(m, g), ref)
    return float(c.min()), float(c.mean()), counters.as_dict().get("quant_weights", {})


def measure(specs: dict[str, str], m: acc.Minilm | None = None, verbose: bool = False,
            calibration: str = "base") -> dict[str, tuple[float, float, dict]]:
    """{label: (min cosine, mean cosine, counters)} for each spec, calibrated on
    :func:`calibration_batches` (``calibration`` = base | extended)."""
    m = m or acc.load()
    ref = acc.embed_eager(m)
    cal = calibration_batches(m, calibration)
    out = {}
    for label, spec in specs.items():
        t0 = time.perf_counter()
        out[label] = measure_spec(m, spec, ref, cal)
        if verbose:
            lo, mean, counters = out[label]
            print(f"{label:38s} min {lo:.4f}  mean {mean:.4f}   ({time.perf_counter() - t0:.0f} s)  "
                  f"{counters}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", action="store_true")
    ap.add_argument("--calibration", choices=("base", "extended"), default="base",
                    help="extended adds EXTRA_CALIBRATION (120 more sentences) to the 48 CALIBRATION ones")
    a = ap.parse_args()
    measure({**SPECS, **(EXTRAS if a.extras else {})}, verbose=True, calibration=a.calibration)


if __name__ == "__main__":
    main()
