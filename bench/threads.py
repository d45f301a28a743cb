#!/usr/bin/env python3
"""2 threads vs 1 (issue 13, Threads): the rows of ``bench/issue13.py``'s section (b) on their own,
with the 2-thread bandwidth bound, and where the 2-thread time goes (``--profile``).

Per size (single rows; ``--shapes``: batches) the auto kernel (tuned when this machine's tuning
DB has records, else the model's) at threads=1 and threads=2, its auto (threads=None), and the
generated copy kernel (``templates/copy.c.j2``; non-temporal stores beyond the LLC where the target
has them) on 1 and on 2 threads of the same pool (``CopyKernel(..., threads=2)``), all in one
interleaved ``time_interleaved`` run (buffers pre-touched, rotated beyond the LLC). Columns:
speed-up (1t time / 2t time), copy 2t/1t (what two threads gain in copy bandwidth at that size: the
speed-up a bandwidth-bound kernel can reach), B/el (the plan's traffic at n), 2t bound (B/el at the
2-thread copy bandwidth) and the kernel's 2-thread time as a fraction of it.

``--profile``: per size, the variant the auto kernel runs there, rebuilt with ``SG_POOL_PROFILE``
(``templates/pool.h.j2``), called ``--calls`` times on 2 threads in batches interleaved with the
plain variant on 1 and 2 threads; the medians over the batches of its per-phase breakdown
(waking the pool, each sweep's pickup delay of the worker, the caller's own range, its wait, the
merges) and of the call times. ``--spin-us``: also the 2-thread time with the pool's spin before
parking (``SG_POOL_SPIN_NS``) at other values; ``--gap-us``: busy work after every call, as when
other ops run between two calls (a worker that parked after its spin must be woken).
``--percentiles``: every call timed alone (1 and 2 threads in alternating blocks), percentiles:
on a loaded machine the fastest calls are the ones no other process disturbed. Also their mean
(what the interleaved table's back-to-back blocks measure) and the share of slow 2-thread calls
(over 1.1x its p10): 2-thread calls of a 256K row are bimodal on a shared VM (fast ~31.5 us, slow
~37.5 us, in runs of tens of calls), so p5..p50 can show the fast mode alone while the mean (and the
table) include the slow one. ``--profile`` then splits every profiled call into the fastest half and
the slowest quarter: whether the slow calls are the caller's own work or its wait for the worker.

Measured on a shared machine, 2-thread ratios are only meaningful interleaved and repeated:
    python bench/threads.py                                 # 1K,256K,1M,4M,64M and 4096x512
    python bench/threads.py --sizes 256K,1M --shapes 4096x512 --rounds 25
    python bench/threads.py --sizes 256K,1M --shapes 4096x512 --profile
    python bench/threads.py --sizes 256K --shapes 4096x512 --spin-us 50,1000 --gap-us 100
    python bench/threads.py --sizes 256K,1M --shapes 4096x512 --percentiles   # a loaded machine
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import resource
import statistics
import sys
import time

import numpy as np

import softgen
from softgen import machine, passes
from softgen.benchmark import (
    CopyKernel,
    _buffers,
    _ns,
    _pct,
    _rotating,
    _x,
    parse_shapes,
    parse_sizes,
    ratio,
    render_table,
    size_label,
    time_interleaved,
)
from softgen.benchmark.copykernel import COPY_BYTES
from softgen.kernel import Kernel

SIZES = "1K,256K,1M,4M,64M"
SHAPES = "4096x512"
TIMING = dict(min_time=0.02, budget=0.3, min_rounds=7, max_rounds=25)


def buffer_pairs(caches, R: int, n: int) -> int:
    """Buffer pairs to rotate through: enough to exceed the LLC twice for DRAM-sized calls."""
    ws = 2 * 4 * R * n
    return max(1, math.ceil(2 * caches.L3 / ws)) if caches.level_of(ws) == "DRAM" else 1


def variant_at(k: Kernel, n: int, rows: int = 1) -> Kernel:
    """The kernel ``k`` runs on ``rows`` rows of n (a dispatcher's variant there; else ``k``)."""
    if not k.dispatcher:
        return k
    e = k.dispatch.pick(n, rows)
    return next(v for v in k.variants if v.name == e.symbol)


def traffic_at(k: Kernel, n: int, rows: int = 1) -> int:
    """Bytes per element of the plan ``k`` runs on ``rows`` rows of n (a dispatcher's: its variant's
    there); schedule lazymax (where ``passes.lazy_max`` applies) drops the max sweep's read of x."""
    k = variant_at(k, n, rows)
    lazy = k.schedule.lazymax and not isinstance(passes.lazy_max(k.plan), str) and n > passes.LAZY_FIRST
    return k.plan.traffic()["bytes_per_element"] - 4 * lazy


def busy_wait(us: float) -> None:
    """Spin ``us`` microseconds (other work between two calls, keeping this CPU busy)."""
    end = time.perf_counter() + us * 1e-6
    while time.perf_counter() < end:
        pass


def rebuilt(v: Kernel, prefix: str) -> Kernel:
    """``v`` with ``prefix`` before its C source (a macro of pool.h.j2): its own library and pool."""
    return dataclasses.replace(v, source=prefix + v.source,   # no cached entry of v's library
                               _fn=None, _emu_fn=None, _mt_fn=None, _emu_mt_fn=None)


def measure(k: Kernel, shapes, copier: CopyKernel, rng, caches, timing_kw: dict, auto: bool = False,
            spins=(), gap_us: float = 0) -> list[dict]:
    """Per (R, n): ``k`` at 1 and 2 threads (and auto), the copy on 1 and 2 threads, interleaved.
    ``spins``: also 2 threads with the pool's SG_POOL_SPIN_NS at each of these microseconds;
    ``gap_us``: every kernel call followed by that much busy work (its time subtracted)."""
    rows = []
    for R, n in shapes:
        bufs = _buffers(rng, R, n, buffer_pairs(caches, R, n))
        stream = copier.streams and caches.level_of(2 * 4 * R * n) == "DRAM"
        call = "k(x, out=y, threads=t)" + ("; g(u)" if gap_us else "")
        glb = {"g": busy_wait, "u": gap_us}
        v = {f"{t}t": _rotating([(call, {"k": k, "x": x, "y": y, "t": t, **glb}) for x, y in bufs]) for t in (1, 2)}
        for us in spins:
            kv = rebuilt(variant_at(k, n, R), f"#define SG_POOL_SPIN_NS {int(us * 1000)}\n")
            v[f"2t spin {us:g}"] = _rotating([(call, {"k": kv, "x": x, "y": y, "t": 2, **glb}) for x, y in bufs])
        if gap_us:
            v["gap"] = ("g(u)", glb)
        if auto:
            v["auto"] = _rotating([(call.replace(", threads=t", ""), {"k": k, "x": x, "y": y, **glb}) for x, y in bufs])
        for t in (1, 2):
            v[f"copy {t}t"] = _rotating([copier.variant(x, y, stream, threads=t) for x, y in bufs])
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tm = time_interleaved(v, **timing_kw)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        N = R * n
        per = {name: t.median / (copier.reps(N) if name.startswith("copy") else 1) for name, t in tm.items()}
        gap = per.pop("gap", 0.0)
        per = {name: t - (0 if name.startswith("copy") else gap) for name, t in per.items()}
        gbs2 = COPY_BYTES * N / per["copy 2t"] / 1e9
        traffic = traffic_at(k, n, R)
        row = dict(size=size_label(R, n), t1_ns=per["1t"] / N * 1e9, t2_ns=per["2t"] / N * 1e9,
                   speedup=ratio(per["1t"], per["2t"]),
                   copy=("nt " if stream else "") + f"{COPY_BYTES * N / per['copy 1t'] / 1e9:.1f} / {gbs2:.1f}",
                   copy_gain=ratio(per["copy 1t"], per["copy 2t"]), traffic=traffic,
                   bound2_ns=traffic / gbs2, noise=max(t.spread for t in tm.values()),
                   faults=faults / sum(t.number * t.rounds for t in tm.values()))
        row["of_bound2"] = row["bound2_ns"] / row["t2_ns"]
        if auto:
            row["auto_ns"] = per["auto"] / N * 1e9
            row["auto_vs_1t"] = ratio(per["auto"], per["1t"])
        for us in spins:
            row[f"speedup spin {us:g}"] = ratio(per["1t"], per[f"2t spin {us:g}"])
        rows.append(row)
        del bufs
    return rows


COLUMNS = [("size", "size", "s"), ("t1_ns", "1 thread ns/el", _ns), ("t2_ns", "2 threads ns/el", _ns),
           ("speedup", "speed-up", _x), ("copy", "copy GB/s 1t / 2t", "s"), ("copy_gain", "copy 2t/1t", _x),
           ("traffic", "B/el", "d"), ("bound2_ns", "2t bound ns/el", _ns), ("of_bound2", "2t of bound", _pct),
           ("faults", "faults/call", ".2f"), ("noise", "noise", _pct)]
AUTO_COLUMNS = [("auto_ns", "auto ns/el", _ns), ("auto_vs_1t", "auto/1t", _x)]
NOTE = ("speed-up: 1 thread's time over 2 threads' (issue 13: >= 1.8x at 256K-4M and 4096x512, >= 1.6x at 64M, "
        "auto <= 1.02x of one thread at 1K); copy 2t/1t: the copy kernel's 2-thread bandwidth over its 1-thread "
        "bandwidth at that size (nt: non-temporal stores), the most a bandwidth-bound kernel gains; 2t bound: the "
        "plan's B/el at the 2-thread copy bandwidth; faults/call: minor page faults per timed call (0: the buffers "
        "were touched before timing)")


def profile(k: Kernel, shapes, calls: int, rng, batches: int = 30) -> list[dict]:
    """Per (R, n): the variant at n rebuilt with SG_POOL_PROFILE, ``calls`` calls on 2 threads in
    ``batches`` batches interleaved with batches of the plain variant on 1 and 2 threads; per field
    of the library's profile (``sg_pool_profile_take``: per region, ns) and per call time, the
    median over the batches (a batch a preempted thread disturbed does not move it)."""
    out = []
    for R, n in shapes:
        v = variant_at(k, n, R)
        pk = rebuilt(v, "#define SG_POOL_PROFILE 1\n")
        x = rng.standard_normal((R, n), dtype=np.float32)
        y = np.empty_like(x)
        assert np.array_equal(pk(x, out=y, threads=2), v(x, threads=1), equal_nan=True)
        lib = pk._entry(False)._softgen_handle
        lib.sg_pool_profile_fields.restype = ctypes.c_char_p
        fields = lib.sg_pool_profile_fields().decode().split()
        buf = (ctypes.c_double * len(fields))()
        lib.sg_pool_profile_take(buf, len(fields))   # drop the check's region
        per = max(1, calls // batches)
        cols: dict[str, list[float]] = {}
        for b in range(batches):
            for name, kk, t in (("1t", v, 1), ("2t", v, 2), ("2t profiled", pk, 2))[::1 if b % 2 else -1]:
                t0 = time.perf_counter()
                for _ in range(per):
                    kk(x, out=y, threads=t)
                cols.setdefault(name, []).append((time.perf_counter() - t0) / per * 1e9)
            lib.sg_pool_profile_take(buf, len(fields))
            for f, val in zip(fields, buf):
                cols.setdefault(f, []).append(val)
        med = {f: statistics.median(vals) for f, vals in cols.items()}
        modes = call_modes(pk, x, y, lambda: (lib.sg_pool_profile_take(buf, len(fields)), dict(zip(fields, buf)))[1], calls)
        out.append(dict(size=size_label(R, n), variant=f"{v.algorithm} {v.schedule}", **med))
        print(f"{size_label(R, n)}: {v.algorithm} {v.schedule}; {per} calls x {batches} batches, medians of the "
              f"batches' per-call / per-region means (us)")
        print(f"  call: 1t {med['1t'] / 1e3:.2f}, 2t {med['2t'] / 1e3:.2f} ({med['1t'] / med['2t']:.2f}x), "
              f"2t profiled {med['2t profiled'] / 1e3:.2f}")
        if med["regions"]:
            print(f"  team region: total {med['total'] / 1e3:.2f} begin {med['begin'] / 1e3:.2f} end {med['end'] / 1e3:.2f}")
            for j in range(4):
                if med[f"caller{j}"] + med[f"workers{j}"]:
                    print(f"  sweep job {j}: merge before {med[f'gap{j}'] / 1e3:.2f} worker pickup {med[f'pickup{j}'] / 1e3:.2f} "
                          f"caller own {med[f'own{j}'] / 1e3:.2f} caller wait {med[f'wait{j}'] / 1e3:.2f}; tasks caller "
                          f"{med[f'caller{j}']:.2f} workers {med[f'workers{j}']:.2f}")
        for name, m in modes.items():
            if m["calls"] and m.get("regions"):
                print(f"  {name}: {m['calls']} calls, call {m['call'] / 1e3:.2f} region {m['total'] / 1e3:.2f}; " + "; ".join(
                    f"sweep job {j}: caller own {m[f'own{j}'] / 1e3:.2f} wait {m[f'wait{j}'] / 1e3:.2f} tasks {m[f'caller{j}']:.2f}"
                    for j in range(4) if m[f"caller{j}"] + m[f"workers{j}"]))
        if med["par_regions"]:
            print(f"  sg_parallel region: total {med['par_total'] / 1e3:.2f} open {med['par_open'] / 1e3:.2f} worker pickup "
                  f"{med['par_pickup'] / 1e3:.2f} caller own {med['par_own'] / 1e3:.2f} caller wait {med['par_wait'] / 1e3:.2f}; "
                  f"tasks caller {med['par_caller']:.2f} of {med['par_tasks']:.2f}")
        sys.stdout.flush()
    return out


def call_modes(pk: Kernel, x, y, take, calls: int) -> dict[str, dict]:
    """``calls`` calls of the profiled ``pk`` on 2 threads, its profile ``take()`` (a dict of the
    fields) after each; per group of calls (the fastest half, the slowest quarter) the medians of
    the call time (ns) and of each profile field (caller own / wait per sweep, caller tasks)."""
    rows = []
    pc = time.perf_counter
    for _ in range(calls):
        t0 = pc()
        pk(x, out=y, threads=2)
        t = (pc() - t0) * 1e9
        rows.append(dict(take(), call=t))
    rows.sort(key=lambda r: r["call"])
    out = {}
    for name, sel in (("fastest half", rows[:len(rows) // 2]), ("slowest quarter", rows[len(rows) - len(rows) // 4:])):
        out[name] = {f: statistics.median(r[f] for r in sel) for f in rows[0]} if sel else {}
        out[name]["calls"] = len(sel)
    return out


SLOW = 1.1   # a 2-thread call over SLOW x its p10 counts as slow (percentile_row)


def percentile_row(size: str, t1: list[float], t2: list[float]) -> dict:
    """Per-call seconds of 1 and 2 threads -> the row of ``--percentiles`` (us): p5..p90, the
    means (what back-to-back blocks measure), their ratios, and the share of slow 2-thread calls."""
    row = dict(size=size, calls=len(t1))
    q = {t: np.percentile(np.array(v) * 1e6, PCTS) for t, v in ((1, t1), (2, t2))}
    for i, p in enumerate(PCTS):
        row[f"t1_p{p}"], row[f"t2_p{p}"], row[f"x_p{p}"] = q[1][i], q[2][i], q[1][i] / q[2][i]
    row["t1_mean"], row["t2_mean"] = float(np.mean(t1)) * 1e6, float(np.mean(t2)) * 1e6
    row["x_mean"] = row["t1_mean"] / row["t2_mean"]
    row["slow2"] = float(np.mean(np.array(t2) * 1e6 > SLOW * row["t2_p10"]))
    return row


def percentiles(k: Kernel, shapes, rng, blocks: int = 40, work_s: float = 0.004) -> list[dict]:
    """Per (R, n): every call timed alone, 1 and 2 threads in alternating blocks; the 5th, 10th,
    25th and 50th percentiles. On a loaded machine the fastest calls are those no other process
    disturbed (both threads had a CPU): their ratio is what two threads give undisturbed."""
    rows = []
    pc = time.perf_counter
    for R, n in shapes:
        x = rng.standard_normal((R, n), dtype=np.float32)
        y = np.empty_like(x)
        k(x, out=y, threads=1)
        t0 = pc()
        k(x, out=y, threads=1)
        per = max(5, int(work_s / max(pc() - t0, 1e-7)))
        ts: dict[int, list[float]] = {1: [], 2: []}
        for b in range(blocks):
            for t in ((1, 2) if b % 2 else (2, 1)):
                k(x, out=y, threads=t)
                for _ in range(per):
                    t0 = pc()
                    k(x, out=y, threads=t)
                    ts[t].append(pc() - t0)
        rows.append(percentile_row(size_label(R, n), ts[1], ts[2]))
    return rows


PCTS = (5, 10, 25, 50, 75, 90)
PCT_COLUMNS = [("size", "size", "s"), ("calls", "calls", "d")] + [
    c for q in [f"p{p}" for p in PCTS] + ["mean"]
    for c in ((f"t1_{q}", f"1t {q} us", ".1f"), (f"t2_{q}", f"2t {q} us", ".1f"), (f"x_{q}", f"{q} 1t/2t", _x))] + [
    ("slow2", f"2t calls > {SLOW:g}x p10", _pct)]
PCT_NOTE = ("mean: what the interleaved table's back-to-back blocks measure; a mean ratio well under the p5..p50 "
            "ones: the 2-thread calls are bimodal (see the slow share), the percentiles show the fast mode alone")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="host")
    ap.add_argument("--op", default="softmax")
    ap.add_argument("--sizes", default=SIZES, help=f"single rows (default {SIZES}; '' for none)")
    ap.add_argument("--shapes", default=SHAPES, help=f"batches RxN (default {SHAPES}; '' for none)")
    ap.add_argument("--rounds", type=int, help=f"interleaved rounds (default {TIMING['min_rounds']}-{TIMING['max_rounds']})")
    ap.add_argument("--profile", action="store_true", help="the per-phase breakdown on 2 threads (SG_POOL_PROFILE)")
    ap.add_argument("--calls", type=int, default=2000, help="calls per size with --profile (default 2000)")
    ap.add_argument("--spin-us", default="", help="also 2 threads with the pool's spin before parking at these "
                    "microseconds (SG_POOL_SPIN_NS; e.g. 50,1000; the default is 200)")
    ap.add_argument("--percentiles", action="store_true", help="every call timed alone: percentiles of 1 and 2 "
                    "threads (a loaded machine: the fastest calls are the undisturbed ones)")
    ap.add_argument("--gap-us", type=float, default=0, help="busy work after every call (us; its time subtracted): "
                    "calls a little apart, as between other ops")
    args = ap.parse_args(argv)
    shapes = (parse_sizes(args.sizes) if args.sizes else []) + (parse_shapes(args.shapes) if args.shapes else [])
    k = softgen.compile(args.op, algorithm="auto", target=args.target)
    rng = np.random.default_rng(0)
    print(f"# {k.name}: {'tuned' if k.tuned else 'model'} auto; {machine.describe()}")
    if args.profile:
        profile(k, shapes, args.calls, rng)
        return 0
    if args.percentiles:
        print(render_table(percentiles(k, shapes, rng), PCT_COLUMNS))
        print(PCT_NOTE)
        return 0
    timing_kw = dict(TIMING, **({"min_rounds": args.rounds, "max_rounds": args.rounds} if args.rounds else {}))
    try:   # the spins reach a C #define: numbers only, finite, >= 0
        spins = [float(u) for u in args.spin_us.split(",") if u.strip()]
    except ValueError:
        ap.error(f"--spin-us: comma-separated microseconds, got {args.spin_us!r}")
    if not all(math.isfinite(u) and 0 <= u <= 1e6 for u in spins + [args.gap_us]):
        ap.error("--spin-us and --gap-us: finite microseconds in [0, 1e6]")
    rows = measure(k, shapes, CopyKernel(k.target), rng, machine.caches(), timing_kw, auto=True, spins=spins,
                   gap_us=args.gap_us)
    extra = [(f"speedup spin {u:g}", f"speed-up spin {u:g} us", _x) for u in spins]
    if args.gap_us:
        print(f"# every call followed by {args.gap_us:g} us of busy work (subtracted)")
    print(render_table(rows, COLUMNS[:4] + extra + AUTO_COLUMNS + COLUMNS[4:]))
    print(NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
