"""Targets are data: everything softgen knows per target comes from targets/*.toml, and a new
target (here an x86 ISA variant) is one TOML file in a directory of $SOFTGEN_TARGETS_PATH."""
from __future__ import annotations

import re

import numpy as np
import pytest

import softgen
from softgen.schedule import GemmSchedule, Schedule
from softgen.targets import ENV_PATH, all_targets, get_target, host_supports

AVX2 = get_target("avx2")


def _variant(name: str, *, unroll: int = 4, host_rank: int = 150, text: str | None = None) -> str:
    """avx2.toml as target ``name`` with another default unroll and host rank."""
    src = text if text is not None else _shipped("avx2")
    src = src.replace('name = "avx2"', f'name = "{name}"', 1)
    src = re.sub(r"(?m)^host_rank = \d+$", f"host_rank = {host_rank}", src)
    src = re.sub(r"(?m)^unroll = \d+$", f"unroll = {unroll}", src)
    return src


def _shipped(name: str) -> str:
    from softgen._data import data_dir
    return (data_dir("targets") / f"{name}.toml").read_text()


@pytest.fixture
def extra_targets(tmp_path, monkeypatch):
    """Write TOML files into a fresh directory on $SOFTGEN_TARGETS_PATH; the target list is
    reloaded now and again after the test."""
    def add(files: dict[str, str]) -> dict:
        for stem, text in files.items():
            (tmp_path / f"{stem}.toml").write_text(text)
        monkeypatch.setenv(ENV_PATH, str(tmp_path))
        all_targets.cache_clear()
        return all_targets()
    yield add
    monkeypatch.delenv(ENV_PATH, raising=False)
    all_targets.cache_clear()


def test_shipped_targets_carry_their_tuning_data():
    for t in all_targets().values():
        assert isinstance(t.schedule, Schedule) and isinstance(t.gemm, GemmSchedule)
        assert t.schedule.validate(t.lanes) == t.schedule and t.gemm.validate(t) == t.gemm
        assert t.auto_algorithms and set(t.auto_algorithms) <= set(softgen.ALGORITHMS)
        assert t.vector_registers >= 1 and t.host_rank >= 0
    ranks = [t.host_rank for t in all_targets().values()]
    assert ranks == sorted(ranks, reverse=True)   # listed in host preference order
    assert list(all_targets()) == ["avx512", "avx2", "neon", "scalar"]


def test_an_x86_variant_is_one_toml_file(extra_targets, rng, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L1d=32K,L2=512K,L3=32M")
    found = extra_targets({"avx2u8": _variant("avx2u8", unroll=8)})
    t = found["avx2u8"]
    assert t.schedule == Schedule(unroll=8, accumulators=2, block=2048)
    assert t.lanes == 8 and t.gemm == AVX2.gemm and t.auto_algorithms == AVX2.auto_algorithms
    assert "avx2u8" in [d["name"] for d in softgen.targets()]
    k = softgen.compile("softmax", target="avx2u8")
    # The default schedule came from the TOML: 8 vectors of 8 lanes per main-loop iteration.
    # auto: the [cost] hints (copied from avx2.toml) make it a dispatcher, as on avx2
    assert k.target.name == "avx2u8" and k.algorithm == "auto"
    got = [(v.algorithm, v.schedule.lazymax) for v in k.variants]
    assert got[0] == ("three-pass-reload", False) and got[-1] == ("two-pass", False) and ("three-pass-reload", True) in got
    assert k.schedule == t.schedule and k.name.endswith("__avx2u8_u64_acc2")
    assert "unroll=8 accumulators=2 block=2048" in k.source
    if not host_supports(t):
        pytest.skip("this CPU lacks AVX2/FMA: avx2u8 builds but cannot run")
    assert k.runnable
    x = (rng.standard_normal((5, 1000)) * 4).astype(np.float32)
    y = k(x)
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=2e-6, atol=1e-9)
    # Same answer as a shipped avx2 kernel, whose default schedule differs (one algorithm: the
    # suite's kernel of it is cached; a second dispatcher would be built for this line only).
    np.testing.assert_allclose(y, softgen.compile("softmax", target="avx2", algorithm="two-pass")(x),
                               rtol=2e-6, atol=1e-9)


def test_host_rank_alone_makes_a_variant_the_host(extra_targets):
    found = extra_targets({"avx2top": _variant("avx2top", unroll=2, host_rank=10_000)})
    if not host_supports(found["avx2top"]):
        pytest.skip("this CPU lacks AVX2/FMA")
    assert list(found)[0] == "avx2top" and softgen.host_target() == "avx2top"
    k = softgen.compile("softmax", target="host")
    assert k.target.name == "avx2top" and k.schedule.unroll == 2


def _no_cost(text: str) -> str:
    return re.sub(r"(?ms)^\[cost\].*?^DRAM = \S+\n", "", text)


def test_a_variant_can_prefer_another_auto_algorithm(extra_targets):
    # auto_algorithms are the candidates of the cost model: a target listing only online gets it
    only = re.sub(r"(?m)^auto_algorithms = .*$", 'auto_algorithms = ["online", "direct-reload", "direct"]',
                  _variant("avx2on"))
    # without [cost] hints there is no model: the first applicable entry, as before issue 13
    first = _no_cost(_variant("avx2nc").replace('auto_algorithms = ["two-pass", "three-pass-reload", "online"',
                                                'auto_algorithms = ["online", "two-pass", "three-pass-reload"', 1))
    extra_targets({"avx2on": only, "avx2nc": first, "avx2nc2": _no_cost(_variant("avx2nc2"))})
    k = softgen.compile("softmax", target="avx2on")
    # online at every level (beyond the LLC with non-temporal stores: a variant of its own)
    assert {e.algorithm for e in k.dispatch.entries} == {"online"} and k.dispatch.entries[0].why.startswith("model: ")
    k = softgen.compile("softmax", target="avx2nc")
    assert k.algorithm == "online" and k.dispatch is None and not get_target("avx2nc").cost
    assert softgen.compile("softmax", target="avx2nc2").algorithm == "two-pass"


BAD = [
    (lambda s: re.sub(r"(?m)^host_rank = .*\n", "", s), r"bad\.toml lacks key 'host_rank'"),
    (lambda s: re.sub(r"(?m)^host_rank = .*$", 'host_rank = "high"', s), r"bad\.toml: key 'host_rank'"),
    (lambda s: re.sub(r"(?m)^vector_registers = .*$", "vector_registers = 0", s),
     r"bad\.toml: key 'vector_registers'"),
    (lambda s: s.replace('"two-pass", "three-pass-reload"', '"two-pass", "fast"', 1),
     r"bad\.toml: key 'auto_algorithms'.*'fast'"),
    (lambda s: re.sub(r"(?m)^ipc = .*$", "ipc = 0", s), r"bad\.toml: key 'cost\.ipc' must be a positive"),
    (lambda s: re.sub(r"(?m)^DRAM = .*\n", "", s), r"bad\.toml: table \[cost\.bandwidth\] needs exactly"),
    (lambda s: s.replace("\nexp = ", "\nexpo = 3\nexp = ", 1), r"bad\.toml: table \[cost\.instructions\].*'expo'"),
    (lambda s: re.sub(r"(?m)^exp = .*$", 'exp = "fast"', s), r"bad\.toml: key 'cost\.instructions\.exp'"),
    (lambda s: s.replace("\nt32 = ", "\nt64 = ", 1), r"bad\.toml: table \[cost\.exp\] maps exp variants"),
    (lambda s: s.replace("\nt32 = 64", "\nt32 = 0", 1), r"bad\.toml: key 'cost\.exp\.t32' must be a positive"),
    (lambda s: re.sub(r"(?m)^unroll = .*$", "unroll = 0", s), r"bad\.toml: key 'schedule\.unroll'"),
    (lambda s: re.sub(r"(?m)^accumulators = .*$", "accumulators = 3", s), r"bad\.toml: table \[schedule\].*divide"),
    (lambda s: re.sub(r"(?m)^ku = .*$", "ku = 1\nkv = 2", s), r"bad\.toml: table \[gemm\].*unknown \['kv'\]"),
    (lambda s: re.sub(r"(?m)^mr = .*$", "mr = 8", s), r"bad\.toml: table \[gemm\].*vector registers"),
    (lambda s: s.replace("[schedule]", "[schedul]", 1), r"bad\.toml lacks key 'schedule'"),
]


@pytest.mark.parametrize("edit,message", BAD)
def test_a_bad_target_file_names_the_file_and_the_key(extra_targets, edit, message):
    with pytest.raises(softgen.UsageError, match=message):
        extra_targets({"bad": edit(_variant("bad"))})


def test_a_target_defined_twice_is_an_error(extra_targets):
    with pytest.raises(softgen.UsageError, match="'avx2' is defined twice"):
        extra_targets({"avx2": _shipped("avx2")})


def test_host_is_not_a_target_name(extra_targets):
    with pytest.raises(softgen.UsageError, match="not a target name"):
        extra_targets({"host": _variant("host")})
