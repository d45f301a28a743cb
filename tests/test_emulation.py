"""SIMDe emulated builds (``Kernel.run_emulated`` on x86): every x86 target compiles, agrees with
the native kernel where this CPU runs it, and is free of undefined behaviour in SIMDe's portable
integer lanes."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import skip_unless_emulated

import softgen
from softgen.runtime import compiler_for, flags_for
from softgen.targets import get_target, host_arch

pytestmark = pytest.mark.skipif(host_arch() != "x86_64", reason="SIMDe emulation needs an x86 host")


@pytest.mark.parametrize("op", ["softmax", "log_stablemax"])
def test_avx2_emulated_matches_native(op):
    """targets/avx2.toml once named only simde/x86/fma.h, which lacks the AVX2 integer
    intrinsics: the emulated avx2 build did not compile."""
    t = get_target("avx2")
    skip_unless_emulated(t)
    k = softgen.compile(op, target="avx2")
    x = np.random.default_rng(1).uniform(-300, 300, (3, 1001)).astype(np.float32)
    x[1, 7] = np.nan
    y = k.run_emulated(x)
    if k.runnable:
        np.testing.assert_array_equal(y, k(x))
    else:
        assert np.isfinite(y[[0, 2]]).all() and np.isnan(y[1]).all()


MAIN = r"""
#include <math.h>
#include <stddef.h>
int %(name)s(const float *x, float *y, size_t rows, size_t n, size_t ldx, size_t ldy);
int main(void)
{
    static float x[2 * 100], y[2 * 100];
    for (int i = 0; i < 200; i++)
        x[i] = (float)(i %% 17) - 8.0f;
    x[3] = NAN;        /* the log's exponent arithmetic on NaN's bits wraps in int32 */
    x[150] = INFINITY;
    return %(name)s(x, y, 2, 100, 100, 100);
}
"""


@pytest.mark.parametrize("target", ["avx2", "avx512"])
def test_emulated_build_has_no_signed_overflow(tmp_path, target):
    """SIMDe's portable add_epi32 adds int32_t lanes, which overflows (UB) where the instruction
    wraps, e.g. in log_stablemax's log of a NaN: emulated builds need -fwrapv. Run under UBSan."""
    t = get_target(target)
    skip_unless_emulated(t)
    # one algorithm: the log is every variant's, and a dispatcher would compile it once per variant
    k = softgen.compile("log_stablemax", algorithm="direct", target=target, name="ub_probe")
    srcs = []   # the kernel's C files
    for fname, text in k.sources().items():
        if fname.endswith(".c"):
            (tmp_path / fname).write_text(text)
            srcs.append(str(tmp_path / fname))
    (tmp_path / "main.c").write_text(MAIN % {"name": k.name})
    exe = tmp_path / "probe"
    cc = compiler_for(t)
    sanitize = ["-fsanitize=signed-integer-overflow", "-fno-sanitize-recover=all"]
    try:
        subprocess.run([*cc, *flags_for(t, emulate=True), *sanitize, "-o", str(exe),
                        *srcs, str(tmp_path / "main.c"), "-lm"],
                       check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as e:
        if "sanitize" in e.stderr:
            pytest.skip(f"{cc[0]} has no UBSan here: {e.stderr.strip()[-300:]}")
        raise
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert "runtime error" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
