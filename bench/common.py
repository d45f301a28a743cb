"""Op-independent benchmark helpers for the ``bench/<op>.py`` scripts: single-threading,
interleaved median timing, bandwidth, size parsing, text tables, machine info.

They live in the package (``softgen/benchmark/``, the machinery of ``softgen bench``); this module
re-exports them so the scripts keep their imports. See ``softgen.benchmark``'s docstring for the
timing model (calibrate, warm up, interleaved rounds, medians with the IQR as the noise figure).

Importing this module sets the thread variables of ``single_threaded()`` first, before NumPy (and
its BLAS) is imported through softgen, as every script did by calling it right after the import.
"""
from __future__ import annotations

import os

# softgen.benchmark.timing.THREAD_VARS, spelled here because it must be set before softgen (and
# NumPy) is imported; checked equal below. SOFTGEN_NUM_THREADS caps the generated libraries' auto.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "SOFTGEN_NUM_THREADS")
for _v in THREAD_VARS:
    os.environ[_v] = "1"

from softgen.benchmark import (  # noqa: E402,F401
    Column,
    CopyKernel,
    Timing,
    Variant,
    calibrate,
    count_label,
    gbps,
    git_commit,
    machine_info,
    max_rel_err,
    numpy_softmax,
    parse_count,
    parse_size,
    ratio,
    render_table,
    sampler,
    single_threaded,
    size_label,
    time_callable,
    time_interleaved,
    timing as _timing,  # noqa: E402
)

if set(THREAD_VARS) != set(_timing.THREAD_VARS):
    raise ImportError("bench/common.py THREAD_VARS differs from softgen.benchmark.timing.THREAD_VARS")


def torch_one_thread(without: str = "softgen alone"):
    """torch with one intra-op thread (the scripts' one-thread peer), or None, saying so, when it
    is not installed (the script then times ``without``)."""
    try:
        import torch
    except ImportError:
        print(f"torch not installed: {without}")
        return None
    torch.set_num_threads(1)
    return torch


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def call_peak(fn) -> dict:
    """Run ``fn`` once and measure its memory (Linux): "rss_before_mib", "call_peak_mib" (VmHWM after
    the call, the high-water mark reset just before it through /proc/self/clear_refs, so imports and
    compiling, which can peak higher, do not mask it), "call_mib" (what the call held at its peak)
    and the process's "maxrss_mib"."""
    import resource
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mib("VmRSS")
    fn()
    peak = _status_mib("VmHWM")
    return {"rss_before_mib": before, "call_peak_mib": peak, "call_mib": peak - before,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def rss_rows(script: str, impls, lengths, child_args, have_torch: bool, bh: int, title: str) -> list[dict]:
    """One fresh ``script --rss-child impl L *child_args`` process per implementation and length (each
    prints ``call_peak``'s JSON line last), the rows printed as a table against the L x L score
    matrix of ``bh`` heads ("S MiB")."""
    import json
    import subprocess
    import sys
    rows = []
    for L in lengths:
        for impl in impls:
            if impl.startswith("torch") and not have_torch:
                continue
            r = subprocess.run([sys.executable, os.path.abspath(script), "--rss-child", impl, str(L),
                                *(str(x) for x in child_args)], capture_output=True, text=True)
            if r.returncode:
                print(f"{impl} L={L}: failed: {r.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            row["s_mib"] = bh * L * L * 4 / 2 ** 20
            rows.append(row)
    if rows:
        print(f"\nmemory: {title}")
        hdr = f"{'L':>6}  {'impl':<20} {'RSS before':>10} {'call peak':>9} {'call MiB':>9} {'S MiB':>7} {'maxrss':>7}"
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            print(f"{r['L']:>6}  {r['impl']:<20} {r['rss_before_mib']:>10.1f} {r['call_peak_mib']:>9.1f} "
                  f"{r['call_mib']:>9.1f} {r['s_mib']:>7.1f} {r['maxrss_mib']:>7.1f}")
    return rows


# The C harnesses' timing: the best of ``rounds`` rounds of ``reps`` calls of ``row`` (TSC cycles per
# element); the empty asm keeps the compiler from merging the calls. Fill with %% {"row", "rounds"}.
RDTSC_BEST_OF = r"""
    unsigned long long best = ~0ull;
    for (int r = 0; r < %(rounds)d; r++) {
        unsigned long long t0 = __rdtsc();
        for (int i = 0; i < reps; i++) { %(row)s(x, y, n); __asm__ volatile("" ::: "memory"); }
        unsigned long long t = __rdtsc() - t0;
        if (t < best) best = t;
    }
    printf("%%.4f\n", (double)best / reps / n);
"""
