"""The kernel ABI's return codes: the one table of what each exported entry point returns.

Every exported function (``<name>``, a GEMM library's ``<gemm>_entry``) returns an ``int``: 0, or
one of the error codes below. This table is the only place their numbers and meanings are
written; everything else reads it:

* the C templates (entry.c.j2, matrix_entry.c.j2, supported.c.j2, gemm_tu.c.j2, kernel.c.j2's
  comment) get it as the Jinja global ``err`` (``return {{ err.ENULL }};`` renders ``return 1;``)
  and ``backends.c.matrix_entry`` takes its check codes from it;
* the exported header's ``#define <NAME>_<SUFFIX> <code>`` lines, their comments and the
  manifest's ``errors`` come from ``error_docs``;
* ``Kernel`` raises ``failure(name, rc)`` for a nonzero code (the exception class and message of
  the code's row), and ``kernel.check_name`` keeps kernel names from clashing with the macros.

A low layer: imports nothing of softgen but ``errors`` and ``ir``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from .errors import TargetNotSupportedError
from .ir import INDEX_MAX_N

# The kinds of entry point (ABIs), by the arguments they take:
ROW = "row"             # dense rows: (x, y, rows, n, ldx, ldy[, per-row parameters])
SELECTED = "selected"   # selected (top-k) rows: (x, indices, weights, rows, n, ldx, ldo)
UNARY = "unary"         # matrix op, one input: rows of x are a batch of m x n matrices (…, m)
GENERAL = "general"     # matrix op, several matrices: (inputs, outputs, batch, dims, lds)
GEMM = "gemm"           # a GEMM library's <gemm>_entry (backends/gemm.py)
KINDS = (ROW, SELECTED, UNARY, GENERAL, GEMM)


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
_MATRIX = frozenset((UNARY, GENERAL))

OK = ErrorCode(0, "OK", "success")
ENULL = ErrorCode(1, "ENULL", "{nulls} is NULL while rows and n are nonzero", "NULL pointer with nonzero sizes",
                  docs={GENERAL: "a pointer is NULL while its matrix is not empty"})
ESTRIDE = ErrorCode(2, "ESTRIDE", "ldx < n or {ld} < {width}", "row stride smaller than the row",
                    docs={GENERAL: "an ld is below its row length"})
EOVERFLOW = ErrorCode(3, "EOVERFLOW", "rows * stride does not fit in the address space",
                      "rows * stride overflows the address space",
                      docs={GENERAL: "a matrix, or the scratch, does not fit in the address space"})
ETOOLONG = ErrorCode(4, "ETOOLONG", "a row is longer than {max_n} elements: element indices are float32 in the kernel",
                     f"rows longer than {INDEX_MAX_N} elements (the kernel indexes elements in float32)",
                     ValueError, _ROWS | _MATRIX,
                     docs={GENERAL: "a row or column index exceeds {max_n}: indices are float32 in the kernel"})
EMATRIX = ErrorCode(5, "EMATRIX", "m is 0 or does not divide rows", "the rows are not a whole number of matrices",
                    ValueError, frozenset((UNARY,)))
ENOMEM = ErrorCode(6, "ENOMEM", "the scratch cannot be allocated", "out of memory for scratch vectors",
                   RuntimeError, _MATRIX)
ESQUARE = ErrorCode(7, "ESQUARE", "the matrices are not square (n != m)", "the matrices are not square",
                    ValueError, frozenset((UNARY,)))
ECPU = ErrorCode(8, "ECPU", "the CPU lacks the target's instructions ({requires}): see {name}_supported()",
                 "this CPU lacks the instructions of the kernel's target", TargetNotSupportedError)

ERRORS = (OK, ENULL, ESTRIDE, EOVERFLOW, ETOOLONG, EMATRIX, ENOMEM, ESQUARE, ECPU)
BY_CODE = {e.code: e for e in ERRORS}
err = SimpleNamespace(**{e.suffix: e for e in ERRORS})   # the templates' ``err``
assert len(BY_CODE) == len(ERRORS) == len(vars(err))


def failure(name: str, rc: int) -> Exception:
    """The exception for entry point ``name`` having returned the nonzero code ``rc``."""
    e = BY_CODE.get(rc) if rc else None
    return (e.exception if e else RuntimeError)(f"{name} returned error {rc}: {e.message if e else 'unknown'}")


def returned(kind: str, *, indexes: bool = False, square: bool = False) -> tuple[ErrorCode, ...]:
    """The codes an entry point of ``kind`` can return, in order: ETOOLONG only if it indexes
    elements (``indexes``), ESQUARE only if its matrices must be square."""
    return tuple(e for e in ERRORS if kind in e.abis and (e is not ETOOLONG or indexes)
                 and (e is not ESQUARE or square))


def error_docs(kind: str, *, name: str, max_n: int | None, requires=(), square: bool = False,
               nulls=("x", "y"), ld: str = "ldy", width: str = "n") -> dict[int, tuple[str, str]]:
    """code -> (header macro suffix, meaning) for an entry point of ``kind``: the header's
    ``#define`` lines and the manifest's ``errors``. ``nulls``, ``ld``, ``width``: the row
    ABIs' pointers checked for NULL, output stride and output row width."""
    fields = {"max_n": max_n, "requires": ", ".join(requires), "name": name,
              "nulls": " or ".join(nulls), "ld": ld, "width": width}
    out = {e.code: (e.suffix, e.describe(kind, **fields)) for e in returned(kind, indexes=bool(max_n), square=square)}
    if not requires:
        out[ECPU.code] = (ECPU.suffix, "never returned: the target needs no instruction-set extension")
    return out
