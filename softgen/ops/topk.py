"""Top-k softmax (docs/ops.md §9): a selection reduction, dense or sparse output."""
from __future__ import annotations

from .. import reference as ref
from ..errors import UsageError
from ..ir import INDEX_MAX_N, Value
from .base import F32_MAX, flag, register


def _topk_k(k) -> int:
    if isinstance(k, bool) or not (isinstance(k, (int, float)) and float(k).is_integer()
                                   and 1 <= k <= INDEX_MAX_N):
        raise UsageError(f"k must be an integer in [1, {INDEX_MAX_N}] (rows up to 2^24 elements), "
                         f"got {k!r}")
    return int(k)


def _topk_reference(x, k=2, renormalize=1, sparse=0):
    """Dense ``reference.topk_softmax``, or the (indices, weights) of ``topk_softmax_sparse``."""
    f = ref.topk_softmax_sparse if sparse else ref.topk_softmax
    return f(x, int(k), bool(renormalize))


@register("topk_softmax", _topk_reference, params={"k": 2, "renormalize": 1, "sparse": 0},
          sums_to_one=lambda params: bool(params.get("renormalize", 1)))
def topk_softmax(x: Value, k: float, renormalize: float, sparse: float) -> Value:
    """Top-k gate (docs/ops.md §9): the k largest entries (lower index first on ties) get
    e^(x - max) / sum, summed over the k (renormalize=1, Mixtral) or over the whole row
    (renormalize=0, Switch); the others 0. The selection: k sorted (key, index) registers per
    lane for small k, radix select on the float bits above the target's topk_network_max_k
    (docs/ops.md §9). sparse=1: the (indices, weights) of the min(k, n) selected entries,
    largest first, instead of the dense row (the MoE router form, 1R + 2k writes per row)."""
    sel = x.topk(_topk_k(k))        # items: (t, jt) the k-th kept, m the max, d its sum
    if flag(renormalize, "renormalize"):
        # d comes from the kept keys; NaN is never kept, so a row check makes NaN rows NaN
        # not finite iff the row has NaN or +inf (x * 0 would do, but simplifiers fold it)
        check = x.where_lt(-F32_MAX, 0.0, x * 2.0 ** -100).sum()
        inv = sel.item(3).finite_or_nan().recip().poison(check)
        w = (x - sel.item(2)).exp() * inv
    else:
        e = (x - x.max()).exp()      # the normaliser motif: every softmax algorithm applies
        inv = e.sum().finite_or_nan().recip()
        w = e * inv
    if flag(sparse, "sparse"):
        return sel.output_selected(w)
    zero = x.const(0.0).poison(inv)   # a NaN row stays NaN off the selection too
    return x.where_ranked(x.p.index(), sel.item(0), sel.item(1), w, zero)
