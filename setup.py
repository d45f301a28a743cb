"""The optional C extension for cheap kernel calls; everything else is in pyproject.toml."""
from setuptools import Extension, setup

# optional: without a compiler or Python headers softgen still installs and calls through ctypes.
setup(ext_modules=[Extension("softgen._fastcall", ["softgen/_fastcall.c"], optional=True)])
