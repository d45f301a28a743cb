"""The TVM backend's products: exported libraries with softgen's plain C ABI and no TVM at load
time (native and AArch64 under qemu), the CLI flags, and its TensorIR. Numerical correctness of
every op x algorithm x target is in test_kernels.py (parametrised over both backends)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import STRICT, check, skip_unless_emulated

import softgen
from softgen.backends import tvm as tvm_backend, tvm_adapter as ta
from softgen.backends.tvm_adapter import available
from softgen.emulator import find_emulator
from softgen.runtime import compiler_for
from softgen.targets import get_target

if not available()[0]:
    if STRICT:
        raise RuntimeError(f"CI needs the TVM backend: {available()[1]}")
    pytest.skip(available()[1], allow_module_level=True)

PROGRAM = r"""
#include <stdio.h>
#include "%(name)s.h"
int main(void) {
    static float x[4][1030], y[4][1040];
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 1030; i++)
            x[r][i] = (float)((r * 7919 + i * 104729) %% 2001) * 0.05f - 50.0f;
    if (%(name)s(x[0], y[0], 4, 1027, 1030, 1040) != %(upper)s_OK) return 10;
    if (%(name)s(x[0], NULL, 4, 1027, 1030, 1040) != %(upper)s_ENULL) return 11;
    if (%(name)s(x[0], y[0], 4, 1027, 1000, 1040) != %(upper)s_ESTRIDE) return 12;
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 1027; i++)
            printf("%%.9g\n", y[r][i]);
    return 0;
}
"""


def _x():
    r, i = np.meshgrid(np.arange(4), np.arange(1030), indexing="ij")
    return (((r * 7919 + i * 104729) % 2001).astype(np.float32) * np.float32(0.05) - np.float32(50.0))[:, :1027]


def _deps(lib) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    return [ln.split("[")[1].rstrip("]") for ln in out.splitlines() if "(NEEDED)" in ln]


@pytest.mark.parametrize("op,alg,target", [("softmax", "two-pass", "host"), ("log_softmax", "online", "host"),
                                           ("softmax", "three-pass-reload", "neon")])
def test_exported_tvm_library_has_the_c_abi_and_no_tvm_dependency(op, alg, target, tmp_path):
    t = get_target(target)
    if not t.runnable:
        skip_unless_emulated(t)
    name = f"tvm_{op}_{t.name}"
    k = softgen.compile(op, algorithm=alg, target=target, backend="tvm", name=name)
    paths = k.export(tmp_path)
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["backend"]["name"] == "tvm" and manifest["accuracy"]["max_rel_error"] < 1e-5
    assert "@T.prim_func" in paths["tir"].read_text()
    lib = paths["library"]
    assert not [d for d in _deps(lib) if "tvm" in d or "python" in d], _deps(lib)
    syms = subprocess.run(["readelf", "--dyn-syms", "-W", str(lib)], capture_output=True, text=True).stdout
    exported = [ln.split()[-1] for ln in syms.splitlines() if " GLOBAL " in ln and " UND " not in ln]
    mt = [f"{name}_mt"]   # every kind: the entry with a thread count
    assert sorted(exported) == sorted([name, f"{name}_supported", *mt])
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM % {"name": name, "upper": name.upper()})
    exe = tmp_path / "prog"
    subprocess.run([*compiler_for(t), "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(src), f"-I{tmp_path}",
                    f"-L{tmp_path}", f"-l{name}", f"-Wl,-rpath,{tmp_path}", "-lm"], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "PYTHON"))}
    cmd = [str(exe)] if t.runnable else [*find_emulator(t), "-L", "/usr/aarch64-linux-gnu", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)
    check(k, _x(), np.array(r.stdout.split(), np.float32).reshape(4, 1027), "exported, from C")


def test_cli_tvm_backend(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "softgen", *a], capture_output=True, text=True)  # noqa: E731
    r = run("emit", "--op", "softmax", "--target", "neon", "--backend", "tvm", "--asm")
    assert r.returncode == 0 and "fmla" in r.stdout, r.stderr
    r = run("emit", "--op", "softmax", "--algorithm", "online", "--backend", "tvm", "--tir")
    assert r.returncode == 0 and "T.vectorized" in r.stdout and "@T.prim_func" in r.stdout
    r = run("build", "--op", "softmax", "--algorithm", "two-pass", "--target", "avx512", "--backend", "tvm",
            "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.glob("lib*_tvm.so"))) == 1
    for bad in (["emit", "--backend", "cuda"], ["emit", "--tir"], ["emit", "--backend", "tvm", "--asm", "--tir"]):
        r = run(*bad)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not r.stdout, (bad, r.stderr)


def test_tvm_avx512_builds_but_is_refused_here():
    k = softgen.compile("softmax", algorithm="two-pass", target="avx512", backend="tvm")
    assert "zmm" in k.asm()
    if not k.runnable:
        with pytest.raises(softgen.TargetNotSupportedError):
            k(np.ones((1, 4), np.float32))
        with pytest.raises(softgen.TargetNotSupportedError, match="SIMDe"):
            k.run_emulated(np.ones((1, 4), np.float32))


def test_schedule_reaches_the_tensorir():
    k = softgen.compile("softmax", algorithm="online", target="avx2", backend="tvm",
                        schedule={"unroll": 2, "accumulators": 2, "block": 512})
    assert "T.vectorized(8)" in k.source and "cnt // 16" in k.source and "// 512" in k.source
    assert "unroll=2 accumulators=2 block=512" in k.source


def test_row_functions_lower_without_remove_noop_to_the_same_object():
    """The row emitter's functions skip TVM's RemoveNoOp (``tvm.noop_free``, ~20% of a long
    kernel's lowering): their object is byte for byte the one the full lean pipeline makes, the
    fallback row included. The matrix phases' ``__tvm`` functions (attention, GEMM) keep it."""
    k = softgen.compile("softmax", algorithm="two-pass", target="avx2", backend="tvm")
    nf = tvm_backend.noop_free(k.source)
    assert sorted(nf) == [f"{k.name}__fallback_row", f"{k.name}__row"]
    assert not tvm_backend.noop_free('"global_symbol": "a__attn0__tvm"')
    mod, t = ta.script_module(k.source), get_target("avx2")
    full = ta.build(mod, t, pipeline="lean").inspect_source("asm")
    assert ta.build(mod, t, pipeline="lean", noop_free=nf).inspect_source("asm") == full
    # the row functions' fast path (no TVMScript parser) builds the same TIR, hence the same code
    fast = ta.script_module(k.source, nf)
    for g in mod.get_global_vars():
        assert _same_tir(fast[g.name_hint], mod[g.name_hint])
        assert fast[g.name_hint].script() == mod[g.name_hint].script()
    # the parser's source spans become DWARF line info: the code, not the line table, is the same
    assert _code(ta.build(fast, t, pipeline="lean", noop_free=nf).inspect_source("asm")) == _code(full)


def _code(asm: str) -> list[str]:
    """The assembly without its debug information (line directives, their labels, DWARF sections)."""
    asm = asm.split("\t.section\t.debug")[0]
    return [ln for ln in asm.splitlines() if not re.match(r"\s*\.loc\b|\.Ltmp\d+:|\s*\.file\b", ln)]


def _same_tir(a, b) -> bool:
    import tvm_ffi  # TVM only where a test needs it (test_tvm_adapter.py: softgen imports without it)
    return bool(tvm_ffi.structural_equal(a, b))


FAST_SUBSET = """@T.prim_func
def f(x: T.handle("float32"), y: T.handle("float32"), n: T.int64, status: T.handle("int32")):
    T.func_attr({"global_symbol": "f", "tir.noalias": False})
    X = T.decl_buffer((n,), "float32", data=x)
    Y = T.decl_buffer((n,), "float32", data=y)
    ST = T.decl_buffer((1,), "int32", data=status)
    acc = T.alloc_buffer((8,), "float32", scope="local")
    for l in T.vectorized(8):
        acc[l] = T.float32(0.0)
    for it in range(n // 8):
        for l in T.vectorized(T.int64(8)):
            t1: T.let[T.float32] = X[(l + it * 8)]
            acc[l] = T.max(acc[l], T.Select(t1 > T.float32(1.5), t1 * T.float32(2.0), -t1))
    for j in range(n // 8 * 8, n):
        if X[j] != X[j]:
            ST[0] = 1
        else:
            Y[j] = T.call_llvm_pure_intrin("float32", "llvm.fma", X[j], acc[0], T.float32(1.0))
    if T.And(n >= 1, 0 < n):
        T.evaluate(T.call_llvm_intrin("void", "llvm.donothing"))
"""


def test_fast_path_is_the_parser_on_its_subset_and_falls_back_outside():
    """Every statement form the fast path translates gives the TIR TVM's parser gives (names
    included); a form outside it (a slice store) goes through the parser."""
    tvm = ta._tvm()
    ref = ta.script_module(FAST_SUBSET)["f"]
    assert _same_tir(ta._fast_function(tvm, FAST_SUBSET), ref)
    assert ta._fast_function(tvm, FAST_SUBSET).script() == ref.script()
    sliced = FAST_SUBSET.replace("acc[l] = T.float32(0.0)", "acc[0:8] = T.Broadcast(T.float32(0.0), 8)")
    with pytest.raises(ta._Unsupported):
        ta._fast_function(tvm, sliced)
    assert ta.script_module(sliced, frozenset({"f"}))["f"].script() == ta.script_module(sliced)["f"].script()
