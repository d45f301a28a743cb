"""The streaming attention phase (``matrix.AttentionPhase``, from ``passes.stream_attention``) as
TensorIR, compiled by TVM's LLVM: the TVM backend's counterpart of ``backends/attention.py``.

``phase_function`` is the TVMScript of ``void <fname>__tvm(lq, lk, klen, d, dv, q, ldq, k, ldk, v,
ldv[, mask, msr, msc, has_mask], o, ldo, lse, lsr, has_lse[, kn][, pb], r0, r1)`` (int64 sizes,
plain C ABI): query rows [r0, r1) of one (batch, head) matrix, in blocks of br rows, each swept
over blocks of bc keys. The vector lanes run over the block's query rows (br padded to BRP, whole
vectors): the score block is kept transposed, S^T (bc keys x BRP rows), so the per-row state
(softmax: running max m, sum l; the others: l and their own) lives in lanes and the normalizer
needs no horizontal max or sum. Q_blk^T is packed once per query block (in chunks of DC of d,
repacked per key block only when d > DC), and a score tile is KG keys x BRP rows of accumulators in
registers over d: one broadcast K element and one Q^T vector per FMA (register-blocked like the C
micro-kernel, which packs K^T instead). Decoding blocks (br * 8 <= lanes) form scores as dot
products over d instead. P V adds tiles of R live rows x 4 vectors of dv in registers, each V load
shared by the tile, the rescale alpha folded into the accumulator's load; the accumulator is o's
rows. Numerics are the TVM emitter's (``backends.tvm.Emit``, passed in: ``exp_nonpos``, ``log``,
``softplus``, ``ipow``; the constants of ``numerics/constants.py``): no second polynomial.
Normalizers: softmax (online rescale e^(m - m')), stablemax (none), softplus_l1 (none; rows whose
largest kept score is below ``SOFTPLUS_TINY`` get a second pass over the key blocks weighted e^(S -
m)), lssa (cosine scores times log(d) log(N_i): 1/|q_i| per row, N_i counted per row first; 1/|k_j|
from ``kn``, which ``knorm_function``'s ``<fname>__knorm__tvm`` fills once per (batch, kv head): a
task of the C side's, as the C kernel's K^T, shared by the group's query heads; decoding blocks sum
k^2 from their dot products' loads, so K is read once there) and lssar (pass 0: lssa's weights P
into ``pb``, O(br Lk) floats the C side allocates per call, their sum l_i and max; pass 1 from
``pb``, K not read again: q = (R / r)^p, r = R(max P), no rescaling), the math of
``templates/attention.c.j2``'s ``normalize_block`` and ``pass_close``. Blocks entirely above the
bottom-right causal diagonal and keys >= klen (kv_lengths) are never visited; the mask (uint8
keep-mask or float32 additive, strided) and the diagonal are applied as the scores are formed. The
C side (``attention.c.j2`` with ``tvm=True``) keeps the explicit-stride entry: its checks, heads,
GQA, kv_lengths and the (batch, head, query chunk) tasks of the thread pool, the same as the C
backend's, so both backends' results do not depend on the thread count.
"""
from __future__ import annotations

import math
import re

from ..errors import BuildError
from ..matrix import AttentionPhase
from ..ops.attention import SOFTPLUS_TINY, _lssar_params
from ..reference import R_BOUND
from ..targets import Target

# the normalizers lowered here: all of passes.STREAMING_NORMALIZERS
NORMALIZERS = ("softmax", "stablemax", "softplus_l1", "lssa", "lssar")
DC = 128   # the chunk of d packed as Q^T (DC x BRP floats on the stack)
# 1 / |x| from 1 / sqrt(sum x^2) for sums at or above this (attention.c.j2's __inv_norm): below, the
# sum may have lost bits to underflow, and the scaled form is taken
INV_NORM_MIN = 2.0 ** -60


def _fma(t: Target, a: str, b: str, c: str) -> str:
    if t.fma == "native":
        return f'T.call_llvm_pure_intrin("float32", "llvm.fma", {a}, {b}, {c})'
    # no FMA unit (scalar): exact product in double, one rounding, like the C scalar table
    return f'T.Cast("float32", T.Cast("float64", {a}) * T.Cast("float64", {b}) + T.Cast("float64", {c}))'


def _tree(terms: list[str]) -> str:
    """The sum of ``terms``, pairwise (depth log2 n rather than a chain of n)."""
    while len(terms) > 1:
        terms = [f"({a} + {b})" for a, b in zip(terms[::2], terms[1::2])] + ([terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def _indent(lines: list[str], ind: str) -> list[str]:
    return [ind + ln for ln in lines]


def _i(n: int) -> str:
    return f"T.int64({n})"


class _Writer:
    """The TIR text of one phase function's key blocks in one layout, with the emitter and the loops
    the normalizers share. ``mode`` "lanes": S^T (BRP rows in lanes, keys in a loop; per-row state
    in lanes, no horizontal reduction). "keys" (decoding blocks of 1 .. W/8 rows): S row-major, the
    keys in lanes (padded with -inf to whole vectors), a loop over the rows; the same normalizer
    text, its per-row accumulations (``amax``, ``asum``) into W partial lanes reduced per row."""

    def __init__(self, ph: AttentionPhase, t: Target, Emit, f32, counter: list[int], mode: str = "lanes"):
        self.ph, self.t, self.Emit, self.f32, self.counter, self.mode = ph, t, Emit, f32, counter, mode
        self.W = t.lanes
        self.BRP = -(-ph.br // self.W) * self.W
        self.BCK = -(-ph.bc // self.W) * self.W
        self.NEG_INF = f32(float("-inf"))
        self.tile = pb_tile(ph, t.lanes)
        self._accs: list[tuple[str, str]] = []

    def emit(self, build) -> tuple[list[str], str]:
        """(the let statements, the result) of ``build(e)`` on a fresh ``Emit``."""
        e = self.Emit(self.counter, self.t.fma == "native")
        r = build(e)
        return e.lines, r

    def lanes(self, body: list[str]) -> list[str]:
        """``body`` once per row l of the block (lanes: vectorised over the BRP rows)."""
        if self.mode == "keys":
            return ["for r in range(br):"] + _indent([re.sub(r"\bl\b", "r", b) for b in body], "    ")
        head = f"for l in T.vectorized({_i(self.BRP)}):" if self.W > 1 else f"for l in range({_i(self.BRP)}):"
        return [head] + _indent(body, "    ")

    def keys(self, body: list[str]) -> list[str]:
        """``body`` per key c of the block and row l; ``x`` (``st()``) is S[l, c]."""
        if self.mode == "lanes":
            return ["for c in range(bc):"] + _indent(self.lanes(body), "    ")
        W, accs, self._accs = self.W, self._accs, []
        sub = lambda b: re.sub(r"\bl\b", "r", re.sub(r"\bc\b", f"(cv * {_i(W)} + w)", b))  # noqa: E731
        out = ["for r in range(br):"]
        for dst, kind in accs:   # max: every lane starts at the row's value; sum: lane 0 does
            init = f"{dst}[r]" if kind == "max" else f"T.Select(w == T.int64(0), {dst}[r], T.float32(0))"
            out += [f"    for w in T.vectorized({_i(W)}):", f"        {dst}V[w] = {init}"]
        out += [f"    for cv in range((bc + {_i(W - 1)}) // {_i(W)}):", f"        for w in T.vectorized({_i(W)}):"]
        out += _indent([sub(b) for b in body], "            ")
        for dst, kind in accs:   # (a loop for the max: a nested select would grow as 4^log2(W))
            if kind == "sum":
                out += [f"    {dst}[r] = {_tree([f'{dst}V[{_i(i)}]' for i in range(W)])}"]
            else:
                out += [f"    for w in range({_i(W)}):", f"        {dst}[r] = T.Select({dst}V[w] > {dst}[r], {dst}V[w], {dst}[r])"]
        return out

    def _acc(self, dst: str, kind: str, expr: str) -> str:
        if self.mode == "lanes":
            return f"{dst}[l] = " + expr.replace("{a}", f"{dst}[l]")
        self._accs.append((dst, kind))
        return f"{dst}V[w] = " + expr.replace("{a}", f"{dst}V[w]")

    def asum(self, dst: str, v: str) -> str:
        """The statement dst[l] += v (in a ``keys`` body)."""
        return self._acc(dst, "sum", f"{{a}} + {v}")

    def amax(self, dst: str, v: str) -> str:
        """The statement dst[l] = max(dst[l], v), a NaN v dropped (in a ``keys`` body)."""
        return self._acc(dst, "max", f"T.Select({v} > {{a}}, {v}, {{a}})")

    def st(self, c: str = "c", r: str = "l") -> str:
        if self.mode == "keys":
            return f"ST[({r}) * {_i(self.BCK)} + ({c})]"
        return f"ST[({c}) * {_i(self.BRP)} + {r}]"

    def pb(self, c: str = "c", r: str = "l") -> str:
        """lssar's P of (row r, key c) of key block jb in PB: laid out as that block's S tile."""
        return self.st(c, r).replace("ST[", f"PB[jb * {_i(self.tile)} + ", 1)


def pb_tile(ph: AttentionPhase, lanes: int) -> int:
    """Floats of one key block's score tile (either layout): lssar's P buffer holds one per key block."""
    brp, bck = -(-ph.br // lanes) * lanes, -(-ph.bc // lanes) * lanes
    return max(ph.bc * brp, lanes // 8 * bck)


def knorm_rows(lanes: int) -> int:
    """lssa, lssar: the C side computes the key norms (``knorm_function``) for calls of more query rows
    than this: a block of fewer (the keys layout, decoding) forms them from its dot products' loads."""
    return lanes // 8 if lanes >= 8 else 0


def knorm_function(fname: str, t: Target, f32) -> str:
    """TVMScript of ``void <fname>__knorm__tvm(lk, d, k, ldk, kn)``: kn[j] = 1 / |k_j| for j < lk (the
    cosine normalizers' key norms, computed once per (batch, kv head) by the C side's tasks, as the C
    kernel normalises its packed K^T once; ``_inv_norm``'s formula)."""
    W = t.lanes
    return "\n".join([
        "@T.prim_func",
        f'def {fname}__knorm__tvm(lk: T.int64, d: T.int64, k: T.handle("float32"), ldk: T.int64, kn: T.handle("float32")):',
        f'    T.func_attr({{"global_symbol": "{fname}__knorm__tvm", "tir.noalias": True}})',
        '    K = T.decl_buffer((lk * ldk + d,), "float32", data=k)',
        '    KN = T.decl_buffer((lk + 1,), "float32", data=kn)',
        f'    PS = T.alloc_buffer(({2 * W},), "float32", scope="local")',
        '    SC = T.alloc_buffer((3,), "float32", scope="local")',
        "    for j in range(lk):"] + _indent(_inv_norm(t, f32, "K", "j * ldk", "KN[j]"), "        ")) + "\n"


def phase_function(ph: AttentionPhase, fname: str, t: Target, Emit, f32) -> str:
    """TVMScript of ``<fname>__tvm`` (see the module docstring). ``Emit``, ``f32``: the TVM
    emitter and its float32 literal (``backends.tvm``, which imports this module)."""
    if ph.normalizer not in NORMALIZERS:
        raise BuildError(f"the TVM backend streams attention with {', '.join(NORMALIZERS)}, "
                         f"not {ph.normalizer!r}")
    wr = _Writer(ph, t, Emit, f32, [0])
    W, BRP, BC, NEG_INF = wr.W, wr.BRP, ph.bc, wr.NEG_INF
    norm = ph.normalizer
    cosine = norm in ("lssa", "lssar")
    big = t.vector_registers >= 32
    NRV = BRP // W                                            # vectors of rows per key
    KG = max(1, min(12 if big else 6, (24 if big else 12) // NRV))   # keys per score tile
    CW = 4 * W if W > 1 else 4     # the accumulator chunk of dv held in a local buffer
    R = 4 if big else 2            # rows sharing each V load (R x CW accumulators in registers)
    mtype = "uint8" if ph.mask_kind == "bool" else "float32"
    mask_args = (f'mask: T.handle("{mtype}"), msr: T.int64, msc: T.int64, has_mask: T.int64, '
                 if ph.mask else "")
    scratch_args = ('kn: T.handle("float32"), ' if cosine else "") + ('pb: T.handle("float32"), ' if norm == "lssar" else "")
    head = [
        "@T.prim_func",
        f'def {fname}__tvm(lq: T.int64, lk: T.int64, klen: T.int64, d: T.int64, dv: T.int64, '
        'q: T.handle("float32"), ldq: T.int64, k: T.handle("float32"), ldk: T.int64, v: T.handle("float32"), '
        f'ldv: T.int64, {mask_args}o: T.handle("float32"), ldo: T.int64, lse: T.handle("float32"), lsr: T.int64, '
        f'has_lse: T.int64, {scratch_args}r0: T.int64, r1: T.int64):',
        f'    T.func_attr({{"global_symbol": "{fname}__tvm", "tir.noalias": True}})',
        '    Q = T.decl_buffer((lq * ldq + d,), "float32", data=q)',
        '    K = T.decl_buffer((lk * ldk + d,), "float32", data=k)',
        '    V = T.decl_buffer((lk * ldv + dv,), "float32", data=v)',
        '    O = T.decl_buffer((lq * ldo + dv,), "float32", data=o)',
        '    LSE = T.decl_buffer((lq * lsr + 1,), "float32", data=lse)',
    ]
    if ph.mask:
        head.append(f'    MK = T.decl_buffer((lq * msr + lk * msc + 1,), "{mtype}", data=mask)')
    if cosine:   # 1 / |k_j| of the matrix's keys (knorm_function's), read by the lanes layout's blocks
        head.append('    KN = T.decl_buffer((lk + 1,), "float32", data=kn)')
    if norm == "lssar":   # pass 0's P, block by block as the score tile (pb_tile floats per key block)
        head.append(f'    PB = T.decl_buffer(((lk + {_i(BC - 1)}) // {_i(BC)} * {_i(wr.tile)} + 1,), "float32", data=pb)')
    decode = W >= 8   # a "keys" layout for blocks of 1 .. W/8 rows
    local = {"QT": (DC * BRP, "float32"), "ST": (wr.tile, "float32"), "SA": (KG * BRP, "float32"),
             "M": (BRP, "float32"), "L": (BRP, "float32"), "AL": (BRP, "float32"), "MX": (BRP, "float32"),
             "SM": (BRP, "float32"), "LIVE": (BRP, "int32"), "PS": (4 * W, "float32"), "SC": (3, "float32"),
             "ACC": (R * CW, "float32")}
    if decode:   # the keys layout's partial lanes of the per-row accumulations
        local |= {"MXV": (W, "float32"), "SMV": (W, "float32"), "MV": (W, "float32")}
    if norm == "softplus_l1":
        local |= {"SH": (BRP, "int32"), "REDO": (1, "int32")}
    if cosine:
        local |= {"LAM": (BRP, "float32"), "IQ": (BRP, "float32"), "NK": (1, "int64")}
        if ph.mask:
            local["KC"] = (W, "int32")
        if decode:   # the keys layout's 1 / |k_j| of a block, and its sums of squares per key
            local |= {"IK": (wr.BCK, "float32"), "PN": (4 * W, "float32")}
    if norm == "lssar":
        local |= {"NF": (BRP, "float32"), "OFF": (BRP, "float32"), "IL": (BRP, "float32"),
                  "RR": (BRP, "float32"), "QS": (BRP, "float32"), "PM": (BRP, "float32")}
        if decode:
            local["PMV"] = (W, "float32")
    head += [f'    {b} = T.alloc_buffer(({n},), "{dt}", scope="local")' for b, (n, dt) in local.items()]

    # -- per query block: o's rows and the state zeroed, lssa's per-row values, Q^T packed --------
    body = [f"for ib in range((r1 - r0 + {_i(ph.br - 1)}) // {_i(ph.br)}):",
            f"    i0: T.let[T.int64] = r0 + ib * {_i(ph.br)}",
            f"    br: T.let[T.int64] = T.min(r1 - i0, {_i(ph.br)})"]
    # keys any row of the block may see: j <= i + lk - lq (bottom-right causal), j < klen
    kend = "T.min(T.max(i0 + br + lk - lq, T.int64(0)), lk)" if ph.causal else "lk"
    m0 = NEG_INF if norm in ("softmax", "softplus_l1") else f32(0.0)
    blk = [f"kend: T.let[T.int64] = T.min({kend}, klen)",
           "for r in range(br):",
           "    for c in range(dv):",
           "        O[(i0 + r) * ldo + c] = T.float32(0)"]
    init = [f"M[l] = {m0}", "L[l] = T.float32(0)"]
    init += {"softplus_l1": ["SH[l] = 0"], "lssa": ["LAM[l] = T.float32(0)", "IQ[l] = T.float32(0)"],
             "lssar": ["LAM[l] = T.float32(0)", "IQ[l] = T.float32(0)", "NF[l] = T.float32(0)",
                       "OFF[l] = T.float32(0)", "PM[l] = T.float32(0)"]}.get(norm, [])
    blk += wr.lanes(init)
    if cosine:
        blk += _indent(_cosine_rows(wr), "")
    # Q_blk^T, lanes past br zero (their scores are never used; zeros keep them finite and normal)
    pack = lambda t0, n: [f"for tq in range({n}):",                                 # noqa: E731
                          "    for r in range(br):",
                          f"        QT[tq * {_i(BRP)} + r] = Q[(i0 + r) * ldq + {t0} + tq]",
                          f"    for r in range(br, {_i(BRP)}):",
                          f"        QT[tq * {_i(BRP)} + r] = T.float32(0)"]
    blk += [f"if d <= {_i(DC)}:"] + _indent(pack("T.int64(0)", "d"), "    ")

    # -- per key block: the scores, the mask, the diagonal; the normalizer; P V (per layout) -------
    def key_blocks(wr: _Writer, ps: int = 0) -> list[str]:
        """The key blocks of one pass (lssar's pass 1: the weights from PB, no scores)."""
        kb = [f"for jb in range((kend + {_i(BC - 1)}) // {_i(BC)}):",
              f"    j0: T.let[T.int64] = jb * {_i(BC)}",
              f"    bc: T.let[T.int64] = T.min(kend - j0, {_i(BC)})"]
        if ps == 1:
            return kb + _indent(_normalize(wr, norm, ps) + _pv(wr, R, CW), "    ")
        sc = _tile_scores(wr, KG, pack) if wr.mode == "lanes" else _dot_scores(wr, cosine)
        # the scale (lssa: the cosine times log(d) log(N_i); 1/|k_j| from KN, the keys layout's from
        # its dot products), the mask, then the diagonal
        x = wr.st()
        ik = "IK[c]" if wr.mode == "keys" else "KN[j0 + c]"
        scaled = f"{x} * {ik} * IQ[l] * LAM[l]" if cosine else f"{f32(ph.scale)} * {x}"
        sc += wr.keys([f"{x} = {scaled}"])
        if ph.mask:
            xr, mk = wr.st("c", "r"), "MK[(i0 + r) * msr + (j0 + c) * msc]"
            if ph.mask_kind == "bool":
                mv = f"T.Select({mk} != T.uint8(0), {xr}, {NEG_INF})"
            elif cosine:   # a dropped key (-inf) is dropped whatever its cosine
                mv = f"T.Select({mk} == {NEG_INF}, {NEG_INF}, {xr} + {mk})"
            else:
                mv = f"{xr} + {mk}"
            sc += ["if has_mask != T.int64(0):", "    for r in range(br):", "        for c in range(bc):",
                   f"            {xr} = {mv}"]
        if ph.causal:   # only blocks crossing the diagonal: some key j > i + lk - lq
            sc += ["if j0 + bc + lq > i0 + lk + T.int64(1):"] + _indent(
                wr.keys([f"{x} = T.Select(j0 + c + lq > i0 + l + lk, {NEG_INF}, {x})"]), "    ")
        if wr.mode == "keys":   # the keys past bc in the last vector weigh 0 for every normalizer
            sc += ["for r in range(br):", f"    for c in range(bc, (bc + {_i(W - 1)}) // {_i(W)} * {_i(W)}):",
                   f"        {wr.st('c', 'r')} = {NEG_INF}"]
        # (lssar's pass 0 adds nothing: its weights need the row's whole sum first)
        return kb + _indent(sc + _normalize(wr, norm) + (_pv(wr, R, CW) if norm != "lssar" else []), "    ")

    def passes(ps: int = 0) -> list[str]:
        kb = key_blocks(wr, ps)
        if decode:   # decoding blocks (br * 8 <= W): keys in lanes, scores as dot products over d
            kb = ([f"if br * {_i(8)} <= {_i(W)}:"] + _indent(key_blocks(_Writer(ph, t, Emit, f32, wr.counter, "keys"), ps), "    ")
                  + ["else:"] + _indent(kb, "    "))
        return kb
    kb = passes()

    # -- the passes over the key blocks (softplus_l1, lssar: two) ----------------------------------
    if norm == "softplus_l1":
        redo = ["REDO[0] = 0",
                "for r in range(br):",   # the rows whose largest kept score is below tiny: redo them (rare)
                f"    SH[r] = T.Select((M[r] < {f32(SOFTPLUS_TINY)}) & (M[r] > {NEG_INF}), 1, 0)",
                "    if SH[r] != 0:",
                "        for c in range(dv):",
                "            O[(i0 + r) * ldo + c] = T.float32(0)",
                "        L[r] = T.float32(0)",
                "        REDO[0] = 1"]
        blk += ["REDO[0] = 0", "for ps in range(2):", "    if ps == 1:"] + _indent(redo, "        ") + \
               ["    if (ps == 0) | (REDO[0] != 0):"] + _indent(kb, "        ")
        # lse = log of the weights' sum: log l, or m + log l for the rows weighted e^(S - m)
        blk += wr.lanes([f"M[l] = T.Select((SH[l] == 0) & (M[l] != {NEG_INF}), T.float32(0), M[l])"])
    elif norm == "lssar":
        # pass 1 over pass 0's P (PB: K is not read again): R = max(N_i A - O_i, 0), A = P / l_i; the
        # row's max r is R of its largest P (R grows with P: the same operations, the same bits), so
        # q = (R / r)^p needs no rescaling (attention.c.j2's pass_close)
        rl, rv = wr.emit(lambda e: _reweight(e, "PM[l]"))
        start = wr.lanes(['IL[l] = T.Select(T.fabs(L[l]) < T.float32("inf"), T.float32(1) / L[l], T.float32("nan"))']
                         + rl + [f'RR[l] = T.Select(T.fabs(IL[l]) < T.float32("inf"), {rv}, T.float32(0))',
                                 "QS[l] = T.float32(0)", "AL[l] = T.float32(1)",
                                 "LIVE[l] = T.Select(RR[l] > T.float32(0), 1, 0)", "SM[l] = T.float32(1) / RR[l]"])
        blk += kb + start + passes(1)
    else:
        blk += kb
    blk += _finish(wr, norm)
    body += _indent(blk, "    ")
    main = "\n".join(head + _indent(body, "    ")) + "\n"
    return knorm_function(fname, t, f32) + "\n\n" + main if cosine else main


def _tile_scores(wr: _Writer, KG: int, pack) -> list[str]:
    """S^T = Q_blk K_blk^T (unscaled) in tiles of KG keys x BRP rows of accumulators over each chunk
    of d (Q^T repacked per chunk when d > DC), a K element broadcast per FMA."""
    t, BRP = wr.t, wr.BRP
    tile = []
    for keys, start, count in ((KG, f"cg * {_i(KG)}", f"bc // {_i(KG)}"),
                               (1, f"bc // {_i(KG)} * {_i(KG)} + cg", f"bc % {_i(KG)}")):
        sa = f"SA[u * {_i(BRP)} + l]"
        tile += [f"for cg in range({count}):",
                 f"    c0: T.let[T.int64] = {start}",
                 f"    for u in T.unroll({_i(keys)}):"] + _indent(wr.lanes([f"{sa} = {wr.st('c0 + u')}"]), "        ") + [
                 "    for tq in range(dch):",
                 f"        for u in T.unroll({_i(keys)}):"] + _indent(wr.lanes(
                     [f"{sa} = {_fma(t, 'K[(j0 + c0 + u) * ldk + t0 + tq]', f'QT[tq * {_i(BRP)} + l]', sa)}"]), "            ") + [
                 f"    for u in T.unroll({_i(keys)}):"] + _indent(wr.lanes([f"{wr.st('c0 + u')} = {sa}"]), "        ")
    return (wr.keys([f"{wr.st()} = T.float32(0)"])
            + [f"for ch in range((d + {_i(DC - 1)}) // {_i(DC)}):",
               f"    t0: T.let[T.int64] = ch * {_i(DC)}",
               f"    dch: T.let[T.int64] = T.min(d - t0, {_i(DC)})",
               f"    if d > {_i(DC)}:"] + _indent(pack("t0", "dch"), "        ") + _indent(tile, "    "))


def _dot_scores(wr: _Writer, norms: bool = False) -> list[str]:
    """S = Q_blk K_blk^T (unscaled, row-major) as dot products over d's vectors, 4 keys sharing
    each q load, the lanes summed pairwise; then d's tail. ``norms`` (lssa, lssar): row 0's loop
    also sums k^2 from the same loads, and IK = 1 / |k_j| of the block's keys (``_inv_norm``): K is
    read once, as the C kernel's decoding does."""
    t, W, KD = wr.t, wr.W, 4
    kx = f"K[(j0 + c0 + u) * ldk + tv * {_i(W)} + l]"
    dot = _fma(t, f"Q[qo + tv * {_i(W)} + l]", kx, f"PS[u * {_i(W)} + l]")

    def row(norm: bool) -> list[str]:
        out = []
        for keys, start, count in ((KD, f"cg * {_i(KD)}", f"bc // {_i(KD)}"), (1, f"bc // {_i(KD)} * {_i(KD)} + cg", f"bc % {_i(KD)}")):
            out += [f"for cg in range({count}):",
                    f"    c0: T.let[T.int64] = {start}",
                    f"    for u in T.unroll({_i(keys)}):",
                    f"        for l in T.vectorized({_i(W)}):",
                    f"            PS[u * {_i(W)} + l] = T.float32(0)"]
            out += [f"            PN[u * {_i(W)} + l] = T.float32(0)"] if norm else []
            out += [f"    for tv in range(d // {_i(W)}):",
                    f"        for u in T.unroll({_i(keys)}):",
                    f"            for l in T.vectorized({_i(W)}):",
                    f"                PS[u * {_i(W)} + l] = {dot}"]
            out += [f"                PN[u * {_i(W)} + l] = {_fma(t, kx, kx, f'PN[u * {_i(W)} + l]')}"] if norm else []
            out += [f"    for u in T.unroll({_i(keys)}):",
                    f"        {wr.st('c0 + u', 'r')} = {_tree([f'PS[u * {_i(W)} + {_i(i)}]' for i in range(W)])}"]
            out += [f"        IK[c0 + u] = {_tree([f'PN[u * {_i(W)} + {_i(i)}]' for i in range(W)])}"] if norm else []
        out += ["for c in range(bc):",
                f"    SC[0] = {wr.st('c', 'r')}",
                f"    for tt in range(d // {_i(W)} * {_i(W)}, d):",
                f"        SC[0] = {_fma(t, 'Q[qo + tt]', 'K[(j0 + c) * ldk + tt]', 'SC[0]')}"]
        out += [f"        IK[c] = {_fma(t, 'K[(j0 + c) * ldk + tt]', 'K[(j0 + c) * ldk + tt]', 'IK[c]')}"] if norm else []
        return out + [f"    {wr.st('c', 'r')} = SC[0]"]
    out = ["for r in range(br):", "    qo: T.let[T.int64] = (i0 + r) * ldq"]
    if not norms:
        return out + _indent(row(False), "    ")
    out += ["    if r == T.int64(0):"] + _indent(row(True), "        ") + ["    else:"] + _indent(row(False), "        ")
    return out + ["for c in range(bc):"] + _indent(_inv_norm(t, wr.f32, "K", "(j0 + c) * ldk", "IK[c]", "IK[c]"), "    ")


def _inv_norm(t: Target, f32, buf: str, base: str, dst: str, sq: str | None = None) -> list[str]:
    """``dst`` = 1 / |x| of the d floats at ``buf[base]``, attention.c.j2's ``__inv_norm``: 1 / sqrt(sum x^2)
    where that sum is in [INV_NORM_MIN, inf), else (1 / sqrt(sum y^2)) / max|x|, y = x / max|x| (no
    overflow or underflow for finite x; 0 or non-finite x: NaN). sum x^2 over d into W partial lanes
    (PS[W, 2W)), then d's tail; ``sq``: where that sum already is (the keys layout's dot products form
    it from their loads). The fallback's passes use PS[0, 2W) and SC."""
    W = t.lanes
    x, xt = f"{buf}[{base} + tv * {_i(W)} + l]", f"{buf}[{base} + tn]"
    big = lambda a, b: f"T.Select(({a} > {b}) | ({a} != {a}), {a}, {b})"   # noqa: E731  (a NaN is kept)
    vec = f"for l in T.vectorized({_i(W)}):" if W > 1 else "for l in range(T.int64(1)):"
    out = []
    if sq is None:
        sq = "SC[1]"
        out += [vec, f"    PS[{_i(W)} + l] = T.float32(0)",
                f"for tv in range(d // {_i(W)}):", "    " + vec,
                f"        PS[{_i(W)} + l] = {_fma(t, x, x, f'PS[{_i(W)} + l]')}",
                f"SC[1] = {_tree([f'PS[{_i(W + i)}]' for i in range(W)])}",
                f"for tn in range(d // {_i(W)} * {_i(W)}, d):", f"    SC[1] = {_fma(t, xt, xt, 'SC[1]')}"]
    scaled = [vec, "    PS[l] = T.float32(0)", f"    PS[{_i(W)} + l] = T.float32(0)",
              f"for tv in range(d // {_i(W)}):", "    " + vec, f"        PS[l] = {big(f'T.fabs({x})', 'PS[l]')}",
              "SC[0] = T.float32(0)",
              f"for tn in range(d // {_i(W)} * {_i(W)}, d):", f"    SC[0] = {big(f'T.fabs({xt})', 'SC[0]')}",
              f"for tv in range({_i(W)}):", f"    SC[0] = {big('PS[tv]', 'SC[0]')}",
              "SC[2] = T.float32(1) / SC[0]",
              f"for tv in range(d // {_i(W)}):", "    " + vec,
              f"        PS[{_i(W)} + l] = PS[{_i(W)} + l] + ({x} * SC[2]) * ({x} * SC[2])",
              f"SC[1] = {_tree([f'PS[{_i(W + i)}]' for i in range(W)])}",
              f"for tn in range(d // {_i(W)} * {_i(W)}, d):", f"    SC[1] = SC[1] + ({xt} * SC[2]) * ({xt} * SC[2])",
              f'{dst} = T.Select((SC[0] == T.float32(0)) | (SC[0] != SC[0]) | (SC[0] == T.float32("inf")), '
              f'T.float32("nan"), T.float32(1) / T.sqrt(SC[1]) * SC[2])']
    return out + [f'if ({sq} >= {f32(INV_NORM_MIN)}) & ({sq} < T.float32("inf")):',
                  f"    {dst} = T.float32(1) / T.sqrt({sq})", "else:"] + _indent(scaled, "    ")


def _cosine_rows(wr: _Writer) -> list[str]:
    """lssa, lssar per row of the block: LAM = log(d) log(N_i), N_i the keys row i keeps (causal:
    j <= i + lk - lq, j < klen, the mask's kept entries), IQ = 1 / |q_i|; lssar: NF = N_i, OFF = O_i."""
    ph, f32 = wr.ph, wr.f32
    out = ["for r in range(br):"]
    ke = "klen"
    if ph.causal:
        ke = "T.min(T.max(i0 + r + T.int64(1) + lk - lq, T.int64(0)), klen)"
    out += [f"    ke: T.let[T.int64] = {ke}", "    NK[0] = ke"]
    if ph.mask:   # the mask's kept entries counted in W partial lanes, then the tail
        W = wr.W
        keep = (lambda c: f"MK[(i0 + r) * msr + ({c}) * msc] != T.uint8(0)") if ph.mask_kind == "bool" else \
            (lambda c: f"MK[(i0 + r) * msr + ({c}) * msc] != {wr.NEG_INF}")
        vec = f"for w in T.vectorized({_i(W)}):" if W > 1 else "for w in range(T.int64(1)):"
        out += ["    if has_mask != T.int64(0):", "        " + vec, "            KC[w] = 0",
                f"        for cv in range(ke // {_i(W)}):", "            " + vec,
                f"                KC[w] = KC[w] + T.Cast(\"int32\", {keep(f'cv * {_i(W)} + w')})",
                f"        NK[0] = T.Cast(\"int64\", {_tree([f'KC[{_i(i)}]' for i in range(W)])})",
                f"        for c in range(ke // {_i(W)} * {_i(W)}, ke):",
                f"            NK[0] = NK[0] + T.Cast(\"int64\", {keep('c')})"]
    lines, lg = wr.emit(lambda e: e.log('T.Cast("float32", NK[0])'))
    out += _indent(lines, "    ") + [f"    LAM[r] = {lg} * {f32(math.log(ph.program.params['head_dim']))}"]
    out += _indent(_inv_norm(wr.t, f32, "Q", "(i0 + r) * ldq", "IQ[r]"), "    ")
    if ph.normalizer == "lssar":
        ofr = _lssar_params(ph.program.params.get("p"), ph.program.params.get("offset_free_rows"))["offset_free_rows"]
        out += ['    NF[r] = T.Cast("float32", NK[0])',   # O_i: 0 while i + lk - lq < offset_free_rows
                f"    OFF[r] = T.Select(i0 + r + lk < lq + {_i(ofr)}, T.float32(0), T.float32(1))"]
    return out


def _normalize(wr: _Writer, norm: str, ps: int = 0) -> list[str]:
    """The normalizer on the block (attention.c.j2's normalize_block), over lanes: P in S^T; per row
    AL, the accumulator's rescale, and LIVE, whether the row has anything to add. ``ps``: lssar's pass."""
    x, NEG_INF = wr.st(), wr.NEG_INF
    one, zero = "T.float32(1)", "T.float32(0)"
    if norm == "softmax":
        # the block's max (a NaN score need not reach it: its exp carries it to l and acc); alpha =
        # e^(m - m'), 1 where the max did not move; a row whose every score so far is -inf (or
        # NaN) adds nothing: its shift is 0, so -inf weighs 0 and NaN reaches l
        al_lines, al = wr.emit(lambda e: e.exp_nonpos("(M[l] - MX[l])"))
        ex_lines, ex = wr.emit(lambda e: e.exp_nonpos(f"({x} - SM[l])"))
        return (wr.lanes(["MX[l] = M[l]"]) + wr.keys([wr.amax("MX", x)])
                + wr.lanes(al_lines + [f"AL[l] = T.Select(MX[l] == M[l], {one}, {al})",
                                       f"LIVE[l] = T.Select(MX[l] != {NEG_INF}, 1, 0)",
                                       f"SM[l] = T.Select(MX[l] != {NEG_INF}, MX[l], {zero})",
                                       "M[l] = MX[l]", f"MX[l] = {zero}"])
                + wr.keys(ex_lines + [f"{x} = {ex}", wr.asum("MX", ex)])
                + wr.lanes(["L[l] = L[l] * AL[l] + MX[l]"]))
    if norm == "stablemax":   # s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); -inf weighs 0, NaN stays NaN
        return (wr.lanes([f"SM[l] = {zero}"])
                + wr.keys([f"{x} = T.Select({x} >= {zero}, {x} + {one}, {one} / ({one} - {x}))", wr.asum("SM", x)])
                + wr.lanes([f"AL[l] = {one}", "LIVE[l] = 1", "L[l] = L[l] + SM[l]"]))
    sp_lines, sp = wr.emit(lambda e: e.softplus(x))
    if norm == "lssa":   # P = softplus(lambda_i c) (0 at -inf); no max, no rescaling
        return (wr.lanes([f"SM[l] = {zero}"]) + wr.keys(sp_lines + [f"{x} = {sp}", wr.asum("SM", sp)])
                + wr.lanes([f"AL[l] = {one}", "LIVE[l] = 1", "L[l] = L[l] + SM[l]"]))
    if norm == "softplus_l1":
        # pass 0: P = softplus(S), m the largest score; pass 1 (the rows SH): P = e^(S - m)
        ex_lines, ex = wr.emit(lambda e: e.exp_nonpos(f"T.Select(SH[l] != 0, {x} - M[l], {NEG_INF})"))
        p0 = (wr.lanes([f"SM[l] = {zero}"])
              + wr.keys(sp_lines + [wr.amax("M", x), f"{x} = {sp}", wr.asum("SM", sp)])
              + wr.lanes([f"AL[l] = {one}", "LIVE[l] = 1", "L[l] = L[l] + SM[l]"]))
        p1 = (wr.lanes([f"SM[l] = {zero}"]) + wr.keys(ex_lines + [f"{x} = {ex}", wr.asum("SM", ex)])
              + wr.lanes([f"AL[l] = {one}", "LIVE[l] = SH[l]", f"L[l] = L[l] + T.Select(SH[l] != 0, SM[l], {zero})"]))
        return ["if ps == 0:"] + _indent(p0, "    ") + ["else:"] + _indent(p1, "    ")
    # lssar. pass 0: P = softplus(S) into PB, l_i = sum P and the largest P, nothing to add; pass 1
    # (ps 1, from PB): q = (R / r)^p in S, R = max(N_i A - O_i, 0), A = P / l_i, r the row's max R
    # (1 / r in SM, set with LIVE and AL = 1 before the pass), sum q
    if ps == 0:
        return (wr.lanes([f"SM[l] = {zero}"])
                + wr.keys(sp_lines + [f"{wr.pb()} = {sp}", wr.asum("SM", sp), wr.amax("PM", sp)])
                + wr.lanes(["L[l] = L[l] + SM[l]"]))
    p = _lssar_params(wr.ph.program.params.get("p"), wr.ph.program.params.get("offset_free_rows"))["p"]
    q_lines, qv = wr.emit(lambda e: e.ipow(e.mul(_reweight(e, wr.pb()), "SM[l]"), p))
    return (wr.lanes([f"MX[l] = {zero}"]) + wr.keys(q_lines + [f"{x} = {qv}", wr.asum("MX", qv)])
            + wr.lanes([f"QS[l] = QS[l] + T.Select(RR[l] > {zero}, MX[l], {zero})"]))


def _reweight(e, a: str) -> str:
    """lssar's R = max(N_i P / l_i - O_i, 0) of a weight P (the expression ``a``), in the C kernel's
    operations: fma(P (1 / l_i), N_i, -O_i)."""
    r = e.fma(e.mul(a, "IL[l]"), "NF[l]", "(T.float32(0) - OFF[l])")
    return e.select(f"({r} > T.float32(0))", r, "T.float32(0)")


def _pv(wr: _Writer, R: int, CW: int) -> list[str]:
    """acc = alpha acc + P_blk V_blk (acc = o's rows) for the live rows: tiles of R rows x CW columns
    (then W, then single columns) held in ACC, each V load shared by the tile's rows; keys in
    order (one FMA per key: a row's bits do not depend on its mates)."""
    t, W = wr.t, wr.W
    levels = [(CW, "T.int64(0)", f"dv // {_i(CW)} * {_i(CW)}")]
    if W > 1:
        levels.append((W, f"dv // {_i(CW)} * {_i(CW)}", f"dv // {_i(W)} * {_i(W)}"))
    vec = (lambda n: f"for l in T.vectorized({_i(n)}):") if W > 1 else (lambda n: f"for l in range({_i(n)}):")

    def rows_pv(rows: list[str]) -> list[str]:
        out = []
        for cw, lo, hi in levels:
            out += [f"for tb in range(({hi} - {lo}) // {_i(cw)}):", f"    t0: T.let[T.int64] = {lo} + tb * {_i(cw)}"]
            for u, r in enumerate(rows):
                out += ["    " + vec(cw), f"        ACC[{u * cw} + l] = O[({r}) * ldo + t0 + l] * AL[{r} - i0]"]
            out += ["    for c in range(bc):", "        vo: T.let[T.int64] = (j0 + c) * ldv + t0"]
            for u, r in enumerate(rows):
                out += ["        " + vec(cw),
                        f"            ACC[{u * cw} + l] = {_fma(t, wr.st('c', f'{r} - i0'), 'V[vo + l]', f'ACC[{u * cw} + l]')}"]
            for u, r in enumerate(rows):
                out += ["    " + vec(cw), f"        O[({r}) * ldo + t0 + l] = ACC[{u * cw} + l]"]
        out += [f"for tt in range({levels[-1][2]}, dv):"]
        for r in rows:
            out += [f"    SC[0] = O[({r}) * ldo + tt] * AL[{r} - i0]",
                    "    for c in range(bc):",
                    f"        SC[0] = {_fma(t, wr.st('c', f'{r} - i0'), 'V[(j0 + c) * ldv + tt]', 'SC[0]')}",
                    f"    O[({r}) * ldo + tt] = SC[0]"]
        return out

    group = [f"i0 + rg * {_i(R)} + {_i(u)}" for u in range(R)]
    live = " & ".join(f"(LIVE[rg * {_i(R)} + {_i(u)}] != 0)" for u in range(R))
    return ([f"for rg in range(br // {_i(R)}):", f"    if {live}:"] + _indent(rows_pv(group), "        ")
            + ["    else:", f"        for u in range({_i(R)}):", f"            if LIVE[rg * {_i(R)} + u] != 0:"]
            + _indent(rows_pv([f"i0 + rg * {_i(R)} + u"]), "                ")
            + [f"for rr in range(br // {_i(R)} * {_i(R)}, br):", "    if LIVE[rr] != 0:"]
            + _indent(rows_pv(["i0 + rr"]), "        "))


def _finish(wr: _Writer, norm: str) -> list[str]:
    """O = acc / l: a row with no kept key is NaN; no keys at all (lk = 0): the empty sum 0 (lssar:
    acc / sum q, 0 for a uniform row or an all-zero R, NaN for a non-finite l_i). lse: -inf for a
    row with no kept key, NaN for a NaN row."""
    f32, NEG_INF = wr.f32, wr.NEG_INF
    log_lines, lg = wr.emit(lambda e: e.log("L[r]"))
    dead = f"(L[r] == T.float32(0)) | (M[r] == {NEG_INF})"
    orow = "O[(i0 + r) * ldo + c]"
    if norm == "lssar":
        zero = f"(T.Select(RR[r] > {f32(R_BOUND)} * OFF[r], 0, 1) + T.Select(QS[r] >= T.float32(0.5), 0, 1) != 0)"
        fin = ["for r in range(br):",
               "    inv: T.let[T.float32] = T.float32(1) / QS[r]",
               "    for c in range(dv):",
               f"        {orow} = T.Select(lk == T.int64(0), T.float32(0), "
               f'T.Select(T.fabs(IL[r]) < T.float32("inf"), T.Select({zero}, T.float32(0), {orow} * inv), T.float32("nan")))']
    else:
        fin = ["for r in range(br):",
               "    inv: T.let[T.float32] = T.float32(1) / L[r]",
               "    for c in range(dv):",
               f"        {orow} = T.Select(lk == T.int64(0), T.float32(0), "
               f'T.Select({dead}, T.float32("nan"), {orow} * inv))']
    fin += ["    if has_lse != T.int64(0):"] + _indent(log_lines, "        ")
    fin += [f'        LSE[(i0 + r) * lsr] = T.Select(T.isnan(L[r]), T.float32("nan"), '
            f"T.Select({dead}, {NEG_INF}, M[r] + {lg}))"]
    return fin
