"""Exports a C/C++ project can consume (issue 15): default names spell the op's parameters, build
refuses to replace a different kernel of the same name, the static archive links a C program,
pkg-config and CMake's find_package find the (moved) output directory."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import softgen
from softgen import cli
from softgen.errors import UsageError
from softgen.ops import get_op

CC = shutil.which("gcc") or shutil.which("cc")
CXX = shutil.which("g++") or shutil.which("c++")
CMAKE = shutil.which("cmake")
PKG_CONFIG = shutil.which("pkg-config")
X = [0.25 * i - 1.0 for i in range(8)]          # the row every program below normalises
SCALE = 2.0                                      # temperature 0.5

needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler")

PROGRAM = """\
#include <stdio.h>
#include "NAME.h"
int main(void)
{
    float x[8] = {XS}, y[8];
    int i, rc = NAME(x, y, 1, 8, 8, 8);
    printf("%d", rc);
    for (i = 0; i < 8; i++)
        printf(" %.9g", (double)y[i]);
    printf("\\n");
    return rc;
}
"""


def _program(name: str) -> str:
    return PROGRAM.replace("NAME", name).replace("XS", ", ".join(f"{v}f" for v in X))


def _check_output(stdout: str) -> None:
    """The program's output: rc 0 and softmax(SCALE * X) to float32 accuracy."""
    rc, *ys = stdout.split()
    assert rc == "0"
    x = np.array(X, np.float64) * SCALE
    ref = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    np.testing.assert_allclose(np.array(ys, np.float64), ref, rtol=1e-5)


def sh(*argv, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, argv))} failed ({res.returncode}):\n{res.stdout}{res.stderr}"
    return res


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """softmax(temperature=0.5), algorithm auto (a dispatcher: several translation units) on the
    host, exported once with --static; the directory is then moved (relocatable files)."""
    k = softgen.compile("softmax", temperature=0.5)
    first = tmp_path_factory.mktemp("pkg") / "first"
    k.export(first, static=True)
    moved = tmp_path_factory.mktemp("pkg") / "moved"
    shutil.move(str(first), str(moved))
    return k, moved


# -- names -----------------------------------------------------------------------------------

def test_default_names_spell_parameters():
    base = softgen.compile("softmax", algorithm="two-pass", target="scalar").name
    t05 = softgen.compile("softmax", algorithm="two-pass", target="scalar", temperature=0.5).name
    s2 = softgen.compile("softmax", algorithm="two-pass", target="scalar", scale=2.0).name
    s3 = softgen.compile("softmax", algorithm="two-pass", target="scalar", scale=3.0).name
    assert "scale" not in base and base.startswith("softgen_f32_softmax_2p__scalar_")
    assert t05 == s2 and "_scale2_" in s2            # one kernel, however its scale was given
    assert len({base, s2, s3}) == 3
    k2 = softgen.compile("topk_softmax", target="scalar").name
    k4 = softgen.compile("topk_softmax", target="scalar", k=4).name
    assert k2 != k4 and "_k4" in k4 and "_k2" not in k2
    g = softgen.compile("newton_pinv", target="scalar", n_iter=5).name
    assert "_niter5__" in g


def test_name_tags_never_collide():
    op = get_op("sinkhorn")
    values = [1.0, 0.5, 0.05, 1e-5, 1e-05 * 3, 2.5e20, 1 / 3, 0.1, 0.125]
    tags = {}
    for n_iter in (0, 1, 3, 10, 11):
        for eps in values:
            tag = op.name_tag({"n_iter": n_iter, "eps": eps})
            assert tag == "" or tag[0] == "_" and tag[1:].replace("_", "a").isalnum()
            assert tags.setdefault(tag, (n_iter, eps)) == (n_iter, eps), tag
    assert op.name_tag(dict(op.params)) == ""
    long_tag = get_op("lssar").name_tag({"head_dim": 128, "p": 13, "offset_free_rows": 17, "count_keys": 0})
    assert len(long_tag) == 12 and long_tag.startswith("_h")   # beyond 32 characters: hashed
    # a multi-ISA library's members are <name>__<isa>, at most 64 characters: hashed if need be
    g = softgen.compile("topk_softmax", target="x86-64", k=40, sparse=1, renormalize=0)
    assert all(len(m.name) <= 64 for m in g.members) and "_h" in g.name


# -- overwrite refusal -------------------------------------------------------------------------

@needs_cc
def test_build_refuses_a_different_kernel_of_the_same_name(tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["build", "--target", "scalar", "--algorithm", "two-pass", "--name", "my_same", "-o", str(out)]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0                                   # the same kernel again: fine
    capsys.readouterr()
    assert cli.main([*argv, "--temperature", "0.5"]) == 2        # another kernel, same name
    err = capsys.readouterr().err
    assert "different kernel named my_same" in err and "scale" in err and "--force" in err
    manifest = (out / "my_same.json").read_text()
    assert '"scale": 1.0' in manifest                            # untouched
    assert cli.main([*argv, "--temperature", "0.5", "--force"]) == 0
    assert '"scale": 2.0' in (out / "my_same.json").read_text()
    # files without a manifest are of unknown origin
    (out / "my_same.json").unlink()
    k = softgen.compile("softmax", algorithm="two-pass", target="scalar", name="my_same")
    with pytest.raises(UsageError, match="without the manifest"):
        k.export(out, overwrite=False)
    k.export(out)                                                # the API's default replaces
    assert (out / "my_same.json").exists()


def test_default_output_directory_is_not_build():
    assert cli.DEFAULT_OUTPUT not in ("build", "./build")
    assert cli._parser().parse_args(["build"]).output == cli.DEFAULT_OUTPUT


# -- static archive, pkg-config, CMake ---------------------------------------------------------

@needs_cc
def test_files_are_written_and_relative(exported):
    k, d = exported
    names = {p.name for p in d.iterdir()}
    assert {f"lib{k.name}.so", f"lib{k.name}.a", f"{k.name}.h", f"{k.name}.pc", f"{k.name}Config.cmake",
            f"{k.name}ConfigVersion.cmake"} <= names
    for f in (f"{k.name}.pc", f"{k.name}Config.cmake", f"{k.name}ConfigVersion.cmake"):
        assert "/tmp" not in (d / f).read_text() and str(d) not in (d / f).read_text()
    assert "Libs.private: -lpthread -lm" in (d / f"{k.name}.pc").read_text()


@needs_cc
def test_static_archive_links_a_c_program(exported, tmp_path):
    k, d = exported
    if not k.runnable:
        pytest.skip("the host target does not run here")
    src = tmp_path / "app.c"
    src.write_text(_program(k.name))
    exe = tmp_path / "app"
    sh(CC, "-std=c99", "-Wall", "-Werror", src, f"-I{d}", d / f"lib{k.name}.a", "-lpthread", "-lm", "-o", exe)
    # linked statically: runs with no library path, and names no softgen library
    assert k.name not in sh("ldd", exe).stdout if shutil.which("ldd") else True
    _check_output(sh(exe, env={**os.environ, "LD_LIBRARY_PATH": ""}).stdout)


@needs_cc
def test_static_archives_export_only_entry_points_and_link_together(exported, tmp_path):
    """One object per archive, only the entry points global: the thread pool's (weak, hidden)
    symbols of two archives do not clash (a second library's pool would be a duplicate)."""
    k, d = exported
    nm = sh("nm", "-g", "--defined-only", d / f"lib{k.name}.a").stdout
    defined = {ln.split()[-1] for ln in nm.splitlines() if len(ln.split()) == 3}
    assert defined == {k.name, f"{k.name}_mt", f"{k.name}_supported"}, nm
    k2 = softgen.compile("softmax", algorithm="two-pass", target="scalar", name="my_second")
    k2.export(tmp_path, static=True)
    src = tmp_path / "two.c"
    src.write_text(_program(k.name).replace("int main(void)", "#include \"my_second.h\"\nint main(void)")
                   .replace("return rc;", "return rc | my_second(x, y, 1, 8, 8, 8);"))
    exe = tmp_path / "two"
    sh(CC, "-std=c99", src, f"-I{d}", f"-I{tmp_path}", d / f"lib{k.name}.a", tmp_path / "libmy_second.a",
       "-lpthread", "-lm", "-o", exe)
    if k.runnable:
        _check_output(sh(exe).stdout)


@needs_cc
@pytest.mark.skipif(PKG_CONFIG is None, reason="pkg-config not available")
def test_pkg_config(exported, tmp_path):
    k, d = exported
    env = {**os.environ, "PKG_CONFIG_PATH": str(d)}
    flags = sh(PKG_CONFIG, "--cflags", "--libs", k.name, env=env).stdout.split()
    assert f"-I{d}" in flags and f"-L{d}" in flags and f"-l{k.name}" in flags
    assert "-lpthread" in sh(PKG_CONFIG, "--static", "--libs", k.name, env=env).stdout.split()
    assert sh(PKG_CONFIG, "--variable=staticlib", k.name, env=env).stdout.strip() == str(d / f"lib{k.name}.a")
    if not k.runnable:
        pytest.skip("the host target does not run here")
    src = tmp_path / "app.c"
    src.write_text(_program(k.name))
    exe = tmp_path / "app"
    sh(CC, "-std=c99", src, *flags, "-o", exe)
    _check_output(sh(exe, env={**os.environ, "LD_LIBRARY_PATH": str(d)}).stdout)


CMAKELISTS = """\
cmake_minimum_required(VERSION 3.10)
project(softgen_consumer CXX)
find_package(NAME WANTED REQUIRED CONFIG)
add_executable(app app.cpp)
target_link_libraries(app PRIVATE softgen::NAME)
add_executable(app_static app.cpp)
target_link_libraries(app_static PRIVATE softgen::NAME_static)
"""


@pytest.mark.skipif(CMAKE is None or CXX is None, reason="cmake or a C++ compiler not available")
def test_cmake_find_package_cxx(exported, tmp_path):
    k, d = exported
    src = tmp_path / "src"
    src.mkdir()
    (src / "CMakeLists.txt").write_text(CMAKELISTS.replace("NAME", k.name)
                                        .replace("WANTED", softgen.__version__))
    (src / "app.cpp").write_text(_program(k.name).replace("<stdio.h>", "<cstdio>"))
    build = tmp_path / "build"
    env = {**os.environ, "CXX": CXX}
    sh(CMAKE, "-S", src, "-B", build, f"-D{k.name}_DIR={d}", "-DCMAKE_BUILD_TYPE=Release", env=env)
    sh(CMAKE, "--build", build, env=env)
    if not k.runnable:
        pytest.skip("the host target does not run here")
    for exe in ("app", "app_static"):     # the build tree's rpath finds the shared library
        _check_output(sh(build / exe, env={**os.environ, "LD_LIBRARY_PATH": ""}).stdout)
    # a newer version than the export is not compatible: find_package fails
    (src / "CMakeLists.txt").write_text(CMAKELISTS.replace("NAME", k.name).replace("WANTED", "99.0"))
    res = subprocess.run([CMAKE, "-S", str(src), "-B", str(tmp_path / "b2"), f"-D{k.name}_DIR={d}"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0 and "99.0" in res.stdout + res.stderr


def test_package_files_without_static(tmp_path):
    """Without --static: no archive, and the CMake config declares no static target."""
    k = softgen.compile("softmax", algorithm="two-pass", target="scalar", name="my_nostatic")
    paths = k.export(tmp_path)
    assert "static" not in paths and not (tmp_path / "libmy_nostatic.a").exists()
    cfg = (tmp_path / "my_nostatic" "Config.cmake").read_text()
    assert "softgen::my_nostatic)" in cfg and "_static" not in cfg.split("get_filename_component")[1]
