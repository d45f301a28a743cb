"""Running kernels this CPU cannot execute: SIMDe for x86 ISAs on an x86 host (the same source,
intrinsics implemented in portable C), a user-mode emulator (qemu) for other architectures.

qemu runs a generated static driver (``templates/driver.c.j2``, written from the kernel's
``KernelABI``: one driver for every kind of entry point) that reads a batch of cases from
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
from .abi import KernelABI
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


def load_emulated(sources: dict, t: Target, name: str, simde: bool = True, abi: KernelABI = KernelABI.row(),
                  file_targets: dict | None = None):
    """A callable ``fn(*args) -> int`` running the kernel emulated, taking the arguments of its
    entry point ``abi`` (pointers as addresses; by default ``fn(px, py, rows, n, ldx, ldy)``).
    ``sources``: the kernel's compiler inputs (``Kernel.sources()``); ``simde``: whether they are
    C that SIMDe can emulate (its backend's ``simde_emulable``; not machine code, e.g. TVM's);
    ``file_targets``: per-file targets of a multi-ISA library (``Kernel.file_targets()``)."""
    ok, how = emulation_available(t)
    if ok and how == "SIMDe" and not simde:
        ok, how = False, "C source (SIMDe emulates intrinsics; this kernel's backend emits machine code)"
    if not ok:
        raise TargetNotSupportedError(f"cannot emulate target {t.name} here: needs {how}")
    if how == "SIMDe":
        fn = load_entry(open_shared(sources, t, emulate=True, symbols=(name,), file_targets=file_targets), name, abi)
        fn.how = "emulated (SIMDe)"
        return fn
    driver = env().get_template("driver.c.j2").render(name=name, version=__version__, target=t.name, abi=abi)
    exe = build_executable({**sources, "driver.c": driver}, t, file_targets=file_targets)
    return QemuEntry(exe, find_emulator(t), name, abi)


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
    """Calls a kernel inside its static driver (templates/driver.c.j2) under a user-mode emulator,
    taking the arguments of its entry point ``abi`` (pointers as addresses); what each pointer
    spans and which are written come from ``abi.buffers``, for every kind of entry point."""

    def __init__(self, exe: Path, emulator: list[str], name: str, abi: KernelABI):
        super().__init__()
        self.exe, self.emulator, self.name, self.abi = exe, emulator, name, abi
        self.how = f"emulated ({emulator[0]})"

    def __call__(self, *args: int, threads: int = 0) -> int:
        """A call of the entry point with ``args``; ``threads`` (0 auto, N at most N): the driver
        calls ``<name>_mt`` with it (qemu-user runs the library's pthreads)."""
        head, data, outs, own = [threads % 2 ** 64], [], [], {}
        for k, (a, buf) in enumerate(zip(args, self.abi.buffers(args))):
            if buf is None:            # a size
                head += [a, 0, 0]
                continue
            nbytes, written = buf
            if not a:                  # NULL
                head += [0, 0, 2 ** 64 - 1]
                continue
            if a in own and nbytes <= own[a][1]:   # within an earlier argument's buffer (in place)
                head += [nbytes, 0, own[a][0] + 1]
            else:
                own[a] = (k, nbytes)
                head += [nbytes, a % 64, 0]
                data.append(ctypes.string_at(a, nbytes) if nbytes else b"")
            if written:
                outs.append((a, nbytes))
        return self._queue((struct.pack(f"<{len(head)}Q", *head) + b"".join(data), outs))

    def _run(self, payload: bytes) -> bytes:
        return run_driver(self.emulator, self.exe, payload, self.name)
