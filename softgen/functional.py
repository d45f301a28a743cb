"""One function per op, e.g. ``softgen.lssa(c, 64)``: compiles the op for this CPU on first use
(cached per op, parameters, target and backend) and applies it to a NumPy array.

Arguments are the op's build-time parameters (baked into the kernel; positional in the order
``softgen ops`` lists them) and its call-time arguments (per row, e.g. ``n_attended``). Giving a
call-time argument selects the kernel variant that takes it (the op's
``OpDef.build_params_for_call``: e.g. ``count_keys=0`` for the lssa family).
"""
from __future__ import annotations

import functools

import numpy as np

from . import arrays, ops as _ops, reference as _ref
from .abi import ATTENTION
from .arrays import TORCH_TYPES
from .backends import get_backend
from .errors import UsageError
from .kernel import compile as _compile
from .ops.attention import check_normalizer
from .targets import get_target, is_group_spec


@functools.lru_cache(maxsize=256)
def _kernel(op: str, target: str, backend: str, algorithm: str, params: tuple):
    return _compile(op, target=target, backend=backend, algorithm=algorithm, **dict(params))


def apply(op: str, x: np.ndarray, *args, out: np.ndarray | None = None, target: str = "host",
          backend: str = "c", algorithm: str = "auto", threads: int | None = None, axis: int | None = None,
          dim: int | None = None, **kwargs) -> np.ndarray:
    """``op`` applied along the last axis of ``x`` (the last two for matrix ops); an op with
    several inputs (``gaussian_kernel(a, b, head_dim)``) takes them first. ``threads``: None/0
    auto, N at most N threads (rows, or a matrix op's batch of matrices: ``Kernel.__call__``). ``axis``/``dim`` (row ops): the
    axis to normalise, negative allowed. Arrays: NumPy, or anything speaking DLPack (torch, JAX;
    zero-copy, results in the caller's type: ``softgen.arrays``); a 0-d input is one row of one
    element (softmax gives 1.0, as torch) and gives a 0-d result."""
    if axis is not None and dim is not None:
        raise UsageError(f"{op}: give axis= or dim=, not both")
    axis = dim if axis is None else axis
    k, more, call = _lookup(op, args, kwargs, target, backend, algorithm)
    if not more and axis is None and (type(x) is np.ndarray or type(x) in TORCH_TYPES) and x.ndim and \
            (out is None or type(out) is np.ndarray or type(out) in TORCH_TYPES):
        return k(x, out=out, threads=threads, **call)   # NumPy or torch along the last axis: straight in
    if more and axis is None and len(args) >= more and (out is None or _direct(out)) and _direct(x) \
            and all(_direct(a) for a in args[:more]):
        return k(x, *args[:more], out=out, threads=threads)   # NumPy or torch matrices: straight in
    if len(args) < more:
        raise TypeError(f"{op} takes {more + 1} arrays, got {1 + len(args)}")
    inputs = (x, *args[:more])
    xs, o, finish = arrays.prepare(inputs, out, op, axis=axis, selected=k.selected, rows=not k.matrix,
                                   scalar=True)
    if more:
        return finish(k(*xs, out=o, threads=threads))
    x = xs[0]
    return finish(k(x if type(x) is np.ndarray else np.asarray(x), out=o, threads=threads, **call))


_resolved: dict = {}   # apply's arguments -> (kernel, extra inputs, call-time arguments)
_MORE: dict = {}       # op -> how many inputs it takes besides x


def _lookup(op: str, args: tuple, kwargs: dict, target, backend: str, algorithm: str) -> tuple:
    """(the kernel, how many inputs besides x, the call-time arguments) of ``apply``'s arguments,
    resolved once per hashable argument tuple (issue 15)."""
    more = _MORE.get(op)
    if more is None:   # the op's inputs besides x: not part of the key (arrays are not hashable)
        more = _MORE[op] = len(_ops.get_op(op).inputs) - 1
    try:
        key = (op, args[more:], tuple(kwargs.items()), target, backend, algorithm)
        hit = _resolved.get(key)
    except TypeError:   # unhashable arguments (arrays: more inputs, per-row call arguments)
        key = hit = None
    if hit is None:
        hit = _resolve(op, args, kwargs, target, backend, algorithm)
        if key is not None:
            if len(_resolved) >= 1024:
                _resolved.clear()
            _resolved[key] = hit
    return hit


def _direct(a) -> bool:
    """An array a kernel takes as it is (NumPy, or a torch tensor: ``Kernel`` checks both)."""
    return type(a) is np.ndarray or type(a) in TORCH_TYPES


def _resolve(op: str, args: tuple, kwargs: dict, target, backend: str, algorithm: str) -> tuple:
    """(the kernel, how many inputs besides x, the call-time arguments) of ``apply``'s arguments."""
    kwargs = dict(kwargs)
    opdef = _ops.get_op(op)
    more = len(opdef.inputs) - 1
    if len(args) < more:
        raise TypeError(f"{op} takes {len(opdef.inputs)} arrays ({', '.join(opdef.inputs)}), got {1 + len(args)}")
    args = args[more:]
    names = list(opdef.params)
    if len(args) > len(names):
        raise UsageError(f"{op} takes at most {len(names)} positional parameter(s) ({', '.join(names)})")
    for name, value in zip(names, args):
        if name in kwargs:
            raise UsageError(f"{op}: parameter {name} given twice")
        kwargs[name] = value
    call = {k: v for k, v in kwargs.items() if k in opdef.call_params and v is not None}
    build = opdef.build_params_for_call({k: v for k, v in kwargs.items() if k not in opdef.call_params}, call)
    params = tuple(sorted(_ops.resolve_params(opdef, build).items()))
    # a list of targets (a library spanning ISAs) as a tuple: the kernel cache's key is hashed
    k = _kernel(op, tuple(target) if isinstance(target, list) else target, backend, algorithm, params)
    return k, more, call


_OPTIONS = ("target", "backend", "algorithm")


def _make(op: str):
    """``softgen.<op>``: a call whose parameters and options were seen before goes straight to
    the kernel's C entry (``Kernel._fast``): the last call's arguments compared first (equal
    tuples and dicts: ~4x cheaper than hashing them), else one dict keyed by the positional
    parameters and the keyword arguments as given (issue 15: O(1), nothing normalised); threads=
    is no part of the key (the entry passes it to ``<name>_mt``). The first call of such
    arguments, anything the entry declines (0-d, other array types, layouts, matrix ops' threads=)
    and calls with axis=/dim= or call-time arguments take ``apply``."""
    opdef = _ops.get_op(op)
    more = len(opdef.inputs) - 1   # the op's inputs besides x: positional, not part of the key
    plain, keyed = {}, {}          # args[more:] / (args[more:], *kwargs items) -> the kernel's entry
    last = [None, None, None]      # the last hit: its parameters, keyword arguments and entry

    def find(params: tuple, kwargs: dict):
        e = keyed.get((params, *kwargs.items())) if kwargs else plain.get(params)
        if e is not None:
            last[:] = (params, kwargs, e)
        return e

    def remember(args: tuple, kwargs: dict) -> None:
        """After ``apply`` ran: enter the call's kernel when nothing but the kernel matters to it."""
        if any(kwargs.get(o) is not None for o in ("axis", "dim")):
            return
        opts = {o: kwargs[o] for o in _OPTIONS if o in kwargs}
        try:
            key = (args[more:], *kwargs.items()) if kwargs else args[more:]
            k, _, call = _lookup(op, args, {n: v for n, v in kwargs.items() if n not in _OPTIONS and n not in
                                            ("threads", "axis", "dim")}, opts.get("target", "host"),
                                 opts.get("backend", "c"), opts.get("algorithm", "auto"))
            table = keyed if kwargs else plain
            if not call and k._fast is not None and key not in table:
                if len(table) >= 1024:
                    table.clear()
                table[key] = k._fast
        except TypeError:   # unhashable: not entered
            pass

    def slow(x, args: tuple, out, threads, kwargs: dict, e):
        """``apply`` (the entry declined, or no entry yet: then remember the call's kernel)."""
        r = apply(op, x, *args, out=out, threads=threads, **kwargs)
        if e is None:
            remember(args, kwargs)
        return r

    if more:
        def fn(x, *args, out=None, threads=None, **kwargs):
            m, params = last, args[more:]
            try:
                e = m[2] if params == m[0] and kwargs == m[1] else find(params, kwargs)
            except (TypeError, ValueError):   # parameters that do not hash or compare: apply says why
                e = None
            if e is not None and len(args) >= more:
                r = e((x, *args[:more]), out) if threads is None else e((x, *args[:more]), out, threads)
                if r is not NotImplemented and r.__class__ is not int:
                    return r
            return slow(x, args, out, threads, kwargs, e)
    else:
        def fn(x, *args, out=None, threads=None, **kwargs):
            m = last
            try:
                e = m[2] if args == m[0] and kwargs == m[1] else find(args, kwargs)
            except (TypeError, ValueError):
                e = None
            if e is not None:
                r = e(x, out) if threads is None else e(x, out, threads)
                if r is not NotImplemented and r.__class__ is not int:
                    return r
            return slow(x, args, out, threads, kwargs, e)
    sig = ", ".join(list(opdef.inputs) + [f"{k}={v!r}" for k, v in opdef.params.items()]
                    + [f"{c}=None" for c in opdef.call_params])
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = f"{op}({sig}, *, out=None, target='host', backend='c', algorithm='auto', threads=None, " \
        f"axis=None, dim=None)\n\n{opdef.doc}"
    return fn


def _f32(name: str, a) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise UsageError(f"attention: {name} must be a float32 NumPy array, got "
                         f"{a.dtype if isinstance(a, np.ndarray) else type(a).__name__}")
    if a.ndim < 2:
        raise UsageError(f"attention: {name} must have at least 2 axes (..., L, d), got shape {a.shape}")
    return a


def attention(q, k, v, normalizer: str = "softmax", causal: bool = False, mask=None, scale=None,
              kv_lengths=None, masked_rows: str = "nan", *, out: np.ndarray | None = None,
              target: str = "host", backend: str = "c", algorithm: str = "auto", threads: int | None = None,
              return_lse: bool = False, **params):
    """O = normalize(s Q K^T + mask) V (docs/ops.md §10), float32: q (..., Hq, Lq, d), k (..., Hkv, Lk, d),
    v (..., Hkv, Lk, dv) -> (..., Hq, Lq, dv); the leading axes are batch x heads (2-d arrays: one
    head). Grouped-query attention: Hq a multiple of Hkv, query head h reads kv head
    h // (Hq // Hkv). ``scale``: default 1/sqrt(d). ``causal``: bottom-right aligned (key j kept iff
    j <= i + Lk - Lq). ``mask``: boolean keep-mask (True = keep) or additive float mask,
    broadcastable to (..., Hq, Lq, Lk). ``kv_lengths``: per batch index (the axes before the heads)
    the number of valid keys. Fully masked rows give NaN (docs/ops.md §0), or 0 with masked_rows="zero".
    ``normalizer``: softmax, stablemax, topk_softmax (``top_k=K``, ``renormalize=1``: each query
    attends to its K highest-scoring kept keys), sinkhorn (``n_iter`` = 3, ``eps`` = 1; not causal) or soft
    (``n_iter`` = 20 Newton-Schulz steps; ``landmarks``: a count m (default 49), pooled from k by the
    kernel as ``reference.soft_landmarks_avgpool`` does, or the (..., m, d) landmarks; no causal, mask
    or scale);
    other names raise a UsageError naming what is supported. ``algorithm``: auto (streaming where
    the normalizer and backend stream: softmax, stablemax, softplus_l1, lssa, lssar, topk_softmax on C; softmax,
    stablemax on TVM; topk_softmax: by the target's rule on (top_k, Lk), ``Target.topk_streams``), streaming,
    three-phase (block sizes: the target defaults; use ``softgen.compile`` for a schedule).
    ``threads``: None or 0 auto, N at most N threads: the batch x heads matrices (the streaming
    form: batch x heads x query chunks) split across the library's thread pool; results do not
    depend on it. ``return_lse``: (o, lse), lse (..., Hq, Lq) the per-row log-sum-exp of the
    masked scaled scores (softmax; stablemax, softplus_l1, lssa, lssar: the log of the row's weights' sum;
    topk_softmax: of its weights' normaliser, the kept scores' log-sum-exp (renormalize=0: the row's); -inf
    for a fully masked row; both forms, not sinkhorn or soft: UsageError).
    NumPy arrays or torch tensors (and other DLPack arrays): results in the caller's type.

    The streaming form (``abi.ATTENTION``) takes the arrays as they are: strided heads (e.g. a
    (B, L, H, d) view transposed to (B, H, L, d)), GQA heads, a boolean mask as bytes and a
    broadcast mask through stride 0, kv_lengths per batch, no copies. The three-phase form (every
    normalizer, both backends), Sinkhorn and SOFT take the same entry: q, k, v
    as they are, GQA heads, kv_lengths and lse in the kernel (Sinkhorn: no lse; SOFT: neither); a
    boolean mask as bytes too (mask='bool': a dropped key is dropped whatever its score, +inf or
    NaN included, in every form; an additive -inf entry under a +inf score is NaN, as torch). SOFT's
    given landmarks are one more input of that entry (per query head, stride 0 where broadcast)."""
    opdef = _ops.get_op("attention")
    check_normalizer(normalizer)
    if masked_rows not in ("nan", "zero"):
        raise UsageError(f"attention: masked_rows must be 'nan' or 'zero', got {masked_rows!r}")
    given = (q, k, v) if mask is None or isinstance(mask, (bool, int, float, np.generic)) else (q, k, v, mask)
    xs, out_np, finish = arrays.prepare(given, out, "attention", rows=False)
    q, k, v = _f32("q", xs[0]), _f32("k", xs[1]), _f32("v", xs[2])
    mask = xs[3] if len(xs) > 3 else mask
    if not (q.ndim == k.ndim == v.ndim):
        raise UsageError(f"attention: q, k, v must have the same number of axes, got shapes {q.shape}, {k.shape}, "
                         f"{v.shape}")
    lq, d = q.shape[-2:]
    lk = k.shape[-2]
    if k.shape[-1] != d or v.shape[-2] != lk or k.shape[:-2] != v.shape[:-2]:
        raise UsageError(f"attention: expected k (..., Lk, {d}) and v (..., Lk, dv) with the same leading axes, "
                         f"got q {q.shape}, k {k.shape}, v {v.shape}")
    hq = hkv = 1
    if q.ndim >= 3:
        hq, hkv = q.shape[-3], k.shape[-3]
        if q.shape[:-3] != k.shape[:-3]:
            raise UsageError(f"attention: q and k/v have different batch axes: {q.shape[:-3]} vs {k.shape[:-3]}")
        if hkv == 0 or hq % hkv:
            raise UsageError(f"attention: grouped-query attention needs Hq a multiple of Hkv, got Hq={hq}, "
                             f"Hkv={hkv}")
    elif kv_lengths is not None:
        raise UsageError("attention: kv_lengths needs a heads axis (q of shape (..., H, Lq, d))")
    lead, dv = q.shape[:-2], v.shape[-1]
    if normalizer == "soft" and _soft_tied(q, k, params.pop("tied", None), given[0] is given[1]):
        params["tied"] = 1
    landmarks = params.pop("landmarks", None)
    if landmarks is not None and normalizer != "soft":
        raise UsageError(f"attention: landmarks is a parameter of the soft normalizer, not {normalizer!r}")
    if normalizer == "soft" and np.ndim(landmarks) == 0:   # a count: the kernel pools them from k
        params["landmarks"] = _soft_landmark_count(landmarks, lk)
    m = None
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool and not np.issubdtype(m.dtype, np.floating):
            raise UsageError(f"attention: mask must be boolean (True = keep) or float (additive), got {m.dtype}")
        if m.dtype != bool and m.dtype != np.float32:
            m = m.astype(np.float32)   # before broadcasting: the kernel reads a broadcast mask by stride 0
        try:
            m = np.broadcast_to(m, lead + (lq, lk))
        except ValueError:
            raise UsageError(f"attention: mask of shape {m.shape} does not broadcast to {lead + (lq, lk)}") from None
    n = None
    if kv_lengths is not None:
        n = np.asarray(kv_lengths)
        if not np.issubdtype(n.dtype, np.integer) or n.shape != q.shape[:-3] or (n < 0).any():
            raise UsageError(f"attention: kv_lengths must be non-negative integers of shape {q.shape[:-3]} "
                             f"(one per batch index), got {n.dtype} {n.shape}")
    if out_np is not None and (not isinstance(out_np, np.ndarray) or out_np.shape != lead + (lq, dv)
                               or out_np.dtype != np.float32):
        raise UsageError(f"attention: out must be a float32 array of shape {lead + (lq, dv)}")
    streams = algorithm != "three-phase" and normalizer in get_backend(backend).streams_attention
    if streams and algorithm == "auto" and normalizer == "topk_softmax" and isinstance(params.get("top_k"), (int, np.integer)) \
            and not is_group_spec(target) and not get_target(target).topk_streams(int(params["top_k"]), lk):
        algorithm, streams = "three-phase", False   # short keys: the target's rule (Target.topk_streams)
    if return_lse and normalizer in NO_LSE:
        raise UsageError(f"attention: return_lse: {NO_LSE[normalizer]}")
    # a boolean mask as bytes (every form: a dropped key's +inf or NaN score is dropped too, as the
    # oracle's); kv_lengths in the kernel (SOFT: none, refused as a mask)
    kind = "bool" if m is not None and m.dtype == bool else "none" if m is None and (
        streams or n is None or normalizer != "soft") else "additive"
    build = opdef.build_params_for_call(dict(params, head_dim=max(d, 1), scale=scale, causal=int(bool(causal)),
                                             mask=kind, normalizer=normalizer), {})
    kern = _kernel("attention", tuple(target) if isinstance(target, list) else target, backend, algorithm,
                   tuple(sorted(_ops.resolve_params(opdef, build).items())))
    if kern._abi.kind == ATTENTION and not streams:   # three-phase, sinkhorn, soft on explicit strides: no copies of
        # q, k, v; kv_lengths in the kernel (MatrixProgram.key_padding), a boolean mask as bytes
        pad, has_lse = kern.program.key_padding is not None, kern.program.lse is not None
        add = m if m is not None and m.dtype == bool else _additive_mask(m, None if pad else n, lead, lq, lk)
        want = return_lse or (masked_rows == "zero" and has_lse)
        call = dict({"kv_lengths": n} if pad and n is not None else {}, **({"return_lse": True} if want else {}))
        extra = [add] if add is not None else []
        if normalizer == "soft" and "landmarks" not in params:   # given landmarks: an input, per query head
            extra.append(_soft_landmarks(landmarks, lead, d))
        r = kern(q, k, v, *extra, out=out_np, threads=threads, **call)
        o, lse = r if want else (r, None)
        if masked_rows == "zero":   # the rows with no kept key: lse -inf (a NaN row's is NaN), as streaming
            o[lse == -np.inf if want else _dead_rows(_additive_mask(m, n, lead, lq, lk), lead, lq, lk, causal)] = 0.0
        return finish((o, lse) if return_lse else o)
    # the streaming form's explicit-stride entry: the arrays as they are
    want = return_lse or masked_rows == "zero"
    r = kern(q, k, v, *([] if m is None else [m]), out=out_np, threads=threads, kv_lengths=n, return_lse=want)
    o, lse = r if want else (r, None)
    if masked_rows == "zero":
        o[lse == -np.inf] = 0.0    # the rows with no kept key (a NaN row's lse is NaN)
    return finish((o, lse) if return_lse else o)


# normalizers without a per-row lse, and why (softgen.attention(return_lse=True) refuses them)
NO_LSE = {"sinkhorn": "Sinkhorn's P is normalised over rows and columns (n_iter half-steps): no per-row "
                      "log-sum-exp or normalizer sum describes it",
          "soft": "SOFT's global form O = K1 (K2^+ (K1k^T V)) has no per-row normalizer"}


def _additive_mask(m, n, lead: tuple, lq: int, lk: int):
    """A boolean or float mask and kv_lengths as one float32 additive mask (None: neither); a
    float32 mask stays the (broadcast) view it is."""
    add = None
    if m is not None:
        add = np.where(m, np.float32(0), np.float32(-np.inf)) if m.dtype == bool else m.astype(np.float32, copy=False)
    if n is not None:
        keep = np.arange(lk) < n.reshape(n.shape + (1, 1, 1))
        pad = np.broadcast_to(np.where(keep, np.float32(0), np.float32(-np.inf)), lead + (lq, lk))
        add = pad if add is None else add + pad
    return add


def _dead_rows(add, lead: tuple, lq: int, lk: int, causal: bool) -> np.ndarray:
    """The query rows with no kept key (masked_rows="zero" sets them to 0)."""
    dead = np.zeros(lead + (lq,), bool) if add is None else np.all(add == -np.inf, axis=-1)
    if causal:
        dead = dead | (np.arange(lq) + (lk - lq) < 0)
    if lk == 0:
        dead[...] = True
    return dead


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and a.strides == b.strides
                      and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _soft_tied(q: np.ndarray, k: np.ndarray, tied, same: bool) -> bool:
    """SOFT's tied form (keys = queries, one L x m x d GEMM fewer): the default when k is q (the
    same object, or memory, shape and strides); tied=1 given for other arrays needs k equal to q."""
    if tied is None:
        return same or _same_array(q, k)
    if tied not in (0, 1):
        raise UsageError(f"attention: tied must be 0 or 1, got {tied!r}")
    if tied and not _same_array(q, k) and not (q.shape == k.shape and np.array_equal(q, k)):
        raise UsageError("attention: tied=1 (SOFT's tied form) reads q as the keys: k must be q")
    return bool(tied)


def _soft_landmark_count(landmarks, lk: int) -> int:
    """SOFT's landmark count (default 49) for a kernel that pools them from k (docs/ops.md §6)."""
    m = _ref.SOFT_LANDMARKS if landmarks is None else landmarks
    if isinstance(m, (bool, np.bool_)) or not (isinstance(m, (int, np.integer)) and 1 <= m <= 4096):
        raise UsageError(f"attention: landmarks must be a count in [1, 4096] or an array (..., m, d), got {m!r}")
    if lk == 0:
        raise UsageError("attention: soft pools its landmarks from the keys, and Lk is 0")
    return int(m)


def _soft_landmarks(landmarks, lead: tuple, d: int) -> np.ndarray:
    """Given SOFT landmarks for the kernel, (..., m, d) float32, broadcast over the leading axes
    (batch x query heads: a view, stride 0 where broadcast)."""
    lm = _f32("landmarks", landmarks)
    if lm.ndim < 2 or lm.shape[-1] != d or lm.shape[-2] < 1:
        raise UsageError(f"attention: landmarks must be (..., m, {d}) with m >= 1, got {lm.shape}")
    try:
        lm = np.broadcast_to(lm, lead + lm.shape[-2:])
    except ValueError:
        raise UsageError(f"attention: landmarks of shape {lm.shape} do not broadcast to {lead + lm.shape[-2:]}") from None
    return lm


FUNCTIONS = {op: _make(op) for op in _ops.OPS}
FUNCTIONS["attention"] = attention
