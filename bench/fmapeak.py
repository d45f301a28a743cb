"""The machine's FMA peak, per core: GFLOP/s of a hand-written loop of independent vector FMAs
(avx512: 16 lanes, avx2: 8 lanes; 12 accumulators, enough to cover 2 FMA ports x 4-5 cycles
latency), compiled with the system C compiler (cc) and called through ctypes.

    python bench/fmapeak.py          # prints GFLOP/s per ISA; peak(isa) from Python

bench/attention.py reports its GFLOP/s as a fraction of it. The loop is the upper bound of any
float32 kernel on one core (2 flops per lane per FMA); it says nothing of memory.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import time

SOURCE = r"""
#include <immintrin.h>
#include <stddef.h>
#define BODY(V, FMA, SET1, ADD, STORE, L)                                                         \
    V a0 = SET1(1.0f), a1 = SET1(1.1f), a2 = SET1(1.2f), a3 = SET1(1.3f), a4 = SET1(1.4f),        \
      a5 = SET1(1.5f), a6 = SET1(1.6f), a7 = SET1(1.7f), a8 = SET1(1.8f), a9 = SET1(1.9f),        \
      a10 = SET1(2.0f), a11 = SET1(2.1f);                                                         \
    const V x = SET1(0.999999f), y = SET1(1e-7f);                                                 \
    for (size_t i = 0; i < iters; i++) {                                                          \
        a0 = FMA(a0, x, y); a1 = FMA(a1, x, y); a2 = FMA(a2, x, y); a3 = FMA(a3, x, y);           \
        a4 = FMA(a4, x, y); a5 = FMA(a5, x, y); a6 = FMA(a6, x, y); a7 = FMA(a7, x, y);           \
        a8 = FMA(a8, x, y); a9 = FMA(a9, x, y); a10 = FMA(a10, x, y); a11 = FMA(a11, x, y);       \
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));       \
    }                                                                                             \
    V s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));                      \
    s = ADD(s, ADD(ADD(a8, a9), ADD(a10, a11)));                                                  \
    float o[L]; STORE(o, s);                                                                      \
    return o[0];

__attribute__((target("avx512f"))) float fma_avx512(size_t iters)
{ BODY(__m512, _mm512_fmadd_ps, _mm512_set1_ps, _mm512_add_ps, _mm512_storeu_ps, 16) }

__attribute__((target("avx2,fma"))) float fma_avx2(size_t iters)
{ BODY(__m256, _mm256_fmadd_ps, _mm256_set1_ps, _mm256_add_ps, _mm256_storeu_ps, 8) }
"""
LANES = {"avx512": 16, "avx2": 8}
_LIB = None


def _lib():
    global _LIB
    if _LIB is None:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("no C compiler (cc) to build the FMA loop")
        d = tempfile.mkdtemp(prefix="fmapeak-")
        src, so = os.path.join(d, "fma.c"), os.path.join(d, "libfma.so")
        with open(src, "w") as f:
            f.write(SOURCE)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", so, src], check=True)
        _LIB = ctypes.CDLL(so)
        for isa in LANES:
            fn = getattr(_LIB, f"fma_{isa}")
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_float
    return _LIB


def supported(isa: str) -> bool:
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {"avx512": " avx512f", "avx2": " fma"}[isa] in flags and (isa != "avx2" or " avx2" in flags)


def peak(isa: str, seconds: float = 0.3) -> float:
    """Best-of GFLOP/s of the FMA loop on this core (one thread): 12 FMAs x lanes x 2 flops per
    iteration."""
    fn = getattr(_lib(), f"fma_{isa}")
    iters, best = 1 << 20, 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn(iters)
        dt = time.perf_counter() - t0
        best = max(best, 12 * LANES[isa] * 2 * iters / dt / 1e9)
    return best


if __name__ == "__main__":
    for isa in LANES:
        print(f"{isa:7s} " + (f"{peak(isa):8.1f} GFLOP/s per core" if supported(isa) else "not on this CPU"))
