#!/usr/bin/env python3
"""Instructions per call of each call path (issue 15), counted by callgrind: independent of the
machine's load, so a shared machine can compare two versions (bench/call_overhead.py times them).
Runs itself under ``valgrind --tool=callgrind`` (valgrind and its headers needed); a marker module
compiled on the fly zeroes and dumps the counters around N calls of each path; the empty loop's
count is subtracted. Valgrind's CPU has no AVX-512: kernels are the avx2 ones.
--accessors: each torch.Tensor accessor _fastcall may read a tensor with, called from C as
_fastcall calls it (a getset's getter, a method's C function), on a contiguous 1x1024 float32
tensor: what reading a tensor costs, accessor by accessor (torch's floor: its guards per call).
Usage: python bench/call_instructions.py [-n N] [--accessors]"""
import argparse
import glob
import os
import re
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np

import softgen
from softgen import _fastcall as fc

MARKER = r"""
#include <Python.h>
#include <valgrind/callgrind.h>
static PyObject *zero(PyObject *s, PyObject *a) { CALLGRIND_ZERO_STATS; Py_RETURN_NONE; }
static PyObject *dump(PyObject *s, PyObject *a) {
    const char *n; if (!PyArg_ParseTuple(a, "s", &n)) return NULL; CALLGRIND_DUMP_STATS_AT(n); Py_RETURN_NONE; }
/* acc(name, descr, obj, n): n calls of accessor descr on obj, the C function called directly */
static PyObject *acc(PyObject *s, PyObject *a) {
    const char *n; PyObject *d, *o, *v = NULL; long k;
    if (!PyArg_ParseTuple(a, "sOOl", &n, &d, &o, &k)) return NULL;
    PyGetSetDef *g = Py_TYPE(d) == &PyGetSetDescr_Type ? ((PyGetSetDescrObject *)d)->d_getset : NULL;
    PyMethodDef *f = Py_TYPE(d) == &PyMethodDescr_Type ? ((PyMethodDescrObject *)d)->d_method : NULL;
    PyObject *none = PyTuple_New(0);
    CALLGRIND_ZERO_STATS;
    for (long i = 0; i < k; i++) {
        if (g) v = g->get(o, g->closure);
        else if (f && f->ml_flags == METH_NOARGS) v = f->ml_meth(o, NULL);
        else if (f && f->ml_flags == (METH_VARARGS | METH_KEYWORDS)) v = ((PyCFunctionWithKeywords)(void (*)(void))f->ml_meth)(o, none, NULL);
        else v = PyObject_Vectorcall(d, &o, 1, NULL);
        if (v == NULL) break;
        Py_DECREF(v);
    }
    CALLGRIND_DUMP_STATS_AT(n);
    Py_DECREF(none);
    if (v == NULL) return NULL;
    Py_RETURN_NONE;
}
static PyMethodDef m[] = {{"zero", zero, METH_NOARGS, ""}, {"dump", dump, METH_VARARGS, ""}, {"acc", acc, METH_VARARGS, ""}, {0}};
static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "cgmark", 0, -1, m};
PyMODINIT_FUNC PyInit_cgmark(void) { return PyModule_Create(&mod); }
"""


def paths() -> dict:
    """name -> a call, as bench/call_overhead.py's columns."""
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    v, rng = {}, np.random.default_rng(0)
    for n in (16, 1024):
        k = softgen.compile("softmax")
        x = rng.standard_normal((1, n)).astype(np.float32)
        y = np.empty_like(x)
        k(x, out=y), softgen.softmax(x, out=y)
        p = k._fn._softgen_ptr
        v.update({f"1x{n} raw C": lambda p=p, x=x, y=y: fc.call(p, x, y), f"1x{n} Kernel": lambda k=k, x=x, y=y: k(x, out=y),
                  f"1x{n} Kernel new": lambda k=k, x=x: k(x), f"1x{n} per-op": lambda x=x, y=y: softgen.softmax(x, out=y)})
        if torch is not None:
            xt, yt = torch.from_numpy(x.copy()), torch.empty(1, n)
            k(xt, out=yt)
            v.update({f"1x{n} Kernel/t": lambda k=k, xt=xt, yt=yt: k(xt, out=yt), f"1x{n} K/t new": lambda k=k, xt=xt: k(xt),
                      f"1x{n} per-op/t": lambda xt=xt, yt=yt: softgen.softmax(xt, out=yt),
                      f"1x{n} op/t new": lambda xt=xt: softgen.softmax(xt),
                      f"1x{n} torch": lambda xt=xt, yt=yt: torch.softmax(xt, -1, out=yt),
                      f"1x{n} torch new": lambda xt=xt: torch.softmax(xt, -1)})
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    t = softgen.compile("topk_softmax", k=4, sparse=1)
    t(x), softgen.topk_softmax(x, 4, sparse=1)
    idx, w, tp = np.empty((1, 4), np.int64), np.empty((1, 4), np.float32), t._fn._softgen_ptr
    v.update({"topk raw C": lambda: fc.selected(tp, x, idx, w), "topk Kernel": lambda: t(x),
              "topk per-op": lambda: softgen.topk_softmax(x, 4, sparse=1)})
    a, b = rng.random((1, 16, 16), np.float32), rng.random((1, 16, 16), np.float32)
    g = softgen.compile("gaussian_kernel", head_dim=16)
    o = g(a, b)
    softgen.gaussian_kernel(a, b, 16, out=o)
    gp, spec = g._fn._softgen_ptr, g._general_spec
    v.update({"gauss raw C": lambda: fc.general(gp, spec, (a, b), o), "gauss Kernel": lambda: g(a, b, out=o),
              "gauss per-op": lambda: softgen.gaussian_kernel(a, b, 16, out=o)})
    if torch is not None:
        xt, at, bt = (torch.from_numpy(u.copy()) for u in (x, a, b))
        ot = g(at, bt)
        t(xt)
        v.update({"topk Kernel/t": lambda: t(xt), "topk per-op/t": lambda: softgen.topk_softmax(xt, 4, sparse=1),
                  "gauss Kernel/t": lambda: g(at, bt, out=ot),
                  "gauss per-op/t": lambda: softgen.gaussian_kernel(at, bt, 16, out=ot)})
    v["loop"] = lambda: None
    return v


ACCESSORS = ("dtype", "is_cpu", "layout", "requires_grad", "is_neg", "is_contiguous", "data_ptr", "shape", "stride",
             "device", "ndim", "is_conj", "_is_view", "numel", "_cdata")


def inner(n: int, marker_dir: str, accessors: bool) -> None:
    sys.path.insert(0, marker_dir)
    import cgmark
    if accessors:
        import torch
        t = torch.randn(1, 1024)
        for name in ACCESSORS:
            cgmark.acc(f"acc {name}", getattr(torch.Tensor, name), t, 10)   # warm
            cgmark.acc(f"acc {name}", getattr(torch.Tensor, name), t, n)
        return
    for name, f in paths().items():
        for _ in range(50):
            f()
        cgmark.zero()
        for _ in range(n):
            f()
        cgmark.dump(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="calls per path")
    ap.add_argument("--accessors", action="store_true", help="torch.Tensor's accessors instead of the call paths")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        return inner(args.n, args.inner, args.accessors)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "cgmark.c")
        with open(src, "w") as f:
            f.write(MARKER)
        so = os.path.join(tmp, "cgmark" + sysconfig.get_config_var("EXT_SUFFIX"))
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-I" + sysconfig.get_paths()["include"], src, "-o", so], check=True)
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", sys.executable, __file__,
                        "-n", str(args.n), "--inner", tmp] + ["--accessors"] * args.accessors, check=True,
                       stderr=subprocess.DEVNULL)
        counts = {}
        for path in glob.glob(f"{tmp}/cg.*.*"):
            text = open(path).read()
            name = re.search(r"Trigger: Client Request: (.*)$", text, re.M)
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if name and total:
                counts[int(path.rsplit(".", 1)[1])] = (name.group(1), int(total.group(1)))
    rows = [counts[i] for i in sorted(counts)]
    if args.accessors:   # (a C loop: nothing to subtract; the last dump of a name is the n-call one)
        print(f"# instructions per torch.Tensor accessor call from C (callgrind, {args.n} calls, a 1x1024 "
              f"float32 tensor)")
        for name, total in dict(rows).items():
            print(f"{name[4:]:20s} {total / args.n:9.0f}")
        return
    base = dict(rows)["loop"]
    print(f"# instructions per call (callgrind, {args.n} calls, the empty loop subtracted; avx2 kernels); "
          f"the first path also pays one-time costs")
    for name, total in rows:
        if name != "loop":
            print(f"{name:20s} {(total - base) / args.n:9.0f}")


if __name__ == "__main__":
    main()
