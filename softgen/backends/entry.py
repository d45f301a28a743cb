"""Entry points, the same for every backend whose kernels are called through C: the template
view of a row kernel's entry (``abi``: its ``KernelABI`` spelled for ``entry.c.j2`` and
``kernel.c.j2``), and a matrix program's entry (``matrix_entry``: argument checks, scratch,
the per-matrix body that calls each phase in turn), which calls the phase functions through a
``CallingConvention``: the C backend's own static functions by default, TVM's compiled row
functions with ``backends.tvm.TVM_CALLS``. ``phase_args`` is the argument list both backends
give a phase function.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..abi import ATTENTION, KernelABI, err
from ..errors import BuildError
from ..ir import COLREDUCE_FIELDS, INDEX_MAX_N, MREDUCE_INIT, Program
from ..matrix import AttentionPhase, LoopPhase, MatMulPhase, PoolPhase, RowsPhase, SweepPhase
from ..render import flit


def matrix_abi(mp, name: str) -> dict:
    """The exported entry point of matrix program ``mp`` (``abi.KernelABI``), in the form
    ``abi`` gives a row program's (the kernel's header comment reads its signature)."""
    kabi = mp.abi()
    return {"sparse": False, "matrix": True, "max_n": kabi.max_n, **_entry_params(name, kabi.param_list())}


def row_outputs(p: Program) -> tuple[str, ...]:
    """The output pointers of a row function: y, or a selected output's indices and weights."""
    return ("idx", "w") if p.op(p.output()) == "output_selected" else ("y",)


def abi(p: Program, name: str) -> dict:
    """The exported entry point of program p, for the templates, the header and the manifest."""
    rps = "".join(f", const float *{rp}" for rp in p.row_params())
    if p.op(p.output()) == "output_selected":
        if rps:
            raise BuildError(f"{p.name}: a selected output takes no per-row parameters")
        k = p.attrs(p.args(p.output())[0])["k"]
        width = f"(n < {k} ? n : {k})"
        return {"sparse": True, "k": k, "outs": "int64_t *indices, float *weights", "ld": "ldo",
                "row_decl": "int64_t *idx, float *w",
                "nulls": ["indices", "weights"], "width": width, "elem": "sizeof(int64_t)",
                "row_outs": "indices + r * ldo, weights + r * ldo", "max_n": p.max_n(),
                **_entry_params(name, KernelABI.selected(k).param_list())}
    return {"sparse": False, "outs": "float *y", "ld": "ldy", "nulls": ["y"], "width": "n",
            "row_decl": "float *y",
            "elem": "sizeof(float)", "row_outs": "y + r * ldy", "max_n": p.max_n(),
            **_entry_params(name, KernelABI.row(p.row_params()).param_list())}


def _entry_params(name: str, params: str) -> dict:
    """An entry point's ``signature``, its parameter list ``params`` and ``args``, the names that
    pass them on (to ``<name>__checked``, see templates/supported.c.j2)."""
    args = ", ".join(p.split("*")[-1].split()[-1] for p in params.split(", "))
    return {"signature": f"int {name}({params})", "params": params, "args": args}


def phase_args(p: Program) -> list[tuple[str, str, tuple]]:
    """The arguments of a matrix phase's row function after (x, y), as (C type, name, source):
    n and m (its matrix's columns and rows), the row index, per-row vector elements (``rp_``),
    per-matrix scalars read (``ms_``), per-column vectors (``cv_``), per-row vector slots it emits
    into (``em_``), per-matrix scalars it reduces into (``mr_``), the current row of each matrix
    it reads element-wise (``mx_``). ``source`` tells the entry point what to pass (see
    ``_phase_call``); the TVM backend declares the same list."""
    read_s, wrote_s = p.mscalar_names()
    return ([("size_t", "n", ("dim", 1)), ("size_t", "m", ("dim", 0)), ("size_t", "row", ("row",))]
            + [("float", f"rp_{r}", ("rowvec", r)) for r in p.row_params()]
            + [("float", f"ms_{m}", ("ms", m)) for m in read_s]
            + [("float *", f"cv_{v}", ("vec", v)) for v in p.vector_names()[1]]
            + [("float *", f"em_{p.attrs(v)['name']}", ("emit", p.attrs(v)["name"])) for v in p.nodes("emit")]
            + [("float *", f"mr_{m}", ("mr", m)) for m in wrote_s]
            + [("const float *", f"mx_{nm}", ("matrow", nm)) for nm in p.matrices()])


def matrix_gemms(mp, name: str) -> dict[int, tuple[str, str, object]]:
    """Per matmul phase index: (gemm function name, layout, epilogue program or None). Plain
    contractions share one function per layout; each epilogue has its own."""
    out = {}
    for k, ph in enumerate(mp.leaves()):
        if isinstance(ph, MatMulPhase):
            mm = ph.mm
            fname = f"{name}__gemm_{mm.layout}" if mm.epilogue is None else f"{name}__gemm{k}_{mm.layout}_epi"
            out[k] = (fname, mm.layout, mm.epilogue)
    return out


@dataclass(frozen=True)
class CallingConvention:
    """How a matrix entry point (``matrix_entry``) calls its rows/cols phase functions. The
    default is the C backend's: its own static functions, which take ``phase_args``' C types.
    A backend whose phase functions are compiled elsewhere (``backends.tvm``: TVM's object file)
    describes their ABI here instead of the entry point knowing the backend."""
    size_type: str = "size_t"   # the C type of the n, m and row arguments
    pointer_cast: str = ""      # cast of the row pointers passed (e.g. "(float *)": no const)
    status: bool = False        # a trailing ``int32_t *status`` argument (its value is ignored)
    declare: bool = False       # the entry's translation unit declares the phase functions


C_CALLS = CallingConvention()


def _phase_call(mp, k: int, ph, name: str, cc: CallingConvention, scal: dict) -> list[str]:
    """The C statements of one phase in the entry point's per-matrix body."""
    if isinstance(ph, AttentionPhase):
        (LQ, D), (LK, _), DV = mp.shape(ph.q), mp.shape(ph.k), mp.shape(ph.v)[1]
        mats = [ph.q, ph.k, ph.v] + ([ph.mask] if ph.mask else []) + [ph.o]
        args = [f"dim_{LQ}", f"dim_{LK}", f"dim_{LK}", f"dim_{D}", f"dim_{DV}"] + \
            [a for nm in mats for a in (f"mat_{nm}", f"ld_{nm}") + (("1",) if nm == ph.mask else ())]
        args += ["NULL", "0", "0", f"dim_{LQ}", "NULL"]   # no lse; rows [0, lq); K transposed inside
        return [f"if ({name}__attn{k}({', '.join(args)}) != 0)   /* its kt cannot be allocated */",
                f"    return {err.ENOMEM};"]
    if isinstance(ph, PoolPhase):
        return _pool_lines(mp, ph)
    if isinstance(ph, MatMulPhase):
        lines = _gemm_lines(mp, k, ph.mm, name, scal)
        M, N = mp.shape(ph.mm.dst)
        if ph.mm.dst == mp.key_padding and ph.mm.layout == "nt":   # kv_lengths: the padded keys' scores -inf
            lines += [f"for (size_t i = 0; sg_nk < dim_{N} && i < dim_{M}; i++)",
                      f"    for (size_t j = sg_nk; j < dim_{N}; j++) mat_{ph.mm.dst}[i * ld_{ph.mm.dst} + j] = "
                      "-__builtin_inff();"]
        return lines
    p = ph.program
    R, C = mp.shape(ph.over)
    rows = isinstance(ph, RowsPhase)
    lines = []
    for v in p.nodes():
        if p.kind(v) == "colreduce":
            for f, init in COLREDUCE_FIELDS[p.op(v)]:
                lines.append(f"for (size_t j = 0; j < dim_{C}; j++) vec_{p.attrs(v)['name']}_{f}[j] = {flit(init)};")
        elif p.kind(v) == "mreduce":
            lines.append(f"sg_ms[{scal[p.attrs(v)['name']]}] = {flit(MREDUCE_INIT[p.op(v)])};")
    src = {"dim": lambda i: f"dim_{(R, C)[i]}", "row": lambda: "i" if rows else "0",
           "rowvec": lambda r: f"vec_{r}[i]", "ms": lambda m: f"sg_ms[{scal[m]}]",
           "vec": lambda v: f"vec_{v}", "emit": lambda e: f"vec_{e} + i", "mr": lambda m: f"&sg_ms[{scal[m]}]",
           "matrow": lambda nm: f"{cc.pointer_cast}(mat_{nm} + i * ld_{nm})"}
    args = [src[a[0]](*a[1:]) for _, _, a in phase_args(p)]
    if rows:
        x = f"mat_{ph.over} + i * ld_{ph.over}"
        y = f"mat_{ph.into} + i * ld_{ph.into}" if ph.writes_output() else "NULL"
    else:
        x = y = "NULL"
    if rows and cc.pointer_cast:
        x = f"{cc.pointer_cast}({x})"
    if cc.size_type != "size_t":
        args = [f"({cc.size_type})({a})" if t == "size_t" else a for (t, _, _), a in zip(phase_args(p), args)]
    if cc.status:
        call = f"{{ int32_t status = 0; {name}__phase{k}({x}, {y}, {', '.join(args)}, &status); }}"
    else:
        call = f"{name}__phase{k}({x}, {y}, {', '.join(args)});"
    if rows:
        return lines + [f"for (size_t i = 0; i < dim_{R}; i++)", f"    {call}"]
    return lines + [call]


def _gemm_lines(mp, k: int, mm, name: str, scal: dict) -> list[str]:
    """A matmul phase's GEMM call (its epilogue's arguments after the operands)."""
    M, N = mp.shape(mm.dst)
    K = mp.shape(mm.a)[0 if mm.layout == "tn" else 1]
    fname = matrix_gemms(mp, name)[k][0]
    head = [f"dim_{M}", f"dim_{N}", f"dim_{K}"]
    ops = [f"mat_{mm.a}", f"ld_{mm.a}", f"mat_{mm.b}", f"ld_{mm.b}"]
    dst = [f"mat_{mm.dst}", f"ld_{mm.dst}"]
    if mm.epilogue is None:
        args = head + [flit(mm.alpha)] + ops + [flit(mm.beta)] + dst
    else:
        p = mm.epilogue
        R, C = mp.shape(mm.dst)
        args = head + ops + dst + [f"dim_{R}", f"dim_{C}"] + [f"vec_{r}" for r in p.row_params()] \
            + [f"sg_ms[{scal[m]}]" for m in p.mscalar_names()[0]] + [f"vec_{v}" for v in p.vector_names()[1]] \
            + [a for nm in p.matrices() for a in (f"mat_{nm}", f"ld_{nm}")]
    return [f"{fname}({', '.join(args)});"]


def _pool_lines(mp, ph: PoolPhase) -> list[str]:
    """A pool phase (``matrix.PoolPhase``) in C: per row of dst, its segment of src's rows summed
    in row order in registers, 64 columns (four independent 16-float chains: each row read as one
    contiguous run), then 16, then single columns at a time, and divided by the count. The
    vectors are GCC/Clang vector types, which the compiler spells in the target's ISA (the entry
    has no ISA macros under TVM)."""
    (N, C), M = mp.shape(ph.src), mp.shape(ph.dst)[0]
    ld = f"ld_{ph.src}"

    def block(width: int) -> list[str]:
        nv = width // 16
        return [f"    for (; sg_j + {width} <= dim_{C}; sg_j += {width}) {{",
                f"        sg_v16 sg_a[{nv}] = {{{{0}}}}, sg_b;",
                "        for (size_t sg_r = 0; sg_r < sg_n; sg_r++)",
                f"            for (int sg_t = 0; sg_t < {nv}; sg_t++) {{",
                f"                __builtin_memcpy(&sg_b, sg_s + sg_r * {ld} + sg_j + 16 * sg_t, sizeof sg_b);",
                "                sg_a[sg_t] += sg_b;",
                "            }",
                f"        for (int sg_t = 0; sg_t < {nv}; sg_t++) {{",
                "            sg_a[sg_t] /= sg_cnt;",
                "            __builtin_memcpy(sg_d + sg_j + 16 * sg_t, &sg_a[sg_t], sizeof sg_b);",
                "        }",
                "    }"]
    return ([f"for (size_t sg_i = 0; sg_i < dim_{M}; sg_i++) {{",
             f"    const size_t sg_lo = sg_i * dim_{N} / dim_{M}, "
             f"sg_n = ((sg_i + 1) * dim_{N} + dim_{M} - 1) / dim_{M} - sg_lo;",
             "    const float sg_cnt = (float)sg_n;   /* 0 only for an empty src: NaN rows */",
             "    typedef float sg_v16 __attribute__((vector_size(64)));",
             f"    float *sg_d = mat_{ph.dst} + sg_i * ld_{ph.dst};",
             f"    const float *sg_s = mat_{ph.src} + sg_lo * {ld};",
             "    size_t sg_j = 0;"]
            + block(64) + block(16)
            + [f"    for (; sg_j < dim_{C}; sg_j++) {{",
               "        float sg_a = 0.0f;",
               "        for (size_t sg_r = 0; sg_r < sg_n; sg_r++)",
               f"            sg_a += sg_s[sg_r * {ld} + sg_j];",
               "        sg_d[sg_j] = sg_a / sg_cnt;",
               "    }",
               "}"])


def _matrix_body(mp, phases, name: str, cc: CallingConvention, scal: dict, index: list,
                 depth: int = 0) -> list[str]:
    out = []
    for ph in phases:
        if isinstance(ph, LoopPhase):
            it = f"it{depth}"
            out.append(f"for (size_t {it} = 0; {it} < {ph.count}; {it}++) {{")
            out += ["    " + ln for ln in _matrix_body(mp, ph.body, name, cc, scal, index, depth + 1)]
            for a, b in ph.swaps:
                out.append(f"    {{ float *sg_t = mat_{a}; mat_{a} = mat_{b}; mat_{b} = sg_t; }}")
            out.append("}")
            continue
        k = index[0]
        index[0] += 1
        out.append(f"/* phase {k}: {ph.describe()} */")
        out += _phase_call(mp, k, ph, name, cc, scal)
    return out


def _strided(mp, name: str):
    """(dims before the checks, after them, checks, row strides, per-matrix pointers) of a form
    that is not streaming on ``abi.ATTENTION``'s explicit strides (``MatrixProgram.strided``:
    the three-phase form, Sinkhorn, SOFT; given landmarks per query head): matrix t of the batch x hq loop is (b, h) = (t / hq,
    t % hq), its kv head h / (hq / hkv); each array's row stride is its ld (rows contiguous; a
    single row's stride is not read). kv_lengths with ``MatrixProgram.key_padding`` (the scores'
    columns past them -inf); lse with ``MatrixProgram.lse`` (copied from its per-row vector,
    ``lse_lines``); a uint8 keep-mask (mask="bool") as 0 / -inf floats in a scratch per matrix
    (``_keep_mask_lines``). Not taken: those otherwise, a mask whose key axis is strided; a tied SOFT
    program (no lk) needs lk == lq."""
    mask, lm = "mask" in mp.inputs, "landmarks" in mp.inputs
    arrays = ["q", "k", "v"] + (["mask"] if mask else []) + (["landmarks"] if lm else []) + ["o"]
    rows = {"q": "lq", "k": "lk", "v": "lk", "mask": "lq", "landmarks": "m", "o": "lq"}
    cols = {"q": "d", "k": "d", "v": "dv", "mask": "lk", "landmarks": "d", "o": "dv"}
    before = [(f"dim_{d}", d) for d in mp.dims if d not in mp.fixed_dims]
    before += [(f"dim_{d}", str(size)) for d, size in mp.fixed_dims.items()]
    strides = [f"{a}_s{s}" for a in arrays for s in ("bhrc" if a == "mask" else "bhr")]
    lse = mp.lse is not None
    checks = [("batch == 0 || hq == 0 || lq == 0 || " + ("(dv == 0 && lse == NULL)" if lse else "dv == 0"),
               err.OK.code, "o (and lse) empty: nothing to do" if lse else "o is empty: nothing to do"),
              ("q == NULL || " + ("(o == NULL && dv != 0)" if lse else "o == NULL") + " || (lk != 0 && (k == NULL || v == NULL" + (" || mask == NULL" if mask else "")
               + "))" + (" || landmarks == NULL" if lm else ""), err.ENULL.code, "an array is NULL while it is not empty"),
              (" || ".join(f"{x} < 0" for x in strides), err.ESTRIDE.code, "a negative stride"),
              ("(lq > 1 && ((size_t)q_sr < d || (size_t)o_sr < dv)) || (lk > 1 && ((size_t)k_sr < d || "
               "(size_t)v_sr < dv))" + (" || (lk > 1 && mask_sc != 1)" if mask else "")
               + (" || (m > 1 && (size_t)landmarks_sr < d)" if lm else ""), err.ESTRIDE.code,
               "a row stride below its row (rows must not overlap), or a strided mask row")]
    fits = [f"!{name}__fits_strided(batch, {a}_sb, {'hkv' if a in 'kv' else 'hq'}, {a}_sh, {rows[a]}, {a}_sr, "
            f"{cols[a]})" for a in arrays]
    if lse:
        checks.append(("lse != NULL && (lse_sb < 0 || lse_sh < 0 || lse_sr < 0)", err.ESTRIDE.code,
                       "a negative lse stride"))
        fits.append("(lse != NULL && !{name}__fits_strided(batch, lse_sb, hq, lse_sh, lq, lse_sr, 1))".format(name=name))
    pad = mp.key_padding is not None
    refused = [a for a, taken in (("kv_lengths", pad), ("lse", lse)) if not taken]
    checks += [("hkv == 0 || hq % hkv != 0" + (" || m == 0" if lm else "") + "".join(f" || {a} != NULL" for a in refused)
                + (" || lk != lq" if "lk" not in mp.dims else ""), err.EMATRIX.code,
                "hkv does not divide hq" + (", no landmark (m == 0)" if lm else "") + (f", or an argument this form does not take ({', '.join(refused)})"
                                            if refused else "")
                + ("; a tied kernel's lk is lq" if "lk" not in mp.dims else "")),
               (" || ".join(fits) + " || (hq != 0 && batch > SIZE_MAX / hq)", err.EOVERFLOW.code,
                "an array does not fit in the address space")]
    after = [("sg_count", "batch * hq")]
    keep8 = mask and mp.params.get("mask") == "bool"   # a uint8 keep-mask: as 0 / -inf into scratch (its ld there)
    lds = [(f"ld_{a}", f"{rows[a]} > 1 ? (size_t){a}_sr : {cols[a]}") for a in arrays if not (keep8 and a == "mask")]
    per_matrix = ["const size_t sg_bb = sg_b / hq, sg_h = sg_b % hq, sg_g = sg_h / (hq / hkv);"]
    if pad:   # batch b's key count: < 0 counts as 0, > lk as lk (the streaming form's rule)
        per_matrix.append("const size_t sg_nk = kv_lengths == NULL ? dim_lk : kv_lengths[sg_bb] < 0 ? 0 : "
                          "(size_t)kv_lengths[sg_bb] < dim_lk ? (size_t)kv_lengths[sg_bb] : dim_lk;")
    for a in arrays:
        head = "sg_g" if a in ("k", "v") else "sg_h"   # landmarks: per query head
        if keep8 and a == "mask":
            per_matrix += _keep_mask_lines()
            continue
        per_matrix.append(f"{'' if a == 'o' else 'const '}float *mat_{a} = {a} + (ptrdiff_t)sg_bb * {a}_sb + "
                          f"(ptrdiff_t){head} * {a}_sh;")
    return before, after, checks, lds, per_matrix


def _keep_mask_lines() -> list[str]:
    """The matrix's uint8 keep-mask (mask="bool", a form that is not streaming) as 0 / -inf floats
    in the scratch ``mat_mask``, once per matrix: the rows phase reads it as its float mask row
    (``ops.attention._masked``: -inf drops the key whatever its score), the same IR on every backend."""
    return ["if (dim_lk != 0) {   /* the keep-mask as 0 / -inf (nonzero keeps the key) */",
            "    const uint8_t *sg_keep = mask + (ptrdiff_t)sg_bb * mask_sb + (ptrdiff_t)sg_h * mask_sh;",
            "    for (size_t i = 0; i < dim_lq; i++) {   /* key axis contiguous (mask_sc 1: checked): vectorised */",
            "        const uint8_t *sg_kr = sg_keep + (ptrdiff_t)i * mask_sr;",
            "        float *sg_mr = mat_mask + i * ld_mask;",
            "        for (size_t j = 0; j < dim_lk; j++)",
            "            sg_mr[j] = sg_kr[j] ? 0.0f : -__builtin_inff();",
            "    }",
            "}"]


def matrix_entry(mp, name: str, cc: CallingConvention = C_CALLS) -> dict:
    """What ``templates/matrix_entry.c.j2`` needs: the signature and argument checks of the
    program's ABI (``abi.KernelABI``), the scratch (vectors and scratch matrices, one allocation),
    the per-matrix pointers and the per-matrix body (each phase's calls, loops), and, if the
    calling convention ``cc`` declares them, the phase functions' prototypes."""
    abi = mp.abi()
    if abi.kind == ATTENTION and mp.attention_tasks() is not None:   # one streaming attention phase: its
        # explicit-stride entry checks and splits
        return {"signature": abi.signature(name), "checks": [], "dims_before": [], "dims_after": [], "lds": [],
                "strided": False, "tasks": f"{name}__attn0__all({', '.join(n for _, n in abi.params())}, threads)"}
    mats = abi.matrices
    count = "batch"
    if abi.kind == ATTENTION:   # a form that is not streaming on the same explicit strides (MatrixProgram.strided)
        before, after, checks, lds, per_matrix = _strided(mp, name)
        count = "sg_count"
    elif abi.style == "unary":
        (_, (R, C)), = abi.inputs
        checks = [("rows == 0 || n == 0", err.OK.code, "there is nothing to do"),
                  ("x == NULL || y == NULL", err.ENULL.code, "a pointer is NULL while its matrix is not empty"),
                  ("ldx < n || ldy < n", err.ESTRIDE.code, "a row stride is below its row length"),
                  (f"!{name}__fits(1, rows, n, ldx) || !{name}__fits(1, rows, n, ldy)", err.EOVERFLOW.code,
                   "the rows do not fit in the address space"),
                  ("m == 0 || rows % m != 0", err.EMATRIX.code, "m is 0 or does not divide rows")]
        if abi.square:
            checks.append(("n != m", err.ESQUARE.code, "the matrices are not square (n != m)"))
        before = [(f"dim_{R}", "m")] + ([(f"dim_{C}", "n")] if C != R else [])
        after = [("batch", "rows / m")]
        lds = {"x": "ldx", "y": "ldy"}
    else:
        before, after = [(f"dim_{d}", d) for d in abi.dims], []
        before += [(f"dim_{d}", str(size)) for d, size in mp.fixed_dims.items()]   # build-time sizes
        outs = " && ".join(f"(dim_{r} == 0 || dim_{c} == 0)" for _, (r, c) in abi.outputs)
        checks = [(f"batch == 0 || ({outs})", err.OK.code, "every output is empty: nothing to do")]
        checks.append((" || ".join(f"(dim_{r} != 0 && dim_{c} != 0 && {nm} == NULL)" for nm, (r, c) in mats),
                       err.ENULL.code, "a pointer is NULL while its matrix is not empty"))
        checks.append((" || ".join(f"ld{nm} < dim_{c}" for nm, (_, c) in mats), err.ESTRIDE.code,
                       "a row stride is below its row length"))
        checks.append((" || ".join(f"!{name}__fits(batch, dim_{r}, dim_{c}, ld{nm})" for nm, (r, c) in mats),
                       err.EOVERFLOW.code, "a matrix does not fit in the address space"))
        lds = {nm: f"ld{nm}" for nm, _ in mats}
    if abi.kind != ATTENTION:
        per_matrix = [f"{'const ' if role == 'input' else ''}float *mat_{nm} = {nm} + sg_b * dim_{r} * {lds[nm]};"
                      for (nm, (r, _)), role in zip(mats, ["input"] * len(abi.inputs) + ["output"] * len(abi.outputs))]
        lds = [(f"ld_{nm}", lds[nm]) for nm, _ in mats]
    long_dims = [d for d in mp.index_dims() if d not in mp.fixed_dims]   # fixed ones: <= 2^24 by construction
    if long_dims:
        checks.append((" || ".join(f"dim_{d} > {INDEX_MAX_N}" for d in long_dims), err.ETOOLONG.code,
                       f"a row or column index exceeds {INDEX_MAX_N} (float32 indices)"))
    scratch = [(f"vec_{v}", f"sg_off_vec_{v}", "sg_ld", "1", f"dim_{d}") for v, d in mp.vector_dims().items()]
    scratch += [(f"mat_{nm}", f"sg_off_mat_{nm}", f"ld_{nm}", f"dim_{r}", f"dim_{c}")
                for nm, (r, c) in mp.scratch_mats.items()]
    if abi.kind == ATTENTION and abi.mask == "bool":   # the keep-mask's floats (_keep_mask_lines)
        scratch.append(("mat_mask", "sg_off_mat_mask", "ld_mask", "dim_lq", "dim_lk"))
    scal = {nm: i for i, nm in enumerate(mp.scalars())}
    body = _matrix_body(mp, mp.phases, name, cc, scal, [0])
    if abi.kind == ATTENTION and mp.lse is not None:   # the rows phase's per-row lse to the caller's strides
        body += ["if (lse != NULL)   /* the normalizer's per-row lse (MatrixProgram.lse) */",
                 f"    for (size_t i = 0; i < dim_lq; i++) lse[(ptrdiff_t)sg_bb * lse_sb + (ptrdiff_t)sg_h * lse_sh + "
                 f"(ptrdiff_t)i * lse_sr] = vec_{mp.lse}[i];"]
    protos = []
    if cc.declare:
        for k, ph in enumerate(mp.leaves()):
            if isinstance(ph, SweepPhase):
                a = ", ".join(f"{cc.size_type if t == 'size_t' else t}{'' if t.endswith('*') else ' '}{n}"
                              for t, n, _ in phase_args(ph.program))
                protos.append(f"void {name}__phase{k}(float *x, float *y, {a}"
                              f"{', int32_t *status' if cc.status else ''});")
    tasks = None
    # the sizes a task of the batch (matrix_entry.c.j2's <name>__matrices) reads from the call
    carried = list(dict.fromkeys([v for v, _ in before + after] + [ld for ld, _ in lds]
                                 + [x for _, off, ld, _, _ in scratch for x in (off, ld)]))
    return {"signature": abi.signature(name), "checks": checks, "tasks": tasks, "dims_before": before, "dims_after": after,
            "carried": carried, "count": count, "strided": abi.kind == ATTENTION, "lds": lds, "scratch": scratch,
            "nscalars": max(len(scal), 1), "per_matrix": per_matrix, "body": body,
            "prototypes": protos, "vectors": len(mp.vector_dims()), "scratch_mats": len(mp.scratch_mats)}


def entry_row_args(row_params: list[str]) -> str:
    """The per-row parameter arguments the entry point passes to a row function for row r."""
    return "".join(f", {name}[r]" for name in row_params)
