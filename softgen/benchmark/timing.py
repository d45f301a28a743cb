"""The timing machinery (see the package docstring): single-threading, calibrated interleaved
medians with a noise figure, buffers (pre-touched; rotated beyond the LLC), the progress bar."""
from __future__ import annotations

import itertools
import math
import os
import statistics
import sys
import time
import timeit
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence, Union

import numpy as np

from . import deps

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS",
               # softgen's own libraries: their "auto" thread count (the plain entry a bench
               # times) is capped by it, so "1 thread" in the report holds for softgen too
               "SOFTGEN_NUM_THREADS")


def single_threaded() -> None:
    """Force every threaded math library, softgen's generated ones included, to one thread. Call
    before numpy/torch are imported (the env vars are read at import; a generated library reads
    SOFTGEN_NUM_THREADS at its first auto call); torch additionally needs
    ``torch.set_num_threads(1)``."""
    for v in THREAD_VARS:
        os.environ[v] = "1"


# -- timing ------------------------------------------------------------------------------------------

Variant = Union[Callable[[], object], tuple]          # callable, or (stmt, globals)


def sampler(variant: Variant) -> Callable[[int], float]:
    """``f(number) -> seconds`` for ``number`` back-to-back executions of ``variant``; a variant
    with a ``timeit(number)`` method of its own (one timed in C: ``tune.CLoop``) is its sampler."""
    if hasattr(variant, "timeit"):
        return variant.timeit
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


# -- derived quantities, sizes -----------------------------------------------------------------------

def gbps(bytes_per_element: float, elements: int, seconds: float) -> float:
    """Effective bandwidth in GB/s (1e9 B/s) for a given traffic model."""
    return bytes_per_element * elements / seconds / 1e9 if seconds > 0 else float("nan")


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den:
        return None
    return num / den


# -- buffers -----------------------------------------------------------------------------------------

def _buffers(rng, rows: int, n: int, pairs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(pairs):
        x = rng.standard_normal((rows, n) if rows > 1 else n, dtype=np.float32)
        y = np.empty_like(x)
        y.fill(0.0)            # touch every page now, not in the timed region
        out.append((x, y))
    return out


def _rotating(variants: list[tuple]) -> Variant:
    """One timing variant from one ``(stmt, globals)`` per buffer pair: each call uses the next."""
    if len(variants) == 1:
        return variants[0]
    code = compile(variants[0][0], "<bench>", "eval")
    calls = itertools.cycle([(code, dict(g)) for _, g in variants])

    def call():
        c, g = next(calls)
        return eval(c, g)
    return call


# -- progress ------------------------------------------------------------------------------------------

class Progress:
    """A progress bar with ETA on stderr: tqdm when installed, else a small built-in one."""

    def __init__(self, total: int, desc: str = "bench", enabled: bool = True, stream=None):
        self.total, self.done, self.desc, self.enabled = total, 0, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self._tqdm = None
        if enabled:
            try:
                tqdm = deps._import("tqdm")
                self._tqdm = tqdm.tqdm(total=total, desc=desc, file=self.stream, leave=False)
            except ImportError:
                pass

    def update(self, what: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(what, refresh=False)
            self._tqdm.update(1)
            return
        el = time.monotonic() - self.start
        eta = el / self.done * (self.total - self.done)
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        tty = getattr(self.stream, "isatty", lambda: False)()
        msg = (f"{self.desc} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
               f"{_clock(el)} elapsed, ETA {_clock(eta)} {what}")
        self.stream.write(("\r" + msg + "\x1b[K") if tty else msg + "\n")
        if tty and self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}"
