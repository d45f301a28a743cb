"""The softmax family (docs/ops.md §0-5, 8): softmax, log_softmax, stablemax, log_stablemax, softplus_l1:
one normalisation of the last axis each, the shape every algorithm rewrite applies to."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import reference as ref
from ..ir import Program, Value
from .base import register

TINY_SCALE = 2.0 ** -64


def _shifted(x: Value, scale: float, wide: bool = False) -> Value:
    """z = s (x - max x): max and scale commute for s > 0 (docs/ops.md §0). Below TINY_SCALE the row is
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
    """y = exp(s x - max(s x)) / sum(...): max and scale commute for s > 0 (docs/ops.md §0, 1)."""
    e = _shifted(x, scale).exp()
    return e * e.sum().finite_or_nan().recip()


@register("log_softmax", ref.log_softmax, params={"scale": 1.0, "temperature": None},
          rtol=0.0, atol=2e-6, atol_rel_to_y=True, log_probs=True)
def log_softmax(x: Value, scale: float) -> Value:
    """y = (s x - M) - log sum exp(s x - M) (docs/ops.md §4)."""
    z = _shifted(x, scale, wide=True)
    return z - z.exp().sum().log()


def _stablemax_overflow(x, **_) -> np.ndarray:
    with np.errstate(over="ignore"):
        return ref.stablemax_s(x).sum(axis=-1) > np.finfo(np.float32).max


@register("stablemax", ref.stablemax, sums_to_one=True, exp_conditioned=False,
          f32_overflow=_stablemax_overflow)
def stablemax(x: Value) -> Value:
    """s(x) / sum s(x), s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); no max shift (docs/ops.md §8). The
    authors' + 1e-30 is dropped: for x < 0, 1 - x >= 1 and adding 1e-30 rounds away in f32/f64."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s * s.sum().finite_or_nan().recip()


@register("log_stablemax", ref.log_stablemax, rtol=0.0, atol=2e-6, atol_rel_to_y=True,
          log_probs=True, exp_conditioned=False, f32_overflow=_stablemax_overflow)
def log_stablemax(x: Value) -> Value:
    """log(s(x) / sum s(x)) (docs/ops.md §8), with stablemax's s, as one log_ratio per element: s / S
    underflows for s far below the sum, and log s - log S would cancel two large logs."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s.log_ratio(s.sum().finite_or_nan())


def _softplus_overflow(x, scale=1.0, **_) -> np.ndarray:
    """Rows whose f32 sum overflows although float64's does not: NaN rows in the kernel."""
    sp = ref.softplus(scale * np.asarray(x, np.float64))
    with np.errstate(over="ignore"):
        return sp.sum(axis=-1) > np.finfo(np.float32).max


def softplus(z: Value) -> Value:
    """max(z, 0) + log1p(e^-|z|): softplus without overflow (also lssa's weights)."""
    return z.maximum(0.0) + (-z.abs()).exp().log1p()


FLT_MIN = 2.0 ** -126
# A row whose float32 softplus sum S is below e^-16 restarts in softmax(z): every softplus(z_j) <= S
# puts z_j below -16, where softplus(z) = e^z (1 - e^z / 2 + ...) is e^z to 2^-24, so softmax(z) is
# softplus / sum to 2^-23 (docs/accuracy.md). Rows above it keep softplus / S: the terms that
# flush (below FLT_MIN) are then below FLT_MIN e^16 < SOFTPLUS_FLOOR in y, the ops' absolute floor.
SOFTPLUS_SMALL_SUM = math.exp(-16.0)
SOFTPLUS_FLOOR = 2.0 ** -102


def softplus_normalized(x: Value, a: Value, terms: Callable[[Value, Value], tuple[Value, Value, Value]]) -> Value:
    """a / sum a for softplus weights a = softplus(z) of row x (softplus_l1: z = s x; lssa: z =
    lambda c, masked entries a = 0), rows whose sum is below SOFTPLUS_SMALL_SUM restarted in
    softmax(z) (a guard; a NaN sum stays here). The kernel keeps v = a where a >= FLT_MIN, else x
    (which max(v, 0) makes 0), and direct-reload stores v, so the fallback's input w is x (out of
    place) or v (in place): ``terms(w, max w)`` gives (the weights a of w, z of w, e^(z - max z)).
    In a row that falls back every z < -16, so every x < 0: w >= FLT_MIN is a stored weight, else
    w is x and a of w recomputes its weight (the same bits), so a' = the stored weight or a of w is
    the same in place and out of place, and so is the result. Without a weight a' >= FLT_MIN the
    row is softmax(z); with some, its terms are a' e^-M (those, as they are) and e^(z - M) (the
    others, whose w is x), M = log max a': one M for both, so its rounding cancels (a log of each
    a' would cost |z| 2^-24 relative each)."""
    total = a.sum()
    x.p.fallback = Program(x.p.name, x.p.params)
    w = x.p.fallback.input()
    a_of_w, z, shifted = terms(w, w.max())
    a2 = w.where_lt(FLT_MIN, a_of_w, w)
    amax = a2.max()
    m = amax.maximum(FLT_MIN).log()
    t = amax.where_lt(FLT_MIN, shifted, a2.where_lt(FLT_MIN, (z - m).exp(), a2 * (-m).exp()))
    (t * t.sum().finite_or_nan().recip()).output()
    x.p.add("guard", total.where_lt(SOFTPLUS_SMALL_SUM, 1.0, 0.0).id, limit=0.5)
    v = a.where_lt(FLT_MIN, x, a)
    return v.maximum(0.0) * total.finite_or_nan().recip()   # NaN v: total is NaN


@register("softplus_l1", ref.softplus_l1, params={"scale": 1.0}, sums_to_one=True,
          f32_overflow=_softplus_overflow, atol=SOFTPLUS_FLOOR)
def softplus_l1(x: Value, scale: float) -> Value:
    """softplus(s x) / sum softplus(s x), softplus(z) = max(z, 0) + log1p(e^-|z|) (docs/ops.md §5.1, row
    form); no max pass. Rows whose f32 sum is below e^-16 (every s x below about -16, including
    those whose every softplus flushes to 0, which would be 0/0) restart in softmax(s x)
    (``softplus_normalized``); terms below FLT_MIN e^16 of the sum may flush (SOFTPLUS_FLOOR)."""
    return softplus_normalized(x, softplus(x * scale),
                               lambda w, wmax: (softplus(w * scale), w * scale, _shifted(w, scale).exp()))
