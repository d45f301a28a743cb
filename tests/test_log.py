"""The vector log/log1p of templates/vmath.h.j2 (used by log_stablemax and softplus_l1): error in
ulps against numpy's float64 log over every float32 of the [1/2, 2) binades and a stride through
all positive floats (subnormals included), log1p and log1p_unit likewise over their domains,
log_ratio over random pairs, and the special values. scalar and avx2 run natively, avx512 through SIMDe; the TVM spelling is
covered by the kernel parity tests."""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest

from softgen.render import isa_header, vmath
from softgen.runtime import build_shared
from softgen.targets import get_target

# Measured on avx2 over every positive float32 (log) and every float32 in (0, 1] (log1p): the
# bounds leave ~0.1 ulp of headroom, well below the ops' 2e-6 (~16 ulp).
LOG_MAX_ULP = 1.4        # measured 1.290 ulp (at x = 0.78723717)
LOG1P_MAX_ULP = 2.0      # measured 1.873 ulp (at u = 0.41437563; relative 1.61e-7)
LOG_RATIO_MAX_ERR = 1.8  # in 2^-24 max(|y|, 1); measured 1.66 (40M random pairs, a ~ b among them)
LOG1P_UNIT_MAX_ULP = 1.8  # measured 1.661 ulp (at u = 0.97889984; relative 1.49e-7)

HARNESS = r"""
__attribute__((visibility("default")))
void sg_test_log(const float *x, float *y, size_t n, int which) {
    for (size_t i = 0; i + SG_LANES <= n; i += SG_LANES) {
        VEC v = V_LOAD(x + i);
        V_STORE(y + i, which == 2 ? sg_log1p_unit(v) : which == 1 ? sg_log1p(v) : sg_log(v));
    }
}
__attribute__((visibility("default")))
void sg_test_log_ratio(const float *a, const float *b, float *y, size_t n) {
    for (size_t i = 0; i + SG_LANES <= n; i += SG_LANES)
        V_STORE(y + i, sg_log_ratio(V_LOAD(a + i), V_LOAD(b + i)));
}
"""


@functools.cache
def _lib(target: str):
    t = get_target(target)
    emulate = not t.runnable
    if emulate and t.arch != "x86_64":
        pytest.skip(f"{target} is covered by the emulated kernel tests")
    lib = ctypes.CDLL(str(build_shared(isa_header(t) + vmath() + HARNESS, t, emulate=emulate)))
    lib.sg_test_log.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.sg_test_log_ratio.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_size_t]
    return lib


def vlog(target: str, x: np.ndarray, which: int = 0) -> np.ndarray:
    lanes = get_target(target).lanes
    pad = (-x.size) % lanes
    xp = np.concatenate([x.astype(np.float32), np.ones(pad, np.float32)])
    y = np.empty_like(xp)
    _lib(target).sg_test_log(xp.ctypes.data, y.ctypes.data, xp.size, which)
    return y[:x.size]


def ulps(y: np.ndarray, exact: np.ndarray) -> np.ndarray:
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(y.astype(np.float64) - exact) / ulp


def positive_floats(stride: int, lo_bits: int = 1, hi_bits: int = 0x7F800000) -> np.ndarray:
    return np.arange(lo_bits, hi_bits, stride, dtype=np.uint32).view(np.float32)


@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
def test_log_binades_every_float_and_stride(target):
    full = np.arange(np.float32(0.5).view(np.uint32), np.float32(2.0).view(np.uint32),
                     1 if target != "avx512" else 13, dtype=np.uint32).view(np.float32)
    for x in (full, positive_floats(61 if target != "avx512" else 4099)):
        exact = np.log(x.astype(np.float64))
        err = ulps(vlog(target, x), exact)
        i = int(np.argmax(err))
        assert err[i] <= LOG_MAX_ULP, f"{target}: {err[i]:.3f} ulp at x={x[i]!r}"


@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
def test_log_specials(target):
    x = np.array([0.0, -0.0, np.inf, -1.0, -np.inf, np.nan, 1.0, 1e-45, 1.1754942e-38, 3.4028235e38],
                 np.float32)
    y = vlog(target, x)
    assert y[0] == -np.inf and y[1] == -np.inf and y[2] == np.inf
    assert np.isnan(y[3:6]).all() and y[6] == 0.0
    exact = np.log(x[7:].astype(np.float64))
    assert np.all(ulps(y[7:], exact) <= LOG_MAX_ULP)


@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("which,max_ulp", [(1, LOG1P_MAX_ULP), (2, LOG1P_UNIT_MAX_ULP)], ids=["log1p", "unit"])
def test_log1p_on_0_1(target, which, max_ulp):
    """softplus needs log1p(u) for u = e^-|z| in [0, 1], including u far below 2^-24."""
    u = positive_floats(61 if target != "avx512" else 4099, 1, np.float32(1.0).view(np.uint32) + 1)
    err = ulps(vlog(target, u, which), np.log1p(u.astype(np.float64)))
    i = int(np.argmax(err))
    assert err[i] <= max_ulp, f"{target}: {err[i]:.3f} ulp at u={u[i]!r}"
    z = vlog(target, np.array([0.0, 1.0, np.nan], np.float32), which)
    assert z[0] == 0.0 and z[1] == np.float32(np.log(2.0)) and np.isnan(z[2])


@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
def test_log1p_below_0_and_specials(target):
    """The general log1p also takes u in [-1, 0) and large u (v = 1 + u is reduced like log)."""
    u = np.concatenate([-positive_floats(61 if target != "avx512" else 4099, 1, np.float32(1.0).view(np.uint32)),
                        positive_floats(4099, np.float32(1.0).view(np.uint32), 0x7F800000)])
    err = ulps(vlog(target, u, 1), np.log1p(u.astype(np.float64)))
    i = int(np.argmax(err))
    assert err[i] <= LOG1P_MAX_ULP, f"{target}: {err[i]:.3f} ulp at u={u[i]!r}"
    y = vlog(target, np.array([-1.0, -1.5, -np.inf, np.inf, -0.0, 1e-30], np.float32), 1)
    assert y[0] == -np.inf and np.isnan(y[1:3]).all() and y[3] == np.inf
    assert y[4] == 0.0 and y[5] == np.float32(1e-30)


def vlog_ratio(target: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    pad = (-a.size) % get_target(target).lanes
    a, b = (np.concatenate([v.astype(np.float32), np.ones(pad, np.float32)]) for v in (a, b))
    y = np.empty_like(a)
    _lib(target).sg_test_log_ratio(a.ctypes.data, b.ctypes.data, y.ctypes.data, a.size)
    return y[:a.size - pad]


@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
def test_log_ratio(target):
    """log(a / b) for a, b anywhere in the positive floats (subnormals included): the quotient
    under- and overflows, and a close to b must not cancel two large logs. The error, in units of
    2^-24 max(|y|, 1), stays at float32 rounding level (log_stablemax allows ~34)."""
    rng = np.random.default_rng(7)
    n = 1 << 16 if target != "avx512" else 1 << 12
    a = rng.integers(1, 0x7F800000, n, dtype=np.uint32).view(np.float32)
    b = np.concatenate([rng.integers(1, 0x7F800000, n // 2, dtype=np.uint32).view(np.float32),
                        np.nextafter(a[n // 2:], np.float32(np.inf))])   # a ~ b: y ~ 0
    exact = np.log(a.astype(np.float64)) - np.log(b.astype(np.float64))
    y = vlog_ratio(target, a, b)
    assert np.all(y[a <= b] <= 0), "log(a / b) > 0 for a <= b (log_stablemax's log p <= 0)"
    err = np.abs(y - exact) / (2.0 ** -24 * np.maximum(np.abs(exact), 1.0))
    i = int(np.argmax(err))
    assert err[i] <= LOG_RATIO_MAX_ERR, f"{target}: {err[i]:.3f} at a={a[i]!r} b={b[i]!r}"
    sp = np.array([0.0, np.inf, np.nan, -1.0, 0.0, 1.0, 1.0, 1.0], np.float32)
    sq = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, np.inf, np.nan], np.float32)
    y = vlog_ratio(target, sp, sq)
    assert y[0] == -np.inf and y[1] == np.inf and y[5] == np.inf and y[6] == -np.inf
    assert np.isnan(y[[2, 3, 4, 7]]).all()
