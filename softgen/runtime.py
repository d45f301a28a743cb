"""Building and loading generated C: the system C compiler, a content-hash cache, ctypes.

Built objects are cached under ``$SOFTGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/softgen``, else
``~/.cache/softgen``, keyed by a hash of the source, the compiler's identity and the flags, and
written atomically (several processes may build the same kernel at once).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import __version__
from .errors import BuildError
from .targets import Target, host_arch

BASE_CFLAGS = ("-O2", "-std=c11", "-fPIC", "-fvisibility=hidden", "-ffp-contract=off",
               "-fno-math-errno", "-Wall")


def cache_dir() -> Path:
    root = os.environ.get("SOFTGEN_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "softgen")
    path = Path(root) / f"v{__version__}"
    path.mkdir(parents=True, exist_ok=True)
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


def _cached_build(sources: dict[str, str], argv0: list[str], flags: list[str], suffix: str,
                  libs: tuple[str, ...] = ("-lm",)) -> Path:
    """Compile ``sources`` (file name -> text) with one compiler command; cached by content."""
    blobs = [v.encode() if isinstance(v, str) else v for v in sources.values()]
    key = hashlib.sha256(b"\0".join([*(k.encode() for k in sources), *blobs,
                                     *(a.encode() for a in (_compiler_identity(tuple(argv0)),
                                                             *argv0, *flags, *libs))])).hexdigest()[:32]
    product = cache_dir() / f"{key}{suffix}"
    if not product.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            paths, link = [], []
            for fname, data in sources.items():  # C text, bytes (an object file), a version script
                path = Path(tmp) / fname
                path.write_bytes(data.encode() if isinstance(data, str) else data)
                if fname.endswith(".map"):
                    link.append(f"-Wl,--version-script={path}")
                else:
                    paths.append(path)
            out = Path(tmp) / f"out{suffix}"
            _run([*argv0, *flags, "-o", str(out), *map(str, paths), *link, *libs], "C compiler")
            os.replace(out, product)
            shutil.copyfile(paths[0], product.with_suffix(".c"))
    return product


def build_shared(source: str | dict, target: Target, *, emulate: bool = False, cc: str | None = None,
                 dest: Path | None = None) -> Path:
    """Compile ``source`` (C text, or a dict of file name -> C text / object bytes) to a shared
    library (cached); copy it to ``dest`` if given."""
    sources = {"kernel.c": source} if isinstance(source, str) else source
    lib = _cached_build(sources, compiler_for(target, cc), flags_for(target, emulate) + ["-shared"], ".so")
    if dest is not None:
        shutil.copyfile(lib, dest)
        return dest
    return lib


def build_executable(sources: dict[str, str], target: Target, cc: str | None = None) -> Path:
    """A statically linked program for ``target`` (runs under a user-mode emulator)."""
    sources = {k: v for k, v in sources.items() if not k.endswith(".map")}
    return _cached_build(sources, compiler_for(target, cc), flags_for(target) + ["-static"], ".exe")


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


def load_entry(lib: Path, symbol: str, row_params: int = 0, outputs: int = 1, matrix: bool = False,
               abi=None):
    """The C entry point ``int symbol(x, y, rows, n, ldx, ldy, *row_params)`` of a built library;
    ``outputs=2``: a selected output's ``int symbol(x, indices, weights, rows, n, ldx, ldo)``;
    a matrix kernel's takes ``size_t m`` (rows per matrix) after ``ldy`` instead, one with the
    general matrix ABI (``abi``, a ``matrix.MatrixABI``) its own arguments."""
    handle = ctypes.CDLL(str(lib))
    fn = getattr(handle, symbol)
    if abi is not None and abi.style == "general":
        fn.argtypes = [ctypes.c_void_p if t.endswith("*") else ctypes.c_size_t for t, _ in abi.params()]
    else:
        extra = [ctypes.c_size_t] if matrix else [ctypes.c_void_p] * row_params
        fn.argtypes = [ctypes.c_void_p] * (1 + outputs) + [ctypes.c_size_t] * 4 + extra
    fn.restype = ctypes.c_int
    fn._softgen_handle = handle  # keep the library loaded as long as the function lives
    fn._softgen_ptr = ctypes.cast(fn, ctypes.c_void_p).value  # for softgen._fastcall
    return fn
