"""Differential fuzzer of softgen's kernels (issue 13): random valid combinations of op, op
parameters, algorithm, schedule knobs (rows, pipeline, lazymax, exp, stream, prefetch,
unroll/accumulators/block, split/chunk), target (the host-runnable ones), backend, thread count,
row layout (strided, unaligned, in place) and adversarial data (huge/tiny, -inf rows, +inf, NaN,
all-equal, one-hot, denormals, the row max late so lazymax moves its reference, jumps just past its
16/s threshold), checked against the float64 references with the tests' own contract and tolerance
(``tests/conftest.py`` ``check``, ``check_attention``: the op's ``tolerance``, docs/ops.md §0), and
against each other where softgen promises the same bits (threads, rows=R, pipeline, in place,
multi-ISA and dispatcher). Attention: normalizers x causal x masks x kv_lengths x return_lse x GQA x
strided heads x the streaming (incl. avx512's wide single block), three-phase forms.
A fraction of the draws is invalid on purpose: they must raise a UsageError (never a crash, a
compiler error or a silent result).

Each case runs in a forked child (a crash or hang is a finding, not the end of the run); kernels
are cached in SOFTGEN_CACHE_DIR. Findings go to stdout and ``--log`` (JSON lines, with the config
to replay: ``--replay FILE``)::

    nice -n 5 python bench/fuzz.py --seed 1 --budget 600 --target avx512,avx2,scalar --backend c,tvm
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import check, check_attention  # noqa: E402  (the tests' contract and tolerance)

import softgen  # noqa: E402
from softgen import reference as ref  # noqa: E402
from softgen.errors import UsageError  # noqa: E402
from softgen.ops import build_program, get_op  # noqa: E402
from softgen.ops.attention import _lssar_params, default_scale  # noqa: E402
from softgen.passes import applicable_algorithms  # noqa: E402
from softgen.targets import get_target  # noqa: E402

ROW_OPS = ["softmax", "log_softmax", "stablemax", "log_stablemax", "softplus_l1", "lssa", "reweight", "lssar",
           "topk_softmax"]
ROW_WEIGHTS = [6, 3, 1, 1, 1, 1, 1, 1, 2]
EXPS = ["", "p5c2", "p6c2", "t32"]
NORMALIZERS = ["softmax", "stablemax", "softplus_l1", "lssa", "lssar", "topk_softmax", "sinkhorn", "soft"]
NORM_WEIGHTS = [6, 1, 1, 1, 1, 2, 1, 1]


# ---------------------------------------------------------------- configurations

def row_params(r: random.Random, op: str) -> dict:
    if op in ("softmax", "log_softmax", "softplus_l1"):
        return r.choice([{}, {}, {"scale": r.choice([0.25, 2.5, 10.0, 0.0625])}] +
                        ([{"temperature": 0.7}] if op != "softplus_l1" else []))
    if op == "lssa":
        return {"head_dim": r.choice([8, 64]), "count_keys": r.choice([0, 1])}
    if op in ("reweight", "lssar"):
        p = {"p": r.choice([15, 3]), "count_keys": r.choice([0, 1])}
        return {**p, "head_dim": r.choice([8, 64])} if op == "lssar" else p
    if op == "topk_softmax":
        return {"k": r.choice([1, 2, 3, 8, 30]), "renormalize": r.choice([0, 1])}
    return {}


def row_schedule(r: random.Random, t) -> dict:
    """A random subset of the schedule's fields, valid for target ``t``."""
    s, lanes, default = {}, t.lanes, t.schedule
    if r.random() < 0.4:
        s["unroll"] = r.choice([1, 2, 4, 8])
        s["accumulators"] = r.choice([a for a in (1, 2, 4) if s["unroll"] % a == 0])
    step = s.get("unroll", default.unroll) * lanes
    if r.random() < 0.3:
        s["block"] = step * r.choice([1, 2, 3, 16, 64])
    block = s.get("block", default.block if default.block % step == 0 else step * max(1, default.block // step))
    if r.random() < 0.35:     # the split form for rows short enough to fuzz
        s["split"] = r.choice([0, 0, block, 2 * block + 1, 4000])
        s["chunk"] = block * r.choice([1, 1, 2, 3])
    if r.random() < 0.3:
        s["exp"] = r.choice(EXPS)
    if r.random() < 0.35:
        s["lazymax"] = True
    if r.random() < 0.3:
        s["rows"] = r.choice([2, 3, 4, 8])
    elif r.random() < 0.25:
        s["pipeline"] = True
    if r.random() < 0.12 and t.streams:
        s["stream"] = True
    if r.random() < 0.15:
        s["prefetch"] = r.choice([16, 64, 1024])
    return s


INVALID_ROW = [
    ("accumulators", lambda s: {**s, "unroll": 4, "accumulators": 3}),
    ("block", lambda s: {**s, "block": 17 * 16 + 3}),
    ("rows", lambda s: {**s, "rows": 9}),
    ("rows0", lambda s: {**s, "rows": 0}),
    ("pipeline+rows", lambda s: {**s, "pipeline": True, "rows": 2}),
    ("prefetch", lambda s: {**s, "prefetch": 17}),
    ("exp", lambda s: {**s, "exp": "p7c1"}),
    ("lazymax type", lambda s: {**s, "lazymax": 2}),
    ("chunk", lambda s: {**s, "block": None, "chunk": 1000}),
    ("split<0", lambda s: {**s, "split": -1}),
    ("unknown knob", lambda s: {**s, "rowz": 2}),
    ("stream on scalar", lambda s: {**s, "stream": True}),
]


def draw_row(r: random.Random, targets: list[str], backends: list[str]) -> dict:
    op = r.choices(ROW_OPS, ROW_WEIGHTS)[0]
    params = row_params(r, op)
    algs = applicable_algorithms(build_program(op, **params))
    backend = "tvm" if "tvm" in backends and (backends == ["tvm"] or r.random() < 0.1) else "c"
    target = r.choice(targets)
    group = backend == "c" and r.random() < 0.07 and {"avx2", "avx512"} <= set(targets)
    t = get_target(target)
    alg = r.choice(algs + ["auto"])
    sched = row_schedule(r, t) if backend == "c" and r.random() < 0.85 else None
    if sched and sched.get("lazymax") and r.random() < 0.7:   # where lazymax applies
        op, params, alg = r.choice(["softmax", "softmax", "log_softmax"]), row_params(r, "softmax"), "three-pass-reload"
    if group and sched:   # one schedule for avx2 and avx512: the knobs, not lane-dependent sizes
        sched = {f: v for f, v in sched.items() if f not in ("unroll", "accumulators", "block", "chunk", "split",
                                                             "stream")}   # the group has scalar too
    invalid = None
    if r.random() < 0.08:
        invalid, mutate = r.choice(INVALID_ROW)
        if invalid == "stream on scalar":
            target = "scalar"
        sched = {k: v for k, v in mutate(sched or {}).items() if v is not None}
        group = False
    if backend == "tvm" and sched is None and r.random() < 0.1:
        sched, invalid = {"rows": 2}, "tvm knob"
    return {"kind": "row", "op": op, "params": params, "algorithm": alg, "target": "x86-64" if group else target,
            "backend": backend, "schedule": sched, "invalid": invalid, "data_seed": r.randrange(1 << 30),
            "ref_rows": r.random() < 0.3}


def draw_attention(r: random.Random, targets: list[str], backends: list[str]) -> dict:
    norm = r.choices(NORMALIZERS, NORM_WEIGHTS)[0]
    backend = "tvm" if "tvm" in backends and (backends == ["tvm"] or r.random() < 0.1) else "c"
    target = r.choice(targets)
    d = r.choice([1, 3, 8, 16, 17, 64])
    params = {"normalizer": norm, "head_dim": d}
    if norm not in ("sinkhorn", "soft") and r.random() < 0.4:
        params["causal"] = 1
    if norm != "soft" and r.random() < 0.35:
        params["mask"] = r.choice(["additive", "bool"])
    if norm == "topk_softmax":
        params["top_k"] = r.choice([1, 2, 5, 30])
        if r.random() < 0.4:
            params["renormalize"] = 0
    if norm == "lssar":
        params["p"] = r.choice([3, 15])
    if norm == "sinkhorn":
        params["n_iter"] = r.choice([1, 3])
    if norm == "soft":
        params["landmarks"] = r.choice([1, 2, 4])
    if norm in ("softmax", "stablemax", "softplus_l1", "topk_softmax", "sinkhorn") and r.random() < 0.3:
        params["scale"] = r.choice([0.5, 2.0])
    alg = r.choice(["auto", "auto", "streaming", "three-phase"]) if norm not in ("sinkhorn", "soft") else "auto"
    sched = None
    if norm not in ("sinkhorn", "soft") and r.random() < (0.1 if alg == "three-phase" else 0.5):
        br = r.choice([1, 2, 4, 8, 16])
        sched = {"br": br, "bc": r.choice([8, 16, 64, 256 // br * 1])}
        if norm == "softmax" and backend == "c" and r.random() < 0.5:
            sched["wide"] = r.choice([0, 64, 256, min(4096, 65536 // br)])
    invalid = None
    if alg == "three-phase" and sched:
        invalid = "blocks with three-phase"
    if backend == "tvm" and norm == "topk_softmax" and alg == "streaming":
        invalid = "tvm top-k streaming"   # TVM keeps top-k's three-phase form
    if r.random() < 0.06:
        invalid, fix = r.choice([("br*bc", {"br": 64, "bc": 128}), ("bc0", {"br": 4, "bc": 0}),
                                 ("wide not softmax", {"br": 4, "bc": 64, "wide": 64}),
                                 ("br*wide", {"br": 32, "bc": 64, "wide": 4096})])
        sched = fix
        if invalid == "wide not softmax" and norm == "softmax":
            params["normalizer"] = norm = "stablemax"
            params.pop("top_k", None)
            params.pop("renormalize", None)
    # sizes: decoding (Lq <= 16), prefill, the wide mode's 4096 +- 1
    lk = r.choice([1, 2, 7, 16, 17, 63, 64, 65, 200, 511, 1000] + ([4095, 4096, 4097] if norm == "softmax" else []))
    lq = r.choice([1, 2, 3, 5, 16, 17, 40, 70])
    if lk >= 4095:
        lq, d = r.choice([1, 3, 20]), min(d, 16)
        params["head_dim"] = d
    if r.random() < 0.15:   # decoding over long keys: softmax splits them into chunks (flash-decoding)
        lq, lk = r.choice([1, 1, 2, 5, 16, 17]), r.choice([2047, 2048, 2049, 3073, 5000])
    hkv = r.choice([1, 1, 2])
    hq = hkv * r.choice([1, 2])
    return {"kind": "attention", "params": params, "algorithm": alg, "target": target, "backend": backend,
            "schedule": sched, "invalid": invalid, "batch": r.choice([1, 2]), "hq": hq, "hkv": hkv, "lq": lq,
            "lk": lk, "dv": r.choice([1, 4, d, 33]), "data_seed": r.randrange(1 << 30),
            "kv_lengths": norm != "soft" and r.random() < 0.35, "lse": r.random() < 0.35,
            "strided": r.random() < 0.4, "threads": r.choice([None, 1, 2]),
            "api": "function" if invalid is None and r.random() < 0.3 else "compile", "torch": r.random() < 0.5}


# ---------------------------------------------------------------- data

def adversarial_row(rng: np.random.Generator, n: int, kind: str, scale: float) -> np.ndarray:
    """One row of the named kind."""
    base = (rng.standard_normal(n) * rng.choice([0.5, 3, 30])).astype(np.float32)
    x = base.copy()
    pos = int(rng.integers(0, n))
    if kind == "normal":
        pass
    elif kind == "huge":
        x = rng.uniform(-3e38, 3e38, n).astype(np.float32)
    elif kind == "big-range":
        lo = rng.choice([90.0, -1000.0, 3e5, -3e5])
        x = (lo + rng.uniform(-50, 50, n)).astype(np.float32)
    elif kind == "tiny":
        x = (rng.standard_normal(n) * 1e-38).astype(np.float32)
    elif kind == "denormal":
        x = (rng.standard_normal(n) * 1e-42).astype(np.float32)
        x[::5] = 0.0
    elif kind == "all -inf":
        x[:] = -np.inf
    elif kind == "some -inf":
        x[rng.random(n) < rng.choice([0.1, 0.5, 0.95])] = -np.inf
    elif kind == "-inf prefix":   # the first group all -inf: lazymax's first reference
        x[: int(rng.integers(1, n + 1))] = -np.inf
    elif kind == "+inf":
        x[pos] = np.inf
    elif kind == "nan":
        x[pos] = np.nan
    elif kind == "all-equal":
        x[:] = np.float32(rng.choice([0.0, 7.25, -1e30, 88.0]))
    elif kind == "one-hot":
        x[:] = np.float32(rng.choice([0.0, -20.0]))
        x[pos] = np.float32(rng.choice([1.0, 50.0, 1e4]))
    elif kind == "ramp":          # the max late in the row: lazymax's reference moves many times
        step = (16.0 / scale) * rng.choice([0.01, 0.3, 1.05, 3.0])
        x = (np.arange(n) * step / max(1, rng.choice([1, 16, 64])) + rng.standard_normal(n) * 0.01).astype(np.float32)
    elif kind == "threshold":     # jumps just past 16/s, group by group
        g = int(rng.choice([8, 16, 64, 65]))
        jump = np.float32(16.0 / scale) * np.float32(rng.choice([1.0001, 1.01, 0.999]))
        x = (np.arange(n) // g * jump + rng.uniform(-0.5, 0, n)).astype(np.float32)
    elif kind == "late max":
        x[pos:] += np.float32(rng.choice([20.0, 100.0, 1000.0]) / scale)
    elif kind == "max last":
        x[-1] = x.max() + np.float32(rng.choice([1.0, 40.0, 1e4]))
    return x.astype(np.float32)


KINDS = ["normal", "normal", "huge", "big-range", "tiny", "denormal", "all -inf", "some -inf", "-inf prefix", "+inf",
         "nan", "all-equal", "one-hot", "ramp", "threshold", "late max", "max last"]


def row_lengths(rng: np.random.Generator, k) -> list[int]:
    lanes = k.target.lanes
    s = k.schedule
    step = s.step(lanes)
    cands = [1, 2, lanes - 1, lanes + 1, step - 1, step + 1, 2 * step + lanes + 1, s.block - 1, s.block + 1,
             4095, 4096, 4097, int(rng.integers(1, 3000)), 63, 64, 65]
    if s.split and s.split < 20000:
        cands += [s.split - 1, s.split, s.split + s.chunk + 3, s.split + 3 * s.chunk + 1]
    cands = [c for c in cands if 1 <= c <= 40000]
    return sorted(set(rng.choice(cands, size=min(4, len(set(cands))), replace=False).tolist()))


def make_rows(rng: np.random.Generator, rows: int, n: int, scale: float) -> tuple[np.ndarray, list[str]]:
    kinds = [str(rng.choice(KINDS)) for _ in range(rows)]
    if rng.random() < 0.5:                  # whole batches of one kind
        kinds = [kinds[0]] * rows
    return np.stack([adversarial_row(rng, n, kd, scale) for kd in kinds]), kinds


def layout(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, str]:
    """x as a contiguous, strided, unaligned or byte-misaligned array (same values)."""
    rows, n = x.shape
    what = str(rng.choice(["contiguous", "contiguous", "strided", "unaligned", "misaligned"]))
    if what == "strided":
        off = int(rng.integers(0, 5))
        w = np.full((rows, n + off + int(rng.integers(1, 40))), np.float32(123.0))
        w[:, off:off + n] = x
        return w[:, off:off + n], what
    if what == "unaligned":
        w = np.empty(rows * n + 1, np.float32)[1:].reshape(rows, n)
        w[:] = x
        return w, what
    if what == "misaligned":
        w = np.zeros(4 * rows * n + 1, np.uint8)[1:].view(np.float32).reshape(rows, n)
        w[:] = x
        return w, what
    return x, what


# ---------------------------------------------------------------- one case

def compile_cfg(cfg: dict):
    kw = dict(cfg["params"])
    return softgen.compile(cfg.get("op", "attention"), algorithm=cfg["algorithm"], target=cfg["target"],
                           backend=cfg["backend"], schedule=cfg["schedule"], **kw)


def same_bits(a, b) -> bool:
    """The same bits, NaN's sign and payload aside: x86's invalid operations give -NaN, a NAN
    constant +NaN, and which one a row ends with depends on the compiler's inlining."""
    a, b = np.asarray(a), np.asarray(b)
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


class KnownIssue(Exception):
    """A failure of a known, reported cause (counted apart, not a new finding)."""


def blocksum_slack(k) -> float:
    """The worst case of a blocked sum (docs/accuracy.md): each accumulator lane adds m = block /
    (lanes accumulators) terms in sequence, (m - 1) u when the roundings do not cancel (equal
    terms: an all-equal or one-max row), then ~22 merges."""
    s, lanes = k.schedule, k.target.lanes
    return (s.block // (lanes * s.accumulators) + 22) * 2.0 ** -24


def check_row(k, x, y, what, kinds, call) -> None:
    """``check``; an error within the blocked sum's worst case (not the 2e-6 budget) is KnownIssue."""
    try:
        check(k, x, y, what, row_names=kinds, **call)
    except AssertionError as e:
        if "out of tolerance" not in str(e) and "row sums" not in str(e):
            raise
        op = get_op(k.op)
        cls, slack = type(op), blocksum_slack(k)
        orig, normalised = cls.tolerance, cls.normalised

        def wider(self, x, r, params, call=None):
            return orig(self, x, r, params, call) + slack * (1.0 if self.log_probs else np.abs(r))
        cls.tolerance, cls.normalised = wider, lambda self, params: False
        try:
            check(k, x, y, what, row_names=kinds, **call)
        finally:
            cls.tolerance, cls.normalised = orig, normalised
        if normalised(op, k.params):
            sums = np.sum(y, axis=-1, dtype=np.float64)
            fin = np.isfinite(sums)
            assert np.all(np.abs(sums[fin] - 1) <= 1e-5 + slack), f"{k.name} {what}: row sums beyond the blocked sum's"
        raise KnownIssue(f"blocked sum's worst case (m = {k.schedule.block // (k.target.lanes * k.schedule.accumulators)} "
                         f"terms per lane and block): {str(e)[:300]}") from None


def run_row(cfg: dict, stats: Counter) -> None:
    k = compile_cfg(cfg)
    stats["kernels"] += 1
    rng = np.random.default_rng(cfg["data_seed"])
    op = get_op(k.op)
    scale = k.params.get("scale", 1.0)
    twin = None   # the one-row form: rows=R and pipeline promise its bits
    if cfg["schedule"] and (cfg["schedule"].get("rows", 1) > 1 or cfg["schedule"].get("pipeline")) \
            and k.algorithm != "auto" and cfg["target"] != "x86-64":
        # the algorithm and schedule auto resolved to, one row at a time
        twin = softgen.compile(k.op, algorithm=k.algorithm, target=cfg["target"], backend=cfg["backend"],
                               schedule=replace(k.schedule, rows=1, pipeline=False), **cfg["params"])
        stats["twins"] += 1
    for n in row_lengths(rng, k):
        rows = int(rng.choice([1, 2, 3, 5, 8, 17]))
        x, kinds = make_rows(rng, rows, n, scale)
        xl, lay = layout(rng, x)
        call = op.sample_call(x.shape, k.params) if op.sample_call else {}
        what = f"n={n} rows={rows} layout={lay} kinds={kinds}"
        y = k(xl, **call)
        check_row(k, x, y, what, kinds, call)
        stats["rows"] += rows
        stats["calls"] += 1
        for kd in kinds:
            stats["data:" + kd] += 1
        y2 = k(xl, threads=2, **call)
        assert same_bits(y, y2), f"{k.name} {what}: threads=2 differs from the default"
        z = np.array(xl, copy=True)
        k(z, out=z, **call)
        assert same_bits(z, y), f"{k.name} {what}: in place differs"
        if twin is not None:
            assert same_bits(twin(xl, **call), y), f"{k.name} {what}: differs from the one-row form {twin.name}"


def attention_inputs(cfg: dict):
    rng = np.random.default_rng(cfg["data_seed"])
    b, hq, hkv, lq, lk, dv = cfg["batch"], cfg["hq"], cfg["hkv"], cfg["lq"], cfg["lk"], cfg["dv"]
    d = cfg["params"]["head_dim"]
    amp = float(rng.choice([0.3, 1.0, 3.0]))

    def t(h, L, w):
        a = (rng.standard_normal((b, L, h, w)) * amp).astype(np.float32)
        return a.transpose(0, 2, 1, 3) if cfg["strided"] else np.ascontiguousarray(a.transpose(0, 2, 1, 3))
    q, k, v = t(hq, lq, d), t(hkv, lk, d), t(hkv, lk, dv)
    kinds = ["normal", "normal", "nan", "inf", "late max", "one-hot", "huge", "tiny", "q inf", "k -inf"]
    # equal keys: top-k's ties go to the lower index, but the oracle's float64 BLAS scores of equal
    # keys differ in their last bits (blocking), so it breaks those ties at random
    kind = str(rng.choice(kinds + ["equal"] * (cfg["params"]["normalizer"] != "topk_softmax")))
    if kind == "nan":
        q[0, 0, int(rng.integers(lq)), int(rng.integers(d))] = np.nan
    elif kind == "inf":
        k[0, 0, int(rng.integers(lk)), int(rng.integers(d))] = np.inf
    elif kind == "late max":
        k[..., -1, :] *= 20
    elif kind == "huge":       # scores ~1e30: finite in float32, exp underflows for all but the max
        q *= np.float32(1e15)
    elif kind == "tiny":       # scores ~1e-30: uniform weights
        q *= np.float32(1e-30)
    elif kind == "q inf":
        q[0, 0, int(rng.integers(lq)), int(rng.integers(d))] = np.inf
    elif kind == "k -inf":
        k[0, 0, int(rng.integers(lk)), int(rng.integers(d))] = -np.inf
    elif kind == "equal":
        k[...] = k[..., :1, :]
    elif kind == "one-hot":
        q[...] = 0
        q[..., 0] = 5.0
        k[...] = 0
        k[..., int(rng.integers(lk)), 0] = 5.0
    mask = None
    mk = cfg["params"].get("mask", "none")
    if mk != "none":
        keep = rng.random((lq, lk)) < rng.choice([0.3, 0.9, 1.0])
        if rng.random() < 0.3:
            keep[int(rng.integers(lq))] = False   # a fully masked row
        mask = keep if mk == "bool" else np.where(keep, rng.uniform(-2, 0.5, (lq, lk)), -np.inf).astype(np.float32)
        shape = str(rng.choice(["full", "full", "keys broadcast", "keys strided", "scalar"]))
        if shape == "keys broadcast":     # (Lq, 1): stride 0 along the keys
            mask = mask[:, :1]
        elif shape == "keys strided":     # a view with key stride 2
            w = np.repeat(mask, 2, axis=1)
            mask = w[:, ::2]
        elif shape == "scalar":
            mask = np.array(mask[0, 0])
    kvl = rng.integers(0, lk + 1, b) if cfg["kv_lengths"] else None
    return q, k, v, mask, kvl, kind


def run_attention(cfg: dict, stats: Counter) -> None:
    kern = compile_cfg(cfg)
    stats["kernels"] += 1
    q, k, v, mask, kvl, kind = attention_inputs(cfg)
    p = kern.params
    norm = p["normalizer"]
    args = (q, k, v) + (() if mask is None else (mask,))
    call = {}
    if kvl is not None:
        call["kv_lengths"] = kvl
    if cfg["lse"]:
        call["return_lse"] = True
    try:
        out = kern(*args, threads=cfg["threads"], **call)
    except UsageError as e:
        if (norm == "soft" and call) or (norm == "sinkhorn" and cfg["lse"]):
            stats["refused-call"] += 1
            return
        raise AssertionError(f"{kern.name}: refused a valid call: {e}") from None
    o, lse = out if cfg["lse"] else (out, None)
    stats["calls"] += 1
    stats["rows"] += q.shape[0] * q.shape[1] * q.shape[2]
    stats["data:" + kind] += 1
    check_attention_result(kern.name, o, lse, q, k, v, mask, kvl, p, cfg["lse"])
    if cfg["threads"] != 2:   # bitwise the same for any thread count
        o2 = kern(*args, threads=2, **call)
        o2 = o2[0] if cfg["lse"] else o2
        assert np.array_equal(o2, o, equal_nan=True), f"{kern.name}: threads=2 differs"
    if cfg.get("api") == "function":
        run_attention_function(cfg, kern, q, k, v, mask, kvl, stats)


def check_attention_result(name: str, o, lse, q, k, v, mask, kvl, p: dict, want_lse: bool,
                           masked_rows: str = "nan") -> None:
    """o (and lse) of attention with parameters ``p`` against the float64 oracle, within the op's
    tolerance, NaN exactly where the oracle's is; lse: -inf / NaN patterns exact, else 1e-5."""
    norm = p["normalizer"]
    takes_lse = norm not in ("sinkhorn", "soft")
    # the float64 oracle on the dense inputs: the mask as the kernel read it
    am = None
    if mask is not None:
        am = np.where(mask, 0.0, -np.inf) if mask.dtype == bool else mask.astype(np.float64)
    if norm in ("sinkhorn", "soft"):
        seen = mask if p.get("mask") == "bool" else am   # the mask as the kernel read it
        full = None if am is None else np.broadcast_to(seen, q.shape[:-1] + (k.shape[-2],))
        qc, kc, vc = (np.ascontiguousarray(np.repeat(a, q.shape[1] // a.shape[1], axis=1)) for a in (q, k, v))
        holder = type("K", (), {"params": p, "name": name})
        if kvl is None:
            check_attention(holder, o, qc, kc, vc, *(() if full is None else (np.ascontiguousarray(full),)))
            return
        # Sinkhorn with kv_lengths: per batch the unpadded keys (not -inf columns: a NaN score + -inf
        # is NaN, no padding); no key at all: NaN
        for b, n in enumerate(kvl):
            if n == 0:
                assert np.isnan(o[b]).all(), f"{name}: batch {b} has no key and is not NaN"
                continue
            m = () if full is None else (np.ascontiguousarray(full[b:b + 1, ..., :n]),)
            check_attention(holder, o[b:b + 1], qc[b:b + 1], kc[b:b + 1, :, :n], vc[b:b + 1, :, :n], *m)
        return
    # a keep-mask drops a key's score, +inf too (an additive -inf would make it NaN)
    kw = dict(causal=bool(p.get("causal")), mask=mask if mask is not None and mask.dtype == bool else am,
              normalizer=norm, kv_lengths=kvl, masked_rows=masked_rows)
    if norm in ("lssa", "lssar"):
        kw.update(head_dim=p["head_dim"], **({} if norm == "lssa" else _lssar_params(p.get("p"), p.get("offset_free_rows"))))
    else:
        kw["scale"] = p.get("scale") or default_scale(p["head_dim"])
    if norm == "topk_softmax":
        kw.update(top_k=int(p["top_k"]), renormalize=p.get("renormalize") in (None, 1))
    want_lse = want_lse and norm == "softmax"
    r = ref.attention(q, k, v, return_lse=want_lse, **kw)
    r, rl = r if want_lse else (r, None)
    qc, kc, vc = (np.ascontiguousarray(np.repeat(a, q.shape[1] // a.shape[1], axis=1)) for a in (q, k, v))
    nan_r, nan_o = np.isnan(r), np.isnan(o)
    assert np.array_equal(nan_r, nan_o), \
        f"{name}: NaN pattern differs ({int((nan_r != nan_o).sum())} entries; first {np.argwhere(nan_r != nan_o)[0]})"
    # the tolerance model reads the mask (lssa's weights): kv_lengths folded in as -inf keys
    mt = am if kvl is None else (0.0 if am is None else am) + \
        np.where(np.arange(k.shape[-2]) < kvl[:, None, None, None], 0.0, -np.inf)
    mt = () if mt is None else (np.ascontiguousarray(np.broadcast_to(mt, r.shape[:-1] + (k.shape[-2],))),)
    tol = get_op("attention").tolerance((qc, kc, vc, *mt), r, p, {})
    err = np.where(nan_r, 0.0, np.abs(o.astype(np.float64) - r))
    bad = err > tol
    assert not bad.any(), f"{name}: {int(bad.sum())} out of tolerance, max err/tol {np.max(err / tol):.3g} " \
                          f"first {np.argwhere(bad)[0]}"
    if lse is not None:
        assert takes_lse and lse.shape == q.shape[:-1]
        if rl is not None:
            dead = rl == -np.inf
            assert np.array_equal(lse == -np.inf, dead), f"{name}: lse -inf pattern differs"
            assert np.array_equal(np.isnan(lse), np.isnan(rl)), f"{name}: lse NaN pattern differs"
            fin = np.isfinite(rl)
            # float32 scores: a dot product's error is ~d u sum |q_i k_i| (cancellation: huge scores)
            sc = kw.get("scale", 1.0)
            kr = np.repeat(k, q.shape[1] // k.shape[1], axis=1).astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                absdot = np.nan_to_num(np.max(sc * np.abs(q.astype(np.float64)) @ np.abs(kr).swapaxes(-1, -2),
                                              axis=-1, initial=0.0), nan=0.0, posinf=0.0)
            tol = 1e-5 + 1e-5 * np.abs(rl) + 2 * q.shape[-1] * 2.0 ** -24 * absdot
            bad = fin & ~(np.abs(lse.astype(np.float64) - np.where(fin, rl, 0)) <= tol)
            assert not bad.any(), f"{name}: lse out of tolerance at {np.argwhere(bad)[0]}: {lse[bad][0]} vs {rl[bad][0]}"


def dead_rows(q, k, mask, kvl, causal: bool) -> np.ndarray:
    """The query rows (batch, Hq, Lq) with no kept key: what masked_rows="zero" sets to 0."""
    b, hq, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    keep = np.ones((b, hq, lq, lk), bool)
    if mask is not None:
        keep &= np.broadcast_to(mask if mask.dtype == bool else mask != -np.inf, keep.shape)
    if causal:
        keep &= np.arange(lk)[None, :] <= np.arange(lq)[:, None] + lk - lq
    if kvl is not None:
        keep &= np.arange(lk) < np.asarray(kvl)[:, None, None, None]
    return ~keep.any(-1)


def run_attention_function(cfg: dict, kern, q, k, v, mask, kvl, stats: Counter) -> None:
    """``softgen.attention`` (the front door: it picks the form, a boolean mask as bytes for every
    form, masked_rows="zero", torch tensors) on the same inputs: within tolerance of the
    oracle, and masked_rows="zero" is the NaN result with exactly the dead rows zeroed."""
    p = dict(cfg["params"])
    norm = p.pop("normalizer")
    p.pop("head_dim", None)
    mk = p.pop("mask", None)
    causal = bool(p.pop("causal", 0))
    scale = p.pop("scale", None)
    if norm == "lssar":
        p["p"] = p.get("p", 15)
    lse = cfg["lse"] and norm not in ("sinkhorn", "soft")
    torch = None
    if cfg.get("torch"):
        try:
            import torch
        except ImportError:
            pass
    conv = (lambda a: a) if torch is None else (lambda a: None if a is None else torch.from_numpy(a))
    m = mask if mk else None
    res = {}
    for mr in ("nan", "zero"):
        r = softgen.attention(conv(q), conv(k), conv(v), normalizer=norm, causal=causal, mask=conv(m), scale=scale,
                              kv_lengths=kvl, masked_rows=mr, target=cfg["target"], backend=cfg["backend"],
                              algorithm=cfg["algorithm"], threads=cfg["threads"], return_lse=lse, **p)
        parts = r if lse else (r,)
        if torch is not None:
            assert all(isinstance(t, torch.Tensor) for t in parts), f"attention({norm}): torch in, not torch out"
            parts = tuple(t.numpy() for t in parts)
        res[mr] = parts
        stats["function calls"] += 1
    o, lse_o = res["nan"][0], (res["nan"][1] if lse else None)
    # out=: fresh, a strided view, heads transposed, or q itself (overlapping an input)
    okind = str(np.random.default_rng(cfg["data_seed"] + 1).choice(["fresh", "strided", "transposed", "q"]))
    oshape = q.shape[:-1] + (v.shape[-1],)
    if okind == "q" and q.shape == oshape and np.all(np.isfinite(q)):
        qq = np.array(q, copy=True)
        ob, qa = qq, qq
    else:
        qa = q
        if okind == "strided":
            ob = np.full(oshape[:-1] + (oshape[-1] + 5,), 7.0, np.float32)[..., 2:2 + oshape[-1]]
        elif okind == "transposed":
            ob = np.full((oshape[0], oshape[2], oshape[1], oshape[3]), 7.0, np.float32).transpose(0, 2, 1, 3)
        else:
            ob = np.full(oshape, 7.0, np.float32)
    if okind != "q" or ob is qa:
        r = softgen.attention(conv(qa), conv(k), conv(v), normalizer=norm, causal=causal, mask=conv(m), scale=scale,
                              kv_lengths=kvl, masked_rows="nan", target=cfg["target"], backend=cfg["backend"],
                              algorithm=cfg["algorithm"], threads=cfg["threads"], return_lse=lse, out=conv(ob), **p)
        ro = r[0] if lse else r
        assert ro is conv(ob) or (torch is not None and ro.data_ptr() == conv(ob).data_ptr()), \
            f"attention({norm}) out={okind}: the result is not out"
        assert same_bits(ob, o), f"attention({norm}) out={okind}: differs from the call without out= " \
                                 f"({int((~((ob == o) | np.isnan(ob) & np.isnan(o))).sum())} entries)"
        stats["function calls"] += 1
        stats[f"attn out={okind}"] += 1
    name = f"softgen.attention({norm}, alg={cfg['algorithm']}, {cfg['target']}, {cfg['backend']})"
    # every form drops a key its boolean mask drops, whatever its score (+inf, NaN), as the oracle
    mseen = mask
    check_attention_result(name, o, lse_o, q, k, v, mseen, kvl, kern.params, lse)
    z = res["zero"][0]
    if norm not in ("sinkhorn", "soft"):   # the oracle's masked_rows="zero" (its rule of a dead row)
        check_attention_result(name + " masked_rows='zero'", z, None, q, k, v, mseen, kvl, kern.params, False,
                               masked_rows="zero")
        nan_rows = np.isnan(o).all(-1)
        assert same_bits(np.where(nan_rows[..., None], o, z), o), f"{name}: masked_rows='zero' changed a live row"
        return
    dead = dead_rows(q, k, mask, kvl, causal)
    want = np.where(dead[..., None], np.float32(0), o)
    assert same_bits(z, want), f"{name}: masked_rows='zero' is not the NaN result with the {int(dead.sum())} " \
                               f"dead rows zeroed ({int((~((z == want) | np.isnan(z) & np.isnan(want))).sum())} entries)"


# ---------------------------------------------------------------- area: the dispatcher (issue 13)

CACHE_SIZES = ["L1d=4K,L2=16K,L3=64K", "L1d=2K,L2=8K,L3=32K", "L1d=8K,L2=64K,L3=256K", "L1d=1K,L2=3K,L3=12K"]
DISPATCH_OPS = ["softmax", "log_softmax", "stablemax", "softplus_l1", "lssa", "reweight", "lssar", "topk_softmax"]


def tuning_records(r: random.Random, op: str, params: dict, target: str) -> list[dict]:
    """Random tuning records (classes of n and rows, algorithm, schedule, threads) of ``op`` on ``target``,
    valid or not: ``tuned_table`` must skip what it cannot use."""
    program = build_program(op, **params)
    algs = applicable_algorithms(program)
    t = get_target(target)
    bounds = sorted(r.sample(range(2, 6000), r.choice([0, 1, 2, 3])))
    lo, recs = 1, []
    for hi in bounds + [1 << 40]:
        if r.random() < 0.2 and recs:   # a gap between two classes
            lo += r.choice([1, 50, 700])
        if lo > hi:
            continue
        sched = row_schedule(r, t) if r.random() < 0.7 else {}
        if r.random() < 0.1:
            sched = {"rows": 11}   # invalid: skipped
        recs.append({"n": (lo, hi), "rows": r.choice([(1, 1), (1, 1 << 20), (2, 64), (8, 1 << 20)]),
                     "algorithm": r.choice(algs), "schedule": sched, "threads": r.choice([1, 1, 2])})
        lo = hi + 1
    return recs


def draw_dispatch(r: random.Random, targets: list[str], backends: list[str]) -> dict:
    op = r.choice(DISPATCH_OPS)
    group = {"avx2", "avx512"} <= set(targets) and r.random() < 0.2
    target = "x86-64" if group else r.choice(targets)
    backend = "tvm" if "tvm" in backends and (backends == ["tvm"] or r.random() < 0.1) else "c"
    tuned = not group and r.random() < 0.4
    params = row_params(r, op)
    return {"kind": "dispatch", "op": op, "params": params, "algorithm": "auto", "target": target,
            "backend": backend, "schedule": None, "invalid": None, "caches": r.choice(CACHE_SIZES),
            "records": tuning_records(r, op, params, target) if tuned else None,
            "isa_cap": r.choice([None, None, "avx2", "scalar", "avx512"]) if group else None,
            "data_seed": r.randrange(1 << 30)}


def run_dispatch(cfg: dict, stats: Counter) -> None:
    """algorithm="auto" (the model's table, or one from a temporary tuning DB): every threshold edge
    +-1 through the dispatcher, bitwise the plain kernel of the entry's variant (and for a multi-ISA
    library, this CPU's member), 1/2 threads, against the reference."""
    import tempfile

    from softgen import tunedb
    os.environ["SOFTGEN_CACHE_SIZES"] = cfg["caches"]
    if cfg.get("isa_cap"):    # a multi-ISA library picks at most this ISA (at load: this child)
        os.environ["SOFTGEN_ISA"] = cfg["isa_cap"]
    if cfg["records"] is not None:
        db = tunedb.TuningDB(Path(tempfile.mkdtemp(prefix="fuzz-tunedb-")) / "tuning.sqlite")
        tunedb.default = lambda: db   # this child only
        os.environ["SOFTGEN_USE_TUNING"] = "1"
        for rec in cfg["records"]:
            tunedb.record(cfg["op"], cfg["params"], cfg["target"], cfg["backend"], n=tuple(rec["n"]),
                          rows=tuple(rec["rows"]), algorithm=rec["algorithm"], schedule=rec["schedule"],
                          threads=rec["threads"], ns_per_element=1.0, noise=0.01, repetitions=5, db=db)
    else:
        os.environ["SOFTGEN_USE_TUNING"] = "0"
    k = compile_cfg(cfg)
    stats["kernels"] += 1
    member = None
    if cfg["target"] == "x86-64":   # this CPU's member, compiled alone
        if cfg.get("isa_cap"):
            assert get_target(k.isa).host_rank <= get_target(cfg["isa_cap"]).host_rank, f"{k.name}: SOFTGEN_ISA cap ignored"
        member = softgen.compile(k.op, algorithm="auto", target=k.isa, backend=cfg["backend"], **cfg["params"])
        stats["kernels"] += 1
    table = (member or k).dispatch
    if cfg["records"] is not None and table is not None:
        stats["tuned tables"] += table.source == "measured"
    plain: dict = {}

    def variant(n: int, rows: int):
        if table is None:
            return member or k
        e = table.pick(n, rows)
        if e.variant not in plain:
            plain[e.variant] = softgen.compile(k.op, algorithm=e.algorithm, target=(member or k).target.name,
                                               backend=cfg["backend"], schedule=e.schedule, **cfg["params"])
            stats["kernels"] += 1
        return plain[e.variant]
    edges = {1, 2}
    for e in (table.entries if table else ()):
        edges |= {e.n_min - 1, e.n_min, e.n_min + 1}
        if e.n_max is not None:
            edges |= {e.n_max - 1, e.n_max, e.n_max + 1}
        sp = e.schedule.get("split") or 0
        if sp and sp < 30000:
            edges |= {sp - 1, sp, sp + 1}
    rng = np.random.default_rng(cfg["data_seed"])
    op = get_op(k.op)
    for n in sorted(x for x in edges if 1 <= x <= 40000):
        rows = int(rng.choice([1, 2, 3, 7, 64]))
        x, kinds = make_rows(rng, rows, n, k.params.get("scale", 1.0))
        call = op.sample_call(x.shape, k.params) if op.sample_call else {}
        what = f"n={n} rows={rows} kinds={kinds}"
        y = k(x, **call)
        check_row(variant(n, rows), x, y, what, kinds, call)
        want = variant(n, rows)(x, **call)
        assert same_bits(y, want), f"{k.name} {what}: not bitwise the plain kernel {variant(n, rows).name}"
        for th in (1, 2):
            assert same_bits(k(x, threads=th, **call), y), f"{k.name} {what}: threads={th} differs"
        stats["rows"] += rows
        stats["calls"] += 1
        stats["edges"] += 1


# ---------------------------------------------------------------- area: the array front door (issue 15)

ARRAY_OPS = ["softmax", "log_softmax", "stablemax", "topk_softmax", "lssa"]


def draw_arrays(r: random.Random, targets: list[str], backends: list[str]) -> dict:
    ndim = r.choice([0, 1, 1, 2, 2, 3, 4])
    shape = [r.choice([0, 1, 1, 2, 3, 5, 17, 33]) for _ in range(ndim)]
    if ndim and r.random() < 0.8:
        shape = [max(1, s) for s in shape]
    return {"kind": "arrays", "op": r.choice(ARRAY_OPS), "shape": shape, "lib": r.choice(["numpy", "torch", "torch"]),
            "axis": r.choice([None, None] + list(range(-ndim, ndim))) if ndim else None,
            "axis_kw": r.choice(["axis", "dim"]), "api": r.choice(["function", "function", "kernel"]),
            "layout": r.choice(["contiguous", "contiguous", "F", "reversed", "step", "unaligned", "transposed",
                                "broadcast"]),
            "out": r.choice([None, None, None, "fresh", "F", "alias", "alias", "overlap", "overlap"] +
                            (["wrong shape", "float64", "readonly"] if r.random() < 0.3 else [])),
            "dtype": r.choice(["float32"] * 30 + ["float64", "int32", "float16", "bool"]),
            "tlayout": r.choice(TORCH_LAYOUTS), "grad": r.random() < 0.05, "threads": r.choice([None, 1, 2]), "target": r.choice(targets),
            "algorithm": "auto", "backend": "c", "params": {}, "invalid": None, "data_seed": r.randrange(1 << 30)}


def _array_layout(rng, shape, layout, positive: bool = False):
    """A float32 array of ``shape`` (values ~N(0, 4), their magnitudes if ``positive``) in the
    named memory layout."""
    shape = tuple(shape)
    base = np.asarray(rng.standard_normal(shape) * 4, np.float32)
    if positive:
        base = np.abs(base, out=base)
    if not shape:
        return base
    if layout == "F":
        return np.asfortranarray(base)
    if layout == "reversed":     # negative strides on every axis
        w = np.ascontiguousarray(base[(slice(None, None, -1),) * base.ndim])
        return w[(slice(None, None, -1),) * base.ndim]
    if layout == "step":
        w = np.zeros(tuple(s * 2 for s in shape), np.float32)
        v = w[(slice(None, None, 2),) * base.ndim]
        v[...] = base
        return v
    if layout == "unaligned":
        w = np.empty(base.size + 1, np.float32)[1:].reshape(shape)
        w[...] = base
        return w
    if layout == "transposed" and base.ndim >= 2:
        return np.ascontiguousarray(np.swapaxes(base, 0, -1)).swapaxes(0, -1)
    if layout == "broadcast" and base.ndim >= 2:   # stride 0 on the first axis
        return np.broadcast_to(base[:1], shape)
    return base


TORCH_LAYOUTS = [None, None, "transpose", "narrow", "step", "neg", "size1-strides", "channels_last"]


def torch_layout(torch, x: np.ndarray, kind: str):
    """A torch tensor holding x's values in a layout torch makes (not NumPy's)."""
    t = torch.from_numpy(x)
    if kind == "transpose":
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 0))).movedim(0, -1)
    if kind == "narrow":      # a storage offset of one element
        big = torch.zeros(x.shape[:-1] + (x.shape[-1] + 3,))
        big[..., 1:x.shape[-1] + 1] = t
        return big[..., 1:x.shape[-1] + 1]
    if kind == "step":
        big = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],))
        big[..., ::2] = t
        return big[..., ::2]
    if kind == "neg":         # a lazy negation: memory holds -x
        return torch._neg_view(torch.from_numpy(-x))
    if kind == "size1-strides":   # odd strides on the size-1 axes (they never move)
        strides = [st if sz != 1 else 12345 for sz, st in zip(t.shape, t.stride())]
        return t.clone().as_strided(t.shape, strides)
    if kind == "channels_last" and x.ndim == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def run_arrays(cfg: dict, stats: Counter) -> None:
    """A row op through ``softgen.<op>`` / ``Kernel.__call__`` on NumPy or torch arrays in every
    layout, along any axis, with out= (fresh, Fortran, the input itself, overlapping it, invalid):
    the result must be bitwise the kernel's on a contiguous copy (moved axis), in the caller's type,
    ``out`` itself when given; invalid requests a UsageError."""
    rng = np.random.default_rng(cfg["data_seed"])
    op, lib, api = cfg["op"], cfg["lib"], cfg["api"]
    torch = None
    if lib == "torch":
        try:
            import torch
        except ImportError:
            stats["skipped (no torch)"] += 1
            return
    params = {"lssa": {"head_dim": 8}, "topk_softmax": {"k": 2}}.get(op, {})
    fn = getattr(softgen, op)
    k = softgen.compile(op, target=cfg["target"], **params)
    x = _array_layout(rng, cfg["shape"], cfg["layout"], positive=k.op == "lssa")
    axis = cfg["axis"]
    ax = -1 if axis is None else axis
    dt = cfg["dtype"]
    xin = x if dt == "float32" else x.astype(dt)
    invalid = []
    # (what, the exception the README documents for it)
    if dt != "float32":
        invalid.append((f"dtype {dt}", TypeError))
    if api == "kernel" and axis is not None:
        api = "function"
    if api == "kernel" and x.ndim == 0:
        invalid.append(("0-d input of a Kernel", ValueError))
    # the expected result: the kernel on a contiguous copy, the axis last
    xm = np.ascontiguousarray(np.moveaxis(x, ax, -1)) if x.ndim else x.reshape(1)
    exp = k(xm.reshape(-1, xm.shape[-1]) if xm.ndim != 1 else xm) if xm.size else None
    if exp is not None and not isinstance(exp, tuple):
        exp = np.moveaxis(exp.reshape(xm.shape), -1, ax) if x.ndim else exp.reshape(())
    # out=
    out, o_np = None, None
    okind = cfg["out"]
    if op == "topk_softmax":
        okind = None
    if okind == "fresh":
        o_np = np.full(x.shape, 7.0, np.float32)
    elif okind == "F":
        o_np = np.full(x.shape, 7.0, np.float32)
        o_np = np.asfortranarray(o_np) if x.ndim else o_np
    elif okind == "alias":
        o_np = x if dt == "float32" and x.flags.writeable else None
        xin = o_np if o_np is not None else xin
    elif okind == "overlap" and x.ndim and x.size > 1 and dt == "float32":
        buf = np.zeros(x.size + 1, np.float32)
        xin = buf[1:].reshape(x.shape)
        xin[...] = x
        o_np = buf[:-1].reshape(x.shape)    # one element before the input: overlapping, not the same
    elif okind == "wrong shape" and x.ndim:
        o_np = np.zeros(x.shape[:-1] + (x.shape[-1] + 1,), np.float32)
        invalid.append(("out of the wrong shape", ValueError))
    elif okind == "float64":
        o_np = np.zeros(x.shape, np.float64)
        invalid.append(("out float64", (TypeError, ValueError)))
    elif okind == "readonly":
        o_np = np.zeros(x.shape, np.float32)
        o_np.flags.writeable = False
        invalid.append(("read-only out", ValueError))
    if lib == "torch":
        def tt(a):
            if a is None:
                return None
            if a.dtype.byteorder == ">" or any(s < 0 for s in a.strides) or 0 in a.strides and a.size > 1:
                return torch.from_numpy(np.ascontiguousarray(a))  # torch has no negative/zero-stride views from numpy
            return torch.from_numpy(a)
        same = o_np is xin
        xt = tt(xin)
        if cfg["grad"] and dt in ("float32", "float64", "float16"):
            xt = xt.clone().requires_grad_(True)
            invalid.append(("requires_grad", UsageError))
        out = xt if same and not cfg["grad"] else tt(o_np)
        if okind == "readonly":
            out = None   # torch tensors are writable
            invalid.remove(("read-only out", ValueError))
        if okind == "overlap" and o_np is not None:
            bt = torch.from_numpy(buf)
            xt, out = bt[1:].reshape(x.shape), bt[:-1].reshape(x.shape)
            if cfg["grad"]:
                invalid.remove(("requires_grad", UsageError))
        elif not same and not cfg["grad"] and dt == "float32" and x.ndim and cfg.get("tlayout"):
            xt = torch_layout(torch, np.ascontiguousarray(x), cfg["tlayout"])
        xcall = xt
    else:
        xcall, out = xin, o_np
        if cfg["grad"]:
            cfg = dict(cfg, grad=False)
    kw = {} if axis is None else {cfg["axis_kw"]: axis}
    if cfg["threads"]:
        kw["threads"] = cfg["threads"]
    what = f"{op} {lib} {api} shape={tuple(x.shape)} layout={cfg['layout']}/{cfg.get('tlayout')} axis={axis} " \
        f"out={okind} dtype={dt}"

    def call():
        if api == "kernel":
            return k(xcall, out=out, **kw)
        return fn(xcall, out=out, target=cfg["target"], **params, **kw)
    try:
        res = call()
    except (ValueError, TypeError) as e:   # UsageError is a ValueError
        if not invalid:
            raise AssertionError(f"{what}: refused a valid call: {type(e).__name__}: {e}") from None
        if not any(isinstance(e, t) for _, t in invalid) or not str(e):
            raise AssertionError(f"{what}: invalid ({invalid}) raised {type(e).__name__}: {e}") from None
        stats["refused"] += 1
        return
    if invalid:
        raise AssertionError(f"{what}: invalid ({invalid}) accepted")
    stats["calls"] += 1
    stats["rows"] += max(1, x.size // max(1, x.shape[ax] if x.ndim else 1))
    stats[f"lib:{lib}"] += 1
    if out is not None:
        assert res is out, f"{what}: out= given, the result is not out"
    want_type = torch.Tensor if lib == "torch" else np.ndarray
    parts = res if isinstance(res, tuple) else (res,)
    assert all(isinstance(p, want_type) for p in parts), f"{what}: result of type {[type(p) for p in parts]}"
    got = tuple(p.numpy() if lib == "torch" else p for p in parts)
    if exp is None:   # empty input
        assert all(g.size == 0 for g in got), f"{what}: empty input, non-empty result"
        return
    if isinstance(exp, tuple):   # top-k: (indices, weights) rows
        exp_t = tuple(np.moveaxis(e.reshape(xm.shape[:-1] + e.shape[-1:]), -1, ax) if x.ndim else e.reshape(e.shape[-1:])
                      for e in exp)
        for g, e in zip(got, exp_t):
            assert g.shape == e.shape and same_bits(g, e), f"{what}: top-k result differs (shape {g.shape} vs {e.shape})"
        return
    g = got[0]
    assert g.shape == tuple(x.shape), f"{what}: result shape {g.shape}"
    assert same_bits(g, exp), f"{what}: differs from the kernel on a contiguous copy " \
                              f"({int((~((g == exp) | (np.isnan(g) & np.isnan(exp)))).sum())} entries)"
    if okind not in ("alias", "overlap"):   # again: the entry remembered (the fast path) must agree
        g1 = np.array(g, copy=True)
        res2 = call()
        g2 = res2.numpy() if lib == "torch" else res2
        assert same_bits(g2, g1), f"{what}: the second call (fast path) differs from the first"
        stats["second calls"] += 1


RUNNERS = {"row": run_row, "attention": run_attention, "dispatch": run_dispatch, "arrays": run_arrays}
DRAWS = {"row": draw_row, "attention": draw_attention, "dispatch": draw_dispatch, "arrays": draw_arrays}


def run_case(cfg: dict) -> dict:
    stats = Counter()
    try:
        if cfg["invalid"]:
            try:
                k = compile_cfg(cfg)
                RUNNERS[cfg["kind"]](cfg, stats)
            except UsageError as e:
                return {"status": "refused", "msg": str(e)[:200], "stats": stats}
            return {"status": "finding", "msg": f"invalid ({cfg['invalid']}) accepted: {k.name}", "stats": stats}
        RUNNERS[cfg["kind"]](cfg, stats)
        return {"status": "ok", "stats": stats}
    except UsageError as e:
        return {"status": "refused-valid", "msg": str(e)[:300], "stats": stats}
    except KnownIssue as e:
        return {"status": "known", "msg": str(e), "stats": stats}
    except Exception as e:   # anything else is a finding
        return {"status": "finding", "msg": f"{type(e).__name__}: {str(e)[:1500]}",
                "tb": traceback.format_exc()[-1500:], "stats": stats}


def in_child(cfg: dict, timeout: float) -> dict:
    """run_case in a forked child: a crash or a hang is a result too."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        try:
            res = run_case(cfg)
            res["stats"] = dict(res["stats"])
            data = json.dumps(res).encode()
        except BaseException as e:   # noqa: BLE001
            data = json.dumps({"status": "finding", "msg": f"child: {e!r}"}).encode()
        with os.fdopen(wfd, "wb") as f:
            f.write(data)
        os._exit(0)
    os.close(wfd)
    t0, chunks = time.time(), []
    os.set_blocking(rfd, False)
    while True:
        try:
            c = os.read(rfd, 1 << 16)
            if c:
                chunks.append(c)
            elif c == b"":
                break
        except BlockingIOError:
            pass
        if time.time() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(rfd)
            return {"status": "finding", "msg": f"hang: no result in {timeout:.0f} s", "stats": {}}
        time.sleep(0.02)
    os.close(rfd)
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        return {"status": "finding", "msg": f"crash: signal {os.WTERMSIG(st)}", "stats": {}}
    return json.loads(b"".join(chunks) or b'{"status": "finding", "msg": "no result"}')


def feature_keys(cfg: dict) -> list[str]:
    """The features a case covers (the coverage table)."""
    if cfg["kind"] == "attention":
        p = cfg["params"]
        f = [f"attn:{p['normalizer']}", f"attn-alg:{cfg['algorithm']}", f"attn-target:{cfg['target']}",
             f"backend:{cfg['backend']}"]
        f += [f"attn:{x}" for x in ("kv_lengths", "lse", "strided") if cfg[x]]
        f += ["attn:causal"] * bool(p.get("causal")) + [f"attn-mask:{p.get('mask')}"] * ("mask" in p)
        f += ["attn:gqa"] * (cfg["hq"] != cfg["hkv"]) + ["attn:decode"] * (cfg["lq"] <= 16)
        f += ["attn:wide"] * bool((cfg["schedule"] or {}).get("wide")) + ["attn:lk>=4095"] * (cfg["lk"] >= 4095)
        f += ["attn:split-decode"] * (cfg["lq"] <= 16 and cfg["lk"] >= 2048 and p["normalizer"] == "softmax")
        f += ["attn:threads=%s" % cfg["threads"]] + ["attn:d%lanes"] * (p["head_dim"] % 8 != 0)
        f += [f"attn-api:{cfg.get('api', 'compile')}" + ("+torch" if cfg.get("api") == "function" and cfg.get("torch") else "")]
        return f
    if cfg["kind"] == "dispatch":
        return [f"disp:{cfg['op']}", f"disp-target:{cfg['target']}", f"backend:{cfg['backend']}",
                "disp:tuned" if cfg["records"] is not None else "disp:model"] + \
            [f"disp-isa-cap:{cfg.get('isa_cap')}"] * bool(cfg.get("isa_cap"))
    if cfg["kind"] == "arrays":
        return [f"arr:{cfg['lib']}", f"arr-op:{cfg['op']}", f"arr-layout:{cfg['layout']}", f"arr-out:{cfg['out']}",
                f"arr-dtype:{cfg['dtype']}", f"arr-api:{cfg['api']}", f"arr-ndim:{len(cfg['shape'])}"] + \
            [f"arr-tlayout:{cfg.get('tlayout')}"] * (cfg["lib"] == "torch") + \
            ["arr:axis"] * (cfg["axis"] is not None) + ["arr:empty"] * (0 in cfg["shape"])
    s = cfg["schedule"] or {}
    f = [f"op:{cfg['op']}", f"alg:{cfg['algorithm']}", f"target:{cfg['target']}", f"backend:{cfg['backend']}"]
    f += [f"knob:{k}={v}" if k in ("exp", "rows") else f"knob:{k}" for k, v in s.items()
          if k in ("exp", "rows", "lazymax", "pipeline", "stream", "prefetch", "split") and v]
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=300, help="seconds")
    ap.add_argument("--target", default="avx512,avx2,scalar")
    ap.add_argument("--backend", default="c", help="c, tvm or c,tvm (tvm: 10%% of the draws)")
    ap.add_argument("--area", "--kind", dest="kind", default="row,attention",
                    help="what to fuzz, comma-separated: row, attention, dispatch (algorithm=auto, tuned and "
                         "model tables), arrays (torch/NumPy front door); several: --attention-share of "
                         "the draws attention, the rest spread evenly")
    ap.add_argument("--attention-share", type=float, default=0.3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--log", default=None, help="JSON lines: every case and its result")
    ap.add_argument("--replay", default=None, help="a JSON file (or JSON-lines log) of configs to rerun")
    ap.add_argument("--findings-only", action="store_true", help="replay only the findings of a log")
    ap.add_argument("--no-fork", action="store_true", help="run in this process (debugging)")
    ap.add_argument("--summary", nargs="+", default=None, metavar="LOG", help="print the coverage of logs and exit")
    a = ap.parse_args(argv)
    if a.summary:
        return summarize(a.summary)
    targets = [t for t in a.target.split(",") if t]
    for t in targets:
        if not get_target(t).missing_features() == []:
            ap.error(f"target {t} does not run on this CPU")
    backends = a.backend.split(",")
    kinds = a.kind.split(",")
    if not kinds or set(kinds) - set(DRAWS):
        ap.error(f"--area: one or more of {', '.join(DRAWS)}, got {a.kind!r}")
    r = random.Random(a.seed)
    replay = None
    if a.replay:
        replay = []
        for line in Path(a.replay).read_text().splitlines():
            rec = json.loads(line)
            if a.findings_only and rec.get("result", {}).get("status") not in ("finding", "refused-valid"):
                continue
            replay.append(rec.get("config", rec))
    log = open(a.log, "a") if a.log else None
    if "arrays" in kinds or "attention" in kinds:
        try:   # once here, not in every forked child (~2 s each)
            import torch  # noqa: F401
        except ImportError:
            pass
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    status, totals, cover = Counter(), Counter(), Counter()
    t0, i = time.time(), 0
    while (replay is not None and i < len(replay)) or (replay is None and time.time() - t0 < a.budget):
        if replay is not None:
            cfg = replay[i]
        else:
            others = [kd for kd in kinds if kd != "attention"]
            attn = "attention" in kinds and (not others or r.random() < a.attention_share)
            cfg = DRAWS["attention" if attn else r.choice(others)](r, targets, backends)
        i += 1
        res = run_case(cfg) if a.no_fork else in_child(cfg, a.timeout)
        tally(cfg, res, status, totals, cover)
        if log:
            log.write(json.dumps({"config": cfg, "result": res}, default=str) + "\n")
            log.flush()
        if res["status"] in ("finding", "refused-valid"):
            print(f"[{i}] {res['status'].upper()}: {json.dumps(cfg)}\n    {res['msg']}", flush=True)
    report(f"{i} cases in {time.time() - t0:.0f} s", status, totals, cover)
    return 1 if status["finding"] or status["refused-valid"] else 0


def tally(cfg: dict, res: dict, status: Counter, totals: Counter, cover: Counter) -> None:
    status[res["status"]] += 1
    for f in feature_keys(cfg):
        cover[f] += 1
        cover[f + " rows"] += res.get("stats", {}).get("rows", 0)
    totals.update(res.get("stats", {}))


def report(head: str, status: Counter, totals: Counter, cover: Counter) -> None:
    print(f"\n{head}: {dict(status)}")
    print("totals:", {k: v for k, v in sorted(totals.items()) if not k.startswith("data:")})
    print("data kinds (calls):", {k[5:]: v for k, v in sorted(totals.items()) if k.startswith("data:")})
    print("coverage (cases / rows checked):")
    for f in sorted(k for k in cover if not k.endswith(" rows")):
        print(f"  {f:32s} {cover[f]:5d} {cover[f + ' rows']:9d}")


def summarize(paths: list[str]) -> int:
    """The coverage table of logs (``--log``), e.g. of runs cut short."""
    status, totals, cover = Counter(), Counter(), Counter()
    for p in paths:
        for line in Path(p).read_text().splitlines():
            rec = json.loads(line)
            tally(rec["config"], rec["result"], status, totals, cover)
    report(f"{sum(status.values())} cases in {len(paths)} log(s)", status, totals, cover)
    return 0


if __name__ == "__main__":
    sys.exit(main())
