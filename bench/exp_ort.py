"""Exp variants against ONNX Runtime in cache (issue 13): softgen's softmax with the default exp
(p5c2) and each given variant (e.g. the table exp t32), and ORT's Softmax, timed interleaved per
size on one thread (softgen's auto threads capped by bench/common.py, ORT intra_op 1).

    python bench/exp_ort.py --target avx512 --sizes 16K,64K,256K,1M --shapes 8192x128,4096x512,64x32768 \\
        --variants p5,t32 [--algorithm three-pass-reload] [--budget 4] [--min-time 0.002 --rounds 201]

A variant is a schedule exp (numerics.constants.EXP_VARIANTS), ``p5`` (schedule exp="p5c2": p5 for
every exp, also avx512's exps of x - max x, t32 by default), ``r<R>`` (schedule rows=R: R rows at
once), ``lz`` (schedule lazymax: no full-row max sweep) or ``pp`` (schedule pipeline: a row's output
sweep in the next row's loop), or several joined by ``+`` (``t32+r2``).
Short rows of batches vs ORT (schedule rows):

    python bench/exp_ort.py --target avx512 --sizes "" --variants r2,r4 [--algorithm online]

Prints ns/element (median and minimum over the interleaved rounds), each variant's speed-up over
p5c2 and ORT's time over each softgen kernel (> 1: softgen faster), the noise (IQR / median) and
the load average before and after: the machine may be shared, so only ratios within a row mean
anything.
"""
from __future__ import annotations

import argparse
import os
import sys

import common  # noqa: F401  (single-threads BLAS and softgen's auto threads before NumPy)
import numpy as np

import softgen
from softgen import machine
from softgen.benchmark import _buffers, load_peers, parse_shapes, parse_sizes, size_label, time_interleaved
from softgen.numerics.constants import EXP_DEFAULT


def variant_schedule(spec: str) -> dict:
    """The schedule knobs of a variant: ``p5``, an exp variant, ``r<R>``, joined by ``+``."""
    out = {}
    for part in spec.split("+"):
        if part[:1] == "r" and part[1:].isdigit():
            out["rows"] = int(part[1:])
        elif part == "lz":
            out["lazymax"] = True
        elif part == "pp":
            out["pipeline"] = True
        else:
            out["exp"] = "p5c2" if part == "p5" else part
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--algorithm", default="three-pass-reload")
    ap.add_argument("--sizes", default="16K,64K,256K,1M")
    ap.add_argument("--shapes", default="8192x128,4096x512,64x32768")
    ap.add_argument("--variants", default="p5,t32", help="variants besides the default, comma-separated: "
                    "exp variants, p5 (exp=p5c2), r<R> (rows=R), lz (lazymax), pp (pipeline), joined by + (t32+r2)")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds per size")
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per sample (shorter samples "
                    "make the minimum more likely to catch an uncontended slice on a loaded machine)")
    ap.add_argument("--rounds", type=int, default=41, help="at most this many interleaved rounds")
    a = ap.parse_args(argv)
    exps = [EXP_DEFAULT] + [v for v in a.variants.split(",") if v and v != EXP_DEFAULT]
    kernels = {e: softgen.compile("softmax", algorithm=a.algorithm, target=a.target,
                                  schedule=None if e == EXP_DEFAULT else variant_schedule(e))
               for e in exps}
    peers, skipped = load_peers(["onnxruntime"])
    ort = peers[0] if peers else None
    rng = np.random.default_rng(0)
    print(f"# softmax {a.algorithm} on {kernels[EXP_DEFAULT].target.name} vs "
          f"{'onnxruntime ' + ort.version if ort else 'no ORT: ' + skipped.get('onnxruntime', '')}; "
          f"{machine.describe()}; load average {os.getloadavg()[0]:.2f}")
    print("# interleaved rounds, 1 thread; per size: ns/element by the median and by the minimum over rounds")
    print("# (on a loaded shared machine the minimum is the steadier estimate); ratios within a row only")
    cols = exps + (["ort"] if ort else [])
    tgt = kernels[EXP_DEFAULT].target
    print(f"# {EXP_DEFAULT}: the default schedule exp"
          + (f" (sg_exp_shifted: {tgt.shifted_exp}, the target file's shifted_exp)" if tgt.shifted_exp else "")
          + f"; v/{EXP_DEFAULT}: {EXP_DEFAULT}'s time over v's (> 1: v faster); ort/v: ORT's over v's (> 1: v faster)")
    head = f"{'size':>9}  stat  " + "  ".join(f"{c + ' ns/el':>11}" for c in cols) \
        + "".join(f"  {e}/{EXP_DEFAULT}" for e in exps[1:]) + "".join(f"  ort/{e}" for e in exps if ort) + "  noise"
    print(head)
    shapes = (parse_sizes(a.sizes) if a.sizes else []) + (parse_shapes(a.shapes) if a.shapes else [])
    for rows, n in shapes:
        (x, y), = _buffers(rng, rows, n, 1)
        variants = {e: ("k(x, out=y, threads=1)", {"k": k, "x": x, "y": y}) for e, k in kernels.items()}
        if ort:
            variants["ort"] = ort.variant(x, y.copy())
        t = time_interleaved(variants, budget=a.budget, min_time=a.min_time, max_rounds=a.rounds, min_rounds=9)
        for stat in ("median", "min"):
            ns = {k: getattr(v, stat) / (rows * n) * 1e9 for k, v in t.items()}
            line = f"{size_label(rows, n):>9}  {stat:<4}  " + "  ".join(f"{ns[c]:11.3f}" for c in cols)
            line += "".join(f"  {ns[EXP_DEFAULT] / ns[e]:>{len(e) + len(EXP_DEFAULT)}.3f}x" for e in exps[1:])
            line += "".join(f"  {ns['ort'] / ns[e]:>{len(e) + 3}.3f}x" for e in exps if ort)
            line += f"  {100 * max(v.spread for v in t.values()):4.1f}%" if stat == "median" else ""
            print(line, flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
