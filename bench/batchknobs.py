"""The batch knobs of three-pass-reload side by side on batched shapes (issue 13, the 4096 x 512 miss):
lazymax, pipeline, both, rows=R (and any --variants), each shape's kernels timed interleaved in
``--runs`` separate runs (fresh buffers each: x and y land at new addresses), ratios to the default
schedule per run, and which schedule the untuned model (``costmodel.model_table``) takes there.

The model's batch terms (``costmodel.batch_cycles``) rest on these ratios' signs, not their values:

    python bench/batchknobs.py --target avx512 --shapes 16384x128,8192x256,4096x512,2048x1024,1024x2048,512x4096
    python bench/batchknobs.py --target avx512 --shapes 16x512,256x512,1024x512,4096x512,16384x512   # batch level
"""
from __future__ import annotations

import argparse
import sys

import common  # noqa: F401  (single-threaded BLAS before NumPy)
import numpy as np
from knobs import variant  # "lazymax+rows=2" -> schedule knobs, as bench/knobs.py spells them

import softgen
from softgen import autotable, costmodel, machine, passes
from softgen.backends import get_backend
from softgen.benchmark import _buffers, _rotating, parse_shapes, time_interleaved
from softgen.errors import UsageError
from softgen.schedule import default_schedule
from softgen.targets import get_target

VARIANTS = "lazymax,pipeline,lazymax+pipeline,rows=2"


def model_choice(target, n: int) -> str:
    """The untuned model's schedule for rows of n (its batch knobs, ``costmodel.knob_label``)."""
    t = get_target(target)
    program = softgen.ops.build_program("softmax")
    sched = default_schedule(t.schedule, t.lanes, t.shifted_exp)
    plans = {a: passes.plan(passes.apply_algorithm(program, a)) for a in t.auto_algorithms
             if a in passes.applicable_algorithms(program)}
    table = costmodel.model_table(plans, t, machine.caches(), sched.as_dict(), True,
                                  autotable.model_schedules(get_backend("c"), t, sched))
    e = next(e for e in table.entries if e.n_min <= n and (e.n_max is None or n <= e.n_max))
    return f"{passes.SHORT[e.algorithm]} {costmodel.knob_label(e.schedule)}".strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--shapes", default="16384x128,8192x256,4096x512,2048x1024,1024x2048,512x4096")
    ap.add_argument("--variants", default=VARIANTS, help=f"schedules besides the default, '+' joins knobs "
                                                          f"(default {VARIANTS})")
    ap.add_argument("--runs", type=int, default=2, help="interleaved runs per shape, fresh buffers each")
    ap.add_argument("--rounds", type=int, default=15, help="rounds per run (samples >= 20 ms)")
    ap.add_argument("--samples", action="store_true",
                    help="print every round's ns/element too (bursts of ~2x: the L3 shared with other cores evicting x)")
    a = ap.parse_args(argv)
    try:
        if a.runs < 1 or a.rounds < 3:
            raise UsageError("--runs must be >= 1 and --rounds >= 3")
        shapes = parse_shapes(a.shapes)
        scheds = {"default": {}} | {v: variant(v) for v in a.variants.split(",") if v}
        kernels = {k: softgen.compile("softmax", algorithm="three-pass-reload", target=a.target, schedule=s)
                   for k, s in scheds.items()}
    except UsageError as e:
        print(f"batchknobs: error: {e}", file=sys.stderr)
        return 2
    t = next(iter(kernels.values())).target
    caches = machine.caches()
    rng = np.random.default_rng(0)
    print(f"# softmax three-pass-reload on {t.name}, {machine.describe()}; per shape {a.runs} interleaved runs of "
          f"{a.rounds} rounds (fresh buffers each); time / the default schedule's in the same run; one thread")
    for R, n in shapes:
        ws = 8 * R * n
        pairs = max(1, -(-2 * caches.L3 // ws)) if caches.level_of(ws) == "DRAM" else 1
        cells: dict[str, list[str]] = {k: [] for k in kernels}
        for _ in range(a.runs):
            bufs = _buffers(rng, R, n, pairs)
            v = {k: _rotating([("k(x, out=y)", {"k": kk, "x": x, "y": y}) for x, y in bufs]) for k, kk in kernels.items()}
            tm = time_interleaved(v, min_time=0.02, budget=60, min_rounds=a.rounds, max_rounds=a.rounds)
            base = tm["default"].median
            for k in kernels:
                cells[k].append(f"{tm[k].median / (R * n) * 1e9:.3f} ({tm[k].median / base:.2f}, noise "
                                f"{100 * tm[k].spread:.0f}%)"
                                + (" [" + " ".join(f"{x / (R * n) * 1e9:.2f}" for x in tm[k].samples) + "]"
                                   if a.samples else ""))
            del bufs
        print(f"{R}x{n} (batch {ws >> 10} KiB, {caches.level_of(ws)}; model: {model_choice(t.name, n)}):")
        for k in kernels:
            print(f"  {k:<20} " + "   ".join(cells[k]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
