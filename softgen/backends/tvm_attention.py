"""The streaming attention phase (``matrix.AttentionPhase``, from ``passes.stream_attention``) as
TensorIR, compiled by TVM's LLVM: the TVM backend's counterpart of ``backends/attention.py``.

``phase_function`` is the TVMScript of ``void <fname>__tvm(lq, lk, klen, d, dv, q, ldq, k, ldk, v,
ldv[, mask, msr, msc, has_mask], o, ldo, lse, lsr, has_lse, r0, r1)`` (int64 sizes, plain C ABI):
query rows [r0, r1) of one (batch, head) matrix, in blocks of br rows, each swept over blocks of
bc keys with per-row state in local buffers (softmax: running max m and sum l; stablemax: l) and
the br x dv accumulator in o's rows (rescaled by alpha = e^(m - m') as each block's P V is added,
vectorised over dv in chunks held in a local buffer). A score is a dot product over d vectorised
in lanes; the exp is the TVM emitter's (``backends.tvm.Emit.exp_nonpos``, passed in, the constants of
``numerics/constants.py``), the log of lse its ``Emit.log``: no second polynomial. Blocks entirely
above the bottom-right causal diagonal and keys >= klen (kv_lengths) are never visited; the mask
(uint8 keep-mask or float32 additive, strided) and the diagonal are applied as the scores are
formed. The C side (``attention.c.j2`` with ``tvm=True``) keeps the explicit-stride entry: its
checks, heads, GQA, kv_lengths and the (batch, head, query chunk) tasks of the thread pool, the
same as the C backend's, so both backends' results do not depend on the thread count.
"""
from __future__ import annotations

from ..errors import BuildError
from ..matrix import AttentionPhase
from ..targets import Target

# the normalizers lowered here (softmax: online rescale; stablemax: none); the C backend streams
# passes.STREAMING_NORMALIZERS, the others take the three-phase form on TVM
NORMALIZERS = ("softmax", "stablemax")

def _vec(n: int, var: str) -> str:
    return f"for {var} in T.vectorized(T.int64({n})):" if n > 1 else f"for {var} in range(T.int64(1)):"


def _fma(t: Target, a: str, b: str, c: str) -> str:
    if t.fma == "native":
        return f'T.call_llvm_pure_intrin("float32", "llvm.fma", {a}, {b}, {c})'
    # no FMA unit (scalar): exact product in double, one rounding, like the C scalar table
    return f'T.Cast("float32", T.Cast("float64", {a}) * T.Cast("float64", {b}) + T.Cast("float64", {c}))'


def _emit(Emit, t: Target, counter: list[int], build) -> tuple[list[str], str]:
    """(the let statements, the result) of ``build(e)`` on a fresh ``Emit``."""
    e = Emit(counter, t.fma == "native")
    r = build(e)
    return e.lines, r


def _tree(terms: list[str]) -> str:
    """The sum of ``terms``, pairwise (depth log2 n rather than a chain of n)."""
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2])] + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def _indent(lines: list[str], ind: str) -> list[str]:
    return [ind + ln for ln in lines]


def phase_function(ph: AttentionPhase, fname: str, t: Target, Emit, f32) -> str:
    """TVMScript of ``<fname>__tvm`` (see the module docstring). ``Emit``, ``f32``: the TVM
    emitter and its float32 literal (``backends.tvm``, which imports this module)."""
    NEG_INF = f32(float("-inf"))
    if ph.normalizer not in NORMALIZERS:
        raise BuildError(f"the TVM backend streams attention with {', '.join(NORMALIZERS)}, "
                         f"not {ph.normalizer!r}")
    W, BR, BC = t.lanes, ph.br, ph.bc
    BCP = -(-BC // W) * W          # a score row: bc keys padded to whole vectors with -inf
    CW = 4 * W if W > 1 else 4     # the accumulator chunk of dv held in a local buffer
    softmax = ph.normalizer == "softmax"
    counter = [0]
    mtype = "uint8" if ph.mask_kind == "bool" else "float32"
    mask_args = (f'mask: T.handle("{mtype}"), msr: T.int64, msc: T.int64, has_mask: T.int64, '
                 if ph.mask else "")
    head = [
        "@T.prim_func",
        f'def {fname}__tvm(lq: T.int64, lk: T.int64, klen: T.int64, d: T.int64, dv: T.int64, '
        'q: T.handle("float32"), ldq: T.int64, k: T.handle("float32"), ldk: T.int64, v: T.handle("float32"), '
        f'ldv: T.int64, {mask_args}o: T.handle("float32"), ldo: T.int64, lse: T.handle("float32"), lsr: T.int64, '
        'has_lse: T.int64, r0: T.int64, r1: T.int64):',
        f'    T.func_attr({{"global_symbol": "{fname}__tvm", "tir.noalias": True}})',
        '    Q = T.decl_buffer((lq * ldq + d,), "float32", data=q)',
        '    K = T.decl_buffer((lk * ldk + d,), "float32", data=k)',
        '    V = T.decl_buffer((lk * ldv + dv,), "float32", data=v)',
        '    O = T.decl_buffer((lq * ldo + dv,), "float32", data=o)',
        '    LSE = T.decl_buffer((lq * lsr + 1,), "float32", data=lse)',
    ]
    if ph.mask:
        head.append(f'    MK = T.decl_buffer((lq * msr + lk * msc + 1,), "{mtype}", data=mask)')
    head += [
        f'    S = T.alloc_buffer(({BR * BCP},), "float32", scope="local")',
        f'    M = T.alloc_buffer(({BR},), "float32", scope="local")',
        f'    L = T.alloc_buffer(({BR},), "float32", scope="local")',
        f'    AL = T.alloc_buffer(({BR},), "float32", scope="local")',
        f'    LIVE = T.alloc_buffer(({BR},), "int32", scope="local")',
        f'    PS = T.alloc_buffer(({4 * W},), "float32", scope="local")',
        '    SC = T.alloc_buffer((1,), "float32", scope="local")',
        f'    ACC = T.alloc_buffer(({4 * CW},), "float32", scope="local")',
    ]
    body = [f"for ib in range((r1 - r0 + T.int64({BR - 1})) // T.int64({BR})):",
            f"    i0: T.let[T.int64] = r0 + ib * T.int64({BR})",
            f"    br: T.let[T.int64] = T.min(r1 - i0, T.int64({BR}))"]
    # keys any row of the block may see: j <= i + lk - lq (bottom-right causal), j < klen
    kend = "T.min(T.max(i0 + br + lk - lq, T.int64(0)), lk)" if ph.causal else "lk"
    body += [f"    kend: T.let[T.int64] = T.min({kend}, klen)",
             "    for r in range(br):",
             "        for c in range(dv):",
             "            O[(i0 + r) * ldo + c] = T.float32(0)",
             f"        M[r] = {NEG_INF if softmax else f32(0.0)}",
             "        L[r] = T.float32(0)"]
    blk = [f"for jb in range((kend + T.int64({BC - 1})) // T.int64({BC})):",
           f"    j0: T.let[T.int64] = jb * T.int64({BC})",
           f"    bc: T.let[T.int64] = T.min(kend - j0, T.int64({BC}))"]
    # scores: S = scale Q_blk K_blk^T (dot products over d in lanes), the mask, the diagonal, -inf padding
    # raw dot products over d's whole vectors, 4 keys at a time (4 independent FMA chains sharing
    # each q load), lanes summed pairwise; then d's tail, the scale, the mask and the diagonal
    KG = 4
    dot = _fma(t, f"Q[qo + t0 * T.int64({W}) + l]", f"K[(j0 + c0 + u) * ldk + t0 * T.int64({W}) + l]",
               f"PS[u * T.int64({W}) + l]")
    score = ["for r in range(br):",
             "    qo: T.let[T.int64] = (i0 + r) * ldq",
             f"    for c in range(T.int64({BCP})):",
             f"        S[r * T.int64({BCP}) + c] = {NEG_INF}"]
    for keys, start, count in ((KG, f"cg * T.int64({KG})", f"bc // T.int64({KG})"), (1, f"bc // T.int64({KG}) * T.int64({KG}) + cg", f"bc % T.int64({KG})")):
        score += [f"    for cg in range({count}):",
                  f"        c0: T.let[T.int64] = {start}",
                  f"        for u in T.unroll(T.int64({keys})):",
                  "            " + _vec(W, "l"),
                  f"                PS[u * T.int64({W}) + l] = T.float32(0)",
                  f"        for t0 in range(d // T.int64({W})):",
                  f"            for u in T.unroll(T.int64({keys})):",
                  "                " + _vec(W, "l"),
                  f"                    PS[u * T.int64({W}) + l] = {dot}",
                  f"        for u in T.unroll(T.int64({keys})):",
                  f"            S[r * T.int64({BCP}) + c0 + u] = {_tree([f'PS[u * T.int64({W}) + T.int64({i})]' for i in range(W)])}"]
    score += ["    for c in range(bc):",
              f"        SC[0] = S[r * T.int64({BCP}) + c]",
              f"        for tt in range(d // T.int64({W}) * T.int64({W}), d):",
              f"            SC[0] = {_fma(t, 'Q[qo + tt]', 'K[(j0 + c) * ldk + tt]', 'SC[0]')}",
              f"        sv: T.let[T.float32] = {f32(ph.scale)} * SC[0]"]
    val = "sv"
    if ph.mask:
        mk = "MK[(i0 + r) * msr + (j0 + c) * msc]"
        masked = f"T.Select({mk} != T.uint8(0), sv, {NEG_INF})" if ph.mask_kind == "bool" else f"sv + {mk}"
        score += [f"        sm: T.let[T.float32] = T.Select(has_mask != T.int64(0), {masked}, sv)"]
        val = "sm"
    if ph.causal:
        val = f"T.Select(j0 + c + lq > i0 + r + lk, {NEG_INF}, {val})"
    score += [f"        S[r * T.int64({BCP}) + c] = {val}"]
    blk += _indent(score, "    ")
    # the normalizer on the block: P in S; per row alpha (the accumulator's rescale) and live
    srow = f"S[r * T.int64({BCP}) + c0 * T.int64({W}) + l]"
    if softmax:
        ex_lines, ex = _emit(Emit, t, counter, lambda e: e.exp_nonpos(f"({srow} - mx)"))
        al_lines, al = _emit(Emit, t, counter, lambda e: e.exp_nonpos("(M[r] - mx)"))
        norm = ["for r in range(br):",
                "    SC[0] = M[r]",
                "    for c in range(bc):",   # a NaN score does not reach the max (its exp carries it)
                f"        SC[0] = T.Select(S[r * T.int64({BCP}) + c] > SC[0], S[r * T.int64({BCP}) + c], SC[0])",
                "    mx: T.let[T.float32] = SC[0]",
                f"    if mx == {NEG_INF}:",   # every score so far -inf (or NaN): nothing to add
                "        LIVE[r] = 0",
                "        for c in range(bc):",
                f"            if T.isnan(S[r * T.int64({BCP}) + c]):",
                '                L[r] = T.float32("nan")',
                "    else:",
                "        LIVE[r] = 1"]
        norm += _indent(al_lines, "        ") + [f"        AL[r] = {al}",
                                                "        " + _vec(W, "l"), "            PS[l] = T.float32(0)",
                                                f"        for c0 in range(T.int64({BCP // W})):",
                                                "            " + _vec(W, "l")]
        norm += _indent(ex_lines, "                ") + [f"                {srow} = {ex}",
                                                         f"                PS[l] = PS[l] + {ex}",
                                                         f"        SC[0] = {_tree([f'PS[{i}]' for i in range(W)])}",
                                                         "        M[r] = mx",
                                                         "        L[r] = L[r] * AL[r] + SC[0]"]
    else:   # stablemax: s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); -inf weighs 0, NaN stays NaN
        x = f"S[r * T.int64({BCP}) + c]"
        norm = ["for r in range(br):",
                "    SC[0] = T.float32(0)",
                f"    for c in range(T.int64({BCP})):",
                f"        sp: T.let[T.float32] = T.Select({x} >= T.float32(0), {x} + T.float32(1), "
                f"T.float32(1) / (T.float32(1) - {x}))",
                f"        {x} = sp",
                "        SC[0] = SC[0] + sp",
                "    AL[r] = T.float32(1)",
                "    LIVE[r] = 1",
                "    L[r] = L[r] + SC[0]"]
    blk += _indent(norm, "    ")
    # acc = alpha acc + P_blk V_blk, acc = o's rows, in chunks of CW columns held in ACC; keys in order
    R = 4 if t.vector_registers >= 32 else 2   # rows sharing each V load (R x CW accumulators in registers)

    def pv_rows(rows: list[str]) -> list[str]:
        """acc = alpha acc + P V for the given rows (all live): CW-column chunks of every row in ACC,
        each V load shared by the rows; keys in order (a row's bits do not depend on its mates)."""
        out = [f"for t0 in range(dv // T.int64({CW})):"]
        for u, r in enumerate(rows):
            out += ["    " + _vec(CW, "l"),
                    f"        ACC[{u * CW} + l] = O[({r}) * ldo + t0 * T.int64({CW}) + l] * AL[{r} - i0]"]
        out += ["    for c in range(bc):",
                f"        vo: T.let[T.int64] = (j0 + c) * ldv + t0 * T.int64({CW})"]
        for u, r in enumerate(rows):
            out += ["        " + _vec(CW, "l"),
                    f"            ACC[{u * CW} + l] = "
                    f"{_fma(t, f'S[({r} - i0) * T.int64({BCP}) + c]', 'V[vo + l]', f'ACC[{u * CW} + l]')}"]
        for u, r in enumerate(rows):
            out += ["    " + _vec(CW, "l"), f"        O[({r}) * ldo + t0 * T.int64({CW}) + l] = ACC[{u * CW} + l]"]
        out += [f"for tt in range(dv // T.int64({CW}) * T.int64({CW}), dv):"]
        for r in rows:
            out += [f"    SC[0] = O[({r}) * ldo + tt] * AL[{r} - i0]",
                    "    for c in range(bc):",
                    f"        SC[0] = {_fma(t, f'S[({r} - i0) * T.int64({BCP}) + c]', 'V[(j0 + c) * ldv + tt]', 'SC[0]')}",
                    f"    O[({r}) * ldo + tt] = SC[0]"]
        return out

    group = [f"i0 + rg * T.int64({R}) + T.int64({u})" for u in range(R)]
    live = " & ".join(f"(LIVE[rg * T.int64({R}) + T.int64({u})] != 0)" for u in range(R))
    pv = [f"for rg in range(br // T.int64({R})):",
          f"    if {live}:"] + _indent(pv_rows(group), "        ") + [
          "    else:",
          f"        for u in range(T.int64({R})):",
          f"            if LIVE[rg * T.int64({R}) + u] != 0:"] + _indent(pv_rows([f"i0 + rg * T.int64({R}) + u"]), "                ") + [
          f"for rr in range(br // T.int64({R}) * T.int64({R}), br):",
          "    if LIVE[rr] != 0:"] + _indent(pv_rows(["i0 + rr"]), "        ")
    blk += _indent(pv, "    ")
    body += _indent(blk, "    ")
    # O = acc / l: a row with no kept key is NaN; no keys at all (lk = 0): the empty sum 0. lse:
    # -inf for a row with no kept key, NaN for a NaN row
    log_lines, lg = _emit(Emit, t, counter, lambda e: e.log("L[r]"))
    dead = f"(L[r] == T.float32(0)) | (M[r] == {NEG_INF})"
    fin = ["for r in range(br):",
           "    inv: T.let[T.float32] = T.float32(1) / L[r]",
           "    for c in range(dv):",
           f"        O[(i0 + r) * ldo + c] = T.Select(lk == T.int64(0), T.float32(0), "
           f'T.Select({dead}, T.float32("nan"), O[(i0 + r) * ldo + c] * inv))',
           "    if has_lse != T.int64(0):"]
    fin += _indent(log_lines, "        ")
    fin += [f'        LSE[(i0 + r) * lsr] = T.Select(T.isnan(L[r]), T.float32("nan"), '
            f"T.Select({dead}, {NEG_INF}, M[r] + {lg}))"]
    body += _indent(fin, "    ")
    return "\n".join(head + _indent(body, "    ")) + "\n"
