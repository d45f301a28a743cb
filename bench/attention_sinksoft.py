"""Sinkhorn and SOFT attention: softgen against the same formulas composed of torch ops, one
thread, interleaved runs (issue 14).

    python bench/attention_sinksoft.py [--lengths 1024 4096] [--soft-lengths 1024 4096 8192]
                                       [--bh 8] [--d 64] [--n-iter 3] [--landmarks 49] [--json F]
                                       [--clock wall|thread] [--rounds 21]
    python bench/attention_sinksoft.py --old /path/to/old/tree [--soft-lengths 4096] [--rounds 21]

Sinkhorn (n_iter = 3, eps = 1): softgen's blocked kernel (S = s Q K^T in a per-matrix scratch,
the Sinkhorn half-steps in place, O = P V) against Sinkformers' composition in torch (C = s Q K^T;
log-domain potentials, rows first, each half-step a logsumexp over the full matrix;
P = exp(C + u + v) n_k; P V), as michaelsdr/sinkformers' sinkhorn.py writes it. SOFT (landmarks
pooled from the tokens, 20 Newton-Schulz steps): softgen's linear kernel (landmarks=m: it pools
them itself, as softgen.attention's kernels do) against SOFT's composition in torch (Gaussian kernels through
|q|^2 + |l|^2 - 2 q.l, SOFT/kernel/inverse.py's iteration, K1 (K2^+ (K1^T V))), self-attention
(k = q) as in the paper: softgen's tied form (tied=1, what softgen.attention picks when k is q:
one L x m x d GEMM fewer) and, for comparison, the untied one (k read as a separate input);
"linear" is time(L) / time(L / 2) (2 for a linear cost). Each softgen
result is checked against torch's first (max |diff| printed). The machine's other jobs make
single runs noisy: read the ratios of one interleaved run, not the absolute times; ``--clock
thread`` times single calls by the calling thread's CPU time (everything runs on one thread), which
does not count the time the machine's other jobs took the core away (still not the cache they evict).
``--old TREE``: an A/B of SOFT's pooled kernels (tied and untied) of that softgen tree and this one,
each exported by ``python -m softgen build`` with its tree on PYTHONPATH, called through ctypes on
the same arrays (outputs compared bitwise), thread CPU time in alternating rounds.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_ab import call, thread_times  # noqa: E402
from common import single_threaded, time_interleaved, torch_one_thread  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402
from softgen import reference as ref  # noqa: E402


def torch_sinkformer(torch, q, k, v, n_iter: int, eps: float = 1.0):
    """Sinkformers' attention in torch ops (rows first, log domain, output x n_k)."""
    c = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    nq, nk = c.shape[-2:]
    u = torch.zeros(c.shape[:-1])
    w = torch.zeros(c.shape[:-2] + (nk,))
    for t in range(n_iter):
        m = (c + u[..., :, None] + w[..., None, :]) / eps
        if t % 2 == 0:
            u = eps * (-math.log(nq) - torch.logsumexp(m, -1)) + u
        else:
            w = eps * (-math.log(nk) - torch.logsumexp(m, -2)) + w
    return (torch.exp((c + u[..., :, None] + w[..., None, :]) / eps) * nk) @ v


def torch_soft(torch, q, v, m: int, n_iter: int = 20):
    """SOFT's self-attention in torch ops: Q / d^(1/4), landmarks by adaptive average pooling,
    Gaussian kernels exp(-|a - b|^2 / 2), SOFT/kernel/inverse.py's Newton-Schulz, right to left."""
    x = q / q.shape[-1] ** 0.25
    lm = torch.nn.functional.adaptive_avg_pool1d(x.transpose(-1, -2), m).transpose(-1, -2)

    def kern(a, b):
        d2 = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2 * a @ b.transpose(-1, -2)
        return torch.exp(-0.5 * d2.clamp_min(0))
    k1, k2 = kern(x, lm), kern(lm, lm)
    p = k2 + 0.01 * torch.eye(m)
    alpha = 0.9 * 2 / k2.sum(-1).amax(-1) ** 2               # inverse.py: per matrix, from K2 row sums
    vv = alpha[..., None, None] * p
    for _ in range(n_iter):
        vv = 2 * vv - vv @ (p @ vv)
    return k1 @ (vv @ (k1.transpose(-1, -2) @ v))


def export_soft(tree: str, name: str, out: str, d: int, m: int, tied: bool):
    """SOFT's pooled kernel of the softgen at ``tree`` (its own cache), as a ctypes function."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), SOFTGEN_CACHE_DIR=os.path.join(out, "cache-" + name))
    cmd = [sys.executable, "-m", "softgen", "build", "--op", "attention", "--normalizer", "soft", "--param",
           f"head_dim={d}", "--param", f"landmarks={m}", "--name", name, "-o", out] + (["--param", "tied=1"] if tied else [])
    subprocess.run(cmd, check=True, env=env, cwd=os.path.abspath(tree), capture_output=True)
    fn = ctypes.CDLL(os.path.join(out, f"lib{name}.so"))[name]
    fn.restype = ctypes.c_int
    return fn


def ab(a) -> None:
    """--old: old/new thread CPU time of SOFT's pooled kernels, tied and untied."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="softab-") as out:
        fns = {(tag, tied): export_soft(tree, f"soft_{tag}_{int(tied)}", out, a.d, a.landmarks, tied)
               for tag, tree in (("old", a.old), ("new", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))) for tied in (True, False)}
        print(f"{'L':>6} {'tied':>5} {'old ms':>9} {'new ms':>9} {'old/new':>8} {'IQR old':>8} {'IQR new':>8} {'min o/n':>8}")
        for L in [x for x in a.soft_lengths if x > 0]:
            q, v = (rng.standard_normal((a.bh, L, a.d)).astype(np.float32) for _ in range(2))
            for tied in (True, False):
                outs = {tag: np.empty((a.bh, L, a.d), np.float32) for tag in ("old", "new")}
                fn = {tag: (lambda tag=tag: call(fns[tag, tied], q, q, v, outs[tag], 1)) for tag in outs}
                assert all(f() == 0 for f in fn.values())
                assert np.array_equal(outs["old"], outs["new"]), "old and new differ"
                t = thread_times(fn, a.rounds)
                print(f"{L:>6} {str(tied):>5} {t['old'].median * 1e3:>9.3f} {t['new'].median * 1e3:>9.3f} "
                      f"{t['old'].median / t['new'].median:>8.3f} {t['old'].spread:>8.1%} {t['new'].spread:>8.1%} "
                      f"{t['old'].min / t['new'].min:>8.3f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096], help="Sinkhorn's L (0: none)")
    ap.add_argument("--soft-lengths", type=int, nargs="+", default=[1024, 4096, 8192], help="SOFT's L (0: none)")
    ap.add_argument("--bh", type=int, default=8, help="batch x heads")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n-iter", type=int, default=3, help="Sinkhorn half-steps")
    ap.add_argument("--landmarks", type=int, default=ref.SOFT_LANDMARKS)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: the calling thread's CPU time per single call, in alternating rounds")
    ap.add_argument("--rounds", type=int, default=21, help="--clock thread: calls per variant")
    ap.add_argument("--old", help="A/B: SOFT's kernels of this softgen tree (e.g. main's checkout) against this one")
    a = ap.parse_args(argv)
    if a.old:
        return ab(a)
    torch = torch_one_thread()
    rng = np.random.default_rng(0)
    sk = softgen.compile("attention", normalizer="sinkhorn", head_dim=a.d, n_iter=a.n_iter)
    so = softgen.compile("attention", normalizer="soft", head_dim=a.d, landmarks=a.landmarks)
    st = softgen.compile("attention", normalizer="soft", head_dim=a.d, tied=1, landmarks=a.landmarks)   # k is q
    print(f"target {sk.target.name}; B*H = {a.bh}, d = dv = {a.d}; one thread")
    rows = []

    def run(kind, L, variants, check):
        errs = {}
        if check is not None:
            for name, fn in variants.items():
                if name.startswith("softgen"):
                    errs[name] = float(np.abs(fn() - check).max())
        t = thread_times(variants, a.rounds) if a.clock == "thread" else \
            time_interleaved(variants, budget=a.budget, min_rounds=5, max_rounds=15)
        tt = t.get("torch")
        for name, tm in t.items():
            rows.append({"op": kind, "L": L, "impl": name, "ms": tm.median * 1e3, "spread": tm.spread,
                         "vs_torch": (tt.median / tm.median) if tt else None, "max_abs_diff": errs.get(name)})

    for L in [x for x in a.lengths if x > 0]:
        q, k, v = (rng.standard_normal((a.bh, L, a.d)).astype(np.float32) for _ in range(3))
        out = np.empty((a.bh, L, a.d), np.float32)
        variants = {"softgen sinkhorn": lambda: sk(q, k, v, out=out)}
        check = None
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
            with torch.no_grad():
                check = torch_sinkformer(torch, tq, tk, tv, a.n_iter).numpy()
            variants["torch"] = lambda: torch_sinkformer(torch, tq, tk, tv, a.n_iter)
        run(f"sinkhorn n_iter={a.n_iter}", L, variants, check)
    for L in [x for x in a.soft_lengths if x > 0]:
        q, v = (rng.standard_normal((a.bh, L, a.d)).astype(np.float32) for _ in range(2))
        out = np.empty((a.bh, L, a.d), np.float32)
        variants = {"softgen soft tied": lambda: st(q, q, v, out=out), "softgen soft untied": lambda: so(q, q, v, out=out)}
        check = None
        if torch is not None:
            tq, tv = torch.from_numpy(q), torch.from_numpy(v)
            with torch.no_grad():
                check = torch_soft(torch, tq, tv, a.landmarks).numpy()
            variants["torch"] = lambda: torch_soft(torch, tq, tv, a.landmarks)
        run(f"soft m={a.landmarks}", L, variants, check)
    prev = {}
    hdr = f"{'op':<18} {'L':>6}  {'impl':<20} {'ms':>9} {'IQR':>6} {'x torch':>8} {'linear':>7} {'|diff|':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        key = (r["op"], r["impl"])
        p = prev.get(key)
        r["vs_half_length"] = r["ms"] / p["ms"] if p and r["L"] == 2 * p["L"] else None
        prev[key] = r
        vt = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        lin = f"{r['vs_half_length']:.2f}" if r["vs_half_length"] else "-"
        df = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        print(f"{r['op']:<18} {r['L']:>6}  {r['impl']:<20} {r['ms']:>9.2f} {r['spread']:>6.1%} {vt:>8} {lin:>7} {df:>9}")
    if a.json:
        from common import machine_info
        with open(a.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows, "bh": a.bh, "d": a.d, "target": sk.target.name,
                       "n_iter": a.n_iter, "landmarks": a.landmarks, "clock": a.clock}, f, indent=1)


if __name__ == "__main__":
    main()
