"""Every op x algorithm x target against the float64 reference: random rows of every length up to
3 vectors + 1 and across block edges, 2^20-element rows, ranges where a naive exp overflows, the
edge-case contract of docs/ops.md §0, strided / unaligned / non-contiguous rows, in place.
Targets this CPU lacks run the same generated source emulated: SIMDe for x86 ISAs, qemu user
mode for neon (batched: one emulator process per test)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ALGORITHMS_OF, BACKENDS, OP_ALGS, OPS, TARGETS, check, kernel, run, run_many

import softgen
from softgen.ops import build_program, get_op
from softgen.passes import applicable_algorithms

# TVM kernels that run with -m slow (each path stays covered by default, say how):
# - an x86 target but the host's: the same TensorIR at another vector width (TVM objects are
#   machine code: not emulated), covered by the host's;
# - lssar and reweight but on the host: the TensorIR is the same on every target, whose own
#   paths the other ops cover (and tests/test_lssa.py runs both on every target);
# - off the host's ISA (scalar, neon): one algorithm per op, spread over those targets (the
#   algorithm's TensorIR is the same at every vector width);
# - on the host, an algorithm of an op that scalar or neon runs (but one per op, and lssar's and
#   reweight's): so every op runs on each target and every (op, algorithm) on one of them.
# The 2^20-element row under qemu (neon) runs with -m slow too: it checks the algorithm's blocked
# sums (the same plan on every target); neon's block loop is covered by the block-edge lengths.
HOST = softgen.host_target()
TVM_HOST_ONLY = {"lssar", "reweight"}
OFF_HOST = ["scalar", "neon"]


def off_host_alg(op: str, target: str) -> str:
    """The algorithm of ``op`` that TVM runs on the off-host ``target`` by default."""
    algs = ALGORITHMS_OF[op]
    return algs[OFF_HOST.index(target) % len(algs)]


def slow_tvm(op: str, target: str, alg: str | None = None) -> bool:
    x86 = target in ("avx2", "avx512")
    if (x86 and target != HOST) or (op in TVM_HOST_ONLY and target not in (HOST, "host")):
        return True
    if alg is None or op in TVM_HOST_ONLY:
        return False
    if target in OFF_HOST:
        return alg != off_host_alg(op, target)
    rest = [a for a in ALGORITHMS_OF[op] if a not in {off_host_alg(op, t) for t in OFF_HOST}]
    return alg not in (rest or ALGORITHMS_OF[op][:1])


MATRIX = [pytest.param(op, alg, t, b, id="-".join((op, alg, t, b)),
                       marks=[pytest.mark.slow] if b == "tvm" and slow_tvm(op, t, alg) else [])
          for b in BACKENDS for op, alg in OP_ALGS for t in TARGETS]
ids = None   # each param names itself: op-alg-target-backend


def lengths(k: softgen.Kernel) -> list[int]:
    """Every length up to 3 vectors + 1, then around the unrolled step and the block size."""
    lanes, step, block = k.target.lanes, k.schedule.step(k.target.lanes), k.schedule.block
    edge = {step - 1, step, step + 1, 2 * step + lanes + 1, block - 1, block, block + 1,
            2 * block + step + lanes + 3}
    return sorted(set(range(1, 3 * lanes + 2)) | {n for n in edge if n > 0})


@pytest.mark.parametrize("op,alg,target,backend", MATRIX, ids=ids)
def test_random_rows_every_length(op, alg, target, backend, rng):
    k = kernel(op, alg, target, backend)
    xs = [(rng.standard_normal((3, n)) * 4).astype(np.float32) for n in lengths(k)]
    for x, y in zip(xs, run_many(k, xs)):
        check(k, x, y, f"n={x.shape[-1]}")


@pytest.mark.parametrize("op,alg,target,backend", MATRIX, ids=ids)
def test_ranges_that_overflow_naive_exp(op, alg, target, backend, rng):
    k = kernel(op, alg, target, backend)
    ranges = [(90, 100), (-1000, 1000), (-1e4, 1e4)]     # one emulator process for the three
    xs = [rng.uniform(lo, hi, (4, 3001)).astype(np.float32) for lo, hi in ranges]
    for (lo, hi), x, y in zip(ranges, xs, run_many(k, xs)):
        check(k, x, y, f"U[{lo},{hi}]")


LONG_ROW = [pytest.param(*p.values, id=p.id, marks=[*p.marks, *([pytest.mark.slow] if p.values[2] == "neon" else [])])
            for p in MATRIX]


@pytest.mark.parametrize("op,alg,target,backend", LONG_ROW, ids=ids)
def test_long_row_2_pow_20(op, alg, target, backend, rng):
    """A single f32 running sum drifts to ~1e-4 here; blocked compensated sums keep 2e-6."""
    k = kernel(op, alg, target, backend)
    x = rng.uniform(-2, 2, (1, 1 << 20)).astype(np.float32)  # many comparable terms: worst case
    check(k, x, run(k, x), "n=2^20")


def contract_rows(n: int, rng) -> dict[str, np.ndarray]:
    """The edge-case table of docs/ops.md §0, with specials placed in the unrolled loop, the single-vector
    loop and the masked tail (positions 0, n//2, n-1)."""
    base = rng.standard_normal(n).astype(np.float32)
    rows = {}
    for pos in sorted({0, n // 2, n - 1}):
        for name, val in (("nan", np.nan), ("+inf", np.inf)):
            r = base.copy()
            r[pos] = val
            rows[f"{name}@{pos}"] = r
        r = base.copy()
        r[pos] = -np.inf
        rows[f"-inf@{pos}"] = r
    rows["all -inf"] = np.full(n, -np.inf, np.float32)
    some = base.copy()
    some[::3] = -np.inf
    rows["every 3rd -inf"] = some
    huge = np.zeros(n, np.float32)
    huge[n // 2] = 3e38
    rows["3e38 and zeros"] = huge
    rows["+-3e38"] = np.where(np.arange(n) % 2, 3e38, -3e38).astype(np.float32)
    rows["tiny +-1e-38"] = np.where(np.arange(n) % 2, 1e-38, -1e-38).astype(np.float32)
    rows["constant"] = np.full(n, 7.25, np.float32)
    rows["beyond extexp domain 3e5"] = (3e5 + rng.uniform(-50, 50, n)).astype(np.float32)
    rows["beyond extexp domain -3e5"] = (-3e5 + rng.uniform(-50, 50, n)).astype(np.float32)
    rows["1e30 spread"] = rng.uniform(-1e30, 1e30, n).astype(np.float32)
    return rows


@pytest.mark.parametrize("op,alg,target,backend", MATRIX, ids=ids)
def test_edge_case_contract(op, alg, target, backend, rng):
    k = kernel(op, alg, target, backend)
    sizes = (1, 2, k.target.lanes + 3, k.schedule.step(k.target.lanes) * 2 + 5)
    cases = [contract_rows(n, rng) for n in sizes]
    xs = [np.stack(list(rows.values())) for rows in cases]
    for n, rows, x, y in zip(sizes, cases, xs, run_many(k, xs)):
        check(k, x, y, f"n={n}", row_names=list(rows))
        for i, name in enumerate(rows):
            if name.startswith(("nan", "+inf", "all -inf")):
                assert np.isnan(y[i]).all(), f"{name}: whole row must be NaN"


@pytest.mark.parametrize("op,alg,target,backend", MATRIX, ids=ids)
def test_single_element_and_empty(op, alg, target, backend):
    k = kernel(op, alg, target, backend)
    vals = (0.0, -5.0, 1e30, -1e30, 3e5)
    xs = [np.array([[v]], np.float32) for v in vals]
    for x, y in zip(xs, run_many(k, xs)):
        degenerate = get_op(op).f32_overflow
        if degenerate is not None and degenerate(x, **k.params).all():
            assert np.isnan(y).all()   # an f32 row sum that overflows (docs/ops.md §0)
        elif get_op(op).normalised(k.params):
            assert 1.0 - 2 ** -23 <= y[0, 0] <= 1.0  # two-pass may be 1 ulp low
        elif get_op(op).log_probs:
            assert -2 ** -23 <= y[0, 0] <= 0.0       # log ops: log 1
        check(k, x, y, f"x={x[0, 0]}")
    for shape in [(0,), (3, 0), (0, 5), (2, 0, 4)]:
        y = run(k, np.zeros(shape, np.float32))
        assert y.shape == shape


@pytest.mark.parametrize("op,alg,target,backend", MATRIX, ids=ids)
def test_layouts_strided_unaligned_inplace(op, alg, target, backend, rng):
    k = kernel(op, alg, target, backend)
    n = 2 * k.target.lanes + 3
    wide = (rng.standard_normal((5, n + 7)) * 3).astype(np.float32)
    x = wide[:, 2:2 + n]                       # ldx > n, start not vector aligned
    check(k, x, run(k, x), "strided")
    xs = wide[:, ::2]                          # last axis not contiguous: copied
    check(k, xs, run(k, xs), "non-contiguous")
    x3 = (rng.standard_normal((2, 3, n)) * 3).astype(np.float32)
    check(k, x3, run(k, x3), "3-d")
    x3t = x3.transpose(1, 0, 2)                # leading axes not collapsible: copied
    check(k, x3t, run(k, x3t), "3-d transposed")
    buf = np.zeros(4 * n + 1, np.uint8)[1:].view(np.float32).reshape(1, n)  # byte-misaligned
    buf[:] = x[:1]
    check(k, buf, run(k, buf), "byte-misaligned")
    ref = run(k, x.copy())
    out = np.full((5, n + 5), 123.0, np.float32)
    yv = run(k, x, out=out[:, 1:1 + n])        # strided, unaligned out
    assert np.array_equal(yv, ref) and np.all(out[:, 0] == 123) and np.all(out[:, 1 + n:] == 123)
    inplace = x.copy()
    y = run(k, inplace, out=inplace)
    assert y is inplace and np.array_equal(inplace, ref)
    xw = wide.copy()                           # in place on a strided view
    view = xw[:, 2:2 + n]
    run(k, view, out=view)
    assert np.array_equal(xw[:, 2:2 + n], ref) and np.array_equal(xw[:, :2], wide[:, :2])


# the parameter values that change a row op's program (and so its plan), besides the defaults
PROGRAM_VARIANTS = {"topk_softmax": [{"k": 3, "renormalize": 1}, {"k": 3, "renormalize": 0}],
                    **{op: [{"count_keys": 1}, {"count_keys": 0}] for op in ("lssa", "reweight", "lssar")}}
IN_PLACE = [(op, alg, params) for op in OPS for params in PROGRAM_VARIANTS.get(op, [{}])
            for alg in applicable_algorithms(build_program(op, **params))]


@pytest.mark.parametrize("op,alg,params", IN_PLACE,
                         ids=[f"{o}-{a}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for o, a, p in IN_PLACE])
def test_in_place_equals_out_of_place(op, alg, params, rng):
    """y may be x (the header says so): every op, algorithm and program variant gives the same
    bits in place as out of place (C, avx2). A plan that read x after storing into y (top-k's
    membership test under three-pass-reload did) reads what it stored instead."""
    k = kernel(op, alg, "avx2", "c", **params)
    _same_in_place(k, rng)


def _same_in_place(k: softgen.Kernel, rng) -> None:
    opdef = get_op(k.op)
    for n in (k.target.lanes + 3, 1000):
        x = (rng.standard_normal((4, n)) * 3).astype(np.float32)
        x[1, ::7] = -np.inf
        call = opdef.sample_call(x.shape, k.params) if opdef.sample_call else {}
        y = run(k, x, **call)
        check(k, x, y, f"n={n}", **call)
        z = x.copy()
        assert run(k, z, out=z, **call) is z
        assert np.array_equal(z, y, equal_nan=True), f"{k.name} n={n}: in place differs"


def test_in_place_equals_out_of_place_tvm(rng):
    """The same for the TVM backend, on the case the plan once got wrong."""
    _same_in_place(kernel("topk_softmax", "three-pass-reload", "host", "tvm", k=3, renormalize=0), rng)


SCALED = [(o, a) for o, a in OP_ALGS if "scale" in get_op(o).params]


def folded(op_algs, values, keep=lambda v: False):
    """(op, alg, value, slow): each op's values spread over its algorithms (value i on algorithm
    i mod n, so every value runs once per op and every algorithm at least once) plus the values
    `keep` names on every algorithm; the rest of the product with -m slow. A value an op does not
    take is left out."""
    out = []
    for op in dict.fromkeys(o for o, _ in op_algs):
        algs = [a for o, a in op_algs if o == op]
        vals = [v for v in values if set(v) <= set(get_op(op).params)]
        for i, v in enumerate(vals):
            out += [(op, a, v, not keep(v) and j != i % len(algs)) for j, a in enumerate(algs)]
    return out


def tvm_scaled(op: str, alg: str, seen: set) -> bool:
    """TVM's share of the folded sets: each algorithm on one of the ops that have it (softmax
    and log_softmax take turns), once (its first value)."""
    ops = [o for o in dict.fromkeys(o for o, _ in SCALED) if alg in ALGORITHMS_OF[o]]
    keep = op == ops[ALGORITHMS_OF[op].index(alg) % len(ops)] and (op, alg) not in seen
    seen.add((op, alg))
    return keep


# one parameter set per algorithm (the scale is one multiply, the same code for every value; each
# value still runs once per op on C, each algorithm and each value once on TVM); the product
# with -m slow
_TVM_SEEN: set = set()
SCALE_TEMPERATURE = [pytest.param(o, a, v, b, id=f"{o}-{a}-{v}-{b}", marks=[pytest.mark.slow] if slow else [])
                     for b in BACKENDS for o, a, v, slow0 in folded(
                         SCALED, [{"scale": 0.5}, {"scale": 3.0}, {"temperature": 0.7}, {"scale": 0.125}])
                     for slow in [slow0 or (b == "tvm" and not tvm_scaled(o, a, _TVM_SEEN))]]


@pytest.mark.parametrize("op,alg,params,backend", SCALE_TEMPERATURE)
def test_scale_and_temperature(op, alg, params, backend, rng):
    k = kernel(op, alg, "host", backend, **params)
    x = rng.uniform(-30, 30, (3, 1000)).astype(np.float32)
    check(k, x, run(k, x), str(params))


EXTREME_SCALES = [{"scale": 2.0 ** -149}, {"temperature": 3e33}, {"scale": 5e-20}, {"scale": 2.0 ** -64},
                  {"scale": 1e30}, {"temperature": 2.0}, {"scale": 0.75}]


def extreme_scale_rows(n: int, rng) -> dict[str, np.ndarray]:
    rows = {"random": (rng.standard_normal(n) * 4).astype(np.float32),
            "+-3e38": np.where(np.arange(n) % 2, 3e38, -3e38).astype(np.float32),
            "1e30 spread": rng.uniform(-1e30, 1e30, n).astype(np.float32),
            "all -inf": np.full(n, -np.inf, np.float32)}
    rows["some -inf"] = np.where(np.arange(n) % 3, rows["1e30 spread"], -np.inf).astype(np.float32)
    rows["nan"] = np.where(np.arange(n) == n // 2, np.nan, rows["random"]).astype(np.float32)
    return rows


# every scale on one algorithm per op, the two below ~3.9e-34 (where the clamp left the float32
# range) on every algorithm; the full product with -m slow
POSITIVE_SCALES = [pytest.param(o, a, v, id=f"{o}-{a}-{v}", marks=[pytest.mark.slow] if slow else [])
                   for o, a, v, slow in folded(SCALED, EXTREME_SCALES, keep=lambda v: v.get("scale", 1.0) * (
                       1 / v.get("temperature", 1.0)) < 3.9e-34)]


@pytest.mark.parametrize("op,alg,params", POSITIVE_SCALES)
def test_every_positive_finite_scale(op, alg, params, rng):
    """Spec 0 allows any finite s > 0. Below ~3.9e-34 the two-pass clamp -2^17 / s left the
    float32 range and every row came out NaN (C; TVM on rows with -inf); x - max x overflows for
    spreads beyond FLT_MAX, which any s < 1 may bring back into range (log-softmax gave -inf)."""
    k = kernel(op, alg, "host", "c", **params)
    _check_rows(k, rng)


def test_tiny_scale_tvm(rng):
    _check_rows(kernel("softmax", "two-pass", "host", "tvm", temperature=3e33), rng)


def _check_rows(k: softgen.Kernel, rng) -> None:
    for n in (1, k.target.lanes + 3, 1000):
        rows = extreme_scale_rows(n, rng)
        x = np.stack(list(rows.values()))
        check(k, x, run(k, x), f"n={n}", row_names=list(rows))


@pytest.mark.parametrize("op,alg", [(o, a) for o, a in OP_ALGS if get_op(o).log_probs])
@pytest.mark.parametrize("backend", BACKENDS)
def test_log_probabilities_are_never_positive(op, alg, backend, rng):
    """log p <= 0, as PyTorch, JAX and SciPy give (exactly 0 for a lone or dominant entry):
    two-pass log_softmax gave up to +1.5e-7 there (log_softmax([[5]]) = 8.9e-8), its e^t and
    log V rounding apart. Rows where one entry dominates, at every position and length. TVM:
    two-pass and direct only (the builds are slow; the others share their C programs' IR)."""
    if backend == "tvm" and alg not in ("two-pass", "direct"):
        pytest.skip("TVM runs the two-pass and direct cases")
    k = kernel(op, alg, "host", backend)
    big = (-20, 20) if op == "log_softmax" else (1e7, 1e8)   # stablemax grows linearly
    singles = (rng.standard_normal((4000, 1)) * 100).astype(np.float32)
    xs = [np.array([[5.0]], np.float32), np.array([[big[1] * 50, 1.0]], np.float32), singles]
    for n in (2, 3, k.target.lanes + 1, 37, 1000):
        x = rng.uniform(-120, -40, (64, n)).astype(np.float32)
        x[np.arange(64), rng.integers(0, n, 64)] = rng.uniform(*big, 64).astype(np.float32)
        xs.append(x)
    for x, y in zip(xs, run_many(k, xs)):
        check(k, x, y, f"n={x.shape[-1]}")       # asserts log p <= 0
        top = y[np.arange(len(y)), np.argmax(x, axis=-1)]
        assert np.all(top >= -2e-5), f"{k.name}: log p of the dominant entry {top.min()}"


def test_output_is_not_a_shifted_or_wrong_softmax(rng):
    """Guards against a check that cannot fail: a deliberately wrong result must be rejected."""
    k = kernel("softmax", "two-pass", "host")
    x = rng.standard_normal((2, 100)).astype(np.float32)
    y = run(k, x)
    with pytest.raises(AssertionError):
        check(k, x, y * np.float32(1 + 1e-5), "perturbed")
    with pytest.raises(AssertionError):
        check(k, x, np.roll(y, 1, axis=-1), "rolled")


@pytest.mark.parametrize("op,alg,target", [
    pytest.param(op, alg, t, id=f"{t}-{op}-{alg}", marks=[pytest.mark.slow] if slow_tvm(op, t, alg) else [])
    for t in ("scalar", "host", "neon") for op, alg in OP_ALGS])
def test_backends_agree(op, alg, target, rng):
    """The C and TVM kernels of one program: same algorithm, same exp, so they agree to within
    a few ulps (both are also checked against the reference above)."""
    kc, kt = kernel(op, alg, target, "c"), kernel(op, alg, target, "tvm")
    xs = [rng.uniform(-40, 40, (2, n)).astype(np.float32) for n in (1, 13, 1000, 5003)]
    for x, yc, yt in zip(xs, run_many(kc, xs), run_many(kt, xs)):
        tol = get_op(op).tolerance(x, yc.astype(np.float64), kc.params)
        assert np.all(np.abs(yc.astype(np.float64) - yt) <= tol), f"{kt.name} vs {kc.name}, n={x.shape[-1]}"


def test_stablemax_is_not_shift_invariant(rng):
    """A kernel that subtracted the row max (as softmax kernels do) would fail this."""
    x = rng.uniform(-3, 3, (2, 50)).astype(np.float32)
    for backend in BACKENDS:
        k = kernel("stablemax", "direct", "host", backend)
        y, y_shift = run(k, x), run(k, x + np.float32(5))
        check(k, x, y, "unshifted")
        assert np.max(np.abs(y - y_shift)) > 1e-3
        shifted = get_op("stablemax").reference(x - x.max(-1, keepdims=True))
        assert not np.allclose(y, shifted, rtol=1e-3)
