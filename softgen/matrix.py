"""Matrix programs: ops over the last two axes of a batch of matrices (Sinkhorn, SOFT's Gaussian
kernel and Newton-Schulz pseudo-inverse, ...).

A matrix program declares symbolic *dimensions* (``m``, ``n``, ``d``), named *matrices* with a
shape in those dimensions (the op's inputs and outputs, and scratch matrices allocated once per
call) and runs a sequence of *phases* per matrix of the batch:

* ``rows``: an ordinary row program (``ir.Program``) that the planner and backends already know
  how to sweep, run over every row of one matrix (``over``), optionally writing its output row to
  a matrix of the same shape (``into``; it may be ``over`` itself). Besides the row it can read
  per-row vectors (``param``: element i, for row i), per-column vectors (``colvec``: element j),
  per-matrix scalars (``mscalar``), the row index (``row_index``) and the same element of another
  matrix of its shape (``matrow``, e.g. V in a GEMM epilogue 2V - V T); it can store a per-row
  scalar (``emit``), accumulate per-column reductions across the rows (``colreduce_*``, state
  vectors updated element-wise, vectorised across contiguous columns, so column sums need no
  transpose) and reduce a per-row scalar across the rows into a per-matrix scalar (``mreduce_*``).
* ``cols``: a row program run once over the per-column vectors of a matrix (a "row" of its column
  count), e.g. to turn a column reduction's state into a column potential (``colstore``) or a
  per-matrix scalar (``mreduce``).
* ``matmul``: a contraction ``dst = alpha * a @ b + beta * dst`` (``layout="nn"``),
  ``alpha * a @ b^T + beta * dst`` (``"nt"``) or ``alpha * a^T @ b + beta * dst`` (``"tn"``: a is
  stored k x m, SOFT's tied K1^T V) of named matrices; backends lower it to a
  register-blocked GEMM (``backends.gemm`` / ``backends.tvm_gemm``).
* ``pool``: the rows of a matrix averaged over m consecutive segments (SOFT's landmarks; m may
  be a *fixed* dimension, ``fixed_dims``: a build-time size that is not an ABI argument).
* ``loop``: a body of phases repeated a build-time number of times; ``swap`` pairs of scratch
  matrices exchange roles after every iteration (ping-pong buffers, no copies).

Each kind is a class (``RowsPhase``, ``ColsPhase``, ``MatMulPhase``, ``PoolPhase``, ``LoopPhase``) that knows the
matrices it reads and writes, the row programs it runs, its traffic and flops.

Vectors and per-matrix scalars are named; a vector's length is a dimension (a rows phase's
per-row vectors have its matrix's row count, its per-column vectors its column count). A phase
reads what earlier phases wrote. ``passes.lower_matrix`` fuses consecutive rows phases over the
same matrix into one row program (their sweeps of a row run back to back while the row is in
cache) and, for backends with GEMM epilogues, an element-wise rows phase into the store of the
contraction before it.

The C ABI follows from the declarations (``abi.KernelABI``): one input ``x`` and one output
``y`` of the same shape keep the row-op-like ``(x, y, rows, n, ldx, ldy, m)`` (y may equal x);
anything else takes ``(inputs..., outputs..., batch, dims..., ld<matrix>...)``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace

from .abi import ATTENTION_DIMS, GENERAL, UNARY, KernelABI
from .ir import COLREDUCE_FIELDS, INDEX_MAX_N, MREDUCE_INIT, IRError, Program, Value, c_name_ok

LAYOUTS = ("nn", "nt", "tn")
# names the generated entry point uses itself (besides its sg_/mat_/ld_/dim_ prefixed locals)
_ENTRY_NAMES = {"batch", "rows", "status", "i", "j", "it"}


def written_by(p: Program) -> set[str]:
    """Names of the vectors a phase writes (emits, column stores, column reduction states)."""
    out = set()
    for v in p.nodes():
        name = p.attrs(v).get("name")
        if p.op(v) in ("emit", "colstore"):
            out.add(name)
        elif p.kind(v) == "colreduce":
            out |= {f"{name}_{f}" for f, _ in COLREDUCE_FIELDS[p.op(v)]}
    return out


@dataclass(frozen=True)
class MatMul:
    """``dst = alpha * a @ b + beta * dst`` (nn), ``alpha * a @ b^T + beta * dst`` (nt) or
    ``alpha * a^T @ b + beta * dst`` (tn).
    ``epilogue``: an element-wise rows program over dst fused into the store by
    ``passes.lower_matrix`` (its input is the product ``alpha * a @ b``; then beta is 0)."""
    dst: str
    a: str
    b: str
    layout: str = "nn"
    alpha: float = 1.0
    beta: float = 0.0
    epilogue: Program | None = field(default=None, compare=False)

    def __str__(self) -> str:
        prod = f"{self.a}{'^T' if self.layout == 'tn' else ''} @ {self.b}{'^T' if self.layout == 'nt' else ''}"
        alpha = "" if self.alpha == 1.0 else f"{self.alpha!r} * "
        beta = f" + {self.beta!r} * {self.dst}" if self.beta else ""
        epi = f"  [epilogue: {self.epilogue.name}]" if self.epilogue is not None else ""
        return f"{self.dst} = {alpha}{prod}{beta}{epi}"


class Phase:
    """One step of a matrix program, one subclass per kind: ``RowsPhase``, ``ColsPhase`` (both
    ``SweepPhase``: a row program over a matrix), ``MatMulPhase`` and ``LoopPhase``. Each kind
    knows the matrices it reads and writes, the row programs it runs, its memory traffic and its
    contraction flops; ``kind`` is only its name in plans, comments and messages."""

    kind = ""
    into: str | None = None   # a rows phase's output matrix (class attribute: None for the others)

    def leaves(self):
        """The rows/cols/matmul phases this phase runs, in order (a loop's body once)."""
        yield self

    def counted(self, times: int = 1):
        """(leaf phase, how many times it runs per matrix), loop bodies times their counts."""
        yield self, times

    def programs(self) -> list[tuple[Program, str]]:
        """(row program, matrix it runs over) of the row programs this leaf phase runs."""
        return []

    def writes_output(self) -> bool:
        return False

    def matrices_read(self) -> set[str]:
        return set()

    def matrices_written(self) -> set[str]:
        return set()

    def matrices_named(self) -> set[str]:
        """Every matrix the phase names (each must be declared)."""
        return self.matrices_read() | self.matrices_written()

    def traffic(self, plan) -> tuple[int, int, int, int]:
        """(reads, writes, sweeps, exps) per element of its matrix, one run; ``plan``: the sweep
        planner (``passes.plan``). Contractions count in ``flops``, not here."""
        return 0, 0, 0, 0

    def flops(self, shape) -> tuple[str, ...] | None:
        """A contraction's dimensions (2 * their product flops; ``shape``: a matrix's shape by
        name), None for other phases."""
        return None

    def describe(self) -> str:
        return self.kind


@dataclass
class SweepPhase(Phase):
    """A row program run over the rows (``RowsPhase``) or the column vectors (``ColsPhase``) of
    matrix ``over``."""
    program: Program
    over: str = "x"

    def programs(self) -> list[tuple[Program, str]]:
        return [(self.program, self.over)]

    def matrices_named(self) -> set[str]:
        return super().matrices_named() | {self.over}

    @property
    def swept(self) -> str:
        """The matrix whose shape its row program runs over."""
        return self.over

    def describe(self) -> str:
        return f"{self.kind} over {self.over}"


@dataclass
class RowsPhase(SweepPhase):
    """A row program over every row of ``over``, its output row (if any) into ``into``."""
    into: str | None = None
    kind = "rows"

    def writes_output(self) -> bool:
        return bool(self.program.nodes("output"))

    def matrices_read(self) -> set[str]:
        return {self.over} | set(self.program.matrices())

    def matrices_written(self) -> set[str]:
        return {self.into} if self.writes_output() else set()

    def traffic(self, plan) -> tuple[int, int, int, int]:
        pl = plan(self.program)
        return (any(s.reads_x for s in pl.sweeps) + sum(len(s.reloads) for s in pl.sweeps), pl.writes,
                len(pl.sweeps), pl.exps_per_element())

    def copy(self) -> "RowsPhase":
        return RowsPhase(self.program.copy(), self.over, self.into)

    def describe(self) -> str:
        return super().describe() + (f" into {self.into}" if self.writes_output() else "")


@dataclass
class ColsPhase(SweepPhase):
    """A row program run once over the per-column vectors of ``over`` (a "row" of its columns)."""
    kind = "cols"

    def copy(self) -> "ColsPhase":
        return ColsPhase(self.program.copy(), self.over)


@dataclass
class MatMulPhase(Phase):
    """A contraction (``MatMul``), with its fused epilogue if any."""
    mm: MatMul
    kind = "matmul"

    def programs(self) -> list[tuple[Program, str]]:
        return [(self.mm.epilogue, self.mm.dst)] if self.mm.epilogue is not None else []

    def matrices_read(self) -> set[str]:
        epi = set(self.mm.epilogue.matrices()) if self.mm.epilogue is not None else set()
        return {self.mm.a, self.mm.b} | ({self.mm.dst} if self.mm.beta else set()) | epi

    def matrices_written(self) -> set[str]:
        return {self.mm.dst}

    @property
    def swept(self) -> str:
        return self.mm.dst

    def traffic(self, plan) -> tuple[int, int, int, int]:
        if self.mm.epilogue is None:
            return 0, 0, 0, 0
        return 0, 1, 0, plan(self.mm.epilogue).exps_per_element()   # its store of dst

    def flops(self, shape) -> tuple[str, ...]:
        M, N = shape(self.mm.dst)
        K = shape(self.mm.a)[0 if self.mm.layout == "tn" else 1]
        return tuple(sorted((M, N, K)))

    def describe(self) -> str:
        return f"matmul {self.mm}"


@dataclass
class AttentionPhase(Phase):
    """The streaming (flash-style) form of ``S = scale * q @ k^T; rows of S normalised (masked
    softmax); o = S @ v`` (``passes.stream_attention``): per block of ``br`` query rows, one sweep
    over blocks of ``bc`` keys holding per-row state (running max m, sum l) and the br x dv
    accumulator, rescaled by e^(m - m') when m grows (online softmax, docs/ops.md §3 and 10); no Lq x Lk
    matrix. ``program``: the rows program it replaces (the normalizer, kept for plans and
    explain). ``causal``: keys above the bottom-right diagonal dropped (blocks entirely above it
    are skipped); ``mask``: the mask matrix of S's shape, or None, of kind ``mask_kind``: "additive"
    (float32 added to the scores) or "bool" (a uint8 keep-mask). ``normalizer``: "softmax" (online
    rescaling), "stablemax" (no max, no rescaling: per row l and the accumulator, spec §10) or
    "softplus_l1" (as stablemax; rows whose largest kept score is below SOFTPLUS_TINY get a second
    pass over the keys weighted e^(S - max S)) or "lssa" (as stablemax on cosines times
    log(d) log(N_i): q and k are normalised in the kernel, N_i counted per row first) or "lssar"
    (lssa's weights P, their sum l_i and max in a first pass over the keys, P kept per row; then R
    from P, its max known from max P: no rescaling)
    or "topk_softmax" (``top_k``, ``renormalize``: a running top-k per row over the key blocks, then
    the softmax over the kept scores and k gathers of V rows; no accumulator per block).
    ``wide`` (softmax only, else 0): a query block whose keys number at most ``wide`` takes them
    all as one block: a br x wide score tile, exact two-pass softmax (max; exp and sum; P V), no
    rescale, o written once; 0: always key blocks of ``bc``."""
    q: str
    k: str
    v: str
    o: str
    scale: float
    program: Program
    causal: bool = False
    mask: str | None = None
    normalizer: str = "softmax"
    br: int = 4
    bc: int = 64
    mask_kind: str = "additive"
    wide: int = 0
    top_k: int = 0
    renormalize: bool = True
    kind = "attention"

    def matrices_read(self) -> set[str]:
        return {self.q, self.k, self.v} | ({self.mask} if self.mask else set())

    def matrices_written(self) -> set[str]:
        return {self.o}

    def traffic(self, plan) -> tuple[int, int, int, int]:
        return 0, 0, 1, 1     # one sweep over the keys, one exp per score; its flops are the two GEMMs'

    def scratch(self, network_max_k: int) -> str:
        """What the phase allocates beyond K^T, for the header and manifest ("" if nothing): top-k
        above the target's insertion network (``network_max_k``) keeps a score tile per task."""
        if self.normalizer != "topk_softmax" or self.top_k <= network_max_k:
            return ""
        return (f"a {self.br} x lk float32 score tile per (batch, head, query chunk) task (top-k attention, top_k "
                f"{self.top_k} > {network_max_k}: radix select; no lq x lk matrix)")

    def describe(self) -> str:
        mask = (" + " if self.mask_kind == "additive" else " keep ") + self.mask if self.mask else ""
        masks = "".join([mask, ", causal" if self.causal else ""])
        state = "m, l and a {} x dv accumulator, rescaled by e^(m - m')" if self.normalizer == "softmax" else \
            "l and a {} x dv accumulator, no rescaling"
        if self.normalizer == "lssar":
            state = ("l and max P (a first pass over the keys, P kept in {} rows of Lk), then (R / max R)^p from "
                     "P (max R from max P): the sum and a {} x dv accumulator, no rescaling")
        if self.normalizer == "softplus_l1":
            state += "; rows whose largest kept score is below SOFTPLUS_TINY: a second pass weighted e^(S - max S)"
        if self.normalizer == "topk_softmax":
            state = (f"a running top-{self.top_k} (key, index) selection"
                     + ("" if self.renormalize else " and the full row's m, l") + ", then the softmax over the kept "
                     f"scores ({'renormalized' if self.renormalize else 'full-row probabilities'}) and "
                     f"{self.top_k} gathers of {self.v} rows")
        wide = (f"; a query block with at most {self.wide} keys takes them as one block (single-block mode: a "
                f"{self.br} x {self.wide} score tile, exact two-pass softmax, no rescale)") if self.wide else ""
        return (f"attention (streaming) {self.o} = {self.normalizer}({self.scale!r} * {self.q} @ {self.k}^T{masks}) "
                f"@ {self.v}: query blocks of {self.br} rows x key blocks of {self.bc}; per row "
                + state.format(self.br, self.br) + wide)


@dataclass
class PoolPhase(Phase):
    """``dst``'s m rows are the means of consecutive segments of ``src``'s n rows: row i averages
    rows lo_i <= r < hi_i, lo_i = floor(i n / m), hi_i = ceil((i + 1) n / m) (``reference.
    soft_landmark_segments``: groups of n / m when m divides n, else torch's adaptive average
    pooling), summed in row order in float32 and divided by the count (n = 0: 0/0, NaN rows).
    SOFT's landmarks pooled from the tokens inside the kernel; the matrix entry lowers it itself
    (``backends.entry``: n d adds, no contraction), for every backend."""
    src: str
    dst: str
    kind = "pool"

    def matrices_read(self) -> set[str]:
        return {self.src}

    def matrices_written(self) -> set[str]:
        return {self.dst}

    def traffic(self, plan) -> tuple[int, int, int, int]:
        return 1, 0, 1, 0     # one read of src (its rows); dst is m x d, next to nothing

    def describe(self) -> str:
        return f"pool {self.dst} = segment means of {self.src}'s rows"


@dataclass
class LoopPhase(Phase):
    """``body`` repeated ``count`` times; ``swaps``: pairs of scratch matrices exchanged after
    every iteration."""
    count: int = 0
    body: list[Phase] = field(default_factory=list)
    swaps: tuple[tuple[str, str], ...] = ()
    kind = "loop"

    def leaves(self):
        yield from walk(self.body)

    def counted(self, times: int = 1):
        for ph in self.body:
            yield from ph.counted(times * self.count)


def walk(phases: list[Phase]):
    """Every rows/cols/matmul phase, in execution order of one iteration (loop bodies once)."""
    for ph in phases:
        yield from ph.leaves()


class MatrixProgram:
    """The phases of one matrix op, with its build-time parameters and declarations."""

    def __init__(self, name: str, params: dict | None = None, dims=("m", "n"),
                 inputs: dict | None = None, outputs: dict | None = None):
        self.name = name
        self.params = dict(params or {})
        self.dims = tuple(dims)
        self.inputs = dict(inputs if inputs is not None else {"x": ("m", "n")})
        self.outputs = dict(outputs if outputs is not None else {"y": ("m", "n")})
        self.scratch_mats: dict[str, tuple[str, str]] = {}
        # dimensions fixed at build time (e.g. SOFT's landmark count): not arguments of the ABI
        self.fixed_dims: dict[str, int] = {}
        # attention forms that are not streaming (Sinkhorn, SOFT) on abi.ATTENTION's explicit
        # per-(batch, head) strides: q, k, v[, mask] in, o out; the entry loops batch x heads
        self.strided = False
        # a strided program's lq x lk scores scratch whose key columns >= kv_lengths[b] the entry
        # sets to -inf once the NT GEMM has written it (an additive -inf mask: kv_lengths honoured;
        # a rows phase fused into that GEMM's store must keep -inf scores -inf, as a mask addition)
        self.key_padding: str | None = None
        # a strided program's per-row vector (an ``emit`` of its normalizer's rows phase: the
        # row's log-sum-exp, or the log of its weights' sum) the entry copies to abi.ATTENTION's
        # optional lse output; lowering keeps the emit though no phase reads it
        self.lse: str | None = None
        self.phases: list[Phase] = []
        self.notes: list[str] = []
        self._open = [self.phases]   # the phase list new phases go to (a loop body inside `loop`)

    def like(self) -> "MatrixProgram":
        """An empty program with the same name, parameters and declarations."""
        mp = MatrixProgram(self.name, self.params, self.dims, self.inputs, self.outputs)
        mp.scratch_mats = dict(self.scratch_mats)
        mp.fixed_dims = dict(self.fixed_dims)
        mp.strided = self.strided
        mp.key_padding = self.key_padding
        mp.lse = self.lse
        return mp

    # -- construction -------------------------------------------------------------------------
    def scratch(self, name: str, shape: tuple[str, str]) -> str:
        """Declare a scratch matrix (allocated once per call, reused for every matrix)."""
        self.scratch_mats[name] = tuple(shape)
        return name

    def _add(self, ph: Phase) -> Phase:
        self._open[-1].append(ph)
        return ph

    def _program(self, phase: str) -> Program:
        return Program(f"{self.name}.{sum(1 for _ in walk(self.phases))}", self.params, phase=phase)

    def rows(self, over: str = "x", into: str | None = None) -> Value:
        """Start a rows phase over matrix ``over``; returns its input row. Its output (if any)
        goes to ``into`` (default: the program's output matrix when there is exactly one)."""
        if into is None and len(self.outputs) == 1:
            into = next(iter(self.outputs))
        p = self._program("rows")
        self._add(RowsPhase(p, over=over, into=into))
        return p.input()

    def cols(self, over: str = "x") -> Program:
        """Start a cols phase over the per-column vectors of matrix ``over``; read them with
        ``colvec``."""
        p = self._program("cols")
        self._add(ColsPhase(p, over=over))
        return p

    def matmul(self, dst: str, a: str, b: str, layout: str = "nn", alpha: float = 1.0,
               beta: float = 0.0) -> None:
        """``dst = alpha * a @ b + beta * dst`` (``nn``), ``alpha * a @ b^T + beta * dst``
        (``nt``) or ``alpha * a^T @ b + beta * dst`` (``tn``); ``beta == 0`` never reads dst."""
        self._add(MatMulPhase(MatMul(dst, a, b, layout, float(alpha), float(beta))))

    def pool(self, dst: str, src: str) -> None:
        """``dst``'s rows = the means of consecutive segments of ``src``'s rows (``PoolPhase``)."""
        self._add(PoolPhase(src, dst))

    @contextlib.contextmanager
    def loop(self, count: int, swap=()):
        """``with mp.loop(n, swap=[("v", "w")]): ...``: the phases added in the block run n
        times; after each iteration the paired scratch matrices exchange roles."""
        ph = self._add(LoopPhase(count=count, swaps=tuple(tuple(s) for s in swap)))
        self._open.append(ph.body)
        try:
            yield ph
        finally:
            self._open.pop()

    # -- queries ------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[str, str]:
        for table in (self.inputs, self.outputs, self.scratch_mats):
            if name in table:
                return table[name]
        raise IRError(f"{self.name}: no matrix named {name!r}")

    def role(self, name: str) -> str:
        return "input" if name in self.inputs else "output" if name in self.outputs else "scratch"

    def leaves(self) -> list[Phase]:
        """The rows/cols/matmul phases in order (loop bodies once): index k is phase k."""
        return list(walk(self.phases))

    def attention_tasks(self) -> "AttentionPhase | None":
        """The streaming attention phase when it is the whole program (no other phase, no scratch
        matrix): its entry point then splits batch x query blocks across the thread pool
        (``<name>_mt``); None for every other program (they run on one thread)."""
        leaves = self.leaves()
        if len(leaves) == 1 and len(self.phases) == 1 and isinstance(leaves[0], AttentionPhase) \
                and not self.scratch_mats:
            return leaves[0]
        return None

    def programs(self) -> list[tuple[Phase, Program, str]]:
        """(phase, row program, matrix it runs over) of every rows/cols phase and epilogue."""
        return [(ph, p, over) for ph in self.leaves() for p, over in ph.programs()]

    def vector_dims(self) -> dict[str, str]:
        """Every per-row/per-column vector and its length (a dimension)."""
        dims: dict[str, str] = {}
        for ph, p, over in self.programs():
            r, c = self.shape(over)
            rows, cols = p.vector_names()
            for names, dim in ((rows, r), (cols, c)):
                for v in names:
                    if dims.setdefault(v, dim) != dim:
                        raise IRError(f"{self.name}: vector {v!r} has length {dims[v]} in one phase "
                                      f"and {dim} in another")
        return dict(sorted(dims.items()))

    def scalars(self) -> dict[str, float]:
        """Every per-matrix scalar and the initial value of the reduction that writes it."""
        out = {}
        for _, p, _ in self.programs():
            for v in p.nodes():
                if p.kind(v) == "mreduce":
                    out[p.attrs(v)["name"]] = MREDUCE_INIT[p.op(v)]
        return dict(sorted(out.items()))

    def index_dims(self) -> list[str]:
        """The dimensions some phase indexes with a float32 element index (``index``: its matrix's
        columns) or row index (``row_index``: its rows): the entry point checks them <= 2^24."""
        dims = set()
        for _, p, over in self.programs():
            r, c = self.shape(over)
            if p.nodes("index"):
                dims.add(c)
            if p.nodes("row_index"):
                dims.add(r)
        return sorted(dims)

    def abi(self) -> KernelABI:
        """The exported entry point: unary (one input x, one output y of the same shape) or
        general."""
        ins = tuple(self.inputs.items())
        outs = tuple(self.outputs.items())
        unary = len(ins) == len(outs) == 1 and ins[0][0] == "x" and outs[0][0] == "y" \
            and ins[0][1] == outs[0][1]
        ph = self.attention_tasks()
        dims = tuple(d for d in self.dims if d not in self.fixed_dims)
        if ph is not None:   # streaming attention: explicit heads and strides (abi.ATTENTION)
            return KernelABI.attention(ins, outs, dims, ph.mask_kind if ph.mask else None,
                                       max_n=INDEX_MAX_N if ph.normalizer == "topk_softmax" else None)
        if self.strided:     # the same entry for a form that is not streaming (ETOOLONG: indexed dims)
            indexed = [d for d in self.index_dims() if d not in self.fixed_dims]
            kind = ("bool" if self.params.get("mask") == "bool" else "additive") if "mask" in self.inputs else None
            return replace(KernelABI.attention(ins, outs, dims, kind,
                                               landmarks="landmarks" in self.inputs),
                           max_n=INDEX_MAX_N if indexed else None, mask_rows="mask" in self.inputs)
        return KernelABI(UNARY if unary else GENERAL, ins, outs, dims,
                         max_n=INDEX_MAX_N if self.index_dims() else None,
                         threads=self.attention_tasks() is not None)

    # -- checking -----------------------------------------------------------------------------
    def _check_names(self) -> None:
        mats = {**self.inputs, **self.outputs, **self.scratch_mats}
        if len(mats) != len(self.inputs) + len(self.outputs) + len(self.scratch_mats):
            raise IRError(f"{self.name}: a matrix name is declared twice")
        if not self.inputs or not self.outputs:
            raise IRError(f"{self.name}: needs at least one input and one output matrix")
        names = list(mats) + list(self.dims) + [f"ld{m}" for m in mats]
        bad = [nm for nm in names if not c_name_ok(nm) or nm in _ENTRY_NAMES]
        if bad or len(set(names)) != len(names):
            raise IRError(f"{self.name}: matrix/dimension names must be distinct lower-case C "
                          f"identifiers, not {sorted(_ENTRY_NAMES)}: {bad or names}")
        for nm, shape in mats.items():
            if len(shape) != 2 or any(d not in self.dims for d in shape):
                raise IRError(f"{self.name}: matrix {nm} has shape {shape}, not two of the "
                              f"dimensions {self.dims}")
        unused = set(self.dims) - {d for s in mats.values() for d in s}
        if unused:
            raise IRError(f"{self.name}: dimensions {sorted(unused)} are not used")
        if self.strided and (set(self.inputs) - {"mask", "landmarks"} != {"q", "k", "v"} or set(self.outputs) != {"o"}
                             or set(self.dims) - set(self.fixed_dims) - set(ATTENTION_DIMS)
                             - ({"m"} if "landmarks" in self.inputs else set())):
            raise IRError(f"{self.name}: a strided (abi.ATTENTION) program has inputs q, k, v[, mask][, landmarks "
                          f"(m x d)], output o and the dimensions {ATTENTION_DIMS}[, m] (or fixed ones)")
        for d, size in self.fixed_dims.items():
            if d not in self.dims or isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 2 ** 24:
                raise IRError(f"{self.name}: fixed dimension {d}={size!r} must be a dimension, an integer in [1, 2^24]")
            if any(d in s for s in (*self.inputs.values(), *self.outputs.values())):
                raise IRError(f"{self.name}: fixed dimension {d} sizes an input or output (it is not an argument)")
        abi = self.abi()
        if abi.style == "unary" and (abi.inputs[0][1][0] not in self.dims or len(self.dims) > 2):
            raise IRError(f"{self.name}: a unary program has at most the two dimensions of x")

    def _check_phases(self, phases: list[Phase], mats: set, vecs: set, scalars: set) -> None:
        for ph in phases:
            if isinstance(ph, LoopPhase):
                if not (isinstance(ph.count, int) and ph.count >= 0):
                    raise IRError(f"{self.name}: a loop count must be an integer >= 0, got {ph.count!r}")
                m2, v2, s2 = set(mats), set(vecs), set(scalars)
                self._check_phases(ph.body, m2, v2, s2)
                for a, b in ph.swaps:
                    if self.role(a) != "scratch" or self.role(b) != "scratch" or a == b \
                            or self.shape(a) != self.shape(b):
                        raise IRError(f"{self.name}: loop swaps distinct scratch matrices of one "
                                      f"shape, not {a!r} and {b!r}")
                    if not {a, b} <= m2:
                        raise IRError(f"{self.name}: loop swaps {a!r} and {b!r}, which the body "
                                      f"does not both write")
                if ph.count:
                    mats |= m2
                    vecs |= v2
                    scalars |= s2
                continue
            if not isinstance(ph, (SweepPhase, MatMulPhase, AttentionPhase, PoolPhase)):
                raise IRError(f"{self.name}: unknown phase kind {ph.kind!r}")
            for nm in ph.matrices_named():
                self.shape(nm)
            missing = ph.matrices_read() - mats
            if missing:
                raise IRError(f"{self.name}: a {ph.kind} phase reads matrices {sorted(missing)} "
                              f"before any phase writes them")
            if ph.matrices_written() & set(self.inputs):
                raise IRError(f"{self.name}: a {ph.kind} phase writes an input matrix")
            if isinstance(ph, MatMulPhase):
                mm = ph.mm
                if mm.layout not in LAYOUTS:
                    raise IRError(f"{self.name}: matmul layout must be one of {LAYOUTS}, got {mm.layout!r}")
                (ar, ak), (br, bc), (dr, dc) = self.shape(mm.a), self.shape(mm.b), self.shape(mm.dst)
                if mm.layout == "tn":
                    ar, ak = ak, ar
                bk, bn = (bc, br) if mm.layout == "nt" else (br, bc)
                if ak != bk or (dr, dc) != (ar, bn):
                    raise IRError(f"{self.name}: matmul {mm}: shapes {mm.a} {(ar, ak)}, {mm.b} "
                                  f"{(br, bc)}, {mm.dst} {(dr, dc)} do not agree")
                if mm.dst in (mm.a, mm.b):
                    raise IRError(f"{self.name}: matmul {mm}: the destination is an operand")
                if not all(isinstance(v, float) and math.isfinite(v) for v in (mm.alpha, mm.beta)):
                    raise IRError(f"{self.name}: matmul alpha and beta must be finite floats")
                p = mm.epilogue
            elif isinstance(ph, AttentionPhase):
                p = None      # its program is the rows phase it replaced, checked there
            elif isinstance(ph, PoolPhase):
                if self.shape(ph.src)[1] != self.shape(ph.dst)[1] or ph.src == ph.dst:
                    raise IRError(f"{self.name}: pool {ph.dst} {self.shape(ph.dst)} from {ph.src} "
                                  f"{self.shape(ph.src)}: another matrix with the same columns")
                p = None
            else:
                p = ph.program
            if p is not None:
                self._check_program(ph, p, vecs, scalars)
            mats |= ph.matrices_written()

    def _check_program(self, ph: Phase, p: Program, vecs: set, scalars: set) -> None:
        p.validate()
        if p.fallback is not None or p.nodes("guard"):
            raise IRError(f"{self.name}: phases cannot have guards")
        if p.phase == "cols" and (p.nodes("param") or p.nodes("emit") or p.nodes("row_index")
                                  or p.nodes("output")):
            raise IRError(f"{self.name}: a cols phase has no per-row vectors, row index or output")
        if ph.writes_output():
            if ph.into is None:
                raise IRError(f"{self.name}: a rows phase with an output needs into=")
            if self.shape(ph.into) != self.shape(ph.over):
                raise IRError(f"{self.name}: a rows phase over {ph.over} {self.shape(ph.over)} "
                              f"writes {ph.into} {self.shape(ph.into)}")
        swept = ph.swept
        for nm in p.matrices():
            if p.phase != "rows" or self.shape(nm) != self.shape(swept) or nm in (swept, ph.into):
                raise IRError(f"{self.name}: phase {p.name} reads matrix {nm!r} element-wise: only "
                              f"a rows phase can, from a matrix of its shape other than the one it "
                              f"sweeps or writes")
        reads = {p.attrs(v)["name"] for v in p.nodes() if p.op(v) in ("param", "colvec")}
        missing = reads - vecs
        if missing:
            raise IRError(f"{self.name}: phase {p.name} reads {sorted(missing)} before any phase "
                          f"writes them")
        read_s, wrote_s = p.mscalar_names()
        if set(read_s) - scalars:
            raise IRError(f"{self.name}: phase {p.name} reads per-matrix scalars "
                          f"{sorted(set(read_s) - scalars)} before any phase writes them")
        if set(wrote_s) & (scalars | set(read_s)):
            raise IRError(f"{self.name}: per-matrix scalars {sorted(set(wrote_s) & (scalars | set(read_s)))} "
                          f"are written twice or read by the phase that writes them")
        vecs |= written_by(p)
        scalars |= set(wrote_s)

    def _check_in_place(self) -> None:
        """The unary ABI lets y be x: once a phase writes y, no phase may read x, except the rows
        phase that writes y row by row from x. y is written outside loops only."""
        for ph in self.phases:
            if isinstance(ph, LoopPhase) and any("y" in q.matrices_written() for q in ph.leaves()):
                raise IRError(f"{self.name}: y (which may be x) is written inside a loop")
        seq = self.leaves()
        first = next((k for k, ph in enumerate(seq) if "y" in ph.matrices_written()), len(seq))
        for k, ph in enumerate(seq[first:], first):
            row_local = k == first and isinstance(ph, RowsPhase) and ph.into == "y"
            if "x" in ph.matrices_read() and not row_local:
                raise IRError(f"{self.name}: a phase reads x after y (which may be x) is written")

    def validate(self) -> "MatrixProgram":
        if len(self._open) != 1:
            raise IRError(f"{self.name}: a loop block is still open")
        self._check_names()
        mats, vecs, scalars = set(self.inputs), set(), set()
        self._check_phases(self.phases, mats, vecs, scalars)
        unwritten = set(self.outputs) - mats
        if unwritten:
            raise IRError(f"{self.name}: output matrices {sorted(unwritten)} are never written")
        self.vector_dims()
        if self.abi().style == "unary":
            self._check_in_place()
        return self

    def __str__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        decl = lambda d: ", ".join(f"{k}[{']['.join(s)}]" for k, s in d.items())  # noqa: E731
        out = [f"matrix program {self.name}({ps})",
               f" dims {', '.join(self.dims)}; inputs {decl(self.inputs)}; outputs {decl(self.outputs)}"
               + (f"; scratch {decl(self.scratch_mats)}" if self.scratch_mats else "")]
        counter = [0]

        def show(phases, ind):
            for ph in phases:
                if isinstance(ph, LoopPhase):
                    sw = "".join(f", swap {a} <-> {b}" for a, b in ph.swaps)
                    out.append(f"{ind}loop {ph.count} times{sw}:")
                    show(ph.body, ind + "  ")
                    continue
                k = counter[0]
                counter[0] += 1
                out.append(f"{ind}phase {k}: {ph.describe()}")
                for p, _ in ph.programs():
                    out.extend(f"{ind}  " + ln for ln in str(p).splitlines()[1:])
        show(self.phases, " ")
        return "\n".join(out)


def map_phases(phases: list[Phase], fn) -> list[Phase]:
    """A copy of the phase tree with ``fn(list of leaf-level phases) -> list`` applied to every
    phase list (the top level and each loop body)."""
    out = []
    for ph in phases:
        out.append(replace(ph, body=map_phases(ph.body, fn)) if isinstance(ph, LoopPhase) else ph)
    return fn(out)
