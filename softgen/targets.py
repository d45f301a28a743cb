"""Targets are data: one TOML file per ISA in ``targets/`` (vector width, compiler flags, LLVM
triple/cpu/features, the intrinsic spelling of every macro of softgen's virtual ISA, and the
per-target tuning knowledge: ``host_rank``, ``vector_registers``, ``auto_algorithms`` and the
default ``[schedule]`` and ``[gemm]`` tables). No Python table is keyed by target name: a new
TOML file is a new target, and "host" is the runnable target of highest ``host_rank``.
Host support is decided from the CPU *features* llvmlite reports, never from the CPU name.

Besides the shipped ``targets/`` directory, every directory named in the environment variable
``SOFTGEN_TARGETS_PATH`` (``os.pathsep``-separated, read once per process; see
``all_targets.cache_clear()``) is searched for ``*.toml`` target files."""
from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ._data import data_dir
from .errors import UsageError
from .ir import OPS, TOPK_MAX
from .numerics.constants import EXP_DEFAULT, EXP_VARIANTS
from .passes import ALGORITHMS
from .schedule import AttentionSchedule, GemmSchedule, Schedule

# The virtual ISA every target implements: macro name -> parameter list. Templates use only these
# (as V_<NAME>), so a new ISA is a new data file. Semantics all targets must honour:
#   FMA(a,b,c) = a*b+c;  MAX/MIN: if an operand is NaN the result is NaN or the *second* operand
#   (x86 maxps rule), so code that must keep a NaN passes the value second;  SELECT(m,a,b) = m?a:b;
#   LOAD_PART fills lanes >= k with 0;  TAILMASK(k) has lanes [0,k) set;  SHL shifts int lanes;
#   ISET1/IADD/ISUB/IAND/SRA act on int32 lanes (SRA: arithmetic shift right); CVT: int32 -> float;
#   ANY(m): nonzero (an int) iff some lane of the mask m is set.
VIRTUAL_ISA = {
    "LOAD": "p", "STORE": "p, a", "LOAD_PART": "p, k", "STORE_PART": "p, a, k",
    "SET1": "s", "ZERO": "",
    "ADD": "a, b", "SUB": "a, b", "MUL": "a, b", "DIV": "a, b", "FMA": "a, b, c",
    "MAX": "a, b", "MIN": "a, b", "ABS": "a",
    "CMPEQ": "a, b", "CMPGT": "a, b", "CMPLT": "a, b", "SELECT": "m, a, b", "TAILMASK": "k",
    "BITS": "a", "FROMBITS": "a", "SHL": "a, n",
    "ISET1": "s", "IADD": "a, b", "ISUB": "a, b", "IAND": "a, b", "SRA": "a, n", "CVT": "a",
    "HSUM": "a", "HMAX": "a", "ANY": "m",
}
# SCALE2: a*2^d for integer-valued d <= 0; vmath has a generic fallback. ROUND: a rounded to the
# nearest integer (ties to even). A target with both gets vmath's scaled exp (render.vmath:
# sg_exp_shifted reconstructs e^x as (1 + t p) 2^n in one instruction, no magic-bias bit trick).
OPTIONAL_ISA = {"SCALE2": "a, d", "ROUND": "a"}
# TABLE32(tab, i): tab[i & 31] per lane (float tab[32], i an IVEC): the table exp variants' lookup,
# defined by vmath.h.j2 only where a table variant is used (render.vmath; without it, vmath.h.j2
# indexes the table per lane from memory)
TABLE_ISA = {"TABLE32": "tab, i"}
# Non-temporal stores (schedule stream=True): STREAM(p, a) stores a whole vector at p, aligned to the
# target's `stream_align` bytes (= 4 * lanes), bypassing the caches; FENCE() orders them before
# later stores. A target has both and stream_align, or none; only kernels that stream define them.
STREAM_ISA = {"STREAM": "p, a", "FENCE": ""}

ENV_PATH = "SOFTGEN_TARGETS_PATH"   # extra directories of target files
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HWCAP_RE = re.compile(r"^HWCAP_[A-Z0-9_]{1,32}$")
_MACHINE_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    arch: str                      # "x86_64", "aarch64" or "any"
    lanes: int
    requires: tuple[str, ...]      # llvmlite host feature names
    cflags: tuple[str, ...]
    header: str
    simde_header: tuple[str, ...]   # SIMDe headers of the emulated build
    fma: str
    llvm: dict
    types: dict
    isa: dict
    host_rank: int                 # "host" = the runnable target with the highest rank
    vector_registers: int          # architectural vector registers (bounds the GEMM tile)
    auto_algorithms: tuple[str, ...]   # algorithm="auto": the dispatch model's candidates (no [cost]: the first the op has)
    schedule: Schedule             # default row schedule
    gemm: GemmSchedule             # default GEMM tile and blocking (matrix programs)
    prelude: str = ""
    cross_cc: tuple[str, ...] = ()   # compilers to try when the host is another architecture
    emulator: tuple[str, ...] = ()   # user-mode emulators (qemu) to run it on another architecture
    hwcaps: dict = field(default_factory=dict)   # AArch64: feature -> Linux HWCAP_* macro
    extra: dict = field(default_factory=dict)
    # [cost]: hints of the untuned dispatch model (softgen.costmodel): {"ipc": float,
    # "instructions": {IR op kind or "default": per vector}, "bandwidth": {level: bytes/cycle}};
    # empty: no model, algorithm="auto" takes the first applicable entry of auto_algorithms
    cost: dict = field(default_factory=dict, compare=False)
    stream_align: int = 0          # bytes V_STREAM's address must be aligned to (0: no STREAM)
    # reduce_topk: the insertion network for k up to this, radix select above (C backend; measured
    # by bench/topk_select.py; at most ir.TOPK_MAX)
    topk_network_max_k: int = TOPK_MAX
    # top-k attention's form by (top_k, Lk): softgen.attention (auto) streams when Lk >= a + b top_k,
    # else runs the three-phase form (its Lq x Lk scores in a scratch); (0, 0): always streams
    topk_stream_keys: tuple[int, int] = (0, 0)
    # the exp variant of sg_exp_shifted (the exps of x - max x) under the default schedule exp;
    # "" = the default's (p5); needs [isa] ROUND and SCALE2 (render.scaled_exp)
    shifted_exp: str = ""

    def exp_variant(self, exp: str = "", shifted: bool = False) -> str:
        """The ``EXP_VARIANTS`` name an exp runs as under schedule ``exp`` ("": the target's):
        a named variant everywhere, else the target's ``shifted_exp`` for the exps of x - max x in
        sums (``shifted``: ``passes.max_shifted``; ``_shifted_exp`` checked the scaled form), else p5c2."""
        return exp or (self.shifted_exp if shifted and self.shifted_exp else EXP_DEFAULT)

    def topk_streams(self, top_k: int, keys: int) -> bool:
        """Whether top-k attention with ``top_k`` over ``keys`` keys takes the streaming form
        (``topk_stream_keys``): keys >= a + b top_k."""
        a, b = self.topk_stream_keys
        return keys >= a + b * top_k

    def topk_stream_rule(self, top_k: int) -> str:
        """The rule ``topk_streams`` applies, for explain."""
        a, b = self.topk_stream_keys
        if a == b == 0:
            return "top-k: softgen.attention streams at every Lk on this target (no topk_stream_keys in its file)"
        return (f"top-k: softgen.attention (auto) streams when Lk >= {a} + {b} top_k = {a + b * top_k} keys, else "
                f"runs the three-phase form (target {self.name}'s topk_stream_keys); compile has no Lk: streaming")

    @property
    def streams(self) -> bool:
        """Whether the target has non-temporal stores (``[isa] STREAM``, ``FENCE``)."""
        return bool(self.stream_align)
    # [attention] (optional): the streaming attention form's default blocks br, bc and wide
    attention: AttentionSchedule = field(default_factory=AttentionSchedule)

    @property
    def runnable(self) -> bool:
        return host_supports(self)

    def missing_features(self) -> list[str]:
        if self.arch not in ("any", host_arch()):
            return [f"arch {self.arch} (host is {host_arch()})"]
        feats = host_features()
        return [f for f in self.requires if not feats.get(f, False)]


# How an exported library checks, once, that the CPU has its target's ``requires`` features
# (``cpu_check``): on x86 with __builtin_cpu_supports (GCC and Clang take the LLVM feature
# names), on AArch64 with the Linux hwcap bit of each feature, named in the target file's
# ``[hwcaps]`` table (feature = "HWCAP_...").


def cpu_check(t: "Target") -> dict:
    """The C of a library's CPU check for ``t``: ``includes`` and ``expr``, an int expression,
    nonzero iff this CPU has every feature of ``t.requires`` (``"1"`` when there are none)."""
    if not t.requires:
        return {"includes": [], "expr": "1"}
    if t.arch == "x86_64":
        return {"includes": [], "expr": " && ".join(f'__builtin_cpu_supports("{f}")' for f in t.requires)}
    if t.arch == "aarch64":
        bits = " | ".join(t.hwcaps[f] for f in t.requires)
        return {"includes": ["sys/auxv.h"], "expr": f"(getauxval(AT_HWCAP) & ({bits})) == ({bits})"}
    raise UsageError(f"target {t.name}: no CPU check for features on arch {t.arch!r}")


def _strings(v) -> tuple[str, ...]:
    """A TOML value that is one string or a list of them, as a tuple ("" is none)."""
    return tuple(s for s in ([v] if isinstance(v, str) else v) if s)


def _table(f: str, d: dict, key: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """The ``[key]`` table of target file ``f``: exactly ``fields`` (and any of ``optional``, which
    may be 0), each a positive integer."""
    tab = d[key]
    if not isinstance(tab, dict):
        raise UsageError(f"target file {f}: key {key!r} must be a table [{key}]")
    missing = [k for k in fields if k not in tab]
    unknown = [k for k in tab if k not in fields and k not in optional]
    if missing or unknown:
        raise UsageError(f"target file {f}: table [{key}] needs keys {list(fields)} "
                         f"(missing {missing}, unknown {unknown})"
                         + (f"; optional: {list(optional)}" if optional else ""))
    for k in fields:
        _positive_int(f, f"{key}.{k}", tab[k])
    for k in optional:
        if k in tab:
            _positive_int(f, f"{key}.{k}", tab[k], lo=0)
    return dict(tab)


def _positive_int(f: str, key: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise UsageError(f"target file {f}: key {key!r} must be an integer >= {lo}, got {v!r}")
    return v


def _algorithms(f: str, v) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(a, str) for a in v):
        raise UsageError(f"target file {f}: key 'auto_algorithms' must be a non-empty list of "
                         f"algorithm names, got {v!r}")
    bad = [a for a in v if a not in ALGORITHMS]
    if bad or len(set(v)) != len(v):
        raise UsageError(f"target file {f}: key 'auto_algorithms': unknown or repeated algorithm(s) "
                         f"{bad or v}; known: {', '.join(ALGORITHMS)}")
    return tuple(v)


COST_LEVELS = ("L1d", "L2", "L3", "DRAM")   # softgen.machine.LEVELS and beyond the last cache


# [cost]'s optional numbers: what a call split across threads costs more than on one thread (the
# thread policy's ``costmodel.thread_policy``); what a sweep ending in a row reduction stalls a row
# (``costmodel.batch_cycles``: the rows knob's price)
OPTIONAL_COST = ("parallel_overhead_cycles", "reduce_latency_cycles")


def _cost(f: str, v) -> dict:
    """The ``[cost]`` table: ``ipc``, optionally the numbers of ``OPTIONAL_COST``,
    ``[cost.instructions]`` (IR op kind or ``default`` -> vector
    instructions per vector, ``default`` required), optionally ``[cost.exp]`` (an exp variant of
    ``EXP_VARIANTS`` -> its instructions per vector, where it differs from ``instructions.exp``,
    the default p5c2's) and ``[cost.bandwidth]`` (every level of ``COST_LEVELS`` -> bytes per
    cycle), all positive numbers."""
    if not v:
        return {}

    def number(key, x):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 or x != x or x == float("inf"):
            raise UsageError(f"target file {f}: key 'cost.{key}' must be a positive number, got {x!r}")
        return float(x)

    if not isinstance(v, dict) or set(v) - {*OPTIONAL_COST, "exp"} != {"ipc", "instructions", "bandwidth"} \
            or not isinstance(v["instructions"], dict) or not isinstance(v["bandwidth"], dict):
        raise UsageError(f"target file {f}: table [cost] needs exactly ipc, [cost.instructions] and "
                         f"[cost.bandwidth] (optional: [cost.exp], {', '.join(OPTIONAL_COST)}), "
                         f"got {sorted(v) if isinstance(v, dict) else v!r}")
    xv = v.get("exp", {})
    if not isinstance(xv, dict) or set(xv) - set(EXP_VARIANTS):
        raise UsageError(f"target file {f}: table [cost.exp] maps exp variants ({', '.join(EXP_VARIANTS)}) "
                         f"to vector instructions per vector, got {xv!r}")
    ins, bw = v["instructions"], v["bandwidth"]
    unknown = [k for k in ins if k != "default" and k != "reload" and k not in OPS]
    if unknown or "default" not in ins:
        raise UsageError(f"target file {f}: table [cost.instructions]: unknown IR op kind(s) {unknown}"
                         f"{'' if 'default' in ins else ', and no default'}")
    if set(bw) != set(COST_LEVELS):
        raise UsageError(f"target file {f}: table [cost.bandwidth] needs exactly the levels "
                         f"{list(COST_LEVELS)}, got {list(bw)}")
    extra = {k: number(k, v[k]) for k in OPTIONAL_COST if k in v}
    return {**extra, "ipc": number("ipc", v["ipc"]),
            "instructions": {k: number(f"instructions.{k}", x) for k, x in ins.items()},
            "exp": {k: number(f"exp.{k}", x) for k, x in xv.items()},
            "bandwidth": {k: number(f"bandwidth.{k}", bw[k]) for k in COST_LEVELS}}


def _hwcaps(f: str, v) -> dict:
    if not isinstance(v, dict) or not all(isinstance(c, str) and _HWCAP_RE.match(c) for c in v.values()):
        raise UsageError(f"target file {f}: table [hwcaps] maps features to Linux HWCAP_* macro "
                         f"names (e.g. neon = \"HWCAP_ASIMD\"), got {v!r}")
    return dict(v)


def _shifted_exp(f: str, d: dict, isa: dict) -> str:
    """``shifted_exp`` (optional): an ``EXP_VARIANTS`` name for sg_exp_shifted, on targets with its
    scaled form (``[isa] ROUND`` and ``SCALE2``)."""
    v = d.get("shifted_exp", "")
    if not v:
        return ""
    if not isinstance(v, str) or v not in EXP_VARIANTS:
        raise UsageError(f"target file {f}: shifted_exp must be one of {', '.join(EXP_VARIANTS)}, got {v!r}")
    if not ("ROUND" in isa and "SCALE2" in isa):
        raise UsageError(f"target file {f}: shifted_exp needs the scaled exp's [isa] ROUND and SCALE2")
    return v


def _stream_align(f: str, d: dict, isa: dict) -> int:
    """``stream_align`` (bytes): required with ``[isa] STREAM`` and ``FENCE``, and 4 * lanes (so
    the peel to it is shorter than a vector); absent without them."""
    has = [k for k in STREAM_ISA if k in isa]
    if not has and "stream_align" not in d:
        return 0
    if len(has) != len(STREAM_ISA) or "stream_align" not in d:
        raise UsageError(f"target file {f}: non-temporal stores need [isa] STREAM and FENCE and a "
                         f"top-level stream_align, got {has or 'none'} and "
                         f"stream_align {'present' if 'stream_align' in d else 'absent'}")
    a = d["stream_align"]
    if isinstance(a, bool) or a != 4 * d.get("lanes", 0):
        raise UsageError(f"target file {f}: stream_align must be 4 * lanes bytes (one vector), got {a!r}")
    return a


def _topk_network_max_k(f: str, d: dict) -> int:
    k = _positive_int(f, "topk_network_max_k", d.get("topk_network_max_k", TOPK_MAX), lo=0)   # 0: always radix
    if k > TOPK_MAX:
        raise UsageError(f"target file {f}: topk_network_max_k must be at most {TOPK_MAX} (the "
                         f"insertion network's registers), got {k}")
    return k


def _topk_stream_keys(f: str, d: dict) -> tuple[int, int]:
    v = d.get("topk_stream_keys", [0, 0])
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                         for x in v)):
        raise UsageError(f"target file {f}: topk_stream_keys must be [a, b], two integers >= 0 (top-k attention "
                         f"streams when Lk >= a + b top_k), got {v!r}")
    return int(v[0]), int(v[1])


def _load(name: str, text: str, f: str | None = None) -> Target:
    """The target of TOML ``text`` (file ``f``, ``name.toml`` by default), validated: every error
    names the file and the key."""
    f = f or f"{name}.toml"
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"target file {f}: not valid TOML: {e}") from None
    try:
        isa = dict(d["isa"])
        missing = [k for k in VIRTUAL_ISA if k not in isa]
        unknown = [k for k in isa if k not in VIRTUAL_ISA and k not in OPTIONAL_ISA and k not in STREAM_ISA
                   and k not in TABLE_ISA]
        if missing or unknown:
            raise UsageError(f"target file {f}: missing macros {missing}, unknown {unknown}")
        stream_align = _stream_align(f, d, isa)
        if d["name"] != name:
            raise UsageError(f"target file {f} declares name {d['name']!r}")
        lanes = _positive_int(f, "lanes", d["lanes"])
        sched = Schedule(**_table(f, d, "schedule", ("unroll", "accumulators", "block"), ("split", "chunk")))
        try:
            sched.validate(lanes)
        except UsageError as e:
            raise UsageError(f"target file {f}: table [schedule]: {e}") from None
        t = Target(name=d["name"], summary=d["summary"], arch=d["arch"], lanes=lanes,
                   requires=tuple(d["requires"]), cflags=tuple(d["cflags"]), header=d["header"],
                   simde_header=_strings(d["simde_header"]), fma=d["fma"], llvm=dict(d["llvm"]),
                   types=dict(d["types"]), isa=isa,
                   host_rank=_positive_int(f, "host_rank", d["host_rank"], lo=0),
                   vector_registers=_positive_int(f, "vector_registers", d["vector_registers"]),
                   auto_algorithms=_algorithms(f, d["auto_algorithms"]), schedule=sched,
                   gemm=GemmSchedule(**_table(f, d, "gemm", ("mr", "nv", "kc", "nc", "ku"))),
                   prelude=d.get("prelude", {}).get("code", ""),
                   cross_cc=tuple(d.get("cross_cc", ())), emulator=tuple(d.get("emulator", ())),
                   hwcaps=_hwcaps(f, d.get("hwcaps", {})),
                   extra={k: d[k] for k in ("cross_hint", "emulator_hint") if k in d},
                   cost=_cost(f, d.get("cost", {})), stream_align=stream_align,
                   topk_network_max_k=_topk_network_max_k(f, d), topk_stream_keys=_topk_stream_keys(f, d),
                   shifted_exp=_shifted_exp(f, d, isa),
                   attention=AttentionSchedule(**_table(f, d, "attention", ("br", "bc"), ("wide",)))
                   if "attention" in d else AttentionSchedule())
    except KeyError as e:
        raise UsageError(f"target file {f} lacks key {e}") from None
    try:
        t.gemm.validate(t)
        t.attention.validate()
    except UsageError as e:
        raise UsageError(f"target file {f}: table [gemm] or [attention]: {e}") from None
    try:
        cpu_check(t)   # a library must be able to check its features
    except KeyError as e:
        raise UsageError(f"target file {f}: no CPU check for feature {e} (on AArch64: name its "
                         f"HWCAP_* bit in the [hwcaps] table)") from None
    return t


def target_dirs() -> list[Path]:
    """Where target files are found: the shipped ``targets/``, then each directory of
    ``$SOFTGEN_TARGETS_PATH``."""
    extra = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p]
    for p in extra:
        if not p.is_dir():
            raise UsageError(f"{ENV_PATH}: {str(p)!r} is not a directory")
    return [data_dir("targets"), *extra]


@functools.cache
def all_targets() -> dict[str, Target]:
    """Every target, by name, highest ``host_rank`` first (ties by name)."""
    found: dict[str, Target] = {}
    where: dict[str, Path] = {}
    for i, directory in enumerate(target_dirs()):
        for entry in sorted(directory.glob("*.toml")):
            if entry.stem in where:
                raise UsageError(f"target {entry.stem!r} is defined twice: {where[entry.stem]} and {entry}")
            if not _NAME_RE.match(entry.stem) or entry.stem == "host":
                raise UsageError(f"target file {entry}: the name {entry.stem!r} is not a target name "
                                 f"(lower case letters, digits and _, at most 32 characters; not 'host')")
            found[entry.stem] = _load(entry.stem, entry.read_text(), entry.name if i == 0 else str(entry))
            where[entry.stem] = entry
    return dict(sorted(found.items(), key=lambda kv: (-kv[1].host_rank, kv[0])))


def get_target(name: str) -> Target:
    """Target by name; ``"host"`` (or ``None``) means the best one this CPU runs."""
    if name in (None, "host"):
        return all_targets()[host_target()]
    if not isinstance(name, str) or not _NAME_RE.match(name) or name not in all_targets():
        if isinstance(name, str) and ("," in name or name in group_names()):
            raise UsageError(f"target {name!r} is a group of targets (one library spanning ISAs: compile, "
                             f"build, emit, explain, export); here give one target: {', '.join(all_targets())} "
                             f"(or 'host')")
        raise UsageError(f"unknown target {name!r}; known: {', '.join(all_targets())} (or 'host')")
    return all_targets()[name]


def host_arch() -> str:
    m = platform.machine().lower()
    return _MACHINE_ARCH.get(m, m)


@functools.cache
def host_features() -> dict[str, bool]:
    """CPU features of this host as LLVM names them (e.g. 'avx2', 'avx512f', 'neon')."""
    import llvmlite.binding as llvm
    try:
        feats = dict(llvm.get_host_cpu_features())
    except RuntimeError:  # llvmlite could not read them: claim nothing beyond the baseline
        feats = {}
    if host_arch() == "aarch64":
        feats.setdefault("neon", True)  # Advanced SIMD is mandatory in AArch64
    return feats


def host_supports(t: Target) -> bool:
    return not t.missing_features()


def host_target() -> str:
    """The runnable target of highest ``host_rank``."""
    for name, t in all_targets().items():
        if host_supports(t):
            return name
    raise UsageError("no target runs on this host (the shipped scalar target always should)")


def targets() -> list[dict]:
    """All targets with a flag saying whether this host can run their kernels."""
    return [{"name": t.name, "summary": t.summary, "lanes": t.lanes, "arch": t.arch,
             "runnable": host_supports(t), "missing": t.missing_features(),
             "host_default": t.name == host_target()} for t in all_targets().values()]


# -- target groups: one library spanning ISAs (issue 13) -------------------------------------------
# A group is data, derived from the target files: the group of an architecture (``x86-64``,
# ``aarch64``: its name is the arch with "-" for "_") holds every target of that arch and every
# arch-neutral one (scalar, compiled for the group's arch); a comma list (``avx2,avx512``) holds
# exactly those. Members are ordered best first by ``host_rank`` (the order a library tries them).


@dataclass(frozen=True)
class TargetGroup:
    name: str                       # "x86-64", "aarch64", or the members' names best first, comma-separated
    arch: str                       # what every member compiles for
    members: tuple[Target, ...]     # best first (host_rank, then name)
    target: Target                  # the library's own: its arch, compiler, emulator; no ISA flags

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.members)


def group_name(arch: str) -> str:
    """The name of ``arch``'s group: ``x86_64`` -> ``x86-64``."""
    return arch.replace("_", "-")


def group_names() -> list[str]:
    """The architecture groups the target files define (e.g. ``x86-64``, ``aarch64``)."""
    return sorted({group_name(t.arch) for t in all_targets().values() if t.arch != "any"})


def is_group_spec(spec) -> bool:
    """Whether ``compile(target=spec)`` names a group rather than one target: a list or tuple, a
    string with a comma, or an architecture group's name that is no target's name."""
    if isinstance(spec, (list, tuple)):
        return True
    return isinstance(spec, str) and ("," in spec or (spec not in all_targets() and spec in group_names()))


def _group_target(name: str, arch: str, members: tuple[Target, ...]) -> Target:
    """The library's own target: the arch of the group, no ISA flags (the members' translation
    units carry theirs), the features of its least member (the library runs iff that one does),
    the cross compiler and emulator of a member of that arch."""
    native = next((t for t in members if t.arch == arch), members[-1])
    base = members[-1]
    summary = f"one library over {', '.join(t.name for t in members)} ({arch}); the ISA is picked once at load"
    return Target(name=name, summary=summary, arch=arch, lanes=members[0].lanes, requires=base.requires, cflags=(),
                  header="", simde_header=(), fma=base.fma, llvm={}, types={}, isa={},
                  host_rank=members[0].host_rank, vector_registers=base.vector_registers,
                  auto_algorithms=members[0].auto_algorithms, schedule=members[0].schedule,
                  gemm=base.gemm, attention=members[0].attention, cross_cc=native.cross_cc, emulator=native.emulator,
                  hwcaps={**native.hwcaps, **base.hwcaps}, extra=dict(native.extra))


def target_group(spec) -> TargetGroup:
    """The group ``spec`` names: an architecture group (``"x86-64"``, ``"aarch64"``), a comma
    list (``"avx2,avx512"``) or a list of target names. Every member must be a known target
    (the error of an unknown target), named once, all of one architecture; arch-neutral targets
    (scalar) join the arch of the others (the host's when all are neutral)."""
    if isinstance(spec, str) and "," not in spec and spec in group_names() and spec not in all_targets():
        arch = next(t.arch for t in all_targets().values() if group_name(t.arch) == spec)
        members = tuple(t for t in all_targets().values() if t.arch in (arch, "any"))
        return TargetGroup(spec, arch, members, _group_target(spec, arch, members))
    names = spec.split(",") if isinstance(spec, str) else list(spec) if isinstance(spec, (list, tuple)) else None
    if names is None:
        raise UsageError(f"target must be a name, a comma-separated list or a list of names, got {spec!r}")
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise UsageError(f"a target list needs one or more target names, no empty ones: got {spec!r} "
                         f"(e.g. 'avx2,avx512'; groups: {', '.join(group_names())})")
    names = [n.strip() for n in names]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise UsageError(f"target list {spec!r} names {', '.join(dups)} more than once")
    if "host" in names:
        raise UsageError(f"target list {spec!r}: 'host' is not allowed in a list (name the ISAs)")
    members = [get_target(n) for n in names]   # an unknown name: get_target's error
    arches = sorted({t.arch for t in members if t.arch != "any"})
    if len(arches) > 1:
        raise UsageError(f"target list {spec!r} mixes architectures ("
                         + ", ".join(f"{t.name}: {t.arch}" for t in members if t.arch != "any")
                         + "): one library holds code of one architecture")
    arch = arches[0] if arches else host_arch()
    members = tuple(sorted(members, key=lambda t: (-t.host_rank, t.name)))
    name = ",".join(t.name for t in members)
    return TargetGroup(name, arch, members, _group_target(name, arch, members))


def groups() -> list[dict]:
    """The architecture groups, each with its members (best first) and whether this host runs
    the library (some member runs) and which member it would pick."""
    out = []
    for g in group_names():
        grp = target_group(g)
        runs = [t.name for t in grp.members if grp.arch == host_arch() and host_supports(t)]
        out.append({"name": g, "arch": grp.arch, "members": list(grp.names), "runnable": bool(runs),
                    "missing": [] if runs else grp.target.missing_features(), "pick": runs[0] if runs else None})
    return out
