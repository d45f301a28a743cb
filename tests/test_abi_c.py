"""The exported C ABI from C: bad arguments (NULL, ld < n, rows * ld overflow, ``(size_t)-1`` for
n, rows, ld, m) get their error codes on every kind of entry point (row, sparse top-k, unary
matrix, general matrix with a GEMM) (tests/c/abi_bad_args.c against exported libraries)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import softgen
from softgen.runtime import build_shared, compiler_for, load_entry
from softgen.targets import get_target

HERE = Path(__file__).parent


def test_abi_bad_args_from_c(tmp_path):
    host = softgen.host_target()
    kernels = [softgen.compile("softmax", target=host, name="abi_row"),
               softgen.compile("topk_softmax", target=host, name="abi_topk", k=3, sparse=1),
               softgen.compile("sinkhorn", target=host, name="abi_sink"),
               softgen.compile("gaussian_kernel", target=host, name="abi_gauss")]
    for k in kernels:
        k.export(tmp_path)
    exe = tmp_path / "abi_bad_args"
    libs = [f"-l{k.name}" for k in kernels]
    subprocess.run([*compiler_for(get_target("scalar")), "-std=c11", "-Wall", "-Werror", f"-I{tmp_path}",
                    str(HERE / "c" / "abi_bad_args.c"), "-o", str(exe), f"-L{tmp_path}",
                    f"-Wl,-rpath,{tmp_path}", *libs], check=True, timeout=300)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}{res.stderr}"
    assert "all ABI checks passed" in res.stdout


def test_gemm_entry_overflow():
    """The GEMM library's <name>_entry wrappers check that each matrix fits too."""
    import ctypes
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


def test_tvm_wrapper_overflow():
    """The TVM backend's C wrapper shares entry.c.j2: (size_t)-1 sizes return EOVERFLOW."""
    from softgen.backends.tvm_adapter import available
    ok, why = available()
    if not ok:
        pytest.skip(f"TVM: {why}")
    k = softgen.compile("softmax", target=softgen.host_target(), backend="tvm", name="tvm_ovf")
    fn = load_entry(build_shared(k.sources(), k.target), k.name)
    x = np.zeros(16, np.float32)
    big = np.iinfo(np.uint64).max
    assert fn(x.ctypes.data, x.ctypes.data, 1, big, big, big) == 3
    assert fn(x.ctypes.data, x.ctypes.data, 2, big // 4 + 1, big, big) == 3
