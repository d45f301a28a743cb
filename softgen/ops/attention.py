"""Attention (docs/ops.md §10): ``O = normalize(s Q K^T + mask) V`` as a matrix program.

The op's IR is the **three-phase** form every normalizer has: an NT GEMM ``S = s Q K^T`` into a
scratch Lq x Lk matrix, a rows phase over S (the masks, then the normalizer: the same IR as the
row op ``softmax``), and an NN GEMM ``O = P V``. It is an ordinary ``MatrixProgram``, so the C
backend lowers it with its register-blocked GEMMs (``backends/gemm.py``) and its row functions,
and export, the header and the manifest follow from its general ABI
``(q, k, v[, mask], o, batch, lq, lk, d, dv, ldq, ldk, ldv[, ldmask], ldo)``.

Masks in the IR: ``causal`` (bottom-right aligned, key j kept iff j <= i + Lk - Lq, from the
element and row indices of the rows phase) and ``mask="additive"`` (a float Lq x Lk input added
to the scores; a boolean keep-mask and key-padding lengths become one in ``softgen.attention``).
Fully masked rows give NaN (docs/ops.md §0); ``softgen.attention(masked_rows="zero")`` zeroes them.

Normalizers: softmax (three-phase and, by ``passes.stream_attention``, streaming), stablemax,
softplus_l1, lssa and lssar (three-phase). lssa and lssar (docs/ops.md §5) score with cosines:
rows phases normalise q and k into scratch matrices before S = Q^ K^T, and the rows phase over S
scales by log(d) log(N_i), N_i counted from the masks; lssar's O_i comes from the query's
bottom-right aligned position. The others of docs/ops.md §10 (topk_softmax, sinkhorn, soft) are
accepted names that raise a UsageError until they are built.
The op has its own kind, ``"attention"``: it takes three arrays (q, k, v) and its own front door
(``functional.attention``), so the generic sweeps over row and matrix ops leave it out.
"""
from __future__ import annotations

import math

import numpy as np

from .. import reference as ref
from ..errors import UsageError
from ..matrix import MatrixProgram

# the normalizer families register first: attention, which builds on them, comes last in OPS
from . import lssa, sinkhorn, soft, softmax, topk  # noqa: F401
from .base import F32_MAX, register
from .soft import _head_dim_int
from .softmax import softplus

NORMALIZERS = ("softmax", "stablemax", "softplus_l1", "lssa", "lssar", "topk_softmax", "sinkhorn", "soft")
SUPPORTED = ("softmax", "stablemax", "softplus_l1", "lssa", "lssar")
COSINE = ("lssa", "lssar")          # scores are cosines times log(d) log(N_i): no scale
LSSAR_DEFAULTS = {"p": 15, "offset_free_rows": 3}
# softplus_l1 rows whose largest kept score is below this are weighted e^(x - max x): softplus(x)
# = e^x (1 - e^x / 2 + ...) is e^x to 2^-29 there, and float32's softplus flushes to 0 below -87
SOFTPLUS_TINY = -20.0
MASKS = ("none", "additive")
DIMS = ("lq", "lk", "d", "dv")


def default_scale(head_dim: int) -> float:
    """1/sqrt(d), rounded to float32 as the kernel bakes it."""
    return float(np.float32(1.0 / math.sqrt(head_dim)))


def check_normalizer(normalizer: str) -> None:
    if normalizer not in SUPPORTED:
        raise UsageError(f"attention with normalizer {normalizer!r} is not built yet: attention supports "
                         f"{', '.join(SUPPORTED)} today (topk_softmax, sinkhorn, soft come next)")


def _reference(q, k, v, *additive, head_dim=64, scale=None, causal=0, mask="none", normalizer="softmax",
               p=None, offset_free_rows=None):
    """The float64 oracle with the kernel's parameters and inputs (``additive``: the mask input of
    a mask="additive" kernel)."""
    m = additive[0] if additive and additive[0] is not None else None
    if normalizer in COSINE:
        extra = {} if normalizer == "lssa" else _lssar_params(p, offset_free_rows)
        return ref.attention(q, k, v, causal=bool(causal), mask=m, normalizer=normalizer, head_dim=head_dim,
                             **extra)
    s = default_scale(head_dim) if scale is None else scale
    return ref.attention(q, k, v, scale=s, causal=bool(causal), mask=m, normalizer=normalizer)


def _lssar_params(p, offset_free_rows) -> dict:
    """lssar's p and offset_free_rows, their defaults filled in, validated."""
    p = LSSAR_DEFAULTS["p"] if p is None else p
    ofr = LSSAR_DEFAULTS["offset_free_rows"] if offset_free_rows is None else offset_free_rows
    if not (ofr >= 0 and float(ofr).is_integer()):
        raise UsageError(f"offset_free_rows must be a non-negative integer, got {offset_free_rows!r}")
    return {"p": lssa._power(p), "offset_free_rows": int(ofr)}


def _tolerance(inputs, ref_y, params, call):
    """|O - O64| <= (rtol + 2^-23 (d + 2) |s| max|q||k| terms) * sum_j p_ij |v_j| + tiny: the
    scores are d-term f32 dot products (their error |ds| <= (d + 2) 2^-24 s |q||k| enters
    P through e^s, relatively), the softmax is within 2e-6, the P V GEMM adds Lk 2^-24 |P||V|.
    softplus_l1: softplus's log-derivative sigmoid(z) / softplus(z) is below 1 / log 2, so the
    score term counts 1.5 times; lssa, lssar: ``_cosine_tolerance``."""
    if params.get("normalizer") in COSINE:
        return _cosine_tolerance(inputs, ref_y, params)
    q, k, v = (np.asarray(a, np.float64) for a in inputs[:3])
    d, lk = q.shape[-1], k.shape[-2]
    s = params.get("scale") or default_scale(params["head_dim"])
    qn = np.sqrt((q * q).sum(-1))[..., :, None]
    kn = np.sqrt((k * k).sum(-1))[..., None, :]
    if params.get("normalizer") == "softplus_l1":
        # an infinite score's weight is 0 (-inf) or its row NaN (+inf): only finite ones count
        qk = qn * kn
        ds = 1.5 * (d + 2) * 2.0 ** -23 * s * np.where(np.isfinite(qk), qk, 0.0).max(-1, keepdims=True, initial=0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            tol = (2e-6 + 2 * ds + (lk + 2) * 2.0 ** -23) * np.abs(v).max(-2, keepdims=True, initial=0.0)
        return np.nan_to_num(tol, nan=np.inf) + 2.0 ** -120
    ds = (d + 2) * 2.0 ** -23 * s * (qn * kn).max(-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        pv = np.abs(v).max(-2, keepdims=True)
        return (2e-6 + 2 * ds + (lk + 2) * 2.0 ** -23) * pv + 2.0 ** -120


def _cosine_tolerance(inputs, ref_y, params):
    """lssa, lssar: a cosine c is within (d + 8) 2^-23 (q and k normalised in a few roundings, a
    d-term dot product of unit vectors), so z = lambda c + m within lambda (d + 8) 2^-23 + 2^-22
    |z|; softplus's log-derivative is below 1 / log 2, so A_ij is within 1.5 (dz_ij + max_j dz)
    relatively (the sum). lssar: ``lssa._reweight_tolerance`` carries that through (R / max R)^p
    to W. O = W V adds the GEMM's (Lk + 2) 2^-23 sum_j W_ij |v_j|."""
    q, k, v = (np.asarray(a, np.float64) for a in inputs[:3])
    mask = inputs[3] if len(inputs) > 3 else None
    d, lq, lk = q.shape[-1], q.shape[-2], k.shape[-2]
    causal = bool(params.get("causal"))
    a, n, c = ref.lssa_attention_weights(q, k, causal, mask, head_dim=params["head_dim"])
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lam = math.log(params["head_dim"]) * np.log(n)[..., None]
        z = np.abs(lam * c) + (0.0 if mask is None else np.abs(np.where(np.isfinite(mask), mask, 0.0)))
        dz = np.nan_to_num(lam * (d + 8) * 2.0 ** -23 + 2.0 ** -22 * z, nan=0.0, posinf=0.0)
        rel = 2e-6 + 1.5 * (dz + dz.max(-1, keepdims=True, initial=0.0))
        av = np.abs(v)
        if params["normalizer"] == "lssa":
            w, tw = a, rel * np.nan_to_num(a)
        else:
            extra = _lssar_params(params.get("p"), params.get("offset_free_rows"))
            w, _ = ref.lssar_attention_weights(q, k, causal, mask, head_dim=params["head_dim"], **extra)
            # O_i of query rows at positions i + Lk - Lq: offset_free_rows shifted by Lk - Lq
            rw = {"p": extra["p"], "offset_free_rows": extra["offset_free_rows"] - (lk - lq)}
            tw = lssa._reweight_tolerance(a, w, rw, {}, a=np.nan_to_num(a), a_rel=rel, n=n)
        tol = tw @ av + (lk + 2) * 2.0 ** -23 * (np.nan_to_num(w) @ av) + 2.0 ** -120
    return np.nan_to_num(tol, nan=np.inf)


def _samples(rng, params):
    """export's accuracy suite: (q, k, v[, mask]) with Lq != Lk, d = head_dim, one decoding shape."""
    d = params["head_dim"]
    out = []
    for lq, lk, dv in ((1, 1, 1), (7, 9, 3), (64, 64, 64), (4, 300, d), (1, 1000, 16)):
        for sd in (1.0, 4.0):
            xs = [rng.normal(0, sd, (2, lq, d)), rng.normal(0, sd, (2, lk, d)), rng.normal(0, 1, (2, lk, dv))]
            if params.get("mask") == "additive":
                xs.append(np.where(rng.random((2, lq, lk)) < 0.9, 0.0, -np.inf))
            out.append(tuple(x.astype(np.float32) for x in xs))
    return out


@register("attention", _reference, kind="attention",
          params={"head_dim": 64, "scale": None, "causal": 0, "mask": "none", "normalizer": "softmax",
                  "p": None, "offset_free_rows": None},
          omit_none=("p", "offset_free_rows"),
          choices={"mask": MASKS, "normalizer": NORMALIZERS},
          matrices={"dims": DIMS, "inputs": {"q": ("lq", "d"), "k": ("lk", "d"), "v": ("lk", "dv")},
                    "outputs": {"o": ("lq", "dv")}},
          custom_tolerance=_tolerance, samples=_samples)
def attention(mp: MatrixProgram, head_dim: int, scale: float | None, causal: int, mask: str,
              normalizer: str, p: float | None = None, offset_free_rows: int | None = None) -> None:
    """O = normalize(s Q K^T + mask) V over the last two axes (docs/ops.md §10): q (..., Lq, d),
    k (..., Lk, d), v (..., Lk, dv) -> (..., Lq, dv); s = 1/sqrt(head_dim) unless scale is given;
    causal: key j kept iff j <= i + Lk - Lq (bottom-right); mask="additive": a float (..., Lq, Lk)
    input added to the scores. The three-phase form: S = s Q K^T, a rows phase (masks, softmax),
    O = P V. Fully masked rows give NaN. lssa, lssar: cosine scores (no scale), see
    ``_cosine_phases``; p, offset_free_rows: lssar's (docs/ops.md §5.2)."""
    check_normalizer(normalizer)
    if causal not in (0, 1):
        raise UsageError(f"causal must be 0/1 (or a bool), got {causal!r}")
    if normalizer != "lssar" and (p is not None or offset_free_rows is not None):
        raise UsageError(f"p and offset_free_rows are lssar attention's parameters, not {normalizer}'s")
    if normalizer in COSINE:
        if scale is not None:
            raise UsageError(f"{normalizer} attention takes no scale: its scores are cosines times "
                             f"log(head_dim) log(N_i) (docs/ops.md §5.1)")
        _cosine_phases(mp, _head_dim_int(head_dim), bool(causal), mask, normalizer,
                       _lssar_params(p, offset_free_rows) if normalizer == "lssar" else {})
        return
    s = default_scale(_head_dim_int(head_dim)) if scale is None else scale
    if mask == "additive":
        mp.inputs["mask"] = ("lq", "lk")
    mp.scratch("s", ("lq", "lk"))
    mp.matmul("s", "q", "k", layout="nt", alpha=s)
    x = mp.rows(over="s", into="s")
    p = x.p
    if mask == "additive":
        x = x + p.matrow("mask")
    off = p.index() - p.row_index() - (p.size("cols") - p.size("rows")) if causal else None
    if normalizer == "softplus_l1":
        # softplus(x) / sum without a max, except for rows whose largest kept score is below
        # SOFTPLUS_TINY: e^(x - max x) there (one exp either way: e^-|x - c|, c = 0 or max x)
        if causal:
            x = off.where_lt(0.5, x, -F32_MAX)
        mx = x.max()
        t = (-(x - mx.where_lt(SOFTPLUS_TINY, mx, 0.0)).abs()).exp()
        e = mx.where_lt(SOFTPLUS_TINY, t, x.maximum(0.0) + t.log1p())
        if causal:
            e = off.where_lt(0.5, e, 0.0)
    elif normalizer == "stablemax":
        # s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), no max shift (docs/ops.md §8); s(-inf) = 0
        e = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
        if causal:
            e = off.where_lt(0.5, e, 0.0)
    elif causal:
        # keep j <= i + (Lk - Lq): j - i - (Lk - Lq) < 0.5 (indices are exact float32 integers).
        # IR constants are finite: a dropped score is -FLT_MAX for the max and its weight a
        # select of 0, so a row with no kept key sums to 0 and 0 * (1/0) makes it NaN (docs/ops.md §0)
        x = off.where_lt(0.5, x, -F32_MAX)
        e = off.where_lt(0.5, (x - x.max()).exp(), 0.0)
    else:
        e = (x - x.max()).exp()
    (e * e.sum().finite_or_nan().recip()).output()
    mp.matmul("o", "s", "v", layout="nn")


def _unit_rows(mp: MatrixProgram, over: str, into: str) -> None:
    """A rows phase: x / |x|, as y e^(-log(sum y^2) / 2) with y = x / max|x| (sum y^2 in [1, d]:
    no overflow or underflow for any finite x; no square root in the IR). A zero row is 0/0 = NaN,
    a non-finite one NaN, as the oracle's q / |q|."""
    mp.scratch(into, mp.inputs[over])
    x = mp.rows(over=over, into=into)
    y = x / x.abs().max()
    (y * ((y * y).sum().log() * -0.5).exp()).output()


def _cosine_phases(mp: MatrixProgram, head_dim: int, causal: bool, mask: str, normalizer: str,
                   lssar: dict) -> None:
    """lssa / lssar attention (docs/ops.md §5, §10): q and k normalised per row, S = Q^ K^T (cosines),
    then per row z = log(d) log(N_i) c + m over the kept keys (N_i: their count, from the mask
    and the causal diagonal), a = softplus(z) (0 at dropped keys whatever z is), A = a / sum a;
    lssar: ``lssa._reweight`` with O_i = 0 while the query's position i + Lk - Lq is below
    offset_free_rows."""
    if mask == "additive":
        mp.inputs["mask"] = ("lq", "lk")
    _unit_rows(mp, "q", "qn")
    _unit_rows(mp, "k", "kn")
    mp.scratch("s", ("lq", "lk"))
    mp.matmul("s", "qn", "kn", layout="nt")
    x = mp.rows(over="s", into="s")
    pr = x.p
    keep = m = None
    if mask == "additive":
        m = pr.matrow("mask")
        keep = m.where_lt(-F32_MAX, 0.0, 1.0)          # -inf: dropped
    if causal:
        off = pr.index() - pr.row_index() - (pr.size("cols") - pr.size("rows"))
        keep = off.where_lt(0.5, 1.0 if keep is None else keep, 0.0)
    n = pr.size("cols") if keep is None else keep.sum()
    z = x * (n.log() * math.log(head_dim))
    a = softplus(z if m is None else z + m)
    if keep is not None:
        a = keep.where_lt(0.5, 0.0, a)
    inv = a.sum().finite_or_nan().recip()
    if normalizer == "lssa":
        (a * inv).output()
    else:
        pos = pr.row_index() + (pr.size("cols") - pr.size("rows"))
        o = pos.where_lt(lssar["offset_free_rows"] - 0.5, 0.0, 1.0)
        lssa._reweight(a * inv, a.max() * inv, n, lssar["p"], inv, o).output()
    mp.matmul("o", "s", "v", layout="nn")
