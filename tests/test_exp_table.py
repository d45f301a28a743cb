"""The table exp variant "t32" (schedule exp="t32"; numerics.constants.EXP_VARIANTS, vmath.h.j2).

Accuracy over the float32 range on every target that runs here (the C harness of test_exp.py:
native targets, x86 ones through SIMDe otherwise, neon as a static AArch64 program under qemu),
its special values, bit-for-bit agreement with the float32 model ``reference.exp_table_f32``,
kernels built with it against the float64 references, and the tuner offering it in cache.
"""
from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from conftest import check, run, skip_unless_emulated
from test_exp import (
    EMU_STRIDE,
    HARNESS,
    NATIVE,
    SPEC_MAX_REL_ERR,
    TARGETS,
    binade,
    check_exp,
    flt,
    harness,
    scan,
)

import softgen
from softgen import reference
from softgen._data import data_dir
from softgen.backends import get_backend
from softgen.emulator import find_emulator
from softgen.errors import UsageError
from softgen.numerics.constants import EXP_VARIANTS
from softgen.render import isa_header, scaled_exp, vmath
from softgen.runtime import compiler_for
from softgen.targets import _load, get_target, host_arch
from softgen.tune import level_schedules

V = "t32"
BOUND = min(SPEC_MAX_REL_ERR, 1.05 * EXP_VARIANTS[V].error)   # bench/fit_exp.py: 1.67e-7
ULPS = 1.9                                                  # fit_exp.py: 1.78 ulp
STRIDE = 4099                                               # ~1e6 of the 2^32 patterns
FLT_MIN = float(np.finfo(np.float32).tiny)
BINADES = [binade(1, 2), binade(0, 2), binade(1, 6), binade(0, 6)]   # peaks; over/underflow ends


def _eval(target: str, which: int, x) -> np.ndarray:
    """sg_exp (0), sg_exp_nonpos (1) or sg_exp_shifted (4) of the t32 build over x."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y, n = np.empty_like(x), np.empty_like(x)
    harness(target, V).sg_eval(which, x.ctypes.data, y.ctypes.data, n.ctypes.data, x.size, 1.0)
    return y


@pytest.mark.parametrize("target", TARGETS)
def test_t32_within_contract(target):
    """The whole float32 range with a stride, plus every float of the binades where the error
    peaks and where results over- and underflow (fewer under SIMDe)."""
    stride = STRIDE if target in NATIVE else EMU_STRIDE * 4
    fns = ["sg_scan_exp", "sg_scan_exp_nonpos"] + (["sg_scan_exp_shifted"] if scaled_exp(get_target(target)) else [])
    for fn in fns:
        lo = 0 if fn == "sg_scan_exp" else 0x80000000
        r = scan(target, fn, [(lo, 1 << 32)], stride, what=f"stride {stride}", exp=V)
        check_exp(r, BOUND, ULPS)
        assert r.n_nan and r.n_under_zero and (fn != "sg_scan_exp" or r.n_over_inf)
        if target in NATIVE:
            peaks = BINADES if fn == "sg_scan_exp" else [b for b in BINADES if b[0] >> 31]
            check_exp(scan(target, fn, peaks, what="binades", exp=V), BOUND, ULPS)


@pytest.mark.parametrize("target", TARGETS)
def test_t32_specials(target):
    nan = float("nan")
    xs = np.array([0.0, -0.0, -math.inf, math.inf, nan, -nan, -88.0, -88.5, -100.0, -1e30, -87.33,
                   88.72283172607422, 88.72283935546875, 88.75, 1e30, -2.0 ** -30, 2.0 ** -30], np.float32)
    y = _eval(target, 0, xs)
    assert y[0] == y[1] == 1.0 and y[2] == 0.0 and not np.signbit(y[2]) and y[3] == math.inf
    assert np.isnan(y[4]) and np.isnan(y[5])
    assert np.all(y[6:10] == 0.0) and not np.signbit(y[6:10]).any()     # x <= -88: +0
    assert FLT_MIN <= y[10] and abs(y[10] / math.exp(np.float32(-87.33)) - 1) <= BOUND
    assert abs(y[11] / math.exp(np.float64(xs[11])) - 1) <= BOUND          # the largest finite result
    assert np.all(y[12:15] == math.inf) and y[15] == 1.0 and y[16] == 1.0
    nonpos = xs[np.signbit(xs) | np.isnan(xs)]
    yn = _eval(target, 1, nonpos)
    assert np.array_equal(yn.view(np.uint32), _eval(target, 0, nonpos).view(np.uint32))   # same on x <= 0
    # flush region (e^x < FLT_MIN): +0 or a subnormal, never negative
    sub = _eval(target, 1, np.linspace(-87.69, -87.34, 97, dtype=np.float32))
    assert np.all((sub >= 0) & (sub < FLT_MIN)) and not np.signbit(sub).any() and (sub == 0).any()
    if scaled_exp(get_target(target)):
        # sg_exp_shifted: subnormal results down to 2^-149, one rounding; -inf and x <= -104 give +0
        d = np.array([-95.0, -100.0, -103.0, -103.9, -104.0, -1e30, -math.inf, nan, -0.0], np.float32)
        ys = _eval(target, 4, d)
        e = np.exp(d[:4].astype(np.float64))
        assert np.all((ys[:4] > 0) & (ys[:4] < FLT_MIN)) and np.all(np.abs(ys[:4] - e) <= 2.0 ** -150)
        assert np.all(ys[4:7] == 0.0) and not np.signbit(ys[4:7]).any() and np.isnan(ys[7]) and ys[8] == 1.0


@pytest.mark.parametrize("target", [t for t in NATIVE if get_target(t).fma == "native"])
def test_t32_bits_match_the_float32_model(target):
    """reference.exp_table_f32 is the same arithmetic: equal bits except where the model's
    float64-emulated FMA rounds twice (rare, one ulp)."""
    x = np.array([flt(b) for b in range(0, 1 << 32, 65537 * 7)], np.float32)
    x = x[~np.isnan(x)]
    for which, shifted in [(0, False)] + ([(4, True)] if scaled_exp(get_target(target)) else []):
        xs = -np.abs(x) if shifted else x
        y, m = _eval(target, which, xs), reference.exp_table_f32(xs, V, shifted=shifted)
        diff = y.view(np.uint32) != m.view(np.uint32)
        assert diff.sum() <= 4, (which, xs[diff][:5], y[diff][:5], m[diff][:5])
        assert np.all(np.abs(y[diff].astype(np.float64) / m[diff] - 1) <= 2.0 ** -22)


# -- neon: the same harness as a static AArch64 program under qemu -------------------------------

NEON_MAIN = r"""
#include <stdio.h>
int main(void) {
    sg_stats st;
    const char *names[2] = {"exp", "exp_nonpos"};
    for (int f = 0; f < 2; f++) {
        if (f == 0) sg_scan_exp(0u, 1ull << 20, 4093u, &st);
        else sg_scan_exp_nonpos(0x80000000u, 1ull << 19, 4093u, &st);
        printf("%s %.9g %.9g %llu %llu %llu %llu %llu\n", names[f], st.max_rel, st.max_ulp,
               (unsigned long long)st.n, (unsigned long long)st.n_bad, (unsigned long long)st.n_nan,
               (unsigned long long)st.n_under_zero, (unsigned long long)st.n_over_inf);
    }
    return 0;
}
"""


@pytest.mark.skipif(host_arch() == "aarch64", reason="neon is native here: test_t32_within_contract")
def test_t32_neon_under_qemu(tmp_path):
    t = get_target("neon")
    skip_unless_emulated(t)
    src = tmp_path / "t32.c"
    src.write_text(isa_header(t) + vmath(V, t) + HARNESS + NEON_MAIN)
    exe = tmp_path / "t32"
    subprocess.run([*compiler_for(t), "-O2", "-static", *t.cflags, str(src), "-o", str(exe), "-lm"], check=True)
    out = subprocess.run([*find_emulator(t), str(exe)], capture_output=True, text=True, check=True, timeout=120)
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines()}
    for name in ("exp", "exp_nonpos"):
        rel, ulp, n, bad, nans, zero, inf = rows[name]
        print(name, rows[name])
        assert int(n) > 0 and int(bad) == 0 and int(nans) > 0 and int(zero) > 0
        assert float(rel) <= BOUND and float(ulp) <= ULPS
    assert int(rows["exp"][6]) > 0


# -- kernels built with it ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((6, 257)) * 12).astype(np.float32)
    x[1, 3] = -np.inf
    x[2, :] = -np.inf
    x[2, 5] = 0.0
    x[3, 7] = np.nan
    x[4, ::2] -= 90.0           # terms that flush to +0 / subnormal beside normal ones
    return x


@pytest.mark.parametrize("target", ["avx512", "avx2", "scalar", "neon"])
@pytest.mark.parametrize("op, algorithm", [("softmax", "three-pass-reload"), ("softmax", "online"),
                                           ("log_softmax", "three-pass-reload"), ("softplus_l1", "direct")])
def test_t32_kernels(target, op, algorithm, rows):
    k = softgen.compile(op, target=target, algorithm=algorithm, schedule={"exp": V})
    assert f"exp variant {V}" in k.source and "sg_exp_tab" in k.source
    check(k, rows, run(k, rows), f"exp={V}")


def test_t32_spelling_per_target():
    """avx512 looks up with vpermt2ps, avx2 with a gather, the scalar target by index; neon has no
    [isa] TABLE32: its lookup goes per lane through memory. Default kernels keep p5."""
    src = {t: softgen.compile("softmax", target=t, algorithm="three-pass-reload", schedule={"exp": V}).source
           for t in ("avx512", "avx2", "neon", "scalar")}
    assert "_mm512_permutex2var_ps" in src["avx512"] and "sg_table32" not in src["avx512"]
    assert "_mm256_i32gather_ps" in src["avx2"]
    assert "sg_table32" in src["neon"] and "sg_table32" not in src["scalar"]
    # default schedules: avx512's exps of x - max x are t32 (its target file's shifted_exp), avx2's p5
    src = softgen.compile("softmax", target="avx512", algorithm="three-pass-reload").source
    assert "sg_exp_shifted(v" in src and "_mm512_permutex2var_ps" in src and "the table exp t32" in src
    assert "sg_exp_tab" not in softgen.compile("softmax", target="avx2", algorithm="three-pass-reload").source
    assert get_target("avx512").shifted_exp == V and not get_target("avx2").shifted_exp


def test_t32_is_a_tuning_candidate_in_cache():
    be, t = get_backend("c"), get_target("avx512")
    base = t.schedule
    for level in ("L1d", "L2", "L3"):
        assert any(s.exp == V for s in level_schedules(be, t, level, base)), level
    assert not any(s.exp == V for s in level_schedules(be, t, "DRAM", base))
    with pytest.raises(softgen.UsageError, match="t32"):
        softgen.compile("softmax", target="avx2", schedule={"exp": "t33"})


def test_shifted_exp_in_a_target_file_is_checked():
    """shifted_exp must name a variant and needs the scaled exp's [isa] ROUND and SCALE2."""
    avx512 = (data_dir("targets") / "avx512.toml").read_text()
    assert _load("avx512", avx512).shifted_exp == V
    with pytest.raises(UsageError, match="shifted_exp must be one of"):
        _load("avx512", avx512.replace('shifted_exp = "t32"', 'shifted_exp = "t64"'))
    avx2 = (data_dir("targets") / "avx2.toml").read_text()
    with pytest.raises(UsageError, match="ROUND and SCALE2"):
        _load("avx2", avx2.replace('stream_align = 32', 'stream_align = 32\nshifted_exp = "t32"'))
