"""The row scalars between sweeps, lowered once for every backend: one dispatcher over the IR's
scalar ops (``lower_scalars``) calling a backend's ``ScalarEmitter``, which spells each kind of
statement (a C ``const float``, a TIR ``T.let``) and holds the table of the scalar map ops'
expressions (``SCALAR``: op -> format string over the arguments).

Adding a scalar op with its own statement (not an expression): a branch here and a method in
each backend's emitter; a scalar map op: a row of each backend's ``SCALAR`` table.

Layer 2: imports only ``errors``.
"""
from __future__ import annotations

from typing import Protocol

from ..errors import BuildError


class ScalarEmitter(Protocol):
    name: str                              # the backend, for errors
    SCALAR: dict[str, str]                 # map op -> expression over its arguments {0}, {1}...

    def literal(self, value: float) -> str: ...        # a float32 constant
    def define(self, v: int, expr: str) -> None: ...   # the row scalar of node v (``s<v>``) is expr
    def row_param(self, name: str) -> str: ...         # this row's element of per-row vector name
    def size(self, axis: str) -> str: ...              # the row length (cols) or row count (rows)
    def row_index(self) -> str: ...
    def mscalar(self, name: str) -> str: ...           # a per-matrix scalar's value
    def item(self, r: int, index: int) -> str: ...     # component index of pair reduction r
    def emit(self, name: str, a: str) -> None: ...     # store a into per-row vector name
    def mreduce_max(self, name: str, a: str) -> None: ...   # per-matrix scalar name max= a (NaN sticks)
    def mreduce_sum(self, name: str, a: str) -> None: ...   # per-matrix scalar name += a
    def guard(self, a: str, limit: float) -> None: ...      # unless |a| <= limit: the fallback program


def lower_scalars(p, nodes: list[int], e: ScalarEmitter) -> None:
    """The statements of the scalar nodes ``nodes`` of program ``p`` (``ir.Program``), in order."""
    for v in nodes:
        op, attrs = p.op(v), p.attrs(v)
        args = [e.literal(c) if (c := p.const_value(a)) is not None else f"s{a}" for a in p.args(v)]
        if op == "param":
            e.define(v, e.row_param(attrs["name"]))
        elif op == "size":
            e.define(v, e.size(attrs["axis"]))
        elif op == "row_index":
            e.define(v, e.row_index())
        elif op == "mscalar":
            e.define(v, e.mscalar(attrs["name"]))
        elif op == "item":
            e.define(v, e.item(p.args(v)[0], attrs["index"]))
        elif op == "emit":
            e.emit(attrs["name"], args[0])
        elif op == "mreduce_max":
            e.mreduce_max(attrs["name"], args[0])
        elif op == "mreduce_sum":
            e.mreduce_sum(attrs["name"], args[0])
        elif op == "guard":
            e.guard(args[0], attrs["limit"])
        elif op in e.SCALAR:
            e.define(v, e.SCALAR[op].format(*args))
        else:
            raise BuildError(f"the {e.name} backend has no scalar lowering for IR op {op!r}")
