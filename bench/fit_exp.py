"""Fit and check the exp variants of softgen's vector math (``numerics.constants.EXP_VARIANTS``).

A variant of sg_exp / sg_exp_nonpos (templates/vmath.h.j2) is a polynomial degree d and a range
reduction: e^x = 2^n e^t with n = round(x log2 e), t = x - n ln2 computed with one float constant
(c1: one FMA with fl(-ln2)) or two (c2: Cody-Waite -ln2 = hi + lo, two FMAs), and
e^t = 1 + t (c1 + c2 t + ... + cd t^(d-1)), evaluated as s + (t s) p(t).

Fit (documented, reproducible): minimax of the *relative* error of 1 + t p(t) against e^t on
|t| <= ln2/2 (widened by 1% for the rounding of n and of the reduction), by Lawson's iteratively
reweighted least squares on 4001 Chebyshev nodes in float64 (converges to the equioscillating
minimax solution), then each coefficient rounded to float32.

Check: the variant evaluated in float32 exactly as the C does (every FMA rounded once: float32
products are exact in float64, the float64 sum rounded to float32 can double-round in rare ties,
so this check is a close estimate; tests/test_exp.py measures the C itself), against float64 exp,
over every float32 in the binades where errors peak and a strided sweep of all x in [-88, 0]
(sg_exp_nonpos's domain; sg_exp's positive half behaves alike) — relative error and ulp.
The accuracy contract (docs/accuracy.md): relative error <= 2.5e-7.

Table variants ("t32": ``--table 32``): k = round(32 x log2 e) by a magic bias whose low mantissa
bits hold k (its low 5 bits j = k mod 32 index a table of float32 2^(j/32)), r = x - (k/32) ln2 with
the same Cody-Waite pair (|r| <= ln2/64), e^x = (T[j] + T[j] r p(r)) 2^floor(k/32) with p of degree 2
fitted the same way on |r| <= 1.02 ln2/64; checked in float32 like the others.

    python bench/fit_exp.py              # fit every degree 4..6, check each candidate (stride 61)
    python bench/fit_exp.py --stride 1   # every float32 x in [-87.33, 0] (about 1.1e9, minutes)
    python bench/fit_exp.py --table 32   # also fit and check the 32-entry table variant (t32)
"""
from __future__ import annotations

import math
import sys

import numpy as np

LN2 = math.log(2.0)
SPEC = 2.5e-7


def fit(degree: int, half: float = LN2 / 2 * 1.01, nodes: int = 4001, iters: int = 400) -> np.ndarray:
    """Coefficients c1..cd (float64) of e^t ~ 1 + t (c1 + ... + cd t^(d-1)), minimax relative."""
    t = half * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    target = np.expm1(t) / t                  # p(t) with 1 + t p(t) = e^t
    A = np.stack([t ** k for k in range(degree)], axis=1)
    w = np.ones_like(t)
    for _ in range(iters):
        sw = np.sqrt(w)
        # relative error of e^t: t (p - target) / e^t, weight by |t| / e^t
        scale = np.abs(t) / np.exp(t)
        c, *_ = np.linalg.lstsq(A * (sw * scale)[:, None], target * sw * scale, rcond=None)
        err = np.abs(A @ c - target) * scale
        w = w * err
        w /= w.sum()
    return c


def f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64).astype(np.float32)


def fma32(a, b, c):
    return (a.astype(np.float64) * b + c).astype(np.float32)


def exp_nonpos(x: np.ndarray, coeffs, consts: int) -> np.ndarray:
    """sg_exp_nonpos of a variant, in float32 (templates/vmath.h.j2's order of operations)."""
    log2e, magic = np.float32(float.fromhex("0x1.715476p+0")), np.float32(float.fromhex("0x1.8000FEp23"))
    hi, lo = np.float32(float.fromhex("-0x1.62E43p-1")), np.float32(float.fromhex("0x1.05C61p-29"))
    x = np.maximum(np.float32(-88.0), x)
    n = fma32(x, log2e, magic)
    s = ((n.view(np.int32) << 23).astype(np.int32)).view(np.float32)
    n = (n - magic).astype(np.float32)
    if consts == 2:
        t = fma32(n, lo, fma32(n, hi, x))
    else:
        t = fma32(n, np.float32(-LN2), x)
    p = np.full_like(t, coeffs[0])              # coeffs: highest degree first
    for c in coeffs[1:]:
        p = fma32(p, t, c)
    return fma32((t * s).astype(np.float32), p, s)


def exp_nonpos_table(x: np.ndarray, coeffs, table, magic) -> np.ndarray:
    """sg_exp_nonpos of a table variant (N = len(table) entries), in float32 as vmath.h.j2 does it."""
    log2e = np.float32(float.fromhex("0x1.715476p+0"))
    hi, lo = np.float32(float.fromhex("-0x1.62E43p-1")), np.float32(float.fromhex("0x1.05C61p-29"))
    shift = 23 - (len(table).bit_length() - 1)
    x = np.maximum(np.float32(-88.0), x)
    kf = fma32(x, log2e, np.float32(magic))
    kb = kf.view(np.uint32)
    tj = np.asarray(table, np.float32)[kb & (len(table) - 1)]
    s = ((kb & np.uint32(~(len(table) - 1) & 0xFFFFFFFF)) << np.uint32(shift)).astype(np.uint32).view(np.float32)
    kq = (kf - np.float32(magic)).astype(np.float32)
    r = fma32(kq, lo, fma32(kq, hi, x))
    p = np.full_like(r, coeffs[0])
    for c in coeffs[1:]:
        p = fma32(p, r, c)
    # T (1 + r p) first, then the exact scaling by 2^n: no subnormal intermediate near FLT_MIN
    return (fma32((tj * r).astype(np.float32), p, tj) * s).astype(np.float32)


def table_magic(entries: int) -> float:
    """1.5 * 2^(23 - log2 N) + 127: fma(x, log2e, magic) rounds x log2e to a multiple of 1/N, and
    its low mantissa bits hold N (127 + x log2e) = 2^22 + 127 N + k."""
    return 1.5 * 2.0 ** (23 - (entries.bit_length() - 1)) + 127


def check(coeffs, consts: int, stride: int = 7, table=None) -> tuple[float, float, float]:
    """(max relative error, its x, max ulp) over x in [-87.33, 0] (normal results); ``table``:
    the 2^(j/N) entries of a table variant (``consts`` is then 2)."""
    lo_bits = np.float32(-87.33).view(np.uint32)
    bits = np.arange(0x80000001, int(lo_bits), stride, dtype=np.int64).astype(np.uint32)
    dense = [np.arange(np.float32(-b).view(np.uint32), np.float32(-2 * b).view(np.uint32), dtype=np.uint32)
             for b in (0.25, 2.0, 32.0, 64.0)]
    worst, at, ulp = 0.0, 0.0, 0.0
    for chunk in [bits[i:i + (1 << 24)] for i in range(0, len(bits), 1 << 24)] + dense:
        x = chunk.view(np.float32)
        y = (exp_nonpos(x, coeffs, consts) if table is None
             else exp_nonpos_table(x, coeffs, table, table_magic(len(table)))).astype(np.float64)
        e = np.exp(x.astype(np.float64))
        ok = e >= np.finfo(np.float32).tiny
        rel = np.abs(y - e)[ok] / e[ok]
        i = int(np.argmax(rel))
        if rel[i] > worst:
            worst, at = float(rel[i]), float(x[ok][i])
        u = np.abs(y - e)[ok] / np.exp2(np.floor(np.log2(e[ok])) - 23)
        ulp = max(ulp, float(u.max()))
    return worst, at, ulp


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="fit and check the exp variants")
    ap.add_argument("--stride", type=int, default=61, help="check every stride-th float32 bit pattern")
    ap.add_argument("--table", type=int, default=0, metavar="N",
                    help="also fit and check table variants of N entries (32), degrees 2 and 3")
    args = ap.parse_args(argv)
    stride = args.stride
    from softgen.numerics.constants import EXP_VARIANTS, P5
    fitted = {}
    for degree in (4, 5, 6):
        fitted[degree] = [np.float32(v) for v in fit(degree)[::-1]]
        print(f"degree {degree}: {', '.join(float(v).hex() for v in fitted[degree])}  (c{degree} .. c1, float32)")
    fitted[5] = [np.float32(float(c)) for c in P5]     # the shipped p5 (Dukhan & Ablavatski)
    for degree in (4, 5, 6):
        for consts in (1, 2):
            name = f"p{degree}c{consts}"
            rel, at, ulp = check(fitted[degree], consts, stride=stride)
            print(f"{name}: max rel {rel:.4e} at x = {at:.8g}, {ulp:.3f} ulp; "
                  f"{'within' if rel <= SPEC else 'BEYOND'} the contract ({SPEC:g})"
                  + ("; shipped (EXP_VARIANTS)" if name in EXP_VARIANTS else ""))
    if args.table:
        n = args.table
        table = [np.float32(2.0 ** (j / n)) for j in range(n)]
        for degree in (2, 3):
            coeffs = [np.float32(v) for v in fit(degree, half=LN2 / (2 * n) * 1.02)[::-1]]
            name = f"t{n}" + ("" if degree == 2 else f"p{degree}")
            rel, at, ulp = check(coeffs, 2, stride=stride, table=table)
            print(f"{name}: degree {degree} ({', '.join(float(v).hex() for v in coeffs)}), table of {n}: "
                  f"max rel {rel:.4e} at x = {at:.8g}, {ulp:.3f} ulp; "
                  f"{'within' if rel <= SPEC else 'BEYOND'} the contract ({SPEC:g})"
                  + ("; shipped (EXP_VARIANTS)" if name in EXP_VARIANTS else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
