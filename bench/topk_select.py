"""Top-k selection for any k (docs/ops.md §9): the insertion network against radix select at the same k,
and both against torch.topk + softmax, on the sparse router form (indices and weights of the k largest,
renormalized) and the dense form. Measures the crossover that targets/*.toml's topk_network_max_k
records: the network for k up to it, radix select above.

The radix variant is forced at small k through a copy of the target file with topk_network_max_k = 0
(SOFTGEN_TARGETS_PATH, a temporary directory): the same kernel otherwise. Medians of interleaved rounds
(softgen.benchmark), one thread; on a shared machine the ratios, not the times, are what to read.

    python bench/topk_select.py [--target avx512] [--rows 64] [--ns 256,1024,4096,32768]
                                [--ks 16,32,64,128,256] [--json out.json]
    python bench/topk_select.py --attention 1024 [--ks 16,32,128]   # top-k attention (B*H = 8, d = 64)

--attention L: top-k attention (three-phase: S, the top-k rows phase, P V) against softmax attention
(auto: streaming; and three-phase) and the torch composition (QK^T, topk, softmax, scatter, @ V).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, render_table, single_threaded, time_interleaved  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

import softgen  # noqa: E402
from softgen import reference as ref  # noqa: E402
from softgen._data import data_dir  # noqa: E402
from softgen.targets import all_targets, get_target  # noqa: E402


def radix_target(name: str, where: Path) -> str:
    """A copy of target ``name`` whose top-k always takes radix select: its name."""
    text = (data_dir("targets") / f"{name}.toml").read_text()
    forced = f"{name}_radix"
    lines = [f'name = "{forced}"' if ln.startswith("name = ") else "host_rank = 0" if ln.startswith("host_rank")
             else ln for ln in text.splitlines() if not ln.startswith("topk_network_max_k")]
    at = next(i for i, ln in enumerate(lines) if ln.startswith("["))   # before the first table
    lines.insert(at, "topk_network_max_k = 0")
    (where / f"{forced}.toml").write_text("\n".join(lines) + "\n")
    return forced


def attention_bench(target: str, length: int, ks: list[int]) -> list[dict]:
    """Top-k attention at B*H = 8, Lq = Lk = length, d = dv = 64, one thread."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((8, length, 64)).astype(np.float32) for _ in range(3))
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    kernels = {"softmax (auto)": softgen.compile("attention", target=target),
               "softmax three-phase": softgen.compile("attention", target=target, algorithm="three-phase")}
    for kk in ks:
        kernels[f"topk {kk}"] = softgen.compile("attention", normalizer="topk_softmax", top_k=kk, target=target)
    variants = {name: (lambda kern=kern: kern(q, k, v)) for name, kern in kernels.items()}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        for kk in ks:
            def composed(kk=kk):
                s = (tq @ tk.transpose(-1, -2)) * 0.125
                val, idx = torch.topk(s, kk, dim=-1)
                return torch.zeros_like(s).scatter_(-1, idx, torch.softmax(val, -1)) @ tv
            variants[f"torch topk {kk}"] = composed
    t = time_interleaved(variants, budget=0.5)
    base = t["softmax (auto)"].median
    rows = [{"variant": name, "L": length, "ms": tm.median * 1e3, "vs softmax": tm.median / base,
             "spread": tm.spread} for name, tm in t.items()]
    for kk in ks:
        if f"torch topk {kk}" in t:
            rows.append({"variant": f"torch/softgen topk {kk}", "L": length,
                         "vs softmax": t[f"torch topk {kk}"].median / t[f"topk {kk}"].median})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--ns", default="256,1024,4096,32768")
    ap.add_argument("--ks", default="16,32,64,128,256")
    ap.add_argument("--forms", default="sparse,dense")
    ap.add_argument("--json")
    ap.add_argument("--attention", type=int, default=0, help="time top-k attention at this length instead")
    a = ap.parse_args()
    target = get_target(a.target).name
    if a.attention:
        rows = attention_bench(target, a.attention, [int(x) for x in a.ks.split(",")])
        print(f"top-k attention, B*H = 8, Lq = Lk = {a.attention}, d = dv = 64, target {target}, one thread, "
              f"interleaved medians (a shared machine: read the ratios)\n")
        print(render_table(rows, [("variant", "variant", "s"), ("ms", "ms", ".2f"),
                                  ("vs softmax", "/ softmax auto (torch: torch / softgen)", ".2f"),
                                  ("spread", "noise", ".0%")]))
        if a.json:
            Path(a.json).write_text(json.dumps({"machine": machine_info(), "target": target, "results": rows},
                                               indent=1))
        return
    tmp = tempfile.TemporaryDirectory()
    os.environ["SOFTGEN_TARGETS_PATH"] = tmp.name
    all_targets.cache_clear()
    forced = radix_target(target, Path(tmp.name))
    all_targets.cache_clear()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    rows = []
    for form in a.forms.split(","):
        sparse = int(form == "sparse")
        for n in map(int, a.ns.split(",")):
            x = rng.standard_normal((a.rows, n)).astype(np.float32)
            for k in map(int, a.ks.split(",")):
                if k > n:
                    continue
                variants, kernels = {}, {}
                if k <= get_target(target).topk_network_max_k or k <= 64:
                    kernels["network"] = softgen.compile("topk_softmax", k=k, sparse=sparse, target=target)
                kernels["radix"] = softgen.compile("topk_softmax", k=k, sparse=sparse, target=forced)
                for name, kern in kernels.items():
                    got = kern(x)
                    expect = ref.topk_softmax_sparse(x, k) if sparse else ref.topk_softmax(x, k)
                    if sparse:
                        assert np.array_equal(got[0], expect[0]) and np.allclose(got[1], expect[1], rtol=1e-5)
                    else:
                        assert np.allclose(got, expect, rtol=1e-5, atol=1e-30)
                    variants[name] = (lambda kern=kern: kern(x))
                if torch is not None:
                    tx = torch.from_numpy(x)
                    if sparse:
                        def tsel(tx=tx, k=k):
                            v, i = torch.topk(tx, k, dim=-1)
                            return i, torch.softmax(v, dim=-1)
                    else:
                        def tsel(tx=tx, k=k):
                            v, i = torch.topk(tx, k, dim=-1)
                            return torch.zeros_like(tx).scatter_(-1, i, torch.softmax(v, dim=-1))
                    variants["torch"] = tsel
                t = time_interleaved(variants, budget=0.3)
                row = {"form": form, "n": n, "k": k}
                for name, tm in t.items():
                    row[f"{name}_us"] = tm.median * 1e6
                    row[f"{name}_spread"] = tm.spread
                best = min(("network", "radix"), key=lambda v: row.get(f"{v}_us", float("inf")))
                row["radix/network"] = row["radix_us"] / row["network_us"] if "network_us" in row else None
                row["torch/softgen"] = row["torch_us"] / row[f"{best}_us"] if "torch_us" in row else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    cols = [("form", "form", "s"), ("n", "n", "d"), ("k", "k", "d"), ("network_us", "network us", ".1f"),
            ("radix_us", "radix us", ".1f"), ("torch_us", "torch us", ".1f"),
            ("radix/network", "radix/network", ".2f"), ("torch/softgen", "torch/best softgen", ".2f")]
    table = render_table(rows, cols, group="form")
    print(f"\ntop-k selection, {a.rows} rows x n, target {target}, one thread, medians of interleaved rounds "
          f"(a shared machine: read the ratios)\n")
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine_info(), "target": target, "rows": a.rows,
                                            "results": rows}, indent=1))


if __name__ == "__main__":
    main()
