"""Issue 13 (r13/rowsdispatch): a tuned auto kernel runs the single-row records' plan on calls of
fewer than ``costmodel.BATCH_ROWS`` rows and the batch records' plan on batches. Per shape, in C
(``tune.timed_variant``: one buffer pair, ``_fastcall.repeat``), interleaved (``time_interleaved``,
medians over rounds, repeated ``--repeat`` times): the auto kernel, and the plain kernel of the
variant each table of its dispatch holds for that n (``DispatchTable.pick`` at 1 row and at
BATCH_ROWS rows); which one auto runs for the shape. Tune first (this machine's records:
``softgen tune --sizes ...`` and ``--shapes ...``), else auto is the model's table.

    python bench/rowsdispatch.py --target avx512 --shapes 1x1024,1x4096,3x4096,4x4096,4096x512
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import softgen  # noqa: E402
from softgen import costmodel, machine, passes  # noqa: E402
from softgen.benchmark import parse_shapes, time_interleaved  # noqa: E402
from softgen.tune import timed_variant  # noqa: E402


def label(e) -> str:
    return f"{passes.SHORT[e.algorithm]} {costmodel.knob_label(e.schedule)}".strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--shapes", default="1x1024,1x4096,3x4096,4x4096,4096x512")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds per interleaved run")
    a = ap.parse_args(argv)
    k = softgen.compile("softmax", target=a.target)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    print(f"# python bench/rowsdispatch.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"# commit {commit}; cpu {machine.identity().get('model_name')}; load average {os.getloadavg()}")
    print(f"# auto: tuned={k.tuned}, dispatcher={k.dispatcher}")
    print("\n".join("# " + line for line in k.explain_dispatch().splitlines()))
    rng = np.random.default_rng(0)
    plain: dict = {}
    print(f"{'shape':>10} {'auto runs':>22} {'single-row table':>22} {'batch table':>22} "
          f"{'auto ns/el':>10} {'single ns/el':>12} {'batch ns/el':>12} {'batch/single':>12}")
    for rows, n in parse_shapes(a.shapes):
        x = rng.standard_normal((rows, n)).astype(np.float32)
        y = np.empty_like(x)
        if not k.dispatcher:
            print(f"{rows}x{n}: auto is one kernel ({k.algorithm})")
            continue
        run, few, many = k.dispatch.pick(n, rows), k.dispatch.pick(n, 1), k.dispatch.pick(n, costmodel.BATCH_ROWS)
        for e in (few, many):
            if e.variant not in plain:
                plain[e.variant] = softgen.compile("softmax", algorithm=e.algorithm, target=a.target, schedule=e.schedule)
        variants = {"auto": timed_variant(k, [(x, y)], 1), "single": timed_variant(plain[few.variant], [(x, y)], 1),
                    "batch": timed_variant(plain[many.variant], [(x, y)], 1)}
        meds = {key: [] for key in variants}
        for _ in range(a.repeat):
            tm = time_interleaved(variants, budget=a.budget)
            for key in variants:
                meds[key].append(tm[key].median / (rows * n) * 1e9)
        med = {key: float(np.median(v)) for key, v in meds.items()}
        print(f"{f'{rows}x{n}':>10} {label(run):>22} {label(few):>22} {label(many):>22} {med['auto']:>10.3f} "
              f"{med['single']:>12.3f} {med['batch']:>12.3f} {med['batch'] / med['single']:>12.2f}"
              f"   (runs: {' '.join(f'{v:.3f}' for v in meds['auto'])} | {' '.join(f'{v:.3f}' for v in meds['single'])}"
              f" | {' '.join(f'{v:.3f}' for v in meds['batch'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
