"""Jinja-C backend: lowers a planned IR program and a schedule to C for one target.

The templates hold the loop skeleton (blocks, unrolled main loop, single-vector loop, masked
tail), the vector math and the per-target intrinsic tables; this module decides what goes in
them: which values each sweep computes, where each reduction keeps its state (vector registers,
per accumulator) and which scalars are computed between sweeps. The reductions' steps and the
scalar-op dispatch are written once for every backend (``softgen.numerics``); ``CEmit`` and
``CScalars`` spell them in C. Every emitted statement uses only the V_* macros of the
virtual ISA (``targets.VIRTUAL_ISA``), so a new target is a data file, not new code here.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

from .._version import __version__
from ..analysis import matrix_plan_lines, matrix_traffic
from ..costmodel import ThreadPolicy, matrix_thread_policy, thread_policy
from ..errors import BuildError, UsageError
from ..ir import PAIR, Program
from ..matrix import AttentionPhase, SweepPhase
from ..numerics.constants import EXP_VARIANTS, EXTEXP_E0, FOLD_MAX
from ..numerics.reductions import FLT_MAX, REDUCTIONS, Reduction, flush_steps, reduction
from ..numerics.scalars import lower_scalars
from ..passes import (
    EXTEXP_F32_DOMAIN,
    LAZY_FIRST,
    LAZY_RECORDS,
    LAZY_SLACK,
    STREAMING_NORMALIZERS,
    LazyMax,
    lazy_max,
    max_shifted,
    pipeline_refusal,
    plan,
)
from ..render import env, flit, fold_exp, isa_header, scaled_exp, select_helpers, vmath
from ..schedule import GemmSchedule, Schedule
from ..targets import Target
from .attention import TASK_GRAIN, attention_function, score_rows, task_rows
from .base import Artifact, Backend, register
from .entry import abi, entry_row_args, matrix_abi, matrix_entry, matrix_gemms, phase_args, row_outputs
from .gemm import Epilogue, gemm, schedule_for

# -- the C emitter of the shared numerics (softgen.numerics) ------------------------------------

class CEmit:
    """``numerics.reductions.Emitter`` for C: values are expressions over the ``V_*`` macros and
    the ``sg_*`` helpers of vmath.h.j2; the state lives in vector registers, assigned in place."""

    _CONSTS = {0.0: "V_ZERO()", -math.inf: "V_SET1(-INFINITY)", float(EXTEXP_E0): "V_SET1(SG_EXTEXP_E0)",
               -FLT_MAX: "V_SET1(-FLT_MAX)"}

    def __init__(self):
        self.lines: list[str] = []
        self._n = 0
        self._declared = False   # a temporary was declared: the statements need a scope
        self._indent = ""

    def emit(self, line: str) -> None:
        self.lines.append(self._indent + line)

    def block(self) -> list[str]:
        """The statements, in a scope of their own if they declared temporaries."""
        return ["{"] + ["    " + ln for ln in self.lines] + ["}"] if self._declared else self.lines

    @classmethod
    def const(cls, v: float) -> str: return cls._CONSTS.get(v) or f"V_SET1({flit(v)})"
    def scale(self, red) -> str: return f"sc{red.r}"
    def splat(self, s: str) -> str: return f"V_SET1({s})"
    def add(self, a, b): return f"V_ADD({a}, {b})"
    def sub(self, a, b): return f"V_SUB({a}, {b})"
    def mul(self, a, b): return f"V_MUL({a}, {b})"
    def max(self, a, b): return f"V_MAX({a}, {b})"
    def fma(self, a, b, c): return f"V_FMA({a}, {b}, {c})"
    def exp_nonpos(self, x): return f"sg_exp_nonpos({x})"
    def scale2(self, a, d): return f"V_SCALE2({a}, {d})"
    def scale2_add(self, acc, a, d): return f"V_SCALE2_ADD({acc}, {a}, {d})"
    def hmax(self, v): return f"V_HMAX({v})"
    def hsum(self, v): return f"V_HSUM({v})"

    def extexp_terms(self, red, x: str, j: int) -> tuple[str, str]:
        """u = s x clamped (with s x's low part l when scaled), n = round(u log2 e); p stays an
        expression, evaluated where it is added."""
        self._declared = True
        if red.scale != 1.0:
            self.emit(f"VEC l{j}, u{j} = sg_twoprod(V_MAX(lim{red.r}, {x}), sc{red.r}, &l{j});")
            p = f"sg_extexp_p_lo(u{j}, n{j}, l{j})"
        else:
            self.emit(f"const VEC u{j} = sg_extexp_clamp({x});")
            p = f"sg_extexp_p(u{j}, n{j})"
        self.emit(f"const VEC n{j} = sg_extexp_n(u{j});")
        return f"n{j}", p

    def kahan(self, s: str, c: str, b: str) -> tuple[str, str]:
        self.emit(f"sg_kahan_add(&{s}, &{c}, {b});")
        return s, c

    def var(self, expr: str, name: str | None = None, const: bool = True) -> str:
        self._declared = True
        if name is None:
            self._n += 1
            name = f"t{self._n}"
        self.emit(f"{'const ' if const else ''}VEC {name} = {expr};")
        return name

    def assign(self, dst: str, expr: str) -> str:
        self.emit(f"{dst} = {expr};")
        return dst

    @contextmanager
    def if_any_gt(self, a: str, b: str):
        self.emit(f"if (V_ANY(V_CMPGT({a}, {b})))")
        at, self._indent = len(self.lines), self._indent + "    "
        yield
        self._indent = self._indent[:-4]
        if len(self.lines) - at != 1:
            self.lines[at:] = [self._indent + "{"] + self.lines[at:] + [self._indent + "}"]

    def result(self, res: list[str], i: int, value: str) -> None:
        self.emit(f"{res[i]} = {value};")


def _c(step) -> list[str]:
    """The C statements of a reduction step, ``step(emitter)``."""
    e = CEmit()
    step(e)
    return e.block()


class TopKRed(Reduction):
    """k sorted (key, index) registers per lane and accumulator, updated by a compare/blend
    insertion network. Strict >: a later equal key stays below, so the lower index wins ties
    (each lane of each accumulator sees its elements in index order); displaced pairs shift. A group of vectors skips
    the network when no lane beats its lane's k-th key (V_ANY). Not blocked: there is no sum to
    compensate; the lanes of all accumulators are merged once per row, in scalar code.
    C only (the TVM backend has its own): see ``softgen.numerics.reductions``."""
    op, identity, blocked, replicated = "reduce_topk", -math.inf, False, False

    def __init__(self, r: int = 0, k: int = 1, lanes: int = 1):
        super().__init__(r)
        self.k, self.lanes = k, lanes
        self.fields = tuple(f"v{i}" for i in range(k)) + tuple(f"j{i}" for i in range(k))
        self.kp = -(-k // lanes) * lanes       # the selection, padded to whole vectors
        self.sel = (f"sel{r}_v", f"sel{r}_j")  # the row's kept keys and indices, largest first

    def init(self, f): return -math.inf if f[0] == "v" else math.inf
    def decl(self): return [f"float {self.sel[0]}[{self.kp}], {self.sel[1]}[{self.kp}];"]

    def update(self, e, st, vals):
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
        e.lines += lines + ["}"]
        return st

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


class RadixTopKRed(Reduction):
    """reduce_topk for k above the target's ``topk_network_max_k``: no per-lane state; after the
    sweep (whose other reductions it shares) ``sg_topk_radix`` (templates/select.h.j2) finds the
    k-th largest key by radix select on the float bits, re-reading the row."""
    op, identity, blocked, replicated = "reduce_topk", -math.inf, False, False

    def __init__(self, r: int = 0, k: int = 1):
        super().__init__(r)
        self.k = k

    def update(self, e, st, vals):
        e.lines += [f"(void){j};   /* the index leaf: radix select counts its own */" for _, j in vals]
        return st

    def finish_all(self, accs, res, sc):
        return [f"sg_topk_radix(x, n, {self.k}, &{res[0]}, &{res[1]}, &{res[2]}, &{res[3]});"]


TOPK_STATE_MAX = 1 << 20   # bytes of streaming top-k's per-row network state on the stack (br rows)


def topk_stream(ph: AttentionPhase, t: Target) -> dict | None:
    """Streaming top-k attention's selection C (``templates/attention.c.j2``): for k up to the
    target's ``topk_network_max_k`` the row op's insertion network (``TopKRed``: its update over a
    block's score vectors, state kept per query row across key blocks; its lane merge at the row's
    end), else {"radix": True} (a score tile and ``sg_topk_radix``); None for other normalizers."""
    if ph.normalizer != "topk_softmax":
        return None
    k = ph.top_k
    if k > t.topk_network_max_k:
        return {"radix": True, "k": k}
    if ph.br * k * t.lanes * 8 > TOPK_STATE_MAX:
        raise UsageError(f"top-k attention: br = {ph.br} query rows x top_k = {k} places x {t.lanes} lanes of (key, "
                         f"index) state exceed {TOPK_STATE_MAX // 1024} KiB of stack: take a smaller br")
    red, e = TopKRed(0, k, t.lanes), CEmit()
    st = {f"{f}{i}": f"tk{f}{i}" for f in "vj" for i in range(k)}
    red.update(e, st, [("x", "xj")])
    acc = {f"{f}{i}": f"V_LOAD(tk_{f}[r] + {i} * SG_LANES)" for f in "vj" for i in range(k)}
    finish = red.decl() + red.finish_all([acc], ["tk_t", "tk_jt", "tk_m", "tk_d"], None)
    return {"radix": False, "k": k, "kp": red.kp, "sel": red.sel, "state": list(st.values()),
            "network": e.lines, "merge": finish}


def radix_topk(p: Program, t: Target) -> bool:
    """Whether ``p``'s top-k selections take radix select on target ``t`` (else the network)."""
    return any(p.attrs(r)["k"] > t.topk_network_max_k for r in p.nodes("reduce_topk"))


def _red(c: "_Ctx", r: int) -> Reduction:
    if c.p.op(r) == "reduce_topk":
        k = c.p.attrs(r)["k"]
        if k <= c.t.topk_network_max_k:
            return TopKRed(r, k, c.t.lanes)
        if c.p.op(c.p.args(r)[0]) != "input":
            raise BuildError(f"{c.p.name}: radix select (top-k with k = {k} > {c.t.topk_network_max_k}) "
                             f"reads its keys from the row: they must be the input row, got "
                             f"%{c.p.args(r)[0]} {c.p.op(c.p.args(r)[0])}")
        return RadixTopKRed(r, k)
    return reduction(c.p.op(r), r, c.p.attrs(r))

# Row (vector) and scalar lowerings of the map ops.
VECTOR_C = {
    "add": "V_ADD({0}, {1})", "sub": "V_SUB({0}, {1})", "mul": "V_MUL({0}, {1})",
    "div": "V_DIV({0}, {1})", "max": "V_MAX({0}, {1})", "min": "V_MIN({0}, {1})",
    "neg": "V_SUB(V_SET1(-0.0f), {0})", "abs": "V_ABS({0})", "recip": "V_DIV(V_SET1(1.0f), {0})",
    "exp": "sg_exp({0})", "exp_shift2": "sg_exp_shift2({0}, {1})", "sub_ln2": "sg_sub_ln2({0}, {1}, {2})",
    "fma": "V_FMA({0}, {1}, {2})", "where_lt": "V_SELECT(V_CMPLT({0}, {1}), {2}, {3})", "log": "sg_log({0})",
    "log1p": "sg_log1p({0})", "log_ratio": "sg_log_ratio({0}, {1})",
    "finite_or_nan": "V_SELECT(V_CMPLT(V_ABS({0}), V_SET1(INFINITY)), {0}, V_SET1(NAN))",
    "where_ranked": "V_SELECT(V_CMPGT({0}, {2}), {4}, V_SELECT(V_CMPEQ({0}, {2}), "
                    "V_SELECT(V_CMPGT({1}, {3}), {5}, {4}), {5}))",
}
# Map ops with a scale attribute (from the two-pass rewrite): s x is kept exact as hi + lo.
SCALED_C = {
    "exp_shift2": "sg_exp_shift2_scaled({0}, {1}, V_SET1({s}), V_SET1({lim}))",
    "sub_ln2": "sg_sub_ln2_scaled({0}, {1}, {2}, V_SET1({s}))",
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
        if kind in ("reduce", "colreduce") and op != "reduce_topk" and \
                op.replace("colreduce_", "reduce_") not in REDUCTIONS:   # read now: one may be added
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


def _body(c: _Ctx, sw, u: int, tail: bool, bufs: dict | None = None, stores: bool = True,
          stream: bool = False) -> list[str]:
    """Statements computing one vector (unroll slot u) of every row value of a sweep (and its
    stores, unless ``stores`` is False). ``bufs``: what the input and index leaves load and where
    the output goes (a selected-output sweep runs over the selection instead of the row); an
    ``x_value`` entry is the input itself (a GEMM epilogue's product) instead of a load.
    ``stream``: whole-vector stores to y are non-temporal (``V_STREAM``; y + i is aligned)."""
    p, L = c.p, c.t.lanes
    bufs = bufs or {"x": "x", "index": None, "y": "y"}
    off = "i" if u == 0 else f"i + {u * L}"
    load = (lambda buf: f"V_LOAD_PART({buf} + i, k)") if tail else (lambda buf: f"V_LOAD({buf} + {off})")
    lines = [f"const VEC v{m}_{u} = {load('y')};" for m in sw.reloads]
    for v in sw.compute:
        op = p.op(v)
        args = [_row_arg(p, a, u) for a in p.args(v)]
        if op == "input":
            expr = bufs["x_value"] if bufs.get("x_value") else load(bufs["x"])
        elif op == "index":
            expr = load(bufs["index"]) if bufs["index"] else f"V_ADD(V_SET1((float)(int32_t)({off})), iota)"
        elif op in ("colvec", "matrow"):
            expr = load(f"{'cv' if op == 'colvec' else 'mx'}_{p.attrs(v)['name']}")
        elif op == "materialize":
            expr = args[0]
        elif op == "exp" and p.attrs(v).get("nonpos"):
            # the scaled exp (one instruction fewer) where the sum of the terms is >= 1
            shifted = scaled_exp(c.t) and max_shifted(p, v)
            expr = f"sg_exp_{'shifted' if shifted else 'nonpos'}({args[0]})"
        elif op == "log1p" and p.attrs(v).get("unit"):
            expr = f"sg_log1p_unit({args[0]})"
        elif op == "exp_shift2" and shift2_fold(c):
            expr = f"sg_exp_shift2_fold({args[0]}, {args[1]})"
        elif op == "mul" and shift2_capped(c, v):
            expr = f"V_MIN(V_SET1(1.0f), {VECTOR_C[op].format(*args)})"   # NaN survives: the 2nd operand
        elif op in SCALED_C and p.attrs(v).get("scale", 1.0) != 1.0:
            sc = p.attrs(v)["scale"]
            expr = SCALED_C[op].format(*args, s=flit(sc), lim=flit(-EXTEXP_F32_DOMAIN / sc))
        elif op in VECTOR_C:
            expr = VECTOR_C[op].format(*args)
        else:
            raise BuildError(f"the C backend has no vector lowering for IR op {op!r}")
        lines.append(f"const VEC v{v}_{u} = {expr};")
    for v in (sw.stores + ([sw.output] if sw.output is not None else []) + sw.colstores) if stores else []:
        val = _row_arg(p, p.args(v)[-1], u)
        y = f"cv_{p.attrs(v)['name']}" if p.op(v) == "colstore" else bufs["y"]
        st = "V_STREAM" if stream and p.op(v) != "colstore" else "V_STORE"
        lines.append(f"V_STORE_PART({y} + i, {val}, k);" if tail else f"{st}({y} + {off}, {val});")
    return lines


def streams(c: _Ctx, sw) -> bool:
    """Whether sweep ``sw`` gets non-temporal stores: the schedule's ``stream``, on the sweep that
    writes the output (not a y it reloads later, which should stay in cache)."""
    return c.s.stream and sw.output is not None and sw.selected is None


def _prefetches(c: _Ctx, sw) -> list[str]:
    """Software prefetches ``c.s.prefetch`` elements ahead of the main loop's reads (x, and y
    when the sweep reloads it): one per 64-byte line the iteration covers."""
    d = c.s.prefetch
    if not d:
        return []
    bufs = (["x"] if sw.reads_x else []) + (["y"] if sw.reloads else [])
    step = c.s.unroll * c.t.lanes
    return [f"__builtin_prefetch({b} + i + {d + off});" for b in bufs for off in range(0, step, 16)]


def _colreduce(c: _Ctx, r: int, u: int, tail: bool) -> list[str]:
    """One vector of a column reduction: load the columns' state, update it, store it back.
    Tail lanes are neither loaded nor stored, so their values do not matter."""
    p, L = c.p, c.t.lanes
    red = reduction(p.op(r), r, p.attrs(r))
    off = "i" if u == 0 else f"i + {u * L}"
    st = {f: f"c{r}_{u}_{f}" for f in red.fields}
    buf = {f: f"cv_{p.attrs(r)['name']}_{f}" for f in red.fields}
    load = (lambda b: f"V_LOAD_PART({b} + i, k)") if tail else (lambda b: f"V_LOAD({b} + {off})")
    store = (lambda b, a: f"V_STORE_PART({b} + i, {a}, k);") if tail else \
        (lambda b, a: f"V_STORE({b} + {off}, {a});")
    lines = [f"VEC {st[f]} = {load(buf[f])};" for f in red.fields]
    val = _row_arg(p, p.args(r)[0], u)
    lines += _c(lambda e: red.column_update(e, st, val))
    return ["{"] + ["    " + ln for ln in lines + [store(buf[f], st[f]) for f in red.fields]] + ["}"]


def _acc(r: int, k: int, red: Reduction) -> dict:
    return {f: f"a{r}_{k}_{f}" for f in red.fields}


def _part(r: int, k: int, red: Reduction) -> dict:
    """Accumulator k's block partial (``Reduction.flush``): arrays of a vector each, so that they
    hold no register across the main loop (avx2 has 16: its exp constants were reloaded there)."""
    return {f: f"a{r}_p{k}_{f}" for f in red.fields}


def _reg(part: dict) -> dict:
    """The registers a partial is loaded into (``_in_memory``)."""
    return {f: n.replace("_p", "_q", 1) for f, n in part.items()}


def _in_memory(parts: list[dict], lines: list[str], reset=None) -> list[str]:
    """``lines`` on the partials ``parts`` loaded into registers (``_reg``), then stored back (or
    ``reset(field)`` stored: the block's end)."""
    load = [f"VEC {_reg(q)[f]} = V_LOAD({n});" for q in parts for f, n in q.items()]
    store = [f"V_STORE({n}, {CEmit.const(reset(f)) if reset else _reg(q)[f]});" for q in parts for f, n in q.items()]
    return ["{"] + ["    " + ln for ln in load + lines + store] + ["}"]


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
    if (sw.stores or sw.output is not None) and any(isinstance(_red(c, r), RadixTopKRed) for r in sw.reductions):
        raise BuildError(f"{p.name}: radix select re-reads x after its sweep, which writes y (y may be x)")
    setup, fold, finish, flush = _setup(c, sw), [], [], []
    for r in sw.reductions:
        red, sc = _red(c, r), _scale_of(p, r)
        if sc:
            setup.append(f"const VEC {sc} = V_SET1({flit(p.attrs(r)['scale'])});")
            setup += [f"const VEC {nm}{r} = V_SET1({flit(v)});" for nm, v in red.constants()]
        for k in range(A if red.replicated else 1):
            setup += [f"VEC {n} = {CEmit.const(red.init(f))};" for f, n in _acc(r, k, red).items()]
        if not red.blocked:
            finish += red.finish_all([_acc(r, k, red) for k in range(A if red.replicated else 1)],
                                     _results(p, r), sc)
            continue
        out = {f: f"o{r}_{f}" for f in red.outer}
        setup += [f"VEC {n} = {CEmit.const(red.outer_init(f))};" for f, n in out.items()]
        accs = [_acc(r, k, red) for k in range(A)]
        if red.partial:   # the accumulators join their block partials, which merge and fold
            parts = [_part(r, k, red) for k in range(A)]
            setup += [f"float {n}[SG_LANES];" for q in parts for n in q.values()]
            setup += [f"V_STORE({n}, {CEmit.const(red.init(f))});" for q in parts for f, n in q.items()]
            for k in range(A):
                flush += _in_memory([parts[k]], _c(lambda e: red.flush(e, _reg(parts[k]), accs[k])))
            own = [ln for k in range(A) for ln in _c(lambda e: red.flush(e, _reg(parts[k]), accs[k]))]
            own += [f"{n} = {CEmit.const(red.init(f))};" for a in accs for f, n in a.items() if f in red.kept]
            for k in range(1, A):
                own += _c(lambda e: red.merge(e, _reg(parts[0]), _reg(parts[k])))
            own += _c(lambda e: red.fold(e, out, _reg(parts[0])))
            fold += _in_memory(parts, own, red.init)
        else:
            for k in range(1, A):
                fold += _c(lambda e: red.merge(e, accs[0], accs[k]))
                fold += [f"{n} = {CEmit.const(red.init(f))};" for f, n in accs[k].items()]
            fold += _c(lambda e: red.fold(e, out, accs[0]))
            fold += [f"{n} = {CEmit.const(red.init(f))};" for f, n in accs[0].items()]
        finish += _c(lambda e: red.finish(e, out, _results(p, r)))

    def updates(slots: list[int], tail: bool) -> list[str]:
        lines = []
        for r in sw.reductions:
            red, args = _red(c, r), p.args(r)
            groups = {}
            for u in slots:
                vals = [_row_arg(p, a, u) for a in args]
                if tail:
                    vals[0] = f"V_SELECT(tm, {vals[0]}, V_SET1({flit(red.identity)}))"
                groups.setdefault(u % A if red.replicated else 0, []).append(
                    vals[0] if len(vals) == 1 else tuple(vals))
            for k, vals in groups.items():
                lines += _c(lambda e: red.update(e, _acc(r, k, red), vals))
        for r in sw.colreds:
            for u in slots:
                lines += _colreduce(c, r, u, tail)
        return lines

    # Node-major: the unroll slots' copies of each row value sit side by side, so the slots' long
    # per-element chains (softplus: exp, then log1p) overlap instead of queueing in the scheduler.
    nt = streams(c, sw)
    bodies = [_body(c, sw, u, False, stream=nt) for u in range(U)]
    main = _prefetches(c, sw) + [ln for same in zip(*bodies) for ln in same] + updates(list(range(U)), False)
    single = _body(c, sw, 0, False, stream=nt) + updates([0], False)
    tail = (["const MASK tm = V_TAILMASK(k);"] if sw.reductions else []) + _body(c, sw, 0, True) \
        + updates([0], True)
    if nt:   # y + i aligned before the whole-vector stores (the peel is a tail); one fence per row
        finish = finish + ["V_FENCE();   /* order the non-temporal stores before returning */"]
    what = [f"{p.op(v)}" for v in sw.reductions + sw.colreds] \
        + (["store y"] if sw.stores else []) + (["write y"] if sw.output is not None else []) \
        + [f"store {p.attrs(v)['name']}" for v in sw.colstores]
    reads = ("x" if sw.reads_x else "") + (" y" if sw.reloads else "")
    vecs = sorted({p.attrs(v)["name"] for v in sw.compute if p.op(v) in ("colvec", "matrow")})
    reads = (reads + "".join(f" {v}" for v in vecs)).strip() or "-"
    return {"kind": "sweep", "index": sw.index, "comment": f"read {reads}; {', '.join(what)}",
            "begin": "0", "end": "n", "setup": setup, "blocked": any(_red(c, r).blocked for r in sw.reductions),
            "block": c.s.block, "step": U * L, "length": "n",
            "main": main, "single": single, "tail": tail, "fold": fold, "finish": finish,
            "peel": tail if nt else [], "align": c.t.stream_align, **_flushing(c, flush)}


def _flushing(c: _Ctx, flush: list[str]) -> dict:
    """The main loop in runs of ``flush_steps`` steps, each ended by ``flush`` (the accumulators
    into their block partials), when a block holds more than one run; else the fold flushes."""
    run = flush_steps(c.s.unroll, c.s.accumulators) * c.s.step(c.t.lanes)
    return {"flush": flush, "run": run} if flush and run < c.s.block else {}


def _selected_block(c: _Ctx, sw) -> dict:
    """The output sweep of an output_selected: the sweep's row values evaluated over the kept
    (key, index) pairs of its reduce_topk, whole vectors over the padded selection, then the
    min(k, n) indices and values written out."""
    sel = _red(c, sw.selected)
    if isinstance(sel, RadixTopKRed):
        return _radix_selected_block(c, sw, sel)
    (sv, sj), k, kp = sel.sel, sel.k, sel.kp
    bufs = {"x": sv, "index": sj, "y": f"{sv[:-2]}_w"}
    setup = _setup(c, sw) + [f"float {bufs['y']}[{kp}];", f"const size_t ns = n < {k} ? n : {k};",
                             f"sg_topk_fill(x, n, {sv}, {sj}, ns);"]
    body = _body(c, sw, 0, False, bufs)
    finish = ["for (size_t q = 0; q < ns; q++) {", f"    idx[q] = (int64_t){sj}[q];",
              f"    w[q] = {bufs['y']}[q];", "}"]
    return {"kind": "sweep", "index": sw.index, "begin": "0", "end": "n",
            "comment": f"the {k} selected entries -> indices and weights", "setup": setup,
            "blocked": False, "block": c.s.block, "step": c.t.lanes, "length": str(kp),
            "main": body, "single": [], "tail": [], "fold": [], "finish": finish, "peel": [], "align": 0}


RADIX_CHUNK = 64   # the sparse radix output computes its weights this many selected entries at a time


def _radix_note(p: Program, t: Target) -> list[str]:
    """The header's words for a radix top-k (it re-reads the row: the plan above does not count it)."""
    return [f"top-k k={p.attrs(r)['k']} > {t.topk_network_max_k} (target topk_network_max_k): radix "
            f"select (sg_topk_radix) after the sweep: a histogram pass over x, a vector filter (the top "
            f"bucket's keys to the stack, a quickselect), a tie scan, an exp-sum pass"
            for r in p.nodes("reduce_topk") if p.attrs(r)["k"] > t.topk_network_max_k]


def _radix_selected_block(c: _Ctx, sw, sel: RadixTopKRed) -> dict:
    """The sparse output of a radix selection: ``sg_topk_collect`` writes the min(k, n) kept
    (key, index) pairs, sorted, to w and idx (the output is the scratch), then the sweep's row
    values run over them RADIX_CHUNK at a time (a stack copy, whole vectors) and replace the keys
    in w by the weights."""
    r, k, B = sel.r, sel.k, RADIX_CHUNK
    t, jt = _results(c.p, r)[:2]
    bufs = {"x": f"sel{r}_v", "index": f"sel{r}_j", "y": f"sel{r}_w"}
    body = _body(c, sw, 0, False, bufs)
    lines = _setup(c, sw) + [
        f"float {bufs['x']}[{B}], {bufs['index']}[{B}], {bufs['y']}[{B}];",
        f"const size_t ns = n < {k} ? n : {k};",
        f"sg_topk_collect(x, n, {t}, {jt}, ns, w, idx);",
        f"(void){bufs['index']};   /* read when the weights use the index */",
        f"for (size_t q0 = 0; q0 < ns; q0 += {B}) {{",
        f"    const size_t qn = ns - q0 < {B} ? ns - q0 : {B};",
        f"    for (size_t q = 0; q < {B}; q++) {{   /* past qn: an empty place, as the network's */",
        f"        {bufs['x']}[q] = q < qn ? w[q0 + q] : -INFINITY;",
        f"        {bufs['index']}[q] = q < qn ? (float)idx[q0 + q] : 0.0f;",
        "    }",
        f"    for (size_t i = 0; i < {B}; i += SG_LANES) {{"]
    lines += ["        " + ln for ln in body] + ["    }",
                                                 "    for (size_t q = 0; q < qn; q++)",
                                                 f"        w[q0 + q] = {bufs['y']}[q];", "}"]
    return {"kind": "scalar", "lines": [f"/* sweep {sw.index}: the {k} selected entries (radix select) "
                                        f"-> indices and weights */", "{"]
            + ["    " + ln for ln in lines] + ["}"]}


class CScalars:
    """``numerics.scalars.ScalarEmitter`` for C: ``const float`` row scalars; a guard returns from
    the row function after running the fallback row function on the row."""
    name, SCALAR = "C", SCALAR_C

    def __init__(self, c: _Ctx, fallback: str | None, extra: str = "", before: str = ""):
        self.c, self.fallback, self.lines = c, fallback, []
        self.extra = extra   # arguments the fallback takes after the row parameters (", threads")
        self.before = before  # what the guard does before the fallback (the split form: end the team)

    def literal(self, v): return flit(v)
    def define(self, v, expr): self.lines.append(f"const float s{v} = {expr};")
    def row_param(self, name): return f"rp_{name}"
    def size(self, axis): return f"(float){'m' if axis == 'rows' else 'n'}"
    def row_index(self): return "(float)row"
    def mscalar(self, name): return f"ms_{name}"
    def item(self, r, index): return f"s{r}_{index}"
    def emit(self, name, a): self.lines.append(f"*em_{name} = {a};")

    def mreduce_max(self, name, a):   # NaN propagates: once the scalar is NaN it stays NaN
        self.lines.append(f"if ({a} > *mr_{name} || isnan({a})) *mr_{name} = {a};")

    def mreduce_sum(self, name, a): self.lines.append(f"*mr_{name} += {a};")

    def guard(self, a, limit):
        single = ""
        if shift2_fold(self.c):   # sg_exp_shift2_fold's |E|, and one element's exact 1: the fallback's
            limit, single = min(limit, SHIFT2_FOLD_E), " || n < 2"
        rest = "".join(f", rp_{name}" for name in self.c.row_params)
        outs = ", ".join(row_outputs(self.c.p))
        self.lines.append(f"if (!(fabsf({a}) <= {flit(limit)}){single}) "
                          f"{{ {self.before}{self.fallback}(x, {outs}, n{rest}{self.extra}); return; }}")


def _scalar_lines(c: _Ctx, nodes: list[int], fallback: str | None, extra: str = "",
                  before: str = "") -> list[str]:
    e = CScalars(c, fallback, extra, before)
    lower_scalars(c.p, nodes, e)
    return e.lines


def _row_function(p: Program, t: Target, s: Schedule, fname: str, fallback: str | None,
                  row_params: list[str]) -> dict:
    c, pl = _Ctx(p, t, s, row_params), plan(p)
    lz = lazy_form(p, s)
    fold = lazy_fold(c, lz)
    blocks = [{"kind": "scalar", "lines": _scalar_lines(c, pl.scalars_before, fallback)}]
    for sw in pl.sweeps:
        decl = []
        for r in sw.reductions:
            red = _red(c, r)
            decl += [f"float {', '.join(_results(p, r))};"] + (red.decl() if isinstance(red, TopKRed) else [])
        blk, after = _sweep_block(c, sw), []
        if lz:
            decl, blk, after = _lazy_sweep(c, lz, sw, decl, blk, fold=fold)
        blocks.append({"kind": "scalar", "lines": decl})
        blocks.append(blk)
        blocks.append({"kind": "scalar", "lines": after + _scalar_lines(c, sw.scalars_after, fallback)})
    args = "".join(f", float rp_{name}" for name in row_params)
    if p.phase is not None:   # a phase of a matrix program: see phase_args
        args = "".join(f", {t}{'' if t.endswith('*') else ' '}{n}" for t, n, _ in phase_args(p)[1:])
    return {"name": fname, "comment": f"{p.name}: {pl.traffic()['summary']}, {len(pl.sweeps)} sweeps",
            "blocks": blocks, "args": args,
            "outs": "float *y" if p.phase is not None else abi(p, fname)["row_decl"]}


# -- two-pass's output exps folded (vmath.h.j2 sg_exp_shift2_fold) ---------------------------------
SHIFT2_FOLD_E = math.floor(float(FOLD_MAX) / math.log(2.0))   # 5909: |E ln2| <= SG_FOLD_MAX


def shift2_fold(c: _Ctx) -> bool:
    """Whether the row function's e^u 2^-E (two-pass's output sweep, exp_shift2 of u itself: scale 1)
    take sg_exp_shift2_fold, the table exp folded against R = E ln2, instead of the p5 (p, n) pair:
    where the target has sg_exp_fold (``render.fold_exp``: the default exp of a target whose
    shifted_exp is a table variant). Its guard then sends rows with |E| > SHIFT2_FOLD_E (|x| beyond
    ~4096) to the fallback (three-pass-recompute) instead of those beyond 188896."""
    return fold_exp(c.t, c.s.exp) and any(c.p.op(v) == "exp_shift2" and c.p.attrs(v).get("scale", 1.0) == 1.0
                                          for v in c.p.g)


def shift2_capped(c: _Ctx, v: int) -> bool:
    """Whether row value ``v`` is a folded e^u 2^-E times the reciprocal of the row's sum (the
    probability), which the C backend caps at 1: the sum's p5 pair and the output's table exp round
    apart (up to 2 ulp each way on a row one element dominates), and a probability is never above 1,
    as with the p5 pair in both sweeps (p fl(1/p) <= 1)."""
    a = c.p.args(v)
    return shift2_fold(c) and len(a) == 2 and {c.p.op(a[0]), c.p.op(a[1])} == {"exp_shift2", "recip"}


# -- schedule lazymax (passes.lazy_max) -------------------------------------------------------------

def lazy_form(p: Program, s: Schedule) -> LazyMax | None:
    """``p``'s ``LazyMax`` form when schedule ``s`` asks for lazymax and the plan has one."""
    lz = lazy_max(plan(p)) if s.lazymax else None
    return lz if isinstance(lz, LazyMax) else None


def lazy_fold(c: _Ctx, lz: LazyMax | None) -> bool:
    """Whether the row function's lazymax exp sweep (sweep 1) takes sg_exp_fold (vmath.h.j2): e^(x - r)
    straight from x, where the target has it (``render.fold_exp``) and the exps' argument is x - r
    itself (scale 1). Its batch forms run that sweep's code per row, so they fold too: schedule
    rows=R (``_rows_function``: each row its own lz_fold, lz_c, lz_lo, r<j>_-prefixed) and pipeline
    (``_pipe_function``: the sweep whose loop also runs the previous row's output sweep, which only
    scales y by the segments' factors, sg_fold_ref's like the sums). The split form's chunks keep
    sg_exp_shifted (their merge rescales by the chunks' plain references)."""
    if lz is None or lz.scale != 1.0 or not fold_exp(c.t, c.s.exp):
        return False
    return _fold_lines(lz, _sweep_block(c, plan(c.p).sweeps[1])["main"]) is not None


def _fold_lines(lz: LazyMax, lines: list[str]) -> list[str] | None:
    """A block's lines with its exps of x - r from x (sg_exp_fold) while the reference folds
    (lz_fold), else as they were; None when its exps are not of x - r itself."""
    sub = re.compile(rf"const VEC v{lz.d}_(\d+) = V_SUB\(v{lz.x}_\1, b{lz.m}\);$")
    ex = re.compile(rf"const VEC (v\d+_(\d+)) = sg_exp_shifted\(v{lz.d}_\2\);$")
    subs = [j for j, ln in enumerate(lines) if sub.match(ln)]
    exps = [(j, ex.match(ln)) for j, ln in enumerate(lines) if ex.match(ln)]
    if not exps or len(subs) != len(exps) or subs[-1] > exps[0][0] \
            or any(f"v{lz.d}_" in ln for j, ln in enumerate(lines) if j not in subs and j not in dict(exps)):
        return None
    names = [(m.group(1), m.group(2)) for _, m in exps]
    group = [f"VEC {', '.join(v for v, _ in names)};",
             "if (__builtin_expect(lz_fold, 1)) {   /* e^(x - R) from x: sg_exp_fold */"]
    group += [f"    {v} = sg_exp_fold(v{lz.x}_{u}, lz_c, lz_lo);" for v, u in names]
    group += ["} else {"] + [f"    {v} = sg_exp_shifted(V_SUB(v{lz.x}_{u}, b{lz.m}));" for v, u in names] + ["}"]
    drop = set(subs) | {j for j, _ in exps}
    out = []
    for j, ln in enumerate(lines):
        if j == exps[0][0]:
            out += group
        if j not in drop:
            out.append(ln)
    return out


def _lazy_state(lz: LazyMax, lo: str) -> list[str]:
    """The reference (from the max s<m> of sweep 0) and its segments, the first at ``lo``."""
    return [f"float lz_r = s{lz.m} < -FLT_MAX ? -FLT_MAX : s{lz.m};   /* the reference (-inf: -FLT_MAX; NaN stays) */",
            f"size_t lz_pos[{LAZY_RECORDS}];   /* where each kept reference's segment starts */",
            f"float lz_ref[{LAZY_RECORDS}];",
            "int lz_cnt = 1;", f"lz_pos[0] = {lo};", "lz_ref[0] = lz_r;"]


def _lazy_top(arr: str, count: str) -> list[str]:
    """The split form's row reference: the chunks' largest (NaN wins), ``lz_r``."""
    return [f"float lz_r = {arr}[0].r;   /* lazymax: the row's reference, the chunks' largest */",
            f"for (size_t q = 1; q < {count}; q++)",
            f"    if ({arr}[q].r > lz_r || isnan({arr}[q].r))",
            f"        lz_r = {arr}[q].r;"]


def _lazy_sweep(c: _Ctx, lz: LazyMax, sw, decl: list[str], blk: dict, lo: str = "0",
                hi: str = "n", fold: bool = False) -> tuple[list[str], dict, list[str]]:
    """A three-pass-reload sweep under schedule lazymax: (declarations before it, its block, row
    lines after it). Sweep 0 takes the max of the first LAZY_FIRST elements only (the reference r: ``lz_r``);
    sweep 1 moves r to a group of vectors' max where one exceeds r + LAZY_SLACK / s (rescaling
    the sum's partial states, recording where: ``lz_pos``, ``lz_ref``, the oldest dropped
    beyond LAZY_RECORDS); sweep 2 runs per recorded segment, its factor times e^(s (r_k - r))
    ([0, lz_pos[0]): times 0, NaN kept). ``fold`` (``lazy_fold``): sweep 1's exps by sg_exp_fold while
    |r| <= SG_FOLD_MAX, the terms then against R = sg_fold_ref(r), which the factors take."""
    sc = lz.scale

    def ref(v: str) -> str:   # the reference a segment's terms are against, in double
        return f"sg_fold_ref({v})" if fold else f"(double){v}"
    lim = f"lz_r + {flit(LAZY_SLACK / sc)}"
    if sw.index == 0:
        fb = LAZY_FIRST
        first = f"n < {fb} ? n : {fb}" if lo == "0" else f"{hi} - {lo} < {fb} ? {hi} : {lo} + {fb}"
        return ([f"const size_t lz_n0 = {first};   /* lazymax: the max of the first {fb} elements */"]
                + decl, {**blk, "end": "lz_n0", "length": "lz_n0"}, _lazy_state(lz, lo) if lo == "0" else [])
    if sw.index == 2:
        f = f"s{lz.factor}"
        setup = [ln for ln in blk["setup"] if not ln.startswith(f"const VEC b{lz.factor} = ")]
        head = [f"for (int lz_k = -1; lz_k < lz_cnt; lz_k++) {{   /* lazymax: [{lo}, lz_pos[0]), then each reference's segment */",
                f"    const size_t lo = lz_k < 0 ? {lo} : lz_pos[lz_k], hi = lz_k + 1 < lz_cnt ? lz_pos[lz_k + 1] : {hi};",
                f"    const VEC b{lz.factor} = V_SET1(lz_k < 0 ? {f} * 0.0f : lz_ref[lz_k] == lz_r ? {f} :   /* r's own: e^0, no libm call */",
                f"        (float)((double){f} * exp({float(sc).hex()} * ({ref('lz_ref[lz_k]')} - {ref('lz_r')}))));"]
        return decl, {**blk, "setup": setup, "segments": head}, []
    red = _red(c, lz.s)
    accs = [n for k in range(c.s.accumulators if red.replicated else 1) for n in _acc(lz.s, k, red).values()]
    parts = [n for k in range(c.s.accumulators) for n in _part(lz.s, k, red).values()] if red.partial else []
    accs += [f"o{lz.s}_{f}" for f in (red.outer if red.blocked else ())]
    rebase = [f"if (__builtin_expect(V_ANY(V_CMPGT(lz_m, lz_lim)), 0)) {{   /* x > r + {LAZY_SLACK:g} / s: r moves */",
              "    const float lz_new = V_HMAX(lz_m);",
              f"    const VEC lz_f = V_SET1((float)exp({float(sc).hex()} * ({ref('lz_r')} - {ref('lz_new')})));"]
    rebase += [f"    {a} = V_MUL({a}, lz_f);" for a in accs]
    rebase += [f"    V_STORE({a}, V_MUL(V_LOAD({a}), lz_f));" for a in parts]
    rebase += [f"    if (lz_cnt == {LAZY_RECORDS}) {{   /* the oldest segment's terms are below 2^-150 of the newest */",
               f"        memmove(lz_pos, lz_pos + 1, {LAZY_RECORDS - 1} * sizeof *lz_pos);",
               f"        memmove(lz_ref, lz_ref + 1, {LAZY_RECORDS - 1} * sizeof *lz_ref);",
               "        lz_cnt--;", "    }",
               "    lz_pos[lz_cnt] = i;", "    lz_ref[lz_cnt++] = lz_new;",
               "    lz_r = lz_new;", f"    b{lz.m} = V_SET1(lz_r);", f"    lz_lim = V_SET1({lim});"]
    refold = ["lz_fold = fabsf(lz_r) <= SG_FOLD_MAX;   /* sg_exp_fold's reference R and clamp */",
              "lz_c = V_SET1(SG_TMAGIC - sg_fold_q(lz_r));", "lz_lo = V_SET1(sg_fold_lo(lz_r));"]
    rebase += (["    " + ln for ln in refold] if fold else []) + ["}"]

    def checked(lines: list[str], slots: int, tail: bool) -> list[str]:
        loads = [j for j, ln in enumerate(lines) if ln.startswith(f"const VEC v{lz.x}_")]
        vs = [f"v{lz.x}_{u}" for u in range(slots)]
        while len(vs) > 1:
            vs = [f"V_MAX({a}, {b})" for a, b in zip(vs[::2], vs[1::2])] + ([vs[-1]] if len(vs) % 2 else [])
        m = f"V_SELECT(tm, {vs[0]}, V_SET1(-INFINITY))" if tail else vs[0]
        at = loads[-1] + 1
        out = lines[:at] + [f"const VEC lz_m = {m};"] + rebase + lines[at:]
        return _fold_lines(lz, out) if fold else out

    setup = [f"VEC b{lz.m} = V_SET1(lz_r);" if ln.startswith(f"const VEC b{lz.m} = ") else ln for ln in blk["setup"]]
    setup.append(f"VEC lz_lim = V_SET1({lim});")
    if fold:
        setup += ["int lz_fold;", "VEC lz_c, lz_lo;"] + refold
    return decl, {**blk, "setup": setup, "main": checked(blk["main"], c.s.unroll, False),
                  "single": checked(blk["single"], 1, False), "tail": checked(blk["tail"], 1, True)}, []


# -- R rows at once (schedule rows) -----------------------------------------------------------------

# The identifiers of one row in a row function's body: row scalars s<v>, accumulators a<r>_<k>_<f>,
# outer states o<r>_<f>, broadcasts b<v>, row values v<v>_<u>, scales sc<r> (and a scaled
# extexp's clamp lim<r>), the tail mask, lane indices, the row's buffers, lazymax's reference and
# segments lz_*. Each row of a batch gets its copies, prefixed r<j>_.
_ROW_NAMES = re.compile(r"\b([sabov]\d+(?:_\w+)?|sc\d+|lim\d+|lz_\w+|tm|iota|x|y)\b")


def rows_refusal(p: Program, s: Schedule) -> str:
    """Why row program ``p`` has no R-rows form under ``s`` ("" when it has one)."""
    if p.phase is not None:
        return "a phase of a matrix program"
    if p.row_params():
        return "it has per-row parameters"
    if s.stream:
        return "non-temporal stores peel each row to its own alignment"
    if abi(p, "_")["row_decl"] != "float *y":
        return "its output is not a dense row"
    for sw in plan(p).sweeps:
        if sw.selected is not None or sw.colreds or sw.colstores:
            return "a sweep over a selection or columns"
        if any(p.op(r) == "reduce_topk" for r in sw.reductions):
            return "top-k keeps per-lane sorted lists"
        if sw.stores and p.fallback is not None:   # softplus_l1 direct-reload
            return "a sweep stores into y before a row may restart in the fallback (in place, the batch's " \
                   "other rows would restart from their stores)"
    return ""


def _rows_function(one: dict, rows: int, fallback: str | None) -> dict:
    """The R-rows form of a row function (``one``, from ``_row_function``): the same blocks, each
    sweep's loop shared by the rows (one n), every section (setup, main, single, tail, folds,
    finish) and scalar line once per row, row j's identifiers prefixed r<j>_. Each row runs the
    one-row code, so results are bitwise the one-row form's. A guard (two-pass out of the exp
    domain) is taken before any sweep writes y (``rows_refusal`` keeps plans storing before it out): the rows restart one at a time in the one-row
    function, which takes the row's own fallback. Lazymax (``_lazy_sweep``): each row keeps its
    reference and segments; the output sweep, a loop over the row's own segments, runs row after
    row (it has no reduction whose latency a shared loop would hide)."""
    def row(j: int, lines: list[str]) -> list[str]:
        return [_ROW_NAMES.sub(lambda m: f"r{j}_{m.group(1)}", ln) for ln in lines]

    def per_row(lines: list[str]) -> list[str]:
        return [ln for j in range(rows) for ln in row(j, lines)]

    sections = ("setup", "main", "single", "tail", "fold", "finish", "peel", "flush")

    restart = "".join(f"{one['name']}(r{j}_x, r{j}_y, n); " for j in range(rows))
    blocks = [{"kind": "scalar", "lines": [
        "const float " + ", ".join(f"*r{j}_x = x{f' + {j} * ldx' if j else ''}" for j in range(rows)) + ";",
        "float " + ", ".join(f"*r{j}_y = y{f' + {j} * ldy' if j else ''}" for j in range(rows)) + ";"]}]
    for blk in one["blocks"]:
        if blk["kind"] == "scalar":
            lines = blk["lines"]
            if fallback:   # per_row renames x, y: the guard's call becomes the restart afterwards
                lines = [ln.replace(f"{fallback}(x, y, n); return;", "SG_RESTART; return;") for ln in lines]
            first = [ln for ln in lines if ln.startswith("const size_t lz_n0 ")]   # every row's (one n)
            lines = row(0, first) + per_row([ln for ln in lines if ln not in first])
            blocks.append({"kind": "scalar", "lines": [ln.replace("SG_RESTART; ", restart) for ln in lines]})
        elif "segments" in blk:   # lazymax's output sweep: per row, over its segments
            blocks += [{**blk, "comment": f"{blk['comment']} (row {j})",
                        **{k: row(j, blk[k]) for k in sections + ("segments",) if k in blk}} for j in range(rows)]
        else:   # one loop for the rows (one n; lazymax's first sweep ends at r0_lz_n0, every row's)
            blocks.append({**blk, **{k: per_row(blk[k]) for k in sections if k in blk},
                           **{k: row(0, [blk[k]])[0] for k in ("begin", "end", "length")}})
    return {"name": f"{one['name']}_batch{rows}", "blocks": blocks,
            "comment": f"{one['comment']}; {rows} rows at once (schedule rows={rows}): rows x + j ldx -> "
                       f"y + j ldy, j < {rows}, each sweep's loop shared, each row's code its own (r<j>_)",
            "signature": f"static void {one['name']}_batch{rows}(const float *x, float *y, size_t n, "
                         f"size_t ldx, size_t ldy)"}


# -- one row at a time, pipelined (schedule pipeline) -------------------------------------------------

def pipe_refusal(p: Program, s: Schedule) -> str:
    """Why row program ``p`` has no pipelined form under ``s`` ("" when it has one)."""
    if s.stream:
        return "non-temporal stores peel each row to its own alignment"
    if p.phase is None and abi(p, "_")["row_decl"] != "float *y":
        return "its output is not a dense row"
    return pipeline_refusal(plan(p))


_SCALAR_NAMES = re.compile(r"\bs\d+(?:_\d+)?\b")


def _pipe_function(one: dict, lz: LazyMax | None = None) -> dict:
    """The pipelined form of a row function (``one``, from ``_row_function``) over a range of rows:
    row r's last sweep (the output sweep: no reduction, ``pipe_refusal``) runs in the loop of row
    r + 1's sweep before it (the same i; its identifiers, the scalars it reads and its buffers,
    prefixed p_: the previous row's), so its loads and stores overlap that sweep's arithmetic and
    row r's scalars (1 / sum) overlap row r + 1's first sweeps. Row 0's sweep runs alone, the last
    row's output sweep after the loop. Lazymax (``lz``): a row whose reference never moved (one
    segment, its factor the row scalar itself) is deferred so; any other runs its segments at once.
    Each row runs the one-row code: bitwise its results."""
    blocks = one["blocks"]
    sweeps = [j for j, b in enumerate(blocks) if b["kind"] != "scalar"]
    at, last = sweeps[-2], blocks[sweeps[-1]]
    sections = ("setup", "main", "single", "tail", "finish")
    # the deferred output sweep: lazymax's one segment [0, n), times the row scalar
    simple = last if lz is None else {**{k: v for k, v in last.items() if k != "segments"},
                                      "setup": last["setup"] + [f"const VEC b{lz.factor} = V_SET1(s{lz.factor});"]}

    def prev(lines: list[str]) -> list[str]:
        return [_ROW_NAMES.sub(lambda m: f"p_{m.group(1)}", ln) for ln in lines]

    def scalar(*lines: str) -> dict:
        return {"kind": "scalar", "lines": list(lines)}

    carried = sorted({m for k in sections for ln in simple[k] for m in _SCALAR_NAMES.findall(ln)})
    fused = {**blocks[at], "comment": f"{blocks[at]['comment']}; with the previous row's sweep {last['index']} "
                                      f"(p_: {last['comment']})",
             **{k: blocks[at][k] + prev(simple[k]) for k in sections}}
    head = ["const float *p_x = x;   /* the previous row: its buffers and the scalars its output sweep reads */",
            "float *p_y = y;", "(void)p_x;", "(void)p_y;"] + [f"float p_{v} = 0.0f;" for v in carried] \
        + ["int pend = 0;   /* a previous row's output sweep is pending */",
           "for (size_t r = 0; r < rows; r++, x += ldx, y += ldy) {"]
    body = blocks[:at] + [scalar("if (!pend) {"), blocks[at], scalar("} else {"), fused, scalar("}")] \
        + blocks[at + 1:sweeps[-1]]
    defer = [f"p_{v} = {v};" for v in carried] + ["p_x = x;", "p_y = y;", "pend = 1;"]
    if lz is None:
        body.append(scalar(*defer))
    else:   # the reference moved: this row's segments now
        body += [scalar("if (lz_cnt == 1) {   /* one segment: deferred */", *["    " + d for d in defer],
                        "} else {", "pend = 0;"), last, scalar("}")]
    out = {**simple, "comment": f"{last['comment']} (the last row)", **{k: prev(simple[k]) for k in sections}}
    return {"name": f"{one['name']}_pipe", "comment": f"{one['comment']}; rows r0.. one at a time, pipelined "
            f"(schedule pipeline): row r's sweep {last['index']} in the loop of row r + 1's sweep {blocks[at]['index']}",
            "blocks": [scalar(*head)] + body + [scalar("}", "if (pend) {   /* the last row's output sweep */"), out,
                                                scalar("}")] + blocks[sweeps[-1] + 1:],
            "signature": f"static void {one['name']}_pipe(const float *x, float *y, size_t rows, size_t n, "
                         f"size_t ldx, size_t ldy)"}


# -- the split form of a row function (schedule split / chunk) -------------------------------------

SPLIT_MAX_CHUNKS = 64   # chunks of one row at most: their reduction states sit on the caller's stack


def split_refusal(p: Program) -> str:
    """Why row program ``p`` has no split form ("" when it has one)."""
    if p.phase is not None:
        return "a phase of a matrix program"
    for sw in plan(p).sweeps:
        if sw.selected is not None:
            return "its output sweep runs over the top-k selection, not over the row"
        if sw.colreds or sw.colstores:
            return "it reduces columns"
        for r in sw.reductions:
            if p.op(r) == "reduce_topk" or not reduction(p.op(r), r, p.attrs(r)).blocked:
                return f"{p.op(r)} has no merge of outer states (top-k: per-lane sorted lists)"
    return ""


def _sweep_scalars(c: _Ctx, sw) -> list[int]:
    """The row scalars a sweep's row values read (``_setup`` broadcasts them), constants aside."""
    p = c.p
    return [a for a in sorted({a for v in sw.compute for a in p.args(v) if p.shape(a) != "row"})
            if p.const_value(a) is None]


def _split_functions(p: Program, t: Target, s: Schedule, fname: str, ctx: str,
                     fallback: str | None, row_params: list[str]) -> list[dict]:
    """The split form of row function ``fname``: ``<fname>_split(x, y, n, row params, threads)``
    and one task function per sweep, ``<fname>_split_s<k>(ctx, t)``, which runs the sweep over
    chunk t, [t chunk, (t + 1) chunk) of the row (whole blocks: the blocks are the unsplit
    sweep's), and stores its reductions' outer states in the chunk's slot. The caller opens one
    team (``sg_team_begin``: one pool region for the row), runs each sweep's tasks through
    ``sg_team_run`` (each thread its contiguous range of chunks first), merges the chunks' states in chunk order
    (``Reduction.merge_outer``), finishes the row's scalars once and hands them to the next
    sweep's tasks (``ctx``: struct ``ctx``, declared by kernel.c.j2). ``fallback``: the split form
    the two-pass guard hands the row to."""
    c, pl = _Ctx(p, t, s, row_params), plan(p)
    lz = lazy_form(p, s)
    name, M, B = f"{fname}_split", SPLIT_MAX_CHUNKS, s.block
    nstate = max([sum(len(_red(c, r).outer) for r in sw.reductions) for sw in pl.sweeps] + [1])
    nscal = max([len(_sweep_scalars(c, sw)) for sw in pl.sweeps] + [1])
    lines = [f"size_t chunk = {s.chunk};",
             f"if (n > (size_t){M} * {s.chunk}) /* at most {M} chunks: wider ones, whole blocks */",
             f"    chunk = (n + {M * B - 1}) / {M * B} * {B};",
             "const size_t nchunks = (n + chunk - 1) / chunk;",
             f"float sg_s[{nscal}];   /* the row scalars the sweeps read */",
             f"float sg_st[{M * nstate} * SG_LANES];   /* per chunk: its reductions' outer states */",
             *([f"struct {ctx}_lazy sg_lz[{M}];   /* lazymax: each chunk's segments */"] if lz else []),
             f"struct {ctx} sg = {{x, y, n, chunk, sg_s, sg_st{', sg_lz' if lz else ''}}};"]
    lines += _scalar_lines(c, pl.scalars_before, fallback, ", threads")
    lines += ["struct sg_team sg_tm;   /* one pool region for every sweep of the row */",
              "sg_team_begin(&sg_tm, threads < (int)nchunks ? threads : (int)nchunks);"]
    tasks = []
    for sw in pl.sweeps:
        task, scal = f"{name}_s{sw.index}", _sweep_scalars(c, sw)
        blk = dict(_sweep_block(c, sw), begin="c_lo", end="c_hi", length="c_hi")
        blk["comment"] += " (chunk t)"
        stores, decl, loads, steps, fin, j = [], [], [], [], [], 0
        for r in sw.reductions:
            red = _red(c, r)
            out = {f: f"o{r}_{f}" for f in red.outer}
            q = {f: f"q{r}_{f}" for f in red.outer}
            decl += [f"VEC {n} = {CEmit.const(red.outer_init(f))};" for f, n in out.items()]
            for f in red.outer:
                stores.append(f"V_STORE(sg->st + (t * {nstate} + {j}) * SG_LANES, {out[f]});")
                loads.append(f"const VEC {q[f]} = V_LOAD(sg_st + (q * {nstate} + {j}) * SG_LANES);")
                j += 1
            steps += _c(lambda e: red.merge_outer(e, out, q))
            fin += _c(lambda e: red.finish(e, out, _results(p, r)))
            if re.search(rf"\bsc{r}\b", "\n".join(steps + fin)):   # online: e^(s (a - m))
                decl.insert(0, f"const VEC sc{r} = V_SET1({flit(red.scale)});")
        # a task's non-temporal stores are fenced by the thread that made them, before the task ends
        blk["finish"] = stores + (["V_FENCE();   /* order this chunk's non-temporal stores */"]
                                  if streams(c, sw) else [])
        pro = [f"const struct {ctx} *sg = ctx;", "const float *x = sg->x;", "float *y = sg->y;",
               "(void)x;", "(void)y;",
               "const size_t c_lo = t * sg->chunk, "
               "c_hi = sg->n - c_lo > sg->chunk ? c_lo + sg->chunk : sg->n;"]
        pro += [f"const float s{a} = sg->s[{i}];" for i, a in enumerate(scal)]
        if lz:   # each chunk from the max of the chunks' first elements, its own reference and segments
            ldecl, blk, _ = _lazy_sweep(c, lz, sw, [], blk, "c_lo", "c_hi")
            if sw.index == 0:
                pro += ldecl
            elif sw.index == 1:
                pro += _lazy_state(lz, "c_lo")
                blk["finish"] = blk["finish"] + [
                    "sg->lz[t].r = lz_r;", "sg->lz[t].cnt = lz_cnt;",
                    "memcpy(sg->lz[t].pos, lz_pos, sizeof lz_pos);", "memcpy(sg->lz[t].ref, lz_ref, sizeof lz_ref);"]
            else:
                pro += [f"const struct {ctx}_lazy *lz = &sg->lz[t];", "const int lz_cnt = lz->cnt;",
                        "const size_t *lz_pos = lz->pos;", "const float *lz_ref = lz->ref;"] + _lazy_top("sg->lz", "(sg->n + sg->chunk - 1) / sg->chunk")
        tasks.append({"name": task, "signature": f"static void {task}(void *ctx, size_t t)",
                      "comment": f"{p.name} split form, sweep {sw.index} over chunk t of the row",
                      "blocks": [{"kind": "scalar", "lines": pro}, blk]})
        lines += [f"float {', '.join(_results(p, r))};" for r in sw.reductions]
        lines += [f"sg_s[{i}] = s{a};" for i, a in enumerate(scal)]
        if lz and sw.index == 0:   # the max of each chunk's first elements: less work than a job's hand-off
            lines.append("for (size_t t = 0; t < nchunks; t++)   /* lazymax: on the caller, not a team job */")
            lines.append(f"    {task}(&sg, t);")
        else:
            lines.append(f"sg_team_run(&sg_tm, nchunks, {task}, &sg);")
        if lz and sw.index == 1:   # each chunk's sum against the row's reference, the chunks' largest
            lines += _lazy_top("sg_lz", "nchunks")
            loads = [f"const VEC lz_f = V_SET1((float)exp({float(lz.scale).hex()} * ((double)sg_lz[q].r - (double)lz_r)));"] \
                + [ln.replace(" = V_LOAD(", " = V_MUL(lz_f, V_LOAD(").replace(" * SG_LANES);", " * SG_LANES));") for ln in loads]
        if sw.reductions:   # the chunks' states, merged in chunk order on the caller
            lines += ["{"] + ["    " + ln for ln in decl] \
                + ["    for (size_t q = 0; q < nchunks; q++) {"] + ["        " + ln for ln in loads + steps] \
                + ["    }"] + ["    " + ln for ln in fin] + ["}"]
        lines += _scalar_lines(c, sw.scalars_after, fallback, ", threads", "sg_team_end(&sg_tm); ")
    lines.append("sg_team_end(&sg_tm);")
    args = "".join(f", float rp_{n}" for n in row_params) + ", int threads"
    caller = {"name": name, "args": args, "outs": "float *y", "blocks": [{"kind": "scalar", "lines": lines}],
              "comment": f"{p.name}: the split form of {fname}: one team (pool region) for the row, "
                         f"each sweep per chunk, the chunks' reduction states merged in chunk order"}
    return tasks + [caller]


GEMM_EPILOGUES = True   # backends.gemm fuses element-wise phases into the contraction's store


def epilogue_code(p: Program, t: Target, s: Schedule, fname: str, alpha: float):
    """A GEMM epilogue computing the element-wise rows program ``p`` (``passes.elementwise``) on
    the product ``alpha * A @ B``: the C text of an always-inline helper ``fname`` and the
    ``gemm.Epilogue`` that calls it for each output vector. The helper's per-row vector
    elements come from pointers indexed by the row, its column vectors are loaded at the
    output columns (partially on an edge vector), exactly as a rows phase would."""
    c, pl = _Ctx(p, t, s, []), plan(p)
    (sw,) = pl.sweeps
    rps, (read_s, _), cols = p.row_params(), p.mscalar_names(), p.vector_names()[1]
    mats = p.matrices()
    params = (["size_t e_rows", "size_t e_cols"] + [f"const float *rv_{r}" for r in rps]
              + [f"float ms_{m}" for m in read_s] + [f"const float *cv_{v}" for v in cols]
              + [q for nm in mats for q in (f"const float *mxb_{nm}", f"size_t ldmx_{nm}")])
    decl = ", ".join(["VEC acc", "size_t row", "size_t i", "size_t k", "size_t m", "size_t n"]
                     + params[2:])
    acc = "acc" if alpha == 1.0 else f"V_MUL(V_SET1({flit(alpha)}), acc)"
    (out,) = p.nodes("output")
    res = _row_arg(p, p.args(out)[0], 0)
    lines = [f"/* GEMM epilogue {p.name}: the rows phase computed on each output vector (columns i..,"
             f" k of them) of row `row` */",
             f"static inline __attribute__((always_inline)) VEC {fname}({decl})",
             "{", "    (void)row; (void)m; (void)n;"]
    lines += [f"    const float rp_{r} = rv_{r}[row];" for r in rps]
    lines += [f"    const float *mx_{nm} = mxb_{nm} + row * ldmx_{nm};" for nm in mats]
    lines += ["    " + ln for ln in _scalar_lines(c, pl.scalars_before, None) + _setup(c, sw)]
    bufs = {"x": "x", "index": None, "y": "y", "x_value": acc}
    lines += ["    if (k >= SG_LANES) {"]
    lines += ["        " + ln for ln in _body(c, sw, 0, False, bufs, stores=False)]
    lines += [f"        return {res};", "    }"]
    lines += ["    " + ln for ln in _body(c, sw, 0, True, bufs, stores=False)]
    lines += [f"    return {res};", "}"]
    names = [pp.split("*")[-1].split(" ")[-1] for pp in params]

    def vector(a, i, j, count):
        return f"{fname}({a}, {i}, {j}, {count or 'SG_LANES'}, {', '.join(names)})"
    return "\n".join(lines), Epilogue(fname.rsplit("__", 1)[-1], tuple(params), vector, needs_vmath=True)


def generate_matrix(mp, t: Target, s: Schedule, name: str, *, op: str, params: dict,
                    gemm_schedule: GemmSchedule | None = None) -> str:
    """C source of a matrix kernel: one static function per rows/cols phase of the lowered
    matrix program ``mp``, one register-blocked GEMM (``backends.gemm``) per contraction layout
    and per fused epilogue, and the entry point of the program's ABI (``abi.KernelABI``).
    ``gemm_schedule``: the GEMMs' tile and blocking (default: the target's ``[gemm]``)."""
    g = schedule_for(t, gemm_schedule)
    bad = sorted({b for _, p, _ in mp.programs() for b in lowerable(p)})
    if bad:
        raise BuildError(f"the C backend cannot lower {', '.join(bad)}")
    if s.knobs():
        raise UsageError(f"schedule {', '.join(s.knobs())}: row-kernel knobs; matrix ops take the "
                         f"GEMM schedule (unroll, accumulators and block apply to their rows phases)")
    functions, gemms, done = [], [], set()
    for k, ph in enumerate(mp.leaves()):
        if isinstance(ph, SweepPhase):
            functions.append(_row_function(ph.program, t, s, f"{name}__phase{k}", None,
                                           ph.program.row_params()))
        elif isinstance(ph, AttentionPhase):   # a self-contained C function, beside the GEMMs
            gemms.append(attention_function(ph, f"{name}__attn{k}", tasks=mp.attention_tasks() is ph,
                                            vector_registers=t.vector_registers, abi=mp.abi(),
                                            shifted_exp=scaled_exp(t), topk=topk_stream(ph, t), lanes=t.lanes))
    # the row programs, and streaming top-k attention's selection (its select.h helpers)
    progs = [p for _, p, _ in mp.programs()] + [ph.program for ph in mp.leaves() if isinstance(ph, AttentionPhase)
                                                 and ph.normalizer == "topk_softmax"]
    for k, (fname, layout, epi) in matrix_gemms(mp, name).items():
        if fname in done:
            continue
        done.add(fname)
        tp = bool(mp.fixed_dims)   # SOFT's pooled form: register-transposed nt packs (others: unchanged code)
        if epi is None:
            gemms.append(gemm(t, layout, g, name=fname, transpose_pack=tp, direct_b=tp).source)
        else:
            helper, e = epilogue_code(epi, t, s, f"{name}__epi{k}", mp.leaves()[k].mm.alpha)
            gemms.append(helper + "\n" + gemm(t, layout, g, epilogue=e, name=fname, transpose_pack=tp, direct_b=tp).source)
    return env().get_template("kernel.c.j2").render(
        name=name, version=__version__, op=op, algorithm="direct",
        params=", ".join(f"{k}={v!r}" for k, v in params.items()), traffic=matrix_traffic(mp), t=t,
        schedule=f"{s} ({s.tag(t.lanes)})" + (f"; gemm {_gemm_text(t, g)}" if gemms else ""),
        plan_lines=matrix_plan_lines(mp) + [ln for p in progs for ln in _radix_note(p, t)], isa=isa_header(t),
        vmath=vmath(t=t, fold=any(shift2_fold(_Ctx(p, t, s, p.row_params())) for _, p, _ in mp.programs())),
        helpers=select_helpers(*progs, radix=any(radix_topk(p, t) for p in progs)), functions=functions,
        lanes=t.lanes, entry_row=None, tvm=False, row_params=[], rp_args="",
        abi=matrix_abi(mp, name), matrix=matrix_entry(mp, name), gemms=gemms, split=None,
        threads=matrix_thread_policy(mp, t),
        attention_tasks=None if mp.attention_tasks() is None else
        {"qch": task_rows(mp.attention_tasks()), "grain": TASK_GRAIN, "sr": score_rows(t.vector_registers)})


def _gemm_text(t: Target, s: GemmSchedule) -> str:
    return f"{s.mr}x{s.nr(t.lanes)} tile, {s}" + ("" if s == t.gemm else " (not the target's default)")


def check_schedule(t: Target, s: Schedule) -> None:
    """The schedule's knobs against the target: streaming stores need ``[isa] STREAM``."""
    if s.stream and not t.streams:
        raise UsageError(f"schedule stream=True: target {t.name} has no non-temporal stores "
                         f"([isa] STREAM, FENCE and stream_align in its target file)")


def _knob_note(s: Schedule, t: Target, p: Program) -> str:
    """What the header comment adds for the non-default knobs."""
    notes = []
    if s.stream:
        notes.append(f"non-temporal stores in the output sweep (y peeled to {t.stream_align} bytes, "
                     f"one fence per row)")
    if s.prefetch:
        notes.append(f"software prefetch {s.prefetch} elements ahead")
    if s.exp:
        notes.append(f"exp variant {s.exp}")
    if s.lazymax:
        why = lazy_max(plan(p))
        notes.append("lazymax: " + (f"not applied ({why})" if isinstance(why, str) else
                                    f"no full-row max sweep; exps against a running reference r (the max of the "
                                    f"first {LAZY_FIRST} elements, moved where x > r + {LAZY_SLACK:g} / s), rescaled per "
                                    f"segment in the output sweep; split rows: each chunk from its first ones, its own "
                                    f"reference, the chunks' sums rescaled to the largest"))
    if s.pipeline:
        why = pipe_refusal(p, s)
        notes.append("pipeline: " + (f"not applied ({why})" if why else
                                     "each row's output sweep in the loop of the next row's sweep before it "
                                     "(the row function's _pipe form)"))
    if lazy_fold(_Ctx(p, t, s, p.row_params()), lazy_form(p, s)):
        forms = ["single rows"] + ([f"each row of the _batch{s.rows} form"] if s.rows > 1 and not rows_refusal(p, s)
                                   else []) + (["each row of the _pipe form"] if s.pipeline and not pipe_refusal(p, s)
                                               else [])
        notes.append(f"lazymax exps of x - r in sweep 1 ({', '.join(forms)}; split rows' chunks keep sg_exp_shifted): "
                     f"sg_exp_fold, x - r folded into the range reduction against R = q ln2 while |r| <= SG_FOLD_MAX, "
                     f"2^n added to an int-scaled table entry")
    if s.rows > 1:
        why = rows_refusal(p, s)
        notes.append(f"rows={s.rows}: " + (f"one row at a time ({why})" if why else
                                           f"{s.rows} rows at once (the row function's _batch{s.rows} form)"))
    if scaled_exp(t) and t.shifted_exp and not s.exp:
        notes.append(f"exp of x - max x in the scaled form, the table exp {t.shifted_exp} "
                     f"(sg_exp_shifted: T[j] (1 + r p) 2^n by V_SCALE2)")
    elif scaled_exp(t):
        notes.append("exp of x - max x in the scaled form (sg_exp_shifted: (1 + t p) 2^n by V_SCALE2)")
    return "".join(f"\n *            {n}" for n in notes)


def generate(p: Program, t: Target, s: Schedule, name: str, *, op: str, algorithm: str,
             params: dict, threads: ThreadPolicy | None = None) -> str:
    """C source of a kernel ``int name(x, y, rows, n, ldx, ldy)`` computing program ``p``."""
    bad = lowerable(p) + (lowerable(p.fallback) if p.fallback else [])
    if bad:
        raise BuildError(f"the C backend cannot lower {', '.join(bad)}")
    check_schedule(t, s)
    functions, fallback, rps = [], None, p.row_params()
    split = None
    if s.split and not split_refusal(p) and not (p.fallback and split_refusal(p.fallback)):
        split = {"fn": f"{name}__row_split", "min_n": s.split, "chunk": s.chunk,
                 "ctx": f"{name}__split", "max_chunks": SPLIT_MAX_CHUNKS,
                 "lazy": LAZY_RECORDS if lazy_form(p, s) else 0}
    if p.fallback is not None:
        fallback = f"{name}__fallback_row"
        functions.append(_row_function(p.fallback, t, s, fallback, None, rps))
        if split:
            functions += _split_functions(p.fallback, t, s, fallback, split["ctx"], None, rps)
    functions.append(_row_function(p, t, s, f"{name}__row", fallback, rps))
    batch = None
    if s.rows > 1 and not rows_refusal(p, s):
        functions.append(_rows_function(functions[-1], s.rows, fallback))
        batch = {"fn": functions[-1]["name"], "rows": s.rows}
    pipe = None
    if s.pipeline and not pipe_refusal(p, s):
        functions.append(_pipe_function(functions[-1], lazy_form(p, s)))
        pipe = {"fn": functions[-1]["name"]}
    if split:
        functions += _split_functions(p, t, s, f"{name}__row", split["ctx"],
                                      fallback and f"{fallback}_split", rps)
    pl = plan(p)
    threads = threads or thread_policy(pl, t)   # what threads=auto takes: the model's unless given
    plan_lines = ["plan:"] + ["  " + ln for ln in pl.describe().splitlines()] + _radix_note(p, t)
    if p.notes:
        plan_lines += ["rewrites:"] + ["  " + n for n in p.notes]
    return env().get_template("kernel.c.j2").render(
        name=name, version=__version__, op=op, algorithm=algorithm,
        params=", ".join(f"{k}={v!r}" for k, v in params.items()), traffic=pl.traffic(), t=t,
        schedule=f"{s} ({s.tag(t.lanes)})" + _knob_note(s, t, p), plan_lines=plan_lines,
        isa=isa_header(t, stream=s.stream),
        vmath=vmath(s.exp, t, fold=any(lazy_fold(_Ctx(q, t, s, q.row_params()), lazy_form(q, s))
                                       or shift2_fold(_Ctx(q, t, s, q.row_params()))
                                       for q in (p, p.fallback) if q is not None)),
        helpers=select_helpers(p, radix=radix_topk(p, t)), functions=functions, lanes=t.lanes, entry_row=f"{name}__row",
        tvm=False, row_params=rps, rp_args=entry_row_args(rps), abi=abi(p, name), matrix=None, gemms=[],
        threads=threads, split=split, batch=batch, pipe=pipe)


class CBackend(Backend):
    """The Jinja-C backend in the registry (``softgen.backends.base``): ``generate`` and
    ``generate_matrix`` above; its artifact is one C file."""

    name = "c"
    description = "Jinja-C templates"
    gemm_epilogues = GEMM_EPILOGUES
    thread_policy = True
    streams_attention = STREAMING_NORMALIZERS
    wide_attention = True
    split_decoding = True
    # softgen.tune: small sets around the targets' defaults (unroll 4, accumulators 2); then, per
    # size class, non-temporal stores and prefetch distances (elements) for rows beyond the LLC
    # (targets with [isa] STREAM only for stream), and the exp variants (all within the accuracy
    # contract: tests/test_exp.py) for rows in cache, where the exp sweep is compute-bound
    tuning_knobs = MappingProxyType({"unroll": (2, 4, 8), "accumulators": (1, 2, 4),
                                     "stream": (False, True), "prefetch": (0, 1024),
                                     "exp": ("",) + tuple(EXP_VARIANTS), "rows": (1, 2, 4),
                                     "lazymax": (False, True), "pipeline": (False, True)})
    # rows: short rows (L1d, L2 classes) of batched calls (softgen.tune offers R <= the call's rows);
    # lazymax: rows at every level (beyond L1d the max sweep re-reads x from L2/L3/DRAM; in L1d it
    # is still a sweep of its own, 1.10x at 1K, 1.17x at 4K, 1.19x at 8K on avx512, timed in C,
    # bench/results/l1lazymax-2026-12-01-amd-epyc-loaded-s25.txt), and batches of short rows beyond
    # L1d (each row's max sweep is its first touch of x from L2/L3/DRAM; 1.04-1.07x at 4096 x 512 on
    # avx512, bench/results/batchrows-2026-11-30-epyc-avx512-noisy.txt)
    # pipeline: batches only (no single-row level), at every level of the batch
    tuning_knob_levels = MappingProxyType({"stream": ("DRAM",), "prefetch": ("DRAM",),
                                           "exp": ("L1d", "L2", "L3"), "rows": ("L1d", "L2"),
                                           "lazymax": ("L1d", "L2", "L3", "DRAM"), "pipeline": ()})
    tuning_knob_batch_levels = MappingProxyType({"lazymax": ("L2", "L3", "DRAM"),
                                                 "pipeline": ("L1d", "L2", "L3", "DRAM")})
    tuning_knob_requires = MappingProxyType({"stream": "streams"})

    def lowerable(self, program) -> list[str]:
        return lowerable(program)

    def knob_refusals(self, program, schedule) -> dict[str, str]:
        lz = lazy_max(plan(program)) if schedule.lazymax else None
        why = {"lazymax": lz if isinstance(lz, str) else "",
               "rows": rows_refusal(program, schedule) if schedule.rows > 1 else "",
               "pipeline": pipe_refusal(program, schedule) if schedule.pipeline else ""}
        return {**super().knob_refusals(program, schedule), **{k: w for k, w in why.items() if w}}

    def generate(self, program, target, schedule, name, *, op, algorithm, params,
                 threads: ThreadPolicy | None = None) -> Artifact:
        return Artifact(self, name, target, generate(program, target, schedule, name, op=op,
                                                     algorithm=algorithm, params=params, threads=threads))

    def generate_matrix(self, program, target, schedule, name, *, op, params, gemm=None) -> Artifact:
        return Artifact(self, name, target, generate_matrix(program, target, schedule, name, op=op,
                                                            params=params, gemm_schedule=gemm))


register(CBackend())
