"""A/B timing of two builds of the same kernels: exported libraries from two softgen versions,
interleaved in one process (medians of interleaved rounds; ratios, not absolute times).

    # export the same kernels from two checkouts (run from each checkout's directory)
    softgen build --op softmax --algorithm two-pass --target avx2 --name softmax_2p_avx2 -o /tmp/ab/base/softmax_2p_avx2
    python bench/ab.py /tmp/ab/base /tmp/ab/head [--sizes 256K 1M 64M] [--against onnxruntime] [--rounds 15]

``--against``: softmax peers (``softgen.benchmark.peers``) timed in the same interleaved rounds, as
peer/head time ratios (head's speed-up); ``--rounds``: the most interleaved rounds (at least 7).

Each directory holds ``<name>/lib<name>.so`` for row kernels with the row ABI
``int name(const float *x, float *y, size_t rows, size_t n, size_t ldx, size_t ldy)``.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from common import count_label, parse_count, render_table, time_interleaved  # noqa: E402

from softgen.benchmark.peers import load_peers, parse_against  # noqa: E402

DEFAULT_SIZES = ["256K", "1M", "64M"]


def load(d: str, name: str):
    f = getattr(ctypes.CDLL(os.path.join(d, name, f"lib{name}.so")), name)
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 4
    f.restype = ctypes.c_int
    return f


def _ns(v, row=None):
    return f"{v:.3f}"


COLUMNS = [("size", "size", "s"), ("kernel", "kernel", "s"), ("base", "base ns/el", _ns),
           ("head", "head ns/el", _ns), ("ratio", "head/base", ".3f"), ("noise", "noise", ".0%")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("head")
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="element counts (1K = 1024)")
    ap.add_argument("--against", default="none", help="softmax peers in the same rounds, e.g. onnxruntime")
    ap.add_argument("--rounds", type=int, default=15, help="the most interleaved rounds (>= 7)")
    a = ap.parse_args()
    try:
        sizes = [parse_count(s) for s in a.sizes]
    except ValueError as e:
        ap.error(str(e))
    if a.rounds < 7:
        ap.error("--rounds must be >= 7")
    peers, _ = load_peers(parse_against(a.against))
    cols = COLUMNS + [(p.name, f"{p.name}/head", ".3f") for p in peers]
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        x = (rng.standard_normal(n) * 4).astype(np.float32)
        y = np.empty_like(x)
        px, py = x.ctypes.data, y.ctypes.data
        for name in sorted(os.listdir(a.head)):
            pair = {"base": load(a.base, name), "head": load(a.head, name)}
            for f in pair.values():   # both must succeed
                assert f(px, py, 1, n, n, n) == 0
            # interleaved medians (softgen.benchmark.time_interleaved): calibrated samples, warm-up
            variants = {k: ("f(px, py, 1, n, n, n)", {"f": f, "px": px, "py": py, "n": n}) for k, f in pair.items()}
            variants.update({p.name: p.variant(x[None], y[None]) for p in peers})
            tm = time_interleaved(variants, min_rounds=7, max_rounds=a.rounds)
            mb, mh = (tm[k].median / n * 1e9 for k in ("base", "head"))
            rows.append(dict(size=count_label(n), kernel=name, base=mb, head=mh, ratio=mh / mb,
                             noise=max(t.spread for t in tm.values()),
                             **{p.name: tm[p.name].median / tm["head"].median for p in peers}))
            print(render_table(rows[-1:], cols).splitlines()[-1], flush=True)
    print(render_table(rows, cols, group="size"))


if __name__ == "__main__":
    main()
