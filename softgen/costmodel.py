"""The untuned dispatch model of ``algorithm="auto"`` (issue 13): which variant to run for a row
of n elements, from the target file's cost hints, the host's caches and each variant's sweep plan.

Per sweep of a variant's plan (``passes.plan``), per element:

* compute: the vector instructions of the IR op kinds evaluated in the sweep (its per-element
  nodes, reductions, stores, reloads and output; the target's ``[cost.instructions]``, counted per
  vector and calibrated against ``bench/hotloops.py``'s per-sweep counts), divided by the lanes and
  by ``[cost] ipc``;
* memory: the sweep's bytes per element (``Sweep.reads``/``writes`` x 4, the plan's traffic)
  divided by the ``[cost.bandwidth]`` of the level the row's working set falls in
  (``machine.Caches.level_of``; the working set of a row is x and y, 8 bytes per element);

and the sweep costs the larger of the two (a roofline per sweep); a variant costs the sum over
its sweeps. Schedules: the given one, with non-temporal output stores for rows beyond the
last-level cache on targets that have them (``level_schedule``), or one of the knob schedules the
model prices (``PRICED_KNOBS``: exp variants by their ``[cost.exp]`` hints, lazymax by the max sweep
it drops) where it is at least 3% cheaper (``KNOB_MARGIN``) than every algorithm under the given one.
Then the knobs that change only calls of several rows (``BATCH_KNOBS``: rows=R, pipeline; and
lazymax where a batch streams from beyond L1d) over that winner, priced on a batch
(``batch_cycles``: each row's first touch of x and its output at the batch's level, the per-row
latency of each reduction over R rows, pipeline's two sweeps under one roofline less the chain it
defers, its loop's far reads added), with the same
margin; their per-row term falls with n, so a level may split once where the choice changes. Per-op-kind hints rather than per-sweep measured counts: they compose for any op and
any rewrite the planner produces, so a new op or algorithm needs no new measurement or table.

The result is a ``DispatchTable``: plain data (ranges of n, the variant of each, why), which a
tuning record can replace (``source`` "measured" instead of "model").

Threads (``ThreadPolicy``, per entry): a call's rows are split across threads when its work pays
for them. The model's policy: one thread per ``grain`` elements of work (rows x n), ``grain`` twice
the target's ``[cost] parallel_overhead_cycles`` (waking and joining a worker, measured) over the
variant's cheapest cycles/element (its L1 cost: the smallest, so the
largest grain: "never slower than one thread on small inputs"); at most the CPUs the process may
run on (capped at run time in C, with ``SOFTGEN_NUM_THREADS``). A tuning record's thread count
replaces ``most``. The model's variant is chosen by n alone (one tiling of n serves every call:
a batch knob leaves a single row's code as it is, and a batch choice keeps a single row of n within
``KNOB_MARGIN``); tuning records split the calls at ``BATCH_ROWS`` rows (``DispatchTable``); the
thread count by rows x n.
Matrix kernels (``MatrixThreadPolicy``): one thread per ``grain`` (2 x the overhead) modelled
cycles of batch x cycles per matrix (``matrix_cycles``: a C expression in the dimensions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .ir import OPS
from .machine import LEVELS, Caches
from .matrix import AttentionPhase, ColsPhase, MatMulPhase, MatrixProgram, SweepPhase
from .passes import LAZY_FIRST, SHORT, Plan, lazy_max, max_shifted, pipeline_refusal, plan
from .targets import Target

BYTES_PER_N = 8          # a row's working set per element: x and y, float32 (out of place)
ALL_LEVELS = (*LEVELS, "DRAM")
_FREE = ("const", "param", "item")   # scalar kinds: not evaluated per element


def variant_key(algorithm: str, schedule: dict) -> tuple:
    return (algorithm, tuple(sorted(schedule.items())))


@dataclass(frozen=True)
class ThreadPolicy:
    """How many threads a call of ``rows`` rows of ``n`` takes when the caller asks for "auto"
    (``threads=0``/None): one per ``grain`` elements of rows x n, at least 1, at most ``most``
    (0: no limit of its own), the CPUs and ``SOFTGEN_NUM_THREADS`` (C, at run time) and rows.
    ``grain`` 0: always one thread. Generated entry points bake it in (``entry.c.j2``)."""

    most: int = 0
    grain: int = 0

    def threads(self, rows: int, n: int, cap: int) -> int:
        """The C entry's choice (``pool.h.j2`` ``sg_threads``) for a cap of ``cap`` threads."""
        if rows < 2 or self.grain <= 0 or rows * n // self.grain < 2:
            return 1
        t = min(rows * n // self.grain, cap, rows)
        return max(1, min(t, self.most) if self.most > 0 else t)

    def describe(self) -> str:
        if self.grain <= 0:
            return "one thread" if self.most <= 1 else f"at most {self.most} threads, none by default"
        most = f", at most {self.most}" if self.most > 0 else ""
        return f"one thread per {self.grain} elements of rows x n{most}"


def thread_policy(plan: Plan, target: Target, most: int = 0) -> ThreadPolicy:
    """The model's ``ThreadPolicy`` for a variant of ``plan`` on ``target``: ``grain`` = twice the
    target's ``parallel_overhead_cycles`` over the plan's cheapest cycles/element (over the cache
    levels); no hint (or no ``[cost]``): one thread unless asked."""
    overhead = target.cost.get("parallel_overhead_cycles") if target.cost else None
    if not overhead:
        return ThreadPolicy(most, 0)
    cheapest = min(cycles_per_element(plan, target, lvl) for lvl in ALL_LEVELS)
    # two threads at 2 x grain elements: work / 2 + overhead = 3/4 of one thread's time
    return ThreadPolicy(most, max(1, math.ceil(2 * overhead / max(cheapest, 1e-3))))


@dataclass(frozen=True)
class MatrixThreadPolicy(ThreadPolicy):
    """A matrix kernel's ``ThreadPolicy``: the batch's matrices are split across threads, one per
    ``grain`` modelled cycles of batch x ``work`` (the model's cycles per matrix: a formula in the
    matrix dimensions, ``matrix_cycles``; ``c_work``: the same in C, of ``dim_<d>``). A batch of one
    matrix always runs on the caller."""

    work: str = "0"
    c_work: str = "0"

    def describe(self) -> str:
        if self.grain <= 0:
            return "one thread" if self.most <= 1 else f"at most {self.most} threads, none by default"
        most = f", at most {self.most}" if self.most > 0 else ""
        return f"one thread per {self.grain} modelled cycles of batch x ({self.work}) cycles per matrix{most}"


def matrix_cycles(mp: MatrixProgram, target: Target) -> tuple[str, str]:
    """The model's cycles per matrix of lowered matrix program ``mp`` as (a formula in its
    dimensions, the same in C of ``dim_<d>``): each rows phase's cheapest cycles/element (``cycles_per_element``
    over the cache levels, its sweeps' instructions and traffic) x its matrix's elements, a cols
    phase's x its columns, each contraction's (an attention phase: its two) 2 M N K flops at 2 x lanes x ``ipc`` flops/cycle
    (one FMA per lane per instruction); loop bodies times their counts. "0" without ``[cost]``."""
    if not target.cost:
        return "0", "0"
    terms: dict[tuple, float] = {}
    flops_per_cycle = 2 * target.lanes * float(target.cost.get("ipc", 1.0))
    for ph, times in (leaf for top in mp.phases for leaf in top.counted()):
        if isinstance(ph, MatMulPhase):
            key, c = tuple(sorted(ph.flops(mp.shape))), 2 * times / flops_per_cycle
        elif isinstance(ph, AttentionPhase):   # its two products' flops (Q K^T, P V)
            (LQ, D), (LK, _), DV = mp.shape(ph.q), mp.shape(ph.k), mp.shape(ph.v)[1]
            pv = tuple(sorted((LQ, LK, DV)))
            terms[pv] = terms.get(pv, 0.0) + 2 * times / flops_per_cycle
            key, c = (LQ, LK, D), 2 * times / flops_per_cycle
        elif isinstance(ph, SweepPhase):
            R, C = mp.shape(ph.swept)
            key = (C,) if isinstance(ph, ColsPhase) else (R, C)
            c = times * min(cycles_per_element(plan(ph.program), target, lvl) for lvl in ALL_LEVELS)
        else:
            continue
        if ph.programs() and isinstance(ph, MatMulPhase):   # a fused epilogue: per element of dst
            R, C = mp.shape(ph.mm.dst)
            terms[tuple(sorted((R, C)))] = terms.get(tuple(sorted((R, C))), 0.0) + times * min(
                cycles_per_element(plan(ph.mm.epilogue), target, lvl) for lvl in ALL_LEVELS)
        terms[tuple(sorted(key))] = terms.get(tuple(sorted(key)), 0.0) + c
    terms = sorted((key, c) for key, c in terms.items() if c > 0)
    text = " + ".join(f"{c:.4g}*" + "*".join(key) for key, c in terms)
    c_text = " + ".join(f"{c:.4g} * " + " * ".join(f"(double)dim_{d}" for d in key) for key, c in terms)
    return text or "0", c_text or "0"


def matrix_thread_policy(mp: MatrixProgram, target: Target, most: int = 0) -> MatrixThreadPolicy:
    """The model's policy of a matrix kernel: ``grain`` twice the target's
    ``parallel_overhead_cycles`` (two threads where the batch's modelled work, ``matrix_cycles``,
    is twice it: work / 2 + overhead = 3/4 of one thread's time); no hint: one thread unless asked."""
    overhead = target.cost.get("parallel_overhead_cycles") if target.cost else None
    work, c_work = matrix_cycles(mp, target)
    if not overhead or work == "0":
        return MatrixThreadPolicy(most, 0, work, c_work)
    return MatrixThreadPolicy(most, max(1, math.ceil(2 * overhead)), work, c_work)


@dataclass(frozen=True)
class Entry:
    """Rows of ``n_min <= n <= n_max`` (``n_max`` None: no upper bound) run ``algorithm`` with
    ``schedule`` on ``threads`` threads; ``why``: "model: ..." (or "measured: ..." from a tuner)."""

    n_min: int
    n_max: int | None
    algorithm: str
    schedule: dict
    threads: int = 1
    why: str = ""
    symbol: str = ""     # the variant's (hidden) entry point in a dispatcher's library
    grain: int = 0       # auto threads: one per grain elements of rows x n (``ThreadPolicy``)
    # the calls the entry serves by their number of rows: rows_min <= rows <= rows_max (None: no
    # bound); a table of one tiling of n serves every call (1, None); a table of two (tuning
    # records of single rows and of batches) has one for rows < BATCH_ROWS and one from there
    rows_min: int = 1
    rows_max: int | None = None

    @property
    def policy(self) -> ThreadPolicy:
        """The entry's thread policy: at most ``threads`` (0: the CPUs), one per ``grain``."""
        return ThreadPolicy(self.threads, self.grain)

    def as_dict(self) -> dict:
        """The entry as plain data (manifest, explain); ``rows_min``/``rows_max`` only where the entry
        does not serve every call (a table of two tilings), so that a table of one reads as before."""
        rows = {} if (self.rows_min, self.rows_max) == (1, None) else {"rows_min": self.rows_min, "rows_max": self.rows_max}
        return {"n_min": self.n_min, "n_max": self.n_max, "algorithm": self.algorithm,
                "schedule": dict(self.schedule), "threads": self.threads, "grain": self.grain,
                "symbol": self.symbol, **rows, "why": self.why}

    @property
    def variant(self) -> tuple:
        """What identifies the entry's variant: algorithm and schedule (a dispatcher compiles one
        variant per distinct key: a tuned table may use one algorithm with two schedules)."""
        return variant_key(self.algorithm, self.schedule)

    def serves(self, n: int, rows: int) -> bool:
        """Whether a call of ``rows`` rows of ``n`` runs this entry."""
        return (self.n_min <= n and (self.n_max is None or n <= self.n_max)
                and self.rows_min <= rows and (self.rows_max is None or rows <= self.rows_max))

    def rows_range(self) -> str:
        """The calls the entry serves by their rows, as text ("any rows", "rows < 4", "rows >= 4")."""
        if self.rows_max is None:
            return "any rows" if self.rows_min <= 1 else f"rows >= {self.rows_min}"
        return f"rows < {self.rows_max + 1}" if self.rows_min <= 1 else f"{self.rows_min} <= rows <= {self.rows_max}"

    def range(self) -> str:
        if self.n_max is None:
            return "any n" if self.n_min <= 1 else f"n >= {self.n_min}"
        return f"n <= {self.n_max}" if self.n_min <= 1 else f"{self.n_min} <= n <= {self.n_max}"


# Calls of at least this many rows are batches: where a table has two tilings of n (tuning
# records of batches decide them, records of single rows the calls of fewer rows), the dispatcher
# picks on rows first. 4: the batch knobs pay only across rows: rows=R (R up to 4, the C backend's
# tuning values) runs calls of fewer than R rows one row at a time, and pipeline runs its first and
# last rows alone (2 rows: none overlapped, 3: one), so a plan measured on a batch says nothing
# about calls of 1-3 rows, which run as single rows do.
BATCH_ROWS = 4


@dataclass(frozen=True)
class DispatchTable:
    """The entries tile n >= 1 in order, without gaps, once per class of rows: one tiling for every
    call (``Entry.rows_min`` 1, ``rows_max`` None: the model's, whose batch choices keep single rows
    within ``KNOB_MARGIN``), or two (tuning records, ``autotable.tuned_table``): calls of fewer
    than ``BATCH_ROWS`` rows, then batches; ``source``: "model" (this module) or a tuner's
    "measured" (some or all entries measured: each entry's ``why`` says which); ``basis``: what
    the choice rests on (caches, hints, records), one line."""

    entries: tuple[Entry, ...]
    source: str = "model"
    basis: str = ""
    # level -> {algorithm: cycles/el} (under the given schedule; "<algorithm> <knob_label>": its
    # cheapest priced knob schedule where that is cheaper)
    costs: dict = field(default_factory=dict, compare=False)

    @property
    def algorithms(self) -> list[str]:
        """The distinct algorithms of the entries, in order of first use."""
        return list(dict.fromkeys(e.algorithm for e in self.entries))

    @property
    def variants(self) -> list[tuple]:
        """The distinct variants (``Entry.variant``) of the entries, in order of first use."""
        return list(dict.fromkeys(e.variant for e in self.entries))

    def tables(self) -> list[tuple[int, int | None, tuple[Entry, ...]]]:
        """(rows_min, rows_max, entries) of each tiling of n, in the order a call tests them."""
        out: list[tuple] = []
        for e in self.entries:
            if out and out[-1][:2] == (e.rows_min, e.rows_max):
                out[-1] = (*out[-1][:2], out[-1][2] + (e,))
            else:
                out.append((e.rows_min, e.rows_max, (e,)))
        return out

    def pick(self, n: int, rows: int = 1) -> Entry:
        """The entry a call of ``rows`` rows of ``n`` runs (what the dispatch unit's C picks)."""
        return next(e for e in self.entries if e.serves(n, max(rows, 1)))

    def with_symbols(self, symbols: dict[tuple, str]) -> "DispatchTable":
        """The table with each entry's ``symbol`` set from ``symbols`` (``Entry.variant`` -> name)."""
        return DispatchTable(tuple(replace(e, symbol=symbols[e.variant]) for e in self.entries),
                             self.source, self.basis, self.costs)

    def as_list(self) -> list[dict]:
        return [e.as_dict() for e in self.entries]

    def lines(self) -> list[str]:
        """The table as text (header comments, ``explain``)."""
        out = [f"dispatch ({self.source}; {self.basis}):"]
        tables = self.tables()
        for rmin, rmax, entries in tables:
            pad = ""
            if len(tables) > 1:
                pad = "  "
                kind = "batches" if rmax is None else "single rows and calls of few rows"
                srcs = sorted({e.why.split(":", 1)[0] for e in entries})
                out.append(f"  {entries[0].rows_range()} ({kind}; {' and '.join(srcs)}):")
            for e in entries:
                sched = " ".join(f"{k}={v}" for k, v in sorted(e.schedule.items()) if k not in ("block", "split", "chunk"))
                out.append(f"{pad}  {e.range():<24} {e.algorithm} ({SHORT[e.algorithm]}), {sched}, "
                           f"threads={e.threads or 'auto'} (auto: {e.policy.describe()})")
                out.append(f"{pad}    why: {e.why}")
        return out


def exp_instructions(p, v: int, target: Target, exp: str = "") -> float:
    """Vector instructions per vector of exp node ``v`` of program ``p`` under schedule ``exp``: the
    target's ``[cost.exp]`` hint of the variant it runs as (``Target.exp_variant``: the target's
    ``shifted_exp`` for the exps of x - max x), else ``[cost.instructions] exp``."""
    return exp_instructions_of(target, target.exp_variant(exp, bool(p.attrs(v).get("nonpos")) and max_shifted(p, v)))


def _compute(p, s, target: Target, exp: str, lazy: bool) -> float:
    """Cycles per element of sweep ``s``'s vector instructions (``[cost.instructions]`` per vector,
    exps by their ``[cost.exp]`` variant) over the lanes and ``ipc``; ``lazy``: lazymax's exp sweep
    (one compare more per vector)."""
    ins = target.cost["instructions"]
    nodes = [v for v in s.compute + s.reductions if OPS[p.op(v)].kind not in _FREE]
    kinds = [p.op(v) for v in nodes if p.op(v) != "exp"]
    kinds += ["materialize"] * len(s.stores) + ["reload"] * len(s.reloads)
    kinds += ["output"] * (s.output is not None)
    kinds += ["max"] * (lazy and s.index == 1)
    return (sum(ins.get(k, ins["default"]) for k in kinds)
            + sum(exp_instructions(p, v, target, exp) for v in nodes if p.op(v) == "exp")) / target.lanes / target.cost["ipc"]


def _lazy(plan: Plan, lazymax: bool) -> bool:
    """Whether schedule lazymax changes ``plan``'s kernel (``passes.lazy_max`` applies)."""
    return lazymax and not isinstance(lazy_max(plan), str)


def _chains(plan: Plan) -> int:
    """The sweeps of ``plan`` that end in a reduction (each stalls its row on the reduction's scalar)."""
    return sum(1 for s in plan.sweeps if s.reductions and s.selected is None)


def sweep_cycles(plan: Plan, target: Target, level: str, exp: str = "", lazymax: bool = False,
                 n: int | None = None) -> list[float]:
    """Cycles per element of each sweep of ``plan`` on ``target`` with the row in ``level``;
    ``exp``: the schedule's exp variant (each variant costs its ``[cost.exp]`` hint); ``lazymax``:
    the schedule's (where ``passes.lazy_max`` applies: no max sweep but over the first LAZY_FIRST
    elements, one compare more per vector in the exp sweep; in L1d too, where the max sweep is
    compute: avx512 3pl 0.96x modelled, 0.85-0.91x measured at 1K-4K, ``CBackend.tuning_knob_levels``).
    ``n``: the row's length, where the first LAZY_FIRST elements' max sweep is a share of it (None:
    a long row's, none)."""
    bw = target.cost["bandwidth"][level]
    p, out = plan.program, []
    lazy = _lazy(plan, lazymax)
    for s in plan.sweeps:
        if s.selected is not None:   # runs over the k selected entries, not per element
            continue
        share = (min(1.0, LAZY_FIRST / max(n, 1)) if n else 0.0) if lazy and s.index == 0 else 1.0
        out.append(share * max(_compute(p, s, target, exp, lazy), 4 * (s.reads + s.writes) / bw))
    return out


def cycles_per_element(plan: Plan, target: Target, level: str, exp: str = "", lazymax: bool = False,
                       n: int | None = None) -> float:
    """The sum of ``sweep_cycles``; with ``n``, a single row of ``n`` elements': its share of lazymax's
    first max sweep and its per-row stalls, ``[cost] reduce_latency_cycles`` per reduction chain
    (lazymax's reference one more) over n, as ``batch_cycles`` prices a row of one row at a time.
    Short rows lose what lazymax saves (avx512, timed in C: 0.88x at 128, 0.94x at 256, 1.07x at 512,
    1.10x at 1K, bench/results/l1lazymax-2026-12-01-amd-epyc-loaded-s25.txt)."""
    cyc = sum(sweep_cycles(plan, target, level, exp, lazymax, n))
    if not n:
        return cyc
    return cyc + float(target.cost.get("reduce_latency_cycles", 0.0)) * (_chains(plan) + _lazy(plan, lazymax)) / n


def batch_level(level: str) -> str:
    """The level the model prices a batch of rows at ``level`` as streamed from: rows in L1d or L2
    in a batch as large as the last-level cache (the per-call knobs, ``BATCH_KNOBS``, matter on
    batches of many rows; a smaller batch gains less, with the same sign), rows at L3 or beyond
    from their own level (one row fills it)."""
    return LEVELS[-1] if level in LEVELS[:-1] else level


def batch_cycles(plan: Plan, target: Target, level: str, n: int, exp: str = "", lazymax: bool = False,
                 rows: int = 1, pipeline: bool = False) -> float:
    """Cycles per element of a row of ``n`` (its working set at ``level``) in a batch of many rows
    under a schedule's ``exp``, ``lazymax``, ``rows`` and ``pipeline``: the model's price of the
    knobs that change only calls of several rows (``BATCH_KNOBS``). Three terms differ from
    ``cycles_per_element``:

    * traffic: a row's first touch of x and its output come from and go to the batch's level
      (``batch_level``), its other traffic stays at ``level`` (the row is still there); lazymax (a
      batch beyond L1d) keeps the max sweep over the first ``LAZY_FIRST`` elements only, and the
      exp sweep makes the first touch of the rest;
    * per row: a sweep ending in a reduction stalls the row ``[cost] reduce_latency_cycles`` (the
      horizontal reduction and the scalar the next sweep waits for), spread over its n elements;
      rows=R interleaves R rows' independent chains in one loop: 1/R of it each. No hint: 0;
    * pipeline (rows in L1d; where ``passes.pipeline_refusal`` has no objection): the output sweep
      runs in the loop of the next row's sweep before it, one roofline over both (their compute
      adds, their near traffic adds, each hides the other), and the reduction that sweep ends in no
      longer stalls the row (the output sweep waiting for its scalar runs one row later): one chain
      less per row. Reads from the batch's level in that loop (x's first touch under lazymax) are
      not hidden by it: a load missing to L3 stalls the dependent exp chain of two rows' work, and
      the loop's out-of-order window covers half the elements it does alone, so they add to the
      roofline (without lazymax the max sweep streams x in alone first; stores drain in the
      background). Beyond L1d two rows' streams in one loop evict each other, which the model has no
      term for: there it prices no gain (never chosen). Measured (Zen 4, avx512, 16 MiB batches,
      interleaved, bench/results/batch512-*): pipeline 0.82x three-pass-reload's time at n = 512,
      lazymax with it 0.91-1.02x, lazymax alone 0.91x.
    """
    cost = target.cost
    outer = batch_level(level)
    near, far = cost["bandwidth"][level], cost["bandwidth"][outer]
    p = plan.program
    lazy = outer != LEVELS[0] and _lazy(plan, lazymax)
    # (compute, memory, far reads' part of memory) per sweep, per element of the row
    parts: list[tuple[float, float, float]] = []
    touched = 0.0                               # the share of x read by the sweeps before
    for s in plan.sweeps:
        if s.selected is not None:
            continue
        share = min(1.0, LAZY_FIRST / max(n, 1)) if lazy and s.index == 0 else 1.0
        x_far = max(0.0, share - touched) if s.reads_x else 0.0
        touched = max(touched, share) if s.reads_x else touched
        out_far = share if s.output is not None else 0.0
        near_words = (s.reads + s.writes) * share - x_far - out_far
        parts.append((share * _compute(p, s, target, exp, lazy), 4 * (x_far + out_far) / far + 4 * near_words / near,
                      4 * x_far / far))
    chains = _chains(plan)
    total = 0.0
    if pipeline and level == LEVELS[0] and len(parts) >= 2 and not pipeline_refusal(plan):
        (c1, m1, f1), (c2, m2, f2) = parts[-2:]
        parts = parts[:-2]
        total = max(c1 + c2, m1 + m2 - f1 - f2) + f1 + f2   # far reads: not hidden in the pipelined loop
        chains -= 1                                         # the sum's scalar is awaited a row later
    # lazymax's reference and segments: one chain more per row (the output sweep runs per segment)
    per_row = float(cost.get("reduce_latency_cycles", 0.0)) * (chains + lazy) / max(rows, 1)
    return total + sum(max(c, m) for c, m, _ in parts) + per_row / max(n, 1)


# vectors live per unrolled element in the R-rows form's exp sweep (x - m, the exponent, the reduced
# argument, the polynomial): R rows x unroll of them must fit the target's vector registers
ROWS_LIVE = 4
# and per row under lazymax (its exp sweep's running reference r, r + slack, the fold's constant and
# clamp, backends.c: lz_r / lz_lim / lz_c / lz_lo broadcast): 3pl r2 lz ran 1.5-2.6x 3pl lz at 4096 x
# 512 on avx512 (u4: 2 x (16 + 4) = 40 > 32 registers), r2 alone 1.2x (32: the constants spill)
LAZY_LIVE = 4


def rows_fit(target: Target, sched: dict) -> bool:
    """Whether schedule rows=R keeps its R rows' unrolled exp sweeps in ``target``'s vector
    registers (R x (``ROWS_LIVE`` x unroll + ``LAZY_LIVE`` under lazymax) <= ``vector_registers``);
    beyond, it spills in every iteration, which ``batch_cycles`` has no term for: the model does
    not offer it."""
    per_row = ROWS_LIVE * sched.get("unroll", 1) + LAZY_LIVE * bool(sched.get("lazymax"))
    return sched.get("rows", 1) * per_row <= target.vector_registers


def level_limits(caches: Caches) -> dict[str, int | None]:
    """The longest row (n) whose working set fits each level; DRAM: None."""
    return {**{lvl: size // BYTES_PER_N for lvl, size in caches.sizes().items()}, "DRAM": None}


def level_schedule(target: Target, level: str, schedule: dict, plan: Plan, stream: bool = True) -> dict:
    """The schedule the model gives rows at cache ``level`` (with ``plan``): ``schedule``, with
    non-temporal stores (``stream``) on where the row's working set (x and y, ``BYTES_PER_N`` x n)
    is beyond the last-level cache ("DRAM"), the target has them and the plan writes a dense output:
    y would only evict x's lines and cost a read for ownership (16 instead of 12 B/element for
    two-pass) before going to memory anyway. ``stream`` False: never (a backend without the knob)."""
    dense = any(sw.output is not None and sw.selected is None for sw in plan.sweeps)
    if level == "DRAM" and stream and target.streams and dense and "stream" not in schedule:
        return {**schedule, "stream": True}
    return dict(schedule)


# the schedule knobs the model prices: exp (each variant its [cost.exp] hint) and lazymax (no max
# sweep, a compare more per vector) on single rows (sweep_cycles), and the knobs that
# change only calls of several rows (BATCH_KNOBS: a call of one row runs the one-row code, rows=R
# running the rows left over one at a time, pipeline its first and last rows alone) on a batch
# (batch_cycles); the others have no model term
BATCH_KNOBS = ("rows", "pipeline")
PRICED_KNOBS = ("exp", "lazymax", *BATCH_KNOBS)
# A priced knob displaces the default schedule only when the model puts it this much cheaper: the
# per-op-kind hints are not that exact, and the default schedule is what sibling kernels share
# bitwise (top-k's dense output is the scatter of its sparse one, which has no row-long exp).
KNOB_MARGIN = 0.97


def knob_label(schedule: dict) -> str:
    """The priced knobs a schedule sets, short (``t32 lz``, ``r4 lz``, ``lz pp``; "" at the defaults)."""
    rows = schedule.get("rows", 1)
    return " ".join(x for x in (schedule.get("exp") or "", f"r{rows}" if rows > 1 else "",
                                 "lz" if schedule.get("lazymax") else "", "pp" if schedule.get("pipeline") else "") if x)


def _knob_why(sched: dict, target: Target) -> str:
    """What the priced knobs of ``sched`` change in the model (for an entry's why)."""
    out = []
    if sched.get("lazymax"):
        out.append("lazymax: no max sweep over x but its first elements (docs/ops.md §3.1), one compare "
                   "more per vector in the exp sweep")
    if sched.get("exp"):
        out.append(f"exp variant {sched['exp']}: [cost.exp] {exp_instructions_of(target, sched['exp']):g} "
                   f"instructions per vector")
    return "; ".join(out)


def exp_instructions_of(target: Target, name: str) -> float:
    """The ``[cost.exp]`` hint of exp variant ``name`` (else ``[cost.instructions] exp``)."""
    ins = target.cost["instructions"]
    return target.cost.get("exp", {}).get(name, ins.get("exp", ins["default"]))


def knobs_apply(sched: dict, plan: Plan) -> bool:
    """Whether ``sched``'s knobs change ``plan``'s kernel: lazymax only where ``passes.lazy_max``
    applies (three-pass-reload of softmax), pipeline only where ``passes.pipeline_refusal`` has no
    objection (otherwise the kernel is the one without the knob under another name); rows=R (in the
    model's tables, ``model_table``) only there too: no fallback row, per-row parameter, selection,
    column or top-k list, which covers the backend's refusals of its R-rows form."""
    return ((not sched.get("lazymax") or not isinstance(lazy_max(plan), str))
            and (not sched.get("pipeline") or not pipeline_refusal(plan)))


def _batch_knobs_apply(sched: dict, plan: Plan, target: Target) -> bool:
    return knobs_apply(sched, plan) and (sched.get("rows", 1) <= 1 or not pipeline_refusal(plan) and rows_fit(target, sched))


def _points(lo: int, hi: int | None) -> list[int]:
    """Where the model prices a level's rows on a batch (its per-row term falls with n): the
    powers of two in [lo, hi] and hi (a range up to a point takes that point's choice, the one
    least favourable to a per-row saving); beyond the last cache: lo."""
    if hi is None:
        return [lo]
    return sorted({1 << k for k in range(lo.bit_length() - 1, hi.bit_length()) if lo <= 1 << k <= hi} | {hi})


def _batch_price(plan: Plan, target: Target, level: str, n: int, s: dict) -> float:
    return batch_cycles(plan, target, level, n, s.get("exp", ""), bool(s.get("lazymax")), s.get("rows", 1),
                        bool(s.get("pipeline")))


def _batch_choice(plan: Plan, target: Target, level: str, n: int, win: dict,
                  scheds: list[dict], keep: dict | None = None) -> tuple[dict, str]:
    """(the schedule batches of rows of ``n`` at ``level`` take, why) over the single-row winner
    ``win`` of ``plan``: the cheapest on a batch (``batch_cycles``) of ``scheds`` with ``win``'s exp
    variant that set a batch knob or lazymax, where at most ``KNOB_MARGIN`` x ``win``'s batch cost
    and no more than ``win``'s cost / ``KNOB_MARGIN`` on a single row of ``n``; else ``win``. Where ``win``
    sets lazymax and a single row of ``n`` costs less without it (``cycles_per_element`` at n: the level's
    long-row winner loses on short rows), ``win`` without lazymax is the base.
    ``keep``: the choice at the next larger n, kept unless the cheapest beats it by the margin too
    (fewer variants: a level splits only where the per-row term makes a real difference)."""
    note = ""
    # a single row of n may be cheaper without lazymax: then that is the base (where lazymax is the
    # model's to vary: some of ``scheds`` go without it; a caller's lazymax stays)
    if win.get("lazymax") and any(not s.get("lazymax") for s in scheds):
        exp = win.get("exp", "")
        lz, lone = (cycles_per_element(plan, target, level, exp, z, n) for z in (True, False))
        if lone < lz:
            win = {k: v for k, v in win.items() if k != "lazymax"}
            note = (f"rows of {n}: no lazymax ({lz:.2f} -> {lone:.2f} cycles/element on one row: its first "
                    f"{LAZY_FIRST} elements' max sweep, a chain more per row)")
    base = _batch_price(plan, target, level, n, win)
    single = cycles_per_element(plan, target, level, win.get("exp", ""), bool(win.get("lazymax")), n)
    found = [(s, _batch_price(plan, target, level, n, s)) for s in scheds
             if s.get("exp", "") == win.get("exp", "") and _batch_knobs_apply(s, plan, target)
             and (s.get("rows", 1) > 1 or s.get("pipeline") or bool(s.get("lazymax")) != bool(win.get("lazymax")))
             and cycles_per_element(plan, target, level, s.get("exp", ""), bool(s.get("lazymax")), n) <= single / KNOB_MARGIN]
    best = min(found, key=lambda t: t[1], default=None)
    if best is None or best[1] > KNOB_MARGIN * base:
        best = (win, base)
    if keep is not None and keep in [s for s, _ in found] + [win]:
        kept = _batch_price(plan, target, level, n, keep)
        if kept * KNOB_MARGIN <= best[1] or keep is best[0]:
            best = (keep, kept)
    if best[0] is win:
        return win, note
    return best[0], "; ".join(filter(None, (note, f"batches: {knob_label(best[0])} {base:.2f} -> {best[1]:.2f} "
                                            f"cycles/element at n = {n} (x from {batch_level(level)}; batch_cycles)")))


# Splits of a level's rows by the batch knobs (0 or 1): each split is one more variant in every auto
# library (compiled on its first call), e.g. avx512 softmax's rows=2 up to 256 elements (8192 x 128:
# 3pl r2 1.00x the sweep's best, 3pl lz pp 1.09x, bench/results/issue13-2026-12-01-*); 0: one batch
# schedule per level, the one at its end.
LEVEL_SPLITS = 1


def _level_batches(plan: Plan, target: Target, level: str, lo: int, hi: int | None, win: dict,
                   scheds: list[dict]) -> list[tuple]:
    """The level's rows [lo, hi] as (n_min, n_max, schedule, why) over the single-row winner ``win``
    of ``plan``: the batch choice (``_batch_choice``) at the level's end, down the powers of two
    while it holds; where another choice beats it by ``KNOB_MARGIN`` (the per-row term grows as n
    falls), the rows up to there take the choice at their geometric middle. At most one split per
    level (``LEVEL_SPLITS``): each schedule is one more variant in the dispatcher's library."""
    pts = _points(lo, hi)
    top, twhy = _batch_choice(plan, target, level, pts[-1], win, scheds)
    for i in range(len(pts) - 2, -1, -1) if LEVEL_SPLITS else ():
        if _batch_choice(plan, target, level, pts[i], win, scheds, top)[0] != top:
            mid = math.isqrt(lo * pts[i])
            low, lwhy = _batch_choice(plan, target, level, min(pts[:i + 1], key=lambda p: abs(math.log(p / mid))),
                                      win, scheds)
            if low != top:
                return [(lo, pts[i], low, lwhy), (pts[i] + 1, hi, top, twhy)]
            break
    return [(lo, hi, top, twhy)]


def model_table(plans: dict[str, Plan], target: Target, caches: Caches, schedule: dict,
                stream: bool = True, knobs: dict[str, list[dict]] | None = None) -> DispatchTable:
    """The cheapest of ``plans`` (algorithm -> plan, in preference order: ties go to the earlier)
    per cache level, neighbouring levels with one variant merged into one entry. ``knobs``: per
    level, schedules besides ``schedule`` to price (``PRICED_KNOBS`` set over it: what the
    backend offers there, ``autotable.model_schedules``); one wins only where it costs at most
    ``KNOB_MARGIN`` x every algorithm under ``schedule``, and only for plans it changes (``knobs_apply``).
    Then the knobs of batches (``BATCH_KNOBS``, and lazymax where a batch streams from beyond L1d)
    over the winner, priced on a batch (``batch_cycles``, ``_batch_choice``) at the powers of two of
    the level's n (its per-row term falls with n): a level may split where they stop paying.
    ``stream``: whether the backend lowers non-temporal stores (``level_schedule``)."""
    limits = level_limits(caches)
    knobs = knobs or {}
    costs: dict[str, dict[str, float]] = {}
    best: dict[str, tuple[str, dict, float]] = {}
    base_cost: dict[str, dict[str, float]] = {}
    for lvl in ALL_LEVELS:
        cands = [(a, schedule) for a in plans]
        # single rows: the knobs of one row (a batch knob's kernel is the one-row kernel there)
        cands += [(a, s) for s in knobs.get(lvl, ()) if s != schedule and s.get("rows", 1) == schedule.get("rows", 1)
                  and s.get("pipeline", False) == schedule.get("pipeline", False)
                  for a, pl in plans.items() if knobs_apply(s, pl)]
        priced = [(a, s, cycles_per_element(plans[a], target, lvl, s.get("exp", ""), bool(s.get("lazymax"))))
                  for a, s in cands]
        base_cost[lvl] = {a: c for a, s, c in priced if s is schedule}
        base_best = min((t for t in priced if t[1] is schedule), key=lambda t: t[2])   # the first of equals
        knob_best = min((t for t in priced if t[1] is not schedule), key=lambda t: t[2], default=None)
        best[lvl] = knob_best if knob_best and knob_best[2] <= KNOB_MARGIN * base_best[2] else base_best
        shown = dict(base_cost[lvl])   # and each algorithm's cheapest knob schedule where it beats the algorithm's own
        for a in plans:
            mine = [(s, c) for a2, s, c in priced if a2 == a and s is not schedule]
            if mine and min(c for _, c in mine) < base_cost[lvl][a]:
                s, c = min(mine, key=lambda t: t[1])
                shown[f"{a} {knob_label(s)}"] = c
        costs[lvl] = shown
    # segments of n: (lo, hi, level, algorithm, schedule, why of the batch knobs)
    segs: list[tuple] = []
    prev_max = 0
    for lvl in ALL_LEVELS:
        if limits[lvl] is not None and limits[lvl] <= prev_max:
            continue   # a level no larger than the one below (misreported caches): nothing fits only there
        lo, hi = prev_max + 1, limits[lvl]
        alg, win, _ = best[lvl]
        for a, b, sched, bwhy in _level_batches(plans[alg], target, lvl, lo, hi, win, knobs.get(lvl, ())):
            segs.append((a, b, lvl, alg, level_schedule(target, lvl, sched, plans[alg], stream), bwhy))
        if hi is not None:
            prev_max = hi
    # neighbouring segments of one variant: one entry (of one or more levels)
    spans: list[list[tuple]] = []
    for seg in segs:
        if spans and spans[-1][-1][3:5] == seg[3:5]:
            spans[-1].append(seg)
        else:
            spans.append([seg])

    def short(key: str) -> str:
        alg, _, kn = key.partition(" ")
        return f"{SHORT[alg]} {kn}".strip()

    entries = []
    for span in spans:
        alg, sched = span[0][3], span[0][4]
        lvls = list(dict.fromkeys(seg[2] for seg in span))
        why = "model: " + "; ".join(
            f"{lvl} " + ", ".join(f"{short(a)} {c:.2f}" for a, c in sorted(costs[lvl].items(), key=lambda t: t[1]))
            for lvl in lvls) + " cycles/element"
        # the single-row knob schedule of the span's levels (a span from L1d may take it from a batch knob
        # there), where the span runs it (short rows of L1d may not: lazymax, _batch_choice at n)
        win = next((best[lvl][1] for lvl in lvls if best[lvl][1] is not schedule), schedule)
        runs = {k: win[k] for k in ("exp", "lazymax") if win.get(k) and sched.get(k) == win[k]}
        if win is not schedule and runs:
            why += (f"; {SHORT[alg]} {knob_label(runs)}: " + _knob_why(runs, target) + " ("
                    + ("" if knob_label(runs) == knob_label(win) else f"single rows from {SHORT[alg]} {knob_label(win)}: ")
                    + ", ".join(f"{lvl} {base_cost[lvl][alg]:.2f} -> {best[lvl][2]:.2f}" for lvl in lvls
                                if best[lvl][1] == win)
                    + " cycles/element)")
        bwhy = "; ".join(dict.fromkeys(seg[5] for seg in span if seg[5]))
        if bwhy:
            why += "; " + bwhy
        if sched.get("stream") and not schedule.get("stream"):
            why += "; non-temporal stores: the row's working set is beyond the last-level cache"
        entries.append(Entry(span[0][0], span[-1][1], alg, sched, 0, why,
                             grain=thread_policy(plans[alg], target).grain))
    sizes = ", ".join(f"{lvl} {v >> 10} KiB" for lvl, v in caches.sizes().items())
    basis = (f"caches {sizes} ({caches.source}), working set {BYTES_PER_N} B x n, "
             f"target {target.name} [cost] hints")
    return DispatchTable(tuple(entries), "model", basis, costs)
