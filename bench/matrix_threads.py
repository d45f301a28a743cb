"""Matrix ops: a batch of matrices at threads=1 vs 2 and auto, interleaved, median of 30 rounds
(issue 13, "Threads": the batch split of templates/matrix_entry.c.j2). Run on a quiet machine:
    PYTHONPATH=. SOFTGEN_USE_TUNING=0 python bench/matrix_threads.py
"""
import time

import numpy as np

import softgen

rng = np.random.default_rng(0)
cases = [("sinkhorn", {}, lambda b: ((rng.standard_normal((b, 64, 64)) * 3).astype(np.float32),), [1, 4, 64]),
         ("newton_pinv", {}, lambda b: ((rng.standard_normal((b, 32, 32)) + 6 * np.eye(32)).astype(np.float32),), [1, 64]),
         ("gaussian_kernel", {"head_dim": 64}, lambda b: (rng.standard_normal((b, 128, 64)).astype(np.float32),
                                                          rng.standard_normal((b, 128, 64)).astype(np.float32)), [1, 16])]
for op, params, make, batches in cases:
    k = softgen.compile(op, **params)
    for b in batches:
        xs = make(b)
        out = k(*xs)
        times = {c: [] for c in ("1", "2", "auto")}
        for _ in range(30):
            for c in times:
                t0 = time.perf_counter()
                k(*xs, out=out, threads=None if c == "auto" else int(c))
                times[c].append(time.perf_counter() - t0)
        med = {c: np.median(v) * 1e6 for c, v in times.items()}
        print(f"{op:16s} batch {b:3d}: 1 thread {med['1']:9.1f} us, 2 threads {med['2']:9.1f} us "
              f"({med['1'] / med['2']:.2f}x), auto {med['auto']:9.1f} us ({med['1'] / med['auto']:.2f}x)")
