"""The float64 oracles: the algorithmic ones agree with the definitions (docs/ops.md §1-4), the
definitions agree with scipy, and the edge-case contract of docs/ops.md §0 holds."""
from __future__ import annotations

import numpy as np
import pytest

from softgen import reference as ref

ALGOS = [ref.softmax_three_pass_recompute, ref.softmax_three_pass_reload, ref.softmax_two_pass,
         ref.softmax_online]


@pytest.mark.parametrize("algo", ALGOS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("lo,hi", [(-10, 10), (90, 100), (-1000, 1000), (-1e5, 1e5)])
def test_algorithmic_oracles_agree_with_the_definition(algo, lo, hi, rng):
    x = rng.uniform(lo, hi, (4, 257))
    rtol = max(1e-12, 8 * hi * 2.0 ** -52)  # exp(z - n ln2) in f64 carries |z| 2^-53
    for s in (1.0, 0.3):
        np.testing.assert_allclose(algo(x, scale=s), ref.softmax(x, scale=s), rtol=rtol, atol=1e-300)


def test_definitions_agree_with_scipy(rng):
    sp = pytest.importorskip("scipy.special")
    x = rng.uniform(-50, 50, (3, 100))
    np.testing.assert_allclose(ref.softmax(x, scale=0.7), sp.softmax(0.7 * x, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(ref.log_softmax(x, temperature=2.0), sp.log_softmax(x / 2.0, axis=-1),
                               rtol=1e-13, atol=1e-13)


def test_extexp_sum_represents_the_sum(rng):
    x = rng.uniform(-700, 700, (2, 50))
    v, e = ref.extexp_sum(x)
    m = x.max(-1, keepdims=True)
    np.testing.assert_allclose(np.log(v) + e * np.log(2), m + np.log(np.exp(x - m).sum(-1, keepdims=True)),
                               rtol=1e-14)


def test_online_normalizer_any_block(rng):
    x = rng.uniform(-30, 30, (2, 37))
    for block in (1, 4, 16, 64):
        m, d = ref.online_normalizer(x, block)
        assert np.array_equal(m, x.max(-1, keepdims=True))
        np.testing.assert_allclose(d, np.exp(x - m).sum(-1, keepdims=True), rtol=1e-13)


@pytest.mark.parametrize("f", [ref.softmax, ref.log_softmax] + ALGOS, ids=lambda f: f.__name__)
def test_edge_case_contract(f):
    inf, nan = np.inf, np.nan
    is_log = f is ref.log_softmax
    x = np.array([[1.0, nan, 2.0], [1.0, inf, 2.0], [-inf, -inf, -inf], [-inf, 0.0, -inf]])
    y = f(x)
    assert np.isnan(y[:3]).all()
    assert np.array_equal(y[3], [-inf, 0.0, -inf] if is_log else [0.0, 1.0, 0.0])
    assert f(np.zeros((3, 0))).shape == (3, 0)
    one = f(np.array([[5.0]]))
    assert one[0, 0] == (0.0 if is_log else 1.0)


def test_scale_and_temperature_validation():
    assert ref.resolve_scale(temperature=4.0) == 0.25
    for kw in ({"scale": 0.0}, {"scale": -1.0}, {"scale": np.inf}, {"temperature": 0.0},
               {"temperature": np.nan}, {"scale": 2.0, "temperature": 1.0}):
        with pytest.raises(ValueError):
            ref.resolve_scale(**kw)


def test_p5_exp_model_matches_libm_within_the_spec_bound():
    x = np.linspace(-87.0, 88.0, 200001, dtype=np.float32)
    y = ref.exp_p5_f32(x).astype(np.float64)
    e = np.exp(x.astype(np.float64))
    assert np.max(np.abs(y - e) / e) < 2.5e-7


def test_topk_softmax_reference():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 17))
    for k in (1, 3, 17, 40):
        y = ref.topk_softmax(x, k)
        s = ref.softmax(x)
        top = np.argsort(-x, axis=-1)[:, :min(k, 17)]
        want = np.zeros_like(x)
        np.put_along_axis(want, top, np.take_along_axis(s, top, -1) / np.take_along_axis(s, top, -1).sum(-1, keepdims=True), -1)
        assert np.allclose(y, want, rtol=1e-12, atol=0)
        assert np.allclose(ref.topk_softmax(x, k, renormalize=False)[want > 0], s[want > 0])
    assert np.allclose(ref.topk_softmax(x, 17), ref.softmax(x))
    ties = np.array([[1.0, 3.0, 3.0, 3.0, 0.0]])
    idx, w = ref.topk_softmax_sparse(ties, 2)
    assert idx.tolist() == [[1, 2]] and np.allclose(w, 0.5)       # lower index wins
    masked = np.array([[0.0, -np.inf, -np.inf]])
    assert np.array_equal(ref.topk_softmax(masked, 2), [[1.0, 0.0, 0.0]])
    for bad in ([[np.nan, 1, 2]], [[np.inf, 1, 2]], [[-np.inf, -np.inf, -np.inf]]):
        assert np.isnan(ref.topk_softmax(np.array(bad), 2)).all()
    with pytest.raises(ValueError):
        ref.topk_softmax(x, 0)


def test_sinkhorn_reference_properties():
    rng = np.random.default_rng(6)
    c = rng.standard_normal((2, 8, 8))
    assert np.allclose(ref.sinkhorn(c, 1), ref.softmax(c), rtol=1e-12)             # 1 iter = softmax
    assert np.allclose(ref.sinkhorn(c, 1, eps=0.5), ref.softmax(c / 0.5), rtol=1e-12)
    assert np.allclose(ref.sinkhorn(c[0, :5], 1), ref.softmax(c[0, :5]) * 8 / 5, rtol=1e-12)
    errs = [np.abs(ref.sinkhorn(c, t).sum(-2) - 1).max() for t in (1, 3, 11, 51)]
    assert errs[0] > errs[1] > errs[2] > errs[3] and errs[3] < 1e-8              # columns -> 1
    assert np.allclose(ref.sinkhorn(c, 5).sum(-1), 1, rtol=1e-12)                  # after a row step
    rect = rng.standard_normal((5, 12))
    p = ref.sinkhorn(rect, 4)                                                       # ends on a column step
    assert np.allclose(p.sum(-2), 1) and np.allclose(ref.sinkhorn(rect, 3).sum(-1), 12 / 5)
    pad = np.full((2, 7, 15), -np.inf)                  # padding: all -inf rows and columns drop out
    pad[:, 1:6, 3:] = rect
    for t in (1, 2, 3, 4):
        for out_scale in ("n_k", "n_q"):
            y = ref.sinkhorn(pad, t, output_scale=out_scale)
            assert np.allclose(y[:, 1:6, 3:], ref.sinkhorn(rect, t, output_scale=out_scale), rtol=1e-12, atol=0)
            assert np.all(y[:, [0, 6]] == 0) and np.all(y[..., :3] == 0)
    assert np.all(ref.sinkhorn(np.full((3, 3), -np.inf), 3) == 0)


def test_gaussian_kernel_and_newton_pinv_references():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((20, 16))
    s = ref.gaussian_kernel(q, q, 16)
    assert np.allclose(np.diag(s), 1) and np.allclose(s, s.T) and np.all((s > 0) & (s <= 1))
    direct = np.exp(-((q[:, None] - q[None]) ** 2).sum(-1) / (2 * 4.0))
    assert np.allclose(s, direct, rtol=1e-12)
    k2 = ref.gaussian_kernel(q[:6], q[:6], 16)
    assert np.allclose(ref.newton_pinv(k2, 60, "norm"), np.linalg.pinv(k2), rtol=1e-6, atol=1e-8)
    assert np.allclose(ref.newton_pinv(k2, 60, "soft"), np.linalg.inv(k2 + 0.01 * np.eye(6)), rtol=1e-6)
    dup = ref.gaussian_kernel(np.repeat(q[:3], 2, 0), np.repeat(q[:3], 2, 0), 16)   # singular
    assert np.allclose(ref.newton_pinv(dup, 80, "norm"), np.linalg.pinv(dup), atol=1e-6)
