"""The tuning database (softgen/tunedb.py): round trip, size classes, machine and version keys,
concurrent writers, a writer killed mid-transaction, a damaged file, JSON-lines export/import."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from softgen import machine, tunedb
from softgen.errors import UsageError
from softgen.tunedb import TuningDB, TuningDBWarning

SCHED = {"unroll": 4, "accumulators": 2}


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "cache"))
    d = tunedb.default()
    assert d.path == tmp_path / "cache" / "tuning.sqlite"
    return d


def _rec(n=(1024, 65535), rows=(1, 1), algorithm="three-pass-reload", ns=0.44, threads=1, **kw):
    return tunedb.record("softmax", {}, "scalar", "c", n=n, rows=rows, algorithm=algorithm, schedule=SCHED,
                         threads=threads, ns_per_element=ns, noise=0.02, repetitions=30,
                         runners_up={"two-pass": 1.4}, **kw)


def test_round_trip(db):
    r = _rec()
    assert r.fingerprint == machine.fingerprint() and r.machine == machine.identity()
    assert r.source_version == tunedb.source_version() and r.compiler and r.compiler_version
    got = tunedb.lookup("softmax", {}, "scalar", "c", 4096, 1)
    assert got == r
    assert got.schedule == SCHED and got.runners_up == {"two-pass": 1.4} and got.algorithm == "three-pass-reload"
    assert tunedb.records() == [r]
    assert oct(os.stat(db.path).st_mode & 0o777) == "0o600"
    assert sqlite3.connect(db.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_parameters_are_keyed_canonically(db):
    _rec()
    for params in ({}, {"temperature": 1}, {"scale": 1.0}):
        assert tunedb.lookup("softmax", params, "scalar", "c", 4096, 1) is not None
    assert tunedb.lookup("softmax", {"temperature": 2.0}, "scalar", "c", 4096, 1) is None
    assert tunedb.lookup("log_softmax", {}, "scalar", "c", 4096, 1) is None
    assert tunedb.lookup("softmax", {}, "scalar", "tvm", 4096, 1) is None


def test_lookup_by_size_class(db):
    small = _rec(n=(1, 65535), algorithm="three-pass-reload")
    big = _rec(n=(65536, 1 << 26), algorithm="two-pass", ns=0.83)
    batch = _rec(n=(1, 65535), rows=(2, 1 << 20), algorithm="online")
    inner = _rec(n=(256, 1023), algorithm="three-pass-recompute")   # inside `small`: more specific
    look = lambda n, rows=1: tunedb.lookup("softmax", None, "scalar", "c", n, rows)  # noqa: E731
    assert look(1) == small and look(65535) == small and look(1024) == small
    assert look(256) == inner and look(1023) == inner
    assert look(65536) == big and look(1 << 26) == big
    assert look(512, 4096) == batch and look(np.int64(512), np.int32(4096)) == batch
    assert look((1 << 26) + 1) is None and look(65536, 2) is None
    again = _rec(n=(1, 65535), algorithm="online", ns=0.40)     # same key and class: replaces
    assert look(1) == again and len(tunedb.records()) == 4


def test_records_of_another_machine_or_version_are_never_used(db):
    mine = _rec()
    other = dataclasses.replace(mine, fingerprint="0123456789abcdef", machine={**mine.machine, "cores": 64})
    stale = dataclasses.replace(mine, source_version="0000000000000000", n_min=1, n_max=1023)
    old = dataclasses.replace(mine, softgen_version="0.0.1", n_min=1, n_max=1023)
    for r in (other, stale, old):
        db.add(r)
    assert tunedb.lookup("softmax", {}, "scalar", "c", 4096, 1) == mine
    assert tunedb.lookup("softmax", {}, "scalar", "c", 100, 1) is None   # only stale ones cover 100
    db.delete_where()
    db.add(other)
    assert tunedb.lookup("softmax", {}, "scalar", "c", 4096, 1) is None
    assert tunedb.records() == [] and tunedb.records(machine="any") == [other]
    assert tunedb.records(machine="0123456789abcdef") == [other]


def test_prune_removes_stale_versions_and_optionally_other_machines(db):
    mine = _rec()
    db.add(dataclasses.replace(mine, source_version="0000000000000000"))
    db.add(dataclasses.replace(mine, fingerprint="0123456789abcdef"))
    assert len(tunedb.records(machine="any")) == 3
    assert tunedb.records(stale=True) != [] and tunedb.records(stale=False) == [mine]
    assert tunedb.prune() == 1
    assert len(tunedb.records(machine="any")) == 2
    assert tunedb.prune(other_machines=True) == 1
    assert tunedb.records(machine="any") == [mine]
    assert tunedb.clear() == 1 and tunedb.records(machine="any") == []


def test_bad_records_are_usage_errors(db):
    with pytest.raises(UsageError, match="unknown op"):
        tunedb.record("nope", {}, "scalar", "c", n=1, rows=1, algorithm="a", schedule={}, ns_per_element=1,
                      noise=0, repetitions=1)
    with pytest.raises(UsageError, match="n must be"):
        _rec(n=(10, 5))
    with pytest.raises(UsageError, match="ns_per_element"):
        _rec(ns=float("nan"))
    with pytest.raises(UsageError, match="unknown target"):
        tunedb.lookup("softmax", {}, "nope", "c", 1, 1)
    with pytest.raises(UsageError, match="n must be an integer >= 1"):
        tunedb.lookup("softmax", {}, "scalar", "c", 0, 1)
    with pytest.raises(UsageError, match="rows must be an integer >= 1"):
        tunedb.lookup("softmax", {}, "scalar", "c", 1, 2.5)
    with pytest.raises(UsageError, match="threads must be"):
        _rec(threads=0)
    assert tunedb.records(machine="any") == []


# -- concurrency and crashes --------------------------------------------------------------------
def _writer(cache: str, k: int, count: int) -> None:
    os.environ["SOFTGEN_CACHE_DIR"] = cache
    for i in range(count):
        n = 1 + 1000 * (k * count + i)
        _rec(n=(n, n + 999))


def test_concurrent_writers(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", cache)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(cache, k, 50)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    recs = tunedb.records()
    assert len(recs) == 200 and len({r.n_min for r in recs}) == 200
    assert tunedb.lookup("softmax", {}, "scalar", "c", 1 + 1000 * 199 + 5, 1).n_min == 1 + 1000 * 199


KILLED = """
import os, sys, sqlite3
from softgen import tunedb
for i in range(10):
    tunedb.record("softmax", {}, "scalar", "c", n=(1 + 100 * i, 100 + 100 * i), rows=1, algorithm="online",
                  schedule={}, ns_per_element=1.0, noise=0.01, repetitions=5)
rec = tunedb.records()[0]
con = sqlite3.connect(tunedb.default().path, isolation_level=None)
con.execute("BEGIN IMMEDIATE")
for i in range(2000):   # a big transaction, never committed
    con.execute("INSERT INTO records (" + ", ".join(tunedb.COLUMNS) + ") SELECT " + ", ".join(tunedb.COLUMNS)
                .replace("n_min", str(10**6 + i)).replace("n_max", str(10**6 + i)) + " FROM records LIMIT 1")
print("inside", flush=True)
sys.stdin.read()
"""


def test_a_writer_killed_mid_transaction_leaves_a_readable_database(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "cache"))
    child = subprocess.Popen([sys.executable, "-c", KILLED], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=os.environ.copy())
    try:
        assert child.stdout.readline().strip() == "inside"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(60)
    assert child.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # not "damaged": the rolled-back transaction is simply gone
        assert len(tunedb.records()) == 10
        _rec()   # and it can be written (the dead writer's lock is gone)
    assert len(tunedb.records()) == 11


@pytest.mark.parametrize("damage", ["garbage", "truncated-header"])
def test_a_damaged_database_is_moved_aside_and_recreated(db, damage):
    _rec()
    path = db.path
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite database\n" * 100)
    else:
        path.write_bytes(path.read_bytes()[:50])
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    TuningDB._checked.clear()   # as a new process would find it
    with pytest.warns(TuningDBWarning, match="was damaged"):
        assert tunedb.records() == []
    aside = list(path.parent.glob("tuning.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].name.startswith("tuning.sqlite.corrupt-")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = _rec()
        assert tunedb.records() == [r]


def test_damage_found_after_opening_is_recovered_too(db):
    _rec()
    TuningDB._checked.add(db.path)          # this process has checked it already...
    db.path.write_bytes(b"\0" * 4096)       # ...and then it is damaged
    for side in ("-wal", "-shm"):
        db.path.with_name(db.path.name + side).unlink(missing_ok=True)
    with pytest.warns(TuningDBWarning):
        assert tunedb.records() == []


def test_an_unusable_directory_is_a_softgen_error(tmp_path):
    with pytest.raises(tunedb.TuningDBError, match="cannot use the tuning database"):
        TuningDB(tmp_path / "missing" / "tuning.sqlite").select()


# -- export / import ----------------------------------------------------------------------------
def test_export_import_round_trip(db, tmp_path):
    mine = [_rec(n=(1, 999)), _rec(n=(1000, 1999), algorithm="two-pass")]
    other = dataclasses.replace(mine[0], fingerprint="0123456789abcdef", machine={"arch": "aarch64"})
    db.add(other)
    out = tmp_path / "records.jsonl"
    assert tunedb.export_jsonl(out) == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(set(json.loads(ln)) == set(tunedb.COLUMNS) for ln in lines)
    assert tunedb.clear() == 3
    assert tunedb.import_jsonl(out) == 3
    key = lambda r: (r.fingerprint, r.n_min)  # noqa: E731
    assert sorted(tunedb.records(machine="any"), key=key) == sorted([*mine, other], key=key)
    assert tunedb.lookup("softmax", {}, "scalar", "c", 5, 1) == mine[0]     # never `other`
    assert tunedb.import_jsonl(out) == 3 and len(tunedb.records(machine="any")) == 3  # same keys: replaced
    assert tunedb.export_jsonl(tmp_path / "one.jsonl", machine="this", op="softmax") == 2


@pytest.mark.parametrize("line, message", [
    ("{not json", r":2: not JSON"),
    ("[1, 2]", r":2: a record is a JSON object"),
    ('{"op": "softmax"}', r":2: missing field\(s\) params"),
    ("BAD_NS", r":2: tuning record: ns_per_element must be a finite number > 0"),
    ("EXTRA", r":2: unknown field\(s\) colour"),
])
def test_import_errors_name_the_line(db, tmp_path, line, message):
    good = _rec().as_json()
    if line == "BAD_NS":
        line = json.dumps({**good, "ns_per_element": -1})
    elif line == "EXTRA":
        line = json.dumps({**good, "colour": "red"})
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({**good, "n_min": 5000, "n_max": 6000}) + "\n" + line + "\n")
    with pytest.raises(UsageError, match=rf"{f}{message}"):
        tunedb.import_jsonl(f)
    assert len(tunedb.records()) == 1     # all or nothing
    with pytest.raises(UsageError, match="no such file"):
        tunedb.import_jsonl(tmp_path / "missing.jsonl")


def test_table_lists_the_usable_records_by_size_class(db):
    big = _rec(n=(65536, 1 << 26), algorithm="two-pass")
    small = _rec(n=(1, 65535))
    db.add(dataclasses.replace(small, fingerprint="0123456789abcdef"))
    db.add(dataclasses.replace(small, source_version="0000000000000000", n_max=7))
    _rec(n=(1, 65535), algorithm="online")   # same key as `small`: replaces it
    assert [r.algorithm for r in tunedb.table("softmax", {}, "scalar", "c")] == ["online", big.algorithm]
    assert tunedb.table("softmax", {"temperature": 3}, "scalar", "c") == []


LOOP = """
from softgen import tunedb
i = 0
while True:
    tunedb.record("softmax", {}, "scalar", "c", n=(1 + 10 * i, 10 + 10 * i), rows=1, algorithm="online",
                  schedule={"unroll": i % 4 + 1}, ns_per_element=1.0, noise=0.01, repetitions=5)
    print(i, flush=True)
    i += 1
"""


def test_a_writer_killed_at_a_random_moment_loses_nothing_committed(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "cache"))
    for delay in (0.7, 1.1, 1.6):
        child = subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, text=True,
                                 env=os.environ.copy())
        committed = -1
        try:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline or committed < 0:
                committed = int(child.stdout.readline())
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(60)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            have = {r.n_min for r in tunedb.records()}
        assert {1 + 10 * i for i in range(committed + 1)} <= have


V1_TABLE = """CREATE TABLE records (
    id INTEGER PRIMARY KEY,
    op TEXT NOT NULL, params TEXT NOT NULL, target TEXT NOT NULL, backend TEXT NOT NULL,
    n_min INTEGER NOT NULL, n_max INTEGER NOT NULL, rows_min INTEGER NOT NULL, rows_max INTEGER NOT NULL,
    algorithm TEXT NOT NULL, schedule TEXT NOT NULL, threads INTEGER NOT NULL,
    ns_per_element REAL NOT NULL, noise REAL NOT NULL, repetitions INTEGER NOT NULL,
    runners_up TEXT NOT NULL, fingerprint TEXT NOT NULL, machine TEXT NOT NULL,
    compiler TEXT NOT NULL, compiler_version TEXT NOT NULL, softgen_version TEXT NOT NULL,
    source_version TEXT NOT NULL, timestamp REAL NOT NULL,
    UNIQUE (op, params, target, backend, fingerprint, compiler, compiler_version, softgen_version,
            source_version, n_min, n_max, rows_min, rows_max) ON CONFLICT REPLACE)"""


def test_a_schema_1_file_is_migrated_and_keeps_its_records(tmp_path, monkeypatch):
    """Schema 2 keys a record by its thread count too (a plan per count); a schema 1 file (no
    threads in its unique key) is rebuilt in place on opening, its records kept."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "old"))
    old = _rec(threads=2, rows=(2, 99))              # a record as schema 1 held it
    path = tmp_path / "cache" / "tuning.sqlite"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute(V1_TABLE)
    row = tuple(json.dumps(getattr(old, c), sort_keys=True, separators=(",", ":")) if c in ("params", "schedule", "runners_up", "machine")
                else getattr(old, c) for c in tunedb.COLUMNS)
    con.execute(f"INSERT INTO records ({', '.join(tunedb.COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # migrated, not recreated as damaged
        assert tunedb.records() == [old]
    one = _rec(threads=1, rows=(2, 99), algorithm="two-pass")   # same class, another count: both kept
    assert sorted(r.threads for r in tunedb.records()) == [1, 2]
    assert tunedb.lookup("softmax", {}, "scalar", "c", 4096, 8, threads=1) == one
    assert tunedb.lookup("softmax", {}, "scalar", "c", 4096, 8, threads=2) == old
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == tunedb.SCHEMA_VERSION == 2
