"""The kernel cache: private directories, refused when another user could plant code there."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import softgen
from softgen import reference, runtime
from softgen.targets import get_target

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _probe(name="cache_probe"):
    return softgen.compile("softmax", algorithm="online", target="scalar", name=name)


@pytest.fixture(scope="session")
def probe_entry(tmp_path_factory) -> list:
    """The files of the probe kernel's cache entry, built once per process: a test that needs the
    entry in a cache of its own copies them (``_seed``) instead of building it again."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTGEN_CACHE_DIR", str(tmp_path_factory.mktemp("probe-entry")))
        lib = runtime.build_shared(_probe().source, get_target("scalar"))
    return sorted(lib.parent.glob(lib.stem + ".*"))


def _seed(files) -> None:
    """Copy a cache entry's files into the cache directory (``SOFTGEN_CACHE_DIR``: the test's)."""
    d = runtime.cache_dir()
    for f in files:
        shutil.copyfile(f, d / f.name)


def _digest(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_cache_directories_are_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "root"))
    d = runtime.cache_dir()
    assert d.parent == tmp_path / "root"
    assert _mode(d.parent) == 0o700 and _mode(d) == 0o700


def test_xdg_cache_root_is_created_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = runtime.cache_dir()
    assert d.parent == tmp_path / "xdg" / "softgen"
    assert _mode(d.parent) == 0o700 and _mode(d) == 0o700


def test_a_sticky_world_writable_parent_is_fine(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(shared / "mine"))
    assert runtime.cache_dir().is_dir()


def _unsafe(d, how):
    if how == "nobody":
        os.chown(d, NOBODY, NOBODY)
    else:
        d.chmod(how)


@pytest.mark.parametrize("which", ["root", "versioned"])
@pytest.mark.parametrize("how", [0o777, 0o770, 0o1777, 0o722, pytest.param("nobody", marks=as_root)],
                         ids=["0777", "0770", "1777", "0722", "nobody"])
def test_a_cache_directory_other_users_control_is_refused(tmp_path, monkeypatch, which, how, probe_entry):
    """A planted library (its constructor would run on dlopen) must never be loaded."""
    private = tmp_path / "private"
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(private))
    x = np.ones((1, 3), np.float32)
    _seed(probe_entry)
    _probe()(x)
    (lib,) = private.rglob("*.so")
    shared = tmp_path / "shared"
    shutil.copytree(private, shared)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.c"
    evil.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void f(void) '
                    f'{{ fclose(fopen("{marker}", "w")); }}\n')
    planted = shared / lib.relative_to(private)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(planted), str(evil)], check=True)
    # whatever integrity record the cache keeps, the attacker can write too
    for side in planted.parent.glob(planted.stem + ".*"):
        if side.suffix not in (".so", ".c"):
            side.write_text(side.read_text().replace(_digest(lib), _digest(planted)))
    _unsafe(shared if which == "root" else planted.parent, how)
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(shared))
    with pytest.raises(Exception) as e:
        _probe()(x)
    assert not marker.exists(), "the planted library was loaded"
    assert e.type.__name__ == "CacheError" and "SOFTGEN_CACHE_DIR" in str(e.value)
    assert str(shared if which == "root" else planted.parent) in str(e.value)


def test_an_unsafe_xdg_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "softgen").mkdir(mode=0o777)
    (tmp_path / "softgen").chmod(0o777)
    with pytest.raises(softgen.CacheError, match=f"{tmp_path / 'softgen'}: it is writable by other users"):
        runtime.cache_dir()


# -- damaged entries ----------------------------------------------------------------------------
CHILD = """
import numpy as np, softgen
k = softgen.compile("softmax", algorithm="online", target="scalar", name="cache_probe")
print(k(np.array([[0, 1, 2]], np.float32)).tolist())
"""


def _child() -> subprocess.CompletedProcess:
    """The probe kernel run in a fresh process: a damaged library can kill its process."""
    return subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)


def _only(d, pattern):
    (p,) = d.rglob(pattern)
    return p


def _damage(lib, how):
    data = lib.read_bytes()
    if how == "truncated":
        lib.write_bytes(data[:len(data) // 2])
    elif how == "flipped":
        mid = len(data) // 3
        lib.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 256]) + data[mid + 256:])
    elif how == "stale":  # the library of another kernel with the same symbol: log_softmax
        k = softgen.compile("log_softmax", algorithm="online", target="scalar", name="cache_probe")
        other = runtime.build_shared(k.source, k.target)
        shutil.copyfile(other, lib)
    elif how == "unverified":  # an entry with no digest (e.g. from before digests were kept)
        for side in lib.parent.glob(lib.stem + ".*"):
            if side.suffix not in (".so", ".c"):
                side.unlink()
        lib.write_bytes(data[:100])
    return lib.read_bytes()


@pytest.mark.parametrize("how", ["truncated", "flipped", "stale", "unverified"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch, how, probe_entry):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    _seed(probe_entry)
    first = _child()
    assert first.returncode == 0, first.stderr
    lib = _only(tmp_path, "*.so")
    damaged = _damage(lib, how)
    again = _child()
    assert again.returncode == 0, f"exit {again.returncode}: {again.stderr[-2000:]}"
    assert again.stdout == first.stdout
    assert lib.read_bytes() != damaged
    assert runtime._intact(lib)


def _plant(lib, data: bytes):
    """Replace a cache entry together with whatever digest the cache keeps of it."""
    old = _digest(lib)
    lib.write_bytes(data)
    for side in lib.parent.glob(lib.stem + ".*"):
        if side.suffix not in (".so", ".c"):
            side.write_text(side.read_text().replace(old, _digest(lib)))


@pytest.mark.parametrize("how", ["load-error", "missing-symbol"])
def test_a_cached_library_that_cannot_be_used_is_rebuilt(tmp_path, monkeypatch, how):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    k = _probe("cache_probe_2")
    scalar = k.target
    lib = runtime.build_shared(k.source, scalar)
    other = runtime.build_shared(_probe("cache_probe_other").source, scalar).read_bytes()
    _plant(lib, other[:64] if how == "load-error" else other)  # an ELF header only; another symbol
    assert np.allclose(k(np.ones((1, 4), np.float32)), 0.25)
    assert lib.read_bytes() != other


@pytest.mark.parametrize("cc", ["cc -E", "true"])  # preprocessed C text; no output at all
def test_a_compiler_that_makes_no_shared_object_does_not_poison_the_cache(tmp_path, monkeypatch, cc):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", cc)
    with pytest.raises(softgen.BuildError, match=rf"C compiler \({cc}\) did not produce a shared library"):
        _probe()(np.ones((1, 3), np.float32))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
    monkeypatch.delenv("CC")
    assert np.allclose(_probe()(np.ones((1, 3), np.float32)), 1 / 3)


def test_build_directories_of_killed_builds_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    d = runtime.cache_dir()
    dead, live = d / "tmpdead", d / "tmplive"
    for t in (dead, live):
        t.mkdir()
        (t / "kernel.c").write_text("/* a build in progress */")
    old = time.time() - 2 * 3600
    os.utime(dead, (old, old))
    _probe()(np.ones((1, 3), np.float32))
    assert not dead.exists() and live.exists()


def test_a_damaged_tvm_object_is_rebuilt(tmp_path, monkeypatch):
    from softgen.backends import tvm_adapter
    from softgen.backends.tvm_adapter import available
    ok, why = available()
    if not ok:
        pytest.skip(f"TVM backend: {why}")
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    k = softgen.compile("softmax", algorithm="online", target="scalar", backend="tvm", name="cache_probe_tvm")
    build = tvm_adapter.script_object.__wrapped__  # the function behind its per-process memo
    good = build(k.source, k.target.name)
    obj = _only(tmp_path, "tvm-*.o")
    assert good[:4] == b"\x7fELF" and good[16] == 1 and obj.read_bytes() == good  # ET_REL
    obj.write_bytes(good[:len(good) // 2])
    again = build(k.source, k.target.name)
    assert len(again) > len(good) // 2 and obj.read_bytes() == again
    assert runtime._intact(obj)


# -- unusable cache directories -----------------------------------------------------------------
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_invalid_cache_directory_is_a_softgen_error_naming_it(tmp_path, monkeypatch, where):
    f = tmp_path / "f"
    f.write_text("")
    root = f if where == "a file" else f / "cache"
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(root))
    with pytest.raises(softgen.SoftgenError, match=f"softgen cache directory {root}.*SOFTGEN_CACHE_DIR"):
        _probe()(np.ones((1, 3), np.float32))


def test_a_cache_entry_that_cannot_be_written_is_a_softgen_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    k = _probe()
    lib = runtime.build_shared(k.source, k.target)
    for p in lib.parent.glob(lib.stem + ".*"):
        p.unlink()
        if p != lib:  # a directory where the build must write a file
            p.mkdir()
    with pytest.raises(softgen.SoftgenError, match=f"softgen cache directory {lib.parent}: .*SOFTGEN_CACHE_DIR"):
        k(np.ones((1, 3), np.float32))
    assert [p.name for p in lib.parent.iterdir() if p.name.startswith("tmp")] == []


def test_cli_blames_the_cache_directory_not_the_output(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    r = subprocess.run([sys.executable, "-m", "softgen", "build", "--target", "scalar", "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "SOFTGEN_CACHE_DIR": str(f)})
    assert r.returncode == 1
    assert r.stderr.startswith(f"softgen: error: the softgen cache directory {f} is not a directory")
    assert "SOFTGEN_CACHE_DIR" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


# -- the test suite's own cache -----------------------------------------------------------------
def test_the_suite_builds_into_its_own_cache():
    d = os.environ.get("SOFTGEN_CACHE_DIR")
    assert d, "the tests would build into the user's ~/.cache/softgen"
    _probe()(np.ones((1, 3), np.float32))
    assert list(runtime.cache_dir().glob("*.so"))


def test_a_test_run_leaves_the_users_cache_alone(tmp_path):
    """A run without SOFTGEN_CACHE_DIR builds into a temporary cache and removes it at the end."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTGEN_CACHE_DIR", "XDG_CACHE_HOME")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                        "-k", "test_the_suite_builds_into_its_own_cache"],
                       capture_output=True, text=True, timeout=600, env={**env, "HOME": str(home), "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stdout[-3000:]
    assert list(home.rglob("*")) == [] and list(tmp.iterdir()) == []


# -- the size cap: least-recently-used pruning --------------------------------------------------
def _tiny(i: int) -> str:
    """A small distinct library source (its own cache entry)."""
    return f"int tiny_{i}(void) {{ return {i}; }}\nchar pad_{i}[{32 << 10}] = {{1}};\n"


def _key(lib) -> str:
    return lib.name.split(".", 1)[0]


def test_lru_pruning_keeps_the_most_recently_used_entries_under_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SOFTGEN_CACHE_MAX_MB", "inf")
    scalar = get_target("scalar")
    libs = [runtime.build_shared(_tiny(i), scalar) for i in range(5)]
    entries = {e.key: e for e in runtime.cache_entries()}
    assert set(entries) == {_key(p) for p in libs}
    assert all({p.suffix for p in e.files} == {".so", ".sha256", ".c"} for e in entries.values())
    now = time.time()
    for age, lib in zip([50, 40, 30, 20, 10], libs):   # 0 is the least recently used ...
        for p in entries[_key(lib)].files:
            os.utime(p, (now - age, now - age))
    assert runtime.build_shared(_tiny(0), scalar) == libs[0]   # ... until a cache hit uses it again
    assert [e.key for e in runtime.cache_entries()][-1] == _key(libs[0])
    size = max(e.size for e in runtime.cache_entries())
    monkeypatch.setenv("SOFTGEN_CACHE_MAX_MB", str(3.5 * size / 2 ** 20))   # room for three
    new = runtime.build_shared(_tiny(5), scalar)                          # a write prunes
    kept = [e.key for e in runtime.cache_entries()]
    assert sorted(kept) == sorted(_key(p) for p in (libs[0], libs[4], new))
    assert sum(e.size for e in runtime.cache_entries()) <= runtime.cache_cap()
    assert not any(p.exists() for lib in libs[1:4] for p in lib.parent.glob(_key(lib) + ".*"))
    again = runtime.build_shared(_tiny(1), scalar)   # a pruned entry is simply built again
    assert runtime._intact(again)


def test_pruning_never_removes_what_this_process_loaded(tmp_path, monkeypatch, probe_entry):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    _seed(probe_entry)
    k = _probe()
    assert np.allclose(k(np.ones((1, 4), np.float32)), 0.25)         # loaded: in use
    other = runtime.build_shared(_tiny(7), k.target)                  # built, not loaded
    removed = runtime.prune_cache(cap=0)
    assert [e.key for e in removed] == [_key(other)] and not other.exists()
    (entry,) = runtime.cache_entries()
    assert entry.files[0].suffix in (".c", ".sha256", ".so") and runtime._intact(entry.files[0].with_suffix(".so"))
    assert np.allclose(k(np.ones((1, 2), np.float32)), 0.5)


def test_a_cache_removed_under_a_loaded_kernel_is_rebuilt_on_the_next_load(tmp_path, monkeypatch, probe_entry):
    """What pruning relies on (Linux): unlinking a dlopened library leaves the mapping valid;
    loading the kernel again afterwards finds no entry and builds it."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    _seed(probe_entry)
    k = _probe()
    x = np.ones((1, 3), np.float32)
    first = k(x)
    for p in runtime.cache_dir().glob("*"):
        if p.is_file():
            p.unlink()
    assert np.array_equal(k(x), first)                       # the mapping outlives the file
    assert np.array_equal(_probe("cache_probe_again")(x), first)
    assert runtime.cache_entries()


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_a_bad_cache_cap_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv("SOFTGEN_CACHE_MAX_MB", value)
    with pytest.raises(softgen.UsageError, match=f"SOFTGEN_CACHE_MAX_MB={value!r} is not a size in MiB"):
        runtime.cache_cap()


def test_the_default_cache_cap(monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_MAX_MB", raising=False)
    assert runtime.cache_cap() == 512 << 20
    monkeypatch.setenv("SOFTGEN_CACHE_MAX_MB", "inf")
    assert runtime.cache_cap() == float("inf")


# A compiler that writes its output slowly, in pieces, keeping a copy of each complete output: a
# cache that published the file while it was being written would show a piece of it.
_SLOW_CC = r'''#!{python}
import os, shutil, subprocess, sys, time
argv = sys.argv[1:]
if "--version" in argv:
    os.execvp("cc", ["cc", *argv])
rc = subprocess.call(["cc", *argv])
out = argv[argv.index("-o") + 1] if "-o" in argv else None
if rc or out is None or not out.endswith(".so"):
    sys.exit(rc)
data = open(out, "rb").read()
shutil.copyfile(out, os.path.join({full!r}, f"{{os.getpid()}}.so"))
with open(out, "wb") as f:
    for i in range(0, len(data), len(data) // 8 + 1):
        f.write(data[i:i + len(data) // 8 + 1]); f.flush(); time.sleep(0.05)
'''
_RACER = r'''
import sys, time, numpy as np, softgen
while not __import__("os").path.exists(sys.argv[1]):
    time.sleep(0.01)
k = softgen.compile("softmax", algorithm="online", target="scalar", name="cache_race")
assert np.allclose(k(np.zeros((2, 4), np.float32)), 0.25)
'''


def test_two_processes_building_one_kernel_never_load_a_half_written_library(tmp_path):
    """pytest-xdist workers (and CLI subprocesses) share one cache: two builds of the same kernel
    at once both succeed, and the cache entry only ever holds a complete library (tmp + rename)."""
    full = tmp_path / "full"
    full.mkdir()
    cc = tmp_path / "slowcc"
    cc.write_text(_SLOW_CC.format(python=sys.executable, full=str(full)))
    cc.chmod(0o755)
    go = tmp_path / "go"
    env = {**os.environ, "SOFTGEN_CACHE_DIR": str(tmp_path / "cache"), "CC": str(cc)}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(go)], env=env, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    go.touch()
    seen = set()
    while any(p.poll() is None for p in procs):
        for so in (tmp_path / "cache").rglob("*.so"):
            if not so.parent.name.startswith("tmp"):   # a published entry, not a build in progress
                try:
                    seen.add(so.read_bytes())
                except OSError:
                    pass
        time.sleep(0.005)
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    complete = {p.read_bytes() for p in full.iterdir()}
    assert complete and seen, "the racers built nothing"
    assert seen <= complete, "a cache entry was seen before it was completely written"


# -- precompiled headers ---------------------------------------------------------------------------

def test_precompiled_headers_change_no_code(tmp_path, monkeypatch):
    """The second build with one set of flags precompiles the system headers; later builds include
    them and produce the same library bytes as a build without (SOFTGEN_PCH=0 makes none)."""
    cc = runtime.compiler_for(get_target("scalar"))
    if "clang" in runtime._compiler_identity(tuple(cc)):
        pytest.skip("precompiled headers are GCC's only")
    monkeypatch.setattr(runtime, "_pch_builds", {})
    x = np.linspace(-3, 3, 21, dtype=np.float32).reshape(3, 7)
    libs = {}
    for pch in ("0", "1"):
        monkeypatch.setenv("SOFTGEN_PCH", pch)
        monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / pch))
        for name in ("pch_a", "pch_b", "pch_c"):
            k = softgen.compile("softmax", algorithm="online", target="scalar", name=name)
            assert np.allclose(k(x), reference.softmax(x), rtol=1e-5)
        libs[pch] = sorted(p.read_bytes() for p in runtime.cache_dir().glob("*.so"))
        made = sorted(p.name.split(".", 1)[1] for p in (runtime.cache_dir() / "pch").glob("*")) \
            if (runtime.cache_dir() / "pch").exists() else []
        assert made == ([] if pch == "0" else ["h", "h.gch"])
    assert libs["0"] == libs["1"]
    assert runtime.clear_precompiled() > 2 ** 20 and not (runtime.cache_dir() / "pch").exists()


def test_files_that_need_different_preludes_get_one_each(tmp_path, monkeypatch):
    """A library whose C files need different preludes (a dispatcher's translation unit without
    _GNU_SOURCE beside variants with it; a qemu driver beside its kernel) compiles each file with
    its own precompiled prelude, into the same library bytes as without."""
    cc = runtime.compiler_for(get_target("scalar"))
    if "clang" in runtime._compiler_identity(tuple(cc)):
        pytest.skip("precompiled headers are GCC's only")
    monkeypatch.setattr(runtime, "_pch_builds", {})
    gnu = "/* a variant */\n#define _GNU_SOURCE 1\n#include <sched.h>\nint pch_gnu_{i}(void) {{ return sched_getcpu() >= -1; }}\n"
    plain = "#include <stdlib.h>\nint pch_plain(int v) { return abs(v); }\n"
    libs = {}
    for pch in ("0", "1"):
        monkeypatch.setenv("SOFTGEN_PCH", pch)
        monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / pch))
        libs[pch] = [runtime.build_shared({"gnu.c": gnu.format(i=i), "plain.c": plain}, get_target("scalar")).read_bytes()
                     for i in range(3)]   # the second build with a prelude precompiles it
        made = sorted(p.name.split(".", 1)[1] for p in (runtime.cache_dir() / "pch").glob("*")) \
            if (runtime.cache_dir() / "pch").exists() else []
        assert made == ([] if pch == "0" else ["h", "h", "h.gch", "h.gch"])
    assert libs["0"] == libs["1"]
