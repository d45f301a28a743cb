"""Sinkhorn (docs/ops.md §7), a matrix program: every target and backend against the float64 reference
(iteration by iteration: the same n_iter), its properties (1 iteration = softmax, marginals,
convergence), the NaN/inf rules of the reference, layouts and bad input."""
import numpy as np
import pytest
from conftest import BACKENDS, TARGETS, check, kernel, run_many

import softgen
from softgen import reference as ref

SHAPES = [(1, 1), (1, 9), (9, 1), (5, 7), (16, 16), (17, 33), (3, 40, 24), (2, 2, 8, 67)]


HOST = softgen.host_target()


def iterations(values, every: int) -> list:
    """(backend, target, *value) params. n_iter is unrolled: 1 (no column step), 2 (even) and 3
    (odd, a column step first) are its code paths and the first `every` values run on every
    target; the rest (more of the same paths, other eps: a constant) on the host's target, on
    the others with -m slow. TVM (its builds take seconds; the TensorIR is the same at every
    vector width; C runs the rest): the first `every` values on the host's target, value
    `every` - 1 on scalar and neon, none on the other x86 target; the rest with -m slow."""
    def slow(b, t, i):
        if b == "tvm" and t != HOST:
            return t in ("avx2", "avx512") or i != every - 1
        return i >= every and (t != HOST or b == "tvm")
    return [pytest.param(b, t, *(v if isinstance(v, tuple) else (v,)), id=f"{b}-{t}-{v}",
                         marks=[pytest.mark.slow] if slow(b, t, i) else [])
            for b in BACKENDS for t in TARGETS for i, v in enumerate(values)]


@pytest.mark.parametrize("backend,target,n_iter,eps", iterations([(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5), (7, 2.5)], 3))
def test_matches_reference(target, backend, n_iter, eps, rng):
    k = kernel("sinkhorn", "direct", target, backend, n_iter=n_iter, eps=eps)
    xs = [(rng.standard_normal(s) * 3).astype(np.float32) for s in SHAPES]
    xs.append(rng.uniform(-1000, 1000, (6, 50)).astype(np.float32))
    for x, y in zip(xs, run_many(k, xs)):
        check(k, x, y, f"shape {x.shape}")


def test_one_iteration_is_softmax_times_nk_over_nq(rng):
    x = rng.standard_normal((3, 24, 40)).astype(np.float32)
    y = softgen.compile("sinkhorn", n_iter=1, eps=0.5)(x)
    s = softgen.compile("softmax", scale=2.0)(x)
    np.testing.assert_allclose(y, s * 40 / 24, rtol=1e-5, atol=1e-9)


def test_marginals_and_convergence(rng):
    """Row sums are n_k/n_q after a row step, column sums 1 after a column step; on a square
    matrix the column sums after a row step approach 1 as iterations grow."""
    x = (rng.standard_normal((2, 12, 20)) * 2).astype(np.float32)
    odd = softgen.compile("sinkhorn", n_iter=3)(x).astype(np.float64)
    even = softgen.compile("sinkhorn", n_iter=4)(x).astype(np.float64)
    np.testing.assert_allclose(odd.sum(-1), 20 / 12, rtol=1e-5)
    np.testing.assert_allclose(even.sum(-2), 1.0, rtol=1e-5)
    sq = rng.standard_normal((8, 8)).astype(np.float32)
    errs = [np.abs(softgen.compile("sinkhorn", n_iter=it)(sq).astype(np.float64).sum(0) - 1).max()
            for it in (1, 3, 9, 21, 51)]
    assert all(a > b for a, b in zip(errs[:3], errs[1:4])), errs
    assert errs[-1] < 2e-6, errs    # float64 reaches 1e-8 at 21 iterations; f32 rounding remains


def test_nan_inf_and_masks_follow_the_reference(rng):
    """A NaN or +inf poisons its row at the first row step, then every column; -inf entries
    give exact zeros; an all -inf column or row is padding (test_padding_...)."""
    base = rng.standard_normal((6, 10)).astype(np.float32)
    cases = {}
    for name, (i, j, v) in {"nan": (2, 3, np.nan), "+inf": (1, 0, np.inf), "-inf": (4, 7, -np.inf)}.items():
        x = base.copy()
        x[i, j] = v
        cases[name] = x
    x = base.copy()
    x[:, 9] = -np.inf
    cases["masked column"] = x
    x = base.copy()
    x[:, 5:] = -np.inf
    x[:3, 5:] = 0.5
    cases["padding"] = x
    x = base.copy()
    x[3] = -np.inf
    cases["masked row"] = x
    for n_iter in (1, 2, 3):
        k = kernel("sinkhorn", "direct", "host", n_iter=n_iter)
        for name, x in cases.items():
            check(k, x, k(x), f"{name}, n_iter={n_iter}")
    y = kernel("sinkhorn", "direct", "host", n_iter=3)(cases["-inf"])
    assert y[4, 7] == 0 and np.isfinite(y).all()


def _padded(rng, c, rows, cols):
    """c embedded in an all -inf matrix at the given row and column indices (padding)."""
    x = np.full(c.shape[:-2] + (c.shape[-2] + len(rows), c.shape[-1] + len(cols)), -np.inf, np.float32)
    keep_r = np.setdiff1d(np.arange(x.shape[-2]), rows)
    keep_c = np.setdiff1d(np.arange(x.shape[-1]), cols)
    x[..., keep_r[:, None], keep_c] = c
    return x, keep_r, keep_c


@pytest.mark.parametrize("backend,target,n_iter", iterations([1, 2, 3, 4, 5], 3))
def test_padding_equals_the_unpadded_submatrix(target, backend, n_iter, rng):
    """Key (and query) padding: all -inf columns and rows are left out of the normalisation and
    come out exactly 0; the other entries equal the unpadded submatrix's result (n_k, n_q count
    what is not padded), whatever the padding. Before, one padded column made the whole output
    NaN from n_iter = 3 on and a padded row was NaN."""
    k = kernel("sinkhorn", "direct", target, backend, n_iter=n_iter)
    cases = []
    for shape, rows, cols in [((5, 7), [], [9, 7, 8]), ((6, 6), [0, 3], [2]), ((3, 20, 33), [20], [0, 5, 34]),
                              ((2, 1, 1), [0, 2], [1, 2, 3])]:
        c = (rng.standard_normal(shape) * 3).astype(np.float32)
        c[..., 0, -1] = -np.inf                                      # an ordinary mask stays 0
        cases.append((c,) + _padded(rng, c, rows, cols))
    xs = [x for _, x, _, _ in cases] + [c for c, _, _, _ in cases] + [np.full((2, 3, 4), -np.inf, np.float32)]
    ys = run_many(k, xs)
    for (c, x, kr, kc), y, yc in zip(cases, ys, ys[len(cases):]):
        what = f"{c.shape} padded to {x.shape}"
        sub = y[..., kr[:, None], kc]
        check(k, c, sub, what)                                        # the submatrix's reference
        np.testing.assert_allclose(sub, yc, rtol=1e-5, atol=1e-30, err_msg=what)   # sums' order
        pad = np.ones(x.shape, bool)
        pad[..., kr[:, None], kc] = False
        assert np.all(y[pad] == 0), what
        check(k, x, y, what)                                          # and the padded reference
    np.testing.assert_array_equal(ys[-1], np.zeros((2, 3, 4), np.float32))   # all padding: 0


def test_layouts_batches_and_in_place(rng):
    k = kernel("sinkhorn", "direct", "host", n_iter=3)
    big = (rng.standard_normal((2, 3, 11, 40)) * 2).astype(np.float32)
    want = k(np.ascontiguousarray(big[..., :35]))
    np.testing.assert_array_equal(k(big[..., :35]), want)        # rows strided by 40
    np.testing.assert_array_equal(k(big[:, :, :, :35][:, ::2]), want[:, ::2])
    t = np.ascontiguousarray(big[0, 0, :, :33].T)                   # a transposed view: copied
    np.testing.assert_array_equal(k(big[0, 0, :, :33].T), k(t))
    x = big[..., :35].copy()
    out = k(x, out=x)
    assert out is x
    np.testing.assert_array_equal(x, want)
    raw = np.empty(4 * 11 * 35 + 1, np.float32)[1:].reshape(4, 11, 35)   # unaligned
    raw[:] = want.reshape(6, 11, 35)[:4]
    np.testing.assert_array_equal(k(raw), k(want.reshape(6, 11, 35)[:4].copy()))


def test_sizes_and_bad_input():
    k = kernel("sinkhorn", "direct", "host", n_iter=3)
    np.testing.assert_array_equal(k(np.array([[3.0]], np.float32)), [[1.0]])
    assert k(np.zeros((0, 5), np.float32)).shape == (0, 5)
    assert k(np.zeros((2, 4, 0), np.float32)).shape == (2, 4, 0)
    with pytest.raises(ValueError, match="two axes"):
        k(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="float32"):
        k(np.zeros((2, 2)))
    for bad in ({"n_iter": 0}, {"n_iter": 1.5}, {"n_iter": 1000}, {"eps": 0.0}, {"eps": -1.0},
                {"eps": 1e-50}, {"eps": float("inf")}, {"p": 2}):
        with pytest.raises(softgen.UsageError):
            softgen.compile("sinkhorn", **bad)
    with pytest.raises(softgen.UsageError, match="direct"):
        softgen.compile("sinkhorn", algorithm="two-pass")


def test_export_header_and_error_codes(tmp_path, rng):
    import ctypes
    k = softgen.compile("sinkhorn", n_iter=2, name="sk2")
    paths = k.export(tmp_path)
    h = paths["header"].read_text()
    assert "size_t m);" in h and "SK2_EMATRIX 5" in h and "n_iter=2" in h
    fn = k._entry(False)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = np.empty_like(x)
    assert fn(x.ctypes.data, y.ctypes.data, 6, 5, 5, 5, 4) == 5       # 4 does not divide 6
    assert fn(x.ctypes.data, y.ctypes.data, 6, 5, 5, 5, 0) == 5
    assert fn(x.ctypes.data, None, 6, 5, 5, 5, 3) == 1
    assert fn(x.ctypes.data, y.ctypes.data, 6, 5, 5, 5, 3) == 0
    np.testing.assert_allclose(y.reshape(2, 3, 5), k(x.reshape(2, 3, 5)), rtol=0)
    sk2 = ctypes.CDLL(str(paths["library"])).sk2
    sk2.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_size_t] * 5
    z = np.empty_like(x)
    assert sk2(x.ctypes.data, z.ctypes.data, 6, 5, 5, 5, 6) == 0
    np.testing.assert_array_equal(z, k(x))


def test_functional_api(rng):
    x = rng.standard_normal((2, 9, 12)).astype(np.float32)
    np.testing.assert_allclose(softgen.sinkhorn(x, 5, 0.7), ref.sinkhorn(x, 5, 0.7), rtol=1e-4)
