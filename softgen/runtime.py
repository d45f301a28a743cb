"""Building and loading generated C: the system C compiler, a content-hash cache, ctypes.

Built objects are cached under ``$SOFTGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/softgen``, else
``~/.cache/softgen`` (a directory private to the user: see ``cache_dir``), keyed by a hash of the
source, the compiler's identity and the flags, written atomically (several processes may build
the same kernel at once) with a SHA-256 sidecar. An entry that does not match its digest, does
not load or lacks its symbol is rebuilt.

The cache is capped (``SOFTGEN_CACHE_MAX_MB``, default 512 MiB): after each write, whole entries
(``<key>.so`` with its ``<key>.sha256`` sidecar and ``<key>.c``) are removed least recently used
first until the total fits (``prune_cache``). An entry's last use is the mtime of its sidecar,
touched on every cache hit (file access times are unreliable: relatime/noatime mounts). Entries
this process loaded or just built are never removed by it. Another process may remove an entry
this one has dlopened: on Linux that only unlinks the name, the mapped library stays valid until
it is closed, and a later load of that kernel rebuilds it (``open_shared`` retries once).

With GCC, the system headers generated C includes (libc, pthreads, the ISA's intrinsics or SIMDe)
are parsed once per compiler and flags into a precompiled header under ``<cache>/pch`` instead of
once per build (a third of a kernel's compile time; more with SIMDe): built on the second build
with those flags in a process, used by every later build in any process (also a static archive's
objects, and each C file of a library whose files need different preludes); ``SOFTGEN_PCH=0``
turns it off. A build that fails with it is retried without it.
"""
from __future__ import annotations

import _ctypes
import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__
from .abi import KernelABI
from .errors import BuildError, CacheError, UsageError
from .targets import Target, host_arch

CACHE_HINT = "set SOFTGEN_CACHE_DIR to a private directory of yours to use another one"

BASE_CFLAGS = ("-O2", "-std=c11", "-fPIC", "-pthread", "-fvisibility=hidden", "-ffp-contract=off",
               "-fno-math-errno", "-Wall")


PCH_ENV = "SOFTGEN_PCH"
# What isa.h.j2 and pool.h.j2 include: a precompiled prelude may hold no more than generated C
# would include anyway (a file that defines _GNU_SOURCE gets the prelude that defines it too).
_PRELUDE_HEADERS = ("stddef.h", "stdint.h", "stdlib.h", "string.h", "math.h", "float.h", "pthread.h",
                    "sched.h", "stdio.h", "time.h", "unistd.h", "limits.h")
_GNU = "\n#define _GNU_SOURCE 1"
_pch_builds: dict[tuple, int] = {}   # (pch path) -> builds this process made with it; -1: unusable

DEFAULT_CACHE_MAX_MB = 512
CACHE_MAX_ENV = "SOFTGEN_CACHE_MAX_MB"


def _cache_root() -> Path:
    root = os.environ.get("SOFTGEN_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if not xdg:
        try:
            xdg = str(Path.home() / ".cache")
        except RuntimeError:  # no $HOME and no passwd entry
            raise CacheError(f"there is no home directory for the softgen cache; {CACHE_HINT}") from None
    return Path(xdg) / "softgen"


def _unusable(d: Path, e: OSError) -> CacheError:
    return CacheError(f"cannot use the softgen cache directory {d}: {e.strerror or e}; {CACHE_HINT}")


def _check_private(d: Path, st: os.stat_result) -> None:
    """softgen dlopens what it finds in the cache: a directory another user can write to (or
    owns, and so can chmod) lets that user run code in this process."""
    why = ""
    if st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}; chmod go-w it)"
    if why:
        raise CacheError(f"refusing to use the softgen cache directory {d}: it {why}, so another "
                         f"user could plant code that softgen would load; {CACHE_HINT}")


def _private_dirs(*dirs: Path) -> None:
    for d in dirs:
        try:
            try:
                st = os.stat(d)
            except FileNotFoundError:
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
                st = os.stat(d)
        except OSError as e:
            raise _unusable(d, e) from None
        if not stat.S_ISDIR(st.st_mode):
            raise CacheError(f"the softgen cache directory {d} is not a directory; {CACHE_HINT}")
        _check_private(d, st)


def cache_root() -> Path:
    """The cache root (``$SOFTGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/softgen``, else
    ``~/.cache/softgen``), created private (0700); ``CacheError`` as for ``cache_dir``. The
    tuning database lives here, beside the per-version kernel directories."""
    root = _cache_root()
    _private_dirs(root)
    return root


def cache_dir() -> Path:
    """The cache directory ``<root>/v<version>``, created private (0700). ``CacheError`` if it
    cannot be, or unless both it and the root are owned by this user and not group/world-writable."""
    root = _cache_root()
    path = root / f"v{__version__}"
    _private_dirs(root, path)
    return path


def compiler_for(target: Target, cc: str | None = None) -> list[str]:
    """The C compiler command for ``target``: ``cc`` if given, else ``$CC_<arch>`` for a cross
    target, else ``$CC``, else ``cc``. The command must resolve to an executable."""
    cross = target.arch not in ("any", host_arch())
    if cc is None:
        cc = os.environ.get(f"CC_{target.arch}") if cross else None
        if cross and not cc:
            cc = next((c for c in target.cross_cc if shutil.which(shlex.split(c)[0])), "")
        cc = cc or (None if cross else os.environ.get("CC")) or ("" if cross else "cc")
    if not cc:
        hint = f" ({target.extra['cross_hint']})" if "cross_hint" in target.extra else ""
        raise BuildError(f"no C cross compiler for target {target.name} ({target.arch}) on this "
                         f"{host_arch()} host: install one{hint}, set CC_{target.arch} or pass cc=")
    try:
        argv = shlex.split(cc)
    except ValueError as e:  # e.g. an unbalanced quote
        raise BuildError(f"C compiler command {cc!r} cannot be parsed: {e}") from None
    if not argv or shutil.which(argv[0]) is None:
        raise BuildError(f"C compiler {cc!r} not found (set $CC or pass cc=)")
    return argv


@functools.cache
def _compiler_identity(cc: tuple[str, ...]) -> str:
    try:
        out = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()[0] if out.stdout else cc[0]
    except (OSError, subprocess.SubprocessError):
        return cc[0]


def compiler_id(target: Target, cc: str | None = None) -> tuple[str, str]:
    """The compiler ``compiler_for`` picks, as (command line, first line of its ``--version``):
    what tuning records are keyed by."""
    argv = compiler_for(target, cc)
    return shlex.join(argv), _compiler_identity(tuple(argv))


def emulation_flags(target: Target) -> list[str]:
    """Flags that compile an x86 target's intrinsics through SIMDe's portable implementation."""
    try:
        import simde_py
    except ImportError:
        raise BuildError("emulating x86 ISAs needs SIMDe headers: pip install simde-py") from None
    if target.arch != "x86_64" or host_arch() != "x86_64":
        raise BuildError(f"SIMDe emulation is available for x86 targets on x86 hosts, not {target.name}")
    # -fwrapv: SIMDe's portable integer lane ops (e.g. add_epi32) add plain int32_t, which
    # overflows where the instructions wrap (the exp's exponent arithmetic relies on wrapping).
    return ["-DSOFTGEN_SIMDE", "-fwrapv", f"-I{simde_py.get_include()}", "-Wno-psabi"]


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{what} failed to run: {e}") from None
    if res.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(map(shlex.quote, argv))}):\n{res.stderr[-4000:]}")
    return res


def flags_for(target: Target, emulate: bool = False) -> list[str]:
    return list(BASE_CFLAGS) + (emulation_flags(target) if emulate else list(target.cflags))


# ELF e_type a cache entry must have, by suffix: ET_DYN; ET_EXEC or (static-pie) ET_DYN; ET_REL
_ELF_TYPES = {".so": ((3,), "a shared library"), ".exe": ((2, 3), "an executable"),
              ".o": ((1,), "an object file")}
_STALE_TMP_SECONDS = 3600  # far longer than any build: a tmp* directory this old lost its builder
_verified: dict[Path, tuple] = {}  # entry -> the file version (dev, ino, size, mtime) hashed here


def _elf_type(data: bytes) -> int | None:
    if len(data) < 18 or data[:4] != b"\x7fELF" or data[5] not in (1, 2):
        return None
    return int.from_bytes(data[16:18], "little" if data[5] == 1 else "big")


def _version(f) -> tuple:
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _intact(entry: Path) -> bool:
    """Whether ``entry`` holds what was built for its key: its SHA-256 is the one in the sidecar
    ``<key>.sha256`` written after it (a truncated, flipped or stale file is not)."""
    try:
        with open(entry, "rb") as f:
            version = _version(f)
            if _verified.get(entry) == version:
                return True
            digest = hashlib.sha256(f.read()).hexdigest()
        if entry.with_suffix(".sha256").read_text().strip() != digest:
            return False
    except (OSError, UnicodeDecodeError):
        return False
    _verified[entry] = version
    return True


def _clean_stale_tmp(d: Path) -> None:
    """Remove the ``tmp*`` build directories of builds that were killed."""
    cutoff = time.time() - _STALE_TMP_SECONDS
    try:
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("tmp") and e.is_dir(follow_symlinks=False) \
                        and e.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(e.path, ignore_errors=True)
    except OSError:
        pass


def _fsynced(path: Path) -> tuple[bytes, tuple]:
    """The contents and version of ``path``, on disk: a crash after the rename that publishes it
    must not leave an entry whose blocks were never written."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        return f.read(), _version(f)


# -- the size cap: least-recently-used pruning of whole entries ---------------------------------
_in_use: set[str] = set()  # keys of the entries this process loaded: never pruned by it


@dataclass(frozen=True)
class CacheEntry:
    """One kernel cache entry: the files ``<key>.*`` (library or object, sidecar, C source)."""

    key: str
    files: tuple[Path, ...]
    size: int          # bytes, all files
    last_used: float   # the latest mtime of its files (the sidecar is touched on each use)


def cache_cap() -> float:
    """The cache size cap in bytes, from ``SOFTGEN_CACHE_MAX_MB`` (default 512; ``inf``: none)."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MAX_MB * 2.0 ** 20
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not mb >= 0:   # also NaN
        raise UsageError(f"{CACHE_MAX_ENV}={text!r} is not a size in MiB (a number >= 0, or inf)")
    return mb * 2.0 ** 20


def cache_entries(d: Path | None = None) -> list[CacheEntry]:
    """The entries of the kernel cache directory ``d`` (default: ``cache_dir()``), least recently
    used first; builds in progress (``tmp*`` directories) are not entries."""
    d = cache_dir() if d is None else d
    groups: dict[str, list[tuple[Path, os.stat_result]]] = {}
    try:
        with os.scandir(d) as it:
            for e in it:
                if e.name.startswith("tmp") or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:   # pruned by another process meanwhile
                    continue
                groups.setdefault(e.name.split(".", 1)[0], []).append((Path(e.path), st))
    except OSError as e:
        raise _unusable(d, e) from None
    out = [CacheEntry(key, tuple(sorted(p for p, _ in fs)), sum(st.st_size for _, st in fs),
                      max(st.st_mtime for _, st in fs)) for key, fs in groups.items()]
    return sorted(out, key=lambda c: (c.last_used, c.key))


def prune_cache(cap: float | None = None, d: Path | None = None, keep: tuple[str, ...] = ()) -> list[CacheEntry]:
    """Remove whole entries, least recently used first, until the cache holds at most ``cap``
    bytes (default ``cache_cap()``; 0 removes every entry it may). Entries this process loaded
    and the keys in ``keep`` are never removed. Returns the removed entries."""
    return _prune(cache_cap() if cap is None else cap, d, keep)[0]


def _prune(cap: float, d: Path | None, keep: tuple[str, ...]) -> tuple[list[CacheEntry], int]:
    """``prune_cache``, and the bytes the cache holds afterwards."""
    entries = cache_entries(d)
    total = sum(c.size for c in entries)
    removed = []
    for c in entries:
        if total <= cap:
            break
        if c.key in _in_use or c.key in keep:
            continue
        # the sidecar first: a reader that still finds the library then sees it unverified and
        # rebuilds it, never a library with a digest that is about to vanish
        for p in sorted(c.files, key=lambda p: p.suffix != ".sha256"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                raise _unusable(p.parent, e) from None
            _verified.pop(p, None)
        total -= c.size
        removed.append(c)
    return removed, total


def _used(entry: Path) -> None:
    """Record a use of ``entry`` (its sidecar's mtime: the LRU clock)."""
    try:
        os.utime(entry.with_suffix(".sha256"))
    except OSError:
        pass


def _cached(entry: Path, make, what: str, rebuild: bool = False) -> Path:
    """The cache file ``entry``; unless it is intact (and not ``rebuild``), first made anew by
    ``make(tmp) -> (file, {suffix: companion file})`` in a fresh temporary directory, checked to
    be the ELF file its suffix names, and moved into place (a reader sees the old file or the
    new one): the file, then its digest, then its companions."""
    if not rebuild and _intact(entry):
        _used(entry)
        return entry
    _clean_stale_tmp(entry.parent)
    try:
        with tempfile.TemporaryDirectory(dir=entry.parent, prefix="tmp") as tmp:
            built, companions = make(Path(tmp))
            data, version = _fsynced(built) if built.is_file() else (b"", None)
            types, kind = _ELF_TYPES[entry.suffix]
            if _elf_type(data) not in types:
                raise BuildError(f"{what} did not produce {kind} (ELF e_type "
                                 f"{' or '.join(map(str, types))}); nothing was cached")
            digest = Path(tmp) / "sha256"
            digest.write_text(hashlib.sha256(data).hexdigest() + "\n")
            _fsynced(digest)
            os.replace(built, entry)
            os.replace(digest, entry.with_suffix(".sha256"))
            for suffix, path in companions.items():
                os.replace(path, entry.with_suffix(suffix))
            _verified[entry] = version
    except OSError as e:  # the compiler's own failures are BuildErrors: this is the directory's
        raise _unusable(entry.parent, e) from None
    _maybe_prune(entry)
    return entry


# Bytes this process believes the cache holds: a scan's total plus what it wrote since. The
# directory is scanned again only when that could exceed the cap (a scan of a thousand entries
# takes ~0.1 s; a build writes ~50 KiB), so a process that builds many kernels pays one scan,
# not one per build. Other processes' writes are theirs to prune.
_estimate: dict[Path, int] = {}


def _maybe_prune(entry: Path) -> None:
    d, cap, key = entry.parent, cache_cap(), entry.name.split(".", 1)[0]
    written = sum(p.stat().st_size for p in d.glob(key + ".*") if p.is_file())
    if d in _estimate and _estimate[d] + written <= cap:
        _estimate[d] += written
        return
    _estimate[d] = _prune(cap, d, (key,))[1]


def prelude(target: Target, gnu: bool) -> str:
    """The system headers generated C for ``target`` includes, as one header to precompile."""
    lines = ["/* softgen: the system headers of generated C, precompiled once per compiler and flags */",
             *(["#define _GNU_SOURCE 1"] if gnu else []), *(f"#include <{h}>" for h in _PRELUDE_HEADERS),
             "#if defined(__linux__)", "#include <linux/futex.h>", "#include <sys/syscall.h>", "#endif"]
    if target.header:   # as isa.h.j2 includes them
        lines += ["#ifdef SOFTGEN_SIMDE", "#define SIMDE_ENABLE_NATIVE_ALIASES", "#define SIMDE_NO_NATIVE",
                  *(f"#include <{h}>" for h in target.simde_header), "#else", f"#include <{target.header}>",
                  "#endif"]
    return "\n".join(lines) + "\n"


def _pch(argv0: list[str], flags: list[str], text: str) -> list[str]:
    """``["-include", <header>]`` when a precompiled ``text`` for this compiler and these flags is in
    the cache (made here on the second request: a process that builds one kernel pays nothing),
    else []. Only GCC's precompiled headers are kept (their magic checked): another compiler gets
    no flags and parses the headers itself."""
    if os.environ.get(PCH_ENV, "1").strip() == "0":
        return []
    flags = [f for f in flags if f not in ("-shared", "-static")]   # link-only
    key = hashlib.sha256("\0".join([_compiler_identity(tuple(argv0)), *argv0, *flags, text]).encode())
    d = cache_dir() / "pch"
    header = d / f"{key.hexdigest()[:32]}.h"
    n = _pch_builds.get(header, 0)
    if n < 0:
        return []
    gch = header.with_name(header.name + ".gch")
    if header.is_file() and gch.is_file():
        return ["-include", str(header)]
    _pch_builds[header] = n + 1
    if n < 1:
        return []
    try:
        d.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d, prefix="tmp") as tmp:
            h = Path(tmp) / header.name
            h.write_text(text)
            out = Path(tmp) / gch.name
            res = subprocess.run([*argv0, *flags, "-x", "c-header", "-o", str(out), str(h)],
                                 capture_output=True, timeout=600)
            with open(out, "rb") if out.is_file() else open(os.devnull, "rb") as f:
                ok = res.returncode == 0 and f.read(4) == b"gpch"
            if not ok:
                _pch_builds[header] = -1
                return []
            os.replace(out, gch)     # the .gch first: a reader that finds the header finds it
            os.replace(h, header)
    except (OSError, subprocess.SubprocessError):
        _pch_builds[header] = -1
        return []
    return ["-include", str(header)]


def _compile(argv: list[str], k: int, pre: list[str]) -> None:
    """Run the compiler command ``argv`` (its first ``k`` words the compiler) with the precompiled
    prelude flags ``pre`` inserted; if that fails, without them (a prelude that does not fit)."""
    try:
        _run([*argv[:k], *pre, *argv[k:]], "C compiler")
    except BuildError:
        if not pre:
            raise
        _run(argv, "C compiler")


def clear_precompiled(d: Path | None = None) -> int:
    """Remove the precompiled headers of cache directory ``d`` (default ``cache_dir()``); their bytes."""
    d = (cache_dir() if d is None else d) / "pch"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.is_dir() else 0
    shutil.rmtree(d, ignore_errors=True)
    _pch_builds.clear()
    return size


def _cached_build(sources: dict[str, str], argv0: list[str], flags: list[str], suffix: str,
                  libs: tuple[str, ...] = ("-lm",), rebuild: bool = False,
                  file_flags: dict[str, list[str]] | None = None, target: Target | None = None,
                  file_targets: dict | None = None) -> Path:
    """Compile ``sources`` (file name -> text) with one compiler command; cached by content.
    ``file_flags``: extra flags of single C files (a multi-ISA library: each ISA's translation
    units get that ISA's flags); then each C file is compiled on its own (``-c``) and linked.
    ``target`` (and ``file_targets``: a file's own): whose system headers a precompiled header
    may hold."""
    file_flags = {f: list(v) for f, v in (file_flags or {}).items() if f in sources}
    blobs = [v.encode() if isinstance(v, str) else v for v in sources.values()]
    per_file = [f"{f}={' '.join(v)}".encode() for f, v in sorted(file_flags.items())]
    key = hashlib.sha256(b"\0".join([*(k.encode() for k in sources), *blobs, *per_file,
                                     *(a.encode() for a in (_compiler_identity(tuple(argv0)),
                                                             *argv0, *flags, *libs))])).hexdigest()[:32]

    def make(tmp: Path):
        paths, link = [], []
        for fname, data in sources.items():  # C text, bytes (an object file), a version script
            path = tmp / fname
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            if fname.endswith(".map"):
                link.append(f"-Wl,--version-script={path}")
            else:
                paths.append(path)
        first = paths[0]

        def preludes(names: list[str]) -> set[str]:
            """The preludes of C files ``names``; empty if one has no target to take it from."""
            tgs = [(file_targets or {}).get(f, target) for f in names]
            return set() if not names or None in tgs else \
                {prelude(tg, _GNU in str(sources[f])) for f, tg in zip(names, tgs)}

        def pch(names: list[str], fflags: list[str]) -> list[str]:
            """The precompiled prelude of C files ``names`` compiled together, if they agree on one."""
            texts = preludes(names)
            return _pch(argv0, [*flags, *fflags], texts.pop()) if len(texts) == 1 else []

        # each C file with its own flags, or its own prelude (a dispatcher's translation unit
        # without _GNU_SOURCE beside variants with it: no one header fits all), then one link
        cs = [p.name for p in paths if p.suffix == ".c"]
        if file_flags or len(preludes(cs)) > 1:
            objs = []
            for path in paths:
                if path.suffix != ".c":
                    objs.append(path)
                    continue
                obj = path.with_name(path.name + ".o")
                ff = list(file_flags.get(path.name, ()))
                _compile([*argv0, *flags, *ff, "-c", "-o", str(obj), str(path)], len(argv0), pch([path.name], ff))
                objs.append(obj)
            paths = objs
        out = tmp / f"out{suffix}"
        cs = [p.name for p in paths if p.suffix == ".c"]
        _compile([*argv0, *flags, "-o", str(out), *map(str, paths), *link, *libs], len(argv0),
                 pch(cs, []) if cs else [])
        return out, {".c": first}

    what = f"the C compiler ({shlex.join(argv0)})"
    return _cached(cache_dir() / f"{key}{suffix}", make, what, rebuild)


def file_flags_for(file_targets: dict | None, emulate: bool = False) -> dict[str, list[str]]:
    """Per C file, the flags of its own target (a multi-ISA library, ``Kernel.file_targets()``):
    the target's ``cflags``, or emulated (SIMDe) for an x86 target; a target of no particular
    architecture (scalar) compiles the same either way."""
    return {f: (emulation_flags(t) if emulate and t.arch != "any" else list(t.cflags))
            for f, t in (file_targets or {}).items()}


def build_shared(source: str | dict, target: Target, *, emulate: bool = False, cc: str | None = None,
                 dest: Path | None = None, rebuild: bool = False, file_targets: dict | None = None) -> Path:
    """Compile ``source`` (C text, or a dict of file name -> C text / object bytes) to a shared
    library (cached; ``rebuild``: even if cached); copy it to ``dest`` if given. ``file_targets``:
    file name -> ``Target`` whose flags that file is compiled with (besides ``target``'s base)."""
    sources = {"kernel.c": source} if isinstance(source, str) else source
    ff = file_flags_for(file_targets, emulate)
    lib = _cached_build(sources, compiler_for(target, cc), flags_for(target, emulate) + ["-shared"], ".so",
                        rebuild=rebuild, file_flags=ff, target=target, file_targets=file_targets)
    if dest is not None:
        try:
            shutil.copyfile(lib, dest)
        except FileNotFoundError:   # pruned by another process between the build and the copy?
            if lib.is_file():
                raise
            shutil.copyfile(_cached_build(sources, compiler_for(target, cc), flags_for(target, emulate)
                                          + ["-shared"], ".so", rebuild=True, file_flags=ff), dest)
        return dest
    return lib



def build_static(source: dict, target: Target, dest: Path, *, cc: str | None = None,
                 file_targets: dict | None = None) -> Path:
    """Compile the C files of ``source`` (file name -> C text / object bytes, as ``build_shared``
    takes) each to an object with the flags ``build_shared`` uses (its file's own, for a
    multi-ISA library), and archive them, with the object files given, into the static library
    ``dest`` (``$AR``, else ``ar``). Version scripts have no meaning in an archive: dropped (the
    archive holds one object, like the shared library one unit: the objects partially linked
    (``cc -r``), then every symbol but the entry points made local (``objcopy --localize-hidden``,
    and ``-G`` for each global of the version script): the thread pool's weak shared symbols and
    the variants' entry points resolve inside the archive, so two softgen archives link into one
    program without clashing, each with its own pool, as two shared libraries would."""
    tools = {}
    for tool, env_var in (("ar", "AR"), ("objcopy", "OBJCOPY")):
        argv = shlex.split(os.environ.get(env_var) or tool)
        if not argv or shutil.which(argv[0]) is None:
            raise BuildError(f"no {tool} for a static library: {argv[0] if argv else '$' + env_var} not found "
                             f"(install binutils or set {env_var})")
        tools[tool] = argv
    argv0, flags = compiler_for(target, cc), flags_for(target)
    ff = file_flags_for(file_targets)
    keep = []
    with tempfile.TemporaryDirectory(prefix="softgen-static-") as tmp:
        objs = []
        for fname, data in source.items():
            if fname.endswith(".map"):   # "{ global: a; b; local: *; };": the symbols kept global
                text = data if isinstance(data, str) else data.decode()
                keep += [s.strip() for s in text.split("global:", 1)[1].split("local:", 1)[0].split(";") if s.strip()]
                continue
            path = Path(tmp) / fname
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            if path.suffix == ".c":
                obj = path.with_name(path.name + ".o")
                fflags = [*flags, *ff.get(fname, ())]
                # the precompiled prelude of the shared library's build (the same compiler and flags)
                pre = _pch(argv0, fflags, prelude((file_targets or {}).get(fname, target), _GNU in str(data)))
                _compile([*argv0, *fflags, "-c", "-o", str(obj), str(path)], len(argv0), pre)
                path = obj
            objs.append(path)
        one = Path(tmp) / (dest.name.removeprefix("lib").removesuffix(".a") + ".o")
        _run([*argv0, "-r", "-nostdlib", "-o", str(one), *map(str, objs)], "C compiler (partial link)")
        _run([*tools["objcopy"], "--localize-hidden", *(f"-G{s}" for s in keep), str(one)], "objcopy")
        out = Path(tmp) / dest.name
        _run([*tools["ar"], "rcs", str(out), str(one)], "the archiver")
        shutil.copyfile(out, dest)
    return dest

def open_shared(source: str | dict, target: Target, *, emulate: bool = False, cc: str | None = None,
                symbols: tuple[str, ...] = (), file_targets: dict | None = None) -> ctypes.CDLL:
    """``build_shared`` and load the library, which must export ``symbols``; a cached library
    that does not load or lacks one is rebuilt once."""
    for rebuild in (False, True):
        lib = build_shared(source, target, emulate=emulate, cc=cc, rebuild=rebuild, file_targets=file_targets)
        try:
            handle = ctypes.CDLL(str(lib))
        except OSError as e:
            why = str(e)
            continue
        missing = [s for s in symbols if not hasattr(handle, s)]
        if not missing:
            _in_use.add(lib.name.split(".", 1)[0])
            return handle
        _ctypes.dlclose(handle._handle)  # else dlopen would return this library for the path again
        why = f"it does not export {', '.join(missing)}"
    raise BuildError(f"the library built for target {target.name} cannot be loaded ({lib}): {why}")


def build_executable(sources: dict[str, str], target: Target, cc: str | None = None,
                     file_targets: dict | None = None) -> Path:
    """A statically linked program for ``target`` (runs under a user-mode emulator)."""
    sources = {k: v for k, v in sources.items() if not k.endswith(".map")}
    return _cached_build(sources, compiler_for(target, cc), flags_for(target) + ["-static"], ".exe",
                         file_flags=file_flags_for(file_targets), target=target, file_targets=file_targets)


def assembly(source: str, target: Target, cc: str | None = None, mark_loops: bool = False) -> str:
    """The assembly the C compiler emits for ``source`` (what the shipped library contains);
    ``mark_loops`` brackets each main-loop body with ``softgen-mark`` comments, for analysis."""
    argv0 = compiler_for(target, cc)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.c"
        src.write_text(source)
        extra = ["-DSOFTGEN_MARK_LOOPS"] if mark_loops else []
        res = _run([*argv0, *flags_for(target), *extra, "-S", "-o", "-", str(src)], "C compiler")
    return res.stdout


def load_entry(handle: ctypes.CDLL, symbol: str, abi: KernelABI = KernelABI.row(), mt: bool = False):
    """The C entry point ``symbol`` of a loaded library, whose arguments are ``abi``'s (by default
    ``int symbol(x, y, rows, n, ldx, ldy)``, a row kernel's without per-row parameters); ``mt``:
    its extended entry ``<symbol>_mt`` (the same arguments, then ``int threads``)."""
    fn = getattr(handle, symbol + "_mt" if mt else symbol)
    fn.argtypes = abi.argtypes(mt)
    fn.restype = ctypes.c_int
    fn._softgen_handle = handle  # keep the library loaded as long as the function lives
    fn._softgen_ptr = ctypes.cast(fn, ctypes.c_void_p).value  # for softgen._fastcall
    return fn
