"""The tuner (issue 13): softgen.tune fills the tuning database per size class, compile(auto)
builds its dispatcher from the records of this machine (tuned=True, "measured" entries), falls
back to the model without them, Ctrl-C keeps completed classes, the CLI reports and rejects.

Fast: tiny sizes, a budget of a few seconds, one schedule per algorithm where possible, and a
tuning database of each test's own (conftest.own_cache: the run's kernels, its own records)."""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import check, own_cache

import softgen
from softgen import costmodel, machine, tunedb
from softgen.benchmark import Timing
from softgen.targets import get_target, host_arch

tune_mod = importlib.import_module("softgen.tune")   # softgen.tune is the function
HOST = get_target("host")
SIZES = [300, 3000]


@pytest.fixture
def db(own_db, monkeypatch):
    """An empty tuning database of this test, tuning records in use."""
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    return tunedb.default()


def _tune(**kw):
    kw = {"sizes": SIZES, "budget_s": 3, "keep": 1, "progress": False, **kw}
    return softgen.tune("softmax", target=HOST.name, **kw)


def test_size_classes_tile_n_at_cache_levels_or_log_midpoints():
    c = machine.Caches(L1d=32 << 10, L2=1 << 20, L3=32 << 20, source="test")
    cls = tune_mod.size_classes([1024, 2048, 65536, 1 << 20, 16 << 20], c)
    assert cls[0] == (1, 1448)                                  # both in L1d: sqrt(1024*2048)
    assert cls[1] == (1449, (32 << 10) // 8)                    # L1d -> L2: the end of L1d
    assert cls[2] == (4097, (1 << 20) // 8)                     # L2 -> L3
    assert cls[3] == ((1 << 17) + 1, (32 << 20) // 8)           # L3 -> DRAM
    assert cls[4] == ((4 << 20) + 1, tune_mod.N_MAX)


def test_default_sizes_get_the_l3_edge_so_no_class_spans_it():
    """The default list (1K..16M) has no size near a 32 MB L3: the edge (n = L3 / 8 B) joins it,
    so the 1M measurement stops at L3 / 2 and the rows up to the edge have their own class."""
    c = machine.Caches(L1d=32 << 10, L2=1 << 20, L3=32 << 20, source="test")
    ns = [1024, 65536, 1 << 20, 16 << 20]
    assert tune_mod.edge_sizes(ns, c) == [4 << 20]
    cls = tune_mod.size_classes(sorted(ns + [4 << 20]), c)
    assert cls[2] == ((1 << 17) + 1, 2 << 20) and cls[3] == ((2 << 20) + 1, 4 << 20)
    assert tune_mod.edge_sizes([1024, 3 << 20], c) == []           # 24 MB: already near the edge
    assert tune_mod.edge_sizes(ns, machine.Caches(L1d=32 << 10, L2=1 << 20, L3=96 << 20, source="t")) == []


def test_candidates_come_from_the_backends_knobs():
    be = softgen.backends.get_backend("c")
    scheds = tune_mod.schedules(be, HOST)
    assert scheds[0] == softgen.compile("softmax", algorithm="two-pass", target=HOST.name).schedule
    assert {(s.unroll, s.accumulators) for s in scheds} >= {(2, 1), (2, 2), (4, 4), (8, 4)}
    assert all(s.unroll % s.accumulators == 0 for s in scheds)     # Schedule validated each (2x4 is not)
    assert not softgen.backends.get_backend("tvm").tuning_knobs    # algorithms only


def test_tune_fills_the_db_and_auto_uses_it(db, rng, monkeypatch):
    real, timed = tune_mod.sampler, []
    monkeypatch.setattr(tune_mod, "sampler", lambda v: timed.append(v) or real(v))
    res = _tune()
    # small classes are timed in C (issue 13: through Python a 1K call costs twice the kernel)
    assert timed and all(isinstance(v, tune_mod.CLoop) for v in timed) or tune_mod._repeat is None
    assert len(res.records) == 2 and not res.interrupted
    recs = tunedb.table("softmax", {}, HOST.name, "c")
    assert [(r.n_min, r.n_max) for r in recs] == [c.n_range for c in res.classes]
    assert recs[0].n_min == 1 and recs[-1].n_max == tune_mod.N_MAX
    for r, c in zip(recs, res.classes):
        assert r.n_min <= c.n <= r.n_max and r.noise >= 0 and r.repetitions >= tune_mod.MIN_ROUNDS
        assert c.pruned + len(c.timed) == c.candidates and len(c.timed) >= 2
        assert r.runners_up and all(v > 0 for v in r.runners_up.values())
    assert "size classes" in res.report() and "pruned by the model" in res.report()

    k = softgen.compile("softmax", target=HOST.name)
    assert k.tuned and k.dispatch.source == "measured"
    # single rows measured; batches (no record of them) the model's (costmodel.BATCH_ROWS)
    few = [e for e in k.dispatch.entries if e.rows_max is not None]
    assert few and all(e.why.startswith("measured: ") and "next best" in e.why and "noise" in e.why for e in few)
    assert all(e.why.startswith("model: ") for e in k.dispatch.entries if e.rows_max is None)
    assert k.explain(as_json=True)["tuned"] is True and "tuned: yes" in k.explain()
    # the dispatcher is correct at its thresholds and bitwise equal to the chosen variant
    edges = sorted({n for e in k.dispatch.entries if e.n_max is not None for n in (e.n_max, e.n_max + 1)})
    for n in [1, 7, *SIZES, *edges]:
        for rows in (costmodel.BATCH_ROWS - 1, costmodel.BATCH_ROWS):
            e = k.dispatch.pick(n, rows)
            x = (rng.standard_normal((rows, n)) * 4).astype(np.float32)
            y = k(x)
            check(k, x, y, f"n={n}")
            want = softgen.compile("softmax", algorithm=e.algorithm, target=HOST.name, schedule=e.schedule)
            assert np.array_equal(y, want(x)), (n, rows, e)
    # with the tuning records off, or a fixed schedule: the model
    assert not softgen.compile("softmax", target=HOST.name, schedule={"unroll": 4}).tuned


def test_l1d_classes_time_every_unroll_and_accumulator_count(db, monkeypatch):
    """keep=None (the default): a row in L1d is compute-bound and timed in C, so every unroll x
    accumulators schedule of the kept algorithm is timed (the sweep's best there is often u8a4,
    far from the default); beyond L1d only the KEEP nearest the default."""
    monkeypatch.setattr(tune_mod, "PRUNE_RATIO", 1.0)          # the model's best algorithm only
    monkeypatch.setattr(tune_mod, "KNOB_PRUNE_RATIO", 1.0)
    (c,) = _tune(sizes=[512], keep=None, budget_s=2).classes
    grid = {(u, a) for u in (2, 4, 8) for a in (1, 2, 4) if a <= u}   # Schedule: accumulators <= unroll
    got = {(int(m[1]), int(m[2])) for m in (re.search(r" u(\d+)a(\d+)", lab) for lab, _ in c.timed) if m}
    assert grid <= got, sorted(got)


def test_same_algorithm_two_schedules_get_unique_symbols(db, rng, tmp_path):
    s1 = {"unroll": 2, "accumulators": 1}
    s2 = {"unroll": 8, "accumulators": 4}
    for n, s in ((300, s1), (3000, s2)):
        sched = softgen.Schedule(**{**softgen.compile("softmax", algorithm="two-pass", target=HOST.name)
                                    .schedule.as_dict(), **s}).validate(HOST.lanes)
        tunedb.record("softmax", {}, HOST.name, "c", n=(1, 1000) if n == 300 else (1001, 1 << 40),
                      rows=(1, 1 << 40), algorithm="two-pass", schedule=sched.as_dict(),
                      ns_per_element=1.0, noise=0.01, repetitions=9, runners_up={"3pl u4a2": 1.1})
    k = softgen.compile("softmax", target=HOST.name)
    # the records' two (single rows), besides the model's variants for batches
    few = [e for e in k.dispatch.entries if e.rows_max is not None]
    mine = [v for v in k.variants if v.name in {e.symbol for e in few}]
    assert k.tuned and k.dispatcher and len(few) == len(mine) == 2
    assert len({v.name for v in k.variants}) == len(k.variants) and {v.schedule.unroll for v in mine} == {2, 8}
    for n in (999, 1000, 1001, 1002):
        x = rng.standard_normal((2, n)).astype(np.float32)
        check(k, x, k(x), f"n={n}")
    man = json.loads(Path(k.export(tmp_path / "out")["manifest"]).read_text())
    assert man["tuned"] is True and man["dispatch_source"] == "measured"


def test_no_records_or_another_machine_means_the_model(db):
    assert not softgen.compile("softmax", target=HOST.name).tuned
    rec = tunedb.record("softmax", {}, HOST.name, "c", n=(1, 1 << 40), rows=(1, 1 << 40),
                        algorithm="online", schedule=softgen.compile("softmax", algorithm="online",
                                                                     target=HOST.name).schedule.as_dict(),
                        ns_per_element=1.0, noise=0.01, repetitions=9)
    assert softgen.compile("softmax", target=HOST.name).tuned
    tunedb.clear()
    other = tunedb.TuningRecord(**{**rec.as_json(), "fingerprint": "0" * 16})
    db.add(other)
    k = softgen.compile("softmax", target=HOST.name)
    assert not k.tuned and (k.dispatch is None or k.dispatch.source == "model")


def test_c_timing_loop_times_the_kernel_alone(rng, monkeypatch):
    """tune.CLoop: number back-to-back calls of <name>_mt timed in C, the kernel's result written;
    arrays the fast path declines (strided rows, float64) give None (Python's path then), as do
    several buffer pairs (DRAM rotation) and sizes above C_LOOP_MAX."""
    if tune_mod._repeat is None:
        pytest.skip("softgen._fastcall is not built")
    k = softgen.compile("softmax", target="scalar", algorithm="two-pass")
    x = rng.standard_normal((2, 64)).astype(np.float32)
    y = np.zeros_like(x)
    loop = tune_mod.c_loop(k, x, y, 1)
    assert isinstance(loop, tune_mod.CLoop) and tune_mod.sampler(loop) == loop.timeit
    y.fill(0)
    t1, t100 = loop.timeit(1), loop.timeit(1000)
    assert 0 < t1 < t100 and np.array_equal(y, k(x))
    assert tune_mod.c_loop(k, x[:, ::2], y[:, ::2], 1) is None
    assert tune_mod.c_loop(k, x, y.astype(np.float64), 1) is None
    assert isinstance(tune_mod.timed_variant(k, [(x, y)], 1), tune_mod.CLoop)
    assert not isinstance(tune_mod.timed_variant(k, [(x, y), (x.copy(), y.copy())], 1), tune_mod.CLoop)
    monkeypatch.setattr(tune_mod, "C_LOOP_MAX", x.size - 1)
    assert not isinstance(tune_mod.timed_variant(k, [(x, y)], 1), tune_mod.CLoop)
    with pytest.raises(ValueError):
        tune_mod._repeat(loop.fp, x, y, 1, 0)


def test_ctrl_c_keeps_completed_classes(db, monkeypatch):
    real = tune_mod.sampler
    calls = {"n": 0}

    def sampler(variant):
        f = real(variant)

        def timed(number):
            if len(tune_mod_records()) >= 1:      # the first class is recorded: interrupt the second
                raise KeyboardInterrupt
            calls["n"] += 1
            return f(number)
        return timed

    def tune_mod_records():
        return tunedb.records("softmax")

    monkeypatch.setattr(tune_mod, "sampler", sampler)
    res = _tune()
    assert res.interrupted and len(res.records) == 1 and calls["n"] > 0
    assert len(tunedb.records("softmax")) == 1 and "interrupted" in res.report()


def test_a_group_tunes_each_member_this_cpu_runs(db, monkeypatch):
    """target=<group>: each member this CPU runs, with an equal share of the budget (faked: the
    CPU reports no features, so only scalar runs); a Ctrl-C in one member stops the rest."""
    real, seen = tune_mod.tune, []

    def member(op, target, budget_s, **kw):
        seen.append((target, budget_s))
        return tune_mod.TuneResult(op, {}, target, "c", budget_s, interrupted=len(seen) == 2)
    monkeypatch.setattr(tune_mod, "tune", member)
    if host_arch() != "x86_64" or not get_target("avx2").runnable:
        pytest.skip("an x86-64 host with avx2")
    res = real("softmax", target="avx2,scalar", sizes=SIZES, budget_s="6s", progress=False)
    assert seen == [("avx2", 3.0), ("scalar", 3.0)] and res.interrupted and res.target == "avx2,scalar"
    seen.clear()
    monkeypatch.setattr(sys.modules["softgen.targets"], "host_features", lambda: {})
    res = real("softmax", target="x86-64", sizes=SIZES, budget_s=6, progress=False)
    assert seen == [("scalar", 6.0)] and not res.interrupted
    assert [n.split(":")[0] for n in res.skipped] == ["avx512", "avx2"]
    assert "skipped: avx512: this CPU cannot run it" in res.report() and res.records == []
    with pytest.raises(softgen.UsageError, match="does not run on this"):
        real("softmax", target="aarch64", sizes=SIZES, budget_s=6)


def test_bad_arguments():
    with pytest.raises(softgen.UsageError, match="budget"):
        softgen.tune("softmax", sizes=[100], budget_s=0)
    with pytest.raises(softgen.UsageError, match="budget"):
        softgen.tune("softmax", sizes=[100], budget_s="soon")
    with pytest.raises(softgen.UsageError, match="sizes"):
        softgen.tune("softmax", sizes=[0])
    with pytest.raises(softgen.UsageError, match="cannot be tuned"):
        softgen.tune("lssa", sizes=[100])
    with pytest.raises(softgen.UsageError, match="twice"):
        softgen.tune("softmax", sizes=[100], shapes=[(4, 100)])
    with pytest.raises(softgen.UsageError, match="unknown op"):
        softgen.tune("nope")
    with pytest.raises(softgen.UsageError, match="scale"):
        softgen.tune("softmax", sizes=[100], scale=-1.0)


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "softgen", "tune", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli(tmp_path):
    env = {**os.environ, "SOFTGEN_CACHE_DIR": own_cache(tmp_path / "cache"), "SOFTGEN_USE_TUNING": "1"}
    r = _cli("--sizes", "500", "--budget", "2s", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert "1/1 size classes" in r.stdout and "pruned by the model" in r.stdout and "ns/el" in r.stdout
    r = _cli("--shapes", "8x256", "--budget", "2", "--quiet", "--json", env=env)
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)["records"]
    assert len(recs) == 1 and recs[0]["n_min"] == 1 and recs[0]["op"] == "softmax"
    for args, msg in ((("--sizes", "1K,x"), "--sizes"), (("--budget", "0s"), "budget"),
                      (("--budget", "fast"), "budget"), (("--op", "nope"), "unknown op"),
                      (("--op", "lssa"), "cannot be tuned"),
                      (("--backend", "nope"), "unknown backend")):
        r = _cli(*args, env=env)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def _rec(n, rows, sched, algorithm="three-pass-reload", ns=0.3):
    tunedb.record("softmax", {}, HOST.name, "c", n=n, rows=(rows, tune_mod.ROWS_MAX), algorithm=algorithm,
                  schedule=sched, noise=0.01, repetitions=5, threads=1, ns_per_element=ns)


def _knobs(e) -> tuple:
    return (e.n_min, e.n_max, e.algorithm, e.schedule.get("rows", 1), e.schedule.get("pipeline", False),
            e.schedule.get("lazymax", False), bool(e.schedule.get("exp")))


def test_overlapping_classes_the_most_specific_record_of_a_kind_wins(db):
    """Records of three tuning runs (single rows 1K: n 1..4096 and 16K..1M; batches 8192x128 and
    4096x512: n 1..256 and 257..4096): single rows and batches each get a tiling of n of their own
    records (a batch's pipeline plan never decides single rows, bench/results/issue13small-*:
    lazymax 1.08x/1.12x faster there); within a kind, where classes overlap the narrowest wins
    (tunedb.lookup's rule) and gaps split at their geometric midpoint."""
    from softgen.autotable import tuned_table
    from softgen.costmodel import BATCH_ROWS
    from softgen.ops import build_program
    _rec((1, 4096), 1, {"exp": "p5c2"})
    _rec((1, 256), 2, {"rows": 2})
    _rec((257, 4096), 2, {"pipeline": True})
    _rec((8193, 1 << 20), 1, {"lazymax": True})
    _rec((1, 1 << 20), 1, {})      # an older, wider run of single rows: narrower classes win over it
    table = tuned_table(build_program("softmax"), HOST, "c")
    (few_rows, few_max, few), (many_rows, many_max, many) = table.tables()
    assert (few_rows, few_max, many_rows, many_max) == (1, BATCH_ROWS - 1, BATCH_ROWS, None)
    tpl = "three-pass-reload"
    assert [_knobs(e) for e in few] == [(1, 4096, tpl, 1, False, False, True), (4097, 8192, tpl, 1, False, False, False),
                                        (8193, None, tpl, 1, False, True, False)]
    assert [_knobs(e) for e in many] == [(1, 256, tpl, 2, False, False, False), (257, None, tpl, 1, True, False, False)]
    assert all(e.why.startswith("measured: ") for e in table.entries)
    assert table.pick(1000).schedule.get("exp") and table.pick(1000, BATCH_ROWS - 1).schedule.get("exp")
    assert table.pick(1000, BATCH_ROWS).schedule.get("pipeline") and table.pick(100, 512).schedule.get("rows") == 2


def test_single_rows_get_the_single_row_plan_and_batches_the_batch_plan(db, rng, tmp_path):
    """Issue 13's dispatch by rows and n: a single-row record (1K: n 1..4096, 3pl lz; 64K: two-pass
    beyond) and a batch record of an overlapping class (4096x512: n 257..4096, 3pl pp; 8192x128:
    rows=2 below): calls of fewer than BATCH_ROWS rows run the single-row plan, batches the batch
    plan, as explain() and DispatchTable.pick say and the C picks: at every edge of both tables
    (rows BATCH_ROWS - 1 and BATCH_ROWS, n at each edge) the output is bitwise the chosen variant's
    plain kernel's and within the float64 reference's tolerance."""
    from softgen.costmodel import BATCH_ROWS
    _rec((1, 4096), 1, {"lazymax": True})
    _rec((4097, 1 << 40), 1, {}, algorithm="two-pass")
    _rec((1, 256), 2, {"rows": 2})
    _rec((257, 4096), 2, {"pipeline": True})
    k = softgen.compile("softmax", target=HOST.name)
    assert k.tuned and k.dispatcher and len(k.variants) == 4
    text = k.explain()
    assert f"rows < {BATCH_ROWS} (single rows and calls of few rows; measured):" in text
    assert f"rows >= {BATCH_ROWS} (batches; measured):" in text
    assert f"if (rows <= (size_t){BATCH_ROWS - 1}ull)" in k.source and "the table of batches" in k.source
    entries = k.explain(as_json=True)["dispatch"]["entries"]
    assert [(d["rows_min"], d["rows_max"], d["n_min"], d["n_max"]) for d in entries] == \
        [(1, BATCH_ROWS - 1, 1, 4096), (1, BATCH_ROWS - 1, 4097, None), (BATCH_ROWS, None, 1, 256), (BATCH_ROWS, None, 257, None)]
    assert k.dispatch.pick(1000, 1).schedule.get("lazymax") and not k.dispatch.pick(1000, 1).schedule.get("pipeline")
    assert k.dispatch.pick(1000, BATCH_ROWS).schedule.get("pipeline") and not k.dispatch.pick(1000, BATCH_ROWS).schedule.get("lazymax")
    plain = {}
    for rows in (1, BATCH_ROWS - 1, BATCH_ROWS):
        for n in (1, 255, 256, 257, 4096, 4097):
            e = k.dispatch.pick(n, rows)
            assert e.rows_min <= rows <= (e.rows_max or rows) and (rows < BATCH_ROWS) == (e.rows_max is not None)
            if e.variant not in plain:
                plain[e.variant] = softgen.compile("softmax", algorithm=e.algorithm, target=HOST.name, schedule=e.schedule)
            x = (rng.standard_normal((rows, n)) * 5).astype(np.float32)
            y = k(x)
            check(k, x, y, f"rows={rows} n={n}")
            assert np.array_equal(y, plain[e.variant](x)), (rows, n, e)
    assert len(plain) == 4
    # the export: the header comment lists both tables, the manifest their entries with their rows
    paths = k.export(tmp_path)
    header = paths["header"].read_text()
    manifest = json.loads(paths["manifest"].read_text())
    assert f"rows < {BATCH_ROWS} (single rows" in header and f"rows >= {BATCH_ROWS} (batches" in header
    assert "per call, by the rows, then the row length n" in header
    assert manifest["dispatch"] == k.dispatch.as_list() and manifest["dispatch"][2]["rows_min"] == BATCH_ROWS


def test_one_kind_of_record_the_other_kind_takes_the_model(db, monkeypatch):
    """Records of batches only: calls of few rows take the model's table (its entries, "model: "
    why), not the batch records; records of single rows only: batches take the model's. Without a
    model (no [cost] hints: tuned_table's model None) the one kind is the only information and
    decides every call (one tiling, said in the basis). Equal tilings of both kinds: one."""
    from softgen.autotable import tuned_table
    from softgen.costmodel import BATCH_ROWS
    from softgen.ops import build_program
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "0")
    model = softgen.compile("softmax", target=HOST.name).dispatch
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    p = build_program("softmax")
    _rec((1, 1 << 40), 2, {"pipeline": True})
    for t in (tuned_table(p, HOST, "c", model), softgen.compile("softmax", target=HOST.name).dispatch):
        (_, _, few), (_, _, many) = t.tables()
        assert [(e.n_min, e.n_max, e.variant, e.why) for e in few] == \
            [(e.n_min, e.n_max, e.variant, e.why) for e in model.entries]
        assert [_knobs(e) for e in many] == [(1, None, "three-pass-reload", 1, True, False, False)]
        assert "single rows: the model" in t.basis
    one = tuned_table(p, HOST, "c", None)
    assert [(e.rows_min, e.rows_max) for e in one.entries] == [(1, None)] and "no model on this target" in one.basis
    tunedb.clear()
    _rec((1, 1 << 40), 1, {"lazymax": True})
    t = tuned_table(p, HOST, "c", model)
    (_, _, few), (_, _, many) = t.tables()
    assert [_knobs(e) for e in few] == [(1, None, "three-pass-reload", 1, False, True, False)]
    assert [(e.n_min, e.n_max, e.variant, e.why) for e in many] == [(e.n_min, e.n_max, e.variant, e.why) for e in model.entries]
    assert t.pick(100, BATCH_ROWS).why.startswith("model: ") and "batches: the model" in t.basis
    _rec((1, 1 << 40), 2, {"lazymax": True}, ns=0.2)
    (e,) = tuned_table(p, HOST, "c", model).entries      # both kinds agree: one tiling, no test of rows
    assert (e.rows_min, e.rows_max) == (1, None) and e.schedule.get("lazymax")
    assert e.why.startswith("measured: 0.3 ns/el") and "[rows < 4] || measured: 0.2 ns/el" in e.why


def test_the_llc_edge_gets_dram_knobs():
    """A class whose working set fills at least half the L3 streams partly from memory: it gets
    DRAM's knobs (non-temporal stores, prefetch) on DRAM's cheapest algorithm too."""
    c = machine.Caches(L1d=32 << 10, L2=1 << 20, L3=32 << 20, source="test")
    assert tune_mod.knob_levels(c, 8 << 20) == ("L3",)             # 1M elements: a quarter of L3
    assert tune_mod.knob_levels(c, 32 << 20) == ("L3", "DRAM")     # 4M: the edge
    assert tune_mod.knob_levels(c, 64 << 20) == ("DRAM",) and tune_mod.knob_levels(c, 1 << 20) == ("L2",)
    from softgen import passes
    from softgen.ops import build_program
    t = get_target("avx512")
    plans = {a: passes.plan(passes.apply_algorithm(build_program("softmax"), a)) for a in ("three-pass-reload", "two-pass")}
    assert tune_mod.knob_algorithms(plans, t, "L3", list(plans)) == ["three-pass-reload"]
    assert tune_mod.knob_algorithms(plans, t, "DRAM", list(plans)) == ["two-pass"]


def test_finalists_are_every_candidate_the_first_run_cannot_tell_from_the_best():
    """tune.pick_finalists: the FINALISTS fastest, then any other whose median's 95% CI overlaps
    the best's (at 4096 x 512 the quiet first run had ranked the true winner, pipeline, fourth
    within the noise of the top three), at most FINALISTS_MAX; a clearly slower one is not re-timed."""
    def t(med, spread):
        xs = [med * (1 + spread * f) for f in (-0.5, -0.25, 0.0, 0.25, 0.5)]
        return Timing(med, min(xs), med * (1 - spread / 4), med * (1 + spread / 4), 1, len(xs), xs)
    first = {"a": t(1.00, 0.4), "b": t(1.01, 0.4), "c": t(1.02, 0.4), "d": t(1.05, 0.4), "slow": t(2.0, 0.01)}
    assert tune_mod.pick_finalists(first) == ["a", "b", "c", "d"]
    quiet = {k: t(v.median, 0.001) for k, v in first.items()}
    assert tune_mod.pick_finalists(quiet) == ["a", "b", "c"]
    many = {f"k{i}": t(1 + i / 1000, 0.4) for i in range(10)}
    assert len(tune_mod.pick_finalists(many)) == tune_mod.FINALISTS_MAX
