"""The generated streaming-copy kernel (``templates/copy.c.j2``): the machine's copy bandwidth,
the bound each kernel's traffic is reported against."""
from __future__ import annotations

import ctypes

import numpy as np

from .. import render, runtime
from ..errors import SoftgenError, UsageError
from ..targets import Target, get_target

# -- the streaming-copy kernel -----------------------------------------------------------------------

COPY_SYMBOL = "softgen_bench_copy"
COPY_BYTES = 8          # 1R + 1W per element (f32, write-allocate not counted)


class CopyKernel:
    """``y[:] = x`` through a generated kernel (``templates/copy.c.j2``: the target's vector loads
    and stores; non-temporal stores on request where the target has them; ``threads`` > 1: split
    across the thread pool the kernels use, the bound of a kernel on that many threads), compiled
    and loaded by ``runtime.open_shared`` like every kernel."""

    def __init__(self, target: str | Target = "host", cc: str | None = None):
        self.target = get_target(target) if isinstance(target, str) else target
        if not self.target.runnable:
            raise UsageError(f"the copy kernel for target {self.target.name} cannot run on this CPU "
                             f"(missing {', '.join(self.target.missing_features())})")
        self.source = render.env().get_template("copy.c.j2").render(
            isa=render.isa_header(self.target), name=COPY_SYMBOL)
        self._handle = runtime.open_shared(self.source, self.target, cc=cc,
                                           symbols=(COPY_SYMBOL, COPY_SYMBOL + "_streams", COPY_SYMBOL + "_mt"))
        fn = getattr(self._handle, COPY_SYMBOL)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t]
        fn.restype = ctypes.c_int
        self._fn = fn
        mt = getattr(self._handle, COPY_SYMBOL + "_mt")
        mt.argtypes = fn.argtypes + [ctypes.c_int]
        mt.restype = ctypes.c_int
        self._mt = mt
        self.streams = bool(getattr(self._handle, COPY_SYMBOL + "_streams")())

    @staticmethod
    def _check(x: np.ndarray, y: np.ndarray) -> None:
        for what, a in (("x", x), ("y", y)):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
                raise UsageError(f"copy: {what} must be a C-contiguous float32 array")
        if not y.flags.writeable:
            raise UsageError("copy: y is read-only")
        if x.size != y.size:
            raise UsageError(f"copy: x has {x.size} elements, y {y.size}")

    @staticmethod
    def _threads(threads: int) -> int:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UsageError(f"copy: threads must be a positive integer, got {threads!r}")
        return threads

    def __call__(self, x: np.ndarray, y: np.ndarray, stream: bool = False, threads: int = 1) -> np.ndarray:
        self._check(x, y)
        args = (x.ctypes.data, y.ctypes.data, x.size, int(bool(stream)), 1)
        rc = self._fn(*args) if self._threads(threads) == 1 else self._mt(*args, threads)
        if rc:
            raise SoftgenError(f"copy kernel returned {rc}")
        return y

    @staticmethod
    def reps(elements: int) -> int:
        """Copies per timed call: enough that one call moves >= 64 KiB (the Python call's cost
        would otherwise be timed as bandwidth at small sizes)."""
        return max(1, (1 << 14) // max(elements, 1))

    def variant(self, x: np.ndarray, y: np.ndarray, stream: bool = False, threads: int = 1) -> tuple:
        """A ``(statement, globals)`` timing variant of ``reps(x.size)`` copies of ``x`` into ``y``
        (on ``threads`` threads of the pool)."""
        self._check(x, y)
        if self._threads(threads) > 1:
            return ("f(px, py, n, s, r, t)", {"f": self._mt, "px": x.ctypes.data, "py": y.ctypes.data, "n": x.size,
                                              "s": int(bool(stream)), "r": self.reps(x.size), "t": threads})
        return ("f(px, py, n, s, r)", {"f": self._fn, "px": x.ctypes.data, "py": y.ctypes.data,
                                       "n": x.size, "s": int(bool(stream)), "r": self.reps(x.size)})
