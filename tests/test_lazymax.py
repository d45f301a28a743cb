"""Schedule lazymax (issue 13; C backend, ``passes.lazy_max``): three-pass-reload of softmax without
the full-row max sweep. The exps are taken against a running reference (the first 64 elements' max,
moved to a group of vectors' max where x exceeds it by LAZY_SLACK / s), each stored segment is
rescaled in the output sweep. Checked on scalar, avx2 and avx512 (small blocks, so short rows span
several): the edge-case contract, tails, unaligned, strided and in-place rows, rows whose
reference moves (more often than LAZY_RECORDS), first elements of -inf; bitwise three-pass-reload
where the first elements hold the max; the split form (per chunk, any thread count the same bits);
where it does not apply; the R-rows form (schedule rows=R: per row its reference and segments,
bitwise the one-row form for any row count around R); the tuner offers it to batches streamed from
beyond L1d; the folded exp (avx512, scale 1: sg_exp_fold) in every form that takes it (the row
function, rows=R, pipeline) against float64 and bitwise across the forms.

Fast: one kernel per target, module-scoped, rows of at most a few thousand elements."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import check, run
from test_kernels import contract_rows

import softgen
from softgen import costmodel, passes
from softgen.backends import get_backend
from softgen.numerics import constants
from softgen.ops import build_program
from softgen.passes import LAZY_FIRST, LAZY_RECORDS, LAZY_SLACK
from softgen.schedule import Schedule
from softgen.targets import get_target

TARGETS = [t for t in ("scalar", "avx2", "avx512") if get_target(t).runnable]
BLOCK = 256
LAZY = {"lazymax": True, "block": BLOCK}
R = 3          # schedule rows of the R-rows form
tune = importlib.import_module("softgen.tune")   # the module (softgen.tune is the function)


@pytest.fixture(scope="module", params=TARGETS)
def lazy(request):
    t = request.param
    scale = 2.5 if t == TARGETS[-1] else 1.0        # the slack is LAZY_SLACK / s in x
    return tuple(softgen.compile("softmax", algorithm="three-pass-reload", target=t, scale=scale, schedule=sch)
                 for sch in (LAZY, {"block": BLOCK}, {**LAZY, "rows": R}))


def test_the_contract_tails_strides_and_in_place(lazy, rng):
    k = lazy[0]
    lanes = k.target.lanes
    for n in sorted({1, lanes + 1, 4 * lanes + 5, BLOCK + 7, 3 * BLOCK + 2 * lanes + 3}):
        x = (rng.standard_normal((3, n + 3)) * 8).astype(np.float32)
        for off in (0, 1):                              # unaligned row starts, strided rows
            xs = x[:, off:off + n]
            check(k, xs, run(k, xs), f"n={n} offset {off}")
            inplace = xs.copy()
            check(k, xs, run(k, inplace, out=inplace), f"n={n} in place")
    for n in (lanes + 3, 2 * BLOCK + 5):
        rows = contract_rows(n, rng)
        x = np.stack(list(rows.values()))
        check(k, x, run(k, x), f"n={n}", row_names=list(rows))


def test_rows_whose_reference_moves(lazy, rng):
    """Ascending rows move the reference once per group (more than LAZY_RECORDS times: the oldest
    segments round to 0), steps just past the slack, a max far after the first elements, -inf
    before finite values, a NaN or +inf later; in place too."""
    k, base = lazy[:2]
    s = k.params["scale"]
    n = 6 * BLOCK + 37
    i = np.arange(n, dtype=np.float32)
    rows = {"ascending 0.5": i * 0.5, "ascending 40": i * 40.0 / s,
            "steps past the slack": np.floor(i / 64) * (LAZY_SLACK + 0.5) / s,
            "late max": np.where(i == n - 2, 60.0, np.sin(i)).astype(np.float32),
            "-inf first block": np.where(i < BLOCK + 9, -np.inf, np.cos(i)).astype(np.float32),
            "late NaN": np.where(i == 4 * BLOCK + 1, np.nan, np.sin(i)).astype(np.float32),
            "late +inf": np.where(i == 5 * BLOCK, np.inf, np.sin(i)).astype(np.float32),
            "random": (rng.standard_normal(n) * 30).astype(np.float32)}
    x = np.stack([r.astype(np.float32) for r in rows.values()])
    y = run(k, x)
    check(k, x, y, "moving reference", row_names=list(rows))
    assert np.array_equal(np.isnan(y), np.isnan(run(base, x)))
    inplace = x.copy()
    assert np.array_equal(run(k, inplace, out=inplace), y, equal_nan=True)
    assert (i[-1] * 0.5 * s) / LAZY_SLACK > LAZY_RECORDS   # the ascending row drops records


def test_bitwise_three_pass_reload_when_the_first_elements_hold_the_max(lazy, rng):
    k, base = lazy[:2]
    x = (rng.standard_normal((4, 3 * BLOCK + 11)) * 3).astype(np.float32)
    x[:, 5] = 20.0                                       # the row max, in the first 64
    assert np.array_equal(run(k, x), run(base, x))
    short = (rng.standard_normal((3, LAZY_FIRST - 1)) * 9).astype(np.float32)
    assert np.array_equal(run(k, short), run(base, short))


def test_where_lazymax_applies_and_what_it_generates():
    sm = passes.plan(passes.apply_algorithm(build_program("softmax"), "three-pass-reload"))
    assert isinstance(passes.lazy_max(sm), passes.LazyMax)
    for op, alg in (("log_softmax", "three-pass-reload"), ("softmax", "two-pass"), ("softmax", "online"),
                    ("softplus_l1", "direct-reload")):
        assert isinstance(passes.lazy_max(passes.plan(passes.apply_algorithm(build_program(op), alg))), str)
    plain = softgen.compile("log_softmax", algorithm="three-pass-reload", target="scalar")
    lz = softgen.compile("log_softmax", algorithm="three-pass-reload", target="scalar", schedule={"lazymax": True})
    assert "lazymax: not applied" in lz.source and "lz_r" not in lz.source
    assert lz.source.replace(lz.name, plain.name).count("\n") == plain.source.count("\n") + 1   # the note
    k = softgen.compile("softmax", algorithm="three-pass-reload", target="scalar", schedule={"lazymax": True, "rows": 2})
    assert "r1_lz_r" in k.source and "_batch2(" in k.source and "(row 1)" in k.source   # the output sweep per row
    assert "2 rows at once" in k.source and k.schedule.tag(1).endswith("_r2_lz")
    # the model: no max sweep (one compare more per vector) at every level, L1d too; a short row keeps
    # its first LAZY_FIRST elements' max sweep and one reduction chain more (cycles_per_element at n)
    t = get_target("avx512")
    for lvl in ("L1d", "L2", "L3"):
        assert costmodel.cycles_per_element(sm, t, lvl, lazymax=True) < costmodel.cycles_per_element(sm, t, lvl), lvl
    for n, cheaper in ((128, False), (256, False), (4096, True)):
        assert (costmodel.cycles_per_element(sm, t, "L1d", lazymax=True, n=n)
                < costmodel.cycles_per_element(sm, t, "L1d", n=n)) == cheaper, n
    with pytest.raises(softgen.UsageError, match="lazymax must be true or false"):
        softgen.compile("softmax", schedule={"lazymax": 2})


def test_split_rows_per_chunk_for_any_thread_count(rng):
    """Split rows (chunks of 1024): every chunk from the chunks' first elements' max, its own reference and
    segments, the sums rescaled before the merge: the contract, moving references in some chunks,
    bitwise the same on 1, 2 and auto threads; bitwise split three-pass-reload when the first elements
    hold the max."""
    t = TARGETS[-1]
    sch = {"block": BLOCK, "chunk": 4 * BLOCK, "split": 16 * BLOCK}
    k = softgen.compile("softmax", algorithm="three-pass-reload", target=t, schedule={**sch, "lazymax": True})
    base = softgen.compile("softmax", algorithm="three-pass-reload", target=t, schedule=sch)
    assert "__row_split" in k.source and "sg_lz" in k.source
    n = 36 * BLOCK + 37
    i = np.arange(n, dtype=np.float32)
    rows = {"ascending": i * 0.5, "late max": np.where(i == n - 2, 60.0, np.sin(i)),
            "-inf chunks": np.where(i < 9 * BLOCK, -np.inf, np.cos(i)), "random": rng.standard_normal(n) * 30,
            "late NaN": np.where(i == 20 * BLOCK, np.nan, np.sin(i))}
    rows.update((f"contract {name}", r) for name, r in contract_rows(n, rng).items() if "@0" not in name)
    x = np.stack([np.asarray(r, np.float32) for r in rows.values()])
    y = run(k, x, threads=1)
    check(k, x, y, "split", row_names=list(rows))
    for threads in (2, 0):
        assert np.array_equal(run(k, x, threads=threads), y, equal_nan=True), threads
    first = np.where(i == 3, 40.0, np.sin(i)).astype(np.float32)[None]
    assert np.array_equal(run(k, first), run(base, first))


def _moving_rows(n: int, s: float, rng) -> dict:
    """Rows whose reference moves (each its own way), the contract's specials, random rows."""
    i = np.arange(n, dtype=np.float32)
    rows = {"ascending": i * 3.0 / s, "late max": np.where(i == n - 1, 70.0, np.cos(i)),
            "steps": np.floor(i / 16) * (LAZY_SLACK + 1.0) / s, "first -inf": np.where(i < n // 2, -np.inf, i)}
    rows.update(contract_rows(n, rng) if n > 1 else {"nan": np.array([np.nan]), "-inf": np.array([-np.inf])})
    rows.update((f"random {j}", rng.standard_normal(n) * 20) for j in range(2))
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}


def test_rows_form_is_bitwise_the_one_row_form(lazy, rng):
    """Schedule rows=R with lazymax: each row of a batch its own reference and segments (rows whose
    references move differently side by side, specials in any row), every row count around R,
    tails, strided, unaligned and in place: bitwise the one-row lazymax kernel, and the contract."""
    one, _, batched = lazy
    assert f"__row_batch{R}(" in batched.source and "r2_lz_r" in batched.source
    lanes, s = one.target.lanes, one.params["scale"]
    for n in sorted({1, lanes + 1, 4 * lanes + 5, LAZY_FIRST + 3, BLOCK + 7}):
        rows = _moving_rows(n, s, rng)
        x = np.stack(list(rows.values()))
        want = run(one, x)
        check(batched, x, run(batched, x), f"rows={R} n={n}", row_names=list(rows))
        for count in range(1, 2 * R + 2):          # around R: whole batches and leftovers
            for start in (0, len(x) - count):      # the specials in every position of a batch
                sub = x[start:start + count]
                assert np.array_equal(run(batched, sub), want[start:start + count], equal_nan=True), (n, count, start)
        wide = np.full((len(x), n + 5), 3.0, np.float32)   # strided, then unaligned rows
        wide[:, 1:n + 1] = x
        assert np.array_equal(run(batched, wide[:, 1:n + 1]), want, equal_nan=True), n
        inplace = x.copy()
        assert np.array_equal(run(batched, inplace, out=inplace), want, equal_nan=True), n


def test_the_tuner_offers_lazymax_to_batches_beyond_l1d_and_rows_in_l1d():
    """Batches of short rows: lazymax where the batch streams from L2, L3 or memory (each row's
    first touch is its max sweep); rows in L1d: lazymax too (its max sweep is a sweep of its own,
    1.10x at 1K on avx512), of one row and of R rows at once."""
    be, t, base = get_backend("c"), get_target("avx512"), Schedule()
    assert any(s.lazymax for s in tune.level_schedules(be, t, "L1d", base, 1, "L1d"))
    assert {s.rows for s in tune.level_schedules(be, t, "L1d", base, 4, "L1d") if s.lazymax} == {1, 2, 4}
    batch = tune.level_schedules(be, t, "L1d", base, 4096, "L3")
    assert {(s.rows, s.lazymax) for s in batch} >= {(1, True), (2, True), (1, False), (4, True)}
    assert len(set(batch)) == len(batch) and base not in batch
    assert any(s.lazymax for s in tune.level_schedules(be, t, "L1d", base, 2, "L2"))


FOLD_FORMS = {"row": {}, f"rows={R}": {"rows": R}, "pipeline": {"pipeline": True}}


@pytest.fixture(scope="module")
def folded():
    """avx512, scale 1: sweep 1's exps by sg_exp_fold (x - r folded into the range reduction) in the
    row function and in its batch forms (each row of rows=R, each row of pipeline), and the plain
    three-pass-reload kernel."""
    if not get_target("avx512").runnable:
        pytest.skip("the folded exp is avx512's (the scaled table exp)")
    ks = {f: softgen.compile("softmax", algorithm="three-pass-reload", target="avx512", schedule={**LAZY, **sch})
          for f, sch in FOLD_FORMS.items()}
    return ks, softgen.compile("softmax", algorithm="three-pass-reload", target="avx512", schedule={"block": BLOCK})


def _folded_rows(n: int, rng) -> dict:
    """Rows whose segments fold (|r| <= SG_FOLD_MAX) and rows whose do not, mixed both ways, huge,
    random, a heavy sum rescaled, -inf and terms below 2^-126, a late NaN."""
    fmax = float(constants.FOLD_MAX)
    i = np.arange(n, dtype=np.float32)
    wave = np.sin(i) * 4
    rows = {"unfolded then folded": np.where(i < 2 * BLOCK, -3 * fmax + wave, wave),
            "folded then unfolded": np.where(i < 2 * BLOCK, fmax - 40 + wave, fmax + 40 + wave),
            "near the bound": fmax - 10 + np.floor(i / 64) * (LAZY_SLACK + 0.5),
            "large": 1e5 + wave, "random": rng.standard_normal(n) * 30,
            "a heavy sum rescaled": np.where(i < LAZY_FIRST, 0.0, np.where(i == n - 9, LAZY_SLACK + 0.7,
                                                                           LAZY_SLACK - 0.1 + wave / 40)),
            "-inf and far below": np.where(i % 7 == 0, -np.inf, np.where(i % 5 == 0, wave - 87.5, wave)),
            "late NaN": np.where(i == 3 * BLOCK + 1, np.nan, wave)}
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}


@pytest.mark.parametrize("form", list(FOLD_FORMS))
def test_the_folded_exp_against_float64_and_across_the_fold_bound(folded, form, rng):
    """Segments whose reference folds (|r| <= SG_FOLD_MAX: terms against q ln2) and segments whose
    does not (against r) in one row, both ways, rescaled to each other in the output sweep; -inf
    exactly +0, NaN rows, terms below 2^-126 (at most 2^-126, monotone), the contract, tails. The
    batch forms (rows=R, pipeline) fold each row: against float64 too, and bitwise the row form for
    every row count around their batch (rows in every position, strided)."""
    ks, base = folded
    k, one = ks[form], ks["row"]
    assert k.source.count("sg_exp_fold(") >= 2 and "sg_exp_fold" not in base.source
    assert "lazymax exps of x - r in sweep 1 (single rows" in k.source
    assert {"row": "single rows;", f"rows={R}": f"_batch{R} form;", "pipeline": "_pipe form;"}[form] in k.source
    n = 4 * BLOCK + 21
    rows = _folded_rows(n, rng)
    x = np.stack(list(rows.values()))
    y = run(k, x)
    check(k, x, y, form, row_names=list(rows))
    assert np.array_equal(np.isnan(y), np.isnan(run(base, x)))
    far = list(rows).index("-inf and far below")
    tiny = x[far] - x[far].max() < -87.34
    assert tiny.any() and (y[far][tiny] <= 2.0 ** -126).all() and (y[far][np.isneginf(x[far])] == 0).all()
    order = np.argsort(x[far], kind="stable")
    assert (np.diff(y[far][order]) >= 0).all()
    for m in (1, BLOCK + 5):                         # tails
        check(k, x[:, :m], run(k, x[:, :m]), f"{form} n={m}")
    if k is one:
        return
    want = run(one, x)
    assert np.array_equal(y, want, equal_nan=True)
    for count in range(1, 2 * R + 2):                # whole batches and leftovers, the first and last rows alone
        for start in (0, len(x) - count):
            assert np.array_equal(run(k, x[start:start + count]), want[start:start + count], equal_nan=True), \
                (form, count, start)
    wide = np.full((len(x), n + 3), 1.0, np.float32)
    wide[:, 1:n + 1] = x
    assert np.array_equal(run(k, wide[:, 1:n + 1]), want, equal_nan=True)
