"""Streaming top-k attention (issue 14, docs/ops.md §9, §10; C backend): a running top-k per query
row over the key blocks (the row op's insertion network up to the target's topk_network_max_k,
radix select over a br x lk score tile above it), the softmax over the kept scores, k gathers of V.
Against the float64 oracle (integer inputs: exact scores, so the kernel and the oracle keep the
same keys, ties included) in small blocks: k on both sides of the crossover (the host's and a
copy of it whose network goes to 64), Lk < k, causal, bool/additive masks, kv_lengths, GQA,
strided heads, NaN/+inf/-inf scores, fully masked rows, the lse; == three-phase; bitwise for any
thread count; scalar, avx2, neon (qemu) once; TVM keeps the three-phase form."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import host_copy_with_network_max, run_cases

import softgen
from softgen import abi, autotable, reference as ref
from softgen.backends import get_backend
from softgen.export import scratch_doc
from softgen.ops import build_program
from softgen.targets import get_target

RNG = np.random.default_rng(1406)
SMALL = {"br": 3, "bc": 16}   # 1 .. 19 key blocks per row
SCALE = 0.25
HOST = get_target("host")


@pytest.fixture(scope="module")
def net64():
    """The name of a copy of the host target whose insertion network takes k up to 64 (the IR's
    TOPK_MAX): k = 64 on the network, k = 65 by radix select."""
    with host_copy_with_network_max(64, "net64") as name:
        yield name


def build(top_k, renorm=1, causal=False, mask="none", target="host", schedule=SMALL):
    k = softgen.compile("attention", normalizer="topk_softmax", top_k=top_k, renormalize=renorm, head_dim=8,
                        scale=SCALE, causal=causal, mask=mask, target=target, schedule=schedule)
    assert k.algorithm == "streaming"
    return k


def radix(k) -> bool:
    return any("sg_topk_radix(x, kend" in s for s in k.sources().values() if isinstance(s, str))


def ints(*shape):
    return RNG.integers(-3, 4, shape).astype(np.float32)


def case(lq, lk, mask, b=2, hq=2, hkv=1, lens=None, specials=False):
    """(q, k, v, mask or None, kv_lengths): GQA heads, q strided (a (B, L, H, d) array's view), row
    0 of every head fully masked; specials: +inf / NaN scores through the additive mask (in rows
    the causal diagonal leaves them: the oracle adds the mask after the causal -inf, the kernels
    before), a row with a single kept key."""
    q = ints(b, lq, hq, 8).transpose(0, 2, 1, 3)
    k, v = ints(b, hkv, lk, 8), RNG.standard_normal((b, hkv, lk, 5)).astype(np.float32)
    m = None
    if mask == "bool":
        m = RNG.random((lq, lk)) < 0.7
        m[0] = False
    elif mask == "additive":
        m = np.where(RNG.random((b, hq, lq, lk)) < 0.7, RNG.integers(-2, 3, (b, hq, lq, lk)) / 4, -np.inf)
        m[:, :, 0] = -np.inf
        if specials and lq > 3 and lk > 4:   # in rows that see every key but the last (causal too)
            m[0, 0, lq - 1, 2], m[1, 1, lq - 2, 3] = np.inf, np.nan
            m[0, 1, 3], m[0, 1, 3, lk - 1] = -np.inf, 0.0
        m = m.astype(np.float32)
    if m is not None:
        m = np.broadcast_to(m, (b, hq, lq, lk))
    return q, k, v, m, lens


def oracle(kern, q, k, v, m, lens):
    """The float64 output and lse (log of the weights' normalizer: the kept scores' sum of e^x
    (renormalize) or the row's; -inf with no key, NaN for a NaN / +inf row)."""
    p = kern.params
    kw = dict(scale=SCALE, causal=bool(p["causal"]), mask=m, kv_lengths=lens, normalizer="topk_softmax",
              top_k=int(p["top_k"]), renormalize=p["renormalize"] in (None, 1))
    o = ref.attention(q, k, v, **kw)
    s = ref._attention_scores(q, k, SCALE, kw["causal"], m, lens)
    sel = np.take_along_axis(s, ref.topk_indices(s, kw["top_k"]), -1) if kw["renormalize"] else s
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mx = sel.max(-1, initial=-np.inf)
        lse = np.where(mx == -np.inf, -np.inf, mx + np.log(np.exp(sel - mx[..., None]).sum(-1)))
    bad = np.isnan(s).any(-1) | (s == np.inf).any(-1)
    return o, np.where(bad, np.nan, lse)


def check(kern, c, o, lse=None):
    r, rl = oracle(kern, *c)
    assert np.array_equal(np.isnan(o), np.isnan(r)), f"{kern.name}: NaN pattern"
    assert np.allclose(o, r, rtol=1e-5, atol=1e-5, equal_nan=True), f"{kern.name}: {np.nanmax(np.abs(o - r))}"
    if lse is not None:
        assert np.array_equal(np.isnan(lse), np.isnan(rl)) and np.array_equal(lse == -np.inf, rl == -np.inf)
        assert np.allclose(lse, rl, rtol=1e-5, atol=1e-5, equal_nan=True)


SHAPES = [(7, 9), (9, 7), (1, 150), (40, 70), (5, 300)]   # Lq != Lk both ways, decoding, Lk < k and > k


# (top_k, renormalize, causal, mask, network max): both sides of the host's crossover and of 64
KERNELS = [(1, 1, False, "none", None), (16, 0, True, "bool", None), (HOST.topk_network_max_k, 1, True, "additive", None),
           (HOST.topk_network_max_k + 1, 0, False, "bool", None), (64, 1, True, "bool", 64), (65, 0, False, "additive", 64),
           (256, 1, True, "bool", None)]


@pytest.fixture(scope="module", params=KERNELS, ids=lambda p: f"k{p[0]}-r{p[1]}-{'causal-' * p[2]}{p[3]}")
def kern(request, net64):
    top_k, renorm, causal, mask, net = request.param
    k = build(top_k, renorm, causal, mask, target=net64 if net else "host")
    assert radix(k) == (top_k > (net or HOST.topk_network_max_k))
    return k


def test_streaming_matches_the_oracle(kern):
    """Ties (the lower index kept, as the row op's stable descending sort); every shape with GQA,
    strided q, masks (fully masked rows), kv_lengths, +inf / NaN scores; the lse too."""
    mask = kern.params["mask"]
    q, k, v, m, _ = c = case(9, 50, mask)
    q[:], k[:], k[..., 10:20, :] = 1.0, 1.0, 2.0   # ties: ten keys above 40 equal ones, the lower index kept
    v[..., 0] = np.arange(50)
    check(kern, c, kern(q, k, v, *([] if m is None else [m])))
    for lq, lk in SHAPES:
        for lens in (None, np.array([lk, max(lk // 3, 1)])):
            c = case(lq, lk, mask, lens=lens, specials=True)
            o, lse = kern(*c[:3], *([] if c[3] is None else [c[3]]), kv_lengths=lens, return_lse=True)
            check(kern, c, o, lse)


def test_equals_three_phase_and_threads():
    """The front door's streaming form == three-phase (both take the bool mask as bytes and
    kv_lengths in the kernel, GQA heads) to float32 rounding; bitwise the same for threads 1, 2, 3; masked_rows="zero"
    (through the lse: -inf for a row with no kept key)."""
    q, k, v, m, _ = case(40, 70, "bool", b=2, hq=4, hkv=2)
    kw = dict(normalizer="topk_softmax", top_k=16, causal=True, mask=m, kv_lengths=np.array([70, 33]), scale=SCALE)
    o = softgen.attention(q, k, v, threads=1, **kw)
    o3 = softgen.attention(q, k, v, algorithm="three-phase", **kw)
    assert np.array_equal(np.isnan(o), np.isnan(o3))
    assert np.allclose(o, o3, rtol=1e-5, atol=1e-6, equal_nan=True)
    for t in (2, 3):
        assert np.array_equal(softgen.attention(q, k, v, threads=t, **kw), o, equal_nan=True)
    z = softgen.attention(q, k, v, masked_rows="zero", **kw)
    assert (z[..., 0, :] == 0).all() and np.array_equal(z[..., 1:, :], o[..., 1:, :], equal_nan=True)


@pytest.mark.parametrize("target", ["scalar", "avx2"])
def test_targets(target):
    """One network and one radix kernel per target (runs natively or under SIMDe)."""
    for top_k in (get_target(target).topk_network_max_k, 100):
        kern = build(top_k, int(top_k == 100), True, "bool", target=target)
        cs = [case(lq, lk, "bool") for lq, lk in SHAPES[:4]]
        outs = run_cases(kern, [(*c[:3], c[3]) for c in cs])
        for c, o in zip(cs, outs):
            check(kern, c, o)


def test_neon_under_qemu():
    kern = build(8, 0, True, "additive", target="neon")
    cs = [case(lq, lk, "additive", specials=True) for lq, lk in SHAPES[1:4]]
    for c, o in zip(cs, run_cases(kern, [(*c[:3], c[3]) for c in cs])):
        check(kern, c, o)


def test_forms_explain_abi_and_tvm():
    """C streams top-k (explain says how), TVM keeps three-phase; the entry returns ETOOLONG past
    2^24 keys (the header says so) and documents the radix form's score tile."""
    k = build(16)
    text = k.explain()
    assert "running top-16" in text and "no lq x lk scratch" in text
    assert abi.ETOOLONG.code in k._abi.error_docs(k.name, ())
    mp = build_program("attention", normalizer="topk_softmax", top_k=16, head_dim=8)
    tvm = get_backend("tvm")
    assert autotable.attention_algorithm(tvm, mp, "auto", None)[0] == "three-phase"
    assert "no streaming form for topk_softmax" in autotable.attention_why(tvm, mp, "three-phase")
    with pytest.raises(softgen.UsageError, match="no streaming attention form"):
        autotable.attention_algorithm(tvm, mp, "streaming", None)
    assert "score tile" in scratch_doc(build(100)) and "score tile" not in scratch_doc(k)
    with pytest.raises(softgen.UsageError, match="smaller br"):   # the network's state is on the stack
        build(HOST.topk_network_max_k, schedule={"br": 4096, "bc": 1})
