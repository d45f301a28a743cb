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


def _rows(table) -> list[tuple]:
    return [(e.n_min, e.n_max, e.algorithm, bool(e.schedule.get("lazymax")), e.schedule.get("exp", ""))
            for e in table.entries]


@pytest.mark.parametrize("target", ["avx2", "avx512"])
def test_lazymax_beyond_l1d_where_three_pass_reload_wins(target):
    table = _table("softmax", target)
    assert _rows(table) == [(1, L1, "three-pass-reload", False, ""), (L1 + 1, L3, "three-pass-reload", True, ""),
                            (L3 + 1, None, "two-pass", False, "")]
    why = table.entries[1].why
    assert "3pl lz: lazymax: no max sweep" in why and "L2 " in why and "L3 " in why and " -> " in why
    # the costs behind it: at L2 and L3 lazymax is cheaper than three-pass-reload's own max sweep
    assert table.costs["L2"]["three-pass-reload lz"] < table.costs["L2"]["three-pass-reload"]
    assert "three-pass-reload lz" not in table.costs["L1d"]   # not offered in L1d (tuning_knob_levels)
    # exp variants are priced, but none is cheaper than the target's default exps: not taken
    assert not any(e.schedule.get("exp") for e in table.entries)


def test_targets_tables_are_sensible():
    # neon and scalar: compute-bound, three-pass-reload everywhere, with lazymax beyond L1d
    for t in ("neon", "scalar"):
        assert _rows(_table("softmax", t)) == [(1, L1, "three-pass-reload", False, ""),
                                               (L1 + 1, None, "three-pass-reload", True, "")]


@pytest.mark.parametrize("op,backend,schedule", [
    ("log_softmax", "c", None),            # no lazy_max form (its output sweep reads x)
    ("softmax", "tvm", None),              # TVM lowers no schedule knob
    ("softmax", "c", {"rows": 2}),         # rows=R has no lazymax form
    ("softmax", "c", {"exp": "p6c2"}),     # a knob the caller set is kept, the others still priced
])
def test_never_lazymax_where_it_does_not_apply(op, backend, schedule):
    table = _table(op, "avx2", backend, schedule)
    lazy = [e for e in table.entries if e.schedule.get("lazymax")]
    if schedule == {"exp": "p6c2"}:
        assert lazy and all(e.schedule["exp"] == "p6c2" for e in table.entries)
        return
    assert not lazy and "lz" not in " ".join(table.costs["L2"])
    # and no other knob pays there: the table is the one without priced knobs
    assert table.entries == _table(op, "avx2", backend, schedule, knobs=False).entries


def test_model_schedules_follow_the_backend_and_the_level():
    t, c, tvm = get_target("avx512"), get_backend("c"), get_backend("tvm")
    base = default_schedule(t.schedule, t.lanes, t.shifted_exp)
    got = autotable.model_schedules(c, t, base)
    assert not any(s.get("lazymax") for s in got["L1d"]) and not any(s.get("exp") for s in got["DRAM"])
    assert {(s.get("exp", ""), s.get("lazymax", False)) for s in got["L2"]} == \
        {(e, lz) for e in c.tuning_knobs["exp"] for lz in (False, True)} - {("", False)}
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
    # batches: the knobs of the whole R x n working set too (tune.level_schedules' batch_level), as
    # softgen tune offers them: lazymax (first touch of each short row) and pipeline
    batch = issue13.sweep_candidates(p, t, be, ZEN3, 4096, 512)
    assert {s.rows for _, s in batch} == {1, 2, 4}
    assert any(s.lazymax and s.rows > 1 for _, s in batch) and any(s.pipeline and s.rows == 1 for _, s in batch)
    assert not any(s.pipeline and s.rows > 1 for _, s in batch)          # pipeline refuses R rows
    small = issue13.sweep_candidates(p, t, be, ZEN3, 4, 512)          # the whole batch in L1d: no lazymax
    assert not any(s.lazymax for _, s in small) and any(s.pipeline for _, s in small)
    wide = issue13.sweep_candidates(p, t, be, ZEN3, 64, 1 << 15)   # L2 rows: lazymax one row and R rows
    assert any(s.lazymax and s.rows == 1 for _, s in wide)
