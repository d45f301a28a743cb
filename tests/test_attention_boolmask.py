"""A boolean attention mask drops its keys whatever their scores in every form (issue 14,
docs/ops.md §10 "Masks and non-finite scores"): a +inf or NaN score of a dropped key (inf/NaN in
k, an overflowing dot product) never reaches the output of the three-phase form, short top-k,
Sinkhorn, lssa/lssar, as the float64 oracle's np.where(keep, s, -inf) and the streaming form;
the forms that do not stream take the streaming kernel's uint8 keep-mask (same C signature); an
additive -inf entry under a +inf score stays NaN (torch's contract). TVM once. Small shapes, the
kernels built once per module (one head_dim)."""
from __future__ import annotations

import numpy as np
import pytest

import softgen
from softgen import reference as ref

RNG = np.random.default_rng(2414)
B, HQ, HKV, LQ, LK, D, DV = 2, 4, 2, 5, 9, 8, 3
# normalizer -> its parameters; every one in its three-phase (or only) form and as auto picks it
NORMS = {"softmax": {}, "stablemax": {}, "softplus_l1": {}, "topk_softmax": {"top_k": 3}, "sinkhorn": {},
         "lssa": {}, "lssar": {"p": 3}}


def _inputs():
    """q, k, v, keep, kv_lengths: GQA heads; keys 2 (+inf, kv head 0 of batch 0), 4 (NaN, kv head 1
    of batch 1) and 6 (a finite key whose dot products overflow) dropped by
    every query of their heads, so the oracle is finite there; one fully masked row (NaN); batch
    1's last key padded by kv_lengths."""
    q = RNG.normal(size=(B, HQ, LQ, D)).astype(np.float32)
    k = RNG.normal(size=(B, HKV, LK, D)).astype(np.float32)
    v = RNG.normal(size=(B, HKV, LK, DV)).astype(np.float32)
    keep = RNG.random((B, HQ, LQ, LK)) < 0.75
    keep[..., 0] = True
    k[0, 0, 2, 1], keep[0, :2, :, 2] = np.inf, False
    k[1, 1, 4, 0], keep[1, 2:, :, 4] = np.nan, False
    k[0, :, 6], keep[0, :, :, 6] = np.float32(3e38), False   # q.k: float32 partial sums of +-3e38 q_i overflow
    keep[1, 3, 2] = False                                       # a fully masked row
    return q, k, v, keep, np.array([LK, LK - 1])


Q, K, V, KEEP, LENS = _inputs()


def _reference(norm: str, mask, kv_lengths=None, **kw):
    if norm == "sinkhorn":
        return ref.sinkhorn_attention(Q, K, V, mask=mask, kv_lengths=kv_lengths)
    return ref.attention(Q, K, V, mask=mask, kv_lengths=kv_lengths, normalizer=norm, **kw)


def _check(o, r, what: str) -> None:
    nan = np.isnan(r)
    assert np.array_equal(np.isnan(o), nan), f"{what}: NaN where the oracle is {int((np.isnan(o) & ~nan).sum())} " \
                                              f"times, finite where it is NaN {int((~np.isnan(o) & nan).sum())}"
    tol = 1e-3 if "lssar" in what else 1e-5   # as tests/test_attention_norms.py; lssar's power p amplifies float32 rounding near R = 0
    np.testing.assert_allclose(o[~nan], r[~nan], rtol=tol, atol=tol, err_msg=what)


@pytest.mark.parametrize("norm", NORMS)
def test_bool_mask_drops_nonfinite_scores(norm):
    """Three-phase (Sinkhorn: its blocked form) and auto (streaming where it streams; short top-k:
    three-phase by the target's rule) == the oracle with +inf, NaN and overflowing scores on
    dropped keys, kv_lengths, GQA and a fully masked row; masked_rows="zero" zeroes only that row;
    two threads give the same bits; a mask broadcast over the batch and a strided key axis too."""
    kw = NORMS[norm]
    r = _reference(norm, KEEP, LENS, **kw)
    assert np.isfinite(r[0]).all() and np.isfinite(r[1, :3]).all() and np.isnan(r[1, 3, 2]).all()
    for alg in (["auto"] if norm == "sinkhorn" else ["three-phase", "auto"]):
        call = dict(normalizer=norm, mask=KEEP, kv_lengths=LENS, algorithm=alg, **kw)
        o = softgen.attention(Q, K, V, threads=1, **call)
        _check(o, r, f"{norm} {alg}")
        assert np.array_equal(softgen.attention(Q, K, V, threads=2, **call), o, equal_nan=True)
        z = softgen.attention(Q, K, V, masked_rows="zero", **call)
        assert (z[1, 3, 2] == 0).all() and np.array_equal(np.delete(z[1, 3], 2, 0), np.delete(o[1, 3], 2, 0))
    if norm not in ("sinkhorn", "topk_softmax"):   # lse: three-phase == streaming, finite but the dead row's -inf
        lse = [softgen.attention(Q, K, V, normalizer=norm, mask=KEEP, kv_lengths=LENS, algorithm=alg, return_lse=True,
                                 **kw)[1] for alg in ("three-phase", "streaming")]
        assert lse[0][1, 3, 2] == -np.inf and np.isfinite(np.delete(lse[0].ravel(), np.ravel_multi_index((1, 3, 2), lse[0].shape))).all()
        np.testing.assert_allclose(lse[0], lse[1], rtol=1e-5, atol=1e-5)
    # the entry reads the keep-mask by its strides: broadcast over the batch (stride 0), and a
    # strided key axis (binding copies the rows)
    wide = np.repeat(KEEP[0], 2, axis=-1)[..., ::2]
    call = dict(normalizer=norm, mask=wide, algorithm="auto" if norm == "sinkhorn" else "three-phase", **kw)
    _check(softgen.attention(Q, K, V, **call), _reference(norm, np.broadcast_to(KEEP[0], KEEP.shape), **kw),
           f"{norm} broadcast, strided mask")


def test_three_phase_bool_kernel_and_additive_contract():
    """compile(mask="bool", algorithm="three-phase") has the streaming kernel's C signature (a uint8
    keep-mask) and drops the overflowing key; the additive mask's contract is torch's: a -inf entry
    under a +inf score makes the row NaN, in both forms (the same rows as the oracle's s + m)."""
    kb = softgen.compile("attention", head_dim=D, mask="bool", algorithm="three-phase")
    ks = softgen.compile("attention", head_dim=D, mask="bool", algorithm="streaming")
    assert kb._abi.mask == ks._abi.mask == "bool" and kb._abi.signature("f") == ks._abi.signature("f")
    assert "const uint8_t *mask" in kb._abi.signature("f")
    r = ref.attention(Q, K, V, mask=KEEP)
    _check(kb(Q, K, V, KEEP), r, "three-phase mask='bool' kernel")
    _check(kb(Q, K, V, KEEP.view(np.uint8) * np.uint8(7)), r, "three-phase mask='bool' kernel, uint8 7 keeps")
    with pytest.raises(TypeError, match="boolean keep-mask"):
        kb(Q, K, V, KEEP.astype(np.float32))
    add = np.where(KEEP, np.float32(0), np.float32(-np.inf))
    k = K.copy()
    k[0, :, 6] = 0.5   # the overflow is float32's, not the oracle's: the inf and NaN keys only
    ra = ref.attention(Q, k, V, mask=add)
    assert np.isnan(ra[0, :2]).any() and np.isnan(ra[1, 2:]).all()   # +inf / NaN + -inf: NaN rows
    for alg in ("three-phase", "streaming"):
        _check(softgen.attention(Q, k, V, mask=add, algorithm=alg), ra, f"additive {alg}")


def test_tvm_bool_mask_three_phase():
    """TVM's forms that do not stream (three-phase softmax, short top-k, Sinkhorn) through the same
    entry: equal to the oracle with the dropped +inf / NaN / overflowing keys."""
    pytest.importorskip("tvm")
    for norm in ("softmax", "topk_softmax", "sinkhorn"):
        kw = NORMS[norm]
        call = dict(normalizer=norm, mask=KEEP, kv_lengths=LENS, backend="tvm", **kw)
        _check(softgen.attention(Q, K, V, algorithm="auto" if norm == "sinkhorn" else "three-phase", **call),
               _reference(norm, KEEP, LENS, **kw), f"tvm {norm}")
