#!/usr/bin/env python3
"""Per-call overhead of softmax (issue 15, "Speed of a call"): for 1x16, 1x1K and 64x1K float32,
interleaved medians (softgen.benchmark.timing.time_interleaved) of
  raw C      the kernel's C entry through softgen._fastcall.call (NumPy buffers, no Python)
  raw C t=1  its <name>_mt entry, threads 1, the same way (issue 13: costs what the entry does)
  Kernel     k(x, out=y)                      (Kernel.__call__, NumPy)
  K t=1      k(x, out=y, threads=1)           (issue 13: within the Kernel column's noise)
  Kernel/t   k(xt, out=yt)                    (torch tensors in and out)
  K/t new    k(xt)                            (torch in, a new tensor out)
  per-op     softgen.softmax(x, out=y)        (the functional path: kernel lookup + call)
  op t=1     softgen.softmax(x, out=y, threads=1)
  per-op/t   softgen.softmax(xt, out=yt)
  op/t new   softgen.softmax(xt)              (torch in, a new tensor out)
  torch      torch.softmax(xt, -1, out=yt)
  torch new  torch.softmax(xt, -1)
  onnxrt     an ONNX Runtime session, Softmax(axis=-1), io binding to NumPy buffers
  numpy      exp(x - max) / sum, into y (out=)
Then the other kinds, 1 row / 1 matrix, the same columns but torch's and ONNX Runtime's: top-k
(sparse, k=4; raw: _fastcall.selected into given arrays; calls allocate (indices, weights)), a
unary matrix op (sinkhorn 1x32x32; raw: _fastcall.unary) and a general one (gaussian_kernel
1x16x16, d=16; raw: _fastcall.general), out= given where the op takes one.
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

COLS = ("raw C", "raw C t=1", "Kernel", "K t=1", "op t=1", "Kernel/t", "K/t new", "per-op", "per-op/t", "op/t new", "torch", "torch new", "onnxrt",
        "numpy")


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
    print(f"{'shape':>8} " + " ".join(f"{c:>9}" for c in COLS))
    for rows, n in ((1, 16), (1, 1024), (64, 1024)):
        x = np.random.default_rng(0).standard_normal((rows, n)).astype(np.float32)
        y = np.empty_like(x)
        k(x, out=y)
        softgen.softmax(x, out=y)   # compiled (first use) before calibration
        ptr, mt = k._fn._softgen_ptr, k._mt_entry(1)[0]._softgen_ptr
        v = {"raw C": lambda: fc.call(ptr, x, y), "raw C t=1": lambda: fc.call(mt, x, y, 1),
             "Kernel": lambda: k(x, out=y), "K t=1": lambda: k(x, out=y, threads=1),
             "per-op": lambda: softgen.softmax(x, out=y), "op t=1": lambda: softgen.softmax(x, out=y, threads=1)}
        if torch is not None:
            xt, yt = torch.from_numpy(x.copy()), torch.empty(rows, n)
            k(xt, out=yt)   # torch's type seen once (softgen.arrays registers it with _fastcall)
            v["Kernel/t"] = lambda: k(xt, out=yt)
            v["K/t new"] = lambda: k(xt)
            v["per-op/t"] = lambda: softgen.softmax(xt, out=yt)
            v["op/t new"] = lambda: softgen.softmax(xt)
            v["torch"] = lambda: torch.softmax(xt, -1, out=yt)
            v["torch new"] = lambda: torch.softmax(xt, -1)
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
        print(f"{rows}x{n:<6} " + " ".join(f"{res[c].median * 1e6:9.2f}" if c in res else f"{'-':>9}"
                                            for c in COLS))
    other_kinds(args.budget, torch)


def other_kinds(budget: float, torch) -> None:
    """Top-k, a unary and a general matrix op, 1 row / 1 matrix: raw _fastcall, the Kernel and the
    per-op function on NumPy arrays and on torch tensors (``/t``; ``K/t new``: no out=)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    t = softgen.compile("topk_softmax", k=4, sparse=1)
    t(x)
    softgen.topk_softmax(x, 4, sparse=1)
    idx, w = np.empty((1, 4), np.int64), np.empty((1, 4), np.float32)
    tp = t._fn._softgen_ptr
    cases = [("topk k=4 sparse 1x1024", {
        "raw C": lambda: fc.selected(tp, x, idx, w), "Kernel": lambda: t(x),
        "per-op": lambda: softgen.topk_softmax(x, 4, sparse=1)},
        lambda xs, o: t(*xs), lambda xs, o: softgen.topk_softmax(*xs, 4, sparse=1), (x,), None)]
    m = rng.random((1, 32, 32)).astype(np.float32)
    s = softgen.compile("sinkhorn")
    y = s(m)
    softgen.sinkhorn(m)
    sp = s._fn._softgen_ptr
    cases.append(("sinkhorn 1x32x32", {
        "raw C": lambda: fc.unary(sp, m, y), "Kernel": lambda: s(m, out=y),
        "per-op": lambda: softgen.sinkhorn(m, out=y)},
        lambda xs, o: s(*xs, out=o), lambda xs, o: softgen.sinkhorn(*xs, out=o), (m,), y))
    a, b = rng.random((1, 16, 16), np.float32), rng.random((1, 16, 16), np.float32)
    g = softgen.compile("gaussian_kernel", head_dim=16)
    o = g(a, b)
    softgen.gaussian_kernel(a, b, 16, out=o)
    gp, spec = g._fn._softgen_ptr, g._general_spec
    cases.append(("gaussian d=16 1x16x16", {
        "raw C": lambda: fc.general(gp, spec, (a, b), o), "Kernel": lambda: g(a, b, out=o),
        "per-op": lambda: softgen.gaussian_kernel(a, b, 16, out=o)},
        lambda xs, o: g(*xs, out=o), lambda xs, o: softgen.gaussian_kernel(*xs, 16, out=o), (a, b), o))
    cols = [c for c in COLS if c not in ("torch", "torch new", "onnxrt", "numpy", "raw C t=1", "K t=1", "op t=1")]
    print(f"{'kind':>22} " + " ".join(f"{c:>9}" for c in cols))
    for label, v, kern, per_op, ins, out in cases:
        if torch is not None:
            tins = tuple(torch.from_numpy(i.copy()) for i in ins)
            tout = None if out is None else torch.from_numpy(out.copy())
            kern(tins, tout)     # torch's type seen once
            v["Kernel/t"] = lambda kern=kern, tins=tins, tout=tout: kern(tins, tout)
            if tout is not None:
                v["K/t new"] = lambda kern=kern, tins=tins: kern(tins, None)
            v["per-op/t"] = lambda per_op=per_op, tins=tins, tout=tout: per_op(tins, tout)
            if tout is not None:
                v["op/t new"] = lambda per_op=per_op, tins=tins: per_op(tins, None)
        res = time_interleaved(v, budget=budget)
        print(f"{label:>22} " + " ".join(f"{res[c].median * 1e6:9.2f}" if c in res else f"{'-':>9}" for c in cols))


if __name__ == "__main__":
    main()
