"""Backends: lowered programs -> C (``c``, Jinja templates) or TensorIR (``tvm``), and their
registry. ``base`` holds the ``Backend`` interface, the ``Artifact`` and the registry (read its
docstring); the built-in backends register themselves when their modules are imported, which
this package does right here (after ``base``, which imports no backend: no cycle)::

    from softgen.backends import Backend, Artifact, register, get_backend
"""
from . import c, tvm  # the built-in backends: importing them registers them
from .base import BACKENDS, Artifact, Backend, get_backend, names, register, unregister

__all__ = ["BACKENDS", "Artifact", "Backend", "get_backend", "names", "register", "unregister", "c", "tvm"]
