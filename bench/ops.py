"""Row ops other than softmax (stablemax, log_stablemax, softplus_l1, lssa, reweight, lssar) against softgen's own
two-pass softmax on the same shape and target (issue 5's "within 1.3x") and against the
straightforward NumPy a researcher would write, in one interleaved run.

    python bench/ops.py [--sizes 256K 1M 2048x1024] [--targets avx2] [--backends c tvm]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import single_threaded, time_interleaved  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402
from backends import parse_size  # noqa: E402


def _stable_s(x):
    return np.where(x >= 0, x + 1, 1 / (1 - x))


def _lssa(c, n, d=64):
    a = np.logaddexp(0, (np.log(d) * np.log(n))[:, None] * c)
    return a / a.sum(-1, keepdims=True)


def _reweight(a, n, offset_free_rows=3, p=15):
    o = (np.arange(a.shape[0]) >= offset_free_rows)[:, None]
    r = np.maximum(n[:, None] * a - o, 0)
    r = (r / r.max(-1, keepdims=True)) ** p
    return r / r.sum(-1, keepdims=True)


NUMPY = {  # what a researcher would write; the lssa family gets n_attended = n (no mask)
    "stablemax": lambda x, n: _stable_s(x) / _stable_s(x).sum(-1, keepdims=True),
    "log_stablemax": lambda x, n: np.log(_stable_s(x) / _stable_s(x).sum(-1, keepdims=True)),
    "softplus_l1": lambda x, n: np.logaddexp(0, x) / np.logaddexp(0, x).sum(-1, keepdims=True),
    "lssa": _lssa,
    "reweight": lambda x, n: _reweight(x, n),
    "lssar": lambda x, n: _reweight(_lssa(x, n), n),
}
GIVEN_N = {"lssa", "reweight", "lssar"}  # built with count_keys=0: the caller passes N_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["256K", "1M", "16M", "2048x1024"])
    ap.add_argument("--targets", nargs="+", default=["avx2"])
    ap.add_argument("--backends", nargs="+", default=["c", "tvm"])
    ap.add_argument("--budget", type=float, default=0.4)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'size':<10} {'target':<7} {'backend':<7} {'op':<14} {'ns/el':>7} {'vs softmax 2p':>13} {'vs numpy':>9}")
    for size in a.sizes:
        rows, n = parse_size(size)
        x = rng.standard_normal((rows, n), dtype=np.float32) * 4
        cos = np.tanh(x / 4)                                 # scores in [-1, 1] for lssa
        w = (np.exp(x / 4) / np.exp(x / 4).sum(-1, keepdims=True)).astype(np.float32)  # weights
        inputs = {op: x for op in NUMPY} | {"lssa": cos, "lssar": cos, "reweight": w}
        nn = np.full(rows, n, np.float32)
        for t in a.targets:
            for b in a.backends:
                ks = {op: softgen.compile(op, target=t, backend=b,
                                          **({"count_keys": 0} if op in GIVEN_N else {})) for op in NUMPY}
                ks["softmax"] = softgen.compile("softmax", algorithm="two-pass", target=t, backend=b)
                if not ks["softmax"].runnable:
                    continue
                y = np.empty_like(x)
                variants = {op: (lambda k=k, op=op: k(inputs[op], out=y,
                                                      **({"n_attended": nn} if op in GIVEN_N else {})))
                            for op, k in ks.items() if op != "softmax"}
                variants["softmax"] = lambda k=ks["softmax"]: k(x, out=y)
                variants.update({f"numpy {op}": (lambda f=f, op=op: f(inputs[op], nn)) for op, f in NUMPY.items()})
                tm = time_interleaved(variants, budget=a.budget)
                for op in NUMPY:
                    t_op = tm[op].median
                    print(f"{size:<10} {t:<7} {b:<7} {op:<14} {t_op / x.size * 1e9:7.3f} "
                          f"{t_op / tm['softmax'].median:12.2f}x {tm['numpy ' + op].median / t_op:8.1f}x")


if __name__ == "__main__":
    main()
