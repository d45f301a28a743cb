#!/usr/bin/env python3
"""2 threads vs 1 (issue 13, Threads) on batches and a small row: softgen's auto kernel at
threads=1, threads=2 and auto (threads=None), interleaved rounds (each round times every
variant once, in rotated order), medians. Usage: python bench/threads.py [--rounds 15]"""
import argparse
import statistics
import timeit

import numpy as np

import softgen

SHAPES = [(4096, 512), (8192, 128), (64, 32768), (1, 1024)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--op", default="softmax")
    args = ap.parse_args()
    k = softgen.compile(args.op)
    rng = np.random.default_rng(0)
    print(f"{k.name}: {k.explain_threads()}")
    print(f"{'shape':>11} {'1 thread us':>12} {'2 threads us':>13} {'auto us':>9} {'1t/2t':>7} {'1t/auto':>8}")
    for rows, n in SHAPES:
        x = rng.standard_normal((rows, n)).astype(np.float32)
        y = np.empty_like(x)
        calls = {"1": lambda: k(x, out=y, threads=1), "2": lambda: k(x, out=y, threads=2),
                 "auto": lambda: k(x, out=y)}
        number = max(1, int(2e6 // (rows * n)))
        for f in calls.values():
            f()
        times = {c: [] for c in calls}
        order = list(calls)
        for r in range(args.rounds):
            for c in order[r % 3:] + order[:r % 3]:
                times[c].append(min(timeit.repeat(calls[c], number=number, repeat=3)) / number * 1e6)
        med = {c: statistics.median(v) for c, v in times.items()}
        print(f"{rows:>5}x{n:<5} {med['1']:>12.1f} {med['2']:>13.1f} {med['auto']:>9.1f} "
              f"{med['1'] / med['2']:>6.2f}x {med['1'] / med['auto']:>7.2f}x")


if __name__ == "__main__":
    main()
