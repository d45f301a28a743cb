"""The backend registry (``softgen.backends``): a third backend, added through the public registry
alone (no edit of softgen), compiles, runs, emits and exports kernels; unknown names are usage
errors naming the registered ones; registering the built-ins does not import TVM."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import check

import softgen
from softgen import cli
from softgen.backends import BACKENDS, Artifact, Backend, get_backend, names, register, unregister
from softgen.ops import get_op

BANNER = "/* toy backend: the C backend's kernel under a banner */\n"


class Toy(Backend):
    """The C backend's source under a banner, and one capability different from C's: matrix
    programs keep their element-wise phases (no GEMM epilogues)."""

    name = "toy"
    description = "C under a banner"
    suffix = "_toy"
    gemm_epilogues = False

    def generate(self, program, target, schedule, name, *, op, algorithm, params) -> Artifact:
        c = get_backend("c").generate(program, target, schedule, name, op=op, algorithm=algorithm,
                                      params=params)
        return Artifact(self, name, target, BANNER + c.source)

    def generate_matrix(self, program, target, schedule, name, *, op, params) -> Artifact:
        c = get_backend("c").generate_matrix(program, target, schedule, name, op=op, params=params)
        return Artifact(self, name, target, BANNER + c.source)


@pytest.fixture
def toy():
    backend = register(Toy())
    try:
        yield backend
    finally:
        unregister("toy")
    assert "toy" not in names()


def test_the_builtin_backends_are_registered_with_their_capabilities():
    assert names()[:2] == ("c", "tvm")
    c, tvm = get_backend("c"), get_backend("tvm")
    assert (c.suffix, c.gemm_epilogues, c.simde_emulable, c.c_source) == ("", True, True, True)
    assert (tvm.suffix, tvm.gemm_epilogues, tvm.simde_emulable, tvm.c_source) == ("_tvm", False, False, False)
    assert BACKENDS["c"] is c


def test_a_third_backend_compiles_and_runs_softmax(toy, rng):
    k = softgen.compile("softmax", algorithm="two-pass", target="host", backend="toy")
    ref = softgen.compile("softmax", algorithm="two-pass", target="host")
    assert k.backend == "toy" and k.artifact.backend is toy
    assert k.name == ref.name + "_toy"
    assert k.source == BANNER + ref.source.replace(ref.name, k.name)
    assert k.sources() == {"kernel.c": k.source} and k.wrapper == ""
    x = rng.standard_normal((5, 1000)).astype(np.float32) * 10
    y = k(x)
    check(k, x, y, "toy backend")
    assert np.array_equal(y, ref(x))
    # the functional API takes it too (algorithm="auto": a dispatcher of toy variants, the C's; its
    # table comes from the knobs the toy backend declares, so compare with C's kernel of its entry)
    kt = softgen.compile("softmax", target="host", backend="toy")
    e = next(e for e in kt.dispatch.entries if e.n_min <= x.shape[1] <= (e.n_max or x.shape[1]))
    same = softgen.compile("softmax", target="host", algorithm=e.algorithm, schedule=e.schedule)
    assert kt.backend == "toy" and np.array_equal(softgen.softmax(x, backend="toy"), same(x))
    assert k.renamed("toy_softmax").backend == "toy"


def test_a_third_backend_compiles_a_matrix_op_with_its_own_capabilities(toy, rng):
    k = softgen.compile("gaussian_kernel", target="host", backend="toy")
    c = softgen.compile("gaussian_kernel", target="host")
    # gemm_epilogues=False: the element-wise phases stay phases (c fuses them into the GEMM)
    assert len(k.program.leaves()) > len(c.program.leaves())
    assert k.source.startswith(BANNER) and k.name.endswith("_toy")
    op = get_op("gaussian_kernel")
    for x in op.samples(rng, k.params)[:3]:
        np.testing.assert_allclose(k(*x) if k.abi.style == "general" else k(x[0]),
                                   c(*x) if c.abi.style == "general" else c(x[0]), rtol=1e-5, atol=1e-6)


def test_the_cli_and_export_take_a_third_backend(toy, tmp_path, capsys):
    assert cli.main(["emit", "--backend", "toy", "--target", "scalar"]) == 0
    assert capsys.readouterr().out.startswith(BANNER)
    assert cli.main(["emit", "--backend", "toy", "--tir"]) == 2   # its source is C: no wrapper
    assert "need --backend tvm" in capsys.readouterr().err
    k = softgen.compile("softmax", algorithm="online", target="scalar", backend="toy", name="toy_sm")
    paths = k.export(tmp_path)
    assert sorted(paths) == ["cmake", "cmake_version", "header", "library", "manifest", "pkgconfig", "source"]
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["backend"] == "toy" and manifest["files"]["source"] == "toy_sm.c"
    assert paths["source"].read_text() == k.source


def test_the_cli_help_lists_the_registered_backends(toy, capsys):
    with pytest.raises(SystemExit):
        cli.main(["emit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--backend {c,tvm,toy}" in out and "c (Jinja-C templates, default) | tvm (TensorIR + LLVM) | toy (C under a banner)" in out


def test_unknown_backends_are_usage_errors_naming_the_known_ones():
    with pytest.raises(softgen.UsageError, match=r"unknown backend 'cuda'; available: c, tvm"):
        softgen.compile("softmax", backend="cuda")
    with pytest.raises(softgen.UsageError, match="available: c, tvm"):
        get_backend("toy")


def test_registering_checks_the_backend(toy):
    with pytest.raises(ValueError, match="already registered"):
        register(Toy())
    assert register(Toy(), replace=True) is get_backend("toy")
    with pytest.raises(TypeError):
        register(object())

    class Nameless(Toy):
        name = ""
    with pytest.raises(ValueError, match="identifier"):
        register(Nameless())


def test_registering_tvm_does_not_import_tvm():
    code = "import softgen, softgen.backends, sys; print('tvm' in sys.modules, softgen.backends.names())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False ('c', 'tvm')"
