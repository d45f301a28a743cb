"""The split form of a row (schedule ``split`` / ``chunk``, C backend): one long row cut into
chunks of whole blocks, each sweep one ``sg_parallel`` task per chunk, the chunks' reduction
states merged in chunk order. Small schedules here (blocks of two unrolled steps, chunks of two
blocks, split at half a chunk) so that rows of a few chunks exercise chunk boundaries, tails,
n not a multiple of the lanes or the chunk, n = split, one chunk, and the widened chunks of rows
longer than ``SPLIT_MAX_CHUNKS`` chunks. Checked against the float64 reference like
test_kernels (conftest.check: tolerance, NaN/inf contract), with specials in the first, a
middle and the last chunk; strided rows, in place; and a pool that runs the tasks on three
threads in reverse order gives bitwise the same results (the chunks and their merge order
depend on n and the schedule only). The default run covers every algorithm of softmax,
log_softmax and softplus_l1 on avx2 and a few on scalar, avx512 and neon (qemu); ``-m slow``
runs every one on every target."""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import check, run_many, skip_unless_emulated

import softgen
from softgen.backends.c import SPLIT_MAX_CHUNKS, split_refusal
from softgen.cli import main
from softgen.errors import UsageError
from softgen.ops import build_program
from softgen.passes import applicable_algorithms, apply_algorithm
from softgen.schedule import Schedule, default_schedule
from softgen.targets import get_target

OPS = ("softmax", "log_softmax", "softplus_l1")   # softplus_l1: motif-free, with a guarded fallback
ALL = [(op, alg, t) for t in ("avx2", "scalar", "avx512", "neon") for op in OPS
       for alg in applicable_algorithms(build_program(op))]
FAST = [c for c in ALL if c[2] == "avx2"] + [
    ("softmax", "two-pass", "scalar"), ("log_softmax", "online", "scalar"),
    ("softmax", "three-pass-reload", "avx512"), ("softplus_l1", "direct-reload", "avx512"),
    ("softmax", "online", "neon"), ("log_softmax", "two-pass", "neon")]
CASES = [pytest.param(*c, id="-".join(c)) if c in FAST else
         pytest.param(*c, id="-".join(c), marks=pytest.mark.slow) for c in ALL]


def small(target: str) -> dict:
    t = get_target(target)
    step = t.schedule.step(t.lanes)
    block = 2 * step
    return {"block": block, "chunk": 2 * block, "split": block + 1}


_KERNELS: dict = {}


def kernel(op: str, alg: str, target: str) -> softgen.Kernel:
    key = (op, alg, target)
    if key not in _KERNELS:
        _KERNELS[key] = softgen.compile(op, algorithm=alg, target=target, schedule=small(target))
    return _KERNELS[key]


def lengths(k: softgen.Kernel) -> list[int]:
    s, lanes = k.schedule, k.target.lanes
    c = s.chunk
    return [s.split - 1,                  # the unsplit row function
            s.split,                      # one chunk, a masked tail
            c, c + 1,                     # one full chunk; a second chunk of one element
            3 * c - lanes - 1,            # a last chunk short by a vector and one
            5 * c + s.step(lanes) + 3,
            SPLIT_MAX_CHUNKS * c + s.block + 5]   # wider chunks than `chunk`


def specials(n: int, c: int, rng) -> tuple[np.ndarray, list[str]]:
    """Rows of n with one special in the first, a middle and the last chunk (and at a chunk
    boundary), and rows that are -inf except in one chunk."""
    base = rng.standard_normal(n).astype(np.float32) * 3
    rows, names = [], []
    nchunks = -(-n // c)
    for pos in (0, c - 1, c, (nchunks // 2) * c + 7, n - 1):
        for name, v in (("nan", np.nan), ("+inf", np.inf), ("-inf", -np.inf), ("huge", 3e38),
                        ("-huge", -3e38), ("tiny", 1e-38)):
            r = base.copy()
            r[pos] = v
            rows.append(r)
            names.append(f"{name}@{pos}")
    for ch in (0, nchunks // 2, nchunks - 1):
        r = np.full(n, -np.inf, np.float32)
        lo, hi = ch * c, min(n, (ch + 1) * c)
        r[lo:hi] = base[lo:hi]
        rows.append(r)
        names.append(f"finite only in chunk {ch}")
    rows.append(np.full(n, -np.inf, np.float32))
    names.append("all -inf")
    big = base.copy()
    big[c + 3] = 80.0                     # one dominant element, in the second chunk
    rows.append(big)
    names.append("dominant in chunk 1")
    return np.stack(rows), names


@pytest.mark.parametrize("op,alg,target", CASES)
def test_split_rows_match_the_reference(op, alg, target, rng):
    k = kernel(op, alg, target)
    assert f"{k.name}__row_split" in k.source and f"split={k.schedule.split}" in k.source
    xs = [(rng.standard_normal((2, n)) * 4).astype(np.float32) for n in lengths(k)]
    n = 5 * k.schedule.chunk + 9
    sx, names = specials(n, k.schedule.chunk, rng)
    ys = run_many(k, xs + [sx])
    for x, y in zip(xs, ys):
        check(k, x, y, f"n={x.shape[-1]}")
    check(k, sx, ys[-1], f"specials n={n}", row_names=names)


@pytest.mark.parametrize("op,alg,target", [c for c in CASES if c.values[2] in ("avx2", "scalar")])
def test_strided_in_place_and_batch_position_are_bitwise_equal(op, alg, target, rng):
    k = kernel(op, alg, target)
    n = 3 * k.schedule.chunk + 5
    x = (rng.standard_normal((3, n)) * 4).astype(np.float32)
    y = k(x)
    check(k, x, y)
    wide = np.zeros((3, n + 13), np.float32)
    wide[:, :n] = x
    out = np.full((3, n + 7), 7.0, np.float32)
    k(wide[:, :n], out=out[:, :n])
    assert np.array_equal(out[:, :n], y, equal_nan=True) and np.all(out[:, n:] == 7.0)
    z = x.copy()
    k(z, out=z)
    assert np.array_equal(z, y, equal_nan=True)
    assert np.array_equal(k(x[1:2]), y[1:2], equal_nan=True)   # alone or in a batch


# A stand-in for the thread pool (slice 1's templates/pool.h.j2): the same interface, the tasks on
# three threads, each in reverse order. Results must be bitwise those of the serial fallback.
REVERSE_POOL = r"""
#include <pthread.h>
#include <stddef.h>
#define SG_HAVE_POOL 1
typedef void (*sg_task_fn)(void *ctx, size_t task);
struct sg_test_job { size_t ntasks, id; sg_task_fn fn; void *ctx; };
static void *sg_test_worker(void *p)
{
    struct sg_test_job *j = p;
    for (size_t t = j->ntasks; t-- > 0;)
        if (t % 3 == j->id)
            j->fn(j->ctx, t);
    return NULL;
}
static void sg_parallel(size_t ntasks, int threads, sg_task_fn fn, void *ctx)
{
    (void)threads;
    pthread_t th[2];
    struct sg_test_job j[3];
    for (size_t i = 0; i < 3; i++)
        j[i] = (struct sg_test_job){ntasks, i, fn, ctx};
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, sg_test_worker, &j[i + 1]);
    sg_test_worker(&j[0]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
}
"""


@pytest.mark.parametrize("op,alg", [("softmax", "two-pass"), ("log_softmax", "online"),
                                    ("softplus_l1", "direct-reload")])
def test_results_do_not_depend_on_task_order_or_threads(op, alg, rng):
    k = kernel(op, alg, "avx2")
    if not k.runnable:
        pytest.skip("needs an avx2 CPU")
    pooled = dataclasses.replace(k, source=REVERSE_POOL + k.source, _fn=None, _emu_fn=None)
    c = k.schedule.chunk
    x = (rng.standard_normal((4, 9 * c + 3)) * 6).astype(np.float32)
    x[1, 4 * c + 1] = 50.0    # the row's max in a middle chunk: every chunk's state is rescaled
    sx, _ = specials(7 * c + 1, c, rng)
    for a in (x, sx):
        assert np.array_equal(pooled(a), k(a), equal_nan=True)
        z, zp = a.copy(), a.copy()     # in place: a chunk must not write what another still reads
        k(z, out=z)
        pooled(zp, out=zp)
        assert np.array_equal(zp, z, equal_nan=True)


THREADED = [c for c in CASES if c.values[2] in ("avx2", "avx512")] + [
    pytest.param("softmax", "online", "neon", id="softmax-online-neon")]   # neon: qemu, once


@pytest.mark.parametrize("op,alg,target", THREADED)
def test_split_rows_are_bitwise_equal_on_1_to_4_threads(op, alg, target, rng):
    """The split form on the library's pool (one team region per row: each thread its range of
    chunks, the rest stolen): 1 .. 4 threads give the same bits, specials (NaN, +-inf, huge: the
    two-pass guard's fallback, itself split) in the first, a middle and the last chunk; in place
    too (a chunk run twice, or read after another thread wrote it, would change it)."""
    k = kernel(op, alg, target)
    assert "sg_team_run(&sg_tm, nchunks" in k.source and "sg_parallel(nchunks" not in k.source
    c = k.schedule.chunk
    sx, _ = specials(5 * c + 9, c, rng)
    xs = [sx, (rng.standard_normal((2, 3 * c - 1)) * 4).astype(np.float32),
          (rng.standard_normal((1, SPLIT_MAX_CHUNKS * c + k.schedule.block + 5)) * 4).astype(np.float32)]
    if not k.runnable:
        if target != "neon":
            pytest.skip(f"needs an {target} CPU")
        skip_unless_emulated(k.target)
        xs = xs[:1]
    for x in xs:
        ys = [k(x, threads=t) if k.runnable else k.run_emulated(x, threads=t) for t in (1, 2, 3, 4)]
        for t, y in zip((2, 3, 4), ys[1:]):
            assert np.array_equal(y, ys[0], equal_nan=True), (x.shape, t)
        if k.runnable:
            for t in (2, 4):
                z = x.copy()
                k(z, out=z, threads=t)
                assert np.array_equal(z, ys[0], equal_nan=True), ("in place", x.shape, t)


def test_concurrent_split_calls_share_the_pool(rng):
    """Split rows called from several Python threads at once (the GIL released): one call holds
    the pool's team region, the others find it busy and run alone; all give one thread's bits."""
    k = kernel("softmax", "two-pass", "avx2")
    if not k.runnable:
        pytest.skip("needs an avx2 CPU")
    c = k.schedule.chunk
    xs = [(rng.standard_normal((2, 40 * c + 3)) * 4).astype(np.float32) for _ in range(3)]
    want = [k(x, threads=1) for x in xs]

    def calls(i):
        return all(np.array_equal(k(xs[i], threads=2 + i % 2), want[i]) for _ in range(20))
    with ThreadPoolExecutor(3) as ex:
        assert all(ex.map(calls, range(3)))


def test_split_is_a_validated_schedule_knob():
    t = get_target("avx2")
    assert t.schedule.split == 262144 and t.schedule.chunk == 65536
    assert default_schedule(t.schedule, 8, block=3072).chunk == 66 * 1024   # whole blocks
    assert default_schedule(t.schedule, 8, split=0).split == 0
    with pytest.raises(UsageError, match="chunk .* multiple of block"):
        Schedule(block=2048, chunk=1000).validate(8)
    with pytest.raises(UsageError, match="split must be an integer >= 0"):
        default_schedule(t.schedule, 8, split=-1)
    with pytest.raises(UsageError, match="chunk must be a positive integer"):
        default_schedule(t.schedule, 8, chunk=0)
    with pytest.raises(UsageError, match="unknown schedule parameter"):
        default_schedule(t.schedule, 8, chunks=4)


def test_split_zero_and_top_k_have_no_split_form():
    k = softgen.compile("softmax", algorithm="online", target="avx2", schedule={"split": 0})
    assert "__row_split" not in k.source and "sg_parallel(nchunks" not in k.source   # (the pool is in every row library)
    topk = apply_algorithm(build_program("topk_softmax"), "direct")
    assert "top-k" in split_refusal(topk)
    assert "__row_split" not in softgen.compile("topk_softmax", target="avx2").source


def test_cli_takes_split_and_chunk(capsys):
    assert main(["emit", "--op", "softmax", "--algorithm", "online", "--target", "avx2",
                 "--split", "1000", "--chunk", "4096"]) == 0
    out = capsys.readouterr().out
    assert "rows of n >= 1000 run in the split form" in out and "chunk=4096" in out
    assert main(["emit", "--op", "softmax", "--target", "avx2", "--chunk", "1000"]) == 2
    assert "multiple of block" in capsys.readouterr().err


def test_row_parameters_reach_the_split_form(rng):
    """lssar with the caller's n_attended (and reweight's offset): per-row arguments of the split
    form, read by the scalars between its sweeps."""
    k = softgen.compile("lssar", algorithm="direct-reload", target="avx2", count_keys=0,
                        schedule=small("avx2"))
    assert "__row_split" in k.source and k.row_params == ["n_attended", "offset"]
    n = 5 * k.schedule.chunk + 3
    x = rng.uniform(-1, 1, (3, n)).astype(np.float32)
    na = np.array([n, n // 2, 3], np.float32)
    (y,) = run_many(k, [x], [{"n_attended": na}])
    check(k, x, y, "n_attended", n_attended=na)
