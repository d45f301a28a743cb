"""Attention (issue 14, docs/ops.md §10): the float64 oracles, the three-phase kernel against them (C
backend; scalar/avx2/avx512 natively or emulated, neon under qemu), softgen.attention's front door
(GQA, masks, kv_lengths, masked rows, strided heads, bad input), torch SDPA where installed, the
exported library called from C. Kernels are shared per module (one per target x causal x mask)."""
from __future__ import annotations

import ctypes
import math
import shutil
import subprocess

import numpy as np
import pytest
from conftest import _can_emulate, check_attention, check_strided_heads, own_cache, run_cases

import softgen
from softgen import reference as ref
from softgen.backends.attention import SPLIT_KEYS
from softgen.ops import get_op
from softgen.targets import get_target
from softgen.tune import attention_candidates

RNG = np.random.default_rng(14)


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def check(k, q, kk, v, o, mask=None):
    """o within the op's tolerance of the float64 oracle; NaN exactly where the oracle's is."""
    check_attention(k, o, q, kk, v, *(() if mask is None else (mask,)))


# -- the oracles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_online_oracle_equals_three_phase_oracle(causal):
    q, k, v = RNG.standard_normal((2, 4, 7, 5)), RNG.standard_normal((2, 2, 33, 5)), RNG.standard_normal((2, 2, 33, 3))
    mask = RNG.random((7, 33)) < 0.7
    lens = np.array([33, 4])
    for kw in ({}, {"mask": mask}, {"kv_lengths": lens}, {"mask": mask, "kv_lengths": lens, "masked_rows": "zero"}):
        a, la = ref.attention(q, k, v, causal=causal, return_lse=True, **kw)
        for block in (1, 4, 16, 64):
            b, lb = ref.attention_online_softmax(q, k, v, causal=causal, block=block, return_lse=True, **kw)
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(lb, la, rtol=1e-12, atol=1e-12)


def test_oracle_conventions():
    q, k, v = RNG.standard_normal((1, 3, 4)), RNG.standard_normal((1, 5, 4)), RNG.standard_normal((1, 5, 2))
    # bottom-right causal: query i sees keys j <= i + Lk - Lq; Lq > Lk: the first rows see none
    o = ref.attention(q, k, v, causal=True)
    full = ref.attention(q[:, 2:], k, v)
    np.testing.assert_allclose(o[:, 2], full[:, 0], rtol=1e-13)
    o2 = ref.attention(k, q, q[..., :2], causal=True)          # Lq = 5 > Lk = 3: rows 0, 1 masked
    assert np.isnan(o2[0, :2]).all() and np.isfinite(o2[0, 2:]).all()
    assert (ref.attention(k, q, q[..., :2], causal=True, masked_rows="zero")[0, :2] == 0).all()
    # GQA: query head h reads kv head h // (Hq // Hkv)
    q4, k2, v2 = RNG.standard_normal((4, 3, 4)), RNG.standard_normal((2, 5, 4)), RNG.standard_normal((2, 5, 2))
    o = ref.attention(q4, k2, v2)
    np.testing.assert_allclose(o[3], ref.attention(q4[3], k2[1], v2[1]), rtol=1e-13)
    # additive mask == boolean mask with -inf; the scale defaults to 1/sqrt(d)
    m = RNG.random((3, 5)) < 0.5
    m[:, 0] = True
    np.testing.assert_allclose(ref.attention(q, k, v, mask=m), ref.attention(q, k, v, mask=np.where(m, 0.0, -np.inf)))
    np.testing.assert_allclose(ref.attention(q, k, v), ref.attention(q, k, v, scale=0.5))
    with pytest.raises(ValueError, match="multiple"):
        ref.attention(RNG.standard_normal((3, 2, 4)), k2, v2)


# -- the kernel -----------------------------------------------------------------------------------

TARGETS = ["scalar", "avx2", "avx512", "neon"]
# Lq, Lk, d, dv; with the small blocks below (br=3, bc=16): 1 .. 3 key blocks + 1, Lq != Lk both ways
SHAPES = [(1, 1, 1, 1), (5, 9, 7, 7), (17, 64, 64, 65), (33, 16, 80, 1), (64, 49, 65, 64), (2, 17, 7, 80)]
SMALL = {"br": 3, "bc": 16}
ALGS = [("three-phase", None), ("streaming", None), ("streaming", SMALL)]


@pytest.fixture(scope="module", params=[False, True], ids=["full", "causal"])
def causal(request):
    return request.param


@pytest.mark.parametrize("target", TARGETS)
def test_kernel_matches_the_oracle(target, causal):
    if target == "neon" and causal:
        pytest.skip("neon: one qemu run (non-causal) keeps the suite short; -m slow runs both")
    cases = [(f32(2, lq, d), f32(2, lk, d), f32(2, lk, dv)) for lq, lk, d, dv in SHAPES]
    for alg, sched in ALGS:
        # head_dim only sets the default scale (1/8 here): one kernel takes every d at run time
        k = softgen.compile("attention", target=target, head_dim=64, causal=causal, algorithm=alg, schedule=sched)
        assert k.algorithm == alg
        for c, o in zip(cases, run_cases(k, cases)):
            check(k, *c, o)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_kernel_matches_the_oracle_exhaustive(target, causal):
    ks = [(d, softgen.compile("attention", target=target, head_dim=d, causal=causal, algorithm=alg, schedule=s))
          for d in (1, 7, 64, 65, 80, 128) for alg, s in ALGS]
    for d, kd in ks:
        cases = [(f32(3, lq, d, scale=s), f32(3, lk, d, scale=s), f32(3, lk, dv))
                 for lq in (1, 16, 63, 200) for lk in (1, 64, 193) for dv in (1, 7, 64, 65) for s in (1.0, 8.0)]
        for c, o in zip(cases, run_cases(kd, cases)):
            check(kd, *c, o)


def test_non_finite_and_huge_scores():
    k = softgen.compile("attention", head_dim=8)
    q, kk, v = f32(1, 6, 8), f32(1, 10, 8), f32(1, 10, 3)
    q[0, 0, 0] = np.nan            # row 0: NaN score everywhere -> NaN row
    kk[0, 3, 0] = np.inf           # key 3: +-inf scores -> rows NaN (s - max = inf - inf)
    q[0, 5] = 1e30                 # huge finite scores overflow to +-inf in float32: NaN, as the oracle
    o = k(q, kk, v)
    r = ref.attention(q, kk, v, scale=k.params["scale"] or 1 / math.sqrt(8))
    assert np.array_equal(np.isnan(o), np.isnan(r))
    q2 = f32(1, 4, 8, scale=30.0)  # large but finite scores: one key dominates, no overflow
    check(k, q2, kk[:, :3], v[:, :3], k(q2, kk[:, :3], v[:, :3]))


@pytest.mark.parametrize("alg,sched", ALGS)
def test_additive_mask_kernel_and_online_oracle(alg, sched):
    k = softgen.compile("attention", head_dim=16, mask="additive", causal=True, algorithm=alg, schedule=sched)
    assert [n for n, _ in k._abi.inputs] == ["q", "k", "v", "mask"]
    q, kk, v = f32(3, 20, 16), f32(3, 50, 16), f32(3, 50, 24)
    m = np.where(RNG.random((3, 20, 50)) < 0.8, 0.0, -np.inf).astype(np.float32)
    m[1, 4] = -np.inf              # a fully masked row: NaN
    m[2, :, :20] = -np.inf         # a whole first key block masked: the state starts later
    m[2] += f32(20, 50)            # a float bias
    o = k(q, kk, v, m)
    check(k, q, kk, v, o, m)
    on = ref.attention_online_softmax(q, kk, v, scale=0.25, causal=True, mask=m, block=7)
    assert np.array_equal(np.isnan(on), np.isnan(o))
    np.testing.assert_allclose(o[~np.isnan(o)], on[~np.isnan(on)], rtol=2e-5, atol=2e-6)


def test_streaming_equals_three_phase_and_explain_shows_the_rewrite():
    q, kk, v = f32(4, 40, 32), f32(4, 300, 32), f32(4, 300, 32)
    outs = []
    for alg, sched in ALGS:
        k = softgen.compile("attention", head_dim=32, causal=True, algorithm=alg, schedule=sched)
        outs.append(k(q, kk, v))
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-6)
    k = softgen.compile("attention", head_dim=32, causal=True, schedule=SMALL)
    assert k.algorithm == "streaming" and "_stream__" in k.name
    text = k.explain()
    assert "streaming: 3 phases" in text and "key blocks of 16" in text and "attention (streaming)" in text
    src = "".join(v for f, v in k.sources().items() if f.endswith(".c"))
    assert "BR = 3, BC = 16" in src and "s[lq][lk]" not in src and "sg_off_mat_s" not in src
    three = softgen.compile("attention", head_dim=32, causal=True, algorithm="three-phase")
    assert "sg_off_mat_s" in "".join(three.sources().values())


@pytest.mark.parametrize("alg,sched", ALGS)
def test_empty_sizes(alg, sched):
    k = softgen.compile("attention", head_dim=4, causal=True, algorithm=alg, schedule=sched)
    for lq, lk, d, dv in ((3, 0, 4, 2), (0, 5, 4, 2), (3, 5, 4, 0), (3, 5, 0, 2)):
        q, kk, v = f32(2, lq, d), f32(2, lk, d), f32(2, lk, dv)
        o = k(q, kk, v)
        r = get_op("attention").reference(q, kk, v, **k.params)
        assert o.shape == (2, lq, dv)
        np.testing.assert_array_equal(np.isnan(o), np.isnan(r))
        np.testing.assert_allclose(o[~np.isnan(o)], r[~np.isnan(r)], atol=1e-6)


# the single-block mode (schedule wide): a query block with at most `wide` keys takes them as one block
WIDE = {"br": 3, "bc": 16, "wide": 40}


@pytest.fixture(scope="module")
def wide_kernels():
    """softmax, bool mask, causal and not, with and without the single-block mode (scalar: one lane,
    avx2: bc a whole number of vectors, 40 keys in 3 panels, the last part padding)."""
    return {(t, c, w): softgen.compile("attention", target=t, head_dim=16, causal=c, mask="bool", algorithm="streaming",
                                       schedule=dict(WIDE, wide=w))
            for t in ("scalar", "avx2") for c in (False, True) for w in (0, 40)}


@pytest.mark.parametrize("target", ["scalar", "avx2"])
@pytest.mark.parametrize("causal_", [False, True], ids=["full", "causal"])
def test_single_block_mode_edges(wide_kernels, target, causal_):
    """Lk at the threshold, one below and above it (the online form), causal with Lq != Lk (a call whose
    first query blocks see <= wide keys and its last ones more: both modes), decoding (no K^T: online),
    a fully masked and a NaN row, lse: the oracle's, and close to the online form's bits."""
    k, k0 = wide_kernels[target, causal_, 40], wide_kernels[target, causal_, 0]
    if not k.runnable:
        pytest.skip(f"{target}: not runnable here")
    ph = k.program.phases[0]
    assert ph.wide == 40 and "single-block mode" in k.explain() and "WNP" in k.sources()["kernel.c"]
    assert k0.program.phases[0].wide == 0 and "WNP" not in k0.sources()["kernel.c"]
    for lq, lk in ((20, 39), (20, 40), (20, 41), (50, 40), (30, 60), (3, 40)):
        q, kk, v = f32(2, 2, lq, 16), f32(2, 1, lk, 16), f32(2, 1, lk, 7)
        q[1, 0, 1, 3] = np.nan                                      # a NaN row
        m = RNG.random((2, 2, lq, lk)) < 0.8
        m[0, 1, 2] = False                                          # a fully masked row
        o, lse = k(q, kk, v, m, return_lse=True)
        r, rl = ref.attention(q, kk, v, scale=0.25, causal=causal_, mask=m, return_lse=True)
        _check_abi(o, r, lse, rl)
        o0, l0 = k0(q, kk, v, m, return_lse=True)
        _check_abi(o, o0, lse, l0)
        assert np.array_equal(k(q, kk, v, m, threads=2), o, equal_nan=True)



@pytest.mark.parametrize("target", ["scalar", "avx2"])
def test_single_block_mode_key_chunks(wide_kernels, target):
    """A single block wider than P V's sweep of 16 panels (WCH = 16 bc = 256 keys here): its keys in two
    sweeps (o written after the first, read back by the second), causal with Lq != Lk (blocks of one and
    of two sweeps), a masked row; the oracle's result, the online form's within rounding, any thread count."""
    k = softgen.compile("attention", target=target, head_dim=16, causal=True, mask="bool", algorithm="streaming",
                        schedule=dict(WIDE, wide=600))
    if not k.runnable:
        pytest.skip(f"{target}: not runnable here")
    assert "WCH = 16 * BC" in k.sources()["kernel.c"]
    q, kk, v = f32(1, 2, 40, 16), f32(1, 1, 300, 16), f32(1, 1, 300, 41)   # dv: 4 vectors, 1, a tail (avx2)
    m = RNG.random((1, 2, 40, 300)) < 0.9
    m[0, 0, 5] = False
    o = k(q, kk, v, m)
    _check_abi(o, ref.attention(q, kk, v, scale=0.25, causal=True, mask=m))
    _check_abi(o, wide_kernels[target, True, 0](q, kk, v, m))
    assert np.array_equal(k(q, kk, v, m, threads=2), o, equal_nan=True)

def test_decoding_shape():
    """Lq = 1 .. 16 against a long KV cache (Br small), causal (bottom-right: every key visible)."""
    k = softgen.compile("attention", head_dim=64, causal=True)
    for lq in (1, 3, 16):
        q, kk, v = f32(2, lq, 64), f32(2, 4096, 64), f32(2, 4096, 64)
        check(k, q, kk, v, k(q, kk, v))


def test_attention_schedule_and_algorithm_errors():
    for bad in ({"br": 0}, {"bc": 5000}, {"br": 64, "bc": 128}, {"br": 2.5}, {"wide": -1}, {"wide": True},
                {"br": 32, "wide": 4096}):
        with pytest.raises(softgen.UsageError, match="attention schedule"):
            softgen.compile("attention", schedule=bad)
    with pytest.raises(softgen.UsageError, match="single-block mode"):
        softgen.compile("attention", normalizer="stablemax", schedule={"wide": 256})
    with pytest.raises(softgen.UsageError, match="three-phase"):
        softgen.compile("attention", algorithm="online")
    with pytest.raises(softgen.UsageError, match="direct"):
        softgen.compile("gaussian_kernel", algorithm="streaming")


# -- softgen.attention ----------------------------------------------------------------------------

def _oracle(q, k, v, **kw):
    return ref.attention(q, k, v, scale=float(np.float32(1 / math.sqrt(q.shape[-1]))), **kw)


def test_api_gqa_masks_lengths_and_masked_rows():
    q, k, v = f32(2, 4, 9, 16), f32(2, 2, 40, 16), f32(2, 2, 40, 8)
    bmask = RNG.random((9, 40)) < 0.6
    bmask[3] = False
    lens = np.array([40, 5])
    for kw in ({}, {"causal": True}, {"mask": bmask}, {"kv_lengths": lens},
               {"mask": bmask, "kv_lengths": lens, "causal": True}):
        for rows in ("nan", "zero"):
            o = softgen.attention(q, k, v, masked_rows=rows, **kw)
            r = _oracle(q, k, v, masked_rows=rows, **kw)
            assert o.shape == r.shape and o.dtype == np.float32
            assert np.array_equal(np.isnan(o), np.isnan(r)), kw
            np.testing.assert_allclose(o[~np.isnan(o)], r[~np.isnan(r)], rtol=1e-5, atol=2e-6)
    # Lq > Lk causal: the first Lq - Lk rows see no key
    o = softgen.attention(f32(1, 12, 8), f32(1, 4, 8), f32(1, 4, 8), causal=True, masked_rows="zero")
    assert (o[0, :8] == 0).all() and np.isfinite(o).all()


@pytest.mark.parametrize("target", ["avx2", "neon"])
def test_stablemax_attention_three_phase(target):
    """StableMax (docs/ops.md §8), three-phase (auto streams it: test_stablemax_streaming)."""
    k = softgen.compile("attention", normalizer="stablemax", causal=True, head_dim=16, target=target,
                        algorithm="three-phase")
    assert k.algorithm == "three-phase"
    cases = [(f32(2, lq, 16, scale=s), f32(2, lk, 16, scale=s), f32(2, lk, 5)) for lq, lk in ((7, 30), (30, 7), (1, 1))
             for s in (1.0, 6.0)]
    for c, o in zip(cases, run_cases(k, cases)):
        check(k, *c, o)
    q, kk, v = f32(2, 3, 6, 16), f32(2, 1, 20, 16), f32(2, 1, 20, 8)
    m = RNG.random((6, 20)) < 0.5
    m[1] = False
    if target == "avx2":
        o = softgen.attention(q, kk, v, normalizer="stablemax", mask=m, masked_rows="zero", algorithm="three-phase")
        r = _oracle(q, kk, v, normalizer="stablemax", mask=m, masked_rows="zero")
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=2e-6)


def test_api_strided_heads_and_out():
    x = f32(2, 30, 3, 3, 32)                       # (B, L, qkv, H, d): heads strided, not contiguous
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    out = np.empty((2, 3, 30, 32), np.float32)
    assert softgen.attention(q, k, v, causal=True, out=out) is out
    r = _oracle(q, k, v, causal=True)
    np.testing.assert_allclose(out, r, rtol=1e-5, atol=2e-6)


def test_api_errors():
    q, k, v = f32(2, 4, 8), f32(2, 6, 8), f32(2, 6, 8)
    bad = [((q.astype(np.float64), k, v), {}, "float32"),
           ((q, k[..., :4], v), {}, "expected k"),
           ((q, k, v[:, :5]), {}, "expected k"),
           ((f32(3, 4, 8), k, v), {}, "multiple of Hkv"),
           ((q, k, v), {"normalizer": "nope"}, "supports softmax, stablemax"),
           ((q, k, v), {"masked_rows": "drop"}, "masked_rows"),
           ((q, k, v), {"mask": np.ones((3, 6), bool)}, "broadcast"),
           ((q, k, v), {"mask": np.ones((4, 6), np.int32)}, "boolean"),
           ((q[None], k[None], v[None]), {"kv_lengths": np.array([1.5])}, "kv_lengths"),
           ((q, k, v), {"scale": -1.0}, "scale"),
           ((q[0, 0], k, v), {}, "at least 2 axes")]
    for args, kw, msg in bad:
        with pytest.raises(softgen.UsageError, match=msg):
            softgen.attention(*args, **kw)
    with pytest.raises(softgen.UsageError, match="normalizer"):
        softgen.compile("attention", normalizer="nope")
    with pytest.raises(softgen.UsageError, match="head_dim"):
        softgen.compile("attention", head_dim=0)


def test_torch_sdpa_agrees():
    torch = pytest.importorskip("torch")
    q, k, v = f32(2, 4, 33, 64), f32(2, 4, 70, 64), f32(2, 4, 70, 64)
    m = RNG.random((33, 70)) < 0.7
    m[:, 0] = True
    T = torch.from_numpy
    for kw, tkw in (({}, {}), ({"mask": m}, {"attn_mask": T(m)})):
        o = softgen.attention(q, k, v, **kw)
        t = torch.nn.functional.scaled_dot_product_attention(T(q), T(k), T(v), **tkw).numpy()
        np.testing.assert_allclose(o, t, rtol=1e-4, atol=1e-5)
    qs = f32(2, 4, 70, 64)                           # causal with Lq == Lk (torch is top-left aligned)
    o = softgen.attention(qs, k, v, causal=True)
    t = torch.nn.functional.scaled_dot_product_attention(T(qs), T(k), T(v), is_causal=True).numpy()
    np.testing.assert_allclose(o, t, rtol=1e-4, atol=1e-5)
    # split decoding (key chunks merged per head) on two threads, GQA and a padding mask
    qd, kd, vd = f32(1, 4, 2, 64), f32(1, 2, 2 * SPLIT_KEYS + 5, 64), f32(1, 2, 2 * SPLIT_KEYS + 5, 64)
    md = np.ones((1, 1, 2, kd.shape[2]), bool)
    md[..., SPLIT_KEYS - 3:] = False
    o = softgen.attention(qd, kd, vd, mask=md, threads=2)
    t = torch.nn.functional.scaled_dot_product_attention(T(qd), T(kd), T(vd), attn_mask=T(md),
                                                         enable_gqa=True).numpy()
    np.testing.assert_allclose(o, t, rtol=1e-4, atol=1e-5)


# -- export ---------------------------------------------------------------------------------------

C_MAIN = r"""
#include <math.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include "att.h"
/* batch 2, one head; then the same arrays as one batch of 2 query heads over 1 kv head (GQA) */
enum { B = 2, LQ = 3, LK = 5, D = 4, DV = 2 };
#define STRIDES LQ * D, 0, D, LK * D, 0, D, LK * DV, 0, DV, LQ * DV, 0, DV
int main(void) {
    float q[B][LQ][D], k[B][LK][D], v[B][LK][DV], o[B][LQ][DV], lse[B][LQ];
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < LQ; i++) for (int j = 0; j < D; j++) q[b][i][j] = 0.1f * (i + j + b);
        for (int i = 0; i < LK; i++) for (int j = 0; j < D; j++) k[b][i][j] = 0.2f * (i - j);
        for (int i = 0; i < LK; i++) for (int j = 0; j < DV; j++) v[b][i][j] = (float)(i * DV + j);
    }
    const float *Q = &q[0][0][0], *K = &k[0][0][0], *V = &v[0][0][0];
    float *O = &o[0][0][0], *L = &lse[0][0];
    int rc = att(Q, K, V, O, B, 1, 1, LQ, LK, D, DV, STRIDES, NULL, L, LQ, 0, 1);
    if (rc) { printf("rc %d\n", rc); return 1; }
    if (att(NULL, K, V, O, B, 1, 1, LQ, LK, D, DV, STRIDES, NULL, L, LQ, 0, 1) != ATT_ENULL) return 2;
    if (att(Q, K, V, O, B, 1, 1, LQ, LK, D, DV, LQ * D, 0, -D, LK * D, 0, D, LK * DV, 0, DV, LQ * DV, 0, DV,
            NULL, NULL, 0, 0, 0) != ATT_ESTRIDE)
        return 3;
    if (att(Q, K, V, O, 1, 2, 3, LQ, LK, D, DV, STRIDES, NULL, NULL, 0, 0, 0) != ATT_EMATRIX)
        return 7;
    if (att(Q, K, V, O, 1, 2, 1, LQ, LK, D, DV, 0, LQ * D, D, 0, 0, D, 0, 0, DV, 0, (ptrdiff_t)1 << 62, DV,
            NULL, NULL, 0, 0, 0) != ATT_EOVERFLOW)
        return 8;
    float o2[B][LQ][DV];
    for (int t = 0; t <= 3; t++) {   /* att_mt: the same bits for every thread count */
        if (att_mt(Q, K, V, &o2[0][0][0], B, 1, 1, LQ, LK, D, DV, STRIDES, NULL, NULL, 0, 0, 0, t) != 0)
            return 4;
        if (memcmp(o, o2, sizeof o) != 0)
            return 5;
    }
    if (att_mt(Q, K, V, O, B, 1, 1, LQ, LK, D, DV, STRIDES, NULL, NULL, 0, 0, 0, -1) != ATT_ETHREADS)
        return 6;
    for (int b = 0; b < B; b++) for (int i = 0; i < LQ; i++) for (int j = 0; j < DV; j++) printf("%.9g\n", o[b][i][j]);
    for (int b = 0; b < B; b++) for (int i = 0; i < LQ; i++) printf("%.9g\n", lse[b][i]);
    /* GQA: q's two matrices as 2 query heads of one batch, reading kv head 0 (k/v's first matrix),
       kv_lengths = 4: key 4 masked */
    const int lens[1] = {4};
    if (att(Q, K, V, O, 1, 2, 1, LQ, LK, D, DV, 0, LQ * D, D, 0, 0, D, 0, 0, DV, 0, LQ * DV, DV, lens, NULL, 0, 0, 0))
        return 9;
    for (int b = 0; b < B; b++) for (int i = 0; i < LQ; i++) for (int j = 0; j < DV; j++) printf("%.9g\n", o[b][i][j]);
    return 0;
}
"""


def test_exported_library_called_from_c(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    k = softgen.compile("attention", head_dim=4, causal=True, name="att", target="host")
    k.export(tmp_path)
    header = (tmp_path / "att.h").read_text()
    assert "size_t hkv" in header and "ptrdiff_t q_sh" in header and "int att_mt(" in header
    assert "kv_lengths" in header and "h / (hq / hkv)" in header
    (tmp_path / "main.c").write_text(C_MAIN)
    subprocess.run([cc, "-O1", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), f"-I{tmp_path}",
                    f"-L{tmp_path}", "-latt", f"-Wl,-rpath,{tmp_path}"], check=True)
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    vals = np.array([float(s) for s in out.stdout.split()])
    o, lse, gqa = vals[:12].reshape(2, 3, 2), vals[12:18].reshape(2, 3), vals[18:].reshape(1, 2, 3, 2)
    b, i, j = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    q = 0.1 * (i + j + b)
    kk = np.broadcast_to(0.2 * (np.arange(5)[:, None] - np.arange(4)[None, :]), (2, 5, 4))
    v = np.broadcast_to(np.arange(10.0).reshape(5, 2), (2, 5, 2))
    r, rl = ref.attention(q, kk, v, causal=True, scale=0.5, return_lse=True)
    np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, rl, rtol=1e-5, atol=1e-5)
    rg = ref.attention(q[None], kk[None, :1], v[None, :1], causal=True, scale=0.5, kv_lengths=np.array([4]))
    np.testing.assert_allclose(gqa, rg, rtol=1e-5, atol=1e-5)
    assert ctypes  # (the library is also loadable from Python: k(...) above uses the same build)


# -- threads: batch x query chunks across the pool ------------------------------------------------

@pytest.fixture(scope="module")
def threaded_kernels():
    return {c: softgen.compile("attention", head_dim=32, causal=c, algorithm="streaming") for c in (False, True)}


@pytest.mark.parametrize("causal_", [False, True], ids=["full", "causal"])
def test_threads_bitwise_and_oracle(threaded_kernels, causal_):
    """Several query chunks per matrix (Lq = 150 > 64 rows per task), a batch of 3, a decoding
    shape: every thread count gives the bits of the one-thread call, within the oracle."""
    k = threaded_kernels[causal_]
    assert k._abi.threaded and "query chunk" in k.explain_threads() and f"{k.name}_mt" in k.sources()["kernel.c"]
    for lq, lk in ((150, 170), (1, 300)):
        q, kk, v = f32(3, lq, 32), f32(3, lk, 32), f32(3, lk, 24)
        one = k(q, kk, v, threads=1)
        check(k, q, kk, v, one)
        for t in (0, 2, 3, 4):
            assert np.array_equal(k(q, kk, v, threads=t), one, equal_nan=True), (lq, t)
        assert np.array_equal(k(q, kk, v), one, equal_nan=True)
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        k(q, kk, v, threads=-1)
    with pytest.raises(softgen.UsageError, match="threads must be"):
        k(q, kk, v, threads=1.5)


def test_threads_with_a_mask_and_small_blocks():
    """br = 3: tasks of 66 query rows (64 rounded up to br), a mask read at each task's offset."""
    k = softgen.compile("attention", head_dim=16, causal=True, mask="additive", algorithm="streaming",
                        schedule=SMALL)
    q, kk, v = f32(2, 70, 16), f32(2, 75, 16), f32(2, 75, 9)
    m = np.where(RNG.random((2, 70, 75)) < 0.8, 0.0, -np.inf).astype(np.float32)
    one = k(q, kk, v, m, threads=1)
    check(k, q, kk, v, one, m)
    assert np.array_equal(k(q, kk, v, m, threads=3), one, equal_nan=True)


def test_api_threads():
    q, kk, v = f32(2, 2, 70, 16), f32(2, 1, 90, 16), f32(2, 1, 90, 16)
    one = softgen.attention(q, kk, v, causal=True, threads=1)
    np.testing.assert_allclose(one, _oracle(q, kk, v, causal=True), rtol=1e-4, atol=1e-5)
    assert np.array_equal(softgen.attention(q, kk, v, causal=True, threads=3), one, equal_nan=True)
    # the three-phase form splits its batch x heads matrices (issue 13): bitwise for any count
    three = softgen.attention(q, kk, v, causal=True, algorithm="three-phase", threads=1)
    assert np.array_equal(softgen.attention(q, kk, v, causal=True, algorithm="three-phase", threads=3), three,
                          equal_nan=True)


def test_threads_share_each_kv_heads_transpose():
    """K^T is transposed once per (batch, kv head), by the first task that needs it; the tasks of
    the group's other query heads and chunks running meanwhile wait for it. Batch 2, 4 query heads
    on 1 kv head, 3 chunks each, new keys per call, threaded calls back to back (the pool's workers
    awake; each call's K^T buffer holds the previous keys' until transposed): any thread count gives
    the one-thread bits, within the oracle."""
    for t in (2, 4, 2, 4):
        qkv = [(f32(2, 4, 130, 64), f32(2, 1, 4096, 64), f32(2, 1, 4096, 8)) for _ in range(3)]
        got = [softgen.attention(*x, threads=t) for x in qkv]
        for x, o in zip(qkv, got):
            assert np.array_equal(o, softgen.attention(*x, threads=1), equal_nan=True), t
    np.testing.assert_allclose(o, _oracle(*x), rtol=1e-4, atol=1e-5)



# -- split decoding: Lq <= 16 against Lk >= 2 x SPLIT_KEYS, (batch, head, key chunk) tasks ----------

@pytest.fixture(scope="module")
def split_kernels():
    mk = lambda **kw: softgen.compile("attention", head_dim=16, algorithm="streaming", **kw)  # noqa: E731
    return {"bool": mk(mask="bool"), "additive": mk(mask="additive", causal=True), "scalar": mk(target="scalar")}


def test_split_decoding_masks_lengths_gqa_threads(split_kernels):
    """Key chunks of SPLIT_KEYS merged per head: GQA, kv_lengths on and around the chunk bounds (0,
    one chunk, one key into the second, the tail, > Lk), Lk not a multiple of the chunk, a chunk
    whose keys are all masked, a fully masked row (NaN, lse -inf), a NaN row; lse; every thread
    count (and batch x heads < threads) gives the one-thread bits."""
    k = split_kernels["bool"]
    assert SPLIT_KEYS == 1024 and "__ktask" in k.sources()["kernel.c"]
    lk = 2 * SPLIT_KEYS + 37
    q, kk, v = f32(5, 4, 3, 16), f32(5, 2, lk, 16), f32(5, 2, lk, 7)
    q[3, 3, 0, 2] = np.nan                                          # a NaN row
    lens = np.array([lk, 0, SPLIT_KEYS, SPLIT_KEYS + 1, 5000])
    m = RNG.random((5, 4, 3, lk)) < 0.7
    m[..., 1, :] = False                                            # fully masked rows
    m[2, :, 2, SPLIT_KEYS:] = False                                 # row 2 of batch 2: its second chunk masked
    m[0, :, 0, :SPLIT_KEYS] = False                                 # row 0 of batch 0: its first chunk masked
    o, lse = k(q, kk, v, m, kv_lengths=lens, return_lse=True, threads=1)
    r, rl = ref.attention(q, kk, v, scale=0.25, mask=m, kv_lengths=lens, return_lse=True)
    _check_abi(o, r, lse, rl)
    assert np.isneginf(lse[..., 1]).all() and np.isnan(lse[3, 3, 0]) and np.isnan(o[3, 3, 0]).all()
    for t in (2, 3):
        ot, lt = k(q, kk, v, m, kv_lengths=lens, return_lse=True, threads=t)
        assert np.array_equal(ot, o, equal_nan=True) and np.array_equal(lt, lse, equal_nan=True), t
    one = k(q[:1, :1], kk[:1, :1], v[:1, :1], threads=1)           # one head: its chunks fill the threads
    check(k, q[:1, :1], kk[:1, :1], v[:1, :1], one)
    assert np.array_equal(k(q[:1, :1], kk[:1, :1], v[:1, :1], threads=2), one, equal_nan=True)


def test_split_decoding_causal_additive_and_scalar(split_kernels):
    """Causal (bottom-right: Lq = 16 rows, the diagonal in the last chunk), -inf additive masks
    (a chunk all -inf), Lk = 3 chunks exactly; the scalar target (the same merge)."""
    k = split_kernels["additive"]
    lk = 3 * SPLIT_KEYS
    q, kk, v = f32(2, 16, 16), f32(2, lk, 16), f32(2, lk, 16)
    m = np.where(RNG.random((2, 16, lk)) < 0.8, 0.0, -np.inf).astype(np.float32)
    m[0, 3, SPLIT_KEYS:2 * SPLIT_KEYS] = -np.inf
    m[1, 5] = -np.inf                                               # a fully masked row
    o, lse = k(q, kk, v, m, return_lse=True, threads=1)
    r, rl = ref.attention(q, kk, v, scale=0.25, causal=True, mask=m, return_lse=True)
    _check_abi(o, r, lse, rl)
    ot, lt = k(q, kk, v, m, return_lse=True, threads=2)
    assert np.array_equal(ot, o, equal_nan=True) and np.array_equal(lt, lse, equal_nan=True)
    lens = np.array([lk - 100, SPLIT_KEYS + 7])                    # kv_lengths with causal: lk places the diagonal
    q4, k4, v4, m4 = (a[:, None] for a in (q, kk, v, m))             # (batch, head, ...): kv_lengths per batch
    o = k(q4, k4, v4, m4, kv_lengths=lens, threads=2)
    _check_abi(o, ref.attention(q4, k4, v4, scale=0.25, causal=True, mask=m4, kv_lengths=lens))
    ks = split_kernels["scalar"]
    o = ks(q, kk, v, threads=2)
    check(ks, q, kk, v, o)
    x = f32(2, lk, 3 * 16)                                          # strided heads: (B, L, q|k|v, d) views
    qs, ksv, vs = x[:, :2, None, :16].swapaxes(1, 2), x[:, :, None, 16:32].swapaxes(1, 2), x[:, :, None, 32:].swapaxes(1, 2)
    check_strided_heads(split_kernels["bool"], qs, ksv, vs, RNG.random((2, lk)) < 0.7)


def test_split_decoding_merges_sums_not_lse(split_kernels):
    """Equal huge scores (4e8: lse = m + log l rounds to m) over chunks of unequal sizes: the merge
    weighs each chunk by its sum l_c e^(m_c - M), so O is the mean of all of V's rows (a merge by
    e^(lse_c - lse) would weigh the 37-key tail chunk like the full ones)."""
    k = split_kernels["bool"]
    lk = 2 * SPLIT_KEYS + 37
    q = np.full((1, 1, 1, 16), 1e4, np.float32)
    kk = np.full((1, 1, lk, 16), 1e4, np.float32)
    v = f32(1, 1, lk, 4)
    o, lse = k(q, kk, v, return_lse=True, threads=2)
    np.testing.assert_allclose(o[0, 0, 0], v[0, 0].astype(np.float64).mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lse[0, 0, 0], 4e8 + math.log(lk), rtol=1e-7)

def test_tune_attention_blocks(tmp_path, monkeypatch):
    """softgen tune of attention: br/bc candidates timed, the winner recorded (algorithm
    "streaming"); compile then takes it (k.tuned) unless br/bc are given."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    t = get_target("host")
    cands = attention_candidates(t)
    assert cands[0] == t.attention and len(cands) >= 3
    res = softgen.tune("attention", target="host", shapes="40x40x16x16", budget_s=1.5, progress=False, head_dim=16)
    rec, = res.records
    assert rec.algorithm == "streaming" and set(rec.schedule) == {"br", "bc", "wide"}
    k = softgen.compile("attention", head_dim=16, target="host")
    ph = k.program.phases[0]
    assert k.tuned and (ph.br, ph.bc, ph.wide) == (rec.schedule["br"], rec.schedule["bc"], rec.schedule["wide"])
    assert "attention blocks: tuned" in k.explain()
    assert not softgen.compile("attention", head_dim=16, target="host", schedule={"br": 4, "bc": 32}).tuned
    with pytest.raises(softgen.UsageError, match="mask='none'"):
        softgen.tune("attention", target="host", shapes="8x8x4x4", budget_s=1, progress=False, mask="additive")


def test_tvm_builds_the_three_phase_form():
    """(TVM's streaming form: tests/test_attention_tvm.py.)"""
    from softgen.backends.tvm_adapter import available
    ok, why = available()
    if not ok:
        pytest.skip(f"TVM backend: {why}")
    k = softgen.compile("attention", backend="tvm", causal=True, head_dim=16, algorithm="three-phase")
    assert k.algorithm == "three-phase"
    q, kk, v = f32(2, 9, 16), f32(2, 12, 16), f32(2, 12, 5)
    check(k, q, kk, v, k(q, kk, v))


def test_cli_emit_and_build(tmp_path):
    import sys
    run = [sys.executable, "-m", "softgen"]
    emit = subprocess.run(run + ["emit", "--op", "attention", "--causal", "--target", "avx512", "--br", "8"],
                          capture_output=True, text=True)
    assert emit.returncode == 0, emit.stderr
    assert "attention (streaming)" in emit.stdout and "BR = 8, BC = 64" in emit.stdout
    b = subprocess.run(run + ["build", "--op", "attention", "--causal", "--target", "avx512", "--name", "att_cli",
                              "-o", str(tmp_path)], capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    header = (tmp_path / "att_cli.h").read_text()
    assert "causal=1" in header and " x min(4096, lk) tile on the heap" in header   # the single-block mode's scratch
    assert "x lq x (dv + 2) floats on the heap" in header   # split decoding's partials
    bad = subprocess.run(run + ["emit", "--op", "attention", "--normalizer", "lssa", "--scale", "0.5"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "takes no scale" in bad.stderr


# -- the explicit-stride ABI of the streaming form (abi.ATTENTION) --------------------------------

@pytest.fixture(scope="module")
def abi_kernels():
    """Streaming kernels with small blocks (br=3, bc=16: several key blocks at small sizes)."""
    mk = lambda **kw: softgen.compile("attention", head_dim=16, algorithm="streaming", schedule=SMALL, **kw)  # noqa: E731
    return {"bool": mk(mask="bool"), "additive": mk(mask="additive", causal=True),
            "stablemax": mk(mask="bool", normalizer="stablemax", causal=True)}


def _check_abi(o, r, lse=None, rlse=None):
    assert np.array_equal(np.isnan(o), np.isnan(r))
    np.testing.assert_allclose(o[~np.isnan(o)], r[~np.isnan(r)], rtol=2e-5, atol=2e-6)
    if lse is not None:
        assert np.array_equal(np.isnan(lse), np.isnan(rlse)) and np.array_equal(np.isneginf(lse), np.isneginf(rlse))
        fin = np.isfinite(rlse)
        np.testing.assert_allclose(lse[fin], rlse[fin], rtol=1e-5, atol=1e-5)


def test_abi_strided_views_are_not_copied(abi_kernels):
    """q/k/v as (B, L, H, d) views transposed to (B, H, L, d), GQA k/v, a broadcast bool mask: the
    entry gets the arrays' own pointers and strides (binding copies nothing)."""
    from softgen.binding import bind
    k = abi_kernels["bool"]
    assert k._abi.kind == "attention" and k._abi.mask == "bool"
    x = f32(2, 20, 4 + 2 + 2, 16)                                   # (B, L, heads of q|k|v, d)
    q, kk, v = (x[:, :, a:b].transpose(0, 2, 1, 3) for a, b in ((0, 4), (4, 6), (6, 8)))
    m = RNG.random((20, 20)) < 0.7
    b = bind(k._abi, k.name, (q, kk, v, m), None, call={"return_lse": True})
    args = dict(zip([nm for _, nm in k._abi.params()], b.args))
    assert (args["q"], args["k"], args["v"], args["mask"]) == (q.ctypes.data, kk.ctypes.data, v.ctypes.data,
                                                               m.ctypes.data)
    assert (args["batch"], args["hq"], args["hkv"]) == (2, 4, 2)
    assert (args["q_sb"], args["q_sh"], args["q_sr"]) == (20 * 8 * 16, 16, 8 * 16)
    assert (args["mask_sb"], args["mask_sh"], args["mask_sr"], args["mask_sc"]) == (0, 0, 20, 1)
    o, lse = k(q, kk, v, m, return_lse=True)
    r, rl = ref.attention(q, kk, v, scale=0.25, mask=m, return_lse=True)
    _check_abi(o, r, lse, rl)
    mt = (RNG.random((20, 20)) < 0.7).T                             # column stride 20, row stride 1
    _check_abi(k(q, kk, v, mt), ref.attention(q, kk, v, scale=0.25, mask=mt))
    out = np.empty((2, 20, 4, 16), np.float32).transpose(0, 2, 1, 3)   # a strided out: written in place
    assert k(q, kk, v, m, out=out) is out
    _check_abi(out, r)


@pytest.mark.parametrize("hq,hkv", [(4, 1), (4, 2), (2, 2)])
def test_abi_gqa_masks_and_lengths(abi_kernels, hq, hkv):
    """GQA in the kernel; bool masks broadcast (stride 0) and per head; kv_lengths 0, < Lk, > Lk;
    lse with fully masked and NaN rows; every thread count gives the same bits."""
    k = abi_kernels["bool"]
    q, kk, v = f32(3, hq, 21, 16), f32(3, hkv, 37, 16), f32(3, hkv, 37, 5)
    q[0, 0, 2, 0] = np.nan                                          # a NaN row
    lens = np.array([37, 0, 100]) if hq == 4 else np.array([9, 40, 1])
    for m in (RNG.random((21, 37)) < 0.6, RNG.random((3, hq, 21, 37)) < 0.6):
        m[..., 4, :] = False                                        # a fully masked row
        o, lse = k(q, kk, v, m, kv_lengths=lens, return_lse=True)
        r, rl = ref.attention(q, kk, v, scale=0.25, mask=m, kv_lengths=lens, return_lse=True)
        _check_abi(o, r, lse, rl)
        assert np.isneginf(lse[..., 4]).all() and np.isnan(lse[0, 0, 2]) and np.isnan(o[0, 0, 2]).all()
        for t in (1, 2, 3):
            ot, lt = k(q, kk, v, m, kv_lengths=lens, return_lse=True, threads=t)
            assert np.array_equal(ot, o, equal_nan=True) and np.array_equal(lt, lse, equal_nan=True), t


def test_abi_additive_mask_causal_and_no_mask(abi_kernels):
    """An additive per-head mask with causal; the same kernel with mask=None (NULL)."""
    k = abi_kernels["additive"]
    q, kk, v = f32(2, 2, 30, 16), f32(2, 1, 45, 16), f32(2, 1, 45, 8)
    m = (np.where(RNG.random((2, 2, 30, 45)) < 0.8, 0.0, -np.inf) + RNG.standard_normal((2, 2, 30, 45))).astype(np.float32)
    o, lse = k(q, kk, v, m, return_lse=True)
    r, rl = ref.attention(q, kk, v, scale=0.25, causal=True, mask=m, return_lse=True)
    _check_abi(o, r, lse, rl)
    _check_abi(k(q, kk, v), ref.attention(q, kk, v, scale=0.25, causal=True))


def test_stablemax_streaming(abi_kernels):
    """StableMax streams (auto picks it): the streaming kernel against the three-phase oracle,
    with GQA, a bool mask, kv_lengths and causal; its lse is the log of the weights' sum."""
    k = abi_kernels["stablemax"]
    assert k.algorithm == "streaming" and "stablemax" in k.explain() and "no rescaling" in k.explain()
    assert softgen.compile("attention", normalizer="stablemax", head_dim=16).algorithm == "streaming"
    q, kk, v = f32(2, 4, 19, 16, scale=3.0), f32(2, 2, 40, 16, scale=3.0), f32(2, 2, 40, 6)
    m = RNG.random((2, 1, 19, 40)) < 0.7
    m[..., 0, :] = False
    lens = np.array([40, 13])
    o, lse = k(q, kk, v, m, kv_lengths=lens, return_lse=True)
    r = ref.attention(q, kk, v, scale=0.25, causal=True, mask=m, kv_lengths=lens, normalizer="stablemax")
    _check_abi(o, r)
    s = ref._attention_scores(q, kk, 0.25, True, m, lens)
    with np.errstate(divide="ignore"):
        rl = np.log(np.where(s >= 0, s + 1, 1 / (1 - s)).sum(-1))
    _check_abi(o, r, lse, rl)
    for t in (2, 3):
        assert np.array_equal(k(q, kk, v, m, kv_lengths=lens, threads=t), o, equal_nan=True)
    o2 = softgen.attention(q, kk, v, normalizer="stablemax", causal=True, mask=m, kv_lengths=lens, masked_rows="zero")
    r2 = ref.attention(q, kk, v, causal=True, mask=m, kv_lengths=lens, normalizer="stablemax", masked_rows="zero",
                       scale=0.25)
    np.testing.assert_allclose(o2, r2, rtol=2e-5, atol=2e-6)


def test_api_return_lse_views_and_torch():
    """softgen.attention: strided views and GQA straight through, return_lse, masked_rows="zero"
    from the kernel's lse; torch tensors (views) in and out; the three-phase form's lse and
    kv_lengths in its kernel; Sinkhorn refuses return_lse, saying why."""
    x = f32(2, 24, 6, 16)
    q, kk, v = x[:, :, :4].transpose(0, 2, 1, 3), x[:, :, 4:5].transpose(0, 2, 1, 3), x[:, :, 5:].transpose(0, 2, 1, 3)
    m = RNG.random((2, 1, 24, 24)) < 0.6
    m[:, :, 3] = False
    kw = {"mask": m, "kv_lengths": np.array([24, 5]), "causal": True}
    o, lse = softgen.attention(q, kk, v, return_lse=True, masked_rows="zero", **kw)
    r, rl = _oracle(q, kk, v, return_lse=True, masked_rows="zero", **kw)
    _check_abi(o, r, lse, rl)
    assert (o[:, :, 3] == 0).all()
    with pytest.raises(softgen.UsageError, match="return_lse: Sinkhorn's P is normalised over rows and columns"):
        softgen.attention(q, kk, v, return_lse=True, normalizer="sinkhorn")
    o3, l3 = softgen.attention(q, kk, v, return_lse=True, masked_rows="zero", algorithm="three-phase", **kw)
    _check_abi(o3, r, l3, rl)
    assert (o3[:, :, 3] == 0).all()
    torch = pytest.importorskip("torch")
    T = torch.from_numpy
    ot, lt = softgen.attention(T(x).transpose(1, 2)[:, :4], T(x).transpose(1, 2)[:, 4:5], T(x).transpose(1, 2)[:, 5:],
                               return_lse=True, masked_rows="zero", mask=T(m), kv_lengths=T(kw["kv_lengths"]),
                               causal=True)
    assert isinstance(ot, torch.Tensor) and isinstance(lt, torch.Tensor)
    assert np.array_equal(ot.numpy(), o) and np.array_equal(lt.numpy(), lse)


def test_abi_neon_under_qemu():
    """The explicit-stride entry emulated (neon, qemu: the driver marshals NULL and strided
    pointers from abi.buffers): GQA, a broadcast bool mask, kv_lengths, lse, threads."""
    k = softgen.compile("attention", target="neon", head_dim=16, mask="bool", causal=True, schedule=SMALL)
    _can_emulate(k)
    x = f32(2, 20, 3, 16)
    q, kk, v = x[:, :, :2].transpose(0, 2, 1, 3), x[:, :, 2:].transpose(0, 2, 1, 3), f32(2, 1, 20, 7)
    m = RNG.random((20, 20)) < 0.7
    lens = np.array([20, 6])
    o, lse = k.run_emulated(q, kk, v, m, kv_lengths=lens, return_lse=True, threads=2)
    r, rl = ref.attention(q, kk, v, scale=0.25, causal=True, mask=m, kv_lengths=lens, return_lse=True)
    _check_abi(o, r, lse, rl)
    _check_abi(k.run_emulated(q, kk, v), ref.attention(q, kk, v, scale=0.25, causal=True))
