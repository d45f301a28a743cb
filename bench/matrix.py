"""Matrix ops against the straightforward NumPy (and PyTorch, when installed) a researcher would
write, in interleaved runs; single-threaded everywhere.

    python bench/matrix.py [--ops sinkhorn gaussian newton] [--backends c tvm]
    python bench/matrix.py --ops sinkhorn [--shapes 2048x2048 8x256x256] [--iters 1 3 5]
    python bench/matrix.py --ops gaussian newton [--heads 8] [--newton-m 49 64 128]

* sinkhorn: also softgen's own two-pass softmax on the same shape and a streaming copy (the memory
  bandwidth). Effective GB/s use the kernel's memory-traffic model (softgen explain): Sinkhorn
  with n_iter half-steps reads the matrix ceil((n_iter + 1) / 2) times from memory and writes it
  once; the second sweep of each fused rows phase reads the row from cache.
* gaussian (SOFT's K1): 4096 points against 64 landmarks, d = 64, one head and ``--heads``
  heads; GFLOP/s count the Gram product (2 n m d), the rest is O(n m).
* newton (SOFT's K2^+): ``--heads`` landmark kernels of m x m, 20 iterations, both variants;
  GFLOP/s count the contractions (softgen's own formula, 80 m^3 per matrix, +2 m^3 for "norm"'s
  A A), the same products NumPy and PyTorch compute.
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


def gaussian_numpy(a, b, head_dim):
    """SOFT's kernel as the formula: squared norms, Gram product, exp (float32 throughout)."""
    d2 = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * (a @ np.swapaxes(b, -1, -2))
    return np.exp(-np.maximum(d2, 0) * np.float32(1 / (2 * np.sqrt(head_dim))))


def gaussian_torch(torch, a, b, head_dim):
    d2 = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * (a @ b.transpose(-1, -2))
    return torch.exp(-d2.clamp_min(0) / (2 * np.sqrt(head_dim)))


def newton_numpy(a, n_iter=20, variant="soft", mod=np):
    """SOFT/kernel/inverse.py (soft) and SOFT-Norm's newton_inv (norm, per-matrix alpha, the
    halving loop as written), float32, for NumPy (``mod=np``) or PyTorch tensors (``mod=torch``)."""
    m = a.shape[-1]
    eye = mod.eye(m, dtype=a.dtype) if mod is np else mod.eye(m)
    rows = mod.abs(a).sum(-1).max(-1)
    rows = rows.values if hasattr(rows, "values") else rows
    if variant == "soft":
        p = a + 0.01 * eye
        v = (0.9 * 2 / rows ** 2)[..., None, None] * p
    else:
        p = a
        alpha = (2 / rows ** 2)[..., None, None]
        for _ in range(10):
            norm = mod.abs(eye - a @ (alpha * a)).sum(-2).max(-1)
            norm = norm.values if hasattr(norm, "values") else norm
            if bool((norm <= 1.01).all()):
                break
            alpha = mod.where((norm <= 1.01)[..., None, None], alpha, alpha / 2)
        v = alpha * a
    for _ in range(n_iter):
        v = 2 * v - v @ p @ v
    return v


def parse_shape(s: str) -> tuple[int, ...]:
    return tuple(int(d) for d in s.lower().split("x"))


def _k2(rng, heads, m):
    q = rng.standard_normal((heads, m, 64)).astype(np.float32) * 0.3
    return softgen.gaussian_kernel(q, q, 64)


def bench_soft(a, torch, rng) -> None:
    from softgen.analysis import matrix_flops
    print(f"\n{'op':<14} {'shape':<22} {'backend':<7} {'us/call':>9} {'GFLOP/s':>8} {'vs numpy':>9} "
          f"{'vs torch':>9}")
    if "gaussian" in a.ops:
        for heads in sorted({1, a.heads}):
            x = rng.standard_normal((heads, 4096, 64)).astype(np.float32)
            lm = rng.standard_normal((heads, 64, 64)).astype(np.float32)
            out = np.empty((heads, 4096, 64), np.float32)
            ks = {b: softgen.compile("gaussian_kernel", head_dim=64, target=a.target, backend=b)
                  for b in a.backends}
            variants = {b: (lambda k=k: k(x, lm, out=out)) for b, k in ks.items()}
            variants["numpy"] = lambda: gaussian_numpy(x, lm, 64)
            if torch is not None:
                xt, lt = torch.from_numpy(x), torch.from_numpy(lm)
                variants["torch"] = lambda: gaussian_torch(torch, xt, lt, 64)
            for k in ks.values():   # the benchmarked kernels compute the same thing
                assert np.allclose(k(x, lm), gaussian_numpy(x, lm, 64), rtol=1e-4, atol=1e-6)
            tm = time_interleaved(variants, budget=a.budget)
            flops = 2 * heads * 4096 * 64 * 64
            _rows("gaussian", f"{heads}x4096x64 @ 64x64", ks, tm, flops)
    if "newton" in a.ops:
        for variant in ("soft", "norm"):
            for m in a.newton_m:
                x = _k2(rng, a.heads, m)
                out = np.empty_like(x)
                ks = {b: softgen.compile("newton_pinv", n_iter=20, variant=variant, target=a.target,
                                         backend=b) for b in a.backends}
                variants = {b: (lambda k=k: k(x, out=out)) for b, k in ks.items()}
                variants["numpy"] = lambda: newton_numpy(x, 20, variant)
                if torch is not None:
                    xt = torch.from_numpy(x)
                    variants["torch"] = lambda: newton_numpy(xt, 20, variant, torch)
                want = newton_numpy(x.astype(np.float64), 20, variant)
                for k in ks.values():
                    assert np.abs(k(x) - want).max() <= 1e-3 * np.abs(want).max()
                tm = time_interleaved(variants, budget=a.budget)
                flops = a.heads * matrix_flops(next(iter(ks.values())).program, {"m": m})
                _rows(f"newton {variant}", f"{a.heads}x{m}x{m}, 20 it", ks, tm, flops)


def _rows(op, shape, ks, tm, flops) -> None:
    base = {"numpy": tm["numpy"].median, "torch": tm["torch"].median if "torch" in tm else None}
    for b in list(ks) + [n for n in ("numpy", "torch") if n in tm]:
        t = tm[b].median
        vs = lambda ref: f"{ref / t:8.2f}x" if ref else "       -"  # noqa: E731
        print(f"{op:<14} {shape:<22} {b:<7} {t * 1e6:9.1f} {flops / t / 1e9:8.1f} {vs(base['numpy'])} "
              f"{vs(base['torch'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", nargs="+", default=["sinkhorn", "gaussian", "newton"],
                    choices=["sinkhorn", "gaussian", "newton"])
    ap.add_argument("--shapes", nargs="+", default=["2048x2048", "8x256x256", "512x4096"])
    ap.add_argument("--iters", nargs="+", type=int, default=[1, 3, 5])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--newton-m", nargs="+", type=int, default=[49, 64, 128])
    ap.add_argument("--target", default="host")
    ap.add_argument("--backends", nargs="+", default=list(softgen.backends.names()))
    ap.add_argument("--budget", type=float, default=1.0)
    a = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    if "sinkhorn" in a.ops:
        bench_sinkhorn(a, torch, rng)
    if {"gaussian", "newton"} & set(a.ops):
        bench_soft(a, torch, rng)


def bench_sinkhorn(a, torch, rng) -> None:
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
