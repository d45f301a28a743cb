"""Schedule rows=R (issue 13, short rows of batches): the entry runs R rows at once through the row
function's R-rows form (``backends.c._rows_function``), leftovers one at a time. Each row runs the
one-row code, so results are bitwise the one-row form's: checked for every softmax algorithm on the
host's target at n in {1, 2, 15, 16, 17, 128, 129}, rows not a multiple of R, the specials of
docs/ops.md §0 in any row of a batch (two-pass's guard restarts a batch one row at a time), strided
and unaligned rows, in place; and against the float64 reference. neon under qemu once."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import ALGORITHMS_OF, check, run, skip_unless_emulated
from test_kernels import contract_rows

import softgen
from softgen.backends import get_backend
from softgen.errors import UsageError
from softgen.schedule import Schedule
from softgen.targets import get_target

tune_mod = importlib.import_module("softgen.tune")

R = 3
SIZES = (1, 2, 15, 16, 17, 128, 129)


@pytest.fixture(scope="module", params=ALGORITHMS_OF["softmax"])
def pair(request):
    """(one-row kernel, R-rows kernel) of one softmax algorithm on the host's target."""
    a = request.param
    return tuple(softgen.compile("softmax", algorithm=a, target="host", schedule={"rows": r}) for r in (1, R))


def _batch(n: int, rng) -> np.ndarray:
    rows = list(contract_rows(n, rng).values()) if n > 1 else [np.array([v], np.float32) for v in
                                                                (0.5, np.nan, np.inf, -np.inf, 3e38)]
    rows += [rng.standard_normal(n).astype(np.float32) * 4 for _ in range(5)]
    return np.stack(rows)   # not a multiple of R: the leftovers take the one-row form


@pytest.mark.parametrize("n", SIZES)
def test_rows_form_is_bitwise_the_one_row_form(pair, n, rng):
    one, batched = pair
    assert f"__row_batch{R}(" in batched.source and "__row_batch" not in one.source
    x = _batch(n, rng)
    assert x.shape[0] % R
    want = one(x)
    np.testing.assert_array_equal(batched(x), want)
    check(batched, x, batched(x), f"rows={R} n={n}")
    wide = np.full((x.shape[0], n + 7), 5.0, np.float32)            # strided rows
    wide[:, :n] = x
    np.testing.assert_array_equal(batched(wide[:, :n]), want)
    flat = np.empty(x.size + 1, np.float32)[1:].reshape(x.shape)    # unaligned (4 bytes off)
    flat[...] = x
    np.testing.assert_array_equal(batched(flat), want)
    batched(flat, out=flat)                                          # in place
    np.testing.assert_array_equal(flat, want)


def test_a_special_in_one_row_of_a_batch_leaves_the_others_alone(pair, rng):
    one, batched = pair
    x = rng.standard_normal((2 * R, 129)).astype(np.float32)
    for j in range(2 * R):   # each row of the batch in turn: NaN, then out of two-pass's exp domain
        for val in (np.nan, 3e5):
            xx = x.copy()
            xx[j] = val if np.isnan(val) else val + x[j]
            np.testing.assert_array_equal(batched(xx), one(xx))


def test_other_ops_and_targets(rng):
    x = rng.standard_normal((11, 37)).astype(np.float32) * 3
    # a scaled two-pass: its extexp clamp lim<r> is a setup constant each row of a batch declares
    for op, a, t, kw in (("log_softmax", "two-pass", "host", {}), ("softplus_l1", "direct", "scalar", {}),
                         ("softmax", "two-pass", "scalar", {"scale": 0.5})):
        one, batched = (softgen.compile(op, algorithm=a, target=t, schedule={"rows": r}, **kw) for r in (1, 2))
        assert "__row_batch2(" in "".join(batched.sources().values())
        np.testing.assert_array_equal(batched(x), one(x))
        check(batched, x, batched(x), f"{op} {t} rows=2")


def test_rows_on_neon_under_qemu(rng):
    t = get_target("neon")
    if not softgen.compile("softmax", target="neon", algorithm="online").runnable:
        skip_unless_emulated(t)
    k = softgen.compile("softmax", algorithm="online", target="neon", schedule={"rows": 4})
    x = np.concatenate([np.stack(list(contract_rows(21, rng).values())),
                        rng.standard_normal((3, 21)).astype(np.float32)])
    check(k, x, run(k, x), "neon rows=4")


def test_rows_knob_validation_and_refusals():
    for bad in (0, 9, 2.5, "2"):
        with pytest.raises(UsageError, match="schedule rows"):
            softgen.compile("softmax", target="scalar", schedule={"rows": bad})
    s = Schedule(rows=4)
    assert s.validate(8).tag(8) == "u32_acc2_r4" and "rows" not in Schedule().as_dict()
    k = softgen.compile("softmax", algorithm="two-pass", target="avx2", schedule={"rows": 2, "stream": True})
    assert "__row_batch" not in k.source and "rows=2: one row at a time (non-temporal" in k.source
    k = softgen.compile("topk_softmax", target="scalar", k=4, schedule={"rows": 2})
    assert "__row_batch" not in k.source and "rows=2: one row at a time" in k.source


def test_tuner_offers_rows_only_to_batches_of_short_rows():
    be, t, base = get_backend("c"), get_target("avx512"), Schedule()
    assert {s.rows for s in tune_mod.level_schedules(be, t, "L1d", base, 1)} == {1}
    batch = tune_mod.level_schedules(be, t, "L1d", base, 8192)
    assert {s.rows for s in batch} == {1, 2, 4} and len(set(batch)) == len(batch) and base not in batch
    assert {s.rows for s in tune_mod.level_schedules(be, t, "L2", base, 2)} == {1, 2}
    assert {s.rows for s in tune_mod.level_schedules(be, t, "L3", base, 8192)} == {1}
    assert tune_mod.label("three-pass-reload", {"unroll": 4, "accumulators": 2, "rows": 4}) == "3pl u4a2 r4"


def test_no_rows_form_where_a_row_restarts_after_a_store(rng):
    """softplus_l1 direct-reload stores softplus into y before its guard: in place, a batch whose
    one row took the fallback (every softplus 0) restarted the others from their stores (softplus
    applied twice). That plan keeps one row at a time; in place equals out of place."""
    k = softgen.compile("softplus_l1", algorithm="direct-reload", target="scalar", schedule={"rows": 2})
    assert "__row_batch2(" not in k.source and "rows=2: one row at a time (a sweep stores into y" in k.source
    x = np.stack([rng.standard_normal(50).astype(np.float32) * 3, np.full(50, -1e30, np.float32)])
    z = x.copy()
    np.testing.assert_array_equal(k(z, out=z), k(x))
    check(k, x, z, "in place, a fallback row")
