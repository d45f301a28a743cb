"""The Jinja environment of softgen's C templates and the template helpers every C-emitting
module shares: the C backend, the GEMM generator, the TVM backend's C wrapper, the emulator
drivers, the GEMM runtime's driver and the exported header.

A low layer of the code generators: it knows the templates and the targets' virtual ISA, nothing
of programs' lowering, the runtime or the Python API.
"""
from __future__ import annotations

import math
from functools import cache

import jinja2
import numpy as np

from ._data import data_dir
from .abi import err
from .numerics import constants
from .targets import OPTIONAL_ISA, STREAM_ISA, VIRTUAL_ISA, Target, cpu_check


@cache
def env() -> jinja2.Environment:
    """The one Jinja environment of ``templates/*.j2`` (strict: an undefined name is an error)."""
    e = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))), undefined=jinja2.StrictUndefined,
                           keep_trailing_newline=True, autoescape=False)
    e.globals["cpu_check"] = cpu_check   # templates/guard.h.j2
    e.globals["err"] = err   # the return codes (softgen/abi.py): {{ err.ENULL }} is 1
    e.globals["K"] = constants   # the vector math's constants: {{ K.LOG2E.c }} is 0x1.715476p+0f
    return e


def flit(v: float) -> str:
    """A C float literal that denotes exactly float32(v)."""
    f = float(np.float32(v))
    if math.isinf(f):
        return "INFINITY" if f > 0 else "-INFINITY"
    if f == int(f) and abs(f) < 2 ** 24:
        return f"{f:.1f}f"
    return f"{f.hex()}f"


def isa_header(t: Target, stream: bool = False) -> str:
    """The target's virtual-ISA header: its ``V_*`` macros spelled in its intrinsics (the
    non-temporal ``V_STREAM``/``V_FENCE`` only with ``stream``)."""
    specs = {**VIRTUAL_ISA, **OPTIONAL_ISA, **(STREAM_ISA if stream else {})}
    macros = [(name, specs[name], body) for name, body in t.isa.items() if name in specs]
    return env().get_template("isa.h.j2").render(t=t, macros=macros, stream=stream and t.streams)


def vmath(exp: str = "", t: Target | None = None, fold: bool = False) -> str:
    """The vector math (exp, log, log1p, extended-exponent helpers) over the virtual ISA; ``exp``:
    the variant of sg_exp / sg_exp_nonpos (``constants.EXP_VARIANTS``; the default spells p5);
    ``t``: the target, whose optional ``V_ROUND`` and native ``V_SCALE2`` (avx512) add the scaled
    sg_exp_shifted (``scaled_exp``) for the exps of x - max x (``passes.max_shifted``), in the
    target file's ``shifted_exp`` variant (avx512: the table exp t32) when ``exp`` is the default ""
    (a named variant, "p5c2" too, replaces it),
    and its ``[isa] TABLE32`` lookup for a table variant (``targets.TABLE_ISA``); ``fold``: with
    schedule lazymax's folded exp (sg_exp_fold, ``fold_exp``)."""
    xv = None if exp in ("", constants.EXP_DEFAULT) else constants.EXP_VARIANTS[exp]
    scaled = t is not None and scaled_exp(t)
    # the table variant in use: the schedule's, else the target's default for sg_exp_shifted
    tv = xv if xv is not None and xv.table else None
    if not exp and scaled and t.shifted_exp:
        tv = constants.EXP_VARIANTS[t.shifted_exp]
    return env().get_template("vmath.h.j2").render(
        xv=xv, tv=tv, reduce="sg_xreduce" if xv else "sg_reduce_ln2", poly="sg_xpoly" if xv else "sg_p5",
        scaled=scaled, table32=t is not None and t.isa.get("TABLE32"), fold=fold and fold_exp(t, exp))


def fold_exp(t: Target | None, exp: str = "") -> bool:
    """Whether ``t`` under schedule exp ``exp`` has sg_exp_fold (lazymax's exps of x - r from x): the
    scaled exp in the target's table variant (the default exp)."""
    return t is not None and not exp and scaled_exp(t) and bool(t.shifted_exp) \
        and bool(constants.EXP_VARIANTS[t.shifted_exp].table)


def scaled_exp(t: Target) -> bool:
    """Whether ``t`` has the scaled sg_exp_shifted: n = V_ROUND(x log2 e), e^x = V_SCALE2(1 + t p, n)."""
    return "ROUND" in t.isa and "SCALE2" in t.isa


def select_helpers(*programs, radix: bool = False) -> str:
    """Index and top-k helpers, for programs (``ir.Program``) that use them; ``radix``: with the
    radix select of top-k for any k."""
    ops = {p.op(v) for p in programs for v in p.g}
    return env().get_template("select.h.j2").render(radix=radix) if ops & {"index", "reduce_topk"} else ""
