"""The optional C extension for cheap kernel calls; everything else is in pyproject.toml."""
from setuptools import Extension, setup

try:  # the extension reads NumPy arrays' fields and allocates results through NumPy's C API
    import numpy
    include = [numpy.get_include()]
except ImportError:  # pragma: no cover - pyproject's build requirements include numpy
    include = []

# optional: without a compiler, Python or NumPy headers softgen still installs and calls through ctypes.
setup(ext_modules=[Extension("softgen._fastcall", ["softgen/_fastcall.c"], include_dirs=include, optional=True)])
