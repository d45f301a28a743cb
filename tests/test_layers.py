"""softgen's import graph: no cycles, no function-local imports of softgen's own modules, and
every import goes down (or across) the layers of ``LAYERS`` (docs: the "layers" of issue 12).

Read statically with ``ast`` (nothing is imported): module-level imports, including those under a
top-level ``try``/``if``, and function-local ones; imports under ``if TYPE_CHECKING:`` never run
and are ignored. ``from . import x`` counts as an import of the module ``softgen.x`` when it is
one, else of the package. Importing ``a.b`` also runs ``a/__init__``, but that is not counted as
an edge (else every module would "import" the front door): a module that imports the package
itself (``from softgen import x``) is what this test calls an import of ``softgen``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "softgen"

# Bottom to top. A module may import modules of its own layer or of layers below it.
LAYERS = [
    # 0: no softgen imports but these
    {"softgen._version", "softgen._data", "softgen.errors", "softgen.values", "softgen.reference",
     "softgen.asmstats", "softgen._fastcall", "softgen.numerics", "softgen.numerics.constants"},
    # 1: the IR, the kernel ABI (error codes, signatures), targets, schedules, the sweep planner
    {"softgen.targets", "softgen.schedule", "softgen.ir", "softgen.abi", "softgen.matrix", "softgen.passes"},
    # 2: ops (IR definitions + float64 references; the registry in ops.base, one module per
    # family), backend-neutral analyses
    {"softgen.ops", "softgen.ops.base", "softgen.ops.softmax", "softgen.ops.lssa", "softgen.ops.sinkhorn",
     "softgen.ops.topk", "softgen.ops.soft", "softgen.ops.attention", "softgen.analysis", "softgen.machine",
     "softgen.costmodel", "softgen.numerics.reductions",
     "softgen.numerics.scalars"},
    # 3: C text shared by every C emitter: the Jinja environment, the names generated C declares
    {"softgen.render", "softgen.cnames", "softgen.dispatch"},
    # binding NumPy arrays to a kernel's entry point (imports only abi; below runtime and kernel);
    # the caller's arrays (torch, DLPack, axis=) to NumPy and back (imports only errors)
    {"softgen.binding", "softgen.arrays"},
    # 4: the toolchain: compiler, cache, loading shared objects; emulation (SIMDe, qemu)
    {"softgen.runtime"},
    {"softgen.emulator"},
    # the tuning database (SQLite): keyed by machine, compiler (runtime) and kernel-source version
    {"softgen.tunedb"},
    # 5: backends: lowered programs -> C / TensorIR
    {"softgen.backends", "softgen.backends.base", "softgen.backends.gemm", "softgen.backends.c",
     "softgen.backends.entry", "softgen.backends.attention", "softgen.backends.tvm_adapter", "softgen.backends.tvm_gemm", "softgen.backends.tvm_attention",
     "softgen.backends.tvm"},
    # 6: users of a backend's output: AOT export, the GEMM runtime
    {"softgen.export", "softgen.gemm_runtime"},
    # what algorithm="auto" resolves to (dispatch tables from the model or tuning records, tuned
    # GEMM tiles and attention blocks): reads tunedb and the backends' knobs, generates nothing
    {"softgen.autotable"},
    # 7: the Python API
    {"softgen.kernel"},
    # 7b: benchmarking compiled kernels against peers and the copy bandwidth (softgen bench)
    {"softgen.benchmark.deps", "softgen.benchmark.parse"},
    {"softgen.benchmark.timing", "softgen.benchmark.copykernel", "softgen.benchmark.peers"},
    {"softgen.benchmark.report", "softgen.benchmark.plotting"},
    {"softgen.benchmark.driver"},
    {"softgen.benchmark"},
    # 7c: the tuner (softgen tune): compiles candidates, times them with benchmark's machinery,
    # records winners in tunedb
    {"softgen.tune"},
    {"softgen.functional", "softgen.cli"},
    # 8: the front doors
    {"softgen", "softgen.__main__"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}
# The lower layers of issue 12's "Done when": they import nothing from these.
LOWER = {"softgen.ir", "softgen.passes", "softgen.ops", "softgen.analysis", "softgen.abi", "softgen.matrix",
         "softgen.reference", "softgen.schedule", "softgen.targets", "softgen.errors", "softgen.values"} \
    | {m for m in LAYERS[2] if m.startswith("softgen.ops.")}
UPPER_PREFIXES = ("softgen.backends", "softgen.runtime", "softgen.kernel", "softgen.export", "softgen.cli",
                  "softgen.emulator", "softgen.gemm_runtime", "softgen.functional")


def _modules() -> dict[str, Path | None]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("softgen",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    for path in sorted(ROOT.rglob("*.c")):   # C extensions (softgen/_fastcall.c): they import nothing
        out.setdefault(".".join(("softgen",) + path.relative_to(ROOT).with_suffix("").parts), None)
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path):
    """(imported softgen module, line, function-local?) for each import of a softgen module."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]

    def targets(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name.split(".")[0] == "softgen"]
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            base = ".".join(base + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != "softgen":
            return []
        return list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names))

    def walk(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    yield from walk(ast.Module(body=[sub], type_ignores=[]), local)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in targets(child):
                    yield t, child.lineno, local
            yield from walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(ast.parse(path.read_text(), str(path)), False)


def _graph() -> tuple[nx.DiGraph, list[tuple[str, str, int, bool]]]:
    g, edges = nx.DiGraph(), []
    for m, path in MODULES.items():
        g.add_node(m)
        for t, line, local in _imports(m, path) if path is not None else ():
            if t not in MODULES:
                raise AssertionError(f"{path}:{line} imports {t}, which is not a module of softgen")
            g.add_edge(m, t)
            edges.append((m, t, line, local))
    return g, edges


def test_every_module_has_a_layer():
    missing = sorted(set(MODULES) - set(LAYER))
    assert not missing, f"add these modules to tests/test_layers.py LAYERS: {missing}"


def test_no_import_cycles():
    g, _ = _graph()
    cycles = [c for c in nx.strongly_connected_components(g) if len(c) > 1] + \
        [{m} for m in g if g.has_edge(m, m)]
    if cycles:
        shown = []
        for comp in cycles:
            cyc = next(nx.simple_cycles(g.subgraph(comp)))
            shown.append(" -> ".join(cyc + [cyc[0]]))
        pytest.fail("import cycles among softgen's modules:\n  " + "\n  ".join(shown))


def test_no_function_local_imports_of_softgen():
    """Function-local imports are for optional heavy dependencies (TVM, torch) only: a softgen
    module imported inside a function hides the real flow (or a cycle)."""
    _, edges = _graph()
    local = [f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {t}" for m, t, line, loc in edges if loc]
    assert not local, "function-local imports of softgen modules:\n  " + "\n  ".join(local)


def test_imports_go_down_the_layers():
    _, edges = _graph()
    up = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: {m} (layer {LAYER[m]}) imports {t} (layer {LAYER[t]})"
          for m, t, line, _ in edges if m in LAYER and t in LAYER and LAYER[t] > LAYER[m]]
    assert not up, "upward imports:\n  " + "\n  ".join(up)


def test_lower_layers_import_nothing_from_backends_runtime_api():
    _, edges = _graph()
    bad = [f"{m} imports {t}" for m, t, _, _ in edges
           if m in LOWER and (t == "softgen" or t.startswith(UPPER_PREFIXES))]
    assert not bad, bad


def test_the_checker_sees_cycles_and_local_imports(tmp_path):
    """The checker itself: a relative import resolves to the module, a function-local one is
    flagged as local, a TYPE_CHECKING one is skipped."""
    src = ("from typing import TYPE_CHECKING\nfrom . import ir\nfrom .backends import c\n"
           "if TYPE_CHECKING:\n    from .kernel import Kernel\n"
           "def f():\n    from .export import export\n")
    p = tmp_path / "probe.py"
    p.write_text(src)
    got = sorted(_imports("softgen.probe", p))
    assert got == [("softgen.backends.c", 3, False), ("softgen.export", 7, True), ("softgen.ir", 2, False)]


def test_every_package_is_shipped():
    """``pip install .`` (not editable) installs only the packages pyproject.toml lists: a new
    subpackage missing there breaks the README's first command while editable installs work."""
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        import tomli as tomllib
    repo = ROOT.parent
    listed = set(tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(repo).parts) for p in ROOT.rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
