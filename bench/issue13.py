"""Issue 13's closing tables in one run, on one target (default: the host's best), 1 thread unless said.

(a) auto: per single-row size (1K..64M) and batched shape (8192x128, 4096x512, 64x32768): tuned auto
    (when this machine's tuning DB has records for the target), model auto (the untuned cost model's
    dispatch table), the best variant of an exhaustive sweep and the previous auto (what
    ``algorithm="auto"`` was before issue 13: the first applicable entry of the target's
    ``auto_algorithms`` with the target's default schedule), with ratios. The sweep of a size: what
    ``softgen tune`` considers there (``sweep_candidates``), uncut: the algorithms the model keeps
    (within ``tune.PRUNE_RATIO`` of its cheapest at the row's cache level) x every unroll x
    accumulators combination of the C backend's ``tuning_knobs``, plus x every combination of the
    knobs bound to the level (``tuning_knob_levels``: exp variants and rows <= R in cache, lazymax
    at every level, non-temporal stores and prefetch beyond the LLC), priced as the tuner prices them
    (``tune.priced``); each group over the target's default schedule (one factor at a time, not
    their cross product). ``--quick`` samples them. The sweep's ``tune.FINALISTS`` fastest are
    re-timed with the autos in a fresh interleaved run (the best of tens of noisy medians is biased
    low), and "best" is the fastest of them there, as ``softgen tune`` picks its winner.
(b) threads: auto at 1 vs 2 threads (``Kernel.__call__(..., threads=)``; "not available" when the
    kernel has no such argument), with the copy kernel on 1 and 2 threads in the same interleaved
    run: the 2-thread bandwidth bound (``bench/threads.py``: these rows alone, and ``--profile``).
(c) DRAM: two-pass at the largest single row (64M) as a fraction of its traffic bound, 12 B/element
    (read x twice, write y once) at the measured non-temporal copy bandwidth (the generated copy
    kernel, ``templates/copy.c.j2``); also with a streaming-store schedule knob when the Schedule has one.
(d) peers: ONNX Runtime, torch, NumPy vs tuned auto (model auto when there are no records), with
    issue 13's targets (>= 1.2x on batches, >= 1.5x on single rows >= 16K).

Every candidate of a size is timed interleaved with every other in one ``time_interleaved`` call
(ratios within a size are meaningful on a shared machine; absolute times less so); softgen's kernels
as ``softgen tune`` times them (``softgen_variants``: up to ``tune.C_LOOP_MAX`` elements back to back
in C), auto also through a Python call there for (d), whose peers are called from Python. Every output is
checked against NumPy's softmax before timing. Text and JSON go to ``bench/results/<date>-<cpu>.{txt,json}``
(``--out DIR``); progress to stderr.

    python bench/issue13.py                      # the full run (~15-30 min on 2 cores)
    python bench/issue13.py --quick              # tiny sizes, sampled sweep (seconds; a test runs it)
    python bench/issue13.py --target avx2 --sizes 256K,1M --shapes 4096x512
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import inspect
import math
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402,F401  (single-threads the math libraries before NumPy is imported)
import numpy as np  # noqa: E402
from threads import (
    COLUMNS as THREAD_COLUMNS,  # noqa: E402
    NOTE as THREAD_NOTE,  # noqa: E402
    buffer_pairs as _pairs,  # noqa: E402
    measure as measure_threads,  # noqa: E402
    traffic_at,  # noqa: E402
)

from softgen import costmodel, machine, ops, passes, runtime  # noqa: E402
from softgen._version import __version__  # noqa: E402
from softgen.backends import get_backend  # noqa: E402
from softgen.benchmark import (  # noqa: E402
    COPY_BYTES,
    CopyKernel,
    Progress,
    _buffers,
    _ns,
    _pct,
    _rotating,
    _x,
    load_peers,
    machine_info,
    max_rel_err,
    numpy_softmax,
    parse_against,
    parse_shapes,
    parse_sizes,
    plot,
    ratio,
    render_table,
    size_label,
    time_interleaved,
    to_json,
)
from softgen.errors import UsageError  # noqa: E402
from softgen.kernel import (  # noqa: E402
    Kernel,
    choose_algorithm,
    compile as compile_kernel,  # noqa: E402
)
from softgen.schedule import Schedule, default_schedule  # noqa: E402
from softgen.targets import get_target  # noqa: E402
from softgen.tune import (  # noqa: E402
    C_LOOP_MAX,
    FINALISTS,
    FINALISTS_MAX,
    PRUNE_RATIO,
    CLoop,
    knob_levels,
    label as tune_label,  # noqa: E402
    level_schedules,
    measure as tune_measure,  # noqa: E402
    pick_finalists,
    priced,
    schedules as tune_schedules,  # noqa: E402
    timed_variant,
)

SIZES = "1K,4K,16K,64K,256K,1M,4M,16M,64M"
SHAPES = "8192x128,4096x512,64x32768"
THREAD_SIZES = "1K,256K,1M,4M,64M"
THREAD_SHAPES = "4096x512"
# the finalists' re-run per size (tune.measure): at most this long and this many rounds
FINAL_S, FINAL_ROUNDS = 8.0, 60
QUICK_SIZES, QUICK_SHAPES = "1K,4K", "16x128,4x512"
QUICK_THREAD_SIZES, QUICK_THREAD_SHAPES = "1K,4K", "4x512"
# max |y - NumPy's softmax| / max: softgen's kernels; the peers (ORT and torch sum long rows in float32
# lanes: 3.3e-4 at 64M on Zen 4, a real difference but not a wrong kernel; still timed, with a note)
SOFTGEN_TOL, PEER_TOL = 1e-4, 1e-3
TWO_PASS_BYTES = 12          # read x twice, write y once (f32)
OP = "softmax"
# issue 13's targets against ONNX Runtime: tuned auto's speed-up on batches / single rows >= 16K
ORT_BATCH_TARGET, ORT_ROW_TARGET, ORT_ROW_MIN = 1.2, 1.5, 16 << 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def tuning(enabled: bool):
    """``SOFTGEN_USE_TUNING`` for the compiles inside (autotable.tuned_table reads it)."""
    old = os.environ.get("SOFTGEN_USE_TUNING")
    os.environ["SOFTGEN_USE_TUNING"] = "1" if enabled else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SOFTGEN_USE_TUNING", None)
        else:
            os.environ["SOFTGEN_USE_TUNING"] = old


def stream_knobs() -> list[str]:
    """Schedule fields that ask for non-temporal (streaming) stores, if the Schedule has any."""
    pat = re.compile(r"stream|non_?temporal|(^|_)nt($|_)")
    return [f.name for f in dataclasses.fields(Schedule) if pat.search(f.name)]


def threads_supported() -> bool:
    """Whether ``Kernel.__call__`` takes ``threads=`` (slice 1 of issue 13 adds it)."""
    return "threads" in inspect.signature(Kernel.__call__).parameters


def sweep_label(alg: str, sched: Schedule, base: Schedule) -> str:
    """e.g. ``3pl u4a2 lz`` (``tune.label``, + any other field that differs from the target's default)."""
    d, b = sched.as_dict(), base.as_dict()
    named = ("unroll", "accumulators", "stream", "prefetch", "exp", "rows", "lazymax", "pipeline")   # tune.label's
    extra = "".join(f" {k}={v}" for k, v in d.items() if k not in named and v != b.get(k))
    return tune_label(alg, d) + extra


def sweep_candidates(program, t, be, caches, R: int, n: int) -> list[tuple[str, Schedule]]:
    """The sweep at R rows of n: what ``softgen tune`` considers for the class of n, uncut. The
    algorithms the model keeps at the row's cache level (within ``PRUNE_RATIO`` of the cheapest,
    cheapest first) x every combination of the backend's level-independent knobs (unroll x
    accumulators: ``tune.schedules``), then x every combination of the knobs bound to the level
    (``tune.level_schedules``, rows <= R, and the batch knobs at the level of the whole R x n working
    set; at the last-level cache's edge DRAM's knobs too, ``tune.knob_levels``) that ``tune.priced`` keeps (exp variants within ``KNOB_PRUNE_RATIO``, lazymax and pipeline
    where the plan has their form), over the default schedule; not
    the tuner's cut to its ``keep`` schedules nearest the default and ``KNOB_ALGORITHMS``."""
    level = caches.level_of(costmodel.BYTES_PER_N * n)
    plans = {a: passes.plan(passes.apply_algorithm(program, a)) for a in passes.applicable_algorithms(program)}
    cost = {a: costmodel.cycles_per_element(pl, t, level) for a, pl in plans.items()} if t.cost else {}
    best = min(cost.values()) if cost else 0.0
    kept = sorted((a for a in plans if not cost or cost[a] <= PRUNE_RATIO * best), key=lambda a: cost.get(a, 0.0))
    base = default_schedule(t.schedule, t.lanes, t.shifted_exp)
    bl = caches.level_of(costmodel.BYTES_PER_N * R * n)
    out = [(a, s) for a in kept for s in tune_schedules(be, t)]
    for lvl in knob_levels(caches, costmodel.BYTES_PER_N * n):     # at the LLC's edge DRAM's knobs too
        extra = level_schedules(be, t, lvl, base, R, bl)
        lbest = min(costmodel.cycles_per_element(plans[a], t, lvl) for a in plans) if t.cost else 0.0
        out += [(a, s) for a in kept for s in priced(plans[a], t, lvl, extra, lbest)]
    return list(dict.fromkeys(out))


@dataclasses.dataclass
class Kernels:
    target: object
    tuned: Kernel | None          # None: no tuning records for this target on this machine
    model: Kernel
    previous: Kernel
    previous_label: str
    sweep: dict                   # (R, n) -> {label: Kernel}
    candidates: dict              # (R, n) -> the sweep's candidates before --quick sampled them
    built: int                    # distinct sweep kernels compiled (shared between sizes)


def build(target_name: str, quick: bool, seed: int, shapes: list) -> Kernels:
    t = get_target(target_name)
    program = ops.build_program(OP)
    with tuning(True):
        tk = compile_kernel(OP, algorithm="auto", target=t.name)
    with tuning(False):
        mk = compile_kernel(OP, algorithm="auto", target=t.name)
    tuned = tk if tk.tuned else None
    prev_alg = choose_algorithm(program, t.name, "auto")     # the first applicable of auto_algorithms
    be = get_backend("c")
    base = default_schedule(t.schedule, t.lanes, t.shifted_exp)   # the target's default schedule
    caches = machine.caches()
    rng = random.Random(seed)
    picked, totals = {}, {}
    for R, n in shapes:
        cands = sweep_candidates(program, t, be, caches, R, n)
        totals[(R, n)] = len(cands)
        if quick:   # every algorithm's default schedule and one other sampled candidate
            keep = []
            for a in dict.fromkeys(a for a, _ in cands):
                mine = [c for c in cands if c[0] == a]
                keep += [mine[0]] + rng.sample(mine[1:], min(1, len(mine) - 1))
            cands = keep
        picked[(R, n)] = cands
    built: dict = {}
    todo = list(dict.fromkeys(c for cands in picked.values() for c in cands))
    for i, (a, s) in enumerate(todo):
        log(f"issue13: compiling sweep candidate {i + 1}/{len(todo)}: {sweep_label(a, s, base)}")
        k = compile_kernel(OP, algorithm=a, target=t.name, schedule=s)
        k._entry(False)
        built[(a, s)] = k
    sweep = {shape: {sweep_label(a, s, base): built[(a, s)] for a, s in cands} for shape, cands in picked.items()}
    prev = built.get((prev_alg, base)) or compile_kernel(OP, algorithm=prev_alg, target=t.name)
    for k in (tk, mk, prev):
        k._entry(False)
    return Kernels(t, tuned, mk, prev, f"{prev_alg} ({passes.SHORT[prev_alg]} default schedule)", sweep,
                   totals, len(built))


def _call(k: Kernel, x, y, **kw) -> tuple:
    if kw:
        return ("k(x, out=y, threads=t)", {"k": k, "x": x, "y": y, "t": kw["threads"]})
    return ("k(x, out=y)", {"k": k, "x": x, "y": y})


CALL = "call "   # auto timed through a Python call too where the others run in C: for table (d)


def softgen_variants(named: dict[str, Kernel], bufs: list) -> dict:
    """The timing variants of softgen's kernels ``named`` on ``bufs``, as ``softgen tune`` times its
    candidates (``tune.timed_variant``, one thread as SOFTGEN_NUM_THREADS=1 caps auto here): one
    buffer pair of at most ``tune.C_LOOP_MAX`` elements back to back in C (``tune.CLoop``), else
    ``k(x, out=y)`` rotating over the pairs. Through Python a call costs ~0.3 us more, about a 1K
    row's kernel: the s24 run timed 1K at 0.51-0.55 ns/el for kernels of ~0.25 (noise 50%), and
    the tuner's ranking (in C) was compared with another quantity. Where C-looped, auto (tuned, else
    model) is also timed through a Python call (``CALL`` + its name): table (d) compares it with peers
    called from Python."""
    out = {name: timed_variant(k, bufs, 1) for name, k in named.items()}
    auto = "tuned auto" if "tuned auto" in named else "model auto"
    if auto in out and isinstance(out[auto], CLoop):
        out[CALL + auto] = _rotating([_call(named[auto], x, y) for x, y in bufs])
    return out


def _run_once(v) -> None:
    v() if callable(v) else eval(v[0], dict(v[1]))


def measure_size(ks: Kernels, peers, copier, R: int, n: int, rng, caches, timing_kw, notes,
                 final_s: float = 0.0, final_rounds: int = 0) -> dict:
    """One size: every softgen candidate, peer and the copy kernel interleaved; returns their
    medians (s/call; the copy's per call of ``reps`` copies) and the copy's best GB/s. The
    finalists' re-run: ``tune.measure`` for up to ``final_s`` seconds and ``final_rounds`` rounds
    (0 s: one more ``time_interleaved`` run with ``timing_kw``)."""
    label = size_label(R, n)
    bufs = _buffers(rng, R, n, _pairs(caches, R, n))
    named: dict[str, Kernel] = {}
    if ks.tuned is not None:
        named["tuned auto"] = ks.tuned
    named["model auto"] = ks.model
    named["previous auto"] = ks.previous
    for lab, k in ks.sweep[(R, n)].items():
        named["sweep " + lab] = k
    variants = softgen_variants(named, bufs)
    for p in peers:
        variants["peer " + p.name] = _rotating([p.variant(x, y) for x, y in bufs])
    level = caches.level_of(2 * 4 * R * n)
    for stream in [False] + ([True] if copier.streams and level == "DRAM" else []):
        variants["copy (non-temporal)" if stream else "copy"] = \
            _rotating([copier.variant(x, y, stream) for x, y in bufs])
    x, y = bufs[0]
    ref = numpy_softmax(x, np.empty_like(x))
    bad = []
    for name, v in variants.items():
        if name.startswith("copy"):
            continue
        y.fill(np.nan)
        _run_once(v)
        err = max_rel_err(y, ref)
        tol = PEER_TOL if name.startswith("peer ") else SOFTGEN_TOL
        if not err <= tol:
            bad.append(name)
            notes.append(f"{label}: {name} differs from NumPy's softmax (max rel err {err:.2e} > {tol:g}); not timed")
        elif err > SOFTGEN_TOL:
            notes.append(f"{label}: {name}: max rel err {err:.2e} against NumPy's softmax (timed; peers get "
                         f"{PEER_TOL:g}: their float32 sums drift on long rows)")
    del ref
    for name in bad:
        variants.pop(name)
    tm = time_interleaved(variants, **timing_kw)
    # the best of many noisy medians is biased low: like softgen tune's finalists (tune.pick_finalists:
    # the FINALISTS fastest and every other the first run cannot tell from the best), the sweep's
    # finalists are re-timed with the autos in a fresh interleaved run whose medians stand, by
    # softgen tune's protocol (tune.measure: rounds until the contenders' medians are known to
    # TOLERANCE, or final_s seconds)
    first = {name: t.median for name, t in tm.items() if name.startswith("sweep ")}
    finalists = pick_finalists({k: tm[k] for k in first}) + [k for k in ("tuned auto", "model auto") if k in tm]
    rerun = len(first) > 1
    final_noise = None
    if rerun:
        fin = {k: variants[k] for k in finalists}
        final = tune_measure(fin, time.monotonic() + final_s, min_time=timing_kw["min_time"],
                             min_rounds=timing_kw["min_rounds"], max_rounds=max(timing_kw["max_rounds"], final_rounds)) \
            if final_s > 0 else time_interleaved(fin, **timing_kw)
        tm.update(final)
        final_noise = max(t.spread for t in final.values())
    del bufs
    reps = copier.reps(R * n)
    copy_gbps = max(COPY_BYTES * R * n * reps / t.median / 1e9 for name, t in tm.items() if name.startswith("copy"))
    return {name: t.median for name, t in tm.items()} | \
        {"_noise": {name: t.spread for name, t in tm.items() if not name.startswith("copy")}, "_copy_gbps": copy_gbps,
         "_final_noise": final_noise, "_rounds": {k: tm[k].rounds for k in finalists if k in tm} if rerun else {},
         "_first": {k: first[k] for k in finalists if k in first} if rerun else {}}


def auto_rows(ks: Kernels, results: dict) -> list[dict]:
    rows = []
    for (R, n), t in results.items():
        N = R * n
        sweep = {k[len("sweep "):]: v for k, v in t.items() if k.startswith("sweep ")}
        final = {k[len("sweep "):] for k in t.get("_first", ())}   # re-timed: the best is the best of them
        best = min(final or sweep, key=sweep.get) if sweep else None
        tb = sweep.get(best)
        tt, tm, tp = t.get("tuned auto"), t.get("model auto"), t.get("previous auto")
        rows.append(dict(size=size_label(R, n), rows=R, n=n, elements=N,
                         tuned_ns=tt and tt / N * 1e9, model_ns=tm and tm / N * 1e9,
                         best_ns=tb and tb / N * 1e9, best=best, previous_ns=tp and tp / N * 1e9,
                         tuned_vs_best=ratio(tt, tb), model_vs_best=ratio(tm, tb),
                         auto_vs_previous=ratio(tp, tt or tm),
                         noise=max((v for k, v in t["_noise"].items()), default=None),
                         final_noise=t.get("_final_noise")))
    return rows


AUTO_COLUMNS = [("size", "size", "s"), ("tuned_ns", "tuned auto", _ns), ("model_ns", "model auto", _ns),
                ("best_ns", "best", _ns), ("best", "best variant", "s"), ("previous_ns", "prev auto", _ns),
                ("tuned_vs_best", "tuned/best", _x), ("model_vs_best", "model/best", _x),
                ("auto_vs_previous", "prev/auto", _x), ("noise", "max noise", _pct),
                ("final_noise", "final noise", _pct)]


def peer_rows(results: dict, peers, ks: Kernels | None = None) -> tuple[list[dict], str]:
    """Peers' times over auto's; with ``ks``, auto's traffic bound at the size: its plan's bytes per
    element (``traffic_at``) at the copy kernel's bandwidth measured in the same interleaved run
    (in cache: the bandwidth of the level the row lives in, e.g. L3 at 256K-4M), the fraction of it
    auto reaches, and issue 13's goal against ONNX Runtime as ns/element (ORT's time over the goal)."""
    rows, base_name = [], None
    for (R, n), t in results.items():
        base_name = "tuned auto" if "tuned auto" in t else "model auto"
        tb = t.get(CALL + base_name, t[base_name])   # through a Python call, as the peers
        row = dict(size=size_label(R, n), auto_ns=tb / (R * n) * 1e9)
        if ks is not None and t.get("_copy_gbps"):
            k = ks.tuned if base_name == "tuned auto" else ks.model
            b = traffic_at(k, n)
            row["traffic"] = b
            row["bound_ns"] = b / t["_copy_gbps"]
            row["of_bound"] = row["bound_ns"] / row["auto_ns"]
        for p in peers:
            tp = t.get("peer " + p.name)
            row[p.name + "_ns"] = tp and tp / (R * n) * 1e9
            row[p.name] = ratio(tp, tb)
        ort = row.get("onnxruntime")
        goal = ORT_BATCH_TARGET if R > 1 else ORT_ROW_TARGET if n >= ORT_ROW_MIN else None
        row["ort_goal"] = "-" if goal is None or ort is None else \
            f">= {goal}x: {'met' if ort >= goal else 'NOT met'}"
        row["goal_ns"] = row.get("onnxruntime_ns") / goal if goal is not None and row.get("onnxruntime_ns") else None
        rows.append(row)
    return rows, base_name or "model auto"


def peer_columns(peers) -> list:
    cols = [("size", "size", "s"), ("auto_ns", "auto ns/el", _ns)]
    for p in peers:
        cols += [(p.name + "_ns", p.name, _ns), (p.name, f"{p.name}/auto", _x)]
    return cols + [("ort_goal", "issue 13 goal vs ORT", "s"), ("goal_ns", "goal ns/el", _ns),
                   ("traffic", "auto B/el", "d"), ("bound_ns", "bound ns/el", _ns), ("of_bound", "of bound", _pct)]


def thread_rows(ks: Kernels, shapes, rng, caches, timing_kw, copier) -> list[dict] | None:
    if not threads_supported():
        return None
    return measure_threads(ks.tuned or ks.model, shapes, copier, rng, caches, timing_kw)


def dram_rows(ks: Kernels, n: int, rng, caches, timing_kw) -> tuple[list[dict], dict]:
    """Two-pass (default schedule, and each streaming-store knob on) at a single row of n vs the
    12 B/element bound at the non-temporal copy's bandwidth, all interleaved."""
    t = ks.target
    kern = {"two-pass": compile_kernel(OP, algorithm="two-pass", target=t.name)}
    knobs = dict(get_backend("c").tuning_knobs)
    for knob in stream_knobs():
        default = getattr(kern["two-pass"].schedule, knob)
        # the backend's tuning values of the knob other than the default (else: switched on)
        for value in [v for v in knobs.get(knob, (True,)) if v != default]:
            try:
                kern[f"two-pass {knob}={value}"] = compile_kernel(OP, algorithm="two-pass", target=t.name,
                                                                  schedule={knob: value})
            except (UsageError, TypeError) as e:
                log(f"issue13: two-pass with {knob}={value} not built: {e}")
    copier = CopyKernel(t)
    bufs = _buffers(rng, 1, n, _pairs(caches, 1, n))
    v = {name: _rotating([_call(k, x, y) for x, y in bufs]) for name, k in kern.items()}
    v["copy"] = _rotating([copier.variant(x, y, False) for x, y in bufs])
    if copier.streams:
        v["copy (non-temporal)"] = _rotating([copier.variant(x, y, True) for x, y in bufs])
    tm = time_interleaved(v, **timing_kw)
    reps = copier.reps(n)
    copy_gbps = {name: COPY_BYTES * n * reps / tm[name].median / 1e9 for name in v if name.startswith("copy")}
    bound_name = "copy (non-temporal)" if "copy (non-temporal)" in copy_gbps else "copy"
    bw = copy_gbps[bound_name]
    rows = []
    for name in kern:
        s = tm[name].median
        g = TWO_PASS_BYTES * n / s / 1e9
        rows.append(dict(size=size_label(1, n), variant=name, ns=s / n * 1e9, gbps=g,
                         bound_ns=TWO_PASS_BYTES / bw, fraction=g / bw, noise=tm[name].spread))
    del bufs
    return rows, {"copy_gbps": copy_gbps, "bound": bound_name, "level": caches.level_of(8 * n),
                  "stream_knobs": stream_knobs()}


DRAM_COLUMNS = [("size", "size", "s"), ("variant", "variant", "s"), ("ns", "ns/el", _ns), ("gbps", "GB/s @12B", ".2f"),
                ("bound_ns", "bound ns/el", _ns), ("fraction", "of bound", _pct), ("noise", "noise", _pct)]


def plot_rows(ks: Kernels, results: dict) -> list[dict]:
    """``softgen bench``-style rows for ``softgen.benchmark.plot``: the autos, the sweep's best at
    each size, the peers and the copy; auto (tuned, else model) carries the roofline's traffic."""
    rows = []
    main_auto = "tuned auto" if ks.tuned is not None else "model auto"
    for (R, n), t in results.items():
        N = R * n
        sweep = {k: v for k, v in t.items() if k.startswith("sweep ")}
        named = {k: t.get(CALL + k, v) for k, v in t.items() if not k.startswith(("_", "sweep ", "copy", CALL))}
        if sweep:
            final = [v for k, v in sweep.items() if k in t.get("_first", ())]
            named["best of the sweep"] = min(final or sweep.values())
        for name, sec in named.items():
            kind = "peer" if name.startswith("peer ") else "softgen"
            k = {"tuned auto": ks.tuned, "model auto": ks.model}.get(name)
            rows.append(dict(variant=name[5:] if kind == "peer" else name, kind=kind, rows=R, n=n, elements=N,
                             size=size_label(R, n), ns_per_element=sec / N * 1e9, auto=name == main_auto,
                             bytes_per_element=traffic_at(k, n) if k is not None else None,
                             copy_gbps=t["_copy_gbps"]))
        rows.append(dict(variant="copy", kind="copy", rows=R, n=n, elements=N, size=size_label(R, n),
                         ns_per_element=COPY_BYTES / t["_copy_gbps"], auto=False, bytes_per_element=COPY_BYTES,
                         copy_gbps=t["_copy_gbps"]))
    return rows


def describe_auto(k: Kernel) -> str:
    """An auto kernel's variants by n (a plain kernel: its algorithm and schedule)."""
    if not k.dispatcher:
        return f"{k.algorithm} ({k.schedule}) at every n"
    return "; ".join(f"{e.algorithm} ({tune_label(e.algorithm, e.schedule)}) for n in "
                     f"[{e.n_min}, {e.n_max if e.n_max is not None else 'inf'}]"
                     + ("" if (e.rows_min, e.rows_max) == (1, None) else f", {e.rows_range()}") for e in k.dispatch.entries)


def cpu_slug(ident: dict) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", (ident.get("model_name") or ident.get("arch") or "cpu").lower()).strip("-")
    return s or "cpu"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="host", help="one target (default: host, the best runnable)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, sampled sweep, few rounds (seconds)")
    ap.add_argument("--sizes", help=f"single rows (default {SIZES}; quick {QUICK_SIZES})")
    ap.add_argument("--shapes", help=f"batched shapes (default {SHAPES}; quick {QUICK_SHAPES})")
    ap.add_argument("--against", default="onnxruntime,torch,numpy", help="peers (default onnxruntime,torch,numpy)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="directory for <date>-<cpu>.{txt,json} (default bench/results)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", default="abcd",
                    help="which tables: letters of abcd (default all; (a) and (d) come from one run per size)")
    ap.add_argument("--final-seconds", type=float, default=None,
                    help=f"per size, the finalists' re-run: rounds until their medians are known to tune.TOLERANCE, "
                         f"at most this long (default {FINAL_S:g}; quick 0: one more fixed run)")
    ap.add_argument("--final-rounds", type=int, default=FINAL_ROUNDS,
                    help=f"at most this many rounds in the finalists' re-run (default {FINAL_ROUNDS})")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except UsageError as e:
        print(f"issue13: error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    t0 = time.monotonic()
    out = Path(args.out)
    if not out.is_dir():
        raise UsageError(f"--out: directory {str(out)!r} does not exist")
    target = get_target(args.target)
    if not target.runnable:
        raise UsageError(f"target {target.name} cannot run on this CPU (missing {', '.join(target.missing_features())})")
    tables = set(args.tables.lower())
    if not tables or not tables <= set("abcd"):
        raise UsageError(f"--tables: letters of abcd, got {args.tables!r}")
    final_s = (0.0 if args.quick else FINAL_S) if args.final_seconds is None else args.final_seconds
    if not (final_s >= 0 and math.isfinite(final_s)) or args.final_rounds < 1:
        raise UsageError("--final-seconds must be >= 0 and --final-rounds >= 1")
    sizes = [] if (args.sizes or "").strip().lower() == "none" else \
        parse_sizes(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    shapes = [] if (args.shapes or "").strip().lower() == "none" else \
        parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else SHAPES))
    if not sizes and not shapes:
        raise UsageError("--sizes none and --shapes none: nothing to measure")
    tshapes = parse_sizes(QUICK_THREAD_SIZES if args.quick else THREAD_SIZES) + \
        parse_shapes(QUICK_THREAD_SHAPES if args.quick else THREAD_SHAPES)
    against = parse_against(args.against)
    timing_kw = dict(min_time=0.002, budget=0.01, min_rounds=3, max_rounds=3) if args.quick else \
        dict(min_time=0.02, budget=0.3, min_rounds=7, max_rounds=25)
    caches = machine.caches()
    rng = np.random.default_rng(args.seed)
    notes: list[str] = []
    log(f"issue13: building kernels for {target.name}")
    ks = build(target.name, args.quick, args.seed, sizes + shapes)
    peers, skipped = load_peers(against, OP)
    all_shapes = sizes + shapes
    copier = CopyKernel(ks.target)
    if "c" in tables and not sizes:
        notes.append("(c) skipped: no single-row size (--sizes none)")
        tables.discard("c")
    per_size = bool(tables & set("ad"))
    bar = Progress(len(all_shapes) * per_size + len(tshapes) * ("b" in tables) + ("c" in tables), desc="issue13")
    results: dict = {}
    trows, drows, dram = None, [], {}
    try:
        for R, n in all_shapes if per_size else ():
            results[(R, n)] = measure_size(ks, peers, copier, R, n, rng, caches, timing_kw, notes,
                                           final_s, args.final_rounds)
            bar.update(size_label(R, n))
        if "b" in tables:
            trows = thread_rows(ks, tshapes, rng, caches, timing_kw, copier)
            for _ in tshapes:
                bar.update("threads")
        if "c" in tables:
            dram_n = max(n for R, n in sizes)
            drows, dram = dram_rows(ks, dram_n, rng, caches, timing_kw)
            bar.update("DRAM")
    finally:
        bar.close()
    arows = auto_rows(ks, results)
    prows, peer_base = peer_rows(results, peers, ks)
    info = machine_info()
    ident = machine.identity()
    date = _dt.date.today().isoformat()
    stem = f"issue13-{date}-{cpu_slug(ident)}-{target.name}" + ("-quick" if args.quick else "") \
        + (f"-{''.join(sorted(tables))}" if tables != set("abcd") else "")
    txt = []
    txt.append(f"# issue 13 closing tables: softgen {__version__} (commit {info.get('commit')}), {info['date']}")
    txt.append(f"# cpu: {machine.describe()}")
    txt.append(f"# target {target.name} ({target.summary}); {info.get('cc')} ({runtime.compiler_id(target)[0]}); "
               f"python {info['python']}; load average "
               + (f"{info['loadavg'][0]:.2f}" if info.get("loadavg") else "?"))
    txt.append(f"# op {OP}; 1 thread unless said; per size every candidate timed interleaved (medians, "
               f"{timing_kw['min_rounds']}-{timing_kw['max_rounds']} rounds, samples >= "
               f"{timing_kw['min_time'] * 1e3:g} ms), then the autos and the sweep's finalists (its {FINALISTS} fastest and any other "
               f"within the first run's noise of the best, {FINALISTS_MAX} at most: tune.pick_finalists) again in a fresh "
               f"interleaved run (their medians stand: the best of many noisy medians is biased low)"
               + f"; softgen's kernels of one buffer pair up to {C_LOOP_MAX} elements called back to back in C "
                 f"(tune.CLoop, as softgen tune times them), auto also through a Python call for (d)"
               + (f", rounds until their medians are known to 2% (tune.measure), at most {args.final_rounds} rounds or "
                  f"{final_s:g} s" if final_s > 0 else "")
               + ("; --quick: tiny sizes, sampled sweep, 3 rounds: NOT a measurement" if args.quick else ""))
    txt.append(f"# wall {time.monotonic() - t0:.0f} s")
    txt.append("# Measured on a shared machine unless said otherwise: compare ratios within a row "
               "(interleaved), not absolute times across runs.")
    txt.append(f"# tuned auto: {ks.tuned.dispatch.basis if ks.tuned is not None and ks.tuned.dispatch else 'no tuning records for this target on this machine (run softgen tune): column empty'}")
    txt.append(f"# model auto: {describe_auto(ks.model)}")
    if ks.tuned is not None:
        txt.append(f"# tuned auto: {describe_auto(ks.tuned)}")
    txt.append(f"# previous auto (before issue 13): {ks.previous_label}")
    timed = sum(len(v) for v in ks.sweep.values())
    txt.append(f"# sweep: per size, softgen tune's candidates uncut: the algorithms within {PRUNE_RATIO}x of the "
               f"model's cheapest at the row's cache level x (every unroll x accumulators | every combination of "
               f"the level's knobs, priced) of the C backend's knobs {dict(get_backend('c').tuning_knobs)} "
               f"(levels {dict(get_backend('c').tuning_knob_levels)}); {timed} of "
               f"{sum(ks.candidates.values())} candidates timed" + (" (sampled)" if timed < sum(ks.candidates.values()) else "")
               + f", {ks.built} distinct kernels; per size: "
               + ", ".join(f"{size_label(R, n)} {len(v)}" for (R, n), v in ks.sweep.items()))
    for name, p in ((p.name, p) for p in peers):
        txt.append(f"# peer {name} {p.version}: threads {p.threads}")
    for name, why in skipped.items():
        txt.append(f"# peer {name} skipped: {why}")
    if "a" in tables:
        txt += ["", "## (a) auto vs the best variant of the sweep vs the previous auto (ns/element)", "",
                render_table(arows, AUTO_COLUMNS), "",
                "tuned/best, model/best: time over the sweep's best (issue 13: <= 1.05x tuned, <= 1.15x model); "
                "prev/auto: previous auto's time over auto's (tuned, else model; issue 13: >= 1.3x at 256K-1M on avx2); "
                "max noise: the largest IQR/median of the first run (every candidate and peer); final noise: of the "
                "finalists' re-run (the autos and the sweep's finalists), whose medians the ratios use."]
    if "b" in tables:
        txt += ["", "## (b) threads (auto: tuned, else model)", ""]
        txt.append(render_table(trows, THREAD_COLUMNS) + "\n\n" + THREAD_NOTE if trows is not None else
                   "not available: Kernel.__call__ has no threads= argument in this softgen (issue 13's thread pool "
                   "has not landed)")
    if "c" in tables:
        txt += ["", f"## (c) DRAM: two-pass at a {size_label(1, dram_n)} row ({dram['level']}) vs "
                f"{TWO_PASS_BYTES} B/element at the {dram['bound']} bandwidth", "",
                render_table(drows, DRAM_COLUMNS), "",
                "copy GB/s (8 B/element): " + ", ".join(f"{k} {v:.2f}" for k, v in dram["copy_gbps"].items())
                + ("; streaming-store knobs of the Schedule: " + ", ".join(dram["stream_knobs"]) if dram["stream_knobs"]
                   else "; the Schedule has no streaming-store knob (two-pass default schedule only)")]
    if "d" in tables:
        txt += ["", f"## (d) peers vs {peer_base} (peer time / auto time: > 1 = softgen faster)", "",
                render_table(prows, peer_columns(peers)) if peers else "no peers installed", "",
                "goal ns/el: ONNX Runtime's time over issue 13's goal (what auto must reach); bound ns/el: auto's plan's "
                "traffic (B/el: reads + writes, f32; lazymax without its max sweep) at the copy kernel's bandwidth at "
                "that size, timed in the same interleaved run (a row of 256K-4M elements lives in L3: its L3 bound); a "
                "goal below the bound needs a plan with less traffic"]
    txt += [f"note: {n}" for n in notes]
    text = "\n".join(txt) + "\n"
    res = {"softgen": __version__, "commit": info.get("commit"), "target": target.name, "quick": args.quick,
           "machine": {"describe": machine.describe(), "identity": ident, "fingerprint": machine.fingerprint(),
                       "info": info},
           "timing": timing_kw, "final": {"seconds": final_s, "rounds": args.final_rounds},
           "tables": "".join(sorted(tables)), "tuned": ks.tuned is not None,
           "model_dispatch": ks.model.dispatch.as_list() if ks.model.dispatcher else None,
           "tuned_dispatch": ks.tuned.dispatch.as_list() if ks.tuned is not None and ks.tuned.dispatcher else None,
           "previous_auto": ks.previous_label,
           "sweep": {size_label(R, n): list(v) for (R, n), v in ks.sweep.items()},
           "sweep_total": sum(ks.candidates.values()), "sweep_kernels": ks.built,
           "peers": {p.name: {"version": p.version, "threads": p.threads} for p in peers}, "skipped": skipped,
           "auto": arows, "threads": trows, "dram": {"rows": drows, **dram}, "peer_ratios": prows,
           "raw": {size_label(R, n): {k: v for k, v in t.items()} for (R, n), t in results.items()},
           "notes": notes, "wall_seconds": round(time.monotonic() - t0, 1)}
    res["plot"] = None
    try:
        if not results:
            raise UsageError("no per-size table (--tables without a or d)")
        mres = {"rows": plot_rows(ks, results), "softgen": __version__, "op": OP,
                "machine": {"caches": caches.sizes(), "identity": ident, "fingerprint": machine.fingerprint()}}
        res["plot"] = str(plot(mres, out / f"{stem}.png"))
        text += f"plot: {stem}.png (ns/element vs elements per call; open markers: batched shapes)\n"
    except UsageError as e:      # matplotlib is not installed
        text += f"plot: not drawn ({e})\n"
    (out / f"{stem}.txt").write_text(text)
    (out / f"{stem}.json").write_text(to_json(res))
    print(text, end="")
    log(f"issue13: wrote {out / stem}.txt and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
