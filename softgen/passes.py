"""Passes over the IR: cleanup, algorithm rewrites, analyses and the memory-sweep planner.

Algorithms are IR-to-IR rewrites of one op definition, not hand-written kernels:

* ``three-pass-recompute``: the program as written. The planner recomputes row values in each
  sweep that needs them: max | sum | write  ->  3R + 1W.
* ``three-pass-reload``: the row value shared by the sum sweep and the output sweep is
  *materialised* into y and reloaded  ->  3R + 2W.
* ``two-pass``: (max, sum of exp) is replaced by the extended-exponent sum (V, E) of s*x; exp(z)
  becomes exp(s x) 2^-E and z becomes s x - E ln2; a guard falls back to three-pass when |E| is
  outside the f32 exp's accurate domain  ->  2R + 1W.
* ``online``: (max, sum of exp) is replaced by the fused running (m, d) reduction  ->  2R + 1W.

Each rewrite matches the *softmax normaliser motif* ``S = sum(exp((X - max X) * s))``, so any op
containing it (softmax, log-softmax, and later LSE-based ops) gets every algorithm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import UsageError
from .ir import PAIR, ROW, SCALAR, IRError, Program
from .matrix import AttentionPhase, MatMul, MatMulPhase, RowsPhase, SweepPhase, map_phases, written_by
from .numerics.constants import EXTEXP_DOMAIN

# Guard for the two-pass kernels: elements that contribute to the sum lie within ~128 binades of
# 2^E, so |E| <= 2^17 log2(e) - 200 keeps them inside |x| <= 2^17, where the f32 exp reduction is
# accurate (docs/ops.md §2.4, EXTEXP_F32_DOMAIN). Rows outside are recomputed with three-pass.
EXTEXP_F32_DOMAIN = float(EXTEXP_DOMAIN)   # 2^17
EXTEXP_GUARD_E = math.floor(EXTEXP_F32_DOMAIN / math.log(2.0)) - 200


# -- cleanup ----------------------------------------------------------------------------------

def simplify(p: Program) -> Program:
    """Drop multiplications by 1 and fold scalar-constant arithmetic; remove dead nodes."""
    for v in p.topo():
        if v not in p.g:
            continue
        op, args = p.op(v), p.args(v)
        consts = [p.const_value(a) for a in args]
        if op == "mul" and 1.0 in consts:
            keep = args[1] if consts[0] == 1.0 else args[0]
            p.replace_uses(v, keep)
        elif p.kind(v) == "map" and args and all(c is not None for c in consts):
            val = _fold(op, consts)
            if val is not None and math.isfinite(val):
                p.replace_uses(v, p.const(val))
    p.remove_dead()
    return p


def _fold(op, c):
    try:
        return {"add": lambda: c[0] + c[1], "sub": lambda: c[0] - c[1], "mul": lambda: c[0] * c[1],
                "div": lambda: c[0] / c[1], "neg": lambda: -c[0], "recip": lambda: 1.0 / c[0],
                "exp": lambda: math.exp(c[0]), "log": lambda: math.log(c[0])}[op]()
    except (KeyError, ZeroDivisionError, ValueError, OverflowError):
        return None


# -- the motif ----------------------------------------------------------------------------------

@dataclass
class Motif:
    X: int      # the row being normalised
    M: int      # reduce_max(X)
    D: int      # X - M
    Z: int      # D * s (== D when s == 1)
    E: int      # exp(Z)
    S: int      # reduce_sum(E)
    scale: float


def find_motifs(p: Program) -> list[Motif]:
    found = []
    for S in p.nodes("reduce_sum"):
        (E,) = p.args(S)
        if p.op(E) != "exp":
            continue
        (Z,) = p.args(E)
        scale, D = 1.0, Z
        if p.op(Z) == "mul":
            a, b = p.args(Z)
            if p.const_value(b) is None or p.const_value(b) <= 0 or p.shape(a) != ROW:
                continue
            D, scale = a, p.const_value(b)
        if p.op(D) != "sub":
            continue
        X, M = p.args(D)
        if p.op(M) == "reduce_max" and p.args(M) == (X,) and p.shape(X) == ROW:
            found.append(Motif(X, M, D, Z, E, S, scale))
    return found


# -- algorithm rewrites -------------------------------------------------------------------------

def rewrite_online(p: Program) -> Program:
    """(max, sum exp(s(x - max))) -> one fused (m, d) reduction; 2 sweeps."""
    for m in find_motifs(p):
        r = p.add("reduce_online", m.X, scale=m.scale)
        p.replace_uses(m.M, p.add("item", r, index=0))
        p.replace_uses(m.S, p.add("item", r, index=1))
    p.notes.append("online: max and sum fused into a running (m, d) reduction")
    p.remove_dead()
    return p


def rewrite_extexp(p: Program) -> Program:
    """(max, sum exp(z)) -> extended-exponent sum (V, E) of u = s x; no max pass; 2 sweeps."""
    fallback = p.copy(p.name)
    for m in find_motifs(p):
        if p.users(m.M) != [m.D] or (m.D != m.Z and p.users(m.D) != [m.Z]):
            continue  # the max itself is used elsewhere: the rewrite would not remove its pass
        # The scale stays an attribute of the exp-like nodes instead of a mul node: backends then
        # carry s*x as an exact hi + lo pair (FMA), so no |s x| 2^-24 error enters e^(s x).
        r = p.add("reduce_extexp", m.X, scale=m.scale)
        V, E = p.add("item", r, index=0), p.add("item", r, index=1)
        others_e = set(p.users(m.E)) - {m.S}
        if others_e:
            p.replace_uses(m.E, p.add("exp_shift2", m.X, E, scale=m.scale), only=others_e)
        others_z = set(p.users(m.Z)) - {m.E}
        # log-probabilities z - log S are <= 0 by construction (z <= 0; S >= 1, one term is an
        # exact 1); their extended form s x - E ln2 - log V is not: e^t and log V round apart,
        # by up to ~1.5e-7 (log_softmax([[5]]) was 8.9e-8). One min per element restores it,
        # paid for by taking - log V into sub_ln2's row scalar c, where ln2's low-part FMA
        # joins it outside the loop; 0 first: a vector min returns its 2nd operand on NaN.
        log_probs = [u for u in others_z if p.op(u) == "sub" and p.args(u)[0] == m.Z
                     and p.op(p.args(u)[1]) == "log" and p.args(p.args(u)[1]) == (m.S,)]
        rest = others_z - set(log_probs)
        if rest:
            p.replace_uses(m.Z, p.add("sub_ln2", m.X, E, p.const(0.0), scale=m.scale), only=rest)
        p.replace_uses(m.S, V)
        for u in log_probs:
            c = p.add("neg", p.args(u)[1])                                    # - log V
            p.replace_uses(u, p.add("min", p.const(0.0), p.add("sub_ln2", m.X, E, c, scale=m.scale)))
        p.add("guard", E, limit=float(EXTEXP_GUARD_E))
    p.fallback = fallback
    p.notes.append(f"two-pass: extended-exponent sum; rows with |E| > {EXTEXP_GUARD_E} "
                   f"(|x| beyond 2^17) fall back to three-pass-recompute")
    p.remove_dead()
    return p


def rewrite_reload(p: Program) -> Program:
    """Materialise the motif's row value that the output sweep needs, instead of recomputing it.
    Skipped where a later sweep still reads x (y may be x): top-k's membership test."""
    q = p.copy()
    for m in find_motifs(q):
        links = [(m.E, m.S), (m.Z, m.E)] + ([(m.D, m.Z)] if m.D != m.Z else [])
        for v, nxt in links:
            others = set(q.users(v)) - {nxt}
            if others:
                q.replace_uses(v, q.add("materialize", v), only=others)
                break
    return _if_in_place_safe(p, q, "three-pass-reload: the shared row value is stored to y and reloaded")


def rewrite_reload_direct(p: Program) -> Program:
    """Motif-free programs: materialise each reduced row value that the output sweep needs, so
    its per-element chain (e.g. softplus's exp and log1p) runs once instead of twice, for one
    more write and read of y. Skipped where a later sweep still reads x (y may be x). A map of
    the reduced value, x and constants alone is stored instead of the value (the later sweep
    then needs no x): softplus_l1 stores "softplus where > 0, else x", so that its guard's
    fallback, which reads x after the stores, finds x in y wherever it runs."""
    q = p.copy()
    inputs = set(q.nodes("input"))
    for r in q.nodes():
        for v in (q.args(r) if q.kind(r) == "reduce" else ()):
            stored = q.kind(v) == "input" or q.op(v) == "materialize"   # already in memory
            others = set() if stored else set(q.users(v)) - {r}
            for w in sorted(others):
                if q.kind(w) == "map" and all(a == v or a in inputs or q.op(a) == "const"
                                              for a in q.args(w)):
                    q.replace_uses(w, q.add("materialize", w))
                    others.discard(w)
            if others:
                q.replace_uses(v, q.add("materialize", v), only=others)
    return _if_in_place_safe(p, q, "direct-reload: the summed row value is stored to y and reloaded")


def _if_in_place_safe(p: Program, q: Program, note: str) -> Program:
    """``q`` (``p`` with row values materialised into y), unless that makes a sweep read x after
    y was written: y may be x (in place), so that sweep would read the stored values instead.
    Then ``p`` as written, which recomputes them."""
    name = note.split(":")[0]
    if not q.nodes("materialize"):
        p.notes.append(f"{name}: no reduced row value is needed later; nothing to materialise")
        return p
    q.remove_dead()
    clash = plan(q, in_place=False).in_place_hazard()
    if clash:
        p.notes.append(f"{name}: {clash}, so nothing is materialised (y may be x)")
        return p
    q.notes.append(note)
    return q


ALGORITHMS = {
    "direct": None,               # the program as written, for ops without the normaliser motif
    "direct-reload": rewrite_reload_direct,
    "three-pass-recompute": None,
    "three-pass-reload": rewrite_reload,
    "two-pass": rewrite_extexp,
    "online": rewrite_online,
}
ALIASES = {"3p-recompute": "three-pass-recompute", "recompute": "three-pass-recompute",
           "3p-reload": "three-pass-reload", "reload": "three-pass-reload",
           "2p": "two-pass", "extexp": "two-pass", "two-pass-extexp": "two-pass"}
SHORT = {"direct": "d", "direct-reload": "dl", "three-pass-recompute": "3pc", "three-pass-reload": "3pl", "two-pass": "2p",
         "online": "online"}


def applicable_algorithms(p: Program) -> list[str]:
    """The softmax algorithms when the program has the normaliser motif (the program as written
    is then ``three-pass-recompute``), else ``direct`` and ``direct-reload``."""
    direct = ["direct", "direct-reload"]
    algs = [a for a in ALGORITHMS if a not in direct] if find_motifs(p) else direct
    if p.nodes("output_selected"):  # no output row to store into and reload from
        algs = [a for a in algs if a not in ("direct-reload", "three-pass-reload")]
    return algs


def apply_algorithm(p: Program, algorithm: str) -> Program:
    algorithm = ALIASES.get(algorithm, algorithm)
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    if algorithm not in applicable_algorithms(p):
        raise UsageError(f"algorithm {algorithm!r} does not apply to op {p.name!r}")
    q = simplify(p.copy())
    rewrite = ALGORITHMS[algorithm]
    if rewrite is not None:
        q = simplify(rewrite(q))
    if q.fallback is not None:
        q.fallback = annotate_ranges(simplify(q.fallback))
    return annotate_ranges(q).validate()


# -- analyses -------------------------------------------------------------------------------------

def annotate_ranges(p: Program) -> Program:
    """Mark exp nodes whose argument is provably <= 0 (or NaN): x - max(x) scaled by s > 0, -|z|.
    Backends use a cheaper exp there (no overflow path), and a cheaper log1p on such an exp's
    result, which lies in [0, 1] (or is NaN): no reduction of 1 + u, no special cases."""
    for v in p.nodes("exp"):
        (a,) = p.args(v)
        if p.op(a) == "mul" and (p.const_value(p.args(a)[1]) or 0) > 0:
            a = p.args(a)[0]
        nonpos = _nonpos(p, a)                                       # exp(-|z|), exp(-max(z, 0) s)
        if p.op(a) == "sub":
            x, m = p.args(a)
            src = p.op(m)
            if src == "reduce_max" and p.args(m) == (x,):
                nonpos = True
            elif src == "item" and p.attrs(m)["index"] == 0 and p.op(p.args(m)[0]) == "reduce_online":
                nonpos = p.args(p.args(m)[0]) == (x,)
            elif src == "item" and p.attrs(m)["index"] == 2 and p.op(p.args(m)[0]) == "reduce_topk":
                nonpos = p.args(p.args(m)[0])[0] == x   # m is the largest key
        p.attrs(v)["nonpos"] = nonpos
    for v in p.nodes("log1p"):
        (a,) = p.args(v)
        p.attrs(v)["unit"] = p.op(a) == "exp" and p.attrs(a)["nonpos"]
    return p


def max_shifted(p: Program, v: int) -> bool:
    """Whether exp node ``v`` is e^(s (x - max x)), s > 0, of its row x (the max from reduce_max
    or the online pair's m): its largest term is exactly e^0 = 1, so a sum of its terms is >= 1
    and its tiny terms may be subnormal (backends: vmath.h.j2 sg_exp_shifted) without making a
    reciprocal of the sum overflow."""
    (a,) = p.args(v)
    if p.op(a) == "mul" and (p.const_value(p.args(a)[1]) or 0) > 0:
        a = p.args(a)[0]
    if p.op(a) != "sub":
        return False
    x, m = p.args(a)
    if p.op(m) == "reduce_max":
        return p.args(m) == (x,)
    return (p.op(m) == "item" and p.attrs(m)["index"] == 0 and p.op(p.args(m)[0]) == "reduce_online"
            and p.args(p.args(m)[0]) == (x,))


def _nonneg(p: Program, v: int) -> bool:
    """v >= 0 or NaN, by construction: |z|, max(z, c >= 0), e^z, products of such, c >= 0, and
    a < b ? z : a (b >= 0: a is taken only when a >= b or NaN) for such z."""
    op, args = p.op(v), p.args(v)
    c = p.const_value(v)
    if c is not None:
        return c >= 0
    if op in ("abs", "exp"):
        return True
    if op == "max":
        return any(p.const_value(a) is not None and p.const_value(a) >= 0 for a in args)
    if op == "where_lt":
        a, b, then, other = args
        b_min = p.const_value(b)
        return _nonneg(p, then) and (_nonneg(p, other) or (other == a and b_min is not None and b_min >= 0))
    return op == "mul" and all(_nonneg(p, a) for a in args)


def _nonpos(p: Program, v: int) -> bool:
    """v <= 0 or NaN, by construction: -z and z * c (c <= 0) for z >= 0."""
    op, args = p.op(v), p.args(v)
    if op == "neg":
        return _nonneg(p, args[0])
    if op == "mul":
        a, b = args
        return (_nonneg(p, a) and (p.const_value(b) if p.const_value(b) is not None else 1.0) <= 0) \
            or (_nonneg(p, b) and (p.const_value(a) if p.const_value(a) is not None else 1.0) <= 0)
    return False


# -- the memory-pass planner ----------------------------------------------------------------------

@dataclass
class Sweep:
    index: int
    compute: list[int]            # row nodes evaluated per element, in order
    reductions: list[int]
    stores: list[int]             # materialize nodes written to y
    reloads: list[int]            # materialize nodes read back from y
    output: int | None
    reads_x: bool
    scalars_after: list[int] = field(default_factory=list)
    colreds: list[int] = field(default_factory=list)     # column reductions updated per element
    colstores: list[int] = field(default_factory=list)   # per-column vectors written
    # an output_selected sweep: runs over the k selected entries of the row, not over the row
    selected: int | None = None   # its reduce_topk

    @property
    def reads(self) -> int:
        return int(self.reads_x) + len(self.reloads)

    @property
    def writes(self) -> int:
        return len(self.stores) + (self.output is not None and self.selected is None)


@dataclass
class Plan:
    program: Program
    sweeps: list[Sweep]
    scalars_before: list[int]

    @property
    def reads(self) -> int:
        return sum(s.reads for s in self.sweeps)

    @property
    def writes(self) -> int:
        return sum(s.writes for s in self.sweeps)

    @property
    def bytes_per_element(self) -> int:
        return 4 * (self.reads + self.writes)

    def exps_per_element(self) -> int:
        p, n = self.program, 0
        for s in (s for s in self.sweeps if s.selected is None):  # not per element
            n += sum(p.op(v) in ("exp", "exp_shift2") for v in s.compute)
            n += sum(p.op(v) in ("reduce_extexp", "reduce_online") for v in s.reductions)
            n += 2 * sum(p.op(v) == "colreduce_online" for v in s.colreds)
        return n

    def in_place_hazard(self) -> str:
        """Why running in place (y = x) would change the result, or "": a sweep that reads x
        after an earlier sweep wrote y would read what was written instead of x."""
        written = [s.index for s in self.sweeps
                   if s.stores or (s.output is not None and s.selected is None)]
        late = [s.index for s in self.sweeps if s.reads_x and written and s.index > written[0]]
        return f"sweep {late[0]} reads x after sweep {written[0]} wrote y" if late else ""

    @property
    def writes_per_row(self) -> int:
        """Writes per row independent of n: an index and a weight per selected entry."""
        return sum(2 * self.program.attrs(s.selected)["k"] for s in self.sweeps if s.selected is not None)

    def traffic(self) -> dict:
        t = {"passes": len(self.sweeps), "reads": self.reads, "writes": self.writes,
             "bytes_per_element": self.bytes_per_element, "exp_per_element": self.exps_per_element(),
             "summary": f"{self.reads}R + {self.writes}W"}
        if self.writes_per_row:
            t["writes_per_row"] = self.writes_per_row
            t["summary"] = f"{self.reads}R + {self.writes}W + {self.writes_per_row} writes/row"
        return t

    def _io(self, s) -> tuple[list[str], list[str]]:
        """What sweep ``s`` reads and what it writes, in words."""
        if s.selected is not None:
            k = self.program.attrs(s.selected)["k"]
            return [f"the {k} selected entries"], [f"indices and weights ({k} each)"]
        return ((["x"] if s.reads_x else []) + ["y (reload)"] * len(s.reloads),
                ["y (store)"] * len(s.stores) + (["y"] if s.output is not None else []))

    def __repr__(self) -> str:
        """One line for the plan, then one per sweep: what it reads and writes, what it reduces."""
        p, t = self.program, self.traffic()
        out = [f"Plan({p.name}: {t['passes']} sweeps, {t['summary']} = {t['bytes_per_element']} B/element, "
               f"{t['exp_per_element']} exp/element)"]
        for s in self.sweeps:
            bufs, wr = self._io(s)
            red = f"; reduces {', '.join(p.op(v) for v in s.reductions + s.colreds)}" \
                if s.reductions or s.colreds else ""
            out.append(f"  sweep {s.index}: reads {', '.join(bufs) or '-'}; writes {', '.join(wr) or '-'}{red}")
        return "\n".join(out)

    def describe(self) -> str:
        p = self.program
        name = lambda v: f"%{v} {p.op(v)}"
        out = []
        for s in self.sweeps:
            bufs, wr = self._io(s)
            out.append(f"sweep {s.index}: reads {', '.join(bufs) or '-'}; writes {', '.join(wr) or '-'}")
            out.append(f"  per element: {', '.join(name(v) for v in s.compute) or '-'}")
            if s.reductions:
                out.append(f"  reduces: {', '.join(name(v) for v in s.reductions)}")
            if s.colreds or s.colstores:
                out.append(f"  per column: {', '.join(name(v) for v in s.colreds + s.colstores)}")
            if s.scalars_after:
                out.append(f"  then per row: {', '.join(name(v) for v in s.scalars_after)}")
        t = self.traffic()
        out.append(f"traffic: {t['summary']} = {t['bytes_per_element']} B/element (f32, no RFO), "
                   f"{t['passes']} passes, {t['exp_per_element']} exp/element")
        return "\n".join(out)


# -- schedule lazymax: three-pass-reload without the full-row max sweep -----------------------------

LAZY_FIRST = 64      # elements whose max is the first reference (bench/results/lazymax-*: 64 beat a 4096 block at 4K)
LAZY_SLACK = 16.0    # the exps' argument s (x - r) may reach this above 0 before the reference r moves
LAZY_RECORDS = 16    # references kept per row (the older ones' segments round to 0: docs/ops.md §3)


@dataclass(frozen=True)
class LazyMax:
    """A plan that schedule ``lazymax`` can run with a running reference instead of the row max
    (docs/ops.md §3.1, "lazy max"): sweep 0 is the row max alone (then taken over the row's first
    LAZY_FIRST elements only: r), sweep 1 stores and sums e^(s (x - r)) (``max_shifted``), moving r to a group
    of vectors' max (and rescaling its partial sums) where x exceeds r + LAZY_SLACK / s, sweep 2
    multiplies the reloaded terms by a row scalar of the sum alone, times e^(s (r_k - r)) on
    the elements stored under an earlier reference r_k."""
    x: int           # the row (input)
    m: int           # its reduce_max (sweep 0)
    d: int           # x - m (sweep 1)
    s: int           # reduce_sum of the exps (sweep 1)
    scale: float     # s of e^(s (x - m))
    factor: int      # the row scalar sweep 2 multiplies by (of the sum alone)


def lazy_max(pl: Plan) -> "LazyMax | str":
    """``pl``'s ``LazyMax`` form, or why it has none (a sentence)."""
    p = pl.program
    motifs = find_motifs(p)
    if len(motifs) != 1 or len(pl.sweeps) != 3:
        return "the plan is not three-pass-reload over one softmax normaliser"
    mt, (s0, s1, s2) = motifs[0], pl.sweeps
    if s0.reductions != [mt.M] or s0.stores or s0.output is not None or s0.colreds or p.users(mt.M) != [mt.D]:
        return "the row max is used beyond x - max x"
    if s1.reductions != [mt.S] or s1.output is not None or s1.colreds or s1.colstores \
            or [p.args(v)[0] for v in s1.stores] != [mt.E] or not max_shifted(p, mt.E):
        return "its second sweep does more than store and sum e^(s (x - max x))"
    if s2.reads_x or s2.reductions or s2.colreds or s2.reloads != s1.stores or s2.output is None \
            or p.op(p.args(s2.output)[0]) != "mul" or s2.compute != [p.args(s2.output)[0]]:
        return "its output is not the stored exps times a row scalar"
    a, b = p.args(p.args(s2.output)[0])
    factor = b if a == s2.reloads[0] else a
    if p.shape(factor) == ROW or _reductions_of(p, factor) != {mt.S} or p.row_params():
        return "the output's factor depends on more than the sum"
    return LazyMax(mt.X, mt.M, mt.D, mt.S, mt.scale, factor)


# -- schedule pipeline: a row's output sweep in the next row's loop -----------------------------------

def pipeline_refusal(pl: Plan) -> str:
    """Why plan ``pl`` cannot run pipelined over a batch ("" when it can): its last sweep must be
    an output sweep without reductions after another sweep (it then runs in the loop of the next
    row's sweep before it), and no row may leave the pipeline (a guard's fallback) or keep state
    the pipeline does not carry (per-row parameters, selections, columns, top-k lists)."""
    p, sweeps = pl.program, pl.sweeps
    if p.phase is not None:
        return "a phase of a matrix program"
    if p.row_params():
        return "it has per-row parameters"
    if p.fallback is not None:
        return "a row may restart in the fallback (two-pass's guard)"
    for sw in sweeps:
        if sw.selected is not None or sw.colreds or sw.colstores:
            return "a sweep over a selection or columns"
        if any(p.op(r) == "reduce_topk" for r in sw.reductions):
            return "top-k keeps per-lane sorted lists"
    if len(sweeps) < 2 or sweeps[-1].reductions or sweeps[-1].output is None:
        return "its last sweep is not an output sweep after another sweep"
    return ""


def _reductions_of(p: Program, v: int) -> set[int]:
    """The reductions row scalar ``v`` is computed from (through scalar ops)."""
    seen, found, stack = set(), set(), [v]
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        if p.kind(u) == "reduce" or p.shape(u) == ROW:
            found.add(u)
        else:
            stack.extend(p.args(u))
    return found


def plan(p: Program, in_place: bool = True) -> Plan:
    """Group the program into sweeps over the row. A reduction's result is available after its
    sweep; row values are recomputed in every sweep that needs them unless materialised.
    ``in_place``: refuse a plan whose result would change with y = x (``Plan.in_place_hazard``);
    row kernels promise that y may be x."""
    level: dict[int, int] = {}     # row nodes: the sweep that can first compute them
    avail: dict[int, int] = {}     # scalars: available before sweep avail[v]
    for v in p.topo():
        kind, args = p.kind(v), p.args(v)
        if kind in ("const", "param", "size", "mscalar"):
            avail[v] = 0
        elif kind in ("input", "colvec", "matrow"):
            level[v] = 0
        elif kind == "reduce":
            avail[v] = level[args[0]] + 1
        elif kind in ("item", "guard", "emit", "mreduce"):
            avail[v] = avail[args[0]]
        elif p.shape(v) == ROW:  # map, materialize, output
            level[v] = max([level[a] for a in args if a in level] + [avail[a] for a in args if a in avail])
        else:  # scalar map
            avail[v] = max(avail[a] for a in args)
    sinks = ("reduce", "materialize", "output", "colstore", "colreduce")
    roots = [v for v in p.g if p.kind(v) in sinks]
    nsweeps = max(level[v] if v in level else level[p.args(v)[0]] for v in roots) + 1
    sweeps = []
    for k in range(nsweeps):
        reds = [v for v in p.topo() if p.kind(v) == "reduce" and level[p.args(v)[0]] == k]
        stores = [v for v in p.topo() if p.op(v) == "materialize" and level[v] == k]
        outs = [v for v in p.topo() if p.kind(v) == "output" and level[v] == k]
        colreds = [v for v in p.topo() if p.kind(v) == "colreduce" and level[v] == k]
        colstores = [v for v in p.topo() if p.op(v) == "colstore" and level[v] == k]
        need, reloads = set(), set()
        stack = [a for v in reds + stores + outs + colreds + colstores for a in p.args(v)
                 if p.shape(a) == ROW]
        while stack:
            v = stack.pop()
            if v in need or p.shape(v) != ROW:
                continue
            if p.op(v) == "materialize" and level[v] < k:
                reloads.add(v)
                continue
            need.add(v)
            stack.extend(p.args(v))
        compute = [v for v in p.topo() if v in need]
        selected = p.args(outs[0])[0] if outs and p.op(outs[0]) == "output_selected" else None
        if selected is not None and (reds or stores or reloads):
            raise IRError(f"{p.name}: sweep {k} evaluates a selected output over the selected "
                          f"entries; it cannot also reduce, store or reload the row")
        sweeps.append(Sweep(k, compute, reds, stores, sorted(reloads), outs[0] if outs else None,
                            reads_x=selected is None and any(p.op(v) == "input" for v in compute),
                            selected=selected, colreds=colreds, colstores=colstores))
    scalars = [v for v in p.topo() if p.shape(v) in (SCALAR, PAIR) and p.kind(v) not in ("const", "reduce")]
    for s in sweeps:
        s.scalars_after = [v for v in scalars if avail[v] == s.index + 1]
    before = [v for v in scalars if avail[v] == 0]
    pl = Plan(p, sweeps, before)
    clash = pl.in_place_hazard() if in_place else ""
    if clash:
        raise IRError(f"{p.name}: {clash}, which may be x (in place)")
    return pl


# -- matrix programs ------------------------------------------------------------------------------

def _fuse_into(a: Program, b: Program) -> Program:
    """Program ``a`` followed by ``b`` on the same row: b's input is a's, b's reads of a per-row
    vector a emits are a's scalar itself (no store and reload)."""
    q = a.copy()
    emitted = {q.attrs(v)["name"]: q.args(v)[0] for v in q.nodes("emit")}
    (x,) = q.nodes("input") or (None,)
    m: dict[int, int] = {}
    for v in b.topo():
        op, attrs = b.op(v), dict(b.attrs(v))
        if op == "input" and x is not None:
            m[v] = x
        elif op == "param" and attrs["name"] in emitted:
            m[v] = emitted[attrs["name"]]
        elif op in ("param", "colvec", "mscalar", "index", "row_index", "matrow"):   # leaves: one node each
            m[v] = q._leaf(op, **attrs).id
        else:
            m[v] = q.add(op, *[m[u] for u in b.args(v)], **attrs)
            if op == "input":
                x = m[v]
    q.notes = a.notes + b.notes
    return q


def _fusable_rows(a, b) -> bool:
    """Whether rows phase ``b`` can run on each row right after ``a`` (one row program): same
    matrix, b reads nothing a produces across the rows (column vectors, per-matrix scalars), and
    at most one output, which does not overwrite the rows b still reads."""
    if not (isinstance(a, RowsPhase) and isinstance(b, RowsPhase) and a.over == b.over):
        return False
    pa, pb = a.program, b.program
    if {pb.attrs(v)["name"] for v in pb.nodes("colvec")} & written_by(pa):
        return False
    if a.writes_output() and a.into in pb.matrices():
        return False
    if set(pb.mscalar_names()[0]) & set(pa.mscalar_names()[1]):
        return False
    return not (a.writes_output() and (b.writes_output() or a.into == a.over))


EPILOGUE_KINDS = {"input", "const", "param", "colvec", "size", "mscalar", "map", "output", "matrow"}


def elementwise(p: Program) -> bool:
    """A rows program that maps each element on its own (no reductions, no per-row or column
    results): what a GEMM epilogue can compute while it stores the product."""
    return bool(p.nodes("output")) and all(p.kind(v) in EPILOGUE_KINDS for v in p.g)


def _fuse_phases(phases: list, epilogues: bool) -> list:
    out: list = []
    for ph in phases:
        prev = out[-1] if out else None
        if prev is not None and epilogues and isinstance(prev, MatMulPhase) and prev.mm.epilogue is None \
                and prev.mm.beta == 0.0 and isinstance(ph, RowsPhase) and ph.over == ph.into == prev.mm.dst \
                and elementwise(ph.program):
            mm: MatMul = prev.mm
            out[-1] = MatMulPhase(MatMul(mm.dst, mm.a, mm.b, mm.layout, mm.alpha, mm.beta, ph.program.copy()))
        elif prev is not None and _fusable_rows(prev, ph):
            into = prev.into if prev.writes_output() else ph.into
            out[-1] = RowsPhase(_fuse_into(prev.program, ph.program), over=ph.over, into=into)
        elif isinstance(ph, SweepPhase):
            out.append(ph.copy())
        else:
            out.append(ph)
    return out


def lower_matrix(mp, epilogues: bool = False):
    """Fuse consecutive rows phases over one matrix (one read of each row from memory serves
    both: the second sweep finds it in cache) and, when the backend's GEMMs take epilogues, an
    element-wise rows phase over a contraction's result into the contraction's store (the
    result is written once instead of written, read and written again); drop per-row vectors
    no phase reads; simplify and annotate every row program. Phases that read a column vector or
    per-matrix scalar the previous phase produces stay apart."""
    mp.validate()
    out = mp.like()
    out.phases = map_phases(mp.phases, lambda phs: _fuse_phases(phs, epilogues))
    progs = out.programs()
    read = {p.attrs(v)["name"] for _, p, _ in progs for v in p.nodes() if p.op(v) in ("param", "colvec")}
    read.add(mp.lse)   # the three-phase attention's lse: the entry reads it
    for _, p, _ in progs:
        for v in p.nodes("emit"):
            if p.attrs(v)["name"] not in read:
                p.g.remove_node(v)
        annotate_ranges(simplify(p))
    before, after = len(mp.leaves()), len(out.leaves())
    fused = sum(isinstance(ph, MatMulPhase) and ph.mm.epilogue is not None for ph in out.leaves())
    out.notes = mp.notes + [f"{before} phases -> {after} after fusing consecutive rows phases"
                            + (f" ({fused} into GEMM epilogues)" if fused else "")]
    return out.validate()


# -- attention: the three-phase form -> the streaming form ----------------------------------------

MATRIX_ALGORITHMS = ("direct", "three-phase", "streaming")   # "direct" = a program's phases as written


def _softmax_rows(p: Program) -> bool:
    """Whether rows program ``p`` is a (masked) softmax: one reduce_max, one exp, one reduce_sum
    and the multiply by its reciprocal, no other reduction, emitted value or column state. The
    masks it may hold (matrow: an additive mask; row_index/index: the causal diagonal) are what
    the streaming form applies to each score block."""
    ops = [p.op(v) for v in p.nodes()]
    reds = sorted(op for v, op in zip(p.nodes(), ops) if p.kind(v) in ("reduce", "colreduce", "mreduce", "emit"))
    return reds == ["reduce_max", "reduce_sum"] and ops.count("exp") == 1 and "recip" in ops \
        and p.op(p.args(p.output())[0]) == "mul"


STREAMING_NORMALIZERS = ("softmax", "stablemax", "softplus_l1", "lssa", "lssar", "topk_softmax")


def _stablemax_rows(p: Program) -> bool:
    """Whether rows program ``p`` is a (masked) StableMax: one reduce_sum (no max) and the
    multiply by its reciprocal, no other reduction, exp, emitted value or column state."""
    ops = [p.op(v) for v in p.nodes()]
    reds = sorted(op for v, op in zip(p.nodes(), ops) if p.kind(v) in ("reduce", "colreduce", "mreduce", "emit"))
    return reds == ["reduce_sum"] and "exp" not in ops and "recip" in ops and p.op(p.args(p.output())[0]) == "mul"


def _softplus_l1_rows(p: Program) -> bool:
    """Whether rows program ``p`` is a (masked) softplus_l1 as ``ops.attention`` builds it: the
    row max (for its rows below SOFTPLUS_TINY), softplus by log1p, one reduce_sum, its reciprocal."""
    ops = [p.op(v) for v in p.nodes()]
    reds = sorted(op for v, op in zip(p.nodes(), ops) if p.kind(v) in ("reduce", "colreduce", "mreduce", "emit"))
    return reds == ["reduce_max", "reduce_sum"] and "log1p" in ops and "recip" in ops \
        and p.op(p.args(p.output())[0]) == "mul"


def without_lse(mp, p: Program) -> Program:
    """Rows program ``p`` without the three-phase form's lse emit (``MatrixProgram.lse``) and what
    only it reads: the normalizer as the streaming form recognises it (which keeps its own lse)."""
    if mp.lse is None or not any(p.attrs(v)["name"] == mp.lse for v in p.nodes("emit")):
        return p
    q = p.copy()
    q.g.remove_nodes_from([v for v in q.nodes("emit") if q.attrs(v)["name"] == mp.lse])
    q.remove_dead()
    return q


def _streaming_rows(mp, p: Program) -> bool:
    """Whether rows program ``p`` is the normalizer ``mp.params["normalizer"]`` in a form the
    streaming phase computes (softmax: online rescaling; stablemax, softplus_l1: no rescaling)."""
    normalizer = mp.params.get("normalizer", "softmax")
    p = without_lse(mp, p)
    return (normalizer == "softmax" and _softmax_rows(p)) or (normalizer == "stablemax" and _stablemax_rows(p)) \
        or (normalizer == "softplus_l1" and _softplus_l1_rows(p)) or (normalizer in ("lssa", "lssar") and _lssa_rows(p, normalizer == "lssar")) \
        or (normalizer == "topk_softmax" and _topk_rows(p))


def _topk_rows(p: Program) -> bool:
    """Whether rows program ``p`` is top-k attention's selection as ``ops.attention`` builds it:
    one reduce_topk (the row op's selection) and a dense output of its weights."""
    return len(p.nodes("reduce_topk")) == 1 and p.op(p.output()) == "output"


def _mask_rows(p: Program) -> bool:
    """Whether rows program ``p`` only masks the scores (no reduction): top-k attention's first
    rows phase, writing the masked scores back to S for the selection to read."""
    return not any(p.kind(v) in ("reduce", "colreduce", "mreduce", "emit") for v in p.nodes()) \
        and p.op(p.output()) == "output"


def _lssa_rows(p: Program, lssar: bool = False) -> bool:
    """Whether rows program ``p`` is lssa's rows phase over the cosines as ``ops.attention`` builds
    it: softplus by log1p, the sums (N_i's count, the weights'), a reciprocal; lssar's also takes
    the row max (its re-weighting)."""
    ops = [p.op(v) for v in p.nodes()]
    return "log1p" in ops and "recip" in ops and (lssar or "reduce_max" not in ops) \
        and p.op(p.args(p.output())[0]) == "mul"


def attention_form(mp, softmax_rows: bool = True):
    """The three phases ``S = a * Q @ K^T`` (nt), a rows phase over S into S (``softmax_rows``:
    a masked normalizer that streams, ``STREAMING_NORMALIZERS``) and ``O = S @ V`` (nn), with S
    scratch: (first matmul, rows phase, second matmul), else None. Rows phases into scratch
    matrices may come first (a prologue preparing the operands: lssa's unit q and k rows; the
    rewrite accepts lssa's only: its kernel normalises q and k itself)."""
    ph = mp.phases
    prologue = []
    while len(ph) > 3 and isinstance(ph[0], RowsPhase) and ph[0].into is not None and mp.role(ph[0].into) == "scratch":
        ph, prologue = ph[1:], prologue + [ph[0]]
    # lssa's prologue (q and k to unit rows) streams: the kernel normalises them itself
    if prologue and softmax_rows and mp.params.get("normalizer") not in ("lssa", "lssar"):
        return None
    # top-k's masks: a rows phase writing the masked scores to S before the selection reads them
    if len(ph) == 4 and mp.params.get("normalizer") == "topk_softmax" and isinstance(ph[1], RowsPhase) \
            and ph[1].over == ph[1].into and _mask_rows(ph[1].program) and len(ph[1].program.matrices()) <= 1:
        ph = [ph[0]] + ph[2:]
    if len(ph) != 3 or not (isinstance(ph[0], MatMulPhase) and isinstance(ph[1], RowsPhase)
                            and isinstance(ph[2], MatMulPhase)):
        return None
    a, r, b = ph
    if r.over != ph[0].mm.dst:
        return None
    s = a.mm.dst
    if not (a.mm.layout == "nt" and a.mm.beta == 0.0 and a.mm.epilogue is None and mp.role(s) == "scratch"
            and r.over == r.into == s and b.mm.layout == "nn" and b.mm.a == s and b.mm.beta == 0.0
            and b.mm.epilogue is None and b.mm.dst in mp.outputs
            and (not softmax_rows or _streaming_rows(mp, r.program))
            and len(r.program.matrices()) <= 1):
        return None
    return a, r, b


def streamable(mp) -> str:
    """Why the streaming rewrite does not apply to matrix program ``mp`` ("" if it does)."""
    return "" if attention_form(mp) is not None else \
        f"not the three-phase attention form (S = a Q K^T; a masked {'/'.join(STREAMING_NORMALIZERS)} over S; O = S V)"


def _topk_fields(mp, p: Program) -> dict:
    """top-k attention's AttentionPhase fields: k (the rows program's reduce_topk) and renormalize."""
    if mp.params.get("normalizer") != "topk_softmax":
        return {}
    return {"top_k": int(p.attrs(p.nodes("reduce_topk")[0])["k"]),
            "renormalize": mp.params.get("renormalize") in (None, 1)}


def stream_attention(mp, br: int, bc: int, wide: int = 0):
    """Rewrite the three-phase attention form into one ``AttentionPhase`` (online softmax, or
    StableMax without rescaling, over key blocks of ``bc``, query blocks of ``br``; docs/ops.md §3,
    10): the scratch S is gone. The masks come from the rows program: its ``matrow`` matrix (the
    mask; its kind from the op's ``mask`` parameter), its ``row_index`` (the causal diagonal).
    Other normalizers stream through the same phase (its ``normalizer``). ``wide`` (softmax; others
    ignore it): query blocks with at most ``wide`` keys take them as one block, exact two-pass."""
    form = attention_form(mp)
    if form is None:
        raise UsageError(f"{mp.name}: the streaming rewrite needs {streamable(mp)[4:]}")
    a, r, b = form
    p = without_lse(mp, r.program)
    out = mp.like()
    out.lse = None   # the streaming phase writes lse itself
    del out.scratch_mats[a.mm.dst]
    # the mask: the normalizer's rows program's matrow (top-k: its masking rows phase's)
    mask = next(iter(m for ph in mp.phases if isinstance(ph, RowsPhase) for m in ph.program.matrices()), None)
    normalizer = mp.params.get("normalizer", "softmax")
    wide = wide if normalizer == "softmax" else 0
    qk = {}
    for ph in mp.phases[:mp.phases.index(a)]:   # lssa's prologue: its unit q and k rows, formed in the kernel instead
        qk[ph.into] = ph.over
        del out.scratch_mats[ph.into]
    # causal: the op's flag (lssar's rows program reads row_index for O_i whether causal or not)
    out.phases = [AttentionPhase(q=qk.get(a.mm.a, a.mm.a), k=qk.get(a.mm.b, a.mm.b), v=b.mm.b, o=b.mm.dst, scale=a.mm.alpha, program=p,
                                 causal=bool(mp.params.get("causal", p.nodes("row_index"))), mask=mask, br=br, bc=bc, normalizer=normalizer,
                                 mask_kind="bool" if mp.params.get("mask") == "bool" else "additive",
                                  wide=wide, **_topk_fields(mp, p))]
    state = "online softmax state m, l per row, the accumulator rescaled by e^(m - m')" \
        if normalizer == "softmax" else f"{normalizer} state l per row and the accumulator, no rescaling"
    if normalizer == "lssar":
        state = "two passes: l and max P per row over the keys (P kept per row), then (R / max R)^p from P, " \
                "the sum and the accumulator, no rescaling"
    if normalizer == "topk_softmax":
        ph = out.phases[0]
        state = (f"a running top-{ph.top_k} selection per row (the row op's insertion network, or radix select over "
                 f"a {br} x lk score tile above the target's topk_network_max_k), then the softmax over the kept "
                 f"scores and {ph.top_k} gathers of {ph.v} rows")
    out.notes = mp.notes + [f"streaming: 3 phases (S = {a.mm.alpha!r} {a.mm.a} {a.mm.b}^T; masked {normalizer} rows; "
                            f"{b.mm.dst} = S {b.mm.b}) -> 1 attention phase over key blocks of {bc} "
                            f"(query blocks of {br}): {state}; no {mp.shape(a.mm.dst)[0]} x {mp.shape(a.mm.dst)[1]} scratch"
                            + (f"; a query block with at most {wide} keys: one block of them all (a {br} x {wide} score "
                               f"tile per thread, exact two-pass softmax, no rescale)" if wide else "")]
    return out.validate()
