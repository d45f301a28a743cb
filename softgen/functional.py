"""One function per op, e.g. ``softgen.lssa(c, 64)``: compiles the op for this CPU on first use
(cached per op, parameters, target and backend) and applies it to a NumPy array.

Arguments are the op's build-time parameters (baked into the kernel; positional in the order
``softgen ops`` lists them) and its call-time arguments (per row, e.g. ``n_attended``). Giving a
call-time argument selects the kernel variant that takes it (the op's
``OpDef.build_params_for_call``: e.g. ``count_keys=0`` for the lssa family).
"""
from __future__ import annotations

import functools

import numpy as np

from . import ops as _ops
from .errors import UsageError
from .kernel import compile as _compile


@functools.lru_cache(maxsize=256)
def _kernel(op: str, target: str, backend: str, algorithm: str, params: tuple):
    return _compile(op, target=target, backend=backend, algorithm=algorithm, **dict(params))


def apply(op: str, x: np.ndarray, *args, out: np.ndarray | None = None, target: str = "host",
          backend: str = "c", algorithm: str = "auto", threads: int | None = None, **kwargs) -> np.ndarray:
    """``op`` applied along the last axis of ``x`` (the last two for matrix ops); an op with
    several inputs (``gaussian_kernel(a, b, head_dim)``) takes them first. ``threads``: None/0
    auto, N at most N threads (rows, or a matrix op's batch of matrices: ``Kernel.__call__``)."""
    opdef = _ops.get_op(op)
    more = len(opdef.inputs) - 1
    if len(args) < more:
        raise TypeError(f"{op} takes {len(opdef.inputs)} arrays ({', '.join(opdef.inputs)}), got {1 + len(args)}")
    inputs, args = (x, *args[:more]), args[more:]
    names = list(opdef.params)
    if len(args) > len(names):
        raise UsageError(f"{op} takes at most {len(names)} positional parameter(s) ({', '.join(names)})")
    for name, value in zip(names, args):
        if name in kwargs:
            raise UsageError(f"{op}: parameter {name} given twice")
        kwargs[name] = value
    call = {k: v for k, v in kwargs.items() if k in opdef.call_params and v is not None}
    build = opdef.build_params_for_call({k: v for k, v in kwargs.items() if k not in opdef.call_params}, call)
    params = tuple(sorted(_ops.resolve_params(opdef, build).items()))
    # a list of targets (a library spanning ISAs) as a tuple: the kernel cache's key is hashed
    k = _kernel(op, tuple(target) if isinstance(target, list) else target, backend, algorithm, params)
    if more:
        return k(*inputs, out=out, threads=threads)
    return k(np.asarray(x), out=out, threads=threads, **call)


def _make(op: str):
    def fn(x, *args, **kwargs):
        return apply(op, x, *args, **kwargs)
    opdef = _ops.get_op(op)
    sig = ", ".join(list(opdef.inputs) + [f"{k}={v!r}" for k, v in opdef.params.items()]
                    + [f"{c}=None" for c in opdef.call_params])
    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = f"{op}({sig}, *, out=None, target='host', backend='c', algorithm='auto', threads=None)\n\n{opdef.doc}"
    return fn


FUNCTIONS = {op: _make(op) for op in _ops.OPS}
