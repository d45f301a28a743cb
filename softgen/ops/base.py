"""The op registry: ``OpDef`` (an op's IR builder, float64 reference, tolerance model and
metadata), ``register``, ``get_op``, parameter validation and ``build_program``. The ops
themselves live in the family modules of this package (``softmax``, ``lssa``, ...), which
register into ``OPS`` when ``softgen.ops`` is imported.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import reference as ref
from ..errors import UsageError
from ..ir import Program, Value
from ..matrix import MatrixProgram
from ..values import number, show

F32_MAX = float(np.finfo(np.float32).max)


def flag(value, name: str) -> bool:
    """A 0/1 build parameter as a bool (lssa's count_keys, topk's sparse)."""
    if value not in (0, 1):
        raise UsageError(f"{name} must be 0 or 1, got {value!r}")
    return bool(value)



def _value_token(value) -> str:
    """A parameter value spelled with identifier characters (``OpDef.name_tag``)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        text = str(int(value))
    else:
        text = repr(value) if isinstance(value, (int, float)) else str(value)
    return text.replace("-", "m").replace("+", "").replace(".", "p")

@dataclass(frozen=True)
class OpDef:
    name: str
    build: Callable[..., Value]        # (x, **params) -> output row value
    reference: Callable                # float64 oracle: (x, **params) -> y
    params: dict                       # parameter name -> default
    doc: str
    rtol: float = 2e-6                 # docs/ops.md §11
    atol: float = 0.0
    atol_rel_to_y: bool = False        # log-softmax: |err| <= atol * (1 + |y|)
    log_probs: bool = False            # outputs are log-probabilities: never above 0
    sums_to_one: bool | Callable = False   # or (params) -> bool, when a parameter decides it
    exp_conditioned: bool = True       # outputs are e^(s(x - max)): see tolerance()
    # rows where the float32 kernel's row sum overflows although float64's does not; the kernel
    # must give a NaN row there (docs/ops.md §0): (x, **params) -> bool mask over rows
    f32_overflow: Callable | None = None
    # ops with per-row parameters: (shape, params, **call) -> {row param name: values per row},
    # from the call-time arguments ``call_params`` (e.g. lssa's n_attended)
    row_args: Callable | None = None
    call_params: tuple[str, ...] = ()
    # what each per-row parameter of the kernel means (call-time arguments and those the op
    # computes, e.g. lssa's n_attended, reweight's offset), for headers and manifests
    row_param_docs: dict = field(default_factory=dict)
    # the build parameters a call implies: (build, call) -> build, e.g. lssa's count_keys=0 when
    # the call gives n_attended; see build_params_for_call
    call_build: Callable | None = None
    # a tolerance of the op's own: (x, ref_y, params, call) -> allowed |error| per element
    custom_tolerance: Callable | None = None
    # call-time arguments for measurements on synthetic rows: (shape, params) -> call dict
    sample_call: Callable | None = None
    # "row": normalises the last axis; "matrix": acts on the last two axes (a matrix program)
    kind: str = "row"
    extra: dict = field(default_factory=dict)
    # matrix ops: the program's declarations (MatrixProgram's dims, inputs, outputs), default
    # one input x and one output y of m x n
    matrices: dict = field(default_factory=dict)
    # string-valued parameters: name -> the values it may take
    choices: dict = field(default_factory=dict)
    # inputs for measurements (export's accuracy suite): (rng, params) -> list of input tuples
    samples: Callable | None = None

    @property
    def inputs(self) -> tuple[str, ...]:
        """Names of the arrays the op takes, in call order."""
        return tuple(self.matrices.get("inputs", {"x": None}))

    def normalised(self, params: dict) -> bool:
        """Whether the kernel's finite output rows sum to 1 for these parameters."""
        return bool(self.sums_to_one(params) if callable(self.sums_to_one) else self.sums_to_one)

    def name_tag(self, params: dict, limit: int = 32) -> str:
        """The parameters of a kernel in its default name (``softgen_f32_<op><tag>_...``): ``""``
        at the op's defaults, else ``_`` + one token per parameter not at its default, in the op's
        order: the parameter's name without underscores, then its value (integers and floats in
        their shortest round-trip spelling with ``.`` as ``p``, ``-`` as ``m``, ``e+`` as ``e``,
        strings as they are), e.g. ``_scale2``, ``_k4_sparse1``, ``_niter5_eps0p1``. A tag
        longer than ``limit`` characters (or a value that spells no C identifier) becomes ``_h``
        + 10 hex digits of a hash of the parameters: two kernels of different parameters never
        share a name."""
        tokens = []
        for key, default in self.params.items():
            if key not in params or params[key] == default or params[key] is None:
                continue
            tokens.append(key.replace("_", "") + _value_token(params[key]))
        tag = "_".join(tokens)
        if len(tag) > limit or not re.fullmatch(r"[A-Za-z0-9_]*", tag):
            blob = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True).encode()
            tag = "h" + hashlib.sha256(blob).hexdigest()[:10]
        return "_" + tag if tag else ""

    def build_params_for_call(self, build: dict, call: dict) -> dict:
        """The build-time parameters of the kernel variant that takes the call-time arguments
        ``call`` (``softgen.lssa(c, n_attended=n)`` selects count_keys=0): ``build`` with the
        op's defaults for them, for the parameters ``build`` does not set."""
        return dict(build) if self.call_build is None else self.call_build(dict(build), call)

    def row_param_doc(self, name: str) -> str:
        """What the kernel's per-row parameter ``name`` means (headers, manifests)."""
        return self.row_param_docs.get(name, "")

    def row_arguments(self, names: list[str], shape: tuple, params: dict, call: dict) -> list:
        """The kernel's per-row parameter arrays (float32, one per row, C order of the leading
        axes) for input ``shape``; validates the call-time arguments."""
        unknown = sorted(set(call) - set(self.call_params))
        if unknown:
            takes = f"; it takes {', '.join(self.call_params)}" if self.call_params else ""
            raise TypeError(f"{self.name} has no call argument(s) {unknown}{takes}")
        if not names and not call:
            return []
        given = self.row_args(tuple(shape), params, **call)
        lead, out = tuple(shape[:-1]), []
        for name in names:
            a = np.asarray(given[name], np.float64)
            try:
                a = np.broadcast_to(a, lead)
            except ValueError:
                raise ValueError(f"{self.name}: {name} has shape {a.shape}, which does not "
                                 f"broadcast to the {lead} rows of the input") from None
            out.append(np.ascontiguousarray(a, np.float32).reshape(-1))
        return out

    def tolerance(self, x, ref_y, params, call=None) -> "np.ndarray":
        """Allowed |kernel - reference| per element for float32 kernels (docs/ops.md §11).

        Relative ``rtol`` plus the conditioning of exp: rounding z = s(x - max) to f32 perturbs
        e^z by |z| 2^-24 (twice: the subtraction and the scaling), an error every f32 kernel has;
        for the outputs that matter (|z| <= 16) the bound stays at the contract's 2e-6 (docs/accuracy.md). Outputs below
        FLT_MIN may be flushed to zero.
        """
        if self.custom_tolerance is not None:
            return self.custom_tolerance(x, ref_y, params, call or {})
        y = np.abs(ref_y)
        if self.atol_rel_to_y:
            return self.atol * (1.0 + y)
        if not self.exp_conditioned:
            return self.rtol * y + self.atol + 2.0 ** -126
        x64 = np.asarray(x, np.float64) * params.get("scale", 1.0)
        with np.errstate(invalid="ignore"):
            z = np.abs(x64 - np.max(x64, axis=-1, keepdims=True)) if x64.shape[-1] else x64
        z = np.where(np.isfinite(z), z, 0.0)
        return (self.rtol + 2.0 ** -23 * z) * y + self.atol + 2.0 ** -126


OPS: dict[str, OpDef] = {}
# kinds whose IR is a MatrixProgram: "matrix" (generic inputs), "attention" (q, k, v; its own front door)
MATRIX_KINDS = ("matrix", "attention")


def register(name: str, reference: Callable, **kw):
    def deco(build):
        params = kw.pop("params", {})
        OPS[name] = OpDef(name=name, build=build, reference=reference, params=params,
                          doc=(build.__doc__ or "").strip(), **kw)
        return build
    return deco


def _scale(params: dict) -> float:
    try:
        return ref.resolve_scale(params.get("scale", 1.0), params.get("temperature"))
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None


def get_op(name: str) -> OpDef:
    if not isinstance(name, str) or name not in OPS:
        raise UsageError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    return OPS[name]


def _normalise(op: OpDef, key: str, value):
    """One parameter as the kernel bakes it: a str for choice parameters, else a finite number
    (``values.number``); 0/1 flags also take bools; integer parameters given as integral floats
    (the CLI's --param k=2) stay integers."""
    if value is None:
        return None
    if key in op.choices:
        v = value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value
        if not isinstance(v, str) or v not in op.choices[key]:
            raise UsageError(f"parameter {key} must be one of {', '.join(map(repr, op.choices[key]))}, "
                             f"got {show(value)}")
        return str(v)
    default = op.params.get(key)
    if type(default) is int and default in (0, 1) and isinstance(value, (bool, np.bool_)):
        return int(value)
    v = number(f"parameter {key}", value)
    return int(v) if type(default) is int and isinstance(v, float) and v.is_integer() else v


def resolve_params(op: OpDef, given: dict) -> dict:
    """Validated build-time parameters (baked into the kernel). Unknown names are errors."""
    unknown = sorted(set(given) - set(op.params))
    if unknown:
        raise UsageError(f"op {op.name!r} has no parameter(s) {unknown}; it takes {sorted(op.params)}")
    given = {k: _normalise(op, k, v) for k, v in given.items()}
    params = {**op.params, **{k: v for k, v in given.items() if v is not None}}
    if "scale" in op.params and not (op.params["scale"] is None and params["scale"] is None):
        # (a default of None: the op derives it, e.g. attention's 1/sqrt(head_dim))
        s = _scale(params)
        params = {k: v for k, v in params.items() if k not in ("scale", "temperature")}
        with np.errstate(over="ignore"):
            s32 = float(np.float32(s))  # kernels bake the scale as a float32
        if not (0.0 < s32 < math.inf):
            raise UsageError(f"scale {s!r} is not representable as a positive finite float32")
        params["scale"] = s32
    return params


def build_program(name: str, **given) -> Program | MatrixProgram:
    """The op's IR program with its parameters baked in, validated."""
    op = get_op(name)
    params = resolve_params(op, given)
    if op.kind in MATRIX_KINDS:
        mp = MatrixProgram(name, params, **op.matrices)
        op.build(mp, **params)
        return mp.validate()
    p = Program(name, params)
    out = op.build(p.input(), **params).id
    if p.kind(out) != "output":   # ops with an output of their own (output_selected) give it
        p.add("output", out)
    return p.validate()
