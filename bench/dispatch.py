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
from bench.common import count_label, parse_count, render_table, time_interleaved  # noqa: E402
from softgen import machine, passes  # noqa: E402
from softgen.ops import build_program  # noqa: E402
from softgen.targets import get_target  # noqa: E402


def _ns(v, row=None):
    return f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", nargs="+", default=["avx2", "avx512"])
    ap.add_argument("--sizes", nargs="+", default=["256K", "1M", "16M", "64M"], help="element counts (1K = 1024)")
    ap.add_argument("--op", default="softmax")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per variant per size (about)")
    a = ap.parse_args()
    try:
        sizes = [parse_count(s) for s in a.sizes]
    except ValueError as e:
        ap.error(str(e))
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
        cols = [("target", "target", "s"), ("size", "size", "s")] + \
            [(x, passes.SHORT[x], _ns) for x in algs] + \
            [("auto", "auto", _ns), ("model", "model", "s"), ("fastest", "fastest", "s"),
             ("model/fastest", "model/fastest", ".3f"), ("auto/model", "auto/model", ".3f")]
        rows = []
        for n in sizes:
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
            rows.append({"target": tname, "size": count_label(n), **ns, "model": passes.SHORT[chosen],
                         "fastest": passes.SHORT[best], "model/fastest": ns[chosen] / ns[best],
                         "auto/model": ns["auto"] / ns[chosen]})
            print(f"# {tname} {count_label(n)} done", file=sys.stderr, flush=True)
        print(render_table(rows, cols), flush=True)


if __name__ == "__main__":
    main()
