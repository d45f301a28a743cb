"""``softgen bench``: time softgen's kernels against the peers that are installed (NumPy, PyTorch,
ONNX Runtime) and against the machine's copy bandwidth, measured with a generated streaming-copy
kernel (``templates/copy.c.j2`` through softgen's own runtime).

The timing machinery here is also what the ``bench/`` scripts use (``bench/common.py`` re-exports it).

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

import ctypes
import datetime as _dt
import importlib
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import timeit
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from . import machine, ops, passes, render, runtime
from ._version import __version__
from .errors import SoftgenError, UsageError
from .kernel import compile as compile_kernel
from .targets import Target, get_target

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def single_threaded() -> None:
    """Force every threaded math library to one thread. Call before numpy/torch are imported
    (the env vars are read at import); torch additionally needs ``torch.set_num_threads(1)``."""
    for v in THREAD_VARS:
        os.environ[v] = "1"


# -- timing ------------------------------------------------------------------------------------------

Variant = Union[Callable[[], object], tuple]          # callable, or (stmt, globals)


def sampler(variant: Variant) -> Callable[[int], float]:
    """``f(number) -> seconds`` for ``number`` back-to-back executions of ``variant``."""
    if isinstance(variant, tuple):
        stmt, glb = variant
        return timeit.Timer(stmt, globals=dict(glb)).timeit
    if callable(variant):
        return timeit.Timer(variant).timeit
    raise TypeError(f"variant must be a callable or (stmt, globals), got {type(variant).__name__}")


def calibrate(sample: Callable[[int], float], min_time: float = 0.02,
              max_number: int = 10_000_000) -> tuple[int, float]:
    """Smallest-ish ``number`` with ``sample(number) >= min_time``; returns (number, s/call)."""
    number = 1
    while True:
        t = sample(number)
        if t >= min_time or number >= max_number:
            return number, t / number
        # aim 20% above the target; grow at least 2x and at most 100x per step
        want = math.ceil(number * min_time * 1.2 / max(t, 1e-9))
        number = min(max_number, max(2 * number, min(want, 100 * number)))


@dataclass
class Timing:
    median: float                       # seconds per call
    min: float
    q1: float
    q3: float
    number: int                         # calls per sample
    rounds: int                         # samples taken
    samples: list = field(default_factory=list, repr=False)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise indicator)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else float("nan")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["spread"] = self.spread
        return d


def _quartiles(xs: Sequence[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def time_interleaved(variants: Mapping[str, Variant], *, min_time: float = 0.02,
                     budget: float = 0.5, min_rounds: int = 5, max_rounds: int = 25,
                     warmup: int = 1) -> dict[str, Timing]:
    """Median seconds per call of each variant, measured in alternating rounds (see module doc)."""
    names = list(variants)
    samplers = {k: sampler(variants[k]) for k in names}
    numbers, est = {}, {}
    for k in names:                                   # calibration doubles as first warm-up
        numbers[k], est[k] = calibrate(samplers[k], min_time)
    for _ in range(warmup):
        for k in names:
            samplers[k](numbers[k])
    per_round = sum(est[k] * numbers[k] for k in names)
    rounds = int(budget * len(names) / max(per_round, 1e-9))
    rounds = max(min_rounds, min(max_rounds, rounds))
    per_call: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        start = r % len(names)
        for k in names[start:] + names[:start]:
            per_call[k].append(samplers[k](numbers[k]) / numbers[k])
    out = {}
    for k in names:
        xs = per_call[k]
        q1, q3 = _quartiles(sorted(xs))
        out[k] = Timing(statistics.median(xs), min(xs), q1, q3, numbers[k], rounds, xs)
    return out


def time_callable(fn: Variant, **kw) -> float:
    """Median seconds per call of one callable (or (stmt, globals)) after warm-up."""
    return time_interleaved({"f": fn}, **kw)["f"].median


# -- derived quantities, sizes -----------------------------------------------------------------------

def gbps(bytes_per_element: float, elements: int, seconds: float) -> float:
    """Effective bandwidth in GB/s (1e9 B/s) for a given traffic model."""
    return bytes_per_element * elements / seconds / 1e9 if seconds > 0 else float("nan")


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or not den:
        return None
    return num / den


_COUNT = re.compile(r"(\d+(?:\.\d+)?)([KMG]?)", re.IGNORECASE)
_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SIZES_FORM = "element counts like 1K,64K,1M,16M or 1000 (K/M/G = 2^10/2^20/2^30)"
SHAPES_FORM = "ROWSxN shapes like 4096x512,8192x128 (each a count, K/M/G allowed)"


def parse_count(tok: str) -> int:
    """'1K' -> 1024, '4M' -> 4194304, '1G', '1000' -> 1000 (binary suffixes); a ValueError
    names the allowed forms."""
    m = _COUNT.fullmatch(str(tok).strip())
    if not m:
        raise ValueError(f"not an element count: {tok!r} ({SIZES_FORM})")
    v = float(m[1]) * _MULT[m[2].upper()]
    if v != int(v) or v < 1:
        raise ValueError(f"not a positive whole element count: {tok!r} ({SIZES_FORM})")
    return int(v)


def count_label(n: int) -> str:
    for suf, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{suf}"
    return str(n)


def size_label(rows: int, n: int) -> str:
    return count_label(n) if rows == 1 else f"{rows}x{n}"


def parse_size(tok: str) -> tuple[int, int]:
    """One size or shape: '1K' -> (1, 1024); '8192x128' -> (8192, 128) (the bench/ scripts' form);
    a ValueError names the allowed forms."""
    r, sep, n = str(tok).strip().lower().rpartition("x")
    return (parse_count(r) if sep else 1), parse_count(n)


def _items(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``--sizes 1K,64K,1M``: single rows, as (rows, n) pairs."""
    items = _items(text)
    if not items:
        raise UsageError(f"--sizes: empty; give {SIZES_FORM}")
    out = []
    for tok in items:
        try:
            out.append((1, parse_count(tok)))
        except ValueError:
            raise UsageError(f"--sizes: bad value {tok!r}; give {SIZES_FORM}"
                             + (" (use --shapes for ROWSxN)" if "x" in tok.lower() else "")) from None
    return out


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``--shapes 4096x512,64x32K``: (rows, n) pairs."""
    items = _items(text)
    if not items:
        raise UsageError(f"--shapes: empty; give {SHAPES_FORM}")
    out = []
    for tok in items:
        r, sep, n = tok.lower().partition("x")
        try:
            if not sep:
                raise ValueError
            out.append((parse_count(r), parse_count(n)))
        except ValueError:
            raise UsageError(f"--shapes: bad value {tok!r}; give {SHAPES_FORM}") from None
    return out


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


# -- the streaming-copy kernel -----------------------------------------------------------------------

COPY_SYMBOL = "softgen_bench_copy"
COPY_BYTES = 8          # 1R + 1W per element (f32, write-allocate not counted)


class CopyKernel:
    """``y[:] = x`` through a generated kernel (``templates/copy.c.j2``: the target's vector loads
    and stores; non-temporal stores on request where the target has them), compiled and loaded by
    ``runtime.open_shared`` like every kernel."""

    def __init__(self, target: str | Target = "host", cc: str | None = None):
        self.target = get_target(target) if isinstance(target, str) else target
        if not self.target.runnable:
            raise UsageError(f"the copy kernel for target {self.target.name} cannot run on this CPU "
                             f"(missing {', '.join(self.target.missing_features())})")
        self.source = render.env().get_template("copy.c.j2").render(
            isa=render.isa_header(self.target), name=COPY_SYMBOL)
        self._handle = runtime.open_shared(self.source, self.target, cc=cc,
                                           symbols=(COPY_SYMBOL, COPY_SYMBOL + "_streams"))
        fn = getattr(self._handle, COPY_SYMBOL)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_size_t]
        fn.restype = ctypes.c_int
        self._fn = fn
        self.streams = bool(getattr(self._handle, COPY_SYMBOL + "_streams")())

    @staticmethod
    def _check(x: np.ndarray, y: np.ndarray) -> None:
        for what, a in (("x", x), ("y", y)):
            if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
                raise UsageError(f"copy: {what} must be a C-contiguous float32 array")
        if not y.flags.writeable:
            raise UsageError("copy: y is read-only")
        if x.size != y.size:
            raise UsageError(f"copy: x has {x.size} elements, y {y.size}")

    def __call__(self, x: np.ndarray, y: np.ndarray, stream: bool = False) -> np.ndarray:
        self._check(x, y)
        rc = self._fn(x.ctypes.data, y.ctypes.data, x.size, int(bool(stream)), 1)
        if rc:
            raise SoftgenError(f"copy kernel returned {rc}")
        return y

    @staticmethod
    def reps(elements: int) -> int:
        """Copies per timed call: enough that one call moves >= 64 KiB (the Python call's cost
        would otherwise be timed as bandwidth at small sizes)."""
        return max(1, (1 << 14) // max(elements, 1))

    def variant(self, x: np.ndarray, y: np.ndarray, stream: bool = False) -> tuple:
        """A ``(statement, globals)`` timing variant of ``reps(x.size)`` copies of ``x`` into ``y``."""
        self._check(x, y)
        return ("f(px, py, n, s, r)", {"f": self._fn, "px": x.ctypes.data, "py": y.ctypes.data,
                                       "n": x.size, "s": int(bool(stream)), "r": self.reps(x.size)})


# -- peers ---------------------------------------------------------------------------------------------

PEERS = ("numpy", "torch", "onnxruntime")
PEER_OPS = ("softmax",)


def _import(name: str):
    """``importlib.import_module`` (tests replace it to simulate a missing package)."""
    return importlib.import_module(name)


def numpy_softmax(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The straightforward NumPy softmax, writing into a preallocated ``out``."""
    m = x.max(-1, keepdims=True)
    np.subtract(x, m, out=out)
    np.exp(out, out=out)
    s = out.sum(-1, keepdims=True)
    np.divide(out, s, out=out)
    return out


@dataclass
class Peer:
    """Another library's softmax: ``variant(x, y)`` is a timing variant writing softmax(x) to y."""

    name: str
    version: str
    bytes_per_element: int
    traffic: str
    variant: Callable[[np.ndarray, np.ndarray], tuple]
    threads: str


def _numpy_peer() -> Peer:
    return Peer("numpy", np.__version__, 32, "5R + 3W (assumed: max, x-m, exp, sum, divide)",
                lambda x, y: ("f(x, y)", {"f": numpy_softmax, "x": x, "y": y}), "1 (NumPy ufuncs)")


def _torch_peer() -> Peer:
    torch = _import("torch")
    torch.set_num_threads(1)

    def variant(x, y):
        return ("f(xt, -1, out=yt)", {"f": torch.softmax, "xt": torch.from_numpy(x), "yt": torch.from_numpy(y)})
    return Peer("torch", torch.__version__, 24, "4R + 2W (assumed: ATen _vec_softmax_lastdim)", variant,
                f"{torch.get_num_threads()} (torch.set_num_threads(1))")


def onnx_softmax_model(opset: int = 13) -> bytes:
    """A one-node ONNX model ``y = Softmax(x, axis=-1)`` over float [rows, n] (needs ``onnx``)."""
    onnx = _import("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    graph = helper.make_graph([node], "softgen_bench_softmax",
                              [helper.make_tensor_value_info("x", tp.FLOAT, ["rows", "n"])],
                              [helper.make_tensor_value_info("y", tp.FLOAT, ["rows", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8     # opset 13 needs IR >= 7; 8 loads in every onnxruntime since 1.10
    return model.SerializeToString()


def _ort_peer() -> Peer:
    ort = _import("onnxruntime")
    try:
        model = onnx_softmax_model()
    except ImportError as e:
        raise ImportError(f"onnx is not installed, which builds the one-node Softmax model ({e})") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def variant(x, y):
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        io = sess.io_binding()
        io.bind_input("x", "cpu", 0, np.float32, list(x2.shape), x2.ctypes.data)
        io.bind_output("y", "cpu", 0, np.float32, list(y2.shape), y2.ctypes.data)
        return ("s.run_with_iobinding(io)", {"s": sess, "io": io, "keep": (x2, y2)})
    return Peer("onnxruntime", ort.__version__, 24, "4R + 2W (assumed: MLAS max, exp+sum, scale)", variant,
                "1 (intra_op_num_threads=1, I/O binding)")


_PEER_LOADERS = {"numpy": _numpy_peer, "torch": _torch_peer, "onnxruntime": _ort_peer}
_INSTALL = {"torch": "pip install torch", "onnxruntime": "pip install onnxruntime onnx"}


def parse_against(text: str) -> list[str]:
    """``--against numpy,torch,onnxruntime`` (``none``: no peers)."""
    items = [t.lower() for t in _items(text)]
    if items == ["none"]:
        return []
    bad = [t for t in items if t not in PEERS]
    if bad or not items:
        raise UsageError(f"--against: unknown peer(s) {', '.join(map(repr, bad)) or '(empty)'}; "
                         f"choose from {','.join(PEERS)} (comma-separated) or none")
    return list(dict.fromkeys(items))


def load_peers(names: Sequence[str], op: str = "softmax") -> tuple[list[Peer], dict[str, str]]:
    """The peers among ``names`` that can run here, and ``{name: why}`` for those skipped."""
    peers, skipped = [], {}
    for name in names:
        if op not in PEER_OPS:
            skipped[name] = f"the peers implement {', '.join(PEER_OPS)} only, not {op}"
            continue
        try:
            peers.append(_PEER_LOADERS[name]())
        except ImportError as e:
            why = str(e) or f"{name} is not importable"
            skipped[name] = f"not installed ({why}; {_INSTALL.get(name, 'pip install ' + name)})"
        except Exception as e:   # a broken install: skip it, saying why
            skipped[name] = f"failed to set up: {type(e).__name__}: {e}"
    return peers, skipped


# -- progress ------------------------------------------------------------------------------------------

class Progress:
    """A progress bar with ETA on stderr: tqdm when installed, else a small built-in one."""

    def __init__(self, total: int, desc: str = "bench", enabled: bool = True, stream=None):
        self.total, self.done, self.desc, self.enabled = total, 0, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()
        self._tqdm = None
        if enabled:
            try:
                tqdm = _import("tqdm")
                self._tqdm = tqdm.tqdm(total=total, desc=desc, file=self.stream, leave=False)
            except ImportError:
                pass

    def update(self, what: str = "") -> None:
        self.done += 1
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(what, refresh=False)
            self._tqdm.update(1)
            return
        el = time.monotonic() - self.start
        eta = el / self.done * (self.total - self.done)
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        tty = getattr(self.stream, "isatty", lambda: False)()
        msg = (f"{self.desc} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
               f"{_clock(el)} elapsed, ETA {_clock(eta)} {what}")
        self.stream.write(("\r" + msg + "\x1b[K") if tty else msg + "\n")
        if tty and self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def _clock(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}:{s % 60:02d}"


# -- the benchmark -----------------------------------------------------------------------------------------

DEFAULT_SIZES = "1K,64K,1M,16M"


@dataclass
class BenchConfig:
    op: str = "softmax"
    shapes: list = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))   # (rows, n)
    against: list = field(default_factory=lambda: list(PEERS))
    all: bool = False                 # every applicable algorithm, not only auto's choice
    targets: list = field(default_factory=lambda: ["host"])
    backends: list = field(default_factory=lambda: ["c"])
    copy: bool = True                 # the generated streaming copy (the bandwidth bound)
    check: bool = True                # compare every output with NumPy's softmax once per size
    min_time: float = 0.02            # seconds per sample
    budget: float = 0.3               # seconds per variant per size (sets the number of rounds)
    min_rounds: int = 5
    max_rounds: int = 25
    warmup: int = 1
    seed: int = 0
    progress: bool = True

    def timing_kw(self) -> dict:
        return dict(min_time=self.min_time, budget=self.budget, min_rounds=self.min_rounds,
                    max_rounds=self.max_rounds, warmup=self.warmup)


def validate(cfg: BenchConfig) -> None:
    """Everything checkable before anything is compiled or timed (UsageError otherwise)."""
    opdef = ops.get_op(cfg.op)
    if opdef.kind != "row" or opdef.call_params:
        ok = [o.name for o in ops.OPS.values() if o.kind == "row" and not o.call_params]
        raise UsageError(f"bench: op {cfg.op!r} is not benchmarked (row ops without call-time "
                         f"arguments only: {', '.join(ok)})")
    if not cfg.shapes:
        raise UsageError("bench: no sizes or shapes")
    for rows, n in cfg.shapes:
        if rows < 1 or n < 1:
            raise UsageError(f"bench: shape {rows}x{n}: rows and n must be >= 1")
    for t in cfg.targets:
        target = get_target(t)               # an unknown name is a UsageError naming the known ones
        if not target.runnable:
            raise UsageError(f"bench: target {target.name} cannot run on this CPU (missing "
                             f"{', '.join(target.missing_features())}); see 'softgen targets'")
    if not cfg.targets or not cfg.backends:
        raise UsageError("bench: need at least one target and one backend")
    bad = [p for p in cfg.against if p not in PEERS]
    if bad:
        raise UsageError(f"bench: unknown peer(s) {bad}; choose from {', '.join(PEERS)}")
    if not (cfg.min_time > 0 and cfg.budget >= 0 and 1 <= cfg.min_rounds <= cfg.max_rounds and cfg.warmup >= 0):
        raise UsageError("bench: need min_time > 0, budget >= 0, 1 <= min_rounds <= max_rounds, warmup >= 0")
    biggest = max(r * n for r, n in cfg.shapes) * 4 * 2
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        phys = 0
    if phys and biggest * 2 > phys:
        raise UsageError(f"bench: the largest size needs {biggest >> 20} MiB of buffers (x and y, twice for "
                         f"DRAM rotation), more than this machine's memory ({phys >> 20} MiB) allows")


@dataclass
class _SG:
    name: str
    kernel: object
    target: str
    backend: str
    algorithm: str
    auto: bool
    bytes_per_element: int
    traffic: str

    def at(self, n: int) -> tuple[str, int, str]:
        """(algorithm, bytes per element, traffic) of a call on rows of n: a dispatcher's are its
        variant's for that n (``Kernel.dispatch``)."""
        k = self.kernel
        if not getattr(k, "dispatcher", False):
            return self.algorithm, self.bytes_per_element, self.traffic
        alg = next(e.algorithm for e in k.dispatch.entries if n >= e.n_min and (e.n_max is None or n <= e.n_max))
        tr = next(v for v in k.variants if v.algorithm == alg).plan.traffic()
        return alg, tr["bytes_per_element"], tr["summary"]


def _softgen_variants(cfg: BenchConfig) -> list[_SG]:
    targets = list(dict.fromkeys(get_target(t).name for t in cfg.targets))     # "host" and its name: once
    backends = list(dict.fromkeys(cfg.backends))
    multi = len(targets) > 1 or len(backends) > 1
    program = ops.build_program(cfg.op)
    out = []
    for t in targets:
        target = get_target(t)
        for b in backends:
            auto = compile_kernel(cfg.op, algorithm="auto", target=target.name, backend=b)
            algs = passes.applicable_algorithms(program) if cfg.all else []
            if auto.dispatcher:                 # picks a variant per n: timed as itself
                auto._entry(False)
                label = f"{target.name}/{b} auto" if multi else "auto"
                out.append(_SG(f"softgen {label}", auto, target.name, b, "auto", True, 0, "per size"))
            elif auto.algorithm not in algs:    # auto's own entry is always timed
                algs = [auto.algorithm, *algs]
            for a in algs:
                k = auto if a == auto.algorithm else compile_kernel(cfg.op, algorithm=a, target=target.name,
                                                                    backend=b)
                k._entry(False)    # compile and load outside the timed region
                tr = k.plan.traffic()
                label = f"{a} (auto)" if a == auto.algorithm else a
                if multi:
                    label = f"{target.name}/{b} {label}"
                out.append(_SG(f"softgen {label}", k, target.name, b, a, a == auto.algorithm,
                               tr["bytes_per_element"], tr["summary"]))
    return out


def _buffers(rng, rows: int, n: int, pairs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(pairs):
        x = rng.standard_normal((rows, n) if rows > 1 else n, dtype=np.float32)
        y = np.empty_like(x)
        y.fill(0.0)            # touch every page now, not in the timed region
        out.append((x, y))
    return out


def _rotating(variants: list[tuple]) -> Variant:
    """One timing variant from one ``(stmt, globals)`` per buffer pair: each call uses the next."""
    if len(variants) == 1:
        return variants[0]
    code = compile(variants[0][0], "<bench>", "eval")
    calls = itertools.cycle([(code, dict(g)) for _, g in variants])

    def call():
        c, g = next(calls)
        return eval(c, g)
    return call


def max_rel_err(y: np.ndarray, ref: np.ndarray, chunk: int = 1 << 20) -> float:
    """max |y - ref| / max |ref| over the array, chunked (no full-size temporaries); NaN if y has one."""
    a, b = y.reshape(-1), ref.reshape(-1)
    err = scale = 0.0
    for i in range(0, a.size, chunk):
        d = np.abs(a[i:i + chunk] - b[i:i + chunk])
        if np.isnan(d).any():
            return float("nan")
        err = max(err, float(d.max()) if d.size else 0.0)
        scale = max(scale, float(np.abs(b[i:i + chunk]).max()))
    return err / scale if scale else err


def run(cfg: BenchConfig | None = None, *, stream=None) -> dict:
    """Run the benchmark; returns everything (``rows``: one per size x variant/peer/copy)."""
    cfg = cfg or BenchConfig()
    validate(cfg)
    t0 = time.monotonic()
    notes: list[str] = []
    caches = machine.caches()
    sg = _softgen_variants(cfg)
    peers, skipped = load_peers(cfg.against, cfg.op)
    copier = CopyKernel(sg[0].target) if cfg.copy else None
    rng = np.random.default_rng(cfg.seed)
    bar = Progress(len(cfg.shapes), desc=f"bench {cfg.op}", enabled=cfg.progress, stream=stream)
    rows: list[dict] = []
    try:
        for (R, n) in cfg.shapes:
            N = R * n
            label = size_label(R, n)
            ws = 2 * 4 * N                                      # x and y, f32
            level = caches.level_of(ws)
            pairs = max(1, math.ceil(2 * caches.L3 / ws)) if level == "DRAM" else 1
            bufs = _buffers(rng, R, n, pairs)
            variants: dict[str, Variant] = {}
            meta: dict[str, dict] = {}
            for v in sg:
                variants[v.name] = _rotating([("k(x, out=y)", {"k": v.kernel, "x": x, "y": y}) for x, y in bufs])
                alg, nbytes, traffic = v.at(n)
                meta[v.name] = dict(kind="softgen", target=v.target, backend=v.backend, algorithm=alg,
                                    auto=v.auto, bytes_per_element=nbytes, traffic=traffic)
            for p in peers:
                variants[p.name] = _rotating([p.variant(x, y) for x, y in bufs])
                meta[p.name] = dict(kind="peer", bytes_per_element=p.bytes_per_element, traffic=p.traffic)
            if copier is not None:
                modes = [False] + ([True] if copier.streams and level == "DRAM" else [])
                for s in modes:
                    name = "copy (non-temporal)" if s else "copy"
                    variants[name] = _rotating([copier.variant(x, y, s) for x, y in bufs])
                    meta[name] = dict(kind="copy", bytes_per_element=COPY_BYTES, copies_per_call=copier.reps(N),
                                      traffic="1R + 1W" + (", non-temporal stores" if s else ""))
            errs = {}
            if cfg.check and cfg.op == "softmax":
                x, y = bufs[0]
                ref = numpy_softmax(x, np.empty_like(x))
                for name, m in meta.items():
                    if m["kind"] == "copy":
                        continue
                    y.fill(np.nan)
                    v = variants[name]
                    v() if callable(v) else eval(v[0], dict(v[1]))
                    errs[name] = max_rel_err(y, ref)
                    if not errs[name] <= 1e-4:
                        notes.append(f"{label}: {name} differs from NumPy's softmax (max rel err {errs[name]:.2e})")
                del ref
            timings = time_interleaved(variants, **cfg.timing_kw())
            size_rows = []
            for name, tm in timings.items():
                m = meta[name]
                per = m.get("copies_per_call", 1)
                t = tm.median / per
                size_rows.append(dict(size=label, rows=R, n=n, elements=N, level=level, buffer_pairs=pairs,
                                      variant=name, **m, seconds=t, seconds_min=tm.min / per,
                                      ns_per_element=t / N * 1e9, gbps=gbps(m["bytes_per_element"], N, t),
                                      noise=tm.spread, rounds=tm.rounds, number=tm.number,
                                      max_rel_err=errs.get(name)))
            copy_bw = max((r["gbps"] for r in size_rows if r["kind"] == "copy"), default=None)
            best_peer = min((r["seconds"] for r in size_rows if r["kind"] == "peer"), default=None)
            for r in size_rows:
                r["copy_gbps"] = copy_bw
                r["copy_fraction"] = ratio(r["gbps"], copy_bw)
                r["vs_best_peer"] = ratio(best_peer, r["seconds"]) if r["kind"] != "copy" else None
            rows.extend(size_rows)
            del bufs, variants
            bar.update(label)
    finally:
        bar.close()
    cs = caches.sizes()
    return {
        "softgen": __version__,
        "op": cfg.op,
        "machine": {"describe": machine.describe(), "identity": machine.identity(),
                    "fingerprint": machine.fingerprint(), "caches": {**cs, "source": caches.source},
                    "info": machine_info()},
        "config": asdict(cfg),
        "peers": {"used": {p.name: {"version": p.version, "threads": p.threads, "traffic": p.traffic}
                           for p in peers},
                  "skipped": skipped},
        "variants": [{"name": v.name, "target": v.target, "backend": v.backend, "algorithm": v.algorithm,
                      "auto": v.auto, "kernel": v.kernel.name, "schedule": str(v.kernel.schedule),
                      "bytes_per_element": v.bytes_per_element, "traffic": v.traffic,
                      "dispatch": v.kernel.dispatch.as_list() if v.kernel.dispatcher else None,
                      "tuned": bool(getattr(v.kernel, "tuned", False))} for v in sg],
        "copy_kernel": {"target": copier.target.name, "non_temporal": copier.streams} if copier else None,
        "rows": rows,
        "notes": notes,
        "wall_seconds": round(time.monotonic() - t0, 2),
    }


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


def require_matplotlib():
    """The ``matplotlib.pyplot`` module (Agg backend), or a UsageError saying how to install it."""
    try:
        mpl = _import("matplotlib")
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed "
                         "(pip install matplotlib, or pip install 'softgen[bench]')") from None
    mpl.use("Agg")
    return _import("matplotlib.pyplot")


def plot(res: dict, path: str | Path) -> Path:
    """ns/element (log) vs elements per call (log) per variant and peer, the L1d/L2/L3 sizes as
    vertical lines (where x and y together fill them), and the copy-bandwidth roofline of the
    auto kernel's traffic."""
    plt = require_matplotlib()
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["elements"])
        kind = rs[0]["kind"]
        style = {"softgen": "-o", "peer": "--s", "copy": ":^"}[kind]
        ax.plot([r["elements"] for r in rs], [r["ns_per_element"] for r in rs], style, label=name, ms=4)
    auto = [r for r in rows if r["kind"] == "softgen" and r["auto"] and r["copy_gbps"]]
    if auto:   # auto's own traffic at each size (a dispatcher's: the variant it picks there)
        pts = sorted({(r["elements"], r["bytes_per_element"] / r["copy_gbps"]) for r in auto})
        ax.plot([e for e, _ in pts], [t for _, t in pts], "k-", lw=2, alpha=0.35,
                label="copy-bandwidth bound of auto's traffic (at the measured copy GB/s)")
    for lvl, size in res["machine"]["caches"].items():
        if lvl in machine.LEVELS:
            e = size / 8
            ax.axvline(e, color="grey", lw=0.8, ls="--")
            ax.text(e, 1.0, f" {lvl} {size >> 10} KiB", rotation=90, va="top", fontsize=8,
                    transform=ax.get_xaxis_transform())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements per call (dashed: where x + y, 8 B/elem, fill L1d / L2 / L3)")
    ax.set_ylabel("ns / element (median)")
    ident = res["machine"]["identity"]
    ax.set_title(f"softgen {res['softgen']} {res['op']}, 1 thread, {ident.get('model_name') or ident.get('arch')} "
                 f"(id {res['machine']['fingerprint']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
