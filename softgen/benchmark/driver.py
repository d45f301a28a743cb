"""The ``softgen bench`` driver: softgen's kernels (auto, or every variant), the peers and the copy
kernel, timed interleaved per size; returns every row for ``report`` and ``plot``."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import machine, ops, passes
from .._version import __version__
from ..errors import UsageError
from ..kernel import compile as compile_kernel
from ..targets import get_target, host_arch, is_group_spec, target_group
from .copykernel import COPY_BYTES, CopyKernel
from .parse import parse_sizes, size_label
from .peers import PEERS, load_peers, max_rel_err, numpy_softmax
from .report import machine_info
from .timing import Progress, Variant, _buffers, _rotating, gbps, ratio, time_interleaved

# -- the benchmark -----------------------------------------------------------------------------------------

DEFAULT_SIZES = "1K,64K,1M,16M"


@dataclass
class BenchConfig:
    op: str = "softmax"
    shapes: list = field(default_factory=lambda: parse_sizes(DEFAULT_SIZES))   # (rows, n)
    against: list = field(default_factory=lambda: list(PEERS))
    all: bool = False                 # every applicable algorithm, not only auto's choice
    # each a target (a name or "host") or a group (x86-64, aarch64, a list of names: one library,
    # the ISA picked at load), timed side by side
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
        _bench_target(t)                     # an unknown name is a UsageError naming the known ones
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


def _bench_target(spec) -> tuple[str, str]:
    """(the name of what ``compile(target=...)`` gets, the runnable target that stands for it: the
    copy kernel's) of one entry of ``BenchConfig.targets``; a UsageError if this CPU cannot run it.
    A group's library runs the first member this CPU runs (its ISA check at load)."""
    if not is_group_spec(spec):
        target = get_target(spec)
        if not target.runnable:
            raise UsageError(f"bench: target {target.name} cannot run on this CPU (missing "
                             f"{', '.join(target.missing_features())}); see 'softgen targets'")
        return target.name, target.name
    group = target_group(spec)
    pick = next((t for t in group.members if t.runnable), None) if group.arch in ("any", host_arch()) else None
    if pick is None:
        raise UsageError(f"bench: the {group.name} library ({', '.join(group.names)}, {group.arch}) cannot run on "
                         f"this CPU; see 'softgen targets'")
    return group.name, pick.name


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

    def at(self, n: int, rows: int = 1) -> tuple[str, int, str]:
        """(algorithm, bytes per element, traffic) of a call on ``rows`` rows of n: a dispatcher's
        are its variant's for that call (``Kernel.dispatch``, ``DispatchTable.pick``)."""
        k = self.kernel
        if getattr(k, "members", ()):           # a library over ISAs: the member it runs here
            k = next(m for m in k.members if m.target.name == k.isa)
            if not k.dispatcher:
                tr = k.plan.traffic()
                return k.algorithm, tr["bytes_per_element"], tr["summary"]
        if not getattr(k, "dispatcher", False):
            return self.algorithm, self.bytes_per_element, self.traffic
        e = k.dispatch.pick(n, rows)
        tr = next(v for v in k.variants if v.name == e.symbol).plan.traffic()
        return e.algorithm, tr["bytes_per_element"], tr["summary"]


def _softgen_variants(cfg: BenchConfig) -> list[_SG]:
    # "host" and its name: once; a group: (its name, the runnable target standing for it)
    targets = list(dict.fromkeys(_bench_target(t) for t in cfg.targets))
    backends = list(dict.fromkeys(cfg.backends))
    multi = len(targets) > 1 or len(backends) > 1
    program = ops.build_program(cfg.op)
    out = []
    for t, runs in targets:
        for b in backends:
            auto = compile_kernel(cfg.op, algorithm="auto", target=t, backend=b)
            algs = passes.applicable_algorithms(program) if cfg.all else []
            # a dispatcher picks a variant per n, a group's library an ISA (and then maybe a
            # variant per n): timed as itself
            if auto.dispatcher or auto.algorithm == "auto":
                auto._entry(False)
                label = f"{t}/{b} auto" if multi else "auto"
                out.append(_SG(f"softgen {label}", auto, runs, b, "auto", True, 0, "per size"))
            elif auto.algorithm not in algs:    # auto's own entry is always timed
                algs = [auto.algorithm, *algs]
            for a in algs:
                k = auto if a == auto.algorithm else compile_kernel(cfg.op, algorithm=a, target=t, backend=b)
                k._entry(False)    # compile and load outside the timed region
                tr = k.plan.traffic()
                label = f"{a} (auto)" if a == auto.algorithm else a
                if multi:
                    label = f"{t}/{b} {label}"
                out.append(_SG(f"softgen {label}", k, runs, b, a, a == auto.algorithm,
                               tr["bytes_per_element"], tr["summary"]))
    return out


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
                alg, nbytes, traffic = v.at(n, R)
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
