"""Cycles per part of the streaming attention kernel (issue 14): the K transpose, the score tile
(S = s Q K^T), the mask/causal/tail pass, the normalizer's block (online softmax or StableMax; the
single-block mode's exact softmax),
P V, and the per-query-block start/end, against the FMA bound of each GEMM.

    python bench/attention_parts.py [--l 1024] [--bh 8] [--d 64] [--causal] [--normalizer softmax]
                                    [--reps 5] [--br 16 --bc 64 --wide 1024]

How: the kernel's C (``Kernel.sources()``) is compiled standalone with its ``SG_MARK`` part
markers (empty in shipped builds) defined as time stamps (rdtsc on x86, else clock_gettime): the
time from one marker to the next is charged to the first one's part; each part's time is its
minimum over --reps calls (on a loaded machine a preemption lands in some part of each call), the
total the fastest call's. One thread, no ctypes (a ``main`` calls the entry). The markers cost ~30 cycles each, a few per 16 x 64 block of ~8K
cycles: the parts sum to a little more than the plain kernel. "FMA bound": the part's
multiply-adds at the one-core FMA peak of bench/fmapeak.py (score: Lq Lk d, P V: Lq Lk dv, the
visible half when causal).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fmapeak import peak as fma_peak, supported as fma_supported  # noqa: E402

import softgen  # noqa: E402
from softgen.runtime import BASE_CFLAGS  # noqa: E402

PROFILE = r"""
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline unsigned long long sgp_now(void) { return __rdtsc(); }
#else
static inline unsigned long long sgp_now(void)
{ struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec * 1000000000ull + ts.tv_nsec; }
#endif
enum { SGP_MAX = 16 };
static const char *sgp_name[SGP_MAX];
static unsigned long long sgp_ticks[SGP_MAX], sgp_t0;
static int sgp_n, sgp_cur = -1;
/* charge the time since the last marker to its part; parts are keyed by the literal's address */
static inline void sgp_mark(const char *what)
{
    const unsigned long long t = sgp_now();
    if (sgp_cur >= 0)
        sgp_ticks[sgp_cur] += t - sgp_t0;
    int i = 0;
    while (i < sgp_n && sgp_name[i] != what)
        i++;
    if (i == sgp_n && sgp_n < SGP_MAX)
        sgp_name[sgp_n++] = what;
    sgp_cur = i < SGP_MAX ? i : -1;
    sgp_t0 = sgp_now();
}
"""

MAIN = r"""
#include <stdio.h>
static unsigned long long sgp_wall(void)
{ struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec * 1000000000ull + ts.tv_nsec; }
int main(void)
{
    const size_t bh = %(bh)d, lq = %(lq)d, lk = %(lk)d, d = %(d)d, dv = %(d)d;
    float *q = malloc(sizeof(float) * bh * lq * d), *k = malloc(sizeof(float) * bh * lk * d);
    float *v = malloc(sizeof(float) * bh * lk * dv), *o = malloc(sizeof(float) * bh * lq * dv);
    unsigned s = 1;
    for (size_t i = 0; i < bh * lq * d; i++) q[i] = ((s = s * 1103515245u + 12345u) >> 8) * (2.0f / 16777216.0f) - 1.0f;
    for (size_t i = 0; i < bh * lk * d; i++) k[i] = ((s = s * 1103515245u + 12345u) >> 8) * (2.0f / 16777216.0f) - 1.0f;
    for (size_t i = 0; i < bh * lk * dv; i++) v[i] = ((s = s * 1103515245u + 12345u) >> 8) * (2.0f / 16777216.0f) - 1.0f;
    unsigned long long best = ~0ull, bestw = 0, bt[SGP_MAX] = {0};
    for (int rep = 0; rep < %(reps)d; rep++) {
        for (int i = 0; i < SGP_MAX; i++) sgp_ticks[i] = 0;
        sgp_cur = -1;
        const unsigned long long w0 = sgp_wall(), t0 = sgp_now();
        int rc = %(fn)s_mt(q, k, v, o, 1, bh, bh, lq, lk, d, dv, 0, lq * d, d, 0, lk * d, d, 0, lk * dv, dv,
                           0, lq * dv, dv, NULL, NULL, 0, 0, 0, 1);
        sgp_mark("(call return)");
        const unsigned long long t1 = sgp_now(), w1 = sgp_wall();
        if (rc) { fprintf(stderr, "error %%d\n", rc); return 1; }
        if (t1 - t0 < best) { best = t1 - t0; bestw = w1 - w0; }
        for (int i = 0; i < SGP_MAX; i++)   /* each part's fastest call: the least disturbed */
            if (rep == 0 || sgp_ticks[i] < bt[i]) bt[i] = sgp_ticks[i];
    }
    printf("total %%llu %%llu\n", best, bestw);
    for (int i = 0; i < sgp_n; i++)
        printf("part %%llu %%s\n", bt[i], sgp_name[i]);
    return 0;
}
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--l", type=int, default=1024, help="Lq = Lk")
    ap.add_argument("--lq", type=int, help="Lq (default --l; 1: decoding)")
    ap.add_argument("--bh", type=int, default=8)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--normalizer", default="softmax")
    ap.add_argument("--br", type=int, help="query rows per block (default: the target's)")
    ap.add_argument("--bc", type=int, help="keys per block (default: the target's)")
    ap.add_argument("--wide", type=int, help="the single-block mode's most keys (default: the target's; 0 off)")
    ap.add_argument("--reps", type=int, default=9, help="calls; each part's fastest is shown")
    a = ap.parse_args(argv)
    lq, lk = a.lq or a.l, a.l
    sched = {k: getattr(a, k) for k in ("br", "bc", "wide") if getattr(a, k) is not None}
    kern = softgen.compile("attention", head_dim=a.d, causal=a.causal, normalizer=a.normalizer,
                           **({"schedule": sched} if sched else {}))
    src = kern.sources()["kernel.c"]
    marker = '#define SG_MARK(what) __asm__ volatile("/* softgen-mark " what " */")'
    if marker not in src:
        raise SystemExit("the kernel's source has no SG_MARK definition to hook")
    src = src.replace(marker, PROFILE + "#define SG_MARK(what) sgp_mark(what)")
    src += MAIN % dict(bh=a.bh, lq=lq, lk=lk, d=a.d, reps=a.reps, fn=kern.name)
    cc = shutil.which("cc") or shutil.which("gcc")
    with tempfile.TemporaryDirectory(prefix="attparts-") as tmp:
        c, exe = os.path.join(tmp, "k.c"), os.path.join(tmp, "k")
        with open(c, "w") as f:
            f.write(src)
        flags = [f for f in BASE_CFLAGS if f not in ("-fPIC", "-fvisibility=hidden")]
        subprocess.run([cc, *flags, *kern.target.cflags, "-DSOFTGEN_MARK_LOOPS", "-o", exe, c, "-lm"], check=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout.split("\n")
    _, ticks, ns = out[0].split()
    ticks, ns = int(ticks), int(ns)
    per_ns = ticks / ns
    parts = [(int(x.split(" ", 2)[1]), x.split(" ", 2)[2]) for x in out[1:] if x.startswith("part")]
    isa = kern.target.name
    peak = fma_peak(isa, 0.5) if isa in ("avx512", "avx2") and fma_supported(isa) else None
    visible = sum(min(lk, i + 1 + lk - lq) for i in range(lq) if i + 1 + lk - lq > 0) if a.causal else lq * lk
    fmas = {"attention scores": visible * a.d * a.bh, "attention P V": visible * a.d * a.bh}
    ph = kern.program.phases[0]
    print(f"{a.normalizer} attention (br {ph.br}, bc {ph.bc}, wide {ph.wide}), {a.bh} heads, Lq {lq}, Lk {lk}, d {a.d}, causal {a.causal}, target {isa}, "
          f"1 thread; {ns / 1e6:.2f} ms, {4 * visible * a.d * a.bh / ns:.1f} GFLOP/s"
          + (f" ({4 * visible * a.d * a.bh / ns / peak:.0%} of the FMA peak {peak:.0f})" if peak else ""))
    print(f"{'part':<28} {'ms':>8} {'share':>6} {'FMA bound ms':>13} {'x bound':>8}")
    for t, name in parts:
        ms = t / per_ns / 1e6
        bound = 2 * fmas[name] / (peak * 1e9) * 1e3 if peak and name in fmas else None
        print(f"{name:<28} {ms:>8.3f} {t / ticks:>6.1%} " + (f"{bound:>13.3f} {ms / bound:>8.2f}" if bound else
                                                              f"{'-':>13} {'-':>8}"))


if __name__ == "__main__":
    main()
