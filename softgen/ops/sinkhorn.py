"""Sinkhorn (docs/ops.md §7): log-domain Sinkhorn normalisation of matrices, a matrix program."""
from __future__ import annotations

import math

import numpy as np

from .. import reference as ref
from ..errors import UsageError
from ..ir import Value
from ..matrix import MatrixProgram
from .base import F32_MAX, register


def _neg_lse(m: Value, d: Value, eps: float) -> Value:
    """-eps LSE from an online (m, d) state, LSE = m / eps + log d: +inf exactly for a padded
    row/column (only -inf entries: d = 0), NaN or -inf for NaN or +inf entries."""
    return -m - d.log() * eps


def _potential(raw: Value) -> Value:
    """The potential from ``_neg_lse``: 0 for a padded row/column (it drops out of every LSE),
    NaN where the LSE is not finite otherwise, as float64's LSE is."""
    return (-raw).where_lt(-F32_MAX, 0.0, raw.finite_or_nan())


def _unpadded(raw: Value) -> Value:
    """1 for a row/column that is not padded, 0 for a padded one, from its ``_neg_lse``."""
    return (-raw).where_lt(-F32_MAX, 0.0, 1.0)


def _iterations(n) -> int:
    if not (isinstance(n, (int, float)) and float(n).is_integer() and 1 <= n <= 256):
        raise UsageError(f"n_iter must be an integer in [1, 256], got {n!r}")
    return int(n)


def _eps(eps) -> float:
    with np.errstate(over="ignore", divide="ignore"):
        ok = eps > 0 and 0 < np.float32(1.0 / eps) < np.inf and np.float32(eps) > 0
    if not ok:
        raise UsageError(f"eps must be > 0 with eps and 1/eps finite in float32, got {eps!r}")
    return float(eps)


def sinkhorn_phases(mp: MatrixProgram, n_iter: int, eps: float, over: str = "x", into: str | None = None,
                    pre: str = "", dead_rows: bool = False) -> Value:
    """Append the Sinkhorn iterations over matrix ``over`` to ``mp`` (the phases of the op
    ``sinkhorn``, written once: attention's Sinkhorn normalizer reuses them on its score scratch)
    and return the final rows phase's value, whose ``output()`` goes to ``into``. ``pre``
    prefixes the per-row/per-column vectors and per-matrix scalars (u, v, nq, nk, ...) so they
    cannot clash with the caller's names. ``dead_rows``: a padded row (only -inf) comes out NaN
    instead of 0 (attention's fully masked query rows, docs/ops.md §0)."""
    inv = 1.0 / eps
    u, v, nq, nk = pre + "u", pre + "v", pre + "nq", pre + "nk"
    for t in range(n_iter):
        x = mp.rows(over=over, into=into)
        p = x.p
        if t % 2 == 0:   # row step
            r = (x if t == 0 else x + p.colvec(v)).online(inv)
            raw = _neg_lse(r.item(0), r.item(1), eps)
            _potential(raw).emit(u)
            if t == 0 and dead_rows:   # 1, or NaN for a padded row (raw = +inf; selects: no x * 0 to fold)
                raw.where_lt(F32_MAX, 1.0, raw.finite_or_nan()).emit(pre + "alive")
            if t == 0 and n_iter % 2:
                _unpadded(raw).mreduce("sum", nq)
            if n_iter == 1:   # no column step counts the padded columns: a column max of "not -inf"
                x.where_lt(-F32_MAX, 0.0, 1.0).colreduce("max", pre + "live")
                q = mp.cols(over=over)
                q.colvec(pre + "live_m").sum().mreduce("sum", nk)
        else:            # column step: accumulate across the rows, then finish per column
            (x + p.row_param(u)).colreduce("online", pre + "lse", inv)
            q = mp.cols(over=over)
            raw = _neg_lse(q.colvec(pre + "lse_m"), q.colvec(pre + "lse_d"), eps)
            _potential(raw).colstore(v)
            if t == 1 and n_iter % 2:
                _unpadded(raw).sum().mreduce("sum", nk)
    x = mp.rows(over=over, into=into)
    z = x + x.p.row_param(u)
    if n_iter > 1:
        z = z + x.p.colvec(v)
    y = (z * inv).exp()
    if n_iter % 2:   # rows sum to 1 after a row step; Sinkformers' scaling makes them n_k / n_q
        y = y * (x.p.mscalar(nk) / x.p.mscalar(nq).maximum(1.0))
    if dead_rows:
        y = y * x.p.row_param(pre + "alive")
    return y


def _sinkhorn_tolerance(x, ref_y, params, call):
    """Error propagation in units of M = (C + u + v) / eps: each half-step's f32 LSE is off by
    the rounding of its inputs (|z| 2^-24 each, z up to Z = max (|C| + |u| + |v|) / eps), the
    exp and log (a few ulp) and its sum; a column sum adds up to 1.5 ulp per row (sequential
    across rows, one online rescale per row at worst). The output's error is y (e^dM - 1); e^M
    below FLT_MIN may flush to 0 before the n_k scaling. The kernel's potentials leave out the
    reference's eps log n terms, so they may be that much larger."""
    c = np.asarray(x, np.float64)
    n_iter, eps = int(params["n_iter"]), params["eps"]
    nq = c.shape[-2]
    _, _, peak = ref.sinkhorn_potentials(c, n_iter, eps)
    peak += eps * math.log(max(c.shape[-2:], default=1) or 1)
    with np.errstate(invalid="ignore"):
        z = np.nanmax(np.where(np.isfinite(c), np.abs(c), 0.0), initial=0.0) / eps + 2 * peak / eps
    cols = n_iter // 2
    dm = 2.0 ** -23 * (n_iter * (2 * z + 8) + cols * 1.5 * nq + z + 4)
    return np.expm1(dm) * np.abs(np.nan_to_num(ref_y)) + 2.0 ** -126 * c.shape[-1]


def _sinkhorn_call(x, n_iter=3, eps=1.0, **_):
    return ref.sinkhorn(x, n_iter, eps)


@register("sinkhorn", _sinkhorn_call, params={"n_iter": 3, "eps": 1.0}, kind="matrix",
          custom_tolerance=_sinkhorn_tolerance)
def sinkhorn(mp: MatrixProgram, n_iter: float, eps: float) -> None:
    """Log-domain Sinkhorn over the last two axes, rows first (docs/ops.md §7): n_iter half-steps
    alternate row potentials u_i = -eps LSE_j (C_ij + v_j) / eps and column potentials v_j = -eps
    LSE_i (C_ij + u_i) / eps. The marginal terms -eps log n_q, -eps log n_k only shift u
    against v, so they are left out: after a column step exp((C + u + v) / eps) already is the
    output (columns sum to 1), after a row step it is scaled by n_k' / n_q'. Padding: rows and
    columns of only -inf get potential 0 and drop out of every LSE and of the counts n_q', n_k'
    (per-matrix scalars), so they come out 0 and the rest equals the unpadded submatrix's
    result. Column LSEs are online reductions across the rows, vectorised over contiguous
    columns; the planner fuses each row step with the next column step's accumulation (one read
    of the matrix for both)."""
    sinkhorn_phases(mp, _iterations(n_iter), _eps(eps)).output()
