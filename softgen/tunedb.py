"""The tuning database: what the tuner measured, per machine, for the dispatcher to use.

One SQLite file (the standard library's ``sqlite3``, WAL mode) at ``<cache root>/tuning.sqlite``:
``$SOFTGEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/softgen``, else ``~/.cache/softgen``
(``runtime.cache_root``: a directory private to the user). A record says: for this op with these
parameters, on this target and backend, on this machine (``machine.fingerprint()`` and the full
``machine.identity()``), built by this compiler (command and version), by this softgen version and
kernel-source version (``source_version()``: a hash of what generated code is made from), for row
lengths ``n_min..n_max`` and row counts ``rows_min..rows_max``, the best variant is ``algorithm`` +
``schedule`` when run on ``threads`` threads (FFTW's plans include the thread count: a size class
has a record per thread count measured, each its own winner), measured at ``ns_per_element``
(median) with ``noise`` (relative spread) over ``repetitions``; ``runners_up`` maps other
variants to their time ratio to it.

The API the tuner and the dispatcher use::

    tunedb.record(op, params, target, backend, n=(lo, hi), rows=(lo, hi), algorithm=...,
                  schedule={...}, threads=1, ns_per_element=..., noise=..., repetitions=...,
                  runners_up={"two-pass": 1.12})          # -> TuningRecord (replaces the same key)
    tunedb.lookup(op, params, target, backend, n, rows)   # -> TuningRecord | None
    tunedb.table(op, params, target, backend)             # every usable record, by size class

``lookup`` returns only records of this machine (exact fingerprint), this compiler and the current
softgen and kernel-source versions: imported records of other machines and stale records are kept
(``records(machine="any")``, ``prune``) but never used. Among the records whose size class covers
``(n, rows)``, the most specific (smallest class) wins, then the newest.

Safety: every write is one ``BEGIN IMMEDIATE`` transaction (concurrent writers in other processes
wait, up to ``TIMEOUT`` seconds; a writer killed mid-transaction leaves its transaction rolled
back by the next reader: WAL). A file that is not a readable database (checked once per process)
is moved aside to ``tuning.sqlite.corrupt-<time>`` and recreated, with a ``TuningDBWarning``.
A file of an older schema is migrated in place on opening (``_migrate``: schema 1 keyed a size
class without its thread count; its records keep theirs).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import operator
import os
import sqlite3
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import machine
from ._data import data_dir
from ._version import __version__
from .errors import SoftgenError, UsageError
from .ops import get_op, resolve_params
from .runtime import cache_root, compiler_id
from .targets import get_target, target_dirs

FILENAME = "tuning.sqlite"
SCHEMA_VERSION = 2   # 2: the thread count joins the key (a record per size class and thread count)
TIMEOUT = 60.0     # seconds a writer waits for another one
_NUMERICS = Path(__file__).resolve().parent / "numerics" / "constants.py"


class TuningDBWarning(UserWarning):
    """The tuning database was damaged and has been recreated (its old file is kept aside)."""


class TuningDBError(SoftgenError, RuntimeError):
    """The tuning database cannot be used (its directory is not writable, it stays locked)."""


@dataclass(frozen=True)
class TuningRecord:
    """One tuning result (see the module docstring)."""

    op: str
    params: dict
    target: str
    backend: str
    n_min: int
    n_max: int
    rows_min: int
    rows_max: int
    algorithm: str
    schedule: dict
    threads: int
    ns_per_element: float
    noise: float
    repetitions: int
    runners_up: dict = field(default_factory=dict)
    fingerprint: str = ""
    machine: dict = field(default_factory=dict)
    compiler: str = ""
    compiler_version: str = ""
    softgen_version: str = ""
    source_version: str = ""
    timestamp: float = 0.0

    def covers(self, n: int, rows: int) -> bool:
        return self.n_min <= n <= self.n_max and self.rows_min <= rows <= self.rows_max

    def as_json(self) -> dict:
        return asdict(self)


COLUMNS = tuple(TuningRecord.__dataclass_fields__)
_JSON_COLUMNS = ("params", "schedule", "runners_up", "machine")
KEY = ("op", "params", "target", "backend", "fingerprint", "compiler", "compiler_version",
       "softgen_version", "source_version", "n_min", "n_max", "rows_min", "rows_max", "threads")
_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    id INTEGER PRIMARY KEY,
    op TEXT NOT NULL, params TEXT NOT NULL, target TEXT NOT NULL, backend TEXT NOT NULL,
    n_min INTEGER NOT NULL, n_max INTEGER NOT NULL, rows_min INTEGER NOT NULL, rows_max INTEGER NOT NULL,
    algorithm TEXT NOT NULL, schedule TEXT NOT NULL, threads INTEGER NOT NULL,
    ns_per_element REAL NOT NULL, noise REAL NOT NULL, repetitions INTEGER NOT NULL,
    runners_up TEXT NOT NULL, fingerprint TEXT NOT NULL, machine TEXT NOT NULL,
    compiler TEXT NOT NULL, compiler_version TEXT NOT NULL, softgen_version TEXT NOT NULL,
    source_version TEXT NOT NULL, timestamp REAL NOT NULL,
    UNIQUE ({key}) ON CONFLICT REPLACE)"""
_SCHEMA = _TABLE.format(table="records", key=", ".join(KEY)) + """;
CREATE INDEX IF NOT EXISTS records_lookup ON records (op, target, backend, fingerprint);
"""


def _migrate(con: sqlite3.Connection) -> None:
    """Bring a database of an older schema (``PRAGMA user_version``) to ``SCHEMA_VERSION``, in the
    caller's write transaction. 1 -> 2: the table is rebuilt with ``threads`` in its unique key
    (SQLite cannot alter a constraint); every record is kept as it was."""
    version = con.execute("PRAGMA user_version").fetchone()[0]
    has = con.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='records'").fetchone()
    if has and 0 < version < 2:
        cols = ", ".join(COLUMNS)
        con.execute("DROP TABLE IF EXISTS records_v2")
        con.execute(_TABLE.format(table="records_v2", key=", ".join(KEY)))
        con.execute(f"INSERT INTO records_v2 ({cols}) SELECT {cols} FROM records ORDER BY id")
        con.execute("DROP TABLE records")
        con.execute("ALTER TABLE records_v2 RENAME TO records")


# -- what records are keyed by ------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _source_version(dirs: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    files = [p for d in dirs for p in sorted(Path(d).rglob("*")) if p.is_file()] + [_NUMERICS]
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def source_version() -> str:
    """A hash of what generated code is made from: ``templates/``, the target files (shipped and
    ``$SOFTGEN_TARGETS_PATH``) and ``softgen/numerics/constants.py``. Records made with another
    one are stale: the code they measured is not the code compiled now."""
    return _source_version((str(data_dir("templates")), *map(str, target_dirs())))


def canonical_params(op: str, params: dict | None) -> dict:
    """The op's parameters as the kernel bakes them (defaults filled in, validated)."""
    return resolve_params(get_op(op), dict(params or {}))


def _dumps(v) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _target_name(target) -> str:
    return get_target(target if isinstance(target, str) or target is None else target.name).name


def _int(what: str, v) -> int:
    """An integer >= 1 (NumPy integers too)."""
    try:
        if isinstance(v, bool):
            raise TypeError
        i = operator.index(v)
    except TypeError:
        raise UsageError(f"{what} must be an integer >= 1, got {v!r}") from None
    if i < 1:
        raise UsageError(f"{what} must be an integer >= 1, got {v!r}")
    return int(i)


def _range(what: str, v) -> tuple[int, int]:
    try:
        lo, hi = (v, v) if not isinstance(v, (tuple, list)) else v
        lo, hi = _int(what, lo), _int(what, hi)
    except (UsageError, ValueError):
        lo, hi = 0, -1
    if not 1 <= lo <= hi:
        raise UsageError(f"tuning record: {what} must be an int or a range (lo, hi) with 1 <= lo <= hi, got {v!r}")
    return lo, hi


def _check(r: TuningRecord) -> TuningRecord:
    """Types and ranges of every field (records come from the tuner and from import files)."""
    def bad(name, want):
        raise UsageError(f"tuning record: {name} must be {want}, got {getattr(r, name)!r}")
    for name in ("op", "target", "backend", "algorithm", "fingerprint", "compiler", "compiler_version",
                 "softgen_version", "source_version"):
        v = getattr(r, name)
        if not isinstance(v, str) or not v or len(v) > 1000:
            bad(name, "a non-empty string")
    for name in ("n_min", "n_max", "rows_min", "rows_max", "threads", "repetitions"):
        v = getattr(r, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            bad(name, "an integer >= 1")
    if r.n_min > r.n_max or r.rows_min > r.rows_max:
        raise UsageError(f"tuning record: empty size class n {r.n_min}..{r.n_max}, rows {r.rows_min}..{r.rows_max}")
    for name, lo in (("ns_per_element", 0.0), ("noise", 0.0), ("timestamp", 0.0)):
        v = getattr(r, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < lo \
                or (name == "ns_per_element" and v == 0):
            bad(name, f"a finite number {'> 0' if name == 'ns_per_element' else '>= 0'}")
    for name in _JSON_COLUMNS:
        if not isinstance(getattr(r, name), dict):
            bad(name, "an object")
    for k, v in r.schedule.items():
        if not isinstance(k, str) or not isinstance(v, (int, float, str, bool)):
            raise UsageError(f"tuning record: schedule entry {k!r}: {v!r} is not a number or string")
    for k, v in r.runners_up.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise UsageError(f"tuning record: runner-up {k!r}: ratio {v!r} is not a finite number > 0")
    try:
        _dumps(r.params)
        _dumps(r.machine)
    except (TypeError, ValueError) as e:
        raise UsageError(f"tuning record: parameters or machine not JSON: {e}") from None
    return r


# -- the database file --------------------------------------------------------------------------
class TuningDB:
    """The database at ``path`` (default: ``<cache root>/tuning.sqlite``, resolved on each use so
    that ``SOFTGEN_CACHE_DIR`` set later is honoured). One connection per operation: safe to use
    from several processes (and after ``fork``)."""

    _checked: set[Path] = set()   # files found readable by this process

    def __init__(self, path: str | os.PathLike | None = None):
        self._path = Path(path) if path is not None else None

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else cache_root() / FILENAME

    # connections
    def _open(self, path: Path) -> sqlite3.Connection:
        if not path.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        con = sqlite3.connect(path, timeout=TIMEOUT, isolation_level=None)
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")   # WAL: a process crash loses nothing committed
            if path not in self._checked:
                ok = con.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {ok}")
                with self._write(con):
                    _migrate(con)
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        con.execute(stmt)
                    if con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                        con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._checked.add(path)
        except BaseException:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def _write(self, con: sqlite3.Connection):
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def run(self, fn):
        """``fn(connection)`` on a readable database: a damaged file (found on opening, or by
        ``fn``) is moved aside and recreated, with a warning, and ``fn`` run once more."""
        path = self.path
        for attempt in (0, 1):
            try:
                con = self._open(path)
                try:
                    return fn(con)
                finally:
                    con.close()
            except sqlite3.OperationalError as e:   # locked for longer than TIMEOUT, unwritable, ...
                raise TuningDBError(f"cannot use the tuning database {path}: {e}") from None
            except OSError as e:
                raise TuningDBError(f"cannot use the tuning database {path}: {e.strerror or e}") from None
            except sqlite3.DatabaseError as e:      # not a database, malformed
                if attempt:
                    raise TuningDBError(f"cannot recreate the tuning database {path}: {e}") from None
                try:
                    self._recreate(path, e)
                except OSError as e2:   # the lock file
                    raise TuningDBError(f"the tuning database {path} is damaged ({e}) and cannot be "
                                        f"recreated: {e2.strerror or e2}") from None

    def _recreate(self, path: Path, why: Exception) -> None:
        """Move a damaged database aside (under a lock: only one process moves one file)."""
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:   # another process may have recreated it while this one waited
                con = sqlite3.connect(path, timeout=TIMEOUT, isolation_level=None)
                try:
                    if con.execute("PRAGMA quick_check").fetchone()[0] == "ok":
                        return
                finally:
                    con.close()
            except sqlite3.OperationalError as e:   # locked or unreadable: not known to be damaged
                raise TuningDBError(f"cannot check the tuning database {path}: {e}") from None
            except sqlite3.DatabaseError:           # still damaged
                pass
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                os.replace(path, aside)
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        side = path.with_name(path.name + suffix)
                        if suffix == "-wal":
                            os.replace(side, aside.with_name(aside.name + suffix))
                        else:
                            side.unlink()
            except OSError as e:
                raise TuningDBError(f"the tuning database {path} is damaged ({why}) and cannot be "
                                    f"moved aside: {e.strerror or e}") from None
            self._checked.discard(path)
        warnings.warn(f"the tuning database {path} was damaged ({why}); it was moved to {aside} "
                      f"and a new, empty one created", TuningDBWarning, stacklevel=4)

    # records
    def add(self, rec: TuningRecord) -> TuningRecord:
        """Store ``rec`` as it is (its own machine and versions); it replaces a record of the same
        key (everything but the measurement)."""
        return self.add_many([rec])[0]

    def add_many(self, recs: list[TuningRecord]) -> list[TuningRecord]:
        recs = [_check(r) for r in recs]
        rows = [tuple(_dumps(getattr(r, c)) if c in _JSON_COLUMNS else getattr(r, c) for c in COLUMNS)
                for r in recs]
        def add(con):
            with self._write(con):
                con.executemany(f"INSERT INTO records ({', '.join(COLUMNS)}) "
                                f"VALUES ({', '.join('?' * len(COLUMNS))})", rows)
        self.run(add)
        return recs

    def select(self, where: str = "", args: tuple = ()) -> list[TuningRecord]:
        rows = self.run(lambda con: con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM records {where} ORDER BY id", args).fetchall())
        return [TuningRecord(**{c: json.loads(v) if c in _JSON_COLUMNS else v for c, v in zip(COLUMNS, row)})
                for row in rows]

    def delete_where(self, where: str = "", args: tuple = ()) -> int:
        def delete(con):
            with self._write(con):
                return con.execute(f"DELETE FROM records {where}", args).rowcount
        return self.run(delete)


def default() -> TuningDB:
    return TuningDB()


# -- the API -------------------------------------------------------------------------------------
def _current(target: str, cc: str | None) -> dict:
    cmd, version = compiler_id(get_target(target), cc)
    return {"fingerprint": machine.fingerprint(), "compiler": cmd, "compiler_version": version,
            "softgen_version": __version__, "source_version": source_version()}


def record(op: str, params: dict | None, target, backend: str, *, n, rows, algorithm: str,
           schedule: dict, threads: int = 1, ns_per_element: float, noise: float, repetitions: int,
           runners_up: dict | None = None, cc: str | None = None, db: TuningDB | None = None) -> TuningRecord:
    """Store a tuning result for this machine, compiler (``cc`` as for ``compile``) and the
    current versions; ``n``/``rows``: the size class, an int or an inclusive range (lo, hi).
    A record with the same key and size class is replaced."""
    tname = _target_name(target)
    (n_min, n_max), (rows_min, rows_max) = _range("n", n), _range("rows", rows)
    rec = TuningRecord(op=op, params=canonical_params(op, params), target=tname, backend=backend,
                       n_min=n_min, n_max=n_max, rows_min=rows_min, rows_max=rows_max,
                       algorithm=algorithm, schedule=dict(schedule), threads=_int("threads", threads),
                       ns_per_element=float(ns_per_element), noise=float(noise),
                       repetitions=_int("repetitions", repetitions),
                       runners_up={k: float(v) for k, v in (runners_up or {}).items()},
                       machine=machine.identity(), timestamp=time.time(), **_current(tname, cc))
    return (db or default()).add(rec)


def lookup(op: str, params: dict | None, target, backend: str, n: int, rows: int = 1, *,
           threads: int | None = None, cc: str | None = None, db: TuningDB | None = None) -> TuningRecord | None:
    """The record for this machine, compiler and versions whose size class covers ``(n, rows)``
    (the smallest such class, then the newest), or None; ``threads``: only records of that thread
    count (None: any)."""
    tname = _target_name(target)
    n, rows = _int("n", n), _int("rows", rows)
    cur = _current(tname, cc)
    found = (db or default()).select(
        "WHERE op=? AND params=? AND target=? AND backend=? AND fingerprint=? AND compiler=? AND "
        "compiler_version=? AND softgen_version=? AND source_version=? AND n_min<=? AND n_max>=? AND "
        "rows_min<=? AND rows_max>=?",
        (op, _dumps(canonical_params(op, params)), tname, backend, cur["fingerprint"], cur["compiler"],
         cur["compiler_version"], cur["softgen_version"], cur["source_version"], n, n, rows, rows))
    found = [r for r in found if threads is None or r.threads == _int("threads", threads)]
    if not found:
        return None
    return min(found, key=lambda r: ((r.n_max - r.n_min + 1) * (r.rows_max - r.rows_min + 1), -r.timestamp))


def table(op: str, params: dict | None, target, backend: str, *, cc: str | None = None,
          db: TuningDB | None = None) -> list[TuningRecord]:
    """Every record ``lookup`` could return for this op, parameters, target and backend (this
    machine, compiler and versions), by size class (``n_min``, then ``rows_min``): what a
    dispatcher builds its thresholds from, in one query."""
    tname = _target_name(target)
    cur = _current(tname, cc)
    found = (db or default()).select(
        "WHERE op=? AND params=? AND target=? AND backend=? AND fingerprint=? AND compiler=? AND "
        "compiler_version=? AND softgen_version=? AND source_version=?",
        (op, _dumps(canonical_params(op, params)), tname, backend, cur["fingerprint"], cur["compiler"],
         cur["compiler_version"], cur["softgen_version"], cur["source_version"]))
    return sorted(found, key=lambda r: (r.n_min, r.rows_min, r.n_max, r.rows_max))


def _filter(op=None, target=None, backend=None, machine_: str = "this", stale: bool | None = None) -> tuple[str, tuple]:
    conds, args = [], []
    for col, v in (("op", op), ("target", target), ("backend", backend)):
        if v is not None:
            conds.append(f"{col}=?")
            args.append(v)
    if machine_ == "this":
        conds.append("fingerprint=?")
        args.append(machine.fingerprint())
    elif machine_ == "other":
        conds.append("fingerprint<>?")
        args.append(machine.fingerprint())
    elif machine_ != "any":
        conds.append("fingerprint=?")
        args.append(machine_)
    if stale is not None:
        cond = "(softgen_version=? AND source_version=?)"
        conds.append(f"NOT {cond}" if stale else cond)
        args += [__version__, source_version()]
    return ("WHERE " + " AND ".join(conds)) if conds else "", tuple(args)


def records(op: str | None = None, target: str | None = None, backend: str | None = None, *,
            machine: str = "this", stale: bool | None = None, db: TuningDB | None = None) -> list[TuningRecord]:
    """The records matching the filter: ``machine`` is "this" (default), "other", "any" or a
    fingerprint; ``stale`` True/False: only records of other/the current softgen and
    kernel-source versions (None: both)."""
    return (db or default()).select(*_filter(op, target, backend, machine, stale))


def delete(op: str | None = None, target: str | None = None, backend: str | None = None, *,
           machine: str = "this", stale: bool | None = None, db: TuningDB | None = None) -> int:
    """Delete the records ``records(...)`` with the same filter returns; the count deleted."""
    return (db or default()).delete_where(*_filter(op, target, backend, machine, stale))


def clear(db: TuningDB | None = None) -> int:
    """Delete every record (of every machine); the count deleted."""
    return (db or default()).delete_where()


def prune(other_machines: bool = False, db: TuningDB | None = None) -> int:
    """Delete the records of other softgen or kernel-source versions (every machine's: they are
    stale everywhere) and, with ``other_machines``, every record of another machine."""
    db = db or default()
    n = delete(machine="any", stale=True, db=db)
    return n + (delete(machine="other", db=db) if other_machines else 0)


def summary(db: TuningDB | None = None) -> list[dict]:
    """Record counts per op, target, backend and machine (``this``: whether it is this one;
    ``current``: how many are of the current versions)."""
    fp, sv = machine.fingerprint(), source_version()
    rows = (db or default()).run(lambda con: con.execute(
            "SELECT op, target, backend, fingerprint, json_extract(machine, '$.model_name'), COUNT(*), "
            "SUM(softgen_version=? AND source_version=?) FROM records GROUP BY op, target, backend, "
            "fingerprint ORDER BY op, target, backend, fingerprint", (__version__, sv)).fetchall())
    return [{"op": r[0], "target": r[1], "backend": r[2], "fingerprint": r[3], "model_name": r[4] or "",
             "this": r[3] == fp, "records": r[5], "current": r[6]} for r in rows]


def export_jsonl(path: str | os.PathLike, *, machine: str = "any", db: TuningDB | None = None, **filt) -> int:
    """Write the matching records (default: all) as JSON lines; the count written."""
    recs = records(machine=machine, db=db, **filt)
    tmp = Path(f"{path}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            for r in recs:
                f.write(_dumps(r.as_json()) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TuningDBError(f"cannot write {path}: {e.strerror or e}") from None
    return len(recs)


def read_jsonl(path: str | os.PathLike) -> list[TuningRecord]:
    """The records of a JSON-lines file, validated; ``UsageError`` naming the file and line of
    the first bad one."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}:{i}: not JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}:{i}: a record is a JSON object, got {type(obj).__name__}")
        missing = [c for c in COLUMNS if c not in obj]
        unknown = sorted(set(obj) - set(COLUMNS))
        if missing or unknown:
            raise UsageError(f"{path}:{i}: " + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else [])))
        try:
            out.append(_check(TuningRecord(**obj)))
        except UsageError as e:
            raise UsageError(f"{path}:{i}: {e}") from None
    return out


def import_jsonl(path: str | os.PathLike, db: TuningDB | None = None) -> int:
    """Add the records of a JSON-lines file (all or none), keeping their own machine identity and
    versions (records of another machine are stored but never returned by ``lookup`` here)."""
    recs = read_jsonl(path)
    if recs:
        (db or default()).add_many(recs)
    return len(recs)
