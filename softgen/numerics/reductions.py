"""The row reductions, each written once against an emitter interface (``Emitter``).

A reduction describes its state (``fields``: the per-lane, per-accumulator values; ``outer``: the
compensated per-block state they fold into), the value of each field at the start (``init``), the
neutral input (``identity``), and six steps in emitter terms:

- ``update(e, st, xs)``: the state ``st`` takes the inputs ``xs`` (one per unroll slot);
- ``merge(e, d, s)``: accumulator ``s`` joins accumulator ``d`` (once per block);
- ``flush(e, p, a)``: accumulator ``a``'s lane chains join its block partial ``p`` and restart (a
  reduction with ``partial``: every ``flush_steps`` main-loop steps and at the block's end, so
  no lane chain of a block sum exceeds about ``FLUSH_TERMS`` terms; see ``flush_steps``);
- ``fold(e, o, a)``: the merged accumulator ``a`` joins the outer state ``o`` (once per block);
- ``finish(e, o, res)``: the outer state's lanes give the results ``res`` (once per row);
- ``merge_outer(e, o, q)``: outer state ``q`` (a later chunk's, in the C backend's split form of
  a row) joins outer state ``o``: ``fold`` of ``q``'s compensated value (its sum field minus its
  compensation ``c``, the value ``finish`` reads), so merging chunk states in chunk order is
  folding their blocks' partials in that order, up to the compensation's rounding;
- ``column_update(e, st, x)``: one row's update of a column reduction's state.

Each step returns the new state (field -> value). A backend's emitter owns the layout: the C
emitter (``backends.c``) keeps the state in vector registers, assigns in place (``e.assign``
writes ``dst = expr;``) and spells the operations as ``V_*`` macros and the ``sg_*`` helpers of
``templates/vmath.h.j2``; the TVM emitter (``backends.tvm``) let-binds every value per lane (TIR
is SSA: ``e.assign`` returns the new value) and its driver loads and stores the state from
per-lane local buffers. So a step must use the values the emitter returns, never a state
field after assigning it. A value may be computed before it is used (a let-binding emitter
evaluates it there, an expression emitter where it is used) as long as no step in between
assigns its inputs; ``e.var`` pins it where it stands. The order of the steps is kept as the
backends' compilers were first given it: GCC's register allocation (``bench/hotloops.py``) and
LLVM's fast-math contractions under TVM (bitwise results) both follow it.

Adding a reduction: a class here (and in ``REDUCTIONS``), its float64 reference in
``softgen/reference.py``, and the IR op (``softgen/ir.py``). The backends pick it up. Top-k is not
here: its state is a sorted list per lane, whose layout, update network and k-way merge differ
by design between the backends (``backends.c.TopKRed``, ``backends.tvm.TopKRed``).

Layer 2: imports only the constants.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Protocol

from .constants import EXTEXP_DOMAIN, EXTEXP_E0

FLT_MAX = 3.4028234663852886e38
# The most terms a lane of an accumulator adds in sequence before it joins its block partial
# (``Reduction.flush``). A chain of m float32 additions of positive terms is off by up to (m - 1) u
# relative, and on rows of equal terms it gets close: a whole block per lane (m = block / (lanes
# accumulators), 128-256 by default) broke the 2e-6 contract (docs/accuracy.md, "Long rows").
FLUSH_TERMS = 16


def flush_steps(unroll: int, accumulators: int) -> int:
    """Main-loop steps between two flushes: an accumulator takes ceil(unroll / accumulators)
    terms per step, so its lane chains take at most FLUSH_TERMS terms in the main loop."""
    return max(1, FLUSH_TERMS // -(-unroll // accumulators))


class Emitter(Protocol):
    """What a reduction step may call. Values are backend expressions (strings); ``x`` inputs
    are the row values the sweep computed; constants come from ``const``."""

    def const(self, value: float) -> str: ...              # a float32 constant, per lane
    def scale(self, red: "Reduction") -> str: ...          # the reduction's scale s, per lane
    def splat(self, scalar: str) -> str: ...               # a row scalar (a result), per lane
    def add(self, a: str, b: str) -> str: ...
    def sub(self, a: str, b: str) -> str: ...
    def mul(self, a: str, b: str) -> str: ...
    def max(self, a: str, b: str) -> str: ...             # NaN: the 2nd operand, or NaN
    def fma(self, a: str, b: str, c: str) -> str: ...
    def exp_nonpos(self, x: str) -> str: ...              # e^x for x <= 0 (vmath.h.j2 sg_exp_nonpos)
    def scale2(self, a: str, d: str) -> str: ...          # a 2^d, integer-valued d <= 0
    def scale2_add(self, acc: str, a: str, d: str) -> str: ...   # acc + a 2^d
    def extexp_terms(self, red: "Reduction", x: str, j: int) -> tuple[str, str]: ...
    # (n, p) with e^(s x) = p 2^n, x clamped to the extexp domain; j: the slot (for names)
    def kahan(self, s: str, c: str, b: str) -> tuple[str, str]: ...   # (s, c) += b, compensated
    def var(self, expr: str, name: str | None = None, const: bool = True) -> str: ...
    # a temporary (``name``: its C spelling when the C text should keep one; ``const=False``:
    # it is assigned again)
    def assign(self, dst: str, expr: str) -> str: ...     # state/temporary dst takes expr
    def if_any_gt(self, a: str, b: str) -> AbstractContextManager: ...
    # what follows may be skipped when no lane of a exceeds b's (it must be a no-op there)
    def hmax(self, v: str) -> object: ...                 # max over the lanes
    def hsum(self, v: str) -> object: ...                 # sum over the lanes
    def result(self, res: list[str], i: int, value: object) -> None: ...   # row scalar res[i]


class Reduction:
    """One reduction node of a program: ``r`` its node, ``scale`` its attribute (1.0: none)."""
    op = ""
    fields: tuple[str, ...] = ()
    outer: tuple[str, ...] = ()
    compensated = ""               # the outer field whose compensation is ``c`` ("": none)
    identity = 0.0                 # the neutral input (masked tail lanes take it)
    blocked = True                 # per block: merge the accumulators, fold into the outer state
    partial = False                # a sum: its lane chains are flushed into per-block partials
    kept: tuple[str, ...] = ()     # the fields ``flush`` leaves in the accumulator
    replicated = True              # one state per schedule accumulator

    def __init__(self, r: int = 0, scale: float = 1.0, attrs: dict | None = None):
        self.r, self.scale, self.attrs = r, scale, attrs or {}

    def init(self, f: str) -> float: ...

    def outer_init(self, f: str) -> float:
        return 0.0 if f == "c" else self.init(f)

    def constants(self) -> list[tuple[str, float]]:
        """Per-sweep constants of the reduction besides its scale, as (name, value)."""
        return []

    def scaled(self, e: Emitter, v: str) -> str:
        """s v (v itself when there is no scale)."""
        return v if self.scale == 1.0 else e.mul(v, e.scale(self))

    def update(self, e: Emitter, st: dict, xs: list) -> dict: ...
    def merge(self, e: Emitter, d: dict, s: dict) -> dict: ...
    def fold(self, e: Emitter, o: dict, a: dict) -> dict: ...
    def finish(self, e: Emitter, o: dict, res: list[str]) -> None: ...

    def flush(self, e: Emitter, p: dict, a: dict) -> tuple[dict, dict]:
        """Accumulator ``a`` joins its block partial ``p`` (same fields, starting at ``init``) and
        its chains restart: returns the new ``(p, a)``. A field that only grows within a block (an
        exponent, a max) stays in ``a``, and ``p`` takes it: ``p``'s copy is an earlier value."""
        raise TypeError(f"{self.op} has no block partial")

    def merge_outer(self, e: Emitter, o: dict, q: dict) -> dict:
        a = {f: e.sub(q[f], q["c"]) if f == self.compensated else q[f] for f in self.fields}
        return self.fold(e, o, a)

    def column_update(self, e: Emitter, st: dict, x: str) -> dict:
        return self.update(e, st, [x])


class MaxRed(Reduction):
    op, fields, outer, identity = "reduce_max", ("m",), ("m",), -math.inf

    def init(self, f): return -math.inf

    def update(self, e, st, xs):
        m = st["m"]
        for x in xs:
            m = e.assign(st["m"], e.max(m, x))
        return {"m": m}

    def merge(self, e, d, s): return {"m": e.assign(d["m"], e.max(d["m"], s["m"]))}
    def fold(self, e, o, a): return {"m": e.assign(o["m"], e.max(o["m"], a["m"]))}
    def finish(self, e, o, res): e.result(res, 0, e.hmax(o["m"]))


class SumRed(Reduction):
    op, fields, outer, identity = "reduce_sum", ("s",), ("s", "c"), 0.0
    compensated = "s"

    def init(self, f): return 0.0

    def update(self, e, st, xs):
        s = st["s"]
        for x in xs:
            s = e.assign(st["s"], e.add(s, x))
        return {"s": s}

    partial = True

    def merge(self, e, d, s): return {"s": e.assign(d["s"], e.add(d["s"], s["s"]))}

    def flush(self, e, p, a):
        return self.merge(e, p, a), {"s": e.assign(a["s"], e.const(0.0))}

    def fold(self, e, o, a):
        s, c = e.kahan(o["s"], o["c"], a["s"])
        return {"s": s, "c": c}

    def finish(self, e, o, res): e.result(res, 0, e.hsum(e.sub(o["s"], o["c"])))


class ExtExpRed(Reduction):
    """sum e^(s x) as (v, e), e^(s x) = p 2^n summed as v 2^e (docs/ops.md §2.1): every lane keeps a value
    and an exponent; one exponent max per group of slots."""
    op, fields, outer, identity = "reduce_extexp", ("v", "e"), ("v", "e", "c"), -math.inf
    compensated = "v"
    partial, kept = True, ("e",)

    def init(self, f): return 0.0 if f == "v" else EXTEXP_E0

    def constants(self):
        """The clamp of x, below which e^(s x) leaves the extexp domain (x is clamped first)."""
        return [("lim", -EXTEXP_DOMAIN / self.scale)] if self.scale != 1.0 else []

    def update(self, e, st, xs):
        terms = [e.extexp_terms(self, x, j) for j, x in enumerate(xs)]
        em = e.var(e.max(st["e"], terms[0][0]), "em", const=False)
        for n, _ in terms[1:]:
            em = e.assign(em, e.max(em, n))
        v = e.assign(st["v"], e.scale2(st["v"], e.sub(st["e"], em)))
        for n, p in terms:
            v = e.assign(st["v"], e.scale2_add(v, p, e.sub(n, em)))
        return {"v": v, "e": e.assign(st["e"], em)}

    def merge(self, e, d, s):
        m = e.var(e.max(d["e"], s["e"]))
        v = e.assign(d["v"], e.add(e.scale2(d["v"], e.sub(d["e"], m)), e.scale2(s["v"], e.sub(s["e"], m))))
        return {"v": v, "e": e.assign(d["e"], m)}

    def flush(self, e, p, a):
        """a's exponent e only grows, p's is an earlier value of it: p's v is scaled to a's e."""
        v = e.assign(p["v"], e.add(e.scale2(p["v"], e.sub(p["e"], a["e"])), a["v"]))
        return {"v": v, "e": e.assign(p["e"], a["e"])}, {"v": e.assign(a["v"], e.const(0.0)), "e": a["e"]}

    def fold(self, e, o, a):
        m = e.var(e.max(o["e"], a["e"]))
        d = e.var(e.sub(o["e"], m))
        v = e.assign(o["v"], e.scale2(o["v"], d))
        c = e.assign(o["c"], e.scale2(o["c"], d))
        v, c = e.kahan(v, c, e.scale2(a["v"], e.sub(a["e"], m)))
        return {"v": v, "e": e.assign(o["e"], m), "c": c}

    def finish(self, e, o, res):
        e.result(res, 1, e.hmax(o["e"]))
        e.result(res, 0, e.hsum(e.scale2(e.sub(o["v"], o["c"]), e.sub(o["e"], e.splat(res[1])))))


class OnlineRed(Reduction):
    """(m, d), d = sum e^(s (x - m)): one rescale per group of slots (the blocked form of docs/ops.md §3).
    m starts at -FLT_MAX, not -inf, so (-inf) - m is -inf and no -inf - -inf guard is needed."""
    op, fields, outer, identity = "reduce_online", ("m", "d"), ("m", "d", "c"), -math.inf
    compensated = "d"
    partial, kept = True, ("m",)

    def init(self, f): return -FLT_MAX if f == "m" else 0.0

    def _exp(self, e, a, m):
        """e^(s (a - m)), a <= m."""
        return e.exp_nonpos(self.scaled(e, e.sub(a, m)))

    def update(self, e, st, xs):
        mn = e.var(e.max(st["m"], xs[0]), "mn", const=False)
        for x in xs[1:]:
            mn = e.assign(mn, e.max(mn, x))
        d = e.assign(st["d"], e.mul(st["d"], self._exp(e, st["m"], mn)))
        for x in xs:
            d = e.assign(st["d"], e.add(d, self._exp(e, x, mn)))
        return {"m": e.assign(st["m"], mn), "d": d}

    def column_update(self, e, st, x):
        """A column's max rarely grows after the first rows: the rescale may be skipped when no
        lane's does (it multiplies by e^0 = 1 there; a NaN state stays NaN in d)."""
        mn = e.var(e.max(st["m"], x), "mn")
        d = st["d"]
        with e.if_any_gt(mn, st["m"]):
            d = e.assign(st["d"], e.mul(d, self._exp(e, st["m"], mn)))
        d = e.assign(st["d"], e.add(d, self._exp(e, x, mn)))
        return {"m": e.assign(st["m"], mn), "d": d}

    def merge(self, e, d, s):
        mn = e.var(e.max(d["m"], s["m"]))
        fd = self._exp(e, d["m"], mn)
        fs = self._exp(e, s["m"], mn)
        dd = e.assign(d["d"], e.fma(d["d"], fd, e.mul(s["d"], fs)))
        return {"m": e.assign(d["m"], mn), "d": dd}

    def flush(self, e, p, a):
        """a's max m only grows, p's is an earlier value of it: p's d is rescaled to a's m where it
        moved, which it rarely does after a block's first steps (the exp is skipped when no lane's
        did: e^0 = 1 there)."""
        d = p["d"]
        with e.if_any_gt(a["m"], p["m"]):
            d = e.assign(p["d"], e.mul(d, self._exp(e, p["m"], a["m"])))
        d = e.assign(p["d"], e.add(d, a["d"]))
        return {"m": e.assign(p["m"], a["m"]), "d": d}, {"m": a["m"], "d": e.assign(a["d"], e.const(0.0))}

    def fold(self, e, o, a):
        mn = e.var(e.max(o["m"], a["m"]))
        f = e.var(self._exp(e, o["m"], mn))
        b = e.mul(a["d"], self._exp(e, a["m"], mn))   # no var: nothing below assigns its inputs
        d = e.assign(o["d"], e.mul(o["d"], f))
        c = e.assign(o["c"], e.mul(o["c"], f))
        d, c = e.kahan(d, c, b)
        return {"m": e.assign(o["m"], mn), "d": d, "c": c}

    def finish(self, e, o, res):
        e.result(res, 0, e.hmax(o["m"]))
        e.result(res, 1, e.hsum(e.mul(e.sub(o["d"], o["c"]), self._exp(e, o["m"], e.splat(res[0])))))


REDUCTIONS: dict[str, type[Reduction]] = {c.op: c for c in (MaxRed, SumRed, ExtExpRed, OnlineRed)}


def reduction(op: str, r: int, attrs: dict) -> Reduction:
    """The reduction of IR op ``op`` (``reduce_*`` or ``colreduce_*``) at node ``r``."""
    cls = REDUCTIONS[op.replace("colreduce_", "reduce_")]
    return cls(r, attrs.get("scale", 1.0), attrs)
