"""What a benchmark run prints and saves: text tables, the machine it ran on, JSON."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UsageError
from .timing import THREAD_VARS

# -- tables ------------------------------------------------------------------------------------------

Column = tuple  # (key, header, format) ; format: str spec, or callable(value, row) -> str


def _fmt(v, spec, row) -> str:
    if callable(spec):
        return spec(v, row)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def render_table(rows: Iterable[dict], columns: Sequence[Column], *, group: str | None = None) -> str:
    """Fixed-width text table; a blank line whenever ``row[group]`` changes."""
    rows = list(rows)
    cells = [[h for _, h, _ in columns]] + [[_fmt(r.get(k), f, r) for k, _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]

    def line(c):  # first column left-aligned, numbers right-aligned
        return "  ".join(s.ljust(w) if i == 0 or not _numeric(s) else s.rjust(w)
                         for i, (s, w) in enumerate(zip(c, widths))).rstrip()
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    for i, (r, c) in enumerate(zip(rows, cells[1:])):
        if group is not None and i > 0 and r.get(group) != rows[i - 1].get(group):
            out.append("")
        out.append(line(c))
    return "\n".join(out)


def _numeric(s: str) -> bool:
    s = s.strip().rstrip("x%").lstrip("+-")
    return s.replace(".", "", 1).replace("e-", "", 1).replace("e+", "", 1).isdigit() or s == "-"


# -- environment -------------------------------------------------------------------------------------

def machine_info() -> dict:
    """What the numbers were measured on."""
    info = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        info["affinity"] = sorted(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        for line in txt.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                fl = set(line.split(":", 1)[1].split())
                info["isa"] = [x for x in ("sse4_2", "avx", "avx2", "fma", "avx512f") if x in fl]
                break
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=20)
        info["cc"] = out.stdout.splitlines()[0] if out.stdout else None
    except (OSError, subprocess.SubprocessError):
        info["cc"] = None
    info["threads_env"] = {v: os.environ.get(v) for v in THREAD_VARS}
    info["commit"] = git_commit()
    return info


def git_commit(path: str | None = None) -> str | None:
    """Short HEAD of the repository holding ``path`` (this file's), '+dirty' if tracked files
    differ from it; None outside a git checkout."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=20)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# -- report ------------------------------------------------------------------------------------------------

def _ns(v, row=None):
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _x(v, row=None):
    return "-" if v is None else f"{v:.2f}x"


def _pct(v, row=None):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


TABLE_COLUMNS = [("size", "size", "s"), ("level", "fits", "s"), ("variant", "variant / peer", "s"),
                 ("ns_per_element", "ns/elem", _ns), ("gbps", "GB/s", ".2f"),
                 ("copy_fraction", "of copy", _pct), ("vs_best_peer", "vs best peer", _x),
                 ("noise", "noise", _pct)]


def format_report(res: dict) -> str:
    """The printed report: a header, the table, and what each column and peer means."""
    m, cfg = res["machine"], res["config"]
    info = m["info"]
    out = [f"# softgen {res['softgen']} (commit {info.get('commit')}) bench --op {res['op']}, {info['date']}",
           f"# cpu: {m['describe']}",
           f"# {info.get('cc')}; python {info['python']}; 1 thread; samples >= {cfg['min_time'] * 1e3:.0f} ms, "
           f"medians of {cfg['min_rounds']}-{cfg['max_rounds']} interleaved rounds; wall {res['wall_seconds']} s"
           + (f"; load average {info['loadavg'][0]:.2f}" if info.get("loadavg") else "")]
    for name, p in res["peers"]["used"].items():
        out.append(f"# peer {name} {p['version']}: threads {p['threads']}; traffic {p['traffic']}")
    for name, why in res["peers"]["skipped"].items():
        out.append(f"# peer {name} skipped: {why}")
    for v in res["variants"]:
        if v.get("dispatch"):   # a dispatcher: its table (each row's traffic is its variant's)
            table = "; ".join(f"{e['algorithm']} (unroll={e['schedule'].get('unroll')}, accumulators="
                              f"{e['schedule'].get('accumulators')}) for {e['n_min']} <= n"
                              + (f" <= {e['n_max']}" if e["n_max"] else "") for e in v["dispatch"])
            how = "tuned: measured on this machine" if v.get("tuned") else "untuned: the cost model"
            out.append(f"# {v['name']}: {v['kernel']}, dispatching ({how}): {table}")
            continue
        out.append(f"# {v['name']}: {v['kernel']} ({v['schedule']}), traffic {v['traffic']} = "
                   f"{v['bytes_per_element']} B/elem")
    if res["copy_kernel"]:
        ck = res["copy_kernel"]
        out.append(f"# copy: generated streaming copy for {ck['target']}, 8 B/elem (1R + 1W)"
                   + ("; non-temporal stores timed for sizes beyond the LLC" if ck["non_temporal"]
                      else "; this target has no non-temporal stores"))
    out.append("")
    out.append(render_table(res["rows"], TABLE_COLUMNS, group="size"))
    out.append("")
    out.append("GB/s: each implementation's own traffic per element / time (write-allocate not counted); "
               "of copy: GB/s / the best copy's GB/s at that size;")
    out.append("vs best peer: t(fastest peer) / t (> 1: faster than every peer); noise: interquartile "
               "range / median; fits: the cache level x and y fit in (DRAM: rotated buffers >= 2x LLC).")
    out.append("of copy > 100%: the plan counts every sweep's reads as memory traffic, but a later sweep's "
               "reads hit a closer cache (e.g. x fits L2 while x + y do not).")
    out.append("Times on a shared machine are noisy: compare ratios within one run (interleaved), not "
               "across runs.")
    out.extend(f"note: {t}" for t in res["notes"])
    return "\n".join(out)


def to_json(res: dict) -> str:
    """``res`` as strict JSON text: NaN and infinities (an unmeasurable ratio) become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(res), indent=1, default=str, allow_nan=False) + "\n"


def check_output(path: str, what: str) -> Path:
    """``path`` as a Path whose directory exists (else a UsageError naming ``what``)."""
    p = Path(path)
    if not p.parent.is_dir():
        raise UsageError(f"{what}: directory {str(p.parent)!r} does not exist")
    return p
