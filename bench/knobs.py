"""The C backend's tuning knobs measured side by side (issue 13, slice "knobs"): non-temporal
stores and prefetch distance on rows beyond the last-level cache, exp variants in cache.
Variants combine knobs with ``+`` (``lazymax+exp=p5c2+unroll=8``).

Each size: the default schedule and each knob variant of one algorithm, interleaved (medians of
alternating rounds, IQR/median as noise; buffers rotated beyond the LLC for DRAM sizes; calls of
up to ``tune.C_LOOP_MAX`` elements back to back in C, as ``softgen tune`` times them); for
DRAM sizes the generated streaming-copy kernel's bandwidth (8 B/element, non-temporal stores)
gives the traffic bound of the algorithm's bytes per element (two-pass: 12 B/element).

    python bench/knobs.py --target avx512 --algorithm two-pass --sizes 16M,64M \\
        --variants stream,prefetch=256,prefetch=1024,stream+prefetch=1024
    python bench/knobs.py --target avx512 --algorithm three-pass-reload --sizes 64K --variants exp=p6c2
"""
from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (single-threaded BLAS before NumPy)
import numpy as np

import softgen
from softgen import machine, passes
from softgen.benchmark import CopyKernel, _buffers, _rotating, parse_shapes, parse_sizes, time_interleaved
from softgen.tune import timed_variant


def variant(text: str) -> dict:
    out = {}
    for part in filter(None, text.split("+")):
        k, _, v = part.partition("=")
        out[k] = True if not v else (int(v) if v.isdigit() else v)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--algorithm", default="two-pass")
    ap.add_argument("--sizes", default="16M,64M")
    ap.add_argument("--shapes", default="", help="batches ROWSxN too (8192x128,4096x512)")
    ap.add_argument("--variants", default="stream,prefetch=256,prefetch=1024,stream+prefetch=1024")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per size")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    caches = machine.caches()
    scheds = {"default": {}} | {v: variant(v) for v in a.variants.split(",")}
    kernels = {k: softgen.compile("softmax", algorithm=a.algorithm, target=a.target, schedule=s)
               for k, s in scheds.items()}
    bpe = passes.plan(passes.apply_algorithm(softgen.ops.build_program("softmax"), a.algorithm)) \
        .traffic()["bytes_per_element"]
    print(f"# softmax {a.algorithm} on {kernels['default'].target.name}, {machine.describe()}; "
          f"interleaved medians (noisy on a shared machine)")
    for rows, n in parse_sizes(a.sizes) + (parse_shapes(a.shapes) if a.shapes else []):
        dram = caches.level_of(8 * rows * n) == "DRAM"
        pairs = max(1, -(-2 * caches.L3 // (8 * rows * n))) if dram else 1
        bufs = _buffers(rng, rows, n, pairs)
        # as softgen tune times them (tune.timed_variant): short rows in C (tune.CLoop), no Python call per row
        variants = {k: timed_variant(kk, bufs, 1) for k, kk in kernels.items()}
        copy = None
        if dram:
            ck = CopyKernel(a.target)
            copy = "copy (nt)" if ck.streams else "copy"
            variants[copy] = _rotating([("c(x, y, True)", {"c": ck, "x": x, "y": y}) for x, y in bufs])
        t = time_interleaved(variants, budget=a.budget, max_rounds=40)
        base = t["default"].median
        print(f"n = {n}:" if rows == 1 else f"{rows} x {n}:")
        for k, tm in t.items():
            ns = tm.median / (rows * n) * 1e9
            line = f"  {k:<28} {ns:7.3f} ns/el  noise {100 * tm.spread:4.1f}%  {base / tm.median:5.3f}x default"
            if copy and k != copy:
                bw = 8 * rows * n / t[copy].median       # bytes/s of the copy
                line += f"  {100 * (bpe * rows * n / bw) / tm.median:5.1f}% of the {bpe} B/el bound"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
