"""Calibration: run the reference interpreter over calibration batches with observers on
chosen Values and keep per-channel statistics (DESIGN.md §4).

For each observed value (channel axis = last axis, ``C`` channels) the observers keep running
aggregates only, so memory is bounded whatever the number of batches:
  - ``min``, ``max``, ``absmax`` per channel, ``sum_abs`` per channel (mean|x| = sum_abs/rows),
  - ``rows``: how many rows (all leading positions) were seen,
  - ``sum`` per channel (mean x = sum/rows; the covariance is gram/rows − mean meanᵀ),
  - ``gram``: the Gram matrix XᵀX in float64 (for values read by a linear, on request).

Padding: when the graph has a token mask input (by default a rank-2 input named
``attention_mask``, the Hugging Face convention; ``token_mask=`` names another or None turns
it off), the rows of an observed value whose leading shape equals the mask's ([batch, seq])
count only where the mask is non-zero. Padded positions carry activations the model never
uses; counted, they dominated short-sentence calibration sets (68% of the MiniLM benchmark's
rows) and skewed every statistic towards padding.

Guards:
  - a NaN/Inf in an observed value raises :class:`CalibrationError` naming the value (its
    printed name) and the node that produced it;
  - no batches (or no rows) raises :class:`CalibrationError`;
  - fewer than ``FEW_ROWS`` rows of an observed value warn: a handful of one-token batches
    (position 0 only) gave static per-channel ranges that clipped every later position of a
    decoder (outliertune, cos 0.55 against 0.99 with 4 batches of 8 tokens);
  - all-zero or constant channels: :meth:`ChannelStats.absmax_floored` and
    :meth:`ChannelStats.mean_abs_floored` clamp every channel to at least ``eps`` (1e-5)
    times the tensor's largest channel (1.0 for an all-zero tensor), so a scale computed from
    them is never zero and never divides by zero.

Stats are keyed by the printer's value names of the graph they were measured on, and carry
the sha256 of that graph's canonical text: :meth:`Stats.load` rejects stats of another
(or a since-changed) graph, so a cached file is only ever reused for the very same graph.
"""
from __future__ import annotations

import copy

import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..ir.errors import CalibrationError, ShapeError
from ..ir.graph import Graph, Node, Value
from ..ir.printer import Namer
from ..runtime.interp import Interpreter, bind_symbols

#: Relative floor of per-channel magnitudes (see the module docstring).
EPS = 1e-5
FEW_ROWS = 64   # fewer observed rows than this draw a warning

Batch = Sequence[torch.Tensor] | Mapping[str, torch.Tensor] | torch.Tensor


def graph_hash(graph: Graph) -> str:
    """sha256 of the graph's canonical text (constants enter through their content hash)."""
    return hashlib.sha256(str(graph).encode()).hexdigest()


@dataclass
class ChannelStats:
    """Running per-channel aggregates of one value (last axis = channels)."""
    min: torch.Tensor            # [C] float64
    max: torch.Tensor            # [C] float64
    absmax: torch.Tensor         # [C] float64
    sum_abs: torch.Tensor        # [C] float64
    rows: int
    gram: torch.Tensor | None = None   # [C, C] float64, sum over rows of x xᵀ
    sum: torch.Tensor | None = None    # [C] float64, sum over rows of x (None in old stats files)

    @staticmethod
    def empty(channels: int, gram: bool) -> "ChannelStats":
        f64 = torch.float64
        return ChannelStats(torch.full((channels,), float("inf"), dtype=f64),
                            torch.full((channels,), float("-inf"), dtype=f64),
                            torch.zeros(channels, dtype=f64), torch.zeros(channels, dtype=f64), 0,
                            torch.zeros(channels, channels, dtype=f64) if gram else None,
                            torch.zeros(channels, dtype=f64))

    @property
    def channels(self) -> int:
        return int(self.absmax.numel())

    @property
    def mean_abs(self) -> torch.Tensor:
        """mean |x| per channel over every row seen."""
        return self.sum_abs / max(self.rows, 1)

    def update(self, x: torch.Tensor) -> None:
        """Fold one observed tensor ``[..., C]`` into the aggregates; ShapeError for anything
        else (broadcasting would otherwise fail deep inside torch, or silently mix channels)."""
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"expected a torch.Tensor [..., {self.channels}], got {type(x).__name__}")
        if x.dim() < 1 or int(x.shape[-1]) != self.channels:
            raise ShapeError(f"expected {self.channels} channels on the last axis, got shape {tuple(x.shape)}")
        x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if x2.shape[0] == 0:
            return
        self.min = torch.minimum(self.min, x2.amin(0))
        self.max = torch.maximum(self.max, x2.amax(0))
        a = x2.abs()
        self.absmax = torch.maximum(self.absmax, a.amax(0))
        self.sum_abs += a.sum(0)
        if self.sum is not None:
            self.sum += x2.sum(0)
        self.rows += x2.shape[0]
        if self.gram is not None:
            self.gram += x2.T @ x2

    @staticmethod
    def _floor(v: torch.Tensor, eps: float) -> torch.Tensor:
        top = float(v.max()) if v.numel() else 0.0
        # An all-zero tensor has no scale of its own: any positive floor keeps ratios finite.
        return v.clamp(min=eps * top if top > 0 else 1.0)

    def absmax_floored(self, eps: float = EPS) -> torch.Tensor:
        """absmax per channel, clamped to >= eps * (largest channel) (1.0 if all are zero)."""
        return self._floor(self.absmax, eps)

    def mean_abs_floored(self, eps: float = EPS) -> torch.Tensor:
        """mean|x| per channel with the same floor as :meth:`absmax_floored`."""
        return self._floor(self.mean_abs, eps)

    def second_moment(self, centred: bool = False) -> torch.Tensor:
        """XᵀX / rows [C, C] float32, or with ``centred`` the covariance XᵀX / rows − μ μᵀ
        (the error left after a bias correction removes the mean). CalibrationError when
        the Gram matrix (or, centred, the sum) was not collected."""
        if self.gram is None:
            raise CalibrationError("calibration stats lack the Gram matrix (awq, search and gptq need it: "
                                   "calibrate(..., gram=True), or pass the batches)")
        g = self.gram / max(self.rows, 1)
        if centred:
            if self.sum is None:
                raise CalibrationError("calibration stats lack the per-channel sums (older stats file): recalibrate")
            mu = self.sum / max(self.rows, 1)
            g = g - torch.outer(mu, mu)
        return g.to(torch.float32)


class Stats:
    """Calibration statistics of one graph: ``stats[value]`` or ``stats.by_name[name]``."""

    def __init__(self, graph_hash: str, by_name: dict[str, ChannelStats], batches: int = 0,
                 token_mask: str | None = None):
        self.graph_hash = graph_hash
        self.by_name = by_name
        self.batches = batches
        self.token_mask = token_mask      # the mask input whose zeros were left out, if any
        self._bound: tuple[int, dict[int, str]] | None = None

    def bind(self, graph: Graph) -> "Stats":
        """Check that these stats were measured on ``graph`` (same canonical text) and make
        ``stats[value]`` work for its Values. Raises CalibrationError for a different graph."""
        h = graph_hash(graph)
        if h != self.graph_hash:
            raise CalibrationError(f"calibration stats are stale: measured on graph {self.graph_hash[:16]}, "
                                   f"but graph @{graph.name} is {h[:16]}; recalibrate")
        self._bind_names(graph)
        return self

    def _bind_names(self, graph: Graph) -> None:
        self._bound = (id(graph), {k: v for k, v in Namer(graph).names.items()})

    def name_of(self, value: Value) -> str:
        if self._bound is None:
            raise CalibrationError("Stats not bound to a graph: call stats.bind(graph) first")
        name = self._bound[1].get(id(value))
        if name is None:
            raise CalibrationError(f"value {value!r} is not in the graph these stats are bound to")
        return name

    def __contains__(self, value: Value) -> bool:
        return self._bound is not None and self._bound[1].get(id(value)) in self.by_name

    def __getitem__(self, value: Value) -> ChannelStats:
        name = self.name_of(value)
        if name not in self.by_name:
            raise CalibrationError(f"no calibration statistics for {name} ({value.type})")
        return self.by_name[name]

    def __len__(self) -> int:
        return len(self.by_name)

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the stats as safetensors (keys ``<value name>/<field>``), atomically."""
        from safetensors.torch import save_file
        tensors: dict[str, torch.Tensor] = {}
        rows: dict[str, int] = {}
        for name, st in self.by_name.items():
            for field in ("min", "max", "absmax", "sum_abs", "gram", "sum"):
                t = getattr(st, field)
                if t is not None:
                    tensors[f"{name}/{field}"] = t.contiguous()
            rows[name] = st.rows
        meta = {"format": "scalefold.calibration.v1", "graph_sha256": self.graph_hash,
                "rows": json.dumps(rows), "batches": str(self.batches),
                "token_mask": json.dumps(self.token_mask)}
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, p)

    @staticmethod
    def load(path: str | os.PathLike, graph: Graph | None = None) -> "Stats":
        """Read stats written by :meth:`save`; with ``graph``, reject stats of another graph
        (CalibrationError) and bind them to it."""
        from safetensors import SafetensorError, safe_open
        p = Path(path)
        if not p.exists():
            raise CalibrationError(f"calibration stats file {p} does not exist")
        if not p.is_file():
            raise CalibrationError(f"calibration stats {p} is not a file")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "scalefold.calibration.v1":
                    raise CalibrationError(f"{p} is not a scalefold calibration file")
                rows = json.loads(meta["rows"])
                parts: dict[str, dict[str, torch.Tensor]] = {}
                for key in f.keys():
                    name, _, field = key.rpartition("/")
                    parts.setdefault(name, {})[field] = f.get_tensor(key)
            by_name = {name: ChannelStats(d["min"], d["max"], d["absmax"], d["sum_abs"], int(rows[name]),
                                          d.get("gram"), d.get("sum")) for name, d in parts.items()}
            st = Stats(meta["graph_sha256"], by_name, int(meta.get("batches", 0)),
                       json.loads(meta.get("token_mask", "null")))
        except (SafetensorError, OSError) as e:
            # not safetensors at all (input arrays such as an .npz, or a damaged file)
            raise CalibrationError(f"{p} is not a scalefold calibration stats file ({e}); input "
                                   "arrays are passed as calibration batches instead") from None
        except (KeyError, ValueError, TypeError) as e:
            raise CalibrationError(f"{p}: damaged calibration stats file (missing or bad entry "
                                   f"{e})") from None
        if graph is not None:
            st.bind(graph)
        return st


# ---- running the observers -------------------------------------------------------------------
def linear_inputs(graph: Graph) -> list[Value]:
    """The distinct activation inputs of linear/moe nodes, in graph order (the default set of
    values to observe)."""
    out: dict[int, Value] = {}
    for n in graph.nodes:
        if n.op in ("linear", "moe") and n.inputs[0] is not None and not n.inputs[0].is_const:
            out.setdefault(id(n.inputs[0]), n.inputs[0])
    return list(out.values())


AUTO_MASK = "attention_mask"


def mask_input(graph: Graph, token_mask: str | None = "auto") -> int | None:
    """Index of the graph input that marks real tokens, or None. ``"auto"``: a rank-2 input
    named ``attention_mask`` if there is one; a name must be a rank-2 graph input
    (CalibrationError otherwise); None: no mask."""
    if token_mask is None or token_mask == "none":
        return None
    want = AUTO_MASK if token_mask == "auto" else token_mask
    for i, v in enumerate(graph.inputs):
        if v.name == want:
            if v.type.rank != 2:
                if token_mask == "auto":
                    return None
                raise CalibrationError(f"token_mask input {want!r} must be [batch, seq], got {v.type}")
            return i
    if token_mask != "auto":
        raise CalibrationError(f"token_mask {want!r} is not an input of graph @{graph.name} "
                               f"(inputs: {', '.join(str(v.name) for v in graph.inputs)})")
    return None


def masked_sequences(t: torch.Tensor, mask: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``t`` [..., C] as [batch, rows, C] with which rows are real tokens [batch, rows], when
    t's leading shape is the mask's [batch, seq] (or [batch * seq], or [batch, heads, seq] for
    a per-head value); else None."""
    if mask is None or t.dim() < 2:
        return None
    c, (b, s) = t.shape[-1], mask.shape
    lead = tuple(t.shape[:-1])
    real = mask != 0
    if lead == (b, s) or (t.dim() == 2 and lead[0] == b * s):
        # [batch, seq, C], or flattened to [batch * seq, C] (OPT's MLP)
        return t.reshape(b, s, c), real
    if t.dim() == 4 and lead[0] == b and lead[2] == s:
        return t.reshape(b, -1, c), real[:, None, :].expand(lead).reshape(b, -1)
    return None


def real_rows(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``t`` [..., C] as rows [R, C]: only the rows where ``mask`` is non-zero when t's
    shape shows them (:func:`masked_sequences`), else every row."""
    seqs = masked_sequences(t, mask)
    if seqs is None:
        return t.reshape(-1, t.shape[-1])
    return seqs[0][seqs[1]]


def _as_inputs(graph: Graph, batch: Batch, index: int = 0) -> list[torch.Tensor]:
    """The positional inputs of calibration batch number ``index``, checked against the
    graph's input types (count, tensor-ness, dtype, rank, dims) before any observer sees them.

    Raises ShapeError naming the batch and the input, as the interpreter does for a wrong
    dtype, instead of a raw TypeError/RuntimeError from inside the observers. NumPy arrays are
    rejected with a hint rather than converted: other calibrating passes (AWQ block search,
    GPTQ) run the same batches through the interpreter, which takes torch tensors only.
    """
    where = f"calibration batch {index}"
    if isinstance(batch, torch.Tensor) or type(batch).__module__ == "numpy":
        ins = [batch]   # a bare array is the single input, not a sequence of rows
    elif isinstance(batch, Mapping):
        missing = [v.name for v in graph.inputs if v.name not in batch]
        if missing:
            raise ShapeError(f"{where}: no tensor for input(s) {', '.join(map(str, missing))} "
                             f"(the dict has {', '.join(map(str, batch)) or 'no keys'})")
        ins = [batch[v.name] for v in graph.inputs]   # type: ignore[index]
    elif isinstance(batch, (str, bytes)) or not hasattr(batch, "__iter__"):
        raise ShapeError(f"{where}: expected a tuple of tensors (one per graph input), a dict by "
                         f"input name or a single tensor, got {type(batch).__name__}")
    else:
        ins = list(batch)
    try:
        bind_symbols(graph, ins)
    except ShapeError as e:
        hint = (" (convert NumPy arrays with torch.from_numpy)"
                if any(type(t).__module__ == "numpy" for t in ins) else "")
        raise ShapeError(f"{where}: {e}{hint}") from None
    return ins


def _progress(total: int | None, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with the project's dependencies
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


def calibrate(graph: Graph, batches: Iterable[Batch], values: Iterable[Value] | None = None,
              gram: bool | Iterable[Value] = False, cache: str | os.PathLike | None = None,
              progress: bool = True, token_mask: str | None = "auto") -> Stats:
    """Run ``graph`` on every batch and collect per-channel stats of ``values``.

    ``batches``: an iterable of input tuples (positional, matching ``graph.inputs``), dicts
    (by input name) or single tensors; it is iterated once. ``values`` default to every
    linear's activation input. ``gram``: True for the Gram matrix of every observed value read
    by a linear, or an explicit collection of values. ``cache``: a safetensors path; when it
    holds stats of this very graph covering the requested values (and grams) they are returned
    without running anything, otherwise the fresh stats are saved there. ``token_mask``: see
    the module docstring (:func:`mask_input`).
    Raises CalibrationError for empty calibration or a non-finite observed value.
    """
    vals = list({id(v): v for v in (values if values is not None else linear_inputs(graph))}.values())
    if gram is True:
        readers = {id(n.inputs[0]) for n in graph.nodes if n.op in ("linear", "moe")}
        gram_ids = {id(v) for v in vals if id(v) in readers}
    elif gram is False:
        gram_ids = set()
    else:
        gram_ids = {id(v) for v in gram}
        vals += [v for v in gram if id(v) not in {id(x) for x in vals}]
    namer = Namer(graph)
    names = {id(v): namer(v) for v in vals}
    ghash = graph_hash(graph)
    mi = mask_input(graph, token_mask)
    mask_name = None if mi is None else str(graph.inputs[mi].name)

    if cache is not None and Path(cache).exists():
        try:
            st = Stats.load(cache)
        except CalibrationError:
            st = None
        if st is not None and st.graph_hash == ghash and st.token_mask == mask_name and all(
                names[id(v)] in st.by_name and (id(v) not in gram_ids or st.by_name[names[id(v)]].gram is not None)
                for v in vals):
            st._bind_names(graph)
            return st

    for v in vals:
        if v.type.rank < 1 or not isinstance(v.shape[-1], int):
            raise CalibrationError(f"cannot observe {names[id(v)]}: {v.type} has no static channel axis")
        if not v.dtype.is_float:
            raise CalibrationError(f"cannot observe {names[id(v)]}: {v.type} is not a float tensor")
    aggs = {id(v): ChannelStats.empty(int(v.shape[-1]), id(v) in gram_ids) for v in vals}
    by_producer: dict[int, list[tuple[int, Value]]] = {}
    for v in vals:
        if v.producer is not None:
            by_producer.setdefault(id(v.producer), []).append((v.index, v))

    def observe(v: Value, t: torch.Tensor, node: Node | None) -> None:
        def where() -> str:   # only on failure: describe() is not free on every batch
            return f"produced by {node.describe()}" if node is not None else "a graph input"
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"calibration batch {nbatch}: observed value {names[id(v)]} ({v.type}, "
                             f"{where()}) is a {type(t).__name__}, not a torch.Tensor")
        if mask is not None and t.is_floating_point():
            t = real_rows(t, mask)     # padded rows may hold anything (NaN from a masked softmax)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise CalibrationError(f"calibration batch {nbatch}: {bad} in observed value {names[id(v)]} "
                                   f"({v.type}, {where()})")
        try:
            aggs[id(v)].update(t)
        except ShapeError as e:
            raise ShapeError(f"calibration batch {nbatch}: observed value {names[id(v)]} ({v.type}, "
                             f"{where()}): {e}") from None

    def hook(node: Node, outs: Sequence[torch.Tensor]) -> None:
        for idx, v in by_producer.get(id(node), ()):
            observe(v, outs[idx], node)

    if isinstance(batches, (str, bytes, Mapping)) or not hasattr(batches, "__iter__"):
        raise CalibrationError(f"calibration for graph @{graph.name} must be an iterable of batches (tuples of "
                               f"input tensors or {{input name: tensor}} dicts), got {type(batches).__name__}")
    interp = Interpreter(graph, check=False)
    inputs_observed = [(i, v) for i, v in enumerate(graph.inputs) if id(v) in aggs]
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    bar = _progress(total, f"calibrating @{graph.name}") if progress else None
    nbatch = 0
    mask: torch.Tensor | None = None
    try:
        with torch.no_grad():
            for batch in batches:
                ins = _as_inputs(graph, batch, nbatch)
                mask = ins[mi] if mi is not None else None
                for i, v in inputs_observed:
                    t = ins[v.name] if isinstance(ins, Mapping) else ins[i]  # type: ignore[index]
                    observe(v, t, None)
                interp.run(ins, hook=hook)
                nbatch += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if nbatch == 0:
        raise CalibrationError(f"empty calibration for graph @{graph.name}: no batches were given "
                               f"(a generator may already have been consumed by an earlier pass)")
    for v in vals:
        if aggs[id(v)].rows == 0:
            raise CalibrationError(f"calibration saw no rows of {names[id(v)]} ({v.type})")
    warn_few_rows(graph, [(names[id(v)], v, aggs[id(v)].rows) for v in vals], nbatch)
    st = Stats(ghash, {names[id(v)]: aggs[id(v)] for v in vals}, nbatch, mask_name)
    st._bind_names(graph)
    if cache is not None:
        st.save(cache)
    return st


def warn_few_rows(graph: Graph, seen: Sequence[tuple[str, Value, int]], nbatch: int) -> None:
    """Warn when the least-observed of ``seen`` (name, value, rows) has fewer than
    ``FEW_ROWS`` rows (module docstring). The text names no value, so that a pass calibrating
    layer after layer on the same batches warns once."""
    if not seen:
        return
    rows = min(r for _, _, r in seen)
    if rows < FEW_ROWS:
        warnings.warn(f"calibration of @{graph.name} saw only {rows} rows (tokens or positions) of an observed "
                      f"activation in {nbatch} batch(es); statistics from so few rows rarely cover the "
                      f"model's inputs (a lone first position is atypical): calibrate on more or longer "
                      f"samples", stacklevel=3)


def stats_for(graph: Graph, calibration: Any, values: Sequence[Value], gram: bool | Iterable[Value] = False,
              cache: str | os.PathLike | None = None) -> Stats:
    """What a calibrating pass does with its ``calibration=`` option: a :class:`Stats` (bound
    to ``graph``, checked), a path to saved stats, or batches to run now."""
    if isinstance(calibration, Stats):
        # a copy: the pass runs on a clone of the user's graph, and binding the caller's own
        # Stats to it left them unusable on the graph they were measured on
        return copy.copy(calibration).bind(graph)
    if isinstance(calibration, (str, os.PathLike)):
        return Stats.load(calibration, graph)
    if calibration is None:
        raise CalibrationError("this pass needs calibration data (calibration=..., or --calibration FILE "
                               "on the command line)")
    return calibrate(graph, calibration, values=values, gram=gram, cache=cache)
