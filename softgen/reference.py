"""float64 oracles of every op, as defined in docs/ops.md.

``softmax``/``log_softmax`` are the definitions every kernel is tested against. The algorithmic
oracles (``softmax_three_pass_*``, ``extexp_sum``/``softmax_two_pass``, ``online_normalizer``/
``softmax_online``) follow the algorithms step by step in float64 so the algorithms themselves can be
checked against the definition. All act on the last axis, accept any leading shape, and honour the
edge-case contract of docs/ops.md §0.
"""
from __future__ import annotations

import math

import numpy as np

from .numerics import constants as K

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
EXTEXP_F64_DOMAIN = 2.0 ** 50  # the f64 extexp oracle is exact below this |x|


def resolve_scale(scale: float = 1.0, temperature: float | None = None) -> float:
    """softmax(x; s) = softmax(s x); softmax(x; T) = softmax(x / T). s, T finite and > 0."""
    if temperature is not None:
        if scale != 1.0:
            raise ValueError("give scale or temperature, not both")
        t = float(temperature)
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        s = 1.0 / t
    else:
        s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")
    return s


def _rows(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _shifted(x, scale, temperature):
    """(z - M, S) with z = s*x, M = max z, S = sum exp(z - M); NaN propagates per the contract."""
    z = resolve_scale(scale, temperature) * _rows(x)
    if z.shape[-1] == 0:
        return z, np.zeros(z.shape[:-1] + (1,))
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(z, axis=-1, keepdims=True)  # np.max propagates NaN
        d = z - m                              # inf - inf = NaN for +inf and all--inf rows
        s = np.sum(np.exp(d), axis=-1, keepdims=True)
    return d, s


def softmax(x, scale: float = 1.0, temperature: float | None = None) -> np.ndarray:
    """y_i = exp(z_i - M) / sum_j exp(z_j - M), z = s x, M = max z."""
    d, s = _shifted(x, scale, temperature)
    with np.errstate(invalid="ignore"):
        return np.exp(d) / s


def log_softmax(x, scale: float = 1.0, temperature: float | None = None) -> np.ndarray:
    """y_i = (z_i - M) - log S."""
    d, s = _shifted(x, scale, temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        return d - np.log(s)


# -- the algorithms, step by step --------------------------------------------------------------

def softmax_three_pass_recompute(x, scale=1.0, temperature=None):
    z = resolve_scale(scale, temperature) * _rows(x)
    if z.shape[-1] == 0:
        return z
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(z, axis=-1, keepdims=True)                        # pass 1
        s = np.sum(np.exp(z - m), axis=-1, keepdims=True)            # pass 2
        return np.exp(z - m) * (1.0 / s)                             # pass 3 (recompute exp)


def softmax_three_pass_reload(x, scale=1.0, temperature=None):
    z = resolve_scale(scale, temperature) * _rows(x)
    if z.shape[-1] == 0:
        return z
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(z, axis=-1, keepdims=True)                        # pass 1
        y = np.exp(z - m)                                            # pass 2 stores exp
        s = np.sum(y, axis=-1, keepdims=True)
        return y * (1.0 / s)                                         # pass 3 reloads y


def extexp_sum(x) -> tuple[np.ndarray, np.ndarray]:
    """(V, E) with sum_i exp(x_i) = V * 2^E per row, never overflowing (docs/ops.md §2.2).

    Each exp(x_i) = p_i * 2^n_i with n_i = round_half_even(x_i log2 e); accumulate with
    e_max = max(acc_e, n), acc_v = acc_v 2^(acc_e - e_max) + p 2^(n - e_max).
    """
    x = _rows(x)
    with np.errstate(invalid="ignore", over="ignore"):
        n = np.rint(x * LOG2E)                     # np.rint rounds half to even
        p = np.exp(x - n * LN2)
        p = np.where(x == -np.inf, 0.0, p)         # exp(-inf) = 0 * 2^-inf
        n = np.where(x == -np.inf, -np.inf, n)
        e = np.max(n, axis=-1, keepdims=True) if x.shape[-1] else np.full(x.shape[:-1] + (1,), -np.inf)
        scale = np.exp2(np.where(n == -np.inf, -np.inf, n - np.where(np.isneginf(e), 0.0, e)))
        v = np.sum(p * scale, axis=-1, keepdims=True)
    return v, e


def softmax_two_pass(x, scale=1.0, temperature=None):
    """Pass 1: (V, E) = extexp_sum(z); pass 2: y_i = (p_i / V) 2^(n_i - E). Above the f64 domain
    the oracle falls back to the shifted softmax (docs/ops.md §2.4)."""
    z = resolve_scale(scale, temperature) * _rows(x)
    if z.shape[-1] == 0:
        return z
    finite = np.where(np.isfinite(z), np.abs(z), 0.0)
    if np.any(finite >= EXTEXP_F64_DOMAIN):
        return softmax(z)
    v, e = extexp_sum(z)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        n = np.rint(z * LOG2E)
        p = np.where(z == -np.inf, 0.0, np.exp(z - n * LN2))
        y = (p / v) * np.exp2(np.where(z == -np.inf, -np.inf, n) - e)
        bad = ~np.isfinite(v) | (v == 0) | np.any(np.isnan(z) | (z == np.inf), axis=-1, keepdims=True)
        return np.where(bad, np.nan, y)


def online_normalizer(x, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) with d = sum exp(x - m), computed as the online recurrence of docs/ops.md §3, one block of
    ``block`` elements at a time (block max first, one rescale per block). Guard: an update whose
    new max is -inf is skipped, so an all -inf row ends with d = 0."""
    x = _rows(x)
    flat = x.reshape(-1, x.shape[-1])
    ms, ds = np.full(flat.shape[0], -np.inf), np.zeros(flat.shape[0])
    with np.errstate(invalid="ignore", over="ignore"):
        for r, row in enumerate(flat):
            m, d = -np.inf, 0.0
            for j in range(0, row.size, block):
                blk = row[j:j + block]
                mn = max(m, float(np.max(blk)))
                if np.isnan(blk).any():
                    mn = math.nan
                if mn == -np.inf:
                    continue
                d = d * math.exp(m - mn) + float(np.sum(np.exp(blk - mn)))
                m = mn
            ms[r], ds[r] = m, d
    shape = x.shape[:-1] + (1,)
    return ms.reshape(shape), ds.reshape(shape)


def softmax_online(x, scale=1.0, temperature=None, block: int = 16):
    z = resolve_scale(scale, temperature) * _rows(x)
    if z.shape[-1] == 0:
        return z
    m, d = online_normalizer(z, block)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return np.exp(z - m) / d


def exp_p5_f32(x) -> np.ndarray:
    """The degree-5 "p5" exp of docs/ops.md §2.4, evaluated in float32 exactly as the kernels do
    (magic-bias round, two-constant Cody-Waite reduction, Horner with FMAs emulated in f64)."""
    f = np.float32
    x = np.asarray(x, dtype=f)
    log2e = f(K.LOG2E)
    ln2_hi, ln2_lo = f(-K.MINUS_LN2_HI), f(-K.MINUS_LN2_LO)
    c = [f(ck) for ck in K.P5]

    def fma(a, b, cc):
        return (a.astype(np.float64) * b + cc).astype(f)

    with np.errstate(all="ignore"):
        n = np.rint(x.astype(np.float64) * log2e).astype(f)  # = fma(x, log2e, magic) - magic
        t = fma(n, -ln2_hi, x)
        t = fma(n, -ln2_lo, t)
        p = c[0]
        for ck in c[1:]:
            p = fma(p, t, ck)
        p = fma(p, t, f(1.0))
        return (p.astype(np.float64) * np.exp2(n.astype(np.float64))).astype(f)


def exp_table_f32(x, variant: str = "t32", shifted: bool = False) -> np.ndarray:
    """A table exp variant (``K.EXP_VARIANTS[variant]``, e.g. "t32", docs/ops.md §2.4) in float32 as
    templates/vmath.h.j2 evaluates it: sg_exp over the whole range, or (``shifted``) avx512's
    sg_exp_shifted (x <= 0, results down to 2^-149). k = N round(x log2e) by the magic bias (low
    bits j = k mod N), r = x - (k/N) ln2 (Cody-Waite), m = T[j] + (T[j] r) p(r), then m 2^floor(k/N)
    (sg_exp: 2^127 and a doubling in the top binade, +inf above FLT_MAX; +0 where floor(k/N) = -127).
    FMAs are emulated in float64 (a product of two floats is exact there; the sum may round twice
    in rare ties)."""
    v = K.EXP_VARIANTS[variant]
    f, u = np.float32, np.uint32
    n_tab = len(v.table)
    tab = np.array([float(c) for c in v.table], f)
    x = np.asarray(x, dtype=f)

    def fma(a, b, c):
        return (np.asarray(a, np.float64) * b + c).astype(f)

    with np.errstate(all="ignore"):
        x = np.where(np.isnan(x), x, np.maximum(f(K.EXP_MIN_SCALED if shifted else K.EXP_MIN), x))
        if not shifted:
            x = np.where(np.isnan(x), x, np.minimum(f(K.EXP_MAX), x))
        kf = fma(x, f(K.LOG2E), f(v.magic))
        kq = (kf - f(v.magic)).astype(f)
        tj = tab[kf.view(u) & u(n_tab - 1)]
        r = fma(kq, f(K.MINUS_LN2_LO), fma(kq, f(K.MINUS_LN2_HI), x))
        p = np.full_like(r, f(v.coeffs[0]))
        for c in v.coeffs[1:]:
            p = fma(p, r, f(c))
        m = fma((tj * r).astype(f), p, tj)
        if shifted:      # vscalefps: m 2^floor(kq), rounded once
            return (m.astype(np.float64) * np.exp2(np.floor(kq.astype(np.float64)))).astype(f)
        top = kf > f(v.top)
        kc = np.where(top, f(v.top), kf)
        scale = ((kc.view(u) & u(~(n_tab - 1) & 0xFFFFFFFF)) << u(v.shift)).astype(u).view(f)
        y = (m * scale).astype(f)
        return np.where(top, (y + y).astype(f), y)


# -- StableMax (docs/ops.md §8) -------------------------------------------------------------------------

def stablemax_s(x) -> np.ndarray:
    """s(x) = x + 1 for x >= 0, 1 / (1 - x + 1e-30) for x < 0 (the authors' code); s(-inf) = 0."""
    x = _rows(x)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return np.where(x >= 0, x + 1.0, 1.0 / (1.0 - x + 1e-30))


def l1_normalize(w: np.ndarray, log: bool = False) -> np.ndarray:
    """w_i / sum_j w_j (or its log) for non-negative weights; a row whose sum is not finite
    (NaN, +inf) or is 0 (all weights 0, e.g. all -inf inputs) is NaN (docs/ops.md §0)."""
    if w.shape[-1] == 0:
        return w
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        tot = np.sum(w, axis=-1, keepdims=True)
        bad = ~np.isfinite(tot) | (tot == 0)
        tot = np.where(bad, 1.0, tot)
        return np.where(bad, np.nan, np.log(w) - np.log(tot) if log else w / tot)


def stablemax(x) -> np.ndarray:
    """s(x_i) / sum_j s(x_j); no max shift (StableMax is not shift-invariant)."""
    return l1_normalize(stablemax_s(x))


def log_stablemax(x) -> np.ndarray:
    """log s(x_i) - log sum_j s(x_j) (docs/ops.md §8); -inf entries -> -inf."""
    return l1_normalize(stablemax_s(x), log=True)


# -- softplus + l1 normalisation (docs/ops.md §5.1, row form) --------------------------------------------

def softplus(z) -> np.ndarray:
    """log(1 + e^z) = max(z, 0) + log1p(e^-|z|); softplus(-inf) = 0, softplus(+inf) = +inf."""
    z = _rows(z)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.logaddexp(0.0, z)


def softplus_l1(x, scale: float = 1.0) -> np.ndarray:
    """softplus(s x_i) / sum_j softplus(s x_j); NaN rows per docs/ops.md §0 (NaN, +inf, all -inf).
    Rows whose every s x is below -600 (where float64's softplus underflows, from -745) are
    softmax(s x): softplus(z) = e^z (1 - e^z / 2 + ...), equal to e^z to a relative e^-600."""
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be finite and > 0, got {scale!r}")
    z = s * _rows(x)
    y = l1_normalize(softplus(z))
    if z.shape[-1] == 0:
        return y
    with np.errstate(invalid="ignore"):
        tiny = (np.max(z, axis=-1, keepdims=True) < -600.0) & ~np.isnan(z).any(axis=-1, keepdims=True)
    return np.where(tiny, softmax(z), y)


# -- LSSA and LSSAR (docs/ops.md §5, attention-score form) -------------------------------------------------

def attended_keys(scores, n_attended=None) -> np.ndarray:
    """N_i: the number of keys row i attends to; by default the entries that are not masked
    (-inf), which for a causally masked row i is i + 1."""
    c = _rows(scores)
    if n_attended is None:
        return np.count_nonzero(c > -np.inf, axis=-1).astype(np.float64)
    return np.broadcast_to(np.asarray(n_attended, np.float64), c.shape[:-1])


def lssa_weights(cos_scores, head_dim: float, n_attended=None) -> np.ndarray:
    """a_ij = softplus(lambda_i c_ij), lambda_i = log(d) log(N_i); masked (-inf) entries are 0."""
    c = _rows(cos_scores)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(head_dim) * np.log(attended_keys(c, n_attended))
        return np.where(c == -np.inf, 0.0, softplus(lam[..., None] * c))


def lssa(cos_scores, head_dim: float = 64, count_keys: int = 1, n_attended=None) -> np.ndarray:
    """A = a / sum_j a (5.1); a fully masked row is NaN. ``count_keys`` (the kernel's build
    switch) only says where N comes from: counted when ``n_attended`` is None. Rows whose every
    kept z = lambda c is below -600 (where float64's softplus underflows, from -745) are
    softmax(z) over the kept entries, as softplus_l1's: a = e^z to a relative e^-600."""
    c = _rows(cos_scores)
    y = l1_normalize(lssa_weights(c, head_dim, n_attended))
    if c.shape[-1] == 0:
        return y
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(head_dim) * np.log(attended_keys(c, n_attended))
        z = np.where(c == -np.inf, -np.inf, lam[..., None] * c)
        zmax = np.max(z, axis=-1, keepdims=True)
        tiny = (zmax < -600.0) & (zmax > -np.inf) & ~np.isnan(z).any(axis=-1, keepdims=True)
        return np.where(tiny, l1_normalize(np.exp(z - np.where(tiny, zmax, 0.0))), y)


def query_offsets(shape, offset_free_rows: int = 3) -> np.ndarray:
    """O_i = 0 for query rows i < offset_free_rows (axis -2), 1 after (5.2)."""
    lq = shape[-2] if len(shape) >= 2 else 1
    o = (np.arange(lq) >= offset_free_rows).astype(np.float64)
    return np.broadcast_to(o if len(shape) >= 2 else o[0], tuple(shape[:-1]))


# R = N a - O at or below R_BOUND * O counts as 0: see reweight_of.
R_BOUND = 2.0 ** -15


def reweight_of(a: np.ndarray, n: np.ndarray, offset: np.ndarray, p: float) -> np.ndarray:
    """W = R / sum R, R = ReLU(N a - O)^p, evaluated as (R / max R)^p so nothing overflows (5.2).
    All-zero R gives an all-zero row (the one exception of docs/ops.md §0); non-finite a gives NaN.

    A row whose max R is at or below R_BOUND O is all zeros [ours]: float32 weights cannot
    resolve R that small, and without the bound an exactly uniform row (R = 0 in exact
    arithmetic) becomes (noise / max noise)^p, a full distribution, instead of zeros. The bound covers the float32 kernels' error of R near
    R = 0, where N a ~ O: a = s_j / S in f32 is s_j / sum_j s_j times (1 + sigma) (1 + 2 delta),
    |delta| <= u = 2^-24 (the reciprocal and the product), sigma the relative error of the
    blocked row sum S of positive terms: a term passes at most m additions in sequence before
    the block's merges ((m - 1) u): its accumulator lane's chain, flushed into the lane's block
    partial every FLUSH_TERMS = 16 terms (numerics.reductions; at most 16 + unroll terms with the
    single-vector loop and the tail), then that partial's chain (one addition per run of
    flush_steps main-loop steps, plus the block's end); then fewer than 20 merges (accumulators,
    the compensated fold of the blocks, the lanes: ~u each). The default schedules give m <= 37
    (scalar: 20 + 1024 / 64 + 1; SIMD targets 20 + 8 + 1), so |N a - N s_j / sum s| <=
    N a (m + 22) u ~ 60 u O; the fma N a - O adds u |R|. 2^-15 = 512 u leaves a factor ~8
    (measured: <= 64 u on uniform rows of 1..65536 keys). The same bound holds for a given
    weight row a that some f32 kernel normalised, e.g. fl(1/N): reweight(lssa(c)) and the fused
    lssar agree. O = 0 rows keep R = N a > 0 unchanged."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        r = np.maximum(n[..., None] * a - offset[..., None], 0.0)
        m = np.max(r, axis=-1, keepdims=True) if a.shape[-1] else np.zeros(a.shape[:-1] + (1,))
        m = np.where(m > R_BOUND * offset[..., None], m, 0.0)
        q = np.where(m > 0, (r / np.where(m > 0, m, 1.0)) ** p, 0.0)
        t = np.sum(q, axis=-1, keepdims=True)
        w = np.where(t > 0, q / np.where(t > 0, t, 1.0), 0.0)
        bad = ~np.all(np.isfinite(a), axis=-1, keepdims=True)
    return np.where(bad, np.nan, w)


def reweight(a, p: float = 15, offset_free_rows: int = 3, count_keys: int = 1,
             n_attended=None) -> np.ndarray:
    """LSSAR's re-weighting of attention weights ``a`` (5.2); N_i counts the nonzero weights of
    the row unless given."""
    a = _rows(a)
    n = np.count_nonzero(a > 0, axis=-1).astype(np.float64) if n_attended is None else \
        np.broadcast_to(np.asarray(n_attended, np.float64), a.shape[:-1])
    return reweight_of(a, n, query_offsets(a.shape, offset_free_rows), float(p))


def lssar(cos_scores, head_dim: float = 64, p: float = 15, offset_free_rows: int = 3,
          count_keys: int = 1, n_attended=None) -> np.ndarray:
    """reweight(lssa(...)) with the same N_i for both stages."""
    c = _rows(cos_scores)
    n = attended_keys(c, n_attended)
    return reweight_of(lssa(c, head_dim, n_attended=n), n, query_offsets(c.shape, offset_free_rows),
                       float(p))


# -- top-k softmax (docs/ops.md §9) ----------------------------------------------------------------------

def topk_indices(x, k: int) -> np.ndarray:
    """Indices of the min(k, n) largest entries per row, largest first; among equal values the
    lower index wins (a stable descending sort)."""
    x = _rows(x)
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    order = np.argsort(-x, axis=-1, kind="stable")   # NaN sorts last; such rows are NaN anyway
    return order[..., :min(int(k), x.shape[-1])]


def topk_softmax_sparse(x, k: int, renormalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of the top-k gate (the MoE router form). renormalize: softmax over the
    selected entries (Mixtral); else the full-softmax probabilities there (Switch/GShard). A row
    with NaN or +inf, or only -inf, has NaN weights; -inf entries that are selected weigh 0."""
    x = _rows(x)
    idx = topk_indices(x, k)
    sel = np.take_along_axis(x, idx, axis=-1)
    w = softmax(sel) if renormalize else np.take_along_axis(softmax(x), idx, axis=-1)
    bad = np.any(np.isnan(x) | (x == np.inf), axis=-1, keepdims=True) | np.all(x == -np.inf, axis=-1, keepdims=True)
    return idx, np.where(bad, np.nan, w)


def topk_softmax(x, k: int, renormalize: bool = True) -> np.ndarray:
    """Dense form: the top-k weights at their positions, 0 elsewhere (NaN rows stay NaN)."""
    x = _rows(x)
    idx, w = topk_softmax_sparse(x, k, renormalize)
    bad = np.isnan(w).any(axis=-1, keepdims=True)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, w, axis=-1)
    return np.where(bad, np.nan, y)


# -- Sinkhorn (docs/ops.md §7) -------------------------------------------------------------------------

def _lse(m, axis):
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mx = np.max(m, axis=axis, keepdims=True)
        return (mx + np.log(np.sum(np.exp(m - mx), axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn_padding(scores) -> tuple[np.ndarray, np.ndarray]:
    """(padded rows (..., n_q), padded columns (..., n_k)): those whose entries are all -inf."""
    c = _rows(scores)
    masked = c == -np.inf
    return masked.all(-1), masked.all(-2)


def sinkhorn_potentials(scores, n_iter: int = 3, eps: float = 1.0):
    """(u, v, peak): the potentials after ``n_iter`` half-steps of ``sinkhorn`` (rows first) and
    the largest |u|, |v| any step produced (for error bounds). Padded rows and columns (all
    -inf, ``sinkhorn_padding``) are left out: their potential is 0 and the marginals are
    1/n_q', 1/n_k' over the n_q' rows and n_k' columns that are not padded."""
    c = _rows(scores)
    if int(n_iter) < 1 or not (math.isfinite(eps) and eps > 0):
        raise ValueError("n_iter must be >= 1 and eps finite and > 0")
    prow, pcol = sinkhorn_padding(c)
    log_nq = np.log(np.maximum((~prow).sum(-1), 1))[..., None]
    log_nk = np.log(np.maximum((~pcol).sum(-1), 1))[..., None]
    u = np.zeros(c.shape[:-1])
    v = np.zeros(c.shape[:-2] + (c.shape[-1],))
    peak = 0.0
    for t in range(int(n_iter)):
        m = (c + u[..., :, None] + v[..., None, :]) / eps
        with np.errstate(invalid="ignore", over="ignore"):
            if t % 2 == 0:
                u = np.where(prow, 0.0, eps * (-log_nq - _lse(m, -1)) + u)
            else:
                v = np.where(pcol, 0.0, eps * (-log_nk - _lse(m, -2)) + v)
            peak = max(peak, np.nanmax(np.abs(u), initial=0.0), np.nanmax(np.abs(v), initial=0.0))
    return u, v, peak


def sinkhorn(scores, n_iter: int = 3, eps: float = 1.0, output_scale: str = "n_k") -> np.ndarray:
    """Log-domain Sinkhorn on the last two axes, rows first (Sinkformers): M = (C + u + v) / eps,
    even t: u += eps (log mu - LSE_j M), odd t: v += eps (log nu - LSE_i M); returns exp(M) times
    n_k (or n_q with output_scale="n_q"). n_iter = 1 is softmax(C / eps) n_k / n_q. A row or
    column LSE over NaN or +inf is NaN, so such rows/columns poison what they touch. Padding:
    rows and columns that are entirely -inf are left out (``sinkhorn_potentials``) and come out
    0; n_q and n_k count the others, so a padded matrix gives exactly what its unpadded
    submatrix gives, with zeros around it (all -inf: all 0)."""
    c = _rows(scores)
    prow, pcol = sinkhorn_padding(c)
    n = (~(prow if output_scale == "n_q" else pcol)).sum(-1)[..., None, None]
    u, v, _ = sinkhorn_potentials(c, n_iter, eps)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp((c + u[..., :, None] + v[..., None, :]) / eps)
    return p * n


# -- SOFT (docs/ops.md §6) -----------------------------------------------------------------------------

def gaussian_kernel(a, b, head_dim: int) -> np.ndarray:
    """S_ij = exp(-max(|a_i|^2 + |b_j|^2 - 2 a_i.b_j, 0) / (2 sqrt(d))) over the last two axes;
    NaN where a_i or b_j has a non-finite coordinate (docs/ops.md §0: bad input is never a distance)."""
    a, b = _rows(a), _rows(b)
    with np.errstate(invalid="ignore", over="ignore"):
        d2 = (a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2.0 * a @ np.swapaxes(b, -1, -2)
        s = np.exp(-np.maximum(d2, 0.0) / (2.0 * math.sqrt(head_dim)))
    ok = np.isfinite(a).all(-1)[..., :, None] & np.isfinite(b).all(-1)[..., None, :]
    return np.where(ok, s, np.nan)


def newton_pinv_alpha(a, variant: str = "soft", alpha_factor: float = 0.9,
                      alpha_scope: str | None = None) -> np.ndarray:
    """The scale alpha of Newton-Schulz's start V0 = alpha P (see ``newton_pinv``): shape
    (..., 1, 1) per matrix (alpha_scope "matrix") or () over the whole tensor ("tensor"). None:
    as in the code, per matrix for "soft" (SOFT/kernel/inverse.py), over the tensor for "norm"
    (SOFT-Norm newton_inv)."""
    a = _rows(a)
    scope = alpha_scope or ("matrix" if variant == "soft" else "tensor")
    if scope not in ("matrix", "tensor"):
        raise ValueError(f"alpha_scope must be 'matrix', 'tensor' or None, got {alpha_scope!r}")
    if variant not in ("soft", "norm"):
        raise ValueError(f"variant must be 'soft' or 'norm', got {variant!r}")
    per = scope == "matrix"
    top = lambda t: np.max(t, axis=-1)[..., None, None] if per else np.max(t)  # noqa: E731
    rowsum = top(np.sum(np.abs(a), -1))
    if variant == "soft":
        return alpha_factor * 2.0 / rowsum ** 2
    eye = np.eye(a.shape[-1])
    alpha = 2.0 / rowsum ** 2
    for _ in range(10):   # halve while |I - A (alpha A)|_1 > 1.01, at most 10 times
        with np.errstate(invalid="ignore"):   # a non-finite matrix: NaN norms are "not done", as intended
            done = top(np.sum(np.abs(eye - a @ (alpha * a)), axis=-2)) <= 1.01
        if np.all(done):
            break
        alpha = np.where(done, alpha, alpha / 2)
    return alpha


def newton_pinv(a, n_iter: int = 20, variant: str = "soft", alpha_factor: float = 0.9,
                alpha_scope: str | None = None) -> np.ndarray:
    """Newton-Schulz V <- 2V - V A V on the last two (square) axes. variant "soft" (SOFT/kernel/
    inverse.py): P = A + 0.01 I, V0 = alpha P, alpha = alpha_factor 2 / (max row sum)^2 per
    matrix; converges to (A + 0.01 I)^-1. variant "norm" (SOFT-Norm newton_inv): V0 = alpha A,
    alpha = 2 / (max row sum)^2 over the whole tensor, halved while |I - A V0|_1 > 1.01 (at most
    10 times); converges to A^+. ``alpha_scope`` ("matrix" | "tensor" | None = as in the code,
    see ``newton_pinv_alpha``) takes the max row sum (and the halving test) per matrix or over the
    whole tensor: softgen's kernels treat every matrix on its own ("matrix"). Every entry
    depends on the whole matrix (through alpha, and through the products from the first
    iteration on), so a matrix with a NaN or infinite entry gives an all-NaN result, also at
    n_iter = 0."""
    a = _rows(a)
    alpha = newton_pinv_alpha(a, variant, alpha_factor, alpha_scope)
    bad = ~np.all(np.isfinite(a), axis=(-2, -1), keepdims=True)
    if variant == "soft":
        a = a + 0.01 * np.eye(a.shape[-1])
    with np.errstate(invalid="ignore", over="ignore"):
        v = alpha * a
        for _ in range(int(n_iter)):
            v = 2 * v - v @ a @ v
    return np.where(bad, np.nan, v)


# -- attention (docs/ops.md §10) -----------------------------------------------------------------------

# the oracles' normalizers today (docs/ops.md §10's others: next slices); lssa and lssar score
# with cosines, not s Q K^T: ``attention`` hands them to lssa_attention / lssar_attention
ATTENTION_NORMALIZERS = ("softmax", "stablemax", "topk_softmax", "softplus_l1", "lssa", "lssar")


def _attention_scores(q, k, scale, causal, mask, kv_lengths):
    """s Q K^T with the masks applied as -inf (docs/ops.md §0, 10), float64, shape (..., Hq, Lq, Lk).

    q (..., Hq, Lq, d), k (..., Hkv, Lk, d) with Hq a multiple of Hkv: query head h reads kv head
    h // (Hq // Hkv) (grouped-query attention, as torch). 2-d q/k: one head. ``causal``: query i
    attends key j iff j <= i + Lk - Lq (bottom-right aligned). ``mask``: boolean keep-mask (True =
    keep) or additive float mask, broadcastable to (..., Lq, Lk). ``kv_lengths``: per batch index
    (q's leading axes before the head axis) the number of valid keys, keys j >= length masked."""
    q, k = _rows(q), _rows(k)
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        hq, hkv = q.shape[-3], k.shape[-3]
        if hkv == 0 or hq % hkv:
            raise ValueError(f"query heads {hq} are not a multiple of key/value heads {hkv}")
        k = np.repeat(k, hq // hkv, axis=-3)
    lq, lk = q.shape[-2], k.shape[-2]
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        s = scale * (q @ np.swapaxes(k, -1, -2))
    if causal:
        i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
        s = np.where(j <= i + (lk - lq), s, -np.inf)
    if mask is not None:
        m = np.asarray(mask)
        with np.errstate(invalid="ignore"):
            s = np.where(m, s, -np.inf) if m.dtype == bool else s + m.astype(np.float64)
    if kv_lengths is not None:
        n = np.asarray(kv_lengths).reshape(np.shape(kv_lengths) + (1,) * (s.ndim - np.ndim(kv_lengths)))
        s = np.where(np.arange(lk) < n, s, -np.inf)
    return s


def _repeat_kv(q, v):
    v = _rows(v)
    if np.ndim(q) >= 3 and v.ndim >= 3 and np.shape(q)[-3] != v.shape[-3]:
        v = np.repeat(v, np.shape(q)[-3] // v.shape[-3], axis=-3)
    return v


def _masked_rows(s) -> np.ndarray:
    """Rows whose every score is -inf (fully masked), as (..., Lq, 1)."""
    return np.all(s == -np.inf, axis=-1, keepdims=True)


def attention(q, k, v, scale: float | None = None, causal: bool = False, mask=None,
              normalizer: str = "softmax", kv_lengths=None, masked_rows: str = "nan",
              return_lse: bool = False, top_k: int | None = None, renormalize: bool = True, **lssa_params):
    """O = normalize(s Q K^T + mask) V (docs/ops.md §10), three-phase in float64; s = 1/sqrt(d) by default.
    softplus_l1: softplus(S) / sum softplus(S) (``softplus_l1``); lssa, lssar: ``lssa_attention``,
    ``lssar_attention`` (``lssa_params``: lssar's p, offset_free_rows).
    A fully masked row is NaN (docs/ops.md §0), or 0 with ``masked_rows="zero"`` (the convention of fused
    SDPA backends). ``return_lse``: also the per-row log-sum-exp of the masked scores
    (M + log l; -inf for a fully masked row, NaN for a NaN row). topk_softmax (docs/ops.md §9, 10):
    ``top_k`` and ``renormalize`` as ``topk_softmax``'s; masked keys (-inf) weigh 0 even when selected,
    a row with fewer than top_k kept keys keeps them all."""
    if normalizer not in ATTENTION_NORMALIZERS:
        raise ValueError(f"attention normalizer {normalizer!r}: the oracle has {ATTENTION_NORMALIZERS}")
    if masked_rows not in ("nan", "zero"):
        raise ValueError(f"masked_rows must be 'nan' or 'zero', got {masked_rows!r}")
    if return_lse and normalizer != "softmax":
        raise ValueError("return_lse: the log-sum-exp is softmax's")
    if normalizer in ("lssa", "lssar"):
        if scale is not None:
            raise ValueError(f"{normalizer} attention scores with cosines times log(d) log(N_i): it takes no scale")
        fn = lssa_attention if normalizer == "lssa" else lssar_attention
        return fn(q, k, v, causal=causal, mask=mask, kv_lengths=kv_lengths, masked_rows=masked_rows, **lssa_params)
    if lssa_params:
        raise ValueError(f"{sorted(lssa_params)}: parameters of lssar attention, not of {normalizer}")
    s = _attention_scores(q, k, scale, causal, mask, kv_lengths)
    v = _repeat_kv(q, v)
    if normalizer == "topk_softmax" and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"topk_softmax attention needs an integer top_k >= 1, got {top_k!r}")
    p = topk_softmax(s, top_k, renormalize) if normalizer == "topk_softmax" else \
        {"softmax": softmax, "stablemax": stablemax, "softplus_l1": softplus_l1}[normalizer](s)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        o = p @ v if s.shape[-1] else np.zeros(s.shape[:-1] + v.shape[-1:])
        if masked_rows == "zero":
            o = np.where(_masked_rows(s), 0.0, o)
        if not return_lse:
            return o
        d, tot = _shifted(s, 1.0, None)
        m = np.max(s, axis=-1) if s.shape[-1] else np.full(s.shape[:-1], -np.inf)
        lse = np.where(m == -np.inf, -np.inf, m + np.log(tot[..., 0]))
    return o, lse


def attention_online_softmax(q, k, v, scale: float | None = None, causal: bool = False, mask=None,
                             kv_lengths=None, masked_rows: str = "nan", block: int = 16,
                             return_lse: bool = False):
    """The streaming (flash-style) form of ``attention`` with softmax (docs/ops.md §3, 10), in float64:
    per query row a running max m, sum l and accumulator acc[dv] over key blocks of ``block``,
    acc <- acc e^{m - m'} + e^{s - m'} V_blk; O = acc / l. Equal to ``attention`` to 1e-12.
    While every score so far is -inf (m' = -inf) the block adds nothing (its terms are e^{-inf}
    = 0), so a row only becomes NaN from a NaN / +inf score or by being fully masked (l = 0)."""
    if masked_rows not in ("nan", "zero"):
        raise ValueError(f"masked_rows must be 'nan' or 'zero', got {masked_rows!r}")
    s = _attention_scores(q, k, scale, causal, mask, kv_lengths)
    v = _repeat_kv(q, v)
    lead, lk = s.shape[:-1], s.shape[-1]
    m = np.full(lead, -np.inf)
    l = np.zeros(lead)
    acc = np.zeros(lead + v.shape[-1:])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for lo in range(0, lk, block):
            sb, vb = s[..., lo:lo + block], v[..., lo:lo + block, :]
            m2 = np.maximum(m, np.max(sb, axis=-1))          # NaN propagates
            live = m2 != -np.inf                              # else: nothing seen yet
            m2s = np.where(live, m2, 0.0)
            alpha = np.where(live, np.exp(m - m2s), 1.0)
            e = np.where(live[..., None], np.exp(sb - m2s[..., None]), 0.0)
            l = l * alpha + e.sum(-1)
            acc = acc * alpha[..., None] + e @ vb
            m = m2
        o = acc / l[..., None]
        if masked_rows == "zero":
            o = np.where((m == -np.inf)[..., None], 0.0, o)
        lse = np.where(m == -np.inf, -np.inf, m + np.log(l))
    return (o, lse) if return_lse else o


# -- LSSA and LSSAR attention (docs/ops.md §5, §10) -----------------------------------------------------

def _cosines(q, k) -> np.ndarray:
    """c_ij = q_i.k_j / (|q_i| |k_j|) (GQA: k repeated per query head); a zero or non-finite
    vector gives NaN cosines, as q / |q| does."""
    q, k = _rows(q), _rows(k)
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        qn = q / np.linalg.norm(q, axis=-1, keepdims=True)
        kn = k / np.linalg.norm(k, axis=-1, keepdims=True)
        return qn @ np.swapaxes(kn, -1, -2)


def lssa_attention_weights(q, k, causal: bool = False, mask=None, kv_lengths=None, head_dim=None):
    """(A, N, c): LSSA's attention weights A_ij = a_ij / sum_j a_ij, a_ij = softplus(lambda_i c_ij
    + m_ij) for kept keys and 0 for masked ones (5.1), lambda_i = log(d) log(N_i), N_i the number
    of keys query row i keeps (masks, causal, kv_lengths; bottom-right aligned, so causal row i
    keeps min(Lk, i + 1 + Lk - Lq)); m: the finite values of an additive mask. A row that keeps no
    key is NaN. ``head_dim``: the d of lambda (default q's, as kernels built by softgen.attention)."""
    d = np.shape(q)[-1] if head_dim is None else head_dim
    # the masks exactly as the other normalizers apply them: zero scores plus mask, -inf = dropped
    zq, zk = np.zeros(np.shape(q)[:-1] + (1,)), np.zeros(np.shape(k)[:-1] + (1,))
    m = _attention_scores(zq, zk, 1.0, causal, mask, kv_lengths)
    c = _cosines(q, k)
    keep = m != -np.inf
    n = np.count_nonzero(keep, axis=-1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(d) * np.log(n)
        a = np.where(keep, softplus(lam[..., None] * c + np.where(keep, m, 0.0)), 0.0)
    return l1_normalize(a), n, c


def _finish(w, q, v, masked_rows):
    if masked_rows not in ("nan", "zero"):
        raise ValueError(f"masked_rows must be 'nan' or 'zero', got {masked_rows!r}")
    v = _repeat_kv(q, v)
    with np.errstate(invalid="ignore", over="ignore"):
        return w @ v if w.shape[-1] else np.zeros(w.shape[:-1] + v.shape[-1:])   # as softmax's Lk = 0


def lssa_attention(q, k, v, causal: bool = False, mask=None, kv_lengths=None, masked_rows: str = "nan",
                   head_dim=None):
    """LSSA attention (docs/ops.md §5.1, §10): O = A V with A from ``lssa_attention_weights``
    (cosine scores, no 1/sqrt(d)); a fully masked row is NaN, or 0 with masked_rows="zero"."""
    w, n, _ = lssa_attention_weights(q, k, causal, mask, kv_lengths, head_dim)
    o = _finish(w, q, v, masked_rows)
    return np.where((n == 0)[..., None], 0.0, o) if masked_rows == "zero" else o


def lssar_offsets(lq: int, lk: int, offset_free_rows: int = 3) -> np.ndarray:
    """O_i for query rows at key positions i + Lk - Lq (bottom-right aligned): 0 for the first
    offset_free_rows positions, 1 after (5.2): decoding rows of a long KV cache have O = 1."""
    return (np.arange(lq) + (lk - lq) >= offset_free_rows).astype(np.float64)


def lssar_attention_weights(q, k, causal: bool = False, mask=None, kv_lengths=None, p: float = 15,
                            offset_free_rows: int = 3, head_dim=None) -> tuple[np.ndarray, np.ndarray]:
    """(W, N): W = reweight_of(A, N, O, p) (5.2) on LSSA's A and N_i, O_i from ``lssar_offsets``."""
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p!r}")
    if not (offset_free_rows >= 0 and float(offset_free_rows).is_integer()):
        raise ValueError(f"offset_free_rows must be a non-negative integer, got {offset_free_rows!r}")
    a, n, _ = lssa_attention_weights(q, k, causal, mask, kv_lengths, head_dim)
    o = np.broadcast_to(lssar_offsets(a.shape[-2], a.shape[-1], int(offset_free_rows)), a.shape[:-1])
    return reweight_of(a, n, o, float(p)), n


def lssar_attention(q, k, v, causal: bool = False, mask=None, kv_lengths=None, masked_rows: str = "nan",
                    p: float = 15, offset_free_rows: int = 3, head_dim=None):
    """LSSAR attention (docs/ops.md §5.2, §10): O = W V, W = ReLU(N_i A_ij - O_i)^p / sum_j (as
    (R / max R)^p); a row of all-zero R (e.g. uniform attention past the offset-free rows) gives
    0, a fully masked row NaN (0 with masked_rows="zero")."""
    w, n = lssar_attention_weights(q, k, causal, mask, kv_lengths, p, offset_free_rows, head_dim)
    o = _finish(w, q, v, masked_rows)
    return np.where((n == 0)[..., None], 0.0, o) if masked_rows == "zero" else o


# -- Sinkhorn and SOFT attention (docs/ops.md §6, 7, 10) -------------------------------------------

def sinkhorn_attention(q, k, v, scale: float | None = None, mask=None, kv_lengths=None, n_iter: int = 3,
                       eps: float = 1.0, masked_rows: str = "nan", causal: bool = False) -> np.ndarray:
    """Sinkformers' attention (docs/ops.md §7, 10): P = sinkhorn(s Q K^T + mask, n_iter, eps), rows
    first, times n_k (the keys that are not padded), then O = P V; GQA and the masks as in
    ``attention``. A key with no finite score (every query masks it) is excluded and gets weight 0
    (the key-padding rule, ``sinkhorn``); a fully masked query row is NaN (docs/ops.md §0), or 0
    with ``masked_rows="zero"``, and the other rows are those of the unmasked submatrix. Not
    causal: the only doubly stochastic lower-triangular matrix is I (ValueError)."""
    if causal:
        raise ValueError("sinkhorn attention is not causal (docs/ops.md §7): the only doubly stochastic "
                         "lower-triangular matrix is the identity")
    if masked_rows not in ("nan", "zero"):
        raise ValueError(f"masked_rows must be 'nan' or 'zero', got {masked_rows!r}")
    s = _attention_scores(q, k, scale, False, mask, kv_lengths)
    v = _repeat_kv(q, v)
    dead = _masked_rows(s)
    with np.errstate(invalid="ignore", over="ignore"):
        p = sinkhorn(s, n_iter, eps) if s.size else np.zeros(s.shape)
        o = p @ v if s.shape[-1] else np.zeros(s.shape[:-1] + v.shape[-1:])
    return np.where(dead, 0.0 if masked_rows == "zero" else np.nan, o)


SOFT_LANDMARKS = 49   # SOFT's landmark count: 7 x 7 in each of its three stages (56^2/8^2, 28^2/4^2, 14^2/2^2)


def soft_landmark_segments(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): landmark i pools tokens lo[i] <= j < hi[i], lo = floor(i n / m), hi = ceil((i + 1)
    n / m): consecutive groups of n / m when m divides n (the spec's rule), else overlapping by
    at most one token (torch's adaptive_avg_pool1d), never empty for n >= 1."""
    if int(m) < 1 or int(n) < 1:
        raise ValueError(f"landmarks need m >= 1 and n >= 1 tokens, got m={m}, n={n}")
    i = np.arange(int(m))
    return (i * n) // m, -((-(i + 1) * n) // m)


def soft_landmarks_avgpool(x, m: int, dtype=np.float64) -> np.ndarray:
    """m landmarks of the tokens x (..., n, d) by average pooling (docs/ops.md §6, the learning-free
    choice) over ``soft_landmark_segments``, in ``dtype`` (softgen.attention pools float32)."""
    x = np.asarray(x, dtype)
    n, m = x.shape[-2], int(m)
    lo, hi = soft_landmark_segments(n, m)
    if n % m == 0:
        return x.reshape(x.shape[:-2] + (m, n // m, x.shape[-1])).mean(-2, dtype=dtype)
    return np.stack([x[..., a:b, :].mean(-2, dtype=dtype) for a, b in zip(lo, hi)], axis=-2)


def soft_attention(q, k, v, landmarks=SOFT_LANDMARKS, n_iter: int = 20, variant: str = "soft",
                   alpha_factor: float = 0.9, head_dim: int | None = None, causal: bool = False,
                   mask=None) -> np.ndarray:
    """SOFT's linear global form (docs/ops.md §6, 10): O = K1 (K2^+ (K1k^T V)) with the Gaussian
    kernel of ``gaussian_kernel`` (head_dim: d by default), landmarks L (``landmarks``: a count m
    for ``soft_landmarks_avgpool`` of k, or the (..., m, d) landmarks themselves), K1 = kernel(Q, L)
    (Lq x m), K1k = kernel(K, L) (Lk x m), K2 = kernel(L, L) and K2^+ by ``newton_pinv`` (n_iter
    iterations, per matrix). SOFT ties K = Q: with k = q this is the paper's form (K1k = K1); a
    different k is the Nystrom approximation of kernel(Q, K) with landmarks from k [ours]. No row
    normalisation; O(n m) memory, never n x n. Not causal, no masks (ValueError)."""
    if causal or mask is not None:
        raise ValueError("soft attention has no causal or masked form (docs/ops.md §6: a global, linear form)")
    q, k, v = _rows(q), _rows(k), _repeat_kv(q, v)
    if np.ndim(q) >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
    d = int(head_dim or q.shape[-1])
    lm = soft_landmarks_avgpool(k, landmarks) if np.ndim(landmarks) == 0 else _rows(landmarks)
    k1, k1k, k2 = gaussian_kernel(q, lm, d), gaussian_kernel(k, lm, d), gaussian_kernel(lm, lm, d)
    k2p = newton_pinv(k2, n_iter, variant, alpha_factor, alpha_scope="matrix")
    with np.errstate(invalid="ignore", over="ignore"):
        return k1 @ (k2p @ (np.swapaxes(k1k, -1, -2) @ v))
