"""A/B timing of two builds of the same kernels: exported libraries from two softgen versions,
interleaved in one process (medians of interleaved rounds; ratios, not absolute times).

    # export the same kernels from two checkouts (run from each checkout's directory)
    softgen build --op softmax --algorithm two-pass --target avx2 --name softmax_2p_avx2 -o /tmp/ab/base/softmax_2p_avx2
    python bench/ab.py /tmp/ab/base /tmp/ab/head [--sizes 256K 1M 64M]

Each directory holds ``<name>/lib<name>.so`` for row kernels with the row ABI
``int name(const float *x, float *y, size_t rows, size_t n, size_t ldx, size_t ldy)``.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import numpy as np

SIZES = {"256K": 1 << 18, "1M": 1 << 20, "4M": 1 << 22, "16M": 1 << 24, "64M": 1 << 26}


def load(d: str, name: str):
    f = getattr(ctypes.CDLL(os.path.join(d, name, f"lib{name}.so")), name)
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 4
    f.restype = ctypes.c_int
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("head")
    ap.add_argument("--sizes", nargs="+", default=["256K", "1M", "64M"], choices=list(SIZES))
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'size':5s} {'kernel':36s} {'base ns/el':>10s} {'head ns/el':>10s} {'head/base':>9s}")
    for label in a.sizes:
        n = SIZES[label]
        x = (rng.standard_normal(n) * 4).astype(np.float32)
        y = np.empty_like(x)
        px, py = x.ctypes.data, y.ctypes.data
        reps = max(1, int(2e7 // n))
        for name in sorted(os.listdir(a.head)):
            pair = load(a.base, name), load(a.head, name)
            times: tuple[list, list] = ([], [])
            for f in pair:   # warm-up, and both must succeed
                assert f(px, py, 1, n, n, n) == 0
            for _ in range(15 if n < 1 << 24 else 7):
                for f, acc in zip(pair, times):
                    t = time.perf_counter()
                    for _ in range(reps):
                        f(px, py, 1, n, n, n)
                    acc.append((time.perf_counter() - t) / reps / n * 1e9)
            mb, mh = (statistics.median(t) for t in times)
            print(f"{label:5s} {name:36s} {mb:10.3f} {mh:10.3f} {mh / mb:9.3f}", flush=True)


if __name__ == "__main__":
    main()
