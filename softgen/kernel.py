"""The Python API: ``compile`` an op into a ``Kernel`` callable on NumPy arrays."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import arrays, export as aot, ops as _ops, passes
from ._version import __version__
from .abi import ATTENTION, ERRORS, GENERAL, ROW, SELECTED, UNARY, KernelABI, failure
from .analysis import MatrixPlan
from .autotable import (  # noqa: F401 - public names of softgen.kernel before autotable split off
    attention_algorithm,
    attention_why,
    auto_table,
    choose_algorithm,
    measured_why,
    thread_cap,
    tuned_attention,
    tuned_gemm,
    tuned_table,
)
from .backends import Artifact, Backend, get_backend
from .backends.attention import TASK_GRAIN, split_keys, task_rows
from .backends.gemm import fit_rows, schedule_for
from .binding import bind
from .cnames import name_clash
from .costmodel import DispatchTable, ThreadPolicy, matrix_thread_policy, thread_policy
from .dispatch import (
    isa_member_name,
    isa_version_script,
    render_dispatch,
    render_isa_dispatch,
    variant_name,
    version_script,
)
from .emulator import load_emulated
from .errors import TargetNotSupportedError, UsageError
from .ir import Program
from .matrix import MatMulPhase, MatrixProgram
from .runtime import assembly, load_entry, open_shared
from .schedule import GEMM_FIELDS, GemmSchedule, Schedule, default_schedule, given_knobs
from .targets import Target, TargetGroup, all_targets, get_target, host_arch, is_group_spec, target_group

try:  # the C extension built at install time; without it calls go through ctypes (~1 us more)
    from . import _fastcall as _fc
    _fastcall = _fc.call
    _fc.repeat   # an extension built before entries took threads= (or before entries): ctypes then
except (ImportError, AttributeError):  # pragma: no cover - depends on the install
    _fc = _fastcall = None

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
    # algorithm="auto": the dispatch table (ranges of n -> variant, and why); with ``variants``
    # the kernel is a dispatcher (``source``: its dispatch translation unit), else the table's one
    # algorithm is this kernel's
    dispatch: DispatchTable | None = None
    variants: tuple = ()        # a dispatcher's variants (Kernels), in the table's order of use
    tuned: bool = False         # algorithm="auto" whose table came from tuning records (softgen.tune)
    # what threads=auto picks (a dispatcher: per entry of ``dispatch``; matrix kernels: a
    # costmodel.MatrixThreadPolicy, the batch's matrices split across threads)
    thread_policy: ThreadPolicy | None = None
    # a matrix kernel's GEMM tile and blocking when not its target's default ([gemm]): given in
    # its schedule (mr, nv, kc, nc, ku) or from a tuning record (then ``tuned``; why: ``gemm_why``)
    gemm: GemmSchedule | None = None
    gemm_why: str = ""
    _fn: object = field(default=None, repr=False)
    _emu_fn: object = field(default=None, repr=False)
    _mt_fn: object = field(default=None, repr=False)
    _emu_mt_fn: object = field(default=None, repr=False)
    # the loaded entry's fast callable (``_fastcall.entry``: rows without per-row parameters,
    # top-k, unary and general matrix kernels; None for the others or without the extension):
    # ``__call__``'s one test for its fast path (issue 15)
    _fast: object = field(default=None, init=False, repr=False, compare=False)

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
        return self._abi if self.matrix else None

    @cached_property
    def _abi(self) -> KernelABI:
        """The C entry point, for every kind of kernel (``abi``: matrix kernels only, for callers);
        computed once per kernel (calls must not walk the IR)."""
        return self.program.abi() if self.matrix else KernelABI.of_rows(self.program)

    @cached_property
    def _plain(self) -> bool:
        """Dense rows without per-row parameters: calls may take ``_fastcall``."""
        return self._abi.kind == ROW and not self._abi.row_params

    @property
    def row_params(self) -> list[str]:
        """Per-row parameters of the C entry point (after ``ldy``), one float per row each."""
        return list(self._abi.row_params)

    @property
    def selected(self) -> bool:
        """A selected (sparse) output: calls return (indices, weights) of the min(k, n) selected
        entries per row instead of a row like x."""
        return self._abi.kind == SELECTED

    @property
    def dispatcher(self) -> bool:
        """Whether the kernel picks one of several variants per call (``dispatch``)."""
        return bool(self.variants)

    def explain(self, as_json: bool = False) -> str | dict:
        """The IR as defined, each rewrite, the pass plan and bytes moved, and for
        ``algorithm="auto"`` the dispatch table with why each entry was chosen ("model: ...", or
        "measured: ..." once a tuning record supplies the table); a dispatcher shows every variant.
        ``as_json``: the same as a dict (``rewritten_ir``, ``plan``, ``traffic``: of the first
        variant; ``variants``: all of them; ``dispatch``: the table, or None)."""
        original = _ops.build_program(self.op, **self.params)
        parts = list(self.variants) or [self]
        if as_json:
            pl = self.plan
            return {"op": self.op, "params": self.params, "algorithm": self.algorithm,
                    "target": self.target.name, "schedule": self.schedule.as_dict(), "name": self.name,
                    "tuned": self.tuned,
                    "threads": None if self.dispatch is not None else
                    (self.thread_policy or ThreadPolicy()).__dict__,
                    "gemm": None if self.gemm is None else {
                        **self.gemm.as_dict(), "why": self.gemm_why or "given"},
                    "ir": str(original), "rewritten_ir": str(self.program), "rewrites": self.program.notes,
                    "plan": pl.describe().splitlines(), "traffic": pl.traffic(),
                    "dispatch": None if self.dispatch is None else {
                        "source": self.dispatch.source, "basis": self.dispatch.basis,
                        "entries": self.dispatch.as_list()},
                    "variants": [{"name": v.name, "algorithm": v.algorithm, "schedule": v.schedule.as_dict(),
                                  "rewritten_ir": str(v.program),
                                  "rewrites": v.program.notes, "plan": v.plan.describe().splitlines(),
                                  "traffic": v.plan.traffic()} for v in parts]}
        tuned = f"\n# tuned: {'yes (tuning database)' if self.tuned else 'no'}" if self.dispatch is not None else ""
        if self.gemm is not None:
            tuned += f"\n# gemm: {self.gemm} ({self.gemm_why or 'given'})"
        elif self.tuned and self.gemm_why:   # streaming attention: tuned blocks
            tuned += f"\n# attention blocks: tuned ({self.gemm_why})"
        threads = f"\n# {self.explain_threads()}" if self.explain_threads() else ""
        if self.matrix and self.algorithm in ("streaming", "three-phase"):   # attention: which form, why
            threads += f"\n# attention form: {self.algorithm}: " \
                f"{attention_why(get_backend(self.backend), original, self.algorithm)}"
            if self.params.get("normalizer") == "topk_softmax":
                threads += f"; {self.target.topk_stream_rule(int(self.params['top_k']))}"
        out = [f"# {self.name}\n# target {self.target.name} ({self.target.lanes} lanes), schedule {self.schedule}"
               f"{tuned}{threads}\n",
               "## IR as defined\n" + str(original) + "\n"]
        if self.dispatch is not None:
            out.append("## " + self.explain_dispatch() + "\n")
        for v in parts:
            head = f"## variant {v.name}: " if self.dispatcher else "## "
            out.append(f"{head}after the '{v.algorithm}' rewrite" + "".join(f"\n# {n}" for n in v.program.notes))
            out.append(str(v.program) + "\n")
            out.append("## pass plan\n" + v.plan.describe() + ("\n" if self.dispatcher else ""))
        return "\n".join(out).rstrip("\n") + "\n"

    def explain_threads(self) -> str:
        """What ``threads=None``/0 (auto) does for this kernel, one line."""
        if self.matrix:
            ph = self.program.attention_tasks()
            if ph is not None:
                sk = split_keys(ph) if get_backend(self.backend).split_decoding else 0
                return f"threads (auto): the (batch, head, query chunk of {task_rows(ph)} rows) tasks" + \
                    (f" (decoding, lq <= 16 and lk >= {2 * sk}: (batch, head, chunk of {sk} keys) tasks, "
                     "merged per head)" if sk else "") + \
                    f", one thread per {TASK_GRAIN} multiply-adds, capped by the CPUs and SOFTGEN_NUM_THREADS"
            return f"threads (auto): the batch's matrices split across threads, " \
                f"{(self.thread_policy or ThreadPolicy()).describe()}, capped by the CPUs, " \
                "SOFTGEN_NUM_THREADS and the batch (one matrix: one thread)"
        if self.dispatch is not None:
            return "threads (auto): per dispatch entry, see its threads= column"
        return f"threads (auto): {(self.thread_policy or ThreadPolicy()).describe()}, capped by the CPUs " \
            "and SOFTGEN_NUM_THREADS"

    def explain_dispatch(self) -> str:
        """The dispatch table and why each entry was chosen ("" unless algorithm was auto)."""
        if self.dispatch is None:
            return ""
        lines = self.dispatch.lines()
        if not self.dispatcher:
            lines[0] += f" one variant wins at every size: a single {self.algorithm} kernel"
        return "\n".join(lines)

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
                                             get_backend(self.backend).simde_emulable, self._abi,
                                             file_targets=self.file_targets())
            return self._emu_fn
        if self._fn is None:
            if not self.runnable:
                raise TargetNotSupportedError(
                    f"kernel {self.name} needs target {self.target.name}, which this CPU cannot run "
                    f"(missing: {', '.join(self.target.missing_features())}); build or export it for "
                    f"another machine, call run_emulated(), or compile for target='host'")
            lib = open_shared(self.sources(), self.target, symbols=(self.name,), file_targets=self.file_targets())
            self._fn = load_entry(lib, self.name, self._abi)
            self._fast = self._fast_entry(self._fn._softgen_ptr, self._mt_ptr()) if _fc is not None else None
        return self._fn

    def _mt_ptr(self) -> int | None:
        """The address of the loaded ``<name>_mt`` (its ``_fastcall.entry`` calls it for
        ``threads=``), or None (no such entry)."""
        if not self._abi.threaded:
            return None
        try:
            self._mt_fn = load_entry(self._fn._softgen_handle, self.name, self._abi, mt=True)
        except AttributeError:   # a library without <name>_mt: threads= calls take ctypes
            return None
        return self._mt_fn._softgen_ptr

    def _fast_entry(self, ptr: int, mt: int | None = None):
        """``_fastcall.entry`` for the loaded entry point at ``ptr`` (and ``<name>_mt`` at ``mt``),
        or None (not a fast kind)."""
        kind = self._abi.kind
        if kind == ROW and self._plain or kind == UNARY:
            return _fc.entry(ptr, kind, None, mt)
        if kind == SELECTED:
            return _fc.entry(ptr, kind, self._abi.k, mt)
        return None

    def _mt_entry(self, threads) -> tuple:
        """(the extended entry ``<name>_mt``, ``threads`` as a C int): an int >= 0 is 0 auto, N
        at most N; a negative one reaches C, which returns ETHREADS (a UsageError)."""
        threads = _thread_count(threads)
        if self._mt_fn is None:
            self._mt_fn = load_entry(self._entry(False)._softgen_handle, self.name, self._abi, mt=True)
        return self._mt_fn, int(threads)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None,
                 **call) -> np.ndarray:
        """y = op(x) along the last axis. ``call``: the op's call-time arguments (e.g. lssa's
        ``n_attended``), from which the per-row parameters are computed. ``threads``: None or 0
        auto (the kernel's thread policy, ``explain()``), N: rows split across at most N threads."""
        fast = self._fast
        if fast is None and self._fn is None:
            self._entry(False)
            fast = self._fast
        if fast is not None and not call:
            # The fast path, kept short (issue 15: within 0.5 us of the raw C entry): NumPy arrays
            # and torch tensors checked, outputs allocated and the kernel called in C, threads=
            # through <name>_mt. What it declines (other types, layouts, dtypes, thread counts
            # that are not an int) or fails (an error code) takes the general path below, which
            # copies, converts or raises the proper error.
            r = fast(x, out) if threads is None else fast(x, out, threads)
            if r is not NotImplemented and r.__class__ is not int:
                return r
        fn = self._fn or self._entry(False)
        if threads is not None:   # (a method of its own: no closure here, no cost without threads)
            return self._call_threads(x, out, threads, call)
        return self._call(fn, (x,), out, call)

    def _call_threads(self, x, out, threads, call: dict):
        """``k(x, out=out, threads=threads, **call)``: through ``<name>_mt``."""
        mt, threads = self._mt_entry(threads)
        if not call and self._plain and _fastcall is not None and type(x) is np.ndarray \
                and (out is None or type(out) is np.ndarray):
            y = np.empty(x.shape, np.float32) if out is None else out
            rc = _fastcall(mt._softgen_ptr, x, y, threads)
            if rc == 0:
                return y
            if rc is not NotImplemented:
                raise failure(self.name, rc)
        return self._call(lambda *args: mt(*args, threads), (x,), out, call)

    def run_emulated(self, x: np.ndarray, out: np.ndarray | None = None, threads: int | None = None,
                     **call) -> np.ndarray:
        """Run through an emulator instead of the CPU: SIMDe for x86 ISAs on an x86 host, qemu
        user mode for other architectures (e.g. neon on x86). For testing kernels whose ISA this
        machine lacks; much slower than a native call. ``threads``: as in ``__call__`` (the
        emulated library's ``<name>_mt``; qemu-user runs its pthreads)."""
        return self._call(self._emulated(threads), (x,), out, call)

    def _emulated(self, threads):
        """The emulated entry point; ``threads`` not None: one calling ``<name>_mt`` with it."""
        fn = self._entry(True)
        if threads is None:
            return fn
        threads = _thread_count(threads)
        if hasattr(fn, "_softgen_handle"):   # SIMDe: a library loaded in this process
            if self._emu_mt_fn is None:
                self._emu_mt_fn = load_entry(fn._softgen_handle, self.name, self._abi, mt=True)
            mt = self._emu_mt_fn
            return lambda *args: mt(*args, threads)
        return functools.partial(fn, threads=threads)   # qemu: its driver calls <name>_mt

    def run_emulated_many(self, xs, outs=None, calls=None) -> list[np.ndarray]:
        """``run_emulated`` over many inputs, in one emulator process where that matters (qemu).
        ``calls``: per input, a dict of call-time arguments."""
        fn = self._entry(True)
        outs = [None] * len(xs) if outs is None else outs
        calls = [{}] * len(xs) if calls is None else calls
        with getattr(fn, "batch", contextlib.nullcontext)():
            return [self._call(fn, self._inputs(x), o, c) for x, o, c in zip(xs, outs, calls)]

    def _inputs(self, x) -> tuple:
        """One element of ``run_emulated_many``'s ``xs`` as the tuple of input arrays."""
        return (x,)

    def _run(self, fn, x, out, call=None):
        """The general (checked) path of ``k(x, out=out, **call)`` through entry ``fn``."""
        return self._call(fn, (x,), out, call)

    def _call(self, fn, inputs: tuple, out, call=None):
        """Bind ``inputs``, ``out`` and the call-time arguments to the entry point (``binding``),
        call ``fn``, map a nonzero return code to its exception; one path for every kind.
        Arrays other than NumPy's (torch, JAX: DLPack) and ``axis=``/``dim=`` go through
        ``arrays.prepare`` (zero-copy in, the caller's type out)."""
        if call and ("axis" in call or "dim" in call) or (out is not None and type(out) is not np.ndarray) \
                or any(type(a) is not np.ndarray for a in inputs):
            return self._call_arrays(fn, inputs, out, call)
        return self._call_np(fn, inputs, out, call)

    def _call_np(self, fn, inputs: tuple, out, call=None):
        """``_call`` on NumPy arrays (``binding`` checks and binds them)."""
        opdef, params = _ops.get_op(self.op), self.params
        b = bind(self._abi, self.name, inputs, out,
                 lambda names, shape: opdef.row_arguments(names, shape, params, call or {}), self.op, call)
        if b.args is None:
            return b.result
        rc = fn(*b.args)
        if rc:
            raise failure(self.name, rc)
        if b.copy_to is None:
            return b.result
        if hasattr(fn, "flush"):  # a batching emulator: make the temporary real before copying it
            fn.flush()
        if isinstance(b.result, tuple):   # attention's (o, lse): o went to a temporary
            np.copyto(b.copy_to, b.result[0])
            return (b.copy_to, *b.result[1:])
        np.copyto(b.copy_to, b.result)
        return b.copy_to

    def _call_arrays(self, fn, inputs: tuple, out, call):
        """``_call`` for torch/JAX arrays (DLPack) and ``axis=``/``dim=`` (``arrays.prepare``)."""
        axis = None
        if call:
            call = dict(call)
            if "axis" in call and "dim" in call:
                raise UsageError(f"{self.name}: give axis= or dim=, not both")
            axis = call.pop("axis", call.pop("dim", None))
        xs, o, finish = arrays.prepare(inputs, out, self.name, axis=axis, selected=self.selected,
                                       rows=self._abi.kind in (ROW, SELECTED))
        if not call and fn is self._fn and self._fast is not None and len(xs) == 1:
            r = self._fast(xs[0], o)   # as __call__'s fast path, on the NumPy views
            if r is not NotImplemented and r.__class__ is not int:
                return finish(r)
        return finish(self._call_np(fn, xs, o, call))

    # -- products -------------------------------------------------------------------------------
    @property
    def artifact(self) -> Artifact:
        """What the backend generated (``softgen.backends.Artifact``), from this kernel's fields."""
        return Artifact(get_backend(self.backend), self.name, self.target, self.source, self.wrapper)

    def sources(self) -> dict:
        """What the C compiler links into the library: C text, and e.g. for TVM its object file.
        A dispatcher: every variant's (file names prefixed by the variant's name; their own version
        scripts, e.g. TVM's, dropped), the dispatch translation unit and the version script
        exporting only its entry points."""
        if not self.variants:
            return self.artifact.sources()
        out = {f"{v.name}_{f}": data for v in self.variants for f, data in v.sources().items()
               if not f.endswith(".map")}
        return {**out, f"{self.name}_dispatch.c": self.source, f"{self.name}.map": version_script(self.name)}

    def file_targets(self) -> dict:
        """File name of ``sources()`` -> the ``Target`` whose flags compile it, where it is not
        the kernel's own target (a multi-ISA library's members); empty for other kernels."""
        return {}

    def asm(self, cc: str | None = None) -> str:
        if not self.variants:
            return self.artifact.asm(cc)
        return "\n".join([*(v.asm(cc) for v in self.variants), assembly(self.source, self.target, cc)])

    def export(self, directory, name: str | None = None, cc: str | None = None, *, static: bool = False,
               overwrite: bool = True, progress=None) -> dict:
        """Write lib<name>.so, <name>.h, <name>.json, <name>.c, <name>.pc and <name>Config.cmake
        (+ ConfigVersion) into ``directory``; ``static``: lib<name>.a too (``export.export``)."""
        return aot.export(self, directory, name=name, cc=cc, static=static, overwrite=overwrite, progress=progress)

    def renamed(self, name: str) -> "Kernel":
        sched = None if self.tuned else self.schedule
        if self.gemm is not None and not self.tuned:
            sched = {**self.schedule.as_dict(), **self.gemm.as_dict()}
        return compile(self.op, algorithm=self.algorithm, target=self.target.name, name=name,
                       schedule=sched, backend=self.backend, **self.params)


class MatrixKernel(Kernel):
    """A matrix kernel with the general ABI (``KernelABI``, e.g. two inputs of different shapes):
    ``s = k(a, b)`` takes its input arrays positionally, ``out=`` by keyword."""

    def __call__(self, *inputs, out=None, threads: int | None = None, **call) -> np.ndarray:
        """``threads``: None or 0 auto (``explain_threads()``), N: the batch's matrices (streaming
        attention: its (batch, head, query chunk) tasks) split across at most N threads of the
        library's pool; the results do not depend on it. ``call``: attention's ``kv_lengths=`` and
        ``return_lse=`` (``binding``; Sinkhorn refuses lse, SOFT both)."""
        if call and self._abi.kind == ATTENTION and self.program.attention_tasks() is None:
            refused = [a for a, given, taken in (
                ("kv_lengths", call.get("kv_lengths") is not None, self.program.key_padding),
                ("return_lse", call.get("return_lse"), self.program.lse)) if given and not taken]
            if refused:   # what a three-phase, Sinkhorn or SOFT kernel does not take, and why
                why = "SOFT's global form has no key mask and no per-row normalizer" \
                    if self.program.key_padding is None else \
                    "Sinkhorn's P is normalised over rows and columns: no per-row normalizer sum describes it"
                raise UsageError(f"{self.name}: this {self.params.get('normalizer', '')} kernel does not take "
                                 f"{' and '.join(refused)} (its C entry returns EMATRIX): {why}")
        fast = self._fast
        if fast is None and self._fn is None:
            self._entry(False)
            fast = self._fast
        if fast is not None and threads is None and not call:   # as Kernel.__call__'s fast path
            r = fast(inputs, out)
            if r is not NotImplemented and r.__class__ is not int:
                return r
        if threads is not None:
            mt, threads = self._mt_entry(threads)
            return self._call(lambda *args: mt(*args, threads), inputs, out, call)
        return self._call(self._fn or self._entry(False), inputs, out, call)

    def _fast_entry(self, ptr: int, mt: int | None = None):
        """A general kernel's ``_fastcall.entry`` (one output, at most 4 inputs and 6 dims;
        ``threads=`` takes ctypes: the entry passes every argument as a size_t, not an int)."""
        abi = self._abi
        if abi.kind == GENERAL and len(abi.outputs) == 1 and len(abi.inputs) <= 4 and len(abi.dims) <= 6:
            return _fc.entry(ptr, GENERAL, self._general_spec)
        return None

    @cached_property
    def _general_spec(self) -> tuple:
        """``_fastcall.general``'s spec: the number of dims, then each matrix's (inputs', then the
        output's) row and column dim, as indices into the ABI's dims."""
        abi = self._abi
        dims = list(abi.dims)
        return (len(dims), *(dims.index(d) for _, shape in (*abi.inputs, *abi.outputs) for d in shape))

    def run_emulated(self, *inputs, out=None, threads: int | None = None, **call) -> np.ndarray:
        return self._call(self._emulated(threads), inputs, out, call)

    def run_emulated_many(self, xs, outs=None, calls=None) -> list[np.ndarray]:
        """``run_emulated`` over many tuples of inputs, in one emulator process (qemu)."""
        return super().run_emulated_many(xs, outs)

    def _inputs(self, x) -> tuple:
        return tuple(x)


@dataclass(repr=False)
class IsaKernel(Kernel):
    """A library spanning ISAs (``compile(target="x86-64")``, ``target="avx2,avx512"`` or a list):
    per ISA the kernel ``compile(target=isa)`` builds, named ``<name>__<isa>`` (``members``, best
    first), and a top translation unit (``source``) exporting ``<name>``, ``<name>_supported``
    and ``<name>_isa``, which picks once per process the first member whose CPU check passes,
    capped by ``SOFTGEN_ISA`` (``dispatch.render_isa_dispatch``). ``target`` is the library's
    own (``targets.TargetGroup.target``: the group's arch, its least member's features)."""

    members: tuple = ()            # per ISA, best first: the Kernel compile(target=isa) builds
    group: TargetGroup | None = None
    schedule_arg: object = None    # compile's schedule= (each member validates it for itself)

    def _member_files(self, m: Kernel) -> dict:
        return {(f if f.startswith(m.name) else f"{m.name}_{f}"): data
                for f, data in m.sources().items() if not f.endswith(".map")}

    def sources(self) -> dict:
        """Every member's translation units (file names prefixed by the member's name; their own
        version scripts dropped), the top unit and the version script exporting its three symbols."""
        out = {f: d for m in self.members for f, d in self._member_files(m).items()}
        return {**out, f"{self.name}_isa.c": self.source,
                f"{self.name}.map": isa_version_script(self.name, self._abi.threaded)}

    def file_targets(self) -> dict:
        """Each member's C files -> that member's target (compiled with its ISA's flags)."""
        return {f: m.target for m in self.members for f in self._member_files(m) if f.endswith(".c")}

    def asm(self, cc: str | None = None) -> str:
        return "\n".join([*(m.asm(cc) for m in self.members), assembly(self.source, self.target, cc)])

    def explain_threads(self) -> str:
        return "threads (auto): the picked ISA's kernel's (" + "; ".join(
            f"{m.target.name}: {m.explain_threads().removeprefix('threads (auto): ')}" for m in self.members) + ")"

    @property
    def runnable(self) -> bool:
        """Whether this CPU runs some member natively (the library's arch, and a member's features)."""
        return self.target.arch in ("any", host_arch()) and any(m.runnable for m in self.members)

    @property
    def isa(self) -> str | None:
        """The ISA the library picked in this process (``<name>_isa()``: "none" if no member runs
        or SOFTGEN_ISA caps them all out); None when this machine cannot run the library natively."""
        if not self.runnable:
            return None
        fn = self._fn or self._entry(False)
        query = getattr(fn._softgen_handle, f"{self.name}_isa")
        query.argtypes, query.restype = [], ctypes.c_char_p
        return query().decode()

    def _entry(self, emulate: bool):
        if not emulate and self._fn is None and not self.runnable:
            raise TargetNotSupportedError(
                f"kernel {self.name} spans {', '.join(self.group.names)} ({self.group.arch}), none of which this "
                f"CPU runs (missing: {', '.join(self.target.missing_features())}); build or export it for "
                f"another machine, or call run_emulated()")
        return super()._entry(emulate)

    def explain(self, as_json: bool = False) -> str | dict:
        """Per ISA its kernel's explanation (``dispatch`` table, model or tuned, for auto) and the
        pick on this machine (``isa``)."""
        pick = self.isa
        rule = (f"the first ISA of {', '.join(self.group.names)} whose CPU check passes, at most "
                f"SOFTGEN_ISA's rank when it names an ISA of {self.group.arch}")
        if as_json:
            return {"op": self.op, "params": self.params, "algorithm": self.algorithm,
                    "target": self.target.name, "name": self.name, "arch": self.group.arch,
                    "isas": [{"isa": m.target.name, "symbol": m.name, "explain": m.explain(as_json=True)}
                             for m in self.members],
                    "pick_rule": rule, "isa": pick}
        head = (f"# {self.name}\n# target {self.target.name}: one library over {', '.join(self.group.names)} "
                f"({self.group.arch}), the ISA picked once at load: {rule}\n"
                f"# picked here: {pick if pick is not None else '(this machine does not run it)'}"
                f"{' (SOFTGEN_ISA=' + os.environ['SOFTGEN_ISA'] + ')' if 'SOFTGEN_ISA' in os.environ else ''}\n")
        parts = [head] + [f"# ===== ISA {m.target.name}: {m.name} =====\n" + m.explain() for m in self.members]
        return "\n".join(parts)

    def renamed(self, name: str) -> "Kernel":
        target = self.group.name if is_group_spec(self.group.name) else list(self.group.names)
        return compile(self.op, algorithm=self.algorithm, target=target, name=name,
                       schedule=self.schedule_arg, backend=self.backend, **self.params)


@dataclass(repr=False)
class IsaMatrixKernel(IsaKernel, MatrixKernel):
    """A multi-ISA library of a matrix op with the general ABI (calls as ``MatrixKernel``)."""


def _thread_count(threads) -> int:
    """A call's ``threads=`` as a C int: 0 auto, N at most N; a negative one reaches C, which
    returns ETHREADS (a UsageError); anything else is a UsageError here."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) \
            or not -2 ** 31 <= threads < 2 ** 31:
        raise UsageError(f"threads must be None or an int (0: auto, N: at most N threads), got {threads!r}")
    return int(threads)


def compile(op: str = "softmax", *, algorithm: str = "auto", target: str = "host",
            name: str | None = None, schedule: Schedule | dict | None = None, backend: str = "c",
            **params) -> Kernel:
    """Generate (but do not yet build) a kernel for ``op`` on ``target``.

    ``algorithm``: auto | three-pass-recompute | three-pass-reload | two-pass | online. ``auto``:
    the cost model's choice per row length over the target's ``auto_algorithms``
    (``costmodel``); when it differs between sizes the kernel is a dispatcher holding each
    variant behind the one entry point (``k.dispatcher``, ``k.dispatch``, ``k.explain()``).
    ``target``: host | scalar | avx2 | avx512 (building for a target this CPU lacks works; calling
    it raises TargetNotSupportedError). ``params``: the op's parameters (softmax: scale or
    temperature), baked into the kernel. ``schedule``: a Schedule or a dict of its fields.
    ``backend``: a name from ``softgen.backends.names()`` (c, tvm).
    """
    be = get_backend(backend)
    opdef = _ops.get_op(op)
    if is_group_spec(target):
        return _compile_isa_group(be, opdef, target_group(target), algorithm, name, schedule, params)
    t = get_target(target)
    program = _ops.build_program(opdef.name, **params)     # the op's IR, its parameters validated
    if opdef.kind != "row":      # matrix programs ("matrix", "attention")
        return _compile_matrix(be, opdef, program, t, algorithm, name, schedule)
    alg = choose_algorithm(program, t.name, algorithm)     # validated once, here
    sched = _schedule(t, schedule)
    table = None
    if passes.ALIASES.get(algorithm, algorithm) == "auto" and be.dispatchable:
        # tuning records of this machine first (unless the caller fixed the schedule), else the model
        # (the model's table also fills the kind of calls, single rows or batches, no record decides)
        model = auto_table(program, t, sched, be)
        table = (tuned_table(program, t, be.name, model) if schedule is None else None) or model
    tuned = table is not None and table.source == "measured"
    if table is not None and len(table.variants) > 1:
        return _compile_dispatcher(be, opdef, program, t, sched, table, name, tuned)
    if table is not None:
        alg = table.algorithms[0]
        sched = Schedule(**table.entries[0].schedule).validate(t.lanes)
    lowered = passes.apply_algorithm(program, alg)
    # what threads=auto picks: the table's, else the model's for this variant
    policy = table.entries[0].policy if table is not None else thread_policy(passes.plan(lowered), t)
    tuned_policy = {"threads": policy} if tuned and be.thread_policy else {}   # else generate takes the model's
    sparse = "_sparse" if lowered.op(lowered.output()) == "output_selected" else ""
    kname = check_name(name) if name is not None else \
        f"softgen_f32_{opdef.name}{opdef.name_tag(program.params)}{sparse}_{passes.SHORT[alg]}__{t.name}_{sched.tag(t.lanes)}{be.suffix}"
    art = be.generate(lowered, t, sched, kname, op=opdef.name, algorithm=alg, params=program.params,
                      **tuned_policy)
    return Kernel(op=opdef.name, algorithm=alg, target=t, schedule=sched, name=kname,
                  params=dict(program.params), program=lowered, source=art.source, backend=be.name,
                  wrapper=art.wrapper, dispatch=table, tuned=tuned, thread_policy=policy)


def _compile_dispatcher(be: Backend, opdef, program: Program, t: Target, sched: Schedule,
                        table: DispatchTable, name: str | None, tuned: bool = False) -> Kernel:
    """An algorithm="auto" kernel over several variants: each generated exactly as
    ``compile(algorithm=...)`` would, under the name ``<name>__<short>``; the dispatch
    translation unit (``softgen.dispatch``) picks one per call by ``table``."""
    sparse = "_sparse" if program.op(program.output()) == "output_selected" else ""
    kname = check_name(name) if name is not None else \
        f"softgen_f32_{opdef.name}{opdef.name_tag(program.params)}{sparse}_auto__{t.name}_{sched.tag(t.lanes)}{be.suffix}"
    variants, symbols = [], {}
    per_alg, per_tag = {}, {}
    for alg, sch in table.variants:
        per_alg[alg] = per_alg.get(alg, 0) + 1
        tag = (alg, Schedule(**dict(sch)).validate(t.lanes).tag(t.lanes))
        per_tag[tag] = per_tag.get(tag, 0) + 1
    for key in table.variants:
        alg = key[0]
        vsched = Schedule(**dict(key[1])).validate(t.lanes)
        lowered = passes.apply_algorithm(program, alg)
        # <name>__<short>, and the schedule's tag when one algorithm runs with several schedules (its
        # sizes too when two differ only there: the tag names neither block nor split)
        tag = vsched.tag(t.lanes)
        if per_tag[(alg, tag)] > 1:
            tag += f"_b{vsched.block}_s{vsched.split}_c{vsched.chunk}"
        short = passes.SHORT[alg] + (f"_{tag}" if per_alg[alg] > 1 else "")
        vname = variant_name(kname, short)
        # threads=auto is each variant's own: its (first) entry's policy, tuned or the model's
        policy = next(e.policy for e in table.entries if e.variant == key)
        art = be.generate(lowered, t, vsched, vname, op=opdef.name, algorithm=alg, params=program.params,
                          **({"threads": policy} if tuned and be.thread_policy else {}))
        variants.append(Kernel(op=opdef.name, algorithm=alg, target=t, schedule=vsched, name=vname,
                               params=dict(program.params), program=lowered, source=art.source,
                               backend=be.name, wrapper=art.wrapper))
        symbols[key] = vname
    table = table.with_symbols(symbols)
    first = variants[0]
    source = render_dispatch(
        kname, first._abi, table,
        [{"name": v.name, "algorithm": v.algorithm,
          "traffic": v.plan.describe().splitlines()[-1]} for v in variants],
        op=opdef.name, params=", ".join(f"{k}={v!r}" for k, v in program.params.items()),
        target=f"{t.name} ({t.summary}), {t.lanes} lane(s); schedule {sched}", version=__version__,
        backend="" if be.c_source else f"{be.name} ({be.description}): each variant is an object compiled by "
                                       f"{be.name} and its C wrapper, whose entry point this unit calls")
    return Kernel(op=opdef.name, algorithm="auto", target=t, schedule=sched, name=kname,
                  params=dict(program.params), program=first.program, source=source, backend=be.name,
                  dispatch=table, variants=tuple(variants), tuned=tuned)


def _schedule(t: Target, schedule) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule.validate(t.lanes)
    if schedule is None or isinstance(schedule, dict):
        return default_schedule(t.schedule, t.lanes, t.shifted_exp, **(schedule or {}))
    raise UsageError(f"schedule must be a Schedule or a dict, got {type(schedule).__name__}")


def _compile_matrix(be: Backend, opdef, program: MatrixProgram, t: Target, algorithm: str, name,
                    schedule) -> Kernel:
    alg, blocks, schedule = attention_algorithm(be, program, algorithm, schedule)
    given = {k: v for k, v in schedule.items() if k in GEMM_FIELDS} if isinstance(schedule, dict) else {}
    sched = _schedule(t, {k: v for k, v in schedule.items() if k not in GEMM_FIELDS}
                      if isinstance(schedule, dict) else schedule)
    awhy = ""
    if alg == "streaming":
        if not blocks and schedule is None:
            blocks, awhy = tuned_attention(program, t, be.name)
        ablk = t.attention.override(**blocks)
        norm = program.params.get("normalizer", "softmax")
        if blocks.get("wide") and not (be.wide_attention and norm == "softmax"):
            raise UsageError(f"attention schedule wide (the single-block mode) is softmax's on a backend that has it "
                             f"(c), not {norm!r} on {be.name!r}: leave it out")
        wide = ablk.wide if be.wide_attention else 0   # the single-block mode: backends that have it
        lowered = passes.stream_attention(program, ablk.br, ablk.bc, wide)
    else:
        if blocks and algorithm == "three-phase":
            raise UsageError(f"attention schedule {', '.join(sorted(blocks))}: the streaming form's blocks, and "
                             f"algorithm='three-phase' was asked for (its GEMMs take mr, nv, kc, nc, ku)")
        if blocks:   # auto fell back to three-phase: the blocks go unused, but are checked as given
            t.attention.override(**blocks)
        lowered = passes.lower_matrix(program, epilogues=be.gemm_epilogues)
    has_gemm = any(isinstance(ph, MatMulPhase) for ph in lowered.leaves())
    gemm, why = None, ""
    if given:
        if not has_gemm:
            raise UsageError(f"schedule {', '.join(sorted(given))}: GEMM fields, and {opdef.name} has no GEMM")
        gemm = schedule_for(t, given)
    elif has_gemm and schedule is None:
        gemm, why = tuned_gemm(program, t, be.name)
    tuned = bool(why)
    if gemm is None and has_gemm and lowered.fixed_dims:   # a build-time row count (SOFT's landmarks)
        rows = min(lowered.fixed_dims.values())
        gemm = fit_rows(t, t.gemm, rows)
        why = "" if gemm == t.gemm else f"tile height {gemm.mr}: the fixed {rows} rows with the least padding"
    gemm = None if gemm == t.gemm and not tuned else gemm
    if awhy:   # the streaming attention form's tuned blocks (it has no GEMM)
        tuned, why = True, awhy
    short = {"direct": "", "three-phase": "_3ph", "streaming": "_stream"}[alg]
    kname = check_name(name) if name is not None else \
        f"softgen_f32_{opdef.name}{opdef.name_tag(program.params)}{short}__{t.name}_{sched.tag(t.lanes)}" \
        f"{'' if gemm is None or gemm == t.gemm else '_' + gemm.tag(t.lanes)}{be.suffix}"
    art = be.generate_matrix(lowered, t, sched, kname, op=opdef.name, params=program.params,
                             **({} if gemm is None else {"gemm": gemm}))
    cls = MatrixKernel if lowered.abi().style == "general" else Kernel
    return cls(op=opdef.name, algorithm=alg, target=t, schedule=sched, name=kname,
               params=dict(program.params), program=lowered, source=art.source, backend=be.name,
               wrapper=art.wrapper, tuned=tuned, gemm=gemm, gemm_why=why,
               thread_policy=matrix_thread_policy(lowered, t))


def _compile_isa_group(be: Backend, opdef, group: TargetGroup, algorithm: str, name: str | None, schedule,
                       params: dict) -> IsaKernel:
    """One library over the ISAs of ``group``: per ISA exactly the kernel ``compile(op,
    target=isa, algorithm=algorithm, schedule=schedule)`` builds, named ``<name>__<isa>``, and
    the top translation unit picking one at load (``dispatch.render_isa_dispatch``)."""
    if not be.c_source:
        raise UsageError(f"backend {be.name!r} cannot build a library spanning ISAs ({group.name}): a multi-ISA "
                         f"library compiles each ISA's C source with that ISA's flags, and {be.name} generates "
                         f"machine code per target, not C; compile one target at a time")
    gname = group.name.replace("-", "_").replace(",", "_")
    program = _ops.build_program(opdef.name, **params)
    sparse = "_sparse" if opdef.kind == "row" and program.op(program.output()) == "output_selected" else ""
    short = "auto" if passes.ALIASES.get(algorithm, algorithm) == "auto" else passes.SHORT.get(
        passes.ALIASES.get(algorithm, algorithm), algorithm.replace("-", "_"))
    longest = max(group.names, key=len)
    knobs = given_knobs(schedule).knob_tag()   # the schedule knobs given (each member's name tags its own)
    kname = check_name(name) if name is not None else next(   # members' names fit in 64: a hashed tag if need be
        n for limit in (32, 0) for n in [f"softgen_f32_{opdef.name}{opdef.name_tag(program.params, limit)}{sparse}"
                                         f"_{short}__{gname}{knobs}{be.suffix}"]
        if limit == 0 or len(isa_member_name(n, longest)) <= 64)
    if len(isa_member_name(kname, longest)) > 64:
        raise UsageError(f"kernel name {kname!r} is too long for a library spanning ISAs: its members are "
                         f"named <name>__<isa> (e.g. {isa_member_name(kname, longest)!r}), at most 64 characters")
    members = tuple(compile(opdef.name, algorithm=algorithm, target=t.name, name=isa_member_name(kname, t.name),
                            schedule=schedule, backend=be.name, **params) for t in group.members)
    first = members[0]
    known = [{"name": t.name, "rank": t.host_rank} for t in all_targets().values() if t.arch in (group.arch, "any")]
    infos = []
    for m in members:
        if m.dispatch is not None and m.dispatcher:
            lines = m.dispatch.lines()
        elif m.dispatch is not None:
            lines = [f"auto ({m.dispatch.source}): {m.algorithm} at every size, schedule {m.schedule}"]
        else:
            lines = [f"{m.algorithm}, schedule {m.schedule}"]
        infos.append({"isa": m.target.name, "symbol": m.name, "rank": m.target.host_rank,
                      "requires": ", ".join(m.target.requires) or "nothing beyond the architecture", "lines": lines})
    source = render_isa_dispatch(
        kname, first._abi, infos, known, op=opdef.name,
        params=", ".join(f"{k}={v!r}" for k, v in program.params.items()),
        algorithm=passes.ALIASES.get(algorithm, algorithm), group=group.name, arch=group.arch, version=__version__)
    cls = IsaMatrixKernel if isinstance(first, MatrixKernel) else IsaKernel
    return cls(op=opdef.name, algorithm=first.algorithm if len({m.algorithm for m in members}) == 1 else "auto",
               target=group.target, schedule=first.schedule, name=kname, params=dict(program.params),
               program=first.program, source=source, backend=be.name, members=members, group=group,
               schedule_arg=schedule, tuned=any(m.tuned for m in members))
