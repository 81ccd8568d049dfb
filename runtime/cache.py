"""The kernel cache: C sources compiled once into shared objects keyed by content.

Key = sha256(source, flags, compiler version, and with ``-march=native`` the host CPU's
model and feature flags: a cache directory shared between machines must not hand one CPU's
AVX-512 build to another). Entries live in ``$SCALEFOLD_CACHE_DIR/c``
(default ``~/.cache/scalefold/c``), one ``<key>.so`` per distinct kernel. A build happens in a
private temporary directory and is moved into place with ``os.replace`` while holding a
per-key file lock, so concurrent processes compiling the same kernel produce exactly one
entry and a crashed build never leaves a half-written one (the build directories of a killed
build are removed by the next build of the same key, under its lock). Beside each entry,
``<key>.sha256`` holds its digest, written after it: an entry damaged from outside (truncated,
overwritten, replaced) no longer matches and is rebuilt instead of loaded, since loading a
damaged shared object can crash the process. A cache directory that cannot be used is a
``CompileError`` naming it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Any
from functools import lru_cache
from pathlib import Path

from filelock import FileLock

from ..ir.errors import CompileError

# gcc's -march=native on Intel AVX-512 CPUs auto-vectorises at 256 bits: the generated
# epilogues (an exp per silu, a division per sigmoid) then take twice the instructions. At 512
# bits EfficientNet-B0's convolutions with fused silu ran 1.1-1.3x faster on the 2-core Xeon
# (intrinsics code is unchanged; CPUs without AVX-512 have no 512-bit vectors to prefer).
_X86 = platform.machine().lower() in ("x86_64", "amd64")
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno",
          "-fno-trapping-math", "-std=gnu11") + (("-mprefer-vector-width=512",) if _X86 else ())


# added for a second build when the compiler crashes (``_compile``); gcc and clang take both
SAFE_FLAGS = ("-fno-tree-vectorize",)


def cache_dir() -> Path:
    """The cache root: ``$SCALEFOLD_CACHE_DIR`` or ``~/.cache/scalefold``."""
    root = os.environ.get("SCALEFOLD_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "scalefold"


def compiler() -> str:
    return os.environ.get("CC", "cc")


@lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    try:
        r = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"C compiler '{cc}' cannot be run: {e}") from None
    if r.returncode != 0:
        raise CompileError(f"C compiler '{cc}' failed to report its version", r.stderr)
    return r.stdout.splitlines()[0] if r.stdout else cc


@lru_cache(maxsize=None)
def host_cpu() -> str:
    """What ``-march=native`` compiles for: the CPU model and feature flags (Linux
    ``/proc/cpuinfo``), else the platform's processor description."""
    import platform
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    keep = ("model name", "flags", "features", "cpu part", "cpu implementer")
    seen: dict[str, str] = {}
    for ln in lines:
        k, _, v = ln.partition(":")
        k = k.strip().lower()
        if k in keep and k not in seen:
            seen[k] = " ".join(v.split())
    return "|".join(f"{k}={seen[k]}" for k in sorted(seen)) or f"{platform.machine()} {platform.processor()}"


@lru_cache(maxsize=None)
def _predefined(cc: str, flags: tuple[str, ...]) -> frozenset[str]:
    args = [f for f in flags if f not in ("-shared", "-fPIC")]
    try:
        r = subprocess.run([cc, *args, "-dM", "-E", "-x", "c", "-"], input="", capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"C compiler '{cc}' cannot be run: {e}") from None
    if r.returncode != 0:
        raise CompileError(f"C compiler '{cc}' failed to list its predefined macros", r.stderr)
    return frozenset(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("#define "))


def compiler_defines(macro: str, flags: tuple[str, ...] = CFLAGS, cc: str | None = None) -> bool:
    """Whether the compiler predefines ``macro`` (``__AVX512F__``) under ``flags``: what a
    kernel's ``#if defined(...)`` sees when it is built here (with ``-march=native``, the
    host CPU's features as this compiler knows them)."""
    return macro in _predefined(cc or compiler(), tuple(flags))


def cache_key(source: str, flags: tuple[str, ...] = CFLAGS, cc: str | None = None) -> str:
    cc = cc or compiler()
    h = hashlib.sha256()
    host = host_cpu() if any(f.startswith(("-march=native", "-mcpu=native", "-mtune=native")) for f in flags) else ""
    for part in (source, "\0".join(flags), compiler_version(cc), host):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:40]


def build(source: str, flags: tuple[str, ...] = CFLAGS, cc: str | None = None) -> Path:
    """Compile ``source`` (or find it in the cache) and return the shared object's path."""
    cc = cc or compiler()
    key = cache_key(source, flags, cc)
    entries = cache_dir() / "c"
    locks = cache_dir() / "locks"
    target = entries / f"{key}.so"
    if str(target) in _LOADED or (_intact(target) and _loads(target)):
        return target
    try:
        entries.mkdir(parents=True, exist_ok=True)
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{key}.lock")):
            if _intact(target) and _loads(target):
                return target
            # damaged from outside, or left without its digest by a killed build: rebuilt
            for p in (target, _digest_path(target), entries / f"{key}.c"):
                _clear(p)
            # build directories of this key left by a killed process (no live build: we hold the lock)
            for stale in entries.glob(f".build-{key[:12]}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".build-{key[:12]}-", dir=entries))
            try:
                _compile(source, flags, cc, key, tmp, entries, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        # a cache that cannot be written (read-only, shared) may still hold an entry of an
        # older version, written before entries had digests: it loads as it did then
        if target.is_file() and not _digest_path(target).exists() and _loads(target):
            return target
        raise CompileError(f"kernel cache {cache_dir()} cannot be used: {e}") from None
    return target


def _compile(source: str, flags: tuple[str, ...], cc: str, key: str, tmp: Path, entries: Path,
             target: Path) -> None:
    """Build in ``tmp``, then move the entry, its digest and its source into ``entries``."""
    src = tmp / "kernel.c"
    src.write_text(source)
    out = tmp / "kernel.so"
    cmd = [cc, *flags, "-o", str(out), str(src)]
    r = _run_cc(cmd, cc)
    if r.returncode != 0 and _crashed(r.stderr):
        # A compiler crash is the compiler's bug, not the kernel's: the same source built
        # without the loop vectoriser (where such crashes live) is still correct, only slower
        warnings.warn(f"C compiler '{cc}' crashed on kernel {key[:12]}; built again with "
                      f"{' '.join(SAFE_FLAGS)}", RuntimeWarning, stacklevel=4)
        cmd = [cc, *flags, *SAFE_FLAGS, "-o", str(out), str(src)]
        r = _run_cc(cmd, cc)
    if r.returncode != 0 or not out.exists():
        raise CompileError(f"C compilation failed ({' '.join(cmd[:1] + list(flags))}): "
                           f"kernel {key[:12]}", r.stderr)
    dig = tmp / "kernel.sha256"
    dig.write_text(f"{_digest(out)} {key}")
    os.replace(out, target)
    # the digest lands after the entry: a build killed in between leaves an entry that fails
    # _intact and is rebuilt
    os.replace(dig, _digest_path(target))
    # The source beside the entry is for people reading the cache (written atomically too); the
    # build does not depend on it
    try:
        os.replace(src, entries / f"{key}.c")
    except OSError:
        pass


def _run_cc(cmd: list[str], cc: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CompileError(f"C compiler '{cc}' could not run: {e}") from None


def _crashed(stderr: str) -> bool:
    """Whether the compiler's own output reports that it crashed (gcc, clang), as opposed to
    rejecting the source."""
    return "internal compiler error" in stderr or "PLEASE submit a bug report" in stderr


def _digest_path(target: Path) -> Path:
    return target.with_suffix(".sha256")


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _intact(target: Path) -> bool:
    """Whether ``target`` is a complete entry: a file whose digest its sidecar records, with
    the sidecar naming this entry's key (an entry and sidecar copied over another key's are
    rebuilt, not loaded as that key's kernel)."""
    try:
        recorded = _digest_path(target).read_text().split()
        return target.is_file() and recorded == [_digest(target), target.stem]
    except OSError:
        return False


def _clear(path: Path) -> None:
    """Remove whatever sits at ``path`` (a file, a link, a directory), if anything."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


_LOADED: dict[str, ctypes.CDLL] = {}
_FAULT_LOCKS: dict[str, threading.Lock] = {}


def _loads(path: Path) -> bool:
    """Whether the shared object at ``path`` loads (it is then kept for :func:`load_kernel`)."""
    key = str(path)
    if key not in _LOADED:
        try:
            _LOADED[key] = ctypes.CDLL(key)
        except OSError:
            return False
    return True


def load_kernel(path: Path, symbol: str = "sf_kernel"):
    """The kernel function of a built shared object (``void f(void**, const int64_t*)``)."""
    key = str(path)
    lib = _LOADED.get(key)
    if lib is None:
        try:
            lib = ctypes.CDLL(key)
        except OSError as e:
            raise CompileError(f"cannot load kernel {path}: {e}") from None
        _LOADED[key] = lib
    fn = getattr(lib, symbol)
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int64)]
    fn.restype = None
    try:
        fault = lib.sf_fault    # only kernels that divide integers export it
    except AttributeError:
        return fn
    fault.argtypes, fault.restype = [], ctypes.c_int
    # the flag is one per shared object, which every model with this kernel source shares:
    # a call and the read of its flag must not interleave with another thread's
    lock = _FAULT_LOCKS.setdefault(key, threading.Lock())

    def checked(p: Any, q: Any) -> None:
        with lock:
            fn(p, q)
            bad = fault()
        if bad:
            raise ZeroDivisionError("integer division or remainder by zero")
    return checked
