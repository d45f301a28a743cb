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
from conftest import _can_emulate

import softgen
from softgen import reference as ref
from softgen.ops import get_op
from softgen.targets import get_target
from softgen.tune import attention_candidates

RNG = np.random.default_rng(14)


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def check(k, q, kk, v, o, mask=None):
    """o within the op's tolerance of the float64 oracle; NaN exactly where the oracle's is."""
    op = get_op("attention")
    r = op.reference(q, kk, v, mask, **k.params)
    assert o.shape == r.shape
    nan = np.isnan(r)
    assert np.array_equal(nan, np.isnan(o)), f"{k.name}: NaN pattern differs"
    tol = op.tolerance((q, kk, v), r, k.params)
    err = np.where(nan, 0.0, np.abs(o.astype(np.float64) - r))
    assert (err <= tol).all(), f"{k.name}: max err/tol {np.max(err / tol):.3g}"


def run_many(k, cases):
    """k on every (q, k, v) case: natively, or emulated in one emulator process."""
    if k.runnable:
        return [k(*c) for c in cases]
    _can_emulate(k)
    return k.run_emulated_many(cases)


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
        for c, o in zip(cases, run_many(k, cases)):
            check(k, *c, o)


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_kernel_matches_the_oracle_exhaustive(target, causal):
    ks = [(d, softgen.compile("attention", target=target, head_dim=d, causal=causal, algorithm=alg, schedule=s))
          for d in (1, 7, 64, 65, 80, 128) for alg, s in ALGS]
    for d, kd in ks:
        cases = [(f32(3, lq, d, scale=s), f32(3, lk, d, scale=s), f32(3, lk, dv))
                 for lq in (1, 16, 63, 200) for lk in (1, 64, 193) for dv in (1, 7, 64, 65) for s in (1.0, 8.0)]
        for c, o in zip(cases, run_many(kd, cases)):
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


def test_decoding_shape():
    """Lq = 1 .. 16 against a long KV cache (Br small), causal (bottom-right: every key visible)."""
    k = softgen.compile("attention", head_dim=64, causal=True)
    for lq in (1, 3, 16):
        q, kk, v = f32(2, lq, 64), f32(2, 4096, 64), f32(2, 4096, 64)
        check(k, q, kk, v, k(q, kk, v))


def test_attention_schedule_and_algorithm_errors():
    for bad in ({"br": 0}, {"bc": 5000}, {"br": 64, "bc": 128}, {"br": 2.5}):
        with pytest.raises(softgen.UsageError, match="attention schedule"):
            softgen.compile("attention", schedule=bad)
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
    """StableMax (docs/ops.md §8): three-phase today (auto), the streaming form refuses it clearly."""
    k = softgen.compile("attention", normalizer="stablemax", causal=True, head_dim=16, target=target)
    assert k.algorithm == "three-phase"
    cases = [(f32(2, lq, 16, scale=s), f32(2, lk, 16, scale=s), f32(2, lk, 5)) for lq, lk in ((7, 30), (30, 7), (1, 1))
             for s in (1.0, 6.0)]
    for c, o in zip(cases, run_many(k, cases)):
        check(k, *c, o)
    q, kk, v = f32(2, 3, 6, 16), f32(2, 1, 20, 16), f32(2, 1, 20, 8)
    m = RNG.random((6, 20)) < 0.5
    m[1] = False
    if target == "avx2":
        o = softgen.attention(q, kk, v, normalizer="stablemax", mask=m, masked_rows="zero")
        r = _oracle(q, kk, v, normalizer="stablemax", mask=m, masked_rows="zero")
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=2e-6)
    with pytest.raises(softgen.UsageError, match="no streaming form yet"):
        softgen.compile("attention", normalizer="stablemax", algorithm="streaming")


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
           ((q, k, v), {"normalizer": "lssa"}, "supports softmax, stablemax"),
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
    with pytest.raises(softgen.UsageError, match="not built yet"):
        softgen.compile("attention", normalizer="softplus_l1")
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


# -- export ---------------------------------------------------------------------------------------

C_MAIN = r"""
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include "att.h"
int main(void) {
    enum { B = 2, LQ = 3, LK = 5, D = 4, DV = 2 };
    float q[B][LQ][D], k[B][LK][D], v[B][LK][DV], o[B][LQ][DV];
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < LQ; i++) for (int j = 0; j < D; j++) q[b][i][j] = 0.1f * (i + j + b);
        for (int i = 0; i < LK; i++) for (int j = 0; j < D; j++) k[b][i][j] = 0.2f * (i - j);
        for (int i = 0; i < LK; i++) for (int j = 0; j < DV; j++) v[b][i][j] = (float)(i * DV + j);
    }
    int rc = att(&q[0][0][0], &k[0][0][0], &v[0][0][0], &o[0][0][0], B, LQ, LK, D, DV, D, D, DV, DV);
    if (rc) { printf("rc %d\n", rc); return 1; }
    if (att(NULL, &k[0][0][0], &v[0][0][0], &o[0][0][0], B, LQ, LK, D, DV, D, D, DV, DV) != ATT_ENULL) return 2;
    if (att(&q[0][0][0], &k[0][0][0], &v[0][0][0], &o[0][0][0], B, LQ, LK, D, DV, D - 1, D, DV, DV) != ATT_ESTRIDE)
        return 3;
    float o2[B][LQ][DV];
    for (int t = 0; t <= 3; t++) {   /* att_mt: the same bits for every thread count */
        if (att_mt(&q[0][0][0], &k[0][0][0], &v[0][0][0], &o2[0][0][0], B, LQ, LK, D, DV, D, D, DV, DV, t) != 0)
            return 4;
        if (memcmp(o, o2, sizeof o) != 0)
            return 5;
    }
    if (att_mt(&q[0][0][0], &k[0][0][0], &v[0][0][0], &o2[0][0][0], B, LQ, LK, D, DV, D, D, DV, DV, -1) != ATT_ETHREADS)
        return 6;
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
    assert "size_t lq" in header and "ldv" in header and "int att_mt(" in header
    (tmp_path / "main.c").write_text(C_MAIN)
    subprocess.run([cc, "-O1", "-o", str(tmp_path / "main"), str(tmp_path / "main.c"), f"-I{tmp_path}",
                    f"-L{tmp_path}", "-latt", f"-Wl,-rpath,{tmp_path}"], check=True)
    out = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    o = np.array([float(s) for s in out.stdout.split()]).reshape(2, 3, 2)
    b, i, j = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    q = 0.1 * (i + j + b)
    kk = np.broadcast_to(0.2 * (np.arange(5)[:, None] - np.arange(4)[None, :]), (2, 5, 4))
    v = np.broadcast_to(np.arange(10.0).reshape(5, 2), (2, 5, 2))
    np.testing.assert_allclose(o, ref.attention(q, kk, v, causal=True, scale=0.5), rtol=1e-5, atol=1e-5)
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


def test_tune_attention_blocks(tmp_path, monkeypatch):
    """softgen tune of attention: br/bc candidates timed, the winner recorded (algorithm
    "streaming"); compile then takes it (k.tuned) unless br/bc are given."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    t = get_target("host")
    cands = attention_candidates(t)
    assert cands[0] == t.attention and len(cands) >= 3
    res = softgen.tune("attention", target="host", shapes="40x40x16x16", budget_s=1.5, progress=False, head_dim=16)
    rec, = res.records
    assert rec.algorithm == "streaming" and set(rec.schedule) == {"br", "bc"}
    k = softgen.compile("attention", head_dim=16, target="host")
    ph = k.program.phases[0]
    assert k.tuned and (ph.br, ph.bc) == (rec.schedule["br"], rec.schedule["bc"])
    assert "attention blocks: tuned" in k.explain()
    assert not softgen.compile("attention", head_dim=16, target="host", schedule={"br": 4, "bc": 32}).tuned
    with pytest.raises(softgen.UsageError, match="mask='none'"):
        softgen.tune("attention", target="host", shapes="8x8x4x4", budget_s=1, progress=False, mask="additive")


def test_tvm_builds_the_three_phase_form():
    from softgen.backends.tvm_adapter import available
    ok, why = available()
    if not ok:
        pytest.skip(f"TVM backend: {why}")
    k = softgen.compile("attention", backend="tvm", causal=True, head_dim=16)
    assert k.algorithm == "three-phase"
    q, kk, v = f32(2, 9, 16), f32(2, 12, 16), f32(2, 12, 5)
    check(k, q, kk, v, k(q, kk, v))
    with pytest.raises(softgen.UsageError, match="no streaming attention"):
        softgen.compile("attention", backend="tvm", algorithm="streaming")


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
    assert "causal=1" in (tmp_path / "att_cli.h").read_text()
    bad = subprocess.run(run + ["emit", "--op", "attention", "--normalizer", "lssa"], capture_output=True, text=True)
    assert bad.returncode == 2 and "supports softmax, stablemax" in bad.stderr
