"""Row ops other than softmax (stablemax, log_stablemax, softplus_l1, lssa, reweight, lssar) against softgen's own
two-pass softmax on the same shape and target (issue 5's "within 1.3x") and against the
straightforward NumPy a researcher would write, in one interleaved run. Then top-k softmax
(dense and sparse, per k) against the same softmax, NumPy (argpartition + argsort) and PyTorch
(torch.topk + softmax, one thread) when importable.

    python bench/ops.py [--sizes 256K 1M 2048x1024] [--targets avx2] [--backends c tvm]
    python bench/ops.py --only-topk [--topk-sizes 2048x1024 4096x64] [--topk-k 1 2 8]
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


def numpy_topk_sparse(x, k):
    """(indices, weights), largest first: argpartition, then sort the k (stable: lower index first
    among equal values within the k), softmax over them."""
    idx = np.argpartition(-x, k - 1, axis=-1)[..., :k]
    v = np.take_along_axis(x, idx, -1)
    order = np.argsort(-v, axis=-1, kind="stable")
    idx, v = np.take_along_axis(idx, order, -1), np.take_along_axis(v, order, -1)
    w = np.exp(v - v[..., :1])
    return idx, w / w.sum(-1, keepdims=True)


def numpy_topk_dense(x, k):
    idx, w = numpy_topk_sparse(x, k)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, w, -1)
    return y


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def bench_topk(sizes, ks, targets, backends, budget) -> None:
    """ns/element of top-k softmax (renormalize=1), dense and sparse, per k and shape."""
    torch, rng = _torch(), np.random.default_rng(0)
    print(f"\n{'size':<10} {'target':<7} {'backend':<7} {'k':>2} {'form':<6} {'ns/el':>7} "
          f"{'vs softmax 2p':>13} {'vs numpy':>9} {'vs torch':>9}")
    for size in sizes:
        rows, n = parse_size(size)
        x = rng.standard_normal((rows, n), dtype=np.float32) * 4
        xt = torch.from_numpy(x) if torch else None
        for t in targets:
            for b in backends:
                sm = softgen.compile("softmax", algorithm="two-pass", target=t, backend=b)
                if not sm.runnable:
                    continue
                y = np.empty_like(x)
                variants = {"softmax": lambda: sm(x, out=y)}
                for k in ks:
                    kd = softgen.compile("topk_softmax", target=t, backend=b, k=k)
                    kspar = softgen.compile("topk_softmax", target=t, backend=b, k=k, sparse=1)
                    variants |= {f"dense {k}": lambda kd=kd: kd(x, out=y),
                                 f"sparse {k}": lambda ks=kspar: ks(x),
                                 f"numpy dense {k}": lambda k=k: numpy_topk_dense(x, k),
                                 f"numpy sparse {k}": lambda k=k: numpy_topk_sparse(x, k)}
                    if torch is not None:
                        def t_sparse(k=k):
                            v, i = torch.topk(xt, k, dim=-1)
                            return i, torch.softmax(v, -1)

                        def t_dense(k=k):
                            i, w = t_sparse(k)
                            return torch.zeros_like(xt).scatter_(-1, i, w)
                        variants |= {f"torch dense {k}": t_dense, f"torch sparse {k}": t_sparse}
                tm = time_interleaved(variants, budget=budget)
                for k in ks:
                    for form in ("dense", "sparse"):
                        med = tm[f"{form} {k}"].median
                        vs_torch = f"{tm[f'torch {form} {k}'].median / med:8.1f}x" if torch else "      n/a"
                        print(f"{size:<10} {t:<7} {b:<7} {k:>2} {form:<6} {med / x.size * 1e9:7.3f} "
                              f"{med / tm['softmax'].median:12.2f}x {tm[f'numpy {form} {k}'].median / med:8.1f}x "
                              f"{vs_torch}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["256K", "1M", "16M", "2048x1024"])
    ap.add_argument("--targets", nargs="+", default=["avx2"])
    ap.add_argument("--backends", nargs="+", default=list(softgen.backends.names()))
    ap.add_argument("--budget", type=float, default=0.4)
    ap.add_argument("--topk-sizes", nargs="+", default=["2048x1024", "4096x64"])
    ap.add_argument("--topk-k", nargs="+", type=int, default=[1, 2, 8])
    ap.add_argument("--only-topk", action="store_true", help="only the top-k softmax table")
    a = ap.parse_args()
    if a.only_topk:
        return bench_topk(a.topk_sizes, a.topk_k, a.targets, a.backends, a.budget)
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
    bench_topk(a.topk_sizes, a.topk_k, a.targets, a.backends, a.budget)


if __name__ == "__main__":
    main()
