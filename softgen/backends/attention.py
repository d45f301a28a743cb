"""The C of the streaming attention phase (``matrix.AttentionPhase``, from
``passes.stream_attention``): one static function per phase, rendered from
``templates/attention.c.j2`` over the target's virtual ISA (``V_*`` macros) and the vector exp of
``vmath.h.j2``; the matrix entry point (``backends.entry``) calls it once per matrix of the batch.

Why a dedicated micro-kernel rather than ``backends/gemm.py``'s tiles: the packed register-blocked
GEMM pays for packing B per call, which a Br x Bc block (Br = 1..16 rows, decoding) never
amortises, and its epilogue interface sees one tile at a time, while the online softmax needs the
whole score row of the block (its max) before the exponentials and the P V update. So the score
block S = s Q_blk K_blk^T is computed as dot products vectorised over d (two accumulators, a
masked tail load), the row max / exp / sum run vectorised over the block's keys, and P V
accumulates four keys per pass over each output row, vectorised over dv, straight into o's rows
(the Br x dv accumulator is o itself: no allocation). softmax (online rescaling), stablemax and
softplus_l1 (no rescaling; softplus_l1's rows whose largest kept score is below ``SOFTPLUS_TINY``
take a second pass over the key blocks weighted e^(S - max S), as the three-phase form) and lssa
(no rescaling; 1/|q_i| per row, unit keys in kt, or decoding 1/|k_j| from the dot products' loads;
N_i per row before its key blocks) and lssar (lssa's weights P kept per row of the query block in a
first pass over K, with their sum and max; then (R / max R)^p from P in place, no rescaling, and P V
panel by panel from zero accumulators, as the single-block mode's ``__pw``) stream; the
template's ``normalize_block`` macro holds each normalizer's per-block math.

The threaded entry ``__all`` implements the explicit-stride ABI (``abi.ATTENTION``): heads and
GQA (query head h reads kv head h / (hq / hkv)) in the kernel, a strided mask (uint8 keep-mask or
float32 additive, fixed at compile time; stride 0 broadcasts), key-padding lengths (the blocks
past a batch's length are skipped) and the optional log-sum-exp output.
"""
from __future__ import annotations

import math

from ..abi import ATTENTION, KernelABI
from ..errors import BuildError
from ..matrix import AttentionPhase
from ..ops.attention import SOFTPLUS_TINY, _lssar_params
from ..passes import STREAMING_NORMALIZERS
from ..reference import R_BOUND
from ..render import env, flit
from .gemm import transpose_stages

# Query rows per task of the threaded form (rounded up to a multiple of br): fixed, so results do
# not depend on the thread count; K^T is transposed once per (batch, kv head), panel by panel, by
# the first tasks of its heads that run (O(Lk d) against a task's O(QCH Lk d) multiply-adds).
TASK_ROWS = 64
# threads=auto: one thread per this many multiply-adds of work (~0.1 ms at a few GFLOP/s)
TASK_GRAIN = 1 << 19
# Decoding (Lq <= SMALL_LQ) of softmax attention on C with Lk >= 2 SPLIT_KEYS: the keys of a head are
# split into chunks of this many (flash-decoding: per chunk (m, l, O), merged by the head's last
# chunk task), so a few heads still fill the threads and the tasks are small (~10 us at d = 64).
# Fixed, so results depend on the shape only, never on the thread count.
SPLIT_KEYS = 1024


def task_rows(ph: AttentionPhase) -> int:
    """The query rows of one task of the threaded form: TASK_ROWS rounded up to a multiple of br."""
    return -(-TASK_ROWS // ph.br) * ph.br


def split_keys(ph: AttentionPhase) -> int:
    """The key chunk of split decoding for ``ph`` on a backend with ``split_decoding`` (0: no split):
    softmax (its partials (m, l, O) merge by the online rescale; the other normalizers' do not)."""
    return SPLIT_KEYS if ph.normalizer == "softmax" else 0


def score_rows(vector_registers: int) -> int:
    """Query rows of a score tile (x 4 vectors of keys): 4 where 4 x 4 accumulators, 4 K vectors
    and a broadcast fit the register file (32 registers: avx512), else 2."""
    return 4 if vector_registers >= 32 else 2


def attention_function(ph: AttentionPhase, fname: str, tasks: bool = False, vector_registers: int = 16,
                       abi: KernelABI | None = None, tvm: bool = False, shifted_exp: bool = False,
                       topk: dict | None = None, lanes: int = 1, tvm_scratch: dict | None = None) -> str:
    """The C function ``fname(lq, lk, klen, d, dv, q, ldq, k, ldk, v, ldv[, mask, msr, msc], o, ldo,
    lse, lsr, r0, r1, kt)`` (query rows [r0, r1) of one (batch, head) matrix); ``tasks``: also
    ``fname__all(<the parameters of abi, an abi.ATTENTION>, threads)``: the checks of the
    explicit-stride ABI and the batch x heads x query chunks split into tasks across the thread pool.
    ``tvm``: ``fname`` only calls ``fname__tvm``, TVM's compiled phase (``backends.tvm_attention``);
    the checks and the tasks stay these (no K transpose: TVM's function reads K's rows).
    ``shifted_exp``: vmath has sg_exp_shifted (``render.scaled_exp``), which the single-block mode's
    e^(S - max S) uses (its row sums are >= 1).
    ``topk``: top-k attention's selection (``backends.c.topk_stream``: the insertion network's C,
    written once in ``c.TopKRed``, or radix select over a br x lk score tile).
    ``lanes``: the target's vector lanes; at 4+ K^T is packed by lanes x lanes register
    transposes (``gemm.transpose_stages``), else one scalar store per element.
    ``tvm_scratch`` (``tvm``): TVM's function's scratch, ``kn_rows`` (lssa, lssar: the key norms for
    calls of more query rows) and ``pb_tile`` (lssar: floats of P per key block)."""
    if ph.normalizer not in STREAMING_NORMALIZERS:
        raise BuildError(f"the C backend streams attention with {', '.join(STREAMING_NORMALIZERS)}, "
                         f"not {ph.normalizer!r}")
    if tasks and (abi is None or abi.kind != ATTENTION):
        raise BuildError(f"{fname}: the threaded form needs the attention ABI (abi.ATTENTION)")
    if (ph.normalizer == "topk_softmax") != (topk is not None) or (topk is not None and tvm):
        raise BuildError(f"{fname}: streaming top-k attention is the C backend's, with its selection (topk=)")
    comment = (f"{fname}: {ph.describe()}. Causal blocks entirely above the bottom-right diagonal are skipped, "
               f"the diagonal block masked as its scores are formed." if ph.causal else f"{fname}: {ph.describe()}.")
    strides = [] if abi is None else [nm for t, nm in abi.params() if t == "ptrdiff_t"]
    return env().get_template("attention.c.j2").render(
        fname=fname, comment=comment, br=ph.br, bc=ph.bc, scale=flit(ph.scale), causal=ph.causal,
        mask=ph.mask is not None, mask_kind=ph.mask_kind, mtype="uint8_t" if ph.mask_kind == "bool" else "float",
        normalizer=ph.normalizer, cosine=ph.normalizer in ("lssa", "lssar"), wide=ph.wide if not tvm else 0,
        one_exp="sg_exp_shifted" if shifted_exp else "sg_exp_nonpos", tasks=tasks, topk=topk, renorm=ph.renormalize,
        qch=task_rows(ph), sr=score_rows(vector_registers), grain=TASK_GRAIN,
        split=split_keys(ph) if tasks and not tvm else 0,
        lanes=lanes, tpack=transpose_stages(lanes) if lanes >= 4 and not tvm else None,
        params=abi.param_list() if abi is not None else "", max_n=abi.max_n if abi is not None else None,
        strides=strides, tvm=tvm, tiny=flit(SOFTPLUS_TINY),
        tvm_kn_rows=(tvm_scratch or {}).get("kn_rows", 0), tvm_pb_tile=(tvm_scratch or {}).get("pb_tile", 0),
        log_d=flit(math.log(ph.program.params["head_dim"])) if ph.normalizer in ("lssa", "lssar") else None,
        **(_lssar(ph.program.params) if ph.normalizer == "lssar" else {}))


def _lssar(params: dict) -> dict:
    """lssar's template values: p, offset_free_rows, R_BOUND and the C of q = x^p (x in [0, 1]):
    repeated squaring for integer p <= 64 in ``lssa._ipow``'s order, else e^(p log x)."""
    lp = _lssar_params(params.get("p"), params.get("offset_free_rows"))
    p = lp["p"]
    if p.is_integer() and p <= 64:
        lines, k, sq, acc, i = [], int(p), "x", None, 0
        while k:
            if k & 1:
                if acc is None:
                    acc = sq
                else:
                    lines.append(f"const VEC a{i} = V_MUL({acc}, {sq});")
                    acc, i = f"a{i}", i + 1
            k >>= 1
            if k:
                lines.append(f"const VEC s{i} = V_MUL({sq}, {sq});")
                sq, i = f"s{i}", i + 1
        lines.append(f"const VEC q = {acc};")
    else:
        lines = [f"const VEC q = sg_exp_nonpos(V_MUL(V_SET1({flit(p)}), sg_log(x)));"]
    return {"power": flit(p), "ofr": f"{lp['offset_free_rows']}u", "rbound": flit(R_BOUND), "pow_lines": lines}
