"""Top-k softmax (docs/ops.md §9) beyond the shared kernel matrix: k swept against row lengths (k < n,
k = n - 1, k = n, k > n, k not dividing the lanes), ties, -inf / NaN / +inf rows, both
normalisations, the dense form against a scatter of the sparse form, every target and backend
(avx512 through SIMDe, neon through qemu: one emulator run per kernel), layouts, the sparse C ABI
and its export, validation."""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKENDS, TARGETS, check, kernel, run, run_many

import softgen
from softgen import reference as ref
from softgen.ops import get_op

OP = get_op("topk_softmax")


HOST = softgen.host_target()
TVM_OFF_HOST = ("scalar", "neon")


def ks_for(backend: str, target: str, full: bool = True) -> tuple[int, ...]:
    """k swept: 1, 2, odd k that divide no lane count, 8. Fewer where kernels take seconds to
    build (TVM, SIMDe, qemu) or unless ``full`` (k = 2 and 5 take the paths of 3, renormalized
    or not); k = 2 runs on every target in the shared matrix. TVM off the host's ISA: k = 3
    unless ``full`` (the TensorIR of every k runs on the host; the same at every vector width)."""
    native_c = backend == "c" and softgen.compile("softmax", target=target).runnable
    if backend == "tvm" and target in TVM_OFF_HOST and not full:
        return (3,)
    return (1, 2, 3, 5, 8) if native_c and full else (1, 3, 8)


def sweep_params():
    """(backend, target, renormalize, full); with -m slow: renormalize=0 in full, TVM off the
    host in full, TVM on the x86 target that is not the host's (covered by the host's)."""
    out = []
    for b in BACKENDS:
        for t in TARGETS:
            off = b == "tvm" and t in TVM_OFF_HOST
            other_x86 = b == "tvm" and t in ("avx2", "avx512") and t != HOST
            sets = [(1, not off, False), (0, False, False), (0, True, True)] + ([(1, True, True)] if off else [])
            out += [pytest.param(b, t, renorm, full, id=f"{b}-{t}-{renorm}-{full}",
                                 marks=[pytest.mark.slow] if slow or other_x86 else [])
                    for renorm, full, slow in sets]
    return out


def special_rows(n: int, rng) -> dict[str, np.ndarray]:
    """Rows that exercise selection: ties, monotone rows (the early-out always or never taken),
    -inf entries fewer or more than k, the edge-case contract of docs/ops.md §0."""
    r = {"random": (rng.standard_normal(n) * 4).astype(np.float32),
         "ties": rng.integers(-2, 3, n).astype(np.float32),
         "constant": np.full(n, 1.5, np.float32),
         "increasing": np.arange(n, dtype=np.float32),
         "decreasing": -np.arange(n, dtype=np.float32),
         "all -inf": np.full(n, -np.inf, np.float32),
         "1e30 spread": rng.uniform(-1e30, 1e30, n).astype(np.float32)}
    some = rng.integers(-3, 3, n).astype(np.float32)
    some[::3] = -np.inf
    r["every 3rd -inf"] = some
    one = np.full(n, -np.inf, np.float32)
    one[n // 2] = 2.0
    r["one finite"] = one
    two = np.full(n, -np.inf, np.float32)
    two[[n - 1, 0]] = (-1.0, 5.0)
    r["two finite"] = two
    for pos in sorted({0, n - 1}):
        for name, val in (("nan", np.nan), ("+inf", np.inf)):
            row = r["random"].copy()
            row[pos] = val
            r[f"{name}@{pos}"] = row
    mix = np.full(n, -np.inf, np.float32)
    mix[n // 2] = np.nan
    r["nan among -inf"] = mix
    if n > 1:
        pinf = r["ties"].copy()
        pinf[[0, n - 1]] = np.inf
        r["two +inf"] = pinf
    return r


def lengths(k: softgen.Kernel, ks) -> list[int]:
    """Around every k and the vector width; across a reduction block (a sweep that also sums is
    blocked) for the largest k only: emulated, those rows are the slow part."""
    lanes, step = k.target.lanes, k.schedule.step(k.target.lanes)
    around_k = {n for kk in ks for n in (kk - 1, kk, kk + 1)}
    block = {k.schedule.block + 3} if k.params["k"] == max(ks) else set()
    return sorted({n for n in set(range(1, 2 * lanes + 3)) | around_k | block
                   | {step - 1, step + 1, 3 * step + lanes + 3} if n > 0})


def scatter(x: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The dense row a sparse result stands for (rows with NaN weights are all NaN)."""
    y = np.zeros(x.shape, np.float32)
    np.put_along_axis(y, idx, w, axis=-1)
    y[np.isnan(w).any(axis=-1)] = np.nan
    return y


def check_sparse(k: softgen.Kernel, x: np.ndarray, idx: np.ndarray, w: np.ndarray, what: str,
                 names=None) -> None:
    """Indices exactly those of a stable descending sort (ties: lower index; -inf, then NaN
    last); weights within the dense op's tolerance, NaN where the reference is NaN."""
    kk, renorm = k.params["k"], k.params["renormalize"]
    ri, rw = ref.topk_softmax_sparse(x, kk, bool(renorm))
    m = min(kk, x.shape[-1])
    assert idx.shape == w.shape == x.shape[:-1] + (m,), what
    assert idx.dtype == np.int64 and w.dtype == np.float32
    bad = np.any(idx != ri, axis=-1)
    if bad.any():
        i = int(np.argmax(bad))
        raise AssertionError(f"{k.name} {what} row {i} {names[i] if names else ''}: indices "
                             f"{idx[i]} != {ri[i]}")
    assert np.array_equal(np.isnan(w), np.isnan(rw)), f"{k.name} {what}: NaN pattern of the weights"
    dense_ref = ref.topk_softmax(x, kk, bool(renorm))
    tol = np.take_along_axis(OP.tolerance(x, dense_ref, k.params), ri, axis=-1)
    ok = ~np.isnan(rw)
    err = np.abs(w.astype(np.float64) - rw)
    assert np.all(err[ok] <= tol[ok]), f"{k.name} {what}: max err/tol {np.max(err[ok] / tol[ok]):.3g}"


@pytest.mark.parametrize("backend,target,renormalize,full", sweep_params())
def test_k_sweep_dense_and_sparse(target, backend, renormalize, full, rng):
    """Every k against lengths around it and the vector width: dense against the reference
    (rows sum to 1 when renormalize=1), sparse indices exactly, dense == scatter(sparse)."""
    ks = ks_for(backend, target, full)
    for kk in ks:
        kd = kernel("topk_softmax", "auto", target, backend, k=kk, renormalize=renormalize)
        ksp = kernel("topk_softmax", "auto", target, backend, k=kk, renormalize=renormalize, sparse=1)
        cases = [special_rows(n, rng) for n in lengths(kd, ks)]
        xs = [np.stack(list(c.values())) for c in cases]
        ys, sps = run_many(kd, xs), run_many(ksp, xs)
        for c, x, y, (idx, w) in zip(cases, xs, ys, sps):
            what, names = f"k={kk} n={x.shape[-1]}", list(c)
            check(kd, x, y, what, row_names=names)
            check_sparse(ksp, x, idx, w, what, names)
            assert np.array_equal(y, scatter(x, idx, w), equal_nan=True), f"{kd.name} {what}: dense != scatter(sparse)"
            good = ~np.isnan(y).any(axis=-1)
            assert np.all(np.count_nonzero(y[good] != 0, axis=-1) <= kk)
            if renormalize:
                assert np.all(np.abs(y[good].astype(np.float64).sum(axis=-1) - 1) <= 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ["three-pass-recompute", "two-pass", "online"])
def test_switch_gate_every_softmax_algorithm(algorithm, backend, rng):
    """renormalize=0 keeps the full-softmax probabilities: its normaliser is the softmax motif,
    so every softmax algorithm applies (two-pass: rows beyond |x| ~ 2^17 take the fallback)."""
    kd = kernel("topk_softmax", algorithm, "host", backend, k=3, renormalize=0)
    ksp = kernel("topk_softmax", algorithm, "host", backend, k=3, renormalize=0, sparse=1)
    for n in (1, 3, 4, 37, 1000):
        rows = special_rows(n, rng)
        rows["beyond extexp domain"] = (3e5 + rng.uniform(-50, 50, n)).astype(np.float32)
        x = np.stack(list(rows.values()))
        y = run(kd, x)
        check(kd, x, y, f"n={n}", row_names=list(rows))
        idx, w = run(ksp, x)
        check_sparse(ksp, x, idx, w, f"n={n}", list(rows))
        assert np.array_equal(y, scatter(x, idx, w), equal_nan=True)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    full = ref.softmax(x)
    y = run(kd, x)
    assert np.all(y.sum(axis=-1) < 1)      # the full-softmax probabilities of the top 3
    top = np.take_along_axis(full, ref.topk_indices(x, 3), axis=-1)
    assert np.allclose(np.sort(y, axis=-1)[:, -3:], np.sort(top, axis=-1), rtol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_lower_index_wins(backend):
    """Equal values across lanes, accumulators and blocks: the lower index is selected and comes
    first; a kernel keeping the later one (>= in the network) or merging lanes out of order
    would pick other indices."""
    ks = kernel("topk_softmax", "auto", "host", backend, k=4, sparse=1)
    kd = kernel("topk_softmax", "auto", "host", backend, k=4)
    n = 3 * ks.schedule.block + 17
    x = np.zeros((3, n), np.float32)
    x[0, [5, n - 1, 900, 2 * ks.schedule.block + 1]] = 1.0        # four equal maxima
    x[1, [n - 2, n - 1]] = 2.0                                       # 2 maxima, then 0s tie
    x[2, :] = -1.0                                                   # all equal
    idx, w = run(ks, x)
    assert idx.tolist() == [[5, 900, 2 * ks.schedule.block + 1, n - 1], [n - 2, n - 1, 0, 1], [0, 1, 2, 3]]
    assert np.allclose(w[0], 0.25) and np.allclose(w[2], 0.25)
    y = run(kd, x)
    assert np.array_equal(np.flatnonzero(y[2]), [0, 1, 2, 3])
    assert np.array_equal(np.flatnonzero(y[1]), [0, 1, n - 2, n - 1])


def test_check_rejects_a_wrong_selection(rng):
    """The comparisons above can fail: a later index on a tie, or a permuted order, is caught."""
    k = kernel("topk_softmax", "auto", "host", "c", k=2, sparse=1)
    x = np.array([[1.0, 3.0, 3.0, 0.0]], np.float32)
    idx, w = run(k, x)
    check_sparse(k, x, idx, w, "as computed")
    with pytest.raises(AssertionError, match="indices"):
        check_sparse(k, x, np.array([[2, 1]]), w, "tie taken by the later index")
    with pytest.raises(AssertionError, match="err/tol"):
        check_sparse(k, x, idx, w * np.float32(1 + 1e-4), "perturbed")
    kd = kernel("topk_softmax", "auto", "host", "c", k=2)
    y = run(kd, x)
    with pytest.raises(AssertionError):
        check(kd, x, np.roll(y, 1, axis=-1), "rolled")


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend, rng):
    """Strided, byte-misaligned, non-contiguous and 3-d inputs; in place (dense); sparse outputs
    are fresh arrays."""
    kd = kernel("topk_softmax", "auto", "host", backend, k=3)
    ks = kernel("topk_softmax", "auto", "host", backend, k=3, sparse=1)
    n = 2 * kd.target.lanes + 3
    wide = rng.integers(-4, 5, (5, n + 7)).astype(np.float32)
    views = {"strided": wide[:, 2:2 + n], "non-contiguous": wide[:, ::2],
             "3-d": wide[:4, :n].reshape(2, 2, n), "3-d transposed": wide[:4, :n].reshape(2, 2, n).transpose(1, 0, 2)}
    buf = np.zeros(4 * n + 1, np.uint8)[1:].view(np.float32).reshape(1, n)
    buf[:] = wide[:1, 2:2 + n]
    views["byte-misaligned"] = buf
    for what, x in views.items():
        y = run(kd, x)
        check(kd, x, y, what)
        idx, w = run(ks, x)
        assert idx.shape == x.shape[:-1] + (3,)
        assert np.array_equal(y, scatter(x, idx, w)), what
    x = wide[:, 2:2 + n].copy()
    expect = run(kd, x.copy())
    assert run(kd, x, out=x) is x and np.array_equal(x, expect)
    with pytest.raises(TypeError, match="no out="):
        run(ks, x, out=np.empty((5, 3), np.float32))


def test_large_k_and_empty():
    k = kernel("topk_softmax", "auto", "host", "c", k=64, sparse=1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 1000)).astype(np.float32)
    idx, w = run(k, x)
    check_sparse(k, x, idx, w, "k=64")
    assert np.allclose(w.sum(axis=-1), 1, atol=1e-5)
    for shape, m in (((0,), 0), ((3, 0), 0), ((0, 5), 5), ((2, 0, 4), 4)):
        idx, w = run(k, np.zeros(shape, np.float32))
        assert idx.shape == w.shape == shape[:-1] + (m,)


def test_validation():
    for bad in (0, -1, 2 ** 24 + 1, 2.5, "2", float("nan")):
        with pytest.raises(softgen.UsageError, match="k must be"):
            softgen.compile("topk_softmax", k=bad)
    for name in ("renormalize", "sparse"):
        with pytest.raises(softgen.UsageError, match=name):
            softgen.compile("topk_softmax", **{name: 2})
    assert softgen.compile("topk_softmax", k=2.0, sparse=True).params == {"k": 2, "renormalize": 1, "sparse": 1}
    kd = kernel("topk_softmax", "auto", "host", "c", k=2)
    ks = kernel("topk_softmax", "auto", "host", "c", k=2, sparse=1)
    long = np.zeros((1, 2 ** 24 + 1), np.float32)
    for k in (kd, ks):
        with pytest.raises(ValueError, match="2\\^24|16777216"):
            k(long)
    assert softgen.compile("topk_softmax", algorithm="direct-reload").algorithm == "direct-reload"
    with pytest.raises(softgen.UsageError, match="does not apply"):
        softgen.compile("topk_softmax", algorithm="direct-reload", sparse=1)


def test_functional_api(rng):
    x = rng.standard_normal((2, 3, 50)).astype(np.float32)
    y = softgen.topk_softmax(x, 4)
    assert y.shape == x.shape and np.allclose(y, ref.topk_softmax(x, 4), rtol=2e-6, atol=1e-30)
    idx, w = softgen.topk_softmax(x, 4, sparse=True)
    assert idx.shape == (2, 3, 4) and np.array_equal(idx, ref.topk_indices(x, 4))
    idx0, w0 = softgen.topk_softmax(x, 4, renormalize=False, sparse=True)
    assert np.array_equal(idx0, idx) and np.all(w0.sum(axis=-1) < 1)


def test_export_sparse_abi(tmp_path, rng):
    """The exported library: header and manifest document the sparse ABI; ldo > m leaves the
    padding alone; the error codes."""
    k = softgen.compile("topk_softmax", k=3, sparse=1)
    paths = k.export(tmp_path)
    header, manifest = paths["header"].read_text(), json.loads(paths["manifest"].read_text())
    sig = f"int {k.name}(const float *x, int64_t *indices, float *weights, size_t rows, size_t n, size_t ldx, size_t ldo)"
    assert sig in header and manifest["abi"] == sig
    assert "ETOOLONG 4" in header and set(manifest["outputs"]) == {"indices", "weights"}
    assert manifest["accuracy"]["rows_with_wrong_indices"] == 0
    assert manifest["traffic"]["summary"] == "1R + 0W + 6 writes/row"
    fn = getattr(ctypes.CDLL(str(paths["library"])), k.name)
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t] * 4
    x = rng.standard_normal((4, 10)).astype(np.float32)
    idx = np.full((4, 5), -7, np.int64)
    w = np.full((4, 5), 9.0, np.float32)
    assert fn(x.ctypes.data, idx.ctypes.data, w.ctypes.data, 4, 10, 10, 5) == 0
    ri, rw = ref.topk_softmax_sparse(x, 3)
    assert np.array_equal(idx[:, :3], ri) and np.allclose(w[:, :3], rw, rtol=2e-6)
    assert np.all(idx[:, 3:] == -7) and np.all(w[:, 3:] == 9.0)
    p = (x.ctypes.data, idx.ctypes.data, w.ctypes.data)
    assert fn(*p, 4, 10, 10, 2) == 2                 # ldo < min(k, n)
    assert fn(*p, 4, 2, 10, 2) == 0                  # n = 2 < k: two per row
    assert fn(*p, 4, 10, 9, 5) == 2                  # ldx < n
    assert fn(None, idx.ctypes.data, w.ctypes.data, 4, 10, 10, 5) == 1
    assert fn(*p, 1, 2 ** 24 + 1, 2 ** 24 + 1, 5) == 4   # checked before any access


def test_cli():
    def sg(*args):
        return subprocess.run([sys.executable, "-m", "softgen", *args], capture_output=True, text=True)
    r = sg("explain", "--op", "topk_softmax", "-p", "k=3", "-p", "sparse=1")
    assert r.returncode == 0 and "reduce_topk" in r.stdout and "3 selected entries" in r.stdout
    r = sg("emit", "--op", "topk_softmax", "-p", "k=3", "--target", "neon")
    assert r.returncode == 0 and "sg_topk_merge" in r.stdout and "op:        topk_softmax(k=3" in r.stdout
    r = sg("build", "--op", "topk_softmax", "-p", "k=0")
    assert r.returncode == 2 and "k must be" in r.stderr
