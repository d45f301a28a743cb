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
    and stores; non-temporal stores on request where the target has them), compiled and loaded by
    ``runtime.open_shared`` like every kernel."""

    def __init__(self, target: str | Target = "host", cc: str | None = None):
        self.target = get_target(target) if isinstance(target, str) else target
        if not self.target.runnable:
            raise UsageError(f"the copy kernel for target {self.target.name} cannot run on this CPU "
                             f"(missing {', '.join(self.target.missing_features())})")
        self.source = render.env().get_template("copy.c.j2").render(
            isa=render.isa_header(self.target), name=COPY_SYMBOL)
        self._handle = runtime.open_shared(self.source, self.target, cc=cc,
                                           symbols=(COPY_SYMBOL, COPY_SYMBOL + "_streams"))
        fn = getattr(self._handle, COPY_SYMBOL)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t]
        fn.restype = ctypes.c_int
        self._fn = fn
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

    def __call__(self, x: np.ndarray, y: np.ndarray, stream: bool = False) -> np.ndarray:
        self._check(x, y)
        rc = self._fn(x.ctypes.data, y.ctypes.data, x.size, int(bool(stream)), 1)
        if rc:
            raise SoftgenError(f"copy kernel returned {rc}")
        return y

    @staticmethod
    def reps(elements: int) -> int:
        """Copies per timed call: enough that one call moves >= 64 KiB (the Python call's cost
        would otherwise be timed as bandwidth at small sizes)."""
        return max(1, (1 << 14) // max(elements, 1))

    def variant(self, x: np.ndarray, y: np.ndarray, stream: bool = False) -> tuple:
        """A ``(statement, globals)`` timing variant of ``reps(x.size)`` copies of ``x`` into ``y``."""
        self._check(x, y)
        return ("f(px, py, n, s, r)", {"f": self._fn, "px": x.ctypes.data, "py": y.ctypes.data,
                                       "n": x.size, "s": int(bool(stream)), "r": self.reps(x.size)})
