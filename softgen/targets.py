"""Targets are data: one TOML file per ISA in ``targets/`` (vector width, compiler flags, LLVM
triple/cpu/features, and the intrinsic spelling of every macro of softgen's virtual ISA).
Host support is decided from the CPU *features* llvmlite reports, never from the CPU name."""
from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ._data import data_dir
from .errors import UsageError

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
OPTIONAL_ISA = {"SCALE2": "a, d"}  # a*2^d for integer-valued d <= 0; vmath has a generic fallback

# Preference order for "host": the widest ISA the CPU runs.
PREFERENCE = ("avx512", "avx2", "neon", "scalar")
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
    prelude: str = ""
    cross_cc: tuple[str, ...] = ()   # compilers to try when the host is another architecture
    emulator: tuple[str, ...] = ()   # user-mode emulators (qemu) to run it on another architecture
    extra: dict = field(default_factory=dict)

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
# names), on AArch64 with the Linux hwcaps of these features.
AARCH64_HWCAPS = {"neon": "HWCAP_ASIMD"}


def cpu_check(t: "Target") -> dict:
    """The C of a library's CPU check for ``t``: ``includes`` and ``expr``, an int expression,
    nonzero iff this CPU has every feature of ``t.requires`` (``"1"`` when there are none)."""
    if not t.requires:
        return {"includes": [], "expr": "1"}
    if t.arch == "x86_64":
        return {"includes": [], "expr": " && ".join(f'__builtin_cpu_supports("{f}")' for f in t.requires)}
    if t.arch == "aarch64":
        bits = " | ".join(AARCH64_HWCAPS[f] for f in t.requires)
        return {"includes": ["sys/auxv.h"], "expr": f"(getauxval(AT_HWCAP) & ({bits})) == ({bits})"}
    raise UsageError(f"target {t.name}: no CPU check for features on arch {t.arch!r}")


def _strings(v) -> tuple[str, ...]:
    """A TOML value that is one string or a list of them, as a tuple ("" is none)."""
    return tuple(s for s in ([v] if isinstance(v, str) else v) if s)


def _load(name: str, text: str) -> Target:
    d = tomllib.loads(text)
    try:
        isa = dict(d["isa"])
        missing = [k for k in VIRTUAL_ISA if k not in isa]
        unknown = [k for k in isa if k not in VIRTUAL_ISA and k not in OPTIONAL_ISA]
        if missing or unknown:
            raise UsageError(f"target file {name}.toml: missing macros {missing}, unknown {unknown}")
        if d["name"] != name:
            raise UsageError(f"target file {name}.toml declares name {d['name']!r}")
        t = Target(name=d["name"], summary=d["summary"], arch=d["arch"], lanes=int(d["lanes"]),
                   requires=tuple(d["requires"]), cflags=tuple(d["cflags"]), header=d["header"],
                   simde_header=_strings(d["simde_header"]), fma=d["fma"], llvm=dict(d["llvm"]),
                   types=dict(d["types"]), isa=isa, prelude=d.get("prelude", {}).get("code", ""),
                   cross_cc=tuple(d.get("cross_cc", ())), emulator=tuple(d.get("emulator", ())),
                   extra={k: d[k] for k in ("cross_hint", "emulator_hint") if k in d})
    except KeyError as e:
        raise UsageError(f"target file {name}.toml lacks key {e}") from None
    try:
        cpu_check(t)   # a library must be able to check its features
    except KeyError as e:
        raise UsageError(f"target file {name}.toml: no CPU check for feature {e}") from None
    return t


@functools.cache
def all_targets() -> dict[str, Target]:
    found = {}
    for entry in sorted(data_dir("targets").glob("*.toml")):
        found[entry.stem] = _load(entry.stem, entry.read_text())
    order = {n: i for i, n in enumerate(PREFERENCE)}
    return dict(sorted(found.items(), key=lambda kv: order.get(kv[0], 99)))


_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def get_target(name: str) -> Target:
    """Target by name; ``"host"`` (or ``None``) means the best one this CPU runs."""
    if name in (None, "host"):
        return all_targets()[host_target()]
    if not isinstance(name, str) or not _NAME_RE.match(name) or name not in all_targets():
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
    for name, t in all_targets().items():
        if host_supports(t):
            return name
    return "scalar"


def targets() -> list[dict]:
    """All targets with a flag saying whether this host can run their kernels."""
    return [{"name": t.name, "summary": t.summary, "lanes": t.lanes, "arch": t.arch,
             "runnable": host_supports(t), "missing": t.missing_features(),
             "host_default": t.name == host_target()} for t in all_targets().values()]
