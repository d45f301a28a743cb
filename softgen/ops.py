"""The op library. An op is its IR definition and its float64 reference, side by side; every
algorithm, target, backend, test and benchmark is derived from this table.

To add an op: write a function that builds the IR from the input row (``x``, an ``ir.Value``) and
the op's parameters, and register it with its reference and tolerances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import reference as ref
from .errors import UsageError
from .ir import TOPK_MAX, Program, Value
from .matrix import MatrixProgram


@dataclass(frozen=True)
class OpDef:
    name: str
    build: Callable[..., Value]        # (x, **params) -> output row value
    reference: Callable                # float64 oracle: (x, **params) -> y
    params: dict                       # parameter name -> default
    doc: str
    rtol: float = 2e-6                 # spec section 11
    atol: float = 0.0
    atol_rel_to_y: bool = False        # log-softmax: |err| <= atol * (1 + |y|)
    sums_to_one: bool | Callable = False   # or (params) -> bool, when a parameter decides it
    exp_conditioned: bool = True       # outputs are e^(s(x - max)): see tolerance()
    # rows where the float32 kernel's row sum overflows although float64's does not; the kernel
    # must give a NaN row there (section 0): (x, **params) -> bool mask over rows
    f32_overflow: Callable | None = None
    # ops with per-row parameters: (shape, params, **call) -> {row param name: values per row},
    # from the call-time arguments ``call_params`` (e.g. lssa's n_attended)
    row_args: Callable | None = None
    call_params: tuple[str, ...] = ()
    # a tolerance of the op's own: (x, ref_y, params, call) -> allowed |error| per element
    custom_tolerance: Callable | None = None
    # call-time arguments for measurements on synthetic rows: (shape, params) -> call dict
    sample_call: Callable | None = None
    # "row": normalises the last axis; "matrix": acts on the last two axes (a matrix program)
    kind: str = "row"
    extra: dict = field(default_factory=dict)

    def normalised(self, params: dict) -> bool:
        """Whether the kernel's finite output rows sum to 1 for these parameters."""
        return bool(self.sums_to_one(params) if callable(self.sums_to_one) else self.sums_to_one)

    def row_arguments(self, names: list[str], shape: tuple, params: dict, call: dict) -> list:
        """The kernel's per-row parameter arrays (float32, one per row, C order of the leading
        axes) for input ``shape``; validates the call-time arguments."""
        unknown = sorted(set(call) - set(self.call_params))
        if unknown:
            takes = f"; it takes {', '.join(self.call_params)}" if self.call_params else ""
            raise TypeError(f"{self.name} has no call argument(s) {unknown}{takes}")
        if not names and not call:
            return []
        given = self.row_args(tuple(shape), params, **call)
        lead, out = tuple(shape[:-1]), []
        for name in names:
            a = np.asarray(given[name], np.float64)
            try:
                a = np.broadcast_to(a, lead)
            except ValueError:
                raise ValueError(f"{self.name}: {name} has shape {a.shape}, which does not "
                                 f"broadcast to the {lead} rows of the input") from None
            out.append(np.ascontiguousarray(a, np.float32).reshape(-1))
        return out

    def tolerance(self, x, ref_y, params, call=None) -> "np.ndarray":
        """Allowed |kernel - reference| per element for float32 kernels (spec section 11).

        Relative ``rtol`` plus the conditioning of exp: rounding z = s(x - max) to f32 perturbs
        e^z by |z| 2^-24 (twice: the subtraction and the scaling), an error every f32 kernel has;
        for the outputs that matter (|z| <= 16) the bound stays at the spec's 2e-6. Outputs below
        FLT_MIN may be flushed to zero.
        """
        if self.custom_tolerance is not None:
            return self.custom_tolerance(x, ref_y, params, call or {})
        y = np.abs(ref_y)
        if self.atol_rel_to_y:
            return self.atol * (1.0 + y)
        if not self.exp_conditioned:
            return self.rtol * y + self.atol + 2.0 ** -126
        x64 = np.asarray(x, np.float64) * params.get("scale", 1.0)
        with np.errstate(invalid="ignore"):
            z = np.abs(x64 - np.max(x64, axis=-1, keepdims=True)) if x64.shape[-1] else x64
        z = np.where(np.isfinite(z), z, 0.0)
        return (self.rtol + 2.0 ** -23 * z) * y + self.atol + 2.0 ** -126


OPS: dict[str, OpDef] = {}


def register(name: str, reference: Callable, **kw):
    def deco(build):
        params = kw.pop("params", {})
        OPS[name] = OpDef(name=name, build=build, reference=reference, params=params,
                          doc=(build.__doc__ or "").strip(), **kw)
        return build
    return deco


def _scale(params: dict) -> float:
    try:
        return ref.resolve_scale(params.get("scale", 1.0), params.get("temperature"))
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


@register("softmax", ref.softmax, params={"scale": 1.0, "temperature": None}, sums_to_one=True)
def softmax(x: Value, scale: float) -> Value:
    """y = exp(s x - max(s x)) / sum(...): max and scale commute for s > 0 (spec 0, 1)."""
    z = (x - x.max()) * scale
    e = z.exp()
    return e * e.sum().finite_or_nan().recip()


@register("log_softmax", ref.log_softmax, params={"scale": 1.0, "temperature": None},
          rtol=0.0, atol=2e-6, atol_rel_to_y=True)
def log_softmax(x: Value, scale: float) -> Value:
    """y = (s x - M) - log sum exp(s x - M) (spec 4)."""
    z = (x - x.max()) * scale
    return z - z.exp().sum().log()


def _stablemax_overflow(x, **_) -> np.ndarray:
    with np.errstate(over="ignore"):
        return ref.stablemax_s(x).sum(axis=-1) > np.finfo(np.float32).max


@register("stablemax", ref.stablemax, sums_to_one=True, exp_conditioned=False,
          f32_overflow=_stablemax_overflow)
def stablemax(x: Value) -> Value:
    """s(x) / sum s(x), s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); no max shift (spec 8). The
    authors' + 1e-30 is dropped: for x < 0, 1 - x >= 1 and adding 1e-30 rounds away in f32/f64."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s * s.sum().finite_or_nan().recip()


@register("log_stablemax", ref.log_stablemax, rtol=0.0, atol=2e-6, atol_rel_to_y=True,
          exp_conditioned=False, f32_overflow=_stablemax_overflow)
def log_stablemax(x: Value) -> Value:
    """log(s(x) / sum s(x)) (spec 8), with stablemax's s, as one log_ratio per element: s / S
    underflows for s far below the sum, and log s - log S would cancel two large logs."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s.log_ratio(s.sum().finite_or_nan())


def _softplus_degenerate(x, scale=1.0, **_) -> np.ndarray:
    """Rows whose f32 softplus terms all flush to 0 (every s x below about -87) or whose f32 sum
    overflows: the kernel gives a NaN row there, the float64 reference may not."""
    sp = ref.softplus(scale * np.asarray(x, np.float64))
    with np.errstate(over="ignore"):
        tot = np.where(sp >= 2.0 ** -126, sp, 0.0).sum(axis=-1)
    return (tot == 0) | (tot > np.finfo(np.float32).max)


def _softplus(z: Value) -> Value:
    return z.maximum(0.0) + (-z.abs()).exp().log1p()


@register("softplus_l1", ref.softplus_l1, params={"scale": 1.0}, sums_to_one=True,
          f32_overflow=_softplus_degenerate)
def softplus_l1(x: Value, scale: float) -> Value:
    """softplus(s x) / sum softplus(s x), softplus(z) = max(z, 0) + log1p(e^-|z|) (spec 5.1, row
    form); no max pass."""
    sp = _softplus(x * scale)
    return sp * sp.sum().finite_or_nan().recip()


# -- LSSA / LSSAR (spec 5): per-row parameters -----------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
_EPS = 2.0 ** -24


def _flag(value, name: str) -> bool:
    if value not in (0, 1):
        raise UsageError(f"{name} must be 0 or 1, got {value!r}")
    return bool(value)


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
    return x.where_lt(-F32_MAX, 0.0, _softplus(x * (n.log() * log_d)))


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


def _reweight(a: Value, amax: Value, n: Value, p: float, check: Value) -> Value:
    """W = q / sum q, q = (ReLU(N a - O) / max R)^p (spec 5.2): max R = ReLU(N max a - O) since
    N > 0. An all-zero R gives zeros; a non-finite ``check`` (a row sum) makes the row NaN,
    which ReLU and max() would otherwise drop."""
    zero = Value(a.p, a.p.const(0.0))
    neg_o = -a.p.row_param("offset")
    r = a.fma(n, neg_o).maximum(0.0)
    rmax = amax.fma(n, neg_o).maximum(0.0)
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
    return rel if inner else rel * np.abs(ref_y) + 2.0 ** -126


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
        # does not hold; they may get up to ((r + dr) / (m - dm))^p, any value if m is not known
        unc = np.where(dr >= 0.1 * r, np.minimum(1.0, ((r + dr) / np.maximum(m - dm, 0.0)) ** p), 0.0)
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
    """Rows where lambda c overflows f32, the f32 sum overflows, or every softplus term flushes
    to 0 in f32 although float64's does not: NaN rows in the kernel."""
    c = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(head_dim) * np.log(ref.attended_keys(c, n_attended))
        z = lam[..., None] * c
        sp = np.where(c == -np.inf, 0.0, ref.softplus(z))
        tot = np.where(sp >= 2.0 ** -126, sp, 0.0).sum(axis=-1)
        big = np.any((np.abs(z) > F32_MAX) & np.isfinite(c), axis=-1)
    return big | (tot == 0) | (tot > F32_MAX)


LSSA_CALL = ("n_attended",)


def _lssa_sample_call(shape, params) -> dict:
    """Every key attended, for measurements on unmasked synthetic rows."""
    return {} if params.get("count_keys", 1) else {"n_attended": max(shape[-1], 1)}


@register("lssa", ref.lssa, params={"head_dim": 64, "count_keys": 1}, sums_to_one=True,
          f32_overflow=_lssa_degenerate, row_args=_lssa_row_args, call_params=LSSA_CALL,
          custom_tolerance=_lssa_tolerance, sample_call=_lssa_sample_call)
def lssa(x: Value, head_dim: float, count_keys: float) -> Value:
    """softplus(lambda_i c) / sum, lambda_i = log(head_dim) log(N_i) (spec 5.1) on cosine scores c;
    masked keys are -inf. N_i: counted in-kernel (count_keys=1, one extra sweep) or the caller's
    per-row n_attended (count_keys=0)."""
    a = _lssa_weights(x, _head_dim(head_dim), _attended(x, _flag(count_keys, "count_keys")))
    return a * a.sum().finite_or_nan().recip()


@register("reweight", ref.reweight, params={"p": 15, "offset_free_rows": 3, "count_keys": 1},
          row_args=_lssa_row_args, call_params=LSSA_CALL, custom_tolerance=_reweight_tolerance,
          f32_overflow=_reweight_overflow, sample_call=_lssa_sample_call)
def reweight(x: Value, p: float, offset_free_rows: float, count_keys: float) -> Value:
    """LSSAR's sharpening of attention weights a (spec 5.2): ReLU(N_i a - O_i)^p / sum, overflow-
    safe as (R / max R)^p; O_i = 0 for the first offset_free_rows query rows (axis -2), else 1;
    an all-zero R row gives zeros. N_i: the row's nonzero weights, or the caller's n_attended."""
    if not (offset_free_rows >= 0 and float(offset_free_rows).is_integer()):
        raise UsageError(f"offset_free_rows must be a non-negative integer, got {offset_free_rows!r}")
    if _flag(count_keys, "count_keys"):
        n = Value(x.p, x.p.const(0.0)).where_lt(x, 1.0, 0.0).sum()
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
          f32_overflow=_lssa_degenerate, sample_call=_lssa_sample_call)
def lssar(x: Value, head_dim: float, p: float, offset_free_rows: float, count_keys: float) -> Value:
    """reweight(lssa(c)) fused (spec 5.1 + 5.2), one N_i for both stages: the lssa sum and the
    max share a sweep, so 3R+1W (4R+1W when counting keys)."""
    if not (offset_free_rows >= 0 and float(offset_free_rows).is_integer()):
        raise UsageError(f"offset_free_rows must be a non-negative integer, got {offset_free_rows!r}")
    n = _attended(x, _flag(count_keys, "count_keys"))
    a = _lssa_weights(x, _head_dim(head_dim), n)
    inv = a.sum().finite_or_nan().recip()
    return _reweight(a * inv, a.max() * inv, n, _power(p), inv)


# -- Sinkhorn (spec 7): a matrix program -------------------------------------------------------

def _potential(m: Value, d: Value, count: Value, eps: float) -> Value:
    """-eps (log count + LSE) from an online (m, d) state, LSE = m / eps + log d; NaN where the
    LSE is not finite (a NaN, +inf or all -inf row/column), as float64's LSE is."""
    return (count.log() * -eps - m - d.log() * eps).finite_or_nan()


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


def _sinkhorn_tolerance(x, ref_y, params, call):
    """Error propagation in units of M = (C + u + v) / eps: each half-step's f32 LSE is off by
    the rounding of its inputs (|z| 2^-24 each, z up to Z = max (|C| + |u| + |v|) / eps), the
    exp and log (a few ulp) and its sum; a column sum adds up to 1.5 ulp per row (sequential
    across rows, one online rescale per row at worst). The output's error is y (e^dM - 1); e^M
    below FLT_MIN may flush to 0 before the n_k scaling."""
    c = np.asarray(x, np.float64)
    n_iter, eps = int(params["n_iter"]), params["eps"]
    nq = c.shape[-2]
    _, _, peak = ref.sinkhorn_potentials(c, n_iter, eps)
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
    """Log-domain Sinkhorn over the last two axes, rows first (spec 7): n_iter half-steps
    alternate row potentials u_i = -eps (log n_q + LSE_j (C_ij + v_j) / eps) and column
    potentials v_j = -eps (log n_k + LSE_i (C_ij + u_i) / eps) (the spec's update with the old
    potential cancelled); output exp((C + u + v) / eps) n_k. Column LSEs are online reductions
    across the rows, vectorised over contiguous columns; the planner fuses each row step with the
    next column step's accumulation (one read of the matrix for both)."""
    n_iter, eps = _iterations(n_iter), _eps(eps)
    inv = 1.0 / eps
    for t in range(n_iter):
        x = mp.rows()
        p = x.p
        if t % 2 == 0:   # row step
            r = (x if t == 0 else x + p.colvec("v")).online(inv)
            _potential(r.item(0), r.item(1), p.size("rows"), eps).emit("u")
        else:            # column step: accumulate across the rows, then finish per column
            (x + p.row_param("u")).colreduce("online", "lse", inv)
            q = mp.cols()
            _potential(q.colvec("lse_m"), q.colvec("lse_d"), q.size("cols"), eps).colstore("v")
    x = mp.rows()
    z = x + x.p.row_param("u")
    if n_iter > 1:
        z = z + x.p.colvec("v")
    x.p.add("output", ((z * inv).exp() * x.p.size("cols")).id)
# -- top-k softmax (spec 9): a selection reduction, dense or sparse output ------------------------

def _topk_k(k) -> int:
    if isinstance(k, bool) or not (isinstance(k, (int, float)) and float(k).is_integer()
                                   and 1 <= k <= TOPK_MAX):
        raise UsageError(f"k must be an integer in [1, {TOPK_MAX}] (the kernels keep k sorted "
                         f"registers per lane), got {k!r}")
    return int(k)


def _topk_reference(x, k=2, renormalize=1, sparse=0):
    """Dense ``reference.topk_softmax``, or the (indices, weights) of ``topk_softmax_sparse``."""
    f = ref.topk_softmax_sparse if sparse else ref.topk_softmax
    return f(x, int(k), bool(renormalize))


@register("topk_softmax", _topk_reference, params={"k": 2, "renormalize": 1, "sparse": 0},
          sums_to_one=lambda params: bool(params.get("renormalize", 1)))
def topk_softmax(x: Value, k: float, renormalize: float, sparse: float) -> Value:
    """Top-k gate (spec 9): the k largest entries (lower index first on ties) get
    e^(x - max) / sum, summed over the k (renormalize=1, Mixtral) or over the whole row
    (renormalize=0, Switch); the others 0. One selection sweep keeps k sorted (key, index)
    registers per lane. sparse=1: the (indices, weights) of the min(k, n) selected entries,
    largest first, instead of the dense row (the MoE router form, 1R + 2k writes per row)."""
    sel = x.topk(_topk_k(k))        # items: (t, jt) the k-th kept, m the max, d its sum
    if _flag(renormalize, "renormalize"):
        # d comes from the kept keys; NaN is never kept, so a row check makes NaN rows NaN
        # not finite iff the row has NaN or +inf (x * 0 would do, but simplifiers fold it)
        check = x.where_lt(-F32_MAX, 0.0, x * 2.0 ** -100).sum()
        inv = sel.item(3).finite_or_nan().recip().poison(check)
        w = (x - sel.item(2)).exp() * inv
    else:
        e = (x - x.max()).exp()      # the normaliser motif: every softmax algorithm applies
        inv = e.sum().finite_or_nan().recip()
        w = e * inv
    if _flag(sparse, "sparse"):
        return Value(x.p, x.p.add("output_selected", sel.id, w.id))
    zero = Value(x.p, x.p.const(0.0)).poison(inv)   # a NaN row stays NaN off the selection too
    return x.where_ranked(x.p.index(), sel.item(0), sel.item(1), w, zero)


def get_op(name: str) -> OpDef:
    if not isinstance(name, str) or name not in OPS:
        raise UsageError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    return OPS[name]


def resolve_params(op: OpDef, given: dict) -> dict:
    """Validated build-time parameters (baked into the kernel). Unknown names are errors."""
    unknown = sorted(set(given) - set(op.params))
    if unknown:
        raise UsageError(f"op {op.name!r} has no parameter(s) {unknown}; it takes {sorted(op.params)}")
    flags = {k for k, d in op.params.items() if type(d) is int and d in (0, 1)}  # e.g. sparse
    given = {k: int(v) if isinstance(v, bool) and k in flags else v for k, v in given.items()}
    # integer parameters given as integral floats (the CLI's --param k=2) stay integers
    given = {k: int(v) if type(op.params.get(k)) is int and isinstance(v, float) and v.is_integer()
             else v for k, v in given.items()}
    params = {**op.params, **{k: v for k, v in given.items() if v is not None}}
    if "scale" in op.params:
        s = _scale(params)
        params = {k: v for k, v in params.items() if k not in ("scale", "temperature")}
        with np.errstate(over="ignore"):
            s32 = float(np.float32(s))  # kernels bake the scale as a float32
        if not (0.0 < s32 < math.inf):
            raise UsageError(f"scale {s!r} is not representable as a positive finite float32")
        params["scale"] = s32
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UsageError(f"parameter {k} must be a finite number, got {v!r}")
    return params


def build_program(name: str, **given) -> Program | MatrixProgram:
    """The op's IR program with its parameters baked in, validated."""
    op = get_op(name)
    params = resolve_params(op, given)
    if op.kind == "matrix":
        mp = MatrixProgram(name, params)
        op.build(mp, **params)
        return mp.validate()
    p = Program(name, params)
    out = op.build(p.input(), **params).id
    if p.kind(out) != "output":   # ops with an output of their own (output_selected) give it
        p.add("output", out)
    return p.validate()
