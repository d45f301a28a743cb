"""The op library. An op is its IR definition and its float64 reference, side by side; every
algorithm, target, backend, test and benchmark is derived from this table.

The registry (``OpDef``, ``register``, ``get_op``, ``resolve_params``, ``build_program``) is in
``base``; the ops are in one module per family, registered on import in this order:

- ``softmax``: softmax, log_softmax, stablemax, log_stablemax, softplus_l1
- ``lssa``: lssa, reweight, lssar (per-row parameters, call-time arguments)
- ``sinkhorn``: sinkhorn (a matrix program)
- ``topk``: topk_softmax (a selection reduction, dense or sparse output)
- ``soft``: gaussian_kernel, newton_pinv (matrix programs with GEMMs)
- ``attention``: attention (a matrix program of kind "attention": q, k, v; its own front door)

To add an op: in its family's module (or a new one imported below), write a function that builds
the IR from the input row (``x``, an ``ir.Value``) and the op's parameters, and ``register`` it
with its float64 reference (``softgen/reference.py``), tolerance model and metadata (call-time
arguments and their docs, ``call_build``).
"""
from __future__ import annotations

# each family registers its ops on import; this order is OPS's (``softgen ops`` lists it)
from . import attention, lssa, sinkhorn, soft, softmax, topk  # noqa: F401
from .base import OPS, OpDef, build_program, get_op, register, resolve_params

__all__ = ["OPS", "OpDef", "build_program", "get_op", "register", "resolve_params"]
