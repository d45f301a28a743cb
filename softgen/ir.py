"""softgen IR: a dataflow graph (networkx DiGraph) of row-level primitives.

A *program* computes one output row y from one input row x. Values have a shape: ``row`` (one value
per element), ``scalar`` (one value per row, e.g. a reduction result) or ``pair`` (a reduction
result of several scalars, ``OpSpec.items`` of them, each read with ``item``). Map ops broadcast scalars over rows. The IR says *what* is
computed; how many sweeps over memory that takes, and how each sweep is vectorised, is decided by
``softgen.passes`` and the backends.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import networkx as nx

from .errors import SoftgenError

ROW, SCALAR, PAIR = "row", "scalar", "pair"


@dataclass(frozen=True)
class OpSpec:
    arity: int
    kind: str  # input | const | param | map | reduce | item | materialize | output | guard
    doc: str
    result: str = ""  # fixed result shape; map ops derive theirs from their arguments
    items: int = 0    # pair results: how many scalars ``item`` can read


OPS: dict[str, OpSpec] = {
    "input": OpSpec(0, "input", "the input row x", ROW),
    "index": OpSpec(0, "input", "the element index j of each row entry, as a float (exact for rows "
                    "up to 2^24 elements, which kernels using it enforce)", ROW),
    "const": OpSpec(0, "const", "a scalar constant (attr value)", SCALAR),
    "param": OpSpec(0, "param", "a per-row scalar passed at call time (attr name): the kernel "
                    "takes one float per row for it", SCALAR),
    "add": OpSpec(2, "map", "a + b"),
    "sub": OpSpec(2, "map", "a - b"),
    "mul": OpSpec(2, "map", "a * b"),
    "div": OpSpec(2, "map", "a / b"),
    "max": OpSpec(2, "map", "max(a, b)"),
    "min": OpSpec(2, "map", "min(a, b)"),
    "neg": OpSpec(1, "map", "-a"),
    "abs": OpSpec(1, "map", "|a|"),
    "exp": OpSpec(1, "map", "e^a"),
    "log": OpSpec(1, "map", "natural log"),
    "log1p": OpSpec(1, "map", "log(1 + a), accurate for small a"),
    "log_ratio": OpSpec(2, "map", "log(a / b) without forming a / b: no underflow, no cancelling logs"),
    "recip": OpSpec(1, "map", "1 / a"),
    "finite_or_nan": OpSpec(1, "map", "a if a is finite else NaN (poisons a row, section 0)"),
    "fma": OpSpec(3, "map", "a * b + c with one rounding"),
    "poison": OpSpec(2, "map", "a if b is finite else NaN (carries a row's bad state, section 0; "
                     "unlike b * 0 no simplifier may fold it)"),
    "where_lt": OpSpec(4, "map", "c if a < b else d (piecewise maps; NaN a takes d)"),
    "exp_shift2": OpSpec(2, "map", "e^(s u) * 2^-E in extended-exponent form (attr scale s, default 1): no overflow for any u"),
    "sub_ln2": OpSpec(3, "map", "s u - E*ln2 + c with ln2 split in two constants, the low part "
                      "added to c, a scalar, so it leaves the loop (attr scale s, default 1)"),
    "where_ranked": OpSpec(6, "map", "c if (a, i) ranks at or above (t, it), i.e. a > t or (a == t "
                           "and i <= it), the order of a stable descending sort; else d (NaN a takes "
                           "d). Arguments a, i, t, it, c, d"),
    "reduce_max": OpSpec(1, "reduce", "max over the row", SCALAR),
    "reduce_sum": OpSpec(1, "reduce", "sum over the row (blocked, compensated)", SCALAR),
    "reduce_extexp": OpSpec(1, "reduce", "(V, E) with sum(e^(s u)) = V * 2^E (attr scale s)", PAIR, 2),
    "reduce_online": OpSpec(1, "reduce", "(m, d): m = max x, d = sum e^(s(x-m)); attr scale", PAIR, 2),
    "reduce_topk": OpSpec(2, "reduce", "selection of the attr k largest keys a (arg 0) with their "
                          "indices i (arg 1), larger a first, lower i first on ties; NaN keys are never "
                          "selected, and keys of -inf only through the fill of an output_selected. "
                          "Result (t, it, m, d): the k-th kept (key, index), (-inf, +inf) when fewer "
                          "than k keys are above -inf; m = the largest key; d = sum over the kept keys "
                          "of e^(a - m)", PAIR, 4),
    "item": OpSpec(1, "item", "component attr index of a pair", SCALAR),
    "materialize": OpSpec(1, "materialize", "store a row value to y; later sweeps reload it", ROW),
    "guard": OpSpec(1, "guard", "run program.fallback on the row unless |a| <= attr limit", SCALAR),
    "output": OpSpec(1, "output", "the output row y", ROW),
    "output_selected": OpSpec(2, "output", "the sparse output of a reduce_topk (arg 0): per row the "
                              "min(k, n) selected indices and the row value arg 1 evaluated at each "
                              "of them (x and index replaced by the selected key and index)", ROW),
    # matrix programs (softgen.matrix): phases over the rows of a matrix share per-row and
    # per-column vectors through these
    "colvec": OpSpec(0, "colvec", "element j of the per-column vector attr name", ROW),
    "size": OpSpec(0, "size", "the matrix's row count (attr axis='rows') or row length "
                   "(axis='cols') as a float", SCALAR),
    "emit": OpSpec(1, "emit", "store a per-row scalar into the per-row vector attr name", SCALAR),
    "colstore": OpSpec(1, "colstore", "store a row value into the per-column vector attr name", ROW),
    "colreduce_max": OpSpec(1, "colreduce", "per-column max across the rows into vector "
                            "<name>_m", ROW),
    "colreduce_sum": OpSpec(1, "colreduce", "per-column sum across the rows into vector "
                            "<name>_s", ROW),
    "colreduce_online": OpSpec(1, "colreduce", "per-column running (m, d) across the rows, "
                               "d = sum e^(s(x - m)), into vectors <name>_m, <name>_d; attr "
                               "scale s", ROW),
    "matrow": OpSpec(0, "matrow", "element j of the current row of matrix attr name (another "
                     "matrix of the swept matrix's shape, read element-wise)", ROW),
    "row_index": OpSpec(0, "size", "the index i of the current row in its matrix, as a float "
                        "(exact below 2^24 rows)", SCALAR),
    "mscalar": OpSpec(0, "mscalar", "the per-matrix scalar attr name, written by an earlier phase",
                      SCALAR),
    "mreduce_max": OpSpec(1, "mreduce", "max of a per-row scalar across the phase's rows into the "
                          "per-matrix scalar attr name (NaN propagates; a cols phase has one row: "
                          "it stores the value)", SCALAR),
    "mreduce_sum": OpSpec(1, "mreduce", "sum of a per-row scalar across the phase's rows into the "
                          "per-matrix scalar attr name", SCALAR),
}
ROOT_KINDS = ("output", "guard", "emit", "colstore", "colreduce", "mreduce")
# the initial value of a per-matrix scalar reduction
MREDUCE_INIT = {"mreduce_max": -math.inf, "mreduce_sum": 0.0}
# the state vectors of each column reduction, as (field, initial value)
COLREDUCE_FIELDS = {"colreduce_max": (("m", -math.inf),), "colreduce_sum": (("s", 0.0),),
                    "colreduce_online": (("m", -3.4028234663852886e38), ("d", 0.0))}
MATRIX_KINDS = ("colvec", "size", "emit", "colstore", "colreduce", "mscalar", "mreduce", "matrow")
TOPK_MAX = 64      # the insertion network keeps k (key, index) registers per lane and accumulator
INDEX_MAX_N = 2 ** 24  # float32 represents every integer up to here: the range of an index leaf
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # becomes a C argument name
_RESERVED = {"x", "y", "rows", "n", "ldx", "ldy", "ld", "r", "lo", "hi", "i", "k", "status"}
C_KEYWORDS = set("""auto break case char const continue default do double else enum extern float
for goto if inline int long register restrict return short signed sizeof static struct switch typedef
union unsigned void volatile while _Bool _Complex _Imaginary _Alignas _Alignof _Atomic _Generic
_Noreturn _Static_assert _Thread_local bool true false main""".split())


def c_name_ok(name) -> bool:
    """A lower-case identifier that can be pasted into C (after a prefix or alone)."""
    return isinstance(name, str) and bool(_PARAM_NAME.match(name)) and name not in C_KEYWORDS \
        and not name.startswith("sg_")


class IRError(SoftgenError):
    """An ill-formed IR program."""


class Program:
    """One normalisation as a DAG. Node ids are ints; node data: op, args (ordered), shape, attrs."""

    def __init__(self, name: str, params: dict | None = None, phase: str | None = None):
        self.name = name
        self.params = dict(params or {})
        self.phase = phase  # None: a row op; "rows" / "cols": a phase of a matrix program
        self.g = nx.DiGraph()
        self.fallback: Program | None = None
        self.notes: list[str] = []  # rewrites applied, for explain
        self._next = 0

    # -- construction -------------------------------------------------------------------------
    def add(self, op: str, *args: int, **attrs) -> int:
        spec = OPS.get(op)
        if spec is None:
            raise IRError(f"unknown IR op {op!r}")
        if len(args) != spec.arity:
            raise IRError(f"{op} takes {spec.arity} arguments, got {len(args)}")
        for a in args:
            if a not in self.g:
                raise IRError(f"{op}: argument %{a} does not exist")
        if spec.kind == "map":
            shape = ROW if any(self.shape(a) == ROW for a in args) else SCALAR
        else:
            shape = spec.result
        v = self._next
        self._next += 1
        self.g.add_node(v, op=op, args=tuple(args), shape=shape, attrs=dict(attrs))
        for a in args:
            self.g.add_edge(a, v)
        return v

    def const(self, value: float) -> int:
        return self.add("const", value=float(value))

    def input(self) -> "Value":
        return Value(self, self.add("input"))

    def _leaf(self, op: str, **attrs) -> "Value":
        """The program's leaf ``op`` with ``attrs`` (one node each), added if missing."""
        for v in self.g:
            if self.op(v) == op and self.attrs(v) == attrs:
                return Value(self, v)
        return Value(self, self.add(op, **attrs))

    def index(self) -> "Value":
        """The element index row leaf (one node per program)."""
        return self._leaf("index")

    def row_param(self, name: str) -> "Value":
        """A per-row scalar the caller passes (one float per row), e.g. a per-query scale."""
        return self._leaf("param", name=name)

    def colvec(self, name: str) -> "Value":
        """Element j of a per-column vector of the matrix program (e.g. Sinkhorn's v)."""
        return self._leaf("colvec", name=name)

    def size(self, axis: str) -> "Value":
        """The matrix's row count (``"rows"``) or row length (``"cols"``), as a float."""
        return Value(self, self.add("size", axis=axis))

    def matrow(self, name: str) -> "Value":
        """Element j of row i of matrix ``name`` while this phase is at row i, element j (a matrix
        of the same shape as the one swept: e.g. 2V - W in a GEMM epilogue over W)."""
        return self._leaf("matrow", name=name)

    def matrices(self) -> list[str]:
        """Names of the matrices this program reads element-wise (``matrow``), sorted."""
        return sorted({self.attrs(v)["name"] for v in self.g if self.op(v) == "matrow"})

    def row_index(self) -> "Value":
        """The index i of the current row in its matrix, as a float (one node per program)."""
        return self._leaf("row_index")

    def mscalar(self, name: str) -> "Value":
        """A per-matrix scalar an earlier phase wrote (``Value.mreduce``)."""
        return self._leaf("mscalar", name=name)

    def vector_names(self) -> tuple[list[str], list[str]]:
        """(per-row vectors, per-column vectors) this program reads or writes, sorted."""
        rows, cols = set(), set()
        for v in self.g:
            op, a = self.op(v), self.attrs(v)
            if op in ("param", "emit"):
                rows.add(a["name"])
            elif op in ("colvec", "colstore"):
                cols.add(a["name"])
            elif self.kind(v) == "colreduce":
                cols |= {f"{a['name']}_{f}" for f, _ in COLREDUCE_FIELDS[op]}
        return sorted(rows), sorted(cols)

    def mscalar_names(self) -> tuple[list[str], list[str]]:
        """(per-matrix scalars read, per-matrix scalars written), sorted."""
        read = {self.attrs(v)["name"] for v in self.g if self.op(v) == "mscalar"}
        written = {self.attrs(v)["name"] for v in self.g if self.kind(v) == "mreduce"}
        return sorted(read), sorted(written)

    def row_params(self) -> list[str]:
        """Names of the per-row parameters, in the order of the kernel's arguments."""
        return [self.attrs(v)["name"] for v in sorted(self.g) if self.op(v) == "param"]

    # -- queries ------------------------------------------------------------------------------
    def op(self, v: int) -> str:
        return self.g.nodes[v]["op"]

    def args(self, v: int) -> tuple[int, ...]:
        return self.g.nodes[v]["args"]

    def shape(self, v: int) -> str:
        return self.g.nodes[v]["shape"]

    def attrs(self, v: int) -> dict:
        return self.g.nodes[v]["attrs"]

    def kind(self, v: int) -> str:
        return OPS[self.op(v)].kind

    def items(self, v: int) -> int:
        """How many scalars a pair-shaped node holds (0 for other shapes)."""
        return OPS[self.op(v)].items if self.shape(v) == PAIR else 0

    def output(self) -> int:
        """The program's output node (kind output: a dense row or a selected output)."""
        (o,) = [v for v in self.g if self.kind(v) == "output"]
        return o

    def max_n(self) -> int | None:
        """The longest row kernels of this program handle (index leaves are float32), or None."""
        return INDEX_MAX_N if any(self.op(v) == "index" for v in self.g) else None

    def users(self, v: int) -> list[int]:
        return sorted(self.g.successors(v))

    def nodes(self, op: str | None = None) -> list[int]:
        return [v for v in self.topo() if op is None or self.op(v) == op]

    def topo(self) -> list[int]:
        return list(nx.lexicographical_topological_sort(self.g))

    def roots(self) -> list[int]:
        return [v for v in self.g if self.kind(v) in ROOT_KINDS]

    def const_value(self, v: int) -> float | None:
        return self.attrs(v)["value"] if self.op(v) == "const" else None

    # -- mutation (for rewrites) --------------------------------------------------------------
    def set_args(self, v: int, args: tuple[int, ...]) -> None:
        for a in self.args(v):
            self.g.remove_edge(a, v) if self.g.has_edge(a, v) else None
        self.g.nodes[v]["args"] = tuple(args)
        for a in args:
            self.g.add_edge(a, v)

    def replace_uses(self, old: int, new: int, only: set[int] | None = None) -> None:
        for u in self.users(old):
            if u != new and (only is None or u in only):
                self.set_args(u, tuple(new if a == old else a for a in self.args(u)))

    def remove_dead(self) -> None:
        live = set()
        for r in self.roots():
            live |= nx.ancestors(self.g, r) | {r}
        self.g.remove_nodes_from([v for v in list(self.g) if v not in live])

    def copy(self, name: str | None = None) -> "Program":
        p = Program(name or self.name, self.params, self.phase)
        p.g = self.g.copy()
        for v in p.g:
            p.g.nodes[v]["attrs"] = dict(p.g.nodes[v]["attrs"])
        p.fallback, p.notes, p._next = self.fallback, list(self.notes), self._next
        return p

    # -- checking and printing ----------------------------------------------------------------
    def validate(self) -> "Program":
        g = self.g
        if not nx.is_directed_acyclic_graph(g):
            raise IRError(f"{self.name}: the graph has a cycle")
        inputs = [v for v in g if self.op(v) == "input"]
        outputs = [v for v in g if self.kind(v) == "output"]
        if self.phase is None and (len(inputs) != 1 or len(outputs) != 1):
            raise IRError(f"{self.name}: needs exactly one input and one output "
                          f"(has {len(inputs)} and {len(outputs)})")
        if self.phase is not None and (len(inputs) > (self.phase == "rows") or len(outputs) > 1
                                       or not self.roots()):
            raise IRError(f"{self.name}: a {self.phase} phase has at most "
                          f"{int(self.phase == 'rows')} input, at most one output and a result")
        for v in g:
            op, args, spec = self.op(v), self.args(v), OPS[self.op(v)]
            if len(args) != spec.arity or set(args) != set(g.predecessors(v)):
                raise IRError(f"{self.name}: %{v} ({op}) arguments disagree with the graph edges")
            shapes = [self.shape(a) for a in args]
            rows = shapes[1:] if op == "output_selected" else shapes
            if spec.kind in ("reduce", "materialize", "output") and any(s != ROW for s in rows):
                raise IRError(f"{self.name}: %{v} {op} needs row arguments, got {', '.join(rows)}")
            if op == "output_selected" and self.op(args[0]) != "reduce_topk":
                raise IRError(f"{self.name}: %{v} output_selected needs a reduce_topk, got "
                              f"{self.op(args[0])}")
            if op == "reduce_topk" and not (isinstance(self.attrs(v).get("k"), int)
                                            and 1 <= self.attrs(v)["k"] <= INDEX_MAX_N):
                raise IRError(f"{self.name}: %{v} reduce_topk needs an integer k in [1, {INDEX_MAX_N}], "
                              f"got {self.attrs(v).get('k')!r}")
            if spec.kind == "item" and (shapes[0] != PAIR or
                                        self.attrs(v).get("index") not in range(self.items(args[0]))):
                raise IRError(f"{self.name}: %{v} item needs a pair and an index below its "
                              f"{self.items(args[0]) if shapes[0] == PAIR else 0} items")
            if spec.kind in ("map", "guard") and PAIR in shapes:
                raise IRError(f"{self.name}: %{v} {op} cannot take a pair; use item")
            if spec.kind == "guard" and (shapes[0] != SCALAR or self.fallback is None):
                raise IRError(f"{self.name}: %{v} guard needs a scalar and a fallback program")
            if op == "param" and (not _PARAM_NAME.match(str(self.attrs(v).get("name")))
                                  or self.attrs(v)["name"] in _RESERVED):
                raise IRError(f"{self.name}: %{v} row parameter name {self.attrs(v).get('name')!r} "
                              f"is not a lower-case identifier or is reserved")
            if spec.kind in MATRIX_KINDS and self.phase is None:
                raise IRError(f"{self.name}: %{v} {op} exists only in matrix programs")
            if spec.kind in ("emit", "colstore", "colreduce", "colvec") and (
                    not _PARAM_NAME.match(str(self.attrs(v).get("name")))
                    or self.attrs(v)["name"] in _RESERVED):
                raise IRError(f"{self.name}: %{v} vector name {self.attrs(v).get('name')!r} is not "
                              f"a lower-case identifier or is reserved")
            if spec.kind in ("emit", "mreduce") and shapes[0] != SCALAR:
                raise IRError(f"{self.name}: %{v} {op} needs a scalar")
            if spec.kind in ("mscalar", "mreduce", "matrow") and not c_name_ok(self.attrs(v).get("name")):
                what = "matrix" if op == "matrow" else "per-matrix scalar"
                raise IRError(f"{self.name}: %{v} {what} name {self.attrs(v).get('name')!r} "
                              f"is not a lower-case identifier")
            if spec.kind in ("colstore", "colreduce") and shapes[0] != ROW:
                raise IRError(f"{self.name}: %{v} {op} needs a row value")
            if spec.kind == "colreduce" and self.phase != "rows":
                raise IRError(f"{self.name}: %{v} column reductions run in rows phases")
            if op == "size" and self.attrs(v).get("axis") not in ("rows", "cols"):
                raise IRError(f"{self.name}: %{v} size axis must be 'rows' or 'cols'")
            if op == "const" and not math.isfinite(self.attrs(v)["value"]):
                raise IRError(f"{self.name}: %{v} constant {self.attrs(v)['value']} is not finite")
        if self.phase is None and not nx.has_path(g, inputs[0], outputs[0]):
            raise IRError(f"{self.name}: the output does not depend on the input")
        live = set()
        for r in self.roots():
            live |= nx.ancestors(g, r) | {r}
        dead = sorted(set(g) - live)
        if dead:
            raise IRError(f"{self.name}: nodes {dead} reach no output")
        return self

    def __str__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.params.items())
        lines = [f"program {self.name}({ps})"]
        for v in self.topo():
            op, a = self.op(v), self.attrs(v)
            args = " ".join(f"%{x}" for x in self.args(v))
            extra = " ".join(f"{k}={val}" for k, val in a.items() if k != "value")
            if op == "const":
                args = repr(a["value"])
            if op in ("param", "colvec", "mscalar", "matrow"):
                args, extra = a["name"], ""
            lines.append(f"  %{v:<3} = {op:<14} {args:<12} {extra:<20} : {self.shape(v)}".rstrip())
        if self.fallback is not None:
            lines.append(f"  fallback: {self.fallback.name}")
        return "\n".join(lines)


class Value:
    """Builder handle: lets op definitions read like math (``(x - x.max()) * s``)."""

    __slots__ = ("p", "id")

    def __init__(self, p: Program, id: int):
        self.p, self.id = p, id

    def _v(self, other) -> int:
        if isinstance(other, Value):
            return other.id
        if isinstance(other, (int, float)):
            return self.p.const(other)
        raise IRError(f"cannot use {type(other).__name__} in an IR expression")

    def _op(self, op, *others, **attrs) -> "Value":
        return Value(self.p, self.p.add(op, self.id, *[self._v(o) for o in others], **attrs))

    def _rop(self, op, other) -> "Value":
        return Value(self.p, self.p.add(op, self._v(other), self.id))

    __add__ = lambda s, o: s._op("add", o)
    __radd__ = lambda s, o: s._rop("add", o)
    __sub__ = lambda s, o: s._op("sub", o)
    __rsub__ = lambda s, o: s._rop("sub", o)
    __mul__ = lambda s, o: s._op("mul", o)
    __rmul__ = lambda s, o: s._rop("mul", o)
    __truediv__ = lambda s, o: s._op("div", o)
    __rtruediv__ = lambda s, o: s._rop("div", o)
    __neg__ = lambda s: s._op("neg")

    def exp(self): return self._op("exp")
    def log(self): return self._op("log")
    def log1p(self): return self._op("log1p")
    def log_ratio(self, o): return self._op("log_ratio", o)
    def abs(self): return self._op("abs")
    def recip(self): return self._op("recip")
    def finite_or_nan(self): return self._op("finite_or_nan")
    def poison(self, check): return self._op("poison", check)
    def maximum(self, o): return self._op("max", o)
    def where_lt(self, b, then, other): return self._op("where_lt", b, then, other)
    def fma(self, b, c): return self._op("fma", b, c)
    def minimum(self, o): return self._op("min", o)
    def max(self): return self._op("reduce_max")
    def sum(self): return self._op("reduce_sum")
    def item(self, k): return self._op("item", index=k)
    def online(self, scale=1.0): return self._op("reduce_online", scale=float(scale))
    def emit(self, name): return self._op("emit", name=name)

    def const(self, value: float) -> "Value":
        """The constant ``value`` in this value's program (``x.const(0.0).where_lt(...)``)."""
        return Value(self.p, self.p.const(value))

    def output(self) -> "Value":
        """Make this row value the program's output (the kernel writes it to y)."""
        return self._op("output")

    def output_selected(self, weights) -> "Value":
        """Make this selection (``topk``) and its ``weights`` the program's output: the
        (indices, weights) of the selected entries instead of a dense row."""
        return self._op("output_selected", weights)

    def mreduce(self, kind: str, name: str) -> "Value":
        """Reduce this per-row scalar across the phase's rows (kind: max, sum) into the per-matrix
        scalar ``name``, which later phases read with ``Program.mscalar``."""
        return self._op(f"mreduce_{kind}", name=name)
    def colstore(self, name): return self._op("colstore", name=name)

    def colreduce(self, kind: str, name: str, scale: float = 1.0) -> "Value":
        """Accumulate this row value per column across the rows (kind: max, sum, online) into the
        state vectors of ``name`` (see ``COLREDUCE_FIELDS``)."""
        attrs = {"scale": float(scale)} if kind == "online" else {}
        return self._op(f"colreduce_{kind}", name=name, **attrs)
    def where_ranked(self, i, t, it, then, other): return self._op("where_ranked", i, t, it, then, other)

    def topk(self, k: int) -> "Value":
        """The (t, it, m, d) selection of the k largest entries of this row (reduce_topk); the
        element index leaf is the tie-break key."""
        return Value(self.p, self.p.add("reduce_topk", self.id, self.p.index().id, k=int(k)))
