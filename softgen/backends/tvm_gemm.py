"""The GEMM contractions of ``softgen.backends.gemm`` as TensorIR, compiled by TVM's LLVM.

Same semantics and driver ABI as the C generator (``C = alpha * A @ B + beta * C`` for
``layout="nn"``, ``A @ B^T`` for ``"nt"``, ``A^T @ B`` for ``"tn"``; row-major, leading dimensions; ``beta == 0`` never
reads C), same schedule type (:class:`~softgen.backends.gemm.GemmSchedule`: MR, nv, KC, ku) and
per-target defaults. The TIR is hand-scheduled TVMScript text (the lean pipeline of
``tvm_adapter``): for every NR-column panel and KC-deep block, B is packed into a zero-padded
local (stack) panel, then MR-row tiles keep MR x NR accumulators in a local buffer (promoted to
registers) updated by ``llvm.fma`` in a ``T.vectorized(NR)`` loop under ``T.unroll(MR)``, with the
k loop unrolled ``ku`` times; leftover rows use a 1-row tile, the last partial panel a scalar
store loop. TVM emits ``void <name>(int64_t m, int64_t n, int64_t k, float alpha, float *a,
int64_t lda, float *b, int64_t ldb, float beta, float *c, int64_t ldc)`` with the plain C ABI
(``tvm_adapter``); :func:`sources` adds the checked ``<name>_entry`` wrapper of
``gemm.translation_unit``, so :class:`softgen.gemm_runtime.GemmLibrary` runs both backends alike.
Epilogues are C-backend only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .._version import __version__
from ..errors import BuildError, UsageError
from ..targets import Target, get_target
from . import tvm_adapter
from .gemm import LAYOUTS, GemmSchedule, TileShape, schedule_for, translation_unit

PARAMS = ("size_t m", "size_t n", "size_t k", "float alpha", "const float *a", "size_t lda",
          "const float *b", "size_t ldb", "float beta", "float *c", "size_t ldc")


@dataclass(frozen=True)
class TvmGemmCode(TileShape):
    """TVMScript of one contraction; attribute names match ``gemm.GemmCode``."""
    name: str
    layout: str
    target: Target
    schedule: GemmSchedule
    source: str                 # TVMScript
    epilogue: None = None
    params: tuple[str, ...] = PARAMS

    @property
    def c_text(self) -> str:
        """What the C translation unit needs: the TVM function's declaration (int64 sizes)."""
        return (f"void {self.name}__tvm(int64_t m, int64_t n, int64_t k, float alpha, const float *a, "
                f"int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);\n"
                f"static inline void {self.name}({', '.join(self.params)})\n"
                f"{{\n    {self.name}__tvm((int64_t)m, (int64_t)n, (int64_t)k, alpha, a, (int64_t)lda, b, "
                f"(int64_t)ldb, beta, c, (int64_t)ldc);\n}}\n")


def _fma(t: Target, a: str, b: str, c: str) -> str:
    if t.fma == "native":
        return f'T.call_llvm_pure_intrin("float32", "llvm.fma", {a}, {b}, {c})'
    # no FMA unit (scalar): exact product in double, one rounding, like the C scalar table
    return f'T.Cast("float32", T.Cast("float64", {a}) * T.Cast("float64", {b}) + T.Cast("float64", {c}))'


def _vec(n: int, var: str) -> str:
    return f"for {var} in T.vectorized(T.int64({n})):" if n > 1 else f"for {var} in range(T.int64(1)):"


def _tile(t: Target, s: GemmSchedule, R: int, row0: str, tag: str, layout: str = "nn") -> list[str]:
    """Statements of an R x NR tile at rows row0.., columns j0.. of the current panel."""
    NR, U = s.nr(t.lanes), s.ku

    def a_at(p: str) -> str:   # tn: row i of A^T is column i of A
        return f"A[(pc + {p}) * lda + {row0} + r]" if layout == "tn" else f"A[({row0} + r) * lda + pc + {p}]"
    out = [_vec(R * NR, "x"), "    ACC[x] = T.float32(0)"]

    def kstep(p: str, ind: str) -> list[str]:
        lines = [f"{ind}for r in T.unroll({R}):",
                 f"{ind}    av{tag}: T.let[T.float32] = {a_at(p)}",
                 f"{ind}    {_vec(NR, 'l')}",
                 f"{ind}        ACC[r * {NR} + l] = {_fma(t, f'av{tag}', f'BP[{p} * {NR} + l]', f'ACC[r * {NR} + l]')}"]
        return lines

    if U > 1:
        out += [f"for p0 in range(kc // {U}):", f"    for u in T.unroll({U}):"]
        out += kstep(f"(p0 * {U} + u)", "        ")
        out += [f"for p1 in range(kc % {U}):"] + kstep(f"(kc // {U} * {U} + p1)", "    ")
    else:
        out += ["for p in range(kc):"] + kstep("p", "    ")
    cij = f"C[({row0} + r) * ldc + j0 + l]"
    acc = f"alpha * ACC[r * {NR} + l]"
    out += ["if nr == T.int64(%d):" % NR,
            "    if bet == T.float32(0):",
            f"        for r in T.unroll({R}):", f"            {_vec(NR, 'l')}", f"                {cij} = {acc}",
            "    else:",
            f"        for r in T.unroll({R}):", f"            {_vec(NR, 'l')}",
            f"                {cij} = {_fma(t, 'bet', cij, acc)}",
            "else:",
            f"    for r in range({R}):", "        for l in range(nr):",
            "            if bet == T.float32(0):", f"                {cij} = {acc}",
            "            else:", f"                {cij} = {_fma(t, 'bet', cij, acc)}"]
    return out


def tir_source(t: Target, layout: str, s: GemmSchedule, name: str) -> str:
    NR, KC, MR = s.nr(t.lanes), s.kc, s.mr
    if layout != "nt":
        full = [_vec(NR, "l"), f"    BP[p * {NR} + l] = B[(pc + p) * ldb + j0 + l]"]
        part = ["for l in range(T.int64(%d)):" % NR,
                f"    BP[p * {NR} + l] = T.if_then_else(l < nr, B[(pc + p) * ldb + j0 + T.min(l, nr - 1)], T.float32(0))"]
        pack = ["for p in range(kc):"] + ["    " + ln for ln in (["if nr == T.int64(%d):" % NR]
                                                                    + ["    " + x for x in full] + ["else:"]
                                                                    + ["    " + x for x in part])]
    else:
        pack = [f"for l in range(T.int64({NR})):",
                "    for p in range(kc):",
                f"        BP[p * {NR} + l] = T.if_then_else(l < nr, B[(j0 + T.min(l, nr - 1)) * ldb + pc + p], T.float32(0))"]
    body = [f"for jp in range((n + {NR - 1}) // {NR}):",
            f"    j0: T.let[T.int64] = jp * {NR}",
            f"    nr: T.let[T.int64] = T.min(n - j0, T.int64({NR}))",
            f"    for pb in range((k + {KC - 1}) // {KC}):",
            f"        pc: T.let[T.int64] = pb * {KC}",
            f"        kc: T.let[T.int64] = T.min(k - pc, T.int64({KC}))",
            "        bet: T.let[T.float32] = T.Select(pb == T.int64(0), beta, T.float32(1))"]
    body += ["        " + ln for ln in pack]
    body += [f"        for it in range(m // {MR}):"]
    body += ["            " + ln for ln in _tile(t, s, MR, f"it * {MR}", "m", layout)]
    if MR > 1:
        body += [f"        for i1 in range(m // {MR} * {MR}, m):"]
        body += ["            " + ln for ln in _tile(t, s, 1, "i1", "1", layout)]
    # k == 0: C = beta * C (never read when beta == 0)
    zero_k = ["for i in range(m):", "    for j in range(n):",
              "        if beta == T.float32(0):", "            C[i * ldc + j] = T.float32(0)",
              "        else:", "            C[i * ldc + j] = beta * C[i * ldc + j]"]
    head = [
        "@T.prim_func",
        f'def {name}__tvm(m: T.int64, n: T.int64, k: T.int64, alpha: T.float32, a: T.handle("float32"), '
        'lda: T.int64, b: T.handle("float32"), ldb: T.int64, beta: T.float32, c: T.handle("float32"), '
        'ldc: T.int64):',
        f'    T.func_attr({{"global_symbol": "{name}__tvm", "tir.noalias": True}})',
        f'    A = T.decl_buffer(({"(m + k)" if layout == "tn" else "m"} * lda,), "float32", data=a)',
        '    B = T.decl_buffer(((n + k) * ldb,), "float32", data=b)',
        '    C = T.decl_buffer((m * ldc,), "float32", data=c)',
        f'    BP = T.alloc_buffer(({KC * NR},), "float32", scope="local")',
        f'    ACC = T.alloc_buffer(({MR * NR},), "float32", scope="local")',
        "    if k == T.int64(0):"] + ["        " + ln for ln in zero_k] + ["    else:"] + \
        ["        " + ln for ln in body]
    hdr = [f"# {name}: generated by softgen {__version__} (softgen/backends/tvm_gemm.py). Do not edit.",
           f"# {LAYOUTS[layout]}; target {t.name} ({t.lanes} lanes); tile {MR}x{NR}, KC {KC}, k unroll {s.ku}",
           "# fmt: off", ""]
    return "\n".join(hdr + head) + "\n"


def gemm(target: Target | str, layout: str = "nn", schedule: GemmSchedule | dict | None = None,
         name: str | None = None) -> TvmGemmCode:
    """TVMScript of a contraction (see the module docstring); arguments as ``gemm.gemm``."""
    t = target if isinstance(target, Target) else get_target(target)
    if layout not in LAYOUTS:
        raise UsageError(f"gemm layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    s = schedule_for(t, schedule)
    if s.kc * s.nr(t.lanes) > 16384:
        raise UsageError(f"TVM gemm panel kc*NR ({s.kc}*{s.nr(t.lanes)}) exceeds 16384 floats of stack")
    name = name or f"sg_tvmgemm_{layout}_{s.mr}x{s.nr(t.lanes)}__{t.name}"
    if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", name):
        raise UsageError(f"gemm function name must be a C identifier, got {name!r}")
    return TvmGemmCode(name, layout, t, s, tir_source(t, layout, s, name))


def sources(codes: list[TvmGemmCode]) -> dict:
    """Compiler/linker inputs of a library of TVM gemms: the C wrappers, the TVM object, and a
    version script exporting only the ``<name>_entry`` wrappers."""
    ok, why = tvm_adapter.available()
    if not ok:
        raise BuildError(f"the TVM backend is not available: {why}")
    tir = "\n\n".join(g.source for g in codes)
    return {"gemm.c": translation_unit(codes), "gemm_tvm.o": tvm_adapter.script_object(tir, codes[0].target.name),
            "exports.map": tvm_adapter.version_script([f"{g.name}_entry" for g in codes])}


def assembly(codes: list[TvmGemmCode]) -> str:
    return tvm_adapter.script_assembly("\n\n".join(g.source for g in codes), codes[0].target)
