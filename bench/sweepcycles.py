"""Cycles per element of each sweep of a generated row kernel, timed in C (no Python call).

The generated ``kernel.c`` is included into a small C harness that times its row function
(``<name>__row``) with the TSC (constant-rate reference cycles, not core clocks) on one row of n
elements, x and y warm. Per sweep: the harness is built once per prefix of the plan (sweeps 0..k,
the later sweeps' blocks cut out of the source), and sweep k's cost is the prefix's time minus the
previous prefix's (in cache the sweeps are independent loops, so the differences are additive).
The prefixes are timed interleaved, round after round; medians and minima over rounds.

    python bench/sweepcycles.py [--targets avx512 avx2] [--sizes 16K,64K,1M] [--algorithms three-pass-reload]
                                [--rounds 15] [--op softmax] [--exp p5c2,t32]

``--exp``: exp variants (schedule exp, numerics.constants.EXP_VARIANTS) compared in one run: every
variant's prefixes are timed in the same rounds (interleaved), so their ratios are comparable.
``p5`` (or ``p5c2``) is schedule exp="p5c2", p5 for every exp (avx512's exps of x - max x are t32
by default, the target file's ``shifted_exp``): ``--exp p5,t32`` compares the two.

A sweep whose result is not a ``float sK`` scalar (the online pair) may be dropped by the compiler
in its prefix build: then only the total is meaningful. x86-64 only (the TSC). Noisy on a shared machine: compare within one run. Reference cycles (TSC) are at the base clock;
turbo makes core cycles a constant factor larger.
"""
from __future__ import annotations

import argparse
import os
import sys
import re
import statistics
import subprocess
import tempfile

import softgen
from softgen.benchmark import parse_size, size_label
from softgen.runtime import compiler_for, host_arch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RDTSC_BEST_OF  # noqa: E402

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <x86intrin.h>
%(kernel)s
int main(int argc, char **argv) {
    size_t n = strtoull(argv[1], 0, 10);
    int reps = atoi(argv[2]);
    float *x = aligned_alloc(64, (n * 4 + 63) / 64 * 64), *y = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) %% 20000) * 1e-3f - 10.0f;
    %(row)s(x, y, n);
%(timing)s    return 0;
}
"""


def prefix_source(src: str, row: str, keep: int) -> str:
    """The kernel source with the row function's sweeps after ``keep`` cut out (their blocks,
    which start at ``/* sweep k:`` and are the row function's top-level braces)."""
    start = src.index(f"static void {row}(")
    end = src.index("\n}\n", start)
    body = src[start:end]
    out, cut = [], False
    for line in body.split("\n"):
        m = re.match(r"    /\* sweep (\d+):", line)
        if m:
            cut = int(m.group(1)) >= keep
        if cut:
            cut = line != "    }"
            continue
        out.append(line)
    body = "\n".join(out)
    # cut-out sweeps leave their scalars unset: give every declared scalar a value; volatile,
    # so that a kept sweep whose result no later sweep reads is not removed as dead code
    body = re.sub(r"    float (s\d+);", r"    volatile float \1 = 1.0f;", body)
    return src[:start] + body + src[end:]


def build(k, keep: int, d: str) -> str:
    row = f"{k.name}__row"
    src = prefix_source(k.source, row, keep)
    path = os.path.join(d, f"{k.name}_{keep}")
    with open(path + ".c", "w") as f:
        f.write(HARNESS % {"kernel": src, "row": row, "timing": RDTSC_BEST_OF % {"row": row, "rounds": 5}})
    subprocess.run([*compiler_for(k.target), "-O3", "-w", *k.target.cflags, path + ".c", "-o", path, "-lm", "-lpthread"],
                   check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="softmax")
    ap.add_argument("--targets", nargs="+", default=["avx512", "avx2"])
    ap.add_argument("--algorithms", nargs="+", default=["three-pass-reload"])
    ap.add_argument("--sizes", default="16K,64K,1M")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--schedule", action="append", default=[], metavar="KNOB=VALUE",
                    help="schedule knobs (repeatable), e.g. --schedule accumulators=4")
    ap.add_argument("--exp", default="", help="exp variants to compare interleaved, e.g. p5,t32 (p5: the target without its shifted_exp)")
    a = ap.parse_args()
    if host_arch() != "x86_64":
        ap.error("the harness times with the x86 TSC (__rdtsc): x86-64 hosts only")
    sizes = [parse_size(s)[1] for s in a.sizes.split(",")]
    schedule = {kv.split("=")[0]: int(kv.split("=")[1]) if kv.split("=")[1].isdigit() else kv.split("=")[1]
                for kv in a.schedule}
    variants = a.exp.split(",") if a.exp else [schedule.get("exp")]
    with tempfile.TemporaryDirectory() as d:
        for t in a.targets:
            for alg in a.algorithms:
                builds = []
                for xv in variants:
                    sch = {**schedule, **({"exp": "p5c2" if xv == "p5" else xv} if xv else {})}
                    k = softgen.compile(a.op, target=t, algorithm=alg, schedule=sch or None)
                    body = k.source.split(f"static void {k.name}__row(")[1].split("\n}\n")[0]
                    nsweeps = len(re.findall(r"\n    /\* sweep \d+:", body))
                    builds.append((k, [build(k, keep, d) for keep in range(1, nsweeps + 1)]))
                for n in sizes:
                    reps = max(3, int(2e8 // (n * 20)))
                    runs = [[[] for _ in exes] for _, exes in builds]
                    for _ in range(a.rounds):
                        for (_, exes), rv in zip(builds, runs):
                            for j, exe in enumerate(exes):
                                out = subprocess.run([exe, str(n), str(reps)], capture_output=True, text=True,
                                                     check=True)
                                rv[j].append(float(out.stdout))
                    for (k, _), rv in zip(builds, runs):
                        med = [statistics.median(r) for r in rv]
                        mn = [min(r) for r in rv]
                        per = [med[0]] + [med[j] - med[j - 1] for j in range(1, len(med))]
                        per_min = [mn[0]] + [mn[j] - mn[j - 1] for j in range(1, len(mn))]
                        print(f"{a.op} {alg:<18} {t:<7} {k.name.split('__')[-1]:<12} n={size_label(1, n):>5}  "
                              "ref-cycles/element per sweep (median): "
                              + " + ".join(f"{v:.3f}" for v in per) + f" = {med[-1]:.3f}"
                              + "   (min: " + " + ".join(f"{v:.3f}" for v in per_min) + f" = {mn[-1]:.3f})",
                              flush=True)

if __name__ == "__main__":
    main()
