"""Two-pass's output exps folded (issue 13, r13/dram; C backend ``shift2_fold``, vmath.h.j2
sg_exp_shift2_fold): where the target has sg_exp_fold (avx512 under the default exp, its table
shifted_exp t32), the output sweep's e^x 2^-E is the table exp folded against R = E ln2 instead of
the p5 (p, n) pair, and the guard sends rows with |E| > SHIFT2_FOLD_E (|x| beyond ~4096) to the
three-pass-recompute fallback. Checked against float64 on adversarial rows: scales from 0.1 to
1000, the max just inside and just outside the fold bound both signs (outside: bitwise the
fallback kernel), huge, -inf and terms below 2^-126, +inf, NaN, tails, the split form (rows of
n >= its split, any thread count the same bits); not applied under a named exp, on other targets,
to the scaled exps (scale != 1) and to log_softmax.

Fast: a few kernels, module-scoped, rows of at most a few hundred thousand elements."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import check, run
from test_kernels import contract_rows

import softgen
from softgen.backends.c import SHIFT2_FOLD_E
from softgen.numerics import constants
from softgen.passes import EXTEXP_GUARD_E

BLOCK = 256
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def kernels():
    sch = {"block": BLOCK, "stream": True}
    return {"fold": softgen.compile("softmax", algorithm="two-pass", target="avx512", schedule=sch),
            "p5": softgen.compile("softmax", algorithm="two-pass", target="avx512", schedule={**sch, "exp": "p5c2"}),
            "fallback": softgen.compile("softmax", algorithm="three-pass-recompute", target="avx512",
                                        schedule={"block": BLOCK})}


def test_the_bound_and_where_it_applies():
    assert SHIFT2_FOLD_E == 5909 and SHIFT2_FOLD_E * LN2 <= float(constants.FOLD_MAX) < (SHIFT2_FOLD_E + 1) * LN2
    k = softgen.compile("softmax", algorithm="two-pass", target="avx512")
    assert k.source.count("sg_exp_shift2_fold(") >= 4 and k.source.count("V_MIN(V_SET1(1.0f), V_MUL") >= 4 and f"<= {SHIFT2_FOLD_E}.0f) || n < 2) {{" in k.source
    assert f"<= {EXTEXP_GUARD_E}.0f" not in k.source.split("static inline VEC sg_exp_shift2_fold")[1]
    for other in (softgen.compile("softmax", algorithm="two-pass", target="avx512", schedule={"exp": "p5c2"}),
                  softgen.compile("softmax", algorithm="two-pass", target="avx512", schedule={"exp": "t32"}),
                  softgen.compile("softmax", algorithm="two-pass", target="avx2"),
                  softgen.compile("softmax", algorithm="two-pass", target="avx512", scale=2.5),
                  softgen.compile("log_softmax", algorithm="two-pass", target="avx512")):
        assert "sg_exp_shift2_fold(" not in other.source and "V_MIN(V_SET1(1.0f), V_MUL" not in other.source, other.name
        assert f"<= {EXTEXP_GUARD_E}.0f)) {{" in other.source, other.name


def _rows(n: int, rng) -> dict:
    """Rows whose E folds and rows whose does not (the max just inside / outside ~4096, both signs)."""
    i = np.arange(n, dtype=np.float32)
    wave = np.sin(i) * 4
    inside, outside = (SHIFT2_FOLD_E - 1) * LN2, (SHIFT2_FOLD_E + 3) * LN2
    rows = {f"random x{s:g}": rng.standard_normal(n) * s for s in (0.1, 1, 3, 10, 30, 100, 1000)}
    rows.update({"max just inside": inside - 5 + wave, "max just inside, negative": -inside - 5 + wave,
                 "max just outside": outside + 5 + wave, "max just outside, negative": -outside - 5 + wave,
                 "one element near the bound": np.where(i == n // 2, inside, wave - 90),
                 "large": 1e5 + wave, "far apart": np.where(i % 2 == 0, 4000.0 + wave, -4000.0 + wave),
                 "-inf and far below": np.where(i % 7 == 0, -np.inf, np.where(i % 5 == 0, wave - 87.5, wave)),
                 "the subnormal range": -np.linspace(0, 110, n), "late NaN": np.where(i == n - 3, np.nan, wave),
                 "+inf": np.where(i == 5, np.inf, wave)})
    return {k: np.asarray(v, np.float32) for k, v in rows.items()}


def test_against_float64_the_fold_bound_and_the_fallback(kernels, rng):
    k, p5, fb = kernels["fold"], kernels["p5"], kernels["fallback"]
    n = 4 * BLOCK + 21
    rows = _rows(n, rng)
    x = np.stack(list(rows.values()))
    y = run(k, x)
    check(k, x, y, "fold", row_names=list(rows))
    assert np.array_equal(np.isnan(y), np.isnan(run(p5, x)))
    names = list(rows)
    for name in ("max just outside", "max just outside, negative", "large"):   # the fallback's bits
        j = names.index(name)
        assert np.array_equal(y[j], run(fb, x[j:j + 1])[0]), name
    for name in ("max just inside", "max just inside, negative", "random x1"):  # folded: not the fallback's
        j = names.index(name)
        assert not np.array_equal(y[j], run(fb, x[j:j + 1])[0]), name
    far = names.index("-inf and far below")
    assert (y[far][np.isneginf(x[far])] == 0).all()
    sub = names.index("the subnormal range")                   # monotone down to +0
    assert (np.diff(y[sub]) <= 0).all() and y[sub][-1] == 0
    for m in (1, 17, BLOCK + 5):                                # tails
        check(k, x[:, :m], run(k, x[:, :m]), f"n={m}", row_names=names)
    edge = contract_rows(2 * BLOCK + 5, rng)
    xe = np.stack(list(edge.values()))
    check(k, xe, run(k, xe), "edge cases", row_names=list(edge))


def test_the_split_form_any_thread_count_the_same_bits(rng):
    k = softgen.compile("softmax", algorithm="two-pass", target="avx512", schedule={"stream": True})
    assert "row_split" in k.source and k.source.count("sg_exp_shift2_fold(") >= 8
    n = 300_001
    rows = {"random x10": rng.standard_normal(n) * 10, "max just inside": (SHIFT2_FOLD_E - 1) * LN2 - rng.random(n) * 30,
            "max just outside": (SHIFT2_FOLD_E + 3) * LN2 - rng.random(n) * 30}
    x = np.stack([np.asarray(v, np.float32) for v in rows.values()])
    y = run(k, x)
    check(k, x, y, "split", row_names=list(rows))
    if k.runnable:
        assert np.array_equal(k(x, threads=1), y) and np.array_equal(k(x, threads=2), y)


def test_a_dominating_element_never_above_one_and_single_elements_exact(kernels, rng):
    """The sum's p5 pair and the output's table exp round apart (up to 2 ulp): the product is capped
    at 1, and a row of one element takes the fallback (exactly 1)."""
    k = kernels["fold"]
    for n in (1, 2, 40):
        x = np.full((4000, n), -1e4, np.float32)
        x[:, 0] = rng.uniform(-4000, 4000, len(x))
        y = run(k, x)
        assert (y[:, 0] <= 1).all() and (y[:, 0] >= 1 - 2.0 ** -22).all(), n
        if n == 1:
            assert (y == 1).all()
    y = run(k, np.array([[np.nan, 0.0], [np.inf, 0.0]], np.float32))   # the cap keeps NaN
    assert np.isnan(y).all()
