"""Saved artifacts: a compiled model as plain files, loaded back without pickle.

Layout of an artifact directory::

    plan.json              format version, graph name, IR text (constants by hash), target,
                           kernel list (file + sha256), weights sha256, input/output names,
                           and plan_sha256: the hash of the plan itself (see _plan_digest)
    weights.safetensors    every constant, keyed by its const hash, in its container dtype
    kernels/<name>.c       the generated kernel sources (for reading and for checking)

``load`` checks the format version and every hash before it trusts any byte, so a tampered,
truncated or missing file is an :class:`ArtifactError` naming that file. It then parses the IR
with the constants from safetensors and rebuilds the model through ``api.build_c`` (the
content-addressed kernel cache makes that cheap when the kernels were compiled before).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..ir.errors import ArtifactError, ScalefoldError
from ..ir.graph import Graph

if TYPE_CHECKING:
    from ..api import CompiledModel

FORMAT = "scalefold-artifact"
FORMAT_VERSION = 1
PLAN = "plan.json"
WEIGHTS = "weights.safetensors"
KERNELS = "kernels"
_KERNEL_NAME = re.compile(r"[A-Za-z0-9_]+\Z")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _plan_digest(plan: dict[str, Any]) -> str:
    """sha256 of the plan's canonical JSON without its own ``plan_sha256`` field: a flipped
    byte anywhere in plan.json either breaks the JSON or changes this digest."""
    body = {k: v for k, v in plan.items() if k != "plan_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _weights(graph: Graph) -> dict[str, torch.Tensor]:
    """Every constant keyed by its const hash. Sub-byte and f8 values are stored in their
    container dtype (one element per byte), exactly as the IR holds them."""
    out: dict[str, torch.Tensor] = {}
    for v in graph.constants():
        # Equal hashes mean equal type and bytes, so deduplicating by key loses nothing.
        out.setdefault(v.const_hash(), v.const.detach().cpu().contiguous().clone())  # type: ignore[union-attr]
    return out


def _output_names(graph: Graph) -> list[str]:
    names = list(graph.output_names)
    return names if len(names) == len(graph.outputs) else [f"out{i}" for i in range(len(graph.outputs))]


def save(cm: "CompiledModel", path: str | os.PathLike) -> Path:
    """Write ``cm`` as an artifact directory at ``path`` and return the path.

    Everything is written into a temporary sibling directory first and renamed into place
    only when complete; an existing directory at ``path`` is replaced only then, so a failed
    save leaves neither a partial directory nor a damaged previous artifact."""
    from safetensors.torch import save as st_save

    from ..ir.printer import input_names

    dest = Path(path)
    if dest.exists() and not dest.is_dir():
        raise ArtifactError(f"{dest}: exists and is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    g = cm.graph
    weights_bytes = st_save(_weights(g))
    kernels = []
    for name, src in sorted(cm.sources.items()):
        if not _KERNEL_NAME.match(name):
            raise ArtifactError(f"kernel name {name!r} is not usable as a file name")
        kernels.append({"name": name, "file": f"{KERNELS}/{name}.c", "sha256": _sha256(src.encode())})
    plan: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "graph_name": g.name,
        "target": cm.target,
        "ir": str(g),
        "inputs": input_names(g),
        "outputs": _output_names(g),
        "kernels": kernels,
        "weights": {"file": WEIGHTS, "sha256": _sha256(weights_bytes)},
    }
    plan["plan_sha256"] = _plan_digest(plan)

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    old: Path | None = None
    try:
        (tmp / KERNELS).mkdir()
        for k in kernels:
            (tmp / k["file"]).write_bytes(cm.sources[k["name"]].encode())
        (tmp / WEIGHTS).write_bytes(weights_bytes)
        (tmp / PLAN).write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
        if dest.exists():
            # Move the old artifact aside first: a directory cannot be replaced by rename.
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rmdir(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _read(root: Path, rel: str) -> bytes:
    p = root / rel
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{p}: missing file") from None
    except OSError as e:
        raise ArtifactError(f"{p}: cannot read: {e.strerror or e}") from None


def _check_hash(root: Path, rel: str, data: bytes, want: Any) -> None:
    if not isinstance(want, str) or _sha256(data) != want:
        raise ArtifactError(f"{root / rel}: sha256 mismatch (tampered or truncated file)")


def read_plan(root: Path) -> dict[str, Any]:
    """The validated plan of the artifact at ``root`` (format, version and self-hash checked)."""
    raw = _read(root, PLAN)
    try:
        plan = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{root / PLAN}: not valid JSON ({e})") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise ArtifactError(f"{root / PLAN}: not a scalefold artifact plan")
    ver = plan.get("format_version")
    if ver != FORMAT_VERSION:
        raise ArtifactError(f"{root / PLAN}: format version {ver!r} is not supported "
                            f"(this scalefold reads version {FORMAT_VERSION})")
    if plan.get("plan_sha256") != _plan_digest(plan):
        raise ArtifactError(f"{root / PLAN}: sha256 mismatch (tampered file)")
    for key, kind in (("graph_name", str), ("target", str), ("ir", str), ("inputs", list),
                      ("outputs", list), ("kernels", list), ("weights", dict)):
        if not isinstance(plan.get(key), kind):
            raise ArtifactError(f"{root / PLAN}: field {key!r} is missing or malformed")
    return plan


def _load_weights(root: Path, plan: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    rel = WEIGHTS
    data = _read(root, rel)
    _check_hash(root, rel, data, plan["weights"].get("sha256"))
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{root / rel}: unreadable safetensors data ({e})") from None


def _check_kernels(root: Path, plan: dict[str, Any]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for k in plan["kernels"]:
        name, rel = (k.get("name"), k.get("file")) if isinstance(k, dict) else (None, None)
        if not (isinstance(name, str) and _KERNEL_NAME.match(name) and rel == f"{KERNELS}/{name}.c"):
            raise ArtifactError(f"{root / PLAN}: malformed kernel entry {k!r}")
        data = _read(root, rel)
        _check_hash(root, rel, data, k.get("sha256"))
        sources[name] = data.decode("utf-8", errors="replace")
    return sources


def load_graph(path: str | os.PathLike) -> tuple[Graph, dict[str, Any], dict[str, str]]:
    """The graph of the artifact at ``path`` with its plan and saved kernel sources, every hash
    checked, without building anything (``scalefold inspect`` uses this)."""
    from ..ir.parser import parse
    from ..ir.printer import input_names

    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no artifact directory here")
    plan = read_plan(root)
    saved_sources = _check_kernels(root, plan)
    weights = _load_weights(root, plan)
    try:
        g = parse(plan["ir"], constants=weights)
    except ScalefoldError as e:
        raise ArtifactError(f"{root / PLAN}: the IR does not load: {e}") from None
    g.name = plan["graph_name"]
    if input_names(g) != plan["inputs"] or len(plan["outputs"]) != len(g.outputs):
        raise ArtifactError(f"{root / PLAN}: input/output names do not match the IR")
    g.output_names = [str(n) for n in plan["outputs"]]
    return g, plan, saved_sources


def load(path: str | os.PathLike) -> "CompiledModel":
    """Load the artifact at ``path``: checks version and every hash, parses the IR with the
    saved weights and rebuilds the model for the saved target. No pickle is involved."""
    from .. import api

    g, plan, saved_sources = load_graph(path)
    target = plan["target"]
    if target not in api.TARGETS:
        raise ArtifactError(f"{Path(path) / PLAN}: unknown target {target!r}")
    cm = api.build(g, target)
    if cm.sources != saved_sources:
        # Legitimate after a codegen change; the graph, not the old source text, is the truth.
        warnings.warn(f"{path}: kernels regenerated by this scalefold differ from the saved "
                      f"sources (saved by another version?)", stacklevel=2)
    return cm
