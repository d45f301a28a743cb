"""softgen.numerics: the constants are float32 values spelled once (the C header renders the same
values), and a reduction written once against the emitter interface lowers to both backends."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

import softgen
from softgen.backends.c import CEmit
from softgen.backends.tvm import Emit, LaneFinish, Lanes
from softgen.numerics import constants as K
from softgen.numerics.reductions import REDUCTIONS, Reduction
from softgen.render import vmath


def _all_constants():
    for name in dir(K):
        v = getattr(K, name)
        if isinstance(v, K.F32):
            yield name, v
        elif isinstance(v, tuple):
            yield from ((f"{name}[{i}]", c) for i, c in enumerate(v))


def test_constants_are_float32_values():
    for name, v in _all_constants():
        assert float(np.float32(v)) == float(v), name


def test_vmath_spells_the_constants():
    text = vmath()
    defines = {m[1]: m[2] for m in re.finditer(r"#define (SG_\w+)\s+\(?([-0-9a-fA-Fx.p+]+)f\)?", text)}
    assert float.fromhex(defines["SG_LOG2E"]) == K.LOG2E
    assert float.fromhex(defines["SG_MAGIC"]) == K.MAGIC
    assert [float.fromhex(defines[f"SG_C{5 - i}"]) for i in range(5)] == list(K.P5)
    assert float(defines["SG_EXP_MIN"]) == K.EXP_MIN and float(defines["SG_EXP_MAX"]) == K.EXP_MAX
    assert float.fromhex(defines["SG_EXTEXP_DOMAIN"]) == K.EXTEXP_DOMAIN
    for arr, want in (("sg_log_p", K.LOG_P), ("sg_log1p_q", K.LOG1P_Q)):
        body = re.search(arr + r"\[8\] = \{([^}]*)\}", text)[1]
        assert [float.fromhex(c.strip().rstrip("f")) for c in body.split(",")] == list(want)


class MinRed(Reduction):
    """A toy reduction, written once: the row minimum."""
    op, fields, outer, identity = "reduce_min", ("m",), ("m",), math.inf

    def init(self, f): return math.inf

    def update(self, e, st, xs):
        m = st["m"]
        for x in xs:
            m = e.assign(st["m"], e.sub(e.const(0.0), e.max(e.sub(e.const(0.0), m), e.sub(e.const(0.0), x))))
        return {"m": m}

    def merge(self, e, d, s): return self.update(e, d, [s["m"]])
    def fold(self, e, o, a): return self.update(e, o, [a["m"]])
    def finish(self, e, o, res):
        e.result(res, 0, e.hmax(o["m"]))   # (a toy: only the spelling is checked here)


def test_a_reduction_written_once_lowers_to_c_and_tir():
    red = MinRed(3)
    c = CEmit()
    red.update(c, {"m": "a3_0_m"}, ["v1_0", "v1_1"])
    assert c.block() == ["a3_0_m = V_SUB(V_ZERO(), V_MAX(V_SUB(V_ZERO(), a3_0_m), V_SUB(V_ZERO(), v1_0)));",
                         "a3_0_m = V_SUB(V_ZERO(), V_MAX(V_SUB(V_ZERO(), a3_0_m), V_SUB(V_ZERO(), v1_1)));"]
    e = Emit([0])
    Lanes(red, res=["s3"]).update(e, "l", ["x0"])
    assert e.lines[0] == "t1: T.let[T.float32] = a3_m[l]" and e.lines[-1].startswith("a3_m[l] = t")
    fin = Lanes(red, res=["s3"]).finish(8, [0])
    assert fin[-1] == "s3: T.let[T.float32] = res3[0]"
    assert isinstance(LaneFinish([0], True, 3, 8), Emit)


def test_shared_reductions_describe_their_state():
    for op, cls in REDUCTIONS.items():
        red = cls(1, 1.0, {})
        assert red.op == op and set(red.fields) <= set(red.outer)
        assert all(isinstance(red.init(f), float) for f in red.fields)


class NegMaxRed(Reduction):
    """A new reduction, written once here and nowhere else: n = max(-x) over the row (so the row
    minimum is -n). Registered for one test, with its IR op and a toy op using it."""
    op, fields, outer, identity = "reduce_negmax_test", ("n",), ("n",), math.inf   # neutral input x

    def init(self, f): return -math.inf

    def update(self, e, st, xs):
        n = st["n"]
        for x in xs:
            n = e.assign(st["n"], e.max(n, e.sub(e.const(0.0), x)))
        return {"n": n}

    def merge(self, e, d, s): return {"n": e.assign(d["n"], e.max(d["n"], s["n"]))}
    def fold(self, e, o, a): return {"n": e.assign(o["n"], e.max(o["n"], a["n"]))}
    def finish(self, e, o, res): e.result(res, 0, e.hmax(o["n"]))


@pytest.fixture
def negmax_op(monkeypatch):
    """x - min(x) through the new reduction: the IR op (ir.OPS), the reduction (numerics), a
    float64 reference and the op (the registry); the backends are not touched."""
    from softgen import ir
    from softgen.numerics import reductions
    from softgen.ops import OPS, register

    monkeypatch.setitem(ir.OPS, NegMaxRed.op, ir.OpSpec(1, "reduce", "max(-x) over the row", ir.SCALAR))
    monkeypatch.setitem(reductions.REDUCTIONS, NegMaxRed.op, NegMaxRed)

    def reference(x):
        x = np.asarray(x, np.float64)
        return x - x.min(axis=-1, keepdims=True)

    @register("minshift_test", reference)
    def minshift(x):
        return x + x._op(NegMaxRed.op)
    yield "minshift_test"
    OPS.pop("minshift_test")


@pytest.mark.parametrize("backend", ["c", "tvm"])
@pytest.mark.parametrize("target", ["scalar", "avx2", "avx512"])
def test_a_new_reduction_needs_no_backend_code(negmax_op, backend, target, rng):
    """A reduction written once (NegMaxRed) compiles and runs on every backend and target: the
    per-file cost of a new reduction is its IR op, its class in numerics and its reference."""
    if backend == "tvm":
        pytest.importorskip("tvm")
    if target == "avx512" and not softgen.compile("softmax", target=target).runnable:
        pytest.skip("this CPU has no AVX-512")
    k = softgen.compile(negmax_op, target=target, backend=backend)
    for n in (1, 7, 17, 100, 1000):
        x = rng.uniform(-50, 50, (3, n)).astype(np.float32)
        want = x - x.min(axis=-1, keepdims=True)   # the float32 subtraction the kernel does
        np.testing.assert_array_equal(k(x), want)
