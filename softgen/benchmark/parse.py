"""Sizes and shapes on the command line: ``1K,64K,1M`` (single rows), ``4096x512`` (batches), and
their labels."""
from __future__ import annotations

import re

from ..errors import UsageError

_COUNT = re.compile(r"(\d+(?:\.\d+)?)([KMG]?)", re.IGNORECASE)
_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SIZES_FORM = "element counts like 1K,64K,1M,16M or 1000 (K/M/G = 2^10/2^20/2^30)"
SHAPES_FORM = "ROWSxN shapes like 4096x512,8192x128 (each a count, K/M/G allowed)"


def parse_count(tok: str) -> int:
    """'1K' -> 1024, '4M' -> 4194304, '1G', '1000' -> 1000 (binary suffixes); a ValueError
    names the allowed forms."""
    m = _COUNT.fullmatch(str(tok).strip())
    if not m:
        raise ValueError(f"not an element count: {tok!r} ({SIZES_FORM})")
    v = float(m[1]) * _MULT[m[2].upper()]
    if v != int(v) or v < 1:
        raise ValueError(f"not a positive whole element count: {tok!r} ({SIZES_FORM})")
    return int(v)


def count_label(n: int) -> str:
    for suf, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{suf}"
    return str(n)


def size_label(rows: int, n: int) -> str:
    return count_label(n) if rows == 1 else f"{rows}x{n}"


def parse_size(tok: str) -> tuple[int, int]:
    """One size or shape: '1K' -> (1, 1024); '8192x128' -> (8192, 128) (the bench/ scripts' form);
    a ValueError names the allowed forms."""
    r, sep, n = str(tok).strip().lower().rpartition("x")
    return (parse_count(r) if sep else 1), parse_count(n)


def _items(text: str) -> list[str]:
    return [t for t in re.split(r"[,\s]+", text.strip()) if t]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``--sizes 1K,64K,1M``: single rows, as (rows, n) pairs."""
    items = _items(text)
    if not items:
        raise UsageError(f"--sizes: empty; give {SIZES_FORM}")
    out = []
    for tok in items:
        try:
            out.append((1, parse_count(tok)))
        except ValueError:
            raise UsageError(f"--sizes: bad value {tok!r}; give {SIZES_FORM}"
                             + (" (use --shapes for ROWSxN)" if "x" in tok.lower() else "")) from None
    return out


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``--shapes 4096x512,64x32K``: (rows, n) pairs."""
    items = _items(text)
    if not items:
        raise UsageError(f"--shapes: empty; give {SHAPES_FORM}")
    out = []
    for tok in items:
        r, sep, n = tok.lower().partition("x")
        try:
            if not sep:
                raise ValueError
            out.append((parse_count(r), parse_count(n)))
        except ValueError:
            raise UsageError(f"--shapes: bad value {tok!r}; give {SHAPES_FORM}") from None
    return out
