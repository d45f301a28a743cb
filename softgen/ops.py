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
from .values import number, show


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
    log_probs: bool = False            # outputs are log-probabilities: never above 0
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
    # matrix ops: the program's declarations (MatrixProgram's dims, inputs, outputs), default
    # one input x and one output y of m x n
    matrices: dict = field(default_factory=dict)
    # string-valued parameters: name -> the values it may take
    choices: dict = field(default_factory=dict)
    # inputs for measurements (export's accuracy suite): (rng, params) -> list of input tuples
    samples: Callable | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the arrays the op takes, in call order."""
        return tuple(self.matrices.get("inputs", {"x": None}))

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


TINY_SCALE = 2.0 ** -64


def _shifted(x: Value, scale: float, wide: bool = False) -> Value:
    """z = s (x - max x): max and scale commute for s > 0 (spec 0). Below TINY_SCALE the row is
    scaled by 2^-64 first and s by 2^64: x - max x may overflow where s (x - max x) does not, and
    the two-pass kernels clamp x at -2^17 / s, which then leaves the float32 range (the row came
    out NaN). Powers of two are exact; results below 2^-126 lose bits z cannot see (< s 2^-86).

    ``wide``: z itself is an output (log-softmax), so a row spanning more than FLT_MAX must not
    turn x - max x into -inf when s < 1 brings the result back into range: halve the row first
    (one multiply per element, only for s < 1; exp(z) is 0 there either way, so softmax skips it)."""
    if scale < TINY_SCALE:
        x, scale = x * TINY_SCALE, scale / TINY_SCALE
    elif wide and scale < 1.0:
        x, scale = x * 0.5, scale * 2.0
    return (x - x.max()) * scale


@register("softmax", ref.softmax, params={"scale": 1.0, "temperature": None}, sums_to_one=True)
def softmax(x: Value, scale: float) -> Value:
    """y = exp(s x - max(s x)) / sum(...): max and scale commute for s > 0 (spec 0, 1)."""
    e = _shifted(x, scale).exp()
    return e * e.sum().finite_or_nan().recip()


@register("log_softmax", ref.log_softmax, params={"scale": 1.0, "temperature": None},
          rtol=0.0, atol=2e-6, atol_rel_to_y=True, log_probs=True)
def log_softmax(x: Value, scale: float) -> Value:
    """y = (s x - M) - log sum exp(s x - M) (spec 4)."""
    z = _shifted(x, scale, wide=True)
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
          log_probs=True, exp_conditioned=False, f32_overflow=_stablemax_overflow)
def log_stablemax(x: Value) -> Value:
    """log(s(x) / sum s(x)) (spec 8), with stablemax's s, as one log_ratio per element: s / S
    underflows for s far below the sum, and log s - log S would cancel two large logs."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s.log_ratio(s.sum().finite_or_nan())


def _softplus_overflow(x, scale=1.0, **_) -> np.ndarray:
    """Rows whose f32 sum overflows although float64's does not: NaN rows in the kernel."""
    sp = ref.softplus(scale * np.asarray(x, np.float64))
    with np.errstate(over="ignore"):
        return sp.sum(axis=-1) > np.finfo(np.float32).max


def _softplus(z: Value) -> Value:
    return z.maximum(0.0) + (-z.abs()).exp().log1p()


@register("softplus_l1", ref.softplus_l1, params={"scale": 1.0}, sums_to_one=True,
          f32_overflow=_softplus_overflow)
def softplus_l1(x: Value, scale: float) -> Value:
    """softplus(s x) / sum softplus(s x), softplus(z) = max(z, 0) + log1p(e^-|z|) (spec 5.1, row
    form); no max pass. A row whose every f32 softplus flushes to 0 (all s x below about -87)
    would be 0/0: a guard sends it to softmax(s x), which softplus / sum is for z << 0 up to a
    relative e^z (softplus(z) = e^z (1 - e^z / 2 + ...)). The kernel keeps v = softplus where it is
    > 0, else x, so where the fallback runs v is x: direct-reload stores v and an in-place
    fallback still finds its input."""
    sp = _softplus(x * scale)
    total = sp.sum()
    x.p.fallback = Program(x.p.name, x.p.params)
    x.p.fallback.add("output", softmax(x.p.fallback.input(), scale).id)
    zero_sum = Value(x.p, x.p.const(0.0)).where_lt(total, 0.0, total.where_lt(1.0, 1.0, 0.0))
    x.p.add("guard", zero_sum.id, limit=0.5)    # 1 iff total == 0: a NaN total stays here
    v = Value(x.p, x.p.const(0.0)).where_lt(sp, sp, x)
    return v.maximum(0.0) * total.finite_or_nan().recip()   # NaN v: total is NaN


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
    N > 0. A max R at or below ``reference.R_BOUND`` O, the f32 rounding bound of R (derived in
    ``reference.reweight_of``), is 0, so uniform rows give zeros (a scalar test per row). An
    all-zero R gives zeros; a non-finite ``check`` (a row sum) makes the row NaN, which ReLU and
    max() would otherwise drop. A max R below 2^-60 (offset-free rows of tiny weights) has no
    float32 reciprocal: N and O are scaled by 2^100 for the row, which leaves R / max R as it is
    and costs nothing per element."""
    zero = Value(a.p, a.p.const(0.0))
    o = a.p.row_param("offset")
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
    """Rows where lambda c overflows f32 upwards, the f32 sum overflows, or every softplus term
    flushes to 0 in f32 although float64's does not: NaN rows in the kernel. (lambda c below
    -FLT_MAX is -inf in f32, whose softplus is 0, as float64's e^(lambda c) is.)"""
    c = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lam = math.log(head_dim) * np.log(ref.attended_keys(c, n_attended))
        z = lam[..., None] * c
        sp = np.where(c == -np.inf, 0.0, ref.softplus(z))
        tot = np.where(sp >= 2.0 ** -126, sp, 0.0).sum(axis=-1)
        big = np.any((z > F32_MAX) & np.isfinite(c), axis=-1)
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
    """Log-domain Sinkhorn over the last two axes, rows first (spec 7): n_iter half-steps
    alternate row potentials u_i = -eps LSE_j (C_ij + v_j) / eps and column potentials v_j = -eps
    LSE_i (C_ij + u_i) / eps. The spec's marginal terms -eps log n_q, -eps log n_k only shift u
    against v, so they are left out: after a column step exp((C + u + v) / eps) already is the
    output (columns sum to 1), after a row step it is scaled by n_k' / n_q'. Padding: rows and
    columns of only -inf get potential 0 and drop out of every LSE and of the counts n_q', n_k'
    (per-matrix scalars), so they come out 0 and the rest equals the unpadded submatrix's
    result. Column LSEs are online reductions across the rows, vectorised over contiguous
    columns; the planner fuses each row step with the next column step's accumulation (one read
    of the matrix for both)."""
    n_iter, eps = _iterations(n_iter), _eps(eps)
    inv = 1.0 / eps
    for t in range(n_iter):
        x = mp.rows()
        p = x.p
        if t % 2 == 0:   # row step
            r = (x if t == 0 else x + p.colvec("v")).online(inv)
            raw = _neg_lse(r.item(0), r.item(1), eps)
            _potential(raw).emit("u")
            if t == 0 and n_iter % 2:
                _unpadded(raw).mreduce("sum", "nq")
            if n_iter == 1:   # no column step counts the padded columns: a column max of "not -inf"
                x.where_lt(-F32_MAX, 0.0, 1.0).colreduce("max", "live")
                q = mp.cols()
                q.colvec("live_m").sum().mreduce("sum", "nk")
        else:            # column step: accumulate across the rows, then finish per column
            (x + p.row_param("u")).colreduce("online", "lse", inv)
            q = mp.cols()
            raw = _neg_lse(q.colvec("lse_m"), q.colvec("lse_d"), eps)
            _potential(raw).colstore("v")
            if t == 1 and n_iter % 2:
                _unpadded(raw).sum().mreduce("sum", "nk")
    x = mp.rows()
    z = x + x.p.row_param("u")
    if n_iter > 1:
        z = z + x.p.colvec("v")
    y = (z * inv).exp()
    if n_iter % 2:   # rows sum to 1 after a row step; Sinkformers' scaling makes them n_k / n_q
        y = y * (x.p.mscalar("nk") / x.p.mscalar("nq").maximum(1.0))
    x.p.add("output", y.id)


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


# -- SOFT (spec 6): Gaussian kernel and Newton-Schulz pseudo-inverse, matrix programs with GEMMs ----

U32 = 2.0 ** -24   # unit roundoff of float32
EXP_REL = 2.5e-7   # the p5 exp's relative error (spec 11)


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


def _gaussian_samples(rng, params):
    return [(rng.uniform(lo, hi, (2, n, d)).astype(np.float32), rng.uniform(lo, hi, (2, m, d)).astype(np.float32))
            for n, m, d in ((1, 1, 1), (7, 9, 3), (64, 64, 64), (300, 17, 65)) for lo, hi in ((-1, 1), (-4, 4))]


@register("gaussian_kernel", ref.gaussian_kernel, params={"head_dim": 64}, kind="matrix",
          matrices={"dims": ("n", "m", "d"), "inputs": {"a": ("n", "d"), "b": ("m", "d")},
                    "outputs": {"s": ("n", "m")}},
          custom_tolerance=_gaussian_tolerance, samples=_gaussian_samples)
def gaussian_kernel(mp: MatrixProgram, head_dim: float) -> None:
    """SOFT's kernel S_ij = exp(-max(|a_i|^2 + |b_j|^2 - 2 a_i.b_j, 0) / (2 sqrt(head_dim))) of
    a (..., n, d) and b (..., m, d) -> (..., n, m) (spec 6): the squared norms are row sums, the
    Gram product an NT GEMM, the rest an element-wise phase (fused into the GEMM's store by the C
    backend). Entries in (0, 1]; exactly the clamp makes identical points give 1. A point with a
    non-finite coordinate gives NaN against every point; finite points with |a_i|^2 + |b_j|^2 >=
    FLT_MAX give 0 (their distance is beyond float32: far apart, or identical huge points)."""
    s = 1.0 / (2.0 * math.sqrt(_head_dim_int(head_dim)))
    for over in ("b", "a"):
        x = mp.rows(over=over)
        # x - x is NaN exactly for NaN and +-inf: the norm is NaN for a non-finite point and
        # +inf only by overflow (one op; a finite-or-NaN select took three)
        x.fma(x, x - x).sum().emit(over * 2)
    mp.matmul("s", "a", "b", layout="nt")
    g = mp.rows(over="s", into="s")
    p = g.p
    q = p.row_param("aa") + p.colvec("bb")
    d2 = g.fma(-2.0, q).maximum(0.0)                            # aa + bb - 2 G, one rounding
    # max drops NaN, and G may be inf - inf once the norms overflow: q alone decides those pairs
    # (NaN: a non-finite point; >= FLT_MAX: float32 cannot form the distance, counted as far)
    d2 = q.where_lt(F32_MAX, d2, q)
    p.add("output", (d2 * -s).exp().id)


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
    """Newton-Schulz pseudo-inverse of square matrices (..., m, m) (spec 6): V <- 2V - V (P V),
    SOFT's own order, n_iter times (two GEMMs per iteration; 2V - W is an element-wise phase
    reading V, fused into the second GEMM's store in C: rounding 2I - PV first, as V (2I - PV)
    does, costs ~4x the accuracy in float32). variant "soft": P = A + 0.01 I, V0 = alpha P, alpha = alpha_factor
    2 / (max row sum |A|)^2 -> (A + 0.01 I)^-1. variant "norm": P = A, V0 = alpha A, alpha =
    2 / (max row sum)^2 halved while |I - A (alpha A)|_1 > 1.01 (at most 10 times; all candidates
    tested at once from G = A A, the first that passes taken) -> A^+. alpha is per matrix (the
    reference's "tensor" scope couples the matrices of a batch; the limit is the same)."""
    n_iter, factor = _newton_iter(n_iter), _alpha_factor(alpha_factor)
    for name in ("t", "v", "w"):
        mp.scratch(name, ("m", "m"))
    x = mp.rows(over="x")
    rowsum = x.abs().sum()
    rowsum.mreduce("max", "rmax")                                               # max row sum |A|
    rowsum.mreduce("sum", "finite")   # NaN/inf anywhere: a NaN matrix, also at n_iter = 0
    if variant == "soft":
        mp.scratch("p", ("m", "m"))
        x = mp.rows(over="x", into="p")
        x.p.add("output", (x + _diagonal(x.p, REGULARISER, 0.0)).id)           # P = A + 0.01 I
        v = mp.rows(over="p", into="v")
        r = v.p.mscalar("rmax")
        alpha = (factor * 2.0 / (r * r)).poison(v.p.mscalar("finite"))
        v.p.add("output", (v * alpha).id)                                       # V0 = alpha P
        P = "p"
    elif variant == "norm":
        mp.matmul("t", "x", "x")                                                # G = A A
        g = mp.rows(over="t")
        r = g.p.mscalar("rmax")
        alpha0, eye = 2.0 / (r * r), _diagonal(g.p, 1.0, 0.0)
        for k in range(NORM_HALVINGS):   # column abs-sums of I - alpha_k G, every candidate at once
            (eye - g * (alpha0 * 2.0 ** -k)).abs().colreduce("sum", f"norm{k}")
        q = mp.cols(over="t")
        for k in range(NORM_HALVINGS):
            q.colvec(f"norm{k}_s").max().mreduce("max", f"norm{k}")
        v = mp.rows(over="x", into="v")
        r = v.p.mscalar("rmax")
        alpha0 = 2.0 / (r * r)
        alpha = alpha0 * 2.0 ** -NORM_HALVINGS
        limit = float(np.nextafter(np.float32(NORM_TEST), np.float32(np.inf)))   # norm <= 1.01 in f32
        for k in reversed(range(NORM_HALVINGS)):   # the first candidate that passes
            alpha = v.p.mscalar(f"norm{k}").where_lt(limit, alpha0 * 2.0 ** -k, alpha)
        v.p.add("output", (v * alpha.poison(v.p.mscalar("finite"))).id)          # V0 = alpha A
        P = "x"
    else:
        raise UsageError(f"variant must be 'soft' or 'norm', got {variant!r}")
    with mp.loop(n_iter, swap=[("v", "w")]):
        mp.matmul("t", P, "v")                                                  # T = P V
        mp.matmul("w", "v", "t")                                                # W = V T
        w = mp.rows(over="w", into="w")
        w.p.add("output", (w.p.matrow("v") * 2.0 - w).id)                      # W = 2V - W
    y = mp.rows(over="v", into="y")
    y.p.add("output", y.id)


def get_op(name: str) -> OpDef:
    if not isinstance(name, str) or name not in OPS:
        raise UsageError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    return OPS[name]


def _normalise(op: OpDef, key: str, value):
    """One parameter as the kernel bakes it: a str for choice parameters, else a finite number
    (``values.number``); 0/1 flags also take bools; integer parameters given as integral floats
    (the CLI's --param k=2) stay integers."""
    if value is None:
        return None
    if key in op.choices:
        v = value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value
        if not isinstance(v, str) or v not in op.choices[key]:
            raise UsageError(f"parameter {key} must be one of {', '.join(map(repr, op.choices[key]))}, "
                             f"got {show(value)}")
        return str(v)
    default = op.params.get(key)
    if type(default) is int and default in (0, 1) and isinstance(value, (bool, np.bool_)):
        return int(value)
    v = number(f"parameter {key}", value)
    return int(v) if type(default) is int and isinstance(v, float) and v.is_integer() else v


def resolve_params(op: OpDef, given: dict) -> dict:
    """Validated build-time parameters (baked into the kernel). Unknown names are errors."""
    unknown = sorted(set(given) - set(op.params))
    if unknown:
        raise UsageError(f"op {op.name!r} has no parameter(s) {unknown}; it takes {sorted(op.params)}")
    given = {k: _normalise(op, k, v) for k, v in given.items()}
    params = {**op.params, **{k: v for k, v in given.items() if v is not None}}
    if "scale" in op.params:
        s = _scale(params)
        params = {k: v for k, v in params.items() if k not in ("scale", "temperature")}
        with np.errstate(over="ignore"):
            s32 = float(np.float32(s))  # kernels bake the scale as a float32
        if not (0.0 < s32 < math.inf):
            raise UsageError(f"scale {s!r} is not representable as a positive finite float32")
        params["scale"] = s32
    return params


def build_program(name: str, **given) -> Program | MatrixProgram:
    """The op's IR program with its parameters baked in, validated."""
    op = get_op(name)
    params = resolve_params(op, given)
    if op.kind == "matrix":
        mp = MatrixProgram(name, params, **op.matrices)
        op.build(mp, **params)
        return mp.validate()
    p = Program(name, params)
    out = op.build(p.input(), **params).id
    if p.kind(out) != "output":   # ops with an output of their own (output_selected) give it
        p.add("output", out)
    return p.validate()
