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
it drops) where it is at least 3% cheaper (``KNOB_MARGIN``) than every algorithm under the given one. Per-op-kind hints rather than per-sweep measured counts: they compose for any op and
any rewrite the planner produces, so a new op or algorithm needs no new measurement or table.

The result is a ``DispatchTable``: plain data (ranges of n, the variant of each, why), which a
tuning record can replace (``source`` "measured" instead of "model").

Threads (``ThreadPolicy``, per entry): a call's rows are split across threads when its work pays
for them. The model's policy: one thread per ``grain`` elements of work (rows x n), ``grain`` twice
the target's ``[cost] parallel_overhead_cycles`` (waking and joining a worker, measured) over the
variant's cheapest cycles/element (its L1 cost: the smallest, so the
largest grain: "never slower than one thread on small inputs"); at most the CPUs the process may
run on (capped at run time in C, with ``SOFTGEN_NUM_THREADS``). A tuning record's thread count
replaces ``most``. The variant is still chosen by n alone; the thread count by rows x n.
Matrix kernels (``MatrixThreadPolicy``): one thread per ``grain`` (2 x the overhead) modelled
cycles of batch x cycles per matrix (``matrix_cycles``: a C expression in the dimensions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .ir import OPS
from .machine import LEVELS, Caches
from .matrix import AttentionPhase, ColsPhase, MatMulPhase, MatrixProgram, SweepPhase
from .passes import SHORT, Plan, lazy_max, max_shifted, pipeline_refusal, plan
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

    @property
    def policy(self) -> ThreadPolicy:
        """The entry's thread policy: at most ``threads`` (0: the CPUs), one per ``grain``."""
        return ThreadPolicy(self.threads, self.grain)

    def as_dict(self) -> dict:
        return {"n_min": self.n_min, "n_max": self.n_max, "algorithm": self.algorithm,
                "schedule": dict(self.schedule), "threads": self.threads, "grain": self.grain,
                "symbol": self.symbol, "why": self.why}

    @property
    def variant(self) -> tuple:
        """What identifies the entry's variant: algorithm and schedule (a dispatcher compiles one
        variant per distinct key: a tuned table may use one algorithm with two schedules)."""
        return variant_key(self.algorithm, self.schedule)

    def range(self) -> str:
        if self.n_max is None:
            return "any n" if self.n_min <= 1 else f"n >= {self.n_min}"
        return f"n <= {self.n_max}" if self.n_min <= 1 else f"{self.n_min} <= n <= {self.n_max}"


@dataclass(frozen=True)
class DispatchTable:
    """The entries cover n >= 1 in order, without gaps; ``source``: "model" (this module) or a
    tuner's "measured"; ``basis``: what the choice rests on (caches, hints), one line."""

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

    def with_symbols(self, symbols: dict[tuple, str]) -> "DispatchTable":
        """The table with each entry's ``symbol`` set from ``symbols`` (``Entry.variant`` -> name)."""
        return DispatchTable(tuple(Entry(e.n_min, e.n_max, e.algorithm, e.schedule, e.threads, e.why,
                                         symbols[e.variant], e.grain) for e in self.entries),
                             self.source, self.basis, self.costs)

    def as_list(self) -> list[dict]:
        return [e.as_dict() for e in self.entries]

    def lines(self) -> list[str]:
        """The table as text (header comments, ``explain``)."""
        out = [f"dispatch ({self.source}; {self.basis}):"]
        for e in self.entries:
            sched = " ".join(f"{k}={v}" for k, v in sorted(e.schedule.items()) if k not in ("block", "split", "chunk"))
            out.append(f"  {e.range():<24} {e.algorithm} ({SHORT[e.algorithm]}), {sched}, "
                       f"threads={e.threads or 'auto'} (auto: {e.policy.describe()})")
            out.append(f"    why: {e.why}")
        return out


def exp_instructions(p, v: int, target: Target, exp: str = "") -> float:
    """Vector instructions per vector of exp node ``v`` of program ``p`` under schedule ``exp``: the
    target's ``[cost.exp]`` hint of the variant it runs as (``Target.exp_variant``: the target's
    ``shifted_exp`` for the exps of x - max x), else ``[cost.instructions] exp``."""
    return exp_instructions_of(target, target.exp_variant(exp, bool(p.attrs(v).get("nonpos")) and max_shifted(p, v)))


def sweep_cycles(plan: Plan, target: Target, level: str, exp: str = "", lazymax: bool = False) -> list[float]:
    """Cycles per element of each sweep of ``plan`` on ``target`` with the row in ``level``;
    ``exp``: the schedule's exp variant (each variant costs its ``[cost.exp]`` hint); ``lazymax``:
    the schedule's (where ``passes.lazy_max`` applies: beyond L1d no max sweep but over the first
    LAZY_FIRST elements, one compare more per vector in the exp sweep)."""
    cost = target.cost
    ins, ipc, bw = cost["instructions"], cost["ipc"], cost["bandwidth"][level]
    p, out = plan.program, []
    lazy = lazymax and level != LEVELS[0] and not isinstance(lazy_max(plan), str)
    for s in plan.sweeps:
        if s.selected is not None:   # runs over the k selected entries, not per element
            continue
        if lazy and s.index == 0:    # its first LAZY_FIRST elements only: nothing per element of a long row
            out.append(0.0)
            continue
        nodes = [v for v in s.compute + s.reductions if OPS[p.op(v)].kind not in _FREE]
        kinds = [p.op(v) for v in nodes if p.op(v) != "exp"]
        kinds += ["materialize"] * len(s.stores) + ["reload"] * len(s.reloads)
        kinds += ["output"] * (s.output is not None)
        kinds += ["max"] * (lazy and s.index == 1)
        compute = (sum(ins.get(k, ins["default"]) for k in kinds)
                   + sum(exp_instructions(p, v, target, exp) for v in nodes if p.op(v) == "exp")) / target.lanes / ipc
        memory = 4 * (s.reads + s.writes) / bw
        out.append(max(compute, memory))
    return out


def cycles_per_element(plan: Plan, target: Target, level: str, exp: str = "", lazymax: bool = False) -> float:
    return sum(sweep_cycles(plan, target, level, exp, lazymax))


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


# the schedule knobs the model prices (sweep_cycles): exp (each variant its [cost.exp] hint) and
# lazymax (no max sweep beyond L1d, a compare more per vector); the others have no model term
PRICED_KNOBS = ("exp", "lazymax")
# A priced knob displaces the default schedule only when the model puts it this much cheaper: the
# per-op-kind hints are not that exact, and the default schedule is what sibling kernels share
# bitwise (top-k's dense output is the scatter of its sparse one, which has no row-long exp).
KNOB_MARGIN = 0.97


def knob_label(schedule: dict) -> str:
    """The priced knobs a schedule sets, short (``t32 lz``; "" at the defaults)."""
    return " ".join(x for x in (schedule.get("exp") or "", "lz" if schedule.get("lazymax") else "") if x)


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
    objection (otherwise the kernel is the one without the knob under another name)."""
    return ((not sched.get("lazymax") or not isinstance(lazy_max(plan), str))
            and (not sched.get("pipeline") or not pipeline_refusal(plan)))


def model_table(plans: dict[str, Plan], target: Target, caches: Caches, schedule: dict,
                stream: bool = True, knobs: dict[str, list[dict]] | None = None) -> DispatchTable:
    """The cheapest of ``plans`` (algorithm -> plan, in preference order: ties go to the earlier)
    per cache level, neighbouring levels with one variant merged into one entry. ``knobs``: per
    level, schedules besides ``schedule`` to price (``PRICED_KNOBS`` set over it: what the
    backend offers there, ``autotable.model_schedules``); one wins only where it costs at most
    ``KNOB_MARGIN`` x every algorithm under ``schedule``, and only for plans it changes (``knobs_apply``).
    ``stream``: whether the backend lowers non-temporal stores (``level_schedule``)."""
    limits = level_limits(caches)
    knobs = knobs or {}
    costs: dict[str, dict[str, float]] = {}
    best: dict[str, tuple[str, dict, float]] = {}
    base_cost: dict[str, dict[str, float]] = {}
    for lvl in ALL_LEVELS:
        cands = [(a, schedule) for a in plans]
        # the model prices lazymax one row at a time: R rows at once with lazymax is the tuner's to time
        cands += [(a, s) for s in knobs.get(lvl, ()) if s != schedule and not (s.get("lazymax") and s.get("rows", 1) > 1)
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
    winners = {lvl: best[lvl][0] for lvl in ALL_LEVELS}
    scheds = {lvl: level_schedule(target, lvl, best[lvl][1], plans[winners[lvl]], stream) for lvl in ALL_LEVELS}
    entries, n_min, prev_max = [], 1, 0
    spans: list[list[str]] = []
    for lvl in ALL_LEVELS:
        if limits[lvl] is not None and limits[lvl] <= prev_max:
            continue   # a level no larger than the one below (misreported caches): nothing fits only there
        if spans and winners[spans[-1][-1]] == winners[lvl] and scheds[spans[-1][-1]] == scheds[lvl]:
            spans[-1].append(lvl)
        else:
            spans.append([lvl])
        if limits[lvl] is not None:
            prev_max = limits[lvl]

    def short(key: str) -> str:
        alg, _, kn = key.partition(" ")
        return f"{SHORT[alg]} {kn}".strip()

    for span in spans:
        alg, n_max = winners[span[0]], limits[span[-1]]
        why = "model: " + "; ".join(
            f"{lvl} " + ", ".join(f"{short(a)} {c:.2f}" for a, c in sorted(costs[lvl].items(), key=lambda t: t[1]))
            for lvl in span) + " cycles/element"
        win = best[span[0]][1]
        if win is not schedule:
            why += (f"; {SHORT[alg]} {knob_label(win)}: " + _knob_why(win, target) + " ("
                    + ", ".join(f"{lvl} {base_cost[lvl][alg]:.2f} -> {best[lvl][2]:.2f}" for lvl in span)
                    + " cycles/element)")
        if scheds[span[0]].get("stream") and not schedule.get("stream"):
            why += "; non-temporal stores: the row's working set is beyond the last-level cache"
        entries.append(Entry(n_min, n_max, alg, scheds[span[0]], 0, why,
                             grain=thread_policy(plans[alg], target).grain))
        n_min = (n_max or 0) + 1
    sizes = ", ".join(f"{lvl} {v >> 10} KiB" for lvl, v in caches.sizes().items())
    basis = (f"caches {sizes} ({caches.source}), working set {BYTES_PER_N} B x n, "
             f"target {target.name} [cost] hints")
    return DispatchTable(tuple(entries), "model", basis, costs)
