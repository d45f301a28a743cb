"""Instruction counts of the generated hot loops, read from the compiler's assembly."""
from __future__ import annotations

import re

_BEGIN = re.compile(r"softgen-mark (\S+) sweep (\d+) step (\d+) begin")


def _is_instruction(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith((".", "#", "//", "/*", "@")) and not s.endswith(":")


def hot_loops(asm: str) -> list[dict]:
    """One entry per marked main-loop body: function, sweep, elements per iteration, the
    instructions in the body (loop control excluded) and instructions per element."""
    loops, cur = [], None
    for line in asm.splitlines():
        m = _BEGIN.search(line)
        if m:
            cur = {"function": m.group(1), "sweep": int(m.group(2)), "step": int(m.group(3)),
                   "instructions": 0, "mnemonics": {}}
            continue
        if cur is not None and "softgen-mark end" in line:
            cur["per_element"] = cur["instructions"] / cur["step"]
            loops.append(cur)
            cur = None
            continue
        if cur is not None and _is_instruction(line):
            op = line.split()[0]
            cur["instructions"] += 1
            cur["mnemonics"][op] = cur["mnemonics"].get(op, 0) + 1
    seen, unique = set(), []
    for lp in loops:  # an inlined row function appears once per call site: keep one copy
        key = (lp["function"], lp["sweep"])
        if key not in seen:
            seen.add(key)
            unique.append(lp)
    return unique
