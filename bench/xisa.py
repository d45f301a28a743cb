"""A library spanning ISAs (issue 13) against the single-ISA kernel of the ISA it picks here:
interleaved medians of k(x, out=y), so the ratio shows what the once-per-process pick and the
switch in the top translation unit cost (expected: nothing measurable).

    python bench/xisa.py                      # x86-64 group vs its pick (avx512 or avx2 or scalar)
    SOFTGEN_ISA=avx2 python bench/xisa.py     # the same library capped to avx2, vs avx2
"""
from __future__ import annotations

import time

import numpy as np

import softgen
from softgen.targets import host_arch

SHAPES = ((1, 64), (256, 1024), (16, 65536), (1, 4 << 20))


def main() -> None:
    g = softgen.compile("softmax", target=host_arch().replace("_", "-"))
    s = softgen.compile("softmax", target=g.isa)
    for rows, n in SHAPES:
        x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
        y = np.empty_like(x)
        reps = max(3, int(2e6 // (rows * n)))
        ts: dict[str, list[float]] = {"group": [], "single": []}
        for _ in range(15):   # interleaved rounds: drift hits both alike
            for key, k in (("group", g), ("single", s)):
                t = time.perf_counter()
                for _ in range(reps):
                    k(x, out=y)
                ts[key].append((time.perf_counter() - t) / reps)
        mg, ms = float(np.median(ts["group"])), float(np.median(ts["single"]))
        print(f"{rows}x{n}: {g.target.name} (picks {g.isa}) {mg * 1e6:.2f} us, {s.target.name} "
              f"{ms * 1e6:.2f} us, ratio {mg / ms:.3f}")


if __name__ == "__main__":
    main()
