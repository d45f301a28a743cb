"""The caller's arrays in and out of a kernel call: ``prepare(inputs, out, name, ...)``.

Kernels compute on NumPy arrays (``binding``). This module lets a call take anything that speaks
DLPack (``__dlpack__``: torch tensors, JAX arrays, ...) or the array interface, **zero-copy**
(``np.from_dlpack``), and returns the caller's type: torch in -> torch out (``torch.from_dlpack``
of the result, zero-copy); ``out=`` may be a tensor, written in place and returned. It also
applies a row op along any axis (``axis=``/``dim=``, negative allowed) and, for the per-op
functions, gives a 0-d input torch's meaning (one row of one element, 0-d result).

Decisions (documented in the README's API section):
- A tensor with ``requires_grad=True`` is refused (``UsageError``: ``.detach()`` it); softgen has no
  backward, and silently detaching would cut the caller's graph without telling (torch's own
  ``.numpy()`` refuses it the same way).
- Arrays not on the CPU (a DLPack device other than kDLCPU, e.g. CUDA) are refused with the device
  named; nothing is copied across devices behind the caller's back.
- Only float32 is accepted, as for NumPy inputs (``binding``'s messages).
- ``axis`` other than the last: a row kernel needs unit stride within a row. When the axis has
  unit stride (e.g. axis 0 of a Fortran-ordered array) nothing is copied; otherwise (e.g. axis 0
  of a C-contiguous array) x is copied once into rows and the result written back into a
  C-contiguous array of x's shape (``out=`` when given).

A low layer: numpy, ``errors`` and ``_fastcall`` only; it never imports torch or JAX (a result goes
back through the module that made the input, found in ``sys.modules``). The first torch tensor it
sees registers torch's accessors with ``_fastcall`` (``_seen_torch``), which from then on reads
plain tensors in C: the fast path of a call on tensors never reaches this module.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from .errors import UsageError

try:  # the C extension (issue 15: it reads torch tensors once told torch's accessors)
    from . import _fastcall
    _fastcall.set_torch
except (ImportError, AttributeError):  # pragma: no cover - depends on the install
    _fastcall = None

_KDLCPU = 1   # DLPack's device type of host memory (kDLCPU)


TORCH_TYPES: set = set()   # torch.Tensor (and subclasses, e.g. Parameter) once seen
_TORCH_SET: list = []      # torch.Tensor once registered with _fastcall


def _seen_torch(t: type) -> None:
    """A torch tensor type met: remember it, and (once) let ``_fastcall`` read plain
    ``torch.Tensor``s in C from now on through their own accessors (issue 15): later calls on
    tensors skip this module."""
    TORCH_TYPES.add(t)
    if _fastcall is not None and not _TORCH_SET:
        torch = sys.modules["torch"]
        _fastcall.set_torch(torch.Tensor, torch.float32, torch.int64, torch.strided, torch.from_numpy)
        _TORCH_SET.append(torch.Tensor)


def _host(a, name: str, what: str, writable: bool = False):
    """(``a`` as a NumPy array sharing its memory, the module to return results through or None).
    NumPy arrays and anything else without DLPack go through unchanged (``binding`` checks them)."""
    t = type(a)
    if t in TORCH_TYPES:
        return _torch(a, name, what)
    torch = sys.modules.get("torch") if t is not np.ndarray else None
    if torch is not None and isinstance(a, torch.Tensor):   # subclasses too (torch in, torch out)
        _seen_torch(t)
        return _torch(a, name, what)
    if t is np.ndarray or isinstance(a, (np.ndarray, np.generic)) or not hasattr(a, "__dlpack__"):
        if not isinstance(a, (np.ndarray, np.generic)) and hasattr(a, "__array_interface__"):
            return np.asarray(a), None
        return a, None
    if getattr(a, "requires_grad", False):
        raise UsageError(f"{name}: {what} requires grad; softgen kernels have no backward: pass "
                         f"{what}.detach() (results then carry no gradient)")
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None:
        dtype, did = dev()
        if int(dtype) != _KDLCPU:
            raise UsageError(f"{name}: {what} is on device {getattr(dtype, 'name', dtype)}:{did}; softgen "
                             f"kernels run on the CPU (move it there first, e.g. {what}.cpu())")
    try:
        h = np.from_dlpack(a)
    except (BufferError, TypeError, RuntimeError) as e:
        raise UsageError(f"{name}: {what} ({type(a).__name__}) cannot be shared with NumPy through "
                         f"DLPack: {e}") from None
    if writable and not h.flags.writeable:
        raise UsageError(f"{name}: out ({type(a).__name__}) is read-only (immutable arrays, e.g. "
                         f"JAX's, cannot be written in place: call without out=)")
    mod = type(a).__module__.split(".")[0]
    return h, _back_module(mod)


def _torch(a, name: str, what: str):
    """A torch tensor: its NumPy view (``Tensor.numpy()``: zero-copy, cheaper than DLPack's
    exchange) and ``torch.from_numpy`` for results (zero-copy)."""
    try:   # a tensor that requires grad or is not on the CPU raises: diagnosed below
        return a.numpy(), sys.modules["torch"].from_numpy
    except (RuntimeError, TypeError):
        pass
    if a.requires_grad:
        raise UsageError(f"{name}: {what} requires grad; softgen kernels have no backward: pass "
                         f"{what}.detach() (results then carry no gradient)")
    if not a.is_cpu:
        raise UsageError(f"{name}: {what} is on device {a.device}; softgen kernels run on the CPU "
                         f"(move it there first, e.g. {what}.cpu())")
    if what != "out" and a.is_neg():   # a lazy negation (torch._neg_view): NumPy cannot see it; inputs
        return a.resolve_neg().numpy(), sys.modules["torch"].from_numpy   # are read only: one copy
    try:
        return a.numpy(), sys.modules["torch"].from_numpy
    except (RuntimeError, TypeError) as e:   # e.g. a conjugate-bit or unsupported-dtype tensor
        hint = f" (softgen kernels take float32: {what}.float())" if a.is_floating_point() else ""
        raise UsageError(f"{name}: {what} ({a.dtype}) cannot be viewed as a NumPy array: {e}{hint}") \
            from None


def _back_module(mod: str):
    """The function that makes the caller's array type from a NumPy result (zero-copy where the
    library can), or None (NumPy results)."""
    if mod == "torch":
        return sys.modules["torch"].from_dlpack
    if mod in ("jax", "jaxlib") and "jax.numpy" in sys.modules:
        return sys.modules["jax.numpy"].asarray
    lib = sys.modules.get(mod)
    return getattr(lib, "from_dlpack", None)


def _axis(axis, ndim: int, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise UsageError(f"{name}: axis/dim must be an int, got {axis!r}")
    nd = max(ndim, 1)
    if not -nd <= axis < nd:
        raise UsageError(f"{name}: axis {axis} is out of range for an array of {ndim} axes")
    return int(axis) % nd


def _identity(result):
    return result


class _Back:
    """``finish``: a result (an array, or a tuple of them) in the caller's type."""
    __slots__ = ("back",)

    def __init__(self, back):
        self.back = back

    def __call__(self, result):
        return tuple(self.back(r) for r in result) if type(result) is tuple else self.back(result)


class _Out:
    """``finish`` with ``out=``: the caller's ``out`` itself (written in place)."""
    __slots__ = ("out",)

    def __init__(self, out):
        self.out = out

    def __call__(self, result):
        return self.out


def prepare(inputs: tuple, out, name: str, *, axis=None, selected: bool = False, rows: bool = True,
            scalar: bool = False) -> tuple[tuple, object, Callable]:
    """(NumPy inputs, NumPy out or None, ``finish``): call the kernel on the first two, then
    ``finish(result)`` is what the call returns (the caller's type; ``out`` itself when given,
    (``out``, lse) for a result with an lse).
    ``axis``: a row op along that axis (None: the last); ``selected``: the kernel returns
    (indices, weights) rows; ``rows``: a row kernel (False: matrix kernels, which take no axis);
    ``scalar``: a 0-d input is one row of one element and gives a 0-d result (torch's rule)."""
    if axis is None and not scalar and len(inputs) == 1:   # the common case, kept short
        x, back = _host(inputs[0], name, "x")
        if out is None:
            return (x,), None, (_identity if back is None else _Back(back))
        o, ob = _host(out, name, "out", writable=True)
        return (x,), o, _Out(out)
    conv = [_host(a, name, "x" if i == 0 else f"input {i}") for i, a in enumerate(inputs)]
    xs = tuple(h for h, _ in conv)
    back = next((b for _, b in conv if b is not None), None)
    out_obj, o = out, None
    if out is not None:
        o, ob = _host(out, name, "out", writable=True)
        back = ob or back
    if axis is not None and not rows:
        raise UsageError(f"{name}: matrix ops act on the last two axes; axis=/dim= is for row ops")
    x = xs[0] if xs else None
    zero_d = scalar and rows and isinstance(x, (np.ndarray, np.generic)) and np.ndim(x) == 0
    if zero_d:
        x = np.asarray(x).reshape(1)
        if o is not None and isinstance(o, np.ndarray) and o.ndim == 0:
            o = o.reshape(1)
    ax = None
    if axis is not None and isinstance(x, (np.ndarray, np.generic)):
        ax = _axis(axis, np.ndim(x), name)
        x = np.asarray(x)
        if ax == x.ndim - 1:
            ax = None
    full = None   # axis moved: the result in x's shape, written through a moved view
    if ax is not None:
        if o is not None and isinstance(o, np.ndarray) and o.shape != x.shape:
            raise ValueError(f"{name}: out has shape {o.shape}, expected {x.shape}")
        x = np.moveaxis(x, ax, -1)   # no copy here; binding copies only if the axis is strided
        if not selected:
            full = o if o is not None else np.empty(np.shape(xs[0]), np.float32)
            o = np.moveaxis(full, ax, -1) if isinstance(full, np.ndarray) else full
    xs = (x, *xs[1:]) if xs else xs

    def finish(result):
        if full is not None:
            result = full
        elif ax is not None and selected:
            result = tuple(np.moveaxis(r, -1, ax) for r in result)
        if zero_d and out is None:
            result = tuple(r.reshape(()) for r in result) if selected else result.reshape(())
        if out is not None:   # out itself; more outputs (attention's lse) in the caller's type
            if type(result) is not tuple:
                return out_obj
            return (out_obj, *(r if back is None else back(r) for r in result[1:]))
        if back is None:
            return result
        return tuple(back(r) for r in result) if isinstance(result, tuple) else back(result)

    return xs, o, finish
