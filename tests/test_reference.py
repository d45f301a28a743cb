"""The float64 oracles: the algorithmic ones agree with the definitions (spec 1-4), the
definitions agree with scipy, and the edge-case contract of spec section 0 holds."""
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
