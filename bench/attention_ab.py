"""A/B of the streaming softmax attention kernel of two softgen trees, interleaved in one process
(before/after a change of templates/attention.c.j2; the timing noise of a shared machine hits
both alike).

    python bench/attention_ab.py --old /path/to/old/tree [--new .] [--lengths 1024 4096] [--bh 8]
                                 [--old-args '--wide 0'] [--new-args '--br 8'] [--clock thread]
                                 [--d 64] [--threads 1] [--rounds 21 --min-time 0.02] [--stat min]

Each tree exports ``--op attention --algorithm streaming`` (``python -m softgen build`` with the
tree on PYTHONPATH, its own cache), once causal and once not; both libraries are called through
ctypes on the same q, k, v (B*H heads, Lq = Lk = L); the outputs must agree within 1e-5. ``--stat``:
the statistic of the first three columns (median, or min: a loaded machine's least disturbed call);
the last three are the minima either way.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import single_threaded, time_interleaved  # noqa: E402

from softgen.benchmark.timing import Timing  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402


def export(tree: str, name: str, d: int, causal: bool, out: str, extra: str = "") -> ctypes.CDLL:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), SOFTGEN_CACHE_DIR=os.path.join(out, "cache-" + name))
    cmd = [sys.executable, "-m", "softgen", "build", "--op", "attention", "--algorithm", "streaming",
           "--param", f"head_dim={d}", "--name", name, "-o", out] + (["--causal"] if causal else []) + extra.split()
    subprocess.run(cmd, check=True, env=env, cwd=os.path.abspath(tree), capture_output=True)
    lib = ctypes.CDLL(os.path.join(out, f"lib{name}.so"))
    fn = getattr(lib, name + "_mt")
    fn.restype = ctypes.c_int
    return fn


def call(fn, q, k, v, o, threads: int) -> int:
    bh, lq, d = q.shape
    lk, dv = v.shape[1], v.shape[2]
    P, S = ctypes.c_void_p, ctypes.c_size_t
    st = lambda a: [0, a.strides[0] // 4, a.strides[1] // 4]  # noqa: E731
    args = [P(q.ctypes.data), P(k.ctypes.data), P(v.ctypes.data), P(o.ctypes.data), S(1), S(bh), S(bh), S(lq), S(lk),
            S(d), S(dv)] + [ctypes.c_ssize_t(x) for a in (q, k, v, o) for x in st(a)] + \
           [P(None), P(None), ctypes.c_ssize_t(0), ctypes.c_ssize_t(0), ctypes.c_ssize_t(0), ctypes.c_int(threads)]
    return fn(*args)


def thread_times(fns: dict, rounds: int) -> dict[str, Timing]:
    """Per variant, the CPU time of the calling thread over single calls, in alternating rounds."""
    xs = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.thread_time_ns()
            fns[k]()
            xs[k].append((time.thread_time_ns() - t0) * 1e-9)
    out = {}
    for k, x in xs.items():
        x = sorted(x)
        q1, q3 = statistics.quantiles(x, n=4, method="inclusive")[::2]
        out[k] = Timing(statistics.median(x), x[0], q1, q3, 1, rounds, x)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the other softgen tree (e.g. a `git worktree add` of main)")
    ap.add_argument("--new", default=".", help="this tree")
    ap.add_argument("--old-args", default="", help="extra `softgen build` arguments of the old side, e.g. '--wide 0'")
    ap.add_argument("--new-args", default="", help="extra `softgen build` arguments of the new side, e.g. '--br 8'")
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--decode", type=int, nargs="*", default=[],
                    help="also these Lk of the decoding shape (Lq = --decode-lq, causal only)")
    ap.add_argument("--decode-lq", type=int, default=1)
    ap.add_argument("--bh", type=int, default=8)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=21, help="at most this many interleaved rounds")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: the calling thread's CPU time per single call (--threads 1 only): the time "
                         "a loaded machine's other jobs took the core away is not counted")
    ap.add_argument("--min-time", type=float, default=0.02,
                    help="seconds per sample (small: single calls, whose minimum survives a loaded machine)")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="the statistic of the 'old ms', 'new ms' and 'old/new' columns")
    a = ap.parse_args(argv)
    stat = (lambda tm: tm.min) if a.stat == "min" else (lambda tm: tm.median)  # noqa: E731
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="attab-") as out:
        fns = {(tag, c): export(tree, f"att_{tag}_{int(c)}", a.d, c, out, extra)
               for tag, tree, extra in (("old", a.old, a.old_args), ("new", a.new, a.new_args)) for c in (False, True)}
        print(f"{a.stat}: {a.rounds} rounds at most, clock {a.clock}, {a.threads} thread(s)")
        print(f"{'L':>6} {'causal':>6} {'old ms':>9} {'new ms':>9} {'old/new':>8} {'IQR old':>8} {'IQR new':>8} "
              f"{'old min':>9} {'new min':>9} {'min o/n':>8}")
        shapes = [(L, L, c) for L in a.lengths for c in (False, True)] + [(a.decode_lq, L, True) for L in a.decode]
        for lq, L, c in shapes:
            q = rng.standard_normal((a.bh, lq, a.d)).astype(np.float32)
            k, v = (rng.standard_normal((a.bh, L, a.d)).astype(np.float32) for _ in range(2))
            outs = {tag: np.empty((a.bh, lq, a.d), np.float32) for tag in ("old", "new")}
            for tag in outs:
                assert call(fns[tag, c], q, k, v, outs[tag], a.threads) == 0
            np.testing.assert_allclose(outs["new"], outs["old"], rtol=1e-5, atol=1e-5)
            fn = {tag: (lambda tag=tag: call(fns[tag, c], q, k, v, outs[tag], a.threads)) for tag in outs}
            t = thread_times(fn, a.rounds) if a.clock == "thread" else \
                time_interleaved(fn, budget=a.budget, min_rounds=7, max_rounds=a.rounds, min_time=a.min_time)
            print(f"{L if lq == L else f'{lq}x{L}':>6} {str(c):>6} {stat(t['old']) * 1e3:>9.3f} {stat(t['new']) * 1e3:>9.3f} "
                  f"{stat(t['old']) / stat(t['new']):>8.3f} {t['old'].spread:>8.1%} {t['new'].spread:>8.1%} "
                  f"{t['old'].min * 1e3:>9.3f} {t['new'].min * 1e3:>9.3f} {t['old'].min / t['new'].min:>8.3f}")


if __name__ == "__main__":
    main()
