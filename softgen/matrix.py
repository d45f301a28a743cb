"""Matrix programs: ops over the last two axes of a batch of matrices (Sinkhorn, ...).

A matrix program is a sequence of *phases*, each an ordinary row program (``ir.Program``) that
the planner and backends already know how to sweep:

* a ``rows`` phase runs over every row of the matrix. Besides the row itself it can read per-row
  vectors (``param``: element i, for row i) and per-column vectors (``colvec``: element j), store
  a per-row scalar (``emit``), and accumulate per-column reductions across the rows
  (``colreduce_*``: state vectors updated element-wise, vectorised across contiguous columns, so
  column sums need no transpose). The last phase writes the output (``output``).
* a ``cols`` phase runs once over the per-column vectors (a "row" of length n), e.g. to turn a
  column reduction's state into a column potential (``colstore``).

Vectors are named; a phase reads what earlier phases wrote. Iteration (Sinkhorn's half-steps) is
unrolled at build time into phases. ``passes.lower_matrix`` fuses consecutive rows phases into one
row program, so their sweeps of a row run back to back while the row is still in cache.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ir import COLREDUCE_FIELDS, IRError, Program, Value


def written_by(p: Program) -> set[str]:
    """Names of the vectors a phase writes (emits, column stores, column reduction states)."""
    out = set()
    for v in p.nodes():
        name = p.attrs(v).get("name")
        if p.op(v) in ("emit", "colstore"):
            out.add(name)
        elif p.kind(v) == "colreduce":
            out |= {f"{name}_{f}" for f, _ in COLREDUCE_FIELDS[p.op(v)]}
    return out


@dataclass
class Phase:
    kind: str          # "rows" | "cols"
    program: Program


class MatrixProgram:
    """The phases of one matrix op, with its build-time parameters."""

    def __init__(self, name: str, params: dict | None = None):
        self.name = name
        self.params = dict(params or {})
        self.phases: list[Phase] = []
        self.notes: list[str] = []

    # -- construction -------------------------------------------------------------------------
    def rows(self) -> Value:
        """Start a rows phase; returns its input row."""
        p = Program(f"{self.name}.{len(self.phases)}", self.params, phase="rows")
        self.phases.append(Phase("rows", p))
        return p.input()

    def cols(self) -> Program:
        """Start a cols phase (over the per-column vectors); read them with ``colvec``."""
        p = Program(f"{self.name}.{len(self.phases)}", self.params, phase="cols")
        self.phases.append(Phase("cols", p))
        return p

    # -- queries ------------------------------------------------------------------------------
    def vectors(self) -> tuple[list[str], list[str]]:
        """(per-row vectors, per-column vectors) of the whole program, sorted."""
        rows, cols = set(), set()
        for ph in self.phases:
            r, c = ph.program.vector_names()
            rows |= set(r)
            cols |= set(c)
        return sorted(rows), sorted(cols)

    def validate(self) -> "MatrixProgram":
        if not self.phases or self.phases[-1].kind != "rows" or \
                not self.phases[-1].program.nodes("output"):
            raise IRError(f"{self.name}: the last phase must be a rows phase writing the output")
        written: set[str] = set()
        for k, ph in enumerate(self.phases):
            p = ph.program.validate()
            if p.nodes("output") and k != len(self.phases) - 1:
                raise IRError(f"{self.name}: only the last phase writes the output")
            if p.fallback is not None or p.nodes("guard"):
                raise IRError(f"{self.name}: phases cannot have guards")
            reads = {p.attrs(v)["name"] for v in p.nodes() if p.op(v) in ("param", "colvec")}
            missing = reads - written
            if missing:
                raise IRError(f"{self.name}: phase {k} reads {sorted(missing)} before any phase "
                              f"writes them")
            written |= written_by(p)
        return self

    def __str__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        out = [f"matrix program {self.name}({ps})"]
        for k, ph in enumerate(self.phases):
            out.append(f" phase {k}: {ph.kind}")
            out += ["  " + ln for ln in str(ph.program).splitlines()[1:]]
        return "\n".join(out)
