"""One library spanning ISAs (issue 13): ``compile(target="x86-64" | "avx2,avx512" | [...])``
holds per ISA the kernel ``compile(target=isa)`` builds and picks one once at load, capped by
SOFTGEN_ISA. The pick runs in fresh processes (it is made once per process)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import softgen
from softgen import runtime
from softgen.errors import TargetNotSupportedError, UsageError
from softgen.targets import ENV_PATH, all_targets, get_target, host_supports, target_group
from tests.conftest import STRICT, skip_unless_emulated

ROOT = Path(__file__).resolve().parent.parent
X = np.random.default_rng(13).standard_normal((5, 1500)).astype(np.float32) * 4


def _lib(k) -> Path:
    """The built library of ``k`` (the runtime's cache: the same one ``k(x)`` loads)."""
    return runtime.build_shared(k.sources(), k.target, file_targets=k.file_targets())


# A fresh process: load the library with ctypes, run it on x.npy, print the pick (one JSON line).
_CHILD = r"""
import ctypes, json, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1]); name = sys.argv[2]; x = np.load(sys.argv[3])
isa = getattr(lib, name + "_isa"); isa.restype = ctypes.c_char_p
sup = getattr(lib, name + "_supported")()
y = np.zeros_like(x); f = ctypes.c_void_p
rc = getattr(lib, name)(f(x.ctypes.data), f(y.ctypes.data), ctypes.c_size_t(x.shape[0]),
                        ctypes.c_size_t(x.shape[1]), ctypes.c_size_t(x.shape[1]), ctypes.c_size_t(x.shape[1]))
np.save(sys.argv[4], y)
print(json.dumps({"isa": isa().decode(), "supported": sup, "rc": rc}))
"""


def _run_child(k, tmp_path, isa_env: str | None):
    env = {k_: v for k_, v in os.environ.items() if k_ != "SOFTGEN_ISA"}
    if isa_env is not None:
        env["SOFTGEN_ISA"] = isa_env
    np.save(tmp_path / "x.npy", X)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(_lib(k)), k.name, str(tmp_path / "x.npy"),
                          str(tmp_path / "y.npy")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), np.load(tmp_path / "y.npy")


@pytest.fixture(scope="module")
def x86():
    """The x86-64 library (algorithm auto: per ISA its own dispatcher)."""
    if not get_target("avx2").runnable:
        pytest.skip("needs an AVX2 host")
    return softgen.compile("softmax", target="x86-64")


@pytest.fixture(scope="module")
def single():
    """The single-ISA kernels a multi-ISA library holds, by ISA (built on first use)."""
    cache = {}

    def get(isa):
        if isa not in cache:
            cache[isa] = softgen.compile("softmax", target=isa)
        return cache[isa]
    return get


def test_groups_are_data():
    grp = target_group("x86-64")
    assert grp.names == tuple(t.name for t in all_targets().values() if t.arch in ("x86_64", "any"))
    assert grp.names[-1] == "scalar" and grp.arch == "x86_64"
    assert target_group("aarch64").names == ("neon", "scalar")
    assert target_group("aarch64").target.arch == "aarch64"   # scalar is compiled for aarch64 there
    lst = target_group("avx2,avx512")
    assert lst.names == ("avx512", "avx2") and lst.name == "avx512,avx2"   # best first
    assert target_group(["scalar", "avx2"]).names == ("avx2", "scalar")
    assert lst.target.requires == get_target("avx2").requires   # runs iff its least ISA runs


@pytest.mark.parametrize("spec, match", [
    ("avx2,neon", "mixes architectures"), (["neon", "avx512"], "mixes architectures"),
    ("avx2,bogus", "unknown target 'bogus'"), ("", "unknown target ''"), (",", "no empty ones"),
    ([], "no empty ones"), ("avx2,,avx512", "no empty ones"), ("avx2,avx2", "more than once"),
    (["avx2", "avx512", "avx2"], "more than once"), ("host,avx2", "'host' is not allowed"),
])
def test_bad_lists(spec, match):
    with pytest.raises(UsageError, match=match):
        softgen.compile("softmax", target=spec)


def test_bad_list_on_the_command_line():
    for spec, match in (("avx2,neon", "mixes architectures"), ("avx2,avx2", "more than once"),
                        ("avx2,nope", "unknown target 'nope'")):
        res = subprocess.run([sys.executable, "-m", "softgen", "emit", "--target", spec], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert res.returncode == 2 and match in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_tvm_refuses_a_target_list():
    with pytest.raises(UsageError, match="cannot build a library spanning ISAs.*not C"):
        softgen.compile("softmax", target="avx2,avx512", backend="tvm")


def test_structure(x86, single):
    members = [m.target.name for m in x86.members]
    assert members == ["avx512", "avx2", "scalar"]
    for m in x86.members:   # each ISA's kernel is what compile(target=isa) builds, renamed
        assert m.name == f"{x86.name}__{m.target.name}"
        want = single(m.target.name).renamed(m.name)
        assert m.sources() == want.sources()
    src = x86.sources()
    assert src[f"{x86.name}.map"].split() == ["{", "global:", f"{x86.name};", f"{x86.name}_supported;",
                                              f"{x86.name}_isa;", "local:", "*;", "};"]
    assert sum(f.endswith(".map") for f in src) == 1   # the members' own version scripts are dropped
    ft = x86.file_targets()   # every member's C file, compiled with its ISA's flags
    assert sorted(ft) == sorted(f for f in src if f.endswith(".c") and f != f"{x86.name}_isa.c")
    assert all(f.startswith(f"{x86.name}__{t.name}") for f, t in ft.items())
    assert f"{x86.name}_isa.c" not in ft   # the top unit: baseline flags only
    assert "SOFTGEN_ISA" in x86.source and "#include <immintrin.h>" not in x86.source
    text = x86.explain()
    assert "===== ISA avx512" in text and "===== ISA scalar" in text and "picked here" in text
    js = x86.explain(as_json=True)
    assert [i["isa"] for i in js["isas"]] == members and js["isas"][0]["explain"]["dispatch"] is not None


def test_picks_the_best_isa_here(x86, single):
    if not get_target("avx512").runnable:
        pytest.skip("host lacks AVX-512")
    assert x86.isa == "avx512"
    assert np.array_equal(x86(X), single("avx512")(X))


@pytest.mark.parametrize("isa", ["avx2", "scalar"])
def test_softgen_isa_caps_the_pick(x86, single, tmp_path, isa):
    info, y = _run_child(x86, tmp_path, isa)
    assert info == {"isa": isa, "supported": 1, "rc": 0}
    assert np.array_equal(y, single(isa)(X))   # bitwise the single-ISA kernel's result
    assert not np.array_equal(y, single("avx2" if isa == "scalar" else "scalar")(X))   # the check can fail


def test_softgen_isa_unknown_is_ignored_and_a_cap_below_every_isa_is_ecpu(x86, tmp_path):
    best = next(t.name for t in all_targets().values() if t.arch in ("x86_64", "any") and host_supports(t))
    info, _ = _run_child(x86, tmp_path, "neon")     # an ISA of another arch: no cap
    assert info["isa"] == best and info["rc"] == 0
    info, _ = _run_child(x86, tmp_path, "bogus")
    assert info["isa"] == best
    lst = softgen.compile("softmax", target="avx2,avx512", algorithm="online")
    info, _ = _run_child(lst, tmp_path, "scalar")   # below every ISA of the library
    assert info == {"isa": "none", "supported": 0, "rc": 8}


@pytest.fixture
def fake_isa(tmp_path, monkeypatch):
    """A target better than every shipped one that this CPU lacks (avx2 code, one missing feature)."""
    from softgen._data import data_dir
    feats = __import__("softgen.targets", fromlist=["host_features"]).host_features()
    missing = next((f for f in ("avx512vp2intersect", "amx-tile", "avx512fp16") if not feats.get(f)), None)
    if missing is None or not get_target("avx2").runnable:
        pytest.skip("needs an AVX2 host lacking one of avx512vp2intersect, amx-tile, avx512fp16")
    src = (data_dir("targets") / "avx2.toml").read_text().replace('name = "avx2"', 'name = "avxfuture"', 1)
    src = re.sub(r"(?m)^host_rank = \d+$", "host_rank = 900", src)
    src = re.sub(r'(?m)^requires = \[(.*)\]$', rf'requires = [\1, "{missing}"]', src)
    (tmp_path / "avxfuture.toml").write_text(src)
    monkeypatch.setenv(ENV_PATH, str(tmp_path))
    all_targets.cache_clear()
    yield "avxfuture"
    monkeypatch.delenv(ENV_PATH)
    all_targets.cache_clear()


def test_a_list_with_an_isa_this_cpu_lacks_runs_the_best_runnable(fake_isa):
    k = softgen.compile("softmax", target=[fake_isa, "avx2"], algorithm="two-pass")
    assert [m.target.name for m in k.members] == [fake_isa, "avx2"]
    assert not k.members[0].runnable and k.runnable
    assert k.isa == "avx2"
    want = softgen.compile("softmax", target="avx2", algorithm="two-pass")(X)
    assert np.array_equal(k(X), want)
    only = softgen.compile("softmax", target=[fake_isa], algorithm="two-pass")
    assert not only.runnable
    with pytest.raises(TargetNotSupportedError, match="none of which this CPU runs"):
        only(X)


def test_non_auto_and_matrix_ops(single):
    if not get_target("avx2").runnable:
        pytest.skip("needs an AVX2 host")
    k = softgen.compile("log_softmax", target="avx2,scalar", algorithm="online")
    assert k.algorithm == "online" and all(m.algorithm == "online" and not m.dispatcher for m in k.members)
    assert np.array_equal(k(X), softgen.compile("log_softmax", target="avx2", algorithm="online")(X))
    assert np.array_equal(softgen.log_softmax(X, target=["scalar", "avx2"], algorithm="online"), k(X))   # a list
    s = softgen.compile("sinkhorn", target="avx2,scalar")
    a = np.random.default_rng(1).standard_normal((2, 8, 8)).astype(np.float32)
    assert s.matrix and np.array_equal(s(a), softgen.compile("sinkhorn", target="avx2")(a))
    g = softgen.compile("gaussian_kernel", target="avx2,scalar")   # the general ABI: g(a, b)
    q, kk = a[..., :6].copy(), a[:, :5, :6].copy()
    assert np.array_equal(g(q, kk), softgen.compile("gaussian_kernel", target="avx2")(q, kk))


def test_aarch64_group_under_qemu(monkeypatch):
    neon = get_target("neon")
    skip_unless_emulated(neon)
    x = X[:3]
    k = softgen.compile("softmax", target="aarch64", algorithm="two-pass")
    assert not k.runnable and k.isa is None and k.target.arch == "aarch64"
    want_neon = softgen.compile("softmax", target="neon", algorithm="two-pass").run_emulated(x)
    # scalar C is bitwise the same on x86 and AArch64 (no contraction: -ffp-contract=off)
    want_scalar = softgen.compile("softmax", target="scalar", algorithm="two-pass")(x)
    assert not np.array_equal(want_neon, want_scalar)
    monkeypatch.delenv("SOFTGEN_ISA", raising=False)
    assert np.array_equal(k.run_emulated(x), want_neon)        # picks neon
    monkeypatch.setenv("SOFTGEN_ISA", "scalar")                 # each qemu run is a new process
    assert np.array_equal(k.run_emulated(x), want_scalar)


def test_export_and_link_from_c(x86, tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        (pytest.fail if STRICT else pytest.skip)("no C compiler")
    paths = softgen.compile("softmax", target="x86-64", algorithm="online").export(tmp_path / "out")
    name = paths["header"].stem
    header = paths["header"].read_text()
    assert f"const char *{name}_isa(void);" in header and "SOFTGEN_ISA" in header
    assert all(f"  {isa} (rank" in header for isa in ("avx512", "avx2", "scalar"))
    man = json.loads(paths["manifest"].read_text())
    assert [i["isa"] for i in man["isas"]] == ["avx512", "avx2", "scalar"]
    assert man["isa_query"]["symbol"] == f"{name}_isa" and "SOFTGEN_ISA" in man["isa_pick"]
    assert man["isas"][1]["compiler_flags"] == ["-mavx2", "-mfma"] and man["isas"][2]["compiler_flags"] == []
    assert man["accuracy"]["max_rel_error"] < 1e-5
    nm = subprocess.run(["nm", "-D", "--defined-only", str(paths["library"])], capture_output=True, text=True)
    if nm.returncode == 0:
        assert sorted(ln.split()[-1] for ln in nm.stdout.splitlines() if " T " in ln) == \
            sorted([name, f"{name}_supported", f"{name}_isa"])
    prog = tmp_path / "main.c"
    prog.write_text(f"""#include <stdio.h>
#include "{name}.h"
int main(void) {{
    float x[3] = {{1.0f, 2.0f, 3.0f}}, y[3];
    int rc = {name}(x, y, 1, 3, 3, 3);
    printf("%s %d %d %.6f\\n", {name}_isa(), {name}_supported(), rc, (double)(y[0] + y[1] + y[2]));
    return rc;
}}
""")
    exe = tmp_path / "main"
    subprocess.run([cc, "-o", str(exe), str(prog), f"-I{paths['header'].parent}", f"-L{paths['library'].parent}",
                    f"-l{name}", f"-Wl,-rpath,{paths['library'].parent}"], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k != "SOFTGEN_ISA"}
    for cap, want in ((None, x86.isa), ("scalar", "scalar")):
        if cap:
            env["SOFTGEN_ISA"] = cap
        out = subprocess.run([str(exe)], capture_output=True, text=True, env=env, timeout=60)
        isa, sup, rc, total = out.stdout.split()
        assert (isa, sup, rc) == (want, "1", "0") and abs(float(total) - 1) < 1e-6


def test_cli_targets_lists_groups():
    res = subprocess.run([sys.executable, "-m", "softgen", "targets"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines()}
    assert "group" in lines["x86-64"] and "avx512, avx2, scalar" in lines["x86-64"]
    assert "neon, scalar" in lines["aarch64"]
