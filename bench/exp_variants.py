"""Prototype forms of the lazymax exp sweep (avx512, t32), timed against the generated kernel (issue 13).

The generated three-pass-reload kernel with schedule lazymax (the tuned single-row kernel from 16K
on) is rewritten in source, one rewrite per variant, and each is included into a C harness that
times its row function on one row (TSC reference cycles per element, x and y warm; the minimum
over 400 blocks of a few calls, which filters other jobs' preemption on a shared machine), the
variants interleaved round after round. ``--check`` also prints each variant's max relative error
against the float64 softmax (x in [-10, 10] with a -inf every 997 elements; its y must be +0).

    python bench/exp_variants.py [--sizes 64K,256K,1M] [--rounds 5] [--variants base,fold,...] [--check]
    python bench/exp_variants.py --pipes      # Zen 4: which 512-bit ops share pipes with the FMAs

Variants (source rewrites of the generated kernel; only "fold" is what the generator emits):
  fold      the generated kernel: sweep 1 by sg_exp_fold (x - r folded into the range reduction
            against R = q ln2, 2^n added to an int-scaled table entry; vmath.h.j2)
  shifted   the same kernel with lz_fold = 0: sg_exp_shifted(x - r) (clamp, fma, sub, vpermi2ps,
            2 fma, fma, mul, fma, vscalefps; the subtraction before it): the form before the fold
  noclamp   shifted without the clamp at -104: NOT valid in general (the clamp keeps -inf and huge
            negatives finite through the reduction; this Zen 4 gives vscalefps(NaN, -inf) = +0): its cost only
  intscale  shifted with the int-scaled table instead of vscalefps (clamp at -127 ln2: +0 there)
  rev       fold with the scale sweep run from each segment's end (the part still in L1/L2 first)
"""
from __future__ import annotations

import argparse
import os
import sys
import subprocess
import tempfile

import softgen
from softgen.benchmark import parse_size
from softgen.runtime import compiler_for, host_arch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RDTSC_BEST_OF  # noqa: E402

HARNESS = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <x86intrin.h>
%(kernel)s
int main(int argc, char **argv) {
    for (int j = 0; j < 32; j++) {   /* bits(T[j]) - (127 << 23) - (j << 18): the int-scaled table */
        int32_t b; memcpy(&b, &sg_exp_tab[j], 4); sg_tabq[j] = b - (127 << 23) - (j << 18);
    }
    size_t n = strtoull(argv[1], 0, 10);
    int reps = atoi(argv[2]), check = argc > 3;
    float *x = aligned_alloc(64, (n * 4 + 63) / 64 * 64), *y = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) %% 20000) * 1e-3f - 10.0f;
    if (check) for (size_t i = 3; i < n; i += 997) x[i] = -INFINITY;
    %(row)s(x, y, n);
    if (check) {
        double m = -INFINITY, s = 0, err = 0;
        int bad = 0;
        for (size_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
        for (size_t i = 0; i < n; i++) s += exp((double)x[i] - m);
        for (size_t i = 0; i < n; i++) {
            double r = exp((double)x[i] - m) / s;
            if (r == 0) bad += y[i] != 0.0f;
            else if (fabs(y[i] - r) / r > err) err = fabs(y[i] - r) / r;
        }
        printf("%%.3e %%d\n", err, bad);
        return 0;
    }
%(timing)s    return 0;
}
"""

TABLE = "static int32_t sg_tabq[32];\n"
INTSCALED = r"""
/* T[j] 2^n from the int-scaled table: exponent bits 127 + n (n >= -127; -127 with j = 0 is +0) */
static inline VEC sg_tscaled(VEC kf) {
    IVEC tq = _mm512_permutex2var_epi32(_mm512_loadu_si512(sg_tabq), V_BITS(kf), _mm512_loadu_si512(sg_tabq + 16));
    return V_FROMBITS(V_IADD(tq, V_SHL(V_BITS(kf), 18)));
}
static inline VEC sg_exp_intscaled(VEC x) {
    x = V_MAX(V_SET1(-0x1.601eb8p+6f), x);
    VEC kf = V_FMA(x, V_SET1(SG_LOG2E), V_SET1(SG_TMAGIC));
    VEC ts = sg_tscaled(kf), r = sg_reduce_ln2(x, V_SUB(kf, V_SET1(SG_TMAGIC)));
    return V_FMA(V_MUL(ts, r), sg_tpoly(r), ts);
}
"""


def exp_body(src: str) -> str:
    i = src.index("static inline VEC sg_exp_shifted(VEC x) {")
    return src[i:src.index("\n}\n", i) + 3]


def shifted(src: str) -> str:
    assert src.count("lz_fold = fabsf(lz_r) <= SG_FOLD_MAX;") >= 1, "the kernel has no folded exp"
    return src.replace("lz_fold = fabsf(lz_r) <= SG_FOLD_MAX;", "lz_fold = 0;")


def noclamp(src: str) -> str:
    src = shifted(src)
    body = exp_body(src)
    return src.replace(body, body.replace("    x = V_MAX(V_SET1(SG_EXP_MIN_SCALED), x);", ""))


def intscale(src: str) -> str:
    src = shifted(src)
    i = src.index("static inline VEC sg_exp_shifted(VEC x) {")
    return (src[:i] + INTSCALED + src[i:]).replace("sg_exp_shifted(V_SUB(", "sg_exp_intscaled(V_SUB(")


def rev(src: str, row: str) -> str:
    """The scale sweep per segment from its end: the single vectors and the tail first, then the
    64-element steps downwards."""
    start = src.index(f"static void {row}(")
    a = src.index("/* sweep 2:", start)
    b = src.index("\n    }\n", a)
    sw = src[a:b].replace("for (int lz_k = -1; lz_k < lz_cnt; lz_k++) {", "for (int lz_k = lz_cnt - 1; lz_k >= -1; lz_k--) {")
    m0 = sw.index("            size_t i = lo;\n")
    m1 = sw.index("            for (; i + SG_LANES <= hi; i += SG_LANES) {")
    k = sw.rindex("        }")
    main = sw[m0:m1].replace("            size_t i = lo;\n            for (; i + 64 <= hi; i += 64) {",
                             "            for (size_t i = top; i > lo; ) {\n                i -= 64;")
    sw = (sw[:m0] + "            const size_t top = lo + (hi - lo) / 64 * 64;\n            size_t i = top;\n"
          + sw[m1:k] + main + sw[k:])
    return src[:a] + sw + src[b:]


VARIANTS = {
    "fold": lambda s, row: s,
    "shifted": lambda s, row: shifted(s),
    "noclamp": lambda s, row: noclamp(s),
    "intscale": lambda s, row: intscale(s),
    "rev": rev,
}

PIPES = r"""
#include <immintrin.h>
#include <stdio.h>
#include <x86intrin.h>
typedef __m512 V;
volatile float sink;
/* every chain opaque each iteration: no folding, no hoisting */
#define OPAQUE __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7)); \
    __asm__ volatile("" : "+v"(b0), "+v"(b1), "+v"(b2), "+v"(b3), "+v"(b4), "+v"(b5), "+v"(b6), "+v"(b7));
#define F8(OP, x) x##0 = OP(x##0); x##1 = OP(x##1); x##2 = OP(x##2); x##3 = OP(x##3); \
                  x##4 = OP(x##4); x##5 = OP(x##5); x##6 = OP(x##6); x##7 = OP(x##7);
#define LOOP(name, body) { \
    V k = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-3f); __m512i idx = _mm512_set1_epi32(3); \
    V a0 = k, a1 = k, a2 = k, a3 = k, a4 = k, a5 = k, a6 = k, a7 = k; \
    V b0 = c, b1 = c, b2 = c, b3 = c, b4 = c, b5 = c, b6 = c, b7 = c; \
    unsigned long long best = ~0ull; \
    for (int r = 0; r < 50; r++) { \
        unsigned long long t0 = __rdtsc(); \
        for (int it = 0; it < 20000; it++) { body OPAQUE } \
        unsigned long long t = __rdtsc() - t0; if (t < best) best = t; } \
    V s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)), _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))); \
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)), _mm512_add_ps(_mm512_add_ps(b4, b5), _mm512_add_ps(b6, b7)))); \
    sink = _mm512_reduce_add_ps(s); \
    printf("%-22s %6.2f ref-cycles per 8\n", name, (double)best / 20000); }
#define FMA(v) _mm512_fmadd_ps(v, k, c)
#define MUL(v) _mm512_mul_ps(v, k)
#define ADD(v) _mm512_add_ps(v, c)
#define MAX(v) _mm512_max_ps(v, c)
#define SCALEF(v) _mm512_scalef_ps(v, c)
#define PERM(v) _mm512_permutex2var_ps(v, idx, k)
#define IADD(v) _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(v), idx))
#define SHL(v) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(v), 1))
int main(void) {
    LOOP("fma", F8(FMA, a)) LOOP("add", F8(ADD, a)) LOOP("max", F8(MAX, a)) LOOP("scalef", F8(SCALEF, a))
    LOOP("vpermt2ps", F8(PERM, a)) LOOP("vpaddd", F8(IADD, a)) LOOP("vpslld", F8(SHL, a))
    LOOP("fma + mul", F8(FMA, a) F8(MUL, b)) LOOP("fma + add", F8(FMA, a) F8(ADD, b))
    LOOP("fma + max", F8(FMA, a) F8(MAX, b)) LOOP("fma + scalef", F8(FMA, a) F8(SCALEF, b))
    LOOP("fma + vpermt2ps", F8(FMA, a) F8(PERM, b)) LOOP("fma + vpaddd", F8(FMA, a) F8(IADD, b))
    LOOP("fma + vpslld", F8(FMA, a) F8(SHL, b)) LOOP("add + max", F8(ADD, a) F8(MAX, b))
    LOOP("add + scalef", F8(ADD, a) F8(SCALEF, b)) LOOP("add + vpermt2ps", F8(ADD, a) F8(PERM, b))
    LOOP("add + vpaddd", F8(ADD, a) F8(IADD, b)) LOOP("add + vpslld", F8(ADD, a) F8(SHL, b))
    return 0;
}
"""


def cc(target, path: str) -> None:
    subprocess.run([*compiler_for(target), "-O2", "-std=c11", "-D_GNU_SOURCE", "-ffp-contract=off", "-w",
                    *target.cflags, path + ".c", "-o", path, "-lm", "-lpthread"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64K,256K,1M")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--check", action="store_true", help="max relative error vs float64, -inf entries +0")
    ap.add_argument("--pipes", action="store_true", help="the 512-bit op pairs' throughput instead")
    a = ap.parse_args()
    if host_arch() != "x86_64":
        ap.error("the harness times with the x86 TSC (__rdtsc): x86-64 hosts only")
    k = softgen.compile("softmax", target="avx512", algorithm="three-pass-reload",
                        schedule={"lazymax": True, "unroll": 4, "accumulators": 2})
    with tempfile.TemporaryDirectory() as d:
        if a.pipes:
            path = os.path.join(d, "pipes")
            with open(path + ".c", "w") as f:
                f.write(PIPES)
            cc(k.target, path)
            print("8 independent 512-bit ops per line (two kinds: 8 of each); 1 ref-cycle = turbo/base core cycles")
            print(subprocess.run([path], capture_output=True, text=True, check=True).stdout, end="")
            return
        row = f"{k.name}__row"
        names = a.variants.split(",")
        exes = {}
        for v in names:
            src = VARIANTS[v](TABLE + k.source, row)
            path = os.path.join(d, v.replace("+", "_"))
            with open(path + ".c", "w") as f:
                f.write(HARNESS % {"kernel": src, "row": row, "timing": RDTSC_BEST_OF % {"row": row, "rounds": 400}})
            cc(k.target, path)
            exes[v] = path
        sizes = [parse_size(s)[1] for s in a.sizes.split(",")]
        if a.check:
            for v in names:
                out = subprocess.run([exes[v], "65536", "1", "check"], capture_output=True, text=True, check=True)
                err, bad = out.stdout.split()
                print(f"{v:<9} max rel error {err} (x in [-10, 10], n = 64K); -inf entries not +0: {bad}")
        best = {(n, v): float("inf") for n in sizes for v in names}
        for _ in range(a.rounds):
            for n in sizes:
                for v in names:
                    out = subprocess.run([exes[v], str(n), str(max(1, 2 ** 20 // n))], capture_output=True,
                                         text=True, check=True)
                    best[n, v] = min(best[n, v], float(out.stdout))
        print(f"{'n':>8}  " + "  ".join(f"{v:>9}" for v in names) + f"   (ref-cycles/element, min; {names[0]}'s time over each)")
        for n in sizes:
            b = best[n, names[0]]
            print(f"{n:>8}  " + "  ".join(f"{best[n, v]:>9.4f}" for v in names) + "   "
                  + " ".join(f"{b / best[n, v]:.3f}x" for v in names[1:]))


if __name__ == "__main__":
    main()
