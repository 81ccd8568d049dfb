"""Golden-case runner for pass tests: ``tests/passes/<pass>/<case>.ir`` (+ ``<case>.golden``).

A case is hand-written IR text (generator constants such as ``randn(seed=0, std=0.1)`` are
fine) whose leading ``//`` comment lines say what to do with it::

    // pipeline: fold_batchnorm,cleanup        (required) passes to run, as a pipeline string
    // expect: fold_batchnorm.conv=1, cleanup.dead_node=2
    //                                         exact rule counts (several lines add up; =0 too)
    // near-miss: fold_batchnorm.conv: readers  a near-miss of that rule whose reason contains
    //                                         the text (SCALEFOLD_TRACE_RULES explains it)
    // tolerance: 1e-3                         lossy passes: max error relative to output scale
    // dims: B=2, S=5                          values of symbolic dims for the numeric check
    // seed: 0                                 seed of the random inputs (default 0)
    // calibration: 4                          pass 4 seeded random input batches as calibration

:func:`run_case` parses the case (verifying it), runs the pipeline through a PassManager,
compares the printed result with the golden (``UPDATE_GOLDEN=1`` rewrites it), runs both the
original and the result in the reference interpreter on seeded inputs and compares outputs
(default: the fp tolerance of the output dtype, relative to the output's scale), and asserts
every ``expect`` counter and ``near-miss``. A pass directory's test module is just::

    from golden_cases import case_params, run_case   # after putting tests/passes on sys.path

    @pytest.mark.parametrize("case", case_params(__file__))
    def test_golden(case): run_case(case)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from harness import assert_close, assert_golden
from scalefold.ir import dtypes as dt
from scalefold.ir.graph import Graph
from scalefold.ir.parser import parse
from scalefold.ir.printer import literal_limit
from scalefold.ir.types import TensorType
from scalefold.passes.pipeline import PassManager
from scalefold.passes.rewrite import collect_near_misses
from scalefold.runtime.interp import run as interp_run

# Golden texts show computed constants of up to this many elements as values, compared to a
# tolerance (tests/harness.py): a hash would change with the last bit of a sum on another CPU.
GOLDEN_LITERALS = 1024
_HEADER = re.compile(r"^\s*//\s*([A-Za-z_-]+)\s*:\s*(.*?)\s*$")
_EXPECT = re.compile(r"^\s*([A-Za-z0-9_]+)\.([A-Za-z0-9_.]+)\s*=\s*([0-9]+)\s*$")


@dataclass
class GoldenCase:
    """The parsed header of one ``.ir`` case file."""
    path: Path
    text: str
    pipeline: str
    expect: dict[tuple[str, str], int] = field(default_factory=dict)
    near_misses: list[tuple[str, str, str]] = field(default_factory=list)  # (pass, rule, text)
    tolerance: float | None = None
    dims: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    calibration: int = 0

    @property
    def golden(self) -> Path:
        return self.path.with_suffix(".golden")


def load_case(path: str | Path) -> GoldenCase:
    """Read a case file and its ``//`` header (see the module docstring)."""
    p = Path(path)
    text = p.read_text()
    heads: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("//"):
            break  # the header ends at the graph
        m = _HEADER.match(line)
        if m:
            heads.append((m.group(1).lower(), m.group(2)))
    case = GoldenCase(p, text, pipeline="")
    for key, val in heads:
        if key == "pipeline":
            case.pipeline = val
        elif key == "expect":
            for item in filter(None, (s.strip() for s in val.split(","))):
                m = _EXPECT.match(item)
                if not m:
                    raise ValueError(f"{p}: bad expect item {item!r} (want pass.rule=N)")
                k = (m.group(1), m.group(2))
                case.expect[k] = case.expect.get(k, 0) + int(m.group(3))
        elif key == "near-miss":
            who, _, what = val.partition(":")
            pname, _, rule = who.strip().partition(".")
            if not rule:
                raise ValueError(f"{p}: bad near-miss {val!r} (want pass.rule: text)")
            case.near_misses.append((pname, rule, what.strip()))
        elif key == "tolerance":
            case.tolerance = float(val)
        elif key == "dims":
            for item in filter(None, (s.strip() for s in val.split(","))):
                k, _, v = item.partition("=")
                case.dims[k.strip()] = int(v)
        elif key == "seed":
            case.seed = int(val)
        elif key == "calibration":
            case.calibration = int(val)
        else:
            raise ValueError(f"{p}: unknown header {key!r}")
    if not case.pipeline:
        raise ValueError(f"{p}: missing '// pipeline: ...' header")
    return case


def random_inputs(graph: Graph, seed: int = 0, dims: dict[str, int] | None = None) -> list[torch.Tensor]:
    """Seeded inputs for every graph input: normal floats, small non-negative ints, random
    bools. Symbolic dims take ``dims[name]`` (default 3)."""
    gen = torch.Generator().manual_seed(seed)
    env = {s: (dims or {}).get(s.name, 3) for s in graph.symbols}
    out = []
    for v in graph.inputs:
        t: TensorType = v.type
        shape = t.concrete(env)
        d = t.dtype
        if d.is_float:
            x = torch.randn(shape, generator=gen).to(torch.float32)
            out.append(dt.to_container(x, d) if x.dtype != d.container else x)
        elif d.container == torch.bool:
            out.append(torch.rand(shape, generator=gen) > 0.5)
        else:
            out.append(torch.randint(0, 8, shape, generator=gen).to(d.container))
    return out


def case_params(test_file: str | Path) -> list:
    """``pytest.param`` per ``.ir`` file next to ``test_file`` (id = the case name)."""
    folder = Path(test_file).resolve().parent
    cases = sorted(folder.glob("*.ir"))
    if not cases:
        raise FileNotFoundError(f"no .ir cases in {folder}")
    return [pytest.param(c, id=c.stem) for c in cases]


def run_case(path: str | Path) -> Graph:
    """Run one golden case end to end (golden text, numerics, counters); returns the result."""
    case = load_case(path)
    original = parse(case.text, verify=True)
    calib = None
    if case.calibration:
        calib = [tuple(random_inputs(original, 1000 + i, case.dims)) for i in range(case.calibration)]
    pm = PassManager(case.pipeline, calibration=calib)
    with collect_near_misses() as misses:
        result = pm.run(original)
    with literal_limit(GOLDEN_LITERALS):
        text = str(result)
    assert_golden(text, case.golden)

    xs = random_inputs(original, case.seed, case.dims)
    want = interp_run(original, *xs)
    got = interp_run(result, *xs)
    assert len(got) == len(want), f"{case.path.name}: {len(got)} outputs, expected {len(want)}"
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, rtol=case.tolerance, rel_to_scale=True,
                     what=f"{case.path.name} output {i}")

    for (pname, rule), n in case.expect.items():
        got_n = pm.counters.get(pname, rule)
        assert got_n == n, (f"{case.path.name}: rule {pname}.{rule} fired {got_n} times, expected "
                            f"{n}; counters: {pm.counters.as_dict()}")
    for pname, rule, what in case.near_misses:
        hits = [m for m in misses if m.pass_name == pname and m.rule == rule and what in m.reason]
        assert hits, (f"{case.path.name}: no near-miss of {pname}.{rule} mentioning {what!r}; "
                      f"near-misses: {[str(m) for m in misses]}")
    return result
