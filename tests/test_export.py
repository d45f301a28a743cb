"""AOT export: ``Kernel.export`` writes a library with a plain C ABI, a clean C/C++ header and a
manifest; a C program linked against the library computes what the float64 reference says."""
from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import check

import softgen

HOST = softgen.host_target()
CC = shutil.which("gcc")
CXX = shutil.which("g++")
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
# Linker-provided symbols that may show up in a shared object's dynamic symbol table.
LINKER_SYMBOLS = {"_init", "_fini", "_edata", "_end", "__bss_start"}

pytestmark = pytest.mark.skipif(CC is None, reason="gcc not available")

CASES = [(op, alg, target)
         for target in ("host", "scalar")
         for op, algs in (("softmax", ("two-pass", "online")),
                          ("log_softmax", ("three-pass-recompute", "two-pass")))
         for alg in algs]


def _ident(op, alg, target):
    return f"{op}-{alg}-{target}"


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def exported(outdir):
    """(op, algorithm, target) -> (kernel, paths); each kernel exported once per module."""
    @functools.cache
    def get(op, alg, target):
        name = f"t_{op}_{alg.replace('-', '_')}_{target}"
        k = softgen.compile(op, algorithm=alg, target=target, name=name)
        paths = k.export(outdir / name)
        return k, paths
    return get


def sh(*argv, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, argv))} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
    return res


def build_program(source: str, k: softgen.Kernel, lib_dir: Path, exe: Path, cxx=False) -> Path:
    src = exe.with_suffix(".cpp" if cxx else ".c")
    src.write_text(source)
    compiler, std = (CXX, ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"]) if cxx \
        else (CC, CFLAGS)
    sh(compiler, *std, src, f"-I{lib_dir}", f"-L{lib_dir}", f"-l{k.name}",
       f"-Wl,-rpath,{lib_dir}", "-lm", "-o", exe)
    return exe


# -- files, symbols, dependencies, manifest -----------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[_ident(*c) for c in CASES])
def test_files_symbols_and_manifest(exported, case):
    op, alg, target = case
    k, paths = exported(*case)
    d = paths["library"].parent
    assert sorted(p.name for p in d.iterdir()) == \
        sorted([f"lib{k.name}.so", f"{k.name}.h", f"{k.name}.json", f"{k.name}.c", f"{k.name}.pc",
                f"{k.name}Config.cmake", f"{k.name}ConfigVersion.cmake"])
    assert {key: p.name for key, p in paths.items()} == {
        "library": f"lib{k.name}.so", "header": f"{k.name}.h", "manifest": f"{k.name}.json",
        "source": f"{k.name}.c", "pkgconfig": f"{k.name}.pc", "cmake": f"{k.name}Config.cmake",
        "cmake_version": f"{k.name}ConfigVersion.cmake"}
    assert paths["source"].read_text() == k.source

    # exactly the entry point, its CPU query and the entry with a thread count (every kind)
    # (helpers and the thread pool are hidden/static)
    nm = sh("nm", "-D", "--defined-only", paths["library"]).stdout
    defined = {ln.split()[-1] for ln in nm.splitlines() if ln.split() and ln.split()[-2] not in "UwvN"}
    mt = {f"{k.name}_mt"}
    assert defined - LINKER_SYMBOLS == {k.name, f"{k.name}_supported"} | mt, nm
    assert re.search(rf"^[0-9a-f]+ T {k.name}$", nm, re.M), nm

    # no Python, no runtime beyond libc/libm
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]",
                        sh("readelf", "-d", paths["library"]).stdout)
    assert set(needed) <= {"libc.so.6", "libm.so.6", "libpthread.so.0"}, needed   # pthread: glibc < 2.34
    ldd = subprocess.run(["ldd", str(paths["library"])], capture_output=True, text=True).stdout
    assert "python" not in ldd.lower()

    m = json.loads(paths["manifest"].read_text())
    assert m["op"] == op and m["algorithm"] == alg
    assert m["target"]["name"] == (HOST if target == "host" else target) == k.target.name
    assert m["schedule"] == k.schedule.as_dict()
    assert m["softgen_version"] == softgen.__version__
    assert m["symbol"] == k.name and m["abi"].startswith(f"int {k.name}(const float *x, float *y")
    assert m["params"] == k.params
    acc = m["accuracy"]
    assert acc["executed"] == "native"
    assert isinstance(acc["max_rel_error"], float) and 0 <= acc["max_rel_error"] < 1e-5
    assert isinstance(acc["max_abs_error"], float) and 0 <= acc["max_abs_error"] < 1e-3

    header = paths["header"].read_text()
    for text in (f"op:        {op}(", f"algorithm: {alg}", f"target:    {k.target.name}",
                 f"schedule:  {k.schedule}", f"int {k.name}(const float *x, float *y, size_t rows, "
                 f"size_t n, size_t ldx, size_t ldy);"):
        assert text in header


# -- calling the library from C -----------------------------------------------------------------

RUN_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "NAME.h"

/* usage: prog x.bin y.bin rows n ldx ldy: reads x (rows*ldx floats) and the initial y
   (rows*ldy floats), calls NAME, writes y back over y.bin, prints the return code. */
static float *slurp(const char *path, size_t count)
{
    float *buf = malloc(count * sizeof(float) + 1);
    FILE *f = fopen(path, "rb");
    if (!buf || !f || fread(buf, sizeof(float), count, f) != count) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(3);
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    size_t rows, n, ldx, ldy;
    float *x, *y;
    FILE *f;
    int rc;
    if (argc != 7)
        return 4;
    rows = strtoul(argv[3], NULL, 10);
    n = strtoul(argv[4], NULL, 10);
    ldx = strtoul(argv[5], NULL, 10);
    ldy = strtoul(argv[6], NULL, 10);
    x = slurp(argv[1], rows * ldx);
    y = slurp(argv[2], rows * ldy);
    rc = NAME(x, y, rows, n, ldx, ldy);
    f = fopen(argv[2], "wb");
    if (!f || fwrite(y, sizeof(float), rows * ldy, f) != rows * ldy)
        return 5;
    fclose(f);
    printf("rc=%d\n", rc);
    free(x);
    free(y);
    return 0;
}
"""

ABI_C = r"""
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include "NAME.h"

static int failures = 0;
#define EXPECT(cond) do { if (!(cond)) { printf("FAIL line %d: %s\n", __LINE__, #cond); \
                                         failures++; } } while (0)

int main(void)
{
    float x[3 * 8], y[3 * 8], y0[3 * 8], z[3 * 8];
    size_t i;
    for (i = 0; i < 3 * 8; i++) {
        x[i] = (float)i * 0.25f - 2.0f;
        y[i] = y0[i] = -7.0f;
    }
    /* the documented codes are distinct and OK is 0 */
    EXPECT(UPPER_OK == 0);
    EXPECT(UPPER_ENULL != 0 && UPPER_ESTRIDE != 0 && UPPER_EOVERFLOW != 0);
    EXPECT(UPPER_ENULL != UPPER_ESTRIDE && UPPER_ESTRIDE != UPPER_EOVERFLOW);

    /* NULL with nonzero sizes */
    EXPECT(NAME(NULL, y, 3, 5, 8, 8) == UPPER_ENULL);
    EXPECT(NAME(x, NULL, 3, 5, 8, 8) == UPPER_ENULL);
    EXPECT(NAME(NULL, NULL, 1, 1, 1, 1) == UPPER_ENULL);
    EXPECT(memcmp(y, y0, sizeof y) == 0);

    /* strides shorter than the row */
    EXPECT(NAME(x, y, 3, 5, 4, 8) == UPPER_ESTRIDE);
    EXPECT(NAME(x, y, 3, 5, 8, 4) == UPPER_ESTRIDE);
    EXPECT(NAME(x, y, 1, 5, 0, 5) == UPPER_ESTRIDE);
    EXPECT(memcmp(y, y0, sizeof y) == 0);

    /* rows * stride beyond the address space */
    EXPECT(NAME(x, y, SIZE_MAX, 5, 8, 8) == UPPER_EOVERFLOW);
    EXPECT(NAME(x, y, 2, 5, SIZE_MAX / 2, 8) == UPPER_EOVERFLOW);
    EXPECT(memcmp(y, y0, sizeof y) == 0);

    /* empty problems succeed whatever the pointers and strides */
    EXPECT(NAME(NULL, NULL, 0, 5, 0, 0) == UPPER_OK);
    EXPECT(NAME(NULL, NULL, 3, 0, 0, 0) == UPPER_OK);
    EXPECT(NAME(NULL, NULL, 0, 0, 0, 0) == UPPER_OK);
    EXPECT(NAME(x, y, 0, 5, 8, 8) == UPPER_OK);
    EXPECT(NAME(x, y, 3, 0, 8, 8) == UPPER_OK);
    EXPECT(memcmp(y, y0, sizeof y) == 0);

    /* a valid strided call writes the rows and leaves the padding alone; in place agrees */
    EXPECT(NAME(x, y, 3, 5, 8, 8) == UPPER_OK);
    for (i = 0; i < 3 * 8; i++)
        EXPECT((i % 8 < 5) == (y[i] != -7.0f));
    memcpy(z, x, sizeof z);
    EXPECT(NAME(z, z, 3, 5, 8, 8) == UPPER_OK);
    for (i = 0; i < 3 * 8; i++)
        EXPECT(i % 8 < 5 ? z[i] == y[i] : z[i] == x[i]);

    printf(failures ? "%d failure(s)\n" : "ok\n", failures);
    return failures != 0;
}
"""


def _c(template: str, k: softgen.Kernel) -> str:
    return textwrap.dedent(template).replace("UPPER_", k.name.upper() + "_").replace("NAME", k.name)


_RUNNERS: dict = {}


def _runner(k: softgen.Kernel, lib_dir: Path) -> Path:
    if (k.name, lib_dir) not in _RUNNERS:
        _RUNNERS[k.name, lib_dir] = build_program(_c(RUN_C, k), k, lib_dir,
                                                  lib_dir.parent / f"run_{k.name}")
    return _RUNNERS[k.name, lib_dir]


def header_codes(k: softgen.Kernel, header: Path) -> dict:
    """The error codes the header #defines: {"OK": 0, "ENULL": ..., ...}."""
    return {m[0]: int(m[1]) for m in re.findall(rf"^#define {k.name.upper()}_(\w+) (\d+)\b",
                                                header.read_text(), re.M)}


def call_from_c(k, lib_dir, x: np.ndarray, ldx: int, ldy: int, tmp: Path):
    """Run the C program on the rows of ``x`` laid out with strides ldx/ldy; returns (rc, y, y
    padding) where the padding must still hold its sentinel."""
    rows, n = x.shape
    xb = np.full((rows, ldx), np.float32(123.5), np.float32)
    xb[:, :n] = x
    yb = np.full((rows, ldy), np.float32(-99.25), np.float32)
    (tmp / "x.bin").write_bytes(xb.tobytes())
    (tmp / "y.bin").write_bytes(yb.tobytes())
    out = sh(_runner(k, lib_dir), tmp / "x.bin", tmp / "y.bin", rows, n, ldx, ldy).stdout
    rc = int(re.fullmatch(r"rc=(-?\d+)\n", out).group(1))
    yb = np.frombuffer((tmp / "y.bin").read_bytes(), np.float32).reshape(rows, ldy)
    return rc, yb[:, :n].copy(), yb[:, n:]


def _rows(rng, n):
    x = np.stack([rng.standard_normal(n) * 3, rng.uniform(-1000, 1000, n), rng.uniform(90, 100, n),
                  rng.standard_normal(n) * 30 - 500]).astype(np.float32)
    x[3, n // 2] = -np.inf
    return x


@pytest.mark.parametrize("case", CASES, ids=[_ident(*c) for c in CASES])
def test_c_program_matches_reference(exported, case, tmp_path):
    k, paths = exported(*case)
    rng = np.random.default_rng(7)
    for n, ldx, ldy in ((1, 3, 2), (13, 16, 20), (1000, 1003, 1017), (4099, 4099, 4100)):
        x = _rows(rng, n) if n > 1 else np.array([[0.5], [-3.0], [1e30], [7.0]], np.float32)
        rc, y, pad = call_from_c(k, paths["library"].parent, x, ldx, ldy, tmp_path)
        assert rc == 0
        check(k, x, y, f"from C, n={n} ldx={ldx} ldy={ldy}")
        assert np.all(pad == np.float32(-99.25)), "the library wrote into the row padding"
        if k.runnable:  # the same library through ctypes gives bit-identical results
            assert np.array_equal(k(x), y)


@pytest.mark.parametrize("case", CASES[:2] + CASES[-2:], ids=[_ident(*c) for c in CASES[:2] + CASES[-2:]])
def test_c_abi_error_codes(exported, case, tmp_path):
    k, paths = exported(*case)
    exe = build_program(_c(ABI_C, k), k, paths["library"].parent, tmp_path / "abi")
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stdout + res.stderr


def test_error_code_through_the_runner(exported, tmp_path):
    """The runner itself reports a nonzero code (and leaves y alone) for a short stride."""
    k, paths = exported(*CASES[0])
    x = np.ones((2, 8), np.float32)
    rc, y, pad = call_from_c(k, paths["library"].parent, x, 8, 8, tmp_path)
    assert rc == 0 and np.allclose(y, 1 / 8)
    # ldx=8 but ask for n=9 rows by lying about n: the C side sees ldx < n
    xb = np.ones((2, 9), np.float32)
    (tmp_path / "x.bin").write_bytes(xb.tobytes())
    (tmp_path / "y.bin").write_bytes(np.full((2, 9), 5.0, np.float32).tobytes())
    out = sh(_runner(k, paths["library"].parent), tmp_path / "x.bin", tmp_path / "y.bin",
             2, 9, 8, 9).stdout
    codes = header_codes(k, paths["header"])
    assert set(codes) == {"OK", "ENULL", "ESTRIDE", "EOVERFLOW", "ECPU", "ETHREADS"} and codes["OK"] == 0
    assert out == f"rc={codes['ESTRIDE']}\n"
    assert np.all(np.frombuffer((tmp_path / "y.bin").read_bytes(), np.float32) == 5.0)


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    """A failure while writing (here: the manifest) removes what was written, and the
    directories the export created."""
    k = softgen.compile("softmax", algorithm="online", target="scalar", name="t_failing")
    write_text = Path.write_text

    def failing(self, *a, **kw):
        if self.suffix == ".json":
            raise OSError(28, "No space left on device")
        return write_text(self, *a, **kw)
    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError):
        k.export(tmp_path / "new" / "out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    with pytest.raises(OSError):
        k.export(tmp_path / "old")
    assert list((tmp_path / "old").iterdir()) == []


@pytest.mark.parametrize("op,params,backend", [
    ("softmax", {}, "tvm"), ("topk_softmax", {"sparse": 1}, "c"), ("sinkhorn", {}, "c"),
    ("newton_pinv", {}, "c"), ("newton_pinv", {}, "tvm")])
def test_library_exports_only_the_entry_point(op, params, backend):
    """A library exports its entry and its CPU query and nothing else, whatever the backend (TVM objects are
    linked with a version script) or the op (matrix ops link GEMM drivers)."""
    if backend == "tvm":
        from softgen.backends.tvm_adapter import available
        if not available()[0]:
            pytest.skip(available()[1])
    from softgen.runtime import build_shared
    k = softgen.compile(op, target="scalar", backend=backend, name="t_exports", **params)
    nm = sh("nm", "-D", "--defined-only", build_shared(k.sources(), k.target)).stdout
    defined = {ln.split()[-1] for ln in nm.splitlines() if ln.split() and ln.split()[-2] not in "UwvN"}
    mt = {"t_exports_mt"}   # every kind: the entry with a thread count
    assert defined - LINKER_SYMBOLS == {"t_exports", "t_exports_supported"} | mt, nm


# -- the header is clean C and C++ --------------------------------------------------------------

def test_header_is_clean_c_and_cpp(exported, tmp_path):
    k, paths = exported(*CASES[0])
    d = paths["library"].parent
    # twice included (include guard), every warning an error, C89-free C99 pedantic
    c = tmp_path / "inc.c"
    c.write_text(f'#include "{k.name}.h"\n#include "{k.name}.h"\n'
                 f"int (*volatile entry)(const float *, float *, size_t, size_t, size_t, size_t)"
                 f" = {k.name};\nint main(void) {{ return entry == 0; }}\n")
    sh(CC, *CFLAGS, c, f"-I{d}", "-fsyntax-only")
    if CXX is None:
        pytest.skip("g++ not available")
    # linking a C++ caller proves the extern "C" guard: a mangled name would not resolve
    exe = build_program(
        f'#include "{k.name}.h"\n#include <cstdio>\n'
        f"int main() {{ float x[4] = {{1, 2, 3, 4}}, y[4];\n"
        f"  int rc = {k.name}(x, y, 1, 4, 4, 4);\n"
        f'  std::printf("%d %.6f\\n", rc, (double)(y[0] + y[1] + y[2] + y[3])); return rc; }}\n',
        k, d, tmp_path / "cxx", cxx=True)
    if k.runnable:
        out = sh(exe).stdout.split()
        assert out[0] == "0" and abs(float(out[1]) - 1.0) < 1e-5


# -- cross export -------------------------------------------------------------------------------

def test_avx512_export_builds_on_any_x86_host(outdir, tmp_path):
    k = softgen.compile("log_softmax", algorithm="online", target="avx512", name="t_lsm_avx512")
    paths = k.export(outdir / "avx512")
    assert all(p.exists() for p in paths.values())
    nm = sh("nm", "-D", "--defined-only", paths["library"]).stdout
    assert re.search(r"^[0-9a-f]+ T t_lsm_avx512$", nm, re.M)
    asm = sh("objdump", "-d", paths["library"]).stdout if shutil.which("objdump") else "%zmm"
    assert "%zmm" in asm
    m = json.loads(paths["manifest"].read_text())
    assert m["target"]["name"] == "avx512" and m["target"]["lanes"] == 16
    assert m["op"] == "log_softmax" and m["algorithm"] == "online"
    assert "avx512f" in m["target"]["requires"] and "-mavx512f" in m["compiler"]["flags"]
    if not k.runnable:
        assert m["accuracy"]["executed"].startswith("emulated")
    # links against a C program (not run here unless the CPU has AVX-512)
    exe = build_program(_c(ABI_C, k), k, paths["library"].parent, tmp_path / "abi512")
    if k.runnable:
        assert sh(exe).stdout == "ok\n"
