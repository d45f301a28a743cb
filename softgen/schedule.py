"""Schedules are plain data: *how* a plan's sweeps are vectorised, never *what* they compute.

``unroll``        vectors per main-loop iteration (elements per iteration = unroll * lanes)
``accumulators``  independent reduction accumulators (each gets unroll / accumulators vectors)
``block``         elements per reduction block; block partials fold into a compensated
                  accumulator, which keeps the f32 sums of 2^20-element rows within 2e-6
``split``         rows of n >= split elements run in the split form (C backend): the row is cut
                  into chunks, each sweep runs per chunk (tasks of ``sg_parallel``), the chunks'
                  reduction states merge in chunk order; 0 = never
``chunk``         elements per chunk of the split form, a multiple of ``block`` (a row gets at
                  most ``backends.c.SPLIT_MAX_CHUNKS`` chunks: longer rows get wider chunks,
                  still whole blocks). Chunks depend on n and the schedule only, never on the
                  thread count, so results do not either

:class:`GemmSchedule` is the same kind of data for the register-blocked GEMM of matrix programs.

Per-target defaults are data too: the ``[schedule]`` and ``[gemm]`` tables of ``targets/*.toml``
(``Target.schedule``, ``Target.gemm``). The generated code's header comment and the export
manifest record the schedule that was used.
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
    split: int = 262144
    chunk: int = 65536

    def validate(self, lanes: int) -> "Schedule":
        """This schedule, checked, with Python int fields (NumPy integers are accepted)."""
        s = replace(self, **{k: _positive(k, getattr(self, k)) for k in ("unroll", "accumulators", "block", "chunk")},
                    split=_positive("split", self.split, lo=0))
        if s.unroll > 32:
            raise UsageError(f"schedule unroll must be <= 32, got {s.unroll}")
        if s.unroll % s.accumulators:
            raise UsageError(f"schedule accumulators ({s.accumulators}) must divide unroll ({s.unroll})")
        step = s.unroll * lanes
        if s.block % step or s.block > 1 << 24:
            raise UsageError(f"schedule block ({s.block}) must be a multiple of "
                             f"unroll*lanes ({step}) and at most 2^24")
        if s.chunk % s.block or s.chunk > 1 << 30:
            raise UsageError(f"schedule chunk ({s.chunk}) must be a multiple of block ({s.block}) "
                             f"and at most 2^30")
        if s.split > 1 << 62:
            raise UsageError(f"schedule split must be at most 2^62 (0: never), got {s.split}")
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


def _positive(key: str, value, lo: int = 1) -> int:
    v = number(f"schedule {key}", value, integer=True)
    if v < lo:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise UsageError(f"schedule {key} must be {what}, got {show(value)}")
    return v


KNOBS = ("unroll", "accumulators", "block", "split", "chunk")


def default_schedule(base: Schedule, lanes: int, **overrides) -> Schedule:
    """``base`` (a target's default schedule, ``Target.schedule``) with the given fields
    overridden, validated for ``lanes``."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(KNOBS)
    if unknown:
        raise UsageError(f"unknown schedule parameter(s) {sorted(unknown)}")
    given = {k: _positive(k, v, lo=0 if k == "split" else 1) for k, v in given.items()}  # types first
    if "unroll" in given and "accumulators" not in given and given["unroll"] % base.accumulators:
        given["accumulators"] = 1
    sched = replace(base, **given)
    if "block" not in given and sched.block % sched.step(lanes):
        sched = replace(sched, block=max(1, sched.block // sched.step(lanes)) * sched.step(lanes))
    if "chunk" not in given and sched.chunk % sched.block:   # whole blocks, at least the default
        sched = replace(sched, chunk=-(-sched.chunk // sched.block) * sched.block)
    return sched.validate(lanes)


MAX_STACK_FLOATS = 32768   # the GEMM's packed-B buffer (KC * NC floats) lives on the stack: <= 128 KiB


@dataclass(frozen=True)
class GemmSchedule:
    """``mr``: rows of C per tile; ``nv``: vectors per tile row (NR = nv * lanes); ``kc``: depth
    of a packed B block; ``nc``: columns of a packed B block (a multiple of NR); ``ku``: k-loop
    unroll of the tile (1 = leave it to the compiler)."""
    mr: int = 4
    nv: int = 2
    kc: int = 256
    nc: int = 64
    ku: int = 1

    def nr(self, lanes: int) -> int:
        return self.nv * lanes

    def validate(self, t) -> "GemmSchedule":
        """This schedule, checked against target ``t`` (its ``lanes`` and ``vector_registers``)."""
        for k in ("mr", "nv", "kc", "nc", "ku"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"gemm schedule {k} must be a positive integer, got {v!r}")
        if self.mr > 16 or self.nv > 8 or self.ku > 16:
            raise UsageError(f"gemm schedule mr <= 16, nv <= 8, ku <= 16 (got {self})")
        regs = t.vector_registers
        need = self.mr * self.nv + self.nv + 1
        if need > regs:
            raise UsageError(f"gemm tile {self.mr}x{self.nr(t.lanes)} on {t.name} needs {need} vector "
                             f"registers (mr*nv accumulators + nv B vectors + 1), the target has {regs}")
        nr = self.nr(t.lanes)
        if self.nc % nr:
            raise UsageError(f"gemm schedule nc ({self.nc}) must be a multiple of NR = nv*lanes ({nr})")
        if self.kc % self.ku:
            raise UsageError(f"gemm schedule ku ({self.ku}) must divide kc ({self.kc})")
        if self.kc * self.nc > MAX_STACK_FLOATS:
            raise UsageError(f"gemm schedule kc*nc ({self.kc}*{self.nc}) exceeds the packed-B stack "
                             f"buffer limit of {MAX_STACK_FLOATS} floats")
        return self

    def __str__(self) -> str:
        return f"mr={self.mr} nv={self.nv} kc={self.kc} nc={self.nc} ku={self.ku}"


ATTENTION_KNOBS = ("br", "bc")
ATTENTION_MAX_BLOCK = 4096   # br * bc floats of scores live on the stack (16 KiB at most)


@dataclass(frozen=True)
class AttentionSchedule:
    """The streaming attention form's blocks: ``br`` query rows per block (small for decoding,
    Lq = 1..16), ``bc`` keys per block (the score block br x bc stays in L1). Per-target defaults
    in ``targets/*.toml`` ``[attention]``; ``compile("attention", schedule={"br": .., "bc": ..})``
    overrides them."""
    br: int = 4
    bc: int = 64

    def validate(self) -> "AttentionSchedule":
        for k in ATTENTION_KNOBS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= ATTENTION_MAX_BLOCK:
                raise UsageError(f"attention schedule {k} must be an integer in [1, {ATTENTION_MAX_BLOCK}], got {v!r}")
        if self.br * self.bc > ATTENTION_MAX_BLOCK:
            raise UsageError(f"attention schedule br * bc ({self.br} * {self.bc}) exceeds {ATTENTION_MAX_BLOCK} floats "
                             f"(the score block lives on the stack)")
        return self

    def __str__(self) -> str:
        return f"br={self.br} bc={self.bc}"
