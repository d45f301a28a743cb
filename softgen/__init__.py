"""softgen: a compiler-style code generator for softmax-family normalisation kernels on CPUs.

    import numpy as np, softgen
    k = softgen.compile("softmax", algorithm="two-pass", target="avx2")
    y = k(np.random.randn(4, 1000).astype(np.float32))
    y = softgen.softmax(x)                      # or one call: compiled for this CPU, cached
"""
__version__ = "0.1.0"

from .errors import BuildError, CacheError, SoftgenError, TargetNotSupportedError, UsageError  # noqa: E402
from .kernel import Kernel, compile  # noqa: E402
from .ops import OPS  # noqa: E402
from .passes import ALGORITHMS  # noqa: E402
from .schedule import Schedule  # noqa: E402
from .targets import host_target, targets  # noqa: E402
from .functional import FUNCTIONS as _FUNCTIONS, apply  # noqa: E402

globals().update(_FUNCTIONS)  # softgen.softmax(x), softgen.lssa(c, 64), ...: one per op

__all__ = [*_FUNCTIONS, "apply", "compile", "Kernel", "Schedule", "targets", "host_target", "OPS", "ALGORITHMS",
           "SoftgenError", "UsageError", "TargetNotSupportedError", "BuildError", "CacheError",
           "__version__"]
