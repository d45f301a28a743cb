"""SOFT (docs/ops.md §6): the Gaussian kernel and the Newton-Schulz pseudo-inverse, matrix programs with
GEMMs."""
from __future__ import annotations

import math

import numpy as np

from .. import reference as ref
from ..errors import UsageError
from ..ir import Program, Value
from ..matrix import MatrixProgram
from .base import F32_MAX, register

U32 = 2.0 ** -24   # unit roundoff of float32
EXP_REL = 2.5e-7   # the p5 exp's relative error (docs/ops.md §11)


def _head_dim_int(d) -> int:
    if isinstance(d, bool) or not (isinstance(d, (int, float)) and float(d).is_integer()
                                   and 1 <= d <= 2 ** 20):
        raise UsageError(f"head_dim must be an integer in [1, 2^20], got {d!r}")
    return int(d)


def _gaussian_tolerance(inputs, ref_y, params, call):
    """Error propagation: |a_i|^2 and |b_j|^2 are d-term f32 sums, G = a_i.b_j a d-term FMA chain
    (|dG| <= d u |a_i||b_j| by Cauchy-Schwarz), then aa + bb - 2G (two roundings): |d(d2)| <=
    (d + 3) 2u (aa + bb + 2 |a||b|) with u = 2^-24 (2u per term, as tests/test_gemm.py, covers
    the k blocking). S = e^(-max(d2, 0) s): the clamp is 1-Lipschitz, rounding s and the product
    cost 2u |z|, the exp EXP_REL; S below FLT_MIN may flush to 0."""
    a, b = (np.asarray(v, np.float64) for v in inputs)
    d = a.shape[-1]
    aa, bb = (a * a).sum(-1)[..., :, None], (b * b).sum(-1)[..., None, :]
    s = 1.0 / (2.0 * math.sqrt(params["head_dim"]))
    dd2 = (d + 3) * 2 * U32 * (aa + bb + 2.0 * np.sqrt(aa * bb))
    y = np.abs(ref_y)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        z = -np.log(np.maximum(y, 1e-300))
        return np.where(y > 0, y * (np.expm1(s * dd2 + 2 * U32 * z) + EXP_REL), 0.0) + 2.0 ** -126


def gaussian_phases(mp: MatrixProgram, a: str, b: str, dst: str, head_dim: int, pre: str = "") -> Value:
    """Append the Gaussian kernel's phases (squared norms of ``a``'s and ``b``'s rows into the
    vectors ``<pre>aa``, ``<pre>bb``; the NT GEMM ``dst = a b^T``; its element-wise rows phase)
    to ``mp`` and return that phase's value (the kernel), whose ``output()`` goes to ``dst``:
    the op ``gaussian_kernel``, written once (SOFT attention reuses it for K1, K1k^T and K2)."""
    s = 1.0 / (2.0 * math.sqrt(head_dim))
    for over, vec in ((b, pre + "bb"), (a, pre + "aa")):
        x = mp.rows(over=over)
        # x - x is NaN exactly for NaN and +-inf: the norm is NaN for a non-finite point and
        # +inf only by overflow (one op; a finite-or-NaN select took three)
        x.fma(x, x - x).sum().emit(vec)
    mp.matmul(dst, a, b, layout="nt")
    g = mp.rows(over=dst, into=dst)
    p = g.p
    q = p.row_param(pre + "aa") + p.colvec(pre + "bb")
    d2 = g.fma(-2.0, q).maximum(0.0)                            # aa + bb - 2 G, one rounding
    # max drops NaN, and G may be inf - inf once the norms overflow: q alone decides those pairs
    # (NaN: a non-finite point; >= FLT_MAX: float32 cannot form the distance, counted as far)
    d2 = q.where_lt(F32_MAX, d2, q)
    return (d2 * -s).exp()


def _gaussian_samples(rng, params):
    return [(rng.uniform(lo, hi, (2, n, d)).astype(np.float32), rng.uniform(lo, hi, (2, m, d)).astype(np.float32))
            for n, m, d in ((1, 1, 1), (7, 9, 3), (64, 64, 64), (300, 17, 65)) for lo, hi in ((-1, 1), (-4, 4))]


@register("gaussian_kernel", ref.gaussian_kernel, params={"head_dim": 64}, kind="matrix",
          matrices={"dims": ("n", "m", "d"), "inputs": {"a": ("n", "d"), "b": ("m", "d")},
                    "outputs": {"s": ("n", "m")}},
          custom_tolerance=_gaussian_tolerance, samples=_gaussian_samples)
def gaussian_kernel(mp: MatrixProgram, head_dim: float) -> None:
    """SOFT's kernel S_ij = exp(-max(|a_i|^2 + |b_j|^2 - 2 a_i.b_j, 0) / (2 sqrt(head_dim))) of
    a (..., n, d) and b (..., m, d) -> (..., n, m) (docs/ops.md §6): the squared norms are row sums, the
    Gram product an NT GEMM, the rest an element-wise phase (fused into the GEMM's store by the C
    backend). Entries in (0, 1]; exactly the clamp makes identical points give 1. A point with a
    non-finite coordinate gives NaN against every point; finite points with |a_i|^2 + |b_j|^2 >=
    FLT_MAX give 0 (their distance is beyond float32: far apart, or identical huge points)."""
    gaussian_phases(mp, "a", "b", "s", _head_dim_int(head_dim)).output()


NEWTON_MAX_ITER = 1000
NORM_TEST = 1.01            # SOFT-Norm halves alpha while |I - A (alpha A)|_1 > 1.01
NORM_HALVINGS = 10
REGULARISER = 0.01          # SOFT's P = A + 0.01 I


def _newton_iter(n) -> int:
    if isinstance(n, bool) or not (isinstance(n, (int, float)) and float(n).is_integer()
                                   and 0 <= n <= NEWTON_MAX_ITER):
        raise UsageError(f"n_iter must be an integer in [0, {NEWTON_MAX_ITER}], got {n!r}")
    return int(n)


def _alpha_factor(f) -> float:
    if isinstance(f, bool) or not (isinstance(f, (int, float)) and 0 < f <= 1):
        raise UsageError(f"alpha_factor must be in (0, 1] (convergence needs alpha sigma_max^2 < 2), "
                         f"got {f!r}")
    return float(f)


def _diagonal(p: Program, on: float, off: float) -> Value:
    """``on`` at the row's diagonal element (element index == row index), ``off`` elsewhere."""
    return (p.index() - p.row_index()).abs().where_lt(0.5, on, off)


def _newton_run(p: np.ndarray, v: np.ndarray, n_iter: int, noise=None) -> np.ndarray:
    """The kernel's iteration V <- 2V - V (P V) in float64; ``noise(x, bound)`` perturbs each
    rounded intermediate x by up to ``bound`` (the f32 kernel's rounding error bound)."""
    m = p.shape[-1]
    g = (m + 2) * 2 * U32                          # a GEMM: (k + 2) 2^-23 |A||B| (test_gemm)
    for _ in range(n_iter):
        t = p @ v
        if noise:
            t = noise(t, g * (np.abs(p) @ np.abs(v)))
        w = v @ t
        if noise:
            w = noise(w, g * (np.abs(v) @ np.abs(t)))
        w = 2 * v - w
        v = noise(w, 2 * U32 * np.abs(w)) if noise else w
    return v


def _newton_candidates(a: np.ndarray, variant: str, factor: float) -> list[float]:
    """The alphas the f32 kernel may pick for matrix ``a``: the reference's, and for "norm" the
    neighbouring halving when a candidate's |I - alpha_k A A|_1 is within its f32 rounding
    bound of 1.01 (the test is a discrete choice)."""
    alpha = float(ref.newton_pinv_alpha(a, variant, factor, "matrix").ravel()[0])
    if variant != "norm":
        return [alpha]
    m = a.shape[-1]
    rowsum = np.max(np.sum(np.abs(a), -1))
    alpha0 = 2.0 / rowsum ** 2
    g = np.abs(a) @ np.abs(a)
    out = {alpha}
    for k in range(NORM_HALVINGS):
        ak = alpha0 * 2.0 ** -k
        norm = np.max(np.sum(np.abs(np.eye(m) - ak * (a @ a)), axis=-2))
        slack = (m + 2) * 2 * U32 * (ak * np.max(g.sum(-2)) + norm) + (2 * m + 8) * U32 * norm
        if abs(norm - NORM_TEST) <= slack:
            out |= {ak, ak / 2}
        if norm <= NORM_TEST - slack:
            break
    return sorted(out)


def _signs(t: np.ndarray, seed: int) -> np.ndarray:
    """+-1 per element, a hash of the element's float32 value and ``seed``: a pseudo-random
    rounding direction that, like the kernel's, is the same for equal values (duplicate rows of a
    singular K2 stay duplicates; random per-element signs would grow its null space 2x per step)."""
    bits = np.ascontiguousarray(t, np.float32).view(np.uint32).astype(np.uint64)
    h = ((bits ^ np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    return np.where(h & np.uint64(1), 1.0, -1.0)


def _newton_tolerance(x, ref_y, params, samples: int = 3):
    """Error propagation by perturbed float64 runs, per matrix: every rounding of the f32
    kernel, bounded as for the GEMMs of tests/test_gemm.py ((k + 2) 2^-23 |A||B| per product,
    2^-23 per element-wise op, (2m + 8) 2^-24 for alpha from an m-term row sum), is injected
    with a pseudo-random sign (``_signs``) into the float64 iteration; the tolerance is the
    largest deviation from the reference over ``samples`` such runs, plus, for "norm", the
    difference to any alpha the f32 halving test may pick instead. Random signs, not
    adversarial ones: the sign-worst-case first-order bound of the same roundings is 10^3-10^4
    times the error kernels show and reaches 10-40% of max |V| at 20-40 iterations for
    cond(K2) ~ 10^4 (computed while deriving this); this one stays 30-400 times the observed
    error, below ~1% of max |V| there. A run that overflows gives a NaN tolerance (a failure)."""
    a64 = np.asarray(x, np.float64)
    out = np.zeros(np.shape(ref_y))
    n_iter, variant, factor = int(params["n_iter"]), params["variant"], params["alpha_factor"]
    for idx in np.ndindex(a64.shape[:-2]):
        a = a64[idx]
        if not np.all(np.isfinite(a)) or a.size == 0:
            continue
        m = a.shape[-1]
        p = a + REGULARISER * np.eye(m) if variant == "soft" else a
        tol = 0.0
        with np.errstate(all="ignore"):
            for alpha in _newton_candidates(a, variant, factor):
                base = _newton_run(p, alpha * p, n_iter)
                dev = np.max(np.abs(base - ref_y[idx]))
                for k in range(samples):
                    def noise(t, b, k=k):
                        return t + b * _signs(t, 1 + k)
                    pn = noise(p, 2 * U32 * np.abs(p)) if variant == "soft" else p
                    v0 = noise(alpha * pn, (2 * m + 8) * U32 * np.abs(alpha * pn))
                    dev = np.maximum(dev, np.max(np.abs(_newton_run(pn, v0, n_iter, noise) - ref_y[idx])))
                tol = np.maximum(tol, dev)
        out[idx] = tol
    return out + 2.0 ** -126


def _newton_samples(rng):
    """SOFT's K2: Gaussian kernels of landmarks (well and moderately conditioned)."""
    out = []
    for m, sc in ((1, 1.0), (7, 0.5), (49, 0.3), (64, 0.2)):
        q = rng.standard_normal((2, m, 64)) * sc
        out.append((ref.gaussian_kernel(q, q, 64).astype(np.float32),))
    return out


def _newton_reference(x, n_iter=20, variant="soft", alpha_factor=0.9):
    return ref.newton_pinv(x, n_iter, variant, alpha_factor, alpha_scope="matrix")


@register("newton_pinv", _newton_reference, params={"n_iter": 20, "variant": "soft", "alpha_factor": 0.9},
          kind="matrix", choices={"variant": ("soft", "norm")},
          matrices={"dims": ("m",), "inputs": {"x": ("m", "m")}, "outputs": {"y": ("m", "m")}},
          custom_tolerance=lambda x, r, params, call: _newton_tolerance(x, r, params),
          samples=lambda rng, params: _newton_samples(rng))
def newton_pinv(mp: MatrixProgram, n_iter: float, variant: str, alpha_factor: float) -> None:
    """Newton-Schulz pseudo-inverse of square matrices (..., m, m) (docs/ops.md §6): V <- 2V - V (P V),
    SOFT's own order, n_iter times (two GEMMs per iteration; 2V - W is an element-wise phase
    reading V, fused into the second GEMM's store in C: rounding 2I - PV first, as V (2I - PV)
    does, costs ~4x the accuracy in float32). variant "soft": P = A + 0.01 I, V0 = alpha P, alpha = alpha_factor
    2 / (max row sum |A|)^2 -> (A + 0.01 I)^-1. variant "norm": P = A, V0 = alpha A, alpha =
    2 / (max row sum)^2 halved while |I - A (alpha A)|_1 > 1.01 (at most 10 times; all candidates
    tested at once from G = A A, the first that passes taken) -> A^+. alpha is per matrix (the
    reference's "tensor" scope couples the matrices of a batch; the limit is the same)."""
    newton_phases(mp, "x", _newton_iter(n_iter), variant, _alpha_factor(alpha_factor), into="y")


def newton_phases(mp: MatrixProgram, x: str, n_iter: int, variant: str, factor: float,
                  into: str | None = None, pre: str = "") -> str:
    """Append Newton-Schulz's phases for the square matrix ``x`` to ``mp`` (the op
    ``newton_pinv``, written once: SOFT attention reuses them on its K2) and return the matrix
    holding the result: ``into`` (a last rows phase copies it there) or, without ``into``, the
    iteration's scratch. ``pre`` prefixes its scratch matrices, vectors and scalars."""
    t, v, w, pp = pre + "t", pre + "v", pre + "w", pre + "p"
    rmax, finite = pre + "rmax", pre + "finite"
    for name in (t, v, w):
        mp.scratch(name, mp.shape(x))
    xr = mp.rows(over=x)
    rowsum = xr.abs().sum()
    rowsum.mreduce("max", rmax)                                                 # max row sum |A|
    rowsum.mreduce("sum", finite)     # NaN/inf anywhere: a NaN matrix, also at n_iter = 0
    if variant == "soft":
        mp.scratch(pp, mp.shape(x))
        xr = mp.rows(over=x, into=pp)
        (xr + _diagonal(xr.p, REGULARISER, 0.0)).output()                      # P = A + 0.01 I
        vr = mp.rows(over=pp, into=v)
        r = vr.p.mscalar(rmax)
        alpha = (factor * 2.0 / (r * r)).poison(vr.p.mscalar(finite))
        (vr * alpha).output()                                                   # V0 = alpha P
        P = pp
    elif variant == "norm":
        mp.matmul(t, x, x)                                                      # G = A A
        g = mp.rows(over=t)
        r = g.p.mscalar(rmax)
        alpha0, eye = 2.0 / (r * r), _diagonal(g.p, 1.0, 0.0)
        for k in range(NORM_HALVINGS):   # column abs-sums of I - alpha_k G, every candidate at once
            (eye - g * (alpha0 * 2.0 ** -k)).abs().colreduce("sum", f"{pre}norm{k}")
        q = mp.cols(over=t)
        for k in range(NORM_HALVINGS):
            q.colvec(f"{pre}norm{k}_s").max().mreduce("max", f"{pre}norm{k}")
        vr = mp.rows(over=x, into=v)
        r = vr.p.mscalar(rmax)
        alpha0 = 2.0 / (r * r)
        alpha = alpha0 * 2.0 ** -NORM_HALVINGS
        limit = float(np.nextafter(np.float32(NORM_TEST), np.float32(np.inf)))   # norm <= 1.01 in f32
        for k in reversed(range(NORM_HALVINGS)):   # the first candidate that passes
            alpha = vr.p.mscalar(f"{pre}norm{k}").where_lt(limit, alpha0 * 2.0 ** -k, alpha)
        (vr * alpha.poison(vr.p.mscalar(finite))).output()                     # V0 = alpha A
        P = x
    else:
        raise UsageError(f"variant must be 'soft' or 'norm', got {variant!r}")
    with mp.loop(n_iter, swap=[(v, w)]):
        mp.matmul(t, P, v)                                                      # T = P V
        mp.matmul(w, v, t)                                                      # W = V T
        wr = mp.rows(over=w, into=w)
        (wr.p.matrow(v) * 2.0 - wr).output()                                   # W = 2V - W
    if into is None:
        return v
    mp.rows(over=v, into=into).output()
    return into
