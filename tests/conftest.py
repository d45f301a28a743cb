"""Shared helpers: run a kernel natively or, for an ISA this CPU lacks, through emulation; check a
result against the op's float64 reference with the op's own tolerance and the edge-case contract."""
from __future__ import annotations

import compileall
import contextlib
import functools
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from _pytest.assertion import rewrite as assert_rewrite

import softgen
from softgen import runtime
from softgen._data import data_dir
from softgen.backends import get_backend, tvm_adapter
from softgen.backends.tvm_adapter import available as tvm_available
from softgen.emulator import emulation_available
from softgen.ops import build_program, get_op
from softgen.passes import applicable_algorithms
from softgen.targets import ENV_PATH, all_targets, get_target

TARGETS = [t["name"] for t in softgen.targets()]
OPS = [op for op in softgen.OPS if get_op(op).kind == "row"]     # the row ops
MATRIX_OPS = [op for op in softgen.OPS if get_op(op).kind == "matrix"]
# op -> the algorithms that apply to it (the four softmax ones, or "direct")
ALGORITHMS_OF = {op: applicable_algorithms(build_program(op)) for op in OPS}
OP_ALGS = [(op, alg) for op in OPS for alg in ALGORITHMS_OF[op]]
BACKENDS = ["c", "tvm"]
# CI installs every emulator and TVM (.ci/run): there a missing one is a failure, not a skip.
STRICT = os.environ.get("CI") == "true"


def pytest_configure(config):
    """Build kernels into a cache for this run, not the user's, unless SOFTGEN_CACHE_DIR is set
    for the run (e.g. to keep one across runs). In the environment, so that CLI subprocesses and
    pytest-xdist workers (started later, by this controller) share the kernels built."""
    # the model, not this machine's tuning records, decides algorithm="auto" in tests (test_tune
    # turns the records back on where it means to)
    os.environ["SOFTGEN_USE_TUNING"] = "0"
    if not os.environ.get("SOFTGEN_CACHE_DIR"):
        config._softgen_cache = os.environ["SOFTGEN_CACHE_DIR"] = tempfile.mkdtemp(prefix="softgen-tests-")
    # Under PYTHONDONTWRITEBYTECODE (set on some CI machines) every CLI subprocess and xdist
    # worker would compile softgen's 18K lines again (~0.25 CPU-s each, ~150 processes a run):
    # compile them once; Python still reads bytecode when told not to write it.
    if sys.flags.dont_write_bytecode:
        compileall.compile_dir(Path(softgen.__file__).parent, quiet=2)

    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        _rewrite_tests_once(config)

    if os.environ.get("SOFTGEN_BUILD_LOG"):
        _log_builds(os.environ["SOFTGEN_BUILD_LOG"])


def _rewrite_tests_once(config) -> None:
    """pytest-xdist's controller, before the workers start: each worker would rewrite the asserts
    of every test module (~4 CPU-s) unless it finds pytest's cache of them, which workers
    starting together do not (nor any process under PYTHONDONTWRITEBYTECODE): write it once
    here. Best effort (pytest internals): on any failure the workers rewrite as usual."""
    try:
        here = Path(__file__).parent.resolve()
        files = {here / "conftest.py"}
        for arg in config.args:   # the files and directories given (testpaths by default)
            p = (config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
            files |= set(here.glob("test_*.py")) if p in (here, *here.parents) else {p} if p.parent == here else set()
        state = config.stash[assert_rewrite.assertstate_key]
        for fn in sorted(f for f in files if f.name == "conftest.py" or f.name.startswith("test_")):
            cache = assert_rewrite.get_cache_dir(fn)
            pyc = cache / (fn.name[:-3] + assert_rewrite.PYC_TAIL)
            if assert_rewrite._read_pyc(fn, pyc, state.trace) is None and assert_rewrite.try_makedirs(cache):
                source_hash, co = assert_rewrite._rewrite_test(fn, config)
                assert_rewrite._write_pyc(state, co, source_hash, pyc)
    except Exception:   # an optimisation only
        pass


def _log_builds(path: str) -> None:
    """SOFTGEN_BUILD_LOG=file: one JSON line per kernel the cache had to build (C compiler or
    TVM), with the test that asked, the file built, wall and CPU seconds (this process and its
    children) and its number of C files (a dispatcher: its variants'), to profile the suite's
    builds: which test file builds what, what is built twice."""
    def logged(inner):
        def _cached(entry, make, what, rebuild=False):
            built = []

            def timed(tmp):
                c0, w0, r0 = time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                res = make(tmp)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                built.append({"test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
                              "file": entry.name, "what": "tvm" if entry.name.startswith("tvm-") else "cc", "pid": os.getpid(),
                              "wall": time.perf_counter() - w0, "cpu": time.process_time() - c0
                              + r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
                              "c_files": len(list(Path(tmp).glob("*.c")))})
                return res
            out = inner(entry, timed, what, rebuild)
            if built:
                with open(path, "a") as f:
                    f.write(json.dumps(built[0]) + "\n")
            return out
        return _cached
    runtime._cached = logged(runtime._cached)
    tvm_adapter._cached = logged(tvm_adapter._cached)


def own_cache(path: Path) -> str:
    """A cache root of its own at ``path`` (for a tuning database of the test's own) whose kernel
    directory is the run's (a symlink to it), so that a test with its own tuning records still
    builds no kernel another test built: ``monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(p))``.
    Not for tests of the cache itself (clear, prune, counting its files): those keep a real one."""
    kernels = runtime.cache_dir()             # the run's (SOFTGEN_CACHE_DIR set by pytest_configure)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    (path / kernels.name).symlink_to(kernels, target_is_directory=True)
    return str(path)


@pytest.fixture
def own_db(tmp_path, monkeypatch):
    """SOFTGEN_CACHE_DIR of this test (``own_cache``): an empty tuning database, the run's kernels."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_unconfigure(config):
    if getattr(config, "_softgen_cache", None):
        shutil.rmtree(config._softgen_cache, ignore_errors=True)
        del os.environ["SOFTGEN_CACHE_DIR"]


@functools.cache
def kernel(op: str, algorithm: str, target: str, backend: str = "c", **params) -> softgen.Kernel:
    if backend == "tvm":
        ok, why = tvm_available()
        if not ok:
            (pytest.fail if STRICT else pytest.skip)(f"TVM backend: {why}")
    return softgen.compile(op, algorithm=algorithm, target=target, backend=backend, **params)




def skip_unless_emulated(t) -> None:
    ok, need = emulation_available(t)
    if not ok:
        (pytest.fail if STRICT else pytest.skip)(f"target {t.name} cannot run here and emulating it needs {need}")


def _can_emulate(k: softgen.Kernel) -> None:
    if not get_backend(k.backend).simde_emulable and k.target.arch == "x86_64":
        pytest.skip(f"{k.backend} {k.target.name} kernels are machine code: they need a CPU with "
                    f"{', '.join(k.target.missing_features())} (SIMDe emulates C intrinsics only)")
    skip_unless_emulated(k.target)


def run(k: softgen.Kernel, x: np.ndarray, out=None, **call) -> np.ndarray:
    """Native call when the CPU has the ISA, emulated otherwise (the same generated source)."""
    if k.runnable:
        return k(x, out=out, **call)
    _can_emulate(k)
    return k.run_emulated(x, out=out, **call)


def run_many(k: softgen.Kernel, xs: list[np.ndarray], calls=None) -> list[np.ndarray]:
    """``run`` over many inputs; emulated targets run them in one emulator process."""
    calls = calls or [{}] * len(xs)
    if k.runnable:
        return [k(x, **c) for x, c in zip(xs, calls)]
    _can_emulate(k)
    return k.run_emulated_many(xs, calls=calls)


def check(k: softgen.Kernel, x: np.ndarray, y: np.ndarray, what: str = "", row_names=None,
          **call) -> None:
    """y must match the float64 reference of k's op within the op's tolerance; NaN exactly where
    the reference is NaN; exact results for infinite references and -inf inputs; log-probabilities
    never above 0 (however close the reference is to 0). ``call``: the
    op's call-time arguments the kernel was given; ``row_names`` name the rows of a 2-d x in
    failure messages."""
    name = (lambda i: f" row {i[0]} '{row_names[i[0]]}'") if row_names else (lambda i: "")
    op = get_op(k.op)
    r = op.reference(x, **k.params, **call)
    if op.f32_overflow is not None:  # the f32 row sum overflows: the kernel must give a NaN row
        over = op.f32_overflow(x, **k.params, **call)
        assert np.isnan(y[over]).all(), f"{k.name} {what}: rows whose f32 sum overflows must be NaN"
        r = np.where(over[..., None], np.nan, r)
    assert y.shape == x.shape and y.dtype == np.float32
    where = f"{k.name} {what}"
    nan_r, nan_y = np.isnan(r), np.isnan(y)
    if not np.array_equal(nan_r, nan_y):
        i = tuple(np.argwhere(nan_r != nan_y)[0])
        raise AssertionError(f"{where}{name(i)}: NaN pattern differs at {i} (reference NaN: {nan_r[i]})")
    ok = ~nan_r
    with np.errstate(over="ignore"):
        r32 = r.astype(np.float32)                # |r| > FLT_MAX rounds to inf in f32
    exact = ok & (np.isinf(r32) | np.isneginf(x))  # -inf inputs give exact 0 (or -inf for logs)
    if not np.array_equal(y[exact], r32[exact]):
        i = tuple(np.argwhere(exact & (y != r32))[0])
        raise AssertionError(f"{where}{name(i)}: exact 0/inf entries differ at {i}")
    if op.log_probs and not np.all(y[~nan_y] <= 0):
        i = tuple(np.argwhere(y > 0)[0])
        raise AssertionError(f"{where}{name(i)}: log-probability {y[i]!r} > 0 at {i}")
    tol = op.tolerance(x, r, k.params, call)
    with np.errstate(invalid="ignore"):
        err = np.abs(y.astype(np.float64) - r)
    bad = ok & ~exact & ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{where}{name(i)}: {bad.sum()} element(s) out of tolerance; first at {i}: "
                             f"y={y[i]!r} ref={r[i]!r} err={err[i]:.3g} tol={tol[i]:.3g} "
                             f"(max err/tol {np.max(err[ok & ~exact] / tol[ok & ~exact]):.3g})")
    if op.normalised(k.params):
        finite_rows = ~np.any(nan_r, axis=-1)
        if x.shape[-1] and finite_rows.any():
            sums = y.astype(np.float64).sum(axis=-1)[finite_rows]
            assert np.all(np.abs(sums - 1) <= 1e-5), f"{where}: row sums {sums.min()}..{sums.max()}"


def check_attention(k: softgen.Kernel, o: np.ndarray, *inputs) -> float:
    """An attention kernel's output o within the op's tolerance of the float64 oracle with the
    kernel's parameters and inputs (q, k, v[, mask or landmarks]); NaN exactly where the oracle's
    is. Returns the largest err/tol."""
    op = get_op("attention")
    r = op.reference(*inputs, **k.params)
    assert o.shape == r.shape
    nan = np.isnan(r)
    assert np.array_equal(nan, np.isnan(o)), f"{k.name}: NaN pattern differs"
    tol = op.tolerance(inputs, r, k.params)
    err = np.where(nan, 0.0, np.abs(o.astype(np.float64) - r))
    assert (err <= tol).all(), f"{k.name}: max err/tol {np.max(err / tol):.3g}"
    return np.max(err / tol, initial=0.0)


def run_cases(k: softgen.Kernel, cases: list[tuple]) -> list[np.ndarray]:
    """A matrix kernel on every tuple of inputs: natively, or emulated in one emulator process."""
    if k.runnable:
        return [k(*c) for c in cases]
    _can_emulate(k)
    return k.run_emulated_many(cases)


MODULE_SCOPED = re.compile(r"""scope\s*=\s*["'](module|package|class)["']""")


@functools.cache
def shares_module_builds(path: Path) -> bool:
    """Whether the test file ``path`` has a module-scoped fixture (a build made once per worker
    that runs the module: its tests are kept on one worker)."""
    try:
        return bool(MODULE_SCOPED.search(path.read_text()))
    except OSError:
        return False


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``-n auto`` (pytest-xdist) without ``--dist``: a file with a module-scoped fixture runs on
    one worker, every other test on whichever worker is free (the kernel cache is shared, so a
    kernel built by one worker is a cache hit for the other). pytest-xdist's ``loadgroup`` would
    do it with markers, but its marks stopped grouping with pytest 9.2 (pytest-xdist#1386)."""
    if config.getoption("dist") != "load" or any(a.startswith("--dist") or a == "-d"
                                                 for a in config.invocation_params.args):
        return None
    from xdist.scheduler import LoadScopeScheduling  # optional: only under pytest-xdist

    class FileOrTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if shares_module_builds(config.rootpath / path) else nodeid

    return FileOrTest(config, log)


# The quick subset (-m quick): C kernels on this CPU in-process. Not in it: TVM builds, qemu
# (neon) and SIMDe runs, other targets of the kernel matrix, sweeps (a kernel per scale, k or
# power), CLI subprocesses, exports built by CMake, private kernel caches built from scratch, the
# tuner and benchmarks (the full run has them all).
NOT_QUICK_WORDS = ("tvm", "neon", "emulat", "simde", "qemu", "cross", "subprocess", "_cli", "tune",
                   "backends_agree", "not_shift_invariant",     # these two build TVM kernels too
                   "every_positive_finite_scale", "scale_and_temperature",   # a kernel per scale
                   "sweep", "other_ops_and_targets")   # a kernel per k or power; other targets
NOT_QUICK_FILES = {"test_cli.py", "test_export_package.py", "test_emulation.py", "test_neon.py", "test_xisa.py",
                   "test_tune.py", "test_benchmark.py", "test_properties.py", "test_abi_c.py", "test_cache.py",
                   "test_knobs.py"}
QUICK_TARGETS = {"host", softgen.host_target()}   # the kernel matrix on this CPU's best target only


def quick(item) -> bool:
    if item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1] in NOT_QUICK_FILES:
        return False
    if any(w in item.nodeid.lower() for w in NOT_QUICK_WORDS) or item.get_closest_marker("slow"):
        return False
    target = getattr(getattr(item, "callspec", None), "params", {}).get("target")
    return target is None or target in QUICK_TARGETS


def pytest_collection_modifyitems(config, items):
    """``slow`` tests (exhaustive sweeps) run only with ``-m slow`` or SOFTGEN_SLOW=1; ``quick``
    marks the quick subset."""
    for item in items:
        if quick(item):
            item.add_marker(pytest.mark.quick)
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("SOFTGEN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="exhaustive sweep: run with -m slow")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@contextlib.contextmanager
def host_copy_with_network_max(k: int, suffix: str):
    """The name of a copy of the host target whose top-k insertion network takes k up to ``k``
    (0: top-k always takes radix select), found through SOFTGEN_TARGETS_PATH while the block runs."""
    host = get_target("host")
    with pytest.MonkeyPatch.context() as mp:
        d = tempfile.mkdtemp(prefix=f"sg-{suffix}-")
        text = (data_dir("targets") / f"{host.name}.toml").read_text().splitlines()
        name = f"{host.name}_{suffix}"
        lines = [f'name = "{name}"' if ln.startswith("name = ") else "host_rank = 0" if ln.startswith("host_rank")
                 else ln for ln in text if not ln.startswith("topk_network_max_k")]
        lines.insert(next(i for i, ln in enumerate(lines) if ln.startswith("[")), f"topk_network_max_k = {k}")
        with open(f"{d}/{name}.toml", "w") as f:
            f.write("\n".join(lines) + "\n")
        mp.setenv(ENV_PATH, d)
        all_targets.cache_clear()
        yield name
    all_targets.cache_clear()


def contiguous_heads(q, k, v):
    """Contiguous copies of attention inputs with the kv heads repeated (GQA): what the general
    matrix ABI needed before the explicit-stride entry."""
    rep = q.shape[-3] // k.shape[-3]
    return tuple(np.ascontiguousarray(np.repeat(a, r, axis=-3)) for a, r in ((q, 1), (k, rep), (v, rep)))


def check_strided_heads(kern, q, k, v, m):
    """A strided-entry attention kernel on views q, k, v (and a (Lq, Lk) mask m broadcast over
    batch x heads): the same bits as on contiguous copies, the float64 oracle, the same bits on two
    threads. Returns the output."""
    o = kern(q, k, v, m)
    c = contiguous_heads(q, k, v)
    cm = np.ascontiguousarray(np.broadcast_to(m, q.shape[:-1] + (m.shape[-1],)))
    np.testing.assert_array_equal(o, kern(*c, cm))
    check_attention(kern, o, *c, cm)
    np.testing.assert_array_equal(kern(q, k, v, m, threads=2), o)
    return o
