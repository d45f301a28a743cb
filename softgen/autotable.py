"""What ``algorithm="auto"`` resolves to before anything is generated: the algorithm of a
plain compile (``choose_algorithm``, ``attention_algorithm``), the dispatch table of a row op
from the cost model (``auto_table``) or from this machine's tuning records (``tuned_table``,
with the thread cap a record implies, ``thread_cap``), and a matrix op's tuned GEMM tile
(``tuned_gemm``) or streaming attention blocks (``tuned_attention``). Plain data out
(``costmodel.DispatchTable``, ``GemmSchedule``, dicts); ``kernel.compile`` generates from it."""
from __future__ import annotations

import math
import os
from dataclasses import replace
from itertools import product

from . import passes, tunedb
from .backends import Backend, get_backend
from .backends.gemm import schedule_for
from .costmodel import (
    ALL_LEVELS,
    BATCH_ROWS,
    PRICED_KNOBS,
    DispatchTable,
    Entry,
    batch_level,
    model_table,
    thread_policy,
)
from .errors import UsageError
from .ir import Program
from .machine import caches
from .matrix import MatrixProgram
from .schedule import ATTENTION_KNOBS, KNOB_DEFAULTS, GemmSchedule, Schedule, default_schedule
from .targets import Target, get_target


def choose_algorithm(program: Program, target: str, algorithm: str) -> str:
    """The algorithm of a row op's compile, validated; auto: the first of the target file's
    ``auto_algorithms`` that applies (the dispatch table, where there is one, overrides it)."""
    algorithm = passes.ALIASES.get(algorithm, algorithm)
    applicable = passes.applicable_algorithms(program)
    if algorithm == "auto":
        prefs = get_target(target).auto_algorithms   # the target file's preference
        return next(a for a in prefs + tuple(applicable) if a in applicable)
    if algorithm not in passes.ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r}; known: auto, {', '.join(passes.ALGORITHMS)}")
    if algorithm not in applicable:
        raise UsageError(f"algorithm {algorithm!r} does not apply to op {program.name!r}; "
                         f"it has: {', '.join(applicable)}")
    return algorithm


def model_schedules(be: Backend, target: Target, schedule: Schedule) -> dict[str, list[dict]]:
    """Per cache level, the schedules the model prices besides ``schedule``: each combination of
    the backend's tuning values (``Backend.tuning_knobs``) of the knobs the model has a term for
    (``costmodel.PRICED_KNOBS``: exp, lazymax, rows, pipeline) that the backend lowers
    (``schedule_knobs``), offers at the level (``tuning_knob_levels``) or on
    batches streamed from the level's ``costmodel.batch_level`` (``tuning_knob_batch_levels``:
    pipeline, lazymax) and on the target (``tuning_knob_requires``), set over ``schedule``; a knob
    ``schedule`` sets (not at its default) stays as it is. TVM lowers none: nothing."""
    out: dict[str, list[dict]] = {}
    for lvl in ALL_LEVELS:
        knobs = {k: v for k, v in be.tuning_knobs.items()
                 if k in PRICED_KNOBS and k in be.schedule_knobs and getattr(schedule, k) == KNOB_DEFAULTS[k]
                 and (lvl in be.tuning_knob_levels.get(k, ALL_LEVELS)
                      or batch_level(lvl) in be.tuning_knob_batch_levels.get(k, ()))
                 and (be.tuning_knob_requires.get(k) is None or getattr(target, be.tuning_knob_requires[k]))}
        scheds: dict[Schedule, None] = {}
        for combo in product(*knobs.values()):
            try:
                s = default_schedule(schedule, target.lanes, target.shifted_exp, **dict(zip(knobs, combo)))
            except UsageError:
                continue
            if s != schedule:
                scheds[s] = None
        out[lvl] = [s.as_dict() for s in scheds]
    return out


def auto_table(program: Program, target: Target, schedule: Schedule, be: Backend) -> DispatchTable | None:
    """The untuned dispatch table of ``algorithm="auto"`` (``costmodel.model_table``) over the
    algorithms of the target's ``auto_algorithms`` that apply (in that order: ties go to the
    earlier) and the knob schedules the model prices (``model_schedules``) for backend ``be``;
    None when the target file has no ``[cost]`` hints or none of them applies. Non-temporal
    stores beyond the LLC where ``be`` lowers them (``Backend.schedule_knobs``)."""
    applicable = passes.applicable_algorithms(program)
    candidates = [a for a in target.auto_algorithms if a in applicable]
    if not target.cost or not candidates:
        return None
    plans = {a: passes.plan(passes.apply_algorithm(program, a)) for a in candidates}
    return model_table(plans, target, caches(), schedule.as_dict(), "stream" in be.schedule_knobs,
                       model_schedules(be, target, schedule))


def _tuned_entries(recs: list, program: Program, target: Target, knobs: tuple = tuple(KNOB_DEFAULTS)) -> list:
    """Usable records (valid schedule, applicable algorithm, no knob outside ``knobs``: what the
    backend lowers), one per class of n: the one-thread plan (a record per thread count: the
    variant a call runs is the one-thread winner, FFTW's plan for one thread), else the newest; by
    n_min. Callers pass records of one kind (single rows or batches: ``tuned_table``)."""
    applicable = passes.applicable_algorithms(program)
    by_n: dict[tuple, object] = {}

    def rank(r) -> tuple:
        return (getattr(r, "threads", 1) == 1, r.timestamp)

    for r in recs:
        if r.algorithm not in applicable:
            continue
        try:
            rs = Schedule(**r.schedule).validate(target.lanes)
            if rs.stream and not target.streams:
                continue   # e.g. an imported record: this target has no non-temporal stores
            if any(k not in knobs for k in rs.knobs()):
                continue   # a knob this backend does not lower
        except (TypeError, UsageError):
            continue
        key = (r.n_min, r.n_max)
        old = by_n.get(key)
        if old is None or rank(r) > rank(old):
            by_n[key] = r
    return sorted(by_n.values(), key=lambda r: (r.n_min, r.n_max))


def _tiles(recs: list) -> list[tuple]:
    """(n_min, n_max or None, record) tiling n >= 1 from the records' classes of n: where classes
    overlap (records of one kind from different tuning runs: single rows of the default sizes and
    of ``--sizes 4096``), the narrowest class wins (the most specific measurement, as
    ``tunedb.lookup``), then the newest; a gap between classes is split at its geometric midpoint;
    the first tile starts at 1, the last has no upper bound."""
    cuts = sorted({r.n_min for r in recs} | {r.n_max + 1 for r in recs})
    tiles: list[list] = []
    for a, b in zip(cuts, cuts[1:]):
        cover = [r for r in recs if r.n_min <= a and b - 1 <= r.n_max]
        if not cover:
            continue
        r = min(cover, key=lambda r: (r.n_max - r.n_min, -r.timestamp))
        if tiles and tiles[-1][2] is r and tiles[-1][1] == a - 1:
            tiles[-1][1] = b - 1
        else:
            tiles.append([a, b - 1, r])
    for left, right in zip(tiles, tiles[1:]):
        if left[1] + 1 < right[0]:    # a gap: split it at its geometric midpoint
            mid = max(left[1], math.isqrt((left[1] + 1) * (right[0] - 1)))
            left[1], right[0] = mid, mid + 1
    if tiles:
        tiles[0][0], tiles[-1][1] = 1, None
    return [tuple(t) for t in tiles]


def measured_why(r) -> str:
    """An entry's ``why`` from its tuning record: its time, the next best variant and the noise."""
    why = f"measured: {r.ns_per_element:.3g} ns/el"
    if r.runners_up:
        name, ratio = min(r.runners_up.items(), key=lambda t: t[1])
        why += f", next best {name} {r.ns_per_element * ratio:.3g} ns/el ({ratio:.2f}x)"
    return why + f", noise {100 * r.noise:.1f}% ({r.repetitions} samples)"


def thread_cap(r, recs: list) -> tuple[int, str]:
    """(the cap of auto threads for batches, 0 none; why) of the entry made from record ``r``:
    a record's thread count applies to the rows it was measured on. The newest class of records
    measured on batches (``rows_min`` >= 2, ``softgen.tune`` of a batch shape) whose class of n
    overlaps ``r``'s caps it: its records hold a plan per thread count, and the count of the
    fastest one (against the one-thread plan timed in the same interleaved run) is the cap, 1 included (one thread was fastest; an older database: its one
    record's count); else ``r``'s own count when > 1 (only a batch can have measured more than
    one thread); else none (a record of single rows says nothing about batches: the model's
    policy, capped by the CPUs)."""
    batch = [b for b in recs if b.rows_min >= 2 and b.n_min <= r.n_max and r.n_min <= b.n_max]
    if batch:
        newest = max(batch, key=lambda b: b.timestamp)
        same = [b for b in batch if (b.n_min, b.n_max, b.rows_min, b.rows_max) ==
                (newest.n_min, newest.n_max, newest.rows_min, newest.rows_max)]
        one = next((x for x in same if x.threads == 1), None)

        def speed(x) -> float:   # over the one-thread plan: the interleaved ratio where the tuner timed it
            if x.threads > 1 and "threads=1" in x.runners_up:
                return x.runners_up["threads=1"]
            return one.ns_per_element / x.ns_per_element if one is not None else 1.0 / x.ns_per_element

        b = max(same, key=lambda x: (speed(x), -x.threads))
        why = (f"threads: at most {b.threads}, measured on batches (rows >= {b.rows_min}, "
               f"n {b.n_min}..{b.n_max}")
        if len(same) > 1:
            why += ": " + ", ".join(f"{x.threads} thread(s) {x.ns_per_element:.3g} ns/el"
                                    for x in sorted(same, key=lambda x: x.threads))
        if b.threads > 1 and (b.algorithm, b.schedule) != (r.algorithm, r.schedule):
            why += f"; the {b.threads}-thread plan was {b.algorithm} {b.schedule}, not dispatched: the variant is the one-thread plan"
        return b.threads, why + ")"
    if r.threads > 1:
        return r.threads, f"threads: at most {r.threads}, measured"
    return 0, "threads: the model's (measured on single rows: no thread count for batches)"


def _merged_cap(a: int, b: int) -> int:
    """One thread cap for two entries of one variant (its entry point bakes one in): the larger
    measured one, else the one measured (0: no thread count measured on batches)."""
    return max(a, b) if a and b else a or b


def _measured_entries(program: Program, target: Target, recs: list, all_recs: list,
                      rows: tuple[int, int | None]) -> list[Entry]:
    """The entries of one tiling of n (``_tiles``) from ``recs`` (usable records of one kind:
    single rows or batches), serving the calls of ``rows`` (rows_min, rows_max); neighbouring
    entries of one variant merged."""
    entries: list[Entry] = []
    for lo, hi, r in _tiles(recs):
        sched = Schedule(**r.schedule).validate(target.lanes).as_dict()
        # the cap of auto for batches: a thread count measured on batches; the model's grain
        # decides below it (rows x n)
        grain = thread_policy(passes.plan(passes.apply_algorithm(program, r.algorithm)), target).grain
        most, twhy = thread_cap(r, all_recs)
        e = Entry(lo, hi, r.algorithm, sched, most, f"{measured_why(r)}; {twhy}", grain=grain,
                  rows_min=rows[0], rows_max=rows[1])
        if entries and entries[-1].variant == e.variant:
            prev = entries.pop()
            e = replace(e, n_min=prev.n_min, threads=_merged_cap(e.threads, prev.threads), why=prev.why + " | " + e.why)
        entries.append(e)
    return entries


def tuned_table(program: Program, target: Target, backend: str,
                model: DispatchTable | None = None) -> DispatchTable | None:
    """The dispatch table of ``algorithm="auto"`` from this machine's tuning records
    (``tunedb.table``), or None when there are none (or the database cannot be read: then the
    model decides). Two tilings of n, one per kind of record: records of single rows (rows class
    from 1: ``softgen tune --sizes``) decide calls of fewer than ``costmodel.BATCH_ROWS`` rows,
    records of batches (rows class from 2: ``--shapes``) decide the others; a record of one kind
    never decides the other's calls (a pipeline plan that pays across 512 rows is no single row's
    plan, a single row's plan knows nothing of batches). Within a kind, each record's class of n
    becomes an entry (``_tiles``: the narrowest of overlapping classes, gaps split at their
    geometric midpoint, the first from n = 1, the last unbounded); neighbouring entries of one
    variant are merged. Where only one kind of record exists, the other kind's calls take
    ``model``'s entries (the untuned table, ``auto_table``); without a model (a target without
    ``[cost]`` hints) the records of the one kind are the only information and decide every call
    (one tiling, said in the basis). A variant in both tilings gets one thread cap
    (``_merged_cap``): its entry point bakes one in.
    ``SOFTGEN_USE_TUNING=0`` in the environment: always None (the model decides; the test suite
    sets it, so that a machine's tuning records do not change what its tests build)."""
    if os.environ.get("SOFTGEN_USE_TUNING", "1").strip() == "0":
        return None
    try:
        recs = tunedb.table(program.name, program.params, target, backend)
    except (tunedb.TuningDBError, UsageError):
        return None
    knobs = get_backend(backend).schedule_knobs
    single = _tuned_entries([r for r in recs if r.rows_min <= 1], program, target, knobs)
    batch = _tuned_entries([r for r in recs if r.rows_min >= 2], program, target, knobs)
    if not single and not batch:
        return None
    few, many = (1, BATCH_ROWS - 1), (BATCH_ROWS, None)
    first = (single or batch)[0]
    basis = (f"{len(single)} tuning record(s) of single rows and {len(batch)} of batches of this machine "
             f"({first.machine.get('model_name') or first.fingerprint}), {first.compiler} {first.compiler_version}")
    if single and batch:
        entries = _measured_entries(program, target, single, recs, few) + _measured_entries(program, target, batch, recs, many)
    elif model is not None:
        # the other kind's calls: the model's entries (not the records of the kind measured)
        fill = tuple(replace(e, rows_min=few[0] if batch else many[0], rows_max=few[1] if batch else many[1])
                     for e in model.entries)
        mine = _measured_entries(program, target, single or batch, recs, few if single else many)
        entries = [*fill, *mine] if batch else [*mine, *fill]
        basis += f"; {'batches' if single else 'single rows'}: the model ({model.basis})"
    else:
        entries = _measured_entries(program, target, single or batch, recs, (1, None))
        basis += f"; no model on this target: the records of {'single rows' if single else 'batches'} decide every call"
    caps: dict[tuple, int] = {}
    for e in entries:
        caps[e.variant] = _merged_cap(caps.get(e.variant, 0), e.threads)
    entries = [replace(e, threads=caps[e.variant]) for e in entries]
    return DispatchTable(_one_tiling_if_equal(entries), "measured", basis)


def _one_tiling_if_equal(entries: list[Entry]) -> tuple[Entry, ...]:
    """Two tilings of n that run the same variants at the same n: one for every call (the
    dispatch unit needs no test of rows), each entry's why saying both kinds'."""
    few = [e for e in entries if e.rows_max is not None]
    many = [e for e in entries if e.rows_max is None]
    if not few or len(few) != len(many) or any((a.n_min, a.n_max, a.variant) != (b.n_min, b.n_max, b.variant)
                                               for a, b in zip(few, many)):
        return tuple(entries)
    return tuple(replace(a, rows_min=1, rows_max=None, why=a.why if a.why == b.why else
                         f"{a.why} [{a.rows_range()}] || {b.why} [{b.rows_range()}]") for a, b in zip(few, many))


def attention_algorithm(be: Backend, program: MatrixProgram, algorithm: str, schedule) -> tuple:
    """(algorithm, AttentionSchedule or None, the schedule without br/bc) of a matrix op: the
    attention form's algorithms are "three-phase" (its phases as written) and "streaming"
    (``passes.stream_attention``; auto picks it where it applies and the backend streams)."""
    if passes.attention_form(program, softmax_rows=False) is None:
        if algorithm not in ("auto", "direct"):
            raise UsageError(f"matrix op {program.name!r} has one algorithm, 'direct' (its phases); "
                             f"got {algorithm!r}")
        return "direct", None, schedule
    if algorithm not in ("auto", "three-phase", "streaming"):
        raise UsageError(f"op {program.name!r} has the algorithms 'three-phase' and 'streaming' (auto: streaming); "
                         f"got {algorithm!r}")
    alg = "three-phase" if algorithm == "three-phase" else "streaming"
    why = passes.streamable(program)
    if alg == "streaming" and why and algorithm == "streaming":
        raise UsageError(f"{program.name}: no streaming form yet for this normalizer (the rewrite streams "
                         f"{', '.join(passes.STREAMING_NORMALIZERS)}: {why}); use algorithm='three-phase'")
    norm = program.params.get("normalizer", "softmax")
    streams = norm in be.streams_attention
    if alg == "streaming" and not streams and algorithm == "streaming":
        raise UsageError(f"backend {be.name!r} has no streaming attention form for {norm!r} yet (it streams "
                         f"{', '.join(be.streams_attention) or 'none'}): use algorithm='three-phase'")
    if why or not streams:
        alg = "three-phase"
    given = dict(schedule.as_dict() if isinstance(schedule, Schedule) else schedule or {})
    blocks = {k: given.pop(k) for k in ATTENTION_KNOBS if k in given}
    return alg, blocks, (given or None) if not isinstance(schedule, Schedule) else schedule


def attention_why(be: Backend, program: MatrixProgram, alg: str) -> str:
    """Why an attention matrix op has the form ``alg`` ("streaming" or "three-phase") on backend
    ``be``: what ``algorithm="auto"`` weighed (``attention_algorithm``), for explain."""
    why = passes.streamable(program)
    norm = program.params.get("normalizer", "softmax")
    if alg == "streaming":
        return f"the {norm} normalizer streams and backend {be.name!r} lowers the streaming form (what auto picks)"
    if why:
        return f"the {norm} normalizer does not stream ({why})"
    if norm not in be.streams_attention:
        return f"backend {be.name!r} has no streaming form for {norm}"
    return "requested (auto would stream)"


def tuned_attention(program: MatrixProgram, target: Target, backend: str) -> tuple[dict, str]:
    """The streaming attention form's blocks {br, bc, wide} from this machine's newest usable tuning
    record (``softgen tune --op attention``: algorithm "streaming"), and its ``why``; ({}, "")
    without one (or with ``SOFTGEN_USE_TUNING=0``)."""
    if os.environ.get("SOFTGEN_USE_TUNING", "1").strip() == "0":
        return {}, ""
    try:
        recs = tunedb.table(program.name, program.params, target, backend)
    except (tunedb.TuningDBError, UsageError):
        return {}, ""
    for r in sorted(recs, key=lambda r: r.timestamp, reverse=True):
        # {br, bc} (records from before the single-block mode: wide from the target) or all knobs
        if r.algorithm != "streaming" or not {"br", "bc"} <= set(r.schedule) <= set(ATTENTION_KNOBS):
            continue
        try:
            return target.attention.override(**r.schedule).as_dict(), measured_why(r)
        except (TypeError, UsageError):
            continue
    return {}, ""


def tuned_gemm(program: MatrixProgram, target: Target, backend: str) -> tuple[GemmSchedule | None, str]:
    """The GEMM schedule of a matrix op from this machine's newest usable tuning record (``softgen
    tune --op <matrix op>``: algorithm "direct", the schedule's fields mr, nv, kc, nc, ku), and
    its ``why``; (None, "") without one (or with ``SOFTGEN_USE_TUNING=0``)."""
    if os.environ.get("SOFTGEN_USE_TUNING", "1").strip() == "0":
        return None, ""
    try:
        recs = tunedb.table(program.name, program.params, target, backend)
    except (tunedb.TuningDBError, UsageError):
        return None, ""
    for r in sorted(recs, key=lambda r: r.timestamp, reverse=True):
        try:
            return schedule_for(target, GemmSchedule(**r.schedule)), measured_why(r)
        except (TypeError, UsageError):
            continue
    return None, ""
