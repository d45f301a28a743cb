"""The kernel ABI: the entry point's arguments (``KernelABI``) and the one table of its return codes.

``KernelABI`` is the C entry point of a kernel, one type for every kind: a dense row kernel, a
selected (top-k) row kernel, a unary or a general matrix kernel. It knows the C parameters and
signature (the templates, the header and the manifest print them), the ctypes argument types
(``runtime.load_entry``) and what each pointer of a call spans and which it writes (``buffers``,
``written``: the emulator's generic driver, ``templates/driver.c.j2``); ``binding.bind`` binds
NumPy arrays to it. ``KernelABI.row``/``selected`` and ``MatrixProgram.abi`` build it.

Every exported function (``<name>``, a GEMM library's ``<gemm>_entry``) returns an ``int``: 0, or
one of the error codes below. This table is the only place their numbers and meanings are
written; everything else reads it:

* the C templates (entry.c.j2, matrix_entry.c.j2, supported.c.j2, gemm_tu.c.j2, kernel.c.j2's
  comment) get it as the Jinja global ``err`` (``return {{ err.ENULL }};`` renders ``return 1;``)
  and ``backends.entry.matrix_entry`` takes its check codes from it;
* the exported header's ``#define <NAME>_<SUFFIX> <code>`` lines, their comments and the
  manifest's ``errors`` come from ``error_docs``;
* ``Kernel`` raises ``failure(name, rc)`` for a nonzero code (the exception class and message of
  the code's row), and ``kernel.check_name`` keeps kernel names from clashing with the macros.

A low layer: imports nothing of softgen but ``errors`` and ``ir``; ``KernelABI`` holds no backend
knowledge beyond the C types of the exported signature.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from types import SimpleNamespace

from .errors import TargetNotSupportedError, UsageError
from .ir import INDEX_MAX_N, Program

# The kinds of entry point (ABIs), by the arguments they take:
ROW = "row"             # dense rows: (x, y, rows, n, ldx, ldy[, per-row parameters])
SELECTED = "selected"   # selected (top-k) rows: (x, indices, weights, rows, n, ldx, ldo)
UNARY = "unary"         # matrix op, one input: rows of x are a batch of m x n matrices (…, m)
GENERAL = "general"     # matrix op, several matrices: (inputs, outputs, batch, dims, lds)
GEMM = "gemm"           # a GEMM library's <gemm>_entry (backends/gemm.py)
ATTENTION = "attention"  # streaming attention: (q, k, v, o, dims, per-head strides[, mask], kv_lengths, lse)
KINDS = (ROW, SELECTED, UNARY, GENERAL, GEMM, ATTENTION)


@dataclass(frozen=True)
class ErrorCode:
    """One return code. ``str()`` is the number, so templates write ``{{ err.ENULL }}``."""

    code: int
    suffix: str                       # the header macro: <NAME>_<suffix>
    doc: str                          # its meaning in the header and manifest (str.format fields:
                                      # max_n, requires, name, nulls, ld, width)
    message: str = ""                 # what Kernel raises: "<name> returned error <code>: <message>"
    exception: type[Exception] = RuntimeError
    abis: frozenset = frozenset(KINDS)   # the kinds of entry point that can return it
    docs: dict = field(default_factory=dict)   # kind -> doc, where a kind words it differently

    def __str__(self) -> str:
        return str(self.code)

    def __int__(self) -> int:
        return self.code

    def describe(self, kind: str, **fields) -> str:
        return self.docs.get(kind, self.doc).format(**fields)


_ROWS = frozenset((ROW, SELECTED))
_MATRIX = frozenset((UNARY, GENERAL, ATTENTION))

OK = ErrorCode(0, "OK", "success")
ENULL = ErrorCode(1, "ENULL", "{nulls} is NULL while rows and n are nonzero", "NULL pointer with nonzero sizes",
                  docs={GENERAL: "a pointer is NULL while its matrix is not empty",
                        ATTENTION: "q, k, v, o (or SOFT's landmarks) is NULL while its array is not empty"})
ESTRIDE = ErrorCode(2, "ESTRIDE", "ldx < n or {ld} < {width}", "row stride smaller than the row",
                    docs={GENERAL: "an ld is below its row length",
                          ATTENTION: "a stride is negative, or o_sr < dv (o's rows would overlap); three-phase, "
                                     "Sinkhorn, SOFT (not streaming): also a q/k/v (landmarks) row stride below d/dv, or mask_sc != 1"})
EOVERFLOW = ErrorCode(3, "EOVERFLOW", "rows * stride does not fit in the address space",
                      "rows * stride overflows the address space",
                      docs={GENERAL: "a matrix, or the scratch, does not fit in the address space",
                            ATTENTION: "an array's extent (strides x counts) does not fit in the address space"})
ETOOLONG = ErrorCode(4, "ETOOLONG", "a row is longer than {max_n} elements: element indices are float32 in the kernel",
                     f"rows longer than {INDEX_MAX_N} elements (the kernel indexes elements in float32)",
                     ValueError, _ROWS | _MATRIX,
                     docs={GENERAL: "a row or column index exceeds {max_n}: indices are float32 in the kernel",
                           ATTENTION: "lk exceeds {max_n} (top-k attention: key indices are float32 in the kernel)"})
EMATRIX = ErrorCode(5, "EMATRIX", "m is 0 or does not divide rows",
                   "the rows are not a whole number of matrices (attention: hkv is 0 or does not divide hq; "
                   "Sinkhorn: lse given; SOFT: kv_lengths or lse given, m = 0, or a tied kernel's lk != lq)",
                   ValueError, frozenset((UNARY, ATTENTION)),
                   docs={ATTENTION: "hkv is 0 or does not divide hq (grouped-query heads); Sinkhorn: also lse not "
                                    "NULL (no per-row normalizer); SOFT: also kv_lengths or lse not NULL, m = 0 "
                                    "(given landmarks), or a tied kernel's lk != lq"})
ENOMEM = ErrorCode(6, "ENOMEM", "the scratch cannot be allocated", "out of memory for scratch vectors",
                   RuntimeError, _MATRIX, docs={ATTENTION: "K^T (the size of K, for Lq > 16), or the three-phase "
                                                     "form's (Sinkhorn's, SOFT's) scratch, cannot be allocated"})
ESQUARE = ErrorCode(7, "ESQUARE", "the matrices are not square (n != m)", "the matrices are not square",
                    ValueError, frozenset((UNARY,)))
ECPU = ErrorCode(8, "ECPU", "the CPU lacks the target's instructions ({requires}): see {name}_supported()",
                 "this CPU lacks the instructions of the kernel's target", TargetNotSupportedError)

ETHREADS = ErrorCode(9, "ETHREADS", "threads < 0 (a call of {name}_mt: 0 is auto, N at most N threads)",
                     "a negative thread count (threads: 0 or None is auto, N at most N threads)",
                     UsageError, _ROWS | _MATRIX)

ERRORS = (OK, ENULL, ESTRIDE, EOVERFLOW, ETOOLONG, EMATRIX, ENOMEM, ESQUARE, ECPU, ETHREADS)
BY_CODE = {e.code: e for e in ERRORS}
err = SimpleNamespace(**{e.suffix: e for e in ERRORS})   # the templates' ``err``
assert len(BY_CODE) == len(ERRORS) == len(vars(err))


def failure(name: str, rc: int) -> Exception:
    """The exception for entry point ``name`` having returned the nonzero code ``rc``."""
    e = BY_CODE.get(rc) if rc else None
    return (e.exception if e else RuntimeError)(f"{name} returned error {rc}: {e.message if e else 'unknown'}")


def returned(kind: str, *, indexes: bool = False, square: bool = False,
             threads: bool = False) -> tuple[ErrorCode, ...]:
    """The codes an entry point of ``kind`` can return, in order: ETOOLONG only if it indexes
    elements (``indexes``), ESQUARE only if its matrices must be square, ETHREADS also for a
    matrix kernel with ``<name>_mt`` (``threads``)."""
    return tuple(e for e in ERRORS if (kind in e.abis or (e is ETHREADS and threads))
                 and (e is not ETOOLONG or indexes) and (e is not ESQUARE or square))


def error_docs(kind: str, *, name: str, max_n: int | None, requires=(), square: bool = False,
               nulls=("x", "y"), ld: str = "ldy", width: str = "n",
               threads: bool = False) -> dict[int, tuple[str, str]]:
    """code -> (header macro suffix, meaning) for an entry point of ``kind``: the header's
    ``#define`` lines and the manifest's ``errors``. ``nulls``, ``ld``, ``width``: the row
    ABIs' pointers checked for NULL, output stride and output row width."""
    fields = {"max_n": max_n, "requires": ", ".join(requires), "name": name,
              "nulls": " or ".join(nulls), "ld": ld, "width": width}
    out = {e.code: (e.suffix, e.describe(kind, **fields)) for e in returned(kind, indexes=bool(max_n), square=square,
                                                                              threads=threads)}
    if not requires:
        out[ECPU.code] = (ECPU.suffix, "never returned: the target needs no instruction-set extension")
    return out


# -- the entry point's arguments ------------------------------------------------------------------
Matrices = tuple[tuple[str, tuple[str, str]], ...]   # (name, (row dim, column dim)) per matrix


@dataclass(frozen=True)
class KernelABI:
    """The C entry point of a kernel, by ``kind``:

    * ``ROW``: ``int name(const float *x, float *y, size_t rows, size_t n, size_t ldx, size_t ldy,
      const float *<row param>...)``: rows of n floats, one float per row per row parameter;
    * ``SELECTED``: ``int name(const float *x, int64_t *indices, float *weights, size_t rows,
      size_t n, size_t ldx, size_t ldo)``: the min(k, n) selected entries of each row;
    * ``UNARY``: ``int name(const float *x, float *y, size_t rows, size_t n, size_t ldx,
      size_t ldy, size_t m)`` (rows = batch * m; a square program checks n == m);
    * ``GENERAL``: ``int name(const float *<input>..., float *<output>..., size_t batch,
      size_t <dim>..., size_t ld<matrix>...)`` over inputs then outputs;
    * ``ATTENTION``: ``int name(const float *q, const float *k, const float *v, float *o, size_t
      batch, hq, hkv, lq, lk, d, dv, ptrdiff_t <q, k, v, o>_s<b, h, r>...[, const float|uint8_t
      *mask, ptrdiff_t mask_s<b, h, r, c>], const int32_t *kv_lengths, float *lse, ptrdiff_t
      lse_s<b, h, r>)``: strides in elements, rows of q/k/v/o contiguous (``ATTENTION_ARGS``).

    A matrix kernel's every matrix is ``batch * rows`` rows with one row stride: matrix k's row
    i is row k * rows + i."""
    kind: str
    inputs: Matrices = ()          # matrix kinds: the matrices' names and shapes
    outputs: Matrices = ()
    dims: tuple[str, ...] = ()     # matrix kinds: the dimension names
    row_params: tuple[str, ...] = ()   # ROW: the per-row parameters, in argument order
    k: int | None = None           # SELECTED: entries selected per row
    max_n: int | None = None       # the longest row (or indexed dimension) it takes: ETOOLONG beyond
    threads: bool = False          # a matrix kernel with ``<name>_mt`` (streaming attention)
    mask: str | None = None        # ATTENTION: the mask's kind, "additive" (float) or "bool" (uint8), or None
    landmarks: bool = False        # ATTENTION: SOFT's given landmarks (m x d per (batch, head)) in, m an argument
    mask_rows: bool = False        # ATTENTION: the mask's key axis must have unit stride (the forms that do not stream)

    @classmethod
    def attention(cls, inputs: Matrices, outputs: Matrices, dims, mask: str | None,
                  max_n: int | None = None, landmarks: bool = False) -> "KernelABI":
        """The streaming attention entry (``ATTENTION``): every dimension and stride explicit;
        ``max_n``: the longest lk (top-k attention indexes keys in float32); ``landmarks``: SOFT's
        landmarks input (``landmarks, m, landmarks_s<b, h, r>`` after the mask's arguments)."""
        return cls(ATTENTION, inputs, outputs, tuple(dims), threads=True, mask=mask, max_n=max_n,
                   landmarks=landmarks)

    @classmethod
    def row(cls, row_params=(), max_n: int | None = None) -> "KernelABI":
        return cls(ROW, row_params=tuple(row_params), max_n=max_n)

    @classmethod
    def selected(cls, k: int, max_n: int | None = None) -> "KernelABI":
        return cls(SELECTED, k=k, max_n=max_n)

    @classmethod
    def of_rows(cls, p: Program) -> "KernelABI":
        """The entry point of row program ``p``: selected if its output is, else dense rows."""
        if p.op(p.output()) == "output_selected":
            return cls.selected(p.attrs(p.args(p.output())[0])["k"], p.max_n())
        return cls.row(p.row_params(), p.max_n())

    @property
    def matrix(self) -> bool:
        return self.kind in _MATRIX

    @property
    def style(self) -> str:
        """A matrix kernel's kind, ``unary`` or ``general`` (attention's: general, several arrays)."""
        return GENERAL if self.kind == ATTENTION else self.kind

    @property
    def matrices(self) -> Matrices:
        return self.inputs + self.outputs

    @property
    def square(self) -> bool:
        """A unary program whose matrices are square (the entry checks n == m)."""
        return self.kind == UNARY and self.inputs[0][1][0] == self.inputs[0][1][1]

    def params(self) -> list[tuple[str, str]]:
        """(C type, name) of every argument, in order."""
        sizes = [("size_t", v) for v in ("rows", "n", "ldx")]
        if self.kind == ROW:
            return [("const float *", "x"), ("float *", "y")] + sizes + [("size_t", "ldy")] + \
                [("const float *", rp) for rp in self.row_params]
        if self.kind == SELECTED:
            return [("const float *", "x"), ("int64_t *", "indices"), ("float *", "weights")] + sizes + \
                [("size_t", "ldo")]
        if self.kind == UNARY:
            return [("const float *", "x"), ("float *", "y")] + sizes + [("size_t", "ldy"), ("size_t", "m")]
        if self.kind == ATTENTION:
            mtype = "const uint8_t *" if self.mask == "bool" else "const float *"
            return [("const float *", a) for a in "qkv"] + [("float *", "o")] + \
                [("size_t", d) for d in ATTENTION_DIMS] + \
                [("ptrdiff_t", f"{a}_s{s}") for a in "qkvo" for s in "bhr"] + \
                ([(mtype, "mask")] + [("ptrdiff_t", f"mask_s{s}") for s in "bhrc"] if self.mask else []) + \
                ([("const float *", "landmarks"), ("size_t", "m")] + [("ptrdiff_t", f"landmarks_s{s}") for s in "bhr"]
                 if self.landmarks else []) + \
                [("const int32_t *", "kv_lengths"), ("float *", "lse")] + [("ptrdiff_t", f"lse_s{s}") for s in "bhr"]
        return [("const float *", nm) for nm, _ in self.inputs] + \
            [("float *", nm) for nm, _ in self.outputs] + [("size_t", "batch")] + \
            [("size_t", d) for d in self.dims] + [("size_t", f"ld{nm}") for nm, _ in self.matrices]

    def param_list(self) -> str:
        """The C parameter list, ``const float *x, ...``."""
        return ", ".join(f"{t}{'' if t.endswith('*') else ' '}{n}" for t, n in self.params())

    def signature(self, name: str) -> str:
        return f"int {name}({self.param_list()})"

    def argtypes(self, mt: bool = False) -> list:
        """The ctypes argument types of the entry point (pointers are passed as addresses); ``mt``:
        of the extended entry ``<name>_mt``, which takes an ``int threads`` last."""
        return [ctypes.c_void_p if t.endswith("*") else ctypes.c_ssize_t if t == "ptrdiff_t" else ctypes.c_size_t
                for t, _ in self.params()] + \
            ([ctypes.c_int] if mt else [])

    @property
    def threaded(self) -> bool:
        """Whether the kernel has the extended entry ``<name>_mt(..., int threads)``: every kind
        (row kinds: rows split across the library's thread pool; matrix kinds: the batch's matrices,
        streaming attention: batch x query blocks), not a GEMM library's entry."""
        return self.kind in _ROWS | _MATRIX

    def mt_signature(self, name: str) -> str:
        """The extended entry point's signature: the entry's parameters, then ``int threads``."""
        return f"int {name}_mt({self.param_list()}, int threads)"

    @property
    def written(self) -> tuple[str, ...]:
        """The pointer arguments the kernel writes (its outputs)."""
        if self.kind == SELECTED:
            return ("indices", "weights")
        if self.kind == GENERAL:
            return tuple(nm for nm, _ in self.outputs)
        if self.kind == ATTENTION:
            return ("o", "lse")
        return ("y",)

    def buffers(self, args) -> list[tuple[int, bool] | None]:
        """What each argument of the call ``args`` (the entry point's arguments, pointers as
        addresses) spans: None for a size, else (bytes from the pointer that the kernel may read or
        write, whether it writes them). The emulator drivers copy these in and out."""
        names = [nm for _, nm in self.params()]
        v = dict(zip(names, args))

        def span(rows: int, ld: int, width: int, item: int = 4) -> int:
            return item * ((rows - 1) * ld + width) if rows and width else 0

        if self.kind == SELECTED:
            sizes = {"x": span(v["rows"], v["ldx"], v["n"]), "indices": 8 * v["rows"] * v["ldo"],
                     "weights": 4 * v["rows"] * v["ldo"]}
        elif self.kind == GENERAL:
            sizes = {nm: span(v["batch"] * v[r], v[f"ld{nm}"], v[c]) for nm, (r, c) in self.matrices}
        elif self.kind == ATTENTION:
            def extent(a, heads, rows, width, item=4, axes="bhr"):
                counts = dict(zip(axes, (v["batch"], heads, rows, width)))
                if not all(counts.values()):
                    return 0
                return item * (1 + sum((counts[x] - 1) * v[f"{a}_s{x}"] for x in axes)
                               + (width - 1 if "c" not in axes else 0))
            hq, hkv, lq, lk = v["hq"], v["hkv"], v["lq"], v["lk"]
            sizes = {"q": extent("q", hq, lq, v["d"]), "k": extent("k", hkv, lk, v["d"]),
                     "v": extent("v", hkv, lk, v["dv"]), "o": extent("o", hq, lq, v["dv"]),
                     "lse": extent("lse", hq, lq, 1), "kv_lengths": 4 * v["batch"]}
            if self.mask:
                sizes["mask"] = extent("mask", hq, lq, lk, 1 if self.mask == "bool" else 4, "bhrc")
            if self.landmarks:
                sizes["landmarks"] = extent("landmarks", hq, v["m"], v["d"])
        else:
            sizes = {"x": span(v["rows"], v["ldx"], v["n"]), "y": span(v["rows"], v["ldy"], v["n"])}
            sizes.update({rp: 4 * v["rows"] for rp in self.row_params})
        return [(sizes[nm], nm in self.written) if t.endswith("*") else None for t, nm in self.params()]

    def error_docs(self, name: str, requires=()) -> dict[int, tuple[str, str]]:
        """code -> (header macro suffix, meaning) of the codes this entry point returns: the
        header's ``#define`` lines and the manifest's ``errors`` (``error_docs``)."""
        rows = {}
        if self.kind == SELECTED:
            rows = {"nulls": ("x", "indices", "weights"), "ld": "ldo", "width": "min(k, n)"}
        elif self.kind == ROW:
            rows = {"nulls": ("x", "y"), "ld": "ldy", "width": "n"}
        return error_docs(self.kind, name=name, max_n=self.max_n, requires=requires,
                          square=self.square, threads=self.threads, **rows)

    @property
    def matrix_index(self) -> str:
        """The letter the docs use for a matrix of the batch: k, or b when a matrix is named k
        (attention's keys)."""
        return "b" if any(nm == "k" for nm, _ in self.matrices) else "k"

    def arg_docs(self) -> dict[str, str]:
        """What each argument of a matrix kernel means, for headers and manifests."""
        if self.kind == ATTENTION:
            return attention_arg_docs(self.mask, self.landmarks)
        if self.kind == UNARY:
            (x, (r, c)), = self.inputs
            return {"x": f"input: rows / m matrices of m x n floats ({r} x {c}), row r at x + r*ldx",
                    "y": "output, same layout with ldy; may equal x (in place, then ldy == ldx)",
                    "rows": "total rows, batch * m", "n": "row length (floats per row)",
                    "ldx": "row stride of x in elements (>= n)", "ldy": "row stride of y in elements (>= n)",
                    "m": "rows per matrix" + (" (square: must equal n)" if self.square else "")}
        docs = {}
        for role, mats in (("input", self.inputs), ("output", self.outputs)):
            for nm, (r, c) in mats:
                b = self.matrix_index
                docs[nm] = (f"{role}: batch matrices of {r} x {c} floats; row i of matrix {b} at "
                            f"{nm} + ({b}*{r} + i)*ld{nm}" + ("; must not overlap the inputs"
                                                             if role == "output" else ""))
        docs["batch"] = "number of matrices (the product of the leading axes)"
        for d in self.dims:
            uses = [f"{('rows', 'columns')[ax]} of {nm}" for nm, shape in self.matrices
                    for ax in (0, 1) if shape[ax] == d]
            docs[d] = "the " + ", ".join(uses)
        docs.update({f"ld{nm}": f"row stride of {nm} in elements (>= {c})" for nm, (_, c) in self.matrices})
        return docs


ATTENTION_DIMS = ("batch", "hq", "hkv", "lq", "lk", "d", "dv")


def attention_arg_docs(mask: str | None, landmarks: bool = False) -> dict[str, str]:
    """What each argument of the streaming attention entry (``ATTENTION``) means."""
    docs = {"q": "input: query row i of head h of batch b at q + b*q_sb + h*q_sh + i*q_sr (d floats, contiguous)",
            "k": "input: key row j of kv head g at k + b*k_sb + g*k_sh + j*k_sr (d floats, contiguous)",
            "v": "input: value row j of kv head g at v + b*v_sb + g*v_sh + j*v_sr (dv floats, contiguous)",
            "o": "output: row i of head h at o + b*o_sb + h*o_sh + i*o_sr (dv floats); must not overlap the "
                 "inputs, nor its own rows",
            "batch": "B, the batch", "hq": "query heads (of q and o)",
            "hkv": "key/value heads; hkv divides hq: query head h reads kv head h / (hq / hkv) (GQA)",
            "lq": "query rows per head", "lk": "key rows per head (causal: bottom-right aligned, "
                                                "query i sees keys j <= i + lk - lq)",
            "d": "the q/k row length", "dv": "the v/o row length"}
    for a in "qkvo":
        docs[f"{a}_sb"] = f"{a}'s strides in elements: batch ({a}_sb), head ({a}_sh), row ({a}_sr); >= 0 " \
                          f"(0 broadcasts)"
    if mask:
        kind = "uint8 keep-mask (nonzero keeps the key)" if mask == "bool" else "float32 added to the scores"
        docs["mask"] = f"optional (NULL: none): a {kind}; entry (b, h, i, j) at mask + b*mask_sb + h*mask_sh + " \
                       f"i*mask_sr + j*mask_sc; strides >= 0, 0 broadcasts"
    if landmarks:
        docs["landmarks"] = "input: SOFT's landmark row l of query head h of batch b at landmarks + b*landmarks_sb + " \
                            "h*landmarks_sh + l*landmarks_sr (d floats, contiguous); strides >= 0, 0 broadcasts"
        docs["m"] = "landmarks per (batch, head)"
        docs["landmarks_sb"] = "landmarks' strides in elements: batch, head, row (landmarks_sb, _sh, _sr)"
    docs["kv_lengths"] = "optional (NULL: all lk keys): per batch b, keys j >= kv_lengths[b] are masked " \
                         "(< 0 counts as 0, > lk as lk); key blocks past it are skipped"
    docs["lse"] = "optional output (NULL: not wanted): per (b, h, i) at lse + b*lse_sb + h*lse_sh + " \
                  "i*lse_sr the log-sum-exp of the row's masked scaled scores (softmax; stablemax: the log " \
                  "of its weights' sum); -inf for a fully masked row, NaN for a NaN row"
    return docs
