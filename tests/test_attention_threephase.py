"""The three-phase attention form's optional outputs (issue 14, docs/ops.md §10): ``lse`` equals the
streaming form's for every normalizer that has one (softmax: the oracle's log-sum-exp);
``kv_lengths`` in the kernel for every normalizer gives the bits of the additive mask they make
(o and lse), fully masked and fully padded rows (NaN, lse -inf), any thread count; Sinkhorn and
SOFT refuse what they do not take, saying why; softgen.attention passes kv_lengths to the kernel
(no Lq x Lk mask) and picks top-k's form by the target's (top_k, Lk) rule; SOFT's given landmarks
on the same strided entry; TVM once. Kernels are built once per module."""
from __future__ import annotations

import numpy as np
import pytest

import softgen
from softgen import functional, reference as ref
from softgen._data import data_dir
from softgen.binding import bind
from softgen.errors import UsageError
from softgen.targets import _load, get_target

RNG = np.random.default_rng(1421)
NORMS = {"softmax": {}, "stablemax": {}, "softplus_l1": {}, "lssa": {}, "lssar": {"p": 3},
         "topk_softmax": {"top_k": 3}, "topk_r0": {"top_k": 3, "renormalize": 0}}
LQ, LK, D, DV = 6, 11, 8, 3


def _norm(name: str) -> str:
    return "topk_softmax" if name.startswith("topk") else name


@pytest.fixture(scope="module")
def forms():
    """Per normalizer: (three-phase, streaming) kernels, causal, an additive mask, head_dim 8."""
    out = {}
    for nm, kw in NORMS.items():
        common = dict(normalizer=_norm(nm), head_dim=D, causal=1, mask="additive", **kw)
        out[nm] = (softgen.compile("attention", algorithm="three-phase", **common),
                   softgen.compile("attention", algorithm="streaming", **common))
    return out


def inputs():
    """q, k, v as strided (B, H, L, d) views with GQA (4 query heads, 2 kv heads); an additive mask
    with a fully masked row; kv_lengths: all keys, some, none."""
    def t(*shape):
        return (RNG.standard_normal(shape) * 1.5).astype(np.float32).transpose(0, 2, 1, 3)
    q, k, v = t(3, LQ, 4, D), t(3, LK, 2, D), t(3, LK, 2, DV)
    m = np.where(RNG.random((LQ, LK)) < 0.8, np.float32(0), np.float32(-np.inf))
    m[:, -1], m[2] = 0, -np.inf
    return q, k, v, m, np.array([LK, 5, 0])


@pytest.mark.parametrize("nm", list(NORMS))
def test_lse_and_kv_lengths_equal_streaming_and_the_mask(forms, nm):
    k3, ks = forms[nm]
    q, k, v, m, n = inputs()
    o, lse = k3(q, k, v, m, kv_lengths=n, return_lse=True)
    pad = np.where(np.arange(LK) < n[:, None, None, None], np.float32(0), np.float32(-np.inf))
    o2, lse2 = k3(q, k, v, np.ascontiguousarray(m + pad), return_lse=True)   # the folded additive mask
    np.testing.assert_array_equal(o, o2)
    np.testing.assert_array_equal(lse, lse2)
    o3, lse3 = k3(q, k, v, m, kv_lengths=n, return_lse=True, threads=2)
    assert np.array_equal(o3, o, equal_nan=True) and np.array_equal(lse3, lse, equal_nan=True)
    # the rows with no kept key (the masked row, the causal ones, batch 2's padding): lse -inf, o NaN
    dead = np.all(ref._attention_scores(np.zeros((3, 4, LQ, 1)), np.zeros((3, 4, LK, 1)), 1.0, True, m, n)
                  == -np.inf, axis=-1)
    assert dead[2].all() and dead[:, :, 2].all()
    np.testing.assert_array_equal(lse == -np.inf, dead)
    assert np.isnan(o[dead]).all() and np.isfinite(o[~dead]).all() and np.isfinite(lse[~dead]).all()
    so, sl = ks(q, k, v, m, kv_lengths=n, return_lse=True)
    np.testing.assert_array_equal(sl == -np.inf, dead)
    np.testing.assert_allclose(lse[~dead], sl[~dead], rtol=1e-5, atol=1e-5)
    tol = 1e-3 if nm == "lssar" else 1e-5   # lssar's power p amplifies float32 rounding near R = 0
    np.testing.assert_allclose(o[~dead], so[~dead], rtol=tol, atol=tol)
    if nm == "softmax":
        r, rl = ref.attention(q, k, v, scale=float(np.float32(D ** -0.5)), causal=True, mask=m, kv_lengths=n,
                              return_lse=True)
        np.testing.assert_allclose(lse[~dead], rl[~dead], rtol=1e-5, atol=1e-5)


def test_front_door_kv_lengths_in_the_kernel(monkeypatch):
    """softgen.attention's three-phase form: kv_lengths reach the kernel (no additive mask is made
    for them, only the caller's mask passed on), lse comes back, masked_rows="zero" zeroes the rows
    whose lse is -inf, as streaming. (With the mask: the kernels of ``forms``, no build of its own.)"""
    made = []
    real = functional._additive_mask
    monkeypatch.setattr(functional, "_additive_mask", lambda m, n, *a: made.append(n) or real(m, n, *a))
    q, k, v, m, n = inputs()
    kw = dict(normalizer="lssa", causal=True, mask=m, kv_lengths=n, return_lse=True, masked_rows="zero")
    o, lse = softgen.attention(q, k, v, algorithm="three-phase", **kw)
    assert made and all(x is None for x in made)
    so, sl = softgen.attention(q, k, v, **kw)
    np.testing.assert_array_equal(lse == -np.inf, sl == -np.inf)
    assert (o[2] == 0).all() and np.array_equal(o == 0, so == 0)
    np.testing.assert_allclose(o, so, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse[np.isfinite(sl)], sl[np.isfinite(sl)], rtol=1e-5, atol=1e-5)


def test_sinkhorn_and_soft_refuse_saying_why():
    q, k, v, m, n = inputs()
    sk = softgen.compile("attention", normalizer="sinkhorn", head_dim=D)
    o = sk(q, k, v, kv_lengths=n)   # it takes kv_lengths: batch 2 has no key, NaN
    assert np.isnan(o[2]).all() and np.isfinite(o[:2]).all()
    with pytest.raises(UsageError, match="return_lse .*Sinkhorn's P is normalised over rows and columns"):
        sk(q, k, v, return_lse=True)
    sf = softgen.compile("attention", normalizer="soft", head_dim=D, landmarks=2)
    with pytest.raises(UsageError, match="kv_lengths and return_lse .*SOFT's global form"):
        sf(q, k, v, kv_lengths=n, return_lse=True)
    for nm in ("sinkhorn", "soft"):
        with pytest.raises(UsageError, match=f"return_lse: {'Sinkhorn' if nm == 'sinkhorn' else 'SOFT'}"):
            softgen.attention(q, k, v, normalizer=nm, return_lse=True)


def test_topk_form_by_target_rule(monkeypatch):
    """top-k's form in softgen.attention (auto): streaming iff Lk >= a + b top_k (the target file's
    topk_stream_keys); both forms give the oracle's values; explain states the rule; a bad value
    in a target file is refused. (With the additive mask: ``forms``' top-k kernel, no build of its own.)"""
    avx512 = get_target("avx512")
    assert avx512.topk_stream_keys == (1536, 8)
    assert not avx512.topk_streams(32, 1024) and avx512.topk_streams(32, 4096)
    assert not avx512.topk_streams(256, 3000) and avx512.topk_streams(256, 4096)
    host = get_target("host")
    seen = []
    real = functional._kernel
    monkeypatch.setattr(functional, "_kernel", lambda *a: seen.append(a[3]) or real(*a))
    q, k, v, m, n = inputs()
    o = softgen.attention(q, k, v, normalizer="topk_softmax", top_k=3, causal=True, mask=m, kv_lengths=n)
    assert seen == ["auto" if host.topk_streams(3, LK) else "three-phase"]
    r = ref.attention(q, k, v, causal=True, mask=m, kv_lengths=n, normalizer="topk_softmax", top_k=3)
    np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-5)
    assert "Lk >= 1536 + 8 top_k = 1792 keys" in softgen.compile(
        "attention", normalizer="topk_softmax", top_k=32, target="avx512", head_dim=D).explain()
    text = (data_dir("targets") / "avx512.toml").read_text().replace("topk_stream_keys = [1536, 8]",
                                                                         "topk_stream_keys = [1536]")
    with pytest.raises(UsageError, match="topk_stream_keys must be"):
        _load("avx512", text)


def test_tvm_three_phase_lse_and_kv_lengths():
    """TVM's three-phase form (its phases through the same entry): lse and kv_lengths as C's (the
    TVM kernel test_attention_strided builds)."""
    pytest.importorskip("tvm")
    kw = dict(normalizer="lssa", head_dim=D, mask="additive", algorithm="three-phase")
    kt, kc = softgen.compile("attention", backend="tvm", **kw), softgen.compile("attention", **kw)
    q, k, v, m, n = inputs()
    o, lse = kt(q, k, v, m, kv_lengths=n, return_lse=True)
    co, cl = kc(q, k, v, m, kv_lengths=n, return_lse=True)
    assert np.isnan(o[2]).all() and (lse[2] == -np.inf).all()
    np.testing.assert_array_equal(np.isnan(o), np.isnan(co))
    np.testing.assert_array_equal(lse == -np.inf, cl == -np.inf)
    np.testing.assert_allclose(o, co, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse[np.isfinite(cl)], cl[np.isfinite(cl)], rtol=1e-5, atol=1e-5)


def test_soft_given_landmarks_on_the_strided_abi():
    """SOFT with a landmarks input takes abi.ATTENTION (landmarks, m and their strides per query
    head): strided GQA views and landmarks broadcast over the heads are read where they are (no
    copies), with the oracle's values and the bits of contiguous, repeated copies."""
    k = softgen.compile("attention", normalizer="soft", head_dim=D)
    assert k._abi.kind == "attention" and k._abi.landmarks and "size_t m, ptrdiff_t landmarks_sb" in k._abi.signature("f")
    q, kk, v, _, _ = inputs()
    lm = (RNG.standard_normal((3, 1, 4, D))).astype(np.float32)   # per batch, every head's
    args = bind(k._abi, k.name, (q, kk, v, lm), None).args
    i = [nm for _, nm in k._abi.params()].index("landmarks")
    assert list(args[:3]) == [a.__array_interface__["data"][0] for a in (q, kk, v)]
    assert args[i] == lm.__array_interface__["data"][0] and args[i + 1] == 4 and args[i + 3] == 0   # head stride 0
    o = k(q, kk, v, lm)
    rep = [np.ascontiguousarray(np.repeat(a, 2, axis=1)) for a in (kk, v)]
    full = np.ascontiguousarray(np.broadcast_to(lm, (3, 4, 4, D)))
    np.testing.assert_array_equal(o, k(np.ascontiguousarray(q), *rep, full))
    r = ref.soft_attention(q, *rep, landmarks=full, n_iter=20, head_dim=D)
    np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(softgen.attention(q, kk, v, normalizer="soft", landmarks=lm), o)
    with pytest.raises(ValueError, match="landmarks"):
        k(q, kk, v, lm[..., :3])


def test_three_phase_refuses_the_streaming_blocks():
    """br, bc, wide are the streaming form's: asked for with algorithm='three-phase' they were
    dropped unchecked (br * wide past the tile's limit too), now a UsageError saying so."""
    for blocks in ({"br": 4, "bc": 64}, {"br": 32, "bc": 64, "wide": 4096}):
        with pytest.raises(UsageError, match="the streaming form's blocks, and algorithm='three-phase'"):
            softgen.compile("attention", algorithm="three-phase", head_dim=D, schedule=blocks)


@pytest.mark.parametrize("nm,backend", [("softmax", "c"), ("softplus_l1", "c"), ("topk_softmax", "c"),
                                        ("topk_r0", "c"), ("softmax", "tvm")])
def test_lse_of_a_nan_row_is_nan(nm, backend):
    """A query row with a NaN has only NaN scores, whose max may drop them (V_MAX's operand
    order: avx2, 11 keys) and be -inf: the three-phase lse took the row for one with no kept key
    (-inf); it is NaN, as the streaming form's and the oracle's (docs/ops.md §10)."""
    if backend == "tvm":
        pytest.importorskip("tvm")
    kw = dict(normalizer=_norm(nm), head_dim=D, target="avx2", **NORMS[nm])   # top-k: bench/fuzz.py's find
    k3 = softgen.compile("attention", algorithm="three-phase", backend=backend, **kw)
    ks = softgen.compile("attention", algorithm="streaming", **kw)
    q, k, v, m, n = inputs()
    q = np.array(q)
    q[0, 1, 3, 0] = np.nan
    o, lse = k3(q, k, v, kv_lengths=n, return_lse=True)
    _, sl = ks(q, k, v, kv_lengths=n, return_lse=True)
    assert np.isnan(o[0, 1, 3]).all() and np.isnan(lse[0, 1, 3]) and np.isnan(sl[0, 1, 3])
    assert np.array_equal(np.isnan(lse), np.isnan(sl)) and np.array_equal(lse == -np.inf, sl == -np.inf)


def test_a_mask_broadcast_or_strided_along_the_keys(forms):
    """bench/fuzz.py: the three-phase entry takes a mask row with unit key stride only; a mask
    broadcast along the keys (a scalar, (Lq, 1)) or a strided view must reach it copied, not as C
    error 2 (ESTRIDE), through the Kernel and softgen.attention, with the bits of the dense mask."""
    tp, st = forms["softmax"]
    q, k, v = (RNG.standard_normal(s).astype(np.float32) for s in ((2, LQ, D), (2, LK, D), (2, LK, DV)))
    col = RNG.uniform(-2, 0, (LQ, 1)).astype(np.float32)
    wide = RNG.uniform(-2, 0, (LQ, 2 * LK)).astype(np.float32)
    for m in (col, wide[:, ::2], np.float32(-0.5)):
        dense = np.ascontiguousarray(np.broadcast_to(m, (LQ, LK)))
        assert np.array_equal(tp(q, k, v, m), tp(q, k, v, dense), equal_nan=True)
        assert np.array_equal(st(q, k, v, m), st(q, k, v, dense), equal_nan=True)
    for m in (0.0, np.float32(-1.0), col):
        got = softgen.attention(q, k, v, mask=m, algorithm="three-phase")
        assert np.array_equal(got, softgen.attention(q, k, v, mask=np.broadcast_to(np.float32(m), (LQ, LK)).copy(),
                                                     algorithm="three-phase"), equal_nan=True)
