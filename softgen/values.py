"""User-given numbers, normalised in one place for op parameters and schedule fields."""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np

from .errors import UsageError


def show(value) -> str:
    """A short repr for messages (10**400 has 401 digits)."""
    r = repr(value)
    return r if len(r) <= 40 else r[:36] + "...>"


def number(what: str, value, *, integer: bool = False) -> int | float:
    """``value`` as a Python int (anything with ``__index__``: int, NumPy integers) or, unless
    ``integer``, a float (any real number: float, NumPy floats, Fraction); a 0-d array counts
    as its element. Finite in float64 either way. bool, str, complex, arrays with elements
    and other types are UsageErrors naming ``what`` and the value."""
    v = value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if not isinstance(v, (bool, np.bool_, str, bytes)):
        out = None
        try:
            out = operator.index(v)
        except TypeError:
            if not integer and isinstance(v, numbers.Real):
                out = float(v)
        if out is not None:
            try:
                finite = math.isfinite(out)
            except OverflowError:   # an int beyond float64
                finite = False
            if not finite:
                raise UsageError(f"{what} must be finite (within float64's range), got {show(value)}")
            return out
    kind = "an integer" if integer else "a real number"
    raise UsageError(f"{what} must be {kind}, got {show(value)} ({type(value).__name__})")
