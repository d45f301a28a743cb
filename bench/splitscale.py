#!/usr/bin/env python3
"""2 threads vs 1 on single long rows (issue 13, Threads: the split form). Per size, the kernel
of the untuned auto table's entry for that n (its algorithm and schedule, e.g. two-pass with
non-temporal stores beyond the LLC) is timed at threads=1 and threads=2, and at threads=2 with
the split form's previous scheduling (SG_POOL_NO_TEAM: one sg_parallel region per sweep instead of
one team region per row), in interleaved rounds (each round times every variant once, in rotated
order); medians (--stat min: the least disturbed round, on a loaded machine). --copy adds the generated streaming-copy kernel's bandwidth (non-temporal
stores where the target has them) on 1 and 2 threads (two Python threads copying halves), and
bytes/element of the kernel (its plan's traffic at the measured time).

Usage: python bench/splitscale.py [--targets avx512,avx2] [--sizes 256K,1M,4M,64M] [--rounds 21] [--copy]"""
import argparse
import concurrent.futures
import dataclasses
import statistics
import time

import numpy as np

import softgen
from softgen.benchmark import copykernel
from softgen.benchmark.parse import parse_count
from softgen.targets import get_target


def _time(f, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        f()
    return (time.perf_counter() - t0) / number


def interleaved(calls: dict, rounds: int, budget_s: float = 0.02, stat=statistics.median) -> dict:
    """Seconds per call of each variant (``stat`` of the rounds: the median, or min on a loaded
    machine, the round least disturbed), interleaved rounds in rotated order."""
    for f in calls.values():
        f()
    t = _time(next(iter(calls.values())), 1)
    number = max(1, int(budget_s / max(t, 1e-7)))
    names, times = list(calls), {c: [] for c in calls}
    for r in range(rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:
            times[c].append(_time(calls[c], number))
    return {c: stat(v) for c, v in times.items()}


def kernels(target: str, n: int):
    """(the untuned auto entry's kernel for rows of n, the same with SG_POOL_NO_TEAM)."""
    auto = softgen.compile("softmax", target=target)
    e = next(e for e in auto.dispatch.entries if e.n_min <= n and (e.n_max is None or n <= e.n_max))
    k = softgen.compile("softmax", target=target, algorithm=e.algorithm, schedule=e.schedule)
    # every cached entry dropped: a k called with threads= before holds its own library's <name>_mt
    old = dataclasses.replace(k, source="#define SG_POOL_NO_TEAM 1\n" + k.source,
                              _fn=None, _emu_fn=None, _mt_fn=None, _emu_mt_fn=None)
    return k, old


def copy_bw(target: str, n: int, rounds: int, stat) -> dict:
    """Bytes/s of the streaming copy (read + write) on 1 and 2 threads."""
    ck = copykernel.CopyKernel(target)
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    h = n // 2 // 64 * 64
    stream = ck.streams and n >= 1 << 22
    pool = concurrent.futures.ThreadPoolExecutor(2)

    def two():
        a = pool.submit(ck, x[:h], y[:h], stream)
        ck(x[h:], y[h:], stream)
        a.result()
    med = interleaved({"1": lambda: ck(x, y, stream), "2": two}, rounds, stat=stat)
    pool.shutdown()
    return {c: 8 * n / t for c, t in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="avx512,avx2")
    ap.add_argument("--sizes", default="256K,1M,4M,64M")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--copy", action="store_true", help="copy bandwidth on 1 and 2 threads, bytes/element")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="of the rounds (min on a loaded machine: the least disturbed round)")
    args = ap.parse_args()
    stat = min if args.stat == "min" else statistics.median
    sizes = [parse_count(t) for t in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    print(f"{'target':>7} {'n':>9} {'algorithm':>18} {'1t ms':>8} {'2t ms':>8} {'2t old ms':>9} "
          f"{'1t/2t':>6} {'1t/2t old':>9}" + ("  B/elem 1t  2t   copy GB/s 1t  2t" if args.copy else ""))
    for target in args.targets.split(","):
        if not get_target(target).runnable:
            print(f"{target}: not runnable here")
            continue
        for n in sizes:
            k, old = kernels(target, n)
            x = (rng.standard_normal((1, n)) * 4).astype(np.float32)
            y = np.empty_like(x)
            assert np.array_equal(k(x, threads=2), k(x, threads=1)) and np.array_equal(old(x, threads=2), k(x, threads=1))
            med = interleaved({"1": lambda: k(x, out=y, threads=1), "2": lambda: k(x, out=y, threads=2),
                               "old2": lambda: old(x, out=y, threads=2)}, args.rounds, stat=stat)
            line = (f"{target:>7} {n:>9} {k.algorithm + ('+nt' if k.schedule.stream else ''):>18} "
                    f"{med['1'] * 1e3:>8.3f} {med['2'] * 1e3:>8.3f} {med['old2'] * 1e3:>9.3f} "
                    f"{med['1'] / med['2']:>5.2f}x {med['1'] / med['old2']:>8.2f}x")
            if args.copy:
                bw = copy_bw(target, n, max(5, args.rounds // 2), stat)
                line += (f"  {med['1'] * bw['1'] / n:>9.1f} {med['2'] * bw['2'] / n:>4.1f}   "
                         f"{bw['1'] / 1e9:>10.1f} {bw['2'] / 1e9:>4.1f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
