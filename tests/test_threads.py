"""Threads in generated libraries (issue 13, "Threads"): the library's pool (templates/pool.h.j2),
rows split across threads, the thread count API (``<name>_mt``, ``threads=``, ETHREADS,
SOFTGEN_NUM_THREADS) and the thread policy (``costmodel.ThreadPolicy``).

Rows are independent, so every thread count gives bitwise the result of one thread. Kernels are
built once per module; sizes are small (the policy is exercised by explicit counts)."""
import ctypes
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import check, own_cache, skip_unless_emulated

import softgen
from softgen import costmodel
from softgen.kernel import MatrixKernel
from softgen.runtime import compiler_for
from softgen.schedule import Schedule
from softgen.targets import get_target, host_arch
from softgen.tune import ROWS_MAX

tune_mod = sys.modules["softgen.tune"]   # softgen.tune is also the function

COUNTS = (1, 2, 3, 4)   # more threads than cores is fine


def _rows(rows: int, n: int, seed: int = 0, specials: bool = True) -> np.ndarray:
    x = (np.random.default_rng(seed).standard_normal((rows, n)) * 4).astype(np.float32)
    if specials and rows > 2:   # specials in a late row (the last thread's range)
        x[-2, n // 2] = np.inf
        x[-1, 1] = np.nan
        x[-1, 3] = -np.inf
    return x


@pytest.fixture(scope="module", params=[
    ("softmax", "three-pass-reload", {}), ("softmax", "two-pass", {}), ("softmax", "online", {}),
    ("log_softmax", "auto", {}), ("softplus_l1", "auto", {})], ids=lambda p: f"{p[0]}-{p[1]}")
def row_kernel(request):
    op, alg, params = request.param
    return softgen.compile(op, algorithm=alg, **params)


@pytest.mark.parametrize("rows, n", [(3, 40), (7, 33), (64, 17)])   # rows < threads, not divisible
def test_every_thread_count_is_bitwise_one_thread(row_kernel, rows, n):
    x = _rows(rows, n)
    one = row_kernel(x, threads=1)
    check(row_kernel, x, one)
    for t in COUNTS:
        got = row_kernel(x, threads=t)
        assert np.array_equal(got, one, equal_nan=True), (t, rows, n)
    assert np.array_equal(row_kernel(x), one, equal_nan=True)           # auto
    assert np.array_equal(row_kernel(x, threads=0), one, equal_nan=True)


def test_strided_and_in_place(row_kernel):
    big = _rows(29, 50, seed=1)
    x = big[:, 3:40]                                       # ldx 50, n 37
    one = row_kernel(np.ascontiguousarray(x), threads=1)
    out = np.full((29, 45), 7.0, np.float32)
    for t in COUNTS:
        y = out[:, 2:39]                                   # ldy 45
        row_kernel(x, out=y, threads=t)
        assert np.array_equal(y, one, equal_nan=True), t
        assert (out[:, :2] == 7).all() and (out[:, 39:] == 7).all()   # nothing outside the rows
        inplace = big.copy()[:, 3:40]
        assert row_kernel(inplace, out=inplace, threads=t) is inplace
        assert np.array_equal(inplace, one, equal_nan=True), t


def test_per_row_parameters_split_with_their_rows():
    k = softgen.compile("lssa", count_keys=0)
    x = _rows(11, 24, seed=2, specials=False)
    na = np.arange(1, 12) * 2
    one = k(x, n_attended=na, threads=1)
    for t in COUNTS:
        assert np.array_equal(k(x, n_attended=na, threads=t), one), t


def test_topk_rows_split():
    k = softgen.compile("topk_softmax", sparse=1, k=4)
    x = _rows(9, 30, seed=3)
    idx1, w1 = k(x, threads=1)
    for t in COUNTS:
        idx, w = k(x, threads=t)
        assert np.array_equal(idx, idx1) and np.array_equal(w, w1, equal_nan=True), t


@pytest.fixture(scope="module")
def dispatcher():
    """An auto dispatcher with thresholds at a few thousand elements (test_dispatch's SMALL)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTGEN_CACHE_SIZES", "L1d=4K,L2=16K,L3=64K")
        k = softgen.compile("softmax", target="host")
    if not k.dispatcher:
        pytest.skip("the model picks one variant at every size on this target")
    return k


def test_dispatcher_threads_and_table(dispatcher):
    k = dispatcher
    for e in k.dispatch.entries:        # the model's policy: up to the CPUs, one per grain
        assert e.threads == 0 and e.grain > 0 and "threads=auto" in "\n".join(k.dispatch.lines())
    for n in (100, 3000, 9000):         # a row of each variant
        x = _rows(5, n, seed=n)
        one = k(x, threads=1)
        check(k, x, one)
        for t in COUNTS[1:]:
            assert np.array_equal(k(x, threads=t), one, equal_nan=True), (n, t)
    assert f"{k.name}_mt" in k.sources()[f"{k.name}.map"]
    for v, e in zip(k.variants, [next(e for e in k.dispatch.entries if e.symbol == v.name) for v in k.variants]):
        assert f"{e.grain}u, {e.threads})" in v.source   # each variant bakes in its entry's policy


def test_negative_threads_is_a_usage_error_and_the_c_code():
    k = softgen.compile("softmax", algorithm="two-pass")
    x = _rows(4, 16)
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        k(x, threads=-1)
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        k(np.asfortranarray(x), threads=-2)          # the general (ctypes) path too
    for bad in (1.5, True, "2"):
        with pytest.raises(softgen.UsageError, match="threads must be"):
            k(x, threads=bad)
    lib = ctypes.CDLL(str(softgen.runtime.build_shared(k.sources(), k.target)))
    mt = getattr(lib, f"{k.name}_mt")
    mt.argtypes = k._abi.argtypes(mt=True)
    y = np.empty_like(x)
    args = (x.ctypes.data, y.ctypes.data, 4, 16, 16, 16)
    assert mt(*args, -1) == softgen.abi.ETHREADS.code == 9
    assert mt(*args, 3) == 0 and np.array_equal(y, k(x, threads=1), equal_nan=True)


@pytest.fixture(scope="module", params=[("sinkhorn", {}), ("newton_pinv", {}), ("gaussian_kernel", {"head_dim": 8})],
                ids=lambda p: p[0])
def matrix_kernel(request):
    op, params = request.param
    return softgen.compile(op, **params)


def _matrices(k, batch: int, seed: int, wide: int = 0) -> tuple:
    """Inputs of matrix kernel ``k`` for a batch of ``batch`` (strided: rows ``wide`` floats
    longer than the matrix, a view into a wider array)."""
    rng = np.random.default_rng(seed)

    def mat(rows, cols, scale=1.0, diag=0.0):
        a = (rng.standard_normal((batch, rows, cols + wide)) * scale).astype(np.float32)
        a[..., :cols] += diag * np.eye(rows, cols, dtype=np.float32)
        return a[..., :cols]
    if k.op == "gaussian_kernel":
        return mat(5, 8), mat(6, 8)
    if k.op == "newton_pinv":
        return (mat(6, 6, diag=3.0),)
    return (mat(5, 7, scale=3.0),)


@pytest.mark.parametrize("batch", [1, 3, 9])   # 1: never split; 3 < 4 threads; 9: uneven ranges
def test_matrix_ops_bitwise_for_every_thread_count(matrix_kernel, batch):
    """A batch of matrices split across threads (contiguous ranges, a scratch slot per task)
    gives bitwise the one-thread result for every count, auto included, strided inputs and
    outputs too."""
    k = matrix_kernel
    call = (lambda xs, **kw: k(*xs, **kw)) if isinstance(k, MatrixKernel) else \
        (lambda xs, **kw: k(xs[0], **kw))
    xs = _matrices(k, batch, seed=batch)
    one = call(xs, threads=1)
    assert np.array_equal(call(xs), one, equal_nan=True)
    for t in (0, *COUNTS[1:], 7):
        assert np.array_equal(call(xs, threads=t), one, equal_nan=True), t
    strided = _matrices(k, batch, seed=batch, wide=3)
    assert not strided[0].flags.c_contiguous
    want = call(tuple(np.ascontiguousarray(a) for a in strided), threads=1)
    out = np.full(one.shape[:-1] + (one.shape[-1] + 5,), np.nan, np.float32)[..., :one.shape[-1]]
    for t in (1, 2, 4):
        got = call(strided, out=out, threads=t)
        assert got is out and np.array_equal(out, want, equal_nan=True), t


def test_matrix_threads_api(tmp_path):
    """<name>_mt for matrix kernels: in the header and the manifest, ETHREADS for a negative
    count, threads= in the per-op functions (one and several inputs)."""
    k = softgen.compile("sinkhorn")
    paths = k.export(tmp_path)
    h = open(paths["header"]).read()
    assert f"int {k.name}_mt(" in h and "N splits the batch's matrices" in h
    assert json.load(open(paths["manifest"]))["threads"]["symbol"] == f"{k.name}_mt"
    assert k._abi.threaded and f"int {k.name}_mt(" in k.source and "scratch slot per task" in k.source
    assert "the batch's matrices split across threads" in k.explain()
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        k(np.ones((2, 4, 4), np.float32), threads=-1)
    x = (np.random.default_rng(3).standard_normal((5, 4, 4)) * 2).astype(np.float32)
    assert np.array_equal(softgen.sinkhorn(x, threads=3), softgen.sinkhorn(x, threads=1))
    a, b = _matrices(softgen.compile("gaussian_kernel", head_dim=8), 4, seed=4)
    assert np.array_equal(softgen.gaussian_kernel(a, b, 8, threads=2), softgen.gaussian_kernel(a, b, 8))


def test_attention_batch_x_heads_split():
    """softgen.attention: the batch x heads matrices split across threads (a phase that allocates
    its own memory reports through the call's return code), bitwise for every count."""
    rng = np.random.default_rng(16)
    q, k, v = (rng.standard_normal((3, 2, 9, 8)).astype(np.float32) for _ in range(3))
    one = softgen.attention(q, k, v, causal=True, threads=1)
    for t in (0, 2, 3, 4):
        assert np.array_equal(softgen.attention(q, k, v, causal=True, threads=t), one, equal_nan=True), t


def test_matrix_auto_threads_and_workers():
    """Auto on a matrix kernel: one matrix (any size) and a batch of small matrices run on the
    caller (no worker started); an explicit count starts the library's workers."""
    k = softgen.compile("sinkhorn", name="t_mt_matrix_workers")   # a library of its own
    tasks = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731
    pol = k.thread_policy
    assert isinstance(pol, costmodel.MatrixThreadPolicy) and pol.grain > 0 and pol.c_work in k.source
    assert pol.threads(1, 10 ** 9, 64) == 1 and pol.threads(8, 10, 64) == 1 and pol.threads(8, 10 ** 6, 2) == 2
    start = tasks()
    k(_rows(64, 64, specials=False).reshape(1, 64, 64))
    k(_rows(8, 4, specials=False).reshape(2, 4, 4))
    assert tasks() == start
    k(_rows(12, 4, specials=False).reshape(3, 4, 4), threads=3)
    assert tasks() == start + 2


NOMEM = textwrap.dedent("""
    import ctypes, resource, sys, numpy as np, softgen
    libc = ctypes.CDLL(None)   # malloc: big blocks always mmapped, and unmapped when freed
    assert libc.mallopt(-3, 1 << 16) == 1 and libc.mallopt(-1, 1 << 16) == 1   # M_MMAP_, M_TRIM_THRESHOLD
    k = softgen.compile("sinkhorn")
    n = 1 << 21                      # scratch: 3 vectors of n floats (24 MiB) per slot
    x = np.random.default_rng(0).standard_normal((2, 1, n)).astype(np.float32)
    y = np.empty_like(x)
    one = k(x, threads=1).copy()
    vm = lambda: int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm() + (36 << 20), hard))   # one slot fits, not two
    k(x, out=y, threads=2)
    fits = bool(np.array_equal(y, one))
    resource.setrlimit(resource.RLIMIT_AS, (vm() + (8 << 20), hard))    # not even one slot
    try:
        k(x, out=y, threads=2)
        err = "none"
    except RuntimeError as e:
        err = str(e)
    print(fits, "|", err)
""")


def test_matrix_scratch_per_task_falls_back_then_enomem():
    """The per-task scratch is one allocation made before any matrix is touched: when the slots
    of two tasks do not fit, the call runs on one slot (the same result); when one does not
    fit, it returns ENOMEM (a RuntimeError) and frees nothing twice."""
    softgen.compile("sinkhorn")(np.ones((1, 2, 2), np.float32))   # built (and cached) here
    r = subprocess.run([sys.executable, "-c", NOMEM], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fits, err = r.stdout.strip().splitlines()[-1].split(" | ")
    assert fits == "True" and "error 6" in err, r.stdout


def test_concurrent_python_threads_share_one_kernel():
    """Several Python threads call one kernel at once (the GIL is released for long calls): one
    call at a time uses the pool, the others run their rows themselves; all results exact."""
    k = softgen.compile("softmax", algorithm="three-pass-reload")
    xs = [_rows(64, 300, seed=s, specials=False) for s in range(6)]
    want = [k(x, threads=1) for x in xs]

    def work(i):
        for _ in range(15):
            for t in (0, 2, 3):
                if not np.array_equal(k(xs[i], threads=t), want[i]):
                    return False
        return True

    with ThreadPoolExecutor(6) as ex:
        assert all(ex.map(work, range(6)))


def _child(q):
    """In a forked child: a call that needs the pool (the parent's workers are not there)."""
    k = softgen.compile("softmax", algorithm="three-pass-reload")
    x = _rows(16, 64, seed=7)
    q.put(bool(np.array_equal(k(x, threads=3), k(x, threads=1), equal_nan=True)))


def test_fork_then_call_in_the_child():
    k = softgen.compile("softmax", algorithm="three-pass-reload")
    k(_rows(16, 64, seed=7), threads=3)              # the parent's pool exists
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(30)
    if p.is_alive():     # a child waiting for workers it does not have: the bug this guards
        p.kill()
        p.join()
    assert p.exitcode == 0 and q.get(timeout=5) is True


PROBE = textwrap.dedent("""
    import json, os, numpy as np, softgen
    tasks = lambda: len(os.listdir("/proc/self/task"))
    k = softgen.compile("softmax", algorithm="three-pass-reload")
    other = softgen.compile("log_softmax", algorithm="three-pass-reload")
    k(np.ones((1, 4), np.float32))                   # loads the library
    out = {"start": tasks()}
    k(np.ones((1, 1024), np.float32)); out["1x1K"] = tasks()
    k(np.ones((64, 4096), np.float32)); out["auto_big"] = tasks()
    k(np.ones((8, 64), np.float32), threads=3); out["three"] = tasks()
    other(np.ones((8, 64), np.float32), threads=2); out["other_lib"] = tasks()
    os.environ["SOFTGEN_CACHE_SIZES"] = "L1d=4K,L2=16K,L3=64K"    # a dispatcher of 2+ variants
    d = softgen.compile("softmax")
    out["dispatcher"] = len({e.symbol for e in d.dispatch.entries if d.dispatcher})
    d(np.ones((8, 100), np.float32), threads=3); out["variant_a"] = tasks()
    d(np.ones((8, 9000), np.float32), threads=3); out["variant_b"] = tasks()
    print(json.dumps(out))
""")


def _probe(**env) -> dict:
    e = {**os.environ, **env}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=e, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_auto_thread_counts_and_the_env_cap():
    """Threads the process runs (/proc/self/task): auto takes one for a 1x1K call, more for a
    64x4K batch (this process may run on 2+ CPUs), none beyond SOFTGEN_NUM_THREADS=1; an explicit
    count is not capped by it; a second library has its own (hidden) pool, and a dispatcher's
    variants (translation units) share their library's one pool."""
    cpus = len(os.sched_getaffinity(0))
    free = _probe()
    assert free["1x1K"] == free["start"]
    assert free["auto_big"] == free["start"] + (1 if cpus >= 2 else 0)
    assert free["three"] == free["start"] + 2
    assert free["other_lib"] == free["three"] + 1
    if free["dispatcher"] > 1:   # one pool per library: the second variant reuses the first's workers
        assert free["variant_a"] == free["other_lib"] + 2 and free["variant_b"] == free["variant_a"]
    capped = _probe(SOFTGEN_NUM_THREADS="1")
    assert capped["auto_big"] == capped["start"] and capped["three"] == capped["start"] + 2


def test_policy_model():
    p = costmodel.ThreadPolicy(0, 20000)
    assert p.threads(1, 1 << 20, 8) == 1                   # one row: the row split's business
    assert p.threads(1, 1024, 8) == 1 and p.threads(20, 1024, 8) == 1    # 20K elements: below 2 grains
    assert p.threads(4096, 512, 2) == 2 and p.threads(4096, 512, 64) == 64
    assert p.threads(3, 1 << 20, 64) == 3                  # at most rows
    assert costmodel.ThreadPolicy(2, 20000).threads(4096, 512, 64) == 2
    assert costmodel.ThreadPolicy(0, 0).threads(4096, 512, 64) == 1
    k = softgen.compile("softmax", algorithm="two-pass", target="avx2")
    assert k.thread_policy.grain > 0 and f"{k.thread_policy.grain}u" in k.source
    assert "threads (auto): one thread per" in k.explain()


@pytest.mark.skipif(host_arch() == "aarch64", reason="neon is native on this host")
def test_neon_threads_under_qemu():
    """neon through qemu (qemu-user runs the library's pthreads): the static driver calls
    <name>_mt with the thread count of run_emulated(threads=): 1 .. 4 bitwise equal, auto too
    (a batch big enough for 2 threads), for rows and for a batch of matrices."""
    t = get_target("neon")
    skip_unless_emulated(t)
    k = softgen.compile("softmax", algorithm="two-pass", target="neon")
    rows, n = 16, max(64, 4 * k.thread_policy.grain // 16)
    assert k.thread_policy.threads(rows, n, 2) == 2
    x = _rows(rows, n, seed=5)
    one = k.run_emulated(x, threads=1)
    check(k, x, one)
    for c in (0, *COUNTS[1:]):
        assert np.array_equal(k.run_emulated(x, threads=c), one, equal_nan=True), c
    assert np.array_equal(k.run_emulated(x), one, equal_nan=True)
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        k.run_emulated(x, threads=-1)
    m = softgen.compile("sinkhorn", target="neon")
    xm = (np.random.default_rng(6).standard_normal((5, 6, 7)) * 3).astype(np.float32)
    mone = m.run_emulated(xm, threads=1)
    for c in COUNTS[1:]:
        assert np.array_equal(m.run_emulated(xm, threads=c), mone), c
    assert np.allclose(mone, softgen.compile("sinkhorn", target="scalar")(xm), rtol=1e-4, atol=1e-6)


def test_per_op_functions_take_threads():
    x = _rows(9, 40, seed=9)
    one = softgen.softmax(x, threads=1)
    assert np.array_equal(softgen.softmax(x, threads=3), one, equal_nan=True)
    assert np.array_equal(softgen.log_softmax(x, threads=2), softgen.log_softmax(x), equal_nan=True)
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        softgen.softmax(x, threads=-1)


def test_tuner_times_thread_counts_for_batches(tmp_path, monkeypatch):
    """softgen.tune records a batch shape's plan per thread count (FFTW's plans include it): the
    one-thread winner (timed on one thread) and, at 2 threads, the finalists' fastest; the tuned
    dispatch table runs the one-thread plan's variant and caps auto at the faster count."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    monkeypatch.setattr(softgen.machine, "cores", lambda: 2)
    monkeypatch.setattr(tune_mod, "PRUNE_RATIO", 1.0)            # fewer builds: the model's best algorithm only
    monkeypatch.setattr(tune_mod, "KNOB_PRUNE_RATIO", 1.0)
    res = softgen.tune("softmax", target="host", shapes=[(64, 512)], budget_s=3, keep=1, progress=False)
    (cls,) = res.classes
    rec, (two,) = cls.record, cls.thread_records
    assert rec.threads == 1 and two.threads == 2 and rec.rows_min == two.rows_min == 2
    assert "threads=1" in two.runners_up and "2 threads: " in res.report()
    assert len(softgen.tunedb.records("softmax")) == 2      # one per thread count, the same class
    k = softgen.compile("softmax", target="host")
    cap = 2 if two.runners_up["threads=1"] > 1 else 1      # the interleaved ratio decides
    # batches: the record's plan; calls of fewer rows: the model's table (no record of single rows)
    batches = [e for e in k.dispatch.entries if e.rows_min == costmodel.BATCH_ROWS]
    assert k.tuned and batches and all(e.threads == cap and e.grain > 0 and "measured on batches" in e.why
                                       for e in batches)
    assert all(e.why.startswith("model: ") for e in k.dispatch.entries if e.rows_max is not None)
    assert [(e.algorithm, costmodel.variant_key(e.algorithm, e.schedule)) for e in batches] == \
        [(rec.algorithm, costmodel.variant_key(rec.algorithm, Schedule(**rec.schedule).validate(k.target.lanes).as_dict()))]


def test_one_thread_calls_get_the_one_thread_plan(tmp_path, monkeypatch):
    """A class with a 1-thread and a 2-thread plan of different variants (a 2-thread record newer):
    the dispatcher's variant is the one-thread plan's; the cap follows the faster plan."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    tdb = softgen.tunedb
    common = dict(noise=0.01, repetitions=5, n=(1, 1 << 40), rows=(2, ROWS_MAX))
    tdb.record("softmax", {}, "host", "c", algorithm="three-pass-reload", schedule={}, threads=1, ns_per_element=1.0, **common)
    tdb.record("softmax", {}, "host", "c", algorithm="two-pass", schedule={}, threads=2, ns_per_element=0.6, **common)
    k = softgen.compile("softmax", target="host")
    (e,) = [e for e in k.dispatch.entries if e.rows_min == costmodel.BATCH_ROWS]   # batches: the records'
    assert e.algorithm == "three-pass-reload" and e.threads == 2 and "not dispatched" in e.why
    assert tdb.lookup("softmax", {}, "host", "c", 100, 8, threads=2).algorithm == "two-pass"


def test_tuned_thread_counts_apply_to_the_rows_they_were_measured_on(tmp_path, monkeypatch):
    """A record's thread count applies to its rows class: one thread measured on batches caps
    auto at 1; a single-row record (threads 1) leaves auto to the model, also beside a batch
    record of another class of n; explain says which applies."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    tdb, rows_max = softgen.tunedb, ROWS_MAX
    common = dict(algorithm="two-pass", schedule={}, ns_per_element=1.0, noise=0.01, repetitions=5)
    tdb.record("softmax", {}, "host", "c", n=(1, 1000), rows=(1, rows_max), threads=1, **common)
    tdb.record("softmax", {}, "host", "c", n=(1001, 1 << 40), rows=(1, rows_max), threads=1, **common)
    k = softgen.compile("softmax", target="host")
    # single rows' table (batches: the model's, no record of them)
    assert k.tuned and [e.threads for e in k.dispatch.entries if e.rows_max is not None] == [0]
    assert "measured on single rows" in k.explain()
    tdb.record("softmax", {}, "host", "c", n=(1001, 1 << 40), rows=(2, rows_max), threads=1, **common)
    k = softgen.compile("softmax", target="host")
    (e,) = k.dispatch.entries      # one variant: the classes merged; a capped class caps the merge
    assert e.threads == 1 and "measured on batches" in e.why and "measured on batches" in k.explain()
    assert ", 1);" in k.source or f"{e.grain}u, 1)" in k.source
    x = _rows(64, 2000, seed=14)
    assert np.array_equal(k(x), k(x, threads=1), equal_nan=True)


def test_tvm_entry_splits_rows_too():
    from softgen.backends.tvm_adapter import available
    if not available()[0]:
        pytest.skip(available()[1])
    k = softgen.compile("softmax", algorithm="two-pass", backend="tvm")
    x = _rows(7, 45, seed=11)
    one = k(x, threads=1)
    check(k, x, one)
    for t in COUNTS[1:]:
        assert np.array_equal(k(x, threads=t), one, equal_nan=True), t
    assert k.thread_policy.grain > 0 and f"{k.thread_policy.grain}u" in k.wrapper


def test_tvm_matrix_entry_splits_batches_too():
    """The TVM backend's matrix entry is the same template: its batch splits across threads."""
    from softgen.backends.tvm_adapter import available
    if not available()[0]:
        pytest.skip(available()[1])
    k = softgen.compile("sinkhorn", backend="tvm")
    assert f"int {k.name}_mt(" in k.wrapper and k.thread_policy.c_work in k.wrapper
    x = (np.random.default_rng(15).standard_normal((5, 6, 7)) * 3).astype(np.float32)
    one = k(x, threads=1)
    assert np.allclose(one, softgen.compile("sinkhorn")(x), rtol=1e-4, atol=1e-6)
    for t in (0, *COUNTS[1:]):
        assert np.array_equal(k(x, threads=t), one), t


def test_a_library_spanning_isas_has_one_baseline_pool():
    """target="x86-64"-style groups: <name>_mt is forwarded to the picked ISA's kernel, and the
    one pool is the top unit's (strong definitions, compiled without any ISA's flags)."""
    k = softgen.compile("softmax", algorithm="two-pass", target=host_arch().replace("_", "-"))
    if len(k.members) < 2:
        pytest.skip(f"the {host_arch()} group has one ISA")
    top = k.sources()[f"{k.name}_isa.c"]
    assert "#define SG_POOL_STRONG 1" in top and f"{k.name}__" in top and f"int {k.name}_mt(" in top
    assert all("SG_POOL_STRONG 1" not in m.source for m in k.members)
    x = _rows(9, 70, seed=12)
    one = k(x, threads=1)
    check(k, x, one)
    for t in COUNTS[1:]:
        assert np.array_equal(k(x, threads=t), one, equal_nan=True), t
    with pytest.raises(softgen.UsageError, match="negative thread count"):
        k(x, threads=-1)


UNLOAD = textwrap.dedent("""
    import _ctypes, ctypes, os, sys, numpy as np
    tasks = lambda: len(os.listdir("/proc/self/task"))
    lib = ctypes.CDLL(sys.argv[1])
    mt = getattr(lib, sys.argv[2] + "_mt")
    mt.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 4 + [ctypes.c_int]
    x = np.ones((8, 64), np.float32); y = np.empty_like(x)
    start = tasks()
    assert mt(x.ctypes.data, y.ctypes.data, 8, 64, 64, 64, 3) == 0 and np.allclose(y, 1 / 64)
    running = tasks()
    _ctypes.dlclose(lib._handle)      # the destructor joins the workers before the unmap
    print(start, running, tasks())
""")


def test_unloading_joins_the_workers():
    k = softgen.compile("softmax", algorithm="online")
    lib = softgen.runtime.build_shared(k.sources(), k.target)
    r = subprocess.run([sys.executable, "-c", UNLOAD, str(lib), k.name], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    start, running, after = map(int, r.stdout.split())
    assert running == start + 2 and after == start


def test_long_rows_split_across_the_pool():
    """The split form (schedule split/chunk: one long row in chunks) runs its chunk tasks on the
    pool: every thread count, auto included, gives bitwise the one-thread result."""
    k = softgen.compile("softmax", algorithm="two-pass", schedule={"block": 256, "chunk": 1024, "split": 4096})
    assert "__row_split" in k.source
    x = _rows(2, 9 * 1024 + 5, seed=13)
    one = k(x, threads=1)
    check(k, x, one)
    for t in (0, *COUNTS[1:]):
        assert np.array_equal(k(x, threads=t), one, equal_nan=True), t
    assert np.array_equal(k(x[:1]), one[:1], equal_nan=True)


LATE = textwrap.dedent("""
    import sys, numpy as np, softgen
    k = softgen.compile("softmax", algorithm="two-pass", schedule={"split": 4096, "chunk": 8192})
    x = (np.random.default_rng(0).standard_normal((1, 120000)) * 4).astype(np.float32)
    one = k(x, threads=1)
    for _ in range(3):              # explicit counts are obeyed; each region: no worker arrives
        assert np.array_equal(k(x, threads=2), one)
    print("MARK explicit", file=sys.stderr, flush=True)
    for _ in range(33):             # auto: 32 calls on one thread, then a probe (slow again)
        assert np.array_equal(k(x), one)
    print("ok")
""")


def test_loaded_machine_guard_drops_auto_to_one_thread():
    """The pool's loaded-machine guard, made deterministic by SOFTGEN_POOL_DEBUG=late (workers
    never arrive in a split row's team region: the caller steals every chunk, the results stay
    the same): after 3 slow regions "auto" runs on one thread for 32 calls, then probes the
    threads again and, slow again, backs off for 64 calls; explicit counts are not overridden."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("auto takes one thread on one CPU")
    env = {k: v for k, v in os.environ.items() if k != "SOFTGEN_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", LATE], capture_output=True, text=True, timeout=120,
                       env={**env, "SOFTGEN_POOL_DEBUG": "late"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    before, _, after = r.stderr.partition("MARK explicit")
    slow = [ln for ln in before.splitlines() if ln.startswith("softgen pool: slow region (2 threads, 0 workers")]
    assert len(slow) == 3 and "streak 3" in slow[-1], r.stderr
    assert before.count("auto threads -> 1 for the next 32 calls") == 1
    lines = [ln for ln in after.splitlines() if ln.startswith("softgen pool:")]
    assert lines[0] == "softgen pool: auto threads probe again", r.stderr
    assert lines[1].startswith("softgen pool: slow region") and "streak 3" in lines[1]
    assert lines[2] == "softgen pool: auto threads -> 1 for the next 64 calls" and len(lines) == 3


WAITED = r"""
%(kernel)s
static pthread_t caller;
static int claimed;
/* A worker's task sleeps 20 ms; the caller's first task waits (at most 2 s) until the worker has
   taken one, so every worker joins and the caller then waits for it: the "waited too long" case. */
static void task(void *ctx, size_t t)
{
    (void)ctx; (void)t;
    struct timespec nap = {0, 100000};
    if (!pthread_equal(pthread_self(), caller)) {
        __atomic_store_n(&claimed, 1, __ATOMIC_RELEASE);
        nap.tv_nsec = 20000000;
        nanosleep(&nap, 0);
        return;
    }
    for (int i = 0; i < 20000 && !__atomic_load_n(&claimed, __ATOMIC_ACQUIRE); i++)
        nanosleep(&nap, 0);
}
int main(void)
{
    caller = pthread_self();
    for (int r = 0; r < 3; r++) {
        struct sg_team tm;
        __atomic_store_n(&claimed, 0, __ATOMIC_RELEASE);
        sg_team_begin(&tm, 2);
        if (tm.size != 2)
            return 2;
        sg_team_run(&tm, 8, task, 0);
        sg_team_end(&tm);
    }
    printf("%%d\n", sg_guard_solo);
    return 0;
}
"""


def test_loaded_machine_guard_counts_regions_that_waited_too_long(tmp_path):
    """The guard's other trigger (pool.h.j2 sg_team_end): every worker joined, but the caller waited
    for them more than half the time it worked itself. The generated pool in a C harness whose
    worker tasks are slow (SOFTGEN_POOL_DEBUG=trace prints each region): 3 such regions in a row
    and auto drops to one thread for the next 32 calls."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the harness needs a worker on a second CPU")
    k = softgen.compile("softmax", algorithm="three-pass-reload", target="scalar")
    src = tmp_path / "waited.c"
    src.write_text(WAITED % {"kernel": k.source})
    exe = tmp_path / "waited"
    subprocess.run([*compiler_for(k.target), "-O1", "-w", str(src), "-o", str(exe), "-lm", "-lpthread"], check=True)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SOFTGEN_POOL_DEBUG": "trace"})
    assert r.returncode == 0 and r.stdout.strip() == "32", (r.stdout, r.stderr)
    slow = [ln for ln in r.stderr.splitlines() if ln.startswith("softgen pool: slow region (2 threads, 1 workers joined")]
    assert len(slow) == 3 and "streak 3" in slow[-1], r.stderr
    for ln in slow:   # the trigger is the wait: work < 2 x wait
        work, wait = (float(ln.split(f"{w} ")[1].split(" ns")[0]) for w in ("work", "wait"))
        assert 2 * wait > work, ln
    assert "auto threads -> 1 for the next 32 calls" in r.stderr


def _profiled(k):
    """``k`` rebuilt with SG_POOL_PROFILE (bench/threads.py --profile) and its profile reader."""
    pk = dataclasses.replace(k, source="#define SG_POOL_PROFILE 1\n" + k.source,
                             _fn=None, _emu_fn=None, _mt_fn=None, _emu_mt_fn=None)
    lib = pk._entry(False)._softgen_handle
    lib.sg_pool_profile_fields.restype = ctypes.c_char_p
    fields = lib.sg_pool_profile_fields().decode().split()
    buf = (ctypes.c_double * len(fields))()

    def take() -> dict:
        assert lib.sg_pool_profile_take(buf, len(fields)) == len(fields)
        return dict(zip(fields, buf))
    return pk, take


def test_pool_profile_counts_regions_jobs_and_tasks():
    """SG_POOL_PROFILE (bench/threads.py --profile): per team region (a split row) each sweep's job
    and who ran its chunks; per sg_parallel region (a batch) the ranges. A lazymax split row has two
    jobs, not three: the max of its chunks' first elements (sweep 0) runs on the caller. A batch
    has more ranges of rows when it has the work (the last range is what the others wait for).
    The results are the unprofiled kernel's."""
    k = softgen.compile("softmax", algorithm="three-pass-reload",
                        schedule={"block": 256, "chunk": 1024, "split": 4096, "lazymax": True})
    pk, take = _profiled(k)
    x = _rows(1, 6 * 1024 + 7, seed=5)
    one = k(x, threads=1)
    take()
    for _ in range(3):
        assert np.array_equal(pk(x, threads=2), one, equal_nan=True)
    assert np.array_equal(pk(x, threads=1), one, equal_nan=True)   # one thread: no region
    p = take()
    assert p["regions"] == 3 and p["total"] > 0
    for j in (0, 1):   # sweeps 1 and 2, 7 chunks each, by the caller and the worker together
        assert p[f"caller{j}"] + p[f"workers{j}"] == 7 and p[f"own{j}"] > 0, j
    assert p["caller2"] + p["workers2"] == 0 and p["par_regions"] == 0
    assert take()["regions"] == 0   # taking starts a new profile
    # a batch: ranges of rows, 4 per thread at least, 16 at most, else one per 16384 elements
    for (rows, n), ranges in (((40, 33), 8), ((96, 1024), 8), ((320, 1024), 20), ((2000, 1024), 32)):
        xb = _rows(rows, n, seed=6)
        assert np.array_equal(pk(xb, threads=2), k(xb, threads=1), equal_nan=True)
        p = take()
        assert p["par_regions"] == 1 and p["par_tasks"] == ranges and p["regions"] == 0, (rows, n)
        assert 0 <= p["par_caller"] <= ranges


def test_bench_threads_call_modes_and_mean_percentiles(monkeypatch):
    """bench/threads.py: --percentiles' row has the means (what the interleaved table's
    back-to-back blocks measure) and the share of slow 2-thread calls beside p5..p90, so a bimodal
    2-thread sample whose p50 is fast does not pass for a fast mean; --profile's call_modes groups
    profiled calls (fastest half, slowest quarter) with each group's per-sweep caller own / wait."""
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import threads as bt
    t1, t2 = [60e-6] * 100, [31e-6] * 60 + [38e-6] * 40
    r = bt.percentile_row("256K", t1, t2)
    assert r["calls"] == 100 and r["t2_p50"] == pytest.approx(31) and r["t2_p90"] == pytest.approx(38)
    assert r["x_p50"] == pytest.approx(60 / 31) and r["t2_mean"] == pytest.approx(33.8)
    assert r["x_mean"] == pytest.approx(60 / 33.8) and r["slow2"] == pytest.approx(0.4)
    k = softgen.compile("softmax", algorithm="three-pass-reload",   # test_pool_profile_counts...'s kernel
                        schedule={"block": 256, "chunk": 1024, "split": 4096, "lazymax": True})
    pk, take = _profiled(k)
    x = _rows(1, 6 * 1024 + 7, seed=5)
    take()
    m = bt.call_modes(pk, x, np.empty_like(x), take, 8)
    fast, slow = m["fastest half"], m["slowest quarter"]
    assert fast["calls"] == 4 and slow["calls"] == 2 and 0 < fast["call"] <= slow["call"]
    for g in (fast, slow):
        assert g["regions"] == 1 and g["own0"] > 0 and g["caller0"] + g["workers0"] == 7
