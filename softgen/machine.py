"""The machine softgen runs on: its data caches, its usable cores, and an identity for tuning
records (features, caches and model string together: two VMs that report one CPU name may differ
in all of them, so a name alone never identifies a machine).

Cache sizes come from Linux sysfs (``/sys/devices/system/cpu/cpu0/cache``), else glibc's
``sysconf``, else typical x86/Arm server values; ``source`` says which. ``SOFTGEN_CACHE_SIZES``
(``L1d=48K,L2=1M,L3=32M``) overrides them, for tests and for machines that misreport.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .targets import host_arch, host_features

LEVELS = ("L1d", "L2", "L3")
FALLBACK = {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}   # used only when nothing else says
_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")
_SIZE = re.compile(r"(\d+)\s*([KMG]?)i?B?", re.IGNORECASE)


@dataclass(frozen=True)
class Caches:
    """Data cache sizes in bytes as one core sees them (L3: the whole shared cache)."""

    L1d: int
    L2: int
    L3: int
    source: str            # "sysfs", "sysconf", "SOFTGEN_CACHE_SIZES" or "fallback"

    def sizes(self) -> dict[str, int]:
        return {lvl: getattr(self, lvl) for lvl in LEVELS}

    def level_of(self, nbytes: int) -> str:
        """The first level ``nbytes`` of working set fits in: L1d, L2, L3 or DRAM."""
        return next((lvl for lvl in LEVELS if nbytes <= getattr(self, lvl)), "DRAM")


def parse_size(text: str) -> int:
    """``32K``, ``1024K``, ``1M``, ``32768`` (bytes) -> bytes."""
    m = _SIZE.fullmatch(str(text).strip())
    if not m:
        raise UsageError(f"not a cache size: {text!r} (e.g. 48K, 1M, 32M)")
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[m[2].upper()]


def _from_env(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        if key not in LEVELS:
            raise UsageError(f"SOFTGEN_CACHE_SIZES: unknown level {key!r} in {text!r}; "
                             f"use {', '.join(LEVELS)} (e.g. L1d=48K,L2=1M,L3=32M)")
        out[key] = parse_size(value)
    return out


def _from_sysfs(root: Path) -> dict[str, int]:
    out = {}
    for d in sorted(root.glob("index*")):
        try:
            level = int((d / "level").read_text())
            kind = (d / "type").read_text().strip()
            size = parse_size((d / "size").read_text())
        except (OSError, ValueError, UsageError):
            continue
        if kind in ("Data", "Unified") and 1 <= level <= 3:
            out[LEVELS[level - 1]] = size
    return out


def _from_sysconf() -> dict[str, int]:
    names = {"L1d": "SC_LEVEL1_DCACHE_SIZE", "L2": "SC_LEVEL2_CACHE_SIZE", "L3": "SC_LEVEL3_CACHE_SIZE"}
    out = {}
    for lvl, name in names.items():
        try:
            v = os.sysconf(name)
        except (ValueError, OSError):
            continue
        if v > 0:
            out[lvl] = v
    return out


def caches(sysfs: Path = _SYSFS) -> Caches:
    """This machine's data caches (see the module docstring for where they come from)."""
    env = os.environ.get("SOFTGEN_CACHE_SIZES")
    if env:
        return Caches(**{**_detected(sysfs)[0], **_from_env(env)}, source="SOFTGEN_CACHE_SIZES")
    sizes, source = _detected(sysfs)
    return Caches(**sizes, source=source)


def _detected(sysfs: Path) -> tuple[dict[str, int], str]:
    for source, read in (("sysfs", lambda: _from_sysfs(sysfs)), ("sysconf", _from_sysconf)):
        found = read()
        if found:
            return {**FALLBACK, **found}, source if len(found) == len(LEVELS) else f"{source}+fallback"
    return dict(FALLBACK), "fallback"


def cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def identity() -> dict:
    """What a tuning record is keyed by: architecture, vendor, model string and numbers, the
    enabled ISA features, the caches and the usable cores."""
    # the caches ($SOFTGEN_CACHE_SIZES) and the cores (affinity) are read on every call: a process
    # that changes either must not key its records by what they were first
    return _identity(tuple(caches().sizes().items()), cores())


@functools.lru_cache(maxsize=1)
def _cpu() -> dict:
    info = _cpuinfo()
    model = info.get("model name") or info.get("Model") or info.get("CPU part") or platform.processor()
    return {"arch": host_arch(), "vendor": info.get("vendor_id") or info.get("CPU implementer", ""),
            "model_name": model, "family": info.get("cpu family", ""), "model": info.get("model", ""),
            "stepping": info.get("stepping", ""),
            "features": sorted(f for f, on in host_features().items() if on)}


def _identity(cache_sizes: tuple, ncores: int) -> dict:
    return {**_cpu(), "features": list(_cpu()["features"]), "caches": dict(cache_sizes), "cores": ncores}


def fingerprint(ident: dict | None = None) -> str:
    """A short stable hash of ``identity()`` (or of ``ident``)."""
    blob = json.dumps(ident if ident is not None else identity(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def describe() -> str:
    """One line for benchmark and tuning headers."""
    ident, c = identity(), caches()
    sizes = ", ".join(f"{lvl} {v >> 10} KiB" for lvl, v in c.sizes().items())
    return (f"{ident['model_name'] or ident['arch']} ({ident['vendor'] or ident['arch']}"
            f"{' family ' + ident['family'] if ident['family'] else ''}"
            f"{' model ' + ident['model'] if ident['model'] else ''}), {ident['cores']} usable cores, "
            f"{sizes} ({c.source}), id {fingerprint(ident)}")

