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
    identity = "0.0f"             # the neutral *input* value for masked tail lanes
    fields: tuple[str, ...] = ()
    outer: tuple[str, ...] = ()

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

    def merge(self, d, s, sc):
        return [f"sg_online_merge(&{d['m']}, &{d['d']}, {s['m']}, {s['d']}, {sc or 'V_SET1(1.0f)'});"]

    def fold(self, o, a, sc):
        return [f"sg_online_fold(&{o['m']}, &{o['d']}, &{o['c']}, {a['m']}, {a['d']}, {sc or 'V_SET1(1.0f)'});"]

    def finish(self, o, res, sc):
        shift = self._s(f"V_SUB({o['m']}, V_SET1({res[0]}))", sc)
        return [f"{res[0]} = V_HMAX({o['m']});",
                f"{res[1]} = V_HSUM(V_MUL(V_SUB({o['d']}, {o['c']}), sg_exp_nonpos({shift})));"]


REDUCTIONS = {"reduce_max": MaxRed(), "reduce_sum": SumRed(), "reduce_extexp": ExtExpRed(),
              "reduce_online": OnlineRed()}

# Row (vector) and scalar lowerings of the map ops.
VECTOR_C = {
    "add": "V_ADD({0}, {1})", "sub": "V_SUB({0}, {1})", "mul": "V_MUL({0}, {1})",
    "div": "V_DIV({0}, {1})", "max": "V_MAX({0}, {1})", "min": "V_MIN({0}, {1})",
    "neg": "V_SUB(V_SET1(-0.0f), {0})", "abs": "V_ABS({0})", "recip": "V_DIV(V_SET1(1.0f), {0})",
    "exp": "sg_exp({0})", "exp_shift2": "sg_exp_shift2({0}, {1})", "sub_ln2": "sg_reduce_ln2({0}, {1})",
    "fma": "V_FMA({0}, {1}, {2})", "where_lt": "V_SELECT(V_CMPLT({0}, {1}), {2}, {3})", "log": "sg_log({0})",
    "log1p": "sg_log1p({0})", "log_ratio": "sg_log_ratio({0}, {1})",
    "finite_or_nan": "V_SELECT(V_CMPLT(V_ABS({0}), V_SET1(INFINITY)), {0}, V_SET1(NAN))",
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


def _body(c: _Ctx, sw, u: int, tail: bool) -> list[str]:
    """Statements computing one vector (unroll slot u) of every row value of a sweep."""
    p, L = c.p, c.t.lanes
    off = "i" if u == 0 else f"i + {u * L}"
    load = (lambda buf: f"V_LOAD_PART({buf} + i, k)") if tail else (lambda buf: f"V_LOAD({buf} + {off})")
    lines = [f"const VEC v{m}_{u} = {load('y')};" for m in sw.reloads]
    for v in sw.compute:
        op = p.op(v)
        args = [_row_arg(p, a, u) for a in p.args(v)]
        if op == "input":
            expr = load("x")
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
        val = _row_arg(p, p.args(v)[0], u)
        buf = f"cv_{p.attrs(v)['name']}" if p.op(v) == "colstore" else "y"
        lines.append(f"V_STORE_PART({buf} + i, {val}, k);" if tail else f"V_STORE({buf} + {off}, {val});")
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
    lines += red.update(st, [_row_arg(p, p.args(r)[0], u)], sc)
    return ["{"] + ["    " + ln for ln in lines + [store(buf[f], st[f]) for f in red.fields]] + ["}"]


def _acc(r: int, k: int, red: Reduction) -> dict:
    return {f: f"a{r}_{k}_{f}" for f in red.fields}


def _sweep_block(c: _Ctx, sw) -> dict:
    p, L, U, A = c.p, c.t.lanes, c.s.unroll, c.s.accumulators
    setup, fold, finish = [], [], []
    used = sorted({a for v in sw.compute for a in p.args(v) if p.shape(a) != "row"})
    setup += [f"const VEC b{a} = V_SET1({_scalar(p, a)});" for a in used]
    for r in sw.colreds:
        sc = _scale_of(p, r)
        if sc:
            setup.append(f"const VEC {sc} = V_SET1({flit(p.attrs(r)['scale'])});")
    for r in sw.reductions:
        red, sc = REDUCTIONS[p.op(r)], _scale_of(p, r)
        if sc:
            setup.append(f"const VEC {sc} = V_SET1({flit(p.attrs(r)['scale'])});")
            setup += red.consts(r, p.attrs(r)["scale"])
        for k in range(A):
            setup += [f"VEC {n} = {red.init(f)};" for f, n in _acc(r, k, red).items()]
        out = {f: f"o{r}_{f}" for f in red.outer}
        setup += [f"VEC {n} = {red.outer_init(f)};" for f, n in out.items()]
        for k in range(1, A):
            fold += red.merge(_acc(r, 0, red), _acc(r, k, red), sc)
            fold += [f"{n} = {red.init(f)};" for f, n in _acc(r, k, red).items()]
        fold += red.fold(out, _acc(r, 0, red), sc)
        fold += [f"{n} = {red.init(f)};" for f, n in _acc(r, 0, red).items()]
        res = [f"s{r}_0", f"s{r}_1"] if p.shape(r) == PAIR else [f"s{r}"]
        finish += red.finish(out, res, sc)

    def updates(slots: list[int], tail: bool) -> list[str]:
        lines = []
        for r in sw.reductions:
            red, sc, (x,) = REDUCTIONS[p.op(r)], _scale_of(p, r), p.args(r)
            groups = {}
            for u in slots:
                val = _row_arg(p, x, u)
                if tail:
                    val = f"V_SELECT(tm, {val}, V_SET1({red.identity}))"
                groups.setdefault(u % A, []).append(val)
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
            "setup": setup, "blocked": bool(sw.reductions), "block": c.s.block, "step": U * L,
            "main": main, "single": single, "tail": tail, "fold": fold, "finish": finish}


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
            lines.append(f"if (!(fabsf({args[0]}) <= {lim})) {{ {fallback}(x, y, n{rest}); return; }}")
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
            decl += [f"float s{r}_0, s{r}_1;"] if p.shape(r) == PAIR else [f"float s{r};"]
        blocks.append({"kind": "scalar", "lines": decl})
        blocks.append(_sweep_block(c, sw))
        blocks.append({"kind": "scalar", "lines": _scalar_lines(c, sw.scalars_after, fallback)})
    args = "".join(f", float rp_{name}" for name in row_params)
    if p.phase is not None:   # a phase of a matrix program: its vectors (see matrix_entry.c.j2)
        args = ", size_t m" + args + "".join(f", float *cv_{v}" for v in p.vector_names()[1]) \
            + "".join(f", float *em_{p.attrs(v)['name']}" for v in p.nodes("emit"))
    return {"name": fname, "comment": f"{p.name}: {pl.traffic()['summary']}, {len(pl.sweeps)} sweeps",
            "blocks": blocks, "args": args}


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
        vmath=vmath(), functions=functions, lanes=t.lanes, entry_row=None, tvm=False, row_params=[],
        rp_args="", matrix=matrix_entry(mp, name))


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
        functions=functions, lanes=t.lanes, entry_row=f"{name}__row", tvm=False, row_params=rps,
        rp_args=entry_row_args(rps), matrix=None)
