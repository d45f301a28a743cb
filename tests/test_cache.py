"""The kernel cache: private directories, refused when another user could plant code there."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess

import numpy as np
import pytest

import softgen
from softgen import runtime

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def _probe(name="cache_probe"):
    return softgen.compile("softmax", algorithm="online", target="scalar", name=name)


def _digest(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_cache_directories_are_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(tmp_path / "root"))
    d = runtime.cache_dir()
    assert d.parent == tmp_path / "root"
    assert _mode(d.parent) == 0o700 and _mode(d) == 0o700


def test_xdg_cache_root_is_created_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    d = runtime.cache_dir()
    assert d.parent == tmp_path / "xdg" / "softgen"
    assert _mode(d.parent) == 0o700 and _mode(d) == 0o700


def test_a_sticky_world_writable_parent_is_fine(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(shared / "mine"))
    assert runtime.cache_dir().is_dir()


def _unsafe(d, how):
    if how == "nobody":
        os.chown(d, NOBODY, NOBODY)
    else:
        d.chmod(how)


@pytest.mark.parametrize("which", ["root", "versioned"])
@pytest.mark.parametrize("how", [0o777, 0o770, 0o1777, 0o722, pytest.param("nobody", marks=as_root)],
                         ids=["0777", "0770", "1777", "0722", "nobody"])
def test_a_cache_directory_other_users_control_is_refused(tmp_path, monkeypatch, which, how):
    """A planted library (its constructor would run on dlopen) must never be loaded."""
    private = tmp_path / "private"
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(private))
    x = np.ones((1, 3), np.float32)
    _probe()(x)
    (lib,) = private.rglob("*.so")
    shared = tmp_path / "shared"
    shutil.copytree(private, shared)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.c"
    evil.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void f(void) '
                    f'{{ fclose(fopen("{marker}", "w")); }}\n')
    planted = shared / lib.relative_to(private)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(planted), str(evil)], check=True)
    # whatever integrity record the cache keeps, the attacker can write too
    for side in planted.parent.glob(planted.stem + ".*"):
        if side.suffix not in (".so", ".c"):
            side.write_text(side.read_text().replace(_digest(lib), _digest(planted)))
    _unsafe(shared if which == "root" else planted.parent, how)
    monkeypatch.setenv("SOFTGEN_CACHE_DIR", str(shared))
    with pytest.raises(Exception) as e:
        _probe()(x)
    assert not marker.exists(), "the planted library was loaded"
    assert e.type.__name__ == "CacheError" and "SOFTGEN_CACHE_DIR" in str(e.value)
    assert str(shared if which == "root" else planted.parent) in str(e.value)


def test_an_unsafe_xdg_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SOFTGEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "softgen").mkdir(mode=0o777)
    (tmp_path / "softgen").chmod(0o777)
    with pytest.raises(softgen.CacheError, match=f"{tmp_path / 'softgen'}: it is writable by other users"):
        runtime.cache_dir()
