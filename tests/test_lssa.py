"""LSSA / LSSAR (docs/ops.md §5) beyond the shared kernel matrix: per-row parameters given by the caller
(natively and through both emulators), the re-weighting's degenerate rows and offsets, the power
p, the fused lssar against its two stages, and bad arguments."""
from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import BACKENDS, TARGETS, check, kernel, run, run_many

import softgen
from softgen import reference as ref

# TVM on the x86 target that is not the host's runs with -m slow: the same TensorIR at another
# vector width (TVM objects are machine code, not emulated), as in tests/test_kernels.py
HOST = softgen.host_target()
TARGET_BACKEND = [pytest.param(b, t, id=f"{b}-{t}", marks=[pytest.mark.slow] if b == "tvm" and t in ("avx2", "avx512")
                               and t != HOST else []) for b in BACKENDS for t in TARGETS]


def causal_cos(rng, lq, lk, d=16):
    """Cosine scores of random unit vectors, causally masked (bottom-right aligned) with -inf."""
    q = rng.standard_normal((lq, d))
    k = rng.standard_normal((lk, d))
    c = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (k / np.linalg.norm(k, axis=1, keepdims=True)).T
    keep = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
    return np.where(keep, c, -np.inf).astype(np.float32), keep.sum(axis=1)


@pytest.mark.parametrize("op", ["lssa", "lssar"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_counted_keys_equal_given_causal_counts(op, backend, rng):
    """count_keys=1 counts the unmasked keys; for a causal mask that is i + 1 (+ L_k - L_q)."""
    c, n = causal_cos(rng, 37, 45)
    kc, kg = kernel(op, "direct", "host", backend), kernel(op, "direct", "host", backend, count_keys=0)
    yc, yg = run(kc, c), run(kg, c, n_attended=n)
    check(kc, c, yc, "counted")
    check(kg, c, yg, "given", n_attended=n)
    assert np.allclose(yc, yg, rtol=1e-6, atol=1e-30)
    assert np.all(yc[0, 9:] == 0) and np.all(yc[-1] >= 0)   # row 0 attends keys 0..8 only
    if op == "lssa":  # row 0: lambda = log d log 9 > 0, so not uniform
        assert np.all(yc[0, :9] > 0) and np.ptp(yc[0, :9]) > 0 and np.all(yc[-1] > 0)


@pytest.mark.parametrize("target", ["avx512", "neon"])
def test_row_parameters_through_emulators(target, rng):
    """The per-row parameter arrays reach SIMDe builds and the qemu driver row by row."""
    k = kernel("lssar", "direct", target, "c", count_keys=0)
    xs, calls = [], []
    for lq, lk in ((5, 5), (9, 23), (3, 40)):
        c, n = causal_cos(rng, lq, lk)
        xs.append(c)
        calls.append({"n_attended": n})
    for x, c, y in zip(xs, calls, run_many(k, xs, calls)):
        check(k, x, y, str(x.shape), **c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_rows_reweight_to_zero_after_the_offset_free_rows(backend):
    """N a = 1 everywhere: R = ReLU(1 - O)^p is 0 for rows >= offset_free_rows (all-zero output,
    the one exception of docs/ops.md §0) and uniform for the first rows (O = 0)."""
    n = 8
    a = np.full((6, n), 1 / n, np.float32)
    for ofr in (0, 3, 6):
        k = kernel("reweight", "direct", "host", backend, offset_free_rows=ofr)
        y = run(k, a)
        assert np.all(y[ofr:] == 0) and np.allclose(y[:ofr], 1 / n, rtol=1e-6)
        check(k, a, y, f"offset_free_rows={ofr}")


@pytest.mark.parametrize("op", ["lssa", "lssar"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_whose_lambda_c_is_below_minus_flt_max_weigh_zero(op, backend):
    """lambda c = 11.8 * -1.8e38 is -inf in f32 and softplus(-inf) = 0, as float64's
    e^(lambda c): a finite row like the reference (the checker used to demand a NaN row)."""
    x = np.array([[-1.78e38, 148.9, 7.9e29, -2.1, 9.6e29, -9.6e29, 0.5]], np.float32)
    k = kernel(op, "direct", "host", backend)
    y = run(k, x)
    assert np.isfinite(y).all() and y[0, 0] == 0
    check(k, x, y, "lambda c < -FLT_MAX")


@pytest.mark.parametrize("p", [1, 2, 3, 15, 2.5, 40])
@pytest.mark.parametrize("backend", BACKENDS)
def test_power_sweep(p, backend, rng):
    """Integer p by repeated squaring, other p through exp(p log r); both against the oracle."""
    if backend == "tvm" and not float(p).is_integer():
        # TVM lowers e^(p log r) with the row's bound checks in ~6 min (70 s before the uniform-row
        # fix); the C backend covers the path on every target. Open problem, see the README.
        pytest.skip("TVM: non-integer p compiles for minutes (known problem)")
    c, _ = causal_cos(rng, 12, 300)
    a = ref.lssa(c, 64).astype(np.float32)
    k = kernel("reweight", "direct", "host", backend, p=p)
    y = run(k, a)
    check(k, a, y, f"p={p}")
    live = y.sum(axis=1) > 0
    assert np.allclose(y.sum(axis=1)[live], 1, atol=1e-5)


def test_sharpening_grows_with_p(rng):
    c, _ = causal_cos(rng, 8, 200)
    a = ref.lssa(c, 64).astype(np.float32)
    peaks = [run(kernel("reweight", "direct", "host", "c", p=p), a)[4:].max(axis=1) for p in (1, 3, 15)]
    assert np.all(peaks[0] <= peaks[1] + 1e-7) and np.all(peaks[1] <= peaks[2] + 1e-7)


def test_lssar_is_reweight_of_lssa(rng):
    c, n = causal_cos(rng, 20, 64)
    y = run(kernel("lssar", "direct", "host", "c", count_keys=0), c, n_attended=n)
    a = run(kernel("lssa", "direct", "host", "c", count_keys=0), c, n_attended=n)
    w = run(kernel("reweight", "direct", "host", "c", count_keys=0), a, n_attended=n)
    assert np.allclose(y, w, rtol=1e-4, atol=1e-7)
    assert np.allclose(y, ref.lssar(c, 64, n_attended=n), rtol=1e-4, atol=1e-7)


def test_no_overflow_for_long_rows_with_one_dominant_weight():
    """N = 8192 with one dominant weight: (N a)^15 is ~1e58 in a naive kernel."""
    a = np.full((4, 8192), 0.1 / 8191, np.float32)
    a[:, 17] = 0.9
    y = run(kernel("reweight", "direct", "host", "c"), a)
    assert np.all(np.isfinite(y)) and np.allclose(y[:, 17], 1.0)


def test_bad_arguments():
    k0 = softgen.compile("lssa", count_keys=0)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(TypeError, match="n_attended is required"):
        k0(x)
    with pytest.raises(ValueError, match="integers in"):
        k0(x, n_attended=[0, 3])
    with pytest.raises(ValueError, match="does not broadcast"):
        k0(x, n_attended=[1, 2, 3])
    with pytest.raises(TypeError, match="counts the attended keys"):
        softgen.compile("lssa")(x, n_attended=[1, 2])
    with pytest.raises(TypeError, match="no call argument"):
        softgen.compile("softmax")(x, n_attended=[1, 2])
    for op, params, what in (("lssa", {"head_dim": 0}, "head_dim"), ("lssa", {"head_dim": 2.5}, "head_dim"),
                             ("reweight", {"p": 0}, "p must"), ("reweight", {"p": -3}, "p must"),
                             ("lssar", {"offset_free_rows": -1}, "offset_free_rows"),
                             ("lssa", {"count_keys": 2}, "count_keys")):
        with pytest.raises(softgen.UsageError, match=what):
            softgen.compile(op, **params)


def test_export_documents_and_checks_row_parameters(tmp_path):
    import ctypes
    import json
    k = softgen.compile("lssa", count_keys=0)
    paths = k.export(tmp_path)
    header = paths["header"].read_text()
    assert "const float *n_attended" in header and "N_i" in header
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["row_params"] == {"n_attended": manifest["row_params"]["n_attended"]}
    assert manifest["abi"].endswith("const float *n_attended)")
    fn = getattr(ctypes.CDLL(str(paths["library"])), k.name)
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_size_t] * 4 + [ctypes.c_void_p]
    x = np.zeros((2, 4), np.float32)
    assert fn(x.ctypes.data, x.ctypes.data, 2, 4, 4, 4, None) == 1   # NULL row parameter


UNIFORM_N = (5, 12, 49, 300, 4099)


def _uniform_cases(op):
    """(name, x) pairs of exactly uniform rows of several lengths: 4 query rows, so row 3 has
    O = 1. reweight gets fl(1/N) and lssa's f32 output (not bitwise 1/N); lssar equal scores."""
    for n in UNIFORM_N:
        if op == "lssar":
            yield f"c=0.25 n={n}", np.full((4, n), 0.25, np.float32)
        else:
            yield f"1/n n={n}", np.full((4, n), 1 / n, np.float32)
            yield f"lssa n={n}", softgen.lssa(np.full((4, n), -0.4, np.float32), 64)


def tvm_off_host_on(keep: str) -> list:
    """TARGET_BACKEND with TVM off the host's ISA (scalar, neon) on ``keep`` only, the other with
    -m slow: the uniform-row tests take turns (the TensorIR is the same at every vector width),
    so each runs TVM on one of them and both ops run on both."""
    return [pytest.param(*p.values, id=p.id, marks=[*p.marks, *([pytest.mark.slow] if p.values[0] == "tvm"
                                                                and p.values[1] in ("scalar", "neon") and p.values[1] != keep
                                                                else [])]) for p in TARGET_BACKEND]


@pytest.mark.parametrize("op", ["reweight", "lssar"])
@pytest.mark.parametrize("backend,target", tvm_off_host_on("scalar"))
def test_exactly_uniform_rows_give_zeros(op, target, backend):
    """Spec 5.2: an exactly uniform row at query rows >= offset_free_rows gives zeros. N a - 1
    rounds to +-(a few ulp) in f32; without R's rounding bound (R_BOUND) (R / max R)^p turned
    that noise into a uniform row. The oracle accepts any value where max R is within its error,
    so the zeros are asserted exactly. The causally masked repro of issue #11 is included."""
    k = kernel(op, "direct", target, backend)
    cases = list(_uniform_cases(op))
    causal = np.where(np.tril(np.ones((12, 12), bool)), 0.25, -np.inf).astype(np.float32)
    if op == "lssar":
        cases.append(("causal c=0.25", causal))
    else:
        cases.append(("causal lssa", softgen.lssa(causal, 64)))
    xs = [x for _, x in cases]
    for (name, x), y in zip(cases, run_many(k, xs)):
        assert np.all(y[3:] == 0), f"{k.name} {name}: uniform rows must give zeros, got {y[3:, :4]}"
        live = x[:3] > 0 if op == "reweight" else x[:3] > -np.inf
        assert np.allclose(y[:3][live], np.broadcast_to(1 / live.sum(1, keepdims=True), live.shape)[live],
                           rtol=1e-5), name
        check(k, x, y, name)


@pytest.mark.parametrize("backend,target", TARGET_BACKEND)
def test_tiny_weights_in_offset_free_rows(target, backend):
    """An offset-free row (O = 0) of weights whose max R is below 1 / FLT_MAX: 1 / max R
    overflowed to inf and inf * 0 made the row NaN (subnormal weights, e.g. [[1e-45]])."""
    k = kernel("reweight", "direct", target, backend)
    x = np.zeros((3, 19), np.float32)
    x[0, 0] = 1e-45
    x[1, [2, 5, 18]] = 1e-40, 5e-41, 2e-39
    x[2, ::3] = np.float32(1e-20) * np.arange(1, 8, dtype=np.float32)
    y = run(k, x)
    assert not np.isnan(y).any() and np.allclose(y.sum(-1), 1, atol=1e-6), y
    check(k, x, y, "tiny weights")


def _nearly_uniform(op, n, delta):
    """Row 3 (O = 1) uniform except keys 1 and n - 2, larger by delta and 0.9 delta (in R)."""
    if op == "lssar":
        c = np.full((4, n), 0.25, np.float32)
        lam = np.log(64) * np.log(n)
        z = lam * 0.25
        dr = lam / (1 + np.exp(-z)) / np.logaddexp(0, z)   # d R / d c = d log softplus(lam c) / d c
        c[3, 1] += delta / dr
        c[3, n - 2] += 0.9 * delta / dr
        return c
    a = np.full((4, n), 1.0)
    a[3, 1] += delta
    a[3, n - 2] += 0.9 * delta
    return (a / a.sum(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("op", ["reweight", "lssar"])
@pytest.mark.parametrize("backend,target", tvm_off_host_on("neon"))
def test_nearly_uniform_rows_keep_their_peaks(op, target, backend):
    """Uniform except two keys slightly larger, with the reference's R well above the rounding
    bound (8x to 30x R_BOUND): the kernel must give the reference's non-zero answer, the two
    keys with the ratio (R2 / R1)^p, as it did before the bound existed (the other keys' R is
    rounding noise: (noise / max R)^p, at most ~1e-7 each here)."""
    k = kernel(op, "direct", target, backend, p=3)
    cases = [(n, delta) for n in (12, 300, 4099) for delta in (8 * ref.R_BOUND, 1e-3)]
    xs = [_nearly_uniform(op, n, d) for n, d in cases]
    for (n, delta), x, y in zip(cases, xs, run_many(k, xs)):
        what = f"n={n} delta={delta:.2g}"
        r = ref.reweight_of(ref.lssa(x, 64), np.full(4, float(n)), ref.query_offsets(x.shape), 3) \
            if op == "lssar" else ref.reweight(x, p=3)
        assert np.count_nonzero(r[3]) == 2 and r[3, 1] > 0 and r[3, n - 2] > 0, what
        check(k, x, y, what)
        peaks = y[3, [1, n - 2]]
        assert peaks.sum() > 0.999 and peaks[1] / peaks[0] == pytest.approx(r[3, n - 2] / r[3, 1], rel=0.05), \
            f"{k.name} {what}: {peaks} vs {r[3, [1, n - 2]]}"


def _underflow_rows(rng, n):
    """Rows whose every f32 softplus(s x) flushes to 0 (all s x < -104; for scale 2, x < -52)."""
    rows = [rng.uniform(-500, -200, n), rng.uniform(-1e6, -1e6 + 30, n), np.full(n, -120.0),
            rng.uniform(-300, -290, n)]
    masked = rng.uniform(-400, -380, n)
    masked[::2] = -np.inf
    rows.append(masked)
    return np.stack(rows).astype(np.float32)


# TVM on scalar and neon: one algorithm each (both on the host's target; both with -m slow)
UNDERFLOW = [pytest.param(*p.values, alg, id=f"{p.id}-{alg}", marks=[*p.marks, *(
    [pytest.mark.slow] if p.values[0] == "tvm" and p.values[1] in ("scalar", "neon")
    and alg != ("direct" if p.values[1] == "scalar" else "direct-reload") else [])])
    for p in TARGET_BACKEND for alg in ("direct", "direct-reload")]


@pytest.mark.parametrize("backend,target,alg", UNDERFLOW)
def test_softplus_l1_rows_that_underflow_f32(alg, target, backend, rng):
    """Every softplus term flushes to 0 in f32: the sum is 0 and the row was 0/0 = NaN, where the
    reference gives softmax(s x) (softplus(z) ~ e^z). A guard recomputes such rows as softmax; in
    place too (direct-reload stores into x before the guard). Mixed with ordinary rows."""
    for scale in (1.0, 2.0):
        k = kernel("softplus_l1", alg, target, backend, scale=scale)
        xs = [np.array([[-383.0]], np.float32)]
        for n in (2, k.target.lanes + 3, 1000):
            x = _underflow_rows(rng, n) / np.float32(scale)
            xs.append(np.concatenate([x, rng.standard_normal((2, n)).astype(np.float32)]))
        for x, y in zip(xs, run_many(k, xs)):
            check(k, x, y, f"scale={scale} n={x.shape[-1]}")
            assert np.all(np.isfinite(y)) and np.allclose(y.sum(-1), 1, atol=1e-5)
        if k.runnable:
            x = xs[-1].copy()
            assert np.array_equal(k(x, out=x), k(xs[-1])), "in place"


@pytest.mark.parametrize("backend", BACKENDS)
def test_softplus_l1_single_underflowing_element(backend):
    """Issue #11's repro: n = 1, x = -383 gives [1.0] (it was NaN)."""
    k = kernel("softplus_l1", "auto", "host", backend)
    assert run(k, np.array([[-383.0]], np.float32))[0, 0] == 1.0


def test_tvm_power_bases_are_opaque_to_tvms_simplifier():
    """lssar's and reweight's (R / max R)^15 by squaring: the base is read back from a local buffer
    (``backends/tvm.py`` ``Emit.opaque``), else TVM's arith analyzer simplifies the expanded tree
    (15 copies of the base) at every let: lssar's TVM rows took 37 s to build, now ~2 s. The TIR
    only: nothing is built."""
    for op, target in (("lssar", "avx512"), ("reweight", "neon")):
        src = softgen.compile(op, algorithm="direct", target=target, backend="tvm").source
        square_of = {b: a for a, b in re.findall(r"(t\d+): T\.let\[T\.float32\] = \((t\d+) \* \2\)", src)}
        opaque = re.findall(r"\b(t\d+): T\.let\[T\.float32\] = opq\d+\[(?:l|0)\]", src)
        assert opaque and len(opaque) % 5 == 0, f"{op}: {opaque}"  # per sweep: 4 vector slots, the tail
        assert all(square_of.get(square_of.get(b)) for b in opaque), f"{op}: not the power's bases"
