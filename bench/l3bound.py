"""Issue 13 (c): what bounds softgen's single rows in the last-level cache (256K-4M elements:
1-16 MiB of x + y). Per size, interleaved, one thread: each candidate plan (three-pass-reload with
lazymax and t32, two-pass with and without non-temporal stores, online, ...), ONNX Runtime, and the
generated copy kernel (``templates/copy.c.j2``, plain and non-temporal stores); each plan's traffic
bound is its bytes per element (``issue13.traffic_at``: reads + writes, lazymax without its max
sweep) at the copy's bandwidth at that size (what the level can stream, measured in the same run),
and issue 13's goal against ORT (1.5x) as ns/element. A goal below a plan's bound needs a plan
with less traffic; a plan far from its bound is compute-bound (its exps).

    python bench/l3bound.py                          # 256K,1M,4M on the host's best target
    python bench/l3bound.py --sizes 256K,1M --target avx2
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402,F401  (single-threads the math libraries before NumPy is imported)
import numpy as np  # noqa: E402
from issue13 import ORT_ROW_TARGET, traffic_at  # noqa: E402

from softgen import (
    compile as compile_kernel,  # noqa: E402
    machine,  # noqa: E402
)
from softgen.benchmark import (  # noqa: E402
    COPY_BYTES,
    CopyKernel,
    _buffers,
    _rotating,
    load_peers,
    parse_against,
    parse_sizes,
    time_interleaved,
)
from softgen.targets import get_target  # noqa: E402

PLANS = {"3pl lz": ("three-pass-reload", {"lazymax": True}),
         "3pl t32 lz": ("three-pass-reload", {"lazymax": True, "exp": "t32"}),
         "2p": ("two-pass", {}), "2p nt": ("two-pass", {"stream": True}), "online": ("online", {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256K,1M,4M")
    ap.add_argument("--target", default="host")
    args = ap.parse_args(argv)
    t = get_target(args.target)
    kernels = {}
    for name, (alg, sched) in PLANS.items():
        if sched.get("stream") and not t.streams or sched.get("exp") and sched["exp"] not in t.cost.get("exp", {}):
            continue
        kernels[name] = compile_kernel("softmax", algorithm=alg, target=t.name, schedule=sched)
        kernels[name]._entry(False)
    peers, skipped = load_peers(parse_against("onnxruntime"), "softmax")
    copier = CopyKernel(t)
    rng = np.random.default_rng(0)
    print(f"# bench/l3bound.py --sizes {args.sizes} --target {t.name}: {machine.describe()}; load average "
          f"{os.getloadavg()[0]:.2f}; 1 thread, every row of a size interleaved (medians)")
    for _, n in parse_sizes(args.sizes):
        bufs = _buffers(rng, 1, n, 1)
        v = {k: _rotating([("k(x, out=y, threads=1)", {"k": kk, "x": x, "y": y}) for x, y in bufs]) for k, kk in kernels.items()}
        v["copy"] = _rotating([copier.variant(x, y, False) for x, y in bufs])
        if copier.streams:
            v["copy nt"] = _rotating([copier.variant(x, y, True) for x, y in bufs])
        for p in peers:
            v[p.name] = _rotating([p.variant(x, y) for x, y in bufs])
        tm = time_interleaved(v, min_time=0.02, budget=0.5, min_rounds=9, max_rounds=25)
        gbps = {k: COPY_BYTES * n * copier.reps(n) / tm[k].median / 1e9 for k in ("copy", "copy nt") if k in tm}
        ort = tm["onnxruntime"].median / n * 1e9 if "onnxruntime" in tm else None
        print(f"\nn={n} ({machine.caches().level_of(8 * n)}): copy {gbps['copy']:.1f} GB/s"
              + (f", non-temporal {gbps['copy nt']:.1f}" if "copy nt" in gbps else "")
              + (f"; ORT {ort:.3f} ns/el, goal (ORT / {ORT_ROW_TARGET}) {ort / ORT_ROW_TARGET:.3f} ns/el" if ort else
                 f"; ORT skipped: {skipped.get('onnxruntime', '?')}"))
        for k, kk in kernels.items():
            ns, b = tm[k].median / n * 1e9, traffic_at(kk, n)
            bound = b / gbps["copy"]
            print(f"  {k:11s} {ns:.3f} ns/el  {b:2d} B/el  bound {bound:.3f} ns/el ({bound / ns:4.0%} of it)"
                  + (f"  ORT/it {ort / ns:.2f}x  ORT/bound {ort / bound:.2f}x" if ort else "") + f"  noise {tm[k].spread:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
