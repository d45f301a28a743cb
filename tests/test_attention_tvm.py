"""Streaming attention in the TVM backend (issue 14; backends/tvm_attention.py): the TensorIR
phase behind the explicit-stride C entry, against the float64 oracle and the C backend's
streaming kernel of the same blocks: Lq != Lk, d and dv not multiples of the lanes, causal, bool
and additive masks (broadcast and per head), kv_lengths, lse, GQA, strided heads, fully masked
and NaN rows, thread counts; algorithm="auto" streams on TVM. Kernels are shared per module (TVM
builds are slow)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import STRICT, _can_emulate

import softgen
from softgen import reference as ref
from softgen.backends.tvm_adapter import available
from softgen.numerics.constants import EXP_MIN, LOG2E, P5

if not available()[0]:
    if STRICT:
        raise RuntimeError(f"CI needs the TVM backend: {available()[1]}")
    pytest.skip(available()[1], allow_module_level=True)

RNG = np.random.default_rng(1414)
SMALL = {"br": 3, "bc": 20}   # several key blocks at small sizes; bc not a multiple of the lanes
D = 19                        # head_dim: not a multiple of the lanes either


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def kernels():
    """(TVM, C) streaming kernels of the same blocks, per case."""
    cases = {"bool": {"mask": "bool"}, "additive": {"mask": "additive", "causal": True},
             "stablemax": {"mask": "bool", "normalizer": "stablemax", "causal": True}}
    return {name: tuple(softgen.compile("attention", head_dim=D, algorithm="streaming", schedule=SMALL, backend=be,
                                        **kw) for be in ("tvm", "c"))
            for name, kw in cases.items()}


def _close(o, r, lse=None, rlse=None, rtol=2e-5, atol=2e-6):
    assert np.array_equal(np.isnan(o), np.isnan(r)), "NaN pattern differs"
    np.testing.assert_allclose(o[~np.isnan(o)], r[~np.isnan(r)], rtol=rtol, atol=atol)
    if lse is not None:
        assert np.array_equal(np.isnan(lse), np.isnan(rlse)) and np.array_equal(np.isneginf(lse), np.isneginf(rlse))
        fin = np.isfinite(rlse)
        np.testing.assert_allclose(lse[fin], rlse[fin], rtol=1e-5, atol=1e-5)


def test_auto_streams_on_tvm_and_says_so():
    k = softgen.compile("attention", head_dim=8, backend="tvm")
    assert k.algorithm == "streaming" and k.backend == "tvm"
    assert "# attention form: streaming" in k.explain() and "'tvm' lowers the streaming form" in k.explain()
    assert "streaming attention" in k.source and "@T.prim_func" in k.source
    assert "algorithm streaming" in k.wrapper[:400]
    # the exp and log are the TVM emitter's (numerics/constants.py), not a second polynomial
    for c in (EXP_MIN, LOG2E, P5[0]):
        assert repr(float(np.float32(c))) in k.source
    assert "T.exp(" not in k.source and "T.log(" not in k.source
    assert softgen.compile("attention", head_dim=8, backend="tvm", algorithm="three-phase").algorithm == "three-phase"
    # every normalizer that streams on C streams on TVM (tests/test_attention_norms.py runs them)
    for norm in ("softplus_l1", "lssa", "lssar"):
        assert softgen.compile("attention", head_dim=8, backend="tvm", normalizer=norm).algorithm == "streaming"


@pytest.mark.parametrize("hq,hkv", [(4, 2), (3, 1)])
def test_bool_mask_gqa_lengths_lse_strided(kernels, hq, hkv):
    """GQA in the kernel, strided (B, L, H, d) views, bool masks broadcast and per head, kv_lengths
    0, < Lk and > Lk, a fully masked row, a NaN row, lse; equal to the C streaming form within
    tolerance; bitwise independent of the thread count."""
    kt, kc = kernels["bool"]
    x = f32(3, 45, hq + 2 * hkv, D)                    # Lk = 45: 3 key blocks of 20
    q = x[:, :13, :hq].transpose(0, 2, 1, 3)           # Lq = 13 != Lk
    kk = x[:, :, hq:hq + hkv].transpose(0, 2, 1, 3)
    v = x[:, :, hq + hkv:, :7].transpose(0, 2, 1, 3)   # dv = 7
    q[0, 0, 2, 0] = np.nan
    lens = np.array([45, 0, 30])
    for m in (RNG.random((13, 45)) < 0.6, RNG.random((3, hq, 13, 45)) < 0.6):
        m[..., 4, :] = False
        o, lse = kt(q, kk, v, m, kv_lengths=lens, return_lse=True)
        r, rl = ref.attention(q, kk, v, scale=float(np.float32(D ** -0.5)), mask=m, kv_lengths=lens, return_lse=True)
        _close(o, r, lse, rl)
        assert np.isnan(o[0, 0, 2]).all() and np.isneginf(lse[..., 4]).all() and np.isneginf(lse[1]).all()
        oc, lc = kc(q, kk, v, m, kv_lengths=lens, return_lse=True)
        _close(o, oc, lse, lc)
        for t in (1, 2):
            ot, lt = kt(q, kk, v, m, kv_lengths=lens, return_lse=True, threads=t)
            assert np.array_equal(ot, o, equal_nan=True) and np.array_equal(lt, lse, equal_nan=True)


def test_additive_mask_causal_no_mask_and_long_queries(kernels):
    """An additive per-head mask with bottom-right causal (Lq < Lk, Lq > Lk: the first rows see no
    key), the same kernel with mask=None; Lq > 64 (several query chunks); huge scores."""
    kt, kc = kernels["additive"]
    scale = float(np.float32(D ** -0.5))
    for lq, lk in ((30, 47), (70, 41), (9, 3)):
        q, kk, v = f32(2, 2, lq, D, scale=4.0), f32(2, 1, lk, D, scale=4.0), f32(2, 1, lk, 5)
        m = (np.where(RNG.random((2, 2, lq, lk)) < 0.8, 0.0, -np.inf)
             + RNG.standard_normal((2, 2, lq, lk))).astype(np.float32)
        o, lse = kt(q, kk, v, m, return_lse=True)
        r, rl = ref.attention(q, kk, v, scale=scale, causal=True, mask=m, return_lse=True)
        _close(o, r, lse, rl, rtol=1e-4, atol=1e-5)
        _close(o, kc(q, kk, v, m), rtol=1e-4, atol=1e-5)
        _close(kt(q, kk, v), ref.attention(q, kk, v, scale=scale, causal=True), rtol=1e-4, atol=1e-5)


def test_stablemax_streams_on_tvm(kernels):
    kt, kc = kernels["stablemax"]
    assert kt.algorithm == "streaming" and "no rescaling" in kt.explain()
    q, kk, v = f32(2, 4, 19, D, scale=3.0), f32(2, 2, 40, D, scale=3.0), f32(2, 2, 40, 6)
    m = RNG.random((2, 1, 19, 40)) < 0.7
    m[..., 0, :] = False
    lens = np.array([40, 13])
    o, lse = kt(q, kk, v, m, kv_lengths=lens, return_lse=True)
    scale = float(np.float32(D ** -0.5))
    r = ref.attention(q, kk, v, scale=scale, causal=True, mask=m, kv_lengths=lens, normalizer="stablemax")
    s = ref._attention_scores(q, kk, scale, True, m, lens)
    with np.errstate(divide="ignore"):
        rl = np.log(np.where(s >= 0, s + 1, 1 / (1 - s)).sum(-1))
    _close(o, r, lse, rl)
    _close(o, kc(q, kk, v, m, kv_lengths=lens), rtol=1e-5, atol=1e-6)


def test_front_door_decoding_without_adaptation():
    """softgen.attention(backend="tvm") streams: decoding (Lq = 1) against a KV cache, GQA views,
    kv_lengths, return_lse, masked_rows="zero"."""
    x = f32(2, 300, 6, 8)
    q = f32(2, 4, 1, 8)
    kk, v = x[:, :, :2].transpose(0, 2, 1, 3), x[:, :, 2:4].transpose(0, 2, 1, 3)
    lens = np.array([300, 0])
    o, lse = softgen.attention(q, kk, v, backend="tvm", kv_lengths=lens, return_lse=True, masked_rows="zero")
    r, rl = ref.attention(q, kk, v, scale=float(np.float32(8 ** -0.5)), kv_lengths=lens, return_lse=True,
                          masked_rows="zero")
    _close(o, r, lse, rl)
    assert (o[1] == 0).all()


def test_neon_under_qemu():
    """The TVM object for aarch64 behind the same C entry, emulated: GQA, a bool mask, kv_lengths, causal."""
    k = softgen.compile("attention", backend="tvm", target="neon", causal=True, head_dim=D, mask="bool", schedule=SMALL)
    _can_emulate(k)
    q, kk, v = f32(2, 4, 21, D), f32(2, 2, 40, D), f32(2, 2, 40, 7)
    m = RNG.random((21, 40)) < 0.7
    lens = np.array([40, 9])
    o = k.run_emulated(q, kk, v, m, kv_lengths=lens)
    _close(o, ref.attention(q, kk, v, scale=float(np.float32(D ** -0.5)), causal=True, mask=m, kv_lengths=lens))
