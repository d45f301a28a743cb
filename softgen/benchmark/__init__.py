"""``softgen bench``: time softgen's kernels against the peers that are installed (NumPy, PyTorch,
ONNX Runtime) and against the machine's copy bandwidth, measured with a generated streaming-copy
kernel (``templates/copy.c.j2`` through softgen's own runtime).

The timing machinery here is also what the ``bench/`` scripts use (``bench/common.py`` re-exports it).

Modules: ``deps`` (optional imports), ``parse`` (sizes, shapes), ``timing`` (single-threading,
interleaved medians, buffers, progress), ``copykernel`` (the streaming copy), ``peers`` (NumPy, torch,
ONNX Runtime, checked against NumPy), ``report`` (tables, machine info, JSON), ``plotting``, ``driver`` (the
``softgen bench`` driver). This package re-exports what callers import (``softgen.benchmark.X``).

Timing model
------------
A *variant* is either a zero-argument callable or a ``(statement, globals)`` pair; statements are
compiled by :mod:`timeit` straight into its timing loop, so they avoid the extra Python frame a
``lambda`` adds (~40-60 ns, which matters for microsecond calls). For every variant:

1. *calibrate*: find ``number`` (calls per sample) such that one sample takes >= ``min_time``
   (default 20 ms); this also warms caches, page tables and lazily built kernels;
2. run ``warmup`` further discarded samples;
3. run ``rounds`` samples, *interleaved* with the other variants (round r visits the variants in
   an order rotated by r), so drift and neighbours' noise hit all variants alike;
4. report the median (and min / quartiles) of the per-call times; the interquartile range relative
   to the median is the noise figure.

``rounds`` adapts to the size: enough to spend about ``budget`` seconds per variant, clamped to
[min_rounds, max_rounds], so small sizes get many samples and 64M-element rows get a handful.

Buffers: every buffer is written before it is timed (no first-touch page faults in the timed
region; ``np.zeros`` would hand out untouched pages). For sizes whose working set (x and y) does not
fit the last-level cache (``machine.caches()``), the calls rotate over enough buffer pairs that
together they are at least twice the LLC, so every call streams from DRAM. Peers run on one thread
(``single_threaded()``, ``torch.set_num_threads(1)``, ONNX Runtime with one intra-op thread and
I/O binding on the same buffers).
"""

from __future__ import annotations

from . import (
    copykernel,  # noqa: F401
    deps,  # noqa: F401
    driver,  # noqa: F401
    parse,  # noqa: F401
    peers,  # noqa: F401
    plotting,  # noqa: F401
    report,  # noqa: F401
    timing,  # noqa: F401
)
from .copykernel import (  # noqa: F401
    COPY_BYTES,
    COPY_SYMBOL,
    CopyKernel,
)
from .deps import (  # noqa: F401
    require_matplotlib,
)
from .driver import (  # noqa: F401
    _SG,
    DEFAULT_SIZES,
    BenchConfig,
    _softgen_variants,
    run,
    validate,
)
from .parse import (  # noqa: F401
    SHAPES_FORM,
    SIZES_FORM,
    _items,
    count_label,
    parse_count,
    parse_shapes,
    parse_size,
    parse_sizes,
    size_label,
)
from .peers import (  # noqa: F401
    _INSTALL,
    _PEER_LOADERS,
    ONNX_OPSET,
    PEER_OPS,
    PEER_TOL,
    PEERS,
    Peer,
    PeerMismatch,
    _numpy_peer,
    _ort_peer,
    _softmax64,
    _torch_peer,
    load_peers,
    max_rel_err,
    numpy_softmax,
    onnx_softmax_model,
    parse_against,
    verify_peer,
)
from .plotting import (  # noqa: F401
    plot,
)
from .report import (  # noqa: F401
    TABLE_COLUMNS,
    Column,
    _fmt,
    _ns,
    _numeric,
    _pct,
    _x,
    check_output,
    format_report,
    git_commit,
    machine_info,
    render_table,
    to_json,
)
from .timing import (  # noqa: F401
    THREAD_VARS,
    Progress,
    Timing,
    Variant,
    _buffers,
    _clock,
    _quartiles,
    _rotating,
    calibrate,
    gbps,
    ratio,
    sampler,
    single_threaded,
    time_callable,
    time_interleaved,
)
