"""The one module of softgen that imports TVM (lazily: softgen imports and works without it).

Pinned pair: apache-tvm 0.27.0.post1 + apache-tvm-ffi 0.1.14.post1 (0.1.15.x crashes with 0.27);
``pip install '.[tvm]'`` (in the source tree). In 0.27 the TIR dialect is ``tvm.tirx`` (``from tvm.script import
tirx as T``), schedules are ``tvm.s_tir.Schedule`` (sblock TIR needs ``@T.prim_func(s_tir=True)``).

What a PrimFunc becomes (x86_64 and aarch64, TVM's bundled LLVM 22):

* ``tvm.compile`` of a public PrimFunc runs ``MakePackedAPI``: the only exported symbol is
  ``int32_t __tvm_ffi_<name>(void *self, TVMFFIAny *args, int32_t nargs, TVMFFIAny *ret)`` (no
  separate ``_compute_`` symbol; the body is inlined), arguments are DLTensors checked at run time,
  and the object references ``TVMFFIErrorSetRaisedFromCStrParts`` (``nm -u``), i.e. libtvm_ffi.
* **Plain C ABI (the route used here):** give the PrimFunc ``"calling_conv": 1`` (kCPackedFunc,
  meaning "already lowered") and a ``global_symbol``; ``MakePackedAPI`` then skips it and the
  LLVM codegen emits ``void <symbol>(<params>)`` with parameters in C order: ``T.handle("float32")``
  -> ``float *``, ``T.int64`` -> ``int64_t``. Use pointer parameters and ``T.decl_buffer(shape,
  data=ptr, strides=...)`` in the body (``T.match_buffer``/``T.Buffer`` parameters are DLTensors and
  are rejected by :func:`as_c_abi`). The object then has **no undefined symbols** (math that LLVM
  turns into libm calls would be the exception). Besides the symbol it defines weak
  ``__tvm_ffi_main`` (a copy of the entry function) and weak ``__truncsfhf2``/``__extendhfsf2``: link
  the .so with a version script exporting only the wrapper symbol (:func:`version_script`).
  A hand-written C wrapper checks the arguments (NULL, strides, overflow) and calls it; the .so
  depends on nothing (not even libtvm, check ``readelf -d``).
* We lower ourselves (:func:`lower`): BindTarget -> the ``s_tir`` pipeline -> ``LowerIntrin`` ->
  ``target.build.llvm``. ``LowerTVMBuiltin`` (the first host finalisation pass of ``tvm.compile``)
  is skipped: without MakePackedAPI's device attributes it aborts on any ``T.alloc_buffer`` ("Unknown
  device id in current IR"); it only matters for packed calls and workspaces, which a kernel must
  not have (checked). Small local buffers become allocas that LLVM promotes to registers.

TIR idioms that work (plain ``@T.prim_func``, no sblocks, inside ``for l in T.vectorized(8)``):

* locals: ``v: T.let[T.float32] = X[i]`` -- a bare ``v = ...`` or ``v: T.float32 = ...`` is a
  1-element *local buffer* in 0.27, and vectorizing through it silently broadcasts lane 0;
* reinterpret: ``T.reinterpret("int32", v)`` / ``T.reinterpret("float32", b)`` (vectorizes to
  int32x8); shifts: ``T.shift_left(b, 23)``, ``T.shift_right(b, 23)`` (arithmetic on int32),
  ``T.bitwise_and``/``_or``/``_xor``;
* fma: ``T.fma(a, b, c)`` lowers to ``llvm.fmuladd`` (fusion allowed, not required); a guaranteed
  fused op is ``T.call_llvm_pure_intrin("float32", "llvm.fma", a, b, c)`` (vectorizes). Note LLVM
  also contracts a plain ``a * b + c`` into fmuladd, so results may differ from an unfused C kernel;
* select: ``T.Select(c, a, b)`` vectorizes (vblendvps / NEON bsl). ``T.if_then_else`` does not:
  VectorizeLoop scalarises the loop and then fails on let-bound vector values -- use it in scalar code;
* ``T.max``/``T.min`` become compare+select (x86 vmaxps, NEON fcmgt+bsl, not fmaxnm);
* symbolic-length rows: main loop ``for i0 in range(n // 32)`` + ``T.unroll(4)`` + ``T.vectorized(8)``
  and a scalar tail ``for i in range(n % 32)`` (LLVM vectorizes that too). A predicated split
  (``sch.split`` of ``n`` with factor 8) is *scalarised* (the ``T.where`` guard kills vectorization)
  and ``sch.loop_partition`` rejects dynamic extents; with sblocks write the two loops yourself and
  split the main one (extent ``n // 32 * 32`` splits exactly). Masked vector tail::

      base: T.let[T.int64] = n // 8 * 8
      t: T.let[T.float32x8] = T.call_llvm_pure_intrin("float32x8", "llvm.masked.load",
          T.address_of(X[base]), T.Ramp(T.int64(0), T.int64(1), 8) < T.Broadcast(n - base, 8),
          T.Broadcast(T.float32(0), 8))            # LLVM 22: no alignment argument
      T.evaluate(T.call_llvm_intrin("void", "llvm.masked.store", t, T.address_of(Y[base]), mask))

* several accumulators: a ``T.alloc_buffer((A * 8,), "float32", scope="local")`` updated as
  ``acc[j * 8 + l] = T.max(acc[j * 8 + l], X[...])`` under ``T.unroll(A)``/``T.vectorized(8)`` stays
  in A registers; fold it after the loop (rfactor needs static extents; the manual form is simpler).
* vectors wider than the ISA (``T.vectorized(8)`` on NEON) are split into 4-lane ops by LLVM.

Costs and other pitfalls: ``import tvm`` takes 1-3 s (do it lazily, once); parse + lower + LLVM for
a small kernel takes 30-60 ms per target. TVMScript decorators need the source file, so generated
TIR goes through :func:`parse_tir` (``tvm.script.from_source``), except softgen's row functions:
TVM's parser evaluates a script node by node (1.2 CPU-s for a 99 KB row kernel, half its build), and
:func:`script_module`'s fast path translates their subset of TVMScript into one Python function of
ir_builder calls (the same TIR, ~8x faster; anything outside the subset falls back to the parser). LLVM also auto-vectorizes plain
scalar loops and contracts ``a * b + c`` into fmuladd (FMA on avx2/neon). The result is correct when
y == x (the demos are tested in place), but partly overlapping x/y rows are not supported.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import re
from functools import cache
from pathlib import Path

from ..runtime import _cached, cache_dir
from ..targets import get_target, host_arch

INSTALL_HINT = "pip install '.[tvm]' in the softgen source tree"
TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"

CALLING_CONV_C = 1          # kCPackedFunc: tells MakePackedAPI the function is already lowered
_TRIPLES = {"x86_64": "x86_64-unknown-linux-gnu", "aarch64": "aarch64-unknown-linux-gnu"}
# Calls that would need the TVM runtime at load time.
_RUNTIME_CALLS = re.compile(r"TVMBackend|tvm_call_packed|tvm_call_cpacked|tvm_throw_last_error|"
                            r"tvm_struct_get|tvm_stack_")


class TVMUnavailable(ImportError):
    pass


@cache
def available() -> tuple[bool, str]:
    """(True, "tvm <v> + tvm-ffi <v>") when the pinned pair imports and has the LLVM backend,
    else (False, reason + install hint). Never raises."""
    try:
        import tvm
        import tvm_ffi
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return False, f"TVM is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    tv, fv = str(getattr(tvm, "__version__", "?")), str(getattr(tvm_ffi, "__version__", "?"))
    if not tv.startswith("0.27.") or not fv.startswith("0.1.14"):
        return False, (f"unsupported TVM version pair tvm {tv} + tvm-ffi {fv} (need "
                       f"{TVM_VERSION} + {TVM_FFI_VERSION}); {INSTALL_HINT}")
    try:
        if tvm.get_global_func("target.build.llvm", allow_missing=True) is None:
            return False, f"this TVM build has no LLVM backend; {INSTALL_HINT}"
        import tvm.s_tir  # noqa: F401 - registers the s_tir pipeline
    except Exception as e:  # noqa: BLE001
        return False, f"TVM is broken ({type(e).__name__}: {e}); {INSTALL_HINT}"
    return True, f"tvm {tv} + tvm-ffi {fv}"


@cache
def installed() -> str:
    """The installed TVM pair as a string for cache keys, read from the package metadata: cheap,
    never imports TVM (or torch through it), so a cached kernel loads in a new process without
    them (issue 15). Without metadata (e.g. a source build): ``available()``'s string."""
    try:
        return (f"tvm {importlib.metadata.version('apache-tvm')} + "
                f"tvm-ffi {importlib.metadata.version('apache-tvm-ffi')}")
    except importlib.metadata.PackageNotFoundError:
        return available()[1]


def _tvm():
    ok, why = available()
    if not ok:
        raise TVMUnavailable(why)
    import tvm
    import tvm.s_tir  # noqa: F401
    return tvm


# -- targets -----------------------------------------------------------------------------------

def llvm_target(target) -> dict:
    """The TVM target dict for a softgen Target (or its name, or a dict shaped like a targets/*.toml
    ``[llvm]`` table plus optional ``arch``). The triple is always explicit; an empty triple (the
    ``scalar`` target) means the host's."""
    if isinstance(target, str):
        target = get_target(target)
    if isinstance(target, dict):
        llvm, arch = target, target.get("arch", "any")
    else:
        llvm, arch = target.llvm, target.arch
    triple = llvm.get("triple") or ""
    if not triple:
        a = host_arch() if arch in ("any", "", None) else arch
        if a not in _TRIPLES:
            raise ValueError(f"no LLVM triple for architecture {a!r}")
        triple = _TRIPLES[a]
    d = {"kind": "llvm", "mtriple": triple, "mcpu": llvm.get("cpu") or "generic"}
    mattr = [f.strip() for f in (llvm.get("features") or "").split(",") if f.strip()]
    if mattr:
        d["mattr"] = mattr
    return d


def tvm_target(target):
    """A ``tvm.target.Target`` for a softgen Target / name / dict / TVM target dict."""
    tvm = _tvm()
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict) and target.get("kind") == "llvm":
        return tvm.target.Target(target)
    return tvm.target.Target(llvm_target(target))


# -- functions -----------------------------------------------------------------------------------

def parse_tir(source: str, s_tir: bool = False):
    """TVMScript text (``@T.prim_func`` / ``@I.ir_module``, with ``T``/``I`` in scope) -> PrimFunc or
    IRModule. Decorators need source code, so generated kernels go through this."""
    tvm = _tvm()
    return tvm.script.from_source(source, s_tir=s_tir)


def as_c_abi(func, symbol: str | None = None):
    """The PrimFunc with the plain C ABI (``calling_conv`` 1 and ``global_symbol``)."""
    _tvm()
    for p in func.params:
        if type(p.ty).__name__ == "BufferType":
            raise ValueError(f"parameter {p.name} is a buffer (a DLTensor in the packed ABI); use "
                             "T.handle('float32') parameters and T.decl_buffer(..., data=ptr)")
    symbol = symbol or (func.attrs.get("global_symbol") if func.attrs is not None else None)
    if not symbol:
        raise ValueError("a C-ABI function needs a symbol name")
    return func.with_attrs({"calling_conv": CALLING_CONV_C, "global_symbol": str(symbol)})


def _module(mod_or_func):
    tvm = _tvm()
    if isinstance(mod_or_func, tvm.tirx.PrimFunc):
        f = mod_or_func
        name = f.attrs.get("global_symbol") if f.attrs is not None else None
        if not name:
            raise ValueError("the PrimFunc has no global_symbol; use as_c_abi(func, symbol)")
        mod_or_func = tvm.IRModule({str(name): f})
    out = {}
    for gv, f in mod_or_func.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "global_symbol" in f.attrs:
            conv = f.attrs.get("calling_conv")
            if conv is None or int(conv) != CALLING_CONV_C:
                f = as_c_abi(f)
        out[gv] = f
    return tvm.IRModule(out, attrs=mod_or_func.attrs)


def version_script(symbols) -> str:
    """A GNU ld version script exporting only ``symbols`` (hides TVM's weak helper symbols)."""
    return "{ global: " + " ".join(f"{s};" for s in symbols) + " local: *; };\n"


# -- lowering and code generation ------------------------------------------------------------------

def _lean_pipeline(tvm, remove_noop: bool = True):
    """For TIR that is already scheduled by hand (explicit loops, vectorized/unrolled loop kinds,
    no sblocks): only the passes that such code needs. The full s_tir pipeline's simplifiers
    (HoistIfThenElse, StmtSimplify, ...) take minutes on long chains of let-bound vector math.
    ``remove_noop=False`` drops RemoveNoOp, for functions known to have no no-op to remove: like
    FlattenBuffer and LowerIntrin it binds every let in an arith analyzer, ~20% of a long
    kernel's lowering."""
    s_tir, tirx = tvm.s_tir, tvm.tirx
    return tvm.transform.Sequential([
        s_tir.transform.LowerOpaqueBlock(), tirx.transform.FlattenBuffer(),
        tirx.transform.VectorizeLoop(True), tirx.transform.StorageRewrite(),
        tirx.transform.UnrollLoop()] + ([tirx.transform.RemoveNoOp()] if remove_noop else []))


def _split(tvm, mod, symbols):
    """(functions of mod named in symbols, the others) as two IRModules."""
    a, b = {}, {}
    for gv, f in mod.functions.items():
        (a if gv.name_hint in symbols else b)[gv] = f
    return tvm.IRModule(a, attrs=mod.attrs), tvm.IRModule(b, attrs=mod.attrs)


def lower(mod_or_func, target, config: dict | None = None, pipeline: str = "s_tir",
          noop_free: frozenset = frozenset()):
    """Lowered TIR (an IRModule) ready for the LLVM codegen, every public function with the C ABI.
    ``pipeline``: "s_tir" (TVM's default, for sblock TIR and schedules) or "lean" (hand-scheduled
    loops, as softgen's TVM backend emits). ``noop_free``: names of functions the lean pipeline
    lowers without RemoveNoOp (their emitter writes no no-op: the LLVM IR is the same)."""
    tvm = _tvm()
    tgt = tvm_target(target)
    mod = _module(mod_or_func)
    with tvm.transform.PassContext(opt_level=3, config=config or {}):
        mod = tvm.tirx.transform.BindTarget(tgt)(mod)
        if pipeline == "lean" and noop_free:
            lean, rest = _split(tvm, mod, noop_free)
            lean = _lean_pipeline(tvm, remove_noop=False)(lean)
            rest = _lean_pipeline(tvm)(rest)
            mod = tvm.IRModule({**dict(lean.functions.items()), **dict(rest.functions.items())},
                               attrs=mod.attrs)
        elif pipeline == "lean":
            mod = _lean_pipeline(tvm)(mod)
        else:
            mod = tvm.tirx.get_tir_pipeline("s_tir")[0](mod)
        mod = tvm.tirx.transform.LowerIntrin()(mod)
    for gv, f in mod.functions.items():
        if f.attrs is not None and "global_symbol" in f.attrs \
                and int(f.attrs.get("calling_conv", 0)) != CALLING_CONV_C:
            raise RuntimeError(f"{gv.name_hint}: MakePackedAPI rewrote it to the packed ABI")
    text = mod.script()
    m = _RUNTIME_CALLS.search(text)
    if m:
        raise RuntimeError(f"lowered TIR needs the TVM runtime ({m.group(0)}): keep local buffers "
                           "small and constant-sized, and call no packed functions")
    return mod


def build(mod_or_func, target, config: dict | None = None, pipeline: str = "s_tir",
          noop_free: frozenset = frozenset()):
    """The LLVM runtime module (``write_to_file``/``inspect_source``) of the C-ABI functions."""
    tvm = _tvm()
    tgt = tvm_target(target)
    mod = lower(mod_or_func, tgt, config, pipeline, noop_free)
    with tvm.transform.PassContext(opt_level=3, config=config or {}):
        return tvm.get_global_func("target.build.llvm")(mod, tgt)


def compile_to_object(mod_or_func, target, out_path, config: dict | None = None, pipeline: str = "s_tir",
                      noop_free: frozenset = frozenset()) -> Path:
    """Write an ELF relocatable object (.o) for the target (cross targets need no cross tools)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    build(mod_or_func, target, config, pipeline, noop_free).write_to_file(str(out))
    return out


def assembly(mod_or_func, target, config: dict | None = None, pipeline: str = "s_tir",
             noop_free: frozenset = frozenset()) -> str:
    return build(mod_or_func, target, config, pipeline, noop_free).inspect_source("asm")


# -- softgen's TVMScript kernels: every prim_func of a script in one module -------------------

def script_module(tir: str, fast: frozenset = frozenset()):
    """The IRModule of every ``@T.prim_func`` in the TVMScript text ``tir`` (softgen's backends
    emit several functions per kernel). Functions named in ``fast`` (written in the row emitter's
    subset of TVMScript) are built by the fast path below when it can, the same TIR as parsing."""
    tvm = _tvm()
    funcs = {}
    for chunk in tir.split("@T.prim_func")[1:]:
        f = None
        if re.match(r"\s*def (\w+)", chunk).group(1) in fast:
            try:
                f = _fast_function(tvm, "@T.prim_func" + chunk)
            except _Unsupported:
                f = None
        if f is None:
            f = parse_tir("@T.prim_func" + chunk)
        funcs[str(f.attrs["global_symbol"])] = f
    return tvm.IRModule(funcs)


@cache
def script_object(tir: str, target_name: str, noop_free: frozenset = frozenset()) -> bytes:
    """The ELF object of a TVMScript kernel's functions (TVM's bundled LLVM; no cross tools
    needed), cached on disk like the C builds: TVM's lowering of a long kernel takes seconds.
    ``noop_free``: as in :func:`lower` (the object is the same with or without: not in the key)."""
    def make(tmp):
        return compile_to_object(script_module(tir, noop_free), get_target(target_name), tmp / "k.o", pipeline="lean",
                                 noop_free=noop_free), {}

    return _cached(script_object_path(tir, target_name), make, "TVM").read_bytes()


def script_object_path(tir: str, target_name: str) -> Path:
    """Where ``script_object`` caches its object; keyed without importing TVM (``installed``)."""
    key = hashlib.sha256("\0".join([tir, target_name, installed()]).encode()).hexdigest()[:32]
    return cache_dir() / f"tvm-{key}.o"


def script_assembly(tir: str, target, noop_free: frozenset = frozenset()) -> str:
    return assembly(script_module(tir, noop_free), target, pipeline="lean", noop_free=noop_free)


# -- a fast path for the row emitter's TVMScript ---------------------------------------------------
# TVM's Python parser evaluates a script node by node (its doc AST, one compile() per expression):
# about half of a long row kernel's build. softgen's row functions use a small subset of TVMScript
# (T.let, buffer stores, range / T.vectorized loops, if/else, expression statements), which
# translates statement by statement into one Python function of ir_builder calls, compiled once.
# It mirrors what tvm/tirx/script/parser/parser.py does for that subset (tests/test_tvm_backend.py
# checks tvm.ir.structural_equal with from_source); anything else raises _Unsupported and the
# function goes through from_source. The same well-formedness checks run on the result.

class _Unsupported(Exception):
    pass


_CMP = {"Eq": "EQ", "NotEq": "NE", "Lt": "LT", "LtE": "LE", "Gt": "GT", "GtE": "GE"}


class _Exprs(ast.NodeTransformer):
    """Comparisons and and/or/not as the TVMScript evaluator spells them; the rest is Python."""

    def visit_Compare(self, node):
        self.generic_visit(node)
        if len(node.ops) != 1:
            raise _Unsupported("chained comparison")
        f = "_sg_cmp_" + type(node.ops[0]).__name__
        return ast.Call(ast.Name(f, ast.Load()), [node.left, node.comparators[0]], [])

    def visit_BoolOp(self, node):
        raise _Unsupported("and/or")

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            raise _Unsupported("not")
        return self.generic_visit(node)

    def visit_Lambda(self, node):
        raise _Unsupported("lambda")


def _expr(node) -> str:
    return ast.unparse(_Exprs().visit(node))


def _is_let(ann) -> bool:
    v = ann.value if isinstance(ann, ast.Subscript) else ann
    return isinstance(v, ast.Attribute) and v.attr == "let" and isinstance(v.value, ast.Name) and v.value.id == "T"


def _stmts(body, ind: str, out: list, names: set) -> None:
    for s in body:
        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None \
                and _is_let(s.annotation):
            n = s.target.id
            out.append(f"{ind}{n} = _sg_let({n!r}, {_expr(s.annotation)}, {_expr(s.value)})")
        elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            n = s.targets[0].id
            if n in names:
                raise _Unsupported(f"{n} assigned twice")
            names.add(n)
            out.append(f"{ind}{n} = _sg_bind({n!r}, {_expr(s.value)})")
        elif isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Subscript):
            t = s.targets[0]
            if isinstance(t.slice, (ast.Slice, ast.Tuple, ast.Starred)):
                raise _Unsupported("slice store")
            out.append(f"{ind}B.buffer_store({_expr(t.value)}, {_expr(s.value)}, {_expr(t.slice)})")
        elif isinstance(s, ast.For) and isinstance(s.target, ast.Name) and not s.orelse:
            n, it = s.target.id, s.iter
            if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range":
                if it.keywords or not 1 <= len(it.args) <= 2:
                    raise _Unsupported("range form")
                args = [_expr(a) for a in it.args]
                frame = f"B.serial({'0, ' if len(args) == 1 else ''}{', '.join(args)})"
            else:
                frame = f"_sg_for({_expr(it)})"
            out += [f"{ind}with {frame} as {n}:", f"{ind}    IRBuilder.name({n!r}, {n})"]
            _stmts(s.body, ind + "    ", out, names)
        elif isinstance(s, ast.If):
            out += [f"{ind}with B.If(_sg_pred({_expr(s.test)})):", f"{ind}    with B.Then():"]
            _stmts(s.body, ind + "        ", out, names)
            if s.orelse:
                out.append(f"{ind}    with B.Else():")
                _stmts(s.orelse, ind + "        ", out, names)
        elif isinstance(s, ast.Expr):
            out.append(f"{ind}_sg_expr({_expr(s.value)})")
        else:
            raise _Unsupported(type(s).__name__)


def _helpers(tvm) -> dict:
    from tvm.ir import Expr
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder.base import IRBuilderFrame as Frame
    from tvm.script.parser import tirx as T
    from tvm.script.parser.core import dispatch, doc
    from tvm.tirx.script import builder as B

    def cmp(name):
        ops = [dispatch.get_op(tvm.tirx.Expr, getattr(doc, name), i) for i in (0, 1)]
        def f(a, b):
            if isinstance(a, Expr):
                return ops[0](a, b)
            if isinstance(b, Expr):
                return ops[1](a, b)
            raise _Unsupported("comparison of Python values")
        return f

    def let(name, ann, rhs):
        if not isinstance(ann, B.LetAnnotation) or isinstance(rhs, (list, tuple)):
            raise _Unsupported("let form")
        if not isinstance(rhs, Expr):
            rhs = tvm.ir.StringImm(rhs) if isinstance(rhs, str) else tvm.tirx.const(rhs)
        var = ann.as_var() if ann.type_spec is not None else ann.as_var(rhs_dtype=rhs.ty)
        if not isinstance(var, tvm.ir.Var):
            raise _Unsupported("let annotation")
        IRBuilder.name(name, var)
        B.Bind(rhs, var=var)
        return var

    def bind(name, value):
        if isinstance(value, Frame):
            value.add_callback(lambda: value.__exit__(None, None, None))
            res = value.__enter__()
            IRBuilder.name(name, res)
            return res
        if tvm.tirx.is_buffer_var(value):   # T.decl_buffer / T.alloc_buffer
            IRBuilder.name(name, value)
            return value
        raise _Unsupported(f"assignment of {type(value).__name__}")

    def for_(frame):
        if not isinstance(frame, B.frame.ForFrame):
            raise _Unsupported("loop frame")
        return frame

    def pred(p):
        if not (tvm.ir.is_prim_expr(p) or isinstance(p, tvm.tirx.expr.ExprOp)):
            raise _Unsupported("Python condition")
        return p

    def expr(res):
        if res is None:
            return
        if isinstance(res, Frame):
            res.add_callback(lambda: res.__exit__(None, None, None))
            res.__enter__()
        elif tvm.ir.is_prim_expr(res):
            B.evaluate(res)
        else:
            raise _Unsupported(f"statement of {type(res).__name__}")

    h = {f"_sg_cmp_{k}": cmp(k) for k in _CMP}
    return {**h, "T": T, "B": B, "IRBuilder": IRBuilder, "_sg_let": let, "_sg_bind": bind, "_sg_for": for_,
            "_sg_pred": pred, "_sg_expr": expr, "_sg_Expr": Expr}


def _fast_function(tvm, chunk: str):
    """The PrimFunc of one ``@T.prim_func`` (no decorator arguments) through the fast path."""
    tree = ast.parse(chunk)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        raise _Unsupported("not one function")
    fn = tree.body[0]
    if [ast.unparse(d) for d in fn.decorator_list] != ["T.prim_func"] or fn.returns is not None \
            or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.defaults:
        raise _Unsupported("signature")
    out = ["def _sg_build():", "    with IRBuilder() as _sg_ib:",
           "        with B.prim_func(is_private=False, s_tir=False, persistent=False):",
           f"            B.func_name({fn.name!r})"]
    names = {a.arg for a in fn.args.args}
    for a in fn.args.args:
        if a.annotation is None:
            raise _Unsupported("parameter without annotation")
        out += [f"            _sg_a = {_expr(a.annotation)}",
                "            _sg_a = _sg_a() if callable(_sg_a) and not isinstance(_sg_a, _sg_Expr) else _sg_a",
                f"            {a.arg} = B.arg({a.arg!r}, _sg_a)"]
    _stmts(fn.body, "            ", out, names)
    out.append("    return _sg_ib.get()")
    ns = _helpers(tvm)
    exec(compile("\n".join(out), f"<softgen fast TVMScript {fn.name}>", "exec"), ns)  # noqa: S102
    f = ns["_sg_build"]()
    if not isinstance(f, tvm.tirx.PrimFunc):
        raise _Unsupported("not a PrimFunc")
    tvm.s_tir.analysis.verify_well_formed(tvm.IRModule.from_expr(f))   # what from_source checks
    tvm.tirx.analysis.verify_tirx_well_formed(f)
    return f
