"""The untuned model's knob schedules (issue 13): ``algorithm="auto"`` prices the backend's exp and
lazymax knobs per cache level (``autotable.model_schedules``, ``costmodel.model_table``) and takes
one only where the target's [cost] hints say it pays; lazymax only where docs/ops.md §3.1 applies.
Generation only: nothing here compiles."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from softgen import autotable, costmodel, machine, passes
from softgen.backends import get_backend
from softgen.ops import build_program
from softgen.schedule import Schedule, default_schedule
from softgen.targets import get_target

ZEN3 = machine.Caches(L1d=32 << 10, L2=512 << 10, L3=32 << 20, source="test")
L1, L3 = (32 << 10) // 8, (32 << 20) // 8      # the last n of L1d and of L3


def _table(op: str, target, backend: str = "c", schedule: dict | None = None, caches=ZEN3, knobs: bool = True):
    """The model's table as ``compile(op, target=..., backend=...)`` makes it (``knobs`` False:
    without the priced knob schedules, as before they were priced)."""
    t = get_target(target) if isinstance(target, str) else target
    program = build_program(op)
    sched = default_schedule(t.schedule, t.lanes, t.shifted_exp, **(schedule or {}))
    plans = {a: passes.plan(passes.apply_algorithm(program, a)) for a in t.auto_algorithms
             if a in passes.applicable_algorithms(program)}
    be = get_backend(backend)
    return costmodel.model_table(plans, t, caches, sched.as_dict(), "stream" in be.schedule_knobs,
                                 autotable.model_schedules(be, t, sched) if knobs else None)


def _rows(table, batch: bool = False) -> list[tuple]:
    """The table's entries as (n_min, n_max, algorithm, lazymax, exp), batch knobs (rows, pipeline)
    aside (neighbours that differ only in them merged) unless ``batch``."""
    out = []
    for e in table.entries:
        row = (e.n_min, e.n_max, e.algorithm, bool(e.schedule.get("lazymax")), e.schedule.get("exp", ""))
        if batch:
            out.append(row + (e.schedule.get("rows", 1), bool(e.schedule.get("pipeline"))))
        elif out and out[-1][2:] == row[2:] and out[-1][1] == row[0] - 1:
            out[-1] = (out[-1][0],) + row[1:]
        else:
            out.append(row)
    return out


@pytest.mark.parametrize("target", ["avx2", "avx512"])
def test_lazymax_beyond_l1d_where_three_pass_reload_wins(target):
    table = _table("softmax", target)
    # (the lazymax entry may start in L1d: batches of rows there take it, batch_cycles)
    beyond = [dataclasses.replace(e, n_min=max(e.n_min, L1 + 1)) for e in table.entries if e.n_max is None or e.n_max > L1]
    assert _rows(DispatchLike(beyond)) == [(L1 + 1, L3, "three-pass-reload", True, ""), (L3 + 1, None, "two-pass", False, "")]
    assert all(e.algorithm == "three-pass-reload" and not e.schedule.get("exp") for e in table.entries if e.n_min <= L1)
    why = beyond[0].why
    assert "3pl lz: lazymax: no max sweep" in why and "L2 " in why and "L3 " in why and " -> " in why
    # the costs behind it: at L2 and L3 lazymax is cheaper than three-pass-reload's own max sweep
    assert table.costs["L2"]["three-pass-reload lz"] < table.costs["L2"]["three-pass-reload"]
    # in L1d too (tuning_knob_levels: its max sweep is a sweep of its own), single rows from 1K on: short
    # rows keep their max sweep (the first LAZY_FIRST elements and a chain more per row: not cheaper)
    assert table.costs["L1d"]["three-pass-reload lz"] < table.costs["L1d"]["three-pass-reload"]
    assert _entry_at(table, 1024).schedule.get("lazymax") and not _entry_at(table, 128).schedule.get("lazymax")
    # exp variants are priced, but none is cheaper than the target's default exps: not taken
    assert not any(e.schedule.get("exp") for e in table.entries)


def _entry_at(table, n: int):
    return next(e for e in table.entries if e.n_min <= n and (e.n_max is None or n <= e.n_max))


@dataclasses.dataclass
class DispatchLike:
    entries: list


def test_targets_tables_are_sensible():
    # neon and scalar: compute-bound, three-pass-reload everywhere, with lazymax beyond L1d
    for t in ("neon", "scalar"):
        table = _table("softmax", t)
        assert {e.algorithm for e in table.entries} == {"three-pass-reload"} and table.entries[-1].n_max is None
        assert all(e.schedule.get("lazymax") for e in table.entries if e.n_min > L1)


@pytest.mark.parametrize("op,backend,schedule", [
    ("log_softmax", "c", None),            # no lazy_max form (its output sweep reads x)
    ("softmax", "tvm", None),              # TVM lowers no schedule knob
    ("softmax", "c", {"exp": "p6c2"}),     # a knob the caller set is kept, the others still priced
])
def test_never_lazymax_where_it_does_not_apply(op, backend, schedule):
    table = _table(op, "avx2", backend, schedule)
    lazy = [e for e in table.entries if e.schedule.get("lazymax")]
    if schedule == {"exp": "p6c2"}:
        assert lazy and all(e.schedule["exp"] == "p6c2" for e in table.entries)
        return
    assert not lazy and "lz" not in " ".join(table.costs["L2"])
    # and no other knob pays there but on batches (pipeline): the table without priced knobs otherwise
    plain = _table(op, "avx2", backend, schedule, knobs=False).entries
    assert [(e.n_min, e.n_max, e.algorithm) for e in table.entries] == [(e.n_min, e.n_max, e.algorithm) for e in plain]
    assert all({k: v for k, v in e.schedule.items() if k not in ("pipeline", "rows")} == p.schedule
               for e, p in zip(table.entries, plain))


def test_model_schedules_follow_the_backend_and_the_level():
    t, c, tvm = get_target("avx512"), get_backend("c"), get_backend("tvm")
    base = default_schedule(t.schedule, t.lanes, t.shifted_exp)
    got = autotable.model_schedules(c, t, base)
    # L1d: lazymax and pipeline as batch knobs (a batch of L1d rows streams from L3: batch_level)
    assert any(s.get("lazymax") for s in got["L1d"]) and any(s.get("pipeline") for s in got["L1d"])
    assert not any(s.get("exp") or s.get("rows", 1) > 1 for s in got["DRAM"])
    assert {(s.get("exp", ""), s.get("lazymax", False)) for s in got["L2"]} == \
        {(e, lz) for e in c.tuning_knobs["exp"] for lz in (False, True)}
    assert {s.get("rows", 1) for s in got["L2"]} == set(c.tuning_knobs["rows"])
    assert not any(s.get("pipeline") and s.get("rows", 1) > 1 for lvl in got for s in got[lvl])   # refused
    assert all(Schedule(**s).validate(t.lanes) for lvl in got for s in got[lvl])
    assert autotable.model_schedules(tvm, t, base) == {lvl: [] for lvl in costmodel.ALL_LEVELS}
    lz = dataclasses.replace(base, lazymax=True)      # given: not varied
    assert all(s["lazymax"] for lvl in ("L2", "DRAM") for s in autotable.model_schedules(c, t, lz)[lvl])


def test_an_exp_variant_is_taken_where_the_target_data_says_it_pays():
    t = get_target("avx2")
    cheap = dataclasses.replace(t, cost={**t.cost, "exp": {**t.cost.get("exp", {}), "p6c2": 4}})
    table = _table("softmax", cheap)
    inside = [e for e in table.entries if e.n_max is not None]
    assert inside and all(e.schedule.get("exp") == "p6c2" for e in inside)   # exp is priced in cache
    assert "exp variant p6c2: [cost.exp] 4 instructions per vector" in inside[0].why
    assert not table.entries[-1].schedule.get("exp")     # beyond the LLC: not offered (tuning_knob_levels)


def test_issue13_sweep_has_the_knobs_the_model_prices(monkeypatch):
    """bench/issue13.py's sweep (what softgen tune considers per size, uncut) holds lazymax and the
    exp variants where the model can pick them, so model/best compares with an honest best."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench import issue13
    t, be, p = get_target("avx512"), get_backend("c"), build_program("softmax")
    l2 = issue13.sweep_candidates(p, t, be, ZEN3, 1, 1 << 16)
    labels = {issue13.sweep_label(a, s, Schedule(**t.schedule.as_dict())) for a, s in l2}
    assert "3pl u4a2 lz" in labels and "3pl u4a2 t32 lz" in labels and "3pl u8a2" in labels
    assert {"3pl u4a2 p6c2", "3pl u4a2 p5c2"} <= labels and not any("lz" in x for x in labels if x.startswith("2p"))
    assert len(l2) == len(set(l2)) and not any(s.rows > 1 or s.stream for _, s in l2)
    dram = issue13.sweep_candidates(p, t, be, ZEN3, 1, 1 << 24)
    assert {(a, s.stream, s.lazymax) for a, s in dram if s.stream or s.lazymax} >= {("two-pass", True, False)}
    assert not any(s.exp for _, s in dram)
    # at the L3's edge (4M elements, 32 MiB: half of it or more) DRAM's knobs too: two-pass nt
    edge = issue13.sweep_candidates(p, t, be, ZEN3, 1, 1 << 22)
    assert any(a == "two-pass" and s.stream for a, s in edge) and any(s.lazymax for _, s in edge)
    assert not any(s.stream for _, s in issue13.sweep_candidates(p, t, be, ZEN3, 1, 1 << 20))
    # batches: the knobs of the whole R x n working set too (tune.level_schedules' batch_level), as
    # softgen tune offers them: lazymax (first touch of each short row) and pipeline
    batch = issue13.sweep_candidates(p, t, be, ZEN3, 4096, 512)
    assert {s.rows for _, s in batch} == {1, 2, 4}
    assert any(s.lazymax and s.rows > 1 for _, s in batch) and any(s.pipeline and s.rows == 1 for _, s in batch)
    assert not any(s.pipeline and s.rows > 1 for _, s in batch)          # pipeline refuses R rows
    small = issue13.sweep_candidates(p, t, be, ZEN3, 4, 512)          # the whole batch in L1d: lazymax of L1d rows
    assert any(s.lazymax and s.rows == 1 for _, s in small) and any(s.pipeline for _, s in small)
    # single rows in L1d (1K, 4K): lazymax over each exp variant, as softgen tune offers it there
    for n in (1 << 10, 1 << 12):
        l1 = {issue13.sweep_label(a, s, Schedule(**t.schedule.as_dict())) for a, s in issue13.sweep_candidates(p, t, be, ZEN3, 1, n)}
        assert {"3pl u4a2 lz", "3pl u4a2 p5c2 lz", "3pl u4a2 t32 lz", "3pl u8a4"} <= l1
        assert not any("lz" in x for x in l1 if x.startswith("2p"))
    wide = issue13.sweep_candidates(p, t, be, ZEN3, 64, 1 << 15)   # L2 rows: lazymax one row and R rows
    assert any(s.lazymax and s.rows == 1 for _, s in wide)


ZEN4 = machine.Caches(L1d=32 << 10, L2=1 << 20, L3=32 << 20, source="test")


def _batch(e) -> tuple:
    return (e.schedule.get("rows", 1), bool(e.schedule.get("lazymax")), bool(e.schedule.get("pipeline")))


def test_batch_knobs_priced_on_batches():
    """Issue 13 (a): the model prices pipeline and rows=R (with lazymax) on a batch of rows streamed
    from L3 (costmodel.batch_cycles). Zen 4, avx512, 16 MiB batches (bench/results/batch512-*,
    interleaved): pipeline 0.82-0.88x three-pass-reload's time at n = 256-512, lazymax 0.68-0.81x at
    2048-4096; lazymax with pipeline 0.97-1.14x at 256-4096 (the model had taken it at 257-4096:
    1.25x the sweep's best at 4096 x 512 in the quiet issue 13 table)."""
    table = _table("softmax", "avx512", caches=ZEN4)
    at = {n: next(e for e in table.entries if e.n_min <= n and (e.n_max is None or n <= e.n_max))
          for n in (128, 512, 2048, 4096, 1 << 15, 1 << 26)}
    assert _batch(at[512]) == (1, False, True) and "batches: pp" in at[512].why
    assert _batch(at[128]) == (1, False, True)
    assert _batch(at[2048]) == _batch(at[4096]) == (1, True, False)   # lazymax: a batch's first touch of x
    assert _batch(at[1 << 15]) == (1, True, False)         # L2 rows: no pipeline (not priced beyond L1d)
    assert "3pl lz: lazymax: no max sweep" in at[2048].why
    assert at[1 << 26].algorithm == "two-pass" and at[1 << 26].schedule.get("stream")
    assert all(e.algorithm == "three-pass-reload" for e in table.entries[:-1])
    assert not any(e.schedule.get("lazymax") and e.schedule.get("pipeline") for e in table.entries)
    # at most one split per level: three variants (L1d's lazymax merges with L2's and L3's)
    assert len(table.variants) == 3


def test_no_level_split(monkeypatch):
    monkeypatch.setattr(costmodel, "LEVEL_SPLITS", 0)
    table = _table("softmax", "avx512", caches=ZEN4)
    assert len(table.variants) == 2 and _batch(table.entries[0]) == (1, True, False) and table.entries[0].n_min == 1


def test_pipeline_with_lazymax_prices_its_far_reads():
    """batch_cycles: in the pipelined loop x's first touch from the batch's level (lazymax's exp
    sweep makes it) adds to the loop's roofline instead of hiding under its compute, so lazymax
    and pipeline together cost more than pipeline alone, which streams x in with the max sweep
    first; and the pipeline hides the chain of the sum its output sweep waits for (a row later)."""
    t, pl = get_target("avx512"), passes.plan(passes.apply_algorithm(build_program("softmax"), "three-pass-reload"))
    for n in (256, 512, 1024, 4096):
        assert costmodel.batch_cycles(pl, t, "L1d", n, pipeline=True) < \
            costmodel.batch_cycles(pl, t, "L1d", n, lazymax=True, pipeline=True)
    bare = dataclasses.replace(t, cost={k: v for k, v in t.cost.items() if k != "reduce_latency_cycles"})
    lat = t.cost["reduce_latency_cycles"]
    gain = costmodel.batch_cycles(pl, t, "L1d", 512) - costmodel.batch_cycles(pl, t, "L1d", 512, pipeline=True)
    gain_bare = costmodel.batch_cycles(pl, bare, "L1d", 512) - costmodel.batch_cycles(pl, bare, "L1d", 512, pipeline=True)
    assert gain - gain_bare == pytest.approx(lat / 512)
    # the R-rows form keeps each row's lazymax reference in registers too: r2 lz spills on avx512 (u4)
    assert costmodel.rows_fit(t, {"rows": 2, "unroll": 4}) and not costmodel.rows_fit(t, {"rows": 2, "unroll": 4, "lazymax": True})
    assert costmodel.rows_fit(t, {"rows": 1, "unroll": 4, "lazymax": True})


def test_batch_cycles_terms():
    t, pl = get_target("avx512"), passes.plan(passes.apply_algorithm(build_program("softmax"), "three-pass-reload"))
    base = costmodel.batch_cycles(pl, t, "L1d", 512)
    # pipeline: one roofline over the output sweep and the exp sweep of the next row, in L1d only
    assert costmodel.batch_cycles(pl, t, "L1d", 512, pipeline=True) < costmodel.KNOB_MARGIN * base
    assert costmodel.batch_cycles(pl, t, "L2", 1 << 14, pipeline=True) == costmodel.batch_cycles(pl, t, "L2", 1 << 14)
    # rows=R: the per-row stall of each reduction chain over R rows; nothing without the hint
    lat = t.cost["reduce_latency_cycles"]
    assert costmodel.batch_cycles(pl, t, "L1d", 128) - costmodel.batch_cycles(pl, t, "L1d", 128, rows=2) == \
        pytest.approx(lat * 2 / 128 / 2)
    bare = dataclasses.replace(t, cost={k: v for k, v in t.cost.items() if k != "reduce_latency_cycles"})
    assert costmodel.batch_cycles(pl, bare, "L1d", 128, rows=2) == costmodel.batch_cycles(pl, bare, "L1d", 128)
    # a batch's first touch of x comes from L3: dearer than the single row's L1d sweeps
    assert base > costmodel.cycles_per_element(pl, t, "L1d")
    # lazymax: the exp sweep makes the first touch; the max sweep only over the first LAZY_FIRST
    assert costmodel.batch_cycles(pl, t, "L1d", 4096, lazymax=True) < base
    # avx2's 16 registers hold no two rows' unrolled exp sweeps: rows=R is not offered there
    assert costmodel.rows_fit(t, {"rows": 2, "unroll": 4}) and not costmodel.rows_fit(get_target("avx2"), {"rows": 2, "unroll": 4})
    assert not any(e.schedule.get("rows", 1) > 1 for e in _table("softmax", "avx2", caches=ZEN4).entries)


def test_r_row_lazymax_is_priced():
    """rows=R given: lazymax in the R-rows form is priced (it was left to the tuner)."""
    table = _table("softmax", "avx512", schedule={"rows": 2}, caches=ZEN4)
    assert all(e.schedule.get("rows") == 2 for e in table.entries if e.algorithm == "three-pass-reload")
    l2 = next(e for e in table.entries if e.n_min <= 1 << 15 <= (e.n_max or 1 << 62))
    assert l2.schedule.get("lazymax") and "3pl r2 lz" in l2.why


def test_batch_knobs_keep_the_margin(monkeypatch):
    """KNOB_MARGIN: a knob schedule displaces the default only that much cheaper, batch knobs too."""
    monkeypatch.setattr(costmodel, "KNOB_MARGIN", 0.5)
    table = _table("softmax", "avx512", caches=ZEN4)
    assert not any(_batch(e) != (1, False, False) for e in table.entries)
