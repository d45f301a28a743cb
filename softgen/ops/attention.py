"""Attention (docs/ops.md §10): ``O = normalize(s Q K^T + mask) V`` as a matrix program.

The op's IR is the **three-phase** form every normalizer has: an NT GEMM ``S = s Q K^T`` into a
scratch Lq x Lk matrix, a rows phase over S (the masks, then the normalizer: the same IR as the
row op ``softmax``), and an NN GEMM ``O = P V``. It is an ordinary ``MatrixProgram``, so the C
backend lowers it with its register-blocked GEMMs (``backends/gemm.py``) and its row functions;
it is ``strided`` (``MatrixProgram.strided``): the streaming form's ABI (``abi.ATTENTION``: per-head
strides, GQA, strided masks), so export, the header and the manifest match the streaming kernel's.

Masks in the IR: ``causal`` (bottom-right aligned, key j kept iff j <= i + Lk - Lq, from the
element and row indices of the rows phase), ``mask="additive"`` (a float Lq x Lk input added
to the scores: +inf + -inf is NaN, as torch) and ``mask="bool"`` (a uint8 keep-mask, the same C
argument in every form: the streaming kernel reads the bytes; the other forms' entry writes them
as 0 / -inf floats into a scratch, ``backends.entry``, and the rows phase drops a -inf key whatever
its score, ``_masked``). The streaming form's ABI
(``abi.ATTENTION``) also takes key-padding lengths and lse, and so does the three-phase form
(``MatrixProgram.key_padding``: the padded keys' scores -inf after S = s Q K^T; ``MatrixProgram.lse``:
the rows phase emits the streaming form's per-row lse, ``_emit_lse``).
Fully masked rows give NaN (docs/ops.md §0); ``softgen.attention(masked_rows="zero")`` zeroes them.

Normalizers: softmax, stablemax, softplus_l1, lssa and lssar (three-phase and, by ``passes.stream_attention``,
streaming),
topk_softmax (``top_k=``, ``renormalize=``; three-phase: the rows phase is the row op's selection,
radix select above the target's topk_network_max_k; with masks a rows phase writes the masked
scores to S first; streaming on C: a running selection over key blocks, then k gathers of V),
sinkhorn (blocked) and soft (its linear global
form). lssa and lssar (docs/ops.md §5) score with
cosines: rows phases normalise q and k into scratch matrices before S = Q^ K^T, and the rows phase
over S scales by log(d) log(N_i), N_i counted from the masks; lssar's O_i comes from the query's
bottom-right aligned position.
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
from .soft import _head_dim_int, _signs
from .softmax import softplus
from .topk import _topk_k

NORMALIZERS = ("softmax", "stablemax", "softplus_l1", "lssa", "lssar", "topk_softmax", "sinkhorn", "soft")
SUPPORTED = ("softmax", "stablemax", "sinkhorn", "soft", "topk_softmax", "softplus_l1", "lssa", "lssar")
ITERATIVE = {"sinkhorn": 3, "soft": 20}   # n_iter's default per normalizer (None: this one)
COSINE = ("lssa", "lssar")          # scores are cosines times log(d) log(N_i): no scale
LSSAR_DEFAULTS = {"p": 15, "offset_free_rows": 3}
# softplus_l1 rows whose largest kept score is below this are weighted e^(x - max x): softplus(x)
# = e^x (1 - e^x / 2 + ...) is e^x to 2^-29 there, and float32's softplus flushes to 0 below -87
SOFTPLUS_TINY = -20.0
MASKS = ("none", "additive", "bool")
DIMS = ("lq", "lk", "d", "dv")


def default_scale(head_dim: int) -> float:
    """1/sqrt(d), rounded to float32 as the kernel bakes it."""
    return float(np.float32(1.0 / math.sqrt(head_dim)))


def check_normalizer(normalizer: str) -> None:
    if normalizer not in SUPPORTED:
        later = ", ".join(n for n in NORMALIZERS if n not in SUPPORTED)
        what = "is not built yet" if normalizer in NORMALIZERS else "is unknown"
        raise UsageError(f"attention with normalizer {normalizer!r} {what}: attention supports "
                         f"{', '.join(SUPPORTED)}" + (f" today (not yet: {later})" if later else ""))


def _reference(q, k, v, *additive, head_dim=64, scale=None, causal=0, mask="none", normalizer="softmax",
               n_iter=None, eps=1.0, top_k=None, renormalize=None, p=None, offset_free_rows=None, tied=None,
               landmarks=None):
    """The float64 oracle with the kernel's parameters and inputs (``additive``: the mask input of
    a mask="additive" kernel; SOFT's landmarks input, or with ``landmarks`` = m none: the oracle
    pools m from the keys; tied SOFT reads q as the keys, not k)."""
    s = default_scale(head_dim) if scale is None else scale
    m = additive[0] if additive and additive[0] is not None else None
    if mask == "bool" and m is not None:   # a uint8 / bool keep-mask: nonzero keeps (its 0 / -inf floats: not -inf)
        m = np.asarray(m)
        m = m != -np.inf if m.dtype.kind == "f" else m != 0
    if normalizer in COSINE:
        extra = {} if normalizer == "lssa" else _lssar_params(p, offset_free_rows)
        return ref.attention(q, k, v, causal=bool(causal), mask=m, normalizer=normalizer, head_dim=head_dim,
                             **extra)
    if normalizer == "sinkhorn":
        return ref.sinkhorn_attention(q, k, v, scale=s, mask=m, n_iter=int(n_iter or ITERATIVE["sinkhorn"]),
                                      eps=eps)
    if normalizer == "soft":
        lm = landmarks if landmarks is not None else np.asarray(m, np.float64)
        return ref.soft_attention(q, q if tied else k, v, landmarks=lm,
                                  n_iter=int(ITERATIVE["soft"] if n_iter is None else n_iter), head_dim=head_dim)
    sel = {"top_k": int(top_k), "renormalize": renormalize in (None, 1)} if normalizer == "topk_softmax" else {}
    return ref.attention(q, k, v, scale=s, causal=bool(causal), mask=m, normalizer=normalizer, **sel)


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
    score term counts 1.5 times; lssa, lssar: ``_cosine_tolerance``.
    Sinkhorn and SOFT: ``_sinkhorn_attention_tolerance``, ``_soft_attention_tolerance``."""
    if params.get("normalizer") in COSINE:
        return _cosine_tolerance(inputs, ref_y, params)
    if params.get("normalizer") == "sinkhorn":
        return _sinkhorn_attention_tolerance(inputs, params)
    if params.get("normalizer") == "soft":
        return _soft_attention_tolerance(inputs, params)
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
            if params.get("tied"):   # SOFT's tied form: the keys are the queries
                lk = lq
            xs = [rng.normal(0, sd, (2, lq, d)), rng.normal(0, sd, (2, lk, d)), rng.normal(0, 1, (2, lk, dv))]
            if params.get("tied"):
                xs[1] = xs[0]
            keep = rng.random((2, lq, lk)) < 0.9
            if params.get("mask") == "additive":
                xs.append(np.where(keep, 0.0, -np.inf))
            if params.get("normalizer") == "soft" and params.get("landmarks") is None:   # its landmarks input
                xs.append(ref.soft_landmarks_avgpool(xs[1], min(4, lk)))
            xs = [x.astype(np.float32) for x in xs]
            out.append(tuple(xs + [keep] if params.get("mask") == "bool" else xs))
    return out


@register("attention", _reference, kind="attention",
          params={"head_dim": 64, "scale": None, "causal": 0, "mask": "none", "normalizer": "softmax",
                  "n_iter": None, "eps": 1.0, "top_k": None, "renormalize": None, "p": None,
                  "offset_free_rows": None, "tied": None, "landmarks": None},
          choices={"mask": MASKS, "normalizer": NORMALIZERS},
          matrices={"dims": DIMS, "inputs": {"q": ("lq", "d"), "k": ("lk", "d"), "v": ("lk", "dv")},
                    "outputs": {"o": ("lq", "dv")}},
          custom_tolerance=_tolerance, samples=_samples)
def attention(mp: MatrixProgram, head_dim: int, scale: float | None, causal: int, mask: str,
              normalizer: str, n_iter: float | None, eps: float, top_k: int | None = None,
              renormalize: int | None = None, p: float | None = None, offset_free_rows: int | None = None,
              tied: int | None = None, landmarks: int | None = None) -> None:
    """O = normalize(s Q K^T + mask) V over the last two axes (docs/ops.md §10): q (..., Lq, d),
    k (..., Lk, d), v (..., Lk, dv) -> (..., Lq, dv); s = 1/sqrt(head_dim) unless scale is given;
    causal: key j kept iff j <= i + Lk - Lq (bottom-right); mask="additive": a float (..., Lq, Lk)
    input added to the scores. The three-phase form: S = s Q K^T, a rows phase (masks, softmax),
    O = P V. Fully masked rows give NaN. sinkhorn (n_iter, eps) and soft (n_iter): see
    ``_sinkhorn`` and ``_soft`` (tied=1: SOFT's tied form, k is q; landmarks=m: the kernel pools m
    landmarks from the keys itself, else they are an input). topk_softmax: top_k (required) and
    renormalize (default 1) as the row op's k and renormalize; masked keys are never selected
    (``_topk_rows``). lssa, lssar: cosine scores (no scale), see ``_cosine_phases``; p,
    offset_free_rows: lssar's (docs/ops.md §5.2)."""
    check_normalizer(normalizer)
    if mask == "bool" and normalizer != "soft":
        mp.notes.append(KEEP_NOTE)
    if normalizer != "topk_softmax" and (top_k, renormalize) != (None, None):
        raise UsageError(f"attention: top_k and renormalize are topk_softmax's parameters, not {normalizer}'s")
    if causal not in (0, 1):
        raise UsageError(f"causal must be 0/1 (or a bool), got {causal!r}")
    if n_iter is not None and normalizer not in ITERATIVE:
        raise UsageError(f"attention: n_iter is a parameter of the sinkhorn and soft normalizers, not {normalizer!r}")
    if eps != 1.0 and normalizer != "sinkhorn":
        raise UsageError(f"attention: eps is a parameter of the sinkhorn normalizer, not {normalizer!r}")
    # a normalizer's own parameters name (and head) only its kernels: the others' stay as they were
    if tied not in (None, 0, 1) or normalizer != "soft" and tied is not None:
        raise UsageError(f"attention: tied (0/1) is a parameter of the soft normalizer, got tied={tied!r} "
                         f"with normalizer {normalizer!r}")
    for key, owners in (("n_iter", ITERATIVE), ("eps", ("sinkhorn",)), ("top_k", ("topk_softmax",)),
                        ("renormalize", ("topk_softmax",)), ("tied", ("soft",) if tied else ())):
        if normalizer not in owners:
            mp.params.pop(key, None)
    if normalizer != "lssar" and (p is not None or offset_free_rows is not None):
        raise UsageError(f"p and offset_free_rows are lssar attention's parameters, not {normalizer}'s")
    if landmarks is not None and normalizer != "soft":
        raise UsageError(f"attention: landmarks is a parameter of the soft normalizer, not {normalizer!r}")
    for key in ("p", "offset_free_rows", "landmarks"):   # lssar's and soft's, when given
        if mp.params.get(key) is None:
            mp.params.pop(key, None)
    s = default_scale(_head_dim_int(head_dim)) if scale is None else scale
    if normalizer in COSINE:
        if scale is not None:
            raise UsageError(f"{normalizer} attention takes no scale: its scores are cosines times "
                             f"log(head_dim) log(N_i) (docs/ops.md §5.1)")
    if normalizer == "sinkhorn":
        return _sinkhorn(mp, s, causal, mask, ITERATIVE["sinkhorn"] if n_iter is None else n_iter, eps)
    if normalizer == "soft":
        return _soft(mp, head_dim, scale, causal, mask, ITERATIVE["soft"] if n_iter is None else n_iter,
                     bool(tied), None if landmarks is None else _landmark_count(landmarks))
    if normalizer in COSINE:
        return _cosine_phases(mp, _head_dim_int(head_dim), bool(causal), mask, normalizer,
                              _lssar_params(p, offset_free_rows) if normalizer == "lssar" else {})
    mp.strided = True   # abi.ATTENTION: per-(batch, head) strides, GQA, a strided mask, as the streaming form
    mp.key_padding = "s"   # kv_lengths as -inf scores, the additive mask's (top-k: never selected above a kept key)
    mp.lse = LSE
    if mask != "none":
        mp.inputs["mask"] = ("lq", "lk")
    mp.scratch("s", ("lq", "lk"))
    mp.matmul("s", "q", "k", layout="nt", alpha=s)
    x = mp.rows(over="s", into="s")
    p = x.p
    if mask != "none":
        x = _masked(x, p.matrow("mask"), mask)
    off = _causal_offset(p) if causal else None
    if normalizer == "topk_softmax":
        if top_k is None:
            raise UsageError("attention with normalizer 'topk_softmax' needs top_k=K (k is the keys)")
        k, renorm = _topk_k(top_k), flag(1 if renormalize is None else renormalize, "renormalize")
        if causal or mask != "none":   # the masked scores back to S: the selection's keys are its rows
            (off.where_lt(0.5, x, -F32_MAX) if causal else x).output()
            x = mp.rows(over="s", into="s")
            off = _causal_offset(x.p) if causal else None
        _topk_rows(x, off, mask != "none", k, renorm)
        return mp.matmul("o", "s", "v", layout="nn")
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
        l = e.sum()
        _emit_lse(mx.where_lt(SOFTPLUS_TINY, mx, 0.0), l, mx, x=x)
    elif normalizer == "stablemax":
        # s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), no max shift (docs/ops.md §8); s(-inf) = 0
        e = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
        if causal:
            e = off.where_lt(0.5, e, 0.0)
        l = e.sum()
        l.log().emit(LSE)
    elif causal:
        # keep j <= i + (Lk - Lq): j - i - (Lk - Lq) < 0.5 (indices are exact float32 integers).
        # IR constants are finite: a dropped score is -FLT_MAX for the max and its weight a
        # select of 0, so a row with no kept key sums to 0 and 0 * (1/0) makes it NaN (docs/ops.md §0)
        x = off.where_lt(0.5, x, -F32_MAX)
        mx = x.max()
        e = off.where_lt(0.5, (x - mx).exp(), 0.0)
        l = e.sum()
        _emit_lse(mx, l, mx, x=x)
    else:
        mx = x.max()
        e = (x - mx).exp()
        l = e.sum()
        _emit_lse(mx, l, mx, x=x)
    (e * l.finite_or_nan().recip()).output()
    mp.matmul("o", "s", "v", layout="nn")


KEEP_NOTE = ("mask='bool' (a uint8 keep-mask): a dropped key's score is -inf whatever it was (+inf, NaN), as the "
             "oracle's; the streaming form skips the key, the others read the mask as 0 / -inf floats the entry "
             "writes into an lq x lk scratch once per (batch, head)")


def _masked(x, m, mask: str):
    """The scores x under the mask m: mask="additive" x + m (a +inf or NaN score stays NaN under a
    -inf entry, as torch's SDPA); mask="bool" (the entry has turned the uint8 keep-mask into 0 /
    -inf floats, ``backends.entry``): -inf where dropped whatever x is, x where kept, as the
    streaming form and the oracle's ``np.where(keep, s, -inf)``."""
    return m.where_lt(-F32_MAX, m, x) if mask == "bool" else x + m


LSE = "lse"   # the three-phase form's per-row lse vector (MatrixProgram.lse), emitted by its rows phase


def _emit_lse(shift, l, dead, below: float = -F32_MAX, x=None) -> None:
    """Emit the row's lse = shift + log l (the streaming form's: docs/ops.md §10): log 0 = -inf for
    a row with no kept key, ``dead`` < ``below`` (its max -inf: an additive -inf mask, padding; or
    a count of kept keys below 0.5: a causal row's dropped scores are -FLT_MAX); NaN stays NaN.
    ``x``: the scores, when ``dead`` is their max: the max drops NaN, so a row of NaN (and -inf)
    scores looks dead; a sum of x 2^-100 over the scores not -inf (not finite iff one is NaN or
    +inf; as top-k's check: TVM folds x * 0 to 0) keeps its lse NaN. The streaming form drops it
    with the emit (``passes.without_lse``)."""
    lse = dead.where_lt(below, 0.0, shift) + dead.where_lt(below, 0.0, l).log()
    if x is not None:
        lse = lse.poison(x.where_lt(-F32_MAX, 0.0, x * 2.0 ** -100).sum())
    lse.emit(LSE)


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
    if renormalize:   # lse: the kept scores' log-sum-exp
        check = x.where_lt(-F32_MAX, 0.0, x * 2.0 ** -100).sum()   # as ops/topk.py: NaN / +inf rows
        l = sel.item(3)
        inv = l.finite_or_nan().recip().poison(check)
        mx = sel.item(2)
        w = (x - mx).exp() * inv
    else:             # lse: the row's
        mx = x.max()
        e = (x - mx).exp()
        l = e.sum()
        inv = l.finite_or_nan().recip()
        w = e * inv
        check = l
    dead, below = mx, -F32_MAX
    if off is not None or masked:   # kept keys: causal and above -inf; none: 1/0 poisons the row
        kept = x.where_lt(-F32_MAX, 0.0, 1.0)
        kept = off.where_lt(0.5, kept, 0.0) if off is not None else kept
        dead, below = kept.sum(), 0.5
        inv = inv.poison(dead.recip())
    _emit_lse(mx, l.poison(check), dead, below, x=x)
    zero = x.const(0.0).poison(inv)
    if off is not None:
        w = off.where_lt(0.5, w, zero)
    x.where_ranked(p.index(), sel.item(0), sel.item(1), w, zero).output()


def _sinkhorn(mp: MatrixProgram, s: float, causal: int, mask: str, n_iter, eps) -> None:
    """Sinkhorn attention (docs/ops.md §7, 10), blocked: it cannot stream (each column step couples
    every query), so S = s Q K^T is materialised once per (batch, head) in a scratch of Lq x Lk
    floats, the mask is applied in place (``_masked``; fused into the GEMM's store in C), the op
    ``sinkhorn``'s phases (``sinkhorn_phases``: n_iter half-steps rows first, then exp(M) n_k)
    run over it in place, and O = P V. Keys every query masks get weight 0 (the padding rule);
    fully masked query rows are NaN. Not causal (the limit would be the identity)."""
    if causal:
        raise UsageError("attention: the sinkhorn normalizer is not causal (docs/ops.md §7: the only doubly "
                         "stochastic lower-triangular matrix is the identity); use a mask for key padding")
    n_iter, eps = sinkhorn._iterations(n_iter), sinkhorn._eps(eps)
    mp.strided = True   # abi.ATTENTION: per-(batch, head) strides, GQA, a strided (broadcast) mask
    mp.key_padding = "s"   # kv_lengths: padded keys' scores -inf, as the additive mask's (dead keys: weight 0)
    if mask != "none":
        mp.inputs["mask"] = ("lq", "lk")
    mp.scratch("s", ("lq", "lk"))
    mp.matmul("s", "q", "k", layout="nt", alpha=s)
    if mask != "none":
        x = mp.rows(over="s", into="s")
        _masked(x, x.p.matrow("mask"), mask).output()
    sinkhorn.sinkhorn_phases(mp, n_iter, eps, over="s", into="s", pre="sk_", dead_rows=True).output()
    mp.notes.append(f"sinkhorn attention, blocked (it cannot stream: a column step couples every query): "
                    f"S = s Q K^T materialised once per (batch, head) in the scratch s (lq x lk floats), "
                    f"{n_iter} half-steps (rows first, eps {eps!r}) in place over it, then o = P v")
    mp.matmul("o", "s", "v", layout="nn")


MAX_LANDMARKS = 4096


def _landmark_count(m) -> int:
    if isinstance(m, bool) or not (isinstance(m, (int, float, np.integer)) and float(m).is_integer()
                                   and 1 <= m <= MAX_LANDMARKS):
        raise UsageError(f"attention: landmarks must be a count in [1, {MAX_LANDMARKS}], got {m!r}")
    return int(m)


def _soft(mp: MatrixProgram, head_dim, scale, causal: int, mask: str, n_iter, tied: bool = False,
          pooled: int | None = None) -> None:
    """SOFT attention's linear global form (docs/ops.md §6, 10): with the landmarks L (an input
    ``landmarks`` (m x d), or with ``pooled`` = m the means of m consecutive segments of the keys
    (q when tied), pooled by the kernel: the spec's learning-free choice, a ``PoolPhase`` into a
    scratch, m a fixed dimension), K1 = kernel(Q, L) (Lq x m), K1k^T = kernel(L, K) (m x Lk), K2 = kernel(L, L) and
    its Newton-Schulz inverse (``newton_phases``, SOFT's variant: (K2 + 0.01 I)^-1), then
    O = K1 (K2^+ (K1k^T V)) right to left: scratch O((Lq + Lk + dv + m) m), never Lq x Lk; the
    Gaussian kernel's phases are the op ``gaussian_kernel``'s (``gaussian_phases``). Not causal,
    no masks, no scale (the kernel's is 1 / (2 sqrt(head_dim))). ``tied``: the paper's form, keys
    = queries: K1 = K1k, one L x m x d GEMM (and its exps) fewer. It keeps K1^T (m x L: the
    GEMMs' rows are the m landmarks and their columns the L tokens, whole vectors for the
    epilogue's exps, not m = 49 padded to 64) and computes O = (K1^T)^T W as a "tn" GEMM; k keeps
    its place in the ABI (shape lq x d, as v lq x dv) but is not read."""
    if causal or mask != "none" or scale is not None:
        raise UsageError("attention: the soft normalizer is a global linear form: no causal, no mask, no scale "
                         "(its Gaussian kernel is exp(-|q - k|^2 / (2 sqrt(head_dim))), docs/ops.md §6)")
    d, n_iter = _head_dim_int(head_dim), soft._newton_iter(n_iter)
    mp.dims = mp.dims + ("m",)
    mp.strided = True   # abi.ATTENTION's per-(batch, head) strides (given landmarks: per query head, m an argument)
    if pooled is None:
        mp.inputs["landmarks"] = ("m", "d")
    else:
        mp.fixed_dims["m"] = pooled
    if tied:   # one sequence: k and v have q's length (lk goes)
        mp.dims = tuple(x for x in mp.dims if x != "lk")
        mp.inputs["k"], mp.inputs["v"] = ("lq", "d"), ("lq", "dv")
    for name, shape in (("k1", ("lq", "m")), ("k1kt", ("m", "lq" if tied else "lk")), ("k2", ("m", "m")), ("kv", ("m", "dv")),
                        ("w", ("m", "dv"))):
        if not (tied and name == "k1"):
            mp.scratch(name, shape)
    if pooled is not None:
        mp.scratch("landmarks", ("m", "d"))
        mp.pool("landmarks", "q" if tied else "k")
        mp.notes.append(f"soft landmarks: {pooled} means of consecutive segments of {'q' if tied else 'k'}'s rows, "
                        f"pooled in the kernel (m = {pooled} is fixed at build time)")
    if not tied:
        soft.gaussian_phases(mp, "q", "landmarks", "k1", d, pre="g1_").output()
    soft.gaussian_phases(mp, "landmarks", "q" if tied else "k", "k1kt", d, pre="gk_").output()
    soft.gaussian_phases(mp, "landmarks", "landmarks", "k2", d, pre="g2_").output()
    k2p = soft.newton_phases(mp, "k2", n_iter, "soft", 0.9, pre="nw_")
    mp.matmul("kv", "k1kt", "v")                # K1k^T V   (m x dv)
    mp.matmul("w", k2p, "kv")                   # K2^+ ...  (m x dv)
    if tied:
        mp.matmul("o", "k1kt", "w", layout="tn")   # (K1^T)^T ... (Lq x dv)
        mp.notes.append("soft attention, tied (k is q), linear global form: K1^T = kernel(landmarks, q) (m x lq), "
                        "K2 = kernel(landmarks, landmarks), K2^+ by " + f"{n_iter} Newton-Schulz steps, "
                        "o = K1 (K2^+ (K1^T v)) with the last product a tn GEMM over K1^T: k is not read; "
                        "scratch (lq + 2 dv + 5 m) m floats, no lq x lq matrix")
        return
    mp.matmul("o", "k1", "w")                   # K1 ...    (Lq x dv)
    mp.notes.append("soft attention, linear global form: K1 = kernel(q, landmarks) (lq x m), K1k^T = kernel("
                    "landmarks, k) (m x lk), K2 = kernel(landmarks, landmarks), K2^+ by " + f"{n_iter} Newton-Schulz "
                    "steps, o = K1 (K2^+ (K1k^T v)): scratch (lq + lk + 2 dv + 5 m) m floats, no lq x lk matrix")


def _sinkhorn_attention_tolerance(inputs, params):
    """The op ``sinkhorn``'s own f32 bound on P (``_sinkhorn_tolerance``, from the exact scores),
    plus the scores' error: each is a d-term f32 dot product, |dC| <= (d + 2) 2^-23 s |q||k| (and
    one rounding of the mask's addition), which moves every potential by at most the largest |dC|
    per half-step, so M = (C + u + v) / eps by at most 2 (n_iter + 1) max|dC| / eps (P relatively by
    e^that - 1); then P V adds (Lk + 2) 2^-23 |P||V|."""
    q, k, v = (np.asarray(a, np.float64) for a in inputs[:3])
    mask = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
    n_iter, eps = int(params.get("n_iter") or ITERATIVE["sinkhorn"]), float(params.get("eps", 1.0))
    sc = params.get("scale") or default_scale(params["head_dim"])
    c = ref._attention_scores(q, k, sc, False, mask, None)
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.nan_to_num(ref.sinkhorn(c, n_iter, eps)) if c.size else np.zeros(c.shape)
        # non-finite inputs make their rows/matrices NaN, where the check compares NaN patterns
        qn, kn = (np.nan_to_num(np.sqrt((x * x).sum(-1)), nan=0.0, posinf=0.0) for x in (q, k))
        fin = np.where(np.isfinite(c), np.abs(c), 0.0)
        dc = (q.shape[-1] + 2) * 2.0 ** -23 * sc * qn.max(-1, initial=0.0) * kn.max(-1, initial=0.0) \
            + 2.0 ** -24 * fin.max((-2, -1), initial=0.0)
        dc = dc[..., None, None]
        tp = (sinkhorn._sinkhorn_tolerance(c, p, {"n_iter": n_iter, "eps": eps}, {}) if c.size else 0.0) \
            + p * np.expm1(2 * (n_iter + 1) * dc / eps)
        av = np.abs(v)
        av = np.nan_to_num(av, posinf=0.0)
        return np.nan_to_num(tp @ av + (k.shape[-2] + 2) * 2.0 ** -23 * (p @ av), nan=np.inf) + 2.0 ** -120


def _soft_attention_tolerance(inputs, params):
    """First-order propagation through O = K1 (K2^+ (K1k^T V)): the Gaussian kernels' own bounds
    (``_gaussian_tolerance``) for K1, K1k, K2; Newton-Schulz's (``_newton_tolerance``: its f32
    roundings, perturbed float64 runs) plus K2's error carried by the inverse (|K2^+| |dK2|
    |K2^+|); each GEMM's (k + 2) 2^-23 |A||B|; doubled for the second-order terms."""
    q, k, v = (np.asarray(a, np.float64) for a in inputs[:3])
    k = q if params.get("tied") else k   # the tied kernel reads q as the keys
    n_iter = int(ITERATIVE["soft"] if params.get("n_iter") is None else params["n_iter"])
    if params.get("landmarks") is not None:
        return _soft_pooled_tolerance(q, k, v, params, n_iter)
    lm = np.asarray(inputs[3], np.float64)
    d, m = params["head_dim"], lm.shape[-2]
    g = {"head_dim": d}
    k1, k1k, k2 = ref.gaussian_kernel(q, lm, d), ref.gaussian_kernel(k, lm, d), ref.gaussian_kernel(lm, lm, d)
    d1, d1k, d2 = (soft._gaussian_tolerance(ab, y, g, {}) for ab, y in (((q, lm), k1), ((k, lm), k1k), ((lm, lm), k2)))
    k2p = ref.newton_pinv(k2, n_iter, "soft", 0.9, alpha_scope="matrix")
    with np.errstate(invalid="ignore", over="ignore"):
        dk2p = soft._newton_tolerance(k2, k2p, {"n_iter": n_iter, "variant": "soft", "alpha_factor": 0.9}) \
            + np.abs(k2p) @ d2 @ np.abs(k2p)
        a1, a1k, ap, av = np.abs(k1), np.abs(k1k), np.abs(k2p), np.abs(v)
        t = np.swapaxes(k1k, -1, -2) @ v
        w = k2p @ t
        at, aw = np.abs(t), np.abs(w)
        dt = np.swapaxes(d1k, -1, -2) @ av + (k.shape[-2] + 2) * 2 * soft.U32 * (np.swapaxes(a1k, -1, -2) @ av)
        dw = dk2p @ at + ap @ dt + (m + 2) * 2 * soft.U32 * (ap @ at)
        do = d1 @ aw + a1 @ dw + (m + 2) * 2 * soft.U32 * (a1 @ aw)
    return np.nan_to_num(2 * do, nan=np.inf) + 2.0 ** -120   # NaN: a non-finite input, a NaN output


def _soft_pooled_tolerance(q, k, v, params, n_iter, runs: int = 2):
    """SOFT with the landmarks pooled by the kernel: its f32 segment means are within
    (c + 1) 2^-24 mean|k| of the exact ones (a c-term sum in row order, then one division; c the
    longest segment). The tolerance at the exact landmarks (``_soft_attention_tolerance``) plus
    what moving them that far changes: the float64 form run with the landmarks perturbed by
    the bound with pseudo-random signs (as ``_newton_tolerance``), ``runs`` times, doubled."""
    m = int(params["landmarks"])
    lm = ref.soft_landmarks_avgpool(k, m)
    lo, hi = ref.soft_landmark_segments(k.shape[-2], m)
    bound = (np.max(hi - lo) + 1) * soft.U32 * ref.soft_landmarks_avgpool(np.abs(k), m)
    inner = {key: val for key, val in params.items() if key != "landmarks"}
    base = _soft_attention_tolerance((q, k, v, lm), dict(inner, tied=None))
    exact = ref.soft_attention(q, k, v, landmarks=lm, n_iter=n_iter, head_dim=params["head_dim"])
    dev = np.zeros(exact.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        for r in range(runs):
            moved = lm + bound * _signs(lm, 1 + r)
            o = ref.soft_attention(q, k, v, landmarks=moved, n_iter=n_iter, head_dim=params["head_dim"])
            dev = np.maximum(dev, np.abs(o - exact))
    return base + np.nan_to_num(2 * dev, nan=np.inf)


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
    mp.strided = True   # abi.ATTENTION's explicit strides (q and k are normalised into scratch)
    mp.key_padding, mp.lse = "s", LSE   # kv_lengths: padded keys' cosines -inf, not counted in N_i
    if mask != "none":   # "bool": the additive IR, the streaming kernel reads bytes
        mp.inputs["mask"] = ("lq", "lk")
    _unit_rows(mp, "q", "qn")
    _unit_rows(mp, "k", "kn")
    mp.scratch("s", ("lq", "lk"))
    mp.matmul("s", "qn", "kn", layout="nt")
    x = mp.rows(over="s", into="s")
    pr = x.p
    m = None
    keep = x.where_lt(-F32_MAX, 0.0, 1.0)   # a cosine is -inf only where kv_lengths padded its key
    if mask != "none":
        m = pr.matrow("mask")
        keep = m.where_lt(-F32_MAX, 0.0, keep)          # -inf: dropped
    if causal:
        off = pr.index() - pr.row_index() - (pr.size("cols") - pr.size("rows"))
        keep = off.where_lt(0.5, keep, 0.0)
    n = keep.sum()
    z = x * (n.log() * math.log(head_dim))
    a = keep.where_lt(0.5, 0.0, softplus(z if m is None or mask == "bool" else z + m))   # bool: m is 0 where kept
    l = a.sum()
    l.log().emit(LSE)   # the log of the weights' sum (lssar: its lssa sum), as the streaming form's
    inv = l.finite_or_nan().recip()
    if normalizer == "lssa":
        (a * inv).output()
    else:
        pos = pr.row_index() + (pr.size("cols") - pr.size("rows"))
        o = pos.where_lt(lssar["offset_free_rows"] - 0.5, 0.0, 1.0)
        lssa._reweight(a * inv, a.max() * inv, n, lssar["p"], inv, o).output()
    mp.matmul("o", "s", "v", layout="nn")
