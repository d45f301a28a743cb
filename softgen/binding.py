"""Binding NumPy arrays to a kernel's entry point: ``bind(abi, name, inputs, out, row_arguments)``.

One path for every kind of ``abi.KernelABI`` (dense rows, selected rows, unary and general
matrix kernels): it checks the arrays (type, dtype, axes, shapes, ``out=``), decides which must be
copied (a strided last axis, rows not one stride apart, misaligned, an input overlapping ``out``
without being it) and returns a ``Bound``: the entry point's argument tuple, the result to return,
and, when the C ABI cannot address ``out``, the array to copy the temporary result into.
``Kernel.__call__``, ``run_emulated`` and ``run_emulated_many`` call it for every kind.

A low layer: numpy and ``abi`` only (no runtime, backends or kernel); the per-row argument arrays
come from the caller (``ops.Op.row_arguments``) through the ``row_arguments`` callable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .abi import ATTENTION, GENERAL, SELECTED, UNARY, KernelABI


@dataclass
class Bound:
    """A call bound to arrays. ``args``: the entry point's arguments (pointers as addresses),
    None when there is nothing to compute (an empty array); ``result``: what the call returns
    (``y``, or ``(indices, weights)``); ``keep``: arrays that must stay alive across the call;
    ``copy_to``: None, or the ``out`` the C ABI cannot address: ``result`` is then a temporary
    that the caller copies into ``copy_to`` after the call (and returns ``copy_to``)."""

    args: tuple | None
    result: object
    keep: tuple = ()
    copy_to: np.ndarray | None = None


RowArguments = Callable[[list, tuple], list]   # (row parameter names, input shape) -> float32 arrays


def bind(abi: KernelABI, name: str, inputs: tuple, out, row_arguments: RowArguments | None = None,
         op: str = "", call: dict | None = None) -> Bound:
    """Check ``inputs`` (a tuple of arrays: one for row and unary kernels, the ABI's inputs for a
    general one) and ``out`` against ``abi`` and bind them. ``name``: the kernel, for messages;
    ``op``: its op, for the messages of matrix kernels. ``row_arguments(names, shape)``: the
    per-row parameter arrays for an input of ``shape`` (it also rejects unknown call-time
    arguments); called for row and unary kernels after the checks of ``x`` and ``out``. ``call``:
    the streaming attention entry's keywords (``kv_lengths``, ``return_lse``)."""
    if abi.kind == ATTENTION:
        return _bind_attention(abi, name, inputs, out, **(call or {}))
    if abi.kind == GENERAL:
        if call:
            raise TypeError(f"{name} ({op}) takes no keyword arguments {sorted(call)}")
        return _bind_general(abi, name, op, inputs, out)
    (x,) = inputs
    x = _check_input(abi, name, op, x)
    if abi.kind == SELECTED:
        return _bind_selected(abi, name, x, out, row_arguments)
    n = x.shape[-1]
    if out is None:
        y = np.empty(x.shape, np.float32)
        ly = (y.ctypes.data, n)
    else:
        y = out
        ly = _out_layout(x, y, name)
    rps = row_arguments(list(abi.row_params), x.shape) if row_arguments is not None else []
    if x.size == 0:
        return Bound(None, y)
    lx = _layout(x)
    if lx is None or (out is not None and lx != ly and np.may_share_memory(x, y)
                      and np.shares_memory(x, y)):
        # Last axis not contiguous, rows not evenly strided, misaligned, or x overlaps out
        # without being it: work on a contiguous copy (documented).
        x = np.ascontiguousarray(x).copy() if lx is not None else np.ascontiguousarray(x)
        if not x.flags.aligned:
            x = x.copy()
        lx = (x.ctypes.data, n)
    copy_to = None
    if ly is None:  # misaligned out: compute into a temporary, then copy
        copy_to, y = y, np.empty(x.shape, np.float32)
        ly = (y.ctypes.data, n)
    extra = (x.shape[-2],) if abi.kind == UNARY else tuple(a.ctypes.data for a in rps)
    return Bound((lx[0], ly[0], x.size // n, n, lx[1], ly[1], *extra), y, (x, *rps), copy_to)


def _bind_selected(abi: KernelABI, name: str, x: np.ndarray, out, row_arguments) -> Bound:
    """(indices int64, weights float32), shape x.shape[:-1] + (min(k, n),)."""
    if out is not None:
        raise TypeError(f"{name} returns new (indices, weights) arrays; it takes no out=")
    if row_arguments is not None:
        row_arguments([], x.shape)   # rejects call-time arguments
    n = x.shape[-1]
    m = min(abi.k, n)
    idx = np.empty(x.shape[:-1] + (m,), np.int64)
    w = np.empty(x.shape[:-1] + (m,), np.float32)
    if x.size == 0:
        return Bound(None, (idx, w))
    x, lx = _addressable(x)
    return Bound((lx[0], idx.ctypes.data, w.ctypes.data, x.size // n, n, lx[1], m), (idx, w), (x,))


def _bind_general(abi: KernelABI, name: str, op: str, inputs: tuple, out) -> Bound:
    names = [nm for nm, _ in abi.inputs]
    inputs = tuple(np.asarray(a) if isinstance(a, np.generic) else a for a in inputs)
    if len(inputs) != len(names):
        raise TypeError(f"{name} ({op}) takes {len(names)} arrays ({', '.join(names)}), "
                        f"got {len(inputs)}")
    dims: dict[str, int] = {}
    lead = None
    for (nm, shape), a in zip(abi.inputs, inputs):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: {nm} must be a numpy.ndarray of float32, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise TypeError(f"{name}: {nm} must be float32, got {a.dtype} ({nm}.astype(np.float32); a torch "
                            f"tensor: {nm}.float())")
        if a.ndim < 2:
            raise ValueError(f"{name}: {nm} needs two axes (..., {', '.join(shape)}), got shape {a.shape}")
        if lead is None:
            lead = a.shape[:-2]
        elif a.shape[:-2] != lead:
            raise ValueError(f"{name}: the leading axes of the inputs must be equal (no "
                             f"broadcasting), got {lead} and {a.shape[:-2]} ({nm})")
        for d, v in zip(shape, a.shape[-2:]):
            if dims.setdefault(d, v) != v:
                raise ValueError(f"{name}: dimension {d} is {dims[d]} in one input and {v} in "
                                 f"{nm} (shape {a.shape}; {op} takes "
                                 + ", ".join(f"{n}{list(s)}" for n, s in abi.inputs) + ")")
    (oname, (orow, ocol)), = abi.outputs
    shape = lead + (dims[orow], dims[ocol])
    if out is None:
        y = np.empty(shape, np.float32)
    else:
        y = out
        if not isinstance(y, np.ndarray) or y.dtype != np.float32 or y.shape != shape:
            raise ValueError(f"{name}: out must be a float32 array of shape {shape}")
        if not y.flags.writeable:
            raise ValueError(f"{name}: out is read-only")
    batch = math.prod(lead)
    if y.size == 0:
        return Bound(None, y)
    ly = _layout(y) if y.flags.aligned else None
    copy_to = None
    if ly is None or any(np.shares_memory(y, a) for a in inputs):
        # out cannot be addressed with one row stride, is misaligned or overlaps an input:
        # compute into a temporary, then copy
        copy_to, y = y, np.empty(shape, np.float32)
        ly = (y.ctypes.data, shape[-1])
    arrays, ptrs, lds = [], [], []
    for a in inputs:
        if a.size:
            a, la = _addressable(a)
        else:
            la = (a.ctypes.data, a.shape[-1])
        arrays.append(a)   # alive across the call
        ptrs.append(la[0])
        lds.append(la[1])
    args = (*ptrs, ly[0], batch, *[dims[d] for d in abi.dims], *lds, ly[1])
    return Bound(args, y, tuple(arrays), copy_to)


def _heads(a: np.ndarray, nbatch: int):
    """(ptr, batch, head, row, col strides in elements) of ``a`` (..., H, L, w) whose ``nbatch``
    leading axes are the batch (one stride for all: they must collapse), or None when the ABI
    cannot address it (misaligned, a negative or fractional stride, batch axes not evenly strided).
    Strides of axes of size 1 are 0. (Plain loops: it runs 4-5 times per attention call.)"""
    if not a.flags.aligned:
        return None
    item = a.itemsize
    st = []
    for n, s in zip(a.shape, a.strides):
        if n == 1:
            st.append(0)
        elif s < 0 or s % item:
            return None
        else:
            st.append(s // item)
    sb, prev = 0, None   # the batch axes (size > 1) collapse: each stride = the next one's x its size
    for n, s in zip(a.shape[:nbatch], st[:nbatch]):
        if n == 1:
            continue
        if prev is not None and prev != s * n:
            return None
        prev = sb = s
    tail = st[nbatch:]
    if len(tail) < 3:   # (H, L, w): a missing head axis is one head
        tail = [0] * (3 - len(tail)) + tail
    return (a.ctypes.data, sb, *tail)


def _bind_attention(abi: KernelABI, name: str, inputs: tuple, out, kv_lengths=None,
                    return_lse: bool = False) -> Bound:
    """q (..., Hq, Lq, d), k (..., Hkv, Lk, d), v (..., Hkv, Lk, dv)[, mask broadcastable to
    (..., Hq, Lq, Lk)] -> o (..., Hq, Lq, dv) (and lse (..., Hq, Lq) with ``return_lse``): every
    array passed as its strides (views, GQA heads, broadcast masks: no copy); copied only where
    the ABI cannot address it (a strided last axis of q/k/v, negative strides, misalignment)."""
    names = ["q", "k", "v"] + (["mask"] if abi.mask else []) + (["landmarks"] if abi.landmarks else [])
    if len(inputs) == 3 and abi.mask:
        inputs = (*inputs, None)
    if len(inputs) != len(names):
        raise TypeError(f"{name} (attention) takes {len(names)} arrays ({', '.join(names)}), got {len(inputs)}")
    q, k, v = inputs[:3]
    for nm, a in zip("qkv", (q, k, v)):
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise TypeError(f"{name}: {nm} must be a float32 numpy.ndarray, got "
                            f"{a.dtype if isinstance(a, np.ndarray) else type(a).__name__}")
    if not (q.ndim == k.ndim == v.ndim >= 2):
        raise ValueError(f"{name}: q, k, v need the same number of axes (>= 2), got shapes {q.shape}, {k.shape}, "
                         f"{v.shape}")
    nb = max(q.ndim - 3, 0)
    lq, d = q.shape[-2:]
    lk, dv = k.shape[-2], v.shape[-1]
    hq, hkv = (q.shape[-3], k.shape[-3]) if q.ndim >= 3 else (1, 1)
    if k.shape[-1] != d or v.shape[-2] != lk or k.shape[:-2] != v.shape[:-2] or q.shape[:nb] != k.shape[:nb]:
        raise ValueError(f"{name}: expected q (..., Hq, Lq, d), k (..., Hkv, Lk, d), v (..., Hkv, Lk, dv) with "
                         f"equal batch axes, got {q.shape}, {k.shape}, {v.shape}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"{name}: grouped-query attention needs Hq a multiple of Hkv, got Hq={hq}, Hkv={hkv}")
    lead = q.shape[:-1]
    batch = math.prod(q.shape[:nb])
    keep, args = [], []
    for a in (q, k, v):
        la = _heads(a, nb)
        if la is None or (a.shape[-1] > 1 and la[4] != 1):   # rows must be contiguous: copy
            a = np.ascontiguousarray(a)
            a = a if a.flags.aligned else a.copy()
            la = _heads(a, nb)
        keep.append(a)
        args.append(la)
    shape = lead[:-1] + (lq, dv)
    o, copy_to = out, None
    if out is None:
        o = np.empty(shape, np.float32)
    elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
        raise ValueError(f"{name}: out must be a float32 array of shape {shape}")
    elif not out.flags.writeable:
        raise ValueError(f"{name}: out is read-only")
    lo = _heads(o, nb)
    if lo is None or (dv > 1 and lo[4] != 1) or (lq > 1 and lo[3] < dv) \
            or (out is not None and any(np.may_share_memory(o, a) and np.shares_memory(o, a) for a in keep)):
        copy_to, o = o, np.empty(shape, np.float32)   # not addressable, or overlapping: a temporary
        lo = _heads(o, nb)
    ptrs = [x[0] for x in args] + [lo[0], batch, hq, hkv, lq, lk, d, dv]
    strides = [s for x in args + [lo] for s in x[1:4]]
    mparts = []
    if abi.mask:
        m = inputs[3]
        if m is None:
            mparts = [None, 0, 0, 0, 0]
        else:
            m = np.asarray(m)
            if abi.mask == "bool":
                if m.dtype != np.bool_ and m.dtype != np.uint8:
                    raise TypeError(f"{name}: mask must be a boolean keep-mask (this kernel's mask='bool'), "
                                    f"got {m.dtype}")
                m = m.view(np.uint8) if m.dtype == np.bool_ else m
            elif m.dtype == np.bool_:
                m = np.where(m, np.float32(0), np.float32(-np.inf))
            elif m.dtype != np.float32:
                m = m.astype(np.float32)
            full = lead[:-1] + (lq, lk)
            try:
                mb = np.broadcast_to(m, full if q.ndim >= 3 else (lq, lk))
            except ValueError:
                raise ValueError(f"{name}: mask of shape {m.shape} does not broadcast to {full}") from None
            lm = _heads(mb, nb)
            if lm is None:   # e.g. a negative stride: a contiguous copy
                mb = np.ascontiguousarray(mb)
                lm = _heads(mb, nb)
            elif abi.mask_rows and lk > 1 and lm[4] != 1:
                # a key axis broadcast or strided, which only the streaming form reads: m's rows copied
                # (the leading axes stay broadcast)
                mb = np.broadcast_to(np.ascontiguousarray(np.broadcast_to(m, m.shape[:-1] + (lk,))), mb.shape)
                lm = _heads(mb, nb)
            keep.append(mb)
            mparts = list(lm)
    if abi.landmarks:   # SOFT's (..., m, d), broadcast over the batch and query heads
        lm = inputs[-1]
        if not isinstance(lm, np.ndarray) or lm.dtype != np.float32 or lm.ndim < 2 or lm.shape[-1] != d:
            raise ValueError(f"{name}: landmarks must be a float32 array (..., m, {d}), got "
                             f"{lm.dtype if isinstance(lm, np.ndarray) else type(lm).__name__} "
                             f"{getattr(lm, 'shape', '')}")
        try:
            lb = np.broadcast_to(lm, lead[:-1] + lm.shape[-2:])
        except ValueError:
            raise ValueError(f"{name}: landmarks of shape {lm.shape} do not broadcast to "
                             f"{lead[:-1] + lm.shape[-2:]}") from None
        la = _heads(lb, nb)
        if la is None or (d > 1 and la[4] != 1):
            lb = np.ascontiguousarray(lb)
            la = _heads(lb, nb)
        keep.append(lb)
        mparts += [la[0], lb.shape[-2], *la[1:4]]
    lens = None
    if kv_lengths is not None:
        n = np.asarray(kv_lengths)
        if not np.issubdtype(n.dtype, np.integer) or n.shape != q.shape[:nb] or (n < 0).any():
            raise ValueError(f"{name}: kv_lengths must be non-negative integers of shape {q.shape[:nb]} (one per "
                             f"batch index), got {n.dtype} {n.shape}")
        lens = np.ascontiguousarray(np.minimum(n, np.iinfo(np.int32).max), np.int32)
        keep.append(lens)
    lse = np.empty(lead, np.float32) if return_lse else None
    ll = _heads(lse.reshape(lead + (1,)), nb) if return_lse else (None, 0, 0, 0, 0)
    args = (*ptrs, *strides, *mparts, None if lens is None else lens.ctypes.data, *ll[:4])
    return Bound(args, (o, lse) if return_lse else o, tuple(keep), copy_to)


def _check_input(abi: KernelABI, name: str, op: str, x) -> np.ndarray:
    """``x`` as the array the kernel takes; a NumPy scalar counts as a 0-d array."""
    if type(x) is not np.ndarray:
        if isinstance(x, np.generic):
            x = np.asarray(x)
        elif not isinstance(x, np.ndarray):
            raise TypeError(f"{name} takes a numpy.ndarray of float32, got {type(x).__name__} "
                            f"(use np.asarray(x, np.float32))")
    if x.dtype != np.float32:
        raise TypeError(f"{name} takes float32 arrays, got {x.dtype} (x.astype(np.float32); a torch tensor: "
                        f"x.float())")
    matrix = abi.kind == UNARY
    if x.ndim < 1 + matrix:
        what = "two axes (..., m, n)" if matrix else "one axis"
        hint = " (NumPy scalars and 0-d arrays have no axis)" if x.ndim == 0 else ""
        raise ValueError(f"{name} needs an array with at least {what}, got shape {x.shape}{hint}")
    if matrix and abi.square and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name} ({op}) needs square matrices (..., m, m), got shape {x.shape}")
    return x


def _addressable(a: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """``a`` (or a contiguous aligned copy if its rows cannot be addressed as base + r*ld) and
    its (data pointer, row stride in elements)."""
    la = _layout(a)
    if la is None:   # rows not evenly strided or misaligned: a contiguous copy
        a = np.ascontiguousarray(a)
        a = a if a.flags.aligned else a.copy()
        la = (a.ctypes.data, a.shape[-1])
    return a, la


def _layout(a: np.ndarray):
    """(data pointer, row stride in elements) if ``a``'s rows can be addressed as base + r*ld with
    a contiguous last axis; None if a copy is needed."""
    n, item = a.shape[-1], a.itemsize
    if a.flags.c_contiguous and a.flags.aligned:
        return a.ctypes.data, n
    if not a.flags.aligned or (n > 1 and a.strides[-1] != item):
        return None
    shape = [(s, st) for s, st in zip(a.shape[:-1], a.strides[:-1]) if s != 1]
    if not shape:
        return a.ctypes.data, n
    for (s0, st0), (s1, st1) in zip(shape, shape[1:]):
        if st0 != st1 * s1:
            return None
    ld, rem = divmod(shape[-1][1], item)
    if rem or ld < n:
        return None
    return a.ctypes.data, ld


def _out_layout(x: np.ndarray, y, name: str):
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name}: out must be a numpy.ndarray, got {type(y).__name__}")
    if y.dtype != np.float32:
        raise TypeError(f"{name}: out must be float32, got {y.dtype}")
    if y.shape != x.shape:
        raise ValueError(f"{name}: out has shape {y.shape}, expected {x.shape}")
    if not y.flags.writeable:
        raise ValueError(f"{name}: out is read-only")
    # None: the C ABI cannot address out (misaligned, a strided last axis, rows not one
    # non-negative stride apart: ld is a size_t); the caller computes into a temporary and copies
    return _layout(y) if y.flags.aligned else None
