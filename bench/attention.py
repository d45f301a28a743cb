"""Softmax attention: softgen (streaming and three-phase) against torch's
``scaled_dot_product_attention``, one thread, interleaved runs (issue 14).

    python bench/attention.py [--lengths 256 1024 4096] [--bh 8] [--d 64] [--decode 4096] [--threads 1 2]
                              [--rss 8192] [--rss-bh 1] [--backend c tvm] [--json F]
                              [--normalizers softplus_l1 lssa lssar [--no-torch]]
                              [--stat min --min-time 0.001 --rounds 201] [--algorithms streaming]

B*H = 8 heads of d = 64, Lq = Lk = L in {256, 1024, 4096}, causal and not, and decoding (Lq = 1
against Lk = 4096). GFLOP/s count 4 Lq Lk d (QK^T and PV; causal: the visible half, 2 L (L + 1) d)
for every implementation alike. Each implementation is checked against torch's result first
(max |diff| printed). Threads: for each count T of ``--threads``, softgen streaming runs with
``threads=T`` (batch x heads x query chunks across the library's pool) and torch with
``torch.set_num_threads(T)`` (set before each call); "x torch" compares against torch at the same
T; the three-phase form runs on one thread. "% peak": GFLOP/s over T times the one-core FMA peak
of the target's ISA, measured by bench/fmapeak.py (a loop of independent FMAs). ``--backend``: the
softgen backends timed (default c; "softgen[tvm]" rows are the TVM backend's, "x c" their speed
over the C backend's streaming form at the same thread count, interleaved in the same rounds).

Memory (``--rss``, Lq = Lk = L per length, ``--rss-bh`` heads, not causal; measured after the timing,
so the memory the torch composition's process frees does not disturb it): one fresh subprocess
per implementation and length, each allocating q, k, v, then calling the implementation once on
one thread: "RSS before" the call, "call peak" the resident high-water mark during the call (reset
just before it), "call MiB" their difference (what the call held at its peak), against the L x L
score matrix of the heads ("S MiB"); "maxrss" the process's ru_maxrss (imports and compiling
included). softgen streaming allocates only the packed K^T (O(L d)); the
torch composition (Q K^T, softmax, . V) holds two L x L matrices; SDPA's CPU kernel is flash-style.

``--normalizers``: instead, those normalizers (softplus_l1, lssa, lssar) on the same shapes, one
thread, a table per ``--backend``: softgen's kernel (auto: the form it builds today), softgen's softmax
attention on the same shape ("/ softmax": time over softmax's; the issue aims at <= 1.3) and, with
torch (unless ``--no-torch``), the same formula composed of torch ops (QK^T, the normalizer, @V;
"x torch": its time over softgen's, the issue aims at >= 5), each checked against the composition
first. The decoding row (``--decode``: Lq = 1, causal) is the KV-cache step. ``--mask-keep F``: every
kernel (softmax's too) built with ``mask="bool"`` and called with a random keep-mask of that density.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import call_peak, rss_rows, single_threaded, time_interleaved, torch_one_thread  # noqa: E402
from fmapeak import peak as fma_peak, supported as fma_supported  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402


def flops(lq: int, lk: int, d: int, causal: bool) -> float:
    if not causal:
        return 4.0 * lq * lk * d
    visible = sum(min(lk, i + 1 + lk - lq) for i in range(lq) if i + 1 + lk - lq > 0)
    return 4.0 * visible * d


RSS_IMPLS = ("softgen streaming", "torch composition", "torch sdpa")


def rss_child(impl: str, L: int, bh: int, d: int) -> None:
    """One memory measurement (run in a fresh process by ``rss``): prints a JSON line. The call's
    peak is VmHWM after the call, the high-water mark reset just before it (/proc/self/clear_refs,
    Linux): imports and the compile step, which can peak higher than the call, do not mask it."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((bh, L, d)).astype(np.float32) for _ in range(3))
    if impl == "softgen streaming":
        kern = softgen.compile("attention", head_dim=d, algorithm="streaming")
        out = np.empty_like(q)
        fn = lambda: kern(q, k, v, out=out, threads=1)  # noqa: E731
    else:
        import torch
        torch.set_num_threads(1)
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
        if impl == "torch sdpa":
            fn = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)  # noqa: E731
        else:
            fn = lambda: torch.softmax(tq @ tk.transpose(-1, -2) * d ** -0.5, dim=-1) @ tv  # noqa: E731
    print(json.dumps({"impl": impl, "L": L, "bh": bh, **call_peak(fn)}))


def rss(lengths, bh: int, d: int, have_torch: bool) -> list[dict]:
    """Peak RSS per implementation and length, one subprocess each (``common.rss_rows``)."""
    return rss_rows(__file__, RSS_IMPLS, lengths, (bh, d), have_torch, bh,
                    f"{bh} head(s), d {d}, Lq = Lk, not causal, 1 thread, a fresh process per row")


def main(argv=None) -> None:
    if argv is None and len(sys.argv) == 6 and sys.argv[1] == "--rss-child":
        return rss_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="*", default=[256, 1024, 4096])
    ap.add_argument("--bh", type=int, default=8, help="batch x heads")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--decode", type=int, default=4096, help="Lk of the decoding shape (Lq = 1); 0: skip")
    ap.add_argument("--decode-bh", type=int, nargs="*", default=[],
                    help="also the decoding shape with these batch x heads (e.g. 1 2: fewer heads than threads, "
                         "where split decoding's key chunks fill the threads)")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per shape")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (softgen streaming, torch)")
    ap.add_argument("--rss", type=int, nargs="*", default=[8192], help="lengths of the memory measurement (none: skip)")
    ap.add_argument("--rss-bh", type=int, default=1, help="heads of the memory measurement")
    ap.add_argument("--backend", nargs="+", default=["c"], choices=["c", "tvm"], help="softgen backends")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="per-implementation statistic (min: of single calls, with --min-time small; on a loaded machine)")
    ap.add_argument("--min-time", type=float, default=0.02, help="seconds per timing sample")
    ap.add_argument("--rounds", type=int, default=15, help="at most this many interleaved rounds")
    ap.add_argument("--algorithms", nargs="+", default=["streaming", "three-phase"], choices=["streaming", "three-phase"])
    ap.add_argument("--normalizers", nargs="+", choices=list(COMPOSED), help="bench these normalizers instead")
    ap.add_argument("--mask-keep", type=float, default=0.0,
                    help="--normalizers: every kernel with a bool keep-mask keeping this fraction of the keys at random "
                         "(0: no mask)")
    ap.add_argument("--no-torch", action="store_true",
                    help="--normalizers: skip the torch compositions (L = 4096: L x L matrices per head)")
    a = ap.parse_args(argv)
    if a.normalizers:
        return normalizers(a)
    torch = torch_one_thread()
    sdpa = torch.nn.functional.scaled_dot_product_attention if torch is not None else None
    rng = np.random.default_rng(0)
    shapes = [(L, L, c, a.bh) for L in a.lengths for c in (False, True)]
    if a.decode:
        shapes += [(1, a.decode, True, bh) for bh in [a.bh] + [b for b in a.decode_bh if b != a.bh]]
    label = {"c": "softgen", "tvm": "softgen[tvm]"}
    kernels = {(be, alg): {c: softgen.compile("attention", head_dim=a.d, causal=c, algorithm=alg, backend=be)
                           for c in (False, True)}
               for be in a.backend for alg in a.algorithms}
    isa = next(iter(kernels.values()))[False].target.name
    peak = fma_peak(isa, 0.5) if isa in ("avx512", "avx2") and fma_supported(isa) else None
    print(f"target {isa}; FMA peak {peak:.1f} GFLOP/s per core (bench/fmapeak.py)" if peak else
          f"target {isa}: no FMA peak measured")
    rows = []
    for lq, lk, causal, bh in shapes:
        q = rng.standard_normal((bh, lq, a.d)).astype(np.float32)
        k = rng.standard_normal((bh, lk, a.d)).astype(np.float32)
        v = rng.standard_normal((bh, lk, a.d)).astype(np.float32)
        out = np.empty((bh, lq, a.d), np.float32)
        variants = {}
        for (be, alg), ks in kernels.items():
            kern = ks[causal]
            if alg == "streaming":
                for nt in a.threads:
                    variants[f"{label[be]} {alg} t{nt}"] = (lambda kern=kern, nt=nt: kern(q, k, v, out=out, threads=nt))
            else:
                variants[f"{label[be]} {alg} t1"] = (lambda kern=kern: kern(q, k, v, out=out))
        ref = None
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
            # torch's is_causal is top-left aligned; bottom-right (KV cache) is an explicit mask
            mask = None
            if causal:
                i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
                mask = torch.from_numpy(j <= i + lk - lq)
            with torch.no_grad():
                ref = sdpa(tq, tk, tv, attn_mask=mask).numpy() if lq != lk or not causal else \
                    sdpa(tq, tk, tv, is_causal=True).numpy()
            for nt in a.threads:
                if lq != lk or not causal:
                    variants[f"torch sdpa t{nt}"] = (lambda nt=nt: (torch.set_num_threads(nt),
                                                                    sdpa(tq, tk, tv, attn_mask=mask)))
                else:
                    variants[f"torch sdpa t{nt}"] = (lambda nt=nt: (torch.set_num_threads(nt),
                                                                    sdpa(tq, tk, tv, is_causal=True)))
        errs = {}
        if ref is not None:
            for name, fn in variants.items():
                if name.startswith("softgen"):
                    fn()
                    errs[name] = float(np.abs(out - ref).max())
        t = time_interleaved(variants, budget=a.budget, min_rounds=5, max_rounds=a.rounds, min_time=a.min_time)
        if a.stat == "min":
            t = {k: replace(tm, median=tm.min) for k, tm in t.items()}
        fl = flops(lq, lk, a.d, causal) * bh
        for name, tm in t.items():
            nt = int(name.rsplit(" t", 1)[1])
            tt = t.get(f"torch sdpa t{nt}")
            tc = t.get(f"softgen streaming t{nt}") if name.startswith("softgen[tvm] streaming") else None
            gf = fl / tm.median / 1e9
            rows.append({"Lq": lq, "Lk": lk, "causal": causal, "bh": bh, "impl": name, "threads": nt, "ms": tm.median * 1e3,
                         "gflops": gf, "peak_fraction": gf / (nt * peak) if peak else None, "spread": tm.spread,
                         "vs_torch": (tt.median / tm.median) if tt else None, "max_abs_diff": errs.get(name),
                         "vs_c": (tc.median / tm.median) if tc else None})
    # the memory rows last: their torch composition frees GiBs as its process ends, and the shape timed
    # right after that (L = 256, t2) lost its second core for a while (quiet2: SDPA and softgen alike)
    mem = rss(a.rss, a.rss_bh, a.d, torch is not None) if a.rss else []
    hdr = f"{'Lq':>5} {'Lk':>5} {'causal':>6}  {'impl':<27} {'ms':>9} {'GFLOP/s':>8} {'% peak':>6} {'IQR':>6} " \
          f"{'x torch':>8} {'x c':>6} {'|diff|':>9}"
    if rows:
        print(hdr)
        print("-" * len(hdr))
    for r in rows:
        vt = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        df = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        pk = f"{r['peak_fraction']:.1%}" if r["peak_fraction"] else "-"
        vc = f"{r['vs_c']:.2f}" if r["vs_c"] else "-"
        impl = r["impl"] + (f" bh{r['bh']}" if r["bh"] != a.bh else "")   # --decode-bh rows
        print(f"{r['Lq']:>5} {r['Lk']:>5} {str(r['causal']):>6}  {impl:<27} {r['ms']:>9.3f} {r['gflops']:>8.2f} "
              f"{pk:>6} {r['spread']:>6.1%} {vt:>8} {vc:>6} {df:>9}")
    if a.json:
        from common import machine_info
        with open(a.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows, "bh": a.bh, "d": a.d, "target": isa,
                       "fma_peak_gflops_per_core": peak, "threads": a.threads, "backends": a.backend,
                       "memory": mem, "rss_bh": a.rss_bh}, f, indent=1)


# -- softplus_l1, lssa, lssar (docs/ops.md §5, §10) against softmax attention and torch compositions --------

def _softplus_l1_torch(torch, q, k, v, keep, p, ofr):
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    w = torch.nn.functional.softplus(s.masked_fill(~keep, -float("inf")))
    return (w / w.sum(-1, keepdim=True)) @ v


def _lssa_weights_torch(torch, q, k, keep):
    fn = torch.nn.functional
    c = fn.normalize(q, dim=-1) @ fn.normalize(k, dim=-1).transpose(-1, -2)
    n = keep.sum(-1, keepdim=True).to(q.dtype)
    a = fn.softplus(c * (np.log(q.shape[-1]) * torch.log(n))) * keep
    return a / a.sum(-1, keepdim=True), n


def _lssa_torch(torch, q, k, v, keep, p, ofr):
    return _lssa_weights_torch(torch, q, k, keep)[0] @ v


def _lssar_torch(torch, q, k, v, keep, p, ofr):
    a, n = _lssa_weights_torch(torch, q, k, keep)
    lq, lk = keep.shape[-2:]
    o = torch.from_numpy((np.arange(lq) + lk - lq >= ofr).astype(np.float32))[:, None]
    r = torch.relu(n * a - o)
    rmax = r.amax(-1, keepdim=True)
    r = torch.where(rmax > 0, r / rmax, torch.zeros_like(r)) ** p
    tot = r.sum(-1, keepdim=True)
    return torch.where(tot > 0, r / tot, torch.zeros_like(r)) @ v


COMPOSED = {"softplus_l1": _softplus_l1_torch, "lssa": _lssa_torch, "lssar": _lssar_torch}


def normalizers(a) -> None:
    """The --normalizers tables (one thread), one per --backend."""
    torch = None if a.no_torch else torch_one_thread("no torch compositions")
    rows = []
    for be in a.backend:
        rows += normalizers_table(a, be, torch)
    if a.json:
        from common import machine_info
        with open(a.json, "w") as f:
            json.dump({"machine": machine_info(), "rows": rows, "bh": a.bh, "d": a.d, "threads": 1}, f, indent=1)


def normalizers_table(a, be: str, torch) -> list[dict]:
    """One backend's --normalizers table: its normalizers' kernels and its softmax's, timed interleaved."""
    rng = np.random.default_rng(0)
    shapes = [(L, L, c) for L in a.lengths for c in (False, True)] + ([(1, a.decode, True)] if a.decode else [])
    mk = {"mask": "bool"} if a.mask_keep else {}
    soft = {c: softgen.compile("attention", head_dim=a.d, causal=c, backend=be, **mk) for c in (False, True)}
    kern = {(nm, c): softgen.compile("attention", normalizer=nm, head_dim=a.d, causal=c, backend=be, **mk)
            for nm in a.normalizers for c in (False, True)}
    print(f"target {soft[False].target.name}, backend {be}; one thread; B*H = {a.bh}, d = dv = {a.d}; "
          f"softmax attention: {soft[False].algorithm}"
          + (f"; a bool keep-mask keeping {a.mask_keep:.0%} of the keys" if a.mask_keep else ""))
    rows = []
    for lq, lk, causal in shapes:
        q, k, v = (rng.standard_normal((a.bh, n, a.d)).astype(np.float32) for n in (lq, lk, lk))
        out = np.empty((a.bh, lq, a.d), np.float32)
        keep = np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq if causal else np.ones((lq, lk), bool)
        m = (rng.random((a.bh, lq, lk)) < a.mask_keep,) if a.mask_keep else ()
        if m:
            keep = keep & m[0]
        variants = {"softmax": lambda: soft[causal](q, k, v, *m, out=out, threads=1)}
        errs = {}
        for nm in a.normalizers:
            kn = kern[(nm, causal)]
            variants[nm] = (lambda kn=kn: kn(q, k, v, *m, out=out, threads=1)) if kn.algorithm == "streaming" else \
                (lambda kn=kn: kn(q, k, v, *m, out=out))
            if torch is not None:
                tq, tk, tv, tkeep = (torch.from_numpy(x) for x in (q, k, v, keep))
                fn = COMPOSED[nm]
                ref = fn(torch, tq, tk, tv, tkeep, 15.0, 3).numpy()
                variants[nm]()
                errs[nm] = float(np.nanmax(np.abs(out - ref)))
                variants[f"{nm} torch"] = (lambda fn=fn, tq=tq, tk=tk, tv=tv, tkeep=tkeep:
                                           fn(torch, tq, tk, tv, tkeep, 15.0, 3))
        t = time_interleaved(variants, budget=a.budget, min_rounds=5, max_rounds=15)
        for nm in a.normalizers:
            tc = t.get(f"{nm} torch")
            rows.append({"backend": be, "Lq": lq, "Lk": lk, "causal": causal, "normalizer": nm,
                         "form": kern[(nm, causal)].algorithm,
                         "ms": t[nm].median * 1e3, "spread": t[nm].spread, "softmax_ms": t["softmax"].median * 1e3,
                         "over_softmax": t[nm].median / t["softmax"].median,
                         "torch_ms": tc.median * 1e3 if tc else None,
                         "vs_torch": tc.median / t[nm].median if tc else None, "max_abs_diff": errs.get(nm)})
    hdr = f"{'Lq':>5} {'Lk':>5} {'causal':>6}  {'normalizer':<12} {'form':<11} {'ms':>9} {'IQR':>6} " \
          f"{'softmax ms':>10} {'/ softmax':>9} {'torch ms':>9} {'x torch':>8} {'|diff|':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        tm = f"{r['torch_ms']:.3f}" if r["torch_ms"] else "-"
        vt = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        df = f"{r['max_abs_diff']:.1e}" if r["max_abs_diff"] is not None else "-"
        print(f"{r['Lq']:>5} {r['Lk']:>5} {str(r['causal']):>6}  {r['normalizer']:<12} {r['form']:<11} {r['ms']:>9.3f} "
              f"{r['spread']:>6.1%} {r['softmax_ms']:>10.3f} {r['over_softmax']:>9.2f} {tm:>9} {vt:>8} {df:>9}")
    print()
    return rows


if __name__ == "__main__":
    main()
