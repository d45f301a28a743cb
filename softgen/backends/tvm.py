"""TVM backend: the same planned IR and schedule, lowered to TensorIR and compiled by TVM's LLVM.

The algorithm rewrites and the sweep plan come from ``softgen.passes``, exactly as for the C
backend; this module only spells each sweep in TIR. Each row function is TVMScript text (built
by ``tvm_adapter.script_module``'s fast path: keep to its subset, or it goes through TVM's parser,
~8x slower; lowered without RemoveNoOp: ``noop_free``): per sweep, a loop over reduction blocks, a main loop whose body is
one ``T.vectorized(lanes)`` loop holding ``unroll`` vector slots (the schedule), a scalar tail loop,
and the block fold into compensated per-lane accumulators. Values are ``T.let``-bound per lane, so
TVM's vectoriser turns every lane expression into one SIMD instruction. The vector math is the
same p5 exp / extended-exponent arithmetic as ``templates/vmath.h.j2``, with the same constants,
written here against TIR (reinterpret, shift_left, llvm.fma), so both backends share an accuracy
profile; the parity tests compare them.

TVM emits the row functions with a plain C ABI (``calling_conv`` 1, see ``tvm_adapter``); a
generated C wrapper (``templates/entry.c.j2``, the C backend's entry point) checks arguments, loops
over rows and dispatches the two-pass guard's fallback. The library needs no TVM at load time.
"""
from __future__ import annotations

import contextlib
import math
import re

import numpy as np

from .._version import __version__
from ..analysis import matrix_plan_lines
from ..costmodel import ThreadPolicy, matrix_thread_policy, thread_policy
from ..errors import BuildError, UsageError
from ..ir import PAIR, ROW, TOPK_MAX, Program
from ..matrix import AttentionPhase, MatMulPhase, SweepPhase
from ..numerics.constants import (
    EXP_MAX,
    EXP_MIN,
    LN2_HI,
    LN2_LO,
    LOG1P_Q,
    LOG2E,
    LOG_OFF,
    LOG_P,
    MAGIC,
    MINUS_LN2_HI,
    MINUS_LN2_LO,
    P5,
    SQRT_HALF_BITS,
)
from ..numerics.reductions import REDUCTIONS, Reduction, flush_steps, reduction
from ..numerics.scalars import lower_scalars
from ..passes import EXTEXP_F32_DOMAIN, plan
from ..render import env
from ..schedule import Schedule
from ..targets import Target
from . import tvm_adapter, tvm_attention, tvm_gemm
from .attention import attention_function
from .base import Artifact, Backend, register
from .entry import (
    CallingConvention,
    abi,
    entry_row_args,
    matrix_abi,
    matrix_entry,
    matrix_gemms,
    phase_args,
    row_outputs,
)


def f32(v: float) -> str:
    """A TIR float32 literal denoting exactly float32(v)."""
    f = float(np.float32(v))
    if math.isnan(f):
        return 'T.float32("nan")'
    if math.isinf(f):
        return 'T.float32("inf")' if f > 0 else 'T.float32("-inf")'
    return f"T.float32({f!r})"


class Emit:
    """Appends ``T.let``-bound statements; every value gets a fresh name (TIR vars are SSA).
    ``lane``: (index, lanes) of the loop the lines go in, where ``opaque`` may store a value to
    a local buffer (``allocs``: their declarations, for the function's scope)."""

    def __init__(self, counter: list[int], fused_fma: bool = True, lane: tuple[str, int] | None = None):
        self.lines: list[str] = []
        self._n = counter
        self.fused_fma = fused_fma
        self.lane, self.allocs = lane, []

    def let(self, expr: str, dtype: str = "float32") -> str:
        self._n[0] += 1
        name = f"t{self._n[0]}"
        self.lines.append(f"{name}: T.let[T.{dtype}] = {expr}")
        return name

    def opaque(self, v: str) -> str:
        """v, read back from a local buffer: TVM's passes (FlattenBuffer, RemoveNoOp, LowerIntrin)
        bind each pure let in an arith analyzer, which simplifies its value with the lets it names
        substituted. The base of lssar's and reweight's (R / max R)^p by squaring appears p times
        (default 15) in the result's expanded tree, each with max R's row-scalar selects: 20-40 s to lower.
        A load is opaque to the analyzer (0.5 s); LLVM keeps the value in a register."""
        if self.lane is None:
            return v
        (i, lanes), buf = self.lane, f"opq{self._n[0] + 1}"
        self.allocs.append(f'{buf} = T.alloc_buffer(({lanes},), "float32", scope="local")')
        self.stmt(f"{buf}[{i}] = {v}")
        return self.let(f"{buf}[{i}]")

    def stmt(self, line: str) -> None:
        self.lines.append(line)

    # the virtual ISA, per lane
    def fma(self, a, b, c):
        if self.fused_fma:
            return self.let(f'T.call_llvm_pure_intrin("float32", "llvm.fma", {a}, {b}, {c})')
        # no FMA unit (scalar target): exact product in double, one rounding, as the C backend's
        # scalar table does; llvm.fma would become a libm call
        return self.let(f'T.Cast("float32", T.Cast("float64", {a}) * T.Cast("float64", {b}) '
                        f'+ T.Cast("float64", {c}))')
    def add(self, a, b): return self.let(f"({a} + {b})")
    def sub(self, a, b): return self.let(f"({a} - {b})")
    def mul(self, a, b): return self.let(f"({a} * {b})")
    def max(self, a, b): return self.let(f"T.max({a}, {b})")  # NaN -> the 2nd operand or NaN
    def select(self, m, a, b): return self.let(f"T.Select({m}, {a}, {b})")

    def shl23(self, a):
        return self.let(f'T.reinterpret("float32", T.shift_left(T.reinterpret("int32", {a}), 23))')

    # -- vector math (templates/vmath.h.j2) ------------------------------------------------------
    def p5(self, t):
        p = self.fma(f32(P5[0]), t, f32(P5[1]))
        for c in P5[2:]:
            p = self.fma(p, t, f32(c))
        return p

    def reduce_ln2(self, x, n):
        return self.fma(n, f32(MINUS_LN2_LO), self.fma(n, f32(MINUS_LN2_HI), x))

    def exp_nonpos(self, x):
        x = self.max(f32(EXP_MIN), x)
        n = self.fma(x, f32(LOG2E), f32(MAGIC))
        s = self.shl23(n)
        t = self.reduce_ln2(x, self.sub(n, f32(MAGIC)))
        return self.fma(self.mul(t, s), self.p5(t), s)

    def exp(self, x):
        x = self.max(f32(EXP_MIN), self.let(f"T.min({f32(EXP_MAX)}, {x})"))
        n = self.fma(x, f32(LOG2E), f32(MAGIC))
        top = f"({n} > {f32(MAGIC + 127.0)})"  # bool vectors cannot be let-bound in TIR
        s = self.shl23(self.let(f"T.min({f32(MAGIC + 127.0)}, {n})"))
        t = self.reduce_ln2(x, self.sub(n, f32(MAGIC)))
        y = self.fma(self.mul(t, s), self.p5(t), s)
        return self.select(top, self.add(y, y), y)

    def estrin7(self, x, x2, x4, c):
        p01, p23, p45, p67 = (self.fma(f32(c[i + 1]), x, f32(c[i])) for i in (0, 2, 4, 6))
        return self.fma(self.fma(p67, x2, p45), x4, self.fma(p23, x2, p01))

    def log_fc(self, f, c):
        f2 = self.mul(f, f)
        return self.fma(f2, self.estrin7(f, f2, self.mul(f2, f2), LOG_P), c)

    def log_kf(self, k, f):
        """k ln2 + log(1 + f) (templates/vmath.h.j2 sg_log_kf)."""
        return self.fma(k, f32(LN2_HI), self.log_fc(f, self.fma(k, f32(LN2_LO), f)))

    def log_special(self, x, y):
        y = self.select(f"({x} > {f32(0.0)})", y,
                        self.select(f"({x} == {f32(0.0)})", f32(-math.inf), f32(math.nan)))
        return self.select(f"({x} == {f32(math.inf)})", x, y)

    # int32 values stay inline: let-bound integers make TVM's arithmetic analyser very slow
    def log_e(self, ix):
        """k + 127, from the top bits of ix."""
        return self.let(f'T.Cast("float32", T.shift_right({ix}, 23))')

    def log_m1(self, ix):
        return self.sub(self.let(f'T.reinterpret("float32", T.bitwise_and({ix}, T.int32({0x007fffff})) '
                                 f'+ T.int32({SQRT_HALF_BITS}))'), f32(1.0))

    def log_reduce(self, x):
        """(k + 127, f) with x = 2^k (1 + f); subnormals scaled by 2^25, 25 taken off the exponent."""
        xs = self.let(f'T.reinterpret("float32", T.reinterpret("int32", {self.mul(x, f32(2.0 ** 25))}) '
                      f'+ T.int32({-(25 << 23)}))')
        xs = self.select(f"({x} < {f32(1.1754943508222875e-38)})", xs, x)
        ix = f'(T.reinterpret("int32", {xs}) + T.int32({LOG_OFF}))'
        return self.log_e(ix), self.log_m1(ix)

    def log(self, x):
        """templates/vmath.h.j2 sg_log."""
        e, f = self.log_reduce(x)
        return self.log_special(x, self.log_kf(self.sub(e, f32(127.0)), f))

    def log_ratio(self, a, b):
        """templates/vmath.h.j2 sg_log_ratio: (ka - kb) ln2 + (log(1 + fa) - log(1 + fb))."""
        (ea, fa), (eb, fb) = self.log_reduce(a), self.log_reduce(b)
        d = self.sub(self.log_special(a, self.log_fc(fa, fa)), self.log_special(b, self.log_fc(fb, fb)))
        k = self.sub(ea, eb)
        return self.fma(k, f32(LN2_HI), self.fma(k, f32(LN2_LO), d))

    def log1p(self, u):
        """templates/vmath.h.j2 sg_log1p: the rounding of 1 + u goes back into f, times 2^-k."""
        v = self.add(f32(1.0), u)
        ix = f'(T.reinterpret("int32", {v}) + T.int32({LOG_OFF}))'
        scale = self.let(f'T.reinterpret("float32", T.int32({0x7f000000}) - '
                         f'T.bitwise_and({ix}, T.int32({-0x800000})))')
        f = self.fma(self.sub(u, self.sub(v, f32(1.0))), self.max(scale, f32(0.0)), self.log_m1(ix))
        return self.log_special(v, self.log_kf(self.sub(self.log_e(ix), f32(127.0)), f))

    def log1p_unit(self, u):
        """templates/vmath.h.j2 sg_log1p_unit: u in [0, 1] or NaN, one polynomial."""
        u2 = self.mul(u, u)
        return self.fma(u2, self.estrin7(u, u2, self.mul(u2, u2), LOG1P_Q), u)

    def softplus(self, z):
        """max(z, 0) + log1p(e^-|z|) (ops.softmax.softplus; attention.c.j2's __softplus): 0 at -inf,
        NaN at NaN (the max's select drops a NaN z, the log1p keeps it)."""
        pos = self.let(f"T.Select({z} > {f32(0.0)}, {z}, {f32(0.0)})")
        return self.add(pos, self.log1p_unit(self.exp_nonpos(self.let(f"({f32(0.0)} - T.fabs({z}))"))))

    def ipow(self, x, p: float):
        """x^p for x in [0, 1]: repeated squaring for integer p <= 64 in ``ops.lssa._ipow``'s order
        (x^15 = x x^2 x^4 x^8), else e^(p log x) (attention.py ``_lssar``'s C, the same order)."""
        if not (float(p).is_integer() and p <= 64):
            return self.exp_nonpos(self.mul(f32(p), self.log(x)))
        k, sq, acc = int(p), self.let(x), None   # a value, even for p = 1 (x may read a buffer it overwrites)
        while k:
            if k & 1:
                acc = sq if acc is None else self.mul(acc, sq)
            k >>= 1
            if k:
                sq = self.mul(sq, sq)
        return acc

    def exp2_nonpos(self, d):
        return self.shl23(self.add(self.max(d, f32(-127.0)), f32(MAGIC)))

    def scale2(self, a, d): return self.mul(a, self.exp2_nonpos(d))
    def scale2_add(self, acc, a, d): return self.fma(a, self.exp2_nonpos(d), acc)

    def extexp_n(self, u): return self.sub(self.fma(u, f32(LOG2E), f32(MAGIC)), f32(MAGIC))

    def extexp_p(self, u, n, lo=None):
        t = self.reduce_ln2(u, n)
        if lo is not None:
            t = self.add(t, lo)
        return self.fma(t, self.p5(t), f32(1.0))

    def twoprod(self, x, s):
        """s x = hi + lo exactly."""
        hi = self.mul(x, s)
        return hi, self.fma(x, s, self.sub(f32(-0.0), hi))

    def _extexp_terms(self, x, scale):
        """(u, n, p) with e^(scale x) = p 2^n, clamped at -2^17 (NaN survives)."""
        if scale == 1.0:
            u = self.max(f32(-EXTEXP_F32_DOMAIN), x)
            n = self.extexp_n(u)
            return n, self.extexp_p(u, n)
        u, lo = self.twoprod(self.max(f32(-EXTEXP_F32_DOMAIN / scale), x), f32(scale))
        n = self.extexp_n(u)
        return n, self.extexp_p(u, n, lo)

    def exp_shift2(self, x, e, scale):
        n, p = self._extexp_terms(x, scale)
        return self.scale2(p, self.sub(n, e))

    def sub_ln2(self, x, e, c, scale):
        """vmath.h.j2 sg_sub_ln2(_scaled): s x - E ln2 + c, ln2's low part added to the scalar c."""
        u, lo = (x, None) if scale == 1.0 else self.twoprod(x, f32(scale))
        y = self.add(self.fma(e, f32(MINUS_LN2_HI), u), self.fma(e, f32(MINUS_LN2_LO), c))
        if lo is None:
            return y
        return self.add(y, self.select(f"({lo} == {lo})", lo, f32(0.0)))

    def kahan(self, s, c, b):
        """(s, c) += b; returns the new (s, c) names. An overflowed t drops the compensation
        (else inf - inf), as vmath.h's sg_kahan_add."""
        y = self.sub(b, c)
        t = self.add(s, y)
        return t, self.select(f"(T.fabs({t}) < {f32(math.inf)})", self.sub(self.sub(t, s), y), f32(0.0))


    # -- numerics.reductions.Emitter: every value is let-bound per lane, so a state is a new name
    def const(self, v): return f32(v)
    def scale(self, red): return f32(red.scale)
    def splat(self, s): return s

    def extexp_terms(self, red, x, j):
        return self._extexp_terms(x, red.scale)

    def var(self, expr, name=None, const=True):
        return expr if expr.isidentifier() else self.let(expr)

    def assign(self, dst, expr): return expr
    def if_any_gt(self, a, b): return contextlib.nullcontext()   # the update runs: a no-op there


class LaneFinish(Emit):
    """The emitter of a reduction's ``finish``: the outer state's lanes (``o_f[l]``) reduced by
    scalar loops into ``res<r>[i]``, then let-bound as the row scalar ``res[i]``. Values computed
    per lane go into the loop of the next lane sum."""

    def __init__(self, counter, fused_fma, r: int, lanes: int):
        super().__init__(counter, fused_fma)
        self.r, self.lanes, self.out = r, lanes, []
        self.inline, self.lazy = True, []   # lazy: (text, expression) of the inline values, in order

    def let(self, expr, dtype="float32"):
        # arithmetic on the lanes stays one expression (as the finishes were first written: LLVM's
        # fast-math contractions under TVM see the same trees); a transcendental is let-bound
        if not self.inline:
            return super().let(expr, dtype)
        self.lazy.append((f"({expr})", expr))
        return f"({expr})"

    def _bind(self, x):
        """Let-bind the inline value x and, first, the inline values it contains (in order)."""
        names = {}
        for text, expr in self.lazy:
            if text in x:
                for t, nm in names.items():
                    expr = expr.replace(t, nm)
                names[text] = super().let(expr)
        return names.get(x, x)

    def exp_nonpos(self, x):
        x = self._bind(x)
        self.inline = False
        try:
            return super().exp_nonpos(x)
        finally:
            self.inline = True

    def hmax(self, v): return ("max", v)
    def hsum(self, v): return ("sum", v)

    def result(self, res, i, value):
        kind, v = value
        b = f"res{self.r}[{i}]"
        if kind == "max":   # of a state field: lane 0, then the others
            assert not self.lines and v.endswith("[l]"), v
            self.out += [f"{b} = {v[:-3]}[0]", f"for l in range(1, {self.lanes}):", f"    {b} = T.max({b}, {v})"]
        else:
            self.out += [f"{b} = {f32(0.0)}", f"for l in range({self.lanes}):"]
            self.out += ["    " + ln for ln in self.lines] + [f"    {b} = {b} + {v}"]
            self.lines = []
        self.out.append(f"{res[i]}: T.let[T.float32] = {b}")


# -- reductions: per-lane state in local buffers ----------------------------------------------------

class Red:
    fields: tuple[str, ...] = ()
    blocked = True                   # else: state across blocks, accumulators merged in finish
    partial = False                  # accumulators flushed into block partials (numerics.reductions)
    replicated = True                # else: one state for all slots (numerics.reductions)
    places = 1                       # floats per lane and accumulator in each field's buffer

    def tail_slot(self, lanes: int) -> str:
        """Where tail element j (a scalar loop) accumulates: lane 0 of accumulator 0."""
        return "0"

    def __init__(self, r: int, fused: bool = True):
        self.r, self.fused = r, fused

    def buf(self, f: str) -> str: return f"a{self.r}_{f}"
    def part(self, f: str) -> str: return f"a{self.r}_p_{f}"
    def outer(self, f: str) -> str: return f"o{self.r}_{f}"
    def init(self, f: str) -> str: return f32(0.0)
    def outer_fields(self) -> tuple[str, ...]: return self.fields + ("c",)
    def outer_init(self, f: str) -> str: return f32(0.0) if f == "c" else self.init(f)

    def load(self, e: Emit, f: str, idx: str) -> str:
        return e.let(f"{self.buf(f)}[{idx}]")

    def update(self, e: Emit, idx: str, xs: list[str]) -> None: ...
    def merge(self, e: Emit, dst: dict, src: dict) -> dict: ...
    def fold(self, e: Emit, o: dict, a: dict) -> dict: ...
    def finish(self, lanes: int, counter: list[int]) -> list[str]: ...


class Lanes(Red):
    """A reduction of ``softgen.numerics.reductions`` in TIR: its state per lane and accumulator
    in local buffers (``a<r>_<f>``, ``o<r>_<f>`` for the outer state), loaded, updated by the
    shared step and stored back."""

    def __init__(self, red: Reduction, fused: bool = True, res: list[str] | None = None):
        super().__init__(red.r, fused)
        self.red, self.fields, self.res = red, red.fields, res or [f"s{red.r}"]
        self.partial = red.partial

    def tail_slot(self, lanes):
        """A sum's tail element j: lane j % lanes of accumulator 0 (a lane chain takes at most
        unroll of them before the block's flush)."""
        return f"j % {lanes}" if self.partial and lanes > 1 else "0"

    def init(self, f): return f32(self.red.init(f))
    def outer_fields(self): return self.red.outer
    def outer_init(self, f): return f32(self.red.outer_init(f))

    def update(self, e, idx, xs):
        new = self.red.update(e, {f: self.load(e, f, idx) for f in self.fields}, xs)
        for f in self.fields:
            e.stmt(f"{self.buf(f)}[{idx}] = {new[f]}")

    def merge(self, e, d, s): return self.red.merge(e, d, s)
    def fold(self, e, o, a): return self.red.fold(e, o, a)

    def flush(self, e, idx: str) -> dict:
        """Accumulator slot ``idx`` joins its block partial (stored back); the partial's new state."""
        a = {f: self.load(e, f, idx) for f in self.fields}
        p, na = self.red.flush(e, {f: e.let(f"{self.part(f)}[{idx}]") for f in self.fields}, a)
        for f in self.fields:
            e.stmt(f"{self.part(f)}[{idx}] = {p[f]}")
            if na[f] != a[f]:   # a field flush keeps (``Reduction.kept``) is not stored back
                e.stmt(f"{self.buf(f)}[{idx}] = {na[f]}")
        return p

    def finish(self, lanes, counter):
        # names of their own (t<10^6 + 1000 r>...): the sweep's lets keep their numbers
        e = LaneFinish([10 ** 6 + 1000 * self.r], self.fused, self.r, lanes)
        self.red.finish(e, {f: f"{self.outer(f)}[l]" for f in self.red.outer}, self.res)
        return e.out


class TopKRed(Red):
    """templates/select.h.j2 and c.TopKRed in TIR: k sorted (key, index) places per lane and
    accumulator, place i of accumulator slot q at [i * A L + q], updated by a select network
    (strict >: the lower index wins ties; displaced pairs shift down). No early-out: a branch would scalarise the vectorised
    lane loop. The lanes of all accumulators are merged once per row, in scalar TIR."""
    fields, blocked, replicated = ("v", "j"), False, False

    def __init__(self, r, fused=True, attrs=None):
        super().__init__(r, fused)
        self.k = self.places = attrs["k"]
        self.q = 0   # lists = accumulators * lanes, set by the sweep

    def init(self, f): return f32(-math.inf) if f == "v" else f32(math.inf)

    def tail_slot(self, lanes):
        """Lane j mod L, as in the C backend's masked tail: lane order stays index order, and no
        select recurrence sits on one address (LLVM's vectorisation of such a tail loop, under
        TVM's fast-math flags, broke ties between adjacent tail elements)."""
        return f"(j % {lanes})"

    def update(self, e, idx, xs):
        # as c.TopKRed: masks x > v_i against the old places (monotone in i), then the list
        # shifts down from the first set one. Every store reads only old places and x: no
        # chain of Selects for TVM's analysis to expand.
        q = self.q
        for x, j in xs:
            at = [f"{i * q} + {idx}" for i in range(self.k)]
            old = {f: [self.load(e, f, a) for a in at] for f in self.fields}
            for i in reversed(range(self.k)):
                g = f"({x} > {old['v'][i]})"   # bool vectors cannot be let-bound
                for f, new in (("v", x), ("j", j)):
                    down = f"T.Select(({x} > {old['v'][i - 1]}), {old[f][i - 1]}, {new})" if i else new
                    e.stmt(f"{self.buf(f)}[{at[i]}] = T.Select({g}, {down}, {old[f][i]})")

    def sel(self) -> tuple[str, str]:
        return f"sel{self.r}_v", f"sel{self.r}_j"

    def finish(self, lanes, counter):
        k, q, r = self.k, self.q, self.r
        kp = -(-k // lanes) * lanes
        (sv, sj), av, aj = self.sel(), self.buf("v"), self.buf("j")
        return [
            f'{sv} = T.alloc_buffer(({kp},), "float32", scope="local")',
            f'{sj} = T.alloc_buffer(({kp},), "float32", scope="local")',
            f'kh{r} = T.alloc_buffer(({q},), "int32", scope="local")',
            f'kb{r} = T.alloc_buffer((1,), "int32", scope="local")',
            f'kbv{r} = T.alloc_buffer((2,), "float32", scope="local")',
            f"for c in range({q}):", f"    kh{r}[c] = 0",
            f"for o in range({k}):",
            f"    kb{r}[0] = -1", f"    kbv{r}[0] = {f32(-math.inf)}", f"    kbv{r}[1] = {f32(math.inf)}",
            f"    for c in range({q}):",
            f"        if kh{r}[c] < {k}:",
            f"            if T.Or({av}[kh{r}[c] * {q} + c] > kbv{r}[0], T.And({av}[kh{r}[c] * {q} + c] == "
            f"kbv{r}[0], {aj}[kh{r}[c] * {q} + c] < kbv{r}[1])):",
            f"                kb{r}[0] = c",
            f"                kbv{r}[0] = {av}[kh{r}[c] * {q} + c]",
            f"                kbv{r}[1] = {aj}[kh{r}[c] * {q} + c]",
            f"    {sv}[o] = kbv{r}[0]", f"    {sj}[o] = kbv{r}[1]",
            f"    if kb{r}[0] >= 0:", f"        kh{r}[kb{r}[0]] = kh{r}[kb{r}[0]] + 1",
            f"for o in range({k}, {kp}):", f"    {sv}[o] = {f32(-math.inf)}", f"    {sj}[o] = {f32(0.0)}",
            f"res{r}[3] = {f32(0.0)}",
            f"for o in range({k}):",
            f'    res{r}[3] = res{r}[3] + T.Cast("float32", T.exp(T.Cast("float64", {sv}[o]) - '
            f'T.Cast("float64", {sv}[0])))',
            f"s{r}_0: T.let[T.float32] = {sv}[{k - 1}]", f"s{r}_1: T.let[T.float32] = {sj}[{k - 1}]",
            f"s{r}_2: T.let[T.float32] = {sv}[0]", f"s{r}_3: T.let[T.float32] = res{r}[3]"]


VECTOR = {"add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
          "finite_or_nan": 'T.Select(T.fabs({0}) < T.float32("inf"), {0}, T.float32("nan"))',
          "max": "T.max({0}, {1})", "min": "T.min({0}, {1})", "neg": "(T.float32(-0.0) - {0})",
          "abs": "T.fabs({0})", "recip": "(T.float32(1.0) / {0})",
          "where_lt": "T.Select({0} < {1}, {2}, {3})",
          "where_ranked": "T.Select(T.Or({0} > {2}, T.And({0} == {2}, {1} <= {3})), {4}, {5})"}
SCALAR = {**VECTOR, "exp": "T.exp({0})", "log": "T.log({0})", "log1p": "T.log1p({0})",
          "log_ratio": 'T.Cast("float32", T.log(T.Cast("float64", {0})) - T.log(T.Cast("float64", {1})))',
          "finite_or_nan": 'T.Select(T.isfinite({0}), {0}, T.float32("nan"))',
          "poison": 'T.Select(T.isfinite({1}), {0}, T.float32("nan"))',
          "fma": 'T.Cast("float32", T.Cast("float64", {0}) * T.Cast("float64", {1}) + T.Cast("float64", {2}))'}


def lowerable(p: Program) -> list[str]:
    bad = []
    for v in p.g:
        op, kind, shape = p.op(v), p.kind(v), p.shape(v)
        if kind == "map" and shape == ROW and op not in VECTOR and op not in ("exp", "exp_shift2", "sub_ln2",
                                                                              "log", "log1p", "log_ratio", "fma"):
            bad.append(f"{op} (row)")
        if kind == "map" and shape != ROW and op not in SCALAR:
            bad.append(f"{op} (scalar)")
        if kind in ("reduce", "colreduce") and op != "reduce_topk" and \
                op.replace("colreduce_", "reduce_") not in REDUCTIONS:   # read now: one may be added
            bad.append(op)
        if op == "reduce_topk" and p.attrs(v)["k"] > TOPK_MAX:
            bad.append(f"reduce_topk with k > {TOPK_MAX} (the TVM backend's selection is the insertion "
                       f"network; radix select for any k is the C backend's: backend='c')")
    return sorted(set(bad))


# -- lowering -------------------------------------------------------------------------------------

def _scalar_name(p: Program, v: int) -> str:
    c = p.const_value(v)
    return f32(c) if c is not None else f"s{v}"


def _row_values(p: Program, sw, e: Emit, i: str, slot: int, bufs: dict | None = None) -> dict:
    """Let-bind every row value of the sweep for element index ``i``; name per node. ``bufs``:
    what the input and index leaves read and where the output goes."""
    bufs = bufs or {"x": "X", "index": None, "y": "Y"}
    vals = {m: e.let(f"Y[{i}]") for m in sw.reloads}
    arg = lambda a: vals[a] if p.shape(a) == ROW else _scalar_name(p, a)  # noqa: E731
    # the bases of powers beyond the square (v^2 multiplied again, v not itself a square): see
    # Emit.opaque
    square = {v: p.args(v)[0] for v in sw.compute if p.op(v) == "mul" and len(set(p.args(v))) == 1}
    again = {a for w in sw.compute if p.op(w) == "mul" for a in p.args(w) if a in square}
    bases = {a for v, a in square.items() if a not in square and v in again}
    for v in sw.compute:
        op, args, at = p.op(v), [arg(a) for a in p.args(v)], p.attrs(v)
        if op == "input":
            vals[v] = e.let(f"{bufs['x']}[{i}]")
        elif op == "index":
            vals[v] = e.let(f"{bufs['index']}[{i}]" if bufs["index"] else
                            f'T.Cast("float32", T.Cast("int32", {i}))')
        elif op in ("colvec", "matrow"):
            vals[v] = e.let(f"{'CV' if op == 'colvec' else 'MX'}_{at['name']}[{i}]")
        elif op == "materialize":
            vals[v] = args[0]
        elif op == "exp":
            vals[v] = e.exp_nonpos(args[0]) if at.get("nonpos") else e.exp(args[0])
        elif op == "exp_shift2":
            vals[v] = e.exp_shift2(args[0], args[1], at.get("scale", 1.0))
        elif op == "log1p" and at.get("unit"):
            vals[v] = e.log1p_unit(args[0])
        elif op in ("log", "log1p", "log_ratio", "fma"):
            vals[v] = getattr(e, op)(*args)
        elif op == "sub_ln2":
            vals[v] = e.sub_ln2(args[0], args[1], args[2], at.get("scale", 1.0))
        else:
            vals[v] = e.let(VECTOR[op].format(*args))
        if v in bases:
            vals[v] = e.opaque(vals[v])
    for v in sw.stores + ([sw.output] if sw.output is not None else []):
        e.stmt(f"{bufs['y']}[{i}] = {vals[p.args(v)[-1]]}")
    for v in sw.colstores:
        e.stmt(f"CV_{p.attrs(v)['name']}[{i}] = {vals[p.args(v)[0]]}")
    for r in sw.colreds:   # the columns' state vectors are the accumulators, indexed like x
        red = Lanes(reduction(p.op(r), r, p.attrs(r)), e.fused_fma)
        red.buf = lambda f, name=p.attrs(r)["name"]: f"CV_{name}_{f}"
        red.update(e, i, [vals[p.args(r)[0]]])
    return vals


def _fused_fma(t: Target) -> bool:
    return t.fma == "native"


def _reduction(p: Program, r: int, t: Target, A: int) -> Red:
    if p.op(r) == "reduce_topk":
        red = TopKRed(r, _fused_fma(t), p.attrs(r))
    else:
        res = [f"s{r}_{i}" for i in range(p.items(r))] if p.shape(r) == PAIR else [f"s{r}"]
        red = Lanes(reduction(p.op(r), r, p.attrs(r)), _fused_fma(t), res)
    red.a = A if red.replicated else 1
    red.q = red.a * t.lanes
    return red


def _selected_sweep(p: Program, sw, t: Target, s: Schedule, counter) -> list[str]:
    """The output sweep of an output_selected over its reduce_topk's kept pairs (c._selected_block)."""
    L = t.lanes
    sel = _reduction(p, sw.selected, t, s.accumulators)
    (sv, sj), k = sel.sel(), sel.k
    kp = -(-k // L) * L
    wb, fb = f"sel{sel.r}_w", f"fill{sel.r}"
    out = [f"# sweep {sw.index}: the {k} selected entries -> indices and weights",
           f'{wb} = T.alloc_buffer(({kp},), "float32", scope="local")',
           f'{fb} = T.alloc_buffer((1,), "int64", scope="local")',
           f"ns: T.let[T.int64] = T.min(n, T.int64({k}))",
           # places left empty (index +inf) take the -inf entries, then the NaN ones (sg_topk_fill)
           f"{fb}[0] = T.int64(0)", f"for o in range({k}):",
           f"    if {sj}[o] < {f32(math.inf)}:", f"        {fb}[0] = {fb}[0] + T.int64(1)",
           f"if {fb}[0] < ns:",
           "    for ps in range(2):", "        for j in range(n):",
           f"            if T.And({fb}[0] < ns, T.Select(ps == 0, X[j] == {f32(-math.inf)}, T.isnan(X[j]))):",
           f"                {sv}[{fb}[0]] = X[j]",
           f'                {sj}[{fb}[0]] = T.Cast("float32", T.Cast("int32", j))',
           f"                {fb}[0] = {fb}[0] + T.int64(1)"]
    e = Emit(counter, _fused_fma(t))
    _row_values(p, sw, e, f"(it * {L} + l)", 0, {"x": sv, "index": sj, "y": wb})
    out += [f"for it in range({kp // L}):",
            f"    for l in T.vectorized({L}):" if L > 1 else "    for l in range(1):"]
    out += [f"        {ln}" for ln in e.lines]
    return out + ["for o in range(ns):", f'    IDX[o] = T.Cast("int64", {sj}[o])', f"    W[o] = {wb}[o]"]


def _sweep(p: Program, sw, t: Target, s: Schedule, counter) -> list[str]:
    if sw.selected is not None:
        return _selected_sweep(p, sw, t, s, counter)
    L, U, A = t.lanes, s.unroll, s.accumulators
    step = U * L
    reds = [_reduction(p, r, t, A) for r in sw.reductions]
    out = [f"# sweep {sw.index}"]
    for red in reds:
        for f in red.fields:
            out.append(f'{red.buf(f)} = T.alloc_buffer(({red.places * red.q},), "float32", scope="local")')
            if red.partial:
                out.append(f'{red.part(f)} = T.alloc_buffer(({red.q},), "float32", scope="local")')
        if red.blocked:
            for f in red.outer_fields():
                out.append(f'{red.outer(f)} = T.alloc_buffer(({L},), "float32", scope="local")')
        out.append(f'res{red.r} = T.alloc_buffer(({max(2, p.items(red.r))},), "float32", scope="local")')
        if red.blocked:
            for f in red.outer_fields():
                out += [f"for l in T.vectorized({L}):" if L > 1 else "for l in range(1):",
                        f"    {red.outer(f)}[l] = {red.outer_init(f)}"]

    def reset(ind: str, blocked: bool) -> list[str]:
        lines = []
        for red in reds:
            if red.blocked != blocked:
                continue
            for f in red.fields:
                size = red.places * red.q
                lines += [f"{ind}for l in T.vectorized({size}):" if size > 1 else f"{ind}for l in range(1):",
                          f"{ind}    {red.buf(f)}[l] = {red.init(f)}"]
                if red.partial:
                    lines.append(f"{ind}    {red.part(f)}[l] = {red.init(f)}")
        return lines

    blocked = bool(reds)
    B = s.block if blocked else None
    body = reset("", False)
    if blocked:
        body += [f"for blk in range((n + {B - 1}) // {B}):",
                 f"    lo: T.let[T.int64] = blk * {B}",
                 f"    cnt: T.let[T.int64] = T.min(n - lo, {B})"]
        ind = "    "
        body += reset(ind, True)
    else:
        body += ["lo: T.let[T.int64] = T.int64(0)", "cnt: T.let[T.int64] = n"]
        ind = ""
    # main loop: one vectorised lane loop holding U slots
    e = Emit(counter, _fused_fma(t), lane=("l", L))
    slots = {}
    K = flush_steps(U, A)
    flushed = [red for red in reds if red.partial] if K * step < (B or 0) else []
    it = f"(run * {K} + it)" if flushed else "it"
    for u in range(U):
        # inline, not let-bound: VectorizeLoop then folds it into a Ramp (a contiguous vector
        # load); a let-bound vector index stays opaque and the lean pipeline emits a gather
        i = f"(l + (lo + {it} * {step} + {u * L}))"
        slots[u] = _row_values(p, sw, e, i, u)
    def vals(slot: dict, red: Red):
        args = [slot[a] for a in p.args(red.r)]
        return args[0] if len(args) == 1 else tuple(args)

    for red in reds:
        for k in range(red.a):
            xs = [vals(slots[u], red) for u in range(U) if u % red.a == k]
            red.update(e, f"{k * L} + l", xs)
    # an int64 lane variable: no Cast around the Ramp, so x[base + l] stays a contiguous load
    lane_loop = f"for l in T.vectorized(T.int64({L})):" if L > 1 else "for l in range(T.int64(1)):"
    if flushed:   # runs of K steps, then the accumulators join their block partials
        body += [f"{ind}for run in range((cnt // {step} + {K - 1}) // {K}):",
                 f"{ind}    for it in range(T.min({K}, cnt // {step} - run * {K})):", f"{ind}        {lane_loop}"]
        body += [f"{ind}            {ln}" for ln in e.lines]
        fe = Emit(counter, _fused_fma(t))
        for red in flushed:
            for k in range(A):
                red.flush(fe, f"{k * L} + l")
        body += [f"{ind}    {lane_loop}"] + [f"{ind}        {ln}" for ln in fe.lines]
        allocs = e.allocs + fe.allocs
    else:
        body += [f"{ind}for it in range(cnt // {step}):", f"{ind}    {lane_loop}"]
        body += [f"{ind}        {ln}" for ln in e.lines]
        allocs = e.allocs
    # scalar tail, into lane 0 of accumulator 0
    e = Emit(counter, _fused_fma(t), lane=("0", 1))
    i = e.let(f"lo + cnt // {step} * {step} + j", "int64")
    tail = _row_values(p, sw, e, i, 0)
    for red in reds:
        red.update(e, red.tail_slot(L), [vals(tail, red)])
    body += [f"{ind}for j in range(cnt % {step}):"] + [f"{ind}    {ln}" for ln in e.lines]
    out += allocs + e.allocs
    if any(red.blocked for red in reds):
        e = Emit(counter, _fused_fma(t))
        for red in (red for red in reds if red.blocked):
            if red.partial:   # the accumulators (and the tail) join their partials, which merge
                accs = [red.flush(e, f"{k * L} + l") for k in range(A)]
            else:
                accs = [{f: red.load(e, f, f"{k * L} + l") for f in red.fields} for k in range(A)]
            acc = accs[0]
            for other in accs[1:]:
                acc = red.merge(e, acc, other)
            o = {f: e.let(f"{red.outer(f)}[l]") for f in red.outer_fields()}
            new = red.fold(e, o, acc)
            for f in red.outer_fields():
                e.stmt(f"{red.outer(f)}[l] = {new[f]}")
        body += [f"{ind}{lane_loop}"] + [f"{ind}    {ln}" for ln in e.lines]
    out += body
    for red in reds:
        out += red.finish(L, counter)
    return out


class TirScalars:
    """``numerics.scalars.ScalarEmitter`` for TIR: ``T.let`` row scalars; a guard's condition is
    kept (the rest of the row runs under it)."""
    name, SCALAR = "TVM", SCALAR

    def __init__(self):
        self.lines, self.cond = [], None

    def literal(self, v): return f32(v)
    def define(self, v, expr): self.lines.append(f"s{v}: T.let[T.float32] = {expr}")
    def row_param(self, name): return f"rp_{name}"
    def size(self, axis): return f'T.Cast("float32", {"m" if axis == "rows" else "n"})'
    def row_index(self): return 'T.Cast("float32", row)'
    def mscalar(self, name): return f"ms_{name}"
    def item(self, r, index): return f"s{r}_{index}"
    def emit(self, name, a): self.lines.append(f"EM_{name}[0] = {a}")

    def mreduce_max(self, name, a):   # NaN propagates: once the scalar is NaN it stays NaN
        self.lines.append(f"MR_{name}[0] = T.Select(({a} > MR_{name}[0]) | T.isnan({a}), {a}, MR_{name}[0])")

    def mreduce_sum(self, name, a): self.lines.append(f"MR_{name}[0] = MR_{name}[0] + {a}")
    def guard(self, a, limit): self.cond = f"T.fabs({a}) <= {f32(limit)}"


def _scalars(p: Program, nodes: list[int]) -> tuple[list[str], str | None]:
    """Scalar statements; a guard returns its condition (the rest of the row runs under it)."""
    e = TirScalars()
    lower_scalars(p, nodes, e)
    return e.lines, e.cond


def row_function(p: Program, t: Target, s: Schedule, symbol: str, row_params: list[str]) -> str:
    """TVMScript of ``void symbol(float *x, float *y, int64_t n, float rp..., int32_t *status)``;
    status is set to 1 when a guard sends the row to the fallback program."""
    pl, counter = plan(p), [0]
    body, _ = _scalars(p, pl.scalars_before)
    nested: list[list[str]] = []   # statements after each guard go one level deeper
    cur = body
    for sw in pl.sweeps:
        cur += _sweep(p, sw, t, s, counter)
        lines, guard = _scalars(p, sw.scalars_after)
        cur += lines
        if guard is not None:
            inner: list[str] = []
            nested.append(inner)
            cur.append(("guard", guard, inner))
            cur = inner

    def render(stmts, ind):
        out = []
        for st in stmts:
            if isinstance(st, tuple):
                _, cond, inner = st
                out += [f"{ind}if {cond}:"] + (render(inner, ind + "    ") or [f"{ind}    T.evaluate(0)"])
                out += [f"{ind}else:", f"{ind}    ST[0] = 1"]
            else:
                out.append(ind + st)
        return out

    if p.phase is not None or row_outputs(p) == ("y",):
        outs, bufs = 'y: T.handle("float32"), ', ['    Y = T.decl_buffer((n,), "float32", data=y)']
    else:
        outs = 'idx: T.handle("int64"), w: T.handle("float32"), '
        bufs = ['    IDX = T.decl_buffer((n,), "int64", data=idx)', '    W = T.decl_buffer((n,), "float32", data=w)']
    args = "".join(f"rp_{name}: T.float32, " for name in row_params)
    if p.phase is not None:   # a phase of a matrix program: the arguments of c.phase_args
        tir = {"size_t": "T.int64", "float": "T.float32", "float *": 'T.handle("float32")',
               "const float *": 'T.handle("float32")'}
        args = "".join(f"{nm}: {tir[t]}, " for t, nm, _ in phase_args(p)[1:])
        for t, nm, _ in phase_args(p):
            if t.endswith("*"):
                big = nm[:2].upper() + nm[2:]
                bufs.append(f'    {big} = T.decl_buffer(({"n" if nm.startswith(("cv_", "mx_")) else 1},), '
                            f'"float32", data={nm})')
    head = [
        "@T.prim_func",
        f'def {symbol}(x: T.handle("float32"), {outs}n: T.int64, ' + args + 'status: T.handle("int32")):',
        f'    T.func_attr({{"global_symbol": "{symbol}", "tir.noalias": False}})',
        '    X = T.decl_buffer((n,), "float32", data=x)', *bufs,
        '    ST = T.decl_buffer((1,), "int32", data=status)',
    ]
    return "\n".join(head + render(body, "    ")) + "\n"


def _no_knobs(s: Schedule) -> None:
    """The C backend's knobs (streaming stores, prefetch, exp variants) are not TVM's: TVM keeps
    its exp and its own stores."""
    if s.knobs():
        raise UsageError(f"schedule {', '.join(f'{k}={v}' for k, v in s.knobs().items())}: a C-backend "
                         f"knob; the TVM backend takes unroll, accumulators and block")


def generate(p: Program, t: Target, s: Schedule, name: str, *, op: str, algorithm: str,
             params: dict, threads: ThreadPolicy | None = None) -> tuple[str, str]:
    """(TVMScript of the row functions, C wrapper with the entry point)."""
    _no_knobs(s)
    bad = lowerable(p) + (lowerable(p.fallback) if p.fallback else [])
    if bad:
        raise BuildError(f"the TVM backend cannot lower {', '.join(bad)}")
    pl = plan(p)
    threads = threads or thread_policy(pl, t)   # what threads=auto takes: the model's unless given
    header = [f"# {name}: generated by softgen {__version__} (TVM backend). Do not edit.",
              f"# op {op}({', '.join(f'{k}={v!r}' for k, v in params.items())}), algorithm {algorithm}, "
              f"target {t.name} ({t.lanes} lanes), schedule {s} ({s.tag(t.lanes)})",
              f"# {pl.traffic()['summary']} = {pl.traffic()['bytes_per_element']} B/element"]
    header += ["# " + ln for ln in pl.describe().splitlines()]
    rps = p.row_params()
    funcs = [row_function(p, t, s, f"{name}__row", rps)]
    if p.fallback is not None:
        funcs.append(row_function(p.fallback, t, s, f"{name}__fallback_row", rps))
    tir = "\n".join(header) + "\n# fmt: off\n\n" + "\n\n".join(funcs)
    wrapper = env().get_template("tvm_wrapper.c.j2").render(
        name=name, version=__version__, op=op, algorithm=algorithm, t=t,
        schedule=f"{s} ({s.tag(t.lanes)})", fallback=p.fallback is not None, tvm=True,
        row_params=rps, rp_args=entry_row_args(rps), abi=abi(p, name),
        rp_decl="".join(f", float {name}" for name in rps), matrix=None, threads=threads)
    return tir, wrapper


GEMM_EPILOGUES = False   # tvm_gemm stores the plain product: element-wise phases stay phases
# the phase functions TVM compiles (``row_function``): int64 sizes, non-const float * buffers, a
# status pointer; declared in the C wrapper, defined in the TVM object
TVM_CALLS = CallingConvention(size_type="int64_t", pointer_cast="(float *)", status=True, declare=True)


def generate_matrix(mp, t: Target, s: Schedule, name: str, *, op: str, params: dict,
                    gemm_schedule=None) -> tuple[str, str]:
    """(TVMScript of one function per rows/cols phase of the lowered matrix program and one
    ``tvm_gemm`` contraction per layout, C wrapper with the entry point): the C backend's
    matrix entry, calling TVM's functions. Every loop and every flop is TVM-compiled code; the
    C wrapper only checks arguments, allocates the scratch and sequences the calls."""
    _no_knobs(s)
    bad = sorted({b for _, p, _ in mp.programs() for b in lowerable(p)})
    if any(isinstance(ph, MatMulPhase) and ph.mm.epilogue is not None for ph in mp.leaves()):
        bad.append("GEMM epilogues (lower the program with epilogues=False)")
    if bad:
        raise BuildError(f"the TVM backend cannot lower {', '.join(bad)}")
    header = [f"# {name}: generated by softgen {__version__} (TVM backend). Do not edit.",
              f"# op {op}({', '.join(f'{k}={v!r}' for k, v in params.items())}), matrix program, "
              f"target {t.name} ({t.lanes} lanes), schedule {s} ({s.tag(t.lanes)})"]
    header += ["# " + ln for ln in matrix_plan_lines(mp)]
    funcs = [row_function(ph.program, t, s, f"{name}__phase{k}", ph.program.row_params())
             for k, ph in enumerate(mp.leaves()) if isinstance(ph, SweepPhase)]
    gemms = {fname: tvm_gemm.gemm(t, layout, gemm_schedule, name=fname)
             for fname, layout, _ in matrix_gemms(mp, name).values()}
    # the streaming attention phase: TVM's function per (batch, head) rows, the C entry's checks and tasks
    attn = [(f"{name}__attn{k}", ph) for k, ph in enumerate(mp.leaves()) if isinstance(ph, AttentionPhase)]
    if attn and (len(attn) > 1 or mp.attention_tasks() is None):
        raise BuildError("the TVM backend lowers a streaming attention phase only as the whole program")
    if attn:
        header.append(f"# streaming attention (algorithm auto streams {', '.join(tvm_attention.NORMALIZERS)} on this backend too): "
                      f"{attn[0][0]}__tvm is the TensorIR of a (batch, head) matrix's query rows; the C "
                      f"wrapper's explicit-stride entry checks and splits (batch, head, query chunk) tasks")
    funcs += [tvm_attention.phase_function(ph, fname, t, Emit, f32) for fname, ph in attn]
    tir = "\n".join(header) + "\n# fmt: off\n\n" + "\n\n".join(funcs + [g.source for g in gemms.values()])
    entry = matrix_entry(mp, name, TVM_CALLS)
    entry["prototypes"] = entry.get("prototypes", []) + [g.c_text for g in gemms.values()]
    after_pool = [attention_function(ph, fname, tasks=True, abi=mp.abi(), tvm=True,
                                     tvm_scratch={"kn_rows": tvm_attention.knorm_rows(t.lanes),
                                                  "pb_tile": tvm_attention.pb_tile(ph, t.lanes)})
                  for fname, ph in attn]
    wrapper = env().get_template("tvm_wrapper.c.j2").render(
        name=name, version=__version__, op=op, algorithm="streaming (matrix program)" if attn else
        "direct (matrix program)", t=t,
        schedule=f"{s} ({s.tag(t.lanes)})", fallback=False, tvm=True, row_params=[], rp_args="",
        rp_decl="", abi=matrix_abi(mp, name), matrix=entry, threads=matrix_thread_policy(mp, t),
        after_pool=after_pool)
    return tir, wrapper


_SYMBOL = re.compile(r'"global_symbol": "(\w+)"')


def noop_free(tir: str) -> frozenset:
    """The functions of ``tir`` lowered without TVM's RemoveNoOp: ``row_function``'s (every symbol
    but the ``__tvm`` ones of tvm_attention / tvm_gemm) write no no-op statement, so the pass
    changes nothing there (tests/test_tvm_adapter.py checks the LLVM IR) but costs ~20% of their
    lowering (binding every let in an arith analyzer)."""
    return frozenset(s for s in _SYMBOL.findall(tir) if not s.endswith("__tvm"))


def sources(tir: str, wrapper: str, target: Target) -> dict:
    """Inputs of the C compiler/linker for this kernel: the wrapper and the TVM object. A cached
    object is read without importing TVM (a new process calling a cached kernel never does)."""
    ok, why = (True, "") if tvm_adapter.script_object_path(tir, target.name).exists() else tvm_adapter.available()
    if not ok:
        raise BuildError(f"the TVM backend is not available: {why}")
    return {"kernel.c": wrapper, "kernel_tvm.o": tvm_adapter.script_object(tir, target.name, noop_free(tir))}


def assembly(tir: str, target: Target) -> str:
    return tvm_adapter.script_assembly(tir, target, noop_free(tir))



class TvmBackend(Backend):
    """The TVM backend in the registry (``softgen.backends.base``): ``Artifact.source`` is the
    TensorIR script, ``wrapper`` the C entry point; the library links the wrapper with the object
    LLVM makes of the script (machine code: SIMDe cannot emulate it). Registering it does not
    import TVM (``tvm_adapter`` does, when a kernel is built)."""

    name = "tvm"
    description = "TensorIR + LLVM"
    suffix = "_tvm"
    # algorithm="auto" is a dispatcher (softgen.dispatch) here too: each variant's object defines
    # only its own <variant>__row/__fallback_row (prefixed by the variant's name), local constant
    # pools and the weak half-float helpers __truncsfhf2/__extendhfsf2 (identical in every object:
    # the linker keeps one); no TVM runtime symbol, nothing undefined (checked per build by
    # tvm_adapter.lower, and by tests/test_tvm_dispatch.py on the linked library). The library's
    # version script hides all but the dispatcher's entry points
    dispatchable = True
    schedule_knobs = ()   # TVM keeps its exp and its own stores (_no_knobs)
    gemm_epilogues = GEMM_EPILOGUES
    streams_attention = tvm_attention.NORMALIZERS   # the streaming phase in TensorIR, the C entry's ABI and tasks
    simde_emulable = False
    thread_policy = True
    c_source = False

    def lowerable(self, program) -> list[str]:
        return lowerable(program)

    def generate(self, program, target, schedule, name, *, op, algorithm, params,
                 threads: ThreadPolicy | None = None) -> Artifact:
        tir, wrapper = generate(program, target, schedule, name, op=op, algorithm=algorithm, params=params,
                                threads=threads)
        return Artifact(self, name, target, tir, wrapper)

    def generate_matrix(self, program, target, schedule, name, *, op, params, gemm=None) -> Artifact:
        tir, wrapper = generate_matrix(program, target, schedule, name, op=op, params=params, gemm_schedule=gemm)
        return Artifact(self, name, target, tir, wrapper)

    def link_inputs(self, a: Artifact) -> dict:
        mt = [f"{a.name}_mt"] if f"int {a.name}_mt(" in a.wrapper else []   # row kernels: the thread-count entry
        return {**sources(a.source, a.wrapper, a.target),
                "exports.map": tvm_adapter.version_script([a.name, f"{a.name}_supported", *mt])}

    def assembly(self, a: Artifact, cc: str | None = None) -> str:
        return assembly(a.source, a.target)

    def export_files(self, a: Artifact) -> dict[str, tuple[str, str]]:
        return {"source": (f"{a.name}.c", a.wrapper), "tir": (f"{a.name}.tir.py", a.source)}

    def manifest_info(self) -> dict:
        # the installed pair from package metadata: exporting a cached kernel imports no TVM
        return {"name": self.name, "version": tvm_adapter.installed(),
                "codegen": "TensorIR -> LLVM object + C wrapper"}


register(TvmBackend())
