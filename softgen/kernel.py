"""The Python API: ``compile`` an op into a ``Kernel`` callable on NumPy arrays."""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from . import export as aot
from . import ops as _ops
from . import passes
from .abi import ERRORS, KernelABI, failure
from .analysis import MatrixPlan
from .backends import Artifact, Backend, get_backend
from .cnames import name_clash
from .emulator import load_emulated
from .errors import TargetNotSupportedError, UsageError
from .matrix import MatrixProgram
from .ir import Program
from .schedule import Schedule, default_schedule
from .runtime import load_entry, open_shared
from .targets import Target, get_target

try:  # the C extension built at install time; without it calls go through ctypes (~1 us more)
    from ._fastcall import call as _fastcall
except ImportError:  # pragma: no cover - depends on the install
    _fastcall = None

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_name(name: str) -> str:
    """A kernel name becomes an exported C symbol, a file name and the stem of header macros: a
    plain C identifier that collides with nothing a host program or the generated code declares
    (``cnames``)."""
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise UsageError(f"invalid kernel name {name!r}: use a C identifier of at most 64 "
                         f"characters ([A-Za-z_][A-Za-z0-9_]*)")
    why = name_clash(name, [e.suffix for e in ERRORS])
    if why:
        raise UsageError(f"invalid kernel name {name!r}: {why}; choose another name "
                         f"(e.g. a prefix of your own)")
    return name


def choose_algorithm(program: Program, target: str, algorithm: str) -> str:
    algorithm = passes.ALIASES.get(algorithm, algorithm)
    applicable = passes.applicable_algorithms(program)
    if algorithm == "auto":
        prefs = get_target(target).auto_algorithms   # the target file's preference
        return next(a for a in prefs + tuple(applicable) if a in applicable)
    if algorithm not in passes.ALGORITHMS:
        raise UsageError(f"unknown algorithm {algorithm!r}; known: auto, {', '.join(passes.ALGORITHMS)}")
    if algorithm not in applicable:
        raise UsageError(f"algorithm {algorithm!r} does not apply to op {program.name!r}; "
                         f"it has: {', '.join(applicable)}")
    return algorithm


@dataclass
class Kernel:
    """A generated kernel: ``y = k(x)`` normalises the last axis of a float32 array."""

    op: str
    algorithm: str
    target: Target
    schedule: Schedule
    name: str
    params: dict
    program: Program            # the IR after the algorithm's rewrite
    source: str                 # what the backend generated: the C, or e.g. a TensorIR script (tvm)
    backend: str = "c"          # the backend's name (softgen.backends.get_backend)
    wrapper: str = ""           # when source is not C: the C entry point around it
    _fn: object = field(default=None, repr=False)
    _emu_fn: object = field(default=None, repr=False)

    @property
    def matrix(self) -> bool:
        """Whether the kernel acts on matrices (the last two axes) rather than rows."""
        return isinstance(self.program, MatrixProgram)

    @property
    def plan(self) -> passes.Plan | "MatrixPlan":
        return MatrixPlan(self.program) if self.matrix else passes.plan(self.program)

    @property
    def abi(self):
        """The C ABI of a matrix kernel (``abi.KernelABI``), None for a row kernel."""
        return self.program.abi() if self.matrix else None

    @property
    def _abi(self) -> KernelABI:
        """The C entry point, for every kind of kernel (``abi``: matrix kernels only, for callers)."""
        return self.program.abi() if self.matrix else KernelABI.of_rows(self.program)

    @property
    def row_params(self) -> list[str]:
        """Per-row parameters of the C entry point (after ``ldy``), one float per row each."""
        return [] if self.matrix else self.program.row_params()

    @property
    def selected(self) -> bool:
        """A selected (sparse) output: calls return (indices, weights) of the min(k, n) selected
        entries per row instead of a row like x."""
        return not self.matrix and self.program.op(self.program.output()) == "output_selected"

    @property
    def runnable(self) -> bool:
        """Whether this CPU can execute the kernel natively."""
        return self.target.runnable

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"<softgen.Kernel {self.name}: {self.op}({ps}) algorithm={self.algorithm} "
                f"target={self.target.name} {self.schedule}>")

    # -- execution ------------------------------------------------------------------------------
    def _entry(self, emulate: bool):
        if emulate:
            if self._emu_fn is None:
                self._emu_fn = load_emulated(self.sources(), self.target, self.name,
                                             get_backend(self.backend).simde_emulable, self._abi)
            return self._emu_fn
        if self._fn is None:
            if not self.runnable:
                raise TargetNotSupportedError(
                    f"kernel {self.name} needs target {self.target.name}, which this CPU cannot run "
                    f"(missing: {', '.join(self.target.missing_features())}); build or export it for "
                    f"another machine, call run_emulated(), or compile for target='host'")
            lib = open_shared(self.sources(), self.target, symbols=(self.name,))
            self._fn = load_entry(lib, self.name, self._abi)
        return self._fn

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, **call) -> np.ndarray:
        """y = op(x) along the last axis. ``call``: the op's call-time arguments (e.g. lssa's
        ``n_attended``), from which the per-row parameters are computed."""
        fn = self._fn or self._entry(False)
        if call or self.row_params or self.selected or self.matrix:
            return self._run(fn, x, out, call)
        if _fastcall is not None and type(x) is np.ndarray and (out is None or type(out) is np.ndarray):
            # Fast path: float32 rows with one stride, x and y identical or disjoint. Anything
            # else comes back NotImplemented and takes the general path below.
            y = np.empty(x.shape, np.float32) if out is None else out
            rc = _fastcall(fn._softgen_ptr, x, y)
            if rc == 0:
                return y
            if rc is not NotImplemented:
                raise failure(self.name, rc)
        return self._run(fn, x, out)

    def run_emulated(self, x: np.ndarray, out: np.ndarray | None = None, **call) -> np.ndarray:
        """Run through an emulator instead of the CPU: SIMDe for x86 ISAs on an x86 host, qemu
        user mode for other architectures (e.g. neon on x86). For testing kernels whose ISA this
        machine lacks; much slower than a native call."""
        return self._run(self._entry(True), x, out, call)

    def run_emulated_many(self, xs, outs=None, calls=None) -> list[np.ndarray]:
        """``run_emulated`` over many inputs, in one emulator process where that matters (qemu).
        ``calls``: per input, a dict of call-time arguments."""
        fn = self._entry(True)
        outs = [None] * len(xs) if outs is None else outs
        calls = [{}] * len(xs) if calls is None else calls
        with getattr(fn, "batch", contextlib.nullcontext)():
            return [self._run(fn, x, o, c) for x, o, c in zip(xs, outs, calls)]

    def _check_input(self, x) -> np.ndarray:
        """``x`` as the array the kernel takes; a NumPy scalar counts as a 0-d array."""
        if type(x) is not np.ndarray:
            if isinstance(x, np.generic):
                x = np.asarray(x)
            elif not isinstance(x, np.ndarray):
                raise TypeError(f"{self.name} takes a numpy.ndarray of float32, got {type(x).__name__} "
                                f"(use np.asarray(x, np.float32))")
        if x.dtype != np.float32:
            raise TypeError(f"{self.name} takes float32 arrays, got {x.dtype} (use x.astype(np.float32))")
        if x.ndim < 1 + self.matrix:
            what = "two axes (..., m, n)" if self.matrix else "one axis"
            hint = " (NumPy scalars and 0-d arrays have no axis)" if x.ndim == 0 else ""
            raise ValueError(f"{self.name} needs an array with at least {what}, got shape {x.shape}{hint}")
        if self.matrix and self.abi.square and x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{self.name} ({self.op}) needs square matrices (..., m, m), got shape {x.shape}")
        return x

    def _run_selected(self, fn, x, out, call):
        """(indices int64, weights float32), shape x.shape[:-1] + (min(k, n),)."""
        x = self._check_input(x)
        if out is not None:
            raise TypeError(f"{self.name} returns new (indices, weights) arrays; it takes no out=")
        _ops.get_op(self.op).row_arguments([], x.shape, self.params, call or {})  # rejects call args
        n = x.shape[-1]
        k = self.program.attrs(self.program.args(self.program.output())[0])["k"]
        m = min(k, n)
        idx = np.empty(x.shape[:-1] + (m,), np.int64)
        w = np.empty(x.shape[:-1] + (m,), np.float32)
        if x.size == 0:
            return idx, w
        lx = _layout(x)
        if lx is None:
            x = np.ascontiguousarray(x)
            x = x if x.flags.aligned else x.copy()
            lx = (x.ctypes.data, n)
        rc = fn(lx[0], idx.ctypes.data, w.ctypes.data, x.size // n, n, lx[1], m)
        if rc:
            raise failure(self.name, rc)
        return idx, w

    def _run(self, fn, x, out, call=None):
        if self.selected:
            return self._run_selected(fn, x, out, call)
        x = self._check_input(x)
        n = x.shape[-1]
        if out is None:
            y = np.empty(x.shape, np.float32)
            ly = (y.ctypes.data, n)
        else:
            y = out
            ly = _out_layout(x, y, self.name)
        rps = _ops.get_op(self.op).row_arguments(self.row_params, x.shape, self.params, call or {})
        if x.size == 0:
            return y
        rows = x.size // n
        lx = _layout(x)
        if lx is None or (out is not None and lx != ly and np.may_share_memory(x, y)
                          and np.shares_memory(x, y)):
            # Last axis not contiguous, rows not evenly strided, misaligned, or x overlaps out
            # without being it: work on a contiguous copy (documented).
            x = np.ascontiguousarray(x).copy() if lx is not None else np.ascontiguousarray(x)
            if not x.flags.aligned:
                x = x.copy()
            lx = (x.ctypes.data, n)
        if ly is None:  # misaligned out: compute into a temporary, then copy
            tmp = self._run(fn, x, None, call)
            if hasattr(fn, "flush"):  # a batching emulator: make tmp real before copying it
                fn.flush()
            np.copyto(y, tmp)
            return y
        extra = [x.shape[-2]] if self.matrix else [a.ctypes.data for a in rps]
        rc = fn(lx[0], ly[0], rows, n, lx[1], ly[1], *extra)
        if rc:
            raise failure(self.name, rc)
        return y

    # -- products -------------------------------------------------------------------------------
    @property
    def artifact(self) -> Artifact:
        """What the backend generated (``softgen.backends.Artifact``), from this kernel's fields."""
        return Artifact(get_backend(self.backend), self.name, self.target, self.source, self.wrapper)

    def sources(self) -> dict:
        """What the C compiler links into the library: C text, and e.g. for TVM its object file."""
        return self.artifact.sources()

    def asm(self, cc: str | None = None) -> str:
        return self.artifact.asm(cc)

    def export(self, directory, name: str | None = None, cc: str | None = None) -> dict:
        """Write lib<name>.so, <name>.h, <name>.json (and <name>.c) into ``directory``."""
        return aot.export(self, directory, name=name, cc=cc)

    def renamed(self, name: str) -> "Kernel":
        return compile(self.op, algorithm=self.algorithm, target=self.target.name, name=name,
                       schedule=self.schedule, backend=self.backend, **self.params)


class MatrixKernel(Kernel):
    """A matrix kernel with the general ABI (``KernelABI``, e.g. two inputs of different shapes):
    ``s = k(a, b)`` takes its input arrays positionally, ``out=`` by keyword."""

    def __call__(self, *inputs, out=None) -> np.ndarray:
        return self._run_inputs(self._fn or self._entry(False), inputs, out)

    def run_emulated(self, *inputs, out=None) -> np.ndarray:
        return self._run_inputs(self._entry(True), inputs, out)

    def run_emulated_many(self, xs, outs=None, calls=None) -> list[np.ndarray]:
        """``run_emulated`` over many tuples of inputs, in one emulator process (qemu)."""
        fn = self._entry(True)
        outs = [None] * len(xs) if outs is None else outs
        with getattr(fn, "batch", contextlib.nullcontext)():
            return [self._run_inputs(fn, x, o) for x, o in zip(xs, outs)]

    def _run_inputs(self, fn, inputs, out):
        abi, names = self.abi, [nm for nm, _ in self.abi.inputs]
        inputs = tuple(np.asarray(a) if isinstance(a, np.generic) else a for a in inputs)
        if len(inputs) != len(names):
            raise TypeError(f"{self.name} ({self.op}) takes {len(names)} arrays ({', '.join(names)}), "
                            f"got {len(inputs)}")
        dims: dict[str, int] = {}
        lead = None
        for (nm, shape), a in zip(abi.inputs, inputs):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{self.name}: {nm} must be a numpy.ndarray of float32, got {type(a).__name__}")
            if a.dtype != np.float32:
                raise TypeError(f"{self.name}: {nm} must be float32, got {a.dtype} (use .astype(np.float32))")
            if a.ndim < 2:
                raise ValueError(f"{self.name}: {nm} needs two axes (..., {', '.join(shape)}), got shape {a.shape}")
            if lead is None:
                lead = a.shape[:-2]
            elif a.shape[:-2] != lead:
                raise ValueError(f"{self.name}: the leading axes of the inputs must be equal (no "
                                 f"broadcasting), got {lead} and {a.shape[:-2]} ({nm})")
            for d, v in zip(shape, a.shape[-2:]):
                if dims.setdefault(d, v) != v:
                    raise ValueError(f"{self.name}: dimension {d} is {dims[d]} in one input and {v} in "
                                     f"{nm} (shape {a.shape}; {self.op} takes "
                                     + ", ".join(f"{n}{list(s)}" for n, s in abi.inputs) + ")")
        (oname, (orow, ocol)), = abi.outputs
        shape = lead + (dims[orow], dims[ocol])
        if out is None:
            y = np.empty(shape, np.float32)
        else:
            y = out
            if not isinstance(y, np.ndarray) or y.dtype != np.float32 or y.shape != shape:
                raise ValueError(f"{self.name}: out must be a float32 array of shape {shape}")
            if not y.flags.writeable:
                raise ValueError(f"{self.name}: out is read-only")
        batch = math.prod(lead)
        if y.size == 0:
            return y
        ly = _layout(y) if y.flags.aligned else None
        if ly is None or any(np.shares_memory(y, a) for a in inputs):
            # out cannot be addressed with one row stride, is misaligned or overlaps an input:
            # compute into a temporary, then copy
            tmp = self._run_inputs(fn, inputs, None)
            if hasattr(fn, "flush"):  # a batching emulator: make tmp real before copying it
                fn.flush()
            np.copyto(y, tmp)
            return y
        arrays, ptrs, lds = [], [], []
        for a in inputs:
            la = _layout(a) if a.size else (a.ctypes.data, a.shape[-1])
            if la is None:   # rows not evenly strided or misaligned: a contiguous copy
                a = np.ascontiguousarray(a)
                a = a if a.flags.aligned else a.copy()
                la = (a.ctypes.data, a.shape[-1])
            arrays.append(a)   # alive across the call
            ptrs.append(la[0])
            lds.append(la[1])
        rc = fn(*ptrs, ly[0], batch, *[dims[d] for d in abi.dims], *lds, ly[1])
        if rc:
            raise failure(self.name, rc)
        return y


def _layout(a: np.ndarray):
    """(data pointer, row stride in elements) if ``a``'s rows can be addressed as base + r*ld with
    a contiguous last axis; None if a copy is needed."""
    n, item = a.shape[-1], a.itemsize
    if a.flags.c_contiguous and a.flags.aligned:
        return a.ctypes.data, n
    if not a.flags.aligned or (n > 1 and a.strides[-1] != item):
        return None
    shape = [(s, st) for s, st in zip(a.shape[:-1], a.strides[:-1]) if s != 1]
    if not shape:
        return a.ctypes.data, n
    for (s0, st0), (s1, st1) in zip(shape, shape[1:]):
        if st0 != st1 * s1:
            return None
    ld, rem = divmod(shape[-1][1], item)
    if rem or ld < n:
        return None
    return a.ctypes.data, ld


def _out_layout(x: np.ndarray, y, name: str):
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name}: out must be a numpy.ndarray, got {type(y).__name__}")
    if y.dtype != np.float32:
        raise TypeError(f"{name}: out must be float32, got {y.dtype}")
    if y.shape != x.shape:
        raise ValueError(f"{name}: out has shape {y.shape}, expected {x.shape}")
    if not y.flags.writeable:
        raise ValueError(f"{name}: out is read-only")
    # None: the C ABI cannot address out (misaligned, a strided last axis, rows not one
    # non-negative stride apart: ld is a size_t); the caller computes into a temporary and copies
    return _layout(y) if y.flags.aligned else None


def compile(op: str = "softmax", *, algorithm: str = "auto", target: str = "host",
            name: str | None = None, schedule: Schedule | dict | None = None, backend: str = "c",
            **params) -> Kernel:
    """Generate (but do not yet build) a kernel for ``op`` on ``target``.

    ``algorithm``: auto | three-pass-recompute | three-pass-reload | two-pass | online.
    ``target``: host | scalar | avx2 | avx512 (building for a target this CPU lacks works; calling
    it raises TargetNotSupportedError). ``params``: the op's parameters (softmax: scale or
    temperature), baked into the kernel. ``schedule``: a Schedule or a dict of its fields.
    ``backend``: a name from ``softgen.backends.names()`` (c, tvm).
    """
    be = get_backend(backend)
    opdef = _ops.get_op(op)
    t = get_target(target)
    program = _ops.build_program(opdef.name, **params)     # the op's IR, its parameters validated
    if opdef.kind == "matrix":
        return _compile_matrix(be, opdef, program, t, algorithm, name, schedule)
    alg = choose_algorithm(program, t.name, algorithm)     # validated once, here
    sched = _schedule(t, schedule)
    lowered = passes.apply_algorithm(program, alg)
    sparse = "_sparse" if lowered.op(lowered.output()) == "output_selected" else ""
    kname = check_name(name) if name is not None else \
        f"softgen_f32_{opdef.name}{sparse}_{passes.SHORT[alg]}__{t.name}_{sched.tag(t.lanes)}{be.suffix}"
    art = be.generate(lowered, t, sched, kname, op=opdef.name, algorithm=alg, params=program.params)
    return Kernel(op=opdef.name, algorithm=alg, target=t, schedule=sched, name=kname,
                  params=dict(program.params), program=lowered, source=art.source, backend=be.name,
                  wrapper=art.wrapper)


def _schedule(t: Target, schedule) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule.validate(t.lanes)
    if schedule is None or isinstance(schedule, dict):
        return default_schedule(t.schedule, t.lanes, **(schedule or {}))
    raise UsageError(f"schedule must be a Schedule or a dict, got {type(schedule).__name__}")


def _compile_matrix(be: Backend, opdef, program: MatrixProgram, t: Target, algorithm: str, name,
                    schedule) -> Kernel:
    if algorithm not in ("auto", "direct"):
        raise UsageError(f"matrix op {opdef.name!r} has one algorithm, 'direct' (its phases); "
                         f"got {algorithm!r}")
    sched = _schedule(t, schedule)
    lowered = passes.lower_matrix(program, epilogues=be.gemm_epilogues)
    kname = check_name(name) if name is not None else \
        f"softgen_f32_{opdef.name}__{t.name}_{sched.tag(t.lanes)}{be.suffix}"
    art = be.generate_matrix(lowered, t, sched, kname, op=opdef.name, params=program.params)
    cls = MatrixKernel if lowered.abi().style == "general" else Kernel
    return cls(op=opdef.name, algorithm="direct", target=t, schedule=sched, name=kname,
               params=dict(program.params), program=lowered, source=art.source, backend=be.name,
               wrapper=art.wrapper)
