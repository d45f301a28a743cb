"""softgen.numerics: the constants are float32 values spelled once (the C header renders the same
values), and a reduction written once against the emitter interface lowers to both backends."""
from __future__ import annotations

import math
import re

import numpy as np

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
