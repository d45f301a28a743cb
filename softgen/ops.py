"""The op library. An op is its IR definition and its float64 reference, side by side; every
algorithm, target, backend, test and benchmark is derived from this table.

To add an op: write a function that builds the IR from the input row (``x``, an ``ir.Value``) and
the op's parameters, and register it with its reference and tolerances.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import reference as ref
from .errors import UsageError
from .ir import Program, Value


@dataclass(frozen=True)
class OpDef:
    name: str
    build: Callable[..., Value]        # (x, **params) -> output row value
    reference: Callable                # float64 oracle: (x, **params) -> y
    params: dict                       # parameter name -> default
    doc: str
    rtol: float = 2e-6                 # spec section 11
    atol: float = 0.0
    atol_rel_to_y: bool = False        # log-softmax: |err| <= atol * (1 + |y|)
    sums_to_one: bool = False
    exp_conditioned: bool = True       # outputs are e^(s(x - max)): see tolerance()
    # rows where the float32 kernel's row sum overflows although float64's does not; the kernel
    # must give a NaN row there (section 0): (x, **params) -> bool mask over rows
    f32_overflow: Callable | None = None
    extra: dict = field(default_factory=dict)

    def tolerance(self, x, ref_y, params) -> "np.ndarray":
        """Allowed |kernel - reference| per element for float32 kernels (spec section 11).

        Relative ``rtol`` plus the conditioning of exp: rounding z = s(x - max) to f32 perturbs
        e^z by |z| 2^-24 (twice: the subtraction and the scaling), an error every f32 kernel has;
        for the outputs that matter (|z| <= 16) the bound stays at the spec's 2e-6. Outputs below
        FLT_MIN may be flushed to zero.
        """
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


@register("softmax", ref.softmax, params={"scale": 1.0, "temperature": None}, sums_to_one=True)
def softmax(x: Value, scale: float) -> Value:
    """y = exp(s x - max(s x)) / sum(...): max and scale commute for s > 0 (spec 0, 1)."""
    z = (x - x.max()) * scale
    e = z.exp()
    return e * e.sum().finite_or_nan().recip()


@register("log_softmax", ref.log_softmax, params={"scale": 1.0, "temperature": None},
          rtol=0.0, atol=2e-6, atol_rel_to_y=True)
def log_softmax(x: Value, scale: float) -> Value:
    """y = (s x - M) - log sum exp(s x - M) (spec 4)."""
    z = (x - x.max()) * scale
    return z - z.exp().sum().log()


def _stablemax_overflow(x) -> np.ndarray:
    with np.errstate(over="ignore"):
        return ref.stablemax_s(x).sum(axis=-1) > np.finfo(np.float32).max


@register("stablemax", ref.stablemax, sums_to_one=True, exp_conditioned=False,
          f32_overflow=_stablemax_overflow)
def stablemax(x: Value) -> Value:
    """s(x) / sum s(x), s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0); no max shift (spec 8). The
    authors' + 1e-30 is dropped: for x < 0, 1 - x >= 1 and adding 1e-30 rounds away in f32/f64."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s * s.sum().finite_or_nan().recip()


@register("log_stablemax", ref.log_stablemax, rtol=0.0, atol=2e-6, atol_rel_to_y=True,
          exp_conditioned=False, f32_overflow=_stablemax_overflow)
def log_stablemax(x: Value) -> Value:
    """log(s(x) / sum s(x)) (spec 8), with stablemax's s, as one log_ratio per element: s / S
    underflows for s far below the sum, and log s - log S would cancel two large logs."""
    s = x.where_lt(0.0, 1.0 / (1.0 - x), x + 1.0)
    return s.log_ratio(s.sum().finite_or_nan())


def _softplus_degenerate(x, scale=1.0) -> np.ndarray:
    """Rows whose f32 softplus terms all flush to 0 (every s x below about -87) or whose f32 sum
    overflows: the kernel gives a NaN row there, the float64 reference may not."""
    sp = ref.softplus(scale * np.asarray(x, np.float64))
    with np.errstate(over="ignore"):
        tot = np.where(sp >= 2.0 ** -126, sp, 0.0).sum(axis=-1)
    return (tot == 0) | (tot > np.finfo(np.float32).max)


@register("softplus_l1", ref.softplus_l1, params={"scale": 1.0}, sums_to_one=True,
          f32_overflow=_softplus_degenerate)
def softplus_l1(x: Value, scale: float) -> Value:
    """softplus(s x) / sum softplus(s x), softplus(z) = max(z, 0) + log1p(e^-|z|) (spec 5.1, row
    form); no max pass."""
    z = x * scale
    sp = z.maximum(0.0) + (-z.abs()).exp().log1p()
    return sp * sp.sum().finite_or_nan().recip()


def get_op(name: str) -> OpDef:
    if not isinstance(name, str) or name not in OPS:
        raise UsageError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    return OPS[name]


def resolve_params(op: OpDef, given: dict) -> dict:
    """Validated build-time parameters (baked into the kernel). Unknown names are errors."""
    unknown = sorted(set(given) - set(op.params))
    if unknown:
        raise UsageError(f"op {op.name!r} has no parameter(s) {unknown}; it takes {sorted(op.params)}")
    params = {**op.params, **{k: v for k, v in given.items() if v is not None}}
    if "scale" in op.params:
        s = _scale(params)
        params = {k: v for k, v in params.items() if k not in ("scale", "temperature")}
        with np.errstate(over="ignore"):
            s32 = float(np.float32(s))  # kernels bake the scale as a float32
        if not (0.0 < s32 < math.inf):
            raise UsageError(f"scale {s!r} is not representable as a positive finite float32")
        params["scale"] = s32
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UsageError(f"parameter {k} must be a finite number, got {v!r}")
    return params


def build_program(name: str, **given) -> Program:
    """The op's IR program with its parameters baked in, validated."""
    op = get_op(name)
    params = resolve_params(op, given)
    p = Program(name, params)
    p.add("output", op.build(p.input(), **params).id)
    return p.validate()
