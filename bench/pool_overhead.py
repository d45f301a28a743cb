#!/usr/bin/env python3
"""The thread pool's per-call overhead (issue 13, Threads): a 2x16 softmax split over 2 threads
minus the same call on 1 thread, interleaved medians; what targets/*.toml [cost]
parallel_overhead_cycles records (ns x the clock in GHz). Usage: python bench/pool_overhead.py"""
import timeit

import numpy as np

import softgen


def main() -> None:
    k = softgen.compile("softmax", algorithm="three-pass-reload")
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    y = np.empty_like(x)
    res: dict[int, list[float]] = {1: [], 2: []}
    for t in (1, 2):
        k(x, out=y, threads=t)
    for _ in range(15):   # interleaved: the machine's noise hits both alike
        for t in (1, 2):
            best = min(timeit.repeat(lambda: k(x, out=y, threads=t), number=2000, repeat=3))
            res[t].append(best / 2000 * 1e9)
    med = {t: sorted(v)[len(v) // 2] for t, v in res.items()}
    print(f"1 thread {med[1]:.0f} ns, 2 threads {med[2]:.0f} ns: overhead {med[2] - med[1]:.0f} ns per call")


if __name__ == "__main__":
    main()
