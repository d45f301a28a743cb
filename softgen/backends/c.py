"""Jinja-C backend: lowers a planned IR program and a schedule to C for one target.

The templates hold the loop skeleton (blocks, unrolled main loop, single-vector loop, masked
tail), the vector math and the per-target intrinsic tables; this module decides what goes in
them: which values each sweep computes, how each reduction kind keeps and merges its state, and
which scalars are computed between sweeps. Every emitted statement uses only the V_* macros of the
virtual ISA (``targets.VIRTUAL_ISA``), so a new target is a data file, not new code here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import jinja2

from .. import __version__
from .._data import data_dir
from ..errors import BuildError
from ..ir import COLREDUCE_FIELDS, PAIR, Program
from ..passes import EXTEXP_F32_DOMAIN, Plan, plan
from ..schedule import Schedule
from ..targets import OPTIONAL_ISA, VIRTUAL_ISA, Target


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def flit(v: float) -> str:
    """A C float literal that denotes exactly float32(v)."""
    import numpy as np
    f = float(np.float32(v))
    if math.isinf(f):
        return "INFINITY" if f > 0 else "-INFINITY"
    if f == int(f) and abs(f) < 2 ** 24:
        return f"{f:.1f}f"
    return f"{f.hex()}f"


# -- reductions: state, per-iteration update, merges, horizontal finish -------------------------

class Reduction:
    identity = "0.0f"             # the neutral *input* value (of the first argument) for tail lanes
    fields: tuple[str, ...] = ()
    outer: tuple[str, ...] = ()
    # blocked: per block, merge the accumulators and fold them into the compensated outer state;
    # else the state lives across blocks and ``finish_all`` merges the accumulators once per row
    blocked = True
    # replicated: one state per schedule accumulator; else one state that every slot updates
    # (a state of many registers, replicated, spills: top-k)
    replicated = True

    def bind(self, r: int, attrs: dict, lanes: int) -> "Reduction":
        """The reduction for node r (reductions with attributes that shape their state)."""
        return self

    def decl(self) -> list[str]:
        """Row-function-scope declarations besides the result scalars."""
        return []

    def finish_all(self, accs: list[dict], res: list[str], sc: str | None) -> list[str]: ...

    def init(self, field: str) -> str: ...
    def update(self, st: dict, vals: list[str], sc: str | None) -> list[str]: ...
    def merge(self, dst: dict, src: dict, sc: str | None) -> list[str]: ...
    def fold(self, out: dict, acc: dict, sc: str | None) -> list[str]: ...
    def finish(self, out: dict, res: list[str], sc: str | None) -> list[str]: ...

    def consts(self, r: int, scale: float) -> list[str]:
        """Extra per-sweep constants of a scaled reduction."""
        return []

    def outer_init(self, field: str) -> str:
        return "V_ZERO()" if field == "c" else self.init(field)


class MaxRed(Reduction):
    identity, fields, outer = "-INFINITY", ("m",), ("m",)

    def init(self, f): return "V_SET1(-INFINITY)"
    def update(self, st, vals, sc): return [f"{st['m']} = V_MAX({st['m']}, {v});" for v in vals]
    def merge(self, d, s, sc): return [f"{d['m']} = V_MAX({d['m']}, {s['m']});"]
    def fold(self, o, a, sc): return [f"{o['m']} = V_MAX({o['m']}, {a['m']});"]
    def finish(self, o, res, sc): return [f"{res[0]} = V_HMAX({o['m']});"]


class SumRed(Reduction):
    identity, fields, outer = "0.0f", ("s",), ("s", "c")

    def init(self, f): return "V_ZERO()"
    def update(self, st, vals, sc): return [f"{st['s']} = V_ADD({st['s']}, {v});" for v in vals]
    def merge(self, d, s, sc): return [f"{d['s']} = V_ADD({d['s']}, {s['s']});"]
    def fold(self, o, a, sc): return [f"sg_kahan_add(&{o['s']}, &{o['c']}, {a['s']});"]
    def finish(self, o, res, sc): return [f"{res[0]} = V_HSUM(V_SUB({o['s']}, {o['c']}));"]


class ExtExpRed(Reduction):
    """(V, E): every lane keeps a value and an exponent; one e_max per group of vectors."""
    identity, fields, outer = "-INFINITY", ("v", "e"), ("v", "e", "c")

    def init(self, f): return "V_ZERO()" if f == "v" else "V_SET1(SG_EXTEXP_E0)"

    def consts(self, r: int, scale: float) -> list[str]:
        return [f"const VEC lim{r} = V_SET1({flit(-EXTEXP_F32_DOMAIN / scale)});"]

    def update(self, st, vals, sc):
        v, e = st["v"], st["e"]
        lines = ["{"]
        for j, x in enumerate(vals):
            if sc:
                lim = "lim" + sc[2:]
                lines += [f"    VEC l{j}, u{j} = sg_twoprod(V_MAX({lim}, {x}), {sc}, &l{j});"]
            else:
                lines += [f"    const VEC u{j} = sg_extexp_clamp({x});"]
            lines.append(f"    const VEC n{j} = sg_extexp_n(u{j});")
        lines.append(f"    VEC em = V_MAX({e}, n0);")
        lines += [f"    em = V_MAX(em, n{j});" for j in range(1, len(vals))]
        lines.append(f"    {v} = V_SCALE2({v}, V_SUB({e}, em));")
        p = "sg_extexp_p_lo(u{j}, n{j}, l{j})" if sc else "sg_extexp_p(u{j}, n{j})"
        lines += [f"    {v} = V_SCALE2_ADD({v}, {p.format(j=j)}, V_SUB(n{j}, em));"
                  for j in range(len(vals))]
        return lines + [f"    {e} = em;", "}"]

    def merge(self, d, s, sc): return [f"sg_extexp_merge(&{d['v']}, &{d['e']}, {s['v']}, {s['e']});"]

    def fold(self, o, a, sc):
        return [f"sg_extexp_fold(&{o['v']}, &{o['e']}, &{o['c']}, {a['v']}, {a['e']});"]

    def finish(self, o, res, sc):
        return [f"{res[1]} = V_HMAX({o['e']});",
                f"{res[0]} = V_HSUM(V_SCALE2(V_SUB({o['v']}, {o['c']}), V_SUB({o['e']}, V_SET1({res[1]}))));"]


class OnlineRed(Reduction):
    """(m, d) per lane: one rescale per group of vectors (the blocked form of spec 3). m starts at
    -FLT_MAX, not -inf, so (-inf) - m is -inf and no -inf - -inf guard is needed."""
    identity, fields, outer = "-INFINITY", ("m", "d"), ("m", "d", "c")

    def init(self, f): return "V_SET1(-FLT_MAX)" if f == "m" else "V_ZERO()"

    @staticmethod
    def _s(e, sc): return f"V_MUL({e}, {sc})" if sc else e

    def update(self, st, vals, sc):
        m, d = st["m"], st["d"]
        lines = ["{", f"    VEC mn = V_MAX({m}, {vals[0]});"]
        lines += [f"    mn = V_MAX(mn, {x});" for x in vals[1:]]
        rescale = self._s(f"V_SUB({m}, mn)", sc)
        lines.append(f"    {d} = V_MUL({d}, sg_exp_nonpos({rescale}));")
        lines += [f"    {d} = V_ADD({d}, sg_exp_nonpos({self._s(f'V_SUB({x}, mn)', sc)}));" for x in vals]
        return lines + [f"    {m} = mn;", "}"]

    def column_update(self, st, val, sc):
        """One row's update of the columns' (m, d): a column's max rarely grows after the first
        rows, so the rescale exp runs only when some lane's does (a NaN state stays NaN in d)."""
        m, d = st["m"], st["d"]
        return ["{", f"    const VEC mn = V_MAX({m}, {val});",
                f"    if (V_ANY(V_CMPGT(mn, {m})))",
                f"        {d} = V_MUL({d}, sg_exp_nonpos({self._s(f'V_SUB({m}, mn)', sc)}));",
                f"    {d} = V_ADD({d}, sg_exp_nonpos({self._s(f'V_SUB({val}, mn)', sc)}));",
                f"    {m} = mn;", "}"]

    def merge(self, d, s, sc):
        return [f"sg_online_merge(&{d['m']}, &{d['d']}, {s['m']}, {s['d']}, {sc or 'V_SET1(1.0f)'});"]

    def fold(self, o, a, sc):
        return [f"sg_online_fold(&{o['m']}, &{o['d']}, &{o['c']}, {a['m']}, {a['d']}, {sc or 'V_SET1(1.0f)'});"]

    def finish(self, o, res, sc):
        shift = self._s(f"V_SUB({o['m']}, V_SET1({res[0]}))", sc)
        return [f"{res[0]} = V_HMAX({o['m']});",
                f"{res[1]} = V_HSUM(V_MUL(V_SUB({o['d']}, {o['c']}), sg_exp_nonpos({shift})));"]


class TopKRed(Reduction):
    """k sorted (key, index) registers per lane and accumulator, updated by a compare/blend
    insertion network. Strict >: a later equal key stays below, so the lower index wins ties
    (each lane of each accumulator sees its elements in index order); displaced pairs shift. A group of vectors skips
    the network when no lane beats its lane's k-th key (V_ANY). Not blocked: there is no sum to
    compensate; the lanes of all accumulators are merged once per row, in scalar code."""
    identity, blocked, replicated = "-INFINITY", False, False

    def __init__(self, r: int = 0, k: int = 1, lanes: int = 1):
        self.r, self.k, self.lanes = r, k, lanes
        self.fields = tuple(f"v{i}" for i in range(k)) + tuple(f"j{i}" for i in range(k))
        self.kp = -(-k // lanes) * lanes       # the selection, padded to whole vectors
        self.sel = (f"sel{r}_v", f"sel{r}_j")  # the row's kept keys and indices, largest first

    def bind(self, r, attrs, lanes): return TopKRed(r, attrs["k"], lanes)
    def init(self, f): return "V_SET1(-INFINITY)" if f[0] == "v" else "V_SET1(INFINITY)"
    def decl(self): return [f"float {self.sel[0]}[{self.kp}], {self.sel[1]}[{self.kp}];"]

    def update(self, st, vals, sc):
        # x ranks above place i iff x > v_i (x comes after every kept index); the places are
        # sorted, so these masks are monotone in i and the list shifts down from the first:
        # v_i' = m_i ? (m_(i-1) ? v_(i-1) : x) : v_i, bottom up so v_(i-1) is still the old one.
        # Early-out: with the k-th places as filters, a group of G vectors (L lanes) needs the
        # network with probability ~ L G k / m after m elements per lane (random rows); the test
        # pays from there on, below i = 4 L^2 G k it mostly mispredicts, so the network just runs.
        k, last, L = self.k, st[f"v{self.k - 1}"], self.lanes
        test = " || ".join([f"i < {4 * L * L * len(vals) * k}"]
                           + [f"V_ANY(V_CMPGT({x}, {last}))" for x, _ in vals])
        lines = [f"if ({test}) {{"]
        for x, j in vals:
            lines.append("    {")
            lines += [f"        const MASK g{i} = V_CMPGT({x}, {st[f'v{i}']});" for i in range(k)]
            for i in reversed(range(k)):
                for f, new in (("v", x), ("j", j)):
                    here = st[f"{f}{i}"]
                    down = f"V_SELECT(g{i - 1}, {st[f'{f}{i - 1}']}, {new})" if i else new
                    lines.append(f"        {here} = V_SELECT(g{i}, {down}, {here});")
            lines.append("    }")
        return lines + ["}"]

    def finish_all(self, accs, res, sc):
        k, L, q = self.k, self.lanes, len(accs) * self.lanes
        sv, sj = self.sel
        lines = ["{", f"    float kv[{(k + 1) * q}], kj[{(k + 1) * q}];", f"    int kh[{q}];"]
        for a, acc in enumerate(accs):   # list a*L + l holds its i-th pair at [i*q + a*L + l]
            for i in range(k):
                lines += [f"    V_STORE(kv + {(i * len(accs) + a) * L}, {acc[f'v{i}']});",
                          f"    V_STORE(kj + {(i * len(accs) + a) * L}, {acc[f'j{i}']});"]
        lines += [f"    sg_topk_merge(kv, kj, {q}, {k}, kh, {sv}, {sj});"]
        if self.kp > k:
            lines += [f"    for (int q = {k}; q < {self.kp}; q++) {{",
                      f"        {sv}[q] = -INFINITY;", f"        {sj}[q] = 0.0f;", "    }"]
        return lines + ["}", f"{res[0]} = {sv}[{k - 1}];", f"{res[1]} = {sj}[{k - 1}];",
                        f"{res[2]} = {sv}[0];", f"{res[3]} = sg_topk_expsum({sv}, {self.kp});"]


REDUCTIONS = {"reduce_max": MaxRed(), "reduce_sum": SumRed(), "reduce_extexp": ExtExpRed(),
              "reduce_online": OnlineRed(), "reduce_topk": TopKRed()}


def _red(c: "_Ctx", r: int) -> Reduction:
    return REDUCTIONS[c.p.op(r)].bind(r, c.p.attrs(r), c.t.lanes)

# Row (vector) and scalar lowerings of the map ops.
VECTOR_C = {
    "add": "V_ADD({0}, {1})", "sub": "V_SUB({0}, {1})", "mul": "V_MUL({0}, {1})",
    "div": "V_DIV({0}, {1})", "max": "V_MAX({0}, {1})", "min": "V_MIN({0}, {1})",
    "neg": "V_SUB(V_SET1(-0.0f), {0})", "abs": "V_ABS({0})", "recip": "V_DIV(V_SET1(1.0f), {0})",
    "exp": "sg_exp({0})", "exp_shift2": "sg_exp_shift2({0}, {1})", "sub_ln2": "sg_reduce_ln2({0}, {1})",
    "fma": "V_FMA({0}, {1}, {2})", "where_lt": "V_SELECT(V_CMPLT({0}, {1}), {2}, {3})", "log": "sg_log({0})",
    "log1p": "sg_log1p({0})", "log_ratio": "sg_log_ratio({0}, {1})",
    "finite_or_nan": "V_SELECT(V_CMPLT(V_ABS({0}), V_SET1(INFINITY)), {0}, V_SET1(NAN))",
    "where_ranked": "V_SELECT(V_CMPGT({0}, {2}), {4}, V_SELECT(V_CMPEQ({0}, {2}), "
                    "V_SELECT(V_CMPGT({1}, {3}), {5}, {4}), {5}))",
}
# Map ops with a scale attribute (from the two-pass rewrite): s x is kept exact as hi + lo.
SCALED_C = {
    "exp_shift2": "sg_exp_shift2_scaled({0}, {1}, V_SET1({s}), V_SET1({lim}))",
    "sub_ln2": "sg_reduce_ln2_scaled({0}, {1}, V_SET1({s}))",
}
SCALAR_C = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "max": "({0} > {1} ? {0} : {1})", "min": "({0} < {1} ? {0} : {1})", "neg": "(-{0})",
    "abs": "fabsf({0})", "exp": "expf({0})", "log": "logf({0})", "recip": "(1.0f / {0})",
    "finite_or_nan": "(isfinite({0}) ? {0} : NAN)", "where_lt": "({0} < {1} ? {2} : {3})",
    "log1p": "log1pf({0})", "fma": "fmaf({0}, {1}, {2})", "poison": "(isfinite({1}) ? {0} : NAN)",
    "log_ratio": "(float)(log((double){0}) - log((double){1}))",
    "where_ranked": "(({0} > {2} || ({0} == {2} && {1} <= {3})) ? {4} : {5})",
}


def lowerable(p: Program) -> list[str]:
    """Ops of ``p`` this backend cannot lower (empty when it can lower everything)."""
    bad = []
    for v in p.g:
        op, kind, shape = p.op(v), p.kind(v), p.shape(v)
        if kind == "map" and op not in (VECTOR_C if shape == "row" else SCALAR_C):
            bad.append(f"{op} ({shape})")
        if kind == "reduce" and op not in REDUCTIONS:
            bad.append(op)
        if kind == "colreduce" and op.replace("colreduce_", "reduce_") not in REDUCTIONS:
            bad.append(op)
    return sorted(set(bad))


# -- lowering ---------------------------------------------------------------------------------

@dataclass
class _Ctx:
    p: Program
    t: Target
    s: Schedule
    row_params: list[str]   # the kernel's per-row parameters: every row function takes them all


def _scalar(p: Program, v: int) -> str:
    c = p.const_value(v)
    return flit(c) if c is not None else f"s{v}"


def _row_arg(p: Program, v: int, u: int) -> str:
    return f"v{v}_{u}" if p.shape(v) == "row" else f"b{v}"


def _scale_of(p: Program, r: int) -> str | None:
    s = p.attrs(r).get("scale", 1.0)
    return None if s == 1.0 else f"sc{r}"


def _body(c: _Ctx, sw, u: int, tail: bool, bufs: dict | None = None) -> list[str]:
    """Statements computing one vector (unroll slot u) of every row value of a sweep. ``bufs``:
    what the input and index leaves load and where the output goes (a selected-output sweep runs
    over the selection instead of the row)."""
    p, L = c.p, c.t.lanes
    bufs = bufs or {"x": "x", "index": None, "y": "y"}
    off = "i" if u == 0 else f"i + {u * L}"
    load = (lambda buf: f"V_LOAD_PART({buf} + i, k)") if tail else (lambda buf: f"V_LOAD({buf} + {off})")
    lines = [f"const VEC v{m}_{u} = {load('y')};" for m in sw.reloads]
    for v in sw.compute:
        op = p.op(v)
        args = [_row_arg(p, a, u) for a in p.args(v)]
        if op == "input":
            expr = load(bufs["x"])
        elif op == "index":
            expr = load(bufs["index"]) if bufs["index"] else f"V_ADD(V_SET1((float)(int32_t)({off})), iota)"
        elif op == "colvec":
            expr = load(f"cv_{p.attrs(v)['name']}")
        elif op == "materialize":
            expr = args[0]
        elif op == "exp" and p.attrs(v).get("nonpos"):
            expr = f"sg_exp_nonpos({args[0]})"
        elif op == "log1p" and p.attrs(v).get("unit"):
            expr = f"sg_log1p_unit({args[0]})"
        elif op in SCALED_C and p.attrs(v).get("scale", 1.0) != 1.0:
            sc = p.attrs(v)["scale"]
            expr = SCALED_C[op].format(*args, s=flit(sc), lim=flit(-EXTEXP_F32_DOMAIN / sc))
        elif op in VECTOR_C:
            expr = VECTOR_C[op].format(*args)
        else:
            raise BuildError(f"the C backend has no vector lowering for IR op {op!r}")
        lines.append(f"const VEC v{v}_{u} = {expr};")
    for v in sw.stores + ([sw.output] if sw.output is not None else []) + sw.colstores:
        val = _row_arg(p, p.args(v)[-1], u)
        y = f"cv_{p.attrs(v)['name']}" if p.op(v) == "colstore" else bufs["y"]
        lines.append(f"V_STORE_PART({y} + i, {val}, k);" if tail else f"V_STORE({y} + {off}, {val});")
    return lines


def _colreduce(c: _Ctx, r: int, u: int, tail: bool) -> list[str]:
    """One vector of a column reduction: load the columns' state, update it, store it back.
    Tail lanes are neither loaded nor stored, so their values do not matter."""
    p, L = c.p, c.t.lanes
    red, sc = REDUCTIONS[p.op(r).replace("colreduce_", "reduce_")], _scale_of(p, r)
    off = "i" if u == 0 else f"i + {u * L}"
    st = {f: f"c{r}_{u}_{f}" for f in red.fields}
    buf = {f: f"cv_{p.attrs(r)['name']}_{f}" for f in red.fields}
    load = (lambda b: f"V_LOAD_PART({b} + i, k)") if tail else (lambda b: f"V_LOAD({b} + {off})")
    store = (lambda b, a: f"V_STORE_PART({b} + i, {a}, k);") if tail else \
        (lambda b, a: f"V_STORE({b} + {off}, {a});")
    lines = [f"VEC {st[f]} = {load(buf[f])};" for f in red.fields]
    val = _row_arg(p, p.args(r)[0], u)
    lines += red.column_update(st, val, sc) if hasattr(red, "column_update") else red.update(st, [val], sc)
    return ["{"] + ["    " + ln for ln in lines + [store(buf[f], st[f]) for f in red.fields]] + ["}"]


def _acc(r: int, k: int, red: Reduction) -> dict:
    return {f: f"a{r}_{k}_{f}" for f in red.fields}


def _setup(c: _Ctx, sw) -> list[str]:
    """Per-sweep broadcasts of the scalars its row values use (and the lane indices)."""
    p = c.p
    used = sorted({a for v in sw.compute for a in p.args(v) if p.shape(a) != "row"})
    iota = ["const VEC iota = sg_iota();"] if any(p.op(v) == "index" for v in sw.compute) else []
    scales = [f"const VEC {_scale_of(p, r)} = V_SET1({flit(p.attrs(r)['scale'])});"
              for r in sw.colreds if _scale_of(p, r)]
    return [f"const VEC b{a} = V_SET1({_scalar(p, a)});" for a in used] + iota + scales


def _results(p: Program, r: int) -> list[str]:
    return [f"s{r}_{i}" for i in range(p.items(r))] if p.shape(r) == PAIR else [f"s{r}"]


def _sweep_block(c: _Ctx, sw) -> dict:
    if sw.selected is not None:
        return _selected_block(c, sw)
    p, L, U, A = c.p, c.t.lanes, c.s.unroll, c.s.accumulators
    setup, fold, finish = _setup(c, sw), [], []
    for r in sw.reductions:
        red, sc = _red(c, r), _scale_of(p, r)
        if sc:
            setup.append(f"const VEC {sc} = V_SET1({flit(p.attrs(r)['scale'])});")
            setup += red.consts(r, p.attrs(r)["scale"])
        for k in range(A if red.replicated else 1):
            setup += [f"VEC {n} = {red.init(f)};" for f, n in _acc(r, k, red).items()]
        if not red.blocked:
            finish += red.finish_all([_acc(r, k, red) for k in range(A if red.replicated else 1)],
                                     _results(p, r), sc)
            continue
        out = {f: f"o{r}_{f}" for f in red.outer}
        setup += [f"VEC {n} = {red.outer_init(f)};" for f, n in out.items()]
        for k in range(1, A):
            fold += red.merge(_acc(r, 0, red), _acc(r, k, red), sc)
            fold += [f"{n} = {red.init(f)};" for f, n in _acc(r, k, red).items()]
        fold += red.fold(out, _acc(r, 0, red), sc)
        fold += [f"{n} = {red.init(f)};" for f, n in _acc(r, 0, red).items()]
        finish += red.finish(out, _results(p, r), sc)

    def updates(slots: list[int], tail: bool) -> list[str]:
        lines = []
        for r in sw.reductions:
            red, sc, args = _red(c, r), _scale_of(p, r), p.args(r)
            groups = {}
            for u in slots:
                vals = [_row_arg(p, a, u) for a in args]
                if tail:
                    vals[0] = f"V_SELECT(tm, {vals[0]}, V_SET1({red.identity}))"
                groups.setdefault(u % A if red.replicated else 0, []).append(
                    vals[0] if len(vals) == 1 else tuple(vals))
            for k, vals in groups.items():
                lines += red.update(_acc(r, k, red), vals, sc)
        for r in sw.colreds:
            for u in slots:
                lines += _colreduce(c, r, u, tail)
        return lines

    # Node-major: the unroll slots' copies of each row value sit side by side, so the slots' long
    # per-element chains (softplus: exp, then log1p) overlap instead of queueing in the scheduler.
    bodies = [_body(c, sw, u, False) for u in range(U)]
    main = [ln for same in zip(*bodies) for ln in same] + updates(list(range(U)), False)
    single = _body(c, sw, 0, False) + updates([0], False)
    tail = (["const MASK tm = V_TAILMASK(k);"] if sw.reductions else []) + _body(c, sw, 0, True) \
        + updates([0], True)
    what = [f"{p.op(v)}" for v in sw.reductions + sw.colreds] \
        + (["store y"] if sw.stores else []) + (["write y"] if sw.output is not None else []) \
        + [f"store {p.attrs(v)['name']}" for v in sw.colstores]
    reads = ("x" if sw.reads_x else "") + (" y" if sw.reloads else "")
    vecs = sorted({p.attrs(v)["name"] for v in sw.compute if p.op(v) == "colvec"})
    reads = (reads + "".join(f" {v}" for v in vecs)).strip() or "-"
    return {"kind": "sweep", "index": sw.index, "comment": f"read {reads}; {', '.join(what)}",
            "setup": setup, "blocked": any(_red(c, r).blocked for r in sw.reductions),
            "block": c.s.block, "step": U * L, "length": "n",
            "main": main, "single": single, "tail": tail, "fold": fold, "finish": finish}


def _selected_block(c: _Ctx, sw) -> dict:
    """The output sweep of an output_selected: the sweep's row values evaluated over the kept
    (key, index) pairs of its reduce_topk, whole vectors over the padded selection, then the
    min(k, n) indices and values written out."""
    sel = _red(c, sw.selected)
    (sv, sj), k, kp = sel.sel, sel.k, sel.kp
    bufs = {"x": sv, "index": sj, "y": f"{sv[:-2]}_w"}
    setup = _setup(c, sw) + [f"float {bufs['y']}[{kp}];", f"const size_t ns = n < {k} ? n : {k};",
                             f"sg_topk_fill(x, n, {sv}, {sj}, ns);"]
    body = _body(c, sw, 0, False, bufs)
    finish = ["for (size_t q = 0; q < ns; q++) {", f"    idx[q] = (int64_t){sj}[q];",
              f"    w[q] = {bufs['y']}[q];", "}"]
    return {"kind": "sweep", "index": sw.index,
            "comment": f"the {k} selected entries -> indices and weights", "setup": setup,
            "blocked": False, "block": c.s.block, "step": c.t.lanes, "length": str(kp),
            "main": body, "single": [], "tail": [], "fold": [], "finish": finish}


def _scalar_lines(c: _Ctx, nodes: list[int], fallback: str | None) -> list[str]:
    p, lines = c.p, []
    for v in nodes:
        op, args = p.op(v), [_scalar(p, a) for a in p.args(v)]
        if op == "param":
            lines.append(f"const float s{v} = rp_{p.attrs(v)['name']};")
        elif op == "size":
            lines.append(f"const float s{v} = (float){'m' if p.attrs(v)['axis'] == 'rows' else 'n'};")
        elif op == "emit":
            lines.append(f"*em_{p.attrs(v)['name']} = {args[0]};")
        elif op == "item":
            (r,) = p.args(v)
            lines.append(f"const float s{v} = s{r}_{p.attrs(v)['index']};")
        elif op == "guard":
            lim = flit(p.attrs(v)["limit"])
            rest = "".join(f", rp_{name}" for name in c.row_params)
            outs = ", ".join(row_outputs(p))
            lines.append(f"if (!(fabsf({args[0]}) <= {lim})) {{ {fallback}(x, {outs}, n{rest}); return; }}")
        elif op in SCALAR_C:
            lines.append(f"const float s{v} = {SCALAR_C[op].format(*args)};")
        else:
            raise BuildError(f"the C backend has no scalar lowering for IR op {op!r}")
    return lines


def _row_function(p: Program, t: Target, s: Schedule, fname: str, fallback: str | None,
                  row_params: list[str]) -> dict:
    c, pl = _Ctx(p, t, s, row_params), plan(p)
    blocks = [{"kind": "scalar", "lines": _scalar_lines(c, pl.scalars_before, fallback)}]
    for sw in pl.sweeps:
        decl = []
        for r in sw.reductions:
            decl += [f"float {', '.join(_results(p, r))};"] + _red(c, r).decl()
        blocks.append({"kind": "scalar", "lines": decl})
        blocks.append(_sweep_block(c, sw))
        blocks.append({"kind": "scalar", "lines": _scalar_lines(c, sw.scalars_after, fallback)})
    args = "".join(f", float rp_{name}" for name in row_params)
    if p.phase is not None:   # a phase of a matrix program: its vectors (see matrix_entry.c.j2)
        args = ", size_t m" + args + "".join(f", float *cv_{v}" for v in p.vector_names()[1]) \
            + "".join(f", float *em_{p.attrs(v)['name']}" for v in p.nodes("emit"))
    return {"name": fname, "comment": f"{p.name}: {pl.traffic()['summary']}, {len(pl.sweeps)} sweeps",
            "blocks": blocks, "args": args,
            "outs": "float *y" if p.phase is not None else abi(p, fname)["row_decl"]}


def matrix_abi(name: str) -> dict:
    """The exported entry point of a matrix program (``templates/matrix_entry.c.j2``)."""
    return {"sparse": False, "matrix": True, "outs": "float *y", "ld": "ldy", "nulls": ["y"],
            "width": "n", "row_decl": "float *y", "elem": "sizeof(float)", "max_n": None,
            "signature": f"int {name}(const float *x, float *y, size_t rows, size_t n, size_t ldx, "
                         f"size_t ldy, size_t m)"}


def row_outputs(p: Program) -> tuple[str, ...]:
    """The output pointers of a row function: y, or a selected output's indices and weights."""
    return ("idx", "w") if p.op(p.output()) == "output_selected" else ("y",)


def abi(p: Program, name: str) -> dict:
    """The exported entry point of program p, for the templates, the header and the manifest."""
    rps = "".join(f", const float *{rp}" for rp in p.row_params())
    if p.op(p.output()) == "output_selected":
        if rps:
            raise BuildError(f"{p.name}: a selected output takes no per-row parameters")
        k = p.attrs(p.args(p.output())[0])["k"]
        width = f"(n < {k} ? n : {k})"
        return {"sparse": True, "k": k, "outs": "int64_t *indices, float *weights", "ld": "ldo",
                "row_decl": "int64_t *idx, float *w",
                "nulls": ["indices", "weights"], "width": width, "elem": "sizeof(int64_t)",
                "row_outs": "indices + r * ldo, weights + r * ldo", "max_n": p.max_n(),
                "signature": f"int {name}(const float *x, int64_t *indices, float *weights, "
                             f"size_t rows, size_t n, size_t ldx, size_t ldo{rps})"}
    return {"sparse": False, "outs": "float *y", "ld": "ldy", "nulls": ["y"], "width": "n",
            "row_decl": "float *y",
            "elem": "sizeof(float)", "row_outs": "y + r * ldy", "max_n": p.max_n(),
            "signature": f"int {name}(const float *x, float *y, size_t rows, size_t n, size_t ldx, "
                         f"size_t ldy{rps})"}


def matrix_entry(mp, name: str, tvm: bool = False) -> dict:
    """What ``templates/matrix_entry.c.j2`` needs: per phase of the lowered matrix program the
    call of its function ``<name>__phase<k>`` (a TVM function also takes ``m`` as int64 and a
    status pointer) and the column-reduction states to initialise; the vectors; prototypes."""
    row_vecs, col_vecs = mp.vectors()
    phases, protos = [], []
    for k, ph in enumerate(mp.phases):
        p, fname = ph.program, f"{name}__phase{k}"
        rps, cols = p.row_params(), p.vector_names()[1]
        emits = [p.attrs(v)["name"] for v in p.nodes("emit")]
        if ph.kind == "rows":
            xy = "(float *)(xb + i * ldx), yb + i * ldy" if tvm else "xb + i * ldx, yb + i * ldy"
            args = [xy, "(int64_t)n, (int64_t)m" if tvm else "n, m"] + [f"rv_{r}[i]" for r in rps]
        else:
            args = ["NULL, NULL", "(int64_t)n, (int64_t)m" if tvm else "n, m"]
        args += [f"cv_{v}" for v in cols] + [f"rv_{e} + i" for e in emits] + (["&status"] if tvm else [])
        inits = [(f"{p.attrs(v)['name']}_{f}", flit(init)) for v in p.nodes() if p.kind(v) == "colreduce"
                 for f, init in COLREDUCE_FIELDS[p.op(v)]]
        pl = plan(p)
        phases.append({"kind": ph.kind, "index": k, "call": f"{fname}({', '.join(args)});", "inits": inits,
                       "comment": f"{ph.kind} phase: {pl.traffic()['summary']} per element, "
                                  f"{len(pl.sweeps)} sweep(s)"})
        protos.append(f"void {fname}(float *x, float *y, int64_t n, int64_t m"
                      + "".join(f", float rp_{r}" for r in rps) + "".join(f", float *cv_{v}" for v in cols)
                      + "".join(f", float *em_{e}" for e in emits) + ", int32_t *status);")
    return {"phases": phases, "row_vecs": row_vecs, "col_vecs": col_vecs, "tvm": tvm,
            "prototypes": protos}


def matrix_plan_lines(mp) -> list[str]:
    lines = ["matrix plan:"]
    for k, ph in enumerate(mp.phases):
        lines.append(f"  phase {k} ({ph.kind}):")
        lines += ["    " + ln for ln in plan(ph.program).describe().splitlines()]
    return lines + ["rewrites:"] + ["  " + n for n in mp.notes]


def generate_matrix(mp, t: Target, s: Schedule, name: str, *, op: str, params: dict) -> str:
    """C source of a matrix kernel ``int name(x, y, rows, n, ldx, ldy, m)``: one static function
    per phase of the lowered matrix program ``mp``, and an entry point that runs the phases over
    each m-row matrix with the per-row/per-column vectors in one scratch allocation."""
    bad = sorted({b for ph in mp.phases for b in lowerable(ph.program)})
    if bad:
        raise BuildError(f"the C backend cannot lower {', '.join(bad)}")
    functions = [_row_function(ph.program, t, s, f"{name}__phase{k}", None, ph.program.row_params())
                 for k, ph in enumerate(mp.phases)]
    return _env().get_template("kernel.c.j2").render(
        name=name, version=__version__, op=op, algorithm="direct",
        params=", ".join(f"{k}={v!r}" for k, v in params.items()), traffic=matrix_traffic(mp), t=t,
        schedule=f"{s} ({s.tag(t.lanes)})", plan_lines=matrix_plan_lines(mp), isa=isa_header(t),
        vmath=vmath(), helpers="", functions=functions, lanes=t.lanes, entry_row=None, tvm=False,
        row_params=[], rp_args="", abi=matrix_abi(name), matrix=matrix_entry(mp, name))


def matrix_traffic(mp) -> dict:
    """Memory traffic of a lowered matrix program per matrix element: sweeps of rows phases that
    follow another sweep of the same row read it from cache, so only each phase's first read of
    x and its writes count as memory traffic."""
    reads = writes = passes = exps = 0
    for ph in mp.phases:
        if ph.kind != "rows":
            continue
        pl = plan(ph.program)
        reads += any(s.reads_x for s in pl.sweeps) + sum(len(s.reloads) for s in pl.sweeps)
        writes += pl.writes
        passes += len(pl.sweeps)
        exps += pl.exps_per_element()
    return {"passes": passes, "reads": reads, "writes": writes,
            "bytes_per_element": 4 * (reads + writes), "exp_per_element": exps,
            "summary": f"{reads}R + {writes}W"}


def entry_row_args(row_params: list[str]) -> str:
    """The per-row parameter arguments the entry point passes to a row function for row r."""
    return "".join(f", {name}[r]" for name in row_params)


def select_helpers(p: Program) -> str:
    """Index and top-k helpers, for programs that use them."""
    ops = {p.op(v) for v in p.g}
    return _env().get_template("select.h.j2").render() if ops & {"index", "reduce_topk"} else ""


def isa_header(t: Target) -> str:
    specs = {**VIRTUAL_ISA, **OPTIONAL_ISA}
    macros = [(name, specs[name], body) for name, body in t.isa.items()]
    return _env().get_template("isa.h.j2").render(t=t, macros=macros)


def vmath() -> str:
    return _env().get_template("vmath.h.j2").render()


def generate(p: Program, t: Target, s: Schedule, name: str, *, op: str, algorithm: str,
             params: dict) -> str:
    """C source of a kernel ``int name(x, y, rows, n, ldx, ldy)`` computing program ``p``."""
    bad = lowerable(p) + (lowerable(p.fallback) if p.fallback else [])
    if bad:
        raise BuildError(f"the C backend cannot lower {', '.join(bad)}")
    functions, fallback, rps = [], None, p.row_params()
    if p.fallback is not None:
        fallback = f"{name}__fallback_row"
        functions.append(_row_function(p.fallback, t, s, fallback, None, rps))
    functions.append(_row_function(p, t, s, f"{name}__row", fallback, rps))
    pl = plan(p)
    plan_lines = ["plan:"] + ["  " + ln for ln in pl.describe().splitlines()]
    if p.notes:
        plan_lines += ["rewrites:"] + ["  " + n for n in p.notes]
    return _env().get_template("kernel.c.j2").render(
        name=name, version=__version__, op=op, algorithm=algorithm,
        params=", ".join(f"{k}={v!r}" for k, v in params.items()), traffic=pl.traffic(), t=t,
        schedule=f"{s} ({s.tag(t.lanes)})", plan_lines=plan_lines, isa=isa_header(t), vmath=vmath(),
        helpers=select_helpers(p), functions=functions, lanes=t.lanes, entry_row=f"{name}__row",
        tvm=False, row_params=rps, rp_args=entry_row_args(rps), abi=abi(p, name), matrix=None)
