"""IR construction and validation, the algorithm rewrites, and the pass planner's traffic table
(docs/ops.md §1-3: 3R+1W, 3R+2W, 2R+1W, 2R+1W)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import check, run

import softgen
from softgen import passes
from softgen.ir import IRError, Program
from softgen.ops import OPS, build_program, register

SPEC_TRAFFIC = {  # algorithm: (passes, reads, writes, bytes per element)
    "three-pass-recompute": (3, 3, 1, 16),
    "three-pass-reload": (3, 3, 2, 20),
    "two-pass": (2, 2, 1, 12),
    "online": (2, 2, 1, 12),
}


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("alg", list(SPEC_TRAFFIC))
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_rewrites_reproduce_spec_traffic_table(op, alg, scale):
    p = passes.apply_algorithm(build_program(op, scale=scale), alg)
    t = passes.plan(p).traffic()
    assert (t["passes"], t["reads"], t["writes"], t["bytes_per_element"]) == SPEC_TRAFFIC[alg]


def test_rewrites_change_the_graph_not_just_a_label():
    base = build_program("softmax")
    two = passes.apply_algorithm(base, "two-pass")
    onl = passes.apply_algorithm(base, "online")
    rel = passes.apply_algorithm(base, "three-pass-reload")
    assert two.nodes("reduce_max") == [] and len(two.nodes("reduce_extexp")) == 1
    assert len(two.nodes("exp_shift2")) == 1 and len(two.nodes("guard")) == 1
    assert two.fallback is not None and two.fallback.nodes("reduce_max")  # the |E| guard's fallback
    assert onl.nodes("reduce_max") == [] and onl.nodes("reduce_sum") == []
    assert len(onl.nodes("reduce_online")) == 1
    assert len(rel.nodes("materialize")) == 1
    assert base.nodes("reduce_max") and base.nodes("reduce_sum")  # the input is not mutated
    for p in (two, onl, rel):
        p.validate()


def test_scale_becomes_an_attribute_of_the_fused_reductions():
    onl = passes.apply_algorithm(build_program("softmax", scale=0.25), "online")
    (r,) = onl.nodes("reduce_online")
    assert onl.attrs(r)["scale"] == 0.25
    two = passes.apply_algorithm(build_program("softmax", scale=0.25), "two-pass")
    (r,) = two.nodes("reduce_extexp")
    assert two.attrs(r)["scale"] == 0.25 and two.nodes("mul") == [two.users(two.nodes("exp_shift2")[0])[0]]


def test_log_softmax_two_pass_uses_sub_ln2_and_no_exp_on_the_output_path():
    p = passes.apply_algorithm(build_program("log_softmax"), "two-pass")
    assert len(p.nodes("sub_ln2")) == 1 and p.nodes("exp_shift2") == []


@pytest.mark.parametrize("alg", list(SPEC_TRAFFIC))
def test_only_two_pass_clamps_log_probabilities(alg):
    """z - log S <= 0 holds by construction (z <= 0, S >= 1); the extended form does not keep
    it, so two-pass ends in min(0, .) and the other algorithms pay nothing."""
    p = passes.apply_algorithm(build_program("log_softmax"), alg)
    (out,) = p.nodes("output")
    (y,) = p.args(out)
    if alg == "two-pass":
        assert p.op(y) == "min" and p.const_value(p.args(y)[0]) == 0.0   # 0 first: NaN survives
        assert p.op(p.args(y)[1]) == "sub_ln2" and p.nodes("sub") == []   # - log V: a row scalar
    else:
        assert p.nodes("min") == []


def test_exp_of_max_shifted_values_is_marked_nonpositive():
    p = passes.apply_algorithm(build_program("softmax", scale=2.0), "three-pass-recompute")
    assert all(p.attrs(v)["nonpos"] for v in p.nodes("exp"))
    q = Program("plain")
    x = q.input()
    q.add("output", (x.exp() * x.exp().sum().recip()).id)
    q = passes.apply_algorithm(q.validate(), "direct")
    assert not any(q.attrs(v)["nonpos"] for v in q.nodes("exp"))


def test_log1p_of_a_nonpositive_exp_is_marked_unit():
    p = passes.apply_algorithm(build_program("softplus_l1", scale=2.0), "direct")
    (v,) = p.nodes("log1p")
    assert p.attrs(v)["unit"]
    q = Program("plain")
    x = q.input()
    q.add("output", (x.abs().log1p() * x.abs().log1p().sum().recip()).id)
    q = passes.apply_algorithm(q.validate(), "direct")
    assert not any(q.attrs(v)["unit"] for v in q.nodes("log1p"))


@pytest.mark.parametrize("op", ["softplus_l1", "stablemax", "log_stablemax"])
def test_direct_reload_stores_the_summed_row_value(op):
    """The summed value (softplus_l1: "softplus where > 0, else x", a map of it and x) is
    stored in the sum sweep; the output sweep reads only y."""
    p = passes.apply_algorithm(build_program(op), "direct-reload")
    (m,) = p.nodes("materialize")
    (r,) = p.nodes("reduce_sum")
    assert p.users(m) and p.args(r)[0] in (p.args(m)[0], *p.args(p.args(m)[0]))
    plan = passes.plan(p)
    assert plan.traffic()["summary"] == "2R + 2W" and not plan.sweeps[1].reads_x
    if op == "softplus_l1":
        assert [p.op(v) for v in plan.sweeps[1].compute] == ["max", "mul"]
        assert plan.sweeps[1].reloads == [m]


def test_direct_reload_keeps_x_when_the_output_sweep_needs_it():
    """y may be x: a sweep after the store must not read x, so nothing is materialised."""
    q = Program("x_after_store")
    x = q.input()
    e = x.exp()
    q.add("output", (e * e.sum().recip() + x).id)
    p = passes.apply_algorithm(q.validate(), "direct-reload")
    assert p.nodes("materialize") == [] and passes.plan(p).traffic()["summary"] == "2R + 1W"


def test_plan_refuses_a_sweep_that_reads_x_after_y_was_written():
    """y may be x: a plan whose later sweep reads x after a store into y is an error, whichever
    rewrite produced it."""
    q = Program("x_after_store")
    x = q.input()
    e = x.exp()
    kept = q.add("materialize", e.id)
    q.add("output", q.add("add", q.add("mul", kept, e.sum().recip().id), x.id))
    with pytest.raises(IRError, match="sweep 1 reads x after sweep 0 wrote y"):
        passes.plan(q.validate())
    assert passes.plan(q, in_place=False).in_place_hazard()


def test_three_pass_reload_keeps_x_for_the_topk_membership_test():
    """Switch gating (renormalize=0) has the softmax motif, but its output sweep tests
    membership on x: storing e^(x - max) into y (= x in place) would corrupt it."""
    p = passes.apply_algorithm(build_program("topk_softmax", k=3, renormalize=0), "three-pass-reload")
    assert p.nodes("materialize") == [] and "nothing is materialised" in p.notes[-1]
    assert passes.plan(p).traffic()["summary"] == "3R + 1W"


def test_explain_text_names_sweeps_and_traffic():
    p = passes.apply_algorithm(build_program("softmax"), "three-pass-reload")
    text = passes.plan(p).describe()
    assert "sweep 0" in text and "sweep 2" in text and "3R + 2W = 20 B/element" in text
    assert "reduce_max" in str(p) and "materialize" in str(p)


# -- IR validation ------------------------------------------------------------------------------

def test_ir_rejects_malformed_programs():
    p = Program("bad")
    with pytest.raises(IRError, match="unknown IR op"):
        p.add("frobnicate")
    x = p.input()
    with pytest.raises(IRError, match="takes 2 arguments"):
        p.add("add", x.id)
    with pytest.raises(IRError, match="does not exist"):
        p.add("exp", 99)
    with pytest.raises(IRError, match="exactly one input and one output"):
        p.validate()
    r = x.max()
    with pytest.raises(IRError):
        p.add("reduce_sum", r.id)
        p.add("output", x.id)
        p.validate()                       # reduce of a scalar


def test_ir_rejects_unreachable_nodes_and_constant_outputs():
    p = Program("dead")
    x = p.input()
    x.exp()                                # computed, never used
    p.add("output", x.id)
    with pytest.raises(IRError, match="reach no output"):
        p.validate()
    q = Program("const")
    q.input()
    q.add("output", q.add("materialize", q.add("const", value=1.0)))
    with pytest.raises(IRError):
        q.validate()
    c = Program("cycle")
    a = c.input()
    e = a.exp()
    c.add("output", e.id)
    c.g.add_edge(e.id, a.id)
    with pytest.raises(IRError, match="cycle"):
        c.validate()


def test_pair_values_need_item():
    p = Program("pair")
    x = p.input()
    r = p.add("reduce_online", x.id, scale=1.0)
    with pytest.raises(IRError, match="pair"):
        p.add("output", p.add("mul", x.id, r))
        p.validate()


def test_unknown_algorithm_and_inapplicable_rewrite():
    with pytest.raises(softgen.UsageError, match="unknown algorithm"):
        passes.apply_algorithm(build_program("softmax"), "four-pass")
    q = Program("no_motif")
    x = q.input()
    q.add("output", (x * 2.0).id)
    q.validate()
    assert passes.applicable_algorithms(q) == ["direct", "direct-reload"]
    with pytest.raises(softgen.UsageError, match="does not apply"):
        passes.apply_algorithm(q, "online")


# -- extensibility: a new op is an IR definition + a float64 reference ------------------------

@pytest.fixture
def custom_op():
    def ref(x, scale=1.0):
        return 0.5 * softgen.reference.softmax(x, scale=scale)

    @register("half_softmax_test", ref, params={"scale": 1.0, "temperature": None})
    def half_softmax(x, scale):
        """A softmax scaled by 1/2: any op containing the normaliser motif gets every algorithm."""
        e = ((x - x.max()) * scale).exp()
        return e * (e.sum().finite_or_nan().recip() * 0.5)

    yield "half_softmax_test"
    del OPS["half_softmax_test"]


@pytest.mark.parametrize("alg", list(SPEC_TRAFFIC))
def test_a_new_op_gets_every_algorithm_and_target(custom_op, alg, rng):
    for target in ("scalar", "host"):
        k = softgen.compile(custom_op, algorithm=alg, target=target, scale=0.75)
        assert k.plan.bytes_per_element == SPEC_TRAFFIC[alg][3]
        x = rng.uniform(-50, 50, (3, 77)).astype(np.float32)
        check(k, x, run(k, x), alg)
