"""Calling generated GEMMs (``softgen.backends.gemm``) on NumPy arrays: natively through ctypes,
or emulated (SIMDe for x86 ISAs, qemu user mode for neon through a generated static driver that
runs a batch of calls per emulator start). Used by the tests and ``bench/gemm.py``."""
from __future__ import annotations

import ctypes
import struct

import numpy as np

from ._version import __version__
from .backends.gemm import GemmCode, translation_unit
from .backends.tvm_gemm import TvmGemmCode, sources as tvm_sources
from .emulator import BatchedCalls, emulation_available, find_emulator, run_driver
from .errors import TargetNotSupportedError, UsageError
from .render import env
from .runtime import build_executable, open_shared

_CTYPES = {"float": ctypes.c_float, "double": ctypes.c_double, "int": ctypes.c_int,
           "size_t": ctypes.c_size_t, "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64}
_NPTYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "size_t": np.uint64,
            "int32_t": np.int32, "int64_t": np.int64}
_PACK = {"float": "<f", "double": "<d", "int": "<i", "size_t": "<Q", "int32_t": "<i", "int64_t": "<q"}


def _mat(x: np.ndarray, rows: int, cols: int, what: str) -> tuple[int, int, int]:
    """(address, leading dimension, span in floats) of a 2-d float32 array with a contiguous last
    axis (a view into a wider buffer gives ld > cols)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape != (rows, cols):
        raise UsageError(f"{what} must be a float32 array of shape {(rows, cols)}")
    if rows == 0 or cols == 0:
        return x.ctypes.data, max(cols, 1), 0
    if cols > 1 and x.strides[1] != 4 or rows > 1 and (x.strides[0] % 4 or x.strides[0] < 4 * cols):
        raise UsageError(f"{what} needs a contiguous last axis and a row stride >= its row")
    ld = x.strides[0] // 4 if rows > 1 else cols
    return x.ctypes.data, ld, (rows - 1) * ld + cols


class GemmLibrary(BatchedCalls):
    """The gemms of one target built into one library. ``lib(g, a, b, c, alpha, beta, *epi)``
    runs gemm ``g`` (a GemmCode of the list, or its name) and writes ``c`` in place; ``emulate``:
    None = natively when this CPU runs the target, else emulated."""

    def __init__(self, codes: list, emulate: bool | None = None):
        super().__init__()
        self.name = "gemm library"
        self.codes = {g.name: g for g in codes}
        self.index = {g.name: i for i, g in enumerate(codes)}
        self.target = codes[0].target
        tvm = [isinstance(g, TvmGemmCode) for g in codes]
        if any(tvm) and not all(tvm):
            raise UsageError("one GemmLibrary holds C gemms or TVM gemms, not both")
        self.sources = tvm_sources(codes) if all(tvm) else {"gemm.c": translation_unit(codes)}
        symbols = tuple(f"{g.name}_entry" for g in codes)
        if emulate is None:
            emulate = not self.target.runnable
        self.how = "native"
        self._qemu = None
        if not emulate:
            if not self.target.runnable:
                raise TargetNotSupportedError(f"this CPU cannot run target {self.target.name}")
            self._lib = open_shared(self.sources, self.target, symbols=symbols)
            return
        ok, how = emulation_available(self.target)
        if ok and how == "SIMDe" and all(tvm):
            ok, how = False, "C source (SIMDe emulates intrinsics; TVM emits machine code)"
        if not ok:
            raise TargetNotSupportedError(f"cannot emulate target {self.target.name} here: needs {how}")
        self.how = f"emulated ({how})"
        if how == "SIMDe":
            self._lib = open_shared(self.sources, self.target, emulate=True, symbols=symbols)
            return
        driver = env().get_template("gemm_driver.c.j2").render(
            version=__version__, t=self.target,
            codes=[{"name": g.name, "params": ", ".join(g.params), "epi": g.epilogue is not None,
                    "epi_params": g.epilogue.param_specs() if g.epilogue else []} for g in codes])
        self._qemu = (build_executable({**self.sources, "driver.c": driver}, self.target),
                      find_emulator(self.target))

    def _fn(self, g: GemmCode):
        fn = getattr(self._lib, f"{g.name}_entry")
        if fn.argtypes is None:
            specs = g.epilogue.param_specs() if g.epilogue else []
            S, P, F = ctypes.c_size_t, ctypes.c_void_p, ctypes.c_float
            head = [S, S, S] + ([F] if g.epilogue is None else []) + [P, S, P, S] + \
                ([F] if g.epilogue is None else []) + [P, S]
            fn.argtypes = head + [P if p["pointer"] else _CTYPES[p["ctype"]] for p in specs]
            fn.restype = ctypes.c_int
        return fn

    def __call__(self, g, a: np.ndarray, b: np.ndarray, c: np.ndarray, alpha: float = 1.0,
                 beta: float = 0.0, *epi) -> int:
        g = self.codes[g if isinstance(g, str) else g.name]
        m, n = c.shape
        k = a.shape[0 if g.layout == "tn" else 1]
        pa, lda, na = _mat(a, *((k, m) if g.layout == "tn" else (m, k)), "a")
        pb, ldb, nb = _mat(b, *((n, k) if g.layout == "nt" else (k, n)), "b")
        pc, ldc, nc = _mat(c, m, n, "c")
        specs = g.epilogue.param_specs() if g.epilogue else []
        if len(epi) != len(specs):
            raise UsageError(f"{g.name} takes {len(specs)} epilogue argument(s), got {len(epi)}")
        arrs = []
        for p, v in zip(specs, epi):
            if p["pointer"]:
                v = np.ascontiguousarray(v, dtype=_NPTYPES[p["ctype"]])
            arrs.append(v)
        if self._qemu is None:
            ab_ = ([alpha], [beta]) if g.epilogue is None else ([], [])
            args = [m, n, k, *ab_[0], pa, lda, pb, ldb, *ab_[1], pc, ldc]
            args += [v.ctypes.data if p["pointer"] else v for p, v in zip(specs, arrs)]
            return self._fn(g)(*args)
        blob = struct.pack("<10Q2f", self.index[g.name], m, n, k, lda, ldb, ldc, na, nb, nc, alpha, beta)
        blob += ctypes.string_at(pa, 4 * na) + ctypes.string_at(pb, 4 * nb) + ctypes.string_at(pc, 4 * nc)
        for p, v in zip(specs, arrs):
            if p["pointer"]:
                blob += struct.pack("<Q", v.size) + v.tobytes()
            else:
                blob += struct.pack(_PACK[p["ctype"]], v).ljust(8, b"\0")
        return self._queue((blob, [(pc, 4 * nc)]))

    def _run(self, payload: bytes) -> bytes:
        exe, emu = self._qemu
        return run_driver(emu, exe, payload, "gemm")
