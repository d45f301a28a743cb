"""Register-blocked GEMM for the C backend: a reusable generator of C contraction functions.

Other generators (matrix programs: SOFT's Gaussian kernel and Newton-Schulz pseudo-inverse) call
this module to get the C text of one ``static`` function per contraction and paste it into their
own translation unit, after the target's virtual-ISA header (``render.isa_header``) and, if their
epilogue needs it, ``render.vmath()``.

Interface::

    g = gemm(target, layout="nn" | "nt", schedule=None, epilogue=None, name=None)  # -> GemmCode
    g.source      # C text: the packing helper, the MR x NR tile and the driver, all static
    g.name        # e.g. "sg_gemm_nt_5x16__avx2" (schedule defaults: target.gemm, its TOML)
    g.prototype   # the driver's C declaration
    translation_unit([g, ...])   # a complete C file (ISA header + gemms + exported wrappers),
                                 # for tests, benchmarks and AOT use

The driver computes, row-major with leading dimensions (elements) lda/ldb/ldc:

* ``layout="nn"``: ``C = alpha * A @ B + beta * C``;  A: m x k, B: k x n, C: m x n;
* ``layout="nt"``: ``C = alpha * A @ B^T + beta * C``; A: m x k, B: n x k (the Gram /
  squared-distance case ``a @ b.T``);
* ``layout="tn"``: ``C = alpha * A^T @ B + beta * C``; A: k x m, B: k x n (SOFT's tied
  ``K1^T V``: the tile broadcasts A's elements from a column, MR contiguous floats per k step).

``void name(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
const float *b, size_t ldb, float beta, float *c, size_t ldc)``. ``beta == 0`` never reads C, so
C may hold garbage or NaN. Requires lda >= k (m for tn), ldb >= n (nn, tn) or >= k (nt), ldc >= n; C must not
overlap A or B (the exported wrappers of :func:`translation_unit` check the strides).

Blocking (:class:`GemmSchedule`; per-target defaults: the ``[gemm]`` table of ``targets/*.toml``,
``Target.gemm``): the driver loops over
NC-column blocks of C and KC-deep blocks of k; each (KC x NC) block of B is packed into an aligned
stack buffer as NR-wide panels (zero padded: the tile always loads whole vectors), then every
MR-row strip of A is multiplied with every panel by the MR x NR tile, which keeps MR * nv
accumulator vectors in registers, loads nv vectors of the packed B row and broadcasts one A
element per row per k step. Whole tiles without an epilogue store straight from the registers;
edge tiles (and every tile with an epilogue) park the accumulators in a small aligned array and
run one rolled copy of the store code over the valid rows, masking the last partial vector
(V_STORE_PART/V_LOAD_PART). A row pointers past m are clamped to the last valid row (in bounds,
results discarded), so nothing outside the matrices is read or written. Later k blocks add to C
(beta = 1).

Epilogue (:class:`Epilogue`): instead of the alpha/beta update, the caller may transform each
output vector: ``C[i, j:j+L] = epi(acc, i, j)`` where acc is the vector of full dot products
(A @ B or A @ B^T, no alpha). The driver then has no alpha/beta parameters and takes the
epilogue's parameters after ldc. The tiles store the plain sums (earlier k blocks accumulate in
C); after the last k block the epilogue runs over each finished MR-row strip of the NC-column
block while it is in L1: contiguous columns, loop invariants hoisted, one streaming loop per row
(applying it per tile from parked accumulators was slower than a separate pass). tests/test_gemm.py's
``gaussian_epilogue`` is an example: the SOFT kernel ``S_ij = exp(-max(aa_i + bb_j - 2 G_ij, 0) * s)``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable

from .._version import __version__
from ..errors import UsageError
from ..render import env, isa_header, vmath
from ..schedule import GemmSchedule
from ..targets import Target, get_target

LAYOUTS = {"nn": "C = alpha * A @ B + beta * C (A: m x k, B: k x n)",
           "nt": "C = alpha * A @ B^T + beta * C (A: m x k, B: n x k)",
           "tn": "C = alpha * A^T @ B + beta * C (A: k x m, B: k x n)"}

def schedule_for(t: Target, schedule: GemmSchedule | dict | None = None) -> GemmSchedule:
    """The default schedule of ``t`` (``t.gemm``, from its TOML) with the given fields
    overridden, validated."""
    base = t.gemm
    if schedule is None:
        return base.validate(t)
    if isinstance(schedule, GemmSchedule):
        return schedule.validate(t)
    if not isinstance(schedule, dict):
        raise UsageError(f"gemm schedule must be a GemmSchedule or a dict, got {type(schedule).__name__}")
    unknown = set(schedule) - {"mr", "nv", "kc", "nc", "ku"}
    if unknown:
        raise UsageError(f"unknown gemm schedule fields {sorted(unknown)}")
    return replace(base, **schedule).validate(t)


def fit_rows(t: Target, s: GemmSchedule, rows: int) -> GemmSchedule:
    """``s`` with a tile height (MR) for contractions whose rows are a build-time count ``rows``
    (SOFT's m = 49 landmarks: MR = 8 computes 56 rows, 7 computes 49): among MR in
    [s.mr - 2, s.mr + 1] whose tile fits ``t``'s registers, the one computing the fewest padded
    rows (ceil(rows / MR) MR), if that is at least 5% fewer than the default's (a shorter tile
    reuses each B vector less); other fields unchanged."""
    def padded(mr: int) -> int:
        return -(-rows // mr) * mr
    fits = [mr for mr in range(max(1, s.mr - 2), min(16, s.mr + 1) + 1) if mr * s.nv + s.nv + 1 <= t.vector_registers]
    best = min(fits, key=lambda mr: (padded(mr), abs(mr - s.mr)), default=s.mr)
    return replace(s, mr=best) if padded(best) <= 0.95 * padded(s.mr) else s


# -- epilogues --------------------------------------------------------------------------------

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_PARAM = re.compile(r"^(const )?(float|double|int|size_t|int32_t|int64_t)( ?\*)? ?([a-z_][a-z0-9_]{0,63})$")
_FUNC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def load_vec(ptr: str, count: str | None) -> str:
    """C expression loading the vector at ``ptr``: whole, or its first ``count`` lanes (rest 0).
    For epilogues that read per-column data (``count`` is what the epilogue was given)."""
    return f"V_LOAD({ptr})" if count is None else f"V_LOAD_PART({ptr}, {count})"


@dataclass(frozen=True)
class Epilogue:
    """A per-output-vector transform replacing the alpha/beta update.

    ``name``: identifier appended to the function name. ``params``: extra C parameters of the
    driver, e.g. ``("const float *aa", "float s")`` (scalar or pointer of float/double/int/size_t/
    int32_t/int64_t). ``vector(acc, i, j, count)``: a C expression (virtual-ISA macros, vmath
    functions, the params) for the output vector of row ``i``, columns ``j .. j+lanes``, given
    the accumulator vector ``acc`` (the dot products); ``count`` is None for a whole vector,
    else a C expression for the number of valid lanes (load per-column data with
    :func:`load_vec`; lanes past count are discarded). ``needs_vmath``: the expression calls
    sg_exp & co. (the translation unit must include ``render.vmath()``)."""
    name: str
    params: tuple[str, ...]
    vector: Callable[[str, str, str, str | None], str] = field(compare=False)
    needs_vmath: bool = False

    def validate(self) -> "Epilogue":
        if not isinstance(self.name, str) or not _IDENT.match(self.name):
            raise UsageError(f"epilogue name must be a C identifier, got {self.name!r}")
        names = []
        for p in self.params:
            m = _PARAM.match(p) if isinstance(p, str) else None
            if not m:
                raise UsageError(f"epilogue parameter {p!r} is not a supported C declaration")
            names.append(m.group(4))
        reserved = {"m", "n", "k", "a", "b", "c", "lda", "ldb", "ldc", "alpha", "beta", "i", "j",
                    "mr", "nr", "kc", "p", "bp", "cp", "acc", "cnt", "final", "jc", "pc", "nc", "jr"}
        bad = [n for n in names if n in reserved or n.startswith(("sg_", "c_", "a_", "b_", "v_"))]
        if bad or len(set(names)) != len(names):
            raise UsageError(f"epilogue parameter names clash with the gemm's own: {bad or names}")
        if not callable(self.vector):
            raise UsageError("epilogue vector must be a callable (acc, i, j, count) -> C expression")
        return self

    @property
    def arg_names(self) -> list[str]:
        return [_PARAM.match(p).group(4) for p in self.params]

    def param_specs(self) -> list[dict]:
        """Per parameter: name, element C type (no const) and whether it is a pointer."""
        return [{"name": m.group(4), "ctype": m.group(2), "pointer": bool(m.group(3))}
                for m in (_PARAM.match(p) for p in self.params)]


# -- code generation --------------------------------------------------------------------------

class TileShape:
    """Tile geometry and argument names shared by the C and TVM gemm descriptions."""

    @property
    def mr(self) -> int:
        return self.schedule.mr

    @property
    def nr(self) -> int:
        return self.schedule.nr(self.target.lanes)

    @property
    def arg_names(self) -> list[str]:
        return [re.split(r"[ *]", p)[-1] for p in self.params]


@dataclass(frozen=True)
class GemmCode(TileShape):
    """Generated C of one contraction (see the module docstring)."""
    name: str
    layout: str
    target: Target
    schedule: GemmSchedule
    epilogue: Epilogue | None
    params: tuple[str, ...]     # the driver's C parameter declarations, in order
    source: str

    @property
    def prototype(self) -> str:
        return f"void {self.name}({', '.join(self.params)});"

    @property
    def c_text(self) -> str:
        """What a C translation unit includes for this gemm (the static functions)."""
        return self.source


def default_name(t: Target, layout: str, s: GemmSchedule, epilogue: Epilogue | None) -> str:
    epi = f"_{epilogue.name}" if epilogue else ""
    return f"sg_gemm_{layout}_{s.mr}x{s.nr(t.lanes)}{epi}__{t.name}"


def _tile(name: str, t: Target, s: GemmSchedule, layout: str = "nn", direct: bool = False) -> dict:
    """Statements of the MR x NR tile: row pointers, accumulators, k-step body, stores.
    ``direct``: B's k steps are ``bs`` elements apart (a packed panel's NR, or B's ldb in place)."""
    L, MR, NV = t.lanes, s.mr, s.nv
    # tn: row r of A^T is column r of A (stride lda per k step)
    nxt, stride = ("1", " * lda") if layout == "tn" else ("lda", "")
    arows = ["const float *a_0 = a;"] + [f"const float *a_{r} = mr > {r} ? a_{r - 1} + {nxt} : a_{r - 1};"
                                          for r in range(1, MR)]
    accs = [f"VEC c_{r}_{v} = V_ZERO();" for r in range(MR) for v in range(NV)]

    def step(u: int) -> list[str]:
        q = (f"(p + {u})" if stride else f"p + {u}") if u else "p"
        off = (f"{u} * bs + " if direct else f"{u * s.nr(L)} + ") if u else ""
        lines = [f"const VEC b_{u}_{v} = V_LOAD(bp + {off}{v * L});" for v in range(NV)]
        for r in range(MR):
            lines.append(f"const VEC a_{u}_{r} = V_SET1(a_{r}[{q}{stride}]);")
            lines += [f"c_{r}_{v} = V_FMA(a_{u}_{r}, b_{u}_{v}, c_{r}_{v});" for v in range(NV)]
        return lines

    main = [ln for u in range(s.ku) for ln in step(u)]
    park = [f"V_STORE(acc + {r * s.nr(L) + v * L}, c_{r}_{v});" for r in range(MR) for v in range(NV)]
    # whole tiles store straight from the registers (unrolled, no branches)
    direct = [f"{name}__store(cp + {r} * ldc + {v * L}, c_{r}_{v}, SG_LANES, alpha, beta);"
              for r in range(MR) for v in range(NV)]
    return {"arows": arows, "accs": accs, "main": main, "single": step(0) if s.ku > 1 else [],
            "park": park, "direct": direct}


def _store_exprs(epi: Epilogue | None) -> dict:
    """The C update of one output vector ``acc`` at ``cp``, whole (``cnt >= lanes``) or partial;
    and the epilogue of the finished sum at ``cp``, whole or the first ``cnt`` lanes."""
    out = {}
    for part, cnt in (("full", None), ("part", "cnt")):
        ld = load_vec("cp", cnt)
        upd = f"beta == 0.0f ? V_MUL(V_SET1(alpha), acc) : V_FMA(V_SET1(beta), {ld}, V_MUL(V_SET1(alpha), acc))"
        out[part] = {"partial": upd, "final": epi.vector(ld, "i", "j", cnt) if epi is not None else ""}
    return out


def transpose_stages(lanes: int) -> list[tuple[int, int, str, str]]:
    """A lanes x lanes transpose of rows r[0..lanes) in log2(lanes) stages of two-vector shuffles:
    per stage s (lanes/2 .. 1) and row i with bit s clear, (s, i, shuffle indices of the new r[i],
    of the new r[i + s]) for ``__builtin_shufflevector(r[i], r[i + s], ...)``: the s-blocks off
    the diagonal swap (element j of r[i] with bit s set comes from r[i + s][j - s])."""
    out, s = [], lanes // 2
    while s >= 1:
        lo = ", ".join(str(j if not j & s else lanes + j - s) for j in range(lanes))
        hi = ", ".join(str(j + s if not j & s else lanes + j) for j in range(lanes))
        out += [(s, i, lo, hi) for i in range(lanes) if not i & s]
        s //= 2
    return out


def gemm(target: Target | str, layout: str = "nn", schedule: GemmSchedule | dict | None = None,
         epilogue: Epilogue | None = None, name: str | None = None, transpose_pack: bool = False,
         direct_b: bool = False) -> GemmCode:
    """The C text of a contraction driver (and its static helpers) for ``target``; see the module
    docstring for the semantics. Everything that reaches the template is validated here.
    ``transpose_pack`` (nt, targets of 4+ lanes): whole B panels are packed by lanes x lanes
    register transposes (``transpose_stages``; GCC/Clang vector shuffles) instead of one scalar
    store per element: the same bits, about 7% of SOFT's time at L = 4096 (its K1^T GEMM packs
    q^T); off by default, so the other kernels keep their code. ``direct_b`` (nn, tn): when a
    column block holds whole NR panels (nc a multiple of NR), the tile reads B in place (its k
    steps ldb apart) instead of a packed copy: SOFT's K1^T V (B = v, L x 64) skips copying v
    through the pack buffer, the L3-bound half of that product; same sums, same bits; off by
    default."""
    t = target if isinstance(target, Target) else get_target(target)
    if layout not in LAYOUTS:
        raise UsageError(f"gemm layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    s = schedule_for(t, schedule)
    if epilogue is not None:
        if not isinstance(epilogue, Epilogue):
            raise UsageError(f"epilogue must be an Epilogue, got {type(epilogue).__name__}")
        epilogue.validate()
    name = name or default_name(t, layout, s, epilogue)
    if not isinstance(name, str) or not _FUNC.match(name):
        raise UsageError(f"gemm function name must be a C identifier, got {name!r}")
    b_shape = "n x k" if layout == "nt" else "k x n"
    params = ["size_t m", "size_t n", "size_t k"] + (["float alpha"] if epilogue is None else []) + \
        ["const float *a", "size_t lda", "const float *b", "size_t ldb"] + \
        (["float beta"] if epilogue is None else []) + ["float *c", "size_t ldc"] + \
        list(epilogue.params if epilogue else ())
    what = LAYOUTS[layout] if epilogue is None else \
        f"C = {epilogue.name}(A{'^T' if layout == 'tn' else ''} @ {'B^T' if layout == 'nt' else 'B'}) " \
        f"(A: {'k x m' if layout == 'tn' else 'm x k'}, B: {b_shape})"
    src = env().get_template("gemm.c.j2").render(
        name=name, version=__version__, t=t, s=s, layout=layout, what=what, nr=s.nr(t.lanes),
        lanes=t.lanes, params=", ".join(params), epi=epilogue, epi_params="".join(f", {p}" for p in epilogue.params) if epilogue else "",
        epi_args="".join(f", {n}" for n in epilogue.arg_names) if epilogue else "",
        store=_store_exprs(epilogue), tile=_tile(name, t, s, layout, direct_b and layout != "nt"),
        direct=direct_b and layout != "nt",
        tpack=transpose_stages(t.lanes) if transpose_pack and layout == "nt" and t.lanes >= 4 else None)
    return GemmCode(name, layout, t, s, epilogue, tuple(params), src)


def translation_unit(codes: list) -> str:
    """A complete C file: the ISA header of the (single) target, vmath if an epilogue needs it,
    the gemms (``GemmCode``, or ``tvm_gemm.TvmGemmCode``: its declaration and a C-typed
    forwarder), and one exported wrapper per gemm, ``int <name>_entry(<same parameters>)``, which
    returns a code of the ``abi.GEMM`` kind (``softgen/abi.py``): ENULL for a NULL matrix with
    nonzero sizes, ESTRIDE for a leading dimension below its row length, EOVERFLOW, ECPU, and OK
    after running the contraction."""
    if not codes:
        raise UsageError("translation_unit needs at least one gemm")
    t = codes[0].target
    if any(g.target.name != t.name for g in codes):
        raise UsageError("all gemms of one translation unit must have the same target")
    if len({g.name for g in codes}) != len(codes):
        raise UsageError("gemm names in one translation unit must be unique")
    return env().get_template("gemm_tu.c.j2").render(
        version=__version__, t=t, isa=isa_header(t), codes=codes,
        vmath=vmath(t=t) if any(g.epilogue and g.epilogue.needs_vmath for g in codes) else "")
