"""The Python API contract: input validation, clear errors, no SIGILL, kernel metadata."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import kernel, run

import softgen
from softgen.targets import get_target, host_supports


@pytest.fixture(scope="module")
def k():
    return kernel("softmax", "two-pass", "host")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.complex64, bool])
def test_other_dtypes_are_a_type_error(k, dtype):
    with pytest.raises(TypeError, match="float32"):
        k(np.ones((2, 3), dtype))


def test_non_arrays_and_0d(k):
    with pytest.raises(TypeError, match="ndarray"):
        k([[1.0, 2.0]])
    with pytest.raises(ValueError, match="at least one axis"):
        k(np.array(1.0, np.float32))


@pytest.mark.parametrize("layout", ["reversed-rows", "reversed-both", "transposed",
                                    "strided-last-axis", "reversed-middle-axis"])
def test_out_takes_any_strides_like_a_ufunc(k, layout, rng):
    """out= need not be addressable by the C ABI (ld is a size_t, the last axis contiguous):
    such an out gets the result through a temporary, as NumPy ufuncs accept any strides."""
    x = rng.standard_normal((3, 4, 9)).astype(np.float32)
    base = np.full((3, 4, 18), 7.0, np.float32)
    out = {"reversed-rows": base[:, :, :9][:, ::-1][::-1],
           "reversed-both": base[:, :, :9][..., ::-1, ::-1],
           "transposed": np.full((9, 4, 3), 7.0, np.float32).T,
           "strided-last-axis": base[:, :, ::2],
           "reversed-middle-axis": base[:, ::-1, :9]}[layout]
    y = run(k, x, out=out)
    assert y is out and np.array_equal(out, run(k, x))
    if layout == "strided-last-axis":
        assert np.all(base[:, :, 1::2] == 7.0)   # only out's elements were written


def test_numpy_scalars_behave_as_0d_arrays(k):
    """softmax of a 0-d input is refused (issue #15 may revisit); a NumPy scalar gets exactly
    the 0-d array's error, not 'got float32'."""
    for scalar, err in ((np.float32(1.0), ValueError), (np.float64(1.0), TypeError)):
        with pytest.raises(err) as as_scalar:
            k(scalar)
        with pytest.raises(err) as as_array:
            k(np.array(scalar))
        assert str(as_scalar.value) == str(as_array.value)
    with pytest.raises(ValueError, match=r"got shape \(\) \(NumPy scalars and 0-d arrays have no axis\)"):
        k(np.float32(1.0))
    km = softgen.compile("sinkhorn", target="scalar")
    with pytest.raises(ValueError, match="at least two axes"):
        km(np.float32(1.0))


def test_out_is_checked_and_left_untouched_on_error(k):
    x = np.ones((2, 5), np.float32)
    for bad, err in [(np.zeros((2, 4), np.float32), ValueError), (np.zeros((2, 5)), TypeError),
                     ([0.0] * 10, TypeError)]:
        before = np.array(bad, copy=True)
        with pytest.raises(err):
            k(x, out=bad)
        assert np.array_equal(np.asarray(bad), before)
    ro = np.zeros((2, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        k(x, out=ro)


def test_overlapping_out_is_computed_from_a_copy(k):
    buf = np.arange(12, dtype=np.float32)
    x, y = buf[:10].reshape(2, 5), buf[2:12].reshape(2, 5)
    expect = run(k, x.copy())
    run(k, x, out=y)
    assert np.array_equal(y, expect)


@pytest.mark.parametrize("kw,match", [
    (dict(op="softmaxx"), "unknown op"),
    (dict(target="sse9"), "unknown target"),
    (dict(algorithm="four-pass"), "unknown algorithm"),
    (dict(backend="cuda"), "unknown backend"),
    (dict(name="1abc"), "invalid kernel name"),
    (dict(name="a-b"), "invalid kernel name"),
    (dict(name="x);system(\"rm -rf /\""), "invalid kernel name"),
    (dict(name="int"), "invalid kernel name"),
    (dict(name="sg_exp"), "invalid kernel name"),
    (dict(name="a" * 65), "invalid kernel name"),
    (dict(scale=0.0), "scale"),
    (dict(scale=-1.0), "scale"),
    (dict(scale=float("nan")), "scale"),
    (dict(scale=1e-50), "float32"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=2.0, scale=3.0), "not both"),
    (dict(alpha=1.0), "no parameter"),
    (dict(schedule={"unroll": 0}), "unroll"),
    (dict(schedule={"unroll": 4, "accumulators": 3}), "divide"),
    (dict(schedule={"block": 102}), "block"),
    (dict(schedule={"unroll": 2.5}), "unroll"),
    (dict(schedule={"vector": 3}), "unknown schedule"),
    (dict(schedule="fast"), "schedule"),
])
def test_bad_arguments_raise_usage_errors(kw, match):
    args = {"op": "softmax", "target": "scalar", **kw}
    with pytest.raises(softgen.UsageError, match=match):
        softgen.compile(args.pop("op"), **args)


# Names that reached the C compiler as a BuildError, or built a library that breaks its host
# program: an exported `puts` replaces libc's, `linux` is a predefined macro, `X_OK` (name `x`)
# is unistd.h's.
@pytest.mark.parametrize("name", [
    "abc\n", "SG_LANES", "VEC", "IVEC", "MASK", "V_LOAD", "size_t", "NULL", "malloc", "expf",
    "_mm256_add_ps", "puts", "printf", "errno", "stdin", "x", "y", "linux", "unix", "i386",
    "class", "main", "W", "_Foo", "EINVAL", "vaddq_f32", "Sg_helper",
])
def test_names_colliding_with_c_are_usage_errors(name):
    with pytest.raises(softgen.UsageError, match="invalid kernel name"):
        softgen.compile("softmax", target="scalar", name=name)


def test_names_the_generated_code_defines_are_refused_on_every_target():
    """Derived, not hand-listed: every macro and typedef of every target's ISA header."""
    import re

    from softgen.kernel import check_name
    from softgen.render import isa_header
    from softgen.targets import all_targets
    for t in all_targets().values():
        idents = re.findall(r"#define (\w+)|typedef [^;]*?(\w+);", isa_header(t))
        for ident in {a or b for a, b in idents} - {""}:
            with pytest.raises(softgen.UsageError):
                check_name(ident)


@pytest.mark.parametrize("name", ["my_softmax", "attn_probs", "exp_norm", "topk_router", "Softmax2"])
def test_ordinary_names_are_accepted(name):
    assert softgen.compile("softmax", target="scalar", name=name).name == name


def test_numpy_and_index_integers_are_accepted_as_parameters():
    """Parameters normalise to Python numbers (and strings for choices) whatever their type."""
    class Two:
        def __index__(self):
            return 2
    for k in (np.int64(2), np.uint8(2), Two(), np.array(2), 2.0):
        kd = softgen.compile("topk_softmax", target="scalar", k=k, sparse=np.True_)
        assert kd.params == {"k": 2, "renormalize": 1, "sparse": 1} and type(kd.params["k"]) is int
    assert softgen.compile("softmax", target="scalar", temperature=np.float32(2)).params == {"scale": 0.5}
    assert softgen.compile("softmax", target="scalar", scale=np.array(2.0)).params == {"scale": 2.0}
    assert softgen.compile("newton_pinv", target="scalar", variant=np.str_("norm")).params["variant"] == "norm"
    assert softgen.compile("sinkhorn", target="scalar", n_iter=np.int32(2)).params["n_iter"] == 2
    for sched in ({"unroll": np.int64(2), "block": np.int32(1024)},
                  softgen.Schedule(unroll=np.int64(2), accumulators=np.int8(2), block=1024)):
        s = softgen.compile("softmax", target="scalar", schedule=sched).schedule
        assert (s.unroll, s.block) == (2, 1024) and type(s.unroll) is int and type(s.block) is int


@pytest.mark.parametrize("op,kw,match", [
    ("softmax", dict(scale=10 ** 400), "parameter scale must be finite"),
    ("softmax", dict(scale=True), "parameter scale must be a real number, got True"),
    ("softmax", dict(temperature="2"), "parameter temperature must be a real number, got '2'"),
    ("softmax", dict(scale=np.array([2.0])), "parameter scale must be a real number"),
    ("softmax", dict(scale=2 + 0j), "parameter scale must be a real number"),
    ("newton_pinv", dict(variant=np.array(["norm"])), "parameter variant must be one of"),
    ("newton_pinv", dict(variant=1), "parameter variant must be one of"),
    ("topk_softmax", dict(k="2"), "parameter k must be a real number"),
    ("topk_softmax", dict(k=10 ** 400), "parameter k must be finite"),
    ("softmax", dict(schedule={"unroll": np.float64(2)}), "schedule unroll must be an integer"),
    ("softmax", dict(schedule={"unroll": True}), "schedule unroll must be an integer"),
])
def test_bad_parameter_types_are_usage_errors_naming_the_parameter(op, kw, match):
    with pytest.raises(softgen.UsageError, match=match):
        softgen.compile(op, target="scalar", **kw)


def test_usage_errors_are_value_errors():
    assert issubclass(softgen.UsageError, ValueError)


def test_targets_and_host():
    names = [t["name"] for t in softgen.targets()]
    assert {"scalar", "avx2", "avx512"} <= set(names)
    host = softgen.host_target()
    assert host in names and get_target("host").name == host
    assert all(isinstance(t["runnable"], bool) for t in softgen.targets())
    assert [t["name"] for t in softgen.targets() if t["host_default"]] == [host]
    assert get_target("scalar").runnable


@pytest.mark.skipif(host_supports(get_target("avx512")), reason="this CPU runs AVX512")
def test_missing_isa_raises_instead_of_sigill(tmp_path):
    """Run in a subprocess so that a SIGILL would show up as a signal, not kill the test run."""
    code = """
import numpy as np, softgen
k = softgen.compile("softmax", algorithm="two-pass", target="avx512")
assert "__m512" in k.source or "_mm512" in k.source
k.export(%r)
try:
    k(np.ones((2, 33), np.float32))
except softgen.TargetNotSupportedError as e:
    print("refused:", e)
""" % str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "avx512" in r.stdout
    assert any(p.suffix == ".so" for p in tmp_path.iterdir())


def test_kernel_metadata(k):
    assert k.op == "softmax" and k.algorithm == "two-pass" and k.target.name == softgen.host_target()
    assert k.plan.bytes_per_element == 12
    head = k.source[:2000]
    for word in ("softmax", "two-pass", k.target.name, str(k.schedule.unroll), softgen.__version__):
        assert word in head
    assert k.name in repr(k)
    assert "ret" in k.asm() or "ret" in k.asm().lower()


def test_auto_algorithm_and_default_name(monkeypatch):
    # algorithm="auto": the cost model (softgen.costmodel) over the target's auto_algorithms. One
    # winner at every size is a plain kernel of that algorithm, named as if it had been asked for.
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L1d=32K,L2=512K,L3=32M")
    # rows and lazymax given: the model varies neither (nor pipeline, which excludes rows)
    k = softgen.compile("softmax", target="scalar", schedule={"rows": 2, "lazymax": True})
    assert k.algorithm == "three-pass-reload" and k.name.startswith("softgen_f32_softmax_3pl__scalar_u")
    assert not k.dispatcher and [e.algorithm for e in k.dispatch.entries] == ["three-pass-reload"]
    k2 = softgen.compile("softmax", target="avx2")   # several winners: a dispatcher
    assert k2.algorithm == "auto" and k2.dispatcher and "_auto__avx2_" in k2.name
    # variants keyed by (algorithm, schedule): three-pass-reload with pipeline up to 256 elements
    # (batches of short rows, costmodel.batch_cycles), with lazymax beyond, two-pass beyond L3
    assert [(v.algorithm, v.schedule.lazymax, v.schedule.pipeline) for v in k2.variants] == \
        [("three-pass-reload", False, True), ("three-pass-reload", True, False), ("two-pass", False, False)]
    assert [v.name.rsplit("__", 1)[1] for v in k2.variants] == ["3pl_u32_acc2_pp", "3pl_u32_acc2_lz", "2p"]
    k3 = softgen.compile("softplus_l1", target="avx2")   # one algorithm; non-temporal stores beyond L3
    assert {e.algorithm for e in k3.dispatch.entries} == {"direct-reload"}
    assert [(v.algorithm, v.schedule.stream) for v in k3.variants] == [("direct-reload", False), ("direct-reload", True)]
    assert [v.name.rsplit("__", 1)[1] for v in k3.variants] == ["dl_u32_acc2", "dl_u32_acc2_nt"]


def test_kernels_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path))
    k = softgen.compile("softmax", algorithm="online", target="scalar", name="cache_probe")
    y = k(np.ones((1, 3), np.float32))
    assert np.allclose(y, 1 / 3)
    built = list(tmp_path.rglob("*.so"))
    assert len(built) == 1
    softgen.compile("softmax", algorithm="online", target="scalar", name="cache_probe")(np.ones((1, 3), np.float32))
    assert list(tmp_path.rglob("*.so")) == built


def test_fast_call_path_is_built_and_agrees_with_the_general_path(k, rng):
    from softgen import kernel as kmod
    assert kmod._fastcall is not None, "softgen._fastcall was not built (needs a C compiler and Python headers)"
    x = rng.standard_normal((4, 37)).astype(np.float32)
    fast = k(x)
    slow = k._run(k._fn, x, None)
    assert np.array_equal(fast, slow)
    assert kmod._fastcall(k._fn._softgen_ptr, x, np.empty((4, 36), np.float32)) is NotImplemented
    assert kmod._fastcall(k._fn._softgen_ptr, x.astype(np.float64), np.empty((4, 37))) is NotImplemented
    assert kmod._fastcall(k._fn._softgen_ptr, x, x[:, ::-1]) is NotImplemented
    # NumPy arrays are read from their fields: a swapped byte order or a read-only out declines
    assert kmod._fastcall(k._fn._softgen_ptr, x.astype(">f4"), np.empty((4, 37), np.float32)) is NotImplemented
    ro = np.empty((4, 37), np.float32)
    ro.flags.writeable = False
    assert kmod._fastcall(k._fn._softgen_ptr, x, ro) is NotImplemented and k._fast(x, ro) is NotImplemented
    assert kmod._fastcall(k._fn._softgen_ptr, ro, np.empty((4, 37), np.float32)) == 0   # a read-only x is read


def test_fast_call_entry_points_refuse_bad_calls_before_calling():
    """A wrong argument count is a TypeError naming the signature and a null entry point a
    ValueError, for every _fastcall entry: never a call through NULL."""
    from softgen import _fastcall as fc
    x = np.zeros((2, 4), np.float32)
    for fn, args in ((fc.call, (x, x.copy())), (fc.unary, (x, x.copy())),
                     (fc.selected, (x, np.zeros((2, 1), np.int64), np.zeros((2, 1), np.float32))),
                     (fc.general, ((2, 0, 1, 0, 1), (x,), x.copy()))):
        with pytest.raises(ValueError, match="null kernel entry point"):
            fn(0, *args)
        with pytest.raises(TypeError, match=fn.__name__ + r"\(fnptr"):
            fn(1)
    with pytest.raises(TypeError, match="tuples"):
        fc.general(1, [], (), x)
    with pytest.raises(ValueError, match="null kernel entry point"):   # a kernel's entry (issue 15)
        fc.entry(0, "row", None)
    with pytest.raises(TypeError, match=r"entry\(fnptr"):
        fc.entry(1)
    with pytest.raises(ValueError, match="kind is one of"):
        fc.entry(1, "rows", None)
    with pytest.raises(ValueError, match="spec"):
        fc.entry(1, "general", (7, 0, 1))
    with pytest.raises(TypeError, match=r"\(x, out\[, threads\]\)"):
        fc.entry(1, "row", None)(x)
    with pytest.raises(TypeError, match=r"\(x, out\[, threads\]\)"):
        fc.entry(1, "row", None, 1)(x, None, 1, 1)
    with pytest.raises(ValueError, match="null kernel entry point"):   # tune's timing loop (issue 13)
        fc.repeat(0, x, x.copy(), 1, 1)
    with pytest.raises(TypeError, match=r"repeat\(mt_fnptr"):
        fc.repeat(1)


def test_one_function_per_op_compiles_once_and_matches_the_reference():
    """softgen.<op>(x, ...) compiles for this CPU on first use and caches the kernel; giving a
    call-time argument (n_attended) selects the variant that takes it."""
    from softgen import reference as ref
    from softgen.functional import _kernel
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (4, 50)).astype(np.float32)
    for op in softgen.OPS:
        assert callable(getattr(softgen, op)) and op in softgen.__all__
    assert np.allclose(softgen.softmax(x, temperature=0.5), ref.softmax(x, temperature=0.5), rtol=2e-6)
    misses = _kernel.cache_info().misses   # (a second call finds its kernel without compiling:
    softgen.softmax(x, temperature=0.5)     # functional's per-argument lookup, then _kernel's cache)
    assert _kernel.cache_info().misses == misses
    n = np.array([50, 40, 30, 20])
    assert np.allclose(softgen.lssa(x, 32, n_attended=n), ref.lssa(x, 32, n_attended=n), rtol=1e-5)
    assert np.allclose(softgen.lssar(x, n_attended=n, p=3), ref.lssar(x, p=3, n_attended=n),
                       rtol=1e-4, atol=1e-7)
    with pytest.raises(softgen.UsageError, match="positional"):
        softgen.lssa(x, 64, 1, 3)
    with pytest.raises(softgen.UsageError, match="no parameter"):
        softgen.stablemax(x, scale=2.0)


@pytest.fixture
def gain_softmax_op():
    """An op with a call-time argument, defined only through the registry (no op names in
    functional, kernel or export): softmax(g_i x) with a per-row gain g the caller passes."""
    from softgen import reference as ref
    from softgen.ops import OPS, register

    def reference(x, per_row=0, gain=None):
        g = np.ones(np.shape(x)[:-1]) if gain is None else np.asarray(gain, np.float64)
        return ref.softmax(np.asarray(x, np.float64) * g[..., None])

    def row_args(shape, params, gain=None):
        if bool(params["per_row"]) != (gain is not None):
            raise TypeError("gain goes with per_row=1")
        return {"gain": gain} if gain is not None else {}

    def call_build(build, call):
        build.setdefault("per_row", int("gain" in call))
        return build

    @register("gain_softmax_test", reference, params={"per_row": 0}, call_params=("gain",),
              row_args=row_args, row_param_docs={"gain": "g_i > 0, the gain of row r"},
              call_build=call_build, sums_to_one=True,
              sample_call=lambda shape, params: {"gain": 2.0} if params["per_row"] else {})
    def gain_softmax(x, per_row):
        g = x.p.row_param("gain") if per_row else x.const(1.0)
        e = ((x - x.max()) * g).exp()
        return e * e.sum().finite_or_nan().recip()

    yield "gain_softmax_test"
    del OPS["gain_softmax_test"]


def test_an_op_owns_its_call_time_arguments(gain_softmax_op, tmp_path, rng):
    """The op's metadata decides the kernel variant a call needs (``call_build``), the per-row
    arrays (``row_args``) and their documentation in the header and manifest."""
    import json

    from softgen.functional import apply
    from softgen.ops import get_op
    op = get_op(gain_softmax_op)
    assert op.build_params_for_call({}, {"gain": 1.0}) == {"per_row": 1}
    assert op.build_params_for_call({"per_row": 0}, {}) == {"per_row": 0}
    x = rng.uniform(-4, 4, (3, 37)).astype(np.float32)
    g = np.array([0.5, 1.0, 3.0])
    assert np.allclose(apply(gain_softmax_op, x, gain=g), op.reference(x, 1, g), rtol=1e-5)
    assert np.allclose(apply(gain_softmax_op, x), op.reference(x), rtol=1e-5)
    k = softgen.compile(gain_softmax_op, per_row=1, name="gain_softmax_k")
    assert k.row_params == ["gain"]
    k.export(tmp_path)
    manifest = json.loads((tmp_path / "gain_softmax_k.json").read_text())
    assert manifest["row_params"] == {"gain": "g_i > 0, the gain of row r"}
    assert "g_i > 0, the gain of row r" in (tmp_path / "gain_softmax_k.h").read_text()
