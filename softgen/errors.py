"""Exception types. Every error softgen raises on purpose derives from SoftgenError."""


class SoftgenError(Exception):
    """Base class for softgen errors (bad requests, build failures, unsupported targets)."""


class UsageError(SoftgenError, ValueError):
    """An invalid request: unknown op/algorithm/target, bad parameter or name."""


class TargetNotSupportedError(SoftgenError, RuntimeError):
    """The kernel's ISA is not available on this CPU; running it would fault (SIGILL)."""


class BuildError(SoftgenError, RuntimeError):
    """The C compiler (or another toolchain step) failed."""


class CacheError(SoftgenError, RuntimeError):
    """The kernel cache directory cannot be used: not creatable or writable, or not private to
    this user (another user could plant a library that softgen would load)."""
