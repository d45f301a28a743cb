"""Reference (TSC) cycles per element of whole generated row functions, schedule variants against
each other, timed in C (no Python call; one row of n, x and y warm, one thread) and interleaved
round by round: minima and medians over rounds and each variant's speed-up over the first.

    python bench/rowcycles.py --target avx512 --sizes 4K,16K,64K,256K,1M,4M --variants "",lazymax=1 --rounds 9

A variant is a schedule (``knob=value`` joined by ``+``; "" the target's default), e.g. ``lazymax=1``
or ``lazymax=1+exp=p5c2``. Unlike bench/sweepcycles.py (per sweep, by prefix builds) this times the
row function as a whole: a schedule such as lazymax, whose sweeps share state, cannot be cut
into prefixes. x86-64 only (the TSC); on a shared machine compare within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile

from common import RDTSC_BEST_OF
from sweepcycles import HARNESS

import softgen
from softgen.benchmark import parse_size, size_label
from softgen.runtime import compiler_for, host_arch


def schedule_of(spec: str) -> dict:
    out = {}
    for part in (p for p in spec.split("+") if p):
        key, _, val = part.partition("=")
        out[key] = int(val) if val.isdigit() else val
    return out


def build(k, d: str, tag: str) -> str:
    path = os.path.join(d, tag)
    with open(path + ".c", "w") as f:
        row = f"{k.name}__row"
        f.write(HARNESS % {"kernel": k.source, "row": row, "timing": RDTSC_BEST_OF % {"row": row, "rounds": 5}})
    subprocess.run([*compiler_for(k.target), "-O2", "-w", *k.target.cflags, path + ".c", "-o", path, "-lm",
                    "-lpthread"], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="softmax")
    ap.add_argument("--target", default="avx512")
    ap.add_argument("--algorithm", default="three-pass-reload")
    ap.add_argument("--sizes", default="4K,64K,1M")
    ap.add_argument("--variants", default=",lazymax=1", help='schedules, comma-separated ("" the default)')
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    if host_arch() != "x86_64":
        ap.error("the harness times with the x86 TSC (__rdtsc): x86-64 hosts only")
    specs = a.variants.split(",")
    print(f"# {a.op} {a.algorithm} {a.target}: whole row function, ref-cycles/element, min (median) of "
          f"{a.rounds} interleaved rounds; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        exes = [build(softgen.compile(a.op, algorithm=a.algorithm, target=a.target, schedule=schedule_of(s) or None),
                      d, f"v{j}") for j, s in enumerate(specs)]
        for n in (parse_size(s)[1] for s in a.sizes.split(",")):
            reps = max(3, int(2e8 // (n * 20)))
            runs = [[] for _ in exes]
            for _ in range(a.rounds):
                for exe, r in zip(exes, runs):
                    r.append(float(subprocess.run([exe, str(n), str(reps)], capture_output=True, text=True,
                                                  check=True).stdout))
            mins, meds = [min(r) for r in runs], [statistics.median(r) for r in runs]
            print(f"n={size_label(1, n):>5}  " + "  ".join(
                f"{s or 'default'} {mn:.3f} ({md:.3f})" + (f" {mins[0] / mn:.3f}x" if j else "")
                for j, (s, mn, md) in enumerate(zip(specs, mins, meds))), flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
