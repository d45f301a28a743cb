"""SOFT (docs/ops.md §6): the Gaussian kernel and the Newton-Schulz pseudo-inverse, matrix programs with
contractions, on every target and backend against the float64 references with the ops' derived
tolerances (softgen/ops/soft.py), their properties, layouts, the two-input ABI and bad input."""
import ctypes
import json

import numpy as np
import pytest
from conftest import BACKENDS, TARGETS, kernel, run_many

import softgen
from softgen import reference as ref
from softgen.ops import get_op

DIMS = (1, 3, 7, 17, 64, 65)
# (n, m, d): every value of DIMS in every position, tile and vector edges included
GAUSS_SHAPES = [(n, DIMS[(i + 2) % 6], DIMS[(i + 4) % 6]) for i, n in enumerate(DIMS)] + \
    [(DIMS[(i + 3) % 6], DIMS[(i + 1) % 6], d) for i, d in enumerate(DIMS)] + [(130, 70, 5), (2, 2, 300)]


def run_inputs(k, xs: list[tuple]) -> list[np.ndarray]:
    """k on every tuple of inputs: natively, or emulated in one emulator process."""
    from conftest import _can_emulate
    if k.runnable:
        return [k(*x) for x in xs]
    _can_emulate(k)
    return k.run_emulated_many(xs)


def check_gauss(k, a, b, s, what=""):
    r = ref.gaussian_kernel(a, b, k.params["head_dim"])
    tol = get_op("gaussian_kernel").tolerance((a, b), r, k.params)
    assert s.shape == r.shape and s.dtype == np.float32, what
    err = np.abs(s.astype(np.float64) - r)
    bad = ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{k.name} {what}: {bad.sum()} entries out of tolerance; first at {i}: "
                             f"s={s[i]!r} ref={r[i]!r} err={err[i]:.3g} tol={tol[i]:.3g}")


def _points(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
def test_gaussian_matches_reference(target, backend, rng):
    k = kernel("gaussian_kernel", "direct", target, backend, head_dim=64)
    xs = [(_points(rng, (n, d)), _points(rng, (m, d))) for n, m, d in GAUSS_SHAPES]
    xs += [(_points(rng, (2, 3, 9, 8), 0.5), _points(rng, (2, 3, 11, 8), 0.5)),   # batches
           (_points(rng, (1, 40, 64), 0.2), _points(rng, (1, 64, 64), 0.2))]
    for (a, b), s in zip(xs, run_inputs(k, xs)):
        check_gauss(k, a, b, s, f"a {a.shape} b {b.shape}")


@pytest.mark.parametrize("head_dim", [1, 16, 128])
def test_gaussian_head_dims_and_ranges(head_dim, rng):
    """head_dim is only the scale 1/(2 sqrt(d)); far-apart points underflow to 0 (never negative),
    near ones stay in (0, 1]."""
    k = kernel("gaussian_kernel", "direct", "host", head_dim=head_dim)
    for scale in (0.01, 1.0, 30.0):
        a, b = _points(rng, (33, 16), scale), _points(rng, (20, 16), scale)
        s = k(a, b)
        check_gauss(k, a, b, s, f"scale {scale}")
        assert np.all(s >= 0) and np.all(s <= 1)
        if scale <= 1:
            assert np.all(s > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_properties(backend, rng):
    """Identical points give 1 (within the rounding of |a|^2 + |a|^2 - 2 a.a), a with itself is
    symmetric, every entry lies in (0, 1]."""
    k = kernel("gaussian_kernel", "direct", "host", backend, head_dim=64)
    a = _points(rng, (3, 70, 64))
    s = k(a, a)
    check_gauss(k, a, a, s)
    diag = np.diagonal(s, axis1=-2, axis2=-1)
    assert np.all(diag <= 1) and np.all(diag >= 1 - 1e-5), diag.min()
    np.testing.assert_array_equal(s, np.swapaxes(s, -1, -2))
    assert np.all((s > 0) & (s <= 1))
    z = np.zeros((5, 64), np.float32)
    np.testing.assert_array_equal(k(z, z), np.ones((5, 5), np.float32))
    one = np.ones((4, 64), np.float32)           # |a|^2 = 64 exactly: the clamp gives exact 1
    np.testing.assert_array_equal(k(one, one[:2]), np.ones((4, 2), np.float32))


def test_gaussian_layouts_and_out(rng):
    """Strided rows (views into padded buffers with NaN padding), copies for views one stride
    cannot address, out= (strided, or overlapping an input: computed aside), empty shapes."""
    k = kernel("gaussian_kernel", "direct", "host", head_dim=64)
    abuf = np.full((2, 19, 40), np.nan, np.float32)
    bbuf = np.full((2, 13, 33), np.nan, np.float32)
    a, b = abuf[:, :17, :30], bbuf[:, :11, :30]
    a[...] = _points(rng, a.shape)
    b[...] = _points(rng, b.shape)
    want = k(a.copy(), b.copy())
    np.testing.assert_array_equal(k(a, b), want)
    check_gauss(k, a, b, want)
    np.testing.assert_array_equal(k(a[:, ::2], b[:, ::3]), k(a[:, ::2].copy(), b[:, ::3].copy()))
    at = np.ascontiguousarray(np.swapaxes(a, -1, -2))
    np.testing.assert_array_equal(k(np.swapaxes(at, -1, -2), b), want)   # last axis strided: copied
    obuf = np.full((2, 17, 20), 7.0, np.float32)
    out = obuf[:, :, :11]
    assert k(a, b, out=out) is out
    np.testing.assert_array_equal(out, want)
    assert np.all(obuf[:, :, 11:] == 7.0)                                  # padding untouched
    big = np.zeros((2, 17, 30), np.float32)
    big[...] = a
    res = k(big, b, out=big[:, :, :11])                                   # out overlaps a
    np.testing.assert_array_equal(res, want)
    assert k(np.zeros((0, 5, 3), np.float32), np.zeros((0, 4, 3), np.float32)).shape == (0, 5, 4)
    assert k(np.zeros((5, 3), np.float32), np.zeros((0, 3), np.float32)).shape == (5, 0)
    np.testing.assert_array_equal(k(np.zeros((5, 0), np.float32), np.zeros((4, 0), np.float32)),
                                  np.ones((5, 4), np.float32))            # d = 0: distance 0


def _special_points(rng, d):
    """Rows: normal points, one with NaN, +inf, -inf, and finite ones whose |.|^2 overflows
    float32 (alone, or against themselves)."""
    x = _points(rng, (9, d))
    x[1, d // 2], x[2, 0], x[3, -1] = np.nan, np.inf, -np.inf
    x[4], x[5, 0], x[6, -1] = 1e20, 3e19, -2e30
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
def test_gaussian_nonfinite_and_overflowing_points(target, backend, rng):
    """A point with a non-finite coordinate gives NaN against every point (NaN used to be dropped
    by max(d2, 0): 1.0, "identical"); finite points whose squared norms overflow float32 give 0
    (the compensated norm sum used to turn the overflow into NaN, then 1.0), as the reference's
    far points do; every other entry is unaffected."""
    k = kernel("gaussian_kernel", "direct", target, backend, head_dim=64)
    xs = [(_special_points(rng, d), _special_points(rng, d)[::-1].copy()) for d in (1, 2, 17, 70)]
    xs += [(_special_points(rng, 5000), _points(rng, (3, 5000)))]        # several sum blocks
    for (a, b), s in zip(xs, run_inputs(k, xs)):
        r = ref.gaussian_kernel(a, b, 64)
        bad = ~(np.isfinite(a).all(-1)[:, None] & np.isfinite(b).all(-1)[None, :])
        np.testing.assert_array_equal(np.isnan(s), bad, f"NaN pattern, d {a.shape[-1]}")
        aa, bb = ((v.astype(np.float64) ** 2).sum(-1) for v in (a, b))
        huge = ~bad & (aa[:, None] + bb[None, :] >= np.finfo(np.float32).max)
        # the reference's far points are 0; so are identical huge points here (docs/ops.md §6)
        assert huge.any() and np.all(s[huge] == 0) and np.all(r[huge & (r < 1)] == 0), a.shape
        ok = ~(bad | huge)
        with np.errstate(invalid="ignore", over="ignore"):
            tol = get_op("gaussian_kernel").tolerance((a, b), np.nan_to_num(r), k.params)
        assert np.all(np.abs(s[ok] - r[ok]) <= tol[ok]), a.shape


def test_gaussian_bad_input():
    k = kernel("gaussian_kernel", "direct", "host", head_dim=64)
    a, b = np.zeros((4, 8), np.float32), np.zeros((3, 8), np.float32)
    with pytest.raises(TypeError, match="float32"):
        k(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="numpy"):
        k(a.tolist(), b)
    with pytest.raises(TypeError, match="2 arrays"):
        k(a)
    with pytest.raises(ValueError, match="two axes"):
        k(a[0], b)
    with pytest.raises(ValueError, match="dimension d"):
        k(a, np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="leading axes"):
        k(np.zeros((2, 4, 8), np.float32), np.zeros((3, 3, 8), np.float32))
    with pytest.raises(ValueError, match="shape"):
        k(a, b, out=np.zeros((3, 4), np.float32))
    for bad in (0, -1, 1.5, 2 ** 21, True, float("nan")):
        with pytest.raises(softgen.UsageError):
            softgen.compile("gaussian_kernel", head_dim=bad)
    with pytest.raises(softgen.UsageError, match="direct"):
        softgen.compile("gaussian_kernel", algorithm="online")


def test_gaussian_export_abi_and_error_codes(tmp_path, rng):
    k = softgen.compile("gaussian_kernel", head_dim=32, name="gk32")
    paths = k.export(tmp_path)
    h = paths["header"].read_text()
    sig = ("int gk32(const float *a, const float *b, float *s, size_t batch, size_t n, size_t m, "
           "size_t d, size_t lda, size_t ldb, size_t lds);")
    assert sig in h and "GK32_ENOMEM 6" in h and "head_dim=32" in h and "lds" in h
    m = json.loads(paths["manifest"].read_text())
    assert m["abi"] + ";" == sig and set(m["arguments"]) == {"a", "b", "s", "batch", "n", "m", "d",
                                                            "lda", "ldb", "lds"}
    assert m["accuracy"]["max_rel_error"] < 1e-4 and m["abi_style"] == "general"
    fn = ctypes.CDLL(str(paths["library"])).gk32
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t] * 7
    a, b = _points(rng, (2, 5, 6)), _points(rng, (2, 4, 6))
    s = np.full((2, 5, 9), -1.0, np.float32)
    assert fn(a.ctypes.data, b.ctypes.data, s.ctypes.data, 2, 5, 4, 6, 6, 6, 9) == 0
    np.testing.assert_array_equal(s[..., :4], k(a, b))
    assert np.all(s[..., 4:] == -1)
    P = a.ctypes.data, b.ctypes.data, s.ctypes.data
    assert fn(None, P[1], P[2], 2, 5, 4, 6, 6, 6, 9) == 1
    assert fn(P[0], P[1], None, 2, 5, 4, 6, 6, 6, 9) == 1
    assert fn(None, None, P[2], 2, 5, 4, 0, 0, 0, 9) == 0                # d = 0: inputs unread
    assert fn(None, None, None, 0, 5, 4, 6, 6, 6, 9) == 0                # batch 0
    assert fn(P[0], P[1], P[2], 2, 5, 4, 6, 5, 6, 9) == 2                # lda < d
    assert fn(P[0], P[1], P[2], 2, 5, 4, 6, 6, 6, 3) == 2                # lds < m
    assert fn(P[0], P[1], P[2], 2 ** 62, 5, 4, 6, 6, 6, 9) == 3          # does not fit


def test_gaussian_functional_and_cli(tmp_path, rng):
    import subprocess
    import sys
    a, b = _points(rng, (6, 16)), _points(rng, (5, 16))
    np.testing.assert_allclose(softgen.gaussian_kernel(a, b, 16), ref.gaussian_kernel(a, b, 16),
                               rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="2 arrays"):
        softgen.gaussian_kernel(a)
    env = {**__import__("os").environ}
    run = lambda *args: subprocess.run([sys.executable, "-m", "softgen", *args], capture_output=True,  # noqa: E731
                                       text=True, env=env)
    res = run("build", "--op", "gaussian_kernel", "-p", "head_dim=16", "-o", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    man = json.loads(res.stdout)
    assert man["params"]["head_dim"] == 16 and "size_t lds)" in man["abi"]
    res = run("explain", "--op", "gaussian_kernel")
    assert res.returncode == 0 and "matmul s = a @ b^T" in res.stdout and "epilogue" in res.stdout
    res = run("build", "--op", "gaussian_kernel", "-p", "head_dim=0", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "head_dim" in res.stderr


# -- Newton-Schulz pseudo-inverse ----------------------------------------------------------------

def landmark_kernel(rng, batch, m, spread=0.3, d=64, dup=0):
    """SOFT's K2 = kernel(Q~, Q~) of m landmarks in d dimensions (symmetric PSD, entries in (0, 1]);
    ``dup`` landmarks repeated make it singular. ``spread`` sets the conditioning (smaller:
    closer landmarks, worse)."""
    q = rng.standard_normal((batch, m, d)) * spread
    if dup:
        q[:, m - dup:] = q[:, :dup]
    return ref.gaussian_kernel(q, q, d).astype(np.float32)


NEWTON_SIZES = (1, 3, 7, 17, 64, 65)
HOST = softgen.host_target()


def newton_params():
    """(target, backend, variant, n_iters). TVM off the host's target (builds take a second; the
    TensorIR is the same at every vector width, the host runs every n_iter): n_iter = 20 on
    scalar and neon, 0 and 1 there and the other x86 target with -m slow."""
    out = []
    for variant in ("soft", "norm"):
        for b in BACKENDS:
            for t in TARGETS:
                off, other_x86 = b == "tvm" and t != HOST, t in ("avx2", "avx512")
                slow = [pytest.mark.slow] if off and other_x86 else []
                out.append(pytest.param(t, b, variant, (20,) if off else (0, 1, 20), id=f"{t}-{b}-{variant}", marks=slow))
                if off:
                    out.append(pytest.param(t, b, variant, (0, 1), id=f"{t}-{b}-{variant}-0-1", marks=pytest.mark.slow))
    return out


@pytest.mark.parametrize("target,backend,variant,n_iters", newton_params())
def test_newton_matches_reference(target, backend, variant, n_iters, rng):
    """The same n_iter as the float64 reference (docs/ops.md §11), per-matrix alpha, every size on the
    tile edges; 0 iterations is alpha P itself."""
    from conftest import check, run_many
    for n_iter in n_iters:
        k = kernel("newton_pinv", "direct", target, backend, n_iter=n_iter, variant=variant)
        xs = [landmark_kernel(rng, 2, m) for m in NEWTON_SIZES] + [landmark_kernel(rng, 1, 49, 0.15)]
        for x, y in zip(xs, run_many(k, xs)):
            check(k, x, y, f"{variant} n_iter={n_iter} shape {x.shape}")


def _soft_f32(a: np.ndarray, variant: str, n_iter: int) -> np.ndarray:
    """SOFT's own iteration V <- 2V - V P V (inverse.py / newton_inv) emulated in float32 with
    NumPy's float32 matmuls, from the reference's per-matrix alpha."""
    f = np.float32
    alpha = ref.newton_pinv_alpha(a.astype(np.float64), variant, 0.9, "matrix").astype(f)
    p = a + f(0.01) * np.eye(a.shape[-1], dtype=f) if variant == "soft" else a
    v = alpha * p
    for _ in range(n_iter):
        v = 2 * v - v @ (p @ v)
    return v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("variant", ["soft", "norm"])
def test_newton_as_accurate_as_softs_float32_formula(target, backend, variant, rng):
    """The kernel computes SOFT's 2V - V (P V) (2V - . in the second GEMM's store): on 49 x 49
    landmark kernels its normwise error is that of a float32 emulation of SOFT's formula. The
    old V (2I - P V) rounded 2I - PV first and was ~4x worse under "norm" (1.2-1.9e-6 against
    0.36-0.56e-6 here)."""
    k = kernel("newton_pinv", "direct", target, backend, variant=variant)
    q = rng.standard_normal((12, 49, 64)) * 0.3
    a = ref.gaussian_kernel(q, q, 64).astype(np.float32)
    want = ref.newton_pinv(a.astype(np.float64), 20, variant, 0.9, alpha_scope="matrix")
    (y,) = run_many(k, [a])

    def err(v):
        return np.max(np.abs(v - want), axis=(-2, -1)) / np.max(np.abs(want), axis=(-2, -1))
    mine, soft = err(y).mean(), err(_soft_f32(a, variant, 20)).mean()
    assert mine <= 1.5 * soft, (mine, soft)


@pytest.mark.parametrize("backend", BACKENDS)
def test_newton_converges_to_the_inverse(backend, rng):
    """At >= 40 iterations on moderately conditioned K2 (docs/ops.md §11): "norm" reaches
    numpy.linalg.pinv, "soft" the regularised inverse (K2 + 0.01 I)^-1, within the kernel's
    tolerance against the reference plus the reference's own distance to the limit."""
    from conftest import check
    x = landmark_kernel(rng, 3, 49, 0.4)
    x64 = x.astype(np.float64)
    for variant, limit in (("norm", np.linalg.pinv(x64)),
                           ("soft", np.linalg.inv(x64 + 0.01 * np.eye(49)))):
        k = kernel("newton_pinv", "direct", "host", backend, n_iter=40, variant=variant)
        y = k(x)
        check(k, x, y, variant)
        r = get_op("newton_pinv").reference(x, **k.params)
        tol = get_op("newton_pinv").tolerance(x, r, k.params)
        assert np.all(np.abs(y - limit) <= tol + np.abs(r - limit)), variant
        assert np.abs(y - limit).max() <= 1e-3 * np.abs(limit).max(), variant


@pytest.mark.parametrize("backend", BACKENDS)
def test_newton_singular_landmarks(backend, rng):
    """Duplicate landmarks make K2 singular: "norm" converges to the pseudo-inverse (it needs more
    iterations), "soft" to the regularised inverse, which stays well conditioned."""
    from conftest import check
    x = landmark_kernel(rng, 2, 24, 0.5, dup=4)
    x64 = x.astype(np.float64)
    assert np.all(np.linalg.matrix_rank(x64, 1e-5) < 24)
    for variant, n_iter, limit in (("norm", 80, np.linalg.pinv(x64, rcond=1e-5)),
                                   ("soft", 40, np.linalg.inv(x64 + 0.01 * np.eye(24)))):
        k = kernel("newton_pinv", "direct", "host", backend, n_iter=n_iter, variant=variant)
        y = k(x)
        check(k, x, y, f"{variant}, singular")
        assert np.abs(y - limit).max() <= 1e-3 * np.abs(limit).max(), variant
        if variant == "norm":   # the Moore-Penrose conditions A V A = A, V A V = V
            a = x64[0]
            v = y[0].astype(np.float64)
            assert np.abs(a @ v @ a - a).max() < 1e-4 and np.abs(v @ a @ v - v).max() < 1e-3 * np.abs(v).max()


def test_newton_alpha_per_matrix_and_halvings(rng):
    """alpha is per matrix: a matrix's result does not depend on the others in its batch (the
    reference's "tensor" scope couples them, with the same limit). A matrix with one dominant
    column needs many halvings of the "norm" alpha; the kernel picks the reference's."""
    a = landmark_kernel(rng, 1, 16)
    batch = np.concatenate([a, 40 * a, a[:, ::-1, ::-1].copy()])
    for variant in ("soft", "norm"):
        k = kernel("newton_pinv", "direct", "host", n_iter=5, variant=variant)
        both = k(batch)
        np.testing.assert_array_equal(both[1], k(batch[1:2])[0])
        np.testing.assert_array_equal(both[0], k(batch[:1])[0])
        per = ref.newton_pinv(batch, 5, variant, alpha_scope="matrix")
        whole = ref.newton_pinv(batch, 5, variant, alpha_scope="tensor")
        assert not np.allclose(per[0], whole[0])                      # the scopes differ...
        lim = [ref.newton_pinv(batch, 60, variant, alpha_scope=s) for s in ("matrix", "tensor")]
        np.testing.assert_allclose(lim[0], lim[1], rtol=1e-6, atol=1e-9)   # ...not in the limit
    np.testing.assert_array_equal(ref.newton_pinv(batch[:1], 5, "norm"),
                                  ref.newton_pinv(batch[:1], 5, "norm", alpha_scope="matrix"))
    col = np.zeros((1, 12, 12), np.float32)
    col[0, :, 0] = 1.0                 # |I - alpha A A|_1 = |1 - alpha| + 11 alpha: 10 halvings
    col[0] += 0.05 * np.eye(12, dtype=np.float32)
    assert ref.newton_pinv_alpha(col, "norm", alpha_scope="matrix").item() < 2.0 ** -8
    from conftest import check
    for n_iter in (0, 3):
        k = kernel("newton_pinv", "direct", "host", n_iter=n_iter, variant="norm")
        check(k, col, k(col), f"halvings, n_iter={n_iter}")


@pytest.mark.parametrize("variant", ["soft", "norm"])
def test_newton_non_finite_matrix_is_nan_at_every_n_iter(variant, rng):
    """Every entry depends on the whole matrix, so a NaN/inf entry gives an all-NaN matrix: the
    reference's V0 = alpha P with alpha = 0 left finite entries at n_iter = 0 (the kernel's NaN
    matrix was right)."""
    from conftest import check
    x = landmark_kernel(rng, 3, 6)
    x[0, 0, 0], x[1, 2, 3] = np.inf, np.nan
    for n_iter in (0, 1):
        r = ref.newton_pinv(x, n_iter, variant, alpha_scope="matrix")
        assert np.isnan(r[:2]).all() and np.isfinite(r[2]).all()
        k = kernel("newton_pinv", "direct", "host", n_iter=n_iter, variant=variant)
        check(k, x, k(x), f"n_iter={n_iter}")


def test_newton_nan_layouts_and_in_place(rng):
    k = kernel("newton_pinv", "direct", "host", n_iter=3, variant="soft")
    x = landmark_kernel(rng, 3, 10)
    want = k(x)
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    y = k(bad)
    assert np.isnan(y[1]).all() and np.array_equal(y[[0, 2]], want[[0, 2]])   # matrices independent
    buf = np.full((3, 10, 16), np.nan, np.float32)
    buf[..., :10] = x
    np.testing.assert_array_equal(k(buf[..., :10]), want)                   # strided rows
    z = x.copy()
    assert k(z, out=z) is z                                                 # in place
    np.testing.assert_array_equal(z, want)
    np.testing.assert_array_equal(k(np.swapaxes(x, -1, -2)), want)         # K2 is symmetric
    assert k(np.zeros((0, 4, 4), np.float32)).shape == (0, 4, 4)


def test_newton_bad_input_and_abi(tmp_path):
    k = kernel("newton_pinv", "direct", "host", n_iter=2)
    with pytest.raises(ValueError, match="square"):
        k(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        k(np.eye(3))
    for bad in ({"n_iter": -1}, {"n_iter": 1001}, {"n_iter": 2.5}, {"variant": "pinv"},
                {"variant": 1.0}, {"alpha_factor": 0.0}, {"alpha_factor": 1.5}, {"head_dim": 3}):
        with pytest.raises(softgen.UsageError):
            softgen.compile("newton_pinv", **bad)
    k = softgen.compile("newton_pinv", n_iter=2, variant="norm", name="np2")
    paths = k.export(tmp_path)
    h = paths["header"].read_text()
    assert "NP2_ESQUARE 7" in h and "NP2_ETOOLONG 4" in h and "size_t m);" in h and "variant='norm'" in h
    assert json.loads(paths["manifest"].read_text())["errors"]["7"].startswith("the matrices are not square")
    fn = ctypes.CDLL(str(paths["library"])).np2
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_size_t] * 5
    x = landmark_kernel(np.random.default_rng(5), 1, 4)[0]
    y = np.empty((4, 4), np.float32)
    assert fn(x.ctypes.data, y.ctypes.data, 4, 4, 4, 4, 4) == 0
    np.testing.assert_allclose(y, ref.newton_pinv(x, 2, "norm"), rtol=1e-5)
    assert fn(x.ctypes.data, y.ctypes.data, 4, 4, 4, 4, 2) == 7              # 2 x 4 matrices
    assert fn(x.ctypes.data, y.ctypes.data, 4, 4, 4, 4, 3) == 5
    assert fn(x.ctypes.data, y.ctypes.data, 2 ** 25, 2 ** 25, 2 ** 25, 2 ** 25, 2 ** 25) == 4
    np.testing.assert_allclose(softgen.newton_pinv(x, 2, "norm"), y)


def test_newton_cli(tmp_path):
    import subprocess
    import sys
    run = lambda *args: subprocess.run([sys.executable, "-m", "softgen", *args],  # noqa: E731
                                       capture_output=True, text=True)
    res = run("build", "--op", "newton_pinv", "-p", "variant=norm", "-p", "n_iter=7",
              "-o", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr
    man = json.loads(res.stdout)
    assert man["params"] == {"n_iter": 7, "variant": "norm", "alpha_factor": 0.9}
    assert man["traffic"]["gemm_flops"].endswith("*m*m*m")
    res = run("explain", "--op", "newton_pinv")
    assert res.returncode == 0 and "loop of 20 iterations" in res.stdout and "matmul t = p @ v" in res.stdout
    res = run("build", "--op", "newton_pinv", "-p", "variant=svd", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "variant" in res.stderr


# -- the matrix-program IR in general form ---------------------------------------------------------

@pytest.fixture
def gram_softmax_op():
    """A matrix op written only against the IR (no backend code): softmax over each row of
    x x^T / sqrt(d), with x (..., n, d) -> (..., n, n); a contraction, a scratch-free rows phase
    with the softmax motif (not element-wise: stays a phase), two inputs' worth of shapes."""
    from softgen.ops import OPS, register

    def reference(x, scale=1.0):
        x = np.asarray(x, np.float64)
        return ref.softmax(x @ np.swapaxes(x, -1, -2) * scale)

    @register("gram_softmax_test", reference, params={"scale": 1.0}, kind="matrix",
              matrices={"dims": ("n", "d"), "inputs": {"x": ("n", "d")}, "outputs": {"g": ("n", "n")}},
              custom_tolerance=lambda x, r, params, call: 1e-5 * np.abs(r) + 1e-7)
    def gram_softmax(mp, scale):
        mp.matmul("g", "x", "x", layout="nt", alpha=scale)
        g = mp.rows(over="g", into="g")
        e = (g - g.max()).exp()
        g.p.add("output", (e * e.sum().recip()).id)

    yield "gram_softmax_test"
    del OPS["gram_softmax_test"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_matrix_op_reuses_the_ir(gram_softmax_op, backend, rng):
    k = kernel(gram_softmax_op, "direct", "host", backend, scale=0.25)
    assert k.abi.style == "general" and "size_t ldg" in k.abi.signature("f")
    x = _points(rng, (2, 37, 16))
    y = k(x)
    np.testing.assert_allclose(y, ref.softmax(x.astype(np.float64) @ np.swapaxes(x, -1, -2) * 0.25),
                               rtol=1e-5, atol=1e-7)
    assert "matmul g = 0.25 * x @ x^T" in str(k.program) and "epilogue" not in str(k.program)


def test_matrix_program_validation():
    """Ill-formed matrix programs are IR errors before any code is generated."""
    from softgen.ir import IRError
    from softgen.matrix import MatrixProgram

    def prog(**decl):
        return MatrixProgram("t", {}, **{"dims": ("m",), "inputs": {"x": ("m", "m")},
                                         "outputs": {"y": ("m", "m")}, **decl})

    def copy(mp, over, into):
        r = mp.rows(over=over, into=into)
        r.p.add("output", r.id)

    cases = {}
    mp = prog()
    mp.scratch("t", ("m", "m"))
    mp.matmul("y", "x", "t")                                        # t read before written
    cases[r"reads matrices \['t'\] before"] = mp
    mp = prog(dims=("m", "n"), inputs={"x": ("m", "n")}, outputs={"y": ("m", "n")})
    mp.scratch("t", ("m", "m"))
    mp.matmul("t", "x", "x")                                        # (m,n) @ (m,n)
    copy(mp, "x", "y")
    cases["do not agree"] = mp
    mp = prog()
    mp.matmul("x", "x", "x")
    cases["writes an input|destination is an operand"] = mp
    mp = prog()
    mp.scratch("v", ("m", "m"))
    mp.scratch("w", ("m", "m"))
    copy(mp, "x", "v")
    with mp.loop(3, swap=[("v", "w")]):
        mp.matmul("y", "v", "v")                                    # w never written
    cases["does not both write|written inside a loop"] = mp
    mp = prog()
    mp.scratch("t", ("m", "m"))
    copy(mp, "x", "y")
    mp.matmul("t", "x", "y")                                        # x read after y (may be x)
    copy(mp, "t", "y")
    cases["reads x after y"] = mp
    mp = prog()
    r = mp.rows(over="x")
    r.p.add("output", (r * r.p.mscalar("s")).id)                     # scalar never written
    cases["per-matrix scalars"] = mp
    mp = prog()
    mp.rows(over="x").p.row_index().emit("i")                        # a reserved vector name
    copy(mp, "x", "y")
    cases["vector name"] = mp
    mp = prog(dims=("m", "k"))
    copy(mp, "x", "y")
    cases["not used"] = mp
    mp = prog()
    mp.scratch("t", ("m", "m"))
    r = mp.rows(over="x", into="t")
    r.p.add("output", (r + r.p.matrow("y")).id)                      # y never written
    copy(mp, "t", "y")
    cases[r"reads matrices \['y'\] before"] = mp
    for bad, what in (("t", "reads matrix 't' element-wise"), ("s", "reads matrix 's' element-wise"),
                      ("q", "no matrix named 'q'")):   # the matrix it writes, another shape, none
        mp = prog(dims=("m", "n"), inputs={"x": ("m", "m"), "s": ("m", "n")})
        mp.scratch("t", ("m", "m"))
        copy(mp, "x", "t")
        r = mp.rows(over="x", into="t")
        r.p.add("output", (r + r.p.matrow(bad)).id)
        copy(mp, "t", "y")
        cases[what] = mp
    for what, mp in cases.items():
        with pytest.raises(IRError, match=what):
            mp.validate()
