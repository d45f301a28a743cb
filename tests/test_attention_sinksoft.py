"""Sinkhorn and SOFT attention (issue 14, docs/ops.md §6, 7, 10): the float64 oracles
(``sinkhorn_attention``, ``soft_attention``), the kernels against them (C on the host; TVM and
neon under qemu once each), the front door's masks, landmarks and refusals. Kernels are shared
per module (one per normalizer x parameters)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import check_attention, check_strided_heads, contiguous_heads, run_cases
from test_gemm import _cases, _check, _GuardPage, _small  # the GEMM tests' shapes, operands and bound

import softgen
from softgen import reference as ref
from softgen.backends import gemm as G
from softgen.backends.gemm import fit_rows
from softgen.binding import bind
from softgen.errors import UsageError
from softgen.gemm_runtime import GemmLibrary
from softgen.ops import build_program, get_op
from softgen.targets import get_target

RNG = np.random.default_rng(1414)
OP = get_op("attention")


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def keep_mask(lq, lk, dead_row=None, dead_key=None, p=0.75):
    m = RNG.random((lq, lk)) < p
    m[:, 0] = True
    if dead_row is not None:
        m[dead_row] = False
    if dead_key is not None:
        m[:, dead_key] = False
    return m


def additive(m, batch):
    return np.broadcast_to(np.where(m, np.float32(0), np.float32(-np.inf)), (batch,) + m.shape).copy()


# -- the oracles ----------------------------------------------------------------------------------

def test_sinkhorn_oracle_conventions():
    q, k, v = RNG.standard_normal((2, 3, 6, 4)), RNG.standard_normal((2, 3, 9, 4)), RNG.standard_normal((2, 3, 9, 5))
    # one half-step is softmax(C) scaled by n_k / n_q (Sinkformers' x n_k output)
    np.testing.assert_allclose(ref.sinkhorn_attention(q, k, v, n_iter=1), ref.attention(q, k, v) * 9 / 6, rtol=1e-12)
    # three half-steps: P's columns summed after the last column step are 1, rows n_k / n_q after the row step
    s = ref._attention_scores(q, k, None, False, None, None)
    p = ref.sinkhorn(s, 2)
    np.testing.assert_allclose(p.sum(-2), 1.0, rtol=1e-12)
    np.testing.assert_allclose(ref.sinkhorn_attention(q, k, v, n_iter=2), p @ v, rtol=1e-12)
    # the padding rule: a key every query masks is left out (weight 0): the result is the unmasked
    # submatrix's; a fully masked query row is NaN (or 0), the others the submatrix's
    m = np.ones((6, 9), bool)
    m[:, 4] = False
    m[2] = False
    o = ref.sinkhorn_attention(q, k, v, mask=m)
    keep = [j for j in range(9) if j != 4]
    rows = [i for i in range(6) if i != 2]
    sub = ref.sinkhorn_attention(q[..., rows, :], k[..., keep, :], v[..., keep, :])
    np.testing.assert_allclose(o[..., rows, :], sub, rtol=1e-12)
    assert np.isnan(o[..., 2, :]).all()
    assert (ref.sinkhorn_attention(q, k, v, mask=m, masked_rows="zero")[..., 2, :] == 0).all()
    # kv_lengths: padding keys at the end, as the mask does
    lens = np.array([9, 5])
    o = ref.sinkhorn_attention(q, k, v, kv_lengths=lens)
    np.testing.assert_allclose(o[1], ref.sinkhorn_attention(q[1], k[1, :, :5], v[1, :, :5]), rtol=1e-12)
    with pytest.raises(ValueError, match="not causal"):
        ref.sinkhorn_attention(q, k, v, causal=True)


def test_soft_oracle_conventions():
    x = RNG.standard_normal((2, 12, 3))
    # m | n: consecutive groups of n / m (the spec's rule); else torch's adaptive pooling
    np.testing.assert_allclose(ref.soft_landmarks_avgpool(x, 4), x.reshape(2, 4, 3, 3).mean(-2), rtol=1e-15)
    lo, hi = ref.soft_landmark_segments(10, 4)
    assert lo.tolist() == [0, 2, 5, 7] and hi.tolist() == [3, 5, 8, 10]
    assert ref.soft_landmarks_avgpool(x[:, :3], 5).shape == (2, 5, 3)      # m > n: repeated tokens
    # landmarks = the tokens (m = n, K = Q): O = K (K + 0.01 I)^-1 K V, SOFT's regularised Nystrom
    q, v = RNG.standard_normal((3, 8, 4)) * 2, RNG.standard_normal((3, 8, 5))
    kq = ref.gaussian_kernel(q, q, 4)
    exact = kq @ np.linalg.solve(kq + 0.01 * np.eye(8), kq @ v)
    np.testing.assert_allclose(ref.soft_attention(q, q, v, landmarks=8, n_iter=60), exact, rtol=1e-9, atol=1e-12)
    # explicit landmarks equal pooled ones; k is q is the paper's tied form
    lm = ref.soft_landmarks_avgpool(q, 2)
    np.testing.assert_array_equal(ref.soft_attention(q, q, v, landmarks=2), ref.soft_attention(q, q, v, landmarks=lm))
    for kw in ({"causal": True}, {"mask": np.ones((8, 8), bool)}):
        with pytest.raises(ValueError, match="no causal or masked form"):
            ref.soft_attention(q, q, v, **kw)


# -- the kernels ----------------------------------------------------------------------------------

# Lq, Lk, d, dv: Lq != Lk both ways, d and dv not multiples of any vector width
SHAPES = [(1, 1, 1, 1), (6, 9, 7, 5), (33, 17, 20, 3), (17, 40, 65, 9)]


def sinkhorn_kernel(n_iter=None, mask="additive"):
    """head_dim=16 (scale 1/4 for every d); n_iter None: the default, 3, as softgen.attention's
    d = 16 calls compile it (one build each, shared through the compile cache)."""
    return softgen.compile("attention", normalizer="sinkhorn", head_dim=16, n_iter=n_iter, mask=mask)


@pytest.mark.parametrize("n_iter", [1, 2, None])
def test_sinkhorn_kernel_matches_the_oracle(n_iter):
    masked = sinkhorn_kernel(n_iter)
    kernels = [masked] + ([sinkhorn_kernel(n_iter, "none")] if n_iter is None else [])
    assert masked.algorithm == "direct" and "s[lq][lk]" in str(masked.program)   # blocked: the score scratch
    for lq, lk, d, dv in SHAPES:
        c = (f32(2, lq, d, scale=2.0), f32(2, lk, d, scale=2.0), f32(2, lk, dv))
        # a fully masked query row and a key every query masks (when there are enough)
        m = keep_mask(lq, lk, dead_row=1 if lq > 2 else None, dead_key=lk - 1 if lk > 2 else None)
        cm = c + (additive(m, 2),)
        check_attention(masked, masked(*cm), *cm)
        for k in kernels[1:]:
            check_attention(k, k(*c), *c)


@pytest.mark.parametrize("n_iter", [1, 2, None])
def test_sinkhorn_non_finite_and_huge_scores(n_iter):
    """A NaN or +inf score poisons its row's potential; from the first column step on every
    column (so the matrix) is NaN, as in float64; huge finite scores stay within the tolerance."""
    k = sinkhorn_kernel(n_iter)
    q, kk, v = f32(4, 9, 16), f32(4, 13, 16), f32(4, 13, 5)
    q[1, 2, 0] = np.nan
    kk[2, 5, 1] = np.inf
    q[3, 0] = 1e30
    c = (q, kk, v, np.zeros((4, 9, 13), np.float32))
    o = k(*c)
    check_attention(k, o, *c)
    assert np.isfinite(o[0]).all() and np.isnan(o[1, 2]).all()
    assert np.isnan(o[1:3]).all() == (n_iter != 1)


def test_soft_non_finite(soft_kernel):
    c = soft_case(9, 13, 16, 5, 3, False)
    c[0][1, 2, 0] = np.nan                  # one query: its row of K1
    c[1][0, 5, 1] = np.inf                  # one key: K1k^T V, so every output of its matrix
    o = soft_kernel(*c)
    check_attention(soft_kernel, o, *c)
    assert np.isnan(o[1, 2]).all() and np.isfinite(o[1, [0, 1, 3]]).all() and np.isnan(o[0]).all()


def test_sinkhorn_front_door():
    q, k, v = f32(2, 3, 7, 16), f32(2, 3, 11, 16), f32(2, 3, 11, 4)
    m = keep_mask(7, 11, dead_row=3, dead_key=2)
    o = softgen.attention(q, k, v, normalizer="sinkhorn", mask=m)
    r = ref.sinkhorn_attention(q, k, v, mask=m)
    assert np.array_equal(np.isnan(o), np.isnan(r)) and np.isnan(o[..., 3, :]).all()
    np.testing.assert_allclose(o[..., [0, 1, 2, 4, 5, 6], :], r[..., [0, 1, 2, 4, 5, 6], :], rtol=1e-4, atol=1e-5)
    z = softgen.attention(q, k, v, normalizer="sinkhorn", mask=m, masked_rows="zero")
    assert (z[..., 3, :] == 0).all()
    # kv_lengths (key padding) and GQA (2 kv heads for 4 query heads): the oracle's conventions
    q4, k2, v2 = f32(2, 4, 5, 16), f32(2, 2, 9, 16), f32(2, 2, 9, 3)
    lens = np.array([9, 4])
    o = softgen.attention(q4, k2, v2, normalizer="sinkhorn", kv_lengths=lens, n_iter=2)
    np.testing.assert_allclose(o, ref.sinkhorn_attention(q4, k2, v2, kv_lengths=lens, n_iter=2), rtol=1e-4, atol=1e-5)
    assert np.isnan(softgen.attention(q4, k2, v2, normalizer="sinkhorn", kv_lengths=np.array([0, 3]))[0]).all()


@pytest.fixture(scope="module")
def soft_kernel():
    return softgen.compile("attention", normalizer="soft", head_dim=16)


def soft_case(lq, lk, d, dv, m, tied):
    q = f32(2, lq, d, scale=2.0)
    k = q if tied else f32(2, lk, d, scale=2.0)
    v = f32(2, k.shape[1], dv)
    return q, k, v, ref.soft_landmarks_avgpool(k, m, np.float32)


def test_soft_kernel_matches_the_oracle(soft_kernel):
    k = soft_kernel
    assert k.params["n_iter"] is None and "landmarks[m][d]" in str(k.program)
    shapes = {str(v) for v in k.program.scratch_mats.values()}
    assert all("'lq', 'lk'" not in s for s in shapes)      # linear: no Lq x Lk matrix
    worst = 0.0
    for (lq, lk, d, dv), m, tied in zip(SHAPES + [(64, 64, 16, 16)], (1, 3, 4, 5, 8), (True, False, True, False, True)):
        c = soft_case(lq, lk, d, dv, m, tied)
        worst = max(worst, check_attention(k, k(*c), *c))
    assert worst > 1e-4    # the tolerance is not vacuous


def test_soft_kernel_one_iteration():
    k = softgen.compile("attention", normalizer="soft", head_dim=16, n_iter=1)
    c = soft_case(20, 20, 8, 6, 4, True)
    check_attention(k, k(*c), *c)


def test_soft_front_door():
    q, v = f32(2, 2, 24, 16), f32(2, 2, 24, 8)
    o = softgen.attention(q, q, v, normalizer="soft", landmarks=6)
    r = ref.soft_attention(q, q, v, landmarks=6)
    assert np.abs(o - r).max() <= 1e-3 * np.abs(r).max()
    lm = f32_pool(q, 6)
    np.testing.assert_array_equal(softgen.attention(q, q, v, normalizer="soft", landmarks=lm), o)
    one = softgen.attention(q, q, v, normalizer="soft", landmarks=lm[0, 0])      # (m, d): every head's
    np.testing.assert_array_equal(one, softgen.attention(q, q, v, normalizer="soft",
                                                         landmarks=np.broadcast_to(lm[0, 0], lm.shape).copy()))


@pytest.fixture(scope="module")
def soft_tied():
    return softgen.compile("attention", normalizer="soft", head_dim=16, tied=1)


def test_soft_tied_matches_untied_and_the_oracle(soft_kernel, soft_tied):
    """The tied form (k is q): K1 once, K1^T V a tn GEMM; k's place in the ABI is not read."""
    assert "k1" not in soft_tied.program.scratch_mats and "'lk'" not in str(soft_tied.program.inputs)
    assert "o = k1kt^T @ w" in str(soft_tied.program)
    worst = 0.0
    for (lq, d, dv), m in zip(((1, 16, 4), (7, 5, 3), (37, 16, 16), (130, 9, 20)), (1, 3, 5, 8)):
        c = soft_case(lq, lq, d, dv, m, True)
        o = soft_tied(*c)
        worst = max(worst, check_attention(soft_tied, o, *c))
        ou = soft_kernel(*c)
        tol = OP.tolerance(c, OP.reference(*c, **soft_kernel.params), soft_kernel.params)
        assert (np.abs(o.astype(np.float64) - ou) <= 2 * tol).all()
        garbage = (c[0], np.full_like(c[1], np.nan), c[2], c[3])
        np.testing.assert_array_equal(soft_tied(*garbage), o)                  # k is not read
    assert worst > 1e-4


def pooled_kernel(m, tied):
    """SOFT with the landmarks pooled in the kernel (as softgen.attention's d = 16 calls build it)."""
    return softgen.compile("attention", normalizer="soft", head_dim=16, landmarks=m, tied=1 if tied else None)


def f32_pool(k, m):
    """The kernel's landmarks: per segment a float32 sum in row order, divided by the count."""
    lo, hi = ref.soft_landmark_segments(k.shape[-2], m)
    out = np.empty(k.shape[:-2] + (m, k.shape[-1]), np.float32)
    for i, (a, b) in enumerate(zip(lo, hi)):
        acc = np.zeros(k.shape[:-2] + (k.shape[-1],), np.float32)
        for r in range(a, b):
            acc += k[..., r, :]
        out[..., i, :] = acc / np.float32(b - a)
    return out


def test_soft_pooled_landmarks(soft_kernel, soft_tied):
    """landmarks=m: the kernel pools its landmarks (a pool phase, m fixed at build time, not in the
    ABI): bitwise the explicit-landmarks kernel on float32 segment means (m | n, m not dividing n,
    m > n: repeated tokens), and within the tolerance of the oracle pooling in float64."""
    for tied, (lq, lk, d, dv, m) in ((True, (24, 24, 16, 5, 6)), (True, (70, 70, 33, 3, 5)), (False, (9, 40, 81, 3, 7)),
                                     (False, (6, 3, 5, 4, 5))):
        k = pooled_kernel(m, tied)
        assert "landmarks" not in k.program.inputs and "pool landmarks" in str(k.program)
        assert "m" not in k._abi.dims and "m" in k.program.fixed_dims
        q, kk, v, _ = soft_case(lq, lk, d, dv, m, tied)
        o = k(q, kk, v)
        check_attention(k, o, q, kk, v)
        np.testing.assert_array_equal(k(q, kk, v, threads=2), o)   # a scratch slot (its landmarks) per task
        explicit = soft_tied if tied else soft_kernel
        np.testing.assert_array_equal(o, explicit(q, kk, v, f32_pool(kk, m)))


def test_fixed_rows_tile():
    """A GEMM tile height for SOFT's fixed landmark rows: 7 x 7 = 49 instead of 7 x 8 = 56 on
    avx512 (and neon), the default where no height in reach pads 5% less or the registers forbid."""
    for target, rows, mr in (("avx512", 49, 7), ("avx512", 64, 8), ("avx512", 5, 6), ("neon", 49, 7), ("avx2", 49, 5),
                             ("avx2", 64, 5)):
        t = get_target(target)
        s = fit_rows(t, t.gemm, rows)
        assert s.mr == mr and s.nv == t.gemm.nv and s.mr * s.nv + s.nv + 1 <= t.vector_registers
    k = pooled_kernel(49, True)   # a build-time row count picks the tile when none is given or tuned
    if k.target.name == "avx512":
        assert k.gemm.mr == 7 and "_g7x" in k.name and "tile height 7" in k.gemm_why


def test_direct_b_gemm():
    """SOFT's GEMMs read whole B panels in place (gemm(direct_b=True), nn and tn; nt keeps its
    pack): within the float64 bound on every tile and blocking edge with padded leading
    dimensions (NaN in the padding: a panel read past n would show), the same bits as the packed
    GEMM, and the pooled SOFT kernels use it."""
    t = get_target("avx512" if get_target("avx512").runnable else "avx2")
    for layout in ("nn", "tn"):
        for sched in (None, _small(t.name)):
            g = G.gemm(t, layout, schedule=sched, direct_b=True, name=f"direct_{layout}")
            packed = G.gemm(t, layout, schedule=sched, name=f"packed_{layout}")
            assert "the tiles read B in place" in g.source and "in place" not in packed.source
            lib = GemmLibrary([g, packed])
            cases = [cs for cs in _cases(g, np.random.default_rng(3)) if cs[0] * cs[1] * cs[2] <= 400_000]
            assert any(n % g.nr == 0 for _, n, *_ in cases) and any(n % g.nr for _, n, *_ in cases)
            for m, n, k, alpha, beta, a, b, c, cbuf in cases:
                c0, c1 = c.copy(), c.copy()
                assert lib(g, a, b, c, alpha, beta) == 0 and lib(packed, a, b, c1, alpha, beta) == 0
                _check(g, m, n, k, alpha, beta, a, b, c0, c, cbuf)
                np.testing.assert_array_equal(c, c1)
        gp = _GuardPage()   # B ends at an inaccessible page: a partial panel read in place faults
        n, k = g.nr + 3, 9
        b = gp.array(k, n, n, 0.0)
        b[...] = np.random.default_rng(4).standard_normal(b.shape)
        a = np.ones((k, 5) if layout == "tn" else (5, k), np.float32)
        c = np.empty((5, n), np.float32)
        assert lib(g, a, b, c, 1.0, 0.0) == 0
        np.testing.assert_allclose(c, (a.T if layout == "tn" else a).astype(np.float64) @ b, rtol=1e-5)
    assert G.gemm(t, "nt", direct_b=True).source == G.gemm(t, "nt").source
    assert "the tiles read B in place" in "".join(str(x) for x in pooled_kernel(5, True).sources().values())


def views(b, lq, lk, hq, hkv, d, dv):
    """q, k, v as (B, H, L, d) views of (B, L, H, d) arrays (heads strided, not contiguous)."""
    q = f32(b, lq, hq, d, scale=2.0).transpose(0, 2, 1, 3)
    k = f32(b, lk, hkv, d, scale=2.0).transpose(0, 2, 1, 3)
    v = f32(b, lk, hkv, dv).transpose(0, 2, 1, 3)
    return q, k, v



def test_strided_heads(soft_tied):
    """Sinkhorn and pooled SOFT take abi.ATTENTION's per-(batch, head) strides: (B, L, H, d) arrays
    transposed to (B, H, L, d), GQA kv heads and a mask broadcast over batch and heads are read
    where they are (the bound pointers are the views'), with the same bits as contiguous copies;
    kv_lengths as the additive mask they make, a mask broadcast along the keys copied row by row."""
    sk = sinkhorn_kernel(None)
    q, k, v = views(2, 13, 11, 4, 2, 16, 5)
    m = additive(keep_mask(13, 11, dead_row=4, dead_key=3), 1)[0]          # (Lq, Lk): every (batch, head)
    assert sk._abi.kind == "attention" and sk.program.strided
    args = bind(sk._abi, sk.name, (q, k, v, m), None).args
    assert args[:3] == tuple(a.__array_interface__["data"][0] for a in (q, k, v))   # no copies
    o = check_strided_heads(sk, q, k, v, m)
    front = softgen.attention(q, k, v, normalizer="sinkhorn", mask=m == 0, masked_rows="zero")
    np.testing.assert_array_equal(front, np.where(np.isnan(o), 0, o))
    pad = np.where(np.arange(11) < np.array([11, 0])[:, None, None, None], np.float32(0), np.float32(-np.inf))
    np.testing.assert_array_equal(sk(q, k, v, m, kv_lengths=np.array([11, 0])),   # in the kernel: as a mask
                                  sk(q, k, v, np.ascontiguousarray(m + pad)))
    b = np.broadcast_to(m[:, :1], (13, 11))   # a mask broadcast along the keys: its rows copied
    np.testing.assert_array_equal(sk(q, k, v, b), sk(q, k, v, np.ascontiguousarray(b)))
    for tied, (lq, lk, hq, hkv) in ((True, (20, 20, 3, 3)), (False, (9, 40, 4, 2))):
        sp = pooled_kernel(5, tied)
        q, k, v = views(2, lq, lk, hq, hkv, 16, 6)
        if tied:
            k, v = q, views(2, lq, lq, hq, hq, 16, 6)[2]
        o = sp(q, k, v)
        np.testing.assert_array_equal(o, sp(*contiguous_heads(q, k, v)))
        check_attention(sp, o, *contiguous_heads(q, k, v))
        np.testing.assert_array_equal(softgen.attention(q, k, v, normalizer="soft", landmarks=5), o)
    qq, _, vv = views(1, 10, 10, 2, 2, 16, 6)
    with pytest.raises(ValueError, match="lk != lq"):                # tied: k is q
        pooled_kernel(5, True)(qq[:, :, :8], qq, vv)


def test_soft_tied_front_door(soft_tied):
    q, v = f32(2, 30, 16, scale=2.0), f32(2, 30, 6)
    lm = f32_pool(q, 5)
    tied = soft_tied(q, q, v, lm)
    np.testing.assert_array_equal(softgen.attention(q, q, v, normalizer="soft", landmarks=5), tied)  # k is q
    np.testing.assert_array_equal(pooled_kernel(5, True)(q, q, v), tied)   # pooled in the kernel
    kc = q.copy()
    untied = softgen.attention(q, kc, v, normalizer="soft", landmarks=5)     # equal values, not k is q
    np.testing.assert_array_equal(untied, softgen.compile("attention", normalizer="soft", head_dim=16)(q, kc, v, lm))
    np.testing.assert_array_equal(softgen.attention(q, kc, v, normalizer="soft", landmarks=5, tied=1), tied)
    np.testing.assert_array_equal(softgen.attention(q, q, v, normalizer="soft", landmarks=5, tied=0), untied)
    with pytest.raises(UsageError, match="k must be q"):
        softgen.attention(q, f32(2, 30, 16), v, normalizer="soft", landmarks=5, tied=1)
    for kw in ({"normalizer": "sinkhorn", "tied": 1}, {"normalizer": "soft", "tied": 2}):
        with pytest.raises(UsageError, match="tied"):
            build_program("attention", head_dim=16, **kw)


def test_refusals():
    q, v = f32(1, 5, 4), f32(1, 5, 3)
    with pytest.raises(UsageError, match="not causal"):
        softgen.attention(q, q, v, normalizer="sinkhorn", causal=True)
    for kw in ({"causal": True}, {"mask": np.ones((5, 5), bool)}, {"scale": 0.5}):
        with pytest.raises(UsageError, match="global linear form"):
            softgen.attention(q, q, v, normalizer="soft", **kw)
    with pytest.raises(UsageError, match="n_iter is a parameter"):
        build_program("attention", n_iter=2)
    with pytest.raises(UsageError, match="eps is a parameter"):
        build_program("attention", normalizer="soft", eps=0.5)
    with pytest.raises(UsageError, match="landmarks is a parameter"):
        softgen.attention(q, q, v, normalizer="sinkhorn", landmarks=2)
    for bad in (0, 2.5, True, np.zeros((1, 2, 3), np.float32)):
        with pytest.raises(UsageError, match="landmarks"):
            softgen.attention(q, q, v, normalizer="soft", landmarks=bad)
    with pytest.raises(UsageError, match="n_iter"):
        build_program("attention", normalizer="sinkhorn", n_iter=0)
    with pytest.raises(UsageError, match="eps"):
        build_program("attention", normalizer="sinkhorn", eps=-1.0)


# -- other backends and targets: once each ----------------------------------------------------------

def test_tvm_sinkhorn_and_soft():
    pytest.importorskip("tvm")
    sk = softgen.compile("attention", normalizer="sinkhorn", head_dim=16, mask="additive", backend="tvm")
    c = (f32(2, 6, 7, scale=2.0), f32(2, 9, 7, scale=2.0), f32(2, 9, 5))
    cm = c + (additive(keep_mask(6, 9, dead_row=2, dead_key=3), 2),)
    check_attention(sk, sk(*cm), *cm)
    so = softgen.compile("attention", normalizer="soft", head_dim=16, backend="tvm")
    c = soft_case(17, 40, 9, 5, 4, False)
    check_attention(so, so(*c), *c)
    st = softgen.compile("attention", normalizer="soft", head_dim=16, backend="tvm", tied=1, landmarks=4)
    q, k, v, _ = soft_case(17, 17, 9, 5, 4, True)      # the landmarks pooled by the (C) matrix entry
    check_attention(st, st(q, k, v), q, k, v)


def test_neon_sinkhorn_and_soft():
    sk = softgen.compile("attention", normalizer="sinkhorn", head_dim=16, mask="additive", target="neon")
    so = softgen.compile("attention", normalizer="soft", head_dim=16, target="neon")
    c = (f32(2, 6, 7, scale=2.0), f32(2, 9, 7, scale=2.0), f32(2, 9, 5))
    cm = c + (additive(keep_mask(6, 9, dead_row=2, dead_key=3), 2),)
    check_attention(sk, run_cases(sk, [cm])[0], *cm)
    cs = soft_case(17, 40, 9, 5, 4, False)
    check_attention(so, run_cases(so, [cs])[0], *cs)
    sp = softgen.compile("attention", normalizer="soft", head_dim=16, landmarks=7, target="neon")   # pooled: mr 7
    q, k, v, _ = soft_case(9, 50, 20, 5, 7, False)
    check_attention(sp, run_cases(sp, [(q, k, v)])[0], q, k, v)
