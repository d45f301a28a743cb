"""softplus_l1, LSSA and LSSAR attention (issue 14, docs/ops.md §5, §10): the float64 oracles'
conventions (cosine scores times log d log N_i, N_i from the masks, bottom-right positions for causal
and LSSAR's O_i), the three-phase kernels against them (C on every target, neon under qemu once,
TVM: lssar, the others with -m slow), the front door and its errors. All three stream (C, the explicit-stride
kernel: auto picks it): against the oracle in small blocks, equal to three-phase through the front
door (masks, kv_lengths, GQA, lse), bitwise for any thread count; TVM's streaming form too (the
host kernels' cases, equal to C's through the front door). Kernels are shared per module."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import check_attention, run_cases

import softgen
from softgen import reference as ref
from softgen.backends.tvm_adapter import available as tvm_available
from softgen.ops import get_op

RNG = np.random.default_rng(1405)
NORMS = ["softplus_l1", "lssa", "lssar"]
STREAMED = NORMS   # softplus_l1, lssa: no rescaling; lssar: two passes over K
SMALL = {"br": 3, "bc": 16}     # streaming in small blocks: 1 .. 5 key blocks per row

OP = get_op("attention")


@pytest.fixture(autouse=True)
def _tvm_streaming_draws_apart(request):
    """TVM's streaming tests draw from a stream of their own (restored after): the other tests'
    inputs are the same whether or not they ran (files run in order on one worker)."""
    name = request.node.name
    if "streaming-tvm" not in name and not name.startswith("test_tvm_stream"):
        yield
        return
    saved = RNG.bit_generator.state
    RNG.bit_generator.state = np.random.default_rng(1414).bit_generator.state
    yield
    RNG.bit_generator.state = saved


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def check(k, q, kk, v, o, mask=None):
    """o within the op's tolerance of the float64 oracle; NaN exactly where the oracle's is."""
    check_attention(k, o, q, kk, v, *(() if mask is None else (mask,)))


def bias(lq, lk, batch=2, keep=0.75):
    """An additive mask: -inf drops (row 1 of batch 0 fully masked), small finite biases elsewhere."""
    m = np.where(RNG.random((batch, lq, lk)) < keep, RNG.uniform(-0.5, 0.5, (batch, lq, lk)), -np.inf)
    if lq > 1:
        m[0, 1] = -np.inf
    return m.astype(np.float32)


# -- the oracles ----------------------------------------------------------------------------------

def _cos(q, k):
    return (q / np.linalg.norm(q, axis=-1, keepdims=True)) @ (k / np.linalg.norm(k, axis=-1, keepdims=True)).T


def test_lssa_oracle_is_the_row_op_on_masked_cosines():
    """Bottom-right causal rows keep N_i = i + 1 + Lk - Lq keys; LSSA is the row op lssa on the
    cosines with dropped keys at -inf; LSSAR is reweight_of with O_i from the query's position."""
    q, k, v = RNG.standard_normal((5, 6)), RNG.standard_normal((9, 6)), RNG.standard_normal((9, 3))
    c = np.where(np.arange(9)[None] <= np.arange(5)[:, None] + 4, _cos(q, k), -np.inf)
    a, n, _ = ref.lssa_attention_weights(q, k, causal=True)
    np.testing.assert_array_equal(n, np.arange(5) + 5)
    np.testing.assert_allclose(a, ref.lssa(c, 6), rtol=1e-14)
    np.testing.assert_allclose(ref.lssa_attention(q, k, v, causal=True), ref.lssa(c, 6) @ v, rtol=1e-13)
    w, _ = ref.lssar_attention_weights(q, k, causal=True, p=3, offset_free_rows=6)
    np.testing.assert_allclose(w, ref.reweight_of(a, n, np.array([0, 0, 1, 1, 1.0]), 3), rtol=1e-14)
    assert list(ref.lssar_offsets(1, 1000)) == [1] and list(ref.lssar_offsets(4, 4)) == [0, 0, 0, 1]
    # the same query decoded alone against the cache (Lq = 1): the same row
    np.testing.assert_allclose(ref.lssar_attention(q[4:], k, v, causal=True), ref.lssar_attention(q, k, v, causal=True)[4:],
                               rtol=1e-13)


def test_oracle_masks_scale_invariance_and_conventions():
    q, k, v = RNG.standard_normal((2, 4, 3, 5)), RNG.standard_normal((2, 2, 7, 5)), RNG.standard_normal((2, 2, 7, 2))
    m = RNG.random((3, 7)) < 0.6
    m[:, 0], m[1] = True, False
    for norm in ("lssa", "lssar"):
        o = ref.attention(q, k, v, normalizer=norm, mask=m)
        # masked keys are excluded, not just weighted 0: dropping them changes nothing (N_i too)
        keep = np.flatnonzero(m[2])
        np.testing.assert_allclose(o[..., 2, :], ref.attention(q[..., 2:, :], k[..., keep, :], v[..., keep, :],
                                                                 normalizer=norm)[..., 0, :], rtol=1e-12)
        assert np.isnan(o[..., 1, :]).all()
        assert (ref.attention(q, k, v, normalizer=norm, mask=m, masked_rows="zero")[..., 1, :] == 0).all()
        # cosines: a positive scale of q or k changes nothing; GQA: query head h reads kv head h // 2
        np.testing.assert_allclose(ref.attention(3 * q, k / 7, v, normalizer=norm, mask=m), o, rtol=1e-12)
        np.testing.assert_allclose(o[1, 3], ref.attention(q[1, 3], k[1, 1], v[1, 1], normalizer=norm, mask=m), rtol=1e-12)
    # softplus_l1: the row op on s Q K^T (-inf -> weight 0)
    s = np.where(m, q[0, 0] @ k[0, 0].T / math.sqrt(5), -np.inf)
    np.testing.assert_allclose(ref.attention(q[0, 0], k[0, 0], v[0, 0], normalizer="softplus_l1", mask=m),
                               ref.softplus_l1(s) @ v[0, 0], rtol=1e-13)
    # LSSAR past the offset-free rows: uniform attention (d = 1: lambda = 0) gives zeros
    o = ref.lssar_attention(np.ones((5, 1)), np.ones((6, 1)), np.ones((6, 1)))
    assert (o[3:] == 0).all() and np.isfinite(o).all()
    with pytest.raises(ValueError, match="no scale"):
        ref.attention(q, k, v, normalizer="lssa", scale=0.5)
    with pytest.raises(ValueError, match="lssar"):
        ref.attention(q, k, v, normalizer="softmax", p=3)


# -- the kernels ----------------------------------------------------------------------------------

# Lq, Lk, d, dv: Lq != Lk both ways, d and dv 1, 7, 65 (not multiples of any vector width)
SHAPES = [(1, 1, 1, 1), (5, 9, 7, 7), (17, 40, 65, 1), (33, 16, 7, 65), (1, 70, 65, 7)]


@pytest.fixture(scope="module", params=NORMS)
def norm(request):
    return request.param


@pytest.fixture(scope="module", params=[(n, "three-phase", "c") for n in NORMS] + [(n, "streaming", "c") for n in STREAMED]
                + [(n, "streaming", "tvm") for n in STREAMED], ids=lambda p: "-".join(p))
def host_kernels(request):
    """(plain, causal with an additive mask) kernels of the normalizer on the host; streaming in
    small blocks (several key blocks per row, rows of a query block with different fates; TVM:
    query blocks of 1 .. 3 rows in its 16 lanes, decoding blocks' dot products included)."""
    norm_, alg, backend = request.param
    if backend == "tvm" and not tvm_available()[0]:
        pytest.skip(f"TVM backend: {tvm_available()[1]}")
    sched = SMALL if alg == "streaming" else None
    ks = [softgen.compile("attention", normalizer=norm_, head_dim=7, algorithm=alg, schedule=sched, backend=backend, **kw)
          for kw in ({}, {"causal": True, "mask": "additive"})]
    assert all(k.algorithm == alg and k.backend == backend for k in ks)
    return ks


def cases(masked):
    out = []
    for lq, lk, d, dv in SHAPES:
        c = (f32(2, lq, d), f32(2, lk, d), f32(2, lk, dv))
        out.append(c + ((bias(lq, lk),) if masked else ()))
    return out


def test_kernel_matches_the_oracle(host_kernels):
    for k, masked in zip(host_kernels, (False, True)):
        for c in cases(masked):
            check(k, *c[:3], k(*c), c[3] if masked else None)


def test_non_finite_and_huge_inputs(host_kernels):
    plain, masked = host_kernels
    q, kk, v = f32(1, 6, 7), f32(1, 10, 7), f32(1, 10, 3)
    q[0, 0, 0] = np.nan            # NaN scores: a NaN row
    kk[0, 3, 0] = np.inf           # an infinite key: NaN in every row that keeps it
    q[0, 2] *= 1e30                # huge and tiny (finite) vectors: cosines stay exact,
    q[0, 3] *= 1e-30               # softplus(s x) of huge s x is s x
    q[0, 5] *= 30.0
    check(plain, q, kk, v, plain(q, kk, v))
    m = np.zeros((1, 6, 10), np.float32)
    m[0, :, 3] = -np.inf           # the infinite key masked: NaN row 0 stays
    o = masked(q, kk, v, m)
    check(masked, q, kk, v, o, m)
    if masked.params["normalizer"] != "softplus_l1":   # (softplus_l1: +inf - inf = NaN, as softmax's)
        assert np.isfinite(o[0, 1:]).all()   # lssa, lssar: a dropped key is excluded whatever its score
    # every kept score far below 0 (softplus underflows in float32): weighted as softmax
    q2, k2 = np.ones((1, 3, 7), np.float32), -np.abs(f32(1, 4, 7)) - 20
    check(plain, q2 * 3, k2, v[:, :4], plain(q2 * 3, k2, v[:, :4]))


def test_causal_rows_positions_and_fully_masked_rows(host_kernels):
    """Lq > Lk causal: the first rows see no key (NaN); LSSAR's offset-free rows are the first
    positions of the cache, not of the query block."""
    _, k = host_kernels
    for lq, lk in ((9, 4), (4, 9), (3, 3)):
        q, kk, v = f32(2, lq, 7), f32(2, lk, 7), f32(2, lk, 3)
        m = np.zeros((2, lq, lk), np.float32)
        o = k(q, kk, v, m)
        check(k, q, kk, v, o, m)
        assert np.isnan(o[:, :max(lq - lk, 0)]).all() and np.isfinite(o[:, max(lq - lk, 0):]).all()


@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
def test_targets(target, norm):
    k = softgen.compile("attention", normalizer=norm, head_dim=65, causal=True, mask="additive", target=target)
    cs = cases(True)
    for c, o in zip(cs, run_cases(k, cs)):
        check(k, *c[:3], o, c[3])


def test_neon_under_qemu():
    """One qemu run: lssar (the longest rows program: lssa's sums, then the re-weighting)."""
    k = softgen.compile("attention", normalizer="lssar", head_dim=7, causal=True, mask="additive", target="neon")
    cs = cases(True)[:4]
    for c, o in zip(cs, run_cases(k, cs)):
        check(k, *c[:3], o, c[3])


# lssar by default (its rows program runs lssa's, then the re-weighting); softplus_l1 and lssa with
# -m slow: C runs all three on every target, TVM streams all three below, and TVM's rows kernels
# of each are tests/test_kernels.py's
@pytest.mark.parametrize("norm", [pytest.param(n, marks=[pytest.mark.slow] if n != "lssar" else []) for n in NORMS])
def test_tvm_three_phase(norm):
    ok, why = tvm_available()
    if not ok:
        pytest.skip(f"TVM backend: {why}")
    # lssar with p = 3: the same program as p = 15 with two squarings fewer, a faster TVM build
    extra = {"p": 3} if norm == "lssar" else {}
    k = softgen.compile("attention", backend="tvm", normalizer=norm, causal=True, mask="additive", head_dim=7,
                        algorithm="three-phase", **extra)
    assert k.algorithm == "three-phase"
    for c in cases(True)[1:3]:
        check(k, *c[:3], k(*c), c[3])


def test_lssar_streams_noncausal_with_its_offsets():
    """lssar's rows program reads the row index for O_i: the streaming form must not take that
    for the causal diagonal (every key visible), and O_i follows the position with Lq != Lk."""
    k = softgen.compile("attention", normalizer="lssar", head_dim=7, p=3)
    q, kk, v = f32(2, 6, 7), f32(2, 4, 7), f32(2, 4, 5)
    check(k, q, kk, v, k(q, kk, v))
    assert k.algorithm == "streaming" and "^T) @ v" in k.explain() and "causal)" not in k.explain()


def _softplus_lse(q, kk, causal, keep, lens):
    """The float64 log of softplus_l1's weights' sum per row (GQA, bool keep-mask, kv_lengths):
    log sum_j softplus(s_ij) over the kept keys; -inf for a row with none."""
    s = ref._attention_scores(q, kk, 1 / math.sqrt(q.shape[-1]), causal, np.where(keep, 0.0, -np.inf),
                              lens)
    with np.errstate(divide="ignore"):
        return np.log(ref.softplus(s).sum(-1))


@pytest.mark.parametrize("norm_", STREAMED)
def test_streaming_equals_three_phase(norm_):
    """The front door's streaming form (explicit strides: GQA, a bool mask, kv_lengths, lse) ==
    three-phase (to float32 rounding) == the oracle, Lq != Lk, d and dv in {1, 7, 65}; a row whose
    every kept score is below SOFTPLUS_TINY (the second pass), a fully masked row, NaN and inf
    inputs; bitwise the same for threads 1..3. mask='bool' builds streaming (auto)."""
    for (lq, lk, d, dv), causal in zip(((5, 70, 7, 65), (70, 9, 65, 1), (33, 33, 1, 7)), (True, False, True)):
        q, kk, v = f32(2, 4, lq, d), f32(2, 2, lk, d), f32(2, 2, lk, dv)
        q[1, 2, 3], kk[1] = -np.abs(q[1, 2, 3]) - 3, np.abs(kk[1]) + 3   # row (1, 2, 3): scores below -20
        keep = RNG.random((4, lq, lk)) < 0.8
        # (., 1, 4 % lq): fully masked. Key 2 (inf in kv head 1) kept: a NaN row in every form
        keep[:, :, -1], keep[:, :, 2], keep[1, 4 % lq] = True, True, False
        lens = np.array([lk, max(lk // 2, 1)])
        if d > 1:
            q[0, 0, 0, 0], kk[0, 1, 2, 1] = np.nan, np.inf                  # NaN rows
        kw = dict(normalizer=norm_, causal=causal, mask=keep, kv_lengths=lens)
        o, lse = softgen.attention(q, kk, v, return_lse=True, threads=1, **kw)
        for t in (2, 3):
            o2, lse2 = softgen.attention(q, kk, v, return_lse=True, threads=t, **kw)
            assert np.array_equal(o2, o, equal_nan=True) and np.array_equal(lse2, lse, equal_nan=True)
        o3 = softgen.attention(q, kk, v, algorithm="three-phase", **kw)
        r = ref.attention(q, kk, v, **kw)
        nan = np.isnan(r)
        assert np.array_equal(np.isnan(o), nan) and np.array_equal(np.isnan(o3), nan)
        # |v| ~ 1: sums cancel; lssar's power p = 15 amplifies float32 rounding near R = 0
        tol = 1e-3 if norm_ == "lssar" else 1e-5
        np.testing.assert_allclose(o[~nan], o3[~nan], rtol=tol, atol=tol)
        np.testing.assert_allclose(o[~nan], r[~nan], rtol=2e-4, atol=2e-5)
        if norm_ != "softplus_l1":   # lse: log sum_j a_ij (lssa's sum), -inf for a row with no kept key
            assert np.array_equal(lse == -np.inf, (~keep[None] | (np.arange(lk) >= lens[:, None, None, None])
                                                   | (causal & (np.arange(lk) > np.arange(lq)[:, None] + lk - lq))).all(-1))
            continue
        rl = _softplus_lse(q, kk, causal, keep, lens)
        assert np.array_equal(np.isnan(lse), np.isnan(rl)) and np.array_equal(lse == -np.inf, rl == -np.inf)
        fin = np.isfinite(rl)
        np.testing.assert_allclose(lse[fin], rl[fin], rtol=1e-5, atol=1e-5)
        assert (lse == -np.inf).any() and (d == 1 or (rl[fin] < -15).any())   # the masked row; the second pass's
    assert softgen.compile("attention", normalizer=norm_, mask="bool", head_dim=7).algorithm == "streaming"


@pytest.mark.parametrize("norm_", STREAMED)
def test_tvm_streams_like_c(norm_):
    """TVM's streaming form through the front door (auto streams): GQA, strided (B, L, H, d) views,
    a bool mask, kv_lengths (0 included), lse, causal with Lq < Lk and Lq > 16 (whole query blocks
    and a decoding row), a row below SOFTPLUS_TINY (the second pass), a fully masked row, a NaN
    row, keys of huge and tiny norms (lssa, lssar: sum k^2 over- or underflows, 1 / |k_j| takes the
    scaled form, in the key norms' stage and in the decoding blocks): equal to the C streaming
    kernel within float32 rounding, bitwise for threads 1 and 2. lssar: equal keys give 0."""
    if not tvm_available()[0]:
        pytest.skip(f"TVM backend: {tvm_available()[1]}")
    lq, lk, d, dv = 21, 70, 7, 9
    x = f32(2, lk, 8, d)
    q, kk, v = x[:, :lq, :4].transpose(0, 2, 1, 3), x[:, :, 4:6].transpose(0, 2, 1, 3), f32(2, 2, lk, dv)
    q[1, 2, 3], kk[1] = -np.abs(q[1, 2, 3]) - 3, np.abs(kk[1]) + 3   # row (1, 2, 3): scores below -20
    q[0, 0, 5, 0] = np.nan
    if norm_ != "softplus_l1":   # (softplus_l1's scores are dot products: these would overflow)
        kk[0, 0, 5] *= 1e25
        kk[0, 1, 66] *= 1e-25
    keep = RNG.random((4, lq, lk)) < 0.8
    keep[:, :, -1], keep[1, 4] = True, False
    kw = dict(normalizer=norm_, causal=True, mask=keep, kv_lengths=np.array([lk, 0]), return_lse=True)
    o, lse = softgen.attention(q, kk, v, backend="tvm", threads=1, **kw)
    o2, lse2 = softgen.attention(q, kk, v, backend="tvm", threads=2, **kw)
    assert np.array_equal(o2, o, equal_nan=True) and np.array_equal(lse2, lse, equal_nan=True)
    oc, lc = softgen.attention(q, kk, v, **kw)
    r = ref.attention(q, kk, v, **{a: b for a, b in kw.items() if a != "return_lse"})
    nan = np.isnan(r)
    assert np.array_equal(np.isnan(o), nan) and nan[0, 0, 5].all() and nan[0, 1, 4].all() and nan[1].all()
    tol = 1e-3 if norm_ == "lssar" else 1e-5   # lssar's p = 15 amplifies rounding near R = 0
    np.testing.assert_allclose(o[~nan], oc[~nan], rtol=tol, atol=tol)
    np.testing.assert_allclose(o[~nan], r[~nan], rtol=2e-4, atol=2e-5)
    assert np.array_equal(np.isnan(lse), np.isnan(lc)) and np.array_equal(lse == -np.inf, lc == -np.inf)
    fin = np.isfinite(lc)
    np.testing.assert_allclose(lse[fin], lc[fin], rtol=1e-5, atol=1e-5)
    # the decoding row of the same cache (Lq = 1: TVM's dot-product blocks) is the last row's
    od = softgen.attention(q[:, :, -1:], kk, v, backend="tvm", **{a: b if a != "mask" else b[:, -1:]
                                                                   for a, b in kw.items() if a != "return_lse"})
    np.testing.assert_allclose(od, o[:, :, -1:], rtol=tol, atol=tol)
    rd = ref.attention(q[:, :, -1:], kk, v, **{a: b if a != "mask" else b[:, -1:] for a, b in kw.items() if a != "return_lse"})
    np.testing.assert_allclose(od[~nan[:, :, -1:]], rd[~nan[:, :, -1:]], rtol=2e-4, atol=2e-5)
    if norm_ == "lssar":   # equal keys (uniform attention) past the offset-free rows: R = 0, O = 0
        kw["mask"], eq = np.ones_like(keep), np.repeat(kk[:, :, :1], lk, axis=2)
        o = softgen.attention(q, eq, v, backend="tvm", **{a: b for a, b in kw.items() if a != "return_lse"})
        assert np.isnan(o[0, 0, 5]).all() and np.isnan(o[1]).all()   # the NaN query; no keys (kv_lengths 0)
        o[0, 0, 5] = 0
        assert (o[0] == 0).all()


@pytest.mark.parametrize("p", [1, 2.5])
def test_tvm_streaming_lssar_powers(p):
    """lssar's power on TVM's streaming form: p = 1 (q = x itself, read before S is overwritten) and
    a non-integer p (e^(p log x)), against the oracle in small blocks."""
    if not tvm_available()[0]:
        pytest.skip(f"TVM backend: {tvm_available()[1]}")
    k = softgen.compile("attention", backend="tvm", normalizer="lssar", p=p, head_dim=7, causal=True, mask="additive",
                        algorithm="streaming", schedule=SMALL)
    for c in cases(True)[1:3]:
        check(k, *c[:3], k(*c), c[3])


@pytest.mark.parametrize("norm_", STREAMED)
def test_streaming_neon_under_qemu(norm_):
    """One qemu run per streaming normalizer (small blocks; softplus_l1: the second pass included)."""
    k = softgen.compile("attention", normalizer=norm_, head_dim=7, causal=True, mask="additive",
                        target="neon", algorithm="streaming", schedule=SMALL)
    cs = cases(True)[1:3]
    cs[0][0][1, 2], cs[0][1][1] = -np.abs(cs[0][0][1, 2]) - 3, np.abs(cs[0][1][1]) + 3
    for c, o in zip(cs, run_cases(k, cs)):
        check(k, *c[:3], o, c[3])


def _decode_inputs(lq, lk=150, d=49, dv=7):
    """GQA (4 query heads on 2 kv heads), d = 49 (the dot products' two-vector, one-vector and
    tail loops on avx512), keys and queries of huge and tiny norms (q . k would over- or underflow
    in float32: those scores are taken from the unit vectors) and one zero key (NaN where kept)."""
    q, kk, v = f32(2, 4, lq, d), f32(2, 2, lk, d), f32(2, 2, lk, dv)
    kk[0, 0, 5] *= 1e25
    kk[1, 1, 7] *= 1e-25
    kk[0, 1, 9] *= 1e30
    q[0, 0, -1] *= 1e20
    q[1, 2, 0] *= 1e-20
    kk[1, 0, 50] = 0.0             # a zero key: cosine NaN, so every row keeping it is NaN
    return q, kk, v


@pytest.mark.parametrize("norm_, extra", [("lssa", {}), ("lssar", {}), ("lssar", {"p": 2.5})],
                         ids=["lssa", "lssar-p15", "lssar-p2.5"])
def test_decoding_gqa_kv_lengths_and_extreme_norms(norm_, extra):
    """Lq <= 16 (decoding: dot products over K's rows, 1 / |k_j| from the same loads, no K^T) with
    the default blocks, GQA, kv_lengths, causal: the oracle's values; the last query row decoded alone
    equals that row of a prefill call (Lq > 16: unit keys in K^T) to float32 rounding. lssar: p = 15
    (repeated squaring) and p = 2.5 (e^(p log x))."""
    lens = np.array([150, 77])
    for lq in (1, 3):
        q, kk, v = _decode_inputs(lq)
        kw = dict(normalizer=norm_, causal=True, kv_lengths=lens, **extra)
        o = softgen.attention(q, kk, v, threads=1, **kw)
        r = ref.attention(q, kk, v, **kw)
        nan = np.isnan(r)
        assert np.array_equal(np.isnan(o), nan) and nan[1, :2].all() and not nan[0].any()
        np.testing.assert_allclose(o[~nan], r[~nan], rtol=2e-4, atol=2e-5)
    qp = f32(2, 4, 40, 49)
    qp[..., -1, :] = q[..., -1, :]
    kw = dict(normalizer=norm_, causal=True, **extra)
    prefill = softgen.attention(qp, kk, v, **kw)[..., -1:, :]
    decode = softgen.attention(q[..., -1:, :], kk, v, **kw)
    nan = np.isnan(prefill)
    assert np.array_equal(np.isnan(decode), nan) and nan[1, :2].all()
    tol = 1e-3 if norm_ == "lssar" else 1e-5   # lssar: p amplifies float32 rounding near R = 0
    np.testing.assert_allclose(decode[~nan], prefill[~nan], rtol=tol, atol=tol)
    if norm_ == "lssar":   # equal keys (uniform attention) past the offset-free rows: R = 0, O = 0
        for lq in (5, 20):
            o = softgen.attention(f32(1, 1, lq, 49), np.repeat(f32(1, 1, 1, 49), 40, axis=2), f32(1, 1, 40, 7), **kw)
            assert (o == 0).all()


# -- the front door -------------------------------------------------------------------------------

def test_api_gqa_masks_lengths_and_params():
    q, kk, v = f32(2, 4, 5, 7), f32(2, 2, 11, 7), f32(2, 2, 11, 3)
    m = RNG.random((5, 11)) < 0.7
    m[:, 0], m[2] = True, False
    lens = np.array([11, 6])
    # (causal with a mask: the host kernels' builds)
    for norm, extra in (("softplus_l1", {}), ("lssa", {}), ("lssar", {}), ("lssar", {"p": 3, "offset_free_rows": 0})):
        kw = {"mask": m, "causal": True} if norm != "lssar" or extra else {"causal": True, "kv_lengths": lens,
                                                                          "masked_rows": "zero"}
        o = softgen.attention(q, kk, v, normalizer=norm, **kw, **extra)
        r = ref.attention(q, kk, v, normalizer=norm, **kw, **extra)
        assert np.array_equal(np.isnan(o), np.isnan(r)) and np.isnan(r).any() == ("mask" in kw)
        np.testing.assert_allclose(o[~np.isnan(o)], r[~np.isnan(r)], rtol=2e-4, atol=2e-5)
    k = softgen.compile("attention", normalizer="lssar", p=3, offset_free_rows=0, head_dim=7, causal=True,
                        mask="additive")
    assert k.params["p"] == 3 and k.params["offset_free_rows"] == 0 and k.algorithm == "streaming"
    assert "p" not in softgen.compile("attention").params   # other normalizers' kernels: unchanged


def test_api_errors():
    q = f32(3, 4)
    with pytest.raises(softgen.UsageError, match="takes no scale"):
        softgen.attention(q, q, q, normalizer="lssa", scale=0.5)
    with pytest.raises(softgen.UsageError, match="lssar attention's parameters"):
        softgen.attention(q, q, q, normalizer="lssa", p=3)
    with pytest.raises(softgen.UsageError, match="lssar attention's parameters"):
        softgen.compile("attention", offset_free_rows=2)
    with pytest.raises(softgen.UsageError, match="p must be > 0"):
        softgen.compile("attention", normalizer="lssar", p=0)
    with pytest.raises(softgen.UsageError, match="offset_free_rows"):
        softgen.compile("attention", normalizer="lssar", offset_free_rows=1.5)
    with pytest.raises(softgen.UsageError, match="is unknown: attention supports .*softplus_l1, lssa, lssar"):
        softgen.attention(q, q, q, normalizer="nope")
