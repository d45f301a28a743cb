"""The float32 constants of softgen's vector math, in one place: the "p5" exp (docs/ops.md §2.4), the
extended exponent (docs/ops.md §2.1), log and log1p. ``templates/vmath.h.j2`` spells them in C (a global
``K`` of ``render.env()``: ``{{ K.LOG2E.c }}`` is ``0x1.715476p+0f``), the TVM backend's emitter
writes them into TIR, and ``reference.exp_p5_f32`` evaluates the same p5 in float64-emulated
float32. Layer 0: imports nothing of softgen.

Each constant is an ``F32``: a float (its exact value) that also keeps the spelling written
here (``.text``, and ``.c`` with the C ``f`` suffix), so the generated C does not change when a
value is only re-spelled. Every value is exactly representable in float32.
"""
from __future__ import annotations

import struct


class F32(float):
    """A float32 constant: its value, and its source spelling (hex float or decimal)."""
    text: str

    def __new__(cls, text: str) -> "F32":
        value = float.fromhex(text) if "0x" in text.lower() else float(text)
        obj = super().__new__(cls, value)
        obj.text = text
        return obj

    @property
    def c(self) -> str:
        """The C float literal (``0x1.715476p+0f``)."""
        return self.text + "f"

    def __repr__(self) -> str:
        return f"F32({self.text!r})"


# -- exp ("p5" of Dukhan & Ablavatski, docs/ops.md §2.4) ---------------------------------------------------
LOG2E = F32("0x1.715476p+0")
MAGIC = F32("0x1.8000FEp23")           # 1.5 * 2^23 + 127: round to integer, 127 + n in the low bits
MINUS_LN2_HI = F32("-0x1.62E43p-1")    # Cody-Waite: -ln2 = MINUS_LN2_HI + MINUS_LN2_LO
MINUS_LN2_LO = F32("0x1.05C61p-29")
# e^t - 1 over t for |t| <= ln2/2, highest degree first: c5, c4, c3, c2, c1
P5 = (F32("0x1.0F9F9Cp-7"), F32("0x1.573A1Ap-5"), F32("0x1.555A80p-3"), F32("0x1.FFFDC6p-2"),
      F32("0x1.FFFFF6p-1"))
MINUS_LN2 = F32("-0x1.62E430p-1")       # one-constant reduction (c1): fl(-ln2), |error| 1.9e-9
EXP_MIN = F32("-88.0")                 # rounds to n = -127, whose 2^n bits are +0
EXP_MIN_SCALED = F32("-104.0")         # the scaled exp's clamp: e^-104 < 2^-150, so q 2^n rounds to +0
EXP_MAX = F32("88.75")                 # above log(FLT_MAX): overflows to +inf
# schedule lazymax's folded exp (sg_exp_fold: e^(x - q ln2) straight from x, docs/ops.md §3.1):
FOLD_MIN = F32("-0x1.601eb8p+6")       # -88.03 below the reference: k = -127 * 32 (+0), 3e-4 from the
                                       # centre of its rounding interval (half width ln2/64 = 0.0108)
FOLD_MAX = F32("4096.0")               # |reference| up to which it folds: C = magic - q exact, and the
                                       # float log2e's 1.9e-8 moves k by under 1e-4 ln2 (|r| grows 0.5%)



class ExpVariant:
    """A variant of sg_exp / sg_exp_nonpos: polynomial ``degree``, ``consts`` constants in the range
    reduction (1: t = x - n fl(ln2), one FMA; 2: Cody-Waite hi/lo, two FMAs) and ``coeffs``
    (highest degree first: c_d .. c_1 of e^t = 1 + t (c_1 + c_2 t + ...)). ``error``: max relative
    error over sg_exp_nonpos's normal results (x in [-87.33, 0]), measured by bench/fit_exp.py.
    A table variant has ``table``: the float32 2^(j/N), j < N (N = len(table), a power of two), and
    ``magic``: the bias 1.5 * 2^(23 - log2 N) + 127 that rounds x log2e to a multiple of 1/N, its
    low mantissa bits holding k = N round(x log2e) + 2^22 + 127 N (j = k mod N, then 2^floor(k/N));
    the polynomial is then e^r on |r| <= ln2 / (2N)."""

    def __init__(self, name: str, degree: int, consts: int, coeffs: tuple, error: float,
                 table: tuple = (), magic: "F32 | None" = None):
        assert len(coeffs) == degree and consts in (1, 2)
        assert not table or (len(table) & (len(table) - 1) == 0 and consts == 2 and magic is not None)
        self.name, self.degree, self.consts, self.coeffs, self.error = name, degree, consts, coeffs, error
        self.table, self.magic = table, magic

    @property
    def top(self) -> "F32":
        """A table variant's largest biased kf whose floor(k/N) is 127 (sg_exp's top binade)."""
        return F32((self.magic + 128 - 1 / len(self.table)).hex())

    @property
    def scaled_bits(self) -> tuple:
        """A table variant's int-scaled entries (schedule lazymax's folded exp, vmath.h.j2 sg_exp_fold):
        bits(T[j]) - (127 << 23) - (j << shift) as int32, so that adding the bias bits of kf shifted
        left by ``shift`` gives the bits of T[j] 2^floor(k/N) (exponent 127 + floor(k/N) >= 0:
        floor(k/N) = -127 with j = 0 gives exactly +0)."""
        out = []
        for j, t in enumerate(self.table):
            b = struct.unpack("<i", struct.pack("<f", t))[0] - (127 << 23) - (j << self.shift)
            out.append((b + 2 ** 31) % 2 ** 32 - 2 ** 31)
        return tuple(out)

    @property
    def shift(self) -> int:
        """Left shift of a table variant's bias bits (j cleared) that leaves 127 + floor(k/N) in the
        exponent field: 23 - log2 N."""
        return 23 - (len(self.table).bit_length() - 1)


# Degree 6: bench/fit_exp.py (minimax relative error on |t| <= 1.01 ln2/2, Lawson's algorithm,
# rounded to float32); degree 5 is P5 above (Dukhan & Ablavatski's, which the same fit reproduces to
# within a few float32 ulps). Only variants within the accuracy contract (relative error <= 2.5e-7)
# are here; bench/fit_exp.py's float32 check of every candidate (x in [-87.33, 0], stride 61 + the
# peak binades): p5c2 1.63e-7 (1.98 ulp), p6c2 8.9e-8 (1.06 ulp); rejected: p5c1 3.9e-7, p6c1 3.1e-7
# (fl(ln2)'s 1.9e-9 times n up to 126), p4c2 3.0e-6. tests/test_exp.py measures the generated C.
P6 = (F32("0x1.6AE0DEp-10"), F32("0x1.126E4Cp-7"), F32("0x1.555840p-5"), F32("0x1.55540Cp-3"),
      F32("0x1.FFFFFCp-2"), F32("0x1.000000p+0"))
# "t32": a 32-entry table of 2^(j/32) and a degree-2 polynomial for e^r, |r| <= ln2/64 (the reduction
# by k/32 with the Cody-Waite pair above; bench/fit_exp.py --table 32: minimax on 1.02 ln2/64,
# checked in float32 at 1.67e-7 = 1.78 ulp; degree 3 gives 1.13e-7 for one FMA more). Two FMAs
# fewer than p5 where the target has a one-instruction 32-entry lookup ([isa] TABLE32: avx512's
# vpermt2ps over two registers; avx2 gathers; others index the table per lane).
T32 = tuple(F32(h) for h in (
    "0x1.000000p+0", "0x1.059b0ep+0", "0x1.0b5586p+0", "0x1.11301ep+0", "0x1.172b84p+0", "0x1.1d4874p+0",
    "0x1.2387a6p+0", "0x1.29e9e0p+0", "0x1.306fe0p+0", "0x1.371a74p+0", "0x1.3dea64p+0", "0x1.44e086p+0",
    "0x1.4bfdaep+0", "0x1.5342b6p+0", "0x1.5ab07ep+0", "0x1.6247ecp+0", "0x1.6a09e6p+0", "0x1.71f75ep+0",
    "0x1.7a1148p+0", "0x1.82589ap+0", "0x1.8ace54p+0", "0x1.93737cp+0", "0x1.9c4918p+0", "0x1.a5503cp+0",
    "0x1.ae89fap+0", "0x1.b7f770p+0", "0x1.c199bep+0", "0x1.cb720ep+0", "0x1.d5818ep+0", "0x1.dfc974p+0",
    "0x1.ea4afap+0", "0x1.f50766p+0"))
T32_COEFFS = (F32("0x1.000002p-1"), F32("0x1.0001p+0"))          # c2, c1
T32_MAGIC = F32("0x1.801FCp18")                                # 1.5 * 2^18 + 127
EXP_DEFAULT = "p5c2"
EXP_VARIANTS = {v.name: v for v in (
    ExpVariant("p5c2", 5, 2, P5, 1.64e-7),
    ExpVariant("p6c2", 6, 2, P6, 8.9e-8),
    ExpVariant("t32", 2, 2, T32_COEFFS, 1.68e-7, table=T32, magic=T32_MAGIC),
)}

# -- extended exponent (docs/ops.md §2.1) -----------------------------------------------------------------
EXTEXP_DOMAIN = F32("0x1p17")          # |u| where (p, n) stays accurate (passes.EXTEXP_F32_DOMAIN)
EXTEXP_E0 = F32("-190000.0")           # initial exponent: below any clamped u * log2 e

# -- log, log1p ------------------------------------------------------------------------------------
# log(1 + f) = f + f^2 P(f) on [sqrt(1/2) - 1, sqrt(2) - 1]; log(1 + u) = u + u^2 Q(u) on [0, 1]
# (degree-7 minimax fits, lowest degree first, evaluated by Estrin's scheme)
LOG_P = tuple(F32(h) for h in ("-0x1.fffff8p-2", "0x1.5556fcp-2", "-0x1.0004dep-2", "0x1.98d0a6p-3",
                               "-0x1.535502p-3", "0x1.319380p-3", "-0x1.252fb0p-3", "0x1.65c796p-4"))
LOG1P_Q = tuple(F32(h) for h in ("-0x1.ffff10p-2", "0x1.5535a6p-2", "-0x1.fd10fcp-3", "0x1.883eb6p-3",
                                 "-0x1.19a5e8p-3", "0x1.446188p-4", "-0x1.ec8da6p-6", "0x1.5f9698p-8"))
LN2_HI = F32("0x1.62e300p-1")          # ln2 = LN2_HI + LN2_LO (k ln2 for |k| <= 149 is exact in hi)
LN2_LO = F32("0x1.2fefa2p-17")
ONE_BITS = 0x3f800000                  # bits(1.0f)
SQRT_HALF_BITS = 0x3f3504f3            # bits(sqrt(1/2)): the reduction's mantissa range starts here
LOG_OFF = ONE_BITS - SQRT_HALF_BITS
