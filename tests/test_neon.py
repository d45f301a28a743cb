"""The neon target on a non-AArch64 host: cross-compiled kernels and exports, checked as AArch64
ELF and run under qemu user mode (the kernel matrix in test_kernels.py covers correctness).
On an AArch64 host neon is native and these cross checks are skipped."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess

import numpy as np
import pytest
from conftest import check, skip_unless_emulated

import softgen
from softgen.emulator import find_emulator
from softgen.runtime import compiler_for
from softgen.targets import get_target, host_arch

NEON = get_target("neon")
pytestmark = pytest.mark.skipif(host_arch() == "aarch64", reason="neon is native on this host")


@pytest.fixture(autouse=True)
def _emulator():
    skip_unless_emulated(NEON)

PROGRAM = r"""
#include <stdio.h>
#include "%(name)s.h"
int main(void) {
    float x[3][11], y[3][13];
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 11; i++)
            x[r][i] = (float)((r * 7 + i * 5) %% 13) - 6.0f;
    if (%(name)s(x[0], y[0], 3, 9, 11, 13) != %(upper)s_OK) return 10;
    if (%(name)s(NULL, y[0], 3, 9, 11, 13) != %(upper)s_ENULL) return 11;
    if (%(name)s(x[0], y[0], 3, 12, 11, 13) != %(upper)s_ESTRIDE) return 12;
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 9; i++)
            printf("%%.9g\n", y[r][i]);
    return 0;
}
"""


def test_neon_is_listed_as_cross():
    (t,) = [t for t in softgen.targets() if t["name"] == "neon"]
    assert t["lanes"] == 4 and t["arch"] == "aarch64" and not t["runnable"]


def test_calling_neon_natively_is_a_clear_error():
    k = softgen.compile("softmax", algorithm="online", target="neon")
    with pytest.raises(softgen.TargetNotSupportedError, match="neon"):
        k(np.ones((1, 5), np.float32))


def test_neon_assembly_is_aarch64():
    asm = softgen.compile("softmax", algorithm="two-pass", target="neon").asm()
    assert "fmla" in asm and "ldr\tq" in asm or "ld1" in asm
    assert "ymm" not in asm and "xmm" not in asm


@pytest.mark.parametrize("op,alg", [("softmax", "two-pass"), ("log_softmax", "online")])
def test_exported_neon_library_links_and_runs_under_qemu(op, alg, tmp_path):
    name = f"neon_{op}"
    k = softgen.compile(op, algorithm=alg, target="neon", name=name)
    info = k.export(tmp_path)
    lib = tmp_path / f"lib{name}.so"
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and struct.unpack("<H", head[18:20])[0] == 183  # EM_AARCH64
    if shutil.which("readelf"):
        syms = subprocess.run(["readelf", "--dyn-syms", "-W", str(lib)], capture_output=True,
                              text=True, check=True).stdout
        line = next(ln for ln in syms.splitlines() if ln.split()[-1:] == [name])
        assert "FUNC" in line and "GLOBAL" in line and "DEFAULT" in line
        assert not [ln for ln in syms.splitlines() if " sg_" in ln]  # helpers stay hidden
    manifest = json.loads(info["manifest"].read_text())
    assert manifest["target"]["arch"] == "aarch64"
    assert 0 < manifest["accuracy"]["max_rel_error"] < 1e-5, manifest["accuracy"]  # measured under qemu
    src = tmp_path / "prog.c"
    src.write_text(PROGRAM % {"name": name, "upper": name.upper()})
    exe = tmp_path / "prog"
    subprocess.run([*compiler_for(NEON), "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(src),
                    f"-I{tmp_path}", f"-L{tmp_path}", f"-l{name}", f"-Wl,-rpath,{tmp_path}"],
                   check=True, capture_output=True, text=True)
    sysroot = "/usr/aarch64-linux-gnu"
    r = subprocess.run([*find_emulator(NEON), "-L", sysroot, str(exe)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)
    y = np.array(r.stdout.split(), np.float32).reshape(3, 9)
    x = np.array([[((rr * 7 + i * 5) % 13) - 6.0 for i in range(11)] for rr in range(3)], np.float32)[:, :9]
    check(k, x, y, "exported, from C under qemu")


def test_cli_builds_and_emits_neon(tmp_path):
    import sys
    r = subprocess.run([sys.executable, "-m", "softgen", "build", "--op", "softmax", "--algorithm",
                        "two-pass", "--target", "neon", "-o", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (lib,) = tmp_path.glob("lib*.so")
    assert struct.unpack("<H", lib.read_bytes()[18:20])[0] == 183
    r = subprocess.run([sys.executable, "-m", "softgen", "emit", "--op", "softmax", "--target", "neon",
                        "--asm"], capture_output=True, text=True)
    assert r.returncode == 0 and "fmla" in r.stdout
