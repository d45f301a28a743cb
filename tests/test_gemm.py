"""GEMM contractions (softgen/backends/gemm.py, C; softgen/backends/tvm_gemm.py, TVM) against
NumPy float64 on every target, with shapes on every tile edge, strided operands, beta 0 over NaN,
and the Gaussian-kernel epilogue. Emulated targets run all their cases in one emulator process.

Tolerance: each entry is a k-term dot product accumulated with FMAs (one rounding per step, plus
one per extra k block through C) and then scaled and added to beta*C; with u = 2^-24,
|err_ij| <= (k + 2 + blocks) u (|alpha| (|A||B|)_ij + |beta C_ij|). The tests use 2^-23 per term
(k + 2) (a factor 2 over u covers the block terms), never a guessed constant.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from conftest import STRICT, TARGETS, skip_unless_emulated

from softgen.backends import gemm as G, tvm_gemm as TG
from softgen.backends.tvm_adapter import available as tvm_available
from softgen.errors import UsageError
from softgen.gemm_runtime import GemmLibrary
from softgen.reference import gaussian_kernel
from softgen.targets import get_target

SENTINEL = np.float32(12345.0)


def gaussian_epilogue(name: str = "gauss") -> G.Epilogue:
    """SOFT's kernel from a Gram product G = a @ b.T: ``S_ij = exp(-max(aa_i + bb_j - 2 G_ij, 0) * s)``
    with ``aa_i = |a_i|^2``, ``bb_j = |b_j|^2``, ``s = 1 / (2 sqrt(d))``. Parameters: aa, bb, s.
    (An epilogue written against the ``Epilogue`` interface; the compiler's gaussian_kernel op
    builds its own from the IR.)"""
    def vector(acc, i, j, count):
        d2 = f"V_FMA(V_SET1(-2.0f), {acc}, V_ADD(V_SET1(aa[{i}]), {G.load_vec(f'bb + {j}', count)}))"
        return f"sg_exp_nonpos(V_MUL(V_MAX({d2}, V_ZERO()), V_SET1(-s)))"
    return G.Epilogue(name, ("const float *aa", "const float *bb", "float s"), vector, needs_vmath=True)


def _library(codes):
    t = codes[0].target
    if isinstance(codes[0], TG.TvmGemmCode):
        ok, why = tvm_available()
        if not ok:
            (pytest.fail if STRICT else pytest.skip)(f"TVM backend: {why}")
        if not t.runnable and t.arch == "x86_64":
            pytest.skip(f"TVM {t.name} code is machine code; this CPU lacks {', '.join(t.missing_features())}")
    if not t.runnable:
        skip_unless_emulated(t)
    return GemmLibrary(codes)


def _batch(lib):
    return lib.batch() if lib._qemu else contextlib.nullcontext()


def _padded(rng, rows, cols, pad_rows, pad_cols, fill):
    """A (rows x cols) view into a larger buffer whose padding holds ``fill``: the kernel must
    neither read it into results (NaN would show) nor write it (checked for C)."""
    buf = np.full((rows + pad_rows, cols + pad_cols), fill, np.float32)
    view = buf[:rows, :cols]
    view[...] = rng.standard_normal((rows, cols)).astype(np.float32)
    return buf, view


def shapes(g) -> list[tuple[int, int, int]]:
    """(m, n, k) on every edge of g's tile and blocking: 1, 3, MR, MR+1, NR, NR+1, below/at/above
    NC and KC and their multiples."""
    MR, NR, KC, NC = g.mr, g.nr, g.schedule.kc, g.schedule.nc
    ms = sorted({1, 3, MR, MR + 1, 2 * MR, 17, 65, 130})
    ns = sorted({1, 3, NR, NR + 1, NC, NC + 1, 17, 130})
    ks = sorted({1, 3, 17, 64, KC, KC + 1, 2 * KC + 3})
    out = [(1, 1, 1), (MR, NR, KC), (MR + 1, NR + 1, KC + 1), (2 * MR, 2 * NR, 2 * KC)]
    for i, m in enumerate(ms):
        for j, n in enumerate(ns):
            out.append((m, n, ks[(i + 2 * j) % len(ks)]))
    return out


SCALARS = [(1.0, 0.0), (-1.5, 1.0), (0.5, -2.0), (-1.0, 0.0), (2.0, 1.0)]


def _cases(g, rng):
    cases = []
    for idx, (m, n, k) in enumerate(shapes(g)):
        alpha, beta = SCALARS[idx % len(SCALARS)]
        pad = idx % 3  # 0: dense, else lda/ldb/ldc larger than the row (and extra rows)
        pr, pcol = (0, 0) if pad == 0 else (pad, 5 * pad + 2)
        _, a = _padded(rng, *((k, m) if g.layout == "tn" else (m, k)), pr, pcol, np.nan)
        bshape = (n, k) if g.layout == "nt" else (k, n)
        _, b = _padded(rng, *bshape, pr, pcol, np.nan)
        cbuf, c = _padded(rng, m, n, pr, pcol, SENTINEL)
        if beta == 0.0:
            c[...] = np.nan  # beta == 0 must not read C
        cases.append((m, n, k, alpha, beta, a, b, c, cbuf))
    return cases


def _check(g, m, n, k, alpha, beta, a, b, c0, c, cbuf):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64 = a64.T if g.layout == "tn" else a64
    bb = b64.T if g.layout == "nt" else b64
    c064 = np.nan_to_num(c0.astype(np.float64)) if beta == 0.0 else c0.astype(np.float64)
    ref = alpha * (a64 @ bb) + (beta * c064 if beta != 0.0 else 0.0)
    bound = (k + 2) * 2.0 ** -23 * (abs(alpha) * (np.abs(a64) @ np.abs(bb)) + abs(beta) * np.abs(c064))
    err = np.abs(c.astype(np.float64) - ref)
    where = f"{g.name} m={m} n={n} k={k} alpha={alpha} beta={beta} ld={c.strides[0] // 4}"
    assert np.isfinite(c).all(), f"{where}: non-finite output (read padding or NaN C?)"
    bad = ~(err <= bound + 1e-37)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{where}: {bad.sum()} entries out of bound; first {i}: got {c[i]} "
                             f"ref {ref[i]} err {err[i]:.3g} bound {bound[i]:.3g}")
    pad = cbuf.copy()
    pad[:m, :n] = SENTINEL
    assert (pad == SENTINEL).all(), f"{where}: wrote outside C"


def _run_and_check(g, cases, lib=None):
    lib = lib or _library([g])
    outs = []
    with _batch(lib):
        for m, n, k, alpha, beta, a, b, c, cbuf in cases:
            c0 = c.copy()
            assert lib(g, a, b, c, alpha, beta) == 0
            outs.append(c0)
    for (m, n, k, alpha, beta, a, b, c, cbuf), c0 in zip(cases, outs):
        _check(g, m, n, k, alpha, beta, a, b, c0, c, cbuf)


# Default schedules (the shipped tiles), and small blocks that exercise the KC/NC loops, the
# k-unroll remainder and more panels per block at small sizes.
def _small(t):
    nv = get_target(t).gemm.nv
    return {"kc": 8, "nc": 2 * nv * get_target(t).lanes, "ku": 4, "mr": 3}


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("target", TARGETS)
def test_c_gemm_matches_float64(target, layout):
    g = G.gemm(target, layout)
    _run_and_check(g, _cases(g, np.random.default_rng(7)))


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("target", TARGETS)
def test_c_gemm_small_blocks(target, layout):
    g = G.gemm(target, layout, schedule=_small(target))
    cases = [cs for cs in _cases(g, np.random.default_rng(11)) if cs[0] * cs[1] * cs[2] <= 300_000]
    _run_and_check(g, cases)


@pytest.mark.parametrize("sched", ["default", "small"])
@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("target", TARGETS)
def test_tvm_gemm_matches_float64(target, layout, sched):
    g = TG.gemm(target, layout, schedule=None if sched == "default" else _small(target))
    lib = _library([g])  # skips before any TVM work when the target cannot run here
    cases = _cases(g, np.random.default_rng(13))
    if sched == "small" or not g.target.runnable:
        cases = [cs for cs in cases if cs[0] * cs[1] * cs[2] <= 300_000]
    _run_and_check(g, cases, lib)


def test_tvm_gemm_is_plain_c_abi():
    if not tvm_available()[0]:
        pytest.skip("TVM not available")
    g = TG.gemm("avx2", "nt")
    src = TG.sources([g])
    assert set(src) == {"gemm.c", "gemm_tvm.o", "exports.map"} and src["gemm_tvm.o"][:4] == b"\x7fELF"
    assert f"void {g.name}__tvm(int64_t m" in src["gemm.c"] and f"{g.name}_entry" in src["exports.map"]
    asm = TG.assembly([g])
    assert "vfmadd" in asm and "ymm" in asm


def test_c_gemm_k_zero_and_empty():
    g = G.gemm("avx2" if get_target("avx2").runnable else "scalar", "nn")
    lib = _library([g])
    c = np.full((5, 7), np.nan, np.float32)
    assert lib(g, np.zeros((5, 0), np.float32), np.zeros((0, 7), np.float32), c, 1.0, 0.0) == 0
    assert (c == 0).all()
    c[...] = 3.0
    assert lib(g, np.zeros((5, 0), np.float32), np.zeros((0, 7), np.float32), c, 1.0, 0.5) == 0
    assert (c == 1.5).all()
    e = np.zeros((0, 7), np.float32)
    assert lib(g, np.zeros((0, 4), np.float32), np.ones((4, 7), np.float32), e) == 0


def test_entry_checks_strides():
    import ctypes
    g = G.gemm("scalar", "nt")
    lib = _library([g])
    fn = lib._fn(g)
    a = np.ones((4, 8), np.float32)
    c = np.zeros((4, 4), np.float32)
    P = lambda x: x.ctypes.data  # noqa: E731
    assert fn(4, 4, 8, 1.0, P(a), 7, P(a), 8, 0.0, P(c), 4) == 2     # lda < k
    assert fn(4, 4, 8, 1.0, P(a), 8, P(a), 8, 0.0, P(c), 3) == 2     # ldc < n
    assert fn(4, 4, 8, 1.0, None, 8, P(a), 8, 0.0, P(c), 4) == 1
    assert fn(4, 4, 8, 1.0, P(a), 8, P(a), 8, 0.0, P(c), 4) == 0 and (c == 8).all()
    del ctypes


@pytest.mark.parametrize("target", TARGETS)
def test_gaussian_epilogue(target):
    """S = exp(-max(aa_i + bb_j - 2 a_i.b_j, 0) s) fused into the NT gemm, vs the float64 oracle."""
    lanes = get_target(target).lanes
    rng = np.random.default_rng(3)
    gs = [G.gemm(target, "nt", epilogue=gaussian_epilogue()),
          G.gemm(target, "nt", epilogue=gaussian_epilogue(), schedule=_small(target),
                 name=f"sg_gauss_small__{target}")]
    lib = _library(gs)
    runs = []
    with _batch(lib):
        for g in gs:
            for n, m, d in [(1, 1, 1), (g.mr + 1, g.nr + 1, 64), (37, 3 * lanes + 1, 17), (130, 65, 33)]:
                a = (rng.standard_normal((n, d)) * 0.5).astype(np.float32)
                b = (a[rng.integers(0, n, m)] + 0.1 * rng.standard_normal((m, d))).astype(np.float32)
                if m > 1:
                    b[0] = a[0]  # an identical point: S = 1 up to rounding
                aa = (a.astype(np.float64) ** 2).sum(1).astype(np.float32)
                bb = (b.astype(np.float64) ** 2).sum(1).astype(np.float32)
                s = np.float32(1.0 / (2.0 * math.sqrt(d)))
                out = np.full((n, m), np.nan, np.float32)
                assert lib(g, a, b, out, 1.0, 0.0, aa, bb, float(s)) == 0
                runs.append((g, a, b, aa, bb, s, d, out))
    for g, a, b, aa, bb, s, d, out in runs:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        ref = gaussian_kernel(a64, b64, d)
        k = d
        dd2 = (k + 4) * 2.0 ** -23 * (2 * np.abs(a64) @ np.abs(b64).T + aa[:, None] + bb[None, :]) \
            + 2.0 ** -23 * ((a64 ** 2).sum(1)[:, None] + (b64 ** 2).sum(1)[None, :])
        x = np.maximum((a64 ** 2).sum(1)[:, None] + (b64 ** 2).sum(1)[None, :] - 2 * a64 @ b64.T, 0) * s
        tol = ref * (float(s) * dd2 + x * 2.0 ** -23 + 4.8e-7) + 1e-38
        err = np.abs(out - ref)
        assert np.isfinite(out).all() and (out <= 1.0 + 2.0 ** -23).all()
        assert (err <= tol).all(), f"{g.name} {a.shape}x{b.shape}: max err/tol {np.max(err / tol):.3g}"


# -- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("sched,match", [
    ({"mr": 8, "nv": 2}, "registers"),                 # 19 vector registers on avx2
    ({"nc": 20}, "multiple of NR"),
    ({"kc": 512, "nc": 128}, "stack"),
    ({"ku": 3}, "divide kc"),
    ({"mr": True}, "positive integer"),
    ({"mr": 0}, "positive integer"),
    ({"mr": "4"}, "positive integer"),
    ({"unroll": 4}, "unknown"),
])
def test_schedule_validation(sched, match):
    with pytest.raises(UsageError, match=match):
        G.gemm("avx2", "nn", schedule=sched)


def test_argument_validation():
    with pytest.raises(UsageError, match="layout"):
        G.gemm("avx2", "tt")
    with pytest.raises(UsageError, match="identifier"):
        G.gemm("avx2", "nn", name="bad name; system()")
    with pytest.raises(UsageError, match="target"):
        G.gemm("sse9", "nn")
    with pytest.raises(UsageError, match="declaration"):
        G.gemm("avx2", "nt", epilogue=G.Epilogue("e", ("float *x); evil(",), lambda *a: a[0]))
    with pytest.raises(UsageError, match="clash"):
        G.gemm("avx2", "nt", epilogue=G.Epilogue("e", ("float alpha",), lambda *a: a[0]))
    with pytest.raises(UsageError, match="identifier"):
        G.gemm("avx2", "nt", epilogue=G.Epilogue("E-1", (), lambda *a: a[0]))


def test_names_and_header():
    g = G.gemm("avx2", "nt")
    assert g.name == f"sg_gemm_nt_{g.mr}x{g.nr}__avx2"
    assert g.prototype.startswith(f"void {g.name}(size_t m, size_t n, size_t k, float alpha")
    assert "generated by softgen" in g.source and "beta == 0 never reads C" in g.source
    assert "_mm256" not in g.source  # only virtual-ISA macros
    e = G.gemm("neon", "nt", epilogue=gaussian_epilogue())
    assert e.name == "sg_gemm_nt_6x8_gauss__neon" and "float alpha" not in e.prototype
    assert e.prototype.endswith("const float *aa, const float *bb, float s);")


def test_strict_mode_has_emulators():
    if STRICT:
        for t in TARGETS:
            if not get_target(t).runnable:
                skip_unless_emulated(get_target(t))


class _GuardPage:
    """Float arrays that end exactly where an inaccessible page begins: reading one element
    past them faults (native targets; the emulated builds read tails through a stack buffer)."""
    PAGE = 4096

    def __init__(self):
        import mmap
        self._maps = []
        self._mmap = mmap

    def array(self, rows, cols, ld, fill):
        import ctypes
        n = (rows - 1) * ld + cols
        size = (4 * n + self.PAGE - 1) // self.PAGE * self.PAGE
        mm = self._mmap.mmap(-1, size + self.PAGE)
        base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        assert libc.mprotect(base + size, self.PAGE, 0) == 0  # PROT_NONE
        self._maps.append(mm)
        flat = np.frombuffer(mm, np.float32, count=n, offset=size - 4 * n)
        flat[...] = fill
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (4 * ld, 4))


@pytest.mark.parametrize("layout", ["nn", "nt", "tn"])
@pytest.mark.parametrize("target", [t for t in TARGETS if get_target(t).runnable])
def test_c_gemm_never_reads_past_operands(target, layout):
    rng = np.random.default_rng(5)
    for sched in (None, _small(target)):
        g = G.gemm(target, layout, schedule=sched)
        lib = _library([g])
        for m, n, k in [(1, 1, 1), (g.mr + 1, g.nr + 3, 5), (3, 2 * g.nr - 1, 19), (g.mr, 1, 7)]:
            gp = _GuardPage()
            a = gp.array(k, m, m + 1, 0.0) if layout == "tn" else gp.array(m, k, k + 1, 0.0)
            b = gp.array(*((n, k) if layout == "nt" else (k, n)), (k if layout == "nt" else n) + 2, 0.0)
            c = gp.array(m, n, n, np.nan)
            a[...] = rng.standard_normal(a.shape)
            b[...] = rng.standard_normal(b.shape)
            assert lib(g, a, b, c, 1.0, 0.0) == 0
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            ref = (a64.T if layout == "tn" else a64) @ (b64.T if layout == "nt" else b64)
            assert np.allclose(c, ref, rtol=1e-5, atol=1e-5)
            c[...] = 1.0
            assert lib(g, a, b, c, 1.0, 1.0) == 0  # beta != 0: reads C up to its last element
            assert np.allclose(c, ref + 1.0, rtol=1e-5, atol=1e-5)
