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

Normalizers: softmax (three-phase and, by ``passes.stream_attention``, streaming), stablemax and
topk_softmax (``top_k=``, ``renormalize=``; three-phase: the rows phase is the row op's selection,
radix select above the target's topk_network_max_k). The others of docs/ops.md §10 (softplus_l1, lssa, lssar, topk_softmax, sinkhorn, soft) are
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
from .base import F32_MAX, flag, register
from .soft import _head_dim_int
from .topk import _topk_k

NORMALIZERS = ("softmax", "stablemax", "softplus_l1", "lssa", "lssar", "topk_softmax", "sinkhorn", "soft")
SUPPORTED = ("softmax", "stablemax", "topk_softmax")
MASKS = ("none", "additive")
DIMS = ("lq", "lk", "d", "dv")


def default_scale(head_dim: int) -> float:
    """1/sqrt(d), rounded to float32 as the kernel bakes it."""
    return float(np.float32(1.0 / math.sqrt(head_dim)))


def check_normalizer(normalizer: str) -> None:
    if normalizer not in SUPPORTED:
        raise UsageError(f"attention with normalizer {normalizer!r} is not built yet: attention supports "
                         f"{', '.join(SUPPORTED)} today (softplus_l1, which streams without rescaling, "
                         f"comes next; then lssa, lssar, sinkhorn, soft)")


def _reference(q, k, v, *additive, head_dim=64, scale=None, causal=0, mask="none", normalizer="softmax",
               top_k=None, renormalize=None):
    """The float64 oracle with the kernel's parameters and inputs (``additive``: the mask input of
    a mask="additive" kernel)."""
    s = default_scale(head_dim) if scale is None else scale
    m = additive[0] if additive and additive[0] is not None else None
    sel = {"top_k": int(top_k), "renormalize": renormalize in (None, 1)} if normalizer == "topk_softmax" else {}
    return ref.attention(q, k, v, scale=s, causal=bool(causal), mask=m, normalizer=normalizer, **sel)


def _tolerance(inputs, ref_y, params, call):
    """|O - O64| <= (rtol + 2^-23 (d + 2) |s| max|q||k| terms) * sum_j p_ij |v_j| + tiny: the
    scores are d-term f32 dot products (their error |ds| <= (d + 2) 2^-24 s |q||k| enters
    P through e^s, relatively), the softmax is within 2e-6, the P V GEMM adds Lk 2^-24 |P||V|."""
    q, k, v = (np.asarray(a, np.float64) for a in inputs[:3])
    d, lk = q.shape[-1], k.shape[-2]
    s = params.get("scale") or default_scale(params["head_dim"])
    qn = np.sqrt((q * q).sum(-1))[..., :, None]
    kn = np.sqrt((k * k).sum(-1))[..., None, :]
    ds = (d + 2) * 2.0 ** -23 * s * (qn * kn).max(-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        pv = np.abs(v).max(-2, keepdims=True)
        return (2e-6 + 2 * ds + (lk + 2) * 2.0 ** -23) * pv + 2.0 ** -120


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
                  "top_k": None, "renormalize": None},
          choices={"mask": MASKS, "normalizer": NORMALIZERS},
          matrices={"dims": DIMS, "inputs": {"q": ("lq", "d"), "k": ("lk", "d"), "v": ("lk", "dv")},
                    "outputs": {"o": ("lq", "dv")}},
          custom_tolerance=_tolerance, samples=_samples)
def attention(mp: MatrixProgram, head_dim: int, scale: float | None, causal: int, mask: str,
              normalizer: str, top_k: int | None = None, renormalize: int | None = None) -> None:
    """O = normalize(s Q K^T + mask) V over the last two axes (docs/ops.md §10): q (..., Lq, d),
    k (..., Lk, d), v (..., Lk, dv) -> (..., Lq, dv); s = 1/sqrt(head_dim) unless scale is given;
    causal: key j kept iff j <= i + Lk - Lq (bottom-right); mask="additive": a float (..., Lq, Lk)
    input added to the scores. The three-phase form: S = s Q K^T, a rows phase (masks, softmax),
    O = P V. Fully masked rows give NaN. topk_softmax: top_k (required) and renormalize (default 1)
    as the row op's k and renormalize; masked keys are never selected."""
    check_normalizer(normalizer)
    if normalizer != "topk_softmax" and (top_k, renormalize) != (None, None):
        raise UsageError(f"attention: top_k and renormalize are topk_softmax's parameters, not {normalizer}'s")
    if causal not in (0, 1):
        raise UsageError(f"causal must be 0/1 (or a bool), got {causal!r}")
    s = default_scale(_head_dim_int(head_dim)) if scale is None else scale
    if mask == "additive":
        mp.inputs["mask"] = ("lq", "lk")
    mp.scratch("s", ("lq", "lk"))
    mp.matmul("s", "q", "k", layout="nt", alpha=s)
    x = mp.rows(over="s", into="s")
    p = x.p
    if mask == "additive":
        x = x + p.matrow("mask")
    off = _causal_offset(p) if causal else None
    if normalizer == "topk_softmax":
        if top_k is None:
            raise UsageError("attention with normalizer 'topk_softmax' needs top_k=K (k is the keys)")
        k, renorm = _topk_k(top_k), flag(1 if renormalize is None else renormalize, "renormalize")
        if causal or mask == "additive":   # the masked scores back to S: the selection's keys are its rows
            (off.where_lt(0.5, x, -F32_MAX) if causal else x).output()
            x = mp.rows(over="s", into="s")
            off = _causal_offset(x.p) if causal else None
        _topk_rows(x, off, mask == "additive", k, renorm)
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
    if normalizer != "topk_softmax":
        (e * e.sum().finite_or_nan().recip()).output()
    mp.matmul("o", "s", "v", layout="nn")


def _causal_offset(p):
    """j - i - (Lk - Lq): key j is kept iff it is < 0.5 (indices are exact float32 integers)."""
    return p.index() - p.row_index() - (p.size("cols") - p.size("rows"))


def _topk_rows(x, off, masked: bool, k: int, renormalize: bool) -> None:
    """The top-k rows phase (docs/ops.md §9, 10): the row op's selection over the masked scores x
    (the phase's input row: radix select reads its keys from memory), dense P. A causally dropped
    key is -FLT_MAX (IR constants are finite) and its weight a select of 0; a row with no key
    kept by the masks (counted) is NaN, as a fully masked softmax row."""
    p = x.p
    sel = x.topk(k)
    if renormalize:
        check = x.where_lt(-F32_MAX, 0.0, x * 2.0 ** -100).sum()   # as ops/topk.py: NaN / +inf rows
        inv = sel.item(3).finite_or_nan().recip().poison(check)
        w = (x - sel.item(2)).exp() * inv
    else:
        e = (x - x.max()).exp()
        inv = e.sum().finite_or_nan().recip()
        w = e * inv
    if off is not None or masked:   # kept keys: causal and above -inf; none: 1/0 poisons the row
        kept = x.where_lt(-F32_MAX, 0.0, 1.0)
        kept = off.where_lt(0.5, kept, 0.0) if off is not None else kept
        inv = inv.poison(kept.sum().recip())
    zero = x.const(0.0).poison(inv)
    if off is not None:
        w = off.where_lt(0.5, w, zero)
    x.where_ranked(p.index(), sel.item(0), sel.item(1), w, zero).output()
