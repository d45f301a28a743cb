"""Running kernels this CPU cannot execute: SIMDe for x86 ISAs on an x86 host (the same source,
intrinsics implemented in portable C), a user-mode emulator (qemu) for other architectures.

qemu runs a generated static driver (``templates/driver.c.j2``) that reads a batch of cases from
a file, so one emulator start covers many calls: ``with entry.batch(): ...`` collects calls and
runs them all when the block ends.
"""
from __future__ import annotations

import contextlib
import ctypes
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from . import __version__
from .errors import TargetNotSupportedError
from .runtime import build_executable, build_shared, load_entry
from .targets import Target, host_arch


def find_emulator(t: Target) -> list[str] | None:
    """The command that runs ``t``'s programs on this host, or None."""
    for cmd in t.emulator:
        if shutil.which(cmd):
            return [cmd]
    return None


def emulation_available(t: Target) -> tuple[bool, str]:
    """(True, how) or (False, what to install)."""
    if t.arch == "x86_64" and host_arch() == "x86_64":
        try:
            import simde_py  # noqa: F401
            return True, "SIMDe"
        except ImportError:
            return False, "SIMDe headers: pip install simde-py"
    if find_emulator(t) is None:
        return False, f"a user-mode emulator ({' or '.join(t.emulator) or 'none known'}; " \
                      f"{t.extra.get('emulator_hint', 'install qemu-user')})"
    from .runtime import compiler_for
    try:
        compiler_for(t)
    except Exception as e:  # no cross compiler: the message says what to install
        return False, str(e)
    return True, find_emulator(t)[0]


def load_emulated(sources: dict, t: Target, name: str, backend: str = "c",
                  row_params: tuple[str, ...] = (), outputs: int = 1):
    """A callable ``fn(px, py, rows, n, ldx, ldy, *row_param_ptrs) -> int`` running the kernel
    emulated (``outputs=2``: ``fn(px, pindices, pweights, rows, n, ldx, ldo)``, a selected
    output). ``sources``: the kernel's compiler inputs (``Kernel.sources()``)."""
    ok, how = emulation_available(t)
    if ok and how == "SIMDe" and backend != "c":
        ok, how = False, "C source (SIMDe emulates intrinsics; the TVM backend emits machine code)"
    if not ok:
        raise TargetNotSupportedError(f"cannot emulate target {t.name} here: needs {how}")
    if how == "SIMDe":
        fn = load_entry(build_shared(sources, t, emulate=True), name, len(row_params), outputs)
        fn.how = "emulated (SIMDe)"
        return fn
    from .backends.c import _env
    driver = _env().get_template("driver.c.j2").render(name=name, version=__version__, target=t.name,
                                                        row_params=row_params, sparse=outputs == 2)
    exe = build_executable({**sources, "driver.c": driver}, t)
    return (QemuSelectedEntry if outputs == 2 else QemuEntry)(exe, find_emulator(t), name)


class QemuEntry:
    """Calls a kernel inside a static driver program under a user-mode emulator."""

    def __init__(self, exe: Path, emulator: list[str], name: str):
        self.exe, self.emulator, self.name = exe, emulator, name
        self.how = f"emulated ({emulator[0]})"
        self._pending: list[tuple] = []
        self._batching = False

    def __call__(self, px: int, py: int, rows: int, n: int, ldx: int, ldy: int, *row_params: int) -> int:
        nx = (rows - 1) * ldx + n
        inplace = px == py
        ny = 0 if inplace else (rows - 1) * ldy + n
        head = struct.pack("<8Q", rows, n, ldx, ldy, nx, ny, px % 64, py % 64)
        data = ctypes.string_at(px, 4 * nx) + (b"" if inplace else ctypes.string_at(py, 4 * ny))
        data += b"".join(ctypes.string_at(pp, 4 * rows) for pp in row_params)
        return self._submit(head + data, [(py, 4 * (ny or nx))])

    def _submit(self, case: bytes, outputs: list[tuple[int, int]]) -> int:
        """Queue one case; ``outputs``: (address, bytes) of each output span the driver returns."""
        self._pending.append((case, outputs))
        if self._batching:
            return 0
        return self.flush()[0]

    @contextlib.contextmanager
    def batch(self):
        """Collect calls; run them in one emulator process when the block exits."""
        self._batching = True
        try:
            yield self
        finally:
            self._batching = False
        rcs = self.flush()
        if any(rcs):
            raise RuntimeError(f"{self.name} returned error codes {sorted(set(rcs) - {0})} in a batch")

    def flush(self) -> list[int]:
        cases, self._pending = self._pending, []
        if not cases:
            return []
        with tempfile.TemporaryDirectory() as tmp:
            fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
            fin.write_bytes(b"".join(c[0] for c in cases))
            try:
                res = subprocess.run([*self.emulator, str(self.exe), str(fin), str(fout)],
                                     capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.SubprocessError) as e:
                raise TargetNotSupportedError(f"{self.emulator[0]} failed to run: {e}") from None
            if res.returncode != 0:
                raise RuntimeError(f"emulated {self.name} driver exited with {res.returncode}: "
                                   f"{res.stderr.strip()[-2000:]}")
            blob = fout.read_bytes()
        rcs, pos = [], 0
        for _, outputs in cases:
            (rc,) = struct.unpack_from("<q", blob, pos)
            pos += 8
            for ptr, nbytes in outputs:
                ctypes.memmove(ptr, blob[pos:pos + nbytes], nbytes)
                pos += nbytes
            rcs.append(rc)
        return rcs


class QemuSelectedEntry(QemuEntry):
    """The driver of a selected output: ``fn(px, pindices, pweights, rows, n, ldx, ldo)``."""

    def __call__(self, px: int, pi: int, pw: int, rows: int, n: int, ldx: int, ldo: int) -> int:
        nx = (rows - 1) * ldx + n
        head = struct.pack("<8Q", rows, n, ldx, ldo, nx, 0, px % 64, 0)
        return self._submit(head + ctypes.string_at(px, 4 * nx), [(pi, 8 * rows * ldo), (pw, 4 * rows * ldo)])
