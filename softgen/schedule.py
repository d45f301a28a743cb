"""Schedules are plain data: *how* a plan's sweeps are vectorised, never *what* they compute.

``unroll``        vectors per main-loop iteration (elements per iteration = unroll * lanes)
``accumulators``  independent reduction accumulators (each gets unroll / accumulators vectors)
``block``         elements per reduction block; block partials fold into a compensated
                  accumulator, which keeps the f32 sums of 2^20-element rows within 2e-6

Per-target defaults live in the one table below; the generated code's header comment and the
export manifest record the schedule that was used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import UsageError
from .values import number, show


@dataclass(frozen=True)
class Schedule:
    unroll: int = 4
    accumulators: int = 2
    block: int = 2048

    def validate(self, lanes: int) -> "Schedule":
        """This schedule, checked, with Python int fields (NumPy integers are accepted)."""
        s = replace(self, **{k: _positive(k, getattr(self, k)) for k in ("unroll", "accumulators", "block")})
        if s.unroll > 32:
            raise UsageError(f"schedule unroll must be <= 32, got {s.unroll}")
        if s.unroll % s.accumulators:
            raise UsageError(f"schedule accumulators ({s.accumulators}) must divide unroll ({s.unroll})")
        step = s.unroll * lanes
        if s.block % step or s.block > 1 << 24:
            raise UsageError(f"schedule block ({s.block}) must be a multiple of "
                             f"unroll*lanes ({step}) and at most 2^24")
        return s

    def step(self, lanes: int) -> int:
        return self.unroll * lanes

    def as_dict(self) -> dict:
        return asdict(self)

    def tag(self, lanes: int) -> str:
        """XNNPACK-style suffix: elements per iteration and accumulators."""
        return f"u{self.step(lanes)}_acc{self.accumulators}"

    def __str__(self) -> str:
        return f"unroll={self.unroll} accumulators={self.accumulators} block={self.block}"


def _positive(key: str, value) -> int:
    v = number(f"schedule {key}", value, integer=True)
    if v < 1:
        raise UsageError(f"schedule {key} must be a positive integer, got {show(value)}")
    return v


# target -> default schedule. Chosen by bench/softmax.py on the development machine.
DEFAULTS = {
    "scalar": Schedule(unroll=4, accumulators=4, block=1024),
    "avx2": Schedule(unroll=4, accumulators=2, block=2048),
    "avx512": Schedule(unroll=4, accumulators=2, block=4096),
    "neon": Schedule(unroll=4, accumulators=2, block=1024),
}

# target -> algorithm preference for algorithm="auto" (first one that applies to the op wins).
# Motif-free ops: direct-reload (bench/ops.py, avx2 and scalar: 3.3x faster for softplus_l1 at
# 2048x1024, never slower for stablemax/log_stablemax, even at 16M elements).
AUTO_ALGORITHM = {
    "scalar": ("online", "two-pass", "three-pass-recompute", "direct-reload", "direct"),
    "avx2": ("two-pass", "online", "three-pass-recompute", "direct-reload", "direct"),
    "avx512": ("two-pass", "online", "three-pass-recompute", "direct-reload", "direct"),
    "neon": ("two-pass", "online", "three-pass-recompute", "direct-reload", "direct"),
}


def default_schedule(target: str, lanes: int, **overrides) -> Schedule:
    base = DEFAULTS.get(target, Schedule())
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {"unroll", "accumulators", "block"}
    if unknown:
        raise UsageError(f"unknown schedule parameter(s) {sorted(unknown)}")
    given = {k: _positive(k, v) for k, v in given.items()}  # types first, before any arithmetic
    if "unroll" in given and "accumulators" not in given and given["unroll"] % base.accumulators:
        given["accumulators"] = 1
    sched = replace(base, **given)
    if "block" not in given and sched.block % sched.step(lanes):
        sched = replace(sched, block=max(1, sched.block // sched.step(lanes)) * sched.step(lanes))
    return sched.validate(lanes)
