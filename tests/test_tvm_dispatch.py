"""algorithm="auto" on the TVM backend is a dispatcher (issue 13), like the C backend's: each
variant is the TVM kernel compile(algorithm=a, backend="tvm") builds (TVM's LLVM object + its C
wrapper) under its own prefix, linked with the dispatch unit, one version script and one thread
pool into one library; the model's table (no C-only knobs) or this machine's TVM tuning records.

TVM builds are slow: one model dispatcher with small caches (SOFTGEN_CACHE_SIZES: its threshold
sits at a few thousand elements) is shared by the module; the tuned dispatcher's variants have
the same TensorIR, so TVM compiles each variant once per process (tvm_adapter.script_object)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import check, own_cache

import softgen
from softgen import costmodel, tunedb
from softgen.backends.tvm_adapter import available
from softgen.targets import get_target

if not available()[0]:
    pytest.skip(available()[1], allow_module_level=True)
TARGET = next((t for t in ("avx2", "avx512") if get_target(t).runnable), None) or \
    pytest.skip("this CPU runs neither avx2 nor avx512", allow_module_level=True)
SMALL = "L1d=4K,L2=16K,L3=64K"       # the model's last threshold at 8192 elements
CC = shutil.which("gcc") or shutil.which("cc")


@pytest.fixture(scope="module")
def disp():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTGEN_CACHE_SIZES", SMALL)
        k = softgen.compile("softmax", target=TARGET, backend="tvm", name="tvmd_softmax")
    assert k.dispatcher and k.algorithm == "auto" and k.backend == "tvm", k.explain_dispatch()
    assert all(v.backend == "tvm" for v in k.variants)
    return k


def _edges(k) -> list[int]:
    return sorted({n for e in k.dispatch.entries if e.n_max is not None for n in (e.n_max, e.n_max + 1)})


def _chosen(k, n: int, rows: int = 1):
    e = k.dispatch.pick(n, rows)
    return next(v for v in k.variants if v.name == e.symbol)


def test_variants_are_the_plain_tvm_kernels(disp):
    """Each variant is byte for byte what compile(algorithm=a, backend="tvm") generates, the
    model's table has no C-only knob (TVM lowers none: DRAM rows get no stream=True)."""
    k = disp
    for v in k.variants:
        plain = softgen.compile("softmax", algorithm=v.algorithm, target=TARGET, backend="tvm",
                                schedule=v.schedule.as_dict(), name=v.name)
        assert (v.source, v.wrapper) == (plain.source, plain.wrapper)
        assert not v.schedule.knobs()
    assert all(not e.schedule.get("stream") for e in k.dispatch.entries)
    assert "backend:   tvm (TensorIR + LLVM)" in k.source


def test_every_threshold_edge_is_the_chosen_variant_bitwise(disp, rng):
    k = disp
    edges = _edges(k)
    assert edges, k.explain_dispatch()
    for n in [1, *edges]:
        x = (rng.standard_normal((3, n)) * 5).astype(np.float32)
        x[1, n // 2] = np.inf
        x[2, 0] = np.nan
        y = k(x)
        check(k, x, y, f"n={n}")
        v = _chosen(k, n)
        assert np.array_equal(y, v(x), equal_nan=True), f"n={n}: not bitwise {v.algorithm}'s output"


def test_threads(disp, rng):
    k = disp
    n = _edges(k)[-1]
    x = rng.standard_normal((8, n)).astype(np.float32)
    ref = _chosen(k, n)(x)
    for threads in (0, 1, 2):
        assert np.array_equal(k(x, threads=threads), ref), threads
    with pytest.raises(softgen.UsageError, match="threads"):
        k(x, threads=-1)


def test_one_library_only_the_dispatcher_exported_no_tvm_runtime(disp, tmp_path):
    """Two TVM objects in one .so: no clashing or undefined TVM symbols, the variants hidden."""
    k = disp
    files = k.sources()
    assert [f for f in files if f.endswith(".map")] == [f"{k.name}.map"]   # the variants' own dropped
    assert sum(f.endswith("_tvm.o") for f in files) == len(k.variants) >= 2
    lib = k._entry(False)._softgen_handle
    assert getattr(lib, f"{k.name}_supported")() == 1
    for v in k.variants:
        assert not hasattr(lib, v.name) and not hasattr(lib, f"{v.name}__row")
    paths = k.export(tmp_path)
    nm = shutil.which("nm")
    if nm:
        dyn = subprocess.run([nm, "-D", "--defined-only", str(paths["library"])], capture_output=True,
                             text=True).stdout
        exported = {ln.split()[-1] for ln in dyn.splitlines() if ln.split()[1:2] in (["T"], ["W"])}
        assert exported == {k.name, f"{k.name}_mt", f"{k.name}_supported"}, exported
        und = subprocess.run([nm, "-D", "--undefined-only", str(paths["library"])], capture_output=True,
                             text=True).stdout
        assert not re.search(r"tvm|TVM", und), und


def test_explain_and_manifest_list_the_table(disp, tmp_path):
    k = disp
    text = k.explain()
    assert "dispatch (model" in text and text.count("why: model: ") == len(k.dispatch.entries)
    assert all(f"## variant {v.name}: after the '{v.algorithm}' rewrite" in text for v in k.variants)
    paths = k.export(tmp_path)
    m = json.loads(paths["manifest"].read_text())
    assert m["algorithm"] == "auto" and m["dispatch"] == k.dispatch.as_list() and m["tuned"] is False
    assert m["backend"]["name"] == "tvm" and m["accuracy"]["max_rel_error"] < 1e-5
    header = paths["header"].read_text()
    assert all(f"  {e.range()}" in header for e in k.dispatch.entries)
    assert paths["source"].read_text() == k.source          # the dispatch unit, C
    for v in k.variants:                                      # each variant's TIR and wrapper beside it
        assert paths[f"tir_{v.algorithm}"].read_text() == v.source
        assert paths[f"source_{v.algorithm}"].read_text() == v.wrapper


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_export_links_from_c(disp, tmp_path):
    k = disp
    k.export(tmp_path)
    edges = _edges(k)
    prog = tmp_path / "main.c"
    prog.write_text(f"""#include <stdio.h>
#include <stdlib.h>
#include "{k.name}.h"
int main(void) {{
    static const size_t ns[] = {{{", ".join(map(str, edges))}}};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {{
        size_t n = ns[i];
        float *x = malloc(2 * n * sizeof *x), *y = malloc(2 * n * sizeof *y);
        for (size_t j = 0; j < 2 * n; j++) x[j] = (float)((j * 37) % 101) / 7.0f - 5.0f;
        if ({k.name}(x, y, 2, n, n, n) != 0) return 1;
        fwrite(y, sizeof *y, 2 * n, stdout);
        if ({k.name}_mt(x, y, 2, n, n, n, 2) != 0) return 2;
        fwrite(y, sizeof *y, 2 * n, stdout);
        if ({k.name}_mt(x, y, 2, n, n, n, -1) == 0) return 3;
        free(x); free(y);
    }}
    return 0;
}}
""")
    exe = tmp_path / "main"
    res = subprocess.run([CC, "-O1", "-o", str(exe), str(prog), f"-I{tmp_path}", f"-L{tmp_path}",
                          f"-l{k.name}", f"-Wl,-rpath,{tmp_path}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(exe)], capture_output=True, timeout=60)
    assert res.returncode == 0, res.returncode
    got = np.frombuffer(res.stdout, np.float32)
    off = 0
    for n in edges:
        j = np.arange(2 * n)
        x = (((j * 37) % 101).astype(np.float32) / np.float32(7.0) - np.float32(5.0)).reshape(2, n)
        ref = _chosen(k, n)(x)
        for _ in range(2):
            assert np.array_equal(got[off:off + 2 * n].reshape(2, n), ref), n
            off += 2 * n
    assert off == got.size


def test_tuned_table_from_tvm_records(disp, tmp_path, monkeypatch, rng):
    """Records of backend tvm make the table (``k.tuned``); records of the C backend do not."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    sched = disp.variants[0].schedule.as_dict()
    common = dict(rows=(1, 1 << 40), schedule=sched, ns_per_element=0.5, noise=0.01, repetitions=9)
    tunedb.record("softmax", {}, TARGET, "c", n=(1, 1 << 40), algorithm="online", **common)
    assert not softgen.compile("softmax", target=TARGET, backend="tvm", name="tvmd_softmax").tuned
    tunedb.record("softmax", {}, TARGET, "tvm", n=(1, 300), algorithm="two-pass", **common)
    tunedb.record("softmax", {}, TARGET, "tvm", n=(301, 1 << 40), algorithm="three-pass-reload", **common)
    k = softgen.compile("softmax", target=TARGET, backend="tvm", name="tvmd_softmax")
    assert k.tuned and k.dispatcher and k.dispatch.source == "measured"
    # records of single rows: calls of few rows (batches: the model's, costmodel.BATCH_ROWS)
    assert [(e.n_min, e.n_max, e.algorithm) for e in k.dispatch.entries if e.rows_max is not None] == \
        [(1, 300, "two-pass"), (301, None, "three-pass-reload")]
    assert all(e.why.startswith("model: ") for e in k.dispatch.entries if e.rows_max is None)
    for n in (300, 301):
        for rows in (2, costmodel.BATCH_ROWS):
            x = rng.standard_normal((rows, n)).astype(np.float32)
            assert np.array_equal(k(x), _chosen(k, n, rows)(x))
            assert np.array_equal(k(x, threads=2), _chosen(k, n, rows)(x))
    assert "tuned: yes" in k.explain()


def test_records_with_c_only_knobs_are_not_used(tmp_path, monkeypatch):
    """A TVM record whose schedule has a knob TVM does not lower (e.g. imported): the model decides."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    sched = {**softgen.compile("softmax", algorithm="two-pass", target=TARGET).schedule.as_dict(), "prefetch": 1024}
    tunedb.record("softmax", {}, TARGET, "tvm", n=(1, 1 << 40), rows=(1, 1 << 40), algorithm="two-pass",
                  schedule=sched, ns_per_element=0.5, noise=0.01, repetitions=9)
    k = softgen.compile("softmax", target=TARGET, backend="tvm")   # generation only: no TVM build
    assert not k.tuned and k.dispatch.source == "model"


def test_tune_backend_tvm_records_what_auto_uses(tmp_path, monkeypatch):
    """``softgen.tune(backend="tvm")`` (``softgen tune --backend tvm``): TVM records, which the TVM
    auto then uses (the C backend's auto does not)."""
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", own_cache(tmp_path / "cache"))
    monkeypatch.setenv("SOFTGEN_USE_TUNING", "1")
    res = softgen.tune("softmax", target=TARGET, backend="tvm", sizes=[300], budget_s=3, keep=1, progress=False)
    assert len(res.records) == 1 and res.records[0].backend == "tvm"
    assert [r.backend for r in tunedb.records("softmax")] == ["tvm"]
    k = softgen.compile("softmax", target=TARGET, backend="tvm")
    # a record of single rows: their plan (batches: the model's table, no record of them)
    assert k.tuned and k.dispatch.pick(300, 1).algorithm == res.records[0].algorithm and k.dispatch.source == "measured"
    assert not softgen.compile("softmax", target=TARGET).tuned


def test_cli_build_and_emit(disp, tmp_path):
    """``softgen build --backend tvm`` exports the one dispatcher library; ``emit --tir``/``--wrapper``
    print every variant's script/wrapper, plain ``emit`` the dispatch unit."""
    k = disp
    env = {**os.environ, "SOFTGEN_CACHE_SIZES": SMALL}

    def cli(*argv):
        res = subprocess.run([sys.executable, "-m", "softgen", *argv, "--target", TARGET, "--backend", "tvm",
                              "--name", k.name], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr
        return res.stdout

    cli("build", "-o", str(tmp_path))
    assert [p.name for p in tmp_path.glob("*.so")] == [f"lib{k.name}.so"]
    assert json.loads((tmp_path / f"{k.name}.json").read_text())["dispatch"] == k.dispatch.as_list()
    assert cli("emit") == k.source
    assert cli("emit", "--tir") == "\n".join(v.source for v in k.variants)
    assert cli("emit", "--wrapper") == "\n".join(v.wrapper for v in k.variants)
