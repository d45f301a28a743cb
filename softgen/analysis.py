"""Backend-neutral analyses of lowered programs: memory traffic, contraction flops and the plan
text that kernels' header comments, ``Kernel.plan``, ``softgen explain`` and the benchmarks show.

A low layer: it reads the IR (``ir``, ``matrix``) and the sweep planner (``passes``), and imports
nothing from the backends, the runtime or the Python API. A row program's plan and traffic are
``passes.plan(p)`` (``passes.Plan``); a matrix program's are here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .matrix import AttentionPhase, LoopPhase, MatMulPhase, MatrixProgram, PoolPhase
from .passes import plan


def matrix_plan_lines(mp: MatrixProgram) -> list[str]:
    lines = ["matrix plan:"]
    for k, ph in enumerate(mp.leaves()):
        if isinstance(ph, MatMulPhase):
            lines.append(f"  phase {k} (matmul): {ph.mm}")
            if ph.mm.epilogue is not None:
                lines.append("    fused epilogue (per output vector): "
                             + ", ".join(f"%{v} {ph.mm.epilogue.op(v)}" for v in ph.mm.epilogue.topo()))
            continue
        if isinstance(ph, AttentionPhase):
            lines.append(f"  phase {k}: {ph.describe()}")
            lines.append(f"    (replaces the rows phase: {', '.join(ph.program.op(v) for v in ph.program.topo())})")
            continue
        if isinstance(ph, PoolPhase):
            lines.append(f"  phase {k}: {ph.describe()}")
            continue
        lines.append(f"  phase {k} ({ph.describe()}):")
        lines += ["    " + ln for ln in plan(ph.program).describe().splitlines()]
    loops = [ph for ph in mp.phases if isinstance(ph, LoopPhase)]
    for ph in loops:
        lines.append(f"  loop of {ph.count} iterations over the phases it holds"
                     + "".join(f", swapping {a} and {b}" for a, b in ph.swaps))
    return lines + ["rewrites:"] + ["  " + n for n in mp.notes]


def matrix_traffic(mp: MatrixProgram) -> dict:
    """Memory traffic of a lowered matrix program's rows phases per element of the matrix each
    sweeps: sweeps of rows phases that follow another sweep of the same row read it from cache,
    so only each phase's first read of its matrix and its writes count (and a fused epilogue's
    store). Contractions are counted in flops (``matrix_flops``), not here."""
    reads = writes = passes = exps = 0
    for ph, times in _counted(mp.phases):
        r, w, n, e = ph.traffic(plan)
        reads += times * r
        writes += times * w
        passes += times * n
        exps += times * e
    gemms = matrix_flops(mp)
    return {"passes": passes, "reads": reads, "writes": writes,
            "bytes_per_element": 4 * (reads + writes), "exp_per_element": exps,
            "summary": f"{reads}R + {writes}W" + (f" + GEMMs of {gemms} flops" if gemms else ""),
            **({"gemm_flops": gemms} if gemms else {})}


def _counted(phases):
    """(leaf phase, how many times it runs per matrix), loop bodies times their counts."""
    for ph in phases:
        yield from ph.counted()


def matrix_flops(mp: MatrixProgram, dims: dict | None = None):
    """Flops of the contractions per matrix: a formula in the dimensions (``"40*m*m*m"``), or
    its value for ``dims`` ({name: size})."""
    terms: dict[tuple, int] = {}
    for ph, times in _counted(mp.phases):
        key = ph.flops(mp.shape)
        if key is not None and times:
            terms[key] = terms.get(key, 0) + 2 * times
    if dims is not None:
        return sum(c * math.prod(dims[d] for d in key) for key, c in terms.items())
    return " + ".join(f"{c}*{'*'.join(key)}" for key, c in sorted(terms.items())) or ""


@dataclass
class MatrixPlan:
    """The plan of a lowered matrix program: its phases' sweeps and the traffic per element."""
    program: MatrixProgram

    def traffic(self) -> dict:
        return matrix_traffic(self.program)

    def __repr__(self) -> str:
        """One line for the plan, then one per phase's sweep (``describe`` has the details)."""
        t = self.traffic()
        out = [f"MatrixPlan({self.program.name}: {t['summary']} = {t['bytes_per_element']} B/element, "
               f"{t['passes']} sweeps)"]
        for k, ph in enumerate(self.program.leaves()):
            if isinstance(ph, MatMulPhase):
                out.append(f"  phase {k} (matmul): {ph.mm}")
            elif isinstance(ph, (AttentionPhase, PoolPhase)):
                out.append(f"  phase {k}: {ph.describe()}")
            else:
                out.append(f"  phase {k} ({ph.describe()}):")
                out += ["  " + ln for ln in repr(plan(ph.program)).splitlines()[1:]]
        return "\n".join(out)

    def describe(self) -> str:
        out = matrix_plan_lines(self.program)[1:]
        out = [ln[2:] if ln.startswith("  ") else ln for ln in out]
        t = self.traffic()
        out.append(f"matrix traffic: {t['summary']} = {t['bytes_per_element']} B/element from memory "
                   f"(later sweeps of a row in a fused phase read it from cache), {t['passes']} sweeps")
        return "\n".join(out)
