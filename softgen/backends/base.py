"""The ``Backend`` interface, what a backend produces for one kernel (``Artifact``), and the
registry that ``softgen.compile(backend=...)``, the CLI and the exporter ask by name.

A backend turns a lowered program for one target and schedule into an ``Artifact``:

- ``generate``: a row program (``ir.Program`` after the algorithm's rewrite; the backend plans
  its sweeps with ``passes.plan``);
- ``generate_matrix``: a matrix program after ``passes.lower_matrix`` (which fuses element-wise
  phases into GEMM stores only when the backend says ``gemm_epilogues``).

Its capabilities are data on the backend object, read by the code that used to branch on the
backend's name: ``suffix`` (appended to default kernel names), ``gemm_epilogues``,
``simde_emulable`` (its sources are C with intrinsics, which SIMDe can emulate, not machine code),
``c_source`` (``Artifact.source`` is the C the compiler builds; else ``source`` is another
language and ``wrapper`` the C entry point around it: ``softgen emit --tir/--wrapper``).
What the compiler links, the assembly, the files an AOT export writes and the manifest's
``"backend"`` are methods of the backend, reached through the artifact; the defaults suit a
backend whose ``source`` is one C file.

Registration: a backend module ends with ``register(TheBackend())``. The package
``softgen.backends`` imports this module, then the built-in backend modules (``c``, ``tvm``), so
importing anything under ``softgen.backends`` registers them; this module imports no backend, so
there is no cycle and no hidden (function-local) import. Registering ``tvm`` does not import TVM:
``backends.tvm`` reaches TVM only inside ``tvm_adapter``'s functions. Another backend (a plugin,
a test) subclasses ``Backend`` and calls ``register`` (``unregister`` removes it).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from types import MappingProxyType

from ..costmodel import ThreadPolicy
from ..errors import UsageError
from ..runtime import assembly
from ..schedule import KNOB_DEFAULTS, Schedule
from ..targets import Target


@dataclass(frozen=True)
class Artifact:
    """What a backend produced for one kernel: ``source`` (what ``softgen emit`` prints: the C,
    or e.g. a TensorIR script) and, when that is not C, ``wrapper``, the C entry point around it.
    ``Kernel`` keeps these as its fields and rebuilds its artifact from them (``Kernel.artifact``),
    so a kernel's fields are the one truth (``dataclasses.replace(k, source=...)`` stays coherent)."""

    backend: Backend
    name: str
    target: Target
    source: str
    wrapper: str = ""

    def sources(self) -> dict:
        """What the C compiler links into the library: file name -> C text, or a path (objects)."""
        return self.backend.link_inputs(self)

    def asm(self, cc: str | None = None) -> str:
        return self.backend.assembly(self, cc)

    def export_files(self) -> dict[str, tuple[str, str]]:
        """The text files an AOT export writes besides library, header and manifest:
        manifest key -> (file name, text); ``"source"`` is ``<name>.c``."""
        return self.backend.export_files(self)

    def info(self) -> str | dict:
        """The manifest's ``"backend"``."""
        return self.backend.manifest_info()


class Backend(abc.ABC):
    """A code generator from lowered programs to an ``Artifact`` (see the module docstring)."""

    name: str = ""                # compile(backend=...), the CLI's --backend
    description: str = ""         # one line, for --backend's help
    suffix: str = ""              # appended to default kernel names
    gemm_epilogues: bool = False  # passes.lower_matrix may fuse element-wise phases into GEMM stores
    simde_emulable: bool = True   # link inputs are C with intrinsics (SIMDe can emulate them)
    c_source: bool = True         # Artifact.source is the C compiled; else wrapper is
    # algorithm="auto" may link several variants (each under its own symbol prefix) into one
    # library behind a dispatcher (softgen.dispatch); else auto is one kernel, the first
    # applicable algorithm of the target's auto_algorithms
    dispatchable: bool = True
    # the schedule knobs (schedule.KNOB_DEFAULTS: stream, prefetch, exp) generate() lowers; the
    # model's table (non-temporal stores beyond the LLC) and tuning records use no others
    schedule_knobs: tuple[str, ...] = tuple(KNOB_DEFAULTS)
    # generate() takes threads= (a tuned costmodel.ThreadPolicy: what the entry's threads=auto
    # picks); else it is never passed (a backend written before threads)
    thread_policy: bool = False
    # the normalizers whose matrix.AttentionPhase (passes.stream_attention) this backend lowers:
    # compile("attention") streams them; the others take the three-phase form
    streams_attention: tuple[str, ...] = ()
    # the streaming phase has the softmax single-block mode (AttentionSchedule.wide); else wide is 0
    wide_attention: bool = False
    # decoding (Lq <= 16) of streaming softmax attention splits each head's keys into chunks
    # (backends.attention.split_keys): the threaded entry's tasks are (batch, head, key chunk)
    split_decoding: bool = False
    # the schedule knobs the tuner (softgen.tune) may vary, knob -> candidate values; each
    # combination is applied over the target's default schedule and kept only if Schedule
    # validates it. Empty: the tuner varies the algorithm only
    tuning_knobs: MappingProxyType = MappingProxyType({})
    # knob -> the cache levels (machine.Caches: "L1d", "L2", "L3", "DRAM") of the row's working set
    # where the tuner tries it; a knob not listed is tried at every level. Knobs listed here are
    # tried one value at a time over each kept schedule of the listed ones (not as a product).
    tuning_knob_levels: MappingProxyType = MappingProxyType({})
    # knob -> the cache levels of a batched call's whole working set (rows x n) where the tuner
    # also tries it on batches (rows > 1), whatever the level of one row
    tuning_knob_batch_levels: MappingProxyType = MappingProxyType({})
    # the knobs whose values also depend on the target: knob -> name of a Target property that must
    # be true for the knob to be offered (e.g. the C backend's stream -> "streams")
    tuning_knob_requires: MappingProxyType = MappingProxyType({})

    def lowerable(self, program) -> list[str]:
        """What in ``program`` (a row ``ir.Program``) this backend cannot lower; empty: all of
        it. ``generate`` raises BuildError naming them."""
        return []

    def knob_refusals(self, program, schedule: Schedule) -> dict[str, str]:
        """The knobs ``schedule`` sets (``Schedule.knobs``) that change nothing in the kernel of
        ``program`` (a lowered row ``ir.Program``): knob -> why (a phrase). ``generate`` accepts
        them and notes why in the header; the CLI refuses them. The default: the knobs this backend
        does not lower (``schedule_knobs``; ``generate`` refuses those)."""
        return {k: f"backend {self.name} does not lower it" for k in schedule.knobs() if k not in self.schedule_knobs}

    @abc.abstractmethod
    def generate(self, program, target: Target, schedule: Schedule, name: str, *, op: str,
                 algorithm: str, params: dict, threads: ThreadPolicy | None = None) -> Artifact:
        """The kernel ``name`` computing the row program ``program`` (after its algorithm's rewrite);
        its entry points split the rows across threads; ``threads`` (``costmodel.ThreadPolicy``,
        what "auto" picks) is given only for a tuned policy and only to a backend that declares
        ``thread_policy``; else the backend takes the model's (``costmodel.thread_policy``)."""

    @abc.abstractmethod
    def generate_matrix(self, program, target: Target, schedule: Schedule, name: str, *, op: str,
                        params: dict) -> Artifact:
        """The kernel ``name`` computing the lowered matrix program ``program``. A backend whose
        GEMMs take a ``GemmSchedule`` accepts it as the keyword ``gemm`` (passed only when it is
        not the target's default: a tuned or given tile)."""

    # -- what an artifact is made of; the defaults: ``source`` is one C file ----------------------
    def link_inputs(self, a: Artifact) -> dict:
        return {"kernel.c": a.source}

    def assembly(self, a: Artifact, cc: str | None = None) -> str:
        return assembly(a.source, a.target, cc)

    def export_files(self, a: Artifact) -> dict[str, tuple[str, str]]:
        return {"source": (f"{a.name}.c", a.source)}

    def manifest_info(self) -> str | dict:
        return self.name

    def __repr__(self) -> str:
        return f"<softgen backend {self.name}>"


_REGISTRY: dict[str, Backend] = {}
BACKENDS = MappingProxyType(_REGISTRY)   # name -> Backend, read-only: change it with register


def register(backend: Backend, *, replace: bool = False) -> Backend:
    """Make ``backend`` available as ``compile(..., backend=backend.name)``; returns it."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register takes a softgen.backends.Backend, got {type(backend).__name__}")
    if not backend.name or not backend.name.isidentifier():
        raise ValueError(f"a backend's name must be an identifier, got {backend.name!r}")
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f"backend {backend.name!r} is already registered (register(..., replace=True))")
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered backends' names, in registration order (the built-ins first: c, tvm)."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown backend {name!r}; available: {', '.join(_REGISTRY)}") from None
