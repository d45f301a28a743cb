"""The exported C ABI from C: bad arguments (NULL, ld < n, rows * ld overflow, ``(size_t)-1`` for
n, rows, ld, m) get their error codes on every kind of entry point (row, sparse top-k, unary
matrix, general matrix with a GEMM), and a library built for instructions this CPU lacks returns
ECPU instead of faulting (tests/c/abi_bad_args.c against exported libraries)."""
from __future__ import annotations

import ctypes
import dataclasses
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import softgen
from softgen import cli
from softgen.backends import c as cbackend
from softgen.runtime import build_shared, compiler_for, load_entry
from softgen.targets import get_target, host_arch, host_features

HERE = Path(__file__).parent
x86_only = pytest.mark.skipif(host_arch() != "x86_64", reason="the fake-feature target is x86")


def _missing_feature() -> str:
    """An x86 feature this CPU lacks (llvmlite and __builtin_cpu_supports both know it)."""
    feats = host_features()
    for f in ("amx-tile", "avx512fp16"):
        if not feats.get(f, False):
            return f
    pytest.skip("this CPU has every feature the fake target could require")


def nocpu_kernel(name: str, op: str = "softmax") -> softgen.Kernel:
    """A scalar kernel built as if its target required a feature this CPU lacks: the library is
    loadable here and every call must return ECPU."""
    fake = dataclasses.replace(get_target("scalar"), name="scalar_fake", arch="x86_64",
                               requires=(_missing_feature(),))
    k = softgen.compile(op, target="scalar", name=name)
    src = cbackend.generate(k.program, fake, k.schedule, name, op=k.op, algorithm=k.algorithm,
                            params=k.params)
    return dataclasses.replace(k, target=fake, source=src)


def test_abi_bad_args_from_c(tmp_path):
    host = softgen.host_target()
    kernels = [softgen.compile("softmax", target=host, name="abi_row"),
               softgen.compile("topk_softmax", target=host, name="abi_topk", k=3, sparse=1),
               softgen.compile("sinkhorn", target=host, name="abi_sink"),
               softgen.compile("gaussian_kernel", target=host, name="abi_gauss")]
    nocpu = host_arch() == "x86_64"    # the unsupported-CPU library needs the fake x86 target
    if nocpu:
        kernels.append(nocpu_kernel("abi_nocpu"))
    for k in kernels:
        k.export(tmp_path)
    exe = tmp_path / "abi_bad_args"
    libs = [f"-l{k.name}" for k in kernels]
    subprocess.run([*compiler_for(get_target("scalar")), "-std=c11", "-Wall", "-Werror", f"-I{tmp_path}",
                    *(["-DABI_NOCPU"] if nocpu else []), str(HERE / "c" / "abi_bad_args.c"),
                    "-o", str(exe), f"-L{tmp_path}", f"-Wl,-rpath,{tmp_path}", *libs], check=True, timeout=300)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}{res.stderr}"
    assert "all ABI checks passed" in res.stdout


@x86_only
def test_ecpu_is_target_not_supported():
    """rc 8 from the library (its own CPU check, whatever llvmlite said) raises
    TargetNotSupportedError; ``<name>_supported()`` is 0; the manifest and header document it."""
    k = nocpu_kernel("nocpu_py")
    lib = build_shared(k.sources(), k.target)
    assert ctypes.CDLL(str(lib)).nocpu_py_supported() == 0
    k._fn = load_entry(ctypes.CDLL(str(lib)), k.name)
    with pytest.raises(softgen.TargetNotSupportedError, match="returned error 8"):
        k(np.ones((2, 8), np.float32))


@x86_only
def test_gemm_entry_returns_ecpu():
    """The GEMM library's <name>_entry wrappers check the CPU too."""
    from softgen.backends import gemm as G
    fake = nocpu_kernel("unused").target
    g = G.gemm(fake, "nt", name="gemm_nocpu")
    lib = ctypes.CDLL(str(build_shared({"gemm.c": G.translation_unit([g])}, fake)))
    a = np.ones((4, 8), np.float32)
    P = ctypes.c_void_p(a.ctypes.data)
    S, F = ctypes.c_size_t, ctypes.c_float
    assert lib.gemm_nocpu_entry(S(4), S(4), S(8), F(1), P, S(8), P, S(8), F(0), P, S(4)) == 8
    assert (a == 1).all()


def test_gemm_entry_overflow():
    """The GEMM library's <name>_entry wrappers check that each matrix fits too."""
    from softgen.backends import gemm as G
    from softgen.gemm_runtime import GemmLibrary
    g = G.gemm("scalar", "nt")
    fn = GemmLibrary([g], emulate=False)._fn(g)
    a = np.ones((4, 8), np.float32)
    big = ctypes.c_size_t(-1).value
    P = a.ctypes.data
    assert fn(1, 1, big, 1.0, P, big, P, big, 0.0, P, 1) == 3      # a's one row: k = (size_t)-1
    assert fn(big, 1, 1, 1.0, P, 1, P, 1, 0.0, P, 1) == 3          # m = (size_t)-1 rows
    assert fn(2, 1, 1, 1.0, P, 1, P, 1, 0.0, P, big) == 3          # ldc = (size_t)-1


def test_error_code_8_documented(tmp_path):
    import json
    k = softgen.compile("softmax", target="avx2", name="doc8")
    k.export(tmp_path)
    header = (tmp_path / "doc8.h").read_text()
    assert re.search(r"#define DOC8_ECPU 8 .*avx2, fma", header)
    assert "int doc8_supported(void);" in header
    m = json.loads((tmp_path / "doc8.json").read_text())
    assert "8" in m["errors"] and m["cpu_check"]["symbol"] == "doc8_supported"


# Instructions that fault without the target's ISA: VEX/EVEX-encoded ones (v-prefixed mnemonics),
# ymm/zmm registers and AVX-512 mask registers.
_ISA_INSN = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+|.*%[yz]mm\d|.*%k[0-7]\b)")


def _functions(lib: Path, names: set[str]) -> dict[str, list[str]]:
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    out, cur = {}, None
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if m:
            base = m.group(1).split(".")[0]
            cur = m.group(1) if base in names else None
            if cur:
                out[cur] = []
        elif cur and line.strip():
            out[cur].append(line)
    return out


@pytest.mark.skipif(host_arch() != "x86_64", reason="x86 disassembly")
@pytest.mark.parametrize("op,params", [("softmax", {}), ("topk_softmax", {"k": 3, "sparse": 1}),
                                       ("sinkhorn", {}), ("gaussian_kernel", {})])
def test_cpu_check_path_has_no_target_instructions(op, params):
    """The exported entry point, <name>_supported and the probe (and their cold parts) must not
    execute a single AVX/AVX-512 instruction before the check has passed: the work sits in
    <name>__checked, out of line, so the compiler cannot hoist its vector setup into them."""
    k = softgen.compile(op, target="avx512", name="asm_probe", **params)
    lib = build_shared(k.sources(), k.target)
    # a dispatcher (algorithm="auto"): its entry and CPU query, and every variant's
    checked = [v.name for v in k.variants] or ["asm_probe"]
    want = {"sg_cpu_probe", "asm_probe", "asm_probe_supported", *checked, *(f"{c}_supported" for c in checked)}
    fns = _functions(lib, want)
    assert want <= set(fns), sorted(fns)
    bad = {f: [ln for ln in body if _ISA_INSN.match(ln)] for f, body in fns.items()}
    assert not any(bad.values()), bad
    # the hot path: a load of the cached result, a compare and a call of the work
    for c in checked:
        entry = "\n".join(fns[c])
        assert "<sg_cpu_known>" in entry and f"<{c}__checked" in entry, entry
    entry = "\n".join(fns["asm_probe"])   # a dispatcher: compares n and jumps to a variant
    assert all(f"<{c}" in entry for c in checked), entry


def test_cli_build_notes_it_cannot_run_here(tmp_path, monkeypatch, capsys):
    """One line on stderr when the host lacks the target (faked: llvmlite reports no features)."""
    import sys
    monkeypatch.setattr(sys.modules["softgen.targets"], "host_features", lambda: {})
    # one algorithm: the note is the build's, whatever it holds (a dispatcher compiles 2 variants)
    assert cli.main(["build", "--target", "avx2", "--algorithm", "two-pass", "--name", "cli_nocpu", "-o", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "can build target avx2 but not run it" in err[0], err
    assert "CLI_NOCPU_ECPU (8)" in err[0]


def test_tvm_wrapper_overflow_and_cpu_check():
    """The TVM backend's C wrapper shares entry.c.j2: (size_t)-1 sizes return EOVERFLOW."""
    from softgen.backends.tvm_adapter import available
    ok, why = available()
    if not ok:
        pytest.skip(f"TVM: {why}")
    host = softgen.host_target()
    k = softgen.compile("softmax", target=host, backend="tvm", name="tvm_ovf")
    lib = build_shared(k.sources(), k.target)
    fn = load_entry(ctypes.CDLL(str(lib)), k.name)
    x = np.zeros(16, np.float32)
    big = ctypes.c_size_t(-1).value
    assert fn(x.ctypes.data, x.ctypes.data, 1, big, big, big) == 3
    assert fn(x.ctypes.data, x.ctypes.data, 2, big // 4 + 1, big, big) == 3
    assert ctypes.CDLL(str(lib)).tvm_ovf_supported() == 1
