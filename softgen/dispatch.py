"""The C of an ``algorithm="auto"`` dispatcher (issue 13): one library holds every variant the
dispatch table names, each compiled as its own translation unit under its own symbol prefix
(``<name>__<short>``), plus the dispatch translation unit rendered here (``dispatch.c.j2``): the
exported ``<name>`` and ``<name>_supported``, which pick a variant by the row length n.

Separate translation units, not one: each variant's source is byte for byte what
``compile(algorithm=...)`` generates for it under its own name (its checks, error codes, CPU
check, in-place rules and fallbacks come along unchanged, and ``static`` helpers of two variants
cannot clash), and a variant's code is checked by the same tests as the plain kernel. The
library's version script (``<name>.map``) exports only the dispatcher's two symbols; the
variants' entry points stay inside the library.
"""
from __future__ import annotations

from .abi import KernelABI
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
                    params: str, target: str, version: str) -> str:
    """The dispatch translation unit. ``variants``: per variant ``name``, ``algorithm``, ``traffic``
    (a one-line summary); ``table``'s entries name them by ``symbol``."""
    return env().get_template("dispatch.c.j2").render(
        name=name, version=version, op=op, params=params, target=target, table_lines=table.lines(),
        variants=[{**v, "signature": abi.signature(v["name"]), "params": abi.param_list()} for v in variants],
        entries=table.entries, signature=abi.signature(name), mt_signature=abi.mt_signature(name),
        args=", ".join(n for _, n in abi.params()))
