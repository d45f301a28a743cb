"""Is the untuned dispatch model's choice the faster variant? (issue 13)

For each target, the algorithm="auto" dispatcher is compiled with this machine's caches (or
``SOFTGEN_CACHE_SIZES``) and timed, interleaved (``common.time_interleaved``: medians of
alternating rounds, so ratios are meaningful on a shared machine; absolute times less so),
against the plain kernel of every candidate algorithm at single rows of each size.

    python bench/dispatch.py [--targets avx2 avx512] [--sizes 256K 1M 16M 64M] [--budget 0.5]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import softgen  # noqa: E402
from bench.common import time_interleaved  # noqa: E402
from softgen import machine, passes  # noqa: E402
from softgen.ops import build_program  # noqa: E402
from softgen.targets import get_target  # noqa: E402

SIZES = {"256K": 1 << 18, "1M": 1 << 20, "4M": 1 << 22, "16M": 1 << 24, "64M": 1 << 26}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["avx2", "avx512"])
    ap.add_argument("--sizes", nargs="+", default=["256K", "1M", "16M", "64M"], choices=list(SIZES))
    ap.add_argument("--op", default="softmax")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per variant per size (about)")
    a = ap.parse_args()
    print(f"# {machine.describe()}")
    rng = np.random.default_rng(0)
    program = build_program(a.op)
    for tname in a.targets:
        t = get_target(tname)
        if not t.runnable:
            print(f"# {tname}: this CPU cannot run it, skipped")
            continue
        auto = softgen.compile(a.op, target=tname)
        print("\n".join(f"# {line}" for line in (auto.dispatch.lines() if auto.dispatch else ["no model"])))
        algs = [x for x in t.auto_algorithms if x in passes.applicable_algorithms(program)]
        ks = {alg: softgen.compile(a.op, algorithm=alg, target=tname) for alg in algs}
        print(f"{'target':7s} {'size':5s} " + " ".join(f"{passes.SHORT[x]:>7s}" for x in algs)
              + f" {'auto':>7s}  model  fastest  model/fastest  auto/model")
        for label in a.sizes:
            n = SIZES[label]
            x = (rng.standard_normal((1, n)) * 4).astype(np.float32)
            y = np.empty_like(x)
            for k in [*ks.values(), auto]:   # first touch and load outside the timing
                k(x, out=y)
            runs = {alg: (lambda k=k: k(x, out=y)) for alg, k in ks.items()}
            runs["auto"] = lambda: auto(x, out=y)
            tm = time_interleaved(runs, budget=a.budget)
            ns = {key: tm[key].median / n * 1e9 for key in runs}
            chosen = auto.algorithm if not auto.dispatcher else next(
                e.algorithm for e in auto.dispatch.entries if e.n_max is None or n <= e.n_max)
            best = min(algs, key=ns.get)
            print(f"{tname:7s} {label:5s} " + " ".join(f"{ns[x]:7.3f}" for x in algs)
                  + f" {ns['auto']:7.3f}  {passes.SHORT[chosen]:>5s}  {passes.SHORT[best]:>7s}  "
                  f"{ns[chosen] / ns[best]:13.3f}  {ns['auto'] / ns[chosen]:10.3f}", flush=True)


if __name__ == "__main__":
    main()
