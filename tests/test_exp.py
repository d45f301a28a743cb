"""The vectorised exp of templates/vmath.h.j2, measured over every float32 of its domain.

A C harness (``isa_header(t) + vmath()`` + HARNESS below) walks float32 bit patterns a block at a
time: the target's vector function over the block, then each lane against libm's double
``exp((double)x)``, keeping the worst relative error ``|y - e| / e`` and the worst error in
float32 ulps of e (``|y - e| / 2^(floor(log2 e) - 23)``), each with its argument, and counting
every result that breaks the contract: NaN <-> NaN; +inf where e > FLT_MAX (a finite y there is
measured like the rest); a finite y where FLT_MIN <= e <= FLT_MAX; +0 or a subnormal (in
[0, FLT_MIN)) where e < FLT_MIN. The loop runs in C, split over the CPUs by threads.

Default run: specials, every float of the binades where the errors peak and of the over/underflow
ends, and a strided sweep of all 2^32 patterns (stride 61, about 7e7 values); targets this CPU
lacks (x86 ones, through SIMDe) get fewer binades and a coarser stride. ``-m slow`` (or
SOFTGEN_SLOW=1; skipped otherwise): every float32 (2^32 for sg_exp, the 2^31 negative patterns
for sg_exp_nonpos, all |u| <= 2^17 for (p, n), all x with |s x| <= 2^17 for the scaled form) on
the native targets. Measured on an x86 host with AVX2 + FMA (no AVX512), 2 cores:

    sg_exp          all 2^32 patterns   max rel 1.6456e-7 at x = 5.8377376   1.981 ulp at x = -2.9371452
    sg_exp_nonpos   all x <= 0 (2^31)   max rel 1.6441e-7 at x = -5.1986079  1.981 ulp at x = -2.9371452
    (p, n) of u     all |u| <= 2^17     max rel 1.7402e-7 at u = -110503.26  2.062 ulp
    scaled, s=0.125 all |s x| <= 2^17   max rel 1.7402e-7 (s x is exact: the same as unscaled)
    scaled, s=0.7   all |s x| <= 2^17   max rel 2.0990e-7 at x = -154206.94  2.480 ulp
    scaled, s=3     all |s x| <= 2^17   max rel 2.1417e-7 at x = -38497.512  2.527 ulp
    scaled, 46 other scales, top binade max rel 2.2315e-7 at s = 5.192954, x = -22141.998  2.633 ulp

The scalar target gives the same maxima at the same arguments; avx512 (SIMDe emulation here)
performs the same IEEE operations in the same order as avx2 and is checked bit for bit against it.
The scaled form is less accurate because n comes from the rounded hi = fl(s x): |t| then exceeds
ln2/2 by up to 2.7%, where the p5 polynomial's own error grows (2.0e-7 at |t| = 0.356).
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import skip_unless_emulated

import softgen
from softgen import reference as ref
from softgen.numerics.constants import EXP_DEFAULT, EXP_VARIANTS
from softgen.render import isa_header, scaled_exp, vmath
from softgen.runtime import build_shared
from softgen.targets import all_targets, get_target, host_arch

# Bounds just above the exhaustive measurements (module docstring); the contract (docs/accuracy.md) allows 2.5e-7.
SPEC_MAX_REL_ERR = 2.5e-7
EXP_MAX_REL_ERR = 1.7e-7       # sg_exp, sg_exp_nonpos: measured 1.6456e-7 over every float32
EXP_MAX_ULP = 2.0              # measured 1.981 ulp
EXTEXP_MAX_REL_ERR = 1.8e-7    # p 2^n vs e^u, |u| <= 2^17 (n up to 189000 in the reduction): 1.7402e-7
EXTEXP_MAX_ULP = 2.1           # measured 2.062 ulp
SCALED_MAX_REL_ERR = 2.3e-7    # sg_twoprod + sg_extexp_p_lo, p 2^n vs e^(s x): 2.2315e-7 (docstring)
SCALED_MAX_ULP = 2.7           # measured 2.633 ulp
EXTEXP_DOMAIN = 2.0 ** 17
FLT_MIN = float(np.finfo(np.float32).tiny)
FLT_MAX = float(np.finfo(np.float32).max)
# p is in [2^-1/2, 2^1/2] only up to how far n = rint(u log2e) (from a float u, or the rounded
# product hi = fl(s x), and the float SG_LOG2E) can be from the nearest integer to u / ln2:
# |log2 p| <= 1/2 + |u| log2e (eps_log2e [+ 2^-24 scaled]) + rounding; the harness reports the
# worst excess over that in log2 units.
P_RANGE_SLACK = 1e-6

HARNESS = r"""
/* ---- test harness (tests/test_exp.py): scans of the vector exp against libm's double exp ---- */
#define SG_EXPORT __attribute__((visibility("default")))

typedef struct {
    double max_rel, max_ulp;     /* worst |y - e| / e and |y - e| / ulp_f32(e) where e is measured */
    double max_under;            /* worst |y - e| where e < FLT_MIN (flush region) */
    double min_p, max_p, max_pex;/* extexp: range of p, worst |log2 p| - 1/2 - delta(u) */
    uint64_t n, n_meas, n_over_inf, n_over_fin, n_under_zero, n_under_sub, n_nan, n_skip, n_bad;
    uint32_t arg_rel, arg_ulp, arg_under, arg_min_p, arg_max_p, arg_pex, first_bad;
} sg_stats;

static const double SG_FLT_MIN_D = 0x1p-126, SG_FLT_MAX_D = 0x1.fffffep127;
static const double SG_LN2_HI_D = 6.93147180369123816490e-01;  /* 32 bits: n ln2_hi exact, |n| < 2^21 */
static const double SG_LN2_LO_D = 1.90821492927058770002e-10;
static const double SG_LOG2E_D = 1.44269504088896340736;

static void sg_stats_init(sg_stats *st) {
    memset(st, 0, sizeof *st);
    st->min_p = INFINITY;
    st->max_p = st->max_pex = -INFINITY;
}
static inline uint32_t sg_f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float sg_u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
/* 1 / the spacing of float32 values in r's binade (r > 0 normal): a power of 2, so exact. */
static inline double sg_inv_ulp_f32(double r) {
    uint64_t b;
    memcpy(&b, &r, 8);
    b = (uint64_t)(2046 + 23 - ((b >> 52) & 0x7ff)) << 52;
    memcpy(&r, &b, 8);
    return r;
}
static inline void sg_bad(sg_stats *st, float x) {
    if (!st->n_bad++) st->first_bad = sg_f2u(x);
}
static inline void sg_measure(sg_stats *st, float x, double y, double e) {
    double d = fabs(y - e), rel = d / e, ulp = d * sg_inv_ulp_f32(e);
    st->n_meas++;
    if (rel > st->max_rel) { st->max_rel = rel; st->arg_rel = sg_f2u(x); }
    if (ulp > st->max_ulp) { st->max_ulp = ulp; st->arg_ulp = sg_f2u(x); }
}

/* One (x, y = vector exp(x)) pair: e = exp((double)x) decides which contract applies. */
static inline void sg_check_exp(sg_stats *st, float x, float y) {
    st->n++;
    if (isnan(x)) {
        st->n_nan++;
        if (!isnan(y)) sg_bad(st, x);
        return;
    }
    if (isnan(y)) { sg_bad(st, x); return; }
    /* e^-104 < 2^-150 and e^100 > FLT_MAX: beyond, skip libm's slow under/overflow path */
    double e = x < -104.0f ? 0.0 : x > 100.0f ? INFINITY : exp((double)x);
    if (e > SG_FLT_MAX_D) {                    /* overflow: +inf, or a finite value near e */
        if (y == INFINITY) st->n_over_inf++;
        else if (isfinite(y)) { st->n_over_fin++; sg_measure(st, x, y, e); }
        else sg_bad(st, x);
    } else if (e >= SG_FLT_MIN_D) {            /* the measured domain: a finite result */
        if (!isfinite(y)) sg_bad(st, x);
        else sg_measure(st, x, y, e);
    } else {                                   /* flush region: +0 or a subnormal */
        if (!(y >= 0.0f && y < FLT_MIN) || signbit(y)) { sg_bad(st, x); return; }
        if (y == 0.0f) st->n_under_zero++; else st->n_under_sub++;
        double d = fabs((double)y - e);
        if (d > st->max_under) { st->max_under = d; st->arg_under = sg_f2u(x); }
    }
}

/* Extended exponent: p 2^n must be e^u, u = x (mode 0) or the exact (double)s * x (mode 1);
   arguments with |u| > 2^17 (and NaN) are outside the domain and only counted. */
static inline void sg_check_ext(sg_stats *st, float x, double u, float p, float n, double k) {
    if (isnan(x) || !(fabs(u) <= 0x1p17)) { st->n_skip++; return; }
    st->n++;
    if (!isfinite(p) || !(p > 0.0f) || !isfinite(n) || n != nearbyintf(n)) { sg_bad(st, x); return; }
    double t = (u - (double)n * SG_LN2_HI_D) - (double)n * SG_LN2_LO_D;
    double r = exp(t);                         /* the exact p: e^u 2^-n */
    sg_measure(st, x, p, r);
    if (fabs(u) <= 700.0) {                    /* directly too: p 2^n against e^u */
        double e = exp(u), rel = fabs(ldexp((double)p, (int)n) - e) / e;
        if (rel > st->max_rel) { st->max_rel = rel; st->arg_rel = sg_f2u(x); }
    }
    if (p < st->min_p) { st->min_p = p; st->arg_min_p = sg_f2u(x); }
    if (p > st->max_p) { st->max_p = p; st->arg_max_p = sg_f2u(x); }
    double pex = fabs(log2((double)p)) - 0.5 - fabs(u) * SG_LOG2E_D * k;
    if (pex > st->max_pex) { st->max_pex = pex; st->arg_pex = sg_f2u(x); }
}

/* Over the bit patterns lo, lo + stride, ... (count of them, wrapping mod 2^32), a block at a time:
   first the vector function over the block (independent iterations, so even the one-lane scalar
   target overlaps them), then the checks. */
#define SG_BLOCK 1024
static inline uint64_t sg_fill(float *xs, uint32_t lo, uint64_t i, uint64_t count, uint32_t stride) {
    uint64_t k = count - i < SG_BLOCK ? count - i : SG_BLOCK;
    uint32_t b = lo + (uint32_t)(i * stride);
    for (uint64_t j = 0; j < SG_BLOCK; j++) {
        xs[j] = sg_u2f(b);
        if (j + 1 < k) b += stride;            /* lanes past the end repeat the last pattern */
    }
    return k;
}
#define SG_SCAN_EXP(NAME, F)                                                             \
SG_EXPORT void NAME(uint32_t lo, uint64_t count, uint32_t stride, sg_stats *st) {        \
    float xs[SG_BLOCK], ys[SG_BLOCK];                                                   \
    sg_stats_init(st);                                                                  \
    for (uint64_t i = 0; i < count; i += SG_BLOCK) {                                    \
        uint64_t k = sg_fill(xs, lo, i, count, stride);                                 \
        for (uint64_t j = 0; j < SG_BLOCK; j += SG_LANES)                               \
            V_STORE(ys + j, F(V_LOAD(xs + j)));                                         \
        for (uint64_t j = 0; j < k; j++) sg_check_exp(st, xs[j], ys[j]);                \
    }                                                                                   \
}
SG_SCAN_EXP(sg_scan_exp, sg_exp)
SG_SCAN_EXP(sg_scan_exp_nonpos, sg_exp_nonpos)
#ifdef SG_EXP_MIN_SCALED   /* the target has the scaled sg_exp_shifted (render.scaled_exp) */
SG_SCAN_EXP(sg_scan_exp_shifted, sg_exp_shifted)
#define SG_SHIFTED(v) sg_exp_shifted(v)
#else
#define SG_SHIFTED(v) sg_exp_nonpos(v)
#endif

/* mode 0: (p, n) of u = x; mode 1: of s x carried as sg_twoprod's hi + lo (sg_extexp_p_lo). */
SG_EXPORT void sg_scan_extexp(uint32_t lo, uint64_t count, uint32_t stride, int mode, float s,
                              sg_stats *st) {
    float xs[SG_BLOCK], ps[SG_BLOCK], ns[SG_BLOCK];
    /* how far n may be from rint(u / ln2), per unit of |u| log2e: the float SG_LOG2E's error,
       plus the rounding of hi = fl(s x) when n is taken from hi */
    double k = fabs((double)SG_LOG2E - SG_LOG2E_D) / SG_LOG2E_D + (mode ? 0x1p-24 : 0.0);
    sg_stats_init(st);
    for (uint64_t i = 0; i < count; i += SG_BLOCK) {
        uint64_t m = sg_fill(xs, lo, i, count, stride);
        for (uint64_t j = 0; j < SG_BLOCK; j += SG_LANES) {
            VEC x = V_LOAD(xs + j), n, p;
            if (mode == 0) {
                n = sg_extexp_n(x);
                p = sg_extexp_p(x, n);
            } else {
                VEC l, u = sg_twoprod(x, V_SET1(s), &l);
                n = sg_extexp_n(u);
                p = sg_extexp_p_lo(u, n, l);
            }
            V_STORE(ps + j, p);
            V_STORE(ns + j, n);
        }
        for (uint64_t j = 0; j < m; j++)
            sg_check_ext(st, xs[j], mode == 0 ? (double)xs[j] : (double)s * (double)xs[j],
                         ps[j], ns[j], k);
    }
}

/* Plain evaluation of an array (a partial last vector through a zero-padded buffer):
   which 0: y = sg_exp(x); 1: sg_exp_nonpos(x); 2: (y, n) = (p, n) of u = x; 3: of s x, scaled;
   4: sg_exp_shifted(x) (sg_exp_nonpos on targets without it). */
SG_EXPORT void sg_eval(int which, const float *x, float *y, float *n, uint64_t count, float s) {
    float xs[SG_LANES], ys[SG_LANES], ns[SG_LANES];
    for (uint64_t i = 0; i < count; i += SG_LANES) {
        uint64_t k = count - i < SG_LANES ? count - i : SG_LANES;
        memset(xs, 0, sizeof xs);
        memcpy(xs, x + i, k * sizeof(float));
        VEC v = V_LOAD(xs), r, e = V_ZERO();
        if (which == 0) r = sg_exp(v);
        else if (which == 1) r = sg_exp_nonpos(v);
        else if (which == 2) { e = sg_extexp_n(v); r = sg_extexp_p(v, e); }
        else if (which == 4) r = SG_SHIFTED(v);
        else {
            VEC l, u = sg_twoprod(v, V_SET1(s), &l);
            e = sg_extexp_n(u);
            r = sg_extexp_p_lo(u, e, l);
        }
        V_STORE(ys, r);
        V_STORE(ns, e);
        memcpy(y + i, ys, k * sizeof(float));
        memcpy(n + i, ns, k * sizeof(float));
    }
}
"""

_DOUBLES = ("max_rel", "max_ulp", "max_under", "min_p", "max_p", "max_pex")
_COUNTS = ("n", "n_meas", "n_over_inf", "n_over_fin", "n_under_zero", "n_under_sub", "n_nan",
           "n_skip", "n_bad")
_ARGS = ("arg_rel", "arg_ulp", "arg_under", "arg_min_p", "arg_max_p", "arg_pex", "first_bad")


class _Stats(ctypes.Structure):
    _fields_ = ([(f, ctypes.c_double) for f in _DOUBLES] + [(f, ctypes.c_uint64) for f in _COUNTS]
                + [(f, ctypes.c_uint32) for f in _ARGS])


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def flt(b: int) -> float:
    return struct.unpack("<f", struct.pack("<I", b & 0xFFFFFFFF))[0]


@dataclass
class Scan:
    """Merged statistics of one sweep; the ``arg_*`` are the float32 arguments of the maxima."""
    what: str
    max_rel: float = 0.0
    max_ulp: float = 0.0
    max_under: float = 0.0
    min_p: float = math.inf
    max_p: float = -math.inf
    max_pex: float = -math.inf
    arg_rel: float = math.nan
    arg_ulp: float = math.nan
    arg_under: float = math.nan
    arg_min_p: float = math.nan
    arg_max_p: float = math.nan
    arg_pex: float = math.nan
    first_bad: float | None = None
    n: int = 0
    n_meas: int = 0
    n_over_inf: int = 0
    n_over_fin: int = 0
    n_under_zero: int = 0
    n_under_sub: int = 0
    n_nan: int = 0
    n_skip: int = 0
    n_bad: int = 0

    def add(self, st: _Stats) -> None:
        for f in _COUNTS:
            setattr(self, f, getattr(self, f) + getattr(st, f))
        for f, a in (("max_rel", "arg_rel"), ("max_ulp", "arg_ulp"), ("max_under", "arg_under"),
                     ("max_p", "arg_max_p"), ("max_pex", "arg_pex")):
            if getattr(st, f) > getattr(self, f):
                setattr(self, f, getattr(st, f))
                setattr(self, a, flt(getattr(st, a)))
        if st.min_p < self.min_p:
            self.min_p, self.arg_min_p = st.min_p, flt(st.arg_min_p)
        if st.n_bad and self.first_bad is None:
            self.first_bad = flt(st.first_bad)

    def __str__(self) -> str:
        s = (f"{self.what}: {self.n} values, max rel {self.max_rel:.5g} at {self.arg_rel!r}, "
             f"max {self.max_ulp:.4g} ulp at {self.arg_ulp!r}")
        if self.n_over_inf or self.n_under_zero or self.n_under_sub or self.n_nan:
            s += (f"; +inf {self.n_over_inf} (finite {self.n_over_fin}), flushed +0 "
                  f"{self.n_under_zero} / subnormal {self.n_under_sub} (max |y - e| "
                  f"{self.max_under:.3g} at {self.arg_under!r}), NaN {self.n_nan}")
        if self.max_p > 0:
            s += (f"; p in [{self.min_p!r} (at {self.arg_min_p!r}), {self.max_p!r} "
                  f"(at {self.arg_max_p!r})], excess {self.max_pex:.3g} at {self.arg_pex!r}")
        if self.n_bad:
            s += f"; {self.n_bad} BAD, first at x = {self.first_bad!r} ({bits(self.first_bad):#010x})"
        return s


# -- targets: native where the CPU runs them, x86 ISAs through SIMDe otherwise -------------------

def _mode(name: str) -> str | None:
    t = get_target(name)
    if t.runnable:
        return "native"
    if t.arch == "x86_64" and host_arch() == "x86_64":
        return "emulated"
    return None


TARGETS = [n for n in all_targets() if _mode(n)]
NATIVE = [n for n in TARGETS if _mode(n) == "native"]
EMULATED = [n for n in TARGETS if _mode(n) == "emulated"]
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def harness(name: str, exp: str = ""):
    """The C harness over vmath with schedule exp ``exp`` ("": the target's choice, the kernels' default)."""
    t = get_target(name)
    if _mode(name) == "emulated":
        skip_unless_emulated(t)  # SIMDe headers (simde-py); a failure under CI=true
    lib = ctypes.CDLL(str(build_shared(isa_header(t) + vmath(exp, t) + HARNESS, t,
                                       emulate=_mode(name) == "emulated")))
    st = ctypes.POINTER(_Stats)
    for f in ("sg_scan_exp", "sg_scan_exp_nonpos") + (("sg_scan_exp_shifted",) if scaled_exp(t) else ()):
        getattr(lib, f).argtypes = [ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32, st]
        getattr(lib, f).restype = None
    lib.sg_scan_extexp.argtypes = [ctypes.c_uint32, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_int,
                                   ctypes.c_float, st]
    lib.sg_scan_extexp.restype = None
    p = ctypes.c_void_p
    lib.sg_eval.argtypes = [ctypes.c_int, p, p, p, ctypes.c_uint64, ctypes.c_float]
    lib.sg_eval.restype = None
    return lib


def scan(name: str, fn: str, ranges, stride: int = 1, *extra, what: str = "", exp: str = EXP_DEFAULT) -> Scan:
    """``fn`` over the bit patterns ``lo, lo + stride, ... < hi`` of each ``(lo, hi)``, split into
    chunks run on all CPUs (ctypes releases the GIL during the calls); ``exp``: the exp variant."""
    lib = harness(name, exp)
    chunk = 1 << 24 if _mode(name) == "native" else 1 << 20  # work units shared by the threads
    jobs = []
    for lo, hi in ranges:
        count = (hi - lo + stride - 1) // stride
        for i in range(0, count, chunk):
            jobs.append(((lo + i * stride) & 0xFFFFFFFF, min(chunk, count - i)))

    def one(job):
        st = _Stats()
        getattr(lib, fn)(job[0], job[1], stride, *extra, ctypes.byref(st))
        return st

    out = Scan(f"{name} {fn} {what}{'' if exp == EXP_DEFAULT else ' exp ' + exp}".strip())
    with ThreadPoolExecutor(CPUS) as ex:
        for st in ex.map(one, jobs):
            out.add(st)
    assert out.n + out.n_skip == sum((hi - lo + stride - 1) // stride for lo, hi in ranges)
    return out


def evaluate(name: str, which: int, x, s: float = 1.0):
    x = np.ascontiguousarray(x, dtype=np.float32)
    y, n = np.empty_like(x), np.empty_like(x)
    harness(name).sg_eval(which, x.ctypes.data, y.ctypes.data, n.ctypes.data, x.size, s)
    return y, n


def binade(sign: int, exp_lo: int, exp_hi: int | None = None) -> tuple[int, int]:
    """Bit patterns of every float32 with the given sign and 2^exp_lo <= |x| < 2^exp_hi."""
    exp_hi = exp_lo + 1 if exp_hi is None else exp_hi
    return ((sign << 31) | ((exp_lo + 127) << 23), (sign << 31) | ((exp_hi + 127) << 23))


# Where the exhaustive sweep found the maxima (|x| in [2, 8)), the ends of the measured domain
# (|x| in [64, 128): overflow above 88.72, subnormal results and flushing below -87.34), around
# 1 and near 0.
EXP_BINADES = [binade(s, e) for s in (0, 1) for e in (-20, -1, 0, 1, 2, 6)]
NONPOS_BINADES = [binade(1, e) for e in (-20, -1, 0, 1, 2, 6)]
STRIDE = 61  # co-prime to every power of two: hits every exponent and low-bit pattern
EMU_EXP_BINADES = [binade(1, 2), binade(0, 6), binade(1, 6)]  # SIMDe emulation: several x slower
EMU_STRIDE = 4099


def check_exp(r: Scan, bound: float = EXP_MAX_REL_ERR, ulps: float = EXP_MAX_ULP) -> None:
    print(r)
    assert r.n_bad == 0, str(r)
    assert r.max_rel <= bound <= SPEC_MAX_REL_ERR, str(r)
    assert r.max_ulp <= ulps, str(r)


def check_ext(r: Scan, bound: float = EXTEXP_MAX_REL_ERR, ulps: float = EXTEXP_MAX_ULP) -> None:
    check_exp(r, bound, ulps)
    assert r.n_meas == r.n > 0
    assert r.max_pex <= P_RANGE_SLACK, str(r)


def check_scaled(r: Scan) -> None:
    check_ext(r, SCALED_MAX_REL_ERR, SCALED_MAX_ULP)


# -- specials ------------------------------------------------------------------------------------

NANS = [flt(b) for b in (0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
                         0x7FA00000)]


@pytest.mark.parametrize("target", TARGETS)
def test_specials(target):
    tiny = [flt(1), 2.0 ** -126, 2.0 ** -30, 2.0 ** -25]
    over = [88.73, 88.75, 88.76, 89.0, 100.0, 1e10, FLT_MAX, math.inf]
    flushed0 = [-87.69, -87.7, -88.0, -88.5, -100.0, -1e10, -FLT_MAX, -math.inf]
    sub = [-87.34, -87.4, -87.5, -87.6, -87.68]
    for which in (0, 1):
        nonpos = [-x for x in tiny] + [-0.0] + flushed0 + sub + NANS
        xs = nonpos + ([0.0] + tiny + over if which == 0 else [])
        y, _ = evaluate(target, which, np.array(xs, np.float32))
        got = dict(zip(map(bits, np.array(xs, np.float32).tolist()), y.tolist()))
        for x in xs:
            yx, b = got[bits(x)], bits(x)
            if math.isnan(x):
                assert math.isnan(yx), (which, hex(b), yx)
            elif x in (0.0, -0.0) or abs(x) <= 2.0 ** -25:
                assert yx == 1.0, (which, x, yx)           # 0 and -0 -> 1 exactly
            elif x in over:
                assert yx == math.inf, (which, x, yx)
            elif x in flushed0:
                assert yx == 0.0 and math.copysign(1, yx) > 0, (which, x, yx)
            else:                                        # -87.683 <= x < -87.3365: subnormal
                assert 0.0 < yx < FLT_MIN, (which, x, yx)
        # the largest finite and smallest normal results
        y, _ = evaluate(target, which, np.array([-87.33, 0.0], np.float32))
        assert FLT_MIN <= y[0] and abs(y[0] / math.exp(np.float32(-87.33)) - 1) <= EXP_MAX_REL_ERR
    # 88.72283 is the largest float32 whose e^x <= FLT_MAX, the next one (88.72284) overflows
    y, _ = evaluate(target, 0, np.array([88.72283172607422, 88.72283935546875], np.float32))
    assert abs(y[0] / math.exp(88.72283172607422) - 1) <= EXP_MAX_REL_ERR and y[1] == math.inf


@pytest.mark.parametrize("target", TARGETS)
def test_extexp_specials(target):
    """(p, n) of u = +-0 is (1, 0) exactly, n is an integer, p 2^n = e^u; the same for the scaled
    form, against e^(s x) with the float32 s the kernels use."""
    u = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 100.0, -100.0, EXTEXP_DOMAIN, -EXTEXP_DOMAIN],
                 np.float32)
    p, n = evaluate(target, 2, u)
    assert p[0] == p[1] == 1.0 and n[0] == n[1] == 0.0
    assert np.all(n == np.rint(n)) and np.all(np.isfinite(p))
    ref = np.exp(u.astype(np.float64)[:8]) / np.exp2(n[:8].astype(np.float64))
    assert np.all(np.abs(p[:8] / ref - 1) <= EXTEXP_MAX_REL_ERR), (p, ref)
    for s in SCALES:
        x = u[:8]
        ps, ns = evaluate(target, 3, x, s)
        assert ps[0] == ps[1] == 1.0 and ns[0] == ns[1] == 0.0
        ref = np.exp(np.float64(np.float32(s)) * x) / np.exp2(ns.astype(np.float64))  # float s
        assert np.all(np.abs(ps / ref - 1) <= SCALED_MAX_REL_ERR), (s, ps, ref)


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "avx2"])
def test_same_bits_as_avx2(target):
    """Every target performs the same IEEE float operations in the same order as avx2 (scalar's
    FMA through double rounds twice, so it may rarely differ by an ulp: counted, and bounded by
    the error sweeps)."""
    if "avx2" not in TARGETS:
        pytest.skip("avx2 does not run here")
    x = np.array([flt(b) for b in range(0, 1 << 32, 65537 * 3)], np.float32)
    for which in (0, 1, 2, 3):
        xs = -np.abs(x) if which == 1 else x
        if which >= 2:
            xs = xs[np.abs(xs) <= EXTEXP_DOMAIN / 3]
        a, na = evaluate("avx2", which, xs, 3.0)
        b, nb = evaluate(target, which, xs, 3.0)
        same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
        if target == "scalar":
            diff = ~same
            assert np.all(np.abs(a[diff].astype(np.float64) / b[diff] - 1) <= 2 ** -22), which
            print(f"scalar vs avx2 function {which}: {diff.sum()} of {xs.size} differ (by 1 ulp)")
        else:
            assert same.all(), (which, xs[~same][:5], a[~same][:5], b[~same][:5])
        if which >= 2:
            assert np.array_equal(na, nb)


# -- error sweeps: default run -------------------------------------------------------------------

@pytest.mark.parametrize("target", NATIVE)
def test_exp_binades_and_stride(target):
    check_exp(scan(target, "sg_scan_exp", EXP_BINADES, what="binades"))
    check_exp(scan(target, "sg_scan_exp", [(0, 1 << 32)], STRIDE, what=f"stride {STRIDE}"))


@pytest.mark.parametrize("target", NATIVE)
def test_exp_nonpos_binades_and_stride(target):
    check_exp(scan(target, "sg_scan_exp_nonpos", NONPOS_BINADES, what="binades"))
    r = scan(target, "sg_scan_exp_nonpos", [(0x80000000, 1 << 32)], STRIDE, what=f"stride {STRIDE}")
    check_exp(r)
    assert r.n_under_zero and r.n_under_sub and r.n_nan


# -- the scaled exp of x - max x (render.scaled_exp: avx512's sg_exp_shifted) ---------------------

SCALED = [t for t in NATIVE if scaled_exp(get_target(t))]


@pytest.mark.parametrize("target", SCALED)
def test_exp_shifted_binades_and_stride(target):
    check_exp(scan(target, "sg_scan_exp_shifted", NONPOS_BINADES, what="binades"))
    r = scan(target, "sg_scan_exp_shifted", [(0x80000000, 1 << 32)], STRIDE, what=f"stride {STRIDE}")
    check_exp(r)
    assert r.n_under_zero and r.n_under_sub and r.n_nan


@pytest.mark.parametrize("target", SCALED)
def test_exp_shifted_specials_and_bits(target):
    """-inf, -FLT_MAX and x <= -104 give +0, NaN stays NaN, 0 gives 1; subnormal results down to
    2^-149 within one subnormal ulp of e^x (sg_exp_nonpos flushes below -87.683); the same bits
    as sg_exp_nonpos for results from 2^-124 up, or, where the target file's shifted_exp is a
    table variant (avx512: t32), as its float32 model ``reference.exp_table_f32``."""
    xs = np.array([-0.0, -math.inf, -FLT_MAX, -1e10, -104.0, -103.0, -100.0, -95.0, -88.0, -87.69, -87.5]
                  + NANS, np.float32)
    y, _ = evaluate(target, 4, xs)
    assert y[0] == 1.0 and np.all(np.isnan(y[11:]))
    assert np.all(y[1:5] == 0.0) and not np.signbit(y[1:5]).any()
    sub = y[5:11].astype(np.float64)
    assert np.all((sub > 0) & (sub < FLT_MIN)), sub
    assert np.all(np.abs(sub - np.exp(xs[5:11].astype(np.float64))) <= 2.0 ** -149), sub
    x = -np.abs(np.array([flt(b) for b in range(0, 1 << 32, 65537 * 3)], np.float32))
    a, _ = evaluate(target, 1, x)
    b, _ = evaluate(target, 4, x)
    keep = a >= 2.0 ** -124
    table = get_target(target).shifted_exp
    if table:
        m = ref.exp_table_f32(x, table, shifted=True)      # its model (rare double roundings aside)
        diff = ~np.isnan(b) & (b.view(np.uint32) != m.view(np.uint32))
        assert diff.sum() <= 4 and np.all(np.abs(b[diff].astype(np.float64) / m[diff] - 1) <= 2.0 ** -22)
    else:
        assert np.array_equal(a[keep].view(np.uint32), b[keep].view(np.uint32))
    assert np.all(np.abs(b[~keep & ~np.isnan(a)] - np.exp(x[~keep & ~np.isnan(a)].astype(np.float64)))
                  <= 2.0 ** -149 + 2.0 ** -23 * np.exp(x[~keep & ~np.isnan(a)].astype(np.float64)))


# -- exp variants (schedule exp; numerics.constants.EXP_VARIANTS): each held to the contract ------

EXP_VARIANT_NAMES = [v for v in EXP_VARIANTS if v != EXP_DEFAULT]
VARIANT_BINADES = [binade(1, 1), binade(1, 2), binade(1, 6), binade(0, 2), binade(0, 6)]
VARIANT_STRIDE = 4099


def check_variant(r: Scan, variant: str) -> None:
    """Within the spec, within 5% of the error bench/fit_exp.py recorded, and the same ulp bound
    as the default exp."""
    check_exp(r, min(SPEC_MAX_REL_ERR, 1.05 * EXP_VARIANTS[variant].error), EXP_MAX_ULP)


@pytest.mark.parametrize("variant", EXP_VARIANT_NAMES)
@pytest.mark.parametrize("target", NATIVE[:2])
def test_exp_variants_within_contract(target, variant):
    for fn in ("sg_scan_exp", "sg_scan_exp_nonpos"):
        ranges = VARIANT_BINADES if fn == "sg_scan_exp" else [b for b in VARIANT_BINADES if b[0] >> 31]
        check_variant(scan(target, fn, ranges, what="binades", exp=variant), variant)
        lo = 0 if fn == "sg_scan_exp" else 0x80000000
        r = scan(target, fn, [(lo, 1 << 32)], VARIANT_STRIDE, what=f"stride {VARIANT_STRIDE}", exp=variant)
        check_variant(r, variant)
        # a table variant flushes to +0 below about FLT_MIN (subnormals only where floor(k/N) = -126)
        assert r.n_nan and r.n_under_zero and (r.n_under_sub or EXP_VARIANTS[variant].table)
        assert fn != "sg_scan_exp" or r.n_over_inf


@pytest.mark.slow
@pytest.mark.parametrize("variant", EXP_VARIANT_NAMES)
@pytest.mark.parametrize("target", NATIVE)
def test_exp_variants_every_float32(target, variant):
    check_variant(scan(target, "sg_scan_exp", [(0, 1 << 32)], what="all 2^32", exp=variant), variant)


@pytest.mark.parametrize("target", EMULATED)
def test_exp_emulated(target):
    check_exp(scan(target, "sg_scan_exp", EMU_EXP_BINADES, what="binades"))
    check_exp(scan(target, "sg_scan_exp", [(0, 1 << 32)], EMU_STRIDE, what=f"stride {EMU_STRIDE}"))
    check_exp(scan(target, "sg_scan_exp_nonpos", [binade(1, 6)], what="binade [-128, -64)"))
    check_exp(scan(target, "sg_scan_exp_nonpos", [(0x80000000, 1 << 32)], EMU_STRIDE,
                   what=f"stride {EMU_STRIDE}"))


# u in [1, 2) and the top binade [2^16, 2^17] both ways (largest n, hence reduction error), and
# every |u| <= 2^17 with a stride.
EXT_BINADES = [binade(0, 0), binade(1, 0), (bits(2.0 ** 16), bits(2.0 ** 17) + 1),
               (bits(-(2.0 ** 16)), bits(-(2.0 ** 17)) + 1)]
EXT_ALL = [(0, bits(EXTEXP_DOMAIN) + 1), (0x80000000, bits(-EXTEXP_DOMAIN) + 1)]
SCALES = (0.125, 0.7, 3.0)
WORST_SCALES = (5.192954063415527, 2.047424077987671, 1 / 3)  # the largest errors of 46 scales
SCALED_STRIDE = 251


@pytest.mark.parametrize("target", TARGETS)
def test_extexp(target):
    native = target in NATIVE
    r = scan(target, "sg_scan_extexp", EXT_BINADES[:2], 1, 0, 1.0, what="u in +-[1, 2)")
    check_ext(r)
    assert 2 ** -0.5 * (1 - P_RANGE_SLACK) <= r.min_p and r.max_p <= 2 ** 0.5 * (1 + P_RANGE_SLACK)
    check_ext(scan(target, "sg_scan_extexp", EXT_BINADES[2:] if native else EXT_BINADES[2:3], 1,
                   0, 1.0, what="|u| in [2^16, 2^17]"))
    stride = STRIDE if native else EMU_STRIDE
    check_ext(scan(target, "sg_scan_extexp", EXT_ALL, stride, 0, 1.0, what=f"stride {stride}"))


def _scaled_ranges(s: float, top_only: bool = False):
    """The float x with |s x| in the top binade of the domain, and all x with |s x| <= 2^17."""
    hi = float(np.float32(EXTEXP_DOMAIN / s))
    top = float(np.float32(hi / 2))
    return ([(bits(top), bits(hi) + 1), (bits(-top), bits(-hi) + 1)][: 1 if top_only else 2],
            [(0, bits(hi) + 1), (0x80000000, bits(-hi) + 1)])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("s", SCALES)
def test_extexp_scaled(target, s):
    """sg_twoprod + sg_extexp_p_lo: p 2^n = e^(s x) for the exact product s x (double)."""
    native = target in NATIVE
    top, whole = _scaled_ranges(s, top_only=not native)
    check_scaled(scan(target, "sg_scan_extexp", top, 1, 1, s, what=f"s={s} top binade"))
    stride = SCALED_STRIDE if native else EMU_STRIDE
    check_scaled(scan(target, "sg_scan_extexp", whole, stride, 1, s, what=f"s={s} stride {stride}"))


@pytest.mark.parametrize("target", NATIVE)
@pytest.mark.parametrize("s", WORST_SCALES)
def test_extexp_scaled_worst_scales_found(target, s):
    check_scaled(scan(target, "sg_scan_extexp", _scaled_ranges(s)[0], 1, 1, s,
                      what=f"s={s} top binade"))


# -- error sweeps: every float32 (-m slow) --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("target", NATIVE)
def test_exp_every_float32(target):
    r = scan(target, "sg_scan_exp", [(0, 1 << 32)], what="all 2^32")
    check_exp(r)
    assert r.n == 1 << 32 and r.n_nan == 2 * (2 ** 23 - 1)


@pytest.mark.slow
@pytest.mark.parametrize("target", NATIVE)
def test_exp_nonpos_every_nonpositive_float32(target):
    r = scan(target, "sg_scan_exp_nonpos", [(0x80000000, 1 << 32)], what="all x <= 0 and -NaN")
    check_exp(r)
    assert r.n == 1 << 31


@pytest.mark.slow
@pytest.mark.parametrize("target", NATIVE)
def test_extexp_every_float32(target):
    check_ext(scan(target, "sg_scan_extexp", EXT_ALL, 1, 0, 1.0, what="all |u| <= 2^17"))


@pytest.mark.slow
@pytest.mark.parametrize("target", NATIVE)
@pytest.mark.parametrize("s", SCALES[1:])  # s = 0.125 makes s x exact: test_extexp_every_float32
def test_extexp_scaled_every_float32(target, s):
    check_scaled(scan(target, "sg_scan_extexp", _scaled_ranges(s)[1], 1, 1, s,
                      what=f"s={s} all |s x| <= 2^17"))


@pytest.mark.slow
@pytest.mark.parametrize("target", EMULATED)
def test_emulated_more_binades(target):
    check_exp(scan(target, "sg_scan_exp", EXP_BINADES, what="binades"))
    check_exp(scan(target, "sg_scan_exp_nonpos", NONPOS_BINADES, what="binades"))
    check_ext(scan(target, "sg_scan_extexp", EXT_BINADES, 1, 0, 1.0, what="binades"))


@pytest.mark.skipif(not scaled_exp(get_target("avx512")), reason="avx512 has no scaled exp")
def test_scaled_exp_only_for_max_shifted_sums():
    """avx512 kernels call sg_exp_shifted for e^(x - max x) (softmax, online's output sweep, the
    softmax limit of softplus_l1) and keep sg_exp_nonpos for other exps (softplus_l1's e^-|x|,
    whose sum may be tiny: 1 / sum must stay finite); avx2 has no sg_exp_shifted."""
    for alg in ("three-pass-reload", "online"):
        src = softgen.compile("softmax", target="avx512", algorithm=alg).source
        assert "sg_exp_shifted(v" in src and "sg_exp_nonpos(v" not in src, alg
    k = softgen.compile("softplus_l1", target="avx512", algorithm="direct")
    fallback, row = k.source.split(f"static void {k.name}__row(")
    row = row.split("\n}\n")[0]
    assert "sg_exp_nonpos(v" in row and "sg_exp_shifted(v" not in row
    assert "sg_exp_shifted(v" in fallback.split(f"{k.name}__fallback_row(")[1]
    assert "sg_exp_shifted" not in softgen.compile("softmax", target="avx2").source
