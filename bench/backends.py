"""TVM backend vs C backend: the same op, algorithm, target and schedule, timed in the same run
(interleaved medians, bench/common.py), reported as TVM/C time ratios.

    python bench/backends.py [--sizes 1K 256K 4M 64M 2048x1024] [--targets scalar avx2] [--ops softmax]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import gbps, machine_info, parse_size, single_threaded, time_interleaved  # noqa: E402,F401

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402


def run(sizes, targets, ops, algorithms, budget) -> list[dict]:
    out = []
    rng = np.random.default_rng(0)
    for size in sizes:
        rows, n = parse_size(size)
        x = rng.standard_normal((rows, n), dtype=np.float32) * 4
        for op in ops:
            for t in targets:
                if not softgen.compile(op, target=t).runnable:
                    continue
                variants, kernels = {}, {}
                for alg in algorithms:
                    for b in softgen.backends.names():
                        k = softgen.compile(op, algorithm=alg, target=t, backend=b)
                        y = np.empty_like(x)
                        k(x, out=y)
                        kernels[(alg, b)] = k
                        variants[f"{alg}/{b}"] = (lambda k=k, y=y: k(x, out=y))
                tm = time_interleaved(variants, budget=budget)
                for alg in algorithms:
                    c, v = tm[f"{alg}/c"], tm[f"{alg}/tvm"]
                    bpe = kernels[(alg, "c")].plan.bytes_per_element
                    out.append({"size": size, "op": op, "target": t, "algorithm": alg,
                                "c_ns_per_el": c.median / x.size * 1e9, "tvm_ns_per_el": v.median / x.size * 1e9,
                                "tvm_over_c": v.median / c.median, "c_gbps": gbps(bpe, x.size, c.median),
                                "tvm_gbps": gbps(bpe, x.size, v.median), "spread": max(c.spread, v.spread)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["1K", "16K", "256K", "1M", "4M", "16M", "64M",
                                                    "8192x128", "2048x1024", "512x4096"])
    ap.add_argument("--targets", nargs="+", default=["scalar", "avx2", "avx512"])
    ap.add_argument("--ops", nargs="+", default=["softmax"])
    ap.add_argument("--algorithms", nargs="+", default=["three-pass-recompute", "three-pass-reload",
                                                         "two-pass", "online"])
    ap.add_argument("--budget", type=float, default=0.4)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = run(a.sizes, a.targets, a.ops, a.algorithms, a.budget)
    m = machine_info()
    print(f"# TVM/C time ratio (>1: TVM slower), single thread; {m.get('cpu', '')}")
    print(f"{'size':<10} {'op':<8} {'target':<7} {'algorithm':<21} {'C ns/el':>8} {'TVM ns/el':>9} {'TVM/C':>6} {'IQR':>4}")
    for r in rows:
        print(f"{r['size']:<10} {r['op']:<8} {r['target']:<7} {r['algorithm']:<21} {r['c_ns_per_el']:8.3f} "
              f"{r['tvm_ns_per_el']:9.3f} {r['tvm_over_c']:6.2f} {r['spread'] * 100:3.0f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": m, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
