"""LSSA and LSSAR (docs/ops.md §5): lssa, reweight and their fusion lssar, ops with per-row parameters
(n_attended, the caller's or counted in-kernel; offset, from offset_free_rows)."""
from __future__ import annotations

import math

import numpy as np

from .. import reference as ref
from ..errors import UsageError
from ..ir import Value
from .base import F32_MAX, flag, register
from .softmax import SOFTPLUS_FLOOR, softplus, softplus_normalized

_EPS = 2.0 ** -24


def _head_dim(d) -> float:
    if not (d >= 1 and float(d).is_integer()):
        raise UsageError(f"head_dim must be a positive integer, got {d!r}")
    return math.log(d)


def _power(p) -> float:
    if not p > 0:
        raise UsageError(f"p must be > 0, got {p!r}")
    return float(p)


def _attended(x: Value, count_keys: bool) -> Value:
    """N_i: counted as the row's unmasked (> -inf) entries, or the caller's n_attended."""
    if not count_keys:
        return x.p.row_param("n_attended")
    return x.where_lt(-F32_MAX, 0.0, 1.0).sum()


def _lssa_weights(x: Value, log_d: float, n: Value) -> Value:
    """softplus(log(d) log(N) c), and exactly 0 at masked (-inf) entries whatever the scale."""
    return x.where_lt(-F32_MAX, 0.0, softplus(x * (n.log() * log_d)))


def _ipow(v: Value, p: float) -> Value:
    """v^p: repeated squaring for integer p (x^15 = x x^2 x^4 x^8), else e^(p log v) (v >= 0)."""
    if not (p.is_integer() and p <= 64):
        return (v.log() * p).exp()
    k, sq, acc = int(p), v, None
    while k:
        if k & 1:
            acc = sq if acc is None else acc * sq
        k >>= 1
        if k:
            sq = sq * sq
    return acc


def _reweight(a: Value, amax: Value, n: Value, p: float, check: Value, o: Value | None = None) -> Value:
    """W = q / sum q, q = (ReLU(N a - O) / max R)^p (docs/ops.md §5.2): max R = ReLU(N max a - O) since
    N > 0. A max R at or below ``reference.R_BOUND`` O, the f32 rounding bound of R (derived in
    ``reference.reweight_of``), is 0, so uniform rows give zeros (a scalar test per row). An
    all-zero R gives zeros; a non-finite ``check`` (a row sum) makes the row NaN, which ReLU and
    max() would otherwise drop. A max R below 2^-60 (offset-free rows of tiny weights) has no
    float32 reciprocal: N and O are scaled by 2^100 for the row, which leaves R / max R as it is
    and costs nothing per element. ``o``: O_i, default the row parameter ``offset`` (attention
    derives it from the query's position)."""
    zero = a.const(0.0)
    o = a.p.row_param("offset") if o is None else o
    rmax = amax.fma(n, -o)
    rmax = (o * ref.R_BOUND).where_lt(rmax, rmax, 0.0)
    pre = rmax.where_lt(2.0 ** -60, 2.0 ** 100, 1.0)
    r = a.fma(n * pre, -(o * pre)).maximum(0.0)
    rmax = rmax * pre
    q = _ipow(r * zero.where_lt(rmax, rmax.recip(), 0.0), p)
    total = q.sum()  # >= ~1 (the max term is 1) unless every R is 0; NaN must stay NaN
    return q * total.where_lt(0.5, 0.0, total.recip()).poison(check)


def _lssa_row_args(shape, params, n_attended=None) -> dict:
    if params.get("count_keys", 1):
        if n_attended is not None:
            raise TypeError("this kernel counts the attended keys itself (count_keys=1); build it "
                            "with count_keys=0 to pass n_attended")
        out = {}
    else:
        if n_attended is None:
            raise TypeError("n_attended is required: the kernel was built with count_keys=0")
        n = np.asarray(n_attended, np.float64)
        if n.size and not (np.all(n >= 1) and np.all(n <= 2 ** 24) and np.all(n == np.floor(n))):
            raise ValueError("n_attended must hold integers in [1, 2^24]")
        out = {"n_attended": n}
    if "offset_free_rows" in params:
        out["offset"] = ref.query_offsets(shape, params["offset_free_rows"])
    return out


def _lssa_tolerance(x, ref_y, params, call, inner=False):
    """rtol plus the conditioning of softplus at z = lambda c: rounding lambda and z costs
    |z| 2^-23 relative (the softmax term, with lambda as the scale)."""
    c = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(params["head_dim"]) * np.log(ref.attended_keys(c, call.get("n_attended")))
        z = np.abs(lam[..., None] * c)
    z = np.where(np.isfinite(z), z, 0.0)
    rel = 2e-6 + 2.0 ** -23 * z
    return rel if inner else rel * np.abs(ref_y) + SOFTPLUS_FLOOR + 2.0 ** -126


def _reweight_tolerance(x, ref_y, params, call, a=None, a_rel=None, n=None):
    """Error propagation through W = q / sum q, q = (r / r_max)^p, r = N a - O: relative error of
    r is (eps_a N a + 2^-24 (N a + O)) / r (cancellation near the row mean), times p in q, plus
    ~(p + 8) roundings; the sum spreads every q's error over the row."""
    x64 = np.asarray(x, np.float64)
    a = x64 if a is None else a
    a_rel = np.zeros_like(a) if a_rel is None else a_rel
    if n is None:
        n = np.count_nonzero(a > 0, axis=-1).astype(np.float64) if call.get("n_attended") is None \
            else np.broadcast_to(np.asarray(call["n_attended"], np.float64), a.shape[:-1])
    o = ref.query_offsets(a.shape, params["offset_free_rows"])
    p, y = params["p"], np.nan_to_num(np.abs(ref_y))
    if not a.shape[-1]:
        return y
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        na = np.abs(n[..., None] * a)
        r = np.maximum(n[..., None] * a - o[..., None], 0.0)
        dr = a_rel * na + 2 * _EPS * (na + o[..., None])    # absolute error of r
        er = np.where(r > 0, dr / r, 0.0)
        top = np.argmax(r, axis=-1)[..., None]
        m, dm = np.take_along_axis(r, top, -1), np.take_along_axis(dr, top, -1)
        eq = np.nan_to_num(p * (er + np.take_along_axis(er, top, -1)) + (p + 8) * _EPS, posinf=1.0)
        # entries whose r is not known to 10% (r near 0 after cancellation): the linear bound
        # does not hold; they may get up to ((r + dr) / (m - dm))^p, any value if m may be at or
        # below R's bound (a zero row) or is not known
        known = m - dm > ref.R_BOUND * o[..., None]
        unc = np.where((dr >= 0.1 * r) | ~known,
                       np.minimum(1.0, ((r + dr) / np.where(known, m - dm, 0.0)) ** p), 0.0)
        unc = np.nan_to_num(unc, nan=1.0)
        row = np.sum(y * eq + unc, axis=-1, keepdims=True)
    return (2e-6 + eq + row) * y + unc + 2.0 ** -126


def _reweight_overflow(x, n_attended=None, **_):
    """Rows where N a - O exceeds the f32 range although float64's does not (R = inf, then
    R / max R = NaN): NaN in the kernel."""
    a = np.asarray(x, np.float64)
    n = np.count_nonzero(a > 0, axis=-1) if n_attended is None else n_attended
    with np.errstate(invalid="ignore", over="ignore"):
        big = a * np.asarray(n, np.float64)[..., None] > F32_MAX
    return np.all(np.isfinite(a), axis=-1) & np.any(big, axis=-1)


def _lssa_degenerate(x, head_dim=64, n_attended=None, **_) -> np.ndarray:
    """Rows where lambda c overflows f32 upwards or the f32 sum overflows although float64's does
    not: NaN rows in the kernel. (A row whose every softplus flushes restarts in softmax(lambda c),
    as (c - max c) lambda: no overflow there; some lambda c below -FLT_MAX: -inf in f32, whose
    softplus is 0, as float64's e^(lambda c) is.)"""
    c = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(head_dim) * np.log(ref.attended_keys(c, n_attended))
        z = lam[..., None] * c
        sp = np.where(c == -np.inf, 0.0, ref.softplus(z))
        tot = sp.sum(axis=-1)
        big = np.any((z > F32_MAX) & np.isfinite(c), axis=-1)
    return big | (tot > F32_MAX)


def _lssar_degenerate(x, head_dim=64, n_attended=None, **_) -> np.ndarray:
    """lssa's, and rows whose every softplus term flushes to 0 in f32 although float64's does not
    (lssar has no softmax fallback: its weights' sum is 0)."""
    c = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(head_dim) * np.log(ref.attended_keys(c, n_attended))
        sp = np.where(c == -np.inf, 0.0, ref.softplus(lam[..., None] * c))
        flushed = np.where(sp >= 2.0 ** -126, sp, 0.0).sum(axis=-1) == 0
    return _lssa_degenerate(x, head_dim, n_attended) | flushed


LSSA_CALL = ("n_attended",)
# the per-row parameters of the family's kernels, for headers and manifests
N_ATTENDED_DOC = {"n_attended": "N_i, the number of keys query row r attends to (an integer >= 1)"}
ROW_PARAM_DOCS = {**N_ATTENDED_DOC,
                  "offset": "O_i of the re-weighting, 0 for the first offset_free_rows query rows, else 1"}


def _lssa_call_build(build: dict, call: dict) -> dict:
    """count_keys defaults from the call: 0 (the caller's n_attended) when it gives n_attended."""
    if "count_keys" not in build:
        build["count_keys"] = 0 if "n_attended" in call else 1
    return build


def _lssa_sample_call(shape, params) -> dict:
    """Every key attended, for measurements on unmasked synthetic rows."""
    return {} if params.get("count_keys", 1) else {"n_attended": max(shape[-1], 1)}


@register("lssa", ref.lssa, params={"head_dim": 64, "count_keys": 1}, sums_to_one=True,
          f32_overflow=_lssa_degenerate, row_args=_lssa_row_args, call_params=LSSA_CALL,
          custom_tolerance=_lssa_tolerance, sample_call=_lssa_sample_call,
          row_param_docs=N_ATTENDED_DOC, call_build=_lssa_call_build)
def lssa(x: Value, head_dim: float, count_keys: float) -> Value:
    """softplus(lambda_i c) / sum, lambda_i = log(head_dim) log(N_i) (docs/ops.md §5.1) on cosine scores c;
    masked keys are -inf. N_i: counted in-kernel (count_keys=1, one extra sweep) or the caller's
    per-row n_attended (count_keys=0)."""
    log_d, count = _head_dim(head_dim), flag(count_keys, "count_keys")
    a = _lssa_weights(x, log_d, _attended(x, count))
    def terms(w: Value, wmax: Value) -> tuple[Value, Value, Value]:   # N from w (count_keys: its -inf)
        n = _attended(w, count)
        lam = n.log() * log_d
        return _lssa_weights(w, log_d, n), w * lam, ((w - wmax) * lam).exp()
    return softplus_normalized(x, a, terms)


@register("reweight", ref.reweight, params={"p": 15, "offset_free_rows": 3, "count_keys": 1},
          row_args=_lssa_row_args, call_params=LSSA_CALL, custom_tolerance=_reweight_tolerance,
          f32_overflow=_reweight_overflow, sample_call=_lssa_sample_call,
          row_param_docs=ROW_PARAM_DOCS, call_build=_lssa_call_build)
def reweight(x: Value, p: float, offset_free_rows: float, count_keys: float) -> Value:
    """LSSAR's sharpening of attention weights a (docs/ops.md §5.2): ReLU(N_i a - O_i)^p / sum, overflow-
    safe as (R / max R)^p; O_i = 0 for the first offset_free_rows query rows (axis -2), else 1;
    an all-zero R row gives zeros. N_i: the row's nonzero weights, or the caller's n_attended."""
    if not (offset_free_rows >= 0 and float(offset_free_rows).is_integer()):
        raise UsageError(f"offset_free_rows must be a non-negative integer, got {offset_free_rows!r}")
    if flag(count_keys, "count_keys"):
        n = x.const(0.0).where_lt(x, 1.0, 0.0).sum()
    else:
        n = x.p.row_param("n_attended")
    # the check sums a 2^-100: finite a cannot overflow it, NaN and +-inf survive
    return _reweight(x, x.max(), n, _power(p), (x * 2.0 ** -100).sum())


def _lssar_tolerance(x, ref_y, params, call):
    c = np.asarray(x, np.float64)
    n = ref.attended_keys(c, call.get("n_attended"))
    a = ref.lssa(c, params["head_dim"], n_attended=n)
    return _reweight_tolerance(x, ref_y, params, call, a=a,
                               a_rel=_lssa_tolerance(x, a, params, call, inner=True), n=n)


@register("lssar", ref.lssar,
          params={"head_dim": 64, "p": 15, "offset_free_rows": 3, "count_keys": 1},
          row_args=_lssa_row_args, call_params=LSSA_CALL, custom_tolerance=_lssar_tolerance,
          f32_overflow=_lssar_degenerate, sample_call=_lssa_sample_call,
          row_param_docs=ROW_PARAM_DOCS, call_build=_lssa_call_build)
def lssar(x: Value, head_dim: float, p: float, offset_free_rows: float, count_keys: float) -> Value:
    """reweight(lssa(c)) fused (docs/ops.md §5.1 + 5.2), one N_i for both stages: the lssa sum and the
    max share a sweep, so 3R+1W (4R+1W when counting keys)."""
    if not (offset_free_rows >= 0 and float(offset_free_rows).is_integer()):
        raise UsageError(f"offset_free_rows must be a non-negative integer, got {offset_free_rows!r}")
    n = _attended(x, flag(count_keys, "count_keys"))
    a = _lssa_weights(x, _head_dim(head_dim), n)
    inv = a.sum().finite_or_nan().recip()
    return _reweight(a * inv, a.max() * inv, n, _power(p), inv)
