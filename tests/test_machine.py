"""softgen.machine: cache sizes (sysfs, sysconf, override, fallback) and the machine identity
that tuning records are keyed by."""
from __future__ import annotations

import pytest

from softgen import machine
from softgen.errors import UsageError


def _fake_sysfs(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return root


@pytest.mark.parametrize("text, n", [("32K", 32 << 10), ("1024K", 1 << 20), ("1M", 1 << 20),
                                     ("32768", 32768), ("48 KiB", 48 << 10), ("2G", 2 << 30)])
def test_parse_size(text, n):
    assert machine.parse_size(text) == n


@pytest.mark.parametrize("text", ["", "big", "-1K", "1T"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        machine.parse_size(text)


def test_caches_from_sysfs_skip_instruction_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_SIZES", raising=False)
    root = _fake_sysfs(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                                  (3, "Unified", "36864K")])
    c = machine.caches(root)
    assert c.sizes() == {"L1d": 48 << 10, "L2": 2 << 20, "L3": 36 << 20} and c.source == "sysfs"
    assert [c.level_of(n) for n in (1, 48 << 10, (48 << 10) + 1, 36 << 20, (36 << 20) + 1)] == \
        ["L1d", "L1d", "L2", "L3", "DRAM"]


def test_missing_levels_fall_back_and_say_so(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_SIZES", raising=False)
    c = machine.caches(_fake_sysfs(tmp_path, [(1, "Data", "32K"), (2, "Unified", "512K")]))
    assert c.L3 == machine.FALLBACK["L3"] and c.source == "sysfs+fallback"


def test_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L2=1M, L3=8M")
    c = machine.caches(_fake_sysfs(tmp_path, [(1, "Data", "48K"), (2, "Unified", "2M"), (3, "Unified", "32M")]))
    assert c.sizes() == {"L1d": 48 << 10, "L2": 1 << 20, "L3": 8 << 20} and c.source == "SOFTGEN_CACHE_SIZES"
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L4=1M")
    with pytest.raises(UsageError, match="unknown level 'L4'"):
        machine.caches(tmp_path)


def test_this_machine():
    c = machine.caches()
    assert 0 < c.L1d <= c.L2 <= c.L3
    ident = machine.identity()
    assert set(ident) >= {"arch", "model_name", "features", "caches", "cores"} and ident["cores"] >= 1
    assert machine.fingerprint() == machine.fingerprint(dict(ident))
    other = {**ident, "caches": {**ident["caches"], "L3": ident["caches"]["L3"] // 2}}
    assert machine.fingerprint(other) != machine.fingerprint()   # same name, other caches: another machine
    assert machine.fingerprint() in machine.describe()


def test_the_fingerprint_follows_the_cache_sizes_within_a_process(monkeypatch):
    """Records are keyed by the caches in effect now, not by those of the process's first call (a
    test that faked SOFTGEN_CACHE_SIZES first once made later records look like another machine's)."""
    monkeypatch.delenv("SOFTGEN_CACHE_SIZES", raising=False)
    real = machine.fingerprint()
    monkeypatch.setenv("SOFTGEN_CACHE_SIZES", "L1d=4K,L2=16K,L3=64K")
    fake = machine.fingerprint()
    assert fake != real and machine.identity()["caches"]["L3"] == 64 << 10
    monkeypatch.delenv("SOFTGEN_CACHE_SIZES")
    assert machine.fingerprint() == real
