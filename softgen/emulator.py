"""Running kernels this CPU cannot execute: SIMDe for x86 ISAs on an x86 host (the same source,
intrinsics implemented in portable C), a user-mode emulator (qemu) for other architectures.

qemu runs a generated static driver (``templates/driver.c.j2``) that reads a batch of cases from
a file, so one emulator start covers many calls: ``with entry.batch(): ...`` collects calls and
runs them all when the block ends.
"""
from __future__ import annotations

import abc
import contextlib
import ctypes
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from ._version import __version__
from .abi import GENERAL, SELECTED, UNARY, KernelABI
from .errors import TargetNotSupportedError
from .render import env
from .runtime import build_executable, compiler_for, load_entry, open_shared
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
    try:
        compiler_for(t)
    except Exception as e:  # no cross compiler: the message says what to install
        return False, str(e)
    return True, find_emulator(t)[0]


def load_emulated(sources: dict, t: Target, name: str, simde: bool = True, abi: KernelABI = KernelABI.row()):
    """A callable ``fn(*args) -> int`` running the kernel emulated, taking the arguments of its
    entry point ``abi`` (pointers as addresses; by default ``fn(px, py, rows, n, ldx, ldy)``).
    ``sources``: the kernel's compiler inputs (``Kernel.sources()``); ``simde``: whether they are
    C that SIMDe can emulate (its backend's ``simde_emulable``; not machine code, e.g. TVM's)."""
    ok, how = emulation_available(t)
    if ok and how == "SIMDe" and not simde:
        ok, how = False, "C source (SIMDe emulates intrinsics; this kernel's backend emits machine code)"
    if not ok:
        raise TargetNotSupportedError(f"cannot emulate target {t.name} here: needs {how}")
    if how == "SIMDe":
        fn = load_entry(open_shared(sources, t, emulate=True, symbols=(name,)), name, abi)
        fn.how = "emulated (SIMDe)"
        return fn
    if abi.kind == GENERAL:
        mats = [nm for nm, _ in abi.matrices]
        args = [f"p[{k}]" for k in range(len(mats))] + ["h[0]"] + \
            [f"h[{1 + k}]" for k in range(len(abi.dims))] + [f"mat[{3 * k}]" for k in range(len(mats))]
        driver = env().get_template("matrix_driver.c.j2").render(
            name=name, version=__version__, target=t.name, signature=abi.signature(name),
            dims=abi.dims, matrices=mats, outputs=[nm for nm, _ in abi.outputs], call_args=", ".join(args))
        exe = build_executable({**sources, "driver.c": driver}, t)
        return QemuMatrixEntry(exe, find_emulator(t), name, abi)
    driver = env().get_template("driver.c.j2").render(name=name, version=__version__, target=t.name,
                                                        row_params=abi.row_params, matrix=abi.kind == UNARY,
                                                        sparse=abi.kind == SELECTED)
    exe = build_executable({**sources, "driver.c": driver}, t)
    if abi.kind == SELECTED:
        return QemuSelectedEntry(exe, find_emulator(t), name)
    return QemuEntry(exe, find_emulator(t), name, abi.kind == UNARY)


def run_driver(emulator: list[str], exe: Path, payload: bytes, what: str) -> bytes:
    """Run a generated static driver under ``emulator`` on one batch file; its output file."""
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        fin.write_bytes(payload)
        try:
            res = subprocess.run([*emulator, str(exe), str(fin), str(fout)],
                                 capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.SubprocessError) as e:
            raise TargetNotSupportedError(f"{emulator[0]} failed to run: {e}") from None
        if res.returncode != 0:
            raise RuntimeError(f"emulated {what} driver exited with {res.returncode}: "
                               f"{res.stderr.strip()[-2000:]}")
        return fout.read_bytes()


class BatchedCalls(abc.ABC):
    """Calls queued for an emulator process: ``with obj.batch(): ...`` runs them all when the
    block exits; outside a batch every call runs at once. A case is ``(input bytes, outputs)``,
    ``outputs`` the (address, byte count) the driver's result holds after the case's int64
    return code, in order. Subclasses implement ``_run(payload) -> result bytes`` (one driver
    run over the concatenated cases) and set ``name``."""
    name = "kernel"

    def __init__(self):
        self._pending: list[tuple] = []
        self._batching = False

    def _queue(self, case: tuple) -> int:
        self._pending.append(case)
        return 0 if self._batching else self.flush()[0]

    @abc.abstractmethod
    def _run(self, payload: bytes) -> bytes:
        """Run the driver on the concatenated cases; its result file."""

    def flush(self) -> list[int]:
        """Run the pending cases, copy their outputs back; their return codes."""
        cases, self._pending = self._pending, []
        if not cases:
            return []
        blob = self._run(b"".join(c[0] for c in cases))
        rcs, pos = [], 0
        for _, outs in cases:
            (rc,) = struct.unpack_from("<q", blob, pos)
            pos += 8
            for p, nbytes in outs:
                ctypes.memmove(p, blob[pos:pos + nbytes], nbytes)
                pos += nbytes
            rcs.append(rc)
        return rcs

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



class QemuEntry(BatchedCalls):
    """Calls a kernel inside a static driver program under a user-mode emulator."""

    def __init__(self, exe: Path, emulator: list[str], name: str, matrix: bool = False):
        super().__init__()
        self.exe, self.emulator, self.name, self.matrix = exe, emulator, name, matrix
        self.how = f"emulated ({emulator[0]})"

    def __call__(self, px: int, py: int, rows: int, n: int, ldx: int, ldy: int, *extra: int) -> int:
        m, row_params = (extra[0], ()) if self.matrix else (0, extra)
        nx = (rows - 1) * ldx + n
        inplace = px == py
        ny = 0 if inplace else (rows - 1) * ldy + n
        head = struct.pack("<9Q", rows, n, ldx, ldy, nx, ny, px % 64, py % 64, m)
        data = ctypes.string_at(px, 4 * nx) + (b"" if inplace else ctypes.string_at(py, 4 * ny))
        data += b"".join(ctypes.string_at(pp, 4 * rows) for pp in row_params)
        return self._queue((head + data, [(py, 4 * (ny or nx))]))

    def _run(self, payload: bytes) -> bytes:
        return run_driver(self.emulator, self.exe, payload, self.name)


class QemuSelectedEntry(QemuEntry):
    """The driver of a selected output: ``fn(px, pindices, pweights, rows, n, ldx, ldo)``."""

    def __call__(self, px: int, pi: int, pw: int, rows: int, n: int, ldx: int, ldo: int) -> int:
        nx = (rows - 1) * ldx + n
        head = struct.pack("<9Q", rows, n, ldx, ldo, nx, 0, px % 64, 0, 0)
        return self._queue((head + ctypes.string_at(px, 4 * nx), [(pi, 8 * rows * ldo), (pw, 4 * rows * ldo)]))


class QemuMatrixEntry(QemuEntry):
    """Calls a matrix kernel with the general ABI (``fn(*pointers, batch, *dims, *lds)``) inside
    its static driver (templates/matrix_driver.c.j2) under a user-mode emulator."""

    def __init__(self, exe: Path, emulator: list[str], name: str, abi):
        super().__init__(exe, emulator, name, matrix=True)
        self.abi = abi

    def __call__(self, *args: int) -> int:
        abi = self.abi
        nmat, ndim = len(abi.matrices), len(abi.dims)
        ptrs, batch = args[:nmat], args[nmat]
        dims = dict(zip(abi.dims, args[nmat + 1:nmat + 1 + ndim]))
        lds = args[nmat + 1 + ndim:]
        head, data, outs = [batch, *dims.values()], b"", []
        for k, ((_, (r, c)), p, ld) in enumerate(zip(abi.matrices, ptrs, lds)):
            rows = batch * dims[r]
            span = (rows - 1) * ld + dims[c] if rows and dims[c] else 0
            head += [ld, span, p % 64]
            data += ctypes.string_at(p, 4 * span) if span else b""
            if k >= len(abi.inputs):
                outs.append((p, 4 * span))
        blob = struct.pack(f"<{len(head)}Q", *head) + data
        return self._queue((blob, outs))
