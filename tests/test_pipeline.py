"""Schedule pipeline (issue 13, batches of rows): one row at a time, row r's output sweep in the loop of
row r + 1's sweep before it (``backends.c._pipe_function``). Each row runs the one-row code, so results
are bitwise the one-row form's: checked for the softmax algorithms it applies to (and lazymax, whose
rows with one segment are deferred, the others not) on the host's target
at n around the vector width and the unrolled step, every row count from 1 to 6 (the first row alone,
the last row's output sweep after the loop), the specials of docs/ops.md §0 in any row, strided,
unaligned and in place, split across threads; where it does not apply; the tuner offers it to batches
only."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import check, run, skip_unless_emulated
from test_kernels import contract_rows

import softgen
from softgen import passes
from softgen.backends import get_backend
from softgen.errors import UsageError
from softgen.ops import build_program
from softgen.schedule import Schedule
from softgen.targets import get_target

tune = importlib.import_module("softgen.tune")   # the module (softgen.tune is the function)
PIPE = {"pipeline": True}
VARIANTS = (("three-pass-reload", {}), ("online", {}), ("three-pass-recompute", {}),
            ("three-pass-reload", {"lazymax": True}))


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v[0] + ("-lazymax" if v[1] else ""))
def pair(request):
    """(one-row kernel, pipelined kernel) of one softmax algorithm (and lazymax) on the host's target."""
    a, extra = request.param
    return tuple(softgen.compile("softmax", algorithm=a, target="host", schedule={**extra, **s}) for s in ({}, PIPE))


def test_pipelined_rows_are_bitwise_the_one_row_form(pair, rng):
    one, pipe = pair
    assert "__row_pipe(" in pipe.source and "__row_pipe" not in one.source
    L = one.target.lanes
    for n in sorted({1, L - 1 or 1, L + 1, 4 * L, 4 * L * one.schedule.unroll + 3}):
        rows = list(contract_rows(n, rng).values()) if n > 1 else [np.array([v], np.float32) for v in
                                                                    (0.5, np.nan, np.inf, -np.inf)]
        i = np.arange(n, dtype=np.float32)   # lazymax: rows whose reference moves run their segments at once
        rows += [i * 3.0, np.where(i == n - 1, 90.0, np.sin(i)).astype(np.float32)]
        x = np.stack(rows + [rng.standard_normal(n).astype(np.float32) * 9 for _ in range(3)])
        want = run(one, x)
        check(pipe, x, run(pipe, x), f"pipeline n={n}")
        for count in range(1, 7):                  # the first row alone, the last one's output sweep after
            for start in (0, len(x) - count):      # the specials in every place of the pipeline
                got = run(pipe, x[start:start + count])
                assert np.array_equal(got, want[start:start + count], equal_nan=True), (n, count, start)
        wide = np.full((len(x), n + 5), 2.0, np.float32)   # strided, then unaligned rows
        wide[:, 1:n + 1] = x
        assert np.array_equal(run(pipe, wide[:, 1:n + 1]), want, equal_nan=True), n
        inplace = x.copy()
        assert np.array_equal(run(pipe, inplace, out=inplace), want, equal_nan=True), n
        for threads in (2, 3):                     # each task's range of rows pipelined on its own
            assert np.array_equal(run(pipe, x, threads=threads), want, equal_nan=True), (n, threads)


def test_other_ops_and_targets(rng):
    x = (rng.standard_normal((7, 37)) * 3).astype(np.float32)
    for op, alg, t in (("log_softmax", "three-pass-reload", "scalar"), ("softmax", "online", "scalar"),
                       ("softmax", "three-pass-reload", "avx2")):
        if not get_target(t).runnable:
            continue
        one, pipe = (softgen.compile(op, algorithm=alg, target=t, schedule=s) for s in (None, PIPE))
        assert "__row_pipe(" in pipe.source, op
        assert np.array_equal(run(pipe, x), run(one, x), equal_nan=True), op


def test_pipeline_on_neon_under_qemu(rng):
    t = get_target("neon")
    k = softgen.compile("softmax", algorithm="three-pass-reload", target="neon", schedule={**PIPE, "lazymax": True})
    if not k.runnable:
        skip_unless_emulated(t)
    i = np.arange(21, dtype=np.float32)
    x = np.concatenate([np.stack(list(contract_rows(21, rng).values())), (i * 5.0)[None],
                        rng.standard_normal((3, 21)).astype(np.float32)])
    check(k, x, run(k, x), "neon pipeline lazymax")


def test_where_pipeline_does_not_apply():
    for op, alg, extra, why in (("softmax", "two-pass", {}, "fallback"),
                                ("softmax", "two-pass", {"stream": True}, "non-temporal"),
                                ("topk_softmax", "direct-reload", {}, "per-lane sorted")):
        k = softgen.compile(op, algorithm=alg, target="avx2", schedule={**PIPE, **extra}, **({"k": 4} if "topk" in op else {}))
        assert "__row_pipe" not in k.source and "pipeline: not applied" in k.source and why in k.source, op
    with pytest.raises(UsageError, match="pipeline and rows=2 exclude"):
        softgen.compile("softmax", target="scalar", schedule={"pipeline": True, "rows": 2})
    with pytest.raises(UsageError, match="pipeline must be true or false"):
        softgen.compile("softmax", target="scalar", schedule={"pipeline": "yes"})
    assert Schedule(pipeline=True).validate(8).tag(8) == "u32_acc2_pp" and "pipeline" not in Schedule().as_dict()


def test_the_tuner_offers_pipeline_to_batches_only():
    be, t, base = get_backend("c"), get_target("avx512"), Schedule()
    assert not any(s.pipeline for s in tune.schedules(be, t))
    for level in ("L1d", "L2", "L3", "DRAM"):
        assert not any(s.pipeline for s in tune.level_schedules(be, t, level, base, 1, level)), level
    batch = tune.level_schedules(be, t, "L1d", base, 4096, "L3")
    assert any(s.pipeline and s.rows == 1 for s in batch) and not any(s.pipeline and s.rows > 1 for s in batch)
    assert tune.label("three-pass-reload", {"unroll": 4, "accumulators": 2, "pipeline": True}) == "3pl u4a2 pp"
    plans = {a: passes.plan(passes.apply_algorithm(build_program("softmax"), a)) for a in ("two-pass", "three-pass-reload")}
    assert passes.pipeline_refusal(plans["two-pass"]) and not passes.pipeline_refusal(plans["three-pass-reload"])
    assert not any(s.pipeline for s in tune.priced(plans["two-pass"], t, "L1d", batch, 1e9))   # the same kernel
    assert any(s.pipeline for s in tune.priced(plans["three-pass-reload"], t, "L1d", batch, 1e9))
