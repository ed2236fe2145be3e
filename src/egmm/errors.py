"""Exceptions raised by egmm.

Every error egmm raises on bad input derives from :class:`EgmmError`, so a script can catch
them all at once, and from the matching builtin (``ValueError``, ``OSError``) so generic code
keeps working.
"""

from __future__ import annotations


class EgmmError(Exception):
    """Base class of every error egmm raises on purpose."""


class InputError(EgmmError, ValueError):
    """Events, weights or parameter values that egmm refuses (the message names which)."""


class ParameterError(InputError):
    """A parameter value that is invalid or outside the range a model may be used in."""


class ModelFileError(EgmmError, OSError):
    """A model file that cannot be read or trusted: missing, corrupted, truncated or newer."""


class TrainingError(EgmmError, FloatingPointError):
    """A network whose validation loss is not finite from its first epoch on (diverged, or
    events of zero density), so that there are no weights to restore: raised at the end of
    that epoch, before its checkpoint is written."""
