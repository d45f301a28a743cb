"""``softgen.tune`` / ``softgen tune``: measure which variant is fastest per size class on this
machine and remember it in the tuning database (``tunedb``), where ``compile(algorithm="auto")``
finds it (``autotable.tuned_table``).

Per size class (one per requested size):

1. *candidates*: the algorithms that apply to the op x the schedules the backend declares as
   tunable (``Backend.tuning_knobs``, e.g. the C backend's unroll {2,4,8} x accumulators {1,2,4},
   each applied over the target file's default schedule and kept only if ``Schedule`` validates
   it). Knobs bound to cache levels (``Backend.tuning_knob_levels``: the C backend's non-temporal
   stores and prefetch distance for DRAM classes, exp variants in cache) are added per class over
   the default schedule, on the ``KNOB_ALGORITHMS`` algorithms the model ranks first (a class at the
   last-level cache's edge, its working set at least half of it, gets DRAM's knobs too, on DRAM's
   first: ``knob_levels``); a knob a
   target lacks (``tuning_knob_requires``: stream needs ``[isa] STREAM``) is not offered.
   No per-target Python table: knobs are data on the backend, defaults data in the target file.
2. *pruning by the model* (``costmodel``): an algorithm whose modelled cycles per element at the
   size's cache level are more than ``PRUNE_RATIO`` times the best one's is not timed, nor is a
   knob schedule whose exp variant makes it more than ``KNOB_PRUNE_RATIO`` times (each variant
   costs its ``[cost.exp]`` hint: avx2's t32, a gather, is not timed), nor lazymax where the plan
   has no ``passes.lazy_max`` form or R rows run at once (the same kernel). The model has no other schedule term, so among one
   algorithm's schedules it keeps the ``keep`` nearest the target's default (in log2 distance of each knob; the default first;
   by default ``KEEP``, and all of them for rows in L1d, which are compute-bound and cheap to time). The count pruned is
   reported per class.
3. *measurement* (``benchmark``'s samplers and buffers: x and y written before timing, rotated
   beyond the last-level cache for DRAM sizes; up to ``C_LOOP_MAX`` elements each candidate's
   calls run back to back in C, ``CLoop``: a call from Python costs about what a 1K row does, and
   would bury the candidates' differences in its noise): calibration doubles as warm-up, then interleaved
   rounds (rotated order) until the median's 95% confidence interval (1.57 IQR / sqrt(rounds),
   the notch of a box plot) is within ``TOLERANCE`` of it for every candidate within 10% of the
   best, or the class's share of the budget is spent (at least ``MIN_ROUNDS`` rounds).
4. *finalists* (``pick_finalists``): the best ``FINALISTS`` and every other candidate the first run
   cannot tell from the best (its median's 95% confidence interval overlaps the best's), up to
   ``FINALISTS_MAX``, are re-measured in a fresh interleaved run (new calibration); the winner is
   the fastest there. A noisy first run (a batch of 37 candidates gets ~5 rounds in its budget share)
   thus re-times more of them: at 4096 x 512 on avx512 a quiet run's first rounds had ranked pipeline
   (the sweep's best, 0.84x lazymax's time) below the top three, which it then never met again.
   Its record holds its median ns/element, its
   noise (IQR / median of the final run), the rounds, and each other candidate's time ratio to it
   (finalists from the final run, the others from the first).

Size classes: the classes of n tile n >= 1. Between two tuned sizes the boundary is the end of the
smaller size's cache level when the two sizes' working sets (8 B x n) fall in different levels of
``machine.caches()`` (time per element steps at level boundaries and is flat within one, so a
measurement stands for its level), else the geometric midpoint (sizes are chosen on a log scale).
The first class starts at 1, the last has no bound. The default size list gains the last-level
cache's edge (``edge_sizes``: n with 8 B x n = L3) when none of its sizes is near it. Rows: the
variant of a class of single rows applies to calls of fewer than ``costmodel.BATCH_ROWS`` rows, of a
batch class to the others (``autotable.tuned_table``: the dispatcher picks by rows, then n);
``--shapes`` sets the rows timed.

Threads (FFTW's plans include the thread count): candidates are timed on one thread, and the
winner is the class's one-thread plan (record ``threads`` 1). For a batch shape (rows > 1) on a
machine of several cores, per count c in 2 .. ``machine.cores()`` the finalists are timed again at
c threads, interleaved with the one-thread plan on one thread, and the fastest is the class's
c-thread plan (record ``threads`` c, its own time; "threads=1" among its runners-up: the
one-thread plan's time over it). Both carry the rows class 2.. ("measured on batches"); single
rows record the one-thread plan with the rows class 1.. (it says nothing about batches). The
dispatcher's variant for one n and kind of call is one, so ``autotable.tuned_table`` takes each class's variant from its
one-thread plan (a call on one thread never runs a variant chosen on two) and caps "auto" for
batches at the count whose plan was fastest, 1 included (the model's grain decides below it).

Budget: ``budget_s`` covers compiling and timing; each class gets an equal share of what is left
when it starts. Ctrl-C (KeyboardInterrupt) keeps the classes already recorded and returns.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np

from . import costmodel, machine, ops, passes, tunedb
from .backends import get_backend
from .benchmark import (
    Progress,
    Timing,
    Variant,
    _buffers,
    _quartiles,
    _rotating,
    calibrate,
    count_label,
    max_rel_err,
    parse_count,
    parse_shapes,
    parse_sizes,
    sampler,
)
from .errors import UsageError
from .kernel import compile as compile_kernel
from .matrix import MatMulPhase
from .schedule import AttentionSchedule, GemmSchedule, Schedule, default_schedule
from .targets import get_target, host_arch, is_group_spec, target_group

try:  # the C extension's timing loop; without it candidates are timed through Python calls
    from ._fastcall import repeat as _repeat
except ImportError:  # pragma: no cover - depends on the install
    _repeat = None

# 128: short rows in L1d their own class (to the geometric midpoint with 1K, 362): lazymax, offered in
# L1d, wins from ~512 (avx512, timed in C: 1.07x at 512, 1.10x at 1K) and loses below (0.94x at 256,
# 0.88x at 128, bench/results/l1lazymax-2026-12-01-amd-epyc-loaded-s25.txt); a 1K class to n = 1 gave it them
DEFAULT_SIZES = "128,1K,64K,1M,16M"
DEFAULT_BUDGET = 60.0       # seconds for one op and target, compiling included
PRUNE_RATIO = 1.5           # the model's cost over the best one's beyond which an algorithm is not timed
KNOB_PRUNE_RATIO = 2.0      # the same for a knob schedule's exp variant (avx2's t32, a gather: 3x)
KEEP = 3                    # schedules per algorithm timed (the nearest the target's default)
KNOB_ALGORITHMS = 1         # the level-bound knobs (stream, prefetch, exp) are timed on this many
                            # algorithms, the model's cheapest at the class's level (within the budget)
FINALISTS = 3               # re-measured at least (the first run's fastest) ...
FINALISTS_MAX = 6           # ... and at most: every candidate whose first-run notch overlaps the best's
TOLERANCE = 0.02            # relative half-width of the median's 95% CI at which rounds stop
MIN_ROUNDS = 5
MAX_ROUNDS = 60
MIN_TIME = 0.01             # seconds per sample
N_MAX = 1 << 62             # the last class's upper bound in its record
ROWS_MAX = 1 << 62
C_LOOP_MAX = 1 << 16        # rows x n up to which candidates are timed in C (CLoop): a Python call's
                            # ~0.3 us is >= 2% of a call there (a 1K row: ~0.3 us, half the call)


@dataclass
class ClassResult:
    """The outcome of one size class: its record and what was measured."""
    rows: int
    n: int
    n_range: tuple
    level: str
    candidates: int
    pruned: int
    timed: list                     # (label, ns/element) of the first run, fastest first
    record: object                  # tunedb.TuningRecord: the one-thread plan
    seconds: float
    thread_records: list = field(default_factory=list)   # a batch's plans at 2 .. cores threads


@dataclass
class TuneResult:
    op: str
    params: dict
    target: str
    backend: str
    budget_s: float
    classes: list = field(default_factory=list)       # ClassResult, in size order
    requested: int = 0
    interrupted: bool = False
    wall_seconds: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def records(self) -> list:
        """The one-thread plan of each class (``ClassResult.thread_records``: batches' other counts)."""
        return [c.record for c in self.classes]

    def report(self) -> str:
        """The result as text (what ``softgen tune`` prints)."""
        out = [f"tuned {self.op} for {self.target}/{self.backend} on {machine.describe()}: "
               f"{len(self.classes)}/{self.requested} size classes in {self.wall_seconds:.1f} s "
               f"(budget {self.budget_s:g} s)"]
        for c in self.classes:
            r = c.record
            hi = "inf" if r.n_max >= N_MAX else str(r.n_max)
            nxt = min(r.runners_up.items(), key=lambda t: t[1]) if r.runners_up else None
            out.append(f"  {count_label(c.n):>5} ({c.level:<4}) n {r.n_min}..{hi}: {label(r.algorithm, r.schedule)} "
                       f"{r.ns_per_element:.3f} ns/el, noise {100 * r.noise:.1f}%"
                       + (f", next {nxt[0]} {nxt[1]:.2f}x" if nxt else "")
                       + f"; timed {len(c.timed)} of {c.candidates} candidates ({c.pruned} pruned by the model), "
                         f"{c.seconds:.1f} s")
            for tr in c.thread_records:
                one = tr.runners_up.get("threads=1")
                out.append(f"        {tr.threads} threads: {label(tr.algorithm, tr.schedule)} {tr.ns_per_element:.3f} ns/el"
                           + (f" ({one:.2f}x faster than the one-thread plan on one thread)" if one else ""))
        out += [f"note: {n}" for n in self.notes]
        if self.interrupted:
            out.append(f"interrupted: kept the {len(self.classes)} completed size class(es)")
        out.append(f"tuning database: {tunedb.default().path}")
        return "\n".join(out)


@dataclass
class GroupTuneResult:
    """``tune`` of a target group (``x86-64``, ``aarch64``, ``"avx2,avx512"`` or a list): one
    ``TuneResult`` per member this CPU runs (the budget split evenly between them), and why the
    others were skipped. Reads like a ``TuneResult`` (``records``, ``report()``, ``interrupted``)."""
    op: str
    target: str                                       # the group's name
    budget_s: float
    results: list = field(default_factory=list)       # TuneResult per member tuned, best member first
    skipped: list = field(default_factory=list)       # a note per member not tuned
    interrupted: bool = False
    wall_seconds: float = 0.0

    @property
    def records(self) -> list:
        return [r for res in self.results for r in res.records]

    @property
    def notes(self) -> list:
        return self.skipped + [f"{res.target}: {n}" for res in self.results for n in res.notes]

    def report(self) -> str:
        head = (f"tuned {self.op} for the members of {self.target} this CPU runs "
                f"({', '.join(r.target for r in self.results)}) in {self.wall_seconds:.1f} s "
                f"(budget {self.budget_s:g} s, split evenly)")
        return "\n".join([head, *(f"skipped: {n}" for n in self.skipped),
                          *(r.report() for r in self.results)])


def _tune_group(op: str, spec, budget_s, **kw) -> GroupTuneResult:
    """``tune`` of each member of the group ``spec`` this CPU runs, with an equal share of the
    budget; stops at a Ctrl-C (the members tuned so far are kept)."""
    t0 = time.monotonic()
    group, budget = target_group(spec), _parse_budget(budget_s)
    res = GroupTuneResult(op, group.name, budget)
    if group.arch not in ("any", host_arch()):
        raise UsageError(f"tune: the {group.name} library ({group.arch}) does not run on this {host_arch()} "
                         f"machine; tuning measures, so tune on a machine of that architecture")
    runs = [t for t in group.members if t.runnable]
    res.skipped = [f"{t.name}: this CPU cannot run it (missing {', '.join(t.missing_features())})"
                   for t in group.members if not t.runnable]
    for t in runs:
        r = tune(op, target=t.name, budget_s=budget / len(runs), **kw)
        res.results.append(r)
        if r.interrupted:
            res.interrupted = True
            break
    res.wall_seconds = time.monotonic() - t0
    return res


def label(algorithm: str, schedule: dict) -> str:
    """A candidate's short name, e.g. ``3pl u4a2``, ``2p u4a2 nt pf256``, ``3pl u4a2 p6c2``; a GEMM
    schedule (matrix ops): ``gemm 5x2v kc256 nc64``."""
    if "br" in schedule:
        return f"attn br{schedule['br']} bc{schedule['bc']}" + (f" w{schedule['wide']}" if schedule.get("wide") else "")
    if "mr" in schedule:
        return (f"gemm {schedule['mr']}x{schedule['nv']}v kc{schedule['kc']} nc{schedule['nc']}"
                + (f" ku{schedule['ku']}" if schedule.get("ku", 1) > 1 else ""))
    extra = ("nt" if schedule.get("stream") else None,
             f"pf{schedule['prefetch']}" if schedule.get("prefetch") else None,
             schedule.get("exp") or None, f"r{schedule['rows']}" if schedule.get("rows", 1) > 1 else None,
             "lz" if schedule.get("lazymax") else None, "pp" if schedule.get("pipeline") else None)
    return " ".join([f"{passes.SHORT[algorithm]} u{schedule['unroll']}a{schedule['accumulators']}"]
                    + [e for e in extra if e])


def _offered(backend, target, knob: str) -> bool:
    req = backend.tuning_knob_requires.get(knob)
    return req is None or bool(getattr(target, req))


def schedules(backend, target) -> list[Schedule]:
    """The target's default schedule, then every valid combination of the backend's knobs that
    apply at every level (not in ``tuning_knob_levels``) over it."""
    base = default_schedule(target.schedule, target.lanes, target.shifted_exp)
    out = {base: None}
    knobs = {k: v for k, v in backend.tuning_knobs.items()
             if k not in backend.tuning_knob_levels and _offered(backend, target, k)}
    for combo in product(*knobs.values()):
        try:
            out[default_schedule(target.schedule, target.lanes, target.shifted_exp, **dict(zip(knobs, combo)))] = None
        except UsageError:
            continue
    return list(out)


def level_schedules(backend, target, level: str, base: Schedule, rows: int = 1,
                    batch_level: str = "") -> list[Schedule]:
    """The schedules a size class at cache ``level`` adds: every combination of the backend's
    level-bound knobs (``tuning_knob_levels``) that apply at ``level`` (and on the target) over
    ``base``, other than ``base`` itself (DRAM on avx2: stream x prefetch; in cache: the exp variants;
    for calls of ``rows`` rows, L1d and L2 rows: R rows at once, R <= rows). Batches (rows > 1) whose
    working set is at ``batch_level`` also get the knobs of ``tuning_knob_batch_levels`` there
    (lazymax for a batch streamed from L2, L3 or memory, whatever its rows' length)."""
    knobs = {k: v for k, v in backend.tuning_knobs.items()
             if (level in backend.tuning_knob_levels.get(k, ())
                 or rows > 1 and batch_level in backend.tuning_knob_batch_levels.get(k, ()))
             and _offered(backend, target, k)}
    out: dict[Schedule, None] = {}
    for combo in product(*knobs.values()):
        try:
            s = default_schedule(base, target.lanes, target.shifted_exp, **dict(zip(knobs, combo)))
        except UsageError:
            continue
        if s != base and s.rows <= rows:
            out[s] = None
    return list(out)


def priced(plan: passes.Plan, target, level: str, scheds: list[Schedule], best: float) -> list[Schedule]:
    """``scheds`` (of one algorithm's ``plan``) but those whose exp variant makes the model's cost at
    ``level`` more than ``KNOB_PRUNE_RATIO`` x ``best`` (each variant costs its ``[cost.exp]`` hint:
    avx2's t32, a gather, is not timed), and lazymax or pipeline where it would generate the same
    kernel as without it (``costmodel.knobs_apply``: no ``passes.lazy_max`` form, a
    ``passes.pipeline_refusal``); the other knobs have no model term and are all kept."""
    scheds = [s for s in scheds if costmodel.knobs_apply(s.as_dict(), plan)]
    if not target.cost:
        return list(scheds)
    return [s for s in scheds
            if costmodel.cycles_per_element(plan, target, level, s.exp, s.lazymax) <= KNOB_PRUNE_RATIO * best]


def _distance(s: Schedule, base: Schedule) -> float:
    return sum(abs(math.log2(getattr(s, k) / getattr(base, k))) for k in ("unroll", "accumulators", "block"))


def edge_sizes(ns: list[int], caches: machine.Caches) -> list[int]:
    """Sizes to tune besides the sorted ``ns`` (the default list) so that no class spans the
    last-level cache's edge: the model's last L3 row (its working set the whole L3) when no size
    of ``ns`` has a working set in [L3 / 2, 2 L3]. A row there sees neither L3's nor DRAM's time
    (the L3 is shared with y, other data, other cores), and without it the class of an in-L3 size
    reaches up to the edge (on a 32 MB L3: 1M measured, used up to 4M)."""
    l3 = caches.L3
    if any(l3 // 2 <= costmodel.BYTES_PER_N * n <= 2 * l3 for n in ns):
        return []
    edge = costmodel.level_limits(caches)["L3"]
    return [edge] if edge and edge not in ns else []


def knob_levels(caches: machine.Caches, ws: int) -> tuple[str, ...]:
    """The cache levels whose level-bound knobs (``Backend.tuning_knob_levels``) a size of working set
    ``ws`` bytes gets: its own level's, and beyond the last-level cache's too where it fills at least
    half of it (the LLC's edge, as ``edge_sizes``: shared with y, other data and other cores, such a
    row streams partly from memory; at 4M on a 32 MiB L3, bench/results/issue13-2026-12-01-*, two-pass
    ran 0.420 ns/el and the tuned three-pass-reload 0.460, and two-pass's non-temporal stores, a DRAM
    knob, were not a candidate)."""
    lvl = caches.level_of(ws)
    return (lvl, "DRAM") if lvl == machine.LEVELS[-1] and 2 * ws >= caches.L3 else (lvl,)


def _cheapest(plans: dict, target, level: str) -> float:
    return min(costmodel.cycles_per_element(pl, target, level) for pl in plans.values()) if target.cost else 0.0


def knob_algorithms(plans: dict, target, level: str, kept: list[str]) -> list[str]:
    """The ``KNOB_ALGORITHMS`` algorithms of ``kept`` that the level-bound knobs of ``level`` are timed
    on: the model's cheapest at ``level`` (without ``[cost]``: the first kept)."""
    if not target.cost:
        return kept[:KNOB_ALGORITHMS]
    return sorted(kept, key=lambda a: costmodel.cycles_per_element(plans[a], target, level))[:KNOB_ALGORITHMS]


def size_classes(ns: list[int], caches: machine.Caches) -> list[tuple[int, int]]:
    """The class of n of each of the sorted, distinct ``ns`` (see the module docstring)."""
    limits = costmodel.level_limits(caches)
    out: list[tuple[int, int]] = []
    for i, n in enumerate(ns):
        lo = 1 if i == 0 else out[-1][1] + 1
        if i + 1 == len(ns):
            out.append((lo, N_MAX))
            continue
        m = ns[i + 1]
        lvl = caches.level_of(costmodel.BYTES_PER_N * n)
        if lvl != caches.level_of(costmodel.BYTES_PER_N * m):
            hi = limits[lvl]
        else:
            hi = math.isqrt(n * m)
        out.append((lo, min(max(hi, n), m - 1)))
    return out


def _ci(xs: list[float]) -> float:
    """Relative half-width of the median's 95% confidence interval (the box plot's notch)."""
    q1, q3 = _quartiles(sorted(xs))
    med = statistics.median(xs)
    return 1.57 * (q3 - q1) / math.sqrt(len(xs)) / med if med > 0 else math.inf


def pick_finalists(first: dict[str, Timing], least: int = FINALISTS, most: int = FINALISTS_MAX) -> list[str]:
    """The candidates of a first run ``first`` to re-measure, fastest first: the ``least`` fastest,
    then every other whose median's 95% confidence interval (``_ci``) overlaps the fastest one's,
    ``most`` in all at most (the first run cannot order them: its best of many noisy medians is
    biased low, and a true winner may rank below the top few)."""
    ranked = sorted(first, key=lambda k: first[k].median)
    if not ranked:
        return []
    top = first[ranked[0]]
    reach = top.median * (1 + _ci(top.samples or [top.median]))
    out = ranked[:least]
    out += [k for k in ranked[least:]
            if first[k].median * (1 - _ci(first[k].samples or [first[k].median])) <= reach]
    return out[:max(most, least)]


def measure(variants: dict[str, Variant], deadline: float, *, min_time: float = MIN_TIME,
            tolerance: float = TOLERANCE, min_rounds: int = MIN_ROUNDS,
            max_rounds: int = MAX_ROUNDS) -> dict[str, Timing]:
    """Seconds per call of each variant: calibration (= warm-up), one more warm-up sample, then
    interleaved rounds until the median's confidence is tight for the contenders (within 10% of
    the best) or ``deadline`` (``time.monotonic()``) passes, ``min_rounds`` at least."""
    names = list(variants)
    samplers = {k: sampler(variants[k]) for k in names}
    numbers = {k: calibrate(samplers[k], min_time)[0] for k in names}
    for k in names:
        samplers[k](numbers[k])
    per: dict[str, list[float]] = {k: [] for k in names}
    for r in range(max_rounds):
        start = r % len(names)
        for k in names[start:] + names[:start]:
            per[k].append(samplers[k](numbers[k]) / numbers[k])
        if r + 1 >= min_rounds:
            meds = {k: statistics.median(v) for k, v in per.items()}
            best = min(meds.values())
            if time.monotonic() >= deadline or \
                    all(_ci(per[k]) <= tolerance for k in names if meds[k] <= 1.1 * best):
                break
    out = {}
    for k, xs in per.items():
        q1, q3 = _quartiles(sorted(xs))
        out[k] = Timing(statistics.median(xs), min(xs), q1, q3, numbers[k], len(xs), xs)
    return out


class CLoop:
    """A timing variant run in C: ``timeit(number)`` is the seconds of ``number`` back-to-back calls
    of kernel ``k``'s ``<name>_mt`` on (x, y) at ``threads`` (``_fastcall.repeat``: the arrays
    checked once, no Python between the calls). At small sizes a call from Python costs about what
    the kernel does, so candidates timed through it differ by a fraction of the signal and the
    noise picks the winner (issue 13: the 1K class measured 1.2 ns/el for a 0.5 ns/el kernel)."""

    def __init__(self, k, x: np.ndarray, y: np.ndarray, threads: int):
        self.fp, self.x, self.y, self.threads = k._mt_entry(threads)[0]._softgen_ptr, x, y, threads

    def timeit(self, number: int) -> float:
        r = _repeat(self.fp, self.x, self.y, self.threads, number)
        if r.__class__ is not float:   # c_loop checked the arrays and one call
            raise RuntimeError(f"tune: the timing loop failed ({r!r})")
        return r

    def __call__(self) -> None:
        self.timeit(1)


def c_loop(k, x: np.ndarray, y: np.ndarray, threads: int) -> CLoop | None:
    """A ``CLoop`` of ``k`` on (x, y) at ``threads``, or None: no timing loop in this install, not a
    dense row kernel, or arrays it declines."""
    if _repeat is None or not k._plain:
        return None
    loop = CLoop(k, x, y, threads)
    return loop if _repeat(loop.fp, x, y, threads, 1).__class__ is float else None


def timed_variant(k, bufs: list, threads: int) -> Variant:
    """The variant timing ``k`` at ``threads`` on ``bufs``: in C (``CLoop``) for one buffer pair
    of at most ``C_LOOP_MAX`` elements, else ``k(x, out=y, threads=c)`` rotating over the pairs."""
    x, y = bufs[0]
    loop = c_loop(k, x, y, threads) if len(bufs) == 1 and x.size <= C_LOOP_MAX else None
    return loop or _rotating([("k(x, out=y, threads=c)", {"k": k, "x": xx, "y": yy, "c": threads})
                              for xx, yy in bufs])


def _parse_budget(budget) -> float:
    if isinstance(budget, str):
        text = budget.strip().lower()
        mult = 60.0 if text.endswith("m") else 1.0
        text = text[:-1] if text[-1:] in ("s", "m") else text
        try:
            budget = float(text) * mult
        except ValueError:
            raise UsageError(f"tune: budget {budget!r} is not a duration like 60s, 2m or 30") from None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
            or budget <= 0:
        raise UsageError(f"tune: budget must be a finite number of seconds > 0, got {budget!r}")
    return float(budget)


def _shapes(sizes, shapes) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    if sizes is None and shapes is None:
        sizes = DEFAULT_SIZES
    if isinstance(sizes, str):
        out += parse_sizes(sizes)
    elif sizes is not None:
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
                raise UsageError(f"tune: sizes must be element counts >= 1, got {s!r}")
            out.append((1, int(s)))
    if isinstance(shapes, str):
        out += parse_shapes(shapes)
    elif shapes is not None:
        for s in shapes:
            if not (isinstance(s, (tuple, list)) and len(s) == 2
                    and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in s)):
                raise UsageError(f"tune: shapes must be (rows, n) pairs of counts >= 1, got {s!r}")
            out.append((int(s[0]), int(s[1])))
    if not out:
        raise UsageError("tune: no sizes or shapes")
    by_n: dict[int, int] = {}
    for rows, n in out:
        if n in by_n:
            raise UsageError(f"tune: row length {n} given twice (one size class per n)")
        by_n[n] = rows
    return sorted(((r, n) for n, r in by_n.items()), key=lambda t: t[1])


def tune(op: str = "softmax", target: str = "host", sizes=None, budget_s=DEFAULT_BUDGET, backend: str = "c", *,
         shapes=None, keep: int | None = None, progress: bool = True, stream=None, seed: int = 0,
         **params) -> TuneResult:
    """Measure the fastest variant per size class of ``op`` on ``target`` and record it in the
    tuning database (see the module docstring). ``sizes``: row lengths (ints, or text like
    "128,1K,64K,1M,16M", the default); ``shapes``: (rows, n) pairs (or "4096x512,..."); ``budget_s``:
    seconds for everything (or text like "60s", "2m"); ``params``: the op's parameters.
    Returns a ``TuneResult`` (``.report()``, ``.records``). ``target`` a group (``x86-64``,
    ``"avx2,avx512"``, a list): each member this CPU runs, a ``GroupTuneResult``."""
    if is_group_spec(target):
        return _tune_group(op, target, budget_s, sizes=sizes, backend=backend, shapes=shapes, keep=keep,
                           progress=progress, stream=stream, seed=seed, **params)
    t0 = time.monotonic()
    opdef = ops.get_op(op)
    if opdef.kind == "attention":
        return tune_gemm(opdef, target, sizes, budget_s, backend, shapes=shapes, progress=progress,
                         stream=stream, seed=seed, t0=t0, attention=True, **params)
    if opdef.kind == "matrix":
        return tune_gemm(opdef, target, sizes, budget_s, backend, shapes=shapes, progress=progress,
                         stream=stream, seed=seed, t0=t0, **params)
    if opdef.kind != "row" or opdef.call_params:
        ok = [o.name for o in ops.OPS.values() if o.kind == "row" and not o.call_params]
        raise UsageError(f"tune: op {op!r} cannot be tuned (row ops without call-time arguments: {', '.join(ok)})")
    be = get_backend(backend)
    t = get_target(target)
    if not t.runnable:
        raise UsageError(f"tune: target {t.name} cannot run on this CPU (missing "
                         f"{', '.join(t.missing_features())}); tuning measures, so it needs a runnable target")
    if not be.dispatchable:
        raise UsageError(f"tune: backend {be.name} builds no dispatcher (algorithm='auto' would not use records)")
    budget = _parse_budget(budget_s)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise UsageError(f"tune: keep must be an integer >= 1, got {keep!r}")
    todo = _shapes(sizes, shapes)
    program = ops.build_program(opdef.name, **params)            # validates the parameters
    params = dict(program.params)
    if program.op(program.output()) == "output_selected":
        raise UsageError(f"tune: op {op!r} has a selected (sparse) output; only dense row ops are tuned")
    caches = machine.caches()
    if sizes is None and shapes is None:
        todo = sorted(set(todo) | {(1, n) for n in edge_sizes([n for _, n in todo], caches)}, key=lambda t: t[1])
    classes = size_classes([n for _, n in todo], caches)
    algs = passes.applicable_algorithms(program)
    plans = {a: passes.plan(passes.apply_algorithm(program, a)) for a in algs}
    base = default_schedule(t.schedule, t.lanes, t.shifted_exp)
    scheds = sorted(schedules(be, t), key=lambda s: _distance(s, base))
    res = TuneResult(opdef.name, params, t.name, be.name, budget, requested=len(todo))
    kernels: dict[tuple, object] = {}
    rng = np.random.default_rng(seed)
    stream = sys.stderr if stream is None else stream
    bar = Progress(len(todo), desc=f"tune {opdef.name} {t.name}", enabled=progress, stream=stream)
    try:
        for i, ((rows, n), (lo, hi)) in enumerate(zip(todo, classes)):
            c0 = time.monotonic()
            deadline = c0 + max(0.0, (t0 + budget - c0) / (len(todo) - i))
            level = caches.level_of(costmodel.BYTES_PER_N * n)
            cost = {a: costmodel.cycles_per_element(pl, t, level) for a, pl in plans.items()} if t.cost else {}
            best = min(cost.values()) if cost else 0.0
            kept_algs = sorted((a for a in algs if not cost or cost[a] <= PRUNE_RATIO * best),
                               key=lambda a: cost.get(a, 0.0))
            bl = caches.level_of(costmodel.BYTES_PER_N * rows * n)
            # keep None: in L1d, where a row is compute-bound and its calls are timed in C (CLoop), every
            # unroll x accumulators schedule (the sweep's best there is often u8a2/u8a4, far from the default)
            n_keep = (len(scheds) if level == "L1d" else KEEP) if keep is None else keep
            extra, cands = [], [(a, s) for a in kept_algs for s in scheds[:n_keep]]
            for lvl in knob_levels(caches, costmodel.BYTES_PER_N * n):   # the level's knobs (and at the LLC's edge, DRAM's)
                more = level_schedules(be, t, lvl, base, rows, bl)
                extra += [x for x in more if x not in extra]
                cands += [(a, s) for a in knob_algorithms(plans, t, lvl, kept_algs)
                          for s in priced(plans[a], t, lvl, more, _cheapest(plans, t, lvl))]
            cands = list(dict.fromkeys(cands))
            total = len(algs) * (len(scheds) + len(extra))
            N = rows * n
            ws = 2 * 4 * N
            pairs = max(1, math.ceil(2 * caches.L3 / ws)) if caches.level_of(ws) == "DRAM" else 1
            bufs = _buffers(rng, rows, n, pairs)
            variants: dict[str, Variant] = {}
            meta: dict[str, tuple] = {}
            ref = None
            for a, s in cands:
                key = (a, s)
                if key not in kernels:
                    k = compile_kernel(opdef.name, algorithm=a, target=t.name, schedule=s, backend=be.name, **params)
                    k._entry(False)                       # compile and load outside the timed region
                    kernels[key] = k
                k = kernels[key]
                x, y = bufs[0]
                got = k(x, out=np.empty_like(x))
                if ref is None:
                    ref = got
                elif not max_rel_err(got, ref) <= 1e-4:   # never: each variant is tested
                    res.notes.append(f"{count_label(n)}: {label(a, s.as_dict())} differs from "
                                     f"{label(cands[0][0], cands[0][1].as_dict())}; not timed")
                    continue
                name = label(a, s.as_dict())
                # one thread: the variant is chosen here, its thread count below (batches) or by the model
                variants[name] = timed_variant(k, bufs, 1)
                meta[name] = (a, s)
            del ref
            first = measure(variants, deadline - 0.3 * max(0.0, deadline - time.monotonic()))
            ranked = sorted(first, key=lambda k: first[k].median)
            finalists = pick_finalists(first)
            final = measure({k: variants[k] for k in finalists}, deadline) if len(finalists) > 1 else \
                {k: first[k] for k in finalists}
            win = min(final, key=lambda k: final[k].median)
            runners = {k: final[k].median / final[win].median for k in finalists if k != win}
            runners.update({k: first[k].median / first[win].median for k in ranked if k not in finalists})
            a, s = meta[win]
            timing = final[win]
            # the rows class says what was measured: a batch (rows >= 2: it applies to batches)
            # or a single row (1: its thread count says nothing about batches)
            batch = rows > 1 and machine.cores() > 1
            rclass = (2 if batch else 1, ROWS_MAX)
            rec = tunedb.record(opdef.name, params, t.name, be.name, n=(lo, hi), rows=rclass,
                                algorithm=a, schedule=s.as_dict(), threads=1,
                                ns_per_element=timing.median / N * 1e9, noise=timing.spread,
                                repetitions=timing.rounds, runners_up=runners)
            # FFTW's plans include the thread count: on a batch, per count > 1 the finalists are timed
            # at it (with the one-thread plan at one thread) and its own winner recorded
            more = []
            for c in range(2, machine.cores() + 1) if batch else ():
                at = {f"{k} threads={c}": timed_variant(kernels[meta[k]], bufs, c) for k in finalists}
                at["threads=1"] = variants[win]
                timed = measure(at, deadline)
                top = min((k for k in timed if k != "threads=1"), key=lambda k: timed[k].median)
                ta, ts = meta[top.rsplit(" threads=", 1)[0]]
                more.append(tunedb.record(opdef.name, params, t.name, be.name, n=(lo, hi), rows=rclass,
                                          algorithm=ta, schedule=ts.as_dict(), threads=c,
                                          ns_per_element=timed[top].median / N * 1e9, noise=timed[top].spread,
                                          repetitions=timed[top].rounds,
                                          runners_up={k: timed[k].median / timed[top].median for k in timed if k != top}))
            res.classes.append(ClassResult(rows, n, (lo, hi), level, total, total - len(cands),
                                           [(k, first[k].median / N * 1e9) for k in ranked], rec,
                                           time.monotonic() - c0, more))
            del bufs, variants
            bar.update(f"{count_label(n)}: {win}")
    except KeyboardInterrupt:
        res.interrupted = True
    finally:
        bar.close()
    res.wall_seconds = time.monotonic() - t0
    if res.interrupted:
        print(f"softgen tune: interrupted; kept {len(res.classes)} of {len(todo)} size class(es) "
              f"(recorded in {tunedb.default().path})", file=stream)
    return res


# -- matrix ops: the GEMM tile and blocking ---------------------------------------------------------

GEMM_CHECK = 1e-3    # candidates' results vs the default's (max |diff| / max |ref|): blocking reorders sums


def gemm_candidates(t) -> list[GemmSchedule]:
    """The target's default GEMM schedule (``[gemm]``), then one step from it in each field: mr
    +-1 (+2), nv +-1 (nc kept a multiple of NR), kc and nc halved and doubled, ku 2; each kept only
    if ``GemmSchedule.validate`` accepts it on ``t`` (the register budget of ``vector_registers``,
    the packed-B stack buffer)."""
    b = t.gemm
    steps = [{"mr": b.mr - 1}, {"mr": b.mr + 1}, {"mr": b.mr + 2}, {"nv": b.nv - 1}, {"nv": b.nv + 1},
             {"kc": b.kc // 2}, {"kc": b.kc * 2}, {"nc": b.nc // 2}, {"nc": b.nc * 2}, {"ku": 2}]
    out = {b: None}
    for st in steps:
        g = replace(b, **st)
        nr = g.nr(t.lanes)
        if g.nc % nr:
            g = replace(g, nc=max(nr, g.nc // nr * nr))
        try:
            out[g.validate(t)] = None
        except UsageError:
            continue
    return list(out)


def attention_candidates(t) -> list[AttentionSchedule]:
    """The streaming attention form's blocks: the target's default (``[attention]``), then br and
    bc halved and doubled, the single-block mode off, on up to 1024 and 4096 keys and on with br
    halved (its tile in half the cache), each kept only if ``AttentionSchedule.validate`` accepts it."""
    b = t.attention
    out = {b: None}
    for st in ({"br": b.br // 2}, {"br": b.br * 2}, {"bc": b.bc // 2}, {"bc": b.bc * 2}, {"wide": 0},
               {"wide": 1024}, {"wide": 4096}, {"br": b.br // 2, "wide": 1024}):
        try:
            out[b.override(**st)] = None
        except UsageError:
            continue
    return list(out)


def _matrix_shapes(opdef, sizes, shapes) -> list[tuple[int, ...]]:
    dims = tuple(opdef.matrices.get("dims", ("m", "n")))
    form = f"{opdef.name}'s dims {' x '.join(dims)}, e.g. {'x'.join(['256'] * len(dims))}"
    if sizes is not None:
        raise UsageError(f"tune: matrix op {opdef.name} takes shapes ({form}), not sizes")
    if shapes is None:
        raise UsageError(f"tune: matrix op {opdef.name} needs shapes ({form})")
    items = [s.strip() for s in shapes.split(",") if s.strip()] if isinstance(shapes, str) else list(shapes)
    out = []
    for it in items:
        try:
            shape = tuple(parse_count(v) for v in it.lower().split("x")) if isinstance(it, str) else \
                tuple(int(v) for v in it)
        except (ValueError, TypeError):
            raise UsageError(f"tune: bad shape {it!r}; give {form}") from None
        if len(shape) != len(dims) or min(shape) < 1:
            raise UsageError(f"tune: bad shape {it!r}; give {form}")
        out.append(shape)
    if not out:
        raise UsageError(f"tune: no shapes; give {form}")
    return out


def _matrix_inputs(opdef, shape: tuple, rng) -> tuple:
    """Inputs of a matrix op at ``shape`` (its dims): standard normal; a lone square input is
    I + 0.1 N / sqrt(m) instead (well conditioned: Newton-Schulz converges)."""
    dims = tuple(opdef.matrices.get("dims", ("m", "n")))
    size = dict(zip(dims, shape))
    decl = opdef.matrices.get("inputs", {"x": ("m", "n")})
    out = []
    for dd in decl.values():
        s = tuple(size[d] for d in dd)
        if len(decl) == 1 and len(s) == 2 and s[0] == s[1]:
            x = np.eye(s[0], dtype=np.float32) + 0.1 / math.sqrt(s[0]) * rng.standard_normal(s, dtype=np.float32)
        else:
            x = rng.standard_normal(s, dtype=np.float32)
        out.append(x)
    return tuple(out)


def tune_gemm(opdef, target="host", sizes=None, budget_s=DEFAULT_BUDGET, backend: str = "c", *, shapes=None,
              progress: bool = True, stream=None, seed: int = 0, t0: float | None = None, attention: bool = False,
              **params) -> TuneResult:
    """``tune`` of a matrix op: its GEMMs' schedule (``gemm_candidates``) timed interleaved on each
    shape, the finalists re-measured; the winner is the best geometric mean of time ratios to the
    default over the shapes, recorded as one record for every size (algorithm "direct", the
    schedule's GEMM fields), which ``compile`` of the op then uses (``k.tuned``, ``k.gemm``).
    ``attention``: the streaming attention form's blocks instead (``attention_candidates``, one
    thread), recorded as algorithm "streaming" with the schedule {br, bc, wide} (``autotable.tuned_attention``)."""
    t0 = time.monotonic() if t0 is None else t0
    be = get_backend(backend)
    t = get_target(target)
    if not t.runnable:
        raise UsageError(f"tune: target {t.name} cannot run on this CPU (missing "
                         f"{', '.join(t.missing_features())}); tuning measures, so it needs a runnable target")
    budget = _parse_budget(budget_s)
    todo = _matrix_shapes(opdef, sizes, shapes)
    program = ops.build_program(opdef.name, **params)
    params = dict(program.params)
    if attention:
        if params.get("mask", "none") != "none" or passes.streamable(program) or params.get("normalizer", "softmax") not in be.streams_attention:
            raise UsageError(f"tune: {opdef.name} tunes the streaming form's blocks br/bc/wide, with mask='none', a "
                             f"streaming normalizer (softmax) and a backend that streams (c)")
        cands = attention_candidates(t)
        if not (be.wide_attention and params.get("normalizer", "softmax") == "softmax"):   # no single-block mode
            cands = list(dict.fromkeys(replace(c, wide=0) for c in cands))
        alg, kind, default = "streaming", "attention", cands[0].as_dict()
    else:
        lowered = passes.lower_matrix(program, epilogues=be.gemm_epilogues)
        if not any(isinstance(ph, MatMulPhase) for ph in lowered.leaves()):
            raise UsageError(f"tune: matrix op {opdef.name} has no GEMM to tune (only its rows/columns phases)")
        cands = gemm_candidates(t)
        alg, kind, default = "direct", "gemm", t.gemm.as_dict()
    res = TuneResult(opdef.name, params, t.name, be.name, budget, requested=1)
    stream = sys.stderr if stream is None else stream
    rng = np.random.default_rng(seed)
    bar = Progress(len(todo) + 1, desc=f"tune {opdef.name} {t.name} {kind}", enabled=progress, stream=stream)
    ratios: dict[str, list[float]] = {}
    last: dict[str, Timing] = {}
    try:
        kernels = {}
        for g in cands:
            k = compile_kernel(opdef.name, target=t.name, schedule=g.as_dict(), backend=be.name,
                               **({"algorithm": "streaming"} if attention else {}), **params)
            k._entry(False)
            kernels[label(alg, g.as_dict())] = (g, k)
        bar.update("compiled")
        names = list(kernels)
        for i, shape in enumerate(todo):
            c0 = time.monotonic()
            deadline = c0 + max(0.0, (t0 + budget - c0) / (len(todo) - i))
            xs = _matrix_inputs(opdef, shape, rng)
            ref = kernels[names[0]][1](*xs)
            ok = []
            for nm in names:
                got = kernels[nm][1](*xs)
                if nm == names[0] or max_rel_err(got, ref) <= GEMM_CHECK:
                    ok.append(nm)
                else:
                    res.notes.append(f"{'x'.join(map(str, shape))}: {nm} differs from {names[0]}; not timed")
            call = "k(*xs, out=y, threads=1)" if attention else "k(*xs, out=y)"
            variants = {nm: (call, {"k": kernels[nm][1], "xs": xs, "y": np.empty_like(ref)}) for nm in ok}
            first = measure(variants, deadline - 0.3 * max(0.0, deadline - time.monotonic()))
            fin = sorted(first, key=lambda k: first[k].median)[:FINALISTS]
            final = measure({k: variants[k] for k in fin}, deadline) if len(fin) > 1 else {k: first[k] for k in fin}
            # each time as a ratio to the default's in the first run; a finalist's through the
            # final run's fastest (same run), scaled by that one's first-run ratio
            top = min(final, key=lambda k: final[k].median)
            for nm in ok:
                r = first[nm].median if nm not in final else \
                    final[nm].median / final[top].median * first[top].median
                ratios.setdefault(nm, []).append(r / first[names[0]].median)
            last = {**first, **final}
            res.notes.append(f"{'x'.join(map(str, shape))}: " + ", ".join(
                f"{nm} {last[nm].median * 1e6:.1f} us" for nm in sorted(ok, key=lambda k: last[k].median)[:3]))
            bar.update("x".join(map(str, shape)))
            del ref, xs, variants
    except KeyboardInterrupt:
        res.interrupted = True
    finally:
        bar.close()
    full = {nm: r for nm, r in ratios.items() if len(r) == len(todo)} if not res.interrupted else {}
    if full:
        score = {nm: math.exp(sum(map(math.log, r)) / len(r)) for nm, r in full.items()}
        win = min(score, key=score.get)
        g = kernels[win][0]
        shape = todo[-1]
        out_elems = max(1, int(np.prod(np.asarray(kernels[win][1](*_matrix_inputs(opdef, shape, rng)).shape))))
        rec = tunedb.record(opdef.name, params, t.name, be.name, n=(1, N_MAX), rows=(1, ROWS_MAX),
                            algorithm=alg, schedule=g.as_dict(), threads=1,
                            ns_per_element=last[win].median / out_elems * 1e9, noise=last[win].spread,
                            repetitions=last[win].rounds,
                            runners_up={nm: score[nm] / score[win] for nm in score if nm != win})
        res.classes.append(ClassResult(shape[0], shape[-1], (1, N_MAX), kind, len(cands), 0,
                                       sorted(((nm, score[nm]) for nm in score), key=lambda p: p[1]), rec,
                                       time.monotonic() - t0))
        res.notes.append(f"{win}: {score[names[0]] / score[win]:.3f}x the default "
                         f"({label(alg, default)}) over {len(todo)} shape(s)")
    res.wall_seconds = time.monotonic() - t0
    return res
