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
