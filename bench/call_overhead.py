#!/usr/bin/env python3
"""Per-call overhead of softmax (issue 15, "Speed of a call"): for 1x16, 1x1K and 64x1K float32,
interleaved medians (softgen.benchmark.timing.time_interleaved) of
  raw C      the kernel's C entry through softgen._fastcall (no Python checks)
  Kernel     k(x, out=y)                      (Kernel.__call__, NumPy)
  Kernel/t   k(xt, out=yt)                    (torch tensors in and out, DLPack)
  per-op     softgen.softmax(x, out=y)        (the functional path: kernel lookup + call)
  torch      torch.softmax(xt, -1, out=yt)
  onnxrt     an ONNX Runtime session, Softmax(axis=-1), io binding to NumPy buffers
  numpy      exp(x - max) / sum, into y (out=)
Then the other kinds, 1 row / 1 matrix: top-k (sparse, k=4; raw: _fastcall.selected), a unary
matrix op (sinkhorn 1x32x32; raw: _fastcall.unary) and a general one (gaussian_kernel 1x16x16,
d=16; raw: _fastcall.general), each through the Kernel and the per-op function, NumPy and torch.
Single-threaded (OMP etc. = 1, torch.set_num_threads(1)). Absent peers are skipped.
The targets (issue 15): Kernel within 0.5 us of raw C at 1x1K, and Kernel - raw <= half of
torch's overhead (torch's time at 1x16 is nearly all overhead).
Usage: python bench/call_overhead.py [--budget S]  (a shared machine: compare ratios only; the
load average is printed with the table)"""
import argparse
import os

from softgen.benchmark.timing import single_threaded, time_interleaved

single_threaded()

import numpy as np  # noqa: E402

import softgen  # noqa: E402
from softgen import _fastcall as fc  # noqa: E402 - the C extension (built by pip install / setup.py)
from softgen.kernel import _fastcall  # noqa: E402


def _onnx(n: int):
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "sm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = min(m.ir_version, 9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(onnx.load_from_string(m.SerializeToString()).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per variant and shape")
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    k = softgen.compile("softmax")
    print(f"# {k.name}; median us per call, interleaved (noisy on a shared machine); "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'shape':>8} " + " ".join(f"{c:>9}" for c in
                                      ("raw C", "Kernel", "Kernel/t", "per-op", "torch", "onnxrt", "numpy")))
    for rows, n in ((1, 16), (1, 1024), (64, 1024)):
        x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
        y = np.empty_like(x)
        k(x, out=y)
        softgen.softmax(x, out=y)   # compiled (first use) before calibration
        fn = k._entry(False)
        v = {"raw C": lambda: _fastcall(fn._softgen_ptr, x, y),
             "Kernel": lambda: k(x, out=y),
             "per-op": lambda: softgen.softmax(x, out=y)}
        if torch is not None:
            xt, yt = torch.from_numpy(x.copy()), torch.empty(rows, n)
            v["Kernel/t"] = lambda: k(xt, out=yt)
            v["torch"] = lambda: torch.softmax(xt, -1, out=yt)
        sess = _onnx(n)
        if sess is not None:
            io = sess.io_binding()
            io.bind_cpu_input("x", x)
            io.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
            v["onnxrt"] = lambda: sess.run_with_iobinding(io)

        def numpy_softmax(x=x, y=y):
            np.subtract(x, x.max(-1, keepdims=True), out=y)
            np.exp(y, out=y)
            np.divide(y, y.sum(-1, keepdims=True), out=y)
        v["numpy"] = numpy_softmax
        res = time_interleaved(v, budget=args.budget)
        cols = ("raw C", "Kernel", "Kernel/t", "per-op", "torch", "onnxrt", "numpy")
        print(f"{rows}x{n:<6} " + " ".join(f"{res[c].median * 1e6:9.2f}" if c in res else f"{'-':>9}"
                                            for c in cols))
    other_kinds(args.budget)


def other_kinds(budget: float) -> None:
    """Top-k, a unary and a general matrix op, 1 row / 1 matrix: raw _fastcall, the Kernel and the
    per-op function on NumPy arrays (and the Kernel on torch tensors, "Kernel/t")."""
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    t = softgen.compile("topk_softmax", k=4, sparse=1)
    t(x)
    softgen.topk_softmax(x, 4, sparse=1)
    idx, w = np.empty((1, 4), np.int64), np.empty((1, 4), np.float32)
    cases = [("topk_softmax(k=4, sparse=1) 1x1024", {
        "raw C": lambda: fc.selected(t._fn._softgen_ptr, x, idx, w), "Kernel": lambda: t(x),
        "per-op": lambda: softgen.topk_softmax(x, 4, sparse=1)}, (t, (x,), {}))]
    m = rng.random((1, 32, 32)).astype(np.float32)
    s = softgen.compile("sinkhorn")
    y = s(m)
    softgen.sinkhorn(m)
    cases.append(("sinkhorn 1x32x32", {
        "raw C": lambda: fc.unary(s._fn._softgen_ptr, m, y), "Kernel": lambda: s(m, out=y),
        "per-op": lambda: softgen.sinkhorn(m, out=y)}, (s, (m,), {"out": y})))
    a, b = rng.random((1, 16, 16), np.float32), rng.random((1, 16, 16), np.float32)
    g = softgen.compile("gaussian_kernel", head_dim=16)
    o = g(a, b)
    softgen.gaussian_kernel(a, b, 16, out=o)
    spec = g._general_spec
    cases.append(("gaussian_kernel 1x16x16 d=16", {
        "raw C": lambda: fc.general(g._fn._softgen_ptr, spec, (a, b), o), "Kernel": lambda: g(a, b, out=o),
        "per-op": lambda: softgen.gaussian_kernel(a, b, 16, out=o)}, (g, (a, b), {"out": o})))
    for label, v, (kern, ins, kw) in cases:
        if torch is not None:
            tins = tuple(torch.from_numpy(i.copy()) for i in ins)
            tkw = {"out": torch.from_numpy(kw["out"].copy())} if kw else {}
            kern(*tins, **tkw)     # torch's type seen once
            v["Kernel/t"] = lambda kern=kern, tins=tins, tkw=tkw: kern(*tins, **tkw)
        res = time_interleaved(v, budget=budget)
        print(f"{label}: " + ", ".join(f"{c} {r.median * 1e6:.2f}" for c, r in res.items()))


if __name__ == "__main__":
    main()
