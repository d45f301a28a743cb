"""Instructions per element in the main loop of every sweep, read from the generated assembly
(``softgen.asmstats``), per op x algorithm x target. No timing: this needs only the compilers
(the cross compiler for neon).

    python bench/hotloops.py [--targets avx2 avx512 neon] [--ops softmax log_softmax] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import softgen
from softgen.asmstats import hot_loops
from softgen.matrix import MatrixProgram
from softgen.ops import build_program, get_op
from softgen.passes import MATRIX_ALGORITHMS, applicable_algorithms
from softgen.runtime import assembly


def measure(ops, targets) -> list[dict]:
    rows = []
    for op in ops:
        program = build_program(op)
        # a matrix op has one algorithm (its phases), attention two (three-phase, streaming); row
        # phases and GEMMs are marked alike
        if get_op(op).kind == "attention":
            algs = [a for a in MATRIX_ALGORITHMS if a != "direct"]
        else:
            algs = ["direct"] if isinstance(program, MatrixProgram) else applicable_algorithms(program)
        for alg in algs:
            for t in targets:
                k = softgen.compile(op, algorithm=alg, target=t)
                loops = [lp for lp in hot_loops(assembly(k.source, k.target, mark_loops=True))
                         if not lp["function"].endswith("fallback_row")]
                rows.append({"op": op, "algorithm": alg, "target": t, "lanes": k.target.lanes,
                             "step": loops[0]["step"] if loops else None,
                             "per_sweep": [round(lp["per_element"], 3) for lp in loops],
                             "total_per_element": round(sum(lp["per_element"] for lp in loops), 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["avx2", "avx512", "neon"])
    ap.add_argument("--ops", nargs="+", default=list(softgen.OPS))
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = measure(a.ops, a.targets)
    print(f"{'op':<12} {'algorithm':<21} {'target':<7} {'elems/iter':>10}  instructions/element per sweep (total)")
    for r in rows:
        if r["step"] is None:   # no marked sweep loop (e.g. streaming attention's micro-kernel)
            print(f"{r['op']:<12} {r['algorithm']:<21} {r['target']:<7} {'-':>10}  no sweep loops")
            continue
        sweeps = " + ".join(f"{v:.2f}" for v in r["per_sweep"])
        print(f"{r['op']:<12} {r['algorithm']:<21} {r['target']:<7} {r['step']:>10}  {sweeps} = {r['total_per_element']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
