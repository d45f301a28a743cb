"""The vector log/log1p of templates/vmath.h.j2 (used by log_stablemax and softplus_l1): error in
ulps against numpy's float64 log over every float32 of the [1/2, 2) binades and a stride through
all positive floats (subnormals included), and the special values. scalar and avx2 run natively,
avx512 through SIMDe; the TVM spelling is covered by the kernel parity tests."""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import pytest

from softgen.backends.c import isa_header, vmath
from softgen.runtime import build_shared
from softgen.targets import get_target

LOG_MAX_ULP = 1.0      # measured 0.835 ulp (avx2, every float in [1/2, 2), stride 17 over all)
LOG1P_MAX_REL = 2.5e-7  # measured 1.26e-7 over [0, 1] (stride 17)

HARNESS = r"""
__attribute__((visibility("default")))
void sg_test_log(const float *x, float *y, size_t n, int which) {
    for (size_t i = 0; i + SG_LANES <= n; i += SG_LANES) {
        VEC v = V_LOAD(x + i);
        V_STORE(y + i, which ? sg_log1p(v) : sg_log(v));
    }
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
def test_log1p_on_its_domain(target):
    """softplus needs log1p(u) for u = e^-|z| in [0, 1], including u far below 2^-24."""
    u = positive_floats(61 if target != "avx512" else 4099, 1, np.float32(1.0).view(np.uint32) + 1)
    exact = np.log1p(u.astype(np.float64))
    y = vlog(target, u, which=1)
    rel = np.abs(y - exact) / exact
    i = int(np.argmax(rel))
    assert rel[i] <= LOG1P_MAX_REL, f"{target}: rel {rel[i]:.3g} at u={u[i]!r}"
    z = vlog(target, np.array([0.0, np.nan], np.float32), which=1)
    assert z[0] == 0.0 and np.isnan(z[1])
