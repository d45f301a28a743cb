"""GFLOP/s of softgen's generated GEMMs (C backend and TVM backend, softgen/backends/gemm.py and
tvm_gemm.py) against NumPy's single-threaded BLAS at SOFT's shapes: Newton-Schulz m x m x m
products (m = 49, 64, 128, 256, NN) and the Gaussian-kernel Gram product a @ b.T with
a: 4096 x 64, b: 64 x 64 (NT), plus the fused Gaussian kernel (NT + exp epilogue) against the
NumPy formula; and the four products of SOFT attention's tied form at L = 4096, m = 49 (the
landmarks as rows; its last product O = (K1^T)^T W a TN GEMM). Medians of interleaved rounds after warm-up (bench/common.py).

    python bench/gemm.py [--targets avx2] [--backends c tvm] [--json out.json]
    python bench/gemm.py --sweep          # C tile sweep on avx2: (mr, nv) x ku
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, render_table, single_threaded, time_interleaved  # noqa: E402

single_threaded()
import numpy as np  # noqa: E402

from softgen.backends import gemm as G  # noqa: E402
from softgen.gemm_runtime import GemmLibrary  # noqa: E402
from softgen.targets import get_target  # noqa: E402

def gaussian_epilogue(name: str = "gauss") -> G.Epilogue:
    """SOFT's kernel from a Gram product G = a @ b.T: ``S_ij = exp(-max(aa_i + bb_j - 2 G_ij, 0) * s)``
    with ``aa_i = |a_i|^2``, ``bb_j = |b_j|^2``, ``s = 1 / (2 sqrt(d))``. Parameters: aa, bb, s.
    (As tests/test_gemm.py's: an epilogue written against the ``Epilogue`` interface; the compiler's gaussian_kernel op
    builds its own from the IR.)"""
    def vector(acc, i, j, count):
        d2 = f"V_FMA(V_SET1(-2.0f), {acc}, V_ADD(V_SET1(aa[{i}]), {G.load_vec(f'bb + {j}', count)}))"
        return f"sg_exp_nonpos(V_MUL(V_MAX({d2}, V_ZERO()), V_SET1(-s)))"
    return G.Epilogue(name, ("const float *aa", "const float *bb", "float s"), vector, needs_vmath=True)


SHAPES = [("newton", "nn", 49, 49, 49), ("newton", "nn", 64, 64, 64), ("newton", "nn", 128, 128, 128),
          ("newton", "nn", 256, 256, 256), ("gauss", "nt", 4096, 64, 64),
          # SOFT attention's tied form at L = 4096, m = 49, d = dv = 64 (ops/attention.py _soft):
          # K1^T = landmarks q^T, K1^T V, K2^+ (K1^T V), then O = (K1^T)^T W
          ("soft K1^T", "nt", 49, 4096, 64), ("soft K1^T V", "nn", 49, 64, 4096), ("soft K2^+ W", "nn", 49, 64, 49),
          ("soft O", "tn", 4096, 64, 49)]
SWEEP = [(4, 2), (5, 2), (6, 2), (3, 3), (4, 3)]
KU = (1, 2, 4)


def _operands(layout, m, n, k, rng):
    a = rng.standard_normal((k, m) if layout == "tn" else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if layout == "nt" else (k, n)).astype(np.float32)
    return a, b, np.empty((m, n), np.float32)


def _call(lib, g, a, b, c):
    """A (stmt, globals) variant calling the gemm's C entry directly (no NumPy checks)."""
    m, n = c.shape
    k = a.shape[0] if g.layout == "tn" else a.shape[1]
    args = (m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, n)
    return ("fn(*args)", {"fn": lib._fn(g), "args": args, "keep": (a, b, c)})  # keep: arrays stay alive


def _check(c, a, b, layout):
    a = a.T if layout == "tn" else a
    ref = a.astype(np.float64) @ (b.T if layout == "nt" else b).astype(np.float64)
    bound = (a.shape[1] + 2) * 2.0 ** -23 * (np.abs(a) @ np.abs(b.T if layout == "nt" else b))
    assert (np.abs(c - ref) <= bound).all(), "benchmarked gemm gives wrong results"


def run(targets, backends, rng, budget):
    rows = []
    for tname in targets:
        t = get_target(tname)
        if not t.runnable:
            print(f"# {tname}: this CPU cannot run it, skipped", file=sys.stderr)
            continue
        libs = {}
        for bk in backends:
            mod = G if bk == "c" else __import__("softgen.backends.tvm_gemm", fromlist=["gemm"])
            codes = [mod.gemm(t, "nn"), mod.gemm(t, "nt"), mod.gemm(t, "tn")]
            if bk == "c":
                codes.append(G.gemm(t, "nt", epilogue=gaussian_epilogue()))
            libs[bk] = (GemmLibrary(codes), {g.layout if g.epilogue is None else "gauss": g for g in codes})
        for what, layout, m, n, k in SHAPES:
            a, b, c = _operands(layout, m, n, k, rng)
            bt = b.T if layout == "nt" else b
            variants = {"numpy": ("mm(a, bt, out=c)", {"mm": np.matmul, "a": a.T if layout == "tn" else a,
                                                       "bt": bt, "c": c})}
            outs = {}
            for bk, (lib, gs) in libs.items():
                out = np.empty_like(c)
                variants[bk] = _call(lib, gs[layout], a, b, out)
                outs[bk] = out
            if what == "gauss" and "c" in libs:
                lib, gs = libs["c"]
                aa, bb = (a * a).sum(1), (b * b).sum(1)
                s = 1.0 / (2.0 * math.sqrt(k))
                fused = np.empty_like(c)
                variants["c fused kernel"] = ("fn(*args)", {"fn": lib._fn(gs["gauss"]), "args": (
                    m, n, k, a.ctypes.data, k, b.ctypes.data, k, fused.ctypes.data, n, aa.ctypes.data,
                    bb.ctypes.data, s), "keep": (a, b, fused, aa, bb)})
                variants["numpy kernel"] = (
                    "np.exp(-np.maximum(aa[:, None] + bb[None, :] - 2 * (a @ b.T), 0) * s)",
                    {"np": np, "a": a, "b": b, "aa": aa, "bb": bb, "s": np.float32(s)})
            res = time_interleaved(variants, budget=budget)
            for bk, out in outs.items():
                _check(out, a, b, layout)
            base = res["numpy"].median
            for name, tm in res.items():
                rows.append({"target": tname, "shape": f"{m}x{n}x{k}", "case": f"{what} {layout}",
                             "impl": name, "us": tm.median * 1e6,
                             "gflops": 2 * m * n * k / tm.median / 1e9,
                             "best": 2 * m * n * k / tm.min / 1e9,
                             "vs_numpy": base / tm.median, "iqr": tm.spread})
    return rows


def sweep(rng, budget):
    t = get_target("avx2")
    rows = []
    cands = [(mr, nv, ku) for mr, nv in SWEEP for ku in KU]
    codes = []
    for mr, nv, ku in cands:
        for layout in ("nn", "nt", "tn"):
            codes.append(G.gemm(t, layout, schedule={"mr": mr, "nv": nv, "ku": ku, "nc": 4 * nv * t.lanes},
                                name=f"g_{layout}_{mr}x{nv}_u{ku}"))
    lib = GemmLibrary(codes)
    for what, layout, m, n, k in SHAPES:
        a, b, c = _operands(layout, m, n, k, rng)
        variants = {"numpy": ("mm(a, bt, out=c)", {"mm": np.matmul, "a": a.T if layout == "tn" else a,
                                                   "bt": b.T if layout == "nt" else b, "c": c})}
        for g in codes:
            if g.layout == layout:
                variants[f"{g.mr}x{g.nr} ku{g.schedule.ku}"] = _call(lib, g, a, b, np.empty_like(c))
        res = time_interleaved(variants, budget=budget)
        for name, tm in res.items():
            rows.append({"shape": f"{m}x{n}x{k}", "case": f"{what} {layout}", "impl": name,
                         "gflops": 2 * m * n * k / tm.median / 1e9, "best": 2 * m * n * k / tm.min / 1e9,
                         "vs_numpy": res["numpy"].median / tm.median,
                         "iqr": tm.spread})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["avx2"])
    ap.add_argument("--backends", nargs="+", default=["c", "tvm"], choices=["c", "tvm"])
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per variant per shape")
    ap.add_argument("--sweep", action="store_true", help="C tile sweep on avx2")
    ap.add_argument("--json", help="also write machine info and every row as JSON")
    ap.add_argument("--tiles", nargs="+", help="sweep tiles as MRxNV, e.g. 6x2 4x3")
    ap.add_argument("--ku", nargs="+", type=int, help="sweep k unrolls")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    info = machine_info()
    print(f"# {info.get('cpu')}, {info.get('cc')}, commit {info.get('commit')}, single-threaded")
    if args.sweep:
        global SWEEP, KU
        SWEEP = [tuple(map(int, x.split("x"))) for x in args.tiles] if args.tiles else SWEEP
        KU = tuple(args.ku) if args.ku else KU
        rows = sweep(rng, args.budget)
        cols = [("case", "case", "s"), ("shape", "m x n x k", "s"), ("impl", "tile", "s"),
                ("gflops", "GFLOP/s", ".1f"), ("best", "best", ".1f"), ("vs_numpy", "vs numpy", ".2f"),
                ("iqr", "IQR", ".0%")]
        print(render_table(rows, cols, group="shape"))
    else:
        rows = run(args.targets, args.backends, rng, args.budget)
        cols = [("target", "target", "s"), ("case", "case", "s"), ("shape", "m x n x k", "s"),
                ("impl", "impl", "s"), ("us", "us/call", ".1f"), ("gflops", "GFLOP/s", ".1f"), ("best", "best", ".1f"),
                ("vs_numpy", "vs numpy", ".2f"), ("iqr", "IQR", ".0%")]
        print(render_table(rows, cols, group="shape"))
        print("\nschedules: " + "; ".join(f"{t}: {get_target(t).gemm}" for t in args.targets))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
