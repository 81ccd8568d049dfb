"""The C kernel cache: concurrent builds from several processes, compiler failures, leftovers
of crashed builds."""
from __future__ import annotations

import multiprocessing as mp
import stat
import time
from pathlib import Path

import pytest
import torch
from harness import assert_close

from scalefold import api
from scalefold.codegen import c as cgen
from scalefold.codegen.schedule import partition
from scalefold.ir.errors import CompileError
from scalefold.runtime import cache, cseg, interp

# Builds the test model; run by the parent and (as source text) by the spawned children.
MODEL = r'''
import torch
from scalefold.ir.graph import Graph

def model():
    g = Graph("cache_model")
    x = g.add_input("f32[B,33]", "x")
    y = g.add_input("f32[B,33]", "y")
    # tanh(x) and tanh(y) render the same source: one shared entry
    g.set_outputs([g.add("tanh", [x]), g.add("tanh", [y]),
                   g.add("mul", [g.add("softmax", [g.add("add", [x, y])]), g.add_const(torch.tensor(3.0))])])
    return g
'''

CHILD = MODEL + r'''
import os, time
from pathlib import Path
os.environ["SCALEFOLD_CACHE_DIR"] = CACHE
from scalefold import api
from scalefold.runtime import interp
g = model()
Path(BARRIER, f"ready-{ID}").touch()
deadline = time.time() + 60
while len(list(Path(BARRIER).glob("ready-*"))) < 2 and time.time() < deadline:
    time.sleep(0.001)
cm = api.build_c(g)
xs = [torch.randn(5, 33), torch.randn(5, 33)]
for a, e in zip(cm(*xs), interp.run(g, *xs)):
    assert torch.allclose(a, e, rtol=1e-5, atol=1e-6), "wrong result"
'''


def _model():
    ns: dict = {}
    exec(MODEL, ns)
    return ns["model"]()


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SCALEFOLD_CACHE_DIR", str(root))
    return root


def _kernel_entries(entries: Path) -> list[Path]:
    """The cache's kernel entries: all but the segment runner's (runtime/cseg.py), which a
    model that runs builds once beside them."""
    runner = cache.cache_key(cseg._SEQ_SOURCE)
    return sorted(p for p in entries.glob("*.so") if p.stem != runner)


def test_two_processes_share_one_entry_per_kernel(cache_root: Path, tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    ctx = mp.get_context("spawn")
    # builtins.exec is picklable by name, so the children need nothing from this test module.
    procs = [ctx.Process(target=exec, args=(CHILD, {"CACHE": str(cache_root), "BARRIER": str(barrier),
                                                     "ID": i}))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    sources = {ck.source for ck in cgen.render(partition(_model(), cgen.CAPS))}
    assert len(sources) == 2
    entries = cache_root / "c"
    sos = _kernel_entries(entries)
    assert len(sos) == len(sources), [p.name for p in sos]
    assert {p.stem for p in sos} == {cache.cache_key(s) for s in sources}
    assert not list(entries.glob(".build-*")), "a build directory was left behind"
    # A third build in this process finds everything and writes nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in sos}
    g = _model()
    cm = api.build_c(g)
    xs = [torch.randn(2, 33), torch.randn(2, 33)]
    for a, e in zip(cm(*xs), interp.run(g, *xs)):
        assert_close(a, e)
    assert {p: p.stat().st_mtime_ns for p in _kernel_entries(entries)} == mtimes


def test_cache_key_covers_source_and_flags() -> None:
    src = "void sf_kernel(void **p, const long *q) {}\n"
    assert cache.cache_key(src) == cache.cache_key(src)
    assert cache.cache_key(src) != cache.cache_key(src + " ")
    assert cache.cache_key(src) != cache.cache_key(src, cache.CFLAGS + ("-DSF_X",))


def test_cache_key_covers_the_host_cpu_for_native_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """-march=native code is only valid on CPUs like the one that built it: a cache directory
    shared between hosts (an NFS home) must key it by the host's CPU features."""
    src = "void sf_kernel(void **p, const long *q) {}\n"
    here = cache.cache_key(src)
    portable = ("-O2", "-shared", "-fPIC")
    mine = cache.cache_key(src, portable)
    monkeypatch.setattr(cache, "host_cpu", lambda: "flags=fpu sse sse2")
    assert cache.cache_key(src) != here
    assert cache.cache_key(src, portable) == mine        # no -march=native: the host does not matter


def _replace_bytes(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` as a new file: this process may have the old one mapped (a
    loaded kernel), and writing those pages in place could crash it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


def _kernel_source() -> str:
    return cgen.render(partition(_model(), cgen.CAPS))[0].source


def test_invalid_c_raises_compile_error_with_stderr(cache_root: Path) -> None:
    bad = _kernel_source().replace("void sf_kernel(", "int broken_sf = ;\nvoid sf_kernel(")
    with pytest.raises(CompileError) as ei:
        cache.build(bad)
    assert "broken_sf" in ei.value.stderr and "error" in ei.value.stderr
    assert "broken_sf" in str(ei.value)   # the message shows the compiler's output too
    entries = cache_root / "c"
    assert not list(entries.glob("*.so")) and not list(entries.glob(".build-*"))


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_failing_compiler_raises_compile_error(cache_root: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cc = _script(tmp_path / "fakecc", 'if [ "$1" = "--version" ]; then echo "fakecc 1.0"; exit 0; fi\n'
                                      'echo "fakecc: internal error, out of luck" >&2\nexit 3\n')
    monkeypatch.setenv("CC", cc)
    with pytest.raises(CompileError) as ei:
        cache.build(_kernel_source())
    assert "out of luck" in ei.value.stderr
    # Through the public entry point as well.
    with pytest.raises(CompileError, match="out of luck"):
        api.build_c(_model())
    assert not list((cache_root / "c").glob("*.so"))
    # A compiler that cannot even report its version.
    monkeypatch.setenv("CC", _script(tmp_path / "deadcc", 'echo "deadcc: broken install" >&2\nexit 1\n'))
    with pytest.raises(CompileError, match="broken install"):
        cache.build(_kernel_source())
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(CompileError, match="no-such-compiler"):
        cache.build(_kernel_source())


def test_a_compiler_crash_is_retried_without_the_vectoriser(cache_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """gcc 12 crashed (internal compiler error) vectorising a generated Winograd epilogue for
    AVX2: the build goes again without the loop vectoriser and the entry works; a crash with
    the safe flags too is still a CompileError naming the compiler's output."""
    log = tmp_path / "calls"
    cc = _script(tmp_path / "icecc",
                 'if [ "$1" = "--version" ]; then echo "icecc 1.0"; exit 0; fi\n'
                 f'echo "$@" >> {log}\n'
                 'case " $* " in *" -fno-tree-vectorize "*) exec cc "$@";; esac\n'
                 'echo "kernel.c:1:1: internal compiler error: in some_pass, at expr.cc:1" >&2\nexit 1\n')
    monkeypatch.setenv("CC", cc)
    with pytest.warns(RuntimeWarning, match="crashed"):
        cm = api.build_c(_model())
    xs = [torch.randn(4, 33), torch.randn(4, 33)]
    for a, e in zip(cm(*xs), interp.run(_model(), *xs)):
        assert_close(a, e, rtol=1e-5, atol=1e-6)
    calls = log.read_text().splitlines()
    assert any("-fno-tree-vectorize" not in c for c in calls)
    assert any("-fno-tree-vectorize" in c for c in calls)
    # a compiler that crashes whatever the flags
    monkeypatch.setenv("CC", _script(tmp_path / "icecc2", 'if [ "$1" = "--version" ]; then echo "icecc 2"; exit 0; fi\n'
                                     'echo "internal compiler error: always" >&2\nexit 1\n'))
    with pytest.warns(RuntimeWarning), pytest.raises(CompileError, match="always"):
        cache.build(_kernel_source())
    assert not list((cache_root / "c").glob(".build-*"))


def test_leftovers_of_a_crashed_build_are_harmless(cache_root: Path) -> None:
    src = _kernel_source()
    key = cache.cache_key(src)
    entries, locks = cache_root / "c", cache_root / "locks"
    entries.mkdir(parents=True)
    locks.mkdir(parents=True)
    # What a build killed mid-way leaves: its private directory with a partial object and
    # source, and the lock file (the lock itself dies with the process).
    crashed = entries / f".build-{key[:12]}-x1y2z3"
    crashed.mkdir()
    (crashed / "kernel.so").write_bytes(b"\x7fELF\x02\x01 truncated")
    (crashed / "kernel.c").write_text(src[: len(src) // 2])
    (locks / f"{key}.lock").write_text("")
    t0 = time.time()
    path = cache.build(src)
    assert path == entries / f"{key}.so" and path.stat().st_size > 1000
    assert not crashed.exists()        # the next build of that key clears the dead build's directory
    fn = cache.load_kernel(path)
    assert fn is not None and time.time() - t0 < 60
    g = _model()
    cm = api.build_c(g)
    xs = [torch.randn(3, 33), torch.randn(3, 33)]
    for a, e in zip(cm(*xs), interp.run(g, *xs)):
        assert_close(a, e)
    assert sorted(p.name for p in _kernel_entries(entries)) == sorted(
        {f"{cache.cache_key(ck.source)}.so" for ck in cgen.render(partition(g, cgen.CAPS))})


def test_damaged_entry_is_rebuilt(cache_root: Path) -> None:
    """An entry damaged from outside (truncated) does not load: the next build replaces it
    instead of handing it out for ever."""
    src = _kernel_source()
    path = cache.build(src)
    size = path.stat().st_size
    cache._LOADED.pop(str(path), None)
    _replace_bytes(path, path.read_bytes()[:100])
    again = cache.build(src)
    assert again == path and path.stat().st_size == size
    assert cache.load_kernel(again) is not None


def test_entry_damaged_past_its_header_is_rebuilt_not_loaded(cache_root: Path, tmp_path: Path) -> None:
    """A same-length entry whose second half was zeroed still passed dlopen's header checks,
    and loading it crashed the next process (SIGSEGV / SIGBUS; so did one truncated past its
    headers): its digest no longer matches, so it is rebuilt before anything loads it. The
    check runs in a child process, which a regression would crash instead of this one."""
    import subprocess
    import sys
    src = _kernel_source()
    path = cache.build(src)
    good = path.read_bytes()
    cache._LOADED.pop(str(path), None)
    for damaged in (good[: len(good) // 2] + bytes(len(good) - len(good) // 2), good[:-4096]):
        _replace_bytes(path, damaged)
        (tmp_path / "k.c").write_text(src)
        code = ("import sys; from pathlib import Path; from scalefold.runtime import cache; "
                "p = cache.build(Path(sys.argv[1]).read_text()); cache.load_kernel(p); print('ok')")
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "k.c")], capture_output=True,
                           text=True, timeout=600, env={**__import__("os").environ,
                                                        "SCALEFOLD_CACHE_DIR": str(cache_root)})
        assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
        assert path.read_bytes() == good


def test_entry_without_its_digest_is_rebuilt(cache_root: Path) -> None:
    """A build killed between moving the entry and its digest into place leaves an entry
    without a digest: the next build replaces it."""
    src = _kernel_source()
    path = cache.build(src)
    cache._LOADED.pop(str(path), None)
    path.with_suffix(".sha256").unlink()
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert cache.build(src) == path and path.stat().st_mtime_ns != mtime
    assert path.with_suffix(".sha256").read_text() == f"{cache._digest(path)} {path.stem}"


def test_unusable_cache_paths(cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache root that is a file is a CompileError naming it (it was a raw
    NotADirectoryError); an entry's path taken by a directory is cleared and rebuilt (it was a
    raw IsADirectoryError)."""
    src = _kernel_source()
    afile = tmp_path / "not_a_dir"
    afile.write_text("x")
    monkeypatch.setenv("SCALEFOLD_CACHE_DIR", str(afile))
    with pytest.raises(CompileError, match="kernel cache .*not_a_dir.* cannot be used"):
        cache.build(src)
    monkeypatch.setenv("SCALEFOLD_CACHE_DIR", str(cache_root))
    entry = cache_root / "c" / f"{cache.cache_key(src)}.so"
    entry.mkdir(parents=True)
    (entry / "junk").write_text("x")
    assert cache.build(src) == entry and entry.is_file()
    assert cache.load_kernel(entry) is not None



def test_directories_at_the_digest_or_source_path_are_cleared(cache_root: Path) -> None:
    """A directory where the digest or the readable source goes no longer fails every later
    build (the digest's) or the build that wrote the entry (the source's)."""
    src = _kernel_source()
    key = cache.cache_key(src)
    entries = cache_root / "c"
    for name in (f"{key}.sha256", f"{key}.c"):
        (entries / name).mkdir(parents=True)
        (entries / name / "junk").write_text("x")
        path = cache.build(src)
        assert path.is_file() and (entries / f"{key}.sha256").is_file()
        assert (entries / f"{key}.sha256").read_text() == f"{cache._digest(path)} {key}"
        cache._LOADED.pop(str(path), None)
        for p in entries.iterdir():
            cache._clear(p)


def test_a_read_only_cache_still_serves_entries_without_a_digest(cache_root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries written before digests existed load from a cache that cannot be written (the
    rebuild needs the lock and the entry's path); a writable cache rebuilds them instead."""
    src = _kernel_source()
    path = cache.build(src)
    cache._LOADED.pop(str(path), None)
    path.with_suffix(".sha256").unlink()

    class ReadOnly:
        def __init__(self, *a, **k):
            raise OSError(30, "Read-only file system")
    monkeypatch.setattr(cache, "FileLock", ReadOnly)
    assert cache.build(src) == path and not path.with_suffix(".sha256").exists()
    assert cache.load_kernel(path) is not None
    cache._LOADED.pop(str(path), None)
    path.unlink()                                  # nothing to serve: the error names the cache
    with pytest.raises(CompileError, match="cannot be used: .*Read-only"):
        cache.build(src)


def test_an_entry_copied_over_another_key_is_rebuilt(cache_root: Path) -> None:
    """Another key's entry and its sidecar copied over this key's (both files consistent with
    each other) used to load as this key's kernel: the sidecar names its key now."""
    import shutil
    a, b = _kernel_source(), _kernel_source().replace("sf_kernel", "sf_kernel", 1) + "\n/* other */\n"
    pa, pb = cache.build(a), cache.build(b)
    for p in (pa, pb):
        cache._LOADED.pop(str(p), None)
    shutil.copy(pb, pa)
    shutil.copy(pb.with_suffix(".sha256"), pa.with_suffix(".sha256"))
    assert not cache._intact(pa)
    assert cache.build(a) == pa and cache._intact(pa)
    assert pa.with_suffix(".sha256").read_text().split()[1] == pa.stem
