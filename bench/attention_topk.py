"""Top-k attention: softgen's streaming form against its three-phase form and the torch
composition, one thread, interleaved runs (issue 14).

    python bench/attention_topk.py [--lengths 1024 4096] [--topk 32 256] [--bh 8] [--d 64]
                                   [--rss 8192] [--rss-bh 1] [--json F]

B*H = 8 heads of d = 64, Lq = Lk = L, not causal, renormalize=True (softmax over the kept scores).
"softgen streaming": a running top-k per query row over the key blocks (the row op's insertion
network up to the target's topk_network_max_k, else radix select over a br x Lk score tile), then
k gathers of V rows; "softgen three-phase": S = s Q K^T materialised per (batch, head), the row
op's selection, dense P V; "torch composition": QK^T, torch.topk, softmax, a gather of the kept V
rows, a matmul (one head at a time: the gathered V of all heads is B*H*L*k*d floats, 2 GiB at
L = 4096, k = 256). Each implementation is checked against the torch composition first (max |diff|;
random inputs: a near tie at the k-th score may keep another key, so a large |diff| on few rows
is not an error). "x torch": the composition's time over the row's; "cpu ms": the least thread
CPU time of ``--cpu-rounds`` interleaved calls (less noisy than wall time on a loaded machine).

Memory (``--rss``, Lq = Lk = L, ``--rss-bh`` heads, k the first of ``--topk``): one fresh process
per implementation, each calling it once on one thread: the call's peak RSS above the RSS before
it ("call MiB", as bench/attention.py --rss measures), against the L x L score matrix ("S MiB").
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import call_peak, rss_rows, single_threaded, time_interleaved, torch_one_thread  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402

IMPLS = ("softgen streaming", "softgen three-phase", "torch composition")


def torch_topk_attention(torch, q, k, v, top_k: int):
    """QK^T, torch.topk, softmax over the kept scores, the kept V rows gathered, a matmul: per head."""
    out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype)
    for h in range(q.shape[0]):
        s = (q[h] @ k[h].transpose(-1, -2)) * q.shape[-1] ** -0.5
        val, idx = torch.topk(s, top_k, dim=-1)
        p = torch.softmax(val, dim=-1)
        out[h] = (p.unsqueeze(-2) @ v[h][idx]).squeeze(-2)
    return out


def cpu_times(variants: dict, rounds: int) -> dict:
    """The least thread CPU time of each variant over ``rounds`` interleaved calls: on a loaded
    machine less noisy than wall time (a call waiting for a core is not charged); one thread only."""
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - t0)
    return best


def kernel(alg: str, d: int, top_k: int):
    return softgen.compile("attention", normalizer="topk_softmax", top_k=top_k, head_dim=d, algorithm=alg)


def rss_child(impl: str, L: int, bh: int, d: int, top_k: int) -> None:
    """One memory measurement in a fresh process: a JSON line (the call's VmHWM, reset before it)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((bh, L, d)).astype(np.float32) for _ in range(3))
    if impl.startswith("softgen"):
        kern = kernel(impl.split()[1], d, top_k)
        out = np.empty_like(q)
        fn = (lambda: kern(q, k, v, out=out, threads=1)) if impl.endswith("streaming") else \
            (lambda: kern(q, k, v, out=out))
    else:
        torch = torch_one_thread()
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        fn = lambda: torch_topk_attention(torch, tq, tk, tv, top_k)  # noqa: E731
    print(json.dumps({"impl": impl, "L": L, "bh": bh, "top_k": top_k, **call_peak(fn)}))


def rss(lengths, bh: int, d: int, top_k: int, have_torch: bool) -> list[dict]:
    """Peak RSS per implementation and length, one subprocess each (``common.rss_rows``)."""
    return rss_rows(__file__, IMPLS, lengths, (bh, d, top_k), have_torch, bh,
                    f"{bh} head(s), d {d}, top_k {top_k}, Lq = Lk, 1 thread, a fresh process per row")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) == 7 and sys.argv[1] == "--rss-child":
        return rss_child(sys.argv[2], *(int(x) for x in sys.argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--topk", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--bh", type=int, default=8, help="batch x heads")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape")
    ap.add_argument("--cpu-rounds", type=int, default=5, help="interleaved calls of the thread CPU time column")
    ap.add_argument("--rss", type=int, nargs="*", default=[8192], help="lengths of the memory measurement")
    ap.add_argument("--rss-bh", type=int, default=1, help="heads of the memory measurement")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    torch = torch_one_thread()
    rng = np.random.default_rng(0)
    kernels = {(alg, kk): kernel(alg, a.d, kk) for alg in ("streaming", "three-phase") for kk in a.topk}
    target = next(iter(kernels.values())).target
    print(f"target {target.name} (topk_network_max_k {target.topk_network_max_k}), B*H {a.bh}, d {a.d}, 1 thread")
    rows = []
    for L in a.lengths:
        q, k, v = (rng.standard_normal((a.bh, L, a.d)).astype(np.float32) for _ in range(3))
        out = np.empty((a.bh, L, a.d), np.float32)
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v)) if torch is not None else (None,) * 3
        for kk in a.topk:
            variants = {"softgen streaming": lambda kk=kk: kernels["streaming", kk](q, k, v, out=out, threads=1),
                        "softgen three-phase": lambda kk=kk: kernels["three-phase", kk](q, k, v, out=out)}
            errs = {}
            if torch is not None:
                variants["torch composition"] = lambda kk=kk: torch_topk_attention(torch, tq, tk, tv, kk)
                want = variants["torch composition"]().numpy()
                for name in IMPLS[:2]:
                    variants[name]()
                    errs[name] = float(np.abs(out - want).max())
            t = time_interleaved(variants, budget=a.budget, min_rounds=3, max_rounds=10)
            cpu = cpu_times(variants, a.cpu_rounds)
            tt, ct = t.get("torch composition"), cpu.get("torch composition")
            for name, tm in t.items():
                rows.append({"L": L, "top_k": kk, "impl": name, "ms": tm.median * 1e3, "spread": tm.spread,
                             "vs_torch": tt.median / tm.median if tt else None, "cpu_ms": cpu[name] * 1e3,
                             "cpu_vs_torch": ct / cpu[name] if ct else None, "max_abs_diff": errs.get(name)})
    hdr = f"{'L':>6} {'top_k':>5}  {'impl':<20} {'ms':>9} {'IQR':>6} {'x torch':>8} {'cpu ms':>9} {'x torch':>8} {'|diff|':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        vt = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        ct = f"{r['cpu_vs_torch']:.2f}" if r["cpu_vs_torch"] else "-"
        df = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        print(f"{r['L']:>6} {r['top_k']:>5}  {r['impl']:<20} {r['ms']:>9.2f} {r['spread']:>6.1%} {vt:>8} "
              f"{r['cpu_ms']:>9.2f} {ct:>8} {df:>9}")
    mem = rss(a.rss, a.rss_bh, a.d, a.topk[0], torch is not None) if a.rss else []
    if a.json:
        from common import machine_info
        with open(a.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows, "bh": a.bh, "d": a.d, "target": target.name,
                       "topk_network_max_k": target.topk_network_max_k, "memory": mem, "rss_bh": a.rss_bh}, f, indent=1)


if __name__ == "__main__":
    main()
