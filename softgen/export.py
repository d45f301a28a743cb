"""AOT export: ``lib<name>.so`` (plain C ABI, no Python dependency), ``<name>.h``, ``<name>.json``
(op, algorithm, target, schedule, version, traffic, measured accuracy; for algorithm="auto" the
dispatch table) and ``<name>.c`` (a dispatcher: its dispatch translation unit, and each variant's
source beside it)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ._version import __version__
from .abi import ECPU, ETHREADS, SELECTED
from .backends import get_backend
from .backends.attention import split_keys
from .errors import SoftgenError, UsageError
from .matrix import AttentionPhase
from .ops import get_op
from .render import env
from .runtime import build_shared, build_static, compiler_for, flags_for
from .targets import all_targets

# Every function here takes ``k``, a ``softgen.Kernel`` (duck-typed: kernel sits above export and
# imports it for ``Kernel.export``, so export names no Kernel type).


def error_codes(k) -> dict[int, tuple[str, str]]:
    """The return codes of ``k``'s entry point: code -> (header macro suffix, meaning), from the
    one table (``abi``)."""
    return k._abi.error_docs(k.name, k.target.requires)


def scratch_doc(k) -> str:
    mp = k.program
    vecs = mp.vector_dims()
    parts = [f"{len(vecs)} vector(s) of " + ", ".join(sorted(set(vecs.values()))) + " floats"] if vecs else []
    parts += [f"{nm}: {r} x {c}" for nm, (r, c) in mp.scratch_mats.items()]
    tiles = [t for ph in mp.leaves() if isinstance(ph, AttentionPhase) and (t := ph.scratch(k.target.topk_network_max_k))]
    text = "; ".join(parts) + " floats" * bool(mp.scratch_mats) if parts else ""
    return "; ".join([text] * bool(text) + tiles) or "nothing"


def attention_tile_doc(k) -> str:
    """The single-block mode's per-thread score tile and split decoding's partials of a streaming
    attention kernel, or ""."""
    ph = next((ph for ph in k.program.leaves() if isinstance(ph, AttentionPhase)), None) if k.matrix else None
    if ph is None:
        return ""
    sk = split_keys(ph) if get_backend(k.backend).split_decoding else 0
    split = (f";\n * for lq <= 16 and lk >= {2 * sk} (decoding: each head's keys in chunks of {sk}), the chunks' partials,\n"
             f" * batch x hq x ceil(lk / {sk}) x lq x (dv + 2) floats on the heap") if sk else ""
    if not ph.wide:
        return split
    kib = 4 * ph.br * -(-ph.wide // ph.bc) * -(-ph.bc // k.target.lanes) * k.target.lanes / 1024
    return (f";\n * a block of {ph.br} query rows seeing at most {ph.wide} keys (lq > 16) holds all of its scores at once,\n"
            f" * in a {ph.br} x min({ph.wide}, lk) tile on the heap (at most {kib:g} KiB per thread: O(br lk), no lq x lk buffer)"
            + split)


def measure_accuracy(k, seed: int = 0) -> dict:
    """Max errors against the float64 reference on a fixed suite: random rows of several lengths
    and ranges (including ones where a naive f32 exp overflows). Needs the kernel to run here,
    natively or emulated."""
    op = get_op(k.op)
    rng = np.random.default_rng(seed)
    if op.samples is not None:
        return _measure_samples(k, op, op.samples(rng, k.params))
    shapes = [(2, 1, 1), (2, 7, 9), (2, 64, 64), (1, 300, 1000), (1, 1000, 70)] if k.matrix else \
        [(4, n) for n in (1, 7, 64, 1000, 4099, 65536)]
    xs = [rng.uniform(lo, hi, shape).astype(np.float32)
          for shape in shapes for lo, hi in ((-10, 10), (90, 100), (-1000, 1000))]
    calls = [op.sample_call(x.shape, k.params) if op.sample_call else {} for x in xs]
    ys = [k(x, **c) for x, c in zip(xs, calls)] if k.runnable else k.run_emulated_many(xs, calls=calls)
    max_rel = max_abs = 0.0
    wrong_indices = 0   # selected outputs: rows whose indices differ from the reference's
    for x, y, c in zip(xs, ys, calls):
        r = op.reference(x, **k.params, **c)
        if k.selected:
            (yi, y), (ri, r) = y, r
            wrong_indices += int(np.sum(np.any(yi != ri, axis=-1)))
        with np.errstate(invalid="ignore"):  # rows NaN in either (f32 overflow rules) are skipped
            err = np.nan_to_num(np.abs(y.astype(np.float64) - r), nan=0.0)
        max_abs = max(max_abs, float(err.max()))
        big = np.abs(r) > 1e-6 * np.abs(r).max(axis=-1, keepdims=True)
        if big.any():  # log-probabilities of a 1-element row are exactly 0: no relative error
            max_rel = max(max_rel, float((err[big] / np.abs(r[big])).max()))
    extra = {"rows_with_wrong_indices": wrong_indices} if k.selected else {}
    return {"max_rel_error": max_rel, "max_abs_error": max_abs, **extra,
            "suite": ("matrices of shape " + ", ".join("x".join(map(str, s[1:])) for s in shapes)
                      if k.matrix else "rows of n in {1,7,64,1000,4099,65536}")
            + " from U[-10,10], U[90,100], U[-1000,1000]; relative error over outputs >= 1e-6 * row max",
            "executed": "native" if k.runnable else k._entry(True).how}


def _measure_samples(k, op, inputs: list[tuple]) -> dict:
    """measure_accuracy on the op's own sample inputs (tuples of arrays)."""
    general = k.abi.style == "general"
    if k.runnable:
        ys = [k(*x) for x in inputs]
    else:
        ys = k.run_emulated_many(inputs if general else [x[0] for x in inputs])
    max_rel = max_abs = 0.0
    for x, y in zip(inputs, ys):
        r = op.reference(*x, **k.params)
        err = np.nan_to_num(np.abs(y.astype(np.float64) - r), nan=0.0)
        max_abs = max(max_abs, float(err.max(initial=0.0)))
        scale = np.abs(r).max(axis=(-2, -1), initial=0.0)     # normwise: matrix results
        ok = scale > 0
        if ok.any():
            max_rel = max(max_rel, float((err.max(axis=(-2, -1))[ok] / scale[ok]).max()))
    shapes = sorted({" ".join("x".join(map(str, a.shape)) for a in x) for x in inputs})
    return {"max_rel_error": max_rel, "max_abs_error": max_abs,
            "suite": f"{op.name}'s sample inputs: {'; '.join(shapes)}; relative error normwise, "
                     f"max |error| / max |reference| per matrix",
            "executed": "native" if k.runnable else k._entry(True).how}


def export(k, directory, name: str | None = None, cc: str | None = None, *, static: bool = False,
           overwrite: bool = True, progress=None) -> dict:
    """Write the library, header, manifest, source, pkg-config file and CMake package config of
    ``k`` into ``directory``; ``static``: the static archive ``lib<name>.a`` too. ``overwrite=False``
    refuses (UsageError) to replace the files of a different kernel of the same name there (the
    same kernel again is fine). ``progress``: called with a line per stage (compile, archive,
    accuracy run), or None."""
    if name is not None and name != k.name:
        k = k.renamed(name)   # compile checks the name (kernel.check_name)
    out = Path(directory)
    say = progress or (lambda line: None)
    if not overwrite:
        _check_replace(k, out)
    art = k.artifact   # what the backend generated: its source files ("source": <name>.c, ...)
    # a dispatcher's own source is its dispatch translation unit (C, whatever the backend); the
    # backend's files are its variants' (below)
    texts = {"source": (f"{k.name}.c", k.source)} if getattr(k, "variants", ()) else art.export_files()
    _variant_files(k, texts, "")
    members = getattr(k, "members", ())   # a library spanning ISAs: every ISA's files, by ISA
    for m in members:
        for key, val in m.artifact.export_files().items():
            texts[f"{key}_{m.target.name}"] = val
        _variant_files(m, texts, f"_{m.target.name}")
    table = getattr(k, "dispatch", None)
    dispatch = [] if table is None else table.as_list()
    paths = {"library": out / f"lib{k.name}.so", **({"static": out / f"lib{k.name}.a"} if static else {}),
             "header": out / f"{k.name}.h", "manifest": out / f"{k.name}.json",
             "pkgconfig": out / f"{k.name}.pc", "cmake": out / f"{k.name}Config.cmake",
             "cmake_version": out / f"{k.name}ConfigVersion.cmake",
             **{key: out / fname for key, (fname, _) in texts.items()}}
    # Everything that can fail (compiler, accuracy run) happens before the output directory is
    # touched, so a failed export leaves nothing behind.
    say(f"compiling lib{k.name}.so ({len(k.sources())} file(s), target {k.target.name})")
    library = build_shared(k.sources(), k.target, cc=cc, file_targets=k.file_targets())
    params = ", ".join(f"{p}={v!r}" for p, v in k.params.items())
    kabi = k._abi
    sparse = kabi.kind == SELECTED
    errors = error_codes(k)
    header = env().get_template("header.h.j2").render(abi=kabi, signature=kabi.signature(k.name), sparse=sparse,
        name=k.name, upper=k.name.upper(), guard=f"SOFTGEN_{k.name.upper()}_H", version=__version__,
        op=k.op, params=params, algorithm=k.algorithm, traffic=k.plan.traffic(),
        target=f"{k.target.name} ({k.target.summary})", schedule=str(k.schedule),
        row_params=[(rp, get_op(k.op).row_param_doc(rp)) for rp in k.row_params], matrix=k.matrix,
        errors=[(c, suffix, doc) for c, (suffix, doc) in errors.items()],
        scratch=scratch_doc(k) if k.matrix else "", attention_tile=attention_tile_doc(k),
        dispatch=table.lines() if table is not None and k.variants else [],
        requires=", ".join(k.target.requires) or "no instruction-set extension",
        isas=[_isa_doc(m) for m in members], arch=k.target.arch,
        mt_signature=kabi.mt_signature(k.name), threads_doc=k.explain_threads().removeprefix("threads (auto): "),
        known=", ".join(t.name for t in all_targets().values() if t.arch in (k.target.arch, "any")))
    say("measuring accuracy against the float64 reference"
        + ("" if k.runnable else " (emulated: this CPU cannot run the target; slow)"))
    try:
        accuracy = measure_accuracy(k)
    except SoftgenError as e:
        accuracy = {"max_rel_error": None, "reason": f"not measured: {e}"}
    manifest = {
        "softgen_version": __version__, "name": k.name, "symbol": k.name,
        "abi": kabi.signature(k.name),
        "axes": "the last two (matrices of m x n)" if k.matrix else "the last (rows of n)",
        **({"arguments": k.abi.arg_docs(), "abi_style": k.abi.style} if k.matrix else {}),
        "row_params": {rp: get_op(k.op).row_param_doc(rp) for rp in k.row_params},
        "errors": {str(c): doc for c, (_, doc) in errors.items()},
        **({"scratch": scratch_doc(k)} if k.matrix else {}),
        **({"threads": {"symbol": f"{k.name}_mt", "abi": kabi.mt_signature(k.name),
                        "doc": "the entry with a thread count last: 0 auto, N at most N threads "
                               f"({'the batch of matrices (streaming attention: its (matrix, query chunk) tasks)' if k.matrix else 'rows'} "
                               f"split across the library's thread pool), < 0 returns {ETHREADS}",
                        "auto": k.explain_threads(), "env": "SOFTGEN_NUM_THREADS"}} if kabi.threaded else {}),
        "cpu_check": {"symbol": f"{k.name}_supported", "requires": list(k.target.requires),
                      "error": ECPU.code,
                      "doc": f"1 if this CPU runs the library, else 0 (and every call returns {ECPU})"},
        **({"outputs": {"indices": "int64, row r at indices[r*ldo ..], min(k, n) per row, largest "
                                   "first, lower index first on ties",
                        "weights": "float32, row r at weights[r*ldo ..], the weights of those entries"}}
           if sparse else {}),
        "op": k.op, "params": k.params, "algorithm": k.algorithm, "backend": art.info(),
        **({"dispatch": dispatch, "dispatch_source": table.source, "dispatch_basis": table.basis,
            "tuned": bool(getattr(k, "tuned", False))}
           if table is not None else {}),
        "target": {"name": k.target.name, "summary": k.target.summary, "lanes": k.target.lanes,
                   "arch": k.target.arch, "requires": list(k.target.requires)},
        "compiler": {"command": compiler_for(k.target, cc), "flags": flags_for(k.target)},
        **({"isas": [{**_isa_doc(m), "compiler_flags": flags_for(m.target)[len(flags_for(k.target)):],
                      "dispatch": None if m.dispatch is None else m.dispatch.as_list(),
                      "dispatch_source": None if m.dispatch is None else m.dispatch.source,
                      "tuned": bool(m.tuned)} for m in members],
            "isa_pick": f"once per process, at the first call of {k.name}, {k.name}_supported or {k.name}_isa: "
                        f"the first ISA of 'isas' (best first) whose CPU check passes and whose rank is at most "
                        f"that of the ISA the environment variable SOFTGEN_ISA names (unset, or naming no ISA "
                        f"of {k.target.arch}: no cap); none: every call returns {ECPU.code} (ECPU)",
            "isa_query": {"symbol": f"{k.name}_isa", "doc": "the picked ISA's name (\"none\" if none), "
                                                          "a static string"}}
           if members else {}),
        "schedule": k.schedule.as_dict(), "traffic": k.plan.traffic(), "accuracy": accuracy,
        "files": {key: p.name for key, p in paths.items()},
    }
    files = {"library": library, "header": header, "manifest": json.dumps(manifest, indent=2) + "\n",
             **_package_files(k, static), **{key: text for key, (_, text) in texts.items()}}
    tmp = None
    if static:   # archived in a temporary directory (removed whatever happens), then copied in
        say(f"archiving lib{k.name}.a")
        tmp = Path(tempfile.mkdtemp(prefix=".softgen-static-"))
        try:
            files["static"] = build_static(k.sources(), k.target, tmp / f"lib{k.name}.a", cc=cc,
                                           file_targets=k.file_targets())
            return _write(out, paths, files)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _write(out, paths, files)


def _write(out: Path, paths: dict, files: dict) -> dict:
    # An unusable output path is a failure (OSError), not a usage error: the CLI exits 1. Files
    # are written into a temporary directory next to their place and renamed into it when all
    # are written, so a failed export leaves nothing behind.
    missing = [p for p in (out, *out.parents) if not p.exists()]   # the directories this creates
    tmp = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".softgen-export-", dir=out))
        for key, path in paths.items():
            if isinstance(files[key], Path):
                shutil.copyfile(files[key], tmp / path.name)
            else:
                (tmp / path.name).write_text(files[key])
        for path in paths.values():
            os.replace(tmp / path.name, path)
        tmp.rmdir()
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(out, missing[-1] if missing else None)
        raise
    return paths


def _identity(op, params, algorithm, target, schedule, dispatch) -> dict:
    return {"op": op, "params": params, "algorithm": algorithm, "target": target, "schedule": schedule,
            "dispatch": dispatch}


def _check_replace(k, out: Path) -> None:
    """UsageError when ``out`` holds files of a kernel named ``k.name`` that is not ``k`` (another
    op, parameters, algorithm, target, schedule or dispatch table, by its manifest), or holds
    its library or header without a manifest (files of unknown origin)."""
    manifest = out / f"{k.name}.json"
    table = getattr(k, "dispatch", None)
    mine = json.loads(json.dumps(_identity(k.op, k.params, k.algorithm, k.target.name, k.schedule.as_dict(),
                                           None if table is None else table.as_list())))
    if not manifest.exists():
        there = [p.name for p in (out / f"lib{k.name}.so", out / f"lib{k.name}.a", out / f"{k.name}.h")
                 if p.exists()]
        if there:
            raise UsageError(f"{out} already holds {', '.join(there)} without the manifest {manifest.name}: not "
                             f"replacing files of unknown origin; pass --force (overwrite=True) to replace them")
        return
    try:
        m = json.loads(manifest.read_text())
        theirs = _identity(m["op"], m["params"], m["algorithm"], m["target"]["name"], m["schedule"],
                           m.get("dispatch"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{manifest} exists and is not a softgen manifest ({type(e).__name__}: {e}); not "
                         f"replacing it; pass --force (overwrite=True) to replace it") from None
    if theirs != mine:
        diff = "; ".join(f"{key}: {_short(theirs[key])} there, {_short(mine[key])} now" if key != "dispatch"
                         else "its dispatch table differs" for key in mine if theirs[key] != mine[key])
        raise UsageError(f"{out} already holds a different kernel named {k.name} ({diff}); pass --force "
                         f"(overwrite=True) to replace it, or choose another --name or --output")


def _short(v) -> str:
    return ", ".join(f"{k}={x!r}" for k, x in v.items()) if isinstance(v, dict) else repr(v)


_PROCESSORS = {"x86_64": "^(x86_64|AMD64|amd64|x64)$", "aarch64": "^(aarch64|arm64|ARM64)$"}


def _package_files(k, static: bool) -> dict:
    """The pkg-config file and the CMake package config (config and version files) of ``k``."""
    params = ", ".join(f"{p}={v!r}" for p, v in k.params.items())
    what = f"{k.op}({params}), algorithm {k.algorithm}, target {k.target.name}"
    common = {"name": k.name, "version": __version__, "what": what, "static": static}
    e = env()
    return {"pkgconfig": e.get_template("pkgconfig.pc.j2").render(**common),
            "cmake": e.get_template("cmake_config.cmake.j2").render(**common),
            "cmake_version": e.get_template("cmake_version.cmake.j2").render(
                **common, target=k.target.name, arch=k.target.arch, major=__version__.split(".")[0],
                processors=_PROCESSORS.get(k.target.arch, ".*"))}


def _variant_files(k, texts: dict, tag: str) -> None:
    """A dispatcher's variants' export files into ``texts``, keyed ``<key><tag>_<algorithm>``
    (one algorithm, two schedules: ``<key><tag>_<variant name>``)."""
    for v in getattr(k, "variants", ()):
        for key, val in v.artifact.export_files().items():
            texts[f"{key}{tag}_{v.algorithm}" if f"{key}{tag}_{v.algorithm}" not in texts else f"{key}{tag}_{v.name}"] = val


def _isa_doc(m) -> dict:
    """One ISA of a multi-ISA library (header and manifest): its name, rank, entry point, needs,
    and what it runs (its dispatch table, or its algorithm and schedule)."""
    if m.dispatch is not None and m.dispatcher:
        runs = m.dispatch.lines()
    else:
        runs = [f"{m.algorithm}, schedule {m.schedule}"
                + (f" (auto, {m.dispatch.source}: one variant at every size)" if m.dispatch is not None else "")]
    return {"isa": m.target.name, "rank": m.target.host_rank, "symbol": m.name,
            "requires": list(m.target.requires), "runs": runs}


def _remove_empty(out: Path, created: Path | None) -> None:
    """Remove ``out`` and its parents up to ``created`` (the export made them) while empty."""
    p = out
    while created is not None:
        try:
            p.rmdir()
        except OSError:
            return
        if p == created:
            return
        p = p.parent
