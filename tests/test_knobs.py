"""The C backend's tuning knobs beyond unroll x accumulators (issue 13): non-temporal stores in
the output sweep (``stream``), software prefetch distance (``prefetch``) and the exp variants
(``exp``). Each changes the generated code as intended and nothing else; the defaults generate
the code of a schedule without them; kernels with them stay correct on adversarial rows (tails,
unaligned and strided rows, in place, specials) on scalar, avx2 and avx512 (and the exp variants
on neon under qemu); the model turns streaming on beyond the last-level cache; the tuner offers
the knobs per size class and records them. (The exp variants' accuracy over the float32 domain:
tests/test_exp.py.)

Fast: one kernel per (target, algorithm) with every knob at once, module-scoped, small rows."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from conftest import check, own_cache, run, skip_unless_emulated
from test_kernels import contract_rows
from test_soft import check_gauss

import softgen
from softgen import costmodel, machine, passes, tunedb
from softgen._data import data_dir
from softgen.backends import get_backend
from softgen.errors import UsageError
from softgen.numerics.constants import EXP_DEFAULT, EXP_VARIANTS
from softgen.ops import build_program
from softgen.render import isa_header, vmath
from softgen.schedule import Schedule
from softgen.targets import _load, get_target, host_arch

tune_mod = importlib.import_module("softgen.tune")
ALGS = ("two-pass", "three-pass-reload", "online")
TARGETS = ("scalar", "avx2", "avx512")
EXP_ALT = next(v for v in EXP_VARIANTS if v != EXP_DEFAULT)


def knobs(target: str) -> dict:
    return {"stream": get_target(target).streams, "prefetch": 64, "exp": EXP_ALT}


@pytest.fixture(scope="module", params=[(t, a) for t in TARGETS for a in ALGS], ids=lambda p: f"{p[0]}-{p[1]}")
def knobbed(request):
    t, a = request.param
    return softgen.compile("softmax", algorithm=a, target=t, schedule=knobs(t))


def _src(k) -> str:
    return "".join(v for v in k.sources().values())


# -- the generated code ----------------------------------------------------------------------------

def test_defaults_generate_the_code_without_knobs():
    d = Schedule()
    assert not {"stream", "prefetch", "exp"} & set(d.as_dict()) and d.knobs() == {}
    assert str(d) == "unroll=4 accumulators=2 block=2048" and d.tag(8) == "u32_acc2"
    assert vmath() == vmath(EXP_DEFAULT) and "sg_xpoly" not in vmath()
    for t in ("avx2", "avx512"):
        assert "V_STREAM" not in isa_header(get_target(t)) and "V_STREAM" in isa_header(get_target(t), stream=True)
    plain = softgen.compile("softmax", algorithm="two-pass", target="avx2")
    explicit = softgen.compile("softmax", algorithm="two-pass", target="avx2",
                               schedule={"stream": False, "prefetch": 0, "exp": EXP_DEFAULT})
    assert plain.sources() == explicit.sources() and plain.name == explicit.name


def test_each_knob_changes_the_code_as_intended():
    def src(**kw):   # without the split form (its tasks repeat the sweeps: test_stream_in_the_split_form)
        return _src(softgen.compile("softmax", algorithm="three-pass-reload", target="avx2",
                                    schedule={"split": 0, **kw}))
    base, nt, pf, xv = src(), src(stream=True), src(prefetch=128), src(exp=EXP_ALT)
    # stream: only the output sweep (sweep 2) streams; sweep 1's y, reloaded later, stays cached
    assert "V_STREAM" not in base and "V_FENCE" not in base and "__builtin_prefetch" not in base
    out = nt[nt.index("/* sweep 2"):]
    assert nt[:nt.index("/* sweep 2")].count("V_STREAM(y") == 0
    assert out.count("V_STREAM(y") == 5 and out.count("V_FENCE();") == 1     # 4 unrolled + 1 single
    assert "peel to y's 32-byte alignment" in out and "V_STORE_PART(y + i" in out
    assert "non-temporal stores in the output sweep" in nt and "_nt" in nt.split("\n")[1]
    # prefetch: one per 64-byte line of each main-loop iteration (32 floats: 2), of x (sweeps 0, 1)
    # and of the reloaded y (sweep 2)
    assert pf.count("__builtin_prefetch(x + i + 128);") == 2 and "__builtin_prefetch(x + i + 144);" in pf
    assert "__builtin_prefetch(y + i + 128);" in pf and "software prefetch 128 elements ahead" in pf
    # exp: the variant's polynomial in sg_exp and sg_exp_nonpos; the extended exponent keeps p5
    v = EXP_VARIANTS[EXP_ALT]
    assert f"#define SG_XC{v.degree} {v.coeffs[0].c}" in xv and "sg_xpoly" not in base
    assert xv.count("sg_xpoly(t), s)") == 2 and "sg_extexp_p(VEC u, VEC n)" in xv
    assert f"exp variant {EXP_ALT}" in xv
    names = {s.split("\n")[1] for s in (base, nt, pf, xv)}
    assert len(names) == 4                                  # distinct kernel names (schedule tags)


def test_knob_errors():
    for sched, msg in (({"stream": True}, "no non-temporal stores"),):
        for t in ("scalar", "neon"):
            with pytest.raises(UsageError, match=msg):
                softgen.compile("softmax", algorithm="two-pass", target=t, schedule=sched)
    for bad, msg in (({"stream": 2}, "true or false"), ({"prefetch": 10}, "multiple of 16"),
                     ({"prefetch": -16}, "multiple of 16"), ({"exp": "p4c1"}, "schedule exp must be one of"),
                     ({"exp": 5}, "schedule exp"), ({"nt": True}, "unknown schedule")):
        with pytest.raises(UsageError, match=msg):
            softgen.compile("softmax", algorithm="two-pass", target="avx2", schedule=bad)
    with pytest.raises(UsageError, match="row-kernel knobs"):
        softgen.compile("sinkhorn", target="avx2", schedule={"exp": EXP_ALT})


def test_tvm_rejects_the_c_knobs():
    from softgen.backends.tvm import generate
    p = passes.apply_algorithm(build_program("softmax"), "two-pass")
    with pytest.raises(UsageError, match="C-backend knob"):
        generate(p, get_target("avx2"), Schedule(exp=EXP_ALT), "k", op="softmax", algorithm="two-pass",
                 params={})


def test_target_files_declare_streaming_with_its_alignment():
    assert get_target("avx2").stream_align == 32 and get_target("avx512").stream_align == 64
    assert not get_target("scalar").streams and not get_target("neon").streams
    text = (data_dir("targets") / "avx2.toml").read_text()
    with pytest.raises(UsageError, match="stream_align must be 4 \\* lanes"):
        _load("avx2", text.replace("stream_align = 32", "stream_align = 16"))
    with pytest.raises(UsageError, match="need \\[isa\\] STREAM and FENCE"):
        _load("avx2", text.replace('FENCE = "_mm_sfence()"\n', ""))


# -- correctness -----------------------------------------------------------------------------------

def test_knobbed_kernels_on_adversarial_rows(knobbed, rng):
    k = knobbed
    lanes = k.target.lanes
    for n in sorted({1, 2, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 4 * lanes + 5, 8 * lanes + 7, 1000}):
        if n < 1:
            continue
        x = (rng.standard_normal((3, n + 3)) * 8).astype(np.float32)
        for off in (0, 1, 3):                       # unaligned row starts, strided rows
            xs = x[:, off:off + n]
            check(k, xs, run(k, xs), f"n={n} offset {off}")
            out = np.full((3, n + 9), 7.0, np.float32)
            got = run(k, xs, out=out[:, off + 1:off + 1 + n])
            check(k, xs, got, f"n={n} out offset {off + 1}")
            assert (out[:, :off + 1] == 7.0).all() and (out[:, off + 1 + n:] == 7.0).all(), "wrote outside y"
            inplace = xs.copy()
            check(k, xs, run(k, inplace, out=inplace), f"n={n} in place")
    for n in (lanes + 3, 200):
        rows = contract_rows(n, rng)
        x = np.stack(list(rows.values()))
        check(k, x, run(k, x), f"n={n}", row_names=list(rows))


@pytest.mark.parametrize("op", ["log_softmax", "softplus_l1"])
def test_exp_variant_in_other_ops(op, rng):
    """sg_exp (softplus: e^-|z| through exp, not exp_nonpos) and log_softmax with the variant."""
    k = softgen.compile(op, target="host", algorithm="direct-reload" if op == "softplus_l1" else "two-pass",
                        schedule={"exp": EXP_ALT})
    assert "sg_xpoly" in _src(k)
    x = (rng.standard_normal((4, 300)) * 6).astype(np.float32)
    check(k, x, run(k, x))


def test_exp_variant_on_neon_under_qemu(rng):
    t = get_target("neon")
    if host_arch() != "aarch64":
        skip_unless_emulated(t)
    k = softgen.compile("softmax", algorithm="three-pass-reload", target="neon", schedule={"exp": EXP_ALT, "prefetch": 32})
    x = (rng.standard_normal((3, 37)) * 8).astype(np.float32)
    check(k, x, run(k, x), "neon")


# -- the model and the tuner -----------------------------------------------------------------------

def test_the_model_streams_beyond_the_last_level_cache():
    caches = machine.Caches(L1d=32 << 10, L2=1 << 20, L3=32 << 20, source="test")
    plans = {a: passes.plan(passes.apply_algorithm(build_program("softmax"), a)) for a in ALGS}
    base = Schedule().as_dict()
    for t, streams in (("avx2", True), ("avx512", True), ("scalar", False)):
        table = costmodel.model_table(plans, get_target(t), caches, base)
        last = table.entries[-1]
        assert last.n_max is None and bool(last.schedule.get("stream")) == streams
        assert ("non-temporal" in last.why) == streams
        assert all("stream" not in e.schedule for e in table.entries[:-1])
        if streams:   # the DRAM entry never merges with an in-cache one of the same algorithm
            assert last.n_min == (32 << 20) // 8 + 1


def test_tuner_offers_the_knobs_per_level():
    be = get_backend("c")
    base = Schedule()
    dram = tune_mod.level_schedules(be, get_target("avx2"), "DRAM", base)
    assert {(s.stream, s.prefetch, s.lazymax) for s in dram} == \
        {(st, pf, lz) for st in (False, True) for pf in (0, 1024) for lz in (False, True)} - {(False, 0, False)}
    assert all(s.exp == "" for s in dram)
    # L1d: lazymax x the exp variants (lazymax there 1.10-1.19x at 1K-8K, CBackend.tuning_knob_levels)
    l1 = tune_mod.level_schedules(be, get_target("avx2"), "L1d", base)
    assert {(s.exp, s.lazymax) for s in l1} == \
        {(e, lz) for e in ("",) + tuple(v for v in EXP_VARIANTS if v != EXP_DEFAULT) for lz in (False, True)} - {("", False)}
    assert all(s.rows == 1 and not s.stream and not s.prefetch for s in l1)
    assert {s.prefetch for s in tune_mod.level_schedules(be, get_target("scalar"), "DRAM", base)
            if not s.lazymax} == {1024}
    assert not any(s.stream for s in tune_mod.level_schedules(be, get_target("scalar"), "DRAM", base))
    l2 = [s for s in tune_mod.level_schedules(be, get_target("avx2"), "L2", base) if not s.lazymax]
    assert [s.exp for s in l2] == [v for v in EXP_VARIANTS if v != EXP_DEFAULT]
    # avx512's default exps of x - max x are its shifted_exp (t32): p5 is a candidate of its own there
    l2 = [s for s in tune_mod.level_schedules(be, get_target("avx512"), "L2", base) if not s.lazymax]
    assert [s.exp for s in l2] == list(EXP_VARIANTS) and len(set(l2)) == len(l2)
    assert all(not s.knobs().keys() - {"exp"} for s in tune_mod.schedules(be, get_target("avx2")))
    assert tune_mod.label("two-pass", {"unroll": 4, "accumulators": 2, "stream": True, "prefetch": 256}) == "2p u4a2 nt pf256"


def test_each_exp_variant_costs_its_target_hint():
    """The model prices an exp by the variant it runs as ([cost.exp]; Target.exp_variant): on avx512
    the default (t32 for x - max x) below p5 and equal to t32 everywhere, on avx2 t32 (a gather)
    beyond the tuner's KNOB_PRUNE_RATIO, so the tuner times p5/p6 there and t32 where it is cheap."""
    pl = passes.plan(passes.apply_algorithm(build_program("softmax"), "three-pass-reload"))

    def cost(t, exp):
        return costmodel.cycles_per_element(pl, get_target(t), "L2", exp)
    assert cost("avx512", "") == cost("avx512", "t32") < cost("avx512", EXP_DEFAULT) < cost("avx512", "p6c2")
    assert cost("avx2", "") == cost("avx2", EXP_DEFAULT) < cost("avx2", "p6c2") < cost("avx2", "t32")
    assert get_target("avx512").exp_variant("", shifted=True) == "t32"
    assert get_target("avx512").exp_variant("", shifted=False) == get_target("avx2").exp_variant("", True) == EXP_DEFAULT
    be, base = get_backend("c"), Schedule()
    for t, kept in (("avx2", {"", "p6c2"}), ("avx512", {"", *EXP_VARIANTS})):
        tt = get_target(t)
        best = costmodel.cycles_per_element(pl, tt, "L2")
        extra = tune_mod.level_schedules(be, tt, "L2", base)
        assert {s.exp for s in tune_mod.priced(pl, tt, "L2", extra, best)} == kept


def test_schedule_exp_p5_is_choosable_where_the_target_defaults_to_a_table():
    """exp="p5c2" on avx512 is p5 for the exps of x - max x too (its default there is t32); on
    avx2 (no shifted_exp) it is the default itself, the same kernel."""
    def src(t, **kw):
        return softgen.compile("softmax", algorithm="three-pass-reload", target=t,
                               schedule={"split": 0, **kw}).source
    assert src("avx2", exp=EXP_DEFAULT) == src("avx2")
    default, p5, t32 = src("avx512"), src("avx512", exp=EXP_DEFAULT), src("avx512", exp="t32")
    assert "sg_tpoly" in default and "sg_tpoly" in t32 and "sg_tpoly" not in p5
    assert "exp variant p5c2" in p5 and "exp variant" not in default
    with pytest.raises(softgen.UsageError, match="exp must be one of"):
        softgen.compile("softmax", target="avx512", schedule={"exp": "p5"})


def test_tune_records_the_knobs_and_auto_builds_them(tmp_path, monkeypatch, rng):
    """Tiny caches so that 4096 is a DRAM size: the tuner times stream/prefetch there and exp
    variants in cache; a record with knobs becomes a dispatcher variant with its own symbol."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L1d=1K,L2=4K,L3=16K")
    monkeypatch.setattr(tune_mod, "PRUNE_RATIO", 1.0)        # fewer builds: the model's best algorithm only
    t = get_target("avx2") if get_target("avx2").runnable else get_target("host")
    res = softgen.tune("softmax", target=t.name, sizes=[64, 4096], budget_s=2, keep=1, progress=False)
    timed = [[name for name, _ in c.timed] for c in res.classes]
    assert any(EXP_ALT in name for name in timed[0]), timed[0]
    assert any(" pf" in name for name in timed[1]) and (not t.streams or any(" nt" in n for n in timed[1]))
    assert all(r.schedule == Schedule(**r.schedule).as_dict() for r in res.records)   # knobs only when set
    # a record with knobs (whatever won) becomes a dispatcher variant of that schedule
    rec = res.records[1]
    tunedb.record("softmax", {}, t.name, "c", n=(rec.n_min, rec.n_max), rows=(1, tune_mod.ROWS_MAX),
                  algorithm="two-pass", schedule={**Schedule().as_dict(), "prefetch": 256,
                                                  **({"stream": True} if t.streams else {})},
                  threads=1, ns_per_element=1.0, noise=0.0, repetitions=5, runners_up={})
    k = softgen.compile("softmax", target=t.name)
    # (a record of single rows: the table of calls of few rows; batches, unrecorded, the model's)
    assert k.tuned and k.dispatch.pick(5000, 1).schedule.get("prefetch") == 256
    assert any(v.schedule.prefetch == 256 for v in k.variants) and len({v.name for v in k.variants}) == len(k.variants)
    for n in (1, 63, 64, 65, 4096, 5000):
        for rows in (2, 4):
            x = (rng.standard_normal((rows, n)) * 5).astype(np.float32)
            check(k, x, k(x), f"n={n} rows={rows}")


# -- GEMM tiles of matrix ops ----------------------------------------------------------------------

def test_gemm_candidates_stay_within_the_register_budget():
    for name in ("avx2", "avx512", "scalar"):
        t = get_target(name)
        cands = tune_mod.gemm_candidates(t)
        assert cands[0] == t.gemm and len(cands) == len(set(cands)) >= 5
        for g in cands:
            assert g.mr * g.nv + g.nv + 1 <= t.vector_registers and g.nc % g.nr(t.lanes) == 0
        assert {g.mr for g in cands} >= {t.gemm.mr - 1, t.gemm.mr}


def test_a_given_gemm_schedule_is_built_and_correct(rng):
    k = softgen.compile("gaussian_kernel", target="host", schedule={"mr": 3, "kc": 64})
    t = k.target
    assert k.gemm.mr == 3 and k.gemm.kc == 64 and not k.tuned and k.name.endswith(f"_{k.gemm.tag(t.lanes)}")
    assert f"gemm {3}x{k.gemm.nr(t.lanes)} tile, mr=3" in k.source and "(not the target's default)" in k.source
    assert "# gemm: mr=3" in k.explain() and k.explain(as_json=True)["gemm"]["why"] == "given"
    a, b = (rng.standard_normal((n, 70)).astype(np.float32) for n in (37, 29))   # d > kc: two k blocks
    check_gauss(k, a, b, k(a, b))
    same = softgen.compile("gaussian_kernel", target="host", schedule=t.gemm.as_dict())
    assert same.gemm is None and same.source == softgen.compile("gaussian_kernel", target="host").source
    with pytest.raises(UsageError, match="sinkhorn has no GEMM"):
        softgen.compile("sinkhorn", target="host", schedule={"mr": 3})
    with pytest.raises(UsageError, match="vector registers"):
        softgen.compile("gaussian_kernel", target="avx2", schedule={"mr": 9})


def test_tune_gemm_records_and_compile_uses_it(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    t = get_target("host")
    two = tune_mod.gemm_candidates(t)[:2]
    monkeypatch.setattr(tune_mod, "gemm_candidates", lambda _t: two)
    res = softgen.tune("gaussian_kernel", target=t.name, shapes="40x48x24", budget_s=2, progress=False)
    (rec,) = res.records
    assert rec.algorithm == "direct" and set(rec.schedule) == {"mr", "nv", "kc", "nc", "ku"}
    assert len(rec.runners_up) == 1 and "gemm" in res.report()
    k = softgen.compile("gaussian_kernel", target=t.name)
    assert k.tuned and k.gemm.as_dict() == rec.schedule and k.gemm_why.startswith("measured: ")
    assert "# gemm: " in k.explain() and k.explain(as_json=True)["tuned"] is True
    a, b = rng.standard_normal((33, 20), dtype=np.float32), rng.standard_normal((17, 20), dtype=np.float32)
    check_gauss(k, a, b, k(a, b))
    with pytest.raises(UsageError, match="takes shapes"):
        softgen.tune("gaussian_kernel", target=t.name, sizes=[64], progress=False)
    with pytest.raises(UsageError, match="bad shape"):
        softgen.tune("gaussian_kernel", target=t.name, shapes="12x3", progress=False)
    with pytest.raises(UsageError, match="no GEMM to tune"):
        softgen.tune("sinkhorn", target=t.name, shapes="8x8", progress=False)


def test_records_with_knobs_a_target_lacks_are_not_used():
    from types import SimpleNamespace

    from softgen.autotable import _tuned_entries
    rec = SimpleNamespace(algorithm="two-pass", n_min=1, n_max=100, rows_min=1, timestamp=0.0,
                          schedule={**Schedule().as_dict(), "stream": True})
    p = build_program("softmax")
    assert _tuned_entries([rec], p, get_target("avx2")) == [rec]
    assert _tuned_entries([rec], p, get_target("scalar")) == []       # would not build there


def test_stream_in_the_split_form(rng):
    """Rows split into chunks (schedule split/chunk): each chunk's task streams its part of y and
    fences its own stores (a pool thread's non-temporal stores are ordered by that thread)."""
    k = softgen.compile("softmax", algorithm="two-pass", target="host",
                        schedule={"stream": get_target("host").streams, "split": 1000, "chunk": 4096})
    if k.target.streams:
        task = k.source[k.source.index("__row_split_s1("):]
        task = task[:task.index("\n}\n")]
        assert "V_STREAM(y" in task and "V_FENCE();" in task
    for n in (999, 1000, 4097, 9000):
        x = (rng.standard_normal((2, n + 2)) * 5).astype(np.float32)[:, 1:n + 1]
        check(k, x, k(x), f"n={n}")
        xi = x.copy()
        check(k, x, k(xi, out=xi), f"n={n} in place")
