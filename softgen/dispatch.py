"""The C of an ``algorithm="auto"`` dispatcher (issue 13): one library holds every variant the
dispatch table names, each compiled as its own translation unit under its own symbol prefix
(``<name>__<short>``), plus the dispatch translation unit rendered here (``dispatch.c.j2``): the
exported ``<name>`` and ``<name>_supported``, which pick a variant by the row length n (and first
by the rows, where the table has a tiling of n for calls of few rows and one for batches:
``costmodel.BATCH_ROWS``).

Separate translation units, not one: each variant's source is byte for byte what
``compile(algorithm=...)`` generates for it under its own name (its checks, error codes, CPU
check, in-place rules and fallbacks come along unchanged, and ``static`` helpers of two variants
cannot clash), and a variant's code is checked by the same tests as the plain kernel. The
library's version script (``<name>.map``) exports only the dispatcher's two symbols; the
variants' entry points stay inside the library.
"""
from __future__ import annotations

from .abi import ERRORS, KernelABI
from .costmodel import DispatchTable
from .render import env


def variant_name(name: str, short: str) -> str:
    """The (hidden) entry point of the variant of algorithm ``short`` (``passes.SHORT``)."""
    return f"{name}__{short}"


def version_script(name: str, threaded: bool = True) -> str:
    """A linker version script exporting only the dispatcher's entry points (``<name>`` and, for
    row kernels, ``<name>_mt`` with a thread count) and CPU check."""
    mt = f" {name}_mt;" if threaded else ""
    return f"{{\n  global: {name};{mt} {name}_supported;\n  local: *;\n}};\n"


def render_dispatch(name: str, abi: KernelABI, table: DispatchTable, variants: list[dict], *, op: str,
                    params: str, target: str, version: str, backend: str = "") -> str:
    """The dispatch translation unit. ``variants``: per variant ``name``, ``algorithm``, ``traffic``
    (a one-line summary); ``table``'s entries name them by ``symbol``. ``backend``: a line for the
    header comment when the variants are not plain C units (TVM: an object and its C wrapper each)."""
    return env().get_template("dispatch.c.j2").render(
        name=name, version=version, op=op, params=params, target=target, table_lines=table.lines(), backend=backend,
        variants=[{**v, "signature": abi.signature(v["name"]), "params": abi.param_list()} for v in variants],
        tables=table.tables(), signature=abi.signature(name), mt_signature=abi.mt_signature(name),
        args=", ".join(n for _, n in abi.params()))


# -- one library spanning ISAs (issue 13): a member per ISA, picked once at load ------------------
# The thread pool's extended entry (<name>_mt) is not forwarded yet: when it lands, add it to
# isa_version_script and to isa_dispatch.c.j2 (a switch like <name>'s).


def isa_member_name(name: str, isa: str) -> str:
    """The (hidden) entry point of ISA ``isa``'s kernel in a multi-ISA library ``name``."""
    return f"{name}__{isa}"


def isa_version_script(name: str, threaded: bool = True) -> str:
    """Exports only the library's entry point(s) (``<name>`` and, for row kernels, ``<name>_mt``
    with a thread count), its CPU check and its ISA query."""
    mt = f" {name}_mt;" if threaded else ""
    return f"{{\n  global: {name};{mt} {name}_supported; {name}_isa;\n  local: *;\n}};\n"


def render_isa_dispatch(name: str, abi: KernelABI, members: list[dict], known: list[dict], *, op: str,
                        params: str, algorithm: str, group: str, arch: str, version: str) -> str:
    """The top translation unit of a multi-ISA library. ``members``, best first: per ISA ``isa``
    (its target's name), ``symbol`` (its kernel's entry point), ``rank``, ``requires`` (text),
    ``lines`` (its dispatch table or algorithm, for the comment); ``known``: ``name`` and
    ``rank`` of every ISA of the architecture (what SOFTGEN_ISA may name)."""
    ecpu = next(e.code for e in ERRORS if e.suffix == "ECPU")
    return env().get_template("isa_dispatch.c.j2").render(
        name=name, version=version, op=op, params=params, algorithm=algorithm, group=group, arch=arch,
        members=[{**m, "signature": abi.signature(m["symbol"]), "mt_signature": abi.mt_signature(m["symbol"])}
                 for m in members], known=known, threaded=abi.threaded, mt_signature=abi.mt_signature(name),
        signature=abi.signature(name), args=", ".join(n for _, n in abi.params()), ecpu=ecpu)
