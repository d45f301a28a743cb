"""The three-phase attention form on ``abi.ATTENTION``'s explicit strides (issue 14): q, k, v as
strided (batch, head) views, GQA kv heads, a broadcast mask, read where they are (the bound
pointers are the views'), with the bits of contiguous copies and within the float64 oracle's
tolerance; the streaming kernel's C signature; kv_lengths and lse in the kernel. Kernels are
shared per module."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import check_attention, check_strided_heads, contiguous_heads

import softgen
from softgen.binding import bind

RNG = np.random.default_rng(1403)
CASES = {"softmax": {"causal": 1}, "lssar": {}, "topk_softmax": {"top_k": 3, "causal": 1}}


def views(b, lq, lk, hq, hkv, d, dv):
    """q, k, v as (B, H, L, d) views of (B, L, H, d) arrays (heads strided, not contiguous)."""
    def t(*shape):
        return (RNG.standard_normal(shape) * 2.0).astype(np.float32).transpose(0, 2, 1, 3)
    return t(b, lq, hq, d), t(b, lk, hkv, d), t(b, lk, hkv, dv)



def keep_mask(lq, lk):
    m = RNG.random((lq, lk)) < 0.75
    m[:, 0] = True
    m[4] = False            # a fully masked row: NaN
    return m


@pytest.fixture(scope="module")
def kernels():
    return {nm: softgen.compile("attention", normalizer=nm, head_dim=16, mask="additive", algorithm="three-phase", **kw)
            for nm, kw in CASES.items()}


@pytest.mark.parametrize("normalizer", list(CASES))
def test_three_phase_strided_heads(kernels, normalizer):
    k3 = kernels[normalizer]
    assert k3._abi.kind == "attention" and k3.program.strided and k3.algorithm == "three-phase"
    q, k, v = views(2, 13, 11, 4, 2, 16, 5)
    m = np.where(keep_mask(13, 11), np.float32(0), np.float32(-np.inf))   # (Lq, Lk): every (batch, head)
    args = bind(k3._abi, k3.name, (q, k, v, m), None).args
    ptrs = [a.__array_interface__["data"][0] for a in (q, k, v, m)]
    assert list(args[:3]) + [args[23]] == ptrs and args[24:26] == (0, 0)   # no copies; the mask broadcast
    o = check_strided_heads(k3, q, k, v, m)
    kw = dict(CASES[normalizer], normalizer=normalizer)
    front = softgen.attention(q, k, v, mask=m == 0, algorithm="three-phase", masked_rows="zero", **kw)
    np.testing.assert_array_equal(front, np.where(np.isnan(o), 0, o))


def test_same_signature_as_streaming(kernels):
    """A C caller switches algorithm without changing code: the streaming kernel's signature and
    manifest parameters."""
    for nm, kw in CASES.items():
        s = softgen.compile("attention", normalizer=nm, head_dim=16, mask="additive", **kw)
        assert s.algorithm == "streaming"
        assert kernels[nm]._abi.signature("f") == s._abi.signature("f")
        assert kernels[nm]._abi.param_list() == s._abi.param_list()


def test_kv_lengths_and_lse_in_the_kernel(kernels):
    """kv_lengths in the kernel (the padded keys' scores -inf): the bits of the additive mask they
    make, for every three-phase kernel here (softmax, lssar, top-k); NaN rows and lse -inf for a
    length 0; softmax: the streaming form's values and lse; a key-broadcast mask refused."""
    q, k, v = views(3, 6, 9, 2, 1, 16, 3)
    m = np.where(RNG.random((6, 9)) < 0.8, np.float32(0), np.float32(-np.inf))
    n = np.array([9, 4, 0])
    pad = np.where(np.arange(9) < n[:, None, None, None], np.float32(0), np.float32(-np.inf))
    for nm, k3 in kernels.items():
        o, lse = k3(q, k, v, m, kv_lengths=n, return_lse=True)
        o2, lse2 = k3(q, k, v, np.ascontiguousarray(m + pad), return_lse=True)
        np.testing.assert_array_equal(o, o2)
        np.testing.assert_array_equal(lse, lse2)
        assert np.isnan(o[2]).all() and (lse[2] == -np.inf).all(), nm
    k3 = kernels["softmax"]
    o, lse = k3(q, k, v, m, kv_lengths=n, return_lse=True)
    streamed = softgen.compile("attention", head_dim=16, mask="additive", causal=1)
    so, sl = streamed(q, k, v, m, kv_lengths=n, return_lse=True)
    np.testing.assert_array_equal(np.isnan(o), np.isnan(so))
    np.testing.assert_allclose(o, so, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, sl, rtol=1e-6, atol=1e-6)
    front = softgen.attention(q, k, v, causal=True, kv_lengths=n, mask=m == 0, algorithm="three-phase")
    np.testing.assert_array_equal(front, o)
    b = np.broadcast_to(m[:, :1], (6, 9))   # a mask broadcast along the keys: its rows copied
    np.testing.assert_array_equal(k3(q, k, v, b), k3(q, k, v, np.ascontiguousarray(b)))


def test_tvm_three_phase_strided():
    pytest.importorskip("tvm")
    kt = softgen.compile("attention", normalizer="lssa", head_dim=8, mask="additive", algorithm="three-phase",
                         backend="tvm")
    assert kt._abi.kind == "attention"
    q, k, v = views(2, 5, 7, 2, 1, 8, 3)
    m = np.where(keep_mask(5, 7), np.float32(0), np.float32(-np.inf))
    assert bind(kt._abi, kt.name, (q, k, v, m), None).args[0] == q.__array_interface__["data"][0]
    o = kt(q, k, v, m)
    c = contiguous_heads(q, k, v)
    cm = np.ascontiguousarray(np.broadcast_to(m, q.shape[:-1] + (7,)))
    np.testing.assert_array_equal(o, kt(*c, cm))
    check_attention(kt, o, *c, cm)
