"""Batches of short rows, timed in C (issue 13): the entry point ``<name>_mt(x, y, rows, n, ld, ld, 1)``
of softmax kernels with schedule rows = R (R rows at once) or other schedule variants on one
thread, x and y warm, by the TSC (reference cycles; no Python call). Each (kernel, shape) is a
harness binary; the binaries run interleaved round after round; per shape the median and minimum
over rounds of reference cycles per row and the speed-up of each variant over the first (within
one run only: the machine may be shared).

    python bench/shortrows.py [--target avx512] [--algorithms three-pass-reload online]
                              [--shapes 8192x128,4096x512,64x32768] [--rows 1,2,4] [--rounds 15]
                              [--pad 0] [--schedule prefetch=1024]
    python bench/shortrows.py --variants r1,r2,lz,lz+r2,pf512,lz+pf512   # schedule variants instead of --rows

A variant is ``r<R>`` (rows=R), ``lz`` (lazymax), ``pf<N>`` (prefetch=N), ``<knob>=<value>``, or
several joined by ``+``. ``--pad``: floats between rows (ld = n + pad), e.g. 16 to move rows off a
4 KiB stride. x86-64 only (the TSC).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile

import softgen
from softgen.benchmark import parse_shapes
from softgen.runtime import compiler_for, host_arch

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>
%(kernel)s
int main(int argc, char **argv) {
    size_t rows = strtoull(argv[1], 0, 10), n = strtoull(argv[2], 0, 10), ld = n + strtoull(argv[3], 0, 10);
    int reps = atoi(argv[4]);
    float *x = aligned_alloc(64, (rows * ld * 4 + 63) / 64 * 64), *y = aligned_alloc(64, (rows * ld * 4 + 63) / 64 * 64);
    for (size_t i = 0; i < rows * ld; i++) x[i] = (float)((i * 2654435761u) %% 20000) * 1e-3f - 10.0f;
    %(entry)s(x, y, rows, n, ld, ld, 1);
    unsigned long long best = ~0ull;
    for (int r = 0; r < 5; r++) {
        unsigned long long t0 = __rdtsc();
        for (int i = 0; i < reps; i++) { %(entry)s(x, y, rows, n, ld, ld, 1); __asm__ volatile("" ::: "memory"); }
        unsigned long long t = __rdtsc() - t0;
        if (t < best) best = t;
    }
    printf("%%.2f\n", (double)best / reps / rows);
    return 0;
}
"""


def build(k, d: str) -> str:
    path = os.path.join(d, k.name)
    with open(path + ".c", "w") as f:
        f.write(HARNESS % {"kernel": k.source, "entry": f"{k.name}_mt"})
    subprocess.run([*compiler_for(k.target), "-O3", "-w", *k.target.cflags, path + ".c", "-o", path, "-lm",
                    "-lpthread"], check=True)
    return path


def variant(spec: str) -> dict:
    """The schedule knobs of a variant spec (``r2+lz+pf512``, ``unroll=8``)."""
    out = {}
    for part in spec.split("+"):
        if "=" in part:
            k, v = part.split("=")
            out[k] = int(v) if v.isdigit() else v
        elif part == "lz":
            out["lazymax"] = True
        elif part[:1] == "r" and part[1:].isdigit():
            out["rows"] = int(part[1:])
        elif part[:2] == "pf" and part[2:].isdigit():
            out["prefetch"] = int(part[2:])
        else:
            raise SystemExit(f"shortrows: unknown variant part {part!r} (r<R>, lz, pf<N>, knob=value)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="avx512")
    ap.add_argument("--algorithms", nargs="+", default=["three-pass-reload"])
    ap.add_argument("--shapes", default="8192x128,4096x512,64x32768")
    ap.add_argument("--rows", default="1,2,4")
    ap.add_argument("--variants", help="schedule variants instead of --rows (r<R>, lz, pf<N>, knob=value, joined by +)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--schedule", action="append", default=[], metavar="KNOB=VALUE",
                    help="other schedule knobs for every R (repeatable), e.g. --schedule prefetch=1024")
    a = ap.parse_args()
    if host_arch() != "x86_64":
        ap.error("the harness times with the x86 TSC (__rdtsc): x86-64 hosts only")
    extra = {kv.split("=")[0]: int(kv.split("=")[1]) if kv.split("=")[1].isdigit() else kv.split("=")[1]
             for kv in a.schedule}
    specs = a.variants.split(",") if a.variants else [f"r{r}" for r in a.rows.split(",")]
    rs = {v: {**extra, **variant(v)} for v in specs}
    print(f"# softmax on {a.target} {extra or ''}, 1 thread, ld = n + {a.pad}; reference cycles per row (TSC), median and min "
          f"over {a.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        for alg in a.algorithms:
            exes = {r: build(softgen.compile("softmax", target=a.target, algorithm=alg, schedule=sch), d)
                    for r, sch in rs.items()}
            for rows, n in parse_shapes(a.shapes):
                reps = max(3, int(5e7 // (rows * n)))
                got = {r: [] for r in rs}
                for _ in range(a.rounds):
                    for r, exe in exes.items():
                        out = subprocess.run([exe, str(rows), str(n), str(a.pad), str(reps)], capture_output=True,
                                             text=True, check=True)
                        got[r].append(float(out.stdout))
                for stat, f in (("median", statistics.median), ("min", min)):
                    v = {r: f(got[r]) for r in rs}
                    first = specs[0]
                    print(f"{alg:<18} {rows}x{n:<6} {stat:<6} " + "  ".join(f"{r} {v[r]:8.1f}" for r in rs)
                          + "  " + "  ".join(f"{first}/{r} {v[first] / v[r]:.3f}x" for r in specs[1:]), flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
