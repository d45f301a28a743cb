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
``stream``        non-temporal (streaming) stores in the output sweep: y is peeled to the target's
                  store alignment, whole vectors bypass the caches, one fence ends the row (targets
                  with ``[isa] STREAM``/``FENCE`` and ``stream_align`` only: avx2, avx512); pays for
                  rows beyond the last-level cache
``prefetch``      software prefetch distance in elements (0 = none) of the sweeps' reads of x and y
``exp``           the variant of the vectorised exp/exp_nonpos (``numerics.constants.EXP_VARIANTS``:
                  polynomial degree and one- or two-constant range reduction); the extended-exponent
                  pair of two-pass always uses the default (its n reaches 2^17 log2 e). "" (the
                  default): the target's choice, p5c2 and, for the exps of x - max x, the target
                  file's ``shifted_exp`` (avx512: t32); a named variant replaces both, so "p5c2"
                  names p5 for every exp (on a target without ``shifted_exp`` that is the default:
                  ``default_schedule`` given the target's ``shifted_exp`` makes it "")

``rows``          rows per call of the row function (C backend): the entry runs R rows at once through
                  ``<name>__row_batch<R>``, each sweep's loop shared by the R rows (same n) with
                  their independent chains side by side, so the latency of a short row's horizontal
                  reductions, reciprocal and loop overhead overlaps across rows; rows left over
                  (rows mod R) run one at a time. 1 = one row at a time. Results are bitwise those of
                  the one-row form (the same code per row)

``lazymax``       three-pass-reload of softmax (C backend, ``passes.lazy_max``): no full-row max sweep;
                  the exps are taken against a running reference r (the first 64 elements' max, moved to a
                  group of vectors' max where x exceeds r + LAZY_SLACK / s), each element stored under
                  the reference of its segment, rescaled in the output sweep (docs/ops.md §3.1). One
                  read of x from memory instead of two; split rows: per chunk, sums rescaled to merge

``pipeline``      batches of rows (C backend): the last sweep of row r (the output sweep: no reduction)
                  runs in the loop of row r + 1's sweep before it (``<name>__row_pipe``), so the
                  output sweep's loads and stores overlap the previous sweep's arithmetic (the exps) and
                  row r's scalars (1 / sum) the next row's work; the first and last rows run alone.
                  Results are bitwise the one-row form's (the same code per row). Not with rows > 1

``stream``, ``prefetch``, ``exp``, ``rows``, ``lazymax`` and ``pipeline`` are C-backend knobs; their defaults (off, 0, "", 1, off, off) generate
exactly the code of a schedule without them, and ``as_dict`` omits them at their defaults.

:class:`GemmSchedule` is the same kind of data for the register-blocked GEMM of matrix programs.

Per-target defaults are data too: the ``[schedule]`` and ``[gemm]`` tables of ``targets/*.toml``
(``Target.schedule``, ``Target.gemm``). The generated code's header comment and the export
manifest record the schedule that was used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import UsageError
from .numerics.constants import EXP_DEFAULT, EXP_VARIANTS
from .values import number, show

INT_FIELDS = ("unroll", "accumulators", "block", "split", "chunk")   # split may be 0 (never)
EXP_TARGET = ""   # schedule exp: the target's (p5c2, its shifted_exp for the exps of x - max x)
PREFETCH_MAX = 1 << 16      # elements ahead (256 KiB)
ROWS_MAX = 8                # schedule rows: rows at once (each its accumulators in registers)
# the C-backend knobs: knob -> (default, one-line help: the CLI's flag help). Defaults are omitted
# from as_dict; bool knobs are the CLI's switches (--lazymax), the others take a value
KNOB_TABLE = {
    "stream": (False, "non-temporal stores in the output sweep (targets with [isa] STREAM: avx2, avx512); "
                      "pays for rows beyond the last-level cache"),
    "prefetch": (0, "software prefetch distance in elements of the sweeps' reads (0: none; a multiple of 16 "
                    f"up to {PREFETCH_MAX})"),
    "exp": (EXP_TARGET, "the exp variant (polynomial degree, one- or two-constant range reduction; "
                        "default: the target's)"),
    "rows": (1, "rows per call of the row function: R rows at once, their loops shared "
                f"(1: one at a time; at most {ROWS_MAX})"),
    "lazymax": (False, "three-pass-reload of softmax without the full-row max sweep (a running reference, "
                       "rescaled in the output sweep)"),
    "pipeline": (False, "batches: each row's output sweep runs in the loop of the next row's sweep (not with rows > 1)"),
}
KNOB_DEFAULTS = {k: d for k, (d, _) in KNOB_TABLE.items()}
KNOB_HELP = {k: h for k, (_, h) in KNOB_TABLE.items()}
FIELDS = INT_FIELDS + tuple(KNOB_DEFAULTS)


@dataclass(frozen=True)
class Schedule:
    unroll: int = 4
    accumulators: int = 2
    block: int = 2048
    split: int = 262144
    chunk: int = 65536
    stream: bool = False
    prefetch: int = 0
    exp: str = EXP_TARGET
    rows: int = 1
    lazymax: bool = False
    pipeline: bool = False

    def validate(self, lanes: int) -> "Schedule":
        """This schedule, checked, with Python int fields (NumPy integers are accepted)."""
        s = replace(self, **{k: _positive(k, getattr(self, k), lo=0 if k == "split" else 1) for k in INT_FIELDS},
                    **{k: _knob(k, getattr(self, k)) for k in KNOB_DEFAULTS})
        if s.pipeline and s.rows > 1:
            raise UsageError(f"schedule pipeline and rows={s.rows} exclude each other (one row at a time, "
                             f"its output sweep in the next row's loop; or R rows at once)")
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
        """The fields, without the knobs (stream, prefetch, exp) that are at their defaults."""
        return {k: v for k, v in asdict(self).items() if KNOB_DEFAULTS.get(k, object()) != v}

    def knobs(self) -> dict:
        """The knobs that differ from their defaults (in field order)."""
        return {k: getattr(self, k) for k, d in KNOB_DEFAULTS.items() if getattr(self, k) != d}

    def tag(self, lanes: int) -> str:
        """XNNPACK-style suffix: elements per iteration and accumulators, then ``knob_tag``."""
        return f"u{self.step(lanes)}_acc{self.accumulators}" + self.knob_tag()

    def knob_tag(self) -> str:
        """The knobs' suffix ("" at their defaults): _nt for streaming stores, _pf<distance>,
        _<exp variant>, _r<rows>, _lz, _pp."""
        k = self.knobs()
        return (("_nt" if k.get("stream") else "") + (f"_pf{k['prefetch']}" if "prefetch" in k else "")
                + (f"_{k['exp']}" if "exp" in k else "") + (f"_r{k['rows']}" if "rows" in k else "")
                + ("_lz" if k.get("lazymax") else "") + ("_pp" if k.get("pipeline") else ""))

    def __str__(self) -> str:
        return f"unroll={self.unroll} accumulators={self.accumulators} block={self.block}" \
            + "".join(f" {k}={v}" for k, v in self.knobs().items())


def _positive(key: str, value, lo: int = 1) -> int:
    v = number(f"schedule {key}", value, integer=True)
    if v < lo:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise UsageError(f"schedule {key} must be {what}, got {show(value)}")
    return v


def _knob(key: str, value):
    """A stream / prefetch / exp / rows value, checked (types and ranges; target support is the backend's)."""
    if key in ("stream", "lazymax", "pipeline"):
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise UsageError(f"schedule {key} must be true or false, got {show(value)}")
        return bool(value)
    if key == "rows":
        v = number("schedule rows", value, integer=True)
        if not 1 <= v <= ROWS_MAX:
            raise UsageError(f"schedule rows must be an integer in [1, {ROWS_MAX}], got {show(value)}")
        return v
    if key == "prefetch":
        v = number("schedule prefetch", value, integer=True)
        if v < 0 or v > PREFETCH_MAX or v % 16:
            raise UsageError(f"schedule prefetch must be 0 (none) or a multiple of 16 elements up to "
                             f"{PREFETCH_MAX}, got {show(value)}")
        return v
    if not isinstance(value, str) or (value and value not in EXP_VARIANTS):
        raise UsageError(f"schedule exp must be one of {', '.join(EXP_VARIANTS)} (or \"\": the target's), "
                         f"got {value!r}")
    return value


def given_knobs(schedule) -> Schedule:
    """The knobs a ``compile(schedule=...)`` argument (a Schedule, a dict of fields or None) sets,
    checked, over a default Schedule (the lane-independent part of a schedule: a multi-ISA
    library's name tags them)."""
    if isinstance(schedule, Schedule):
        return Schedule(**{k: _knob(k, getattr(schedule, k)) for k in KNOB_DEFAULTS})
    given = schedule if isinstance(schedule, dict) else {}
    return Schedule(**{k: _knob(k, v) for k, v in given.items() if k in KNOB_DEFAULTS and v is not None})


KNOBS = FIELDS   # every field default_schedule may override


def default_schedule(base: Schedule, lanes: int, shifted_exp: str | None = None, **overrides) -> Schedule:
    """``base`` (a target's default schedule, ``Target.schedule``) with the given fields
    overridden, validated for ``lanes``. ``shifted_exp``: the target's (``Target.shifted_exp``);
    when given, an ``exp`` naming the variant the target uses anyway becomes the default ""."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(FIELDS)
    if unknown:
        raise UsageError(f"unknown schedule parameter(s) {sorted(unknown)}")
    # types first, before any arithmetic
    given = {k: _knob(k, v) if k in KNOB_DEFAULTS else _positive(k, v, lo=0 if k == "split" else 1)
             for k, v in given.items()}
    if "unroll" in given and "accumulators" not in given and given["unroll"] % base.accumulators:
        given["accumulators"] = 1
    sched = replace(base, **given)
    if "block" not in given and sched.block % sched.step(lanes):
        sched = replace(sched, block=max(1, sched.block // sched.step(lanes)) * sched.step(lanes))
    if "chunk" not in given and sched.chunk % sched.block:   # whole blocks, at least the default
        sched = replace(sched, chunk=-(-sched.chunk // sched.block) * sched.block)
    if shifted_exp is not None and sched.exp == EXP_DEFAULT and not shifted_exp:
        sched = replace(sched, exp=EXP_TARGET)   # p5c2 everywhere is what the target does anyway
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

    def as_dict(self) -> dict:
        return asdict(self)

    def tag(self, lanes: int) -> str:
        """Suffix of a matrix kernel's name whose GEMM schedule is not its target's default."""
        return f"g{self.mr}x{self.nr(lanes)}_kc{self.kc}_nc{self.nc}" + (f"_ku{self.ku}" if self.ku > 1 else "")

    def __str__(self) -> str:
        return f"mr={self.mr} nv={self.nv} kc={self.kc} nc={self.nc} ku={self.ku}"


GEMM_FIELDS = ("mr", "nv", "kc", "nc", "ku")
ATTENTION_KNOBS = ("br", "bc", "wide")
ATTENTION_MAX_BLOCK = 4096   # br * bc floats of scores live on the stack (16 KiB at most)
ATTENTION_MAX_WIDE = 65536   # br * wide floats: the single-block mode's score tile (heap, per task: 256 KiB at most, an L2)


@dataclass(frozen=True)
class AttentionSchedule:
    """The streaming attention form's blocks: ``br`` query rows per block (small for decoding,
    Lq = 1..16), ``bc`` keys per block (the score block br x bc stays in L1). ``wide``: the
    single-block mode's length class (softmax, C backend): a query block whose keys number at most
    ``wide`` takes them all as one block (a br x wide score tile, exact two-pass softmax, no
    rescale); 0: off. Per-target defaults in ``targets/*.toml`` ``[attention]``;
    ``compile("attention", schedule={"br": .., "bc": .., "wide": ..})`` overrides them."""
    br: int = 4
    bc: int = 64
    wide: int = 0

    def validate(self) -> "AttentionSchedule":
        for k in ("br", "bc"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= ATTENTION_MAX_BLOCK:
                raise UsageError(f"attention schedule {k} must be an integer in [1, {ATTENTION_MAX_BLOCK}], got {v!r}")
        if self.br * self.bc > ATTENTION_MAX_BLOCK:
            raise UsageError(f"attention schedule br * bc ({self.br} * {self.bc}) exceeds {ATTENTION_MAX_BLOCK} floats "
                             f"(the score block lives on the stack)")
        if isinstance(self.wide, bool) or not isinstance(self.wide, int) or self.wide < 0:
            raise UsageError(f"attention schedule wide must be an integer >= 0 (0: off), got {self.wide!r}")
        if self.br * self.wide > ATTENTION_MAX_WIDE:
            raise UsageError(f"attention schedule br * wide ({self.br} * {self.wide}) exceeds {ATTENTION_MAX_WIDE} floats "
                             f"(the single-block mode's score tile: at most {ATTENTION_MAX_WIDE * 4 // 1024} KiB per thread)")
        return self

    def override(self, **blocks) -> "AttentionSchedule":
        """These blocks with ``blocks`` given, validated; a ``wide`` not given (the target's) is
        lowered to fit its tile beside a given ``br`` (br * wide <= ATTENTION_MAX_WIDE)."""
        out = replace(self, **blocks)
        if "wide" not in blocks and isinstance(out.br, int) and not isinstance(out.br, bool) and out.br >= 1:
            out = replace(out, wide=min(out.wide, ATTENTION_MAX_WIDE // out.br))
        return out.validate()

    def as_dict(self) -> dict:
        return {"br": self.br, "bc": self.bc, "wide": self.wide}

    def __str__(self) -> str:
        return f"br={self.br} bc={self.bc}" + (f" wide={self.wide}" if self.wide else "")
