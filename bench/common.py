"""Op-independent benchmark helpers: single-threading, interleaved median timing, bandwidth, tables.

Reused by every ``bench/<op>.py`` (and by a future ``softgen bench`` subcommand), so nothing here
knows about softmax.

Timing model
------------
A *variant* is either a zero-argument callable or a ``(statement, globals)`` pair; statements are
compiled by :mod:`timeit` straight into its timing loop, so they avoid the extra Python frame a
``lambda`` adds (~40-60 ns, which matters for microsecond calls). For every variant:

1. *calibrate*: find ``number`` (calls per sample) such that one sample takes >= ``min_time``
   (default 20 ms); this also warms caches, page tables and lazily built kernels;
2. run ``warmup`` further discarded samples;
3. run ``rounds`` samples, *interleaved* with the other variants (round r visits the variants in
   an order rotated by r), so drift and neighbours' noise hit all variants alike;
4. report the median (and min / quartiles) of the per-call times.

``rounds`` adapts to the size: enough to spend about ``budget`` seconds per variant, clamped to
[min_rounds, max_rounds], so small sizes get many samples and 64M-element rows get a handful.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import timeit
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, Union

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def single_threaded() -> None:
    """Force every threaded math library to one thread. Call before numpy/torch are imported
    (the env vars are read at import); torch additionally needs ``torch.set_num_threads(1)``."""
    for v in THREAD_VARS:
        os.environ[v] = "1"


Variant = Union[Callable[[], object], tuple]          # callable, or (stmt, globals)


def sampler(variant: Variant) -> Callable[[int], float]:
    """``f(number) -> seconds`` for ``number`` back-to-back executions of ``variant``."""
    if isinstance(variant, tuple):
        stmt, glb = variant
        return timeit.Timer(stmt, globals=dict(glb)).timeit
    if callable(variant):
        return timeit.Timer(variant).timeit
    raise TypeError(f"variant must be a callable or (stmt, globals), got {type(variant).__name__}")


def calibrate(sample: Callable[[int], float], min_time: float = 0.02,
              max_number: int = 10_000_000) -> tuple[int, float]:
    """Smallest-ish ``number`` with ``sample(number) >= min_time``; returns (number, s/call)."""
    number = 1
    while True:
        t = sample(number)
        if t >= min_time or number >= max_number:
            return number, t / number
        # aim 20% above the target; grow at least 2x and at most 100x per step
        want = math.ceil(number * min_time * 1.2 / max(t, 1e-9))
        number = min(max_number, max(2 * number, min(want, 100 * number)))


@dataclass
class Timing:
    median: float                       # seconds per call
    min: float
    q1: float
    q3: float
    number: int                         # calls per sample
    rounds: int                         # samples taken
    samples: list = field(default_factory=list, repr=False)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise indicator)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = self.spread
        return d


def _quartiles(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def time_interleaved(variants: Mapping[str, Variant], *, min_time: float = 0.02,
                     budget: float = 0.5, min_rounds: int = 5, max_rounds: int = 25,
                     warmup: int = 1) -> dict[str, Timing]:
    """Median seconds per call of each variant, measured in alternating rounds (see module doc)."""
    names = list(variants)
    samplers = {k: sampler(variants[k]) for k in names}
    numbers, est = {}, {}
    for k in names:                                   # calibration doubles as first warm-up
        numbers[k], est[k] = calibrate(samplers[k], min_time)
    for _ in range(warmup):
        for k in names:
            samplers[k](numbers[k])
    per_round = sum(est[k] * numbers[k] for k in names)
    rounds = int(budget * len(names) / max(per_round, 1e-9))
    rounds = max(min_rounds, min(max_rounds, rounds))
    per_call: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        start = r % len(names)
        for k in names[start:] + names[:start]:
            per_call[k].append(samplers[k](numbers[k]) / numbers[k])
    out = {}
    for k in names:
        xs = per_call[k]
        q1, q3 = _quartiles(sorted(xs))
        out[k] = Timing(statistics.median(xs), min(xs), q1, q3, numbers[k], rounds, xs)
    return out


def time_callable(fn: Variant, **kw) -> float:
    """Median seconds per call of one callable (or (stmt, globals)) after warm-up."""
    return time_interleaved({"f": fn}, **kw)["f"].median


# -- derived quantities ----------------------------------------------------------------------------

def gbps(bytes_per_element: float, elements: int, seconds: float) -> float:
    """Effective bandwidth in GB/s (1e9 B/s) for a given traffic model."""
    return bytes_per_element * elements / seconds / 1e9 if seconds > 0 else float("nan")


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den:
        return None
    return num / den


def parse_count(tok: str) -> int:
    """'1K' -> 1024, '4M' -> 4194304, '1G', '1000' -> 1000 (binary suffixes)."""
    tok = tok.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if tok and tok[-1] in mult:
        return int(float(tok[:-1]) * mult[tok[-1]])
    return int(tok)


def count_label(n: int) -> str:
    for suf, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{suf}"
    return str(n)


# -- tables -----------------------------------------------------------------------------------------

Column = tuple  # (key, header, format) ; format: str spec, or callable(value, row) -> str


def _fmt(v, spec, row) -> str:
    if callable(spec):
        return spec(v, row)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def render_table(rows: Iterable[dict], columns: Sequence[Column], *, group: str | None = None) -> str:
    """Fixed-width text table; a blank-ish separator line whenever ``row[group]`` changes."""
    rows = list(rows)
    cells = [[h for _, h, _ in columns]] + [[_fmt(r.get(k), f, r) for k, _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    def line(c):  # first column left-aligned, numbers right-aligned
        return "  ".join(s.ljust(w) if i == 0 or not _numeric(s) else s.rjust(w)
                         for i, (s, w) in enumerate(zip(c, widths))).rstrip()
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    for i, (r, c) in enumerate(zip(rows, cells[1:])):
        if group is not None and i > 0 and r.get(group) != rows[i - 1].get(group):
            out.append("")
        out.append(line(c))
    return "\n".join(out)


def _numeric(s: str) -> bool:
    s = s.strip().rstrip("x%").lstrip("+-")
    return s.replace(".", "", 1).replace("e-", "", 1).replace("e+", "", 1).isdigit() or s == "-"


# -- environment -----------------------------------------------------------------------------------

def machine_info() -> dict:
    """What the numbers were measured on."""
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        info["affinity"] = sorted(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        for line in txt.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                fl = set(line.split(":", 1)[1].split())
                info["isa"] = [x for x in ("sse4_2", "avx", "avx2", "fma", "avx512f") if x in fl]
                break
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=20)
        info["cc"] = out.stdout.splitlines()[0] if out.stdout else None
    except (OSError, subprocess.SubprocessError):
        info["cc"] = None
    info["threads_env"] = {v: os.environ.get(v) for v in THREAD_VARS}
    info["commit"] = git_commit()
    return info


def git_commit(path: str | None = None) -> str | None:
    """Short HEAD of the repository holding ``path`` (this file's), '+dirty' if tracked files
    differ from it; None outside a git checkout."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=20)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None
