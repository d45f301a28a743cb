"""Hypothesis properties over every op (issue #11): the row ops on every native x86 target against
the float64 reference (random shapes, values from mixtures of normal, huge, subnormal, tied,
-inf, NaN and +inf entries, and the ops' parameters, extreme ones included); log-probabilities
never above 0; in place == out of place, bitwise; non-finite inputs as the reference, for row and
matrix ops; one TVM run on a subset. Examples are bounded and derandomized (``FAST``); the
``slow``-marked test reruns every property with ``SLOW``'s count. Parameters come from small
discrete sets and kernels from conftest's cached ``kernel()``, so few distinct kernels get built.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import MATRIX_OPS, OPS, check, kernel, run
from hypothesis import HealthCheck, given, note, settings, strategies as st

from softgen.ops import build_program, get_op
from softgen.passes import applicable_algorithms

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(FAST, max_examples=400)

# -- strategies -------------------------------------------------------------------------------

# parameter sets per op, default first (hypothesis shrinks towards it); extremes included:
# temperature 3e33 is a scale of 3.3e-34, 1e4 makes every gap of 0.01 an e^-100
SCALES = [{}, {"scale": 0.5}, {"scale": 3.0}, {"temperature": 0.7}, {"scale": 1e-6},
          {"scale": 1e4}, {"temperature": 3e33}]
PARAMS = {
    "softmax": SCALES,
    "log_softmax": SCALES,
    "softplus_l1": [{}, {"scale": 0.25}, {"scale": 8.0}, {"scale": 1e4}],
    "lssa": [{}, {"head_dim": 16}, {"head_dim": 1}, {"count_keys": 0}],
    "reweight": [{}, {"p": 1}, {"p": 2.5}, {"p": 40}, {"offset_free_rows": 0}, {"count_keys": 0}],
    "lssar": [{}, {"head_dim": 16, "p": 2}, {"offset_free_rows": 1}, {"count_keys": 0}],
    "topk_softmax": [{"k": 2}, {"k": 1}, {"k": 3}, {"k": 8}],
    "sinkhorn": [{}, {"n_iter": 1}, {"n_iter": 2, "eps": 0.5}],
    "newton_pinv": [{"n_iter": 3}, {"n_iter": 0}, {"n_iter": 2, "variant": "norm"}],
    "gaussian_kernel": [{}, {"head_dim": 1}],
}
# on the targets but the host's: the scale is one multiply whatever its value, so the default and
# the extremes that reach the clamps; the other ops' sets (head_dim, p, k, ...: code paths the
# host runs every set of) each on one of them, the default on both; every set of PARAMS on both
# with -m slow
NARROW = {"softmax": [{}, {"scale": 1e4}, {"temperature": 3e33}], "log_softmax": [{}, {"scale": 1e4}, {"temperature": 3e33}],
          "softplus_l1": [{}, {"scale": 1e4}]}
NARROW_TARGETS = ["avx2", "scalar"]
# on the host: the scale ops' other sets (a scale is one multiply whatever its value) and top-k's
# other k (the selection is the same whatever normalises it) each on one algorithm of the op (the
# i-th on algorithm i mod n), the default and the extremes on every algorithm; every set on every
# algorithm in test_exhaustive_sweep (-m slow), which clears FOLD
HOST_EVERY = [{}, {"scale": 1e-6}, {"scale": 1e4}, {"temperature": 3e33}, {"k": 2}]
FOLDED = {*NARROW, "topk_softmax"}
FOLD = True


def host_sets(op: str, alg: str, fixed: dict) -> list[dict]:
    sets = PARAMS.get(op, [{}])
    if not FOLD or op not in FOLDED:
        return sets
    algs = applicable_algorithms(build_program(op, **fixed))
    spread = [p for p in sets if p not in HOST_EVERY]
    return [p for p in sets if p in HOST_EVERY or spread.index(p) % len(algs) == algs.index(alg)]


def narrow_sets(op: str, target: str) -> list[dict]:
    if op in NARROW:
        return NARROW[op]
    i = NARROW_TARGETS.index(target)
    return [p for j, p in enumerate(PARAMS.get(op, [{}])) if j == 0 or (j - 1) % len(NARROW_TARGETS) == i]
# params that change which algorithms apply: each value is its own test case
STRUCTURAL = {"topk_softmax": [{"renormalize": 1}, {"renormalize": 0}]}
# (op, algorithm, structural params) for every row op and every algorithm that applies to it
ROW_CASES = [(op, alg, fixed) for op in OPS for fixed in STRUCTURAL.get(op, [{}])
             for alg in applicable_algorithms(build_program(op, **fixed))]
def case_id(c):
    return "-".join([c[0], c[1], *(f"{k}={v}" for k, v in c[2].items())])


X86 = ["host", "avx2", "scalar"]        # run natively on any x86 CPU with AVX-512 (host here)

NONFINITE = [np.nan, np.inf, -np.inf]
# value mixtures: each draws a kind per element from a few of these
KINDS = {
    "normal": lambda rng, size: rng.standard_normal(size) * 4,
    "wide": lambda rng, size: rng.uniform(-1e3, 1e3, size),
    "huge": lambda rng, size: rng.choice([-3e38, -1e30, 1e30, 3e38], size) * rng.uniform(0.5, 1, size),
    "tiny": lambda rng, size: rng.choice([1e-40, -1e-40, 1e-45, 0.0, 1e-38], size),
    "ties": lambda rng, size: rng.integers(-2, 3, size).astype(np.float64),
    "-inf": lambda rng, size: np.full(size, -np.inf),
}
LENGTHS = st.one_of(st.integers(1, 300), st.sampled_from([15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 257]))


@st.composite
def values(draw, shape, specials: int = 0, max_specials: int = 3):
    """A float32 array of ``shape``: each element from one of a few drawn kinds (or one constant
    value per row, incl. 1/n), then ``specials``..``max_specials`` NaN/+-inf entries placed by
    hypothesis (so a failing example shrinks to the few entries that matter)."""
    size = int(np.prod(shape))
    kinds = draw(st.lists(st.sampled_from([*KINDS, "constant"]), min_size=1, max_size=3, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    pick = rng.integers(len(kinds), size=size)
    x = np.empty(size)
    for i, kind in enumerate(kinds):
        if kind == "constant":   # e.g. a uniform attention row: reweight's N a - O = 0 case
            c = draw(st.sampled_from([0.0, 1.0 / shape[-1], 7.25, -3.0]))
            x[pick == i] = c
        else:
            x[pick == i] = KINDS[kind](rng, size)[pick == i]
    for pos, v in draw(st.lists(st.tuples(st.integers(0, size - 1), st.sampled_from(NONFINITE)),
                                min_size=specials, max_size=max(specials, max_specials))):
        x[pos] = v
    with np.errstate(over="ignore"):
        x = x.astype(np.float32).reshape(shape)
    note(f"x = np.array({np.array2string(x, separator=', ', threshold=1 << 30, floatmode='unique')}, "
         f"np.float32)")
    return x


@st.composite
def rows(draw, specials: int = 0):
    """1..4 rows (row index 3 is past lssar's default offset-free rows) of 1..300 elements."""
    return draw(values((draw(st.integers(1, 4)), draw(LENGTHS)), specials, max(3, specials)))


@st.composite
def matrix_inputs(draw, op: str, specials: int = 0):
    """The op's input arrays: a batch of cost matrices (sinkhorn), square matrices (newton_pinv),
    point sets a, b (gaussian_kernel). Finite values stay moderate: matrix ops' references have no
    contract for 1e30 entries (their tolerances scale with the data)."""
    b, m = draw(st.integers(1, 2)), draw(st.integers(1, 12))
    moderate = st.sampled_from([0.3, 1.0, 3.0])
    if op == "gaussian_kernel":
        n, d = draw(st.integers(1, 12)), draw(st.integers(1, 20))
        sc = draw(moderate)
        a = np.random.default_rng(draw(st.integers(0, 2 ** 16))).standard_normal((b, n, d)) * sc
        pts = np.random.default_rng(draw(st.integers(0, 2 ** 16))).standard_normal((b, m, d)) * sc
        xs = [a, pts]
        which = draw(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 10 ** 6), st.sampled_from(NONFINITE)),
                              min_size=specials, max_size=max(specials, 2)))
        for i, pos, v in which:
            xs[i].reshape(-1)[pos % xs[i].size] = v
        xs = [v.astype(np.float32) for v in xs]
        note(f"a, b = {[v.tolist() for v in xs]}")
        return tuple(xs)
    n = m if op == "newton_pinv" else draw(st.integers(1, 40))
    sc = draw(moderate)
    x = np.random.default_rng(draw(st.integers(0, 2 ** 16))).standard_normal((b, m, n)) * sc
    for pos, v in draw(st.lists(st.tuples(st.integers(0, x.size - 1), st.sampled_from(NONFINITE)),
                                min_size=specials, max_size=max(specials, 2))):
        x.reshape(-1)[pos] = v
    x = x.astype(np.float32)
    note(f"x = np.array({x.tolist()}, np.float32)")
    return (x,)


@st.composite
def call_args(draw, op: str, params: dict, x: np.ndarray) -> dict:
    """Call-time arguments: the per-row key counts of lssa-family kernels built with count_keys=0."""
    if "n_attended" not in get_op(op).call_params or params.get("count_keys", 1):
        return {}
    n = x.shape[-1]
    return {"n_attended": np.array(draw(st.lists(st.integers(1, 2 * n + 1), min_size=x.shape[0],
                                                 max_size=x.shape[0])), np.float64)}


def row_kernel(data, op, alg, fixed, target="host", backend="c", narrow=False):
    """(kernel, parameters) for parameters drawn from the op's small set (``narrow_sets`` if
    ``narrow``), plus ``fixed``."""
    sets = narrow_sets(op, target) if narrow else host_sets(op, alg, fixed)
    params = {**data.draw(st.sampled_from(sets), label="params"), **fixed}
    return kernel(op, alg, target, backend, **params), params


# -- properties -------------------------------------------------------------------------------

def matches_float64(data, op, alg, fixed, target="host", backend="c", narrow=False):
    k, params = row_kernel(data, op, alg, fixed, target, backend, narrow)
    x = data.draw(rows(), label="x")
    call = data.draw(call_args(op, params, x), label="call")
    check(k, x, run(k, x, **call), str(params), **call)


def log_probabilities_at_most_zero(data, op, alg, fixed):
    k, params = row_kernel(data, op, alg, fixed)
    x = data.draw(rows(), label="x")
    y = run(k, x)
    bad = y > 0
    assert not bad.any(), f"{k.name} {params}: log p > 0 at {np.argwhere(bad)[0]}: {y[bad][:4]}"


def in_place_equals_out_of_place(data, op, alg, fixed):
    """k(x, out=x) == k(x) bit for bit (NaNs compared as NaN: their sign and payload are not part
    of the contract)."""
    if get_op(op).kind == "matrix":
        k = kernel(op, alg, "host", **data.draw(st.sampled_from(PARAMS[op]), label="params"))
        (x,) = data.draw(matrix_inputs(op), label="x")
        call = {}
    else:
        k, params = row_kernel(data, op, alg, fixed)
        x = data.draw(rows(), label="x")
        call = data.draw(call_args(op, params, x), label="call")
    want = k(x, **call)
    y = x.copy()
    assert k(y, out=y, **call) is y

    def bits(a):
        return np.where(np.isnan(a), np.float32(np.nan), a).view(np.uint32)
    diff = bits(y) != bits(want)
    assert not diff.any(), (f"{k.name}: in place differs at {np.argwhere(diff)[0]} "
                            f"({diff.sum()} elements): {y[diff][:4]} vs {want[diff][:4]}")


def uniform_rows_give_zeros(data, op, alg, fixed):
    """Spec 5.2: a finite, exactly uniform attention row (N a = 1) at a query row i >=
    offset_free_rows has every R = ReLU(N a - 1) = 0: an all-zero output row. For reweight the
    row is a = 1/n; lssar makes any constant cosine row uniform."""
    params = data.draw(st.sampled_from([p for p in PARAMS[op] if "count_keys" not in p]), label="params")
    k = kernel(op, alg, "host", **params, **fixed)
    shape = (data.draw(st.integers(1, 6), label="rows"), data.draw(LENGTHS, label="n"))
    if op == "reweight":
        x = np.full(shape, np.float32(1.0) / np.float32(shape[-1]), np.float32)
    else:
        c = data.draw(st.lists(st.floats(-1, 1, width=32), min_size=shape[0], max_size=shape[0]),
                      label="cosine per row")
        x = np.repeat(np.array(c, np.float32)[:, None], shape[-1], axis=1)
    note(f"x = {x[:, 0].tolist()} x {shape[-1]}")
    y = run(k, x)
    live = y[k.params["offset_free_rows"]:]
    assert np.all(live == 0), f"{k.name} {params}: uniform rows past the offset-free rows give {live[:, 0]}"


def softplus_underflow_gives_the_softmax_limit(data, op, alg, fixed):
    """Rows whose every softplus(s x) is below FLT_MIN (s x < -87.3) are softplus(z) ~ e^z: the
    float64 reference is their softmax, finite; the f32 kernel must not turn them into NaN."""
    params = data.draw(st.sampled_from(host_sets(op, alg, fixed)), label="params")
    k = kernel(op, alg, "host", **params, **fixed)
    shape = (data.draw(st.integers(1, 4), label="rows"), data.draw(LENGTHS, label="n"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label="seed"))
    spread = data.draw(st.sampled_from([0.5, 5.0, 40.0]), label="spread of s x below -88")
    x = ((-88.0 - rng.uniform(0, spread, shape)) / k.params["scale"]).astype(np.float32)
    note(f"x = np.array({x.tolist()}, np.float32)")
    y, r = run(k, x), get_op(op).reference(x, **k.params)
    assert np.isfinite(r).all() and np.isfinite(y).all(), f"{k.name} {params}: NaN/inf for a finite limit"
    tol = get_op(op).tolerance(x, r, k.params)
    err = np.abs(y - r)
    assert np.all(err <= tol), f"{k.name} {params}: max err/tol {np.max(err / tol):.3g}"


def check_two_inputs(k, a, b, s) -> None:
    """conftest.check for an op of two inputs (gaussian_kernel): NaN exactly where the reference
    is NaN, elsewhere within the op's tolerance."""
    op = get_op(k.op)
    r = op.reference(a, b, **k.params)
    assert s.shape == r.shape and s.dtype == np.float32
    nan_r, nan_s = np.isnan(r), np.isnan(s)
    if not np.array_equal(nan_r, nan_s):
        i = tuple(np.argwhere(nan_r != nan_s)[0])
        raise AssertionError(f"{k.name}: NaN pattern differs at {i}: s={s[i]!r} ref={r[i]!r}")
    with np.errstate(invalid="ignore", over="ignore"):
        tol = op.tolerance((a, b), r, k.params)
        err = np.abs(s.astype(np.float64) - r)
    bad = ~nan_r & ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{k.name}: out of tolerance at {i}: s={s[i]!r} ref={r[i]!r} tol={tol[i]:.3g}")


def non_finite_like_reference(data, op, alg, fixed):
    """NaN/+-inf entries give what the float64 reference gives (NaN rows, exact zeros, ...)."""
    if get_op(op).kind == "matrix":
        k = kernel(op, alg, "host", **data.draw(st.sampled_from(PARAMS[op]), label="params"))
        xs = data.draw(matrix_inputs(op, specials=1), label="inputs")
        if len(xs) == 2:
            return check_two_inputs(k, *xs, k(*xs))
        return check(k, xs[0], k(xs[0]), "non-finite")
    k, params = row_kernel(data, op, alg, fixed)
    x = data.draw(rows(specials=1), label="x")
    call = data.draw(call_args(op, params, x), label="call")
    check(k, x, run(k, x, **call), f"{params} non-finite", **call)


# -- tests: one per property (FAST); all of them again with SLOW's count, marked slow ---------

LOG_CASES = [c for c in ROW_CASES if c[0] in ("log_softmax", "log_stablemax")]
UNIFORM_CASES = [c for c in ROW_CASES if c[0] in ("reweight", "lssar")]
SOFTPLUS_CASES = [c for c in ROW_CASES if c[0] == "softplus_l1"]
MATRIX_CASES = [(op, "direct", {}) for op in MATRIX_OPS]
INPLACE_CASES = ROW_CASES + [c for c in MATRIX_CASES if get_op(c[0]).inputs == ("x",)]
TVM_CASES = [("softmax", "two-pass", {}), ("log_softmax", "online", {}),
             ("softplus_l1", "direct-reload", {}), ("topk_softmax", "direct", {"renormalize": 1})]


@pytest.mark.parametrize("target,narrow", [(t, t != "host") for t in X86]
                         + [pytest.param(t, False, marks=pytest.mark.slow) for t in X86 if t != "host"])
@pytest.mark.parametrize("op,alg,fixed", ROW_CASES, ids=map(case_id, ROW_CASES))
@FAST
@given(data=st.data())
def test_row_ops_match_float64(op, alg, fixed, target, narrow, data):
    matches_float64(data, op, alg, fixed, target, narrow=narrow)


@pytest.mark.parametrize("op,alg,fixed", LOG_CASES, ids=map(case_id, LOG_CASES))
@FAST
@given(data=st.data())
def test_log_probabilities_are_at_most_zero(op, alg, fixed, data):
    log_probabilities_at_most_zero(data, op, alg, fixed)


@pytest.mark.parametrize("op,alg,fixed", INPLACE_CASES, ids=map(case_id, INPLACE_CASES))
@FAST
@given(data=st.data())
def test_in_place_equals_out_of_place(op, alg, fixed, data):
    in_place_equals_out_of_place(data, op, alg, fixed)


@pytest.mark.parametrize("op,alg,fixed", UNIFORM_CASES, ids=map(case_id, UNIFORM_CASES))
@FAST
@given(data=st.data())
def test_uniform_rows_after_the_offset_free_rows_give_zeros(op, alg, fixed, data):
    uniform_rows_give_zeros(data, op, alg, fixed)


@pytest.mark.parametrize("op,alg,fixed", SOFTPLUS_CASES, ids=map(case_id, SOFTPLUS_CASES))
@FAST
@given(data=st.data())
def test_softplus_underflow_gives_the_softmax_limit(op, alg, fixed, data):
    softplus_underflow_gives_the_softmax_limit(data, op, alg, fixed)


@pytest.mark.parametrize("op,alg,fixed", ROW_CASES + MATRIX_CASES, ids=map(case_id, ROW_CASES + MATRIX_CASES))
@FAST
@given(data=st.data())
def test_non_finite_inputs_like_reference(op, alg, fixed, data):
    non_finite_like_reference(data, op, alg, fixed)


@pytest.mark.parametrize("op,alg,fixed", TVM_CASES, ids=map(case_id, TVM_CASES))
@settings(FAST, max_examples=10)
@given(data=st.data())
def test_tvm_backend_matches_float64(op, alg, fixed, data):
    matches_float64(data, op, alg, fixed, backend="tvm")


SWEEPS = ([(matches_float64, c) for c in ROW_CASES] + [(log_probabilities_at_most_zero, c) for c in LOG_CASES]
          + [(in_place_equals_out_of_place, c) for c in INPLACE_CASES]
          + [(uniform_rows_give_zeros, c) for c in UNIFORM_CASES]
          + [(softplus_underflow_gives_the_softmax_limit, c) for c in SOFTPLUS_CASES]
          + [(non_finite_like_reference, c) for c in ROW_CASES + MATRIX_CASES])


@pytest.mark.slow
@pytest.mark.parametrize("prop,case", SWEEPS, ids=[f"{p.__name__}-{case_id(c)}" for p, c in SWEEPS])
def test_exhaustive_sweep(prop, case, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "FOLD", False)
    SLOW(given(data=st.data())(lambda data: prop(data, *case)))()
