"""Saved artifacts: a compiled model as plain files, loaded back without pickle.

Layout of an artifact directory::

    plan.json              format version, graph name, IR text (constants by hash), target,
                           kernel list (file + sha256), weights sha256, input/output names,
                           and plan_sha256: the hash of the plan itself (see _plan_digest)
    weights.safetensors    every constant, keyed by its const hash, in its container dtype;
                           4-bit constants (i4, u4, f4e2m1) packed two per byte (version 2)
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
from ..ir.types import dim_str, parse_dim

if TYPE_CHECKING:
    from ..api import CompiledModel

FORMAT = "scalefold-artifact"
FORMAT_VERSION = 2
READS = (1, 2)       # version 1: the same without packed 4-bit constants
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


def _weights(graph: Graph) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Every constant keyed by its const hash, and the shapes of the packed ones. f8 values
    are stored in their container dtype; 4-bit values (i4, u4, f4e2m1: one per container byte
    in the IR) are stored packed, element 2i in the low and 2i+1 in the high nibble of byte i
    of a flat uint8 tensor (an odd count pads the last high nibble with 0), so a 4-bit model's
    file holds 4 bits per weight."""
    out: dict[str, torch.Tensor] = {}
    packed: dict[str, list[int]] = {}
    for v in graph.constants():
        key = v.const_hash()
        if key in out:    # equal hashes mean equal type and bytes
            continue
        t = v.const.detach().cpu().contiguous()  # type: ignore[union-attr]
        if v.dtype.bits == 4:
            out[key] = pack_nibbles(t)
            packed[key] = list(t.shape)
        else:
            out[key] = t.clone()
    return out, packed


def pack_nibbles(t: torch.Tensor) -> torch.Tensor:
    """4-bit values held one per byte (int8 / uint8 container) -> flat uint8, two per byte."""
    u = (t.reshape(-1).view(torch.uint8) & 0x0F).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    return (u[0::2] | (u[1::2] << 4)).contiguous()


def unpack_nibbles(p: torch.Tensor, shape: list[int], container: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`pack_nibbles`: signed containers (int8) are sign-extended."""
    n = 1
    for d in shape:
        n *= d
    u = torch.stack([p & 0x0F, p >> 4], 1).reshape(-1)[:n]
    if container == torch.int8:
        return ((u.to(torch.int16) ^ 8) - 8).to(torch.int8).reshape(shape)
    return u.to(container).reshape(shape)


def _output_names(graph: Graph) -> list[str]:
    names = list(graph.output_names)
    return names if len(names) == len(graph.outputs) else [f"out{i}" for i in range(len(graph.outputs))]


def is_artifact(folder: Path) -> bool:
    """Whether ``folder`` holds a scalefold artifact (a plan.json of this format)."""
    try:
        return json.loads((folder / PLAN).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def destination_problem(path: str | os.PathLike) -> str | None:
    """Why an artifact cannot be saved to ``path``, or None: it must not be a file, nor the
    current directory or one above it, and a directory already there must be empty or an
    artifact (saving replaces it whole, so anything else in it would be lost)."""
    if "\0" in os.fspath(path):
        return "the path holds a NUL byte"
    dest = Path(path).resolve()
    if dest.exists() and not dest.is_dir():
        return "exists and is not a directory"
    for up in dest.parents:
        if up.exists():
            if not up.is_dir():
                return f"{up} is not a directory"
            break
    cwd = Path.cwd().resolve()
    if dest == cwd or dest in cwd.parents:
        return "is the current directory or one above it; name the artifact's own directory " \
               "(it is replaced whole)"
    if dest.is_dir() and any(dest.iterdir()) and not is_artifact(dest):
        return f"exists, is not empty and is not a scalefold artifact (no valid {PLAN}); not replacing it"
    return None


def check_destination(path: str | os.PathLike) -> Path:
    """The absolute path an artifact may be saved to, or an ArtifactError naming ``path``
    (see :func:`destination_problem`)."""
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ArtifactError(f"save needs a directory path (str or os.PathLike), got {type(path).__name__}")
    why = destination_problem(path)
    if why:
        raise ArtifactError(f"{str(Path(path)).replace(chr(0), '<NUL>')}: {why}")
    return Path(path).resolve()


def save(cm: "CompiledModel", path: str | os.PathLike) -> Path:
    """Write ``cm`` as an artifact directory at ``path`` and return the path.

    Everything is written into a temporary sibling directory first and renamed into place
    only when complete; an existing directory at ``path`` (empty, or an artifact: see
    :func:`check_destination`) is replaced only then, so a failed save leaves neither a
    partial directory nor a damaged previous artifact."""
    from safetensors.torch import save as st_save

    from ..ir.printer import input_names

    dest = check_destination(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"cannot save to {dest}: cannot create {dest.parent}: {e.strerror or e}") from e
    g = cm.graph
    tensors, packed = _weights(g)
    weights_bytes = st_save(tensors, metadata={"packed4": json.dumps(packed, sort_keys=True)} if packed else None)
    kernels = []
    for name, src in sorted(cm.sources.items()):
        if not _KERNEL_NAME.match(name):
            raise ArtifactError(f"kernel name {name!r} is not usable as a file name")
        ext = _SOURCE_EXT.get(cm.target, ".c")
        kernels.append({"name": name, "file": f"{KERNELS}/{name}{ext}", "sha256": _sha256(src.encode())})
    plan: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "graph_name": g.name,
        "target": cm.target,
        "ir": str(g),
        "inputs": input_names(g),
        "outputs": _output_names(g),
        "dim_ranges": {k: list(v) for k, v in sorted(g.dim_ranges.items())},
        "dim_guards": [dim_str(e) for e in g.dim_guards],
        "kernels": kernels,
        "weights": {"file": WEIGHTS, "sha256": _sha256(weights_bytes)},
    }
    plan["plan_sha256"] = _plan_digest(plan)

    try:
        tmp = Path(tempfile.mkdtemp(prefix=".sf-save-", dir=dest.parent))
    except OSError as e:
        raise ArtifactError(f"cannot save to {dest}: cannot write in {dest.parent}: {e.strerror or e}") from e
    old: Path | None = None
    try:
        # mkdtemp makes 0700 directories: the artifact gets the mode a plain mkdir would
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        (tmp / KERNELS).mkdir()
        for k in kernels:
            (tmp / k["file"]).write_bytes(cm.sources[k["name"]].encode())
        (tmp / WEIGHTS).write_bytes(weights_bytes)
        (tmp / PLAN).write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
        if dest.exists():
            # Move the old artifact aside first: a directory cannot be replaced by rename.
            old = Path(tempfile.mkdtemp(prefix=".sf-old-", dir=dest.parent))
            os.rmdir(old)
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not dest.exists():
            os.replace(old, dest)
        if isinstance(e, OSError):
            raise ArtifactError(f"cannot save to {dest}: {e.strerror or e}") from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            warnings.warn(f"saved {dest}, but the previous artifact, moved aside to {old}, could not be "
                          f"removed (its files are not writable); delete it by hand", stacklevel=3)
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
    if ver not in READS:
        raise ArtifactError(f"{root / PLAN}: format version {ver!r} is not supported "
                            f"(this scalefold reads version {FORMAT_VERSION})")
    if plan.get("plan_sha256") != _plan_digest(plan):
        raise ArtifactError(f"{root / PLAN}: sha256 mismatch (tampered file)")
    for key, kind in (("graph_name", str), ("target", str), ("ir", str), ("inputs", list),
                      ("outputs", list), ("kernels", list), ("weights", dict)):
        if not isinstance(plan.get(key), kind):
            raise ArtifactError(f"{root / PLAN}: field {key!r} is missing or malformed")
    return plan


def _load_weights(root: Path, plan: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """(tensors by const hash, shapes of the 4-bit packed ones)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    rel = WEIGHTS
    data = _read(root, rel)
    _check_hash(root, rel, data, plan["weights"].get("sha256"))
    try:
        tensors = st_load(data)
        # the metadata of these same (hash-checked) bytes: an 8-byte little-endian header
        # length, then the JSON header holding "__metadata__"
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        packed = json.loads((header.get("__metadata__") or {}).get("packed4", "{}"))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"{root / rel}: unreadable safetensors data ({e})") from None
    if not isinstance(packed, dict) or not all(
            isinstance(k, str) and k in tensors and isinstance(v, list) and all(isinstance(d, int) and d >= 0 for d in v)
            for k, v in packed.items()):
        raise ArtifactError(f"{root / rel}: malformed packed4 metadata")
    return tensors, packed


# kernel source files by target: Triton kernels are Python (artifacts before this named every
# source .c, which still loads)
_SOURCE_EXT = {"c": ".c", "triton": ".py"}


def _check_kernels(root: Path, plan: dict[str, Any]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for k in plan["kernels"]:
        name, rel = (k.get("name"), k.get("file")) if isinstance(k, dict) else (None, None)
        if not (isinstance(name, str) and _KERNEL_NAME.match(name)
                and rel in (f"{KERNELS}/{name}{ext}" for ext in (".c", ".py"))):
            raise ArtifactError(f"{root / PLAN}: malformed kernel entry {k!r}")
        data = _read(root, rel)
        _check_hash(root, rel, data, k.get("sha256"))
        sources[name] = data.decode("utf-8", errors="replace")
    return sources


def _unpacked(root: Path, ir: str, weights: dict[str, torch.Tensor], packed: dict[str, list[int]]
              ) -> dict[str, torch.Tensor]:
    """Unpack the 4-bit constants into their IR containers (the IR text names each hash's
    dtype, hence its container)."""
    from ..ir import dtypes as dt
    if not packed:
        return weights
    types = {h: d for d, h in re.findall(r"=\s*const\s+(i4|u4|f4e2m1)\[[^\]]*\]\s+sha256:([0-9a-f]+)", ir)}
    out = dict(weights)
    for key, shape in packed.items():
        name = types.get(key)
        if name is None:
            # a small constant the IR text spells out literally: the parser never reads it
            continue
        p = weights[key]
        n = 1
        for d in shape:
            n *= d
        if p.dtype != torch.uint8 or p.dim() != 1 or p.numel() != (n + 1) // 2:
            raise ArtifactError(f"{root / WEIGHTS}: packed constant {key} has the wrong size")
        out[key] = unpack_nibbles(p, shape, dt.get(name).container)
    return out


def load_graph(path: str | os.PathLike) -> tuple[Graph, dict[str, Any], dict[str, str]]:
    """The graph of the artifact at ``path`` with its plan and saved kernel sources, every hash
    checked, without building anything (``scalefold inspect`` uses this)."""
    from ..ir.parser import parse
    from ..ir.printer import input_names

    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ArtifactError(f"load needs an artifact directory path (str or os.PathLike), got {type(path).__name__}")
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no artifact directory here")
    plan = read_plan(root)
    saved_sources = _check_kernels(root, plan)
    weights, packed = _load_weights(root, plan)
    weights = _unpacked(root, plan["ir"], weights, packed)
    try:
        g = parse(plan["ir"], constants=weights)
    except ScalefoldError as e:
        raise ArtifactError(f"{root / PLAN}: the IR does not load: {e}") from None
    g.name = plan["graph_name"]
    if input_names(g) != plan["inputs"] or len(plan["outputs"]) != len(g.outputs):
        raise ArtifactError(f"{root / PLAN}: input/output names do not match the IR")
    g.output_names = [str(n) for n in plan["outputs"]]
    ranges = plan.get("dim_ranges", {})   # absent in artifacts written before it existed
    if not isinstance(ranges, dict) or not all(
            isinstance(v, list) and len(v) == 2 and all(b is None or type(b) is int for b in v)
            for v in ranges.values()):
        raise ArtifactError(f"{root / PLAN}: dim_ranges is malformed")
    g.dim_ranges = {str(k): (v[0], v[1]) for k, v in ranges.items()}
    guards = plan.get("dim_guards", [])
    if not isinstance(guards, list) or not all(isinstance(e, str) for e in guards):
        raise ArtifactError(f"{root / PLAN}: dim_guards is malformed")
    try:
        g.dim_guards = [parse_dim(e) for e in guards]    # never evaluated as Python
    except ScalefoldError as e:
        raise ArtifactError(f"{root / PLAN}: dim_guards: {e}") from None
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
