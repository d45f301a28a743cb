"""Matrix ops (Sinkhorn) against the straightforward NumPy (and PyTorch, when installed) a
researcher would write, softgen's own two-pass softmax on the same shape and a streaming copy
(the memory bandwidth), in one interleaved run; single-threaded everywhere.

    python bench/matrix.py [--shapes 2048x2048 8x256x256] [--iters 1 3 5] [--backends c tvm]

Effective GB/s use the kernel's memory-traffic model (softgen explain): Sinkhorn with n_iter
half-steps reads the matrix ceil((n_iter + 1) / 2) times from memory and writes it once; the
second sweep of each fused rows phase reads the row from cache.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import gbps, single_threaded, time_interleaved  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402

try:
    from scipy.special import logsumexp as _lse  # noqa: E402
except ImportError:  # pragma: no cover - depends on the environment
    def _lse(m, axis):
        mx = m.max(axis=axis, keepdims=True)
        return (mx + np.log(np.exp(m - mx).sum(axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn_numpy(c, n_iter=3, eps=1.0):
    """Sinkformers' log-domain loop, transcribed to NumPy (float32 in, float32 math)."""
    nq, nk = c.shape[-2:]
    u = np.zeros(c.shape[:-1], c.dtype)
    v = np.zeros(c.shape[:-2] + (nk,), c.dtype)
    for t in range(n_iter):
        m = (c + u[..., :, None] + v[..., None, :]) / eps
        if t % 2 == 0:
            u = eps * (np.log(1 / nq) - _lse(m, -1)) + u
        else:
            v = eps * (np.log(1 / nk) - _lse(m, -2)) + v
    return np.exp((c + u[..., :, None] + v[..., None, :]) / eps) * nk


def sinkhorn_torch(torch, c, n_iter=3, eps=1.0):
    nq, nk = c.shape[-2:]
    u = torch.zeros(c.shape[:-1])
    v = torch.zeros(c.shape[:-2] + (nk,))
    for t in range(n_iter):
        m = (c + u[..., :, None] + v[..., None, :]) / eps
        if t % 2 == 0:
            u = eps * (np.log(1 / nq) - torch.logsumexp(m, -1)) + u
        else:
            v = eps * (np.log(1 / nk) - torch.logsumexp(m, -2)) + v
    return torch.exp((c + u[..., :, None] + v[..., None, :]) / eps) * nk


def parse_shape(s: str) -> tuple[int, ...]:
    return tuple(int(d) for d in s.lower().split("x"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["2048x2048", "8x256x256", "512x4096"])
    ap.add_argument("--iters", nargs="+", type=int, default=[1, 3, 5])
    ap.add_argument("--target", default="host")
    ap.add_argument("--backends", nargs="+", default=["c", "tvm"])
    ap.add_argument("--budget", type=float, default=1.0)
    a = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"{'shape':<11} {'backend':<7} {'n_iter':>6} {'ns/el':>7} {'GB/s':>6} {'vs softmax 2p':>13} "
          f"{'vs numpy':>9} {'vs torch':>9}   (copy: GB/s = memory bandwidth)")
    for shape_s in a.shapes:
        shape = parse_shape(shape_s)
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        y = np.empty_like(x)
        for b in a.backends:
            ks = {it: softgen.compile("sinkhorn", n_iter=it, target=a.target, backend=b) for it in a.iters}
            sm = softgen.compile("softmax", algorithm="two-pass", target=a.target, backend=b)
            variants = {f"softgen {it}": (lambda k=k: k(x, out=y)) for it, k in ks.items()}
            variants["softmax 2p"] = lambda: sm(x, out=y)
            variants["copy"] = lambda: np.copyto(y, x)
            variants.update({f"numpy {it}": (lambda it=it: sinkhorn_numpy(x, it)) for it in a.iters})
            if torch is not None:
                xt = torch.from_numpy(x)
                variants.update({f"torch {it}": (lambda it=it: sinkhorn_torch(torch, xt, it)) for it in a.iters})
            tm = time_interleaved(variants, budget=a.budget)
            copy_bw = gbps(8, x.size, tm["copy"].median)
            for it, k in ks.items():
                t = tm[f"softgen {it}"].median
                torch_r = f"{tm[f'torch {it}'].median / t:8.1f}x" if torch is not None else "      -"
                print(f"{shape_s:<11} {b:<7} {it:>6} {t / x.size * 1e9:7.3f} "
                      f"{gbps(k.plan.traffic()['bytes_per_element'], x.size, t):6.1f} "
                      f"{t / tm['softmax 2p'].median:12.2f}x {tm[f'numpy {it}'].median / t:8.1f}x {torch_r}")
            print(f"{shape_s:<11} {b:<7} {'copy':>6} {tm['copy'].median / x.size * 1e9:7.3f} {copy_bw:6.1f}")


if __name__ == "__main__":
    main()
