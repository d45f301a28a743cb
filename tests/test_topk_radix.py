"""Top-k for any k (docs/ops.md §9, 10): radix select on the float bits (C backend) against the float64
reference. A copy of the host target with topk_network_max_k = 0 (every k takes radix select) runs
k = 1 ... n on the rows of test_topk.special_rows (ties, -inf / +inf / NaN / -0.0) at lengths around k
and the vector width, strided, dense and sparse, both normalisations; the shipped crossover and
avx2 / scalar / neon (qemu) once each; the TVM backend's refusal; top-k attention against its
oracle (Lq != Lk, causal, masks, GQA, fewer kept keys than k, fully masked rows)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import STRICT, check, host_copy_with_network_max, run, tvm_available
from test_topk import check_sparse, scatter, special_rows

import softgen
from softgen import reference as ref
from softgen._data import data_dir
from softgen.ops import get_op
from softgen.targets import _load, get_target


@pytest.fixture(scope="module")
def radix():
    """The name of a copy of the host target whose top-k always takes radix select."""
    with host_copy_with_network_max(0, "radix") as name:
        yield name


def radix_kernel(target: str, **params) -> softgen.Kernel:
    """One variant (no dispatch: one build): direct, or two-pass for the full softmax of renormalize=0."""
    alg = "direct" if params.get("renormalize", 1) else "two-pass"
    k = softgen.compile("topk_softmax", target=target, algorithm=alg, **params)
    assert any("sg_topk_radix(x, n" in s for s in k.sources().values() if isinstance(s, str)), \
        "not the radix selection"
    return k


def rows_for(k: int, lanes: int, rng) -> list[tuple[str, np.ndarray]]:
    """special_rows at lengths around k (n = k - 1, k, k + 1) and off the vector width."""
    out = []
    for n in sorted({max(k - 1, 1), k, k + 1, 2 * lanes + 3, 3 * k + 5}):
        for name, row in special_rows(n, rng).items():
            out.append((f"{name} n={n}", row))
        zeros = rng.choice(np.array([0.0, -0.0, 1.0], np.float32), n)   # -0.0 and +0.0 tie
        out.append((f"signed zeros n={n}", zeros))
    return out


@pytest.mark.parametrize("k,sparse,renormalize", [(1, 0, 1), (1, 1, 0), (63, 1, 1), (64, 0, 0), (65, 1, 1),
                                                  (100, 0, 1), (100, 1, 0), (100, 0, 0), (100, 1, 1)])
def test_radix_vs_reference(radix, k, sparse, renormalize, rng):
    kern = radix_kernel(radix, k=k, sparse=sparse, renormalize=renormalize)
    for name, row in rows_for(k, kern.target.lanes, rng):
        x = np.stack([row, row[::-1].copy()])
        if sparse:
            idx, w = kern(x)
            check_sparse(kern, x, idx, w, name)
        else:
            check(kern, x, kern(x), name)


def test_ties_and_strided_rows(radix, rng):
    """Many equal keys: the lower index wins, in both forms; strided (non-contiguous) rows, n not a
    multiple of the lanes; the dense row equals the scatter of the sparse one."""
    kd = radix_kernel(radix, k=70)
    ks = radix_kernel(radix, k=70, sparse=1)
    base = rng.integers(-2, 3, (5, 2 * 211)).astype(np.float32)
    x = base[:, ::2]                           # ldx = 2n
    assert not x.flags.c_contiguous
    y = kd(x)
    check(kd, x, y, "strided")
    idx, w = ks(x)
    check_sparse(ks, x, idx, w, "strided")
    assert np.array_equal(np.sort(idx, -1), np.stack([np.sort(np.argsort(-r, kind="stable")[:70]) for r in x]))
    assert np.allclose(scatter(x, idx, w), y, rtol=1e-6, atol=1e-30)


def test_shipped_crossover_and_targets(rng):
    """The target files' topk_network_max_k picks the selection: the network at it, radix above;
    avx2 and scalar natively (or emulated), neon under qemu once."""
    host = get_target("host")
    at = softgen.compile("topk_softmax", k=max(host.topk_network_max_k, 1), algorithm="direct")
    assert not any("sg_topk_radix(x, n" in s for s in at.sources().values() if isinstance(s, str))
    x = (rng.standard_normal((3, 301)) * 3).astype(np.float32)
    x[1, ::5] = x[1, 0]
    for target in ("host", "avx2", "scalar", "neon"):
        t = get_target(target)
        kern = radix_kernel(target, k=t.topk_network_max_k + 7, sparse=1, renormalize=0)
        idx, w = run(kern, x)
        check_sparse(kern, x, idx, w, target)


def test_tvm_refuses_large_k():
    with pytest.raises(softgen.BuildError, match="k > 64.*backend='c'"):
        softgen.compile("topk_softmax", k=65, backend="tvm")


def test_k_limits():
    with pytest.raises(softgen.UsageError, match="k must be"):
        softgen.compile("topk_softmax", k=2 ** 24 + 1)
    with pytest.raises(softgen.UsageError, match="topk_network_max_k"):
        _load("bad", (data_dir("targets") / "scalar.toml").read_text()
              .replace('name = "scalar"', 'name = "bad"').replace("topk_network_max_k = 32",
                                                                  "topk_network_max_k = 65"))


# -- top-k attention ------------------------------------------------------------------------------

def ints(rng, *shape):
    """Small integers: scores (scale 1/4) are exact in float32, so the kernel and the float64
    oracle select the same keys, ties included."""
    return rng.integers(-3, 4, shape).astype(np.float32)


@pytest.mark.parametrize("top_k,renorm,causal,masked", [(5, 1, True, True), (5, 0, False, True),
                                                      (100, 1, True, False), (100, 0, True, True),
                                                      (100, 1, False, True)])
def test_attention_topk(top_k, renorm, causal, masked, rng):
    """One kernel each (top_k = 100: radix select): Lq != Lk both ways, decoding (Lq = 1), GQA
    (Hq = 2 Hkv), causal (rows before the first key fully masked: NaN), a boolean mask with a fully
    masked row, fewer kept keys than top_k."""
    for lq, lk in ((7, 9), (9, 7), (1, 150), (70, 130)):
        q, k = ints(rng, 2, 2, lq, 8), ints(rng, 2, 1, lk, 8)
        v = rng.standard_normal((2, 1, lk, 5)).astype(np.float32)
        keep = None
        if masked:
            keep = rng.random((lq, lk)) < 0.7
            keep[0] = False
        kw = dict(normalizer="topk_softmax", top_k=top_k, causal=causal, mask=keep, scale=0.25)
        o = softgen.attention(q, k, v, renormalize=renorm, **kw)
        r = ref.attention(q, k, v, renormalize=bool(renorm), **kw)
        assert np.array_equal(np.isnan(o), np.isnan(r)), f"{lq}x{lk}"
        assert np.isnan(o).any() == (masked or (causal and lq > lk))
        assert np.allclose(o, r, rtol=1e-5, atol=1e-5, equal_nan=True), f"{lq}x{lk}"


def test_attention_topk_tvm(rng):
    """The TVM backend's top-k attention (the insertion network: top_k <= 64), causal, GQA."""
    ok, why = tvm_available()
    if not ok:
        (pytest.fail if STRICT else pytest.skip)(f"TVM backend: {why}")
    q, k = ints(rng, 2, 2, 9, 8), ints(rng, 2, 1, 12, 8)
    v = rng.standard_normal((2, 1, 12, 5)).astype(np.float32)
    kw = dict(normalizer="topk_softmax", top_k=5, causal=True, scale=0.25)
    o = softgen.attention(q, k, v, backend="tvm", **kw)
    assert np.allclose(o, ref.attention(q, k, v, **kw), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_attention_topk_validation():
    q = np.ones((3, 4), np.float32)
    with pytest.raises(softgen.UsageError, match="top_k"):
        softgen.attention(q, q, q, normalizer="topk_softmax")
    with pytest.raises(softgen.UsageError, match="topk_softmax's parameters"):
        softgen.attention(q, q, q, top_k=2)
    with pytest.raises(softgen.UsageError, match="k must be"):
        softgen.attention(q, q, q, normalizer="topk_softmax", top_k=0)
    # the CLI's -p top_k=3 arrives as 3.0: export's accuracy suite calls the op's reference with it
    r = get_op("attention").reference(q, q, q, head_dim=4, normalizer="topk_softmax", top_k=3.0)
    assert np.allclose(r, ref.attention(q, q, q, normalizer="topk_softmax", top_k=3, scale=0.5))


@pytest.mark.slow
@pytest.mark.parametrize("sparse", [0, 1])
def test_radix_huge_k(sparse, rng):
    """k = 2^20 of rows of 2^21 (the scale the histogram passes are for), with ties."""
    kern = softgen.compile("topk_softmax", k=2 ** 20, sparse=sparse)
    x = rng.integers(-1000, 1000, (2, 2 ** 21)).astype(np.float32) / 8
    if sparse:
        idx, w = kern(x)
        check_sparse(kern, x, idx, w, "k=2^20")
    else:
        check(kern, x, kern(x), "k=2^20")
