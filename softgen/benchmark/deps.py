"""Optional dependencies of ``softgen bench`` (torch, onnxruntime, onnx, matplotlib, tqdm: the
``[bench]`` extra). Every import of one goes through ``_import`` (tests replace it to simulate a
missing package: ``monkeypatch.setattr(softgen.benchmark.deps, "_import", ...)``)."""
from __future__ import annotations

import importlib

from ..errors import UsageError


def _import(name: str):
    """``importlib.import_module`` (tests replace it to simulate a missing package)."""
    return importlib.import_module(name)

def require_matplotlib():
    """The ``matplotlib.pyplot`` module (Agg backend), or a UsageError saying how to install it."""
    try:
        mpl = _import("matplotlib")
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed "
                         "(pip install matplotlib, or pip install '.[bench]' in the softgen source tree)") from None
    mpl.use("Agg")
    return _import("matplotlib.pyplot")
