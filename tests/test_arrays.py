"""Issue 15, "Arrays and conventions" and "Speed of a call": torch/DLPack arrays in and out
(zero-copy, the caller's type, out= in place), axis=/dim=, 0-d inputs, a call path that never
touches the IR, a cached TVM kernel loading without TVM. Kernels are built once per module
(small sizes, target scalar where the ISA does not matter)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import softgen
from softgen import arrays, ir, matrix
from softgen.errors import UsageError

try:
    import torch
except ImportError:   # the torch tests skip; the NumPy ones (axis, 0-d, IR) still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def ref_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@pytest.fixture(scope="module")
def sm():
    return softgen.compile("softmax", target="scalar", algorithm="two-pass")


@pytest.fixture(scope="module")
def lssa():
    return softgen.compile("lssa", target="scalar", algorithm="direct")


@pytest.fixture(scope="module")
def topk():
    return softgen.compile("topk_softmax", target="scalar", k=2, sparse=1)


@pytest.fixture(scope="module")
def sink():
    return softgen.compile("sinkhorn", target="scalar")


@pytest.fixture(scope="module")
def gauss():
    return softgen.compile("gaussian_kernel", target="scalar", head_dim=4)


# -- torch in, torch out --------------------------------------------------------------------------

@needs_torch
def test_torch_in_torch_out_zero_copy(sm):
    x = torch.randn(3, 7)
    y = sm(x)
    assert type(y) is torch.Tensor and y.shape == x.shape
    assert np.allclose(y.numpy(), ref_softmax(x.numpy()), atol=1e-6)
    out = torch.full((3, 7), 5.0)
    ptr = out.data_ptr()
    r = sm(x, out=out)
    assert r is out and out.data_ptr() == ptr            # written in place
    assert torch.allclose(out, y)
    # zero-copy in: x's memory is what the kernel reads (in place: out=x)
    x2 = x.clone()
    assert sm(x2, out=x2) is x2 and torch.allclose(x2, y)
    # NumPy out with a torch input: NumPy out is returned as given
    o = np.empty((3, 7), np.float32)
    assert sm(x, out=o) is o and np.allclose(o, y.numpy())


@needs_torch
def test_torch_every_kind(lssa, topk, sink, gauss):
    x = torch.rand(4, 6)
    y = lssa(x)
    assert type(y) is torch.Tensor and np.allclose(y.numpy(), lssa(x.numpy()))
    idx, w = topk(x)
    assert type(idx) is torch.Tensor and idx.dtype == torch.int64 and type(w) is torch.Tensor
    ri, rw = topk(x.numpy())
    assert np.array_equal(idx.numpy(), ri) and np.array_equal(w.numpy(), rw)
    m = torch.rand(2, 4, 4)
    s = sink(m)
    assert type(s) is torch.Tensor and np.allclose(s.numpy(), sink(m.numpy()))
    a, b = torch.rand(3, 4), torch.rand(5, 4)
    g = gauss(a, b)
    assert type(g) is torch.Tensor and g.shape == (3, 5) and np.allclose(g.numpy(), gauss(a.numpy(), b.numpy()))
    og = torch.empty(3, 5)
    assert gauss(a, b, out=og) is og and torch.allclose(og, g)
    # the per-op functions too
    f = softgen.topk_softmax(x, 2, sparse=1, target="scalar")
    assert type(f[0]) is torch.Tensor and np.array_equal(f[0].numpy(), ri)
    assert type(softgen.sinkhorn(m, target="scalar")) is torch.Tensor


@needs_torch
def test_torch_refusals(sm):
    with pytest.raises(UsageError, match=r"requires grad.*\.detach\(\)"):
        sm(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(UsageError, match=r"out requires grad"):
        sm(torch.randn(2, 3), out=torch.empty(2, 3, requires_grad=True))
    y = sm(torch.randn(2, 3, requires_grad=True).detach())
    assert not y.requires_grad
    with pytest.raises(TypeError, match=r"float32.*torch tensor: x\.float\(\)"):
        sm(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(UsageError, match=r"bfloat16.*x\.float\(\)"):
        sm(torch.randn(2, 3).to(torch.bfloat16))
    with pytest.raises(UsageError, match="device meta"):
        sm(torch.empty(2, 3, device="meta"))
    # a lazily negated input is read through one copy (test_torch_fast_path...); an out cannot be
    with pytest.raises(UsageError, match="negative bit"):
        sm(torch.randn(2, 3), out=torch._neg_view(torch.empty(2, 3)))


@needs_torch
def test_torch_fast_path_makes_no_numpy_view(sm, topk, sink, gauss, monkeypatch):
    """Torch tensors of every fast kind (rows, top-k, unary and general matrix; Kernel and per-op
    function) are read in C (_fastcall.entry): no arrays.prepare, no Tensor.numpy() (issue 15).
    Results equal NumPy's; layouts the fast path declines still work or are refused."""
    from softgen import kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    x = torch.randn(3, 40)
    m = torch.rand(2, 5, 5)
    a, b = torch.rand(2, 3, 4), torch.rand(2, 5, 4)
    want = {"sm": sm(x.numpy()), "topk": topk(x.numpy()), "sink": sink(m.numpy()),
            "f": softgen.softmax(x.numpy(), target="scalar"), "g": gauss(a.numpy(), b.numpy())}
    sm(x), topk(x), sink(m), softgen.softmax(x, target="scalar")   # load; torch's type seen once
    softgen.topk_softmax(x, 2, sparse=1, target="scalar"), softgen.gaussian_kernel(a, b, 4, target="scalar")

    def trap(*a, **k):
        raise AssertionError("a torch call went through a NumPy view")

    def _teq(t, a):   # (not through NumPy: Tensor.numpy is the trap)
        return torch.equal(t, torch.from_numpy(np.ascontiguousarray(a)))
    monkeypatch.setattr(torch.Tensor, "numpy", trap)
    monkeypatch.setattr(arrays, "prepare", trap)
    y = sm(x)
    assert type(y) is torch.Tensor and y.dtype == torch.float32 and _teq(y, want["sm"])
    out = torch.empty(3, 40)
    assert sm(x, out=out) is out and _teq(out, want["sm"])
    x2 = x.clone()
    assert sm(x2, out=x2) is x2 and _teq(x2, want["sm"])          # in place
    assert _teq(sm(x[1:, :]), want["sm"][1:])                      # a view: storage offset
    idx, w = topk(x)
    assert idx.dtype == torch.int64 and _teq(idx, want["topk"][0]) and _teq(w, want["topk"][1])
    s = sink(m)
    assert type(s) is torch.Tensor and _teq(s, want["sink"])
    assert _teq(softgen.softmax(x, target="scalar"), want["f"])
    wide = torch.randn(3, 56)
    v = wide[:, 8:48]                                              # rows one stride (56) apart
    assert _teq(sm(v), sm(np.array(v.tolist(), np.float32)))
    ov = torch.zeros(3, 56)
    assert sm(x, out=ov[:, 16:]) is not None and _teq(ov[:, 16:], want["sm"]) and not ov[:, :16].any()
    fi, fw = softgen.topk_softmax(x, 2, sparse=1, target="scalar")
    assert _teq(fi, want["topk"][0]) and _teq(fw, want["topk"][1])
    g = gauss(a, b)
    assert type(g) is torch.Tensor and _teq(g, want["g"]) and _teq(softgen.gaussian_kernel(a, b, 4, target="scalar"), want["g"])
    og = torch.empty(2, 3, 5)
    assert gauss(a, b, out=og) is og and _teq(og, want["g"])
    monkeypatch.undo()
    # declined by the fast path: the general path computes (strided rows) or refuses
    xt = x.t().contiguous().t()                                              # unit stride across rows
    assert np.allclose(sm(xt), ref_softmax(x.numpy()), atol=1e-6)
    assert np.allclose(sm(torch._neg_view(x)), ref_softmax(-x.numpy()), atol=1e-6)   # its bits are x's: not read raw
    with pytest.raises(ValueError):
        sm(x, out=torch.empty(3, 41))


def _torch_declined():
    """Tensors _fastcall must not read raw (name -> tensor of shape (3, 8)): each guards one check
    of its torch_view; `general`: what the public call then does (a UsageError/TypeError, or a
    correct result through a copy)."""
    x = torch.randn(3, 8)

    class Sub(torch.Tensor):
        pass
    neg = torch._neg_view(x)
    return {
        "requires_grad": x.clone().requires_grad_(),
        "float64": x.double(), "float16": x.half(), "int32": x.int(), "complex64": x.to(torch.complex64),
        "meta": torch.empty(3, 8, device="meta"),                   # not on the CPU (data_ptr() is 0)
        "neg view": neg,                                            # memory holds -value
        "neg, not a view": neg.detach(),                            # the negative bit without _is_view()
        "conj().imag": torch.randn(3, 8, dtype=torch.complex64).conj().imag,   # float32, negative bit
        "sparse_coo": x.to_sparse(), "mkldnn": x.to_mkldnn(),
        "subclass": x.clone().as_subclass(Sub),                     # may override any accessor
        "Parameter": torch.nn.Parameter(x.clone(), requires_grad=False),
        "columns": x.t().contiguous().t(),                         # unit stride across rows
    }


@needs_torch
def test_torch_fast_entry_declines_what_it_cannot_read(sm):
    """_fastcall.entry reads torch tensors through torch's accessors (issue 15): each tensor a check
    guards (grad, dtype, device, negative bit, layout, exact type, row stride) is declined as x and
    as out (NotImplemented: never read raw); the public call then refuses it or computes through
    a copy, for the Kernel and the per-op function. Good tensors are read, not declined."""
    from softgen import kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    good = torch.randn(3, 8)
    sm(good)                                       # loaded; torch's type seen once
    fast = sm._fast
    assert fast is not None
    wide = torch.randn(3, 16)
    for t in (good, wide[:, 4:12], wide[1:, :8], torch.randn(3, 8, requires_grad=True).detach()):
        y = fast(t, None)
        assert type(y) is torch.Tensor and torch.allclose(y, torch.softmax(t, -1), atol=1e-6)
    with torch.no_grad():
        assert type(fast(good, torch.empty(3, 8))) is torch.Tensor
    want = torch.softmax(good, -1)
    for name, t in _torch_declined().items():
        assert fast(t, None) is NotImplemented, name
        if t.dtype == torch.float32 and t.layout == torch.strided and t.device.type == "cpu":
            assert fast(good, t) is NotImplemented, f"out: {name}"
    for name, t in _torch_declined().items():
        for call in (sm, lambda a: softgen.softmax(a, target="scalar", algorithm="two-pass")):
            try:
                y = call(t)
            except (UsageError, TypeError) as e:
                assert name not in ("columns", "subclass", "Parameter", "neg view", "neg, not a view",
                                    "conj().imag"), (name, e)
                continue
            ref = t.detach().resolve_neg().to(torch.float32)
            assert isinstance(y, torch.Tensor) and torch.allclose(y, torch.softmax(ref, -1), atol=1e-6), name
    o = torch._neg_view(torch.empty(3, 8))
    with pytest.raises(UsageError, match="negative bit"):
        softgen.softmax(good, out=o, target="scalar", algorithm="two-pass")
    assert torch.allclose(sm(good), want, atol=1e-6)


class _Dev:
    """A DLPack array on a non-CPU device (CUDA), as CuPy presents one."""

    def __dlpack__(self, stream=None):
        raise AssertionError("must be refused before any exchange")

    def __dlpack_device__(self):
        return (2, 0)


class _Host:
    """A foreign host array speaking DLPack only (no torch, no array interface)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kw):
        return self.a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_dlpack_foreign_and_device(sm):
    with pytest.raises(UsageError, match="device 2:0.*CPU"):
        sm(_Dev())
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    y = sm(_Host(x))
    assert isinstance(y, np.ndarray) and np.allclose(y, ref_softmax(x), atol=1e-6)
    o = np.zeros((2, 5), np.float32)
    assert sm(x, out=_Host(o)) is not None and np.allclose(o, y)     # written in place
    o.flags.writeable = False                                        # immutable (as JAX's)
    with pytest.raises(UsageError, match="read-only"):
        sm(x, out=_Host(o))


def test_dlpack_input_is_not_copied(sm, monkeypatch):
    """Zero-copy: the kernel gets the caller's memory (its data pointer)."""
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    seen = []
    real = arrays._host
    monkeypatch.setattr(arrays, "_host", lambda a, *r, **k: seen.append(real(a, *r, **k)) or seen[-1])
    sm(_Host(x))
    assert seen and seen[0][0].ctypes.data == x.ctypes.data


# -- axis= / dim= --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["C", "F"])
def test_axis_any(sm, layout):
    x = np.asarray(np.random.default_rng(2).standard_normal((3, 4, 5)), np.float32, order=layout)
    for ax in (0, 1, 2, -1, -2, -3):
        y = sm(x, axis=ax)
        assert y.shape == x.shape and np.allclose(y, ref_softmax(x, ax), atol=1e-6), ax
        assert np.allclose(sm(x, dim=ax), y)
        assert np.allclose(softgen.softmax(x, axis=ax, target="scalar"), y, atol=1e-6)
    out = np.empty_like(x)
    assert sm(x, axis=0, out=out) is out and np.allclose(out, ref_softmax(x, 0), atol=1e-6)
    with pytest.raises(UsageError, match="out of range"):
        sm(x, axis=3)
    with pytest.raises(UsageError, match="not both"):
        sm(x, axis=0, dim=0)
    with pytest.raises(UsageError, match="must be an int"):
        sm(x, axis=1.0)


def test_axis_unit_stride_is_not_copied(sm, monkeypatch):
    """axis 0 of a Fortran-ordered matrix has unit stride: the kernel reads x in place."""
    x = np.asfortranarray(np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32))
    seen = []
    real = softgen.kernel.bind
    monkeypatch.setattr(softgen.kernel, "bind", lambda abi, name, inputs, *r: seen.append(
        inputs[0].ctypes.data) or real(abi, name, inputs, *r))
    y = sm(x, axis=0)
    assert np.allclose(y, ref_softmax(x, 0), atol=1e-6)
    assert seen == [x.ctypes.data]


@needs_torch
def test_axis_torch_and_selected(sm, topk, lssa):
    x = torch.randn(5, 3)
    assert torch.allclose(sm(x, dim=0), torch.softmax(x, 0), atol=1e-6)
    assert torch.allclose(softgen.log_softmax(x, dim=0, target="scalar"), torch.log_softmax(x, 0), atol=1e-5)
    idx, w = topk(x, dim=0)
    assert idx.shape == (2, 3) and torch.equal(idx, torch.topk(x, 2, dim=0).indices)
    y = lssa(x, dim=0)    # a row op with per-row parameters
    assert type(y) is torch.Tensor and torch.allclose(y, lssa(x.T.contiguous()).T)


def test_axis_refused_on_matrix_ops(sink):
    with pytest.raises(UsageError, match="last two axes"):
        sink(np.ones((2, 3, 3), np.float32), axis=0)
    with pytest.raises(UsageError, match="last two axes"):
        softgen.sinkhorn(np.ones((2, 3, 3), np.float32), axis=0, target="scalar")


# -- 0-d -------------------------------------------------------------------------------------------

def test_zero_d_per_op_functions():
    """Per-op functions follow torch: a 0-d input is one element, softmax gives 1.0, 0-d out."""
    y = softgen.softmax(np.float32(3.0), target="scalar")
    assert isinstance(y, np.ndarray) and y.shape == () and y == 1.0
    assert softgen.log_softmax(np.array(2.0, np.float32), target="scalar") == 0.0
    assert softgen.softmax(np.array(-7.0, np.float32), axis=0, target="scalar") == 1.0
    o = np.zeros((), np.float32)
    assert softgen.softmax(np.float32(1.0), out=o, target="scalar") is o and o == 1.0
    i, w = softgen.topk_softmax(np.float32(1.0), 2, sparse=1, target="scalar")
    assert i.shape == w.shape == () and i == 0 and w == 1.0
    if torch is not None:
        t = softgen.softmax(torch.tensor(2.0), target="scalar")
        assert type(t) is torch.Tensor and t.shape == () and t.item() == torch.softmax(torch.tensor(2.0), 0).item()


# -- the call path never touches the IR ----------------------------------------------------------

def test_call_path_does_not_touch_the_ir(sm, lssa, topk, sink, gauss, monkeypatch):
    """Everything a call needs is fixed at compile time (issue 15): with the IR's accessors
    raising, calls of every kind (row, row parameters, top-k, unary and general matrix, a
    dispatcher, threads=, the per-op functions) still work."""
    disp = softgen.compile("softmax", target="scalar")   # auto
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    a, b = np.random.rand(3, 4).astype(np.float32), np.random.rand(5, 4).astype(np.float32)
    m = np.random.rand(2, 4, 4).astype(np.float32)
    calls = [lambda: sm(x), lambda: sm(x, threads=2), lambda: lssa(x), lambda: topk(x), lambda: sink(m),
             lambda: gauss(a, b), lambda: disp(x), lambda: disp(x, threads=1),
             lambda: softgen.softmax(x, target="scalar"), lambda: softgen.topk_softmax(x, 2, sparse=1, target="scalar"),
             lambda: sm(x, axis=0), lambda: softgen.softmax(x), lambda: softgen.softmax(x),
             lambda: softgen.sinkhorn(m, target="scalar"), lambda: softgen.gaussian_kernel(a, b, 4, target="scalar"),
             lambda: topk(x, threads=1), lambda: sink(m, threads=2), lambda: gauss(a, b, threads=1),
             lambda: softgen.softmax(x, target="scalar", threads=2), lambda: softgen.softmax(x, threads=1)]
    if torch is not None:   # torch tensors in and out, every kind
        xt, mt, at, bt = (torch.from_numpy(v.copy()) for v in (x, m, a, b))
        calls += [lambda: sm(xt), lambda: sm(xt, out=torch.empty(3, 8)), lambda: topk(xt), lambda: sink(mt),
                  lambda: gauss(at, bt), lambda: gauss(at, bt, out=torch.empty(3, 5)), lambda: sm(xt, threads=1),
                  lambda: softgen.topk_softmax(xt, 2, sparse=1, target="scalar"),
                  lambda: softgen.gaussian_kernel(at, bt, 4, target="scalar")]
    expect = [c() for c in calls]   # loads the libraries (may touch the IR) before the trap

    def trap(*a, **k):
        raise AssertionError("a call touched the IR")
    for cls in (ir.Program, matrix.MatrixProgram):
        for nm in ("nodes", "topo", "op", "args", "attrs", "kind", "shape", "items", "users", "output",
                   "max_n", "row_params", "matrices", "vector_names", "mscalar_names", "copy", "validate",
                   "abi", "leaves", "programs", "role", "scalars", "vector_dims", "index_dims"):
            if hasattr(cls, nm):
                monkeypatch.setattr(cls, nm, property(trap) if isinstance(getattr(cls, nm), property) else trap)
    for c, e in zip(calls, expect):
        r = c()
        for u, v in zip(r if isinstance(r, tuple) else (r,), e if isinstance(e, tuple) else (e,)):
            assert type(u) is type(v) and np.array_equal(np.asarray(u), np.asarray(v))


def test_per_op_functions_go_straight_to_the_entry(monkeypatch):
    """softgen.<op>(...) with arguments seen before is one dict lookup and the kernel's C entry
    (issue 15): no apply, no Kernel.__call__, no binding, for rows, top-k and both kinds of matrix
    op; new arguments, 0-d inputs and axis= still take apply."""
    from softgen import functional, kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    rng = np.random.default_rng(11)
    x, m = rng.standard_normal((3, 8)).astype(np.float32), rng.random((2, 4, 4)).astype(np.float32)
    a, b = rng.random((3, 4), np.float32), rng.random((5, 4), np.float32)
    calls = [lambda: softgen.softmax(x, target="scalar"), lambda: softgen.topk_softmax(x, 2, sparse=1, target="scalar"),
             lambda: softgen.sinkhorn(m, target="scalar"), lambda: softgen.gaussian_kernel(a, b, 4, target="scalar"),
             lambda: softgen.gaussian_kernel(a, b, head_dim=4, target="scalar", out=np.empty((3, 5), np.float32)),
             # threads= is no part of the key: the entry calls <name>_mt (issue 13: as cheap as without)
             lambda: softgen.softmax(x, target="scalar", threads=1), lambda: softgen.softmax(x, target="scalar", threads=2),
             lambda: softgen.topk_softmax(x, 2, sparse=1, target="scalar", threads=1),
             lambda: softgen.sinkhorn(m, target="scalar", threads=0)]
    expect = [c() for c in calls]

    def trap(*args, **kw):
        raise AssertionError("a per-op call went past its entry")
    for mod, name in ((functional, "apply"), (kmod.Kernel, "__call__"), (kmod.MatrixKernel, "__call__"), (kmod, "bind")):
        monkeypatch.setattr(mod, name, trap)
    for c, e in zip(calls, expect):
        r = c()
        for u, v in zip(r if isinstance(r, tuple) else (r,), e if isinstance(e, tuple) else (e,)):
            assert np.array_equal(u, v)
    for c in (lambda: softgen.softmax(x, target="scalar", axis=0), lambda: softgen.softmax(np.float32(1), target="scalar"),
              lambda: softgen.topk_softmax(x, 3, sparse=1, target="scalar")):
        with pytest.raises(AssertionError, match="past its entry"):
            c()


def test_threads_calls_take_the_fast_entry(sm, topk, sink, monkeypatch):
    """k(x, threads=N) goes straight to <name>_mt through the C fast entry (issue 13: a call
    passing threads= costs what one without does): no ctypes, no _call; what the entry declines
    (a bool, a NumPy int, a float) or fails (negative) still gets the general path's answer."""
    from softgen import kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    rng = np.random.default_rng(12)
    x, m = rng.standard_normal((5, 8)).astype(np.float32), rng.random((2, 4, 4)).astype(np.float32)
    y = np.empty_like(x)
    calls = [lambda: sm(x, threads=1), lambda: sm(x, out=y, threads=2), lambda: sm(x, threads=0),
             lambda: topk(x, threads=1), lambda: sink(m, threads=2)]
    expect = [sm(x), sm(x), sm(x), topk(x), sink(m)]

    def trap(*args, **kw):
        raise AssertionError("a threads= call went past its fast entry")
    with monkeypatch.context() as mp:
        for name in ("_call", "_call_threads", "_mt_entry"):
            mp.setattr(kmod.Kernel, name, trap)
        for c, e in zip(calls, expect):
            r = c()
            for u, v in zip(r if isinstance(r, tuple) else (r,), e if isinstance(e, tuple) else (e,)):
                assert np.array_equal(u, v)
        with pytest.raises(AssertionError, match="past its fast entry"):   # declined: Python's path
            sm(x, threads=np.int64(1))
    assert np.array_equal(sm(x, threads=np.int64(1)), expect[0])
    for bad in (True, 1.0, 2 ** 40, -1):
        with pytest.raises(UsageError, match="thread"):
            sm(x, threads=bad)
    with pytest.raises(UsageError, match="thread"):
        softgen.softmax(x, target="scalar", algorithm="two-pass", threads=-1)


# -- a cached TVM kernel in a new process ---------------------------------------------------------

def test_cached_tvm_kernel_loads_without_tvm(tmp_path):
    """Compile a TVM kernel (cache warm, in this process: TVM is imported here anyway), then in a
    fresh process compile, call and export it: neither TVM nor torch is imported (the cache key
    and the manifest's TVM version come from package metadata)."""
    pytest.importorskip("tvm")
    code = textwrap.dedent(f"""
        import sys, numpy as np, softgen
        k = softgen.compile("softmax", backend="tvm", algorithm="two-pass", target="scalar")
        y = k(np.ones((2, 8), np.float32))
        assert abs(float(y[0, 0]) - 0.125) < 1e-6
        k.export({str(tmp_path)!r}, overwrite=True)
        print(sorted(m for m in ("tvm", "tvm_ffi", "torch") if m in sys.modules))
    """)
    exec(code, {})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(softgen.__file__)),
                                                    env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_jax_arrays(sm):
    """JAX arrays (immutable, DLPack): read zero-copy, results as JAX arrays, no out=."""
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32))
    y = sm(x)
    assert type(y).__module__.split(".")[0] in ("jax", "jaxlib")
    assert np.allclose(np.asarray(y), ref_softmax(np.asarray(x)), atol=1e-6)
    assert np.allclose(np.asarray(softgen.softmax(x, axis=0, target="scalar")), ref_softmax(np.asarray(x), 0),
                       atol=1e-6)
    with pytest.raises(UsageError, match="read-only"):
        sm(x, out=jnp.zeros((3, 6), jnp.float32))


def test_jax_every_kind_zero_copy(sm, topk, sink, monkeypatch):
    """JAX arrays in (DLPack: the kernel reads the JAX buffer itself), JAX arrays out, for rows,
    top-k and a matrix op, through the Kernel and the per-op functions; out= refused (immutable)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray(np.random.default_rng(8).standard_normal((3, 40)).astype(np.float32))
    m = jnp.asarray(np.random.default_rng(9).random((2, 5, 5)).astype(np.float32))
    seen = []
    real = np.from_dlpack
    monkeypatch.setattr(np, "from_dlpack", lambda a, **k: seen.append(real(a, **k)) or seen[-1])
    y = sm(x)
    assert isinstance(y, jax.Array) and np.array_equal(np.asarray(y), sm(np.asarray(x)))
    assert seen and seen[0].ctypes.data == x.unsafe_buffer_pointer()     # no copy in
    idx, w = topk(x)
    assert isinstance(idx, jax.Array) and isinstance(w, jax.Array)
    ri, rw = topk(np.asarray(x))
    assert np.array_equal(np.asarray(idx), ri) and np.array_equal(np.asarray(w), rw)
    s = sink(m)
    assert isinstance(s, jax.Array) and np.array_equal(np.asarray(s), sink(np.asarray(m)))
    f = softgen.softmax(x, target="scalar")
    assert isinstance(f, jax.Array) and np.array_equal(np.asarray(f), softgen.softmax(np.asarray(x), target="scalar"))
    for call in (lambda o: sm(x, out=o), lambda o: softgen.softmax(x, out=o, target="scalar")):
        with pytest.raises(UsageError, match="read-only.*without out="):
            call(jnp.zeros((3, 40), jnp.float32))


def test_topk_fast_path_matches_the_general_path(topk):
    """Top-k calls take _fastcall.selected (no ctypes, no binding); every layout it declines
    (strided, Fortran, empty) falls back, and the results equal the general path's."""
    from softgen import kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    x = np.random.default_rng(6).standard_normal((3, 40)).astype(np.float32)
    topk(x)
    assert topk._fast is not None
    ptr, sel = topk._fn._softgen_ptr, kmod._fc.selected
    assert sel(ptr, x, np.empty((3, 2), np.int64), np.empty((3, 2), np.float32)) == 0
    assert sel(ptr, x, np.empty((3, 2), np.int32), np.empty((3, 2), np.float32)) is NotImplemented
    assert sel(ptr, x, np.empty((3, 2), np.int64), np.empty((2, 2), np.float32)) is NotImplemented
    assert topk._fast(x, np.empty((3, 2), np.float32)) is NotImplemented   # out=: the general path
    for a in (x, x[:, ::2], x[:, :1], x[:0], np.asfortranarray(x), x[1]):
        fast = topk(a)
        slow = topk._call_np(topk._fn, (a,), None)
        assert all(u.shape == v.shape and np.array_equal(u, v) for u, v in zip(fast, slow))


def test_general_matrix_fast_path(gauss, monkeypatch):
    """General matrix calls (gaussian_kernel: two inputs) take _fastcall.general, through the
    Kernel and the per-op function, NumPy and torch, with no binding; every layout it declines
    (strided rows, Fortran, out overlapping an input, a dims mismatch) takes the general path."""
    from softgen import kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    rng = np.random.default_rng(10)
    a, b = rng.random((2, 3, 4), np.float32), rng.random((2, 5, 4), np.float32)
    want = gauss._call_np(gauss._entry(False), (a, b), None)
    fn = softgen.gaussian_kernel
    fn(a, b, 4, target="scalar")
    if torch is not None:
        gauss(torch.from_numpy(a), torch.from_numpy(b))   # torch's type seen once (arrays.TORCH_TYPES)
    assert gauss._fast is not None

    def trap(*args, **kw):
        raise AssertionError("a general matrix call went through binding")
    monkeypatch.setattr(kmod, "bind", trap)
    assert np.array_equal(gauss(a, b), want)
    o = np.empty((2, 3, 5), np.float32)
    assert gauss(a, b, out=o) is o and np.array_equal(o, want)
    assert np.array_equal(fn(a, b, 4, target="scalar"), fn(a, b, 4, target="scalar", out=o)) and \
        np.array_equal(o, gauss(a, b))
    if torch is not None:
        g = gauss(torch.from_numpy(a), torch.from_numpy(b))
        assert type(g) is torch.Tensor and np.array_equal(g.numpy(), want)
        ot = torch.empty(2, 3, 5)
        assert gauss(torch.from_numpy(a), torch.from_numpy(b), out=ot) is ot and np.array_equal(ot.numpy(), want)
    monkeypatch.undo()
    for x, y in ((a[:, :, ::2], b[:, :, ::2]), (np.asfortranarray(a), b), (a[:, :2], b[:, 1:])):
        assert np.array_equal(gauss(x, y), gauss._call_np(gauss._fn, (x, y), None))
    sq = rng.random((4, 4), np.float32)
    over = sq.copy()
    assert gauss(over, sq, out=over) is over and np.array_equal(over, gauss(sq, sq))   # out is input a
    with pytest.raises(ValueError, match="dimension d"):
        gauss(a, rng.random((2, 5, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        gauss(a, b, out=np.empty((2, 3, 4), np.float32))


def test_unary_matrix_fast_path_matches_the_general_path(sink):
    """Unary matrix calls (sinkhorn) take _fastcall.unary; declined layouts fall back; results
    equal the general path's; a square kernel's non-square input keeps its ValueError."""
    from softgen import kernel as kmod
    if kmod._fc is None:
        pytest.skip("softgen._fastcall is not built")
    m = np.random.default_rng(7).random((3, 6, 6)).astype(np.float32)
    sink(m)
    assert sink._fast is not None
    assert kmod._fc.unary(sink._fn._softgen_ptr, m[0, 0], np.empty(6, np.float32)) is NotImplemented   # 1-d
    assert sink._fast(m[0, 0], None) is NotImplemented
    for a in (m, m[:, :, :4], m[:, :4, :], m[:, :, ::2], np.asfortranarray(m), m[0], m[:0]):
        assert np.array_equal(sink(a), sink._call_np(sink._fn, (a,), None))
    y = m.copy()
    assert sink(y, out=y) is y and np.array_equal(y, sink(m))
    pinv = softgen.compile("newton_pinv", target="scalar")
    with pytest.raises(ValueError, match="square"):
        pinv(np.ones((2, 4, 5), np.float32))


def test_attention_out_with_return_lse_returns_both():
    """bench/fuzz.py: softgen.attention(out=o, return_lse=True) returns (o, lse) as the Kernel
    does (out itself, lse in the caller's type), not o alone."""
    q = np.random.default_rng(3).standard_normal((1, 2, 3, 4)).astype(np.float32)
    want_o, want_lse = softgen.attention(q, q, q, return_lse=True, target="scalar")
    o = np.empty_like(q)
    r = softgen.attention(q, q, q, return_lse=True, out=o, target="scalar")
    assert type(r) is tuple and r[0] is o and np.array_equal(o, want_o) and np.array_equal(r[1], want_lse)
    if torch is not None:
        ot = torch.empty(1, 2, 3, 4)
        t = torch.from_numpy(q)
        r = softgen.attention(t, t, t, return_lse=True, out=ot, target="scalar")
        assert type(r) is tuple and r[0] is ot and type(r[1]) is torch.Tensor and np.array_equal(r[1].numpy(), want_lse)
