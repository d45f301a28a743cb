"""Softmax benchmark: softgen algorithms x targets vs NumPy, PyTorch and a streaming copy.

    python bench/softmax.py                 # full matrix (see SIZES_FULL), peers, call overhead
    python bench/softmax.py --quick         # a few sizes, fewer rounds (~1 min)
    python bench/softmax.py --sizes 1M 2048x1024 --algorithms two-pass online --targets avx2
    python bench/softmax.py --sweep         # schedule sweep (unroll x accumulators), avx2
    python bench/softmax.py --json out.json

Library use (a future ``softgen bench``): ``rows = run(Config(...))``, ``print(format_table(rows))``;
``sweep(config)`` for the schedule sweep; ``summary(rows)`` checks the issue's targets.

Everything is single-threaded: the thread env vars are set before NumPy/PyTorch are imported and
``torch.set_num_threads(1)``. For one size, all variants share the same input ``x`` and output
``y`` buffers and are timed in interleaved rounds (bench/common.py). softgen is timed as
``k(x, out=y)``, NumPy as max / subtract / exp / sum / divide into the preallocated ``y``, PyTorch
as ``torch.softmax(x, -1, out=y)`` on tensors that share the NumPy buffers, and the copy as
the generated streaming copy (``softgen.benchmark.CopyKernel``, ``templates/copy.c.j2``).

GB/s counts each implementation's traffic per element (f32, no write-allocate):
softgen: from ``Kernel.plan.traffic()`` (3pc 16, 3pl 20, 2p 12, online 12 B/element);
NumPy: 32 B assumed (max 1R | x-m 1R1W | exp 1R1W | sum 1R | divide 1R1W = 5R+3W);
PyTorch: 24 B assumed (ATen _vec_softmax_lastdim: max 1R | exp->y 1R1W | sum y 1R | scale y 1R1W);
copy: 8 B (1R+1W).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from dataclasses import asdict, dataclass, field

try:  # as part of a package (bench.softmax) or as a script (python bench/softmax.py)
    from . import common
except ImportError:
    import common

common.single_threaded()

import numpy as np  # noqa: E402

import softgen  # noqa: E402
from softgen.benchmark import _ns, _pct, _x  # noqa: E402  (the table cells of softgen bench)

ALGORITHMS = ("three-pass-recompute", "three-pass-reload", "two-pass", "online")
SHORT = {"three-pass-recompute": "3pc", "three-pass-reload": "3pl", "two-pass": "2p", "online": "online"}
TARGETS = ("scalar", "avx2")
SIZES_FULL = ("1K", "16K", "256K", "1M", "4M", "16M", "64M", "8192x128", "2048x1024", "512x4096")
SIZES_QUICK = ("1K", "256K", "4M", "2048x1024")
NUMPY_BYTES = 32   # assumed: 5R + 3W
TORCH_BYTES = 24   # assumed: 4R + 2W
COPY_BYTES = 8     # 1R + 1W
ISSUE_TARGETS = {"2p_vs_3pl_large": 1.15, "256K": (3.3, 1.7), "1M": (2.2, 1.3), "64M_copy": 1.8,
                 "torch_overhead_us": 1.3}


# -- configuration -----------------------------------------------------------------------------------

parse_size = common.parse_size      # '1K' -> (1, 1024); '8192x128' -> (8192, 128)
size_label = common.size_label


@dataclass
class Config:
    sizes: list = field(default_factory=lambda: [parse_size(s) for s in SIZES_FULL])
    algorithms: list = field(default_factory=lambda: list(ALGORITHMS))
    targets: list = field(default_factory=lambda: list(TARGETS))
    numpy: bool = True
    torch: bool = True
    copy: bool = True
    overhead: bool = True
    check: bool = True           # compare every output with NumPy's once per size
    min_time: float = 0.02       # seconds per sample (calls per sample adapt to reach it)
    budget: float = 0.5          # seconds per variant per size (sets the number of rounds)
    min_rounds: int = 7
    max_rounds: int = 25
    warmup: int = 1
    seed: int = 0
    progress: bool = True        # progress lines on stderr
    # schedule sweep
    sweep_sizes: list = field(default_factory=lambda: [parse_size("256K"), parse_size("4M")])
    sweep_algorithms: list = field(default_factory=lambda: ["two-pass", "online"])
    sweep_target: str = "avx2"
    unrolls: list = field(default_factory=lambda: [1, 2, 4, 8])
    accumulators: list = field(default_factory=lambda: [1, 2, 4])

    @classmethod
    def quick(cls, **kw) -> "Config":
        base = dict(sizes=[parse_size(s) for s in SIZES_QUICK], min_time=0.01, budget=0.15,
                    min_rounds=3, max_rounds=9)
        base.update(kw)
        return cls(**base)

    def timing_kw(self) -> dict:
        return dict(min_time=self.min_time, budget=self.budget, min_rounds=self.min_rounds,
                    max_rounds=self.max_rounds, warmup=self.warmup)


def _log(cfg: Config, msg: str) -> None:
    if cfg.progress:
        print(msg, file=sys.stderr, flush=True)


_TORCH = "unset"


def get_torch():
    """The torch module set to one thread, or None when it is not installed."""
    global _TORCH
    if _TORCH == "unset":
        try:
            import torch
            torch.set_num_threads(1)
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already started: irrelevant for a single op
                pass
            _TORCH = torch
        except ImportError:
            _TORCH = None
    return _TORCH


numpy_softmax = common.numpy_softmax   # the straightforward NumPy softmax into a preallocated out
_max_rel_err = common.max_rel_err


def _kernels(cfg: Config, notes: list) -> dict:
    """(target, algorithm) -> built Kernel, for runnable targets only; skipped ones become notes."""
    ks = {}
    for t in cfg.targets:
        for a in cfg.algorithms:
            k = softgen.compile("softmax", algorithm=a, target=t)
            if not k.runnable:
                msg = (f"target {t} skipped: this CPU cannot run it "
                       f"(missing {', '.join(k.target.missing_features())})")
                if msg not in notes:
                    notes.append(msg)
                break
            k._entry(False)  # build + load outside the timed region
            ks[(t, a)] = k
    return ks


# -- the main matrix ---------------------------------------------------------------------------------

def run(config: Config | None = None) -> list[dict]:
    """Measure every size; returns one dict per (size, variant) plus overhead rows and notes."""
    cfg = config or Config()
    notes: list[str] = []
    torch = get_torch() if cfg.torch else None
    if cfg.torch and torch is None:
        notes.append("torch is not installed: PyTorch columns are empty (pip install torch)")
    kernels = _kernels(cfg, notes)
    copier = common.CopyKernel("host") if cfg.copy else None
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict] = []
    for (R, n) in cfg.sizes:
        label, N = size_label(R, n), R * n
        _log(cfg, f"[softmax] {label} ({N} floats) ...")
        x = rng.standard_normal((R, n), dtype=np.float32) if R > 1 else \
            rng.standard_normal(n, dtype=np.float32)
        y = np.zeros_like(x)
        variants, meta = {}, {}
        for (t, a), k in kernels.items():
            name = f"{t} {a}"
            variants[name] = ("k(x, out=y)", {"k": k, "x": x, "y": y})
            tr = k.plan.traffic()
            meta[name] = dict(impl="softgen", target=t, algorithm=a, schedule=str(k.schedule),
                              bytes_per_element=tr["bytes_per_element"], traffic=tr["summary"])
        if cfg.numpy:
            variants["numpy"] = ("f(x, y)", {"f": numpy_softmax, "x": x, "y": y})
            meta["numpy"] = dict(impl="numpy", bytes_per_element=NUMPY_BYTES, traffic="5R + 3W (assumed)")
        if torch is not None:
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            variants["torch"] = ("f(xt, -1, out=yt)", {"f": torch.softmax, "xt": xt, "yt": yt})
            meta["torch"] = dict(impl="torch", bytes_per_element=TORCH_BYTES, traffic="4R + 2W (assumed)")
        if cfg.copy:
            variants["copy"] = copier.variant(x.reshape(-1), y.reshape(-1))
            meta["copy"] = dict(impl="copy", bytes_per_element=COPY_BYTES, traffic="1R + 1W",
                                copies_per_call=copier.reps(N))
        errs = {}
        if cfg.check:
            ref = np.empty_like(x)
            numpy_softmax(x, ref)
            for name, (stmt, g) in variants.items():
                if name in ("numpy", "copy"):
                    continue
                y.fill(np.nan)
                eval(stmt, dict(g))
                errs[name] = _max_rel_err(y, ref)
            del ref
        timings = common.time_interleaved(variants, **cfg.timing_kw())
        size_rows = []
        for name, tm in timings.items():
            m = meta[name]
            per = m.get("copies_per_call", 1)     # the generated copy repeats small copies in C
            t = tm.median / per
            size_rows.append(dict(kind="softmax", size=label, rows=R, n=n, elements=N, variant=name,
                                  **m, seconds=t, seconds_min=tm.min / per,
                                  ns_per_element=t / N * 1e9,
                                  gbps=common.gbps(m["bytes_per_element"], N, t),
                                  spread=tm.spread, rounds=tm.rounds, number=tm.number,
                                  max_rel_err=errs.get(name)))
        t_np = timings["numpy"].median if "numpy" in timings else None
        t_th = timings["torch"].median if "torch" in timings else None
        t_cp = timings["copy"].median / copier.reps(N) if "copy" in timings else None
        for r in size_rows:
            t = r["seconds"]
            r["vs_numpy"] = common.ratio(t_np, t) if r["impl"] != "numpy" else None
            r["vs_torch"] = common.ratio(t_th, t) if r["impl"] != "torch" else None
            r["vs_copy"] = common.ratio(t, t_cp) if r["impl"] != "copy" else None
            r["vs_reload"] = None
            if r["impl"] == "softgen":
                rl = timings.get(f"{r['target']} three-pass-reload")
                r["vs_reload"] = common.ratio(rl.median, t) if rl else None
        rows.extend(size_rows)
        del x, y, variants
    if cfg.overhead:
        rows.extend(run_overhead(cfg, kernels))
    rows.extend(dict(kind="note", text=t) for t in notes)
    return rows


def run_overhead(cfg: Config, kernels: dict | None = None) -> list[dict]:
    """Per-call cost at 1K and 16 floats: k(x, out=y) vs the raw ctypes entry vs torch.softmax.

    Each call is also timed on a batch of B rows in one call, divided by B: that is (nearly) the
    per-row compute, so ``overhead = t(1 row) - t(B rows) / B`` is the per-call cost of getting
    from Python to the kernel and back (argument checks, dispatch, ctypes or C-extension call).
    """
    kernels = kernels if kernels is not None else _kernels(cfg, [])
    pick = next(((t, a) for t in ("avx2", "scalar") for a in ("two-pass", "online", *ALGORITHMS)
                 if (t, a) in kernels), None)
    if pick is None:
        return []
    k = kernels[pick]
    fn = k._entry(False)
    torch = get_torch() if cfg.torch else None
    rows = []
    for n, B in ((1024, 64), (16, 1024)):
        _log(cfg, f"[softmax] call overhead, n={n} ...")
        rng = np.random.default_rng(cfg.seed)
        x = rng.standard_normal(n, dtype=np.float32)
        y = np.empty_like(x)
        X = rng.standard_normal((B, n), dtype=np.float32)
        Y = np.empty_like(X)
        px, py = x.ctypes.data, y.ctypes.data
        v = {"softgen k(x, out=y)": ("k(x, out=y)", {"k": k, "x": x, "y": y}),
             "softgen k(x, y) (positional out)": ("k(x, y)", {"k": k, "x": x, "y": y}),
             "ctypes fn(px, py, 1, n, n, n)": ("fn(px, py, 1, n, n, n)",
                                               {"fn": fn, "px": px, "py": py, "n": n}),
             f"softgen k(X, out=Y) / {B} rows": ("k(X, out=Y)", {"k": k, "X": X, "Y": Y})}
        per = {f"softgen k(X, out=Y) / {B} rows": B}
        if torch is not None:
            xt, yt, Xt, Yt = (torch.from_numpy(a) for a in (x, y, X, Y))
            v["torch.softmax(x, -1, out=y)"] = ("f(xt, -1, out=yt)", {"f": torch.softmax, "xt": xt, "yt": yt})
            v[f"torch.softmax(X, -1, out=Y) / {B} rows"] = ("f(Xt, -1, out=Yt)",
                                                          {"f": torch.softmax, "Xt": Xt, "Yt": Yt})
            per[f"torch.softmax(X, -1, out=Y) / {B} rows"] = B
        if cfg.numpy:
            v["numpy (5 ufunc calls)"] = ("f(x, y)", {"f": numpy_softmax, "x": x, "y": y})
        tms = common.time_interleaved(v, min_time=cfg.min_time, budget=cfg.budget,
                                      min_rounds=max(cfg.min_rounds, 9), max_rounds=max(cfg.max_rounds, 15),
                                      warmup=cfg.warmup)
        for name, tm in tms.items():
            d = per.get(name, 1)
            rows.append(dict(kind="overhead", n=n, variant=name, kernel=k.name, target=pick[0],
                             algorithm=pick[1], seconds=tm.median / d, ns=tm.median / d * 1e9,
                             per_row_of=d, spread=tm.spread, rounds=tm.rounds, number=tm.number))
        by = {r["variant"]: r["ns"] for r in rows if r["n"] == n}
        for lib, one, batch in (("softgen", "softgen k(x, out=y)", f"softgen k(X, out=Y) / {B} rows"),
                                ("torch", "torch.softmax(x, -1, out=y)", f"torch.softmax(X, -1, out=Y) / {B} rows")):
            if one in by and batch in by:
                rows.append(dict(kind="overhead_estimate", n=n, lib=lib, call_ns=by[one],
                                 compute_ns=by[batch], overhead_ns=by[one] - by[batch]))
    return rows


# -- schedule sweep ------------------------------------------------------------------------------------

def sweep(config: Config | None = None) -> list[dict]:
    """unroll x accumulators for the sweep algorithms on ``sweep_target``, each size interleaved.
    Combinations the Schedule rejects (accumulators must divide unroll) are skipped."""
    cfg = config or Config()
    from softgen.targets import get_target
    t = cfg.sweep_target
    default = get_target(t).schedule
    rng = np.random.default_rng(cfg.seed)
    rows = []
    probe = softgen.compile("softmax", algorithm=cfg.sweep_algorithms[0], target=t)
    if not probe.runnable:
        return [dict(kind="note", text=f"sweep skipped: target {t} cannot run on this CPU")]
    for (R, n) in cfg.sweep_sizes:
        label, N = size_label(R, n), R * n
        _log(cfg, f"[sweep] {label} ...")
        x = rng.standard_normal(n, dtype=np.float32) if R == 1 else rng.standard_normal((R, n), dtype=np.float32)
        y = np.zeros_like(x)
        variants, meta = {}, {}
        for a in cfg.sweep_algorithms:
            for u in cfg.unrolls:
                for acc in cfg.accumulators:
                    try:
                        k = softgen.compile("softmax", algorithm=a, target=t,
                                            schedule={"unroll": u, "accumulators": acc})
                    except softgen.UsageError:
                        continue
                    if k.schedule.accumulators != acc or k.schedule.unroll != u:
                        continue
                    k._entry(False)
                    name = f"{a} u{u} acc{acc}"
                    variants[name] = ("k(x, out=y)", {"k": k, "x": x, "y": y})
                    meta[name] = dict(algorithm=a, unroll=u, accumulators=acc, block=k.schedule.block,
                                      bytes_per_element=k.plan.bytes_per_element,
                                      is_default=(default is not None and u == default.unroll
                                                  and acc == default.accumulators))
        tms = common.time_interleaved(variants, **cfg.timing_kw())
        for name, tm in tms.items():
            m = meta[name]
            rows.append(dict(kind="sweep", size=label, rows=R, n=n, elements=N, target=t, variant=name, **m,
                             seconds=tm.median, ns_per_element=tm.median / N * 1e9,
                             gbps=common.gbps(m["bytes_per_element"], N, tm.median), spread=tm.spread,
                             rounds=tm.rounds, number=tm.number))
        for a in cfg.sweep_algorithms:
            grp = [r for r in rows if r["size"] == label and r["algorithm"] == a]
            d = next((r for r in grp if r["is_default"]), None)
            best = min(grp, key=lambda r: r["seconds"])
            for r in grp:
                r["vs_default"] = common.ratio(d["seconds"], r["seconds"]) if d else None
                r["is_best"] = r is best
    return rows


# -- reporting -----------------------------------------------------------------------------------------

def _err(v, row=None):
    return "-" if v is None else f"{v:.1e}"


def format_table(rows: list[dict]) -> str:
    """Text report: the main table, the call-overhead table, sweep table and notes (as present)."""
    out = []
    main = [r for r in rows if r.get("kind") == "softmax"]
    if main:
        cols = [("size", "size", "s"), ("variant", "variant", "s"), ("ns_per_element", "ns/elem", _ns),
                ("gbps", "GB/s", ".2f"), ("bytes_per_element", "B/el", "d"),
                ("vs_numpy", "vs numpy", _x), ("vs_torch", "vs torch", _x), ("vs_reload", "vs 3pl", _x),
                ("vs_copy", "t/t_copy", lambda v, r: "-" if v is None else f"{v:.2f}"),
                ("spread", "IQR", _pct), ("max_rel_err", "rel err", _err)]
        out.append("softmax, single thread; vs X = t_X / t (>1: faster than X); t/t_copy = t / t(generated copy)")
        out.append("GB/s counts B/el (softgen: Kernel.plan traffic; numpy 32 and torch 24 assumed; copy 8)")
        out.append(common.render_table(main, cols, group="size"))
    ov = [r for r in rows if r.get("kind") == "overhead"]
    if ov:
        out.append("")
        out.append(f"call overhead ({ov[0]['kernel']}), median ns per call:")
        out.append(common.render_table(ov, [("n", "n", "d"), ("variant", "call", "s"), ("ns", "ns/call", ".0f"),
                                            ("spread", "IQR", _pct)], group="n"))
        est = [r for r in rows if r.get("kind") == "overhead_estimate"]
        if est:
            out.append("estimated call overhead = one-row call - per-row time of the batched call:")
            out.append(common.render_table(est, [("n", "n", "d"), ("lib", "library", "s"),
                                                 ("call_ns", "1-row call ns", ".0f"),
                                                 ("compute_ns", "per-row in batch ns", ".0f"),
                                                 ("overhead_ns", "overhead ns", ".0f")]))
    sw = [r for r in rows if r.get("kind") == "sweep"]
    if sw:
        out.append("")
        out.append(f"schedule sweep ({sw[0]['target']}); vs default = t_default / t; * = best, d = default")
        for r in sw:
            r["mark"] = ("*" if r.get("is_best") else "") + ("d" if r.get("is_default") else "")
        out.append(common.render_table(sw, [("size", "size", "s"), ("algorithm", "algorithm", "s"),
                                            ("unroll", "unroll", "d"), ("accumulators", "acc", "d"),
                                            ("block", "block", "d"), ("ns_per_element", "ns/elem", _ns),
                                            ("gbps", "GB/s", ".2f"), ("vs_default", "vs default", _x),
                                            ("spread", "IQR", _pct), ("mark", "", "s")], group="size"))
    notes = [r["text"] for r in rows if r.get("kind") == "note"]
    if notes:
        out.append("")
        out.extend(f"note: {t}" for t in notes)
    return "\n".join(out)


def _find(rows, size, **kw):
    return [r for r in rows if r.get("kind") == "softmax" and r["size"] == size
            and all(r.get(k) == v for k, v in kw.items())]


def summary(rows: list[dict]) -> str:
    """The issue's targets, checked against these rows (sizes that were not run are left out)."""
    T, out = ISSUE_TARGETS, []
    ok = lambda c: "PASS" if c else "MISS"
    copy = [r for r in rows if r.get("kind") == "softmax" and r["impl"] == "copy"]
    if copy:
        out.append("streaming copy (generated copy kernel, 8 B/el): " + ", ".join(
            f"{r['size']} {r['gbps']:.1f} GB/s" for r in copy))
    for size in ("16M", "64M"):
        for r in _find(rows, size, impl="softgen", algorithm="two-pass"):
            if r["vs_reload"] is not None:
                out.append(f"[{ok(r['vs_reload'] >= T['2p_vs_3pl_large'])}] {size} {r['target']}: two-pass is "
                           f"{r['vs_reload']:.2f}x three-pass-reload (target >= {T['2p_vs_3pl_large']})")
    for size in ("256K", "1M"):
        sg = _find(rows, size, impl="softgen")
        if not sg:
            continue
        best = min(sg, key=lambda r: r["seconds"])
        tn, tt = T[size]
        if best["vs_numpy"] is not None:
            out.append(f"[{ok(best['vs_numpy'] >= tn)}] {size}: best softgen ({best['variant']}) is "
                       f"{best['vs_numpy']:.2f}x numpy (target >= {tn})")
        if best["vs_torch"] is not None:
            out.append(f"[{ok(best['vs_torch'] >= tt)}] {size}: best softgen ({best['variant']}) is "
                       f"{best['vs_torch']:.2f}x torch (target >= {tt})")
    sg = _find(rows, "64M", impl="softgen")
    if sg and sg[0]["vs_copy"] is not None:
        best = min(sg, key=lambda r: r["seconds"])
        out.append(f"[{ok(best['vs_copy'] <= T['64M_copy'])}] 64M: best softgen ({best['variant']}) takes "
                   f"{best['vs_copy']:.2f}x the copy time (target <= {T['64M_copy']})")
    ov = {(r["n"], r["variant"]): r["ns"] for r in rows if r.get("kind") == "overhead"}
    est = {(r["n"], r["lib"]): r for r in rows if r.get("kind") == "overhead_estimate"}
    for n in (1024, 16):
        k, c = ov.get((n, "softgen k(x, out=y)")), ov.get((n, "ctypes fn(px, py, 1, n, n, n)"))
        if k is None:
            continue
        th = ov.get((n, "torch.softmax(x, -1, out=y)"))
        line = f"{common.count_label(n)}-float row, one call: k(x, out=y) {k:.0f} ns, same kernel via ctypes {c:.0f} ns"
        out.append(line + (f", torch.softmax(out=) {th:.0f} ns" if th is not None else ""))
        sg, tt = est.get((n, "softgen")), est.get((n, "torch"))
        if sg is not None:
            line = (f"  call overhead (1-row call minus per-row time of a batched call): softgen "
                    f"{sg['overhead_ns']:.0f} ns")
            if tt is not None:
                line += f", torch {tt['overhead_ns']:.0f} ns"
                out.append(f"[{ok(sg['overhead_ns'] < 0.5 * tt['overhead_ns'])}] " + line.strip()
                           + f" = {sg['overhead_ns'] / tt['overhead_ns']:.2f}x torch's "
                             f"(target 'well under torch's', read here as < 0.5x)")
            else:
                out.append(line)
    return "\n".join(out)


# -- CLI ---------------------------------------------------------------------------------------------------

def _split(vals):
    return [t for v in vals for t in v.replace(",", " ").split()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/softmax.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"sizes {' '.join(SIZES_QUICK)}, fewer rounds")
    p.add_argument("--sizes", nargs="+", help="e.g. 1K 256K 64M 8192x128 (default: full matrix)")
    p.add_argument("--algorithms", nargs="+", help=f"default: {' '.join(ALGORITHMS)}")
    p.add_argument("--targets", nargs="+", help="default: scalar avx2 (targets this CPU cannot run are skipped)")
    p.add_argument("--json", metavar="PATH", help="also write machine info + rows as JSON")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-overhead", action="store_true", help="skip the call-overhead measurement")
    p.add_argument("--no-check", action="store_true", help="skip the accuracy sanity check")
    p.add_argument("--min-time", type=float, help="seconds per sample (default 0.02)")
    p.add_argument("--budget", type=float, help="seconds per variant per size (default 0.5)")
    p.add_argument("--min-rounds", type=int)
    p.add_argument("--max-rounds", type=int)
    p.add_argument("--sweep", action="store_true", help="run the schedule sweep instead of the matrix")
    p.add_argument("--sweep-sizes", nargs="+", help="default: 256K 4M")
    p.add_argument("--unrolls", nargs="+", type=int)
    p.add_argument("--accumulators", nargs="+", type=int)
    p.add_argument("--cpu", type=int, help="pin this process to one CPU")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def config_from_args(a) -> Config:
    kw = {}
    if a.sizes:
        kw["sizes"] = [parse_size(s) for s in _split(a.sizes)]
    if a.algorithms:
        kw["algorithms"] = [softgen.passes.ALIASES.get(s, s) for s in _split(a.algorithms)]
    if a.targets:
        kw["targets"] = _split(a.targets)
    if a.sweep_sizes:
        kw["sweep_sizes"] = [parse_size(s) for s in _split(a.sweep_sizes)]
    for name in ("min_time", "budget", "min_rounds", "max_rounds", "unrolls", "accumulators"):
        if getattr(a, name) is not None:
            kw[name] = getattr(a, name)
    kw.update(torch=not a.no_torch, overhead=not a.no_overhead, check=not a.no_check,
              progress=not a.quiet)
    return Config.quick(**kw) if a.quick else Config(**kw)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    cfg = config_from_args(a)
    unknown = [x for x in cfg.algorithms if x not in ALGORITHMS]
    if unknown:
        _parser().error(f"unknown algorithm(s) {unknown}; known: {', '.join(ALGORITHMS)}")
    info = common.machine_info()
    torch = get_torch() if cfg.torch else None
    info.update(numpy=np.__version__, softgen=softgen.__version__,
                torch=(torch.__version__ if torch is not None else None),
                torch_threads=(torch.get_num_threads() if torch is not None else None))
    t0 = _dt.datetime.now()
    rows = sweep(cfg) if a.sweep else run(cfg)
    info["wall_seconds"] = round((_dt.datetime.now() - t0).total_seconds(), 1)
    print(f"# softgen {softgen.__version__} (commit {info.get('commit')}) softmax benchmark, {info['date']}")
    print(f"# cpu: {info.get('cpu')} ({os.cpu_count()} cpus, isa {' '.join(info.get('isa', []))}), "
          f"{info.get('cc')}")
    print(f"# python {info['python']}, numpy {info['numpy']}, torch {info['torch'] or 'not installed'}"
          f"{' (1 thread)' if torch is not None else ''}; single-threaded; "
          f"samples >= {cfg.min_time * 1e3:.0f} ms, medians of {cfg.min_rounds}-{cfg.max_rounds} "
          f"interleaved rounds; wall {info['wall_seconds']} s")
    if not any(t == "avx512" for t in cfg.targets) and "avx512f" not in info.get("isa", []):
        print("# avx512: not benchmarked (this CPU has no AVX-512)")
    print()
    print(format_table(rows))
    s = summary(rows)
    if s:
        print()
        print("issue targets:")
        print(s)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "config": asdict(cfg), "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
