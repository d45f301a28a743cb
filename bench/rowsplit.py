"""The split form of a row (schedule split/chunk) against the unsplit row function, one thread:
the same kernel compiled with split=1 (every row split) and split=0 (never), timed interleaved
(softgen.benchmark.time_interleaved: medians of alternating rounds, and the ratio of the
fastest rounds, which other processes on a shared machine disturb least; read the ratios, not
the absolute times, there).

    python bench/rowsplit.py [--target avx2] [--op softmax] [--sizes 1M 16M] [--budget 2]
"""
from __future__ import annotations

import argparse

import numpy as np

from softgen import compile as compile_kernel
from softgen.benchmark import parse_count, time_interleaved
from softgen.ops import build_program
from softgen.passes import applicable_algorithms
from softgen.targets import host_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=None, help="default: the host's best")
    ap.add_argument("--op", default="softmax")
    ap.add_argument("--algorithms", nargs="*", default=None, help="default: every one that applies")
    ap.add_argument("--sizes", nargs="+", default=["1M", "16M"])
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per size and algorithm")
    a = ap.parse_args()
    target = a.target or host_target()
    algs = a.algorithms or applicable_algorithms(build_program(a.op))
    rng = np.random.default_rng(0)
    print(f"{a.op} on {target}, one thread; split = every row in chunks, unsplit = split=0")
    print(f"{'n':>5s} {'algorithm':22s} {'unsplit ns/el':>13s} {'split ns/el':>11s} {'split/unsplit':>13s} "
          f"{'(min/min)':>9s} {'noise':>6s}")
    for label in a.sizes:
        n = parse_count(label)
        x = (rng.standard_normal((1, n)) * 4).astype(np.float32)
        y = np.empty_like(x)
        for alg in algs:
            ks = {s: compile_kernel(a.op, algorithm=alg, target=target, schedule={"split": s}) for s in (0, 1)}
            t = time_interleaved({s: (lambda k=k: k(x, out=y)) for s, k in ks.items()},
                                 budget=a.budget, min_rounds=9, max_rounds=61)
            noise = max(t[0].spread, t[1].spread)
            print(f"{label:>5s} {alg:22s} {t[0].median / n * 1e9:13.3f} {t[1].median / n * 1e9:11.3f} "
                  f"{t[1].median / t[0].median:13.3f} {t[1].min / t[0].min:9.3f} {100 * noise:5.1f}%")


if __name__ == "__main__":
    main()
