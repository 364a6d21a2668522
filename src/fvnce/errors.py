"""User-facing errors.

Everything the command line reports as a one-line message (exit code 2) derives from
:class:`FvnceError`; anything else escaping is a bug.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "FvnceError", "NonFiniteLossError"]


class FvnceError(Exception):
    """Base class of errors caused by the user's input or by training going wrong."""


class ConfigError(FvnceError, ValueError):
    """Invalid hyper-parameter, unknown name, or inconsistent options."""


class DataError(FvnceError, ValueError):
    """Input data that cannot be used (missing file, bad column, NaN, wrong shape...)."""


class CheckpointError(FvnceError):
    """A run directory or checkpoint that cannot be used (missing, corrupt, incompatible)."""


class NonFiniteLossError(FvnceError, FloatingPointError):
    """The training loss turned non-finite; the message names the failing term."""
