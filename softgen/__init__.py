"""softgen: a compiler-style code generator for softmax-family normalisation kernels on CPUs.

    import numpy as np, softgen
    k = softgen.compile("softmax", algorithm="two-pass", target="avx2")
    y = k(np.random.randn(4, 1000).astype(np.float32))
    y = softgen.softmax(x)                      # or one call: compiled for this CPU, cached
    softgen.tune("softmax")                     # measure this machine; compile(algorithm="auto") uses it
"""
from ._version import __version__
from .errors import BuildError, CacheError, SoftgenError, TargetNotSupportedError, UsageError
from .functional import FUNCTIONS as _FUNCTIONS, apply
from .kernel import Kernel, compile
from .ops import OPS
from .passes import ALGORITHMS
from .schedule import Schedule
from .targets import host_target, targets
from .tune import tune  # the function; the module is sys.modules['softgen.tune']

globals().update(_FUNCTIONS)  # softgen.softmax(x), softgen.lssa(c, 64), ...: one per op

__all__ = [*_FUNCTIONS, "apply", "compile", "tune", "Kernel", "Schedule", "targets", "host_target", "OPS", "ALGORITHMS",
           "SoftgenError", "UsageError", "TargetNotSupportedError", "BuildError", "CacheError",
           "__version__"]
